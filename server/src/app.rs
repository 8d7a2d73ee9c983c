//! Wiring: settings -> socket.io (memory or Redis adapter) + HTTP routes -> serve -> drain.
//!
//! Two listeners: the public port (socket.io, plus the demo page and the publish API when
//! enabled) and the admin port (probes, metrics, the publish API), which no Ingress routes to.
//! On shutdown the public listener stops accepting at once, while the admin listener keeps
//! answering (`/readyz` 503, metrics) until the process exits.

use std::{future::Future, sync::Arc, time::Duration};

use anyhow::Context;
use axum::serve::ListenerExt as _;
use socketioxide::{
    SocketIo, SocketIoBuilder, TransportType, adapter::Adapter, handler::ConnectHandler,
    layer::SocketIoLayer,
};
use socketioxide_redis::{RedisAdapterConfig, RedisAdapterCtr};
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::{
    adapter::{self, RedisAdapter, RedisDriver},
    auth::Verifier,
    config::{PrivateRouting, Settings, Transports, redact_url},
    handlers::{self, App, NAMESPACE},
    health::{Health, Mode},
    http::{self, HttpState},
    limits,
    metrics::Metrics,
    recovery::{self, Recovery, Store},
    route, shutdown,
};

/// Packets queued per socket before an emit to it fails (socketioxide's default is 128).
/// A 500-event burst must fit even when the receiver's writer falls a little behind; the
/// queue allocates lazily, so the bound costs memory only for a slow receiver.
pub const SOCKET_BUFFER: usize = 4096;

/// Initial read buffer of a websocket connection, and the most tungstenite reads per syscall.
/// Every idle connection keeps this buffer for its lifetime, so engineioxide's 4 KiB default
/// is 3.75 KiB of RSS per idle client. 256 B still reads a typical client event (a join, a
/// publish of a small message) in one syscall; a larger frame takes `len / 256` reads, about
/// 1 µs each (a 1 MB `MAX_PAYLOAD` frame: a few ms of CPU, instead of ~0.2 ms with 4 KiB).
pub const WS_READ_BUFFER: usize = 256;

/// The two listeners of a node.
pub struct Listeners {
    /// socket.io (PORT).
    pub public: TcpListener,
    /// Probes, metrics and the publish API (ADMIN_PORT).
    pub admin: TcpListener,
}

/// The runtime the node runs on: `worker_threads` threads (WORKER_THREADS), else tokio's
/// default of one per CPU the process may use.
pub fn runtime(worker_threads: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = worker_threads {
        builder.worker_threads(n);
    }
    builder.enable_all().build()
}

/// Binds both listeners and runs until SIGTERM/SIGINT, then drains.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let bind = |port: u16, var: &'static str| async move {
        TcpListener::bind((settings.bind, port))
            .await
            .with_context(|| format!("cannot listen on {}:{port} ({var})", settings.bind))
    };
    let listeners = Listeners {
        public: bind(settings.port, "PORT").await?,
        admin: bind(settings.admin_port, "ADMIN_PORT").await?,
    };
    serve(settings, listeners, shutdown::signal()).await
}

/// Serves on `listeners` until `stop` resolves, then shuts down within the grace period.
/// (Tests pass their own `stop` and listeners on port 0.)
pub async fn serve<S>(settings: Settings, listeners: Listeners, stop: S) -> anyhow::Result<()>
where
    S: Future<Output = &'static str> + Send + 'static,
{
    let mode = if settings.redis.is_some() {
        Mode::Redis
    } else {
        Mode::Memory
    };
    let metrics = Arc::new(Metrics::new(
        &settings.node_name,
        match mode {
            Mode::Memory => "memory",
            Mode::Redis => "redis",
        },
    ));
    let health = Arc::new(Health::new(mode).with_startup_grace(settings.redis_startup_grace));
    let verifier = || {
        settings
            .auth_secret
            .as_ref()
            .map(|s| Verifier::new(s.as_bytes()))
    };
    // With Redis, the driver is needed first: the recovery log uses its client.
    let driver = match &settings.redis {
        Some(redis) => Some(RedisDriver::connect(
            redis,
            health.clone(),
            metrics.clone(),
        )?),
        None => None,
    };
    let recovery = settings.recovery.map(|r| match &driver {
        None => Recovery::memory(&r, &settings.node_name, metrics.clone(), verifier()),
        Some(d) => Recovery::redis(
            &r,
            &settings.node_name,
            d.client().clone(),
            d.publish_command(),
            health.clone(),
            metrics.clone(),
            verifier(),
        ),
    });
    // Private-message routing (route.rs): only with Redis (several nodes) and without
    // recovery (a restored socket keeps its id on another node).
    let route = (settings.redis.is_some()
        && recovery.is_none()
        && settings.private_routing == PrivateRouting::Node)
        .then(route::new_tag)
        .and_then(|tag| route::uid_of_tag(&tag).map(|uid| (tag, uid)));
    let app = Arc::new(App {
        node: settings.node_name.clone(),
        route: route.as_ref().map(|(_, uid)| *uid),
        metrics: metrics.clone(),
        health: health.clone(),
        verifier: verifier(),
        recovery: recovery.clone(),
    });

    let mut builder = socketio_builder(&settings).with_state(app.clone());
    if let Some((tag, uid)) = route {
        info!(%uid, "private messages go to the node of their socket (socket ids start with {tag})");
        builder = builder.sid_prefix(tag).server_id(uid);
    }
    if let Some(rec) = &recovery {
        builder = builder.with_connection_state_recovery(Store(rec.clone()));
        info!(
            window = ?settings.recovery.map(|r| r.window),
            "connection state recovery on"
        );
    }
    match driver {
        None => {
            let (layer, io) = builder.build_layer();
            if let Some(rec) = &recovery {
                // One node: the in-memory log delivers to this node's sockets only.
                rec.set_sink(io.clone());
            }
            io.ns(
                NAMESPACE,
                handlers::on_connect::<socketioxide::adapter::LocalAdapter>
                    .with(handlers::authenticate),
            );
            info!(
                node = %settings.node_name,
                "in-memory adapter (no REDIS_URL): this node runs alone"
            );
            run_http(&settings, app, io, layer, listeners, stop, None).await
        }
        Some(driver) => {
            let redis = settings
                .redis
                .as_ref()
                .expect("a driver means Redis settings");
            let monitor = driver.spawn_monitor(&socketioxide_core::Uid::new().to_string());
            let config = RedisAdapterConfig::new()
                .with_prefix(adapter::CHANNEL_PREFIX)
                .with_stream_buffer(adapter::ADAPTER_STREAM_BUFFER)
                .with_request_timeout(adapter::REQUEST_TIMEOUT);
            let ctr = RedisAdapterCtr::new_with_driver(driver.clone(), config);
            let (layer, io) = builder.with_adapter::<RedisAdapter<_>>(ctr).build_layer();
            // The driver never fails a SUBSCRIBE (it retries in the background), so this only
            // fails on a malformed namespace.
            io.ns(
                NAMESPACE,
                handlers::on_connect::<RedisAdapter<_>>.with(handlers::authenticate),
            )
            .await
            .map_err(|e| anyhow::anyhow!("adapter init: {e}"))?;
            info!(
                node = %settings.node_name,
                redis = %redact_url(&redis.url),
                "redis adapter; ready once Redis is connected and subscribed"
            );
            let tasks = match &recovery {
                Some(rec) => Some(start_recovery(rec, &io, &driver).await),
                None => None,
            };
            let res = run_http(&settings, app, io, layer, listeners, stop, Some(&driver)).await;
            monitor.abort();
            if let Some(tasks) = tasks {
                tasks.abort();
            }
            res
        }
    }
}

/// The recovery tasks of a node, aborted on exit.
struct RecoveryTasks(Vec<tokio::task::JoinHandle<()>>);

impl RecoveryTasks {
    fn abort(self) {
        for t in self.0 {
            t.abort();
        }
    }
}

/// Points the log at this node's sockets, follows the log's Redis channel and keeps the
/// connected sessions from expiring.
async fn start_recovery<A: Adapter>(
    rec: &Arc<Recovery>,
    io: &SocketIo<A>,
    driver: &RedisDriver,
) -> RecoveryTasks {
    use futures::StreamExt as _;
    use socketioxide_redis::drivers::Driver as _;
    rec.set_sink(io.clone());
    let mut tasks = vec![tokio::spawn(rec.clone().refresh_loop(io.clone()))];
    // The driver never fails a SUBSCRIBE: it retries until Redis is there, and resubscribes
    // after every reconnection (a message missed meanwhile is read back: sequence gap).
    match driver
        .subscribe(recovery::log_channel(), RECOVERY_STREAM_BUFFER)
        .await
    {
        Ok(stream) => tasks.push(tokio::spawn(
            rec.clone().follow(stream.map(|(_, data)| data)),
        )),
        Err(e) => warn!("cannot follow the recovery log: {e}"),
    }
    RecoveryTasks(tasks)
}

/// Buffer of the log's channel between the pub/sub pump and the log's follower. A message
/// dropped because it is full is read back from the log (sequence gap), so this only bounds
/// how far the follower may lag before it reads from Redis instead.
const RECOVERY_STREAM_BUFFER: usize = 16 * 1024;

fn socketio_builder(s: &Settings) -> SocketIoBuilder {
    let max = usize::try_from(s.max_payload).unwrap_or(usize::MAX);
    let b = SocketIo::builder()
        .req_path(s.socketio_path.clone())
        .ping_interval(s.ping_interval)
        .ping_timeout(s.ping_timeout)
        // polling: per HTTP request body; websocket: per message and per frame
        .max_payload(s.max_payload)
        .ws_max_message_size(max)
        .ws_max_frame_size(max)
        .max_buffer_size(SOCKET_BUFFER)
        .ws_read_buffer_size(WS_READ_BUFFER);
    match s.transports {
        Transports::PollingAndWebsocket => {
            b.transports([TransportType::Polling, TransportType::Websocket])
        }
        Transports::Websocket => b.transports([TransportType::Websocket]),
        Transports::Polling => b.transports([TransportType::Polling]),
    }
}

async fn run_http<A: Adapter, S>(
    settings: &Settings,
    app: Arc<App>,
    io: SocketIo<A>,
    layer: SocketIoLayer<A>,
    listeners: Listeners,
    stop: S,
    driver: Option<&RedisDriver>,
) -> anyhow::Result<()>
where
    S: Future<Output = &'static str> + Send + 'static,
{
    let state = HttpState {
        app: app.clone(),
        io: io.clone(),
        api_key: settings.api_key.clone(),
        shedder: Default::default(),
    };
    let max_body = usize::try_from(settings.max_payload).unwrap_or(usize::MAX);
    let routes = http::PublicRoutes {
        demo_page: settings.demo_page,
        publish_api: settings.public_publish_api,
    };
    let open_files = limits::raise_open_files();
    let cap = limits::session_cap(settings.max_connections, open_files.soft);
    app.metrics
        .max_connections
        .set(cap.map_or(0, |c| i64::try_from(c).unwrap_or(i64::MAX)));
    info!(
        open_files = ?open_files.soft,
        raised_from = ?open_files.raised_from,
        max_connections = ?cap,
        "open-files limit"
    );
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    app.metrics
        .worker_threads
        .set(i64::try_from(workers).unwrap_or(i64::MAX));
    info!(worker_threads = workers, "runtime");
    let gate = http::SessionGate {
        path: settings.socketio_path.as_str().into(),
        cap,
        app: app.clone(),
    };
    let mut router = http::public_router(state.clone(), routes, max_body)
        .layer(layer)
        .layer(axum::middleware::from_fn_with_state(
            gate,
            http::session_gate,
        ));
    if let Some(cors) = http::cors_layer(&settings.cors) {
        router = router.layer(cors);
    }
    let admin_router = http::admin_router(state, max_body);

    let listener = listeners.public;
    let local = listener.local_addr()?;
    let admin_local = listeners.admin.local_addr()?;
    info!(
        %local,
        demo_page = routes.demo_page,
        public_publish_api = routes.publish_api,
        "listening: socket.io on {}/",
        settings.socketio_path
    );
    info!(%admin_local, "admin listening: /healthz /readyz /metrics POST /api/v1/publish");

    let (stop_accepting, accepting_stopped) = tokio::sync::oneshot::channel::<()>();
    // TCP_NODELAY on every accepted connection: without it Nagle's algorithm and the peer's
    // delayed ACK hold small frames (a private message, an ack) for up to ~40 ms. Node's
    // http server sets it too.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            warn!("cannot set TCP_NODELAY on an accepted connection: {e}");
        }
    });
    let server = axum::serve(listener, router).with_graceful_shutdown(async move {
        let _ = accepting_stopped.await;
    });
    let mut server = tokio::spawn(server.into_future());
    // The admin listener outlives the public one: the kubelet reads `/readyz` (503) while
    // the node drains.
    let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin_server =
        axum::serve(listeners.admin, admin_router).with_graceful_shutdown(async move {
            let _ = admin_stopped.await;
        });
    let mut admin_server = tokio::spawn(admin_server.into_future());

    let signal = tokio::select! {
        s = stop => s,
        res = &mut server => {
            admin_server.abort();
            return Err(ended("HTTP server", res));
        }
        res = &mut admin_server => {
            server.abort();
            return Err(ended("admin HTTP server", res));
        }
    };

    let start = tokio::time::Instant::now();
    let deadlines = shutdown::deadlines(start, settings.shutdown_grace);
    app.health.set_draining();
    app.metrics.draining.set(1);
    app.metrics.ready.set(0);
    let sockets = app.metrics.connected.get();
    info!(
        signal,
        sockets,
        grace = ?settings.shutdown_grace,
        "draining: not ready, no new connections, closing transports so clients reconnect elsewhere"
    );

    let _ = stop_accepting.send(());
    if let Some(rec) = &app.recovery {
        // Written through already; saved once more so the newest rooms are in Redis before
        // the clients reconnect elsewhere.
        let saved = tokio::time::timeout_at(deadlines.close_transports, rec.save_all(&io)).await;
        info!(?saved, took = ?start.elapsed(), "sessions saved");
    }
    // Engine.io close for every socket (no socket.io DISCONNECT), a few at a time: the
    // namespace keeps serving the sockets that wait for their turn.
    // Engine.io session ids: a restored socket (connection state recovery) keeps its old
    // socket id on a new engine.io session.
    let sids: Vec<_> = io.sockets().iter().map(|s| s.engine_sid()).collect();
    let window = deadlines
        .close_transports
        .saturating_duration_since(tokio::time::Instant::now());
    let plan = shutdown::close_plan(sids.len(), settings.drain_close_rate, window);
    info!(
        sockets = sids.len(),
        rate = settings.drain_close_rate,
        interval = ?plan.interval,
        expected = ?plan.duration,
        "closing transports"
    );
    let closing = async {
        let closed = engineioxide::drain::close_paced(sids, plan.interval).await;
        info!(closed, took = ?start.elapsed(), "transports closed");
        // Whatever is left (a session that was still in its handshake) closes at once, then
        // the adapter unsubscribes from Redis.
        io.close().await;
    };
    if tokio::time::timeout_at(deadlines.close_transports, closing)
        .await
        .is_err()
    {
        warn!("closing the transports did not finish in time; exiting anyway");
    }
    if let Some(driver) = driver {
        let _ = tokio::time::timeout_at(deadlines.exit, driver.quit()).await;
    }
    match tokio::time::timeout_at(deadlines.exit, &mut server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => warn!("HTTP server ended with an error: {e}"),
        Ok(Err(e)) => warn!("HTTP server task failed: {e}"),
        Err(_) => {
            warn!("open HTTP connections did not finish within the grace period; exiting");
            server.abort();
        }
    }
    let _ = stop_admin.send(());
    let admin_deadline = deadlines
        .exit
        .max(tokio::time::Instant::now() + Duration::from_millis(100));
    if tokio::time::timeout_at(admin_deadline, &mut admin_server)
        .await
        .is_err()
    {
        admin_server.abort();
    }
    info!(took = ?start.elapsed(), "shutdown complete");
    // Give the last log lines a moment to reach stderr.
    tokio::time::sleep(Duration::from_millis(10)).await;
    Ok(())
}

/// The error for a server task that ended before the shutdown signal: an accept loop failure.
fn ended(what: &str, res: Result<std::io::Result<()>, tokio::task::JoinError>) -> anyhow::Error {
    match res {
        Ok(Ok(())) => anyhow::anyhow!("{what} stopped unexpectedly"),
        Ok(Err(e)) => anyhow::Error::new(e).context(format!("{what} failed")),
        Err(e) => anyhow::Error::new(e).context(format!("{what} task failed")),
    }
}

#[cfg(test)]
mod tests {
    use super::runtime;

    #[test]
    fn worker_threads_set_the_runtime_size() {
        assert_eq!(runtime(Some(3)).unwrap().metrics().num_workers(), 3);
        assert_eq!(runtime(Some(1)).unwrap().metrics().num_workers(), 1);
        // None is tokio's own default: TOKIO_WORKER_THREADS, else std's available_parallelism
        // (the CPUs the process may use, its cgroup's CPU quota included).
        if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            assert_eq!(runtime(None).unwrap().metrics().num_workers(), cpus);
        }
    }
}
