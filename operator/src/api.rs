//! The `RealtimeCluster` API (`realtime.dev/v1alpha1`).
//!
//! These types are the single source of the CRD: `realtime-operator crd` prints the schema
//! generated from them (doc comments become the descriptions `kubectl explain` shows), and a
//! unit test keeps `crds/realtimecluster.yaml` equal to that output.
//!
//! Validation happens in two places with the same rules:
//! - CEL rules (`x-kubernetes-validations`) and OpenAPI bounds here, so the apiserver rejects a
//!   bad spec at admission with a readable message;
//! - [`crate::validate`], which re-checks everything (a cluster may run an older CRD, or
//!   validation may be bypassed) and turns the spec into a defaulted model.
//!
//! Defaults that are part of the API contract (replicas, transports, ingress class, affinity,
//! timeouts) live in the schema, so stored objects are explicit. Defaults that belong to the
//! operator installation (the server and Redis images) are resolved by the operator.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    EnvVar, LocalObjectReference, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
// Referenced by the CEL rules inside the derive macros (rustc cannot see that use).
#[allow(unused_imports)]
use kube::core::Rule;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of every resource this operator serves.
pub const GROUP: &str = "realtime.dev";
/// API version of [`RealtimeCluster`].
pub const VERSION: &str = "v1alpha1";

/// Environment variables the operator sets on the server container itself; `spec.env` may not
/// override them (they carry the Redis wiring, the pod identity and the drain timing).
pub const RESERVED_ENV: &[&str] = &[
    "PORT",
    "ADMIN_PORT",
    "BIND",
    "NAME",
    "REDIS_URL",
    "REDIS_PASSWORD",
    "REDIS_PASSWORD_FILE",
    "REDIS_SENTINEL_PASSWORD",
    "TRANSPORTS",
    "SOCKETIO_PATH",
    "PING_INTERVAL",
    "PING_TIMEOUT",
    "SHUTDOWN_GRACE",
    "DEMO_PAGE",
    "PUBLIC_PUBLISH_API",
    "REDIS_HOST",
    "REDIS_PORT",
];

/// Longest `metadata.name` accepted: child names append up to 11 characters (`-redis-auth`)
/// and StatefulSet pod names must stay valid DNS labels with their revision hash.
pub const MAX_NAME_LEN: usize = 40;

/// Desired state of a horizontally scaled socket.io service: N realtime-server pods behind a
/// Service (and optionally an Ingress with session affinity), joined through Redis.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "realtime.dev",
    version = "v1alpha1",
    kind = "RealtimeCluster",
    plural = "realtimeclusters",
    singular = "realtimecluster",
    shortname = "rtc",
    category = "realtime",
    namespaced,
    status = "RealtimeClusterStatus",
    derive = "PartialEq",
    doc = "A horizontally scaled socket.io service (realtime-server pods joined through Redis), reconciled by realtime-operator.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas", description = "Desired server pods"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas", description = "Server pods passing /readyz"),
    printcolumn(name = "Redis", type_ = "string", json_path = ".status.redis.phase", description = "Redis phase"),
    printcolumn(name = "Connections", type_ = "integer", json_path = ".status.connections", description = "socket.io connections on the ready pods"),
    printcolumn(name = "Endpoint", type_ = "string", json_path = ".status.endpoint", description = "URL clients connect to"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("size(self.metadata.name) <= 40 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')")
        .message("metadata.name must be a DNS label of at most 40 characters starting with a letter (children such as <name>-redis-auth derive their names from it)"),
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.ingress) || !self.ingress.enabled || self.ingress.timeouts.readSeconds > self.pingIntervalSeconds + self.pingTimeoutSeconds")
    .message("ingress.timeouts.readSeconds must exceed pingIntervalSeconds + pingTimeoutSeconds, or the proxy cuts idle websockets"))]
#[x_kube(validation = Rule::new("!has(self.ingress) || !self.ingress.enabled || self.ingress.timeouts.sendSeconds > self.pingIntervalSeconds + self.pingTimeoutSeconds")
    .message("ingress.timeouts.sendSeconds must exceed pingIntervalSeconds + pingTimeoutSeconds, or the proxy cuts idle websockets"))]
#[x_kube(validation = Rule::new("!has(self.expose) || !self.expose.publishApi || (has(self.env) && self.env.exists(e, e.name == 'API_KEY'))")
    .message("expose.publishApi needs API_KEY in env (for example from a Secret through valueFrom): the publish API is disabled without a key"))]
#[x_kube(validation = Rule::new("!has(self.recovery) || !self.recovery.enabled || !has(self.app)")
    .message("recovery is realtime-server's connection state recovery: with app, enable connectionStateRecovery in your own server"))]
#[x_kube(validation = Rule::new("!has(self.rebalance) || !self.rebalance.enabled || !has(self.app)")
    .message("rebalance needs realtime-server's connection counts and shed API: not available with app"))]
#[x_kube(validation = Rule::new("!has(self.autoscaling) || !has(self.app)")
    .message("autoscaling needs realtime-server's connection counts: not available with app"))]
#[x_kube(validation = Rule::new("!has(self.app) || has(self.image)")
    .message("app needs image: the image of your own socket.io server"))]
#[x_kube(validation = Rule::new("!has(self.app) || !has(self.expose) || (!self.expose.demoPage && !self.expose.publishApi)")
    .message("expose.demoPage and expose.publishApi are realtime-server features: leave them off with app"))]
#[x_kube(validation = Rule::new("!has(self.app) || !has(self.ingress) || !self.ingress.enabled || self.ingress.path == '/'")
    .message("with app, ingress.path must be / (your server chooses its own socket.io path)"))]
#[x_kube(validation = Rule::new("!has(self.app) || !has(self.redis) || ((!has(self.redis.managed) || !has(self.redis.managed.highAvailability)) && (!has(self.redis.external) || (!has(self.redis.external.sentinel) && !has(self.redis.external.cluster))))")
    .message("app gets REDIS_HOST and REDIS_PORT of one Redis: a Redis behind Sentinel (redis.managed.highAvailability, redis.external.sentinel) or a Redis Cluster (redis.external.cluster) is for realtime-server"))]
#[x_kube(validation = Rule::new("has(self.app) == has(oldSelf.app)")
    .message("app cannot be added or removed: a rollout would run realtime-server and your server side by side, and their Redis adapters do not understand each other; create a new RealtimeCluster instead"))]
pub struct RealtimeClusterSpec {
    /// Number of realtime-server pods. The scale subresource (kubectl scale, HPA) writes this field. With autoscaling it is only the starting point.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: i32,

    /// Scale on connections, by the operator itself (no HPA, no metrics pipeline): it reads each ready pod's connection count every 10 s and keeps replicas at ceil(connections / targetConnectionsPerPod) within [minReplicas, maxReplicas]; it scales down only when every recommendation of the stabilization window was lower. Not for your own server (spec.app), which has no connection count the operator can read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,

    /// Connection state recovery (socket.io 4.6+ clients, off by default like socket.io's connectionStateRecovery): a client that lost its connection (a rolling update, a drain, a crashed pod, a network blip) comes back to any pod within the window with its socket id, rooms and user, and gets every message it missed, in order, once. Sessions and a bounded message log live in Redis. Clients see one extra last argument on every event (the offset socket.io-client keeps), as with socket.io.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery: Option<Recovery>,

    /// Moving connections to new pods after a scale-up (off by default): new pods get no existing connections, so the operator asks a pod far above the average to close a bounded share of its transports, spread over time; their clients reconnect through the load balancer and part of them land on the emptier pods. With cookie affinity, clients that keep the affinity cookie (browsers) return to the same pod unless the ingress rebalances sticky sessions itself (ingress-nginx affinity-mode balanced). Not for your own server (spec.app).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebalance: Option<Rebalance>,

    /// realtime-server container image. Defaults to the image the operator was started with (--default-server-image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,

    /// Run your own socket.io server image (spec.image) instead of realtime-server: its port, its probes, and the environment contract it reads its settings from (PORT, NAME, REDIS_URL, REDIS_HOST, REDIS_PORT, REDIS_PASSWORD). realtime-server's own settings (transports, ping timing, expose, the admin port) do not apply to it. Cannot be added to or removed from an existing cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<AppSpec>,

    /// Image pull policy of the server container (Always, IfNotPresent or Never); Kubernetes' default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,

    /// Secrets holding registry credentials for pulling the server and Redis images.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub image_pull_secrets: Vec<LocalObjectReference>,

    /// CPU and memory of each server pod. Defaults to requests of 100m CPU / 128Mi and a 512Mi memory limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Extra environment variables of the server container (for example AUTH_SECRET or API_KEY from a Secret via valueFrom). Variables the operator manages (PORT, ADMIN_PORT, BIND, NAME, REDIS_URL, REDIS_HOST, REDIS_PORT, REDIS_PASSWORD, REDIS_PASSWORD_FILE, REDIS_SENTINEL_PASSWORD, TRANSPORTS, SOCKETIO_PATH, PING_INTERVAL, PING_TIMEOUT, SHUTDOWN_GRACE, DEMO_PAGE, PUBLIC_PUBLISH_API) are rejected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self.all(e, !(e.name in ['PORT', 'ADMIN_PORT', 'BIND', 'NAME', 'REDIS_URL', 'REDIS_HOST', 'REDIS_PORT', 'REDIS_PASSWORD', 'REDIS_PASSWORD_FILE', 'REDIS_SENTINEL_PASSWORD', 'TRANSPORTS', 'SOCKETIO_PATH', 'PING_INTERVAL', 'PING_TIMEOUT', 'SHUTDOWN_GRACE', 'DEMO_PAGE', 'PUBLIC_PUBLISH_API']))")
        .message("env must not set PORT, ADMIN_PORT, BIND, NAME, REDIS_URL, REDIS_HOST, REDIS_PORT, REDIS_PASSWORD, REDIS_PASSWORD_FILE, REDIS_SENTINEL_PASSWORD, TRANSPORTS, SOCKETIO_PATH, PING_INTERVAL, PING_TIMEOUT, SHUTDOWN_GRACE, DEMO_PAGE or PUBLIC_PUBLISH_API: the operator manages them (use spec.expose for the last two)"))]
    pub env: Vec<EnvVar>,

    /// NetworkPolicies for the server and Redis pods (on by default): who may open connections to them.
    #[serde(default)]
    pub network_policies: NetworkPolicies,

    /// What the public port (the Service <name> and the Ingress) serves besides socket.io; both off by default. Probes, metrics and the publish API are always served on the admin port, which only the ClusterIP Service <name>-admin exposes.
    #[serde(default)]
    pub expose: Expose,

    /// socket.io transports the server accepts: [polling, websocket] (default; long-polling needs session affinity at the ingress) or [websocket] (websocket-only).
    #[serde(default = "default_transports")]
    #[schemars(length(min = 1, max = 2))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    #[x_kube(validation = Rule::new("'websocket' in self").message("transports must include websocket: use [polling, websocket] or [websocket]"))]
    pub transports: Vec<Transport>,

    /// Seconds between engine.io pings (server PING_INTERVAL).
    #[serde(default = "default_ping_interval")]
    #[schemars(range(min = 1, max = 300))]
    pub ping_interval_seconds: i32,

    /// Seconds the server waits for a pong before closing the connection (server PING_TIMEOUT).
    #[serde(default = "default_ping_timeout")]
    #[schemars(range(min = 1, max = 300))]
    pub ping_timeout_seconds: i32,

    /// The Redis that joins the server pods (pub/sub adapter): exactly one of managed or external. Defaults to a managed Redis.
    #[serde(default = "default_redis")]
    pub redis: RedisSpec,

    /// Public HTTP(S) entry through an ingress-nginx Ingress with session affinity. Absent or enabled=false: no Ingress, clients use the Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressSpec>,

    /// Node labels the server pods must match (pod spec nodeSelector).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Tolerations of the server pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub tolerations: Vec<Toleration>,

    /// Topology spread constraints of the server pods. Unset: spread softly (ScheduleAnyway, maxSkew 1) across nodes and zones. An empty list disables spreading. A constraint without labelSelector selects this cluster's server pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 8))]
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,

    /// When true the operator makes no changes to the children (no creates, updates or deletes) and only reports status.
    #[serde(default)]
    pub paused: bool,
}

/// Scaling on connections.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("autoscaling.minReplicas must not exceed maxReplicas"))]
pub struct Autoscaling {
    /// Fewest server pods.
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 1, max = 100))]
    pub min_replicas: i32,

    /// Most server pods.
    #[schemars(range(min = 1, max = 100))]
    pub max_replicas: i32,

    /// Connections one pod should hold.
    #[schemars(range(min = 1, max = 1000000))]
    pub target_connections_per_pod: i64,

    /// How long connections must stay low before replicas go down (every recommendation of the window counts).
    #[serde(default = "default_stabilization")]
    #[schemars(range(min = 0, max = 3600))]
    pub scale_down_stabilization_seconds: i32,
}

/// Connection state recovery.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Recovery {
    /// Whether clients can recover their sessions.
    #[serde(default)]
    pub enabled: bool,

    /// How long a disconnected client's session and the messages published since are kept.
    #[serde(default = "default_recovery_window")]
    #[schemars(range(min = 1, max = 86400))]
    pub window_seconds: i32,

    /// The most messages the log keeps, all rooms together, whatever their age: bounds Redis memory (about this many times the average message size).
    #[serde(default = "default_recovery_packets")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_packets: i32,
}

fn default_recovery_window() -> i32 {
    120
}

fn default_recovery_packets() -> i32 {
    10_000
}

/// Moving connections to new pods.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Rebalance {
    /// Whether the operator rebalances at all.
    #[serde(default)]
    pub enabled: bool,

    /// A pod sheds only when it holds more than (100 + tolerancePercent) % of the average and another pod holds less than (100 - tolerancePercent) %.
    #[serde(default = "default_tolerance")]
    #[schemars(range(min = 5, max = 90))]
    pub tolerance_percent: i32,

    /// The largest share of a pod's connections closed in one step (never more than brings it to the average).
    #[serde(default = "default_max_shed")]
    #[schemars(range(min = 1, max = 50))]
    pub max_shed_percent: i32,

    /// Time between two steps in the cluster; a step spreads its closes over half of it.
    #[serde(default = "default_rebalance_interval")]
    #[schemars(range(min = 10, max = 3600))]
    pub interval_seconds: i32,
}

fn default_tolerance() -> i32 {
    20
}

fn default_max_shed() -> i32 {
    10
}

fn default_rebalance_interval() -> i32 {
    60
}

fn default_min_replicas() -> i32 {
    1
}

fn default_stabilization() -> i32 {
    300
}

/// Your own socket.io server, in place of realtime-server.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AppSpec {
    /// The container port your server listens on (set as PORT); the Service and the Ingress route to it.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,

    /// How the kubelet decides the pod may receive clients. Unset: a TCP connection to the port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<AppProbe>,

    /// How the kubelet decides the container must be restarted. Unset: a TCP connection to the port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness_probe: Option<AppProbe>,
}

/// A probe of your server on its port: an HTTP GET of httpPath (success is 2xx or 3xx), or a TCP connection when httpPath is unset.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AppProbe {
    /// Path of an HTTP GET on the port, starting with /. Unset: a TCP connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256), regex(pattern = r"^/\S*$"))]
    pub http_path: Option<String>,
}

/// NetworkPolicies the operator writes: socket.io clients may come from anywhere; the admin port
/// (metrics, probes, the publish API) only from the cluster's own namespace and the peers named
/// here; the managed Redis only from this cluster's server pods. Egress is not restricted (the
/// servers reach DNS and an external Redis whose address the operator cannot know).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicies {
    /// Write the NetworkPolicies. Turn off only where another tool manages them; without a NetworkPolicy-enforcing CNI they are inert either way.
    #[serde(default = "default_true")]
    pub enabled: bool,

    /// Who else may reach the admin port (9090: /metrics, the publish API), for example a monitoring namespace: {namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: monitoring}}}. Pods of the cluster's own namespace always may.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub admin_from: Vec<k8s_openapi::api::networking::v1::NetworkPolicyPeer>,
}

impl Default for NetworkPolicies {
    fn default() -> Self {
        Self {
            enabled: true,
            admin_from: Vec::new(),
        }
    }
}

fn default_true() -> bool {
    true
}

/// Optional routes of the public port.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Expose {
    /// Serve the demo chat page at / (server DEMO_PAGE).
    #[serde(default)]
    pub demo_page: bool,

    /// Serve POST /api/v1/publish on the public port too, so that backends outside the cluster can publish through the Ingress (server PUBLIC_PUBLISH_API). Needs API_KEY in env. In-cluster backends use http://<name>-admin.<namespace>.svc:9090/api/v1/publish without it.
    #[serde(default)]
    pub publish_api: bool,
}

/// Image pull policy.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    /// The value Kubernetes expects in a container spec.
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// A socket.io transport.
#[derive(
    Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord,
)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Polling,
    Websocket,
}

/// Where the Redis that joins the server pods comes from. Exactly one of managed or external.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.managed) != has(self.external)").message("redis needs exactly one of managed or external"))]
pub struct RedisSpec {
    /// A Redis run by the operator: a StatefulSet, a headless Service and a generated password Secret (<name>-redis-auth, created once, never rotated by the operator); one pod, or with highAvailability a primary, replicas and Sentinels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ManagedRedis>,

    /// A Redis run elsewhere (a cloud service, another operator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalRedis>,
}

/// Settings of the operator-run Redis. It only carries the adapter's live pub/sub traffic, so it
/// keeps nothing on disk (an emptyDir, no persistence): a restart loses no message at rest.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ManagedRedis {
    /// Redis container image. Defaults to the operator's --default-redis-image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,

    /// CPU and memory of the Redis pod. Defaults to requests of 50m CPU / 64Mi and a 256Mi memory limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Run Redis without a single point of failure: a primary, replicas and Redis Sentinels that promote a replica when the primary fails; the servers find the primary through the Sentinels and follow its failovers. Unset: one Redis pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high_availability: Option<RedisHighAvailability>,
}

/// A highly available managed Redis: the StatefulSet <name>-redis (a primary and replicas) and the StatefulSet <name>-sentinel (Redis Sentinels), each with a PodDisruptionBudget and spread over nodes when it can be. One password (the generated Secret) serves clients, replication and the Sentinels; it is on no command line.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RedisHighAvailability {
    /// Redis pods: one primary, the others its replicas (the candidates for promotion). 2 to 9.
    #[serde(default = "default_ha_redis_pods")]
    #[schemars(range(min = 2, max = 9))]
    pub redis_pods: i32,

    /// Sentinel pods: 3, 5 or 7; a majority of them must agree before a replica is promoted.
    #[serde(default = "default_ha_sentinel_pods")]
    #[x_kube(validation = Rule::new("self in [3, 5, 7]").message("redis.managed.highAvailability.sentinelPods must be 3, 5 or 7"))]
    pub sentinel_pods: i32,

    /// How long the Sentinels wait for an unanswering primary before a majority may fail it over. Shorter means faster failovers and more false alarms under load. At least 1500: a Sentinel reconnects to a newly promoted primary up to 1 s after the switch and counts that second as silence, so a shorter wait can fail the new primary over again at once.
    #[serde(default = "default_ha_down_after_ms")]
    #[schemars(range(min = 1500, max = 60000))]
    pub down_after_milliseconds: i32,
}

impl Default for RedisHighAvailability {
    fn default() -> Self {
        Self {
            redis_pods: default_ha_redis_pods(),
            sentinel_pods: default_ha_sentinel_pods(),
            down_after_milliseconds: default_ha_down_after_ms(),
        }
    }
}

/// Connection to an externally run Redis: url, host and port, the Sentinels of a primary, or the seed nodes of a Redis Cluster.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.url) ? 1 : 0) + (has(self.host) ? 1 : 0) + (has(self.sentinel) ? 1 : 0) + (has(self.cluster) ? 1 : 0) == 1").message("redis.external needs exactly one of url, host, sentinel or cluster"))]
#[x_kube(validation = Rule::new("!has(self.port) || has(self.host)").message("redis.external.port needs redis.external.host (with url, put the port in the url)"))]
#[x_kube(validation = Rule::new("!has(self.url) || !self.tls || self.url.startsWith('rediss://')").message("redis.external.tls is true but url does not start with rediss://"))]
pub struct ExternalRedis {
    /// redis:// or rediss:// URL without a password (put the password in passwordSecretRef), for example redis://redis.cache.svc:6379/0. For Sentinel or Redis Cluster, use sentinel or cluster instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    #[x_kube(validation = Rule::new("self.startsWith('redis://') || self.startsWith('rediss://')").message("redis.external.url must start with redis:// or rediss:// (for Sentinel or Redis Cluster, use redis.external.sentinel or redis.external.cluster)"))]
    #[x_kube(validation = Rule::new("!self.matches('^rediss?://[^/@]*:[^/@]*@')").message("redis.external.url must not contain a password: use passwordSecretRef"))]
    pub url: Option<String>,

    /// Host name or IP of the Redis server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("!self.contains('/') && !self.contains('@') && !self.contains(' ')").message("redis.external.host must be a bare host name or IP (no scheme, path or credentials)"))]
    pub host: Option<String>,

    /// Port of the Redis server (with host); 6379 when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,

    /// A primary found through Redis Sentinel: the servers ask the Sentinels for the current primary at every (re)connection, so they follow its failovers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sentinel: Option<ExternalSentinel>,

    /// A Redis Cluster (Redis 7 or later): the servers discover its masters from these seed nodes and use sharded pub/sub (SSUBSCRIBE/SPUBLISH), following its failovers and slot moves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ExternalCluster>,

    /// Secret key holding the Redis password (of the primary and its replicas, with sentinel; of every node, with cluster), mounted as a file for realtime-server (REDIS_PASSWORD_FILE) or given as REDIS_PASSWORD to your own server (spec.app); never written into the pod spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,

    /// Connect with TLS (rediss://). With host, selects the scheme; with url, the url must use rediss://; with sentinel, TLS to the Sentinels and to the data nodes; with cluster, TLS to every node.
    #[serde(default)]
    pub tls: bool,
}

/// The Sentinels that monitor an external Redis primary.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ExternalSentinel {
    /// Name of the monitored primary, as in the Sentinels' `sentinel monitor <masterName> ...`.
    #[schemars(length(min = 1, max = 128))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9._~-]+$')").message("redis.external.sentinel.masterName may only contain letters, digits and ._~-"))]
    pub master_name: String,

    /// Sentinel addresses, host or host:port (26379 when the port is omitted); the servers try them in order. One Service in front of every Sentinel is enough.
    #[schemars(length(min = 1, max = 16), inner(length(min = 1, max = 259)))]
    #[x_kube(validation = Rule::new("self.all(e, e.matches('^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,5})?$'))").message("redis.external.sentinel.endpoints entries must be host or host:port (a DNS name or an IPv4 address)"))]
    pub endpoints: Vec<String>,

    /// Secret key holding the Sentinels' own password (their requirepass), passed to the server as REDIS_SENTINEL_PASSWORD. Leave unset when the Sentinels need none: the Redis password (passwordSecretRef) is not sent to them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
}

/// The seed nodes of an external Redis Cluster.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ExternalCluster {
    /// Cluster node addresses, host or host:port (6379 when the port is omitted); the servers read the cluster's slot map from the first that answers. One Service in front of every node is enough.
    #[schemars(length(min = 1, max = 16), inner(length(min = 1, max = 259)))]
    #[x_kube(validation = Rule::new("self.all(e, e.matches('^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,5})?$'))").message("redis.external.cluster.endpoints entries must be host or host:port (a DNS name or an IPv4 address)"))]
    pub endpoints: Vec<String>,
}

/// A key of a Secret in the RealtimeCluster's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,

    /// Key within the Secret.
    #[serde(default = "default_password_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// An ingress-nginx Ingress in front of the server Service.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!self.enabled || has(self.host)").message("ingress.host is required when ingress.enabled is true"))]
pub struct IngressSpec {
    /// Create the Ingress. Setting false removes an Ingress created earlier.
    #[serde(default)]
    pub enabled: bool,

    /// IngressClass of the Ingress. The affinity and timeout annotations are ingress-nginx's.
    #[serde(default = "default_ingress_class")]
    #[schemars(length(min = 1, max = 253))]
    pub class_name: String,

    /// Public DNS name clients use, for example chat.example.com.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^(\\\\*\\\\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')").message("ingress.host must be a lower-case DNS name such as chat.example.com"))]
    pub host: Option<String>,

    /// URL path prefix routed to the servers; the servers then answer socket.io at
    /// `<path>/socket.io/` (status.socketioPath, the client's `path` option).
    #[serde(default = "default_path")]
    #[schemars(length(min = 1, max = 180))]
    #[x_kube(validation = Rule::new("self == '/' || self.matches('^(/[A-Za-z0-9._~-]+)+$')").message("ingress.path must be / or /segment[/segment...] of letters, digits and -._~ without a trailing slash, such as /chat"))]
    pub path: String,

    /// Secret (type kubernetes.io/tls) with the certificate for host. Unset: plain HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub tls_secret_name: Option<String>,

    /// How the ingress keeps a client on one server pod, which socket.io long-polling requires: cookie (default) or ip-hash.
    #[serde(default)]
    pub affinity: Affinity,

    /// The affinity cookie (affinity: cookie).
    #[serde(default)]
    pub cookie: CookieAffinity,

    /// Proxy timeouts, well above the ping interval so that idle websockets stay open.
    #[serde(default)]
    pub timeouts: IngressTimeouts,

    /// Extra annotations of the Ingress (for example cert-manager's). They cannot override the affinity and timeout annotations the operator sets.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Session affinity mode at the ingress.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Affinity {
    /// Sticky cookie set by ingress-nginx (works behind NATs and proxies that share client IPs).
    #[default]
    #[serde(rename = "cookie")]
    Cookie,
    /// Consistent hash of the client address (upstream-hash-by $remote_addr); no cookie needed.
    #[serde(rename = "ip-hash")]
    IpHash,
}

/// The ingress-nginx affinity cookie.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CookieAffinity {
    /// Cookie name.
    #[serde(default = "default_cookie_name")]
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9_-]+$')").message("ingress.cookie.name may contain only letters, digits, _ and -"))]
    pub name: String,

    /// Cookie lifetime in seconds.
    #[serde(default = "default_cookie_max_age")]
    #[schemars(range(min = 60, max = 31536000))]
    pub max_age_seconds: i64,

    /// Cookie path.
    #[serde(default = "default_path")]
    #[schemars(length(min = 1, max = 1024))]
    #[x_kube(validation = Rule::new("self.startsWith('/')").message("ingress.cookie.path must start with /"))]
    pub path: String,
}

impl Default for CookieAffinity {
    fn default() -> Self {
        Self {
            name: default_cookie_name(),
            max_age_seconds: default_cookie_max_age(),
            path: default_path(),
        }
    }
}

/// ingress-nginx proxy timeouts.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IngressTimeouts {
    /// Seconds the proxy waits between two reads from a server (proxy-read-timeout); must exceed pingIntervalSeconds + pingTimeoutSeconds.
    #[serde(default = "default_proxy_timeout")]
    #[schemars(range(min = 1, max = 86400))]
    pub read_seconds: i32,

    /// Seconds the proxy waits between two writes to a server (proxy-send-timeout); must exceed pingIntervalSeconds + pingTimeoutSeconds.
    #[serde(default = "default_proxy_timeout")]
    #[schemars(range(min = 1, max = 86400))]
    pub send_seconds: i32,

    /// Seconds to establish a connection to a server (proxy-connect-timeout).
    #[serde(default = "default_connect_timeout")]
    #[schemars(range(min = 1, max = 75))]
    pub connect_seconds: i32,
}

impl Default for IngressTimeouts {
    fn default() -> Self {
        Self {
            read_seconds: default_proxy_timeout(),
            send_seconds: default_proxy_timeout(),
            connect_seconds: default_connect_timeout(),
        }
    }
}

/// Observed state, computed by the operator from the children it owns.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RealtimeClusterStatus {
    /// Ready (all desired server pods ready and Redis reachable), Progressing (a change is rolling out) and Degraded (the spec cannot be reconciled or pods are failing).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// metadata.generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Server pods that exist (the scale subresource's status replicas).
    #[serde(default)]
    pub replicas: i32,

    /// Server pods passing their readiness probe.
    #[serde(default)]
    pub ready_replicas: i32,

    /// The Redis the servers use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisStatus>,

    /// URL clients connect to (scheme and host): the Ingress when enabled, else the in-cluster
    /// Service. The socket.io path goes separately in socketioPath.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,

    /// The socket.io path on that endpoint, the client's `path` option (`/socket.io/` unless
    /// ingress.path moves it): `io(endpoint, { path: socketioPath })`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socketio_path: Option<String>,

    /// Label selector of the server pods, used by the scale subresource (HPA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,

    /// socket.io connections on all ready server pods, as the operator last read them (every 10 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<i64>,

    /// With spec.autoscaling: the replicas the operator wants now (from connections and the stabilization window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recommended_replicas: Option<i32>,

    /// Connections per ready server pod, as the operator last read them. Each pod also carries them as its controller.kubernetes.io/pod-deletion-cost, so a scale-down removes the emptiest pods first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub pod_connections: Vec<PodConnections>,
}

/// One server pod's connections.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PodConnections {
    /// The pod's name.
    pub name: String,
    /// socket.io connections it holds.
    pub connections: i64,
}

/// Redis as seen by the operator.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RedisStatus {
    /// Pending (managed Redis not ready yet), Ready (managed Redis ready) or External (run elsewhere; its health shows in the server pods' readiness).
    pub phase: RedisPhase,

    /// host:port the servers connect to; with Sentinel, the Sentinels' host:port list; with Cluster, the seed nodes' (comma-separated, never includes credentials).
    pub endpoint: String,

    /// Standalone (one Redis server), Sentinel (the primary of masterName, found through the Sentinels at endpoint) or Cluster (a Redis Cluster, discovered from the seed nodes at endpoint).
    #[serde(default)]
    pub topology: RedisTopology,

    /// With Sentinel: the name of the monitored primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master_name: Option<String>,

    /// With a highly available managed Redis: the pod that is the primary now, as the Sentinels say (absent while the operator cannot ask them). A change is announced by a RedisFailover Event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<String>,
}

/// How the servers reach Redis.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RedisTopology {
    /// One Redis server.
    #[default]
    Standalone,
    /// A primary found through Redis Sentinel; the servers follow its failovers.
    Sentinel,
    /// A Redis Cluster; the servers use sharded pub/sub and follow its failovers.
    Cluster,
}

impl RedisTopology {
    pub fn as_str(self) -> &'static str {
        match self {
            RedisTopology::Standalone => "Standalone",
            RedisTopology::Sentinel => "Sentinel",
            RedisTopology::Cluster => "Cluster",
        }
    }
}

/// Phase of the Redis the servers use: Pending (managed, never ready yet), Ready, Unavailable
/// (managed, was ready and has no ready pod now: the servers serve their own clients and
/// cross-node delivery waits for it), External (not observed by the operator).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedisPhase {
    Pending,
    Ready,
    Unavailable,
    External,
}

impl RedisPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            RedisPhase::Pending => "Pending",
            RedisPhase::Ready => "Ready",
            RedisPhase::Unavailable => "Unavailable",
            RedisPhase::External => "External",
        }
    }
}

fn default_replicas() -> i32 {
    2
}
fn default_transports() -> Vec<Transport> {
    vec![Transport::Polling, Transport::Websocket]
}
fn default_ping_interval() -> i32 {
    25
}
fn default_ping_timeout() -> i32 {
    20
}
fn default_redis() -> RedisSpec {
    RedisSpec {
        managed: Some(ManagedRedis::default()),
        external: None,
    }
}
fn default_ha_redis_pods() -> i32 {
    3
}
fn default_ha_sentinel_pods() -> i32 {
    3
}
fn default_ha_down_after_ms() -> i32 {
    2000
}
fn default_password_key() -> String {
    "password".into()
}
fn default_ingress_class() -> String {
    "nginx".into()
}
fn default_path() -> String {
    "/".into()
}
fn default_cookie_name() -> String {
    "rt-affinity".into()
}
fn default_cookie_max_age() -> i64 {
    // Two days: long enough to outlive a reconnecting client, short enough to rebalance.
    172_800
}
fn default_proxy_timeout() -> i32 {
    3600
}
fn default_connect_timeout() -> i32 {
    5
}
