//! The ws transport module is responsible for handling websocket connections
//! The only public function is [`new_req`] which is used to upgrade a http request to a websocket connection
//!
//! Other functions are used internally to handle the websocket connection through tasks and channels
//! and to handle upgrade from polling to ws

use std::{
    future::poll_fn,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, Wake, Waker, ready},
    time::Duration,
};

use futures_util::{SinkExt, StreamExt, task::AtomicWaker};
use http::{HeaderValue, Request, Response, StatusCode, request::Parts};
use smallvec::smallvec;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    time::{Instant, Sleep},
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        self, Message,
        handshake::derive_accept_key,
        protocol::frame::{
            FrameHeader,
            coding::{Data, OpCode},
        },
        protocol::{Role, WebSocketConfig},
    },
};
use tokio_util::future::FutureExt as _;

use engineioxide_core::{Packet, ProtocolVersion, Sid, Str, TransportType};

use crate::{
    DisconnectReason, Socket, body::ResponseBody, config::EngineIoConfig, engine::EngineIo,
    errors::Error, handler::EngineIoHandler, queue, transport::make_open_packet,
};

/// Create a response for websocket upgrade
fn ws_response<B>(ws_key: &HeaderValue) -> Response<ResponseBody<B>> {
    let derived = derive_accept_key(ws_key.as_bytes());
    let sec = derived.parse::<HeaderValue>().unwrap();
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(http::header::UPGRADE, HeaderValue::from_static("websocket"))
        .header(
            http::header::CONNECTION,
            HeaderValue::from_static("Upgrade"),
        )
        .header(http::header::SEC_WEBSOCKET_ACCEPT, sec)
        .body(ResponseBody::empty_response())
        .unwrap() // we are only using constants
}

/// Upgrade a websocket request to create a websocket connection.
///
/// If a sid is provided in the query it means that is is upgraded from an existing HTTP polling request.
/// In this case the http polling request is closed and the SID is kept for the websocket
pub fn new_req<R: Send + 'static, B, H: EngineIoHandler>(
    engine: Arc<EngineIo<H>>,
    protocol: ProtocolVersion,
    sid: Option<Sid>,
    req: Request<R>,
) -> Result<Response<ResponseBody<B>>, Error> {
    let (parts, body) = req.into_parts();

    let ws_key = parts
        .headers
        .get("Sec-WebSocket-Key")
        .ok_or(Error::InvalidWebSocketKey)?
        .clone();

    let session_parts = session_parts(&parts);
    let req = Request::from_parts(parts, body);

    tokio::spawn(async move {
        let conn = hyper::upgrade::on(req)
            .await
            .map(hyper_util::rt::TokioIo::new);

        let res = match conn {
            Ok(conn) => on_init(engine.clone(), conn, protocol, sid, session_parts).await,
            Err(_e) => {
                #[cfg(feature = "tracing")]
                tracing::debug!("ws upgrade error: {}", _e);
                return;
            }
        };

        match res {
            Ok(_) => {
                #[cfg(feature = "tracing")]
                tracing::debug!(?sid, "ws closed")
            }
            Err(Error::MultipleWebsocketRequests) => {}
            Err(_e) => {
                #[cfg(feature = "tracing")]
                tracing::debug!(?sid, "ws closed with error: {_e}");
                if let Some(sid) = sid {
                    engine.close_session(sid, DisconnectReason::TransportError);
                }
            }
        }
    });

    Ok(ws_response(&ws_key))
}

/// The copy of the request parts the session keeps, without what only served the upgrade
/// (hyper's upgrade handle, which would keep its channel allocated, and the handshake key):
/// they would stay allocated for the whole session.
fn session_parts(parts: &Parts) -> Parts {
    let mut kept = parts.clone();
    kept.extensions.remove::<hyper::upgrade::OnUpgrade>();
    if kept.extensions.is_empty() {
        kept.extensions = http::Extensions::new();
    }
    kept.headers.remove(http::header::SEC_WEBSOCKET_KEY);
    if kept.headers.is_empty() {
        kept.headers = http::HeaderMap::new();
    }
    kept
}

/// Handle a websocket connection upgrade
///
/// Sends an open packet if it is not an upgrade from a polling request
///
/// Then reads and writes the connection until it ends, in this one task (see [`run`]).
#[cfg_attr(
    feature = "tracing",
    tracing::instrument(level = "trace", name = "init_websocket", skip(engine, conn, req_data))
)]
pub async fn on_init<H: EngineIoHandler, S>(
    engine: Arc<EngineIo<H>>,
    conn: S,
    protocol: ProtocolVersion,
    sid: Option<Sid>,
    req_data: Parts,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(engine.config.ws_read_buffer_size)
        .max_message_size(Some(engine.config.ws_max_message_size))
        .max_frame_size(Some(engine.config.ws_max_frame_size));

    let ws_init = move || WebSocketStream::from_raw_socket(conn, Role::Server, Some(ws_config));
    let (socket, ws, heartbeat) = if let Some(sid) = sid {
        match engine.get_socket(sid) {
            None => return Err(Error::UnknownSessionID(sid)),
            Some(socket) if socket.is_ws() => return Err(Error::MultipleWebsocketRequests),
            Some(socket) => {
                let mut ws = ws_init().await;

                // Boxed, like every step that ends before the connection's main loop: the
                // task keeps the size of its largest state for the whole connection.
                let upgrade_fut = upgrade_handshake::<H, S>(&socket, &mut ws);
                let upgrade = tokio::time::timeout(engine.config.upgrade_timeout, upgrade_fut)
                    .with_cancellation_token(&socket.cancellation_token);
                match Box::pin(upgrade).await {
                    Some(Ok(res)) => res?,
                    Some(Err(_)) => {
                        #[cfg(feature = "tracing")]
                        tracing::debug!(?sid, "ws upgrade timed out, closing session");
                        engine.close_session(socket.id, DisconnectReason::TransportError);
                        return Err(Error::Upgrade);
                    }
                    None => {
                        #[cfg(feature = "tracing")]
                        tracing::debug!(?sid, "socket is being closed");
                        return Err(Error::Upgrade);
                    }
                }
                // The heartbeat job of the polling session goes on.
                (socket, ws, None)
            }
        }
    } else {
        let socket = engine.create_session(protocol, TransportType::Websocket, req_data, false);

        #[cfg(feature = "tracing")]
        tracing::debug!("new websocket connection");

        let mut ws = ws_init().await;
        Box::pin(init_handshake(socket.id, &mut ws, &engine.config)).await?;
        let heartbeat = if socket.protocol == ProtocolVersion::V4 {
            socket.start_heartbeat();
            Some(Heartbeat::new(
                engine.config.ping_interval,
                engine.config.ping_timeout,
            ))
        } else {
            socket
                .clone()
                .spawn_heartbeat(engine.config.ping_interval, engine.config.ping_timeout);
            None
        };
        (socket, ws, heartbeat)
    };
    // The connection gets a task of its own, sized for its main loop only: this task (and
    // its space for the handshake's states) ends here.
    tokio::spawn(run::<H, S>(engine, socket, ws, heartbeat));
    Ok(())
}

/// How the read side of a connection ended.
enum Ended {
    /// The client closed the session or the connection (engine.io close packet, websocket
    /// close frame, end of stream).
    Closed,
    /// A transport or protocol error.
    Error(Error),
    /// The session is being closed by the server (its cancellation token fired).
    Cancelled,
}

/// Serves one websocket connection in a single task: packets from the client go to the
/// handler, packets queued for the client are written (and flushed once per batch), and the
/// v4 heartbeat of a plain websocket session runs here too.
///
/// engineioxide used a reader task, a writer task and a heartbeat task per connection (with
/// the websocket split in two halves); one task holds the same state in about half the memory
/// and saves a task wake-up per delivered packet.
///
/// When the session closes, the packets still queued are written before the websocket is
/// closed, as the separate writer did.
///
/// (A plain function returning an `async move` block: the arguments of an `async fn` are
/// stored twice in its future, and this future lives as long as the connection.)
#[allow(clippy::manual_async_fn)]
fn run<H: EngineIoHandler, S>(
    engine: Arc<EngineIo<H>>,
    socket: Arc<Socket<H::Data>>,
    mut ws: WebSocketStream<S>,
    mut heartbeat: Option<Heartbeat>,
) -> impl Future<Output = ()> + Send + 'static
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async move {
        let (engine, socket) = (&engine, &socket);
        // A polling request that was in progress during an upgrade may still hold the lock. A
        // new websocket session gets it at once, even if it is already closing, so that its
        // queued packets (a close packet) are still written.
        let internal_rx = match socket.internal_rx.try_lock() {
            Ok(lock) => Some(lock),
            Err(_) => {
                let lock = socket
                    .internal_rx
                    .lock()
                    .with_cancellation_token(&socket.cancellation_token);
                Box::pin(lock).await
            }
        };
        let Some(mut internal_rx) = internal_rx else {
            #[cfg(feature = "tracing")]
            tracing::debug!(sid = %socket.id, "session closed before the ws connection started");
            return;
        };
        // Packets are encoded into frames as they are sent from now on (this task is the
        // queue's only receiver until the session ends).
        internal_rx.buffered_rx.enable_frames(socket.protocol);
        let mut io = Io::new();
        // tungstenite keeps the waker of the last task that wrote through it, here the
        // upgrade task's (about 2.4 KiB, kept allocated for the whole connection since this
        // task writes around tungstenite): a flush from this task replaces it.
        let flushed = poll_fn(|cx| Poll::Ready(ws.poll_flush_unpin(cx))).await;
        io.ws_dirty = !matches!(flushed, Poll::Ready(Ok(())));
        let sleep = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(sleep);
        if let Some(hb) = &mut heartbeat {
            hb.start(socket, sleep.as_mut());
        }

        let ended = loop {
            let buffered_rx = &mut internal_rx.buffered_rx;
            let armed = heartbeat.as_ref().is_some_and(Heartbeat::armed);
            // One hand-written poll instead of a `select!` with a cancellation future: the
            // close of the session wakes this task through the queue ([`Socket::cancel`]).
            let event = poll_fn(|cx| {
                if buffered_rx.is_cancelled() {
                    return Poll::Ready(Event::Cancelled);
                }
                if let Poll::Ready(ev) = io.poll(cx, &mut ws, buffered_rx) {
                    return Poll::Ready(Event::Io(ev));
                }
                if armed && sleep.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Event::Heartbeat);
                }
                // Io::poll left the waker with the queue unless it has messages pending.
                if io.has_pending() || io.queue_closed {
                    buffered_rx.register(cx.waker());
                }
                // Checked again after the waker is registered: a close in between is not missed.
                if buffered_rx.is_cancelled() {
                    return Poll::Ready(Event::Cancelled);
                }
                Poll::Pending
            })
            .await;
            match event {
                Event::Cancelled => break Ended::Cancelled,
                Event::Heartbeat => {
                    if let Some(hb) = &mut heartbeat {
                        hb.fire(socket, sleep.as_mut());
                    }
                }
                Event::Io(IoEvent::Message(msg)) => match on_message(engine, socket, msg) {
                    Ok(Flow::Continue) => {}
                    Ok(Flow::Pong) => match &mut heartbeat {
                        Some(hb) => hb.pong(sleep.as_mut()),
                        None => socket.heartbeat.signal(),
                    },
                    Ok(Flow::Closed) => break Ended::Closed,
                    Err(e) => break Ended::Error(e),
                },
                Event::Io(IoEvent::ReadEnd) => break Ended::Closed,
                Event::Io(IoEvent::ReadError(e)) => break Ended::Error(e.into()),
            }
        };

        match ended {
            Ended::Error(ref e) => {
                let reason =
                    Option::<DisconnectReason>::from(e).unwrap_or(DisconnectReason::TransportError);

                #[cfg(feature = "tracing")]
                tracing::debug!("error when handling packet: {:?}", e);
                engine.close_session(socket.id, reason);
            }
            Ended::Closed => {
                #[cfg(feature = "tracing")]
                tracing::debug!(sid = %socket.id, "ws transport was closed");
                engine.close_session(socket.id, DisconnectReason::TransportClose);
            }
            Ended::Cancelled => {
                #[cfg(feature = "tracing")]
                tracing::debug!(sid = %socket.id, "socket is closing");
            }
        }

        // Write what is still queued (e.g. the close packet of a server-side close), then close
        // the websocket. The lock is released first, so the session's disconnect handler does not
        // wait for a slow client.
        if !io.write_failed {
            internal_rx.buffered_rx.try_frames(&mut io.out);
        }
        drop(internal_rx);
        if io.write_failed {
            return;
        }
        let finish = async {
            io.finish(&mut ws).await?;
            SinkExt::close(&mut ws).await
        };
        match Box::pin(tokio::time::timeout(CLOSE_TIMEOUT, finish)).await {
            Ok(Ok(())) => {}
            Ok(Err(_e)) => {
                #[cfg(feature = "tracing")]
                tracing::debug!(sid = %socket.id, "error closing the websocket: {_e}");
            }
            Err(_) => {
                #[cfg(feature = "tracing")]
                tracing::debug!(sid = %socket.id, "the client did not read the end of the websocket in time");
            }
        }
    }
}

/// The longest time the last packets and the close frame may take to reach a closing client
/// (the connection is dropped after it).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// What woke the connection task.
enum Event {
    Cancelled,
    Io(IoEvent),
    Heartbeat,
}

/// An event of the websocket's read side (the write side runs inside [`Io::poll`]).
enum IoEvent {
    Message(Message),
    ReadEnd,
    ReadError(tungstenite::Error),
}

/// What to do after a message from the client.
enum Flow {
    Continue,
    Pong,
    Closed,
}

/// Hands one websocket message from the client to the engine.
fn on_message<H: EngineIoHandler>(
    engine: &Arc<EngineIo<H>>,
    socket: &Arc<Socket<H::Data>>,
    msg: Message,
) -> Result<Flow, Error> {
    match msg {
        Message::Text(msg) => match Packet::parse(socket.protocol, ws_bytes_to_str(msg))? {
            Packet::Close => {
                #[cfg(feature = "tracing")]
                tracing::debug!("[sid={}] closing session", socket.id);
                engine.close_session(socket.id, DisconnectReason::TransportClose);
                Ok(Flow::Closed)
            }
            // A pong (v4) or ping (v3) proves that the client is alive.
            Packet::Pong | Packet::Ping => Ok(Flow::Pong),
            Packet::Message(msg) => {
                engine.handler.on_message(msg, socket.clone());
                Ok(Flow::Continue)
            }
            p => Err(Error::BadPacket(p)),
        },
        Message::Binary(mut data) => {
            if socket.protocol == ProtocolVersion::V3 && !data.is_empty() {
                // The first byte is the message type, which we don't need.
                data = data.split_off(1);
            }
            engine.handler.on_binary(data, socket.clone());
            Ok(Flow::Continue)
        }
        Message::Close(_) => {
            #[cfg(feature = "tracing")]
            tracing::debug!("websocket closed, closing session");
            engine.close_session(socket.id, DisconnectReason::TransportClose);
            Ok(Flow::Closed)
        }
        _ => {
            #[cfg(feature = "tracing")]
            tracing::debug!(sid = ?socket.id, "unexpected ws message");
            Ok(Flow::Continue)
        }
    }
}

/// Most bytes written in one poll before the read side and the other tasks get their turn.
const WRITE_BUDGET: usize = 256 * 1024;
/// Packets are taken from the queue while fewer bytes than this wait to be written.
const OUT_HIGH: usize = 64 * 1024;
/// A write buffer above this capacity is freed once written (an idle connection keeps a small
/// one, so that each delivery does not allocate).
const OUT_KEEP: usize = 4 * 1024;

/// The write side of a connection and its read side's polling.
///
/// Packets are encoded straight into one buffer of websocket frames (a server's frames are
/// not masked) and written with one `write` per batch, instead of a `String` per packet that
/// tungstenite then copies into its own buffer: per delivered packet that saved an allocation,
/// a copy and tungstenite's framing. tungstenite keeps the read side and writes what the
/// protocol makes it write (the reply to a client's ping, the close handshake); the two never
/// interleave: the read side is polled only when this buffer is empty (tungstenite may write a
/// pong while reading), and after tungstenite may have had something to write, it is flushed
/// before this buffer is written.
struct Io {
    /// Encoded frames taken from the socket's queue; `out[pos..]` is not written yet.
    out: Vec<u8>,
    pos: usize,
    /// tungstenite may hold bytes to write (a pong to a client's ping).
    ws_dirty: bool,
    /// A write failed: the connection is broken, and the read side will tell how.
    write_failed: bool,
    queue_closed: bool,
    /// The waker given to the read side, and whether it fired.
    read: Arc<ReadWake>,
    read_waker: Waker,
}

/// The read side's waker: it records that the read side can make progress, then wakes the
/// connection's task. Most wake-ups are a packet to write; they no longer poll the websocket's
/// read side (through tungstenite, hyper's upgrade and the socket's readiness) for nothing.
#[derive(Default)]
struct ReadWake {
    ready: AtomicBool,
    task: AtomicWaker,
}

impl Wake for ReadWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref()
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.ready.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl Io {
    fn new() -> Self {
        let read = Arc::new(ReadWake {
            ready: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        Self {
            out: Vec::new(),
            pos: 0,
            ws_dirty: false,
            write_failed: false,
            queue_closed: false,
            read_waker: Waker::from(read.clone()),
            read,
        }
    }

    /// Whether packets taken from the queue wait to be written.
    fn has_pending(&self) -> bool {
        self.pos < self.out.len()
    }

    /// Writes what is queued (one write per batch), then polls the read side. Ready only
    /// with a read event.
    fn poll<S>(
        &mut self,
        cx: &mut Context<'_>,
        ws: &mut WebSocketStream<S>,
        queue: &mut queue::Receiver,
    ) -> Poll<IoEvent>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut written = 0;
        loop {
            while !self.queue_closed && self.out.len() - self.pos < OUT_HIGH {
                match queue.poll_frames(cx, &mut self.out) {
                    Poll::Ready(true) if self.write_failed => {
                        self.out.clear();
                        self.pos = 0;
                    }
                    Poll::Ready(true) => {}
                    Poll::Ready(false) => self.queue_closed = true,
                    Poll::Pending => break,
                }
            }
            if !self.has_pending() || self.write_failed {
                break;
            }
            if written >= WRITE_BUDGET {
                // Let the read side and the other tasks run; come back at once.
                cx.waker().wake_by_ref();
                break;
            }
            match self.poll_write(cx, ws) {
                Poll::Ready(Ok(n)) => written += n,
                Poll::Ready(Err(e)) => self.write_error(e),
                Poll::Pending => break,
            }
        }

        // tungstenite may write while reading (a pong): only once this buffer is written.
        if self.has_pending() && !self.write_failed {
            return Poll::Pending;
        }
        // Registered before the flag is taken: a read wake-up in between is not missed.
        self.read.task.register(cx.waker());
        if !self.read.ready.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let event = match ws.poll_next_unpin(&mut Context::from_waker(&self.read_waker)) {
            Poll::Ready(Some(Ok(msg))) => {
                if matches!(msg, Message::Ping(_) | Message::Close(_)) {
                    self.ws_dirty = true;
                }
                IoEvent::Message(msg)
            }
            Poll::Ready(Some(Err(e))) => IoEvent::ReadError(e),
            Poll::Ready(None) => IoEvent::ReadEnd,
            Poll::Pending => return Poll::Pending,
        };
        // More may be buffered: the next poll reads again.
        self.read.ready.store(true, Ordering::Release);
        Poll::Ready(event)
    }

    /// One write of the unwritten frames, after what tungstenite may hold.
    fn poll_write<S>(
        &mut self,
        cx: &mut Context<'_>,
        ws: &mut WebSocketStream<S>,
    ) -> Poll<Result<usize, tungstenite::Error>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if self.ws_dirty {
            ready!(ws.poll_flush_unpin(cx))?;
            self.ws_dirty = false;
        }
        let n = ready!(Pin::new(ws.get_mut()).poll_write(cx, &self.out[self.pos..]))?;
        if n == 0 {
            return Poll::Ready(Err(
                std::io::Error::from(std::io::ErrorKind::WriteZero).into()
            ));
        }
        self.pos += n;
        if self.pos == self.out.len() {
            self.pos = 0;
            if self.out.capacity() > OUT_KEEP {
                self.out = Vec::new();
            } else {
                self.out.clear();
            }
        }
        Poll::Ready(Ok(n))
    }

    /// Writes what is left (the session is closing).
    async fn finish<S>(&mut self, ws: &mut WebSocketStream<S>) -> Result<(), tungstenite::Error>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        while self.has_pending() {
            poll_fn(|cx| self.poll_write(cx, ws)).await?;
        }
        Ok(())
    }

    fn write_error(&mut self, _e: tungstenite::Error) {
        #[cfg(feature = "tracing")]
        tracing::debug!("error sending packet: {}", _e);
        self.write_failed = true;
        self.out = Vec::new();
        self.pos = 0;
    }
}

/// Appends `packet` to `out` as one unmasked websocket frame (nothing for a noop packet, which
/// only served a polling request during an upgrade).
pub(crate) fn encode_frame(out: &mut Vec<u8>, packet: Packet, protocol: ProtocolVersion) {
    match packet {
        Packet::Message(msg) => frame(out, Data::Text, b"4", msg.as_bytes()),
        Packet::Binary(bin) | Packet::BinaryV3(bin) => {
            // v3 puts the packet type before the data.
            let prefix: &[u8] = if protocol == ProtocolVersion::V3 {
                &[0x04]
            } else {
                &[]
            };
            frame(out, Data::Binary, prefix, &bin)
        }
        Packet::Noop => {}
        packet => frame(out, Data::Text, b"", String::from(packet).as_bytes()),
    }
}

/// A final, unmasked frame of type `data` with the payload `prefix` + `payload`; the header is
/// tungstenite's (its frames are only built around an owned payload, which would cost the copy
/// this saves).
fn frame(out: &mut Vec<u8>, data: Data, prefix: &[u8], payload: &[u8]) {
    let len = prefix.len() + payload.len();
    out.reserve(len + 10);
    let header = FrameHeader {
        opcode: OpCode::Data(data),
        ..FrameHeader::default()
    };
    header
        .format(len as u64, out)
        .expect("writing to a Vec does not fail");
    out.extend_from_slice(prefix);
    out.extend_from_slice(payload);
}

/// The v4 heartbeat of a websocket session, run by the connection's task: a ping right away
/// and then every `interval`, each to be answered within `timeout`, exactly like
/// [`Socket::spawn_heartbeat`]'s job.
struct Heartbeat {
    interval: Duration,
    timeout: Duration,
    /// When the last ping was due; the next one is due `interval` later.
    last_tick: Instant,
    waiting_pong: bool,
    /// A pong came while none was awaited; it answers the next ping.
    early_pong: bool,
    /// Stopped after a timeout (the session is closing).
    stopped: bool,
}

impl Heartbeat {
    fn new(interval: Duration, timeout: Duration) -> Self {
        Self {
            interval,
            timeout,
            last_tick: Instant::now(),
            waiting_pong: false,
            early_pong: false,
            stopped: false,
        }
    }

    fn armed(&self) -> bool {
        !self.stopped
    }

    fn start<D>(&mut self, socket: &Socket<D>, sleep: Pin<&mut Sleep>)
    where
        D: Default + Send + Sync + 'static,
    {
        self.last_tick = Instant::now();
        self.ping(socket, sleep);
    }

    fn ping<D>(&mut self, socket: &Socket<D>, sleep: Pin<&mut Sleep>)
    where
        D: Default + Send + Sync + 'static,
    {
        #[cfg(feature = "tracing")]
        tracing::trace!(sid = ?socket.id, "emitting ping");
        if socket
            .internal_tx
            .try_send(smallvec![Packet::Ping])
            .is_err()
        {
            self.timed_out(socket);
            return;
        }
        if std::mem::take(&mut self.early_pong) {
            self.last_tick += self.interval;
            sleep.reset(self.last_tick);
        } else {
            self.waiting_pong = true;
            sleep.reset(Instant::now() + self.timeout);
        }
    }

    /// The timer fired: a ping is due, or the pong is late.
    fn fire<D>(&mut self, socket: &Socket<D>, sleep: Pin<&mut Sleep>)
    where
        D: Default + Send + Sync + 'static,
    {
        if self.waiting_pong {
            self.timed_out(socket);
        } else {
            self.ping(socket, sleep);
        }
    }

    fn pong(&mut self, sleep: Pin<&mut Sleep>) {
        if self.waiting_pong {
            self.waiting_pong = false;
            self.last_tick += self.interval;
            sleep.reset(self.last_tick);
        } else {
            self.early_pong = true;
        }
    }

    fn timed_out<D>(&mut self, socket: &Socket<D>)
    where
        D: Default + Send + Sync + 'static,
    {
        #[cfg(feature = "tracing")]
        tracing::debug!(id = ?socket.id, "heartbeat error: {}", Error::HeartbeatTimeout);
        self.stopped = true;
        socket.close(DisconnectReason::HeartbeatTimeout);
    }
}
/// Send a Engine.IO [`OpenPacket`] to initiate a websocket connection
async fn init_handshake<S>(
    sid: Sid,
    ws: &mut WebSocketStream<S>,
    config: &EngineIoConfig,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let packet = Packet::Open(make_open_packet(TransportType::Websocket, sid, config));
    let packet: String = packet.into();
    ws.send(Message::Text(packet.into())).await?;
    Ok(())
}

/// Upgrade a session from a polling request to a websocket request.
///
/// Before upgrading the session the server should send a NOOP packet to any pending polling request.
///
/// ## Handshake :
/// ```text
/// CLIENT                                                 SERVER
///│                                                      │
///│   GET /engine.io/?EIO=4&transport=websocket&sid=...  │
///│ ───────────────────────────────────────────────────► │
///│  ◄─────────────────────────────────────────────────┘ │
///│            HTTP 101 (WebSocket handshake)            │
///│                                                      │
///│            -----  WebSocket frames -----             │
///│  ─────────────────────────────────────────────────►  │
///│                         2probe                       │ (ping packet)
///│  ◄─────────────────────────────────────────────────  │
///│                         3probe                       │ (pong packet)
///│  ─────────────────────────────────────────────────►  │
///│                         5                            │ (upgrade packet)
///│                                                      │
///│            -----  WebSocket frames -----             │
/// ```
#[cfg_attr(
    feature = "tracing",
    tracing::instrument(level = "trace", skip(socket, ws))
)]
async fn upgrade_handshake<H: EngineIoHandler, S>(
    socket: &Arc<Socket<H::Data>>,
    ws: &mut WebSocketStream<S>,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    #[cfg(feature = "tracing")]
    tracing::debug!("starting websocket connection upgrade");

    // The socket is upgrading, from now on all polling
    // request will return a `Packet::Noop`
    socket.start_upgrade();

    // We send a last Noop request to close a potential waiting polling request.
    // (The queue has no waiting send: a session whose queue is full cannot upgrade.)
    socket
        .internal_tx
        .try_send(smallvec![Packet::Noop])
        .map_err(|_| Error::Upgrade)?;

    // wait for any current polling connection to finish by waiting for the socket to be unlocked
    // All other polling connection will be immediately closed with a NOOP packet.
    let _lock = socket.internal_rx.lock().await;

    // Fetch the next packet from the ws stream, it should be a PingUpgrade packet
    let msg = match ws.next().await {
        Some(Ok(Message::Text(d))) => d,
        _ => Err(Error::Upgrade)?,
    };
    match Packet::parse(socket.protocol, ws_bytes_to_str(msg))? {
        Packet::PingUpgrade => {
            #[cfg(feature = "tracing")]
            tracing::debug!("received first ping upgrade");
            // Respond with a PongUpgrade packet
            ws.send(Message::Text(String::from(Packet::PongUpgrade).into()))
                .await?;
        }
        p => Err(Error::BadPacket(p))?,
    };

    // Fetch the next packet from the ws stream, it should be an Upgrade packet
    let msg = match ws.next().await {
        Some(Ok(Message::Text(d))) => d,
        Some(Ok(Message::Close(_))) => {
            #[cfg(feature = "tracing")]
            tracing::debug!("ws stream closed before upgrade");
            Err(Error::Upgrade)?
        }
        _ => {
            #[cfg(feature = "tracing")]
            tracing::debug!("unexpected ws message before upgrade");
            Err(Error::Upgrade)?
        }
    };
    match Packet::parse(socket.protocol, ws_bytes_to_str(msg))? {
        Packet::Upgrade => {
            #[cfg(feature = "tracing")]
            tracing::debug!("ws upgraded successfully")
        }
        p => Err(Error::BadPacket(p))?,
    };

    socket.upgrade_to_websocket();
    Ok(())
}

fn ws_bytes_to_str(bytes: tungstenite::Utf8Bytes) -> Str {
    // SAFETY: the bytes are guaranteed to be valid UTF-8 by the tungstenite parser
    unsafe { Str::from_bytes_unchecked(bytes.into()) }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use futures_util::StreamExt;
    use http::Request;
    use tokio::io::DuplexStream;

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(1);

    #[derive(Debug)]
    struct StubHandler;
    impl EngineIoHandler for StubHandler {
        type Data = ();
        fn on_connect(self: Arc<Self>, _: Arc<Socket<()>>) {}
        fn on_disconnect(&self, _: Arc<Socket<()>>, _: DisconnectReason) {}
        fn on_message(self: &Arc<Self>, _: Str, _: Arc<Socket<()>>) {}
        fn on_binary(self: &Arc<Self>, _: Bytes, _: Arc<Socket<()>>) {}
    }

    fn socket() -> Arc<Socket<()>> {
        Arc::new(Socket::new(
            ProtocolVersion::V4,
            TransportType::Websocket,
            &EngineIoConfig::default(),
            Request::<()>::default().into_parts().0,
            Box::new(|_, _| ()),
            false,
        ))
    }

    async fn ws_pair() -> (WebSocketStream<DuplexStream>, WebSocketStream<DuplexStream>) {
        let (server, client) = tokio::io::duplex(1024);
        (
            WebSocketStream::from_raw_socket(server, Role::Server, None).await,
            WebSocketStream::from_raw_socket(client, Role::Client, None).await,
        )
    }

    fn engine() -> Arc<EngineIo<StubHandler>> {
        Arc::new(EngineIo::new(
            Arc::new(StubHandler),
            EngineIoConfig::default(),
        ))
    }

    async fn next_text(client: &mut WebSocketStream<DuplexStream>) -> String {
        match tokio::time::timeout(TIMEOUT, client.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => t.to_string(),
            other => panic!("expected a text message, got {other:?}"),
        }
    }

    #[test]
    fn session_parts_drop_what_served_the_upgrade_only() {
        let req = Request::builder()
            .uri("/engine.io/?EIO=4&transport=websocket")
            .header(http::header::SEC_WEBSOCKET_KEY, "dGhlIHNhbXBsZSBub25jZQ==")
            .header("x-forwarded-for", "10.0.0.1")
            .body(())
            .unwrap();
        let kept = session_parts(&req.into_parts().0);
        assert_eq!(kept.uri, "/engine.io/?EIO=4&transport=websocket");
        assert_eq!(kept.headers.len(), 1);
        assert_eq!(kept.headers["x-forwarded-for"], "10.0.0.1");
        assert!(kept.extensions.is_empty());
    }

    /// A polling request can still hold the lock at the end of an upgrade.
    #[tokio::test]
    async fn writer_waits_for_the_lock_of_a_polling_request() {
        let socket = socket();
        let (server, mut client) = ws_pair().await;

        let polling = socket.internal_rx.lock().await;
        let writer = tokio::spawn({
            let socket = socket.clone();
            run(engine(), socket.clone(), server, None)
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!writer.is_finished(), "the writer should wait for the lock");

        drop(polling);
        socket.emit(Str::from("hello")).unwrap();
        assert_eq!(next_text(&mut client).await, "4hello");
    }

    #[tokio::test]
    async fn writer_waiting_for_the_lock_stops_with_the_session() {
        let socket = socket();
        let (server, _client) = ws_pair().await;

        let _polling = socket.internal_rx.lock().await;
        let writer = tokio::spawn({
            let socket = socket.clone();
            run(engine(), socket.clone(), server, None)
        });
        tokio::time::sleep(Duration::from_millis(20)).await;

        socket.cancel();
        tokio::time::timeout(TIMEOUT, writer)
            .await
            .expect("the writer should stop")
            .unwrap();
    }

    /// Packets queued before the session is closed reach the client, then the close frame.
    #[tokio::test]
    async fn queued_packets_are_written_before_the_close_frame() {
        let socket = socket();
        let (server, mut client) = ws_pair().await;
        let task = tokio::spawn({
            let socket = socket.clone();
            run(engine(), socket.clone(), server, None)
        });
        for i in 0..100 {
            socket.emit(Str::from(format!("m{i}"))).unwrap();
        }
        socket.send(Packet::Close).unwrap();
        socket.cancel();
        for i in 0..100 {
            assert_eq!(next_text(&mut client).await, format!("4m{i}"));
        }
        assert_eq!(next_text(&mut client).await, "1");
        match tokio::time::timeout(TIMEOUT, client.next()).await {
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) => {}
            other => panic!("expected the close frame, got {other:?}"),
        }
        tokio::time::timeout(TIMEOUT, task).await.unwrap().unwrap();
    }

    /// Frames are encoded here, not by tungstenite: every length class (7-bit, 16-bit and
    /// 64-bit lengths, at their edges) reaches a client intact, through a pipe much smaller
    /// than the frames (partial writes), in order.
    #[tokio::test]
    async fn frames_of_every_length_reach_the_client_intact() {
        let socket = socket();
        let (server, mut client) = ws_pair().await;
        let task = tokio::spawn(run(engine(), socket.clone(), server, None));
        // "4" + the message: payloads of 125, 126, 127, 65535, 65536 and 70000 bytes, and some.
        let lens = [0, 1, 124, 125, 126, 65_534, 65_535, 65_536, 69_999, 3];
        for (i, len) in lens.iter().enumerate() {
            let c = char::from(b'a' + i as u8);
            socket.emit(Str::from(c.to_string().repeat(*len))).unwrap();
        }
        socket
            .emit_binary(Bytes::from_static(&[0, 1, 2, 255]))
            .unwrap();
        for (i, len) in lens.iter().enumerate() {
            let c = char::from(b'a' + i as u8);
            let text = next_text(&mut client).await;
            assert_eq!(text.len(), len + 1, "message {i}");
            assert_eq!(
                text,
                format!("4{}", c.to_string().repeat(*len)),
                "message {i}"
            );
        }
        match tokio::time::timeout(TIMEOUT, client.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => assert_eq!(&b[..], &[0, 1, 2, 255]),
            other => panic!("expected a binary message, got {other:?}"),
        }
        socket.cancel();
        tokio::time::timeout(TIMEOUT, task).await.unwrap().unwrap();
    }

    /// tungstenite answers a client's websocket ping while this connection writes its own
    /// frames: the pong never lands inside one of them (the client would see garbage).
    #[tokio::test]
    async fn a_client_ping_never_splits_a_frame() {
        let socket = socket();
        let (server, mut client) = ws_pair().await;
        let task = tokio::spawn(run(engine(), socket.clone(), server, None));
        let body = "x".repeat(700);
        let mut expected = 0;
        let mut pongs = 0;
        for round in 0..50 {
            for i in 0..20 {
                socket
                    .emit(Str::from(format!("{round}-{i}-{body}")))
                    .unwrap();
            }
            client
                .send(Message::Ping(format!("p{round}").into()))
                .await
                .unwrap();
            // Read until every message of this round and its pong came.
            let mut got = 0;
            while got < 20 || pongs <= round {
                match tokio::time::timeout(TIMEOUT, client.next()).await {
                    Ok(Some(Ok(Message::Text(t)))) => {
                        let n = expected / 20;
                        let i = expected % 20;
                        assert_eq!(t.as_str(), format!("4{n}-{i}-{body}"));
                        expected += 1;
                        got += 1;
                    }
                    Ok(Some(Ok(Message::Pong(p)))) => {
                        assert_eq!(&p[..], format!("p{pongs}").as_bytes());
                        pongs += 1;
                    }
                    other => panic!("round {round}: unexpected {other:?}"),
                }
            }
        }
        assert_eq!((expected, pongs), (1000, 50));
        socket.cancel();
        tokio::time::timeout(TIMEOUT, task).await.unwrap().unwrap();
    }

    /// A client that reads slowly gets everything, in order, and the connection task does not
    /// hold more than a bounded batch of encoded frames.
    #[tokio::test]
    async fn a_slow_reader_gets_everything_in_order() {
        let socket = socket();
        let (server, mut client) = ws_pair().await;
        let task = tokio::spawn(run(engine(), socket.clone(), server, None));
        let sender = tokio::spawn({
            let socket = socket.clone();
            async move {
                let mut i = 0;
                while i < 5000 {
                    match socket.emit(Str::from(format!("m{i}"))) {
                        Ok(()) => i += 1,
                        // The queue is full: the reader is behind.
                        Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
                    }
                }
            }
        });
        for i in 0..5000 {
            if i % 500 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            assert_eq!(next_text(&mut client).await, format!("4m{i}"));
        }
        sender.await.unwrap();
        socket.cancel();
        tokio::time::timeout(TIMEOUT, task).await.unwrap().unwrap();
    }

    #[test]
    fn frame_headers_follow_rfc_6455() {
        let mut out = Vec::new();
        frame(&mut out, Data::Text, b"4", b"hi");
        assert_eq!(out, b"\x81\x034hi");
        out.clear();
        frame(&mut out, Data::Text, b"", &[b'x'; 126]);
        assert_eq!(&out[..4], &[0x81, 126, 0, 126]);
        assert_eq!(out.len(), 4 + 126);
        out.clear();
        frame(&mut out, Data::Binary, b"", &vec![0; 65_536]);
        assert_eq!(&out[..10], &[0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
        assert_eq!(out.len(), 10 + 65_536);
        out.clear();
        encode_frame(&mut out, Packet::Noop, ProtocolVersion::V4);
        assert!(out.is_empty());
        encode_frame(&mut out, Packet::Ping, ProtocolVersion::V4);
        assert_eq!(out, b"\x81\x012");
    }

    /// The task that wrote the handshake through tungstenite is not kept alive by its waker
    /// (tungstenite keeps the last writer's): the connection's task replaces it.
    #[tokio::test]
    async fn the_handshake_tasks_waker_is_released() {
        struct W;
        impl std::task::Wake for W {
            fn wake(self: Arc<Self>) {}
        }
        let w = Arc::new(W);
        let socket = socket();
        let (mut server, mut client) = ws_pair().await;
        let waker = std::task::Waker::from(w.clone());
        let mut cx = std::task::Context::from_waker(&waker);
        server.start_send_unpin(Message::text("0open")).unwrap();
        assert!(server.poll_flush_unpin(&mut cx).is_ready());
        drop(waker);
        assert!(
            Arc::strong_count(&w) > 1,
            "tungstenite keeps the writer's waker"
        );
        let task = tokio::spawn(run(engine(), socket.clone(), server, None));
        socket.emit(Str::from("x")).unwrap();
        assert_eq!(next_text(&mut client).await, "0open");
        assert_eq!(next_text(&mut client).await, "4x");
        assert_eq!(
            Arc::strong_count(&w),
            1,
            "the handshake's waker is still held"
        );
        socket.cancel();
        tokio::time::timeout(TIMEOUT, task).await.unwrap().unwrap();
    }

    /// The heartbeat runs in the connection task: a ping at once, then one per interval
    /// while the client answers, and the session closes when it stops answering.
    #[tokio::test]
    async fn inline_heartbeat_pings_and_times_out() {
        let closed = Arc::new(std::sync::Mutex::new(None));
        let socket = Arc::new(Socket::<()>::new(
            ProtocolVersion::V4,
            TransportType::Websocket,
            &EngineIoConfig::default(),
            Request::<()>::default().into_parts().0,
            Box::new({
                let closed = closed.clone();
                move |_, reason| *closed.lock().unwrap() = Some(reason)
            }),
            false,
        ));
        let (server, mut client) = ws_pair().await;
        let hb = Heartbeat::new(Duration::from_millis(50), Duration::from_millis(100));
        socket.start_heartbeat();
        let task = tokio::spawn({
            let socket = socket.clone();
            run(engine(), socket.clone(), server, Some(hb))
        });
        for _ in 0..3 {
            assert_eq!(next_text(&mut client).await, "2");
            client.send(Message::text("3")).await.unwrap();
        }
        // no pong: the next ping times out
        assert_eq!(next_text(&mut client).await, "2");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            *closed.lock().unwrap(),
            Some(DisconnectReason::HeartbeatTimeout)
        );
        // the close packet went out (the test's close_fn does not cancel the session)
        assert_eq!(next_text(&mut client).await, "1");
        socket.cancel();
        tokio::time::timeout(TIMEOUT, task).await.unwrap().unwrap();
    }
}
/// The connection's future lives as long as the connection: it must stay small.
#[cfg(test)]
mod size {
    use super::*;

    #[derive(Debug)]
    struct H;
    impl EngineIoHandler for H {
        type Data = ();
        fn on_connect(self: Arc<Self>, _: Arc<Socket<()>>) {}
        fn on_disconnect(&self, _: Arc<Socket<()>>, _: DisconnectReason) {}
        fn on_message(self: &Arc<Self>, _: Str, _: Arc<Socket<()>>) {}
        fn on_binary(self: &Arc<Self>, _: bytes::Bytes, _: Arc<Socket<()>>) {}
    }

    #[tokio::test]
    async fn the_connection_future_stays_small() {
        let engine = Arc::new(EngineIo::new(Arc::new(H), EngineIoConfig::default()));
        let socket = Arc::new(Socket::<()>::new(
            ProtocolVersion::V4,
            TransportType::Websocket,
            &EngineIoConfig::default(),
            http::Request::<()>::default().into_parts().0,
            Box::new(|_, _| ()),
            false,
        ));
        let (a, _b) = tokio::io::duplex(64);
        let ws = WebSocketStream::from_raw_socket(a, Role::Server, None).await;
        let ws_size = std::mem::size_of_val(&ws);
        let fut = run::<H, _>(engine, socket, ws, None);
        let size = std::mem::size_of_val(&fut);
        // 640 bytes in release, more in debug builds: the websocket stream (~300 bytes) plus
        // the loop's state, without a copy of the arguments or of the handshake's state.
        assert!(size < ws_size + 600, "connection future: {size} bytes");
    }
}
