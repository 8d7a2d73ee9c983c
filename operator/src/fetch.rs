//! The reads a reconcile needs before it builds anything: the managed Redis' existing
//! password (kept, or a new one generated once), the external Redis' passwords (the data
//! nodes' and the Sentinels', hashed into the servers' rollout annotation), and the existing
//! Deployment and StatefulSet (compared with the
//! desired ones by `plan`, and the source of the status while paused).
//! Kept apart from `apply`, which only writes, so that every read of the API is in one place.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};

use crate::api::SecretKeyRef;
use crate::apply::Error;
use crate::plan::Existing;
use crate::validate::{Model, REDIS_PASSWORD_KEY, RedisModel};

/// What the builders need from the API besides the spec.
pub struct Inputs {
    /// The managed Redis' password (existing, or new), or the external Redis' one (when it has
    /// a passwordSecretRef and the Secret exists). Never logged.
    pub redis_password: Option<String>,
    /// True when the managed Redis' password was generated now (its Secret does not exist yet).
    pub generated: bool,
    /// The external Sentinels' password (sentinel.passwordSecretRef's value, when the Secret
    /// exists). Never logged.
    pub sentinel_password: Option<String>,
}

/// Reads the inputs of `model`'s children; `generate` makes a new managed-Redis password.
pub async fn inputs(
    client: &Client,
    model: &Model,
    generate: impl FnOnce() -> String,
) -> Result<Inputs, Error> {
    Ok(match &model.redis {
        RedisModel::Managed { .. } => match existing_redis_password(client, model).await? {
            Some(p) => Inputs {
                redis_password: Some(p),
                generated: false,
                sentinel_password: None,
            },
            None => Inputs {
                redis_password: Some(generate()),
                generated: true,
                sentinel_password: None,
            },
        },
        RedisModel::External {
            password,
            sentinel_password,
            ..
        } => Inputs {
            redis_password: secret_value(client, &model.namespace, password.as_ref()).await?,
            generated: false,
            sentinel_password: secret_value(client, &model.namespace, sentinel_password.as_ref())
                .await?,
        },
    })
}

/// The password in the existing managed-Redis Secret (`None` when there is no Secret yet).
/// The value is only ever passed to the Secret builder and hashed; never logged.
pub async fn existing_redis_password(
    client: &Client,
    model: &Model,
) -> Result<Option<String>, Error> {
    let name = model.redis_secret_name();
    let api: Api<Secret> = Api::namespaced(client.clone(), &model.namespace);
    let secret = api
        .get_opt(&name)
        .await
        .map_err(|source| Error::ReadSecret {
            name: name.clone(),
            source,
        })?;
    let Some(secret) = secret else {
        return Ok(None);
    };
    secret
        .data
        .and_then(|mut d| d.remove(REDIS_PASSWORD_KEY))
        .and_then(|b| String::from_utf8(b.0).ok())
        .filter(|p| !p.is_empty())
        .map(Some)
        .ok_or(Error::UnusableSecret {
            name,
            key: REDIS_PASSWORD_KEY,
        })
}

/// The value of an external Redis' `passwordSecretRef` or `sentinel.passwordSecretRef`
/// (`None` without one, or when the Secret or its key does not exist yet: the server pods then
/// wait for it, and its creation triggers a reconcile). Only ever hashed for the servers'
/// rollout annotation; never logged.
pub async fn secret_value(
    client: &Client,
    namespace: &str,
    r: Option<&SecretKeyRef>,
) -> Result<Option<String>, Error> {
    let Some(r) = r else {
        return Ok(None);
    };
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = api
        .get_opt(&r.name)
        .await
        .map_err(|source| Error::ReadSecret {
            name: r.name.clone(),
            source,
        })?;
    Ok(secret
        .and_then(|s| s.data)
        .and_then(|mut d| d.remove(&r.key))
        .map(|b| String::from_utf8_lossy(&b.0).into_owned()))
}

/// Reads the existing workload children: what `plan` compares with the desired ones before
/// applying, and what the status is computed from while paused.
pub async fn observe(client: &Client, model: &Model) -> Result<Existing, Error> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &model.namespace);
    let deployment = deployments
        .get_opt(model.server_name())
        .await
        .map_err(|source| Error::List {
            kind: "Deployment".into(),
            source,
        })?;
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), &model.namespace);
    let statefulset = statefulsets
        .get_opt(&model.redis_name())
        .await
        .map_err(|source| Error::List {
            kind: "StatefulSet".into(),
            source,
        })?;
    Ok(Existing {
        deployment,
        statefulset,
    })
}
