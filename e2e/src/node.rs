//! A real single-node Kubernetes cluster on this machine, for the end-to-end scenarios on real
//! pods: the control plane of [`crate::control_plane`] (etcd, kube-apiserver, all controllers)
//! bound to a bridge address, plus kube-scheduler, a kubelet on a private containerd, kube-proxy
//! (iptables), CoreDNS and Traefik (ingress-nginx compatible) as host processes. The project's
//! images are built locally (`e2e/node/images.sh`, no registry) and imported into the node.
//!
//! Network safety comes first: before any pod starts, a fence of iptables rules
//! ([`config::fence_rules`]) keeps pod and service addresses on the machine, and pods get no
//! route but the one to ClusterIPs. Everything the node makes (processes, containers, cgroups,
//! mounts, network namespaces, rules, the bridge, sysctls) is undone at teardown, which runs on
//! drop, at exit, on SIGINT/SIGTERM/SIGHUP, and, for a run that was SIGKILLed, at the start of
//! the next one (from the record it left in [`config::STATE_ROOT`]).
//!
//! Needs root and Linux. One node per machine (fixed bridge and CIDRs): a lock file serialises
//! users. Parts: `e2e/tools/install.sh` (Go-built binaries), Debian's containerd, runc and CNI
//! plugins, the release binaries of realtime-server and realtime-operator.

pub mod config;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::control_plane::process::Proc;
use crate::control_plane::{ControlPlane, Options, Tools, free_port};
use crate::data_plane::http_get;
use crate::require::{find_program, in_ci, require, workspace_root};
use config::{NODE_IP, NODE_NAME, NodeLayout, NodePorts, SERVICE_CIDR};

/// Bound for the node to become Ready after the kubelet starts.
const NODE_READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Log lines shown per process when something fails.
const LOG_TAIL_LINES: usize = 30;

/// The project's images as the node knows them (references present in its containerd).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeImages {
    pub server: String,
    pub operator: String,
    pub redis: String,
    pub pause: String,
    /// Node.js and e2e/client (the official socket.io-client), for clients that run in pods.
    pub client: String,
    /// examples/node-chat: a plain socket.io server (`spec.app`), Node.js and its node_modules.
    pub app: String,
}

/// Where the node's parts are.
#[derive(Debug, Clone)]
pub struct NodeParts {
    /// The control plane's binaries (etcd, kube-apiserver, kube-controller-manager, kubectl, helm).
    pub control_plane: Tools,
    /// kubelet, kube-proxy, kube-scheduler, coredns, traefik, kube-network-policies, pause.
    pub node_bin: PathBuf,
    /// containerd, ctr, runc, iptables, ip (Debian).
    pub system: BTreeMap<&'static str, PathBuf>,
    /// Release builds of realtime-server and realtime-operator.
    pub server_bin: PathBuf,
    pub operator_bin: PathBuf,
}

/// Binaries of `install.sh node`.
pub const NODE_BINARIES: [&str; 7] = [
    "kubelet",
    "kube-proxy",
    "kube-scheduler",
    "coredns",
    "traefik",
    "kube-network-policies",
    "pause",
];
/// Debian's parts (`containerd runc containernetworking-plugins iptables iproute2`).
const SYSTEM_BINARIES: [&str; 6] = [
    "containerd",
    "containerd-shim-runc-v2",
    "ctr",
    "runc",
    "iptables",
    "ip",
];

impl NodeParts {
    /// Every part, or why one is missing (and how to get it).
    pub fn find() -> Result<Self, String> {
        if !cfg!(target_os = "linux") {
            return Err("a Linux host".into());
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("root (the node makes a bridge, iptables rules and mounts)".into());
        }
        let control_plane = Tools::pinned().map_err(|e| format!("the tool pins: {e:#}"))?;
        if let Some(missing) = control_plane.first_missing() {
            return Err(format!("{} (run e2e/tools/install.sh)", missing.display()));
        }
        let node_bin = node_bin_dir().map_err(|e| format!("the node tools folder: {e:#}"))?;
        for b in NODE_BINARIES {
            if !node_bin.join(b).is_file() {
                return Err(format!(
                    "{} (run e2e/tools/install.sh)",
                    node_bin.join(b).display()
                ));
            }
        }
        let mut system = BTreeMap::new();
        for b in SYSTEM_BINARIES {
            let p = find_program(b, &[]).ok_or_else(|| {
                format!("{b} (Debian: apt-get install containerd runc containernetworking-plugins iptables iproute2)")
            })?;
            system.insert(b, p);
        }
        for plugin in ["bridge", "host-local", "portmap", "loopback"] {
            if !Path::new("/usr/lib/cni").join(plugin).is_file() {
                return Err(format!(
                    "/usr/lib/cni/{plugin} (Debian: apt-get install containernetworking-plugins)"
                ));
            }
        }
        let server_bin = release_bin("realtime-server")?;
        let operator_bin = release_bin("realtime-operator")?;
        Ok(Self {
            control_plane,
            node_bin,
            system,
            server_bin,
            operator_bin,
        })
    }

    /// [`Self::find`] under the `require` policy: `None` (skip) or a panic under CI.
    pub fn require() -> Option<Self> {
        require(
            "a part of the real node",
            "run `make deps release` as root",
            match Self::find() {
                Ok(p) => Some(p),
                Err(what) => {
                    let msg = format!("missing: {what}");
                    if in_ci() {
                        panic!("CI=true and the real node cannot start: {msg}");
                    }
                    eprintln!("real node: {msg}");
                    None
                }
            },
        )
    }

    fn sys(&self, name: &str) -> &Path {
        self.system
            .get(name)
            .map(PathBuf::as_path)
            .unwrap_or(Path::new("/nonexistent"))
    }
}

/// The folder `install.sh` puts the node's binaries in (`$RT_NODE_TOOLS_BIN` overrides).
pub fn node_bin_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("RT_NODE_TOOLS_BIN") {
        return Ok(PathBuf::from(d));
    }
    let script = workspace_root().join("e2e/tools/install.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("--print-node-dir")
        .output()
        .with_context(|| format!("running {} --print-node-dir", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} --print-node-dir failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Ok(PathBuf::from(dir))
}

/// A release binary of this workspace: `$RT_RELEASE_DIR/NAME`, or `release/NAME` in the
/// nearest target folder above the running executable (`cargo build --release` puts it there).
pub fn release_bin(name: &str) -> Result<PathBuf, String> {
    if let Some(d) = std::env::var_os("RT_RELEASE_DIR") {
        let p = PathBuf::from(d).join(name);
        return p
            .is_file()
            .then_some(p.clone())
            .ok_or_else(|| format!("{} (RT_RELEASE_DIR)", p.display()));
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    exe.ancestors()
        .skip(1)
        .map(|d| d.join("release").join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!("the release build of {name} (cargo build --release -p {name}; `make release`)")
        })
}

/// What the node changed on the machine, written before the change so that a run killed
/// before its teardown can be undone by the next one.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Record {
    pid: u32,
    /// sysctl (as a /proc/sys path) -> its value before the node changed it.
    sysctls: BTreeMap<String, String>,
    /// containerd 1.6 keeps shim sockets and runc state under /run/containerd whatever its own
    /// state folder: removed at teardown when the node made it.
    #[serde(default)]
    made_run_containerd: bool,
}

/// Start timings, each measured from the start of [`RealNode::start`].
#[derive(Debug, Clone, Copy, Default)]
pub struct NodeTimings {
    pub images: Duration,
    pub control_plane: Duration,
    pub node_ready: Duration,
    pub all_ready: Duration,
}

/// A running node. Dropping it (or [`RealNode::shutdown`]) tears everything down.
pub struct RealNode {
    cp: ControlPlane,
    layout: NodeLayout,
    parts: NodeParts,
    procs: Mutex<Vec<Proc>>,
    images: NodeImages,
    archives: Vec<PathBuf>,
    ports: NodePorts,
    timings: NodeTimings,
    down: AtomicBool,
    _lock: File,
}

impl RealNode {
    /// Builds the images, makes the network and its fence, starts the control plane and the
    /// node's processes, and returns once the node is Ready and DNS, kube-proxy and the ingress
    /// controller answer. On error everything already made is undone.
    pub async fn start(parts: NodeParts) -> Result<Self> {
        let t0 = Instant::now();
        let layout = NodeLayout::default();
        let lock = take_lock().await?;
        if layout.record().exists() {
            eprintln!("real node: a previous run did not tear down; sweeping what it left");
            teardown_machine(&layout, &parts);
        }
        // Images first: nothing of the machine is touched yet if the build fails.
        let (images, archives) = build_images(&parts).context("building the node's images")?;
        let t_images = t0.elapsed();

        std::fs::create_dir_all(layout.logs())?;
        std::fs::create_dir_all(&layout.run)?;
        let mut record = Record {
            pid: std::process::id(),
            made_run_containerd: !Path::new("/run/containerd").exists(),
            ..Default::default()
        };
        for (key, _) in config::SYSCTLS {
            let path = Path::new("/proc/sys").join(key);
            if let Ok(v) = std::fs::read_to_string(&path) {
                record.sysctls.insert(key.to_string(), v.trim().to_string());
            }
        }
        std::fs::write(layout.record(), serde_json::to_vec_pretty(&record)?)?;
        // From here on, an error tears down what was made.
        let guard = SweepOnError {
            layout: layout.clone(),
            parts: parts.clone(),
            armed: true,
        };
        network_up(&parts).context("making the pod network and its fence")?;

        let cp = ControlPlane::start_with(
            &parts.control_plane,
            &Options::for_node(NODE_IP, SERVICE_CIDR),
        )
        .await
        .context("starting the control plane")?;
        let t_cp = t0.elapsed();
        let ports = NodePorts {
            kubelet: free_port_on_node()?,
            kubelet_healthz: free_port()?,
            proxy_healthz: free_port()?,
            proxy_metrics: free_port()?,
            policy_metrics: free_port()?,
            coredns_ready: free_port()?,
            ingress_http: free_port()?,
            ingress_admin: free_port()?,
        };
        let mut node = Self {
            cp,
            layout,
            parts,
            procs: Mutex::new(Vec::new()),
            images,
            archives,
            ports,
            timings: NodeTimings::default(),
            down: AtomicBool::new(false),
            _lock: lock,
        };
        let mut guard = guard;
        guard.armed = false; // `node`'s own drop tears down from now on.
        let (node_ready, all_ready) = node.boot(t0).await.map_err(|e| node.with_logs(e))?;
        node.timings = NodeTimings {
            images: t_images,
            control_plane: t_cp,
            node_ready,
            all_ready,
        };
        Ok(node)
    }

    async fn boot(&self, t0: Instant) -> Result<(Duration, Duration)> {
        let l = &self.layout;
        let ca = self
            .cp
            .state_dir()
            .context("the node's control plane is ours")?
            .join("pki/ca.crt");

        // containerd, then the images into its k8s.io namespace.
        std::fs::write(
            l.containerd_config(),
            config::containerd_config(l, &self.images.pause),
        )?;
        std::fs::create_dir_all(l.cni_conf_dir())?;
        std::fs::write(
            l.cni_conf_dir().join("10-rt-pods.conflist"),
            serde_json::to_vec_pretty(&config::cni_conflist(l))?,
        )?;
        self.spawn(
            "containerd",
            self.parts.sys("containerd"),
            &[format!("--config={}", l.containerd_config().display())],
            &[],
        )?;
        self.wait("containerd to answer", Duration::from_secs(30), || {
            let ok = self.ctr(&["version"]).is_ok();
            async move { Ok(ok.then_some(())) }
        })
        .await?;
        for archive in &self.archives {
            let a = archive.to_string_lossy();
            self.ctr(&["-n", "k8s.io", "images", "import", &a])
                .with_context(|| format!("importing {a}"))?;
        }

        // Identities: each component its own, as in a real cluster.
        let kubelet_id = self
            .cp
            .user(&format!("system:node:{NODE_NAME}"), Some("system:nodes"))?;
        let scheduler_id = self.cp.user("system:kube-scheduler", None)?;
        let proxy_id = self.cp.user("system:kube-proxy", None)?;
        // kube-network-policies reads pods, namespaces and NetworkPolicies cluster-wide.
        let policy_id = self
            .cp
            .user("realtime-e2e-network-policies", Some("system:masters"))?;
        // CoreDNS and Traefik are the cluster's add-ons; in this harness they run as admins.
        let addon_id = self
            .cp
            .user("realtime-e2e-addons", Some("system:masters"))?;

        self.spawn(
            "kube-scheduler",
            &self.parts.node_bin.join("kube-scheduler"),
            &config::scheduler_args(&scheduler_id.kubeconfig),
            &[],
        )?;
        std::fs::write(l.resolv_conf(), "")?;
        std::fs::write(
            l.kubelet_config(),
            serde_json::to_vec_pretty(&config::kubelet_config(l, self.ports, &ca))?,
        )?;
        self.spawn(
            "kubelet",
            &self.parts.node_bin.join("kubelet"),
            &config::kubelet_args(l, &kubelet_id.kubeconfig),
            &[],
        )?;
        std::fs::write(
            l.kube_proxy_config(),
            serde_json::to_vec_pretty(&config::kube_proxy_config(
                self.ports,
                &proxy_id.kubeconfig,
            ))?,
        )?;
        self.spawn(
            "kube-proxy",
            &self.parts.node_bin.join("kube-proxy"),
            &[format!("--config={}", l.kube_proxy_config().display())],
            &[],
        )?;
        // NetworkPolicy enforcement (nftables + nfqueue), before any pod of the tests starts.
        self.spawn(
            "kube-network-policies",
            &self.parts.node_bin.join("kube-network-policies"),
            &config::network_policies_args(&policy_id.kubeconfig, self.ports.policy_metrics),
            &[],
        )?;
        std::fs::write(
            l.corefile(),
            config::corefile(&addon_id.kubeconfig, self.ports.coredns_ready),
        )?;
        self.spawn(
            "coredns",
            &self.parts.node_bin.join("coredns"),
            &["-conf".into(), l.corefile().display().to_string()],
            &[],
        )?;
        self.spawn(
            "traefik",
            &self.parts.node_bin.join("traefik"),
            &config::traefik_args(self.ports),
            &[("KUBECONFIG", addon_id.kubeconfig.as_os_str())],
        )?;

        // The IngressClass ingress-nginx would install: what the operator's Ingress names.
        let client = self.cp.client().await?;
        let classes: Api<k8s_openapi::api::networking::v1::IngressClass> = Api::all(client.clone());
        let class: k8s_openapi::api::networking::v1::IngressClass =
            serde_json::from_value(json!({
                "apiVersion": "networking.k8s.io/v1",
                "kind": "IngressClass",
                "metadata": { "name": "nginx" },
                "spec": { "controller": "k8s.io/ingress-nginx" }
            }))?;
        classes
            .patch(
                "nginx",
                &PatchParams::apply("realtime-e2e").force(),
                &Patch::Apply(&class),
            )
            .await
            .context("creating IngressClass nginx")?;

        let nodes: Api<Node> = Api::all(client.clone());
        self.wait("the node to be Ready", NODE_READY_TIMEOUT, || async {
            let ready = nodes.get_opt(NODE_NAME).await?.is_some_and(|n| {
                n.status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            });
            Ok(ready.then_some(()))
        })
        .await?;
        let node_ready = t0.elapsed();
        for (what, port, path) in [
            ("kube-proxy to sync", self.ports.proxy_healthz, "/healthz"),
            (
                "kube-network-policies to answer",
                self.ports.policy_metrics,
                "/metrics",
            ),
            ("CoreDNS to be ready", self.ports.coredns_ready, "/ready"),
            ("Traefik to answer", self.ports.ingress_admin, "/ping"),
        ] {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            self.wait(what, Duration::from_secs(60), || async move {
                let r = http_get(addr, path, Duration::from_secs(2)).await;
                Ok(r.is_ok_and(|r| r.status == 200).then_some(()))
            })
            .await?;
        }
        Ok((node_ready, t0.elapsed()))
    }

    fn spawn(
        &self,
        name: &'static str,
        program: &Path,
        args: &[String],
        env: &[(&str, &OsStr)],
    ) -> Result<()> {
        let log = self.layout.logs().join(format!("{name}.log"));
        let p = Proc::start_with_env(name, program, args, env, log)
            .with_context(|| format!("starting {name}"))?;
        self.procs.lock().unwrap_or_else(|e| e.into_inner()).push(p);
        Ok(())
    }

    /// `ctr --address SOCK ARGS`; its stdout, or an error with its stderr.
    fn ctr(&self, args: &[&str]) -> Result<String> {
        let sock = self.layout.containerd_socket();
        run(Command::new(self.parts.sys("ctr"))
            .arg("--address")
            .arg(&sock)
            .args(args))
    }

    /// An error if one of the node's processes (or the control plane's) has exited.
    pub fn check_alive(&self) -> Result<()> {
        self.cp.check_alive()?;
        for p in self
            .procs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter_mut()
        {
            if let Some(status) = p.exit_status() {
                bail!("{} exited ({status})", p.name);
            }
        }
        Ok(())
    }

    /// The control plane's [`ControlPlane::poll_until`], failing fast also when one of the
    /// node's own processes dies.
    async fn wait<T, F, Fut>(&self, what: &str, timeout: Duration, mut probe: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>>>,
    {
        self.cp
            .poll_until(what, timeout, || {
                let alive = self.check_alive();
                let fut = probe();
                async move {
                    alive?;
                    fut.await
                }
            })
            .await
    }

    /// The control plane (kubectl, helm, clients, namespaces).
    pub fn control_plane(&self) -> &ControlPlane {
        &self.cp
    }

    pub fn images(&self) -> &NodeImages {
        &self.images
    }

    pub fn timings(&self) -> NodeTimings {
        self.timings
    }

    /// The ingress controller's HTTP entrypoint, routing Ingress hosts `localhost` and
    /// `*.localhost` (both resolve to loopback).
    pub fn ingress_url(&self) -> String {
        format!("http://localhost:{}", self.ports.ingress_http)
    }

    /// The folder with kubectl and helm.
    pub fn bin_dir(&self) -> &Path {
        &self.parts.control_plane.bin_dir
    }

    /// The variables of the `rt-cluster` contract.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            (
                "KUBECONFIG".into(),
                self.cp.kubeconfig_path().display().to_string(),
            ),
            (
                "PATH".into(),
                format!(
                    "{}:{}",
                    self.bin_dir().display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            ),
            ("RT_INGRESS_URL".into(), self.ingress_url()),
            ("RT_IMAGE_SERVER".into(), self.images.server.clone()),
            ("RT_IMAGE_OPERATOR".into(), self.images.operator.clone()),
            ("RT_IMAGE_REDIS".into(), self.images.redis.clone()),
            ("RT_CONTROL_PLANE".into(), "external".into()),
        ]
    }

    /// The node's processes and the control plane's, with their resident memory.
    pub fn processes(&self) -> Vec<(String, u32, Option<u64>)> {
        let mut v: Vec<_> = self
            .cp
            .processes()
            .into_iter()
            .map(|p| (p.name.to_string(), p.pid, p.rss_bytes))
            .collect();
        for p in self.procs.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            v.push((p.name.to_string(), p.pid(), p.rss_bytes()));
        }
        v
    }

    /// `e` with the last lines of every process's log.
    pub fn with_logs(&self, e: anyhow::Error) -> anyhow::Error {
        anyhow!("{e:#}\n\n{}", self.log_tails())
    }

    /// The last lines of every process's log (node and control plane).
    pub fn log_tails(&self) -> String {
        let mut s = self.cp.log_tails();
        for p in self
            .procs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter_mut()
        {
            s.push('\n');
            s.push_str(&p.log_tail(LOG_TAIL_LINES));
        }
        s
    }

    /// The folder of the node's process logs.
    pub fn log_dir(&self) -> PathBuf {
        self.layout.logs()
    }

    /// Stops every process (node first, then the control plane), kills what runs in pods and
    /// undoes every change to the machine. Idempotent.
    pub fn shutdown(&self) {
        if self.down.swap(true, Ordering::SeqCst) {
            return;
        }
        let mut procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(mut p) = procs.pop() {
            p.stop(Duration::from_secs(3));
        }
        drop(procs);
        self.cp.shutdown();
        teardown_machine(&self.layout, &self.parts);
    }
}

impl Drop for RealNode {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Tears down when a start fails before the node exists.
struct SweepOnError {
    layout: NodeLayout,
    parts: NodeParts,
    armed: bool,
}

impl Drop for SweepOnError {
    fn drop(&mut self) {
        if self.armed {
            teardown_machine(&self.layout, &self.parts);
        }
    }
}

/// The machine-wide lock: waits (with a message) while another node runs.
async fn take_lock() -> Result<File> {
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(config::LOCK_FILE)
        .with_context(|| format!("opening {}", config::LOCK_FILE))?;
    use std::os::fd::AsRawFd;
    let fd = f.as_raw_fd();
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(f);
    }
    eprintln!(
        "real node: another node runs on this machine ({} is locked); waiting for it",
        config::LOCK_FILE
    );
    tokio::task::spawn_blocking(move || {
        // SAFETY: as above; blocks until the other holder exits.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0 {
            Ok(f)
        } else {
            Err(anyhow!("flock: {}", std::io::Error::last_os_error()))
        }
    })
    .await?
}

/// Runs `cmd`; its stdout, or an error with what it printed.
fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} {:?} failed ({}): {}{}",
            cmd.get_program(),
            cmd.get_args().collect::<Vec<_>>(),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Builds (or finds cached) the images with `e2e/node/images.sh`, into the image cache
/// (`~/.cache/realtime-operator/images/out`): unchanged inputs are not rebuilt.
fn build_images(parts: &NodeParts) -> Result<(NodeImages, Vec<PathBuf>)> {
    let script = workspace_root().join("e2e/node/images.sh");
    let cache = match std::env::var_os("RT_CACHE_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?)
            .join(".cache/realtime-operator"),
    };
    let out_dir = cache.join("images/out");
    std::fs::create_dir_all(&out_dir)?;
    let stdout = run(Command::new("bash")
        .arg(&script)
        .arg("--out")
        .arg(&out_dir)
        .arg("--server")
        .arg(&parts.server_bin)
        .arg("--operator")
        .arg(&parts.operator_bin)
        .arg("--pause")
        .arg(parts.node_bin.join("pause"))
        .arg("--client")
        .arg(workspace_root().join("e2e/client"))
        .arg("--app")
        .arg(workspace_root().join("examples/node-chat")))?;
    let refs = parse_image_lines(&stdout);
    let get = |k: &str| {
        refs.get(k)
            .map(|(r, _)| r.clone())
            .ok_or_else(|| anyhow!("images.sh printed no {k} image: {stdout}"))
    };
    let archives = refs.values().map(|(_, p)| PathBuf::from(p)).collect();
    let images = NodeImages {
        server: get("server")?,
        operator: get("operator")?,
        redis: get("redis")?,
        pause: get("pause")?,
        client: get("client")?,
        app: get("app")?,
    };
    Ok((images, archives))
}

/// `NAME=REFERENCE ARCHIVE` lines (images.sh's stdout) -> NAME -> (REFERENCE, ARCHIVE).
pub fn parse_image_lines(text: &str) -> BTreeMap<String, (String, String)> {
    text.lines()
        .filter_map(|l| {
            let (name, rest) = l.trim().split_once('=')?;
            let (reference, path) = rest.split_once(' ')?;
            Some((
                name.to_string(),
                (reference.to_string(), path.trim().to_string()),
            ))
        })
        .collect()
}

/// A free port on the node's bridge address (the kubelet's API).
fn free_port_on_node() -> Result<u16> {
    Ok(crate::control_plane::free_port_on(NODE_IP)?)
}

/// The bridge, the sysctls and the fence (the record of the old sysctls is already written).
fn network_up(parts: &NodeParts) -> Result<()> {
    let ip = parts.sys("ip");
    run(Command::new(ip).args(["link", "add", config::BRIDGE, "type", "bridge"]))?;
    run(Command::new(ip).args([
        "addr",
        "add",
        &format!("{NODE_IP}/24"),
        "dev",
        config::BRIDGE,
    ]))?;
    run(Command::new(ip).args(["link", "set", config::BRIDGE, "up"]))?;
    for (key, value) in config::SYSCTLS {
        let path = Path::new("/proc/sys").join(key);
        std::fs::write(&path, value).with_context(|| format!("setting {}", path.display()))?;
    }
    for r in config::fence_rules() {
        run(Command::new(parts.sys("iptables"))
            .args(["-w", "-t", r.table])
            .args(&r.args))?;
    }
    Ok(())
}

/// Undoes everything a node (this one or one that died) did to the machine. Best effort:
/// each step runs even if an earlier one failed; problems are printed.
fn teardown_machine(layout: &NodeLayout, parts: &NodeParts) {
    let mut problems: Vec<String> = Vec::new();
    // 1. Every process of every pod: the kubelet's cgroups hold them all.
    let pod_cgroups = kubepods_cgroups();
    for _ in 0..50 {
        let pids = cgroup_pids(&pod_cgroups);
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            // SAFETY: plain kill(2).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // 2. containerd's shims of this node (they outlive containerd by design).
    let sock = layout.containerd_socket().display().to_string();
    for pid in processes_whose_cmdline_has(&["containerd-shim", &sock]) {
        // SAFETY: plain kill(2).
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    // 3. The cgroups themselves, deepest first (and containerd's per-namespace ones, if empty).
    let mut dirs: Vec<PathBuf> = pod_cgroups
        .iter()
        .chain(&namespace_cgroups())
        .flat_map(|root| walk_dirs(root))
        .collect();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in dirs {
        let _ = std::fs::remove_dir(&d);
    }
    // 4. Mounts under the node's folders and the pods' network namespaces.
    let netns: Vec<PathBuf> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("cni-"))
        })
        .collect();
    let mut mounts: Vec<PathBuf> = mount_points()
        .into_iter()
        .filter(|m| m.starts_with(&layout.root) || m.starts_with(&layout.run) || netns.contains(m))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
    for m in &mounts {
        let c = std::ffi::CString::new(m.as_os_str().as_encoded_bytes()).unwrap_or_default();
        // SAFETY: umount2 with a valid C string.
        if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
            problems.push(format!(
                "umount {}: {}",
                m.display(),
                std::io::Error::last_os_error()
            ));
        }
    }
    for n in netns {
        let _ = std::fs::remove_file(n);
    }
    // 5. iptables: the fence and whatever the kubelet and kube-proxy wrote.
    for prog in ["iptables", "ip6tables"] {
        let Some(bin) = find_program(prog, &[]) else {
            continue;
        };
        for table in config::TABLES {
            let Ok(listing) = run(Command::new(&bin).args(["-w", "-t", table, "-S"])) else {
                continue;
            };
            for cmd in config::sweep_commands(&listing) {
                if let Err(e) = run(Command::new(&bin).args(["-w", "-t", table]).args(&cmd)) {
                    problems.push(format!("{prog} -t {table} {}: {e:#}", cmd.join(" ")));
                }
            }
        }
    }
    // 5b. kube-network-policies' nftables table (its own process deletes it on SIGTERM, not on
    // SIGKILL; left behind, its queue rules would drop the policed pods' packets).
    let knp = parts.node_bin.join("kube-network-policies");
    if knp.is_file()
        && let Err(e) = run(Command::new(&knp).arg("--cleanup"))
    {
        problems.push(format!("kube-network-policies --cleanup: {e:#}"));
    }
    // 6. The bridge (the pods' veths went with their namespaces).
    let ip = parts.sys("ip");
    if Path::new("/sys/class/net").join(config::BRIDGE).exists()
        && let Err(e) = run(Command::new(ip).args(["link", "del", config::BRIDGE]))
    {
        problems.push(format!("deleting {}: {e:#}", config::BRIDGE));
    }
    // 7. Sysctls back as they were.
    if let Ok(text) = std::fs::read(layout.record()) {
        match serde_json::from_slice::<Record>(&text) {
            Ok(rec) => {
                if rec.made_run_containerd {
                    let _ = std::fs::remove_dir_all("/run/containerd");
                }
                for (key, old) in rec.sysctls {
                    let path = Path::new("/proc/sys").join(&key);
                    if let Err(e) = std::fs::write(&path, &old) {
                        problems.push(format!("restoring {key}={old}: {e}"));
                    }
                }
            }
            Err(e) => problems.push(format!("reading {}: {e}", layout.record().display())),
        }
    }
    // 8. The files (the record last: if anything above was cut short, the next run retries).
    let logs_keep = std::env::var_os("RT_NODE_KEEP_LOGS").is_some();
    if logs_keep {
        let dest = std::env::temp_dir().join(format!("rt-node-logs-{}", std::process::id()));
        let _ = std::fs::rename(layout.logs(), &dest);
        eprintln!("real node: logs kept in {}", dest.display());
    }
    for dir in [&layout.run, &layout.root] {
        if let Err(e) = std::fs::remove_dir_all(dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            problems.push(format!("removing {}: {e}", dir.display()));
        }
    }
    if !problems.is_empty() {
        eprintln!("real node: teardown problems:\n  {}", problems.join("\n  "));
    }
}

/// The `kubepods` cgroups of every v1 hierarchy (and the unified one).
fn kubepods_cgroups() -> Vec<PathBuf> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        let p = e.path().join("kubepods");
        if p.is_dir() {
            v.push(p);
        }
        let p = e.path().join("kubepods.slice");
        if p.is_dir() {
            v.push(p);
        }
    }
    v
}

/// The cgroups containerd makes for its `k8s.io` namespace in every hierarchy.
fn namespace_cgroups() -> Vec<PathBuf> {
    std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("k8s.io"))
        .filter(|p| p.is_dir())
        .collect()
}

fn walk_dirs(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        let d = out[i].clone();
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.push(e.path());
            }
        }
        i += 1;
    }
    out
}

fn cgroup_pids(roots: &[PathBuf]) -> Vec<i32> {
    let mut pids: Vec<i32> = roots
        .iter()
        .flat_map(|r| walk_dirs(r))
        .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
        .flat_map(|t| {
            t.lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// Pids whose command line contains every one of `needles`.
fn processes_whose_cmdline_has(needles: &[&str]) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|b| {
                let text = String::from_utf8_lossy(&b).replace('\0', " ");
                needles.iter().all(|n| text.contains(n))
            })
        })
        .collect()
}

/// Mount points of this mount namespace (`/proc/self/mountinfo`, octal escapes decoded).
fn mount_points() -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_mount(m)))
        .collect()
}

/// Decodes mountinfo's `\040`-style escapes.
pub fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------------------------
// One node per test binary
// ---------------------------------------------------------------------------------------------

enum SharedState {
    Ready(Arc<RealNode>),
    Skipped,
    Failed(String),
}

static SHARED: tokio::sync::OnceCell<SharedState> = tokio::sync::OnceCell::const_new();

/// The node of this test binary, started on first use (with the project's CRDs installed) and
/// torn down at exit or on SIGINT/SIGTERM/SIGHUP. `None`: skip (a part is missing, not in CI).
/// Panics, in every test that asks, when the start failed.
pub async fn shared() -> Option<Arc<RealNode>> {
    let state = SHARED
        .get_or_init(|| async {
            let Some(parts) = NodeParts::require() else {
                return SharedState::Skipped;
            };
            let t0 = Instant::now();
            match RealNode::start(parts).await {
                Ok(node) => {
                    let node = Arc::new(node);
                    extern "C" fn stop_shared() {
                        if let Some(SharedState::Ready(n)) = SHARED.get() {
                            n.shutdown();
                        }
                    }
                    // SAFETY: registering a plain extern "C" fn.
                    unsafe { libc::atexit(stop_shared) };
                    on_signal_run(stop_shared);
                    let t = node.timings();
                    eprintln!(
                        "real node: images {:.1?}, control plane {:.1?}, node Ready {:.1?}, all ready {:.1?} (total {:.1?})",
                        t.images,
                        t.control_plane,
                        t.node_ready,
                        t.all_ready,
                        t0.elapsed()
                    );
                    for crd in crate::control_plane::project_crd_files().unwrap_or_default() {
                        if let Err(e) = node.control_plane().install_crds(&crd).await {
                            return SharedState::Failed(format!("{:#}", node.with_logs(e)));
                        }
                    }
                    SharedState::Ready(node)
                }
                Err(e) => SharedState::Failed(format!("{e:#}")),
            }
        })
        .await;
    match state {
        SharedState::Ready(n) => Some(n.clone()),
        SharedState::Skipped => {
            NodeParts::require();
            None
        }
        SharedState::Failed(e) => panic!("the real node did not start: {e}"),
    }
}

/// On SIGINT, SIGTERM or SIGHUP: runs `f` (the teardown), then exits with 128 + signal.
/// A handler only writes the signal number to a pipe; a thread does the work.
pub fn on_signal_run(f: extern "C" fn()) {
    static PIPE_W: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let mut fds = [0i32; 2];
        // SAFETY: pipe with a valid array.
        if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
            return;
        }
        PIPE_W.store(fds[1], Ordering::SeqCst);
        extern "C" fn handler(sig: libc::c_int) {
            let fd = PIPE_W.load(Ordering::SeqCst);
            let b = sig as u8;
            // SAFETY: write(2) is async-signal-safe.
            unsafe { libc::write(fd, (&b as *const u8).cast(), 1) };
        }
        let read_fd = fds[0];
        std::thread::spawn(move || {
            let mut b = 0u8;
            // SAFETY: reading one byte into a valid buffer.
            if unsafe { libc::read(read_fd, (&mut b as *mut u8).cast(), 1) } == 1 {
                eprintln!("real node: signal {b}, tearing down");
                f();
                // SAFETY: ending the process after the teardown.
                unsafe { libc::_exit(128 + b as i32) };
            }
        });
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            // SAFETY: installing a handler that only calls write(2).
            unsafe { libc::signal(sig, handler as *const () as libc::sighandler_t) };
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_lines_parse() {
        let m = parse_image_lines(
            "server=localhost/realtime-operator/realtime-server:0123 /x/server.oci.tar\n\
             pause=localhost/realtime-operator/pause:ab /x/pause.oci.tar\n",
        );
        assert_eq!(
            m["server"],
            (
                "localhost/realtime-operator/realtime-server:0123".to_string(),
                "/x/server.oci.tar".to_string()
            )
        );
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn mountinfo_escapes_decode() {
        assert_eq!(unescape_mount(r"/a\040b/c"), "/a b/c");
        assert_eq!(unescape_mount("/plain"), "/plain");
    }
}
