//! Connection state recovery (issue 12) with the official socket.io-client: a real
//! redis-server, server processes and nginx (`ip_hash`) on loopback, as in `data_plane.rs`.
//!
//! Every test sends numbered messages of four kinds (a room publish, a broadcast, a private
//! `send {to}` and a user `send {user}`) from one client, one at a time (each acknowledged,
//! so the log holds them in that order), and checks what the recovering client got: every
//! number once, in order, each with a string offset as its last argument (offsets increasing).

use std::time::{Duration, Instant};

use realtime_e2e::data_plane::{Affinity, Cluster, ClusterConfig, ServerCommand, metric_value};
use realtime_e2e::sio::{self, Client, ConnectOptions, Driver, Hello, Incoming, hs256_token};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(10);
const SECRET: &str = "e2e-test-secret-of-32-bytes-long";
/// The events the sender numbers (see the module doc).
const KINDS: [&str; 4] = ["room", "all", "priv", "user"];

struct Setup {
    driver: Driver,
    cluster: Cluster,
}

async fn setup(nodes: usize, env: &[(&str, &str)]) -> Option<Setup> {
    let server = ServerCommand::for_tests()?;
    let paths = realtime_e2e::require::require(
        "node and socket.io-client",
        sio::DRIVER_HOW_TO,
        sio::find_driver(),
    )?;
    let mut cfg = ClusterConfig::new(server, nodes)
        .affinity(Affinity::IpHash)
        .env("AUTH_SECRET", SECRET);
    for (k, v) in env {
        cfg = cfg.env(k, v);
    }
    let cluster = Cluster::for_test(cfg).await?;
    let driver = Driver::start(&paths)
        .await
        .expect("starting the socket.io-client driver");
    Some(Setup { driver, cluster })
}

/// Quick reconnections (100 ms, no randomization) unless the test sets its own.
fn opts(user: &str) -> ConnectOptions {
    ConnectOptions::default()
        .token(&hs256_token(SECRET, user, 3600))
        .reconnection_delay_ms(100, 100)
        .option("randomizationFactor", json!(0))
}

impl Setup {
    /// A client of `user` on node `node` (through nginx, by source address `k`).
    async fn client_on(&self, node: usize, k: usize, opts: ConnectOptions) -> (Client, Hello) {
        let src = self.cluster.source_address_for(node, k);
        let (c, hello) = self
            .driver
            .connect_hello(&self.cluster.url(), opts.local_address(src.clone()), T)
            .await
            .unwrap_or_else(|e| panic!("client from {src} to node {node}: {e:#}"));
        assert_eq!(
            hello.node,
            self.cluster.node(node).name,
            "ip_hash placement"
        );
        (c, hello)
    }
}

/// Sends message `n` of kind `n % 4` for client `to` (id `to_id`, user `to_user`).
async fn send(from: &Client, n: u64, to_id: &str, to_user: &str) {
    let kind = KINDS[(n % 4) as usize];
    let data = json!(n);
    let res = match kind {
        "room" => from.publish(Some("r"), kind, data).await,
        "all" => from.publish(None, kind, data).await,
        "priv" => from.send_to(to_id, kind, data).await,
        _ => from.send_to_user(to_user, kind, data).await,
    };
    res.unwrap_or_else(|e| panic!("sending {n}: {e:#}"));
}

/// The numbered messages a client got, in arrival order: (number, offset, receive time).
fn numbered(c: &Client) -> Vec<(u64, Option<String>, f64)> {
    c.log()
        .into_iter()
        .filter_map(|r| match r.what {
            Incoming::Event { name, args } if KINDS.contains(&name.as_str()) => {
                let n = args.first()?.as_u64()?;
                let offset = match args.last() {
                    Some(Value::String(s)) if args.len() == 2 => Some(s.clone()),
                    _ => None,
                };
                Some((n, offset, r.t_ms))
            }
            _ => None,
        })
        .collect()
}

/// A stream id as a comparable pair.
fn stream_id(s: &str) -> (u64, u64) {
    let (a, b) = s.split_once('-').expect("a stream id");
    (a.parse().unwrap(), b.parse().unwrap())
}

/// Checks that `c` got exactly `0..total`, in order, each once, each with an increasing
/// offset. Returns (lost, duplicated) for the report before asserting.
fn check_exact(c: &Client, total: u64, what: &str) {
    let got = numbered(c);
    let ns: Vec<u64> = got.iter().map(|g| g.0).collect();
    let mut seen = std::collections::HashSet::new();
    let dups = ns.iter().filter(|n| !seen.insert(**n)).count();
    let lost = (0..total).filter(|n| !seen.contains(n)).count();
    println!(
        "MEASURE {what}: {total} sent, {} received, {lost} lost, {dups} duplicated",
        ns.len()
    );
    assert_eq!(
        ns,
        (0..total).collect::<Vec<_>>(),
        "{what}: every message once, in order"
    );
    let mut last = (0, 0);
    for (n, offset, _) in &got {
        let o = offset
            .as_deref()
            .unwrap_or_else(|| panic!("{what}: message {n} has no offset"));
        let id = stream_id(o);
        assert!(id > last, "{what}: offsets increase ({o} after {last:?})");
        last = id;
    }
}

/// The (id, recovered) of the client's `n`-th connection.
async fn connect_n(c: &Client, n: usize, timeout: Duration) -> (String, bool) {
    c.wait_connect_recovered_n(n, timeout).await.unwrap()
}

/// (a) The client's node gets SIGTERM: the client reconnects to another node, recovers its
/// session (same id, rooms, user) and gets every message sent meanwhile, in order, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_client_recovers_elsewhere_with_every_missed_message_once_in_order() {
    let Some(s) = setup(3, &[("RECOVERY_WINDOW", "30s"), ("SHUTDOWN_GRACE", "5s")]).await else {
        return;
    };
    let (x, hx) = s.client_on(0, 0, opts("alice")).await;
    let (y, _) = s.client_on(1, 0, opts("bob")).await;
    let (z, _) = s.client_on(2, 0, opts("carol")).await;
    let (id1, rec1) = connect_n(&x, 1, T).await;
    assert!(!rec1, "a first connection is not a recovery");
    assert_eq!(id1, hx.id);
    x.join("r").await.unwrap();
    y.join("r").await.unwrap();
    let pid = x.state().await.unwrap().pid.expect("the server sent a pid");
    assert_eq!(pid.len(), 32);

    let mut n = 0u64;
    while n < 20 {
        send(&z, n, &id1, "alice").await;
        n += 1;
    }
    let t_term = Instant::now();
    s.cluster.signal_node(0, libc::SIGTERM).unwrap();
    // keep sending while x is away and after it is back
    let mut after_back = None;
    loop {
        send(&z, n, &id1, "alice").await;
        n += 1;
        if after_back.is_none()
            && x.log()
                .iter()
                .filter(|r| matches!(r.what, Incoming::Connect { .. }))
                .count()
                >= 2
        {
            after_back = Some(n);
        }
        if after_back.is_some_and(|b| n >= b + 20) {
            break;
        }
        assert!(
            t_term.elapsed() < Duration::from_secs(20),
            "x never came back"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (id2, recovered) = connect_n(&x, 2, T).await;
    let h2 = x.hello_n(2, T).await.unwrap();
    assert!(recovered, "socket.recovered after a SIGTERM drain");
    assert_eq!(id2, id1, "the same socket id");
    assert_ne!(h2.node, hx.node, "another node");
    assert_eq!(x.state().await.unwrap().pid.as_deref(), Some(pid.as_str()));

    // a last message of each kind after the move, then a marker
    for _ in 0..4 {
        send(&z, n, &id1, "alice").await;
        n += 1;
    }
    x.wait_until(T, "all messages", |log| {
        log.iter()
            .find(|r| {
                r.event_name().is_some_and(|e| KINDS.contains(&e))
                    && r.data().as_u64() == Some(n - 1)
            })
            .map(|_| ())
    })
    .await
    .unwrap();
    check_exact(&x, n, "sigterm (x, moved)");
    // y (room member on another node) got the room and broadcast messages once, in order
    let want: Vec<u64> = (0..n).filter(|i| i % 4 < 2).collect();
    let y_last = *want.last().unwrap();
    y.wait_event_where(KINDS[(y_last % 4) as usize], T, |d| d == &json!(y_last))
        .await
        .unwrap();
    let y_ns: Vec<u64> = numbered(&y).iter().map(|g| g.0).collect();
    assert_eq!(y_ns, want, "y: undisturbed");

    // latency: from the disconnect to the recovered connect
    let log = x.log();
    let disc = log
        .iter()
        .find(|r| matches!(r.what, Incoming::Disconnect { .. }))
        .unwrap()
        .t_ms;
    let conn = log
        .iter()
        .filter(|r| matches!(r.what, Incoming::Connect { .. }))
        .nth(1)
        .unwrap()
        .t_ms;
    let replayed = numbered(&x).iter().filter(|(_, _, t)| *t >= conn).count();
    println!(
        "MEASURE sigterm: disconnect -> recovered connect {:.0} ms (client reconnection delay 100 ms); {n} messages, {replayed} received after the reconnect",
        conn - disc
    );
    // presence: x is a member of r again, on its new node, with its user
    let members = y.presence("r").await.unwrap();
    assert!(
        members
            .iter()
            .any(|m| m.id == id1 && m.node == h2.node && m.user.as_deref() == Some("alice")),
        "presence after the recovery: {members:?}"
    );
    let restored_line = s
        .cluster
        .node_proc(h2_index(&s, &h2.node))
        .log_tail(400)
        .lines()
        .find(|l| l.contains("session restored"))
        .map(str::to_string)
        .unwrap_or_default();
    println!("MEASURE sigterm: server log: {restored_line}");
    let m = s.cluster.metrics(h2_index(&s, &h2.node)).await.unwrap();
    let restored = metric_value(&m, "realtime_recovery_restored_total", &[]).unwrap_or(0.0);
    let replayed_m = metric_value(&m, "realtime_recovery_replayed_total", &[]).unwrap_or(0.0);
    println!(
        "MEASURE sigterm: new node restored {restored} session(s), replayed {replayed_m} packet(s)"
    );
    assert_eq!(restored, 1.0);
}

fn h2_index(s: &Setup, node: &str) -> usize {
    s.cluster.node_index(node).expect("a node of the cluster")
}

/// (c) kill -9 of the client's node: its sessions were written through, so the client
/// still recovers on another node; what it loses is measured (and asserted to be nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_node_loses_nothing_the_log_has() {
    let Some(s) = setup(3, &[("RECOVERY_WINDOW", "30s")]).await else {
        return;
    };
    let (x, hx) = s.client_on(0, 0, opts("alice")).await;
    let (z, _) = s.client_on(2, 0, opts("carol")).await;
    x.join("r").await.unwrap();
    let id1 = hx.id.clone();
    let mut n = 0u64;
    while n < 20 {
        send(&z, n, &id1, "alice").await;
        n += 1;
    }
    let t = Instant::now();
    s.cluster.signal_node(0, libc::SIGKILL).unwrap();
    let mut after_back = None;
    loop {
        send(&z, n, &id1, "alice").await;
        n += 1;
        let connects = x
            .log()
            .iter()
            .filter(|r| matches!(r.what, Incoming::Connect { .. }))
            .count();
        if after_back.is_none() && connects >= 2 {
            after_back = Some(n);
        }
        if after_back.is_some_and(|b| n >= b + 20) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "x never came back");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (id2, recovered) = connect_n(&x, 2, T).await;
    println!(
        "MEASURE kill -9: recovered={recovered}, same id={}",
        id2 == id1
    );
    assert!(recovered, "the written-through session survives a kill -9");
    assert_eq!(id2, id1);
    x.wait_event_where(KINDS[((n - 1) % 4) as usize], T, |d| d == &json!(n - 1))
        .await
        .unwrap();
    check_exact(&x, n, "kill -9 (x, moved)");
}

/// (d) A client away for longer than the window gets `recovered === false`, a new id and a
/// clean session (no rooms, nothing replayed); one back within the window recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn away_longer_than_the_window_gets_a_clean_session() {
    let Some(s) = setup(2, &[("RECOVERY_WINDOW", "2s")]).await else {
        return;
    };
    // late: reconnects 4 s after losing its transport; quick: after 100 ms
    let late_opts = opts("alice").reconnection_delay_ms(4000, 4000);
    let (late, hl) = s.client_on(0, 0, late_opts).await;
    let (quick, hq) = s.client_on(0, 1, opts("dave")).await;
    let (z, _) = s.client_on(1, 0, opts("carol")).await;
    late.join("r").await.unwrap();
    quick.join("r").await.unwrap();
    send(&z, 0, &hl.id, "alice").await; // a room message: both have an offset once it arrives
    for c in [&late, &quick] {
        c.wait_event_where("room", T, |d| d == &json!(0))
            .await
            .unwrap();
    }

    late.drop_transport().await.unwrap();
    quick.drop_transport().await.unwrap();
    let (qid, qrec) = connect_n(&quick, 2, T).await;
    assert!(qrec, "back within the window: recovered");
    assert_eq!(qid, hq.id);
    // messages while `late` is away
    for i in 1..=8u64 {
        z.publish(Some("r"), "room", json!(i)).await.unwrap();
    }
    let (lid, lrec) = connect_n(&late, 2, Duration::from_secs(15)).await;
    assert!(!lrec, "away 4 s with a 2 s window: not recovered");
    assert_ne!(lid, hl.id, "a new socket id");
    z.publish(Some("r"), "room", json!(100)).await.unwrap();
    z.publish(None, "all", json!(101)).await.unwrap();
    late.wait_event_where("all", T, |d| d == &json!(101))
        .await
        .unwrap();
    let got: Vec<u64> = numbered(&late).iter().map(|g| g.0).collect();
    assert_eq!(
        got,
        vec![0, 101],
        "the clean session is in no room and gets nothing replayed"
    );
    quick
        .wait_event_where("all", T, |d| d == &json!(101))
        .await
        .unwrap();
    let q: Vec<u64> = numbered(&quick).iter().map(|g| g.0).collect();
    assert_eq!(q, vec![0, 1, 2, 3, 4, 5, 6, 7, 8, 100, 101]);
}

/// (e) Forged or foreign claims get a clean session and never another session's data: an
/// unknown pid, another user's pid, an offset older than the session, a future offset, a
/// malformed one. The owner can still recover afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_or_foreign_claims_get_a_clean_session() {
    let Some(s) = setup(2, &[("RECOVERY_WINDOW", "30s")]).await else {
        return;
    };
    let (alice, ha) = s.client_on(0, 0, opts("alice")).await;
    let (z, _) = s.client_on(1, 0, opts("carol")).await;
    alice.join("r").await.unwrap();
    // numbers 2 and 6 are private messages, 3 a user message (see `send`)
    send(&z, 2, &ha.id, "alice").await; // alice has an offset now
    alice
        .wait_event_where("priv", T, |d| d == &json!(2))
        .await
        .unwrap();
    let st = alice.state().await.unwrap();
    let alice_pid = st.pid.clone().unwrap();
    let alice_offset = st.last_offset.clone().expect("an offset");

    // mallory presents alice's pid and offset with her own token; then others
    let cases: Vec<(&str, Value, Value)> = vec![
        ("another user's pid", json!(alice_pid), json!(alice_offset)),
        ("an unknown pid", json!("A".repeat(32)), json!(alice_offset)),
        ("a non-string pid", json!({"$ne": ""}), json!(alice_offset)),
    ];
    for (k, (what, pid, offset)) in cases.into_iter().enumerate() {
        let (m, hm) = s.client_on(0, 1 + k, opts("mallory")).await;
        m.forge_session(Some(pid), Some(offset)).await.unwrap();
        m.drop_transport().await.unwrap();
        let (mid, mrec) = connect_n(&m, 2, T).await;
        assert!(!mrec, "{what}: not recovered");
        assert_ne!(mid, ha.id, "{what}: never alice's id");
        assert_ne!(mid, hm.id, "{what}: a new id");
        // alice's traffic does not reach mallory
        send(&z, 3, &ha.id, "alice").await;
        send(&z, 6, &ha.id, "alice").await;
        z.publish(None, "all", json!(1000 + k as u64))
            .await
            .unwrap();
        m.wait_event_where("all", T, |d| d == &json!(1000 + k as u64))
            .await
            .unwrap();
        let got: Vec<u64> = numbered(&m).iter().map(|g| g.0).collect();
        assert!(
            got.iter().all(|n| *n >= 1000),
            "{what}: mallory got only broadcasts: {got:?}"
        );
    }

    // alice's own pid with bad offsets: clean sessions
    let bad_offsets = [
        ("an offset older than the session", json!("0-1")),
        ("a future offset", json!("99999999999999-0")),
        ("a malformed offset", json!("1-0; DEL x")),
    ];
    for (k, (what, offset)) in (10..).zip(bad_offsets) {
        let (c, hc) = s.client_on(0, k, opts("erin")).await;
        c.join("r").await.unwrap();
        let pid = c.state().await.unwrap().pid.unwrap();
        c.forge_session(Some(json!(pid)), Some(offset))
            .await
            .unwrap();
        c.drop_transport().await.unwrap();
        let (cid, crec) = connect_n(&c, 2, T).await;
        assert!(!crec, "{what}: not recovered");
        assert_ne!(cid, hc.id, "{what}: a new id");
    }

    // alice still recovers her session, with what she missed
    alice.drop_transport().await.unwrap();
    let (aid, arec) = connect_n(&alice, 2, T).await;
    assert!(arec, "the owner still recovers");
    assert_eq!(aid, ha.id);
    alice
        .wait_until(T, "three private 6", |log| {
            let sixes = log
                .iter()
                .filter(|r| r.event_name() == Some("priv") && r.data() == &json!(6))
                .count();
            (sixes >= 3).then_some(())
        })
        .await
        .unwrap();
    let got: Vec<u64> = numbered(&alice).iter().map(|g| g.0).collect();
    assert_eq!(
        got.iter()
            .filter(|n| **n < 1000)
            .copied()
            .collect::<Vec<_>>(),
        vec![2, 3, 6, 3, 6, 3, 6],
        "alice: her private messages, each once"
    );
}

/// The (sender tag, number, offset) of the messages of two concurrent senders a client got,
/// in arrival order.
fn tagged(c: &Client) -> Vec<(String, u64, String)> {
    c.log()
        .into_iter()
        .filter_map(|r| match r.what {
            Incoming::Event { name, args } if name == "room" || name == "all" => {
                let d = args.first()?;
                Some((
                    d["t"].as_str()?.to_string(),
                    d["n"].as_u64()?,
                    args.get(1)?.as_str()?.to_string(),
                ))
            }
            _ => None,
        })
        .collect()
}

/// Two senders on two other nodes publish concurrently while the client's node drains: the
/// recovered client gets every message once, and in the same order as a client that never
/// left (the log's order, the same on every node).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_senders_on_two_nodes_keep_one_order_across_a_recovery() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let Some(s) = setup(3, &[("RECOVERY_WINDOW", "30s"), ("SHUTDOWN_GRACE", "5s")]).await else {
        return;
    };
    let (x, _) = s.client_on(0, 0, opts("alice")).await;
    let (y, _) = s.client_on(1, 0, opts("bob")).await;
    let (p1, _) = s.client_on(1, 1, opts("p1")).await;
    let (p2, _) = s.client_on(2, 0, opts("p2")).await;
    x.join("r").await.unwrap();
    y.join("r").await.unwrap();
    let stop = AtomicBool::new(false);
    let control = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        s.cluster.signal_node(0, libc::SIGTERM).unwrap();
        let (_, recovered) = connect_n(&x, 2, T).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Ordering::Relaxed);
        recovered
    };
    let (n1, n2, recovered) = tokio::join!(
        send_until("a", &p1, &stop),
        send_until("b", &p2, &stop),
        control
    );
    assert!(recovered, "x recovered");
    // a marker from each sender, after which everything has arrived everywhere
    for p in [&p1, &p2] {
        p.publish(None, "done", json!(null)).await.unwrap();
    }
    for c in [&x, &y] {
        c.wait_until(T, "both markers", |log| {
            (log.iter()
                .filter(|r| r.event_name() == Some("done"))
                .count()
                >= 2)
                .then_some(())
        })
        .await
        .unwrap();
    }
    let xs = tagged(&x);
    let ys = tagged(&y);
    for (tag, total) in [("a", n1), ("b", n2)] {
        let got: Vec<u64> = xs.iter().filter(|m| m.0 == tag).map(|m| m.1).collect();
        let lost = total as usize - got.iter().collect::<std::collections::HashSet<_>>().len();
        println!(
            "MEASURE concurrent: sender {tag} sent {total}, x received {} ({lost} lost)",
            got.len()
        );
        assert_eq!(
            got,
            (0..total).collect::<Vec<_>>(),
            "x: sender {tag}'s messages once, in order"
        );
    }
    let mut last = (0, 0);
    for m in &xs {
        let id = stream_id(&m.2);
        assert!(id > last, "x: offsets increase");
        last = id;
    }
    assert_eq!(
        xs, ys,
        "x (recovered) and y (never left) saw one order, with the same offsets"
    );
}

/// Publishes `{t: tag, n}` for n = 0, 1, ... (to room `r` and to everyone, alternately), each
/// acknowledged before the next, until `stop`; returns how many.
async fn send_until(tag: &str, p: &Client, stop: &std::sync::atomic::AtomicBool) -> u64 {
    let mut n = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let room = n.is_multiple_of(2).then_some("r");
        let ev = if room.is_some() { "room" } else { "all" };
        p.publish(room, ev, json!({"t": tag, "n": n}))
            .await
            .unwrap();
        n += 1;
    }
    n
}

/// A recovered socket (its socket id is not its engine.io id) drains like any other: the
/// paced close finds its transport, and the client recovers once more on the third node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovered_client_recovers_again_after_a_second_drain() {
    let Some(s) = setup(3, &[("RECOVERY_WINDOW", "30s"), ("SHUTDOWN_GRACE", "5s")]).await else {
        return;
    };
    let (x, hx) = s.client_on(0, 0, opts("alice")).await;
    let src = s.cluster.source_address_for(0, 0);
    let second = s.cluster.ip_hash_node(&src, &[0]).unwrap();
    let third = (0..3).find(|i| *i != 0 && *i != second).unwrap();
    let (z, _) = s.client_on(third, 0, opts("carol")).await;
    x.join("r").await.unwrap();
    let mut n = 0u64;
    for (k, node) in [0, second].into_iter().enumerate() {
        for _ in 0..8 {
            send(&z, n, &hx.id, "alice").await;
            n += 1;
        }
        s.cluster.signal_node(node, libc::SIGTERM).unwrap();
        // messages while x moves
        for _ in 0..8 {
            send(&z, n, &hx.id, "alice").await;
            n += 1;
        }
        let (id, recovered) = connect_n(&x, k + 2, T).await;
        assert!(recovered, "move {}: recovered", k + 1);
        assert_eq!(id, hx.id, "move {}: the same id", k + 1);
        s.cluster
            .node_proc(node)
            .wait_exit(Duration::from_secs(10))
            .await
            .unwrap();
        let closed = s
            .cluster
            .node_proc(node)
            .log_tail(400)
            .lines()
            .find(|l| l.contains("transports closed"))
            .map(str::to_string)
            .unwrap_or_default();
        assert!(
            closed.contains("closed=1"),
            "node {node}: the paced close found x's transport: {closed}"
        );
    }
    let h = x.hello_n(3, T).await.unwrap();
    assert_eq!(h.node, s.cluster.node(third).name);
    send(&z, n, &hx.id, "alice").await;
    n += 1;
    x.wait_event_where(KINDS[((n - 1) % 4) as usize], T, |d| d == &json!(n - 1))
        .await
        .unwrap();
    check_exact(&x, n, "two drains");
}

/// A Redis that stalls for longer than a command's timeout (1 s) but then runs what it was sent
/// (`CLIENT PAUSE 1800 WRITE`: the log's APPEND scripts wait): the messages published meanwhile
/// reach every client once, in order: an APPEND that timed out may still run, and delivering it
/// on the sender's node as well (without an offset) gave that node's clients a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_duplicates_nothing() {
    let Some(s) = setup(2, &[("RECOVERY_WINDOW", "30s")]).await else {
        return;
    };
    let (x, hx) = s.client_on(0, 0, opts("alice")).await;
    let (z, _) = s.client_on(0, 1, opts("carol")).await;
    x.join("r").await.unwrap();
    let mut n = 0u64;
    while n < 8 {
        send(&z, n, &hx.id, "alice").await;
        n += 1;
    }
    let out = std::process::Command::new("redis-cli")
        .args([
            "-u",
            &s.cluster.redis_url(),
            "CLIENT",
            "PAUSE",
            "1800",
            "WRITE",
        ])
        .output()
        .expect("redis-cli");
    assert!(out.status.success(), "CLIENT PAUSE: {out:?}");
    // Published during the stall: each ack waits for the APPEND's timeout.
    for _ in 0..4 {
        send(&z, n, &hx.id, "alice").await;
        n += 1;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for _ in 0..8 {
        send(&z, n, &hx.id, "alice").await;
        n += 1;
    }
    let last = n - 1;
    x.wait_until(T, "the last message", |log| {
        log.iter()
            .find(|r| {
                r.event_name().is_some_and(|e| KINDS.contains(&e))
                    && matches!(&r.what, Incoming::Event { args, .. } if args.first().and_then(Value::as_u64) == Some(last))
            })
            .map(|_| ())
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Redis ran the stalled appends once it resumed: every message once, in order, with offsets.
    check_exact(&x, n, "stalled Redis, x on the sender's node");
}
