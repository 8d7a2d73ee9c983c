//! Decisions that compare what exists with what is desired, before anything is written.
//!
//! Server-side apply changes every mutable field. It cannot change the immutable ones of the
//! workload objects: a Deployment's or StatefulSet's `spec.selector`, a StatefulSet's
//! `serviceName` and `volumeClaimTemplates`. Children made by an older version of the operator
//! differ there: selectors gained `realtime.dev/cluster`, and Redis lost its optional storage.
//! Such a child is *replaced*: deleted with `propagationPolicy: Orphan`, so that its ReplicaSets
//! and pods keep running, then created again. The new object adopts them, because the pod
//! template always carried every label of the new selector, and it finds the same template
//! hash, so no pod restarts unless the template itself changed (then it is an ordinary rolling
//! update). Matching the apiserver's "field is immutable" message instead would depend on its
//! wording and would learn of the problem only by failing a write.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{Resource, ResourceExt};

use crate::build::Desired;
use crate::validate::Model;

/// A child to delete (pods orphaned) and create again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replacement {
    pub kind: &'static str,
    pub name: String,
    /// The uid of the object to delete: a precondition, so that an object created by
    /// someone else after it was read is never deleted.
    pub uid: String,
    /// Which immutable field differs, for the log and the Event.
    pub reason: String,
}

/// The existing workload children, as read by `fetch::observe`.
#[derive(Clone, Debug, Default)]
pub struct Existing {
    pub deployment: Option<Deployment>,
    pub statefulset: Option<StatefulSet>,
    /// The managed Sentinels' StatefulSet (read for the status; never replaced so far).
    pub sentinels: Option<StatefulSet>,
}

/// Every child of `desired` whose existing object must be replaced. Only objects this
/// RealtimeCluster controls are ever replaced; a same-named foreign object is left to fail the
/// apply (and be reported), never deleted.
pub fn replacements(model: &Model, desired: &Desired, existing: &Existing) -> Vec<Replacement> {
    let mut out = Vec::new();
    if let Some(d) = &existing.deployment
        && controlled(model, d)
        && let Some(reason) = deployment_change(d, &desired.deployment)
    {
        out.push(replacement(d, reason));
    }
    if let (Some(s), Some(r)) = (&existing.statefulset, &desired.redis)
        && controlled(model, s)
        && let Some(reason) = statefulset_change(s, &r.statefulset)
    {
        out.push(replacement(s, reason));
    }
    out
}

fn replacement<K: Resource<DynamicType = ()>>(obj: &K, reason: String) -> Replacement {
    Replacement {
        kind: match K::kind(&()) {
            k if k == "Deployment" => "Deployment",
            _ => "StatefulSet",
        },
        name: obj.name_any(),
        uid: obj.uid().unwrap_or_default(),
        reason,
    }
}

fn controlled<K: Resource>(model: &Model, obj: &K) -> bool {
    obj.meta().deletion_timestamp.is_none()
        && obj
            .owner_references()
            .iter()
            .any(|o| o.uid == model.owner.uid && o.controller == Some(true))
}

/// The immutable field of `existing` that differs from `desired`, if any.
pub fn deployment_change(existing: &Deployment, desired: &Deployment) -> Option<String> {
    let selector = |d: &Deployment| d.spec.as_ref().map(|s| normalized(&s.selector));
    (selector(existing) != selector(desired)).then(|| "spec.selector".to_string())
}

/// The immutable fields of `existing` that differ from `desired`, if any.
pub fn statefulset_change(existing: &StatefulSet, desired: &StatefulSet) -> Option<String> {
    let (Some(e), Some(d)) = (&existing.spec, &desired.spec) else {
        return None;
    };
    let claims = |s: &k8s_openapi::api::apps::v1::StatefulSetSpec| {
        s.volume_claim_templates
            .iter()
            .flatten()
            .map(|c| c.name_any())
            .collect::<Vec<_>>()
    };
    let mut changed = Vec::new();
    if normalized(&e.selector) != normalized(&d.selector) {
        changed.push("spec.selector");
    }
    if d.service_name.is_some() && e.service_name != d.service_name {
        changed.push("spec.serviceName");
    }
    if claims(e) != claims(d) {
        changed.push("spec.volumeClaimTemplates");
    }
    (!changed.is_empty()).then(|| changed.join(", "))
}

/// A selector with empty lists and maps treated as absent (the apiserver may return either).
fn normalized(s: &LabelSelector) -> LabelSelector {
    LabelSelector {
        match_labels: s.match_labels.clone().filter(|m| !m.is_empty()),
        match_expressions: s.match_expressions.clone().filter(|m| !m.is_empty()),
    }
}

/// Whether a PersistentVolumeClaim named `claim` was made from the `data` claim template of
/// an older version's Redis StatefulSet (`data-<statefulset>-<ordinal>`). The current version
/// keeps nothing on disk, so such claims only hold a stale append-only file.
pub fn is_legacy_redis_claim(model: &Model, claim: &str) -> bool {
    claim
        .strip_prefix(&format!("data-{}-", model.redis_name()))
        .is_some_and(|ordinal| !ordinal.is_empty() && ordinal.chars().all(|c| c.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::test_support::model;
    use crate::build::{self, labels};
    use k8s_openapi::api::core::v1::PersistentVolumeClaim;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
    use serde_json::json;
    use std::collections::BTreeMap;

    /// The selector the previous version gave both workloads (no `realtime.dev/cluster`).
    fn old_selector(name: &str, cluster: &str) -> LabelSelector {
        LabelSelector {
            match_labels: Some(BTreeMap::from([
                (labels::NAME.to_string(), name.to_string()),
                (labels::INSTANCE.to_string(), cluster.to_string()),
            ])),
            match_expressions: None,
        }
    }

    fn desired() -> (Model, Desired) {
        let m = model(json!({}));
        let d = build::desired(&m, Some("pw"), None);
        (m, d)
    }

    fn deployment(e: &mut Existing) -> &mut k8s_openapi::api::apps::v1::DeploymentSpec {
        e.deployment.as_mut().unwrap().spec.as_mut().unwrap()
    }

    fn statefulset(e: &mut Existing) -> &mut k8s_openapi::api::apps::v1::StatefulSetSpec {
        e.statefulset.as_mut().unwrap().spec.as_mut().unwrap()
    }

    fn existing(desired: &Desired) -> Existing {
        let mut e = Existing {
            sentinels: None,
            deployment: Some(desired.deployment.clone()),
            statefulset: Some(desired.redis.as_ref().unwrap().statefulset.clone()),
        };
        for meta in [
            &mut e.deployment.as_mut().unwrap().metadata,
            &mut e.statefulset.as_mut().unwrap().metadata,
        ] {
            meta.uid = Some("old-uid".into());
        }
        e
    }

    #[test]
    fn what_this_version_built_is_never_replaced() {
        let (m, d) = desired();
        assert_eq!(replacements(&m, &d, &existing(&d)), vec![]);
        assert_eq!(replacements(&m, &d, &Existing::default()), vec![]);
    }

    #[test]
    fn children_with_the_previous_selector_are_replaced() {
        let (m, d) = desired();
        let mut e = existing(&d);
        deployment(&mut e).selector = old_selector("realtime-server", "chat");
        statefulset(&mut e).selector = old_selector("redis", "chat");
        let r = replacements(&m, &d, &e);
        assert_eq!(
            r.iter()
                .map(|r| (r.kind, r.name.as_str(), r.uid.as_str(), r.reason.as_str()))
                .collect::<Vec<_>>(),
            [
                ("Deployment", "chat", "old-uid", "spec.selector"),
                ("StatefulSet", "chat-redis", "old-uid", "spec.selector"),
            ]
        );
        // The new selector still matches the pods the old object made: they are adopted.
        let pod_labels = labels::child("chat", "server");
        for (k, v) in labels::server_selector("chat") {
            assert_eq!(pod_labels.get(&k), Some(&v));
        }
    }

    #[test]
    fn previous_redis_storage_replaces_the_statefulset() {
        let (m, d) = desired();
        let mut e = existing(&d);
        statefulset(&mut e).volume_claim_templates = Some(vec![PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some("data".into()),
                ..Default::default()
            },
            ..Default::default()
        }]);
        let r = replacements(&m, &d, &e);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].reason, "spec.volumeClaimTemplates");
    }

    #[test]
    fn foreign_or_terminating_objects_are_not_replaced() {
        let (m, d) = desired();
        let mut e = existing(&d);
        deployment(&mut e).selector = old_selector("realtime-server", "chat");
        e.deployment.as_mut().unwrap().metadata.owner_references = Some(vec![OwnerReference {
            uid: "someone-else".into(),
            controller: Some(true),
            ..m.owner.clone()
        }]);
        assert_eq!(replacements(&m, &d, &e), vec![]);
        let mut e = existing(&d);
        deployment(&mut e).selector = old_selector("realtime-server", "chat");
        e.deployment.as_mut().unwrap().metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Default::default()),
        );
        assert_eq!(replacements(&m, &d, &e), vec![]);
    }

    #[test]
    fn empty_and_absent_selector_parts_are_equal() {
        let (_, d) = desired();
        let mut e = d.deployment.clone();
        e.spec.as_mut().unwrap().selector.match_expressions = Some(vec![]);
        assert_eq!(deployment_change(&e, &d.deployment), None);
    }

    #[test]
    fn legacy_claims_are_recognised_by_name() {
        let (m, _) = desired();
        assert!(is_legacy_redis_claim(&m, "data-chat-redis-0"));
        assert!(is_legacy_redis_claim(&m, "data-chat-redis-12"));
        for other in [
            "data-chat-redis-",
            "data-chat-redis-x",
            "data-chat-redis-0-extra",
            "data-other-redis-0",
            "logs-chat-redis-0",
        ] {
            assert!(!is_legacy_redis_claim(&m, other), "{other}");
        }
    }
}
