//! The seam where the key provider (`src/keys`) plugs in: the operator asks it for the
//! tenant's key on every reconcile and schedules the key's deletion when the tenant goes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use time::OffsetDateTime;

use crate::config::KeyProviderKind;
use crate::keys::local::{Clock, LocalProvider};
use crate::keys::{
    DEFAULT_ROTATION_DAYS, KeyContext, KeyError, KeyInfo, KeyProvider, TenantKeySpec, rotation_due,
};

use crate::types::tenant::KeyStatus;

/// What a [`KeyService`] call returns.
pub type KeyFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, KeyServiceError>> + Send + 'a>>;

/// Why a key operation of the operator failed: no provider is configured, or the provider's
/// typed [`KeyError`] with what the operator was doing. Metric labels and retry decisions come
/// from the variant ([`label`](Self::label), [`is_transient`](Self::is_transient)), never from
/// the message.
#[derive(Debug, thiserror::Error)]
pub enum KeyServiceError {
    /// No key provider is wired in (`what` the operator needed it for).
    #[error("no key provider: {0}")]
    NotConfigured(String),
    /// The provider refused or failed.
    #[error("{doing}: {source}")]
    Provider {
        doing: String,
        #[source]
        source: KeyError,
    },
}

impl KeyServiceError {
    fn provider(doing: impl Into<String>) -> impl FnOnce(KeyError) -> KeyServiceError {
        let doing = doing.into();
        move |source| KeyServiceError::Provider { doing, source }
    }

    /// Metric label: `key_not_configured` or the provider error's [`KeyError::label`].
    pub fn label(&self) -> &'static str {
        match self {
            KeyServiceError::NotConfigured(_) => "key_not_configured",
            KeyServiceError::Provider { source, .. } => source.label(),
        }
    }

    /// Worth retrying with backoff: see [`KeyError::is_transient`]; a missing provider is
    /// not (it needs a configuration change and a restart).
    pub fn is_transient(&self) -> bool {
        match self {
            KeyServiceError::NotConfigured(_) => false,
            KeyServiceError::Provider { source, .. } => source.is_transient(),
        }
    }
}

/// The tenant's key as the operator sees it: ready (with what its status shows) or no provider.
/// (Not [`crate::keys::KeyState`], the lifecycle state a provider keeps for a key.)
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TenantKey {
    /// The key exists and is usable.
    Ready(KeyStatus),
    /// No provider is wired in: the condition says so (KeyReady Unknown).
    NotConfigured,
}

/// The answer of a [`KeyService`] method that has no provider behind it.
fn not_configured<'a, T: Send + 'a>(what: String) -> KeyFuture<'a, T> {
    Box::pin(std::future::ready(Err(KeyServiceError::NotConfigured(
        what,
    ))))
}

/// Per-tenant encryption keys, as the operator uses them.
pub trait KeyService: Send + Sync {
    /// Create the tenant's key if it has none (idempotent), rotate it when its
    /// `rotation_days` (`spec.encryption.rotationDays`; `None` = the provider default) have
    /// passed, and report it.
    fn ensure_key<'a>(
        &'a self,
        tenant: &'a str,
        parent: Option<&'a str>,
        rotation_days: Option<u32>,
    ) -> KeyFuture<'a, TenantKey>;
    /// The tenant is being deleted: disable its key and schedule its deletion.
    fn schedule_key_deletion<'a>(&'a self, tenant: &'a str) -> KeyFuture<'a, ()>;

    /// Rotate the tenant's key now (an on-demand rotation request).
    fn rotate_now<'a>(&'a self, tenant: &'a str) -> KeyFuture<'a, KeyStatus> {
        not_configured(format!("cannot rotate tenant {tenant}'s key"))
    }

    /// Encrypt `plaintext` under the tenant's key, bound to `purpose` (credentials the operator
    /// keeps outside the tenant's namespace).
    fn seal<'a>(
        &'a self,
        tenant: &'a str,
        purpose: &'a str,
        _plaintext: &'a [u8],
    ) -> KeyFuture<'a, Vec<u8>> {
        not_configured(format!("cannot encrypt {purpose} of tenant {tenant}"))
    }

    /// Decrypt what [`seal`](Self::seal) returned for the same tenant and purpose.
    fn open<'a>(
        &'a self,
        tenant: &'a str,
        purpose: &'a str,
        _ciphertext: &'a [u8],
    ) -> KeyFuture<'a, Vec<u8>> {
        not_configured(format!("cannot decrypt {purpose} of tenant {tenant}"))
    }

    /// A new data key for the tenant, wrapped by its key (only the wrapped form is returned;
    /// the plaintext is dropped at once).
    fn wrapped_data_key<'a>(&'a self, tenant: &'a str) -> KeyFuture<'a, WrappedDataKey> {
        not_configured(format!("no data key for tenant {tenant}"))
    }

    /// Re-wrap a wrapped data key under the tenant's current key version.
    fn rewrap_data_key<'a>(
        &'a self,
        tenant: &'a str,
        _wrapped: &'a [u8],
    ) -> KeyFuture<'a, WrappedDataKey> {
        not_configured(format!("cannot re-wrap tenant {tenant}'s data key"))
    }

    /// Destroy what shredded keys left once their deletion window has passed (the `local`
    /// provider; KMS deletes keys itself). Returns the destroyed key ids.
    fn purge_expired(&self) -> KeyFuture<'_, Vec<String>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

/// A tenant's data key in the only form that is stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrappedDataKey {
    pub key_id: String,
    pub version: u32,
    pub wrapped: Vec<u8>,
}

/// Key-context purpose of the tenant's data key.
pub const DATA_KEY_PURPOSE: &str = "data-key";

/// Default until the key provider is wired in: reports honestly that no key exists, and
/// has nothing to shred.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoKeyService;

impl KeyService for NoKeyService {
    fn ensure_key<'a>(
        &'a self,
        _tenant: &'a str,
        _parent: Option<&'a str>,
        _rotation_days: Option<u32>,
    ) -> KeyFuture<'a, TenantKey> {
        Box::pin(async { Ok(TenantKey::NotConfigured) })
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
#[derive(Clone)]
pub struct ProviderKeys {
    provider: Arc<dyn KeyProvider>,
    clock: Clock,
    refresh: Option<Arc<Refresh>>,
}

/// Re-reading the local keyring before a reconcile uses its cache: after a change of leader,
/// the new leader's cache (read at its start) may miss rotations and shreds the old leader
/// wrote. At most one read per `every`.
struct Refresh {
    local: Arc<LocalProvider>,
    every: std::time::Duration,
    last: tokio::sync::Mutex<Option<std::time::Instant>>,
}

impl std::fmt::Debug for ProviderKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderKeys")
            .field("provider", &self.provider)
            .finish_non_exhaustive()
    }
}

impl ProviderKeys {
    /// The `local` provider over an in-memory keyring (lost on exit): for tests and
    /// benchmarks, with real encryption. Not in the product (`test-support`).
    #[cfg(any(test, feature = "test-support"))]
    pub async fn in_memory() -> Result<Self, KeyError> {
        let store = Arc::new(crate::keys::local::MemoryKeyringStore::default());
        let local = LocalProvider::open(store, 30).await?;
        Ok(Self::new(Arc::new(local)))
    }

    pub fn new(provider: Arc<dyn KeyProvider>) -> Self {
        Self::with_clock(provider, Arc::new(OffsetDateTime::now_utc))
    }

    /// With a fixed or test clock deciding when a rotation is due.
    pub fn with_clock(provider: Arc<dyn KeyProvider>, clock: Clock) -> Self {
        Self {
            provider,
            clock,
            refresh: None,
        }
    }

    /// For the `local` provider of an operator with several replicas: re-read the keyring
    /// Secret before `ensure_key` when the last read is older than `every`.
    pub fn with_local_refresh(
        mut self,
        local: Arc<LocalProvider>,
        every: std::time::Duration,
    ) -> Self {
        self.refresh = Some(Arc::new(Refresh {
            local,
            every,
            last: tokio::sync::Mutex::new(None),
        }));
        self
    }

    async fn refresh_if_stale(&self) -> Result<(), KeyServiceError> {
        let Some(r) = &self.refresh else {
            return Ok(());
        };
        let mut last = r.last.lock().await;
        if last.is_some_and(|t| t.elapsed() < r.every) {
            return Ok(());
        }
        r.local
            .refresh()
            .await
            .map_err(KeyServiceError::provider("re-reading the keyring"))?;
        *last = Some(std::time::Instant::now());
        Ok(())
    }

    pub fn provider(&self) -> &Arc<dyn KeyProvider> {
        &self.provider
    }

    /// [`KeyService::seal`] and [`KeyService::open`]: `data` through the provider under the
    /// tenant's key bound to `purpose`, the error saying which way and what.
    fn crypt<'a>(
        &'a self,
        way: Crypt,
        tenant: &'a str,
        purpose: &'a str,
        data: &'a [u8],
    ) -> KeyFuture<'a, Vec<u8>> {
        Box::pin(async move {
            let ctx = KeyContext::new(tenant, purpose);
            let (done, doing) = match way {
                Crypt::Seal => (self.provider.encrypt(&ctx, data).await, "encrypting"),
                Crypt::Open => (self.provider.decrypt(&ctx, data).await, "decrypting"),
            };
            done.map_err(KeyServiceError::provider(format!(
                "{doing} {purpose} of tenant {tenant}"
            )))
        })
    }
}

/// Which way [`ProviderKeys::crypt`] goes.
#[derive(Clone, Copy)]
enum Crypt {
    Seal,
    Open,
}

/// Whether a reconcile must rotate this key now: `rotation_days` defaults to
/// [`DEFAULT_ROTATION_DAYS`]; a key made by this very call is never rotated.
pub fn rotation_decision(
    kind: KeyProviderKind,
    info: &KeyInfo,
    rotation_days: Option<u32>,
    now: OffsetDateTime,
) -> bool {
    !info.created
        && rotation_due(
            kind,
            info,
            rotation_days.unwrap_or(DEFAULT_ROTATION_DAYS),
            now,
        )
}

impl KeyService for ProviderKeys {
    fn ensure_key<'a>(
        &'a self,
        tenant: &'a str,
        parent: Option<&'a str>,
        rotation_days: Option<u32>,
    ) -> KeyFuture<'a, TenantKey> {
        Box::pin(async move {
            let mut spec = TenantKeySpec::new(tenant);
            if let Some(p) = parent {
                spec = spec.with_parent(p);
            }
            if let Some(d) = rotation_days {
                spec = spec.with_rotation_days(d);
            }
            self.refresh_if_stale().await?;
            let mut info = self
                .provider
                .ensure_key(&spec)
                .await
                .map_err(KeyServiceError::provider(format!("key of tenant {tenant}")))?;
            if info.state != crate::keys::KeyState::Enabled {
                return Err(KeyServiceError::Provider {
                    doing: format!("key of tenant {tenant}"),
                    source: KeyError::Unavailable {
                        tenant: tenant.to_string(),
                        key_id: info.key_id,
                        state: info.state,
                    },
                });
            }
            if rotation_decision(self.provider.kind(), &info, rotation_days, (self.clock)()) {
                let from = info.version;
                info = self
                    .provider
                    .rotate(tenant)
                    .await
                    .map_err(KeyServiceError::provider(format!(
                        "scheduled rotation of tenant {tenant}'s key"
                    )))?;
                tracing::info!(tenant, key = %info.key_id, from, to = info.version, "key rotated on schedule");
            }
            Ok(TenantKey::Ready(status_of(info)))
        })
    }

    fn schedule_key_deletion<'a>(&'a self, tenant: &'a str) -> KeyFuture<'a, ()> {
        Box::pin(async move {
            let receipt = self
                .provider
                .shred(tenant)
                .await
                .map_err(KeyServiceError::provider(format!(
                    "shredding tenant {tenant}'s key"
                )))?;
            tracing::info!(tenant, key = %receipt.key_id, delete_after = %receipt.delete_after, "key shredded");
            Ok(())
        })
    }

    fn rotate_now<'a>(&'a self, tenant: &'a str) -> KeyFuture<'a, KeyStatus> {
        Box::pin(async move {
            self.refresh_if_stale().await?;
            let info = self
                .provider
                .rotate(tenant)
                .await
                .map_err(KeyServiceError::provider(format!(
                    "rotation of tenant {tenant}'s key"
                )))?;
            tracing::info!(tenant, key = %info.key_id, to = info.version, "key rotated on request");
            Ok(status_of(info))
        })
    }

    fn seal<'a>(
        &'a self,
        tenant: &'a str,
        purpose: &'a str,
        plaintext: &'a [u8],
    ) -> KeyFuture<'a, Vec<u8>> {
        self.crypt(Crypt::Seal, tenant, purpose, plaintext)
    }

    fn open<'a>(
        &'a self,
        tenant: &'a str,
        purpose: &'a str,
        ciphertext: &'a [u8],
    ) -> KeyFuture<'a, Vec<u8>> {
        self.crypt(Crypt::Open, tenant, purpose, ciphertext)
    }

    fn wrapped_data_key<'a>(&'a self, tenant: &'a str) -> KeyFuture<'a, WrappedDataKey> {
        Box::pin(async move {
            let ctx = KeyContext::new(tenant, DATA_KEY_PURPOSE);
            let dk =
                self.provider
                    .generate_data_key(&ctx)
                    .await
                    .map_err(KeyServiceError::provider(format!(
                        "data key of tenant {tenant}"
                    )))?;
            Ok(WrappedDataKey {
                key_id: dk.key_id.clone(),
                version: dk.version,
                wrapped: dk.wrapped.clone(),
            })
        })
    }

    fn rewrap_data_key<'a>(
        &'a self,
        tenant: &'a str,
        wrapped: &'a [u8],
    ) -> KeyFuture<'a, WrappedDataKey> {
        Box::pin(async move {
            let ctx = KeyContext::new(tenant, DATA_KEY_PURPOSE);
            let rewrapped =
                self.provider
                    .rewrap(&ctx, wrapped)
                    .await
                    .map_err(KeyServiceError::provider(format!(
                        "re-wrapping tenant {tenant}'s data key"
                    )))?;
            let info = self
                .provider
                .key_info(tenant)
                .await
                .map_err(KeyServiceError::provider(format!("key of tenant {tenant}")))?;
            Ok(WrappedDataKey {
                key_id: info.key_id,
                version: info.version,
                wrapped: rewrapped,
            })
        })
    }

    fn purge_expired(&self) -> KeyFuture<'_, Vec<String>> {
        Box::pin(async move {
            self.refresh_if_stale().await?;
            self.provider
                .purge_expired((self.clock)())
                .await
                .map_err(KeyServiceError::provider("purging shredded keys"))
        })
    }
}

/// The status form of a key.
fn status_of(info: KeyInfo) -> KeyStatus {
    let rotated_at = info.rotated_at.or(info.created_at).and_then(|t| {
        t.format(&time::format_description::well_known::Rfc3339)
            .ok()
    });
    KeyStatus {
        id: info.key_id,
        version: info.version,
        rotated_at,
        rotation_request: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::local::{LocalProvider, MemoryKeyringStore};
    use std::sync::atomic::{AtomicI64, Ordering};

    const DAY: i64 = 86_400;

    /// A local provider and a ProviderKeys sharing one settable clock (unix seconds).
    async fn world(
        store: &MemoryKeyringStore,
        now: &Arc<AtomicI64>,
    ) -> (ProviderKeys, Arc<LocalProvider>) {
        let t = now.clone();
        let clock: Clock = Arc::new(move || {
            OffsetDateTime::from_unix_timestamp(t.load(Ordering::SeqCst)).unwrap()
        });
        let provider = Arc::new(
            LocalProvider::open_with_clock(Arc::new(store.clone()), 30, clock.clone())
                .await
                .unwrap(),
        );
        (ProviderKeys::with_clock(provider.clone(), clock), provider)
    }

    fn ready(s: TenantKey) -> KeyStatus {
        match s {
            TenantKey::Ready(k) => k,
            TenantKey::NotConfigured => panic!("no key"),
        }
    }

    fn info_at(created: i64, rotated: Option<i64>, fresh: bool) -> KeyInfo {
        KeyInfo {
            tenant: "acme".into(),
            key_id: "k".into(),
            version: 1,
            state: crate::keys::KeyState::Enabled,
            created: fresh,
            created_at: OffsetDateTime::from_unix_timestamp(created).ok(),
            rotated_at: rotated.and_then(|r| OffsetDateTime::from_unix_timestamp(r).ok()),
            delete_after: None,
        }
    }

    #[test]
    fn rotation_decision_uses_rotation_days_and_default() {
        let t0 = 1_800_000_000;
        let at = |d: i64| OffsetDateTime::from_unix_timestamp(t0 + d * DAY).unwrap();
        let local = KeyProviderKind::Local;
        let info = info_at(t0, None, false);
        assert!(!rotation_decision(local, &info, Some(30), at(29)));
        assert!(rotation_decision(local, &info, Some(30), at(30)));
        // Default period.
        let default = i64::from(DEFAULT_ROTATION_DAYS);
        assert!(!rotation_decision(local, &info, None, at(default - 1)));
        assert!(rotation_decision(local, &info, None, at(default)));
        // Counted from the last rotation.
        let rotated = info_at(t0, Some(t0 + 30 * DAY), false);
        assert!(!rotation_decision(local, &rotated, Some(30), at(59)));
        assert!(rotation_decision(local, &rotated, Some(30), at(60)));
        // A key this very call created is never rotated.
        let fresh = info_at(t0, None, true);
        assert!(!rotation_decision(local, &fresh, Some(1), at(1000)));
        // KMS rotates 90..=2560-day periods itself.
        assert!(!rotation_decision(
            KeyProviderKind::AwsKms,
            &info,
            Some(90),
            at(1000)
        ));
        assert!(rotation_decision(
            KeyProviderKind::AwsKms,
            &info,
            Some(30),
            at(31)
        ));
    }

    #[tokio::test]
    async fn provider_keys_create_once_and_shred() {
        let store = MemoryKeyringStore::default();
        let now = Arc::new(AtomicI64::new(1_800_000_000));
        let (keys, provider) = world(&store, &now).await;
        let a = ready(keys.ensure_key("acme", None, Some(30)).await.unwrap());
        let b = ready(keys.ensure_key("acme", None, Some(30)).await.unwrap());
        assert_eq!(a, b, "a second reconcile must not make a second key");
        assert_eq!(a.version, 1);
        // A restart: a new provider over the same keyring finds the same key.
        let (restarted, _) = world(&store, &now).await;
        let r = ready(restarted.ensure_key("acme", None, Some(30)).await.unwrap());
        assert_eq!(r, a, "a restart must not make a second key");
        assert_eq!(provider.document().await.tenants.len(), 1);

        let ctx = KeyContext::new("acme", "db-credentials");
        let sealed = provider.encrypt(&ctx, b"secret").await.unwrap();
        keys.schedule_key_deletion("acme").await.unwrap();
        let e = provider
            .decrypt(&ctx, &sealed)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("acme"), "{e}");

        let c = ready(keys.ensure_key("acme", None, Some(30)).await.unwrap());
        assert_ne!(c.id, a.id, "a recreated tenant gets a new key");
        let e = provider
            .decrypt(&ctx, &sealed)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("acme"),
            "the new key must not open the old data: {e}"
        );
    }

    #[tokio::test]
    async fn reconcile_rotates_when_due() {
        let store = MemoryKeyringStore::default();
        let t0 = 1_800_000_000;
        let now = Arc::new(AtomicI64::new(t0));
        let (keys, provider) = world(&store, &now).await;
        let v1 = ready(keys.ensure_key("acme", None, Some(30)).await.unwrap());
        let ctx = KeyContext::new("acme", "db-credentials");
        let old = provider.encrypt(&ctx, b"before").await.unwrap();

        now.store(t0 + 29 * DAY, Ordering::SeqCst);
        let same = ready(keys.ensure_key("acme", None, Some(30)).await.unwrap());
        assert_eq!(same, v1, "not due yet");

        now.store(t0 + 30 * DAY, Ordering::SeqCst);
        let v2 = ready(keys.ensure_key("acme", None, Some(30)).await.unwrap());
        assert_eq!(v2.id, v1.id);
        assert_eq!(v2.version, 2);
        assert_ne!(v2.rotated_at, v1.rotated_at);
        let expected = OffsetDateTime::from_unix_timestamp(t0 + 30 * DAY)
            .unwrap()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        assert_eq!(v2.rotated_at.as_deref(), Some(expected.as_str()));

        // The next reconcile the same day does not rotate again.
        let again = ready(keys.ensure_key("acme", None, Some(30)).await.unwrap());
        assert_eq!(again, v2);
        // Old data still decrypts after the rotation.
        assert_eq!(provider.decrypt(&ctx, &old).await.unwrap(), b"before");
    }

    #[tokio::test]
    async fn a_new_leader_does_not_reuse_a_key_the_old_leader_shredded() {
        let store = MemoryKeyringStore::default();
        let now = Arc::new(AtomicI64::new(1_800_000_000));
        let (old_leader, _) = world(&store, &now).await;
        let (stale, stale_provider) = world(&store, &now).await;
        let (fresh, fresh_provider) = world(&store, &now).await;
        let fresh = fresh.with_local_refresh(fresh_provider, std::time::Duration::ZERO);
        let a = ready(old_leader.ensure_key("acme", None, None).await.unwrap());
        // Both standby replicas have seen (cached) the key.
        assert_eq!(
            ready(stale.ensure_key("acme", None, None).await.unwrap()),
            a
        );
        assert_eq!(
            ready(fresh.ensure_key("acme", None, None).await.unwrap()),
            a
        );
        // The old leader shreds it (tenant deleted); the tenant is re-created.
        old_leader.schedule_key_deletion("acme").await.unwrap();
        let b = ready(fresh.ensure_key("acme", None, None).await.unwrap());
        assert_ne!(b.id, a.id, "a re-created tenant gets a new key");
        // Without the refresh, the cache would still hand out the shredded key.
        let cached = ready(stale.ensure_key("acme", None, None).await.unwrap());
        assert_eq!(cached.id, a.id);
        stale_provider.refresh().await.unwrap();
        assert_eq!(
            ready(stale.ensure_key("acme", None, None).await.unwrap()).id,
            b.id
        );
    }

    #[tokio::test]
    async fn invalid_rotation_days_is_an_error() {
        let store = MemoryKeyringStore::default();
        let now = Arc::new(AtomicI64::new(1_800_000_000));
        let (keys, _) = world(&store, &now).await;
        let e = keys.ensure_key("acme", None, Some(0)).await.unwrap_err();
        assert!(
            matches!(
                &e,
                KeyServiceError::Provider {
                    source: KeyError::InvalidRotation(_),
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(!e.is_transient(), "a bad setting is not retried");
        assert!(
            e.to_string().contains("rotationDays must be at least 1"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn no_key_service_reports_not_configured() {
        assert_eq!(
            NoKeyService.ensure_key("acme", None, None).await.unwrap(),
            TenantKey::NotConfigured
        );
        NoKeyService.schedule_key_deletion("acme").await.unwrap();
    }
}
