//! Multi-node tests of the realtime server (issue 2): a real redis-server, 3 server processes and
//! a real nginx with `ip_hash` on loopback; every client is the official socket.io-client, driven
//! through `e2e/client/driver.js`.
//!
//! Clients are placed on a chosen node by their source address (127.0.X.1: nginx's `ip_hash`
//! keys on the first three octets, and [`Cluster::source_address_for`] computes nginx's choice),
//! and every test checks the node it landed on through `hello`.
//!
//! The server is `realtime-server`; with `RT_E2E_NODE_REFERENCE=<copy of
//! shared/bench/anchor-node with node_modules>` the same tests run against the Node reference
//! (checks of the tests themselves), skipping what the reference does not have (auth, /readyz,
//! MAX_PAYLOAD).

use std::time::{Duration, Instant};

use realtime_e2e::data_plane::{
    Affinity, Cluster, ClusterConfig, ServerCommand, ServerKind, http_get, http_get_with,
    metric_value,
};
use realtime_e2e::sio::{
    self, Client, ConnectOptions, Driver, Hello, Incoming, Member, Transport, hs256_token,
    is_refusal,
};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(10);
const SECRET: &str = "e2e-test-secret-of-32-bytes-long";

struct Setup {
    // Dropped in this order: the driver (and its clients) before the cluster.
    driver: Driver,
    cluster: Cluster,
}

/// Starts the driver and a cluster of `nodes` with extra node environment, or `None` (skip).
async fn setup(nodes: usize, env: &[(&str, &str)], affinity: Affinity) -> Option<Setup> {
    let server = ServerCommand::for_tests()?;
    let paths = realtime_e2e::require::require(
        "node and socket.io-client",
        sio::DRIVER_HOW_TO,
        sio::find_driver(),
    )?;
    let mut cfg = ClusterConfig::new(server, nodes).affinity(affinity);
    for (k, v) in env {
        cfg = cfg.env(k, v);
    }
    let cluster = Cluster::for_test(cfg).await?;
    let driver = Driver::start(&paths)
        .await
        .expect("starting the socket.io-client driver");
    Some(Setup { driver, cluster })
}

fn skip_unless_realtime(cluster: &Cluster, what: &str) -> bool {
    if cluster.kind() != ServerKind::Realtime {
        eprintln!("*** skipped against the Node reference: {what} ***");
        return true;
    }
    false
}

impl Setup {
    /// Connects a client through nginx from the `k`-th source address that `ip_hash` sends to
    /// node `node`, waits for `hello` and checks it names that node.
    async fn client_on(&self, node: usize, k: usize, opts: ConnectOptions) -> (Client, Hello) {
        self.client_on_with(&self.driver, node, k, opts).await
    }

    /// [`Setup::client_on`] in another driver process.
    async fn client_on_with(
        &self,
        driver: &Driver,
        node: usize,
        k: usize,
        opts: ConnectOptions,
    ) -> (Client, Hello) {
        let src = self.cluster.source_address_for(node, k);
        let (c, hello) = driver
            .connect_hello(&self.cluster.url(), opts.local_address(src.clone()), T)
            .await
            .unwrap_or_else(|e| panic!("client from {src} to node {node}: {e:#}"));
        assert_eq!(
            hello.node,
            self.cluster.node(node).name,
            "ip_hash sent the client from {src} to {} instead of {}",
            hello.node,
            self.cluster.node(node).name
        );
        let id = c.wait_connect(T).await.unwrap();
        assert_eq!(hello.id, id, "hello.id must be the socket.io socket id");
        (c, hello)
    }
}

/// Data of the events named `name` a client got so far.
fn data_of(c: &Client, name: &str) -> Vec<Value> {
    c.events(name).iter().map(|r| r.data().clone()).collect()
}

fn disconnects(c: &Client) -> Vec<String> {
    c.log()
        .into_iter()
        .filter_map(|r| match r.what {
            Incoming::Disconnect { reason, .. } => Some(reason),
            _ => None,
        })
        .collect()
}

/// A barrier: `from` publishes a marker to everyone and waits until each client has it, so
/// everything published before it (same sender, same Redis) has been delivered too.
async fn settle(from: &Client, all: &[&Client], tag: &str) {
    from.publish(None, "settle", json!(tag)).await.unwrap();
    for c in all {
        c.wait_event_where("settle", T, |d| d == &json!(tag))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_then_websocket_upgrade_through_nginx() {
    let Some(s) = setup(3, &[], Affinity::IpHash).await else {
        return;
    };

    // Default transports: the handshake is long-polling, then the client upgrades.
    let mut upgraded = Vec::new();
    for node in 0..3 {
        let (c, _) = s.client_on(node, 0, ConnectOptions::default()).await;
        let first = c
            .wait_until(T, "engine open", |log| {
                log.iter().find_map(|r| match &r.what {
                    Incoming::Open { transport } => Some(transport.clone()),
                    _ => None,
                })
            })
            .await
            .unwrap();
        assert_eq!(first, "polling", "the first transport through nginx");
        let up = c
            .wait_until(T, "upgrade", |log| {
                log.iter().find_map(|r| match &r.what {
                    Incoming::Upgrade { transport } => Some(transport.clone()),
                    _ => None,
                })
            })
            .await
            .unwrap();
        assert_eq!(up, "websocket");
        let st = c.state().await.unwrap();
        assert!(st.connected);
        assert_eq!(st.transport.as_deref(), Some("websocket"));
        c.join("t").await.unwrap();
        upgraded.push(c);
    }

    // Long-polling only, kept on one node by ip_hash across its many requests.
    let (poller, _) = s
        .client_on(
            2,
            1,
            ConnectOptions::default().transports(&[Transport::Polling]),
        )
        .await;
    poller.join("t").await.unwrap();
    // WebSocket only: the source address applies to the WebSocket too.
    let (ws_only, _) = s
        .client_on(
            1,
            1,
            ConnectOptions::default().transports(&[Transport::Websocket]),
        )
        .await;
    assert_eq!(
        ws_only.state().await.unwrap().transport.as_deref(),
        Some("websocket")
    );
    ws_only.join("t").await.unwrap();

    for i in 0..5 {
        upgraded[0]
            .publish(Some("t"), "tick", json!(i))
            .await
            .unwrap();
    }
    let want: Vec<Value> = (0..5).map(|i| json!(i)).collect();
    for c in upgraded.iter().chain([&poller, &ws_only]) {
        c.wait_events("tick", 5, T).await.unwrap();
    }
    let all: Vec<&Client> = upgraded.iter().chain([&poller, &ws_only]).collect();
    settle(&upgraded[0], &all, "end").await;
    for c in &all {
        assert_eq!(
            data_of(c, "tick"),
            want,
            "{}: every tick once, in order",
            c.name()
        );
    }
    let st = poller.state().await.unwrap();
    assert_eq!(st.transport.as_deref(), Some("polling"));
    assert!(
        disconnects(&poller).is_empty(),
        "the polling client stayed connected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_publish_crosses_nodes() {
    let Some(s) = setup(3, &[], Affinity::IpHash).await else {
        return;
    };
    let (a, _) = s.client_on(0, 0, ConnectOptions::default()).await;
    let (b, _) = s.client_on(1, 0, ConnectOptions::default()).await;
    let (c, _) = s.client_on(2, 0, ConnectOptions::default()).await;
    let (d, _) = s.client_on(1, 1, ConnectOptions::default()).await; // in no room
    let (e, _) = s.client_on(2, 1, ConnectOptions::default()).await; // in another room
    for x in [&a, &b, &c] {
        x.join("room-x").await.unwrap();
    }
    e.join("room-y").await.unwrap();

    a.publish(Some("room-x"), "chat", json!({"from": "a", "n": 1}))
        .await
        .unwrap();
    for x in [&a, &b, &c] {
        let got = x.wait_event("chat", T).await.unwrap();
        assert_eq!(got.data(), &json!({"from": "a", "n": 1}), "{}", x.name());
    }
    // no room: every socket on every node
    b.publish(None, "all", json!("everyone")).await.unwrap();
    let everyone = [&a, &b, &c, &d, &e];
    for x in everyone {
        x.wait_event("all", T).await.unwrap();
    }
    settle(&a, &everyone, "1").await;
    for x in everyone {
        assert_eq!(data_of(x, "all"), vec![json!("everyone")], "{}", x.name());
    }
    for x in [&a, &b, &c] {
        assert_eq!(data_of(x, "chat").len(), 1, "{}: one chat", x.name());
    }
    assert!(
        data_of(&d, "chat").is_empty() && data_of(&e, "chat").is_empty(),
        "outsiders got room-x events"
    );

    // leave: c (on n3) stops receiving; the others still do
    c.leave("room-x").await.unwrap();
    a.publish(Some("room-x"), "chat", json!({"from": "a", "n": 2}))
        .await
        .unwrap();
    settle(&a, &everyone, "2").await;
    assert_eq!(data_of(&a, "chat").len(), 2);
    assert_eq!(
        data_of(&b, "chat"),
        vec![json!({"from": "a", "n": 1}), json!({"from": "a", "n": 2})]
    );
    assert_eq!(
        data_of(&c, "chat"),
        vec![json!({"from": "a", "n": 1})],
        "c left room-x"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_message_reaches_exactly_one_socket_on_another_node() {
    let Some(s) = setup(3, &[], Affinity::IpHash).await else {
        return;
    };
    let (a, _) = s.client_on(0, 0, ConnectOptions::default()).await;
    let (b, hb) = s.client_on(1, 0, ConnectOptions::default()).await;
    let (c, hc) = s.client_on(2, 0, ConnectOptions::default()).await;
    // c joins a client room named like b's socket id: it must not get b's private messages
    c.join(&hb.id).await.unwrap();

    a.send_to(&hb.id, "dm", json!({"text": "for b"}))
        .await
        .unwrap();
    let got = b.wait_event("dm", T).await.unwrap();
    assert_eq!(got.data(), &json!({"text": "for b"}));
    // barrier on the same path (n1 -> Redis -> n3) for c, and to b itself
    a.send_to(&hc.id, "dm-end", json!(1)).await.unwrap();
    a.send_to(&hb.id, "dm-end", json!(1)).await.unwrap();
    c.wait_event("dm-end", T).await.unwrap();
    b.wait_event("dm-end", T).await.unwrap();
    assert_eq!(data_of(&b, "dm").len(), 1, "b gets it exactly once");
    assert!(
        data_of(&c, "dm").is_empty(),
        "a room named like b's id leaked b's private message"
    );
    assert!(data_of(&a, "dm").is_empty(), "the sender is not the target");

    // presence of that room lists c only, not b
    let members = a.presence(&hb.id).await.unwrap();
    assert_eq!(ids(&members), vec![hc.id.clone()]);
}

/// Pub/sub messages node `i` received from Redis so far, and its private messages by route.
async fn redis_received(s: &Setup, i: usize) -> f64 {
    let m = s.cluster.metrics(i).await.unwrap();
    metric_value(&m, "realtime_redis_messages_received_total", &[]).unwrap_or(-1.0)
}
async fn routed(s: &Setup, i: usize, route: &str) -> f64 {
    let m = s.cluster.metrics(i).await.unwrap();
    metric_value(&m, "realtime_send_routes_total", &[("route", route)]).unwrap_or(-1.0)
}

/// `n` private messages each way between `a` and `b`, all waited for; then the growth of the
/// Redis messages node 2 (a bystander) received meanwhile.
async fn bystander_growth(s: &Setup, a: &Client, b: &Client, ida: &str, idb: &str) -> f64 {
    const N: usize = 40;
    let before = redis_received(s, 2).await;
    for k in 0..N {
        a.send_to(idb, "dm", json!(k)).await.unwrap();
        b.send_to(ida, "dm", json!(k)).await.unwrap();
    }
    for (c, who) in [(a, "a"), (b, "b")] {
        let deadline = Instant::now() + T;
        while data_of(c, "dm").len() < N {
            assert!(
                Instant::now() < deadline,
                "{who} got {} of {N}",
                data_of(c, "dm").len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let got: Vec<Value> = data_of(c, "dm");
        assert_eq!(
            got,
            (0..N).map(|k| json!(k)).collect::<Vec<_>>(),
            "{who}: each once, in order"
        );
    }
    redis_received(s, 2).await - before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_messages_go_to_the_node_of_their_socket_only() {
    let Some(s) = setup(3, &[], Affinity::IpHash).await else {
        return;
    };
    if skip_unless_realtime(&s.cluster, "PRIVATE_ROUTING") {
        return;
    }
    let (a, ha) = s.client_on(0, 0, ConnectOptions::default()).await;
    let (b, hb) = s.client_on(1, 0, ConnectOptions::default()).await;
    let (c, hc) = s.client_on(2, 0, ConnectOptions::default()).await;
    // ids name their node: the three nodes' ids differ in their first 6 characters
    let tags: std::collections::HashSet<&str> =
        [&ha.id, &hb.id, &hc.id].iter().map(|id| &id[..6]).collect();
    assert_eq!(tags.len(), 3, "ids {} {} {}", ha.id, hb.id, hc.id);

    let grew = bystander_growth(&s, &a, &b, &ha.id, &hb.id).await;
    // 80 private messages between n1 and n2; n3 hears only its own probes (one per 2 s)
    assert!(
        grew <= 6.0,
        "the bystander node received {grew} Redis messages for 80 private messages of others"
    );
    assert_eq!(routed(&s, 0, "node").await, 40.0);
    assert_eq!(routed(&s, 1, "node").await, 40.0);
    assert_eq!(routed(&s, 0, "broadcast").await, 0.0);
    assert!(data_of(&c, "dm").is_empty());

    // the node of c dies: a message to c finds no subscriber on that node's channel and is
    // broadcast instead (nobody has c any more: acked ok, as before routing)
    s.cluster
        .node(2)
        .proc_()
        .unwrap()
        .stop(libc::SIGKILL, Duration::from_secs(1))
        .await
        .unwrap();
    // (Redis drops the dead node's subscription once it reads the closed connection: until
    // then a PUBLISH still counts it, so retry for a moment)
    let deadline = Instant::now() + T;
    loop {
        a.send_to(&hc.id, "dm", json!("gone")).await.unwrap();
        if routed(&s, 0, "fallback").await >= 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "no fallback after the node died");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // and a's own messages still flow
    b.send_to(&ha.id, "dm-after", json!(1)).await.unwrap();
    a.wait_event("dm-after", T).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_private_routing_broadcast_every_node_gets_every_private_message() {
    // The control of the test above: the same exchange with the behaviour before routing.
    let Some(s) = setup(3, &[("PRIVATE_ROUTING", "broadcast")], Affinity::IpHash).await else {
        return;
    };
    if skip_unless_realtime(&s.cluster, "PRIVATE_ROUTING") {
        return;
    }
    let (a, ha) = s.client_on(0, 0, ConnectOptions::default()).await;
    let (b, hb) = s.client_on(1, 0, ConnectOptions::default()).await;
    let grew = bystander_growth(&s, &a, &b, &ha.id, &hb.id).await;
    assert!(
        grew >= 80.0,
        "the bystander node received {grew} Redis messages, want every one of the 80"
    );
    assert_eq!(routed(&s, 0, "broadcast").await, 40.0);
    assert_eq!(routed(&s, 0, "node").await, 0.0);
}

fn ids(m: &[Member]) -> Vec<String> {
    m.iter().map(|m| m.id.clone()).collect()
}

fn sorted_members(mut v: Vec<(String, String, Option<String>)>) -> Vec<Member> {
    v.sort();
    let mut m: Vec<Member> = v
        .into_iter()
        .map(|(id, node, user)| Member { id, node, user })
        .collect();
    m.sort();
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_lists_members_of_every_node_once() {
    let Some(s) = setup(3, &[], Affinity::IpHash).await else {
        return;
    };
    let (a, ha) = s.client_on(0, 0, ConnectOptions::default()).await;
    let (b, hb) = s.client_on(1, 0, ConnectOptions::default()).await;
    let (c, hc) = s.client_on(2, 0, ConnectOptions::default()).await;
    let (d, _) = s.client_on(0, 1, ConnectOptions::default()).await;
    for x in [&a, &b, &c] {
        x.join("lobby").await.unwrap();
    }
    a.join("lobby").await.unwrap(); // joining twice lists it once
    d.join("other").await.unwrap();

    let want = sorted_members(vec![
        (ha.id.clone(), "n1".into(), None),
        (hb.id.clone(), "n2".into(), None),
        (hc.id.clone(), "n3".into(), None),
    ]);
    assert_eq!(d.presence("lobby").await.unwrap(), want, "asked from n1");
    assert_eq!(b.presence("lobby").await.unwrap(), want, "asked from n2");
    assert!(a.presence("empty-room").await.unwrap().is_empty());

    b.leave("lobby").await.unwrap();
    let want = sorted_members(vec![
        (ha.id.clone(), "n1".into(), None),
        (hc.id.clone(), "n3".into(), None),
    ]);
    assert_eq!(d.presence("lobby").await.unwrap(), want, "after b left");

    c.disconnect().await.unwrap();
    let deadline = Instant::now() + T;
    loop {
        let m = d.presence("lobby").await.unwrap();
        if m == sorted_members(vec![(ha.id.clone(), "n1".into(), None)]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "c still listed after disconnecting: {m:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    if s.cluster.kind() == ServerKind::Realtime {
        // /metrics of every node: a, d on n1; b on n2; none on n3 any more
        let deadline = Instant::now() + T;
        loop {
            let mut counts = Vec::new();
            for i in 0..3 {
                let m = s.cluster.metrics(i).await.unwrap();
                counts.push(metric_value(&m, "realtime_connected_sockets", &[]));
            }
            if counts == [Some(2.0), Some(1.0), Some(0.0)] {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "realtime_connected_sockets per node: {counts:?}, want 2, 1, 0"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // ... read on the admin ports: through nginx (the public ports) the internals and the
        // demo page are not there
        let nginx = std::net::SocketAddr::from(([127, 0, 0, 1], s.cluster.nginx_port()));
        for path in ["/metrics", "/readyz", "/healthz", "/"] {
            let r = http_get_with(nginx, path, &[], T).await.unwrap();
            assert_eq!(r.status, 404, "GET {path} through nginx: {r:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_messages_cross_nodes_and_tokens_are_checked() {
    let Some(s) = setup(3, &[("AUTH_SECRET", SECRET)], Affinity::IpHash).await else {
        return;
    };
    if skip_unless_realtime(&s.cluster, "auth (AUTH_SECRET)") {
        return;
    }
    let tok = |u: &str| ConnectOptions::default().token(&hs256_token(SECRET, u, 600));
    let (alice1, h1) = s.client_on(0, 0, tok("alice")).await;
    let (alice2, h2) = s.client_on(1, 0, tok("alice")).await;
    let (bob, hb) = s.client_on(2, 0, tok("bob")).await;
    // client rooms are apart from user rooms
    let (carol, _) = s.client_on(1, 1, tok("carol")).await;
    carol.join("alice").await.unwrap();
    carol.join("user:alice").await.unwrap();

    bob.send_to_user("alice", "note", json!({"from": "bob"}))
        .await
        .unwrap();
    for a in [&alice1, &alice2] {
        let got = a.wait_event("note", T).await.unwrap();
        assert_eq!(got.data(), &json!({"from": "bob"}));
    }
    // barrier: everyone gets a broadcast from bob published after the note
    settle(&bob, &[&alice1, &alice2, &bob, &carol], "u").await;
    assert_eq!(
        data_of(&alice1, "note").len(),
        1,
        "alice's socket on n1, once"
    );
    assert_eq!(
        data_of(&alice2, "note").len(),
        1,
        "alice's socket on n2, once"
    );
    assert!(data_of(&bob, "note").is_empty(), "bob is not alice");
    assert!(
        data_of(&carol, "note").is_empty(),
        "a client room named like the user leaked its messages"
    );

    // presence carries the user of each member
    for x in [&alice1, &alice2, &bob] {
        x.join("team").await.unwrap();
    }
    let want = sorted_members(vec![
        (h1.id.clone(), "n1".into(), Some("alice".into())),
        (h2.id.clone(), "n2".into(), Some("alice".into())),
        (hb.id.clone(), "n3".into(), Some("bob".into())),
    ]);
    assert_eq!(carol.presence("team").await.unwrap(), want);

    // refused handshakes: connect_error with a message that says what is wrong
    let refused = [
        ("no token", ConnectOptions::default()),
        (
            "wrong secret",
            ConnectOptions::default().token(&hs256_token("not-the-secret", "eve", 600)),
        ),
        (
            "expired",
            ConnectOptions::default().token(&hs256_token(SECRET, "eve", -600)),
        ),
        ("not a JWT", ConnectOptions::default().token("not-a-jwt")),
    ];
    for (what, opts) in refused {
        let c = s
            .driver
            .connect(
                &s.cluster.url(),
                opts.reconnection(false)
                    .local_address(s.cluster.source_address_for(0, 1)),
            )
            .await
            .unwrap();
        let msg = c
            .wait_connect_error(T)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e:#}"));
        eprintln!("connect_error ({what}): {msg}");
        assert!(
            msg.to_lowercase().contains("token"),
            "{what}: unclear connect_error message {msg:?}"
        );
        if what != "no token" {
            assert!(
                msg.to_lowercase().contains("invalid"),
                "{what}: {msg:?} should say the token is invalid"
            );
        }
        assert!(
            c.events("hello").is_empty(),
            "{what}: a refused client got hello"
        );
        assert!(!c.state().await.unwrap().connected);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_of_500_arrives_complete_and_in_order_on_other_nodes() {
    const N: usize = 500;
    let Some(s) = setup(3, &[], Affinity::IpHash).await else {
        return;
    };
    // the sender in a Node process of its own, so that sending and receiving do not share one
    // event loop
    let sender_driver = Driver::start(&sio::find_driver().unwrap()).await.unwrap();
    let (sender, _) = s
        .client_on_with(&sender_driver, 0, 0, ConnectOptions::default())
        .await;
    let (r2, _) = s.client_on(1, 0, ConnectOptions::default()).await;
    let (r3, _) = s.client_on(2, 0, ConnectOptions::default()).await;
    r2.join("burst").await.unwrap();
    r3.join("burst").await.unwrap();
    // wait for the upgrade so the burst measures the websocket path
    for c in [&sender, &r2, &r3] {
        c.wait_until(T, "websocket", |log| {
            log.iter()
                .any(|r| matches!(&r.what, Incoming::Upgrade { .. }))
                .then_some(())
        })
        .await
        .unwrap();
    }

    let payloads: Vec<Value> = (0..N)
        .map(|i| json!({"room": "burst", "event": "b", "data": {"i": i, "p": "x".repeat(100)}}))
        .collect();
    // without acks, like a chatty app (and rtbench)
    let t0 = sender.emit_many("publish", payloads).await.unwrap();
    for (name, r) in [("n2", &r2), ("n3", &r3)] {
        let got = r
            .wait_events("b", N, Duration::from_secs(30))
            .await
            .unwrap();
        let seq: Vec<u64> = got
            .iter()
            .map(|e| e.data()["i"].as_u64().unwrap())
            .collect();
        assert_eq!(
            seq,
            (0..N as u64).collect::<Vec<_>>(),
            "{name}: complete and in order"
        );
        let mut lat: Vec<f64> = got.iter().map(|e| e.t_ms - t0).collect();
        let span = lat.last().unwrap().max(0.001);
        lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let p = |q: f64| lat[((lat.len() as f64 * q).ceil() as usize).clamp(1, lat.len()) - 1];
        println!(
            "MEASURE burst n1 -> {name}: {N} events in {span:.1} ms = {:.0} events/s; latency from \
             the burst's send (queueing included): first {:.1} ms, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            N as f64 / (span / 1000.0),
            lat[0],
            p(0.50),
            p(0.99),
            p(1.0)
        );
    }
    settle(&sender, &[&r2, &r3], "end").await;
    assert_eq!(r2.events("b").len(), N, "no duplicates on n2");
    assert_eq!(r3.events("b").len(), N, "no duplicates on n3");
    assert!(
        sender.events("b").is_empty(),
        "the sender is not in the room"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_disturbs_nobody() {
    const MAX_PAYLOAD: usize = 20_000;
    let Some(s) = setup(
        3,
        &[("MAX_PAYLOAD", &MAX_PAYLOAD.to_string())],
        Affinity::IpHash,
    )
    .await
    else {
        return;
    };
    let realtime = s.cluster.kind() == ServerKind::Realtime;
    let (bad, _) = s.client_on(0, 0, ConnectOptions::default()).await;
    let (victim, _) = s.client_on(0, 1, ConnectOptions::default()).await; // same node as bad
    let (far, _) = s.client_on(1, 0, ConnectOptions::default()).await;
    victim.join("calm").await.unwrap();
    bad.join("calm").await.unwrap();

    let mut cases = vec![
        ("join", json!(42)),
        ("join", json!("")),
        ("join", Value::Null),
        ("join", json!({"room": "calm"})),
        ("leave", json!(42)),
        ("publish", json!("calm")),
        ("publish", json!(["calm", "e", 1])),
        ("publish", Value::Null),
        ("publish", json!({"room": "calm", "event": "e"})),
        ("publish", json!({"room": "calm", "data": 1})),
        ("publish", json!({"room": "calm", "event": "", "data": 1})),
        ("publish", json!({"room": "calm", "event": 7, "data": 1})),
        (
            "publish",
            json!({"room": "calm", "event": "connect", "data": 1}),
        ),
        (
            "publish",
            json!({"room": "calm", "event": "disconnect", "data": 1}),
        ),
        ("publish", json!({"room": null, "event": "e", "data": 1})),
        ("publish", json!({"room": 5, "event": "e", "data": 1})),
        ("send", json!({"event": "e", "data": 1})),
        ("send", json!({"to": "", "event": "e", "data": 1})),
        ("send", json!({"to": 5, "event": "e", "data": 1})),
        ("send", json!({"to": "x", "data": 1})),
        ("send", json!([])),
        ("presence", json!({})),
        ("presence", json!("calm")),
        ("presence", json!({"room": 3})),
    ];
    if realtime {
        // The reference has no length limit; ours refuses room names over its bound.
        cases.push(("join", json!("r".repeat(10_000))));
        cases.push((
            "publish",
            json!({"room": "r".repeat(10_000), "event": "e", "data": 1}),
        ));
        cases.push(("presence", json!({"room": "r".repeat(10_000)})));
        // user-addressed send needs auth, which this cluster does not have
        cases.push(("send", json!({"user": "alice", "event": "e", "data": 1})));
    }
    for (event, arg) in &cases {
        let ack = bad
            .emit_ack(event, arg.clone())
            .await
            .unwrap_or_else(|e| panic!("{event} {arg}: {e:#}"));
        assert!(
            is_refusal(&ack),
            "{event} {}: acked {ack}, want {{ok:false, error}}",
            short(arg)
        );
        // the same without an ack id must not break anything either
        bad.emit(event, arg.clone()).await.unwrap();
    }
    // unknown event: a refusal (ours) or no ack at all (the reference has no handler)
    match bad
        .emit_ack_args(
            "no-such-event",
            vec![json!({"x": 1})],
            Duration::from_secs(2),
        )
        .await
    {
        Ok(ack) => assert!(is_refusal(&ack[0]), "unknown event acked {ack:?}"),
        Err(e) if !realtime => eprintln!("unknown event, reference: {e:#}"),
        Err(e) => panic!("unknown event: no refusal ack: {e:#}"),
    }
    // none of that was emitted to anyone, and the bad client is still connected and usable
    far.publish(Some("calm"), "calm", json!(0)).await.unwrap();
    for c in [&bad, &victim] {
        c.wait_event("calm", T).await.unwrap();
    }
    for c in [&bad, &victim, &far] {
        let unexpected: Vec<_> = c
            .log()
            .into_iter()
            .filter_map(|r| r.event_name().map(String::from))
            .filter(|n| n != "hello" && n != "calm")
            .collect();
        assert!(
            unexpected.is_empty(),
            "{}: bad input was emitted: {unexpected:?}",
            c.name()
        );
    }
    assert!(
        disconnects(&bad).is_empty(),
        "bad input must not cost the connection"
    );
    assert!(bad.state().await.unwrap().connected);

    // an oversized payload: refused (ack or the transport closes), never delivered
    let limit = if realtime { MAX_PAYLOAD } else { 1_000_000 };
    let big = json!({"room": "calm", "event": "big", "data": "x".repeat(limit + 10_000)});
    match bad
        .emit_ack_args("publish", vec![big], Duration::from_secs(3))
        .await
    {
        Ok(ack) => assert!(is_refusal(&ack[0]), "oversized publish acked {ack:?}"),
        Err(e) => eprintln!(
            "oversized publish: no ack ({e:#}); disconnects: {:?}",
            disconnects(&bad)
        ),
    }
    for i in 1..=5 {
        far.publish(Some("calm"), "calm", json!(i)).await.unwrap();
    }
    let want: Vec<Value> = (0..=5).map(|i| json!(i)).collect();
    victim.wait_events("calm", 6, T).await.unwrap();
    settle(&far, &[&victim, &far], "end").await;
    assert_eq!(
        data_of(&victim, "calm"),
        want,
        "the neighbour on the same node keeps receiving, in order"
    );
    assert!(
        victim.events("big").is_empty() && far.events("big").is_empty(),
        "oversized payload delivered"
    );
    assert!(
        disconnects(&victim).is_empty(),
        "the neighbour was disturbed: {:?}",
        disconnects(&victim)
    );
    assert!(
        s.cluster.exited_nodes().is_empty(),
        "a node died: {:?}",
        s.cluster.exited_nodes()
    );
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 80 {
        format!("{}… ({} bytes)", &s[..80], s.len())
    } else {
        s
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_keeps_nodes_up_and_delivery_resumes() {
    let Some(mut s) = setup(3, &[], Affinity::IpHash).await else {
        return;
    };
    let realtime = s.cluster.kind() == ServerKind::Realtime;
    let (a, _) = s.client_on(0, 0, ConnectOptions::default()).await;
    let (b, _) = s.client_on(1, 0, ConnectOptions::default()).await;
    let (c, _) = s.client_on(2, 0, ConnectOptions::default()).await;
    for x in [&a, &b, &c] {
        x.join("r").await.unwrap();
    }
    a.publish(Some("r"), "before", json!(1)).await.unwrap();
    for x in [&b, &c] {
        x.wait_event("before", T).await.unwrap();
    }

    s.cluster.stop_redis(libc::SIGTERM).await.unwrap();
    let down = Instant::now();
    if realtime {
        for i in 0..3 {
            let took = s.cluster.wait_readiness(i, false, T).await.unwrap();
            println!(
                "MEASURE redis down: {} degraded after {took:?}",
                s.cluster.node(i).name
            );
            // Degraded, not out of rotation: nginx keeps sending it clients.
            assert_eq!(
                s.cluster.readyz(i).await,
                Some(200),
                "node {i} left rotation"
            );
        }
    }
    // the node keeps serving its local clients: a's own publish reaches a
    let during = a
        .emit_ack(
            "publish",
            json!({"room": "r", "event": "during", "data": 1}),
        )
        .await;
    println!("publish during the outage acked: {during:?}");
    a.wait_event("during", T).await.unwrap();
    assert!(
        s.cluster.exited_nodes().is_empty(),
        "a node exited without Redis: {:?}",
        s.cluster.exited_nodes()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    s.cluster.start_redis().await.unwrap();
    let up = Instant::now();
    println!("redis was down for {:?}", up - down);
    // probe until b (n2) gets one of a's (n1) publishes again
    let mut k = 0u64;
    let resumed = loop {
        let _ = a
            .emit("publish", json!({"room": "r", "event": "probe", "data": k}))
            .await;
        k += 1;
        if let Ok(r) = b.wait_event("probe", Duration::from_millis(100)).await {
            break r;
        }
        assert!(
            up.elapsed() < Duration::from_secs(30),
            "cross-node delivery did not resume within 30 s"
        );
    };
    println!(
        "MEASURE redis restart: cross-node delivery resumed {:?} after redis was back (probe #{})",
        up.elapsed(),
        resumed.data()
    );
    if realtime {
        for i in 0..3 {
            s.cluster
                .wait_readiness(i, true, Duration::from_secs(30))
                .await
                .unwrap();
            println!(
                "MEASURE redis back: {} healthy again {:?} after redis was back",
                s.cluster.node(i).name,
                up.elapsed()
            );
        }
    }
    assert!(
        s.cluster.exited_nodes().is_empty(),
        "a node exited: {:?}",
        s.cluster.exited_nodes()
    );

    // every node delivers again, completely and in order
    for i in 0..20 {
        a.publish(Some("r"), "after", json!(i)).await.unwrap();
    }
    settle(&a, &[&a, &b, &c], "end").await;
    let want: Vec<Value> = (0..20).map(|i| json!(i)).collect();
    for x in [&a, &b, &c] {
        assert_eq!(data_of(x, "after"), want, "{}", x.name());
        assert!(
            disconnects(x).is_empty(),
            "{} lost its connection: {:?}",
            x.name(),
            disconnects(x)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_moves_clients_to_another_node_through_nginx() {
    let Some(s) = setup(3, &[("SHUTDOWN_GRACE", "5s")], Affinity::IpHash).await else {
        return;
    };
    let src = s.cluster.source_address_for(0, 0);
    let (x, hx) = s.client_on(0, 0, ConnectOptions::default()).await;
    let (y, _) = s.client_on(1, 0, ConnectOptions::default()).await;
    let (z, _) = s.client_on(2, 0, ConnectOptions::default()).await;
    x.join("r").await.unwrap();
    y.join("r").await.unwrap();
    let expected = s
        .cluster
        .ip_hash_node(&src, &[0])
        .expect("ip_hash has another node");

    let t = Instant::now();
    s.cluster.signal_node(0, libc::SIGTERM).unwrap();
    if s.cluster.kind() == ServerKind::Realtime {
        // not ready at once (the admin port answers 503 while draining, nothing once exited)
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match s.cluster.readyz(0).await {
                Some(200) => assert!(
                    Instant::now() < deadline,
                    "n1 still ready 2 s after SIGTERM"
                ),
                other => {
                    println!("n1 /readyz after SIGTERM: {other:?} ({:?})", t.elapsed());
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let reason = x
        .wait_until(T, "disconnect", |log| {
            log.iter().find_map(|r| match &r.what {
                Incoming::Disconnect { reason, .. } => Some(reason.clone()),
                _ => None,
            })
        })
        .await
        .unwrap();
    assert_ne!(
        reason, "io server disconnect",
        "a server-side disconnect stops the client's reconnection"
    );
    let h2 = x.hello_n(2, Duration::from_secs(30)).await.unwrap();
    println!(
        "MEASURE sigterm: client disconnected ({reason}), reconnected to {} after {:?}",
        h2.node,
        t.elapsed()
    );
    assert_eq!(
        h2.node,
        s.cluster.node(expected).name,
        "nginx ip_hash's next choice for {src}"
    );
    assert_ne!(h2.id, hx.id);
    // the app rejoins its rooms on reconnect
    x.join("r").await.unwrap();

    let status = s
        .cluster
        .node_proc(0)
        .wait_exit(Duration::from_secs(10))
        .await
        .unwrap();
    println!(
        "MEASURE sigterm: n1 exited ({status}) {:?} after SIGTERM",
        t.elapsed()
    );
    assert!(status.success(), "n1 exit status {status}");

    for i in 0..3 {
        z.publish(Some("r"), "after", json!(i)).await.unwrap();
    }
    settle(&z, &[&x, &y, &z], "end").await;
    let want: Vec<Value> = (0..3).map(|i| json!(i)).collect();
    assert_eq!(
        data_of(&x, "after"),
        want,
        "the moved client keeps receiving room events"
    );
    assert_eq!(data_of(&y, "after"), want);
    assert!(
        disconnects(&y).is_empty() && disconnects(&z).is_empty(),
        "clients of other nodes were disturbed"
    );
    assert_eq!(
        s.cluster.exited_nodes().len(),
        1,
        "only n1 exited: {:?}",
        s.cluster.exited_nodes()
    );
}

/// The `Set-Cookie` nginx answers an Engine.IO handshake sent with `cookie` as its `Cookie`.
async fn handshake_set_cookie(nginx: std::net::SocketAddr, cookie: Option<&str>) -> Option<String> {
    let headers: Vec<(&str, &str)> = cookie.map(|c| ("Cookie", c)).into_iter().collect();
    let handshake = "/socket.io/?EIO=4&transport=polling";
    let r = http_get_with(nginx, handshake, &headers, T).await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    r.header("set-cookie").map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_affinity_keeps_polling_clients_on_one_node() {
    // The harness's other affinity mode (what the operator asks of ingress-nginx): checked
    // here so that the end-to-end scenarios can rely on it.
    cookie_affinity(Affinity::cookie(), "INGRESSCOOKIE").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_affinity_with_a_dashed_cookie_name_spreads_clients() {
    // The operator's default cookie: nginx's `$cookie_NAME` cannot name it, and with it every
    // client once hashed to one node.
    cookie_affinity(Affinity::named_cookie("rt-affinity"), "rt-affinity").await;
}

/// nginx with cookie affinity on cookie `name`: hands the cookie out once, keeps clients on one
/// node, and spreads fresh clients over more than one node.
async fn cookie_affinity(affinity: Affinity, name: &str) {
    let Some(s) = setup(3, &[], affinity).await else {
        return;
    };
    // nginx hands out the affinity cookie once, and keeps a client that shows it on one node
    let nginx = std::net::SocketAddr::from(([127, 0, 0, 1], s.cluster.nginx_port()));
    let cookie = handshake_set_cookie(nginx, None)
        .await
        .expect("a Set-Cookie for a client without the cookie");
    assert!(cookie.starts_with(&format!("{name}=")), "{cookie}");
    let cookie = cookie.split(';').next().unwrap().to_string();
    let value = &cookie[name.len() + 1..];
    for shown in [
        cookie.clone(),
        format!("other=1; {cookie}"),
        format!("other=1;{cookie}; more=2"),
    ] {
        assert_eq!(
            handshake_set_cookie(nginx, Some(&shown)).await,
            None,
            "the cookie is set once (Cookie: {shown})"
        );
    }
    // a cookie whose name only ends like ours is another cookie
    let other = format!("x{name}={value}");
    assert!(
        handshake_set_cookie(nginx, Some(&other)).await.is_some(),
        "Cookie: {other} is not the affinity cookie"
    );
    // socket.io-client (withCredentials: its cookie jar) then sticks to one node: a long-polling
    // session fails at once when one of its requests reaches another node
    let mut clients = Vec::new();
    let mut nodes = std::collections::BTreeSet::new();
    for i in 0..12 {
        // half long-polling only, half upgrading: the WebSocket must reach the session's node too
        let mut opts = ConnectOptions::default().with_credentials(true);
        if i % 2 == 0 {
            opts = opts.transports(&[Transport::Polling]);
        }
        let (c, h) = s
            .driver
            .connect_hello(&s.cluster.url(), opts, T)
            .await
            .unwrap();
        nodes.insert(h.node);
        c.join("k").await.unwrap();
        if i % 2 == 1 {
            c.wait_until(T, "upgrade to websocket", |log| {
                log.iter()
                    .any(|r| {
                        r.what
                            == Incoming::Upgrade {
                                transport: "websocket".into(),
                            }
                    })
                    .then_some(())
            })
            .await
            .unwrap();
        }
        clients.push(c);
    }
    assert!(nodes.len() >= 2, "12 fresh cookies all hashed to {nodes:?}");
    for i in 0..3 {
        clients[0].publish(Some("k"), "p", json!(i)).await.unwrap();
    }
    let want: Vec<Value> = (0..3).map(|i| json!(i)).collect();
    for c in &clients {
        c.wait_events("p", 3, T).await.unwrap();
        assert_eq!(data_of(c, "p"), want);
        assert!(
            disconnects(c).is_empty(),
            "{}: a polling request went to another node",
            c.name()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_replacement_of_a_node_moves_its_clients() {
    // The harness's rolling-update step (new node into nginx's upstream, old node out and
    // SIGTERM), which the end-to-end scenarios use in place of a Deployment rollout.
    let Some(mut s) = setup(2, &[("SHUTDOWN_GRACE", "5s")], Affinity::IpHash).await else {
        return;
    };
    let (x, hx) = s.client_on(0, 0, ConnectOptions::default()).await;
    let (y, _) = s.client_on(1, 0, ConnectOptions::default()).await;
    x.join("r").await.unwrap();
    y.join("r").await.unwrap();

    let new = s
        .cluster
        .roll_node(0, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(s.cluster.node(new).name, "n3");
    assert!(!s.cluster.node(0).in_upstream);
    assert!(
        s.cluster.node_proc(0).exited().is_some(),
        "the old node is gone"
    );
    let h2 = x.hello_n(2, Duration::from_secs(30)).await.unwrap();
    assert_ne!(h2.node, hx.node, "moved off the replaced node");
    x.join("r").await.unwrap();
    // a client that lands on the new node through nginx
    let (z, hz) = s.client_on(new, 0, ConnectOptions::default()).await;
    assert_eq!(hz.node, "n3");
    z.join("r").await.unwrap();
    y.publish(Some("r"), "after", json!(1)).await.unwrap();
    settle(&y, &[&x, &y, &z], "end").await;
    for c in [&x, &y, &z] {
        assert_eq!(data_of(c, "after"), vec![json!(1)], "{}", c.name());
    }
}

/// MAX_CONNECTIONS: a full node answers a new session with 503 (the client's connect_error,
/// `realtime_sessions_refused_total`), keeps serving the sessions it has and its admin port,
/// and takes a new session again once one leaves. (At the open-files limit itself nothing could
/// be accepted, probes included: the default cap keeps a reserve below it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_node_refuses_new_sessions_and_keeps_its_admin_port() {
    let Some(s) = setup(1, &[("MAX_CONNECTIONS", "2")], Affinity::IpHash).await else {
        return;
    };
    if skip_unless_realtime(&s.cluster, "MAX_CONNECTIONS") {
        return;
    }
    let (a, _) = s.client_on(0, 0, ConnectOptions::default()).await;
    let (b, _) = s.client_on(0, 1, ConnectOptions::default()).await;
    let m = s.cluster.metrics(0).await.unwrap();
    assert_eq!(metric_value(&m, "realtime_max_connections", &[]), Some(2.0));

    let c = s
        .driver
        .connect(
            &s.cluster.url(),
            ConnectOptions::default()
                .reconnection(false)
                .local_address(s.cluster.source_address_for(0, 2)),
        )
        .await
        .unwrap();
    let msg = c.wait_connect_error(T).await.unwrap();
    eprintln!("third session: connect_error {msg}");
    let m = s.cluster.metrics(0).await.unwrap();
    let refused = metric_value(&m, "realtime_sessions_refused_total", &[]).unwrap_or(0.0);
    assert!(refused >= 1.0, "refusals counted: {refused}");
    let health = http_get(s.cluster.node(0).admin_addr(), "/healthz", T)
        .await
        .unwrap();
    assert_eq!(health.status, 200, "the admin port answers while full");

    // The sessions it has keep working.
    a.join("full").await.unwrap();
    b.join("full").await.unwrap();
    a.publish(Some("full"), "still", json!(1)).await.unwrap();
    b.wait_event("still", T).await.unwrap();

    // One leaves: a new session is taken again.
    a.disconnect().await.unwrap();
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let m = s.cluster.metrics(0).await.unwrap();
        if metric_value(&m, "realtime_connected_sockets", &[]) == Some(1.0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a's session never ended"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_d, _) = s.client_on(0, 3, ConnectOptions::default()).await;
}
