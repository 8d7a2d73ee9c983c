//! Two in-process nodes sharing a real redis-server (skipped loudly without redis-server,
//! failed under CI=true): cross-node delivery, presence, Redis restarts and outages.

mod common;

use std::time::Duration;

use common::{Client, Redis, Server};
use serde_json::json;

const QUIET: Duration = Duration::from_millis(300);

async fn two_nodes(redis: &Redis, extra: &[&str]) -> (Server, Server) {
    let url = format!("--redis-url={}", redis.url());
    let mut a: Vec<&str> = vec![&url, "--name=n1"];
    a.extend_from_slice(extra);
    let mut b: Vec<&str> = vec![&url, "--name=n2"];
    b.extend_from_slice(extra);
    let (n1, n2) = (Server::start(&a).await, Server::start(&b).await);
    // Ready comes at once; cross-node delivery once Redis is subscribed and heard.
    for n in [&n1, &n2] {
        let (ok, body) = n
            .wait_readyz_body(Duration::from_secs(10), fully_ready)
            .await;
        assert!(ok, "{body}");
    }
    (n1, n2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_node_publish_send_presence_and_burst() {
    let Some(redis) = Redis::start() else { return };
    let (n1, n2) = two_nodes(&redis, &[]).await;
    let (mut a, ha) = Client::hello(n1.addr, None).await;
    let (mut b, hb) = Client::hello(n2.addr, None).await;
    assert_eq!(
        (ha["node"].as_str(), hb["node"].as_str()),
        (Some("n1"), Some("n2"))
    );
    a.emit_ack("join", json!("r")).await;
    b.emit_ack("join", json!("r")).await;

    // room publish across nodes, sender included
    let ack = a
        .emit_ack(
            "publish",
            json!({"room": "r", "event": "chat", "data": {"x": 1}}),
        )
        .await;
    assert_eq!(ack, json!({"ok": true}));
    assert_eq!(a.expect_event("chat").await, json!({"x": 1}));
    assert_eq!(b.expect_event("chat").await, json!({"x": 1}));

    // a private message to a socket on the other node, and only to it
    let (mut snoop, _) = Client::hello(n2.addr, None).await;
    snoop.emit_ack("join", json!(b.id)).await;
    let ack = a
        .emit_ack("send", json!({"to": b.id, "event": "dm", "data": "psst"}))
        .await;
    assert_eq!(ack, json!({"ok": true}));
    assert_eq!(b.expect_event("dm").await, json!("psst"));
    snoop.expect_silence(QUIET).await;

    // presence gathers both nodes
    let p = b.emit_ack("presence", json!({"room": "r"})).await;
    let mut members = p["members"].as_array().unwrap().clone();
    members.sort_by_key(|m| m["node"].as_str().unwrap().to_owned());
    assert_eq!(
        members,
        vec![
            json!({"id": a.id, "node": "n1"}),
            json!({"id": b.id, "node": "n2"})
        ]
    );

    // 500 events from one node arrive complete and in order on the other
    const N: i64 = 500;
    let started = std::time::Instant::now();
    for i in 0..N {
        a.emit("publish", json!({"room": "r", "event": "burst", "data": i}))
            .await;
    }
    for i in 0..N {
        assert_eq!(b.expect_event("burst").await, json!(i), "in order");
    }
    eprintln!("burst of {N} cross-node: {:?}", started.elapsed());
    // and on the publisher's own node (sender included): one socket's broadcasts overlap
    // their Redis round trips, never their local deliveries
    for i in 0..N {
        assert_eq!(a.expect_event("burst").await, json!(i), "in order locally");
    }

    // a join waits for the broadcasts sent before it: the sender gets none of them, only
    // the one sent after it, and the other node gets them all, in order
    b.emit_ack("join", json!("late")).await;
    for i in 0..50 {
        a.emit(
            "publish",
            json!({"room": "late", "event": "late", "data": i}),
        )
        .await;
    }
    a.emit("join", json!("late")).await;
    a.emit(
        "publish",
        json!({"room": "late", "event": "late", "data": "after"}),
    )
    .await;
    assert_eq!(a.expect_event("late").await, json!("after"));
    for i in 0..50 {
        assert_eq!(b.expect_event("late").await, json!(i));
    }
    assert_eq!(b.expect_event("late").await, json!("after"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_messages_cross_nodes() {
    let Some(redis) = Redis::start() else { return };
    let secret = "redis-test-secret-0123456789";
    let (n1, n2) = two_nodes(&redis, &[&format!("--auth-secret={secret}")]).await;
    let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
    let token = |sub: &str| {
        let exp = jsonwebtoken::get_current_timestamp() + 600;
        let t = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &json!({"sub": sub, "exp": exp}),
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap();
        Some(json!({"token": t}))
    };
    let (mut alice1, _) = Client::hello(n1.addr, token("alice")).await;
    let (mut alice2, _) = Client::hello(n2.addr, token("alice")).await;
    let (mut bob, _) = Client::hello(n2.addr, token("bob")).await;
    let ack = bob
        .emit_ack("send", json!({"user": "alice", "event": "dm", "data": 7}))
        .await;
    assert_eq!(ack, json!({"ok": true}));
    assert_eq!(alice1.expect_event("dm").await, json!(7));
    assert_eq!(alice2.expect_event("dm").await, json!(7));
    alice2.emit_ack("join", json!("r")).await;
    let p = alice1.emit_ack("presence", json!({"room": "r"})).await;
    assert_eq!(
        p,
        json!({"members": [{"id": alice2.id, "node": "n2", "user": "alice"}]})
    );
}

/// Publishes from `a` until `b` receives one, or `within` passes; returns the time it took.
async fn delivery_resumes(a: &mut Client, b: &mut Client, within: Duration) -> Option<Duration> {
    let started = std::time::Instant::now();
    let mut i = 0;
    while started.elapsed() < within {
        i += 1;
        a.emit("publish", json!({"room": "r", "event": "tick", "data": i}))
            .await;
        if let Some(common::Incoming::Event(ev, _)) = b.next(Duration::from_millis(200)).await
            && ev == "tick"
        {
            return Some(started.elapsed());
        }
    }
    None
}

/// Ready and degraded because Redis is unreachable.
fn degraded_ready(status: u16, body: &str) -> bool {
    status == 200 && body.contains("redis: not connected")
}

/// Ready and not degraded.
fn fully_ready(status: u16, body: &str) -> bool {
    status == 200 && !body.contains("degraded")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_keeps_nodes_ready_and_delivery_resumes() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let (n1, n2) = two_nodes(&redis, &[]).await;
    let (mut a, _) = Client::hello(n1.addr, None).await;
    let (mut b, _) = Client::hello(n2.addr, None).await;
    b.emit_ack("join", json!("r")).await;
    a.emit_ack("join", json!("r")).await;

    redis.stop();
    // Every node loses Redis at once: they stay in rotation, saying they are degraded.
    for n in [&n1, &n2] {
        let (ok, body) = n
            .wait_readyz_body(Duration::from_secs(5), degraded_ready)
            .await;
        assert!(ok, "ready and degraded without Redis: {body}");
    }
    let (_, metrics) = n1.admin_get("/metrics").await;
    assert!(metrics.contains("realtime_redis_connected 0"), "{metrics}");
    assert!(metrics.contains("realtime_ready 1"), "{metrics}");
    // local clients are still served; the ack says the delivery was local only
    let ack = a
        .emit_ack("publish", json!({"room": "r", "event": "local", "data": 1}))
        .await;
    assert_eq!(ack, json!({"ok": true, "partial": true}));
    assert_eq!(a.expect_event("local").await, json!(1));
    let p = a.emit_ack("presence", json!({"room": "r"})).await;
    assert_eq!(p["partial"], json!(true));
    assert_eq!(p["members"], json!([{"id": a.id, "node": "n1"}]));

    let restarted = std::time::Instant::now();
    redis.restart();
    for n in [&n1, &n2] {
        let (ok, body) = n
            .wait_readyz_body(Duration::from_secs(10), fully_ready)
            .await;
        assert!(ok, "no longer degraded once Redis is back: {body}");
    }
    let ready_after = restarted.elapsed();
    let resumed = delivery_resumes(&mut a, &mut b, Duration::from_secs(10)).await;
    assert!(resumed.is_some(), "cross-node delivery resumes");
    eprintln!(
        "redis restart: healthy after {ready_after:?}, delivery {:?} later",
        resumed.unwrap()
    );
    // nodes are still running
    assert!(!n1.task.is_finished() && !n2.task.is_finished());
    let (_, metrics) = n1.admin_get("/metrics").await;
    assert!(
        metrics.contains("realtime_redis_reconnects_total 1"),
        "{metrics}"
    );
    assert!(metrics.contains("realtime_redis_connected 1"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_before_redis_serves_locally_then_joins() {
    let Some(bin) = common::require_program("redis-server", "apt-get install redis-server") else {
        return;
    };
    drop(bin);
    let port = common::free_port();
    let url = format!("--redis-url=redis://127.0.0.1:{port}");
    let n1 = Server::start(&[&url, "--name=early", "--redis-startup-grace=2s"]).await;
    // Not ready while it may still hear Redis any moment (a rollout's new pod must not take
    // clients it cannot reach across nodes)...
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, body) = n1.admin_get("/readyz").await;
    assert!(
        status == 503 && body.contains("redis: starting"),
        "{status} {body}"
    );
    // ...then ready without it, degraded: a node started during an outage still serves.
    let (ok, body) = n1
        .wait_readyz_body(Duration::from_secs(5), degraded_ready)
        .await;
    assert!(ok, "ready and degraded after the startup grace: {body}");
    // clients are served locally meanwhile
    let (mut a, _) = Client::hello(n1.addr, None).await;
    assert_eq!(a.emit_ack("join", json!("r")).await, json!({"ok": true}));

    let redis = Redis::start_on(port);
    let (ok, body) = n1
        .wait_readyz_body(Duration::from_secs(10), fully_ready)
        .await;
    assert!(ok, "healthy once Redis is up: {body}");
    let n2 = Server::start(&[&format!("--redis-url={}", redis.url()), "--name=late"]).await;
    assert!(n2.wait_ready(200, Duration::from_secs(10)).await);
    let (mut b, _) = Client::hello(n2.addr, None).await;
    b.emit_ack("join", json!("r")).await;
    assert!(
        delivery_resumes(&mut b, &mut a, Duration::from_secs(5))
            .await
            .is_some(),
        "subscriptions made while Redis was down work once it is up"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_degrades_the_nodes_without_taking_them_out() {
    let Some(redis) = Redis::start() else { return };
    let (n1, n2) = two_nodes(&redis, &[]).await;
    redis.signal("-STOP");
    // A Redis that stops answering is an outage for every node, not deafness of one: the
    // nodes report it and stay in rotation, past the deafness grace.
    let (degraded, body) = n1
        .wait_readyz_body(Duration::from_secs(10), |s, b| {
            s == 200 && b.contains("degraded")
        })
        .await;
    let mut still_ready = true;
    let until = tokio::time::Instant::now() + Duration::from_secs(13);
    while tokio::time::Instant::now() < until {
        still_ready &=
            n1.admin_get("/readyz").await.0 == 200 && n2.admin_get("/readyz").await.0 == 200;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    redis.signal("-CONT");
    assert!(degraded, "a frozen Redis shows as degraded: {body}");
    assert!(still_ready, "no node left rotation because Redis froze");
    let (ok, body) = n1
        .wait_readyz_body(Duration::from_secs(15), fully_ready)
        .await;
    assert!(ok, "healthy again after it resumes: {body}");
    let (_, body) = n1.admin_get("/metrics").await;
    let value = |name: &str| -> u64 {
        body.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{body}"))
    };
    let (probes, reconnects) = (
        value("realtime_redis_probe_failures_total "),
        value("realtime_redis_reconnects_total "),
    );
    eprintln!("frozen redis: probe failures {probes}, reconnects {reconnects}");
    assert!(
        probes + reconnects >= 1,
        "the outage shows in the metrics:\n{body}"
    );
}

/// A node that Redis answers but that cannot listen (here: its Redis user may not SUBSCRIBE,
/// as a broken ACL would do) is deaf: it alone leaves rotation, its peer stays ready, and it
/// comes back once it can listen again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deaf_node_leaves_rotation_alone() {
    let Some(redis) = Redis::start() else { return };
    redis.cli(&[
        "ACL",
        "SETUSER",
        "deaf",
        "on",
        ">deaf-pw",
        "~*",
        "&*",
        "+@all",
        "-subscribe",
        "-psubscribe",
        "-ssubscribe",
    ]);
    let ok_url = format!("--redis-url={}", redis.url());
    let deaf_url = format!("--redis-url=redis://deaf:deaf-pw@127.0.0.1:{}", redis.port);
    let ok = Server::start(&[&ok_url, "--name=ok"]).await;
    let deaf = Server::start(&[&deaf_url, "--name=deaf"]).await;
    assert!(
        ok.wait_ready(200, Duration::from_secs(10)).await,
        "peer ready"
    );
    let (went, body) = deaf
        .wait_readyz_body(Duration::from_secs(20), |s, b| {
            s == 503 && b.contains("deaf")
        })
        .await;
    assert!(went, "the deaf node leaves rotation: {body}");
    let (_, metrics) = deaf.admin_get("/metrics").await;
    assert!(metrics.contains("realtime_redis_deaf 1"), "{metrics}");
    assert!(metrics.contains("realtime_redis_connected 1"), "{metrics}");
    let (status, body) = ok.admin_get("/readyz").await;
    assert!(fully_ready(status, &body), "the peer stays ready: {body}");

    redis.cli(&[
        "ACL",
        "SETUSER",
        "deaf",
        "+subscribe",
        "+psubscribe",
        "+ssubscribe",
    ]);
    let (back, body) = deaf
        .wait_readyz_body(Duration::from_secs(15), fully_ready)
        .await;
    assert!(back, "back in rotation once it can listen: {body}");
}
