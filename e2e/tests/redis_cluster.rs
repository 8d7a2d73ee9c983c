//! Redis without a single point of failure (issue 13), Redis Cluster, with real processes on
//! loopback: 6 `redis-server` in cluster mode (3 masters, one replica each, `requirepass`,
//! `cluster-node-timeout` 1000 ms) joined by `redis-cli --cluster create`, 3 `realtime-server`
//! nodes given `REDIS_URL=redis-cluster://...` (every cluster node a seed), nginx with
//! `ip_hash`, and the official socket.io-client.
//!
//! The nodes use sharded pub/sub: the test checks that every node's subscription to the
//! adapter's broadcast channel (`realtime-request#/#`, through which every room publish,
//! broadcast and private message of namespace `/` goes) is a sharded one on the master of
//! its slot and that no node holds a plain subscription anywhere; then that a room publish, a
//! broadcast, a private message (`send {to}`) and presence (a request to every node, counted
//! with `PUBSUB SHARDNUMSUB`) work across nodes.
//!
//! Then the master serving the broadcast channel's slot is `kill -9`ed while a client on node
//! 1 publishes to a room every 20 ms; clients on nodes 2 and 3 (cross-node) and on node 1
//! (local) are in that room. The test checks that its replica takes over the slot, that every
//! node resubscribes on the new master (`SHARDNUMSUB` there counts all 3, `/readyz` is 200,
//! `realtime_redis_deaf` is 0 throughout, the probes succeed again), that cross-node delivery
//! resumes within 5 s of the kill, and that nothing is duplicated or reordered. The killed
//! node is restarted (it rejoins as the new master's replica) and the new master is killed in
//! turn: two failovers, each measured. It prints:
//!
//! `MEASURE cluster failover: ...` the kill-to-takeover time, per receiver the gap from the
//! kill until the first message published after the kill arrived, and the messages lost.
//!
//! Two more tests change the broadcast channel's slot owner while no process dies, under the
//! same steady publisher: a one-slot resharding to another master, and a `CLUSTER FAILOVER` on
//! the master's replica (a maintenance switchover). Redis drops the sharded subscriptions on the
//! old owner without closing any connection, and every node must find the new owner and
//! resubscribe there by itself (`MEASURE cluster Reshard: ...`, `MEASURE cluster
//! ManualFailover: ...`). A fourth makes the broadcast channel's master refuse SSUBSCRIBE (an
//! ACL mistake on one shard): every node turns deaf, leaves rotation after `DEAF_GRACE`, and
//! comes back once the master accepts again.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use realtime_e2e::data_plane::{Cluster, ClusterConfig, ServerCommand, metric_value};
use realtime_e2e::failover::{
    Failover, check_failovers, heard_after, outcome, publish_steadily, receipt,
};
use realtime_e2e::redis_cluster::{self, RedisCluster, RedisClusterConfig};
use realtime_e2e::require;
use realtime_e2e::sio::{self, Client, ConnectOptions, Driver, Incoming, now_ms};
use serde_json::json;

const T: Duration = Duration::from_secs(10);
/// How long cross-node delivery may take to come back after the master's death.
const GOAL: Duration = Duration::from_secs(5);
/// How long cross-node delivery may take to come back after a slot moved (see the test).
const MOVE_GOAL: Duration = Duration::from_secs(3);
/// The publisher's period.
const EVERY: Duration = Duration::from_millis(20);
const PW: &str = "e2e-redis-cluster-password";
/// The adapter's broadcast channel of namespace `/` (socketioxide-redis: `{prefix}-request#{ns}#`).
const BROADCAST_CHAN: &str = "realtime-request#/#";

struct Setup {
    // Dropped in this order: clients' driver, nodes and nginx, then Redis.
    driver: Driver,
    cluster: Cluster,
    redis: RedisCluster,
}

async fn setup(nodes: usize) -> Option<Setup> {
    setup_with(nodes, &[]).await
}

async fn setup_with(nodes: usize, env: &[(&str, &str)]) -> Option<Setup> {
    let (redis_bin, cli_bin) = redis_cluster::require_parts()?;
    let bin = require::require(
        "the realtime-server binary",
        "run `cargo build -p realtime-server` (make test builds every binary first)",
        require::workspace_bin("realtime-server"),
    )?;
    let paths = require::require(
        "node and socket.io-client",
        sio::DRIVER_HOW_TO,
        sio::find_driver(),
    )?;
    let redis = RedisCluster::start(
        RedisClusterConfig {
            password: Some(PW.into()),
            ..RedisClusterConfig::default()
        },
        redis_bin,
        cli_bin,
    )
    .await
    .expect("starting the Redis Cluster");
    let cfg = ClusterConfig::new(ServerCommand::realtime_server(bin), nodes)
        .external_redis(&redis.url())
        .env("REDIS_PASSWORD", PW);
    let cfg = env.iter().fold(cfg, |cfg, (k, v)| cfg.env(k, v));
    let cluster = Cluster::for_test(cfg).await?;
    let driver = Driver::start(&paths)
        .await
        .expect("starting the socket.io-client driver");
    Some(Setup {
        driver,
        cluster,
        redis,
    })
}

impl Setup {
    /// A client through nginx that lands on node `node` (checked through `hello`), with its
    /// socket id.
    async fn client_on(&self, node: usize, k: usize) -> (Client, String) {
        let src = self.cluster.source_address_for(node, k);
        let (c, hello) = self
            .driver
            .connect_hello(
                &self.cluster.url(),
                ConnectOptions::default().local_address(src.clone()),
                T,
            )
            .await
            .unwrap_or_else(|e| panic!("client from {src} to node {node}: {e:#}"));
        assert_eq!(
            hello.node,
            self.cluster.node(node).name,
            "ip_hash from {src}"
        );
        c.wait_connect(T).await.unwrap();
        (c, hello.id)
    }

    /// Every node's health, from its admin port: `(readyz status, body, deaf)`.
    async fn health(&self) -> Vec<(Option<u16>, String, Option<f64>)> {
        let mut v = Vec::new();
        for i in 0..self.cluster.nodes().len() {
            let r = self.cluster.probe_get(i, "/readyz").await.ok();
            let deaf = match self.cluster.metrics(i).await {
                Ok(m) => metric_value(&m, "realtime_redis_deaf", &[]),
                Err(_) => None,
            };
            v.push((
                r.as_ref().map(|r| r.status),
                r.map(|r| r.body).unwrap_or_default(),
                deaf,
            ));
        }
        v
    }

    /// The master serving the broadcast channel's slot.
    async fn broadcast_master(&self) -> (u16, u16) {
        let slot = self.redis.keyslot(BROADCAST_CHAN).await.unwrap();
        (slot, self.redis.master_of(slot).await.unwrap())
    }

    /// Sharded subscribers of the broadcast channel on `port`, and plain subscribers of it on
    /// every running node (there must be none: plain pub/sub is not used on a cluster).
    async fn subscribers(&self, port: u16) -> (u64, u64) {
        let sharded = self
            .redis
            .shard_subscribers(port, BROADCAST_CHAN)
            .await
            .unwrap_or(0);
        let mut plain = 0;
        for p in self.redis.running_ports() {
            plain += self
                .redis
                .plain_subscribers(p, BROADCAST_CHAN)
                .await
                .unwrap_or(0);
        }
        (sharded, plain)
    }
}

/// Waits until every node is ready without `degraded`, not deaf, subscribed with its probes
/// heard, has reconnected at least `reconnects` times, and the master on `port` counts every
/// node as a sharded subscriber of the broadcast channel (and no node is a plain subscriber).
async fn wait_all_healthy_on(s: &Setup, port: u16, reconnects: f64) {
    let n = s.cluster.nodes().len();
    let start = Instant::now();
    loop {
        let (sharded, plain) = s.subscribers(port).await;
        assert_eq!(plain, 0, "a node holds a plain (unsharded) subscription");
        let mut ok = sharded == n as u64;
        for i in 0..n {
            ok &= s.cluster.is_ready(i).await;
            let m = s.cluster.metrics(i).await.unwrap_or_default();
            ok &= metric_value(&m, "realtime_redis_deaf", &[]) == Some(0.0)
                && metric_value(&m, "realtime_redis_connected", &[]) == Some(1.0)
                && metric_value(&m, "realtime_redis_subscribed", &[]) == Some(1.0)
                && metric_value(&m, "realtime_redis_reconnects_total", &[])
                    .is_some_and(|r| r >= reconnects);
        }
        if ok {
            println!(
                "every node healthy and sharded-subscribed on the master {port} {:?} later",
                start.elapsed()
            );
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "not every node is healthy on the master {port} after 20 s: {:?} sharded subscribers: {sharded}{}",
            s.health().await,
            s.cluster.logs(30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The clients: `a` and `local` on node 1, `b` on node 2, `c` on node 3, all in room `r`.
struct Peers<'a> {
    a: &'a Client,
    local: &'a Client,
    b: &'a Client,
    b_id: &'a str,
    c: &'a Client,
    c_id: &'a str,
}

/// Cross-node delivery of a room publish, a broadcast and a private message, each exactly once
/// to each receiver (publishes reach the sender too); presence counts every member (a request
/// answered by every node, their number from `PUBSUB SHARDNUMSUB`).
async fn check_cross_node(p: &Peers<'_>, tag: &str) {
    let all = [p.a, p.local, p.b, p.c];
    let room_ev = format!("room-{tag}");
    p.b.publish(Some("r"), &room_ev, json!(tag)).await.unwrap();
    let bcast_ev = format!("bcast-{tag}");
    p.c.publish(None, &bcast_ev, json!(tag)).await.unwrap();
    let dm_ev = format!("dm-{tag}");
    p.a.send_to(p.c_id, &dm_ev, json!("to c")).await.unwrap();
    p.c.send_to(p.b_id, &dm_ev, json!("to b")).await.unwrap();
    assert_eq!(p.c.wait_event(&dm_ev, T).await.unwrap().data(), "to c");
    assert_eq!(p.b.wait_event(&dm_ev, T).await.unwrap().data(), "to b");
    for x in all {
        x.wait_event(&room_ev, T).await.unwrap();
        x.wait_event(&bcast_ev, T).await.unwrap();
    }
    // A marker after everything: what was not delivered by now is not coming.
    let end_ev = format!("end-{tag}");
    p.a.publish(None, &end_ev, json!(1)).await.unwrap();
    for x in all {
        x.wait_event(&end_ev, T).await.unwrap();
    }
    for x in all {
        let count = |ev: &str| x.events(ev).len();
        let want_dm = usize::from(std::ptr::eq(x, p.b) || std::ptr::eq(x, p.c));
        assert_eq!(count(&room_ev), 1, "{}: {room_ev}", x.name());
        assert_eq!(count(&bcast_ev), 1, "{}: {bcast_ev}", x.name());
        assert_eq!(count(&dm_ev), want_dm, "{}: {dm_ev}", x.name());
    }
    let members = p.b.presence("r").await.unwrap();
    assert_eq!(members.len(), 4, "presence ({tag}): {members:?}");
    println!("cross-node room publish, broadcast, private message and presence: ok ({tag})");
}

/// Kills the master serving the broadcast channel's slot and watches the recovery: returns the
/// kill time ([`now_ms`]), the old and new masters' ports and how long the takeover took (as
/// polled, every ~20 ms plus the health checks' time). Fails when a node turns deaf or leaves
/// rotation at any time from the kill on, when no replica takes over, or when a receiver hears
/// nothing published after the kill within 30 s.
async fn kill_master_and_watch(
    s: &Setup,
    receivers: &[&Client],
    sent: &RefCell<BTreeMap<u64, f64>>,
) -> (f64, u16, u16, Duration) {
    let (slot, old) = s.broadcast_master().await;
    // Timed from just before the signal: a message sent while the process dies counts for
    // this failover, not the previous one.
    let kill_ms = now_ms();
    let killed = Instant::now();
    s.redis.kill_node(old).await.unwrap();
    println!("killed the master of slot {slot} ({BROADCAST_CHAN}) on port {old} with SIGKILL");

    // From the kill until a replica serves the slot and every receiver hears a message
    // published after the kill: no node may turn deaf or leave rotation meanwhile (an outage
    // degrades, it does not unready).
    let mut degraded_seen = vec![false; s.cluster.nodes().len()];
    let mut took_over = None;
    loop {
        for (i, (status, body, deaf)) in s.health().await.into_iter().enumerate() {
            let name = &s.cluster.node(i).name;
            assert_eq!(status, Some(200), "{name} left rotation: {body}");
            assert_eq!(deaf, Some(0.0), "{name} turned deaf during the failover");
            degraded_seen[i] |= body.contains("degraded");
        }
        if took_over.is_none()
            && let Ok(p) = s.redis.master_of(slot).await
            && p != old
        {
            let after = killed.elapsed();
            println!("the replica on port {p} serves slot {slot} {after:?} after the kill");
            took_over = Some((p, after));
        }
        if took_over.is_some() && receivers.iter().all(|c| heard_after(c, sent, kill_ms)) {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "no takeover ({took_over:?}) or cross-node delivery did not resume within 30 s of \
             the kill{}{}",
            s.redis.logs(20),
            s.cluster.logs(30)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (new, takeover) = took_over.expect("the loop ends after the takeover");
    println!(
        "nodes that reported degraded during the failover: {:?}",
        degraded_seen
            .iter()
            .enumerate()
            .filter(|(_, d)| **d)
            .map(|(i, _)| s.cluster.node(i).name.clone())
            .collect::<Vec<_>>()
    );
    (kill_ms, old, new, takeover)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_failover_of_a_killed_master_keeps_sharded_delivery_across_nodes() {
    let Some(mut s) = setup(3).await else {
        return;
    };
    let (slot, first) = s.broadcast_master().await;
    println!(
        "{BROADCAST_CHAN} is in slot {slot}, served by the master on port {first} (cluster ports {:?})",
        s.redis.ports()
    );
    wait_all_healthy_on(&s, first, 0.0).await;
    let (a, _) = s.client_on(0, 0).await; // publisher, node 1
    let (local, _) = s.client_on(0, 1).await; // a receiver on the publisher's node
    let (b, b_id) = s.client_on(1, 0).await;
    let (c, c_id) = s.client_on(2, 0).await;
    for x in [&a, &local, &b, &c] {
        x.join("r").await.unwrap();
    }
    let peers = Peers {
        a: &a,
        local: &local,
        b: &b,
        b_id: &b_id,
        c: &c,
        c_id: &c_id,
    };
    check_cross_node(&peers, "before").await;

    let sent = RefCell::new(BTreeMap::new());
    let stop = RefCell::new(false);
    let mut failovers = Vec::new();
    let watch = async {
        // Steady state first: everything published reaches every receiver.
        b.wait_event("seq", T).await.unwrap();
        c.wait_event("seq", T).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        for round in 1..=2 {
            let (kill_ms, old, new, takeover) = kill_master_and_watch(&s, &[&b, &c], &sent).await;
            wait_all_healthy_on(&s, new, round as f64).await;
            // A few seconds of steady delivery on the new master.
            tokio::time::sleep(Duration::from_secs(2)).await;
            failovers.push((round, kill_ms, old, new, takeover));
            if round == 1 {
                // The killed master comes back as the new one's replica: the next kill has a
                // replica to promote.
                s.redis.restart_node(old).await.unwrap();
                println!(
                    "restarted port {old} {:.0} ms after the kill",
                    now_ms() - kill_ms
                );
                s.redis
                    .wait_whole(Duration::from_secs(30))
                    .await
                    .expect("the restarted node rejoins");
                assert_eq!(s.redis.role(old).await.unwrap(), "slave");
                println!("port {old} rejoined as a replica");
            }
        }
        *stop.borrow_mut() = true;
    };
    tokio::join!(publish_steadily(&a, "r", EVERY, &sent, &stop), watch);

    // A marker after the last publish: everything before it has arrived too.
    a.publish(Some("r"), "end", json!(1)).await.unwrap();
    for x in [&local, &b, &c] {
        x.wait_event("end", T).await.unwrap();
    }
    let sent = sent.into_inner();
    let receipts = [
        receipt(&local, "n1 (local)"),
        receipt(&b, "n2"),
        receipt(&c, "n3"),
    ];
    let failovers: Vec<Failover> = failovers
        .iter()
        .map(|(_, kill_ms, old, new, takeover)| Failover {
            kill_ms: *kill_ms,
            what: format!(
                "master {old} of {BROADCAST_CHAN}'s slot killed, replica {new} took over after \
                 {takeover:?}"
            ),
        })
        .collect();
    check_failovers("cluster", &sent, &receipts, &failovers, EVERY, GOAL, || {
        s.cluster.logs(60)
    });
    assert!(
        s.cluster.exited_nodes().is_empty(),
        "a node exited: {:?}",
        s.cluster.exited_nodes()
    );
    for x in [&a, &local, &b, &c] {
        let drops: Vec<_> = x
            .log()
            .into_iter()
            .filter(|r| matches!(r.what, Incoming::Disconnect { .. }))
            .collect();
        assert!(
            drops.is_empty(),
            "{} lost its connection: {drops:?}",
            x.name()
        );
    }
    // Everything works across nodes on the new masters.
    check_cross_node(&peers, "after").await;
}

/// How the broadcast channel's slot changes owner without a process dying.
#[derive(Clone, Copy, Debug)]
enum Change {
    /// A one-slot resharding to another master.
    Reshard,
    /// `CLUSTER FAILOVER` on the master's replica (a maintenance switchover).
    ManualFailover,
}

/// The slot of the broadcast channel changes owner while the publisher sends, and no
/// connection breaks: Redis drops the sharded subscriptions on the old owner (a `sunsubscribe`
/// push, or the old master turned replica), and every node must find the new owner and
/// resubscribe there by itself (fred re-reads the slot map on the MOVED reply its next command
/// gets; the probes send one within `PROBE_INTERVAL` even on a node that publishes nothing).
async fn slot_changes_owner(change: Change) {
    let Some(s) = setup(3).await else {
        return;
    };
    let (slot, first) = s.broadcast_master().await;
    wait_all_healthy_on(&s, first, 0.0).await;
    let (a, _) = s.client_on(0, 0).await;
    let (b, _) = s.client_on(1, 0).await;
    let (c, _) = s.client_on(2, 0).await;
    for x in [&a, &b, &c] {
        x.join("r").await.unwrap();
    }

    let sent = RefCell::new(BTreeMap::new());
    let stop = RefCell::new(false);
    let (mut began_ms, mut done_ms, mut target) = (0.0, 0.0, 0);
    let watch = async {
        b.wait_event("seq", T).await.unwrap();
        c.wait_event("seq", T).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        began_ms = now_ms();
        target = match change {
            Change::Reshard => {
                let to = s.redis.other_master(first).await.unwrap();
                s.redis.move_slot(slot, to).await.unwrap();
                to
            }
            Change::ManualFailover => s.redis.manual_failover(first).await.unwrap(),
        };
        done_ms = now_ms();
        println!(
            "{change:?}: slot {slot} ({BROADCAST_CHAN}) went from {first} to {target} in {:.0} ms",
            done_ms - began_ms
        );
        let start = Instant::now();
        let mut degraded_seen = vec![false; s.cluster.nodes().len()];
        loop {
            for (i, (status, body, deaf)) in s.health().await.into_iter().enumerate() {
                let name = &s.cluster.node(i).name;
                assert_eq!(status, Some(200), "{name} left rotation: {body}");
                assert_eq!(deaf, Some(0.0), "{name} turned deaf after the change");
                degraded_seen[i] |= body.contains("degraded");
            }
            if [&b, &c].iter().all(|x| heard_after(x, &sent, done_ms)) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "cross-node delivery did not resume within 20 s of the change{}",
                s.cluster.logs(30)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        println!("nodes that reported degraded after the change: {degraded_seen:?}");
        // Nothing to reconnect to: no connection to a master broke.
        wait_all_healthy_on(&s, target, 0.0).await;
        let (old_subscribers, _) = s.subscribers(first).await;
        assert_eq!(
            old_subscribers, 0,
            "a node is still subscribed on the old owner"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        *stop.borrow_mut() = true;
    };
    tokio::join!(publish_steadily(&a, "r", EVERY, &sent, &stop), watch);
    a.publish(Some("r"), "end", json!(1)).await.unwrap();
    for x in [&b, &c] {
        x.wait_event("end", T).await.unwrap();
    }
    let sent = sent.into_inner();
    for (x, name) in [(&b, "n2"), (&c, "n3")] {
        let r = receipt(x, name);
        // Losses count from the start of the change; the gap from its end (all nodes agree).
        let o = outcome(&r, &sent, done_ms, began_ms);
        println!(
            "MEASURE cluster {change:?}: {name}: cross-node delivery back {:.0} ms after the \
             change, {} messages lost ({} published every {EVERY:?} from its start)",
            o.gap_ms,
            o.lost,
            sent.values().filter(|t| **t >= began_ms).count()
        );
        assert_eq!(r.duplicates, 0, "{name} got duplicates");
        match change {
            Change::Reshard => {
                assert_eq!(r.out_of_order, 0, "{name} got messages out of order")
            }
            // During a switchover's split (the old master, now a replica, still serves the
            // slot's sharded pub/sub until every node has re-read the slot map), a message
            // published on the new master can overtake one published on the old. Only there.
            Change::ManualFailover => {
                let split = began_ms..done_ms + MOVE_GOAL.as_millis() as f64;
                let outside: Vec<u64> = r
                    .late
                    .iter()
                    .copied()
                    .filter(|k| sent.get(k).is_none_or(|t| !split.contains(t)))
                    .collect();
                println!(
                    "{name}: {} message(s) overtaken during the split",
                    r.late.len()
                );
                assert!(
                    outside.is_empty(),
                    "{name} got messages out of order outside the switchover's split: {outside:?}"
                );
            }
        }
        assert_eq!(
            o.lost_after_resume, 0,
            "{name}: messages lost after delivery resumed, sent at {:?} ms after the change",
            o.lost_after_resume_at
        );
        // A node that publishes nothing learns of the change from its next probe's MOVED reply
        // (within PROBE_INTERVAL, 2 s) and resubscribes at once on the slot-map re-read; a
        // node that only noticed its lost probe would resubscribe PROBE_TIMEOUT (3 s) after
        // it, later than this bound.
        assert!(
            o.gap_ms <= MOVE_GOAL.as_millis() as f64,
            "{name}: delivery came back {:.0} ms after the change, the goal is {MOVE_GOAL:?}",
            o.gap_ms
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_slot_takes_its_sharded_subscribers_along() {
    slot_changes_owner(Change::Reshard).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_failover_takes_its_sharded_subscribers_along() {
    slot_changes_owner(Change::ManualFailover).await;
}

/// Deafness on a cluster: the master serving the broadcast channel's slot refuses SSUBSCRIBE
/// (an ACL mistake on one shard) while the other masters accept it. Every node's subscriptions
/// there are dropped (`CLIENT KILL TYPE pubsub`), it reconnects, its SSUBSCRIBE is refused while
/// Redis answers its commands: after `DEAF_GRACE` (10 s) it is deaf and leaves rotation
/// (`/readyz` 503, `realtime_redis_deaf` 1). Once the master accepts SSUBSCRIBE again, every
/// node resubscribes, hears its probes on every slot and comes back, and delivery works across
/// nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_refusing_ssubscribe_makes_the_nodes_deaf_until_it_accepts() {
    let Some(s) = setup(2).await else {
        return;
    };
    let (_, master) = s.broadcast_master().await;
    wait_all_healthy_on(&s, master, 0.0).await;
    s.redis
        .run(master, &["ACL", "SETUSER", "default", "-ssubscribe"])
        .await
        .unwrap();
    let killed = s
        .redis
        .run(master, &["CLIENT", "KILL", "TYPE", "pubsub"])
        .await
        .unwrap();
    println!("ACL: master {master} refuses SSUBSCRIBE; killed its pub/sub clients: {killed:?}");
    let start = Instant::now();
    for i in 0..s.cluster.nodes().len() {
        let name = &s.cluster.node(i).name;
        loop {
            let r = s.cluster.probe_get(i, "/readyz").await.unwrap();
            if r.status == 503 && r.body.contains("deaf") {
                println!(
                    "{name} deaf and out of rotation {:?} after the kill: {}",
                    start.elapsed(),
                    r.body
                );
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(25),
                "{name} is not deaf 25 s after its SSUBSCRIBE was refused: {} {}{}",
                r.status,
                r.body,
                s.cluster.logs(30)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let m = s.cluster.metrics(i).await.unwrap();
        assert_eq!(
            metric_value(&m, "realtime_redis_deaf", &[]),
            Some(1.0),
            "{name}"
        );
        // Redis answers it: this is not an outage.
        assert_eq!(
            metric_value(&m, "realtime_redis_connected", &[]),
            Some(1.0),
            "{name}"
        );
    }
    // Deafness took at least DEAF_GRACE: no node left rotation at the first refusal.
    assert!(
        start.elapsed() >= Duration::from_secs(10),
        "deaf too early: {:?}",
        start.elapsed()
    );

    s.redis
        .run(master, &["ACL", "SETUSER", "default", "+ssubscribe"])
        .await
        .unwrap();
    let back = Instant::now();
    wait_all_healthy_on(&s, master, 0.0).await;
    println!(
        "every node back in rotation {:?} after the ACL was fixed",
        back.elapsed()
    );
    let (a, _) = s.client_on(0, 0).await;
    let (b, _) = s.client_on(1, 0).await;
    a.join("r").await.unwrap();
    b.publish(Some("r"), "after", json!(1)).await.unwrap();
    a.wait_event("after", T).await.unwrap();
}

/// Connection state recovery over a Redis Cluster: the log's script appends and publishes with
/// SPUBLISH in one slot (its keys and channel share the `{csr}` hash tag), and the nodes hear it
/// through their sharded subscriptions. A client whose node drains recovers on the other node
/// with every room message once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_works_over_a_redis_cluster() {
    let Some(s) = setup_with(2, &[("RECOVERY_WINDOW", "30s"), ("SHUTDOWN_GRACE", "5s")]).await
    else {
        return;
    };
    let (x, id) = s.client_on(0, 0).await;
    let (z, _) = s.client_on(1, 0).await;
    x.join("r").await.unwrap();
    let ev = "csr-cluster";
    for n in 0..10 {
        z.publish(Some("r"), ev, json!(n)).await.unwrap();
    }
    x.wait_events(ev, 10, T).await.unwrap();
    s.cluster.signal_node(0, libc::SIGTERM).unwrap();
    for n in 10..40 {
        z.publish(Some("r"), ev, json!(n)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    x.wait_events(ev, 40, Duration::from_secs(30))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got: Vec<u64> = x
        .events(ev)
        .iter()
        .filter_map(|r| r.data().as_u64())
        .collect();
    assert_eq!(
        got,
        (0..40).collect::<Vec<_>>(),
        "every message once, in order"
    );
    let st = x.state().await.unwrap();
    assert!(st.recovered, "socket.recovered: {st:?}");
    assert_eq!(st.id.as_deref(), Some(id.as_str()), "the same socket id");
    eprintln!(
        "recovery over a Redis Cluster: 40 of 40 room messages once, in order, across a drain"
    );
}
