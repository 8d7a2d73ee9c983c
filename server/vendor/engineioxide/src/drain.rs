//! Paced closing of sessions for a server that drains (patched in for realtime-server).
//!
//! A server that shuts down usually closes every session at once (socketioxide's
//! `SocketIo::close`), and then every client reconnects at once, to the other servers of the
//! cluster: a reconnect stampede. [`close_paced`] closes the given sessions one at a time
//! instead, a fixed interval apart. Each close is exactly the one a server shutdown makes,
//! [`Socket::close`](crate::Socket::close) with [`DisconnectReason::ClosingServer`]: an
//! engine.io `close` packet after the packets already queued, then the transport ends and the
//! handler's `on_disconnect` runs. The sessions that wait for their turn keep working as usual:
//! they send and receive, and their handler (a socket.io namespace) stays in place.
//!
//! Sessions are named by id and looked up, at their turn, in every engine.io server of the
//! process (an engine registers itself, as a weak reference, when it opens its first session).
//! A session that has ended meanwhile (the client left) is skipped and takes no slot, so a
//! second pass, or a final `SocketIo::close`, is harmless.

use std::{
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use engineioxide_core::Sid;
use tokio::time::Instant;

use crate::{DisconnectReason, engine::EngineIo, handler::EngineIoHandler};

/// An engine.io server whose sessions [`close_paced`] can close.
pub(crate) trait Sessions: Send + Sync {
    /// Closes session `sid` as a server shutdown does; `false` if this engine has no such
    /// open session.
    fn close_for_shutdown(&self, sid: Sid) -> bool;
}

impl<H: EngineIoHandler> Sessions for EngineIo<H> {
    fn close_for_shutdown(&self, sid: Sid) -> bool {
        match self.get_socket(sid) {
            Some(socket) => {
                socket.close(DisconnectReason::ClosingServer);
                true
            }
            None => false,
        }
    }
}

/// The engines of this process (a handful: one per `SocketIo` layer), dead ones pruned at
/// each registration.
static ENGINES: Mutex<Vec<Weak<dyn Sessions>>> = Mutex::new(Vec::new());

fn engines() -> std::sync::MutexGuard<'static, Vec<Weak<dyn Sessions>>> {
    ENGINES.lock().unwrap_or_else(|e| e.into_inner())
}

/// Makes the sessions of `engine` reachable by [`close_paced`] (once per engine).
pub(crate) fn register(engine: Weak<dyn Sessions>) {
    let mut all = engines();
    all.retain(|e| e.strong_count() > 0);
    all.push(engine);
}

/// Closes session `sid` of whichever engine holds it; `false` if none does.
fn close_one(sid: Sid) -> bool {
    let live: Vec<Arc<dyn Sessions>> = engines().iter().filter_map(Weak::upgrade).collect();
    live.iter().any(|e| e.close_for_shutdown(sid))
}

/// Closes the sessions `sids`, in order, one every `interval`: the first at once, the `k`-th
/// open one at `k * interval` from the call. Each close is
/// [`Socket::close`](crate::Socket::close) with [`DisconnectReason::ClosingServer`]. A session
/// that is no longer open when its turn comes (or is unknown) is skipped without waiting. A
/// zero `interval` closes them all at once.
///
/// Returns how many sessions it closed, once the last close is issued (the transports end
/// shortly after). Dropping the future stops the pacing: the sessions not yet closed stay open.
pub async fn close_paced<I>(sids: I, interval: Duration) -> usize
where
    I: IntoIterator<Item = Sid>,
{
    let start = Instant::now();
    let mut closed = 0usize;
    for sid in sids {
        if closed > 0 && !interval.is_zero() {
            // Slots are counted from the start, not from the previous close: a late wake-up
            // (a coarse timer, a busy runtime) is caught up, and the average rate holds.
            let due = start + interval.saturating_mul(u32::try_from(closed).unwrap_or(u32::MAX));
            if due > Instant::now() {
                tokio::time::sleep_until(due).await;
            }
        }
        if close_one(sid) {
            closed += 1;
        }
    }
    #[cfg(feature = "tracing")]
    tracing::debug!(closed, ?interval, took = ?start.elapsed(), "paced close done");
    closed
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use bytes::Bytes;
    use engineioxide_core::{ProtocolVersion, Str, TransportType};
    use http::Request;

    use super::*;
    use crate::{config::EngineIoConfig, socket::Socket};

    /// Records every disconnect with its reason and the (paused) time it happened.
    #[derive(Debug, Default)]
    struct Recorder {
        closed: Mutex<Vec<(Sid, DisconnectReason, Instant)>>,
    }

    impl EngineIoHandler for Recorder {
        type Data = ();
        fn on_connect(self: Arc<Self>, _socket: Arc<Socket<()>>) {}
        fn on_disconnect(&self, socket: Arc<Socket<()>>, reason: DisconnectReason) {
            let at = Instant::now();
            self.closed.lock().unwrap().push((socket.id, reason, at));
        }
        fn on_message(self: &Arc<Self>, _msg: Str, _socket: Arc<Socket<()>>) {}
        fn on_binary(self: &Arc<Self>, _data: Bytes, _socket: Arc<Socket<()>>) {}
    }

    fn engine() -> (Arc<EngineIo<Recorder>>, Arc<Recorder>) {
        let rec = Arc::new(Recorder::default());
        let engine = Arc::new(EngineIo::new(rec.clone(), EngineIoConfig::default()));
        (engine, rec)
    }

    fn open(engine: &Arc<EngineIo<Recorder>>, n: usize) -> Vec<Arc<Socket<()>>> {
        (0..n)
            .map(|_| {
                engine.create_session(
                    ProtocolVersion::V4,
                    TransportType::Polling,
                    Request::<()>::default().into_parts().0,
                    true,
                )
            })
            .collect()
    }

    /// Offsets from `start` of the recorded disconnects, in order, after letting the spawned
    /// close tasks run.
    async fn offsets(rec: &Recorder, start: Instant) -> Vec<Duration> {
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(1)).await;
        let closed = rec.closed.lock().unwrap();
        assert!(
            closed
                .iter()
                .all(|(_, r, _)| *r == DisconnectReason::ClosingServer)
        );
        closed.iter().map(|(_, _, at)| *at - start).collect()
    }

    fn ms(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|m| Duration::from_millis(*m)).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn closes_are_spread_at_the_interval() {
        let (engine, rec) = engine();
        let sockets = open(&engine, 5);
        let start = Instant::now();
        let n = close_paced(sockets.iter().map(|s| s.id), Duration::from_millis(100)).await;
        assert_eq!(n, 5);
        assert_eq!(start.elapsed(), Duration::from_millis(400), "last slot");
        assert_eq!(offsets(&rec, start).await, ms(&[0, 100, 200, 300, 400]));
        // in the order given, each with an engine.io close packet queued before its end
        let order: Vec<Sid> = rec.closed.lock().unwrap().iter().map(|c| c.0).collect();
        assert_eq!(order, sockets.iter().map(|s| s.id).collect::<Vec<_>>());
        for s in &sockets {
            assert!(s.is_closed());
            let mut rx = s.internal_rx.try_lock().unwrap();
            let packets = rx.buffered_rx.try_recv().unwrap();
            assert!(matches!(packets[..], [engineioxide_core::Packet::Close]));
        }
        assert!(engine.get_socket(sockets[0].id).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn without_an_interval_all_close_at_once() {
        let (engine, rec) = engine();
        let sockets = open(&engine, 5);
        let start = Instant::now();
        let n = close_paced(sockets.iter().map(|s| s.id), Duration::ZERO).await;
        assert_eq!(n, 5);
        assert_eq!(offsets(&rec, start).await, ms(&[0, 0, 0, 0, 0]));
    }

    #[tokio::test(start_paused = true)]
    async fn sessions_that_ended_meanwhile_take_no_slot() {
        let (engine, rec) = engine();
        let sockets = open(&engine, 4);
        // the client of the second one leaves before the drain reaches it
        let gone = sockets[1].clone();
        let eng = engine.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            eng.close_session(gone.id, DisconnectReason::TransportClose);
        });
        let start = Instant::now();
        let mut sids: Vec<Sid> = sockets.iter().map(|s| s.id).collect();
        sids.push(Sid::new()); // never existed
        let n = close_paced(sids, Duration::from_millis(100)).await;
        assert_eq!(n, 3);
        tokio::task::yield_now().await;
        let closed = rec.closed.lock().unwrap().clone();
        let got: Vec<(Sid, DisconnectReason, Duration)> = closed
            .into_iter()
            .map(|(s, r, at)| (s, r, at - start))
            .collect();
        let cs = DisconnectReason::ClosingServer;
        assert_eq!(
            got,
            vec![
                (sockets[0].id, cs.clone(), Duration::ZERO),
                (
                    sockets[1].id,
                    DisconnectReason::TransportClose,
                    Duration::from_millis(50)
                ),
                (sockets[2].id, cs.clone(), Duration::from_millis(100)),
                (sockets[3].id, cs, Duration::from_millis(200)),
            ]
        );
        // closing again is a no-op
        assert_eq!(
            close_paced(sockets.iter().map(|s| s.id), Duration::ZERO).await,
            0
        );
    }

    #[tokio::test(start_paused = true)]
    async fn only_the_named_sessions_close_in_any_engine() {
        let (a, rec_a) = engine();
        let (b, rec_b) = engine();
        let on_a = open(&a, 2);
        let on_b = open(&b, 2);
        let start = Instant::now();
        let sids = [on_b[0].id, on_a[1].id];
        assert_eq!(close_paced(sids, Duration::from_millis(10)).await, 2);
        assert_eq!(offsets(&rec_b, start).await, ms(&[0]));
        assert_eq!(offsets(&rec_a, start).await, ms(&[10]));
        assert!(a.get_socket(on_a[0].id).is_some());
        assert!(b.get_socket(on_b[1].id).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_future_stops_the_pacing() {
        let (engine, rec) = engine();
        let sockets = open(&engine, 5);
        let start = Instant::now();
        let paced = close_paced(sockets.iter().map(|s| s.id), Duration::from_millis(100));
        let res = tokio::time::timeout(Duration::from_millis(250), paced).await;
        assert!(res.is_err());
        assert_eq!(offsets(&rec, start).await, ms(&[0, 100, 200]));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(rec.closed.lock().unwrap().len(), 3);
        assert!(engine.get_socket(sockets[3].id).is_some());
    }
}
