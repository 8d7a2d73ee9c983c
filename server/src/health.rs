//! Liveness and readiness state.
//!
//! The flags are written by the Redis monitor and the shutdown sequence, and read by
//! `/readyz`, the metrics and the handlers (which skip the cross-node path while Redis is
//! down). [`readiness`] is the pure rule that turns a [`Snapshot`] into ready / not ready, and
//! [`degradation`] says what works less well while the node stays ready.
//!
//! A Redis outage does not make a node unready: every node loses Redis at once, and taking
//! them all out of rotation would turn a partial service (local rooms, same-node messages,
//! acks that say `partial`) into none. What does is a node that is *deaf while Redis answers*
//! (its own subscription lost, its peers fine): that node alone leaves rotation.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Which adapter the node runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Single node, in-memory adapter: ready whenever not draining.
    Memory,
    /// Redis adapter: ready unless draining or deaf while Redis answers.
    Redis,
}

/// Shared health flags.
#[derive(Debug)]
pub struct Health {
    mode: Mode,
    draining: AtomicBool,
    redis_connected: AtomicBool,
    redis_subscribed: AtomicBool,
    pump_alive: AtomicBool,
    probe_ok: AtomicBool,
    deaf: AtomicBool,
    /// Set once the pub/sub path has been proven (probe heard) since start.
    ever_heard: AtomicBool,
    started: Instant,
    startup_grace: Duration,
}

/// One consistent-enough reading of the flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub mode: Mode,
    pub draining: bool,
    pub redis_connected: bool,
    pub redis_subscribed: bool,
    pub pump_alive: bool,
    pub probe_ok: bool,
    /// Redis answers this node (PUBLISH, SUBSCRIBE replies) but the node has not heard its own
    /// probe for a while: its subscription is broken while its peers' may work.
    pub deaf: bool,
    /// Just started, not yet heard Redis, and within the startup grace: not ready yet, so a new
    /// pod of a rollout takes clients only once it can deliver across nodes.
    pub warming_up: bool,
}

impl Health {
    pub fn new(mode: Mode) -> Self {
        Self {
            mode,
            draining: AtomicBool::new(false),
            redis_connected: AtomicBool::new(false),
            redis_subscribed: AtomicBool::new(false),
            pump_alive: AtomicBool::new(false),
            probe_ok: AtomicBool::new(false),
            deaf: AtomicBool::new(false),
            ever_heard: AtomicBool::new(false),
            started: Instant::now(),
            startup_grace: Duration::ZERO,
        }
    }

    /// How long a new node waits to hear Redis before it turns ready without it.
    pub fn with_startup_grace(mut self, grace: Duration) -> Self {
        self.startup_grace = grace;
        self
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            mode: self.mode,
            draining: self.draining.load(Relaxed),
            redis_connected: self.redis_connected.load(Relaxed),
            redis_subscribed: self.redis_subscribed.load(Relaxed),
            pump_alive: self.pump_alive.load(Relaxed),
            probe_ok: self.probe_ok.load(Relaxed),
            deaf: self.deaf.load(Relaxed),
            warming_up: self.mode == Mode::Redis
                && !self.ever_heard.load(Relaxed)
                && self.started.elapsed() < self.startup_grace,
        }
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Relaxed);
    }
    pub fn set_redis_connected(&self, v: bool) {
        self.redis_connected.store(v, Relaxed);
    }
    pub fn set_redis_subscribed(&self, v: bool) {
        self.redis_subscribed.store(v, Relaxed);
    }
    pub fn set_pump_alive(&self, v: bool) {
        self.pump_alive.store(v, Relaxed);
    }
    pub fn set_probe_ok(&self, v: bool) {
        self.probe_ok.store(v, Relaxed);
        if v {
            self.ever_heard.store(true, Relaxed);
        }
    }
    pub fn set_deaf(&self, v: bool) {
        self.deaf.store(v, Relaxed);
    }

    /// Whether a cross-node operation is worth trying now. While Redis is known to be down
    /// the handlers deliver on this node at once instead of waiting for a command timeout.
    #[inline]
    pub fn redis_usable(&self) -> bool {
        self.redis_connected.load(Relaxed)
    }
}

/// Ready, or the reasons why not (in a stable order, for `/readyz` and logs).
pub fn readiness(s: &Snapshot) -> Result<(), Vec<&'static str>> {
    let mut reasons = Vec::new();
    if s.draining {
        reasons.push("draining: shutting down");
    }
    if s.mode == Mode::Redis {
        if !s.pump_alive {
            reasons.push("redis: pub/sub pump not running");
        }
        if s.deaf {
            reasons.push("redis: answers but this node does not hear its subscriptions (deaf)");
        }
        if s.warming_up {
            reasons.push(
                "redis: starting; ready once subscribed (or without Redis after the startup grace)",
            );
        }
    }
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(reasons)
    }
}

/// What a ready node cannot do right now: cross-node delivery while Redis is unreachable or
/// being resubscribed (empty when fully healthy).
pub fn degradation(s: &Snapshot) -> Vec<&'static str> {
    let mut reasons = Vec::new();
    if s.mode == Mode::Redis {
        if !s.redis_connected {
            reasons.push("redis: not connected; serving local clients only until it returns");
        } else if !s.redis_subscribed {
            reasons.push("redis: adapter channels not subscribed yet");
        } else if !s.probe_ok {
            reasons.push("redis: pub/sub path not verified yet");
        }
    }
    reasons
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy_redis() -> Snapshot {
        Snapshot {
            mode: Mode::Redis,
            draining: false,
            redis_connected: true,
            redis_subscribed: true,
            pump_alive: true,
            probe_ok: true,
            deaf: false,
            warming_up: false,
        }
    }

    #[test]
    fn memory_mode_is_ready_until_draining() {
        let h = Health::new(Mode::Memory);
        assert_eq!(readiness(&h.snapshot()), Ok(()));
        h.set_draining();
        assert_eq!(
            readiness(&h.snapshot()),
            Err(vec!["draining: shutting down"])
        );
    }

    #[test]
    fn a_new_node_waits_for_redis_within_its_startup_grace() {
        let h = Health::new(Mode::Redis).with_startup_grace(Duration::from_secs(60));
        h.set_pump_alive(true);
        h.set_redis_connected(true);
        h.set_redis_subscribed(true);
        assert!(readiness(&h.snapshot()).unwrap_err()[0].starts_with("redis: starting"));
        h.set_probe_ok(true);
        assert_eq!(readiness(&h.snapshot()), Ok(()));
        // Having heard Redis once, a later outage only degrades.
        h.set_probe_ok(false);
        h.set_redis_connected(false);
        assert_eq!(readiness(&h.snapshot()), Ok(()));
    }

    #[test]
    fn a_redis_outage_degrades_but_keeps_the_node_ready() {
        let h = Health::new(Mode::Redis);
        h.set_pump_alive(true);
        // Started without Redis, past the (zero) startup grace: ready, degraded.
        assert_eq!(readiness(&h.snapshot()), Ok(()));
        assert_eq!(
            degradation(&h.snapshot()),
            vec!["redis: not connected; serving local clients only until it returns"]
        );
        assert_eq!(degradation(&healthy_redis()), Vec::<&str>::new());
    }

    #[test]
    fn redis_mode_leaves_rotation_only_when_deaf_draining_or_broken() {
        assert_eq!(readiness(&healthy_redis()), Ok(()));
        type Break = fn(&mut Snapshot);
        let cases: [(Break, &str); 3] = [
            (|s| s.pump_alive = false, "redis: pub/sub pump not running"),
            (
                |s| s.deaf = true,
                "redis: answers but this node does not hear its subscriptions (deaf)",
            ),
            (|s| s.draining = true, "draining: shutting down"),
        ];
        for (break_it, reason) in cases {
            let mut s = healthy_redis();
            break_it(&mut s);
            assert_eq!(readiness(&s), Err(vec![reason]));
        }
        for outage in [
            |s: &mut Snapshot| s.redis_connected = false,
            |s: &mut Snapshot| s.redis_subscribed = false,
            |s: &mut Snapshot| s.probe_ok = false,
        ] {
            let mut s = healthy_redis();
            outage(&mut s);
            assert_eq!(readiness(&s), Ok(()), "{s:?}");
            assert_eq!(degradation(&s).len(), 1, "{s:?}");
        }
    }

    #[test]
    fn usable_follows_the_connection_only() {
        let h = Health::new(Mode::Redis);
        assert!(!h.redis_usable());
        h.set_redis_connected(true);
        assert!(
            h.redis_usable(),
            "publishing works before resubscription ends"
        );
    }
}
