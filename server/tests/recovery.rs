//! Connection state recovery on one node without Redis (the in-memory log), over the raw
//! socket.io protocol: the CONNECT reply's pid, a reconnect with `{pid, offset}`, the replay of
//! what was missed (offset as the last argument), and clean sessions for bad claims.

mod common;

use std::{net::SocketAddr, time::Duration};

use common::{Server, WAIT};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::time::timeout;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite::Message};

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// A raw client that keeps every event's whole argument list.
struct Raw {
    ws: Ws,
    sid: String,
    pid: Option<String>,
    next_ack: u64,
    /// Events received before `hello` (a restored socket's replay).
    early: std::collections::VecDeque<Vec<Value>>,
}

async fn text(ws: &mut Ws) -> Option<String> {
    loop {
        match ws.next().await? {
            Ok(Message::Text(t)) => return Some(t.to_string()),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

impl Raw {
    async fn connect(addr: SocketAddr, data: Option<Value>) -> Raw {
        let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        assert!(text(&mut ws).await.unwrap().starts_with('0'));
        let connect = match data {
            Some(d) => format!("40{d}"),
            None => "40".into(),
        };
        ws.send(Message::text(connect)).await.unwrap();
        loop {
            let p = timeout(WAIT, text(&mut ws)).await.unwrap().unwrap();
            if p == "2" {
                ws.send(Message::text("3")).await.unwrap();
            } else if let Some(body) = p.strip_prefix("40") {
                let v: Value = serde_json::from_str(body).unwrap();
                let mut raw = Raw {
                    ws,
                    sid: v["sid"].as_str().unwrap().into(),
                    pid: v["pid"].as_str().map(str::to_string),
                    next_ack: 0,
                    early: Default::default(),
                };
                // The server is ready for events once it says `hello` (as socket.io-client
                // users of this server wait for it).
                loop {
                    let e = raw.next_event().await;
                    if e[0] == "hello" {
                        return raw;
                    }
                    raw.early.push_back(e);
                }
            } else {
                panic!("unexpected packet during connect: {p}");
            }
        }
    }

    /// The next event's `[name, args...]` (`hello` skipped).
    async fn event(&mut self) -> Vec<Value> {
        if let Some(e) = self.early.pop_front() {
            return e;
        }
        loop {
            let e = self.next_event().await;
            if e[0] != "hello" {
                return e;
            }
        }
    }

    /// The next event's `[name, args...]`, pings answered.
    async fn next_event(&mut self) -> Vec<Value> {
        loop {
            let p = timeout(WAIT, text(&mut self.ws))
                .await
                .expect("an event in time")
                .expect("open");
            if p == "2" {
                self.ws.send(Message::text("3")).await.unwrap();
            } else if let Some(body) = p.strip_prefix("42") {
                return serde_json::from_str(body).unwrap();
            }
        }
    }

    async fn silence(&mut self, within: Duration) {
        assert!(
            self.early.is_empty(),
            "expected nothing, got {:?}",
            self.early
        );
        if let Ok(Some(p)) = timeout(within, text(&mut self.ws)).await {
            assert!(
                p == "2" || p.starts_with("42[\"hello\""),
                "expected nothing, got {p}"
            );
        }
    }

    async fn ack(&mut self, event: &str, arg: Value) -> Value {
        let id = self.next_ack;
        self.next_ack += 1;
        let frame = format!("42{id}{}", json!([event, arg]));
        self.ws.send(Message::text(frame)).await.unwrap();
        let prefix = format!("43{id}");
        loop {
            let p = timeout(WAIT, text(&mut self.ws)).await.unwrap().unwrap();
            if let Some(body) = p.strip_prefix(&prefix) {
                let v: Value = serde_json::from_str(body).unwrap();
                assert_eq!(v[0]["ok"], true, "{event} {arg}: {v}");
                return v[0].clone();
            }
        }
    }

    /// Drops the connection without a socket.io DISCONNECT (a lost transport).
    async fn lose(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// A stream id as a comparable pair.
fn id(s: &str) -> (u64, u64) {
    let (a, b) = s.split_once('-').unwrap();
    (a.parse().unwrap(), b.parse().unwrap())
}

async fn server() -> Server {
    Server::start(&["--recovery-window=30s", "--recovery-max-packets=100"]).await
}

#[tokio::test]
async fn a_lost_client_recovers_its_id_rooms_and_missed_messages_in_order() {
    let s = server().await;
    let mut a = Raw::connect(s.addr, None).await;
    let mut b = Raw::connect(s.addr, None).await;
    let pid = a.pid.clone().expect("a pid with recovery on");
    assert_eq!(pid.len(), 32);
    a.ack("join", json!("x")).await;
    b.ack("publish", json!({"room": "x", "event": "m", "data": 0}))
        .await;
    let first = a.event().await;
    assert_eq!(first[0], "m");
    assert_eq!(first[1], 0);
    let offset = first[2].as_str().expect("the offset, last").to_string();
    let sid = a.sid.clone();
    a.lose().await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    // missed: a room message, a broadcast, a private message; and one for another room
    b.ack("publish", json!({"room": "x", "event": "m", "data": 1}))
        .await;
    b.ack(
        "publish",
        json!({"room": "other", "event": "m", "data": -1}),
    )
    .await;
    b.ack("publish", json!({"event": "m", "data": 2})).await;
    b.ack("send", json!({"to": sid, "event": "m", "data": 3}))
        .await;

    let mut a = Raw::connect(s.addr, Some(json!({"pid": pid, "offset": offset}))).await;
    assert_eq!(a.sid, sid, "the old socket id");
    assert_eq!(a.pid.as_deref(), Some(pid.as_str()));
    let mut last = offset;
    for want in 1..=3 {
        let e = a.event().await;
        assert_eq!(e[1], want, "{e:?}");
        let o = e[2].as_str().unwrap().to_string();
        assert!(id(&o) > id(&last), "offsets increase: {o} after {last}");
        last = o;
    }
    // live again, once
    b.ack("publish", json!({"room": "x", "event": "m", "data": 4}))
        .await;
    assert_eq!(a.event().await[1], 4);
    a.silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn bad_claims_get_a_clean_session() {
    let s = server().await;
    let mut b = Raw::connect(s.addr, None).await;
    // logged before `a` exists: "0-0" is older than a's session
    b.ack("publish", json!({"room": "x", "event": "m", "data": -2}))
        .await;
    let mut a = Raw::connect(s.addr, None).await;
    a.ack("join", json!("x")).await;
    b.ack("publish", json!({"room": "x", "event": "m", "data": 0}))
        .await;
    let offset = a.event().await[2].as_str().unwrap().to_string();
    let (sid, pid) = (a.sid.clone(), a.pid.clone().unwrap());
    a.lose().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    b.ack("publish", json!({"room": "x", "event": "m", "data": 1}))
        .await;

    for claim in [
        json!({"pid": "A".repeat(32), "offset": offset}),
        json!({"pid": pid, "offset": "0-0"}),
        json!({"pid": pid, "offset": "99999999999999-0"}),
        json!({"pid": pid, "offset": "x"}),
        json!({"pid": [pid], "offset": offset}),
    ] {
        let mut c = Raw::connect(s.addr, Some(claim.clone())).await;
        assert_ne!(c.sid, sid, "{claim}: a new id");
        assert_ne!(c.pid.as_deref(), Some(pid.as_str()), "{claim}: a new pid");
        c.silence(Duration::from_millis(150)).await;
    }
    // the owner still recovers, with what it missed
    let mut a = Raw::connect(s.addr, Some(json!({"pid": pid, "offset": offset}))).await;
    assert_eq!(a.sid, sid);
    assert_eq!(a.event().await[1], 1);
}

#[tokio::test]
async fn a_client_side_disconnect_ends_the_session() {
    let s = server().await;
    let mut a = Raw::connect(s.addr, None).await;
    let pid = a.pid.clone().unwrap();
    a.ws.send(Message::text("41")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let c = Raw::connect(s.addr, Some(json!({"pid": pid}))).await;
    assert_ne!(c.sid, a.sid, "not recovered after a socket.io DISCONNECT");
}

#[tokio::test]
async fn recovery_off_sends_no_pid() {
    let s = Server::start(&[]).await;
    let a = Raw::connect(s.addr, None).await;
    assert!(a.pid.is_none());
}

/// With Redis: the log is trimmed by count and by age, and sessions expire one window after
/// their last write (Redis memory is bounded by the window).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_log_and_sessions_are_bounded() {
    let Some(redis) = common::Redis::start() else {
        return;
    };
    let url = format!("--redis-url={}", redis.url());
    let s = Server::start(&[&url, "--recovery-window=2s", "--recovery-max-packets=100"]).await;
    let (ok, body) = s
        .wait_readyz_body(Duration::from_secs(10), |status, body| {
            status == 200 && !body.contains("degraded")
        })
        .await;
    assert!(ok, "{body}");
    let mut a = Raw::connect(s.addr, None).await;
    let pid = a.pid.clone().unwrap();
    let key = format!("realtime:{{csr}}:s:{pid}");
    for i in 0..1000 {
        a.ack("publish", json!({"event": "m", "data": i})).await;
    }
    let xlen: u64 = redis
        .cli(&["XLEN", "realtime:{csr}:log"])
        .trim()
        .parse()
        .unwrap();
    println!("MEASURE bounded: XLEN after 1000 messages with RECOVERY_MAX_PACKETS=100: {xlen}");
    // `MAXLEN ~` trims whole stream nodes (100 entries by default)
    assert!((100..=200).contains(&xlen), "XLEN {xlen}");
    println!(
        "MEASURE bounded: MEMORY USAGE log {} B (100 small entries), session {} B",
        redis.cli(&["MEMORY", "USAGE", "realtime:{csr}:log"]).trim(),
        redis.cli(&["MEMORY", "USAGE", &key]).trim()
    );
    let pttl: i64 = redis.cli(&["PTTL", &key]).trim().parse().unwrap();
    assert!(
        pttl > 0 && pttl <= 2000,
        "a connected session expires within the window: {pttl}"
    );
    // age: 2.5 s later, one more message trims everything older than the window
    tokio::time::sleep(Duration::from_millis(2500)).await;
    a.ack("publish", json!({"event": "m", "data": "late"}))
        .await;
    let xlen: u64 = redis
        .cli(&["XLEN", "realtime:{csr}:log"])
        .trim()
        .parse()
        .unwrap();
    println!("MEASURE bounded: XLEN after the window: {xlen}");
    assert!(xlen <= 100, "XLEN {xlen}");
    // the connected session is refreshed (every window / 3), a disconnected one expires
    assert_eq!(redis.cli(&["EXISTS", &key]).trim(), "1");
    a.lose().await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        redis.cli(&["EXISTS", &key]).trim(),
        "0",
        "expired after the window"
    );
}

/// A room joined after the client's offset is replayed from the join on, not from the offset:
/// a restore never sends a room's messages from before the socket was in it.
#[tokio::test]
async fn a_room_joined_later_is_replayed_from_the_join_only() {
    let s = server().await;
    let mut a = Raw::connect(s.addr, None).await;
    let mut b = Raw::connect(s.addr, None).await;
    a.ack("join", json!("x")).await;
    b.ack("publish", json!({"room": "x", "event": "m", "data": 0}))
        .await;
    let e = a.event().await;
    assert_eq!(e[1], 0);
    let offset = e[2].as_str().unwrap().to_string();
    // before a joins y: not a's business
    b.ack("publish", json!({"room": "y", "event": "m", "data": -1}))
        .await;
    a.ack("join", json!("y")).await;
    let (sid, pid) = (a.sid.clone(), a.pid.clone().unwrap());
    a.lose().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    b.ack("publish", json!({"room": "y", "event": "m", "data": 1}))
        .await;
    let mut a = Raw::connect(s.addr, Some(json!({"pid": pid, "offset": offset}))).await;
    assert_eq!(a.sid, sid);
    assert_eq!(a.event().await[1], 1, "only y's message after the join");
    a.silence(Duration::from_millis(200)).await;
}

/// Redis down: a message is still delivered on this node, without an offset (not recoverable),
/// acked `partial`, and counted; once Redis is back, messages are logged again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_messages_are_delivered_locally_without_offset() {
    let Some(mut redis) = common::Redis::start() else {
        return;
    };
    let url = format!("--redis-url={}", redis.url());
    let s = Server::start(&[&url, "--recovery-window=30s"]).await;
    let ready = |status: u16, body: &str| status == 200 && !body.contains("degraded");
    assert!(s.wait_readyz_body(Duration::from_secs(10), ready).await.0);
    let mut a = Raw::connect(s.addr, None).await;
    let mut b = Raw::connect(s.addr, None).await;
    a.ack("join", json!("x")).await;
    b.ack("publish", json!({"room": "x", "event": "m", "data": 0}))
        .await;
    assert_eq!(a.event().await.len(), 3, "logged: with an offset");

    redis.stop();
    let ack = b
        .ack("publish", json!({"room": "x", "event": "m", "data": 1}))
        .await;
    assert_eq!(ack["partial"], true, "{ack}");
    let e = a.event().await;
    assert_eq!(
        e,
        vec![json!("m"), json!(1)],
        "delivered here, without offset"
    );
    let (_, metrics) = s.admin_get("/metrics").await;
    let unlogged = metrics
        .lines()
        .find(|l| l.starts_with("realtime_recovery_unlogged_total "))
        .unwrap_or_default()
        .to_string();
    assert!(unlogged.ends_with(" 1"), "{unlogged}");

    redis.restart();
    assert!(s.wait_readyz_body(Duration::from_secs(15), ready).await.0);
    let ack = b
        .ack("publish", json!({"room": "x", "event": "m", "data": 2}))
        .await;
    assert_eq!(ack, json!({"ok": true}));
    let e = a.event().await;
    assert_eq!(e.len(), 3, "logged again: {e:?}");
}

/// A client that missed more than a socket's send buffer can take at once gets a clean
/// session, not a partial replay.
#[tokio::test]
async fn too_many_missed_packets_give_a_clean_session() {
    let s = Server::start(&["--recovery-window=30s", "--recovery-max-packets=5000"]).await;
    let mut a = Raw::connect(s.addr, None).await;
    let mut b = Raw::connect(s.addr, None).await;
    a.ack("join", json!("x")).await;
    b.ack("publish", json!({"room": "x", "event": "m", "data": 0}))
        .await;
    let offset = a.event().await[2].as_str().unwrap().to_string();
    let (sid, pid) = (a.sid.clone(), a.pid.clone().unwrap());
    a.lose().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let max = realtime_server::recovery::MAX_REPLAY;
    for i in 0..=max {
        b.ack("publish", json!({"room": "x", "event": "m", "data": i}))
            .await;
    }
    let c = Raw::connect(s.addr, Some(json!({"pid": pid, "offset": offset}))).await;
    assert_ne!(c.sid, sid, "{} missed: not recovered", max + 1);
}
