//! Pure builders: one function per child object, each from the validated [`Model`].
//!
//! Builders set only the fields the operator cares about; server-side apply then owns exactly
//! those fields under the operator's field manager, so defaults filled in by the apiserver and
//! fields other controllers set (e.g. an HPA's) are never fought over.

pub mod ingress;
pub mod redis;
pub mod server;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Capabilities, PodSecurityContext, SeccompProfile, SecurityContext};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::validate::Model;

/// Labels shared by every child, and the selectors derived from them.
pub mod labels {
    use std::collections::BTreeMap;

    pub const NAME: &str = "app.kubernetes.io/name";
    pub const INSTANCE: &str = "app.kubernetes.io/instance";
    pub const COMPONENT: &str = "app.kubernetes.io/component";
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    /// The RealtimeCluster a child belongs to (used to find children to prune).
    pub const CLUSTER: &str = "realtime.dev/cluster";
    /// Value of [`MANAGED_BY`] on every child.
    pub const MANAGER: &str = "realtime-operator";

    /// Selector of the server pods (immutable once the Deployment exists: never change it).
    pub fn server_selector(cluster: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (NAME.to_string(), "realtime-server".to_string()),
            (INSTANCE.to_string(), cluster.to_string()),
        ])
    }

    /// Selector of the managed Redis pod (immutable once the StatefulSet exists).
    pub fn redis_selector(cluster: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (NAME.to_string(), "redis".to_string()),
            (INSTANCE.to_string(), cluster.to_string()),
        ])
    }

    /// Full label set of a child of `component` ("server" or "redis").
    pub fn child(cluster: &str, component: &str) -> BTreeMap<String, String> {
        let mut l = if component == "redis" {
            redis_selector(cluster)
        } else {
            server_selector(cluster)
        };
        l.insert(COMPONENT.into(), component.into());
        l.insert(MANAGED_BY.into(), MANAGER.into());
        l.insert(CLUSTER.into(), cluster.into());
        l
    }

    /// Label selector matching every child of `cluster` (for pruning).
    pub fn children_selector(cluster: &str) -> String {
        format!("{MANAGED_BY}={MANAGER},{CLUSTER}={cluster}")
    }
}

/// Pod template annotation carrying a digest of the Redis password, so that server and Redis
/// pods restart together if the Secret is ever recreated (the password itself never appears).
pub const REDIS_AUTH_HASH_ANNOTATION: &str = "realtime.dev/redis-auth-hash";

/// Metadata of a child: name, namespace, labels and the controller owner reference.
fn meta(model: &Model, name: &str, component: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(model.namespace.clone()),
        labels: Some(labels::child(&model.name, component)),
        owner_references: Some(vec![model.owner.clone()]),
        ..Default::default()
    }
}

/// Pod-level part of the "restricted" Pod Security Standard.
fn restricted_pod_security(uid: i64) -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(uid),
        run_as_group: Some(uid),
        fs_group: Some(uid),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Container-level part of the "restricted" Pod Security Standard, with a read-only root.
fn restricted_container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn annotations(pairs: impl IntoIterator<Item = (String, String)>) -> Option<BTreeMap<String, String>> {
    let m: BTreeMap<_, _> = pairs.into_iter().collect();
    (!m.is_empty()).then_some(m)
}

#[cfg(test)]
pub(crate) mod test_support {
    use crate::validate::{Defaults, Model, validate};

    /// A validated model of a cluster `chat` in namespace `apps` with `spec`.
    pub fn model(spec: serde_json::Value) -> Model {
        let rc: crate::api::RealtimeCluster = serde_json::from_value(serde_json::json!({
            "apiVersion": "realtime.dev/v1alpha1",
            "kind": "RealtimeCluster",
            "metadata": {"name": "chat", "namespace": "apps", "uid": "u-1", "generation": 1},
            "spec": spec,
        }))
        .unwrap();
        validate(
            &rc,
            &Defaults {
                server_image: "example.org/realtime-server:1".into(),
                redis_image: "redis:7.4-alpine".into(),
            },
        )
        .unwrap()
    }
}
