//! Liveness and readiness state.
//!
//! The flags are written by the Redis monitor and the shutdown sequence, and read by
//! `/readyz`, the metrics and the handlers (which skip the cross-node path while Redis is
//! down). [`readiness`] is the pure rule that turns a [`Snapshot`] into ready / not ready.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

/// Which adapter the node runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Single node, in-memory adapter: ready whenever not draining.
    Memory,
    /// Redis adapter: ready only while Redis is connected, subscribed and hearing itself.
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
        }
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
        if !s.redis_connected {
            reasons.push("redis: not connected");
        } else if !s.redis_subscribed {
            reasons.push("redis: adapter channels not subscribed");
        }
        if !s.pump_alive {
            reasons.push("redis: pub/sub pump not running");
        }
        if s.redis_connected && s.redis_subscribed && !s.probe_ok {
            reasons.push("redis: pub/sub probe did not come back (node would be deaf)");
        }
    }
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(reasons)
    }
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
    fn redis_mode_starts_not_ready() {
        let h = Health::new(Mode::Redis);
        let reasons = readiness(&h.snapshot()).unwrap_err();
        assert!(reasons.contains(&"redis: not connected"));
        assert!(reasons.contains(&"redis: pub/sub pump not running"));
    }

    #[test]
    fn redis_mode_needs_every_condition() {
        assert_eq!(readiness(&healthy_redis()), Ok(()));
        type Break = fn(&mut Snapshot);
        let cases: [(Break, &str); 5] = [
            (|s| s.redis_connected = false, "redis: not connected"),
            (
                |s| s.redis_subscribed = false,
                "redis: adapter channels not subscribed",
            ),
            (|s| s.pump_alive = false, "redis: pub/sub pump not running"),
            (
                |s| s.probe_ok = false,
                "redis: pub/sub probe did not come back (node would be deaf)",
            ),
            (|s| s.draining = true, "draining: shutting down"),
        ];
        for (break_it, reason) in cases {
            let mut s = healthy_redis();
            break_it(&mut s);
            assert_eq!(readiness(&s), Err(vec![reason]));
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
