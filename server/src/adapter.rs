//! The Redis side of the adapter: a `socketioxide-redis` [`Driver`] on the `fred` client, and
//! the monitor that keeps it connected, subscribed and provably listening.
//!
//! Why not `socketioxide_redis::drivers::fred::FredDriver` as is:
//! - it needs a connected client to build (`init().await?`), so a node could not start while
//!   Redis is down; this driver starts anyway and the monitor connects it later;
//! - fred's `SubscriberClient` only remembers channels whose first SUBSCRIBE succeeded, so a
//!   channel subscribed during an outage would never be resubscribed; here the driver keeps the
//!   wanted channels itself and the monitor resubscribes all of them after every (re)connect
//!   (what fred's `manage_subscriptions` does, plus knowing *when* it is done, for readiness);
//! - its pump task (fred's broadcast channel -> per-channel adapter buffers) is invisible: if it
//!   lags, drops or stops, the node goes deaf silently. Here the pump counts every dropped
//!   message, the monitor restarts it if it ever ends, and a self-addressed probe message
//!   through Redis every [`PROBE_INTERVAL`] proves the whole receive path works. Any failure
//!   turns `/readyz` to 503 and shows in the metrics.
//!
//! One server and Sentinel use plain PUBLISH/SUBSCRIBE, so any Redis >= 6 with RESP3 works.
//!
//! A Redis Cluster (`redis-cluster://`, Redis >= 7) uses sharded pub/sub instead: SPUBLISH,
//! SSUBSCRIBE and `PUBSUB SHARDNUMSUB`, each routed by fred to the master that owns the
//! channel's hash slot. A plain PUBLISH on a cluster is copied to every node over the cluster
//! bus (it does not scale with shards), and a sharded message reaches a subscriber once, from
//! its slot's master. The adapter's channels of one namespace (the broadcast channel, this
//! node's request and response channels) hash to different slots, so a node holds a
//! subscription on up to as many masters. What changes with the sharded commands:
//! - SSUBSCRIBE is sent one channel per command: fred pairs the reply (a push per channel) with
//!   the command to follow MOVED redirections, so a multi-channel SSUBSCRIBE would leave the
//!   extra replies to be taken for the answers of later commands;
//! - a slot that moves (a failover, a resharding) takes its sharded subscriptions with it:
//!   Redis drops them (a dead master's connection, or a `sunsubscribe` push that fred does not
//!   surface). fred re-reads the slot map after a lost connection or a MOVED reply, and
//!   reports each new master connection (`reconnect_rx`) and each re-read (`cluster_change_rx`).
//!   The monitor resubscribes every channel after each new connection, and after a re-read
//!   that gives one of its channels' slots another master (SSUBSCRIBE is idempotent on a
//!   connection that already has it, and fred closes its connection to a node that is no
//!   longer a master before the new SSUBSCRIBEs go out: no message comes twice);
//! - a switchover (`CLUSTER FAILOVER`) turns the old master into a replica that still serves
//!   SSUBSCRIBE and SPUBLISH for its old slots, locally, without MOVED: the clients that used it
//!   keep working, but one that re-read the slot map meanwhile listens on the new master and
//!   misses what the others publish on the old one. So the monitor re-reads the map itself
//!   every [`CLUSTER_SYNC_INTERVAL`], which bounds that split;
//! - one probe cannot prove several masters: the monitor probes every hash slot the adapter's
//!   channels are in, with one probe channel per slot (a `{tag}` that hashes to that slot), and
//!   a probe round succeeds only when every slot's probe came back.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use fred::{
    clients::Client,
    interfaces::{ClientLike, ClusterInterface, EventInterface, PubsubInterface},
    types::{
        Message, RespVersion,
        config::{Config, ReconnectPolicy, ServerConfig, TcpConfig, UnresponsiveConfig},
    },
    util::redis_keyslot,
};
use socketioxide_redis::drivers::{ChanItem, Driver, MessageStream};
use tokio::sync::{Notify, broadcast, mpsc};
use tracing::{debug, info, warn};

use crate::{
    config::{RedisSettings, redact_url},
    health::Health,
    metrics::{AdapterOp, DropReason, Metrics},
};

/// Channel prefix of the adapter (keeps this service apart from other socket.io apps on a
/// shared Redis).
pub const CHANNEL_PREFIX: &str = "realtime";
/// Messages fred buffers for the pump before it counts as lagging. tokio's broadcast channel
/// allocates all slots at once, so this is bounded; the pump does little per message and
/// only lags when starved of CPU.
const FRED_BROADCAST_CAPACITY: usize = 4096;
/// Per-channel buffer between the pump and the adapter (socketioxide-redis's `stream_buffer`).
/// A bounded mpsc allocates lazily, so a generous bound costs nothing until a burst needs it.
pub const ADAPTER_STREAM_BUFFER: usize = 16 * 1024;
/// How long cross-node requests (presence) wait for the other nodes.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Upper bound of any Redis command, so a handler never waits on a dead connection for long:
/// a PUBLISH takes well under a millisecond on a healthy Redis, and a message whose PUBLISH
/// times out is still delivered on this node.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a connection error counts as "disconnected" while fred still reports the old
/// connection state (fred keeps `Connected` during its reconnect delay).
const LOST_GRACE: Duration = Duration::from_secs(2);
/// How often "still no Redis" is logged.
const DOWN_LOG_EVERY: Duration = Duration::from_secs(10);
/// How often the monitor checks the connection and the pump.
const TICK: Duration = Duration::from_millis(200);
/// How often a probe message is sent to this node's own probe channel.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// How long a probe may take before the node resubscribes.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// How often a cluster's slot map is read again (`CLUSTER SLOTS`), besides the re-reads fred
/// does after a lost connection or a MOVED reply: a master turned replica by a switchover
/// (`CLUSTER FAILOVER`) still serves the sharded commands of its old slots, locally, so no
/// MOVED ever comes, and nodes that re-read the map at different times would publish and
/// listen on different nodes of the shard.
const CLUSTER_SYNC_INTERVAL: Duration = Duration::from_secs(2);
/// How long Redis may answer this node while the node hears nothing before it counts as deaf
/// (and leaves rotation): longer than a resubscription and a probe round trip.
pub const DEAF_GRACE: Duration = Duration::from_secs(10);

/// An error of the driver.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("redis is not connected")]
    NotConnected,
    /// A node's own request channel had no subscriber: that node is gone (see `route.rs`).
    #[error("no node listens on {0}")]
    NoSubscriber(String),
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
}

/// The `socketioxide-redis` adapter type this server runs with Redis.
pub type RedisAdapter<E> = socketioxide_redis::CustomRedisAdapter<E, RedisDriver>;

/// A [`Driver`] over one fred client (RESP3: commands and pub/sub share the connection).
#[derive(Clone)]
pub struct RedisDriver {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    /// Sharded pub/sub (SPUBLISH, SSUBSCRIBE): on a Redis Cluster.
    sharded: bool,
    /// Every channel the adapter wants, with the buffer its messages go to.
    handlers: RwLock<HashMap<String, mpsc::Sender<ChanItem>>>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    /// Wakes the monitor to resubscribe (a SUBSCRIBE failed).
    resubscribe: Notify,
    /// Set by [`RedisDriver::quit`]: the monitor stops instead of reporting the closed
    /// connection as an outage.
    closing: std::sync::atomic::AtomicBool,
}

impl RedisDriver {
    /// Builds the client and starts connecting in the background (never fails on an
    /// unreachable Redis: the reconnect policy keeps trying, and readiness says so).
    pub fn connect(
        settings: &RedisSettings,
        health: Arc<Health>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let mut config = Config::from_url(&settings.url).map_err(|e| {
            anyhow::anyhow!("REDIS_URL {} is not usable: {e}", redact_url(&settings.url))
        })?;
        // fred does not read the protocol from the URL; RESP3 lets one connection carry both
        // commands and pub/sub pushes.
        config.version = RespVersion::RESP3;
        // Retry the very first connection too: a node starts (not ready) while Redis is down.
        config.fail_fast = false;
        if let Some(pw) = &settings.password {
            config.password = Some(pw.clone());
        }
        // With Sentinel, fred asks a Sentinel for the primary's address at every (re)connection
        // (after a failover: the promoted replica) and checks its ROLE before using it. The
        // Sentinels' credentials are their own (fred's `sentinel-auth`): a Sentinel without
        // `requirepass` refuses an AUTH, so the data nodes' password is not sent to it.
        if let (Some(pw), ServerConfig::Sentinel { password, .. }) =
            (&settings.sentinel_password, &mut config.server)
        {
            *password = Some(pw.clone());
        }
        let sharded = config.server.is_clustered();
        let client = fred::types::Builder::from_config(config)
            .with_performance_config(|p| {
                p.broadcast_channel_capacity = FRED_BROADCAST_CAPACITY;
                p.default_command_timeout = COMMAND_TIMEOUT;
            })
            .with_connection_config(|c| {
                c.connection_timeout = Duration::from_secs(3);
                c.internal_command_timeout = Duration::from_secs(3);
                c.max_command_attempts = 2;
                // A Redis that stops answering (frozen, network black hole) is dropped and
                // reconnected instead of stalling every command.
                c.unresponsive = UnresponsiveConfig {
                    max_timeout: Some(Duration::from_secs(5)),
                    interval: Duration::from_secs(1),
                };
                c.tcp = TcpConfig {
                    nodelay: Some(true),
                    ..Default::default()
                };
            })
            // Unlimited attempts, 100 ms doubling to 500 ms: a restarted Redis or a newly
            // promoted primary is found within ~0.5 s (with a 1 s cap the Sentinel failover
            // gap was either ~2.8 or ~3.7 s, depending on where the promotion fell between two
            // attempts); two attempts a second per node cost Redis and the Sentinels nothing.
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 500, 2))
            .build()?;
        let _connection_task = client.connect();
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                sharded,
                handlers: RwLock::new(HashMap::new()),
                health,
                metrics,
                resubscribe: Notify::new(),
                closing: std::sync::atomic::AtomicBool::new(false),
            }),
        })
    }

    /// Starts the monitor (connection state, resubscription, pump, probe). `node_id` names
    /// this node's probe channel. Returns its task; abort it on shutdown.
    pub fn spawn_monitor(&self, node_id: &str) -> tokio::task::JoinHandle<()> {
        let probe_chan = format!("{CHANNEL_PREFIX}-probe#{node_id}#");
        let (tx, rx) = mpsc::channel(64);
        self.handlers().insert(probe_chan.clone(), tx.clone());
        tokio::spawn(Monitor::new(self.clone(), probe_chan, tx, rx).run())
    }

    /// The client, for commands beyond pub/sub (the recovery log).
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// The publish command this driver's subscriptions hear: `SPUBLISH` on a Redis Cluster
    /// (the driver subscribes with SSUBSCRIBE there), `PUBLISH` otherwise.
    pub fn publish_command(&self) -> &'static str {
        if self.inner.sharded {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }

    /// Closes the Redis connection (after the adapter has unsubscribed).
    pub async fn quit(&self) {
        self.inner
            .closing
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.inner.resubscribe.notify_one();
        if let Err(e) = self.inner.client.quit().await {
            debug!("redis quit: {e}");
        }
    }

    fn handlers(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, mpsc::Sender<ChanItem>>> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts
        // and removes), so a poisoned lock is still usable.
        self.inner
            .handlers
            .write()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn channels(&self) -> Vec<String> {
        let map = self
            .inner
            .handlers
            .read()
            .unwrap_or_else(|e| e.into_inner());
        map.keys().cloned().collect()
    }
}

impl Driver for RedisDriver {
    type Error = DriverError;

    async fn publish(&self, chan: String, val: Vec<u8>) -> Result<(), Self::Error> {
        if !self.inner.health.redis_usable() {
            // fred would queue the command until it reconnects or times out: fail at once so
            // the caller can fall back to local delivery.
            return Err(DriverError::NotConnected);
        }
        let node_chan = crate::route::is_node_request_channel(CHANNEL_PREFIX, &chan);
        let named = node_chan.then(|| chan.clone());
        // fred queues the command on the connection at the first poll; from there the
        // socket's next event may go on (`order.rs`; a no-op outside a client's event).
        let res = crate::order::pipelined(publish(&self.inner, chan, val)).await;
        match (res, named) {
            (Ok(0), Some(chan)) => Err(DriverError::NoSubscriber(chan)),
            (Ok(_), _) => Ok(()),
            (Err(e), _) => {
                self.inner.metrics.adapter_error(AdapterOp::Publish);
                Err(e.into())
            }
        }
    }

    async fn subscribe(
        &self,
        chan: String,
        size: usize,
    ) -> Result<MessageStream<ChanItem>, Self::Error> {
        let (tx, rx) = mpsc::channel(size);
        // This node's own request channel (private messages routed to it, route.rs) shares the
        // buffer of the shared request channel (subscribed first by socketioxide-redis): the
        // adapter reads its two request streams through `select`, which could let a routed
        // private message and a broadcast sent after it by the same sender swap places. In one
        // buffer they stay in the order Redis sent them; the own channel's stream ends at once.
        let shared = crate::route::shared_request_channel(CHANNEL_PREFIX, &chan).and_then(|c| {
            let map = self
                .inner
                .handlers
                .read()
                .unwrap_or_else(|e| e.into_inner());
            map.get(&c).cloned()
        });
        match shared {
            Some(shared) => {
                drop(tx);
                self.handlers().insert(chan.clone(), shared);
            }
            None => {
                self.handlers().insert(chan.clone(), tx);
            }
        }
        if self.inner.health.redis_usable()
            && let Err(e) = subscribe_one(&self.inner, &chan).await
        {
            warn!(chan, "redis SUBSCRIBE failed, the monitor will retry: {e}");
            self.inner.metrics.adapter_error(AdapterOp::Subscribe);
            self.inner.health.set_redis_subscribed(false);
            self.inner.resubscribe.notify_one();
        }
        // Never fail: the channel is remembered, and subscribed as soon as Redis is there.
        Ok(MessageStream::new(rx))
    }

    async fn unsubscribe(&self, chan: String) -> Result<(), Self::Error> {
        self.handlers().remove(&chan);
        if self.inner.health.redis_usable() {
            if self.inner.sharded {
                self.inner.client.sunsubscribe(chan).await?;
            } else {
                self.inner.client.unsubscribe(chan).await?;
            }
        }
        Ok(())
    }

    async fn num_serv(&self, chan: &str) -> Result<u16, Self::Error> {
        if !self.inner.health.redis_usable() {
            return Err(DriverError::NotConnected);
        }
        // A sharded channel's subscribers are all on its slot's master, where fred sends the
        // SHARDNUMSUB (routed by the channel like SSUBSCRIBE).
        let res = if self.inner.sharded {
            self.inner
                .client
                .pubsub_shardnumsub::<(String, u16), _>(chan)
                .await
        } else {
            self.inner
                .client
                .pubsub_numsub::<(String, u16), _>(chan)
                .await
        };
        if res.is_err() {
            self.inner.metrics.adapter_error(AdapterOp::Publish);
        }
        Ok(res?.1)
    }
}

/// PUBLISH, or SPUBLISH on a cluster (to the master of the channel's slot): the number of
/// subscribers that got it (on a cluster, on that shard, where all of the channel's are).
async fn publish(inner: &Inner, chan: String, val: Vec<u8>) -> Result<i64, fred::error::Error> {
    if inner.sharded {
        inner.client.spublish::<i64, _, _>(chan, val).await
    } else {
        inner.client.publish::<i64, _, _>(chan, val).await
    }
}

/// SUBSCRIBE, or SSUBSCRIBE on a cluster: one channel per command (see the module doc).
async fn subscribe_one(inner: &Inner, chan: &str) -> Result<(), fred::error::Error> {
    if inner.sharded {
        inner.client.ssubscribe(chan).await
    } else {
        inner.client.subscribe(chan).await
    }
}

/// Subscribes `channels`, each command bounded by [`COMMAND_TIMEOUT`]: one SUBSCRIBE for them
/// all, or one SSUBSCRIBE each on a cluster (all of them even when one fails, so that one
/// master refusing does not keep the others' channels unsubscribed; the first failure is
/// returned, a refusal by Redis before a timeout).
async fn subscribe_all(inner: &Inner, channels: Vec<String>) -> Result<(), SubscribeError> {
    if inner.sharded {
        let mut failed = None;
        for chan in &channels {
            let res = tokio::time::timeout(COMMAND_TIMEOUT, inner.client.ssubscribe(chan.as_str()))
                .await
                .map_err(|_| SubscribeError::TimedOut)
                .and_then(|r| r.map_err(SubscribeError::from));
            match (res, &failed) {
                (Ok(()), _) | (Err(_), Some(SubscribeError::Redis(_))) => {}
                (Err(e), _) => {
                    debug!(chan, "redis SSUBSCRIBE failed: {e}");
                    failed = Some(e);
                }
            }
        }
        failed.map_or(Ok(()), Err)
    } else {
        tokio::time::timeout(COMMAND_TIMEOUT, inner.client.subscribe(channels))
            .await
            .map_err(|_| SubscribeError::TimedOut)?
            .map_err(Into::into)
    }
}

#[derive(Debug, thiserror::Error)]
enum SubscribeError {
    #[error("timed out")]
    TimedOut,
    #[error("{0}")]
    Redis(#[from] fred::error::Error),
}

/// A hash tag (`{tag}`) whose key hashes to `slot`: the smallest decimal number that does
/// (pure; every slot has one below 100 000).
fn slot_tag(slot: u16) -> String {
    (0u32..)
        .map(|i| i.to_string())
        .find(|t| redis_keyslot(t.as_bytes()) == slot)
        .expect("every slot has a decimal tag")
}

/// This node's probe channel for `slot` on a cluster: `base` with a hash tag for that slot
/// (pure). `base` has no braces (it is `realtime-probe#<uid>#`), so the tag is the key's first.
fn probe_channel_for_slot(base: &str, slot: u16) -> String {
    if redis_keyslot(base.as_bytes()) == slot {
        return base.to_owned();
    }
    format!("{base}{{{}}}", slot_tag(slot))
}

/// Moves messages from fred's broadcast channel to the adapter's per-channel buffers.
/// Never blocks and never panics: a full buffer drops that message (counted), so one slow
/// channel cannot stall the others.
async fn pump(mut rx: broadcast::Receiver<Message>, driver: RedisDriver) {
    loop {
        match rx.recv().await {
            Ok(msg) => dispatch(&driver.inner, msg),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                driver.inner.metrics.redis_dropped(DropReason::Lagged, n);
            }
            // Only when the client is closed for good (quit).
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

fn dispatch(inner: &Inner, msg: Message) {
    inner.metrics.redis_messages.inc();
    let handlers = inner.handlers.read().unwrap_or_else(|e| e.into_inner());
    let Some(tx) = handlers.get(&*msg.channel) else {
        inner.metrics.redis_dropped(DropReason::NoHandler, 1);
        return;
    };
    let Some(data) = msg.value.into_owned_bytes() else {
        return;
    };
    match tx.try_send((msg.channel.to_string(), data)) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(_)) => {
            inner.metrics.redis_dropped(DropReason::BufferFull, 1)
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {
            inner.metrics.redis_dropped(DropReason::NoHandler, 1)
        }
    }
}

/// The state machine behind readiness: connection, subscription, pump and probe.
struct Monitor {
    driver: RedisDriver,
    /// This node's probe channel; on a cluster, the base name of one per hash slot.
    probe_chan: String,
    /// The probe channels by hash slot (one without sharding): every slot an adapter channel
    /// is in has one, so a probe round proves every master this node listens to.
    probe_chans: BTreeMap<u16, String>,
    probe_tx: mpsc::Sender<ChanItem>,
    probe_rx: mpsc::Receiver<ChanItem>,
    pump: Option<tokio::task::JoinHandle<()>>,
    connected: bool,
    subscribed: bool,
    /// Wait before retrying a failed resubscription.
    resubscribe_after: Instant,
    probe_seq: u64,
    /// The probe round in flight.
    probe_sent: Option<ProbeRound>,
    /// Since when Redis answers this node while the node cannot hear (a SUBSCRIBE refused by
    /// Redis, or an acknowledged probe lost); cleared by a probe heard or a lost connection.
    deaf_since: Option<Instant>,
    next_probe: Instant,
    dropped_seen: u64,
    /// Set by the first successful subscription: later connections count as reconnects.
    subscribed_once: bool,
    /// On a cluster: the master of each wanted channel's slot (fred's slot map) when the
    /// channels were last subscribed; a different map means a subscription is on the wrong node.
    subscribed_routes: BTreeMap<u16, String>,
    next_cluster_sync: Instant,
    /// Set by a connection error, cleared by the next successful connection.
    lost_since: Option<Instant>,
    last_error: Option<String>,
    last_down_log: Option<Instant>,
}

/// One probe round: the same sequence number published on every probe channel.
struct ProbeRound {
    seq: u64,
    sent: Instant,
    /// The probe channels not heard back yet.
    pending: HashSet<String>,
    /// The probe channels whose PUBLISH Redis acknowledged (then losing the probe means this
    /// node cannot hear, not an outage).
    acked: HashSet<String>,
}

impl Monitor {
    fn new(
        driver: RedisDriver,
        probe_chan: String,
        probe_tx: mpsc::Sender<ChanItem>,
        probe_rx: mpsc::Receiver<ChanItem>,
    ) -> Self {
        let now = Instant::now();
        let probe_chans =
            BTreeMap::from([(redis_keyslot(probe_chan.as_bytes()), probe_chan.clone())]);
        Self {
            driver,
            probe_chan,
            probe_chans,
            probe_tx,
            probe_rx,
            pump: None,
            connected: false,
            subscribed: false,
            resubscribe_after: now,
            probe_seq: 0,
            probe_sent: None,
            deaf_since: None,
            next_probe: now,
            dropped_seen: 0,
            subscribed_once: false,
            subscribed_routes: BTreeMap::new(),
            next_cluster_sync: now,
            lost_since: None,
            last_error: None,
            last_down_log: None,
        }
    }

    async fn run(mut self) {
        let inner = self.driver.inner.clone();
        let mut reconnects = inner.client.reconnect_rx();
        let mut cluster_changes = inner.client.cluster_change_rx();
        let mut errors = inner.client.error_rx();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if inner.closing.load(std::sync::atomic::Ordering::Relaxed) {
                return;
            }
            tokio::select! {
                _ = tick.tick() => {}
                _ = inner.resubscribe.notified() => self.subscribed = false,
                ev = reconnects.recv() => match ev {
                    Ok(server) => self.connected_to(&server.to_string()),
                    Err(broadcast::error::RecvError::Lagged(_)) => self.subscribed = false,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                // A cluster's slot map was read again (after a lost connection, a MOVED reply
                // or by `step`): a channel's slot may have moved to a master where this node
                // has no subscription yet.
                ev = cluster_changes.recv() => match ev {
                    Ok(changes) => {
                        debug!(?changes, "redis cluster slot map re-read");
                        self.check_routes();
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => self.subscribed = false,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                // fred reports a dropped connection here at once, but keeps its state at
                // `Connected` until its first reconnect attempt: go local immediately.
                ev = errors.recv() => match ev {
                    Ok((e, _)) => {
                        debug!("redis connection error: {e}");
                        self.lost_since.get_or_insert_with(Instant::now);
                        self.last_error = Some(e.to_string());
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        self.lost_since.get_or_insert_with(Instant::now);
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                Some((chan, data)) = self.probe_rx.recv() => self.probe_answered(&chan, &data),
            }
            self.step(&mut reconnects).await;
        }
    }

    /// A new connection (to the server, or to one cluster master) has none of the old
    /// subscriptions.
    fn connected_to(&mut self, server: &str) {
        if self.subscribed_once {
            self.driver.inner.metrics.redis_reconnects.inc();
        }
        info!(%server, "redis connected");
        self.subscribed = false;
        self.lost_since = None;
    }

    /// On a cluster: the master of each wanted channel's slot in fred's slot map (empty without
    /// one).
    fn routes(&self) -> BTreeMap<u16, String> {
        let Some(map) = self.driver.inner.client.cached_cluster_state() else {
            return BTreeMap::new();
        };
        self.driver
            .channels()
            .iter()
            .map(|c| redis_keyslot(c.as_bytes()))
            .filter_map(|slot| Some((slot, map.get_server(slot)?.to_string())))
            .collect()
    }

    /// On a cluster: resubscribes when a wanted channel's slot has another master than when
    /// the channels were subscribed (a failover, a resharding).
    fn check_routes(&mut self) {
        if !self.driver.inner.sharded || !self.subscribed {
            return;
        }
        let routes = self.routes();
        if routes != self.subscribed_routes {
            info!(
                before = ?self.subscribed_routes,
                now = ?routes,
                "redis cluster: a channel's slot has another master; resubscribing"
            );
            self.subscribed = false;
        }
    }

    /// On a cluster: a probe channel for every hash slot an adapter channel is in (added to
    /// the wanted channels). Returns whether one was added.
    fn ensure_probe_channels(&mut self) -> bool {
        if !self.driver.inner.sharded {
            return false;
        }
        let slots: Vec<u16> = self
            .driver
            .channels()
            .iter()
            .filter(|c| !c.starts_with(&self.probe_chan))
            .map(|c| redis_keyslot(c.as_bytes()))
            .filter(|slot| !self.probe_chans.contains_key(slot))
            .collect();
        for slot in &slots {
            let chan = probe_channel_for_slot(&self.probe_chan, *slot);
            self.driver
                .handlers()
                .insert(chan.clone(), self.probe_tx.clone());
            self.probe_chans.insert(*slot, chan);
        }
        !slots.is_empty()
    }

    async fn step(&mut self, reconnects: &mut broadcast::Receiver<fred::prelude::Server>) {
        let inner = self.driver.inner.clone();
        if inner.closing.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        // fred reports every connection before it reports the client connected: with the state
        // read first, every connection made until then is handled here, before subscribing (a
        // cluster's first connections, one per master, then do not count as reconnects).
        let fred_connected = inner.client.is_connected();
        loop {
            match reconnects.try_recv() {
                Ok(server) => self.connected_to(&server.to_string()),
                Err(broadcast::error::TryRecvError::Lagged(_)) => self.subscribed = false,
                Err(_) => break,
            }
        }
        if self.ensure_probe_channels() {
            self.subscribed = false;
        }
        let (health, metrics) = (&inner.health, &inner.metrics);

        // The pump: start it, or restart it if it ever ended.
        if self.pump.as_ref().is_none_or(|p| p.is_finished()) {
            if self.pump.is_some() {
                warn!("redis pub/sub pump had stopped; restarting it");
                metrics.redis_pump_restarts.inc();
            }
            let rx = inner.client.message_rx();
            self.pump = Some(tokio::spawn(pump(rx, self.driver.clone())));
        }
        health.set_pump_alive(true);

        // After a connection error, trust fred's `Connected` again only once it reconnected,
        // or after LOST_GRACE (so a missed reconnect event cannot keep the node local-only).
        if self.lost_since.is_some_and(|t| t.elapsed() >= LOST_GRACE) {
            self.lost_since = None;
        }
        let lost = self.lost_since.is_some();
        let connected = fred_connected && !lost;
        if connected != self.connected {
            if connected {
                info!("redis connection up; subscribing");
            } else {
                warn!("redis connection lost; serving local clients only until it returns");
            }
            self.connected = connected;
            self.subscribed = false;
        }
        health.set_redis_connected(connected);
        if connected {
            self.last_down_log = None;
        } else if self
            .last_down_log
            .is_none_or(|t| t.elapsed() >= DOWN_LOG_EVERY)
        {
            warn!(
                last_error = self.last_error.as_deref().unwrap_or("none yet"),
                "redis unreachable; retrying (still ready: local delivery only)"
            );
            self.last_down_log = Some(Instant::now());
        }

        if connected && !self.subscribed && Instant::now() >= self.resubscribe_after {
            let channels = self.driver.channels();
            let n = channels.len();
            // The map the SSUBSCRIBEs are routed by (read before: a change meanwhile shows at
            // the next check).
            let routes = if inner.sharded {
                self.routes()
            } else {
                BTreeMap::new()
            };
            match subscribe_all(&inner, channels).await {
                Ok(()) => {
                    info!(
                        channels = n,
                        sharded = inner.sharded,
                        "redis channels subscribed"
                    );
                    self.subscribed = true;
                    self.subscribed_once = true;
                    self.subscribed_routes = routes;
                    // Prove the path right away rather than at the next interval.
                    self.probe_sent = None;
                    self.next_probe = Instant::now();
                }
                Err(SubscribeError::Redis(e)) => {
                    // Refused by Redis (e.g. NOPERM): this node cannot listen while its peers
                    // may. A timeout or an I/O error would be an outage.
                    if redis_answered(&e) {
                        self.deaf_since.get_or_insert_with(Instant::now);
                    }
                    self.subscribe_failed(&e.to_string())
                }
                Err(SubscribeError::TimedOut) => self.subscribe_failed("timed out"),
            }
        }
        if !self.subscribed {
            health.set_probe_ok(false);
            self.probe_sent = None;
        }
        health.set_redis_subscribed(self.subscribed);

        if connected && self.subscribed {
            self.probe().await;
        }
        if inner.sharded && connected && self.subscribed && Instant::now() >= self.next_cluster_sync
        {
            self.next_cluster_sync = Instant::now() + CLUSTER_SYNC_INTERVAL;
            // fred re-reads the map, drops connections to nodes that are no longer masters
            // (their subscriptions go with them) and connects to new ones.
            match tokio::time::timeout(COMMAND_TIMEOUT, inner.client.sync_cluster()).await {
                Ok(Ok(())) => self.check_routes(),
                Ok(Err(e)) => debug!("redis cluster slot map re-read failed: {e}"),
                Err(_) => debug!("redis cluster slot map re-read timed out"),
            }
        }
        if !connected {
            // An outage, not deafness: every node is in the same boat.
            self.deaf_since = None;
        }
        let deaf = self.deaf_since.is_some_and(|t| t.elapsed() >= DEAF_GRACE);
        if deaf != health.snapshot().deaf {
            if deaf {
                warn!(
                    "redis answers this node but the node hears nothing for {DEAF_GRACE:?}: deaf, leaving rotation until it hears again"
                );
            } else {
                info!("node hears redis again; back in rotation");
            }
        }
        health.set_deaf(deaf);
        metrics.redis_deaf.set(i64::from(deaf));

        let dropped = metrics_dropped(metrics);
        if dropped > self.dropped_seen {
            warn!(
                dropped = dropped - self.dropped_seen,
                "redis pub/sub messages dropped before reaching the adapter (see realtime_redis_messages_dropped_total)"
            );
            self.dropped_seen = dropped;
        }

        let snap = health.snapshot();
        metrics.redis_connected.set(i64::from(snap.redis_connected));
        metrics
            .redis_subscribed
            .set(i64::from(snap.redis_subscribed && snap.probe_ok));
    }

    fn subscribe_failed(&mut self, why: &str) {
        warn!("redis SUBSCRIBE failed ({why}); retrying in 1s");
        self.driver
            .inner
            .metrics
            .adapter_error(AdapterOp::Subscribe);
        self.resubscribe_after = Instant::now() + Duration::from_secs(1);
    }

    async fn probe(&mut self) {
        let inner = self.driver.inner.clone();
        let now = Instant::now();
        if let Some(round) = &self.probe_sent {
            if now.duration_since(round.sent) > PROBE_TIMEOUT {
                let acked = round.pending.iter().any(|c| round.acked.contains(c));
                warn!(
                    seq = round.seq,
                    acked,
                    missing = ?round.pending,
                    "redis probe did not come back within {PROBE_TIMEOUT:?}: the node cannot hear Redis; resubscribing"
                );
                if acked {
                    self.deaf_since.get_or_insert(round.sent);
                }
                inner.metrics.redis_probe_failures.inc();
                inner.health.set_probe_ok(false);
                self.probe_sent = None;
                self.subscribed = false;
                inner.health.set_redis_subscribed(false);
            }
            return;
        }
        if now < self.next_probe {
            return;
        }
        self.probe_seq += 1;
        let seq = self.probe_seq;
        let chans: Vec<String> = self.probe_chans.values().cloned().collect();
        self.probe_sent = Some(ProbeRound {
            seq,
            sent: now,
            pending: chans.iter().cloned().collect(),
            acked: HashSet::new(),
        });
        self.next_probe = now + PROBE_INTERVAL;
        // One PUBLISH per probe channel, all at once (a cluster's go to different masters).
        let publishes = chans.iter().map(|chan| {
            let inner = &inner;
            async move {
                let publish = publish(inner, chan.clone(), seq.to_string().into_bytes());
                (chan, tokio::time::timeout(COMMAND_TIMEOUT, publish).await)
            }
        });
        for (chan, res) in futures::future::join_all(publishes).await {
            let acked = match res {
                Ok(Ok(_)) => true,
                // Counted as a probe failure when the timeout passes. An error reply is Redis
                // answering (fred may hand a refused SUBSCRIBE's reply to the next command on
                // the connection, this PUBLISH); a timeout or I/O error is an outage, not
                // deafness.
                Ok(Err(e)) => {
                    debug!(chan, "redis probe publish failed: {e}");
                    redis_answered(&e)
                }
                Err(_) => {
                    debug!(chan, "redis probe publish timed out");
                    false
                }
            };
            if acked
                && let Some(round) = self.probe_sent.as_mut()
                && round.seq == seq
            {
                round.acked.insert(chan.clone());
            }
        }
    }

    fn probe_answered(&mut self, chan: &str, data: &[u8]) {
        let inner = &self.driver.inner;
        let seq = std::str::from_utf8(data)
            .ok()
            .and_then(|s| s.parse::<u64>().ok());
        let Some(round) = self.probe_sent.as_mut() else {
            return;
        };
        if seq != Some(round.seq) || !round.pending.remove(chan) || !round.pending.is_empty() {
            return;
        }
        self.deaf_since = None;
        let rtt = round.sent.elapsed();
        inner.metrics.redis_probe_seconds.set(rtt.as_secs_f64());
        if !inner.health.snapshot().probe_ok {
            info!(?rtt, "redis pub/sub path verified; node is ready");
        }
        inner.health.set_probe_ok(true);
        self.probe_sent = None;
    }
}

/// Whether `e` is a reply from Redis (it is up and refused something), as opposed to a
/// timeout, an I/O error or a cancelled command (it may be down).
fn redis_answered(e: &fred::error::Error) -> bool {
    use fred::error::ErrorKind as K;
    matches!(
        e.kind(),
        K::Auth | K::Unknown | K::InvalidCommand | K::InvalidArgument
    )
}

fn metrics_dropped(m: &Metrics) -> u64 {
    m.redis_dropped_total()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::Mode;
    use fred::{
        prelude::Server,
        types::{MessageKind, Value},
    };

    /// A driver whose client is never connected: enough for the pump and the bookkeeping.
    fn driver() -> RedisDriver {
        driver_with(false)
    }

    fn driver_with(sharded: bool) -> RedisDriver {
        let client = fred::types::Builder::default_centralized().build().unwrap();
        RedisDriver {
            inner: Arc::new(Inner {
                client,
                sharded,
                handlers: RwLock::new(HashMap::new()),
                health: Arc::new(Health::new(Mode::Redis)),
                metrics: Arc::new(Metrics::new("t", "redis")),
                resubscribe: Notify::new(),
                closing: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    fn message(chan: &'static str, value: &'static [u8]) -> Message {
        Message {
            channel: chan.into(),
            kind: MessageKind::Message,
            value: Value::from_static(value),
            server: Server::new("127.0.0.1", 6379),
        }
    }

    fn dropped(d: &RedisDriver) -> String {
        d.inner
            .metrics
            .render()
            .lines()
            .filter(|l| l.starts_with("realtime_redis_messages_dropped_total"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[tokio::test]
    async fn subscribing_while_disconnected_remembers_the_channel() {
        let d = driver();
        let mut stream = d.subscribe("chan-a".into(), 4).await.expect("never fails");
        assert_eq!(d.channels(), vec!["chan-a".to_string()]);
        dispatch(&d.inner, message("chan-a", b"payload"));
        use futures::StreamExt;
        assert_eq!(
            stream.next().await,
            Some(("chan-a".to_string(), b"payload".to_vec()))
        );
        d.unsubscribe("chan-a".into()).await.unwrap();
        assert!(d.channels().is_empty());
        // publishing and counting servers fail fast while Redis is not connected
        assert!(matches!(
            d.publish("x".into(), vec![1]).await,
            Err(DriverError::NotConnected)
        ));
        assert!(matches!(
            d.num_serv("x").await,
            Err(DriverError::NotConnected)
        ));
    }

    #[tokio::test]
    async fn a_nodes_own_request_channel_shares_the_shared_channels_buffer_in_order() {
        use futures::StreamExt;
        let d = driver();
        let mut shared = d.subscribe("realtime-request#/#".into(), 16).await.unwrap();
        let mut own = d
            .subscribe("realtime-request#/#AbCdEf0000000000#".into(), 16)
            .await
            .unwrap();
        use futures::FutureExt;
        assert_eq!(
            own.next().now_or_never(),
            Some(None),
            "the own stream ends at once: its messages go to the shared one"
        );
        let mut chans = d.channels();
        chans.sort();
        assert_eq!(
            chans.len(),
            2,
            "both are subscribed (and resubscribed): {chans:?}"
        );
        for (i, chan) in [
            "realtime-request#/#AbCdEf0000000000#",
            "realtime-request#/#",
            "realtime-request#/#AbCdEf0000000000#",
            "realtime-request#/#",
        ]
        .into_iter()
        .enumerate()
        {
            let v: &'static [u8] = [b"0", b"1", b"2", b"3"][i];
            dispatch(&d.inner, message(chan, v));
        }
        for want in [b"0", b"1", b"2", b"3"] {
            assert_eq!(
                shared.next().await.unwrap().1,
                want.to_vec(),
                "arrival order"
            );
        }
        // any other channel keeps its own buffer
        let mut other = d
            .subscribe("realtime-response#/#x#".into(), 4)
            .await
            .unwrap();
        dispatch(&d.inner, message("realtime-response#/#x#", b"r"));
        assert_eq!(other.next().await.unwrap().1, b"r".to_vec());
    }

    #[tokio::test]
    async fn a_full_buffer_drops_and_counts_without_blocking_other_channels() {
        let d = driver();
        let _slow = d.subscribe("slow".into(), 1).await.unwrap();
        let mut other = d.subscribe("other".into(), 4).await.unwrap();
        dispatch(&d.inner, message("slow", b"1"));
        dispatch(&d.inner, message("slow", b"2")); // buffer of 1 is full
        dispatch(&d.inner, message("other", b"3"));
        dispatch(&d.inner, message("nobody", b"4"));
        use futures::StreamExt;
        assert_eq!(other.next().await.unwrap().1, b"3");
        let text = dropped(&d);
        assert!(text.contains("reason=\"buffer_full\"} 1"), "{text}");
        assert!(text.contains("reason=\"no_handler\"} 1"), "{text}");
        assert_eq!(d.inner.metrics.redis_dropped_total(), 2);
    }

    #[tokio::test]
    async fn the_pump_counts_lag_and_ends_only_when_the_channel_closes() {
        let d = driver();
        let mut sub = d.subscribe("c".into(), 64).await.unwrap();
        let (tx, rx) = broadcast::channel(2);
        // 4 messages into a capacity of 2 before the pump runs: 2 are lost to lag
        for v in [b"1", b"2", b"3", b"4"] {
            tx.send(message("c", v)).unwrap();
        }
        let pump = tokio::spawn(pump(rx, d.clone()));
        use futures::StreamExt;
        assert_eq!(sub.next().await.unwrap().1, b"3");
        assert_eq!(sub.next().await.unwrap().1, b"4");
        assert!(
            dropped(&d).contains("reason=\"lagged\"} 2"),
            "{}",
            dropped(&d)
        );
        assert!(!pump.is_finished());
        drop(tx);
        tokio::time::timeout(Duration::from_secs(1), pump)
            .await
            .expect("pump ends when fred closes its channel")
            .unwrap();
    }

    #[test]
    fn probe_channels_hash_to_the_slot_they_probe() {
        let base = "realtime-probe#QwErTy123#";
        for chan in [
            "realtime-request#/#",
            "realtime-request#/#AbCdEf#",
            "realtime-response#/#AbCdEf#",
        ] {
            let slot = redis_keyslot(chan.as_bytes());
            let probe = probe_channel_for_slot(base, slot);
            assert!(probe.starts_with(base), "{probe}");
            assert_eq!(redis_keyslot(probe.as_bytes()), slot, "{probe} for {chan}");
        }
        // the base itself needs no tag for its own slot
        let own = redis_keyslot(base.as_bytes());
        assert_eq!(probe_channel_for_slot(base, own), base);
        // every slot has a tag, and it is a short one
        for slot in [0, 1, 5461, 10922, 16383] {
            let t = slot_tag(slot);
            assert_eq!(redis_keyslot(t.as_bytes()), slot);
            assert!(t.len() <= 5, "{t}");
        }
    }

    #[tokio::test]
    async fn a_cluster_probes_every_slot_of_the_adapter_channels() {
        let d = driver_with(true);
        let (tx, rx) = mpsc::channel(16);
        let base = "realtime-probe#node1#".to_string();
        d.handlers().insert(base.clone(), tx.clone());
        let mut m = Monitor::new(d.clone(), base.clone(), tx, rx);
        assert!(!m.ensure_probe_channels(), "no adapter channel yet");
        let chans = ["realtime-request#/#", "realtime-response#/#x#"];
        for c in chans {
            let _ = d.subscribe(c.into(), 4).await.unwrap();
        }
        assert!(m.ensure_probe_channels());
        assert!(!m.ensure_probe_channels(), "nothing more to add");
        let mut slots: Vec<u16> = chans
            .iter()
            .chain([&base.as_str()])
            .map(|c| redis_keyslot(c.as_bytes()))
            .collect();
        slots.sort();
        slots.dedup();
        assert_eq!(m.probe_chans.keys().copied().collect::<Vec<_>>(), slots);
        for (slot, chan) in &m.probe_chans {
            assert_eq!(redis_keyslot(chan.as_bytes()), *slot);
            assert!(d.channels().contains(chan), "{chan} is subscribed");
        }

        // A round succeeds only once every slot's probe came back, with its sequence number.
        let probes: Vec<String> = m.probe_chans.values().cloned().collect();
        m.probe_sent = Some(ProbeRound {
            seq: 7,
            sent: Instant::now(),
            pending: probes.iter().cloned().collect(),
            acked: HashSet::new(),
        });
        let health = d.inner.health.clone();
        m.probe_answered(&probes[0], b"6"); // an old round's
        m.probe_answered(&probes[0], b"7");
        m.probe_answered(&probes[0], b"7"); // twice counts once
        assert!(!health.snapshot().probe_ok);
        for p in &probes[1..] {
            m.probe_answered(p, b"7");
        }
        assert!(health.snapshot().probe_ok);
        assert!(m.probe_sent.is_none());
    }

    #[tokio::test]
    async fn without_sharding_one_probe_channel_is_enough() {
        let d = driver();
        let (tx, rx) = mpsc::channel(16);
        let base = "realtime-probe#node1#".to_string();
        d.handlers().insert(base.clone(), tx.clone());
        let mut m = Monitor::new(d.clone(), base.clone(), tx, rx);
        let _ = d.subscribe("realtime-request#/#".into(), 4).await.unwrap();
        assert!(!m.ensure_probe_channels());
        assert_eq!(m.probe_chans.values().collect::<Vec<_>>(), [&base]);
    }
}
