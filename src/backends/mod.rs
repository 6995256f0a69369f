//! The platform's shared services, where a `Shared` tenant gets its own place:
//!
//! - [`postgres`]: a dedicated database and login role on the shared PostgreSQL
//!   (`shared.postgres` in the platform configuration);
//! - [`mosquitto`]: a dedicated client and role with a topic-prefix ACL on the shared
//!   Mosquitto, managed through its dynamic-security plugin (`shared.mosquitto`).
//!
//! The operator talks to them through [`SharedServices`] ([`platform`] holds the real pair);
//! [`memory`] is the in-memory stand-in its flow tests use. Names on the shared services never carry the tenant's name
//! where other tenants could list them (PostgreSQL's `pg_database` and `pg_roles` are
//! readable by every login): see [`database_name`].

#[cfg(any(test, feature = "test-support"))]
pub mod memory;
pub mod mosquitto;
pub mod platform;
pub mod postgres;

use std::future::Future;
use std::pin::Pin;

use sha2::{Digest, Sha256};

/// Prefix of a live tenant database and of its login role.
pub const DATABASE_PREFIX: &str = "silo_t_";
/// Prefix of a retired (deleted tenant's) database and role: `silo_r_<unix secs>_<hash>`.
pub const RETIRED_PREFIX: &str = "silo_r_";
/// Topic prefix of a tenant on the shared broker (followed by the tenant name and `/`).
pub const TOPIC_ROOT: &str = "tenants";
/// Topic root of master channels: `channels/<channel>/<tenant>/…`.
pub const CHANNEL_ROOT: &str = "channels";

pub type BackendFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, BackendError>> + Send + 'a>>;

/// Admin login for a shared service, read from the Secret named by
/// `shared.<service>.adminSecret` in the platform namespace (keys `username`, `password`;
/// PostgreSQL also `database`, the maintenance database to connect to, default `postgres`).
#[derive(Clone, PartialEq, Eq)]
pub struct AdminCredentials {
    pub username: String,
    pub password: String,
    pub database: Option<String>,
}

impl std::fmt::Debug for AdminCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminCredentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("database", &self.database)
            .finish()
    }
}

/// Which shared service an error or report is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    Postgres,
    Mosquitto,
}

impl std::fmt::Display for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Service::Postgres => "shared PostgreSQL",
            Service::Mosquitto => "shared Mosquitto",
        })
    }
}

/// Why a shared service could not be used; names the service and what was attempted.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// `shared.<service>.host` is empty: Shared tenants cannot be provisioned.
    #[error(
        "{service} is not configured (set shared.{key}.host and shared.{key}.adminSecret in the platform configuration)"
    )]
    NotConfigured { service: Service, key: &'static str },
    /// The admin credentials could not be read.
    #[error("{service}: admin credentials: {message}")]
    Credentials { service: Service, message: String },
    /// No connection (refused, timed out, authentication failed).
    #[error("{service} at {address}: {message}")]
    Connect {
        service: Service,
        address: String,
        message: String,
    },
    /// The server lacks a setting tenant isolation relies on (Silo does not change it, other
    /// users may share the server): names the setting and the statement that fixes it.
    #[error("{service} at {address}: refusing to provision tenants: {message}")]
    Unsafe {
        service: Service,
        address: String,
        message: String,
    },
    /// A statement or command failed.
    #[error("{service}: {action}: {message}")]
    Command {
        service: Service,
        action: String,
        message: String,
    },
}

impl BackendError {
    /// Short label for metrics and event reasons.
    pub fn label(&self) -> &'static str {
        match self {
            BackendError::NotConfigured { .. } => "shared_not_configured",
            BackendError::Credentials { .. } => "shared_credentials",
            BackendError::Connect { .. } => "shared_connect",
            BackendError::Unsafe { .. } => "shared_unsafe",
            BackendError::Command { .. } => "shared_command",
        }
    }
}

/// A tenant's database on the shared PostgreSQL, as the operator wants it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatabaseAccount {
    /// The tenant (for logs and messages only; never part of a name on the server).
    pub tenant: String,
    /// Database name, also the login role's name ([`database_name`]).
    pub database: String,
    /// The role's password (from the tenant's credential Secret).
    pub password: String,
    /// Set the password even when the role exists (the Secret was just (re)created).
    pub reset_password: bool,
    /// `false` while the tenant is suspended: the role cannot log in and its sessions are
    /// terminated; the data stays.
    pub login: bool,
}

/// A tenant's client on the shared Mosquitto, as the operator wants it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerAccount {
    pub tenant: String,
    /// The MQTT username (the tenant name: usernames are not visible to other clients).
    pub username: String,
    pub password: String,
    pub reset_password: bool,
    /// Name of the client's dynamic-security role ([`broker_role`]).
    pub role: String,
    /// Topic filters the client may publish to, subscribe to and receive from, each ending
    /// in `/#` ([`topic_filters`]). Nothing else is allowed.
    pub topics: Vec<String>,
    /// `false` while suspended: the client is disabled (and disconnected).
    pub enabled: bool,
}

/// What an `ensure_*` call found or changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ensured {
    /// Human-readable changes made (empty in a steady state).
    pub changes: Vec<String>,
}

impl Ensured {
    pub fn changed(&self) -> bool {
        !self.changes.is_empty()
    }
}

/// What [`SharedServices::remove_broker_tenant`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BrokerRemoval {
    /// The client or its role existed and was deleted.
    pub removed: bool,
    /// Retained messages cleared under the tenant's topic trees.
    pub retained_cleared: usize,
}

/// A retired database dropped by [`SharedServices::purge_retired_databases`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Purged {
    pub database: String,
    pub retired_at_unix: i64,
}

/// The shared services as the operator uses them. Every call is idempotent.
pub trait SharedServices: Send + Sync {
    /// Create the tenant's role and database if missing (database owned by the role,
    /// `CONNECT` revoked from `PUBLIC`), apply `login` and, when asked, the password.
    fn ensure_database<'a>(&'a self, account: &'a DatabaseAccount) -> BackendFuture<'a, Ensured>;
    /// The tenant is deleted: revoke login, end its sessions and rename database and role to
    /// `silo_r_<unix secs>_<hash>` so the data is kept for `retentionDays` and a tenant
    /// recreated with the same name starts empty. Missing database = nothing to do.
    fn retire_database<'a>(&'a self, database: &'a str, now_unix: i64) -> BackendFuture<'a, bool>;
    /// Drop retired databases (and their roles) retired before `before_unix`.
    fn purge_retired_databases(&self, before_unix: i64) -> BackendFuture<'_, Vec<Purged>>;
    /// Create or correct the tenant's broker client and role (ACLs exactly `topics`), apply
    /// `enabled` and, when asked, the password.
    fn ensure_broker_client<'a>(&'a self, account: &'a BrokerAccount)
    -> BackendFuture<'a, Ensured>;
    /// The tenant leaves the shared broker (deleted, or switched to Siloed): delete its client
    /// and role (the broker closes its connections), then clear every retained message under
    /// its topic trees ([`retained_filters`]), so a tenant created again under the same name
    /// finds none. Idempotent: a missing client or role is nothing to delete, and the retained
    /// messages are cleared on every call (a retry after a failure halfway finishes the job).
    fn remove_broker_tenant<'a>(&'a self, tenant: &'a str) -> BackendFuture<'a, BrokerRemoval>;
    /// Delete one broker client and its role (a Siloed tenant's bridge identity); `false`
    /// when neither existed.
    fn remove_broker_client<'a>(
        &'a self,
        username: &'a str,
        role: &'a str,
    ) -> BackendFuture<'a, bool>;
    /// `host:port` clients of the tenant connect to (for status and Secrets).
    fn database_endpoint(&self) -> Option<(String, u16)>;
    fn broker_endpoint(&self) -> Option<(String, u16)>;
    /// Host, port and admin login of the shared broker, for the operator's broker observer
    /// (`crate::operator::broker_observer`); `None` when no real broker is configured.
    fn broker_login(&self) -> Option<(String, u16, AdminCredentials)> {
        None
    }
}

/// No shared service configured (`shared.*.host` empty): Shared tenants are reported as not
/// provisioned, and leaving has nothing to undo.
#[derive(Clone, Copy, Debug, Default)]
pub struct Unconfigured;

pub fn not_configured(service: Service) -> BackendError {
    BackendError::NotConfigured {
        service,
        key: match service {
            Service::Postgres => "postgres",
            Service::Mosquitto => "mosquitto",
        },
    }
}

impl SharedServices for Unconfigured {
    fn ensure_database<'a>(&'a self, _: &'a DatabaseAccount) -> BackendFuture<'a, Ensured> {
        Box::pin(async { Err(not_configured(Service::Postgres)) })
    }
    fn retire_database<'a>(&'a self, _: &'a str, _: i64) -> BackendFuture<'a, bool> {
        Box::pin(async { Err(not_configured(Service::Postgres)) })
    }
    fn purge_retired_databases(&self, _: i64) -> BackendFuture<'_, Vec<Purged>> {
        Box::pin(async { Err(not_configured(Service::Postgres)) })
    }
    fn ensure_broker_client<'a>(&'a self, _: &'a BrokerAccount) -> BackendFuture<'a, Ensured> {
        Box::pin(async { Err(not_configured(Service::Mosquitto)) })
    }
    fn remove_broker_tenant<'a>(&'a self, _: &'a str) -> BackendFuture<'a, BrokerRemoval> {
        Box::pin(async { Err(not_configured(Service::Mosquitto)) })
    }
    fn remove_broker_client<'a>(&'a self, _: &'a str, _: &'a str) -> BackendFuture<'a, bool> {
        Box::pin(async { Err(not_configured(Service::Mosquitto)) })
    }
    fn database_endpoint(&self) -> Option<(String, u16)> {
        None
    }
    fn broker_endpoint(&self) -> Option<(String, u16)> {
        None
    }
}

/// Hash part of a tenant's names on the shared services: 20 hex digits of
/// SHA-256("silo-tenant:" + name). Stable across restores (unlike the object's uid).
fn name_hash(tenant: &str) -> String {
    let digest = Sha256::digest(format!("silo-tenant:{tenant}").as_bytes());
    hex::encode(&digest[..10])
}

/// The tenant's database and role name on the shared PostgreSQL: `silo_t_<hash>` (27
/// characters, a plain lower-case identifier). Other tenants can list database names, so the
/// name does not reveal the tenant.
pub fn database_name(tenant: &str) -> String {
    format!("{DATABASE_PREFIX}{}", name_hash(tenant))
}

/// The retired name of `database` (`silo_t_<hash>` → `silo_r_<unix>_<hash>`).
pub fn retired_name(database: &str, now_unix: i64) -> String {
    let hash = database.strip_prefix(DATABASE_PREFIX).unwrap_or(database);
    format!("{RETIRED_PREFIX}{now_unix}_{hash}")
}

/// Parse a retired name back to its retirement time.
pub fn retired_at(name: &str) -> Option<i64> {
    let rest = name.strip_prefix(RETIRED_PREFIX)?;
    let (secs, hash) = rest.split_once('_')?;
    if hash.is_empty() || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    secs.parse().ok()
}

/// The dynamic-security role of a tenant's broker client.
pub fn broker_role(tenant: &str) -> String {
    format!("silo-tenant-{tenant}")
}

/// The tenant's own topic prefix on the shared broker: `tenants/<tenant>/`.
pub fn topic_prefix(tenant: &str) -> String {
    format!("{TOPIC_ROOT}/{tenant}/")
}

/// The topic filters a tenant's client may use: its own prefix and, per master channel it
/// uses, the channel's sub-tree for this tenant (`channels/<channel>/<tenant>/#`), so a
/// channel's traffic is delivered to each tenant under its own prefix only.
pub fn topic_filters(tenant: &str, channels: &[String]) -> Vec<String> {
    let mut out = vec![format!("{}#", topic_prefix(tenant))];
    let mut chans: Vec<&String> = channels.iter().collect();
    chans.sort();
    chans.dedup();
    out.extend(
        chans
            .into_iter()
            .map(|c| format!("{CHANNEL_ROOT}/{c}/{tenant}/#")),
    );
    out
}

/// Every topic tree a tenant can have left retained messages in on the shared broker: its own
/// prefix and its part of every master channel, also channels it no longer uses
/// (`tenants/<tenant>/#`, `channels/+/<tenant>/#`; the third level of a channel topic is the
/// tenant, SPEC "Channel"). Tenant names are DNS labels, so no other tenant's topics match.
pub fn retained_filters(tenant: &str) -> Vec<String> {
    vec![
        format!("{}#", topic_prefix(tenant)),
        format!("{CHANNEL_ROOT}/+/{tenant}/#"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_are_opaque_stable_identifiers() {
        let a = database_name("acme-dealer");
        assert_eq!(a, database_name("acme-dealer"));
        assert_ne!(a, database_name("acme-dealer2"));
        assert!(a.starts_with("silo_t_"));
        assert_eq!(a.len(), 27);
        assert!(!a.contains("acme"));
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        );
    }

    #[test]
    fn retired_names_round_trip_their_time() {
        let db = database_name("x");
        let r = retired_name(&db, 1_700_000_000);
        assert!(r.len() <= 63, "{r}");
        assert_eq!(retired_at(&r), Some(1_700_000_000));
        assert_eq!(retired_at(&db), None);
        assert_eq!(retired_at("silo_r_abc_12"), None);
        assert_eq!(retired_at("silo_r_12_"), None);
        assert_eq!(retired_at("silo_r_12_zz"), None);
    }

    #[test]
    fn topic_filters_cover_own_prefix_and_used_channels_only() {
        let f = topic_filters(
            "d1",
            &[
                "teltonika".to_string(),
                "abc".to_string(),
                "abc".to_string(),
            ],
        );
        assert_eq!(
            f,
            vec![
                "tenants/d1/#".to_string(),
                "channels/abc/d1/#".to_string(),
                "channels/teltonika/d1/#".to_string()
            ]
        );
    }
}
