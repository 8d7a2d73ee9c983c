//! The binary's runtime: CLI, logging, admin HTTP server, leader election, graceful shutdown.
//!
//! `realtime-operator [run] [FLAGS]` runs the controller; `realtime-operator crd` prints the
//! CRD. Every flag has an environment variable (shown by `--help`).
//!
//! Shutdown: SIGTERM or SIGINT stops the controller (in-flight reconciles finish), releases the
//! Lease so a standby takes over at once, and exits 0. Losing the Lease (renewals failing for
//! longer than its duration) stops the controller and exits 1, so the pod restarts as a
//! candidate instead of acting without leadership.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use clap::{Args, Parser, Subcommand, ValueEnum};
use kube::Client;
use tokio::sync::watch;

use crate::controller;
use crate::leader::{LeaderElector, LeaseConfig};
use crate::metrics::Metrics;
use crate::validate::Defaults;

/// Default realtime-server image: the one released together with this operator.
pub const DEFAULT_SERVER_IMAGE: &str = concat!(
    "ghcr.io/realtime-operator/realtime-server:",
    env!("CARGO_PKG_VERSION")
);
/// Default image of the managed Redis.
pub const DEFAULT_REDIS_IMAGE: &str = "redis:7.4-alpine";

#[derive(Parser, Debug)]
#[command(
    name = "realtime-operator",
    version,
    about = "Reconciles RealtimeCluster resources (realtime.dev/v1alpha1)"
)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the controller (the default).
    Run(RunArgs),
    /// Print the RealtimeCluster CustomResourceDefinition (YAML) to stdout.
    Crd,
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Server image for clusters whose spec.image is unset.
    #[arg(long, env = "DEFAULT_SERVER_IMAGE", default_value = DEFAULT_SERVER_IMAGE)]
    pub default_server_image: String,
    /// Redis image for managed Redis whose spec.redis.managed.image is unset.
    #[arg(long, env = "DEFAULT_REDIS_IMAGE", default_value = DEFAULT_REDIS_IMAGE)]
    pub default_redis_image: String,
    /// Watch only this namespace (needs only a namespaced Role); all namespaces when unset.
    #[arg(long, env = "WATCH_NAMESPACE")]
    pub namespace: Option<String>,
    /// Address of the admin HTTP server (/healthz, /readyz, /metrics).
    #[arg(long, env = "ADMIN_ADDR", default_value = "0.0.0.0:8080")]
    pub admin_addr: SocketAddr,
    /// Requeue interval of healthy clusters (humantime, e.g. 5m).
    #[arg(long, env = "RESYNC_INTERVAL", default_value = "5m", value_parser = humantime::parse_duration)]
    pub resync: Duration,
    /// Elect a leader through a Lease, so several replicas can run (one acts).
    #[arg(long, env = "LEADER_ELECTION")]
    pub leader_election: bool,
    /// Name of the leader Lease.
    #[arg(long, env = "LEASE_NAME", default_value = "realtime-operator")]
    pub lease_name: String,
    /// Namespace of the leader Lease; the pod's namespace when unset.
    #[arg(long, env = "LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// Identity in the Lease and in Events; the hostname when unset.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global tracing subscriber (level from RUST_LOG, default info).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Shared with the admin server.
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    /// True once the API server answered and until shutdown begins.
    pub ready: AtomicBool,
}

/// The admin router: /healthz (process alive), /readyz (API reachable, not shutting down),
/// /metrics (OpenMetrics text).
pub fn admin_router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(s): State<Arc<AdminState>>| async move {
                if s.ready.load(Ordering::Relaxed) {
                    (StatusCode::OK, "ready")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(s): State<Arc<AdminState>>| async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    s.metrics.encode(),
                )
                    .into_response()
            }),
        )
        .with_state(state)
}

/// Resolves on SIGTERM or SIGINT.
async fn termination_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
    }
}

/// A future that resolves once `rx` sees `true` (Send + Sync, as the Controller requires).
fn when_set(
    rx: &watch::Receiver<bool>,
) -> impl std::future::Future<Output = ()> + Send + Sync + 'static {
    let (tx, done) = tokio::sync::oneshot::channel::<()>();
    let mut rx = rx.clone();
    tokio::spawn(async move {
        let _ = rx.wait_for(|stop| *stop).await;
        let _ = tx.send(());
    });
    async move {
        let _ = done.await;
    }
}

/// Runs the operator until a termination signal (Ok) or the loss of leadership (Err).
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let admin = Arc::new(AdminState {
        metrics: metrics.clone(),
        ready: AtomicBool::new(false),
    });
    let listener = tokio::net::TcpListener::bind(args.admin_addr)
        .await
        .with_context(|| format!("binding the admin server to {}", args.admin_addr))?;
    let bound = listener
        .local_addr()
        .context("reading the admin server's address")?;
    tracing::info!(addr = %bound, "admin server listening");
    let router = admin_router(admin.clone());
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "admin server stopped");
        }
    });

    let client = Client::try_default()
        .await
        .context("building the Kubernetes client (in-cluster or KUBECONFIG)")?;
    let version = client
        .apiserver_version()
        .await
        .context("reaching the Kubernetes API server")?;
    tracing::info!(server = %version.git_version, "connected to the API server");
    admin.ready.store(true, Ordering::Relaxed);

    let identity = args.identity.clone().unwrap_or_else(hostname);
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_on_signal = stop_tx.clone();
    tokio::spawn(async move {
        termination_signal().await;
        let _ = stop_on_signal.send(true);
    });

    let elector = if args.leader_election {
        let namespace = args
            .lease_namespace
            .clone()
            .or_else(pod_namespace)
            .unwrap_or_else(|| "default".into());
        let cfg = LeaseConfig::new(namespace, args.lease_name.clone(), identity.clone());
        tracing::info!(lease = %format!("{}/{}", cfg.namespace, cfg.name), %identity, "waiting for leadership");
        let elector = LeaderElector::new(client.clone(), cfg);
        if !acquire(&elector, &stop_rx).await {
            admin.ready.store(false, Ordering::Relaxed);
            return Ok(());
        }
        tracing::info!(%identity, "became leader");
        Some(Arc::new(elector))
    } else {
        None
    };
    metrics.leader.set(1);

    let lost = Arc::new(AtomicBool::new(false));
    let renewer = elector.clone().map(|elector| {
        let (lost, stop_tx, stop_rx) = (lost.clone(), stop_tx.clone(), stop_rx.clone());
        tokio::spawn(async move { renew_until_lost(&elector, stop_rx, lost, stop_tx).await })
    });

    let config = controller::Config {
        defaults: Defaults {
            server_image: args.default_server_image.clone(),
            redis_image: args.default_redis_image.clone(),
        },
        resync: args.resync,
        namespace: args.namespace.clone(),
        instance: Some(identity),
    };
    tracing::info!(namespace = ?config.namespace, server_image = %config.defaults.server_image, "starting the controller");
    controller::run(client, config, metrics.clone(), when_set(&stop_rx)).await;

    admin.ready.store(false, Ordering::Relaxed);
    metrics.leader.set(0);
    let _ = stop_tx.send(true);
    if let Some(task) = renewer {
        let _ = task.await;
    }
    if lost.load(Ordering::Relaxed) {
        anyhow::bail!(
            "lost the leader Lease: exiting so that this replica restarts as a candidate"
        );
    }
    if let Some(elector) = elector {
        match elector.release().await {
            Ok(()) => tracing::info!("released the leader Lease"),
            Err(e) => {
                tracing::warn!(error = %e, "releasing the leader Lease failed; it expires on its own")
            }
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// Retries until this replica leads (true) or shutdown is requested (false).
async fn acquire(elector: &LeaderElector, stop: &watch::Receiver<bool>) -> bool {
    let mut stop = stop.clone();
    loop {
        match elector.try_acquire_or_renew().await {
            Ok(true) => return true,
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "leader election attempt failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(elector.config().renew_interval) => {}
            _ = stop.wait_for(|s| *s) => return false,
        }
    }
}

/// Renews every interval until shutdown; when no renewal succeeded for a whole lease duration
/// (minus one interval of margin), marks the leadership lost and requests shutdown.
async fn renew_until_lost(
    elector: &LeaderElector,
    mut stop: watch::Receiver<bool>,
    lost: Arc<AtomicBool>,
    stop_tx: watch::Sender<bool>,
) {
    let cfg = elector.config().clone();
    let deadline = cfg.lease_duration.saturating_sub(cfg.renew_interval);
    let mut last_ok = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(cfg.renew_interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        match elector.try_acquire_or_renew().await {
            Ok(true) => last_ok = Instant::now(),
            Ok(false) => {
                tracing::error!("another replica took the leader Lease");
                break;
            }
            Err(e) => {
                tracing::warn!(error = %e, "renewing the leader Lease failed");
                if last_ok.elapsed() < deadline {
                    continue;
                }
                tracing::error!("could not renew the leader Lease in time");
                break;
            }
        }
    }
    lost.store(true, Ordering::Relaxed);
    let _ = stop_tx.send(true);
}

/// An error and its causes on one line, skipping causes whose text the message already holds
/// (kube's errors repeat their sources in their own message).
pub fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "realtime-operator".into())
}

fn pod_namespace() -> Option<String> {
    std::env::var("POD_NAMESPACE")
        .ok()
        .filter(|n| !n.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
                .ok()
                .map(|n| n.trim().to_string())
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_is_the_default_and_flags_parse() {
        let cli = Cli::try_parse_from([
            "realtime-operator",
            "--leader-election",
            "--lease-name=x",
            "--resync=30s",
            "--log-format=json",
        ])
        .unwrap();
        assert!(cli.command.is_none());
        assert!(cli.run.leader_election);
        assert_eq!(cli.run.lease_name, "x");
        assert_eq!(cli.run.resync, Duration::from_secs(30));
        assert_eq!(cli.run.log_format, LogFormat::Json);
        assert!(
            cli.run
                .default_server_image
                .starts_with("ghcr.io/realtime-operator/realtime-server:")
        );

        let cli = Cli::try_parse_from(["realtime-operator", "crd"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Crd)));
        let cli = Cli::try_parse_from(["realtime-operator", "run", "--namespace", "apps"]).unwrap();
        let Some(Command::Run(args)) = cli.command else {
            panic!()
        };
        assert_eq!(args.namespace.as_deref(), Some("apps"));
        assert!(!args.leader_election);
    }

    #[test]
    fn error_chain_skips_repeated_causes() {
        let inner = std::io::Error::other("disk on fire");
        let e = anyhow::Error::new(inner)
            .context("reading x: disk on fire")
            .context("starting");
        assert_eq!(error_chain(&e), "starting: reading x: disk on fire");
        let e = anyhow::anyhow!("root").context("outer");
        assert_eq!(error_chain(&e), "outer: root");
    }

    #[tokio::test]
    async fn admin_endpoints() {
        let state = Arc::new(AdminState {
            metrics: Arc::new(Metrics::default()),
            ready: AtomicBool::new(false),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(axum::serve(listener, admin_router(state.clone())).into_future());
        let get = |path: &'static str| async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get("/readyz").await.starts_with("HTTP/1.1 503"));
        state.ready.store(true, Ordering::Relaxed);
        assert!(get("/readyz").await.starts_with("HTTP/1.1 200"));
        let metrics = get("/metrics").await;
        assert!(metrics.starts_with("HTTP/1.1 200"));
        assert!(metrics.contains("realtime_operator_leader"), "{metrics}");
    }
}
