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
//!
//! Modules: [`keyring`] (the document and the wrapping of tenant keys), [`store`] (the
//! persistence seam); the provider itself is here.

use std::fmt;
use std::sync::Arc;

use aes_gcm::Aes256Gcm;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use futures::future::BoxFuture;
use time::OffsetDateTime;

use super::format::{self, LocalHeader};
use super::{
    DEFAULT_ROTATION_DAYS, DataKey, KeyContext, KeyError, KeyInfo, KeyProvider, KeyState,
    ShredReceipt, TenantKeySpec, validate_tenant,
};
use crate::config::KeyProviderKind;

pub mod keyring;
pub mod store;
#[cfg(test)]
mod tests;

pub use keyring::{
    DOC_FORMAT, KEYRING_LABEL, KEYRING_SECRET_KEY, KEYRING_SECRET_NAME, KeyVersions,
    KeyringDocument, MasterKeyVersion, MasterKeyring, RECORD_SECRET_KEY, TenantKeyRecord,
    WrappedTenantKey, retired_secret_name, tenant_secret_name,
};
use keyring::{info, key_id_bytes, ts, unwrap_tenant_key, wrap_tenant_key};
pub use store::{KeyringStore, conflict_message, is_conflict};
#[cfg(any(test, feature = "test-support"))]
pub use store::{MemoryKeyringStore, StoreCalls};

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
            state: tokio::sync::Mutex::new(State { doc, stale: false }),
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
                versions: KeyVersions::from_iter([(1, wrapped)]),
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

    /// The cipher for `(rec, version)`, unwrapped from the keyring for this one use: one
    /// AES-256-GCM decryption of 32 bytes, microseconds. Not cached — a cache held ~2 KiB per
    /// tenant for the process's life (heaptrack, 1,000 tenants) and a second copy of every key.
    fn cipher_for(
        st: &State,
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
        let key = unwrap_tenant_key(&st.doc, rec, version)?;
        Ok((format::cipher(&key), id))
    }

    async fn encrypt_impl(&self, ctx: &KeyContext, plaintext: &[u8]) -> Result<Vec<u8>, KeyError> {
        ctx.validate()?;
        super::validate_plaintext(plaintext)?;
        let (cipher, version, id) =
            {
                let st = self.state.lock().await;
                let version = st.doc.tenants.get(&ctx.tenant).map(|r| r.current).ok_or(
                    KeyError::NotFound {
                        tenant: ctx.tenant.clone(),
                    },
                )?;
                let (c, id) = Self::cipher_for(&st, &ctx.tenant, version)?;
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
            let st = self.state.lock().await;
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
            Self::cipher_for(&st, &ctx.tenant, header.version)?.0
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
