//! The `local` key provider's keyring, sharded over Secrets in the platform namespace so that
//! one change writes one small Secret, whatever the number of tenants:
//!
//! | Secret | data key | holds |
//! | --- | --- | --- |
//! | `silo-keyring` | `keyring.json` | format and master keyring ([`MasterKeyring`]) |
//! | `silo-key-<tenant>` | `record.json` | the active [`TenantKeyRecord`] of a tenant |
//! | `silo-key-retired.<key id>` | `record.json` | a shredded record (pending deletion or destroyed) |
//!
//! All are labelled `app.kubernetes.io/managed-by: silo` and `silo.dev/keyring: "true"`:
//! loading is one GET of `silo-keyring` and one LIST by that label.
//!
//! Every write is a compare-and-swap on the `resourceVersion` this store last saw of that
//! Secret (from the load or its own last write):
//! - a Secret it never saw → `POST` (create); `409 AlreadyExists` means another writer was first;
//! - otherwise → a JSON merge patch carrying `metadata.resourceVersion`, which the API server
//!   applies only if the Secret is unchanged (`409 Conflict` otherwise);
//! - a delete carries the `resourceVersion` as a precondition.
//!
//! A conflict surfaces as [`KeyError::Conflict`] naming the Secret; the provider keeps its memory
//! unchanged and re-reads the keyring.
//!
//! A `silo-keyring` of the earlier single-Secret layout (tenant records inside
//! `keyring.json`) is migrated on load: its records are written to their own Secrets first,
//! then removed from `silo-keyring`.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use futures::future::BoxFuture;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{
    DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams, Preconditions,
};
use kube::{Api, Client};

use crate::keys::local::{
    KEYRING_LABEL, KEYRING_SECRET_KEY, KEYRING_SECRET_NAME, KeyringDocument, KeyringStore,
    MasterKeyring, RECORD_SECRET_KEY, TenantKeyRecord, conflict_message, retired_secret_name,
    tenant_secret_name,
};
use crate::keys::{KeyError, KeyState};

/// Field manager recorded on the keyring Secrets: the operator's one field manager.
use crate::operator::cluster::FIELD_MANAGER;

/// Largest value this store writes into one Secret: a Secret holds at most 1 MiB of data; the
/// rest is headroom for metadata. A tenant record is about 500 bytes (plus about 100 per
/// rotation), so only a corrupt record comes near it.
pub const MAX_SECRET_BYTES: usize = 900 * 1024;

/// Refuses (naming `what`, the Secret) a value too large for one Secret.
pub fn check_size(what: &str, bytes: usize) -> Result<(), KeyError> {
    if bytes > MAX_SECRET_BYTES {
        return Err(KeyError::Storage(format!(
            "{what} would hold {bytes} bytes, over the {MAX_SECRET_BYTES}-byte limit of one Secret"
        )));
    }
    Ok(())
}

/// [`KeyringStore`] over the keyring Secrets in the platform namespace.
pub struct SecretKeyringStore {
    api: Api<Secret>,
    namespace: String,
    /// Secret name → `resourceVersion` last seen; absent = believed not to exist.
    versions: Mutex<HashMap<String, String>>,
}

impl std::fmt::Debug for SecretKeyringStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretKeyringStore")
            .field("namespace", &self.namespace)
            .field("secret", &KEYRING_SECRET_NAME)
            .finish_non_exhaustive()
    }
}

fn labels() -> BTreeMap<String, String> {
    [
        (
            "app.kubernetes.io/managed-by".to_string(),
            "silo".to_string(),
        ),
        (KEYRING_LABEL.to_string(), "true".to_string()),
    ]
    .into()
}

fn lock_err<T>(_: T) -> KeyError {
    KeyError::Storage("keyring store lock poisoned".into())
}

impl SecretKeyringStore {
    pub fn new(client: Client, namespace: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            versions: Mutex::new(HashMap::new()),
        }
    }

    fn where_(&self, name: &str) -> String {
        format!("Secret {}/{name}", self.namespace)
    }

    fn version(&self, name: &str) -> Result<Option<String>, KeyError> {
        Ok(self.versions.lock().map_err(lock_err)?.get(name).cloned())
    }

    fn set_version(&self, name: &str, v: Option<String>) -> Result<(), KeyError> {
        let mut m = self.versions.lock().map_err(lock_err)?;
        match v {
            Some(v) => m.insert(name.to_string(), v),
            None => m.remove(name),
        };
        Ok(())
    }

    fn api_error(&self, verb: &str, name: &str, e: kube::Error) -> KeyError {
        match e {
            kube::Error::Api(s) if s.code == 409 => {
                KeyError::Conflict(conflict_message(&self.where_(name), &s.reason))
            }
            kube::Error::Api(s) => KeyError::Storage(format!(
                "{verb} {}: {} ({})",
                self.where_(name),
                s.message,
                s.code
            )),
            other => KeyError::Storage(format!("{verb} {}: {other}", self.where_(name))),
        }
    }

    /// The UTF-8 text of `data[key]` of `secret`.
    fn text<'s>(&self, secret: &'s Secret, key: &str) -> Result<&'s str, KeyError> {
        let name = secret.metadata.name.as_deref().unwrap_or_default();
        let bytes = secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .ok_or_else(|| {
                KeyError::Storage(format!(
                    "{} exists but has no {key}; refusing to overwrite it",
                    self.where_(name)
                ))
            })?;
        std::str::from_utf8(&bytes.0).map_err(|_| {
            KeyError::Storage(format!("{} data {key} is not UTF-8", self.where_(name)))
        })
    }

    async fn load_impl(&self) -> Result<Option<KeyringDocument>, KeyError> {
        let master = self
            .api
            .get_opt(KEYRING_SECRET_NAME)
            .await
            .map_err(|e| self.api_error("read", KEYRING_SECRET_NAME, e))?;
        let Some(master) = master else {
            self.versions.lock().map_err(lock_err)?.clear();
            return Ok(None);
        };
        let mut doc = KeyringDocument::from_json(self.text(&master, KEYRING_SECRET_KEY)?)?;
        // Records of the earlier single-Secret layout, still inside keyring.json.
        let legacy_tenants = std::mem::take(&mut doc.tenants);
        let legacy_retired = std::mem::take(&mut doc.retired);
        let mut versions = HashMap::new();
        if let Some(rv) = master.metadata.resource_version.clone() {
            versions.insert(KEYRING_SECRET_NAME.to_string(), rv);
        }
        let lp = ListParams::default().labels(&format!("{KEYRING_LABEL}=true"));
        let list = self
            .api
            .list(&lp)
            .await
            .map_err(|e| self.api_error("list", "silo-key-*", e))?;
        for secret in &list.items {
            let Some(name) = secret.metadata.name.as_deref() else {
                continue;
            };
            if name == KEYRING_SECRET_NAME {
                continue;
            }
            let rec: TenantKeyRecord = serde_json::from_str(self.text(secret, RECORD_SECRET_KEY)?)
                .map_err(|e| {
                    KeyError::Keyring(format!(
                        "{} data {RECORD_SECRET_KEY} is not valid: {e}",
                        self.where_(name)
                    ))
                })?;
            if rec.state == KeyState::Enabled && name == tenant_secret_name(&rec.tenant) {
                doc.tenants.insert(rec.tenant.clone(), rec);
            } else if rec.state != KeyState::Enabled && name == retired_secret_name(&rec.key_id) {
                doc.retired.insert(rec.key_id.clone(), rec);
            } else {
                return Err(KeyError::Keyring(format!(
                    "{} holds the {} record {} of tenant {:?}, which belongs in {}",
                    self.where_(name),
                    rec.state,
                    rec.key_id,
                    rec.tenant,
                    if rec.state == KeyState::Enabled {
                        tenant_secret_name(&rec.tenant)
                    } else {
                        retired_secret_name(&rec.key_id)
                    }
                )));
            }
            if let Some(rv) = secret.metadata.resource_version.clone() {
                versions.insert(name.to_string(), rv);
            }
        }
        *self.versions.lock().map_err(lock_err)? = versions;
        if !legacy_tenants.is_empty() || !legacy_retired.is_empty() {
            self.migrate(&mut doc, legacy_tenants, legacy_retired)
                .await?;
        }
        doc.validate()?;
        Ok(Some(doc))
    }

    /// Moves records of the single-Secret layout into their own Secrets (records that already
    /// have one keep it), then rewrites `silo-keyring` without them.
    async fn migrate(
        &self,
        doc: &mut KeyringDocument,
        tenants: BTreeMap<String, TenantKeyRecord>,
        retired: BTreeMap<String, TenantKeyRecord>,
    ) -> Result<(), KeyError> {
        let moved = tenants.len() + retired.len();
        for (k, rec) in retired {
            if let Entry::Vacant(slot) = doc.retired.entry(k) {
                self.save_record(&retired_secret_name(&rec.key_id), &rec)
                    .await?;
                slot.insert(rec);
            }
        }
        for (k, rec) in tenants {
            if let Entry::Vacant(slot) = doc.tenants.entry(k) {
                self.save_record(&tenant_secret_name(&rec.tenant), &rec)
                    .await?;
                slot.insert(rec);
            }
        }
        self.save_master_impl(&doc.master).await?;
        tracing::info!(
            records = moved,
            "moved the local keyring's tenant records out of {KEYRING_SECRET_NAME} into one Secret each"
        );
        Ok(())
    }

    /// Creates or compare-and-swap patches `name` with `data[key] = json`.
    async fn write(&self, name: &str, key: &str, json: String) -> Result<(), KeyError> {
        check_size(&self.where_(name), json.len())?;
        let saved = match self.version(name)? {
            None => {
                let secret = Secret {
                    metadata: ObjectMeta {
                        name: Some(name.to_string()),
                        namespace: Some(self.namespace.clone()),
                        labels: Some(labels()),
                        ..ObjectMeta::default()
                    },
                    type_: Some("Opaque".into()),
                    data: Some([(key.to_string(), ByteString(json.into_bytes()))].into()),
                    ..Secret::default()
                };
                let pp = PostParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..PostParams::default()
                };
                self.api
                    .create(&pp, &secret)
                    .await
                    .map_err(|e| self.api_error("create", name, e))?
            }
            Some(rv) => {
                use base64::Engine as _;
                let encoded = base64::engine::general_purpose::STANDARD.encode(json.as_bytes());
                let patch = serde_json::json!({
                    "metadata": { "resourceVersion": rv },
                    "data": { key: encoded },
                });
                let pp = PatchParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..PatchParams::default()
                };
                self.api
                    .patch(name, &pp, &Patch::Merge(&patch))
                    .await
                    .map_err(|e| self.api_error("update", name, e))?
            }
        };
        self.set_version(name, saved.metadata.resource_version)
    }

    async fn save_record(&self, name: &str, rec: &TenantKeyRecord) -> Result<(), KeyError> {
        let json = serde_json::to_string_pretty(rec)
            .map_err(|e| KeyError::Keyring(format!("cannot serialise key record: {e}")))?;
        self.write(name, RECORD_SECRET_KEY, json).await
    }

    async fn save_master_impl(&self, master: &MasterKeyring) -> Result<(), KeyError> {
        let doc = KeyringDocument {
            format: crate::keys::local::DOC_FORMAT,
            master: master.clone(),
            tenants: BTreeMap::new(),
            retired: BTreeMap::new(),
        };
        self.write(KEYRING_SECRET_NAME, KEYRING_SECRET_KEY, doc.to_json()?)
            .await
    }

    async fn delete_impl(&self, name: &str) -> Result<(), KeyError> {
        let dp = DeleteParams {
            preconditions: self.version(name)?.map(|rv| Preconditions {
                resource_version: Some(rv),
                uid: None,
            }),
            ..DeleteParams::default()
        };
        match self.api.delete(name, &dp).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(self.api_error("delete", name, e)),
        }
        self.set_version(name, None)
    }
}

impl KeyringStore for SecretKeyringStore {
    fn load(&self) -> BoxFuture<'_, Result<Option<KeyringDocument>, KeyError>> {
        Box::pin(self.load_impl())
    }

    fn save_master<'a>(&'a self, master: &'a MasterKeyring) -> BoxFuture<'a, Result<(), KeyError>> {
        Box::pin(self.save_master_impl(master))
    }

    fn save_tenant<'a>(&'a self, rec: &'a TenantKeyRecord) -> BoxFuture<'a, Result<(), KeyError>> {
        Box::pin(async move {
            self.save_record(&tenant_secret_name(&rec.tenant), rec)
                .await
        })
    }

    fn save_retired<'a>(&'a self, rec: &'a TenantKeyRecord) -> BoxFuture<'a, Result<(), KeyError>> {
        Box::pin(async move {
            self.save_record(&retired_secret_name(&rec.key_id), rec)
                .await
        })
    }

    fn delete_tenant<'a>(&'a self, tenant: &'a str) -> BoxFuture<'a, Result<(), KeyError>> {
        Box::pin(async move { self.delete_impl(&tenant_secret_name(tenant)).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_too_large_for_a_secret_is_refused_naming_it() {
        assert!(check_size("Secret ns/silo-key-a", 500).is_ok());
        assert!(check_size("Secret ns/silo-key-a", MAX_SECRET_BYTES).is_ok());
        let e = check_size("Secret ns/silo-key-a", 1_000_000)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("Secret ns/silo-key-a would hold 1000000 bytes, over the 921600-byte limit"),
            "{e}"
        );
    }
}
