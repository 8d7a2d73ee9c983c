//! The server pods' load, read by the operator itself: each ready realtime-server pod's
//! connection count (its `/metrics` on the admin port), every [`INTERVAL`].
//!
//! What it is used for:
//! - **Drain-aware scale-down.** Each pod carries `controller.kubernetes.io/pod-deletion-cost`
//!   = its connection count, so when the Deployment shrinks the ReplicaSet controller removes the
//!   pods with the fewest clients first. Writes are rate-limited: a pod's cost is rewritten only
//!   when it moved by at least [`COST_STEP`] (10 %, at least 1) and not within [`COST_MIN_AGE`]
//!   of the last write, so a busy cluster does not turn every connection into a pod update.
//! - **Status:** `status.connections` (total) and `status.podConnections` per pod.
//! - **Autoscaling** (`spec.autoscaling`): `status.recommendedReplicas` = ceil(connections /
//!   target) within the bounds, the highest of the stabilization window; the reconcile sizes
//!   the Deployment from it (`validate::replicas`). A status change is a watch event, so the
//!   Deployment follows within one reconcile.
//!
//! Why the operator reads the pods itself rather than an HPA on a custom metric: no metrics
//! pipeline (Prometheus + adapter) is needed for what it does here, and the deletion cost has
//! to be written per pod anyway. Only the operator's leader runs it. A pod that does not answer
//! within [`SCRAPE_TIMEOUT`] keeps its last cost and counts as unknown.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::{Api, Client, ResourceExt};

use crate::api::{Autoscaling, PodConnections, RealtimeCluster};
use crate::build::labels;
use crate::validate::ADMIN_PORT;

/// How often the pods are read.
pub const INTERVAL: Duration = Duration::from_secs(10);
/// Bound of one pod's `/metrics` request.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);
/// The annotation the ReplicaSet controller orders scale-down victims by (lowest first).
pub const DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";
/// Shortest time between two cost writes of one pod.
pub const COST_MIN_AGE: Duration = Duration::from_secs(30);
/// Smallest relative change of the cost worth a write.
pub const COST_STEP: f64 = 0.10;
/// Field manager of the status fields this module owns.
pub const FIELD_MANAGER: &str = "realtime-operator-load";

/// One pod as read this round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodLoad {
    pub name: String,
    /// `None`: the pod did not answer (or is not ready).
    pub connections: Option<u64>,
    /// The cost the pod carries now.
    pub cost: Option<i64>,
}

/// `realtime_connected_sockets` from a Prometheus text exposition.
pub fn connected_sockets(metrics: &str) -> Option<u64> {
    metrics.lines().find_map(|l| {
        let rest = l.strip_prefix("realtime_connected_sockets")?;
        // Not a longer metric name sharing the prefix.
        let value = rest.strip_prefix(' ')?;
        value.trim().parse::<f64>().ok().map(|v| v as u64)
    })
}

/// Whether a pod's cost should be rewritten to `connections` now.
pub fn cost_due(
    current: Option<i64>,
    connections: u64,
    last_write: Option<Instant>,
    now: Instant,
) -> bool {
    let target = connections as i64;
    let Some(current) = current else {
        return true;
    };
    if current == target {
        return false;
    }
    if last_write.is_some_and(|t| now.duration_since(t) < COST_MIN_AGE) {
        return false;
    }
    let step = ((current.unsigned_abs() as f64) * COST_STEP).max(1.0);
    (target - current).unsigned_abs() as f64 >= step
}

/// The replicas `connections` call for: ceil(connections / target), within the bounds.
pub fn recommend(connections: u64, a: &Autoscaling) -> i32 {
    let target = a.target_connections_per_pod.max(1) as u64;
    let want = connections.div_ceil(target).min(i32::MAX as u64) as i32;
    want.clamp(a.min_replicas, a.max_replicas.max(a.min_replicas))
}

/// The recommendation to act on: the highest of the stabilization window (so a scale-up is
/// immediate and a scale-down waits until every recommendation of the window was lower).
/// `history` keeps the window's recommendations; older ones are dropped.
pub fn stabilized(
    history: &mut VecDeque<(Instant, i32)>,
    now: Instant,
    raw: i32,
    window: Duration,
) -> i32 {
    history.push_back((now, raw));
    while history
        .front()
        .is_some_and(|(t, _)| now.duration_since(*t) > window)
    {
        history.pop_front();
    }
    history.iter().map(|(_, r)| *r).max().unwrap_or(raw)
}

/// The status fields of this module from one round: (total, per pod sorted by name). Pods that
/// did not answer are left out of both.
pub fn summary(pods: &[PodLoad]) -> (u64, Vec<PodConnections>) {
    let mut per: Vec<PodConnections> = pods
        .iter()
        .filter_map(|p| {
            p.connections.map(|c| PodConnections {
                name: p.name.clone(),
                connections: c as i64,
            })
        })
        .collect();
    per.sort_by(|a, b| a.name.cmp(&b.name));
    (per.iter().map(|p| p.connections as u64).sum(), per)
}

/// Every [`INTERVAL`], every RealtimeCluster of `clusters` that runs realtime-server and is not
/// paused; runs until its task is aborted (with the controller).
pub async fn run(client: Client, clusters: Store<RealtimeCluster>) {
    let http = match reqwest::Client::builder()
        .timeout(SCRAPE_TIMEOUT)
        .connect_timeout(SCRAPE_TIMEOUT)
        .build()
    {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "no HTTP client: pod load is not read");
            return std::future::pending().await;
        }
    };
    let mut last_writes: HashMap<(String, String), Instant> = HashMap::new();
    let mut histories: HashMap<(String, String), VecDeque<(Instant, i32)>> = HashMap::new();
    let mut ticker = tokio::time::interval(INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        for rc in clusters.state() {
            if rc.spec.paused || rc.spec.app.is_some() || rc.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let key = (rc.namespace().unwrap_or_default(), rc.name_any());
            let history = histories.entry(key).or_default();
            if let Err(e) = round(&client, &http, &rc, &mut last_writes, history).await {
                tracing::debug!(cluster = %rc.name_any(), error = %e, "reading pod load");
            }
        }
    }
}

async fn round(
    client: &Client,
    http: &reqwest::Client,
    rc: &RealtimeCluster,
    last_writes: &mut HashMap<(String, String), Instant>,
    history: &mut VecDeque<(Instant, i32)>,
) -> Result<(), kube::Error> {
    let ns = rc.namespace().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let selector = labels::server_selector_string(&rc.name_any());
    let list = pods.list(&ListParams::default().labels(&selector)).await?;
    let mut loads = Vec::new();
    for pod in list.items {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let name = pod.name_any();
        let cost = pod
            .annotations()
            .get(DELETION_COST)
            .and_then(|v| v.parse::<i64>().ok());
        let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone());
        let ready = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let connections = match ip {
            Some(ip) if ready => scrape(http, &ip).await,
            _ => None,
        };
        loads.push(PodLoad {
            name,
            connections,
            cost,
        });
    }
    let now = Instant::now();
    for p in &loads {
        let Some(c) = p.connections else { continue };
        let key = (ns.clone(), p.name.clone());
        if !cost_due(p.cost, c, last_writes.get(&key).copied(), now) {
            continue;
        }
        let patch =
            serde_json::json!({"metadata": {"annotations": {DELETION_COST: c.to_string()}}});
        match pods
            .patch(&p.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                last_writes.insert(key, now);
            }
            Err(kube::Error::Api(s)) if s.is_not_found() => {}
            Err(e) => return Err(e),
        }
    }
    last_writes.retain(|(n, pod), _| n != &ns || loads.iter().any(|p| &p.name == pod));

    let (total, per) = summary(&loads);
    let recommended = rc.spec.autoscaling.as_ref().map(|a| {
        let window = Duration::from_secs(a.scale_down_stabilization_seconds.max(0) as u64);
        stabilized(history, now, recommend(total, a), window)
    });
    let status = rc.status.as_ref();
    if status.and_then(|s| s.connections) == Some(total as i64)
        && status.map(|s| &s.pod_connections) == Some(&per)
        && status.and_then(|s| s.recommended_replicas) == recommended
    {
        return Ok(());
    }
    if let Some(r) = recommended
        && status.and_then(|s| s.recommended_replicas) != Some(r)
    {
        tracing::info!(cluster = %rc.name_any(), connections = total, replicas = r, "autoscaling recommends");
    }
    let api: Api<RealtimeCluster> = Api::namespaced(client.clone(), &ns);
    let patch = serde_json::json!({
        "apiVersion": "realtime.dev/v1alpha1",
        "kind": "RealtimeCluster",
        "status": {"connections": total, "podConnections": per, "recommendedReplicas": recommended},
    });
    api.patch_status(
        &rc.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// The pod's connection count from its admin port; `None` when it does not answer in time.
async fn scrape(http: &reqwest::Client, ip: &str) -> Option<u64> {
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    };
    let url = format!("http://{host}:{ADMIN_PORT}/metrics");
    let text = http.get(url).send().await.ok()?.text().await.ok()?;
    connected_sockets(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_connection_gauge_only() {
        let text = "# HELP realtime_connected_sockets Sockets connected to this node\n\
                    # TYPE realtime_connected_sockets gauge\n\
                    realtime_connected_sockets_peak 99\n\
                    realtime_connected_sockets 42\n";
        assert_eq!(connected_sockets(text), Some(42));
        assert_eq!(
            connected_sockets("realtime_connected_sockets_peak 9\n"),
            None
        );
        assert_eq!(connected_sockets(""), None);
    }

    #[test]
    fn costs_are_written_on_real_change_and_not_too_often() {
        let now = Instant::now();
        assert!(
            cost_due(None, 0, None, now),
            "a pod without a cost gets one"
        );
        assert!(!cost_due(Some(5), 5, None, now));
        assert!(
            cost_due(Some(5), 6, None, now),
            "small counts: a change of 1 counts"
        );
        assert!(!cost_due(Some(1000), 1050, None, now), "under 10 %");
        assert!(cost_due(Some(1000), 1100, None, now));
        assert!(
            !cost_due(Some(1000), 2000, Some(now), now + Duration::from_secs(5)),
            "rate-limited"
        );
        assert!(cost_due(
            Some(1000),
            2000,
            Some(now),
            now + COST_MIN_AGE + Duration::from_secs(1)
        ));
    }

    #[test]
    fn autoscaling_rounds_up_within_bounds_and_scales_down_only_after_the_window() {
        let a = Autoscaling {
            min_replicas: 1,
            max_replicas: 4,
            target_connections_per_pod: 2,
            scale_down_stabilization_seconds: 10,
        };
        assert_eq!(recommend(0, &a), 1);
        assert_eq!(recommend(5, &a), 3);
        assert_eq!(recommend(1000, &a), 4);
        let w = Duration::from_secs(10);
        let t = Instant::now();
        let mut h = VecDeque::new();
        assert_eq!(stabilized(&mut h, t, 3, w), 3);
        assert_eq!(
            stabilized(&mut h, t + Duration::from_secs(1), 4, w),
            4,
            "up at once"
        );
        assert_eq!(
            stabilized(&mut h, t + Duration::from_secs(5), 1, w),
            4,
            "down waits"
        );
        assert_eq!(
            stabilized(&mut h, t + Duration::from_secs(12), 1, w),
            1,
            "window over"
        );
    }

    #[test]
    fn summary_skips_silent_pods() {
        let pods = [
            PodLoad {
                name: "b".into(),
                connections: Some(3),
                cost: None,
            },
            PodLoad {
                name: "a".into(),
                connections: Some(2),
                cost: None,
            },
            PodLoad {
                name: "c".into(),
                connections: None,
                cost: Some(7),
            },
        ];
        let (total, per) = summary(&pods);
        assert_eq!(total, 5);
        assert_eq!(
            per.iter()
                .map(|p| (p.name.as_str(), p.connections))
                .collect::<Vec<_>>(),
            [("a", 2), ("b", 3)]
        );
    }
}
