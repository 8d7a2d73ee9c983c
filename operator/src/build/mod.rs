//! Pure builders: one function per child object, each from the validated [`Model`].
//!
//! Builders set only the fields the operator cares about; server-side apply then owns exactly
//! those fields under the operator's field manager, so defaults filled in by the apiserver and
//! fields other controllers set (e.g. an HPA's) are never fought over.

pub mod ingress;
pub mod network;
pub mod parts;
pub mod redis;
pub mod server;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{
    Capabilities, PodSecurityContext, SeccompProfile, Secret, SecurityContext, Service,
};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
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

    /// Selector of the server pods. It carries [`CLUSTER`] so that it can never match the pods
    /// of another release that happens to use the same instance label. Selectors of
    /// Deployments and StatefulSets are immutable: a child made with an older selector is
    /// replaced without restarting its pods (see `plan::replacements`).
    pub fn server_selector(cluster: &str) -> BTreeMap<String, String> {
        selector("realtime-server", cluster)
    }

    /// [`server_selector`] as a label-selector string (`k=v,k=v`), for lists and the scale
    /// subresource.
    pub fn server_selector_string(cluster: &str) -> String {
        server_selector(cluster)
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Selector of the managed Redis pod (see [`server_selector`]).
    pub fn redis_selector(cluster: &str) -> BTreeMap<String, String> {
        selector("redis", cluster)
    }

    /// Selector of the managed Redis Sentinel pods (highly available Redis).
    pub fn sentinel_selector(cluster: &str) -> BTreeMap<String, String> {
        selector("redis-sentinel", cluster)
    }

    /// Selector of the pods of `component` ("server", "redis" or "sentinel").
    pub fn child_selector(cluster: &str, component: &str) -> BTreeMap<String, String> {
        match component {
            "redis" => redis_selector(cluster),
            "sentinel" => sentinel_selector(cluster),
            _ => server_selector(cluster),
        }
    }

    fn selector(name: &str, cluster: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (NAME.to_string(), name.to_string()),
            (INSTANCE.to_string(), cluster.to_string()),
            (CLUSTER.to_string(), cluster.to_string()),
        ])
    }

    /// Full label set of a child of `component` ("server", "redis" or "sentinel").
    pub fn child(cluster: &str, component: &str) -> BTreeMap<String, String> {
        let mut l = child_selector(cluster, component);
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

/// Every child the operator wants to exist for one RealtimeCluster.
#[derive(Clone, Debug)]
pub struct Desired {
    pub deployment: Deployment,
    /// The Service the Ingress routes to (socket.io port only).
    pub service: Service,
    /// The ClusterIP Service of the admin port (`<name>-admin`); realtime-server only (your
    /// own server, `spec.app`, has no admin port).
    pub admin_service: Option<Service>,
    pub pdb: PodDisruptionBudget,
    /// Present for a managed Redis.
    pub redis: Option<RedisChildren>,
    /// Present when the ingress is enabled.
    pub ingress: Option<Ingress>,
    /// The server's and the managed Redis' NetworkPolicies (none when turned off).
    pub network_policies: Vec<NetworkPolicy>,
}

/// The names of every desired child, by kind: what pruning keeps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Keep {
    pub deployments: Vec<String>,
    pub services: Vec<String>,
    pub pdbs: Vec<String>,
    pub statefulsets: Vec<String>,
    pub secrets: Vec<String>,
    pub ingresses: Vec<String>,
    pub network_policies: Vec<String>,
}

impl Desired {
    /// The names to keep when pruning. The destructuring names every field, so a new child
    /// kind added to [`Desired`] does not compile until it is listed here (and then pruned).
    pub fn keep(&self) -> Keep {
        use kube::ResourceExt as _;
        let Desired {
            deployment,
            service,
            admin_service,
            pdb,
            redis,
            ingress,
            network_policies,
        } = self;
        let mut k = Keep {
            deployments: vec![deployment.name_any()],
            services: std::iter::once(service)
                .chain(admin_service)
                .map(|s| s.name_any())
                .collect(),
            pdbs: vec![pdb.name_any()],
            ingresses: ingress.iter().map(|i| i.name_any()).collect(),
            network_policies: network_policies.iter().map(|p| p.name_any()).collect(),
            ..Keep::default()
        };
        if let Some(RedisChildren {
            secret,
            service,
            statefulset,
            ha,
        }) = redis
        {
            k.secrets.push(secret.name_any());
            k.services.push(service.name_any());
            k.statefulsets.push(statefulset.name_any());
            if let Some(HaChildren {
                sentinel_service,
                sentinel_statefulset,
                redis_pdb,
                sentinel_pdb,
            }) = ha
            {
                k.services.push(sentinel_service.name_any());
                k.statefulsets.push(sentinel_statefulset.name_any());
                k.pdbs.push(redis_pdb.name_any());
                k.pdbs.push(sentinel_pdb.name_any());
            }
        }
        k
    }
}

/// The children a highly available managed Redis adds.
#[derive(Clone, Debug)]
pub struct HaChildren {
    pub sentinel_service: Service,
    pub sentinel_statefulset: StatefulSet,
    pub redis_pdb: PodDisruptionBudget,
    pub sentinel_pdb: PodDisruptionBudget,
}

/// The managed Redis' children.
#[derive(Clone, Debug)]
pub struct RedisChildren {
    /// Present with `highAvailability`.
    pub ha: Option<HaChildren>,
    pub secret: Secret,
    pub service: Service,
    pub statefulset: StatefulSet,
}

/// Builds every desired child. `redis_password` is the Redis password: for a managed Redis the
/// existing or freshly generated one (it goes into the Secret), for an external Redis the value
/// of `passwordSecretRef` as read by the caller (None when there is none), used only for its
/// digest; `sentinel_password` is an external Sentinel's `passwordSecretRef` value, also only
/// for the digest. The digest goes on the server pod template ([`REDIS_AUTH_HASH_ANNOTATION`]),
/// so a changed password rolls the servers without a manual restart.
pub fn desired(
    model: &Model,
    redis_password: Option<&str>,
    sentinel_password: Option<&str>,
) -> Desired {
    let hash = match sentinel_password {
        // Without a Sentinel password the digest is the one earlier versions recorded.
        None => redis_password.map(redis::auth_hash),
        Some(s) => Some(redis::auth_hash(&format!(
            "{}\nsentinel:{s}",
            redis_password.unwrap_or_default()
        ))),
    };
    let redis = match (&model.redis, redis_password, &hash) {
        (crate::validate::RedisModel::Managed { .. }, Some(password), Some(hash)) => {
            Some(RedisChildren {
                secret: redis::secret(model, password),
                service: redis::service(model),
                statefulset: redis::statefulset(model, hash).expect("managed redis"),
                ha: model.redis_ha().map(|_| HaChildren {
                    sentinel_service: redis::sentinel_service(model),
                    sentinel_statefulset: redis::sentinel_statefulset(model, hash)
                        .expect("managed redis with highAvailability"),
                    redis_pdb: redis::pdb(model, &model.redis_name(), "redis"),
                    sentinel_pdb: redis::pdb(model, &model.sentinel_name(), "sentinel"),
                }),
            })
        }
        _ => None,
    };
    Desired {
        deployment: server::deployment(model, hash.as_deref()),
        service: server::service(model),
        admin_service: model
            .server
            .app
            .is_none()
            .then(|| server::admin_service(model)),
        pdb: server::pod_disruption_budget(model),
        redis,
        ingress: ingress::ingress(model),
        network_policies: network::policies(model),
    }
}

/// Pod template annotation carrying a digest of the Redis password (managed, or the external
/// one's `passwordSecretRef` value), so that pods restart when it changes: server and Redis
/// pods together if the managed Secret is recreated, the servers when an external password
/// Secret is edited. The password itself never appears.
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

fn annotations(
    pairs: impl IntoIterator<Item = (String, String)>,
) -> Option<BTreeMap<String, String>> {
    let m: BTreeMap<_, _> = pairs.into_iter().collect();
    (!m.is_empty()).then_some(m)
}

#[cfg(test)]
mod tests {
    use super::test_support::model;
    use super::*;
    use k8s_openapi::api::core::v1::PodTemplateSpec;
    use serde_json::json;

    #[test]
    fn pruning_keeps_every_desired_child_and_only_those() {
        let managed = desired(&model(json!({})), Some("pw"), None).keep();
        assert_eq!(
            managed,
            Keep {
                deployments: vec!["chat".into()],
                services: vec!["chat".into(), "chat-admin".into(), "chat-redis".into()],
                pdbs: vec!["chat".into()],
                statefulsets: vec!["chat-redis".into()],
                secrets: vec!["chat-redis-auth".into()],
                ingresses: vec![],
                network_policies: vec!["chat".into(), "chat-redis".into()],
            }
        );
        let external = desired(
            &model(json!({"redis": {"external": {"host": "cache"}},
                "ingress": {"enabled": true, "host": "a.example"}})),
            None,
            None,
        )
        .keep();
        assert!(external.statefulsets.is_empty() && external.secrets.is_empty());
        assert_eq!(external.services, vec!["chat", "chat-admin"]);
        assert_eq!(external.ingresses, vec!["chat"]);
    }

    #[test]
    fn desired_children_follow_the_spec() {
        let m = model(json!({}));
        let d = desired(&m, Some("pw"), None);
        let redis = d.redis.as_ref().expect("managed redis children");
        assert!(d.ingress.is_none());
        let pod_ann = |t: &PodTemplateSpec| -> Option<String> {
            t.metadata
                .as_ref()?
                .annotations
                .as_ref()?
                .get(REDIS_AUTH_HASH_ANNOTATION)
                .cloned()
        };
        let hash = Some(redis::auth_hash("pw"));
        assert_eq!(pod_ann(&d.deployment.spec.as_ref().unwrap().template), hash);
        assert_eq!(
            pod_ann(&redis.statefulset.spec.as_ref().unwrap().template),
            hash
        );

        let m = model(json!({"redis": {"external": {"host": "cache"}},
            "ingress": {"enabled": true, "host": "a.example"}}));
        let d = desired(&m, Some("external-pw"), None);
        assert!(d.redis.is_none());
        assert!(d.ingress.is_some());
        // The external password's digest rolls the servers when it changes.
        let external =
            |pw: Option<&str>| pod_ann(&desired(&m, pw, None).deployment.spec.unwrap().template);
        assert_eq!(
            external(Some("external-pw")),
            Some(redis::auth_hash("external-pw"))
        );
        assert_ne!(external(Some("rotated")), external(Some("external-pw")));
        assert_eq!(external(None), None, "no password Secret, no annotation");
        // So does the Sentinels' password, alone or with the data nodes' one.
        let both = |pw: Option<&str>, spw: Option<&str>| {
            pod_ann(&desired(&m, pw, spw).deployment.spec.unwrap().template)
        };
        let with_sentinel = both(Some("external-pw"), Some("s1"));
        assert!(with_sentinel.is_some());
        assert_ne!(with_sentinel, both(Some("external-pw"), None));
        assert_ne!(with_sentinel, both(Some("external-pw"), Some("s2")));
        assert_ne!(with_sentinel, both(Some("rotated"), Some("s1")));
        assert!(both(None, Some("s1")).is_some());
    }

    #[test]
    fn ha_redis_adds_sentinels_and_budgets_and_pruning_keeps_them() {
        let m = model(json!({"redis": {"managed": {"highAvailability": {}}}}));
        let d = desired(&m, Some("pw"), None);
        let ha = d.redis.as_ref().unwrap().ha.as_ref().unwrap();
        assert_eq!(
            ha.sentinel_statefulset.metadata.name.as_deref(),
            Some("chat-sentinel")
        );
        assert_eq!(
            ha.sentinel_service.metadata.name.as_deref(),
            Some("chat-sentinel")
        );
        assert_eq!(ha.redis_pdb.metadata.name.as_deref(), Some("chat-redis"));
        assert_eq!(
            ha.sentinel_pdb.metadata.name.as_deref(),
            Some("chat-sentinel")
        );
        let k = d.keep();
        assert_eq!(k.statefulsets, ["chat-redis", "chat-sentinel"]);
        assert_eq!(k.pdbs, ["chat", "chat-redis", "chat-sentinel"]);
        assert!(k.services.contains(&"chat-sentinel".to_string()));
        // the same password digest rolls the Redis, Sentinel and server pods together
        let ann = |t: &k8s_openapi::api::core::v1::PodTemplateSpec| {
            t.metadata.as_ref().unwrap().annotations.as_ref().unwrap()[REDIS_AUTH_HASH_ANNOTATION]
                .clone()
        };
        let h = redis::auth_hash("pw");
        assert_eq!(
            ann(&ha.sentinel_statefulset.spec.as_ref().unwrap().template),
            h
        );
        assert_eq!(ann(&d.deployment.spec.as_ref().unwrap().template), h);
        // without highAvailability none of them is kept (pruned)
        let k = desired(&model(json!({})), Some("pw"), None).keep();
        assert_eq!(k.statefulsets, ["chat-redis"]);
        assert_eq!(k.pdbs, ["chat"]);
    }

    #[test]
    fn every_child_carries_labels_and_owner() {
        let m = model(json!({"ingress": {"enabled": true, "host": "a.example"}}));
        let d = desired(&m, Some("pw"), None);
        let r = d.redis.unwrap();
        let metas = [
            &d.deployment.metadata,
            &d.service.metadata,
            &d.admin_service.as_ref().unwrap().metadata,
            &d.pdb.metadata,
            &d.ingress.as_ref().unwrap().metadata,
            &r.secret.metadata,
            &r.service.metadata,
            &r.statefulset.metadata,
        ];
        for meta in metas {
            let l = meta.labels.as_ref().unwrap();
            assert_eq!(l[labels::MANAGED_BY], labels::MANAGER, "{:?}", meta.name);
            assert_eq!(l[labels::CLUSTER], "chat");
            let o = &meta.owner_references.as_ref().unwrap()[0];
            assert_eq!((o.uid.as_str(), o.controller), ("u-1", Some(true)));
            assert_eq!(meta.namespace.as_deref(), Some("apps"));
        }
    }
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
                operator_namespace: None,
            },
        )
        .unwrap()
    }
}
