//! The in-memory [`KeyringStore`]: a test double of the operator's Secret-backed store
//! (`keys::keyring_store::SecretKeyringStore`), with the same per-record compare-and-swap.
//! Compiled only for tests and the `test-support` feature (issue #11: nothing in the product
//! may fall back to a store that loses every key on restart).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use futures::future::BoxFuture;

use super::KeyError;
use super::local::{
    DOC_FORMAT, KEYRING_SECRET_NAME, KeyringDocument, KeyringStore, MasterKeyring, TenantKeyRecord,
    conflict_message, retired_secret_name, tenant_secret_name,
};

/// How often each [`KeyringStore`] method of a [`MemoryKeyringStore`] was called (shared by
/// its clones).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreCalls {
    pub loads: usize,
    pub master_saves: usize,
    pub tenant_saves: usize,
    pub retired_saves: usize,
    pub tenant_deletes: usize,
}

#[derive(Debug, Default)]
struct MemShared {
    master: Option<(MasterKeyring, u64)>,
    tenants: BTreeMap<String, (TenantKeyRecord, u64)>,
    retired: BTreeMap<String, (TenantKeyRecord, u64)>,
    next: u64,
    calls: StoreCalls,
}

/// In-memory [`KeyringStore`] with the same per-record compare-and-swap as the Secret store.
/// Clones share the stored records but each remembers the versions it saw itself (like two
/// operator replicas): a "restart" in tests is a new provider over a clone.
#[derive(Debug, Default)]
pub struct MemoryKeyringStore {
    shared: Arc<std::sync::Mutex<MemShared>>,
    /// Record name (as its Secret would be named) → version this store last saw.
    seen: std::sync::Mutex<HashMap<String, u64>>,
}

impl Clone for MemoryKeyringStore {
    fn clone(&self) -> Self {
        let seen = self
            .seen
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|p| p.into_inner().clone());
        Self {
            shared: self.shared.clone(),
            seen: std::sync::Mutex::new(seen),
        }
    }
}

fn poisoned<T>(_: T) -> KeyError {
    KeyError::Storage("memory keyring store lock poisoned".into())
}

impl MemoryKeyringStore {
    /// A store over the same records that has seen none of them (a replica that never
    /// loaded): its first write of an existing record is a conflict.
    pub fn unseen_clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            seen: std::sync::Mutex::default(),
        }
    }

    /// The stored keyring, assembled from its records.
    pub fn snapshot(&self) -> Result<Option<KeyringDocument>, KeyError> {
        let sh = self.shared.lock().map_err(poisoned)?;
        Ok(sh.master.as_ref().map(|(m, _)| KeyringDocument {
            format: DOC_FORMAT,
            master: m.clone(),
            tenants: sh
                .tenants
                .iter()
                .map(|(k, (r, _))| (k.clone(), r.clone()))
                .collect(),
            retired: sh
                .retired
                .iter()
                .map(|(k, (r, _))| (k.clone(), r.clone()))
                .collect(),
        }))
    }

    /// The stored keyring as one JSON document (what a backup of all keyring Secrets holds).
    pub fn snapshot_json(&self) -> Result<Option<String>, KeyError> {
        self.snapshot()?.map(|d| d.to_json()).transpose()
    }

    /// Replaces everything stored with `doc` (a restore; tests). Stores that saw the old
    /// records get conflicts until they load again.
    pub fn replace(&self, doc: &KeyringDocument) -> Result<(), KeyError> {
        let mut sh = self.shared.lock().map_err(poisoned)?;
        sh.next += 1;
        let v = sh.next;
        sh.master = Some((doc.master.clone(), v));
        sh.tenants = doc
            .tenants
            .iter()
            .map(|(k, r)| (k.clone(), (r.clone(), v)))
            .collect();
        sh.retired = doc
            .retired
            .iter()
            .map(|(k, r)| (k.clone(), (r.clone(), v)))
            .collect();
        Ok(())
    }

    /// How often each store method was called.
    pub fn calls(&self) -> StoreCalls {
        self.shared
            .lock()
            .map(|s| s.calls)
            .unwrap_or_else(|p| p.into_inner().calls)
    }

    /// Compare-and-swap: `stored` must be the version this store saw of `name`.
    fn check(&self, name: &str, stored: Option<u64>) -> Result<(), KeyError> {
        let seen = self.seen.lock().map_err(poisoned)?.get(name).copied();
        if seen == stored {
            Ok(())
        } else {
            let reason = if seen.is_none() {
                "AlreadyExists"
            } else {
                "Conflict"
            };
            Err(KeyError::Conflict(conflict_message(
                &format!("keyring record {name}"),
                reason,
            )))
        }
    }

    fn saw(&self, name: String, v: Option<u64>) -> Result<(), KeyError> {
        let mut seen = self.seen.lock().map_err(poisoned)?;
        match v {
            Some(v) => seen.insert(name, v),
            None => seen.remove(&name),
        };
        Ok(())
    }
}

impl KeyringStore for MemoryKeyringStore {
    fn load(&self) -> BoxFuture<'_, Result<Option<KeyringDocument>, KeyError>> {
        Box::pin(async move {
            let mut seen = HashMap::new();
            {
                let mut sh = self.shared.lock().map_err(poisoned)?;
                sh.calls.loads += 1;
                if let Some((_, v)) = &sh.master {
                    seen.insert(KEYRING_SECRET_NAME.to_string(), *v);
                }
                for (t, (_, v)) in &sh.tenants {
                    seen.insert(tenant_secret_name(t), *v);
                }
                for (k, (_, v)) in &sh.retired {
                    seen.insert(retired_secret_name(k), *v);
                }
            }
            *self.seen.lock().map_err(poisoned)? = seen;
            self.snapshot()
        })
    }

    fn save_master<'a>(&'a self, master: &'a MasterKeyring) -> BoxFuture<'a, Result<(), KeyError>> {
        Box::pin(async move {
            let mut sh = self.shared.lock().map_err(poisoned)?;
            sh.calls.master_saves += 1;
            self.check(KEYRING_SECRET_NAME, sh.master.as_ref().map(|(_, v)| *v))?;
            sh.next += 1;
            let v = sh.next;
            sh.master = Some((master.clone(), v));
            self.saw(KEYRING_SECRET_NAME.to_string(), Some(v))
        })
    }

    fn save_tenant<'a>(&'a self, rec: &'a TenantKeyRecord) -> BoxFuture<'a, Result<(), KeyError>> {
        Box::pin(async move {
            let name = tenant_secret_name(&rec.tenant);
            let mut sh = self.shared.lock().map_err(poisoned)?;
            sh.calls.tenant_saves += 1;
            self.check(&name, sh.tenants.get(&rec.tenant).map(|(_, v)| *v))?;
            sh.next += 1;
            let v = sh.next;
            sh.tenants.insert(rec.tenant.clone(), (rec.clone(), v));
            self.saw(name, Some(v))
        })
    }

    fn save_retired<'a>(&'a self, rec: &'a TenantKeyRecord) -> BoxFuture<'a, Result<(), KeyError>> {
        Box::pin(async move {
            let name = retired_secret_name(&rec.key_id);
            let mut sh = self.shared.lock().map_err(poisoned)?;
            sh.calls.retired_saves += 1;
            self.check(&name, sh.retired.get(&rec.key_id).map(|(_, v)| *v))?;
            sh.next += 1;
            let v = sh.next;
            sh.retired.insert(rec.key_id.clone(), (rec.clone(), v));
            self.saw(name, Some(v))
        })
    }

    fn delete_tenant<'a>(&'a self, tenant: &'a str) -> BoxFuture<'a, Result<(), KeyError>> {
        Box::pin(async move {
            let name = tenant_secret_name(tenant);
            let mut sh = self.shared.lock().map_err(poisoned)?;
            sh.calls.tenant_deletes += 1;
            let Some(stored) = sh.tenants.get(tenant).map(|(_, v)| *v) else {
                return self.saw(name, None);
            };
            self.check(&name, Some(stored))?;
            sh.tenants.remove(tenant);
            self.saw(name, None)
        })
    }
}
