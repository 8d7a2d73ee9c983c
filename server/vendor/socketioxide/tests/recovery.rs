//! Connection state recovery: the CONNECT reply's pid, restored socket ids, and the engine.io
//! session -> socket id mapping that a restored socket needs.
mod utils;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use engineioxide::Packet::*;
use socketioxide::{
    SocketIo,
    extract::SocketRef,
    recovery::{BoxFuture, RestoreRequest, RestoredSession, SessionStore},
    socket::{DisconnectReason, Sid},
};
use socketioxide_core::{Value, packet::Packet, parser::Parse};
use socketioxide_parser_common::CommonParser;
use tokio::sync::mpsc;

/// pid -> (sid, rooms).
type Sessions = HashMap<String, (Sid, Vec<String>)>;
/// (pid, offset) claims.
type Claims = Vec<(String, Option<String>)>;

/// Sessions kept in memory, written by the disconnect handler.
#[derive(Clone, Default)]
struct Store {
    sessions: Arc<Mutex<Sessions>>,
    /// Every claim the namespace asked about.
    asked: Arc<Mutex<Claims>>,
}

/// What the store hands to the connect handler.
struct Restored {
    rooms: Vec<String>,
    offset: Option<String>,
}

impl SessionStore for Store {
    fn restore(&self, req: RestoreRequest<'_>) -> BoxFuture<Option<RestoredSession>> {
        let (pid, offset) = (req.pid, req.offset);
        assert!(req.auth.is_some(), "the whole CONNECT data is given");
        self.asked
            .lock()
            .unwrap()
            .push((pid.to_string(), offset.map(str::to_string)));
        let found = self.sessions.lock().unwrap().remove(pid);
        let offset = offset.map(str::to_string);
        Box::pin(async move {
            let (sid, rooms) = found?;
            Some(RestoredSession {
                sid,
                data: Box::new(Restored { rooms, offset }),
            })
        })
    }
}

#[derive(serde::Deserialize, Debug)]
struct Reply {
    sid: String,
    pid: Option<String>,
}

fn connect_reply(p: engineioxide::Packet) -> Reply {
    match p {
        Message(s) => {
            let json = s.strip_prefix('0').expect("a CONNECT packet");
            serde_json::from_str(json).unwrap()
        }
        p => panic!("not a message: {p:?}"),
    }
}

fn event(event: &str, data: impl serde::Serialize) -> engineioxide::Packet {
    let packet = Packet::event("/", CommonParser.encode_value(&data, Some(event)).unwrap());
    match CommonParser.encode(packet) {
        Value::Str(data, _) => Message(data),
        Value::Bytes(_) => unreachable!(),
    }
}

async fn recv(rx: &mut mpsc::Receiver<engineioxide::Packet>) -> engineioxide::Packet {
    tokio::time::timeout(Duration::from_millis(500), rx.recv())
        .await
        .expect("a packet in time")
        .expect("open")
}

/// A namespace whose sockets join `room:a` (or their restored rooms), answer `ping` with
/// `pong` + their id, and persist their session on a recoverable disconnect.
fn server(store: Store) -> (SocketIo, mpsc::Receiver<(String, bool, Option<String>)>) {
    let (_svc, io) = SocketIo::builder()
        .with_connection_state_recovery(store.clone())
        .build_svc();
    let (tx, rx) = mpsc::channel(16);
    io.ns("/", async move |s: SocketRef| {
        match s.restored::<Restored>() {
            Some(r) => {
                s.join(r.rooms.clone());
                tx.try_send((s.id.to_string(), true, r.offset.clone()))
                    .unwrap();
            }
            None => {
                s.join("room:a");
                tx.try_send((s.id.to_string(), false, None)).unwrap();
            }
        }
        s.on("ping", async |s: SocketRef| {
            s.emit("pong", &s.id.to_string()).unwrap();
        });
        let store = store.clone();
        s.on_disconnect(async move |s: SocketRef, reason: DisconnectReason| {
            if reason.is_recoverable() {
                let rooms = s.rooms().into_iter().map(|r| r.to_string()).collect();
                store
                    .sessions
                    .lock()
                    .unwrap()
                    .insert(s.pid().unwrap().to_string(), (s.id, rooms));
            }
        });
    });
    (io, rx)
}

#[tokio::test]
async fn without_recovery_the_connect_reply_has_no_pid() {
    let (_svc, io) = SocketIo::new_svc();
    io.ns("/", async |s: SocketRef| {
        assert!(s.pid().is_none() && !s.recovered());
    });
    let (_tx, mut rx) = io
        .new_dummy_sock("/", serde_json::json!({"pid": "x"}))
        .await;
    let reply = connect_reply(recv(&mut rx).await);
    assert!(reply.pid.is_none());
}

#[tokio::test]
async fn a_reconnect_with_the_pid_restores_the_socket_id_and_its_rooms() {
    let store = Store::default();
    let (io, mut connected) = server(store.clone());

    let (tx, mut rx) = io.new_dummy_sock("/", ()).await;
    let first = connect_reply(recv(&mut rx).await);
    let pid = first.pid.clone().expect("a pid with recovery on");
    assert_eq!(pid.len(), 32);
    assert_eq!(
        connected.recv().await.unwrap(),
        (first.sid.clone(), false, None)
    );
    // the transport is lost: the session is persisted
    tx.send(Close).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(io.sockets().is_empty());

    let (tx2, mut rx2) = io
        .new_dummy_sock(
            "/",
            serde_json::json!({"pid": pid, "offset": "7-0", "token": "t"}),
        )
        .await;
    let second = connect_reply(recv(&mut rx2).await);
    assert_eq!(second.sid, first.sid, "the old socket id");
    assert_eq!(second.pid.as_deref(), Some(pid.as_str()), "the same pid");
    assert_eq!(
        connected.recv().await.unwrap(),
        (first.sid.clone(), true, Some("7-0".to_string()))
    );
    assert_eq!(
        store.asked.lock().unwrap().last().unwrap(),
        &(pid.clone(), Some("7-0".to_string()))
    );

    // the restored socket is found by its (old) id and receives the packets of its new
    // engine.io session
    let sid: Sid = first.sid.parse().unwrap();
    let s = io.get_socket(sid).expect("found by the restored id");
    assert!(s.recovered());
    assert_ne!(s.engine_sid(), sid);
    tx2.send(event("ping", ())).await.unwrap();
    let pong = recv(&mut rx2).await;
    assert_eq!(
        pong,
        Message(format!("2[\"pong\",\"{}\"]", first.sid).into())
    );
    // and its rooms
    io.to("room:a").emit("news", &1).await.unwrap();
    assert_eq!(recv(&mut rx2).await, Message("2[\"news\",1]".into()));

    // its own disconnection removes it (found through the engine.io id)
    tx2.send(Close).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(io.get_socket(sid).is_none());
    assert!(io.sockets().is_empty());
}

#[tokio::test]
async fn an_unknown_or_forged_pid_gets_a_new_session() {
    let store = Store::default();
    let (io, mut connected) = server(store.clone());
    for auth in [
        serde_json::json!({"pid": "unknown", "offset": "1-0"}),
        serde_json::json!({"pid": {"$gt": ""}}),
        serde_json::json!({"pid": 12}),
        serde_json::json!("just a string"),
    ] {
        let (_tx, mut rx) = io.new_dummy_sock("/", auth.clone()).await;
        let reply = connect_reply(recv(&mut rx).await);
        let (sid, recovered, _) = connected.recv().await.unwrap();
        assert!(!recovered, "{auth}");
        assert_eq!(reply.sid, sid);
        assert_ne!(reply.pid.as_deref(), Some("unknown"));
        assert_eq!(reply.pid.unwrap().len(), 32);
    }
    // only the string pid reached the store
    assert_eq!(store.asked.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_session_whose_socket_is_still_connected_is_not_restored_twice() {
    let store = Store::default();
    let (io, mut connected) = server(store.clone());
    let (_tx, mut rx) = io.new_dummy_sock("/", ()).await;
    let first = connect_reply(recv(&mut rx).await);
    connected.recv().await.unwrap();
    // a store that hands out a live socket's id (e.g. written through while connected)
    store.sessions.lock().unwrap().insert(
        "stolen".into(),
        (first.sid.parse().unwrap(), vec!["room:a".into()]),
    );
    let (_tx2, mut rx2) = io
        .new_dummy_sock("/", serde_json::json!({"pid": "stolen"}))
        .await;
    let second = connect_reply(recv(&mut rx2).await);
    assert_ne!(second.sid, first.sid);
    assert_ne!(second.pid.as_deref(), Some("stolen"));
    assert_eq!(io.sockets().len(), 2);
}

#[test]
fn recoverable_reasons_are_socket_io_s() {
    use DisconnectReason::*;
    for r in [
        TransportClose,
        TransportError,
        HeartbeatTimeout,
        ClosingServer,
    ] {
        assert!(r.is_recoverable(), "{r:?}");
    }
    for r in [
        ClientNSDisconnect,
        ServerNSDisconnect,
        PacketParsingError,
        MultipleHttpPollingError,
    ] {
        assert!(!r.is_recoverable(), "{r:?}");
    }
}
