//! The owned-object index: metadata of every object the operator owns, by tenant, fed by the
//! controller's metadata-only watches ([`crate::operator::controller::tenants`]), so a
//! reconcile reads memory instead of listing every owned kind; and the resourceVersion of
//! every tenant Secret, so an unchanged Secret is not read again.
//!
//! It is held for the operator's life, one entry per owned object and per tenant Secret
//! (~16 per Siloed tenant), so it is kept compact (issue #11, part 7): a tenant's objects are
//! one exact-size list rather than a hash table; namespaces, names and identity annotations,
//! which repeat across objects and tenants, are shared ([`Interner`]); the 32-hex-digit
//! applied hash is kept as its 16 bytes and an etcd resourceVersion as a number. Reading an
//! entry back gives exactly the strings that were stored.
//!
//! It also holds the readiness of the tenants' StatefulSets and Deployments as last read,
//! reused while the watch shows them unchanged ([`super::readings`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tokio::sync::RwLock;

use super::kube_client::observe;
use super::readings::{Readings, WorkloadKey};
use super::{ObjectKey, Observed, OwnedKind, Readiness};

/// Metadata of owned objects by tenant, fed by metadata watches so a reconcile reads memory
/// instead of listing 11 kinds from the API server.
#[derive(Default)]
pub struct OwnedIndex {
    inner: RwLock<IndexState>,
}

#[derive(Default)]
struct IndexState {
    /// Every owned object of every tenant.
    by_tenant: HashMap<Box<str>, Vec<Entry>>,
    /// Kinds whose initial list has completed.
    synced: HashSet<&'static str>,
    /// Objects of a kind being re-listed (watch restart), swapped in at InitDone.
    relisting: HashMap<OwnedKind, Vec<(Box<str>, Entry)>>,
    /// resourceVersion of every Secret labelled with a tenant, by (namespace, name), so a
    /// reconcile reads a Secret only when it changed since it was last checked.
    secrets: HashMap<SecretName, Text>,
    secrets_relisting: Option<HashMap<SecretName, Text>>,
    /// The readiness of StatefulSets and Deployments as last read, while still current.
    readings: Readings,
    /// The one copy of every namespace, name and identity in use.
    strings: Interner,
}

/// A tenant Secret's namespace and name.
type SecretName = (Arc<str>, Arc<str>);

/// One owned object as the index keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    kind: OwnedKind,
    namespace: Option<Arc<str>>,
    name: Arc<str>,
    /// `silo.dev/applied-hash`.
    hash: Option<Text>,
    /// `silo.dev/identity` (the same for most tenants: shared).
    identity: Option<Arc<str>>,
    foreign_edit: Option<Box<str>>,
}

impl Entry {
    fn of(o: &Observed, strings: &mut Interner) -> Option<Entry> {
        Some(Entry {
            kind: OwnedKind::from_name(&o.key.kind)?,
            namespace: o.key.namespace.as_deref().map(|n| strings.get(n)),
            name: strings.get(&o.key.name),
            hash: o.hash.as_deref().map(Text::new),
            identity: o.identity.as_deref().map(|i| strings.get(i)),
            foreign_edit: o.foreign_edit.as_deref().map(Box::from),
        })
    }

    fn same_object(&self, other: &Entry) -> bool {
        (self.kind, &self.namespace, &self.name) == (other.kind, &other.namespace, &other.name)
    }

    fn observed(&self) -> Observed {
        Observed {
            key: ObjectKey::new(self.kind.name(), self.namespace.as_deref(), &self.name),
            hash: self.hash.as_ref().map(Text::to_string),
            identity: self.identity.as_deref().map(str::to_string),
            foreign_edit: self.foreign_edit.as_deref().map(str::to_string),
        }
    }
}

/// A short machine-made string kept in the fewest bytes that give it back exactly: 32
/// lowercase hex digits (the applied hash, [`crate::operator::reconcile::desired`]) as 16
/// bytes, a decimal number without leading zeros (an etcd resourceVersion) as a `u64`,
/// anything else as it is.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Text {
    Hex16([u8; 16]),
    Number(u64),
    Other(Box<str>),
}

impl Text {
    fn new(s: &str) -> Text {
        let lower_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
        if s.len() == 32
            && s.bytes().all(lower_hex)
            && let Ok(v) = hex::decode(s)
            && let Ok(bytes) = <[u8; 16]>::try_from(v.as_slice())
        {
            return Text::Hex16(bytes);
        }
        if !s.starts_with('0')
            && let Ok(n) = s.parse::<u64>()
            && n.to_string() == s
        {
            return Text::Number(n);
        }
        Text::Other(s.into())
    }
}

impl Text {
    /// `s` as a number when [`Text::new`] would keep it as one (no leading zeros).
    fn number(s: &str) -> Option<u64> {
        match Text::new(s) {
            Text::Number(n) => Some(n),
            _ => None,
        }
    }
}

impl std::fmt::Display for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Text::Hex16(b) => f.write_str(&hex::encode(b)),
            Text::Number(n) => write!(f, "{n}"),
            Text::Other(s) => f.write_str(s),
        }
    }
}

/// One shared copy of each string: the same namespace for a tenant's dozen objects, the same
/// dozen object names and identities for every tenant. Copies no entry uses any more are
/// dropped whenever the set has doubled since the last sweep (amortised constant time).
#[derive(Debug, Default)]
struct Interner {
    set: HashSet<Arc<str>>,
    sweep_at: usize,
}

impl Interner {
    fn get(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.set.get(s) {
            return a.clone();
        }
        if self.set.len() >= self.sweep_at {
            self.set.retain(|a| Arc::strong_count(a) > 1);
            self.sweep_at = (self.set.len() * 2).max(64);
        }
        let a: Arc<str> = Arc::from(s);
        self.set.insert(a.clone());
        a
    }
}

/// Kind name of the Secret metadata watch (not an [`OwnedKind`]: Secrets are not applied).
pub const SECRET_KIND: &str = "Secret";

impl IndexState {
    fn secret_entry(&mut self, meta: &ObjectMeta) -> Option<(SecretName, Text)> {
        let (ns, name) = (meta.namespace.as_deref()?, meta.name.as_deref()?);
        let rv = Text::new(meta.resource_version.as_deref()?);
        Some(((self.strings.get(ns), self.strings.get(name)), rv))
    }

    /// The key of a workload already known (the lookup needs no allocation): None when
    /// `key` is no workload or names a namespace or name no entry holds.
    fn known_workload(&self, key: &ObjectKey) -> Option<WorkloadKey> {
        let kind = OwnedKind::from_name(&key.kind).filter(|k| Readings::holds(*k))?;
        let ns = self.strings.set.get(key.namespace.as_deref()?)?;
        let name = self.strings.set.get(key.name.as_str())?;
        Some((kind, ns.clone(), name.clone()))
    }

    /// Notes the version of a watched (or written) workload.
    fn watched(&mut self, kind: OwnedKind, meta: &ObjectMeta) {
        if !Readings::holds(kind) {
            return;
        }
        if let (Some(ns), Some(name)) = (meta.namespace.as_deref(), meta.name.as_deref()) {
            let workload = (kind, self.strings.get(ns), self.strings.get(name));
            let version = meta.resource_version.as_deref().and_then(Text::number);
            self.readings.watched(workload, version);
        }
    }

    fn put(&mut self, tenant: &str, entry: Entry) {
        let list = match self.by_tenant.get_mut(tenant) {
            Some(l) => l,
            None => self.by_tenant.entry(tenant.into()).or_default(),
        };
        // A tenant's list lives as long as the tenant.
        crate::heap::upsert_exact(list, entry, Entry::same_object);
    }
}

/// How long a reconcile waits for the owned kinds' first lists ([`OwnedIndex::wait_synced`])
/// before it lists its tenant's objects from the API server itself.
pub const SYNC_WAIT: Duration = Duration::from_secs(120);

impl OwnedIndex {
    /// Whether every owned kind has been listed (the index answers for every tenant).
    pub async fn is_synced(&self) -> bool {
        let s = self.inner.read().await;
        OwnedKind::ALL.iter().all(|k| s.synced.contains(k.name()))
    }

    /// Waits (checking every 100 ms) until [`is_synced`](Self::is_synced), at most `max`;
    /// whether it is. At start-up a reconcile waits here rather than list its objects from
    /// the API server: a label-selected list reads every object of the kind in etcd, so one
    /// per kind per tenant while the watches still list made a 10,000-tenant restart slower
    /// the longer the watches took (`controller::list_gate` lists two kinds at a time).
    pub async fn wait_synced(&self, max: Duration) -> bool {
        let until = tokio::time::Instant::now() + max;
        loop {
            if self.is_synced().await {
                return true;
            }
            if tokio::time::Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The resourceVersion of a tenant Secret once the Secret watch has listed them all:
    /// `Some(None)` = no such Secret, `None` = not known yet.
    pub async fn secret_version(&self, namespace: &str, name: &str) -> Option<Option<String>> {
        let s = self.inner.read().await;
        if !s.synced.contains(SECRET_KIND) {
            return None;
        }
        // A string no entry holds names no Secret (the lookup needs no allocation).
        let (Some(ns), Some(name)) = (s.strings.set.get(namespace), s.strings.set.get(name)) else {
            return Some(None);
        };
        Some(
            s.secrets
                .get(&(ns.clone(), name.clone()))
                .map(Text::to_string),
        )
    }

    /// The readiness of a StatefulSet or Deployment as last read ([`Self::record_readiness`]),
    /// when its watch has listed them all and reported no change since: the GET would answer
    /// the same ([`Readings`]). None = read it.
    pub async fn readiness(&self, key: &ObjectKey) -> Option<Readiness> {
        let s = self.inner.read().await;
        let workload = s.known_workload(key)?;
        if !s.synced.contains(workload.0.name()) {
            return None;
        }
        s.readings.current(&workload)
    }

    /// A GET answered `readiness` for the workload `key` at `resource_version`.
    pub async fn record_readiness(
        &self,
        key: &ObjectKey,
        resource_version: &str,
        readiness: Readiness,
    ) {
        let mut s = self.inner.write().await;
        if let Some(workload) = s.known_workload(key) {
            s.readings
                .read(&workload, Text::number(resource_version), readiness);
        }
    }

    pub async fn get(&self, tenant: &str) -> Vec<Observed> {
        let s = self.inner.read().await;
        let mut v: Vec<Observed> = s
            .by_tenant
            .get(tenant)
            .map(|l| l.iter().map(Entry::observed).collect())
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
        let mut s = self.inner.write().await;
        if kind == SECRET_KIND {
            if let Some((k, rv)) = s.secret_entry(meta) {
                s.secrets.insert(k, rv);
            }
            return;
        }
        if let Some((tenant, o)) = observe(kind, meta)
            && let Some(e) = Entry::of(&o, &mut s.strings)
        {
            s.watched(e.kind, meta);
            s.put(&tenant, e);
        }
    }

    pub async fn remove(&self, kind: &str, meta: &ObjectMeta) {
        let mut s = self.inner.write().await;
        if kind == SECRET_KIND {
            if let Some((k, _)) = s.secret_entry(meta) {
                s.secrets.remove(&k);
            }
            return;
        }
        if let Some(name) = meta.name.as_deref()
            && let Some(k) =
                s.known_workload(&ObjectKey::new(kind, meta.namespace.as_deref(), name))
        {
            s.readings.removed(&k);
        }
        if let Some((tenant, o)) = observe(kind, meta)
            && let Some(gone) = Entry::of(&o, &mut s.strings)
            && let Some(list) = s.by_tenant.get_mut(tenant.as_str())
        {
            list.retain(|e| !e.same_object(&gone));
            if list.is_empty() {
                s.by_tenant.remove(tenant.as_str());
            }
        }
    }

    pub async fn relist_start(&self, kind: &str) {
        let mut s = self.inner.write().await;
        if kind == SECRET_KIND {
            s.secrets_relisting = Some(HashMap::new());
        } else if let Some(k) = OwnedKind::from_name(kind) {
            s.relisting.insert(k, Vec::new());
            s.readings.forget_kind(k);
        }
    }

    pub async fn relist_item(&self, kind: &str, meta: &ObjectMeta) {
        let mut s = self.inner.write().await;
        if kind == SECRET_KIND {
            if let Some((k, rv)) = s.secret_entry(meta) {
                s.secrets_relisting
                    .get_or_insert_with(HashMap::new)
                    .insert(k, rv);
            }
            return;
        }
        if let Some((tenant, o)) = observe(kind, meta)
            && let Some(e) = Entry::of(&o, &mut s.strings)
        {
            s.watched(e.kind, meta);
            s.relisting
                .entry(e.kind)
                .or_default()
                .push((tenant.into(), e));
        }
    }

    pub async fn relist_done(&self, kind: &str) {
        let mut s = self.inner.write().await;
        if kind == SECRET_KIND {
            let mut listed = s.secrets_relisting.take().unwrap_or_default();
            listed.shrink_to_fit();
            s.secrets = listed;
            s.synced.insert(SECRET_KIND);
            return;
        }
        let Some(owned) = OwnedKind::from_name(kind) else {
            return;
        };
        let items = s.relisting.remove(&owned).unwrap_or_default();
        for list in s.by_tenant.values_mut() {
            list.retain(|e| e.kind != owned);
        }
        for (tenant, e) in items {
            s.put(&tenant, e);
        }
        s.by_tenant.retain(|_, l| {
            l.shrink_to_fit();
            !l.is_empty()
        });
        s.synced.insert(owned.name());
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

    proptest::proptest! {
        /// Whatever the index is given back is exactly what it was given.
        #[test]
        fn text_gives_back_exactly_what_it_was_given(s in "[0-9a-fA-F]{0,40}|[0-9]{1,22}|\\PC{0,20}") {
            proptest::prop_assert_eq!(Text::new(&s).to_string(), s);
        }
    }

    #[test]
    fn machine_made_strings_are_kept_compactly() {
        let hash = "0123456789abcdef0123456789abcdef";
        assert!(matches!(Text::new(hash), Text::Hex16(_)));
        assert!(matches!(Text::new("48213"), Text::Number(48213)));
        for other in [
            "0123456789ABCDEF0123456789ABCDEF",
            "007",
            "0",
            "",
            "18446744073709551616",
        ] {
            assert!(matches!(Text::new(other), Text::Other(_)), "{other}");
        }
    }

    #[test]
    fn the_interner_shares_copies_and_drops_unused_ones() {
        let mut i = Interner::default();
        let a = i.get("silo-settings");
        let b = i.get("silo-settings");
        assert!(Arc::ptr_eq(&a, &b));
        drop((a, b));
        // Only the interner holds it now: gone at the next sweep (the set doubled).
        let kept: Vec<Arc<str>> = (0..200).map(|n| i.get(&format!("tenant-{n}"))).collect();
        assert!(i.set.len() <= kept.len() + 1);
        assert!(!i.set.contains("silo-settings"));
    }

    /// A workload's readiness is answered from memory only once its watch has listed them
    /// all and while the watch shows the version the GET read; a change, a deletion or a
    /// re-list sends the next reconcile to the API server again.
    /// A reconcile at start-up waits for the owned kinds' lists, but not for ever.
    #[tokio::test(start_paused = true)]
    async fn waiting_for_the_first_lists_ends_when_the_last_kind_is_listed_or_at_the_limit() {
        let index = Arc::new(OwnedIndex::default());
        let started = tokio::time::Instant::now();
        assert!(!index.wait_synced(Duration::from_secs(5)).await);
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(5),
            "gave up at the limit"
        );
        let lister = {
            let index = index.clone();
            tokio::spawn(async move {
                for kind in OwnedKind::ALL {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    index.relist_start(kind.name()).await;
                    index.relist_done(kind.name()).await;
                }
            })
        };
        let started = tokio::time::Instant::now();
        assert!(index.wait_synced(SYNC_WAIT).await);
        let waited = started.elapsed();
        let kinds = OwnedKind::ALL.len() as u64;
        assert!(
            waited >= Duration::from_secs(kinds) && waited < Duration::from_secs(kinds + 1),
            "{waited:?}: until the last of {kinds} kinds was listed"
        );
        lister.await.unwrap();
    }

    #[tokio::test]
    async fn workload_readiness_is_reused_only_while_the_watch_shows_it_unchanged() {
        let index = OwnedIndex::default();
        let key = ObjectKey::new("StatefulSet", Some("tenant-a"), "silo-postgres");
        let ready = Readiness {
            desired: 1,
            ready: 1,
        };
        let sts = |rv: &str| meta("tenant-a", "silo-postgres", "a", rv);
        index.upsert("StatefulSet", &sts("7")).await;
        index.record_readiness(&key, "7", ready).await;
        assert_eq!(index.readiness(&key).await, None, "not listed yet");
        index.relist_start("StatefulSet").await;
        index.relist_item("StatefulSet", &sts("7")).await;
        index.relist_done("StatefulSet").await;
        assert_eq!(index.readiness(&key).await, None, "the re-list forgot it");
        index.record_readiness(&key, "7", ready).await;
        assert_eq!(index.readiness(&key).await, Some(ready));
        index.upsert("StatefulSet", &sts("8")).await;
        assert_eq!(index.readiness(&key).await, None, "status changed");
        index.record_readiness(&key, "8", ready).await;
        assert_eq!(index.readiness(&key).await, Some(ready));
        index.remove("StatefulSet", &sts("8")).await;
        assert_eq!(index.readiness(&key).await, None, "deleted");
        index.upsert("StatefulSet", &sts("9")).await;
        index.record_readiness(&key, "9", ready).await;
        assert_eq!(index.readiness(&key).await, Some(ready), "created again");
        // A kind that is no workload is never cached.
        index
            .upsert("ConfigMap", &meta("tenant-a", "silo-postgres", "a", "9"))
            .await;
        let cm = ObjectKey::new("ConfigMap", Some("tenant-a"), "silo-postgres");
        index.record_readiness(&cm, "9", ready).await;
        assert_eq!(index.readiness(&cm).await, None);
    }

    #[tokio::test]
    async fn a_tenant_with_no_objects_left_is_forgotten() {
        let index = OwnedIndex::default();
        let m = meta("tenant-a", "silo-settings", "a", "5");
        index.upsert("ConfigMap", &m).await;
        index.upsert("ConfigMap", &m).await;
        assert_eq!(index.get("a").await.len(), 1, "the same object once");
        index.remove("ConfigMap", &m).await;
        assert!(index.inner.read().await.by_tenant.is_empty());
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
