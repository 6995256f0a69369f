//! The tenant's data key, in the only form that is stored: wrapped by the tenant's key, in
//! Secret `silo-data-key` of the tenant namespace (`wrappedKey` base64, `keyId`, `keyVersion`,
//! `purpose`). The tenant's applications unwrap it through the key provider (KMS `Decrypt` with
//! encryption context `{tenant, purpose: data-key}`) and encrypt their data with it; shredding
//! the tenant key makes it, and so the data, unreadable.
//!
//! Created once; re-wrapped under the new key version after a rotation, so the old version can
//! be retired. A steady-state reconcile only reads the Secret.

use base64::Engine as _;

use crate::types::Tenant;
use crate::types::tenant::KeyStatus;

use crate::operator::cluster::{Cluster, FailureKind, ObjectKey, SecretData};
use crate::operator::key_service::{DATA_KEY_PURPOSE, KeyService, WrappedDataKey};
use crate::operator::reconcile::secret_checks::{Check, SecretChecks};
use crate::operator::reconcile::secrets::{SecretError, secret_manifest};

/// Name of the data key Secret in the tenant namespace.
pub const DATA_KEY_SECRET: &str = "silo-data-key";

fn contents(wk: &WrappedDataKey) -> SecretData {
    SecretData::from([
        (
            "wrappedKey".to_string(),
            base64::engine::general_purpose::STANDARD.encode(&wk.wrapped),
        ),
        ("keyId".to_string(), wk.key_id.clone()),
        ("keyVersion".to_string(), wk.version.to_string()),
        ("purpose".to_string(), DATA_KEY_PURPOSE.to_string()),
    ])
}

/// Ensure the data key Secret of `tenant` in `namespace` matches its current key `key`.
/// Returns `namespace/name` when it wrote.
pub async fn ensure<C: Cluster>(
    cluster: &C,
    keys: &dyn KeyService,
    checks: &SecretChecks,
    tenant: &Tenant,
    namespace: &str,
    key: &KeyStatus,
) -> Result<Option<String>, SecretError> {
    let name = tenant.name();
    let sk = ObjectKey::new("Secret", Some(namespace), DATA_KEY_SECRET);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let check = checks
        .check(cluster, &sk, &format!("{}/{}", key.id, key.version), now)
        .await;
    if check == Check::Skip {
        return Ok(None);
    }
    let secret = sk.to_string();
    let fail = |message: String| SecretError::Key {
        secret: secret.clone(),
        message,
    };
    let cluster_fail = |e: crate::operator::cluster::ClusterError| SecretError::Cluster {
        secret: secret.clone(),
        source: e,
    };
    let existing = match check {
        Check::Absent => None,
        _ => cluster
            .get_secret(namespace, DATA_KEY_SECRET)
            .await
            .map_err(cluster_fail)?,
    };
    match existing {
        None => {
            let wk = keys
                .wrapped_data_key(name)
                .await
                .map_err(|e| fail(e.to_string()))?;
            let manifest = secret_manifest(tenant, namespace, DATA_KEY_SECRET, &contents(&wk));
            match cluster.create_secret(&sk, &manifest).await {
                Ok(()) => {
                    tracing::info!(secret = %sk, version = wk.version, "data key created");
                    if wk.key_id == key.id && wk.version >= key.version {
                        let context = format!("{}/{}", key.id, key.version);
                        checks.created(cluster, &sk, &context, now, i64::MAX).await;
                    }
                    Ok(Some(secret.clone()))
                }
                Err(e) if e.kind == FailureKind::Conflict => Ok(None),
                Err(e) => Err(cluster_fail(e)),
            }
        }
        Some(d) => {
            let stored: u32 = d
                .get("keyVersion")
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| fail("keyVersion is missing or not a number".to_string()))?;
            let stored_id = d.get("keyId").map(String::as_str).unwrap_or_default();
            if stored_id != key.id {
                return Err(fail(format!(
                    "the data key is wrapped by key {stored_id:?}, the tenant's key is now {:?}; not replaced (data encrypted with it would become unreadable)",
                    key.id
                )));
            }
            if stored >= key.version {
                checks.record(&sk, &check, i64::MAX);
                return Ok(None);
            }
            let wrapped = d
                .get("wrappedKey")
                .ok_or_else(|| fail("wrappedKey is missing".to_string()))
                .and_then(|w| {
                    base64::engine::general_purpose::STANDARD
                        .decode(w.trim())
                        .map_err(|e| fail(format!("wrappedKey is not base64: {e}")))
                })?;
            let wk = keys
                .rewrap_data_key(name, &wrapped)
                .await
                .map_err(|e| fail(e.to_string()))?;
            cluster
                .patch_secret_data(&sk, &contents(&wk))
                .await
                .map_err(cluster_fail)?;
            tracing::info!(secret = %sk, from = stored, to = wk.version, "data key re-wrapped");
            Ok(Some(secret.clone()))
        }
    }
}
