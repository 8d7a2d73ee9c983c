//! One socket's events take effect in the order they were sent, with Redis commands pipelined.
//!
//! socketioxide runs every event handler in its own task, so two events of one socket could
//! overtake each other. [`Order`] queues them: an event starts once the previous one is done.
//! Waiting for "done" includes the Redis round trip of a broadcast (the adapter publishes,
//! then delivers locally), so one socket's broadcasts went out one round trip at a time: a
//! client publishing 2,000 events/s was served at ~300 broadcasts/s on 2 nodes, with every
//! node's receivers getting their frames one by one (`bench/README.md`, Floor).
//!
//! A broadcast's order is fixed earlier than its end: once its PUBLISH is queued on the one
//! Redis connection, Redis runs it, and every subscriber gets it, after the PUBLISH before it
//! and before the one after it. So an event that opted in ([`allow_early_release`]) lets the
//! socket's next event start at that point ([`queued`], called by the driver), and everything
//! it does on this node afterwards (the local delivery, the ack) first waits for the previous
//! event to be done ([`wait_turn`]). Effects stay in arrival order on every node; only the
//! waits overlap. Events that did not opt in (joins, presence, private messages routed to one
//! node, anything with recovery on) keep the plain rule: the next starts when this one ends.
//!
//! All events of a socket run in one task, the socket's pump ([`Order::submit`]): handing
//! the turn from one event to the next is then a wake-up inside that task, not a task to
//! schedule behind every connection task that the last broadcast woke. With a task per event
//! (socketioxide's way), one publisher's events went out ~900 per second on one node, each
//! waiting its turn at the back of the run queue, while the same events without ordering
//! reached 2,000/s (`bench/README.md`, Floor). The pump exists while the socket has events
//! in flight and ends with the last one.
//!
//! The turn travels with the event's future as a tokio task-local, because the point where
//! the order is fixed is inside the adapter (socketioxide-redis calls our driver), which knows
//! nothing of sockets; outside an event ([`Order::submit`]) every function here is a no-op.

use std::{
    cell::Cell,
    future::Future,
    panic::AssertUnwindSafe,
    pin::{Pin, pin},
    sync::{Arc, Mutex},
    task::{Poll, Waker},
};

use futures::{FutureExt, StreamExt, stream::FuturesUnordered};
use tokio::sync::oneshot;

/// A boxed event future.
pub type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

tokio::task_local! {
    static TURN: Turn;
}

/// The running event's place in its socket's queue (only its own future touches it, hence
/// `Cell`s).
struct Turn {
    /// Dropped to let the socket's next event start: by [`queued`] when allowed, otherwise
    /// when this event ends.
    release: Cell<Option<oneshot::Sender<()>>>,
    /// Completes once the previous event is done; taken by the first [`wait_turn`].
    prev_done: Cell<Option<oneshot::Receiver<()>>>,
    /// Set by [`allow_early_release`].
    early: Cell<bool>,
}

/// What the last queued event signals: it released its successor, it is done.
struct Tail {
    released: oneshot::Receiver<()>,
    done: oneshot::Receiver<()>,
}

/// The per-socket event queue.
#[derive(Default)]
pub struct Order {
    queue: Mutex<Queue>,
}

/// The last event queued, the events waiting for the socket's pump, and whether one runs.
#[derive(Default)]
struct Queue {
    tail: Option<Tail>,
    submitted: Vec<BoxFuture>,
    running: bool,
    waker: Option<Waker>,
}

impl Order {
    /// Queues an event (in order, see the module doc) on the socket's pump. Returns the pump to spawn
    /// when none runs; otherwise the running pump takes the event.
    /// Must be called synchronously from the handler, in arrival order.
    pub fn submit(
        self: &Arc<Self>,
        fut: impl Future<Output = ()> + Send + 'static,
    ) -> Option<BoxFuture> {
        let mut queue = lock(&self.queue);
        let event = queue.chain(fut);
        queue.submitted.push(event);
        if queue.running {
            let waker = queue.waker.take();
            drop(queue);
            if let Some(w) = waker {
                w.wake();
            }
            return None;
        }
        queue.running = true;
        Some(Box::pin(run_pump(self.clone())))
    }

    /// The event alone, to be run by any task (the tests run each in its own).
    #[cfg(test)]
    fn enqueue(&self, fut: impl Future<Output = ()> + Send + 'static) -> BoxFuture {
        lock(&self.queue).chain(fut)
    }
}

impl Queue {
    /// Returns `fut` wrapped to start once the socket's previous event released it (see the
    /// module doc), and to be done only after that event is done.
    fn chain(&mut self, fut: impl Future<Output = ()> + Send + 'static) -> BoxFuture {
        let (release, released) = oneshot::channel::<()>();
        let (done, done_rx) = oneshot::channel::<()>();
        let prev = self.tail.replace(Tail {
            released,
            done: done_rx,
        });
        Box::pin(async move {
            let prev_done = match prev {
                Some(prev) => {
                    // An error only means the previous event's task is gone: it is done
                    // either way.
                    let _ = prev.released.await;
                    Some(prev.done)
                }
                None => None,
            };
            let turn = Turn {
                release: Cell::new(Some(release)),
                prev_done: Cell::new(prev_done),
                early: Cell::new(false),
            };
            TURN.scope(turn, async move {
                fut.await;
                // Done means every earlier event is done too.
                wait_turn().await;
            })
            .await;
            drop(done);
        })
    }
}

/// Runs the socket's events until none is left. A panicking event ends alone, as it would
/// in a task of its own (its successors see it done).
async fn run_pump(order: Arc<Order>) {
    let mut events = FuturesUnordered::new();
    std::future::poll_fn(|cx| {
        loop {
            {
                let mut queue = lock(&order.queue);
                for event in queue.submitted.drain(..) {
                    events.push(AssertUnwindSafe(event).catch_unwind());
                }
                if events.is_empty() {
                    queue.running = false;
                    // An idle socket keeps no buffer (the drain left its capacity).
                    queue.submitted = Vec::new();
                    queue.waker = None;
                    return Poll::Ready(());
                }
                match &queue.waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => queue.waker = Some(cx.waker().clone()),
                }
            }
            match events.poll_next_unpin(cx) {
                Poll::Ready(Some(Err(_))) => tracing::error!("an event handler panicked"),
                Poll::Ready(_) => {}
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await
}

/// Lets the running event release its successor as soon as [`queued`] is called.
pub fn allow_early_release() {
    let _ = TURN.try_with(|t| t.early.set(true));
}

/// The running event's Redis command is queued (its order among the socket's events is
/// fixed): the next event may start, if this one allowed it.
pub fn queued() {
    let _ = TURN.try_with(|t| {
        if t.early.get() {
            drop(t.release.take());
        }
    });
}

/// Waits until the previous event of the socket is done: call before anything the event
/// does on this node (a delivery, an ack, a join) when it may have started early.
pub async fn wait_turn() {
    let prev = TURN.try_with(|t| t.prev_done.take()).ok().flatten();
    if let Some(prev) = prev {
        let _ = prev.await;
    }
}

/// Runs `cmd`, whose first poll queues a Redis command on the connection (fred does), as
/// [`queued`] describes: after that first poll the next event may start, and the result is
/// only handed back once the previous event is done.
pub async fn pipelined<T>(cmd: impl Future<Output = T>) -> T {
    let mut cmd = pin!(cmd);
    if let Poll::Ready(out) = futures::poll!(cmd.as_mut()) {
        return out;
    }
    queued();
    wait_turn().await;
    cmd.await
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{sync::Arc, time::Duration};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_sockets_events_run_in_arrival_order_whatever_the_task_order() {
        let order = Order::default();
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut futs = Vec::new();
        for i in 0..20u64 {
            let log = log.clone();
            futs.push(order.enqueue(async move {
                // earlier events take longer: without the queue they would finish last
                tokio::time::sleep(Duration::from_millis(20 - i)).await;
                log.lock().unwrap().push(i);
            }));
        }
        // spawned newest first, like a LIFO scheduler might run them
        let handles: Vec<_> = futs.into_iter().rev().map(tokio::spawn).collect();
        for h in handles {
            h.await.unwrap();
        }
        assert_eq!(*log.lock().unwrap(), (0..20).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_cancelled_event_does_not_block_the_next() {
        let order = Order::default();
        let first = order.enqueue(std::future::pending());
        let second = order.enqueue(async {});
        drop(first); // its task ended without completing
        tokio::time::timeout(Duration::from_secs(1), second)
            .await
            .expect("the queue moves on");
    }

    /// A stand-in for one Redis connection: commands are answered in the order they were
    /// queued, after `rtt`; `log` records (event, what) in the order things happened.
    struct Conn {
        next: Mutex<u64>,
        log: Log,
    }

    type Log = Arc<Mutex<Vec<(u64, &'static str)>>>;

    impl Conn {
        fn new() -> (Arc<Self>, Log) {
            let log = Log::default();
            let conn = Conn {
                next: Mutex::new(0),
                log: log.clone(),
            };
            (Arc::new(conn), log)
        }

        /// A command future that, like fred's, queues itself at its first poll.
        async fn publish(&self, event: u64, rtt: Duration) {
            let seq = {
                let mut n = self.next.lock().unwrap();
                *n += 1;
                *n
            };
            self.log.lock().unwrap().push((event, "queued"));
            // later commands finish sooner: only the turn keeps the local effects in order
            tokio::time::sleep(rtt.saturating_sub(Duration::from_millis(seq))).await;
        }
    }

    /// Spawns the events newest first (as a LIFO scheduler might run them) and waits for all.
    async fn run_newest_first(futs: Vec<BoxFuture>) {
        let handles: Vec<_> = futs.into_iter().rev().map(tokio::spawn).collect();
        for h in handles {
            h.await.unwrap();
        }
    }

    async fn broadcast(conn: Arc<Conn>, event: u64, early: bool) {
        if early {
            allow_early_release();
        }
        pipelined(conn.publish(event, Duration::from_millis(50))).await;
        conn.log.lock().unwrap().push((event, "local"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn opted_in_events_overlap_their_round_trips_and_keep_their_order() {
        let (conn, log) = Conn::new();
        let order = Order::default();
        let futs: Vec<_> = (0..10)
            .map(|i| order.enqueue(broadcast(conn.clone(), i, true)))
            .collect();
        let started = tokio::time::Instant::now();
        run_newest_first(futs).await;
        let log = log.lock().unwrap().clone();
        let queued: Vec<u64> = log
            .iter()
            .filter(|e| e.1 == "queued")
            .map(|e| e.0)
            .collect();
        let local: Vec<u64> = log.iter().filter(|e| e.1 == "local").map(|e| e.0).collect();
        assert_eq!(
            queued,
            (0..10).collect::<Vec<_>>(),
            "queued in arrival order"
        );
        assert_eq!(
            local,
            (0..10).collect::<Vec<_>>(),
            "delivered in arrival order"
        );
        // all ten were queued before the first round trip ended
        let first_local = log.iter().position(|e| e.1 == "local").unwrap();
        assert_eq!(first_local, 10, "{log:?}");
        // ten round trips of 40-50 ms one after the other would take > 400 ms
        assert!(started.elapsed() < Duration::from_millis(300));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_that_did_not_opt_in_wait_for_the_previous_to_end() {
        let (conn, log) = Conn::new();
        let order = Order::default();
        // an opted-in broadcast, then one that is not, then an opted-in one
        let futs = vec![
            order.enqueue(broadcast(conn.clone(), 0, true)),
            order.enqueue(broadcast(conn.clone(), 1, false)),
            order.enqueue(broadcast(conn.clone(), 2, true)),
        ];
        run_newest_first(futs).await;
        let log = log.lock().unwrap().clone();
        assert_eq!(
            log,
            vec![
                (0, "queued"),
                (1, "queued"), // 0 released 1 early
                (0, "local"),
                (1, "local"), // 1 did not release 2: 2 starts after 1 ended
                (2, "queued"),
                (2, "local"),
            ]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_pump_runs_a_sockets_events_in_order_and_ends_with_the_last() {
        let order = Arc::new(Order::default());
        let log = Arc::new(Mutex::new(Vec::new()));
        let event = |i: u64| {
            let log = log.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(10 - i)).await;
                log.lock().unwrap().push(i);
            }
        };
        let pump = order.submit(event(0)).expect("no pump yet: one to spawn");
        for i in 1..10 {
            assert!(
                order.submit(event(i)).is_none(),
                "the running pump takes it"
            );
        }
        tokio::spawn(pump).await.unwrap();
        assert_eq!(*log.lock().unwrap(), (0..10).collect::<Vec<_>>());
        // the pump ended with the last event; the next event gets a new one
        let pump = order.submit(event(3)).expect("a new pump");
        tokio::spawn(pump).await.unwrap();
        assert_eq!(log.lock().unwrap().len(), 11);
    }

    #[tokio::test]
    async fn a_panicking_event_ends_alone() {
        let order = Arc::new(Order::default());
        let (tx, rx) = oneshot::channel();
        let pump = order.submit(async { panic!("handler bug") }).unwrap();
        assert!(
            order
                .submit(async move {
                    tx.send(()).unwrap();
                })
                .is_none()
        );
        tokio::spawn(pump)
            .await
            .expect("the pump itself does not panic");
        rx.await.expect("the next event ran");
    }

    #[tokio::test]
    async fn outside_an_event_nothing_waits() {
        allow_early_release();
        queued();
        wait_turn().await;
        assert_eq!(pipelined(async { 7 }).await, 7);
    }
}
