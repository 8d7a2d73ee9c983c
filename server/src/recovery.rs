//! Connection state recovery (socket.io 4.6+): a totally ordered packet log, the sessions, and
//! the restore of a reconnecting client on any node.
//!
//! socketioxide (patched, `vendor/socketioxide`) handles the protocol: the CONNECT reply's
//! `pid`, the client's `{pid, offset}` claim, and the old socket id of a restored socket. This
//! module is the [`SessionStore`] behind it, and the log that gives every packet its offset.
//!
//! The log. With recovery on, every message the server sends to clients through a room
//! (`publish`, `send {to}`, `send {user}`, the publish API) is not broadcast through the
//! adapter but appended to one log, and every node (the origin too) delivers the log's entries
//! to its own sockets, in log order, with the entry's offset as the last argument. With Redis
//! the log is a stream: one Lua script does `XADD` (trimmed by count and by age: Redis memory
//! is bounded by the window) and `PUBLISH` of the new entry atomically, so the order every node
//! hears equals the stream's order, and an offset (a stream id) means "this entry and
//! everything before it in the client's rooms". Each published entry also carries a sequence
//! number: a node that sees a gap (a message lost by the pub/sub pump, a resubscription) reads
//! the missing entries from the stream before going on. Without Redis (one node) the log is a
//! ring in memory with the same interface. When Redis cannot take an entry, the message is
//! delivered on this node without an offset (not recoverable, not lost here), and counted.
//!
//! Sessions. One Redis hash per pid, expiring `window` after its last write: socket id, rooms,
//! user, the log position at its start, the token of the connection that owns it, and the time
//! of its disconnection. It is written when the socket connects, on every join and leave
//! (write-through), on disconnect (kept for the recoverable reasons, deleted otherwise), and
//! every node refreshes the expiry of its connected sessions every `window / 3`. So a node that
//! dies without a word (`kill -9`) leaves sessions that its clients can still recover for
//! between 2/3 of the window and the window.
//!
//! Restore. The pid must look like one this server makes and name a live session; when
//! authentication is on, the handshake's user must be the session's; the offset (or, when the
//! client received nothing, the session's start) must be a stream id no older than the
//! session, no newer than the log, and with nothing after it trimmed away. Then the entries
//! after the offset in the session's rooms are read (the stream is read from the offset
//! onwards only, filtered by room in Redis). Anything else gives a clean session. The replay
//! is exact because it runs in the node's delivery order: under the delivery lock, the socket
//! gets the read entries up to the last entry this node delivered (reading more if the node
//! went further meanwhile), then joins its rooms; the entries after come live.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    fmt,
    future::Future,
    pin::Pin,
    str::FromStr,
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use fred::{
    clients::Client,
    interfaces::{HashesInterface, KeysInterface, LuaInterface},
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use socketioxide::{
    SocketIo,
    adapter::Adapter,
    extract::SocketRef,
    recovery::{BoxFuture, RestoreRequest, RestoredSession, SessionStore},
    socket::{DisconnectReason, Sid},
};
use socketioxide_core::Value;
use tracing::{debug, info, warn};

use crate::{
    auth::{HandshakeAuth, Verifier},
    config::RecoverySettings,
    handlers::{MEMBER_PREFIX, member_room},
    health::Health,
    metrics::Metrics,
};

/// The internal room every socket of a recovering server is in: a message "to everyone" goes
/// to it, so a socket receives such messages only once it has been put in the delivery order
/// (a restored socket only after its replay). No other room name lacks a `:`.
pub const ALL_ROOM: &str = "all";

const KEY_PREFIX: &str = "realtime:{csr}";

/// The most missed packets a restore replays: they are queued to the socket at once, and a
/// socket's send buffer holds [`crate::app::SOCKET_BUFFER`] packets (an emit to a full one
/// fails). A client that missed more gets a clean session instead of a partial replay.
pub const MAX_REPLAY: usize = crate::app::SOCKET_BUFFER / 2;

/// A position in the log: a Redis stream id (`ms-seq`), also used by the in-memory log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Offset {
    pub ms: u64,
    pub seq: u64,
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for Offset {
    type Err = ();
    /// Only the canonical form (`<digits>-<digits>`, no sign, no leading zeros, fits u64).
    fn from_str(s: &str) -> Result<Self, ()> {
        let (a, b) = s.split_once('-').ok_or(())?;
        let num = |x: &str| -> Result<u64, ()> {
            if x.is_empty() || x.len() > 20 || !x.bytes().all(|c| c.is_ascii_digit()) {
                return Err(());
            }
            if x.len() > 1 && x.starts_with('0') {
                return Err(());
            }
            x.parse().map_err(|_| ())
        };
        Ok(Offset {
            ms: num(a)?,
            seq: num(b)?,
        })
    }
}

/// One logged message.
#[derive(Debug, Clone)]
pub struct Entry {
    pub offset: Offset,
    /// The internal room it goes to ([`ALL_ROOM`] for everyone).
    pub room: String,
    /// `{"e": event, "d": data}`.
    pub payload: Arc<str>,
}

#[derive(Serialize)]
struct PayloadOut<'a> {
    e: &'a str,
    d: &'a RawValue,
}
#[derive(Deserialize)]
struct PayloadIn<'a> {
    #[serde(borrow)]
    e: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    d: &'a RawValue,
}

/// The sockets of this node, as the log delivers to them.
pub trait Sink: Send + Sync + 'static {
    /// Emits to the local sockets of `room`; `offset` is appended as the last argument.
    /// Returns the number of sockets whose send failed.
    fn deliver<'a>(
        &'a self,
        room: &'a str,
        event: &'a str,
        data: &'a RawValue,
        offset: Option<&'a str>,
    ) -> Pin<Box<dyn Future<Output = usize> + Send + 'a>>;
}

impl<A: Adapter> Sink for SocketIo<A> {
    fn deliver<'a>(
        &'a self,
        room: &'a str,
        event: &'a str,
        data: &'a RawValue,
        offset: Option<&'a str>,
    ) -> Pin<Box<dyn Future<Output = usize> + Send + 'a>> {
        Box::pin(async move {
            // `of`, not `local()`: the namespace is gone once a drain has closed it.
            let Some(root) = self.of(crate::handlers::NAMESPACE) else {
                return 0;
            };
            let op = root.local().to(room.to_string());
            let res = match offset {
                Some(o) => op.emit(event, &(data, o)).await,
                None => op.emit(event, data).await,
            };
            match res {
                Ok(()) => 0,
                Err(socketioxide::BroadcastError::Socket(errs)) => errs.len(),
                Err(e) => {
                    debug!("log delivery failed: {e}");
                    0
                }
            }
        })
    }
}

/// What the store returns for a restored socket (read back by the connect handler).
pub struct Restored {
    pub pid: String,
    pub token: String,
    pub rooms: Vec<String>,
    pub user: Option<String>,
    pub since: Offset,
    /// Rooms joined after the session began, with the log position at the join.
    pub joined: Joined,
    /// The entries after the client's offset in its rooms, as read at restore time.
    /// (Taken by the replay: the socket keeps what the store returned for its lifetime.)
    pub entries: Mutex<Vec<Entry>>,
    /// The last log position the read covered (entries after it have not been read).
    pub read_to: Offset,
}

/// Room -> the log position when the socket joined it, for the rooms joined after the session
/// began (the others count from the session's start): a restore replays a room's entries only
/// from the join on.
pub type Joined = HashMap<String, Offset>;

/// What a connected socket keeps of its session.
#[derive(Clone)]
pub struct Owned {
    pub pid: String,
    pub token: String,
    pub since: Offset,
    pub user: Option<String>,
    pub joined: Arc<Mutex<Joined>>,
}

/// Whether a restore sends `e` to a session that joined its rooms as `joined` says (the
/// entry's room is one of the session's).
fn joined_before(e: &Entry, joined: &Joined) -> bool {
    e.room == ALL_ROOM || joined.get(&e.room).is_none_or(|j| e.offset > *j)
}

/// One session as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Session {
    sid: String,
    since: Offset,
    rooms: Vec<String>,
    joined: Joined,
    user: Option<String>,
    token: String,
    /// Unix ms of the disconnection; 0 while connected.
    disc: u64,
}

/// The delivery state of this node: the last entry delivered and its sequence number.
#[derive(Debug, Default, Clone, Copy)]
struct Position {
    at: Option<Offset>,
    seq: Option<u64>,
}

enum Backend {
    Memory(Mutex<MemoryLog>),
    Redis(RedisLog),
}

#[derive(Default)]
struct MemoryLog {
    entries: VecDeque<Entry>,
    last: Offset,
    /// The newest offset removed by trimming.
    trimmed_to: Option<Offset>,
    sessions: HashMap<String, (Session, u64)>,
    writes: u64,
}

struct RedisLog {
    client: Client,
    /// PUBLISH, or SPUBLISH on a Redis Cluster (where the nodes listen with SSUBSCRIBE; the
    /// channel carries the keys' hash tag, so the script's keys and channel share one slot).
    publish: &'static str,
    health: Arc<Health>,
    scripts: Scripts,
}

/// The log and the sessions (one per node).
pub struct Recovery {
    window: Duration,
    max_packets: u32,
    node: String,
    backend: Backend,
    /// Held while delivering entries to local sockets, and while a restored socket is
    /// replayed and joins its rooms: the node's delivery order.
    delivery: tokio::sync::Mutex<Position>,
    sink: OnceLock<Box<dyn Sink>>,
    metrics: Arc<Metrics>,
    verifier: Option<Verifier>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// A pid as [`socketioxide::recovery::random_pid`] makes them: 32 URL-safe base64 characters.
pub fn plausible_pid(pid: &str) -> bool {
    pid.len() == 32
        && pid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn session_key(pid: &str) -> String {
    format!("{KEY_PREFIX}:s:{pid}")
}
fn log_key() -> String {
    format!("{KEY_PREFIX}:log")
}
fn seq_key() -> String {
    format!("{KEY_PREFIX}:seq")
}
/// The channel the log's entries are published on.
pub fn log_channel() -> String {
    format!("{KEY_PREFIX}:chan")
}

fn stored_rooms(rooms: impl IntoIterator<Item = String>) -> Vec<String> {
    // The member room names the node: it is made again where the socket lands.
    let mut r: Vec<String> = rooms
        .into_iter()
        .filter(|r| !r.starts_with(MEMBER_PREFIX))
        .collect();
    r.sort();
    r
}

impl Recovery {
    pub fn memory(
        settings: &RecoverySettings,
        node: &str,
        metrics: Arc<Metrics>,
        verifier: Option<Verifier>,
    ) -> Arc<Self> {
        Arc::new(Self::new(
            settings,
            node,
            Backend::Memory(Mutex::default()),
            metrics,
            verifier,
        ))
    }

    pub fn redis(
        settings: &RecoverySettings,
        node: &str,
        client: Client,
        publish: &'static str,
        health: Arc<Health>,
        metrics: Arc<Metrics>,
        verifier: Option<Verifier>,
    ) -> Arc<Self> {
        let backend = Backend::Redis(RedisLog {
            client,
            publish,
            health,
            scripts: Scripts::default(),
        });
        Arc::new(Self::new(settings, node, backend, metrics, verifier))
    }

    fn new(
        settings: &RecoverySettings,
        node: &str,
        backend: Backend,
        metrics: Arc<Metrics>,
        verifier: Option<Verifier>,
    ) -> Self {
        Self {
            window: settings.window,
            max_packets: settings.max_packets,
            node: node.to_string(),
            backend,
            delivery: tokio::sync::Mutex::new(Position::default()),
            sink: OnceLock::new(),
            metrics,
            verifier,
        }
    }

    /// Where the log delivers (the node's `SocketIo`); set once, right after it is built.
    pub fn set_sink(&self, sink: impl Sink) {
        let _ = self.sink.set(Box::new(sink));
    }

    fn window_ms(&self) -> u64 {
        self.window.as_millis() as u64
    }

    /// Appends a message for `room` to the log; every node delivers it to its sockets there.
    /// Returns `true` when the log was unreachable and the message reached this node's sockets
    /// only, without an offset.
    pub async fn publish(&self, room: &str, event: &str, data: &RawValue) -> bool {
        let payload = match serde_json::to_string(&PayloadOut { e: event, d: data }) {
            Ok(p) => p,
            Err(_) => return false,
        };
        match &self.backend {
            Backend::Memory(log) => {
                let mut pos = self.delivery.lock().await;
                let entry = {
                    let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                    let now = now_ms();
                    let offset = if now > log.last.ms {
                        Offset { ms: now, seq: 0 }
                    } else {
                        Offset {
                            ms: log.last.ms,
                            seq: log.last.seq + 1,
                        }
                    };
                    log.last = offset;
                    let entry = Entry {
                        offset,
                        room: room.to_string(),
                        payload: payload.into(),
                    };
                    log.entries.push_back(entry.clone());
                    self.trim(&mut log, now);
                    entry
                };
                self.deliver_one(&mut pos, &entry, None).await;
                false
            }
            Backend::Redis(r) => {
                let appended = if r.health.redis_usable() {
                    r.scripts
                        .run_sent::<Vec<String>>(
                            &r.client,
                            APPEND,
                            vec![log_key(), seq_key()],
                            vec![
                                self.max_packets.to_string(),
                                self.window_ms().to_string(),
                                room.to_string(),
                                payload.clone(),
                                log_channel(),
                                r.publish.to_string(),
                            ],
                        )
                        .await
                        // Read after the failure: a Redis that went away meanwhile (the monitor
                        // saw the connection fail) did not run a command that was only queued.
                        .map_err(|e| AppendError::of(e, r.health.redis_usable()))
                } else {
                    Err(AppendError::Failed("redis is not usable".into()))
                };
                match appended {
                    Ok(_) => false,
                    Err(AppendError::Unknown(e)) => {
                        // The script may still run (a stalled Redis runs what it was sent): the
                        // log then delivers it everywhere, this node included, with its offset.
                        // Delivering it here as well would give this node's clients a duplicate.
                        self.metrics.recovery_append_unknown.inc();
                        warn!(
                            "the log did not confirm a message in time; it reaches the clients only if Redis ran it: {e}"
                        );
                        true
                    }
                    Err(AppendError::Failed(e)) => {
                        self.metrics.recovery_unlogged.inc();
                        warn!(
                            "the log is unreachable, delivering on this node without offset: {e}"
                        );
                        let _pos = self.delivery.lock().await;
                        if let Some(sink) = self.sink.get() {
                            let failed = sink.deliver(room, event, data, None).await;
                            self.metrics.delivery_failures.inc_by(failed as u64);
                        }
                        true
                    }
                }
            }
        }
    }

    fn trim(&self, log: &mut MemoryLog, now: u64) {
        let min_ms = now.saturating_sub(self.window_ms());
        while let Some(front) = log.entries.front() {
            if log.entries.len() > self.max_packets as usize || front.offset.ms < min_ms {
                log.trimmed_to = Some(front.offset);
                log.entries.pop_front();
            } else {
                break;
            }
        }
        log.sessions.retain(|_, (_, exp)| *exp > now);
    }

    /// Delivers `entry` to this node's sockets unless it was delivered already, first reading
    /// the entries a sequence gap says were missed. The caller holds the delivery lock.
    async fn deliver_one(&self, pos: &mut Position, entry: &Entry, seq: Option<u64>) {
        if pos.at.is_some_and(|at| entry.offset <= at) {
            return;
        }
        if let (Some(seq), Some(last), Some(at), Backend::Redis(r)) =
            (seq, pos.seq, pos.at, &self.backend)
            && seq > last + 1
        {
            self.metrics.recovery_gaps.inc();
            match read_range(r, at, Some(entry.offset), None, self.max_packets).await {
                Ok(missed) => {
                    for m in missed.entries.iter().filter(|m| m.offset < entry.offset) {
                        self.emit_local(m).await;
                    }
                }
                Err(e) => warn!("could not read the entries of a log gap: {e}"),
            }
        }
        self.emit_local(entry).await;
        pos.at = Some(entry.offset);
        if seq.is_some() {
            pos.seq = seq;
        }
    }

    async fn emit_local(&self, entry: &Entry) {
        let Some(sink) = self.sink.get() else { return };
        let Ok(p) = serde_json::from_str::<PayloadIn<'_>>(&entry.payload) else {
            return;
        };
        let offset = entry.offset.to_string();
        let failed = sink.deliver(&entry.room, &p.e, p.d, Some(&offset)).await;
        self.metrics.delivery_failures.inc_by(failed as u64);
    }

    /// Follows the Redis log: every published entry, in order (see the module doc).
    pub async fn follow(self: Arc<Self>, mut rx: impl futures::Stream<Item = Vec<u8>> + Unpin) {
        use futures::StreamExt;
        while let Some(msg) = rx.next().await {
            let Some((entry, seq)) = parse_published(&msg) else {
                warn!("malformed log message ignored");
                continue;
            };
            let mut pos = self.delivery.lock().await;
            if pos.seq.is_some_and(|s| seq <= s) && pos.at.is_some_and(|at| entry.offset > at) {
                // The sequence went back (Redis lost its data): start over from here.
                pos.seq = None;
            }
            self.deliver_one(&mut pos, &entry, Some(seq)).await;
        }
    }

    /// The delivery position, read from the log when this node has delivered nothing yet.
    async fn position(&self, pos: &mut Position) -> Offset {
        if let Some(at) = pos.at {
            return at;
        }
        match &self.backend {
            Backend::Memory(log) => log.lock().unwrap_or_else(|e| e.into_inner()).last,
            Backend::Redis(r) => {
                let tail = r
                    .scripts
                    .run::<Vec<String>>(&r.client, TAIL, vec![log_key(), seq_key()], Vec::new())
                    .await;
                match tail {
                    Ok(v) if v.len() == 2 => {
                        let at = v[0].parse().unwrap_or_default();
                        pos.at = Some(at);
                        pos.seq = v[1].parse().ok();
                        at
                    }
                    _ => Offset::default(),
                }
            }
        }
    }

    /// A new socket: joins `rooms` (and [`ALL_ROOM`]) in the delivery order and records its
    /// session.
    pub async fn attach<A: Adapter>(&self, s: &SocketRef<A>, mut rooms: Vec<String>) {
        let Some(pid) = s.pid().map(str::to_string) else {
            s.join(rooms);
            return;
        };
        rooms.push(ALL_ROOM.to_string());
        let since = {
            let mut pos = self.delivery.lock().await;
            let since = self.position(&mut pos).await;
            s.join(rooms);
            since
        };
        let user = s
            .extensions
            .get::<crate::handlers::UserId>()
            .map(|u| u.0.to_string());
        let owned = Owned {
            pid,
            token: socketioxide::recovery::random_pid(),
            since,
            user,
            joined: Arc::default(),
        };
        s.extensions.insert(owned);
        self.save(s).await;
    }

    /// A restored socket: replays what it missed, then joins its rooms, in the delivery order.
    pub async fn resume<A: Adapter>(&self, s: &SocketRef<A>) {
        let Some(r) = s.restored::<Restored>() else {
            return;
        };
        let started = std::time::Instant::now();
        let mut rooms = r.rooms.clone();
        rooms.push(member_room(
            &s.id.to_string(),
            &self.node,
            r.user.as_deref(),
        ));
        if !rooms.iter().any(|x| x == ALL_ROOM) {
            rooms.push(ALL_ROOM.to_string());
        }
        let mut replayed = 0usize;
        {
            let mut pos = self.delivery.lock().await;
            let upto = self.position(&mut pos).await;
            let wanted: HashSet<&str> = r.rooms.iter().map(String::as_str).collect();
            let entries = std::mem::take(&mut *r.entries.lock().unwrap_or_else(|e| e.into_inner()));
            for e in entries.iter().filter(|e| e.offset <= upto) {
                replayed += self.emit_to(s, e);
            }
            if r.read_to < upto {
                match self.read(r.read_to, Some(upto), Some(&wanted)).await {
                    Ok(more) => {
                        for e in more
                            .entries
                            .iter()
                            .filter(|e| e.offset <= upto && joined_before(e, &r.joined))
                        {
                            replayed += self.emit_to(s, e);
                        }
                    }
                    Err(e) => warn!("restore: could not read the newest entries: {e}"),
                }
            }
            s.join(rooms);
        }
        s.extensions.insert(Owned {
            pid: r.pid.clone(),
            token: r.token.clone(),
            since: r.since,
            user: r.user.clone(),
            joined: Arc::new(Mutex::new(r.joined.clone())),
        });
        self.metrics.recovery_restored.inc();
        self.metrics.recovery_replayed.inc_by(replayed as u64);
        info!(sid = %s.id, replayed, took = ?started.elapsed(), "session restored");
        self.save(s).await;
    }

    fn emit_to<A: Adapter>(&self, s: &SocketRef<A>, e: &Entry) -> usize {
        let Ok(p) = serde_json::from_str::<PayloadIn<'_>>(&e.payload) else {
            return 0;
        };
        match s.emit(&*p.e, &(p.d, e.offset.to_string())) {
            Ok(()) => 1,
            Err(err) => {
                debug!(sid = %s.id, "replay not sent: {err}");
                self.metrics.delivery_failures.inc();
                0
            }
        }
    }

    /// `s` joins `room` in the delivery order; the session remembers from where.
    pub async fn join<A: Adapter>(&self, s: &SocketRef<A>, room: String) {
        let Some(o) = s.extensions.get::<Owned>() else {
            s.join(room);
            return;
        };
        let at = {
            let mut pos = self.delivery.lock().await;
            let at = self.position(&mut pos).await;
            s.join(room.clone());
            at
        };
        o.joined
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(room, at);
    }

    /// `s` leaves `room`.
    pub fn leave<A: Adapter>(&self, s: &SocketRef<A>, room: String) {
        s.leave(room.clone());
        if let Some(o) = s.extensions.get::<Owned>() {
            o.joined
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&room);
        }
    }

    /// Writes the socket's session (rooms now, connected).
    pub async fn save<A: Adapter>(&self, s: &SocketRef<A>) {
        self.write(s, 0).await;
    }

    /// On disconnect: keeps the session for a recoverable reason, deletes it otherwise.
    pub async fn on_disconnect<A: Adapter>(&self, s: &SocketRef<A>, reason: DisconnectReason) {
        if reason.is_recoverable() {
            self.write(s, now_ms().max(1)).await;
            return;
        }
        let Some(o) = s.extensions.get::<Owned>() else {
            return;
        };
        match &self.backend {
            Backend::Memory(log) => {
                let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                if log
                    .sessions
                    .get(&o.pid)
                    .is_some_and(|(x, _)| x.token == o.token)
                {
                    log.sessions.remove(&o.pid);
                }
            }
            Backend::Redis(r) => {
                let res = r
                    .scripts
                    .run::<i64>(&r.client, DELETE, vec![session_key(&o.pid)], vec![o.token])
                    .await;
                if let Err(e) = res {
                    debug!("session not deleted: {e}");
                }
            }
        }
    }

    async fn write<A: Adapter>(&self, s: &SocketRef<A>, disc: u64) {
        let Some(o) = s.extensions.get::<Owned>() else {
            return;
        };
        let rooms = stored_rooms(s.rooms().into_iter().map(|r| r.to_string()));
        let joined = {
            let j = o.joined.lock().unwrap_or_else(|e| e.into_inner());
            rooms
                .iter()
                .filter_map(|r| j.get(r).map(|at| (r.clone(), *at)))
                .collect()
        };
        let session = Session {
            sid: s.id.to_string(),
            since: o.since,
            rooms,
            joined,
            user: o.user.clone(),
            token: o.token.clone(),
            disc,
        };
        self.put(&o.pid, session).await;
    }

    async fn put(&self, pid: &str, session: Session) {
        match &self.backend {
            Backend::Memory(log) => {
                let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                let taken = log
                    .sessions
                    .get(pid)
                    .is_some_and(|(x, _)| x.token != session.token);
                if !taken {
                    let now = now_ms();
                    log.sessions
                        .insert(pid.to_string(), (session, now + self.window_ms()));
                    // expired sessions go at publishes, and here every 1024 writes
                    log.writes = log.writes.wrapping_add(1);
                    if log.writes.is_multiple_of(1024) {
                        log.sessions.retain(|_, (_, exp)| *exp > now);
                    }
                }
            }
            Backend::Redis(r) => {
                let rooms = serde_json::to_string(&session.rooms).unwrap_or_default();
                let joined: HashMap<&String, String> = session
                    .joined
                    .iter()
                    .map(|(r, at)| (r, at.to_string()))
                    .collect();
                let joined = serde_json::to_string(&joined).unwrap_or_default();
                let res = r
                    .scripts
                    .run::<i64>(
                        &r.client,
                        WRITE,
                        vec![session_key(pid)],
                        vec![
                            session.token,
                            self.window_ms().to_string(),
                            session.sid,
                            session.since.to_string(),
                            rooms,
                            session.user.unwrap_or_default(),
                            session.disc.to_string(),
                            joined,
                        ],
                    )
                    .await;
                if let Err(e) = res {
                    self.metrics.recovery_session_errors.inc();
                    debug!("session not saved: {e}");
                }
            }
        }
    }

    /// Saves the sessions of all the connected sockets (before a drain closes them).
    pub async fn save_all<A: Adapter>(&self, io: &SocketIo<A>) -> usize {
        let sockets = io.sockets();
        let n = sockets.len();
        futures::future::join_all(sockets.iter().map(|s| self.save(s))).await;
        n
    }

    /// Every `window / 3`: the expiry of the connected sockets' sessions is pushed back, so a
    /// node that dies leaves them for at least 2/3 of the window.
    pub async fn refresh_loop<A: Adapter>(self: Arc<Self>, io: SocketIo<A>) {
        let Backend::Redis(r) = &self.backend else {
            return;
        };
        let every = (self.window / 3).max(Duration::from_millis(200));
        loop {
            tokio::time::sleep(every).await;
            if !r.health.redis_usable() {
                continue;
            }
            let pids: Vec<String> = io
                .sockets()
                .iter()
                .filter_map(|s| s.extensions.get::<Owned>().map(|o| o.pid))
                .collect();
            if pids.is_empty() {
                continue;
            }
            let pipe = r.client.pipeline();
            for pid in &pids {
                let _: Result<(), _> = pipe
                    .pexpire(session_key(pid), self.window_ms() as i64, None)
                    .await;
            }
            if let Err(e) = pipe.all::<Vec<fred::types::Value>>().await {
                self.metrics.recovery_session_errors.inc();
                debug!("session expiry refresh failed: {e}");
            }
        }
    }

    /// Reads the entries after `from` (up to `to` when given) in `rooms` (all when `None`).
    async fn read(
        &self,
        from: Offset,
        to: Option<Offset>,
        rooms: Option<&HashSet<&str>>,
    ) -> Result<Read, String> {
        match &self.backend {
            Backend::Memory(log) => {
                let log = log.lock().unwrap_or_else(|e| e.into_inner());
                Ok(memory_read(&log, from, to, rooms))
            }
            Backend::Redis(r) => read_range(r, from, to, rooms, self.max_packets).await,
        }
    }

    async fn lookup(&self, pid: &str) -> Option<Session> {
        match &self.backend {
            Backend::Memory(log) => {
                let log = log.lock().unwrap_or_else(|e| e.into_inner());
                log.sessions
                    .get(pid)
                    .filter(|(_, exp)| *exp > now_ms())
                    .map(|(s, _)| s.clone())
            }
            Backend::Redis(r) => {
                if !r.health.redis_usable() {
                    return None;
                }
                let map: HashMap<String, String> = r.client.hgetall(session_key(pid)).await.ok()?;
                session_from_map(&map)
            }
        }
    }

    /// Takes the session over for a new connection (its writes win from now on).
    async fn claim(&self, pid: &str, session: &Session) {
        match &self.backend {
            Backend::Memory(log) => {
                let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                let exp = now_ms() + self.window_ms();
                log.sessions.insert(pid.to_string(), (session.clone(), exp));
            }
            Backend::Redis(r) => {
                let key = session_key(pid);
                let res: Result<(), _> = r
                    .client
                    .hset(&key, [("tok", session.token.as_str()), ("disc", "0")])
                    .await;
                if let Err(e) = res {
                    debug!("session claim failed: {e}");
                }
            }
        }
    }

    async fn restore_session(&self, req: RestoreRequest<'_>) -> Option<RestoredSession> {
        let refuse = |why: &str| {
            self.metrics.recovery_refused.inc();
            debug!(why, "session not restored: clean session");
            None
        };
        if req.ns != crate::handlers::NAMESPACE || !plausible_pid(req.pid) {
            return refuse("malformed pid");
        }
        let Some(mut session) = self.lookup(req.pid).await else {
            return refuse("unknown or expired session");
        };
        if session.disc != 0 && now_ms().saturating_sub(session.disc) > self.window_ms() {
            return refuse("disconnected for longer than the window");
        }
        if let Some(v) = &self.verifier {
            let auth = req.auth.and_then(|a| match a {
                Value::Str(s, _) => serde_json::from_str::<HandshakeAuth>(s).ok(),
                Value::Bytes(_) => None,
            });
            match v.verify_handshake(auth.as_ref()) {
                Ok(user) if Some(&user) == session.user.as_ref() => {}
                _ => return refuse("the handshake's user is not the session's"),
            }
        }
        let from = match req.offset {
            None => session.since,
            Some(o) => match o.parse::<Offset>() {
                Ok(o) if o >= session.since => o,
                _ => return refuse("malformed offset, or older than the session"),
            },
        };
        let sid = Sid::from_str(&session.sid).ok()?;
        let wanted: HashSet<&str> = session.rooms.iter().map(String::as_str).collect();
        let read = match self.read(from, None, Some(&wanted)).await {
            Ok(r) => r,
            Err(e) => {
                warn!("restore: the log cannot be read: {e}");
                return refuse("log unreachable");
            }
        };
        match read.check(from) {
            Ok(()) => {}
            Err(why) => return refuse(why),
        }
        let joined = session.joined.clone();
        let entries: Vec<Entry> = read
            .entries
            .into_iter()
            .filter(|e| joined_before(e, &joined))
            .collect();
        if entries.len() > MAX_REPLAY {
            return refuse("more missed packets than a socket's send buffer takes");
        }
        session.token = socketioxide::recovery::random_pid();
        session.disc = 0;
        self.claim(req.pid, &session).await;
        Some(RestoredSession {
            sid,
            data: Box::new(Restored {
                pid: req.pid.to_string(),
                token: session.token,
                rooms: session.rooms,
                user: session.user,
                since: session.since,
                joined: session.joined,
                entries: Mutex::new(entries),
                read_to: read.read_to.max(from),
            }),
        })
    }
}

/// What a read of the log found.
#[derive(Debug, Default)]
struct Read {
    /// The newest offset the log ever had (`None`: no log at all).
    last: Option<Offset>,
    /// The newest offset trimmed away, when known (Redis 7+, and the memory log).
    trimmed_to: Option<Offset>,
    /// The oldest offset still in the log.
    first: Option<Offset>,
    entries: Vec<Entry>,
    read_to: Offset,
}

impl Read {
    /// Whether the log holds everything after `from`: never a future offset, nothing after it
    /// trimmed away.
    fn check(&self, from: Offset) -> Result<(), &'static str> {
        let last = self.last.unwrap_or_default();
        if from > last {
            return Err("offset newer than the log");
        }
        if from == last {
            return Ok(());
        }
        let complete = match (self.trimmed_to, self.first) {
            (Some(t), _) => from >= t,
            (None, Some(first)) => first <= from,
            (None, None) => false,
        };
        if complete {
            Ok(())
        } else {
            Err("entries after the offset were trimmed (older than the window)")
        }
    }
}

fn memory_read(
    log: &MemoryLog,
    from: Offset,
    to: Option<Offset>,
    rooms: Option<&HashSet<&str>>,
) -> Read {
    let mut read_to = from;
    let mut entries = Vec::new();
    for e in log.entries.iter().filter(|e| e.offset > from) {
        if to.is_some_and(|t| e.offset > t) {
            break;
        }
        read_to = e.offset;
        if e.room == ALL_ROOM || rooms.is_none_or(|r| r.contains(e.room.as_str())) {
            entries.push(e.clone());
        }
    }
    Read {
        last: Some(log.last),
        trimmed_to: log.trimmed_to.or(Some(Offset::default())),
        first: log.entries.front().map(|e| e.offset),
        entries,
        read_to,
    }
}

async fn read_range(
    r: &RedisLog,
    from: Offset,
    to: Option<Offset>,
    rooms: Option<&HashSet<&str>>,
    limit: u32,
) -> Result<Read, String> {
    let mut args = vec![
        from.to_string(),
        to.map(|t| t.to_string()).unwrap_or_else(|| "+".into()),
        (limit.saturating_add(1)).to_string(),
        if rooms.is_some() { "1" } else { "0" }.to_string(),
    ];
    if let Some(rooms) = rooms {
        args.extend(rooms.iter().map(|r| r.to_string()));
    }
    let v: Vec<String> = r
        .scripts
        .run(&r.client, READ, vec![log_key()], args)
        .await
        .map_err(|e| e.to_string())?;
    parse_read(&v)
}

/// READ's reply: `["none"]` or `["ok", last, max_deleted, first, read_to, (id, room, payload)*]`.
fn parse_read(v: &[String]) -> Result<Read, String> {
    let opt = |s: &str| -> Option<Offset> { s.parse().ok().filter(|o| *o != Offset::default()) };
    match v.first().map(String::as_str) {
        Some("none") => Ok(Read::default()),
        Some("ok") if v.len() >= 5 && (v.len() - 5).is_multiple_of(3) => {
            let mut entries = Vec::new();
            for c in v[5..].chunks(3) {
                let offset = c[0].parse().map_err(|_| "bad stream id")?;
                entries.push(Entry {
                    offset,
                    room: c[1].clone(),
                    payload: c[2].as_str().into(),
                });
            }
            Ok(Read {
                last: v[1].parse().ok(),
                trimmed_to: if v[2].is_empty() {
                    None
                } else {
                    Some(v[2].parse().unwrap_or_default())
                },
                first: opt(&v[3]),
                read_to: v[4].parse().unwrap_or_default(),
                entries,
            })
        }
        _ => Err(format!("unexpected READ reply ({} items)", v.len())),
    }
}

fn session_from_map(m: &HashMap<String, String>) -> Option<Session> {
    Some(Session {
        sid: m.get("sid")?.clone(),
        since: m.get("since")?.parse().ok()?,
        rooms: serde_json::from_str(m.get("rooms")?).ok()?,
        joined: m
            .get("joined")
            .and_then(|j| serde_json::from_str::<HashMap<String, String>>(j).ok())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(r, at)| Some((r, at.parse().ok()?)))
            .collect(),
        user: m.get("user").filter(|u| !u.is_empty()).cloned(),
        token: m.get("tok")?.clone(),
        disc: m.get("disc").and_then(|d| d.parse().ok()).unwrap_or(0),
    })
}

/// A published entry: `<id> <seq> <room length> <room><payload>`.
fn parse_published(msg: &[u8]) -> Option<(Entry, u64)> {
    let s = std::str::from_utf8(msg).ok()?;
    let (id, rest) = s.split_once(' ')?;
    let (seq, rest) = rest.split_once(' ')?;
    let (len, rest) = rest.split_once(' ')?;
    let len: usize = len.parse().ok()?;
    if !rest.is_char_boundary(len.min(rest.len())) || rest.len() < len {
        return None;
    }
    let (room, payload) = rest.split_at(len);
    Some((
        Entry {
            offset: id.parse().ok()?,
            room: room.to_string(),
            payload: payload.into(),
        },
        seq.parse().ok()?,
    ))
}

/// The SessionStore socketioxide asks on a CONNECT with a pid.
#[derive(Clone)]
pub struct Store(pub Arc<Recovery>);

impl SessionStore for Store {
    fn restore(&self, req: RestoreRequest<'_>) -> BoxFuture<Option<RestoredSession>> {
        // The future must own its data.
        let this = self.0.clone();
        let ns = req.ns.to_string();
        let pid = req.pid.to_string();
        let offset = req.offset.map(str::to_string);
        let auth = req.auth.cloned();
        Box::pin(async move {
            this.restore_session(RestoreRequest {
                ns: &ns,
                pid: &pid,
                offset: offset.as_deref(),
                auth: auth.as_ref(),
            })
            .await
        })
    }
}

// ===== Lua scripts =====

/// KEYS: log, seq. ARGV: max packets, window ms, room, payload, channel, PUBLISH or SPUBLISH.
const APPEND: &str = r#"
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'r', ARGV[3], 'p', ARGV[4])
local t = redis.call('TIME')
local min = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - tonumber(ARGV[2])
if min > 0 then redis.call('XTRIM', KEYS[1], 'MINID', '~', string.format('%d', min)) end
local seq = redis.call('INCR', KEYS[2])
redis.call(ARGV[6], ARGV[5], id .. ' ' .. seq .. ' ' .. string.len(ARGV[3]) .. ' ' .. ARGV[3] .. ARGV[4])
return {id, tostring(seq)}
"#;

/// KEYS: log, seq. The newest id ever generated and the sequence, atomically.
const TAIL: &str = r#"
local seq = redis.call('GET', KEYS[2]) or '0'
if redis.call('EXISTS', KEYS[1]) == 0 then return {'0-0', seq} end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
for i = 1, #info, 2 do
  if info[i] == 'last-generated-id' then return {info[i + 1], seq} end
end
return {'0-0', seq}
"#;

/// KEYS: log. ARGV: from (exclusive), to (inclusive or '+'), count, filter?, rooms...
const READ: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return {'none'} end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local last, maxdel = '0-0', ''
for i = 1, #info, 2 do
  if info[i] == 'last-generated-id' then last = info[i + 1] end
  if info[i] == 'max-deleted-entry-id' then maxdel = info[i + 1] end
end
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
local firstid = '0-0'
if first[1] then firstid = first[1][1] end
local want = {}
for i = 5, #ARGV do want[ARGV[i]] = true end
local entries = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], ARGV[2], 'COUNT', ARGV[3])
local out = {'ok', last, maxdel, firstid, ARGV[1]}
for _, e in ipairs(entries) do
  local f = e[2]
  local room, payload = '', ''
  for i = 1, #f, 2 do
    if f[i] == 'r' then room = f[i + 1] elseif f[i] == 'p' then payload = f[i + 1] end
  end
  out[5] = e[1]
  if ARGV[4] == '0' or room == 'all' or want[room] then
    table.insert(out, e[1]); table.insert(out, room); table.insert(out, payload)
  end
end
return out
"#;

/// KEYS: session. ARGV: token, ttl ms, sid, since, rooms, user, disc, joined. Written only by the
/// connection that owns the session (its token), or when there is none.
const WRITE: &str = r#"
local cur = redis.call('HGET', KEYS[1], 'tok')
if cur and cur ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'tok', ARGV[1], 'sid', ARGV[3], 'since', ARGV[4], 'rooms', ARGV[5], 'user', ARGV[6], 'disc', ARGV[7], 'joined', ARGV[8])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"#;

/// KEYS: session. ARGV: token. Deleted only by its owner.
const DELETE: &str = r#"
if redis.call('HGET', KEYS[1], 'tok') == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

/// The scripts' SHA1s as Redis computed them (`SCRIPT LOAD`), loaded on first use and again
/// after `NOSCRIPT` (a restarted Redis).
#[derive(Default)]
struct Scripts {
    shas: Mutex<HashMap<&'static str, String>>,
}

impl Scripts {
    async fn run<R: fred::types::FromValue>(
        &self,
        client: &Client,
        lua: &'static str,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<R, fred::error::Error> {
        self.run_sent(client, lua, keys, args)
            .await
            .map_err(|e| e.error)
    }

    /// [`Self::run`], telling a failure to load the script (nothing ran) from one of the call.
    async fn run_sent<R: fred::types::FromValue>(
        &self,
        client: &Client,
        lua: &'static str,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<R, ScriptError> {
        let not_sent = |error| ScriptError { error, sent: false };
        let sent = |error| ScriptError { error, sent: true };
        let sha = self.sha(client, lua, false).await.map_err(not_sent)?;
        match client
            .evalsha::<R, _, _, _>(sha, keys.clone(), args.clone())
            .await
        {
            // Not run: Redis did not know the script.
            Err(e) if e.details().contains("NOSCRIPT") => {
                let sha = self.sha(client, lua, true).await.map_err(not_sent)?;
                client.evalsha(sha, keys, args).await.map_err(sent)
            }
            res => res.map_err(sent),
        }
    }

    async fn sha(
        &self,
        client: &Client,
        lua: &'static str,
        reload: bool,
    ) -> Result<String, fred::error::Error> {
        if !reload && let Some(s) = self.shas.lock().unwrap_or_else(|e| e.into_inner()).get(lua) {
            return Ok(s.clone());
        }
        // On a Redis Cluster, on every primary: EVALSHA goes to the master of the keys' slot,
        // and a failover or restart empties a node's cache (NOSCRIPT: loaded again).
        let sha: String = client.script_load_cluster(lua).await?;
        self.shas
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(lua, sha.clone());
        Ok(sha)
    }
}

/// A script call's failure, and whether the call itself went out (it may have run).
struct ScriptError {
    error: fred::error::Error,
    sent: bool,
}

/// Why a message could not be appended to the log.
#[derive(Debug)]
enum AppendError {
    /// Taken as not run: Redis refused it, the connection is gone (a Redis that went away:
    /// the node's clients still get the message, without an offset), or it was never sent.
    Failed(String),
    /// No answer within the command timeout while Redis still counts as connected (no
    /// connection error seen): a stalled Redis runs what it was sent once it resumes, so the
    /// message may yet be logged.
    Unknown(String),
}

impl AppendError {
    /// `usable`: whether Redis still counts as connected after the failure.
    fn of(e: ScriptError, usable: bool) -> Self {
        let timed_out = e.error.kind() == &fred::error::ErrorKind::Timeout;
        if e.sent && timed_out && usable {
            Self::Unknown(e.error.to_string())
        } else {
            Self::Failed(e.error.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_parse_only_canonical_stream_ids() {
        assert_eq!(
            "1700000000000-3".parse::<Offset>(),
            Ok(Offset {
                ms: 1_700_000_000_000,
                seq: 3
            })
        );
        assert_eq!("0-0".parse::<Offset>(), Ok(Offset::default()));
        for bad in [
            "",
            "-",
            "1-",
            "-1",
            "01-0",
            "1-01",
            "+1-0",
            "1-0-0",
            "a-1",
            "1 -0",
            "99999999999999999999-0",
            "1.5-0",
            "*",
            "$",
            "(1-0",
        ] {
            assert!(bad.parse::<Offset>().is_err(), "{bad}");
        }
        let a: Offset = "5-9".parse().unwrap();
        let b: Offset = "6-0".parse().unwrap();
        assert!(a < b);
        assert_eq!(a.to_string(), "5-9");
    }

    #[test]
    fn pids_are_checked_for_shape() {
        assert!(plausible_pid(&socketioxide::recovery::random_pid()));
        assert!(!plausible_pid("short"));
        assert!(!plausible_pid(&"a".repeat(31)));
        assert!(!plausible_pid(&format!("{}*", "a".repeat(31))));
        assert!(!plausible_pid(&format!("{}:", "a".repeat(31))));
    }

    #[test]
    fn published_entries_round_trip_whatever_the_room_name() {
        for room in ["room:a b", "room:x 3 y", "all", "room:é\n1"] {
            let msg = format!(
                "1-2 7 {} {}{}",
                room.len(),
                room,
                r#"{"e":"ev","d":[1," 2"]}"#
            );
            let (e, seq) = parse_published(msg.as_bytes()).unwrap();
            assert_eq!(seq, 7);
            assert_eq!(e.room, room);
            assert_eq!(e.offset, Offset { ms: 1, seq: 2 });
            assert_eq!(&*e.payload, r#"{"e":"ev","d":[1," 2"]}"#);
        }
        assert!(parse_published(b"1-2 7 99 room:a{}").is_none());
        assert!(parse_published(b"x 7 1 a{}").is_none());
    }

    fn off(s: &str) -> Offset {
        s.parse().unwrap()
    }

    #[test]
    fn a_read_is_complete_only_when_nothing_after_the_offset_was_trimmed() {
        let read = |last: &str, trimmed: Option<&str>, first: Option<&str>| Read {
            last: Some(off(last)),
            trimmed_to: trimmed.map(off),
            first: first.map(off),
            ..Default::default()
        };
        // Redis 7: exact
        assert!(
            read("9-0", Some("3-0"), Some("4-0"))
                .check(off("3-0"))
                .is_ok()
        );
        assert!(
            read("9-0", Some("3-0"), Some("4-0"))
                .check(off("2-0"))
                .is_err()
        );
        // without max-deleted-entry-id: the oldest entry must be at or before the offset
        assert!(read("9-0", None, Some("4-0")).check(off("4-0")).is_ok());
        assert!(read("9-0", None, Some("4-0")).check(off("3-0")).is_err());
        // nothing newer than the offset: nothing to replay, nothing missing
        assert!(read("9-0", Some("9-0"), None).check(off("9-0")).is_ok());
        // a future offset is forged
        assert!(
            read("9-0", Some("0-0"), Some("1-0"))
                .check(off("9-1"))
                .is_err()
        );
        // no log at all: only the start
        assert!(Read::default().check(Offset::default()).is_ok());
        assert!(Read::default().check(off("1-0")).is_err());
    }

    #[test]
    fn read_replies_parse() {
        let v: Vec<String> = ["ok", "9-0", "2-0", "3-0", "8-0", "5-0", "room:a", "{}"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let r = parse_read(&v).unwrap();
        assert_eq!(r.last, Some(off("9-0")));
        assert_eq!(r.trimmed_to, Some(off("2-0")));
        assert_eq!(r.first, Some(off("3-0")));
        assert_eq!(r.read_to, off("8-0"));
        assert_eq!(r.entries.len(), 1);
        assert_eq!(r.entries[0].room, "room:a");
        // Redis 6: no max-deleted-entry-id
        let v: Vec<String> = ["ok", "9-0", "", "3-0", "3-0"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(parse_read(&v).unwrap().trimmed_to, None);
        assert!(parse_read(&["ok".to_string()]).is_err());
        assert!(parse_read(&["none".to_string()]).unwrap().last.is_none());
    }

    #[test]
    fn sessions_read_back_with_their_join_offsets() {
        let m: HashMap<String, String> = [
            ("sid", "AbCdEfGhIjKlMnOp"),
            ("since", "5-0"),
            ("rooms", r#"["room:x","room:y","sid:AbCdEfGhIjKlMnOp"]"#),
            ("joined", r#"{"room:y":"7-1","room:z":"bad"}"#),
            ("user", ""),
            ("tok", "t"),
            ("disc", "0"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let s = session_from_map(&m).unwrap();
        assert_eq!(s.since, off("5-0"));
        assert_eq!(s.user, None);
        assert_eq!(s.joined.len(), 1);
        let entry = |room: &str, o: &str| Entry {
            offset: off(o),
            room: room.into(),
            payload: "{}".into(),
        };
        assert!(joined_before(&entry("room:x", "6-0"), &s.joined));
        assert!(!joined_before(&entry("room:y", "7-1"), &s.joined));
        assert!(joined_before(&entry("room:y", "7-2"), &s.joined));
        assert!(joined_before(&entry(ALL_ROOM, "1-0"), &s.joined));
        // an older session without the field
        let mut old = m.clone();
        old.remove("joined");
        assert!(session_from_map(&old).unwrap().joined.is_empty());
        // a broken one is no session
        let mut bad = m;
        bad.insert("since".into(), "x".into());
        assert!(session_from_map(&bad).is_none());
    }

    #[test]
    fn stored_rooms_leave_out_the_node_specific_member_room() {
        let rooms = stored_rooms(vec![
            "sid:x".to_string(),
            member_room("x", "node-a", None),
            "room:b".to_string(),
            ALL_ROOM.to_string(),
        ]);
        assert_eq!(rooms, vec!["all", "room:b", "sid:x"]);
    }
}
