//! The device CA of the channel endpoint (`crate::pki::DeviceCa`): the operator issues it from
//! the platform root and keeps it in Secret [`DEVICE_CA_SECRET`] in the platform namespace,
//! like the root itself (`silo-root-ca`). Keys:
//!
//! - `tls.crt`: the device CA certificate followed by the platform root;
//! - `tls.key`: its private key;
//! - `ca.crt`: the same chain (what devices are given);
//! - `client-ca.crt`: the device CA alone as an OpenSSL client-authentication trust anchor, the
//!   `cafile` of the shared Mosquitto's certificate listener (docs/channels.md).
//!
//! The API mounts the Secret (`api.devices.ca.certFile` = `tls.crt`, `keyFile` = `tls.key`) and
//! re-reads it when the kubelet updates the files. The CA is renewed at two thirds of its
//! lifetime; device certificates it issued before stay valid until they expire only if the
//! channel endpoint still trusts the old CA, so `client-ca.crt` keeps the previous CA next to
//! the new one until the longest device certificate it may have issued has expired.
//!
//! [`keep`] runs while the operator leads: once at start, then every [`EVERY`].

use std::time::Duration;

use base64::Engine as _;
use serde_json::json;
use time::OffsetDateTime;

use crate::config::PlatformConfig;
use crate::pki::{
    DEVICE_CA_VALIDITY, DEVICE_CERT_VALIDITY, DeviceCa, PkiValidity, SECRET_CA, SECRET_CERT,
    SECRET_CLIENT_CA, SECRET_KEY, TrustBundle, needs_renewal,
};

use super::cluster::{Cluster, FailureKind, ObjectKey, SecretData};
use super::reconcile::secrets::SecretError;
use crate::pki::store::platform_ca;

/// The device CA Secret in the platform namespace.
pub const DEVICE_CA_SECRET: &str = "silo-device-ca";
/// The CAs the certificate listener trusts, with retirement times (JSON, like a tenant CA's).
pub const BUNDLE_KEY: &str = "bundle.json";
/// How often [`keep`] checks the Secret.
pub const EVERY: Duration = Duration::from_secs(3600);

fn secret_err(key: &ObjectKey) -> impl Fn(String) -> SecretError + '_ {
    move |message| SecretError::Key {
        secret: key.to_string(),
        message,
    }
}

fn secret_data(ca: &DeviceCa, bundle: &TrustBundle) -> Result<SecretData, String> {
    let anchors = bundle
        .to_client_auth_anchors_pem()
        .map_err(|e| e.to_string())?;
    let bundle_json = serde_json::to_string(bundle).map_err(|e| e.to_string())?;
    Ok(SecretData::from([
        (SECRET_CERT.to_string(), ca.chain_pem().to_string()),
        (SECRET_KEY.to_string(), ca.cert().key_pem.clone()),
        (SECRET_CA.to_string(), ca.chain_pem().to_string()),
        (SECRET_CLIENT_CA.to_string(), anchors),
        (BUNDLE_KEY.to_string(), bundle_json),
    ]))
}

/// Makes sure [`DEVICE_CA_SECRET`] holds a device CA signed by the current platform root that
/// is not yet due for renewal: issues it when missing, unreadable, signed by another root or
/// two thirds through its lifetime. Returns `Some(serial)` when it wrote a new CA.
pub async fn ensure<C: Cluster>(
    cluster: &C,
    config: &PlatformConfig,
    now: OffsetDateTime,
) -> Result<Option<String>, SecretError> {
    let ns = config.platform_namespace.as_str();
    let key = ObjectKey::new("Secret", Some(ns), DEVICE_CA_SECRET);
    let existing = cluster
        .get_secret(ns, DEVICE_CA_SECRET)
        .await
        .map_err(|source| SecretError::Cluster {
            secret: key.to_string(),
            source,
        })?;
    let root = platform_ca(cluster, config, now).await?;
    let current = existing.as_ref().and_then(|d| {
        let (cert, k) = (d.get(SECRET_CERT)?, d.get(SECRET_KEY)?);
        let ca = DeviceCa::from_pem(cert, k).ok()?;
        // Signed by this root (the chain ends with it), and not yet due.
        let ours = ca.chain_pem().ends_with(&root.cert().cert_pem);
        let due = needs_renewal(cert, now).unwrap_or(true);
        (ours && !due).then_some(ca)
    });
    if current.is_some() {
        return Ok(None);
    }
    let ca = DeviceCa::issue(
        &root,
        DEVICE_CA_VALIDITY,
        PkiValidity::default().backdate,
        now,
    )
    .map_err(|e| secret_err(&key)(e.to_string()))?;
    // The previous CA stays trusted until the device certificates it issued have expired.
    let mut bundle = existing
        .as_ref()
        .and_then(|d| d.get(BUNDLE_KEY))
        .and_then(|j| serde_json::from_str::<TrustBundle>(j).ok())
        .unwrap_or_default();
    if bundle.entries.is_empty() {
        bundle = TrustBundle::new(ca.cert());
    } else {
        bundle
            .rotate(ca.cert(), now, DEVICE_CERT_VALIDITY)
            .map_err(|e| secret_err(&key)(e.to_string()))?;
    }
    bundle.prune(now);
    let d = secret_data(&ca, &bundle).map_err(secret_err(&key))?;
    let cluster_err = |source| SecretError::Cluster {
        secret: key.to_string(),
        source,
    };
    match existing {
        Some(_) => {
            cluster
                .patch_secret_data(&key, &d)
                .await
                .map_err(cluster_err)?;
            tracing::info!(secret = %key, serial = %ca.cert().serial, "device CA renewed");
        }
        None => {
            let b64 = base64::engine::general_purpose::STANDARD;
            let manifest = json!({
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {
                    "name": DEVICE_CA_SECRET,
                    "namespace": ns,
                    "labels": {crate::render::meta::MANAGED_BY: crate::render::meta::MANAGER},
                },
                "type": "Opaque",
                "data": d.iter().map(|(k, v)| (k.clone(), b64.encode(v))).collect::<std::collections::BTreeMap<_, _>>(),
            });
            match cluster.create_secret(&key, &manifest).await {
                Ok(()) => {
                    tracing::info!(secret = %key, serial = %ca.cert().serial, "device CA issued")
                }
                // Another writer made it meanwhile: theirs stands.
                Err(e) if e.kind == FailureKind::Conflict => return Ok(None),
                Err(e) => return Err(cluster_err(e)),
            }
        }
    }
    Ok(Some(ca.cert().serial.clone()))
}

/// Runs [`ensure`] at once and then every [`EVERY`] until `shutdown`; failures are logged and
/// retried a minute later.
pub async fn keep<C: Cluster>(
    cluster: C,
    config: PlatformConfig,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let wait = match ensure(&cluster, &config, OffsetDateTime::now_utc()).await {
            Ok(_) => EVERY,
            Err(e) => {
                tracing::warn!(error = %e, "device CA not ensured; retrying in a minute");
                Duration::from_secs(60)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::cluster::memory::MemoryCluster;
    use crate::pki::certs_from_pem;
    use crate::pki::store::{CA_CERT_KEY, ROOT_CA_SECRET};

    async fn secret(c: &MemoryCluster) -> SecretData {
        c.get_secret("silo-system", DEVICE_CA_SECRET)
            .await
            .unwrap()
            .expect("silo-device-ca exists")
    }

    #[tokio::test]
    async fn the_device_ca_is_issued_from_the_platform_root_kept_and_renewed() {
        let c = MemoryCluster::new();
        let config = PlatformConfig::default();
        let now = OffsetDateTime::now_utc();
        let first = ensure(&c, &config, now).await.unwrap().expect("issued");
        let d = secret(&c).await;
        let root = c
            .get_secret("silo-system", ROOT_CA_SECRET)
            .await
            .unwrap()
            .unwrap()[CA_CERT_KEY]
            .clone();
        // Signed by the root the operator keeps: a verifier with only the root accepts a
        // device certificate presented with the CA; one with only the device CA anchors it.
        let ca = DeviceCa::from_pem(&d[SECRET_CERT], &d[SECRET_KEY]).unwrap();
        assert_eq!(ca.cert().serial, first);
        assert_eq!(d[SECRET_CA], d[SECRET_CERT]);
        assert!(d[SECRET_CERT].ends_with(&root), "chain ends with the root");
        let (_, x) = x509_parser::parse_x509_certificate(ca.cert().der.as_ref()).unwrap();
        let root_der = certs_from_pem(&root).unwrap();
        let (_, r) = x509_parser::parse_x509_certificate(root_der[0].as_ref()).unwrap();
        assert_eq!(x.issuer(), r.subject());
        x.verify_signature(Some(r.public_key())).unwrap();
        assert_eq!(
            x.basic_constraints()
                .unwrap()
                .unwrap()
                .value
                .path_len_constraint,
            Some(0)
        );
        assert!(
            d[SECRET_CLIENT_CA].starts_with("-----BEGIN TRUSTED CERTIFICATE-----")
                && d[SECRET_CLIENT_CA].matches("BEGIN").count() == 1,
            "the listener's anchors are the device CA alone, not the root"
        );

        // Kept: a second pass (and a later one before renewal) writes nothing.
        assert_eq!(ensure(&c, &config, now).await.unwrap(), None);
        let later = now + time::Duration::days(200);
        assert_eq!(ensure(&c, &config, later).await.unwrap(), None);
        assert_eq!(secret(&c).await, d);

        // Two thirds through its lifetime: renewed, the old CA still trusted by the listener
        // until the device certificates it issued have expired.
        let due = now + time::Duration::days(250);
        let second = ensure(&c, &config, due).await.unwrap().expect("renewed");
        assert_ne!(second, first);
        let d2 = secret(&c).await;
        assert_eq!(d2[SECRET_CLIENT_CA].matches("BEGIN").count(), 2);
        let ca2 = DeviceCa::from_pem(&d2[SECRET_CERT], &d2[SECRET_KEY]).unwrap();
        assert_eq!(ca2.cert().serial, second);
        let gone = due + DEVICE_CERT_VALIDITY + time::Duration::days(1);
        // (Later passes before the next renewal drop the retired CA from the anchors.)
        let bundle: TrustBundle = serde_json::from_str(&d2[BUNDLE_KEY]).unwrap();
        let mut pruned = bundle.clone();
        assert_eq!(pruned.prune(gone), 1);

        // Damaged key: replaced by a new CA.
        let mut broken = d2.clone();
        broken.insert(SECRET_KEY.into(), "garbage".into());
        c.patch_secret_data(
            &ObjectKey::new("Secret", Some("silo-system"), DEVICE_CA_SECRET),
            &broken,
        )
        .await
        .unwrap();
        assert!(ensure(&c, &config, due).await.unwrap().is_some());
        let d3 = secret(&c).await;
        assert!(DeviceCa::from_pem(&d3[SECRET_CERT], &d3[SECRET_KEY]).is_ok());
    }
}
