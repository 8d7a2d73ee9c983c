//! The socket.io side: connect (auth, internal rooms, `hello`) and the client events.
//!
//! Rooms. A socket.io socket does not join a room named by its own id in socketioxide
//! (`Socket::join` only touches the rooms given), and client-chosen names must never reach
//! another socket's private messages, so every room has a prefix:
//! - `room:<name>`: rooms clients join and publish to;
//! - `sid:<socket id>`: the socket itself (target of `send {to}`, on any node);
//! - `user:<sub>`: every socket of an authenticated user (`send {user}`);
//! - `member:<json [id, node, user?]>`: describes the socket, so `presence` gets id, node and
//!   user of every member on every node with one adapter request (a remote socket only
//!   carries its id and server uid, not its data).
//!
//! Ordering. socketioxide runs every event handler in its own task, so two events of one
//! socket could overtake each other: every event goes through the socket's queue
//! ([`Order`], `order.rs`), and the events of one socket take effect in the order they were
//! sent (a 500-event burst arrives in order on every node), while different sockets never
//! wait on each other. A broadcast lets the next event start once its PUBLISH is queued on
//! the Redis connection (its order is fixed there), so a busy publisher's round trips
//! overlap; whatever an event does on this node waits for its turn ([`order::wait_turn`]).
//!
//! Connection state recovery (`RECOVERY_WINDOW`, see `recovery.rs`): every outgoing message
//! then goes through the recovery log instead of the adapter's broadcast, rooms are joined in
//! the log's delivery order (a new socket's first rooms and a restored socket's rooms as the
//! first item of its [`Order`] queue, before its first event; `hello` after them), and
//! "everyone" is the internal room `all`.

use std::{
    convert::Infallible,
    future::{Ready, ready},
    str::FromStr,
    sync::Arc,
};

use serde::Serialize;
use serde_json::value::RawValue;
use socketioxide::{
    BroadcastError, SocketIo,
    adapter::Adapter,
    extract::{AckSender, SocketRef, State, TryData},
    handler::FromMessageParts,
    operators::BroadcastOperators,
    socket::{DisconnectReason, Sid, Socket},
};
use socketioxide_core::{Uid, Value};
use tracing::{debug, warn};

use crate::{
    auth::{AuthError, HandshakeAuth, Verifier},
    health::{Health, Mode},
    metrics::{AdapterOp, Metrics, OutKind, SendRoute},
    order::{self, BoxFuture, Order},
    protocol::{self, Command, EventKind, InputError, Target},
    recovery::{ALL_ROOM, Recovery},
};

/// What every handler shares.
pub struct App {
    pub node: String,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub verifier: Option<Verifier>,
    /// Connection state recovery, when enabled (every message then goes through its log).
    pub recovery: Option<Arc<Recovery>>,
    /// This node's adapter id when private messages are routed to their socket's node
    /// (`route.rs`); `None`: they are broadcast.
    pub route: Option<Uid>,
}

/// The namespace clients connect to.
pub const NAMESPACE: &str = "/";

pub fn client_room(name: &str) -> String {
    format!("room:{name}")
}
pub fn socket_room(id: &str) -> String {
    format!("sid:{id}")
}
pub fn user_room(user: &str) -> String {
    format!("user:{user}")
}

pub const MEMBER_PREFIX: &str = "member:";

/// One member of a room, as `presence` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
pub struct Member {
    pub id: String,
    pub node: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// The internal room describing a socket (see the module doc).
pub fn member_room(id: &str, node: &str, user: Option<&str>) -> String {
    let json = match user {
        Some(u) => serde_json::to_string(&(id, node, u)),
        None => serde_json::to_string(&(id, node)),
    };
    // Serializing strings cannot fail.
    format!("{MEMBER_PREFIX}{}", json.unwrap_or_default())
}

/// Reads a member room back; `None` for any other room.
pub fn parse_member_room(room: &str) -> Option<Member> {
    let json = room.strip_prefix(MEMBER_PREFIX)?;
    let parts: Vec<String> = serde_json::from_str(json).ok()?;
    let mut parts = parts.into_iter();
    Some(Member {
        id: parts.next()?,
        node: parts.next()?,
        user: parts.next(),
    })
}

/// The members described by a set of rooms, sorted by id, each once.
pub fn members_from_rooms<'a>(rooms: impl IntoIterator<Item = &'a str>) -> Vec<Member> {
    let mut members: Vec<Member> = rooms.into_iter().filter_map(parse_member_room).collect();
    members.sort_by(|a, b| a.id.cmp(&b.id));
    members.dedup_by(|a, b| a.id == b.id);
    members
}

/// The user id a verified handshake left on the socket.
#[derive(Clone)]
pub struct UserId(pub Arc<str>);

/// Connect middleware: with an auth secret configured, a valid token is required. The error
/// text reaches the client as the `connect_error` message.
pub async fn authenticate<A: Adapter>(
    s: SocketRef<A>,
    TryData(auth): TryData<HandshakeAuth>,
    State(app): State<Arc<App>>,
) -> Result<(), AuthError> {
    let Some(verifier) = &app.verifier else {
        return Ok(());
    };
    match verifier.verify_handshake(auth.as_ref().ok()) {
        Ok(user) => {
            s.extensions.insert(UserId(user.into()));
            Ok(())
        }
        Err(e) => {
            app.metrics.auth_failures.inc();
            debug!(sid = %s.id, "handshake refused: {e}");
            Err(e)
        }
    }
}

/// Per-socket state, captured by the socket's event handler.
struct SocketCtx {
    app: Arc<App>,
    order: Arc<Order>,
}

/// Connect handler. Synchronous on purpose: the event handler must be registered before
/// socketioxide reads the client's next packet, or a `join` sent right after the connect
/// could find no handler.
pub fn on_connect<A: Adapter>(s: SocketRef<A>, State(app): State<Arc<App>>) -> Ready<()> {
    let user = s.extensions.get::<UserId>().map(|u| u.0);
    let id = s.id.to_string();
    let mut rooms = vec![
        socket_room(&id),
        member_room(&id, &app.node, user.as_deref()),
    ];
    if let Some(u) = &user {
        rooms.push(user_room(u));
    }
    let ctx = Arc::new(SocketCtx {
        app: app.clone(),
        order: Arc::default(),
    });
    // With recovery, the rooms are joined in the log's delivery order (see recovery.rs), as
    // the first item of the socket's queue (before its first event), and `hello` follows once
    // the socket is in its rooms (after the replay of a restored one). The item only starts
    // once the event handler below is registered: a client that waits for `hello` never
    // sends an event the socket cannot take yet.
    let first = match &app.recovery {
        None => {
            s.join(rooms);
            None
        }
        Some(rec) => {
            let (rec, s, app) = (rec.clone(), s.clone(), app.clone());
            ctx.order.submit(async move {
                if s.recovered() {
                    rec.resume(&s).await;
                } else {
                    rec.attach(&s, rooms).await;
                }
                send_hello(&app, &s);
            })
        }
    };

    app.metrics.connected.inc();
    app.metrics.connections.inc();
    let metrics = app.metrics.clone();
    match app.recovery.clone() {
        None => s.on_disconnect(move || {
            metrics.connected.dec();
            ready(())
        }),
        // Keeps (or ends) the session; the socket leaves its rooms after this.
        Some(rec) => s.on_disconnect(move |s: SocketRef<A>, reason: DisconnectReason| {
            metrics.connected.dec();
            let rec = rec.clone();
            async move { rec.on_disconnect(&s, reason).await }
        }),
    }

    s.on_fallback(
        move |s: SocketRef<A>, io: SocketIo<A>, ack: AckSender<A>, frame: Frame| {
            on_event(&ctx, s, io, ack, frame)
        },
    );

    if let Some(pump) = first {
        drop(tokio::spawn(pump));
    }
    if app.recovery.is_none() {
        send_hello(&app, &s);
    }
    ready(())
}

/// The `hello` event: this node and the socket id.
fn send_hello<A: Adapter>(app: &App, s: &SocketRef<A>) {
    let id = s.id.to_string();
    #[derive(Serialize)]
    struct Hello<'a> {
        node: &'a str,
        id: &'a str,
    }
    match s.emit(
        "hello",
        &Hello {
            node: &app.node,
            id: &id,
        },
    ) {
        Ok(()) => app.metrics.event_out(OutKind::Hello),
        Err(e) => debug!(sid = %id, "hello not sent: {e}"),
    }
}

/// The raw event packet (`["event", args...]` plus binary attachments), taken as is so it
/// can be read without copying.
pub struct Frame(Value);

impl<A: Adapter> FromMessageParts<A> for Frame {
    type Error = Infallible;
    fn from_message_parts(
        _: &Arc<Socket<A>>,
        v: &mut Value,
        _: &Option<i64>,
    ) -> Result<Self, Infallible> {
        Ok(Frame(std::mem::replace(
            v,
            Value::Bytes(bytes::Bytes::new()),
        )))
    }
}

impl Frame {
    fn text(&self) -> Result<&str, InputError> {
        match &self.0 {
            Value::Str(s, None) => Ok(s.as_str()),
            Value::Str(_, Some(_)) => Err(InputError::Binary),
            Value::Bytes(_) => Err(InputError::Malformed),
        }
    }
}

/// `{ok:true}`, with `partial` when Redis was unreachable and only this node's sockets were
/// reached.
#[derive(Serialize)]
struct OkAck {
    ok: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    partial: bool,
}

const OK: OkAck = OkAck {
    ok: true,
    partial: false,
};

#[derive(Serialize)]
struct ErrAck<'a> {
    ok: bool,
    error: &'a str,
}

#[derive(Serialize)]
struct PresenceAck {
    members: Vec<Member>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    partial: bool,
}

fn send_ack<A: Adapter, T: Serialize>(app: &App, ack: AckSender<A>, body: &T) {
    match ack.send(body) {
        Ok(()) => app.metrics.event_out(OutKind::Ack),
        Err(e) => debug!("ack not sent: {e}"),
    }
}

/// The socket's event handler: queues the event behind the socket's previous ones.
fn on_event<A: Adapter>(
    ctx: &Arc<SocketCtx>,
    s: SocketRef<A>,
    io: SocketIo<A>,
    ack: AckSender<A>,
    frame: Frame,
) -> BoxFuture {
    let ctx2 = ctx.clone();
    let event = async move { handle_event(&ctx2.app, s, io, ack, frame).await };
    // socketioxide spawns what this returns: the socket's pump, or nothing to do.
    ctx.order
        .submit(event)
        .unwrap_or_else(|| Box::pin(std::future::ready(())))
}

async fn handle_event<A: Adapter>(
    app: &App,
    s: SocketRef<A>,
    io: SocketIo<A>,
    ack: AckSender<A>,
    frame: Frame,
) {
    let parsed = parse_event(app, &frame);
    let root = io.of(NAMESPACE);
    if !matches!(
        (&parsed, &root),
        (Ok((_, Command::Publish(_) | Command::Send { .. })), Some(_))
    ) {
        // Only a delivery may start before the previous event is done: it waits for its
        // turn itself (see `deliver`); a refusal's ack, a join or presence wait here.
        order::wait_turn().await;
    }
    let (kind, cmd) = match parsed {
        Ok(p) => p,
        Err((kind, e)) => return refuse(app, kind, ack, &e),
    };
    if !s.connected() {
        // Queued behind earlier events and the client left meanwhile: a late `join` would
        // put a socket that no longer exists back into a room.
        return;
    }
    let Some(root) = root else {
        // The namespace is gone: the server is closing.
        return refuse(app, kind, ack, "server is shutting down");
    };
    app.metrics.event_in(kind, true);

    match cmd {
        Command::Join(room) => {
            match &app.recovery {
                None => s.join(client_room(&room)),
                Some(rec) => {
                    rec.join(&s, client_room(&room)).await;
                    rec.save(&s).await;
                }
            }
            send_ack(app, ack, &OK);
        }
        Command::Leave(room) => {
            match &app.recovery {
                None => s.leave(client_room(&room)),
                Some(rec) => {
                    rec.leave(&s, client_room(&room));
                    rec.save(&s).await;
                }
            }
            send_ack(app, ack, &OK);
        }
        Command::Publish(p) => {
            let dest = match &p.room {
                Some(r) => Dest::Room(client_room(r)),
                None => Dest::All,
            };
            let partial = deliver(app, &root, &dest, &p.event, p.data).await;
            app.metrics.event_out(OutKind::Publish);
            send_ack(app, ack, &OkAck { ok: true, partial });
        }
        Command::Send {
            target,
            event,
            data,
        } => {
            let dest = match &target {
                Target::Socket(to) => socket_dest(app, &root, to),
                Target::User(u) => Dest::Room(user_room(u)),
            };
            let partial = deliver(app, &root, &dest, &event, data).await;
            app.metrics.event_out(OutKind::Send);
            send_ack(app, ack, &OkAck { ok: true, partial });
        }
        Command::Presence(room) => {
            let (members, partial) = presence(app, root, client_room(&room)).await;
            send_ack(app, ack, &PresenceAck { members, partial });
        }
    }
}

/// The event's kind and command, or the kind and the error to refuse it with (pure).
fn parse_event<'f>(
    app: &App,
    frame: &'f Frame,
) -> Result<(EventKind, Command<'f>), (EventKind, String)> {
    let (event, arg) = frame
        .text()
        .and_then(protocol::split_frame)
        .map_err(|e| (EventKind::Unknown, e.to_string()))?;
    let kind = EventKind::of(&event);
    protocol::parse_command(&event, arg, app.verifier.is_some())
        .map(|cmd| (kind, cmd))
        .map_err(|e| (kind, e.to_string()))
}

/// Where a `send {to}` goes (see `route.rs`), counted by route.
fn socket_dest<A: Adapter>(app: &App, root: &BroadcastOperators<A>, to: &str) -> Dest {
    let room = socket_room(to);
    // A socket on this node gets it directly, without the Redis round trip.
    let here = Sid::from_str(to)
        .ok()
        .is_some_and(|sid| root.get_socket(sid).is_some());
    // With routing on and the socket elsewhere: this node's id and the one the socket id names.
    let named = (!here)
        .then_some(app.route)
        .flatten()
        .and_then(|own| crate::route::node_of(to).map(|node| (own, node)));
    let (dest, route) = match named {
        _ if here => (Dest::LocalRoom(room), SendRoute::Local),
        // Made here and gone (ids do not move without recovery): nobody to reach.
        Some((own, node)) if node == own => (Dest::LocalRoom(room), SendRoute::Local),
        Some((_, node)) => (Dest::Node(room, node), SendRoute::Node),
        None => (Dest::Room(room), SendRoute::Broadcast),
    };
    // With recovery, every message goes through the log whatever the route.
    if app.recovery.is_none() {
        app.metrics.send_route(route);
    }
    dest
}

fn refuse<A: Adapter>(app: &App, kind: EventKind, ack: AckSender<A>, error: &str) {
    app.metrics.event_in(kind, false);
    send_ack(app, ack, &ErrAck { ok: false, error });
}

/// The members of `room` on every node. When the cross-node query fails the local members
/// are returned with `partial = true`.
pub async fn presence<A: Adapter>(
    app: &App,
    root: BroadcastOperators<A>,
    room: String,
) -> (Vec<Member>, bool) {
    let cross_node = app.health.mode() == Mode::Redis;
    if cross_node && app.health.redis_usable() {
        match root.clone().to(room.clone()).rooms().await {
            Ok(rooms) => return (members_from_rooms(rooms.iter().map(|r| r.as_ref())), false),
            Err(e) => {
                app.metrics.adapter_error(AdapterOp::Presence);
                warn!("cross-node presence failed, answering with this node's members: {e}");
            }
        }
    }
    let rooms = root.local().to(room).rooms().await.unwrap_or_default();
    (
        members_from_rooms(rooms.iter().map(|r| r.as_ref())),
        cross_node,
    )
}

/// Where an outgoing message goes.
#[derive(Debug, Clone)]
pub enum Dest {
    /// Every socket on every node.
    All,
    /// Every socket in this internal room, on every node.
    Room(String),
    /// A room known to be on this node only (a local `send {to}`).
    LocalRoom(String),
    /// A room known to be on that node only (a `send {to}` whose socket id names its node,
    /// `route.rs`): published on that node's own channel, and broadcast to every node if no
    /// node listens there.
    Node(String, Uid),
}

impl Dest {
    fn op<A: Adapter>(&self, root: &BroadcastOperators<A>, local: bool) -> BroadcastOperators<A> {
        let op = match self {
            Dest::All => root.clone(),
            Dest::Room(r) | Dest::LocalRoom(r) => root.clone().to(r.clone()),
            Dest::Node(r, uid) => root.clone().to(r.clone()).on_server(*uid),
        };
        if local || matches!(self, Dest::LocalRoom(_)) {
            op.local()
        } else {
            op
        }
    }
}

/// Emits `event` with `data` to `dest` (the packet is encoded once, whatever the number of
/// receivers). Returns `true` when the message reached this node's sockets only although
/// other nodes may exist: Redis was unreachable, so it was delivered locally instead of not
/// at all.
pub async fn deliver<A: Adapter>(
    app: &App,
    root: &BroadcastOperators<A>,
    dest: &Dest,
    event: &str,
    data: &RawValue,
) -> bool {
    if let Some(rec) = &app.recovery {
        let room = match dest {
            Dest::All => ALL_ROOM,
            Dest::Room(r) | Dest::LocalRoom(r) | Dest::Node(r, _) => r.as_str(),
        };
        order::wait_turn().await;
        return rec.publish(room, event, data).await;
    }
    let cross_node = app.health.mode() == Mode::Redis && !matches!(dest, Dest::LocalRoom(_));
    // With Redis known to be down, go local at once rather than wait for a timeout.
    let try_remote = cross_node && app.health.redis_usable();
    if try_remote && matches!(dest, Dest::All | Dest::Room(_)) {
        // One PUBLISH on the shared channel, then the local delivery: the driver lets the
        // next event start once the PUBLISH is queued, and waits for this event's turn
        // before the local part (`order.rs`). Not for `Dest::Node`: its fallback below
        // publishes a second time, which the next event must not overtake.
        order::allow_early_release();
    }
    // Every path below that does not go through the driver starts here: wait for the turn
    // (no-op once the driver has waited).
    if !try_remote {
        order::wait_turn().await;
    }
    let res = dest.op(root, !try_remote).emit(event, data).await;
    // The driver may have failed before queueing anything (then it did not wait).
    order::wait_turn().await;
    let partial = cross_node && !try_remote;
    match res {
        Ok(()) => partial,
        Err(BroadcastError::Socket(errs)) => {
            // Delivered; some local sockets had a full or closed send buffer.
            app.metrics.delivery_failures.inc_by(errs.len() as u64);
            partial
        }
        Err(BroadcastError::Adapter(e)) if no_subscriber(&e) => {
            // The node the socket id names is gone, or made the id without routing: every
            // node checks the room, as without routing.
            let Dest::Node(room, _) = dest else {
                return partial;
            };
            app.metrics.send_route(SendRoute::Fallback);
            debug!("{e}: broadcasting instead");
            Box::pin(deliver(app, root, &Dest::Room(room.clone()), event, data)).await
        }
        Err(BroadcastError::Adapter(e)) => {
            // Nothing was delivered: the adapter publishes before broadcasting locally.
            app.metrics.adapter_error(AdapterOp::Broadcast);
            warn!("cross-node delivery failed, delivering on this node only: {e}");
            if let Err(BroadcastError::Socket(errs)) = dest.op(root, true).emit(event, data).await {
                app.metrics.delivery_failures.inc_by(errs.len() as u64);
            }
            true
        }
        Err(e) => {
            warn!("message not delivered: {e}");
            partial
        }
    }
}

/// Whether the adapter failed because a node's own channel had no subscriber (`route.rs`).
fn no_subscriber(e: &socketioxide::adapter::AdapterError) -> bool {
    e.0.downcast_ref::<socketioxide_redis::Error<crate::adapter::RedisDriver>>()
        .is_some_and(|e| {
            matches!(
                e,
                socketioxide_redis::Error::Driver(crate::adapter::DriverError::NoSubscriber(_))
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_rooms_never_collide_with_client_rooms() {
        let id = "AbCdEfGhIjKlMnOp";
        // a client joining a room named like a socket id, or like an internal room, gets a
        // `room:` room, which no internal name starts with
        for name in [
            id,
            "sid:AbCdEfGhIjKlMnOp",
            "user:alice",
            "member:[\"x\",\"n\"]",
        ] {
            let r = client_room(name);
            assert!(r.starts_with("room:"));
            assert_ne!(r, socket_room(id));
            assert_ne!(r, user_room("alice"));
            assert!(parse_member_room(&r).is_none());
        }
        assert_eq!(socket_room(id), "sid:AbCdEfGhIjKlMnOp");
    }

    #[test]
    fn member_rooms_round_trip() {
        let r = member_room("s1", "node-a", Some("al\"ice"));
        assert_eq!(
            parse_member_room(&r),
            Some(Member {
                id: "s1".into(),
                node: "node-a".into(),
                user: Some("al\"ice".into())
            })
        );
        let r = member_room("s2", "n,b", None);
        assert_eq!(
            parse_member_room(&r),
            Some(Member {
                id: "s2".into(),
                node: "n,b".into(),
                user: None
            })
        );
        assert!(parse_member_room("member:not json").is_none());
        assert!(parse_member_room("member:[\"only-id\"]").is_none());
        assert!(parse_member_room("room:x").is_none());
    }

    #[test]
    fn presence_lists_each_member_once_from_any_rooms() {
        let rooms = [
            member_room("b", "n2", None),
            "room:lobby".to_string(),
            socket_room("b"),
            member_room("a", "n1", Some("u")),
            member_room("b", "n2", None),
            user_room("u"),
        ];
        let members = members_from_rooms(rooms.iter().map(String::as_str));
        assert_eq!(
            members,
            vec![
                Member {
                    id: "a".into(),
                    node: "n1".into(),
                    user: Some("u".into())
                },
                Member {
                    id: "b".into(),
                    node: "n2".into(),
                    user: None
                },
            ]
        );
        let json = serde_json::to_value(&members).unwrap();
        assert_eq!(
            json,
            serde_json::json!([{"id":"a","node":"n1","user":"u"},{"id":"b","node":"n2"}])
        );
    }

    #[test]
    fn acks_have_the_contract_shape() {
        assert_eq!(
            serde_json::to_string(&OkAck {
                ok: true,
                partial: false
            })
            .unwrap(),
            r#"{"ok":true}"#
        );
        assert_eq!(
            serde_json::to_string(&OkAck {
                ok: true,
                partial: true
            })
            .unwrap(),
            r#"{"ok":true,"partial":true}"#
        );
        assert_eq!(
            serde_json::to_string(&ErrAck {
                ok: false,
                error: "x"
            })
            .unwrap(),
            r#"{"ok":false,"error":"x"}"#
        );
        assert_eq!(
            serde_json::to_string(&PresenceAck {
                members: vec![],
                partial: false
            })
            .unwrap(),
            r#"{"members":[]}"#
        );
    }
}
