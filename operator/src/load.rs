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
//! - **Self-heal.** A pod cut off from Redis (deaf: Redis answers but its subscriptions bring
//!   nothing; or disconnected) while at least one peer hears Redis fine has a problem of its own
//!   (a broken connection path, a stuck subscriber), not Redis: after [`HEAL_AFTER`] of it the
//!   operator deletes the pod (gracefully: its clients move to the others), at most one pod per
//!   cluster every [`HEAL_MIN_INTERVAL`], with a `RestartedCutOffPod` Event. When every pod is
//!   cut off it is Redis that is down, and restarting servers would only drop their clients:
//!   nothing is deleted. A pod that stops answering altogether is the kubelet's to restart (the
//!   liveness probe on `/healthz`).
//! - **Rebalance** (`spec.rebalance`, off by default). After a scale-up the new pods hold
//!   nothing. When every pod is Ready and answered, and one holds more than the average plus the
//!   tolerance while another holds less than the average minus it, the fullest pod is asked to
//!   shed (`POST /api/v1/shed` on its admin port) at most `maxShedPercent` of its connections and
//!   never more than brings it to the average, spread over half the interval; one step per
//!   cluster every `intervalSeconds`, a `Rebalanced` Event each. The pod bounds the request
//!   itself too (realtime-server's `shed` module).
//! - **Conditions** `Scaling` (with autoscaling) and `Healing`, written under this module's
//!   field manager; the controller neither compares nor writes them ([`strip_owned`]).
//!
//! Why the operator reads the pods itself rather than an HPA on a custom metric: no metrics
//! pipeline (Prometheus + adapter) is needed for what it does here, and the deletion cost has
//! to be written per pod anyway. Only the operator's leader runs it. A pod that does not answer
//! within [`SCRAPE_TIMEOUT`] keeps its last cost and counts as unknown. Unready pods are read
//! too: a deaf pod leaves rotation (its `/readyz` fails) but still holds clients.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::Store;
use kube::{Api, Client, Resource, ResourceExt};

use crate::api::{Autoscaling, PodConnections, RealtimeCluster, RealtimeClusterStatus, Rebalance};
use crate::build::labels;
use crate::status::{Cond, merge_conditions};
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
/// How long a pod must be cut off from Redis, while a peer is not, before it is restarted:
/// longer than a reconnection and a resubscription (the server's own deafness grace is 10 s).
pub const HEAL_AFTER: Duration = Duration::from_secs(30);
/// Shortest time between two restarts in one cluster: a restart that did not help is not
/// repeated on the next pod at once.
pub const HEAL_MIN_INTERVAL: Duration = Duration::from_secs(120);
/// Condition: the Deployment is being sized to a new recommendation (autoscaling only).
pub const SCALING: &str = "Scaling";
/// Condition: a pod is cut off from Redis while its peers are not.
pub const HEALING: &str = "Healing";

/// Clears what this module owns from a status, so the controller compares and writes only its
/// own fields.
pub fn strip_owned(status: &mut RealtimeClusterStatus) {
    status.connections = None;
    status.pod_connections.clear();
    status.recommended_replicas = None;
    status
        .conditions
        .retain(|c| c.type_ != SCALING && c.type_ != HEALING);
}

/// A pod's link to Redis as its metrics tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    /// `realtime_redis_connected`.
    pub connected: bool,
    /// `realtime_redis_deaf`: Redis answers, the subscriptions bring nothing.
    pub deaf: bool,
}

impl Link {
    pub fn cut_off(self) -> bool {
        !self.connected || self.deaf
    }
    fn describe(self) -> &'static str {
        if self.deaf {
            "deaf: Redis answers, its subscriptions bring nothing"
        } else {
            "not connected to Redis"
        }
    }
}

/// One pod as read this round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodLoad {
    pub name: String,
    /// `None`: the pod did not answer (or is not ready).
    pub connections: Option<u64>,
    /// The cost the pod carries now.
    pub cost: Option<i64>,
    /// `None`: the pod did not answer.
    pub link: Option<Link>,
    /// The pod's IP (where its admin port is).
    pub ip: Option<String>,
    /// The pod's Ready condition.
    pub ready: bool,
}

/// `realtime_connected_sockets` from a Prometheus text exposition.
pub fn connected_sockets(metrics: &str) -> Option<u64> {
    // (the space after the name: not a longer metric name sharing the prefix)
    gauge(metrics, "realtime_connected_sockets").map(|v| v as u64)
}

/// A gauge's value from a Prometheus text exposition (an unlabelled sample).
fn gauge(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let value = l.strip_prefix(name)?.strip_prefix(' ')?;
        value.trim().parse::<f64>().ok()
    })
}

/// The Redis link from a pod's metrics.
pub fn link(metrics: &str) -> Option<Link> {
    Some(Link {
        connected: gauge(metrics, "realtime_redis_connected")? == 1.0,
        deaf: gauge(metrics, "realtime_redis_deaf")? == 1.0,
    })
}

/// Whether a pod's cost should be rewritten to `connections` now. `scaling_down`: this round
/// is about to lower the replicas (autoscaling), so the costs are what the ReplicaSet
/// controller is about to read: the rate limit does not hold them back.
pub fn cost_due(
    current: Option<i64>,
    connections: u64,
    last_write: Option<Instant>,
    now: Instant,
    scaling_down: bool,
) -> bool {
    let target = connections as i64;
    let Some(current) = current else {
        return true;
    };
    if current == target {
        return false;
    }
    if !scaling_down && last_write.is_some_and(|t| now.duration_since(t) < COST_MIN_AGE) {
        return false;
    }
    let step = ((current.unsigned_abs() as f64) * COST_STEP).max(1.0);
    (target - current).unsigned_abs() as f64 >= step
}

/// The recommendation to publish this round. A scale-down waits one reading after a round that
/// wrote deletion costs: the ReplicaSet controller picks its victims from its own cache of the
/// pods, and a cost written an instant before the resize may not be in it yet; the busy pod
/// would then rank like an empty one (ties go by readiness age in coarse buckets, then at
/// random) and lose its clients. Seen on real pods in 2 of about 6 runs before this wait. The
/// caller holds at most one reading in a row.
pub fn hold_for_costs(
    recommended: Option<i32>,
    previous: Option<i32>,
    pods: usize,
    costs_written: bool,
) -> Option<i32> {
    let r = recommended?;
    if !costs_written || r as usize >= pods {
        return Some(r);
    }
    let current = i32::try_from(pods).unwrap_or(i32::MAX);
    Some(previous.map_or(current, |p| p.max(r)).min(current.max(r)))
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

/// One rebalance step (pure): the pod to shed from and how many connections, or `None` when the
/// pods are balanced enough, when one has not answered or is not Ready, or with fewer than 2.
pub fn rebalance_step(pods: &[PodLoad], r: &Rebalance) -> Option<(String, u32)> {
    if pods.len() < 2
        || !pods
            .iter()
            .all(|p| p.ready && p.connections.is_some() && !p.link.is_some_and(Link::cut_off))
    {
        return None;
    }
    let counts: Vec<u64> = pods.iter().filter_map(|p| p.connections).collect();
    let average = counts.iter().sum::<u64>() as f64 / counts.len() as f64;
    let tolerance = f64::from(r.tolerance_percent) / 100.0;
    let low = counts
        .iter()
        .any(|&c| (c as f64) < average * (1.0 - tolerance));
    let (fullest, c) = pods
        .iter()
        .filter_map(|p| Some((p, p.connections?)))
        .max_by_key(|(p, c)| (*c, std::cmp::Reverse(p.name.clone())))?;
    if !low || (c as f64) <= average * (1.0 + tolerance) {
        return None;
    }
    let above = (c as f64 - average).floor() as u64;
    let share = (c as f64 * f64::from(r.max_shed_percent) / 100.0).ceil() as u64;
    let n = above.min(share);
    (n > 0).then(|| (fullest.name.clone(), n.min(u64::from(u32::MAX)) as u32))
}

/// What the healer decided this round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No pod is cut off.
    Healthy,
    /// Every pod that answered is cut off: Redis itself is unreachable; nothing to restart.
    Outage { pods: usize },
    /// `pod` is cut off, not yet for [`HEAL_AFTER`].
    Watching {
        pod: String,
        link: Link,
        since: Duration,
    },
    /// `pod` is due, but the cluster's last restart was too recent.
    RateLimited {
        pod: String,
        link: Link,
        since: Duration,
    },
    /// Restart `pod` now.
    Restart {
        pod: String,
        link: Link,
        since: Duration,
        healthy_peers: usize,
    },
}

/// The self-heal state of one cluster across rounds.
#[derive(Default, Debug)]
pub struct Healer {
    /// Since when each pod has been seen cut off (continuously).
    since: HashMap<String, Instant>,
    last_restart: Option<Instant>,
}

impl Healer {
    /// One round's decision from the pods' links (pure apart from its own memory). A pod that
    /// did not answer keeps its state: a cut-off pod is not forgiven by one lost reading.
    pub fn judge(&mut self, pods: &[PodLoad], now: Instant) -> Verdict {
        self.since
            .retain(|name, _| pods.iter().any(|p| &p.name == name));
        for p in pods {
            match p.link {
                Some(l) if l.cut_off() => {
                    self.since.entry(p.name.clone()).or_insert(now);
                }
                Some(_) => {
                    self.since.remove(&p.name);
                }
                None => {}
            }
        }
        let linked: Vec<(&PodLoad, Link)> =
            pods.iter().filter_map(|p| Some((p, p.link?))).collect();
        let healthy_peers = linked.iter().filter(|(_, l)| !l.cut_off()).count();
        // The longest cut-off pod that answered this round.
        let Some((pod, link, since)) = linked
            .iter()
            .filter(|(_, l)| l.cut_off())
            .filter_map(|(p, l)| Some((p, *l, now.duration_since(*self.since.get(&p.name)?))))
            .max_by_key(|(_, _, since)| *since)
        else {
            return Verdict::Healthy;
        };
        let pod = pod.name.clone();
        if healthy_peers == 0 {
            return Verdict::Outage { pods: linked.len() };
        }
        if since < HEAL_AFTER {
            return Verdict::Watching { pod, link, since };
        }
        if self
            .last_restart
            .is_some_and(|t| now.duration_since(t) < HEAL_MIN_INTERVAL)
        {
            return Verdict::RateLimited { pod, link, since };
        }
        Verdict::Restart {
            pod,
            link,
            since,
            healthy_peers,
        }
    }

    /// Records a restart done (the pod's state goes with it).
    pub fn restarted(&mut self, pod: &str, now: Instant) {
        self.last_restart = Some(now);
        self.since.remove(pod);
    }
}

/// The `Healing` condition for a verdict.
pub fn healing_condition(v: &Verdict) -> Cond {
    let secs = |d: &Duration| d.as_secs();
    match v {
        Verdict::Healthy => Cond::new(
            HEALING,
            false,
            "AllPodsHearRedis",
            "every pod that answered hears Redis",
        ),
        Verdict::Outage { pods } => Cond::new(
            HEALING,
            false,
            "RedisUnreachable",
            format!(
                "all {pods} pods are cut off from Redis: Redis itself is down or unreachable, restarting servers would not help"
            ),
        ),
        Verdict::Watching { pod, link, since } => Cond::new(
            HEALING,
            false,
            "PodCutOff",
            format!(
                "{pod} is {} for {} s; restarted after {} s while a peer hears Redis",
                link.describe(),
                secs(since),
                HEAL_AFTER.as_secs()
            ),
        ),
        Verdict::RateLimited { pod, link, since } => Cond::new(
            HEALING,
            true,
            "RateLimited",
            format!(
                "{pod} is {} for {} s; the last restart was under {} s ago",
                link.describe(),
                secs(since),
                HEAL_MIN_INTERVAL.as_secs()
            ),
        ),
        Verdict::Restart {
            pod, link, since, ..
        } => Cond::new(
            HEALING,
            true,
            "RestartedCutOffPod",
            format!(
                "{pod} was {} for {} s while its peers were not: deleted, its clients move to the others",
                link.describe(),
                secs(since)
            ),
        ),
    }
}

/// The `Scaling` condition (autoscaling only): whether the pods match the recommendation.
pub fn scaling_condition(recommended: i32, pods: usize, connections: u64, a: &Autoscaling) -> Cond {
    let about = format!(
        "{connections} connections, {} per pod wanted: {recommended} replicas (bounds {}..{}); {pods} pods now",
        a.target_connections_per_pod, a.min_replicas, a.max_replicas
    );
    match (pods as i64).cmp(&(recommended as i64)) {
        std::cmp::Ordering::Less => Cond::new(SCALING, true, "ScalingUp", about),
        std::cmp::Ordering::Greater => Cond::new(SCALING, true, "ScalingDown", about),
        std::cmp::Ordering::Equal => Cond::new(SCALING, false, "AtRecommendation", about),
    }
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
pub async fn run(client: Client, clusters: Store<RealtimeCluster>, recorder: Recorder) {
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
    let mut states: HashMap<(String, String), ClusterState> = HashMap::new();
    let mut ticker = tokio::time::interval(INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let clusters = clusters.state();
        // A deleted cluster's memory goes with it.
        states.retain(|(ns, name), _| {
            clusters
                .iter()
                .any(|rc| rc.namespace().as_deref() == Some(ns.as_str()) && &rc.name_any() == name)
        });
        for rc in clusters {
            if rc.spec.paused || rc.spec.app.is_some() || rc.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let key = (rc.namespace().unwrap_or_default(), rc.name_any());
            let state = states.entry(key).or_default();
            if let Err(e) = round(&client, &http, &rc, state, &recorder).await {
                tracing::debug!(cluster = %rc.name_any(), error = %e, "reading pod load");
            }
        }
    }
}

/// What this module remembers of one cluster between rounds.
#[derive(Default)]
struct ClusterState {
    /// When each pod's deletion cost was last written.
    last_writes: HashMap<String, Instant>,
    /// The autoscaling recommendations of the stabilization window.
    history: VecDeque<(Instant, i32)>,
    healer: Healer,
    /// When the last rebalance step was taken.
    last_rebalance: Option<Instant>,
    /// The last round held a scale-down back for the costs it wrote ([`hold_for_costs`]).
    held_scale_down: bool,
}

async fn round(
    client: &Client,
    http: &reqwest::Client,
    rc: &RealtimeCluster,
    state: &mut ClusterState,
    recorder: &Recorder,
) -> Result<(), kube::Error> {
    let ClusterState {
        last_writes,
        history,
        healer,
        last_rebalance,
        held_scale_down,
    } = state;
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
        let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        let metrics = match &ip {
            Some(ip) if running => scrape(http, ip).await,
            _ => None,
        };
        loads.push(PodLoad {
            name,
            connections: metrics.as_deref().and_then(connected_sockets),
            cost,
            link: metrics.as_deref().and_then(link),
            ip,
            ready,
        });
    }
    let now = Instant::now();
    // The recommendation first: a scale-down it asks for reads the costs written below (the
    // status write that resizes the Deployment comes after them).
    let (total, per) = summary(&loads);
    let recommended = rc.spec.autoscaling.as_ref().map(|a| {
        let window = Duration::from_secs(a.scale_down_stabilization_seconds.max(0) as u64);
        stabilized(history, now, recommend(total, a), window)
    });
    let scaling_down = recommended.is_some_and(|r| (r as usize) < loads.len());
    let mut costs_written = false;
    for p in &loads {
        let Some(c) = p.connections else { continue };
        if !cost_due(
            p.cost,
            c,
            last_writes.get(&p.name).copied(),
            now,
            scaling_down,
        ) {
            continue;
        }
        let patch =
            serde_json::json!({"metadata": {"annotations": {DELETION_COST: c.to_string()}}});
        match pods
            .patch(&p.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                last_writes.insert(p.name.clone(), now);
                costs_written = true;
            }
            Err(kube::Error::Api(s)) if s.is_not_found() => {}
            Err(e) => return Err(e),
        }
    }
    last_writes.retain(|pod, _| loads.iter().any(|p| &p.name == pod));
    let previous_recommendation = rc.status.as_ref().and_then(|s| s.recommended_replicas);
    // At most one reading in a row: with steady churn costs change every round, and the
    // scale-down must still happen.
    let held = hold_for_costs(
        recommended,
        previous_recommendation,
        loads.len(),
        costs_written && !*held_scale_down,
    );
    *held_scale_down = held != recommended;
    let recommended = held;

    let verdict = healer.judge(&loads, now);
    if let Verdict::Restart { pod, .. } = &verdict {
        heal(&pods, rc, recorder, &verdict, pod).await?;
        healer.restarted(pod, now);
    }

    if let Some(r) = rc.spec.rebalance.as_ref().filter(|r| r.enabled)
        && verdict == Verdict::Healthy
    {
        let interval = Duration::from_secs(r.interval_seconds.max(1) as u64);
        if last_rebalance.is_none_or(|t| now.duration_since(t) >= interval)
            && let Some((pod, n)) = rebalance_step(&loads, r)
        {
            *last_rebalance = Some(now);
            rebalance(http, rc, recorder, &loads, &pod, n, interval / 2).await;
        }
    }

    let mut conds = vec![healing_condition(&verdict)];
    if let (Some(r), Some(a)) = (recommended, rc.spec.autoscaling.as_ref()) {
        conds.push(scaling_condition(r, loads.len(), total, a));
    }
    let status = rc.status.as_ref();
    let previous: Vec<Condition> = status
        .map(|s| {
            s.conditions
                .iter()
                .filter(|c| c.type_ == SCALING || c.type_ == HEALING)
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    // Only this module's conditions: the controller's are not re-sent (nor owned) here.
    let conditions = merge_conditions(&[], &conds, None, &crate::status::now())
        .into_iter()
        .map(|mut c| {
            if let Some(p) = previous
                .iter()
                .find(|p| p.type_ == c.type_ && p.status == c.status)
            {
                c.last_transition_time = p.last_transition_time.clone();
            }
            c
        })
        .collect::<Vec<_>>();
    let same_conditions = conditions.len() == previous.len()
        && conditions.iter().all(|c| {
            previous.iter().any(|p| {
                p.type_ == c.type_
                    && p.status == c.status
                    && p.reason == c.reason
                    && p.message == c.message
            })
        });
    if status.and_then(|s| s.connections) == Some(total as i64)
        && status.map(|s| &s.pod_connections) == Some(&per)
        && status.and_then(|s| s.recommended_replicas) == recommended
        && same_conditions
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
        "status": {"connections": total, "podConnections": per, "recommendedReplicas": recommended,
            "conditions": conditions},
    });
    api.patch_status(
        &rc.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// Deletes a cut-off pod (gracefully: its preStop and drain run, its clients reconnect to the
/// others) and says so in an Event.
async fn heal(
    pods: &Api<Pod>,
    rc: &RealtimeCluster,
    recorder: &Recorder,
    verdict: &Verdict,
    pod: &str,
) -> Result<(), kube::Error> {
    let note = healing_condition(verdict).message;
    tracing::warn!(cluster = %rc.name_any(), pod, "{note}");
    match pods.delete(pod, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.is_not_found() => return Ok(()),
        Err(e) => return Err(e),
    }
    let event = Event {
        type_: EventType::Warning,
        reason: "RestartedCutOffPod".into(),
        note: Some(note),
        action: "DeletePod".into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, &rc.object_ref(&())).await {
        tracing::warn!(error = %e, "publishing an Event failed");
    }
    Ok(())
}

/// Asks `pod` to shed `n` connections over `over`; an Event says what was asked (a refusal is
/// only logged: the pod's own bounds are the last word).
async fn rebalance(
    http: &reqwest::Client,
    rc: &RealtimeCluster,
    recorder: &Recorder,
    loads: &[PodLoad],
    pod: &str,
    n: u32,
    over: Duration,
) {
    let Some(p) = loads.iter().find(|p| p.name == pod) else {
        return;
    };
    let (Some(ip), Some(held)) = (p.ip.as_deref(), p.connections) else {
        return;
    };
    let total: u64 = loads.iter().filter_map(|p| p.connections).sum();
    let body = serde_json::json!({"count": n, "overSeconds": over.as_secs()});
    let url = format!("http://{}:{ADMIN_PORT}/api/v1/shed", bracketed(ip));
    match http.post(url).json(&body).send().await {
        Ok(r) if r.status() == reqwest::StatusCode::ACCEPTED => {
            let note = format!(
                "{pod} held {held} of {total} connections on {} pods: asked to shed {n} over {} s",
                loads.len(),
                over.as_secs()
            );
            tracing::info!(cluster = %rc.name_any(), "{note}");
            let event = Event {
                type_: EventType::Normal,
                reason: "Rebalanced".into(),
                note: Some(note),
                action: "ShedConnections".into(),
                secondary: None,
            };
            if let Err(e) = recorder.publish(&event, &rc.object_ref(&())).await {
                tracing::warn!(error = %e, "publishing an Event failed");
            }
        }
        Ok(r) => {
            tracing::info!(cluster = %rc.name_any(), pod, status = %r.status(), "shed request refused")
        }
        Err(e) => tracing::debug!(cluster = %rc.name_any(), pod, error = %e, "shed request"),
    }
}

/// An IP as the host of a URL.
fn bracketed(ip: &str) -> String {
    if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    }
}

/// The pod's metrics from its admin port; `None` when it does not answer in time.
async fn scrape(http: &reqwest::Client, ip: &str) -> Option<String> {
    let url = format!("http://{}:{ADMIN_PORT}/metrics", bracketed(ip));
    http.get(url).send().await.ok()?.text().await.ok()
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
    fn a_scale_down_waits_one_reading_after_cost_writes() {
        // No cost written this round: the recommendation as is.
        assert_eq!(hold_for_costs(Some(1), Some(3), 3, false), Some(1));
        // Costs just written: the previous recommendation (the current size) holds this round.
        assert_eq!(hold_for_costs(Some(1), Some(3), 3, true), Some(3));
        // Without a previous recommendation: the current number of pods.
        assert_eq!(hold_for_costs(Some(1), None, 3, true), Some(3));
        // Never above the current pods (a previous scale-up not realised yet is not repeated).
        assert_eq!(hold_for_costs(Some(2), Some(5), 3, true), Some(3));
        // A scale-up is never held.
        assert_eq!(hold_for_costs(Some(5), Some(3), 3, true), Some(5));
        assert_eq!(hold_for_costs(None, Some(3), 3, true), None);
    }

    #[test]
    fn costs_are_written_on_real_change_and_not_too_often() {
        let now = Instant::now();
        assert!(
            cost_due(None, 0, None, now, false),
            "a pod without a cost gets one"
        );
        assert!(!cost_due(Some(5), 5, None, now, false));
        assert!(
            cost_due(Some(5), 6, None, now, false),
            "small counts: a change of 1 counts"
        );
        assert!(!cost_due(Some(1000), 1050, None, now, false), "under 10 %");
        assert!(cost_due(Some(1000), 1100, None, now, false));
        assert!(
            !cost_due(
                Some(1000),
                2000,
                Some(now),
                now + Duration::from_secs(5),
                false
            ),
            "rate-limited"
        );
        assert!(cost_due(
            Some(1000),
            2000,
            Some(now),
            now + COST_MIN_AGE + Duration::from_secs(1),
            false
        ));
        // A scale-down is about to read the costs: not held back by the rate limit.
        assert!(cost_due(
            Some(5),
            1,
            Some(now),
            now + Duration::from_secs(5),
            true
        ));
        assert!(
            !cost_due(Some(1000), 1050, Some(now), now, true),
            "still not for less than a step"
        );
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
                link: None,
                ip: None,
                ready: true,
            },
            PodLoad {
                name: "a".into(),
                connections: Some(2),
                cost: None,
                link: None,
                ip: None,
                ready: true,
            },
            PodLoad {
                name: "c".into(),
                connections: None,
                cost: Some(7),
                link: None,
                ip: None,
                ready: true,
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

    fn pod(name: &str, link: Option<(bool, bool)>) -> PodLoad {
        PodLoad {
            name: name.into(),
            connections: Some(1),
            cost: None,
            link: link.map(|(connected, deaf)| Link { connected, deaf }),
            ip: None,
            ready: true,
        }
    }

    fn held(name: &str, c: u64) -> PodLoad {
        PodLoad {
            connections: Some(c),
            ..pod(name, Some((true, false)))
        }
    }

    #[test]
    fn rebalance_sheds_from_the_fullest_when_another_is_far_below() {
        let r = Rebalance {
            enabled: true,
            tolerance_percent: 20,
            max_shed_percent: 10,
            interval_seconds: 60,
        };
        // 40 and 0: average 20; 10 % of 40 = 4.
        assert_eq!(
            rebalance_step(&[held("a", 40), held("b", 0)], &r),
            Some(("a".into(), 4))
        );
        // Never below the average: 50 % of 30 would be 15, the excess is 10.
        let half = Rebalance {
            max_shed_percent: 50,
            ..r.clone()
        };
        assert_eq!(
            rebalance_step(&[held("a", 30), held("b", 10), held("c", 20)], &half),
            Some(("a".into(), 10))
        );
        // Within the tolerance, or nobody far below: nothing.
        assert_eq!(rebalance_step(&[held("a", 22), held("b", 18)], &r), None);
        assert_eq!(
            rebalance_step(&[held("a", 30), held("b", 30), held("c", 18)], &r),
            None,
            "30 is within 20 % of the average 26"
        );
        // A pod not Ready, silent, or cut off: wait.
        let mut unready = held("b", 0);
        unready.ready = false;
        assert_eq!(rebalance_step(&[held("a", 40), unready], &r), None);
        let silent = PodLoad {
            connections: None,
            ..held("b", 0)
        };
        assert_eq!(rebalance_step(&[held("a", 40), silent], &r), None);
        assert_eq!(rebalance_step(&[held("a", 40)], &r), None, "one pod");
        // Small numbers: one connection at least, when above the average by one.
        assert_eq!(
            rebalance_step(&[held("a", 3), held("b", 0)], &r),
            Some(("a".into(), 1))
        );
    }

    #[test]
    fn reads_the_redis_link() {
        let text =
            "realtime_redis_connected 1\nrealtime_redis_deaf 1\nrealtime_redis_deaf_total 3\n";
        assert_eq!(
            link(text),
            Some(Link {
                connected: true,
                deaf: true
            })
        );
        assert_eq!(link("realtime_redis_connected 1\n"), None);
    }

    #[test]
    fn a_pod_cut_off_while_a_peer_hears_redis_is_restarted_after_the_grace_rate_limited() {
        let mut h = Healer::default();
        let t = Instant::now();
        let ok = Some((true, false));
        let deaf = Some((true, true));
        let gone = Some((false, false));
        assert_eq!(h.judge(&[pod("a", ok), pod("b", ok)], t), Verdict::Healthy);
        let v = h.judge(&[pod("a", ok), pod("b", deaf)], t);
        assert!(
            matches!(&v, Verdict::Watching { pod, .. } if pod == "b"),
            "{v:?}"
        );
        // A lost reading does not reset the clock.
        let v = h.judge(&[pod("a", ok), pod("b", None)], t + Duration::from_secs(10));
        assert_eq!(v, Verdict::Healthy, "b did not answer");
        let v = h.judge(&[pod("a", ok), pod("b", deaf)], t + HEAL_AFTER);
        let Verdict::Restart {
            pod: p,
            since,
            healthy_peers,
            ..
        } = v
        else {
            panic!("{v:?}")
        };
        assert_eq!((p.as_str(), since, healthy_peers), ("b", HEAL_AFTER, 1));
        h.restarted("b", t + HEAL_AFTER);
        // Another pod goes bad: watched, then due but rate-limited, then restarted.
        let t2 = t + HEAL_AFTER + Duration::from_secs(1);
        let v = h.judge(&[pod("a", ok), pod("c", gone)], t2);
        assert!(
            matches!(&v, Verdict::Watching { pod, .. } if pod == "c"),
            "{v:?}"
        );
        let v = h.judge(&[pod("a", ok), pod("c", gone)], t2 + HEAL_AFTER);
        assert!(
            matches!(&v, Verdict::RateLimited { pod, .. } if pod == "c"),
            "{v:?}"
        );
        let v = h.judge(
            &[pod("a", ok), pod("c", gone)],
            t + HEAL_AFTER + HEAL_MIN_INTERVAL,
        );
        assert!(
            matches!(&v, Verdict::Restart { pod, .. } if pod == "c"),
            "{v:?}"
        );
        assert!(healing_condition(&v).status);
    }

    #[test]
    fn every_pod_cut_off_is_a_redis_outage_and_nothing_is_restarted() {
        let mut h = Healer::default();
        let t = Instant::now();
        let pods = [pod("a", Some((false, false))), pod("b", Some((true, true)))];
        for s in [0, 60, 600] {
            let v = h.judge(&pods, t + Duration::from_secs(s));
            assert_eq!(v, Verdict::Outage { pods: 2 });
            assert_eq!(healing_condition(&v).reason, "RedisUnreachable");
        }
        // A pod that answered nothing never counts as a healthy peer.
        let v = h.judge(
            &[pod("a", Some((false, false))), pod("b", None)],
            t + Duration::from_secs(700),
        );
        assert_eq!(v, Verdict::Outage { pods: 1 });
    }

    #[test]
    fn scaling_condition_compares_pods_with_the_recommendation() {
        let a = Autoscaling {
            min_replicas: 1,
            max_replicas: 4,
            target_connections_per_pod: 2,
            scale_down_stabilization_seconds: 10,
        };
        assert_eq!(scaling_condition(3, 1, 5, &a).reason, "ScalingUp");
        assert_eq!(scaling_condition(1, 3, 1, &a).reason, "ScalingDown");
        let c = scaling_condition(2, 2, 4, &a);
        assert!(!c.status);
        assert!(c.message.contains("4 connections"), "{}", c.message);
    }

    #[test]
    fn the_controller_never_writes_what_load_owns() {
        let mut s = RealtimeClusterStatus {
            connections: Some(3),
            recommended_replicas: Some(2),
            ..Default::default()
        };
        for t in [SCALING, HEALING, "Ready"] {
            s.conditions.push(Condition {
                type_: t.into(),
                status: "True".into(),
                reason: "R".into(),
                message: String::new(),
                observed_generation: None,
                last_transition_time: crate::status::now(),
            });
        }
        strip_owned(&mut s);
        assert_eq!(s.connections, None);
        assert_eq!(s.recommended_replicas, None);
        assert_eq!(
            s.conditions
                .iter()
                .map(|c| c.type_.as_str())
                .collect::<Vec<_>>(),
            ["Ready"]
        );
    }
}
