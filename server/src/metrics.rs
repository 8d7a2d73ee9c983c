//! Prometheus metrics.
//!
//! Every counter the hot path touches is created once at start and kept as a handle, so
//! counting an event is one atomic add (no label lookup, no lock).

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::protocol::EventKind;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    event: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InfoLabels {
    node: String,
    adapter: &'static str,
    version: &'static str,
}

/// What the node emits, for `realtime_events_out_total{kind}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutKind {
    /// The `hello` sent on connect.
    Hello,
    /// A `publish` fanned out (counted once per publish, not per receiver).
    Publish,
    /// A `send` to one socket or to one user's sockets.
    Send,
    /// A publish made through `POST /api/v1/publish`.
    ApiPublish,
    /// An ack answering a client event.
    Ack,
}

impl OutKind {
    const ALL: [OutKind; 5] = [
        Self::Hello,
        Self::Publish,
        Self::Send,
        Self::ApiPublish,
        Self::Ack,
    ];
    fn as_str(self) -> &'static str {
        match self {
            Self::Hello => "hello",
            Self::Publish => "publish",
            Self::Send => "send",
            Self::ApiPublish => "api_publish",
            Self::Ack => "ack",
        }
    }
}

/// Adapter operations that can fail, for `realtime_adapter_errors_total{op}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdapterOp {
    /// A cross-node broadcast could not be published: delivered on this node only.
    Broadcast,
    /// A cross-node presence query failed: answered from this node only.
    Presence,
    /// A Redis SUBSCRIBE failed (retried on the next health tick).
    Subscribe,
    /// A PUBLISH/NUMSUB issued by the adapter failed.
    Publish,
}

impl AdapterOp {
    const ALL: [AdapterOp; 4] = [
        Self::Broadcast,
        Self::Presence,
        Self::Subscribe,
        Self::Publish,
    ];
    fn as_str(self) -> &'static str {
        match self {
            Self::Broadcast => "broadcast",
            Self::Presence => "presence",
            Self::Subscribe => "subscribe",
            Self::Publish => "publish",
        }
    }
}

/// Why a message from Redis was dropped before reaching the adapter.
/// How a `send {to}` left this node (see `route.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendRoute {
    /// The socket is on this node (or was: its id names this node): no Redis.
    Local,
    /// Published on the request channel of the node its id names: one Redis delivery.
    Node,
    /// Broadcast to every node (routing off, connection state recovery on, or an id that names
    /// no node).
    Broadcast,
    /// The named node had no subscriber (gone, or an id made by another version): broadcast.
    Fallback,
}

impl SendRoute {
    const ALL: [SendRoute; 4] = [Self::Local, Self::Node, Self::Broadcast, Self::Fallback];
    fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Node => "node",
            Self::Broadcast => "broadcast",
            Self::Fallback => "fallback",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The pump fell behind fred's broadcast channel.
    Lagged,
    /// The adapter's per-channel buffer was full.
    BufferFull,
    /// A message arrived on a channel nobody listens to (any more).
    NoHandler,
}

impl DropReason {
    const ALL: [DropReason; 3] = [Self::Lagged, Self::BufferFull, Self::NoHandler];
    fn as_str(self) -> &'static str {
        match self {
            Self::Lagged => "lagged",
            Self::BufferFull => "buffer_full",
            Self::NoHandler => "no_handler",
        }
    }
}

/// All metrics of one node.
pub struct Metrics {
    registry: Registry,
    pub connected: Gauge,
    pub connections: Counter,
    pub auth_failures: Counter,
    events_in: [[Counter; 2]; EventKind::ALL.len()],
    events_out: [Counter; OutKind::ALL.len()],
    send_routes: [Counter; SendRoute::ALL.len()],
    /// Emits refused by a socket whose send buffer was full or closed.
    pub delivery_failures: Counter,
    adapter_errors: [Counter; AdapterOp::ALL.len()],
    pub redis_connected: Gauge,
    pub redis_subscribed: Gauge,
    pub redis_reconnects: Counter,
    pub redis_messages: Counter,
    redis_dropped: [Counter; DropReason::ALL.len()],
    pub redis_pump_restarts: Counter,
    pub redis_probe_failures: Counter,
    pub redis_deaf: Gauge,
    pub redis_probe_seconds: Gauge<f64, AtomicU64>,
    pub ready: Gauge,
    pub draining: Gauge,
    /// New sessions refused at MAX_CONNECTIONS (503).
    pub sessions_refused: Counter,
    /// The session cap in force (0: none).
    pub max_connections: Gauge,
    /// Threads of the node's runtime (WORKER_THREADS, or one per CPU).
    pub worker_threads: Gauge,
    /// Connection state recovery (all zero while it is off).
    pub recovery_restored: Counter,
    pub recovery_replayed: Counter,
    pub recovery_refused: Counter,
    pub recovery_unlogged: Counter,
    pub recovery_append_unknown: Counter,
    pub recovery_gaps: Counter,
    pub recovery_session_errors: Counter,
}

impl Metrics {
    /// Registers every metric. `adapter` is `memory` or `redis`.
    pub fn new(node: &str, adapter: &'static str) -> Self {
        let mut r = Registry::with_prefix("realtime");

        let info = Family::<InfoLabels, Gauge>::default();
        info.get_or_create(&InfoLabels {
            node: node.to_owned(),
            adapter,
            version: env!("CARGO_PKG_VERSION"),
        })
        .set(1);
        r.register("node_info", "This node: name, adapter, version", info);

        let connected = Gauge::default();
        r.register(
            "connected_sockets",
            "Sockets connected to this node",
            connected.clone(),
        );
        let connections = Counter::default();
        r.register(
            "connections",
            "Sockets accepted since start",
            connections.clone(),
        );
        let auth_failures = Counter::default();
        r.register(
            "auth_failures",
            "Handshakes refused for a missing or invalid token",
            auth_failures.clone(),
        );

        let fam = Family::<EventLabels, Counter>::default();
        let events_in = EventKind::ALL.map(|k| {
            ["ok", "error"].map(|result| {
                fam.get_or_create(&EventLabels {
                    event: k.as_str(),
                    result,
                })
                .clone()
            })
        });
        r.register(
            "events_in",
            "Client events received, by event and outcome",
            fam,
        );

        let fam = Family::<KindLabels, Counter>::default();
        let events_out =
            OutKind::ALL.map(|k| fam.get_or_create(&KindLabels { kind: k.as_str() }).clone());
        r.register(
            "events_out",
            "Events emitted by this node, by kind (a broadcast counts once, not per receiver)",
            fam,
        );

        let fam = Family::<RouteLabels, Counter>::default();
        let send_routes = SendRoute::ALL.map(|k| {
            fam.get_or_create(&RouteLabels { route: k.as_str() })
                .clone()
        });
        r.register(
            "send_routes",
            "Private messages (send {to}) by how they left this node: local, node (one node's channel), broadcast, fallback (the named node had no subscriber)",
            fam,
        );

        let delivery_failures = Counter::default();
        r.register(
            "delivery_failures",
            "Messages not queued to a local socket because its send buffer was full or closed",
            delivery_failures.clone(),
        );

        let fam = Family::<OpLabels, Counter>::default();
        let adapter_errors =
            AdapterOp::ALL.map(|o| fam.get_or_create(&OpLabels { op: o.as_str() }).clone());
        r.register(
            "adapter_errors",
            "Adapter (Redis) operations that failed, by operation",
            fam,
        );

        let redis_connected = Gauge::default();
        r.register(
            "redis_connected",
            "1 while the Redis connection is up",
            redis_connected.clone(),
        );
        let redis_subscribed = Gauge::default();
        r.register(
            "redis_subscribed",
            "1 while every adapter channel is subscribed and the last probe came back",
            redis_subscribed.clone(),
        );
        let redis_reconnects = Counter::default();
        r.register(
            "redis_reconnects",
            "Redis connections made after the node first subscribed (with a cluster, each new master connection: a failover, a restarted node)",
            redis_reconnects.clone(),
        );
        let redis_messages = Counter::default();
        r.register(
            "redis_messages_received",
            "Pub/sub messages received from Redis",
            redis_messages.clone(),
        );
        let fam = Family::<ReasonLabels, Counter>::default();
        let redis_dropped = DropReason::ALL.map(|d| {
            fam.get_or_create(&ReasonLabels { reason: d.as_str() })
                .clone()
        });
        r.register(
            "redis_messages_dropped",
            "Pub/sub messages dropped before the adapter, by reason",
            fam,
        );
        let redis_pump_restarts = Counter::default();
        r.register(
            "redis_pump_restarts",
            "Times the pub/sub pump task had stopped and was restarted",
            redis_pump_restarts.clone(),
        );
        let redis_probe_failures = Counter::default();
        r.register(
            "redis_probe_failures",
            "Self-addressed pub/sub probes that did not come back in time",
            redis_probe_failures.clone(),
        );
        let redis_deaf = Gauge::default();
        r.register(
            "redis_deaf",
            "1 while Redis answers this node but the node does not hear its subscriptions (not ready)",
            redis_deaf.clone(),
        );
        let redis_probe_seconds = Gauge::<f64, AtomicU64>::default();
        r.register(
            "redis_probe_rtt_seconds",
            "Round trip of the last successful pub/sub probe",
            redis_probe_seconds.clone(),
        );

        let ready = Gauge::default();
        r.register("ready", "1 while /readyz answers 200", ready.clone());
        let draining = Gauge::default();
        r.register("draining", "1 once shutdown has begun", draining.clone());
        let sessions_refused = Counter::default();
        r.register(
            "sessions_refused",
            "New socket.io sessions refused with 503 because the node holds MAX_CONNECTIONS",
            sessions_refused.clone(),
        );
        let max_connections = Gauge::default();
        r.register(
            "max_connections",
            "Most socket.io sessions this node takes (0: no cap)",
            max_connections.clone(),
        );
        let worker_threads = Gauge::default();
        r.register(
            "worker_threads",
            "Threads of the node's runtime (WORKER_THREADS, or one per CPU)",
            worker_threads.clone(),
        );

        let mut counter = |name: &str, help: &str| {
            let c = Counter::default();
            r.register(name, help, c.clone());
            c
        };
        let recovery_restored = counter(
            "recovery_restored",
            "Sessions restored for a reconnecting client (socket.recovered === true)",
        );
        let recovery_replayed = counter(
            "recovery_replayed",
            "Missed packets replayed to restored sockets",
        );
        let recovery_refused = counter(
            "recovery_refused",
            "Session claims refused (unknown or expired pid, bad offset, trimmed log, other user): clean session",
        );
        let recovery_unlogged = counter(
            "recovery_unlogged",
            "Messages delivered on this node only, without an offset, because the log was unreachable",
        );
        let recovery_append_unknown = counter(
            "recovery_append_unknown",
            "Messages whose append to the log timed out or lost its connection: delivered (once, with an offset) only if Redis ran it",
        );
        let recovery_gaps = counter(
            "recovery_gaps",
            "Sequence gaps in the log's pub/sub stream, filled from the log",
        );
        let recovery_session_errors = counter(
            "recovery_session_errors",
            "Session writes or expiry refreshes that failed",
        );

        Self {
            registry: r,
            connected,
            connections,
            auth_failures,
            events_in,
            events_out,
            send_routes,
            delivery_failures,
            adapter_errors,
            redis_connected,
            redis_subscribed,
            redis_reconnects,
            redis_messages,
            redis_dropped,
            redis_pump_restarts,
            redis_probe_failures,
            redis_deaf,
            redis_probe_seconds,
            ready,
            recovery_restored,
            recovery_replayed,
            recovery_refused,
            recovery_unlogged,
            recovery_append_unknown,
            recovery_gaps,
            recovery_session_errors,
            draining,
            sessions_refused,
            max_connections,
            worker_threads,
        }
    }

    #[inline]
    pub fn event_in(&self, kind: EventKind, ok: bool) {
        let i = EventKind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        self.events_in[i][usize::from(!ok)].inc();
    }

    #[inline]
    pub fn send_route(&self, route: SendRoute) {
        let i = SendRoute::ALL.iter().position(|k| *k == route).unwrap_or(0);
        self.send_routes[i].inc();
    }

    #[inline]
    pub fn event_out(&self, kind: OutKind) {
        let i = OutKind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        self.events_out[i].inc();
    }

    #[inline]
    pub fn adapter_error(&self, op: AdapterOp) {
        let i = AdapterOp::ALL.iter().position(|o| *o == op).unwrap_or(0);
        self.adapter_errors[i].inc();
    }

    #[inline]
    pub fn redis_dropped(&self, reason: DropReason, n: u64) {
        let i = DropReason::ALL
            .iter()
            .position(|d| *d == reason)
            .unwrap_or(0);
        self.redis_dropped[i].inc_by(n);
    }

    /// Messages from Redis dropped so far, all reasons together.
    pub fn redis_dropped_total(&self) -> u64 {
        self.redis_dropped.iter().map(Counter::get).sum()
    }

    /// The OpenMetrics text exposition (Prometheus reads it).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Content type of [`Metrics::render`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{text}"))
    }

    #[test]
    fn renders_every_family_with_values() {
        let m = Metrics::new("n1", "redis");
        m.connected.set(3);
        m.event_in(EventKind::Publish, true);
        m.event_in(EventKind::Publish, true);
        m.event_in(EventKind::Join, false);
        m.event_out(OutKind::Hello);
        m.adapter_error(AdapterOp::Broadcast);
        m.redis_dropped(DropReason::Lagged, 7);
        m.redis_connected.set(1);
        m.ready.set(1);
        let text = m.render();
        assert_eq!(
            line(&text, "realtime_connected_sockets "),
            "realtime_connected_sockets 3"
        );
        assert_eq!(
            line(
                &text,
                "realtime_events_in_total{event=\"publish\",result=\"ok\"}"
            ),
            "realtime_events_in_total{event=\"publish\",result=\"ok\"} 2"
        );
        assert_eq!(
            line(
                &text,
                "realtime_events_in_total{event=\"join\",result=\"error\"}"
            ),
            "realtime_events_in_total{event=\"join\",result=\"error\"} 1"
        );
        // pre-created series show up at zero, so rates work from the first scrape
        assert_eq!(
            line(
                &text,
                "realtime_events_in_total{event=\"presence\",result=\"ok\"}"
            ),
            "realtime_events_in_total{event=\"presence\",result=\"ok\"} 0"
        );
        assert!(text.contains("realtime_events_out_total{kind=\"hello\"} 1"));
        assert!(text.contains("realtime_adapter_errors_total{op=\"broadcast\"} 1"));
        assert!(text.contains("realtime_redis_messages_dropped_total{reason=\"lagged\"} 7"));
        assert!(text.contains("realtime_redis_connected 1"));
        assert!(text.contains("realtime_ready 1"));
        assert!(text.contains("realtime_node_info{node=\"n1\",adapter=\"redis\",version=\""));
        assert!(text.contains("# TYPE realtime_connected_sockets gauge"));
        assert!(text.contains("# TYPE realtime_events_in counter"));
        assert!(text.ends_with("# EOF\n"));
    }
}
