//! The kube-runtime Controller: reconcile = validate -> fetch -> build -> plan -> apply ->
//! prune -> status.
//!
//! - Children are watched (`owns`), so a deleted or hand-edited child triggers a reconcile
//!   that restores it; a periodic resync (default 5 min) catches anything missed.
//! - An external Redis' password Secret is not a child: Secrets are watched metadata-only (no
//!   Secret data is listed or cached; every change bumps the resourceVersion, which is enough)
//!   and mapped to the RealtimeClusters in their namespace whose `passwordSecretRef` names
//!   them. The reconcile reads the referenced key and puts its digest on the server pod
//!   template, so an edited password rolls the servers without a manual restart.
//! - An invalid spec is reported (Degraded=InvalidSpec condition + Warning Event) and then
//!   waits for the next spec change: no requeue, no hot loop.
//! - Transient errors requeue with per-object exponential backoff (1 s doubling to 5 min).
//! - `spec.paused` stops every write to children; status keeps being reported.
//! - Status is written only when it differs from the stored one.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};

use crate::api::{RealtimeCluster, RealtimeClusterStatus, RedisTopology};
use crate::apply::{self, FIELD_MANAGER};
use crate::build::{self, labels};
use crate::fetch;
use crate::metrics::Metrics;
use crate::plan;
use crate::status::{self, DEGRADED, Observed, READY};
use crate::validate::{self, Defaults};

/// Settings of a controller run.
#[derive(Clone, Debug)]
pub struct Config {
    pub defaults: Defaults,
    /// Requeue interval of a healthy object (drift the watches missed is fixed by then).
    pub resync: Duration,
    /// Watch one namespace instead of the whole cluster.
    pub namespace: Option<String>,
    /// `reportingInstance` of Events (the pod name).
    pub instance: Option<String>,
}

/// Shared state of reconciles.
pub struct Context {
    pub client: Client,
    pub config: Config,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// Consecutive failures per object, for the backoff.
    failures: Mutex<HashMap<ObjectRef<RealtimeCluster>, u32>>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Apply(#[from] apply::Error),
    #[error("writing status: {0}")]
    Status(#[source] kube::Error),
}

impl Error {
    /// Low-cardinality label for the error metric.
    fn kind(&self) -> &'static str {
        match self {
            Error::Apply(apply::Error::Apply { .. }) => "apply",
            Error::Apply(apply::Error::Delete { .. }) => "delete",
            Error::Apply(apply::Error::StillTerminating { .. }) => "delete",
            Error::Apply(apply::Error::List { .. }) => "read",
            Error::Apply(apply::Error::ReadSecret { .. }) => "read",
            Error::Apply(apply::Error::UnusableSecret { .. }) => "secret",
            Error::Status(_) => "status",
        }
    }
}

/// Runs the controller until `shutdown` resolves, then finishes in-flight reconciles.
pub async fn run(
    client: Client,
    config: Config,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let clusters: Api<RealtimeCluster> = match &config.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    // Only the operator's own children are cached (Secrets especially).
    let children =
        watcher::Config::default().labels(&format!("{}={}", labels::MANAGED_BY, labels::MANAGER));
    fn api<K>(client: &Client, ns: &Option<String>) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        match ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let ns = config.namespace.clone();
    let reporter = Reporter {
        controller: FIELD_MANAGER.into(),
        instance: config.instance.clone(),
    };
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client: client.clone(),
        config,
        metrics,
        failures: Mutex::default(),
    });
    let controller = Controller::new(clusters, watcher::Config::default().any_semantic());
    let referenced_by = referencing_clusters(controller.store());
    // The pods' connection counts (deletion cost, status), beside the reconciles; it ends with
    // the controller (shutdown, or a lost leadership that ends the run).
    let load = tokio::spawn(crate::load::run(
        client.clone(),
        controller.store(),
        ctx.recorder.clone(),
    ));
    controller
        // `PartialObjectMeta`: metadata-only list and watch requests.
        .watches(
            api::<PartialObjectMeta<Secret>>(&client, &ns),
            watcher::Config::default(),
            referenced_by,
        )
        .owns(api::<Deployment>(&client, &ns), children.clone())
        .owns(api::<Service>(&client, &ns), children.clone())
        .owns(api::<PodDisruptionBudget>(&client, &ns), children.clone())
        .owns(api::<StatefulSet>(&client, &ns), children.clone())
        .owns(api::<Secret>(&client, &ns), children.clone())
        .owns(api::<Ingress>(&client, &ns), children.clone())
        .owns(api::<NetworkPolicy>(&client, &ns), children)
        // Coalesce bursts (a rollout updates the Deployment status many times a second).
        .with_config(ControllerConfig::default().debounce(Duration::from_millis(200)))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            use kube::runtime::controller::Error as E;
            match result {
                Ok((obj, _)) => tracing::debug!(object = %obj, "reconciled"),
                // Already logged by error_policy.
                Err(E::ReconcilerFailed(..)) => {}
                // A cluster deleted while a reconcile was queued: expected.
                Err(e @ E::ObjectNotFound(_)) => tracing::debug!(error = %e, "skipped"),
                // Watch failures (API unreachable, CRD missing, RBAC): retried with backoff.
                Err(e) => tracing::warn!(error = %e, "watch"),
            }
        })
        .await;
    load.abort();
}

/// Maps a Secret (its metadata) to the RealtimeClusters in its namespace whose external Redis
/// `passwordSecretRef` names it.
fn referencing_clusters(
    clusters: Store<RealtimeCluster>,
) -> impl Fn(PartialObjectMeta<Secret>) -> Vec<ObjectRef<RealtimeCluster>> + Send + Sync + 'static {
    move |secret| {
        let (ns, name) = (secret.namespace(), secret.name_any());
        clusters
            .state()
            .iter()
            .filter(|rc| rc.namespace() == ns && references_secret(rc, &name))
            .map(|rc| ObjectRef::from_obj(&**rc))
            .collect()
    }
}

/// Whether `rc` uses an external Redis whose password (or its Sentinels') comes from the Secret
/// `name`.
fn references_secret(rc: &RealtimeCluster, name: &str) -> bool {
    let Some(x) = rc.spec.redis.external.as_ref() else {
        return false;
    };
    let sentinel = x
        .sentinel
        .as_ref()
        .and_then(|s| s.password_secret_ref.as_ref());
    [x.password_secret_ref.as_ref(), sentinel]
        .into_iter()
        .flatten()
        .any(|r| r.name == name)
}

/// One reconcile of one RealtimeCluster.
pub async fn reconcile(rc: Arc<RealtimeCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_inner(&rc, &ctx).await;
    match &result {
        Ok((_, outcome)) => {
            ctx.metrics.observe(started, outcome);
            ctx.failures
                .lock()
                .unwrap()
                .remove(&ObjectRef::from_obj(&*rc));
        }
        Err(e) => {
            ctx.metrics.observe(started, "error");
            ctx.metrics.error(e.kind());
        }
    }
    result.map(|(action, _)| action)
}

async fn reconcile_inner(
    rc: &RealtimeCluster,
    ctx: &Context,
) -> Result<(Action, &'static str), Error> {
    if rc.metadata.deletion_timestamp.is_some() {
        // Owner references let the garbage collector delete the children.
        return Ok((Action::await_change(), "deleting"));
    }
    let now = status::now();
    let model = match validate::validate(rc, &ctx.config.defaults) {
        Ok(m) => m,
        Err(errors) => {
            tracing::warn!(cluster = %ObjectRef::from_obj(rc), %errors, "invalid spec");
            let new = status::invalid(rc, &errors, now);
            let was = status::condition(rc.status.as_ref(), DEGRADED)
                .map(|c| (c.reason.clone(), c.message.clone()));
            if was != Some(("InvalidSpec".into(), errors.to_string())) {
                publish(
                    ctx,
                    rc,
                    EventType::Warning,
                    "InvalidSpec",
                    "Validate",
                    errors.to_string(),
                )
                .await;
            }
            write_status(ctx, rc, new).await?;
            // Nothing can succeed until the spec changes, and a spec change triggers a reconcile.
            return Ok((Action::await_change(), "invalid_spec"));
        }
    };

    let (deployment, statefulset, sentinels, primary, outcome) = if model.paused {
        let existing = fetch::observe(&ctx.client, &model).await?;
        let primary = match model.redis_ha() {
            Some(_) => {
                let pw = fetch::existing_redis_password(&ctx.client, &model).await?;
                fetch::redis_primary(&model, pw.as_deref(), None).await
            }
            // (paused: an external Sentinel's password is not read)
            None => fetch::redis_primary(&model, None, None).await,
        };
        (
            existing.deployment,
            existing.statefulset,
            existing.sentinels,
            primary,
            "paused",
        )
    } else {
        // fetch (reads) -> build, plan (pure) -> replace, apply (writes) -> prune (deletes).
        let fetch::Inputs {
            redis_password,
            generated,
            sentinel_password,
        } = fetch::inputs(&ctx.client, &model, new_password).await?;
        let existing = fetch::observe(&ctx.client, &model).await?;
        let desired = build::desired(
            &model,
            redis_password.as_deref(),
            sentinel_password.as_deref(),
        );
        for r in plan::replacements(&model, &desired, &existing) {
            tracing::info!(cluster = %ObjectRef::from_obj(rc), kind = r.kind, name = %r.name, changed = %r.reason,
                "immutable fields differ: replacing the child, its pods kept and adopted");
            apply::replace(&ctx.client, &model.namespace, &r).await?;
            let note = format!(
                "replaced {}/{} to change {} (its pods were kept and adopted)",
                r.kind, r.name, r.reason
            );
            let related = k8s_openapi::api::core::v1::ObjectReference {
                api_version: Some("apps/v1".into()),
                kind: Some(r.kind.into()),
                name: Some(r.name.clone()),
                namespace: Some(model.namespace.clone()),
                uid: Some(r.uid.clone()),
                ..Default::default()
            };
            // `related` keeps one Event per replaced object (not one merged series).
            publish_related(
                ctx,
                rc,
                EventType::Normal,
                "Replaced",
                "Replace",
                note,
                Some(related),
            )
            .await;
        }
        let applied = apply::apply_all(&ctx.client, &desired).await?;
        if generated {
            let msg = format!(
                "generated the Redis password Secret {}",
                model.redis_secret_name()
            );
            publish(
                ctx,
                rc,
                EventType::Normal,
                "RedisPasswordCreated",
                "Create",
                msg,
            )
            .await;
        }
        for child in apply::prune(&ctx.client, &model, &desired).await? {
            let what = format!(
                "{}/{}",
                child.kind.as_deref().unwrap_or_default(),
                child.name.as_deref().unwrap_or_default()
            );
            tracing::info!(cluster = %ObjectRef::from_obj(rc), child = %what, "deleted child no longer wanted");
            let note = format!("deleted {what}: no longer wanted by the spec");
            // The child as `related` keeps one Event per deleted object (not one merged series).
            publish_related(
                ctx,
                rc,
                EventType::Normal,
                "Deleted",
                "Prune",
                note,
                Some(child),
            )
            .await;
        }
        let primary = fetch::redis_primary(
            &model,
            redis_password.as_deref(),
            sentinel_password.as_deref(),
        )
        .await;
        (
            Some(applied.deployment),
            applied.statefulset,
            applied.sentinels,
            primary,
            "applied",
        )
    };

    let observed = Observed {
        deployment: deployment.as_ref(),
        statefulset: statefulset.as_ref(),
        sentinels: sentinels.as_ref(),
        primary: primary.as_deref(),
    };
    let new = status::compute(&model, observed, rc.status.as_ref(), now);
    announce_transitions(ctx, rc, &new).await;
    announce_failover(ctx, rc, &new).await;
    write_status(ctx, rc, new).await?;
    // A failover changes no Kubernetes object the controller watches when no pod restarts:
    // look at the Sentinels more often than the resync.
    let next = match model.redis_topology().0 {
        RedisTopology::Sentinel => ctx.config.resync.min(HA_REQUEUE),
        _ => ctx.config.resync,
    };
    Ok((Action::requeue(next), outcome))
}

/// How often a highly available managed Redis' primary is read from its Sentinels.
pub const HA_REQUEUE: Duration = Duration::from_secs(30);

/// A RedisFailover Event when the Sentinels name another primary than the status did.
async fn announce_failover(ctx: &Context, rc: &RealtimeCluster, new: &RealtimeClusterStatus) {
    let primary = |s: Option<&RealtimeClusterStatus>| {
        s.and_then(|s| s.redis.as_ref())
            .and_then(|r| r.primary.clone())
    };
    if let (Some(before), Some(after)) = (primary(rc.status.as_ref()), primary(Some(new)))
        && before != after
    {
        tracing::info!(cluster = %ObjectRef::from_obj(rc), %before, %after, "Redis primary changed");
        let note = format!("the Sentinels promoted {after}: the Redis primary was {before}");
        publish(
            ctx,
            rc,
            EventType::Normal,
            "RedisFailover",
            "Failover",
            note,
        )
        .await;
    }
}

/// Backoff per object: 1 s, 2 s, 4 s ... capped at 5 minutes; reset by a success.
pub fn error_policy(rc: Arc<RealtimeCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    let failures = {
        let mut map = ctx.failures.lock().unwrap();
        let n = map.entry(ObjectRef::from_obj(&*rc)).or_insert(0);
        *n += 1;
        *n
    };
    let delay = backoff(failures);
    tracing::warn!(cluster = %ObjectRef::from_obj(&*rc), %error, failures, retry_in = ?delay, "reconcile failed");
    if failures == 1 {
        // One Event per failure streak, not one per retry.
        let (ctx, rc, note) = (ctx.clone(), rc.clone(), error.to_string());
        tokio::spawn(async move {
            publish(
                &ctx,
                &rc,
                EventType::Warning,
                "ReconcileFailed",
                "Reconcile",
                note,
            )
            .await;
        });
    }
    Action::requeue(delay)
}

/// The requeue delay after `failures` consecutive failures.
pub fn backoff(failures: u32) -> Duration {
    let secs = 1u64 << failures.saturating_sub(1).min(9);
    Duration::from_secs(secs.min(300))
}

/// Writes `new` as the status unless it equals the stored one.
async fn write_status(
    ctx: &Context,
    rc: &RealtimeCluster,
    new: RealtimeClusterStatus,
) -> Result<(), Error> {
    // The connection counts and the Scaling/Healing conditions belong to `load` (its own field
    // manager): neither compared nor written here.
    let mut current = rc.status.clone();
    if let Some(c) = current.as_mut() {
        crate::load::strip_owned(c);
    }
    let mut new = new;
    crate::load::strip_owned(&mut new);
    if current.as_ref() == Some(&new) {
        return Ok(());
    }
    let api: Api<RealtimeCluster> =
        Api::namespaced(ctx.client.clone(), &rc.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": "realtime.dev/v1alpha1",
        "kind": "RealtimeCluster",
        "status": new,
    });
    api.patch_status(
        &rc.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(Error::Status)?;
    Ok(())
}

/// Events for Ready turning true or false and Degraded turning true.
async fn announce_transitions(ctx: &Context, rc: &RealtimeCluster, new: &RealtimeClusterStatus) {
    let before = |t: &str| status::condition(rc.status.as_ref(), t).map(|c| c.status.clone());
    let after = |t: &str| status::condition(Some(new), t).cloned();
    // Ready: announce becoming ready, and losing readiness (not the initial False).
    if let Some(ready) = after(READY)
        && before(READY).as_deref() != Some(ready.status.as_str())
        && (ready.status == "True" || before(READY).is_some())
    {
        let type_ = if ready.status == "True" {
            EventType::Normal
        } else {
            EventType::Warning
        };
        let reason = if ready.status == "True" {
            "Ready"
        } else {
            "NotReady"
        };
        publish(ctx, rc, type_, reason, "Reconcile", ready.message).await;
    }
    if let Some(degraded) = after(DEGRADED)
        && degraded.status == "True"
        && before(DEGRADED).as_deref() != Some("True")
    {
        let note = format!("{}: {}", degraded.reason, degraded.message);
        publish(ctx, rc, EventType::Warning, "Degraded", "Reconcile", note).await;
    }
}

async fn publish(
    ctx: &Context,
    rc: &RealtimeCluster,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    publish_related(ctx, rc, type_, reason, action, note, None).await;
}

/// Publishes an Event about `rc` (optionally related to a child). Failures are logged only:
/// Events are informative and must not fail a reconcile.
async fn publish_related(
    ctx: &Context,
    rc: &RealtimeCluster,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
    related: Option<k8s_openapi::api::core::v1::ObjectReference>,
) {
    let mut note = note;
    if note.len() > 1000 {
        let mut end = 1000;
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
    }
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: related,
    };
    if let Err(e) = ctx.recorder.publish(&event, &rc.object_ref(&())).await {
        tracing::warn!(error = %e, reason, "publishing an Event failed");
    }
}

/// 32 random bytes, hex encoded: 256 bits, and safe in URLs, shells and redis.conf.
fn new_password() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random source is available");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(5), Duration::from_secs(16));
        assert_eq!(backoff(9), Duration::from_secs(256));
        assert_eq!(backoff(10), Duration::from_secs(300));
        assert_eq!(backoff(1000), Duration::from_secs(300));
    }

    #[test]
    fn a_secret_maps_to_the_clusters_that_reference_it() {
        let rc = |ns: &str, name: &str, redis: serde_json::Value| -> RealtimeCluster {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "realtime.dev/v1alpha1", "kind": "RealtimeCluster",
                "metadata": {"name": name, "namespace": ns}, "spec": {"redis": redis}}))
            .unwrap()
        };
        let ext = |secret: &str| {
            serde_json::json!({"external": {"host": "cache",
                "passwordSecretRef": {"name": secret, "key": "password"}}})
        };
        let (reader, mut writer) = kube::runtime::reflector::store::<RealtimeCluster>();
        for obj in [
            rc("a", "uses", ext("creds")),
            rc("a", "other", ext("elsewhere")),
            rc("b", "same-name-other-ns", ext("creds")),
            rc("a", "managed", serde_json::json!({"managed": {}})),
            rc("a", "also", ext("creds")),
            rc(
                "a",
                "sentinels",
                serde_json::json!({"external": {"sentinel": {"masterName": "m",
                    "endpoints": ["s"], "passwordSecretRef": {"name": "creds"}}}}),
            ),
        ] {
            writer.apply_watcher_event(&watcher::Event::Apply(obj));
        }
        let secret = |ns: &str, name: &str| PartialObjectMeta::<Secret> {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let map = referencing_clusters(reader);
        let mut hit: Vec<String> = map(secret("a", "creds"))
            .into_iter()
            .map(|r| r.name)
            .collect();
        hit.sort();
        assert_eq!(hit, ["also", "sentinels", "uses"]);
        assert!(map(secret("a", "unrelated")).is_empty());
        assert!(map(secret("c", "creds")).is_empty());
    }

    #[test]
    fn passwords_are_long_random_hex() {
        let a = new_password();
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, new_password());
    }
}
