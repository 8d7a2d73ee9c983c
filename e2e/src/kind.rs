//! The scenarios against a real cluster, through its ingress: kind (Path A, made by
//! `e2e/kind/run.sh`) or the real node of this machine ([`crate::node`]). Everything goes through kubectl, as a user would: `kubectl scale rtc`,
//! `kubectl rollout restart`, `kubectl delete pod`, `kubectl apply`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde_json::Value;

use crate::scenarios::Target;
use crate::scenarios::kubectl::Kubectl;
use crate::sio::ConnectOptions;

/// Bound for pods to come and go after a scale, a restart or a deletion.
const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(300);

/// Where the cluster is and what to test.
#[derive(Debug, Clone)]
pub struct KindConfig {
    /// kubectl to run (from PATH by default).
    pub kubectl: PathBuf,
    /// kubeconfig context (`kind-<cluster>`); `None`: the current context.
    pub context: Option<String>,
    pub namespace: String,
    /// `metadata.name` of the RealtimeCluster.
    pub name: String,
    /// The ingress URL clients use (`http://localhost:8080`).
    pub url: String,
    /// Cookie affinity at the ingress (the RealtimeCluster's default): clients keep a cookie jar.
    pub cookie_affinity: bool,
    /// `KUBECONFIG` for kubectl; `None`: kubectl's own default.
    pub kubeconfig: Option<PathBuf>,
}

/// A RealtimeCluster running in a real cluster, reached through its ingress.
pub struct KindTarget {
    cfg: KindConfig,
    kubectl: Kubectl,
    clients: AtomicUsize,
    /// uid of the Redis pod deleted by [`Target::delete_redis`].
    redis_gone: Option<String>,
}

/// A pod as the scenarios need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodState {
    pub name: String,
    pub uid: String,
    pub ready: bool,
    pub terminating: bool,
}

/// The pods of a `kubectl get pods -o json` list (pure).
pub fn pod_states(list: &Value) -> Vec<PodState> {
    let mut v: Vec<PodState> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| PodState {
            name: p["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            uid: p["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            terminating: !p["metadata"]["deletionTimestamp"].is_null(),
            ready: p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True"),
        })
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

/// `k=v,k=v` from a `matchLabels` object (pure).
pub fn selector_string(match_labels: &Value) -> Option<String> {
    let m = match_labels.as_object()?;
    (!m.is_empty()).then(|| {
        m.iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(",")
    })
}

/// The object in a `kubectl get KIND -o json` list that `owner_uid` controls (pure).
pub fn owned_by<'a>(list: &'a Value, owner_uid: &str) -> Option<&'a Value> {
    list["items"].as_array()?.iter().find(|o| {
        o["metadata"]["ownerReferences"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| r["uid"] == owner_uid && r["controller"] == true)
    })
}

impl KindTarget {
    pub fn new(cfg: KindConfig) -> KindTarget {
        let global = cfg
            .context
            .iter()
            .flat_map(|c| ["--context".to_string(), c.clone()])
            .collect();
        let env = cfg
            .kubeconfig
            .iter()
            .map(|k| ("KUBECONFIG".into(), k.clone().into_os_string()))
            .collect();
        let kubectl = Kubectl::new(cfg.kubectl.clone(), env, global, &cfg.namespace);
        KindTarget {
            cfg,
            kubectl,
            clients: AtomicUsize::new(0),
            redis_gone: None,
        }
    }

    /// Checks that the cluster answers and the RealtimeCluster is Ready.
    pub async fn check(&self) -> Result<()> {
        let rtc = self
            .kubectl
            .get_json(&["rtc", &self.cfg.name])
            .await
            .context("reading the RealtimeCluster (is the cluster up and the example applied?)")?;
        let ready = rtc["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        ensure!(
            ready,
            "rtc/{} is not Ready: {}",
            self.cfg.name,
            rtc["status"]
        );
        Ok(())
    }

    async fn uid(&self, kind: &str, name: &str) -> Result<String> {
        let o = self.kubectl.get_json(&[kind, name]).await?;
        o["metadata"]["uid"]
            .as_str()
            .map(String::from)
            .ok_or_else(|| anyhow!("{kind}/{name} has no uid"))
    }

    /// The `kind` object (deployment, statefulset) the RealtimeCluster controls.
    async fn child(&self, kind: &str) -> Result<Value> {
        let uid = self.uid("rtc", &self.cfg.name).await?;
        let list = self.kubectl.get_json(&[kind]).await?;
        owned_by(&list, &uid)
            .cloned()
            .ok_or_else(|| anyhow!("rtc/{} owns no {kind}", self.cfg.name))
    }

    async fn pods_of(&self, kind: &str) -> Result<Vec<PodState>> {
        let obj = self.child(kind).await?;
        let sel = selector_string(&obj["spec"]["selector"]["matchLabels"])
            .ok_or_else(|| anyhow!("{kind} without matchLabels"))?;
        let list = self.kubectl.get_json(&["pods", "-l", &sel]).await?;
        Ok(pod_states(&list))
    }

    /// Polls until `f` accepts the server pods (or `ROLLOUT_TIMEOUT`).
    async fn wait_pods<F: Fn(&[PodState]) -> bool>(
        &self,
        kind: &str,
        what: &str,
        f: F,
    ) -> Result<Vec<PodState>> {
        let deadline = Instant::now() + ROLLOUT_TIMEOUT;
        loop {
            let pods = self.pods_of(kind).await?;
            if f(&pods) {
                return Ok(pods);
            }
            if Instant::now() > deadline {
                bail!("{what}: not reached within {ROLLOUT_TIMEOUT:?}; pods: {pods:?}");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Exactly `n` server pods, all ready, none terminating.
    async fn wait_exactly(&self, n: usize) -> Result<Vec<PodState>> {
        self.wait_pods(
            "deployment",
            &format!("{n} ready server pods and no others"),
            |p| p.len() == n && p.iter().all(|x| x.ready && !x.terminating),
        )
        .await
    }
}

impl Target for KindTarget {
    fn describe(&self) -> String {
        format!(
            "a real cluster (kubectl context {}): rtc/{} in namespace {} through the ingress at {}",
            self.cfg.context.as_deref().unwrap_or("(current)"),
            self.cfg.name,
            self.cfg.namespace,
            self.cfg.url
        )
    }

    fn endpoint_url(&self) -> String {
        self.cfg.url.clone()
    }

    fn client_options(&self) -> ConnectOptions {
        self.clients.fetch_add(1, Ordering::Relaxed);
        // All clients come from one address here: ingress-nginx's cookie spreads them.
        ConnectOptions::default().with_credentials(self.cfg.cookie_affinity)
    }

    fn kubectl(&self) -> &Kubectl {
        &self.kubectl
    }

    fn cluster_name(&self) -> &str {
        &self.cfg.name
    }

    async fn nodes(&self) -> Result<Vec<String>> {
        Ok(self
            .pods_of("deployment")
            .await?
            .into_iter()
            .filter(|p| p.ready && !p.terminating)
            .map(|p| p.name)
            .collect())
    }

    async fn scale(&mut self, replicas: usize) -> Result<()> {
        self.kubectl
            .ok(&[
                "scale",
                &format!("rtc/{}", self.cfg.name),
                &format!("--replicas={replicas}"),
            ])
            .await?;
        self.wait_exactly(replicas).await?;
        Ok(())
    }

    async fn rolling_restart(&mut self) -> Result<()> {
        let dep = self.child("deployment").await?;
        let name = dep["metadata"]["name"]
            .as_str()
            .context("deployment without a name")?
            .to_string();
        let replicas = dep["spec"]["replicas"].as_u64().unwrap_or(1) as usize;
        let before: Vec<String> = self
            .pods_of("deployment")
            .await?
            .into_iter()
            .map(|p| p.name)
            .collect();
        self.kubectl
            .ok(&["rollout", "restart", &format!("deployment/{name}")])
            .await?;
        self.kubectl
            .ok(&[
                "rollout",
                "status",
                &format!("deployment/{name}"),
                "--timeout=300s",
            ])
            .await?;
        self.wait_pods("deployment", "only new pods, all ready", |p| {
            p.len() == replicas
                && p.iter()
                    .all(|x| x.ready && !x.terminating && !before.contains(&x.name))
        })
        .await?;
        Ok(())
    }

    async fn delete_redis(&mut self) -> Result<()> {
        let pods = self.pods_of("statefulset").await?;
        let pod = pods
            .first()
            .ok_or_else(|| anyhow!("no Redis pod to delete"))?;
        self.kubectl
            .ok(&["delete", "pod", &pod.name, "--wait=false"])
            .await?;
        self.redis_gone = Some(pod.uid.clone());
        Ok(())
    }

    async fn wait_redis_back(&mut self) -> Result<()> {
        let old = self.redis_gone.take().unwrap_or_default();
        self.wait_pods("statefulset", "a new, ready Redis pod", |p| {
            p.len() == 1 && p[0].uid != old && p[0].ready && !p[0].terminating
        })
        .await?;
        let n = self.replicas().await?;
        self.wait_exactly(n).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pods_are_read_from_kubectl_json() {
        let list = json!({"items": [
            {"metadata": {"name": "chat-b", "uid": "2", "deletionTimestamp": "2025-01-01T00:00:00Z"},
             "status": {"conditions": [{"type": "Ready", "status": "True"}]}},
            {"metadata": {"name": "chat-a", "uid": "1"},
             "status": {"conditions": [{"type": "Ready", "status": "False"}, {"type": "PodScheduled", "status": "True"}]}},
            {"metadata": {"name": "chat-c", "uid": "3"}, "status": {}},
        ]});
        let p = pod_states(&list);
        assert_eq!(
            p.iter().map(|x| x.name.as_str()).collect::<Vec<_>>(),
            ["chat-a", "chat-b", "chat-c"]
        );
        assert_eq!((p[0].ready, p[0].terminating), (false, false));
        assert_eq!((p[1].ready, p[1].terminating), (true, true));
        assert!(!p[2].ready);
        assert!(pod_states(&json!({})).is_empty());
    }

    #[test]
    fn selectors_and_owners() {
        assert_eq!(
            selector_string(&json!({"app.kubernetes.io/instance": "chat", "app.kubernetes.io/name": "realtime-server"})).as_deref(),
            Some("app.kubernetes.io/instance=chat,app.kubernetes.io/name=realtime-server")
        );
        assert_eq!(selector_string(&json!({})), None);
        assert_eq!(selector_string(&Value::Null), None);
        let list = json!({"items": [
            {"metadata": {"name": "other", "ownerReferences": [{"uid": "u1", "controller": false}]}},
            {"metadata": {"name": "mine", "ownerReferences": [{"uid": "u1", "controller": true}]}},
        ]});
        assert_eq!(owned_by(&list, "u1").unwrap()["metadata"]["name"], "mine");
        assert!(owned_by(&list, "u2").is_none());
    }
}
