//! The built-in `local` provider: a versioned master keyring wrapping one random AES-256 key per
//! tenant and key version (modelled on Vault transit).
//!
//! - The state is one [`KeyringDocument`] in memory, persisted record by record through a
//!   [`KeyringStore`]: the master keyring, each active tenant record, each retired record. A
//!   change writes only the records it changed (creating N keys costs N small writes, not N
//!   whole-keyring rewrites). The operator stores the master as `keyring.json` in the Secret
//!   [`KEYRING_SECRET_NAME`] and each record in its own Secret ([`tenant_secret_name`],
//!   [`retired_secret_name`]) in the platform namespace; an in-memory implementation exists
//!   for tests only (`keys::memory_store`).
//! - Changes start from the cached keyring; a write that loses a race (another instance changed
//!   that record) makes the provider re-read the keyring and try once more. Only the operator's
//!   leader writes; other instances [`refresh`](LocalProvider::refresh).
//! - Tenant keys are wrapped (AES-256-GCM) by the current master-key version. `rotate_master`
//!   adds a master version; `rewrap_tenant_keys` re-wraps every tenant key under it; after that
//!   `set_master_min_decryption_version` retires the old master versions.
//! - Data is encrypted with the tenant key: format byte, tenant-key version and key id in a
//!   self-describing header, random 96-bit nonce, AAD binding header, tenant and purpose.
//! - [`KeyProvider::rotate`] adds a tenant-key version; new writes use it, old versions decrypt
//!   until [`LocalProvider::set_min_decryption_version`] is raised (after
//!   [`KeyProvider::rewrap`]).
//! - [`KeyProvider::shred`] moves the tenant's record to `retired` (decrypt fails at once) with a
//!   `shredAfter` timestamp; [`KeyProvider::purge_expired`] destroys the wrapped keys after it.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use aes_gcm::Aes256Gcm;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::format::{self, LocalHeader};
use super::{
    DEFAULT_ROTATION_DAYS, DataKey, KeyContext, KeyError, KeyInfo, KeyProvider, KeyState,
    ShredReceipt, TenantKeySpec, validate_tenant,
};
use crate::config::KeyProviderKind;

/// Secret (in the platform namespace) the operator keeps the keyring in.
pub const KEYRING_SECRET_NAME: &str = "silo-keyring";
/// Data key of that Secret holding [`KeyringDocument::to_json`].
pub const KEYRING_SECRET_KEY: &str = "keyring.json";

/// Format of [`KeyringDocument`] (and of the master Secret).
pub const DOC_FORMAT: u32 = 1;
const WRAP_FORMAT: u8 = 0x10;
const WRAP_HEADER_LEN: usize = 1 + 4 + 8 + 4;
const WRAP_PURPOSE: &str = "tenant-key";

/// The persisted keyring: master-key versions and every tenant's wrapped keys.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyringDocument {
    pub format: u32,
    pub master: MasterKeyring,
    /// Active tenant keys by tenant name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tenants: BTreeMap<String, TenantKeyRecord>,
    /// Shredded keys (pending deletion or destroyed) by key id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub retired: BTreeMap<String, TenantKeyRecord>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MasterKeyring {
    pub current: u32,
    pub min_decryption_version: u32,
    /// Version → base64 of 32 random bytes.
    pub versions: BTreeMap<u32, MasterKeyVersion>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MasterKeyVersion {
    pub key: String,
    pub created_at: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TenantKeyRecord {
    pub tenant: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// 16 hex digits, random; also written into every ciphertext header.
    pub key_id: String,
    pub rotation_days: u32,
    pub current: u32,
    pub min_decryption_version: u32,
    pub created_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotated_at: Option<i64>,
    pub state: KeyState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shred_requested_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shred_after: Option<i64>,
    /// Version → tenant key wrapped by a master-key version. Emptied when destroyed.
    #[serde(default)]
    pub versions: BTreeMap<u32, WrappedTenantKey>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WrappedTenantKey {
    pub master_version: u32,
    /// base64 of `header ‖ nonce ‖ AES-256-GCM(tenant key)`.
    pub wrapped: String,
    pub created_at: i64,
}

impl KeyringDocument {
    /// A new keyring with one random master-key version.
    pub fn generate(now: OffsetDateTime) -> Self {
        let mut versions = BTreeMap::new();
        versions.insert(
            1,
            MasterKeyVersion {
                key: B64.encode(format::random_bytes::<32>()),
                created_at: now.unix_timestamp(),
            },
        );
        Self {
            format: DOC_FORMAT,
            master: MasterKeyring {
                current: 1,
                min_decryption_version: 1,
                versions,
            },
            tenants: BTreeMap::new(),
            retired: BTreeMap::new(),
        }
    }

    pub fn to_json(&self) -> Result<String, KeyError> {
        serde_json::to_string_pretty(self)
            .map_err(|e| KeyError::Keyring(format!("cannot serialise keyring: {e}")))
    }

    /// Parses and checks a stored keyring; the error names what is wrong.
    pub fn from_json(text: &str) -> Result<Self, KeyError> {
        let doc: Self = serde_json::from_str(text)
            .map_err(|e| KeyError::Keyring(format!("{KEYRING_SECRET_KEY} is not valid: {e}")))?;
        doc.validate()?;
        Ok(doc)
    }

    pub fn validate(&self) -> Result<(), KeyError> {
        if self.format != DOC_FORMAT {
            return Err(KeyError::Keyring(format!(
                "unsupported keyring format {} (expected {DOC_FORMAT})",
                self.format
            )));
        }
        if !self.master.versions.contains_key(&self.master.current) {
            return Err(KeyError::Keyring(format!(
                "master.current = {} but no such master version exists",
                self.master.current
            )));
        }
        for (v, mk) in &self.master.versions {
            decode_key(&mk.key)
                .map_err(|why| KeyError::Keyring(format!("master.versions.{v}.key: {why}")))?;
        }
        for (name, rec) in &self.tenants {
            if &rec.tenant != name || rec.state != KeyState::Enabled {
                return Err(KeyError::Keyring(format!(
                    "tenants.{name}: record is for {:?} in state {}",
                    rec.tenant, rec.state
                )));
            }
            if !rec.versions.contains_key(&rec.current) {
                return Err(KeyError::Keyring(format!(
                    "tenants.{name}: current version {} has no wrapped key",
                    rec.current
                )));
            }
        }
        Ok(())
    }

    fn master_key(&self, version: u32) -> Result<[u8; 32], KeyError> {
        if version < self.master.min_decryption_version {
            return Err(KeyError::VersionTooOld {
                owner: "the master keyring".into(),
                version,
                min: self.master.min_decryption_version,
            });
        }
        let mk = self
            .master
            .versions
            .get(&version)
            .ok_or(KeyError::UnknownVersion {
                owner: "the master keyring".into(),
                version,
                latest: self.master.current,
            })?;
        decode_key(&mk.key)
            .map_err(|why| KeyError::Keyring(format!("master.versions.{version}.key: {why}")))
    }
}

fn decode_key(b64: &str) -> Result<[u8; 32], String> {
    let raw = B64.decode(b64).map_err(|e| format!("not base64: {e}"))?;
    <[u8; 32]>::try_from(raw.as_slice()).map_err(|_| format!("{} bytes, expected 32", raw.len()))
}

fn key_id_bytes(key_id: &str) -> Result<[u8; 8], KeyError> {
    let raw = hex::decode(key_id)
        .map_err(|_| KeyError::Keyring(format!("key id {key_id:?} is not hex")))?;
    <[u8; 8]>::try_from(raw.as_slice())
        .map_err(|_| KeyError::Keyring(format!("key id {key_id:?} is not 8 bytes")))
}

fn wrap_header(master_version: u32, key_id: [u8; 8], version: u32) -> [u8; WRAP_HEADER_LEN] {
    let mut h = [0u8; WRAP_HEADER_LEN];
    h[0] = WRAP_FORMAT;
    h[1..5].copy_from_slice(&master_version.to_be_bytes());
    h[5..13].copy_from_slice(&key_id);
    h[13..17].copy_from_slice(&version.to_be_bytes());
    h
}

fn wrap_tenant_key(
    doc: &KeyringDocument,
    tenant: &str,
    key_id: [u8; 8],
    version: u32,
    key: &[u8; 32],
    now: i64,
) -> Result<WrappedTenantKey, KeyError> {
    let mv = doc.master.current;
    let master = format::cipher(&doc.master_key(mv)?);
    let sealed = format::seal(
        &master,
        &wrap_header(mv, key_id, version),
        &KeyContext::new(tenant, WRAP_PURPOSE),
        key,
    )?;
    Ok(WrappedTenantKey {
        master_version: mv,
        wrapped: B64.encode(sealed),
        created_at: now,
    })
}

fn unwrap_tenant_key(
    doc: &KeyringDocument,
    rec: &TenantKeyRecord,
    version: u32,
) -> Result<[u8; 32], KeyError> {
    let w = rec.versions.get(&version).ok_or(KeyError::UnknownVersion {
        owner: format!("tenant {:?}", rec.tenant),
        version,
        latest: rec.current,
    })?;
    let master = format::cipher(&doc.master_key(w.master_version)?);
    let sealed = B64.decode(&w.wrapped).map_err(|e| {
        KeyError::Keyring(format!(
            "wrapped key {} v{version} is not base64: {e}",
            rec.key_id
        ))
    })?;
    if sealed.get(..WRAP_HEADER_LEN)
        != Some(&wrap_header(w.master_version, key_id_bytes(&rec.key_id)?, version)[..])
    {
        return Err(KeyError::Keyring(format!(
            "wrapped key {} v{version} has a header that does not match its record",
            rec.key_id
        )));
    }
    let plain = format::open(
        &master,
        &sealed,
        WRAP_HEADER_LEN,
        &KeyContext::new(rec.tenant.clone(), WRAP_PURPOSE),
    )
    .map_err(|_| {
        KeyError::Keyring(format!(
            "wrapped key {} v{version} does not unwrap under master version {}",
            rec.key_id, w.master_version
        ))
    })?;
    <[u8; 32]>::try_from(plain.as_slice())
        .map_err(|_| KeyError::Keyring(format!("tenant key {} is not 32 bytes", rec.key_id)))
}

fn ts(secs: Option<i64>) -> Option<OffsetDateTime> {
    secs.and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
}

fn info(rec: &TenantKeyRecord, created: bool) -> KeyInfo {
    KeyInfo {
        tenant: rec.tenant.clone(),
        key_id: rec.key_id.clone(),
        version: rec.current,
        state: rec.state,
        created,
        created_at: ts(Some(rec.created_at)),
        rotated_at: ts(rec.rotated_at),
        delete_after: ts(rec.shred_after),
    }
}

/// Label on every Secret of the sharded keyring (`"true"`): load = one GET of
/// [`KEYRING_SECRET_NAME`] plus one LIST by this label.
pub const KEYRING_LABEL: &str = "silo.dev/keyring";
/// Data key of a tenant-record Secret holding one [`TenantKeyRecord`] as JSON.
pub const RECORD_SECRET_KEY: &str = "record.json";

/// Secret holding the active key record of `tenant`: `silo-key-<tenant>`.
pub fn tenant_secret_name(tenant: &str) -> String {
    format!("silo-key-{tenant}")
}

/// Secret holding the retired (shredded) record `key_id`: `silo-key-retired.<key id>`. The dot
/// cannot occur in a tenant name (a DNS label), so no tenant's Secret can take this name.
pub fn retired_secret_name(key_id: &str) -> String {
    format!("silo-key-retired.{key_id}")
}

/// Where the keyring lives, one record at a time: the master keyring, each active tenant record
/// and each retired record are stored separately, so a change writes only what it changed.
/// The operator implements it over Secrets in the platform namespace
/// (`keys::keyring_store::SecretKeyringStore`); the in-memory one (`keys::memory_store`) exists
/// only for tests.
///
/// Every write is a compare-and-swap on the version the store last saw of that record (from
/// [`load`](Self::load) or its own last write): a record it never saw is created and must not
/// exist yet. A lost race is a [`KeyError::Conflict`] naming the record.
pub trait KeyringStore: Send + Sync + fmt::Debug {
    /// The whole keyring assembled from its records, or `None` when no master keyring was
    /// stored yet.
    fn load(&self) -> BoxFuture<'_, Result<Option<KeyringDocument>, KeyError>>;
    /// Writes the master keyring (format and master-key versions, no tenant records).
    fn save_master<'a>(&'a self, master: &'a MasterKeyring) -> BoxFuture<'a, Result<(), KeyError>>;
    /// Writes the active record of `rec.tenant`.
    fn save_tenant<'a>(&'a self, rec: &'a TenantKeyRecord) -> BoxFuture<'a, Result<(), KeyError>>;
    /// Writes the retired record `rec.key_id`.
    fn save_retired<'a>(&'a self, rec: &'a TenantKeyRecord) -> BoxFuture<'a, Result<(), KeyError>>;
    /// Removes the active record of `tenant` (after its record was saved as retired). Removing
    /// an absent record succeeds.
    fn delete_tenant<'a>(&'a self, tenant: &'a str) -> BoxFuture<'a, Result<(), KeyError>>;
}

#[cfg(any(test, feature = "test-support"))]
pub use super::memory_store::{MemoryKeyringStore, StoreCalls};

/// Whether `e` is a lost compare-and-swap (the record changed since the store read it).
pub fn is_conflict(e: &KeyError) -> bool {
    matches!(e, KeyError::Conflict(_))
}

/// The message of a lost compare-and-swap on `what`.
pub fn conflict_message(what: &str, reason: &str) -> String {
    format!(
        "{what} changed since it was read (409 {reason}): not saved; the keyring is re-read on the next attempt"
    )
}

/// What one mutation changed, persisted record by record (retired records first, so a
/// shredded key is never lost between its two writes).
#[derive(Debug, Default)]
struct Changes {
    master: Option<MasterKeyring>,
    retired: Vec<TenantKeyRecord>,
    tenants: Vec<TenantKeyRecord>,
    removed: Vec<String>,
}

impl Changes {
    fn tenant(rec: TenantKeyRecord) -> Self {
        Self {
            tenants: vec![rec],
            ..Self::default()
        }
    }

    fn apply(self, doc: &mut KeyringDocument) {
        if let Some(m) = self.master {
            doc.master = m;
        }
        for r in self.retired {
            doc.retired.insert(r.key_id.clone(), r);
        }
        for r in self.tenants {
            doc.tenants.insert(r.tenant.clone(), r);
        }
        for t in self.removed {
            doc.tenants.remove(&t);
        }
    }
}

/// Source of "now" (tests pass a fixed clock).
pub type Clock = Arc<dyn Fn() -> OffsetDateTime + Send + Sync>;

struct State {
    doc: KeyringDocument,
    /// Unwrapped tenant keys by (key id, version).
    ciphers: HashMap<([u8; 8], u32), Aes256Gcm>,
    /// A write failed part-way or lost a race: re-read the store before the next change.
    stale: bool,
}

/// The `local` key provider. See the module documentation.
pub struct LocalProvider {
    store: Arc<dyn KeyringStore>,
    deletion_window: time::Duration,
    clock: Clock,
    state: tokio::sync::Mutex<State>,
}

impl fmt::Debug for LocalProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalProvider")
            .field("store", &self.store)
            .field("deletion_window", &self.deletion_window)
            .finish_non_exhaustive()
    }
}

impl LocalProvider {
    /// Loads the keyring from `store`, or generates and saves a new one.
    pub async fn open(
        store: Arc<dyn KeyringStore>,
        deletion_window_days: u32,
    ) -> Result<Self, KeyError> {
        Self::open_with_clock(
            store,
            deletion_window_days,
            Arc::new(OffsetDateTime::now_utc),
        )
        .await
    }

    pub async fn open_with_clock(
        store: Arc<dyn KeyringStore>,
        deletion_window_days: u32,
        clock: Clock,
    ) -> Result<Self, KeyError> {
        let doc = match store.load().await? {
            Some(doc) => {
                doc.validate()?;
                doc
            }
            None => {
                let doc = KeyringDocument::generate(clock());
                store.save_master(&doc.master).await?;
                tracing::info!("generated a new local master keyring");
                doc
            }
        };
        Ok(Self {
            store,
            deletion_window: time::Duration::days(i64::from(deletion_window_days)),
            clock,
            state: tokio::sync::Mutex::new(State {
                doc,
                ciphers: HashMap::new(),
                stale: false,
            }),
        })
    }

    /// Reloads the keyring from the store (for instances that only read, e.g. after another
    /// instance created or shredded keys). Cached tenant keys of shredded keys are dropped.
    pub async fn refresh(&self) -> Result<(), KeyError> {
        let mut st = self.state.lock().await;
        self.reload(&mut st).await
    }

    async fn reload(&self, st: &mut State) -> Result<(), KeyError> {
        let Some(doc) = self.store.load().await? else {
            st.stale = false;
            return Ok(());
        };
        doc.validate()?;
        let live: std::collections::HashSet<String> =
            doc.tenants.values().map(|r| r.key_id.clone()).collect();
        st.ciphers
            .retain(|(id, _), _| live.contains(&hex::encode(id)));
        st.doc = doc;
        st.stale = false;
        Ok(())
    }

    /// A copy of the current keyring (for inspection; contains key material).
    pub async fn document(&self) -> KeyringDocument {
        self.state.lock().await.doc.clone()
    }

    /// Current master-key version.
    pub async fn master_version(&self) -> u32 {
        self.state.lock().await.doc.master.current
    }

    /// Computes a change with `f` from the cached keyring, writes only the records it changed,
    /// then applies it in memory. Nothing is re-read unless needed: when a write loses a race
    /// (another instance changed a record), the keyring is re-read and `f` runs once more;
    /// after any other failed write the next change re-reads first.
    async fn mutate<R>(
        &self,
        f: impl Fn(&KeyringDocument, i64) -> Result<(R, Changes), KeyError>,
    ) -> Result<R, KeyError> {
        let mut st = self.state.lock().await;
        if st.stale {
            self.reload(&mut st).await?;
        }
        let (r, changes) = f(&st.doc, (self.clock)().unix_timestamp())?;
        let (r, changes) = match self.persist(&changes).await {
            Ok(()) => (r, changes),
            Err(e) => {
                st.stale = true;
                if !is_conflict(&e) {
                    return Err(e);
                }
                tracing::info!(error = %e, "keyring changed by another instance; re-reading");
                self.reload(&mut st).await?;
                let (r, changes) = f(&st.doc, (self.clock)().unix_timestamp())?;
                if let Err(e) = self.persist(&changes).await {
                    st.stale = true;
                    return Err(e);
                }
                (r, changes)
            }
        };
        changes.apply(&mut st.doc);
        Ok(r)
    }

    async fn persist(&self, c: &Changes) -> Result<(), KeyError> {
        if let Some(m) = &c.master {
            self.store.save_master(m).await?;
        }
        for r in &c.retired {
            self.store.save_retired(r).await?;
        }
        for r in &c.tenants {
            self.store.save_tenant(r).await?;
        }
        for t in &c.removed {
            self.store.delete_tenant(t).await?;
        }
        Ok(())
    }

    /// Adds a master-key version; new tenant keys are wrapped with it. Returns the new version.
    pub async fn rotate_master(&self) -> Result<u32, KeyError> {
        self.mutate(|doc, now| {
            let mut master = doc.master.clone();
            let v = master.current + 1;
            master.versions.insert(
                v,
                MasterKeyVersion {
                    key: B64.encode(format::random_bytes::<32>()),
                    created_at: now,
                },
            );
            master.current = v;
            Ok((
                v,
                Changes {
                    master: Some(master),
                    ..Changes::default()
                },
            ))
        })
        .await
    }

    /// Re-wraps every active tenant key version under the current master version. Returns how
    /// many wrapped keys changed.
    pub async fn rewrap_tenant_keys(&self) -> Result<usize, KeyError> {
        self.mutate(|doc, now| {
            let current = doc.master.current;
            let mut changed = 0;
            let mut out = Changes::default();
            for rec in doc.tenants.values() {
                if rec.versions.values().all(|w| w.master_version == current) {
                    continue;
                }
                let id = key_id_bytes(&rec.key_id)?;
                let mut new = rec.clone();
                for (v, w) in &rec.versions {
                    if w.master_version == current {
                        continue;
                    }
                    let key = unwrap_tenant_key(doc, rec, *v)?;
                    let mut nw = wrap_tenant_key(doc, &rec.tenant, id, *v, &key, now)?;
                    nw.created_at = w.created_at;
                    new.versions.insert(*v, nw);
                    changed += 1;
                }
                out.tenants.push(new);
            }
            Ok((changed, out))
        })
        .await
    }

    /// Refuses master versions below `min` from now on. Fails (naming the tenant) while a tenant
    /// key is still wrapped by such a version: run [`rewrap_tenant_keys`](Self::rewrap_tenant_keys) first.
    pub async fn set_master_min_decryption_version(&self, min: u32) -> Result<(), KeyError> {
        self.mutate(|doc, _| {
            if min < doc.master.min_decryption_version || min > doc.master.current {
                return Err(KeyError::InvalidRotation(format!(
                    "master minimum decryption version {min} must be between {} and {}",
                    doc.master.min_decryption_version, doc.master.current
                )));
            }
            for rec in doc.tenants.values() {
                if let Some((v, w)) = rec.versions.iter().find(|(_, w)| w.master_version < min) {
                    return Err(KeyError::InvalidRotation(format!(
                        "tenant {:?} key version {v} is still wrapped by master version {}; rewrap tenant keys first",
                        rec.tenant, w.master_version
                    )));
                }
            }
            let mut master = doc.master.clone();
            master.min_decryption_version = min;
            Ok((
                (),
                Changes {
                    master: Some(master),
                    ..Changes::default()
                },
            ))
        })
        .await
    }

    /// Refuses tenant-key versions below `min` (like Vault transit's `min_decryption_version`).
    pub async fn set_min_decryption_version(
        &self,
        tenant: &str,
        min: u32,
    ) -> Result<KeyInfo, KeyError> {
        validate_tenant(tenant)?;
        let r = self
            .mutate(|doc, _| {
                let mut rec = doc.tenants.get(tenant).cloned().ok_or(KeyError::NotFound {
                    tenant: tenant.to_string(),
                })?;
                if min < rec.min_decryption_version || min > rec.current {
                    return Err(KeyError::InvalidRotation(format!(
                        "minimum decryption version {min} of tenant {tenant:?} must be between {} and {}",
                        rec.min_decryption_version, rec.current
                    )));
                }
                rec.min_decryption_version = min;
                Ok((info(&rec, false), Changes::tenant(rec)))
            })
            .await?;
        Ok(r)
    }

    async fn ensure_key_impl(&self, spec: &TenantKeySpec) -> Result<KeyInfo, KeyError> {
        spec.validate()?;
        {
            let st = self.state.lock().await;
            if let Some(rec) = st.doc.tenants.get(&spec.tenant)
                && rec.parent == spec.parent
                && rec.rotation_days == spec.rotation_days.unwrap_or(DEFAULT_ROTATION_DAYS)
            {
                return Ok(info(rec, false));
            }
        }
        self.mutate(|doc, now| {
            if let Some(rec) = doc.tenants.get(&spec.tenant) {
                let rotation_days = spec.rotation_days.unwrap_or(DEFAULT_ROTATION_DAYS);
                if rec.parent == spec.parent && rec.rotation_days == rotation_days {
                    // Made by another instance (found on a re-read after a lost race).
                    return Ok((info(rec, false), Changes::default()));
                }
                let mut rec = rec.clone();
                rec.parent = spec.parent.clone();
                rec.rotation_days = spec.rotation_days.unwrap_or(DEFAULT_ROTATION_DAYS);
                return Ok((info(&rec, false), Changes::tenant(rec)));
            }
            let (id, key_id) = loop {
                let id: [u8; 8] = format::random_bytes();
                let key_id = hex::encode(id);
                if !doc.retired.contains_key(&key_id)
                    && !doc.tenants.values().any(|r| r.key_id == key_id)
                {
                    break (id, key_id);
                }
            };
            let key: [u8; 32] = format::random_bytes();
            let wrapped = wrap_tenant_key(doc, &spec.tenant, id, 1, &key, now)?;
            let rec = TenantKeyRecord {
                tenant: spec.tenant.clone(),
                parent: spec.parent.clone(),
                key_id,
                rotation_days: spec.rotation_days.unwrap_or(DEFAULT_ROTATION_DAYS),
                current: 1,
                min_decryption_version: 1,
                created_at: now,
                rotated_at: None,
                state: KeyState::Enabled,
                shred_requested_at: None,
                shred_after: None,
                versions: BTreeMap::from([(1, wrapped)]),
            };
            let out = info(&rec, true);
            tracing::info!(tenant = %spec.tenant, key_id = %out.key_id, "created local tenant key");
            Ok((out, Changes::tenant(rec)))
        })
        .await
    }

    async fn key_info_impl(&self, tenant: &str) -> Result<KeyInfo, KeyError> {
        validate_tenant(tenant)?;
        let st = self.state.lock().await;
        st.doc
            .tenants
            .get(tenant)
            .map(|r| info(r, false))
            .ok_or(KeyError::NotFound {
                tenant: tenant.to_string(),
            })
    }

    async fn rotate_impl(&self, tenant: &str) -> Result<KeyInfo, KeyError> {
        validate_tenant(tenant)?;
        self.mutate(|doc, now| {
            let rec = doc.tenants.get(tenant).cloned().ok_or(KeyError::NotFound {
                tenant: tenant.to_string(),
            })?;
            let v = rec.current + 1;
            let key: [u8; 32] = format::random_bytes();
            let w = wrap_tenant_key(doc, tenant, key_id_bytes(&rec.key_id)?, v, &key, now)?;
            let mut rec = rec;
            rec.versions.insert(v, w);
            rec.current = v;
            rec.rotated_at = Some(now);
            tracing::info!(tenant, version = v, "rotated local tenant key");
            Ok((info(&rec, false), Changes::tenant(rec)))
        })
        .await
    }

    /// The cipher for `(rec, version)`, unwrapping and caching it on first use.
    fn cipher_for(
        st: &mut State,
        tenant: &str,
        version: u32,
    ) -> Result<(Aes256Gcm, [u8; 8]), KeyError> {
        let rec = st.doc.tenants.get(tenant).ok_or(KeyError::NotFound {
            tenant: tenant.to_string(),
        })?;
        if rec.state != KeyState::Enabled {
            return Err(KeyError::Unavailable {
                tenant: tenant.to_string(),
                key_id: rec.key_id.clone(),
                state: rec.state,
            });
        }
        if version < rec.min_decryption_version {
            return Err(KeyError::VersionTooOld {
                owner: format!("tenant {tenant:?}"),
                version,
                min: rec.min_decryption_version,
            });
        }
        let id = key_id_bytes(&rec.key_id)?;
        if let Some(c) = st.ciphers.get(&(id, version)) {
            return Ok((c.clone(), id));
        }
        let key = unwrap_tenant_key(&st.doc, rec, version)?;
        let c = format::cipher(&key);
        st.ciphers.insert((id, version), c.clone());
        Ok((c, id))
    }

    async fn encrypt_impl(&self, ctx: &KeyContext, plaintext: &[u8]) -> Result<Vec<u8>, KeyError> {
        ctx.validate()?;
        super::validate_plaintext(plaintext)?;
        let (cipher, version, id) =
            {
                let mut st = self.state.lock().await;
                let version = st.doc.tenants.get(&ctx.tenant).map(|r| r.current).ok_or(
                    KeyError::NotFound {
                        tenant: ctx.tenant.clone(),
                    },
                )?;
                let (c, id) = Self::cipher_for(&mut st, &ctx.tenant, version)?;
                (c, version, id)
            };
        let header = LocalHeader {
            version,
            key_id: id,
        }
        .encode();
        format::seal(&cipher, &header, ctx, plaintext)
    }

    async fn decrypt_impl(&self, ctx: &KeyContext, ciphertext: &[u8]) -> Result<Vec<u8>, KeyError> {
        ctx.validate()?;
        let header = LocalHeader::parse(ciphertext)?;
        let found = hex::encode(header.key_id);
        let cipher = {
            let mut st = self.state.lock().await;
            match st.doc.tenants.get(&ctx.tenant) {
                Some(rec) if rec.key_id == found => {}
                current => {
                    // Not the tenant's current key: a shredded key of this tenant, or foreign.
                    if let Some(old) = st.doc.retired.get(&found)
                        && old.tenant == ctx.tenant
                    {
                        return Err(KeyError::Unavailable {
                            tenant: ctx.tenant.clone(),
                            key_id: found,
                            state: old.state,
                        });
                    }
                    return Err(match current {
                        Some(rec) => KeyError::WrongKey {
                            tenant: ctx.tenant.clone(),
                            found,
                            expected: rec.key_id.clone(),
                        },
                        None => KeyError::NotFound {
                            tenant: ctx.tenant.clone(),
                        },
                    });
                }
            }
            Self::cipher_for(&mut st, &ctx.tenant, header.version)?.0
        };
        format::open(&cipher, ciphertext, format::LOCAL_HEADER_LEN, ctx)
    }

    async fn generate_data_key_impl(&self, ctx: &KeyContext) -> Result<DataKey, KeyError> {
        let plaintext: [u8; 32] = format::random_bytes();
        let wrapped = self.encrypt_impl(ctx, &plaintext).await?;
        let header = LocalHeader::parse(&wrapped)?;
        Ok(DataKey {
            key_id: hex::encode(header.key_id),
            version: header.version,
            plaintext,
            wrapped,
        })
    }

    async fn shred_impl(&self, tenant: &str) -> Result<ShredReceipt, KeyError> {
        validate_tenant(tenant)?;
        let window = self.deletion_window;
        let receipt = self
            .mutate(|doc, now| {
                let Some(mut rec) = doc.tenants.get(tenant).cloned() else {
                    // Idempotent: a second shred reports the pending deletion.
                    let pending = doc
                        .retired
                        .values()
                        .filter(|r| r.tenant == tenant && r.state == KeyState::PendingDeletion)
                        .max_by_key(|r| r.shred_requested_at);
                    return match pending {
                        Some(r) => Ok((
                            ShredReceipt {
                                tenant: tenant.to_string(),
                                key_id: r.key_id.clone(),
                                delete_after: ts(r.shred_after)
                                    .unwrap_or(OffsetDateTime::UNIX_EPOCH),
                            },
                            Changes::default(),
                        )),
                        None => Err(KeyError::NotFound {
                            tenant: tenant.to_string(),
                        }),
                    };
                };
                let after = now.saturating_add(window.whole_seconds());
                rec.state = KeyState::PendingDeletion;
                rec.shred_requested_at = Some(now);
                rec.shred_after = Some(after);
                let receipt = ShredReceipt {
                    tenant: tenant.to_string(),
                    key_id: rec.key_id.clone(),
                    delete_after: ts(Some(after)).unwrap_or(OffsetDateTime::UNIX_EPOCH),
                };
                Ok((
                    receipt,
                    Changes {
                        retired: vec![rec],
                        removed: vec![tenant.to_string()],
                        ..Changes::default()
                    },
                ))
            })
            .await?;
        let mut st = self.state.lock().await;
        if let Ok(id) = key_id_bytes(&receipt.key_id) {
            st.ciphers.retain(|(k, _), _| *k != id);
        }
        tracing::info!(tenant, key_id = %receipt.key_id, delete_after = %receipt.delete_after, "shredded local tenant key");
        Ok(receipt)
    }

    async fn purge_expired_impl(&self, now: OffsetDateTime) -> Result<Vec<String>, KeyError> {
        let now = now.unix_timestamp();
        {
            let st = self.state.lock().await;
            if !st.doc.retired.values().any(|r| expired(r, now)) {
                return Ok(Vec::new());
            }
        }
        let out = self
            .mutate(|doc, destroyed_at| {
                let mut out = Vec::new();
                let mut changes = Changes::default();
                for rec in doc.retired.values().filter(|r| expired(r, now)) {
                    let mut rec = rec.clone();
                    rec.versions.clear();
                    rec.state = KeyState::Destroyed;
                    rec.shred_requested_at = rec.shred_requested_at.or(Some(destroyed_at));
                    out.push(rec.key_id.clone());
                    changes.retired.push(rec);
                }
                Ok((out, changes))
            })
            .await?;
        for key_id in &out {
            tracing::info!(%key_id, "destroyed shredded tenant key");
        }
        Ok(out)
    }
}

fn expired(r: &TenantKeyRecord, now: i64) -> bool {
    r.state == KeyState::PendingDeletion && r.shred_after.is_some_and(|t| t <= now)
}

impl KeyProvider for LocalProvider {
    fn kind(&self) -> KeyProviderKind {
        KeyProviderKind::Local
    }

    fn ensure_key<'a>(
        &'a self,
        spec: &'a TenantKeySpec,
    ) -> BoxFuture<'a, Result<KeyInfo, KeyError>> {
        Box::pin(self.ensure_key_impl(spec))
    }

    fn key_info<'a>(&'a self, tenant: &'a str) -> BoxFuture<'a, Result<KeyInfo, KeyError>> {
        Box::pin(self.key_info_impl(tenant))
    }

    fn rotate<'a>(&'a self, tenant: &'a str) -> BoxFuture<'a, Result<KeyInfo, KeyError>> {
        Box::pin(self.rotate_impl(tenant))
    }

    fn encrypt<'a>(
        &'a self,
        ctx: &'a KeyContext,
        plaintext: &'a [u8],
    ) -> BoxFuture<'a, Result<Vec<u8>, KeyError>> {
        Box::pin(self.encrypt_impl(ctx, plaintext))
    }

    fn decrypt<'a>(
        &'a self,
        ctx: &'a KeyContext,
        ciphertext: &'a [u8],
    ) -> BoxFuture<'a, Result<Vec<u8>, KeyError>> {
        Box::pin(self.decrypt_impl(ctx, ciphertext))
    }

    fn generate_data_key<'a>(
        &'a self,
        ctx: &'a KeyContext,
    ) -> BoxFuture<'a, Result<DataKey, KeyError>> {
        Box::pin(self.generate_data_key_impl(ctx))
    }

    fn shred<'a>(&'a self, tenant: &'a str) -> BoxFuture<'a, Result<ShredReceipt, KeyError>> {
        Box::pin(self.shred_impl(tenant))
    }

    fn purge_expired(&self, now: OffsetDateTime) -> BoxFuture<'_, Result<Vec<String>, KeyError>> {
        Box::pin(self.purge_expired_impl(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicI64, Ordering};

    fn fixed_clock(t: Arc<AtomicI64>) -> Clock {
        Arc::new(move || {
            OffsetDateTime::from_unix_timestamp(t.load(Ordering::SeqCst))
                .unwrap_or(OffsetDateTime::UNIX_EPOCH)
        })
    }

    async fn provider() -> (LocalProvider, MemoryKeyringStore, Arc<AtomicI64>) {
        let store = MemoryKeyringStore::default();
        let t = Arc::new(AtomicI64::new(1_800_000_000));
        let p = LocalProvider::open_with_clock(Arc::new(store.clone()), 7, fixed_clock(t.clone()))
            .await
            .unwrap();
        (p, store, t)
    }

    #[tokio::test]
    async fn ciphertext_header_is_self_describing() {
        let (p, _, _) = provider().await;
        let k = p.ensure_key(&TenantKeySpec::new("a")).await.unwrap();
        let ctx = KeyContext::new("a", "db");
        let c1 = p.encrypt(&ctx, b"x").await.unwrap();
        let h = LocalHeader::parse(&c1).unwrap();
        assert_eq!((h.version, hex::encode(h.key_id)), (1, k.key_id.clone()));
        p.rotate("a").await.unwrap();
        let c2 = p.encrypt(&ctx, b"x").await.unwrap();
        assert_eq!(LocalHeader::parse(&c2).unwrap().version, 2);
        // Random nonces: the same plaintext never gives the same ciphertext.
        assert_ne!(p.encrypt(&ctx, b"x").await.unwrap(), c2);
    }

    #[tokio::test]
    async fn minimum_decryption_version_refuses_old_ciphertexts() {
        let (p, _, _) = provider().await;
        p.ensure_key(&TenantKeySpec::new("a")).await.unwrap();
        let ctx = KeyContext::new("a", "db");
        let old = p.encrypt(&ctx, b"old").await.unwrap();
        p.rotate("a").await.unwrap();
        let rewrapped = p.rewrap(&ctx, &old).await.unwrap();
        assert_eq!(LocalHeader::parse(&rewrapped).unwrap().version, 2);
        p.set_min_decryption_version("a", 2).await.unwrap();
        let e = p.decrypt(&ctx, &old).await.unwrap_err().to_string();
        assert!(
            e.contains("key version 1 of tenant \"a\" is below the minimum decryption version 2"),
            "{e}"
        );
        assert_eq!(p.decrypt(&ctx, &rewrapped).await.unwrap(), b"old");
        let e = p
            .set_min_decryption_version("a", 1)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("must be between 2 and 2"), "{e}");
        let e = p
            .set_min_decryption_version("nobody", 1)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("tenant \"nobody\" has no key"), "{e}");
    }

    #[tokio::test]
    async fn master_rotation_rewraps_and_retires_old_versions() {
        let (p, store, _) = provider().await;
        p.ensure_key(&TenantKeySpec::new("a")).await.unwrap();
        let ctx = KeyContext::new("a", "db");
        let c = p.encrypt(&ctx, b"data").await.unwrap();
        assert_eq!(p.rotate_master().await.unwrap(), 2);
        let e = p
            .set_master_min_decryption_version(2)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("tenant \"a\" key version 1 is still wrapped by master version 1"),
            "{e}"
        );
        assert_eq!(p.rewrap_tenant_keys().await.unwrap(), 1);
        assert_eq!(p.rewrap_tenant_keys().await.unwrap(), 0);
        p.set_master_min_decryption_version(2).await.unwrap();
        // A restarted provider (fresh cipher cache) still decrypts through master v2.
        let p2 = LocalProvider::open(Arc::new(store), 7).await.unwrap();
        assert_eq!(p2.decrypt(&ctx, &c).await.unwrap(), b"data");
        assert_eq!(p2.master_version().await, 2);
    }

    #[tokio::test]
    async fn shred_then_purge_after_window() {
        let (p, _, t) = provider().await;
        p.ensure_key(&TenantKeySpec::new("a")).await.unwrap();
        let r = p.shred("a").await.unwrap();
        let start = t.load(Ordering::SeqCst);
        assert_eq!(r.delete_after.unix_timestamp(), start + 7 * 86_400);
        // Second shred is idempotent.
        assert_eq!(p.shred("a").await.unwrap(), r);
        let before = OffsetDateTime::from_unix_timestamp(start + 7 * 86_400 - 1).unwrap();
        assert!(p.purge_expired(before).await.unwrap().is_empty());
        let doc = p.document().await;
        assert!(!doc.retired[&r.key_id].versions.is_empty());
        let purged = p.purge_expired(r.delete_after).await.unwrap();
        assert_eq!(purged, vec![r.key_id.clone()]);
        let doc = p.document().await;
        assert!(doc.retired[&r.key_id].versions.is_empty());
        assert_eq!(doc.retired[&r.key_id].state, KeyState::Destroyed);
        assert!(p.purge_expired(r.delete_after).await.unwrap().is_empty());
        let e = p.shred("a").await.unwrap_err().to_string();
        assert!(e.contains("has no key"), "{e}");
    }

    #[tokio::test]
    async fn keyring_json_round_trips_and_bad_documents_are_named() {
        let (p, store, _) = provider().await;
        p.ensure_key(&TenantKeySpec::new("a").with_parent("root"))
            .await
            .unwrap();
        let json = store.snapshot_json().unwrap().unwrap();
        let doc = KeyringDocument::from_json(&json).unwrap();
        assert_eq!(doc, p.document().await);
        assert_eq!(doc.tenants["a"].parent.as_deref(), Some("root"));

        let e = KeyringDocument::from_json("{").unwrap_err().to_string();
        assert!(e.contains("keyring.json is not valid"), "{e}");
        let mut bad = doc.clone();
        bad.master.current = 9;
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("master.current = 9"), "{e}");
        let mut bad = doc.clone();
        if let Some(v) = bad.master.versions.get_mut(&1) {
            v.key = B64.encode([0u8; 5]);
        }
        let e = bad.validate().unwrap_err().to_string();
        assert!(
            e.contains("master.versions.1.key: 5 bytes, expected 32"),
            "{e}"
        );
        let mut bad = doc.clone();
        bad.format = 7;
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("unsupported keyring format 7"), "{e}");
        let mut bad = doc;
        if let Some(r) = bad.tenants.get_mut("a") {
            r.versions.clear();
        }
        let e = bad.validate().unwrap_err().to_string();
        assert!(
            e.contains("tenants.a: current version 1 has no wrapped key"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn tampered_wrapped_key_is_reported() {
        let (p, store, _) = provider().await;
        p.ensure_key(&TenantKeySpec::new("a")).await.unwrap();
        let mut doc = p.document().await;
        // Swap in a wrapped key of another tenant: the AAD (tenant name) must reject it.
        p.ensure_key(&TenantKeySpec::new("b")).await.unwrap();
        let other = p.document().await.tenants["b"].versions[&1].clone();
        if let Some(r) = doc.tenants.get_mut("a") {
            r.versions.insert(1, other);
        }
        store.replace(&doc).unwrap();
        let p2 = LocalProvider::open(Arc::new(store), 7).await.unwrap();
        let e = p2
            .encrypt(&KeyContext::new("a", "db"), b"x")
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("header that does not match its record"), "{e}");
    }

    #[tokio::test]
    async fn failed_save_leaves_memory_unchanged() {
        #[derive(Debug)]
        struct FailingStore(MemoryKeyringStore, std::sync::atomic::AtomicBool);
        impl FailingStore {
            fn fail(&self) -> Option<BoxFuture<'_, Result<(), KeyError>>> {
                self.1.load(Ordering::SeqCst).then(|| {
                    Box::pin(async { Err(KeyError::Storage("secret update conflict".into())) })
                        as BoxFuture<'_, _>
                })
            }
        }
        impl KeyringStore for FailingStore {
            fn load(&self) -> BoxFuture<'_, Result<Option<KeyringDocument>, KeyError>> {
                self.0.load()
            }
            fn save_master<'a>(
                &'a self,
                m: &'a MasterKeyring,
            ) -> BoxFuture<'a, Result<(), KeyError>> {
                self.fail().unwrap_or_else(|| self.0.save_master(m))
            }
            fn save_tenant<'a>(
                &'a self,
                r: &'a TenantKeyRecord,
            ) -> BoxFuture<'a, Result<(), KeyError>> {
                self.fail().unwrap_or_else(|| self.0.save_tenant(r))
            }
            fn save_retired<'a>(
                &'a self,
                r: &'a TenantKeyRecord,
            ) -> BoxFuture<'a, Result<(), KeyError>> {
                self.fail().unwrap_or_else(|| self.0.save_retired(r))
            }
            fn delete_tenant<'a>(&'a self, t: &'a str) -> BoxFuture<'a, Result<(), KeyError>> {
                self.fail().unwrap_or_else(|| self.0.delete_tenant(t))
            }
        }
        let store = Arc::new(FailingStore(
            MemoryKeyringStore::default(),
            std::sync::atomic::AtomicBool::new(false),
        ));
        let p = LocalProvider::open(store.clone(), 7).await.unwrap();
        store.1.store(true, Ordering::SeqCst);
        let e = p
            .ensure_key(&TenantKeySpec::new("a"))
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(e, "keyring storage: secret update conflict");
        assert!(p.document().await.tenants.is_empty());
        // After a failed write the next change re-reads the keyring first.
        store.1.store(false, Ordering::SeqCst);
        let loads = store.0.calls().loads;
        p.ensure_key(&TenantKeySpec::new("a")).await.unwrap();
        assert_eq!(store.0.calls().loads, loads + 1);
        p.ensure_key(&TenantKeySpec::new("b")).await.unwrap();
        assert_eq!(store.0.calls().loads, loads + 1, "only once");
    }

    #[tokio::test]
    async fn creating_many_keys_writes_one_record_each_and_never_the_whole_keyring() {
        let (p, store, _) = provider().await;
        assert_eq!(
            store.calls(),
            StoreCalls {
                loads: 1,
                master_saves: 1,
                ..StoreCalls::default()
            }
        );
        for i in 0..5_000 {
            p.ensure_key(&TenantKeySpec::new(format!("t{i}")))
                .await
                .unwrap();
        }
        assert_eq!(
            store.calls(),
            StoreCalls {
                loads: 1,
                master_saves: 1,
                tenant_saves: 5_000,
                ..StoreCalls::default()
            },
            "one tenant record per key, no re-read, no master write"
        );
        // Steady state writes nothing; a rotation writes that one record.
        p.ensure_key(&TenantKeySpec::new("t7")).await.unwrap();
        p.rotate("t7").await.unwrap();
        assert_eq!(store.calls().tenant_saves, 5_001);
        assert_eq!(store.snapshot().unwrap().unwrap().tenants.len(), 5_000);
    }

    #[tokio::test]
    async fn each_change_writes_only_the_records_it_changed() {
        let (p, store, t) = provider().await;
        p.ensure_key(&TenantKeySpec::new("a")).await.unwrap();
        p.ensure_key(&TenantKeySpec::new("b")).await.unwrap();
        let base = store.calls();
        p.rotate_master().await.unwrap();
        assert_eq!(store.calls().master_saves, base.master_saves + 1);
        assert_eq!(store.calls().tenant_saves, base.tenant_saves);
        assert_eq!(p.rewrap_tenant_keys().await.unwrap(), 2);
        assert_eq!(store.calls().tenant_saves, base.tenant_saves + 2);
        let r = p.shred("a").await.unwrap();
        let c = store.calls();
        assert_eq!((c.retired_saves, c.tenant_deletes), (1, 1));
        let doc = store.snapshot().unwrap().unwrap();
        assert!(!doc.tenants.contains_key("a") && doc.tenants.contains_key("b"));
        assert_eq!(doc.retired[&r.key_id].state, KeyState::PendingDeletion);
        t.store(r.delete_after.unix_timestamp(), Ordering::SeqCst);
        p.purge_expired(r.delete_after).await.unwrap();
        let c2 = store.calls();
        assert_eq!(
            (c2.retired_saves, c2.tenant_saves, c2.master_saves),
            (2, c.tenant_saves, c.master_saves)
        );
        assert_eq!(c2.loads, 1, "no change re-read the keyring");
    }

    #[tokio::test]
    async fn a_lost_race_rereads_and_retries_once_and_never_overwrites() {
        let store = MemoryKeyringStore::default();
        let p1 = LocalProvider::open(Arc::new(store.clone()), 7)
            .await
            .unwrap();
        let p2 = LocalProvider::open(Arc::new(store.clone()), 7)
            .await
            .unwrap();
        let a = p1.ensure_key(&TenantKeySpec::new("a")).await.unwrap();
        // p2 never saw "a": its create loses, it re-reads and finds the key p1 made.
        let again = p2.ensure_key(&TenantKeySpec::new("a")).await.unwrap();
        assert_eq!((again.key_id, again.created), (a.key_id.clone(), false));
        // p1 rotates; p2's rotation is computed from a stale record, loses, re-reads, and
        // rotates on top of p1's version.
        p1.rotate("a").await.unwrap();
        assert_eq!(p2.rotate("a").await.unwrap().version, 3);
        assert_eq!(store.snapshot().unwrap().unwrap().tenants["a"].current, 3);
    }

    #[tokio::test]
    async fn a_conflict_names_the_record_and_a_restored_keyring_is_reread() {
        let store = MemoryKeyringStore::default();
        let p = LocalProvider::open(Arc::new(store.clone()), 7)
            .await
            .unwrap();
        p.ensure_key(&TenantKeySpec::new("a")).await.unwrap();
        // A store that saw nothing: its first write of "a" is refused, naming the record.
        let blind = store.unseen_clone();
        let rec = store.snapshot().unwrap().unwrap().tenants["a"].clone();
        let e = blind.save_tenant(&rec).await.unwrap_err();
        assert!(is_conflict(&e), "{e}");
        let e = e.to_string();
        assert!(
            e.contains("keyring record silo-key-a changed since it was read (409 AlreadyExists)"),
            "{e}"
        );
        // Someone else replaces the keyring (a restore): p's writes now conflict; it re-reads
        // and succeeds on the restored keyring.
        let restored = store.snapshot().unwrap().unwrap();
        store.replace(&restored).unwrap();
        let loads = store.calls().loads;
        p.rotate("a").await.unwrap();
        assert_eq!(store.calls().loads, loads + 1);
        assert_eq!(store.snapshot().unwrap().unwrap().tenants["a"].current, 2);
    }
}
