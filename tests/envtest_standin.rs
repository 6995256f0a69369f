//! The in-memory cluster refuses what a real API server refuses: each test body below runs
//! twice, once against `MemoryCluster` and once against an envtest API server (through the
//! operator's own `KubeCluster`, as the operator's ServiceAccount with its ClusterRole), and
//! must pass on both. What is checked (the semantics Silo relies on):
//! - immutable fields (render/immutable.rs, the list the operator plans with) → 422, and the
//!   mutable neighbours of each → accepted; a Tenant's `spec.parent` → 422 (CRD rule);
//! - server-side apply merges by field manager: a field someone else added survives the
//!   operator's apply, a field the operator stops applying goes;
//! - a deleted Namespace is Terminating and refuses new content (403), updates still work;
//! - garbage collection follows ownerReferences (uid), not labels, and runs later;
//! - finalizer patches carry a resourceVersion: a stale one gets 409, a fresh read succeeds;
//! - a workload is not ready when applied;
//! - a claim that is not bound cannot grow.

mod envtest_support;

use std::time::Duration;

use kube::api::{Api, DeleteParams, DynamicObject, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::{self, Scope};
use serde_json::{Value, json};

use envtest_support::{Envtest, Identity, Options, apply_as, wait_until};
use silo::config::PlatformConfig;
use silo::hierarchy::{EngineSettings, Inventory, TenantTree};
use silo::operator::cluster::kube_client::{KubeCluster, classify};
use silo::operator::cluster::memory::{CONTROLLER, MemoryCluster};
use silo::operator::cluster::{ClusterError, ClusterResult, FailureKind, ObjectKey};
use silo::operator::reconcile::desired::{Desired, prepare};
use silo::operator::{Cluster, FINALIZER};
use silo::render::immutable::{self, IMMUTABLE_FIELDS};
use silo::types::{Member, Tenant, TenantSpec};

/// What happens in a cluster besides the operator's own calls: users, other controllers.
trait World {
    type C: Cluster;
    fn cluster(&self) -> &Self::C;
    /// A user creates or updates a Tenant (kubectl apply); the refusal, if any.
    async fn put_tenant(&self, t: Tenant) -> ClusterResult<()>;
    async fn tenant(&self, name: &str) -> Option<Tenant>;
    /// A user deletes a Tenant.
    async fn delete_tenant(&self, name: &str);
    async fn get(&self, key: &ObjectKey) -> Option<Value>;
    /// Exists with a deletionTimestamp.
    async fn terminating(&self, key: &ObjectKey) -> bool;
    /// An update (not an apply) of the object by field manager `manager` (kubectl edit).
    async fn edit(
        &self,
        manager: &str,
        key: &ObjectKey,
        f: impl FnOnce(&mut Value),
    ) -> ClusterResult<()>;
    /// Another controller or an administrator creates an object.
    async fn create(&self, key: &ObjectKey, manifest: Value);
    /// Waits (bounded) until `check` holds while the cluster's controllers work.
    async fn until(&self, what: &str, check: impl AsyncFn(&Self) -> Result<(), String>);
}

// ----- the stand-in -----

struct Memory(MemoryCluster);

impl World for Memory {
    type C = MemoryCluster;
    fn cluster(&self) -> &MemoryCluster {
        &self.0
    }
    async fn put_tenant(&self, t: Tenant) -> ClusterResult<()> {
        self.0.try_put_tenant(t)
    }
    async fn tenant(&self, name: &str) -> Option<Tenant> {
        self.0.tenant(name)
    }
    async fn delete_tenant(&self, name: &str) {
        self.0.request_tenant_deletion(name);
    }
    async fn get(&self, key: &ObjectKey) -> Option<Value> {
        self.0.get(key)
    }
    async fn terminating(&self, key: &ObjectKey) -> bool {
        self.0.is_terminating(key)
    }
    async fn edit(
        &self,
        manager: &str,
        key: &ObjectKey,
        f: impl FnOnce(&mut Value),
    ) -> ClusterResult<()> {
        self.0.edit_as(manager, key, f)
    }
    async fn create(&self, key: &ObjectKey, manifest: Value) {
        self.0.put_object(key, manifest);
    }
    async fn until(&self, what: &str, check: impl AsyncFn(&Self) -> Result<(), String>) {
        let mut last = String::new();
        for _ in 0..10 {
            match check(self).await {
                Ok(()) => return,
                Err(e) => last = e,
            }
            self.0.run_controllers();
        }
        panic!("{what}: not reached after 10 controller rounds; last: {last}");
    }
}

// ----- envtest -----

struct Real {
    env: Envtest,
    cluster: KubeCluster,
}

impl Real {
    /// None: the envtest binaries are missing (skipped, see envtest_support).
    async fn start(controller_manager: bool) -> Option<Real> {
        let env = Envtest::start_with(Options {
            controller_manager,
            ..Options::default()
        })
        .await?;
        env.install_crds().await;
        let operator = Identity::service_account("silo-system", "silo");
        env.install_operator_rbac(&operator).await;
        let cluster = KubeCluster::new(env.client(&operator).await, None);
        Some(Real { env, cluster })
    }

    async fn api(&self, key: &ObjectKey) -> Api<DynamicObject> {
        let (group, version) = match key.kind.as_str() {
            "StatefulSet" | "Deployment" => ("apps", "v1"),
            "Role" | "RoleBinding" => ("rbac.authorization.k8s.io", "v1"),
            "NetworkPolicy" => ("networking.k8s.io", "v1"),
            "StorageClass" => ("storage.k8s.io", "v1"),
            _ => ("", "v1"),
        };
        let gvk = GroupVersionKind::gvk(group, version, &key.kind);
        let admin = self.env.admin();
        let (ar, caps) = discovery::pinned_kind(&admin, &gvk)
            .await
            .unwrap_or_else(|e| panic!("discover {}: {e}", key.kind));
        match (&caps.scope, &key.namespace) {
            (Scope::Namespaced, Some(ns)) => Api::namespaced_with(admin, ns, &ar),
            _ => Api::all_with(admin, &ar),
        }
    }
}

impl World for Real {
    type C = KubeCluster;
    fn cluster(&self) -> &KubeCluster {
        &self.cluster
    }
    async fn put_tenant(&self, mut t: Tenant) -> ClusterResult<()> {
        let api: Api<Tenant> = Api::all(self.env.admin());
        let name = t.name().to_string();
        let what = format!("Tenant/{name}");
        let pp = PostParams::default();
        let r = match api
            .get_opt(&name)
            .await
            .map_err(|e| classify("get", &what, e))?
        {
            Some(old) => {
                t.metadata.resource_version = old.metadata.resource_version;
                api.replace(&name, &pp, &t).await
            }
            None => api.create(&pp, &t).await,
        };
        r.map(|_| ()).map_err(|e| classify("update", &what, e))
    }
    async fn tenant(&self, name: &str) -> Option<Tenant> {
        Api::<Tenant>::all(self.env.admin())
            .get_opt(name)
            .await
            .unwrap()
    }
    async fn delete_tenant(&self, name: &str) {
        Api::<Tenant>::all(self.env.admin())
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }
    async fn get(&self, key: &ObjectKey) -> Option<Value> {
        let o = self.api(key).await.get_opt(&key.name).await.unwrap()?;
        Some(serde_json::to_value(o).unwrap())
    }
    async fn terminating(&self, key: &ObjectKey) -> bool {
        self.get(key)
            .await
            .is_some_and(|o| o.pointer("/metadata/deletionTimestamp").is_some())
    }
    async fn edit(
        &self,
        manager: &str,
        key: &ObjectKey,
        f: impl FnOnce(&mut Value),
    ) -> ClusterResult<()> {
        let api = self.api(key).await;
        let mut v = self.get(key).await.expect("object to edit");
        f(&mut v);
        let o: DynamicObject = serde_json::from_value(v).unwrap();
        let pp = PostParams {
            field_manager: Some(manager.to_string()),
            ..Default::default()
        };
        api.replace(&key.name, &pp, &o)
            .await
            .map(|_| ())
            .map_err(|e| classify("update", key, e))
    }
    async fn create(&self, _key: &ObjectKey, manifest: Value) {
        apply_as(&self.env.admin(), manifest, CONTROLLER).await;
    }
    async fn until(&self, what: &str, check: impl AsyncFn(&Self) -> Result<(), String>) {
        if let Err(e) = wait_until(Duration::from_secs(90), || check(self)).await {
            panic!("{what}: not reached after 90 s; last: {e}");
        }
    }
}

// ----- helpers -----

fn tenant(name: &str, parent: Option<&str>) -> Tenant {
    Tenant::new(
        name,
        TenantSpec {
            parent: parent.map(str::to_string),
            ..Default::default()
        },
    )
}

/// The operator's objects for a Siloed tenant with one member, as it applies them (the
/// tenant has no uid here, so no owner references).
fn rendered(name: &str) -> Vec<Desired> {
    let mut t = tenant(name, None);
    t.spec.members = vec![Member {
        user: "carol@acme.example".into(),
        role: "admin".into(),
    }];
    let tree = TenantTree::build(
        Inventory {
            tenants: vec![t],
            ..Default::default()
        },
        EngineSettings::default(),
    );
    let id = tree.get(name).unwrap();
    silo::render::render_tenant(&tree, id, &PlatformConfig::default())
        .iter()
        .map(prepare)
        .collect()
}

fn find<'a>(objects: &'a [Desired], kind: &str, name_start: &str) -> &'a Desired {
    objects
        .iter()
        .find(|d| d.key.kind == kind && d.key.name.starts_with(name_start))
        .unwrap_or_else(|| panic!("no {kind} {name_start}*"))
}

fn changed(d: &Desired, pointer: &str, value: Value) -> Value {
    let mut m = d.manifest.clone();
    *m.pointer_mut(pointer)
        .unwrap_or_else(|| panic!("{}: no {pointer}", d.key)) = value;
    m
}

fn refused(e: &ClusterError, kind: FailureKind, fragments: &[&str]) {
    assert_eq!(e.kind, kind, "{e}");
    for f in fragments {
        assert!(e.message.contains(f), "{e}\nlacks {f:?}");
    }
}

fn cm(ns: &str, name: &str, data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": name, "namespace": ns}, "data": data})
}

fn ns(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
}

// ----- the bodies -----

/// Every rendered field of the list is refused in place with the server's words (which the
/// operator recognises), and a mutable neighbour of each is accepted.
async fn immutable_fields_are_refused<W: World>(w: &W) {
    let c = w.cluster();
    let objects = rendered("imm");
    for d in &objects {
        c.apply(&d.key, &d.manifest)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let binding = find(&objects, "RoleBinding", "silo-member-");
    let sts = find(&objects, "StatefulSet", "silo-postgres");
    let deploy = find(&objects, "Deployment", "silo-mosquitto");
    let db_svc = find(&objects, "Service", "silo-postgres");
    let cases: [(&Desired, &str, Value, &str); 6] = [
        (
            binding,
            "/roleRef/name",
            json!("silo-viewer"),
            "RoleBinding.rbac.authorization.k8s.io",
        ),
        (
            sts,
            "/spec/volumeClaimTemplates/0/spec/resources/requests/storage",
            json!("2Gi"),
            "StatefulSet.apps",
        ),
        (sts, "/spec/serviceName", json!("other"), "StatefulSet.apps"),
        (
            sts,
            "/spec/selector/matchLabels/app.kubernetes.io~1name",
            json!("other"),
            "StatefulSet.apps",
        ),
        (
            deploy,
            "/spec/selector/matchLabels/app.kubernetes.io~1name",
            json!("other"),
            "Deployment.apps",
        ),
        (db_svc, "/spec/clusterIP", json!("10.96.200.200"), "Service"),
    ];
    for (d, pointer, value, qualified) in cases {
        let e = c
            .apply(&d.key, &changed(d, pointer, value))
            .await
            .expect_err(pointer);
        eprintln!("{pointer}: {}", e.message);
        let prefix = format!("{qualified} \"{}\" is invalid: ", d.key.name);
        refused(&e, FailureKind::Invalid, &[&prefix]);
        assert!(
            immutable::is_immutable_refusal(&d.key.kind, &e.message),
            "{e}"
        );
        let named: Vec<_> = IMMUTABLE_FIELDS
            .iter()
            .filter(|f| f.kind == d.key.kind && e.message.contains(f.server_message))
            .filter(|f| pointer.starts_with(f.pointer))
            .collect();
        assert!(!named.is_empty(), "{pointer} not recognised in {e}");
    }
    // Positive controls: what changes in place.
    for (d, pointer, value) in [
        (binding, "/subjects/0/name", json!("dave@acme.example")),
        (sts, "/spec/replicas", json!(0)),
        (deploy, "/spec/replicas", json!(0)),
        (db_svc, "/spec/ports/0/port", json!(5433)),
    ] {
        c.apply(&d.key, &changed(d, pointer, value))
            .await
            .unwrap_or_else(|e| panic!("{pointer}: {e}"));
    }
    // Listed though not rendered: ConfigMap data once immutable, a Secret's type.
    let frozen = ObjectKey::new("ConfigMap", Some("tenant-imm"), "frozen");
    let mut m = cm("tenant-imm", "frozen", json!({"k": "v"}));
    m["immutable"] = json!(true);
    c.apply(&frozen, &m).await.unwrap();
    let e = w
        .edit("kubectl-edit", &frozen, |o| o["data"]["k"] = json!("w"))
        .await
        .unwrap_err();
    refused(&e, FailureKind::Invalid, &["data: ", "field is immutable"]);
    let secret = ObjectKey::new("Secret", Some("tenant-imm"), "typed");
    c.create_secret(
        &secret,
        &json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": "typed", "namespace": "tenant-imm"}, "data": {}}),
    )
    .await
    .unwrap();
    let e = w
        .edit("kubectl-edit", &secret, |o| {
            o["type"] = json!("kubernetes.io/tls")
        })
        .await
        .unwrap_err();
    refused(&e, FailureKind::Invalid, &["type: ", "field is immutable"]);
}

async fn a_tenant_cannot_change_parent<W: World>(w: &W) {
    for t in [
        tenant("root-a", None),
        tenant("root-b", None),
        tenant("kid", Some("root-a")),
    ] {
        w.put_tenant(t).await.unwrap();
    }
    let e = w
        .put_tenant(tenant("kid", Some("root-b")))
        .await
        .unwrap_err();
    refused(
        &e,
        FailureKind::Invalid,
        &[
            "Tenant.silo.dev \"kid\" is invalid: spec.parent: ",
            "spec.parent is immutable",
        ],
    );
    // Positive control: another field of the same Tenant changes.
    let mut kid = tenant("kid", Some("root-a"));
    kid.spec.display_name = "Kid".into();
    w.put_tenant(kid).await.unwrap();
    assert_eq!(w.tenant("kid").await.unwrap().spec.display_name, "Kid");
}

async fn apply_keeps_fields_of_other_managers<W: World>(w: &W) {
    let c = w.cluster();
    let key = ObjectKey::new("ConfigMap", Some("ssa"), "settings");
    c.apply(&ObjectKey::new("Namespace", None, "ssa"), &ns("ssa"))
        .await
        .unwrap();
    c.apply(&key, &cm("ssa", "settings", json!({"a": "1", "b": "2"})))
        .await
        .unwrap();
    w.edit("kubectl-edit", &key, |o| {
        o["metadata"]["labels"] = json!({"team": "blue"});
        o["data"]["a"] = json!("edited");
        o["data"]["c"] = json!("3");
    })
    .await
    .unwrap();
    // The operator applies again, without `b` now.
    c.apply(&key, &cm("ssa", "settings", json!({"a": "1"})))
        .await
        .unwrap();
    let got = w.get(&key).await.unwrap();
    assert_eq!(got["data"], json!({"a": "1", "c": "3"}), "{got}");
    assert_eq!(got["metadata"]["labels"]["team"], "blue", "{got}");
}

async fn a_terminating_namespace_refuses_new_content<W: World>(w: &W) {
    let c = w.cluster();
    let ns_key = ObjectKey::new("Namespace", None, "doomed");
    let old = ObjectKey::new("ConfigMap", Some("doomed"), "old");
    c.apply(&ns_key, &ns("doomed")).await.unwrap();
    c.apply(&old, &cm("doomed", "old", json!({"k": "v"})))
        .await
        .unwrap();
    c.delete(&ns_key).await.unwrap();
    assert!(w.terminating(&ns_key).await, "Terminating, not gone");
    let new = ObjectKey::new("ConfigMap", Some("doomed"), "new");
    let e = c
        .apply(&new, &cm("doomed", "new", json!({})))
        .await
        .unwrap_err();
    refused(
        &e,
        FailureKind::Forbidden,
        &["unable to create new content in namespace doomed because it is being terminated"],
    );
    let secret = ObjectKey::new("Secret", Some("doomed"), "s");
    let e = c
        .create_secret(
            &secret,
            &json!({"apiVersion": "v1", "kind": "Secret",
                    "metadata": {"name": "s", "namespace": "doomed"}, "data": {}}),
        )
        .await
        .unwrap_err();
    refused(
        &e,
        FailureKind::Forbidden,
        &["because it is being terminated"],
    );
    // What is inside may still change until the namespace controller removes it.
    c.apply(&old, &cm("doomed", "old", json!({"k": "w"})))
        .await
        .unwrap();
}

async fn garbage_collection_follows_owner_references<W: World>(w: &W) {
    let c = w.cluster();
    w.put_tenant(tenant("gc", None)).await.unwrap();
    let uid = w.tenant("gc").await.unwrap().metadata.uid.unwrap();
    let owner = json!([{"apiVersion": "silo.dev/v1alpha1", "kind": "Tenant", "name": "gc",
                        "uid": uid, "controller": true, "blockOwnerDeletion": true}]);
    let labels = json!({"silo.dev/tenant": "gc"});
    let owned = ObjectKey::new("Namespace", None, "gc-owned");
    let inside = ObjectKey::new("ConfigMap", Some("gc-owned"), "inside");
    let labelled = ObjectKey::new("Namespace", None, "gc-labelled");
    let mut m = ns("gc-owned");
    m["metadata"]["ownerReferences"] = owner.clone();
    m["metadata"]["labels"] = labels.clone();
    c.apply(&owned, &m).await.unwrap();
    c.apply(&inside, &cm("gc-owned", "inside", json!({})))
        .await
        .unwrap();
    let mut m = ns("gc-labelled");
    m["metadata"]["labels"] = labels;
    c.apply(&labelled, &m).await.unwrap();
    w.delete_tenant("gc").await;
    w.until(
        "the owned namespace and its content collected",
        async |w| match (w.get(&owned).await, w.get(&inside).await) {
            (None, None) => Ok(()),
            other => Err(format!("still there: {other:?}")),
        },
    )
    .await;
    assert!(
        w.get(&labelled).await.is_some(),
        "a label is no ownerReference: not collected"
    );
}

async fn finalizer_patches_conflict_on_a_stale_version<W: World>(w: &W) {
    let c = w.cluster();
    w.put_tenant(tenant("fin", None)).await.unwrap();
    let stale = w.tenant("fin").await.unwrap();
    let mut t = tenant("fin", None);
    t.spec.display_name = "changed by a user".into();
    w.put_tenant(t).await.unwrap();
    let e = c.add_finalizer(&stale).await.unwrap_err();
    refused(
        &e,
        FailureKind::Conflict,
        &[
            "the object has been modified; please apply your changes to the latest version and try again",
        ],
    );
    let fresh = c.get_tenant("fin").await.unwrap().unwrap();
    c.add_finalizer(&fresh).await.unwrap();
    let now = w.tenant("fin").await.unwrap();
    assert_eq!(
        now.metadata.finalizers.as_deref(),
        Some(&[FINALIZER.to_string()][..])
    );
    assert_eq!(now.spec.display_name, "changed by a user");
    // Removing with the version read before that patch conflicts too.
    let e = c.remove_finalizer(&fresh).await.unwrap_err();
    assert_eq!(e.kind, FailureKind::Conflict, "{e}");
    c.remove_finalizer(&now).await.unwrap();
}

async fn workloads_are_not_ready_when_applied<W: World>(w: &W) {
    let c = w.cluster();
    let objects = rendered("rdy");
    for d in &objects {
        c.apply(&d.key, &d.manifest).await.unwrap();
    }
    for kind in ["StatefulSet", "Deployment"] {
        let d = objects.iter().find(|d| d.key.kind == kind).unwrap();
        let r = c.readiness(&d.key).await.unwrap().unwrap();
        assert_eq!((r.desired, r.ready), (1, 0), "{}", d.key);
    }
}

async fn an_unbound_claim_cannot_grow<W: World>(w: &W) {
    let c = w.cluster();
    c.apply(&ObjectKey::new("Namespace", None, "pvc"), &ns("pvc"))
        .await
        .unwrap();
    let key = ObjectKey::new("PersistentVolumeClaim", Some("pvc"), "data-db-0");
    w.create(
        &key,
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
               "metadata": {"name": "data-db-0", "namespace": "pvc"},
               "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "standard",
                        "resources": {"requests": {"storage": "1Gi"}}},
               "status": {"phase": "Pending"}}),
    )
    .await;
    assert_eq!(
        c.claim_storage("pvc", "data-db-0")
            .await
            .unwrap()
            .as_deref(),
        Some("1Gi")
    );
    assert_eq!(c.claim_storage("pvc", "absent").await.unwrap(), None);
    let e = c.resize_claim("pvc", "data-db-0", "2Gi").await.unwrap_err();
    refused(
        &e,
        FailureKind::Invalid,
        &["spec is immutable after creation except resources.requests"],
    );
}

// ----- the same bodies on both -----

macro_rules! on_both {
    ($body:ident, $standin:ident, $envtest:ident, $controller_manager:expr) => {
        #[tokio::test]
        async fn $standin() {
            $body(&Memory(MemoryCluster::new())).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $envtest() {
            let Some(w) = Real::start($controller_manager).await else {
                return;
            };
            $body(&w).await;
        }
    };
}

on_both!(
    immutable_fields_are_refused,
    standin_refuses_immutable_fields,
    envtest_refuses_immutable_fields,
    false
);
on_both!(
    a_tenant_cannot_change_parent,
    standin_refuses_a_parent_change,
    envtest_refuses_a_parent_change,
    false
);
on_both!(
    apply_keeps_fields_of_other_managers,
    standin_apply_keeps_fields_of_other_managers,
    envtest_apply_keeps_fields_of_other_managers,
    false
);
on_both!(
    a_terminating_namespace_refuses_new_content,
    standin_terminating_namespace_refuses_new_content,
    envtest_terminating_namespace_refuses_new_content,
    false
);
on_both!(
    garbage_collection_follows_owner_references,
    standin_collects_garbage_by_owner_reference,
    envtest_collects_garbage_by_owner_reference,
    true
);
on_both!(
    finalizer_patches_conflict_on_a_stale_version,
    standin_finalizer_patches_conflict_on_a_stale_version,
    envtest_finalizer_patches_conflict_on_a_stale_version,
    false
);
on_both!(
    workloads_are_not_ready_when_applied,
    standin_workloads_are_not_ready_when_applied,
    envtest_workloads_are_not_ready_when_applied,
    false
);
on_both!(
    an_unbound_claim_cannot_grow,
    standin_an_unbound_claim_cannot_grow,
    envtest_an_unbound_claim_cannot_grow,
    false
);

#[test]
fn the_table_names_only_fields_of_kinds_silo_writes() {
    let kinds: std::collections::BTreeSet<&str> = IMMUTABLE_FIELDS.iter().map(|f| f.kind).collect();
    for k in &kinds {
        assert!(
            silo::operator::cluster::OwnedKind::from_name(k).is_some()
                || ["Secret", "Tenant"].contains(k),
            "{k}"
        );
    }
}
