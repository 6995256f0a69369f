//! The `aws-kms` provider: one customer-managed symmetric KMS key per tenant.
//!
//! - Alias `alias/silo/<tenant>` finds the key (so a restart never creates a second one); tags
//!   `silo.dev/tenant` and `silo.dev/parent` label it.
//! - Automatic rotation is enabled with the tenant's `rotationDays` (clamped to the 90..=2560 days
//!   KMS accepts); [`KeyProvider::rotate`] uses `RotateKeyOnDemand`. The key version reported is
//!   1 + the number of rotations KMS lists.
//! - Every Encrypt/Decrypt/GenerateDataKey carries the encryption context
//!   `{"tenant": …, "purpose": …}`. Ciphertexts are framed with the key id (see `format`), so
//!   the provider checks the key's state and owner before calling KMS: it refuses disabled,
//!   pending-deletion and foreign keys itself, whether or not the KMS endpoint (e.g. an emulator)
//!   enforces key states.
//! - Shredding disables the key, points the tombstone alias `alias/silo-shredded/<tenant>` at it
//!   (so a repeated shred is answered), schedules deletion with `deletionWindowDays` and deletes
//!   the tenant alias, so a tenant recreated with the same name gets a new key.
//!
//! Key metadata (state, id behind the alias) is cached for `metadata_ttl` (default 5 min) and the
//! rotation count for an hour, to keep the call rate low; this process's own rotate and shred
//! invalidate the cache at once. A key disabled out of band is noticed within `metadata_ttl`.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

use aws_sdk_kms::Client;
use aws_sdk_kms::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_kms::primitives::{Blob, DateTime};
use aws_sdk_kms::types::{DataKeySpec, KeySpec, KeyUsageType, Tag};
use futures::future::BoxFuture;
use time::OffsetDateTime;

use super::format;
use super::{
    DEFAULT_ROTATION_DAYS, DataKey, KeyContext, KeyError, KeyInfo, KeyProvider, KeyState,
    ShredReceipt, TenantKeySpec, validate_tenant,
};
use crate::config::{KeyProviderKind, KeysConfig};

/// Tag naming the tenant on its KMS key.
pub const TAG_TENANT: &str = "silo.dev/tenant";
/// Tag naming the tenant's parent ("" for a root tenant).
pub const TAG_PARENT: &str = "silo.dev/parent";
/// How long key metadata (state, key behind the alias) is cached unless
/// [`KmsProvider::with_metadata_ttl`] says otherwise.
pub const DEFAULT_METADATA_TTL: Duration = Duration::from_secs(300);
/// How long the rotation count (the reported version) is cached; rotations made through this
/// provider invalidate it at once. Never shorter than the metadata TTL; zero if that is zero.
pub const ROTATIONS_TTL: Duration = Duration::from_secs(3600);
/// The rotation periods KMS accepts for automatic rotation.
pub const KMS_ROTATION_DAYS: std::ops::RangeInclusive<u32> = 90..=2560;

/// `alias/silo/<tenant>`.
pub fn alias_for(tenant: &str) -> String {
    format!("alias/silo/{tenant}")
}

/// `alias/silo-shredded/<tenant>`: the latest shredded key of the tenant.
pub fn tombstone_alias_for(tenant: &str) -> String {
    format!("alias/silo-shredded/{tenant}")
}

#[derive(Clone, Debug)]
struct Meta {
    key_id: String,
    state: KeyState,
    created_at: Option<OffsetDateTime>,
    delete_after: Option<OffsetDateTime>,
}

#[derive(Clone, Debug)]
struct Rotations {
    version: u32,
    last: Option<OffsetDateTime>,
}

#[derive(Default)]
struct Cache {
    meta: HashMap<String, (Meta, Instant)>,
    rotations: HashMap<String, (Rotations, Instant)>,
}

/// The `aws-kms` key provider. See the module documentation.
pub struct KmsProvider {
    client: Client,
    deletion_window_days: u32,
    metadata_ttl: Duration,
    cache: std::sync::Mutex<Cache>,
}

impl fmt::Debug for KmsProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KmsProvider")
            .field("deletion_window_days", &self.deletion_window_days)
            .field("metadata_ttl", &self.metadata_ttl)
            .finish_non_exhaustive()
    }
}

fn kms_err<E>(operation: &'static str, e: &E) -> KeyError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let message = match (e.code(), e.message()) {
        (Some(code), Some(msg)) => format!("{code}: {msg}"),
        (Some(code), None) => code.to_string(),
        _ => DisplayErrorContext(e).to_string(),
    };
    KeyError::Kms { operation, message }
}

fn to_time(dt: Option<&DateTime>) -> Option<OffsetDateTime> {
    dt.and_then(|d| OffsetDateTime::from_unix_timestamp(d.secs()).ok())
}

fn state_of(s: Option<&aws_sdk_kms::types::KeyState>) -> KeyState {
    use aws_sdk_kms::types::KeyState as K;
    match s {
        Some(K::Enabled) => KeyState::Enabled,
        Some(K::PendingDeletion) | Some(K::PendingReplicaDeletion) => KeyState::PendingDeletion,
        _ => KeyState::Disabled,
    }
}

impl KmsProvider {
    /// A provider over an existing client (tests pass one pointed at the emulator).
    pub fn new(client: Client, deletion_window_days: u32) -> Result<Self, KeyError> {
        if !(7..=30).contains(&deletion_window_days) {
            return Err(KeyError::Config(format!(
                "keys.deletionWindowDays = {deletion_window_days} is out of range 7..=30"
            )));
        }
        Ok(Self {
            client,
            deletion_window_days,
            metadata_ttl: DEFAULT_METADATA_TTL,
            cache: std::sync::Mutex::new(Cache::default()),
        })
    }

    /// Loads the standard AWS configuration (environment, profile, IMDS/IRSA credentials);
    /// non-empty `awsKms.region` / `awsKms.endpoint` override region and endpoint.
    pub async fn from_config(cfg: &KeysConfig) -> Result<Self, KeyError> {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if !cfg.aws_kms.region.is_empty() {
            loader = loader.region(aws_sdk_kms::config::Region::new(cfg.aws_kms.region.clone()));
        }
        if !cfg.aws_kms.endpoint.is_empty() {
            if !(cfg.aws_kms.endpoint.starts_with("http://")
                || cfg.aws_kms.endpoint.starts_with("https://"))
            {
                return Err(KeyError::Config(format!(
                    "keys.awsKms.endpoint {:?} must start with http:// or https://",
                    cfg.aws_kms.endpoint
                )));
            }
            loader = loader.endpoint_url(cfg.aws_kms.endpoint.clone());
        }
        let sdk = loader.load().await;
        if sdk.region().is_none() {
            return Err(KeyError::Config(
                "no AWS region: set keys.awsKms.region or AWS_REGION".into(),
            ));
        }
        Self::new(Client::new(&sdk), cfg.deletion_window_days)
    }

    /// How long key metadata (state, alias target, rotation count) may be served from cache.
    /// `Duration::ZERO` asks KMS every time.
    pub fn with_metadata_ttl(mut self, ttl: Duration) -> Self {
        self.metadata_ttl = ttl;
        self
    }

    fn rotations_ttl(&self) -> Duration {
        if self.metadata_ttl.is_zero() {
            Duration::ZERO
        } else {
            self.metadata_ttl.max(ROTATIONS_TTL)
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    fn cached_meta(&self, id: &str) -> Option<Meta> {
        let cache = self.cache.lock().ok()?;
        cache
            .meta
            .get(id)
            .filter(|(_, at)| at.elapsed() < self.metadata_ttl)
            .map(|(m, _)| m.clone())
    }

    fn forget(&self, ids: &[&str]) {
        if let Ok(mut cache) = self.cache.lock() {
            for id in ids {
                cache.meta.remove(*id);
                cache.rotations.remove(*id);
            }
        }
    }

    /// DescribeKey (alias or key id); `None` when KMS does not know it.
    async fn describe(&self, id: &str, use_cache: bool) -> Result<Option<Meta>, KeyError> {
        if use_cache && let Some(m) = self.cached_meta(id) {
            return Ok(Some(m));
        }
        let out = match self.client.describe_key().key_id(id).send().await {
            Ok(out) => out,
            Err(e) if e.code() == Some("NotFoundException") => return Ok(None),
            Err(e) => return Err(kms_err("DescribeKey", &e)),
        };
        let md = out.key_metadata().ok_or(KeyError::Kms {
            operation: "DescribeKey",
            message: format!("no key metadata returned for {id}"),
        })?;
        let m = Meta {
            key_id: md.key_id().to_string(),
            state: state_of(md.key_state()),
            created_at: to_time(md.creation_date()),
            delete_after: to_time(md.deletion_date()),
        };
        if let Ok(mut cache) = self.cache.lock() {
            cache
                .meta
                .insert(id.to_string(), (m.clone(), Instant::now()));
        }
        Ok(Some(m))
    }

    async fn rotations(&self, key_id: &str) -> Result<Rotations, KeyError> {
        if let Ok(cache) = self.cache.lock()
            && let Some((r, at)) = cache.rotations.get(key_id)
            && at.elapsed() < self.rotations_ttl()
        {
            return Ok(r.clone());
        }
        let mut count = 0u32;
        let mut last: Option<OffsetDateTime> = None;
        let mut marker: Option<String> = None;
        loop {
            let out = self
                .client
                .list_key_rotations()
                .key_id(key_id)
                .set_marker(marker.clone())
                .send()
                .await
                .map_err(|e| kms_err("ListKeyRotations", &e))?;
            for r in out.rotations() {
                count = count.saturating_add(1);
                let t = to_time(r.rotation_date());
                if t > last {
                    last = t;
                }
            }
            match out.next_marker() {
                Some(m) if out.truncated() => marker = Some(m.to_string()),
                _ => break,
            }
        }
        let r = Rotations {
            version: count.saturating_add(1),
            last,
        };
        if let Ok(mut cache) = self.cache.lock() {
            cache
                .rotations
                .insert(key_id.to_string(), (r.clone(), Instant::now()));
        }
        Ok(r)
    }

    async fn info(&self, tenant: &str, m: &Meta, created: bool) -> Result<KeyInfo, KeyError> {
        let r = self.rotations(&m.key_id).await?;
        Ok(KeyInfo {
            tenant: tenant.to_string(),
            key_id: m.key_id.clone(),
            version: r.version,
            state: m.state,
            created,
            created_at: m.created_at,
            rotated_at: r.last,
            delete_after: m.delete_after,
        })
    }

    /// The tenant's key, which must be enabled.
    async fn usable(&self, tenant: &str) -> Result<Meta, KeyError> {
        let m = self
            .describe(&alias_for(tenant), true)
            .await?
            .ok_or(KeyError::NotFound {
                tenant: tenant.to_string(),
            })?;
        if m.state != KeyState::Enabled {
            return Err(KeyError::Unavailable {
                tenant: tenant.to_string(),
                key_id: m.key_id,
                state: m.state,
            });
        }
        Ok(m)
    }

    /// Sets the automatic rotation period (clamped to what KMS accepts).
    pub async fn set_rotation_days(&self, tenant: &str, days: u32) -> Result<(), KeyError> {
        validate_tenant(tenant)?;
        let m = self.usable(tenant).await?;
        self.enable_rotation(&m.key_id, days).await
    }

    async fn enable_rotation(&self, key_id: &str, days: u32) -> Result<(), KeyError> {
        let period = days.clamp(*KMS_ROTATION_DAYS.start(), *KMS_ROTATION_DAYS.end());
        self.client
            .enable_key_rotation()
            .key_id(key_id)
            .rotation_period_in_days(i32::try_from(period).unwrap_or(365))
            .send()
            .await
            .map_err(|e| kms_err("EnableKeyRotation", &e))?;
        Ok(())
    }

    async fn create(&self, spec: &TenantKeySpec) -> Result<KeyInfo, KeyError> {
        let alias = alias_for(&spec.tenant);
        let tag = |k: &str, v: &str| {
            Tag::builder()
                .tag_key(k)
                .tag_value(v)
                .build()
                .map_err(|e| KeyError::Kms {
                    operation: "CreateKey",
                    message: format!("bad tag {k}: {e}"),
                })
        };
        let out = self
            .client
            .create_key()
            .description(format!("silo tenant {}", spec.tenant))
            .key_usage(KeyUsageType::EncryptDecrypt)
            .key_spec(KeySpec::SymmetricDefault)
            .tags(tag(TAG_TENANT, &spec.tenant)?)
            .tags(tag(TAG_PARENT, spec.parent.as_deref().unwrap_or(""))?)
            .send()
            .await
            .map_err(|e| kms_err("CreateKey", &e))?;
        let key_id = out
            .key_metadata()
            .map(|m| m.key_id().to_string())
            .ok_or(KeyError::Kms {
                operation: "CreateKey",
                message: "no key metadata returned".into(),
            })?;
        match self
            .client
            .create_alias()
            .alias_name(&alias)
            .target_key_id(&key_id)
            .send()
            .await
        {
            Ok(_) => {}
            Err(e) if e.code() == Some("AlreadyExistsException") => {
                // Another replica won the race: drop our key, use theirs.
                tracing::warn!(tenant = %spec.tenant, %key_id, "alias appeared concurrently; scheduling our duplicate key for deletion");
                self.client
                    .schedule_key_deletion()
                    .key_id(&key_id)
                    .pending_window_in_days(7)
                    .send()
                    .await
                    .map_err(|e| kms_err("ScheduleKeyDeletion", &e))?;
                let m = self
                    .describe(&alias, false)
                    .await?
                    .ok_or(KeyError::NotFound {
                        tenant: spec.tenant.clone(),
                    })?;
                return self.info(&spec.tenant, &m, false).await;
            }
            Err(e) => return Err(kms_err("CreateAlias", &e)),
        }
        self.enable_rotation(&key_id, spec.rotation_days.unwrap_or(DEFAULT_ROTATION_DAYS))
            .await?;
        self.forget(&[&alias]);
        let m = self
            .describe(&alias, false)
            .await?
            .ok_or(KeyError::NotFound {
                tenant: spec.tenant.clone(),
            })?;
        tracing::info!(tenant = %spec.tenant, key_id = %m.key_id, "created KMS tenant key");
        self.info(&spec.tenant, &m, true).await
    }

    async fn ensure_key_impl(&self, spec: &TenantKeySpec) -> Result<KeyInfo, KeyError> {
        spec.validate()?;
        let alias = alias_for(&spec.tenant);
        match self.describe(&alias, true).await? {
            Some(m) if m.state == KeyState::Enabled => self.info(&spec.tenant, &m, false).await,
            Some(m) if m.state == KeyState::PendingDeletion => {
                // An interrupted shred left the alias on a dying key: free the name.
                self.client
                    .delete_alias()
                    .alias_name(&alias)
                    .send()
                    .await
                    .map_err(|e| kms_err("DeleteAlias", &e))?;
                self.forget(&[&alias, &m.key_id]);
                self.create(spec).await
            }
            Some(m) => Err(KeyError::Unavailable {
                tenant: spec.tenant.clone(),
                key_id: m.key_id,
                state: m.state,
            }),
            None => self.create(spec).await,
        }
    }

    async fn key_info_impl(&self, tenant: &str) -> Result<KeyInfo, KeyError> {
        validate_tenant(tenant)?;
        let m = self
            .describe(&alias_for(tenant), true)
            .await?
            .ok_or(KeyError::NotFound {
                tenant: tenant.to_string(),
            })?;
        self.info(tenant, &m, false).await
    }

    async fn rotate_impl(&self, tenant: &str) -> Result<KeyInfo, KeyError> {
        validate_tenant(tenant)?;
        let m = self.usable(tenant).await?;
        self.client
            .rotate_key_on_demand()
            .key_id(&m.key_id)
            .send()
            .await
            .map_err(|e| kms_err("RotateKeyOnDemand", &e))?;
        self.forget(&[&m.key_id]);
        tracing::info!(tenant, key_id = %m.key_id, "rotated KMS tenant key on demand");
        self.info(tenant, &m, false).await
    }

    async fn encrypt_impl(&self, ctx: &KeyContext, plaintext: &[u8]) -> Result<Vec<u8>, KeyError> {
        ctx.validate()?;
        super::validate_plaintext(plaintext)?;
        let m = self.usable(&ctx.tenant).await?;
        let out = self
            .client
            .encrypt()
            .key_id(&m.key_id)
            .plaintext(Blob::new(plaintext))
            .encryption_context("tenant", &ctx.tenant)
            .encryption_context("purpose", &ctx.purpose)
            .send()
            .await
            .map_err(|e| kms_err("Encrypt", &e))?;
        let blob = out.ciphertext_blob().ok_or(KeyError::Kms {
            operation: "Encrypt",
            message: "no ciphertext returned".into(),
        })?;
        format::encode_kms(&m.key_id, blob.as_ref())
    }

    async fn decrypt_impl(&self, ctx: &KeyContext, ciphertext: &[u8]) -> Result<Vec<u8>, KeyError> {
        ctx.validate()?;
        let (key_id, blob) = format::decode_kms(ciphertext)?;
        // 1. The key that wrote it must still be usable (the emulator would not check).
        match self.describe(key_id, true).await? {
            None => {
                return Err(KeyError::Unavailable {
                    tenant: ctx.tenant.clone(),
                    key_id: key_id.to_string(),
                    state: KeyState::Destroyed,
                });
            }
            Some(k) if k.state != KeyState::Enabled => {
                return Err(KeyError::Unavailable {
                    tenant: ctx.tenant.clone(),
                    key_id: key_id.to_string(),
                    state: k.state,
                });
            }
            Some(_) => {}
        }
        // 2. It must be this tenant's key.
        let current = self.usable(&ctx.tenant).await?;
        if current.key_id != key_id {
            return Err(KeyError::WrongKey {
                tenant: ctx.tenant.clone(),
                found: key_id.to_string(),
                expected: current.key_id,
            });
        }
        let out = self
            .client
            .decrypt()
            .key_id(key_id)
            .ciphertext_blob(Blob::new(blob))
            .encryption_context("tenant", &ctx.tenant)
            .encryption_context("purpose", &ctx.purpose)
            .send()
            .await
            .map_err(|e| match e.code() {
                Some("InvalidCiphertextException") | Some("IncorrectKeyException") => {
                    KeyError::DecryptFailed {
                        tenant: ctx.tenant.clone(),
                        purpose: ctx.purpose.clone(),
                    }
                }
                _ => kms_err("Decrypt", &e),
            })?;
        Ok(out
            .plaintext()
            .map(|b| b.as_ref().to_vec())
            .unwrap_or_default())
    }

    async fn generate_data_key_impl(&self, ctx: &KeyContext) -> Result<DataKey, KeyError> {
        ctx.validate()?;
        let m = self.usable(&ctx.tenant).await?;
        let out = self
            .client
            .generate_data_key()
            .key_id(&m.key_id)
            .key_spec(DataKeySpec::Aes256)
            .encryption_context("tenant", &ctx.tenant)
            .encryption_context("purpose", &ctx.purpose)
            .send()
            .await
            .map_err(|e| kms_err("GenerateDataKey", &e))?;
        let plain = out.plaintext().ok_or(KeyError::Kms {
            operation: "GenerateDataKey",
            message: "no plaintext key returned".into(),
        })?;
        let plaintext = <[u8; 32]>::try_from(plain.as_ref()).map_err(|_| KeyError::Kms {
            operation: "GenerateDataKey",
            message: format!("data key is {} bytes, expected 32", plain.as_ref().len()),
        })?;
        let blob = out.ciphertext_blob().ok_or(KeyError::Kms {
            operation: "GenerateDataKey",
            message: "no wrapped key returned".into(),
        })?;
        let version = self.rotations(&m.key_id).await?.version;
        Ok(DataKey {
            wrapped: format::encode_kms(&m.key_id, blob.as_ref())?,
            key_id: m.key_id,
            version,
            plaintext,
        })
    }

    async fn shred_impl(&self, tenant: &str) -> Result<ShredReceipt, KeyError> {
        validate_tenant(tenant)?;
        let alias = alias_for(tenant);
        let tomb = tombstone_alias_for(tenant);
        let Some(m) = self.describe(&alias, false).await? else {
            // Already shredded (alias gone): answer from the tombstone alias.
            return match self.describe(&tomb, false).await? {
                Some(t) if t.state == KeyState::PendingDeletion => Ok(ShredReceipt {
                    tenant: tenant.to_string(),
                    key_id: t.key_id,
                    delete_after: t.delete_after.unwrap_or(OffsetDateTime::UNIX_EPOCH),
                }),
                _ => Err(KeyError::NotFound {
                    tenant: tenant.to_string(),
                }),
            };
        };
        let delete_after = if m.state == KeyState::PendingDeletion {
            m.delete_after.unwrap_or(OffsetDateTime::UNIX_EPOCH)
        } else {
            self.client
                .disable_key()
                .key_id(&m.key_id)
                .send()
                .await
                .map_err(|e| kms_err("DisableKey", &e))?;
            self.forget(&[&alias, &m.key_id]);
            match self
                .client
                .create_alias()
                .alias_name(&tomb)
                .target_key_id(&m.key_id)
                .send()
                .await
            {
                Ok(_) => {}
                Err(e) if e.code() == Some("AlreadyExistsException") => {
                    self.client
                        .update_alias()
                        .alias_name(&tomb)
                        .target_key_id(&m.key_id)
                        .send()
                        .await
                        .map_err(|e| kms_err("UpdateAlias", &e))?;
                }
                Err(e) => return Err(kms_err("CreateAlias", &e)),
            }
            let out = self
                .client
                .schedule_key_deletion()
                .key_id(&m.key_id)
                .pending_window_in_days(i32::try_from(self.deletion_window_days).unwrap_or(30))
                .send()
                .await
                .map_err(|e| kms_err("ScheduleKeyDeletion", &e))?;
            to_time(out.deletion_date()).unwrap_or_else(|| {
                OffsetDateTime::now_utc()
                    + time::Duration::days(i64::from(self.deletion_window_days))
            })
        };
        self.client
            .delete_alias()
            .alias_name(&alias)
            .send()
            .await
            .map_err(|e| kms_err("DeleteAlias", &e))?;
        self.forget(&[&alias, &tomb, &m.key_id]);
        tracing::info!(tenant, key_id = %m.key_id, %delete_after, "shredded KMS tenant key");
        Ok(ShredReceipt {
            tenant: tenant.to_string(),
            key_id: m.key_id,
            delete_after,
        })
    }
}

impl KeyProvider for KmsProvider {
    fn kind(&self) -> KeyProviderKind {
        KeyProviderKind::AwsKms
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

    /// AWS KMS deletes the key itself when the window ends; nothing to do here.
    fn purge_expired(&self, _now: OffsetDateTime) -> BoxFuture<'_, Result<Vec<String>, KeyError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AwsKmsConfig;

    #[test]
    fn aliases() {
        assert_eq!(alias_for("acme"), "alias/silo/acme");
        assert_eq!(tombstone_alias_for("acme"), "alias/silo-shredded/acme");
    }

    #[tokio::test]
    async fn bad_endpoint_is_named() {
        let cfg = KeysConfig {
            provider: KeyProviderKind::AwsKms,
            deletion_window_days: 7,
            aws_kms: AwsKmsConfig {
                region: "us-east-1".into(),
                endpoint: "localhost:4566".into(),
            },
        };
        let e = KmsProvider::from_config(&cfg)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("keys.awsKms.endpoint \"localhost:4566\" must start with http://"),
            "{e}"
        );
    }

    #[test]
    fn deletion_window_is_checked() {
        let conf = aws_sdk_kms::Config::builder()
            .behavior_version(aws_sdk_kms::config::BehaviorVersion::latest())
            .region(aws_sdk_kms::config::Region::new("us-east-1"))
            .build();
        let e = KmsProvider::new(Client::from_conf(conf), 3)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("keys.deletionWindowDays = 3 is out of range 7..=30"),
            "{e}"
        );
    }

    #[test]
    fn kms_states_map_conservatively() {
        use aws_sdk_kms::types::KeyState as K;
        assert_eq!(state_of(Some(&K::Enabled)), KeyState::Enabled);
        assert_eq!(
            state_of(Some(&K::PendingDeletion)),
            KeyState::PendingDeletion
        );
        for s in [K::Disabled, K::Unavailable, K::Creating, K::PendingImport] {
            assert_eq!(state_of(Some(&s)), KeyState::Disabled, "{s:?}");
        }
        assert_eq!(state_of(None), KeyState::Disabled);
    }
}
