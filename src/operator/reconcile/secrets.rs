//! The credential Secrets a Siloed tenant's workloads mount, created by the operator:
//!
//! - `silo-postgres-credentials` (`username`, `password`, `database`) in the tenant namespace;
//! - `silo-mosquitto-credentials` (`passwd`: a Mosquitto 2 password file line with a `$7$`
//!   PBKDF2-SHA512 hash; `username` and `password` for the tenant's applications);
//! - `silo-mosquitto-tls` (`ca.crt`, `client-ca.crt`, `tls.crt`, `tls.key`) from the tenant CA.
//!
//! The platform root CA lives in Secret [`ROOT_CA_SECRET`] in the platform namespace (generated
//! on first use), each tenant CA in `silo-ca-<tenant>` in the platform namespace too: a tenant
//! admin can read the Secrets of their own namespace, so the CA key must not be there. The
//! tenant CA key is kept sealed with the tenant's own key ([`CA_KEY_SEALED_KEY`]), so a shredded
//! tenant's CA key is unreadable; the CA rotates at two thirds of its lifetime with a trust
//! bundle ([`CA_BUNDLE_KEY`]) that keeps the old CA until the leaves it issued expire.
//!
//! Create-if-missing: a password is never overwritten, so a steady-state reconcile only reads.
//! The one legitimate rewrite is the broker certificate when it is due for renewal
//! ([`crate::pki::needs_renewal`]), or a Secret of an earlier build without `client-ca.crt`.
//! `ca.crt` holds the tenant CA bundle only (the broker's client trust anchors: a device
//! certificate of another tenant, chaining to the same root, must not be accepted) and
//! `client-ca.crt` the same CAs marked as OpenSSL trust anchors for client authentication, the
//! broker's `cafile` on its certificate listener ([`crate::pki::TrustBundle::to_client_auth_anchors_pem`]);
//! `tls.crt` carries the broker certificate followed by the tenant CA, so clients verify it
//! against the platform root.

use std::collections::BTreeMap;

use base64::Engine as _;
use rand::{Rng, RngCore};
use serde_json::{Value, json};
use sha2::Sha512;
use time::OffsetDateTime;

use crate::config::PlatformConfig;
use crate::pki::{
    PkiError, PkiValidity, PlatformCa, SECRET_CERT, SECRET_CLIENT_CA, TenantCa, TenantNames,
    TenantPki, TrustBundle, cert_validity, needs_renewal, renew_at,
};
use crate::render::meta::{base_labels, owner_refs};
use crate::render::{broker, database};
use crate::types::Tenant;

use crate::backends::SharedServices;

use crate::operator::cluster::{Cluster, ClusterError, FailureKind, ObjectKey, SecretData};
use crate::operator::key_service::KeyService;
use crate::operator::reconcile::secret_checks::{Check, SecretChecks};
use crate::operator::reconcile::shared;

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
/// PostgreSQL role and database of a siloed tenant.
pub const DATABASE_USER: &str = "silo";
pub const DATABASE_DB: &str = "silo";
/// The MQTT user of a siloed tenant's broker.
pub const MQTT_USER: &str = "silo";
/// Length of generated passwords (alphanumeric: ~238 bits).
pub const PASSWORD_LEN: usize = 40;
/// mosquitto_passwd's defaults for `$7$` (PBKDF2-SHA512).
pub const PBKDF2_ITERATIONS: u32 = 101;
const SALT_LEN: usize = 12;

/// Name of the tenant CA Secret in the platform namespace.
pub fn tenant_ca_secret(tenant: &str) -> String {
    format!("silo-ca-{tenant}")
}

/// Why a credential Secret could not be ensured; names the Secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("Secret {secret}: {source}")]
    Cluster {
        secret: String,
        #[source]
        source: ClusterError,
    },
    #[error("Secret {secret}: {source}")]
    Pki {
        secret: String,
        #[source]
        source: PkiError,
    },
    #[error("Secret {secret}: leaving the shared services first: {source}")]
    Shared {
        secret: String,
        #[source]
        source: crate::backends::BackendError,
    },
    #[error("Secret {secret}: {message}")]
    Key { secret: String, message: String },
    #[error("Secret {secret} exists but has no key {key:?} (not overwritten)")]
    MissingKey { secret: String, key: String },
}

/// What [`ensure`] did, per part. Errors are kept per part so a PKI failure does not stop the
/// database credentials (and the conditions can say which Secret is missing).
#[derive(Debug, Default)]
pub struct Ensured {
    /// Secrets created or rewritten (`namespace/name`).
    pub written: Vec<String>,
    pub database: Option<SecretError>,
    pub broker: Option<SecretError>,
    /// What leaving the shared services did (the tenant switched from Shared to Siloed).
    pub left_shared: Vec<String>,
}

/// A random alphanumeric password.
pub fn random_password() -> String {
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(PASSWORD_LEN)
        .map(char::from)
        .collect()
}

/// PBKDF2-HMAC-SHA512 with a 64-byte output (one block).
pub fn pbkdf2_sha512(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 64] {
    pbkdf2::pbkdf2_hmac_array::<Sha512, 64>(password, salt, iterations)
}

/// One Mosquitto password file line, `user:$7$<iterations>$<b64 salt>$<b64 hash>` (newline
/// terminated), with the given salt.
pub fn mosquitto_password_line_with_salt(user: &str, password: &str, salt: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    let hash = pbkdf2_sha512(password.as_bytes(), salt, PBKDF2_ITERATIONS);
    format!(
        "{user}:$7${PBKDF2_ITERATIONS}${}${}\n",
        b64.encode(salt),
        b64.encode(hash)
    )
}

/// One Mosquitto password file line with a random 12-byte salt.
pub fn mosquitto_password_line(user: &str, password: &str) -> String {
    let mut salt = [0u8; SALT_LEN];
    rand::rng().fill_bytes(&mut salt);
    mosquitto_password_line_with_salt(user, password, &salt)
}

/// A Secret manifest (`data` base64-encoded) with the tenant's labels and owner reference.
pub fn secret_manifest(tenant: &Tenant, namespace: &str, name: &str, data: &SecretData) -> Value {
    let b64 = base64::engine::general_purpose::STANDARD;
    let data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(b64.encode(v))))
        .collect();
    let mut meta = json!({
        "name": name,
        "namespace": namespace,
        "labels": base_labels(tenant.name()),
    });
    if let Some(refs) = owner_refs(tenant) {
        meta["ownerReferences"] = json!(refs);
    }
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta,
        "type": "Opaque",
        "data": data,
    })
}

fn data(pairs: &[(&str, &str)]) -> SecretData {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn cluster_err(key: &ObjectKey) -> impl Fn(ClusterError) -> SecretError + '_ {
    move |source| SecretError::Cluster {
        secret: format!(
            "{}/{}",
            key.namespace.as_deref().unwrap_or_default(),
            key.name
        ),
        source,
    }
}

fn pki_err(key: &ObjectKey) -> impl Fn(PkiError) -> SecretError + '_ {
    move |source| SecretError::Pki {
        secret: format!(
            "{}/{}",
            key.namespace.as_deref().unwrap_or_default(),
            key.name
        ),
        source,
    }
}

fn require<'a>(key: &ObjectKey, d: &'a SecretData, k: &str) -> Result<&'a str, SecretError> {
    d.get(k).map(String::as_str).ok_or(SecretError::MissingKey {
        secret: format!(
            "{}/{}",
            key.namespace.as_deref().unwrap_or_default(),
            key.name
        ),
        key: k.to_string(),
    })
}

async fn get<C: Cluster>(cluster: &C, key: &ObjectKey) -> Result<Option<SecretData>, SecretError> {
    cluster
        .get_secret(key.namespace.as_deref().unwrap_or_default(), &key.name)
        .await
        .map_err(cluster_err(key))
}

/// Create the Secret unless it exists (`existing`, as just read; a concurrent creation counts
/// as existing). Returns the stored data and whether this call created it.
async fn create_if_missing<C: Cluster>(
    cluster: &C,
    key: &ObjectKey,
    existing: Option<SecretData>,
    make: impl FnOnce() -> Result<(Value, SecretData), SecretError>,
) -> Result<(SecretData, bool), SecretError> {
    if let Some(d) = existing {
        return Ok((d, false));
    }
    let (manifest, d) = make()?;
    match cluster.create_secret(key, &manifest).await {
        Ok(()) => {
            tracing::info!(secret = %key, "created");
            Ok((d, true))
        }
        Err(e) if e.kind == FailureKind::Conflict => {
            let stored = get(cluster, key)
                .await?
                .ok_or_else(|| cluster_err(key)(e))?;
            Ok((stored, false))
        }
        Err(e) => Err(cluster_err(key)(e)),
    }
}

/// Read a credential Secret; one of the Shared shape (the tenant switched from Shared to
/// Siloed) first makes the tenant leave the shared services, then is deleted.
async fn get_siloed<C: Cluster>(
    cluster: &C,
    services: &dyn SharedServices,
    tenant: &Tenant,
    key: &ObjectKey,
    left: &mut Vec<String>,
) -> Result<Option<SecretData>, SecretError> {
    let existing = get(cluster, key).await?;
    if !existing.as_ref().is_some_and(shared::is_shared_shape) {
        return Ok(existing);
    }
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let done = shared::leave_shared(services, tenant.name(), now)
        .await
        .map_err(|source| SecretError::Shared {
            secret: key.to_string(),
            source,
        })?;
    left.extend(done);
    cluster.delete(key).await.map_err(cluster_err(key))?;
    tracing::info!(secret = %key, "replaced: the tenant left the shared services");
    Ok(None)
}

/// Ensure the three credential Secrets of Siloed tenant `tenant` in its namespace.
pub async fn ensure<C: Cluster>(
    cluster: &C,
    config: &PlatformConfig,
    keys: &dyn KeyService,
    services: &dyn SharedServices,
    checks: &SecretChecks,
    tenant: &Tenant,
    now: OffsetDateTime,
) -> Ensured {
    let ns = config.namespace_for(tenant.name());
    let mut out = Ensured::default();
    let cx = CredentialInputs {
        checks,
        services,
        now: now.unix_timestamp(),
    };
    match ensure_database(cluster, &cx, tenant, &ns, &mut out.left_shared).await {
        Ok(Some(w)) => out.written.push(w),
        Ok(None) => {}
        Err(e) => out.database = Some(e),
    }
    let broker = async {
        let mut w = Vec::new();
        w.extend(ensure_broker_credentials(cluster, &cx, tenant, &ns, &mut out.left_shared).await?);
        w.extend(ensure_broker_tls(cluster, config, keys, checks, tenant, &ns, now).await?);
        Ok::<_, SecretError>(w)
    };
    match broker.await {
        Ok(w) => out.written.extend(w),
        Err(e) => out.broker = Some(e),
    }
    out
}

/// What the credential steps share.
struct CredentialInputs<'a> {
    checks: &'a SecretChecks,
    services: &'a dyn SharedServices,
    now: i64,
}

async fn ensure_database<C: Cluster>(
    cluster: &C,
    cx: &CredentialInputs<'_>,
    tenant: &Tenant,
    ns: &str,
    left: &mut Vec<String>,
) -> Result<Option<String>, SecretError> {
    let key = ObjectKey::new("Secret", Some(ns), database::DATABASE_SECRET);
    let check = cx.checks.check(cluster, &key, "", cx.now).await;
    if check == Check::Skip {
        return Ok(None);
    }
    let existing = match check {
        Check::Absent => None,
        _ => get_siloed(cluster, cx.services, tenant, &key, left).await?,
    };
    let (d, created) = create_if_missing(cluster, &key, existing, || {
        let password = random_password();
        let d = data(&[
            ("username", DATABASE_USER),
            ("password", &password),
            ("database", DATABASE_DB),
        ]);
        Ok((secret_manifest(tenant, ns, &key.name, &d), d))
    })
    .await?;
    for k in ["username", "password", "database"] {
        require(&key, &d, k)?;
    }
    if created {
        cx.checks.created(cluster, &key, "", cx.now, i64::MAX).await;
    } else {
        cx.checks.record(&key, &check, i64::MAX);
    }
    Ok(created.then(|| format!("{ns}/{}", key.name)))
}

async fn ensure_broker_credentials<C: Cluster>(
    cluster: &C,
    cx: &CredentialInputs<'_>,
    tenant: &Tenant,
    ns: &str,
    left: &mut Vec<String>,
) -> Result<Option<String>, SecretError> {
    let key = ObjectKey::new("Secret", Some(ns), broker::BROKER_CREDENTIALS_SECRET);
    let check = cx.checks.check(cluster, &key, "", cx.now).await;
    if check == Check::Skip {
        return Ok(None);
    }
    let existing = match check {
        Check::Absent => None,
        _ => get_siloed(cluster, cx.services, tenant, &key, left).await?,
    };
    let (d, created) = create_if_missing(cluster, &key, existing, || {
        let password = random_password();
        let line = mosquitto_password_line(MQTT_USER, &password);
        let d = data(&[
            ("passwd", &line),
            ("username", MQTT_USER),
            ("password", &password),
        ]);
        Ok((secret_manifest(tenant, ns, &key.name, &d), d))
    })
    .await?;
    require(&key, &d, "passwd")?;
    if created {
        cx.checks.created(cluster, &key, "", cx.now, i64::MAX).await;
    } else {
        cx.checks.record(&key, &check, i64::MAX);
    }
    Ok(created.then(|| format!("{ns}/{}", key.name)))
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
async fn tenant_ca<C: Cluster>(
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

async fn ensure_broker_tls<C: Cluster>(
    cluster: &C,
    config: &PlatformConfig,
    keys: &dyn KeyService,
    checks: &SecretChecks,
    tenant: &Tenant,
    ns: &str,
    now: OffsetDateTime,
) -> Result<Option<String>, SecretError> {
    let key = ObjectKey::new("Secret", Some(ns), broker::BROKER_TLS_SECRET);
    let check = checks.check(cluster, &key, "", now.unix_timestamp()).await;
    if check == Check::Skip {
        return Ok(None);
    }
    let existing = match check {
        Check::Absent => None,
        _ => cluster
            .get_secret(ns, &key.name)
            .await
            .map_err(cluster_err(&key))?,
    };
    if let Some(d) = &existing {
        // An unreadable certificate is replaced like an expiring one, and so is a Secret of
        // an earlier build without the certificate listener's trust anchors.
        let due = match d.get(SECRET_CERT) {
            Some(pem) => needs_renewal(pem, now).unwrap_or(true),
            None => true,
        } || !d.contains_key(SECRET_CLIENT_CA);
        if !due {
            // Good until its renewal is due.
            if let Some(Ok((nb, na))) = d.get(SECRET_CERT).map(|p| cert_validity(p)) {
                checks.record(&key, &check, renew_at(nb, na).unix_timestamp());
            }
            return Ok(None);
        }
    }
    let platform = platform_ca(cluster, config, now).await?;
    let pki = TenantPki::new(platform, PkiValidity::default());
    let names = TenantNames::new(tenant.name(), ns).map_err(pki_err(&key))?;
    let (ca, bundle) = tenant_ca(cluster, config, keys, tenant, &pki, &names, now).await?;
    let cert = pki.issue_broker_cert(&ca, now).map_err(pki_err(&key))?;
    let d = pki
        .broker_tls_secret(&ca, &cert, &bundle)
        .map_err(pki_err(&key))?;
    match existing {
        Some(_) => {
            cluster
                .patch_secret_data(&key, &d)
                .await
                .map_err(cluster_err(&key))?;
            tracing::info!(secret = %key, serial = %cert.serial, "broker certificate renewed");
            Ok(Some(format!("{ns}/{}", key.name)))
        }
        None => {
            let manifest = secret_manifest(tenant, ns, &key.name, &d);
            match cluster.create_secret(&key, &manifest).await {
                Ok(()) => {
                    tracing::info!(secret = %key, serial = %cert.serial, "created");
                    if let Some(Ok((nb, na))) = d.get(SECRET_CERT).map(|p| cert_validity(p)) {
                        let until = renew_at(nb, na).unix_timestamp();
                        let now = now.unix_timestamp();
                        checks.created(cluster, &key, "", now, until).await;
                    }
                    Ok(Some(format!("{ns}/{}", key.name)))
                }
                // Another writer created it meanwhile: theirs stands.
                Err(e) if e.kind == FailureKind::Conflict => Ok(None),
                Err(e) => Err(cluster_err(&key)(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_line_has_the_mosquitto_7_format() {
        let line = mosquitto_password_line("silo", "pw");
        let line = line.strip_suffix('\n').unwrap();
        let (user, rest) = line.split_once(':').unwrap();
        assert_eq!(user, "silo");
        let parts: Vec<&str> = rest.split('$').collect();
        assert_eq!(parts[0], "");
        assert_eq!(parts[1], "7");
        assert_eq!(parts[2], "101");
        let b64 = base64::engine::general_purpose::STANDARD;
        assert_eq!(b64.decode(parts[3]).unwrap().len(), 12);
        assert_eq!(b64.decode(parts[4]).unwrap().len(), 64);
    }

    #[test]
    fn pbkdf2_sha512_matches_a_published_vector() {
        // PBKDF2-HMAC-SHA512, P="password", S="salt", c=1 (widely published vector).
        let out = pbkdf2_sha512(b"password", b"salt", 1);
        assert_eq!(
            hex::encode(out),
            "867f70cf1ade02cff3752599a3a53dc4af34c7a669815ae5d513554e1c8cf252\
             c02d470a285a0501bad999bfe943c08f050235d7d68b1da55e63f73b60a57fce"
        );
        let out = pbkdf2_sha512(b"password", b"salt", 2);
        assert_eq!(
            hex::encode(out),
            "e1d9c16aa681708a45f5c7c4e215ceb66e011a2e9f0040713f18aefdb866d53c\
             f76cab2868a39b9f7840edce4fef5a82be67335c77a6068e04112754f27ccf4e"
        );
    }

    #[test]
    fn passwords_are_long_and_random() {
        let a = random_password();
        let b = random_password();
        assert_eq!(a.len(), PASSWORD_LEN);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }
}
