//! The credential Secrets a Siloed tenant's workloads mount, created by the operator:
//!
//! - `silo-postgres-credentials` (`username`, `password`, `database`) in the tenant namespace;
//! - `silo-mosquitto-credentials` (`passwd`: a Mosquitto 2 password file line with a `$7$`
//!   PBKDF2-SHA512 hash; `username` and `password` for the tenant's applications);
//! - `silo-mosquitto-tls` (`ca.crt`, `client-ca.crt`, `tls.crt`, `tls.key`) from the tenant CA.
//!
//! The CAs they are issued from are kept by [`crate::pki::store`] (platform root and tenant CA
//! Secrets in the platform namespace, the tenant CA key sealed with the tenant's key).
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

use base64::Engine as _;
use rand::{Rng, RngCore};
use serde_json::{Value, json};
use sha2::Sha512;
use time::OffsetDateTime;

use crate::config::PlatformConfig;
use crate::pki::store::{platform_ca, tenant_ca};
use crate::pki::{
    PkiError, PkiValidity, SECRET_CERT, SECRET_CLIENT_CA, TenantNames, TenantPki, cert_validity,
    needs_renewal, renew_at,
};
use crate::render::meta::{base_labels, owner_refs};
use crate::render::{broker, database};
use crate::types::Tenant;

use crate::backends::SharedServices;

use crate::operator::cluster::{Cluster, ClusterError, FailureKind, ObjectKey, SecretData};
use crate::operator::key_service::KeyService;
use crate::operator::reconcile::secret_checks::{Check, SecretChecks};
use crate::operator::reconcile::shared;

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

pub(crate) fn data(pairs: &[(&str, &str)]) -> SecretData {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub(crate) fn cluster_err(key: &ObjectKey) -> impl Fn(ClusterError) -> SecretError + '_ {
    move |source| SecretError::Cluster {
        secret: key.path(),
        source,
    }
}

pub(crate) fn pki_err(key: &ObjectKey) -> impl Fn(PkiError) -> SecretError + '_ {
    move |source| SecretError::Pki {
        secret: key.path(),
        source,
    }
}

pub(crate) fn require<'a>(
    key: &ObjectKey,
    d: &'a SecretData,
    k: &str,
) -> Result<&'a str, SecretError> {
    d.get(k).map(String::as_str).ok_or(SecretError::MissingKey {
        secret: key.path(),
        key: k.to_string(),
    })
}

pub(crate) async fn get<C: Cluster>(
    cluster: &C,
    key: &ObjectKey,
) -> Result<Option<SecretData>, SecretError> {
    cluster
        .get_secret(key.namespace.as_deref().unwrap_or_default(), &key.name)
        .await
        .map_err(cluster_err(key))
}

/// Create the Secret unless it exists (`existing`, as just read; a concurrent creation counts
/// as existing). Returns the stored data and whether this call created it.
pub(crate) async fn create_if_missing<C: Cluster>(
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
    let database = ensure_password_secret(
        cluster,
        &cx,
        tenant,
        &ns,
        &mut out.left_shared,
        database::DATABASE_SECRET,
        database_data,
        &["username", "password", "database"],
    );
    match database.await {
        Ok(Some(w)) => out.written.push(w),
        Ok(None) => {}
        Err(e) => out.database = Some(e),
    }
    let broker = async {
        let mut w = Vec::new();
        let name = broker::BROKER_CREDENTIALS_SECRET;
        let left = &mut out.left_shared;
        let credentials = ensure_password_secret(
            cluster,
            &cx,
            tenant,
            &ns,
            left,
            name,
            broker_data,
            &["passwd"],
        );
        w.extend(credentials.await?);
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

/// A credential Secret with a generated password: created once (`fill` turns the new password
/// into the Secret's data), never overwritten; `required` are the keys it must hold.
#[allow(clippy::too_many_arguments)]
async fn ensure_password_secret<C: Cluster>(
    cluster: &C,
    cx: &CredentialInputs<'_>,
    tenant: &Tenant,
    ns: &str,
    left: &mut Vec<String>,
    name: &str,
    fill: impl FnOnce(&str) -> SecretData,
    required: &[&str],
) -> Result<Option<String>, SecretError> {
    let key = ObjectKey::new("Secret", Some(ns), name);
    let check = cx.checks.check(cluster, &key, "", cx.now).await;
    if check == Check::Skip {
        return Ok(None);
    }
    let existing = match check {
        Check::Absent => None,
        _ => get_siloed(cluster, cx.services, tenant, &key, left).await?,
    };
    let (d, created) = create_if_missing(cluster, &key, existing, || {
        let d = fill(&random_password());
        Ok((secret_manifest(tenant, ns, &key.name, &d), d))
    })
    .await?;
    for k in required {
        require(&key, &d, k)?;
    }
    if created {
        cx.checks.created(cluster, &key, "", cx.now, i64::MAX).await;
    } else {
        cx.checks.record(&key, &check, i64::MAX);
    }
    Ok(created.then(|| key.path()))
}

/// The data of a new database credential Secret.
fn database_data(password: &str) -> SecretData {
    data(&[
        ("username", DATABASE_USER),
        ("password", password),
        ("database", DATABASE_DB),
    ])
}

/// The data of a new broker credential Secret (the password file line and the plain pair).
fn broker_data(password: &str) -> SecretData {
    let line = mosquitto_password_line(MQTT_USER, password);
    data(&[
        ("passwd", &line),
        ("username", MQTT_USER),
        ("password", password),
    ])
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
