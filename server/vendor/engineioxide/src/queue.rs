//! The per-socket packet queue and the pong signal (patched in for realtime-server).
//!
//! Both replace tokio `mpsc` channels. A tokio bounded channel allocates its first block of
//! 32 slots up front, and a slot here is a whole [`PacketBuf`] (about 170 bytes), so every
//! socket kept about 6 KiB for a queue that is empty nearly all the time. This queue has the
//! same bound and the same subset of the `mpsc` API that engineioxide uses, but its buffer
//! only exists while packets are waiting: it is freed whenever the queue runs empty.
//!
//! It also holds the socket's volatile packets (formerly a `watch` channel, another ~0.5 KiB
//! per socket): the latest one only, received after the queued packets.
//!
//! Sender and receiver always live in the same [`Socket`](crate::Socket), so the queue ends
//! when the receiver closes it, never because the senders are gone.
//!
//! Once a websocket connection's task owns the receiver ([`Receiver::enable_frames`]), packets
//! are encoded into websocket frames as they are sent, into one byte buffer that the task takes
//! whole: a broadcast's packet then costs each receiver one copy of its payload, instead of
//! moving a [`PacketBuf`] into and out of the queue's ring (which also grew from empty for
//! every batch) and copying the payload afterwards.

use std::{
    collections::VecDeque,
    future::poll_fn,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, Waker},
};

use engineioxide_core::{Packet, PacketBuf, ProtocolVersion};
use smallvec::smallvec;

use crate::transport::ws::encode_frame;
use tokio::sync::{
    Notify,
    mpsc::error::{TryRecvError, TrySendError},
};

struct State {
    buf: VecDeque<PacketBuf>,
    /// Slots held by [`Permit`]s that are not yet used.
    reserved: usize,
    closed: bool,
    rx_waker: Option<Waker>,
    /// The latest volatile packets not yet received (boxed: rarely used).
    volatile: Option<Box<PacketBuf>>,
    /// Set by [`Receiver::enable_frames`]: packets are encoded into `frames` when sent, and
    /// `buf` stays empty.
    frames_protocol: Option<ProtocolVersion>,
    /// Websocket frames of the packets sent since the receiver last took them.
    frames: Vec<u8>,
    /// How many packet buffers `frames` holds (they count against the bound like queued ones).
    framed: usize,
}

impl State {
    fn len(&self) -> usize {
        self.buf.len() + self.framed + self.reserved
    }

    /// Queues one packet buffer (encoded at once in frame mode).
    fn push(&mut self, item: PacketBuf) {
        match self.frames_protocol {
            Some(protocol) => {
                for packet in item {
                    encode_frame(&mut self.frames, packet, protocol);
                }
                self.framed += 1;
            }
            None => self.buf.push_back(item),
        }
    }

    /// [`State::push`] of a single packet, without building a [`PacketBuf`] in frame mode.
    fn push_one(&mut self, packet: Packet) {
        match self.frames_protocol {
            Some(protocol) => {
                encode_frame(&mut self.frames, packet, protocol);
                self.framed += 1;
            }
            None => self.buf.push_back(smallvec![packet]),
        }
    }

    /// Frame mode: moves the frames sent so far to the end of `out` (a swap of buffers when
    /// `out` is empty), then those of the volatile packets; whether anything was taken.
    fn take_frames(&mut self, out: &mut Vec<u8>) -> bool {
        let Some(protocol) = self.frames_protocol else {
            return false;
        };
        let volatile = self.volatile.take();
        if self.framed == 0 && volatile.is_none() {
            return false;
        }
        if out.is_empty() {
            std::mem::swap(out, &mut self.frames);
        } else {
            out.extend_from_slice(&self.frames);
            self.frames.clear();
        }
        self.framed = 0;
        for packet in volatile.into_iter().flat_map(|b| *b) {
            encode_frame(out, packet, protocol);
        }
        true
    }
}

struct Inner {
    state: Mutex<State>,
    /// Set by [`Sender::cancel`]: the session is closing (a copy of its cancellation token's
    /// state, cheaper to read at every wake-up of the connection's task).
    cancelled: AtomicBool,
    cap: usize,
    /// Woken when the queue is closed ([`Sender::closed`]).
    closed: Notify,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // No code panics while holding the lock with the state half-updated.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Creates a queue holding at most `cap` packet buffers (queued plus reserved).
pub(crate) fn channel(cap: usize) -> (Sender, Receiver) {
    let inner = Arc::new(Inner {
        state: Mutex::new(State {
            buf: VecDeque::new(),
            reserved: 0,
            closed: false,
            rx_waker: None,
            volatile: None,
            frames_protocol: None,
            frames: Vec::new(),
            framed: 0,
        }),
        cap: cap.max(1),
        closed: Notify::new(),
        cancelled: AtomicBool::new(false),
    });
    (
        Sender {
            inner: inner.clone(),
        },
        Receiver { inner },
    )
}

/// The sending half.
pub(crate) struct Sender {
    inner: Arc<Inner>,
}

/// A reserved slot in the queue; dropping it unused gives the slot back.
pub(crate) struct Permit<'a> {
    inner: &'a Inner,
}

/// The receiving half.
pub(crate) struct Receiver {
    inner: Arc<Inner>,
}

impl Sender {
    /// Queues `item` unless the queue is full or closed.
    // The error hands the item back, as tokio's `try_send` (which this replaces) does.
    #[allow(clippy::result_large_err)]
    pub(crate) fn try_send(&self, item: PacketBuf) -> Result<(), TrySendError<PacketBuf>> {
        self.try_push(item, State::push)
    }

    /// [`Sender::try_send`] of a single packet: in frame mode it is encoded without ever being
    /// wrapped in a [`PacketBuf`] (the path of every receiver of a broadcast).
    #[allow(clippy::result_large_err)]
    pub(crate) fn try_send_one(&self, packet: Packet) -> Result<(), TrySendError<Packet>> {
        self.try_push(packet, State::push_one)
    }

    /// Queues `item` with `push` unless the queue is full or closed, then wakes the receiver.
    #[allow(clippy::result_large_err)]
    fn try_push<T>(&self, item: T, push: fn(&mut State, T)) -> Result<(), TrySendError<T>> {
        let mut st = self.inner.lock();
        if st.closed {
            return Err(TrySendError::Closed(item));
        }
        if st.len() >= self.inner.cap {
            return Err(TrySendError::Full(item));
        }
        push(&mut st, item);
        let waker = st.rx_waker.take();
        drop(st);
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// Reserves one slot, so that a later [`Permit::send`] cannot fail.
    pub(crate) fn try_reserve(&self) -> Result<Permit<'_>, TrySendError<()>> {
        let mut st = self.inner.lock();
        if st.closed {
            return Err(TrySendError::Closed(()));
        }
        if st.len() >= self.inner.cap {
            return Err(TrySendError::Full(()));
        }
        st.reserved += 1;
        Ok(Permit { inner: &self.inner })
    }

    /// Replaces the pending volatile packets, if any, with `item`; `false` if the queue is
    /// closed.
    pub(crate) fn send_volatile(&self, item: PacketBuf) -> bool {
        let mut st = self.inner.lock();
        if st.closed {
            return false;
        }
        st.volatile = Some(Box::new(item));
        let waker = st.rx_waker.take();
        drop(st);
        if let Some(w) = waker {
            w.wake();
        }
        true
    }

    /// Marks the session as closing and wakes the receiver's task.
    pub(crate) fn cancel(&self) {
        let waker = {
            let mut st = self.inner.lock();
            self.inner.cancelled.store(true, Ordering::Release);
            st.rx_waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Whether the receiver has closed the queue.
    pub(crate) fn is_closed(&self) -> bool {
        self.inner.lock().closed
    }

    /// Completes once the receiver has closed the queue.
    pub(crate) async fn closed(&self) {
        loop {
            let notified = self.inner.closed.notified();
            if self.is_closed() {
                return;
            }
            notified.await;
        }
    }
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.inner.lock();
        f.debug_struct("Sender")
            .field("len", &(st.buf.len() + st.framed))
            .field("cap", &self.inner.cap)
            .field("closed", &st.closed)
            .finish()
    }
}

impl Permit<'_> {
    /// Queues `item` in the reserved slot (even if the queue was closed meanwhile, as tokio
    /// does: the receiver drops it).
    pub(crate) fn send(self, item: PacketBuf) {
        let mut st = self.inner.lock();
        st.reserved -= 1;
        st.push(item);
        let waker = st.rx_waker.take();
        drop(st);
        std::mem::forget(self);
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.inner.lock().reserved -= 1;
    }
}

impl Receiver {
    /// The next packet buffer (queued ones first, then the volatile one); `None` once the
    /// queue is closed and empty.
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<PacketBuf>> {
        let mut st = self.inner.lock();
        match pop(&mut st) {
            Some(item) => Poll::Ready(Some(item)),
            None if st.closed => Poll::Ready(None),
            None => {
                match &mut st.rx_waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    w => *w = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
        }
    }

    /// Frame mode, for the websocket connection's task once it owns the receiver: from now on
    /// packets are encoded as websocket frames of `protocol` when sent (those already queued
    /// first, in order), and are received with [`Receiver::poll_frames`] only.
    pub(crate) fn enable_frames(&mut self, protocol: ProtocolVersion) {
        let mut st = self.inner.lock();
        if st.frames_protocol.is_some() {
            return;
        }
        st.frames_protocol = Some(protocol);
        for item in std::mem::take(&mut st.buf) {
            st.push(item);
        }
    }

    /// Frame mode: appends the frames of every packet sent since the last call to `out` (a
    /// swap of buffers when `out` is empty), then those of the volatile packets; `false` once
    /// the queue is closed and nothing is left.
    pub(crate) fn poll_frames(&mut self, cx: &mut Context<'_>, out: &mut Vec<u8>) -> Poll<bool> {
        let mut st = self.inner.lock();
        if st.take_frames(out) {
            return Poll::Ready(true);
        }
        if st.closed {
            return Poll::Ready(false);
        }
        match &mut st.rx_waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            w => *w = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// [`Receiver::poll_frames`] without waiting: whether anything was taken.
    pub(crate) fn try_frames(&mut self, out: &mut Vec<u8>) -> bool {
        self.inner.lock().take_frames(out)
    }

    /// Waits for the next packet buffer; `None` once the queue is closed and empty.
    #[cfg_attr(not(any(test, feature = "__test_harness")), allow(dead_code))]
    pub(crate) async fn recv(&mut self) -> Option<PacketBuf> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Wakes `waker` at the next packet, volatile packet, close or [`Sender::cancel`].
    pub(crate) fn register(&mut self, waker: &Waker) {
        let mut st = self.inner.lock();
        match &mut st.rx_waker {
            Some(w) if w.will_wake(waker) => {}
            w => *w = Some(waker.clone()),
        }
    }

    /// Whether [`Sender::cancel`] was called.
    pub(crate) fn is_cancelled(&self) -> bool {
        self.inner.cancelled.load(Ordering::Acquire)
    }

    /// The next packet buffer if one is waiting.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn try_recv(&mut self) -> Result<PacketBuf, TryRecvError> {
        let mut st = self.inner.lock();
        match pop(&mut st) {
            Some(item) => Ok(item),
            None if st.closed => Err(TryRecvError::Disconnected),
            None => Err(TryRecvError::Empty),
        }
    }

    /// Closes the queue: sends and reservations fail from now on, the packets already queued
    /// can still be received.
    pub(crate) fn close(&mut self) {
        let waker = {
            let mut st = self.inner.lock();
            st.closed = true;
            st.rx_waker.take()
        };
        self.inner.closed.notify_waiters();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.close();
    }
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver").finish_non_exhaustive()
    }
}

/// Pops the oldest buffer, and frees the queue's storage once it is empty: an idle socket
/// then holds no buffer at all. The volatile packets come after the queued ones.
fn pop(st: &mut State) -> Option<PacketBuf> {
    let Some(item) = st.buf.pop_front() else {
        return st.volatile.take().map(|b| *b);
    };
    if st.buf.is_empty() {
        st.buf = VecDeque::new();
    }
    Some(item)
}

/// A pong (or, in protocol v3, a ping) from the client, for the heartbeat job: at most one is
/// remembered, like the one-slot channel it replaces, without that channel's allocation.
#[derive(Debug, Default)]
pub(crate) struct Signal {
    set: AtomicBool,
    notify: Notify,
}

impl Signal {
    /// Records a pong and wakes the waiting heartbeat job.
    pub(crate) fn signal(&self) {
        self.set.store(true, Ordering::Release);
        self.notify.notify_one();
    }

    /// Consumes a recorded pong, if any.
    pub(crate) fn take(&self) -> bool {
        self.set.swap(false, Ordering::AcqRel)
    }

    /// Waits for a pong and consumes it.
    pub(crate) async fn wait(&self) {
        loop {
            if self.take() {
                return;
            }
            self.notify.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smallvec::smallvec;

    use engineioxide_core::Packet;

    #[tokio::test]
    async fn bounded_by_queued_plus_reserved() {
        let (tx, mut rx) = channel(2);
        tx.try_send(smallvec![Packet::Ping]).unwrap();
        let permit = tx.try_reserve().unwrap();
        assert!(matches!(
            tx.try_send(smallvec![Packet::Pong]),
            Err(TrySendError::Full(_))
        ));
        assert!(matches!(tx.try_reserve(), Err(TrySendError::Full(()))));
        drop(permit);
        let permit = tx.try_reserve().unwrap();
        permit.send(smallvec![Packet::Noop]);
        assert!(matches!(rx.recv().await.unwrap()[0], Packet::Ping));
        assert!(matches!(rx.try_recv().unwrap()[0], Packet::Noop));
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    }

    #[tokio::test]
    async fn storage_is_freed_when_empty() {
        let (tx, mut rx) = channel(8);
        tx.try_send(smallvec![Packet::Ping]).unwrap();
        tx.try_send(smallvec![Packet::Pong]).unwrap();
        rx.recv().await.unwrap();
        assert!(rx.inner.lock().buf.capacity() > 0);
        rx.recv().await.unwrap();
        assert_eq!(rx.inner.lock().buf.capacity(), 0);
    }

    #[tokio::test]
    async fn close_keeps_queued_packets_and_refuses_new_ones() {
        let (tx, mut rx) = channel(8);
        tx.try_send(smallvec![Packet::Close]).unwrap();
        let closed = tokio::spawn({
            let inner = tx.inner.clone();
            async move { Sender { inner }.closed().await }
        });
        assert!(!tx.is_closed());
        rx.close();
        assert!(tx.is_closed());
        closed.await.unwrap();
        assert!(matches!(
            tx.try_send(smallvec![Packet::Ping]),
            Err(TrySendError::Closed(_))
        ));
        assert!(matches!(tx.try_reserve(), Err(TrySendError::Closed(()))));
        assert!(matches!(rx.recv().await.unwrap()[0], Packet::Close));
        assert!(rx.recv().await.is_none());
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken() {
        let (tx, mut rx) = channel(8);
        let recv = tokio::spawn(async move { rx.recv().await.map(|b| b.len()) });
        tokio::task::yield_now().await;
        tx.try_send(smallvec![Packet::Ping, Packet::Pong]).unwrap();
        assert_eq!(recv.await.unwrap(), Some(2));
    }

    #[tokio::test]
    async fn volatile_packets_come_last_and_only_the_latest() {
        let (tx, mut rx) = channel(8);
        assert!(tx.send_volatile(smallvec![Packet::Ping]));
        assert!(tx.send_volatile(smallvec![Packet::Pong]));
        tx.try_send(smallvec![Packet::Noop]).unwrap();
        assert!(matches!(rx.recv().await.unwrap()[0], Packet::Noop));
        assert!(matches!(rx.recv().await.unwrap()[0], Packet::Pong));
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
        rx.close();
        assert!(!tx.send_volatile(smallvec![Packet::Ping]));
    }

    fn frames_of(packets: Vec<Packet>) -> Vec<u8> {
        let mut out = Vec::new();
        for p in packets {
            encode_frame(&mut out, p, ProtocolVersion::V4);
        }
        out
    }

    fn msg(s: &'static str) -> Packet {
        Packet::Message(s.into())
    }

    #[tokio::test]
    async fn frame_mode_keeps_the_order_of_queued_sent_and_volatile_packets() {
        let (tx, mut rx) = channel(8);
        tx.try_send(smallvec![msg("a")]).unwrap();
        let permit = tx.try_reserve().unwrap();
        rx.enable_frames(ProtocolVersion::V4);
        assert!(rx.inner.lock().buf.is_empty());
        tx.try_send_one(msg("b")).unwrap();
        assert!(tx.send_volatile(smallvec![msg("v1")]));
        assert!(tx.send_volatile(smallvec![msg("v2")]));
        permit.send(smallvec![msg("c"), Packet::Binary(vec![1, 2].into())]);
        tx.try_send_one(Packet::Ping).unwrap();

        // Bytes not yet written stay first; the new frames follow them.
        let mut out = b"pending".to_vec();
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert_eq!(rx.poll_frames(&mut cx, &mut out), Poll::Ready(true));
        let mut expected = b"pending".to_vec();
        expected.extend(frames_of(vec![
            msg("a"),
            msg("b"),
            msg("c"),
            Packet::Binary(vec![1, 2].into()),
            Packet::Ping,
            msg("v2"),
        ]));
        assert_eq!(out, expected);
        assert_eq!(rx.poll_frames(&mut cx, &mut out), Poll::Pending);
        // A polling reader would find nothing: the packets are frames now.
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    }

    #[tokio::test]
    async fn frame_mode_keeps_the_bound_and_the_close() {
        let (tx, mut rx) = channel(2);
        rx.enable_frames(ProtocolVersion::V4);
        tx.try_send_one(msg("a")).unwrap();
        tx.try_send(smallvec![msg("b")]).unwrap();
        assert!(matches!(
            tx.try_send_one(msg("c")),
            Err(TrySendError::Full(_))
        ));
        assert!(matches!(tx.try_reserve(), Err(TrySendError::Full(()))));

        // Taken into an empty buffer: the slots are free again.
        let mut out = Vec::new();
        assert!(rx.try_frames(&mut out));
        assert_eq!(out, frames_of(vec![msg("a"), msg("b")]));
        assert!(!rx.try_frames(&mut out));
        tx.try_send_one(msg("c")).unwrap();

        // A waiting receiver is woken by a send; after the close, what was sent is still taken
        // and then the end is reported.
        let all = frames_of(vec![msg("c"), msg("d")]);
        let recv = tokio::spawn(async move {
            let mut out = Vec::new();
            while poll_fn(|cx| rx.poll_frames(cx, &mut out)).await {
                if out == all {
                    rx.close();
                }
            }
            out
        });
        tokio::task::yield_now().await;
        tx.try_send_one(msg("d")).unwrap();
        let out = tokio::time::timeout(std::time::Duration::from_secs(5), recv)
            .await
            .expect("the receiver saw every frame, then the end")
            .unwrap();
        assert_eq!(out, frames_of(vec![msg("c"), msg("d")]));
        assert!(matches!(
            tx.try_send_one(msg("e")),
            Err(TrySendError::Closed(_))
        ));
    }

    #[tokio::test]
    async fn signal_remembers_one_pong() {
        let s = Signal::default();
        assert!(!s.take());
        s.signal();
        s.signal();
        s.wait().await;
        assert!(!s.take());
        let s = Arc::new(s);
        let waiter = tokio::spawn({
            let s = s.clone();
            async move { s.wait().await }
        });
        tokio::task::yield_now().await;
        s.signal();
        waiter.await.unwrap();
    }
}
