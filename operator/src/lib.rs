//! realtime-operator: reconciles `RealtimeCluster` resources into a running socket.io service.
//!
//! The reconcile is a one-way pipeline, each stage in its own module:
//! - [`api`]: the CRD types (the schema, CEL rules and printer columns come from here);
//! - [`validate`]: spec -> validated, defaulted [`validate::Model`] (pure; every spec error is
//!   found here, so later stages cannot fail on user input);
//! - [`build`]: one pure function per child object (Deployment, Services, Redis StatefulSet and
//!   Secret, Ingress, PodDisruptionBudget);
//! - [`fetch`]: every read of the API a reconcile needs before building (passwords, the
//!   existing workloads);
//! - [`plan`]: existing children whose immutable fields differ from the desired ones, to be
//!   replaced without restarting their pods (pure);
//! - [`apply`]: server-side apply of the desired children and pruning of the unwanted ones, the
//!   only code that writes children;
//! - [`status`]: conditions and counts computed from the observed children (pure);
//! - [`controller`]: the kube-runtime Controller wiring, events, error policy;
//! - [`runtime`]: CLI, admin HTTP server, leader election, shutdown.

pub mod api;
pub mod apply;
pub mod build;
pub mod controller;
pub mod fetch;
pub mod leader;
pub mod load;
pub mod metrics;
pub mod plan;
pub mod runtime;
pub mod status;
pub mod validate;

use kube::CustomResourceExt;

/// The CRD as YAML, exactly what `realtime-operator crd` prints and `crds/` holds.
pub fn crd_yaml() -> String {
    let crd = api::RealtimeCluster::crd();
    let yaml = serde_yaml::to_string(&crd).expect("a CRD always serializes");
    format!("---\n{yaml}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn repo_file(rel: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(rel)
    }

    #[test]
    fn committed_crd_matches_the_types() {
        let path = repo_file("crds/realtimecluster.yaml");
        let committed = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        assert!(
            committed == crd_yaml(),
            "{} is stale: run `make crds` and commit the result",
            path.display()
        );
    }

    #[test]
    fn the_env_rule_refuses_every_reserved_variable() {
        let crd = crd_yaml();
        let rule = crd
            .lines()
            .find(|l| l.contains("rule: self.all(e, !(e.name in ["))
            .expect("the CEL rule on spec.env");
        let message = crd
            .lines()
            .find(|l| l.contains("env must not set"))
            .expect("its message");
        for name in crate::api::RESERVED_ENV {
            assert!(rule.contains(&format!("'{name}'")), "{name} not in {rule}");
            assert!(message.contains(name), "{name} not in {message}");
        }
    }

    /// Every key written in `example` must survive a round trip through the Rust types:
    /// catches typos and fields the API does not have (the apiserver would silently prune them).
    fn assert_known_fields(example: &serde_json::Value, parsed: &serde_json::Value, at: &str) {
        match (example, parsed) {
            (serde_json::Value::Object(e), serde_json::Value::Object(p)) => {
                for (k, v) in e {
                    let here = format!("{at}.{k}");
                    let Some(pv) = p.get(k) else {
                        panic!("{here} is not a field of the API (lost in the round trip)");
                    };
                    assert_known_fields(v, pv, &here);
                }
            }
            (serde_json::Value::Array(e), serde_json::Value::Array(p)) => {
                assert_eq!(e.len(), p.len(), "{at}: list length changed");
                for (i, (ev, pv)) in e.iter().zip(p).enumerate() {
                    assert_known_fields(ev, pv, &format!("{at}[{i}]"));
                }
            }
            _ => {}
        }
    }

    #[test]
    fn examples_use_only_known_fields() {
        for name in [
            "examples/minimal.yaml",
            "examples/full.yaml",
            "examples/node-chat/realtimecluster.yaml",
        ] {
            let text = std::fs::read_to_string(repo_file(name)).unwrap();
            let raw: serde_json::Value = serde_yaml::from_str(&text).unwrap();
            let rc: api::RealtimeCluster = serde_json::from_value(raw.clone())
                .unwrap_or_else(|e| panic!("{name} does not parse as a RealtimeCluster: {e}"));
            let back = serde_json::to_value(&rc).unwrap();
            assert_known_fields(&raw, &back, name);
        }
    }
}
