//! Per-tenant encryption keys.
//!
//! Every tenant owns one key, held by a [`KeyProvider`]. Two real providers exist, chosen by
//! `PlatformConfig.keys.provider`:
//! - [`local::LocalProvider`] (`local`, the default): a versioned master keyring (persisted by a
//!   [`local::KeyringStore`], in production one Secret for the master keyring and one per tenant
//!   key record in the platform namespace) wrapping one random AES-256 key per tenant and key
//!   version.
//! - [`kms::KmsProvider`] (`aws-kms`): one customer-managed AWS KMS key per tenant, alias
//!   `alias/silo/<tenant>`.
//!
//! Both encrypt with an encryption context `{tenant, purpose}` bound to the ciphertext, support
//! envelope encryption ([`KeyProvider::generate_data_key`]: only the wrapped data key is stored),
//! rotation, and crypto-shredding ([`KeyProvider::shred`]: the key stops working at once and is
//! destroyed after the configured deletion window).
//!
//! The operator's seam is [`provider_from_config`] plus the [`KeyProvider`] trait; the
//! [`envelope::EnvelopeCipher`] caches data keys so a tenant costs few provider calls per day.
//! See `docs/keys.md`.

pub mod envelope;
pub mod keyring_store;
pub mod kms;
pub mod local;
#[cfg(any(test, feature = "test-support"))]
pub mod memory_store;
#[cfg(any(test, feature = "test-support"))]
pub mod testkit;

mod format;

use std::fmt;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::config::{KeyProviderKind, PlatformConfig, is_dns_label};

/// Which key and which use: every encrypt/decrypt call is bound to both.
///
/// The pair is authenticated with the ciphertext (AAD for `local`, the KMS encryption context for
/// `aws-kms`): decrypting with another tenant or another purpose fails.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KeyContext {
    pub tenant: String,
    pub purpose: String,
}

impl KeyContext {
    pub fn new(tenant: impl Into<String>, purpose: impl Into<String>) -> Self {
        Self {
            tenant: tenant.into(),
            purpose: purpose.into(),
        }
    }

    /// Checks both fields; providers call this before any work.
    pub fn validate(&self) -> Result<(), KeyError> {
        validate_tenant(&self.tenant)?;
        validate_purpose(&self.purpose)
    }
}

/// What the operator knows about a tenant when it asks for the tenant's key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantKeySpec {
    pub tenant: String,
    /// The parent tenant (recorded as tag `silo.dev/parent`); `None` for a root tenant.
    pub parent: Option<String>,
    /// `spec.encryption.rotationDays`; `None` = provider default (365 days).
    pub rotation_days: Option<u32>,
}

impl TenantKeySpec {
    pub fn new(tenant: impl Into<String>) -> Self {
        Self {
            tenant: tenant.into(),
            parent: None,
            rotation_days: None,
        }
    }

    pub fn with_parent(mut self, parent: impl Into<String>) -> Self {
        self.parent = Some(parent.into());
        self
    }

    pub fn with_rotation_days(mut self, days: u32) -> Self {
        self.rotation_days = Some(days);
        self
    }

    pub fn validate(&self) -> Result<(), KeyError> {
        validate_tenant(&self.tenant)?;
        if let Some(p) = &self.parent {
            validate_tenant(p)?;
        }
        if self.rotation_days == Some(0) {
            return Err(KeyError::InvalidRotation(
                "rotationDays must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// Default rotation period when a tenant does not set `encryption.rotationDays`.
pub const DEFAULT_ROTATION_DAYS: u32 = 365;

/// Lifecycle state of a tenant key, as the provider reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyState {
    /// Usable.
    Enabled,
    /// Switched off; refuses every operation.
    Disabled,
    /// Shredded: refuses every operation and is destroyed at `delete_after`.
    PendingDeletion,
    /// Key material is gone; the data it protected is unreadable.
    Destroyed,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Enabled => "Enabled",
            KeyState::Disabled => "Disabled",
            KeyState::PendingDeletion => "PendingDeletion",
            KeyState::Destroyed => "Destroyed",
        }
    }
}

impl fmt::Display for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the operator records in `status.key` (id, version, rotatedAt) and the `KeyReady` condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    pub tenant: String,
    /// Provider key id: the KMS key id (UUID) or the local key id (16 hex digits).
    pub key_id: String,
    /// 1 for a new key, +1 per rotation.
    pub version: u32,
    pub state: KeyState,
    /// True when this very call created the key.
    pub created: bool,
    pub created_at: Option<OffsetDateTime>,
    pub rotated_at: Option<OffsetDateTime>,
    /// Set once the key is shredded: when it is (or was) destroyed.
    pub delete_after: Option<OffsetDateTime>,
}

/// A fresh data key: use `plaintext` locally (AES-256-GCM), store only `wrapped`.
/// Unwrap later with [`KeyProvider::decrypt_data_key`] and the same context.
#[derive(Clone)]
pub struct DataKey {
    pub key_id: String,
    pub version: u32,
    pub plaintext: [u8; 32],
    pub wrapped: Vec<u8>,
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataKey")
            .field("key_id", &self.key_id)
            .field("version", &self.version)
            .field("plaintext", &"<redacted>")
            .field("wrapped_len", &self.wrapped.len())
            .finish()
    }
}

/// The result of [`KeyProvider::shred`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShredReceipt {
    pub tenant: String,
    pub key_id: String,
    /// The key is destroyed at (local: by `purge_expired`) or after (KMS) this time.
    pub delete_after: OffsetDateTime,
}

/// Why a key operation failed; every variant names the tenant, key or field involved.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "invalid tenant name {0:?}: must be lower-case letters, digits and '-' (a DNS label, at most 63 characters)"
    )]
    InvalidTenant(String),
    #[error(
        "invalid key purpose {0:?}: must be 1..=64 characters of lower-case letters, digits, '-', '.', '_' or '/'"
    )]
    InvalidPurpose(String),
    #[error(
        "plaintext is {0} bytes; direct encryption takes 1..=4096 bytes (use envelope encryption for more)"
    )]
    InvalidPlaintext(usize),
    #[error("invalid rotation setting: {0}")]
    InvalidRotation(String),
    #[error("tenant {tenant:?} has no key")]
    NotFound { tenant: String },
    #[error("key {key_id} of tenant {tenant:?} is {state} and cannot be used")]
    Unavailable {
        tenant: String,
        key_id: String,
        state: KeyState,
    },
    #[error("malformed ciphertext: {0}")]
    Malformed(String),
    #[error(
        "ciphertext was written under key {found}, not under tenant {tenant:?}'s current key {expected}"
    )]
    WrongKey {
        tenant: String,
        found: String,
        expected: String,
    },
    #[error(
        "decryption failed for tenant {tenant:?}, purpose {purpose:?}: wrong key or context, or the data was altered"
    )]
    DecryptFailed { tenant: String, purpose: String },
    #[error("key version {version} of {owner} is below the minimum decryption version {min}")]
    VersionTooOld {
        owner: String,
        version: u32,
        min: u32,
    },
    #[error("key version {version} of {owner} does not exist (latest is {latest})")]
    UnknownVersion {
        owner: String,
        version: u32,
        latest: u32,
    },
    #[error("keyring: {0}")]
    Keyring(String),
    #[error("keyring storage: {0}")]
    Storage(String),
    /// A lost compare-and-swap: the keyring record changed since it was read (HTTP 409 from
    /// the Secret store); re-read and try again.
    #[error("keyring storage: {0}")]
    Conflict(String),
    #[error("AWS KMS {operation} failed: {message}")]
    Kms {
        operation: &'static str,
        message: String,
    },
    #[error("invalid key configuration: {0}")]
    Config(String),
}

impl KeyError {
    /// Label for metrics (`silo_reconcile_errors_total{kind}`) and logs, one per variant
    /// (`key_invalid_tenant`, `key_conflict`, `key_kms`, …).
    pub fn label(&self) -> &'static str {
        match self {
            KeyError::InvalidTenant(_) => "key_invalid_tenant",
            KeyError::InvalidPurpose(_) => "key_invalid_purpose",
            KeyError::InvalidPlaintext(_) => "key_invalid_plaintext",
            KeyError::InvalidRotation(_) => "key_invalid_rotation",
            KeyError::NotFound { .. } => "key_not_found",
            KeyError::Unavailable { .. } => "key_unavailable",
            KeyError::Malformed(_) => "key_malformed",
            KeyError::WrongKey { .. } => "key_wrong_key",
            KeyError::DecryptFailed { .. } => "key_decrypt_failed",
            KeyError::VersionTooOld { .. } => "key_version_too_old",
            KeyError::UnknownVersion { .. } => "key_unknown_version",
            KeyError::Keyring(_) => "key_keyring",
            KeyError::Storage(_) => "key_storage",
            KeyError::Conflict(_) => "key_conflict",
            KeyError::Kms { .. } => "key_kms",
            KeyError::Config(_) => "key_config",
        }
    }

    /// Worth retrying unchanged: storage and KMS outages, lost races, a key not there yet.
    /// Invalid input, a disabled or destroyed key, undecryptable data and a broken keyring or
    /// configuration stay failed until something changes.
    pub fn is_transient(&self) -> bool {
        match self {
            KeyError::Storage(_)
            | KeyError::Conflict(_)
            | KeyError::Kms { .. }
            | KeyError::NotFound { .. } => true,
            KeyError::InvalidTenant(_)
            | KeyError::InvalidPurpose(_)
            | KeyError::InvalidPlaintext(_)
            | KeyError::InvalidRotation(_)
            | KeyError::Unavailable { .. }
            | KeyError::Malformed(_)
            | KeyError::WrongKey { .. }
            | KeyError::DecryptFailed { .. }
            | KeyError::VersionTooOld { .. }
            | KeyError::UnknownVersion { .. }
            | KeyError::Keyring(_)
            | KeyError::Config(_) => false,
        }
    }
}

/// A tenant-key provider. All methods are idempotent where the operation allows it, and every
/// method that uses a key refuses (with [`KeyError::Unavailable`]) when the key is disabled,
/// pending deletion or destroyed, whatever the backend would do.
///
/// Methods return boxed futures so the trait can be used as `Arc<dyn KeyProvider>`.
pub trait KeyProvider: Send + Sync + fmt::Debug {
    /// Which provider this is.
    fn kind(&self) -> KeyProviderKind;

    /// Returns the tenant's key, creating it on first call. A second call (also from a new
    /// provider instance over the same backend, e.g. after a restart) returns the same key.
    /// After [`shred`](Self::shred), a call creates a new, different key.
    fn ensure_key<'a>(
        &'a self,
        spec: &'a TenantKeySpec,
    ) -> BoxFuture<'a, Result<KeyInfo, KeyError>>;

    /// The tenant's current key: id, version, state.
    fn key_info<'a>(&'a self, tenant: &'a str) -> BoxFuture<'a, Result<KeyInfo, KeyError>>;

    /// Rotates now: new encryptions use the new version; older ciphertexts still decrypt.
    fn rotate<'a>(&'a self, tenant: &'a str) -> BoxFuture<'a, Result<KeyInfo, KeyError>>;

    /// Encrypts `plaintext` (1..=[`MAX_PLAINTEXT`] bytes, the AWS KMS limit, enforced by both
    /// providers) under the tenant's current key, bound to `ctx`. For larger data use
    /// [`envelope::EnvelopeCipher`].
    fn encrypt<'a>(
        &'a self,
        ctx: &'a KeyContext,
        plaintext: &'a [u8],
    ) -> BoxFuture<'a, Result<Vec<u8>, KeyError>>;

    /// Decrypts what [`encrypt`](Self::encrypt) returned for the same `ctx`.
    fn decrypt<'a>(
        &'a self,
        ctx: &'a KeyContext,
        ciphertext: &'a [u8],
    ) -> BoxFuture<'a, Result<Vec<u8>, KeyError>>;

    /// Envelope encryption: a fresh random 256-bit data key and its wrapped form.
    fn generate_data_key<'a>(
        &'a self,
        ctx: &'a KeyContext,
    ) -> BoxFuture<'a, Result<DataKey, KeyError>>;

    /// Unwraps a data key made by [`generate_data_key`](Self::generate_data_key).
    fn decrypt_data_key<'a>(
        &'a self,
        ctx: &'a KeyContext,
        wrapped: &'a [u8],
    ) -> BoxFuture<'a, Result<[u8; 32], KeyError>> {
        Box::pin(async move {
            let plain = self.decrypt(ctx, wrapped).await?;
            <[u8; 32]>::try_from(plain.as_slice()).map_err(|_| {
                KeyError::Malformed(format!(
                    "wrapped data key unwraps to {} bytes, expected 32",
                    plain.len()
                ))
            })
        })
    }

    /// Re-encrypts a ciphertext under the tenant's current key version (after a rotation),
    /// so the minimum decryption version can be raised.
    fn rewrap<'a>(
        &'a self,
        ctx: &'a KeyContext,
        ciphertext: &'a [u8],
    ) -> BoxFuture<'a, Result<Vec<u8>, KeyError>> {
        Box::pin(async move {
            let plain = self.decrypt(ctx, ciphertext).await?;
            self.encrypt(ctx, &plain).await
        })
    }

    /// Crypto-shredding: disables the tenant's key at once (every later use fails) and schedules
    /// its destruction after the deletion window. The tenant name is freed: a later
    /// [`ensure_key`](Self::ensure_key) makes a new key.
    fn shred<'a>(&'a self, tenant: &'a str) -> BoxFuture<'a, Result<ShredReceipt, KeyError>>;

    /// Destroys key material of shredded keys whose window has passed; returns their key ids.
    /// `local` destroys them here (call it periodically); AWS KMS deletes keys itself at the end
    /// of the window, so the KMS provider returns an empty list.
    fn purge_expired(&self, now: OffsetDateTime) -> BoxFuture<'_, Result<Vec<String>, KeyError>>;
}

/// The operator's entry point: builds the provider named by `cfg.keys.provider`.
///
/// `local` keeps its keyring in `store` (the operator passes its Secret-backed store); without
/// one it fails with [`KeyError::Config`] — there is no silent fallback to memory, which would
/// lose every key on restart. `aws-kms` ignores `store` and loads the standard AWS
/// configuration, with `keys.awsKms.region` / `keys.awsKms.endpoint` overriding it when
/// non-empty.
pub async fn provider_from_config(
    cfg: &PlatformConfig,
    store: Option<Arc<dyn local::KeyringStore>>,
) -> Result<Arc<dyn KeyProvider>, KeyError> {
    match cfg.keys.provider {
        KeyProviderKind::Local => {
            let store = store.ok_or_else(|| {
                KeyError::Config(
                    "keys.provider local needs a keyring store (the operator keeps it in Secrets of the platform namespace)".into(),
                )
            })?;
            let p = local::LocalProvider::open(store, cfg.keys.deletion_window_days).await?;
            Ok(Arc::new(p))
        }
        KeyProviderKind::AwsKms => {
            let p = kms::KmsProvider::from_config(&cfg.keys).await?;
            Ok(Arc::new(p))
        }
    }
}

/// Whether the operator should call [`KeyProvider::rotate`] now for a tenant with
/// `rotation_days` (its `spec.encryption.rotationDays`, default [`DEFAULT_ROTATION_DAYS`]).
///
/// Due when `rotation_days` have passed since the last rotation (or creation). With `aws-kms`,
/// periods KMS accepts for automatic rotation (90..=2560 days) are left to KMS and never due
/// here; shorter periods are rotated on demand by the operator.
pub fn rotation_due(
    kind: KeyProviderKind,
    info: &KeyInfo,
    rotation_days: u32,
    now: OffsetDateTime,
) -> bool {
    if kind == KeyProviderKind::AwsKms && kms::KMS_ROTATION_DAYS.contains(&rotation_days) {
        return false;
    }
    if info.state != KeyState::Enabled {
        return false;
    }
    match info.rotated_at.or(info.created_at) {
        Some(since) => now >= since + time::Duration::days(i64::from(rotation_days.max(1))),
        None => false,
    }
}

/// Largest plaintext [`KeyProvider::encrypt`] takes (the AWS KMS `Encrypt` limit).
pub const MAX_PLAINTEXT: usize = 4096;

pub(crate) fn validate_plaintext(plaintext: &[u8]) -> Result<(), KeyError> {
    if plaintext.is_empty() || plaintext.len() > MAX_PLAINTEXT {
        return Err(KeyError::InvalidPlaintext(plaintext.len()));
    }
    Ok(())
}

pub(crate) fn validate_tenant(tenant: &str) -> Result<(), KeyError> {
    if is_dns_label(tenant) {
        Ok(())
    } else {
        Err(KeyError::InvalidTenant(tenant.to_string()))
    }
}

pub(crate) fn validate_purpose(purpose: &str) -> Result<(), KeyError> {
    let ok = !purpose.is_empty()
        && purpose.len() <= 64
        && purpose.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.' | b'_' | b'/')
        });
    if ok {
        Ok(())
    } else {
        Err(KeyError::InvalidPurpose(purpose.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_names_are_checked() {
        assert!(validate_tenant("acme-1").is_ok());
        for bad in ["", "Acme", "a_b", "-a", &"x".repeat(64)] {
            let e = validate_tenant(bad).unwrap_err().to_string();
            assert!(
                e.contains("invalid tenant name") && e.contains("DNS label"),
                "{e}"
            );
        }
    }

    #[test]
    fn purposes_are_checked() {
        assert!(validate_purpose("db-credentials").is_ok());
        assert!(validate_purpose("mqtt/passwd").is_ok());
        for bad in ["", "Upper", "sp ace", &"p".repeat(65)] {
            let e = validate_purpose(bad).unwrap_err().to_string();
            assert!(e.contains("invalid key purpose"), "{e}");
        }
    }

    #[test]
    fn spec_rejects_zero_rotation_and_bad_parent() {
        let e = TenantKeySpec::new("a")
            .with_rotation_days(0)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("rotationDays must be at least 1"), "{e}");
        let e = TenantKeySpec::new("a")
            .with_parent("Bad")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"Bad\""), "{e}");
    }

    #[test]
    fn rotation_is_due_after_the_period() {
        let t0 = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let mut info = KeyInfo {
            tenant: "a".into(),
            key_id: "k".into(),
            version: 1,
            state: KeyState::Enabled,
            created: false,
            created_at: Some(t0),
            rotated_at: None,
            delete_after: None,
        };
        let day = time::Duration::days(1);
        let local = KeyProviderKind::Local;
        assert!(!rotation_due(local, &info, 30, t0 + day * 29));
        assert!(rotation_due(local, &info, 30, t0 + day * 30));
        info.rotated_at = Some(t0 + day * 30);
        assert!(!rotation_due(local, &info, 30, t0 + day * 31));
        // KMS rotates itself for 90..=2560 days; shorter periods are the operator's job.
        let kms = KeyProviderKind::AwsKms;
        assert!(!rotation_due(kms, &info, 365, t0 + day * 4000));
        assert!(rotation_due(kms, &info, 30, t0 + day * 60));
        info.state = KeyState::PendingDeletion;
        assert!(!rotation_due(local, &info, 30, t0 + day * 600));
    }

    #[test]
    fn data_key_debug_hides_plaintext() {
        let k = DataKey {
            key_id: "k".into(),
            version: 1,
            plaintext: [7; 32],
            wrapped: vec![1, 2, 3],
        };
        let s = format!("{k:?}");
        assert!(s.contains("redacted") && !s.contains("7, 7"), "{s}");
    }

    #[tokio::test]
    async fn config_default_is_local() {
        let cfg = PlatformConfig::default();
        let store: Arc<dyn local::KeyringStore> = Arc::new(local::MemoryKeyringStore::default());
        let p = provider_from_config(&cfg, Some(store)).await.unwrap();
        assert_eq!(p.kind(), KeyProviderKind::Local);
        let info = p.ensure_key(&TenantKeySpec::new("acme")).await.unwrap();
        assert!(info.created);
    }

    #[tokio::test]
    async fn local_without_a_store_is_refused_not_kept_in_memory() {
        let cfg = PlatformConfig::default();
        let Err(e) = provider_from_config(&cfg, None).await else {
            panic!("a local provider without a keyring store must be refused");
        };
        assert!(matches!(e, KeyError::Config(_)), "{e:?}");
        assert!(e.to_string().contains("needs a keyring store"), "{e}");
    }
}
