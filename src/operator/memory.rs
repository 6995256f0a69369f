//! An in-memory cluster for tests and benchmarks: a plain struct implementing [`Cluster`]
//! that stores objects, counts every write, and can simulate other actors (someone deletes
//! or edits an object, a 409 conflict, workloads that are not ready).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Mutex;

use serde_json::Value;

use crate::hierarchy::Inventory;
use crate::types::{Channel, ChannelStatus, LimitProfile, Tenant, TenantStatus};

use super::cluster::{
    Cluster, ClusterError, ClusterResult, EventInfo, FINALIZER, FailureKind, HASH_ANNOTATION,
    ObjectKey, Observed, Readiness, SecretData,
};
use crate::render::meta::TENANT_LABEL;

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

#[derive(Clone, Debug)]
struct Stored {
    /// The whole manifest (None in a lean cluster).
    manifest: Option<Value>,
    hash: Option<String>,
    replicas: Option<i64>,
    tenant: Option<String>,
    foreign_edit: Option<String>,
    /// resourceVersion: changes on every write.
    version: u64,
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
    conflicts_to_inject: u32,
    conflicts_injected: u32,
    unready: HashSet<ObjectKey>,
    next_uid: u64,
    edits: u64,
    next_version: u64,
    secret_reads: u64,
}

impl State {
    fn bump_version(&mut self) -> u64 {
        self.next_version += 1;
        self.next_version
    }
}

/// The in-memory cluster.
#[derive(Default)]
pub struct MemoryCluster {
    state: Mutex<State>,
    /// Keep only what the operator reads back (hash, replicas, owner) instead of whole
    /// manifests, so a benchmark's memory is mostly the operator's, not the fake's.
    lean: bool,
}

fn label_of(manifest: &Value) -> Option<String> {
    manifest
        .pointer("/metadata/labels")
        .and_then(|l| l.get(TENANT_LABEL))
        .and_then(Value::as_str)
        .map(str::to_string)
}

impl State {
    fn remove_object(&mut self, key: &ObjectKey) -> bool {
        let Some(old) = self.objects.remove(key) else {
            return false;
        };
        if let Some(t) = old.tenant
            && let Some(set) = self.by_tenant.get_mut(&t)
        {
            set.remove(key);
        }
        if key.kind == "Namespace" {
            let inside: Vec<ObjectKey> = self
                .objects
                .keys()
                .filter(|k| k.namespace.as_deref() == Some(key.name.as_str()))
                .cloned()
                .collect();
            for k in inside {
                self.remove_object(&k);
            }
        }
        true
    }

    /// Garbage collection after a Tenant is gone: everything labelled with it goes.
    fn collect_garbage(&mut self, tenant: &str) {
        let keys: Vec<ObjectKey> = self
            .by_tenant
            .get(tenant)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        for k in keys {
            self.remove_object(&k);
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
    /// generation bumped on spec changes; status and finalizers are kept.
    pub fn put_tenant(&self, mut t: Tenant) {
        let mut s = self.lock();
        let name = t.name().to_string();
        match s.tenants.get(&name) {
            Some(old) => {
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
            }
        }
        s.tenants.insert(name, t);
    }

    pub fn put_profile(&self, p: LimitProfile) {
        self.lock().profiles.insert(p.name().to_string(), p);
    }

    pub fn put_channel(&self, c: Channel) {
        let name = c.metadata.name.clone().unwrap_or_default();
        self.lock().channels.insert(name, c);
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

    /// Someone else deletes an object.
    pub fn delete_behind_our_back(&self, key: &ObjectKey) -> bool {
        self.lock().remove_object(key)
    }

    /// Someone else edits an object (kubectl edit): the change is recorded as a foreign
    /// field manager's edit, as managedFields would show it.
    pub fn edit_behind_our_back(&self, key: &ObjectKey, edit: impl FnOnce(&mut Value)) -> bool {
        let mut s = self.lock();
        s.edits += 1;
        let stamp = format!("edit-{}", s.edits);
        let version = s.bump_version();
        match s.objects.get_mut(key) {
            Some(o) => {
                o.version = version;
                if let Some(m) = o.manifest.as_mut() {
                    edit(m);
                }
                o.foreign_edit = Some(stamp);
                true
            }
            None => false,
        }
    }

    /// The next `n` applies fail with 409 Conflict.
    pub fn inject_conflicts(&self, n: u32) {
        self.lock().conflicts_to_inject = n;
    }

    pub fn conflicts_injected(&self) -> u32 {
        self.lock().conflicts_injected
    }

    /// Mark a workload as not ready (or ready again).
    pub fn set_unready(&self, key: &ObjectKey, unready: bool) {
        let mut s = self.lock();
        if unready {
            s.unready.insert(key.clone());
        } else {
            s.unready.remove(key);
        }
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
        }
    } else {
        s.tenants.remove(name);
        s.collect_garbage(name);
    }
    true
}

fn not_found(action: &'static str, what: impl std::fmt::Display) -> ClusterError {
    ClusterError::new(FailureKind::NotFound, action, what, "not found")
}

impl Cluster for MemoryCluster {
    async fn apply(&self, key: &ObjectKey, manifest: &Value) -> ClusterResult<()> {
        let mut s = self.lock();
        if s.conflicts_to_inject > 0 {
            s.conflicts_to_inject -= 1;
            s.conflicts_injected += 1;
            return Err(ClusterError::new(
                FailureKind::Conflict,
                "apply",
                key,
                "Operation cannot be fulfilled: the object has been modified",
            ));
        }
        if let Some(ns) = &key.namespace {
            let ns_key = ObjectKey::new("Namespace", None, ns);
            if !s.objects.contains_key(&ns_key) {
                return Err(ClusterError::new(
                    FailureKind::NotFound,
                    "apply",
                    key,
                    format!("namespaces \"{ns}\" not found"),
                ));
            }
        }
        s.writes.applies += 1;
        let version = s.bump_version();
        let tenant = label_of(manifest);
        if let Some(t) = &tenant {
            s.by_tenant
                .entry(t.clone())
                .or_default()
                .insert(key.clone());
        }
        s.objects.insert(
            key.clone(),
            Stored {
                manifest: (!self.lean).then(|| manifest.clone()),
                hash: manifest
                    .pointer("/metadata/annotations")
                    .and_then(|a| a.get(HASH_ANNOTATION))
                    .and_then(Value::as_str)
                    .map(str::to_string),
                replicas: manifest.pointer("/spec/replicas").and_then(Value::as_i64),
                tenant,
                foreign_edit: None,
                version,
            },
        );
        Ok(())
    }

    async fn delete(&self, key: &ObjectKey) -> ClusterResult<()> {
        let mut s = self.lock();
        s.writes.deletes += 1;
        s.remove_object(key);
        Ok(())
    }

    async fn list_owned(&self, tenant: &str) -> ClusterResult<Vec<Observed>> {
        let s = self.lock();
        let Some(keys) = s.by_tenant.get(tenant) else {
            return Ok(Vec::new());
        };
        Ok(keys
            .iter()
            .filter_map(|k| {
                let o = s.objects.get(k)?;
                Some(Observed {
                    key: k.clone(),
                    hash: o.hash.clone(),
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
        let ready = if s.unready.contains(key) { 0 } else { desired };
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
        let name = tenant.name();
        let t = s
            .tenants
            .get_mut(name)
            .ok_or_else(|| not_found("add finalizer to", format!("Tenant/{name}")))?;
        let f = t.metadata.finalizers.get_or_insert_with(Vec::new);
        if !f.iter().any(|x| x == FINALIZER) {
            f.push(FINALIZER.to_string());
        }
        s.writes.finalizer_patches += 1;
        Ok(())
    }

    async fn remove_finalizer(&self, tenant: &Tenant) -> ClusterResult<()> {
        let mut s = self.lock();
        let name = tenant.name().to_string();
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
            s.collect_garbage(&name);
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
        secret_data(key, manifest)?;
        s.writes.secrets += 1;
        let version = s.bump_version();
        // Kept out of `by_tenant`: Secrets are not part of the applied, hashed objects.
        // Always stored whole (also in a lean cluster): the operator reads their data.
        s.objects.insert(
            key.clone(),
            Stored {
                manifest: Some(manifest.clone()),
                hash: None,
                replicas: None,
                tenant: None,
                foreign_edit: None,
                version,
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
