//! NetworkPolicies: who may open connections to the server and Redis pods.
//!
//! - Server pods: the socket.io port from anywhere (clients come through the Ingress, the
//!   Service, or from other namespaces); the admin port (metrics, the publish API) only from
//!   the cluster's own namespace, the operator's namespace (it reads each pod's connection
//!   count there) and the peers `spec.networkPolicies.adminFrom` names.
//! - The managed Redis: its port only from this cluster's server pods; with highAvailability
//!   also from its other Redis pods (replication) and its Sentinels (monitoring, failover).
//! - The Sentinels (highAvailability): their port from the server pods (they ask for the
//!   primary), the Redis pods (start scripts and the preStop failover ask them), each other,
//!   and the operator's namespace (it asks them for the primary, for the status).
//!
//! Only ingress is restricted. Egress stays open: the servers reach DNS and, with an external
//! Redis, an address the operator cannot know (a cloud endpoint, an IP outside the cluster).
//! Probes come from the kubelet on the node, which NetworkPolicy implementations allow.

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::parts::match_labels;
use super::{labels, meta};
use crate::api::NetworkPolicies;
use crate::validate::{Model, RedisModel};

/// The label every namespace carries with its own name (set by the apiserver).
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// The server pods' policy, and the managed Redis' one (None when the spec turns them off).
pub fn policies(model: &Model) -> Vec<NetworkPolicy> {
    let Some(np) = &model.network_policies else {
        return Vec::new();
    };
    let mut out = vec![server(model, np)];
    if let RedisModel::Managed { ha, .. } = &model.redis {
        out.push(redis(model, ha.is_some()));
        if ha.is_some() {
            out.push(sentinel(model));
        }
    }
    out
}

/// Pods of this cluster with `selector`'s labels.
fn pods(selector: std::collections::BTreeMap<String, String>) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        pod_selector: Some(match_labels(selector)),
        ..Default::default()
    }
}

/// Every pod of the operator's namespace, when it is known.
fn operator_namespace(model: &Model) -> Option<NetworkPolicyPeer> {
    model
        .operator_namespace
        .as_ref()
        .map(|ns| NetworkPolicyPeer {
            namespace_selector: Some(match_labels(
                [(NAMESPACE_NAME_LABEL.to_string(), ns.clone())].into(),
            )),
            ..Default::default()
        })
}

/// An ingress-only policy of the pods `selector` names: `port_name` from `from`.
fn only_from(
    model: &Model,
    name: &str,
    component: &str,
    selector: std::collections::BTreeMap<String, String>,
    port_name: &str,
    from: Vec<NetworkPolicyPeer>,
) -> NetworkPolicy {
    NetworkPolicy {
        metadata: meta(model, name, component),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(match_labels(selector)),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                ports: Some(vec![port(port_name)]),
                from: Some(from),
            }]),
            ..Default::default()
        }),
    }
}

fn port(name: &str) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

fn server(model: &Model, np: &NetworkPolicies) -> NetworkPolicy {
    // Clients: any source (no `from`).
    let mut rules = vec![NetworkPolicyIngressRule {
        ports: Some(vec![port("http")]),
        from: None,
    }];
    if model.server.app.is_none() {
        // Every pod of the cluster's own namespace (an empty pod selector), plus the named peers.
        let same_namespace = NetworkPolicyPeer {
            pod_selector: Some(LabelSelector::default()),
            ..Default::default()
        };
        // The operator reads each pod's connection count there (load.rs).
        let operator = operator_namespace(model);
        rules.push(NetworkPolicyIngressRule {
            ports: Some(vec![port("admin")]),
            from: Some(
                std::iter::once(same_namespace)
                    .chain(operator)
                    .chain(np.admin_from.iter().cloned())
                    .collect(),
            ),
        });
    }
    NetworkPolicy {
        metadata: meta(model, model.server_name(), "server"),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(match_labels(labels::server_selector(&model.name))),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(rules),
            ..Default::default()
        }),
    }
}

fn redis(model: &Model, ha: bool) -> NetworkPolicy {
    let name = &model.name;
    let mut from = vec![pods(labels::server_selector(name))];
    if ha {
        from.push(pods(labels::redis_selector(name)));
        from.push(pods(labels::sentinel_selector(name)));
    }
    only_from(
        model,
        &model.redis_name(),
        "redis",
        labels::redis_selector(name),
        "redis",
        from,
    )
}

fn sentinel(model: &Model) -> NetworkPolicy {
    let name = &model.name;
    let from = [
        labels::server_selector(name),
        labels::redis_selector(name),
        labels::sentinel_selector(name),
    ]
    .into_iter()
    .map(pods)
    .chain(operator_namespace(model))
    .collect();
    only_from(
        model,
        &model.sentinel_name(),
        "sentinel",
        labels::sentinel_selector(name),
        "sentinel",
        from,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::test_support::model;
    use kube::ResourceExt;
    use serde_json::json;

    fn rules(p: &NetworkPolicy) -> Vec<NetworkPolicyIngressRule> {
        p.spec.as_ref().unwrap().ingress.clone().unwrap()
    }

    #[test]
    fn clients_from_anywhere_admin_from_the_namespace_and_named_peers_redis_from_servers() {
        let m = model(json!({"networkPolicies": {"adminFrom": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]}}));
        let p = policies(&m);
        assert_eq!(
            p.iter().map(|p| p.name_any()).collect::<Vec<_>>(),
            ["chat", "chat-redis"]
        );
        let server = rules(&p[0]);
        assert_eq!(
            server[0].ports.as_ref().unwrap()[0].port,
            Some(IntOrString::String("http".into()))
        );
        assert!(server[0].from.is_none(), "socket.io clients from anywhere");
        let admin_from = server[1].from.as_ref().unwrap();
        assert_eq!(admin_from.len(), 2);
        assert_eq!(admin_from[0].pod_selector, Some(LabelSelector::default()));
        assert!(
            admin_from[0].namespace_selector.is_none(),
            "own namespace only"
        );
        assert!(admin_from[1].namespace_selector.is_some());
        let redis = rules(&p[1]);
        assert_eq!(redis.len(), 1);
        assert_eq!(
            redis[0].from.as_ref().unwrap()[0].pod_selector,
            Some(match_labels(labels::server_selector("chat")))
        );
        assert_eq!(
            p[1].spec.as_ref().unwrap().pod_selector,
            Some(match_labels(labels::redis_selector("chat")))
        );
    }

    #[test]
    fn the_operator_namespace_reaches_the_admin_port() {
        let mut m = model(json!({}));
        m.operator_namespace = Some("realtime-system".into());
        let admin = rules(&policies(&m)[0])[1].from.clone().unwrap();
        let ns = admin[1].namespace_selector.as_ref().unwrap();
        assert_eq!(
            ns.match_labels.as_ref().unwrap()["kubernetes.io/metadata.name"],
            "realtime-system"
        );
        assert!(admin[1].pod_selector.is_none(), "any pod of that namespace");
    }

    #[test]
    fn highly_available_redis_admits_its_replicas_and_sentinels() {
        let mut m = model(json!({"redis": {"managed": {"highAvailability": {}}}}));
        m.operator_namespace = Some("realtime-system".into());
        let p = policies(&m);
        assert_eq!(
            p.iter().map(|p| p.name_any()).collect::<Vec<_>>(),
            ["chat", "chat-redis", "chat-sentinel"]
        );
        let peers = |p: &NetworkPolicy| -> Vec<_> {
            rules(p)[0]
                .from
                .clone()
                .unwrap()
                .into_iter()
                .map(|f| (f.pod_selector, f.namespace_selector))
                .collect()
        };
        let servers = Some(match_labels(labels::server_selector("chat")));
        let redis = Some(match_labels(labels::redis_selector("chat")));
        let sentinels = Some(match_labels(labels::sentinel_selector("chat")));
        assert_eq!(
            peers(&p[1]),
            [
                (servers.clone(), None),
                (redis.clone(), None),
                (sentinels.clone(), None)
            ]
        );
        let s = peers(&p[2]);
        assert_eq!(
            s[..3],
            [(servers, None), (redis, None), (sentinels.clone(), None)]
        );
        assert!(s[3].1.is_some(), "the operator asks the Sentinels: {s:?}");
        assert_eq!(
            rules(&p[2])[0].ports.as_ref().unwrap()[0].port,
            Some(IntOrString::String("sentinel".into()))
        );
        assert_eq!(p[2].spec.as_ref().unwrap().pod_selector, sentinels);
    }

    #[test]
    fn off_external_redis_and_your_own_server() {
        assert!(policies(&model(json!({"networkPolicies": {"enabled": false}}))).is_empty());
        let p = policies(&model(json!({"redis": {"external": {"host": "cache"}}})));
        assert_eq!(p.len(), 1, "no Redis pods to protect");
        let p = policies(&model(
            json!({"image": "acme/chat:1", "app": {"port": 8080}}),
        ));
        assert_eq!(rules(&p[0]).len(), 1, "no admin port");
    }
}
