//! Path B of the end-to-end suite: the scenarios of `realtime_e2e::scenarios` on local parts, in
//! CI through `make test`.
//!
//! Real: kube-apiserver + etcd + kube-controller-manager (one per test binary), the project's
//! CRD, `realtime-operator` (a process per test, watching the test's namespace), kubectl,
//! `realtime-server`, `redis-server`, nginx and the official socket.io-client. Each test applies
//! a RealtimeCluster and runs the processes the operator's Deployment, StatefulSet, Secret and
//! Ingress describe. Simulated, because no kubelet exists here (each step says so on stderr):
//! starting/stopping processes to match the Deployment (scale, surge-first rolling update), the
//! workloads' status, and nginx standing in for ingress-nginx.

use realtime_e2e::require::require;
use realtime_e2e::scenarios::local::LocalTarget;
use realtime_e2e::scenarios::{self, Scenario};
use realtime_e2e::sio::{self, Driver};

/// Two server pods, a managed Redis and an Ingress with cookie affinity: the same file the kind
/// path applies.
const COOKIE: &str = include_str!("../kind/realtimecluster.yaml");

/// The same with the client-address affinity.
const IP_HASH: &str = r#"
apiVersion: realtime.dev/v1alpha1
kind: RealtimeCluster
metadata:
  name: chat-iphash
spec:
  replicas: 3
  redis:
    managed: {}
  ingress:
    enabled: true
    host: chat-iphash.e2e.test
    affinity: ip-hash
"#;

/// Runs `list` in order against a fresh local RealtimeCluster from `manifest`.
async fn run(manifest: &str, list: &[Scenario]) {
    let Some(paths) = require(
        "node and socket.io-client",
        sio::DRIVER_HOW_TO,
        sio::find_driver(),
    ) else {
        return;
    };
    let Some(mut target) = LocalTarget::for_test(manifest).await else {
        return;
    };
    // Declared after the target: dropped first, so clients close before the servers stop.
    let driver = Driver::start(&paths)
        .await
        .expect("starting the socket.io-client driver");
    for s in list {
        if let Err(e) = scenarios::run(*s, &mut target, &driver).await {
            panic!("{e:#}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_names_the_node() {
    run(COOKIE, &[Scenario::Hello]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_broadcast_crosses_nodes() {
    run(COOKIE, &[Scenario::RoomBroadcast]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_message_reaches_another_node() {
    run(COOKIE, &[Scenario::PrivateMessage]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_lists_members_on_all_nodes() {
    run(COOKIE, &[Scenario::Presence]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_up_and_down() {
    run(COOKIE, &[Scenario::Scale]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_reconnects_without_duplicates() {
    run(COOKIE, &[Scenario::RollingRestart]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_deleted_then_delivery_resumes() {
    run(COOKIE, &[Scenario::RedisDeleted]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_realtime_cluster_is_rejected() {
    run(COOKIE, &[Scenario::InvalidRejected]).await;
}

/// The Ingress's other affinity mode: nginx hashes the client address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_hash_affinity_from_the_ingress() {
    run(
        IP_HASH,
        &[Scenario::Hello, Scenario::RoomBroadcast, Scenario::Presence],
    )
    .await;
}
