//! Pure pieces of the control plane: pinned versions, command lines and kubeconfigs.
//! Nothing here touches the file system or starts a process, so all of it is unit-tested.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// The controllers kube-controller-manager runs. Enough for what a test can observe without
/// nodes: garbage collection of owned objects, namespace deletion, the `default`
/// ServiceAccount and `kube-root-ca.crt` in every namespace, and the aggregated `admin` /
/// `edit` / `view` ClusterRoles (empty without the aggregation controller). Workload
/// controllers are left out: without a scheduler or kubelet their Pods would never run.
pub const CONTROLLERS: &[&str] = &[
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "clusterrole-aggregation-controller",
];

/// The versions pinned in `e2e/tools/versions.env`, the one place that names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versions {
    /// Kubernetes release of kube-apiserver, kube-controller-manager and kubectl (`v1.36.3`).
    pub kubernetes: String,
    /// etcd release (`v3.6.16`).
    pub etcd: String,
    /// helm release (`v4.3.1`).
    pub helm: String,
}

impl Versions {
    /// Parses `versions.env` (`KEY=value` lines, `#` comments).
    pub fn parse(text: &str) -> Result<Self, String> {
        let vars: BTreeMap<&str, &str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim(), v.trim().trim_matches('"')))
            .collect();
        let get = |k: &str| {
            vars.get(k)
                .map(|v| v.to_string())
                .ok_or_else(|| format!("versions.env has no {k}"))
        };
        Ok(Self {
            kubernetes: get("K8S_VERSION")?,
            etcd: get("ETCD_VERSION")?,
            helm: get("HELM_VERSION")?,
        })
    }

    /// The folder `e2e/tools/install.sh` installs into, under the tools cache `tools_dir`
    /// (keep in step with `BIN=` in install.sh).
    pub fn bin_dir(&self, tools_dir: &Path) -> PathBuf {
        tools_dir
            .join(format!(
                "k8s-{}-etcd-{}-helm-{}",
                self.kubernetes, self.etcd, self.helm
            ))
            .join("bin")
    }
}

/// What kind of cluster the control plane serves. The default is the envtest-like one (loopback
/// only, no nodes); [`Options::for_node`] is the one a real kubelet joins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The address the API server binds to and advertises (the `kubernetes` Service's endpoint).
    pub address: std::net::Ipv4Addr,
    /// `--service-cluster-ip-range`; its first address is the `kubernetes` Service's ClusterIP.
    pub service_cidr: String,
    /// Run every controller (`*`): Deployments, ReplicaSets, StatefulSets, EndpointSlices...
    pub all_controllers: bool,
    /// Give the API server a client certificate for kubelets (logs, exec, port-forward) and
    /// reach them by their InternalIP.
    pub kubelet_client: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            address: std::net::Ipv4Addr::LOCALHOST,
            service_cidr: "10.0.0.0/24".into(),
            all_controllers: false,
            kubelet_client: false,
        }
    }
}

impl Options {
    /// The control plane of a real node whose pods reach the API server at `address` (a bridge
    /// address of the host, never a public one).
    pub fn for_node(address: std::net::Ipv4Addr, service_cidr: &str) -> Self {
        Self {
            address,
            service_cidr: service_cidr.into(),
            all_controllers: true,
            kubelet_client: true,
        }
    }

    /// The `kubernetes` Service's ClusterIP: the first host address of the service range.
    pub fn kubernetes_service_ip(&self) -> Option<std::net::Ipv4Addr> {
        let base: std::net::Ipv4Addr = self.service_cidr.split('/').next()?.parse().ok()?;
        Some(std::net::Ipv4Addr::from(u32::from(base) + 1))
    }
}

/// Loopback ports chosen for one start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    pub etcd_client: u16,
    pub etcd_peer: u16,
    pub apiserver: u16,
}

/// Where the files of one control plane live (all inside its temp dir).
#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn pki(&self, file: &str) -> PathBuf {
        self.root.join("pki").join(file)
    }
    pub fn etcd_data(&self) -> PathBuf {
        self.root.join("etcd")
    }
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
    /// The admin kubeconfig handed to kubectl, helm and developers.
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.root.join("kubeconfig")
    }
    pub fn controller_manager_kubeconfig(&self) -> PathBuf {
        self.root.join("kube-controller-manager.kubeconfig")
    }
    /// Certificates and kubeconfigs made for other identities (RBAC tests).
    pub fn identities(&self) -> PathBuf {
        self.root.join("identities")
    }
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// etcd: one member on loopback; fsync off because the data is thrown away with the run.
pub fn etcd_args(layout: &Layout, ports: Ports) -> Vec<String> {
    let client = format!("http://127.0.0.1:{}", ports.etcd_client);
    let peer = format!("http://127.0.0.1:{}", ports.etcd_peer);
    vec![
        "--name=realtime-e2e".into(),
        format!("--data-dir={}", s(&layout.etcd_data())),
        format!("--listen-client-urls={client}"),
        format!("--advertise-client-urls={client}"),
        format!("--listen-peer-urls={peer}"),
        format!("--initial-advertise-peer-urls={peer}"),
        format!("--initial-cluster=realtime-e2e={peer}"),
        "--initial-cluster-state=new".into(),
        "--unsafe-no-fsync".into(),
        "--log-level=warn".into(),
    ]
}

/// kube-apiserver: RBAC on, client certificates from our CA, ServiceAccount tokens signed
/// with our key; everything else at its defaults so the tests see a stock API server.
pub fn apiserver_args(layout: &Layout, ports: Ports, opts: &Options) -> Vec<String> {
    let mut args = vec![
        format!("--etcd-servers=http://127.0.0.1:{}", ports.etcd_client),
        format!("--bind-address={}", opts.address),
        format!("--secure-port={}", ports.apiserver),
        format!("--advertise-address={}", opts.address),
        format!("--tls-cert-file={}", s(&layout.pki("apiserver.crt"))),
        format!("--tls-private-key-file={}", s(&layout.pki("apiserver.key"))),
        format!("--client-ca-file={}", s(&layout.pki("ca.crt"))),
        // Node: a kubelet may read only what its own pods need (the Node authorizer).
        if opts.kubelet_client {
            "--authorization-mode=Node,RBAC".into()
        } else {
            "--authorization-mode=RBAC".into()
        },
        format!("--service-cluster-ip-range={}", opts.service_cidr),
        format!(
            "--service-account-issuer=https://{}:{}",
            opts.address, ports.apiserver
        ),
        format!("--service-account-key-file={}", s(&layout.pki("sa.pub"))),
        format!(
            "--service-account-signing-key-file={}",
            s(&layout.pki("sa.key"))
        ),
        "--allow-privileged=true".into(),
        "--profiling=false".into(),
    ];
    if opts.address.is_loopback() {
        // The `kubernetes` Endpoints may not hold a loopback address (rejected every 10 s).
        args.push("--endpoint-reconciler-type=none".into());
    }
    if opts.kubelet_client {
        args.extend([
            format!(
                "--kubelet-client-certificate={}",
                s(&layout.pki("kubelet-client.crt"))
            ),
            format!(
                "--kubelet-client-key={}",
                s(&layout.pki("kubelet-client.key"))
            ),
            // The node's name does not resolve; its InternalIP is the bridge address.
            "--kubelet-preferred-address-types=InternalIP".into(),
        ]);
    }
    args
}

/// kube-controller-manager: its own kubeconfig, no serving port, no leader election (it is
/// alone), and the controllers in [`CONTROLLERS`] under its own identity.
pub fn controller_manager_args(layout: &Layout, opts: &Options) -> Vec<String> {
    let kubeconfig = s(&layout.controller_manager_kubeconfig());
    let controllers = if opts.all_controllers {
        "*".to_string()
    } else {
        CONTROLLERS.join(",")
    };
    vec![
        format!("--kubeconfig={kubeconfig}"),
        format!("--controllers={controllers}"),
        "--leader-elect=false".into(),
        "--use-service-account-credentials=false".into(),
        "--secure-port=0".into(),
        format!(
            "--service-account-private-key-file={}",
            s(&layout.pki("sa.key"))
        ),
        format!("--root-ca-file={}", s(&layout.pki("ca.crt"))),
    ]
}

/// A kubeconfig (JSON, which kubectl and helm read as YAML) with one cluster, one user
/// authenticated either by a client certificate or by a bearer token, and one context.
pub fn kubeconfig(server: &str, ca_file: &Path, user: &str, auth: &KubeconfigAuth) -> Value {
    let user_entry = match auth {
        KubeconfigAuth::ClientCert { cert, key } => json!({
            "client-certificate": s(cert),
            "client-key": s(key),
        }),
        KubeconfigAuth::Token(token) => json!({ "token": token }),
    };
    json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": "realtime-e2e",
            "cluster": { "server": server, "certificate-authority": s(ca_file) },
        }],
        "users": [{ "name": user, "user": user_entry }],
        "contexts": [{
            "name": "realtime-e2e",
            "context": { "cluster": "realtime-e2e", "user": user },
        }],
        "current-context": "realtime-e2e",
    })
}

/// How a kubeconfig's user proves who it is.
#[derive(Debug, Clone)]
pub enum KubeconfigAuth {
    ClientCert { cert: PathBuf, key: PathBuf },
    Token(String),
}

/// A DNS-1123 label `prefix-suffix` of at most 63 characters, for unique namespace names.
pub fn unique_name(prefix: &str, suffix: u64) -> String {
    let clean: String = prefix
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let clean = clean.trim_matches('-');
    let tail = format!("{suffix:x}");
    let keep = 62usize.saturating_sub(tail.len()).min(clean.len());
    let head = clean[..keep].trim_end_matches('-');
    if head.is_empty() {
        format!("ns-{tail}")
    } else {
        format!("{head}-{tail}")
    }
}

/// True when every field of `expected` is present in `actual` with the same value (objects
/// compared key by key, so `actual` may carry more: server defaults, metadata, status).
pub fn json_contains(actual: &Value, expected: &Value) -> bool {
    match (actual, expected) {
        (Value::Object(a), Value::Object(e)) => e
            .iter()
            .all(|(k, ev)| a.get(k).is_some_and(|av| json_contains(av, ev))),
        (Value::Array(a), Value::Array(e)) => {
            a.len() == e.len() && a.iter().zip(e).all(|(av, ev)| json_contains(av, ev))
        }
        (a, e) => a == e,
    }
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> &str {
    let mut idx = text.len();
    let trimmed = text.trim_end_matches('\n');
    let mut seen = 0;
    for (i, _) in trimmed.match_indices('\n').rev() {
        seen += 1;
        if seen == lines {
            idx = i + 1;
            break;
        }
    }
    if seen < lines { text } else { &text[idx..] }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_versions_env_and_derives_install_dir() {
        let v = Versions::parse(
            "# comment\nK8S_VERSION=v1.36.3\nKUBE_MINOR=36\nETCD_VERSION=v3.6.16\nHELM_VERSION=\"v4.3.1\"\n",
        )
        .unwrap();
        assert_eq!(v.kubernetes, "v1.36.3");
        assert_eq!(v.helm, "v4.3.1");
        assert_eq!(
            v.bin_dir(Path::new("/c/tools")),
            PathBuf::from("/c/tools/k8s-v1.36.3-etcd-v3.6.16-helm-v4.3.1/bin")
        );
        assert!(Versions::parse("K8S_VERSION=v1\n").is_err());
    }

    #[test]
    fn the_pinned_versions_match_k8s_openapi_feature() {
        let text = std::fs::read_to_string(
            crate::require::workspace_root().join("e2e/tools/versions.env"),
        )
        .unwrap();
        let v = Versions::parse(&text).unwrap();
        let cargo =
            std::fs::read_to_string(crate::require::workspace_root().join("Cargo.toml")).unwrap();
        let minor = v.kubernetes.split('.').nth(1).unwrap();
        assert!(
            cargo.contains(&format!("\"v1_{minor}\"")),
            "versions.env pins {} but the workspace k8s-openapi feature is not v1_{minor}",
            v.kubernetes
        );
    }

    #[test]
    fn command_lines_point_at_the_layout_and_ports() {
        let layout = Layout {
            root: PathBuf::from("/t"),
        };
        let ports = Ports {
            etcd_client: 1001,
            etcd_peer: 1002,
            apiserver: 1003,
        };
        let etcd = etcd_args(&layout, ports);
        assert!(etcd.contains(&"--listen-client-urls=http://127.0.0.1:1001".to_string()));
        assert!(etcd.contains(&"--initial-cluster=realtime-e2e=http://127.0.0.1:1002".to_string()));
        let api = apiserver_args(&layout, ports, &Options::default());
        assert!(api.contains(&"--etcd-servers=http://127.0.0.1:1001".to_string()));
        assert!(api.contains(&"--secure-port=1003".to_string()));
        assert!(api.contains(&"--authorization-mode=RBAC".to_string()));
        assert!(api.contains(&"--client-ca-file=/t/pki/ca.crt".to_string()));
        let kcm = controller_manager_args(&layout, &Options::default());
        assert!(kcm.iter().any(|a| a.starts_with("--controllers=")
            && a.contains("garbage-collector-controller")
            && a.contains("namespace-controller")));
        assert!(kcm.contains(&"--use-service-account-credentials=false".to_string()));
        assert!(kcm.contains(&"--leader-elect=false".to_string()));
        assert!(api.contains(&"--endpoint-reconciler-type=none".to_string()));
        assert!(!api.iter().any(|a| a.starts_with("--kubelet-client")));
    }

    #[test]
    fn a_node_control_plane_serves_kubelets_on_the_bridge_address() {
        let layout = Layout {
            root: PathBuf::from("/t"),
        };
        let ports = Ports {
            etcd_client: 1,
            etcd_peer: 2,
            apiserver: 3,
        };
        let opts = Options::for_node("10.244.0.1".parse().unwrap(), "10.96.0.0/24");
        assert_eq!(
            opts.kubernetes_service_ip(),
            Some("10.96.0.1".parse().unwrap())
        );
        let api = apiserver_args(&layout, ports, &opts);
        assert!(api.contains(&"--bind-address=10.244.0.1".to_string()));
        assert!(api.contains(&"--advertise-address=10.244.0.1".to_string()));
        assert!(api.contains(&"--service-cluster-ip-range=10.96.0.0/24".to_string()));
        assert!(api.contains(&"--authorization-mode=Node,RBAC".to_string()));
        assert!(api.contains(&"--kubelet-client-key=/t/pki/kubelet-client.key".to_string()));
        // The endpoint reconciler must run: pods reach the API server through its Service.
        assert!(
            !api.iter()
                .any(|a| a.starts_with("--endpoint-reconciler-type"))
        );
        let kcm = controller_manager_args(&layout, &opts);
        assert!(kcm.contains(&"--controllers=*".to_string()));
    }

    #[test]
    fn kubeconfig_carries_server_ca_and_credentials() {
        let k = kubeconfig(
            "https://127.0.0.1:9",
            Path::new("/t/ca.crt"),
            "admin",
            &KubeconfigAuth::ClientCert {
                cert: "/t/a.crt".into(),
                key: "/t/a.key".into(),
            },
        );
        assert_eq!(k["clusters"][0]["cluster"]["server"], "https://127.0.0.1:9");
        assert_eq!(k["users"][0]["user"]["client-key"], "/t/a.key");
        assert_eq!(k["contexts"][0]["context"]["user"], "admin");
        let parsed: kube::config::Kubeconfig = serde_json::from_value(k).unwrap();
        assert_eq!(parsed.current_context.as_deref(), Some("realtime-e2e"));
        let t = kubeconfig(
            "https://x",
            Path::new("/ca"),
            "sa",
            &KubeconfigAuth::Token("tok".into()),
        );
        assert_eq!(t["users"][0]["user"]["token"], "tok");
    }

    #[test]
    fn unique_names_are_dns_labels() {
        assert_eq!(unique_name("GC Test", 0xab), "gc-test-ab");
        assert_eq!(unique_name("--", 1), "ns-1");
        let long = unique_name(&"x".repeat(100), u64::MAX);
        assert!(long.len() <= 63, "{long}");
        assert!(long.ends_with("-ffffffffffffffff"));
    }

    #[test]
    fn json_contains_allows_extra_fields_only() {
        let actual = json!({"a": 1, "b": {"c": [1, {"d": 2, "e": 3}]}, "z": true});
        assert!(json_contains(&actual, &json!({"b": {"c": [1, {"d": 2}]}})));
        assert!(!json_contains(&actual, &json!({"b": {"c": [1]}})));
        assert!(!json_contains(&actual, &json!({"a": 2})));
        assert!(!json_contains(&actual, &json!({"missing": null})));
    }

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(tail("a\nb", 5), "a\nb");
        assert_eq!(tail("", 3), "");
    }
}
