//! The `local` key provider's keyring, persisted in the Secret `silo-keyring` (key
//! `keyring.json`) in the platform namespace.
//!
//! Thin on purpose: the provider ([`crate::keys::local::LocalProvider`]) generates the master
//! key on first use and always loads before it saves; this store remembers the
//! `resourceVersion` of the last load and saves with it (compare-and-swap):
//! - nothing stored yet → `POST` (create); a `409 AlreadyExists` means another writer was first;
//! - otherwise → a JSON merge patch carrying `metadata.resourceVersion`, which the API server
//!   applies only if the Secret is unchanged (`409 Conflict` otherwise).
//!
//! A conflict surfaces as [`KeyError::Storage`] naming the conflict; nothing changes in the
//! provider's memory, and its next call re-reads the Secret.

use std::sync::Mutex;

use futures::future::BoxFuture;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};

use crate::keys::KeyError;
use crate::keys::local::{KEYRING_SECRET_KEY, KEYRING_SECRET_NAME, KeyringDocument, KeyringStore};

/// Largest keyring this store writes: a Secret holds at most 1 MiB of data; the rest is
/// headroom for metadata.
pub const MAX_KEYRING_BYTES: usize = 900 * 1024;

/// Refuse (loudly, naming the cause and the way out) a keyring too large for one Secret; warn
/// from three quarters on. About 500 bytes per tenant key: roughly 1,800 tenants (active plus
/// shredded within the deletion window).
pub fn check_size(bytes: usize, records: usize) -> Result<(), KeyError> {
    let per = bytes.checked_div(records).unwrap_or(bytes).max(1);
    let capacity = MAX_KEYRING_BYTES / per;
    if bytes > MAX_KEYRING_BYTES {
        return Err(KeyError::Storage(format!(
            "the local keyring would hold {records} tenant keys in {bytes} bytes, over the {MAX_KEYRING_BYTES}-byte limit of one Secret ({KEYRING_SECRET_NAME}): the local provider holds about {capacity} tenant keys; use keys.provider: aws-kms for more tenants"
        )));
    }
    if bytes > MAX_KEYRING_BYTES / 4 * 3 {
        tracing::warn!(
            records,
            bytes,
            capacity,
            "the local keyring Secret is over three quarters full; plan a move to aws-kms"
        );
    }
    Ok(())
}

/// Field manager recorded on the keyring Secret: the operator's one field manager.
use super::cluster::FIELD_MANAGER;

/// [`KeyringStore`] over the Secret [`KEYRING_SECRET_NAME`] in the platform namespace.
pub struct SecretKeyringStore {
    api: Api<Secret>,
    namespace: String,
    /// `resourceVersion` of the last load: `None` = the Secret did not exist.
    version: Mutex<Option<String>>,
}

impl std::fmt::Debug for SecretKeyringStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretKeyringStore")
            .field("namespace", &self.namespace)
            .field("secret", &KEYRING_SECRET_NAME)
            .finish_non_exhaustive()
    }
}

impl SecretKeyringStore {
    pub fn new(client: Client, namespace: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            version: Mutex::new(None),
        }
    }

    fn where_(&self) -> String {
        format!("Secret {}/{KEYRING_SECRET_NAME}", self.namespace)
    }

    fn set_version(&self, v: Option<String>) -> Result<(), KeyError> {
        *self
            .version
            .lock()
            .map_err(|_| KeyError::Storage("keyring store lock poisoned".into()))? = v;
        Ok(())
    }

    fn get_version(&self) -> Result<Option<String>, KeyError> {
        Ok(self
            .version
            .lock()
            .map_err(|_| KeyError::Storage("keyring store lock poisoned".into()))?
            .clone())
    }

    fn api_error(&self, verb: &str, e: kube::Error) -> KeyError {
        match e {
            kube::Error::Api(s) if s.code == 409 => KeyError::Storage(format!(
                "{} changed since it was read (409 {}): not saved; the keyring is re-read on the next attempt",
                self.where_(),
                s.reason
            )),
            kube::Error::Api(s) => KeyError::Storage(format!(
                "{verb} {}: {} ({})",
                self.where_(),
                s.message,
                s.code
            )),
            other => KeyError::Storage(format!("{verb} {}: {other}", self.where_())),
        }
    }

    async fn load_impl(&self) -> Result<Option<KeyringDocument>, KeyError> {
        let secret = self
            .api
            .get_opt(KEYRING_SECRET_NAME)
            .await
            .map_err(|e| self.api_error("read", e))?;
        let Some(secret) = secret else {
            self.set_version(None)?;
            return Ok(None);
        };
        let version = secret.metadata.resource_version.clone();
        let bytes = secret
            .data
            .as_ref()
            .and_then(|d| d.get(KEYRING_SECRET_KEY))
            .ok_or_else(|| {
                KeyError::Storage(format!(
                    "{} exists but has no {KEYRING_SECRET_KEY}; refusing to overwrite it with a new keyring",
                    self.where_()
                ))
            })?;
        let text = std::str::from_utf8(&bytes.0).map_err(|_| {
            KeyError::Storage(format!(
                "{} data {KEYRING_SECRET_KEY} is not UTF-8",
                self.where_()
            ))
        })?;
        let doc = KeyringDocument::from_json(text)?;
        self.set_version(version)?;
        Ok(Some(doc))
    }

    async fn save_impl(&self, doc: &KeyringDocument) -> Result<(), KeyError> {
        let json = doc.to_json()?;
        check_size(json.len(), doc.tenants.len() + doc.retired.len())?;
        let saved = match self.get_version()? {
            None => {
                let secret = Secret {
                    metadata: ObjectMeta {
                        name: Some(KEYRING_SECRET_NAME.into()),
                        namespace: Some(self.namespace.clone()),
                        labels: Some(
                            [(
                                "app.kubernetes.io/managed-by".to_string(),
                                "silo".to_string(),
                            )]
                            .into(),
                        ),
                        ..ObjectMeta::default()
                    },
                    type_: Some("Opaque".into()),
                    data: Some(
                        [(
                            KEYRING_SECRET_KEY.to_string(),
                            ByteString(json.into_bytes()),
                        )]
                        .into(),
                    ),
                    ..Secret::default()
                };
                let pp = PostParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..PostParams::default()
                };
                self.api
                    .create(&pp, &secret)
                    .await
                    .map_err(|e| self.api_error("create", e))?
            }
            Some(rv) => {
                use base64::Engine as _;
                let encoded = base64::engine::general_purpose::STANDARD.encode(json.as_bytes());
                let patch = serde_json::json!({
                    "metadata": { "resourceVersion": rv },
                    "data": { KEYRING_SECRET_KEY: encoded },
                });
                let pp = PatchParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..PatchParams::default()
                };
                self.api
                    .patch(KEYRING_SECRET_NAME, &pp, &Patch::Merge(&patch))
                    .await
                    .map_err(|e| self.api_error("update", e))?
            }
        };
        self.set_version(saved.metadata.resource_version)?;
        Ok(())
    }
}

impl KeyringStore for SecretKeyringStore {
    fn load(&self) -> BoxFuture<'_, Result<Option<KeyringDocument>, KeyError>> {
        Box::pin(self.load_impl())
    }

    fn save<'a>(&'a self, doc: &'a KeyringDocument) -> BoxFuture<'a, Result<(), KeyError>> {
        Box::pin(self.save_impl(doc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keyring_too_large_for_a_secret_is_refused_with_the_way_out() {
        assert!(check_size(500 * 1000, 1000).is_ok());
        let e = check_size(1_000_000, 2000).unwrap_err().to_string();
        assert!(e.contains("2000 tenant keys in 1000000 bytes"), "{e}");
        assert!(e.contains("about 1843 tenant keys"), "{e}");
        assert!(e.contains("use keys.provider: aws-kms"), "{e}");
        assert!(check_size(0, 0).is_ok());
    }
}
