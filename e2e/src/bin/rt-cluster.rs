//! Starts a real single-node Kubernetes cluster on this machine (root only): the control plane,
//! kube-scheduler, a kubelet on containerd, kube-proxy, CoreDNS and Traefik serving Ingresses of
//! class `nginx`, with the project's three images built locally and imported into the node.
//!
//!   rt-cluster                  prints the variables below; Ctrl-C tears everything down
//!   rt-cluster -- CMD ARGS...   runs CMD with them, tears everything down, exits with CMD's status
//!
//! The contract (variables set for CMD):
//!   KUBECONFIG          admin kubeconfig of the cluster
//!   PATH                kubectl and helm (the pinned builds) first
//!   RT_INGRESS_URL      Traefik's HTTP entrypoint (`http://localhost:PORT`; hosts `localhost`
//!                       and `*.localhost` resolve to it)
//!   RT_IMAGE_SERVER     realtime-server image present in the node
//!   RT_IMAGE_OPERATOR   realtime-operator image present in the node
//!   RT_IMAGE_REDIS      Redis image present in the node
//!
//! Parts: `make deps release` (Go-built binaries, Debian packages, release binaries).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use realtime_e2e::node::{NodeParts, RealNode};

const USAGE: &str = "usage: rt-cluster [-- COMMAND [ARGS...]]";

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rt-cluster: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<ExitCode> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match args.split_first() {
        None => None,
        Some((dd, rest)) if dd == "--" && !rest.is_empty() => Some(rest.to_vec()),
        Some((h, _)) if h == "-h" || h == "--help" => {
            println!("{USAGE}");
            return Ok(ExitCode::SUCCESS);
        }
        Some(_) => bail!("{USAGE}"),
    };
    let parts = NodeParts::find().map_err(|what| anyhow::anyhow!("missing: {what}"))?;
    let t0 = Instant::now();
    let node = std::sync::Arc::new(RealNode::start(parts).await?);
    for crd in realtime_e2e::control_plane::project_crd_files()? {
        node.control_plane()
            .install_crds(&crd)
            .await
            .map_err(|e| node.with_logs(e))?;
    }
    // A signal tears down through the same path as the end of a command.
    static NODE: std::sync::OnceLock<std::sync::Arc<RealNode>> = std::sync::OnceLock::new();
    let _ = NODE.set(node.clone());
    extern "C" fn stop() {
        if let Some(n) = NODE.get() {
            n.shutdown();
        }
    }
    realtime_e2e::node::on_signal_run(stop);

    let t = node.timings();
    eprintln!(
        "rt-cluster: ready in {:.1?} (images {:.1?}, control plane {:.1?}, node Ready {:.1?}, DNS/proxy/ingress {:.1?})",
        t0.elapsed(),
        t.images,
        t.control_plane,
        t.node_ready,
        t.all_ready
    );
    let procs = node.processes();
    let total: u64 = procs.iter().filter_map(|p| p.2).sum();
    eprintln!(
        "rt-cluster: processes (RSS {} MiB in all): {}",
        total >> 20,
        procs
            .iter()
            .map(|(n, pid, rss)| format!("{n} pid {pid} {} MiB", rss.unwrap_or(0) >> 20))
            .collect::<Vec<_>>()
            .join(", ")
    );
    eprintln!("rt-cluster: logs in {}", node.log_dir().display());

    let Some(command) = command else {
        let vars = node
            .env()
            .into_iter()
            .map(|(k, v)| {
                if k == "PATH" {
                    format!("PATH={}:\"$PATH\"", node.bin_dir().display())
                } else {
                    format!("{k}={v}")
                }
            })
            .collect::<Vec<_>>()
            .join(" ");
        println!("export {vars}");
        eprintln!("rt-cluster: Ctrl-C tears the cluster down");
        let status = wait_for_stop(&node).await;
        node.shutdown();
        return status.map(|()| ExitCode::SUCCESS);
    };

    let mut child = tokio::process::Command::new(&command[0])
        .args(&command[1..])
        .envs(node.env())
        .spawn()
        .with_context(|| format!("starting {}", command[0]))?;
    let status = tokio::select! {
        s = child.wait() => s?,
        e = watch(&node) => { let _ = child.kill().await; node.shutdown(); return Err(e) }
    };
    node.shutdown();
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
        None => ExitCode::FAILURE,
    })
}

/// Resolves when one of the node's processes has died (the error carries the logs).
async fn watch(node: &RealNode) -> anyhow::Error {
    loop {
        if let Err(e) = node.check_alive() {
            return node.with_logs(e);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn wait_for_stop(node: &RealNode) -> anyhow::Result<()> {
    tokio::select! {
        // SIGINT/SIGTERM/SIGHUP are handled by on_signal_run (teardown, then exit).
        e = watch(node) => Err(e),
    }
}
