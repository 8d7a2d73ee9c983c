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
    let get = |name: String| {
        let api = statefulsets.clone();
        async move {
            api.get_opt(&name).await.map_err(|source| Error::List {
                kind: "StatefulSet".into(),
                source,
            })
        }
    };
    let statefulset = get(model.redis_name()).await?;
    let sentinels = match model.redis_ha() {
        Some(_) => get(model.sentinel_name()).await?,
        None => None,
    };
    Ok(Existing {
        deployment,
        statefulset,
        sentinels,
    })
}

/// How long asking one Sentinel for the primary may take (connect, AUTH, command).
const SENTINEL_ASK_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(1500);

/// The primary the Sentinels name: for a highly available managed Redis its pod
/// (`<name>-redis-<i>`, asking the Sentinel pods with the generated password); for an external
/// Sentinel setup its host, asking the `spec.redis.external.sentinel.endpoints` (with their own
/// password when they have one). Every Sentinel is asked at once and the answer most of them
/// give wins ([`most_named`]): right after a failover a Sentinel that has not heard of it yet
/// still names the old primary. `None` for other topologies, or when no Sentinel answers (not
/// running yet, or no network path from the operator). Passwords go to the Sentinels only.
pub async fn redis_primary(
    model: &Model,
    password: Option<&str>,
    sentinel_password: Option<&str>,
) -> Option<String> {
    let (sentinels, master, pw) = sentinels_to_ask(model, password, sentinel_password)?;
    let asks = sentinels.iter().map(|(host, port)| async move {
        let asked =
            tokio::time::timeout(SENTINEL_ASK_TIMEOUT, ask_sentinel(host, *port, pw, master)).await;
        match asked {
            Ok(Ok(Some(primary))) => Some(primary),
            Ok(Ok(None)) => {
                tracing::debug!(sentinel = %host, "knows no primary");
                None
            }
            Ok(Err(e)) => {
                tracing::debug!(sentinel = %host, "cannot be asked: {e}");
                None
            }
            Err(_) => {
                tracing::debug!(sentinel = %host, "did not answer in time");
                None
            }
        }
    });
    let answers: Vec<(String, String)> = futures::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .collect();
    let (primary, port) = most_named(&answers)?;
    Some(match model.redis {
        RedisModel::Managed { .. } => primary_pod(model, primary),
        // Outside the cluster hosts may share an address (ports tell them apart).
        RedisModel::External { .. } => format!("{primary}:{port}"),
    })
}

/// The answer given most often; between equally named ones, the first given (the Sentinels are
/// asked in their configured order).
fn most_named<T: PartialEq>(answers: &[T]) -> Option<&T> {
    let count = |a: &T| answers.iter().filter(|b| *b == a).count();
    let mut best: Option<(&T, usize)> = None;
    for a in answers {
        let n = count(a);
        if best.is_none_or(|(_, m)| n > m) {
            best = Some((a, n));
        }
    }
    best.map(|(a, _)| a)
}

/// The Sentinels (host, port) to ask, the master name, and the password they need.
type SentinelQuery<'a> = (Vec<(String, u16)>, &'a str, Option<&'a str>);

/// Whom to ask for the primary, under which master name, with which password (pure).
fn sentinels_to_ask<'a>(
    model: &'a Model,
    password: Option<&'a str>,
    sentinel_password: Option<&'a str>,
) -> Option<SentinelQuery<'a>> {
    match &model.redis {
        RedisModel::Managed { ha: Some(ha), .. } => Some((
            (0..ha.sentinel_pods)
                .map(|i| {
                    (
                        model.sentinel_pod_host(i),
                        crate::validate::SENTINEL_PORT as u16,
                    )
                })
                .collect(),
            crate::validate::SENTINEL_MASTER_NAME,
            // The managed Sentinels always require the generated password.
            Some(password?),
        )),
        RedisModel::External {
            master_name: Some(master),
            endpoint,
            ..
        } => Some((
            endpoint.split(',').filter_map(host_port).collect(),
            master.as_str(),
            sentinel_password,
        )),
        _ => None,
    }
}

/// `host:port` or `[v6]:port` (the status endpoint's form) as (host, port) (pure).
fn host_port(e: &str) -> Option<(String, u16)> {
    let (host, port) = e.trim().rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then(|| Some((host.to_string(), port.parse().ok()?)))?
}

/// The pod name of a primary host the Sentinels announce (`<name>-redis-<i>.<svc>...`), or the
/// host as given when it is not one of this cluster's pods (pure).
pub fn primary_pod(model: &Model, host: &str) -> String {
    let pod = host.split('.').next().unwrap_or_default();
    let suffix = format!(".{}.{}.svc", model.redis_name(), model.namespace);
    let ours = pod
        .strip_prefix(&format!("{}-", model.redis_name()))
        .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
    if ours && host.trim_end_matches('.').ends_with(&suffix) {
        pod.to_string()
    } else {
        host.to_string()
    }
}

/// `AUTH` (when there is a password) then `SENTINEL GET-MASTER-ADDR-BY-NAME` on one
/// Sentinel: the primary's host and port.
async fn ask_sentinel(
    host: &str,
    port: u16,
    password: Option<&str>,
    master: &str,
) -> std::io::Result<Option<(String, String)>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect((host, port)).await?;
    let mut req = Vec::new();
    if let Some(pw) = password {
        req.extend(resp_command(&["AUTH", pw]));
    }
    req.extend(resp_command(&[
        "SENTINEL",
        "GET-MASTER-ADDR-BY-NAME",
        master,
    ]));
    s.write_all(&req).await?;
    let expected = if password.is_some() { 2 } else { 1 };
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(replies) = resp_replies(&buf, expected) {
            return Ok(sentinel_answer(&replies));
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 || buf.len() > 64 * 1024 {
            return Err(std::io::Error::other("the Sentinel closed the connection"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A RESP command (pure).
fn resp_command(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}

/// One RESP2 reply, flattened: simple strings, errors (prefixed `-`), integers and bulk
/// strings as lines; nil as `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reply {
    Line(Option<String>),
    Many(Vec<Reply>),
}

/// The first `n` complete replies in `buf`, or `None` while incomplete or malformed (pure).
fn resp_replies(buf: &[u8], n: usize) -> Option<Vec<Reply>> {
    fn one(buf: &[u8]) -> Option<(Reply, usize)> {
        let end = buf.windows(2).position(|w| w == b"\r\n")?;
        let line = std::str::from_utf8(buf.get(1..end)?).ok()?;
        let after = end + 2;
        match buf.first()? {
            b'+' | b':' => Some((Reply::Line(Some(line.into())), after)),
            b'-' => Some((Reply::Line(Some(format!("-{line}"))), after)),
            b'$' => {
                let len: i64 = line.parse().ok()?;
                if len < 0 {
                    return Some((Reply::Line(None), after));
                }
                let len = len as usize;
                let body = buf.get(after..after + len)?;
                buf.get(after + len..after + len + 2)?;
                Some((
                    Reply::Line(Some(String::from_utf8_lossy(body).into_owned())),
                    after + len + 2,
                ))
            }
            b'*' => {
                let len: i64 = line.parse().ok()?;
                let mut at = after;
                let mut items = Vec::new();
                for _ in 0..len.max(0) {
                    let (r, used) = one(&buf[at..])?;
                    items.push(r);
                    at += used;
                }
                Some((Reply::Many(items), at))
            }
            _ => None,
        }
    }
    let mut at = 0;
    let mut out = Vec::new();
    while out.len() < n {
        let (r, used) = one(&buf[at..])?;
        out.push(r);
        at += used;
    }
    Some(out)
}

/// The primary's host from the replies to AUTH and GET-MASTER-ADDR-BY-NAME (pure): `None`
/// when AUTH failed or the Sentinel knows no such primary.
fn sentinel_answer(replies: &[Reply]) -> Option<(String, String)> {
    let addr = match replies {
        [Reply::Line(Some(ok)), Reply::Many(addr)] if ok == "OK" => addr,
        [Reply::Many(addr)] => addr,
        _ => return None,
    };
    match addr.as_slice() {
        [Reply::Line(Some(host)), Reply::Line(Some(port)), ..] if !host.is_empty() => {
            Some((host.clone(), port.clone()))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::test_support::model;
    use serde_json::json;

    #[test]
    fn the_primary_most_sentinels_name_wins() {
        let a = ("10.0.0.1".to_string(), 6379);
        let b = ("10.0.0.2".to_string(), 6379);
        assert_eq!(most_named::<(String, u16)>(&[]), None);
        assert_eq!(most_named(std::slice::from_ref(&a)), Some(&a));
        // One Sentinel still names the old primary after a failover: the majority wins.
        assert_eq!(most_named(&[a.clone(), b.clone(), b.clone()]), Some(&b));
        // A tie goes to the first answer.
        assert_eq!(most_named(&[a.clone(), b.clone()]), Some(&a));
        // Same host, another port: another answer.
        let a2 = ("10.0.0.1".to_string(), 6380);
        assert_eq!(most_named(&[a2.clone(), a.clone(), a.clone()]), Some(&a));
    }

    #[test]
    fn whom_to_ask_for_the_primary() {
        let m = model(
            json!({"redis": {"external": {"sentinel": {"masterName": "mymaster",
            "endpoints": ["s-0.sentinel", "s-1.sentinel:26380", "10.0.0.5:26381"]}}}}),
        );
        let (hosts, master, pw) = sentinels_to_ask(&m, Some("data-pw"), None).unwrap();
        assert_eq!(
            hosts,
            [
                ("s-0.sentinel".to_string(), 26379),
                ("s-1.sentinel".into(), 26380),
                ("10.0.0.5".into(), 26381)
            ]
        );
        assert_eq!(
            (master, pw),
            ("mymaster", None),
            "the data password never goes there"
        );
        let (_, _, pw) = sentinels_to_ask(&m, Some("data-pw"), Some("s-pw")).unwrap();
        assert_eq!(pw, Some("s-pw"));
        let m = model(json!({"redis": {"managed": {"highAvailability": {}}}}));
        let (hosts, master, pw) = sentinels_to_ask(&m, Some("gen"), None).unwrap();
        assert_eq!((hosts.len(), master, pw), (3, "realtime", Some("gen")));
        assert!(
            sentinels_to_ask(&m, None, None).is_none(),
            "no password yet"
        );
        assert!(sentinels_to_ask(&model(json!({})), Some("gen"), None).is_none());
        assert_eq!(
            host_port("[fd00::5]:26381"),
            Some(("fd00::5".into(), 26381))
        );
        assert_eq!(host_port("no-port"), None);
    }

    #[test]
    fn sentinel_replies_parse() {
        let host = "chat-redis-1.chat-redis.apps.svc";
        let ok = format!("+OK\r\n*2\r\n${}\r\n{host}\r\n$4\r\n6379\r\n", host.len());
        let ok = ok.as_bytes();
        // every proper prefix is incomplete
        for n in 0..ok.len() {
            assert_eq!(resp_replies(&ok[..n], 2), None, "{n}");
        }
        let r = resp_replies(ok, 2).unwrap();
        assert_eq!(
            sentinel_answer(&r),
            Some(("chat-redis-1.chat-redis.apps.svc".into(), "6379".into()))
        );
        // without AUTH: the answer alone
        let alone = resp_replies(b"*2\r\n$9\r\n127.0.0.1\r\n$4\r\n7001\r\n", 1).unwrap();
        assert_eq!(
            sentinel_answer(&alone),
            Some(("127.0.0.1".into(), "7001".into()))
        );
        let refused = resp_replies(b"-WRONGPASS invalid\r\n-NOAUTH x\r\n", 2).unwrap();
        assert_eq!(sentinel_answer(&refused), None);
        let unknown = resp_replies(b"+OK\r\n*-1\r\n", 2).unwrap();
        assert_eq!(sentinel_answer(&unknown), None);
        assert_eq!(
            resp_command(&["AUTH", "pw"]),
            b"*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n".to_vec()
        );
    }

    #[test]
    fn the_primary_is_named_by_its_pod() {
        let m = model(json!({"redis": {"managed": {"highAvailability": {}}}}));
        assert_eq!(
            primary_pod(&m, "chat-redis-2.chat-redis.apps.svc"),
            "chat-redis-2"
        );
        assert_eq!(
            primary_pod(&m, "chat-redis-2.chat-redis.apps.svc."),
            "chat-redis-2"
        );
        // anything else is shown as it is
        for other in [
            "10.1.2.3",
            "chat-redis-x.chat-redis.apps.svc",
            "other-0.x.apps.svc",
        ] {
            assert_eq!(primary_pod(&m, other), other);
        }
    }
}
