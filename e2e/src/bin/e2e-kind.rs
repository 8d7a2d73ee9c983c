//! `e2e-kind`: runs the end-to-end scenarios against a RealtimeCluster in a real cluster, through
//! its ingress (Path A). `e2e/kind/run.sh` (`make e2e-kind`) creates the kind cluster, installs
//! ingress-nginx and the operator, applies the example and then runs this; it also works against
//! any cluster where a Ready RealtimeCluster with cookie affinity is reachable at `--url`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Parser;
use realtime_e2e::kind::{KindConfig, KindTarget};
use realtime_e2e::require::find_program;
use realtime_e2e::scenarios::{self, Scenario, Target};
use realtime_e2e::sio::{self, Driver};

#[derive(Parser, Debug)]
#[command(
    name = "e2e-kind",
    about = "Runs the end-to-end scenarios against a RealtimeCluster through its ingress"
)]
struct Args {
    /// kubeconfig context of the cluster (kind names it kind-<cluster>); the current one when unset.
    #[arg(long, env = "RT_E2E_CONTEXT")]
    context: Option<String>,
    /// Namespace of the RealtimeCluster.
    #[arg(long, env = "RT_E2E_NAMESPACE", default_value = "rt-e2e")]
    namespace: String,
    /// metadata.name of the RealtimeCluster.
    #[arg(long, env = "RT_E2E_NAME", default_value = "chat")]
    name: String,
    /// URL of the ingress, as clients reach it.
    #[arg(long, env = "RT_E2E_URL", default_value = "http://localhost:8080")]
    url: String,
    /// kubectl to run.
    #[arg(long, env = "KUBECTL", default_value = "kubectl")]
    kubectl: PathBuf,
    /// Scenarios to run, in order (default: all). Names: hello, room-broadcast, private-message,
    /// presence, scale, rolling-restart, redis-deleted, invalid-rejected.
    #[arg(long = "scenario", value_parser = parse_scenario)]
    scenarios: Vec<Scenario>,
}

fn parse_scenario(s: &str) -> Result<Scenario, String> {
    Scenario::parse(s).ok_or_else(|| {
        let names: Vec<_> = Scenario::ALL.iter().map(|s| s.name()).collect();
        format!("unknown scenario {s:?}; one of {}", names.join(", "))
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(failed) if failed.is_empty() => ExitCode::SUCCESS,
        Ok(failed) => {
            eprintln!(
                "e2e-kind: {} scenario(s) failed: {}",
                failed.len(),
                failed.join(", ")
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("e2e-kind: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs the scenarios; returns the names of those that failed.
async fn run(args: Args) -> Result<Vec<String>> {
    let kubectl = if args.kubectl.components().count() > 1 {
        args.kubectl.clone()
    } else {
        let name = args.kubectl.to_string_lossy().into_owned();
        find_program(&name, &[]).with_context(|| {
            format!(
                "{name} is not on PATH: install kubectl (https://kubernetes.io/docs/tasks/tools/)"
            )
        })?
    };
    let Some(paths) = sio::find_driver() else {
        bail!(
            "the socket.io-client driver is missing: {}",
            sio::DRIVER_HOW_TO
        );
    };
    let cfg = KindConfig {
        kubectl,
        context: args.context.clone(),
        namespace: args.namespace.clone(),
        name: args.name.clone(),
        url: args.url.clone(),
        cookie_affinity: true,
        kubeconfig: None,
    };
    // All clients come from one address here: only cookie affinity spreads them over pods.
    let probe = KindTarget::new(cfg.clone());
    let rtc = probe
        .kubectl()
        .get_json(&["rtc", &args.name])
        .await
        .context("reading the RealtimeCluster (is the cluster up and the example applied?)")?;
    let affinity = rtc["spec"]["ingress"]["affinity"]
        .as_str()
        .unwrap_or("cookie");
    if affinity != "cookie" {
        bail!(
            "rtc/{} uses {affinity} affinity: every client comes from one address here, so only cookie affinity can spread them over pods",
            args.name
        );
    }
    let mut target = KindTarget::new(cfg);
    target.check().await?;
    let driver = Driver::start(&paths)
        .await
        .context("starting the socket.io-client driver")?;

    let list = if args.scenarios.is_empty() {
        Scenario::ALL.to_vec()
    } else {
        args.scenarios
    };
    let n = list.len();
    let mut failed = Vec::new();
    for s in list {
        if scenarios::run(s, &mut target, &driver).await.is_err() {
            failed.push(s.name().to_string());
        }
    }
    println!(
        "e2e-kind: {n} scenario(s) against {}: {}",
        target.describe(),
        if failed.is_empty() {
            "all passed".to_string()
        } else {
            format!("FAILED: {}", failed.join(", "))
        }
    );
    Ok(failed)
}
