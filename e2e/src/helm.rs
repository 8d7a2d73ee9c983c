//! The pinned helm (from `e2e/tools/install.sh`) as the tests run it: a private HOME for its
//! caches and config, the workspace as its working folder, and no cluster unless one is named,
//! so rendering never reaches for the user's. Used by the chart tests and the security scan.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, ensure};
use serde_json::Value;

use crate::control_plane::Tools;
use crate::require::workspace_root;

/// The chart, relative to the workspace root.
pub const CHART: &str = "charts/realtime-operator";

pub struct Helm {
    bin: PathBuf,
    /// A private HOME for helm's caches and config, so tests never touch the user's.
    home: tempfile::TempDir,
    kubeconfig: Option<PathBuf>,
}

impl Helm {
    pub fn new(bin: PathBuf) -> Self {
        Self {
            bin,
            home: tempfile::tempdir().expect("temp dir for helm"),
            kubeconfig: None,
        }
    }

    /// The pinned helm, under the `require` policy (`None`: skip; a panic under CI).
    pub fn require() -> Option<Self> {
        Tools::require_binary("helm").map(Self::new)
    }

    /// Aims the commands at a cluster (admin kubeconfig).
    pub fn with_kubeconfig(mut self, path: &Path) -> Self {
        self.kubeconfig = Some(path.to_path_buf());
        self
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(&self.bin);
        let h = self.home.path();
        c.env("HELM_CACHE_HOME", h.join("cache"))
            .env("HELM_CONFIG_HOME", h.join("config"))
            .env("HELM_DATA_HOME", h.join("data"))
            .current_dir(workspace_root());
        match &self.kubeconfig {
            Some(k) => c.env("KUBECONFIG", k),
            // Rendering only: never reach for the user's cluster.
            None => c.env("KUBECONFIG", "/dev/null"),
        };
        c
    }

    /// `helm template` of the chart as release `rt` with `--set` pairs; returns the rendered
    /// objects.
    pub fn template(&self, namespace: &str, sets: &[&str]) -> Result<Vec<Value>> {
        let args: Vec<&str> = sets.iter().flat_map(|s| ["--set", s]).collect();
        self.template_args(namespace, &args)
    }

    /// `helm template` of the chart as release `rt` with any further arguments (`--set-json`,
    /// `-f`); returns the rendered objects.
    pub fn template_args(&self, namespace: &str, args: &[&str]) -> Result<Vec<Value>> {
        let mut c = self.cmd();
        c.args(["template", "rt", CHART, "--namespace", namespace])
            .args(args);
        let shown = format!("{c:?}");
        let out = c.output().with_context(|| format!("starting {shown}"))?;
        ensure!(
            out.status.success(),
            "{shown} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        yaml_docs(&String::from_utf8(out.stdout)?)
    }

    /// `helm template` expected to fail; returns its stderr.
    pub fn template_err(&self, sets: &[&str]) -> Result<String> {
        let mut c = self.cmd();
        c.args(["template", "rt", CHART]);
        for s in sets {
            c.args(["--set", s]);
        }
        let out = c.output().context("starting helm template")?;
        ensure!(
            !out.status.success(),
            "helm template {sets:?} succeeded, expected a failure"
        );
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Splits a multi-document YAML stream into JSON values, dropping empty documents.
pub fn yaml_docs(text: &str) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let v: Value = serde::Deserialize::deserialize(doc).context("parsing rendered YAML")?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}
