//! What the project ships, scanned by checkov (PyPI, pinned in `e2e/tools/versions.env`,
//! installed by `scripts/deps.sh`): the chart as `helm template` renders it, and the children
//! the operator builds for each example RealtimeCluster. Every failed check must be listed with
//! its reason in `security/checkov-exceptions.yaml`, and every listed one must still fail; see
//! SECURITY.md. Prints passed/failed per rendered set.

use std::io::Write as _;

use anyhow::{Context as _, Result};
use realtime_e2e::checkov::{Checkov, EXCEPTIONS_FILE, Exceptions, SetResult, judge};
use realtime_e2e::helm::{Helm, yaml_docs};
use realtime_e2e::require::workspace_root;
use realtime_operator::api::RealtimeCluster;
use realtime_operator::build::{Desired, HaChildren, RedisChildren};
use realtime_operator::runtime::{DEFAULT_REDIS_IMAGE, DEFAULT_SERVER_IMAGE};
use realtime_operator::validate::{Defaults, validate};
use serde_json::Value;

/// The namespace the chart is rendered for.
const CHART_NAMESPACE: &str = "realtime-system";
/// The namespace the examples are put in (they name none, as users apply them).
const APP_NAMESPACE: &str = "realtime";

/// The example RealtimeClusters whose children are scanned, by set name.
const EXAMPLES: [(&str, &str); 3] = [
    ("full", "examples/full.yaml"),
    ("minimal", "examples/minimal.yaml"),
    ("node-chat", "examples/node-chat/realtimecluster.yaml"),
];

/// Every child the operator builds for `file`, as the API would receive them: the example with
/// the namespace and uid the API server gives it, validated with the operator's defaults, built
/// with a Redis password.
fn children(file: &str) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(workspace_root().join(file))?;
    let mut doc = yaml_docs(&text)?
        .into_iter()
        .next()
        .context("no document")?;
    doc["metadata"]["namespace"] = APP_NAMESPACE.into();
    doc["metadata"]["uid"] = "00000000-0000-0000-0000-000000000001".into();
    let rc: RealtimeCluster = serde_json::from_value(doc).context("a RealtimeCluster")?;
    let model = validate(
        &rc,
        &Defaults {
            server_image: DEFAULT_SERVER_IMAGE.into(),
            redis_image: DEFAULT_REDIS_IMAGE.into(),
            operator_namespace: None,
        },
    )
    .map_err(|e| anyhow::anyhow!("{file} does not validate: {e:?}"))?;
    // Every field, named: a child kind added to Desired does not compile here until the scan
    // covers it.
    let Desired {
        deployment,
        service,
        admin_service,
        pdb,
        redis,
        ingress,
        network_policies,
    } = realtime_operator::build::desired(&model, Some("password"), None);
    let mut out = vec![
        serde_json::to_value(deployment)?,
        serde_json::to_value(service)?,
        serde_json::to_value(pdb)?,
    ];
    if let Some(s) = admin_service {
        out.push(serde_json::to_value(s)?);
    }
    if let Some(RedisChildren {
        ha,
        secret,
        service,
        statefulset,
    }) = redis
    {
        out.push(serde_json::to_value(secret)?);
        out.push(serde_json::to_value(service)?);
        out.push(serde_json::to_value(statefulset)?);
        if let Some(HaChildren {
            sentinel_service,
            sentinel_statefulset,
            redis_pdb,
            sentinel_pdb,
        }) = ha
        {
            out.push(serde_json::to_value(sentinel_service)?);
            out.push(serde_json::to_value(sentinel_statefulset)?);
            out.push(serde_json::to_value(redis_pdb)?);
            out.push(serde_json::to_value(sentinel_pdb)?);
        }
    }
    if let Some(i) = ingress {
        out.push(serde_json::to_value(i)?);
    }
    for p in network_policies {
        out.push(serde_json::to_value(p)?);
    }
    Ok(out)
}

/// Written straight to the stderr handle: the harness captures `eprintln!` of passing tests,
/// and the figures are the point.
fn say(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

#[test]
fn the_examples_build_children() {
    for (set, file) in EXAMPLES {
        let objs = children(file).unwrap();
        let kinds: Vec<&str> = objs.iter().filter_map(|o| o["kind"].as_str()).collect();
        for want in [
            "Deployment",
            "Service",
            "PodDisruptionBudget",
            "StatefulSet",
            "Secret",
        ] {
            assert!(kinds.contains(&want), "{set}: no {want} in {kinds:?}");
        }
        for o in &objs {
            assert_eq!(o["metadata"]["namespace"], APP_NAMESPACE, "{set}: {o}");
            assert!(o["apiVersion"].is_string(), "{set}: {o}");
        }
    }
    assert!(
        children("examples/full.yaml")
            .unwrap()
            .iter()
            .any(|o| o["kind"] == "Ingress")
    );
}

/// Every exception names a scanned set, and SECURITY.md documents each listed check and the
/// pinned checkov version.
#[test]
fn the_exceptions_file_is_well_formed_and_documented() {
    let ex = Exceptions::load().unwrap();
    let doc = std::fs::read_to_string(workspace_root().join("SECURITY.md")).unwrap();
    let version = realtime_e2e::checkov::pinned_version().unwrap();
    assert!(
        doc.contains(&format!("checkov {version}")),
        "SECURITY.md does not name checkov {version}, the pinned version"
    );
    let sets: Vec<&str> = std::iter::once("chart")
        .chain(EXAMPLES.map(|(s, _)| s))
        .collect();
    for e in &ex.exceptions {
        assert!(
            doc.contains(&format!("| {} ", e.check)),
            "SECURITY.md does not explain {} ({EXCEPTIONS_FILE})",
            e.check
        );
        for o in &e.objects {
            let set = o.split('/').next().unwrap();
            assert!(
                sets.contains(&set),
                "{EXCEPTIONS_FILE}: {} names {o}, of no scanned set ({sets:?})",
                e.check
            );
        }
    }
}

/// checkov on the rendered chart and on the operator's children for each example: every failed
/// check is explained in the exceptions file, and every exception still fails.
#[test]
fn checkov_failures_are_fixed_or_explained() {
    let Some(checkov) = Checkov::require() else {
        return;
    };
    let Some(helm) = Helm::require() else { return };
    let exceptions = Exceptions::load().unwrap();

    let mut sets: Vec<(String, Vec<Value>)> =
        vec![("chart".into(), helm.template(CHART_NAMESPACE, &[]).unwrap())];
    for (set, file) in EXAMPLES {
        sets.push((set.into(), children(file).unwrap()));
    }
    // checkov 3.3 has no check for these kinds; every other object must get at least one result
    // (a file it skipped would otherwise pass unnoticed).
    let unchecked = ["NetworkPolicy", "PodDisruptionBudget"];
    let results: Vec<SetResult> = std::thread::scope(|s| {
        let handles: Vec<_> = sets
            .iter()
            .map(|(set, objs)| {
                let checkov = &checkov;
                s.spawn(move || {
                    checkov
                        .scan_set(set, objs, &unchecked)
                        .with_context(|| format!("scanning set {set}"))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("scan thread"))
            .collect::<Vec<_>>()
    })
    .into_iter()
    .collect::<Result<_, _>>()
    .unwrap_or_else(|e| panic!("{e:#}"));

    let failures: Vec<_> = results.iter().flat_map(|r| r.failures.clone()).collect();
    let verdict = judge(&failures, &exceptions);

    say(&format!(
        "\ncheckov {} (--framework kubernetes), per rendered set:",
        checkov.version
    ));
    say(&format!(
        "  {:<12} {:>7} {:>7} {:>7}",
        "set", "objects", "passed", "failed"
    ));
    for r in &results {
        say(&format!(
            "  {:<12} {:>7} {:>7} {:>7}",
            r.set, r.objects, r.passed, r.failed
        ));
    }
    say(&format!(
        "  failures explained by {EXCEPTIONS_FILE}: {} of {}\n",
        verdict.explained,
        failures.len()
    ));
    assert!(
        verdict.is_clean(),
        "checkov findings and {EXCEPTIONS_FILE} disagree:\n{}",
        verdict.describe()
    );
}
