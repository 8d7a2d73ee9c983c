//! Path B: a RealtimeCluster on local parts. What is real: the API server (with the project's
//! CRD), the operator (`realtime-operator`, a process watching one namespace), kubectl, and a
//! data plane built FROM WHAT THE OPERATOR CREATED:
//! - each server "pod" is a `realtime-server` process with the environment of the Deployment's
//!   container (Secret keys, `fieldRef`s and `$(VAR)`s resolved as a kubelet does; only `PORT`
//!   and `BIND` are moved to loopback, and Service DNS names to loopback ports);
//! - Redis is a `redis-server` run with the StatefulSet container's arguments (its password from
//!   the operator's Secret);
//! - nginx plays the Ingress with the affinity its annotations ask for (cookie or client
//!   address).
//!
//! No kubelet or workload controller exists here, so this harness plays them: it starts and
//! stops processes to match `Deployment.spec.replicas` and template (surge-first, as the
//! Deployment's RollingUpdate strategy says), honours the preStop sleep and the termination
//! grace period, and writes the Deployment's and StatefulSet's status so that the operator sees
//! ready pods. Every such step is announced on stderr with "SIMULATED".

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Container, PodTemplateSpec, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use tokio::process::Command;

use super::Target;
use super::ingress::{self, IngressSpec};
use super::kubectl::{Applied, Kubectl};
use super::kubelet::{self, PodFacts, PodView, Sources, Step};
use crate::control_plane::{self, ControlPlane, Tools};
use crate::data_plane::{self, Affinity, Echo, Nginx, NginxConf, Proc, free_port, http_get};
use crate::require::{require, workspace_bin};
use crate::sio::ConnectOptions;

/// Bound for the operator to create or update what a step waits for.
const OPERATOR_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound for a process to become ready.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Prints a line about what this path simulates (always visible, even under test capture).
fn simulated(msg: &str) {
    super::note(&format!("[path B] SIMULATED (no kubelet here): {msg}"));
}

// ---------------------------------------------------------------------------------------------
// The target
// ---------------------------------------------------------------------------------------------

/// A namespaced Kubernetes object this harness reads and writes through the API.
trait Namespaced:
    Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
{
}

impl<K> Namespaced for K where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
{
}

/// The programs this path runs.
#[derive(Debug, Clone)]
pub struct Programs {
    pub server: PathBuf,
    pub operator: PathBuf,
    pub redis: PathBuf,
    pub nginx: PathBuf,
    pub kubectl: PathBuf,
}

impl Programs {
    /// Finds every program by the [`require`] policy (`None`: skip, after saying why).
    pub fn require() -> Option<Programs> {
        let build = "run `cargo build --workspace --bins` (make test does it first)";
        let server = require(
            "the realtime-server binary",
            build,
            workspace_bin("realtime-server"),
        )?;
        let operator = require(
            "the realtime-operator binary",
            build,
            workspace_bin("realtime-operator"),
        )?;
        let (redis, nginx) = data_plane::require_parts()?;
        let kubectl = Tools::require_binary("kubectl")?;
        Some(Programs {
            server,
            operator,
            redis,
            nginx,
            kubectl,
        })
    }
}

/// One server pod: a realtime-server process.
struct ServerPod {
    name: String,
    port: u16,
    template_hash: String,
    ready: bool,
    process: Proc,
}

/// A RealtimeCluster reconciled by the real operator on the local control plane, with its
/// data plane run by this harness. Dropping it stops every process it started.
pub struct LocalTarget {
    cp: Arc<ControlPlane>,
    client: kube::Client,
    kubectl: Kubectl,
    programs: Programs,
    dir: tempfile::TempDir,
    name: String,
    uid: String,
    operator: Proc,
    redis: Option<Proc>,
    redis_port: u16,
    pods: Vec<ServerPod>,
    nginx: Option<Nginx>,
    nginx_port: u16,
    nginx_generation: u64,
    ingress: Option<IngressSpec>,
    clients: AtomicUsize,
    pod_seq: u64,
}

impl LocalTarget {
    /// Starts everything for a test: `None` when a part is missing outside CI (the test then
    /// returns). Panics with the logs when something fails to start.
    pub async fn for_test(manifest: &str) -> Option<LocalTarget> {
        let programs = Programs::require()?;
        let cp = control_plane::shared().await?;
        match LocalTarget::start(cp, programs, manifest).await {
            Ok(t) => Some(t),
            Err(e) => panic!("starting the local RealtimeCluster: {e:#}"),
        }
    }

    /// Creates a namespace, starts the operator watching it, applies `manifest` (one
    /// RealtimeCluster with its ingress enabled) and runs what the operator created.
    pub async fn start(
        cp: Arc<ControlPlane>,
        programs: Programs,
        manifest: &str,
    ) -> Result<LocalTarget> {
        let doc: Value = serde_yaml::from_str(manifest).context("the RealtimeCluster manifest")?;
        let name = doc["metadata"]["name"]
            .as_str()
            .ok_or_else(|| anyhow!("the manifest has no metadata.name"))?
            .to_string();
        let ns = cp.create_namespace("e2e").await?;
        let client = cp.client().await?;
        let dir = data_plane::work_dir("rt-path-b-")?;

        let kubeconfig = cp.kubeconfig_path().to_path_buf();
        let kubectl = Kubectl::new(
            programs.kubectl.clone(),
            vec![(
                OsString::from("KUBECONFIG"),
                kubeconfig.clone().into_os_string(),
            )],
            vec![],
            &ns,
        );

        // The operator, as its chart runs it, watching only this namespace.
        let admin = format!("127.0.0.1:{}", free_port()?);
        let mut cmd = Command::new(&programs.operator);
        cmd.args([
            format!("--admin-addr={admin}"),
            "--default-server-image=realtime-server:path-b".to_string(),
            "--log-format=text".to_string(),
            format!("--namespace={ns}"),
        ])
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "info");
        let operator = Proc::spawn(
            cmd,
            "operator",
            &data_plane::log_path(dir.path(), "operator"),
            libc::SIGKILL,
            Echo::Program,
        )?;

        let mut t = LocalTarget {
            cp,
            client,
            kubectl,
            programs,
            dir,
            name,
            uid: String::new(),
            operator,
            redis: None,
            redis_port: free_port()?,
            pods: Vec::new(),
            nginx: None,
            nginx_port: free_port()?,
            nginx_generation: 0,
            ingress: None,
            clients: AtomicUsize::new(0),
            pod_seq: 0,
        };
        t.bring_up(manifest)
            .await
            .map_err(|e| anyhow!("{e:#}\n{}", t.logs(40)))?;
        Ok(t)
    }

    async fn bring_up(&mut self, manifest: &str) -> Result<()> {
        match self.kubectl.apply(manifest).await? {
            Applied::Accepted(out) => super::note(&format!(
                "[path B] kubectl apply: {out} (namespace {})",
                self.ns()
            )),
            Applied::Rejected(msg) => bail!("kubectl apply of the RealtimeCluster failed: {msg}"),
        }
        let rtc = self.kubectl.get_json(&["rtc", &self.name]).await?;
        self.uid = rtc["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();

        let sts = self
            .wait_owned::<StatefulSet>("the Redis StatefulSet")
            .await?;
        self.start_redis(&sts).await?;
        let dep = self
            .wait_owned::<Deployment>("the server Deployment")
            .await?;
        let ing = self
            .wait_owned::<Ingress>("the Ingress (the manifest must enable it)")
            .await?;
        let spec = ingress::read_ingress(&ing)?;
        self.check_ingress_backend(&spec.backend_service, &dep)
            .await?;
        simulated(&format!(
            "nginx on 127.0.0.1:{} plays ingress-nginx for Ingress {} ({}, timeouts read {}s / send {}s / connect {}s from its annotations); its host is not resolvable here, clients use the loopback URL",
            self.nginx_port,
            ing.name_any(),
            spec.affinity.describe(),
            spec.timeouts.read_secs,
            spec.timeouts.send_secs,
            spec.timeouts.connect_secs,
        ));
        self.ingress = Some(spec);
        self.sync().await?;
        self.start_nginx().await?;
        self.wait_rtc_ready().await
    }

    fn ns(&self) -> &str {
        self.kubectl.namespace()
    }

    fn log_path(&self, name: &str) -> PathBuf {
        data_plane::log_path(self.dir.path(), name)
    }

    /// Starts a pod's (or the operator's) process, which dies with the harness. Only the
    /// program is logged: arguments and environment carry the operator's Secrets.
    fn spawn(&self, cmd: Command, name: &str) -> Result<Proc> {
        Proc::spawn(
            cmd,
            name,
            &self.log_path(name),
            libc::SIGKILL,
            Echo::Program,
        )
    }

    /// The operator's log and every process's, for failures.
    pub fn logs(&self, lines: usize) -> String {
        let mut s = format!("---- operator ----\n{}\n", self.operator.log_tail(lines));
        for p in &self.pods {
            s.push_str(&format!(
                "---- {} (port {}) ----\n{}\n",
                p.name,
                p.port,
                p.process.log_tail(lines)
            ));
        }
        for p in self
            .redis
            .iter()
            .chain(self.nginx.as_ref().map(Nginx::proc_))
        {
            s.push_str(&format!("---- {} ----\n{}\n", p.name(), p.log_tail(lines)));
        }
        s
    }

    fn check_operator(&self) -> Result<()> {
        if let Some(s) = self.operator.exited() {
            bail!("the operator exited ({s}):\n{}", self.operator.log_tail(40));
        }
        Ok(())
    }

    /// The one object of kind `K` in the namespace that the RealtimeCluster owns.
    async fn owned<K: Namespaced>(&self) -> Result<Option<K>> {
        let api: Api<K> = Api::namespaced(self.client.clone(), self.ns());
        let list = api.list(&ListParams::default()).await?;
        Ok(list.items.into_iter().find(|o| {
            o.owner_references()
                .iter()
                .any(|r| r.uid == self.uid && r.controller == Some(true))
        }))
    }

    /// The server Deployment the operator created.
    async fn deployment(&self) -> Result<Deployment> {
        self.owned().await?.context("the server Deployment is gone")
    }

    /// The Redis StatefulSet the operator created.
    async fn redis_statefulset(&self) -> Result<StatefulSet> {
        self.owned().await?.context("the Redis StatefulSet is gone")
    }

    async fn wait_owned<K: Namespaced>(&mut self, what: &str) -> Result<K> {
        let deadline = Instant::now() + OPERATOR_TIMEOUT;
        loop {
            self.check_operator()?;
            if let Some(o) = self.owned::<K>().await? {
                return Ok(o);
            }
            if Instant::now() > deadline {
                bail!("the operator did not create {what} within {OPERATOR_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Secrets and ConfigMaps of the namespace, for env resolution.
    async fn sources(&self) -> Result<Sources> {
        let mut s = Sources::default();
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), self.ns());
        for sec in secrets.list(&ListParams::default()).await?.items {
            let data = sec
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .chain(
                    sec.string_data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.into_bytes())),
                )
                .collect();
            s.secrets
                .insert(sec.metadata.name.unwrap_or_default(), data);
        }
        let cms: Api<ConfigMap> = Api::namespaced(self.client.clone(), self.ns());
        for cm in cms.list(&ListParams::default()).await?.items {
            s.config_maps.insert(
                cm.metadata.name.unwrap_or_default(),
                cm.data.unwrap_or_default(),
            );
        }
        Ok(s)
    }

    /// The DNS names of the Services that select the Redis pod (what REDIS_URL names).
    async fn redis_service_names(&self, sts: &StatefulSet) -> Result<Vec<String>> {
        let labels = template_labels(
            &sts.spec
                .as_ref()
                .context("StatefulSet without spec")?
                .template,
        );
        let api: Api<Service> = Api::namespaced(self.client.clone(), self.ns());
        let mut names = Vec::new();
        for svc in api.list(&ListParams::default()).await?.items {
            let sel = svc
                .spec
                .as_ref()
                .and_then(|s| s.selector.clone())
                .unwrap_or_default();
            if !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v)) {
                names.extend(kubelet::service_dns_names(&svc.name_any(), self.ns()));
            }
        }
        ensure!(!names.is_empty(), "no Service selects the Redis pods");
        Ok(names)
    }

    fn pod_facts(&self, name: &str, template: &PodTemplateSpec) -> PodFacts {
        let meta = template.metadata.clone().unwrap_or_default();
        PodFacts {
            name: name.to_string(),
            namespace: self.ns().to_string(),
            labels: meta.labels.unwrap_or_default(),
            annotations: meta.annotations.unwrap_or_default(),
            ip: "127.0.0.1".into(),
            node_name: "local".into(),
            service_account: template
                .spec
                .as_ref()
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_else(|| "default".into()),
        }
    }

    // ---- Redis (the StatefulSet's pod) ----

    async fn start_redis(&mut self, sts: &StatefulSet) -> Result<()> {
        let spec = sts.spec.as_ref().context("StatefulSet without spec")?;
        let pod_name = format!("{}-0", sts.name_any());
        let pod_spec = spec
            .template
            .spec
            .as_ref()
            .context("StatefulSet template without spec")?;
        let c = &pod_spec.containers[0];
        let env = kubelet::resolve_env(
            c.env.as_deref().unwrap_or_default(),
            &self.pod_facts(&pod_name, &spec.template),
            &self.sources().await?,
        )
        .context("the Redis container's environment")?;
        let args = kubelet::container_args(c, &env);
        ensure!(
            c.command.is_none() && args.first().map(String::as_str) == Some("redis-server"),
            "the Redis container does not run `redis-server ...` through the image's entrypoint: {:?} {args:?}",
            c.command
        );
        let data = self.dir.path().join("pods").join(&pod_name);
        // A fresh pod: emptyDir volumes start empty.
        let _ = std::fs::remove_dir_all(&data);
        let mut args = map_mounts(&args[1..], c, &data)?;
        args.extend([
            "--port".into(),
            self.redis_port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
        ]);
        let mut cmd = Command::new(&self.programs.redis);
        cmd.args(&args)
            .env_clear()
            .envs(env.iter().cloned())
            .current_dir(&data);
        let redis = self.redis.insert(self.spawn(cmd, &pod_name)?);
        let password = env
            .iter()
            .find(|(k, _)| k == "REDISCLI_AUTH" || k == "REDIS_PASSWORD")
            .map(|(_, v)| v.as_str());
        let addr = SocketAddr::from(([127, 0, 0, 1], self.redis_port));
        data_plane::wait_redis(redis, addr, password, START_TIMEOUT).await?;
        self.patch_statefulset_status(sts, 1).await?;
        simulated(&format!(
            "pod {pod_name}: redis-server with the StatefulSet's args (password from Secret, --dir on a fresh emptyDir) on 127.0.0.1:{}; StatefulSet status written by the harness",
            self.redis_port
        ));
        Ok(())
    }

    async fn patch_statefulset_status(&self, sts: &StatefulSet, ready: i32) -> Result<()> {
        let rev = format!(
            "{}-{}",
            sts.name_any(),
            kubelet::template_hash(&sts.spec.as_ref().unwrap().template)
        );
        let status = json!({"status": {
            "observedGeneration": sts.metadata.generation,
            "replicas": 1, "readyReplicas": ready, "availableReplicas": ready,
            "currentReplicas": 1, "updatedReplicas": 1,
            "currentRevision": rev, "updateRevision": rev,
        }});
        self.patch_status::<StatefulSet>(&sts.name_any(), &status)
            .await
    }

    // ---- server pods (the Deployment's) ----

    /// Plays the Deployment controller and kubelet until the pods match the Deployment.
    async fn sync(&mut self) -> Result<()> {
        let started = Instant::now();
        loop {
            self.check_operator()?;
            ensure!(
                started.elapsed() < Duration::from_secs(300),
                "the rollout did not converge in 5 minutes"
            );
            let dep = self.deployment().await?;
            let spec = dep.spec.clone().context("Deployment without spec")?;
            let desired = spec.replicas.unwrap_or(1).max(0) as usize;
            let hash = kubelet::template_hash(&spec.template);
            let ru = spec
                .strategy
                .as_ref()
                .and_then(|s| s.rolling_update.as_ref());
            let surge =
                kubelet::scaled_value(ru.and_then(|r| r.max_surge.as_ref()), desired, true, "25%")?;
            let unavailable = kubelet::scaled_value(
                ru.and_then(|r| r.max_unavailable.as_ref()),
                desired,
                false,
                "25%",
            )?;
            let views: Vec<PodView> = self
                .pods
                .iter()
                .map(|p| PodView {
                    name: p.name.clone(),
                    current: p.template_hash == hash,
                    ready: p.ready,
                })
                .collect();
            match kubelet::next_step(desired, surge, unavailable, &views) {
                None => {
                    self.patch_deployment_status(&dep, &hash).await?;
                    return Ok(());
                }
                Some(Step::Start) => self.start_pod(&dep, &hash).await?,
                Some(Step::Stop(name)) => self.stop_pod(&dep, &name).await?,
            }
            self.patch_deployment_status(&dep, &hash).await?;
        }
    }

    async fn start_pod(&mut self, dep: &Deployment, hash: &str) -> Result<()> {
        let spec = dep.spec.as_ref().unwrap();
        self.pod_seq += 1;
        let seed = self.pod_seq ^ (std::process::id() as u64) << 20 ^ self.nginx_port as u64;
        let name = format!("{}-{hash}-{}", dep.name_any(), kubelet::name_suffix(seed));
        let pod_spec = spec
            .template
            .spec
            .as_ref()
            .context("Deployment template without spec")?;
        let c = pod_spec
            .containers
            .first()
            .context("Deployment without containers")?;
        ensure!(
            c.command.is_none(),
            "the server container overrides the image's entrypoint: {:?}",
            c.command
        );
        let sts = self.redis_statefulset().await?;
        let mut env = kubelet::resolve_env(
            c.env.as_deref().unwrap_or_default(),
            &self.pod_facts(&name, &spec.template),
            &self.sources().await?,
        )
        .context("the server container's environment")?;
        let port = free_port()?;
        // Image ENV (BIND=0.0.0.0, PORT=3000) comes first in a container; the harness moves
        // both to loopback and a free port, and gives HOSTNAME as the container runtime does.
        kubelet::set_env(&mut env, "PORT", &port.to_string());
        kubelet::set_env(&mut env, "BIND", "127.0.0.1");
        kubelet::set_env(&mut env, "HOSTNAME", &name);
        if let Some(url) = env
            .iter()
            .find(|(k, _)| k == "REDIS_URL")
            .map(|(_, v)| v.clone())
        {
            let names = self.redis_service_names(&sts).await?;
            let local =
                kubelet::rewrite_url_host(&url, &names, &format!("127.0.0.1:{}", self.redis_port))?;
            kubelet::set_env(&mut env, "REDIS_URL", &local);
        }
        let args = kubelet::container_args(c, &env);
        let mut cmd = Command::new(&self.programs.server);
        cmd.args(&args).env_clear().envs(env.iter().cloned());
        let process = self.spawn(cmd, &name)?;
        self.pods.push(ServerPod {
            name: name.clone(),
            port,
            template_hash: hash.to_string(),
            ready: false,
            process,
        });
        let i = self.pods.len() - 1;
        self.wait_pod_ready(i, c).await?;
        self.pods[i].ready = true;
        self.reload_nginx().await?;
        simulated(&format!(
            "pod {name} started: realtime-server with the Deployment's env (NAME={name}, REDIS_URL and REDIS_PASSWORD from the operator) on 127.0.0.1:{port}"
        ));
        Ok(())
    }

    async fn wait_pod_ready(&self, i: usize, c: &Container) -> Result<()> {
        let path = c
            .readiness_probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|h| h.path.clone())
            .unwrap_or_else(|| "/".into());
        let addr = SocketAddr::from(([127, 0, 0, 1], self.pods[i].port));
        let path = &path;
        self.pods[i]
            .process
            .wait_for(
                &format!("readiness (GET {path} answers 200)"),
                START_TIMEOUT,
                move || async move {
                    let r = http_get(addr, path, Duration::from_secs(2)).await;
                    r.is_ok_and(|r| r.status == 200)
                },
            )
            .await
    }

    async fn stop_pod(&mut self, dep: &Deployment, name: &str) -> Result<()> {
        let i = self
            .pods
            .iter()
            .position(|p| p.name == name)
            .context("no such pod")?;
        let pod_spec = dep.spec.as_ref().and_then(|s| s.template.spec.as_ref());
        let grace = pod_spec
            .and_then(|s| s.termination_grace_period_seconds)
            .unwrap_or(30)
            .max(0) as u64;
        let pre_stop = pod_spec
            .and_then(|s| s.containers.first())
            .and_then(|c| c.lifecycle.as_ref())
            .and_then(|l| l.pre_stop.as_ref())
            .and_then(|h| h.sleep.as_ref())
            .map(|s| s.seconds.max(0) as u64)
            .unwrap_or(0);
        // Endpoints drop the pod while its preStop hook runs; then SIGTERM, SIGKILL after the
        // rest of the grace period.
        self.pods[i].ready = false;
        self.reload_nginx().await?;
        simulated(&format!(
            "pod {name} terminating: out of nginx's upstream, preStop sleep {pre_stop}s, SIGTERM, grace {grace}s"
        ));
        tokio::time::sleep(Duration::from_secs(pre_stop)).await;
        let status = self.pods[i]
            .process
            .stop(
                libc::SIGTERM,
                Duration::from_secs(grace.saturating_sub(pre_stop).max(1)),
            )
            .await?;
        let p = self.pods.remove(i);
        if !status.success() {
            bail!(
                "pod {} exited with {status} after SIGTERM:\n{}",
                p.name,
                p.process.log_tail(30)
            );
        }
        Ok(())
    }

    async fn patch_deployment_status(&self, dep: &Deployment, hash: &str) -> Result<()> {
        let desired = dep.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let total = self.pods.len() as i32;
        let updated = self.pods.iter().filter(|p| p.template_hash == hash).count() as i32;
        let ready = self.pods.iter().filter(|p| p.ready).count() as i32;
        let available = if ready >= desired { "True" } else { "False" };
        let complete = updated == desired && total == desired && ready == desired;
        let status = json!({"status": {
            "observedGeneration": dep.metadata.generation,
            "replicas": total, "updatedReplicas": updated, "readyReplicas": ready,
            "availableReplicas": ready, "unavailableReplicas": (desired - ready).max(0),
            "conditions": [
                {"type": "Available", "status": available, "reason": "MinimumReplicasAvailable",
                 "message": "simulated by the realtime-e2e harness (no kubelet)"},
                {"type": "Progressing", "status": "True",
                 "reason": if complete { "NewReplicaSetAvailable" } else { "ReplicaSetUpdated" },
                 "message": "simulated by the realtime-e2e harness (no kubelet)"},
            ],
        }});
        self.patch_status::<Deployment>(&dep.name_any(), &status)
            .await
    }

    /// Merges `status` into the status of the `K` named `name`, as its controller would.
    async fn patch_status<K: Namespaced>(&self, name: &str, status: &Value) -> Result<()> {
        let api: Api<K> = Api::namespaced(self.client.clone(), self.ns());
        api.patch_status(name, &PatchParams::default(), &Patch::Merge(status))
            .await?;
        Ok(())
    }

    // ---- nginx (the Ingress) ----

    async fn check_ingress_backend(&self, backend: &str, dep: &Deployment) -> Result<()> {
        let svc: Api<Service> = Api::namespaced(self.client.clone(), self.ns());
        let svc = svc
            .get(backend)
            .await
            .with_context(|| format!("the Ingress's backend Service {backend}"))?;
        let sel = svc.spec.and_then(|s| s.selector).unwrap_or_default();
        let labels = template_labels(&dep.spec.as_ref().unwrap().template);
        ensure!(
            !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v)),
            "the Ingress's backend Service {backend} (selector {sel:?}) does not select the server pods ({labels:?})"
        );
        Ok(())
    }

    fn nginx_conf(&self) -> NginxConf {
        let ports: Vec<u16> = self
            .pods
            .iter()
            .filter(|p| p.ready)
            .map(|p| p.port)
            .collect();
        let spec = self
            .ingress
            .as_ref()
            .expect("the Ingress is read before nginx starts");
        NginxConf {
            generation: self.nginx_generation,
            ..spec.nginx_conf(self.nginx_port, ports)
        }
    }

    async fn start_nginx(&mut self) -> Result<()> {
        let conf = self.nginx_conf();
        let n = Nginx::start(&self.programs.nginx, self.dir.path(), &conf, START_TIMEOUT);
        self.nginx = Some(n.await?);
        Ok(())
    }

    /// Rewrites the upstream from the ready pods and reloads nginx (no-op before it starts).
    async fn reload_nginx(&mut self) -> Result<()> {
        // No endpoints: ingress-nginx answers 503; nginx cannot have an empty upstream, so it
        // keeps the last one until a pod is ready again.
        if self.nginx.is_none() || self.pods.iter().all(|p| !p.ready) {
            return Ok(());
        }
        self.nginx_generation += 1;
        let conf = self.nginx_conf();
        let nginx = self
            .nginx
            .as_ref()
            .expect("nginx is running (checked above)");
        nginx.reload(&conf).await
    }

    // ---- status ----

    /// Waits until the operator reports the RealtimeCluster Ready with every desired replica
    /// ready (from the statuses this harness wrote for its pods).
    async fn wait_rtc_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + OPERATOR_TIMEOUT;
        loop {
            self.check_operator()?;
            let rtc = self.kubectl.get_json(&["rtc", &self.name]).await?;
            let ready = rtc["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "Ready");
            // Ready, and computed from the pods as they are now (not from a surge or older spec).
            let settled = rtc["status"]["observedGeneration"] == rtc["metadata"]["generation"]
                && rtc["status"]["replicas"] == rtc["spec"]["replicas"]
                && rtc["status"]["readyReplicas"] == rtc["spec"]["replicas"];
            if settled && ready.is_some_and(|c| c["status"] == "True") {
                super::note(&format!(
                    "[path B] rtc/{} Ready: {} of {} replicas ready, endpoint {}",
                    self.name,
                    rtc["status"]["readyReplicas"],
                    rtc["spec"]["replicas"],
                    rtc["status"]["endpoint"]
                ));
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "rtc/{} not Ready within {OPERATOR_TIMEOUT:?}; status: {}",
                    self.name,
                    rtc["status"]
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits until the operator has written `spec.replicas = n` into the Deployment.
    async fn wait_deployment<F: Fn(&Deployment) -> bool>(
        &mut self,
        what: &str,
        f: F,
    ) -> Result<()> {
        let deadline = Instant::now() + OPERATOR_TIMEOUT;
        loop {
            self.check_operator()?;
            if let Some(d) = self.owned::<Deployment>().await?
                && f(&d)
            {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "the Deployment did not get {what} within {OPERATOR_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn wait_all_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let dep = self.deployment().await?;
        let c = dep
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .map(|s| s.containers[0].clone())
            .context("no container")?;
        for i in 0..self.pods.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            tokio::time::timeout(left, self.wait_pod_ready(i, &c))
                .await
                .with_context(|| {
                    format!("pod {} not ready again within 60 s", self.pods[i].name)
                })??;
        }
        Ok(())
    }
}

/// The labels of a pod template.
fn template_labels(t: &PodTemplateSpec) -> BTreeMap<String, String> {
    t.metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
}

/// Arguments with each volume mount path replaced by a folder under `root` (the volume).
fn map_mounts(args: &[String], c: &Container, root: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for a in args {
        let mut a = a.clone();
        for m in c.volume_mounts.iter().flatten() {
            if a == m.mount_path || a.starts_with(&format!("{}/", m.mount_path)) {
                let dir = root.join(&m.name);
                std::fs::create_dir_all(&dir)?;
                a = format!("{}{}", dir.display(), &a[m.mount_path.len()..]);
            }
        }
        out.push(a);
    }
    std::fs::create_dir_all(root)?;
    Ok(out)
}

impl Target for LocalTarget {
    fn describe(&self) -> String {
        format!(
            "local parts: rtc/{} in namespace {} on a local kube-apiserver, reconciled by realtime-operator; {} realtime-server process(es), redis-server and nginx on loopback",
            self.name,
            self.ns(),
            self.pods.len()
        )
    }

    fn endpoint_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.nginx_port)
    }

    fn client_options(&self) -> ConnectOptions {
        let k = self.clients.fetch_add(1, Ordering::Relaxed);
        match self.ingress.as_ref().map(|i| &i.affinity) {
            // Clients differ by source address, as they would behind the ingress.
            Some(Affinity::ClientAddress | Affinity::IpHash) => {
                ConnectOptions::default().local_address(format!("127.0.{}.1", k % 254 + 1))
            }
            // engine.io-client in Node keeps the affinity cookie only with withCredentials.
            _ => ConnectOptions::default().with_credentials(true),
        }
    }

    fn kubectl(&self) -> &Kubectl {
        &self.kubectl
    }

    fn cluster_name(&self) -> &str {
        &self.name
    }

    async fn nodes(&self) -> Result<Vec<String>> {
        let mut v: Vec<String> = self
            .pods
            .iter()
            .filter(|p| p.ready)
            .map(|p| p.name.clone())
            .collect();
        v.sort();
        Ok(v)
    }

    async fn scale(&mut self, replicas: usize) -> Result<()> {
        let n = replicas.to_string();
        self.kubectl
            .ok(&[
                "scale",
                &format!("rtc/{}", self.name),
                &format!("--replicas={n}"),
            ])
            .await?;
        self.wait_deployment(&format!("spec.replicas={n}"), |d| {
            d.spec.as_ref().and_then(|s| s.replicas) == Some(replicas as i32)
        })
        .await?;
        simulated(&format!(
            "scale: the operator set Deployment.spec.replicas={n}; the harness starts/stops realtime-server processes to match (as the Deployment controller and kubelet would)"
        ));
        self.sync().await?;
        self.wait_rtc_ready().await
    }

    async fn rolling_restart(&mut self) -> Result<()> {
        let dep = self.deployment().await?;
        let before = kubelet::template_hash(&dep.spec.as_ref().unwrap().template);
        self.kubectl
            .ok(&[
                "rollout",
                "restart",
                &format!("deployment/{}", dep.name_any()),
            ])
            .await?;
        self.wait_deployment("a new pod template", |d| {
            d.spec
                .as_ref()
                .is_some_and(|s| kubelet::template_hash(&s.template) != before)
        })
        .await?;
        simulated(
            "rolling restart: `kubectl rollout restart` changed the pod template; the harness replaces the processes one at a time, surge-first (start new, wait ready, then preStop + SIGTERM the old), per the Deployment's RollingUpdate strategy",
        );
        self.sync().await?;
        self.wait_rtc_ready().await
    }

    async fn delete_redis(&mut self) -> Result<()> {
        let sts = self.redis_statefulset().await?;
        simulated(
            "Redis pod deleted: redis-server gets SIGTERM and its emptyDir is dropped; server processes stay in nginx's upstream (readiness probes are not simulated)",
        );
        self.patch_statefulset_status(&sts, 0).await?;
        if let Some(p) = self.redis.take() {
            p.stop(libc::SIGTERM, Duration::from_secs(10)).await?;
        }
        Ok(())
    }

    async fn wait_redis_back(&mut self) -> Result<()> {
        let sts = self.redis_statefulset().await?;
        simulated(
            "the StatefulSet's pod comes back: redis-server restarted on the same port (a stable Service) with the same Secret",
        );
        self.start_redis(&sts).await?;
        self.wait_all_ready().await
    }
}

impl Drop for LocalTarget {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "==== path B logs ({}) ====\n{}",
                self.dir.path().display(),
                self.logs(60)
            );
            eprintln!("==== control plane ====\n{}", self.cp.log_tails());
        }
        // nginx first so that no client sees a half-stopped cluster; the operator last.
        self.nginx.take();
        self.pods.clear();
        self.redis.take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::VolumeMount;

    #[test]
    fn mounts_map_to_local_folders() {
        let root = tempfile::tempdir().unwrap();
        let c = Container {
            volume_mounts: Some(vec![VolumeMount {
                name: "data".into(),
                mount_path: "/data".into(),
                ..Default::default()
            }]),
            ..Default::default()
        };
        let args: Vec<String> = ["--dir", "/data", "--x", "/data/sub", "/database"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let got = map_mounts(&args, &c, root.path()).unwrap();
        let d = root.path().join("data");
        assert_eq!(
            got,
            vec![
                "--dir".to_string(),
                d.display().to_string(),
                "--x".into(),
                format!("{}/sub", d.display()),
                "/database".into()
            ]
        );
        assert!(d.is_dir());
    }
}
