//! checkov (PyPI), the Kubernetes manifest scanner, and the explained exceptions it is judged
//! against (`security/checkov-exceptions.yaml`, used by `e2e/tests/security.rs`).
//!
//! `scripts/deps.sh` installs checkov at `CHECKOV_VERSION` of `e2e/tools/versions.env` into a
//! venv of its own, `$RT_TOOLS_DIR/checkov-<version>` (default under
//! `~/.cache/realtime-operator/tools`); [`Checkov::require`] finds it under the `require`
//! policy. A scan writes each object into a file of its own, so every result names the object
//! it is about (graph checks such as CKV2_K8S_6 report a `Pod` made up from a workload's
//! template: the file names the workload). checkov runs with `--skip-download` and without its
//! update check: nothing is fetched, no API key, no network.
//!
//! The judgement ([`judge`]) is pure: a failed check that no exception lists is unexplained, an
//! exception whose check no longer fails on an object it names is stale, and a listed check
//! name that is not checkov's is a mistake. All three fail the test, so the list stays honest.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail, ensure};
use serde::Deserialize;
use serde_json::Value;

use crate::require::{require, workspace_root};

/// The exceptions file, relative to the workspace root.
pub const EXCEPTIONS_FILE: &str = "security/checkov-exceptions.yaml";

/// `CHECKOV_VERSION` of `e2e/tools/versions.env`.
pub fn pinned_version() -> Result<String> {
    let path = workspace_root().join("e2e/tools/versions.env");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    env_value(&text, "CHECKOV_VERSION")
        .with_context(|| format!("{} has no CHECKOV_VERSION", path.display()))
}

/// The value of `KEY=value` in a `versions.env` text (quotes trimmed).
fn env_value(text: &str, key: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().trim_matches('"').to_string())
}

/// Where `scripts/deps.sh` installs checkov `version` (keep in step with `CHECKOV_DIR` there).
pub fn install_dir(tools_dir: &Path, version: &str) -> PathBuf {
    tools_dir.join(format!("checkov-{version}"))
}

fn tools_dir() -> Option<PathBuf> {
    match std::env::var_os("RT_TOOLS_DIR") {
        Some(d) => Some(PathBuf::from(d)),
        None => {
            Some(PathBuf::from(std::env::var_os("HOME")?).join(".cache/realtime-operator/tools"))
        }
    }
}

/// The pinned checkov.
#[derive(Debug, Clone)]
pub struct Checkov {
    bin: PathBuf,
    pub version: String,
}

impl Checkov {
    /// The pinned checkov, installed completely (deps.sh writes `.installed` last), under the
    /// `require` policy: `None` (skip) or a panic under CI when it is missing.
    pub fn require() -> Option<Self> {
        let version = pinned_version().unwrap_or_else(|e| panic!("{e:#}"));
        let found = tools_dir()
            .map(|t| install_dir(&t, &version))
            .filter(|d| d.join(".installed").is_file() && d.join("bin/checkov").is_file());
        require(
            &format!("checkov {version}"),
            "install it with scripts/deps.sh (a venv from PyPI under \
             ~/.cache/realtime-operator/tools/checkov-<version>; needs python3 with venv)",
            found.map(|d| Self {
                bin: d.join("bin/checkov"),
                version: version.clone(),
            }),
        )
    }

    /// Runs checkov's Kubernetes checks on every file of `dir`.
    pub fn scan(&self, dir: &Path) -> Result<Report> {
        let mut c = Command::new(&self.bin);
        c.args(["--directory"])
            .arg(dir)
            .args(["--framework", "kubernetes", "--output", "json"])
            // Nothing from Prisma Cloud (guidelines, severities, custom policies).
            .arg("--skip-download")
            .current_dir(dir)
            // Its own HOME: nothing it might cache lands in the user's.
            .env("HOME", dir)
            // No look-up of a newer checkov on pypi.org at start.
            .env("CKV_SKIP_PACKAGE_UPDATE_CHECK", "true");
        let shown = format!("{c:?}");
        let out = c.output().with_context(|| format!("starting {shown}"))?;
        // 0: every check passed, 1: some failed; anything else is checkov failing.
        ensure!(
            matches!(out.status.code(), Some(0 | 1)),
            "{shown} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let report = Report::parse(&String::from_utf8_lossy(&out.stdout))
            .with_context(|| format!("reading the output of {shown}"))?;
        ensure!(
            report.version == self.version,
            "checkov reports version {} but versions.env pins {}: run scripts/deps.sh",
            report.version,
            self.version
        );
        ensure!(
            report.parsing_errors == 0,
            "checkov could not parse {} file(s) in {}",
            report.parsing_errors,
            dir.display()
        );
        Ok(report)
    }
}

/// One check's result on one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    pub check_id: String,
    pub check_name: String,
    /// The file's name, relative to the scanned folder.
    pub file: String,
}

/// What checkov said about a folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub version: String,
    pub passed: Vec<CheckResult>,
    pub failed: Vec<CheckResult>,
    pub parsing_errors: u64,
}

impl Report {
    /// Parses `checkov --framework kubernetes -o json` output: one report object (a list of
    /// one with some versions). A folder without any Kubernetes object gives a bare summary,
    /// which is an error here: a scan that checked nothing proves nothing.
    pub fn parse(text: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(text.trim()).context("checkov JSON")?;
        let v = match v {
            Value::Array(mut a) if a.len() == 1 => a.remove(0),
            Value::Array(a) => bail!("expected one report (kubernetes), got {}", a.len()),
            v => v,
        };
        ensure!(
            v["check_type"] == "kubernetes",
            "not a kubernetes report (checked nothing?): {}",
            truncate(&v.to_string(), 400)
        );
        let summary = &v["summary"];
        let results = |key: &str| -> Result<Vec<CheckResult>> {
            let mut out = Vec::new();
            for r in v["results"][key].as_array().into_iter().flatten() {
                let field = |k: &str| {
                    r[k].as_str()
                        .map(str::to_string)
                        .with_context(|| format!("a result without {k}: {r}"))
                };
                out.push(CheckResult {
                    check_id: field("check_id")?,
                    check_name: field("check_name")?,
                    file: field("file_path")?.trim_start_matches('/').to_string(),
                });
            }
            Ok(out)
        };
        let report = Self {
            version: summary["checkov_version"]
                .as_str()
                .context("summary without checkov_version")?
                .to_string(),
            passed: results("passed_checks")?,
            failed: results("failed_checks")?,
            parsing_errors: summary["parsing_errors"].as_u64().unwrap_or(0),
        };
        for (key, list) in [("passed", &report.passed), ("failed", &report.failed)] {
            ensure!(
                summary[key].as_u64() == Some(list.len() as u64),
                "summary says {key} {} but {} results are listed",
                summary[key],
                list.len()
            );
        }
        Ok(report)
    }
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// `Kind/name` of a Kubernetes object.
pub fn object_ref(o: &Value) -> Result<String> {
    let kind = o["kind"].as_str().context("an object without kind")?;
    let name = o["metadata"]["name"]
        .as_str()
        .with_context(|| format!("a {kind} without metadata.name"))?;
    Ok(format!("{kind}/{name}"))
}

/// Writes each object as a YAML file of its own into `dir`; returns file name -> `Kind/name`.
pub fn write_objects(dir: &Path, objects: &[Value]) -> Result<BTreeMap<String, String>> {
    let mut files = BTreeMap::new();
    for (i, o) in objects.iter().enumerate() {
        let r = object_ref(o)?;
        let file = format!("{i:02}-{}.yaml", r.replace('/', "-").to_lowercase());
        let path = dir.join(&file);
        std::fs::write(&path, serde_yaml::to_string(o)?)
            .with_context(|| format!("writing {}", path.display()))?;
        ensure!(
            !files.values().any(|v| v == &r),
            "{r} appears twice in one set"
        );
        files.insert(file, r);
    }
    Ok(files)
}

/// A check that failed on an object of a rendered set.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Failure {
    /// `<set>/<Kind>/<name>`, as the exceptions name objects.
    pub object: String,
    pub check_id: String,
    pub check_name: String,
}

/// The figures and failures of one rendered set.
#[derive(Debug, Clone)]
pub struct SetResult {
    pub set: String,
    pub objects: usize,
    pub passed: usize,
    pub failed: usize,
    pub failures: Vec<Failure>,
}

impl Checkov {
    /// Writes `objects` into a temporary folder, one file each, scans it and names every
    /// failure by `<set>/<Kind>/<name>`. Fails when an object got no result at all (checkov
    /// skipped it) unless its kind is one checkov has no check for (`unchecked_kinds`).
    pub fn scan_set(
        &self,
        set: &str,
        objects: &[Value],
        unchecked_kinds: &[&str],
    ) -> Result<SetResult> {
        ensure!(!objects.is_empty(), "set {set} has no objects");
        // Not tempfile's default `.tmpXXXX`: checkov skips hidden folders, and would check nothing.
        let dir = tempfile::Builder::new()
            .prefix(&format!("rt-checkov-{set}-"))
            .tempdir()?;
        let files = write_objects(dir.path(), objects)?;
        let report = self.scan(dir.path())?;
        let object_of = |r: &CheckResult| {
            files
                .get(&r.file)
                .with_context(|| format!("checkov names a file not written: {}", r.file))
        };
        let mut checked = BTreeSet::new();
        for r in report.passed.iter().chain(&report.failed) {
            checked.insert(object_of(r)?.clone());
        }
        for r in files.values() {
            let kind = r.split('/').next().unwrap_or_default();
            ensure!(
                checked.contains(r) || unchecked_kinds.contains(&kind),
                "checkov checked nothing on {set}/{r}"
            );
        }
        let mut failures = BTreeSet::new();
        for r in &report.failed {
            failures.insert(Failure {
                object: format!("{set}/{}", object_of(r)?),
                check_id: r.check_id.clone(),
                check_name: r.check_name.clone(),
            });
        }
        Ok(SetResult {
            set: set.to_string(),
            objects: objects.len(),
            passed: report.passed.len(),
            failed: report.failed.len(),
            failures: failures.into_iter().collect(),
        })
    }
}

/// `security/checkov-exceptions.yaml`: the failed checks we accept, each with its reason.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exceptions {
    pub exceptions: Vec<Exception>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exception {
    /// checkov's check id, e.g. `CKV_K8S_11`.
    pub check: String,
    /// checkov's name for it, e.g. `CPU limits should be set` (checked against checkov's).
    pub name: String,
    /// `<set>/<Kind>/<name>` of each object it may fail on.
    pub objects: Vec<String>,
    pub reason: String,
}

impl Exceptions {
    /// Parses and checks the file's shape: ids look like checkov's, objects like
    /// `<set>/<Kind>/<name>`, every reason is said, no (check, object) is listed twice.
    pub fn parse(text: &str) -> Result<Self> {
        let ex: Self = serde_yaml::from_str(text).context("parsing the exceptions")?;
        let mut seen = BTreeSet::new();
        for e in &ex.exceptions {
            ensure!(
                e.check.starts_with("CKV")
                    && e.check
                        .chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'),
                "{:?} is not a checkov check id",
                e.check
            );
            ensure!(
                e.reason.trim().len() >= 20,
                "{}: the reason must say why ({:?})",
                e.check,
                e.reason
            );
            ensure!(!e.name.trim().is_empty(), "{}: no name", e.check);
            ensure!(!e.objects.is_empty(), "{}: no objects", e.check);
            for o in &e.objects {
                let parts: Vec<&str> = o.split('/').collect();
                ensure!(
                    parts.len() == 3 && parts.iter().all(|p| !p.is_empty()),
                    "{}: {o:?} is not <set>/<Kind>/<name>",
                    e.check
                );
                ensure!(
                    seen.insert((e.check.clone(), o.clone())),
                    "{} on {o} is listed twice",
                    e.check
                );
            }
        }
        Ok(ex)
    }

    /// The repository's exceptions file.
    pub fn load() -> Result<Self> {
        let path = workspace_root().join(EXCEPTIONS_FILE);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| path.display().to_string())
    }
}

/// What is wrong between the failures and the exceptions (empty: all explained, none stale).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Failed, listed nowhere.
    pub unexplained: Vec<Failure>,
    /// Listed `(check, object)` that did not fail.
    pub stale: Vec<(String, String)>,
    /// `(check, listed name, checkov's name)` where they differ.
    pub misnamed: Vec<(String, String, String)>,
    /// Failures that an exception explains.
    pub explained: usize,
}

impl Verdict {
    pub fn is_clean(&self) -> bool {
        self.unexplained.is_empty() && self.stale.is_empty() && self.misnamed.is_empty()
    }

    /// What to fix, one line each.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        for f in &self.unexplained {
            s += &format!(
                "unexplained: {} fails on {}: {} (fix it, or list it in {EXCEPTIONS_FILE} with the reason)\n",
                f.check_id, f.object, f.check_name
            );
        }
        for (check, object) in &self.stale {
            s += &format!(
                "stale: {check} is listed for {object} but does not fail there (remove it from {EXCEPTIONS_FILE})\n"
            );
        }
        for (check, listed, theirs) in &self.misnamed {
            s += &format!(
                "misnamed: {check} is listed as {listed:?}; checkov calls it {theirs:?}\n"
            );
        }
        s
    }
}

/// Compares the failures of every scanned set with the exceptions.
pub fn judge(failures: &[Failure], ex: &Exceptions) -> Verdict {
    let mut v = Verdict::default();
    let listed: BTreeMap<(&str, &str), &Exception> = ex
        .exceptions
        .iter()
        .flat_map(|e| {
            e.objects
                .iter()
                .map(move |o| ((e.check.as_str(), o.as_str()), e))
        })
        .collect();
    let failed: BTreeSet<(&str, &str)> = failures
        .iter()
        .map(|f| (f.check_id.as_str(), f.object.as_str()))
        .collect();
    let mut misnamed = BTreeSet::new();
    for f in failures {
        match listed.get(&(f.check_id.as_str(), f.object.as_str())) {
            None => v.unexplained.push(f.clone()),
            Some(e) => {
                v.explained += 1;
                if e.name.trim() != f.check_name.trim() {
                    misnamed.insert((e.check.clone(), e.name.clone(), f.check_name.clone()));
                }
            }
        }
    }
    v.misnamed = misnamed.into_iter().collect();
    v.stale = listed
        .keys()
        .filter(|k| !failed.contains(k))
        .map(|(c, o)| (c.to_string(), o.to_string()))
        .collect();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_versions_env() {
        let text = "# c\nK8S_VERSION=v1\nCHECKOV_VERSION=\"3.3.30\"\n";
        assert_eq!(
            env_value(text, "CHECKOV_VERSION").as_deref(),
            Some("3.3.30")
        );
        assert_eq!(env_value(text, "NOPE"), None);
        assert_eq!(
            install_dir(Path::new("/c/tools"), "3.3.30"),
            PathBuf::from("/c/tools/checkov-3.3.30")
        );
        let pinned = pinned_version().unwrap();
        assert!(
            pinned.split('.').count() == 3 && pinned.split('.').all(|p| p.parse::<u32>().is_ok()),
            "CHECKOV_VERSION={pinned}: an exact release, x.y.z"
        );
    }

    const REPORT: &str = r#"{
      "check_type": "kubernetes",
      "results": {
        "passed_checks": [
          {"check_id": "CKV_K8S_21", "check_name": "The default namespace should not be used",
           "file_path": "/00-deployment-chat.yaml", "resource": "Deployment.ns.chat"}
        ],
        "failed_checks": [
          {"check_id": "CKV_K8S_11", "check_name": "CPU limits should be set",
           "file_path": "/00-deployment-chat.yaml", "resource": "Deployment.ns.chat"},
          {"check_id": "CKV2_K8S_6",
           "check_name": "Minimize the admission of pods which lack an associated NetworkPolicy",
           "file_path": "/00-deployment-chat.yaml", "resource": "Pod.ns.chat.app-chat"}
        ]
      },
      "summary": {"passed": 1, "failed": 2, "skipped": 0, "parsing_errors": 0,
                  "resource_count": 2, "checkov_version": "3.3.30"}
    }"#;

    #[test]
    fn parses_a_report() {
        let r = Report::parse(REPORT).unwrap();
        assert_eq!(r.version, "3.3.30");
        assert_eq!(r.passed.len(), 1);
        assert_eq!(r.failed.len(), 2);
        assert_eq!(r.failed[1].check_id, "CKV2_K8S_6");
        assert_eq!(r.failed[1].file, "00-deployment-chat.yaml");
        // A list of one report is the same report.
        assert_eq!(Report::parse(&format!("[{REPORT}]")).unwrap(), r);
        // A scan that found no Kubernetes object is refused, not counted as clean.
        let empty = r#"{"passed": 0, "failed": 0, "skipped": 0, "parsing_errors": 0,
                        "resource_count": 0, "checkov_version": "3.3.30"}"#;
        assert!(Report::parse(empty).is_err());
        // Counts that disagree with the listed results are refused.
        let lying = REPORT.replace(r#""failed": 2"#, r#""failed": 3"#);
        assert!(Report::parse(&lying).is_err());
    }

    fn failure(object: &str, id: &str, name: &str) -> Failure {
        Failure {
            object: object.into(),
            check_id: id.into(),
            check_name: name.into(),
        }
    }

    const LIST: &str = r#"
exceptions:
  - check: CKV_K8S_11
    name: CPU limits should be set
    objects: [full/Deployment/chat, minimal/Deployment/chat]
    reason: no CPU limits on purpose, throttling hurts latency
"#;

    #[test]
    fn judges_unexplained_stale_and_misnamed() {
        let ex = Exceptions::parse(LIST).unwrap();
        let cpu = "CPU limits should be set";
        // Everything listed fails, nothing else: clean.
        let both = [
            failure("full/Deployment/chat", "CKV_K8S_11", cpu),
            failure("minimal/Deployment/chat", "CKV_K8S_11", cpu),
        ];
        let v = judge(&both, &ex);
        assert!(v.is_clean(), "{}", v.describe());
        assert_eq!(v.explained, 2);

        // A new failure, on a listed object or with a listed check elsewhere: unexplained.
        let mut more = both.to_vec();
        more.push(failure(
            "full/Deployment/chat",
            "CKV_K8S_43",
            "Image should use digest",
        ));
        more.push(failure("full/StatefulSet/chat-redis", "CKV_K8S_11", cpu));
        let v = judge(&more, &ex);
        assert_eq!(v.unexplained.len(), 2, "{v:?}");
        assert!(
            v.describe()
                .contains("CKV_K8S_43 fails on full/Deployment/chat")
        );
        assert!(!v.is_clean());

        // A listed object that passes now: stale.
        let v = judge(&both[..1], &ex);
        assert_eq!(
            v.stale,
            [(
                "CKV_K8S_11".to_string(),
                "minimal/Deployment/chat".to_string()
            )]
        );
        assert!(!v.is_clean());

        // A listed name that is not checkov's.
        let renamed = [
            failure(
                "full/Deployment/chat",
                "CKV_K8S_11",
                "CPU limits must be set",
            ),
            both[1].clone(),
        ];
        let v = judge(&renamed, &ex);
        assert_eq!(v.misnamed.len(), 1);
        assert!(!v.is_clean());
    }

    #[test]
    fn refuses_malformed_exceptions() {
        let bad = [
            // no reason worth the name
            LIST.replace(
                "no CPU limits on purpose, throttling hurts latency",
                "because",
            ),
            // not a check id
            LIST.replace("CKV_K8S_11", "cpu-limits"),
            // not <set>/<Kind>/<name>
            LIST.replace("full/Deployment/chat,", "Deployment/chat,"),
            // listed twice
            LIST.replace("minimal/Deployment/chat", "full/Deployment/chat"),
            // unknown key
            LIST.replace("reason:", "why:"),
        ];
        for text in bad {
            assert!(Exceptions::parse(&text).is_err(), "accepted:\n{text}");
        }
    }

    #[test]
    fn writes_one_file_per_object() {
        let dir = tempfile::tempdir().unwrap();
        let objs = [
            serde_json::json!({"kind": "Service", "metadata": {"name": "chat"}}),
            serde_json::json!({"kind": "Deployment", "metadata": {"name": "chat"}}),
        ];
        let files = write_objects(dir.path(), &objs).unwrap();
        assert_eq!(files["00-service-chat.yaml"], "Service/chat");
        assert_eq!(files["01-deployment-chat.yaml"], "Deployment/chat");
        let back: Value = serde_yaml::from_str(
            &std::fs::read_to_string(dir.path().join("01-deployment-chat.yaml")).unwrap(),
        )
        .unwrap();
        assert_eq!(back, objs[1]);
        assert!(write_objects(dir.path(), &[objs[0].clone(), objs[0].clone()]).is_err());
    }
}
