//! The managed Redis: a single-replica StatefulSet, its headless Service and the password Secret;
//! with `highAvailability` a primary and replicas, Redis Sentinels, and their budgets.
//!
//! Redis here only carries the socket.io adapter's pub/sub traffic, so one replica is enough
//! for many: while it restarts, servers serve their own clients and reconnect; nothing is
//! stored for later. Those who cannot wait for a restart ask for `highAvailability`: the
//! Sentinels promote a replica, and the servers (fred with a `redis-sentinel://` URL) follow.
//! The pods' start scripts find the current primary through the Sentinels (then the Redis pods'
//! `ROLE`), every pod is known by its stable DNS name, and the primary's preStop hook asks for a
//! failover before it stops (see the operator README).
//!
//! **No password on a command line.** Redis reads its password from a config file, not from
//! `--requirepass` in its arguments: the kubelet expands `$(VAR)` in args, so the password would
//! sit in the container's OCI spec (`crictl inspect`) and in `/proc/<pid>/cmdline`, readable by
//! every process on the node that may read `/proc`. The generated Secret therefore holds two
//! keys: `password` (what the servers read, through `secretKeyRef`) and `redis.conf`
//! (`requirepass "<password>"`), both mounted read-only in the Redis container: `redis.conf` is
//! the file Redis is started with, `password` is what the readiness probe's shell hands to
//! `redis-cli` as `REDISCLI_AUTH`, so the Redis container's environment holds no password
//! either. Both keys are written together by the operator, so they can never disagree, and no
//! init container is needed. The alternatives were worse: an init container writing the file needs a
//! shell and a writable volume holding the password; a second Secret would keep a second copy
//! that can drift from the first. A Secret made before this layout lacks `redis.conf`; being
//! immutable, it is replaced by one with the same password and both keys (see
//! `apply::apply_secret`).

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Affinity, Container, ExecAction, KeyToPath, Lifecycle, LifecycleHandler, PodAffinityTerm,
    PodAntiAffinity, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, Secret,
    SecretVolumeSource, Service, TCPSocketAction, Volume, WeightedPodAffinityTerm,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sha2::{Digest, Sha256};

use super::parts::{
    self, container_port, empty_dir, env_field, match_labels, mount, probe, service_port,
};
use super::{
    REDIS_AUTH_HASH_ANNOTATION, labels, meta, restricted_container_security,
    restricted_pod_security,
};
use crate::validate::{
    HaModel, Model, REDIS_PASSWORD_KEY, REDIS_PORT, RedisModel, SENTINEL_MASTER_NAME, SENTINEL_PORT,
};

/// uid/gid Redis runs as: a high one (>= 10000), not the images' `redis` user (999), so that it
/// can never match a user of the node. Redis needs no passwd entry; it writes only to /data, an
/// emptyDir made group-writable by `fsGroup`, and reads its config through that group.
pub const REDIS_UID: i64 = 10999;

/// Key of the Redis config file in the generated Secret.
pub const REDIS_CONF_KEY: &str = "redis.conf";
/// Where the Secret's `redis.conf` and `password` are mounted in the Redis container (read-only).
pub const REDIS_CONF_DIR: &str = "/etc/realtime-redis";

/// Redis' quoting of a config-file string: double-quoted, with quotes, backslashes and control
/// or non-ASCII bytes escaped as `\xHH`, so a user-chosen password can neither break the file
/// nor add directives to it.
fn quoted(password: &str) -> String {
    let mut q = String::with_capacity(password.len() + 2);
    q.push('"');
    for b in password.bytes() {
        match b {
            b'"' | b'\\' => {
                q.push('\\');
                q.push(b as char);
            }
            0x21..=0x7e => q.push(b as char),
            _ => q.push_str(&format!("\\x{b:02x}")),
        }
    }
    q.push('"');
    q
}

/// The config file Redis starts with: only `requirepass`, the password quoted ([`quoted`]).
pub fn redis_conf(password: &str) -> String {
    format!("requirepass {}\n", quoted(password))
}

/// The config file of a highly available Redis pod: `requirepass`, and `masterauth` (the same
/// password) for the replicas' connection to the primary.
pub fn ha_redis_conf(password: &str) -> String {
    let q = quoted(password);
    format!("requirepass {q}\nmasterauth {q}\n")
}

/// The password lines of a Sentinel's config (appended by its start script to the lines it
/// writes itself): the Sentinel's own `requirepass`, `sentinel-pass` to reach the other
/// Sentinels, `auth-pass` to reach the Redis pods. One password for all.
pub fn sentinel_auth_conf(password: &str) -> String {
    let q = quoted(password);
    format!(
        "requirepass {q}\nsentinel sentinel-pass {q}\nsentinel auth-pass {SENTINEL_MASTER_NAME} {q}\n"
    )
}

/// Key of the Sentinels' password lines in the generated Secret (highly available Redis only).
pub const SENTINEL_CONF_KEY: &str = "sentinel.conf";

/// Digest of the password for [`REDIS_AUTH_HASH_ANNOTATION`]: changes with the password,
/// reveals nothing usable about it.
pub fn auth_hash(password: &str) -> String {
    let digest = Sha256::digest(password.as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// The password Secret: the password, and the Redis config file derived from it (with
/// `highAvailability` also `masterauth`, and the Sentinels' password lines). The password is
/// generated by the caller once; reconciles pass the existing value back, so applying this is a
/// no-op and the password never rotates.
pub fn secret(model: &Model, password: &str) -> Secret {
    let mut data = BTreeMap::from([(
        REDIS_PASSWORD_KEY.to_string(),
        ByteString(password.as_bytes().to_vec()),
    )]);
    let conf = if model.redis_ha().is_some() {
        data.insert(
            SENTINEL_CONF_KEY.to_string(),
            ByteString(sentinel_auth_conf(password).into_bytes()),
        );
        ha_redis_conf(password)
    } else {
        redis_conf(password)
    };
    data.insert(REDIS_CONF_KEY.to_string(), ByteString(conf.into_bytes()));
    Secret {
        metadata: meta(model, &model.redis_secret_name(), "redis"),
        type_: Some("Opaque".into()),
        // Data cannot change afterwards; a deliberate rotation is delete + reconcile. A change
        // of layout (highAvailability on or off) replaces it with the same password.
        immutable: Some(true),
        data: Some(data),
        ..Default::default()
    }
}

/// The headless Service giving the Redis pods stable DNS names. With `highAvailability` the
/// names exist before the pods are ready (a starting replica and the Sentinels need the
/// primary's name).
pub fn service(model: &Model) -> Service {
    let mut svc = parts::service(
        model,
        &model.redis_name(),
        "redis",
        labels::redis_selector(&model.name),
        service_port("redis", REDIS_PORT),
    );
    if let Some(spec) = svc.spec.as_mut() {
        spec.cluster_ip = Some("None".into());
        if model.redis_ha().is_some() {
            spec.publish_not_ready_addresses = Some(true);
        }
    }
    svc
}

/// The headless Service of the Sentinels (stable names for the servers' REDIS_URL and for the
/// Sentinels' own announcements).
pub fn sentinel_service(model: &Model) -> Service {
    let mut svc = parts::service(
        model,
        &model.sentinel_name(),
        "sentinel",
        labels::sentinel_selector(&model.name),
        service_port("sentinel", SENTINEL_PORT),
    );
    if let Some(spec) = svc.spec.as_mut() {
        spec.cluster_ip = Some("None".into());
        spec.publish_not_ready_addresses = Some(true);
    }
    svc
}

/// A PodDisruptionBudget for `component` ("redis" or "sentinel") of a highly available Redis:
/// one pod at a time. An unready pod may always be evicted (a crashing replica must not block a
/// node drain).
pub fn pdb(model: &Model, name: &str, component: &str) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta(model, name, component),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(match_labels(labels::child_selector(&model.name, component))),
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".into()),
            ..Default::default()
        }),
        status: None,
    }
}

/// The shell that runs `redis-cli` with the password from the mounted file in its own
/// environment (not in argv, not in the container's environment), bounded to 2 s.
fn cli(host: &str, port: i32, command: &str) -> String {
    format!(
        "REDISCLI_AUTH=\"$(cat {REDIS_CONF_DIR}/{REDIS_PASSWORD_KEY})\" timeout 2 redis-cli -h \"{host}\" -p {port} --raw {command} 2>/dev/null"
    )
}

/// Shell lines that set `$primary` to the current primary's host name: what the first
/// answering Sentinel says, else the first other Redis pod that says `ROLE master`, else pod 0
/// (a first start). `$me` is the asking pod's own name, skipped when asking.
fn discover_primary(model: &Model, ha: &HaModel) -> String {
    let sentinels: Vec<String> = (0..ha.sentinel_pods)
        .map(|i| model.sentinel_pod_host(i))
        .collect();
    let redis: Vec<String> = (0..ha.redis_pods)
        .map(|i| model.redis_pod_host(i))
        .collect();
    let ask_sentinel = cli(
        "$h",
        SENTINEL_PORT,
        &format!("SENTINEL GET-MASTER-ADDR-BY-NAME {SENTINEL_MASTER_NAME}"),
    );
    let ask_role = cli("$h", REDIS_PORT, "ROLE");
    format!(
        r#"primary=""
for h in {sentinels}; do
  [ "$h" = "$me" ] && continue
  a=$({ask_sentinel} | head -n 1)
  case "$a" in ""|*" "*) ;; *) primary=$a; break ;; esac
done
if [ -z "$primary" ]; then
  for h in {redis}; do
    [ "$h" = "$me" ] && continue
    if [ "$({ask_role} | head -n 1)" = master ]; then primary=$h; break; fi
  done
fi
[ -n "$primary" ] || primary={pod0}
"#,
        sentinels = sentinels.join(" "),
        redis = redis.join(" "),
        pod0 = model.redis_pod_host(0),
    )
}

/// The start script of a highly available Redis pod: find the primary; be it (this pod is the
/// primary the Sentinels know, or pod 0 on a first start) or replicate from it. Every pod
/// announces its stable DNS name, which the Sentinels track across pod restarts.
pub fn ha_redis_script(model: &Model, ha: &HaModel) -> String {
    format!(
        r#"set -u
me="$POD_NAME.{svc}.{ns}.svc"
{discover}echo "primary: $primary; this pod: $me"
set -- {REDIS_CONF_DIR}/{REDIS_CONF_KEY} --dir /data --appendonly no --save '' --replica-announce-ip "$me"
[ "$primary" = "$me" ] || set -- "$@" --replicaof "$primary" {REDIS_PORT}
exec redis-server "$@"
"#,
        svc = model.redis_name(),
        ns = model.namespace,
        discover = discover_primary(model, ha),
    )
}

/// The preStop hook of a highly available Redis pod: a primary that is being stopped (drain,
/// rolling update, deleted pod) asks the Sentinels for a failover until one takes it (at most
/// 10 s: a Sentinel refuses while it knows no replica fit to take over, e.g. just after a
/// start) and waits (at most 10 s) until they name another primary, so that clients move at
/// once instead of after `down-after-milliseconds`. A replica stops at once. Bounded well
/// within the pod's [`HA_REDIS_GRACE_SECONDS`].
pub fn ha_redis_pre_stop(model: &Model, ha: &HaModel) -> String {
    let sentinels: Vec<String> = (0..ha.sentinel_pods)
        .map(|i| model.sentinel_pod_host(i))
        .collect();
    let role = cli("127.0.0.1", REDIS_PORT, "ROLE");
    let failover = cli(
        "$h",
        SENTINEL_PORT,
        &format!("SENTINEL FAILOVER {SENTINEL_MASTER_NAME}"),
    );
    let ask = cli(
        "$h",
        SENTINEL_PORT,
        &format!("SENTINEL GET-MASTER-ADDR-BY-NAME {SENTINEL_MASTER_NAME}"),
    );
    format!(
        r#"me="$POD_NAME.{svc}.{ns}.svc"
[ "$({role} | head -n 1)" = master ] || exit 0
asked=""
n=0
while [ -z "$asked" ] && [ $n -lt 10 ]; do
  for h in {sentinels}; do
    if {failover} | grep -q OK; then asked=$h; break; fi
  done
  [ -n "$asked" ] || {{ sleep 1; n=$((n+1)); }}
done
[ -n "$asked" ] || {{ echo "no Sentinel took the failover"; exit 0; }}
n=0
while [ $n -lt 20 ]; do
  for h in {sentinels}; do
    a=$({ask} | head -n 1)
    case "$a" in ""|*" "*|"$me") ;; *) echo "failed over to $a"; exit 0 ;; esac
  done
  sleep 0.5
  n=$((n+1))
done
"#,
        svc = model.redis_name(),
        ns = model.namespace,
        sentinels = sentinels.join(" "),
    )
}

/// The start script of a Sentinel: find the primary (other Sentinels first), wait until it
/// answers (at most 30 s: on a first start its pod may not exist yet), write a config
/// (Sentinel rewrites its config, so it lives in the pod's emptyDir) and run.
pub fn sentinel_script(model: &Model, ha: &HaModel) -> String {
    let ping = cli("$primary", REDIS_PORT, "PING");
    format!(
        r#"set -u
me="$POD_NAME.{svc}.{ns}.svc"
{discover}echo "primary: $primary; this Sentinel: $me"
n=0
until [ "$({ping})" = PONG ] || [ $n -ge 30 ]; do sleep 1; n=$((n+1)); done
umask 077
{{
  echo "port {SENTINEL_PORT}"
  echo "dir /data"
  echo "sentinel myid $(printf %s "$me" | sha1sum | cut -c1-40)"
  echo "sentinel resolve-hostnames yes"
  echo "sentinel announce-hostnames yes"
  echo "sentinel announce-ip $me"
  echo "sentinel monitor {m} $primary {REDIS_PORT} {quorum}"
  echo "sentinel down-after-milliseconds {m} {down}"
  echo "sentinel failover-timeout {m} {failover}"
  echo "sentinel parallel-syncs {m} 1"
  cat {REDIS_CONF_DIR}/{SENTINEL_CONF_KEY}
}} > /data/sentinel.conf
exec redis-server /data/sentinel.conf --sentinel
"#,
        svc = model.sentinel_name(),
        ns = model.namespace,
        discover = discover_primary(model, ha),
        m = SENTINEL_MASTER_NAME,
        quorum = ha.quorum(),
        down = ha.down_after_ms,
        failover = SENTINEL_FAILOVER_TIMEOUT_MS,
    )
}

/// The Sentinels' `failover-timeout`. Sentinels that split their votes try again after twice
/// this; a failover of pub/sub-only data (nothing to copy) never needs long.
pub const SENTINEL_FAILOVER_TIMEOUT_MS: i32 = 5_000;

/// terminationGracePeriodSeconds of a highly available Redis pod: its preStop hook (at most
/// ~30 s with every redis-cli timing out) and the shutdown.
pub const HA_REDIS_GRACE_SECONDS: i64 = 45;

/// A readiness probe: `redis-cli ping` on `port` answers PONG (password from the mounted file).
fn ping_probe(port: i32) -> Probe {
    probe(
        Probe {
            exec: Some(ExecAction {
                command: Some(vec![
                    "sh".into(),
                    "-c".into(),
                    // redis-cli reads REDISCLI_AUTH: the password is set in the probe's
                    // shell from the mounted file, so it is in no argv and not in the
                    // container's environment (nor in the OCI spec that would record it).
                    // `timeout 1` (coreutils, or busybox in Alpine images) ends the check
                    // itself on a Redis that accepts but never answers: the kubelet's own
                    // probe timeout leaves a hung exec behind on some runtimes.
                    if port == REDIS_PORT {
                        format!(
                            "export REDISCLI_AUTH=\"$(cat {REDIS_CONF_DIR}/{REDIS_PASSWORD_KEY})\"; \
                         test \"$(timeout 1 redis-cli ping)\" = PONG"
                        )
                    } else {
                        format!(
                            "export REDISCLI_AUTH=\"$(cat {REDIS_CONF_DIR}/{REDIS_PASSWORD_KEY})\"; \
                         test \"$(timeout 1 redis-cli -p {port} ping)\" = PONG"
                        )
                    },
                ]),
            }),
            ..Default::default()
        },
        5,
        2,
        2,
    )
}

/// A startup probe for the highly available pods, whose start scripts first look for the
/// primary (a few seconds, up to half a minute for a Sentinel on a first start): the liveness
/// probe waits until the named port accepts connections, at most 3 minutes.
fn startup_probe(port_name: &str) -> Probe {
    probe(
        Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::String(port_name.into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        2,
        1,
        90,
    )
}

/// A liveness probe: the named port accepts connections.
fn tcp_probe(port_name: &str) -> Probe {
    probe(
        Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::String(port_name.into()),
                ..Default::default()
            }),
            initial_delay_seconds: Some(10),
            ..Default::default()
        },
        10,
        1,
        3,
    )
}

/// The Secret volume with `keys`, readable by the redis group (fsGroup) and no one else.
fn config_volume(model: &Model, keys: &[&str]) -> Volume {
    Volume {
        name: "config".into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(model.redis_secret_name()),
            items: Some(
                keys.iter()
                    .map(|k| KeyToPath {
                        key: (*k).into(),
                        path: (*k).into(),
                        ..Default::default()
                    })
                    .collect(),
            ),
            default_mode: Some(0o440),
            optional: Some(false),
        }),
        ..Default::default()
    }
}

/// Spread pods of `component` over nodes when possible (preferred, not required: a one-node
/// cluster still runs them).
fn spread(model: &Model, component: &str) -> Affinity {
    Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        label_selector: Some(match_labels(labels::child_selector(
                            &model.name,
                            component,
                        ))),
                        topology_key: "kubernetes.io/hostname".into(),
                        ..Default::default()
                    },
                },
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The pod template shared by the Redis and Sentinel StatefulSets.
fn pod_template(
    model: &Model,
    component: &str,
    container: Container,
    volumes: Vec<Volume>,
    auth_hash: &str,
    affinity: Option<Affinity>,
    grace_seconds: i64,
) -> PodTemplateSpec {
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels::child(&model.name, component)),
            annotations: Some(BTreeMap::from([(
                REDIS_AUTH_HASH_ANNOTATION.to_string(),
                auth_hash.to_string(),
            )])),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            containers: vec![container],
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            termination_grace_period_seconds: Some(grace_seconds),
            security_context: Some(restricted_pod_security(REDIS_UID)),
            image_pull_secrets: (!model.server.image_pull_secrets.is_empty())
                .then(|| model.server.image_pull_secrets.clone()),
            volumes: Some(volumes),
            affinity,
            ..Default::default()
        }),
    }
}

/// The Redis StatefulSet: one pod, or with `highAvailability` a primary and its replicas.
/// Returns `None` for an external Redis.
pub fn statefulset(model: &Model, auth_hash: &str) -> Option<StatefulSet> {
    let RedisModel::Managed {
        image,
        resources,
        ha,
    } = &model.redis
    else {
        return None;
    };
    let mut container = Container {
        name: "redis".into(),
        image: Some(image.clone()),
        ports: Some(vec![container_port("redis", REDIS_PORT)]),
        readiness_probe: Some(ping_probe(REDIS_PORT)),
        liveness_probe: Some(tcp_probe("redis")),
        resources: Some(resources.clone()),
        security_context: Some(restricted_container_security()),
        volume_mounts: Some(vec![
            mount("data", "/data", false),
            mount("config", REDIS_CONF_DIR, true),
        ]),
        ..Default::default()
    };
    let (replicas, affinity) = match ha {
        None => {
            container.args = Some(vec![
                "redis-server".to_string(),
                // The config file first (holding only `requirepass`), then the other settings.
                format!("{REDIS_CONF_DIR}/{REDIS_CONF_KEY}"),
                "--dir".into(),
                "/data".into(),
                "--appendonly".into(),
                "no".into(),
                "--save".into(),
                String::new(),
            ]);
            (1, None)
        }
        Some(ha) => {
            container.command = Some(vec!["sh".into(), "-c".into(), ha_redis_script(model, ha)]);
            container.env = Some(vec![env_field("POD_NAME", "metadata.name")]);
            container.startup_probe = Some(startup_probe("redis"));
            container.lifecycle = Some(Lifecycle {
                pre_stop: Some(LifecycleHandler {
                    exec: Some(ExecAction {
                        command: Some(vec!["sh".into(), "-c".into(), ha_redis_pre_stop(model, ha)]),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            });
            (ha.redis_pods, Some(spread(model, "redis")))
        }
    };
    let volumes = vec![
        config_volume(model, &[REDIS_CONF_KEY, REDIS_PASSWORD_KEY]),
        // Nothing worth keeping: pub/sub traffic is live only.
        empty_dir("data", None),
    ];
    Some(StatefulSet {
        metadata: meta(model, &model.redis_name(), "redis"),
        spec: Some(StatefulSetSpec {
            replicas: Some(replicas),
            service_name: Some(model.redis_name()),
            selector: match_labels(labels::redis_selector(&model.name)),
            template: pod_template(
                model,
                "redis",
                container,
                volumes,
                auth_hash,
                affinity,
                if ha.is_some() {
                    HA_REDIS_GRACE_SECONDS
                } else {
                    30
                },
            ),
            ..Default::default()
        }),
        status: None,
    })
}

/// CPU and memory of a Sentinel pod (it only watches the Redis pods).
fn sentinel_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity("20m".into())),
            ("memory".to_string(), Quantity("32Mi".into())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_string(),
            Quantity("128Mi".into()),
        )])),
        ..Default::default()
    }
}

/// The Sentinel StatefulSet of a highly available Redis (`None` otherwise).
pub fn sentinel_statefulset(model: &Model, auth_hash: &str) -> Option<StatefulSet> {
    let (RedisModel::Managed { image, .. }, Some(ha)) = (&model.redis, model.redis_ha()) else {
        return None;
    };
    let container = Container {
        name: "sentinel".into(),
        image: Some(image.clone()),
        command: Some(vec!["sh".into(), "-c".into(), sentinel_script(model, ha)]),
        env: Some(vec![env_field("POD_NAME", "metadata.name")]),
        ports: Some(vec![container_port("sentinel", SENTINEL_PORT)]),
        readiness_probe: Some(ping_probe(SENTINEL_PORT)),
        startup_probe: Some(startup_probe("sentinel")),
        liveness_probe: Some(tcp_probe("sentinel")),
        resources: Some(sentinel_resources()),
        security_context: Some(restricted_container_security()),
        volume_mounts: Some(vec![
            mount("data", "/data", false),
            mount("config", REDIS_CONF_DIR, true),
        ]),
        ..Default::default()
    };
    let volumes = vec![
        config_volume(model, &[SENTINEL_CONF_KEY, REDIS_PASSWORD_KEY]),
        // The Sentinel's own config (it rewrites it) and nothing else.
        empty_dir("data", Some("16Mi")),
    ];
    Some(StatefulSet {
        metadata: meta(model, &model.sentinel_name(), "sentinel"),
        spec: Some(StatefulSetSpec {
            replicas: Some(ha.sentinel_pods),
            // All at once: a Sentinel needs no other to start (they find each other), and one
            // slow to start must not hold the others back.
            pod_management_policy: Some("Parallel".into()),
            service_name: Some(model.sentinel_name()),
            selector: match_labels(labels::sentinel_selector(&model.name)),
            template: pod_template(
                model,
                "sentinel",
                container,
                volumes,
                auth_hash,
                Some(spread(model, "sentinel")),
                30,
            ),
            ..Default::default()
        }),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::test_support::model;
    use serde_json::json;

    #[test]
    fn secret_holds_the_given_password_and_is_owned() {
        let m = model(json!({}));
        let s = secret(&m, "s3cret");
        assert_eq!(s.metadata.name.as_deref(), Some("chat-redis-auth"));
        let data = s.data.as_ref().unwrap();
        assert_eq!(data["password"].0, b"s3cret");
        assert_eq!(data["redis.conf"].0, b"requirepass \"s3cret\"\n");
        assert_eq!(data.len(), 2);
        assert_eq!(s.immutable, Some(true));
        assert_eq!(s.metadata.owner_references.as_ref().unwrap()[0].uid, "u-1");
        assert_eq!(s.metadata.labels.as_ref().unwrap()[labels::CLUSTER], "chat");
    }

    #[test]
    fn redis_conf_quotes_any_password_into_one_directive() {
        assert_eq!(redis_conf("0af3"), "requirepass \"0af3\"\n");
        // Quotes, backslashes, spaces, newlines and non-ASCII cannot end the string or the line.
        assert_eq!(
            redis_conf("a\"b\\c d\nrename-command x é"),
            "requirepass \"a\\\"b\\\\c\\x20d\\x0arename-command\\x20x\\x20\\xc3\\xa9\"\n"
        );
        assert_eq!(redis_conf("a\nb").lines().count(), 1);
    }

    #[test]
    fn statefulset_reads_the_password_from_a_mounted_config_file() {
        let m = model(json!({}));
        let sts = statefulset(&m, &auth_hash("pw")).unwrap();
        assert_eq!(sts.metadata.name.as_deref(), Some("chat-redis"));
        let spec = sts.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(1));
        assert_eq!(spec.service_name.as_deref(), Some("chat-redis"));
        let pod = spec.template.spec.as_ref().unwrap();
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("redis:7.4-alpine"));
        let args = c.args.as_ref().unwrap();
        assert_eq!(
            args[..2],
            ["redis-server", "/etc/realtime-redis/redis.conf"]
        );
        // Nothing on a command line refers to the password: no `--requirepass`, no `$(VAR)`
        // the kubelet would expand, no redis-cli `-a`/`--pass`.
        let probe = c.readiness_probe.as_ref().unwrap();
        let argv: Vec<&String> = args
            .iter()
            .chain(c.command.iter().flatten())
            .chain(probe.exec.as_ref().unwrap().command.iter().flatten())
            .collect();
        for a in argv {
            let words: Vec<&str> = a.split_whitespace().collect();
            assert!(
                !a.contains("requirepass")
                    && !a.contains("$(REDIS")
                    && !words.contains(&"-a")
                    && !words.contains(&"--pass"),
                "{a}"
            );
        }
        assert!(!serde_json::to_string(&sts).unwrap().contains("\"pw\""));
        // The check bounds itself (a Redis that accepts and never answers).
        let check = &probe.exec.as_ref().unwrap().command.as_ref().unwrap()[2];
        assert!(check.contains("timeout 1 redis-cli ping"), "{check}");
        // The config file: the Secret's redis.conf key only, read-only, group-readable.
        let mount = c
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == "config")
            .unwrap();
        assert_eq!(
            (mount.mount_path.as_str(), mount.read_only),
            ("/etc/realtime-redis", Some(true))
        );
        let vol = pod
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == "config")
            .unwrap();
        let sv = vol.secret.as_ref().unwrap();
        assert_eq!(sv.secret_name.as_deref(), Some("chat-redis-auth"));
        let items: Vec<(&str, &str)> = sv
            .items
            .iter()
            .flatten()
            .map(|i| (i.key.as_str(), i.path.as_str()))
            .collect();
        assert_eq!(
            items,
            [("redis.conf", "redis.conf"), ("password", "password")]
        );
        assert_eq!(sv.default_mode, Some(0o440));
        // The probe's redis-cli reads the password from the file into its own environment:
        // the container's environment holds nothing of it.
        assert!(c.env.is_none());
        let script = &probe.exec.as_ref().unwrap().command.as_ref().unwrap()[2];
        assert!(script.contains("REDISCLI_AUTH=\"$(cat /etc/realtime-redis/password)\""));
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_string()][..])
        );
        assert_eq!(
            pod.security_context.as_ref().unwrap().run_as_user,
            Some(REDIS_UID)
        );
        let data = pod
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == "data")
            .unwrap();
        assert_eq!(data.empty_dir, Some(Default::default()));
        assert!(spec.volume_claim_templates.is_none());
        let ann = spec
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap();
        assert_eq!(ann[REDIS_AUTH_HASH_ANNOTATION], auth_hash("pw"));
    }

    #[test]
    fn no_statefulset_for_external_redis() {
        let m = model(json!({"redis": {"external": {"host": "cache"}}}));
        assert!(statefulset(&m, "h").is_none());
    }

    #[test]
    fn headless_service_selects_redis() {
        let svc = service(&model(json!({})));
        let spec = svc.spec.unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.selector.unwrap(), labels::redis_selector("chat"));
        assert_eq!(spec.ports.unwrap()[0].port, 6379);
    }

    fn ha_model() -> Model {
        model(json!({"redis": {"managed": {"highAvailability": {}}}}))
    }

    fn container(sts: &StatefulSet) -> &Container {
        &sts.spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
    }

    #[test]
    fn ha_secret_adds_masterauth_and_the_sentinels_password_lines() {
        let s = secret(&ha_model(), "pw\"x");
        let data = s.data.as_ref().unwrap();
        assert_eq!(data["password"].0, b"pw\"x");
        assert_eq!(
            String::from_utf8_lossy(&data["redis.conf"].0),
            "requirepass \"pw\\\"x\"\nmasterauth \"pw\\\"x\"\n"
        );
        assert_eq!(
            String::from_utf8_lossy(&data["sentinel.conf"].0),
            "requirepass \"pw\\\"x\"\nsentinel sentinel-pass \"pw\\\"x\"\n\
             sentinel auth-pass realtime \"pw\\\"x\"\n"
        );
        // one pod: the Secret keeps its earlier layout
        assert_eq!(secret(&model(json!({})), "pw").data.unwrap().len(), 2);
    }

    #[test]
    fn ha_redis_runs_a_primary_and_replicas_found_through_the_sentinels() {
        let m = ha_model();
        let sts = statefulset(&m, "h").unwrap();
        let spec = sts.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(3));
        assert_eq!(spec.service_name.as_deref(), Some("chat-redis"));
        let c = container(&sts);
        let cmd = c.command.as_ref().unwrap();
        assert_eq!(cmd[..2], ["sh", "-c"]);
        let script = &cmd[2];
        for want in [
            "me=\"$POD_NAME.chat-redis.apps.svc\"",
            "for h in chat-sentinel-0.chat-sentinel.apps.svc chat-sentinel-1.chat-sentinel.apps.svc chat-sentinel-2.chat-sentinel.apps.svc; do",
            "SENTINEL GET-MASTER-ADDR-BY-NAME realtime",
            "for h in chat-redis-0.chat-redis.apps.svc chat-redis-1.chat-redis.apps.svc chat-redis-2.chat-redis.apps.svc; do",
            "[ -n \"$primary\" ] || primary=chat-redis-0.chat-redis.apps.svc",
            "--replica-announce-ip \"$me\"",
            "--replicaof \"$primary\" 6379",
            "exec redis-server \"$@\"",
        ] {
            assert!(script.contains(want), "{want} not in:\n{script}");
        }
        assert!(c.args.is_none());
        assert_eq!(c.env.as_ref().unwrap()[0].name, "POD_NAME");
        let pre_stop = &c
            .lifecycle
            .as_ref()
            .unwrap()
            .pre_stop
            .as_ref()
            .unwrap()
            .exec
            .as_ref()
            .unwrap()
            .command
            .as_ref()
            .unwrap()[2];
        assert!(
            pre_stop.contains("SENTINEL FAILOVER realtime"),
            "{pre_stop}"
        );
        // the hook's bounded waits fit in the grace period
        assert_eq!(
            spec.template
                .spec
                .as_ref()
                .unwrap()
                .termination_grace_period_seconds,
            Some(HA_REDIS_GRACE_SECONDS)
        );
        let pod = spec.template.spec.as_ref().unwrap();
        let anti = pod
            .affinity
            .as_ref()
            .unwrap()
            .pod_anti_affinity
            .as_ref()
            .unwrap();
        let term = &anti
            .preferred_during_scheduling_ignored_during_execution
            .as_ref()
            .unwrap()[0];
        assert_eq!(
            term.pod_affinity_term.topology_key,
            "kubernetes.io/hostname"
        );
        assert!(
            anti.required_during_scheduling_ignored_during_execution
                .is_none()
        );
        // the headless Service names pods before they are ready
        let svc = service(&m).spec.unwrap();
        assert_eq!(svc.publish_not_ready_addresses, Some(true));
        assert_eq!(
            service(&model(json!({})))
                .spec
                .unwrap()
                .publish_not_ready_addresses,
            None
        );
    }

    #[test]
    fn ha_sentinels_monitor_the_primary_with_a_majority_quorum() {
        let m = model(json!({"redis": {"managed": {"highAvailability":
            {"redisPods": 2, "sentinelPods": 5, "downAfterMilliseconds": 1500}}}}));
        let sts = sentinel_statefulset(&m, "h").unwrap();
        assert_eq!(sts.metadata.name.as_deref(), Some("chat-sentinel"));
        let spec = sts.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(5));
        assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
        assert_eq!(spec.service_name.as_deref(), Some("chat-sentinel"));
        assert_eq!(
            spec.selector.match_labels.as_ref().unwrap(),
            &labels::sentinel_selector("chat")
        );
        let c = container(&sts);
        // the liveness probe waits for the start script (a startup probe of up to 3 minutes)
        let startup = c.startup_probe.as_ref().unwrap();
        assert_eq!(
            (startup.period_seconds, startup.failure_threshold),
            (Some(2), Some(90))
        );
        let script = &c.command.as_ref().unwrap()[2];
        for want in [
            "me=\"$POD_NAME.chat-sentinel.apps.svc\"",
            "sentinel resolve-hostnames yes",
            "sentinel announce-hostnames yes",
            "sentinel announce-ip $me",
            "sentinel monitor realtime $primary 6379 3",
            "sentinel down-after-milliseconds realtime 1500",
            "sentinel failover-timeout realtime 5000",
            "cat /etc/realtime-redis/sentinel.conf",
            "exec redis-server /data/sentinel.conf --sentinel",
        ] {
            assert!(script.contains(want), "{want} not in:\n{script}");
        }
        // 2 Redis pods to look through
        assert!(script.contains(
            "for h in chat-redis-0.chat-redis.apps.svc chat-redis-1.chat-redis.apps.svc; do"
        ));
        let vol = spec
            .template
            .spec
            .as_ref()
            .unwrap()
            .volumes
            .as_ref()
            .unwrap();
        let keys: Vec<&str> = vol[0]
            .secret
            .as_ref()
            .unwrap()
            .items
            .iter()
            .flatten()
            .map(|i| i.key.as_str())
            .collect();
        assert_eq!(keys, ["sentinel.conf", "password"]);
        assert_eq!(c.ports.as_ref().unwrap()[0].container_port, 26379);
        let svc = sentinel_service(&m).spec.unwrap();
        assert_eq!(svc.cluster_ip.as_deref(), Some("None"));
        assert_eq!(svc.publish_not_ready_addresses, Some(true));
        assert_eq!(svc.ports.unwrap()[0].port, 26379);
        assert!(sentinel_statefulset(&model(json!({})), "h").is_none());
        let p = pdb(&m, "chat-sentinel", "sentinel").spec.unwrap();
        assert_eq!(p.max_unavailable, Some(IntOrString::Int(1)));
        assert_eq!(
            p.selector.unwrap().match_labels.unwrap(),
            labels::sentinel_selector("chat")
        );
    }

    #[test]
    fn ha_scripts_are_valid_shell_and_carry_no_password() {
        let m = ha_model();
        let redis = statefulset(&m, "h").unwrap();
        let sentinels = sentinel_statefulset(&m, "h").unwrap();
        let rc = container(&redis);
        let sc = container(&sentinels);
        let scripts = [
            rc.command.as_ref().unwrap()[2].clone(),
            rc.lifecycle
                .as_ref()
                .unwrap()
                .pre_stop
                .as_ref()
                .unwrap()
                .exec
                .as_ref()
                .unwrap()
                .command
                .as_ref()
                .unwrap()[2]
                .clone(),
            sc.command.as_ref().unwrap()[2].clone(),
            sc.readiness_probe
                .as_ref()
                .unwrap()
                .exec
                .as_ref()
                .unwrap()
                .command
                .as_ref()
                .unwrap()[2]
                .clone(),
        ];
        for script in &scripts {
            let out = std::process::Command::new("sh")
                .args(["-n", "-c", script])
                .output()
                .expect("sh runs");
            assert!(
                out.status.success(),
                "{}\n{script}",
                String::from_utf8_lossy(&out.stderr)
            );
            let words: Vec<&str> = script.split_whitespace().collect();
            assert!(
                !words.contains(&"-a") && !words.contains(&"--pass"),
                "{script}"
            );
            // the password comes from the mounted file at run time; the kubelet expands no
            // `$(VAR)` of the container's environment here
            assert!(!script.contains("requirepass"), "{script}");
            assert!(!script.contains("$(POD_NAME)"), "{script}");
        }
        assert!(!serde_json::to_string(&sentinels).unwrap().contains("pw"));
    }

    #[test]
    fn auth_hash_is_stable_and_short() {
        assert_eq!(auth_hash("a"), auth_hash("a"));
        assert_ne!(auth_hash("a"), auth_hash("b"));
        assert_eq!(auth_hash("a").len(), 16);
    }
}
