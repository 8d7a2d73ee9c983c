//! Small constructors for the literals every builder repeats: named ports, Services selecting
//! one component, probes, environment variables from values, fields and Secrets, volumes.
//! Each sets exactly the fields the operator owns (server-side apply) and nothing else.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, ObjectFieldSelector, Probe,
    ResourceFieldSelector, SecretKeySelector, Service, ServicePort, ServiceSpec, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::meta;
use crate::validate::Model;

/// A TCP container port with a name (Services and probes refer to it by name).
pub fn container_port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: port,
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

/// A TCP Service port `port` -> the pods' port named `name`.
pub fn service_port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

/// A Service `name` of `component` selecting `selector`, with one port; callers set the
/// type, clusterIP or affinity they need on the returned spec.
pub fn service(
    model: &Model,
    name: &str,
    component: &str,
    selector: BTreeMap<String, String>,
    port: ServicePort,
) -> Service {
    Service {
        metadata: meta(model, name, component),
        spec: Some(ServiceSpec {
            selector: Some(selector),
            ports: Some(vec![port]),
            ..Default::default()
        }),
        status: None,
    }
}

/// A selector by labels only.
pub fn match_labels(labels: BTreeMap<String, String>) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels),
        ..Default::default()
    }
}

/// A probe with the given action (`http_get`, `exec`, `tcp_socket` set by `action`), period,
/// timeout and failure threshold.
pub fn probe(action: Probe, period: i32, timeout: i32, failures: i32) -> Probe {
    Probe {
        period_seconds: Some(period),
        timeout_seconds: Some(timeout),
        failure_threshold: Some(failures),
        ..action
    }
}

/// `name=value`.
pub fn env_value(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

/// `name` from the pod's own field `path` (downward API).
pub fn env_field(name: &str, path: &str) -> EnvVar {
    env_from(
        name,
        EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
}

/// `name` from the container's own `resource` (downward API), in whole units rounded up
/// (`requests.cpu` of 100m gives 1; no request gives 0).
pub fn env_resource(name: &str, resource: &str) -> EnvVar {
    env_from(
        name,
        EnvVarSource {
            resource_field_ref: Some(ResourceFieldSelector {
                resource: resource.into(),
                divisor: Some(Quantity("1".into())),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
}

/// `default`, an operator default the user may replace: none when `user` (spec.env) sets
/// any of `names` (one entry per name: server-side apply refuses duplicates).
pub fn env_default(user: &[EnvVar], names: &[&str], default: EnvVar) -> Option<EnvVar> {
    (!user.iter().any(|e| names.contains(&e.name.as_str()))).then_some(default)
}

/// `name` from `key` of the Secret `secret`; the pod does not start without it.
pub fn env_secret(name: &str, secret: &str, key: &str) -> EnvVar {
    env_from(
        name,
        EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: Some(false),
            }),
            ..Default::default()
        },
    )
}

fn env_from(name: &str, source: EnvVarSource) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(source),
        ..Default::default()
    }
}

/// An emptyDir volume `name`, optionally capped at `size_limit` (e.g. "64Mi").
pub fn empty_dir(name: &str, size_limit: Option<&str>) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: size_limit.map(|s| Quantity(s.into())),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A mount of the volume `name` at `path`.
pub fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..Default::default()
    }
}
