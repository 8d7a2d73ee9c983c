//! What a kubelet and the Deployment controller would compute, as pure functions, so that the
//! local path (no kubelet here) runs processes exactly as the operator's objects describe them:
//! container environment (values, Secret and ConfigMap keys, pod fields, `$(VAR)` expansion),
//! argument expansion, service DNS names, the pod-template hash and the next step of a
//! RollingUpdate.

use std::collections::BTreeMap;

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::core::v1::{Container, EnvVar, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Facts about one (simulated) pod that `fieldRef` can select.
#[derive(Debug, Clone)]
pub struct PodFacts {
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub ip: String,
    pub node_name: String,
    pub service_account: String,
}

/// The Secrets and ConfigMaps of the namespace, by name then key.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub secrets: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    pub config_maps: BTreeMap<String, BTreeMap<String, String>>,
}

/// Kubernetes' `$(VAR)` expansion of env values, command and args: `$(NAME)` becomes the value of
/// a variable defined earlier, `$$` an escaped `$`; unknown references stay as they are.
pub fn expand(s: &str, vars: &[(String, String)]) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match vars.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The container's `args` with `$(VAR)` references to its environment `env` expanded, as a
/// kubelet starts it.
pub fn container_args(c: &Container, env: &[(String, String)]) -> Vec<String> {
    c.args.iter().flatten().map(|a| expand(a, env)).collect()
}

/// The value of a `fieldRef` path for `pod`.
fn field(pod: &PodFacts, path: &str) -> Result<String> {
    let quoted_key = |prefix: &str| -> Option<String> {
        let k = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(k.to_string())
    };
    Ok(match path {
        "metadata.name" => pod.name.clone(),
        "metadata.namespace" => pod.namespace.clone(),
        "spec.nodeName" => pod.node_name.clone(),
        "spec.serviceAccountName" => pod.service_account.clone(),
        "status.podIP" | "status.podIPs" | "status.hostIP" | "status.hostIPs" => pod.ip.clone(),
        _ => {
            if let Some(k) = quoted_key("metadata.labels['") {
                pod.labels.get(&k).cloned().unwrap_or_default()
            } else if let Some(k) = quoted_key("metadata.annotations['") {
                pod.annotations.get(&k).cloned().unwrap_or_default()
            } else {
                bail!("fieldRef {path} is not supported")
            }
        }
    })
}

/// The environment a kubelet gives a container with `env` in `pod`, in order (later entries
/// may refer to earlier ones with `$(VAR)`). A missing non-optional Secret or ConfigMap key is
/// an error, as it keeps a real pod from starting.
pub fn resolve_env(
    env: &[EnvVar],
    pod: &PodFacts,
    sources: &Sources,
) -> Result<Vec<(String, String)>> {
    let mut vars: Vec<(String, String)> = Vec::new();
    for e in env {
        let value = if let Some(from) = &e.value_from {
            if let Some(s) = &from.secret_key_ref {
                let v = sources.secrets.get(&s.name).and_then(|m| m.get(&s.key));
                match v {
                    Some(bytes) => String::from_utf8(bytes.clone()).with_context(|| {
                        format!(
                            "env {}: Secret {} key {} is not UTF-8",
                            e.name, s.name, s.key
                        )
                    })?,
                    None if s.optional == Some(true) => continue,
                    None => bail!(
                        "env {}: Secret {} has no key {} (the pod would not start)",
                        e.name,
                        s.name,
                        s.key
                    ),
                }
            } else if let Some(c) = &from.config_map_key_ref {
                match sources.config_maps.get(&c.name).and_then(|m| m.get(&c.key)) {
                    Some(v) => v.clone(),
                    None if c.optional == Some(true) => continue,
                    None => bail!(
                        "env {}: ConfigMap {} has no key {} (the pod would not start)",
                        e.name,
                        c.name,
                        c.key
                    ),
                }
            } else if let Some(f) = &from.field_ref {
                field(pod, &f.field_path).with_context(|| format!("env {}", e.name))?
            } else {
                bail!(
                    "env {}: only secretKeyRef, configMapKeyRef and fieldRef are simulated here",
                    e.name
                )
            }
        } else {
            expand(e.value.as_deref().unwrap_or_default(), &vars)
        };
        vars.retain(|(k, _)| k != &e.name);
        vars.push((e.name.clone(), value));
    }
    Ok(vars)
}

/// Sets `name` to `value` in `env` (replacing it in place, or appending).
pub fn set_env(env: &mut Vec<(String, String)>, name: &str, value: &str) {
    match env.iter_mut().find(|(k, _)| k == name) {
        Some(kv) => kv.1 = value.to_string(),
        None => env.push((name.to_string(), value.to_string())),
    }
}

/// The DNS names a Service `name` in `namespace` answers to inside the cluster.
pub fn service_dns_names(name: &str, namespace: &str) -> Vec<String> {
    vec![
        name.to_string(),
        format!("{name}.{namespace}"),
        format!("{name}.{namespace}.svc"),
        format!("{name}.{namespace}.svc.cluster.local"),
    ]
}

/// Rewrites the host and port of a `redis://` / `rediss://` URL whose host is one of `names`
/// to `addr` (what cluster DNS and the Service would do), keeping scheme, credentials and the
/// database path.
pub fn rewrite_url_host(url: &str, names: &[String], addr: &str) -> Result<String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| anyhow!("{url:?} is not a URL"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let host = match hostport.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => hostport,
    };
    if !names.iter().any(|n| n == host) {
        bail!(
            "{url:?}: host {host:?} is not a Service of this cluster ({})",
            names.join(", ")
        );
    }
    let user = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
    Ok(format!("{scheme}://{user}{addr}{path}"))
}

/// A stable short hash of a pod template (what `pod-template-hash` is for): pods started from
/// an older template are outdated and a RollingUpdate replaces them.
pub fn template_hash(t: &PodTemplateSpec) -> String {
    let json = serde_json::to_string(t).expect("a pod template serializes");
    // FNV-1a 64: stable across runs and Rust versions, unlike DefaultHasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in json.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // The alphabet Kubernetes uses for generated names (no vowels, no look-alikes).
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..10)
        .map(|i| ALPHABET[((h >> (i * 6)) % ALPHABET.len() as u64) as usize] as char)
        .collect()
}

/// A 5-character pod-name suffix from `seed`, in Kubernetes' alphabet.
pub fn name_suffix(seed: u64) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (seed >> 29);
    (0..5)
        .map(|_| {
            let c = ALPHABET[(x % ALPHABET.len() as u64) as usize] as char;
            x /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

/// `maxSurge` / `maxUnavailable` as a pod count: percentages of `replicas`, rounded up for the
/// surge and down for unavailability, as the Deployment controller does.
pub fn scaled_value(
    v: Option<&IntOrString>,
    replicas: usize,
    round_up: bool,
    default: &str,
) -> Result<usize> {
    let owned;
    let v = match v {
        Some(v) => v,
        None => {
            owned = IntOrString::String(default.to_string());
            &owned
        }
    };
    match v {
        IntOrString::Int(i) => {
            usize::try_from(*i).map_err(|_| anyhow!("negative rolling-update bound {i}"))
        }
        IntOrString::String(s) => {
            let pct: usize = s
                .strip_suffix('%')
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| {
                    anyhow!("rolling-update bound {s:?} is neither an integer nor a percentage")
                })?;
            let x = replicas * pct;
            Ok(if round_up { x.div_ceil(100) } else { x / 100 })
        }
    }
}

/// One running (simulated) pod, as the rollout logic sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    pub name: String,
    /// Started from the Deployment's current template.
    pub current: bool,
    pub ready: bool,
}

/// What to do next to bring the pods to the Deployment's spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Start one pod from the current template (and wait until it is ready).
    Start,
    /// Stop this pod (out of the endpoints, preStop, SIGTERM).
    Stop(String),
}

/// The next step of a RollingUpdate towards `desired` current pods, never above
/// `desired + max_surge` pods nor below `desired - max_unavailable` ready ones. `pods` are in
/// start order (oldest first). Scale-down removes the newest pods first. `None`: done.
pub fn next_step(
    desired: usize,
    max_surge: usize,
    max_unavailable: usize,
    pods: &[PodView],
) -> Option<Step> {
    let total = pods.len();
    let current = pods.iter().filter(|p| p.current).count();
    let ready = pods.iter().filter(|p| p.ready).count();
    let min_ready = desired.saturating_sub(max_unavailable);
    // Outdated pods go first when they are not ready (they serve nobody), else the oldest.
    let outdated = pods
        .iter()
        .filter(|p| !p.current)
        .min_by_key(|p| p.ready)
        .map(|p| p.name.clone());
    if current < desired && total < desired + max_surge.max(usize::from(max_unavailable == 0)) {
        return Some(Step::Start);
    }
    if let Some(old) = outdated {
        let old_ready = pods.iter().any(|p| p.name == old && p.ready);
        if !old_ready || ready > min_ready || total > desired + max_surge || current >= desired {
            return Some(Step::Stop(old));
        }
        if current < desired {
            // Surge exhausted and nothing may go down: only reachable with max_surge = 0 and
            // max_unavailable = 0, which the API rejects.
            return None;
        }
    }
    if current > desired {
        return pods
            .iter()
            .rev()
            .find(|p| p.current)
            .map(|p| Step::Stop(p.name.clone()));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ConfigMapKeySelector, EnvVarSource, ObjectFieldSelector, SecretKeySelector,
    };

    fn pod() -> PodFacts {
        PodFacts {
            name: "chat-abc-x1".into(),
            namespace: "apps".into(),
            labels: BTreeMap::from([("app".to_string(), "rt".to_string())]),
            annotations: BTreeMap::new(),
            ip: "127.0.0.1".into(),
            node_name: "local".into(),
            service_account: "default".into(),
        }
    }

    fn plain(name: &str, v: &str) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: Some(v.into()),
            ..Default::default()
        }
    }

    fn from(name: &str, src: EnvVarSource) -> EnvVar {
        EnvVar {
            name: name.into(),
            value_from: Some(src),
            ..Default::default()
        }
    }

    #[test]
    fn expansion_follows_kubernetes_rules() {
        let vars = vec![
            ("A".to_string(), "1".to_string()),
            ("PW".to_string(), "s3".to_string()),
        ];
        assert_eq!(expand("--requirepass $(PW)", &vars), "--requirepass s3");
        assert_eq!(expand("$(A)$(A)-$(B)", &vars), "11-$(B)");
        assert_eq!(expand("$$(A) $$ $x $(", &vars), "$(A) $ $x $(");
        assert_eq!(expand("", &vars), "");
        let c = Container {
            args: Some(vec![
                "redis-server".into(),
                "--requirepass".into(),
                "$(PW)".into(),
            ]),
            ..Default::default()
        };
        assert_eq!(
            container_args(&c, &vars),
            ["redis-server", "--requirepass", "s3"]
        );
        assert!(container_args(&Container::default(), &vars).is_empty());
    }

    #[test]
    fn env_resolves_secrets_config_maps_and_fields_in_order() {
        let mut sources = Sources::default();
        sources.secrets.insert(
            "auth".into(),
            BTreeMap::from([("pw".to_string(), b"hunter2".to_vec())]),
        );
        sources.config_maps.insert(
            "cfg".into(),
            BTreeMap::from([("mode".to_string(), "json".to_string())]),
        );
        let env = vec![
            plain("PORT", "3000"),
            from(
                "NAME",
                EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        field_path: "metadata.name".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ),
            from(
                "REDIS_PASSWORD",
                EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: "auth".into(),
                        key: "pw".into(),
                        optional: Some(false),
                    }),
                    ..Default::default()
                },
            ),
            from(
                "GONE",
                EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: "nope".into(),
                        key: "k".into(),
                        optional: Some(true),
                    }),
                    ..Default::default()
                },
            ),
            from(
                "LOG_FORMAT",
                EnvVarSource {
                    config_map_key_ref: Some(ConfigMapKeySelector {
                        name: "cfg".into(),
                        key: "mode".into(),
                        optional: None,
                    }),
                    ..Default::default()
                },
            ),
            from(
                "APP",
                EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        field_path: "metadata.labels['app']".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ),
            plain("GREETING", "node $(NAME) on $(PORT)"),
            plain("PORT", "3001"),
        ];
        let got = resolve_env(&env, &pod(), &sources).unwrap();
        let want: Vec<(String, String)> = [
            ("NAME", "chat-abc-x1"),
            ("REDIS_PASSWORD", "hunter2"),
            ("LOG_FORMAT", "json"),
            ("APP", "rt"),
            ("GREETING", "node chat-abc-x1 on 3000"),
            ("PORT", "3001"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        assert_eq!(got, want);

        let missing = vec![from(
            "X",
            EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: "auth".into(),
                    key: "other".into(),
                    optional: None,
                }),
                ..Default::default()
            },
        )];
        let e = resolve_env(&missing, &pod(), &sources)
            .unwrap_err()
            .to_string();
        assert!(e.contains("Secret auth has no key other"), "{e}");
        let bad_field = vec![from(
            "X",
            EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "spec.whatever".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )];
        assert!(resolve_env(&bad_field, &pod(), &sources).is_err());
    }

    #[test]
    fn set_env_replaces_in_place() {
        let mut env = vec![
            ("PORT".to_string(), "3000".to_string()),
            ("A".to_string(), "1".to_string()),
        ];
        set_env(&mut env, "PORT", "4000");
        set_env(&mut env, "BIND", "127.0.0.1");
        assert_eq!(env[0], ("PORT".to_string(), "4000".to_string()));
        assert_eq!(env[2], ("BIND".to_string(), "127.0.0.1".to_string()));
    }

    #[test]
    fn urls_are_rewritten_only_for_cluster_services() {
        let names = service_dns_names("chat-redis", "apps");
        assert_eq!(
            rewrite_url_host("redis://chat-redis.apps.svc:6379", &names, "127.0.0.1:4321").unwrap(),
            "redis://127.0.0.1:4321"
        );
        assert_eq!(
            rewrite_url_host(
                "rediss://:pw@chat-redis.apps.svc.cluster.local:6379/2",
                &names,
                "127.0.0.1:1"
            )
            .unwrap(),
            "rediss://:pw@127.0.0.1:1/2"
        );
        assert_eq!(
            rewrite_url_host("redis://chat-redis", &names, "h:1").unwrap(),
            "redis://h:1"
        );
        assert!(rewrite_url_host("redis://redis.cache.svc:6379", &names, "h:1").is_err());
        assert!(rewrite_url_host("chat-redis:6379", &names, "h:1").is_err());
    }

    #[test]
    fn template_hash_changes_with_the_template() {
        let mut t = PodTemplateSpec::default();
        let h1 = template_hash(&t);
        assert_eq!(h1.len(), 10);
        assert_eq!(h1, template_hash(&t.clone()));
        t.metadata = Some(Default::default());
        t.metadata.as_mut().unwrap().annotations = Some(BTreeMap::from([(
            "kubectl.kubernetes.io/restartedAt".to_string(),
            "now".to_string(),
        )]));
        assert_ne!(h1, template_hash(&t));
        assert_ne!(name_suffix(1), name_suffix(2));
        assert_eq!(name_suffix(7).len(), 5);
    }

    #[test]
    fn surge_and_unavailable_scale_like_the_deployment_controller() {
        assert_eq!(
            scaled_value(Some(&IntOrString::Int(1)), 4, true, "25%").unwrap(),
            1
        );
        assert_eq!(scaled_value(None, 3, true, "25%").unwrap(), 1);
        assert_eq!(scaled_value(None, 3, false, "25%").unwrap(), 0);
        assert_eq!(
            scaled_value(Some(&IntOrString::String("50%".into())), 5, true, "0").unwrap(),
            3
        );
        assert!(scaled_value(Some(&IntOrString::String("x".into())), 5, true, "0").is_err());
        assert!(scaled_value(Some(&IntOrString::Int(-1)), 5, true, "0").is_err());
    }

    fn run(
        desired: usize,
        surge: usize,
        unavailable: usize,
        mut pods: Vec<PodView>,
    ) -> Vec<String> {
        let mut trace = Vec::new();
        let mut n = 0;
        while let Some(step) = next_step(desired, surge, unavailable, &pods) {
            assert!(trace.len() < 20, "no convergence: {trace:?}");
            match step {
                Step::Start => {
                    n += 1;
                    let name = format!("new{n}");
                    trace.push(format!("+{name}"));
                    pods.push(PodView {
                        name,
                        current: true,
                        ready: true,
                    });
                }
                Step::Stop(name) => {
                    trace.push(format!("-{name}"));
                    pods.retain(|p| p.name != name);
                    let ready = pods.iter().filter(|p| p.ready).count();
                    assert!(
                        ready >= desired.saturating_sub(unavailable),
                        "too few ready after {trace:?}"
                    );
                }
            }
            assert!(
                pods.len() <= desired + surge.max(1),
                "surge exceeded: {pods:?}"
            );
        }
        assert_eq!(pods.iter().filter(|p| p.current).count(), desired);
        assert!(pods.iter().all(|p| p.current));
        trace
    }

    fn pods(spec: &[(&str, bool)]) -> Vec<PodView> {
        spec.iter()
            .map(|(n, cur)| PodView {
                name: n.to_string(),
                current: *cur,
                ready: true,
            })
            .collect()
    }

    #[test]
    fn rolling_update_is_surge_first_with_max_unavailable_zero() {
        assert_eq!(
            run(2, 1, 0, pods(&[("a", false), ("b", false)])),
            ["+new1", "-a", "+new2", "-b"]
        );
        assert_eq!(run(3, 1, 0, pods(&[("a", true), ("b", true)])), ["+new1"]);
        assert_eq!(
            run(1, 1, 0, pods(&[("a", true), ("b", true), ("c", true)])),
            ["-c", "-b"]
        );
        assert_eq!(run(0, 1, 0, pods(&[("a", true)])), ["-a"]);
        assert!(run(2, 1, 0, pods(&[("a", true), ("b", true)])).is_empty());
        // scale down while outdated: outdated pods go first
        assert_eq!(
            run(1, 1, 0, pods(&[("a", false), ("b", false)])),
            ["-a", "+new1", "-b"]
        );
    }

    #[test]
    fn rolling_update_without_surge_takes_one_down_first() {
        assert_eq!(
            run(2, 0, 1, pods(&[("a", false), ("b", false)])),
            ["-a", "+new1", "-b", "+new2"]
        );
    }

    #[test]
    fn outdated_pods_that_are_not_ready_go_first() {
        let p = vec![
            PodView {
                name: "a".into(),
                current: false,
                ready: true,
            },
            PodView {
                name: "b".into(),
                current: false,
                ready: false,
            },
            PodView {
                name: "c".into(),
                current: true,
                ready: true,
            },
        ];
        assert_eq!(next_step(2, 1, 0, &p), Some(Step::Stop("b".into())));
    }
}
