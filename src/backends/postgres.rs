//! A Shared tenant's database and login role on the platform's shared PostgreSQL.
//!
//! [`PostgresBackend`] holds one admin connection (tokio-postgres, plain TCP: the server is
//! in-cluster), opened on first use, reopened when the server closed it, and serialises the
//! calls on it. Every call is idempotent and reads before it writes: a steady state makes no
//! write and reports no change.
//!
//! Per tenant there is one database and one role, both named [`database_name`]
//! (`silo_t_<hex>`); the role owns the database. What the calls guarantee:
//!
//! - the role is `NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS` and
//!   member of no other role (drift is corrected and reported), `LOGIN` exactly when the
//!   tenant is not suspended; suspending terminates the role's open sessions. It keeps
//!   `INHERIT`: on PostgreSQL 15+ the `public` schema belongs to `pg_database_owner`, an
//!   implicit membership of the database owner that only an inheriting role can use
//!   (with `NOINHERIT` the tenant could not create a table in `public`). `NOINHERIT` would
//!   not contain a stray membership anyway (a member may still `SET ROLE`); removing every
//!   membership on each call does;
//! - the database grants nothing to `PUBLIC` or any role but its owner (PostgreSQL grants
//!   `CONNECT` and `TEMP` to `PUBLIC` by default): other tenants cannot even connect;
//! - names are checked before they reach SQL (`silo_t_` / `silo_r_<secs>_` followed by
//!   lower-case hex, at most 63 bytes) and quoted as identifiers all the same; a password
//!   never reaches SQL as text when it is ASCII: the role gets a SCRAM-SHA-256 verifier
//!   computed here (so the clear password is not in the server's statement log either);
//!   other passwords go in as an escaped literal (`E'…'` with `'` and `\` doubled, safe
//!   under either `standard_conforming_strings`). Empty passwords and NUL bytes are refused.
//!
//! Tenant databases are created from `template0`, so nothing a login planted in `template1`
//! (which every login may connect to) is copied into them. The backend refuses to provision
//! ([`BackendError::Unsafe`]) while PUBLIC may create in a schema of the maintenance database
//! it connects to (PostgreSQL's default for schema `public` before version 15): every tenant
//! login can connect there, so it would be a shared place to plant objects.
//!
//! Retiring renames database and role to [`retired_name`] (after `NOLOGIN` and ending the
//! sessions) so a tenant recreated under the same name starts empty; purging drops retired
//! databases and roles older than the retention.
//!
//! The admin role needs: `CREATEROLE`, `CREATEDB`, membership in the tenant roles it
//! creates (automatic for their creator on PostgreSQL 16+) and `pg_signal_backend` to end
//! sessions, or simply `SUPERUSER`. Correcting a role that was made superuser or given
//! replication/bypassrls needs a superuser admin.
//!
//! Not done here, on purpose: PostgreSQL also grants `CONNECT` (and `TEMP`) on the
//! maintenance databases (`postgres`, `template1`) to `PUBLIC`, so a tenant role can open a
//! session there. It cannot create anything in the maintenance database (checked, see above)
//! and sees only the catalogs every login sees (database and role names, which is
//! why those are opaque), but it can create temporary tables. Revoking `PUBLIC`'s `CONNECT`
//! there would break other users of a shared server, so it is the platform administrator's
//! call: `REVOKE CONNECT, TEMP ON DATABASE postgres, template1 FROM PUBLIC` (and grant
//! `CONNECT` back to the roles that need it) closes it. Per-role connection limits are not
//! set either.

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha2::{Digest, Sha256};
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config, NoTls};

use super::{
    AdminCredentials, BackendError, DATABASE_PREFIX, DatabaseAccount, Ensured, Purged,
    RETIRED_PREFIX, Service, retired_at, retired_name,
};

/// Limit for opening the admin connection (TCP connect, startup and authentication).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long ending a role's sessions may take before the call fails.
const SESSION_END_TIMEOUT: Duration = Duration::from_secs(5);
/// Maintenance database the admin connects to when the Secret names none.
const DEFAULT_MAINTENANCE_DATABASE: &str = "postgres";
/// PostgreSQL's identifier length limit (NAMEDATALEN - 1).
const MAX_IDENTIFIER: usize = 63;
/// SCRAM-SHA-256 iteration count (PostgreSQL's default).
const SCRAM_ITERATIONS: u32 = 4096;

/// The shared PostgreSQL, reached with the platform's admin login.
pub struct PostgresBackend {
    host: String,
    port: u16,
    admin: AdminCredentials,
    client: Mutex<Option<Client>>,
}

impl std::fmt::Debug for PostgresBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresBackend")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("admin", &self.admin)
            .finish_non_exhaustive()
    }
}

/// The role's attributes as read from `pg_roles`.
struct RoleState {
    can_login: bool,
    /// Any of superuser, createdb, createrole, replication, bypassrls, or not inherit.
    privileged: bool,
    /// Roles it is a member of.
    member_of: Vec<String>,
}

/// The database as read from `pg_database`.
struct DatabaseState {
    owner: String,
    /// Grantees other than the owner in its ACL (`None` = `PUBLIC`).
    other_grantees: Vec<Option<String>>,
}

impl PostgresBackend {
    pub fn new(host: impl Into<String>, port: u16, admin: AdminCredentials) -> Self {
        PostgresBackend {
            host: host.into(),
            port,
            admin,
            client: Mutex::new(None),
        }
    }

    /// `host:port` of the server, as named in errors.
    fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    fn connect_error(&self, message: String) -> BackendError {
        BackendError::Connect {
            service: Service::Postgres,
            address: self.address(),
            message,
        }
    }

    /// Open the admin connection and drive it on a task of its own.
    async fn connect(&self) -> Result<Client, BackendError> {
        if self.host.trim().is_empty() {
            return Err(BackendError::NotConfigured {
                service: Service::Postgres,
                key: "postgres",
            });
        }
        if self.admin.username.is_empty() {
            return Err(BackendError::Credentials {
                service: Service::Postgres,
                message: "the admin Secret has an empty username".to_string(),
            });
        }
        let dbname = self
            .admin
            .database
            .as_deref()
            .filter(|d| !d.is_empty())
            .unwrap_or(DEFAULT_MAINTENANCE_DATABASE);
        let mut config = Config::new();
        config
            .host(&self.host)
            .port(self.port)
            .user(&self.admin.username)
            .password(&self.admin.password)
            .dbname(dbname)
            .application_name("silo-operator")
            .connect_timeout(CONNECT_TIMEOUT);
        let (client, connection) =
            match tokio::time::timeout(CONNECT_TIMEOUT, config.connect(NoTls)).await {
                Err(_) => {
                    return Err(self.connect_error(format!(
                        "no answer within {}s (connecting as {:?} to database {dbname:?})",
                        CONNECT_TIMEOUT.as_secs(),
                        self.admin.username
                    )));
                }
                Ok(Err(e)) => {
                    let auth = matches!(
                        e.code(),
                        Some(c) if *c == SqlState::INVALID_PASSWORD
                            || *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
                    );
                    let what = if auth {
                        "authentication failed (check the admin Secret)"
                    } else {
                        "cannot connect"
                    };
                    return Err(self.connect_error(format!(
                        "{what} as {:?} to database {dbname:?}: {}",
                        self.admin.username,
                        describe(&e)
                    )));
                }
                Ok(Ok(pair)) => pair,
            };
        let address = self.address();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(%address, error = %describe(&e), "shared PostgreSQL admin connection ended");
            }
        });
        tracing::debug!(address = %self.address(), "connected to the shared PostgreSQL");
        Ok(client)
    }

    /// The admin connection, (re)opened when there is none or the server closed it.
    async fn session(&self) -> Result<MappedMutexGuard<'_, Client>, BackendError> {
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(Client::is_closed) {
            *guard = None;
            *guard = Some(self.connect().await?);
        }
        MutexGuard::try_map(guard, Option::as_mut).map_err(|_| BackendError::Command {
            service: Service::Postgres,
            action: "open the admin connection".to_string(),
            message: "no connection after connecting".to_string(),
        })
    }

    /// Create or correct the tenant's role and database (see the module documentation).
    pub async fn ensure_database(&self, a: &DatabaseAccount) -> Result<Ensured, BackendError> {
        check_live_name(&a.database)?;
        let secret = PasswordSql::new(&a.password)
            .map_err(|message| command(format!("set the password of {}", a.database), message))?;
        let address = self.address();
        let mut client = self.session().await?;
        match ensure_on(&mut client, a, &secret, &address).await {
            // The connection broke under us: the call is idempotent, try once more.
            Err(_) if client.is_closed() => {
                drop(client);
                let mut client = self.session().await?;
                ensure_on(&mut client, a, &secret, &address).await
            }
            other => other,
        }
    }

    /// Revoke login, end the sessions and rename database and role to
    /// [`retired_name`]`(database, now_unix)`. `false` when neither exists.
    pub async fn retire_database(
        &self,
        database: &str,
        now_unix: i64,
    ) -> Result<bool, BackendError> {
        check_live_name(database)?;
        let target = retired_name(database, now_unix);
        if !is_retired_name(&target) {
            return Err(command(
                format!("retire database {database}"),
                format!(
                    "retired name {target:?} is not a valid identifier (retirement time {now_unix})"
                ),
            ));
        }
        let mut client = self.session().await?;
        match retire_on(&mut client, database, &target).await {
            Err(_) if client.is_closed() => {
                drop(client);
                let mut client = self.session().await?;
                retire_on(&mut client, database, &target).await
            }
            other => other,
        }
    }

    /// Drop retired databases and their roles retired before `before_unix`.
    pub async fn purge_retired(&self, before_unix: i64) -> Result<Vec<Purged>, BackendError> {
        let mut client = self.session().await?;
        match purge_on(&mut client, before_unix).await {
            Err(_) if client.is_closed() => {
                drop(client);
                let mut client = self.session().await?;
                purge_on(&mut client, before_unix).await
            }
            other => other,
        }
    }
}

/// Refuse to provision when PUBLIC may create objects in a schema of the maintenance database
/// the admin connects to (every tenant login can connect there: PostgreSQL grants `CONNECT` on
/// it to PUBLIC). That is PostgreSQL's default for schema `public` before version 15: a tenant
/// could plant functions or operators there for other tenants' sessions and the operator's own
/// to pick up (CVE-2018-1058). Checked on every ensure (one catalog query).
async fn refuse_public_create(client: &mut Client, address: &str) -> Result<(), BackendError> {
    let row = client
        .query_one(
            "SELECT pg_catalog.current_database()::text,                     ARRAY(SELECT n.nspname::text FROM pg_catalog.pg_namespace n,                           pg_catalog.aclexplode(COALESCE(n.nspacl, pg_catalog.acldefault('n', n.nspowner))) a                           WHERE a.grantee = 0 AND a.privilege_type = 'CREATE' ORDER BY 1)",
            &[],
        )
        .await
        .map_err(|e| command_err("check schema privileges of PUBLIC".to_string(), &e))?;
    let (database, schemas): (String, Vec<String>) = (row.get(0), row.get(1));
    if schemas.is_empty() {
        return Ok(());
    }
    let list = schemas.join(", ");
    let fix: Vec<String> = schemas
        .iter()
        .map(|s| format!("REVOKE CREATE ON SCHEMA {} FROM PUBLIC", quote_ident(s)))
        .collect();
    Err(BackendError::Unsafe {
        service: Service::Postgres,
        address: address.to_string(),
        message: format!(
            "PUBLIC may CREATE in schema {list} of database {database:?} (the PostgreSQL < 15 \
             default for schema public), where every tenant login can connect and plant objects \
             for other sessions; run `{}` in database {database:?} (PostgreSQL 15's default)",
            fix.join("; ")
        ),
    })
}

async fn ensure_on(
    client: &mut Client,
    a: &DatabaseAccount,
    secret: &PasswordSql,
    address: &str,
) -> Result<Ensured, BackendError> {
    refuse_public_create(client, address).await?;
    let db = a.database.as_str();
    let ident = quote_ident(db);
    let mut changes = Vec::new();

    // The role.
    let mut role = read_role(client, db).await?;
    if role.is_none() {
        let sql = format!(
            "CREATE ROLE {ident} {} NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT PASSWORD {}",
            if a.login { "LOGIN" } else { "NOLOGIN" },
            secret.literal()
        );
        match client.batch_execute(&sql).await {
            Ok(()) => {
                changes.push(format!("created role {db}"));
                tracing::info!(tenant = %a.tenant, role = db, "created role on the shared PostgreSQL");
            }
            // Created concurrently: correct it like any existing role.
            Err(e) if e.code() == Some(&SqlState::DUPLICATE_OBJECT) => {
                role = read_role(client, db).await?;
            }
            Err(e) => {
                return Err(command_err(
                    format!("create role {db} for tenant {}", a.tenant),
                    &e,
                ));
            }
        }
    }
    if let Some(role) = role {
        if role.privileged {
            exec(
                client,
                &format!("ALTER ROLE {ident} NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT"),
                format!("remove privileges of role {db}"),
            )
            .await?;
            changes.push(format!("removed privileges of role {db}"));
        }
        for granted in &role.member_of {
            exec(
                client,
                &format!("REVOKE {} FROM {ident}", quote_ident(granted)),
                format!("revoke membership of role {db} in {granted:?}"),
            )
            .await?;
            changes.push(format!("revoked membership of role {db} in {granted:?}"));
        }
        if role.can_login != a.login {
            let (attr, what) = if a.login {
                ("LOGIN", "enabled")
            } else {
                ("NOLOGIN", "disabled")
            };
            exec(
                client,
                &format!("ALTER ROLE {ident} {attr}"),
                format!("set {attr} on role {db}"),
            )
            .await?;
            changes.push(format!("{what} login of role {db}"));
        }
        if a.reset_password {
            exec(
                client,
                &format!("ALTER ROLE {ident} PASSWORD {}", secret.literal()),
                format!("set the password of role {db}"),
            )
            .await?;
            changes.push(format!("set the password of role {db}"));
        }
    }
    if !a.login {
        let ended = end_sessions(client, db, None).await?;
        if ended > 0 {
            changes.push(format!("terminated {ended} session(s) of role {db}"));
        }
    }

    // The database.
    let mut database = read_database(client, db).await?;
    if database.is_none() {
        // CREATE DATABASE cannot run inside a transaction: a plain simple-query statement.
        // From template0 (nobody can connect to it), not template1: tenants can connect to
        // template1, and where PUBLIC may create in it, objects a tenant planted there would
        // be copied into every new tenant's database.
        match client
            .batch_execute(&format!(
                "CREATE DATABASE {ident} OWNER {ident} TEMPLATE template0"
            ))
            .await
        {
            Ok(()) => {
                changes.push(format!("created database {db}"));
                tracing::info!(tenant = %a.tenant, database = db, "created database on the shared PostgreSQL");
                database = read_database(client, db).await?;
            }
            Err(e) if e.code() == Some(&SqlState::DUPLICATE_DATABASE) => {
                database = read_database(client, db).await?;
            }
            Err(e) => {
                return Err(command_err(
                    format!("create database {db} for tenant {}", a.tenant),
                    &e,
                ));
            }
        }
    }
    let Some(database) = database else {
        return Err(command(
            format!("create database {db} for tenant {}", a.tenant),
            "the database is gone right after it was created (dropped concurrently?)".to_string(),
        ));
    };
    if database.owner != db {
        exec(
            client,
            &format!("ALTER DATABASE {ident} OWNER TO {ident}"),
            format!("give database {db} to role {db}"),
        )
        .await?;
        changes.push(format!(
            "gave database {db} (owned by {:?}) to role {db}",
            database.owner
        ));
    }
    for grantee in &database.other_grantees {
        let (sql_grantee, shown) = match grantee {
            None => ("PUBLIC".to_string(), "PUBLIC".to_string()),
            Some(name) => (quote_ident(name), format!("{name:?}")),
        };
        exec(
            client,
            &format!("REVOKE ALL ON DATABASE {ident} FROM {sql_grantee}"),
            format!("revoke access to database {db} from {shown}"),
        )
        .await?;
        changes.push(format!("revoked access to database {db} from {shown}"));
    }
    Ok(Ensured { changes })
}

async fn retire_on(client: &mut Client, db: &str, target: &str) -> Result<bool, BackendError> {
    let role = read_role(client, db).await?;
    let database = read_database(client, db).await?;
    if role.is_none() && database.is_none() {
        return Ok(false);
    }
    let ident = quote_ident(db);
    let target_ident = quote_ident(target);
    if role.as_ref().is_some_and(|r| r.can_login) {
        exec(
            client,
            &format!("ALTER ROLE {ident} NOLOGIN"),
            format!("set NOLOGIN on role {db}"),
        )
        .await?;
    }
    end_sessions(client, db, Some(db)).await?;
    let mut sql = String::from("BEGIN;");
    if database.is_some() {
        sql.push_str(&format!("ALTER DATABASE {ident} RENAME TO {target_ident};"));
    }
    if role.is_some() {
        sql.push_str(&format!("ALTER ROLE {ident} RENAME TO {target_ident};"));
    }
    sql.push_str("COMMIT;");
    if let Err(e) = client.batch_execute(&sql).await {
        // Leave no transaction open on the shared connection.
        let _ = client.batch_execute("ROLLBACK").await;
        return Err(command_err(
            format!("rename database and role {db} to {target}"),
            &e,
        ));
    }
    tracing::info!(
        database = db,
        retired = target,
        "retired tenant database on the shared PostgreSQL"
    );
    Ok(true)
}

async fn purge_on(client: &mut Client, before_unix: i64) -> Result<Vec<Purged>, BackendError> {
    let prefix_len = RETIRED_PREFIX.len();
    let rows = client
        .query(
            &format!(
                "SELECT datname::text FROM pg_catalog.pg_database WHERE substr(datname::text, 1, {prefix_len}) = $1 \
                 UNION SELECT rolname::text FROM pg_catalog.pg_roles WHERE substr(rolname::text, 1, {prefix_len}) = $1 \
                 ORDER BY 1"
            ),
            &[&RETIRED_PREFIX],
        )
        .await
        .map_err(|e| command_err("list retired databases".to_string(), &e))?;
    let mut purged = Vec::new();
    let mut failures = Vec::new();
    for row in rows {
        let name: String = row.get(0);
        let Some(at) = retired_at(&name) else {
            continue;
        };
        if !is_retired_name(&name) || at >= before_unix {
            continue;
        }
        match purge_one(client, &name).await {
            Ok(()) => {
                tracing::info!(database = %name, retired_at = at, "purged retired database on the shared PostgreSQL");
                purged.push(Purged {
                    database: name,
                    retired_at_unix: at,
                });
            }
            Err(e) => failures.push(e.to_string()),
        }
    }
    if !failures.is_empty() {
        return Err(command(
            "purge retired databases".to_string(),
            format!(
                "{} failed ({} purged): {}",
                failures.len(),
                purged.len(),
                failures.join("; ")
            ),
        ));
    }
    Ok(purged)
}

async fn purge_one(client: &mut Client, name: &str) -> Result<(), BackendError> {
    let ident = quote_ident(name);
    end_sessions(client, name, Some(name)).await?;
    exec(
        client,
        &format!("DROP DATABASE IF EXISTS {ident}"),
        format!("drop retired database {name}"),
    )
    .await?;
    exec(
        client,
        &format!("DROP ROLE IF EXISTS {ident}"),
        format!("drop retired role {name}"),
    )
    .await
}

async fn read_role(client: &mut Client, role: &str) -> Result<Option<RoleState>, BackendError> {
    let row = client
        .query_opt(
            "SELECT r.rolcanlogin, \
                    r.rolsuper OR r.rolcreatedb OR r.rolcreaterole OR r.rolreplication OR r.rolbypassrls OR NOT r.rolinherit, \
                    ARRAY(SELECT g.rolname::text FROM pg_catalog.pg_auth_members m \
                          JOIN pg_catalog.pg_roles g ON g.oid = m.roleid WHERE m.member = r.oid ORDER BY 1) \
             FROM pg_catalog.pg_roles r WHERE r.rolname = $1::text",
            &[&role],
        )
        .await
        .map_err(|e| command_err(format!("read role {role}"), &e))?;
    Ok(row.map(|row| RoleState {
        can_login: row.get(0),
        privileged: row.get(1),
        member_of: row.get(2),
    }))
}

async fn read_database(
    client: &mut Client,
    database: &str,
) -> Result<Option<DatabaseState>, BackendError> {
    let row = client
        .query_opt(
            "SELECT pg_catalog.pg_get_userbyid(d.datdba)::text, \
                    ARRAY(SELECT DISTINCT CASE WHEN a.grantee = 0 THEN '' ELSE pg_catalog.pg_get_userbyid(a.grantee)::text END \
                          FROM pg_catalog.aclexplode(COALESCE(d.datacl, pg_catalog.acldefault('d', d.datdba))) a \
                          WHERE a.grantee <> d.datdba ORDER BY 1) \
             FROM pg_catalog.pg_database d WHERE d.datname = $1::text",
            &[&database],
        )
        .await
        .map_err(|e| command_err(format!("read database {database}"), &e))?;
    Ok(row.map(|row| {
        let grantees: Vec<String> = row.get(1);
        DatabaseState {
            owner: row.get(0),
            other_grantees: grantees
                .into_iter()
                .map(|g| if g.is_empty() { None } else { Some(g) })
                .collect(),
        }
    }))
}

/// Terminate the sessions of `role` (and, with `database`, every session on that database)
/// and wait until they are gone. Returns how many were terminated.
async fn end_sessions(
    client: &mut Client,
    role: &str,
    database: Option<&str>,
) -> Result<i64, BackendError> {
    const MATCH: &str =
        "(usename = $1::text OR datname = $2::text) AND pid <> pg_catalog.pg_backend_pid()";
    let database = database.unwrap_or("");
    let action = || format!("terminate the sessions of {role}");
    let row = client
        .query_one(
            &format!(
                "SELECT count(*) FILTER (WHERE pg_catalog.pg_terminate_backend(pid)) \
                 FROM pg_catalog.pg_stat_activity WHERE {MATCH}"
            ),
            &[&role, &database],
        )
        .await
        .map_err(|e| command_err(action(), &e))?;
    let ended: i64 = row.get(0);
    if ended == 0 {
        return Ok(0);
    }
    let deadline = Instant::now() + SESSION_END_TIMEOUT;
    loop {
        let row = client
            .query_one(
                &format!("SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE {MATCH}"),
                &[&role, &database],
            )
            .await
            .map_err(|e| command_err(action(), &e))?;
        let left: i64 = row.get(0);
        if left == 0 {
            return Ok(ended);
        }
        if Instant::now() >= deadline {
            return Err(command(
                action(),
                format!(
                    "{left} session(s) still open {}s after terminating them",
                    SESSION_END_TIMEOUT.as_secs()
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn exec(client: &mut Client, sql: &str, action: String) -> Result<(), BackendError> {
    client
        .batch_execute(sql)
        .await
        .map_err(|e| command_err(action, &e))
}

fn command(action: String, message: String) -> BackendError {
    BackendError::Command {
        service: Service::Postgres,
        action,
        message,
    }
}

fn command_err(action: String, e: &tokio_postgres::Error) -> BackendError {
    command(action, describe(e))
}

/// The server's message (with code, detail and hint) or the error and its causes.
fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut out = format!("{} (SQLSTATE {})", db.message(), db.code().code());
        if let Some(detail) = db.detail() {
            out.push_str("; ");
            out.push_str(detail);
        }
        if let Some(hint) = db.hint() {
            out.push_str("; hint: ");
            out.push_str(hint);
        }
        return out;
    }
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

fn is_lower_hex(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A live tenant database name: `silo_t_` + lower-case hex, at most 63 bytes.
fn check_live_name(name: &str) -> Result<(), BackendError> {
    let ok = name.len() <= MAX_IDENTIFIER
        && name.strip_prefix(DATABASE_PREFIX).is_some_and(is_lower_hex);
    if ok {
        Ok(())
    } else {
        Err(command(
            format!("check database name {name:?}"),
            format!(
                "not a tenant database name ({DATABASE_PREFIX} followed by lower-case hex digits, at most {MAX_IDENTIFIER} characters)"
            ),
        ))
    }
}

/// A retired name: `silo_r_<decimal secs>_<lower-case hex>`, at most 63 bytes.
fn is_retired_name(name: &str) -> bool {
    name.len() <= MAX_IDENTIFIER
        && name
            .strip_prefix(RETIRED_PREFIX)
            .and_then(|rest| rest.split_once('_'))
            .is_some_and(|(secs, hash)| {
                !secs.is_empty() && secs.bytes().all(|b| b.is_ascii_digit()) && is_lower_hex(hash)
            })
}

/// A quoted SQL identifier (`"` doubled). Names are checked before; this is the second line.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A quoted SQL string literal that means `s` whatever `standard_conforming_strings` is:
/// `'` doubled, and with a backslash present the `E'…'` form with `\` doubled (what
/// PostgreSQL's own `quote_literal` produces).
fn quote_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    if s.contains('\\') {
        out.push('E');
    }
    out.push('\'');
    for c in s.chars() {
        if c == '\'' || c == '\\' {
            out.push(c);
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// The `PASSWORD` value of a role: a SCRAM-SHA-256 verifier for ASCII passwords (SASLprep
/// leaves ASCII as it is, so the verifier is exactly what the server would compute), the
/// escaped clear text otherwise (the server applies SASLprep).
struct PasswordSql(String);

impl std::fmt::Debug for PasswordSql {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PasswordSql(<redacted>)")
    }
}

impl PasswordSql {
    fn new(password: &str) -> Result<PasswordSql, String> {
        if password.is_empty() {
            return Err("the password is empty (PostgreSQL would store no password)".to_string());
        }
        if password.contains('\0') {
            return Err("the password contains a NUL byte".to_string());
        }
        if password.is_ascii() {
            let salt: [u8; 16] = rand::random();
            Ok(PasswordSql(quote_literal(&scram_verifier(
                password.as_bytes(),
                &salt,
                SCRAM_ITERATIONS,
            ))))
        } else {
            Ok(PasswordSql(quote_literal(password)))
        }
    }

    fn literal(&self) -> &str {
        &self.0
    }
}

/// HMAC-SHA-256 (RFC 2104) of `msg` under `key`.
fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    use hmac::Mac as _;
    // HMAC takes keys of any length: new_from_slice never fails for it.
    let mut mac = match hmac::Hmac::<Sha256>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts keys of every length"),
    };
    mac.update(msg);
    mac.finalize().into_bytes().into()
}

/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (RFC 5802, RFC 7677), the
/// form PostgreSQL stores in `pg_authid.rolpassword` and accepts in `PASSWORD '…'`.
fn scram_verifier(password: &[u8], salt: &[u8], iterations: u32) -> String {
    // SaltedPassword := Hi(password, salt, i) = PBKDF2-HMAC-SHA-256, one 32-byte block.
    let salted = pbkdf2::pbkdf2_hmac_array::<Sha256, 32>(password, salt, iterations);
    let client_key = hmac_sha256(&salted, b"Client Key");
    let stored_key = Sha256::digest(client_key);
    let server_key = hmac_sha256(&salted, b"Server Key");
    format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        BASE64.encode(salt),
        BASE64.encode(stored_key),
        BASE64.encode(server_key)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scram_verifier_matches_the_reference_vector() {
        // The vector of postgres-protocol's own test (same algorithm as PostgreSQL's).
        let salt: [u8; 16] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16];
        assert_eq!(
            scram_verifier(b"secret", &salt, 4096),
            "SCRAM-SHA-256$4096:AQIDBAUGBwgJCgsMDQ4PEA==$8rrDg00OqaiWXJ7p+sCgHEIaBSHY89ZJl3mfIsf32oY=:05L1f+yZbiN8O0AnO40Og85NNRhvzTS57naKRWCcsIA="
        );
    }

    #[test]
    fn literals_and_identifiers_are_quoted() {
        assert_eq!(quote_literal("a'b"), "'a''b'");
        assert_eq!(quote_literal(r"a\'b"), r"E'a\\''b'");
        assert_eq!(quote_literal("$$x$$"), "'$$x$$'");
        assert_eq!(quote_ident("silo_t_ab"), "\"silo_t_ab\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn names_are_checked() {
        assert!(check_live_name(&crate::backends::database_name("x")).is_ok());
        for bad in [
            "",
            "silo_t_",
            "silo_t_ABC",
            "silo_t_12; DROP DATABASE postgres",
            "postgres",
            "silo_r_1_ab",
            &format!("silo_t_{}", "a".repeat(57)),
        ] {
            let err = check_live_name(bad).unwrap_err().to_string();
            assert!(err.contains("not a tenant database name"), "{bad}: {err}");
            assert!(err.contains(&format!("{bad:?}")), "{bad}: {err}");
        }
        assert!(is_retired_name("silo_r_1700000000_ab12"));
        assert!(!is_retired_name("silo_r_-5_ab12"));
        assert!(!is_retired_name("silo_r_5_"));
        assert!(!is_retired_name("silo_r__ab"));
        assert!(!is_retired_name("silo_t_ab"));
    }

    #[test]
    fn passwords_are_refused_when_empty_or_with_nul() {
        assert!(PasswordSql::new("").unwrap_err().contains("empty"));
        assert!(PasswordSql::new("a\0b").unwrap_err().contains("NUL"));
        let ascii = PasswordSql::new("it's $$ \\ fine").unwrap();
        assert!(
            ascii.literal().starts_with("'SCRAM-SHA-256$4096:"),
            "{}",
            ascii.literal()
        );
        assert!(!ascii.literal().contains("fine"));
        assert_eq!(PasswordSql::new("é'").unwrap().literal(), "'é'''");
    }
}
