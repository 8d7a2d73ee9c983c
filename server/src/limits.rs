//! The open-files limit: every client connection is a file descriptor.
//!
//! Rust's standard library leaves the soft `RLIMIT_NOFILE` where it found it (often 1024, while
//! the hard limit of a container is much higher), so the node raises it to the hard limit at
//! start. At the limit `accept` fails for both listeners: the admin port stops answering too, the
//! kubelet's liveness probe fails and the pod is restarted with all its clients. So new
//! socket.io sessions are refused (503) past a cap below the limit, which keeps
//! [`FD_RESERVE`] descriptors for the admin port, Redis and the refusals themselves.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Descriptors kept free of client sessions: listeners, Redis connections, probes and scrapes
/// on the admin port, connections being refused.
pub const FD_RESERVE: u64 = 64;

/// The open-files limit after [`raise_open_files`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    /// The soft limit now (`None`: unlimited).
    pub soft: Option<u64>,
    /// The soft limit found at start, when it was raised.
    pub raised_from: Option<u64>,
}

/// Raises the soft open-files limit to the hard one.
pub fn raise_open_files() -> OpenFiles {
    let Rlimit { current, maximum } = getrlimit(Resource::Nofile);
    if current == maximum {
        return OpenFiles {
            soft: current,
            raised_from: None,
        };
    }
    match setrlimit(
        Resource::Nofile,
        Rlimit {
            current: maximum,
            maximum,
        },
    ) {
        Ok(()) => OpenFiles {
            soft: maximum,
            raised_from: current,
        },
        Err(_) => OpenFiles {
            soft: current,
            raised_from: None,
        },
    }
}

/// The most socket.io sessions this node takes: `configured` when set (not 0), else the
/// open-files limit less [`FD_RESERVE`]; `None` when unbounded (no limit, nothing configured).
pub fn session_cap(configured: u64, open_files: Option<u64>) -> Option<u64> {
    if configured > 0 {
        return Some(configured);
    }
    open_files.map(|n| n.saturating_sub(FD_RESERVE).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_room_for_the_admin_port() {
        assert_eq!(session_cap(0, Some(20_000)), Some(20_000 - FD_RESERVE));
        assert_eq!(session_cap(0, Some(1024)), Some(1024 - FD_RESERVE));
        // A tiny limit still admits one session rather than none.
        assert_eq!(session_cap(0, Some(10)), Some(1));
        assert_eq!(session_cap(0, None), None);
        // Configured wins.
        assert_eq!(session_cap(5000, Some(20_000)), Some(5000));
        assert_eq!(session_cap(5000, None), Some(5000));
    }

    #[test]
    fn raising_never_lowers_the_limit() {
        let before = getrlimit(Resource::Nofile);
        let after = raise_open_files();
        assert_eq!(after.soft, getrlimit(Resource::Nofile).current);
        match (before.current, after.soft) {
            (Some(b), Some(a)) => assert!(a >= b),
            (None, s) => assert_eq!(s, None),
            (Some(_), None) => {} // raised to unlimited
        }
    }
}
