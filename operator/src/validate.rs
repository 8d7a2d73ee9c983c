//! Spec -> validated, defaulted [`Model`] (pure).
//!
//! Every way a spec can be wrong is found here, all at once, so that the builders and the
//! apply stage never fail on user input and the user sees the complete list in one condition.
//! The checks mirror the CRD's CEL rules (a cluster may run an older CRD, or objects may have
//! been stored before a rule existed) and add the ones CEL cannot express (quantities,
//! annotation conflicts).

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::{
    EnvVar, LocalObjectReference, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use kube::Resource;

use crate::api::{
    Affinity, AppSpec, Expose, ExternalCluster, ExternalSentinel, MAX_NAME_LEN, NetworkPolicies,
    RESERVED_ENV, RealtimeCluster, RealtimeClusterSpec, RedisSpec, RedisTopology, SecretKeyRef,
    Transport,
};
use crate::build::labels;
use crate::build::parts::{env_default, env_value};

/// Operator-wide defaults (set by flags), used where the spec leaves a choice open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Defaults {
    /// Server image when `spec.image` is unset.
    pub server_image: String,
    /// Redis image when `spec.redis.managed.image` is unset.
    pub redis_image: String,
    /// The operator's own namespace: the server NetworkPolicy lets it reach the admin port
    /// (it reads each pod's connection count there). None outside a cluster.
    pub operator_namespace: Option<String>,
}

/// One problem with a spec: where it is and what is wrong, phrased for the user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecError {
    pub field: String,
    pub message: String,
}

/// Every problem found in a spec (never empty).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecErrors(pub Vec<SpecError>);

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", e.field, e.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for SpecErrors {}

/// The server container's public port (the server's PORT): socket.io.
pub const SERVER_PORT: i32 = 3000;
/// The server container's admin port (the server's ADMIN_PORT): probes, metrics, the publish
/// API. Exposed only by the `<name>-admin` Service, on the same number.
pub const ADMIN_PORT: i32 = 9090;
/// The port the server Service exposes.
pub const SERVICE_PORT: i32 = 80;
/// Redis' port.
pub const REDIS_PORT: i32 = 6379;
/// Key of the password in the generated Redis Secret.
pub const REDIS_PASSWORD_KEY: &str = "password";

/// Annotations the operator owns on the Ingress; `spec.ingress.annotations` may not set them.
pub const MANAGED_INGRESS_ANNOTATIONS: &[&str] = &[
    "nginx.ingress.kubernetes.io/affinity",
    "nginx.ingress.kubernetes.io/affinity-mode",
    "nginx.ingress.kubernetes.io/session-cookie-name",
    "nginx.ingress.kubernetes.io/session-cookie-max-age",
    "nginx.ingress.kubernetes.io/session-cookie-expires",
    "nginx.ingress.kubernetes.io/session-cookie-path",
    "nginx.ingress.kubernetes.io/upstream-hash-by",
    "nginx.ingress.kubernetes.io/proxy-read-timeout",
    "nginx.ingress.kubernetes.io/proxy-send-timeout",
    "nginx.ingress.kubernetes.io/proxy-connect-timeout",
];

/// A RealtimeCluster after validation: every default resolved, every value known good.
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    pub name: String,
    pub namespace: String,
    /// Controller owner reference that every child carries.
    pub owner: OwnerReference,
    pub generation: Option<i64>,
    pub paused: bool,
    pub server: ServerModel,
    pub redis: RedisModel,
    /// `None` when the ingress is absent or disabled.
    pub ingress: Option<IngressModel>,
    /// `None` when the spec turns them off.
    pub network_policies: Option<NetworkPolicies>,
    /// See [`Defaults::operator_namespace`].
    pub operator_namespace: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ServerModel {
    pub replicas: i32,
    pub image: String,
    pub image_pull_policy: Option<String>,
    pub image_pull_secrets: Vec<LocalObjectReference>,
    pub resources: ResourceRequirements,
    /// The user's extra variables, after the operator's overridable defaults (LOG_FORMAT;
    /// WORKER_THREADS, which comes from the pod itself, is added by `build::server` unless
    /// these set it).
    pub env: Vec<EnvVar>,
    /// Value of TRANSPORTS, e.g. `polling,websocket`.
    pub transports: String,
    /// Optional routes of the public port (DEMO_PAGE, PUBLIC_PUBLISH_API).
    pub expose: Expose,
    pub ping_interval_seconds: i32,
    pub ping_timeout_seconds: i32,
    pub node_selector: BTreeMap<String, String>,
    pub tolerations: Vec<Toleration>,
    /// `Some`: the image is the user's own socket.io server, not realtime-server.
    pub app: Option<AppSpec>,
    /// Constraints with their labelSelector filled in.
    pub topology_spread: Vec<TopologySpreadConstraint>,
    /// Connection state recovery: (window seconds, max packets), when enabled.
    pub recovery: Option<(i32, i32)>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum RedisModel {
    Managed {
        image: String,
        resources: ResourceRequirements,
        /// A primary, replicas and Sentinels instead of one pod.
        ha: Option<HaModel>,
    },
    External {
        /// The servers' REDIS_URL: redis://, rediss://, redis-sentinel://, rediss-sentinel://,
        /// redis-cluster:// or rediss-cluster://, never with a password.
        url: String,
        /// host:port shown in the status; with Sentinel or Cluster, the Sentinels' or the seed
        /// nodes', comma-separated.
        endpoint: String,
        /// With Sentinel: the monitored primary's name.
        master_name: Option<String>,
        /// The data nodes' password (REDIS_PASSWORD).
        password: Option<SecretKeyRef>,
        /// The Sentinels' own password (REDIS_SENTINEL_PASSWORD).
        sentinel_password: Option<SecretKeyRef>,
    },
}

/// A highly available managed Redis (`spec.redis.managed.highAvailability`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HaModel {
    /// Pods of the Redis StatefulSet: one primary, the others replicas.
    pub redis_pods: i32,
    /// Pods of the Sentinel StatefulSet (odd).
    pub sentinel_pods: i32,
    /// The Sentinels' `down-after-milliseconds`.
    pub down_after_ms: i32,
}

impl HaModel {
    /// Sentinels that must agree the primary is down: a majority.
    pub fn quorum(&self) -> i32 {
        self.sentinel_pods / 2 + 1
    }
}

/// The name under which the managed Sentinels monitor the primary (`sentinelServiceName`).
pub const SENTINEL_MASTER_NAME: &str = "realtime";

#[derive(Clone, Debug, PartialEq)]
pub struct IngressModel {
    pub class_name: String,
    pub host: String,
    pub path: String,
    pub tls_secret_name: Option<String>,
    pub affinity: Affinity,
    pub cookie_name: String,
    pub cookie_max_age_seconds: i64,
    pub cookie_path: String,
    pub read_timeout_seconds: i32,
    pub send_timeout_seconds: i32,
    pub connect_timeout_seconds: i32,
    pub annotations: BTreeMap<String, String>,
}

impl Model {
    /// The servers' socket.io path (`SOCKETIO_PATH`, no trailing slash): `/socket.io` under
    /// the Ingress's path prefix, so that a prefix other than `/` reaches them.
    pub fn socketio_path(&self) -> String {
        match &self.ingress {
            Some(i) if i.path != "/" => format!("{}/socket.io", i.path.trim_end_matches('/')),
            _ => "/socket.io".into(),
        }
    }

    /// Name of the server Deployment, Service, PodDisruptionBudget and Ingress.
    pub fn server_name(&self) -> &str {
        &self.name
    }
    /// Name of the ClusterIP Service of the admin port (probes, metrics, the publish API).
    pub fn admin_service_name(&self) -> String {
        format!("{}-admin", self.name)
    }
    /// Name of the Redis StatefulSet and its headless Service.
    pub fn redis_name(&self) -> String {
        format!("{}-redis", self.name)
    }
    /// Name of the generated Redis password Secret.
    pub fn redis_secret_name(&self) -> String {
        format!("{}-redis-auth", self.name)
    }
    /// Name of the managed Sentinels' StatefulSet, headless Service and PodDisruptionBudget.
    pub fn sentinel_name(&self) -> String {
        format!("{}-sentinel", self.name)
    }
    /// The high-availability settings of a managed Redis, if it has them.
    pub fn redis_ha(&self) -> Option<&HaModel> {
        match &self.redis {
            RedisModel::Managed { ha, .. } => ha.as_ref(),
            RedisModel::External { .. } => None,
        }
    }
    /// The stable DNS name of managed Redis pod `i` (through its headless Service).
    pub fn redis_pod_host(&self, i: i32) -> String {
        let r = self.redis_name();
        format!("{r}-{i}.{r}.{}.svc", self.namespace)
    }
    /// The stable DNS name of managed Sentinel pod `i`.
    pub fn sentinel_pod_host(&self, i: i32) -> String {
        let s = self.sentinel_name();
        format!("{s}-{i}.{s}.{}.svc", self.namespace)
    }
    /// host:port of every managed Sentinel, in pod order.
    pub fn sentinel_endpoints(&self) -> Vec<String> {
        let n = self.redis_ha().map_or(0, |h| h.sentinel_pods);
        (0..n)
            .map(|i| format!("{}:{SENTINEL_PORT}", self.sentinel_pod_host(i)))
            .collect()
    }
    /// REDIS_URL of the servers (no password: that comes from REDIS_PASSWORD).
    pub fn redis_url(&self) -> String {
        match &self.redis {
            RedisModel::Managed { ha: Some(_), .. } => {
                let sentinels = self.sentinel_endpoints();
                let mut url = format!(
                    "redis-sentinel://{}?sentinelServiceName={SENTINEL_MASTER_NAME}",
                    sentinels[0]
                );
                for s in &sentinels[1..] {
                    url.push_str("&node=");
                    url.push_str(s);
                }
                url
            }
            RedisModel::Managed { .. } => format!("redis://{}", self.managed_redis_endpoint()),
            RedisModel::External { url, .. } => url.clone(),
        }
    }
    /// host:port of the Redis the servers use (with Sentinel: the Sentinels').
    pub fn redis_endpoint(&self) -> String {
        match &self.redis {
            RedisModel::Managed { ha: Some(_), .. } => self.sentinel_endpoints().join(","),
            RedisModel::Managed { .. } => self.managed_redis_endpoint(),
            RedisModel::External { endpoint, .. } => endpoint.clone(),
        }
    }
    /// How the servers reach Redis, and with Sentinel the primary's name.
    pub fn redis_topology(&self) -> (RedisTopology, Option<&str>) {
        match &self.redis {
            RedisModel::External {
                master_name: Some(m),
                ..
            } => (RedisTopology::Sentinel, Some(m)),
            RedisModel::Managed { ha: Some(_), .. } => {
                (RedisTopology::Sentinel, Some(SENTINEL_MASTER_NAME))
            }
            // The scheme is what tells the server, too.
            RedisModel::External { url, .. }
                if url
                    .split_once("://")
                    .is_some_and(|(s, _)| s.ends_with("-cluster")) =>
            {
                (RedisTopology::Cluster, None)
            }
            _ => (RedisTopology::Standalone, None),
        }
    }
    fn managed_redis_endpoint(&self) -> String {
        format!("{}.{}.svc:{REDIS_PORT}", self.redis_name(), self.namespace)
    }
    /// The URL clients connect to.
    pub fn endpoint(&self) -> String {
        match &self.ingress {
            Some(i) => {
                let scheme = if i.tls_secret_name.is_some() {
                    "https"
                } else {
                    "http"
                };
                format!("{scheme}://{}", i.host)
            }
            None => format!("http://{}.{}.svc", self.server_name(), self.namespace),
        }
    }
    /// The server pods' selector, as the scale subresource expects it (`k=v,k=v`).
    pub fn selector_string(&self) -> String {
        labels::server_selector_string(&self.name)
    }
}

/// Validates the spec and fills in the defaults: every error is collected (one pass per spec
/// section, each its own function), so the status lists them all at once.
pub fn validate(rc: &RealtimeCluster, defaults: &Defaults) -> Result<Model, SpecErrors> {
    let mut errs = Vec::new();
    let mut err = |field: &str, message: String| {
        errs.push(SpecError {
            field: field.to_string(),
            message,
        })
    };
    let spec = &rc.spec;
    let (name, namespace, owner) = check_metadata(rc, &mut err);
    let server = check_server(spec, defaults, &mut err);
    let redis = check_redis(&spec.redis, defaults, &mut err);
    let ingress = check_ingress(spec, &mut err);
    let selector = LabelSelector {
        match_labels: Some(labels::server_selector(&name)),
        ..Default::default()
    };
    let topology_spread = match &spec.topology_spread_constraints {
        None => default_topology_spread(&selector),
        Some(list) => list
            .iter()
            .cloned()
            .map(|mut c| {
                if c.label_selector.is_none() {
                    c.label_selector = Some(selector.clone());
                }
                c
            })
            .collect(),
    };

    if !errs.is_empty() {
        return Err(SpecErrors(errs));
    }

    // LOG_FORMAT=json suits log collectors; the user's own LOG_FORMAT replaces it. Not for your
    // own server (spec.app): its environment is only the documented contract and spec.env.
    let mut env = Vec::new();
    if spec.app.is_none() {
        env.extend(env_default(
            &spec.env,
            &["LOG_FORMAT"],
            env_value("LOG_FORMAT", "json"),
        ));
    }
    env.extend(spec.env.iter().cloned());

    let ServerParts {
        image,
        resources,
        transports,
    } = server;
    Ok(Model {
        name,
        namespace,
        owner: owner.expect("checked above"),
        generation: rc.metadata.generation,
        paused: spec.paused,
        server: ServerModel {
            replicas: replicas(rc),
            image,
            image_pull_policy: spec.image_pull_policy.map(|p| p.as_str().to_string()),
            image_pull_secrets: spec.image_pull_secrets.clone(),
            resources,
            env,
            transports,
            expose: spec.expose,
            ping_interval_seconds: spec.ping_interval_seconds,
            ping_timeout_seconds: spec.ping_timeout_seconds,
            node_selector: spec.node_selector.clone(),
            tolerations: spec.tolerations.clone(),
            topology_spread,
            app: spec.app.clone(),
            recovery: spec
                .recovery
                .as_ref()
                .filter(|r| r.enabled)
                .map(|r| (r.window_seconds, r.max_packets)),
        },
        redis,
        ingress,
        network_policies: spec
            .network_policies
            .enabled
            .then(|| spec.network_policies.clone()),
        operator_namespace: defaults.operator_namespace.clone(),
    })
}

/// What [`check_server`] derives from the server part of the spec.
struct ServerParts {
    image: String,
    resources: ResourceRequirements,
    transports: String,
}

/// The Deployment's replicas: `spec.replicas`, or with autoscaling the operator's
/// recommendation (status, written by `load`) within the bounds, starting from `spec.replicas`.
fn replicas(rc: &RealtimeCluster) -> i32 {
    let spec = &rc.spec;
    match &spec.autoscaling {
        None => spec.replicas,
        Some(a) => rc
            .status
            .as_ref()
            .and_then(|s| s.recommended_replicas)
            .unwrap_or(spec.replicas)
            .clamp(a.min_replicas, a.max_replicas.max(a.min_replicas)),
    }
}

/// `autoscaling`: bounds that can be met, a target, and realtime-server's connection counts.
fn check_autoscaling(spec: &RealtimeClusterSpec, err: &mut impl FnMut(&str, String)) {
    let Some(a) = &spec.autoscaling else { return };
    if !(1..=100).contains(&a.min_replicas) || !(1..=100).contains(&a.max_replicas) {
        err(
            "spec.autoscaling",
            "minReplicas and maxReplicas must be between 1 and 100".into(),
        );
    }
    if a.min_replicas > a.max_replicas {
        err(
            "spec.autoscaling.minReplicas",
            format!("{} exceeds maxReplicas {}", a.min_replicas, a.max_replicas),
        );
    }
    if a.target_connections_per_pod < 1 {
        err(
            "spec.autoscaling.targetConnectionsPerPod",
            "must be at least 1".into(),
        );
    }
    if spec.app.is_some() {
        err(
            "spec.autoscaling",
            "needs realtime-server's connection counts: not available with app".into(),
        );
    }
}

/// `app`: what a server that is not realtime-server needs and cannot use.
fn check_app(spec: &RealtimeClusterSpec, app: &AppSpec, err: &mut impl FnMut(&str, String)) {
    if spec.image.is_none() {
        err(
            "spec.image",
            "is required with app: the image of your own socket.io server".into(),
        );
    }
    if !(1..=65535).contains(&app.port) {
        err(
            "spec.app.port",
            format!("must be between 1 and 65535, got {}", app.port),
        );
    }
    for (field, probe) in [
        ("spec.app.readinessProbe.httpPath", &app.readiness_probe),
        ("spec.app.livenessProbe.httpPath", &app.liveness_probe),
    ] {
        if let Some(path) = probe.as_ref().and_then(|p| p.http_path.as_deref())
            && (!path.starts_with('/') || path.chars().any(char::is_whitespace))
        {
            err(
                field,
                format!("{path:?} must start with / and contain no spaces"),
            );
        }
    }
    if spec.expose.demo_page || spec.expose.publish_api {
        err(
            "spec.expose",
            "demoPage and publishApi are realtime-server features: leave them off with app".into(),
        );
    }
    if let Some(i) = spec.ingress.as_ref().filter(|i| i.enabled)
        && i.path != "/"
    {
        err(
            "spec.ingress.path",
            "must be / with app (your server chooses its own socket.io path)".into(),
        );
    }
    let managed_ha = spec
        .redis
        .managed
        .as_ref()
        .is_some_and(|m| m.high_availability.is_some());
    let external_topology = spec
        .redis
        .external
        .as_ref()
        .is_some_and(|e| e.sentinel.is_some() || e.cluster.is_some());
    if managed_ha || external_topology {
        err(
            "spec.redis",
            "app gets REDIS_HOST and REDIS_PORT of one Redis: a Redis behind Sentinel \
             (managed.highAvailability, external.sentinel) or a Redis Cluster \
             (external.cluster) is for realtime-server"
                .into(),
        );
    }
}

/// `metadata`: the name (a DNS label short enough for every child's name), the namespace and
/// the owner reference children get.
fn check_metadata(
    rc: &RealtimeCluster,
    err: &mut impl FnMut(&str, String),
) -> (String, String, Option<OwnerReference>) {
    let name = rc.metadata.name.clone().unwrap_or_default();
    if name.len() > MAX_NAME_LEN || !is_dns_label(&name) {
        err(
            "metadata.name",
            format!(
                "must be a DNS label of at most {MAX_NAME_LEN} characters starting with a letter"
            ),
        );
    }
    let namespace = rc.metadata.namespace.clone().unwrap_or_default();
    if namespace.is_empty() {
        err("metadata.namespace", "must be set".into());
    }
    // The object always comes from the apiserver, which sets uid; a missing one is a bug upstream.
    let owner = rc.controller_owner_ref(&());
    if owner.is_none() {
        err(
            "metadata.uid",
            "must be set (object not read from the apiserver?)".into(),
        );
    }

    (name, namespace, owner)
}

/// The server: replicas, image, env, exposure, transports, timings, resources.
fn check_server(
    spec: &RealtimeClusterSpec,
    defaults: &Defaults,
    err: &mut impl FnMut(&str, String),
) -> ServerParts {
    if !(0..=100).contains(&spec.replicas) {
        err(
            "spec.replicas",
            format!("must be between 0 and 100, got {}", spec.replicas),
        );
    }
    let image = match &spec.image {
        Some(i) if i.trim().is_empty() => {
            err("spec.image", "must not be empty".into());
            String::new()
        }
        Some(i) => i.clone(),
        None => defaults.server_image.clone(),
    };

    for (i, e) in spec.env.iter().enumerate() {
        if e.name.is_empty() || e.name.contains('=') {
            err(
                &format!("spec.env[{i}].name"),
                "must be non-empty and contain no '='".into(),
            );
        }
        if RESERVED_ENV.contains(&e.name.as_str()) {
            err(
                &format!("spec.env[{i}].name"),
                format!("{} is managed by the operator and cannot be set", e.name),
            );
        }
    }
    if spec.env.len() > 64 {
        err("spec.env", "at most 64 variables".into());
    }
    if spec.expose.publish_api && !spec.env.iter().any(|e| e.name == "API_KEY") {
        err(
            "spec.expose.publishApi",
            "needs API_KEY in env (for example from a Secret through valueFrom): the publish API is disabled without a key".into(),
        );
    }

    if let Some(app) = &spec.app {
        check_app(spec, app, err);
    }
    check_autoscaling(spec, err);
    if spec.recovery.as_ref().is_some_and(|r| r.enabled)
        && let Some(e) = spec
            .env
            .iter()
            .find(|e| e.name == "RECOVERY_WINDOW" || e.name == "RECOVERY_MAX_PACKETS")
    {
        err(
            "spec.env",
            format!("{} is set by spec.recovery: set it there", e.name),
        );
    }
    if spec.app.is_some() && spec.recovery.as_ref().is_some_and(|r| r.enabled) {
        err(
            "spec.recovery",
            "is realtime-server's connection state recovery: with app, enable \
             connectionStateRecovery in your own server"
                .into(),
        );
    }
    if spec.app.is_some() && spec.rebalance.as_ref().is_some_and(|r| r.enabled) {
        err(
            "spec.rebalance",
            "needs realtime-server's connection counts and shed API: not available with app".into(),
        );
    }

    let mut transports = spec.transports.clone();
    transports.sort();
    transports.dedup();
    if transports.len() != spec.transports.len() {
        err("spec.transports", "must not repeat a transport".into());
    }
    if !transports.contains(&Transport::Websocket) {
        err(
            "spec.transports",
            "must include websocket: use [polling, websocket] or [websocket]".into(),
        );
    }
    let transports = transports
        .iter()
        .map(|t| match t {
            Transport::Polling => "polling",
            Transport::Websocket => "websocket",
        })
        .collect::<Vec<_>>()
        .join(",");

    for (field, v) in [
        ("spec.pingIntervalSeconds", spec.ping_interval_seconds),
        ("spec.pingTimeoutSeconds", spec.ping_timeout_seconds),
    ] {
        if !(1..=300).contains(&v) {
            err(field, format!("must be between 1 and 300, got {v}"));
        }
    }

    let resources = spec
        .resources
        .clone()
        .unwrap_or_else(|| default_resources(("100m", "128Mi"), "512Mi"));
    check_resources(&resources, "spec.resources", err);

    ServerParts {
        image,
        resources,
        transports,
    }
}

/// `spec.redis`: exactly one of managed or external, each checked and defaulted.
fn check_redis(
    r: &RedisSpec,
    defaults: &Defaults,
    err: &mut impl FnMut(&str, String),
) -> RedisModel {
    match (&r.managed, &r.external) {
        (Some(m), None) => {
            let image = match &m.image {
                Some(i) if i.trim().is_empty() => {
                    err("spec.redis.managed.image", "must not be empty".into());
                    String::new()
                }
                Some(i) => i.clone(),
                None => defaults.redis_image.clone(),
            };
            let resources = m
                .resources
                .clone()
                .unwrap_or_else(|| default_resources(("50m", "64Mi"), "256Mi"));
            check_resources(&resources, "spec.redis.managed.resources", err);
            let ha = m.high_availability.as_ref().map(|h| {
                let f = |x: &str| format!("spec.redis.managed.highAvailability.{x}");
                if !(2..=9).contains(&h.redis_pods) {
                    err(
                        &f("redisPods"),
                        format!("must be 2-9, got {}", h.redis_pods),
                    );
                }
                if ![3, 5, 7].contains(&h.sentinel_pods) {
                    err(
                        &f("sentinelPods"),
                        format!("must be 3, 5 or 7, got {}", h.sentinel_pods),
                    );
                }
                if !(1500..=60_000).contains(&h.down_after_milliseconds) {
                    err(
                        &f("downAfterMilliseconds"),
                        format!("must be 1500-60000, got {}", h.down_after_milliseconds),
                    );
                }
                HaModel {
                    redis_pods: h.redis_pods,
                    sentinel_pods: h.sentinel_pods,
                    down_after_ms: h.down_after_milliseconds,
                }
            });
            RedisModel::Managed {
                image,
                resources,
                ha,
            }
        }
        (None, Some(x)) => {
            let (url, endpoint) = match (&x.url, &x.host, &x.sentinel, &x.cluster) {
                (Some(url), None, None, None) => {
                    let rest = url
                        .strip_prefix("rediss://")
                        .or_else(|| url.strip_prefix("redis://"));
                    match rest {
                        None => err(
                            "spec.redis.external.url",
                            "must start with redis:// or rediss://".into(),
                        ),
                        Some(rest) => {
                            let authority = rest.split('/').next().unwrap_or_default();
                            if authority.contains('@')
                                && authority
                                    .split('@')
                                    .next()
                                    .unwrap_or_default()
                                    .contains(':')
                            {
                                err(
                                    "spec.redis.external.url",
                                    "must not contain a password: use passwordSecretRef".into(),
                                );
                            }
                            if authority.is_empty() {
                                err("spec.redis.external.url", "has no host".into());
                            }
                        }
                    }
                    if x.tls && !url.starts_with("rediss://") {
                        err(
                            "spec.redis.external.tls",
                            "is true but url does not start with rediss://".into(),
                        );
                    }
                    if x.port.is_some() {
                        err(
                            "spec.redis.external.port",
                            "needs host (with url, put the port in the url)".into(),
                        );
                    }
                    let endpoint = url_endpoint(url);
                    (url.clone(), endpoint)
                }
                (None, Some(host), None, None) => {
                    if host.is_empty() || host.contains(['/', '@', ' ']) {
                        err(
                            "spec.redis.external.host",
                            "must be a bare host name or IP (no scheme, path or credentials)"
                                .into(),
                        );
                    }
                    let port = x.port.unwrap_or(REDIS_PORT);
                    if !(1..=65535).contains(&port) {
                        err(
                            "spec.redis.external.port",
                            format!("must be 1-65535, got {port}"),
                        );
                    }
                    let scheme = if x.tls { "rediss" } else { "redis" };
                    let host_part = if host.contains(':') {
                        format!("[{host}]")
                    } else {
                        host.clone()
                    };
                    let endpoint = format!("{host_part}:{port}");
                    (format!("{scheme}://{endpoint}"), endpoint)
                }
                (None, None, Some(sentinel), None) => {
                    if x.port.is_some() {
                        err(
                            "spec.redis.external.port",
                            "needs host (with sentinel, put the ports in sentinel.endpoints)"
                                .into(),
                        );
                    }
                    sentinel_url(sentinel, x.tls, err)
                }
                (None, None, None, Some(cluster)) => {
                    if x.port.is_some() {
                        err(
                            "spec.redis.external.port",
                            "needs host (with cluster, put the ports in cluster.endpoints)".into(),
                        );
                    }
                    cluster_url(cluster, x.tls, err)
                }
                _ => {
                    err(
                        "spec.redis.external",
                        "needs exactly one of url, host, sentinel or cluster".into(),
                    );
                    (String::new(), String::new())
                }
            };
            let sentinel = x.sentinel.as_ref();
            RedisModel::External {
                url,
                endpoint,
                master_name: sentinel.map(|s| s.master_name.clone()),
                password: x.password_secret_ref.clone(),
                sentinel_password: sentinel.and_then(|s| s.password_secret_ref.clone()),
            }
        }
        _ => {
            err(
                "spec.redis",
                "needs exactly one of managed or external".into(),
            );
            RedisModel::External {
                url: String::new(),
                endpoint: String::new(),
                master_name: None,
                password: None,
                sentinel_password: None,
            }
        }
    }
}

/// The Sentinels' default port.
pub const SENTINEL_PORT: i32 = 26379;

/// `spec.redis.external.sentinel`: the servers' `redis-sentinel://` URL (the server's and fred's
/// form: the first Sentinel as the host, the others as `node` parameters, the primary's name
/// as `sentinelServiceName`) and the status endpoint (every Sentinel's host:port).
fn sentinel_url(
    s: &ExternalSentinel,
    tls: bool,
    err: &mut impl FnMut(&str, String),
) -> (String, String) {
    let name_ok = |c: char| c.is_ascii_alphanumeric() || "._~-".contains(c);
    if s.master_name.is_empty() || s.master_name.len() > 128 || !s.master_name.chars().all(name_ok)
    {
        err(
            "spec.redis.external.sentinel.masterName",
            "must be 1-128 letters, digits and ._~-".into(),
        );
    }
    let endpoints = checked_endpoints(
        "spec.redis.external.sentinel.endpoints",
        &s.endpoints,
        SENTINEL_PORT,
        err,
    );
    let scheme = if tls {
        "rediss-sentinel"
    } else {
        "redis-sentinel"
    };
    let Some((first, others)) = endpoints.split_first() else {
        return (String::new(), String::new());
    };
    let mut url = format!("{scheme}://{first}?sentinelServiceName={}", s.master_name);
    for o in others {
        url.push_str("&node=");
        url.push_str(o);
    }
    (url, endpoints.join(","))
}

/// `spec.redis.external.cluster`: the servers' `redis-cluster://` URL (the server's and fred's
/// form: the first seed node as the host, the others as `node` parameters) and the status
/// endpoint (every seed's host:port).
fn cluster_url(
    c: &ExternalCluster,
    tls: bool,
    err: &mut impl FnMut(&str, String),
) -> (String, String) {
    let endpoints = checked_endpoints(
        "spec.redis.external.cluster.endpoints",
        &c.endpoints,
        REDIS_PORT,
        err,
    );
    let scheme = if tls {
        "rediss-cluster"
    } else {
        "redis-cluster"
    };
    let Some((first, others)) = endpoints.split_first() else {
        return (String::new(), String::new());
    };
    let mut url = format!("{scheme}://{first}");
    for (i, o) in others.iter().enumerate() {
        url.push_str(if i == 0 { "?node=" } else { "&node=" });
        url.push_str(o);
    }
    (url, endpoints.join(","))
}

/// `host` or `host:port` (port 1-65535, [`SENTINEL_PORT`] when omitted) with a DNS name or
/// IPv4 host, as `host:port` (pure).
/// A list of 1 to 16 `host[:port]` entries at `field`, as `host:port` (`default_port` when
/// omitted); every bad entry is reported and left out.
fn checked_endpoints(
    field: &str,
    list: &[String],
    default_port: i32,
    err: &mut impl FnMut(&str, String),
) -> Vec<String> {
    if list.is_empty() || list.len() > 16 {
        err(field, format!("needs 1 to 16 entries, got {}", list.len()));
    }
    let mut endpoints = Vec::new();
    for (i, e) in list.iter().enumerate() {
        match endpoint_with_default(e, default_port) {
            Some(hp) => endpoints.push(hp),
            None => err(
                &format!("{field}[{i}]"),
                format!("{e:?} is not host or host:port (a DNS name or an IPv4 address)"),
            ),
        }
    }
    endpoints
}

/// `host` or `host:port` (port 1-65535, `default_port` when omitted) with a DNS name or IPv4
/// host, as `host:port` (pure).
fn endpoint_with_default(e: &str, default_port: i32) -> Option<String> {
    let (host, port) = match e.split_once(':') {
        Some((h, p)) => {
            let port: i32 = p.parse().ok().filter(|p| (1..=65535).contains(p))?;
            if !p.chars().all(|c| c.is_ascii_digit()) {
                return None;
            }
            (h, port)
        }
        None => (e, default_port),
    };
    let label_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '.';
    let ok = !host.is_empty()
        && host.len() <= 253
        && host.chars().all(label_char)
        && !host.starts_with(['-', '.'])
        && !host.ends_with(['-', '.']);
    ok.then(|| format!("{host}:{port}"))
}

/// `spec.ingress`: host, path, cookie, timeouts (against the ping timings), annotations.
fn check_ingress(
    spec: &RealtimeClusterSpec,
    err: &mut impl FnMut(&str, String),
) -> Option<IngressModel> {
    match &spec.ingress {
        Some(i) if i.enabled => {
            let host = i.host.clone().unwrap_or_default();
            if i.host.is_none() {
                err(
                    "spec.ingress.host",
                    "is required when ingress.enabled is true".into(),
                );
            } else if !is_dns_name(&host) {
                err(
                    "spec.ingress.host",
                    format!("{host:?} is not a lower-case DNS name such as chat.example.com"),
                );
            }
            if i.class_name.is_empty() {
                err("spec.ingress.className", "must not be empty".into());
            }
            // The same rule as the CEL one: the servers serve <path>/socket.io, which must be
            // a plain prefix a proxy matches and a URL carries unchanged.
            let plain_prefix = i.path == "/"
                || (i.path.len() <= 180
                    && i.path.starts_with('/')
                    && i.path[1..].split('/').all(|seg| {
                        !seg.is_empty()
                            && seg
                                .bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
                    }));
            if !plain_prefix {
                err(
                    "spec.ingress.path",
                    "must be / or /segment[/segment...] of letters, digits and -._~ without a trailing slash, such as /chat".into(),
                );
            }
            if i.cookie.name.is_empty()
                || !i
                    .cookie
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                err(
                    "spec.ingress.cookie.name",
                    "may contain only letters, digits, _ and -".into(),
                );
            }
            if !(60..=31_536_000).contains(&i.cookie.max_age_seconds) {
                err(
                    "spec.ingress.cookie.maxAgeSeconds",
                    "must be between 60 and 31536000".into(),
                );
            }
            if !i.cookie.path.starts_with('/') {
                err("spec.ingress.cookie.path", "must start with /".into());
            }
            let keepalive = spec.ping_interval_seconds + spec.ping_timeout_seconds;
            for (field, v) in [
                ("spec.ingress.timeouts.readSeconds", i.timeouts.read_seconds),
                ("spec.ingress.timeouts.sendSeconds", i.timeouts.send_seconds),
            ] {
                if v <= keepalive {
                    err(
                        field,
                        format!(
                            "{v} must exceed pingIntervalSeconds + pingTimeoutSeconds ({keepalive}), or the proxy cuts idle websockets"
                        ),
                    );
                }
            }
            if !(1..=75).contains(&i.timeouts.connect_seconds) {
                err(
                    "spec.ingress.timeouts.connectSeconds",
                    "must be between 1 and 75".into(),
                );
            }
            for k in i.annotations.keys() {
                if MANAGED_INGRESS_ANNOTATIONS.contains(&k.as_str()) {
                    err(
                        "spec.ingress.annotations",
                        format!(
                            "{k} is set by the operator from spec.ingress (affinity, cookie, timeouts)"
                        ),
                    );
                }
            }
            Some(IngressModel {
                class_name: i.class_name.clone(),
                host,
                path: i.path.clone(),
                tls_secret_name: i.tls_secret_name.clone(),
                affinity: i.affinity,
                cookie_name: i.cookie.name.clone(),
                cookie_max_age_seconds: i.cookie.max_age_seconds,
                cookie_path: i.cookie.path.clone(),
                read_timeout_seconds: i.timeouts.read_seconds,
                send_timeout_seconds: i.timeouts.send_seconds,
                connect_timeout_seconds: i.timeouts.connect_seconds,
                annotations: i.annotations.clone(),
            })
        }
        _ => None,
    }
}

/// Soft spreading over nodes and zones: never blocks scheduling, evens out when it can.
fn default_topology_spread(selector: &LabelSelector) -> Vec<TopologySpreadConstraint> {
    ["kubernetes.io/hostname", "topology.kubernetes.io/zone"]
        .into_iter()
        .map(|key| TopologySpreadConstraint {
            max_skew: 1,
            topology_key: key.into(),
            when_unsatisfiable: "ScheduleAnyway".into(),
            label_selector: Some(selector.clone()),
            // Count only pods of the same rollout, so a rolling update does not skew the spread.
            match_label_keys: Some(vec!["pod-template-hash".into()]),
            ..Default::default()
        })
        .collect()
}

fn default_resources(requests: (&str, &str), memory_limit: &str) -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity(requests.0.into())),
            ("memory".to_string(), Quantity(requests.1.into())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_string(),
            Quantity(memory_limit.into()),
        )])),
        ..Default::default()
    }
}

fn check_resources(r: &ResourceRequirements, field: &str, err: &mut impl FnMut(&str, String)) {
    for (kind, map) in [("requests", &r.requests), ("limits", &r.limits)] {
        for (res, q) in map.iter().flatten() {
            if !is_quantity(&q.0) {
                err(
                    &format!("{field}.{kind}.{res}"),
                    format!("{:?} is not a quantity such as 500m or 256Mi", q.0),
                );
            }
        }
    }
}

/// A Kubernetes quantity: a decimal number with an optional SI, binary-SI or exponent suffix.
fn is_quantity(s: &str) -> bool {
    let s = s.strip_prefix(['+', '-']).unwrap_or(s);
    let num_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(num_end);
    let num_ok = !num.is_empty() && num != "." && num.matches('.').count() <= 1;
    let suffix_ok = matches!(
        suffix,
        "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei"
    ) || suffix.strip_prefix(['e', 'E']).is_some_and(|exp| {
        let exp = exp.strip_prefix(['+', '-']).unwrap_or(exp);
        !exp.is_empty() && exp.chars().all(|c| c.is_ascii_digit())
    });
    num_ok && suffix_ok
}

/// RFC 1035 label: lower-case letters, digits and '-', starting with a letter.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && !s.ends_with('-')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// A DNS name of RFC 1123 labels, optionally with a leading wildcard (`*.example.com`).
fn is_dns_name(s: &str) -> bool {
    let s = s.strip_prefix("*.").unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        })
}

/// host:port of a redis URL (the default port when absent), credentials dropped.
fn url_endpoint(url: &str) -> String {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let hostport = authority
        .rsplit_once('@')
        .map(|(_, h)| h)
        .unwrap_or(authority);
    let has_port = match hostport.rfind(']') {
        Some(i) => hostport[i..].contains(':'),
        None => hostport.contains(':'),
    };
    if has_port {
        hostport.to_string()
    } else {
        format!("{hostport}:{REDIS_PORT}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::*;

    pub(crate) fn defaults() -> Defaults {
        Defaults {
            server_image: "example.org/realtime-server:1".into(),
            redis_image: "redis:7.4-alpine".into(),
            operator_namespace: None,
        }
    }

    /// A RealtimeCluster as the apiserver would hand it over (schema defaults applied).
    pub(crate) fn cluster(spec: serde_json::Value) -> RealtimeCluster {
        let mut rc: RealtimeCluster = serde_json::from_value(serde_json::json!({
            "apiVersion": "realtime.dev/v1alpha1",
            "kind": "RealtimeCluster",
            "metadata": {"name": "chat", "namespace": "apps", "uid": "u-1", "generation": 3},
            "spec": spec,
        }))
        .unwrap();
        rc.metadata.generation = Some(3);
        rc
    }

    fn errors(spec: serde_json::Value) -> Vec<SpecError> {
        validate(&cluster(spec), &defaults()).unwrap_err().0
    }

    fn has_error(errs: &[SpecError], field: &str, needle: &str) -> bool {
        errs.iter()
            .any(|e| e.field == field && e.message.contains(needle))
    }

    #[test]
    fn app_needs_an_image_and_refuses_what_only_realtime_server_has() {
        let errs = errors(serde_json::json!({
            "app": {"port": 0, "readinessProbe": {"httpPath": "health"}},
            "expose": {"demoPage": true},
            "ingress": {"enabled": true, "host": "a.example", "path": "/chat"},
        }));
        for (field, needle) in [
            ("spec.image", "required with app"),
            ("spec.app.port", "between 1 and 65535"),
            ("spec.app.readinessProbe.httpPath", "must start with /"),
            ("spec.expose", "realtime-server features"),
            ("spec.ingress.path", "must be / with app"),
        ] {
            assert!(has_error(&errs, field, needle), "{field}: {errs:?}");
        }
        let errs = errors(
            serde_json::json!({"image": "acme/chat:1", "app": {"port": 8080},
            "redis": {"managed": {"highAvailability": {}}}}),
        );
        assert!(
            has_error(&errs, "spec.redis", "behind Sentinel"),
            "{errs:?}"
        );
        let m = validate(
            &cluster(serde_json::json!({"image": "acme/chat:1", "app": {"port": 8080}})),
            &defaults(),
        )
        .unwrap();
        assert_eq!(m.server.app.as_ref().unwrap().port, 8080);
    }

    #[test]
    fn autoscaling_sizes_the_deployment_from_the_recommendation_within_bounds() {
        let spec = serde_json::json!({"replicas": 2, "autoscaling":
            {"minReplicas": 1, "maxReplicas": 5, "targetConnectionsPerPod": 100}});
        let mut rc = cluster(spec.clone());
        assert_eq!(
            validate(&rc, &defaults()).unwrap().server.replicas,
            2,
            "spec.replicas to start"
        );
        rc.status = Some(crate::api::RealtimeClusterStatus {
            recommended_replicas: Some(4),
            ..Default::default()
        });
        assert_eq!(validate(&rc, &defaults()).unwrap().server.replicas, 4);
        rc.status.as_mut().unwrap().recommended_replicas = Some(9);
        assert_eq!(
            validate(&rc, &defaults()).unwrap().server.replicas,
            5,
            "bounded"
        );
        let errs = errors(
            serde_json::json!({"image": "acme/chat:1", "app": {"port": 80},
            "autoscaling": {"minReplicas": 4, "maxReplicas": 2, "targetConnectionsPerPod": 0}}),
        );
        for (field, needle) in [
            ("spec.autoscaling.minReplicas", "exceeds maxReplicas"),
            ("spec.autoscaling.targetConnectionsPerPod", "at least 1"),
            ("spec.autoscaling", "not available with app"),
        ] {
            assert!(has_error(&errs, field, needle), "{field}: {errs:?}");
        }
    }

    #[test]
    fn minimal_spec_gets_every_default() {
        let m = validate(&cluster(serde_json::json!({})), &defaults()).unwrap();
        assert_eq!(m.server.replicas, 2);
        assert_eq!(m.server.image, "example.org/realtime-server:1");
        assert_eq!(m.server.transports, "polling,websocket");
        assert_eq!(m.server.ping_interval_seconds, 25);
        assert!(
            matches!(&m.redis, RedisModel::Managed { image, .. } if image == "redis:7.4-alpine")
        );
        assert_eq!(m.redis_url(), "redis://chat-redis.apps.svc:6379");
        assert_eq!(m.redis_endpoint(), "chat-redis.apps.svc:6379");
        assert_eq!(m.endpoint(), "http://chat.apps.svc");
        assert!(m.ingress.is_none());
        assert_eq!(m.server.topology_spread.len(), 2);
        assert_eq!(
            m.selector_string(),
            "app.kubernetes.io/instance=chat,app.kubernetes.io/name=realtime-server,realtime.dev/cluster=chat"
        );
        assert_eq!(m.server.env[0].name, "LOG_FORMAT");
        assert_eq!(m.server.expose, Expose::default());
        assert_eq!(m.admin_service_name(), "chat-admin");
        assert_eq!(m.owner.uid, "u-1");
        assert_eq!(m.owner.controller, Some(true));
        assert_eq!(m.generation, Some(3));
    }

    #[test]
    fn user_log_format_replaces_the_default() {
        let m = validate(
            &cluster(serde_json::json!({"env": [{"name": "LOG_FORMAT", "value": "text"}]})),
            &defaults(),
        )
        .unwrap();
        assert_eq!(m.server.env.len(), 1);
        assert_eq!(m.server.env[0].value.as_deref(), Some("text"));
    }

    #[test]
    fn external_redis_by_host_and_by_url() {
        let m = validate(
            &cluster(
                serde_json::json!({"redis": {"external": {"host": "r.example", "tls": true,
                "passwordSecretRef": {"name": "creds"}}}}),
            ),
            &defaults(),
        )
        .unwrap();
        assert_eq!(m.redis_url(), "rediss://r.example:6379");
        let RedisModel::External { password, .. } = &m.redis else {
            panic!()
        };
        assert_eq!(password.as_ref().unwrap().key, "password");

        let m = validate(
            &cluster(serde_json::json!({"redis": {"external": {"url": "redis://user@r.example:7000/2"}}})),
            &defaults(),
        )
        .unwrap();
        assert_eq!(m.redis_url(), "redis://user@r.example:7000/2");
        assert_eq!(m.redis_endpoint(), "r.example:7000");
    }

    #[test]
    fn an_ingress_path_moves_the_socketio_path_under_it() {
        let m = validate(
            &cluster(
                serde_json::json!({"ingress": {"enabled": true, "host": "chat.example.com",
                "path": "/chat/v1"}}),
            ),
            &defaults(),
        )
        .unwrap();
        assert_eq!(m.endpoint(), "http://chat.example.com");
        assert_eq!(m.socketio_path(), "/chat/v1/socket.io");
        for bad in ["/chat/", "chat", "/a//b", "/a b", "/a?b"] {
            let e = validate(
                &cluster(serde_json::json!({"ingress": {"enabled": true,
                    "host": "chat.example.com", "path": bad}})),
                &defaults(),
            )
            .unwrap_err();
            assert!(
                format!("{e:?}").contains("spec.ingress.path"),
                "{bad}: {e:?}"
            );
        }
    }

    #[test]
    fn ingress_endpoint_uses_https_with_tls() {
        let m = validate(
            &cluster(
                serde_json::json!({"ingress": {"enabled": true, "host": "chat.example.com",
                "tlsSecretName": "tls"}}),
            ),
            &defaults(),
        )
        .unwrap();
        assert_eq!(m.endpoint(), "https://chat.example.com");
        assert_eq!(m.socketio_path(), "/socket.io");
        let i = m.ingress.unwrap();
        assert_eq!(i.class_name, "nginx");
        assert_eq!(i.affinity, Affinity::Cookie);
        assert_eq!(i.read_timeout_seconds, 3600);
    }

    #[test]
    fn disabled_ingress_is_no_ingress() {
        let m = validate(
            &cluster(serde_json::json!({"ingress": {"enabled": false}})),
            &defaults(),
        )
        .unwrap();
        assert!(m.ingress.is_none());
    }

    #[test]
    fn user_topology_spread_gets_the_pod_selector() {
        let m = validate(
            &cluster(serde_json::json!({"topologySpreadConstraints": [
                {"maxSkew": 2, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule"}]})),
            &defaults(),
        )
        .unwrap();
        let c = &m.server.topology_spread[0];
        assert_eq!(c.max_skew, 2);
        assert_eq!(
            c.label_selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref()
                .unwrap()["app.kubernetes.io/instance"],
            "chat"
        );
        let m = validate(
            &cluster(serde_json::json!({"topologySpreadConstraints": []})),
            &defaults(),
        )
        .unwrap();
        assert!(m.server.topology_spread.is_empty());
    }

    #[test]
    fn every_error_is_reported_at_once() {
        let errs = errors(serde_json::json!({
            "replicas": 1000,
            "image": " ",
            "env": [{"name": "REDIS_URL", "value": "x"}],
            "transports": ["polling"],
            "pingIntervalSeconds": 0,
            "redis": {"managed": {}, "external": {"host": "h"}},
            "ingress": {"enabled": true, "timeouts": {"readSeconds": 10},
                "annotations": {"nginx.ingress.kubernetes.io/affinity": "none"}},
        }));
        for (field, needle) in [
            ("spec.replicas", "between 0 and 100"),
            ("spec.image", "must not be empty"),
            ("spec.env[0].name", "REDIS_URL is managed by the operator"),
            ("spec.transports", "must include websocket"),
            ("spec.pingIntervalSeconds", "between 1 and 300"),
            ("spec.redis", "exactly one of managed or external"),
            ("spec.ingress.host", "is required"),
            ("spec.ingress.timeouts.readSeconds", "must exceed"),
            ("spec.ingress.annotations", "set by the operator"),
        ] {
            assert!(
                has_error(&errs, field, needle),
                "missing {field}: {needle} in {errs:?}"
            );
        }
    }

    #[test]
    fn exposing_the_publish_api_needs_a_key() {
        let errs = errors(serde_json::json!({"expose": {"publishApi": true}}));
        assert!(has_error(&errs, "spec.expose.publishApi", "needs API_KEY"));
        let m = validate(
            &cluster(serde_json::json!({"expose": {"publishApi": true, "demoPage": true},
                "env": [{"name": "API_KEY", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]})),
            &defaults(),
        )
        .unwrap();
        assert!(m.server.expose.publish_api && m.server.expose.demo_page);
        let errs = errors(serde_json::json!({"env": [{"name": "DEMO_PAGE", "value": "true"}]}));
        assert!(has_error(&errs, "spec.env[0].name", "DEMO_PAGE is managed"));
    }

    #[test]
    fn external_redis_through_sentinel() {
        let m = validate(
            &cluster(serde_json::json!({"redis": {"external": {
                "passwordSecretRef": {"name": "data"},
                "sentinel": {"masterName": "mymaster",
                    "endpoints": ["sentinel.cache.svc", "10.0.0.7:26380", "s-2.cache:5000"],
                    "passwordSecretRef": {"name": "sentinels", "key": "pw"}}}}})),
            &defaults(),
        )
        .unwrap();
        assert_eq!(
            m.redis_url(),
            "redis-sentinel://sentinel.cache.svc:26379?sentinelServiceName=mymaster\
             &node=10.0.0.7:26380&node=s-2.cache:5000"
        );
        assert_eq!(
            m.redis_endpoint(),
            "sentinel.cache.svc:26379,10.0.0.7:26380,s-2.cache:5000"
        );
        assert_eq!(
            m.redis_topology(),
            (RedisTopology::Sentinel, Some("mymaster"))
        );
        let RedisModel::External {
            password,
            sentinel_password,
            ..
        } = &m.redis
        else {
            panic!("external")
        };
        assert_eq!(password.as_ref().unwrap().name, "data");
        let sp = sentinel_password.as_ref().unwrap();
        assert_eq!((sp.name.as_str(), sp.key.as_str()), ("sentinels", "pw"));

        // TLS to the Sentinels and the data nodes; one endpoint, no Sentinel password
        let m = validate(
            &cluster(serde_json::json!({"redis": {"external": {"tls": true,
                "sentinel": {"masterName": "m", "endpoints": ["s"]}}}})),
            &defaults(),
        )
        .unwrap();
        assert_eq!(
            m.redis_url(),
            "rediss-sentinel://s:26379?sentinelServiceName=m"
        );
        assert!(matches!(
            &m.redis,
            RedisModel::External {
                sentinel_password: None,
                ..
            }
        ));
        // a standalone Redis says so
        let m = validate(
            &cluster(serde_json::json!({"redis": {"external": {"host": "r"}}})),
            &defaults(),
        )
        .unwrap();
        assert_eq!(m.redis_topology(), (RedisTopology::Standalone, None));
    }

    #[test]
    fn managed_redis_with_high_availability() {
        let m = validate(
            &cluster(serde_json::json!({"redis": {"managed": {"highAvailability": {}}}})),
            &defaults(),
        )
        .unwrap();
        let ha = m.redis_ha().unwrap();
        assert_eq!(
            (
                ha.redis_pods,
                ha.sentinel_pods,
                ha.down_after_ms,
                ha.quorum()
            ),
            (3, 3, 2000, 2)
        );
        assert_eq!(
            m.redis_url(),
            "redis-sentinel://chat-sentinel-0.chat-sentinel.apps.svc:26379?sentinelServiceName=realtime\
             &node=chat-sentinel-1.chat-sentinel.apps.svc:26379&node=chat-sentinel-2.chat-sentinel.apps.svc:26379"
        );
        assert_eq!(
            m.redis_topology(),
            (RedisTopology::Sentinel, Some("realtime"))
        );
        assert_eq!(m.sentinel_name(), "chat-sentinel");
        let errs = errors(serde_json::json!({"redis": {"managed": {"highAvailability":
            {"redisPods": 1, "sentinelPods": 4, "downAfterMilliseconds": 100}}}}));
        for (field, needle) in [
            (
                "spec.redis.managed.highAvailability.redisPods",
                "must be 2-9, got 1",
            ),
            (
                "spec.redis.managed.highAvailability.sentinelPods",
                "3, 5 or 7, got 4",
            ),
            (
                "spec.redis.managed.highAvailability.downAfterMilliseconds",
                "1500-60000, got 100",
            ),
        ] {
            assert!(has_error(&errs, field, needle), "{field}: {errs:?}");
        }
        // one pod: no Sentinels
        let m = validate(&cluster(serde_json::json!({})), &defaults()).unwrap();
        assert!(m.redis_ha().is_none());
        assert_eq!(m.redis_topology(), (RedisTopology::Standalone, None));
    }

    #[test]
    fn external_redis_cluster() {
        let m = validate(
            &cluster(serde_json::json!({"redis": {"external": {
                "passwordSecretRef": {"name": "data"},
                "cluster": {"endpoints": ["redis-cluster.cache.svc", "10.0.0.7:7001", "n-2.cache:7002"]}}}})),
            &defaults(),
        )
        .unwrap();
        assert_eq!(
            m.redis_url(),
            "redis-cluster://redis-cluster.cache.svc:6379?node=10.0.0.7:7001&node=n-2.cache:7002"
        );
        assert_eq!(
            m.redis_endpoint(),
            "redis-cluster.cache.svc:6379,10.0.0.7:7001,n-2.cache:7002"
        );
        assert_eq!(m.redis_topology(), (RedisTopology::Cluster, None));
        let RedisModel::External {
            password,
            sentinel_password,
            ..
        } = &m.redis
        else {
            panic!("external")
        };
        assert_eq!(password.as_ref().unwrap().name, "data");
        assert!(sentinel_password.is_none());
        // TLS to every node; one seed
        let m = validate(
            &cluster(serde_json::json!({"redis": {"external": {"tls": true,
                "cluster": {"endpoints": ["c:7000"]}}}})),
            &defaults(),
        )
        .unwrap();
        assert_eq!(m.redis_url(), "rediss-cluster://c:7000");
        assert_eq!(m.redis_topology(), (RedisTopology::Cluster, None));
    }

    #[test]
    fn cluster_mistakes_are_named() {
        let errs = errors(serde_json::json!({"redis": {"external": {"port": 1,
            "cluster": {"endpoints": ["ok", "c:0", "redis://c:7000", "[::1]:7000"]}}}}));
        assert!(has_error(&errs, "spec.redis.external.port", "needs host"));
        for i in 1..=3 {
            assert!(
                has_error(
                    &errs,
                    &format!("spec.redis.external.cluster.endpoints[{i}]"),
                    "is not host or host:port"
                ),
                "entry {i}: {errs:?}"
            );
        }
        let errs =
            errors(serde_json::json!({"redis": {"external": {"cluster": {"endpoints": []}}}}));
        assert!(has_error(
            &errs,
            "spec.redis.external.cluster.endpoints",
            "needs 1 to 16 entries"
        ));
        let errs = errors(serde_json::json!({"redis": {"external": {"host": "h",
            "cluster": {"endpoints": ["c"]}}}}));
        assert!(has_error(
            &errs,
            "spec.redis.external",
            "exactly one of url, host, sentinel or cluster"
        ));
    }

    #[test]
    fn sentinel_mistakes_are_named() {
        let errs = errors(serde_json::json!({"redis": {"external": {"port": 1,
            "sentinel": {"masterName": "my master", "endpoints":
                ["ok", "s:0", "s:x", "-s", "s:26379:1", "http://s", "[::1]:26379"]}}}}));
        assert!(has_error(&errs, "spec.redis.external.port", "needs host"));
        assert!(has_error(
            &errs,
            "spec.redis.external.sentinel.masterName",
            "letters, digits"
        ));
        for i in 1..=6 {
            assert!(
                has_error(
                    &errs,
                    &format!("spec.redis.external.sentinel.endpoints[{i}]"),
                    "is not host or host:port"
                ),
                "entry {i}: {errs:?}"
            );
        }
        assert!(
            !errs
                .iter()
                .any(|e| e.field == "spec.redis.external.sentinel.endpoints[0]")
        );
        let errs = errors(serde_json::json!({"redis": {"external": {
            "sentinel": {"masterName": "m", "endpoints": []}}}}));
        assert!(has_error(
            &errs,
            "spec.redis.external.sentinel.endpoints",
            "needs 1 to 16 entries, got 0"
        ));
        let errs =
            errors(serde_json::json!({"env": [{"name": "REDIS_SENTINEL_PASSWORD", "value": "x"}]}));
        assert!(has_error(&errs, "spec.env[0].name", "is managed"));
    }

    #[test]
    fn external_redis_errors() {
        let errs = errors(serde_json::json!({"redis": {"external": {"url": "http://x"}}}));
        assert!(has_error(
            &errs,
            "spec.redis.external.url",
            "redis:// or rediss://"
        ));
        let errs =
            errors(serde_json::json!({"redis": {"external": {"url": "redis://u:secret@x:6379"}}}));
        assert!(has_error(
            &errs,
            "spec.redis.external.url",
            "must not contain a password"
        ));
        let errs =
            errors(serde_json::json!({"redis": {"external": {"url": "redis://x", "tls": true}}}));
        assert!(has_error(&errs, "spec.redis.external.tls", "rediss://"));
        let errs =
            errors(serde_json::json!({"redis": {"external": {"url": "redis://x", "port": 1}}}));
        assert!(has_error(&errs, "spec.redis.external.port", "needs host"));
        let errs = errors(serde_json::json!({"redis": {"external": {}}}));
        assert!(has_error(
            &errs,
            "spec.redis.external",
            "exactly one of url, host, sentinel or cluster"
        ));
        let errs = errors(serde_json::json!({"redis": {"external": {"host": "x",
            "sentinel": {"masterName": "m", "endpoints": ["s"]}}}}));
        assert!(has_error(
            &errs,
            "spec.redis.external",
            "exactly one of url, host, sentinel or cluster"
        ));
        let errs = errors(serde_json::json!({"redis": {"external": {"host": "redis://x"}}}));
        assert!(has_error(&errs, "spec.redis.external.host", "bare host"));
        let errs = errors(serde_json::json!({"redis": {}}));
        assert!(has_error(&errs, "spec.redis", "exactly one"));
    }

    #[test]
    fn bad_names_hosts_and_quantities() {
        let mut rc = cluster(serde_json::json!({}));
        rc.metadata.name = Some("a-name-that-is-far-too-long-for-the-children-x".into());
        let errs = validate(&rc, &defaults()).unwrap_err().0;
        assert!(has_error(&errs, "metadata.name", "at most 40"));
        rc.metadata.name = Some("9lives".into());
        assert!(validate(&rc, &defaults()).is_err());

        let errs =
            errors(serde_json::json!({"ingress": {"enabled": true, "host": "Chat.Example.com"}}));
        assert!(has_error(&errs, "spec.ingress.host", "lower-case DNS name"));
        let errs = errors(serde_json::json!({"resources": {"requests": {"cpu": "fast"}}}));
        assert!(has_error(
            &errs,
            "spec.resources.requests.cpu",
            "not a quantity"
        ));
        let errs = errors(
            serde_json::json!({"ingress": {"enabled": true, "host": "a.b",
            "cookie": {"name": "bad name"}}}),
        );
        assert!(has_error(
            &errs,
            "spec.ingress.cookie.name",
            "letters, digits"
        ));
    }

    #[test]
    fn quantities() {
        for ok in ["1", "100m", "1.5Gi", "128Mi", "2e3", "1E-2", "0.5"] {
            assert!(is_quantity(ok), "{ok}");
        }
        for bad in ["", "fast", "1GB", "1..2", "Mi", "1e"] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }

    #[test]
    fn url_endpoints() {
        assert_eq!(url_endpoint("redis://h"), "h:6379");
        assert_eq!(url_endpoint("rediss://u@h:7000/1?x=y"), "h:7000");
        assert_eq!(url_endpoint("redis://[::1]/0"), "[::1]:6379");
        assert_eq!(url_endpoint("redis://[::1]:7/0"), "[::1]:7");
    }
}
