//! A real Kubernetes control plane on loopback: etcd, kube-apiserver and
//! kube-controller-manager as plain processes (what controller-runtime's envtest does), for the
//! operator tests, the chart tests and the end-to-end scenarios.
//!
//! The binaries come from `e2e/tools/install.sh`, which builds them from Go modules at the
//! versions pinned in `e2e/tools/versions.env`, the one place that names them. The Kubernetes
//! minor there must match the workspace's `k8s-openapi` feature (`v1_36`); a unit test checks.
//!
//! One control plane serves a whole test binary: [`shared`] starts it on first use and stops it
//! when the process exits. With `RT_CONTROL_PLANE=external` and `KUBECONFIG` pointing at a
//! running one (from `rt-control-plane`), tests reuse that instead. Tests isolate themselves by
//! namespace ([`ControlPlane::create_namespace`]).
//!
//! What is real: everything the API server does (schemas, CEL, defaulting, pruning, server-side
//! apply, subresources, conflicts, RBAC, dry-run) plus garbage collection, namespace deletion
//! and default ServiceAccounts. What is not: no scheduler, no kubelet, no workload controllers,
//! so no Pod ever runs and readiness must be simulated by patching status.

mod config;
mod pki;
pub(crate) mod process;

pub use config::{CONTROLLERS, Options, Versions, json_contains};

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::{Value, json};

use crate::require::{find_program, require, workspace_root};
use config::{KubeconfigAuth, Layout, Ports};
use pki::Ca;
use process::Proc;

/// How long the API server may take to report `/readyz` (2 busy cores: ~10-20 s typical).
pub const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// The label put on every namespace made by [`ControlPlane::create_namespace`], so a
/// long-lived external control plane can be swept: `kubectl delete ns -l realtime-e2e/test`.
pub const TEST_NAMESPACE_LABEL: &str = "realtime-e2e/test";
/// Field manager of the harness's server-side applies.
const FIELD_MANAGER: &str = "realtime-e2e";
/// Log lines shown per process when something fails.
const LOG_TAIL_LINES: usize = 40;

/// The installed binaries (see `e2e/tools/install.sh`).
#[derive(Debug, Clone)]
pub struct Tools {
    pub bin_dir: PathBuf,
    pub versions: Versions,
}

impl Tools {
    /// The pinned versions and the folder `install.sh` puts them in: `$RT_TOOLS_BIN`, or
    /// `$RT_TOOLS_DIR` (default `~/.cache/realtime-operator/tools`) + the versions.
    pub fn pinned() -> anyhow::Result<Self> {
        let env_file = workspace_root().join("e2e/tools/versions.env");
        let text = std::fs::read_to_string(&env_file)
            .with_context(|| format!("reading {}", env_file.display()))?;
        let versions =
            Versions::parse(&text).map_err(|e| anyhow!("{}: {e}", env_file.display()))?;
        let bin_dir = match std::env::var_os("RT_TOOLS_BIN") {
            Some(dir) => PathBuf::from(dir),
            None => {
                let tools = match std::env::var_os("RT_TOOLS_DIR") {
                    Some(d) => PathBuf::from(d),
                    None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?)
                        .join(".cache/realtime-operator/tools"),
                };
                versions.bin_dir(&tools)
            }
        };
        Ok(Self { bin_dir, versions })
    }

    /// The first of the installed binaries (etcd, kube-apiserver, kube-controller-manager,
    /// kubectl, helm) that is missing, if any.
    pub fn first_missing(&self) -> Option<PathBuf> {
        [
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kubectl",
            "helm",
        ]
        .iter()
        .map(|b| self.bin_dir.join(b))
        .find(|p| !p.is_file())
    }

    /// The control-plane binaries, under the `require` policy: `None` (skip) or a panic
    /// under CI when any is missing.
    pub fn require_control_plane() -> Option<Self> {
        let found = Self::pinned().ok().filter(|t| {
            ["etcd", "kube-apiserver", "kube-controller-manager"]
                .iter()
                .all(|b| t.bin_dir.join(b).is_file())
        });
        require(
            "the control-plane binaries (etcd, kube-apiserver, kube-controller-manager)",
            "build them with e2e/tools/install.sh (needs Go; about 7 minutes cold)",
            found,
        )
    }

    /// A binary of the tools folder (or of PATH), under the `require` policy.
    pub fn require_binary(name: &str) -> Option<PathBuf> {
        let dirs: Vec<PathBuf> = Self::pinned().map(|t| vec![t.bin_dir]).unwrap_or_default();
        require(
            name,
            "build it with e2e/tools/install.sh (needs Go)",
            find_program(name, &dirs),
        )
    }
}

/// How long the last start took, measured from the first process spawn.
#[derive(Debug, Clone, Copy)]
pub struct StartTimings {
    /// Until the API server answered `/readyz` with 200.
    pub ready: Duration,
    /// Until kube-controller-manager had made the `default` ServiceAccount (it runs).
    pub controllers: Duration,
}

/// The processes and files of a control plane this harness started.
struct Owned {
    procs: Mutex<Vec<Proc>>,
    dir: Mutex<Option<tempfile::TempDir>>,
}

/// A running control plane: either started here (and stopped on drop / [`Self::shutdown`])
/// or an external one reused through its kubeconfig.
pub struct ControlPlane {
    server: String,
    kubeconfig: PathBuf,
    ca_file: PathBuf,
    /// Folder for certificates and kubeconfigs of other identities.
    identities: PathBuf,
    /// Present when we can mint client certificates (ours, or a harness's `pki/ca.key`).
    ca: Option<Ca>,
    owned: Option<Owned>,
    /// Holds `identities` for an external control plane.
    _scratch: Option<tempfile::TempDir>,
    timings: Option<StartTimings>,
    counter: AtomicU64,
}

impl ControlPlane {
    /// Starts etcd, kube-apiserver and kube-controller-manager and waits until the API server
    /// is ready and the controllers run. The data lives in a temp dir (on /dev/shm when there
    /// is one). A port taken between choosing and binding it causes one retry.
    pub async fn start(tools: &Tools) -> anyhow::Result<Self> {
        Self::start_with(tools, &Options::default()).await
    }

    /// [`Self::start`] for another kind of cluster (e.g. [`Options::for_node`]).
    pub async fn start_with(tools: &Tools, opts: &Options) -> anyhow::Result<Self> {
        match Self::start_once(tools, opts).await {
            Err(e) if format!("{e:#}").contains("address already in use") => {
                eprintln!("control plane: a chosen port was taken meanwhile; retrying once");
                Self::start_once(tools, opts).await
            }
            other => other,
        }
    }

    async fn start_once(tools: &Tools, opts: &Options) -> anyhow::Result<Self> {
        remove_stale_dirs();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{STATE_DIR_PREFIX}{}-", std::process::id()))
            .tempdir_in(state_parent())
            .context("creating the control plane's temp dir")?;
        let layout = Layout {
            root: dir.path().to_path_buf(),
        };
        for d in [
            layout.pki("x"),
            layout.logs().join("x"),
            layout.identities().join("x"),
        ] {
            std::fs::create_dir_all(d.parent().unwrap())?;
        }

        // Certificates: CA, serving, admin (system:masters), controller-manager, SA keys.
        let ca = Ca::generate()?;
        let sans: Vec<std::net::Ipv4Addr> = std::iter::once(opts.address)
            .chain(opts.kubernetes_service_ip())
            .collect();
        let serving = ca.issue_serving(&sans)?;
        let admin = ca.issue_client("realtime-e2e-admin", Some("system:masters"))?;
        // Without per-controller ServiceAccount credentials the controller manager acts for
        // every controller (the garbage collector deletes any kind), which its bootstrap role
        // system:kube-controller-manager does not allow; hence system:masters.
        let kcm = ca.issue_client("system:kube-controller-manager", Some("system:masters"))?;
        let sa = pki::service_account_keys()?;
        write_private(&layout.pki("ca.crt"), ca.cert_pem())?;
        write_private(&layout.pki("ca.key"), &ca.key_pem())?;
        write_private(&layout.pki("apiserver.crt"), &serving.cert_pem)?;
        write_private(&layout.pki("apiserver.key"), &serving.key_pem)?;
        write_private(&layout.pki("admin.crt"), &admin.cert_pem)?;
        write_private(&layout.pki("admin.key"), &admin.key_pem)?;
        write_private(&layout.pki("kcm.crt"), &kcm.cert_pem)?;
        write_private(&layout.pki("kcm.key"), &kcm.key_pem)?;
        write_private(&layout.pki("sa.key"), &sa.key_pem)?;
        write_private(&layout.pki("sa.pub"), &sa.cert_pem)?;
        if opts.kubelet_client {
            let kc = ca.issue_client("kube-apiserver-kubelet-client", Some("system:masters"))?;
            write_private(&layout.pki("kubelet-client.crt"), &kc.cert_pem)?;
            write_private(&layout.pki("kubelet-client.key"), &kc.key_pem)?;
        }

        let ports = Ports {
            etcd_client: free_port()?,
            etcd_peer: free_port()?,
            apiserver: free_port_on(opts.address)?,
        };
        let server = format!("https://{}:{}", opts.address, ports.apiserver);
        let ca_file = layout.pki("ca.crt");
        write_kubeconfig(
            &layout.admin_kubeconfig(),
            &config::kubeconfig(
                &server,
                &ca_file,
                "realtime-e2e-admin",
                &KubeconfigAuth::ClientCert {
                    cert: layout.pki("admin.crt"),
                    key: layout.pki("admin.key"),
                },
            ),
        )?;
        write_kubeconfig(
            &layout.controller_manager_kubeconfig(),
            &config::kubeconfig(
                &server,
                &ca_file,
                "system:kube-controller-manager",
                &KubeconfigAuth::ClientCert {
                    cert: layout.pki("kcm.crt"),
                    key: layout.pki("kcm.key"),
                },
            ),
        )?;

        let mut cp = Self {
            server,
            kubeconfig: layout.admin_kubeconfig(),
            ca_file,
            identities: layout.identities(),
            ca: Some(ca),
            owned: Some(Owned {
                procs: Mutex::new(Vec::new()),
                dir: Mutex::new(Some(dir)),
            }),
            _scratch: None,
            timings: None,
            counter: AtomicU64::new(0),
        };
        // On error `cp` is dropped here, which stops whatever was started.
        let timings = cp.boot(tools, &layout, ports, opts).await?;
        cp.timings = Some(timings);
        Ok(cp)
    }

    /// Spawns the three processes and waits for readiness; on failure the error carries
    /// the logs, and dropping `self` stops what was started.
    async fn boot(
        &self,
        tools: &Tools,
        layout: &Layout,
        ports: Ports,
        opts: &Options,
    ) -> anyhow::Result<StartTimings> {
        let t0 = Instant::now();
        let bin = |name: &str| tools.bin_dir.join(name);
        self.spawn(
            "etcd",
            &bin("etcd"),
            &config::etcd_args(layout, ports),
            layout,
        )?;
        // The API server would retry, but its log would fill with connection errors and an
        // etcd that cannot start would surface as a vague readiness timeout.
        self.poll_until(
            "etcd to report healthy",
            Duration::from_secs(30),
            || async { Ok(etcd_healthy(ports.etcd_client).await.then_some(())) },
        )
        .await
        .map_err(|e| self.with_logs(e))?;
        self.spawn(
            "kube-apiserver",
            &bin("kube-apiserver"),
            &config::apiserver_args(layout, ports, opts),
            layout,
        )?;
        let client = self.client().await?;
        self.wait_ready(&client, t0 + READY_TIMEOUT)
            .await
            .map_err(|e| self.with_logs(e))?;
        let ready = t0.elapsed();
        let version = client.apiserver_version().await?;
        if version.git_version != tools.versions.kubernetes {
            bail!(
                "kube-apiserver reports {} but versions.env pins {}: rebuild with e2e/tools/install.sh",
                version.git_version,
                tools.versions.kubernetes
            );
        }

        self.spawn(
            "kube-controller-manager",
            &bin("kube-controller-manager"),
            &config::controller_manager_args(layout, opts),
            layout,
        )?;
        // The serviceaccount controller makes `default` in every namespace: seeing it proves
        // the controller manager is connected and its informers have synced.
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
        self.poll_until(
            "kube-controller-manager to create the default ServiceAccount",
            Duration::from_secs(60),
            || async { Ok(sas.get_opt("default").await?.map(|_| ())) },
        )
        .await
        .map_err(|e| self.with_logs(e))?;
        Ok(StartTimings {
            ready,
            controllers: t0.elapsed(),
        })
    }

    fn spawn(
        &self,
        name: &'static str,
        program: &Path,
        args: &[String],
        layout: &Layout,
    ) -> anyhow::Result<()> {
        let log = layout.logs().join(format!("{name}.log"));
        let p = Proc::start(name, program, args, log)?;
        self.procs().push(p);
        Ok(())
    }

    /// The folder of this control plane's files (`pki/`, `logs/`, kubeconfigs); `None` for
    /// an external one.
    pub fn state_dir(&self) -> Option<PathBuf> {
        let owned = self.owned.as_ref()?;
        let dir = owned.dir.lock().unwrap_or_else(|e| e.into_inner());
        dir.as_ref().map(|d| d.path().to_path_buf())
    }

    fn procs(&self) -> std::sync::MutexGuard<'_, Vec<Proc>> {
        self.owned
            .as_ref()
            .expect("only an owned control plane has processes")
            .procs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// An error if one of our processes has exited (always `Ok` for an external one).
    pub fn check_alive(&self) -> anyhow::Result<()> {
        if self.owned.is_none() {
            return Ok(());
        }
        for p in self.procs().iter_mut() {
            if let Some(status) = p.exit_status() {
                bail!("{} exited early ({status})", p.name);
            }
        }
        Ok(())
    }

    async fn wait_ready(&self, client: &Client, deadline: Instant) -> anyhow::Result<()> {
        let mut last;
        loop {
            self.check_alive()?;
            let req = http::Request::get("/readyz").body(Vec::new())?;
            match client.request_text(req).await {
                Ok(body) if body.trim() == "ok" => return Ok(()),
                Ok(body) => last = body,
                Err(e) => last = e.to_string(),
            }
            if Instant::now() > deadline {
                bail!("kube-apiserver not ready after {READY_TIMEOUT:?}; last /readyz: {last}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Reuses the control plane of `kubeconfig` (for example one started by
    /// `rt-control-plane`). Client certificates for other identities need the CA key, found
    /// next to a harness's kubeconfig in `pki/`; token identities work with any cluster.
    pub async fn external(kubeconfig: &Path) -> anyhow::Result<Self> {
        let kc = Kubeconfig::read_from(kubeconfig)
            .with_context(|| format!("reading kubeconfig {}", kubeconfig.display()))?;
        let cluster = kc
            .clusters
            .first()
            .and_then(|c| c.cluster.clone())
            .context("kubeconfig has no cluster")?;
        let server = cluster.server.context("kubeconfig cluster has no server")?;
        let harness_dir = kubeconfig.parent().unwrap_or(Path::new("."));
        let (ca_crt, ca_key) = (
            harness_dir.join("pki/ca.crt"),
            harness_dir.join("pki/ca.key"),
        );
        let ca = match (
            std::fs::read_to_string(&ca_crt),
            std::fs::read_to_string(&ca_key),
        ) {
            (Ok(crt), Ok(key)) => Some(Ca::from_pem(&crt, &key)?),
            _ => None,
        };
        let ca_file = match &cluster.certificate_authority {
            Some(p) => PathBuf::from(p),
            None => ca_crt,
        };
        let scratch = tempfile::tempdir()?;
        let cp = Self {
            server,
            kubeconfig: kubeconfig.to_path_buf(),
            ca_file,
            identities: scratch.path().to_path_buf(),
            ca,
            owned: None,
            _scratch: Some(scratch),
            timings: None,
            counter: AtomicU64::new(0),
        };
        let client = cp.client().await?;
        cp.wait_ready(&client, Instant::now() + Duration::from_secs(10))
            .await?;
        Ok(cp)
    }

    /// The admin kubeconfig (user in `system:masters`), for kubectl and helm subprocesses.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// The API server's URL (`https://127.0.0.1:PORT`).
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Start timings; `None` for an external control plane.
    pub fn timings(&self) -> Option<StartTimings> {
        self.timings
    }

    /// A new admin client. Make one per test (a `kube::Client` belongs to the Tokio runtime
    /// it was made in, and each `#[tokio::test]` has its own).
    pub async fn client(&self) -> anyhow::Result<Client> {
        let kc = Kubeconfig::read_from(&self.kubeconfig)?;
        client_from(kc).await
    }

    /// An identity authenticated by a client certificate from the harness CA: user `user`,
    /// optionally in `group`. It has no permissions until a (Cluster)RoleBinding grants some.
    pub fn user(&self, user: &str, group: Option<&str>) -> anyhow::Result<Identity> {
        let ca = self.ca.as_ref().context(
            "this control plane's CA key is unknown (external cluster): use a ServiceAccount identity",
        )?;
        let issued = ca.issue_client(user, group)?;
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let base = self.identities.join(format!("user-{n}"));
        let (cert, key) = (base.with_extension("crt"), base.with_extension("key"));
        write_private(&cert, &issued.cert_pem)?;
        write_private(&key, &issued.key_pem)?;
        self.identity(user, KubeconfigAuth::ClientCert { cert, key })
    }

    /// An identity authenticated as ServiceAccount `namespace/name` by a token from the
    /// TokenRequest API (valid one hour), as a Pod running under that ServiceAccount would be.
    pub async fn service_account(&self, namespace: &str, name: &str) -> anyhow::Result<Identity> {
        let api: Api<ServiceAccount> = Api::namespaced(self.client().await?, namespace);
        let req = TokenRequest {
            spec: Some(TokenRequestSpec {
                expiration_seconds: Some(3600),
                ..Default::default()
            }),
            ..Default::default()
        };
        let token = api
            .create_token_request(name, &PostParams::default(), &req)
            .await
            .with_context(|| format!("TokenRequest for ServiceAccount {namespace}/{name}"))?
            .status
            .and_then(|s| s.token)
            .context("TokenRequest answered without a token")?;
        self.identity(
            &format!("system:serviceaccount:{namespace}:{name}"),
            KubeconfigAuth::Token(token),
        )
    }

    fn identity(&self, user: &str, auth: KubeconfigAuth) -> anyhow::Result<Identity> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let path = self.identities.join(format!("identity-{n}.kubeconfig"));
        write_kubeconfig(
            &path,
            &config::kubeconfig(&self.server, &self.ca_file, user, &auth),
        )?;
        Ok(Identity {
            user: user.to_string(),
            kubeconfig: path,
        })
    }

    /// Creates a namespace `prefix-<unique>` (labelled [`TEST_NAMESPACE_LABEL`]) and returns
    /// its name. Namespaces go with the control plane; tests need not delete them.
    pub async fn create_namespace(&self, prefix: &str) -> anyhow::Result<String> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let name = config::unique_name(
            prefix,
            (nanos ^ ((std::process::id() as u64) << 40)).wrapping_add(n) & 0xffff_ffff_ffff,
        );
        let ns: Namespace = serde_json::from_value(json!({
            "metadata": { "name": name, "labels": { TEST_NAMESPACE_LABEL: "true" } }
        }))?;
        Api::<Namespace>::all(self.client().await?)
            .create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        Ok(name)
    }

    /// Server-side applies every CustomResourceDefinition in the YAML file `path` (one or
    /// more documents), then waits until each is Established and served by discovery.
    /// Returns the CRD names.
    pub async fn install_crds(&self, path: &Path) -> anyhow::Result<Vec<String>> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading CRD file {}", path.display()))?;
        let client = self.client().await?;
        let api: Api<CustomResourceDefinition> = Api::all(client.clone());
        let mut names = Vec::new();
        for doc in yaml_documents(&text).with_context(|| format!("parsing {}", path.display()))? {
            if doc.get("kind").and_then(Value::as_str) != Some("CustomResourceDefinition") {
                bail!(
                    "{}: expected only CustomResourceDefinitions, found {}",
                    path.display(),
                    doc["kind"]
                );
            }
            let crd: CustomResourceDefinition = serde_json::from_value(doc)?;
            let name = crd
                .metadata
                .name
                .clone()
                .context("CRD without metadata.name")?;
            api.patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&crd),
            )
            .await
            .with_context(|| format!("applying CRD {name}"))?;
            names.push(name);
        }
        for name in &names {
            self.wait_crd_served(&client, name).await?;
        }
        Ok(names)
    }

    /// Waits until CRD `name` is Established and discovery lists its resource in every
    /// served version (only then do clients that resolve kinds through discovery see it).
    pub async fn wait_crd_served(&self, client: &Client, name: &str) -> anyhow::Result<()> {
        let api: Api<CustomResourceDefinition> = Api::all(client.clone());
        let cond = kube::runtime::wait::conditions::is_crd_established();
        let crd = tokio::time::timeout(
            Duration::from_secs(30),
            kube::runtime::wait::await_condition(api, name, cond),
        )
        .await
        .with_context(|| format!("CRD {name} not Established within 30 s"))??
        .with_context(|| format!("CRD {name} was deleted while waiting"))?;
        let group = crd.spec.group.clone();
        let plural = crd.spec.names.plural.clone();
        for v in crd.spec.versions.iter().filter(|v| v.served) {
            let gv = format!("{group}/{}", v.name);
            self.poll_until(
                &format!("discovery to serve {plural} in {gv}"),
                Duration::from_secs(30),
                || async {
                    let found = match client.list_api_group_resources(&gv).await {
                        Ok(list) => list.resources.iter().any(|r| r.name == plural),
                        Err(kube::Error::Api(e)) if e.code == 404 => false,
                        Err(e) => return Err(e.into()),
                    };
                    Ok(found.then_some(()))
                },
            )
            .await?;
        }
        Ok(())
    }

    /// Polls `probe` every 200 ms until it yields `Some`, for at most `timeout`; fails fast if
    /// one of our processes dies meanwhile.
    pub async fn poll_until<T, F, Fut>(
        &self,
        what: &str,
        timeout: Duration,
        mut probe: F,
    ) -> anyhow::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = anyhow::Result<Option<T>>>,
    {
        let deadline = Instant::now() + timeout;
        let mut last_err = None;
        loop {
            self.check_alive()?;
            match probe().await {
                Ok(Some(v)) => return Ok(v),
                Ok(None) => {}
                Err(e) => last_err = Some(e),
            }
            if Instant::now() > deadline {
                let why = last_err
                    .map(|e| format!(" (last error: {e:#})"))
                    .unwrap_or_default();
                bail!("timed out after {timeout:?} waiting for {what}{why}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A `kubectl` command (the pinned build) aimed at this control plane as admin; `None`
    /// under the `require` policy when kubectl is missing.
    pub fn kubectl(&self) -> Option<Command> {
        let mut cmd = Command::new(Tools::require_binary("kubectl")?);
        cmd.env("KUBECONFIG", &self.kubeconfig);
        Some(cmd)
    }

    /// A `helm` command (the pinned build) aimed at this control plane as admin.
    pub fn helm(&self) -> Option<Command> {
        let mut cmd = Command::new(Tools::require_binary("helm")?);
        cmd.env("KUBECONFIG", &self.kubeconfig);
        Some(cmd)
    }

    /// The processes we started, with their resident memory (empty for an external
    /// control plane).
    pub fn processes(&self) -> Vec<ProcessInfo> {
        if self.owned.is_none() {
            return Vec::new();
        }
        self.procs()
            .iter()
            .map(|p| ProcessInfo {
                name: p.name,
                pid: p.pid(),
                rss_bytes: p.rss_bytes(),
            })
            .collect()
    }

    /// The last lines of each started process's log.
    pub fn log_tails(&self) -> String {
        if self.owned.is_none() {
            return "(external control plane: no process logs here)".to_string();
        }
        self.procs()
            .iter_mut()
            .map(|p| p.log_tail(LOG_TAIL_LINES))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The log files of the started processes.
    pub fn log_files(&self) -> Vec<PathBuf> {
        if self.owned.is_none() {
            return Vec::new();
        }
        self.procs()
            .iter()
            .map(|p| p.log_path().to_path_buf())
            .collect()
    }

    /// `e` with the processes' log tails attached.
    pub fn with_logs(&self, e: anyhow::Error) -> anyhow::Error {
        anyhow!("{e:#}\n\ncontrol plane process logs:\n{}", self.log_tails())
    }

    /// A guard that prints the processes' log tails if the test panics while it is alive.
    pub fn logs_on_failure(&self) -> LogsOnFailure<'_> {
        LogsOnFailure { cp: self }
    }

    /// Stops our processes (controller manager, API server, then etcd) and removes the temp
    /// dir. Idempotent; a no-op for an external control plane.
    pub fn shutdown(&self) {
        let Some(owned) = &self.owned else { return };
        let mut procs = owned.procs.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(mut p) = procs.pop() {
            p.stop(Duration::from_secs(3));
        }
        drop(owned.dir.lock().unwrap_or_else(|e| e.into_inner()).take());
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// One process of an owned control plane.
#[derive(Debug, Clone)]
pub struct ProcessInfo {
    pub name: &'static str,
    pub pid: u32,
    /// Resident memory; `None` once it has exited.
    pub rss_bytes: Option<u64>,
}

/// Prints the control plane's logs when dropped during a panic (a failing test).
pub struct LogsOnFailure<'a> {
    cp: &'a ControlPlane,
}

impl Drop for LogsOnFailure<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("\n{}", self.cp.log_tails());
        }
    }
}

/// Another user of the API server, for RBAC tests: its kubeconfig (for kubectl/helm) and
/// clients made from it.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The user name the API server sees (`system:serviceaccount:NS:NAME` for tokens).
    pub user: String,
    pub kubeconfig: PathBuf,
}

impl Identity {
    pub async fn client(&self) -> anyhow::Result<Client> {
        client_from(Kubeconfig::read_from(&self.kubeconfig)?).await
    }
}

async fn client_from(kc: Kubeconfig) -> anyhow::Result<Client> {
    let mut config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    // Tests assert on 429/503 themselves; a silent retry would hide them.
    config.default_retry = false;
    config.read_timeout = Some(Duration::from_secs(60));
    Ok(Client::try_from(config)?)
}

/// The non-empty documents of a multi-document YAML text, as JSON values.
pub fn yaml_documents(text: &str) -> anyhow::Result<Vec<Value>> {
    use serde::Deserialize;
    let mut docs = Vec::new();
    for de in serde_yaml::Deserializer::from_str(text) {
        let v = Value::deserialize(de)?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    Ok(())
}

fn write_kubeconfig(path: &Path, kubeconfig: &Value) -> anyhow::Result<()> {
    write_private(path, &serde_json::to_string_pretty(kubeconfig)?)
}

/// etcd's `/health` (plain HTTP on the client port) reports `"health":"true"`.
async fn etcd_healthy(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let probe = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await?;
        let mut body = String::new();
        s.read_to_string(&mut body).await?;
        std::io::Result::Ok(body.contains("\"health\":\"true\""))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), probe).await,
        Ok(Ok(true))
    )
}

/// A free loopback port (the OS picks it; another process could take it before our child
/// binds it, which [`ControlPlane::start`] retries once).
pub fn free_port() -> std::io::Result<u16> {
    free_port_on(std::net::Ipv4Addr::LOCALHOST)
}

/// A free port on the local address `ip`.
pub fn free_port_on(ip: std::net::Ipv4Addr) -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind((ip, 0))?.local_addr()?.port())
}

const STATE_DIR_PREFIX: &str = "rt-control-plane-";

/// /dev/shm when usable (etcd on tmpfs), else the system temp dir.
fn state_parent() -> PathBuf {
    let shm = Path::new("/dev/shm");
    let writable = shm.is_dir()
        && tempfile::Builder::new()
            .prefix(".rt-probe-")
            .tempfile_in(shm)
            .is_ok();
    if writable {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// Removes state dirs left by harness processes that were killed (no destructor ran); their
/// children died with them (PDEATHSIG), but tmpfs files would hold memory until reboot.
fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(state_parent()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(STATE_DIR_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

enum SharedState {
    Ready(Arc<ControlPlane>),
    Skipped,
    Failed(String),
}

static SHARED: tokio::sync::OnceCell<SharedState> = tokio::sync::OnceCell::const_new();

/// The control plane of this test binary, started on first use with the project's CRDs
/// (`crds/*.yaml`) installed, and stopped when the process exits. `None` means skip (binaries
/// missing, not in CI; the reason was printed). Panics when the start failed, in every test
/// that asks, with the logs.
///
/// With `RT_CONTROL_PLANE=external`, reuses the control plane `KUBECONFIG` points at.
pub async fn shared() -> Option<Arc<ControlPlane>> {
    let state = SHARED
        .get_or_init(|| async {
            match start_shared().await {
                Ok(Some(cp)) => SharedState::Ready(cp),
                Ok(None) => SharedState::Skipped,
                Err(e) => SharedState::Failed(format!("{e:#}")),
            }
        })
        .await;
    match state {
        SharedState::Ready(cp) => Some(cp.clone()),
        SharedState::Skipped => {
            // Repeat the policy for this test (panics under CI, prints the skip otherwise).
            Tools::require_control_plane();
            None
        }
        SharedState::Failed(e) => panic!("the shared control plane did not start: {e}"),
    }
}

async fn start_shared() -> anyhow::Result<Option<Arc<ControlPlane>>> {
    let cp = if std::env::var("RT_CONTROL_PLANE").as_deref() == Ok("external") {
        let kubeconfig = std::env::var_os("KUBECONFIG")
            .context("RT_CONTROL_PLANE=external needs KUBECONFIG (printed by rt-control-plane)")?;
        let cp = ControlPlane::external(Path::new(&kubeconfig)).await?;
        eprintln!(
            "control plane: reusing {} ({})",
            cp.server(),
            Path::new(&kubeconfig).display()
        );
        cp
    } else {
        let Some(tools) = Tools::require_control_plane() else {
            return Ok(None);
        };
        let t0 = Instant::now();
        let cp = ControlPlane::start(&tools).await?;
        // Registered once, after a successful start: statics are never dropped, so this is
        // what stops the shared processes when the test binary exits normally.
        extern "C" fn stop_shared() {
            if let Some(SharedState::Ready(cp)) = SHARED.get() {
                cp.shutdown();
            }
        }
        // SAFETY: registering a plain extern "C" fn.
        unsafe { libc::atexit(stop_shared) };
        eprintln!(
            "control plane: ready in {:.1?}, controllers running at {:.1?}; KUBECONFIG={}",
            cp.timings.map(|t| t.ready).unwrap_or_default(),
            t0.elapsed(),
            cp.kubeconfig_path().display()
        );
        cp
    };
    let cp = Arc::new(cp);
    for crd in project_crd_files()? {
        cp.install_crds(&crd).await.map_err(|e| cp.with_logs(e))?;
    }
    Ok(Some(cp))
}

/// The project's CRD files: every `*.yaml` in `crds/`, sorted.
pub fn project_crd_files() -> anyhow::Result<Vec<PathBuf>> {
    let dir = workspace_root().join("crds");
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).context(format!("reading {}", dir.display())),
    };
    files.sort();
    if files.is_empty() {
        eprintln!(
            "control plane: no CRDs in {} yet; none installed",
            dir.display()
        );
    }
    Ok(files)
}

/// The file of the project's RealtimeCluster CRD, under the `require` policy (missing in CI
/// fails the test).
pub fn require_project_crd() -> Option<PathBuf> {
    let p = workspace_root().join("crds/realtimecluster.yaml");
    require(
        "crds/realtimecluster.yaml",
        "generate it with `make crds` (the operator's CRD)",
        p.is_file().then_some(p),
    )
}

/// True when tests run against a control plane they must not assume they own.
pub fn is_external() -> bool {
    std::env::var("RT_CONTROL_PLANE").as_deref() == Ok("external")
}
