//! The seam where the key provider (`src/keys`) plugs in: the operator asks it for the
//! tenant's key on every reconcile and schedules the key's deletion when the tenant goes.

use std::future::Future;
use std::pin::Pin;

use crate::types::tenant::KeyStatus;

pub type KeyFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, String>> + Send + 'a>>;

/// What the key provider reports for a tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyState {
    /// The key exists and is usable.
    Ready(KeyStatus),
    /// No provider is wired in: the condition says so (KeyReady Unknown).
    NotConfigured,
}

/// Per-tenant encryption keys, as the operator uses them.
pub trait KeyService: Send + Sync {
    /// Create the tenant's key if it has none (idempotent) and report it.
    fn ensure_key<'a>(
        &'a self,
        tenant: &'a str,
        parent: Option<&'a str>,
    ) -> KeyFuture<'a, KeyState>;
    /// The tenant is being deleted: disable its key and schedule its deletion.
    fn schedule_key_deletion<'a>(&'a self, tenant: &'a str) -> KeyFuture<'a, ()>;
}

/// Default until the key provider is wired in: reports honestly that no key exists, and
/// has nothing to shred.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoKeyService;

impl KeyService for NoKeyService {
    fn ensure_key<'a>(
        &'a self,
        _tenant: &'a str,
        _parent: Option<&'a str>,
    ) -> KeyFuture<'a, KeyState> {
        Box::pin(async { Ok(KeyState::NotConfigured) })
    }

    fn schedule_key_deletion<'a>(&'a self, tenant: &'a str) -> KeyFuture<'a, ()> {
        Box::pin(async move {
            tracing::info!(
                tenant,
                "no key provider configured: no key to schedule for deletion"
            );
            Ok(())
        })
    }
}

/// The key provider of `src/keys` behind the operator's seam.
#[derive(Clone, Debug)]
pub struct ProviderKeys(pub std::sync::Arc<dyn crate::keys::KeyProvider>);

impl KeyService for ProviderKeys {
    fn ensure_key<'a>(
        &'a self,
        tenant: &'a str,
        parent: Option<&'a str>,
    ) -> KeyFuture<'a, KeyState> {
        Box::pin(async move {
            let mut spec = crate::keys::TenantKeySpec::new(tenant);
            if let Some(p) = parent {
                spec = spec.with_parent(p);
            }
            let info = self.0.ensure_key(&spec).await.map_err(|e| e.to_string())?;
            if info.state != crate::keys::KeyState::Enabled {
                return Err(format!(
                    "key {} of tenant {tenant} is {:?}",
                    info.key_id, info.state
                ));
            }
            let rotated_at = info.rotated_at.or(info.created_at).and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            });
            Ok(KeyState::Ready(KeyStatus {
                id: info.key_id,
                version: info.version,
                rotated_at,
            }))
        })
    }

    fn schedule_key_deletion<'a>(&'a self, tenant: &'a str) -> KeyFuture<'a, ()> {
        Box::pin(async move {
            let receipt = self.0.shred(tenant).await.map_err(|e| e.to_string())?;
            tracing::info!(tenant, key = %receipt.key_id, delete_after = %receipt.delete_after, "key shredded");
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn provider_keys_create_once_and_shred() {
        let store = Arc::new(crate::keys::local::MemoryKeyringStore::default());
        let provider = crate::keys::local::LocalProvider::open(store, 30)
            .await
            .unwrap();
        let keys = ProviderKeys(Arc::new(provider));
        let KeyState::Ready(a) = keys.ensure_key("acme", None).await.unwrap() else {
            panic!("no key");
        };
        let KeyState::Ready(b) = keys.ensure_key("acme", None).await.unwrap() else {
            panic!("no key");
        };
        assert_eq!(a, b, "a second reconcile must not make a second key");
        assert_eq!(a.version, 1);
        keys.schedule_key_deletion("acme").await.unwrap();
        let KeyState::Ready(c) = keys.ensure_key("acme", None).await.unwrap() else {
            panic!("no key");
        };
        assert_ne!(c.id, a.id, "a recreated tenant gets a new key");
    }

    #[tokio::test]
    async fn no_key_service_reports_not_configured() {
        assert_eq!(
            NoKeyService.ensure_key("acme", None).await.unwrap(),
            KeyState::NotConfigured
        );
        NoKeyService.schedule_key_deletion("acme").await.unwrap();
    }
}
