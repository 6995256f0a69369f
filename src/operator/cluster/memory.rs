//! An in-memory cluster for tests and benchmarks: a plain struct implementing [`Cluster`]
//! that stores objects, counts every write, and can simulate other actors (someone deletes
//! or edits an object, a concurrent writer, workloads that are not ready).
//!
//! It refuses what a real API server refuses, for the semantics Silo relies on (each checked
//! against the envtest API server by `tests/envtest_standin.rs`, the same test body on both):
//! - fields that cannot change in place ([`crate::render::immutable`], the same list the
//!   operator plans with): 422, also for a Tenant's `spec.parent` (the CRD rule);
//! - server-side apply merges: the fields one field manager applied are its own; an apply
//!   removes only the fields its manager applied before and no longer applies (if nobody
//!   else owns them), so a field added by someone else survives. Simplified: maps merge key
//!   by key, lists are atomic (the real server merges some lists by key);
//! - a deleted Namespace is Terminating: nothing new may be created in it (403) until the
//!   namespace controller has removed its content and then the namespace;
//! - garbage collection follows ownerReferences (the Tenant's uid), not labels, and runs
//!   later, like the controller-manager: [`MemoryCluster::run_controllers`];
//! - writes that carry a resourceVersion (finalizer patches) fail with 409 when the object
//!   changed since it was read;
//! - workloads are not ready when applied: the kubelet's report comes with
//!   [`MemoryCluster::run_controllers`];
//! - a PersistentVolumeClaim grows only when bound and its StorageClass allows expansion,
//!   and never shrinks.
//!
//! It is not an API server: no schema validation, defaulting, admission webhooks, RBAC, pods
//! or watches.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Mutex;

use serde_json::Value;

use crate::hierarchy::Inventory;
use crate::render::immutable;
use crate::types::{Channel, ChannelStatus, LimitProfile, Tenant, TenantStatus};

use crate::operator::cluster::{
    Cluster, ClusterError, ClusterResult, EventInfo, FIELD_MANAGER, FINALIZER, FailureKind,
    HASH_ANNOTATION, IDENTITY_ANNOTATION, ObjectKey, Observed, Readiness, SecretData,
};
use crate::render::meta::TENANT_LABEL;

/// The field manager of edits made with [`MemoryCluster::edit_behind_our_back`].
pub const EDITOR: &str = "kubectl-edit";
/// The field manager of objects other controllers create ([`MemoryCluster::put_object`]).
pub const CONTROLLER: &str = "kube-controller-manager";

/// Write counters (every call that would change the cluster).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Writes {
    pub applies: u64,
    pub deletes: u64,
    pub status_patches: u64,
    pub finalizer_patches: u64,
    pub tenant_deletes: u64,
    pub events: u64,
    /// Secrets created or patched.
    pub secrets: u64,
}

impl Writes {
    pub fn total(&self) -> u64 {
        self.applies
            + self.deletes
            + self.status_patches
            + self.finalizer_patches
            + self.tenant_deletes
            + self.events
            + self.secrets
    }
}

/// A field path (map keys from the root).
type Path = Vec<String>;

#[derive(Clone, Debug, Default)]
struct Stored {
    /// The whole object (None in a lean cluster).
    manifest: Option<Value>,
    hash: Option<String>,
    identity: Option<String>,
    replicas: Option<i64>,
    tenant: Option<String>,
    foreign_edit: Option<String>,
    /// resourceVersion: changes on every write.
    version: u64,
    /// Leaf fields each field manager owns (empty in a lean cluster).
    managers: BTreeMap<String, BTreeSet<Path>>,
    /// uids of the owners (ownerReferences).
    owners: Vec<String>,
    /// deletionTimestamp set: a Namespace until its content is gone, an object deleted
    /// orphaning its dependents until the garbage collector has released them.
    terminating: bool,
    /// Workloads: the kubelet has reported the current pods ready.
    ready: bool,
}

#[derive(Default)]
struct State {
    objects: HashMap<ObjectKey, Stored>,
    by_tenant: HashMap<String, BTreeSet<ObjectKey>>,
    tenants: BTreeMap<String, Tenant>,
    profiles: BTreeMap<String, LimitProfile>,
    channels: BTreeMap<String, Channel>,
    writes: Writes,
    events: Vec<(String, EventInfo)>,
    interfering_writes: u32,
    conflicts: u32,
    /// Objects an admission policy of the cluster refuses: key → message.
    policy_refusals: HashMap<ObjectKey, String>,
    unready: HashSet<ObjectKey>,
    next_uid: u64,
    edits: u64,
    next_version: u64,
    secret_reads: u64,
}

impl State {
    /// Lists `key` under its tenant (its `silo.dev/tenant` label), if it has one.
    fn index_owned(&mut self, tenant: Option<&str>, key: &ObjectKey) {
        if let Some(t) = tenant {
            self.by_tenant
                .entry(t.to_string())
                .or_default()
                .insert(key.clone());
        }
    }

    fn bump_version(&mut self) -> u64 {
        self.next_version += 1;
        self.next_version
    }

    fn bump_tenant(&mut self, name: &str) {
        let v = self.bump_version();
        if let Some(t) = self.tenants.get_mut(name) {
            t.metadata.resource_version = Some(v.to_string());
        }
    }
}

/// The in-memory cluster.
#[derive(Default)]
pub struct MemoryCluster {
    state: Mutex<State>,
    /// Keep only what the operator reads back (hash, identity, replicas, owner) instead of
    /// whole objects, so a benchmark's memory is mostly the operator's, not the fake's.
    lean: bool,
}

/// The string at JSON pointer `pointer` of `v`; `""` when there is none.
fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn label_of(manifest: &Value) -> Option<String> {
    manifest
        .pointer("/metadata/labels")
        .and_then(|l| l.get(TENANT_LABEL))
        .and_then(Value::as_str)
        .map(str::to_string)
}

fn annotation(manifest: &Value, name: &str) -> Option<String> {
    manifest
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(name))
        .and_then(Value::as_str)
        .map(str::to_string)
}

fn owner_uids(manifest: &Value) -> Vec<String> {
    manifest
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .map(|refs| {
            refs.iter()
                .filter_map(|r| r.get("uid").and_then(Value::as_str))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// The API group of a kind, as the API server names objects in its messages.
fn qualified(kind: &str) -> String {
    let group = match kind {
        "RoleBinding" | "Role" => ".rbac.authorization.k8s.io",
        "StatefulSet" | "Deployment" => ".apps",
        "NetworkPolicy" => ".networking.k8s.io",
        "Tenant" => ".silo.dev",
        _ => "",
    };
    format!("{kind}{group}")
}

// ----- server-side apply, simplified: maps merge key by key, everything else is a leaf -----

/// Paths that identify the object rather than being fields someone owns.
fn is_identity_path(p: &[String]) -> bool {
    matches!(
        p.iter().map(String::as_str).collect::<Vec<_>>().as_slice(),
        ["apiVersion"] | ["kind"] | ["metadata", "name"] | ["metadata", "namespace"]
    )
}

fn leaves(v: &Value, prefix: &mut Path, out: &mut BTreeSet<Path>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, c) in m {
                prefix.push(k.clone());
                leaves(c, prefix, out);
                prefix.pop();
            }
        }
        _ if !prefix.is_empty() && !is_identity_path(prefix) => {
            out.insert(prefix.clone());
        }
        _ => {}
    }
}

fn leaf_set(v: &Value) -> BTreeSet<Path> {
    let mut out = BTreeSet::new();
    leaves(v, &mut Vec::new(), &mut out);
    out
}

fn get_path<'a>(v: &'a Value, p: &[String]) -> Option<&'a Value> {
    p.iter().try_fold(v, |cur, k| cur.get(k))
}

fn set_path(v: &mut Value, p: &[String], value: Value) {
    let mut cur = v;
    for k in &p[..p.len() - 1] {
        if !cur.get(k).is_some_and(Value::is_object) {
            cur[k.as_str()] = Value::Object(Default::default());
        }
        cur = &mut cur[k.as_str()];
    }
    cur[p[p.len() - 1].as_str()] = value;
}

/// Remove a leaf and the maps it leaves empty.
fn remove_path(v: &mut Value, p: &[String]) {
    let Some((last, parents)) = p.split_last() else {
        return;
    };
    let mut cur = &mut *v;
    for k in parents {
        match cur.get_mut(k) {
            Some(next) => cur = next,
            None => return,
        }
    }
    if let Some(m) = cur.as_object_mut() {
        m.remove(last);
    }
    if !parents.is_empty()
        && get_path(v, parents).is_some_and(|x| x.as_object().is_some_and(|m| m.is_empty()))
    {
        remove_path(v, parents);
    }
}

fn overlaps(a: &[String], b: &[String]) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// A forced server-side apply of `manifest` by `manager` onto `object`.
fn merge_apply(
    object: &mut Value,
    managers: &mut BTreeMap<String, BTreeSet<Path>>,
    manager: &str,
    manifest: &Value,
) {
    let applied = leaf_set(manifest);
    let before = managers.remove(manager).unwrap_or_default();
    for p in before.difference(&applied) {
        if !managers.values().any(|s| s.contains(p)) {
            remove_path(object, p);
        }
    }
    for owned in managers.values_mut() {
        owned.retain(|p| !applied.iter().any(|a| overlaps(a, p)));
    }
    for p in &applied {
        if let Some(v) = get_path(manifest, p) {
            set_path(object, p, v.clone());
        }
    }
    for k in ["apiVersion", "kind"] {
        if let Some(v) = manifest.get(k) {
            object[k] = v.clone();
        }
    }
    managers.insert(manager.to_string(), applied);
    managers.retain(|_, s| !s.is_empty());
}

/// An update (not an apply) by `manager` from `before` to `after`: the fields it changed or
/// added become its own, the ones it removed nobody's.
fn record_update(
    managers: &mut BTreeMap<String, BTreeSet<Path>>,
    manager: &str,
    before: &Value,
    after: &Value,
) {
    let old = leaf_set(before);
    let new = leaf_set(after);
    let changed: BTreeSet<Path> = new
        .iter()
        .filter(|p| get_path(before, p) != get_path(after, p))
        .cloned()
        .collect();
    let removed: Vec<&Path> = old.difference(&new).collect();
    for owned in managers.values_mut() {
        owned.retain(|p| !changed.contains(p) && !removed.contains(&p));
    }
    managers
        .entry(manager.to_string())
        .or_default()
        .extend(changed);
    managers.retain(|_, s| !s.is_empty());
}

fn invalid(kind: &str, name: &str, fields: &[&immutable::ImmutableField]) -> String {
    let what: Vec<String> = fields
        .iter()
        .map(|f| match f.server_message {
            m if m.starts_with("updates to statefulset spec") => format!(
                "{}: Forbidden: updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
                f.field
            ),
            m => format!("{}: Invalid value: (changed): {m}", f.field),
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    format!(
        "{} \"{name}\" is invalid: {}",
        qualified(kind),
        what.join(", ")
    )
}

fn terminating_namespace(kind: &str, name: &str, ns: &str) -> ClusterError {
    ClusterError::new(
        FailureKind::Forbidden,
        "create",
        format!("{kind}/{ns}/{name}"),
        format!(
            "{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated (403)",
            qualified(kind).to_lowercase()
        ),
    )
}

impl State {
    /// Delete as the API server does: a Namespace (or an object deleted orphaning) becomes
    /// Terminating; anything else goes at once (its dependents are collected later).
    fn delete_object(&mut self, key: &ObjectKey, orphaning: bool) {
        let Some(o) = self.objects.get_mut(key) else {
            return;
        };
        if key.kind == "Namespace" || orphaning {
            o.terminating = true;
            return;
        }
        self.remove_object(key);
    }

    fn remove_object(&mut self, key: &ObjectKey) -> bool {
        let Some(old) = self.objects.remove(key) else {
            return false;
        };
        if let Some(t) = old.tenant
            && let Some(set) = self.by_tenant.get_mut(&t)
        {
            set.remove(key);
        }
        true
    }

    /// The controller-manager: garbage collector, namespace controller, and the kubelet's
    /// readiness reports.
    fn run_controllers(&mut self) {
        // The namespace controller removes a Terminating namespace once it found it empty
        // (on a round after the one that emptied it).
        let empty: Vec<ObjectKey> = self
            .objects
            .iter()
            .filter(|(k, o)| k.kind == "Namespace" && o.terminating)
            .filter(|(k, _)| {
                !self
                    .objects
                    .keys()
                    .any(|x| x.namespace.as_deref() == Some(k.name.as_str()))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in &empty {
            self.remove_object(k);
        }
        // The garbage collector: objects whose owners are all gone.
        let live: HashSet<String> = self
            .tenants
            .values()
            .filter_map(|t| t.metadata.uid.clone())
            .collect();
        let orphans: Vec<ObjectKey> = self
            .objects
            .iter()
            .filter(|(_, o)| !o.owners.is_empty() && !o.owners.iter().any(|u| live.contains(u)))
            .map(|(k, _)| k.clone())
            .collect();
        for k in orphans {
            self.delete_object(&k, false);
        }
        // The namespace controller empties Terminating namespaces; objects deleted orphaning
        // are released.
        let terminating: Vec<ObjectKey> = self
            .objects
            .iter()
            .filter(|(_, o)| o.terminating)
            .map(|(k, _)| k.clone())
            .collect();
        for k in terminating {
            if k.kind == "Namespace" {
                let inside: Vec<ObjectKey> = self
                    .objects
                    .keys()
                    .filter(|x| x.namespace.as_deref() == Some(k.name.as_str()))
                    .cloned()
                    .collect();
                for x in inside {
                    self.remove_object(&x);
                }
            } else {
                self.remove_object(&k);
            }
        }
        for o in self.objects.values_mut() {
            o.ready = true;
        }
    }
}

impl MemoryCluster {
    pub fn new() -> Self {
        Self::default()
    }

    /// A cluster that stores only metadata and replicas of applied objects (benchmarks).
    pub fn lean() -> Self {
        MemoryCluster {
            lean: true,
            ..Self::default()
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Create or update a Tenant as a user would (kubectl apply): uid on creation,
    /// generation bumped on spec changes; status and finalizers are kept. Refused (422) as
    /// the CRD rule refuses it when an immutable field (`spec.parent`) changes.
    pub fn try_put_tenant(&self, mut t: Tenant) -> ClusterResult<()> {
        let mut s = self.lock();
        let name = t.name().to_string();
        match s.tenants.get(&name) {
            Some(old) => {
                let before = serde_json::to_value(old).unwrap_or_default();
                let after = serde_json::to_value(&t).unwrap_or_default();
                let refused = immutable::violations("Tenant", &before, &after);
                if !refused.is_empty() {
                    let f = refused[0];
                    return Err(ClusterError::new(
                        FailureKind::Invalid,
                        "update",
                        format!("Tenant/{name}"),
                        format!(
                            "Tenant.silo.dev \"{name}\" is invalid: {}: Invalid value: \"string\": {}: a tenant cannot be moved to another parent (422)",
                            f.field, f.server_message
                        ),
                    ));
                }
                t.metadata.uid = old.metadata.uid.clone();
                t.metadata.finalizers = old.metadata.finalizers.clone();
                t.metadata.deletion_timestamp = old.metadata.deletion_timestamp.clone();
                t.status = old.status.clone();
                let g = old.metadata.generation.unwrap_or(1);
                t.metadata.generation = Some(if old.spec == t.spec { g } else { g + 1 });
            }
            None => {
                s.next_uid += 1;
                t.metadata.uid = Some(format!("uid-{}-{}", name, s.next_uid));
                t.metadata.generation = Some(1);
                t.metadata.finalizers = None;
                t.metadata.deletion_timestamp = None;
            }
        }
        s.tenants.insert(name.clone(), t);
        s.bump_tenant(&name);
        Ok(())
    }

    /// [`try_put_tenant`](Self::try_put_tenant) for a change the test knows to be valid;
    /// panics with the API server's message otherwise.
    pub fn put_tenant(&self, t: Tenant) {
        if let Err(e) = self.try_put_tenant(t) {
            panic!("the API server refuses this Tenant: {e}");
        }
    }

    pub fn put_profile(&self, p: LimitProfile) {
        self.lock().profiles.insert(p.name().to_string(), p);
    }

    pub fn put_channel(&self, c: Channel) {
        let name = c.metadata.name.clone().unwrap_or_default();
        self.lock().channels.insert(name, c);
    }

    /// Another controller creates an object (e.g. the StatefulSet controller a claim, or an
    /// administrator a StorageClass), with field manager [`CONTROLLER`].
    pub fn put_object(&self, key: &ObjectKey, manifest: Value) {
        let mut s = self.lock();
        let version = s.bump_version();
        let tenant = label_of(&manifest);
        s.index_owned(tenant.as_deref(), key);
        let mut managers = BTreeMap::new();
        managers.insert(CONTROLLER.to_string(), leaf_set(&manifest));
        s.objects.insert(
            key.clone(),
            Stored {
                hash: annotation(&manifest, HASH_ANNOTATION),
                identity: annotation(&manifest, IDENTITY_ANNOTATION),
                owners: owner_uids(&manifest),
                tenant,
                version,
                managers,
                manifest: Some(manifest),
                ..Default::default()
            },
        );
    }

    /// Secret reads (`get_secret`) so far.
    pub fn secret_reads(&self) -> u64 {
        self.lock().secret_reads
    }

    pub fn channel(&self, name: &str) -> Option<Channel> {
        self.lock().channels.get(name).cloned()
    }

    pub fn tenant(&self, name: &str) -> Option<Tenant> {
        self.lock().tenants.get(name).cloned()
    }

    /// A user deletes a Tenant (kubectl delete).
    pub fn request_tenant_deletion(&self, name: &str) {
        let mut s = self.lock();
        delete_tenant_in(&mut s, name);
    }

    /// Everything the tree is built from, as a watch cache would hold it.
    pub fn inventory(&self) -> Inventory {
        let s = self.lock();
        Inventory {
            tenants: s.tenants.values().cloned().collect(),
            profiles: s.profiles.values().cloned().collect(),
            channels: s.channels.values().cloned().collect(),
        }
    }

    pub fn get(&self, key: &ObjectKey) -> Option<Value> {
        self.lock()
            .objects
            .get(key)
            .and_then(|o| o.manifest.clone())
    }

    /// Whether the object exists and is Terminating (deletionTimestamp set).
    pub fn is_terminating(&self, key: &ObjectKey) -> bool {
        self.lock().objects.get(key).is_some_and(|o| o.terminating)
    }

    /// The fields each field manager owns, as dotted paths (managedFields, simplified).
    pub fn managed_fields(&self, key: &ObjectKey) -> BTreeMap<String, Vec<String>> {
        self.lock()
            .objects
            .get(key)
            .map(|o| {
                o.managers
                    .iter()
                    .map(|(m, paths)| (m.clone(), paths.iter().map(|p| p.join(".")).collect()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Keys of every object labelled with the tenant, sorted.
    pub fn owned_keys(&self, tenant: &str) -> Vec<ObjectKey> {
        self.lock()
            .by_tenant
            .get(tenant)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub fn object_count(&self) -> usize {
        self.lock().objects.len()
    }

    /// Someone else deletes an object (kubectl delete; a Namespace becomes Terminating).
    pub fn delete_behind_our_back(&self, key: &ObjectKey) -> bool {
        let mut s = self.lock();
        let existed = s.objects.contains_key(key);
        s.delete_object(key, false);
        existed
    }

    /// Someone else edits an object (kubectl edit: an update by field manager [`EDITOR`],
    /// which then owns the fields it changed). False when the object does not exist or the
    /// API server refuses the edit (an immutable field).
    pub fn edit_behind_our_back(&self, key: &ObjectKey, edit: impl FnOnce(&mut Value)) -> bool {
        self.edit_as(EDITOR, key, edit).is_ok()
    }

    /// An update of an object by field manager `manager`, refused as the API server refuses it.
    pub fn edit_as(
        &self,
        manager: &str,
        key: &ObjectKey,
        edit: impl FnOnce(&mut Value),
    ) -> ClusterResult<()> {
        let mut s = self.lock();
        s.edits += 1;
        let stamp = format!("edit-{}", s.edits);
        let version = s.bump_version();
        let o = s
            .objects
            .get_mut(key)
            .ok_or_else(|| not_found("update", key))?;
        let Some(before) = o.manifest.clone() else {
            return Err(not_found("update", key));
        };
        let mut after = before.clone();
        edit(&mut after);
        let refused = immutable::violations(&key.kind, &before, &after);
        if !refused.is_empty() {
            return Err(ClusterError::new(
                FailureKind::Invalid,
                "update",
                key,
                invalid(&key.kind, &key.name, &refused),
            ));
        }
        record_update(&mut o.managers, manager, &before, &after);
        o.hash = annotation(&after, HASH_ANNOTATION);
        o.identity = annotation(&after, IDENTITY_ANNOTATION);
        o.replicas = after.pointer("/spec/replicas").and_then(Value::as_i64);
        o.owners = owner_uids(&after);
        o.manifest = Some(after);
        o.version = version;
        o.foreign_edit = Some(stamp);
        Ok(())
    }

    /// Another writer changes each Tenant right before each of the next `n` writes that carry
    /// a resourceVersion (finalizer patches): those fail with 409 unless they re-read.
    pub fn inject_conflicts(&self, n: u32) {
        self.lock().interfering_writes = n;
    }

    /// 409 answers given so far.
    pub fn conflicts_injected(&self) -> u32 {
        self.lock().conflicts
    }

    /// An admission policy of the cluster (a ValidatingAdmissionPolicy, a third-party
    /// webhook) refuses every write of this object with 422 and `message`; None lifts it.
    pub fn refuse_by_policy(&self, key: &ObjectKey, message: Option<&str>) {
        let mut s = self.lock();
        match message {
            Some(m) => s.policy_refusals.insert(key.clone(), m.to_string()),
            None => s.policy_refusals.remove(key),
        };
    }

    /// Mark a workload as not ready (or ready again once the kubelet reports).
    pub fn set_unready(&self, key: &ObjectKey, unready: bool) {
        let mut s = self.lock();
        if unready {
            s.unready.insert(key.clone());
        } else {
            s.unready.remove(key);
        }
    }

    /// One round of what the controller-manager and kubelets do: owned objects of deleted
    /// Tenants collected (by ownerReference uid), Terminating namespaces emptied (and, when
    /// found empty, removed: a namespace takes two rounds), objects deleted orphaning
    /// released, workloads reported ready.
    pub fn run_controllers(&self) {
        self.lock().run_controllers();
    }

    pub fn writes(&self) -> Writes {
        self.lock().writes
    }

    pub fn events_for(&self, tenant: &str) -> Vec<EventInfo> {
        self.lock()
            .events
            .iter()
            .filter(|(t, _)| t == tenant)
            .map(|(_, e)| e.clone())
            .collect()
    }
}

fn delete_tenant_in(s: &mut State, name: &str) -> bool {
    let Some(t) = s.tenants.get_mut(name) else {
        return false;
    };
    let has_finalizers = t
        .metadata
        .finalizers
        .as_ref()
        .is_some_and(|f| !f.is_empty());
    if has_finalizers {
        if t.metadata.deletion_timestamp.is_none() {
            t.metadata.deletion_timestamp =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::now(),
                ));
            s.bump_tenant(name);
        }
    } else {
        s.tenants.remove(name);
    }
    true
}

fn not_found(action: &'static str, what: impl std::fmt::Display) -> ClusterError {
    ClusterError::new(FailureKind::NotFound, action, what, "not found")
}

impl MemoryCluster {
    /// A write guarded by the Tenant's resourceVersion (409 when it changed since read).
    fn guarded_tenant_write(
        &self,
        s: &mut State,
        tenant: &Tenant,
        action: &'static str,
    ) -> ClusterResult<()> {
        let name = tenant.name();
        if !s.tenants.contains_key(name) {
            return Err(not_found(action, format!("Tenant/{name}")));
        }
        if s.interfering_writes > 0 {
            s.interfering_writes -= 1;
            s.bump_tenant(name);
        }
        let stored = s
            .tenants
            .get(name)
            .and_then(|t| t.metadata.resource_version.clone());
        if let Some(rv) = &tenant.metadata.resource_version
            && Some(rv) != stored.as_ref()
        {
            s.conflicts += 1;
            return Err(ClusterError::new(
                FailureKind::Conflict,
                action,
                format!("Tenant/{name}"),
                format!(
                    "Operation cannot be fulfilled on tenants.silo.dev \"{name}\": the object has been modified; please apply your changes to the latest version and try again (409)"
                ),
            ));
        }
        Ok(())
    }
}

impl Cluster for MemoryCluster {
    async fn apply(&self, key: &ObjectKey, manifest: &Value) -> ClusterResult<()> {
        let mut s = self.lock();
        if let Some(m) = s.policy_refusals.get(key) {
            return Err(ClusterError::new(
                FailureKind::Invalid,
                "apply",
                key,
                format!(
                    "{} \"{}\" is invalid: ValidatingAdmissionPolicy 'cluster-policy' with binding 'cluster-policy' denied request: {m} (422)",
                    qualified(&key.kind),
                    key.name
                ),
            ));
        }
        let version = s.bump_version();
        let tenant = label_of(manifest);
        if let Some(o) = s.objects.get_mut(key) {
            // An update: merged field by field, refused when an immutable field changes.
            let (merged, managers, refused) = match &o.manifest {
                Some(stored) => {
                    let mut merged = stored.clone();
                    let mut managers = o.managers.clone();
                    merge_apply(&mut merged, &mut managers, FIELD_MANAGER, manifest);
                    let refused = immutable::violations(&key.kind, stored, &merged);
                    (Some(merged), managers, refused)
                }
                None => {
                    let refused = match (&o.identity, immutable::identity(&key.kind, manifest)) {
                        (Some(old), Some(new)) => immutable::changed_fields(&key.kind, old, &new),
                        _ => Vec::new(),
                    };
                    (None, BTreeMap::new(), refused)
                }
            };
            if !refused.is_empty() {
                return Err(ClusterError::new(
                    FailureKind::Invalid,
                    "apply",
                    key,
                    format!("{} (422)", invalid(&key.kind, &key.name, &refused)),
                ));
            }
            let view = merged.as_ref().unwrap_or(manifest);
            if o.manifest.as_ref().and_then(|m| m.get("spec")) != view.get("spec")
                || o.manifest.is_none()
            {
                o.ready = false;
            }
            o.hash = annotation(view, HASH_ANNOTATION);
            o.identity = annotation(view, IDENTITY_ANNOTATION);
            o.replicas = view.pointer("/spec/replicas").and_then(Value::as_i64);
            o.owners = owner_uids(view);
            o.foreign_edit = None;
            o.version = version;
            o.managers = managers;
            if !self.lean {
                o.manifest = merged;
            }
            let old_tenant = std::mem::replace(&mut o.tenant, tenant.clone());
            if old_tenant != tenant {
                if let Some(t) = old_tenant
                    && let Some(set) = s.by_tenant.get_mut(&t)
                {
                    set.remove(key);
                }
                if let Some(t) = tenant {
                    s.by_tenant.entry(t).or_default().insert(key.clone());
                }
            }
            s.writes.applies += 1;
            return Ok(());
        }
        // A creation.
        if let Some(ns) = &key.namespace {
            match s.objects.get(&ObjectKey::new("Namespace", None, ns)) {
                None => {
                    return Err(ClusterError::new(
                        FailureKind::NotFound,
                        "apply",
                        key,
                        format!("namespaces \"{ns}\" not found"),
                    ));
                }
                Some(n) if n.terminating => {
                    return Err(terminating_namespace(&key.kind, &key.name, ns));
                }
                Some(_) => {}
            }
        }
        s.writes.applies += 1;
        s.index_owned(tenant.as_deref(), key);
        let mut managers = BTreeMap::new();
        if !self.lean {
            managers.insert(FIELD_MANAGER.to_string(), leaf_set(manifest));
        }
        let mut created = manifest.clone();
        if key.kind == "Service" && created.pointer("/spec/clusterIP").is_none() {
            // The API server allocates a cluster IP (owned by no field manager).
            let n = s.objects.len();
            created["spec"]["clusterIP"] =
                Value::String(format!("10.96.{}.{}", n / 250, n % 250 + 1));
        }
        s.objects.insert(
            key.clone(),
            Stored {
                manifest: (!self.lean).then_some(created),
                hash: annotation(manifest, HASH_ANNOTATION),
                identity: annotation(manifest, IDENTITY_ANNOTATION),
                replicas: manifest.pointer("/spec/replicas").and_then(Value::as_i64),
                tenant,
                version,
                managers,
                owners: owner_uids(manifest),
                ..Default::default()
            },
        );
        Ok(())
    }

    async fn delete(&self, key: &ObjectKey) -> ClusterResult<()> {
        let mut s = self.lock();
        s.writes.deletes += 1;
        s.delete_object(key, false);
        Ok(())
    }

    async fn delete_orphaning(&self, key: &ObjectKey) -> ClusterResult<()> {
        let mut s = self.lock();
        s.writes.deletes += 1;
        s.delete_object(key, true);
        Ok(())
    }

    async fn get_tenant(&self, name: &str) -> ClusterResult<Option<Tenant>> {
        Ok(self.lock().tenants.get(name).cloned())
    }

    async fn claim_storage(&self, namespace: &str, name: &str) -> ClusterResult<Option<String>> {
        let key = ObjectKey::new("PersistentVolumeClaim", Some(namespace), name);
        Ok(self.lock().objects.get(&key).map(|o| {
            o.manifest
                .as_ref()
                .map_or("", |m| str_at(m, "/spec/resources/requests/storage"))
                .to_string()
        }))
    }

    async fn resize_claim(&self, namespace: &str, name: &str, storage: &str) -> ClusterResult<()> {
        let key = ObjectKey::new("PersistentVolumeClaim", Some(namespace), name);
        let mut s = self.lock();
        let version = s.bump_version();
        let Some(claim) = s.objects.get(&key).and_then(|o| o.manifest.clone()) else {
            return Err(not_found("resize", &key));
        };
        let refuse = |kind: FailureKind, message: String| {
            Err(ClusterError::new(kind, "resize", &key, message))
        };
        let invalid = |what: &str| {
            refuse(
                FailureKind::Invalid,
                format!("PersistentVolumeClaim \"{name}\" is invalid: {what} (422)"),
            )
        };
        if str_at(&claim, "/status/phase") != "Bound" {
            return invalid(
                "spec: Forbidden: spec is immutable after creation except resources.requests for bound claims",
            );
        }
        let current = str_at(&claim, "/spec/resources/requests/storage");
        let millis = |q: &str| crate::types::quantity::parse_millis(q).unwrap_or(0);
        if millis(storage) < millis(current) {
            return invalid(
                "spec.resources.requests.storage: Forbidden: field can not be less than previous value",
            );
        }
        let class = str_at(&claim, "/spec/storageClassName");
        let expandable = s
            .objects
            .get(&ObjectKey::new("StorageClass", None, class))
            .and_then(|o| o.manifest.as_ref())
            .and_then(|m| m.get("allowVolumeExpansion"))
            .and_then(Value::as_bool)
            == Some(true);
        if millis(storage) > millis(current) && !expandable {
            return refuse(
                FailureKind::Forbidden,
                format!(
                    "persistentvolumeclaims \"{name}\" is forbidden: only dynamically provisioned pvc can be resized and the storageclass that provisions the pvc must support resize (403)"
                ),
            );
        }
        if let Some(o) = s.objects.get_mut(&key)
            && let Some(m) = o.manifest.as_mut()
        {
            let before = m.clone();
            set_path(
                m,
                &["spec", "resources", "requests", "storage"].map(String::from),
                Value::String(storage.to_string()),
            );
            record_update(&mut o.managers, FIELD_MANAGER, &before, m);
            o.version = version;
        }
        Ok(())
    }

    async fn list_owned(&self, tenant: &str) -> ClusterResult<Vec<Observed>> {
        let s = self.lock();
        let Some(keys) = s.by_tenant.get(tenant) else {
            return Ok(Vec::new());
        };
        Ok(keys
            .iter()
            .filter(|k| crate::operator::cluster::OwnedKind::from_name(&k.kind).is_some())
            .filter_map(|k| {
                let o = s.objects.get(k)?;
                Some(Observed {
                    key: k.clone(),
                    hash: o.hash.clone(),
                    identity: o.identity.clone(),
                    foreign_edit: o.foreign_edit.clone(),
                })
            })
            .collect())
    }

    async fn readiness(&self, key: &ObjectKey) -> ClusterResult<Option<Readiness>> {
        let s = self.lock();
        let Some(o) = s.objects.get(key) else {
            return Ok(None);
        };
        let desired = o.replicas.unwrap_or(1) as i32;
        let ready = if o.ready && !s.unready.contains(key) {
            desired
        } else {
            0
        };
        Ok(Some(Readiness { desired, ready }))
    }

    async fn patch_status(&self, tenant: &str, status: &TenantStatus) -> ClusterResult<()> {
        let mut s = self.lock();
        let t = s
            .tenants
            .get_mut(tenant)
            .ok_or_else(|| not_found("patch status of", format!("Tenant/{tenant}")))?;
        // Through JSON, as the API server stores it.
        let stored = serde_json::to_value(status)
            .and_then(serde_json::from_value::<TenantStatus>)
            .map_err(|e| {
                ClusterError::new(
                    FailureKind::Invalid,
                    "patch status of",
                    format!("Tenant/{tenant}"),
                    e.to_string(),
                )
            })?;
        t.status = Some(stored);
        s.bump_tenant(tenant);
        s.writes.status_patches += 1;
        Ok(())
    }

    async fn patch_channel_status(
        &self,
        channel: &str,
        status: &ChannelStatus,
    ) -> ClusterResult<()> {
        let mut s = self.lock();
        let c = s
            .channels
            .get_mut(channel)
            .ok_or_else(|| not_found("patch status of", format!("Channel/{channel}")))?;
        c.status = Some(status.clone());
        s.writes.status_patches += 1;
        Ok(())
    }

    async fn add_finalizer(&self, tenant: &Tenant) -> ClusterResult<()> {
        let mut s = self.lock();
        self.guarded_tenant_write(&mut s, tenant, "patch finalizers of")?;
        let name = tenant.name();
        if let Some(t) = s.tenants.get_mut(name) {
            let f = t.metadata.finalizers.get_or_insert_with(Vec::new);
            if !f.iter().any(|x| x == FINALIZER) {
                f.push(FINALIZER.to_string());
            }
        }
        s.bump_tenant(name);
        s.writes.finalizer_patches += 1;
        Ok(())
    }

    async fn remove_finalizer(&self, tenant: &Tenant) -> ClusterResult<()> {
        let mut s = self.lock();
        let name = tenant.name().to_string();
        if !s.tenants.contains_key(&name) {
            return Ok(());
        }
        self.guarded_tenant_write(&mut s, tenant, "patch finalizers of")?;
        let Some(t) = s.tenants.get_mut(&name) else {
            return Ok(());
        };
        if let Some(f) = t.metadata.finalizers.as_mut() {
            f.retain(|x| x != FINALIZER);
        }
        let gone = t.metadata.deletion_timestamp.is_some()
            && t.metadata.finalizers.as_ref().is_none_or(|f| f.is_empty());
        s.writes.finalizer_patches += 1;
        if gone {
            s.tenants.remove(&name);
        } else {
            s.bump_tenant(&name);
        }
        Ok(())
    }

    async fn delete_tenant(&self, name: &str) -> ClusterResult<()> {
        let mut s = self.lock();
        s.writes.tenant_deletes += 1;
        delete_tenant_in(&mut s, name);
        Ok(())
    }

    async fn publish_event(&self, tenant: &Tenant, event: &EventInfo) -> ClusterResult<()> {
        let mut s = self.lock();
        s.writes.events += 1;
        s.events.push((tenant.name().to_string(), event.clone()));
        Ok(())
    }
    /// Recorded under `Channel/<name>` ([`events_for`](MemoryCluster::events_for)).
    async fn publish_channel_event(
        &self,
        channel: &Channel,
        event: &EventInfo,
    ) -> ClusterResult<()> {
        let mut s = self.lock();
        s.writes.events += 1;
        s.events
            .push((format!("Channel/{}", channel.name()), event.clone()));
        Ok(())
    }
    async fn get_secret(&self, namespace: &str, name: &str) -> ClusterResult<Option<SecretData>> {
        let mut s = self.lock();
        s.secret_reads += 1;
        let key = ObjectKey::new("Secret", Some(namespace), name);
        let Some(manifest) = s.objects.get(&key).and_then(|o| o.manifest.as_ref()) else {
            return Ok(None);
        };
        secret_data(&key, manifest).map(Some)
    }

    async fn create_secret(&self, key: &ObjectKey, manifest: &Value) -> ClusterResult<()> {
        let mut s = self.lock();
        if s.objects.contains_key(key) {
            return Err(ClusterError::new(
                FailureKind::Conflict,
                "create",
                key,
                "already exists",
            ));
        }
        // (A namespace that was never created is taken to exist: the platform namespace.)
        if let Some(ns) = &key.namespace
            && s.objects
                .get(&ObjectKey::new("Namespace", None, ns))
                .is_some_and(|n| n.terminating)
        {
            return Err(terminating_namespace("Secret", &key.name, ns));
        }
        secret_data(key, manifest)?;
        s.writes.secrets += 1;
        let version = s.bump_version();
        // Kept out of `by_tenant`: Secrets are not part of the applied, hashed objects.
        // Always stored whole (also in a lean cluster): the operator reads their data.
        let mut managers = BTreeMap::new();
        managers.insert(FIELD_MANAGER.to_string(), leaf_set(manifest));
        s.objects.insert(
            key.clone(),
            Stored {
                manifest: Some(manifest.clone()),
                version,
                managers,
                owners: owner_uids(manifest),
                ..Default::default()
            },
        );
        Ok(())
    }

    async fn secret_version(&self, namespace: &str, name: &str) -> Option<Option<String>> {
        let s = self.lock();
        let key = ObjectKey::new("Secret", Some(namespace), name);
        Some(s.objects.get(&key).map(|o| o.version.to_string()))
    }

    async fn patch_secret_data(&self, key: &ObjectKey, data: &SecretData) -> ClusterResult<()> {
        use base64::Engine as _;
        let mut s = self.lock();
        let version = s.bump_version();
        let stored = s
            .objects
            .get_mut(key)
            .ok_or_else(|| not_found("patch", key))?;
        stored.version = version;
        let manifest = stored
            .manifest
            .as_mut()
            .ok_or_else(|| not_found("patch", key))?;
        let map = manifest
            .as_object_mut()
            .ok_or_else(|| ClusterError::new(FailureKind::Invalid, "patch", key, "not an object"))?
            .entry("data")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(m) = map.as_object_mut() {
            for (k, v) in data {
                m.insert(
                    k.clone(),
                    Value::String(base64::engine::general_purpose::STANDARD.encode(v)),
                );
            }
        }
        s.writes.secrets += 1;
        Ok(())
    }
}

/// Decoded `data` of a stored Secret manifest.
fn secret_data(key: &ObjectKey, manifest: &Value) -> ClusterResult<SecretData> {
    use base64::Engine as _;
    let invalid = |m: String| ClusterError::new(FailureKind::Invalid, "read", key, m);
    let mut out = SecretData::new();
    if let Some(data) = manifest.get("data").and_then(Value::as_object) {
        for (k, v) in data {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(v.as_str().unwrap_or_default())
                .map_err(|e| invalid(format!("key {k:?}: {e}")))?;
            let text = String::from_utf8(raw)
                .map_err(|_| invalid(format!("key {k:?} is not UTF-8 text")))?;
            out.insert(k.clone(), text);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cm(data: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "c", "namespace": "ns", "labels": {TENANT_LABEL: "a"}},
               "data": data})
    }

    #[test]
    fn apply_merges_by_field_manager() {
        let mut obj = cm(json!({"x": "1", "y": "2"}));
        let mut managers = BTreeMap::new();
        managers.insert(FIELD_MANAGER.to_string(), leaf_set(&obj));
        // Someone else adds a label and changes y.
        let before = obj.clone();
        obj["metadata"]["labels"]["team"] = json!("blue");
        obj["data"]["y"] = json!("edited");
        record_update(&mut managers, EDITOR, &before, &obj);
        // The operator re-applies without x: x goes, y is taken back, the label stays.
        merge_apply(
            &mut obj,
            &mut managers,
            FIELD_MANAGER,
            &cm(json!({"y": "2"})),
        );
        assert_eq!(obj["data"], json!({"y": "2"}));
        assert_eq!(obj["metadata"]["labels"]["team"], "blue");
        assert_eq!(
            managers[EDITOR],
            BTreeSet::from([vec!["metadata".to_string(), "labels".into(), "team".into()]])
        );
        // A map emptied by the removal goes with it.
        let mut without = cm(json!({}));
        without.as_object_mut().unwrap().remove("data");
        merge_apply(&mut obj, &mut managers, FIELD_MANAGER, &without);
        assert!(obj.get("data").is_none(), "{obj}");
        assert_eq!(obj["metadata"]["labels"]["team"], "blue");
    }
}
