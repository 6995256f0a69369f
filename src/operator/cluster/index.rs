//! The owned-object index: metadata of every object the operator owns, by tenant, fed by the
//! controller's metadata-only watches ([`crate::operator::controller::tenants`]), so a
//! reconcile reads memory instead of listing every owned kind; and the resourceVersion of
//! every tenant Secret, so an unchanged Secret is not read again.

use std::collections::HashMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tokio::sync::RwLock;

use super::kube_client::observe;
use super::{ObjectKey, Observed, OwnedKind};

/// Metadata of owned objects by tenant, fed by metadata watches so a reconcile reads memory
/// instead of listing 11 kinds from the API server.
#[derive(Default)]
pub struct OwnedIndex {
    inner: RwLock<IndexState>,
}

#[derive(Default)]
struct IndexState {
    /// Every owned object of every tenant, compactly: it is held for the operator's life.
    by_tenant: HashMap<Box<str>, HashMap<Slot, Compact>>,
    /// Kinds whose initial list has completed.
    synced: std::collections::HashSet<String>,
    /// Objects of a kind being re-listed (watch restart), swapped in at InitDone.
    relisting: HashMap<String, Vec<(String, Observed)>>,
    /// resourceVersion of every Secret labelled with a tenant (`namespace/name`), so a
    /// reconcile reads a Secret only when it changed since it was last checked.
    secrets: HashMap<(String, String), String>,
    secrets_relisting: Option<HashMap<(String, String), String>>,
}

/// An owned object's identity as the index keeps it: the kind as an [`OwnedKind`] (one byte
/// instead of a string per object), namespace and name without spare capacity.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Slot {
    kind: OwnedKind,
    namespace: Option<Box<str>>,
    name: Box<str>,
}

impl Slot {
    /// None for a kind the operator does not own (nothing of it is indexed).
    fn of(key: &ObjectKey) -> Option<Slot> {
        Some(Slot {
            kind: OwnedKind::from_name(&key.kind)?,
            namespace: key.namespace.as_deref().map(Box::from),
            name: key.name.as_str().into(),
        })
    }

    fn key(&self) -> ObjectKey {
        ObjectKey::new(self.kind.name(), self.namespace.as_deref(), &self.name)
    }
}

/// What the index keeps of an observed object besides its key.
#[derive(Clone, Debug)]
struct Compact {
    hash: Option<Box<str>>,
    identity: Option<Box<str>>,
    foreign_edit: Option<Box<str>>,
}

impl Compact {
    fn of(o: Observed) -> Option<(Slot, Compact)> {
        Some((
            Slot::of(&o.key)?,
            Compact {
                hash: o.hash.map(String::into_boxed_str),
                identity: o.identity.map(String::into_boxed_str),
                foreign_edit: o.foreign_edit.map(String::into_boxed_str),
            },
        ))
    }

    fn observed(&self, slot: &Slot) -> Observed {
        Observed {
            key: slot.key(),
            hash: self.hash.as_deref().map(str::to_string),
            identity: self.identity.as_deref().map(str::to_string),
            foreign_edit: self.foreign_edit.as_deref().map(str::to_string),
        }
    }
}

/// Kind name of the Secret metadata watch (not an [`OwnedKind`]: Secrets are not applied).
pub const SECRET_KIND: &str = "Secret";

fn secret_entry(meta: &ObjectMeta) -> Option<((String, String), String)> {
    Some((
        (meta.namespace.clone()?, meta.name.clone()?),
        meta.resource_version.clone()?,
    ))
}

impl OwnedIndex {
    pub async fn is_synced(&self) -> bool {
        let s = self.inner.read().await;
        OwnedKind::ALL.iter().all(|k| s.synced.contains(k.name()))
    }

    /// The resourceVersion of a tenant Secret once the Secret watch has listed them all:
    /// `Some(None)` = no such Secret, `None` = not known yet.
    pub async fn secret_version(&self, namespace: &str, name: &str) -> Option<Option<String>> {
        let s = self.inner.read().await;
        if !s.synced.contains(SECRET_KIND) {
            return None;
        }
        Some(
            s.secrets
                .get(&(namespace.to_string(), name.to_string()))
                .cloned(),
        )
    }

    pub async fn get(&self, tenant: &str) -> Vec<Observed> {
        let s = self.inner.read().await;
        let mut v: Vec<Observed> = s
            .by_tenant
            .get(tenant)
            .map(|m| m.iter().map(|(k, c)| c.observed(k)).collect())
            .unwrap_or_default();
        v.sort_by(|a, b| a.key.cmp(&b.key));
        v
    }

    /// Records an object as watched (or as written by the operator: the same metadata the
    /// watch will report). Objects without the `silo.dev/tenant` label are not the watches'
    /// and are ignored.
    pub async fn upsert(&self, kind: &str, meta: &ObjectMeta) {
        if !meta
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(crate::render::meta::TENANT_LABEL))
        {
            return;
        }
        if kind == SECRET_KIND {
            if let Some((k, rv)) = secret_entry(meta) {
                self.inner.write().await.secrets.insert(k, rv);
            }
            return;
        }
        if let Some((tenant, o)) = observe(kind, meta)
            && let Some((slot, c)) = Compact::of(o)
        {
            let mut s = self.inner.write().await;
            s.by_tenant
                .entry(tenant.into_boxed_str())
                .or_default()
                .insert(slot, c);
        }
    }

    pub async fn remove(&self, kind: &str, meta: &ObjectMeta) {
        if kind == SECRET_KIND {
            if let (Some(ns), Some(name)) = (&meta.namespace, &meta.name) {
                self.inner
                    .write()
                    .await
                    .secrets
                    .remove(&(ns.clone(), name.clone()));
            }
            return;
        }
        if let Some((tenant, o)) = observe(kind, meta)
            && let Some(slot) = Slot::of(&o.key)
        {
            let mut s = self.inner.write().await;
            if let Some(m) = s.by_tenant.get_mut(tenant.as_str()) {
                m.remove(&slot);
            }
        }
    }

    pub async fn relist_start(&self, kind: &str) {
        let mut s = self.inner.write().await;
        if kind == SECRET_KIND {
            s.secrets_relisting = Some(HashMap::new());
            return;
        }
        s.relisting.insert(kind.to_string(), Vec::new());
    }

    pub async fn relist_item(&self, kind: &str, meta: &ObjectMeta) {
        if kind == SECRET_KIND {
            if let Some((k, rv)) = secret_entry(meta) {
                let mut s = self.inner.write().await;
                s.secrets_relisting
                    .get_or_insert_with(HashMap::new)
                    .insert(k, rv);
            }
            return;
        }
        if let Some(item) = observe(kind, meta) {
            let mut s = self.inner.write().await;
            s.relisting.entry(kind.to_string()).or_default().push(item);
        }
    }

    pub async fn relist_done(&self, kind: &str) {
        let mut s = self.inner.write().await;
        if kind == SECRET_KIND {
            s.secrets = s.secrets_relisting.take().unwrap_or_default();
            s.synced.insert(kind.to_string());
            return;
        }
        let items = s.relisting.remove(kind).unwrap_or_default();
        for m in s.by_tenant.values_mut() {
            m.retain(|k, _| k.kind.name() != kind);
        }
        for (tenant, o) in items {
            if let Some((slot, c)) = Compact::of(o) {
                s.by_tenant
                    .entry(tenant.into_boxed_str())
                    .or_default()
                    .insert(slot, c);
            }
        }
        s.synced.insert(kind.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::cluster::HASH_ANNOTATION;
    use crate::render::meta::TENANT_LABEL;

    fn meta(ns: &str, name: &str, tenant: &str, rv: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            labels: Some([(TENANT_LABEL.to_string(), tenant.to_string())].into()),
            resource_version: Some(rv.into()),
            ..Default::default()
        }
    }

    /// The operator's own writes are recorded as the watches would (write-through), but only
    /// objects the watches select: a Secret without the tenant label (a key record in the
    /// platform namespace) stays unknown, a labelled one is known at its new version.
    #[tokio::test]
    async fn only_labelled_objects_enter_the_index() {
        let index = OwnedIndex::default();
        index.relist_start(SECRET_KIND).await;
        index.relist_done(SECRET_KIND).await;
        let mut record = meta("silo-system", "silo-key-a", "a", "3");
        record.labels = None;
        index.upsert(SECRET_KIND, &record).await;
        assert_eq!(
            index.secret_version("silo-system", "silo-key-a").await,
            Some(None)
        );
        index
            .upsert(SECRET_KIND, &meta("tenant-a", "silo-data-key", "a", "4"))
            .await;
        assert_eq!(
            index.secret_version("tenant-a", "silo-data-key").await,
            Some(Some("4".into()))
        );
        let mut cm = meta("tenant-a", "silo-settings", "a", "5");
        cm.labels = None;
        index.upsert("ConfigMap", &cm).await;
        assert!(index.get("a").await.is_empty());
    }

    #[tokio::test]
    async fn owned_objects_come_back_with_their_hash_and_foreign_edit() {
        let index = OwnedIndex::default();
        let mut m = meta("tenant-a", "silo-settings", "a", "5");
        m.annotations = Some([(HASH_ANNOTATION.to_string(), "abc".to_string())].into());
        index.upsert("ConfigMap", &m).await;
        let got = index.get("a").await;
        assert_eq!(got.len(), 1);
        assert_eq!(
            got[0].key,
            ObjectKey::new("ConfigMap", Some("tenant-a"), "silo-settings")
        );
        assert_eq!(got[0].hash.as_deref(), Some("abc"));
        assert_eq!(got[0].foreign_edit, None);
        index.remove("ConfigMap", &m).await;
        assert!(index.get("a").await.is_empty());
    }

    #[tokio::test]
    async fn secret_versions_are_known_once_listed_and_never_listed_as_owned() {
        let index = OwnedIndex::default();
        let db = meta("tenant-a", "silo-postgres-credentials", "a", "10");
        index.upsert(SECRET_KIND, &db).await;
        assert_eq!(
            index
                .secret_version("tenant-a", "silo-postgres-credentials")
                .await,
            None,
            "unknown until the initial list is done"
        );
        index.relist_start(SECRET_KIND).await;
        index.relist_item(SECRET_KIND, &db).await;
        index.relist_done(SECRET_KIND).await;
        assert_eq!(
            index
                .secret_version("tenant-a", "silo-postgres-credentials")
                .await,
            Some(Some("10".into()))
        );
        assert_eq!(index.secret_version("tenant-a", "other").await, Some(None));
        index
            .upsert(
                SECRET_KIND,
                &meta("tenant-a", "silo-postgres-credentials", "a", "11"),
            )
            .await;
        assert_eq!(
            index
                .secret_version("tenant-a", "silo-postgres-credentials")
                .await,
            Some(Some("11".into()))
        );
        assert!(
            index.get("a").await.is_empty(),
            "Secrets are not applied objects: never candidates for deletion"
        );
        index.remove(SECRET_KIND, &db).await;
        assert_eq!(
            index
                .secret_version("tenant-a", "silo-postgres-credentials")
                .await,
            Some(None)
        );
        // A re-list replaces the set (a Secret deleted while the watch was down is gone).
        index.upsert(SECRET_KIND, &db).await;
        index.relist_start(SECRET_KIND).await;
        index.relist_done(SECRET_KIND).await;
        assert_eq!(
            index
                .secret_version("tenant-a", "silo-postgres-credentials")
                .await,
            Some(None)
        );
    }
}
