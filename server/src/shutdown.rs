//! Graceful shutdown.
//!
//! On SIGTERM/SIGINT: readiness turns false at once, the listener stops accepting, and every
//! engine.io transport is closed with an engine.io `close` packet. socket.io-client treats
//! that as a lost transport and reconnects on its own (to another node, through the load
//! balancer). A socket.io DISCONNECT packet (`socket.disconnect()`) would instead tell the
//! client the server kicked it, and the official client does not reconnect after that, so it
//! is never sent here. Everything is bounded by the grace period.
//!
//! The transports are closed a few at a time ([`close_plan`], `DRAIN_CLOSE_RATE` per second),
//! not all at once: every closed client reconnects within about a second (socket.io-client's
//! first reconnection delay is 1 s ± 50 %), so closing all of a node's clients together would
//! hand the other nodes that many handshakes, Redis subscriptions and room joins within one
//! second. The clients that wait for their turn are served as usual. The grace period wins
//! over the rate: when it is too short for the node's clients at that rate, they are closed
//! faster so that all are closed before the deadline.

use std::time::Duration;

use tokio::time::Instant;

/// Resolves on the first SIGTERM or SIGINT, with the signal's name.
pub async fn signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            },
            _ => {
                // Without signal handlers the process would die on SIGTERM without draining;
                // fall back to ctrl-c, which always works.
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}

/// The deadlines of one shutdown, from the grace period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// Closing the transports must end by then.
    pub close_transports: Instant,
    /// The HTTP server must have stopped by then; the process exits right after.
    pub exit: Instant,
}

/// Splits the grace period: transports get most of it, and a margin is kept so the process
/// exits before the orchestrator's SIGKILL (which comes at exactly the grace period).
pub fn deadlines(start: Instant, grace: Duration) -> Deadlines {
    let margin = (grace / 10).clamp(Duration::from_millis(100), Duration::from_secs(2));
    let exit = start + grace.saturating_sub(margin);
    let close_transports = start + grace.saturating_sub(margin).mul_f64(0.8);
    Deadlines {
        close_transports,
        exit,
    }
}

/// How the transports of a draining node are closed: one every `interval`, the first at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClosePlan {
    /// Time between two closes; zero closes them all at once.
    pub interval: Duration,
    /// From the first close to the last: `interval * (sockets - 1)`.
    pub duration: Duration,
}

/// The pacing of `sockets` closes at `rate` per second (0: all at once) within `window`, the
/// time left until they must all be closed: one every `1/rate`, or every `window / sockets`
/// when that is sooner, so that the last close comes `window / sockets` before the end of
/// the window (time for it and for closing the adapter).
pub fn close_plan(sockets: usize, rate: u32, window: Duration) -> ClosePlan {
    let all_at_once = ClosePlan {
        interval: Duration::ZERO,
        duration: Duration::ZERO,
    };
    if rate == 0 || sockets == 0 {
        return all_at_once;
    }
    let n = u32::try_from(sockets).unwrap_or(u32::MAX);
    let by_rate = Duration::from_secs(1) / rate;
    let interval = if by_rate.saturating_mul(n) > window {
        window / n
    } else {
        by_rate
    };
    ClosePlan {
        interval,
        duration: interval.saturating_mul(n - 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn closes_follow_the_rate_when_the_window_allows() {
        // 1000 clients at 100/s in the default grace period (14.4 s to close them)
        let p = close_plan(1000, 100, 14_400 * MS);
        assert_eq!(p.interval, 10 * MS);
        assert_eq!(p.duration, 9_990 * MS);
        let p = close_plan(3, 1, Duration::from_secs(10));
        assert_eq!(p.interval, 1000 * MS);
        assert_eq!(p.duration, 2000 * MS);
        // one client: closed at once whatever the rate
        assert_eq!(
            close_plan(1, 100, Duration::from_secs(1)).duration,
            Duration::ZERO
        );
    }

    #[test]
    fn the_grace_period_wins_over_the_rate() {
        // 3000 clients at 100/s would take 30 s: squeezed into the 14.4 s left
        let p = close_plan(3000, 100, 14_400 * MS);
        assert_eq!(p.interval, Duration::from_micros(4_800));
        assert!(p.duration < 14_400 * MS);
        assert_eq!(p.duration + p.interval, 14_400 * MS);
        // no time left: all at once
        assert_eq!(close_plan(10, 100, Duration::ZERO).interval, Duration::ZERO);
    }

    #[test]
    fn rate_zero_or_nothing_to_close_is_all_at_once() {
        let zero = ClosePlan {
            interval: Duration::ZERO,
            duration: Duration::ZERO,
        };
        assert_eq!(close_plan(1000, 0, Duration::from_secs(10)), zero);
        assert_eq!(close_plan(0, 100, Duration::from_secs(10)), zero);
    }

    #[test]
    fn every_plan_fits_its_window_and_never_exceeds_the_rate() {
        for sockets in [1usize, 2, 7, 100, 999, 1000, 1001, 50_000, 1_000_000] {
            for rate in [1u32, 3, 100, 1000, 100_000] {
                for window_ms in [1u64, 500, 14_400, 3_600_000] {
                    let window = Duration::from_millis(window_ms);
                    let p = close_plan(sockets, rate, window);
                    assert!(
                        p.duration < window,
                        "{sockets} at {rate}/s in {window:?}: {p:?}"
                    );
                    assert!(p.interval <= Duration::from_secs(1) / rate, "{p:?}");
                    assert!(!p.interval.is_zero() || window_ms == 1, "{p:?}");
                }
            }
        }
    }

    #[test]
    fn deadlines_fit_in_the_grace_period() {
        let t = Instant::now();
        for grace in [1u64, 5, 20, 300] {
            let g = Duration::from_secs(grace);
            let d = deadlines(t, g);
            assert!(d.close_transports <= d.exit);
            assert!(d.exit < t + g, "exit before SIGKILL for {grace}s");
            assert!(d.exit >= t + g.mul_f64(0.8), "most of {grace}s is used");
        }
        let d = deadlines(t, Duration::from_secs(20));
        assert_eq!(d.exit, t + Duration::from_secs(18));
    }
}
