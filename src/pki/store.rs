//! Where the operator keeps the certificate authorities: the platform root CA in Secret
//! [`ROOT_CA_SECRET`] in the platform namespace (generated on first use), each tenant CA in
//! `silo-ca-<tenant>` ([`tenant_ca_secret`]) in the platform namespace too — a tenant admin can
//! read the Secrets of their own namespace, so the CA key must not be there. The tenant CA key
//! is kept sealed with the tenant's own key ([`CA_KEY_SEALED_KEY`]), so a shredded tenant's CA
//! key is unreadable; the CA rotates at two thirds of its lifetime with a trust bundle
//! ([`CA_BUNDLE_KEY`]) that keeps the old CA until the leaves it issued expire. Read and
//! written through the operator's [`Cluster`]; the Secrets the leaves go into are
//! [`crate::operator::reconcile::secrets`].

use std::collections::BTreeMap;

use base64::Engine as _;
use serde_json::json;
use time::OffsetDateTime;

use crate::config::PlatformConfig;
use crate::operator::cluster::{Cluster, FailureKind, ObjectKey, SecretData};
use crate::operator::key_service::KeyService;
use crate::operator::reconcile::secrets::{
    SecretError, cluster_err, create_if_missing, data, get, pki_err, require, secret_manifest,
};
use crate::types::Tenant;

use super::{
    PkiValidity, PlatformCa, TenantCa, TenantNames, TenantPki, TrustBundle, needs_renewal,
};

/// Platform root CA Secret (keys `ca.crt`, `ca.key`) in the platform namespace.
pub const ROOT_CA_SECRET: &str = "silo-root-ca";
/// Keys of the CA Secrets.
pub const CA_CERT_KEY: &str = "ca.crt";
pub const CA_KEY_KEY: &str = "ca.key";
/// The tenant CA's key, encrypted with the tenant key (base64 of the provider's ciphertext).
pub const CA_KEY_SEALED_KEY: &str = "ca.key.sealed";
/// The tenant CA's trust bundle (JSON: CAs trusted together, with retirement times).
pub const CA_BUNDLE_KEY: &str = "bundle.json";
/// Key-context purpose binding the sealed tenant CA key.
pub const CA_KEY_PURPOSE: &str = "tenant-ca-key";
/// Common name of a generated platform root CA.
pub const ROOT_CA_NAME: &str = "silo platform root CA";
/// Name of the tenant CA Secret in the platform namespace.
pub fn tenant_ca_secret(tenant: &str) -> String {
    format!("silo-ca-{tenant}")
}

/// The platform root CA: loaded from [`ROOT_CA_SECRET`], generated and stored on first use.
pub async fn platform_ca<C: Cluster>(
    cluster: &C,
    config: &PlatformConfig,
    now: OffsetDateTime,
) -> Result<PlatformCa, SecretError> {
    let key = ObjectKey::new("Secret", Some(&config.platform_namespace), ROOT_CA_SECRET);
    let existing = get(cluster, &key).await?;
    let (d, _) = create_if_missing(cluster, &key, existing, || {
        let ca = PlatformCa::generate(ROOT_CA_NAME, PkiValidity::default().root_ca, now)
            .map_err(pki_err(&key))?;
        let d = data(&[
            (CA_CERT_KEY, &ca.cert().cert_pem),
            (CA_KEY_KEY, &ca.cert().key_pem),
        ]);
        let manifest = json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": ROOT_CA_SECRET,
                "namespace": config.platform_namespace,
                "labels": {crate::render::meta::MANAGED_BY: crate::render::meta::MANAGER},
            },
            "type": "Opaque",
            "data": d.iter().map(|(k, v)| (k.clone(), base64::engine::general_purpose::STANDARD.encode(v))).collect::<BTreeMap<_, _>>(),
        });
        Ok((manifest, d))
    })
    .await?;
    PlatformCa::from_pem(
        require(&key, &d, CA_CERT_KEY)?,
        require(&key, &d, CA_KEY_KEY)?,
    )
    .map_err(pki_err(&key))
}

/// The tenant CA Secret's data for `ca` with its sealed key and trust bundle.
async fn tenant_ca_data(
    keys: &dyn KeyService,
    tenant: &str,
    secret: &str,
    ca: &TenantCa,
    bundle: &TrustBundle,
) -> Result<SecretData, SecretError> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let sealed = keys
        .seal(tenant, CA_KEY_PURPOSE, ca.cert().key_pem.as_bytes())
        .await
        .map_err(|e| SecretError::Key {
            secret: secret.to_string(),
            message: e.to_string(),
        })?;
    let bundle_json = serde_json::to_string(bundle).map_err(|e| SecretError::Key {
        secret: secret.to_string(),
        message: format!("trust bundle: {e}"),
    })?;
    Ok(data(&[
        (CA_CERT_KEY, &ca.cert().cert_pem),
        (CA_KEY_SEALED_KEY, &b64.encode(sealed)),
        (CA_BUNDLE_KEY, &bundle_json),
    ]))
}

/// The tenant CA and its trust bundle from `silo-ca-<tenant>` in the platform namespace:
/// issued on first use, its key sealed with the tenant's key (so shredding the key makes it
/// unreadable), rotated when it reaches two thirds of its lifetime (the old CA stays in the
/// bundle until the leaves it issued expire). A Secret of an older build with a plaintext
/// `ca.key` is replaced by the sealed form.
pub async fn tenant_ca<C: Cluster>(
    cluster: &C,
    config: &PlatformConfig,
    keys: &dyn KeyService,
    tenant: &Tenant,
    pki: &TenantPki,
    names: &TenantNames,
    now: OffsetDateTime,
) -> Result<(TenantCa, TrustBundle), SecretError> {
    let name = tenant.name();
    let key = ObjectKey::new(
        "Secret",
        Some(&config.platform_namespace),
        &tenant_ca_secret(name),
    );
    let secret = key.to_string();
    let key_err = |message: String| SecretError::Key {
        secret: secret.clone(),
        message,
    };
    let existing = get(cluster, &key).await?;
    let Some(d) = existing else {
        let ca = pki.issue_tenant_ca(names, now).map_err(pki_err(&key))?;
        let bundle = TrustBundle::new(ca.cert());
        let d = tenant_ca_data(keys, name, &secret, &ca, &bundle).await?;
        let manifest = secret_manifest(tenant, &config.platform_namespace, &key.name, &d);
        return match cluster.create_secret(&key, &manifest).await {
            Ok(()) => {
                tracing::info!(secret = %key, serial = %ca.cert().serial, "tenant CA issued");
                Ok((ca, bundle))
            }
            // Another writer issued one meanwhile: use theirs.
            Err(e) if e.kind == FailureKind::Conflict => {
                Box::pin(tenant_ca(cluster, config, keys, tenant, pki, names, now)).await
            }
            Err(e) => Err(cluster_err(&key)(e)),
        };
    };
    let cert_pem = require(&key, &d, CA_CERT_KEY)?;
    let (key_pem, legacy) = match (d.get(CA_KEY_SEALED_KEY), d.get(CA_KEY_KEY)) {
        (Some(sealed), _) => {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(sealed.trim())
                .map_err(|e| key_err(format!("{CA_KEY_SEALED_KEY} is not base64: {e}")))?;
            let plain = keys
                .open(name, CA_KEY_PURPOSE, &raw)
                .await
                .map_err(|e| key_err(e.to_string()))?;
            let pem = String::from_utf8(plain)
                .map_err(|_| key_err(format!("{CA_KEY_SEALED_KEY} does not hold a PEM key")))?;
            (pem, false)
        }
        (None, Some(plain)) => (plain.clone(), true),
        (None, None) => {
            return Err(SecretError::MissingKey {
                secret,
                key: CA_KEY_SEALED_KEY.to_string(),
            });
        }
    };
    let mut ca = pki
        .load_tenant_ca(names, cert_pem, &key_pem)
        .map_err(pki_err(&key))?;
    let mut bundle = match d.get(CA_BUNDLE_KEY) {
        Some(j) => serde_json::from_str(j).map_err(|e| key_err(format!("{CA_BUNDLE_KEY}: {e}")))?,
        None => TrustBundle::new(ca.cert()),
    };
    let due = needs_renewal(cert_pem, now).unwrap_or(true);
    if due {
        ca = pki
            .rotate_tenant_ca(names, &mut bundle, now)
            .map_err(pki_err(&key))?;
        tracing::info!(secret = %key, serial = %ca.cert().serial, "tenant CA rotated");
    }
    let pruned = bundle.prune(now);
    if due || legacy || pruned > 0 {
        let d = tenant_ca_data(keys, name, &secret, &ca, &bundle).await?;
        if legacy {
            // Replace whole: the plaintext key must not linger next to the sealed one.
            cluster.delete(&key).await.map_err(cluster_err(&key))?;
            let manifest = secret_manifest(tenant, &config.platform_namespace, &key.name, &d);
            cluster
                .create_secret(&key, &manifest)
                .await
                .map_err(cluster_err(&key))?;
            tracing::info!(secret = %key, "tenant CA key sealed with the tenant key");
        } else {
            cluster
                .patch_secret_data(&key, &d)
                .await
                .map_err(cluster_err(&key))?;
        }
    }
    Ok((ca, bundle))
}
