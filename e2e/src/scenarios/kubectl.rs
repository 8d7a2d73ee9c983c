//! `kubectl` as a user runs it, for both paths: the kind cluster (kubectl from PATH, a context)
//! and the local control plane (the pinned kubectl, its kubeconfig).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

/// Bound for one kubectl call (waits have their own `--timeout`, added to this).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// What a kubectl call printed.
#[derive(Debug, Clone)]
pub struct Output {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Outcome of `kubectl apply` of a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    Accepted(String),
    /// The API server refused it; kubectl's message.
    Rejected(String),
}

/// A kubectl aimed at one cluster and namespace.
#[derive(Debug, Clone)]
pub struct Kubectl {
    program: PathBuf,
    env: Vec<(OsString, OsString)>,
    global_args: Vec<String>,
    namespace: String,
}

impl Kubectl {
    /// `program` with `KUBECONFIG`/other `env`, `global_args` (e.g. `--context kind-x`) before
    /// every command, in `namespace`.
    pub fn new(
        program: PathBuf,
        env: Vec<(OsString, OsString)>,
        global_args: Vec<String>,
        namespace: &str,
    ) -> Self {
        Kubectl {
            program,
            env,
            global_args,
            namespace: namespace.to_string(),
        }
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Runs `kubectl -n NS ARGS` (stdin optional) and returns what it printed, whatever its
    /// exit status.
    pub async fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<Output> {
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(&self.global_args)
            .args(["-n", &self.namespace])
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let shown = format!("kubectl {}", args.join(" "));
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {} ({shown})", self.program.display()))?;
        if let Some(input) = stdin {
            let mut w = child.stdin.take().expect("piped stdin");
            w.write_all(input.as_bytes()).await?;
            drop(w);
        }
        let extra = args
            .iter()
            .find_map(|a| a.strip_prefix("--timeout="))
            .and_then(humantime_secs)
            .unwrap_or(0);
        let limit = CALL_TIMEOUT + Duration::from_secs(extra);
        let out = tokio::time::timeout(limit, child.wait_with_output())
            .await
            .with_context(|| format!("{shown}: no answer within {limit:?}"))??;
        Ok(Output {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Runs a command that must succeed; returns its stdout.
    pub async fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.run(args, None).await?;
        if !out.success {
            bail!(
                "kubectl {} failed: {}{}",
                args.join(" "),
                out.stderr.trim(),
                out.stdout.trim()
            );
        }
        Ok(out.stdout)
    }

    /// `kubectl get ARGS -o json`, parsed.
    pub async fn get_json(&self, args: &[&str]) -> Result<Value> {
        let mut a = vec!["get"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["-o", "json"]);
        let text = self.ok(&a).await?;
        serde_json::from_str(&text)
            .with_context(|| format!("kubectl get {}: not JSON", args.join(" ")))
    }

    /// `kubectl apply -f -` of `manifest`, which must be accepted.
    pub async fn apply_ok(&self, manifest: &str) -> Result<String> {
        match self.apply(manifest).await? {
            Applied::Accepted(out) => Ok(out),
            Applied::Rejected(why) => bail!("kubectl apply was refused: {why}"),
        }
    }

    /// `kubectl apply -f -` of `manifest`: accepted, or rejected with kubectl's message.
    pub async fn apply(&self, manifest: &str) -> Result<Applied> {
        let out = self.run(&["apply", "-f", "-"], Some(manifest)).await?;
        Ok(if out.success {
            Applied::Accepted(out.stdout.trim().to_string())
        } else {
            Applied::Rejected(format!("{}{}", out.stderr.trim(), out.stdout.trim()))
        })
    }
}

/// Seconds of a kubectl `--timeout` value such as `300s` or `5m`.
fn humantime_secs(t: &str) -> Option<u64> {
    let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_parse() {
        assert_eq!(humantime_secs("300s"), Some(300));
        assert_eq!(humantime_secs("5m"), Some(300));
        assert_eq!(humantime_secs("7"), Some(7));
        assert_eq!(humantime_secs("1x"), None);
    }
}
