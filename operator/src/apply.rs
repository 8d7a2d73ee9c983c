//! The only code that writes children: server-side apply of the desired objects under one
//! field manager, and deletion of the children no longer desired.
//!
//! Server-side apply with `force` makes the operator the owner of exactly the fields its
//! builders set: a hand edit of such a field is reverted on the next reconcile, while fields it
//! never sets (an HPA-free Deployment's defaults, a Service's clusterIP) are left alone. An apply
//! whose result equals the stored object is a no-op on the apiserver (no new resourceVersion),
//! so a steady-state resync writes nothing.

use std::fmt::Debug;
use std::time::Duration;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ObjectReference, PersistentVolumeClaim, Secret, Service};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, Preconditions, PropagationPolicy};
use kube::core::PartialObjectMeta;
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::build::{Desired, labels};
use crate::plan::{self, Replacement};
use crate::validate::{Model, REDIS_PASSWORD_KEY};

/// Field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "realtime-operator";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("applying {kind} {name}: {source}")]
    Apply {
        kind: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("deleting {kind} {name}: {source}")]
    Delete {
        kind: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("listing {kind}: {source}")]
    List {
        kind: String,
        #[source]
        source: kube::Error,
    },
    #[error("reading Secret {name}: {source}")]
    ReadSecret {
        name: String,
        #[source]
        source: kube::Error,
    },
    /// A replaced child (orphaning delete) was still there after the timeout; retried.
    #[error("{kind} {name} is still being deleted (replaced to change an immutable field)")]
    StillTerminating { kind: String, name: String },
    /// The password Secret exists but holds no usable password; it is immutable, so the
    /// operator will not overwrite it (that would silently change the password).
    #[error(
        "Secret {name} has no non-empty `{key}` key: delete it and a new password is generated"
    )]
    UnusableSecret { name: String, key: &'static str },
}

/// What the apiserver returned for the children whose status the controller reads.
pub struct Applied {
    pub deployment: Deployment,
    pub statefulset: Option<StatefulSet>,
    pub sentinels: Option<StatefulSet>,
}

/// Applies every desired child. Order: the Secret before the pods that read it, Redis before
/// the servers that connect to it, the Service before the Ingress that routes to it.
pub async fn apply_all(client: &Client, desired: &Desired) -> Result<Applied, Error> {
    let (mut statefulset, mut sentinels) = (None, None);
    if let Some(r) = &desired.redis {
        apply_secret(client, &r.secret).await?;
        apply(client, &r.service).await?;
        if let Some(ha) = &r.ha {
            apply(client, &ha.sentinel_service).await?;
            apply(client, &ha.redis_pdb).await?;
            apply(client, &ha.sentinel_pdb).await?;
        }
        statefulset = Some(apply(client, &r.statefulset).await?);
        if let Some(ha) = &r.ha {
            sentinels = Some(apply(client, &ha.sentinel_statefulset).await?);
        }
    }
    let deployment = apply(client, &desired.deployment).await?;
    apply(client, &desired.service).await?;
    if let Some(s) = &desired.admin_service {
        apply(client, s).await?;
    }
    apply(client, &desired.pdb).await?;
    if let Some(i) = &desired.ingress {
        apply(client, i).await?;
    }
    for p in &desired.network_policies {
        apply(client, p).await?;
    }
    Ok(Applied {
        deployment,
        statefulset,
        sentinels,
    })
}

/// How long a replaced child may take to disappear (the garbage collector first removes the
/// owner references of its dependents, for the `Orphan` propagation).
const REPLACE_TIMEOUT: Duration = Duration::from_secs(30);

/// Deletes a child whose immutable fields must change (see [`crate::plan`]) with its
/// dependents orphaned, and waits until it is gone, so that [`apply_all`] creates it anew and
/// the new object adopts the running ReplicaSets or pods.
pub async fn replace(client: &Client, namespace: &str, r: &Replacement) -> Result<(), Error> {
    match r.kind {
        "Deployment" => replace_kind::<Deployment>(client, namespace, r).await,
        _ => replace_kind::<StatefulSet>(client, namespace, r).await,
    }
}

async fn replace_kind<K>(client: &Client, namespace: &str, r: &Replacement) -> Result<(), Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let dp = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Orphan),
        preconditions: Some(Preconditions {
            uid: Some(r.uid.clone()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    let delete_error = |source| Error::Delete {
        kind: r.kind.into(),
        name: r.name.clone(),
        source,
    };
    match api.delete(&r.name, &dp).await {
        Ok(_) => {}
        // Already gone, or replaced by someone else meanwhile: nothing of ours to delete.
        Err(kube::Error::Api(s)) if s.is_not_found() || s.is_conflict() => return Ok(()),
        Err(e) => return Err(delete_error(e)),
    }
    let deadline = tokio::time::Instant::now() + REPLACE_TIMEOUT;
    loop {
        match api.get_metadata_opt(&r.name).await {
            Ok(None) => return Ok(()),
            Ok(Some(m)) if m.uid() != Some(r.uid.clone()) => return Ok(()),
            Ok(Some(_)) => {}
            Err(e) => return Err(delete_error(e)),
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::StillTerminating {
                kind: r.kind.into(),
                name: r.name.clone(),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Deletes this cluster's children that `desired` no longer contains (found by label, and only
/// when the cluster is their controller). Returns a reference to each deleted child.
pub async fn prune(
    client: &Client,
    model: &Model,
    desired: &Desired,
) -> Result<Vec<ObjectReference>, Error> {
    // Exhaustive: a new kind in `Keep` (hence in `Desired`) must be decided on here.
    let crate::build::Keep {
        // Always exactly one, under the cluster's own name: nothing to prune, and the
        // operator holds no delete right on them (least privilege, see the chart's RBAC).
        deployments: _,
        // The server's, and those of a highly available Redis (gone when it is not).
        pdbs,
        statefulsets,
        services,
        secrets,
        ingresses,
        network_policies,
    } = desired.keep();
    let mut deleted = Vec::new();
    prune_kind::<StatefulSet>(client, model, &statefulsets, &mut deleted).await?;
    prune_kind::<Service>(client, model, &services, &mut deleted).await?;
    prune_kind::<Secret>(client, model, &secrets, &mut deleted).await?;
    prune_kind::<Ingress>(client, model, &ingresses, &mut deleted).await?;
    prune_kind::<NetworkPolicy>(client, model, &network_policies, &mut deleted).await?;
    prune_kind::<PodDisruptionBudget>(client, model, &pdbs, &mut deleted).await?;
    prune_legacy_claims(client, model, &mut deleted).await?;
    Ok(deleted)
}

/// Deletes the PersistentVolumeClaims an older version's Redis `storage` left behind. They
/// have no owner reference (StatefulSet claims never had one), so they are recognised by the
/// labels the claim template gave them and by their name (see
/// [`plan::is_legacy_redis_claim`]). A claim still mounted by the old Redis pod stays until
/// that pod is gone (the `kubernetes.io/pvc-protection` finalizer).
async fn prune_legacy_claims(
    client: &Client,
    model: &Model,
    deleted: &mut Vec<ObjectReference>,
) -> Result<(), Error> {
    delete_children_where::<PersistentVolumeClaim>(client, model, deleted, |claim| {
        plan::is_legacy_redis_claim(model, &claim.name_any())
    })
    .await
}

/// Deletes the children of kind `K` not in `keep` that this cluster controls.
async fn prune_kind<K>(
    client: &Client,
    model: &Model,
    keep: &[String],
    deleted: &mut Vec<ObjectReference>,
) -> Result<(), Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug,
{
    delete_children_where::<K>(client, model, deleted, |obj| {
        let ours = obj
            .owner_references()
            .iter()
            .any(|o| o.uid == model.owner.uid && o.controller == Some(true));
        ours && !keep.contains(&obj.name_any())
    })
    .await
}

/// Deletes every object of kind `K` labelled as a child of this cluster for which `unwanted`
/// holds (and not already being deleted), recording each in `deleted`.
async fn delete_children_where<K>(
    client: &Client,
    model: &Model,
    deleted: &mut Vec<ObjectReference>,
    unwanted: impl Fn(&PartialObjectMeta<K>) -> bool,
) -> Result<(), Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug,
{
    let kind = K::kind(&()).to_string();
    let api: Api<K> = Api::namespaced(client.clone(), &model.namespace);
    let lp = ListParams::default().labels(&labels::children_selector(&model.name));
    let list = api.list_metadata(&lp).await.map_err(|source| Error::List {
        kind: kind.clone(),
        source,
    })?;
    for obj in list.items {
        if obj.metadata.deletion_timestamp.is_some() || !unwanted(&obj) {
            continue;
        }
        let name = obj.name_any();
        let dp = DeleteParams {
            // Never delete a same-named object created after we listed.
            preconditions: Some(Preconditions {
                uid: obj.uid(),
                resource_version: None,
            }),
            ..DeleteParams::background()
        };
        match api.delete(&name, &dp).await {
            Ok(_) => deleted.push(ObjectReference {
                api_version: Some(K::api_version(&()).to_string()),
                kind: Some(kind.clone()),
                name: Some(name),
                namespace: Some(model.namespace.clone()),
                uid: obj.uid(),
                ..Default::default()
            }),
            Err(kube::Error::Api(s)) if s.is_not_found() || s.is_conflict() => {}
            Err(source) => return Err(Error::Delete { kind, name, source }),
        }
    }
    Ok(())
}

/// Server-side apply of one object under [`FIELD_MANAGER`], taking over conflicting fields.
pub async fn apply<K>(client: &Client, obj: &K) -> Result<K, Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Serialize
        + DeserializeOwned
        + Debug,
{
    let (api, name) = api_for(client, obj);
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .map_err(|source| Error::Apply {
        kind: K::kind(&()).to_string(),
        name,
        source,
    })
}

/// Like [`apply`], for the managed-Redis Secret. The Secret is immutable, so one written before
/// it carried `redis.conf` (only the `password` key) cannot gain that key by an update: it is
/// replaced by the desired one, which was built from the stored password, so the password does
/// not change. The delete is conditional on the uid and resourceVersion read just before, and
/// happens only when that stored Secret is immutable and holds the same password; any other
/// failure is returned as it was.
async fn apply_secret(client: &Client, secret: &Secret) -> Result<Secret, Error> {
    let err = match apply(client, secret).await {
        Ok(applied) => return Ok(applied),
        Err(e) => e,
    };
    let name = match &err {
        Error::Apply {
            source: kube::Error::Api(s),
            name,
            ..
        } if s.is_invalid() => name.clone(),
        _ => return Err(err),
    };
    let (api, _) = api_for(client, secret);
    let Some(stored) = api
        .get_opt(&name)
        .await
        .map_err(|source| Error::ReadSecret {
            name: name.clone(),
            source,
        })?
    else {
        return Err(err);
    };
    let password = |s: &Secret| {
        s.data
            .as_ref()
            .and_then(|d| d.get(REDIS_PASSWORD_KEY))
            .cloned()
    };
    if stored.immutable != Some(true) || password(&stored) != password(secret) {
        return Err(err);
    }
    tracing::info!(secret = %name, "immutable Redis Secret lacks a key: replacing it, same password");
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: stored.uid(),
            resource_version: stored.resource_version(),
        }),
        ..DeleteParams::background()
    };
    api.delete(&name, &dp)
        .await
        .map_err(|source| Error::Delete {
            kind: "Secret".into(),
            name: name.clone(),
            source,
        })?;
    apply(client, secret).await
}

fn api_for<K>(client: &Client, obj: &K) -> (Api<K>, String)
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
{
    let ns = obj
        .meta()
        .namespace
        .as_deref()
        .expect("builders always set the namespace");
    let name = obj
        .meta()
        .name
        .clone()
        .expect("builders always set the name");
    (Api::namespaced(client.clone(), ns), name)
}
