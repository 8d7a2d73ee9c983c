//! Redis without a single point of failure (issue 13), with real processes on loopback: a
//! Sentinel group (`redis-server` primary, 2 replicas, 3 `redis-sentinel`, all with passwords),
//! 3 `realtime-server` nodes given `REDIS_URL=redis-sentinel://...`, nginx with `ip_hash`, and
//! the official socket.io-client.
//!
//! The primary is `kill -9`ed while a client on node 1 publishes to a room every 20 ms; clients
//! on nodes 2 and 3 (cross-node, through Redis) and on node 1 (local) are in that room. The test
//! checks that Sentinel promotes a replica, that every node reconnects to the new primary and
//! resubscribes (its channels are on the new primary, `/readyz` is 200 without `degraded`,
//! `realtime_redis_deaf` is 0 throughout), that cross-node delivery resumes, and that nothing is
//! duplicated or reordered. It prints what it measures:
//!
//! `MEASURE sentinel failover: ...` the kill-to-promotion time, per receiver the gap from the
//! kill until the first message published after the kill arrived, and the messages lost.
//!
//! The Sentinels' `down-after-milliseconds` is 1500: the goal is cross-node delivery within 5 s
//! of the primary's death, asserted per receiver. Then the new primary is killed too, and the
//! last replica takes over (two failovers in a row, each measured).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use realtime_e2e::data_plane::{Cluster, ClusterConfig, ServerCommand, metric_value};
use realtime_e2e::failover::{Failover, check_failovers, heard_after, publish_steadily, receipt};
use realtime_e2e::redis_ha::{self, Resp, SentinelConfig, SentinelGroup, command};
use realtime_e2e::require;
use realtime_e2e::sio::{self, Client, ConnectOptions, Driver, Incoming, now_ms};
use serde_json::json;

const T: Duration = Duration::from_secs(10);
/// How long cross-node delivery may take to come back after the primary's death.
const GOAL: Duration = Duration::from_secs(5);
/// The publisher's period.
const EVERY: Duration = Duration::from_millis(20);
const DATA_PW: &str = "e2e-redis-data-password";
const SENTINEL_PW: &str = "e2e-redis-sentinel-password";

struct Setup {
    // Dropped in this order: clients' driver, nodes and nginx, then Redis.
    driver: Driver,
    cluster: Cluster,
    group: SentinelGroup,
}

async fn setup(nodes: usize) -> Option<Setup> {
    let (redis_bin, sentinel_bin) = redis_ha::require_parts()?;
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
    let group = SentinelGroup::start(
        SentinelConfig {
            password: Some(DATA_PW.into()),
            sentinel_password: Some(SENTINEL_PW.into()),
            ..SentinelConfig::default()
        },
        redis_bin,
        sentinel_bin,
    )
    .await
    .expect("starting the Sentinel group");
    let cfg = ClusterConfig::new(ServerCommand::realtime_server(bin), nodes)
        .external_redis(&group.url())
        .env("REDIS_PASSWORD", DATA_PW)
        .env("REDIS_SENTINEL_PASSWORD", SENTINEL_PW);
    let cluster = Cluster::for_test(cfg).await?;
    let driver = Driver::start(&paths)
        .await
        .expect("starting the socket.io-client driver");
    Some(Setup {
        driver,
        cluster,
        group,
    })
}

impl Setup {
    /// A client through nginx that lands on node `node` (checked through `hello`).
    async fn client_on(&self, node: usize) -> Client {
        let src = self.cluster.source_address_for(node, 0);
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
        c
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

    /// The adapter channels subscribed on the data node on `port`: every node's probe channel
    /// (`realtime-probe#<node id>#`) is there once that node has resubscribed on it.
    async fn probe_channels_on(&self, port: u16) -> usize {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        match command(
            addr,
            Some(DATA_PW),
            &["PUBSUB", "CHANNELS", "realtime-probe#*"],
        )
        .await
        {
            Ok(Resp::Array(Some(v))) => v.len(),
            _ => 0,
        }
    }
}

/// Kills the current primary and watches the recovery: returns the kill time ([`now_ms`]), the
/// new primary's port and how long its promotion took. Fails when a node turns deaf or leaves
/// rotation, when Sentinel promotes nobody, or when a receiver hears nothing published after the
/// kill within 30 s.
async fn kill_primary_and_watch(
    s: &Setup,
    expected: u16,
    receivers: &[&Client],
    sent: &RefCell<BTreeMap<u64, f64>>,
) -> (f64, u16, Duration) {
    let old = s.group.primary().await.expect("the primary");
    assert_eq!(s.group.role(old).await.unwrap(), "master");
    assert_eq!(
        old,
        expected,
        "the Sentinels name {old} as the primary, the nodes were verified on {expected}: a \
         failover nobody asked for{}",
        s.group.logs(40)
    );
    s.group.signal_server(old, libc::SIGKILL).unwrap();
    let kill_ms = now_ms();
    let killed = Instant::now();
    println!("killed the primary (port {old}) with SIGKILL");

    let (new, promoted) = s
        .group
        .wait_new_primary(old, Duration::from_secs(30))
        .await
        .unwrap();
    let promotion = promoted - killed;
    println!("Sentinel promoted the replica on port {new} after {promotion:?}");

    // Until every receiver hears a message published after the kill: no node may turn deaf
    // or leave rotation meanwhile (an outage degrades, it does not unready).
    let mut degraded_seen = vec![false; s.cluster.nodes().len()];
    loop {
        for (i, (status, body, deaf)) in s.health().await.into_iter().enumerate() {
            let name = &s.cluster.node(i).name;
            assert_eq!(status, Some(200), "{name} left rotation: {body}");
            assert_eq!(deaf, Some(0.0), "{name} turned deaf during the failover");
            degraded_seen[i] |= body.contains("degraded");
        }
        if receivers.iter().all(|c| heard_after(c, sent, kill_ms)) {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "cross-node delivery did not resume within 30 s of the kill{}",
            s.cluster.logs(30)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "nodes that reported degraded during the failover: {:?}",
        degraded_seen
            .iter()
            .enumerate()
            .filter(|(_, d)| **d)
            .map(|(i, _)| s.cluster.node(i).name.clone())
            .collect::<Vec<_>>()
    );
    (kill_ms, new, promotion)
}

/// Waits until every node is ready without `degraded`, not deaf, and subscribed on the primary
/// on `port`, having reconnected at least `reconnects` times.
async fn wait_all_healthy_on(s: &Setup, port: u16, reconnects: f64) {
    let n = s.cluster.nodes().len();
    let start = Instant::now();
    loop {
        let mut ok = s.probe_channels_on(port).await == n;
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
                "every node healthy and subscribed on port {port} {:?} later",
                start.elapsed()
            );
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "not every node is healthy on the primary {port} after 20 s: {:?} channels: {}{}",
            s.health().await,
            s.probe_channels_on(port).await,
            s.cluster.logs(30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_of_a_killed_primary_keeps_delivery_across_nodes() {
    let Some(s) = setup(3).await else {
        return;
    };
    let first = s.group.primary().await.unwrap();
    wait_all_healthy_on(&s, first, 0.0).await;
    let a = s.client_on(0).await; // publisher, node 1
    let local = s.client_on(0).await; // a receiver on the publisher's node
    let b = s.client_on(1).await;
    let c = s.client_on(2).await;
    for x in [&a, &local, &b, &c] {
        x.join("r").await.unwrap();
    }

    let sent = RefCell::new(BTreeMap::new());
    let stop = RefCell::new(false);
    let mut failovers = Vec::new();
    let watch = async {
        // Steady state first: everything published reaches every receiver.
        b.wait_event("seq", T).await.unwrap();
        c.wait_event("seq", T).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut reconnects = 0.0;
        let mut primary = first;
        for round in 1..=2 {
            let (kill_ms, new, promotion) =
                kill_primary_and_watch(&s, primary, &[&b, &c], &sent).await;
            primary = new;
            reconnects += 1.0;
            wait_all_healthy_on(&s, new, reconnects).await;
            // A few seconds of steady delivery on the new primary.
            tokio::time::sleep(Duration::from_secs(2)).await;
            failovers.push((round, kill_ms, new, promotion));
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
        .map(|(_, kill_ms, new, promotion)| Failover {
            kill_ms: *kill_ms,
            what: format!("primary killed, replica on {new} promoted after {promotion:?}"),
        })
        .collect();
    check_failovers(
        "sentinel",
        &sent,
        &receipts,
        &failovers,
        EVERY,
        GOAL,
        || format!("{}{}", s.cluster.logs(60), s.group.logs(40)),
    );
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
    // Presence goes through Redis too (a request to every node): complete again.
    let members = b.presence("r").await.unwrap();
    assert_eq!(
        members.len(),
        4,
        "presence after the failovers: {members:?}"
    );
}
