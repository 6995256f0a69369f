//! A Shared tenant's place on the platform's shared PostgreSQL and Mosquitto
//! ([`crate::backends`]), and the credential Secrets in its namespace that point there:
//!
//! - `silo-postgres-credentials`: `host`, `port`, `database`, `username`, `password`;
//! - `silo-mosquitto-credentials`: `host`, `port`, `username`, `password`, `topicPrefix`.
//!
//! The Secrets keep the names a Siloed tenant's Secrets have, so applications read one place
//! whatever the isolation. A password is generated once, when the Secret is created; the
//! backend then sets it on the server (`reset_password`). A Secret of the other shape (the
//! tenant switched isolation) is replaced, and a switch back to Siloed retires the shared
//! database (kept for `retentionDays`) and removes the broker client
//! ([`leave_shared`]).

use serde_json::Value;

use crate::backends::platform::PlatformServices;
use crate::backends::{
    self, AdminCredentials, BackendError, BrokerAccount, DatabaseAccount, Ensured, SharedServices,
};
use crate::config::PlatformConfig;
use crate::render::{broker, database};
use crate::types::Tenant;

use crate::operator::cluster::{Cluster, ClusterError, FailureKind, ObjectKey, SecretData};
use crate::operator::reconcile::secret_checks::{Check, SecretChecks};
use crate::operator::reconcile::secrets::{random_password, secret_manifest};
use sha2::Digest;

/// Key present only in the Shared shape of the credential Secrets.
pub const HOST_KEY: &str = "host";

/// What happened to one shared service for the tenant.
#[derive(Debug)]
pub struct Part {
    /// `host:port/…` clients use, when known.
    pub endpoint: Option<String>,
    pub result: Result<Ensured, PartError>,
}

/// Why a part is not provisioned.
#[derive(Debug, thiserror::Error)]
pub enum PartError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("Secret {secret}: {source}")]
    Secret {
        secret: String,
        #[source]
        source: ClusterError,
    },
}

impl PartError {
    /// Condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            PartError::Backend(BackendError::NotConfigured { .. }) => "SharedNotConfigured",
            PartError::Backend(BackendError::Unsafe { .. }) => "SharedUnsafe",
            PartError::Backend(_) => "SharedUnavailable",
            PartError::Secret { .. } => "SecretMissing",
        }
    }
}

/// What [`ensure`] did.
#[derive(Debug)]
pub struct SharedOutcome {
    /// Secrets created or replaced (`namespace/name`).
    pub written: Vec<String>,
    pub database: Part,
    pub broker: Part,
}

fn secret_err(key: &ObjectKey) -> impl Fn(ClusterError) -> PartError + '_ {
    move |source| PartError::Secret {
        secret: format!(
            "{}/{}",
            key.namespace.as_deref().unwrap_or_default(),
            key.name
        ),
        source,
    }
}

fn manifest_from(tenant: &Tenant, key: &ObjectKey, d: &SecretData) -> Value {
    secret_manifest(
        tenant,
        key.namespace.as_deref().unwrap_or_default(),
        &key.name,
        d,
    )
}

/// Make the Secret hold exactly the `expected` non-password keys plus a password: kept when it
/// already does, otherwise (missing, or of the other shape) written with a new password.
/// Returns the password and whether it is new.
async fn credentials<C: Cluster>(
    cluster: &C,
    tenant: &Tenant,
    key: &ObjectKey,
    expected: &[(&str, String)],
    written: &mut Vec<String>,
) -> Result<(String, bool), PartError> {
    let ns = key.namespace.as_deref().unwrap_or_default();
    let existing = cluster
        .get_secret(ns, &key.name)
        .await
        .map_err(secret_err(key))?;
    if let Some(d) = &existing
        && let Some(pw) = d.get("password").filter(|p| !p.is_empty())
        && expected
            .iter()
            .all(|(k, v)| d.get(*k).is_some_and(|x| x == v))
    {
        return Ok((pw.clone(), false));
    }
    let password = random_password();
    let mut d: SecretData = expected
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    d.insert("password".to_string(), password.clone());
    if existing.is_some() {
        // Another shape (isolation switched) or another server: replace it whole, so no key
        // of the old shape lingers.
        cluster.delete(key).await.map_err(secret_err(key))?;
        tracing::info!(secret = %key, "replaced: credentials for the shared service");
    }
    match cluster
        .create_secret(key, &manifest_from(tenant, key, &d))
        .await
    {
        Ok(()) => {}
        Err(e) if e.kind == FailureKind::Conflict => {
            // A concurrent writer created it: use theirs if it fits.
            let d = cluster
                .get_secret(ns, &key.name)
                .await
                .map_err(secret_err(key))?
                .unwrap_or_default();
            return match d.get("password") {
                Some(pw) => Ok((pw.clone(), true)),
                None => Err(secret_err(key)(e)),
            };
        }
        Err(e) => return Err(secret_err(key)(e)),
    }
    written.push(format!("{ns}/{}", key.name));
    Ok((password, true))
}

/// Ensure the Shared tenant's database and broker client and their Secrets. `suspended`
/// disables the login and the client (data kept).
pub async fn ensure<C: Cluster>(
    cluster: &C,
    config: &PlatformConfig,
    services: &dyn SharedServices,
    tenant: &Tenant,
    suspended: bool,
) -> SharedOutcome {
    let ns = config.namespace_for(tenant.name());
    let name = tenant.name();
    let mut written = Vec::new();

    let db_name = backends::database_name(name);
    let database = match services.database_endpoint() {
        None => Part {
            endpoint: None,
            result: Err(backends::not_configured(backends::Service::Postgres).into()),
        },
        Some((host, port)) => {
            let key = ObjectKey::new("Secret", Some(&ns), database::DATABASE_SECRET);
            let expected = [
                (HOST_KEY, host.clone()),
                ("port", port.to_string()),
                ("database", db_name.clone()),
                ("username", db_name.clone()),
            ];
            let result = async {
                let (password, new) =
                    credentials(cluster, tenant, &key, &expected, &mut written).await?;
                let account = DatabaseAccount {
                    tenant: name.to_string(),
                    database: db_name.clone(),
                    password,
                    reset_password: new,
                    login: !suspended,
                };
                Ok(services.ensure_database(&account).await?)
            }
            .await;
            Part {
                endpoint: Some(format!("{host}:{port}/{db_name}")),
                result,
            }
        }
    };

    let broker = match services.broker_endpoint() {
        None => Part {
            endpoint: None,
            result: Err(backends::not_configured(backends::Service::Mosquitto).into()),
        },
        Some((host, port)) => {
            let key = ObjectKey::new("Secret", Some(&ns), broker::BROKER_CREDENTIALS_SECRET);
            let expected = [
                (HOST_KEY, host.clone()),
                ("port", port.to_string()),
                ("username", name.to_string()),
                ("topicPrefix", backends::topic_prefix(name)),
            ];
            let result = async {
                let (password, new) =
                    credentials(cluster, tenant, &key, &expected, &mut written).await?;
                let account = BrokerAccount {
                    tenant: name.to_string(),
                    username: name.to_string(),
                    password,
                    reset_password: new,
                    role: backends::broker_role(name),
                    topics: backends::topic_filters(name, &tenant.spec.channels),
                    enabled: !suspended,
                };
                Ok(services.ensure_broker_client(&account).await?)
            }
            .await;
            if result.is_ok() && !written.is_empty() {
                // Coming from Siloed: the dedicated broker's TLS Secret has no use any more.
                let tls = ObjectKey::new("Secret", Some(&ns), broker::BROKER_TLS_SECRET);
                if let Err(e) = cluster.delete(&tls).await {
                    tracing::warn!(error = %e, "could not delete the siloed broker's TLS Secret");
                }
            }
            Part {
                endpoint: Some(format!("{host}:{port}")),
                result,
            }
        }
    };
    SharedOutcome {
        written,
        database,
        broker,
    }
}

/// A Siloed tenant's bridge to the master-channel endpoint (`render::broker`, "Master
/// channels"): the Secret [`broker::BROKER_BRIDGE_SECRET`] (`password`, and
/// [`broker::BRIDGE_FILE`] = the rendered bridge section with it) and the bridge identity
/// [`broker::bridge_username`] on the shared Mosquitto, allowed only
/// [`broker::bridge_topics`], disabled while the tenant is suspended. Without channels or
/// without a channel endpoint, both are removed. The password is generated once and kept;
/// the Secret is rewritten when the rendered section changes (channels or endpoint).
/// Returns what changed.
///
/// A steady state reads nothing: with the Secret watch synced, an absent Secret that should be
/// absent is not read, and a present one is read again only when it changed or what it must
/// match (channels, endpoint, suspension) changed ([`SecretChecks`]).
pub async fn ensure_bridge<C: Cluster>(
    cluster: &C,
    config: &PlatformConfig,
    services: &dyn SharedServices,
    checks: &SecretChecks,
    tenant: &Tenant,
    suspended: bool,
) -> Result<Vec<String>, PartError> {
    let name = tenant.name();
    let ns = config.namespace_for(name);
    let key = ObjectKey::new("Secret", Some(&ns), broker::BROKER_BRIDGE_SECRET);
    let user = broker::bridge_username(name);
    let wanted = broker::has_bridge_for(config, tenant) && services.broker_endpoint().is_some();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let context = format!(
        "{}|enabled={}",
        hex::encode(sha2::Sha256::digest(
            broker::bridge_conf(config, tenant, "").as_bytes()
        )),
        !suspended
    );
    let check = if wanted {
        checks.check(cluster, &key, &context, now).await
    } else {
        Check::Read(None)
    };
    if check == Check::Skip {
        return Ok(Vec::new());
    }
    if !wanted && matches!(cluster.secret_version(&ns, &key.name).await, Some(None)) {
        // Known absent, and so is the identity made with it.
        return Ok(Vec::new());
    }
    let existing = cluster
        .get_secret(&ns, &key.name)
        .await
        .map_err(secret_err(&key))?;
    let mut changes = Vec::new();
    if !wanted {
        if existing.is_some() {
            cluster.delete(&key).await.map_err(secret_err(&key))?;
            changes.push(format!("deleted Secret {ns}/{}", key.name));
        }
        match services.remove_broker_client(&user, &user).await {
            Ok(true) => changes.push(format!("removed bridge identity {user}")),
            Ok(false) | Err(BackendError::NotConfigured { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        return Ok(changes);
    }
    let old_pw = existing
        .as_ref()
        .and_then(|d| d.get("password"))
        .filter(|p| !p.is_empty())
        .cloned();
    let password = old_pw.clone().unwrap_or_else(random_password);
    let file = broker::bridge_conf(config, tenant, &password);
    let current = existing
        .as_ref()
        .is_some_and(|d| d.get(broker::BRIDGE_FILE) == Some(&file) && old_pw.is_some());
    if !current {
        let d: SecretData = [
            ("password".to_string(), password.clone()),
            (broker::BRIDGE_FILE.to_string(), file),
        ]
        .into_iter()
        .collect();
        if existing.is_some() {
            cluster.delete(&key).await.map_err(secret_err(&key))?;
        }
        cluster
            .create_secret(&key, &manifest_from(tenant, &key, &d))
            .await
            .map_err(secret_err(&key))?;
        changes.push(format!("wrote Secret {ns}/{}", key.name));
    }
    let account = BrokerAccount {
        tenant: name.to_string(),
        username: user.clone(),
        password,
        reset_password: old_pw.is_none(),
        role: user,
        topics: broker::bridge_topics(name, &tenant.spec.channels),
        enabled: !suspended,
    };
    changes.extend(services.ensure_broker_client(&account).await?.changes);
    if current {
        checks.record(&key, &check, i64::MAX);
    }
    Ok(changes)
}

/// Whether a credential Secret is of the Shared shape.
pub fn is_shared_shape(d: &SecretData) -> bool {
    d.contains_key(HOST_KEY)
}

/// The tenant is leaving the shared services (deleted, or switched to Siloed): retire its
/// database (renamed, login revoked, kept for `retentionDays`), remove its broker client and
/// role and clear its retained messages ([`SharedServices::remove_broker_tenant`]). Runs in
/// the finalizer-guarded deletion step, so a Tenant of the same name cannot exist before it
/// succeeded; every part is idempotent and an error leaves the finalizer for a retry. A
/// service that is not configured has nothing of the tenant. Returns what was done.
pub async fn leave_shared(
    services: &dyn SharedServices,
    tenant: &str,
    now_unix: i64,
) -> Result<Vec<String>, BackendError> {
    let mut done = Vec::new();
    let db = backends::database_name(tenant);
    match services.retire_database(&db, now_unix).await {
        Ok(true) => done.push(format!(
            "shared database {db} retired as {}",
            backends::retired_name(&db, now_unix)
        )),
        Ok(false) | Err(BackendError::NotConfigured { .. }) => {}
        Err(e) => return Err(e),
    }
    match services.remove_broker_tenant(tenant).await {
        Ok(r) => {
            if r.removed {
                done.push(format!("shared broker client {tenant} removed"));
            }
            if r.retained_cleared > 0 {
                done.push(format!(
                    "{} retained message(s) cleared under {}",
                    r.retained_cleared,
                    backends::retained_filters(tenant).join(" and ")
                ));
            }
        }
        Err(BackendError::NotConfigured { .. }) => {}
        Err(e) => return Err(e),
    }
    Ok(done)
}

/// Admin credentials of a shared service from its Secret's data (`username`, `password`,
/// optional `database`).
pub fn admin_credentials(
    service: backends::Service,
    secret: &str,
    data: Option<&SecretData>,
) -> Result<AdminCredentials, BackendError> {
    let fail = |message: String| BackendError::Credentials { service, message };
    let d = data.ok_or_else(|| fail(format!("Secret {secret} not found")))?;
    let get = |k: &str| {
        d.get(k)
            .filter(|v| !v.is_empty())
            .cloned()
            .ok_or_else(|| fail(format!("Secret {secret} has no key {k:?}")))
    };
    Ok(AdminCredentials {
        username: get("username")?,
        password: get("password")?,
        database: d.get("database").filter(|v| !v.is_empty()).cloned(),
    })
}

/// The platform's shared services as configured (`shared.postgres`, `shared.mosquitto`), with
/// the admin credentials read from their Secrets in the platform namespace. A service with an
/// empty host is left unconfigured; a configured one without usable credentials is an error
/// naming the field or Secret (the operator does not start).
pub async fn services_from_config<C: Cluster>(
    cluster: &C,
    config: &PlatformConfig,
) -> Result<PlatformServices, BackendError> {
    let mut out = PlatformServices::new();
    for (service, key, svc) in [
        (
            backends::Service::Postgres,
            "postgres",
            &config.shared.postgres,
        ),
        (
            backends::Service::Mosquitto,
            "mosquitto",
            &config.shared.mosquitto,
        ),
    ] {
        if svc.host.is_empty() {
            continue;
        }
        if svc.admin_secret.is_empty() {
            return Err(BackendError::Credentials {
                service,
                message: format!(
                    "shared.{key}.host is set but shared.{key}.adminSecret is empty (name a Secret in {} with username and password)",
                    config.platform_namespace
                ),
            });
        }
        let secret = format!("{}/{}", config.platform_namespace, svc.admin_secret);
        let data = cluster
            .get_secret(&config.platform_namespace, &svc.admin_secret)
            .await
            .map_err(|e| BackendError::Credentials {
                service,
                message: format!("reading Secret {secret}: {e}"),
            })?;
        let admin = admin_credentials(service, &secret, data.as_ref())?;
        out = match service {
            backends::Service::Postgres => out.with_postgres(&svc.host, svc.port, admin),
            backends::Service::Mosquitto => out.with_mosquitto(&svc.host, svc.port, admin),
        };
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::Service;

    #[test]
    fn admin_credentials_name_what_is_missing() {
        let e = admin_credentials(Service::Postgres, "silo-system/pg-admin", None)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "shared PostgreSQL: admin credentials: Secret silo-system/pg-admin not found"
        );
        let d = SecretData::from([("username".to_string(), "postgres".to_string())]);
        let e = admin_credentials(Service::Mosquitto, "silo-system/mq", Some(&d))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "shared Mosquitto: admin credentials: Secret silo-system/mq has no key \"password\""
        );
        let mut d = d;
        d.insert("password".into(), "pw".into());
        let a = admin_credentials(Service::Postgres, "x", Some(&d)).unwrap();
        assert_eq!(
            (a.username.as_str(), a.password.as_str()),
            ("postgres", "pw")
        );
        assert_eq!(a.database, None);
    }

    #[test]
    fn condition_reasons_tell_unsafe_servers_from_unavailable_ones() {
        let unsafe_pg = PartError::Backend(BackendError::Unsafe {
            service: Service::Postgres,
            address: "pg:5432".into(),
            message: "PUBLIC may CREATE".into(),
        });
        assert_eq!(unsafe_pg.reason(), "SharedUnsafe");
        let down = PartError::Backend(BackendError::Connect {
            service: Service::Postgres,
            address: "pg:5432".into(),
            message: "refused".into(),
        });
        assert_eq!(down.reason(), "SharedUnavailable");
    }

    #[tokio::test]
    async fn services_from_config_reads_the_admin_secrets() {
        let cluster = crate::operator::cluster::memory::MemoryCluster::new();
        let mut cfg = PlatformConfig::default();
        // Nothing configured: nothing to read, no endpoints.
        let s = services_from_config(&cluster, &cfg).await.unwrap();
        assert!(s.database_endpoint().is_none() && s.broker_endpoint().is_none());
        // A host without a Secret name is refused at start-up.
        cfg.shared.postgres.host = "pg.shared".into();
        let e = services_from_config(&cluster, &cfg)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("shared.postgres.adminSecret is empty"), "{e}");
        cfg.shared.postgres.admin_secret = "pg-admin".into();
        let e = services_from_config(&cluster, &cfg)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("Secret silo-system/pg-admin not found"), "{e}");
        let key = ObjectKey::new("Secret", Some("silo-system"), "pg-admin");
        let manifest = serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "pg-admin", "namespace": "silo-system"},
            "data": {"username": "cG9zdGdyZXM=", "password": "cHc="},
        });
        cluster.create_secret(&key, &manifest).await.unwrap();
        let s = services_from_config(&cluster, &cfg).await.unwrap();
        assert_eq!(s.database_endpoint(), Some(("pg.shared".to_string(), 5432)));
        assert!(s.broker_endpoint().is_none());
    }
}
