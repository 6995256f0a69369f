//! Where the `local` provider's keyring is persisted: the [`KeyringStore`] seam (record by
//! record, each write a compare-and-swap) and what a lost race looks like.

use std::fmt;

use futures::future::BoxFuture;

use super::{KeyringDocument, MasterKeyring, TenantKeyRecord};
use crate::keys::KeyError;

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
pub use crate::keys::memory_store::{MemoryKeyringStore, StoreCalls};

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
