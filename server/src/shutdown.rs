//! Graceful shutdown.
//!
//! On SIGTERM/SIGINT: readiness turns false at once, the listener stops accepting, and every
//! engine.io transport is closed with an engine.io `close` packet. socket.io-client treats
//! that as a lost transport and reconnects on its own (to another node, through the load
//! balancer). A socket.io DISCONNECT packet (`socket.disconnect()`) would instead tell the
//! client the server kicked it, and the official client does not reconnect after that, so it
//! is never sent here. Everything is bounded by the grace period.

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

#[cfg(test)]
mod tests {
    use super::*;

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
