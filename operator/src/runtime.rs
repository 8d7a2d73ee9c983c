//! The binary's runtime: CLI, logging, admin HTTP server, leader election, graceful shutdown.
//!
//! `realtime-operator [run] [FLAGS]` runs the controller; `realtime-operator crd` prints the
//! CRD. Every flag has an environment variable (shown by `--help`).
//!
//! Shutdown: SIGTERM or SIGINT stops the controller (in-flight reconciles finish, the Lease is
//! renewed meanwhile), releases the Lease so a standby takes over at once, and exits 0.
//!
//! Stepping down: when no renewal succeeded within the renew deadline (or another replica holds
//! the Lease), the controller's client already refuses writes (see [`crate::leader`]); the run
//! ends at once, without waiting for in-flight reconciles, and the process exits 1 so that the
//! pod restarts as a candidate. All of this happens before a standby may take the Lease over.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use clap::{Args, Parser, Subcommand, ValueEnum};
use kube::Client;
use kube::client::ClientBuilder;
use tokio::sync::watch;

use crate::controller;
use crate::leader::{FenceLayer, LeaderElector, LeaseConfig};
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
    Run(Box<RunArgs>),
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
    /// How long a standby waits after it last saw the Lease change before taking it over
    /// (whole seconds).
    #[arg(long, env = "LEASE_DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    pub lease_duration: Duration,
    /// How long the leader keeps acting without a successful renewal; less than the lease
    /// duration.
    #[arg(long, env = "RENEW_DEADLINE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub renew_deadline: Duration,
    /// How often the leader renews and standbys retry; less than the renew deadline.
    #[arg(long, env = "RETRY_PERIOD", default_value = "2s", value_parser = humantime::parse_duration)]
    pub retry_period: Duration,
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
    let identity = args.identity.clone().unwrap_or_else(hostname);
    let lease_config = args.leader_election.then(|| {
        let namespace = args
            .lease_namespace
            .clone()
            .or_else(pod_namespace)
            .unwrap_or_else(|| "default".into());
        LeaseConfig::new(namespace, args.lease_name.clone(), identity.clone()).with_timings(
            args.lease_duration,
            args.renew_deadline,
            args.retry_period,
        )
    });
    if let Some(cfg) = &lease_config {
        cfg.validate()
            .map_err(|e| anyhow::anyhow!("leader election: {e}"))?;
    }

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

    let kube_config = kube::Config::infer()
        .await
        .context("building the Kubernetes client (in-cluster or KUBECONFIG)")?;
    let client = Client::try_from(kube_config.clone())
        .context("building the Kubernetes client (in-cluster or KUBECONFIG)")?;
    let version = client
        .apiserver_version()
        .await
        .context("reaching the Kubernetes API server")?;
    tracing::info!(server = %version.git_version, "connected to the API server");
    admin.ready.store(true, Ordering::Relaxed);

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        termination_signal().await;
        let _ = stop_tx.send(true);
    });

    // With leader election the controller writes through a client fenced by the leadership;
    // the elector keeps the plain one.
    let (elector, controller_client) = match lease_config {
        Some(cfg) => {
            tracing::info!(lease = %format!("{}/{}", cfg.namespace, cfg.name), %identity,
                lease_duration = ?cfg.lease_duration, renew_deadline = ?cfg.renew_deadline,
                retry_period = ?cfg.retry_period, "waiting for leadership");
            let elector = Arc::new(LeaderElector::new(client.clone(), cfg));
            let fenced = ClientBuilder::try_from(kube_config)
                .context("building the Kubernetes client (in-cluster or KUBECONFIG)")?
                .with_layer(&FenceLayer::new(elector.leadership()))
                .build();
            if !acquire(&elector, &stop_rx).await {
                admin.ready.store(false, Ordering::Relaxed);
                return Ok(());
            }
            tracing::info!(%identity, "became leader");
            (Some(elector), fenced)
        }
        None => (None, client),
    };
    metrics.leader.set(1);

    let config = controller::Config {
        defaults: Defaults {
            server_image: args.default_server_image.clone(),
            redis_image: args.default_redis_image.clone(),
            operator_namespace: pod_namespace(),
        },
        resync: args.resync,
        namespace: args.namespace.clone(),
        instance: Some(identity),
    };
    tracing::info!(namespace = ?config.namespace, server_image = %config.defaults.server_image, "starting the controller");
    let controller = controller::run(
        controller_client,
        config,
        metrics.clone(),
        when_set(&stop_rx),
    );
    let Some(elector) = elector else {
        controller.await;
        admin.ready.store(false, Ordering::Relaxed);
        metrics.leader.set(0);
        tracing::info!("stopped");
        return Ok(());
    };

    let mut renewer = tokio::spawn({
        let elector = elector.clone();
        async move { renew_until_lost(&elector).await }
    });
    tokio::select! {
        () = controller => {}
        lost = &mut renewer => {
            // Writes are already refused; drop the controller (in-flight reconciles included)
            // and exit, so that the pod restarts as a candidate.
            metrics.leader.set(0);
            admin.ready.store(false, Ordering::Relaxed);
            let why = lost.unwrap_or_else(|e| format!("the renewal task failed: {e}"));
            tracing::error!(reason = %why, "lost leadership: stepping down");
            anyhow::bail!("lost leadership ({why}): exiting so that this replica restarts as a candidate");
        }
    }
    renewer.abort();
    let _ = renewer.await;
    admin.ready.store(false, Ordering::Relaxed);
    metrics.leader.set(0);
    match elector.release().await {
        Ok(()) => tracing::info!("released the leader Lease"),
        Err(e) => {
            tracing::warn!(error = %e, "releasing the leader Lease failed; it expires on its own")
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
            _ = tokio::time::sleep(elector.config().retry_period) => {}
            _ = stop.wait_for(|s| *s) => return false,
        }
    }
}

/// Renews every retry period; returns why leadership ended: the renew deadline passed without
/// a successful renewal, or another replica holds the Lease.
async fn renew_until_lost(elector: &LeaderElector) -> String {
    let leadership = elector.leadership();
    let retry = elector.config().retry_period;
    let mut next = tokio::time::Instant::now() + retry;
    loop {
        let Some(until) = leadership.valid_until() else {
            return "another replica holds the Lease".into();
        };
        // Wake at the next attempt, or at the deadline if that comes first.
        tokio::time::sleep_until(next.min(until.into())).await;
        if !leadership.is_leading() {
            return format!(
                "no renewal succeeded within the renew deadline ({:?})",
                elector.config().renew_deadline
            );
        }
        next = tokio::time::Instant::now() + retry;
        match elector.try_acquire_or_renew().await {
            Ok(true) => {}
            Ok(false) => return "another replica holds the Lease".into(),
            Err(e) => tracing::warn!(error = %e, "renewing the leader Lease failed"),
        }
    }
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
        assert_eq!(args.lease_duration, Duration::from_secs(15));
        assert_eq!(args.renew_deadline, Duration::from_secs(10));
        assert_eq!(args.retry_period, Duration::from_secs(2));
    }

    #[tokio::test]
    async fn inconsistent_lease_timings_are_refused_before_anything_starts() {
        let cli = Cli::try_parse_from([
            "realtime-operator",
            "--leader-election",
            "--lease-duration=5s",
            "--renew-deadline=5s",
            "--retry-period=1s",
        ])
        .unwrap();
        let e = run(cli.run).await.unwrap_err();
        assert!(e.to_string().contains("renew deadline"), "{e}");
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
