//! Command line and environment configuration.
//!
//! One clap struct ([`Cli`]) holds the raw flags (every flag has an environment variable);
//! [`Cli::validate`] turns it into [`Settings`], the checked configuration the server runs
//! with. Validation is pure, so every rule is unit tested and a bad deployment fails at start
//! with a message naming the variable, not later at the first connection.

use std::{net::IpAddr, time::Duration};

use clap::{Parser, ValueEnum};

/// A Socket.IO gateway whose events reach clients on every node through Redis.
#[derive(Debug, Clone, Parser)]
#[command(name = "realtime-server", version, about, long_about = None)]
pub struct Cli {
    /// Public listen port: socket.io (plus the demo page and the publish API when enabled).
    #[arg(long, env = "PORT", default_value_t = 3000)]
    pub port: u16,

    /// Admin listen port: /healthz, /readyz, /metrics and POST /api/v1/publish. Keep it off
    /// the public path (no Ingress or load balancer routes to it).
    #[arg(long, env = "ADMIN_PORT", default_value_t = 9090)]
    pub admin_port: u16,

    /// Listen address of both ports.
    #[arg(long, env = "BIND", default_value = "0.0.0.0")]
    pub bind: IpAddr,

    /// Serve the demo chat page at `/` on the public port.
    #[arg(long, env = "DEMO_PAGE", value_parser = parse_switch, default_value = "false", num_args = 0..=1, default_missing_value = "true")]
    pub demo_page: bool,

    /// Also serve `POST /api/v1/publish` on the public port (it is always on the admin port).
    #[arg(long, env = "PUBLIC_PUBLISH_API", value_parser = parse_switch, default_value = "false", num_args = 0..=1, default_missing_value = "true")]
    pub public_publish_api: bool,

    /// Node name announced to clients in `hello` [default: the hostname].
    #[arg(long, env = "NAME")]
    pub name: Option<String>,

    /// Redis URL: `redis://` or `rediss://` (TLS) for one server; `redis-sentinel://` or
    /// `rediss-sentinel://` for a primary found through Sentinel
    /// (`redis-sentinel://SENTINEL[:26379][/DB]?sentinelServiceName=NAME&node=SENTINEL2:PORT...`);
    /// `redis-cluster://` or `rediss-cluster://` for a Redis Cluster (>= 7, sharded pub/sub),
    /// given by seed nodes (`redis-cluster://NODE:PORT?node=NODE2:PORT&node=NODE3:PORT`).
    /// Without it the node runs alone on the in-memory adapter.
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,

    /// Password of the Redis data nodes (the primary and its replicas, or every cluster node);
    /// overrides the password of the URL (for a Kubernetes Secret).
    #[arg(long, env = "REDIS_PASSWORD", hide_env_values = true)]
    pub redis_password: Option<String>,

    /// A file holding the Redis password (a mounted Secret key; one trailing newline is
    /// ignored). Preferred to REDIS_PASSWORD: a file is not inherited by child processes nor
    /// shown with the environment. Read once at startup.
    #[arg(long, env = "REDIS_PASSWORD_FILE", conflicts_with = "redis_password")]
    pub redis_password_file: Option<std::path::PathBuf>,

    /// Password of the Sentinels, with a `redis-sentinel://` URL whose Sentinels require one
    /// (`requirepass` in sentinel.conf); overrides the URL's `sentinelPassword`. Without it the
    /// client sends the Sentinels no AUTH.
    #[arg(long, env = "REDIS_SENTINEL_PASSWORD", hide_env_values = true)]
    pub redis_sentinel_password: Option<String>,

    /// Allowed transports: `polling,websocket` or `websocket` (websocket only).
    #[arg(long, env = "TRANSPORTS", default_value = "polling,websocket")]
    pub transports: String,

    /// Interval between server pings (humantime, e.g. `25s`).
    #[arg(long, env = "PING_INTERVAL", default_value = "25s")]
    pub ping_interval: humantime::Duration,

    /// Time to wait for a pong before the connection is considered dead.
    #[arg(long, env = "PING_TIMEOUT", default_value = "20s")]
    pub ping_timeout: humantime::Duration,

    /// Largest accepted incoming packet in bytes (like socket.io's maxHttpBufferSize).
    #[arg(long, env = "MAX_PAYLOAD", default_value_t = 1_000_000)]
    pub max_payload: u64,

    /// Allowed CORS origins, comma-separated, or `*`. Unset: same-origin only.
    #[arg(long, env = "CORS_ORIGINS")]
    pub cors_origins: Option<String>,

    /// HS256 secret; when set, the handshake `auth: {token}` must be a valid JWT (`sub` = user id).
    #[arg(long, env = "AUTH_SECRET", hide_env_values = true)]
    pub auth_secret: Option<String>,

    /// Bearer key for `POST /api/v1/publish`; the endpoint is disabled without it.
    #[arg(long, env = "API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// URL path of socket.io on the public port (the client's `path` option), e.g.
    /// `/chat/socket.io` behind an Ingress that routes the prefix `/chat`.
    #[arg(long, env = "SOCKETIO_PATH", default_value = "/socket.io")]
    pub socketio_path: String,

    /// Longest time from SIGTERM to exit.
    #[arg(long, env = "SHUTDOWN_GRACE", default_value = "20s")]
    pub shutdown_grace: humantime::Duration,

    /// Transports closed per second while draining after SIGTERM, so that the clients
    /// reconnect to the other nodes gradually; 0 closes them all at once. When the node has
    /// more clients than the grace period allows at this rate, the rate rises to fit.
    #[arg(long, env = "DRAIN_CLOSE_RATE", default_value_t = DEFAULT_DRAIN_CLOSE_RATE)]
    pub drain_close_rate: u64,

    /// Most socket.io sessions this node takes; past it a new session gets 503 (its client
    /// retries, another node takes it). 0: the open-files limit less a reserve of 64 for the
    /// admin port and Redis (at the limit nothing can be accepted, probes included).
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 0)]
    pub max_connections: u64,

    /// How long a new node waits to hear Redis before it turns ready without it (degraded). A
    /// node that joins while Redis works is ready only once subscribed, so it never takes
    /// clients it cannot reach; one that starts during an outage still serves after this.
    #[arg(long, env = "REDIS_STARTUP_GRACE", default_value = "10s")]
    pub redis_startup_grace: humantime::Duration,

    /// How a private message (`send {to}`) to a socket on another node travels: `node` sends
    /// it to that node only (the socket id names its node; one Redis delivery whatever the
    /// number of nodes), `broadcast` to every node, which each check the socket's room (the
    /// behaviour before routing; kept for comparison). With connection state recovery on,
    /// every message goes through the recovery log, which every node reads: `node` then has
    /// no effect.
    #[arg(long, env = "PRIVATE_ROUTING", value_enum, default_value_t = PrivateRouting::Node)]
    pub private_routing: PrivateRouting,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Connection state recovery (socket.io 4.6+): how long a disconnected client can come
    /// back, to any node, and get its id, rooms and the messages it missed (`2m`, `30s`); 0
    /// turns recovery off. Also how long the message log keeps messages.
    #[arg(long, env = "RECOVERY_WINDOW", default_value = "0s")]
    pub recovery_window: humantime::Duration,

    /// The most messages the recovery log keeps (all rooms together), whatever their age.
    #[arg(long, env = "RECOVERY_MAX_PACKETS", default_value_t = DEFAULT_RECOVERY_MAX_PACKETS)]
    pub recovery_max_packets: u64,

    /// Threads that run connections and handlers; 0: one per CPU the process may use (its
    /// cgroup's CPU limit, else every core of the machine). The operator sets it to the pod's
    /// CPU request: threads beyond the cores a node really gets only hand each delivery over
    /// between threads that take turns on the same cores (bench/README.md, "Floor").
    #[arg(long, env = "WORKER_THREADS", default_value_t = 0)]
    pub worker_threads: u64,
}

/// Upper bound of WORKER_THREADS.
pub const MAX_WORKER_THREADS: u64 = 1024;
/// Default of RECOVERY_MAX_PACKETS.
pub const DEFAULT_RECOVERY_MAX_PACKETS: u64 = 10_000;
/// Upper bound of RECOVERY_MAX_PACKETS (a restore reads at most this many entries).
pub const MAX_RECOVERY_MAX_PACKETS: u64 = 1_000_000;
/// Upper bound of RECOVERY_WINDOW.
pub const MAX_RECOVERY_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// Connection state recovery settings (see `recovery.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoverySettings {
    pub window: Duration,
    pub max_packets: u32,
}

/// PRIVATE_ROUTING (see `route.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PrivateRouting {
    /// To the node whose id the socket id carries.
    Node,
    /// To every node.
    Broadcast,
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Which engine.io transports clients may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transports {
    /// HTTP long-polling first, then the upgrade to websocket (socket.io's default).
    PollingAndWebsocket,
    /// Websocket only (clients must pass `transports: ["websocket"]`).
    Websocket,
    /// Long-polling only.
    Polling,
}

/// Cross-origin policy for browsers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cors {
    /// No CORS headers: browsers only allow pages served by this origin.
    SameOrigin,
    /// Any origin (`*`).
    Any,
    /// These exact origins (`scheme://host[:port]`).
    List(Vec<String>),
}

/// The Redis connection the adapter uses.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisSettings {
    /// The URL as given (`redis://`, `rediss://`, `redis-sentinel://`, `rediss-sentinel://`,
    /// `redis-cluster://` or `rediss-cluster://`).
    pub url: String,
    /// What the URL points at.
    pub topology: RedisTopology,
    /// Overrides the password of the URL (the data nodes').
    pub password: Option<String>,
    /// The Sentinels' password (only with [`RedisTopology::Sentinel`]).
    pub sentinel_password: Option<String>,
}

/// How the server finds its Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTopology {
    /// One server at the URL's address.
    Standalone,
    /// The primary of the group `master_name`, as the Sentinels at `sentinels` (`host:port`,
    /// the URL's host first) name it; the client asks them again after every lost connection.
    Sentinel {
        master_name: String,
        sentinels: Vec<String>,
    },
    /// A Redis Cluster, discovered from the seed nodes `seeds` (`host:port`, the URL's host
    /// first); the client follows its slot map (`CLUSTER SLOTS`) and uses sharded pub/sub.
    Cluster { seeds: Vec<String> },
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |p: &Option<String>| p.as_ref().map(|_| "<redacted>");
        f.debug_struct("RedisSettings")
            .field("url", &redact_url(&self.url))
            .field("topology", &self.topology)
            .field("password", &hidden(&self.password))
            .field("sentinel_password", &hidden(&self.sentinel_password))
            .finish()
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub bind: IpAddr,
    pub port: u16,
    pub admin_port: u16,
    /// The demo page at `/` on the public port.
    pub demo_page: bool,
    /// `POST /api/v1/publish` on the public port too.
    pub public_publish_api: bool,
    pub node_name: String,
    pub redis: Option<RedisSettings>,
    pub transports: Transports,
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    pub max_payload: u64,
    pub cors: Cors,
    pub auth_secret: Option<String>,
    pub api_key: Option<String>,
    pub shutdown_grace: Duration,
    /// Transports closed per second while draining (0: all at once).
    pub drain_close_rate: u32,
    /// MAX_CONNECTIONS (0: from the open-files limit, see `limits::session_cap`).
    pub max_connections: u64,
    pub redis_startup_grace: Duration,
    pub private_routing: PrivateRouting,
    pub log_format: LogFormat,
    /// socket.io's request path on the public port (no trailing slash).
    pub socketio_path: String,
    /// Connection state recovery, when RECOVERY_WINDOW is not 0.
    pub recovery: Option<RecoverySettings>,
    /// WORKER_THREADS (None: one per available CPU).
    pub worker_threads: Option<usize>,
}

/// A configuration value that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("WORKER_THREADS must be at most {max}, 0 for one per CPU (got {got})")]
    WorkerThreads { got: u64, max: u64 },
    #[error("ADMIN_PORT must differ from PORT (both {0})")]
    AdminPort(u16),
    #[error(
        "REDIS_URL must start with redis://, rediss://, redis-sentinel://, rediss-sentinel://, redis-cluster:// or rediss-cluster:// (got {0:?})"
    )]
    RedisScheme(String),
    #[error("REDIS_URL has no host")]
    RedisHost,
    #[error("REDIS_PASSWORD_FILE {path}: {error}")]
    PasswordFile { path: String, error: String },
    #[error("REDIS_URL {url:?}: {why}")]
    RedisUrl { url: String, why: String },
    #[error("REDIS_SENTINEL_PASSWORD is set, but REDIS_URL is not a redis-sentinel:// URL")]
    SentinelPasswordWithoutSentinel,
    #[error("TRANSPORTS must be `polling,websocket` or `websocket` (got {0:?})")]
    Transports(String),
    #[error("{name} must be at least {min:?} (got {got:?})")]
    TooShort {
        name: &'static str,
        min: Duration,
        got: Duration,
    },
    #[error("MAX_PAYLOAD must be between 1024 and {max} bytes (got {got})")]
    MaxPayload { got: u64, max: u64 },
    #[error(
        "CORS_ORIGINS entry {0:?} is not an origin like https://example.com (or use `*` alone)"
    )]
    CorsOrigin(String),
    #[error("NAME must be 1 to 63 printable characters (got {0:?})")]
    Name(String),
    #[error("AUTH_SECRET must be at least 16 bytes (got {0})")]
    AuthSecret(usize),
    #[error("API_KEY must be at least 16 bytes (got {0})")]
    ApiKey(usize),
    #[error("SHUTDOWN_GRACE must be between 1s and 1h (got {0:?})")]
    ShutdownGrace(Duration),
    #[error(
        "DRAIN_CLOSE_RATE must be between 0 (no pacing) and {max} closes per second (got {got})"
    )]
    DrainCloseRate { got: u64, max: u32 },
    #[error(
        "SOCKETIO_PATH must be / followed by segments of letters, digits and -._~ separated by single slashes, without a trailing slash (got {0:?})"
    )]
    SocketioPath(String),
    #[error("RECOVERY_WINDOW must be 0 (off) or between 1s and 24h (got {0:?})")]
    RecoveryWindow(Duration),
    #[error("RECOVERY_MAX_PACKETS must be between 1 and {max} (got {got})")]
    RecoveryMaxPackets { got: u64, max: u64 },
}

/// The content of a mounted secret file, without one trailing newline.
fn read_secret_file(path: &std::path::Path) -> Result<String, ConfigError> {
    let failed = |error: String| ConfigError::PasswordFile {
        path: path.display().to_string(),
        error,
    };
    let text = std::fs::read_to_string(path).map_err(|e| failed(e.to_string()))?;
    let text = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(&text);
    if text.is_empty() {
        return Err(failed("is empty".into()));
    }
    Ok(text.to_string())
}

/// Whether `p` is a socket.io path the server can serve and a proxy prefix can match: `/a/b`,
/// no empty segment, no trailing slash, URL-safe characters only.
pub fn valid_socketio_path(p: &str) -> bool {
    p.len() <= 200
        && p.starts_with('/')
        && p[1..].split('/').all(|seg| {
            !seg.is_empty()
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
        })
}

/// Default of DRAIN_CLOSE_RATE: a node with 1000 clients drains in 10 s, well within the
/// default grace period, and the other nodes see about 100 reconnects per second instead of
/// 1000 within a second.
pub const DEFAULT_DRAIN_CLOSE_RATE: u64 = 100;

/// Upper bound for DRAIN_CLOSE_RATE: beyond it pacing makes no difference, the interval (10 µs)
/// being shorter than a close takes (about 11 µs each when 1000 are closed at once).
pub const MAX_DRAIN_CLOSE_RATE: u32 = 100_000;

/// Upper bound for MAX_PAYLOAD: larger packets would let one client pin that much memory per
/// in-flight message on every receiving node.
pub const MAX_PAYLOAD_LIMIT: u64 = 64 << 20;

impl Cli {
    /// Checks every value and resolves the defaults that depend on the machine (the hostname).
    pub fn validate(self) -> Result<Settings, ConfigError> {
        self.validate_with_hostname(hostname)
    }

    /// [`Cli::validate`] with the hostname lookup injected, so tests do not depend on the machine.
    pub fn validate_with_hostname(
        self,
        hostname: impl FnOnce() -> String,
    ) -> Result<Settings, ConfigError> {
        let node_name = match non_empty(self.name) {
            Some(n) => n,
            None => hostname(),
        };
        if node_name.is_empty()
            || node_name.len() > 63
            || node_name
                .chars()
                .any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(ConfigError::Name(node_name));
        }

        // Port 0 (an ephemeral port, for tests) may be given to both.
        if self.admin_port == self.port && self.port != 0 {
            return Err(ConfigError::AdminPort(self.port));
        }

        let sentinel_password = non_empty(self.redis_sentinel_password);
        let redis = match non_empty(self.redis_url) {
            None if sentinel_password.is_some() => {
                return Err(ConfigError::SentinelPasswordWithoutSentinel);
            }
            None => None,
            Some(url) => {
                let topology = validate_redis_url(&url)?;
                if !matches!(topology, RedisTopology::Sentinel { .. })
                    && sentinel_password.is_some()
                {
                    return Err(ConfigError::SentinelPasswordWithoutSentinel);
                }
                let password = match &self.redis_password_file {
                    Some(path) => non_empty(Some(read_secret_file(path)?)),
                    None => non_empty(self.redis_password),
                };
                Some(RedisSettings {
                    url,
                    topology,
                    password,
                    sentinel_password,
                })
            }
        };

        let transports = parse_transports(&self.transports)?;

        let ping_interval: Duration = self.ping_interval.into();
        let ping_timeout: Duration = self.ping_timeout.into();
        let min = Duration::from_millis(100);
        for (name, got) in [
            ("PING_INTERVAL", ping_interval),
            ("PING_TIMEOUT", ping_timeout),
        ] {
            if got < min {
                return Err(ConfigError::TooShort { name, min, got });
            }
        }

        if !(1024..=MAX_PAYLOAD_LIMIT).contains(&self.max_payload) {
            return Err(ConfigError::MaxPayload {
                got: self.max_payload,
                max: MAX_PAYLOAD_LIMIT,
            });
        }

        let cors = match non_empty(self.cors_origins) {
            None => Cors::SameOrigin,
            Some(s) => parse_cors(&s)?,
        };

        let auth_secret = non_empty(self.auth_secret);
        if let Some(s) = &auth_secret
            && s.len() < 16
        {
            return Err(ConfigError::AuthSecret(s.len()));
        }
        let api_key = non_empty(self.api_key);
        if let Some(k) = &api_key
            && k.len() < 16
        {
            return Err(ConfigError::ApiKey(k.len()));
        }

        let shutdown_grace: Duration = self.shutdown_grace.into();
        if shutdown_grace < Duration::from_secs(1) || shutdown_grace > Duration::from_secs(3600) {
            return Err(ConfigError::ShutdownGrace(shutdown_grace));
        }

        let drain_close_rate = u32::try_from(self.drain_close_rate)
            .ok()
            .filter(|r| *r <= MAX_DRAIN_CLOSE_RATE)
            .ok_or(ConfigError::DrainCloseRate {
                got: self.drain_close_rate,
                max: MAX_DRAIN_CLOSE_RATE,
            })?;

        let socketio_path = self.socketio_path.trim().to_string();
        if !valid_socketio_path(&socketio_path) {
            return Err(ConfigError::SocketioPath(socketio_path));
        }

        let recovery = recovery_settings(self.recovery_window.into(), self.recovery_max_packets)?;

        if self.worker_threads > MAX_WORKER_THREADS {
            return Err(ConfigError::WorkerThreads {
                got: self.worker_threads,
                max: MAX_WORKER_THREADS,
            });
        }
        let worker_threads = (self.worker_threads > 0).then_some(self.worker_threads as usize);

        Ok(Settings {
            socketio_path,
            bind: self.bind,
            port: self.port,
            admin_port: self.admin_port,
            demo_page: self.demo_page,
            public_publish_api: self.public_publish_api,
            node_name,
            redis,
            transports,
            ping_interval,
            ping_timeout,
            max_payload: self.max_payload,
            cors,
            auth_secret,
            api_key,
            shutdown_grace,
            drain_close_rate,
            max_connections: self.max_connections,
            redis_startup_grace: self.redis_startup_grace.into(),
            private_routing: self.private_routing,
            log_format: self.log_format,
            recovery,
            worker_threads,
        })
    }
}

/// RECOVERY_WINDOW and RECOVERY_MAX_PACKETS, checked.
fn recovery_settings(
    window: Duration,
    max_packets: u64,
) -> Result<Option<RecoverySettings>, ConfigError> {
    if max_packets == 0 || max_packets > MAX_RECOVERY_MAX_PACKETS {
        return Err(ConfigError::RecoveryMaxPackets {
            got: max_packets,
            max: MAX_RECOVERY_MAX_PACKETS,
        });
    }
    if window.is_zero() {
        return Ok(None);
    }
    if window < Duration::from_secs(1) || window > MAX_RECOVERY_WINDOW {
        return Err(ConfigError::RecoveryWindow(window));
    }
    Ok(Some(RecoverySettings {
        window,
        max_packets: max_packets as u32,
    }))
}

/// A boolean switch: `true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off` (any case); empty counts
/// as unset, i.e. off.
fn parse_switch(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" | "" => Ok(false),
        other => Err(format!("{other:?} is not true or false")),
    }
}

/// Kubernetes and shells often pass unset values as empty strings: treat them as unset.
fn non_empty(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

/// The query parameter of a Sentinel URL that names the monitored group (fred's name).
const SENTINEL_NAME_PARAM: &str = "sentinelServiceName";
/// The query parameter of a Sentinel URL that carries the Sentinels' password (fred's name).
const SENTINEL_PASSWORD_PARAM: &str = "sentinelPassword";

/// Checks a REDIS_URL and says what it points at. The rules are fred's, checked here so that
/// a bad URL fails at start with a message naming the mistake; fred then parses the same URL.
fn validate_redis_url(url: &str) -> Result<RedisTopology, ConfigError> {
    #[derive(PartialEq)]
    enum Scheme {
        Plain,
        Sentinel,
        Cluster,
    }
    let strip = |a: &str, b: &str| url.strip_prefix(a).or_else(|| url.strip_prefix(b));
    let (rest, scheme) = if let Some(r) = strip("redis://", "rediss://") {
        (r, Scheme::Plain)
    } else if let Some(r) = strip("redis-sentinel://", "rediss-sentinel://") {
        (r, Scheme::Sentinel)
    } else if let Some(r) = strip("redis-cluster://", "rediss-cluster://") {
        (r, Scheme::Cluster)
    } else {
        return Err(ConfigError::RedisScheme(redact_url(url)));
    };
    let bad = |why: String| ConfigError::RedisUrl {
        url: redact_url(url),
        why,
    };
    let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = before_query.split_once('/').unwrap_or((before_query, ""));
    let host = authority.rsplit('@').next().unwrap_or_default();
    if host.is_empty() || host.starts_with(':') {
        return Err(ConfigError::RedisHost);
    }
    if !path.is_empty() && path.parse::<u8>().is_err() {
        return Err(bad(format!(
            "the path must be a database number (got /{path})"
        )));
    }
    let topology = if scheme == Scheme::Cluster {
        if host.contains(',') {
            return Err(bad(format!(
                "{host:?}: name further seed nodes as ?node=HOST:PORT&node=HOST:PORT, not with commas"
            )));
        }
        if !path.is_empty() && path != "0" {
            return Err(bad(format!(
                "a Redis Cluster has only database 0 (got /{path})"
            )));
        }
        let first = if host_port(host).is_some() {
            host.to_owned()
        } else if !host.contains(':') {
            format!("{host}:6379")
        } else {
            return Err(bad(format!("{host:?} is not host:port")));
        };
        let mut seeds = vec![first];
        for (k, v) in query.split('&').filter_map(|kv| kv.split_once('=')) {
            match k {
                "node" if host_port(v).is_some() => seeds.push(v.to_owned()),
                "node" => {
                    return Err(bad(format!(
                        "node={v} is not a cluster node's host:port (the port is required)"
                    )));
                }
                _ => {}
            }
        }
        RedisTopology::Cluster { seeds }
    } else if scheme == Scheme::Sentinel {
        let first = if host_port(host).is_some() {
            host.to_owned()
        } else if !host.contains(':') {
            format!("{host}:26379")
        } else {
            return Err(bad(format!("{host:?} is not host:port")));
        };
        let mut sentinels = vec![first];
        let mut master_name = None;
        for (k, v) in query.split('&').filter_map(|kv| kv.split_once('=')) {
            match k {
                SENTINEL_NAME_PARAM if !v.is_empty() => master_name = Some(v.to_owned()),
                "node" if host_port(v).is_some() => sentinels.push(v.to_owned()),
                "node" => {
                    return Err(bad(format!(
                        "node={v} is not a Sentinel's host:port (the port is required)"
                    )));
                }
                _ => {}
            }
        }
        let master_name = master_name.ok_or_else(|| {
            bad(format!(
                "a Sentinel URL needs ?{SENTINEL_NAME_PARAM}=<the monitored master's name>"
            ))
        })?;
        RedisTopology::Sentinel {
            master_name,
            sentinels,
        }
    } else {
        RedisTopology::Standalone
    };
    // The same URL through fred's parser, which the adapter uses: anything it refuses is
    // refused here too, with its reason.
    fred::types::config::Config::from_url(url).map_err(|e| bad(e.details().to_string()))?;
    Ok(topology)
}

/// `host:port` with a non-empty host and a port (pure).
fn host_port(s: &str) -> Option<(&str, u16)> {
    let (h, p) = s.rsplit_once(':')?;
    let port = p.parse::<u16>().ok().filter(|p| *p != 0)?;
    (!h.is_empty()).then_some((h, port))
}

/// The URL with any password replaced (the user info's, and a Sentinel URL's
/// `sentinelPassword`), for logs and errors.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{user}:<redacted>@{host}")
        }
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if k == SENTINEL_PASSWORD_PARAM => format!("{k}=<redacted>"),
                    _ => kv.to_owned(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

fn parse_transports(s: &str) -> Result<Transports, ConfigError> {
    let mut polling = false;
    let mut websocket = false;
    for part in s.split(',').map(str::trim) {
        match part.to_ascii_lowercase().as_str() {
            "polling" if !polling => polling = true,
            "websocket" if !websocket => websocket = true,
            _ => return Err(ConfigError::Transports(s.to_owned())),
        }
    }
    Ok(match (polling, websocket) {
        (true, true) => Transports::PollingAndWebsocket,
        (false, true) => Transports::Websocket,
        (true, false) => Transports::Polling,
        (false, false) => return Err(ConfigError::Transports(s.to_owned())),
    })
}

fn parse_cors(s: &str) -> Result<Cors, ConfigError> {
    if s == "*" {
        return Ok(Cors::Any);
    }
    let mut origins = Vec::new();
    for o in s.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        let o = o.trim_end_matches('/');
        let host = o
            .strip_prefix("https://")
            .or_else(|| o.strip_prefix("http://"))
            .ok_or_else(|| ConfigError::CorsOrigin(o.to_owned()))?;
        let valid = !host.is_empty()
            && !host.contains(['/', '?', '#', '@', '*', ' '])
            && host.is_ascii()
            && !host.chars().any(|c| c.is_ascii_control());
        if !valid {
            return Err(ConfigError::CorsOrigin(o.to_owned()));
        }
        origins.push(o.to_owned());
    }
    if origins.is_empty() {
        return Err(ConfigError::CorsOrigin(s.to_owned()));
    }
    Ok(Cors::List(origins))
}

/// The machine's hostname: `HOSTNAME` (set in every Kubernetes pod), then the kernel's.
fn hostname() -> String {
    if let Some(h) = non_empty(std::env::var("HOSTNAME").ok()) {
        return h;
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .and_then(|h| non_empty(Some(h)))
        .unwrap_or_else(|| "realtime-server".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        let mut all = vec!["realtime-server"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).expect("arguments parse")
    }

    fn settings(args: &[&str]) -> Result<Settings, ConfigError> {
        cli(args).validate_with_hostname(|| "host-1".to_owned())
    }

    #[test]
    fn worker_threads_default_to_one_per_cpu_and_are_bounded() {
        assert_eq!(settings(&[]).unwrap().worker_threads, None);
        assert_eq!(
            settings(&["--worker-threads", "0"]).unwrap().worker_threads,
            None
        );
        assert_eq!(
            settings(&["--worker-threads", "2"]).unwrap().worker_threads,
            Some(2)
        );
        let err = settings(&["--worker-threads", "1025"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "WORKER_THREADS must be at most 1024, 0 for one per CPU (got 1025)"
        );
        assert!(Cli::try_parse_from(["realtime-server", "--worker-threads=-1"]).is_err());
    }

    #[test]
    fn recovery_is_off_by_default_and_bounded() {
        assert_eq!(settings(&[]).unwrap().recovery, None);
        let s = settings(&["--recovery-window", "2m", "--recovery-max-packets", "500"]).unwrap();
        assert_eq!(
            s.recovery,
            Some(RecoverySettings {
                window: Duration::from_secs(120),
                max_packets: 500
            })
        );
        assert_eq!(
            settings(&["--recovery-window", "30s"])
                .unwrap()
                .recovery
                .unwrap()
                .max_packets,
            10_000
        );
        for bad in ["500ms", "25h"] {
            assert!(
                matches!(
                    settings(&["--recovery-window", bad]),
                    Err(ConfigError::RecoveryWindow(_))
                ),
                "{bad}"
            );
        }
        for bad in ["0", "1000001"] {
            assert!(
                matches!(
                    settings(&["--recovery-window", "1m", "--recovery-max-packets", bad]),
                    Err(ConfigError::RecoveryMaxPackets { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_socketio_path_is_a_plain_prefix() {
        assert_eq!(settings(&[]).unwrap().socketio_path, "/socket.io");
        let s = settings(&["--socketio-path", "/chat/socket.io"]).unwrap();
        assert_eq!(s.socketio_path, "/chat/socket.io");
        for bad in ["socket.io", "/chat/", "/a//b", "/a b", "/a?x", "/"] {
            assert!(
                matches!(
                    settings(&["--socketio-path", bad]),
                    Err(ConfigError::SocketioPath(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn defaults_match_the_contract() {
        // Env vars of the test process could leak in through clap's `env`; the ones we read
        // are not set by cargo, and a CI that sets them would be misconfigured anyway.
        let s = settings(&[]).unwrap();
        assert_eq!(s.port, 3000);
        assert_eq!(s.admin_port, 9090);
        assert!(!s.demo_page && !s.public_publish_api);
        assert_eq!(s.bind.to_string(), "0.0.0.0");
        assert_eq!(s.node_name, "host-1");
        assert!(s.redis.is_none());
        assert_eq!(s.transports, Transports::PollingAndWebsocket);
        assert_eq!(s.ping_interval, Duration::from_secs(25));
        assert_eq!(s.ping_timeout, Duration::from_secs(20));
        assert_eq!(s.max_payload, 1_000_000);
        assert_eq!(s.cors, Cors::SameOrigin);
        assert!(s.auth_secret.is_none() && s.api_key.is_none());
        assert_eq!(s.shutdown_grace, Duration::from_secs(20));
        assert_eq!(s.drain_close_rate, 100);
        assert_eq!(s.log_format, LogFormat::Text);
    }

    #[test]
    fn every_flag_parses() {
        let s = settings(&[
            "--port=4001",
            "--admin-port=4002",
            "--demo-page",
            "--public-publish-api=true",
            "--bind=127.0.0.1",
            "--name=n1",
            "--redis-url=rediss://user:pw@redis.example:6380/0",
            "--redis-password=secret",
            "--transports=websocket",
            "--ping-interval=500ms",
            "--ping-timeout=2s",
            "--max-payload=2048",
            "--cors-origins=https://a.example, http://b.example:8080/",
            "--auth-secret=0123456789abcdef",
            "--api-key=fedcba9876543210",
            "--shutdown-grace=5s",
            "--drain-close-rate=0",
            "--log-format=json",
        ])
        .unwrap();
        assert_eq!(s.port, 4001);
        assert_eq!(s.admin_port, 4002);
        assert!(s.demo_page && s.public_publish_api);
        assert_eq!(s.bind.to_string(), "127.0.0.1");
        assert_eq!(s.node_name, "n1");
        let r = s.redis.unwrap();
        assert_eq!(r.url, "rediss://user:pw@redis.example:6380/0");
        assert_eq!(r.password.as_deref(), Some("secret"));
        assert_eq!(s.transports, Transports::Websocket);
        assert_eq!(s.ping_interval, Duration::from_millis(500));
        assert_eq!(s.ping_timeout, Duration::from_secs(2));
        assert_eq!(s.max_payload, 2048);
        assert_eq!(
            s.cors,
            Cors::List(vec![
                "https://a.example".into(),
                "http://b.example:8080".into()
            ])
        );
        assert_eq!(s.shutdown_grace, Duration::from_secs(5));
        assert_eq!(s.drain_close_rate, 0);
        assert_eq!(s.log_format, LogFormat::Json);
    }

    #[test]
    fn empty_values_mean_unset() {
        let s = settings(&[
            "--name=",
            "--redis-url=",
            "--cors-origins=",
            "--auth-secret=",
            "--api-key= ",
        ])
        .unwrap();
        assert_eq!(s.node_name, "host-1");
        assert!(s.redis.is_none());
        assert_eq!(s.cors, Cors::SameOrigin);
        assert!(s.auth_secret.is_none() && s.api_key.is_none());
    }

    #[test]
    fn admin_port_is_its_own() {
        assert_eq!(
            settings(&["--port=4000", "--admin-port=4000"]).unwrap_err(),
            ConfigError::AdminPort(4000)
        );
        assert_eq!(
            settings(&["--admin-port=3000"]).unwrap_err(),
            ConfigError::AdminPort(3000)
        );
        // tests pass 0 (ephemeral) for both
        assert!(settings(&["--port=0", "--admin-port=0"]).is_ok());
    }

    #[test]
    fn switches_take_the_usual_boolean_spellings() {
        for (arg, want) in [
            ("--demo-page", true),
            ("--demo-page=true", true),
            ("--demo-page=1", true),
            ("--demo-page=yes", true),
            ("--demo-page=false", false),
            ("--demo-page=0", false),
            ("--demo-page=off", false),
            ("--demo-page=", false),
            ("--demo-page=TRUE", true),
        ] {
            assert_eq!(settings(&[arg]).unwrap().demo_page, want, "{arg}");
        }
        assert!(Cli::try_parse_from(["realtime-server", "--demo-page=maybe"]).is_err());
    }

    #[test]
    fn redis_url_is_checked() {
        assert_eq!(
            settings(&["--redis-url=http://x:6379"]).unwrap_err(),
            ConfigError::RedisScheme("http://x:6379".into())
        );
        assert_eq!(
            settings(&["--redis-url=redis://"]).unwrap_err(),
            ConfigError::RedisHost
        );
        assert_eq!(
            settings(&["--redis-url=redis://:pw@:6379"]).unwrap_err(),
            ConfigError::RedisHost
        );
        assert!(settings(&["--redis-url=redis://127.0.0.1:6379"]).is_ok());
        assert!(settings(&["--redis-url=redis://:pw@redis/2"]).is_ok());
        let standalone = settings(&["--redis-url=rediss://redis.example"]).unwrap();
        assert_eq!(
            standalone.redis.unwrap().topology,
            RedisTopology::Standalone
        );
        let bad_db = settings(&["--redis-url=redis://h:1/zero"]).unwrap_err();
        assert!(bad_db.to_string().contains("database number"), "{bad_db}");
        // fred's own parser has the last word: a port out of range
        assert!(matches!(
            settings(&["--redis-url=redis://h:70000"]).unwrap_err(),
            ConfigError::RedisUrl { .. }
        ));
    }

    #[test]
    fn sentinel_urls_name_the_master_and_every_sentinel() {
        let s = settings(&[
            "--redis-url=redis-sentinel://:pw@s1:26380/0?sentinelServiceName=mymaster&node=s2:26379&node=10.0.0.3:26381",
            "--redis-sentinel-password=spw",
        ])
        .unwrap();
        let r = s.redis.unwrap();
        assert_eq!(
            r.topology,
            RedisTopology::Sentinel {
                master_name: "mymaster".into(),
                sentinels: vec![
                    "s1:26380".into(),
                    "s2:26379".into(),
                    "10.0.0.3:26381".into()
                ],
            }
        );
        assert_eq!(r.sentinel_password.as_deref(), Some("spw"));
        // the first Sentinel's port defaults to 26379; TLS has its own scheme
        let r = settings(&["--redis-url=rediss-sentinel://s1?sentinelServiceName=m"])
            .unwrap()
            .redis
            .unwrap();
        assert_eq!(
            r.topology,
            RedisTopology::Sentinel {
                master_name: "m".into(),
                sentinels: vec!["s1:26379".into()],
            }
        );
        assert_eq!(r.sentinel_password, None);
    }

    #[test]
    fn sentinel_mistakes_are_named() {
        let err = |url: &str| {
            settings(&[&format!("--redis-url={url}")])
                .unwrap_err()
                .to_string()
        };
        let e = err("redis-sentinel://s1:26379");
        assert!(e.contains("needs ?sentinelServiceName="), "{e}");
        let e = err("redis-sentinel://s1:26379?sentinelServiceName=");
        assert!(e.contains("needs ?sentinelServiceName="), "{e}");
        let e = err("redis-sentinel://s1?sentinelServiceName=m&node=s2");
        assert!(e.contains("node=s2 is not a Sentinel's host:port"), "{e}");
        let e = err("redis-sentinel://s1?sentinelServiceName=m&node=s2:0");
        assert!(e.contains("node=s2:0"), "{e}");
        let e = err("redis-sentinel://?sentinelServiceName=m");
        assert_eq!(e, "REDIS_URL has no host");
        let e = err("redis-clustre://c1:7000");
        assert!(e.starts_with("REDIS_URL must start with"), "{e}");
        // a Sentinel password without Sentinel is a mistake, not something to ignore
        for args in [
            &["--redis-sentinel-password=x"][..],
            &["--redis-url=redis://h", "--redis-sentinel-password=x"][..],
        ] {
            assert_eq!(
                settings(args).unwrap_err(),
                ConfigError::SentinelPasswordWithoutSentinel,
                "{args:?}"
            );
        }
    }

    #[test]
    fn cluster_urls_name_every_seed_node() {
        let s = settings(&[
            "--redis-url=redis-cluster://:pw@c1:7000?node=c2:7001&node=10.0.0.3:7002",
            "--redis-password=data",
        ])
        .unwrap();
        let r = s.redis.unwrap();
        assert_eq!(
            r.topology,
            RedisTopology::Cluster {
                seeds: vec!["c1:7000".into(), "c2:7001".into(), "10.0.0.3:7002".into()]
            }
        );
        assert_eq!(r.password.as_deref(), Some("data"));
        // the port defaults to 6379, TLS has its own scheme, database 0 is the only one
        for url in ["rediss-cluster://c1", "redis-cluster://c1/0"] {
            let r = settings(&[&format!("--redis-url={url}")])
                .unwrap()
                .redis
                .unwrap();
            assert_eq!(
                r.topology,
                RedisTopology::Cluster {
                    seeds: vec!["c1:6379".into()]
                },
                "{url}"
            );
        }
        // fred parses the same URL into a clustered config with every seed
        let cfg = fred::types::config::Config::from_url(
            "redis-cluster://c1:7000?node=c2:7001&node=c3:7002",
        )
        .unwrap();
        assert!(cfg.server.is_clustered());
        let mut hosts: Vec<String> = cfg.server.hosts().iter().map(|h| h.to_string()).collect();
        hosts.sort();
        assert_eq!(hosts, ["c1:7000", "c2:7001", "c3:7002"]);
    }

    #[test]
    fn cluster_mistakes_are_named() {
        let err = |args: &[&str]| settings(args).unwrap_err().to_string();
        let e = err(&["--redis-url=redis-cluster://c1:7000,c2:7001"]);
        assert!(e.contains("?node=HOST:PORT"), "{e}");
        let e = err(&["--redis-url=redis-cluster://c1:7000?node=c2"]);
        assert!(
            e.contains("node=c2 is not a cluster node's host:port"),
            "{e}"
        );
        let e = err(&["--redis-url=redis-cluster://c1:7000/1"]);
        assert!(e.contains("only database 0"), "{e}");
        let e = err(&["--redis-url=redis-cluster://:7000"]);
        assert_eq!(e, "REDIS_URL has no host");
        // Sentinel's password means nothing to a cluster
        assert_eq!(
            settings(&[
                "--redis-url=redis-cluster://c1:7000",
                "--redis-sentinel-password=x"
            ])
            .unwrap_err(),
            ConfigError::SentinelPasswordWithoutSentinel
        );
        assert_eq!(
            redact_url("redis-cluster://u:secret@c1:7000?node=c2:7001"),
            "redis-cluster://u:<redacted>@c1:7000?node=c2:7001"
        );
    }

    #[test]
    fn redis_password_from_a_mounted_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        std::fs::write(&file, "from-file\n").unwrap();
        let arg = format!("--redis-password-file={}", file.display());
        let s = settings(&["--redis-url=redis://h", &arg]).unwrap();
        assert_eq!(s.redis.unwrap().password.as_deref(), Some("from-file"));
        // Both at once is a mistake, not a precedence rule.
        assert!(Cli::try_parse_from(["realtime-server", "--redis-password=pw", &arg]).is_err());
        std::fs::write(&file, "").unwrap();
        assert!(matches!(
            settings(&["--redis-url=redis://h", &arg]),
            Err(ConfigError::PasswordFile { .. })
        ));
        let missing = format!("--redis-password-file={}", dir.path().join("no").display());
        let e = settings(&["--redis-url=redis://h", &missing]).unwrap_err();
        assert!(e.to_string().contains("REDIS_PASSWORD_FILE"), "{e}");
    }

    #[test]
    fn redis_password_never_shows() {
        assert_eq!(
            redact_url("redis://user:hunter2@h:1/0"),
            "redis://user:<redacted>@h:1/0"
        );
        assert_eq!(redact_url("redis://:hunter2@h"), "redis://:<redacted>@h");
        assert_eq!(redact_url("redis://h:1"), "redis://h:1");
        let err = settings(&["--redis-url=http://u:hunter2@h"]).unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let s = settings(&["--redis-url=redis://u:hunter2@h", "--redis-password=pw2"]).unwrap();
        let dbg = format!("{:?}", s.redis.unwrap());
        assert!(!dbg.contains("hunter2") && !dbg.contains("pw2"), "{dbg}");
        // a Sentinel URL's sentinelPassword, and REDIS_SENTINEL_PASSWORD
        assert_eq!(
            redact_url(
                "redis-sentinel://:hunter2@s1:26379/0?sentinelServiceName=m&sentinelPassword=hunter3&node=s2:1"
            ),
            "redis-sentinel://:<redacted>@s1:26379/0?sentinelServiceName=m&sentinelPassword=<redacted>&node=s2:1"
        );
        let s = settings(&[
            "--redis-url=redis-sentinel://s1?sentinelServiceName=m&sentinelPassword=hunter3",
            "--redis-sentinel-password=pw3",
        ])
        .unwrap();
        let dbg = format!("{:?}", s.redis.unwrap());
        assert!(!dbg.contains("hunter3") && !dbg.contains("pw3"), "{dbg}");
        let err = settings(&["--redis-url=redis-sentinel://s1?sentinelPassword=hunter3"])
            .unwrap_err()
            .to_string();
        assert!(!err.contains("hunter3"), "{err}");
    }

    #[test]
    fn transports_accept_the_two_documented_forms() {
        assert_eq!(
            parse_transports("polling,websocket").unwrap(),
            Transports::PollingAndWebsocket
        );
        assert_eq!(
            parse_transports("websocket, polling").unwrap(),
            Transports::PollingAndWebsocket
        );
        assert_eq!(
            parse_transports("websocket").unwrap(),
            Transports::Websocket
        );
        assert_eq!(parse_transports("polling").unwrap(), Transports::Polling);
        for bad in ["", "ws", "websocket,websocket", "polling,", "webtransport"] {
            assert!(parse_transports(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn durations_and_sizes_are_bounded() {
        assert!(matches!(
            settings(&["--ping-interval=10ms"]).unwrap_err(),
            ConfigError::TooShort {
                name: "PING_INTERVAL",
                ..
            }
        ));
        assert!(matches!(
            settings(&["--ping-timeout=0s"]).unwrap_err(),
            ConfigError::TooShort {
                name: "PING_TIMEOUT",
                ..
            }
        ));
        assert!(matches!(
            settings(&["--max-payload=10"]).unwrap_err(),
            ConfigError::MaxPayload { got: 10, .. }
        ));
        assert!(settings(&["--max-payload=100000000"]).is_err());
        assert!(settings(&["--shutdown-grace=0s"]).is_err());
        assert!(settings(&["--shutdown-grace=2h"]).is_err());
        assert_eq!(
            settings(&["--drain-close-rate=100000"])
                .unwrap()
                .drain_close_rate,
            100_000
        );
        for bad in [100_001u64, 1 << 40] {
            assert_eq!(
                settings(&[&format!("--drain-close-rate={bad}")]).unwrap_err(),
                ConfigError::DrainCloseRate {
                    got: bad,
                    max: MAX_DRAIN_CLOSE_RATE
                }
            );
        }
        assert!(Cli::try_parse_from(["realtime-server", "--drain-close-rate=-1"]).is_err());
        // humantime syntax errors are clap errors, reported before validation
        assert!(Cli::try_parse_from(["realtime-server", "--ping-interval=soon"]).is_err());
        assert!(Cli::try_parse_from(["realtime-server", "--log-format=xml"]).is_err());
        assert!(Cli::try_parse_from(["realtime-server", "--bind=localhost"]).is_err());
    }

    #[test]
    fn cors_origins() {
        assert_eq!(parse_cors("*").unwrap(), Cors::Any);
        for bad in [
            "example.com",
            "https://",
            "https://a.example/path",
            "*,https://a",
            "ftp://a",
            ",",
        ] {
            assert!(parse_cors(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn secrets_and_names_are_checked() {
        assert_eq!(
            settings(&["--auth-secret=short"]).unwrap_err(),
            ConfigError::AuthSecret(5)
        );
        assert_eq!(
            settings(&["--api-key=short"]).unwrap_err(),
            ConfigError::ApiKey(5)
        );
        assert!(settings(&["--name=has space"]).is_err());
        assert!(settings(&[&format!("--name={}", "x".repeat(64))]).is_err());
        assert!(settings(&["--name=realtime-7d9f-abcde"]).is_ok());
    }
}
