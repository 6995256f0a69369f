//! Reconcile flows against the in-memory cluster (no API server needed).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use silo::backends::memory::MemoryShared;
use silo::config::PlatformConfig;
use silo::operator::cluster::ObjectKey;
use silo::operator::cluster::memory::MemoryCluster;
use silo::operator::controller::mappers;
use silo::operator::key_service::{KeyFuture, KeyService, ProviderKeys, TenantKey, WrappedDataKey};
use silo::operator::reconcile::pass::{Pass, reconcile_pass};
use silo::operator::{Next, Reconciler};
use silo::types::tenant::{DeletionPolicy, KeyStatus};
use silo::types::{
    Isolation, LimitProfile, LimitProfileSpec, Limits, Member, Phase, QuantityValue, Subject,
    SubjectKind, Tenant, TenantSpec,
};

/// The real `local` key provider (in-memory keyring), recording which tenants were shredded.
struct FakeKeys {
    inner: ProviderKeys,
    shredded: Mutex<Vec<String>>,
}

impl KeyService for FakeKeys {
    fn ensure_key<'a>(
        &'a self,
        tenant: &'a str,
        parent: Option<&'a str>,
        rotation_days: Option<u32>,
    ) -> KeyFuture<'a, TenantKey> {
        self.inner.ensure_key(tenant, parent, rotation_days)
    }
    fn schedule_key_deletion<'a>(&'a self, tenant: &'a str) -> KeyFuture<'a, ()> {
        self.shredded.lock().unwrap().push(tenant.to_string());
        self.inner.schedule_key_deletion(tenant)
    }
    fn seal<'a>(
        &'a self,
        tenant: &'a str,
        purpose: &'a str,
        plain: &'a [u8],
    ) -> KeyFuture<'a, Vec<u8>> {
        self.inner.seal(tenant, purpose, plain)
    }
    fn open<'a>(
        &'a self,
        tenant: &'a str,
        purpose: &'a str,
        sealed: &'a [u8],
    ) -> KeyFuture<'a, Vec<u8>> {
        self.inner.open(tenant, purpose, sealed)
    }
    fn wrapped_data_key<'a>(&'a self, tenant: &'a str) -> KeyFuture<'a, WrappedDataKey> {
        self.inner.wrapped_data_key(tenant)
    }
    fn rewrap_data_key<'a>(
        &'a self,
        tenant: &'a str,
        wrapped: &'a [u8],
    ) -> KeyFuture<'a, WrappedDataKey> {
        self.inner.rewrap_data_key(tenant, wrapped)
    }
    fn rotate_now<'a>(&'a self, tenant: &'a str) -> KeyFuture<'a, KeyStatus> {
        self.inner.rotate_now(tenant)
    }
}

struct World {
    cluster: Arc<MemoryCluster>,
    keys: Arc<FakeKeys>,
    shared: Arc<MemoryShared>,
    rec: Reconciler<Arc<MemoryCluster>>,
}

/// A world without shared services configured.
async fn world() -> World {
    let mut w = world_with_shared().await;
    w.rec = w.rec.with_shared(Arc::new(silo::backends::Unconfigured));
    w
}

/// A world with the in-memory shared PostgreSQL and Mosquitto.
async fn world_with_shared() -> World {
    let cluster = Arc::new(MemoryCluster::new());
    let keys = Arc::new(FakeKeys {
        inner: ProviderKeys::in_memory().await.unwrap(),
        shredded: Mutex::new(Vec::new()),
    });
    let shared = Arc::new(MemoryShared::new());
    let rec = Reconciler::new(
        cluster.clone(),
        PlatformConfig::default(),
        keys.clone(),
        None,
    )
    .with_shared(shared.clone());
    World {
        cluster,
        keys,
        shared,
        rec,
    }
}

fn spec(parent: Option<&str>) -> TenantSpec {
    TenantSpec {
        parent: parent.map(str::to_string),
        display_name: "x".into(),
        ..Default::default()
    }
}

fn tenant(name: &str, spec: TenantSpec) -> Tenant {
    Tenant::new(name, spec)
}

impl World {
    async fn pass(&self) -> Pass {
        reconcile_pass(&self.rec, self.cluster.inventory()).await
    }

    /// Passes until one makes no writes; returns the number of passes. Between passes the
    /// cluster's controllers catch up (garbage collection, namespace deletion, pods ready),
    /// as they would on a real cluster while the operator waits to requeue.
    async fn settle(&self) -> usize {
        for i in 1..=20 {
            self.cluster.run_controllers();
            let before = self.cluster.writes().total();
            let pass = self.pass().await;
            assert!(pass.failures().is_empty(), "{:?}", pass.failures());
            if self.cluster.writes().total() == before {
                return i;
            }
        }
        panic!("did not settle in 20 passes");
    }

    fn five_levels(&self) {
        let names = ["root", "dist", "dealer", "sub", "cust"];
        for (i, n) in names.iter().enumerate() {
            let mut s = spec(if i == 0 { None } else { Some(names[i - 1]) });
            s.admins = vec![Subject {
                kind: SubjectKind::User,
                name: format!("{n}-admin@example.com"),
                namespace: None,
            }];
            s.members = vec![
                Member {
                    user: format!("{n}-tech@example.com"),
                    role: "technician".into(),
                },
                Member {
                    user: format!("{n}-boss@example.com"),
                    role: "admin".into(),
                },
            ];
            self.cluster.put_tenant(tenant(n, s));
        }
    }

    fn phase(&self, name: &str) -> Option<Phase> {
        self.cluster.tenant(name)?.status?.phase
    }

    fn condition(&self, name: &str, type_: &str) -> (String, String, String) {
        let st = self.cluster.tenant(name).unwrap().status.unwrap();
        let c = st.conditions.iter().find(|c| c.type_ == type_).unwrap();
        (c.status.clone(), c.reason.clone(), c.message.clone())
    }

    fn snapshot(&self, tenant: &str) -> BTreeMap<String, serde_json::Value> {
        self.cluster
            .owned_keys(tenant)
            .into_iter()
            .map(|k| (k.to_string(), self.cluster.get(&k).unwrap()))
            .collect()
    }
}

fn ns_key(t: &str) -> ObjectKey {
    ObjectKey::new("Namespace", None, &format!("tenant-{t}"))
}

fn key(kind: &str, t: &str, name: &str) -> ObjectKey {
    ObjectKey::new(kind, Some(&format!("tenant-{t}")), name)
}

fn member_bindings(w: &World, t: &str) -> Vec<String> {
    w.cluster
        .owned_keys(t)
        .into_iter()
        .filter(|k| k.kind == "RoleBinding" && k.name.starts_with("silo-member-"))
        .map(|k| k.name)
        .collect()
}

#[tokio::test]
async fn five_level_tree_gets_every_object_with_labels_and_owner_references() {
    let w = world().await;
    w.five_levels();
    w.settle().await;
    for n in ["root", "dist", "dealer", "sub", "cust"] {
        let t = w.cluster.tenant(n).unwrap();
        let uid = t.metadata.uid.clone().unwrap();
        assert_eq!(w.phase(n), Some(Phase::Ready), "{n}");
        assert!(
            t.metadata
                .finalizers
                .unwrap()
                .contains(&"silo.dev/cleanup".to_string())
        );
        let st = t.status.unwrap();
        assert_eq!(
            st.namespace.as_deref(),
            Some(format!("tenant-{n}").as_str())
        );
        assert_eq!(st.observed_generation, Some(1));
        let keys = w.cluster.owned_keys(n);
        let kinds: std::collections::BTreeSet<&str> =
            keys.iter().map(|k| k.kind.as_str()).collect();
        for kind in [
            "Namespace",
            "LimitRange",
            "NetworkPolicy",
            "Role",
            "RoleBinding",
            "ServiceAccount",
            "ConfigMap",
            "Service",
            "StatefulSet",
            "Deployment",
        ] {
            assert!(kinds.contains(kind), "{n} lacks a {kind}");
        }
        for k in &keys {
            let obj = w.cluster.get(k).unwrap();
            assert_eq!(obj["metadata"]["labels"]["silo.dev/tenant"], n, "{k}");
            assert_eq!(
                obj["metadata"]["ownerReferences"][0]["uid"],
                uid.as_str(),
                "{k}"
            );
            assert_eq!(
                obj["metadata"]["ownerReferences"][0]["kind"], "Tenant",
                "{k}"
            );
            assert!(
                obj["metadata"]["annotations"]["silo.dev/applied-hash"].is_string(),
                "{k}"
            );
            if k.kind != "Namespace" {
                assert_eq!(
                    k.namespace.as_deref(),
                    Some(format!("tenant-{n}").as_str()),
                    "{k}"
                );
            }
        }
    }
    let st = w.cluster.tenant("cust").unwrap().status.unwrap();
    assert_eq!(st.depth, Some(5));
    assert_eq!(st.path, vec!["root", "dist", "dealer", "sub", "cust"]);
    let ns = w.cluster.get(&ns_key("cust")).unwrap();
    assert_eq!(ns["metadata"]["labels"]["silo.dev/parent"], "sub");
    // Admins of every ancestor reach the deepest tenant.
    let ancestors = w
        .cluster
        .get(&key("RoleBinding", "cust", "silo-ancestor-admins"))
        .unwrap();
    let subjects = ancestors["subjects"].as_array().unwrap();
    assert_eq!(subjects.len(), 4, "{subjects:?}");
    // A tenant's objects never land in another tenant's namespace.
    for k in w.cluster.owned_keys("dealer") {
        assert_ne!(k.namespace.as_deref(), Some("tenant-cust"));
    }
}

#[tokio::test]
async fn steady_state_reconcile_makes_zero_writes() {
    let w = world().await;
    w.five_levels();
    w.settle().await;
    let before = w.cluster.writes();
    // 5 tenants x (3 credential Secrets + 1 data key), 5 tenant CAs, 1 root CA: created
    // once, then only read.
    assert_eq!(
        before.secrets, 26,
        "credential Secrets created while settling"
    );
    let reads = w.cluster.secret_reads();
    let pass = w.pass().await;
    assert_eq!(
        w.cluster.secret_reads(),
        reads,
        "a steady-state pass reads no Secret (all unchanged since checked)"
    );
    assert_eq!(
        w.cluster.writes(),
        before,
        "a steady-state pass must not write"
    );
    for (name, r) in &pass.outcomes {
        let o = r.as_ref().unwrap();
        assert_eq!(
            (o.applied, o.deleted, o.status_written),
            (0, 0, false),
            "{name}"
        );
        assert_eq!(o.next, Next::Requeue(silo::operator::reconcile::RESYNC));
    }
}

/// Each event is a write to the API server: a new tenant's credentials and data key are
/// reported inside the one `Applied` note of the reconcile that created them (a `Secret
/// written` event per part would cost three more writes per tenant), and that note is folded
/// into the phase-change event of the same reconcile: one event per reconcile (here the
/// in-memory cluster's workloads are not ready at once: Provisioning, then Ready). A later
/// reconcile that only rewrites a Secret reports it on its own.
#[tokio::test]
async fn a_new_tenant_gets_one_event_per_reconcile_naming_its_objects_secrets_and_data_key() {
    let w = world().await;
    w.cluster.put_tenant(tenant("acme", spec(None)));
    w.settle().await;
    let events = w.cluster.events_for("acme");
    let reasons: Vec<&str> = events.iter().map(|e| e.reason.as_str()).collect();
    assert_eq!(
        reasons,
        vec!["Provisioning", "Ready"],
        "no separate Applied"
    );
    let note = &events[0].note;
    assert!(
        note.starts_with("waiting for the silo to become ready; applied "),
        "{note}"
    );
    assert!(
        note.contains("wrote Secret(s) ") && note.contains("silo-postgres-credentials"),
        "{note}"
    );
    assert!(note.contains("data key wrapped by key "), "{note}");
    assert!(
        !reasons.contains(&"SecretsWritten") && !reasons.contains(&"DataKeyWritten"),
        "{reasons:?}"
    );

    // Positive control: only a Secret rewritten, no object applied: its own event.
    let secret = key("Secret", "acme", "silo-postgres-credentials");
    assert!(w.cluster.delete_behind_our_back(&secret));
    w.pass().await;
    let events = w.cluster.events_for("acme");
    let last = events.last().unwrap();
    assert_eq!(last.reason, "SecretsWritten", "{events:?}");
    assert!(
        last.note.contains("silo-postgres-credentials"),
        "{}",
        last.note
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| e.note.contains("applied "))
            .count(),
        1,
        "nothing else was applied"
    );
}

#[tokio::test]
async fn drift_is_repaired() {
    let w = world().await;
    w.five_levels();
    let mut s = spec(None);
    s.limits.cpu = Some(QuantityValue::new("4"));
    w.cluster.put_tenant(tenant("quota", s));
    w.settle().await;
    let np = key("NetworkPolicy", "dealer", "silo-isolation");
    let np = w
        .cluster
        .owned_keys("dealer")
        .into_iter()
        .find(|k| k.kind == "NetworkPolicy")
        .unwrap_or(np);
    let original_np = w.cluster.get(&np).unwrap();
    assert!(w.cluster.delete_behind_our_back(&np));
    let q = key("ResourceQuota", "quota", "silo-quota");
    let original_q = w.cluster.get(&q).unwrap();
    assert!(w.cluster.edit_behind_our_back(&q, |o| {
        o["spec"]["hard"]["requests.cpu"] = "400".into();
    }));
    let before = w.cluster.writes().applies;
    w.pass().await;
    assert_eq!(
        w.cluster.writes().applies - before,
        2,
        "exactly the two drifted objects"
    );
    assert_eq!(w.cluster.get(&np).unwrap(), original_np);
    assert_eq!(w.cluster.get(&q).unwrap(), original_q);
    let before = w.cluster.writes();
    w.pass().await;
    assert_eq!(
        w.cluster.writes(),
        before,
        "repaired drift is not repaired again"
    );
}

#[tokio::test]
async fn removed_member_loses_its_rolebinding() {
    let w = world().await;
    w.five_levels();
    w.settle().await;
    assert_eq!(member_bindings(&w, "dealer").len(), 2);
    let mut t = w.cluster.tenant("dealer").unwrap();
    t.spec.members.retain(|m| m.role != "technician");
    w.cluster.put_tenant(t);
    let pass = w.pass().await;
    assert_eq!(pass.outcome("dealer").unwrap().deleted, 1);
    let left = member_bindings(&w, "dealer");
    assert_eq!(left.len(), 1);
    assert!(left[0].contains("dealer-boss"), "{left:?}");
    assert_eq!(
        member_bindings(&w, "cust").len(),
        2,
        "other tenants untouched"
    );
    let ev = w.cluster.events_for("dealer");
    assert!(
        ev.last()
            .unwrap()
            .note
            .contains("deleted RoleBinding/tenant-dealer/silo-member-"),
        "{ev:?}"
    );
}

#[tokio::test]
async fn switching_to_shared_removes_the_siloed_workloads() {
    let w = world().await;
    w.five_levels();
    w.settle().await;
    let mut t = w.cluster.tenant("sub").unwrap();
    t.spec.isolation = Isolation::Shared;
    w.cluster.put_tenant(t);
    w.settle().await;
    let kinds: Vec<String> = w
        .cluster
        .owned_keys("sub")
        .into_iter()
        .map(|k| k.kind)
        .collect();
    assert!(!kinds.contains(&"StatefulSet".to_string()), "{kinds:?}");
    assert!(!kinds.contains(&"Deployment".to_string()), "{kinds:?}");
    assert!(kinds.contains(&"NetworkPolicy".to_string()));
    let (status, reason, _) = w.condition("sub", "DatabaseReady");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "SharedNotConfigured")
    );
    let (_, _, msg) = w.condition("sub", "BrokerReady");
    assert_eq!(
        msg,
        "shared Mosquitto is not configured (set shared.mosquitto.host and shared.mosquitto.adminSecret in the platform configuration)"
    );
    assert_eq!(
        w.phase("sub"),
        Some(Phase::Provisioning),
        "a Shared tenant without shared services is not Ready"
    );
}

#[tokio::test]
async fn profile_change_fans_out_to_users_and_their_subtrees() {
    let w = world().await;
    w.five_levels();
    w.cluster.put_profile(LimitProfile::new(
        "gold",
        LimitProfileSpec {
            owner: "root".into(),
            limits: Limits {
                devices: Some(1000),
                cpu: Some(QuantityValue::new("8")),
                ..Default::default()
            },
        },
    ));
    let mut t = w.cluster.tenant("dealer").unwrap();
    t.spec.limit_profile = Some("gold".into());
    w.cluster.put_tenant(t);
    // Below a quota every tenant has its own (carved out of its parent's).
    for (n, cpu) in [("sub", "2"), ("cust", "1")] {
        let mut t = w.cluster.tenant(n).unwrap();
        t.spec.limits.cpu = Some(QuantityValue::new(cpu));
        w.cluster.put_tenant(t);
    }
    w.settle().await;
    let limits = |n: &str| {
        w.cluster
            .tenant(n)
            .unwrap()
            .status
            .unwrap()
            .effective_limits
            .unwrap()
    };
    assert_eq!(limits("cust").devices, Some(1000));

    w.cluster.put_profile(LimitProfile::new(
        "gold",
        LimitProfileSpec {
            owner: "root".into(),
            limits: Limits {
                devices: Some(500),
                cpu: Some(QuantityValue::new("6")),
                ..Default::default()
            },
        },
    ));
    // Only the tenants the mapper names are reconciled…
    let inv = w.cluster.inventory();
    let refs: Vec<&Tenant> = inv.tenants.iter().collect();
    let affected = mappers::affected_by_profile(&refs, "gold");
    assert_eq!(affected, vec!["cust", "dealer", "dist", "sub"]);
    let tree = silo::hierarchy::TenantTree::build(inv.clone(), Default::default());
    for n in &affected {
        w.rec.reconcile(&tree, n).await.unwrap();
    }
    for n in ["cust", "dealer", "sub"] {
        assert_eq!(limits(n).devices, Some(500), "{n}");
    }
    let q = w
        .cluster
        .get(&key("ResourceQuota", "dealer", "silo-quota"))
        .unwrap();
    assert_eq!(
        q["spec"]["hard"]["requests.cpu"], "4",
        "6 for dealer's subtree, of which sub takes 2"
    );
    assert_eq!(limits("dealer").cpu, Some(QuantityValue::new("6")));
    // …and that was enough: a full pass finds nothing left to do.
    let before = w.cluster.writes();
    w.pass().await;
    assert_eq!(w.cluster.writes(), before);
    assert_eq!(
        limits("dist").devices,
        None,
        "tenants above the users are unaffected"
    );
}

#[tokio::test]
async fn suspension_covers_the_subtree_and_resume_restores_it_exactly() {
    let w = world().await;
    w.five_levels();
    w.settle().await;
    let before: Vec<_> = ["dealer", "sub", "cust"]
        .iter()
        .map(|t| w.snapshot(t))
        .collect();
    let mut t = w.cluster.tenant("dealer").unwrap();
    t.spec.suspended = true;
    w.cluster.put_tenant(t);
    // A parent's change requeues its descendants.
    let inv = w.cluster.inventory();
    let refs: Vec<&Tenant> = inv.tenants.iter().collect();
    let changed = inv.tenants.iter().find(|t| t.name() == "dealer").unwrap();
    assert_eq!(
        mappers::affected_by_tenant(&refs, changed),
        vec!["cust", "dist", "sub"]
    );
    w.settle().await;
    for n in ["dealer", "sub", "cust"] {
        assert_eq!(w.phase(n), Some(Phase::Suspended), "{n}");
        let bindings = member_bindings(&w, n);
        assert_eq!(
            bindings.len(),
            1,
            "only the admin member keeps access: {bindings:?}"
        );
        let db = w
            .cluster
            .get(&key("StatefulSet", n, "silo-postgres"))
            .unwrap();
        assert_eq!(db["spec"]["replicas"], 0);
        let mq = w
            .cluster
            .get(&key("Deployment", n, "silo-mosquitto"))
            .unwrap();
        assert_eq!(mq["spec"]["replicas"], 0);
        let (_, reason, msg) = w.condition(n, "BrokerReady");
        assert_eq!(reason, "Suspended");
        assert!(msg.contains("suspended by dealer"), "{msg}");
    }
    assert_eq!(w.phase("dist"), Some(Phase::Ready));
    assert!(
        w.cluster
            .events_for("cust")
            .iter()
            .any(|e| e.reason == "Suspended")
    );

    let mut t = w.cluster.tenant("dealer").unwrap();
    t.spec.suspended = false;
    w.cluster.put_tenant(t);
    w.settle().await;
    let after: Vec<_> = ["dealer", "sub", "cust"]
        .iter()
        .map(|t| w.snapshot(t))
        .collect();
    assert_eq!(
        before, after,
        "resume restores exactly the previous objects"
    );
    assert_eq!(w.phase("cust"), Some(Phase::Ready));
    assert!(
        w.cluster
            .events_for("cust")
            .iter()
            .any(|e| e.reason == "Resumed")
    );
}

#[tokio::test]
async fn retain_refuses_deletion_while_children_exist() {
    let w = world().await;
    w.five_levels();
    w.settle().await;
    let objects_before = w.cluster.object_count();
    w.cluster.request_tenant_deletion("dealer");
    let pass = w.pass().await;
    let o = pass.outcome("dealer").unwrap();
    assert_eq!(o.phase, Phase::Deleting);
    assert!(matches!(o.next, Next::Requeue(_)));
    assert_eq!(w.phase("dealer"), Some(Phase::Deleting));
    let (status, reason, msg) = w.condition("dealer", "Ready");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "DeletionBlocked")
    );
    assert!(msg.contains("1 child tenant(s) still exist (sub)"), "{msg}");
    let ev = w.cluster.events_for("dealer");
    let blocked = ev.iter().find(|e| e.reason == "DeletionBlocked").unwrap();
    assert!(blocked.warning);
    assert_eq!(w.cluster.object_count(), objects_before, "nothing removed");
    assert!(w.keys.shredded.lock().unwrap().is_empty());
    // Still refused on the next pass, without a new event.
    let events = ev.len();
    w.pass().await;
    assert_eq!(w.cluster.events_for("dealer").len(), events);
    assert!(w.cluster.tenant("dealer").is_some());
    // A leaf goes at once, with its namespace and key.
    w.cluster.request_tenant_deletion("cust");
    w.settle().await;
    assert!(w.cluster.tenant("cust").is_none());
    assert!(w.cluster.owned_keys("cust").is_empty());
    assert!(w.cluster.get(&ns_key("cust")).is_none());
    assert_eq!(*w.keys.shredded.lock().unwrap(), vec!["cust"]);
}

#[tokio::test]
async fn cascade_deletes_descendants_bottom_up() {
    let w = world().await;
    w.five_levels();
    let mut t = w.cluster.tenant("dist").unwrap();
    t.spec.deletion_policy = DeletionPolicy::Cascade;
    w.cluster.put_tenant(t);
    w.settle().await;
    w.cluster.request_tenant_deletion("dist");
    w.settle().await;
    for n in ["dist", "dealer", "sub", "cust"] {
        assert!(w.cluster.tenant(n).is_none(), "{n} still exists");
        assert!(
            w.cluster.get(&ns_key(n)).is_none(),
            "namespace of {n} remains"
        );
        assert!(w.cluster.owned_keys(n).is_empty(), "objects of {n} remain");
    }
    assert_eq!(
        *w.keys.shredded.lock().unwrap(),
        vec!["cust", "sub", "dealer", "dist"],
        "bottom-up"
    );
    assert_eq!(w.phase("root"), Some(Phase::Ready));
    assert!(!w.cluster.owned_keys("root").is_empty());
}

#[tokio::test]
async fn a_finalizer_patch_on_a_stale_tenant_rereads_it_and_succeeds() {
    // The operator works from its watch cache; a user changes the Tenant right after it was
    // read. The finalizer patch carries the cached resourceVersion and gets 409; a retry must
    // re-read the Tenant (retrying with the same stale object conflicts every time).
    let w = world().await;
    w.cluster.put_tenant(tenant("solo", spec(None)));
    let stale = w.cluster.inventory();
    let mut t = w.cluster.tenant("solo").unwrap();
    t.spec.display_name = "Solo GmbH".into();
    w.cluster.put_tenant(t);
    let pass = reconcile_pass(&w.rec, stale).await;
    assert!(pass.failures().is_empty(), "{:?}", pass.failures());
    assert_eq!(
        w.cluster.conflicts_injected(),
        1,
        "the stale patch met a 409"
    );
    let solo = w.cluster.tenant("solo").unwrap();
    assert_eq!(
        solo.metadata.finalizers.as_deref(),
        Some(&[silo::operator::FINALIZER.to_string()][..])
    );
    assert_eq!(
        solo.spec.display_name, "Solo GmbH",
        "the user's change stays"
    );
    w.settle().await;
    assert_eq!(w.phase("solo"), Some(Phase::Ready));
}

#[tokio::test]
async fn a_concurrent_writer_is_retried_with_fresh_reads() {
    let w = world().await;
    w.cluster.put_tenant(tenant("solo", spec(None)));
    // Another writer changes the Tenant right before the next finalizer patch.
    w.cluster.inject_conflicts(1);
    let pass = w.pass().await;
    assert!(pass.failures().is_empty(), "{:?}", pass.failures());
    assert_eq!(w.cluster.conflicts_injected(), 1);
    assert!(w.cluster.get(&ns_key("solo")).is_some());
    w.settle().await;
    assert_eq!(w.phase("solo"), Some(Phase::Ready));
}

#[tokio::test]
async fn persistent_conflicts_fail_only_that_tenant_as_transient() {
    let w = world().await;
    w.cluster.put_tenant(tenant("solo", spec(None)));
    w.cluster.inject_conflicts(3);
    let pass = w.pass().await;
    let f = pass.failures();
    assert_eq!(f.len(), 1);
    assert!(f[0].1.is_transient());
    assert_eq!(f[0].1.metric_label(), "conflict");
    let ev = w.cluster.events_for("solo");
    assert!(
        ev.iter().any(|e| e.warning && e.reason == "ApplyFailed"),
        "{ev:?}"
    );
    w.settle().await;
    assert_eq!(w.phase("solo"), Some(Phase::Ready));
}

#[tokio::test]
async fn an_invalid_tenant_does_not_stop_the_others() {
    let w = world().await;
    w.five_levels();
    w.cluster.put_tenant(tenant("orphan", spec(Some("nobody"))));
    w.settle().await;
    assert_eq!(w.phase("orphan"), Some(Phase::Failed));
    let (status, reason, msg) = w.condition("orphan", "Ready");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "InvalidSpec"));
    assert!(msg.contains("spec.parent"), "{msg}");
    assert!(msg.contains("nobody"), "{msg}");
    assert!(
        w.cluster.owned_keys("orphan").is_empty(),
        "nothing created for it"
    );
    let ev = w.cluster.events_for("orphan");
    assert_eq!(ev.iter().filter(|e| e.reason == "InvalidSpec").count(), 1);
    for n in ["root", "dist", "dealer", "sub", "cust"] {
        assert_eq!(w.phase(n), Some(Phase::Ready), "{n}");
    }
    // No hot loop: it waits for a change, and further passes write nothing for it.
    let pass = w.pass().await;
    assert_eq!(pass.outcome("orphan").unwrap().next, Next::AwaitChange);
    assert_eq!(w.cluster.events_for("orphan").len(), ev.len());
    // Its parent cannot be changed (the CRD rule and the webhook refuse it, as the
    // in-memory cluster does) ...
    let mut moved = w.cluster.tenant("orphan").unwrap();
    moved.spec.parent = Some("root".into());
    let refused = w.cluster.try_put_tenant(moved).unwrap_err();
    assert_eq!(refused.kind, silo::operator::cluster::FailureKind::Invalid);
    assert!(
        refused.message.contains("spec.parent is immutable"),
        "{refused}"
    );
    // ... but the missing parent can be created, which brings it up.
    w.cluster.put_tenant(tenant("nobody", spec(Some("root"))));
    w.settle().await;
    assert_eq!(w.phase("orphan"), Some(Phase::Ready));
    assert_eq!(
        w.cluster.tenant("orphan").unwrap().status.unwrap().path,
        vec!["root", "nobody", "orphan"]
    );
}

#[tokio::test]
async fn readiness_is_honest_about_workloads() {
    let w = world().await;
    w.cluster.put_tenant(tenant("acme", spec(None)));
    w.cluster
        .set_unready(&key("StatefulSet", "acme", "silo-postgres"), true);
    w.settle().await;
    assert_eq!(w.phase("acme"), Some(Phase::Provisioning));
    let (status, reason, msg) = w.condition("acme", "DatabaseReady");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "NotReady"));
    assert_eq!(
        msg,
        "StatefulSet tenant-acme/silo-postgres has 0/1 ready replicas"
    );
    let (_, _, ready) = w.condition("acme", "Ready");
    assert!(
        ready.contains("DatabaseReady: StatefulSet tenant-acme/silo-postgres"),
        "{ready}"
    );
    let (status, ..) = w.condition("acme", "BrokerReady");
    assert_eq!(status, "True");
    // Waiting only for a workload: no polling, the watch on the StatefulSet triggers the
    // tenant when its status changes (a long safety resync remains).
    let pass = w.pass().await;
    assert_eq!(
        pass.outcome("acme").unwrap().next,
        Next::Requeue(silo::operator::reconcile::WAIT_WORKLOADS)
    );
    w.cluster
        .set_unready(&key("StatefulSet", "acme", "silo-postgres"), false);
    w.settle().await;
    assert_eq!(w.phase("acme"), Some(Phase::Ready));
}

#[tokio::test]
async fn without_a_key_provider_the_tenant_is_not_ready() {
    let cluster = Arc::new(MemoryCluster::new());
    let rec = Reconciler::new(
        cluster.clone(),
        PlatformConfig::default(),
        Arc::new(silo::operator::key_service::NoKeyService),
        None,
    );
    cluster.put_tenant(tenant("acme", spec(None)));
    reconcile_pass(&rec, cluster.inventory()).await;
    let st = cluster.tenant("acme").unwrap().status.unwrap();
    let key = st
        .conditions
        .iter()
        .find(|c| c.type_ == "KeyReady")
        .unwrap();
    assert_eq!(
        (key.status.as_str(), key.reason.as_str()),
        ("Unknown", "NoKeyProvider")
    );
    assert_eq!(st.phase, Some(Phase::Provisioning));
}

#[tokio::test]
async fn a_tree_with_old_statuses_and_live_tenants_makes_zero_writes() {
    // The controller rebuilds the tree on structural changes only, so the tree may hold
    // statuses older than the live objects; the live object decides what to write.
    let w = world().await;
    w.five_levels();
    w.cluster.put_tenant(tenant("acme", spec(None)));
    w.cluster
        .set_unready(&key("StatefulSet", "acme", "silo-postgres"), true);
    w.settle().await;
    let old = silo::hierarchy::TenantTree::build(w.cluster.inventory(), Default::default());
    w.cluster
        .set_unready(&key("StatefulSet", "acme", "silo-postgres"), false);
    w.settle().await;
    assert_eq!(w.phase("acme"), Some(Phase::Ready));
    let before = w.cluster.writes();
    for n in ["root", "dist", "dealer", "sub", "cust", "acme"] {
        let live = w.cluster.tenant(n).unwrap();
        let o = w.rec.reconcile_live(&old, n, Some(&live)).await.unwrap();
        assert!(!o.status_written, "{n}");
    }
    assert_eq!(w.cluster.writes(), before);
    // Without the live object the old tree's status would be rewritten.
    let o = w.rec.reconcile(&old, "acme").await.unwrap();
    assert!(o.status_written);
}

// ---- Shared isolation: a database and a broker client on the shared services ----

/// Decoded data of a stored Secret.
fn secret(w: &World, t: &str, name: &str) -> Option<BTreeMap<String, String>> {
    use base64::Engine as _;
    let v = w.cluster.get(&key("Secret", t, name))?;
    let data = v["data"].as_object()?;
    Some(
        data.iter()
            .map(|(k, v)| {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(v.as_str().unwrap())
                    .unwrap();
                (k.clone(), String::from_utf8(raw).unwrap())
            })
            .collect(),
    )
}

/// A master channel owned by `root`, open to its whole subtree.
fn teltonika() -> silo::types::Channel {
    silo::types::Channel::new(
        "teltonika",
        silo::types::ChannelSpec {
            owner: "root".into(),
            protocol: Default::default(),
            max_connections: Some(50_000),
            visibility: None,
        },
    )
}

fn shared_tenant(name: &str, parent: Option<&str>) -> Tenant {
    let mut s = spec(parent);
    s.isolation = Isolation::Shared;
    tenant(name, s)
}

#[tokio::test]
async fn shared_tenant_gets_its_own_database_and_broker_client_and_is_ready() {
    let w = world_with_shared().await;
    w.cluster.put_tenant(tenant("root", spec(None)));
    w.cluster.put_tenant(shared_tenant("cust", Some("root")));
    w.settle().await;
    assert_eq!(w.phase("cust"), Some(Phase::Ready));
    let db_name = silo::backends::database_name("cust");
    let db = secret(&w, "cust", "silo-postgres-credentials").unwrap();
    assert_eq!(db["host"], "postgres.shared.svc");
    assert_eq!(db["port"], "5432");
    assert_eq!(db["database"], db_name);
    assert_eq!(db["username"], db_name);
    let stored = &w.shared.databases()[&db_name];
    assert_eq!(stored.password, db["password"]);
    assert!(stored.login);
    let mq = secret(&w, "cust", "silo-mosquitto-credentials").unwrap();
    assert_eq!(mq["username"], "cust");
    assert_eq!(mq["topicPrefix"], "tenants/cust/");
    assert!(
        !mq.contains_key("passwd"),
        "no password file for a shared broker"
    );
    let client = &w.shared.clients()["cust"];
    assert_eq!(client.password, mq["password"]);
    assert_eq!(client.topics, vec!["tenants/cust/#".to_string()]);
    assert_eq!(client.role, "silo-tenant-cust");
    assert!(
        secret(&w, "cust", "silo-mosquitto-tls").is_none(),
        "the shared broker's TLS is not the tenant's"
    );
    let (status, reason, msg) = w.condition("cust", "DatabaseReady");
    assert_eq!((status.as_str(), reason.as_str()), ("True", "Provisioned"));
    assert!(
        msg.contains(&format!("postgres.shared.svc:5432/{db_name}")),
        "{msg}"
    );
    let st = w.cluster.tenant("cust").unwrap().status.unwrap();
    let ep = st.endpoints.unwrap();
    assert_eq!(ep.mqtt.as_deref(), Some("mosquitto.shared.svc:1883"));
    assert_eq!(st.secrets.len(), 2);
    assert!(
        w.cluster
            .events_for("cust")
            .iter()
            .any(|e| e.reason == "SharedProvisioned")
    );
    // No workloads of its own.
    let kinds: Vec<String> = w
        .cluster
        .owned_keys("cust")
        .into_iter()
        .map(|k| k.kind)
        .collect();
    assert!(
        !kinds
            .iter()
            .any(|k| k == "StatefulSet" || k == "Deployment")
    );

    // Steady state: no cluster writes, no changes on the shared services.
    let (writes, changes) = (w.cluster.writes().total(), w.shared.changes());
    w.pass().await;
    assert_eq!(w.cluster.writes().total(), writes);
    assert_eq!(w.shared.changes(), changes);
}

#[tokio::test]
async fn shared_service_outage_is_reported_and_recovers() {
    let w = world_with_shared().await;
    w.cluster.put_tenant(tenant("root", spec(None)));
    w.cluster.put_tenant(shared_tenant("cust", Some("root")));
    w.cluster.put_tenant(tenant("other", spec(Some("root"))));
    w.shared.set_down(Some(silo::backends::Service::Postgres));
    w.settle().await;
    assert_eq!(w.phase("cust"), Some(Phase::Provisioning));
    assert_eq!(w.phase("other"), Some(Phase::Ready), "others unaffected");
    let (status, reason, msg) = w.condition("cust", "DatabaseReady");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "SharedUnavailable")
    );
    assert_eq!(msg, "shared PostgreSQL at memory: connection refused");
    let (status, ..) = w.condition("cust", "BrokerReady");
    assert_eq!(
        status, "True",
        "the broker part does not depend on PostgreSQL"
    );
    let pass = w.pass().await;
    assert_eq!(
        pass.outcome("cust").unwrap().next,
        Next::Requeue(silo::operator::reconcile::WAIT_READY)
    );
    assert!(
        w.cluster
            .events_for("cust")
            .iter()
            .any(|e| e.warning && e.reason == "SharedUnavailable")
    );
    w.shared.set_down(None);
    w.settle().await;
    assert_eq!(w.phase("cust"), Some(Phase::Ready));
    let db = secret(&w, "cust", "silo-postgres-credentials").unwrap();
    assert_eq!(
        w.shared.databases()[&silo::backends::database_name("cust")].password,
        db["password"],
        "the Secret written during the outage is the one the database got"
    );
}

#[tokio::test]
async fn suspension_disables_shared_login_and_client_and_resume_restores_them() {
    let w = world_with_shared().await;
    w.cluster.put_tenant(tenant("root", spec(None)));
    w.cluster.put_tenant(tenant("dealer", spec(Some("root"))));
    w.cluster.put_tenant(shared_tenant("cust", Some("dealer")));
    w.settle().await;
    let db_name = silo::backends::database_name("cust");
    let password = w.shared.databases()[&db_name].password.clone();
    let mut t = w.cluster.tenant("dealer").unwrap();
    t.spec.suspended = true;
    w.cluster.put_tenant(t);
    w.settle().await;
    assert_eq!(w.phase("cust"), Some(Phase::Suspended));
    assert!(!w.shared.databases()[&db_name].login);
    assert!(!w.shared.clients()["cust"].enabled);
    let (status, reason, msg) = w.condition("cust", "DatabaseReady");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "Suspended"));
    assert!(msg.contains("suspended by dealer (data kept)"), "{msg}");
    let mut t = w.cluster.tenant("dealer").unwrap();
    t.spec.suspended = false;
    w.cluster.put_tenant(t);
    w.settle().await;
    assert_eq!(w.phase("cust"), Some(Phase::Ready));
    assert!(w.shared.databases()[&db_name].login);
    assert!(w.shared.clients()["cust"].enabled);
    assert_eq!(
        w.shared.databases()[&db_name].password,
        password,
        "credentials survive a suspension"
    );
}

#[tokio::test]
async fn shared_client_acls_follow_the_channels_the_tenant_uses() {
    let w = world_with_shared().await;
    w.cluster.put_tenant(tenant("root", spec(None)));
    w.cluster.put_channel(teltonika());
    let mut t = shared_tenant("cust", Some("root"));
    t.spec.channels = vec!["teltonika".into()];
    w.cluster.put_tenant(t);
    w.settle().await;
    assert_eq!(
        w.shared.clients()["cust"].topics,
        vec![
            "tenants/cust/#".to_string(),
            "channels/teltonika/cust/#".to_string()
        ]
    );
    let mut t = w.cluster.tenant("cust").unwrap();
    t.spec.channels.clear();
    w.cluster.put_tenant(t);
    w.settle().await;
    assert_eq!(
        w.shared.clients()["cust"].topics,
        vec!["tenants/cust/#".to_string()]
    );
}

#[tokio::test]
async fn isolation_switches_move_the_credentials_and_retire_the_shared_database() {
    let w = world_with_shared().await;
    w.cluster.put_tenant(tenant("root", spec(None)));
    w.cluster.put_tenant(tenant("cust", spec(Some("root"))));
    w.settle().await;
    let siloed_db = secret(&w, "cust", "silo-postgres-credentials").unwrap();
    assert!(secret(&w, "cust", "silo-mosquitto-tls").is_some());

    // Siloed → Shared: the credential Secrets are replaced by the shared shape.
    let mut t = w.cluster.tenant("cust").unwrap();
    t.spec.isolation = Isolation::Shared;
    w.cluster.put_tenant(t);
    w.settle().await;
    assert_eq!(w.phase("cust"), Some(Phase::Ready));
    let db = secret(&w, "cust", "silo-postgres-credentials").unwrap();
    assert_eq!(db["host"], "postgres.shared.svc");
    assert_ne!(db["password"], siloed_db["password"]);
    let mq = secret(&w, "cust", "silo-mosquitto-credentials").unwrap();
    assert!(!mq.contains_key("passwd"), "{mq:?}");
    assert!(
        secret(&w, "cust", "silo-mosquitto-tls").is_none(),
        "the dedicated broker's TLS Secret went with it"
    );

    // Shared → Siloed: the shared database is retired (kept), the client removed.
    let mut t = w.cluster.tenant("cust").unwrap();
    t.spec.isolation = Isolation::Siloed;
    w.cluster.put_tenant(t);
    w.settle().await;
    assert_eq!(w.phase("cust"), Some(Phase::Ready));
    let dbs = w.shared.databases();
    assert!(!dbs.contains_key(&silo::backends::database_name("cust")));
    let retired: Vec<_> = dbs
        .iter()
        .filter(|(n, _)| n.starts_with("silo_r_"))
        .collect();
    assert_eq!(retired.len(), 1, "{dbs:?}");
    assert!(!retired[0].1.login);
    assert!(w.shared.clients().is_empty());
    // (Leaving runs once per credential Secret of the shared shape; it is idempotent.)
    let cleared = w.shared.retained_cleared_for();
    assert!(
        !cleared.is_empty() && cleared.iter().all(|t| t == "cust"),
        "{cleared:?}"
    );
    let db = secret(&w, "cust", "silo-postgres-credentials").unwrap();
    assert!(!db.contains_key("host"), "{db:?}");
    assert_eq!(db["username"], "silo");
    assert!(secret(&w, "cust", "silo-mosquitto-credentials").unwrap()["passwd"].contains("$7$"));
    assert!(
        w.cluster
            .events_for("cust")
            .iter()
            .any(|e| e.reason == "LeftShared" && e.note.contains("retired"))
    );
}

#[tokio::test]
async fn deleting_a_shared_tenant_retires_its_database_and_a_new_one_starts_empty() {
    let w = world_with_shared().await;
    w.cluster.put_tenant(tenant("root", spec(None)));
    w.cluster.put_tenant(shared_tenant("cust", Some("root")));
    w.settle().await;
    let db_name = silo::backends::database_name("cust");

    // The shared PostgreSQL is down: the finalizer holds, nothing is lost.
    w.shared.set_down(Some(silo::backends::Service::Postgres));
    w.cluster.request_tenant_deletion("cust");
    let pass = w.pass().await;
    assert!(
        pass.failures()
            .iter()
            .any(|(n, e)| *n == "cust" && e.to_string().contains("connection refused")),
        "{:?}",
        pass.failures()
    );
    assert!(w.cluster.tenant("cust").is_some());
    assert!(w.shared.databases().contains_key(&db_name));

    // The shared Mosquitto is down: the database is retired, the finalizer still holds
    // until the broker part (client removal, retained messages) is done.
    w.shared.set_down(Some(silo::backends::Service::Mosquitto));
    let pass = w.pass().await;
    assert!(
        pass.failures()
            .iter()
            .any(|(n, e)| *n == "cust" && e.to_string().contains("shared Mosquitto")),
        "{:?}",
        pass.failures()
    );
    assert!(w.cluster.tenant("cust").is_some());
    assert!(!w.shared.databases().contains_key(&db_name));
    assert!(w.shared.retained_cleared_for().is_empty());

    w.shared.set_down(None);
    let pass = w.pass().await;
    assert!(pass.failures().is_empty(), "{:?}", pass.failures());
    assert!(w.cluster.tenant("cust").is_none());
    assert!(w.shared.clients().is_empty());
    assert_eq!(w.shared.retained_cleared_for(), ["cust"]);
    let dbs = w.shared.databases();
    assert!(!dbs.contains_key(&db_name));
    assert_eq!(dbs.keys().filter(|n| n.starts_with("silo_r_")).count(), 1);
    let deleted = w
        .cluster
        .events_for("cust")
        .into_iter()
        .find(|e| e.reason == "Deleted")
        .unwrap();
    // (The database was retired by the pass the broker outage failed; the final pass
    // reports what it did itself.)
    assert!(
        deleted.note.contains("shared broker client cust removed"),
        "{}",
        deleted.note
    );

    // Its namespace is Terminating until the namespace controller has emptied and removed it.
    assert!(w.cluster.is_terminating(&ns_key("cust")));
    w.cluster.run_controllers();
    assert!(
        w.cluster.is_terminating(&ns_key("cust")),
        "emptied, not yet gone"
    );
    // Recreated at once with the same name: nothing new can be created in the old namespace
    // yet; the API server's 403 fails the reconcile, which is retried with backoff.
    w.cluster.put_tenant(shared_tenant("cust", Some("root")));
    let pass = w.pass().await;
    let f = pass.failures();
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].0, "cust");
    assert!(f[0].1.is_transient());
    assert!(
        f[0].1.to_string().contains(
            "unable to create new content in namespace tenant-cust because it is being terminated"
        ),
        "{}",
        f[0].1
    );
    // Once the namespace is gone, the new silo comes up: a fresh database, new credentials.
    w.settle().await;
    assert_eq!(w.phase("cust"), Some(Phase::Ready));
    assert!(!w.cluster.is_terminating(&ns_key("cust")));
    let dbs = w.shared.databases();
    assert!(dbs[&db_name].login);
    assert_eq!(dbs.len(), 2, "the retired one is kept: {dbs:?}");
}

#[tokio::test]
async fn a_deleted_shared_credential_secret_gets_a_new_password_on_the_server() {
    let w = world_with_shared().await;
    w.cluster.put_tenant(tenant("root", spec(None)));
    w.cluster.put_tenant(shared_tenant("cust", Some("root")));
    w.settle().await;
    let old = secret(&w, "cust", "silo-mosquitto-credentials").unwrap()["password"].clone();
    assert!(
        w.cluster
            .delete_behind_our_back(&key("Secret", "cust", "silo-mosquitto-credentials"))
    );
    w.settle().await;
    let new = secret(&w, "cust", "silo-mosquitto-credentials").unwrap()["password"].clone();
    assert_ne!(old, new);
    assert_eq!(w.shared.clients()["cust"].password, new);
}

// ---- Keys: the wrapped data key in the tenant namespace, rotation on request ----

/// The wrapped data key of a `silo-data-key` Secret's data.
fn wrapped_key(d: &BTreeMap<String, String>) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(&d["wrappedKey"])
        .unwrap()
}

#[tokio::test]
async fn every_tenant_gets_its_wrapped_data_key_and_a_rotation_request_rewraps_it() {
    let w = world_with_shared().await;
    w.cluster.put_tenant(tenant("root", spec(None)));
    w.cluster.put_tenant(shared_tenant("cust", Some("root")));
    w.settle().await;
    for t in ["root", "cust"] {
        let d = secret(&w, t, "silo-data-key").unwrap();
        assert_eq!(d["keyVersion"], "1");
        assert_eq!(d["purpose"], "data-key");
        let wrapped = wrapped_key(&d);
        // Only the tenant's own key unwraps it.
        let plain = w.keys.open(t, "data-key", &wrapped).await.unwrap();
        assert_eq!(plain.len(), 32);
        let other = if t == "root" { "cust" } else { "root" };
        let e = w
            .keys
            .open(other, "data-key", &wrapped)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!("decrypting data-key of tenant {other}: "))
                && e.contains(&format!("not under tenant \"{other}\"'s current key")),
            "{e}"
        );
    }
    let before = secret(&w, "cust", "silo-data-key").unwrap();
    let plain_before = w
        .keys
        .open("cust", "data-key", &wrapped_key(&before))
        .await
        .unwrap();

    // POST /v1/tenants/cust/rotate-key sets the annotation; the operator rotates once.
    let mut t = w.cluster.tenant("cust").unwrap();
    t.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(
            silo::operator::reconcile::ROTATE_KEY_ANNOTATION.into(),
            "req-1".into(),
        );
    w.cluster.put_tenant(t);
    w.settle().await;
    let st = w.cluster.tenant("cust").unwrap().status.unwrap();
    let key = st.key.unwrap();
    assert_eq!(key.version, 2);
    assert_eq!(key.rotation_request.as_deref(), Some("req-1"));
    let after = secret(&w, "cust", "silo-data-key").unwrap();
    assert_eq!(after["keyVersion"], "2");
    assert_ne!(after["wrappedKey"], before["wrappedKey"]);
    let plain_after = w
        .keys
        .open("cust", "data-key", &wrapped_key(&after))
        .await
        .unwrap();
    assert_eq!(plain_after, plain_before, "the same data key, re-wrapped");
    let ev = w.cluster.events_for("cust");
    assert_eq!(ev.iter().filter(|e| e.reason == "KeyRotated").count(), 1);
    // Handled once: further passes neither rotate nor write.
    let writes = w.cluster.writes().total();
    w.pass().await;
    assert_eq!(w.cluster.writes().total(), writes);
    assert_eq!(
        w.cluster
            .tenant("cust")
            .unwrap()
            .status
            .unwrap()
            .key
            .unwrap()
            .version,
        2
    );
    // Root untouched.
    assert_eq!(
        secret(&w, "root", "silo-data-key").unwrap()["keyVersion"],
        "1"
    );
}

#[tokio::test]
async fn a_data_key_wrapped_by_another_key_is_reported_not_replaced() {
    let w = world_with_shared().await;
    w.cluster.put_tenant(tenant("root", spec(None)));
    w.settle().await;
    let k = key("Secret", "root", "silo-data-key");
    let original = w.cluster.get(&k).unwrap();
    w.cluster.edit_behind_our_back(&k, |v| {
        use base64::Engine as _;
        v["data"]["keyId"] =
            serde_json::json!(base64::engine::general_purpose::STANDARD.encode("someone-else"));
    });
    w.pass().await;
    let (status, reason, msg) = w.condition("root", "KeyReady");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "DataKeyFailed")
    );
    assert!(msg.contains("not replaced"), "{msg}");
    assert_eq!(
        w.cluster.get(&k).unwrap()["data"]["wrappedKey"],
        original["data"]["wrappedKey"],
        "the stored data key is kept"
    );
}

#[tokio::test]
async fn housekeeping_destroys_expired_keys_and_drops_databases_after_retention() {
    use silo::backends::SharedServices;
    use silo::keys::local::{LocalProvider, MemoryKeyringStore};
    use std::sync::atomic::{AtomicI64, Ordering};
    const DAY: i64 = 86_400;
    let t0 = time::OffsetDateTime::now_utc().unix_timestamp();
    let now = Arc::new(AtomicI64::new(t0));
    let clock: silo::keys::local::Clock = {
        let now = now.clone();
        Arc::new(move || {
            time::OffsetDateTime::from_unix_timestamp(now.load(Ordering::SeqCst)).unwrap()
        })
    };
    let local = Arc::new(
        LocalProvider::open_with_clock(Arc::new(MemoryKeyringStore::default()), 30, clock.clone())
            .await
            .unwrap(),
    );
    let keys = ProviderKeys::with_clock(local, clock);
    let shared = MemoryShared::new();
    keys.ensure_key("gone", None, None).await.unwrap();
    keys.schedule_key_deletion("gone").await.unwrap();
    let db = silo::backends::database_name("gone");
    shared
        .ensure_database(&silo::backends::DatabaseAccount {
            tenant: "gone".into(),
            database: db.clone(),
            password: "pw".into(),
            reset_password: true,
            login: true,
        })
        .await
        .unwrap();
    assert!(shared.retire_database(&db, t0).await.unwrap());

    // Day 6: within both windows (retentionDays 7, key deletion window 30): nothing goes.
    now.store(t0 + 6 * DAY, Ordering::SeqCst);
    let at = |d: i64| time::OffsetDateTime::from_unix_timestamp(t0 + d * DAY).unwrap();
    let (k, d) =
        silo::operator::controller::housekeeping::housekeeping_once(&keys, &shared, 7, at(6)).await;
    assert!(k.is_empty() && d.is_empty());
    // Day 8: the database's retention has passed, the key's window has not.
    now.store(t0 + 8 * DAY, Ordering::SeqCst);
    let (k, d) =
        silo::operator::controller::housekeeping::housekeeping_once(&keys, &shared, 7, at(8)).await;
    assert!(k.is_empty());
    assert_eq!(d.len(), 1);
    assert!(shared.databases().is_empty());
    // Day 31: the key material is destroyed.
    now.store(t0 + 31 * DAY, Ordering::SeqCst);
    let (k, _) =
        silo::operator::controller::housekeeping::housekeeping_once(&keys, &shared, 7, at(31))
            .await;
    assert_eq!(k.len(), 1, "{k:?}");
}

#[tokio::test]
async fn channel_status_names_the_tenants_using_it_and_follows_changes() {
    use silo::backends::SharedServices;
    use silo::types::Channel;
    let w = world_with_shared().await;
    w.cluster.put_tenant(tenant("root", spec(None)));
    w.cluster.put_channel(teltonika());
    for n in ["b", "a"] {
        let mut t = shared_tenant(n, Some("root"));
        t.spec.channels = vec!["teltonika".into()];
        w.cluster.put_tenant(t);
    }
    w.settle().await;
    let broker = w.shared.broker_endpoint();
    let sync = || async {
        let inv = w.cluster.inventory();
        let c: Vec<&Channel> = inv.channels.iter().collect();
        let t: Vec<&Tenant> = inv.tenants.iter().collect();
        let facts = silo::operator::channels::ChannelFacts::default();
        silo::operator::channels::sync(&*w.cluster, &c, &t, broker.as_ref(), &facts).await
    };
    let (written, errors) = sync().await;
    assert!(errors.is_empty());
    assert_eq!(written, vec!["teltonika"]);
    let st = w.cluster.channel("teltonika").unwrap().status.unwrap();
    assert_eq!(st.tenants, vec!["a", "b"]);
    assert_eq!(
        st.endpoint.as_deref(),
        Some("mosquitto.shared.svc:1883/channels/teltonika/")
    );
    // Unchanged: no write.
    let (written, _) = sync().await;
    assert!(written.is_empty());
    // A tenant stops using it.
    let mut t = w.cluster.tenant("b").unwrap();
    t.spec.channels.clear();
    w.cluster.put_tenant(t);
    let (written, _) = sync().await;
    assert_eq!(written, vec!["teltonika"]);
    assert_eq!(
        w.cluster
            .channel("teltonika")
            .unwrap()
            .status
            .unwrap()
            .tenants,
        vec!["a"]
    );
}

#[tokio::test]
async fn a_secret_changed_behind_our_back_is_read_again() {
    let w = world().await;
    w.cluster.put_tenant(tenant("acme", spec(None)));
    w.settle().await;
    assert_eq!(w.phase("acme"), Some(Phase::Ready));
    let k = key("Secret", "acme", "silo-postgres-credentials");
    w.cluster.edit_behind_our_back(&k, |v| {
        v["data"].as_object_mut().unwrap().remove("password");
    });
    w.pass().await;
    let (status, reason, msg) = w.condition("acme", "DatabaseReady");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "SecretMissing")
    );
    assert!(msg.contains("has no key \"password\""), "{msg}");
    // Deleted: recreated on the next pass.
    assert!(w.cluster.delete_behind_our_back(&k));
    w.settle().await;
    assert!(secret(&w, "acme", "silo-postgres-credentials").unwrap()["password"].len() >= 32);
    assert_eq!(w.phase("acme"), Some(Phase::Ready));
}

// ----- Changes the API server will not make in place (render/immutable.rs) -----

fn with_member(name: &str, user: &str, role: &str) -> Tenant {
    let mut s = spec(None);
    s.members = vec![Member {
        user: user.into(),
        role: role.into(),
    }];
    tenant(name, s)
}

fn binding(w: &World, t: &str, name: &str) -> Option<serde_json::Value> {
    w.cluster.get(&key("RoleBinding", t, name))
}

#[tokio::test]
async fn a_demoted_member_gets_a_new_binding_and_loses_the_stronger_one() {
    // The example: carol admin → viewer. roleRef cannot change in place (the
    // in-memory cluster answers 422 as the API server does), so the role is part of the
    // binding's name: the viewer binding is created, then the admin binding deleted.
    use silo::render::rbac::member_binding_name;
    let w = world().await;
    w.cluster
        .put_tenant(with_member("acme", "carol@acme.example", "admin"));
    w.settle().await;
    let admin = member_binding_name("carol@acme.example", "admin");
    let viewer = member_binding_name("carol@acme.example", "viewer");
    assert_eq!(
        binding(&w, "acme", &admin).unwrap()["roleRef"]["name"],
        "silo-admin"
    );
    w.cluster
        .put_tenant(with_member("acme", "carol@acme.example", "viewer"));
    let pass = w.pass().await;
    assert!(pass.failures().is_empty(), "{:?}", pass.failures());
    assert_eq!(member_bindings(&w, "acme"), vec![viewer.clone()]);
    assert_eq!(
        binding(&w, "acme", &viewer).unwrap()["roleRef"]["name"],
        "silo-viewer"
    );
    let (status, reason, msg) = w.condition("acme", "AccessReady");
    assert_eq!((status.as_str(), reason.as_str()), ("True", "Applied"));
    assert_eq!(
        msg,
        "roles and bindings for 0 admin(s) and 1 member(s) applied"
    );
    let applied = w.cluster.events_for("acme").pop().unwrap();
    assert_eq!(applied.reason, "Applied");
    assert!(
        applied
            .note
            .contains(&format!("deleted RoleBinding/tenant-acme/{admin}")),
        "{}",
        applied.note
    );
    // Negative control: the same object changed in place is what the API server refuses.
    let mut changed = binding(&w, "acme", &viewer).unwrap();
    changed["roleRef"]["name"] = "silo-admin".into();
    let err =
        silo::operator::Cluster::apply(&*w.cluster, &key("RoleBinding", "acme", &viewer), &changed)
            .await
            .unwrap_err();
    assert!(err.message.contains("roleRef: Invalid value"), "{err}");
    assert!(err.message.contains("cannot change roleRef"), "{err}");
}

#[tokio::test]
async fn a_refused_binding_is_reported_and_never_leaves_the_stronger_one_behind() {
    use silo::render::rbac::member_binding_name;
    let w = world().await;
    w.cluster
        .put_tenant(with_member("acme", "carol@acme.example", "admin"));
    w.settle().await;
    let admin = member_binding_name("carol@acme.example", "admin");
    let viewer = member_binding_name("carol@acme.example", "viewer");
    // A policy of the cluster refuses the new binding (422); the demotion and a settings
    // change arrive together.
    let viewer_key = key("RoleBinding", "acme", &viewer);
    w.cluster
        .refuse_by_policy(&viewer_key, Some("bindings need a ticket number"));
    let mut t = with_member("acme", "carol@acme.example", "viewer");
    t.spec.settings = serde_json::from_value(serde_json::json!({"units": "metric"})).unwrap();
    w.cluster.put_tenant(t);
    let pass = w.pass().await;
    assert!(pass.failures().is_empty(), "a refusal is not a retry loop");
    let o = pass.outcome("acme").unwrap();
    assert_eq!(o.phase, Phase::Failed);
    assert_eq!(o.next, Next::Requeue(silo::operator::reconcile::RESYNC));
    // The stronger binding is gone although its replacement was refused.
    assert!(binding(&w, "acme", &admin).is_none());
    assert!(member_bindings(&w, "acme").is_empty());
    let (status, reason, msg) = w.condition("acme", "AccessReady");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "Rejected"));
    assert!(
        msg.starts_with(&format!(
            "RoleBinding/tenant-acme/{viewer} rejected by the API server: RoleBinding.rbac.authorization.k8s.io"
        )),
        "{msg}"
    );
    assert!(msg.contains("bindings need a ticket number"), "{msg}");
    assert_eq!(w.phase("acme"), Some(Phase::Failed));
    let rejected: Vec<_> = w
        .cluster
        .events_for("acme")
        .into_iter()
        .filter(|e| e.reason == "Rejected")
        .collect();
    assert_eq!(rejected.len(), 1);
    assert!(rejected[0].warning);
    // The rest of the silo was reconciled.
    let settings = w
        .cluster
        .get(&key("ConfigMap", "acme", "silo-settings"))
        .unwrap();
    assert!(
        settings["data"].to_string().contains("metric"),
        "{settings}"
    );
    let (status, ..) = w.condition("acme", "NamespaceReady");
    assert_eq!(status, "True");
    // Steady while refused: no new event, no status write.
    let before = w.cluster.writes();
    w.pass().await;
    assert_eq!(w.cluster.writes().events, before.events);
    assert_eq!(w.cluster.writes().status_patches, before.status_patches);
    // The policy lifted: the next resync applies it.
    w.cluster.refuse_by_policy(&viewer_key, None);
    w.settle().await;
    assert_eq!(member_bindings(&w, "acme"), vec![viewer]);
    assert_eq!(w.phase("acme"), Some(Phase::Ready));
}

fn storage_class(w: &World, expandable: bool) {
    w.cluster.put_object(
        &ObjectKey::new("StorageClass", None, "standard"),
        serde_json::json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": "standard"}, "provisioner": "example.com/disk",
            "allowVolumeExpansion": expandable}),
    );
}

/// The claim the StatefulSet controller creates for the database's pod.
fn database_claim(w: &World, t: &str, size: &str, phase: &str) -> ObjectKey {
    let k = key("PersistentVolumeClaim", t, "data-silo-postgres-0");
    w.cluster.put_object(
        &k,
        serde_json::json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": k.name, "namespace": k.namespace},
            "spec": {"storageClassName": "standard", "accessModes": ["ReadWriteOnce"],
                     "resources": {"requests": {"storage": size}}},
            "status": {"phase": phase}}),
    );
    k
}

fn with_storage(name: &str, storage: &str) -> Tenant {
    let mut s = spec(None);
    s.database = Some(silo::types::tenant::DatabaseSpec {
        version: None,
        storage: Some(QuantityValue::new(storage)),
    });
    tenant(name, s)
}

fn template_storage(w: &World, t: &str) -> serde_json::Value {
    w.cluster
        .get(&key("StatefulSet", t, "silo-postgres"))
        .unwrap()["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
        .clone()
}

#[tokio::test]
async fn a_bigger_database_volume_grows_the_claim_and_replaces_the_statefulset() {
    let w = world().await;
    w.cluster.put_tenant(with_storage("acme", "1Gi"));
    w.settle().await;
    storage_class(&w, true);
    let claim = database_claim(&w, "acme", "1Gi", "Bound");
    let sts = key("StatefulSet", "acme", "silo-postgres");
    w.cluster.put_tenant(with_storage("acme", "2Gi"));
    let pass = w.pass().await;
    assert!(pass.failures().is_empty(), "{:?}", pass.failures());
    assert_eq!(
        w.cluster.get(&claim).unwrap()["spec"]["resources"]["requests"]["storage"],
        "2Gi"
    );
    // Deleted orphaning its pod: Terminating until the garbage collector released it.
    assert!(w.cluster.is_terminating(&sts));
    let (status, reason, msg) = w.condition("acme", "DatabaseReady");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "Replacing"));
    assert_eq!(
        msg,
        "StatefulSet/tenant-acme/silo-postgres is being replaced (spec.volumeClaimTemplates cannot change in place): waiting for the old object to be deleted"
    );
    assert_eq!(w.phase("acme"), Some(Phase::Provisioning));
    w.settle().await;
    assert!(!w.cluster.is_terminating(&sts));
    assert_eq!(template_storage(&w, "acme"), "2Gi");
    assert_eq!(w.phase("acme"), Some(Phase::Ready));
    // Negative control: the template changed in place is what the API server refuses.
    let mut changed = w.cluster.get(&sts).unwrap();
    changed["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] =
        "3Gi".into();
    let err = silo::operator::Cluster::apply(&*w.cluster, &sts, &changed)
        .await
        .unwrap_err();
    assert!(
        err.message
            .contains("spec: Forbidden: updates to statefulset spec for fields other than"),
        "{err}"
    );
}

#[tokio::test]
async fn a_claim_that_cannot_grow_is_reported_and_the_rest_of_the_silo_reconciled() {
    let w = world().await;
    w.cluster.put_tenant(with_storage("acme", "1Gi"));
    w.settle().await;
    storage_class(&w, false);
    let claim = database_claim(&w, "acme", "1Gi", "Bound");
    let sts = key("StatefulSet", "acme", "silo-postgres");
    let mut t = with_storage("acme", "5Gi");
    t.spec.members = vec![Member {
        user: "dave@acme.example".into(),
        role: "technician".into(),
    }];
    w.cluster.put_tenant(t);
    let pass = w.pass().await;
    assert!(pass.failures().is_empty(), "{:?}", pass.failures());
    assert_eq!(pass.outcome("acme").unwrap().phase, Phase::Failed);
    let (status, reason, msg) = w.condition("acme", "DatabaseReady");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "Rejected"));
    assert!(
        msg.starts_with("StatefulSet/tenant-acme/silo-postgres: the volume cannot grow in place, the API server refused to expand its claim: persistentvolumeclaims \"data-silo-postgres-0\" is forbidden: only dynamically provisioned pvc can be resized and the storageclass that provisions the pvc must support resize"),
        "{msg}"
    );
    // The database is left as it was; everything else follows the new spec.
    assert!(!w.cluster.is_terminating(&sts));
    assert_eq!(template_storage(&w, "acme"), "1Gi");
    assert_eq!(
        w.cluster.get(&claim).unwrap()["spec"]["resources"]["requests"]["storage"],
        "1Gi"
    );
    assert_eq!(member_bindings(&w, "acme").len(), 1);
    let (status, ..) = w.condition("acme", "AccessReady");
    assert_eq!(status, "True");
    let warnings: Vec<_> = w
        .cluster
        .events_for("acme")
        .into_iter()
        .filter(|e| e.warning && e.reason == "Rejected")
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].note, msg);
    // Not bound yet: refused too, with the API server's reason for that.
    database_claim(&w, "acme", "1Gi", "Pending");
    storage_class(&w, true);
    w.pass().await;
    let (_, reason, msg) = w.condition("acme", "DatabaseReady");
    assert_eq!(reason, "Rejected");
    assert!(
        msg.contains("spec is immutable after creation except resources.requests for bound claims"),
        "{msg}"
    );
    // Bound and expandable: the growth goes through.
    database_claim(&w, "acme", "1Gi", "Bound");
    w.settle().await;
    assert_eq!(template_storage(&w, "acme"), "5Gi");
    assert_eq!(w.phase("acme"), Some(Phase::Ready));
}

#[tokio::test]
async fn objects_left_by_an_older_operator_are_replaced_when_the_server_refuses_the_change() {
    // Objects written before the identity annotation existed: the plan cannot know their
    // immutable fields; the API server's 422 names them and the object is recreated.
    use silo::operator::cluster::{HASH_ANNOTATION, IDENTITY_ANNOTATION};
    let w = world().await;
    w.cluster.put_tenant(tenant("acme", spec(None)));
    w.settle().await;
    let cases: [(ObjectKey, &str, serde_json::Value); 3] = [
        (
            key("Deployment", "acme", "silo-mosquitto"),
            "/spec/selector/matchLabels",
            serde_json::json!({"app": "mosquitto"}),
        ),
        (
            key("StatefulSet", "acme", "silo-postgres"),
            "/spec/serviceName",
            serde_json::json!("postgres"),
        ),
        (
            key("Service", "acme", "silo-postgres"),
            "/spec/clusterIP",
            serde_json::json!("10.96.0.10"),
        ),
    ];
    let desired: Vec<serde_json::Value> = cases
        .iter()
        .map(|(k, ..)| w.cluster.get(k).unwrap())
        .collect();
    for (k, pointer, old) in &cases {
        let mut m = w.cluster.get(k).unwrap();
        *m.pointer_mut(pointer).unwrap() = old.clone();
        let ann = m["metadata"]["annotations"].as_object_mut().unwrap();
        ann.remove(IDENTITY_ANNOTATION);
        ann.insert(HASH_ANNOTATION.into(), "from-an-older-operator".into());
        w.cluster.put_object(k, m);
    }
    // Positive control: the broker Service's clusterIP, allocated by the server and not
    // rendered, is kept by an update (no replacement).
    let broker_svc = key("Service", "acme", "silo-mosquitto");
    let allocated = w.cluster.get(&broker_svc).unwrap()["spec"]["clusterIP"].clone();
    assert!(allocated.is_string(), "{allocated}");
    assert!(w.cluster.edit_behind_our_back(&broker_svc, |m| {
        m["metadata"]["annotations"][HASH_ANNOTATION] = "from-an-older-operator".into();
    }));
    let pass = w.pass().await;
    assert!(pass.failures().is_empty(), "{:?}", pass.failures());
    for ((k, ..), want) in cases.iter().zip(&desired) {
        let got = w.cluster.get(k).unwrap();
        assert_eq!(got["spec"], want["spec"], "{k}");
        assert!(
            got["metadata"]["annotations"][IDENTITY_ANNOTATION].is_string(),
            "{k}"
        );
    }
    let note = w
        .cluster
        .events_for("acme")
        .into_iter()
        .rfind(|e| e.note.contains("applied "))
        .unwrap()
        .note;
    for (k, ..) in &cases {
        assert!(note.contains(&format!("{k} (")), "{k} not replaced: {note}");
    }
    assert!(
        !note.contains("Service/tenant-acme/silo-mosquitto ("),
        "{note}"
    );
    assert_eq!(
        w.cluster.get(&broker_svc).unwrap()["spec"]["clusterIP"],
        allocated
    );
    w.settle().await;
    assert_eq!(w.phase("acme"), Some(Phase::Ready));
}

/// A tenant admitted before the people rule (or by an older webhook) whose admins or members
/// now stand for more than its people: the operator refuses the spec and withdraws the
/// bindings that grant the refused subjects — an invalid spec must not keep `silo-admin`
/// bound to every authenticated principal of the cluster.
#[tokio::test]
async fn refused_subjects_lose_the_bindings_an_older_release_made() {
    use silo::operator::cluster::Cluster;
    let w = world().await;
    w.five_levels();
    w.settle().await;
    let admins = key("RoleBinding", "dealer", "silo-admins");
    let everyone = Subject {
        kind: SubjectKind::Group,
        name: "system:authenticated".into(),
        namespace: None,
    };
    // What the older release rendered: silo-admins bound to the group too.
    let mut t = w.cluster.tenant("dealer").unwrap();
    t.spec.admins.push(everyone);
    t.spec.members.push(Member {
        user: "system:anonymous".into(),
        role: "viewer".into(),
    });
    w.cluster.put_tenant(t);
    let mut binding = w.cluster.get(&admins).unwrap();
    binding["subjects"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"kind": "Group", "name": "system:authenticated", "apiGroup": "rbac.authorization.k8s.io"}));
    w.cluster.apply(&admins, &binding).await.unwrap();
    let anon = key(
        "RoleBinding",
        "dealer",
        &silo::render::rbac::member_binding_name("system:anonymous", "viewer"),
    );
    let mut anon_binding = w
        .cluster
        .get(&key(
            "RoleBinding",
            "dealer",
            &silo::render::rbac::member_binding_name("dealer-tech@example.com", "technician"),
        ))
        .unwrap();
    anon_binding["metadata"]["name"] = anon.name.clone().into();
    anon_binding["subjects"][0]["name"] = "system:anonymous".into();
    w.cluster.apply(&anon, &anon_binding).await.unwrap();
    assert!(
        w.cluster.get(&anon).is_some(),
        "control: the binding exists"
    );

    let pass = w.pass().await;
    assert_eq!(pass.outcome("dealer").unwrap().deleted, 2);
    assert!(w.cluster.get(&admins).is_none(), "silo-admins withdrawn");
    assert!(
        w.cluster.get(&anon).is_none(),
        "the anonymous member's binding withdrawn"
    );
    // The valid members keep theirs; the other tenants are untouched.
    let left = member_bindings(&w, "dealer");
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(
        w.cluster
            .get(&key("RoleBinding", "sub", "silo-admins"))
            .is_some()
    );
    assert_eq!(w.phase("dealer"), Some(Phase::Failed));
    let (status, reason, msg) = w.condition("dealer", "Ready");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "InvalidSpec"));
    assert!(msg.contains("spec.admins[1].name"), "{msg}");
    assert!(msg.contains("system:authenticated"), "{msg}");
    assert!(msg.contains("spec.members[2].user"), "{msg}");
    let ev = w.cluster.events_for("dealer");
    let withdrawn: Vec<_> = ev
        .iter()
        .filter(|e| e.reason == "AccessWithdrawn")
        .collect();
    assert_eq!(withdrawn.len(), 2, "{ev:?}");
    assert!(withdrawn[0].note.contains("silo-admins"), "{withdrawn:?}");
    // Nothing more to do until the spec changes.
    assert_eq!(w.pass().await.outcome("dealer").unwrap().deleted, 0);
    // Fixing the spec brings the admins' binding back without the group.
    let mut t = w.cluster.tenant("dealer").unwrap();
    t.spec.admins.truncate(1);
    t.spec.members.truncate(2);
    w.cluster.put_tenant(t);
    w.settle().await;
    assert_eq!(w.phase("dealer"), Some(Phase::Ready));
    let back = w.cluster.get(&admins).unwrap();
    assert_eq!(back["subjects"].as_array().unwrap().len(), 1, "{back}");
}

/// Per-tenant series are opt-in (`metrics.perTenant`): off, `/metrics` carries no `tenant`
/// label however many tenants there are; on, each tenant's usage and limits appear.
#[tokio::test]
async fn per_tenant_metrics_are_opt_in() {
    use silo::operator::metrics::Metrics;
    for per_tenant in [false, true] {
        let cluster = Arc::new(MemoryCluster::new());
        let metrics = Arc::new(Metrics::new());
        let mut config = PlatformConfig::default();
        config.metrics.per_tenant = per_tenant;
        let keys = Arc::new(ProviderKeys::in_memory().await.unwrap());
        let rec = Reconciler::new(cluster.clone(), config, keys, Some(metrics.clone()))
            .with_shared(Arc::new(silo::backends::Unconfigured));
        let mut s = spec(None);
        s.limits = Limits {
            devices: Some(100),
            ..Default::default()
        };
        cluster.put_tenant(tenant("acme", s));
        cluster.put_tenant(tenant("dealer", spec(Some("acme"))));
        for _ in 0..3 {
            cluster.run_controllers();
            reconcile_pass(&rec, cluster.inventory()).await;
        }
        let text = metrics.encode();
        // The aggregate series are always there.
        assert!(text.contains("silo_tenants{phase=\"Ready\"} 2"), "{text}");
        let labelled = text.lines().filter(|l| l.contains("tenant=\"")).count();
        if per_tenant {
            assert!(
                text.contains("silo_tenant_limit{tenant=\"acme\",resource=\"devices\"} 100"),
                "{text}"
            );
            assert!(labelled > 0);
        } else {
            assert_eq!(labelled, 0, "{text}");
        }
    }
}

/// A world with the in-memory shared services and `config`.
async fn world_with_config(config: PlatformConfig) -> World {
    let mut w = world_with_shared().await;
    w.rec = Reconciler::new(w.cluster.clone(), config, w.keys.clone(), None)
        .with_shared(w.shared.clone());
    w
}

/// The broker Deployment's config hash and volume names.
fn broker_pod(w: &World, ns: &str) -> (String, Vec<String>) {
    let d = w
        .cluster
        .get(&ObjectKey::new("Deployment", Some(ns), "silo-mosquitto"))
        .unwrap();
    let t = &d["spec"]["template"];
    let hash = t["metadata"]["annotations"]["silo.dev/config-hash"]
        .as_str()
        .unwrap()
        .to_string();
    let vols = t["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect();
    (hash, vols)
}

#[tokio::test]
async fn a_siloed_tenant_using_channels_gets_a_bridge_identity_and_its_broker_follows_the_channels()
{
    use silo::operator::cluster::Cluster;
    let mut config = PlatformConfig::default();
    config.shared.mosquitto.host = "mqtt.shared".into();
    let w = world_with_config(config).await;
    w.cluster.put_tenant(tenant("root", spec(None)));
    w.cluster.put_channel(teltonika());
    let (_, no_bridge) = {
        w.cluster.put_tenant(tenant("sil", spec(Some("root"))));
        w.settle().await;
        broker_pod(&w, "tenant-sil")
    };
    assert!(!no_bridge.contains(&"bridge".to_string()));
    let (hash_before, _) = broker_pod(&w, "tenant-sil");
    assert!(!w.shared.clients().contains_key("silo_bridge.sil"));

    // Using a channel: the bridge identity may read only the tenant's part of it; the Secret
    // holds the bridge section with its password; the broker mounts it and restarts.
    let mut t = w.cluster.tenant("sil").unwrap();
    t.spec.channels = vec!["teltonika".into()];
    w.cluster.put_tenant(t);
    w.settle().await;
    let c = w.shared.clients()["silo_bridge.sil"].clone();
    assert_eq!(c.topics, vec!["channels/teltonika/sil/#".to_string()]);
    assert!(c.enabled);
    let s = w
        .cluster
        .get_secret("tenant-sil", "silo-mosquitto-bridge")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s["password"], c.password);
    let file = &s["bridge.conf"];
    assert!(file.contains("address mqtt.shared:1883\n"), "{file}");
    assert!(file.contains("remote_username silo_bridge.sil\n"), "{file}");
    assert!(
        file.contains(&format!("remote_password {}\n", c.password)),
        "{file}"
    );
    assert!(
        file.contains("topic channels/teltonika/sil/# in 1\n"),
        "{file}"
    );
    assert_eq!(file.matches("\ntopic ").count(), 1, "{file}");
    let (hash_with, vols) = broker_pod(&w, "tenant-sil");
    assert!(vols.contains(&"bridge".to_string()), "{vols:?}");
    assert_ne!(
        hash_with, hash_before,
        "the broker must restart to load the bridge"
    );
    // Steady state: the password is kept.
    w.settle().await;
    assert_eq!(w.shared.clients()["silo_bridge.sil"].password, c.password);

    // Suspended: the identity is disabled.
    let mut t = w.cluster.tenant("sil").unwrap();
    t.spec.suspended = true;
    w.cluster.put_tenant(t);
    w.settle().await;
    assert!(!w.shared.clients()["silo_bridge.sil"].enabled);
    let mut t = w.cluster.tenant("sil").unwrap();
    t.spec.suspended = false;
    w.cluster.put_tenant(t);
    w.settle().await;
    assert!(w.shared.clients()["silo_bridge.sil"].enabled);

    // The channel removed from the spec: identity and Secret go, the broker restarts without.
    let mut t = w.cluster.tenant("sil").unwrap();
    t.spec.channels.clear();
    w.cluster.put_tenant(t);
    w.settle().await;
    assert!(!w.shared.clients().contains_key("silo_bridge.sil"));
    assert!(
        w.cluster
            .get_secret("tenant-sil", "silo-mosquitto-bridge")
            .await
            .unwrap()
            .is_none()
    );
    let (hash_after, vols) = broker_pod(&w, "tenant-sil");
    assert!(!vols.contains(&"bridge".to_string()));
    assert_eq!(hash_after, hash_before);
}
