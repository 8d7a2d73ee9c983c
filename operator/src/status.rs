//! Status computed from the observed children (pure).
//!
//! Conditions follow the Kubernetes conventions: `lastTransitionTime` changes only when a
//! condition's status changes, so a status computed twice from the same observations is equal
//! to the stored one and the controller can skip the write.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::api::{RealtimeCluster, RealtimeClusterStatus, RedisPhase, RedisStatus, RedisTopology};
use crate::validate::{Model, RedisModel, SpecErrors};

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";

/// The children whose status matters, and what the Sentinels say.
#[derive(Default, Clone, Copy)]
pub struct Observed<'a> {
    pub deployment: Option<&'a Deployment>,
    pub statefulset: Option<&'a StatefulSet>,
    /// The managed Sentinels (highly available Redis).
    pub sentinels: Option<&'a StatefulSet>,
    /// The primary the Sentinels name: the managed Redis pod, or an external Sentinel setup's
    /// host:port (`None` when they could not be asked).
    pub primary: Option<&'a str>,
}

fn ready_pods(sts: Option<&StatefulSet>) -> i32 {
    sts.and_then(|s| s.status.as_ref())
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0)
}

/// A condition as computed, before times and generations are attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cond {
    pub type_: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Cond {
    pub fn new(
        type_: &'static str,
        status: bool,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            status,
            reason,
            message: message.into(),
        }
    }
}

/// The current time, at the apiserver's precision (whole seconds), so stored and computed
/// timestamps compare equal.
pub fn now() -> Time {
    let secs = Timestamp::now().as_second();
    Time(Timestamp::from_second(secs).expect("current time is representable"))
}

/// Status of a valid spec, from what the children report.
pub fn compute(
    model: &Model,
    observed: Observed<'_>,
    previous: Option<&RealtimeClusterStatus>,
    now: Time,
) -> RealtimeClusterStatus {
    let desired = model.server.replicas;
    let d = DeploymentView::of(observed.deployment);
    // With Sentinels, Redis works while a primary runs and a majority of Sentinels can elect
    // a new one.
    let sentinels_ok = model
        .redis_ha()
        .is_none_or(|ha| ready_pods(observed.sentinels) >= ha.quorum());
    let redis_phase = match (&model.redis, observed.statefulset) {
        (RedisModel::External { .. }, _) => RedisPhase::External,
        (RedisModel::Managed { .. }, Some(sts)) if ready_pods(Some(sts)) >= 1 && sentinels_ok => {
            RedisPhase::Ready
        }
        // Ready once and not now: an outage, not a start.
        (RedisModel::Managed { .. }, _)
            if previous.and_then(|p| p.redis.as_ref()).is_some_and(|r| {
                matches!(r.phase, RedisPhase::Ready | RedisPhase::Unavailable)
            }) =>
        {
            RedisPhase::Unavailable
        }
        (RedisModel::Managed { .. }, _) => RedisPhase::Pending,
    };
    // During an outage the servers stay ready and serve their own clients: the cluster is
    // Ready and Degraded, not NotReady (which would read as "nothing works").
    let redis_ok = redis_phase != RedisPhase::Pending;
    let redis_down = redis_phase == RedisPhase::Unavailable;

    let ready = if desired == 0 {
        Cond::new(
            READY,
            false,
            "ScaledToZero",
            "spec.replicas is 0: no server pods run",
        )
    } else if !redis_ok {
        Cond::new(
            READY,
            false,
            "RedisNotReady",
            "the managed Redis is not ready yet",
        )
    } else if d.ready >= desired && d.current {
        Cond::new(
            READY,
            true,
            "AllReplicasReady",
            format!("{}/{desired} server pods ready", d.ready),
        )
    } else {
        Cond::new(
            READY,
            false,
            "ReplicasNotReady",
            format!("{}/{desired} server pods ready", d.ready),
        )
    };

    let progressing = if model.paused {
        Cond::new(
            PROGRESSING,
            false,
            "Paused",
            "spec.paused is true: the operator applies no changes",
        )
    } else if !d.rollout_complete(desired) {
        Cond::new(
            PROGRESSING,
            true,
            "RollingOut",
            format!(
                "{}/{desired} server pods updated, {} available",
                d.updated, d.available
            ),
        )
    } else if !redis_ok {
        Cond::new(
            PROGRESSING,
            true,
            "RedisStarting",
            "waiting for the managed Redis to become ready",
        )
    } else {
        Cond::new(
            PROGRESSING,
            false,
            "Complete",
            "all children are up to date",
        )
    };

    let degraded = match d.failure {
        Some((reason, message)) => Cond::new(DEGRADED, true, reason, message),
        None if redis_down => Cond::new(
            DEGRADED,
            true,
            "RedisUnavailable",
            "the managed Redis has no ready pod: each server serves its own clients, cross-node delivery resumes when Redis is back",
        ),
        None => Cond::new(DEGRADED, false, "AsExpected", "no failures observed"),
    };

    let previous_conditions = previous
        .map(|p| p.conditions.as_slice())
        .unwrap_or_default();
    RealtimeClusterStatus {
        conditions: merge_conditions(
            previous_conditions,
            &[ready, progressing, degraded],
            model.generation,
            &now,
        ),
        observed_generation: model.generation,
        replicas: d.replicas,
        ready_replicas: d.ready,
        redis: Some({
            let (topology, master_name) = model.redis_topology();
            RedisStatus {
                phase: redis_phase,
                endpoint: model.redis_endpoint(),
                topology,
                master_name: master_name.map(str::to_owned),
                // Only Sentinels name a primary.
                primary: (topology == RedisTopology::Sentinel)
                    .then_some(observed.primary)
                    .flatten()
                    .map(str::to_owned),
            }
        }),
        endpoint: Some(model.endpoint()),
        socketio_path: Some(format!("{}/", model.socketio_path())),
        selector: Some(model.selector_string()),
        // Written by `load` under its own field manager.
        connections: None,
        pod_connections: Vec::new(),
        recommended_replicas: None,
    }
}

/// Status of a spec that cannot be reconciled: Degraded with every error. The children are
/// left as they are, so counts and Ready keep describing what still runs.
pub fn invalid(rc: &RealtimeCluster, errors: &SpecErrors, now: Time) -> RealtimeClusterStatus {
    let previous = rc.status.clone().unwrap_or_default();
    let mut conds = vec![
        Cond::new(
            PROGRESSING,
            false,
            "InvalidSpec",
            "changes are not applied until the spec is fixed",
        ),
        Cond::new(DEGRADED, true, "InvalidSpec", errors.to_string()),
    ];
    if !previous.conditions.iter().any(|c| c.type_ == READY) {
        conds.push(Cond::new(
            READY,
            false,
            "InvalidSpec",
            "the spec is invalid (see Degraded)",
        ));
    }
    RealtimeClusterStatus {
        conditions: merge_conditions(&previous.conditions, &conds, rc.metadata.generation, &now),
        observed_generation: rc.metadata.generation,
        // Written by `load` under its own field manager.
        connections: None,
        pod_connections: Vec::new(),
        recommended_replicas: None,
        ..previous
    }
}

/// Replaces the conditions in `updates` (keeping the others), preserving each one's
/// lastTransitionTime when its status did not change. Output order is stable.
pub fn merge_conditions(
    previous: &[Condition],
    updates: &[Cond],
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    let mut out: Vec<Condition> = previous
        .iter()
        .filter(|p| !updates.iter().any(|u| u.type_ == p.type_))
        .cloned()
        .collect();
    for u in updates {
        let status = if u.status { "True" } else { "False" };
        let last_transition_time = previous
            .iter()
            .find(|p| p.type_ == u.type_ && p.status == status)
            .map(|p| p.last_transition_time.clone())
            .unwrap_or_else(|| now.clone());
        out.push(Condition {
            type_: u.type_.to_string(),
            status: status.to_string(),
            reason: u.reason.to_string(),
            message: u.message.clone(),
            observed_generation: generation,
            last_transition_time,
        });
    }
    let rank = |t: &str| {
        [READY, PROGRESSING, DEGRADED]
            .iter()
            .position(|x| *x == t)
            .unwrap_or(usize::MAX)
    };
    out.sort_by(|a, b| {
        rank(&a.type_)
            .cmp(&rank(&b.type_))
            .then_with(|| a.type_.cmp(&b.type_))
    });
    out
}

/// The condition of `type_` in `status`, if any.
pub fn condition<'a>(
    status: Option<&'a RealtimeClusterStatus>,
    type_: &str,
) -> Option<&'a Condition> {
    status?.conditions.iter().find(|c| c.type_ == type_)
}

/// The numbers and failure signals a Deployment reports.
struct DeploymentView {
    replicas: i32,
    ready: i32,
    updated: i32,
    available: i32,
    /// The Deployment controller has seen the latest Deployment spec.
    current: bool,
    failure: Option<(&'static str, String)>,
}

impl DeploymentView {
    fn of(d: Option<&Deployment>) -> Self {
        let Some(d) = d else {
            return Self {
                replicas: 0,
                ready: 0,
                updated: 0,
                available: 0,
                current: false,
                failure: None,
            };
        };
        let st = d.status.clone().unwrap_or_default();
        let current = match (st.observed_generation, d.metadata.generation) {
            (Some(seen), Some(generation)) => seen >= generation,
            _ => false,
        };
        let conds = st.conditions.unwrap_or_default();
        let failure = conds
            .iter()
            .find(|c| c.type_ == "ReplicaFailure" && c.status == "True")
            .map(|c| ("ReplicaFailure", c.message.clone().unwrap_or_default()))
            .or_else(|| {
                conds
                    .iter()
                    .find(|c| {
                        c.type_ == "Progressing"
                            && c.status == "False"
                            && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
                    })
                    .map(|c| {
                        (
                            "ProgressDeadlineExceeded",
                            c.message.clone().unwrap_or_default(),
                        )
                    })
            });
        Self {
            replicas: st.replicas.unwrap_or(0),
            ready: st.ready_replicas.unwrap_or(0),
            updated: st.updated_replicas.unwrap_or(0),
            available: st.available_replicas.unwrap_or(0),
            current,
            failure,
        }
    }

    /// Every pod runs the latest template, no old pods remain, all are available.
    fn rollout_complete(&self, desired: i32) -> bool {
        self.current
            && self.updated >= desired
            && self.replicas == desired
            && self.available >= desired
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::RedisTopology;
    use crate::build::test_support::model;
    use k8s_openapi::api::apps::v1::{DeploymentCondition, DeploymentStatus, StatefulSetStatus};
    use serde_json::json;

    fn t(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    fn deployment(
        generation: i64,
        seen: i64,
        replicas: i32,
        ready: i32,
        updated: i32,
        available: i32,
    ) -> Deployment {
        let mut d = Deployment::default();
        d.metadata.generation = Some(generation);
        d.status = Some(DeploymentStatus {
            observed_generation: Some(seen),
            replicas: Some(replicas),
            ready_replicas: Some(ready),
            updated_replicas: Some(updated),
            available_replicas: Some(available),
            ..Default::default()
        });
        d
    }

    fn sts(ready: i32) -> StatefulSet {
        StatefulSet {
            status: Some(StatefulSetStatus {
                ready_replicas: Some(ready),
                replicas: 1,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn cond<'a>(s: &'a RealtimeClusterStatus, type_: &str) -> &'a Condition {
        condition(Some(s), type_).unwrap()
    }

    /// The status from an observed Deployment alone (external Redis), with no previous status.
    fn with_deployment(m: &Model, d: &Deployment) -> RealtimeClusterStatus {
        compute(
            m,
            Observed {
                deployment: Some(d),
                statefulset: None,
                ..Default::default()
            },
            None,
            t(1),
        )
    }

    #[test]
    fn all_ready() {
        let m = model(json!({"replicas": 2}));
        let d = deployment(4, 4, 2, 2, 2, 2);
        let r = sts(1);
        let s = compute(
            &m,
            Observed {
                deployment: Some(&d),
                statefulset: Some(&r),
                ..Default::default()
            },
            None,
            t(100),
        );
        assert_eq!(cond(&s, READY).status, "True");
        assert_eq!(cond(&s, READY).reason, "AllReplicasReady");
        assert_eq!(cond(&s, PROGRESSING).status, "False");
        assert_eq!(cond(&s, DEGRADED).status, "False");
        assert_eq!((s.replicas, s.ready_replicas), (2, 2));
        assert_eq!(s.observed_generation, Some(1));
        assert_eq!(cond(&s, READY).observed_generation, Some(1));
        assert_eq!(
            s.redis,
            Some(RedisStatus {
                phase: RedisPhase::Ready,
                endpoint: "chat-redis.apps.svc:6379".into(),
                topology: RedisTopology::Standalone,
                master_name: None,
                primary: None,
            })
        );
        assert_eq!(s.endpoint.as_deref(), Some("http://chat.apps.svc"));
        assert_eq!(
            s.selector.as_deref(),
            Some(
                "app.kubernetes.io/instance=chat,app.kubernetes.io/name=realtime-server,realtime.dev/cluster=chat"
            )
        );
        assert_eq!(cond(&s, READY).last_transition_time, t(100));
    }

    #[test]
    fn a_redis_outage_after_ready_is_degraded_not_unready() {
        let m = model(json!({"replicas": 2}));
        let d = deployment(4, 4, 2, 2, 2, 2);
        let up = compute(
            &m,
            Observed {
                deployment: Some(&d),
                statefulset: Some(&sts(1)),
                ..Default::default()
            },
            None,
            t(1),
        );
        assert_eq!(up.redis.as_ref().unwrap().phase, RedisPhase::Ready);
        let down = compute(
            &m,
            Observed {
                deployment: Some(&d),
                statefulset: Some(&sts(0)),
                ..Default::default()
            },
            Some(&up),
            t(2),
        );
        assert_eq!(down.redis.as_ref().unwrap().phase, RedisPhase::Unavailable);
        assert_eq!(cond(&down, READY).status, "True");
        assert_eq!(cond(&down, DEGRADED).status, "True");
        assert_eq!(cond(&down, DEGRADED).reason, "RedisUnavailable");
        // Still down at the next reconcile; back to Ready and not degraded when it returns.
        let still = compute(
            &m,
            Observed {
                deployment: Some(&d),
                statefulset: Some(&sts(0)),
                ..Default::default()
            },
            Some(&down),
            t(3),
        );
        assert_eq!(still.redis.as_ref().unwrap().phase, RedisPhase::Unavailable);
        let back = compute(
            &m,
            Observed {
                deployment: Some(&d),
                statefulset: Some(&sts(1)),
                ..Default::default()
            },
            Some(&still),
            t(4),
        );
        assert_eq!(back.redis.clone().unwrap().phase, RedisPhase::Ready);
        assert_eq!(cond(&back, DEGRADED).status, "False");
    }

    #[test]
    fn nothing_observed_yet() {
        let m = model(json!({}));
        let s = compute(&m, Observed::default(), None, t(1));
        assert_eq!(cond(&s, READY).status, "False");
        assert_eq!(cond(&s, READY).reason, "RedisNotReady");
        assert_eq!(cond(&s, PROGRESSING).status, "True");
        assert_eq!(s.redis.unwrap().phase, RedisPhase::Pending);
        assert_eq!((s.replicas, s.ready_replicas), (0, 0));
    }

    #[test]
    fn rolling_out_and_partially_ready() {
        let m = model(json!({"replicas": 3, "redis": {"external": {"host": "cache"}}}));
        let d = deployment(5, 5, 4, 2, 1, 2);
        let s = with_deployment(&m, &d);
        assert_eq!(cond(&s, READY).reason, "ReplicasNotReady");
        assert_eq!(cond(&s, READY).message, "2/3 server pods ready");
        assert_eq!(cond(&s, PROGRESSING).reason, "RollingOut");
        assert_eq!(s.redis.unwrap().phase, RedisPhase::External);
        assert_eq!(s.ready_replicas, 2);
    }

    #[test]
    fn ha_redis_is_ready_with_a_primary_and_a_majority_of_sentinels() {
        let m = model(json!({"redis": {"managed": {"highAvailability": {}}}}));
        let d = deployment(1, 1, 2, 2, 2, 2);
        let (redis, one, two) = (sts(3), sts(1), sts(2));
        let at = |sentinels: &StatefulSet, primary: Option<&str>| {
            compute(
                &m,
                Observed {
                    deployment: Some(&d),
                    statefulset: Some(&redis),
                    sentinels: Some(sentinels),
                    primary,
                },
                None,
                t(5),
            )
        };
        let s = at(&one, None);
        assert_eq!(s.redis.as_ref().unwrap().phase, RedisPhase::Pending);
        assert_eq!(cond(&s, READY).reason, "RedisNotReady");
        let s = at(&two, Some("chat-redis-1"));
        let r = s.redis.unwrap();
        assert_eq!(r.phase, RedisPhase::Ready);
        assert_eq!(r.topology, RedisTopology::Sentinel);
        assert_eq!(r.master_name.as_deref(), Some("realtime"));
        assert_eq!(r.primary.as_deref(), Some("chat-redis-1"));
        assert!(
            r.endpoint
                .starts_with("chat-sentinel-0.chat-sentinel.apps.svc:26379,")
        );
        // a primary is only reported with Sentinels
        let single = model(json!({}));
        let s = compute(
            &single,
            Observed {
                statefulset: Some(&one),
                primary: Some("x"),
                ..Default::default()
            },
            None,
            t(5),
        );
        assert_eq!(s.redis.unwrap().primary, None);
    }

    #[test]
    fn an_external_sentinel_reports_its_topology_and_primary_name() {
        let m = model(
            json!({"redis": {"external": {"sentinel": {"masterName": "mymaster",
            "endpoints": ["s-0.sentinel", "s-1.sentinel:26380"]}}}}),
        );
        let s = compute(&m, Observed::default(), None, t(1));
        assert_eq!(
            s.redis,
            Some(RedisStatus {
                phase: RedisPhase::External,
                endpoint: "s-0.sentinel:26379,s-1.sentinel:26380".into(),
                topology: RedisTopology::Sentinel,
                master_name: Some("mymaster".into()),
                primary: None,
            })
        );
        // a status written before the field existed reads as Standalone
        let old: RedisStatus =
            serde_json::from_value(json!({"phase": "Ready", "endpoint": "r:6379"})).unwrap();
        assert_eq!(old.topology, RedisTopology::Standalone);
    }

    #[test]
    fn an_external_redis_cluster_reports_its_topology_and_seed_nodes() {
        let m = model(json!({"redis": {"external": {"cluster": {
            "endpoints": ["c-0.cache", "c-1.cache:7001"]}}}}));
        let s = compute(&m, Observed::default(), None, t(1));
        assert_eq!(
            s.redis,
            Some(RedisStatus {
                phase: RedisPhase::External,
                endpoint: "c-0.cache:6379,c-1.cache:7001".into(),
                topology: RedisTopology::Cluster,
                master_name: None,
                primary: None,
            })
        );
    }

    #[test]
    fn stale_deployment_status_is_not_ready() {
        let m = model(json!({"replicas": 2, "redis": {"external": {"host": "cache"}}}));
        let d = deployment(6, 5, 2, 2, 2, 2);
        let s = with_deployment(&m, &d);
        assert_eq!(cond(&s, READY).status, "False");
        assert_eq!(cond(&s, PROGRESSING).status, "True");
    }

    #[test]
    fn deadline_exceeded_is_degraded() {
        let m = model(json!({"redis": {"external": {"host": "cache"}}}));
        let mut d = deployment(1, 1, 2, 0, 2, 0);
        d.status.as_mut().unwrap().conditions = Some(vec![DeploymentCondition {
            type_: "Progressing".into(),
            status: "False".into(),
            reason: Some("ProgressDeadlineExceeded".into()),
            message: Some("ReplicaSet has timed out progressing.".into()),
            ..Default::default()
        }]);
        let s = with_deployment(&m, &d);
        assert_eq!(cond(&s, DEGRADED).status, "True");
        assert_eq!(cond(&s, DEGRADED).reason, "ProgressDeadlineExceeded");
        assert!(cond(&s, DEGRADED).message.contains("timed out"));
    }

    #[test]
    fn scaled_to_zero_and_paused() {
        let m =
            model(json!({"replicas": 0, "paused": true, "redis": {"external": {"host": "cache"}}}));
        let d = deployment(1, 1, 0, 0, 0, 0);
        let s = with_deployment(&m, &d);
        assert_eq!(cond(&s, READY).reason, "ScaledToZero");
        assert_eq!(cond(&s, PROGRESSING).reason, "Paused");
    }

    #[test]
    fn transition_time_kept_while_status_unchanged() {
        let m = model(json!({"replicas": 2}));
        let d = deployment(1, 1, 2, 1, 2, 1);
        let r = sts(1);
        let obs = Observed {
            deployment: Some(&d),
            statefulset: Some(&r),
            ..Default::default()
        };
        let first = compute(&m, obs, None, t(10));
        // Same observation later: identical status, so the controller writes nothing.
        let again = compute(&m, obs, Some(&first), t(20));
        assert_eq!(first, again);
        // Message changes but status stays False: time kept.
        let d2 = deployment(1, 1, 2, 0, 2, 0);
        let s = compute(
            &m,
            Observed {
                deployment: Some(&d2),
                statefulset: Some(&r),
                ..Default::default()
            },
            Some(&first),
            t(30),
        );
        assert_eq!(cond(&s, READY).last_transition_time, t(10));
        assert_eq!(cond(&s, READY).message, "0/2 server pods ready");
        // Status flips: new time.
        let d3 = deployment(1, 1, 2, 2, 2, 2);
        let s = compute(
            &m,
            Observed {
                deployment: Some(&d3),
                statefulset: Some(&r),
                ..Default::default()
            },
            Some(&first),
            t(40),
        );
        assert_eq!(cond(&s, READY).status, "True");
        assert_eq!(cond(&s, READY).last_transition_time, t(40));
    }

    #[test]
    fn invalid_spec_keeps_counts_and_reports_every_error() {
        let mut rc: RealtimeCluster = serde_json::from_value(json!({
            "apiVersion": "realtime.dev/v1alpha1", "kind": "RealtimeCluster",
            "metadata": {"name": "chat", "namespace": "apps", "generation": 7}, "spec": {}}))
        .unwrap();
        rc.status = Some(RealtimeClusterStatus {
            replicas: 2,
            ready_replicas: 2,
            ..Default::default()
        });
        let errors = SpecErrors(vec![
            crate::validate::SpecError {
                field: "spec.a".into(),
                message: "bad".into(),
            },
            crate::validate::SpecError {
                field: "spec.b".into(),
                message: "worse".into(),
            },
        ]);
        let s = invalid(&rc, &errors, t(5));
        assert_eq!(cond(&s, DEGRADED).status, "True");
        assert_eq!(cond(&s, DEGRADED).reason, "InvalidSpec");
        assert_eq!(cond(&s, DEGRADED).message, "spec.a: bad; spec.b: worse");
        assert_eq!(cond(&s, PROGRESSING).status, "False");
        assert_eq!(cond(&s, READY).reason, "InvalidSpec");
        assert_eq!(
            (s.replicas, s.ready_replicas, s.observed_generation),
            (2, 2, Some(7))
        );
        // Stable when recomputed from its own output.
        rc.status = Some(s.clone());
        assert_eq!(invalid(&rc, &errors, t(50)), s);
    }

    #[test]
    fn now_has_whole_seconds() {
        assert_eq!(now().0.subsec_nanosecond(), 0);
    }
}
