//! Shedding connections on request, for the operator's rebalance after a scale-up.
//!
//! A new pod gets no existing connections: sockets stay where they are until something closes
//! them. The operator (its `load` module, with `spec.rebalance.enabled`) asks a pod far above the
//! cluster's average to shed a few: `POST /api/v1/shed {"count": n, "overSeconds": s}` on the
//! admin port. The pod closes `n` engine.io transports, one every `s / n` (as a drain does,
//! without leaving rotation): their clients reconnect through the load balancer, each after its
//! own randomised reconnection delay, and part of them land on the new pods.
//!
//! The pod bounds what any caller can make it do, since the admin port answers every pod of the
//! namespace: at most [`MAX_SHARE`] of its connections per request, at most one request per
//! [`COOLDOWN`], spread over at least one second per [`MIN_SPREAD_PER_SOCKET`]; never while
//! draining (a drain closes everything anyway).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The largest share of its connections a pod sheds per request.
pub const MAX_SHARE: f64 = 0.5;
/// Shortest time between two accepted requests.
pub const COOLDOWN: Duration = Duration::from_secs(10);
/// The longest spread a request may ask for.
pub const MAX_SPREAD: Duration = Duration::from_secs(120);
/// The shortest spread per shed socket: a request never closes faster than this.
pub const MIN_SPREAD_PER_SOCKET: Duration = Duration::from_millis(10);

/// The request body.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ShedRequest {
    /// How many connections to close.
    pub count: u32,
    /// Over how many seconds (closes are spread evenly).
    #[serde(default = "default_over")]
    pub over_seconds: u32,
}

fn default_over() -> u32 {
    10
}

/// What a request is granted: `count` closes, one every `interval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ShedPlan {
    pub count: usize,
    #[serde(serialize_with = "as_millis")]
    pub interval: Duration,
}

fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("draining: the pod closes every connection anyway")]
    Draining,
    #[error("one shed request per {}s: retry in {}s", COOLDOWN.as_secs(), .0.as_secs().max(1))]
    TooSoon(Duration),
}

/// The bounded plan for `req` on a pod holding `connected` sockets (pure).
pub fn plan(req: ShedRequest, connected: usize) -> ShedPlan {
    let cap = (connected as f64 * MAX_SHARE).floor() as usize;
    let count = (req.count as usize).min(cap);
    if count == 0 {
        return ShedPlan {
            count: 0,
            interval: Duration::ZERO,
        };
    }
    let spread = Duration::from_secs(u64::from(req.over_seconds)).min(MAX_SPREAD);
    let interval = (spread / count as u32).max(MIN_SPREAD_PER_SOCKET);
    ShedPlan { count, interval }
}

/// The cooldown between requests (shared by every request to this pod).
#[derive(Debug, Default)]
pub struct Shedder {
    last: Mutex<Option<Instant>>,
}

impl Shedder {
    /// Admits a request at `now`, or says when the next one may come.
    pub fn admit(&self, now: Instant, draining: bool) -> Result<(), Refused> {
        if draining {
            return Err(Refused::Draining);
        }
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = *last {
            let since = now.saturating_duration_since(t);
            if since < COOLDOWN {
                return Err(Refused::TooSoon(COOLDOWN - since));
            }
        }
        *last = Some(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_half_of_the_connections_spread_over_the_asked_time() {
        let req = |count, over_seconds| ShedRequest {
            count,
            over_seconds,
        };
        assert_eq!(
            plan(req(5, 10), 40),
            ShedPlan {
                count: 5,
                interval: Duration::from_secs(2)
            }
        );
        assert_eq!(plan(req(30, 10), 40).count, 20, "capped at half");
        assert_eq!(plan(req(3, 10), 1).count, 0, "one connection: nothing");
        assert_eq!(
            plan(req(1000, 0), 4000).interval,
            MIN_SPREAD_PER_SOCKET,
            "never all at once"
        );
        assert_eq!(
            plan(req(2, 100_000), 10).interval,
            MAX_SPREAD / 2,
            "spread bounded"
        );
    }

    #[test]
    fn one_request_per_cooldown_and_none_while_draining() {
        let s = Shedder::default();
        let t = Instant::now();
        assert_eq!(s.admit(t, true), Err(Refused::Draining));
        assert_eq!(s.admit(t, false), Ok(()));
        assert!(matches!(
            s.admit(t + Duration::from_secs(3), false),
            Err(Refused::TooSoon(d)) if d == Duration::from_secs(7)
        ));
        assert_eq!(s.admit(t + COOLDOWN, false), Ok(()));
    }

    #[test]
    fn the_body_is_strict() {
        let r: ShedRequest = serde_json::from_str(r#"{"count":3}"#).unwrap();
        assert_eq!(r.over_seconds, 10);
        assert!(serde_json::from_str::<ShedRequest>(r#"{"count":-1}"#).is_err());
        assert!(serde_json::from_str::<ShedRequest>(r#"{"count":1,"all":true}"#).is_err());
    }
}
