//! The realtime-server Deployment, its Services and its PodDisruptionBudget.
//!
//! The container has two ports: `http` (socket.io, plus what `spec.expose` enables) and
//! `admin` (probes, metrics, the publish API). The Service `<name>`, which the Ingress routes
//! to, exposes only `http`; the ClusterIP Service `<name>-admin` exposes only `admin`, for
//! Prometheus and in-cluster backends. Two Services rather than two ports on one: an Ingress
//! (ours or one a user writes) can only reach what the Service it names exposes, so the
//! internals cannot be published by choosing the wrong port, and the admin Service is a stable
//! scrape and publish target of its own.

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    ClientIPConfig, Container, ContainerPort, EnvVar, HTTPGetAction, KeyToPath, Lifecycle,
    LifecycleHandler, PodSpec, PodTemplateSpec, Probe, SecretVolumeSource, Service,
    SessionAffinityConfig, SleepAction, TCPSocketAction, Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::parts::{
    self, container_port, empty_dir, env_default, env_field, env_resource, env_secret, env_value,
    match_labels, mount, probe, service_port,
};
use super::{
    REDIS_AUTH_HASH_ANNOTATION, annotations, labels, meta, restricted_container_security,
    restricted_pod_security,
};
use crate::api::{AppProbe, AppSpec};
use crate::validate::{
    ADMIN_PORT, Model, REDIS_PASSWORD_KEY, RedisModel, SERVER_PORT, SERVICE_PORT,
};

/// Seconds the preStop hook waits before SIGTERM, so endpoints and ingress stop sending new
/// connections to a pod before it starts draining.
pub const PRE_STOP_SLEEP_SECONDS: i64 = 5;
/// The server's SHUTDOWN_GRACE: time from SIGTERM to exit while it closes connections.
pub const SHUTDOWN_GRACE_SECONDS: i64 = 20;
/// preStop + drain + margin; the kubelet kills the container after this.
pub const TERMINATION_GRACE_SECONDS: i64 = PRE_STOP_SLEEP_SECONDS + SHUTDOWN_GRACE_SECONDS + 5;
/// Non-root uid/gid of the server (distroless "nonroot").
pub const SERVER_UID: i64 = 65532;

/// The server Deployment. `redis_auth_hash` is the digest of the Redis password (the managed
/// one, or the external one's `passwordSecretRef` value; None without a password), recorded on
/// the pod template so a new password rolls the pods.
pub fn deployment(model: &Model, redis_auth_hash: Option<&str>) -> Deployment {
    let s = &model.server;
    let selector = labels::server_selector(&model.name);

    let Flavour {
        env,
        ports,
        readiness,
        liveness,
        volumes: extra_volumes,
    } = match &s.app {
        None => realtime_server(model),
        Some(app) => own_server(model, app),
    };

    let container = Container {
        name: "server".into(),
        image: Some(s.image.clone()),
        image_pull_policy: s.image_pull_policy.clone(),
        ports: Some(ports),
        env: Some(env),
        resources: Some(s.resources.clone()),
        readiness_probe: Some(readiness),
        liveness_probe: Some(liveness),
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction {
                    seconds: PRE_STOP_SLEEP_SECONDS,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        security_context: Some(restricted_container_security()),
        volume_mounts: Some(
            std::iter::once(mount("tmp", "/tmp", false))
                .chain(extra_volumes.iter().map(|(_, m)| m.clone()))
                .collect(),
        ),
        ..Default::default()
    };

    let pod_annotations = annotations(
        redis_auth_hash.map(|h| (REDIS_AUTH_HASH_ANNOTATION.to_string(), h.to_string())),
    );

    Deployment {
        metadata: meta(model, model.server_name(), "server"),
        spec: Some(DeploymentSpec {
            replicas: Some(s.replicas),
            selector: match_labels(selector),
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels::child(&model.name, "server")),
                    annotations: pod_annotations,
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    // The server never talks to the Kubernetes API.
                    automount_service_account_token: Some(false),
                    // Service links would inject *_PORT variables next to the server's PORT.
                    enable_service_links: Some(false),
                    termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
                    security_context: Some(restricted_pod_security(SERVER_UID)),
                    image_pull_secrets: (!s.image_pull_secrets.is_empty())
                        .then(|| s.image_pull_secrets.clone()),
                    node_selector: (!s.node_selector.is_empty()).then(|| s.node_selector.clone()),
                    tolerations: (!s.tolerations.is_empty()).then(|| s.tolerations.clone()),
                    topology_spread_constraints: (!s.topology_spread.is_empty())
                        .then(|| s.topology_spread.clone()),
                    volumes: Some(
                        std::iter::once(empty_dir("tmp", Some("64Mi")))
                            .chain(extra_volumes.into_iter().map(|(v, _)| v))
                            .collect(),
                    ),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    }
}

/// What differs between realtime-server and your own server (`spec.app`).
struct Flavour {
    env: Vec<EnvVar>,
    ports: Vec<ContainerPort>,
    readiness: Probe,
    liveness: Probe,
    /// Volumes besides `/tmp`, with their mounts (the Redis password file).
    volumes: Vec<(Volume, VolumeMount)>,
}

/// realtime-server's thread count, from the pod's CPU request unless `spec.env` sets it.
const WORKER_THREADS: &str = "WORKER_THREADS";

/// Where realtime-server finds the Redis password (REDIS_PASSWORD_FILE).
pub const REDIS_PASSWORD_DIR: &str = "/var/run/secrets/realtime/redis";

/// realtime-server: its settings from the spec, probes on the admin port.
fn realtime_server(model: &Model) -> Flavour {
    let s = &model.server;
    let mut env = vec![
        env_value("PORT", &SERVER_PORT.to_string()),
        env_value("ADMIN_PORT", &ADMIN_PORT.to_string()),
        env_field("NAME", "metadata.name"),
        env_value("REDIS_URL", &model.redis_url()),
    ];
    // The password as a file, not an environment variable: no child process inherits it and
    // no `env` dump shows it.
    let password = redis_password_ref(model).map(|(secret, key)| {
        env.push(env_value(
            "REDIS_PASSWORD_FILE",
            &format!("{REDIS_PASSWORD_DIR}/{REDIS_PASSWORD_KEY}"),
        ));
        secret_file_volume(
            "redis-password",
            &secret,
            &key,
            REDIS_PASSWORD_KEY,
            REDIS_PASSWORD_DIR,
        )
    });
    // The Sentinels' own password; realtime-server reads it from its environment.
    match &model.redis {
        RedisModel::External {
            sentinel_password: Some(p),
            ..
        } => env.push(env_secret("REDIS_SENTINEL_PASSWORD", &p.name, &p.key)),
        // The managed Sentinels require the same generated password.
        RedisModel::Managed { ha: Some(_), .. } => env.push(env_secret(
            "REDIS_SENTINEL_PASSWORD",
            &model.redis_secret_name(),
            REDIS_PASSWORD_KEY,
        )),
        _ => {}
    }
    env.extend([
        env_value("TRANSPORTS", &s.transports),
        env_value("SOCKETIO_PATH", &model.socketio_path()),
        env_value("PING_INTERVAL", &format!("{}s", s.ping_interval_seconds)),
        env_value("PING_TIMEOUT", &format!("{}s", s.ping_timeout_seconds)),
        env_value("SHUTDOWN_GRACE", &format!("{SHUTDOWN_GRACE_SECONDS}s")),
        env_value("DEMO_PAGE", &s.expose.demo_page.to_string()),
        env_value("PUBLIC_PUBLISH_API", &s.expose.publish_api.to_string()),
    ]);
    // As many threads as cores the scheduler reserved for the pod (its CPU request, rounded
    // up), not one per core of the machine: more threads than cores only hand each delivery
    // over between threads that take turns on the same cores (bench/README.md, "Floor").
    // Without a request: one per core the pod may use. A WORKER_THREADS in `spec.env` replaces
    // it (one entry per name: server-side apply refuses duplicates), and so does tokio's own
    // TOKIO_WORKER_THREADS, which WORKER_THREADS would otherwise silently override.
    env.extend(env_default(
        &s.env,
        &[WORKER_THREADS, "TOKIO_WORKER_THREADS"],
        env_resource(WORKER_THREADS, "requests.cpu"),
    ));
    if let Some((window, max_packets)) = s.recovery {
        env.push(env_value("RECOVERY_WINDOW", &format!("{window}s")));
        env.push(env_value("RECOVERY_MAX_PACKETS", &max_packets.to_string()));
    }
    env.extend(s.env.iter().cloned());
    Flavour {
        env,
        ports: vec![
            container_port("http", SERVER_PORT),
            container_port("admin", ADMIN_PORT),
        ],
        readiness: probe(http_get("/readyz", "admin"), 5, 2, 2),
        liveness: probe(http_get("/healthz", "admin"), 10, 2, 3),
        volumes: password.into_iter().collect(),
    }
}

/// Your own server: the documented environment contract (PORT, NAME, REDIS_URL without a
/// password, REDIS_HOST, REDIS_PORT, REDIS_PASSWORD from the Secret) and the probes the spec
/// names, on the one port it serves.
fn own_server(model: &Model, app: &AppSpec) -> Flavour {
    let endpoint = model.redis_endpoint();
    let (host, port) = endpoint
        .rsplit_once(':')
        .unwrap_or((endpoint.as_str(), "6379"));
    let mut env = vec![
        env_value("PORT", &app.port.to_string()),
        env_field("NAME", "metadata.name"),
        env_value("REDIS_URL", &model.redis_url()),
        env_value("REDIS_HOST", host.trim_matches(['[', ']'])),
        env_value("REDIS_PORT", port),
    ];
    // An environment variable here: a socket.io app written for nginx + Redis reads its settings
    // from the environment, and asking it to read a file would mean changing it.
    env.extend(
        redis_password_ref(model).map(|(secret, key)| env_secret("REDIS_PASSWORD", &secret, &key)),
    );
    env.extend(model.server.env.iter().cloned());
    let check = |p: &Option<AppProbe>| match p.as_ref().and_then(|p| p.http_path.as_deref()) {
        Some(path) => http_get(path, "http"),
        None => Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::String("http".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
    };
    Flavour {
        env,
        ports: vec![container_port("http", app.port)],
        readiness: probe(check(&app.readiness_probe), 5, 2, 2),
        liveness: probe(check(&app.liveness_probe), 10, 2, 3),
        volumes: Vec::new(),
    }
}

/// The Secret and key of the Redis password: the managed Redis' Secret, or the external one's
/// passwordSecretRef.
fn redis_password_ref(model: &Model) -> Option<(String, String)> {
    match &model.redis {
        RedisModel::Managed { .. } => {
            Some((model.redis_secret_name(), REDIS_PASSWORD_KEY.to_string()))
        }
        RedisModel::External { password, .. } => {
            password.as_ref().map(|p| (p.name.clone(), p.key.clone()))
        }
    }
}

/// A volume `name` with the one `key` of Secret `secret` as the file `file`, readable by the
/// pod's group only, mounted read-only at `dir`. The pod does not start without it.
fn secret_file_volume(
    name: &str,
    secret: &str,
    key: &str,
    file: &str,
    dir: &str,
) -> (Volume, VolumeMount) {
    let volume = Volume {
        name: name.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            items: Some(vec![KeyToPath {
                key: key.into(),
                path: file.into(),
                ..Default::default()
            }]),
            default_mode: Some(0o440),
            optional: Some(false),
        }),
        ..Default::default()
    };
    (volume, mount(name, dir, true))
}

/// An HTTP GET of `path` on the container port named `port`.
fn http_get(path: &str, port: &str) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(port.into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The ClusterIP Service in front of the server pods (port 80 -> the pods' `http` port only:
/// the Ingress routes here, so the admin port is not on it).
///
/// With long-polling on, every request of an Engine.IO session must reach the pod that holds
/// it ("Session ID unknown" otherwise); in-cluster clients come through this Service, not the
/// Ingress, so the Service keeps each client address on one pod (`ClientIP`) for longer than
/// a polling client can stay silent (ping interval + ping timeout), twice over.
pub fn service(model: &Model) -> Service {
    let s = &model.server;
    let polling = s.transports.split(',').any(|t| t == "polling");
    let (affinity, affinity_config) = if polling {
        let silent = s.ping_interval_seconds + s.ping_timeout_seconds;
        (
            "ClientIP",
            Some(SessionAffinityConfig {
                client_ip: Some(ClientIPConfig {
                    timeout_seconds: Some((2 * silent).clamp(60, 86_400)),
                }),
            }),
        )
    } else {
        ("None", None)
    };
    let mut svc = parts::service(
        model,
        model.server_name(),
        "server",
        labels::server_selector(&model.name),
        service_port("http", SERVICE_PORT),
    );
    if let Some(spec) = svc.spec.as_mut() {
        spec.type_ = Some("ClusterIP".into());
        spec.session_affinity = Some(affinity.into());
        spec.session_affinity_config = affinity_config;
    }
    svc
}

/// The ClusterIP Service of the admin port (9090 -> the pods' `admin` port): `/metrics` for
/// Prometheus, `POST /api/v1/publish` for in-cluster backends, the probes for debugging. No
/// Ingress routes to it. Only ready pods get published requests (default endpoints).
pub fn admin_service(model: &Model) -> Service {
    let mut svc = parts::service(
        model,
        &model.admin_service_name(),
        "server",
        labels::server_selector(&model.name),
        service_port("admin", ADMIN_PORT),
    );
    if let Some(spec) = svc.spec.as_mut() {
        spec.type_ = Some("ClusterIP".into());
    }
    svc
}

/// Voluntary disruptions (node drains) take down at most one server pod at a time. A budget
/// of one unavailable pod never blocks a drain, even with a single replica.
pub fn pod_disruption_budget(model: &Model) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta(model, model.server_name(), "server"),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(match_labels(labels::server_selector(&model.name))),
            // A server is unready only when draining or deaf (a Redis outage keeps every pod
            // ready), so an unready pod counts against the budget like any other: a drain can
            // never evict them all at once.
            unhealthy_pod_eviction_policy: Some("IfHealthyBudget".into()),
            ..Default::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::test_support::model;
    use serde_json::json;

    fn env_of(d: &Deployment) -> Vec<EnvVar> {
        d.spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
            .env
            .clone()
            .unwrap()
    }

    /// The (Secret, key) behind REDIS_PASSWORD_FILE: the variable names the mounted file, the
    /// volume maps exactly that key to it, read-only.
    fn password_file(d: &Deployment) -> Option<(String, String)> {
        let pod = d.spec.as_ref()?.template.spec.as_ref()?;
        let c = &pod.containers[0];
        let path = c
            .env
            .iter()
            .flatten()
            .find(|e| e.name == "REDIS_PASSWORD_FILE")?
            .value
            .clone()?;
        let m = c
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| path.starts_with(&format!("{}/", m.mount_path)))?;
        assert_eq!(m.read_only, Some(true));
        let v = pod.volumes.iter().flatten().find(|v| v.name == m.name)?;
        let secret = v.secret.as_ref()?;
        let item = &secret.items.as_ref()?[0];
        assert_eq!(
            format!("{}/{}", m.mount_path, item.path),
            path,
            "the file is where the variable says"
        );
        assert_eq!(secret.default_mode, Some(0o440));
        Some((secret.secret_name.clone()?, item.key.clone()))
    }

    fn find<'a>(env: &'a [EnvVar], name: &str) -> &'a EnvVar {
        env.iter()
            .find(|e| e.name == name)
            .unwrap_or_else(|| panic!("no {name}"))
    }

    #[test]
    fn own_server_gets_the_env_contract_its_port_and_its_probes() {
        let m = model(json!({"image": "acme/chat:1", "replicas": 3,
            "app": {"port": 8080, "readinessProbe": {"httpPath": "/health"}},
            "env": [{"name": "LOG_LEVEL", "value": "debug"}]}));
        let d = deployment(&m, Some("h"));
        let c = &d
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0];
        let env = env_of(&d);
        let names: Vec<_> = env.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "PORT",
                "NAME",
                "REDIS_URL",
                "REDIS_HOST",
                "REDIS_PORT",
                "REDIS_PASSWORD",
                "LOG_LEVEL"
            ],
            "only the documented contract, then the user's variables"
        );
        assert_eq!(find(&env, "PORT").value.as_deref(), Some("8080"));
        assert_eq!(
            find(&env, "REDIS_URL").value.as_deref(),
            Some("redis://chat-redis.apps.svc:6379"),
            "no password in the URL"
        );
        assert_eq!(
            find(&env, "REDIS_HOST").value.as_deref(),
            Some("chat-redis.apps.svc")
        );
        assert_eq!(find(&env, "REDIS_PORT").value.as_deref(), Some("6379"));
        let secret = find(&env, "REDIS_PASSWORD")
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!(secret.name, "chat-redis-auth");
        let ports: Vec<_> = c
            .ports
            .iter()
            .flatten()
            .map(|p| (p.name.as_deref().unwrap(), p.container_port))
            .collect();
        assert_eq!(ports, [("http", 8080)], "no admin port");
        let ready = c
            .readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(ready.path.as_deref(), Some("/health"));
        assert_eq!(ready.port, IntOrString::String("http".into()));
        let live = c.liveness_probe.as_ref().unwrap();
        assert!(live.http_get.is_none(), "TCP when no httpPath");
        assert_eq!(
            live.tcp_socket.as_ref().unwrap().port,
            IntOrString::String("http".into())
        );
        let desired = crate::build::desired(&m, Some("pw"), None);
        assert!(desired.admin_service.is_none());
        assert!(!desired.keep().services.contains(&"chat-admin".to_string()));
        assert_eq!(
            service(&m).spec.unwrap().ports.unwrap()[0].target_port,
            Some(IntOrString::String("http".into()))
        );
    }

    #[test]
    fn deployment_wires_the_server_contract() {
        let m =
            model(json!({"replicas": 3, "transports": ["websocket"], "pingIntervalSeconds": 10}));
        let d = deployment(&m, Some("abc"));
        let spec = d.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(3));
        assert_eq!(d.metadata.name.as_deref(), Some("chat"));
        assert_eq!(d.metadata.namespace.as_deref(), Some("apps"));
        let env = env_of(&d);
        assert_eq!(find(&env, "PORT").value.as_deref(), Some("3000"));
        assert_eq!(find(&env, "ADMIN_PORT").value.as_deref(), Some("9090"));
        assert_eq!(find(&env, "DEMO_PAGE").value.as_deref(), Some("false"));
        assert_eq!(
            find(&env, "PUBLIC_PUBLISH_API").value.as_deref(),
            Some("false")
        );
        assert_eq!(
            find(&env, "NAME")
                .value_from
                .as_ref()
                .unwrap()
                .field_ref
                .as_ref()
                .unwrap()
                .field_path,
            "metadata.name"
        );
        let url = find(&env, "REDIS_URL").value.as_deref().unwrap();
        assert_eq!(url, "redis://chat-redis.apps.svc:6379");
        assert_eq!(
            password_file(&deployment(&m, None)),
            Some(("chat-redis-auth".into(), "password".into()))
        );
        assert!(
            env.iter().all(|e| e.name != "REDIS_PASSWORD"),
            "the password is a mounted file, not an environment variable"
        );
        assert_eq!(find(&env, "TRANSPORTS").value.as_deref(), Some("websocket"));
        assert_eq!(find(&env, "PING_INTERVAL").value.as_deref(), Some("10s"));
        assert_eq!(find(&env, "SHUTDOWN_GRACE").value.as_deref(), Some("20s"));
        assert_eq!(find(&env, "LOG_FORMAT").value.as_deref(), Some("json"));
        let workers = find(&env, "WORKER_THREADS")
            .value_from
            .as_ref()
            .unwrap()
            .resource_field_ref
            .as_ref()
            .unwrap();
        assert_eq!(workers.resource, "requests.cpu");
        assert_eq!(
            workers.divisor.as_ref().unwrap().0,
            "1",
            "whole cores, rounded up"
        );
        assert_eq!(workers.container_name, None, "the server's own container");
        let annotations = spec
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap();
        assert_eq!(annotations[REDIS_AUTH_HASH_ANNOTATION], "abc");
    }

    #[test]
    fn deployment_probes_drain_and_rollout() {
        let d = deployment(&model(json!({})), None);
        let spec = d.spec.as_ref().unwrap();
        let ru = spec
            .strategy
            .as_ref()
            .unwrap()
            .rolling_update
            .as_ref()
            .unwrap();
        assert_eq!(ru.max_surge, Some(IntOrString::Int(1)));
        assert_eq!(ru.max_unavailable, Some(IntOrString::Int(0)));
        let pod = spec.template.spec.as_ref().unwrap();
        let c = &pod.containers[0];
        let ready = c
            .readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(ready.path.as_deref(), Some("/readyz"));
        assert_eq!(ready.port, IntOrString::String("admin".into()));
        let live = c
            .liveness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(live.path.as_deref(), Some("/healthz"));
        assert_eq!(live.port, IntOrString::String("admin".into()));
        let ports: Vec<_> = c
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| (p.name.as_deref().unwrap(), p.container_port))
            .collect();
        assert_eq!(ports, [("http", 3000), ("admin", 9090)]);
        let sleep = c
            .lifecycle
            .as_ref()
            .unwrap()
            .pre_stop
            .as_ref()
            .unwrap()
            .sleep
            .as_ref()
            .unwrap();
        assert_eq!(sleep.seconds, PRE_STOP_SLEEP_SECONDS);
        let grace = pod.termination_grace_period_seconds.unwrap();
        assert!(
            grace > PRE_STOP_SLEEP_SECONDS + SHUTDOWN_GRACE_SECONDS,
            "grace {grace} too short for a drain"
        );
        assert!(
            spec.template
                .metadata
                .as_ref()
                .unwrap()
                .annotations
                .is_none()
        );
    }

    #[test]
    fn deployment_is_restricted() {
        let d = deployment(&model(json!({})), None);
        let pod = d.spec.unwrap().template.spec.unwrap();
        let psc = pod.security_context.as_ref().unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(
            psc.seccomp_profile.as_ref().unwrap().type_,
            "RuntimeDefault"
        );
        let sc = pod.containers[0].security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_string()][..])
        );
        assert_eq!(pod.automount_service_account_token, Some(false));
    }

    #[test]
    fn deployment_resources_scheduling_and_owner() {
        let m = model(json!({
            "resources": {"requests": {"cpu": "1"}},
            "nodeSelector": {"pool": "rt"},
            "tolerations": [{"key": "dedicated", "operator": "Exists"}],
            "imagePullPolicy": "Always",
            "image": "my/img:2",
        }));
        let d = deployment(&m, None);
        let owner = &d.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.controller),
            ("RealtimeCluster", "chat", Some(true))
        );
        let pod = d.spec.unwrap().template.spec.unwrap();
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("my/img:2"));
        assert_eq!(c.image_pull_policy.as_deref(), Some("Always"));
        assert_eq!(
            c.resources.as_ref().unwrap().requests.as_ref().unwrap()["cpu"].0,
            "1"
        );
        assert_eq!(pod.node_selector.unwrap()["pool"], "rt");
        assert_eq!(
            pod.tolerations.unwrap()[0].key.as_deref(),
            Some("dedicated")
        );
        let spread = pod.topology_spread_constraints.unwrap();
        assert_eq!(spread[0].topology_key, "kubernetes.io/hostname");
        assert_eq!(spread[0].when_unsatisfiable, "ScheduleAnyway");
    }

    #[test]
    fn default_resources_are_set() {
        let d = deployment(&model(json!({})), None);
        let c = &d.spec.unwrap().template.spec.unwrap().containers[0];
        let r = c.resources.as_ref().unwrap();
        assert_eq!(r.requests.as_ref().unwrap()["memory"].0, "128Mi");
        assert_eq!(r.limits.as_ref().unwrap()["memory"].0, "512Mi");
    }

    #[test]
    fn external_redis_password_and_url() {
        let m = model(
            json!({"redis": {"external": {"url": "rediss://cache.example:6380",
            "tls": true, "passwordSecretRef": {"name": "creds", "key": "pw"}}}}),
        );
        let env = env_of(&deployment(&m, None));
        assert_eq!(
            find(&env, "REDIS_URL").value.as_deref(),
            Some("rediss://cache.example:6380")
        );
        assert_eq!(
            password_file(&deployment(&m, None)),
            Some(("creds".into(), "pw".into()))
        );

        let m = model(json!({"redis": {"external": {"host": "cache"}}}));
        let d = deployment(&m, None);
        assert!(
            env_of(&d)
                .iter()
                .all(|e| !e.name.starts_with("REDIS_PASSWORD"))
        );
        assert_eq!(password_file(&d), None);
        assert!(
            env_of(&d)
                .iter()
                .all(|e| e.name != "REDIS_SENTINEL_PASSWORD")
        );
    }

    #[test]
    fn recovery_sets_the_window_and_the_log_bound() {
        let env = env_of(&deployment(
            &model(json!({"recovery": {"enabled": true, "windowSeconds": 90}})),
            None,
        ));
        assert_eq!(find(&env, "RECOVERY_WINDOW").value.as_deref(), Some("90s"));
        assert_eq!(
            find(&env, "RECOVERY_MAX_PACKETS").value.as_deref(),
            Some("10000")
        );
        for spec in [json!({}), json!({"recovery": {"enabled": false}})] {
            let env = env_of(&deployment(&model(spec), None));
            assert!(env.iter().all(|e| e.name != "RECOVERY_WINDOW"));
        }
    }

    #[test]
    fn managed_ha_redis_is_reached_through_its_sentinels_with_one_password() {
        let m = model(json!({"redis": {"managed": {"highAvailability": {"sentinelPods": 5}}}}));
        let d = deployment(&m, None);
        let env = env_of(&d);
        let url = find(&env, "REDIS_URL").value.clone().unwrap();
        assert!(
            url.starts_with("redis-sentinel://chat-sentinel-0.chat-sentinel.apps.svc:26379?sentinelServiceName=realtime&node="),
            "{url}"
        );
        assert_eq!(url.matches("&node=").count(), 4, "{url}");
        assert_eq!(
            password_file(&d),
            Some(("chat-redis-auth".into(), "password".into()))
        );
        let r = find(&env, "REDIS_SENTINEL_PASSWORD")
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!(
            (r.name.as_str(), r.key.as_str()),
            ("chat-redis-auth", "password")
        );
        // one Redis pod: no Sentinel password
        let env = env_of(&deployment(&model(json!({})), None));
        assert!(env.iter().all(|e| e.name != "REDIS_SENTINEL_PASSWORD"));
    }

    #[test]
    fn external_sentinel_url_and_both_passwords() {
        let m = model(json!({"redis": {"external": {
            "passwordSecretRef": {"name": "data"},
            "sentinel": {"masterName": "mymaster", "endpoints": ["s-0.sentinel", "s-1.sentinel:26380"],
                "passwordSecretRef": {"name": "sentinels", "key": "sentinel-pw"}}}}}));
        let env = env_of(&deployment(&m, None));
        assert_eq!(
            find(&env, "REDIS_URL").value.as_deref(),
            Some(
                "redis-sentinel://s-0.sentinel:26379?sentinelServiceName=mymaster&node=s-1.sentinel:26380"
            )
        );
        let secret = |name: &str| {
            let r = find(&env, name)
                .value_from
                .as_ref()
                .unwrap()
                .secret_key_ref
                .as_ref()
                .unwrap();
            (r.name.clone(), r.key.clone())
        };
        assert_eq!(
            password_file(&deployment(&m, None)),
            Some(("data".into(), "password".into()))
        );
        assert_eq!(
            secret("REDIS_SENTINEL_PASSWORD"),
            ("sentinels".into(), "sentinel-pw".into())
        );
        // no value of either is written into the pod spec
        assert!(find(&env, "REDIS_SENTINEL_PASSWORD").value.is_none());
    }

    #[test]
    fn expose_switches_the_public_routes() {
        let m = model(json!({"expose": {"demoPage": true, "publishApi": true},
            "env": [{"name": "API_KEY", "value": "0123456789abcdef"}]}));
        let env = env_of(&deployment(&m, None));
        assert_eq!(find(&env, "DEMO_PAGE").value.as_deref(), Some("true"));
        assert_eq!(
            find(&env, "PUBLIC_PUBLISH_API").value.as_deref(),
            Some("true")
        );
    }

    #[test]
    fn user_env_comes_after_the_managed_variables() {
        let m = model(
            json!({"env": [{"name": "API_KEY", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}),
        );
        let env = env_of(&deployment(&m, None));
        assert_eq!(env.last().unwrap().name, "API_KEY");
    }

    #[test]
    fn worker_threads_in_spec_env_replace_the_cpu_request() {
        let m = model(json!({"env": [{"name": "WORKER_THREADS", "value": "4"}]}));
        let env = env_of(&deployment(&m, None));
        let set: Vec<_> = env.iter().filter(|e| e.name == "WORKER_THREADS").collect();
        assert_eq!(set.len(), 1, "one entry per name (server-side apply)");
        assert_eq!(set[0].value.as_deref(), Some("4"));
        let m = model(json!({"env": [{"name": "TOKIO_WORKER_THREADS", "value": "3"}]}));
        let env = env_of(&deployment(&m, None));
        assert!(
            env.iter().all(|e| e.name != "WORKER_THREADS"),
            "tokio's own variable is not overridden"
        );
    }

    #[test]
    fn service_and_pdb_select_the_server_pods() {
        let m = model(json!({}));
        let svc = service(&m);
        let spec = svc.spec.unwrap();
        assert_eq!(spec.selector.unwrap(), labels::server_selector("chat"));
        let ports = spec.ports.unwrap();
        assert_eq!(
            ports.len(),
            1,
            "the Ingress' Service exposes socket.io only"
        );
        assert_eq!(ports[0].port, 80);
        assert_eq!(
            ports[0].target_port,
            Some(IntOrString::String("http".into()))
        );
        assert!(svc.metadata.owner_references.is_some());
        // Polling is on by default: one client address stays on one pod, past a silent poll.
        assert_eq!(spec.session_affinity.as_deref(), Some("ClientIP"));
        let timeout = spec
            .session_affinity_config
            .and_then(|c| c.client_ip)
            .and_then(|c| c.timeout_seconds)
            .unwrap();
        assert!(timeout > 25 + 20, "{timeout}");
        let ws_only = service(&model(json!({"transports": ["websocket"]})))
            .spec
            .unwrap();
        assert_eq!(ws_only.session_affinity.as_deref(), Some("None"));
        assert!(ws_only.session_affinity_config.is_none());

        let pdb = pod_disruption_budget(&m);
        let spec = pdb.spec.unwrap();
        assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
        assert_eq!(
            spec.selector.unwrap().match_labels.unwrap(),
            labels::server_selector("chat")
        );
        assert_eq!(
            pdb.metadata.labels.unwrap()[labels::MANAGED_BY],
            "realtime-operator"
        );
    }

    #[test]
    fn admin_service_exposes_only_the_admin_port() {
        let m = model(json!({}));
        let svc = admin_service(&m);
        assert_eq!(svc.metadata.name.as_deref(), Some("chat-admin"));
        assert!(svc.metadata.owner_references.is_some());
        let spec = svc.spec.unwrap();
        assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
        assert_eq!(spec.selector.unwrap(), labels::server_selector("chat"));
        let ports = spec.ports.unwrap();
        assert_eq!(ports.len(), 1);
        assert_eq!(
            (ports[0].name.as_deref(), ports[0].port),
            (Some("admin"), 9090)
        );
        assert_eq!(
            ports[0].target_port,
            Some(IntOrString::String("admin".into()))
        );
    }
}
