//! The client contract against one in-process node on the in-memory adapter, over a real
//! websocket.

mod common;

use std::time::Duration;

use common::{Client, Incoming, Server};
use serde_json::{Value, json};

const QUIET: Duration = Duration::from_millis(300);

#[tokio::test]
async fn hello_carries_node_and_socket_id() {
    let srv = Server::start(&["--name=node-a"]).await;
    let (c, hello) = Client::hello(srv.addr, None).await;
    assert_eq!(hello, json!({"node": "node-a", "id": c.id}));
}

#[tokio::test]
async fn room_publish_reaches_members_including_sender_only() {
    let srv = Server::start(&[]).await;
    let (mut a, _) = Client::hello(srv.addr, None).await;
    let (mut b, _) = Client::hello(srv.addr, None).await;
    let (mut outsider, _) = Client::hello(srv.addr, None).await;
    assert_eq!(
        a.emit_ack("join", json!("lobby")).await,
        json!({"ok": true})
    );
    assert_eq!(
        b.emit_ack("join", json!("lobby")).await,
        json!({"ok": true})
    );

    let ack = a
        .emit_ack(
            "publish",
            json!({"room": "lobby", "event": "chat", "data": {"text": "hi", "n": [1, 2.5, null]}}),
        )
        .await;
    assert_eq!(ack, json!({"ok": true}));
    let want = json!({"text": "hi", "n": [1, 2.5, null]});
    assert_eq!(a.expect_event("chat").await, want, "sender included");
    assert_eq!(b.expect_event("chat").await, want);
    outsider.expect_silence(QUIET).await;

    // leave: no more room messages
    assert_eq!(
        b.emit_ack("leave", json!("lobby")).await,
        json!({"ok": true})
    );
    a.emit_ack(
        "publish",
        json!({"room": "lobby", "event": "chat", "data": 2}),
    )
    .await;
    assert_eq!(a.expect_event("chat").await, json!(2));
    b.expect_silence(QUIET).await;
}

#[tokio::test]
async fn publish_without_room_reaches_every_socket_and_null_data_is_kept() {
    let srv = Server::start(&[]).await;
    let (mut a, _) = Client::hello(srv.addr, None).await;
    let (mut b, _) = Client::hello(srv.addr, None).await;
    let ack = a
        .emit_ack("publish", json!({"event": "news", "data": null}))
        .await;
    assert_eq!(ack, json!({"ok": true}));
    assert_eq!(a.expect_event("news").await, Value::Null);
    assert_eq!(b.expect_event("news").await, Value::Null);
}

#[tokio::test]
async fn acks_are_optional() {
    let srv = Server::start(&[]).await;
    let (mut a, _) = Client::hello(srv.addr, None).await;
    let (mut b, _) = Client::hello(srv.addr, None).await;
    // no ack id: same effect, no reply. b's next event, with an ack, is handled after the join
    // (one socket's events take effect in order): once it answers, b is in the room.
    b.emit("join", json!("r")).await;
    let members = b.emit_ack("presence", json!({"room": "r"})).await;
    assert_eq!(
        members["members"].as_array().map(Vec::len),
        Some(1),
        "{members}"
    );
    a.emit("publish", json!({"room": "r", "event": "e", "data": 1}))
        .await;
    assert_eq!(b.expect_event("e").await, json!(1));
    a.expect_silence(QUIET).await;
    // extra arguments before the ack are ignored
    let ack = a.emit_raw_ack(r#"["join","r","extra",{"x":1}]"#).await;
    assert_eq!(ack, json!({"ok": true}));
}

#[tokio::test]
async fn send_reaches_exactly_one_socket_even_if_someone_joins_a_room_named_like_it() {
    let srv = Server::start(&[]).await;
    let (mut a, _) = Client::hello(srv.addr, None).await;
    let (mut b, _) = Client::hello(srv.addr, None).await;
    let (mut snoop, _) = Client::hello(srv.addr, None).await;
    // a client room named after b's id, and after the internal room name
    assert_eq!(
        snoop.emit_ack("join", json!(b.id)).await,
        json!({"ok": true})
    );
    assert_eq!(
        snoop.emit_ack("join", json!(format!("sid:{}", b.id))).await,
        json!({"ok": true})
    );

    let ack = a
        .emit_ack(
            "send",
            json!({"to": b.id, "event": "dm", "data": {"secret": 1}}),
        )
        .await;
    assert_eq!(ack, json!({"ok": true}));
    assert_eq!(b.expect_event("dm").await, json!({"secret": 1}));
    snoop.expect_silence(QUIET).await;
    a.expect_silence(Duration::from_millis(50)).await;

    // presence of the look-alike room lists only the snooper
    let p = a.emit_ack("presence", json!({"room": b.id})).await;
    assert_eq!(
        p,
        json!({"members": [{"id": snoop.id, "node": "test-host"}]})
    );

    // an unknown id reaches nobody and is not an error (like the reference)
    let ack = a
        .emit_ack(
            "send",
            json!({"to": "nobody-here", "event": "dm", "data": 1}),
        )
        .await;
    assert_eq!(ack, json!({"ok": true}));
}

#[tokio::test]
async fn presence_lists_each_member_once() {
    let srv = Server::start(&["--name=n1"]).await;
    let (mut a, _) = Client::hello(srv.addr, None).await;
    let (mut b, _) = Client::hello(srv.addr, None).await;
    a.emit_ack("join", json!("r")).await;
    a.emit_ack("join", json!("r")).await; // twice: still once
    b.emit_ack("join", json!("r")).await;
    let p = a.emit_ack("presence", json!({"room": "r"})).await;
    let mut members: Vec<Value> = p["members"].as_array().unwrap().clone();
    members.sort_by_key(|m| m["id"].as_str().unwrap().to_owned());
    let mut want = vec![
        json!({"id": a.id, "node": "n1"}),
        json!({"id": b.id, "node": "n1"}),
    ];
    want.sort_by_key(|m| m["id"].as_str().unwrap().to_owned());
    assert_eq!(members, want);
    assert_eq!(
        a.emit_ack("presence", json!({"room": "empty"})).await,
        json!({"members": []})
    );
}

#[tokio::test]
async fn malformed_input_gets_an_error_ack_and_the_connection_stays_up() {
    let srv = Server::start(&[]).await;
    let (mut a, _) = Client::hello(srv.addr, None).await;
    let (mut other, _) = Client::hello(srv.addr, None).await;
    let cases: &[(&str, &str)] = &[
        (r#"["join",5]"#, "room must be a non-empty string"),
        (r#"["join"]"#, "room must be a non-empty string"),
        (r#"["leave",""]"#, "room must be a non-empty string"),
        (
            r#"["publish",{"room":null,"event":"e","data":1}]"#,
            "room must be a non-empty string",
        ),
        (
            r#"["publish",{"event":"e"}]"#,
            "data is required (null is allowed)",
        ),
        (r#"["publish",[1]]"#, "publish payload must be an object"),
        (r#"["publish",null]"#, "publish payload must be an object"),
        (
            r#"["publish",{"event":"disconnect","data":1}]"#,
            "event \"disconnect\" is reserved",
        ),
        (
            r#"["publish",{"event":5,"data":1}]"#,
            "event must be a non-empty string",
        ),
        (
            r#"["send",{"event":"e","data":1}]"#,
            "send needs exactly one of `to` (socket id) or `user`",
        ),
        (
            r#"["send",{"user":"u","event":"e","data":1}]"#,
            "send to a user needs auth, which is not enabled on this server",
        ),
        (
            r#"["presence",{"room":7}]"#,
            "room must be a non-empty string",
        ),
        (r#"["bench",{"t":1}]"#, "unknown event \"bench\""),
    ];
    for (frame, error) in cases {
        let ack = a.emit_raw_ack(frame).await;
        assert_eq!(ack, json!({"ok": false, "error": error}), "for {frame}");
    }
    let long_room = json!(["join", "x".repeat(129)]).to_string();
    assert_eq!(
        a.emit_raw_ack(&long_room).await,
        json!({"ok": false, "error": "room must be at most 128 bytes"})
    );
    // nothing was emitted to anyone, and both connections still work
    other.expect_silence(QUIET).await;
    assert_eq!(a.emit_ack("join", json!("ok")).await, json!({"ok": true}));
    assert_eq!(
        other.emit_ack("join", json!("ok")).await,
        json!({"ok": true})
    );

    let (_, metrics) = srv.admin_get("/metrics").await;
    assert!(
        metrics.contains("realtime_events_in_total{event=\"unknown\",result=\"error\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("realtime_events_in_total{event=\"publish\",result=\"error\"} 6"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_burst_arrives_complete_and_in_order() {
    let srv = Server::start(&[]).await;
    let (mut a, _) = Client::hello(srv.addr, None).await;
    let (mut b, _) = Client::hello(srv.addr, None).await;
    b.emit_ack("join", json!("burst")).await;
    const N: i64 = 500;
    for i in 0..N {
        a.emit("publish", json!({"room": "burst", "event": "n", "data": i}))
            .await;
    }
    for i in 0..N {
        assert_eq!(b.expect_event("n").await, json!(i));
    }
}

#[tokio::test]
async fn oversized_packet_is_refused_without_disturbing_others() {
    let srv = Server::start(&["--max-payload=2048"]).await;
    let (mut big, _) = Client::hello(srv.addr, None).await;
    let (mut a, _) = Client::hello(srv.addr, None).await;
    let (mut b, _) = Client::hello(srv.addr, None).await;
    b.emit_ack("join", json!("r")).await;
    big.emit(
        "publish",
        json!({"room": "r", "event": "e", "data": "x".repeat(4096)}),
    )
    .await;
    // the offender's connection is closed, and nothing reached the room
    match big.next(Duration::from_secs(3)).await {
        Some(Incoming::Closed) | Some(Incoming::EngineClose) => {}
        other => panic!("oversized sender should be disconnected, got {other:?}"),
    }
    b.expect_silence(QUIET).await;
    // everybody else carries on
    let ack = a
        .emit_ack(
            "publish",
            json!({"room": "r", "event": "e", "data": "small"}),
        )
        .await;
    assert_eq!(ack, json!({"ok": true}));
    assert_eq!(b.expect_event("e").await, json!("small"));
}

#[tokio::test]
async fn http_probes_and_metrics() {
    let srv = Server::start(&["--name=probe-node"]).await;
    assert_eq!(srv.admin_get("/healthz").await, (200, "ok\n".into()));
    let (status, body) = srv.admin_get("/readyz").await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["ready"],
        json!(true)
    );
    let (_c, _) = Client::hello(srv.addr, None).await;
    let (status, metrics) = srv.admin_get("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("realtime_connected_sockets 1"),
        "{metrics}"
    );
    assert!(metrics.contains("realtime_events_out_total{kind=\"hello\"} 1"));
    assert!(metrics.contains("realtime_node_info{node=\"probe-node\",adapter=\"memory\""));
}

async fn post_publish(url: String, key: &str) -> u16 {
    reqwest::Client::new()
        .post(url)
        .header("authorization", format!("Bearer {key}"))
        .body(r#"{"event":"e","data":1}"#)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn the_public_port_serves_socketio_only_unless_asked() {
    let key = "0123456789abcdef-key";
    let srv = Server::start(&[&format!("--api-key={key}")]).await;
    for path in ["/", "/healthz", "/readyz", "/metrics", "/api/v1/publish"] {
        assert_eq!(srv.get(path).await.0, 404, "GET {path} on the public port");
    }
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(
            srv.admin_get(path).await.0,
            200,
            "GET {path} on the admin port"
        );
    }
    assert_eq!(srv.admin_get("/").await.0, 404, "no demo page by default");
    assert_eq!(post_publish(srv.url("/api/v1/publish"), key).await, 404);
    assert_eq!(
        post_publish(srv.admin_url("/api/v1/publish"), key).await,
        200
    );
    // socket.io itself is there
    let (_c, hello) = Client::hello(srv.addr, None).await;
    assert_eq!(hello["node"], json!("test-host"));

    let srv = Server::start(&[
        &format!("--api-key={key}"),
        "--demo-page",
        "--public-publish-api",
    ])
    .await;
    let (status, page) = srv.get("/").await;
    assert_eq!(status, 200);
    assert!(page.contains("realtime-server demo chat"));
    assert_eq!(
        srv.admin_get("/").await.0,
        404,
        "no demo page on the admin port"
    );
    assert_eq!(post_publish(srv.url("/api/v1/publish"), key).await, 200);
    assert_eq!(
        post_publish(srv.admin_url("/api/v1/publish"), key).await,
        200
    );
    assert_eq!(srv.get("/metrics").await.0, 404);
}

#[tokio::test]
async fn publish_api_needs_the_bearer_key() {
    let key = "0123456789abcdef-key";
    let srv = Server::start(&[&format!("--api-key={key}")]).await;
    let (mut a, _) = Client::hello(srv.addr, None).await;
    a.emit_ack("join", json!("ops")).await;
    let http = reqwest::Client::new();
    let post = |body: &str, auth: Option<&str>| {
        let mut r = http
            .post(srv.admin_url("/api/v1/publish"))
            .body(body.to_owned());
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r.send()
    };
    let body = r#"{"room":"ops","event":"alert","data":{"level":"high"}}"#;
    assert_eq!(post(body, None).await.unwrap().status(), 401);
    assert_eq!(
        post(body, Some("Bearer wrong-key-wrong-key"))
            .await
            .unwrap()
            .status(),
        401
    );
    let r = post(
        r#"{"room":"ops","event":"alert"}"#,
        Some(&format!("Bearer {key}")),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"],
        json!("data is required (null is allowed)")
    );
    assert_eq!(
        post("not json", Some(&format!("Bearer {key}")))
            .await
            .unwrap()
            .status(),
        400
    );
    let r = post(body, Some(&format!("Bearer {key}"))).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"ok": true}));
    assert_eq!(a.expect_event("alert").await, json!({"level": "high"}));
}

#[tokio::test]
async fn publish_api_is_disabled_without_a_key() {
    let srv = Server::start(&[]).await;
    let r = reqwest::Client::new()
        .post(srv.admin_url("/api/v1/publish"))
        .body(r#"{"event":"e","data":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn shutdown_closes_transports_without_a_socketio_disconnect() {
    let mut srv = Server::start(&["--shutdown-grace=3s"]).await;
    let (mut a, _) = Client::hello(srv.addr, None).await;
    let started = std::time::Instant::now();
    srv.signal_stop();
    // engine.io close (then the websocket ends): socket.io-client reconnects after this,
    // whereas a socket.io DISCONNECT ("41") would stop it from reconnecting.
    let mut seen = Vec::new();
    while let Some(i) = a.next(Duration::from_secs(3)).await {
        let end = i == Incoming::Closed;
        seen.push(i);
        if end {
            break;
        }
    }
    assert!(!seen.contains(&Incoming::SioDisconnect), "{seen:?}");
    assert!(
        seen.contains(&Incoming::EngineClose) || seen.contains(&Incoming::Closed),
        "{seen:?}"
    );
    let res = tokio::time::timeout(Duration::from_secs(3), &mut srv.task).await;
    assert!(
        matches!(res, Ok(Ok(Ok(())))),
        "server stops within the grace period: {res:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    // the listener is closed
    assert!(tokio::net::TcpStream::connect(srv.addr).await.is_err());
}

#[tokio::test]
async fn shutdown_closes_transports_one_at_a_time_and_serves_those_that_wait() {
    // 1 per second: the second transport closes 1 s after the first
    let mut srv = Server::start(&["--shutdown-grace=5s", "--drain-close-rate=1"]).await;
    let (mut a, _) = Client::hello(srv.addr, None).await;
    let (mut b, _) = Client::hello(srv.addr, None).await;
    let started = std::time::Instant::now();
    srv.signal_stop();
    // Which one goes first is up to the server.
    let (first, mut waiting) = tokio::select! {
        i = a.next(Duration::from_secs(3)) => (i, b),
        i = b.next(Duration::from_secs(3)) => (i, a),
    };
    assert_eq!(first, Some(Incoming::EngineClose));
    let first_at = started.elapsed();
    assert!(first_at < Duration::from_millis(500), "{first_at:?}");
    // The other is served while it waits for its turn (the namespace is still there).
    assert_eq!(
        waiting.emit_ack("join", json!("lobby")).await,
        json!({"ok": true})
    );
    // The closed one has left the namespace (its disconnect handler ran), the other has not.
    let (found, metrics) = srv
        .wait_admin_body("/metrics", Duration::from_millis(400), |b| {
            b.contains("realtime_connected_sockets 1\n")
        })
        .await;
    assert!(found, "{metrics}");
    assert!(started.elapsed() < Duration::from_millis(900));
    let mut seen = Vec::new();
    while let Some(i) = waiting.next(Duration::from_secs(3)).await {
        let end = i == Incoming::EngineClose || i == Incoming::Closed;
        seen.push(i);
        if end {
            break;
        }
    }
    let second_at = started.elapsed();
    assert_eq!(seen.last(), Some(&Incoming::EngineClose), "{seen:?}");
    assert!(!seen.contains(&Incoming::SioDisconnect), "{seen:?}");
    assert!(
        second_at >= first_at + Duration::from_millis(800),
        "closes at {first_at:?} and {second_at:?}"
    );
    let res = tokio::time::timeout(Duration::from_secs(5), &mut srv.task).await;
    assert!(matches!(res, Ok(Ok(Ok(())))), "{res:?}");
}

const SECRET: &str = "contract-test-secret-0123456789";

fn token(sub: &str, secret: &str, exp_in: i64) -> String {
    let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
    let exp = jsonwebtoken::get_current_timestamp() as i64 + exp_in;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": sub, "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn auth_refuses_missing_and_invalid_tokens_with_a_clear_message() {
    let srv = Server::start(&[&format!("--auth-secret={SECRET}")]).await;
    let err = Client::connect(srv.addr, None)
        .await
        .err()
        .expect("refused");
    assert!(err.contains("authentication required"), "{err}");
    let err = Client::connect(srv.addr, Some(json!({"token": "garbage"})))
        .await
        .err()
        .expect("refused");
    assert_eq!(err, "invalid token: not a well-formed JWT");
    let forged = token("mallory", "some-other-secret-0123456789", 600);
    let err = Client::connect(srv.addr, Some(json!({"token": forged})))
        .await
        .err()
        .expect("refused");
    assert_eq!(err, "invalid token: bad signature");
    let expired = token("alice", SECRET, -3600);
    let err = Client::connect(srv.addr, Some(json!({"token": expired})))
        .await
        .err()
        .expect("refused");
    assert_eq!(err, "invalid token: it has expired");
    let (_, metrics) = srv.admin_get("/metrics").await;
    assert!(
        metrics.contains("realtime_auth_failures_total 4"),
        "{metrics}"
    );
    assert!(
        metrics.contains("realtime_connected_sockets 0"),
        "{metrics}"
    );
}

#[tokio::test]
async fn send_to_a_user_reaches_every_socket_of_that_user() {
    let srv = Server::start(&[&format!("--auth-secret={SECRET}"), "--name=n1"]).await;
    let auth = |u: &str| Some(json!({"token": token(u, SECRET, 600)}));
    let (mut alice1, _) = Client::hello(srv.addr, auth("alice")).await;
    let (mut alice2, _) = Client::hello(srv.addr, auth("alice")).await;
    let (mut bob, _) = Client::hello(srv.addr, auth("bob")).await;
    let ack = bob
        .emit_ack(
            "send",
            json!({"user": "alice", "event": "dm", "data": "hey"}),
        )
        .await;
    assert_eq!(ack, json!({"ok": true}));
    assert_eq!(alice1.expect_event("dm").await, json!("hey"));
    assert_eq!(alice2.expect_event("dm").await, json!("hey"));
    bob.expect_silence(QUIET).await;
    // a client room named like the user's internal room does not leak
    let (mut eve, _) = Client::hello(srv.addr, auth("eve")).await;
    eve.emit_ack("join", json!("user:alice")).await;
    bob.emit_ack("send", json!({"user": "alice", "event": "dm", "data": 2}))
        .await;
    eve.expect_silence(QUIET).await;
    // presence shows the user
    alice1.emit_ack("join", json!("r")).await;
    let p = bob.emit_ack("presence", json!({"room": "r"})).await;
    assert_eq!(
        p,
        json!({"members": [{"id": alice1.id, "node": "n1", "user": "alice"}]})
    );
}

#[tokio::test]
async fn oversized_polling_body_gets_413() {
    let srv = Server::start(&["--max-payload=2048"]).await;
    let http = reqwest::Client::new();
    let open = http
        .get(srv.url("/socket.io/?EIO=4&transport=polling"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let handshake: Value =
        serde_json::from_str(open.strip_prefix('0').expect("open packet")).unwrap();
    let sid = handshake["sid"].as_str().unwrap();
    let url = srv.url(&format!("/socket.io/?EIO=4&transport=polling&sid={sid}"));
    let small = http.post(&url).body("40").send().await.unwrap();
    assert_eq!(small.status(), 200);
    let big = format!(
        "42[\"publish\",{{\"event\":\"e\",\"data\":\"{}\"}}]",
        "x".repeat(4096)
    );
    let r = http.post(&url).body(big).send().await.unwrap();
    assert_eq!(r.status(), 413);
    // the server is fine
    let (_c, hello) = Client::hello(srv.addr, None).await;
    assert_eq!(hello["node"], json!("test-host"));
}
