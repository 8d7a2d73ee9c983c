//! Starts the local control plane by hand (etcd, kube-apiserver, kube-controller-manager on
//! loopback, the project's CRDs installed) and keeps it running until Ctrl-C.
//!
//!   rt-control-plane                 prints `export KUBECONFIG=...`; Ctrl-C stops everything
//!   rt-control-plane -- CMD ARGS...  runs CMD against it (KUBECONFIG, PATH with kubectl and
//!                                    helm, RT_CONTROL_PLANE=external set), then stops it and
//!                                    exits with CMD's status: one control plane for a whole
//!                                    test run, e.g. `rt-control-plane -- cargo test`.
//!
//! The binaries come from `e2e/tools/install.sh` (`make control-plane` runs it first).

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use realtime_e2e::control_plane::{self, ControlPlane, Tools};

const USAGE: &str = "usage: rt-control-plane [-- COMMAND [ARGS...]]";

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rt-control-plane: {e:#}");
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

    let tools = Tools::pinned()?;
    if let Some(missing) = tools.first_missing() {
        bail!(
            "{} is missing: run e2e/tools/install.sh first (or `make control-plane`)",
            missing.display()
        );
    }
    let t0 = Instant::now();
    let cp = ControlPlane::start(&tools).await?;
    let timings = cp.timings().expect("started here");
    let mut crds = Vec::new();
    for file in control_plane::project_crd_files()? {
        crds.extend(cp.install_crds(&file).await.map_err(|e| cp.with_logs(e))?);
    }
    let crds_at = t0.elapsed();

    let procs = cp.processes();
    let total: u64 = procs.iter().filter_map(|p| p.rss_bytes).sum();
    eprintln!(
        "control plane {} at {}: /readyz after {:.1?}, controllers after {:.1?}, CRDs served after {:.1?}",
        tools.versions.kubernetes,
        cp.server(),
        timings.ready,
        timings.controllers,
        crds_at
    );
    eprintln!(
        "CRDs: {}",
        if crds.is_empty() {
            "(none in crds/)".into()
        } else {
            crds.join(", ")
        }
    );
    eprintln!(
        "processes: {} (total RSS {} MiB)",
        procs
            .iter()
            .map(|p| format!(
                "{} pid {} {} MiB",
                p.name,
                p.pid,
                p.rss_bytes.unwrap_or(0) >> 20
            ))
            .collect::<Vec<_>>()
            .join(", "),
        total >> 20
    );
    eprintln!(
        "logs: {}",
        cp.log_files()
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let path = format!(
        "{}:{}",
        tools.bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );

    let Some(command) = command else {
        println!(
            "export KUBECONFIG={} RT_CONTROL_PLANE=external PATH={}:\"$PATH\"",
            cp.kubeconfig_path().display(),
            tools.bin_dir.display()
        );
        eprintln!("then e.g. `kubectl apply -f examples/minimal.yaml`; Ctrl-C here stops it");
        return wait_for_stop(&cp).await.map(|()| ExitCode::SUCCESS);
    };

    let mut child = tokio::process::Command::new(&command[0])
        .args(&command[1..])
        .env("KUBECONFIG", cp.kubeconfig_path())
        .env("RT_CONTROL_PLANE", "external")
        .env("PATH", path)
        .spawn()
        .with_context(|| format!("starting {}", command[0]))?;
    let status = tokio::select! {
        s = child.wait() => s?,
        e = watch(&cp) => { let _ = child.kill().await; return Err(e) }
    };
    cp.shutdown();
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
        None => ExitCode::FAILURE,
    })
}

/// Resolves when one of the control plane's processes has died (the error has its logs).
async fn watch(cp: &ControlPlane) -> anyhow::Error {
    loop {
        if let Err(e) = cp.check_alive() {
            return cp.with_logs(e);
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

async fn wait_for_stop(cp: &ControlPlane) -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
        e = watch(cp) => return Err(e),
    }
    eprintln!("stopping the control plane");
    cp.shutdown();
    Ok(())
}
