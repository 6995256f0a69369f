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
