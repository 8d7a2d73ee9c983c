//! The ingress-nginx Ingress with session affinity and websocket-friendly timeouts.
//!
//! socket.io long-polling sends a session's requests as separate HTTP requests that must reach
//! the pod holding the session, hence affinity; websockets stay open across idle periods that
//! only pings fill, hence proxy timeouts well above the ping interval.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, ServiceBackendPort,
};

use super::meta;
use crate::api::Affinity;
use crate::validate::Model;

const NGINX: &str = "nginx.ingress.kubernetes.io/";

/// The Ingress, or `None` when the ingress is disabled.
pub fn ingress(model: &Model) -> Option<Ingress> {
    let i = model.ingress.as_ref()?;
    let mut annotations: BTreeMap<String, String> = i.annotations.clone();
    let mut set = |k: &str, v: String| {
        annotations.insert(format!("{NGINX}{k}"), v);
    };
    match i.affinity {
        Affinity::Cookie => {
            set("affinity", "cookie".into());
            // persistent: scaling out never moves an existing session to another pod.
            set("affinity-mode", "persistent".into());
            set("session-cookie-name", i.cookie_name.clone());
            set(
                "session-cookie-max-age",
                i.cookie_max_age_seconds.to_string(),
            );
            set(
                "session-cookie-expires",
                i.cookie_max_age_seconds.to_string(),
            );
            set("session-cookie-path", i.cookie_path.clone());
        }
        Affinity::IpHash => set("upstream-hash-by", "$remote_addr".into()),
    }
    set("proxy-read-timeout", i.read_timeout_seconds.to_string());
    set("proxy-send-timeout", i.send_timeout_seconds.to_string());
    set(
        "proxy-connect-timeout",
        i.connect_timeout_seconds.to_string(),
    );

    let mut metadata = meta(model, model.server_name(), "server");
    metadata.annotations = Some(annotations);
    Some(Ingress {
        metadata,
        spec: Some(IngressSpec {
            ingress_class_name: Some(i.class_name.clone()),
            rules: Some(vec![IngressRule {
                host: Some(i.host.clone()),
                http: Some(HTTPIngressRuleValue {
                    paths: vec![HTTPIngressPath {
                        path: Some(i.path.clone()),
                        path_type: "Prefix".into(),
                        backend: IngressBackend {
                            service: Some(IngressServiceBackend {
                                name: model.server_name().to_string(),
                                port: Some(ServiceBackendPort {
                                    name: Some("http".into()),
                                    ..Default::default()
                                }),
                            }),
                            ..Default::default()
                        },
                    }],
                }),
            }]),
            tls: i.tls_secret_name.as_ref().map(|secret| {
                vec![IngressTLS {
                    hosts: Some(vec![i.host.clone()]),
                    secret_name: Some(secret.clone()),
                }]
            }),
            ..Default::default()
        }),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::test_support::model;
    use serde_json::json;

    fn annotations(ing: &Ingress) -> &BTreeMap<String, String> {
        ing.metadata.annotations.as_ref().unwrap()
    }

    #[test]
    fn disabled_or_absent_means_no_ingress() {
        assert!(ingress(&model(json!({}))).is_none());
        assert!(
            ingress(&model(
                json!({"ingress": {"enabled": false, "host": "a.b"}})
            ))
            .is_none()
        );
    }

    #[test]
    fn cookie_affinity_and_timeouts() {
        let m = model(
            json!({"ingress": {"enabled": true, "host": "chat.example.com",
            "cookie": {"name": "sticky", "maxAgeSeconds": 600, "path": "/rt"},
            "annotations": {"cert-manager.io/cluster-issuer": "le"}}}),
        );
        let ing = ingress(&m).unwrap();
        let a = annotations(&ing);
        assert_eq!(a["nginx.ingress.kubernetes.io/affinity"], "cookie");
        assert_eq!(a["nginx.ingress.kubernetes.io/affinity-mode"], "persistent");
        assert_eq!(
            a["nginx.ingress.kubernetes.io/session-cookie-name"],
            "sticky"
        );
        assert_eq!(
            a["nginx.ingress.kubernetes.io/session-cookie-max-age"],
            "600"
        );
        assert_eq!(a["nginx.ingress.kubernetes.io/session-cookie-path"], "/rt");
        assert!(!a.contains_key("nginx.ingress.kubernetes.io/upstream-hash-by"));
        assert_eq!(a["nginx.ingress.kubernetes.io/proxy-read-timeout"], "3600");
        assert_eq!(a["nginx.ingress.kubernetes.io/proxy-send-timeout"], "3600");
        assert_eq!(a["cert-manager.io/cluster-issuer"], "le");
        let read: i32 = a["nginx.ingress.kubernetes.io/proxy-read-timeout"]
            .parse()
            .unwrap();
        assert!(read > m.server.ping_interval_seconds + m.server.ping_timeout_seconds);

        let spec = ing.spec.unwrap();
        assert_eq!(spec.ingress_class_name.as_deref(), Some("nginx"));
        assert!(spec.tls.is_none());
        let rule = &spec.rules.unwrap()[0];
        assert_eq!(rule.host.as_deref(), Some("chat.example.com"));
        let path = &rule.http.as_ref().unwrap().paths[0];
        assert_eq!(
            (path.path.as_deref(), path.path_type.as_str()),
            (Some("/"), "Prefix")
        );
        let backend = path.backend.service.as_ref().unwrap();
        assert_eq!(backend.name, "chat");
        assert_eq!(backend.port.as_ref().unwrap().name.as_deref(), Some("http"));
        assert!(ing.metadata.owner_references.is_some());
    }

    #[test]
    fn ip_hash_affinity_and_tls() {
        let m = model(
            json!({"ingress": {"enabled": true, "host": "chat.example.com",
            "className": "internal", "affinity": "ip-hash", "tlsSecretName": "chat-tls",
            "timeouts": {"readSeconds": 120, "sendSeconds": 90, "connectSeconds": 3}}}),
        );
        let ing = ingress(&m).unwrap();
        let a = annotations(&ing);
        assert_eq!(
            a["nginx.ingress.kubernetes.io/upstream-hash-by"],
            "$remote_addr"
        );
        assert!(!a.contains_key("nginx.ingress.kubernetes.io/affinity"));
        assert_eq!(a["nginx.ingress.kubernetes.io/proxy-read-timeout"], "120");
        assert_eq!(a["nginx.ingress.kubernetes.io/proxy-send-timeout"], "90");
        assert_eq!(a["nginx.ingress.kubernetes.io/proxy-connect-timeout"], "3");
        let spec = ing.spec.unwrap();
        assert_eq!(spec.ingress_class_name.as_deref(), Some("internal"));
        let tls = &spec.tls.unwrap()[0];
        assert_eq!(tls.secret_name.as_deref(), Some("chat-tls"));
        assert_eq!(
            tls.hosts.as_deref(),
            Some(&["chat.example.com".to_string()][..])
        );
    }
}
