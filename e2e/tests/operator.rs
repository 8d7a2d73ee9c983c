//! The operator against a real kube-apiserver (the shared local control plane): the CRD's
//! schema and CEL rules, and the controller, run in-process, reconciling in its own namespace.
//!
//! The control plane has no kubelet and no workload controllers: Deployments never get pods,
//! so readiness is simulated by patching the status subresource, as a kubelet would.
//!
//! Measured and printed (`cargo test -p realtime-e2e --test operator -- --nocapture`): the
//! time from creating a RealtimeCluster until all its children exist, and the API writes per
//! steady-state resync (the goal is 0).

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use kube::{Client, Resource, ResourceExt};
use realtime_e2e::control_plane::{self, ControlPlane, yaml_documents};
use realtime_e2e::require::workspace_root;
use realtime_operator::api::{RealtimeCluster, RedisPhase};
use realtime_operator::controller;
use realtime_operator::metrics::{Metrics, OutcomeLabels};
use realtime_operator::status::{self, DEGRADED, READY};
use realtime_operator::validate::Defaults;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(30);
const SERVER_IMAGE: &str = "example.org/realtime-server:e2e";

/// The controller running in this process, watching one namespace.
struct Operator {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    metrics: Arc<Metrics>,
}

impl Operator {
    fn start(client: &Client, ns: &str, resync: Duration) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let metrics = Arc::new(Metrics::default());
        let config = controller::Config {
            defaults: Defaults {
                server_image: SERVER_IMAGE.into(),
                redis_image: "redis:7.4-alpine".into(),
                operator_namespace: None,
            },
            resync,
            namespace: Some(ns.to_string()),
            instance: Some("e2e".into()),
        };
        let task = tokio::spawn(controller::run(
            client.clone(),
            config,
            metrics.clone(),
            async move {
                let _ = stopped.await;
            },
        ));
        Self {
            stop: Some(stop),
            task,
            metrics,
        }
    }

    /// Reconciles that finished with `outcome` (applied, invalid_spec, paused, error).
    fn count(&self, outcome: &'static str) -> u64 {
        self.metrics
            .reconciliations
            .get_or_create(&OutcomeLabels { outcome })
            .get()
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(20), &mut self.task)
            .await
            .expect("the controller stops within 20 s")
            .expect("the controller task did not panic");
    }
}

fn rc_api(client: &Client, ns: &str) -> Api<RealtimeCluster> {
    Api::namespaced(client.clone(), ns)
}

fn dyn_api(client: &Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(
        client.clone(),
        ns,
        &ApiResource::erase::<RealtimeCluster>(&()),
    )
}

fn cluster(name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "realtime.dev/v1alpha1",
        "kind": "RealtimeCluster",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap()
}

async fn create(client: &Client, ns: &str, name: &str, spec: Value) -> RealtimeCluster {
    dyn_api(client, ns)
        .create(&PostParams::default(), &cluster(name, spec))
        .await
        .unwrap_or_else(|e| panic!("creating RealtimeCluster {name}: {e}"));
    rc_api(client, ns).get(name).await.unwrap()
}

async fn merge_spec(client: &Client, ns: &str, name: &str, spec: Value) {
    rc_api(client, ns)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": spec})),
        )
        .await
        .unwrap_or_else(|e| panic!("patching {name}: {e}"));
}

/// Polls `probe` until it returns Some, failing with `what` after [`WAIT`].
async fn eventually<T, F, Fut>(cp: &ControlPlane, what: &str, probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    cp.poll_until(what, WAIT, probe).await.unwrap()
}

async fn get_opt<K>(client: &Client, ns: &str, name: &str) -> Option<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    Api::<K>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .unwrap()
}

/// resourceVersion of every object the operator writes for cluster `name` (and of the cluster).
async fn versions(client: &Client, ns: &str, name: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    macro_rules! rv {
        ($k:ty, $n:expr) => {
            let n: &str = &$n;
            if let Some(o) = get_opt::<$k>(client, ns, n).await {
                out.insert(
                    format!("{}/{}", <$k>::kind(&()), n),
                    o.resource_version().unwrap(),
                );
            }
        };
    }
    rv!(RealtimeCluster, name);
    rv!(Deployment, name);
    rv!(Service, name);
    rv!(PodDisruptionBudget, name);
    rv!(Ingress, name);
    rv!(StatefulSet, format!("{name}-redis"));
    rv!(Service, format!("{name}-redis"));
    rv!(Secret, format!("{name}-redis-auth"));
    out
}

fn assert_owned_by(meta: &kube::api::ObjectMeta, rc: &RealtimeCluster) {
    let owners = meta
        .owner_references
        .as_ref()
        .unwrap_or_else(|| panic!("{:?} has no owner", meta.name));
    assert!(
        owners.iter().any(|o| o.uid == rc.uid().unwrap()
            && o.kind == "RealtimeCluster"
            && o.controller == Some(true)),
        "{:?} is not controlled by the RealtimeCluster: {owners:?}",
        meta.name
    );
}

fn env_value(d: &Deployment, name: &str) -> Option<k8s_openapi::api::core::v1::EnvVar> {
    d.spec.as_ref()?.template.spec.as_ref()?.containers[0]
        .env
        .as_ref()?
        .iter()
        .find(|e| e.name == name)
        .cloned()
}

/// Marks the Deployment (and the Redis StatefulSet, if any) ready through their status
/// subresources, as the controllers and kubelets of a real cluster would.
/// The Secret and key mounted as the server's REDIS_PASSWORD_FILE.
fn mounted_password(d: &Deployment) -> Option<(String, String)> {
    let pod = d.spec.as_ref()?.template.spec.as_ref()?;
    env_value(d, "REDIS_PASSWORD_FILE")?;
    let secret = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "redis-password")?
        .secret
        .as_ref()?;
    Some((
        secret.secret_name.clone()?,
        secret.items.as_ref()?[0].key.clone(),
    ))
}

async fn simulate_ready(client: &Client, ns: &str, name: &str, replicas: i32) {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let d = deployments.get(name).await.unwrap();
    let status = json!({"status": {
        "observedGeneration": d.metadata.generation,
        "replicas": replicas, "readyReplicas": replicas, "updatedReplicas": replicas,
        "availableReplicas": replicas,
    }});
    deployments
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    if let Some(s) = statefulsets
        .get_opt(&format!("{name}-redis"))
        .await
        .unwrap()
    {
        let status = json!({"status": {"observedGeneration": s.metadata.generation,
            "replicas": 1, "readyReplicas": 1, "availableReplicas": 1, "currentReplicas": 1, "updatedReplicas": 1}});
        statefulsets
            .patch_status(
                &s.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&status),
            )
            .await
            .unwrap();
    }
}

fn run_kubectl(mut cmd: Command) -> String {
    let out = cmd.output().expect("running kubectl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// Binds the shared control plane (the test returns when it is missing outside CI; under CI=true
/// `shared` fails it), prints its logs if the test fails, and binds an admin client and a fresh
/// namespace whose name starts with `$prefix`.
macro_rules! setup {
    ($cp:ident, $client:ident, $ns:ident, $prefix:expr) => {
        let Some($cp) = control_plane::shared().await else {
            return;
        };
        let _logs = $cp.logs_on_failure();
        let $client = $cp.client().await.unwrap();
        let $ns = $cp.create_namespace($prefix).await.unwrap();
    };
}

#[tokio::test]
async fn crd_is_structural_and_explained() {
    let Some(cp) = control_plane::shared().await else {
        return;
    };
    let _logs = cp.logs_on_failure();
    let client = cp.client().await.unwrap();
    // shared() installed crds/ already; installing again proves the apiserver takes it as is.
    let names = cp
        .install_crds(&workspace_root().join("crds/realtimecluster.yaml"))
        .await
        .unwrap();
    assert_eq!(names, ["realtimeclusters.realtime.dev"]);
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    let crd = crds.get("realtimeclusters.realtime.dev").await.unwrap();
    let conditions = crd.status.unwrap().conditions.unwrap_or_default();
    for (type_, want) in [
        ("Established", "True"),
        ("NamesAccepted", "True"),
        ("NonStructuralSchema", ""),
    ] {
        let got = conditions
            .iter()
            .find(|c| c.type_ == type_)
            .map(|c| c.status.as_str())
            .unwrap_or("");
        if want.is_empty() {
            assert_ne!(got, "True", "the schema is not structural: {conditions:?}");
        } else {
            assert_eq!(got, want, "{type_}: {conditions:?}");
        }
    }
    // Both examples pass the schema and every CEL rule (server-side dry run).
    let ns = cp.create_namespace("op-crd").await.unwrap();
    for file in ["examples/minimal.yaml", "examples/full.yaml"] {
        let doc = yaml_documents(&std::fs::read_to_string(workspace_root().join(file)).unwrap())
            .unwrap()
            .remove(0);
        let obj: DynamicObject = serde_json::from_value(doc).unwrap();
        dyn_api(&client, &ns)
            .create(
                &PostParams {
                    dry_run: true,
                    ..Default::default()
                },
                &obj,
            )
            .await
            .unwrap_or_else(|e| panic!("{file} rejected: {e}"));
    }
    let Some(mut kubectl) = cp.kubectl() else {
        return;
    };
    kubectl.args(["explain", "realtimeclusters.spec.ingress.affinity"]);
    let text = run_kubectl(kubectl);
    assert!(
        text.contains("cookie (default) or ip-hash"),
        "kubectl explain shows no description:\n{text}"
    );
    let mut kubectl = cp.kubectl().unwrap();
    kubectl.args(["explain", "rtc.spec.redis.external.passwordSecretRef"]);
    // kubectl wraps descriptions: compare with single spaces
    let text = run_kubectl(kubectl);
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(flat.contains("never written into the pod spec"), "{text}");
    let mut kubectl = cp.kubectl().unwrap();
    kubectl.args(["explain", "rtc.spec.redis.external.sentinel"]);
    let text = run_kubectl(kubectl);
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(flat.contains("follow its failovers"), "{text}");
    assert!(
        flat.contains("masterName") && flat.contains("endpoints"),
        "{text}"
    );
    let mut kubectl = cp.kubectl().unwrap();
    kubectl.args(["explain", "rtc.spec.redis.external.cluster"]);
    let text = run_kubectl(kubectl);
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(flat.contains("sharded pub/sub"), "{text}");
    assert!(flat.contains("endpoints"), "{text}");
}

#[tokio::test]
async fn invalid_specs_are_rejected_with_readable_messages() {
    setup!(cp, client, ns, "op-invalid");
    let api = dyn_api(&client, &ns);
    let cases: Vec<(&str, &str, Value, &str)> = vec![
        (
            "both-redis",
            "both redis modes",
            json!({"redis": {"managed": {}, "external": {"host": "h"}}}),
            "redis needs exactly one of managed or external",
        ),
        (
            "no-redis",
            "no redis mode",
            json!({"redis": {}}),
            "redis needs exactly one of managed or external",
        ),
        (
            "no-host",
            "ingress without host",
            json!({"ingress": {"enabled": true}}),
            "ingress.host is required when ingress.enabled is true",
        ),
        (
            "too-many",
            "replicas above the bound",
            json!({"replicas": 1000}),
            "less than or equal to 100",
        ),
        (
            "polling-only",
            "polling-only transports",
            json!({"transports": ["polling"]}),
            "transports must include websocket",
        ),
        (
            "reserved-env",
            "overriding a managed variable",
            json!({"env": [{"name": "REDIS_URL", "value": "redis://x"}]}),
            "env must not set PORT, ADMIN_PORT, BIND, NAME, REDIS_URL",
        ),
        (
            "keyless-api",
            "the publish API exposed without a key",
            json!({"expose": {"publishApi": true}}),
            "expose.publishApi needs API_KEY in env",
        ),
        (
            "url-password",
            "a password in the Redis URL",
            json!({"redis": {"external": {"url": "redis://u:hunter2@cache:6379"}}}),
            "must not contain a password: use passwordSecretRef",
        ),
        (
            "url-and-host",
            "url and host",
            json!({"redis": {"external": {"url": "redis://cache", "host": "cache"}}}),
            "redis.external needs exactly one of url, host, sentinel or cluster",
        ),
        (
            "host-and-sentinel",
            "host and sentinel",
            json!({"redis": {"external": {"host": "cache",
                "sentinel": {"masterName": "m", "endpoints": ["s"]}}}}),
            "redis.external needs exactly one of url, host, sentinel or cluster",
        ),
        (
            "host-and-cluster",
            "host and cluster",
            json!({"redis": {"external": {"host": "cache",
                "cluster": {"endpoints": ["c:7000"]}}}}),
            "redis.external needs exactly one of url, host, sentinel or cluster",
        ),
        (
            "cluster-url",
            "a cluster node written as a URL",
            json!({"redis": {"external": {
                "cluster": {"endpoints": ["c:7000", "redis-cluster://c:7001"]}}}}),
            "cluster.endpoints entries must be host or host:port",
        ),
        (
            "no-cluster-nodes",
            "a Redis Cluster without endpoints",
            json!({"redis": {"external": {"cluster": {"endpoints": []}}}}),
            "should have at least 1 items",
        ),
        (
            "cluster-scheme-url",
            "a Redis Cluster given as url",
            json!({"redis": {"external": {"url": "redis-cluster://c:7000"}}}),
            "redis.external.url must start with redis:// or rediss://",
        ),
        (
            "sentinel-url",
            "a Sentinel endpoint written as a URL",
            json!({"redis": {"external": {
                "sentinel": {"masterName": "m", "endpoints": ["redis://s:26379"]}}}}),
            "sentinel.endpoints entries must be host or host:port",
        ),
        (
            "sentinel-name",
            "a Sentinel master name with a space",
            json!({"redis": {"external": {
                "sentinel": {"masterName": "my master", "endpoints": ["s"]}}}}),
            "sentinel.masterName may only contain letters, digits and ._~-",
        ),
        (
            "no-sentinels",
            "a Sentinel setup without endpoints",
            json!({"redis": {"external": {"sentinel": {"masterName": "m", "endpoints": []}}}}),
            "should have at least 1 items",
        ),
        (
            "even-sentinels",
            "an even number of managed Sentinels",
            json!({"redis": {"managed": {"highAvailability": {"sentinelPods": 4}}}}),
            "sentinelPods must be 3, 5 or 7",
        ),
        (
            "one-redis-ha",
            "a highly available Redis of one pod",
            json!({"redis": {"managed": {"highAvailability": {"redisPods": 1}}}}),
            "should be greater than or equal to 2",
        ),
        (
            "sentinel-env",
            "the Sentinels' password set by hand",
            json!({"env": [{"name": "REDIS_SENTINEL_PASSWORD", "value": "x"}]}),
            "env must not set",
        ),
        (
            "http-url",
            "a non-redis URL",
            json!({"redis": {"external": {"url": "http://cache"}}}),
            "redis.external.url must start with redis:// or rediss://",
        ),
        (
            "tls-mismatch",
            "tls with a redis:// URL",
            json!({"redis": {"external": {"url": "redis://cache", "tls": true}}}),
            "tls is true but url does not start with rediss://",
        ),
        (
            "bad-host",
            "an upper-case host",
            json!({"ingress": {"enabled": true, "host": "Chat.Example.com"}}),
            "ingress.host must be a lower-case DNS name",
        ),
        (
            "short-timeout",
            "a proxy timeout below the ping interval",
            json!({"ingress": {"enabled": true, "host": "chat.example.com", "timeouts": {"readSeconds": 30}}}),
            "readSeconds must exceed pingIntervalSeconds + pingTimeoutSeconds",
        ),
        (
            "bad-affinity",
            "an unknown affinity",
            json!({"ingress": {"enabled": true, "host": "a.example", "affinity": "round-robin"}}),
            "supported values: \"cookie\", \"ip-hash\"",
        ),
        (
            "app-no-image",
            "your own server without its image",
            json!({"app": {"port": 8080}}),
            "app needs image",
        ),
        (
            "app-demo",
            "your own server with realtime-server's demo page",
            json!({"image": "acme/chat:1", "app": {"port": 8080}, "expose": {"demoPage": true}}),
            "realtime-server features",
        ),
        (
            "app-path",
            "your own server under an ingress path",
            json!({"image": "acme/chat:1", "app": {"port": 8080},
                "ingress": {"enabled": true, "host": "a.example", "path": "/chat"}}),
            "with app, ingress.path must be /",
        ),
        (
            "app-ha",
            "your own server with a Redis behind Sentinel",
            json!({"image": "acme/chat:1", "app": {"port": 8080},
                "redis": {"managed": {"highAvailability": {}}}}),
            "a Redis behind Sentinel",
        ),
        (
            "app-rebalance",
            "your own server with rebalancing",
            json!({"image": "acme/chat:1", "app": {"port": 8080}, "rebalance": {"enabled": true}}),
            "rebalance needs realtime-server",
        ),
        (
            "app-recovery",
            "your own server with realtime-server's recovery",
            json!({"image": "acme/chat:1", "app": {"port": 8080}, "recovery": {"enabled": true}}),
            "enable connectionStateRecovery in your own server",
        ),
        (
            "9lives",
            "a name children cannot derive from",
            json!({}),
            "metadata.name must be a DNS label",
        ),
    ];
    assert!(cases.len() >= 8);
    // Switching between realtime-server and your own server is refused on update (a rollout
    // would mix the two adapters).
    api.create(&PostParams::default(), &cluster("switch", json!({})))
        .await
        .unwrap();
    let err = api
        .patch(
            "switch",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"image": "acme/chat:1", "app": {"port": 8080}}})),
        )
        .await
        .expect_err("adding app to an existing cluster was accepted");
    let kube::Error::Api(status) = &err else {
        panic!("unexpected error {err}")
    };
    assert!(
        status.message.contains("app cannot be added or removed"),
        "{status:?}"
    );
    for (name, what, spec, expected) in cases {
        let err = api
            .create(&PostParams::default(), &cluster(name, spec.clone()))
            .await
            .err()
            .unwrap_or_else(|| panic!("{what} ({spec}) was accepted"));
        let kube::Error::Api(status) = &err else {
            panic!("{what}: unexpected error {err}")
        };
        assert_eq!(status.code, 422, "{what}: {status:?}");
        assert!(
            status.message.contains(expected),
            "{what}: message {:?} does not contain {expected:?}",
            status.message
        );
        println!("rejected {what}: {}", status.message);
    }
}

#[tokio::test]
async fn full_example_creates_every_child_with_owner_refs() {
    setup!(cp, client, ns, "op-full");
    let operator = Operator::start(&client, &ns, Duration::from_secs(300));

    let doc = yaml_documents(
        &std::fs::read_to_string(workspace_root().join("examples/full.yaml")).unwrap(),
    )
    .unwrap()
    .remove(0);
    let name = doc["metadata"]["name"].as_str().unwrap().to_string();
    // Warm up: once a first cluster's Deployment exists, the controller's watches run, so the
    // measurement below is reconcile latency, not start-up.
    create(
        &client,
        &ns,
        "warmup",
        json!({"redis": {"external": {"host": "cache"}}}),
    )
    .await;
    eventually(&cp, "the warm-up Deployment", || async {
        Ok(get_opt::<Deployment>(&client, &ns, "warmup").await)
    })
    .await;
    let started = Instant::now();
    dyn_api(&client, &ns)
        .create(
            &PostParams::default(),
            &serde_json::from_value(doc.clone()).unwrap(),
        )
        .await
        .unwrap();
    let redis = format!("{name}-redis");
    let secret_name = format!("{name}-redis-auth");
    let admin = format!("{name}-admin");
    loop {
        let all = get_opt::<Deployment>(&client, &ns, &name).await.is_some()
            && get_opt::<Service>(&client, &ns, &name).await.is_some()
            && get_opt::<Service>(&client, &ns, &admin).await.is_some()
            && get_opt::<PodDisruptionBudget>(&client, &ns, &name)
                .await
                .is_some()
            && get_opt::<Ingress>(&client, &ns, &name).await.is_some()
            && get_opt::<StatefulSet>(&client, &ns, &redis).await.is_some()
            && get_opt::<Service>(&client, &ns, &redis).await.is_some()
            && get_opt::<Secret>(&client, &ns, &secret_name)
                .await
                .is_some();
        if all {
            break;
        }
        assert!(
            started.elapsed() < WAIT,
            "children did not all appear within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "MEASURE apply -> all 8 children exist: {:?}",
        started.elapsed()
    );

    let rc = rc_api(&client, &ns).get(&name).await.unwrap();
    let d: Deployment = get_opt(&client, &ns, &name).await.unwrap();
    let svc: Service = get_opt(&client, &ns, &name).await.unwrap();
    let admin_svc: Service = get_opt(&client, &ns, &admin).await.unwrap();
    let pdb: PodDisruptionBudget = get_opt(&client, &ns, &name).await.unwrap();
    let ing: Ingress = get_opt(&client, &ns, &name).await.unwrap();
    let sts: StatefulSet = get_opt(&client, &ns, &redis).await.unwrap();
    let redis_svc: Service = get_opt(&client, &ns, &redis).await.unwrap();
    let secret: Secret = get_opt(&client, &ns, &secret_name).await.unwrap();
    for meta in [
        &d.metadata,
        &svc.metadata,
        &admin_svc.metadata,
        &pdb.metadata,
        &ing.metadata,
        &sts.metadata,
        &redis_svc.metadata,
        &secret.metadata,
    ] {
        assert_owned_by(meta, &rc);
    }

    // The Deployment carries the spec and the server contract.
    let spec = d.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(3));
    let pod = spec.template.spec.as_ref().unwrap();
    assert_eq!(
        pod.containers[0].image.as_deref(),
        Some("ghcr.io/realtime-operator/realtime-server:0.1.0")
    );
    assert_eq!(
        env_value(&d, "REDIS_URL").unwrap().value.as_deref(),
        Some(format!("redis://{redis}.{ns}.svc:6379").as_str())
    );
    assert!(
        env_value(&d, "REDIS_PASSWORD").is_none(),
        "a file, not a variable"
    );
    assert_eq!(
        mounted_password(&d).map(|(name, _)| name).as_deref(),
        Some(secret_name.as_str())
    );
    assert_eq!(
        env_value(&d, "AUTH_SECRET")
            .unwrap()
            .value_from
            .unwrap()
            .secret_key_ref
            .unwrap()
            .key,
        "jwt"
    );
    assert_eq!(
        pod.containers[0]
            .lifecycle
            .as_ref()
            .unwrap()
            .pre_stop
            .as_ref()
            .unwrap()
            .sleep
            .as_ref()
            .unwrap()
            .seconds,
        5
    );
    assert_eq!(
        pod.node_selector.as_ref().unwrap()["kubernetes.io/os"],
        "linux"
    );
    assert_eq!(pod.topology_spread_constraints.as_ref().unwrap().len(), 2);
    // The password exists only in the Secret: 64 hex characters, never in a pod spec.
    let password = String::from_utf8(secret.data.unwrap()["password"].0.clone()).unwrap();
    assert_eq!(password.len(), 64);
    for obj in [
        serde_json::to_string(&d).unwrap(),
        serde_json::to_string(&sts).unwrap(),
    ] {
        assert!(
            !obj.contains(&password),
            "the password leaked into a pod spec"
        );
    }
    assert!(
        sts.spec.as_ref().unwrap().volume_claim_templates.is_none(),
        "Redis keeps nothing on disk"
    );
    let annotations = ing.metadata.annotations.clone().unwrap();
    assert_eq!(
        annotations["nginx.ingress.kubernetes.io/affinity"],
        "cookie"
    );
    assert_eq!(
        annotations["nginx.ingress.kubernetes.io/session-cookie-name"],
        "rt-affinity"
    );
    assert_eq!(
        annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"],
        "3600"
    );
    assert_eq!(annotations["cert-manager.io/cluster-issuer"], "letsencrypt");
    assert_eq!(
        ing.spec.as_ref().unwrap().tls.as_ref().unwrap()[0]
            .secret_name
            .as_deref(),
        Some("chat-example-com-tls")
    );
    assert_eq!(redis_svc.spec.unwrap().cluster_ip.as_deref(), Some("None"));

    // Status: not ready (no pods run here), with the endpoint and the scale selector.
    let rc = eventually(&cp, "status with observedGeneration", || async {
        let rc = rc_api(&client, &ns).get(&name).await?;
        Ok(rc
            .status
            .as_ref()
            .and_then(|s| s.observed_generation)
            .is_some()
            .then_some(rc))
    })
    .await;
    let st = rc.status.as_ref().unwrap();
    assert_eq!(st.endpoint.as_deref(), Some("https://chat.example.com"));
    assert_eq!(st.socketio_path.as_deref(), Some("/socket.io/"));
    assert_eq!(st.redis.as_ref().unwrap().phase, RedisPhase::Pending);
    assert_eq!(status::condition(Some(st), READY).unwrap().status, "False");
    assert!(
        st.selector
            .as_deref()
            .unwrap()
            .contains(&format!("app.kubernetes.io/instance={name}"))
    );
    // The generated password is announced (never its value).
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let created = eventually(&cp, "the RedisPasswordCreated event", || async {
        let list = events.list(&ListParams::default()).await?;
        Ok(list
            .items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("RedisPasswordCreated")))
    })
    .await;
    assert!(!created.note.unwrap_or_default().contains(&password));
    // The owner references are right: deleting the cluster garbage-collects every child. The
    // garbage collector notices a CRD installed after its start at its next discovery resync
    // (every 30 s), hence the longer wait.
    rc_api(&client, &ns)
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    let deleted = Instant::now();
    cp.poll_until(
        "the garbage collector to delete every child",
        Duration::from_secs(90),
        || async { Ok(versions(&client, &ns, &name).await.is_empty().then_some(())) },
    )
    .await
    .unwrap();
    println!(
        "MEASURE cluster deleted -> children garbage-collected: {:?}",
        deleted.elapsed()
    );
    operator.stop().await;
}

#[tokio::test]
async fn spec_changes_update_or_remove_the_right_children() {
    setup!(cp, client, ns, "op-update");
    let operator = Operator::start(&client, &ns, Duration::from_secs(300));
    create(
        &client,
        &ns,
        "chat",
        json!({"replicas": 2, "redis": {"managed": {}},
        "ingress": {"enabled": true, "host": "chat.example.com"}}),
    )
    .await;
    eventually(&cp, "the Ingress", || async {
        Ok(get_opt::<Ingress>(&client, &ns, "chat").await)
    })
    .await;
    eventually(&cp, "the Redis StatefulSet", || async {
        Ok(get_opt::<StatefulSet>(&client, &ns, "chat-redis").await)
    })
    .await;

    merge_spec(&client, &ns, "chat", json!({"replicas": 4})).await;
    eventually(&cp, "Deployment replicas 4", || async {
        let d = get_opt::<Deployment>(&client, &ns, "chat").await;
        Ok(d.filter(|d| d.spec.as_ref().unwrap().replicas == Some(4)))
    })
    .await;

    merge_spec(&client, &ns, "chat", json!({"ingress": {"enabled": false}})).await;
    eventually(&cp, "the Ingress to be deleted", || async {
        Ok(get_opt::<Ingress>(&client, &ns, "chat")
            .await
            .is_none()
            .then_some(()))
    })
    .await;
    let rc = rc_api(&client, &ns).get("chat").await.unwrap();
    eventually(&cp, "the endpoint to become the Service", || async {
        let rc = rc_api(&client, &ns).get("chat").await?;
        Ok((rc.status.and_then(|s| s.endpoint).as_deref()
            == Some(format!("http://chat.{ns}.svc").as_str()))
        .then_some(()))
    })
    .await;

    merge_spec(
        &client,
        &ns,
        "chat",
        json!({"redis": {"managed": null,
        "external": {"host": "cache.example", "passwordSecretRef": {"name": "creds"}}}}),
    )
    .await;
    eventually(&cp, "the managed Redis children to be deleted", || async {
        let gone = get_opt::<StatefulSet>(&client, &ns, "chat-redis")
            .await
            .is_none()
            && get_opt::<Service>(&client, &ns, "chat-redis")
                .await
                .is_none()
            && get_opt::<Secret>(&client, &ns, "chat-redis-auth")
                .await
                .is_none();
        Ok(gone.then_some(()))
    })
    .await;
    // First through Sentinel (with the Sentinels' own password), then a plain host.
    merge_spec(
        &client,
        &ns,
        "chat",
        json!({"redis": {"external": {"host": null, "sentinel": {"masterName": "mymaster",
            "endpoints": ["sentinel-0.cache", "sentinel-1.cache:26380"],
            "passwordSecretRef": {"name": "sentinel-creds", "key": "pw"}}}}}),
    )
    .await;
    let d = eventually(&cp, "REDIS_URL naming the Sentinels", || async {
        let d = get_opt::<Deployment>(&client, &ns, "chat").await.unwrap();
        let url = env_value(&d, "REDIS_URL").and_then(|e| e.value);
        Ok((url.as_deref()
            == Some("redis-sentinel://sentinel-0.cache:26379?sentinelServiceName=mymaster&node=sentinel-1.cache:26380"))
        .then_some(d))
    })
    .await;
    let spw = env_value(&d, "REDIS_SENTINEL_PASSWORD")
        .unwrap()
        .value_from
        .unwrap()
        .secret_key_ref
        .unwrap();
    assert_eq!(
        (spw.name.as_str(), spw.key.as_str()),
        ("sentinel-creds", "pw")
    );
    eventually(
        &cp,
        "the status to report the Sentinel topology",
        || async {
            let rc = rc_api(&client, &ns).get("chat").await?;
            let r = rc.status.and_then(|s| s.redis);
            Ok(r.filter(|r| {
                r.topology == realtime_operator::api::RedisTopology::Sentinel
                    && r.master_name.as_deref() == Some("mymaster")
                    && r.endpoint == "sentinel-0.cache:26379,sentinel-1.cache:26380"
            }))
        },
    )
    .await;
    // Then a Redis Cluster by its seed nodes (the data nodes' password as before, mounted).
    merge_spec(
        &client,
        &ns,
        "chat",
        json!({"redis": {"external": {"sentinel": null,
            "cluster": {"endpoints": ["redis-cluster.cache", "10.0.0.7:7001"]}}}}),
    )
    .await;
    let d = eventually(&cp, "REDIS_URL naming the cluster's seed nodes", || async {
        let d = get_opt::<Deployment>(&client, &ns, "chat").await.unwrap();
        let url = env_value(&d, "REDIS_URL").and_then(|e| e.value);
        Ok(
            (url.as_deref() == Some("redis-cluster://redis-cluster.cache:6379?node=10.0.0.7:7001"))
                .then_some(d),
        )
    })
    .await;
    assert_eq!(
        mounted_password(&d),
        Some(("creds".to_string(), "password".to_string()))
    );
    assert!(env_value(&d, "REDIS_SENTINEL_PASSWORD").is_none());
    eventually(&cp, "the status to report the Cluster topology", || async {
        let rc = rc_api(&client, &ns).get("chat").await?;
        let r = rc.status.and_then(|s| s.redis);
        Ok(r.filter(|r| {
            r.topology == realtime_operator::api::RedisTopology::Cluster
                && r.master_name.is_none()
                && r.endpoint == "redis-cluster.cache:6379,10.0.0.7:7001"
        }))
    })
    .await;
    merge_spec(
        &client,
        &ns,
        "chat",
        json!({"redis": {"external": {"cluster": null, "host": "cache.example"}}}),
    )
    .await;
    let d = eventually(&cp, "REDIS_URL pointing at the external Redis", || async {
        let d = get_opt::<Deployment>(&client, &ns, "chat").await.unwrap();
        let url = env_value(&d, "REDIS_URL").and_then(|e| e.value);
        Ok((url.as_deref() == Some("redis://cache.example:6379")).then_some(d))
    })
    .await;
    assert_eq!(
        mounted_password(&d),
        Some(("creds".to_string(), "password".to_string()))
    );
    assert!(env_value(&d, "REDIS_SENTINEL_PASSWORD").is_none());
    assert!(
        d.spec
            .unwrap()
            .template
            .metadata
            .unwrap()
            .annotations
            .unwrap_or_default()
            .is_empty()
    );
    // What must stay, stayed.
    assert_owned_by(
        &get_opt::<Service>(&client, &ns, "chat")
            .await
            .unwrap()
            .metadata,
        &rc,
    );
    assert!(
        get_opt::<PodDisruptionBudget>(&client, &ns, "chat")
            .await
            .is_some()
    );
    let deletions = Api::<Event>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("Deleted"))
        .count();
    assert!(
        deletions >= 4,
        "expected Deleted events for the Ingress and the 3 Redis children, got {deletions}"
    );
    operator.stop().await;
}

#[tokio::test]
async fn deleted_and_hand_edited_children_are_restored() {
    setup!(cp, client, ns, "op-drift");
    let operator = Operator::start(&client, &ns, Duration::from_secs(300));
    create(&client, &ns, "chat", json!({"replicas": 2})).await;
    let svc = eventually(&cp, "the Service", || async {
        Ok(get_opt::<Service>(&client, &ns, "chat").await)
    })
    .await;
    eventually(&cp, "the Deployment", || async {
        Ok(get_opt::<Deployment>(&client, &ns, "chat").await)
    })
    .await;

    // A deleted child comes back (a new object: new uid).
    Api::<Service>::namespaced(client.clone(), &ns)
        .delete("chat", &DeleteParams::default())
        .await
        .unwrap();
    let restored = eventually(&cp, "the Service to be recreated", || async {
        Ok(get_opt::<Service>(&client, &ns, "chat")
            .await
            .filter(|s| s.uid() != svc.uid()))
    })
    .await;
    assert_eq!(restored.spec.unwrap().ports.unwrap()[0].port, 80);

    // A hand edit of a managed field (by another field manager, as kubectl edit would) is reverted.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let edit = json!({"spec": {"replicas": 7, "template": {"spec": {"containers": [
        {"name": "server", "image": "evil.example/other:1"}]}}}});
    deployments
        .patch(
            "chat",
            &PatchParams {
                field_manager: Some("kubectl-edit".into()),
                ..Default::default()
            },
            &Patch::Strategic(&edit),
        )
        .await
        .unwrap();
    eventually(&cp, "the hand edit to be reverted", || async {
        let d = get_opt::<Deployment>(&client, &ns, "chat").await.unwrap();
        let spec = d.spec.unwrap();
        let image = spec.template.spec.unwrap().containers[0].image.clone();
        Ok((spec.replicas == Some(2) && image.as_deref() == Some(SERVER_IMAGE)).then_some(()))
    })
    .await;

    // A deleted password Secret is generated anew, and both pod templates roll to it.
    let hash_of = |d: &Deployment| {
        d.spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap()["realtime.dev/redis-auth-hash"]
            .clone()
    };
    let before = hash_of(&deployments.get("chat").await.unwrap());
    Api::<Secret>::namespaced(client.clone(), &ns)
        .delete("chat-redis-auth", &DeleteParams::default())
        .await
        .unwrap();
    let after = eventually(&cp, "a new password rolled into the Deployment", || async {
        let h = hash_of(&deployments.get("chat").await?);
        Ok((h != before).then_some(h))
    })
    .await;
    let sts = get_opt::<StatefulSet>(&client, &ns, "chat-redis")
        .await
        .unwrap();
    let sts_hash = sts
        .spec
        .unwrap()
        .template
        .metadata
        .unwrap()
        .annotations
        .unwrap()["realtime.dev/redis-auth-hash"]
        .clone();
    assert_eq!(sts_hash, after);
    assert!(
        get_opt::<Secret>(&client, &ns, "chat-redis-auth")
            .await
            .is_some()
    );
    operator.stop().await;
}

#[tokio::test]
async fn simulated_readiness_makes_the_cluster_ready() {
    setup!(cp, client, ns, "op-ready");
    let operator = Operator::start(&client, &ns, Duration::from_secs(300));
    create(&client, &ns, "chat", json!({"replicas": 3})).await;
    eventually(&cp, "the children", || async {
        Ok(get_opt::<StatefulSet>(&client, &ns, "chat-redis")
            .await
            .and(get_opt::<Deployment>(&client, &ns, "chat").await))
    })
    .await;
    simulate_ready(&client, &ns, "chat", 3).await;
    let rc = eventually(&cp, "Ready=True", || async {
        let rc = rc_api(&client, &ns).get("chat").await?;
        let ready =
            status::condition(rc.status.as_ref(), READY).is_some_and(|c| c.status == "True");
        Ok(ready.then_some(rc))
    })
    .await;
    let st = rc.status.as_ref().unwrap();
    assert_eq!((st.replicas, st.ready_replicas), (3, 3));
    assert_eq!(st.observed_generation, rc.metadata.generation);
    assert_eq!(st.redis.as_ref().unwrap().phase, RedisPhase::Ready);
    let ready = status::condition(Some(st), READY).unwrap();
    assert_eq!(
        (ready.reason.as_str(), ready.message.as_str()),
        ("AllReplicasReady", "3/3 server pods ready")
    );
    assert_eq!(ready.observed_generation, rc.metadata.generation);
    assert_eq!(
        status::condition(Some(st), "Progressing").unwrap().status,
        "False"
    );
    assert_eq!(
        status::condition(Some(st), DEGRADED).unwrap().status,
        "False"
    );
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    eventually(&cp, "the Ready event", || async {
        let list = events.list(&ListParams::default()).await?;
        Ok(list.items.into_iter().find(|e| {
            e.reason.as_deref() == Some("Ready")
                && e.regarding.as_ref().and_then(|r| r.uid.clone()) == rc.uid()
        }))
    })
    .await;
    operator.stop().await;
}

#[tokio::test]
async fn kubectl_scale_and_printer_columns() {
    let Some(cp) = control_plane::shared().await else {
        return;
    };
    let _logs = cp.logs_on_failure();
    let Some(mut kubectl) = cp.kubectl() else {
        return;
    };
    let client = cp.client().await.unwrap();
    let ns = cp.create_namespace("op-scale").await.unwrap();
    let operator = Operator::start(&client, &ns, Duration::from_secs(300));
    create(
        &client,
        &ns,
        "chat",
        json!({"replicas": 2, "redis": {"external": {"host": "cache"}}}),
    )
    .await;
    eventually(&cp, "the status selector", || async {
        let rc = rc_api(&client, &ns).get("chat").await?;
        Ok(rc.status.and_then(|s| s.selector))
    })
    .await;

    kubectl.args(["scale", "-n", &ns, "rtc/chat", "--replicas=5"]);
    run_kubectl(kubectl);
    eventually(&cp, "Deployment replicas 5 after kubectl scale", || async {
        let d = get_opt::<Deployment>(&client, &ns, "chat").await.unwrap();
        Ok((d.spec.unwrap().replicas == Some(5)).then_some(()))
    })
    .await;
    // The scale subresource reports the selector an HPA needs.
    let mut kubectl = cp.kubectl().unwrap();
    kubectl.args([
        "get",
        "--raw",
        &format!("/apis/realtime.dev/v1alpha1/namespaces/{ns}/realtimeclusters/chat/scale"),
    ]);
    let scale: Value = serde_json::from_str(&run_kubectl(kubectl)).unwrap();
    assert_eq!(scale["spec"]["replicas"], 5);
    assert_eq!(
        scale["status"]["selector"],
        "app.kubernetes.io/instance=chat,app.kubernetes.io/name=realtime-server,realtime.dev/cluster=chat"
    );

    simulate_ready(&client, &ns, "chat", 5).await;
    eventually(&cp, "readyReplicas 5", || async {
        let rc = rc_api(&client, &ns).get("chat").await?;
        Ok((rc.status.map(|s| s.ready_replicas) == Some(5)).then_some(()))
    })
    .await;
    let mut kubectl = cp.kubectl().unwrap();
    kubectl.args(["get", "rtc", "-n", &ns]);
    let table = run_kubectl(kubectl);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "REPLICAS",
            "READY",
            "REDIS",
            "CONNECTIONS",
            "ENDPOINT",
            "AGE"
        ]
    );
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        &row[..5],
        [
            "chat",
            "5",
            "5",
            "External",
            &format!("http://chat.{ns}.svc")
        ]
    );
    operator.stop().await;
}

#[tokio::test]
async fn impossible_spec_gets_a_condition_and_an_event_without_a_hot_loop() {
    setup!(cp, client, ns, "op-impossible");
    let operator = Operator::start(&client, &ns, Duration::from_secs(1));
    // Passes the CRD (annotations are free-form) but the operator owns this annotation.
    create(
        &client,
        &ns,
        "chat",
        json!({"ingress": {"enabled": true, "host": "a.example",
        "annotations": {"nginx.ingress.kubernetes.io/affinity": "none"}}}),
    )
    .await;
    let rc = eventually(&cp, "Degraded=InvalidSpec", || async {
        let rc = rc_api(&client, &ns).get("chat").await?;
        let c = status::condition(rc.status.as_ref(), DEGRADED).cloned();
        Ok(
            c.filter(|c| c.status == "True" && c.reason == "InvalidSpec")
                .map(|c| (rc, c)),
        )
    })
    .await;
    assert!(
        rc.1.message
            .contains("nginx.ingress.kubernetes.io/affinity is set by the operator"),
        "{}",
        rc.1.message
    );
    assert!(
        get_opt::<Deployment>(&client, &ns, "chat").await.is_none(),
        "nothing is applied for an invalid spec"
    );
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    eventually(&cp, "the InvalidSpec warning event", || async {
        let list = events.list(&ListParams::default()).await?;
        Ok(list.items.into_iter().find(|e| {
            e.reason.as_deref() == Some("InvalidSpec") && e.type_.as_deref() == Some("Warning")
        }))
    })
    .await;
    // Even with a 1 s resync, an invalid spec is not retried until it changes.
    let before = operator.count("invalid_spec");
    let rv = rc_api(&client, &ns)
        .get("chat")
        .await
        .unwrap()
        .resource_version();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after = operator.count("invalid_spec");
    assert!(
        after - before <= 1,
        "hot loop: {} reconciles of an invalid spec in 4 s",
        after - before
    );
    assert_eq!(
        rc_api(&client, &ns)
            .get("chat")
            .await
            .unwrap()
            .resource_version(),
        rv,
        "status rewritten while unchanged"
    );

    // Fixing the spec recovers.
    rc_api(&client, &ns)
        .patch(
            "chat",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"ingress": {"annotations": null}}})),
        )
        .await
        .unwrap();
    eventually(&cp, "the Ingress after the fix", || async {
        Ok(get_opt::<Ingress>(&client, &ns, "chat").await)
    })
    .await;
    eventually(&cp, "Degraded=False", || async {
        let rc = rc_api(&client, &ns).get("chat").await?;
        Ok(status::condition(rc.status.as_ref(), DEGRADED)
            .filter(|c| c.status == "False")
            .map(|_| ()))
    })
    .await;
    operator.stop().await;
}

#[tokio::test]
async fn paused_stops_all_changes() {
    setup!(cp, client, ns, "op-paused");
    let operator = Operator::start(&client, &ns, Duration::from_secs(300));
    create(
        &client,
        &ns,
        "chat",
        json!({"replicas": 2, "ingress": {"enabled": true, "host": "a.example"}}),
    )
    .await;
    eventually(&cp, "the Ingress", || async {
        Ok(get_opt::<Ingress>(&client, &ns, "chat").await)
    })
    .await;

    merge_spec(&client, &ns, "chat", json!({"paused": true})).await;
    eventually(&cp, "Progressing=Paused", || async {
        let rc = rc_api(&client, &ns).get("chat").await?;
        Ok(status::condition(rc.status.as_ref(), "Progressing")
            .filter(|c| c.reason == "Paused")
            .map(|_| ()))
    })
    .await;
    let frozen = versions(&client, &ns, "chat").await;
    merge_spec(
        &client,
        &ns,
        "chat",
        json!({"replicas": 6, "ingress": {"enabled": false}}),
    )
    .await;
    // The paused reconcile of the change reports it as observed, and applies nothing.
    let generation = rc_api(&client, &ns)
        .get("chat")
        .await
        .unwrap()
        .metadata
        .generation;
    eventually(&cp, "a paused reconcile of the change", || async {
        let rc = rc_api(&client, &ns).get("chat").await?;
        Ok((rc.status.and_then(|s| s.observed_generation) == generation).then_some(()))
    })
    .await;
    assert!(operator.count("paused") >= 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let now = versions(&client, &ns, "chat").await;
    for (k, v) in &frozen {
        if !k.starts_with("RealtimeCluster/") {
            assert_eq!(now.get(k), Some(v), "{k} changed while paused");
        }
    }

    merge_spec(&client, &ns, "chat", json!({"paused": false})).await;
    eventually(&cp, "the changes after unpausing", || async {
        let d = get_opt::<Deployment>(&client, &ns, "chat").await.unwrap();
        let ingress_gone = get_opt::<Ingress>(&client, &ns, "chat").await.is_none();
        Ok((d.spec.unwrap().replicas == Some(6) && ingress_gone).then_some(()))
    })
    .await;
    operator.stop().await;
}

#[tokio::test]
async fn restart_and_resync_write_nothing_when_nothing_changed() {
    setup!(cp, client, ns, "op-steady");
    let operator = Operator::start(&client, &ns, Duration::from_secs(300));
    create(
        &client,
        &ns,
        "chat",
        json!({"replicas": 2, "ingress": {"enabled": true, "host": "a.example"},
        "redis": {"managed": {"resources": {"limits": {"memory": "300Mi"}}}}}),
    )
    .await;
    eventually(&cp, "all children", || async {
        Ok((versions(&client, &ns, "chat").await.len() == 8).then_some(()))
    })
    .await;
    simulate_ready(&client, &ns, "chat", 2).await;
    eventually(&cp, "Ready=True", || async {
        let rc = rc_api(&client, &ns).get("chat").await?;
        Ok(status::condition(rc.status.as_ref(), READY)
            .filter(|c| c.status == "True")
            .map(|_| ()))
    })
    .await;
    // Settled: two snapshots a second apart agree.
    let mut settled = versions(&client, &ns, "chat").await;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let again = versions(&client, &ns, "chat").await;
        if again == settled {
            break;
        }
        settled = again;
    }
    let events_before = Api::<Event>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .len();
    operator.stop().await;

    // A new operator process (fresh caches) reconciles everything once and writes nothing.
    let operator = Operator::start(&client, &ns, Duration::from_secs(1));
    eventually(&cp, "the restarted operator's first reconcile", || async {
        Ok((operator.count("applied") >= 1).then_some(()))
    })
    .await;
    let after_restart = versions(&client, &ns, "chat").await;
    let changed: Vec<&String> = settled
        .keys()
        .filter(|k| settled.get(*k) != after_restart.get(*k))
        .collect();
    assert!(changed.is_empty(), "restart wrote {changed:?}");

    // Steady-state resyncs (every second here) write nothing either.
    let start_count = operator.count("applied");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let resyncs = operator.count("applied") - start_count;
    let after_resyncs = versions(&client, &ns, "chat").await;
    let writes = settled
        .keys()
        .filter(|k| settled.get(*k) != after_resyncs.get(*k))
        .count();
    println!(
        "MEASURE steady state: {resyncs} resyncs, {writes} object writes ({} per resync)",
        writes as f64 / resyncs.max(1) as f64
    );
    assert!(
        resyncs >= 2,
        "expected at least 2 resyncs (1 s interval) in 5 s, got {resyncs}"
    );
    assert_eq!(writes, 0, "steady-state resyncs wrote objects");
    let events_after = Api::<Event>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .len();
    assert_eq!(
        events_after, events_before,
        "restart or resync published events"
    );
    operator.stop().await;
}

/// One `realtime-operator` process (the built binary) against the shared control plane.
struct OperatorProcess {
    child: std::process::Child,
    admin: std::net::SocketAddr,
    log: std::path::PathBuf,
}

impl OperatorProcess {
    fn spawn(
        bin: &std::path::Path,
        cp: &ControlPlane,
        ns: &str,
        identity: &str,
        dir: &std::path::Path,
        extra: &[String],
    ) -> Self {
        use realtime_e2e::data_plane::{die_with_parent, free_port};
        let admin: std::net::SocketAddr = format!("127.0.0.1:{}", free_port().unwrap())
            .parse()
            .unwrap();
        let log = dir.join(format!("{identity}.log"));
        let mut cmd = Command::new(bin);
        cmd.args([
            "--leader-election",
            "--lease-name=e2e-leader",
            "--resync=2s",
        ])
        .arg(format!("--lease-namespace={ns}"))
        .arg(format!("--namespace={ns}"))
        .arg(format!("--identity={identity}"))
        .arg(format!("--admin-addr={admin}"))
        .args(extra)
        .env("KUBECONFIG", cp.kubeconfig_path())
        .env("RUST_LOG", "info")
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::options().append(true).open(&log).unwrap());
        die_with_parent(&mut cmd, libc::SIGKILL);
        let child = cmd.spawn().expect("starting realtime-operator");
        Self { child, admin, log }
    }

    async fn metric(&self, name: &str) -> Option<f64> {
        let r = realtime_e2e::data_plane::http_get(self.admin, "/metrics", Duration::from_secs(2))
            .await
            .ok()?;
        realtime_e2e::data_plane::metric_value(&r.body, name, &[])
    }

    async fn status(&self, path: &str) -> Option<u16> {
        realtime_e2e::data_plane::http_get(self.admin, path, Duration::from_secs(2))
            .await
            .ok()
            .map(|r| r.status)
    }

    /// SIGTERM, then the exit status (within 20 s).
    async fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        match self.exited_within(Duration::from_secs(20)).await {
            Some(status) => status,
            None => panic!("operator did not exit after SIGTERM:\n{}", self.log_text()),
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, signal: i32) {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// The exit status, once the process exited within `within`.
    async fn exited_within(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if started.elapsed() > within {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn lease_holder(client: &Client, ns: &str) -> Option<String> {
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), ns);
    leases
        .get_opt("e2e-leader")
        .await
        .unwrap()?
        .spec?
        .holder_identity
}

/// [`setup!`], then the built `realtime-operator` binary (the test returns when it is missing
/// outside CI) and a temp dir for the processes' logs.
macro_rules! setup_binary {
    ($cp:ident, $client:ident, $ns:ident, $bin:ident, $dir:ident, $prefix:expr) => {
        setup!($cp, $client, $ns, $prefix);
        let Some($bin) = realtime_e2e::require::require(
            "the realtime-operator binary",
            "build it with `cargo build --workspace --bins` (make build)",
            realtime_e2e::require::workspace_bin("realtime-operator"),
        ) else {
            return;
        };
        let $dir = tempfile::tempdir().unwrap();
    };
}

#[tokio::test]
async fn binary_elects_one_leader_hands_over_on_sigterm_and_serves_admin_endpoints() {
    setup_binary!(cp, client, ns, bin, dir, "op-leader");

    let mut a = OperatorProcess::spawn(&bin, &cp, &ns, "replica-a", dir.path(), &[]);
    eventually(&cp, "replica-a to lead", || async {
        Ok((a.metric("realtime_operator_leader").await == Some(1.0)).then_some(()))
    })
    .await;
    let mut b = OperatorProcess::spawn(&bin, &cp, &ns, "replica-b", dir.path(), &[]);
    eventually(&cp, "replica-b to be ready as a standby", || async {
        Ok((b.status("/readyz").await == Some(200)).then_some(()))
    })
    .await;
    assert_eq!(a.status("/healthz").await, Some(200));
    assert_eq!(
        b.metric("realtime_operator_leader").await,
        Some(0.0),
        "two leaders:\n{}",
        b.log_text()
    );
    assert_eq!(
        lease_holder(&client, &ns).await.as_deref(),
        Some("replica-a")
    );

    // The leader reconciles; its metrics count it.
    create(
        &client,
        &ns,
        "chat",
        json!({"replicas": 2, "redis": {"external": {"host": "cache"}}}),
    )
    .await;
    eventually(&cp, "the leader to create the Deployment", || async {
        Ok(get_opt::<Deployment>(&client, &ns, "chat").await)
    })
    .await;
    eventually(&cp, "a counted reconcile", || async {
        let r =
            realtime_e2e::data_plane::http_get(a.admin, "/metrics", Duration::from_secs(2)).await?;
        let n = realtime_e2e::data_plane::metric_value(
            &r.body,
            "realtime_operator_reconciliations_total",
            &[("outcome", "applied")],
        );
        Ok(n.filter(|n| *n >= 1.0).map(|_| ()))
    })
    .await;

    // SIGTERM: the leader exits cleanly and releases the Lease; the standby takes over.
    let handover = Instant::now();
    let status = a.terminate().await;
    assert!(
        status.success(),
        "replica-a exited with {status}:\n{}",
        a.log_text()
    );
    assert!(
        a.log_text().contains("released the leader Lease"),
        "{}",
        a.log_text()
    );
    eventually(&cp, "replica-b to lead", || async {
        Ok((b.metric("realtime_operator_leader").await == Some(1.0)).then_some(()))
    })
    .await;
    println!(
        "MEASURE leader handover after SIGTERM: {:?}",
        handover.elapsed()
    );
    assert_eq!(
        lease_holder(&client, &ns).await.as_deref(),
        Some("replica-b")
    );
    merge_spec(&client, &ns, "chat", json!({"replicas": 3})).await;
    eventually(&cp, "the new leader to apply the change", || async {
        let d = get_opt::<Deployment>(&client, &ns, "chat").await.unwrap();
        Ok((d.spec.unwrap().replicas == Some(3)).then_some(()))
    })
    .await;
    let status = b.terminate().await;
    assert!(
        status.success(),
        "replica-b exited with {status}:\n{}",
        b.log_text()
    );
    assert_eq!(
        lease_holder(&client, &ns).await,
        None,
        "the Lease was not released"
    );
}

/// The Lease of the leader tests.
async fn leader_lease(client: &Client, ns: &str) -> k8s_openapi::api::coordination::v1::Lease {
    Api::namespaced(client.clone(), ns)
        .get("e2e-leader")
        .await
        .unwrap()
}

/// A leader that hangs (SIGSTOP) is replaced within its lease duration, and once resumed
/// (SIGCONT) it writes nothing: each replica has its own default server image, so any reconcile
/// by the old leader would change the Deployment; instead it finds its leadership lapsed,
/// logs that it steps down and exits 1 (the pod would restart as a candidate).
#[tokio::test]
async fn a_hung_leader_is_replaced_and_writes_nothing_once_resumed() {
    const LEASE: Duration = Duration::from_secs(5);
    const DEADLINE: Duration = Duration::from_secs(3);
    const RETRY: Duration = Duration::from_secs(1);
    setup_binary!(cp, client, ns, bin, dir, "op-hung");
    let image = |replica: &str| format!("example.org/realtime-server:{replica}");
    let args = |replica: &str| {
        vec![
            format!("--lease-duration={}s", LEASE.as_secs()),
            format!("--renew-deadline={}s", DEADLINE.as_secs()),
            format!("--retry-period={}s", RETRY.as_secs()),
            format!("--default-server-image={}", image(replica)),
        ]
    };
    let deployment_image = |d: Deployment| {
        d.spec.unwrap().template.spec.unwrap().containers[0]
            .image
            .clone()
            .unwrap()
    };

    let mut a = OperatorProcess::spawn(&bin, &cp, &ns, "replica-a", dir.path(), &args("replica-a"));
    eventually(&cp, "replica-a to lead", || async {
        Ok((a.metric("realtime_operator_leader").await == Some(1.0)).then_some(()))
    })
    .await;
    let b = OperatorProcess::spawn(&bin, &cp, &ns, "replica-b", dir.path(), &args("replica-b"));
    eventually(&cp, "replica-b to be ready as a standby", || async {
        Ok((b.status("/readyz").await == Some(200)).then_some(()))
    })
    .await;
    create(
        &client,
        &ns,
        "chat",
        json!({"replicas": 2, "redis": {"external": {"host": "cache"}}}),
    )
    .await;
    eventually(&cp, "replica-a to create the Deployment", || async {
        let d = get_opt::<Deployment>(&client, &ns, "chat").await;
        Ok(d.filter(|d| deployment_image(d.clone()) == image("replica-a")))
    })
    .await;
    assert_eq!(b.metric("realtime_operator_leader").await, Some(0.0));
    let transitions = leader_lease(&client, &ns)
        .await
        .spec
        .unwrap()
        .lease_transitions;

    // SIGSTOP: the leader stops renewing; the standby takes over once the Lease has not changed
    // for a lease duration, measured from its own last observation.
    a.signal(libc::SIGSTOP);
    let stopped = Instant::now();
    let takeover = loop {
        if lease_holder(&client, &ns).await.as_deref() == Some("replica-b") {
            break stopped.elapsed();
        }
        assert!(
            stopped.elapsed() < LEASE + 4 * RETRY,
            "replica-b did not take over:\n{}",
            b.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!(
        "MEASURE takeover after SIGSTOP of the leader: {takeover:?} (lease duration {LEASE:?})"
    );
    // The last renewal was at most one retry period before the stop; the standby saw it no
    // earlier and waits a full lease duration from then; it polls every retry period.
    assert!(
        takeover + RETRY + Duration::from_millis(200) >= LEASE,
        "took over too early: {takeover:?}"
    );
    assert!(
        takeover <= LEASE + 2 * RETRY + Duration::from_secs(1),
        "took over too late: {takeover:?}"
    );
    let lease = leader_lease(&client, &ns).await.spec.unwrap();
    assert_eq!(lease.lease_transitions, transitions.map(|t| t + 1));
    eventually(&cp, "replica-b to lead and reconcile", || async {
        let d = get_opt::<Deployment>(&client, &ns, "chat").await.unwrap();
        let leads = b.metric("realtime_operator_leader").await == Some(1.0);
        Ok((leads && deployment_image(d) == image("replica-b")).then_some(()))
    })
    .await;
    // replica-b at rest (its steady-state resync writes nothing): any change from here on
    // would be replica-a's.
    let settled = eventually(&cp, "replica-b to settle", || async {
        let before = versions(&client, &ns, "chat").await;
        tokio::time::sleep(Duration::from_millis(2500)).await;
        Ok((versions(&client, &ns, "chat").await == before).then_some(before))
    })
    .await;

    // SIGCONT: replica-a's requeues (resync 2 s) are long due; it must not act on them.
    a.signal(libc::SIGCONT);
    let resumed = Instant::now();
    let status = a.exited_within(Duration::from_secs(5)).await;
    let log = a.log_text();
    let status = status.unwrap_or_else(|| panic!("replica-a did not exit after SIGCONT:\n{log}"));
    println!(
        "MEASURE old leader exit after SIGCONT: {:?} ({status})",
        resumed.elapsed()
    );
    assert!(!status.success(), "replica-a exited with {status}:\n{log}");
    assert!(log.contains("lost leadership: stepping down"), "{log}");
    println!(
        "writes refused by replica-a's fence after SIGCONT: {}",
        log.matches("not the leader").count()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        versions(&client, &ns, "chat").await,
        settled,
        "an object changed after the old leader resumed:\n{log}"
    );
    let d = get_opt::<Deployment>(&client, &ns, "chat").await.unwrap();
    assert_eq!(deployment_image(d), image("replica-b"));
    let lease = leader_lease(&client, &ns).await.spec.unwrap();
    assert_eq!(lease.holder_identity.as_deref(), Some("replica-b"));
    assert_eq!(lease.lease_transitions, transitions.map(|t| t + 1));
    assert_eq!(b.metric("realtime_operator_leader").await, Some(1.0));
}

/// The rules the operator needs (namespaced here; the chart's ClusterRole has the same rules).
/// SSA that creates an object is authorized as `create`, an update as `patch`.
/// The chart's own rules for the operator: `helm template` in namespaced mode (watching `ns`),
/// the workload Role's rules plus the leader-election Role's (for the Lease `lease`), so this
/// test checks exactly what users install, not a copy that could drift.
fn chart_rules(ns: &str) -> Option<(Value, String)> {
    let docs = realtime_e2e::helm::Helm::require()?
        .template(ns, &[&format!("watchNamespace={ns}")])
        .expect("helm template of the chart");
    let roles: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "Role").collect();
    assert_eq!(
        roles.len(),
        2,
        "the workload Role and the leader-election Role"
    );
    let mut rules = Vec::new();
    let mut lease = None;
    for r in roles {
        for rule in r["rules"].as_array().unwrap() {
            if let Some(name) = rule["resourceNames"].as_array().and_then(|n| n.first()) {
                lease = name.as_str().map(str::to_string);
            }
            rules.push(rule.clone());
        }
    }
    Some((
        Value::Array(rules),
        lease.expect("the Lease's name in the chart"),
    ))
}

#[tokio::test]
async fn least_privilege_rules_suffice_for_every_operation() {
    use k8s_openapi::api::core::v1::ServiceAccount;
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    let Some(cp) = control_plane::shared().await else {
        return;
    };
    let _logs = cp.logs_on_failure();
    let admin = cp.client().await.unwrap();
    let ns = cp.create_namespace("op-rbac").await.unwrap();
    let Some((rules, lease)) = chart_rules(&ns) else {
        return;
    };
    let pp = PostParams::default();
    Api::<ServiceAccount>::namespaced(admin.clone(), &ns)
        .create(
            &pp,
            &serde_json::from_value(json!({"metadata": {"name": "operator"}})).unwrap(),
        )
        .await
        .unwrap();
    Api::<Role>::namespaced(admin.clone(), &ns)
        .create(
            &pp,
            &serde_json::from_value(json!({"metadata": {"name": "operator"}, "rules": rules}))
                .unwrap(),
        )
        .await
        .unwrap();
    Api::<RoleBinding>::namespaced(admin.clone(), &ns)
        .create(&pp, &serde_json::from_value(json!({"metadata": {"name": "operator"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "operator"},
            "subjects": [{"kind": "ServiceAccount", "name": "operator", "namespace": ns}]})).unwrap())
        .await
        .unwrap();
    let sa = cp
        .service_account(&ns, "operator")
        .await
        .unwrap()
        .client()
        .await
        .unwrap();

    // Leader election under these rules.
    let elector = realtime_operator::leader::LeaderElector::new(
        sa.clone(),
        realtime_operator::leader::LeaseConfig::new(ns.clone(), lease, "me".into()),
    );
    assert!(
        elector.try_acquire_or_renew().await.unwrap(),
        "create the Lease"
    );
    assert!(
        elector.try_acquire_or_renew().await.unwrap(),
        "renew the Lease"
    );
    elector.release().await.unwrap();

    // Every reconcile path: create all kinds, update, prune, status, events.
    let operator = Operator::start(&sa, &ns, Duration::from_secs(300));
    create(
        &admin,
        &ns,
        "chat",
        json!({"replicas": 2, "ingress": {"enabled": true, "host": "a.example"}}),
    )
    .await;
    eventually(
        &cp,
        "all children created by the ServiceAccount",
        || async { Ok((versions(&admin, &ns, "chat").await.len() == 8).then_some(())) },
    )
    .await;
    simulate_ready(&admin, &ns, "chat", 2).await;
    eventually(&cp, "Ready=True written by the ServiceAccount", || async {
        let rc = rc_api(&admin, &ns).get("chat").await?;
        Ok(status::condition(rc.status.as_ref(), READY)
            .filter(|c| c.status == "True")
            .map(|_| ()))
    })
    .await;
    // A highly available Redis: the Secret gains the Sentinels' lines (replaced, same
    // password), the Sentinels, their Service and two budgets appear; turned off, they are
    // pruned, the budgets too.
    let ha_children = || async {
        [
            get_opt::<StatefulSet>(&admin, &ns, "chat-sentinel")
                .await
                .is_some(),
            get_opt::<Service>(&admin, &ns, "chat-sentinel")
                .await
                .is_some(),
            get_opt::<PodDisruptionBudget>(&admin, &ns, "chat-redis")
                .await
                .is_some(),
            get_opt::<PodDisruptionBudget>(&admin, &ns, "chat-sentinel")
                .await
                .is_some(),
        ]
    };
    let password = |s: Option<Secret>| {
        s.and_then(|s| s.data)
            .and_then(|d| d.get("password").cloned())
    };
    let before = password(get_opt::<Secret>(&admin, &ns, "chat-redis-auth").await);
    merge_spec(
        &admin,
        &ns,
        "chat",
        json!({"redis": {"managed": {"highAvailability": {}}}}),
    )
    .await;
    eventually(
        &cp,
        "the Sentinels and budgets made by the ServiceAccount",
        || async {
            let secret = get_opt::<Secret>(&admin, &ns, "chat-redis-auth").await;
            let ha_secret = secret
                .as_ref()
                .and_then(|s| s.data.as_ref())
                .is_some_and(|d| d.contains_key("sentinel.conf"));
            Ok((ha_children().await == [true; 4] && ha_secret).then_some(()))
        },
    )
    .await;
    assert_eq!(
        password(get_opt::<Secret>(&admin, &ns, "chat-redis-auth").await),
        before,
        "the password changed when the Secret was replaced"
    );
    merge_spec(
        &admin,
        &ns,
        "chat",
        json!({"redis": {"managed": {"highAvailability": null}}}),
    )
    .await;
    eventually(
        &cp,
        "the Sentinels and budgets pruned by the ServiceAccount",
        || async { Ok((ha_children().await == [false; 4]).then_some(())) },
    )
    .await;
    merge_spec(
        &admin,
        &ns,
        "chat",
        json!({"replicas": 3, "ingress": {"enabled": false},
        "redis": {"managed": null, "external": {"host": "cache"}}}),
    )
    .await;
    eventually(&cp, "update and prune by the ServiceAccount", || async {
        let v = versions(&admin, &ns, "chat").await;
        let d = get_opt::<Deployment>(&admin, &ns, "chat").await.unwrap();
        Ok((v.len() == 4 && d.spec.unwrap().replicas == Some(3)).then_some(()))
    })
    .await;
    let events = Api::<Event>::namespaced(admin.clone(), &ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(
        events
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("Deleted"))
    );
    assert_eq!(
        operator.count("error"),
        0,
        "a reconcile failed under the least-privilege rules"
    );
    operator.stop().await;
}

#[tokio::test]
async fn a_precreated_password_secret_is_used_and_a_broken_one_reported() {
    setup!(cp, client, ns, "op-secret");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let pp = PostParams::default();
    // Bring your own password: the operator adopts it instead of generating one.
    secrets
        .create(
            &pp,
            &serde_json::from_value(json!({"metadata": {"name": "mine-redis-auth"},
            "stringData": {"password": "chosen-by-the-user"}}))
            .unwrap(),
        )
        .await
        .unwrap();
    // No usable key: reported, never overwritten.
    secrets
        .create(
            &pp,
            &serde_json::from_value(json!({"metadata": {"name": "broken-redis-auth"},
            "stringData": {"pass": "x"}}))
            .unwrap(),
        )
        .await
        .unwrap();
    let operator = Operator::start(&client, &ns, Duration::from_secs(300));
    let mine = create(&client, &ns, "mine", json!({})).await;
    let broken = create(&client, &ns, "broken", json!({})).await;

    let d = eventually(&cp, "the Deployment using the user's password", || async {
        Ok(get_opt::<Deployment>(&client, &ns, "mine").await)
    })
    .await;
    let hash = d
        .spec
        .unwrap()
        .template
        .metadata
        .unwrap()
        .annotations
        .unwrap()["realtime.dev/redis-auth-hash"]
        .clone();
    assert_eq!(
        hash,
        realtime_operator::build::redis::auth_hash("chosen-by-the-user")
    );
    let adopted = secrets.get("mine-redis-auth").await.unwrap();
    assert_owned_by(&adopted.metadata, &mine);
    let data = adopted.data.unwrap();
    assert_eq!(data["password"].0, b"chosen-by-the-user");
    assert_eq!(
        data["redis.conf"].0,
        b"requirepass \"chosen-by-the-user\"\n"
    );

    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let failed = eventually(
        &cp,
        "a ReconcileFailed event for the broken Secret",
        || async {
            let list = events.list(&ListParams::default()).await?;
            Ok(list.items.into_iter().find(|e| {
                e.reason.as_deref() == Some("ReconcileFailed")
                    && e.regarding.as_ref().and_then(|r| r.uid.clone()) == broken.uid()
            }))
        },
    )
    .await;
    assert!(
        failed
            .note
            .unwrap()
            .contains("has no non-empty `password` key: delete it")
    );
    assert!(
        get_opt::<Deployment>(&client, &ns, "broken")
            .await
            .is_none()
    );
    let untouched = secrets.get("broken-redis-auth").await.unwrap();
    assert!(
        untouched.metadata.owner_references.is_none(),
        "the broken Secret was modified"
    );
    operator.stop().await;
}

/// The digest on the server pod template (`realtime.dev/redis-auth-hash`), if any.
fn pod_auth_hash(d: &Deployment) -> Option<String> {
    d.spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get("realtime.dev/redis-auth-hash")
        .cloned()
}

/// An edited external-Redis password Secret rolls the servers: its change alone (no spec change,
/// resync far away) triggers a reconcile that puts the new digest on the pod template.
#[tokio::test]
async fn an_edited_external_password_secret_rolls_the_servers() {
    use realtime_operator::build::redis::auth_hash;
    setup!(cp, client, ns, "op-extpw");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let secret = |pw: &str| -> Secret {
        serde_json::from_value(
            json!({"metadata": {"name": "creds"}, "stringData": {"password": pw}}),
        )
        .unwrap()
    };
    secrets
        .create(&PostParams::default(), &secret("pw-alpha-7f3"))
        .await
        .unwrap();
    let operator = Operator::start(&client, &ns, Duration::from_secs(300));
    create(
        &client,
        &ns,
        "ext",
        json!({"redis": {"external": {"host": "cache",
            "passwordSecretRef": {"name": "creds", "key": "password"}}}}),
    )
    .await;
    let digest = |want: String| {
        let (client, ns) = (client.clone(), ns.clone());
        move || {
            let (client, ns, want) = (client.clone(), ns.clone(), want.clone());
            async move {
                let d = get_opt::<Deployment>(&client, &ns, "ext").await;
                Ok(d.filter(|d| pod_auth_hash(d).as_deref() == Some(want.as_str())))
            }
        }
    };
    let before = eventually(
        &cp,
        "the first password's digest",
        digest(auth_hash("pw-alpha-7f3")),
    )
    .await;

    let t0 = Instant::now();
    secrets
        .replace("creds", &PostParams::default(), &secret("pw-bravo-9c1"))
        .await
        .unwrap();
    let after = eventually(
        &cp,
        "the second password's digest after editing the Secret",
        digest(auth_hash("pw-bravo-9c1")),
    )
    .await;
    eprintln!(
        "external password Secret edited -> new pod template digest in {:.1?}",
        t0.elapsed()
    );
    assert_ne!(
        before.metadata.generation, after.metadata.generation,
        "a new pod template (a rollout)"
    );
    let json = serde_json::to_string(&after).unwrap();
    assert!(
        !json.contains("pw-bravo-9c1") && !json.contains("pw-alpha-7f3"),
        "the password leaked"
    );
    // An unrelated Secret changing does not touch the Deployment.
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "other"}, "stringData": {"x": "y"}}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let same = get_opt::<Deployment>(&client, &ns, "ext").await.unwrap();
    assert_eq!(same.resource_version(), after.resource_version());
    operator.stop().await;
}

/// A managed-Redis Secret from before `redis.conf` (immutable, `password` only) is replaced by
/// one with both keys and the same password: no pod sees a new password.
#[tokio::test]
async fn an_old_immutable_password_secret_gains_redis_conf_with_the_same_password() {
    setup!(cp, client, ns, "op-oldsecret");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let old = secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "old-redis-auth"},
                "immutable": true, "stringData": {"password": "kept-password"}}))
            .unwrap(),
        )
        .await
        .unwrap();
    let operator = Operator::start(&client, &ns, Duration::from_secs(300));
    let rc = create(&client, &ns, "old", json!({})).await;
    let new = eventually(&cp, "the Secret with redis.conf", || async {
        Ok(get_opt::<Secret>(&client, &ns, "old-redis-auth")
            .await
            .filter(|s| {
                s.data
                    .as_ref()
                    .is_some_and(|d| d.contains_key("redis.conf"))
            }))
    })
    .await;
    let data = new.data.as_ref().unwrap();
    assert_eq!(data["password"].0, b"kept-password");
    assert_eq!(data["redis.conf"].0, b"requirepass \"kept-password\"\n");
    assert_eq!(new.immutable, Some(true));
    assert_ne!(
        new.uid(),
        old.uid(),
        "replaced, not updated (it is immutable)"
    );
    assert_owned_by(&new.metadata, &rc);
    let d = eventually(&cp, "the Deployment", || async {
        Ok(get_opt::<Deployment>(&client, &ns, "old").await)
    })
    .await;
    assert_eq!(
        pod_auth_hash(&d),
        Some(realtime_operator::build::redis::auth_hash("kept-password"))
    );
    assert_eq!(operator.count("error"), 0);
    operator.stop().await;
}

/// The selector a previous version gave both workloads (without `realtime.dev/cluster`).
fn previous_selector(name: &str, cluster: &str) -> Value {
    json!({"matchLabels": {"app.kubernetes.io/name": name, "app.kubernetes.io/instance": cluster}})
}

/// Children made by the previous version (selectors without `realtime.dev/cluster`, a Redis
/// with a `data` claim template) are replaced by orphaning deletes: their dependents
/// (ReplicaSet, ControllerRevision) survive, free to be adopted, and the stale claim is
/// deleted. This tier has no workload controllers, so adoption itself (no pod restarted) is
/// shown on the real node (`real_node::previous_version_children_are_adopted_without_restarts`).
#[tokio::test]
async fn previous_version_children_are_replaced_keeping_their_dependents() {
    use k8s_openapi::api::apps::v1::{ControllerRevision, ReplicaSet};
    use k8s_openapi::api::core::v1::PersistentVolumeClaim;
    setup!(cp, client, ns, "op-migrate");
    // Paused: the operator writes nothing while the "previous version's" objects are made.
    let rc = create(&client, &ns, "chat", json!({"paused": true})).await;
    let model = realtime_operator::validate::validate(
        &rc,
        &Defaults {
            server_image: SERVER_IMAGE.into(),
            redis_image: "redis:7.4-alpine".into(),
            operator_namespace: None,
        },
    )
    .unwrap();
    let desired = realtime_operator::build::desired(&model, Some("old-password"), None);
    let mut old_d = serde_json::to_value(&desired.deployment).unwrap();
    old_d["spec"]["selector"] = previous_selector("realtime-server", "chat");
    let mut old_s = serde_json::to_value(&desired.redis.as_ref().unwrap().statefulset).unwrap();
    old_s["spec"]["selector"] = previous_selector("redis", "chat");
    old_s["spec"]["volumeClaimTemplates"] = json!([{"metadata": {"name": "data",
        "labels": realtime_operator::build::labels::child("chat", "redis")},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]);
    let pp = PostParams::default();
    let old_d: Deployment = Api::namespaced(client.clone(), &ns)
        .create(&pp, &serde_json::from_value(old_d).unwrap())
        .await
        .unwrap();
    let old_s: StatefulSet = Api::namespaced(client.clone(), &ns)
        .create(&pp, &serde_json::from_value(old_s).unwrap())
        .await
        .unwrap();
    // What the workload controllers made for them.
    let dep_owner = |kind: &str, name: &str, uid: Option<String>| {
        json!([{"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": uid,
            "controller": true, "blockOwnerDeletion": true}])
    };
    let mut rs_labels = realtime_operator::build::labels::child("chat", "server");
    rs_labels.insert("pod-template-hash".into(), "abc123".into());
    let mut rs_template =
        serde_json::to_value(&desired.deployment.spec.as_ref().unwrap().template).unwrap();
    rs_template["metadata"]["labels"] = json!(rs_labels);
    let rs: ReplicaSet = Api::namespaced(client.clone(), &ns)
        .create(
            &pp,
            &serde_json::from_value(json!({
                "metadata": {"name": "chat-abc123", "labels": rs_labels,
                    "ownerReferences": dep_owner("Deployment", "chat", old_d.uid())},
                "spec": {"replicas": 0, "selector": {"matchLabels": rs_labels},
                    "template": rs_template}}))
            .unwrap(),
        )
        .await
        .unwrap();
    let rev: ControllerRevision = Api::namespaced(client.clone(), &ns)
        .create(
            &pp,
            &serde_json::from_value(json!({
                "metadata": {"name": "chat-redis-5d8f", "labels":
                    realtime_operator::build::labels::child("chat", "redis"),
                    "ownerReferences": dep_owner("StatefulSet", "chat-redis", old_s.uid())},
                "revision": 1, "data": {}}))
            .unwrap(),
        )
        .await
        .unwrap();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    claims
        .create(
            &pp,
            &serde_json::from_value(json!({
                "metadata": {"name": "data-chat-redis-0",
                    "labels": realtime_operator::build::labels::child("chat", "redis")},
                "spec": {"accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": "1Gi"}}}}))
            .unwrap(),
        )
        .await
        .unwrap();
    // A user's own claim in the same namespace is not touched.
    claims
        .create(
            &pp,
            &serde_json::from_value(json!({"metadata": {"name": "data-chat-redis-0-backup"},
                "spec": {"accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": "1Gi"}}}}))
            .unwrap(),
        )
        .await
        .unwrap();

    let operator = Operator::start(&client, &ns, Duration::from_secs(300));
    merge_spec(&client, &ns, "chat", json!({"paused": false})).await;
    let (d, s) = eventually(&cp, "both workloads replaced", || async {
        let d = get_opt::<Deployment>(&client, &ns, "chat").await;
        let s = get_opt::<StatefulSet>(&client, &ns, "chat-redis").await;
        Ok(match (d, s) {
            (Some(d), Some(s)) if d.uid() != old_d.uid() && s.uid() != old_s.uid() => Some((d, s)),
            _ => None,
        })
    })
    .await;
    let selector = |v: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector| {
        v.match_labels.clone().unwrap()
    };
    assert_eq!(
        selector(&d.spec.as_ref().unwrap().selector),
        realtime_operator::build::labels::server_selector("chat")
    );
    assert_eq!(
        selector(&s.spec.as_ref().unwrap().selector),
        realtime_operator::build::labels::redis_selector("chat")
    );
    assert!(s.spec.as_ref().unwrap().volume_claim_templates.is_none());
    assert_owned_by(&d.metadata, &rc);
    // The dependents were orphaned, not deleted: the new objects can adopt them.
    eventually(&cp, "the dependents orphaned and kept", || async {
        let rs = get_opt::<ReplicaSet>(&client, &ns, "chat-abc123").await;
        let rev = get_opt::<ControllerRevision>(&client, &ns, "chat-redis-5d8f").await;
        Ok(match (rs, rev) {
            (Some(a), Some(b))
                if a.owner_references().is_empty() && b.owner_references().is_empty() =>
            {
                Some((a, b))
            }
            _ => None,
        })
    })
    .await;
    assert_eq!(
        get_opt::<ReplicaSet>(&client, &ns, "chat-abc123")
            .await
            .unwrap()
            .uid(),
        rs.uid()
    );
    assert_eq!(
        get_opt::<ControllerRevision>(&client, &ns, "chat-redis-5d8f")
            .await
            .unwrap()
            .uid(),
        rev.uid()
    );
    eventually(&cp, "the stale claim deleted", || async {
        Ok(
            get_opt::<PersistentVolumeClaim>(&client, &ns, "data-chat-redis-0")
                .await
                .is_none_or(|c| c.metadata.deletion_timestamp.is_some())
                .then_some(()),
        )
    })
    .await;
    assert!(
        get_opt::<PersistentVolumeClaim>(&client, &ns, "data-chat-redis-0-backup")
            .await
            .is_some_and(|c| c.metadata.deletion_timestamp.is_none()),
        "a claim the operator did not make is kept"
    );
    let reasons: Vec<String> = Api::<Event>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("Replaced"))
        .filter_map(|e| e.note)
        .collect();
    assert!(
        reasons.iter().any(|n| n.contains("Deployment/chat"))
            && reasons.iter().any(|n| n.contains("StatefulSet/chat-redis")),
        "one Replaced Event per workload: {reasons:?}"
    );
    assert_eq!(operator.count("error"), 0);
    // Settled: nothing is replaced again.
    let uids = (d.uid(), s.uid());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        (
            get_opt::<Deployment>(&client, &ns, "chat")
                .await
                .unwrap()
                .uid(),
            get_opt::<StatefulSet>(&client, &ns, "chat-redis")
                .await
                .unwrap()
                .uid()
        ),
        uids
    );
    operator.stop().await;
}

/// An external Sentinel setup (tier 1's real `redis-server` primary and replicas and three
/// `redis-sentinel` on loopback, the Sentinels with a password of their own): the operator asks
/// the Sentinels for the primary and reports it as `status.redis.primary` (host:port); when the
/// primary is killed and the Sentinels promote a replica, the status follows and a
/// `RedisFailover` Event names the new primary. The data nodes' password never goes to them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_sentinel_primary_and_its_failover_are_reported() {
    use realtime_e2e::redis_ha::{SentinelConfig, SentinelGroup};
    let Some((redis_bin, sentinel_bin)) = realtime_e2e::redis_ha::require_parts() else {
        return;
    };
    setup!(cp, client, ns, "op-sentinel");
    let group = SentinelGroup::start(
        SentinelConfig {
            password: Some("data-pw-0123456789".into()),
            sentinel_password: Some("sentinel-pw-0123456789".into()),
            ..SentinelConfig::default()
        },
        redis_bin,
        sentinel_bin,
    )
    .await
    .expect("starting the Sentinel group");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    for (name, key, value) in [
        ("creds", "password", "data-pw-0123456789"),
        ("sentinel-creds", "pw", "sentinel-pw-0123456789"),
    ] {
        let s: Secret =
            serde_json::from_value(json!({"metadata": {"name": name}, "stringData": {key: value}}))
                .unwrap();
        secrets.create(&PostParams::default(), &s).await.unwrap();
    }
    let operator = Operator::start(&client, &ns, Duration::from_secs(300));
    let endpoints: Vec<String> = group
        .sentinel_ports()
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    create(
        &client,
        &ns,
        "ext",
        json!({"redis": {"external": {
            "passwordSecretRef": {"name": "creds", "key": "password"},
            "sentinel": {"masterName": group.config().master_name, "endpoints": endpoints,
                "passwordSecretRef": {"name": "sentinel-creds", "key": "pw"}}}}}),
    )
    .await;
    let primary_in_status = |want: String| {
        let (client, ns) = (client.clone(), ns.clone());
        move || {
            let (client, ns, want) = (client.clone(), ns.clone(), want.clone());
            async move {
                let rc = rc_api(&client, &ns).get("ext").await?;
                let p = rc.status.and_then(|s| s.redis).and_then(|r| r.primary);
                Ok((p.as_deref() == Some(want.as_str())).then_some(()))
            }
        }
    };
    let first = group.primary().await.unwrap();
    eventually(
        &cp,
        "status.redis.primary naming the Sentinels' primary",
        primary_in_status(format!("127.0.0.1:{first}")),
    )
    .await;
    group.signal_server(first, libc::SIGKILL).unwrap();
    group
        .wait_new_primary(first, Duration::from_secs(30))
        .await
        .unwrap();
    // The operator looks at the Sentinels at least every HA_REQUEUE (30 s). The Sentinels may
    // fail over more than once (a second election), so the status must name the primary they
    // all name now, which is not the killed one.
    let now = cp
        .poll_until(
            "the status to name the Sentinels' new primary",
            realtime_operator::controller::HA_REQUEUE * 2 + WAIT,
            || {
                let (client, ns, group) = (client.clone(), ns.clone(), &group);
                async move {
                    let rc = rc_api(&client, &ns).get("ext").await?;
                    let shown = rc.status.and_then(|s| s.redis).and_then(|r| r.primary);
                    let Ok(current) = group.primary().await else {
                        return Ok(None);
                    };
                    let want = format!("127.0.0.1:{current}");
                    Ok(
                        (current != first && shown.as_deref() == Some(want.as_str()))
                            .then_some(want),
                    )
                }
            },
        )
        .await
        .unwrap();
    eventually(&cp, "a RedisFailover Event naming it", || {
        let (client, ns, now) = (client.clone(), ns.clone(), now.clone());
        async move {
            let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client, &ns);
            let list = api.list(&ListParams::default()).await?;
            Ok(list
                .items
                .into_iter()
                .filter(|e| e.reason.as_deref() == Some("RedisFailover"))
                .filter_map(|e| e.note)
                .find(|n| n.contains(&now)))
        }
    })
    .await;
    operator.stop().await;
}
