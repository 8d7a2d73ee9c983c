//! The Helm chart `charts/realtime-operator`: consistency with the workspace (version, CRD,
//! images), rendering (`helm lint`, `helm template` over the supported value sets, schema
//! rejections), and its life on a real API server (server-side dry-run, install, the operator
//! reconciling with the chart ServiceAccount's token, denials outside the role, upgrade,
//! uninstall keeping the CRD).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Namespace, Node, Pod, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use kube::core::GroupVersionKind;
use kube::{Client, ResourceExt};
use realtime_e2e::control_plane::{self, ControlPlane, Tools};
use realtime_e2e::data_plane::{die_with_parent, free_port, http_get};
use realtime_e2e::helm::{CHART, Helm, yaml_docs};
use realtime_e2e::require::{self, workspace_root};
use serde_json::{Value, json};

fn read(rel: &str) -> String {
    let p = workspace_root().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

// ---------------------------------------------------------------------------------------------
// Pure helpers
// ---------------------------------------------------------------------------------------------

/// The `version` of a `[section]` in a Cargo manifest, by line scan (no TOML parser in the
/// workspace). `None` when the section has no literal version (e.g. `version.workspace = true`).
fn manifest_version(manifest: &str, section: &str) -> Option<String> {
    let header = format!("[{section}]");
    let mut inside = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            inside = line == header;
            continue;
        }
        if inside && let Some(rest) = line.strip_prefix("version") {
            let rest = rest.trim_start();
            if let Some(v) = rest.strip_prefix('=') {
                return Some(v.trim().trim_matches('"').to_string());
            }
        }
    }
    None
}

/// The operator crate's version: its own literal, or the workspace's when it inherits it.
fn operator_version(root_manifest: &str, operator_manifest: &str) -> Option<String> {
    manifest_version(operator_manifest, "package")
        .or_else(|| manifest_version(root_manifest, "workspace.package"))
}

fn kind_name(o: &Value) -> (String, String) {
    (
        o["kind"].as_str().unwrap_or_default().to_string(),
        o["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

fn find<'a>(objs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objs.iter().filter(|o| o["kind"] == kind).collect()
}

fn one<'a>(objs: &'a [Value], kind: &str) -> &'a Value {
    let found = find(objs, kind);
    assert_eq!(found.len(), 1, "expected exactly one {kind}, got {found:?}");
    found[0]
}

/// The operator container's `args`.
fn operator_args(objs: &[Value]) -> Vec<String> {
    one(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .expect("operator container has args")
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

fn flag_value(args: &[String], flag: &str) -> Option<String> {
    let prefix = format!("{flag}=");
    args.iter()
        .find_map(|a| a.strip_prefix(&prefix).map(str::to_string))
}

/// Every RBAC rule of the rendered Roles and ClusterRoles, with the role's kind and name, except
/// the user-facing aggregated roles (which grant nothing to the operator).
fn operator_rules(objs: &[Value]) -> Vec<(String, String, Value)> {
    objs.iter()
        .filter(|o| o["kind"] == "Role" || o["kind"] == "ClusterRole")
        .filter(|o| {
            let labels = &o["metadata"]["labels"];
            !labels.as_object().is_some_and(|l| {
                l.keys()
                    .any(|k| k.starts_with("rbac.authorization.k8s.io/aggregate-to-"))
            })
        })
        .flat_map(|o| {
            let (kind, name) = kind_name(o);
            o["rules"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |r| (kind.clone(), name.clone(), r))
        })
        .collect()
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Tools
// ---------------------------------------------------------------------------------------------

fn run(cmd: &mut Command) -> Result<Output> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("starting {shown}"))?;
    Ok(out)
}

/// Runs a command that must succeed; returns its stdout.
fn run_ok(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = run(cmd)?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// The pinned helm (from `e2e/tools/install.sh`), under the `require` policy.
fn helm_or_skip() -> Option<Helm> {
    Helm::require()
}

// ---------------------------------------------------------------------------------------------
// Consistency with the workspace (no external parts)
// ---------------------------------------------------------------------------------------------

#[test]
fn manifest_version_reads_sections() {
    let m = "[package]\nname = \"x\"\nversion.workspace = true\n[workspace.package]\nversion = \"1.2.3\"\n";
    assert_eq!(manifest_version(m, "package"), None);
    assert_eq!(
        manifest_version(m, "workspace.package").as_deref(),
        Some("1.2.3")
    );
    assert_eq!(operator_version(m, m).as_deref(), Some("1.2.3"));
    let own = "[package]\nversion = \"0.9.0\"\n";
    assert_eq!(operator_version(m, own).as_deref(), Some("0.9.0"));
}

#[test]
fn chart_app_version_is_the_operator_version() {
    let chart: Value = serde_yaml::from_str(&read(&format!("{CHART}/Chart.yaml"))).unwrap();
    let op = operator_version(&read("Cargo.toml"), &read("operator/Cargo.toml"))
        .expect("operator version in operator/Cargo.toml or [workspace.package]");
    assert_eq!(
        chart["appVersion"].as_str(),
        Some(op.as_str()),
        "Chart.yaml appVersion"
    );
    assert_eq!(
        chart["version"].as_str(),
        Some(op.as_str()),
        "Chart.yaml version"
    );
}

#[test]
fn chart_crd_is_the_generated_crd() {
    let top = read("crds/realtimecluster.yaml");
    let copy = read(&format!("{CHART}/crds/realtimecluster.yaml"));
    assert!(
        top == copy,
        "{CHART}/crds/realtimecluster.yaml differs from crds/realtimecluster.yaml: run `make crds`"
    );
    let crd: Value = serde_yaml::from_str(&top).unwrap();
    let group = crd["spec"]["group"].as_str().unwrap();
    assert_eq!(group, realtime_operator::api::GROUP);
    let helpers = read(&format!("{CHART}/templates/_helpers.tpl"));
    assert!(
        helpers.contains(&format!("\n{group}\n")),
        "_helpers.tpl apiGroup must name the CRD's group {group}"
    );
}

/// `repo:tag` image references to `ghcr.io/realtime-operator/*` in `text` (pure). A reference
/// without a tag yields an empty tag.
fn project_image_refs(text: &str) -> Vec<(String, String)> {
    const PREFIX: &str = "ghcr.io/realtime-operator/";
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(PREFIX) {
        rest = &rest[i..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || "-_./:$<>{}".contains(c)))
            .unwrap_or(rest.len());
        let r = &rest[..end];
        let (repo, tag) = match r[PREFIX.len()..].split_once(':') {
            Some((name, tag)) => (format!("{PREFIX}{name}"), tag.to_string()),
            None => (r.to_string(), String::new()),
        };
        out.push((repo, tag));
        rest = &rest[end..];
    }
    out
}

#[test]
fn project_image_refs_parses_tags() {
    let t = "image: ghcr.io/realtime-operator/realtime-server:0.1.0\n-t ghcr.io/realtime-operator/realtime-operator:$VERSION .\nrepository: ghcr.io/realtime-operator/realtime-server";
    assert_eq!(
        project_image_refs(t),
        [
            (
                "ghcr.io/realtime-operator/realtime-server".into(),
                "0.1.0".into()
            ),
            (
                "ghcr.io/realtime-operator/realtime-operator".into(),
                "$VERSION".into()
            ),
            (
                "ghcr.io/realtime-operator/realtime-server".into(),
                String::new()
            ),
        ]
    );
}

/// The image names and tags agree across the operator's default, the chart, the examples, the
/// Dockerfiles and the READMEs: the two repositories, tagged with the crate version (or a
/// placeholder in documentation).
#[test]
fn image_names_and_tags_are_consistent() {
    let version = operator_version(&read("Cargo.toml"), &read("operator/Cargo.toml")).unwrap();
    let server = "ghcr.io/realtime-operator/realtime-server";
    let operator = "ghcr.io/realtime-operator/realtime-operator";
    assert_eq!(
        realtime_operator::runtime::DEFAULT_SERVER_IMAGE,
        format!("{server}:{version}")
    );

    let values: Value = serde_yaml::from_str(&read(&format!("{CHART}/values.yaml"))).unwrap();
    assert_eq!(values["image"]["repository"], operator);
    assert_eq!(values["serverImage"]["repository"], server);

    let mut files: Vec<String> = [
        "README.md",
        "docker/README.md",
        "operator/README.md",
        &format!("{CHART}/README.md"),
    ]
    .into_iter()
    .map(str::to_string)
    .filter(|f| workspace_root().join(f).is_file())
    .collect();
    for dir in ["examples", "docker"] {
        for e in std::fs::read_dir(workspace_root().join(dir))
            .unwrap()
            .flatten()
            .filter(|e| e.path().is_file())
        {
            files.push(format!("{dir}/{}", e.file_name().to_string_lossy()));
        }
    }
    let placeholders = ["", "$VERSION", "${VERSION}", "<version>"];
    let mut seen = 0;
    for f in &files {
        for (repo, tag) in project_image_refs(&read(f)) {
            seen += 1;
            assert!(
                repo == server || repo == operator,
                "{f}: unknown image {repo}"
            );
            assert!(
                tag == version || placeholders.contains(&tag.as_str()),
                "{f}: {repo}:{tag}, expected tag {version}"
            );
        }
    }
    assert!(seen > 0, "no image references found in {files:?}");
    for krate in ["realtime-server", "realtime-operator"] {
        let df = format!("docker/{krate}.Dockerfile");
        let text = read(&df);
        assert!(
            text.contains(&format!("ARG VERSION={version}\n")),
            "{df}: default VERSION build arg is not {version}"
        );
        // One build stage for both binaries (the same in both files, so a second image is a
        // layer-cache hit), from the locked workspace; the image takes its own binary.
        assert!(
            text.contains(
                "cargo build --release --locked ${CARGO_BUILD_ARGS} -p realtime-server -p realtime-operator"
            ) && text.contains(&format!("--bin {krate}")),
            "{df} builds the {krate} binary from the locked workspace"
        );
        assert!(
            text.contains(&format!(
                "COPY --from=build /out/{krate} /usr/local/bin/{krate}"
            )),
            "{df}: copies its own binary"
        );
        let stages: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
        assert_eq!(
            stages,
            ["FROM ${BUILDER_IMAGE} AS build", "FROM ${RUNTIME_IMAGE}"],
            "{df}: a builder and a runtime stage, both overridable"
        );
        assert!(
            text.contains("\nARG RUNTIME_IMAGE=gcr.io/distroless/"),
            "{df}: distroless runtime by default"
        );
        assert!(
            text.contains("\nUSER 65532:65532\n"),
            "{df}: runs as uid 65532"
        );
        assert!(
            text.contains(&format!("ENTRYPOINT [\"/usr/local/bin/{krate}\"]")),
            "{df}: entrypoint"
        );
    }
}

/// NOTES.txt's inline RealtimeCluster is examples/minimal.yaml.
#[test]
fn notes_inline_example_is_the_minimal_example() {
    let notes = read(&format!("{CHART}/templates/NOTES.txt"));
    let start = notes
        .find("echo '")
        .expect("NOTES.txt has an inline example")
        + "echo '".len();
    let len = notes[start..].find('\'').unwrap();
    let inline: Value = serde_json::from_str(&notes[start..start + len]).unwrap();
    let minimal: Value = serde_yaml::from_str(&read("examples/minimal.yaml")).unwrap();
    assert_eq!(inline, minimal);
}

// ---------------------------------------------------------------------------------------------
// Rendering
// ---------------------------------------------------------------------------------------------

#[test]
fn helm_lint_is_clean() {
    let Some(helm) = helm_or_skip() else { return };
    for sets in [
        &[][..],
        &["watchNamespace=team-a"],
        &["replicaCount=2", "podDisruptionBudget.enabled=true"],
        &["metrics.serviceMonitor.enabled=true"],
        &[
            "networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.team=monitoring",
            "networkPolicy.egress[0].to[0].ipBlock.cidr=192.0.2.10/32",
        ],
        &["networkPolicy.enabled=false"],
    ] {
        let mut c = helm.cmd();
        c.args(["lint", "--strict", CHART]);
        for s in sets {
            c.args(["--set", s]);
        }
        let out = run_ok(&mut c).unwrap();
        assert!(
            out.contains("0 chart(s) failed"),
            "helm lint {sets:?}:\n{out}"
        );
        assert!(
            !out.contains("[WARNING]") && !out.contains("[ERROR]"),
            "helm lint {sets:?}:\n{out}"
        );
    }
}

#[test]
fn default_render_is_restricted_and_complete() {
    let Some(helm) = helm_or_skip() else { return };
    let objs = helm.template("rt-system", &[]).unwrap();
    let kinds: Vec<(String, String)> = objs.iter().map(kind_name).collect();
    for want in [
        "ServiceAccount",
        "Deployment",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Service",
        "NetworkPolicy",
    ] {
        assert!(
            kinds.iter().any(|(k, _)| k == want),
            "no {want} in {kinds:?}"
        );
    }
    assert!(
        find(&objs, "ServiceMonitor").is_empty(),
        "ServiceMonitor is off by default"
    );
    assert!(
        find(&objs, "PodDisruptionBudget").is_empty(),
        "PDB is off by default"
    );
    for o in &objs {
        let ns = &o["metadata"]["namespace"];
        let cluster_scoped = matches!(
            o["kind"].as_str(),
            Some("ClusterRole" | "ClusterRoleBinding")
        );
        assert!(
            cluster_scoped || ns == "rt-system",
            "{:?} lacks namespace rt-system",
            kind_name(o)
        );
    }

    let dep = one(&objs, "Deployment");
    let pod = &dep["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(
        c["image"],
        format!(
            "ghcr.io/realtime-operator/realtime-operator:{}",
            operator_version(&read("Cargo.toml"), &read("operator/Cargo.toml")).unwrap()
        )
    );
    // Restricted Pod Security Standard.
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(strs(&c["securityContext"]["capabilities"]["drop"]), ["ALL"]);
    assert!(c["resources"]["requests"]["memory"].is_string());
    assert!(c["resources"]["limits"]["memory"].is_string());
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(pod["serviceAccountName"], "rt-realtime-operator");

    let args = operator_args(&objs);
    assert_eq!(
        flag_value(&args, "--default-server-image").as_deref(),
        Some(realtime_operator::runtime::DEFAULT_SERVER_IMAGE),
        "the chart's default server image is the operator's: {args:?}"
    );
    assert!(args.iter().any(|a| a == "--leader-election"), "{args:?}");

    let svc = one(&objs, "Service");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "admin");
    assert_eq!(
        svc["spec"]["selector"],
        dep["spec"]["selector"]["matchLabels"]
    );
}

/// No wildcard, no verb the controller never uses, and the Lease rights only in the release
/// namespace.
#[test]
fn rbac_rules_are_narrow() {
    let Some(helm) = helm_or_skip() else { return };
    let objs = helm.template("rt-system", &[]).unwrap();
    let rules = operator_rules(&objs);
    assert!(!rules.is_empty());
    for (kind, name, r) in &rules {
        for field in ["apiGroups", "resources", "verbs"] {
            assert!(
                !strs(&r[field]).iter().any(|s| s == "*"),
                "wildcard in {kind}/{name}: {r}"
            );
        }
        for v in strs(&r["verbs"]) {
            assert!(
                !matches!(
                    v.as_str(),
                    "deletecollection" | "escalate" | "bind" | "impersonate"
                ),
                "{kind}/{name} grants {v}: {r}"
            );
        }
        let resources = strs(&r["resources"]);
        assert!(
            !resources.iter().any(|s| matches!(
                s.as_str(),
                "nodes" | "namespaces" | "customresourcedefinitions" | "pods/exec" | "pods/log"
            )),
            "{kind}/{name} grants {resources:?}"
        );
        // Pods: read the load, write the deletion cost, delete a pod cut off from Redis (self-heal);
        // nothing else (no create, no exec, no logs).
        if resources.iter().any(|s| s == "pods") {
            assert_eq!(
                resources,
                ["pods"],
                "{kind}/{name}: pods in a rule of their own"
            );
            assert_eq!(
                strs(&r["verbs"]),
                ["list", "patch", "delete"],
                "{kind}/{name}: pods only listed, patched and deleted"
            );
        }
        if resources.iter().any(|s| s == "leases") {
            assert_eq!(kind, "Role", "leases only through a namespaced Role");
        }
    }
    // The aggregated user roles exist and do not bind to the operator.
    let bound: Vec<String> = objs
        .iter()
        .filter(|o| o["kind"] == "ClusterRoleBinding" || o["kind"] == "RoleBinding")
        .map(|o| o["roleRef"]["name"].as_str().unwrap().to_string())
        .collect();
    assert!(
        !bound
            .iter()
            .any(|n| n.ends_with("-edit") || n.ends_with("-view")),
        "{bound:?}"
    );
}

#[test]
fn namespaced_mode_grants_nothing_cluster_wide() {
    let Some(helm) = helm_or_skip() else { return };
    let objs = helm
        .template(
            "rt-system",
            &[
                "watchNamespace=team-a",
                "rbac.aggregateToDefaultRoles=false",
            ],
        )
        .unwrap();
    assert!(
        find(&objs, "ClusterRole").is_empty(),
        "{:?}",
        objs.iter().map(kind_name).collect::<Vec<_>>()
    );
    assert!(find(&objs, "ClusterRoleBinding").is_empty());
    let roles = find(&objs, "Role");
    assert!(roles.iter().any(|r| r["metadata"]["namespace"] == "team-a"));
    let bindings = find(&objs, "RoleBinding");
    let team = bindings
        .iter()
        .find(|b| b["metadata"]["namespace"] == "team-a")
        .expect("RoleBinding in team-a");
    assert_eq!(team["subjects"][0]["namespace"], "rt-system");
    let args = operator_args(&objs);
    assert!(
        args.iter().any(|a| a.ends_with("=team-a")),
        "operator told to watch team-a: {args:?}"
    );
}

#[test]
fn optional_objects_render_when_enabled() {
    let Some(helm) = helm_or_skip() else { return };
    let objs = helm
        .template(
            "rt-system",
            &[
                "metrics.serviceMonitor.enabled=true",
                "metrics.serviceMonitor.labels.release=prom",
                "replicaCount=2",
                "podDisruptionBudget.enabled=true",
                "serverImage.tag=9.9.9",
                "image.tag=1.2.3",
            ],
        )
        .unwrap();
    let sm = one(&objs, "ServiceMonitor");
    assert_eq!(sm["metadata"]["labels"]["release"], "prom");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "metrics");
    let svc = one(&objs, "Service");
    for (k, v) in sm["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(
            &svc["metadata"]["labels"][k], v,
            "ServiceMonitor selects the metrics Service"
        );
    }
    one(&objs, "PodDisruptionBudget");
    let dep = one(&objs, "Deployment");
    assert_eq!(dep["spec"]["replicas"], 2);
    assert_eq!(
        dep["spec"]["template"]["spec"]["containers"][0]["image"],
        "ghcr.io/realtime-operator/realtime-operator:1.2.3"
    );
    assert_eq!(
        flag_value(&operator_args(&objs), "--default-server-image").as_deref(),
        Some("ghcr.io/realtime-operator/realtime-server:9.9.9")
    );
}

/// The operator pods accept connections on the admin port only (the operator serves nothing
/// else), from `networkPolicy.metricsFrom` or, when it is empty, from anywhere; egress is left
/// open unless `networkPolicy.egress` lists rules (the API server's address differs per cluster).
#[test]
fn network_policy_admits_the_admin_port_only() {
    let Some(helm) = helm_or_skip() else { return };
    let objs = helm.template("rt-system", &[]).unwrap();
    let np = one(&objs, "NetworkPolicy");
    let dep = one(&objs, "Deployment");
    assert_eq!(np["metadata"]["namespace"], "rt-system");
    assert_eq!(
        np["spec"]["podSelector"]["matchLabels"], dep["spec"]["selector"]["matchLabels"],
        "the policy selects exactly the operator's pods"
    );
    assert_eq!(strs(&np["spec"]["policyTypes"]), ["Ingress"]);
    assert!(np["spec"]["egress"].is_null(), "egress is not restricted");
    let container = &dep["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["ports"].as_array().unwrap().len(), 1);
    assert_eq!(container["ports"][0]["name"], "admin");
    assert_eq!(
        np["spec"]["ingress"],
        json!([{"ports": [{"port": container["ports"][0]["containerPort"], "protocol": "TCP"}]}]),
        "one rule: the admin port, from any source"
    );

    // Restricted sources and egress; the port follows adminPort.
    let monitoring = json!([{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]);
    let egress = json!([{"to": [{"ipBlock": {"cidr": "192.0.2.10/32"}}],
                         "ports": [{"port": 6443, "protocol": "TCP"}]}]);
    let from_arg = format!("networkPolicy.metricsFrom={monitoring}");
    let egress_arg = format!("networkPolicy.egress={egress}");
    let objs = helm
        .template_args(
            "rt-system",
            &[
                "--set",
                "adminPort=9443",
                "--set-json",
                &from_arg,
                "--set-json",
                &egress_arg,
            ],
        )
        .unwrap();
    let np = one(&objs, "NetworkPolicy");
    assert_eq!(
        np["spec"]["ingress"],
        json!([{"ports": [{"port": 9443, "protocol": "TCP"}], "from": monitoring}])
    );
    assert_eq!(strs(&np["spec"]["policyTypes"]), ["Ingress", "Egress"]);
    assert_eq!(np["spec"]["egress"], egress);
    assert_eq!(
        one(&objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"],
        9443
    );

    let objs = helm
        .template("rt-system", &["networkPolicy.enabled=false"])
        .unwrap();
    assert!(find(&objs, "NetworkPolicy").is_empty());
}

/// `image.digest` and `serverImage.digest` pin the images by digest instead of tag.
#[test]
fn images_can_be_pinned_by_digest() {
    let Some(helm) = helm_or_skip() else { return };
    let operator_digest = format!("sha256:{}", "a".repeat(64));
    let server_digest = format!("sha256:{}", "b".repeat(64));
    let objs = helm
        .template(
            "rt-system",
            &[
                &format!("image.digest={operator_digest}"),
                "image.tag=1.2.3",
                &format!("serverImage.digest={server_digest}"),
            ],
        )
        .unwrap();
    assert_eq!(
        one(&objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"],
        format!("ghcr.io/realtime-operator/realtime-operator@{operator_digest}"),
        "the digest wins over the tag"
    );
    assert_eq!(
        flag_value(&operator_args(&objs), "--default-server-image"),
        Some(format!(
            "ghcr.io/realtime-operator/realtime-server@{server_digest}"
        ))
    );
}

#[test]
fn bad_values_are_rejected() {
    let Some(helm) = helm_or_skip() else { return };
    for (sets, expect) in [
        (&["nosuchkey=1"][..], "nosuchkey"),
        (&["logging.format=xml"], "format"),
        (&["adminPort=80"], "adminPort"),
        (&["watchNamespace=Not_A_Namespace"], "watchNamespace"),
        (
            &["replicaCount=2", "leaderElection.enabled=false"],
            "leaderElection",
        ),
        (
            &[
                "metrics.service.enabled=false",
                "metrics.serviceMonitor.enabled=true",
            ],
            "metrics.service.enabled",
        ),
        (&["image.digest=latest"], "digest"),
        (&["serverImage.digest=sha256:abc"], "digest"),
        (&["networkPolicy.enabled=maybe"], "enabled"),
        (
            &["networkPolicy.metricsFrom[0].podSelectr.matchLabels.app=prometheus"],
            "podSelectr",
        ),
        (
            &["networkPolicy.metricsFrom[0].ipBlock.except[0]=10.0.0.0/8"],
            "cidr",
        ),
        (&["networkPolicy.egress[0].toPorts[0].port=443"], "toPorts"),
    ] {
        let err = helm.template_err(sets).unwrap();
        assert!(
            err.contains(expect),
            "helm template {sets:?}: error should name {expect}:\n{err}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// On the local control plane: dry-run, install, the operator as the chart's ServiceAccount,
// denials, upgrade, uninstall
// ---------------------------------------------------------------------------------------------

/// The operator's flag for its admin (healthz/readyz/metrics) listen address.
const ADMIN_FLAG: &str = "--admin-addr";
/// How long the operator may take from start to all children of examples/minimal.yaml.
const RECONCILE_TIMEOUT: Duration = Duration::from_secs(60);

/// The realtime-operator binary of this workspace, run locally with the chart Deployment's args
/// and env, authenticated as the chart's ServiceAccount (a TokenRequest token), as its pod
/// would be. Killed (with its process group) on drop.
struct LocalOperator {
    child: tokio::process::Child,
    log: PathBuf,
    admin: SocketAddr,
}

impl LocalOperator {
    /// Starts the operator with `deployment`'s container args (admin address moved to a free
    /// loopback port) and env, `kubeconfig` as its credentials, `pod_name` as its identity.
    fn start(
        bin: &std::path::Path,
        deployment: &Deployment,
        kubeconfig: &std::path::Path,
        pod_name: &str,
        log: PathBuf,
    ) -> Result<Self> {
        let container = &deployment
            .spec
            .as_ref()
            .context("spec")?
            .template
            .spec
            .as_ref()
            .context("pod spec")?
            .containers[0];
        let port = free_port()?;
        let admin: SocketAddr = ([127, 0, 0, 1], port).into();
        let args: Vec<String> = container
            .args
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|a| {
                if a.starts_with(&format!("{ADMIN_FLAG}=")) {
                    format!("{ADMIN_FLAG}={admin}")
                } else {
                    a
                }
            })
            .collect();
        ensure!(
            args.iter()
                .any(|a| a.starts_with(&format!("{ADMIN_FLAG}="))),
            "the chart passes no {ADMIN_FLAG}: {args:?}"
        );
        let namespace = deployment.namespace().context("namespace")?;
        let mut cmd = tokio::process::Command::new(bin);
        cmd.args(&args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("KUBECONFIG", kubeconfig);
        for e in container.env.clone().unwrap_or_default() {
            // The downward API values a kubelet would fill in.
            let value = match e
                .value_from
                .as_ref()
                .and_then(|v| v.field_ref.as_ref())
                .map(|f| f.field_path.as_str())
            {
                Some("metadata.name") => pod_name.to_string(),
                Some("metadata.namespace") => namespace.clone(),
                Some(other) => bail!(
                    "env {} uses field {other}, which this test does not emulate",
                    e.name
                ),
                None => e.value.clone().unwrap_or_default(),
            };
            cmd.env(&e.name, value);
        }
        let f = std::fs::File::create(&log)?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(f.try_clone()?))
            .stderr(Stdio::from(f))
            .process_group(0)
            .kill_on_drop(true);
        die_with_parent(cmd.as_std_mut(), libc::SIGKILL);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(Self { child, log, admin })
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails when the operator exited.
    fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("the operator exited ({status}):\n{}", self.log_text());
        }
        Ok(())
    }

    /// Lines of the operator's log that report an authorization failure: an RBAC denial is a
    /// 403 whose message says `... is forbidden: User "..." cannot ...`. A 422 that merely says
    /// "Forbidden: field is immutable" (e.g. two operators racing to create the immutable Redis
    /// Secret, which the loser's retry resolves) is not one.
    fn forbidden_lines(&self) -> Vec<String> {
        self.log_text()
            .lines()
            .filter(|l| {
                let l = l.to_ascii_lowercase();
                l.contains("is forbidden:") || l.contains("\"code\":403") || l.contains("code: 403")
            })
            .map(str::to_string)
            .collect()
    }

    /// Fails at once when the operator exits or logs an authorization failure.
    fn check_healthy(&mut self) -> Result<()> {
        self.check_running()?;
        let forbidden = self.forbidden_lines();
        ensure!(
            forbidden.is_empty(),
            "the operator was denied something it needs:\n{}",
            forbidden.join("\n")
        );
        Ok(())
    }

    /// Polls `probe` every 200 ms until it yields `Some`, for at most `timeout`; fails fast
    /// when the operator exits, logs a denial, or a control-plane process dies. Errors name
    /// what was awaited and carry the operator's log.
    async fn wait_for<T, F, Fut>(
        &mut self,
        cp: &ControlPlane,
        what: &str,
        timeout: Duration,
        mut probe: F,
    ) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>>>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last_err = None;
        loop {
            cp.check_alive()?;
            self.check_healthy()
                .with_context(|| format!("waiting for {what}"))?;
            match probe().await {
                Ok(Some(v)) => return Ok(v),
                Ok(None) => {}
                Err(e) => last_err = Some(e),
            }
            if tokio::time::Instant::now() > deadline {
                let why = last_err
                    .map(|e| format!(" (last error: {e:#})"))
                    .unwrap_or_default();
                bail!(
                    "timed out after {timeout:?} waiting for {what}{why}\noperator log:\n{}",
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// SIGTERM, then up to `grace` for a clean exit, then SIGKILL. Returns whether it exited
    /// by itself.
    async fn stop(&mut self, grace: Duration) -> bool {
        if let Some(pid) = self.child.id() {
            // SAFETY: kill(2) on our own unreaped child.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        }
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(_) => true,
            Err(_) => {
                let _ = self.child.kill().await;
                false
            }
        }
    }
}

/// Helm with the control plane's admin kubeconfig, and kubectl.
struct Cluster {
    cp: Arc<ControlPlane>,
    helm: Helm,
}

impl Cluster {
    fn kubectl(&self) -> Command {
        let mut c = self.cp.kubectl().expect("kubectl was required before");
        c.current_dir(workspace_root());
        c
    }
}

/// The control plane, helm, kubectl and the operator binary, under the `require` policy.
async fn cluster_or_skip() -> Option<(Cluster, PathBuf)> {
    let cp = control_plane::shared().await?;
    let helm = Tools::require_binary("helm")?;
    Tools::require_binary("kubectl")?;
    let operator = require::require(
        "the realtime-operator binary",
        "build it with `cargo build -p realtime-operator` (make build)",
        require::workspace_bin("realtime-operator"),
    )?;
    let helm = Helm::new(helm).with_kubeconfig(cp.kubeconfig_path());
    Some((Cluster { cp, helm }, operator))
}

/// The HTTP status of an API call's error, `None` on success.
fn api_code<T>(r: &kube::Result<T>) -> Option<u16> {
    match r {
        Ok(_) => None,
        Err(kube::Error::Api(s)) => Some(s.code),
        Err(e) => panic!("not an API error: {e}"),
    }
}

/// `fullname` of the chart for release `release` (the chart's `realtime-operator.fullname`).
fn fullname(release: &str) -> String {
    if release.contains("realtime-operator") {
        release.to_string()
    } else {
        format!("{release}-realtime-operator")
    }
}

/// The children the operator made for RealtimeCluster `name` in `ns`, as `Kind/name`, each
/// checked to be controlled by the cluster (`uid`).
async fn children(client: &Client, ns: &str, name: &str, uid: &str) -> Result<Vec<String>> {
    let lp = ListParams::default().labels(&format!(
        "app.kubernetes.io/managed-by=realtime-operator,realtime.dev/cluster={name}"
    ));
    let mut out = Vec::new();
    macro_rules! collect {
        ($k:ty) => {
            for o in Api::<$k>::namespaced(client.clone(), ns)
                .list_metadata(&lp)
                .await?
                .items
            {
                let owned = o
                    .owner_references()
                    .iter()
                    .any(|r| r.uid == uid && r.controller == Some(true));
                ensure!(
                    owned,
                    "{} {} is not controlled by RealtimeCluster {name}",
                    <$k as kube::Resource>::kind(&()),
                    o.name_any()
                );
                out.push(format!(
                    "{}/{}",
                    <$k as kube::Resource>::kind(&()),
                    o.name_any()
                ));
            }
        };
    }
    collect!(Deployment);
    collect!(Service);
    collect!(StatefulSet);
    collect!(Secret);
    collect!(PodDisruptionBudget);
    collect!(Ingress);
    out.sort();
    Ok(out)
}

/// The children a managed-Redis, ingress-less RealtimeCluster has (issue 4): the server
/// Deployment, Service, admin Service and PDB, and Redis' StatefulSet, headless Service and
/// password Secret.
fn expected_child_kinds() -> Vec<&'static str> {
    let mut k = vec![
        "Deployment",
        "PodDisruptionBudget",
        "Secret",
        "Service",
        "Service",
        "Service",
        "StatefulSet",
    ];
    k.sort();
    k
}

fn kinds_of(children: &[String]) -> Vec<&str> {
    let mut k: Vec<&str> = children
        .iter()
        .map(|c| c.split('/').next().unwrap())
        .collect();
    k.sort();
    k
}

fn dynamic_api(client: &Client, ns: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("realtime.dev", "v1alpha1", "RealtimeCluster");
    Api::namespaced_with(client.clone(), ns, &ApiResource::from_gvk(&gvk))
}

/// Installs the chart as `release` into `ns` with `sets`, runs the operator as its
/// ServiceAccount, applies examples/minimal.yaml into `watch_ns` and waits until every child
/// exists, the status is written, the Lease is held and an Event was recorded. Returns the
/// running operator and the ServiceAccount's client.
async fn install_and_reconcile(
    cl: &Cluster,
    operator_bin: &std::path::Path,
    release: &str,
    ns: &str,
    watch_ns: &str,
    sets: &[&str],
    logs: &std::path::Path,
) -> Result<(LocalOperator, Client)> {
    let cp = &cl.cp;
    let admin = cp.client().await?;

    // helm install creates the objects.
    let mut c = cl.helm.cmd();
    c.args(["install", release, CHART, "--namespace", ns]);
    for s in sets {
        c.args(["--set", s]);
    }
    let out = run_ok(&mut c)?;
    ensure!(out.contains("STATUS: deployed"), "helm install:\n{out}");
    let full = fullname(release);
    let deployment = Api::<Deployment>::namespaced(admin.clone(), ns)
        .get(&full)
        .await
        .context("the operator Deployment")?;
    Api::<ServiceAccount>::namespaced(admin.clone(), ns)
        .get(&full)
        .await
        .context("the ServiceAccount")?;
    Api::<Service>::namespaced(admin.clone(), ns)
        .get(&format!("{full}-metrics"))
        .await
        .context("the metrics Service")?;
    Api::<Role>::namespaced(admin.clone(), ns)
        .get(&format!("{full}-leader-election"))
        .await
        .context("the Lease Role")?;

    // The operator, as the chart's ServiceAccount.
    let sa = cp.service_account(ns, &full).await?;
    let pod_name = format!("{full}-7d9f-test");
    let mut op = LocalOperator::start(
        operator_bin,
        &deployment,
        &sa.kubeconfig,
        &pod_name,
        logs.join(format!("{release}-operator.log")),
    )?;
    // The chart's probes and metrics Service point at what the binary serves.
    let admin_addr = op.admin;
    let container = &deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0];
    let probe_path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        p.as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|h| h.path.clone())
    };
    let readiness = probe_path(&container.readiness_probe).context("readiness probe path")?;
    let liveness = probe_path(&container.liveness_probe).context("liveness probe path")?;
    for path in [readiness.as_str(), liveness.as_str(), "/metrics"] {
        op.wait_for(
            cp,
            &format!("200 from the operator's {path}"),
            Duration::from_secs(30),
            || async {
                Ok(http_get(admin_addr, path, Duration::from_secs(2))
                    .await
                    .ok()
                    .filter(|r| r.status == 200))
            },
        )
        .await?;
    }

    // Leader election with the Role's rights: the Lease named after the release, held by us.
    let leases: Api<Lease> = Api::namespaced(admin.clone(), ns);
    let held = |l: &Lease| {
        l.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) == Some(pod_name.as_str())
    };
    let lease = op
        .wait_for(
            cp,
            "the operator's Lease",
            Duration::from_secs(30),
            || async { Ok(leases.get_opt(&full).await?.filter(held)) },
        )
        .await?;
    let first_renewal = lease
        .spec
        .and_then(|s| s.renew_time)
        .context("a held Lease has a renewTime")?;

    // examples/minimal.yaml: every child created and owned, status written, an Event recorded.
    let out = run_ok(
        cl.kubectl()
            .args(["apply", "-n", watch_ns, "-f", "examples/minimal.yaml"]),
    )?;
    ensure!(out.contains("created"), "kubectl apply: {out}");
    let rtcs = dynamic_api(&admin, watch_ns);
    let rtc = rtcs.get("chat").await?;
    let uid = rtc.uid().context("uid")?;
    let got = op
        .wait_for(
            cp,
            "every child of examples/minimal.yaml",
            RECONCILE_TIMEOUT,
            || async {
                let c = children(&admin, watch_ns, "chat", &uid).await?;
                Ok((kinds_of(&c) == expected_child_kinds()).then_some(c))
            },
        )
        .await?;
    eprintln!("chart: the operator as {} created {got:?}", sa.user);
    op.wait_for(
        cp,
        "status.observedGeneration",
        RECONCILE_TIMEOUT,
        || async {
            let rtc = rtcs.get("chat").await?;
            let generation = rtc.metadata.generation;
            Ok((rtc.data["status"]["observedGeneration"].as_i64() == generation).then_some(()))
        },
    )
    .await?;
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(admin.clone(), watch_ns);
    op.wait_for(
        cp,
        "an Event about RealtimeCluster chat",
        Duration::from_secs(30),
        || async {
            let list = events.list(&ListParams::default()).await?;
            Ok(list.items.into_iter().find(|e| {
                e.regarding.as_ref().and_then(|r| r.uid.as_deref()) == Some(uid.as_str())
            }))
        },
    )
    .await?;
    // The Lease is renewed (an `update`), still by us.
    op.wait_for(
        cp,
        "a renewal of the Lease",
        Duration::from_secs(30),
        || async {
            let l = leases.get_opt(&full).await?.filter(held);
            Ok(l.and_then(|l| l.spec?.renew_time)
                .filter(|t| *t != first_renewal))
        },
    )
    .await?;
    op.check_healthy()?;
    Ok((op, sa.client().await?))
}

#[tokio::test]
async fn chart_installs_rbac_suffices_and_is_least_privilege() {
    let Some((cl, operator_bin)) = cluster_or_skip().await else {
        return;
    };
    let cp = cl.cp.clone();
    let _logs = cp.logs_on_failure();
    let admin = cp.client().await.unwrap();
    let ns = cp.create_namespace("chart").await.unwrap();
    let release = ns.clone();
    let full = fullname(&release);
    let tmp = tempfile::tempdir().unwrap();

    // The rendered manifests (CRD included) pass a server-side dry-run, in both RBAC modes and
    // with a NetworkPolicy restricting sources and egress.
    for sets in [
        &[][..],
        &["watchNamespace=default"],
        &[
            "networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.team=monitoring",
            "networkPolicy.metricsFrom[1].ipBlock.cidr=192.0.2.0/24",
            "networkPolicy.egress[0].to[0].ipBlock.cidr=192.0.2.10/32",
            "networkPolicy.egress[0].ports[0].port=6443",
        ],
    ] {
        let mut c = cl.helm.cmd();
        c.args([
            "template",
            &release,
            CHART,
            "--namespace",
            &ns,
            "--include-crds",
        ]);
        for s in sets {
            c.args(["--set", s]);
        }
        let rendered = tmp.path().join("rendered.yaml");
        std::fs::write(&rendered, run_ok(&mut c).unwrap()).unwrap();
        // No -n: every namespaced object names its namespace (the Role of namespaced mode
        // lives in the watched one).
        let out = run_ok(
            cl.kubectl()
                .args(["apply", "--server-side", "--dry-run=server", "-f"])
                .arg(&rendered),
        )
        .unwrap();
        let applied = out
            .lines()
            .filter(|l| l.contains("(server dry run)"))
            .count();
        let docs = yaml_docs(&std::fs::read_to_string(&rendered).unwrap())
            .unwrap()
            .len();
        assert_eq!(
            applied, docs,
            "every rendered object passes the dry-run {sets:?}:\n{out}"
        );
    }

    let (mut op, sa) =
        install_and_reconcile(&cl, &operator_bin, &release, &ns, &ns, &[], tmp.path())
            .await
            .unwrap();

    // Outside the role: denied. Pods may be listed, patched (the deletion cost) and deleted
    // (self-heal), nothing more.
    let pods: Api<Pod> = Api::namespaced(sa.clone(), &ns);
    assert_eq!(
        api_code(&pods.list(&ListParams::default()).await),
        None,
        "list pods is granted"
    );
    assert_eq!(
        api_code(&pods.delete("any-pod", &DeleteParams::default()).await),
        Some(404),
        "delete pods is granted (the pod does not exist)"
    );
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "any-pod"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}
    }))
    .unwrap();
    assert_eq!(
        api_code(&pods.create(&PostParams::default(), &pod).await),
        Some(403),
        "create pods"
    );
    let cms: Api<ConfigMap> = Api::namespaced(sa.clone(), "kube-system");
    assert_eq!(
        api_code(&cms.list(&ListParams::default()).await),
        Some(403),
        "list configmaps in kube-system"
    );
    let nodes: Api<Node> = Api::all(sa.clone());
    assert_eq!(
        api_code(&nodes.delete("any-node", &DeleteParams::default()).await),
        Some(403),
        "delete nodes"
    );
    let namespaces: Api<Namespace> = Api::all(sa.clone());
    assert_eq!(
        api_code(&namespaces.list(&ListParams::default()).await),
        Some(403),
        "list namespaces"
    );
    let crs: Api<ClusterRole> = Api::all(sa.clone());
    let escalate: ClusterRole = serde_json::from_value(
        json!({"metadata": {"name": format!("{ns}-escalate")}, "rules": []}),
    )
    .unwrap();
    assert_eq!(
        api_code(&crs.create(&PostParams::default(), &escalate).await),
        Some(403),
        "create clusterroles"
    );
    // Only the verbs it uses: no update of children, no write to RealtimeCluster specs.
    let deployments: Api<Deployment> = Api::namespaced(sa.clone(), &ns);
    let d = deployments
        .get("chat")
        .await
        .expect("get deployments is granted");
    assert_eq!(
        api_code(
            &deployments
                .replace("chat", &PostParams::default(), &d)
                .await
        ),
        Some(403),
        "update deployments"
    );
    // PodDisruptionBudgets: listed and watched, never read one by one nor replaced.
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(sa.clone(), &ns);
    assert_eq!(
        api_code(&pdbs.get("chat").await),
        Some(403),
        "get poddisruptionbudgets"
    );
    let rtcs = dynamic_api(&sa, &ns);
    assert_eq!(
        api_code(&rtcs.delete("chat", &DeleteParams::default()).await),
        Some(403),
        "delete realtimeclusters"
    );
    let spec_patch = Patch::Merge(json!({"spec": {"replicas": 3}}));
    assert_eq!(
        api_code(
            &rtcs
                .patch("chat", &PatchParams::default(), &spec_patch)
                .await
        ),
        Some(403),
        "patch realtimecluster spec"
    );
    // Leases: only its own, only in the release namespace.
    let leases: Api<Lease> = Api::namespaced(sa.clone(), &ns);
    assert_eq!(
        api_code(&leases.get("someone-elses-lease").await),
        Some(403),
        "get another Lease"
    );
    let foreign: Api<Lease> = Api::namespaced(sa.clone(), "kube-system");
    let lease: Lease = serde_json::from_value(json!({"metadata": {"name": full}})).unwrap();
    assert_eq!(
        api_code(&foreign.create(&PostParams::default(), &lease).await),
        Some(403),
        "create a Lease in kube-system"
    );
    assert!(
        op.stop(Duration::from_secs(15)).await,
        "the operator did not exit within 15 s of SIGTERM:\n{}",
        op.log_text()
    );

    // helm upgrade: a second replica (allowed with leader election) and a PDB.
    let out = run_ok(cl.helm.cmd().args([
        "upgrade",
        &release,
        CHART,
        "--namespace",
        &ns,
        "--set",
        "replicaCount=2",
        "--set",
        "podDisruptionBudget.enabled=true",
    ]))
    .unwrap();
    assert!(
        out.contains("REVISION: 2") && out.contains("STATUS: deployed"),
        "helm upgrade:\n{out}"
    );
    let d = Api::<Deployment>::namespaced(admin.clone(), &ns)
        .get(&full)
        .await
        .unwrap();
    assert_eq!(d.spec.unwrap().replicas, Some(2));
    Api::<PodDisruptionBudget>::namespaced(admin.clone(), &ns)
        .get(&full)
        .await
        .expect("PDB after upgrade");
    Api::<NetworkPolicy>::namespaced(admin.clone(), &ns)
        .get(&full)
        .await
        .expect("the operator's NetworkPolicy");

    // helm uninstall: the release's objects go, the CRD (and the user's RealtimeCluster) stay.
    run_ok(
        cl.helm
            .cmd()
            .args(["uninstall", &release, "--namespace", &ns, "--wait"]),
    )
    .unwrap();
    let gone = |r: kube::Result<()>| matches!(r, Err(kube::Error::Api(s)) if s.code == 404);
    assert!(
        gone(
            Api::<Deployment>::namespaced(admin.clone(), &ns)
                .get(&full)
                .await
                .map(|_| ())
        ),
        "Deployment left"
    );
    assert!(
        gone(
            Api::<ServiceAccount>::namespaced(admin.clone(), &ns)
                .get(&full)
                .await
                .map(|_| ())
        ),
        "ServiceAccount left"
    );
    assert!(
        gone(
            Api::<ClusterRole>::all(admin.clone())
                .get(&full)
                .await
                .map(|_| ())
        ),
        "ClusterRole left"
    );
    assert!(
        gone(
            Api::<ClusterRoleBinding>::all(admin.clone())
                .get(&full)
                .await
                .map(|_| ())
        ),
        "ClusterRoleBinding left"
    );
    assert!(
        gone(
            Api::<Role>::namespaced(admin.clone(), &ns)
                .get(&format!("{full}-leader-election"))
                .await
                .map(|_| ())
        ),
        "Role left"
    );
    assert!(
        gone(
            Api::<Service>::namespaced(admin.clone(), &ns)
                .get(&format!("{full}-metrics"))
                .await
                .map(|_| ())
        ),
        "metrics Service left"
    );
    assert!(
        gone(
            Api::<PodDisruptionBudget>::namespaced(admin.clone(), &ns)
                .get(&full)
                .await
                .map(|_| ())
        ),
        "PDB left"
    );
    assert!(
        gone(
            Api::<NetworkPolicy>::namespaced(admin.clone(), &ns)
                .get(&full)
                .await
                .map(|_| ())
        ),
        "NetworkPolicy left"
    );
    Api::<CustomResourceDefinition>::all(admin.clone())
        .get("realtimeclusters.realtime.dev")
        .await
        .expect("helm uninstall keeps the CRD");
    dynamic_api(&admin, &ns)
        .get("chat")
        .await
        .expect("the RealtimeCluster outlives the operator's release");
    let releases = run_ok(cl.helm.cmd().args(["list", "--namespace", &ns, "--short"])).unwrap();
    assert!(
        !releases.lines().any(|l| l.trim() == release),
        "release still listed: {releases}"
    );
}

/// Namespaced mode: the operator watches one namespace with a Role there, and reads nothing
/// elsewhere.
#[tokio::test]
async fn namespaced_mode_reconciles_its_namespace_only() {
    let Some((cl, operator_bin)) = cluster_or_skip().await else {
        return;
    };
    let cp = cl.cp.clone();
    let _logs = cp.logs_on_failure();
    let admin = cp.client().await.unwrap();
    let ns = cp.create_namespace("chart-ns").await.unwrap();
    let watched = cp.create_namespace("chart-team").await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let release = ns.clone();
    let watch_set = format!("watchNamespace={watched}");
    let (mut op, sa) = install_and_reconcile(
        &cl,
        &operator_bin,
        &release,
        &ns,
        &watched,
        &[&watch_set, "rbac.aggregateToDefaultRoles=false"],
        tmp.path(),
    )
    .await
    .unwrap();
    let full = fullname(&release);
    assert!(
        Api::<ClusterRole>::all(admin.clone())
            .get_opt(&full)
            .await
            .unwrap()
            .is_none(),
        "namespaced mode creates no ClusterRole"
    );
    // Nothing outside the watched namespace, and no cluster-wide lists.
    let secrets: Api<Secret> = Api::namespaced(sa.clone(), "kube-system");
    assert_eq!(
        api_code(&secrets.get("any").await),
        Some(403),
        "get secrets in kube-system"
    );
    let deployments: Api<Deployment> = Api::namespaced(sa.clone(), &ns);
    assert_eq!(
        api_code(&deployments.list(&ListParams::default()).await),
        Some(403),
        "list deployments in the release namespace"
    );
    let all_secrets: Api<Secret> = Api::all(sa.clone());
    assert_eq!(
        api_code(&all_secrets.list(&ListParams::default()).await),
        Some(403),
        "list secrets cluster-wide"
    );
    let all_rtcs: Api<DynamicObject> = Api::all_with(
        sa.clone(),
        &ApiResource::from_gvk(&GroupVersionKind::gvk(
            "realtime.dev",
            "v1alpha1",
            "RealtimeCluster",
        )),
    );
    assert_eq!(
        api_code(&all_rtcs.list(&ListParams::default()).await),
        Some(403),
        "list realtimeclusters cluster-wide"
    );
    assert!(
        op.stop(Duration::from_secs(15)).await,
        "the operator did not exit within 15 s of SIGTERM:\n{}",
        op.log_text()
    );
    run_ok(
        cl.helm
            .cmd()
            .args(["uninstall", &release, "--namespace", &ns, "--wait"]),
    )
    .unwrap();
    assert!(
        Api::<Role>::namespaced(admin.clone(), &watched)
            .get_opt(&full)
            .await
            .unwrap()
            .is_none(),
        "Role in the watched namespace left"
    );
}
