//! Smoke tests of the local control plane (real etcd, kube-apiserver, kube-controller-manager):
//! it starts, serves the pinned version, takes the project's CRD and an example through
//! kubectl, garbage-collects, deletes namespaces and enforces RBAC. All tests share one
//! control plane (`control_plane::shared`) and each works in its own namespace.

use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::core::GroupVersionKind;
use kube::{Client, ResourceExt};
use realtime_e2e::control_plane::{self, ControlPlane, Tools, json_contains, yaml_documents};
use serde_json::{Value, json};

/// Runs a prepared kubectl command, failing the test with its output if it fails.
fn run(mut cmd: Command) -> String {
    let out = cmd.output().expect("run kubectl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{text}",
        out.status
    );
    text
}

fn from_json<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("valid object")
}

fn config_map(name: &str, owner: Option<&ConfigMap>) -> ConfigMap {
    let owners: Vec<Value> = owner
        .map(|o| {
            vec![json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "name": o.name_any(), "uid": o.uid().expect("created object has a uid"),
            })]
        })
        .unwrap_or_default();
    from_json(json!({
        "metadata": { "name": name, "ownerReferences": owners },
        "data": { "k": "v" },
    }))
}

/// The status code of a kube API error (`None` for success or a non-API error).
fn api_code<T>(r: &kube::Result<T>) -> Option<u16> {
    match r {
        Err(kube::Error::Api(s)) => Some(s.code),
        _ => None,
    }
}

#[tokio::test]
async fn starts_and_serves_the_pinned_version_with_controllers() {
    let Some(cp) = control_plane::shared().await else {
        return;
    };
    let _logs = cp.logs_on_failure();
    let client = cp.client().await.unwrap();

    let version = client.apiserver_version().await.unwrap();
    let pinned = Tools::pinned().unwrap().versions.kubernetes;
    assert_eq!(version.git_version, pinned);

    let ns = cp.create_namespace("smoke").await.unwrap();
    let got = Api::<Namespace>::all(client.clone())
        .get(&ns)
        .await
        .unwrap();
    assert_eq!(
        got.labels()
            .get(control_plane::TEST_NAMESPACE_LABEL)
            .map(String::as_str),
        Some("true")
    );

    // kube-controller-manager's serviceaccount controller gives each new namespace a
    // `default` ServiceAccount.
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    cp.poll_until(
        "the default ServiceAccount",
        Duration::from_secs(30),
        || async { Ok(sas.get_opt("default").await?) },
    )
    .await
    .unwrap();

    if !control_plane::is_external() {
        let procs = cp.processes();
        let names: Vec<_> = procs.iter().map(|p| p.name).collect();
        assert_eq!(names, ["etcd", "kube-apiserver", "kube-controller-manager"]);
        let total: u64 = procs
            .iter()
            .map(|p| p.rss_bytes.expect("process is running"))
            .sum();
        eprintln!(
            "control plane memory: {} = {} MiB",
            procs
                .iter()
                .map(|p| format!("{} {} MiB", p.name, p.rss_bytes.unwrap_or(0) >> 20))
                .collect::<Vec<_>>()
                .join(" + "),
            total >> 20
        );
    }
}

#[tokio::test]
async fn kubectl_applies_the_crd_and_an_example_that_kube_rs_reads_back() {
    let Some(cp) = control_plane::shared().await else {
        return;
    };
    let _logs = cp.logs_on_failure();
    let Some(crd_file) = control_plane::require_project_crd() else {
        return;
    };
    let example = realtime_e2e::require::workspace_root().join("examples/minimal.yaml");
    let Some(example) = realtime_e2e::require::require(
        "examples/minimal.yaml",
        "the minimal RealtimeCluster example (written with the operator's API)",
        example.is_file().then_some(example),
    ) else {
        return;
    };
    let Some(mut kubectl) = cp.kubectl() else {
        return;
    };
    let client = cp.client().await.unwrap();
    let ns = cp.create_namespace("crd").await.unwrap();

    kubectl.arg("apply").arg("-f").arg(&crd_file);
    run(kubectl);
    let crd: Value = yaml_documents(&std::fs::read_to_string(&crd_file).unwrap())
        .unwrap()
        .remove(0);
    cp.wait_crd_served(&client, crd["metadata"]["name"].as_str().unwrap())
        .await
        .unwrap();

    let mut kubectl = cp.kubectl().unwrap();
    kubectl.args(["apply", "-n", &ns, "-f"]).arg(&example);
    run(kubectl);

    // Read it back through kube-rs, resolving the kind through discovery like a client would.
    let docs = yaml_documents(&std::fs::read_to_string(&example).unwrap()).unwrap();
    let cluster = docs
        .iter()
        .find(|d| d["kind"] == "RealtimeCluster")
        .expect("examples/minimal.yaml holds a RealtimeCluster");
    let (group, version) = cluster["apiVersion"]
        .as_str()
        .unwrap()
        .split_once('/')
        .unwrap();
    let gvk = GroupVersionKind::gvk(group, version, "RealtimeCluster");
    let (resource, _caps) = kube::discovery::pinned_kind(&client, &gvk).await.unwrap();
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &resource);
    let name = cluster["metadata"]["name"].as_str().unwrap();
    let got = api.get(name).await.unwrap();
    assert_eq!(got.namespace().as_deref(), Some(ns.as_str()));
    let got_spec = got.data.get("spec").cloned().unwrap_or(Value::Null);
    // The server may add defaults, never drop or change what the example sets.
    assert!(
        json_contains(&got_spec, &cluster["spec"]),
        "read back {got_spec:#} does not contain the example's spec {:#}",
        cluster["spec"]
    );
}

#[tokio::test]
async fn garbage_collector_deletes_dependents_of_a_deleted_owner() {
    let Some(cp) = control_plane::shared().await else {
        return;
    };
    let _logs = cp.logs_on_failure();
    let client = cp.client().await.unwrap();
    let ns = cp.create_namespace("gc").await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let pp = PostParams::default();

    let owner = cms.create(&pp, &config_map("owner", None)).await.unwrap();
    let dependent = cms
        .create(&pp, &config_map("dependent", Some(&owner)))
        .await
        .unwrap();
    let bystander = cms
        .create(&pp, &config_map("bystander", None))
        .await
        .unwrap();
    assert_eq!(dependent.owner_references()[0].uid, owner.uid().unwrap());

    cms.delete("owner", &DeleteParams::background())
        .await
        .unwrap();
    cp.poll_until(
        "the garbage collector to delete the dependent",
        Duration::from_secs(60),
        || async { Ok(cms.get_opt("dependent").await?.is_none().then_some(())) },
    )
    .await
    .unwrap();
    // Only the owned object went.
    assert!(cms.get_opt(&bystander.name_any()).await.unwrap().is_some());
}

#[tokio::test]
async fn namespace_deletion_completes() {
    let Some(cp) = control_plane::shared().await else {
        return;
    };
    let _logs = cp.logs_on_failure();
    let client = cp.client().await.unwrap();
    let ns = cp.create_namespace("nsdel").await.unwrap();
    Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &config_map("content", None))
        .await
        .unwrap();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .delete(&ns, &DeleteParams::default())
        .await
        .unwrap();
    // The namespace controller empties it and removes the `kubernetes` finalizer.
    cp.poll_until(
        "the namespace controller to finish deleting",
        Duration::from_secs(60),
        || async { Ok(namespaces.get_opt(&ns).await?.is_none().then_some(())) },
    )
    .await
    .unwrap();
}

/// A Role that may read ConfigMaps, bound to `subject` in `ns`.
async fn grant_configmap_reader(admin: &Client, ns: &str, binding: &str, subject: Value) {
    let role: Role = from_json(json!({
        "metadata": { "name": "configmap-reader" },
        "rules": [{ "apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"] }],
    }));
    let roles: Api<Role> = Api::namespaced(admin.clone(), ns);
    if roles.get_opt("configmap-reader").await.unwrap().is_none() {
        roles.create(&PostParams::default(), &role).await.unwrap();
    }
    let rb: RoleBinding = from_json(json!({
        "metadata": { "name": binding },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "configmap-reader" },
        "subjects": [subject],
    }));
    Api::<RoleBinding>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &rb)
        .await
        .unwrap();
}

/// `client` may list ConfigMaps in `ns`, once the RBAC authorizer's cache has the binding.
async fn wait_until_allowed(cp: &ControlPlane, client: &Client, ns: &str) {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    cp.poll_until(
        "the new RoleBinding to take effect",
        Duration::from_secs(15),
        || async {
            let r = cms.list(&ListParams::default()).await;
            match api_code(&r) {
                Some(403) => Ok(None),
                _ => Ok(Some(r?)),
            }
        },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn rbac_denies_a_user_without_grants_and_allows_one_with_a_role() {
    let Some(cp) = control_plane::shared().await else {
        return;
    };
    let _logs = cp.logs_on_failure();
    let admin = cp.client().await.unwrap();
    let ns = cp.create_namespace("rbac-user").await.unwrap();

    let nobody = cp
        .user("rt-e2e-nobody", None)
        .unwrap()
        .client()
        .await
        .unwrap();
    let r = Api::<ConfigMap>::namespaced(nobody, &ns)
        .list(&ListParams::default())
        .await;
    assert_eq!(api_code(&r), Some(403), "{r:?}");

    // A group binding, to show the certificate's O is the group.
    let reader = cp.user("rt-e2e-reader", Some("rt-e2e-readers")).unwrap();
    let reader_client = reader.client().await.unwrap();
    grant_configmap_reader(
        &admin,
        &ns,
        "readers",
        json!({ "kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": "rt-e2e-readers" }),
    )
    .await;
    wait_until_allowed(&cp, &reader_client, &ns).await;
    // Only what the Role grants: reading, not writing.
    let w = Api::<ConfigMap>::namespaced(reader_client, &ns)
        .create(&PostParams::default(), &config_map("nope", None))
        .await;
    assert_eq!(api_code(&w), Some(403), "{w:?}");

    // The identity's kubeconfig works for kubectl too.
    if let Some(mut kubectl) = cp.kubectl() {
        kubectl.env("KUBECONFIG", &reader.kubeconfig).args([
            "auth",
            "can-i",
            "list",
            "configmaps",
            "-n",
            &ns,
        ]);
        assert_eq!(run(kubectl).trim(), "yes");
    }
}

#[tokio::test]
async fn rbac_applies_to_service_account_tokens() {
    let Some(cp) = control_plane::shared().await else {
        return;
    };
    let _logs = cp.logs_on_failure();
    let admin = cp.client().await.unwrap();
    let ns = cp.create_namespace("rbac-sa").await.unwrap();
    let sa: ServiceAccount = from_json(json!({ "metadata": { "name": "operator" } }));
    Api::<ServiceAccount>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &sa)
        .await
        .unwrap();

    let identity = cp.service_account(&ns, "operator").await.unwrap();
    assert_eq!(
        identity.user,
        format!("system:serviceaccount:{ns}:operator")
    );
    let client = identity.client().await.unwrap();
    let r = Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await;
    assert_eq!(api_code(&r), Some(403), "{r:?}");

    grant_configmap_reader(
        &admin,
        &ns,
        "operator-reads",
        json!({ "kind": "ServiceAccount", "name": "operator", "namespace": ns }),
    )
    .await;
    wait_until_allowed(&cp, &client, &ns).await;
}

#[tokio::test]
async fn install_crds_waits_until_discovery_serves_the_kind() {
    let Some(cp) = control_plane::shared().await else {
        return;
    };
    let _logs = cp.logs_on_failure();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("widgets.yaml");
    std::fs::write(
        &file,
        r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.harness.realtime-e2e.example
spec:
  group: harness.realtime-e2e.example
  scope: Namespaced
  names: { plural: widgets, singular: widget, kind: Widget }
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              properties:
                size: { type: integer, minimum: 1 }
"#,
    )
    .unwrap();
    let names = cp.install_crds(&file).await.unwrap();
    assert_eq!(names, ["widgets.harness.realtime-e2e.example"]);

    // Served right away: discovery resolves the kind and the schema is enforced.
    let client = cp.client().await.unwrap();
    let ns = cp.create_namespace("widgets").await.unwrap();
    let gvk = GroupVersionKind::gvk("harness.realtime-e2e.example", "v1", "Widget");
    let (resource, _) = kube::discovery::pinned_kind(&client, &gvk).await.unwrap();
    let api: Api<DynamicObject> = Api::namespaced_with(client, &ns, &resource);
    let widget = |size: i64| -> DynamicObject {
        from_json(json!({
            "apiVersion": "harness.realtime-e2e.example/v1", "kind": "Widget",
            "metadata": { "name": format!("w{size}") }, "spec": { "size": size },
        }))
    };
    api.create(&PostParams::default(), &widget(3))
        .await
        .unwrap();
    let bad = api.create(&PostParams::default(), &widget(0)).await;
    assert_eq!(api_code(&bad), Some(422), "{bad:?}");
    // Installing again is idempotent.
    cp.install_crds(&file).await.unwrap();
}

#[tokio::test]
async fn a_failed_start_names_the_process_and_shows_its_log() {
    let Some(tools) = Tools::require_control_plane() else {
        return;
    };
    // Real etcd and controller manager, and an "API server" that rejects its flags.
    let dir = tempfile::tempdir().unwrap();
    for b in ["etcd", "kube-controller-manager"] {
        std::os::unix::fs::symlink(tools.bin_dir.join(b), dir.path().join(b)).unwrap();
    }
    let fake = dir.path().join("kube-apiserver");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho \"Error: unknown flag: $1\" >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let broken = Tools {
        bin_dir: dir.path().to_path_buf(),
        ..tools
    };

    let started = std::time::Instant::now();
    let err = match ControlPlane::start(&broken).await {
        Ok(_) => panic!("started with a broken kube-apiserver"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "failure took {:?}",
        started.elapsed()
    );
    assert!(err.contains("kube-apiserver exited early"), "{err}");
    assert!(
        err.contains("Error: unknown flag: --etcd-servers="),
        "{err}"
    );
    assert!(err.contains("----- etcd (pid"), "{err}");
}
