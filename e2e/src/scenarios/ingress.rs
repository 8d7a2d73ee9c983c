//! nginx standing in for ingress-nginx (pure): what an Ingress of the operator asks for, read
//! from its ingress-nginx annotations (session affinity by cookie or client address, proxy
//! timeouts, path) and translated into the data plane's [`NginxConf`], whose renderer
//! ([`crate::data_plane::nginx_conf`]) parses the affinity cookie from the `Cookie` header as
//! ingress-nginx does, so the operator's default `rt-affinity` works.
//!
//! One thing differs from ingress-nginx: endpoints change here by reload, so the old worker
//! keeps open websockets as long as they live (ingress-nginx changes endpoints without a
//! reload).

use std::collections::BTreeMap;

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::networking::v1::Ingress;

use crate::data_plane::{Affinity, NginxConf, ProxyTimeouts};

const NGINX: &str = "nginx.ingress.kubernetes.io/";

/// What the Ingress asks of ingress-nginx.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngressSpec {
    /// [`Affinity::Cookie`] or [`Affinity::ClientAddress`].
    pub affinity: Affinity,
    pub path: String,
    pub timeouts: ProxyTimeouts,
    /// The Service the first rule's path routes to.
    pub backend_service: String,
}

impl IngressSpec {
    /// The nginx that plays ingress-nginx for this Ingress in front of `upstream_ports` (pure);
    /// the caller sets the generation.
    pub fn nginx_conf(&self, listen_port: u16, upstream_ports: Vec<u16>) -> NginxConf {
        NginxConf {
            path: self.path.clone(),
            timeouts: self.timeouts,
            worker_connections: 1024,
            // endpoints change by reload here: keep open websockets on the old worker as long
            // as they live
            worker_shutdown_timeout_secs: 600,
            ..NginxConf::new(listen_port, upstream_ports, self.affinity.clone())
        }
    }
}

/// Reads an Ingress like ingress-nginx does (only what the operator sets). Without an affinity
/// ingress-nginx balances round robin, which breaks socket.io long-polling: an error here.
pub fn read_ingress(ing: &Ingress) -> Result<IngressSpec> {
    let a: BTreeMap<String, String> = ing.metadata.annotations.clone().unwrap_or_default();
    let get = |k: &str| a.get(&format!("{NGINX}{k}")).map(String::as_str);
    let secs = |k: &str, default: u64| -> Result<u64> {
        match get(k) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .with_context(|| format!("{NGINX}{k}: {v:?} is not a number of seconds")),
        }
    };
    let affinity = match (get("affinity"), get("upstream-hash-by")) {
        (Some("cookie"), _) => Affinity::Cookie {
            name: get("session-cookie-name")
                .unwrap_or("INGRESSCOOKIE")
                .to_string(),
            path: get("session-cookie-path").unwrap_or("/").to_string(),
            max_age: get("session-cookie-max-age")
                .map(str::parse)
                .transpose()
                .context("session-cookie-max-age")?,
        },
        (Some(other), _) => bail!("unknown {NGINX}affinity {other:?}"),
        (None, Some(by)) if by.trim() == "$remote_addr" => Affinity::ClientAddress,
        (None, Some(by)) => bail!("{NGINX}upstream-hash-by {by:?}: only $remote_addr is simulated"),
        (None, None) => {
            bail!("the Ingress asks for no session affinity: socket.io long-polling needs it")
        }
    };
    affinity.check().context("the Ingress's session cookie")?;
    let rule_path = ing
        .spec
        .as_ref()
        .and_then(|s| s.rules.as_ref())
        .and_then(|r| r.first())
        .and_then(|r| r.http.as_ref())
        .and_then(|h| h.paths.first())
        .ok_or_else(|| anyhow!("the Ingress has no http path"))?;
    let backend_service = rule_path
        .backend
        .service
        .as_ref()
        .map(|s| s.name.clone())
        .ok_or_else(|| anyhow!("the Ingress's path has no service backend"))?;
    Ok(IngressSpec {
        affinity,
        path: rule_path.path.clone().unwrap_or_else(|| "/".into()),
        timeouts: ProxyTimeouts {
            read_secs: secs("proxy-read-timeout", 60)?,
            send_secs: secs("proxy-send-timeout", 60)?,
            connect_secs: secs("proxy-connect-timeout", 5)?,
        },
        backend_service,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data_plane::nginx_conf;
    use serde_json::json;

    fn ingress(annotations: serde_json::Value) -> Ingress {
        serde_json::from_value(json!({
            "metadata": {"name": "chat", "annotations": annotations},
            "spec": {"rules": [{"host": "chat.example.com", "http": {"paths": [
                {"path": "/", "pathType": "Prefix",
                 "backend": {"service": {"name": "chat", "port": {"name": "http"}}}}]}}]},
        }))
        .unwrap()
    }

    #[test]
    fn reads_what_the_operator_sets() {
        let spec = read_ingress(&ingress(json!({
            "nginx.ingress.kubernetes.io/affinity": "cookie",
            "nginx.ingress.kubernetes.io/session-cookie-name": "rt-affinity",
            "nginx.ingress.kubernetes.io/session-cookie-max-age": "172800",
            "nginx.ingress.kubernetes.io/proxy-read-timeout": "3600",
            "nginx.ingress.kubernetes.io/proxy-send-timeout": "3500",
            "nginx.ingress.kubernetes.io/proxy-connect-timeout": "5",
        })))
        .unwrap();
        assert_eq!(
            spec.affinity,
            Affinity::Cookie {
                name: "rt-affinity".into(),
                path: "/".into(),
                max_age: Some(172_800)
            }
        );
        assert_eq!(
            spec.timeouts,
            ProxyTimeouts {
                read_secs: 3600,
                send_secs: 3500,
                connect_secs: 5
            }
        );
        assert_eq!(spec.backend_service, "chat");
        assert_eq!(spec.path, "/");

        let ip = read_ingress(&ingress(
            json!({"nginx.ingress.kubernetes.io/upstream-hash-by": "$remote_addr"}),
        ))
        .unwrap();
        assert_eq!(ip.affinity, Affinity::ClientAddress);
        assert_eq!(ip.timeouts.read_secs, 60);

        assert!(read_ingress(&ingress(json!({}))).is_err(), "no affinity");
        assert!(
            read_ingress(&ingress(
                json!({"nginx.ingress.kubernetes.io/upstream-hash-by": "$request_uri"})
            ))
            .is_err()
        );
        assert!(
            read_ingress(&ingress(
                json!({"nginx.ingress.kubernetes.io/affinity": "cookie",
            "nginx.ingress.kubernetes.io/proxy-read-timeout": "soon"})
            ))
            .is_err()
        );
        assert!(
            read_ingress(&ingress(
                json!({"nginx.ingress.kubernetes.io/affinity": "cookie",
            "nginx.ingress.kubernetes.io/session-cookie-name": "rt;affinity"})
            ))
            .is_err(),
            "not a cookie name"
        );
    }

    #[test]
    fn cookie_names_with_dashes_are_parsed_from_the_header() {
        let spec = read_ingress(&ingress(json!({
            "nginx.ingress.kubernetes.io/affinity": "cookie",
            "nginx.ingress.kubernetes.io/session-cookie-name": "rt-affinity",
        })))
        .unwrap();
        let conf = spec.nginx_conf(8080, vec![3001, 3002]);
        assert_eq!(conf.affinity, Affinity::named_cookie("rt-affinity"));
        assert_eq!(conf.upstream_ports, [3001, 3002]);
        assert_eq!((conf.listen_port, conf.path.as_str()), (8080, "/"));
        assert_eq!(
            conf.timeouts,
            ProxyTimeouts {
                read_secs: 60,
                send_secs: 60,
                connect_secs: 5
            }
        );
        assert_eq!(conf.worker_shutdown_timeout_secs, 600);
        // rendered by the data plane, which reads the cookie from the Cookie header
        let c = nginx_conf(&conf).unwrap();
        assert!(
            c.contains("\"~(?:^|;)\\s*rt-affinity=(?<v>[^;]+)\" $v;"),
            "{c}"
        );
        assert!(
            c.contains("\"rt-affinity=$request_id; Path=/; HttpOnly\""),
            "{c}"
        );
    }

    #[test]
    fn client_address_affinity_hashes_the_address() {
        let spec = IngressSpec {
            affinity: Affinity::ClientAddress,
            path: "/".into(),
            timeouts: ProxyTimeouts {
                read_secs: 3600,
                send_secs: 3600,
                connect_secs: 5,
            },
            backend_service: "chat".into(),
        };
        let c = nginx_conf(&spec.nginx_conf(8080, vec![3001])).unwrap();
        assert!(c.contains("hash $remote_addr consistent;"));
        assert!(!c.contains("Set-Cookie"));
        assert!(c.contains("proxy_read_timeout 3600s;"));
        assert_eq!(c.matches('{').count(), c.matches('}').count());
    }
}
