//! The user-visible stories of the end-to-end suite, written once against [`Target`] (a running
//! RealtimeCluster) and driven through the official socket.io client ([`crate::sio`]):
//!
//! 1. `hello`: connecting through the cluster's endpoint, `hello` names the node;
//! 2. `room-broadcast`: a room broadcast crosses nodes;
//! 3. `private-message`: a private message reaches a socket on another node;
//! 4. `presence`: presence lists the members on all nodes;
//! 5. `scale`: `kubectl scale rtc` up and down: new nodes join the fan-out, clients of removed
//!    nodes reconnect;
//! 6. `rolling-restart`: clients reconnect and nothing is delivered twice to the same socket;
//! 7. `redis-deleted`: delivery resumes once Redis is back;
//! 8. `invalid-rejected`: an invalid RealtimeCluster is rejected with a readable message.
//!
//! One target implements [`Target`]: a real cluster reached through kubectl and its ingress
//! ([`crate::kind::KindTarget`]): the real node of this machine (`e2e/tests/real_node.rs`, in
//! `make test`) or a kind cluster (`make e2e-kind`). Scenarios make no assumption about which node a client
//! lands on: they connect clients until every node they need is covered, and they follow
//! reconnections through each client's latest `hello`.

pub mod kubectl;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde_json::{Value, json};

use crate::sio::{Client, ConnectOptions, Driver, Hello, Incoming, Transport};
use kubectl::{Applied, Kubectl};

/// Bound for a connection's `hello` and for an expected event.
pub const WAIT: Duration = Duration::from_secs(20);
/// Bound for [`cover`] to reach every node it needs through the ingress.
pub const COVER_TIMEOUT: Duration = Duration::from_secs(30);

/// A running RealtimeCluster that scenarios can connect to and act on.
#[allow(async_fn_in_trait)]
pub trait Target {
    /// One line saying what runs where (shown in the output).
    fn describe(&self) -> String;
    /// The URL clients connect to (the ingress).
    fn endpoint_url(&self) -> String;
    /// Options of the next client: affinity needs (cookie jar, source address) of this target.
    fn client_options(&self) -> ConnectOptions;
    /// kubectl aimed at the RealtimeCluster's namespace.
    fn kubectl(&self) -> &Kubectl;
    /// `metadata.name` of the RealtimeCluster under test.
    fn cluster_name(&self) -> &str;
    /// Names of the server nodes that are ready (the pod names `hello` announces), sorted.
    async fn nodes(&self) -> Result<Vec<String>>;
    /// `kubectl scale rtc` to `replicas`; returns once exactly that many nodes serve.
    async fn scale(&mut self, replicas: usize) -> Result<()>;
    /// A rolling restart of the server Deployment; returns once only new nodes serve.
    async fn rolling_restart(&mut self) -> Result<()>;
    /// Deletes the Redis pod (returns at once).
    async fn delete_redis(&mut self) -> Result<()>;
    /// Returns once Redis runs again and every server node is ready.
    async fn wait_redis_back(&mut self) -> Result<()>;

    /// `spec.replicas` of the RealtimeCluster.
    async fn replicas(&self) -> Result<usize> {
        let rtc = self
            .kubectl()
            .get_json(&["rtc", self.cluster_name()])
            .await?;
        rtc["spec"]["replicas"]
            .as_u64()
            .map(|n| n as usize)
            .ok_or_else(|| anyhow!("rtc/{} has no spec.replicas", self.cluster_name()))
    }
}

/// The scenarios, in the order of the issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Hello,
    RoomBroadcast,
    PrivateMessage,
    Presence,
    Scale,
    RollingRestart,
    RedisDeleted,
    InvalidRejected,
}

impl Scenario {
    pub const ALL: [Scenario; 8] = [
        Scenario::Hello,
        Scenario::RoomBroadcast,
        Scenario::PrivateMessage,
        Scenario::Presence,
        Scenario::Scale,
        Scenario::RollingRestart,
        Scenario::RedisDeleted,
        Scenario::InvalidRejected,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Hello => "hello",
            Scenario::RoomBroadcast => "room-broadcast",
            Scenario::PrivateMessage => "private-message",
            Scenario::Presence => "presence",
            Scenario::Scale => "scale",
            Scenario::RollingRestart => "rolling-restart",
            Scenario::RedisDeleted => "redis-deleted",
            Scenario::InvalidRejected => "invalid-rejected",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Scenario::Hello => "connect through the endpoint; hello names the node",
            Scenario::RoomBroadcast => "a room broadcast crosses nodes",
            Scenario::PrivateMessage => "a private message reaches a socket on another node",
            Scenario::Presence => "presence lists the members on all nodes",
            Scenario::Scale => {
                "scale up and down: new nodes join the fan-out, clients of removed nodes reconnect"
            }
            Scenario::RollingRestart => {
                "rolling restart: clients reconnect, nothing is delivered twice"
            }
            Scenario::RedisDeleted => "Redis deleted: delivery resumes once it is back",
            Scenario::InvalidRejected => {
                "an invalid RealtimeCluster is rejected with a readable message"
            }
        }
    }

    /// The scenario named `s` (its [`Scenario::name`]).
    pub fn parse(s: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|x| x.name() == s)
    }
}

/// Runs one scenario against `t`, printing its progress.
pub async fn run<T: Target>(s: Scenario, t: &mut T, d: &Driver) -> Result<()> {
    say(s, &format!("{} — against {}", s.title(), t.describe()));
    let start = Instant::now();
    let r = match s {
        Scenario::Hello => hello(t, d).await,
        Scenario::RoomBroadcast => room_broadcast(t, d).await,
        Scenario::PrivateMessage => private_message(t, d).await,
        Scenario::Presence => presence(t, d).await,
        Scenario::Scale => scale(t, d).await,
        Scenario::RollingRestart => rolling_restart(t, d).await,
        Scenario::RedisDeleted => redis_deleted(t, d).await,
        Scenario::InvalidRejected => invalid_rejected(t).await,
    };
    match &r {
        Ok(()) => say(s, &format!("passed in {:.1?}", start.elapsed())),
        Err(e) => say(s, &format!("FAILED after {:.1?}: {e:#}", start.elapsed())),
    }
    r.with_context(|| format!("scenario {}", s.name()))
}

/// Progress of a scenario, on stdout.
pub fn say(s: Scenario, msg: &str) {
    println!("[{}] {msg}", s.name());
}

/// A line that must reach the person running the tests even when the test harness captures
/// output: what a path simulates. Written straight to the process's stderr.
pub fn note(msg: &str) {
    let _ = writeln!(std::io::stderr(), "{msg}");
}

/// A run-unique suffix for room and event names, so that nothing from another scenario or run
/// can match.
pub fn nonce() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0) as u64;
    format!(
        "{:x}{:x}",
        t & 0xff_ffff_ffff,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

// ---------------------------------------------------------------------------------------------
// Client helpers
// ---------------------------------------------------------------------------------------------

/// A client and the `hello` of its first connection.
pub struct Placed {
    pub client: Client,
    pub hello: Hello,
}

/// Connects one client through the target's endpoint and waits for `hello`.
pub async fn connect<T: Target>(t: &T, d: &Driver) -> Result<Placed> {
    let opts = t.client_options().reconnection_delay_ms(200, 1000);
    let (client, hello) = d
        .connect_hello(&t.endpoint_url(), opts, WAIT)
        .await
        .with_context(|| format!("connecting to {}", t.endpoint_url()))?;
    Ok(Placed { client, hello })
}

/// Connects clients until each node of `nodes` has `per_node` of them (clients landing on a
/// covered node are dropped). The node a client lands on is the ingress's choice, so this takes
/// a bounded number of attempts; once the quick attempts are spent it paces itself, because a
/// real ingress controller learns of new or newly ready pods a few seconds late.
pub async fn cover<T: Target>(
    t: &T,
    d: &Driver,
    nodes: &[String],
    per_node: usize,
) -> Result<BTreeMap<String, Vec<Placed>>> {
    let mut got: BTreeMap<String, Vec<Placed>> =
        nodes.iter().map(|n| (n.clone(), Vec::new())).collect();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let quick = 30 + 12 * nodes.len() * per_node;
    let deadline = Instant::now() + COVER_TIMEOUT;
    let mut attempts = 0;
    loop {
        if got.values().all(|v| v.len() >= per_node) {
            return Ok(got);
        }
        if attempts >= quick && Instant::now() > deadline {
            bail!(
                "{attempts} connections in {COVER_TIMEOUT:?} did not put {per_node} client(s) on each of {nodes:?}; they landed on {seen:?}"
            );
        }
        if attempts >= quick {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        attempts += 1;
        let p = connect(t, d).await?;
        *seen.entry(p.hello.node.clone()).or_default() += 1;
        if let Some(v) = got.get_mut(&p.hello.node)
            && v.len() < per_node
        {
            v.push(p);
        }
    }
}

/// The `hello` of the client's live connection: waits until its latest socket.io connection is
/// up and has said hello (following reconnections).
pub async fn current(c: &Client, timeout: Duration) -> Result<Hello> {
    let v = c
        .wait_until(timeout, "a live connection and its hello", |log| {
            let last = log
                .iter()
                .rposition(|r| matches!(r.what, Incoming::Connect { .. }))?;
            let after = &log[last..];
            if after
                .iter()
                .any(|r| matches!(r.what, Incoming::Disconnect { .. }))
            {
                return None;
            }
            after
                .iter()
                .find(|r| r.event_name() == Some("hello"))
                .map(|r| r.data().clone())
        })
        .await?;
    serde_json::from_value(v).context("hello")
}

/// How long a client may take to leave a node that a rolling restart removed: the server
/// closes its transports while draining, and a client whose close got lost on the way notices
/// within pingInterval + pingTimeout (45 s by default).
pub const RECONNECT_WAIT: Duration = Duration::from_secs(60);

/// A client's connects and disconnects with their times (for failure messages).
pub fn connection_timeline(c: &Client) -> Vec<(f64, String)> {
    c.log()
        .iter()
        .filter_map(|r| match &r.what {
            Incoming::Connect { .. } | Incoming::Disconnect { .. } => {
                Some((r.t_ms, format!("{:?}", r.what)))
            }
            _ if r.event_name() == Some("hello") => {
                Some((r.t_ms, format!("hello from {}", r.data()["node"])))
            }
            _ => None,
        })
        .collect()
}

/// How many socket.io connections the client has made (1 + reconnections).
pub fn connections(c: &Client) -> usize {
    c.log()
        .iter()
        .filter(|r| matches!(r.what, Incoming::Connect { .. }))
        .count()
}

/// The data of every `event` the client received whose `data[key]` equals `value`.
fn count_where(c: &Client, event: &str, key: &str, value: &Value) -> usize {
    c.events(event)
        .iter()
        .filter(|r| &r.data()[key] == value)
        .count()
}

/// Every sender publishes a marker to all sockets, and every receiver waits for all markers:
/// what a sender published before its marker (same node, same Redis) has been delivered by then.
async fn fence(senders: &[&Client], receivers: &[&Client], tag: &str) -> Result<()> {
    let ev = format!("fence-{tag}");
    for (i, s) in senders.iter().enumerate() {
        s.publish(None, &ev, json!(i)).await?;
    }
    for r in receivers {
        for i in 0..senders.len() {
            r.wait_event_where(&ev, WAIT, |d| d == &json!(i)).await?;
        }
    }
    Ok(())
}

/// The latest `hello` node of a client (its node now, if it is connected).
pub fn last_node(c: &Client) -> Option<String> {
    c.events("hello")
        .last()
        .and_then(|r| r.data()["node"].as_str().map(String::from))
}

async fn need_nodes<T: Target>(t: &T, s: Scenario, n: usize) -> Result<Vec<String>> {
    let nodes = t.nodes().await?;
    ensure!(
        nodes.len() >= n,
        "scenario {} needs at least {n} ready nodes, the cluster has {nodes:?}",
        s.name()
    );
    Ok(nodes)
}

// ---------------------------------------------------------------------------------------------
// 1. hello
// ---------------------------------------------------------------------------------------------

async fn hello<T: Target>(t: &mut T, d: &Driver) -> Result<()> {
    let s = Scenario::Hello;
    let nodes = need_nodes(t, s, 1).await?;
    let placed = cover(t, d, &nodes, 1).await?;
    for (node, v) in &placed {
        let p = &v[0];
        ensure!(&p.hello.node == node);
        let id = p.client.wait_connect(WAIT).await?;
        ensure!(
            p.hello.id == id,
            "hello.id {} is not the socket id {id}",
            p.hello.id
        );
        // Default transports: long-polling first, then the upgrade, both through the ingress.
        let (first, upgraded) = p
            .client
            .wait_until(WAIT, "the websocket upgrade", |log| {
                let first = log.iter().find_map(|r| match &r.what {
                    Incoming::Open { transport } => Some(transport.clone()),
                    _ => None,
                })?;
                let up = log.iter().find_map(|r| match &r.what {
                    Incoming::Upgrade { transport } => Some(transport.clone()),
                    _ => None,
                })?;
                Some((first, up))
            })
            .await?;
        ensure!(
            first == "polling" && upgraded == "websocket",
            "transports: opened {first}, upgraded to {upgraded}"
        );
        say(
            s,
            &format!("hello from {node} (socket {id}): polling, then upgraded to websocket"),
        );
    }
    let opts = t.client_options().transports(&[Transport::Websocket]);
    let (ws, h) = d.connect_hello(&t.endpoint_url(), opts, WAIT).await?;
    ensure!(
        nodes.contains(&h.node),
        "websocket-only client: hello names {}, not one of {nodes:?}",
        h.node
    );
    ensure!(h.id == ws.wait_connect(WAIT).await?);
    say(s, &format!("websocket-only client: hello from {}", h.node));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2. room broadcast
// ---------------------------------------------------------------------------------------------

async fn room_broadcast<T: Target>(t: &mut T, d: &Driver) -> Result<()> {
    let s = Scenario::RoomBroadcast;
    let nodes = need_nodes(t, s, 2).await?;
    let placed = cover(t, d, &nodes, 2).await?;
    let n = nonce();
    let room = format!("room-{n}");
    let ev = format!("chat-{n}");
    // On every node: the first client joins the room, the second stays outside.
    let members: Vec<&Placed> = placed.values().map(|v| &v[0]).collect();
    let outsiders: Vec<&Placed> = placed.values().map(|v| &v[1]).collect();
    for m in &members {
        m.client.join(&room).await?;
    }
    for m in &members {
        m.client
            .publish(Some(&room), &ev, json!({"from": m.hello.node}))
            .await?;
    }
    for m in &members {
        for from in &nodes {
            m.client
                .wait_event_where(&ev, WAIT, |x| x["from"] == json!(from))
                .await
                .with_context(|| {
                    format!(
                        "member on {} waiting for the broadcast from {from}",
                        m.hello.node
                    )
                })?;
        }
    }
    let senders: Vec<&Client> = members.iter().map(|m| &m.client).collect();
    let everyone: Vec<&Client> = placed.values().flatten().map(|p| &p.client).collect();
    fence(&senders, &everyone, &n).await?;
    for m in &members {
        for from in &nodes {
            let k = count_where(&m.client, &ev, "from", &json!(from));
            ensure!(
                k == 1,
                "member on {} got the broadcast from {from} {k} times",
                m.hello.node
            );
        }
    }
    for o in &outsiders {
        let k = o.client.events(&ev).len();
        ensure!(
            k == 0,
            "a socket outside the room (on {}) got {k} room broadcasts",
            o.hello.node
        );
    }
    say(
        s,
        &format!(
            "each of {} members on {} nodes got every node's broadcast once; outsiders none",
            members.len(),
            nodes.len()
        ),
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 3. private message
// ---------------------------------------------------------------------------------------------

/// `from` sends `{from: its id, text}` as event `ev` to `to`'s socket id, and `to` must get
/// exactly that. The labels name the two in errors.
async fn send_private(
    (from, from_label): (&Placed, &str),
    (to, to_label): (&Placed, &str),
    ev: &str,
    text: &str,
) -> Result<()> {
    let msg = json!({"from": from.hello.id, "text": text});
    from.client.send_to(&to.hello.id, ev, msg.clone()).await?;
    let got = to
        .client
        .wait_event(ev, WAIT)
        .await
        .with_context(|| format!("{to_label} waiting for {from_label}'s private message"))?;
    ensure!(got.data() == &msg, "{to_label} got {}", got.data());
    Ok(())
}

async fn private_message<T: Target>(t: &mut T, d: &Driver) -> Result<()> {
    let s = Scenario::PrivateMessage;
    let nodes = need_nodes(t, s, 2).await?;
    let placed = cover(t, d, &nodes[..2], 2).await?;
    let (a, c) = (&placed[&nodes[0]][0], &placed[&nodes[0]][1]);
    let (b, e) = (&placed[&nodes[1]][0], &placed[&nodes[1]][1]);
    let n = nonce();
    let ev = format!("dm-{n}");
    // A bystander joins a room named like B's socket id: private messages must not leak to it.
    c.client.join(&b.hello.id).await?;
    send_private((a, "A"), (b, "B"), &ev, "hi B").await?;
    send_private((b, "B"), (a, "A"), &ev, "hi A").await?;
    let all = [&a.client, &b.client, &c.client, &e.client];
    fence(&[&a.client, &b.client], &all, &n).await?;
    ensure!(
        a.client.events(&ev).len() == 1 && b.client.events(&ev).len() == 1,
        "a private message arrived twice"
    );
    for x in [c, e] {
        let k = x.client.events(&ev).len();
        ensure!(
            k == 0,
            "bystander {} on {} got {k} private messages",
            x.hello.id,
            x.hello.node
        );
    }
    say(
        s,
        &format!(
            "{} -> {} and back across nodes, no bystander (not even one in a room named like the socket id) got it",
            a.hello.node, b.hello.node
        ),
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 4. presence
// ---------------------------------------------------------------------------------------------

/// The (id, node) pairs `presence` lists for `room`, asked through `c`, sorted.
async fn listed(c: &Client, room: &str) -> Result<Vec<(String, String)>> {
    let mut v: Vec<_> = c
        .presence(room)
        .await?
        .into_iter()
        .map(|m| (m.id, m.node))
        .collect();
    v.sort();
    Ok(v)
}

async fn presence<T: Target>(t: &mut T, d: &Driver) -> Result<()> {
    let s = Scenario::Presence;
    let nodes = need_nodes(t, s, 2).await?;
    let placed = cover(t, d, &nodes, 2).await?;
    let room = format!("presence-{}", nonce());
    // Members: both clients of the first node, the first client of every other node.
    let mut members: Vec<&Placed> = placed[&nodes[0]].iter().collect();
    members.extend(nodes[1..].iter().map(|n| &placed[n][0]));
    for m in &members {
        m.client.join(&room).await?;
    }
    let expect = |ms: &[&Placed]| -> Vec<(String, String)> {
        let mut v: Vec<_> = ms
            .iter()
            .map(|m| (m.hello.id.clone(), m.hello.node.clone()))
            .collect();
        v.sort();
        v
    };
    let want = expect(&members);
    // Asked from every node, by members and non-members alike.
    for v in placed.values() {
        for p in v {
            let got = listed(&p.client, &room).await?;
            ensure!(
                got == want,
                "presence asked on {}: {got:?}, expected {want:?}",
                p.hello.node
            );
        }
    }
    // A member on another node leaves: everyone sees it gone.
    let leaver = members.pop().expect("at least two members");
    leaver.client.leave(&room).await?;
    let want = expect(&members);
    for p in placed.values().map(|v| &v[0]) {
        let got = listed(&p.client, &room).await?;
        ensure!(
            got == want,
            "after {} left, presence on {}: {got:?}, expected {want:?}",
            leaver.hello.id,
            p.hello.node
        );
    }
    say(
        s,
        &format!(
            "{} members over {} nodes listed identically from every node, and a leave is seen everywhere",
            want.len() + 1,
            nodes.len()
        ),
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 5. scale
// ---------------------------------------------------------------------------------------------

/// `from` publishes to all sockets; every client of `to` must receive it.
async fn fan_out(from: &Client, to: &[&Client], ev: &str, id: &str) -> Result<()> {
    from.publish(None, ev, json!({"id": id})).await?;
    for c in to {
        c.wait_event_where(ev, WAIT, |x| x["id"] == json!(id))
            .await
            .with_context(|| format!("{} (on {:?}) waiting for {id}", c.name(), last_node(c)))?;
    }
    Ok(())
}

async fn scale<T: Target>(t: &mut T, d: &Driver) -> Result<()> {
    let s = Scenario::Scale;
    let r0 = t.replicas().await?;
    let before = need_nodes(t, s, 1).await?;
    ensure!(
        before.len() == r0,
        "{} ready nodes for {r0} replicas before scaling",
        before.len()
    );
    let old = cover(t, d, &before, 1).await?;
    let n = nonce();
    let ev = format!("fan-{n}");

    let up = r0 + 1;
    say(
        s,
        &format!("kubectl scale rtc/{} --replicas={up}", t.cluster_name()),
    );
    t.scale(up).await?;
    let after_up = t.nodes().await?;
    let added: Vec<String> = after_up
        .iter()
        .filter(|x| !before.contains(x))
        .cloned()
        .collect();
    ensure!(
        after_up.len() == up && added.len() == 1,
        "after scaling to {up}: nodes {after_up:?} (before {before:?})"
    );
    let newcomers = cover(t, d, &added, 1).await?;
    let fresh = &newcomers[&added[0]][0];
    let mut all: Vec<&Client> = old.values().flatten().map(|p| &p.client).collect();
    all.push(&fresh.client);
    for c in &all {
        current(c, WAIT).await?;
    }
    fan_out(&fresh.client, &all, &ev, &format!("from-new-{n}"))
        .await
        .context("the new node's broadcast")?;
    let first_old = &old[&before[0]][0].client;
    fan_out(first_old, &all, &ev, &format!("to-new-{n}"))
        .await
        .context("a broadcast reaching the new node")?;
    say(
        s,
        &format!("new node {} joined the fan-out both ways", added[0]),
    );

    let marks: Vec<usize> = all.iter().map(|c| connections(c)).collect();
    let nodes_before_down: Vec<Option<String>> = all.iter().map(|c| last_node(c)).collect();
    say(
        s,
        &format!("kubectl scale rtc/{} --replicas=1", t.cluster_name()),
    );
    t.scale(1).await?;
    let survivors = t.nodes().await?;
    ensure!(
        survivors.len() == 1,
        "after scaling to 1: nodes {survivors:?}"
    );
    let mut moved = 0;
    for (i, c) in all.iter().enumerate() {
        // The removed pods are gone from the API, but their clients may not have seen the
        // close yet (it is in flight, or the connection died silently with the pod's network
        // namespace: then only the socket.io heartbeat, ping interval + timeout = 45 s by
        // default, tells the client). Wait for a connection to a survivor, within that bound.
        let deadline = Instant::now() + WAIT * 3;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let h = current(c, left)
                .await
                .with_context(|| format!("client {} after scale-down", c.name()))?;
            if survivors.contains(&h.node) {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "client {} is still on {} {:?} after scale-down to {survivors:?}",
                c.name(),
                h.node,
                WAIT * 3
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let was = nodes_before_down[i].clone().unwrap_or_default();
        if !survivors.contains(&was) {
            ensure!(
                connections(c) > marks[i],
                "client {} of removed node {was} did not reconnect",
                c.name()
            );
            moved += 1;
        }
    }
    ensure!(
        moved > 0,
        "no client was on a removed node: the scenario proved nothing"
    );
    fan_out(all[0], &all, &ev, &format!("after-down-{n}")).await?;
    say(
        s,
        &format!(
            "{moved} client(s) of removed nodes reconnected to {}; broadcast reaches all {}",
            survivors[0],
            all.len()
        ),
    );

    say(s, &format!("restoring replicas={r0}"));
    t.scale(r0).await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 6. rolling restart
// ---------------------------------------------------------------------------------------------

/// Message ids that occur more than once in `ids`, with their counts (pure).
pub fn duplicates(ids: &[u64]) -> Vec<(u64, usize)> {
    let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
    for i in ids {
        *counts.entry(*i).or_default() += 1;
    }
    counts.into_iter().filter(|(_, k)| *k > 1).collect()
}

async fn rolling_restart<T: Target>(t: &mut T, d: &Driver) -> Result<()> {
    let s = Scenario::RollingRestart;
    let before = need_nodes(t, s, 1).await?;
    let placed = cover(t, d, &before, 1).await?;
    let publisher = connect(t, d).await?;
    let n = nonce();
    let ev = format!("seq-{n}");
    let receivers: Vec<&Client> = placed
        .values()
        .flatten()
        .map(|p| &p.client)
        .chain([&publisher.client])
        .collect();

    let done = AtomicBool::new(false);
    let publish = async {
        let (mut acked, mut failed, mut i) = (0u64, 0u64, 0u64);
        while !done.load(Ordering::Relaxed) {
            i += 1;
            let r = publisher
                .client
                .emit_ack_args(
                    "publish",
                    vec![json!({"event": ev, "data": {"i": i}})],
                    Duration::from_secs(2),
                )
                .await;
            match r {
                Ok(a) if a.first().is_some_and(|v| v["ok"] == json!(true)) => acked += 1,
                _ => {
                    failed += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (acked, failed, i)
    };
    // The stream flows to everyone before the restart begins.
    let warmup = async {
        for c in &receivers {
            c.wait_event(&ev, WAIT).await?;
        }
        say(
            s,
            "every client receives the stream; restarting the server Deployment",
        );
        t.rolling_restart().await
    };
    let (restarted, (acked, failed, sent)) = tokio::join!(
        async {
            let r = warmup.await;
            done.store(true, Ordering::Relaxed);
            r
        },
        publish
    );
    restarted?;
    let after = t.nodes().await?;
    let kept: Vec<&String> = after.iter().filter(|x| before.contains(x)).collect();
    ensure!(
        kept.is_empty(),
        "nodes {kept:?} survived the rolling restart (before {before:?}, after {after:?})"
    );

    let rolled = Instant::now();
    for c in &receivers {
        // `rollout status` and the pods' deletion can come an instant before a client hears
        // that its old node closed it (seen once on the real node: a client still on a pod of
        // the old ReplicaSet right after the rollout), so each client gets until
        // RECONNECT_WAIT to be on a new node; one that needs more than a second is reported.
        let h = loop {
            let h = current(c, WAIT * 2)
                .await
                .with_context(|| format!("client {} after the restart", c.name()))?;
            if after.contains(&h.node) {
                break h;
            }
            if rolled.elapsed() > RECONNECT_WAIT {
                bail!(
                    "client {} is on {} {:?} after the restart, not one of {after:?}; its \
                     connections (ms, what): {:?}",
                    c.name(),
                    h.node,
                    RECONNECT_WAIT,
                    connection_timeline(c)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        if rolled.elapsed() > Duration::from_secs(1) {
            say(
                s,
                &format!(
                    "client {} reached {} {:.1}s after the rollout ended",
                    c.name(),
                    h.node,
                    rolled.elapsed().as_secs_f64()
                ),
            );
        }
        ensure!(
            connections(c) >= 2,
            "client {} never reconnected although every node was replaced",
            c.name()
        );
    }
    let end = format!("end-{n}");
    publisher.client.publish(None, &end, json!(sent)).await?;
    for c in &receivers {
        c.wait_event(&end, WAIT)
            .await
            .with_context(|| format!("client {} waiting for the last message", c.name()))?;
    }
    let mut report = Vec::new();
    for c in &receivers {
        let ids: Vec<u64> = c
            .events(&ev)
            .iter()
            .filter_map(|r| r.data()["i"].as_u64())
            .collect();
        let dups = duplicates(&ids);
        ensure!(
            dups.is_empty(),
            "client {} got messages more than once (id, times): {dups:?}",
            c.name()
        );
        report.push(format!(
            "{}:{}msgs/{}conns",
            c.name(),
            ids.len(),
            connections(c)
        ));
    }
    say(
        s,
        &format!(
            "nodes {before:?} -> {after:?}; published {sent} ({acked} acked, {failed} unacked while reconnecting); no duplicates: {}",
            report.join(" ")
        ),
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 7. Redis deleted
// ---------------------------------------------------------------------------------------------

/// Publishes from `a` until `b` receives one (each attempt with a new id), until `deadline`.
/// Returns the number of attempts.
pub async fn deliver_until(a: &Client, b: &Client, ev: &str, deadline: Instant) -> Result<u32> {
    let mut k = 0u32;
    loop {
        k += 1;
        let id = format!("{}-{k}", a.name());
        let published = a.publish(None, ev, json!({"id": id})).await;
        if published.is_ok()
            && b.wait_event_where(ev, Duration::from_secs(3), |x| x["id"] == json!(id))
                .await
                .is_ok()
        {
            return Ok(k);
        }
        if Instant::now() > deadline {
            bail!(
                "{} -> {}: nothing delivered after {k} attempts (last publish: {published:?})",
                a.name(),
                b.name()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn redis_deleted<T: Target>(t: &mut T, d: &Driver) -> Result<()> {
    let s = Scenario::RedisDeleted;
    let nodes = need_nodes(t, s, 2).await?;
    let mut placed = cover(t, d, &nodes[..2], 1).await?;
    let a = placed.remove(&nodes[0]).unwrap().remove(0);
    let mut b = placed.remove(&nodes[1]).unwrap().remove(0);
    let ev = format!("resume-{}", nonce());
    fan_out(&a.client, &[&b.client], &ev, "before")
        .await
        .context("delivery before Redis is deleted")?;

    say(s, "deleting the Redis pod");
    t.delete_redis().await?;
    t.wait_redis_back().await?;
    let back = Instant::now();
    say(s, "Redis is back and every node is ready again");

    // Reconnections may have put both clients on one node: Redis is only needed across nodes.
    let ha = current(&a.client, WAIT * 2).await?;
    let hb = current(&b.client, WAIT * 2).await?;
    if ha.node == hb.node {
        let others: Vec<String> = t
            .nodes()
            .await?
            .into_iter()
            .filter(|x| *x != ha.node)
            .collect();
        ensure!(
            !others.is_empty(),
            "only {} is ready after Redis came back",
            ha.node
        );
        b = cover(t, d, &others[..1], 1)
            .await?
            .remove(&others[0])
            .unwrap()
            .remove(0);
    }
    let deadline = back + Duration::from_secs(90);
    let k1 = deliver_until(&a.client, &b.client, &ev, deadline).await?;
    let k2 = deliver_until(&b.client, &a.client, &ev, deadline).await?;
    say(
        s,
        &format!(
            "delivery resumed across nodes {:?} <-> {:?} {:.1?} after Redis was back ({k1} and {k2} attempts)",
            last_node(&a.client),
            last_node(&b.client),
            back.elapsed()
        ),
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 8. invalid RealtimeCluster rejected
// ---------------------------------------------------------------------------------------------

/// Invalid specs and what the rejection must say: the field and a sentence a person understands.
pub fn invalid_cases() -> Vec<(&'static str, Value, Vec<&'static str>)> {
    vec![
        (
            "no-websocket",
            json!({"transports": ["polling"]}),
            vec!["spec.transports", "transports must include websocket"],
        ),
        (
            "reserved-env",
            json!({"env": [{"name": "PORT", "value": "8080"}]}),
            vec!["spec.env", "env must not set PORT"],
        ),
        (
            "negative-replicas",
            json!({"replicas": -1}),
            vec!["spec.replicas", "greater than or equal to 0"],
        ),
        (
            "ingress-no-host",
            json!({"ingress": {"enabled": true}}),
            vec!["spec.ingress", "ingress.host is required"],
        ),
        (
            "ingress-path-slash",
            json!({"ingress": {"enabled": true, "host": "chat.example.com", "path": "/chat/"}}),
            vec!["spec.ingress.path", "ingress.path must be / or /segment"],
        ),
        (
            "short-timeouts",
            json!({"pingIntervalSeconds": 25, "pingTimeoutSeconds": 20,
                   "ingress": {"enabled": true, "host": "chat.example.com", "timeouts": {"readSeconds": 30}}}),
            vec!["readSeconds must exceed pingIntervalSeconds + pingTimeoutSeconds"],
        ),
    ]
}

/// A RealtimeCluster manifest (YAML) named `name` with `spec`.
pub fn manifest(name: &str, spec: &Value) -> String {
    let doc = json!({
        "apiVersion": "realtime.dev/v1alpha1",
        "kind": "RealtimeCluster",
        "metadata": {"name": name},
        "spec": spec,
    });
    serde_yaml::to_string(&doc).expect("JSON values serialize to YAML")
}

async fn invalid_rejected<T: Target>(t: &mut T) -> Result<()> {
    let s = Scenario::InvalidRejected;
    let suffix = nonce();
    let suffix = &suffix[suffix.len().saturating_sub(6)..];
    for (what, spec, fragments) in invalid_cases() {
        let name = format!("bad-{what}-{suffix}");
        match t.kubectl().apply(&manifest(&name, &spec)).await? {
            Applied::Accepted(out) => {
                let _ = t
                    .kubectl()
                    .run(&["delete", "rtc", &name, "--wait=false"], None)
                    .await;
                bail!("{what}: the invalid RealtimeCluster {spec} was accepted ({out})");
            }
            Applied::Rejected(msg) => {
                for f in &fragments {
                    ensure!(
                        msg.contains(f),
                        "{what}: the rejection does not say {f:?}:\n{msg}"
                    );
                }
                ensure!(
                    msg.contains(&name),
                    "{what}: the rejection does not name the object:\n{msg}"
                );
                say(
                    s,
                    &format!(
                        "{what}: {}",
                        msg.split_whitespace().collect::<Vec<_>>().join(" ")
                    ),
                );
            }
        }
        let out = t.kubectl().run(&["get", "rtc", &name], None).await?;
        ensure!(
            !out.success && out.stderr.contains("NotFound"),
            "{what}: rtc/{name} exists after the rejection"
        );
    }
    // A valid spec still goes through the same path: the rejections came from the checks.
    let name = format!("ok-{suffix}");
    let good = manifest(&name, &json!({"replicas": 0}));
    match t.kubectl().apply(&good).await? {
        Applied::Accepted(_) => {
            t.kubectl()
                .ok(&["delete", "rtc", &name, "--wait=false"])
                .await?;
        }
        Applied::Rejected(msg) => bail!("a valid RealtimeCluster was rejected: {msg}"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenarios_have_unique_names_that_parse_back() {
        let names: std::collections::BTreeSet<_> = Scenario::ALL.iter().map(|s| s.name()).collect();
        assert_eq!(names.len(), 8);
        for s in Scenario::ALL {
            assert_eq!(Scenario::parse(s.name()), Some(s));
        }
        assert_eq!(Scenario::parse("nope"), None);
    }

    #[test]
    fn duplicates_are_found() {
        assert!(duplicates(&[1, 2, 3]).is_empty());
        assert_eq!(duplicates(&[1, 2, 2, 3, 1, 2]), vec![(1, 2), (2, 3)]);
    }

    #[test]
    fn manifests_are_realtime_clusters() {
        let m = manifest("x", &json!({"replicas": 3}));
        let v: Value = serde_yaml::from_str(&m).unwrap();
        assert_eq!(v["kind"], "RealtimeCluster");
        assert_eq!(v["apiVersion"], "realtime.dev/v1alpha1");
        assert_eq!(v["metadata"]["name"], "x");
        assert_eq!(v["spec"]["replicas"], 3);
        for (what, _, fragments) in invalid_cases() {
            assert!(!fragments.is_empty(), "{what}");
            // names stay valid DNS labels within the 40-character limit
            assert!(format!("bad-{what}-123456").len() <= 40, "{what}");
        }
    }
}
