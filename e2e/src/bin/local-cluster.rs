//! A local cluster in the foreground, the classic socket.io topology without Docker: one
//! redis-server, N realtime-server nodes and nginx in front (ip_hash by default), all on
//! 127.0.0.1. Ctrl-C stops everything. Run through `scripts/local-cluster.sh`, which builds first.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use realtime_e2e::data_plane::{Affinity, Cluster, ClusterConfig, ServerCommand};
use realtime_e2e::require;

#[derive(Parser, Debug)]
#[command(about = "Redis + N realtime-server nodes + nginx on 127.0.0.1, until Ctrl-C")]
struct Args {
    /// Number of server nodes.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// nginx's port: the URL clients use.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Node i listens on BASE_PORT + i (0 = free ports).
    #[arg(long, default_value_t = 3001)]
    base_port: u16,
    /// Redis's port (0 = a free one).
    #[arg(long, default_value_t = 0)]
    redis_port: u16,
    /// nginx stickiness: `ip-hash` (classic) or `cookie` (ingress-nginx style).
    #[arg(long, default_value = "ip-hash")]
    affinity: String,
    /// The realtime-server binary (default: next to this binary).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Run the Node.js reference from this folder (a copy of shared/bench/anchor-node after
    /// `npm ci`) instead of realtime-server.
    #[arg(long)]
    node_reference: Option<PathBuf>,
    /// Extra environment for every node, e.g. `-e AUTH_SECRET=s3cret` (repeatable).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    let server = match (&args.node_reference, &args.server_bin) {
        (Some(dir), _) => ServerCommand::node_reference(dir)?,
        (None, Some(bin)) => ServerCommand::realtime_server(bin.clone()),
        (None, None) => {
            let exe = std::env::current_exe()?;
            let bin = exe.with_file_name("realtime-server");
            if !bin.is_file() {
                bail!(
                    "{} not found: build it (cargo build -p realtime-server) or pass --server-bin",
                    bin.display()
                );
            }
            ServerCommand::realtime_server(bin)
        }
    };
    let affinity = match args.affinity.as_str() {
        "ip-hash" | "ip_hash" => Affinity::IpHash,
        "cookie" => Affinity::cookie(),
        other => bail!("--affinity {other}: expected ip-hash or cookie"),
    };
    let mut cfg = ClusterConfig::new(server, args.nodes).affinity(affinity);
    cfg.nginx_port = Some(args.port);
    cfg.node_base_port = (args.base_port != 0).then_some(args.base_port);
    cfg.redis_port = (args.redis_port != 0).then_some(args.redis_port);
    cfg.nginx_workers = 2;
    // The page the README sends newcomers to (nodes serve socket.io only by default); a later
    // `-e DEMO_PAGE=false` wins.
    cfg = cfg.env("DEMO_PAGE", "true");
    for kv in &args.env {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("-e {kv}: expected KEY=VALUE"))?;
        cfg = cfg.env(k, v);
    }
    let how = "install redis-server and nginx (scripts/deps.sh)";
    let redis = require::find_program("redis-server", &[])
        .with_context(|| format!("redis-server not found: {how}"))?;
    let nginx =
        require::find_program("nginx", &[]).with_context(|| format!("nginx not found: {how}"))?;

    let cluster = Cluster::start(cfg, redis, nginx).await?;
    println!("local cluster up:");
    println!(
        "  open   {}/  (clients connect here; nginx {})",
        cluster.url(),
        args.affinity
    );
    for n in cluster.nodes() {
        println!(
            "  node   {} on http://{} (socket.io), admin http://{} (/healthz /readyz /metrics, POST /api/v1/publish)",
            n.name,
            n.addr(),
            n.admin_addr()
        );
    }
    println!("  redis  {}", cluster.redis_url());
    println!("  logs   {}/logs", cluster.dir().display());
    println!("  pids   {}", cluster.pids());
    println!("Ctrl-C stops everything.");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut reported = 0;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                let exited = cluster.exited_nodes();
                for (name, status) in exited.iter().skip(reported) {
                    eprintln!("node {name} exited ({status}); see {}/logs/{name}.log", cluster.dir().display());
                }
                reported = exited.len();
                if cluster.redis_proc().and_then(|p| p.exited()).is_some()
                    || cluster.nginx_proc().and_then(|p| p.exited()).is_some()
                {
                    eprintln!("redis or nginx exited:{}", cluster.logs(20));
                    break;
                }
            }
        }
    }
    println!("stopping");
    drop(cluster);
    Ok(())
}
