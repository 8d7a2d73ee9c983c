//! Pure pieces of the real node: fixed addresses, the configuration files of containerd, the
//! CNI bridge, the kubelet, kube-proxy, CoreDNS and Traefik, and the iptables fence. Nothing here
//! touches the machine, so all of it is unit-tested.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// The bridge the pods hang off. Made by the harness before anything starts (the API server,
/// the kubelet and CoreDNS bind to its address) and deleted at teardown.
pub const BRIDGE: &str = "rtcni0";
/// The pods' addresses: one /24 on [`BRIDGE`], handed out by CNI's host-local IPAM.
pub const POD_CIDR: &str = "10.244.0.0/24";
/// The host's address on the bridge: node IP, API server, kubelet, CoreDNS.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
/// ClusterIPs (kube-proxy's iptables rules); never routed anywhere.
pub const SERVICE_CIDR: &str = "10.96.0.0/24";
/// The node's name (its kubelet client certificate says `system:node:rt-node`).
pub const NODE_NAME: &str = "rt-node";
/// The cluster's DNS domain.
pub const CLUSTER_DOMAIN: &str = "cluster.local";
/// Where a node's files live. Fixed, so that a run killed before its teardown is found and
/// swept by the next one (see `record.json`).
pub const STATE_ROOT: &str = "/var/lib/realtime-e2e-node";
/// Runtime files (sockets) of containerd: short paths (sockets are limited to 108 bytes).
pub const RUN_ROOT: &str = "/run/realtime-e2e-node";
/// Taken for the node's whole life: one node per machine (its bridge and CIDRs are fixed).
pub const LOCK_FILE: &str = "/run/realtime-e2e-node.lock";
/// Chains of the fence; every rule of ours lives in one of them.
pub const FENCE_PREFIX: &str = "RT-NODE-";

/// The files of one node.
#[derive(Debug, Clone)]
pub struct NodeLayout {
    pub root: PathBuf,
    pub run: PathBuf,
}

impl Default for NodeLayout {
    fn default() -> Self {
        Self {
            root: PathBuf::from(STATE_ROOT),
            run: PathBuf::from(RUN_ROOT),
        }
    }
}

impl NodeLayout {
    pub fn record(&self) -> PathBuf {
        self.root.join("record.json")
    }
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
    pub fn containerd_config(&self) -> PathBuf {
        self.root.join("containerd.toml")
    }
    pub fn containerd_root(&self) -> PathBuf {
        self.root.join("containerd")
    }
    pub fn containerd_state(&self) -> PathBuf {
        self.run.join("containerd")
    }
    pub fn containerd_socket(&self) -> PathBuf {
        self.run.join("containerd.sock")
    }
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.root.join("cni/net.d")
    }
    pub fn cni_ipam_dir(&self) -> PathBuf {
        self.root.join("cni/ipam")
    }
    pub fn kubelet_root(&self) -> PathBuf {
        self.root.join("kubelet")
    }
    pub fn kubelet_config(&self) -> PathBuf {
        self.root.join("kubelet.json")
    }
    pub fn resolv_conf(&self) -> PathBuf {
        self.root.join("resolv.conf")
    }
    pub fn kube_proxy_config(&self) -> PathBuf {
        self.root.join("kube-proxy.json")
    }
    pub fn corefile(&self) -> PathBuf {
        self.root.join("Corefile")
    }
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Ports of the node's host processes (all on loopback except the kubelet's, which the API
/// server reaches on [`NODE_IP`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodePorts {
    pub kubelet: u16,
    pub kubelet_healthz: u16,
    pub proxy_healthz: u16,
    pub proxy_metrics: u16,
    pub policy_metrics: u16,
    pub coredns_ready: u16,
    pub ingress_http: u16,
    pub ingress_admin: u16,
}

/// containerd (config version 2, containerd 1.6/1.7): its own root, state and socket, the CRI
/// plugin on the CNI bridge, the locally imported pause image as sandbox, and
/// `restrict_oom_score_adj` (this VM's bounding set lacks CAP_SYS_RESOURCE, without which runc
/// cannot raise a sandbox's OOM score and fails every pod).
pub fn containerd_config(l: &NodeLayout, pause_image: &str) -> String {
    format!(
        r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{sock}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{root}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false
  max_container_log_line_size = 16384
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
"#,
        root = s(&l.containerd_root()),
        state = s(&l.containerd_state()),
        sock = s(&l.containerd_socket()),
        pause = pause_image,
        cni = s(&l.cni_conf_dir()),
    )
}

/// The pod network: CNI bridge on [`BRIDGE`] with host-local addresses from [`POD_CIDR`].
/// Pods get a route to the ClusterIP range only (through the host, where kube-proxy translates
/// it): no default route, so nothing in a pod can even try to reach another network.
/// `hairpinMode` lets a pod reach itself through its own Service.
pub fn cni_conflist(l: &NodeLayout) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "rt-pods",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": POD_CIDR, "gateway": NODE_IP.to_string() }]],
                    "routes": [{ "dst": SERVICE_CIDR }],
                    "dataDir": s(&l.cni_ipam_dir()),
                }
            },
            { "type": "portmap", "capabilities": { "portMappings": true } }
        ]
    })
}

/// The kubelet: cgroupfs on cgroup v1 (which 1.35+ refuses unless `failCgroupV1: false`), the
/// harness's containerd, CoreDNS on the bridge address as cluster DNS and a resolv.conf without
/// the host's resolvers, its API on [`NODE_IP`] (authenticated by our CA, authorized by the API
/// server), eviction thresholds low enough for a shared CI disk.
pub fn kubelet_config(l: &NodeLayout, ports: NodePorts, ca_file: &Path) -> Value {
    let sock = format!("unix://{}", s(&l.containerd_socket()));
    json!({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": NODE_IP.to_string(),
        "port": ports.kubelet,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": ports.kubelet_healthz,
        "authentication": {
            "anonymous": { "enabled": false },
            "webhook": { "enabled": true },
            "x509": { "clientCAFile": s(ca_file) }
        },
        "authorization": { "mode": "Webhook" },
        "cgroupDriver": "cgroupfs",
        "failCgroupV1": false,
        "failSwapOn": false,
        "containerRuntimeEndpoint": sock,
        "imageServiceEndpoint": sock,
        "clusterDNS": [NODE_IP.to_string()],
        "clusterDomain": CLUSTER_DOMAIN,
        "resolvConf": s(&l.resolv_conf()),
        "evictionHard": {
            "memory.available": "200Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
            "nodefs.inodesFree": "1%"
        },
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": false,
        "maxPods": 110,
        "podPidsLimit": 4096,
        "protectKernelDefaults": false,
        "shutdownGracePeriod": "0s",
        "nodeStatusUpdateFrequency": "4s",
        "syncFrequency": "10s",
        "containerLogMaxSize": "10Mi",
        "containerLogMaxFiles": 2
    })
}

/// kubelet flags beyond its config file.
pub fn kubelet_args(l: &NodeLayout, kubeconfig: &Path) -> Vec<String> {
    vec![
        format!("--config={}", s(&l.kubelet_config())),
        format!("--kubeconfig={}", s(kubeconfig)),
        format!("--root-dir={}", s(&l.kubelet_root())),
        format!("--cert-dir={}", s(&l.kubelet_root().join("pki"))),
        format!("--hostname-override={NODE_NAME}"),
        format!("--node-ip={NODE_IP}"),
        "--v=1".into(),
    ]
}

/// kube-proxy in iptables mode. It leaves the host's sysctls alone (no conntrack tuning, no
/// `route_localnet`), serves NodePorts only on the bridge address and binds its endpoints to
/// loopback.
pub fn kube_proxy_config(ports: NodePorts, kubeconfig: &Path) -> Value {
    json!({
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": { "kubeconfig": s(kubeconfig) },
        "mode": "iptables",
        "clusterCIDR": POD_CIDR,
        "hostnameOverride": NODE_NAME,
        "bindAddress": "127.0.0.1",
        "healthzBindAddress": format!("127.0.0.1:{}", ports.proxy_healthz),
        "metricsBindAddress": format!("127.0.0.1:{}", ports.proxy_metrics),
        "nodePortAddresses": [format!("{NODE_IP}/32")],
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s"
        },
        "iptables": { "localhostNodePorts": false, "masqueradeAll": false, "syncPeriod": "30s", "minSyncPeriod": "0s" }
    })
}

/// kube-network-policies (sigs.k8s.io/kube-network-policies, e2e/tools/go/kube-network-policies):
/// NetworkPolicies enforced in nftables (table `inet kube-network-policies`, a postrouting chain
/// that hands the first packet of each connection to or from a policed pod to its nfqueue).
/// Fail closed: a packet it cannot judge is dropped. The node's own root traffic (the kubelet's
/// probes) is never judged.
pub fn network_policies_args(kubeconfig: &Path, metrics_port: u16) -> Vec<String> {
    vec![
        format!("--kubeconfig={}", s(kubeconfig)),
        format!("--hostname-override={NODE_NAME}"),
        format!("--metrics-bind-address=127.0.0.1:{metrics_port}"),
        "--v=2".into(),
    ]
}

/// CoreDNS as a host process on the bridge address: the `kubernetes` plugin answers for the
/// cluster domain; nothing is forwarded anywhere (pods resolve cluster names only).
pub fn corefile(kubeconfig: &Path, ready_port: u16) -> String {
    format!(
        r#".:53 {{
    bind {NODE_IP}
    errors
    ready 127.0.0.1:{ready_port}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig} realtime-e2e
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 5
}}
"#,
        kubeconfig = s(kubeconfig)
    )
}

/// Traefik with its ingress-nginx compatibility provider: it serves Ingresses of class `nginx`
/// (controller `k8s.io/ingress-nginx`) on a loopback port, honouring the ingress-nginx
/// annotations the operator writes (cookie affinity, hashing, timeouts). It finds the API
/// server through `KUBECONFIG` (set in its environment) and publishes its address in each
/// Ingress's status, as ingress-nginx does.
pub fn traefik_args(ports: NodePorts) -> Vec<String> {
    vec![
        format!("--entryPoints.web.address=127.0.0.1:{}", ports.ingress_http),
        // Its own dashboard/ping entrypoint defaults to :8080 on every address.
        format!(
            "--entryPoints.traefik.address=127.0.0.1:{}",
            ports.ingress_admin
        ),
        "--ping=true".into(),
        "--ping.entryPoint=traefik".into(),
        "--providers.kubernetesIngressNGINX=true".into(),
        "--providers.kubernetesIngressNGINX.ingressClass=nginx".into(),
        "--providers.kubernetesIngressNGINX.controllerClass=k8s.io/ingress-nginx".into(),
        "--providers.kubernetesIngressNGINX.publishStatusAddress=127.0.0.1".into(),
        "--log.level=INFO".into(),
        "--global.checkNewVersion=false".into(),
        "--global.sendAnonymousUsage=false".into(),
    ]
}

/// kube-scheduler: its own identity, no leader election, no serving port.
pub fn scheduler_args(kubeconfig: &Path) -> Vec<String> {
    vec![
        format!("--kubeconfig={}", s(kubeconfig)),
        format!("--authentication-kubeconfig={}", s(kubeconfig)),
        format!("--authorization-kubeconfig={}", s(kubeconfig)),
        "--leader-elect=false".into(),
        "--secure-port=0".into(),
    ]
}

/// One iptables rule: table, then the arguments after `-t TABLE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub table: &'static str,
    pub args: Vec<String>,
}

fn rule(table: &'static str, args: &str) -> Rule {
    Rule {
        table,
        args: args.split_whitespace().map(String::from).collect(),
    }
}

/// The fence, installed before any pod starts: pod and service addresses never leave the
/// machine. Three chains of ours, each jumped to first from a built-in chain:
/// - `mangle FORWARD` (before any ACCEPT that kube-proxy or the kubelet add to `filter`):
///   forwarded traffic is allowed only bridge to bridge; anything else from or to a pod, or
///   to a ClusterIP, is dropped;
/// - `filter OUTPUT` (after kube-proxy's DNAT): a ClusterIP still untranslated, or a pod
///   address routed anywhere but the bridge, is rejected;
/// - `filter INPUT`: the bridge address answers only on the bridge and loopback.
pub fn fence_rules() -> Vec<Rule> {
    let fwd = format!("{FENCE_PREFIX}FWD");
    let out = format!("{FENCE_PREFIX}OUT");
    let inp = format!("{FENCE_PREFIX}IN");
    vec![
        rule("mangle", &format!("-N {fwd}")),
        rule(
            "mangle",
            &format!("-A {fwd} -i {BRIDGE} -o {BRIDGE} -j RETURN"),
        ),
        rule("mangle", &format!("-A {fwd} -s {POD_CIDR} -j DROP")),
        rule("mangle", &format!("-A {fwd} -d {POD_CIDR} -j DROP")),
        rule("mangle", &format!("-A {fwd} -d {SERVICE_CIDR} -j DROP")),
        rule("mangle", &format!("-I FORWARD 1 -j {fwd}")),
        rule("filter", &format!("-N {out}")),
        rule("filter", &format!("-A {out} -o lo -j RETURN")),
        rule("filter", &format!("-A {out} -d {SERVICE_CIDR} -j REJECT")),
        rule(
            "filter",
            &format!("-A {out} -d {POD_CIDR} ! -o {BRIDGE} -j REJECT"),
        ),
        rule("filter", &format!("-I OUTPUT 1 -j {out}")),
        rule("filter", &format!("-N {inp}")),
        rule("filter", &format!("-A {inp} -i lo -j RETURN")),
        rule("filter", &format!("-A {inp} -i {BRIDGE} -j RETURN")),
        rule("filter", &format!("-A {inp} -d {POD_CIDR} -j DROP")),
        rule("filter", &format!("-I INPUT 1 -j {inp}")),
    ]
}

/// The tables the node's components (and we) write rules into.
pub const TABLES: [&str; 3] = ["filter", "nat", "mangle"];

/// From `iptables -t TABLE -S` output: the commands that remove every rule jumping to a chain
/// named `KUBE-*` or `RT-NODE-*` from the built-in chains, then flush and delete those chains.
/// What the kubelet, kube-proxy and we leave behind; nothing else is touched.
pub fn sweep_commands(listing: &str) -> Vec<Vec<String>> {
    let ours = |c: &str| c.starts_with("KUBE-") || c.starts_with(FENCE_PREFIX);
    let mut deletes = Vec::new();
    let mut chains = Vec::new();
    for line in listing.lines() {
        let owned = split_words(line);
        let words: Vec<&str> = owned.iter().map(String::as_str).collect();
        match words.as_slice() {
            ["-N", chain] if ours(chain) => chains.push(chain.to_string()),
            ["-A", chain, rest @ ..] if !ours(chain) => {
                let target = rest
                    .windows(2)
                    .find(|w| w[0] == "-j" || w[0] == "-g")
                    .map(|w| w[1]);
                if target.is_some_and(ours) {
                    let mut cmd = vec!["-D".to_string(), chain.to_string()];
                    cmd.extend(rest.iter().map(|w| w.to_string()));
                    deletes.push(cmd);
                }
            }
            _ => {}
        }
    }
    let mut cmds = deletes;
    cmds.extend(chains.iter().map(|c| vec!["-F".to_string(), c.clone()]));
    cmds.extend(chains.iter().map(|c| vec!["-X".to_string(), c.clone()]));
    cmds
}

/// Splits a line of `iptables -S` into arguments: words, with `"..."` grouping (and `\"`
/// inside), as iptables quotes comments.
pub fn split_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let (mut quoted, mut in_word) = (false, false);
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            '\\' if quoted => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

/// Sysctls the node needs, with the value it sets. Their previous values are written to
/// `record.json` before the change and restored at teardown.
pub const SYSCTLS: [(&str, &str); 2] = [
    // Pod -> ClusterIP -> pod is routed through the host.
    ("net/ipv4/ip_forward", "1"),
    // Replies between pods on one bridge must pass conntrack to undo kube-proxy's DNAT.
    ("net/bridge/bridge-nf-call-iptables", "1"),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn ports() -> NodePorts {
        NodePorts {
            kubelet: 1,
            kubelet_healthz: 2,
            proxy_healthz: 3,
            proxy_metrics: 4,
            policy_metrics: 8,
            coredns_ready: 5,
            ingress_http: 6,
            ingress_admin: 7,
        }
    }

    #[test]
    fn containerd_uses_its_own_dirs_the_local_pause_image_and_the_oom_fix() {
        let l = NodeLayout::default();
        let c = containerd_config(&l, "localhost/realtime-operator/pause:abc");
        assert!(c.contains("root = \"/var/lib/realtime-e2e-node/containerd\""));
        assert!(c.contains("address = \"/run/realtime-e2e-node/containerd.sock\""));
        assert!(c.contains("sandbox_image = \"localhost/realtime-operator/pause:abc\""));
        assert!(c.contains("restrict_oom_score_adj = true"));
        assert!(c.contains("conf_dir = \"/var/lib/realtime-e2e-node/cni/net.d\""));
        assert!(l.containerd_socket().as_os_str().len() < 100);
    }

    #[test]
    fn pods_get_a_route_to_services_only() {
        let c = cni_conflist(&NodeLayout::default());
        let ipam = &c["plugins"][0]["ipam"];
        assert_eq!(ipam["routes"], json!([{ "dst": SERVICE_CIDR }]));
        assert_eq!(ipam["ranges"][0][0]["subnet"], POD_CIDR);
        assert_eq!(c["plugins"][0]["ipMasq"], false);
        assert_eq!(c["plugins"][0]["bridge"], BRIDGE);
    }

    #[test]
    fn kubelet_runs_on_cgroup_v1_with_cluster_dns_on_the_bridge() {
        let l = NodeLayout::default();
        let k = kubelet_config(&l, ports(), Path::new("/ca.crt"));
        assert_eq!(k["failCgroupV1"], false);
        assert_eq!(k["cgroupDriver"], "cgroupfs");
        assert_eq!(k["clusterDNS"], json!(["10.244.0.1"]));
        assert_eq!(k["address"], "10.244.0.1");
        assert_eq!(k["authentication"]["anonymous"]["enabled"], false);
        assert_eq!(
            k["containerRuntimeEndpoint"],
            "unix:///run/realtime-e2e-node/containerd.sock"
        );
        let args = kubelet_args(&l, Path::new("/k"));
        assert!(args.contains(&"--node-ip=10.244.0.1".to_string()));
        assert!(args.contains(&"--hostname-override=rt-node".to_string()));
    }

    #[test]
    fn kube_proxy_leaves_sysctls_alone() {
        let p = kube_proxy_config(ports(), Path::new("/k"));
        assert_eq!(p["mode"], "iptables");
        assert_eq!(p["conntrack"]["maxPerCore"], 0);
        assert_eq!(p["iptables"]["localhostNodePorts"], false);
        assert_eq!(p["clusterCIDR"], POD_CIDR);
    }

    #[test]
    fn coredns_answers_the_cluster_domain_and_forwards_nothing() {
        let c = corefile(Path::new("/k"), 9);
        assert!(c.contains("bind 10.244.0.1"));
        assert!(c.contains("kubernetes cluster.local"));
        assert!(c.contains("kubeconfig /k realtime-e2e"));
        assert!(c.contains("ready 127.0.0.1:9"));
        assert!(!c.contains("forward"));
    }

    #[test]
    fn traefik_listens_on_loopback_only() {
        let a = traefik_args(ports());
        assert!(a.contains(&"--entryPoints.web.address=127.0.0.1:6".to_string()));
        assert!(a.contains(&"--entryPoints.traefik.address=127.0.0.1:7".to_string()));
        assert!(a.contains(&"--providers.kubernetesIngressNGINX.ingressClass=nginx".to_string()));
    }

    #[test]
    fn the_fence_jumps_first_and_drops_pod_traffic_leaving_the_bridge() {
        let r = fence_rules();
        let text: Vec<String> = r
            .iter()
            .map(|x| format!("{} {}", x.table, x.args.join(" ")))
            .collect();
        assert!(text.contains(&"mangle -I FORWARD 1 -j RT-NODE-FWD".to_string()));
        assert!(text.contains(&"mangle -A RT-NODE-FWD -s 10.244.0.0/24 -j DROP".to_string()));
        assert!(text.contains(&"filter -A RT-NODE-OUT -d 10.96.0.0/24 -j REJECT".to_string()));
        // Chains exist before the jumps to them.
        let n = text
            .iter()
            .position(|t| t == "filter -N RT-NODE-OUT")
            .unwrap();
        let j = text
            .iter()
            .position(|t| t == "filter -I OUTPUT 1 -j RT-NODE-OUT")
            .unwrap();
        assert!(n < j);
    }

    #[test]
    fn the_sweep_removes_only_kube_and_fence_rules() {
        let listing = "-P INPUT ACCEPT\n-P FORWARD DROP\n-N DOCKER\n-N KUBE-FIREWALL\n-N RT-NODE-IN\n\
-A INPUT -j RT-NODE-IN\n-A INPUT -j KUBE-FIREWALL\n-A FORWARD -j DOCKER\n\
-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
-A KUBE-FIREWALL -d 127.0.0.0/8 -j DROP\n-A RT-NODE-IN -i lo -j RETURN\n";
        let cmds = sweep_commands(listing);
        let text: Vec<String> = cmds.iter().map(|c| c.join(" ")).collect();
        assert_eq!(
            text,
            vec![
                "-D INPUT -j RT-NODE-IN",
                "-D INPUT -j KUBE-FIREWALL",
                "-D OUTPUT -m comment --comment kubernetes service portals -j KUBE-SERVICES",
                "-F KUBE-FIREWALL",
                "-F RT-NODE-IN",
                "-X KUBE-FIREWALL",
                "-X RT-NODE-IN",
            ]
        );
        assert_eq!(cmds[2][5], "kubernetes service portals");
        assert_eq!(
            split_words(r#"-A X -m comment --comment "a \"b\"" -j Y"#),
            [
                "-A",
                "X",
                "-m",
                "comment",
                "--comment",
                "a \"b\"",
                "-j",
                "Y"
            ]
        );
    }
}
