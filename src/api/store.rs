//! The API's own state in PostgreSQL (`api.database` of the platform configuration): tokens
//! now, devices, requested actions and audit records in the next issues.
//!
//! - Schema: versioned SQL files in `migrations/` (embedded at build time), applied with
//!   refinery at start-up while holding a session advisory lock, so two replicas starting at
//!   once apply each migration once (the second waits, then finds nothing to do). The history
//!   table is `silo_api_schema_history`.
//! - Connections: a pool for requests and a small separate pool for the creation locks, so
//!   creations waiting for each other never starve token checks of connections.
//! - Plain TCP (`NoTls`), like the operator's connections to the shared PostgreSQL: the
//!   database is expected inside the cluster network.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use sha2::{Digest, Sha256};
use tokio_postgres::NoTls;

use crate::config::ApiDatabase;

use super::auth::Minted;
use super::errors::ApiError;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Advisory lock key held while migrating ("silo-api" in ASCII).
const MIGRATION_LOCK: i64 = 0x7369_6c6f_2d61_7069;
/// How long a creation stays in the ledger for other replicas (longer than a watch lags).
const LEDGER_WINDOW_SECS: i64 = 60;

/// Why the database could not be used; the message names the address, never the password.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "api.database.url is not set: `silo api` keeps its tokens in PostgreSQL (set api.database.url or SILO_API_DATABASE_URL)"
    )]
    NotConfigured,
    #[error("api.database.url is not a valid PostgreSQL URL: {0}")]
    BadUrl(String),
    #[error("cannot reach the API database at {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("API database migration failed: {0}")]
    Migration(String),
    #[error("API database query failed: {0}")]
    Query(String),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "API database");
        ApiError::Unavailable("the API database is unavailable; retry later".into())
    }
}

pub(crate) fn query_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Query(e.to_string())
}

/// A stored token (never its secret).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: String,
    pub tenant: String,
    pub role: String,
    pub name: Option<String>,
    /// Token id of the minting caller, or `cli` for `silo token create`.
    pub created_by: String,
    /// Unix seconds.
    pub created_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
    /// Expired by the database's clock at the time of reading.
    pub expired: bool,
}

/// A creation recorded by some replica within the last minute.
#[derive(Clone, Debug)]
pub struct PendingCreation {
    pub name: String,
    pub object: serde_json::Value,
}

/// The PostgreSQL of the API.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    locks: Pool,
    /// Device registrations hold a connection while waiting for the limit locks and the
    /// broker: their own pool, so they never starve token checks.
    devices: Pool,
    config: tokio_postgres::Config,
    /// `api.database.ownerUrl` when set: migrations run as the schema's owner.
    owner: Option<tokio_postgres::Config>,
    addr: String,
}

const TOKEN_COLUMNS: &str = "id, tenant, role, name, created_by, \
    extract(epoch from created_at)::bigint, extract(epoch from expires_at)::bigint, \
    extract(epoch from revoked_at)::bigint, expires_at <= now()";

fn token_row(r: &tokio_postgres::Row) -> TokenRecord {
    TokenRecord {
        id: r.get(0),
        tenant: r.get(1),
        role: r.get(2),
        name: r.get(3),
        created_by: r.get(4),
        created_at: r.get(5),
        expires_at: r.get(6),
        revoked_at: r.get(7),
        expired: r.get(8),
    }
}

pub(crate) fn lock_key(scope: &str, name: &str) -> i64 {
    let h = Sha256::digest(format!("silo-api/{scope}/{name}").as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h[..8]);
    i64::from_be_bytes(b)
}

impl Store {
    /// Connects (one query proves it) without migrating.
    pub async fn connect(cfg: &ApiDatabase) -> Result<Store, StoreError> {
        if cfg.url.trim().is_empty() {
            return Err(StoreError::NotConfigured);
        }
        let mut config = cfg
            .pg_config()
            .map_err(|e| StoreError::BadUrl(e.to_string()))?;
        if config.get_application_name().is_none() {
            config.application_name("silo-api");
        }
        let addr = describe(&config);
        let pool = |size: usize| {
            let mgr = Manager::from_config(
                config.clone(),
                NoTls,
                ManagerConfig {
                    recycling_method: RecyclingMethod::Fast,
                },
            );
            Pool::builder(mgr)
                .max_size(size)
                .runtime(Runtime::Tokio1)
                .wait_timeout(Some(Duration::from_secs(10)))
                .create_timeout(Some(Duration::from_secs(5)))
                .recycle_timeout(Some(Duration::from_secs(5)))
                .build()
                .map_err(|e| StoreError::BadUrl(e.to_string()))
        };
        let owner = if cfg.owner_url.trim().is_empty() {
            None
        } else {
            Some(
                crate::config::pg_config_of(&cfg.owner_url)
                    .map_err(|e| StoreError::BadUrl(format!("api.database.ownerUrl: {e}")))?,
            )
        };
        let store = Store {
            pool: pool(16)?,
            locks: pool(4)?,
            devices: pool(8)?,
            config,
            owner,
            addr,
        };
        store.ping().await.map_err(|e| match e {
            StoreError::Query(reason) => StoreError::Unreachable {
                addr: store.addr.clone(),
                reason,
            },
            other => other,
        })?;
        Ok(store)
    }

    /// Connects and applies the migrations.
    pub async fn open(cfg: &ApiDatabase) -> Result<Store, StoreError> {
        let store = Store::connect(cfg).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Applies pending migrations under an advisory lock (as the owner when
    /// `api.database.ownerUrl` is set); returns how many were applied.
    pub async fn migrate(&self) -> Result<usize, StoreError> {
        let (mut client, conn) = self
            .owner
            .as_ref()
            .unwrap_or(&self.config)
            .connect(NoTls)
            .await
            .map_err(|e| StoreError::Unreachable {
                addr: self.addr.clone(),
                reason: root_cause(&e),
            })?;
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        let result = async {
            client
                .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
                .await
                .map_err(|e| StoreError::Migration(e.to_string()))?;
            let report = embedded::migrations::runner()
                .set_grouped(true)
                .set_migration_table_name("silo_api_schema_history")
                .run_async(&mut client)
                .await
                .map_err(|e| StoreError::Migration(e.to_string()))?;
            let _ = client
                .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
                .await;
            Ok(report.applied_migrations().len())
        }
        .await;
        drop(client);
        let _ = task.await;
        result
    }

    /// The address (host:port/database) for messages.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(query_err)
    }

    /// A pooled connection (requested actions, audit queries).
    pub async fn conn(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.client().await
    }

    /// Appends one audit record (the database chains it); returns its id.
    pub async fn append_audit(&self, e: &crate::audit::Entry) -> Result<i64, StoreError> {
        let c = self.client().await?;
        crate::audit::append(&**c, e)
            .await
            .map_err(|e| StoreError::Query(e.to_string()))
    }

    /// A connection of the device registry's pool ([`super::devices`]).
    pub(crate) async fn devices_client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.devices.get().await.map_err(query_err)
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        let c = self
            .pool
            .get()
            .await
            .map_err(|e| StoreError::Query(pool_cause(&e)))?;
        c.simple_query("SELECT 1").await.map_err(query_err)?;
        Ok(())
    }

    /// Stores a minted token valid for `ttl_secs` from now (by the database's clock).
    pub async fn insert_token(
        &self,
        minted: &Minted,
        tenant: &str,
        role: &str,
        name: Option<&str>,
        created_by: &str,
        ttl_secs: i64,
    ) -> Result<TokenRecord, StoreError> {
        let c = self.client().await?;
        let sql = format!(
            "INSERT INTO api_tokens (id, secret_hash, tenant, role, name, created_by, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, now() + make_interval(secs => $7::bigint)) \
             RETURNING {TOKEN_COLUMNS}"
        );
        let row = c
            .query_one(
                &sql,
                &[
                    &minted.id,
                    &minted.hash.as_slice(),
                    &tenant,
                    &role,
                    &name,
                    &created_by,
                    &ttl_secs,
                ],
            )
            .await
            .map_err(query_err)?;
        Ok(token_row(&row))
    }

    /// The record and secret hash of token `id`, read fresh (no cache: revocation is seen at once).
    pub async fn token_for_auth(
        &self,
        id: &str,
    ) -> Result<Option<(Vec<u8>, TokenRecord)>, StoreError> {
        let c = self.client().await?;
        let sql = format!("SELECT secret_hash, {TOKEN_COLUMNS} FROM api_tokens WHERE id = $1");
        let stmt = c.prepare_cached(&sql).await.map_err(query_err)?;
        let row = c.query_opt(&stmt, &[&id]).await.map_err(query_err)?;
        Ok(row.map(|r| {
            let hash: Vec<u8> = r.get(0);
            let rec = TokenRecord {
                id: r.get(1),
                tenant: r.get(2),
                role: r.get(3),
                name: r.get(4),
                created_by: r.get(5),
                created_at: r.get(6),
                expires_at: r.get(7),
                revoked_at: r.get(8),
                expired: r.get(9),
            };
            (hash, rec)
        }))
    }

    pub async fn token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        let c = self.client().await?;
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE id = $1");
        let row = c.query_opt(&sql, &[&id]).await.map_err(query_err)?;
        Ok(row.as_ref().map(token_row))
    }

    /// Tokens of the given tenants that are not revoked, ordered by id, after `after`.
    pub async fn tokens(
        &self,
        tenants: &[String],
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<TokenRecord>, StoreError> {
        let c = self.client().await?;
        let sql = format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE tenant = ANY($1) AND revoked_at IS NULL \
             AND id > $2 ORDER BY id LIMIT $3"
        );
        let rows = c
            .query(&sql, &[&tenants, &after.unwrap_or(""), &limit])
            .await
            .map_err(query_err)?;
        Ok(rows.iter().map(token_row).collect())
    }

    /// Tokens of the given tenants bound to `role` that still work (not revoked, not expired),
    /// ordered by id: what removing a custom role would break.
    pub async fn usable_tokens_with_role(
        &self,
        tenants: &[String],
        role: &str,
    ) -> Result<Vec<TokenRecord>, StoreError> {
        let c = self.client().await?;
        let sql = format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE tenant = ANY($1) AND role = $2 \
             AND revoked_at IS NULL AND expires_at > now() ORDER BY id"
        );
        let rows = c.query(&sql, &[&tenants, &role]).await.map_err(query_err)?;
        Ok(rows.iter().map(token_row).collect())
    }

    /// Revokes token `id`; false when it was already revoked or does not exist.
    pub async fn revoke(&self, id: &str) -> Result<bool, StoreError> {
        let c = self.client().await?;
        let n = c
            .execute(
                "UPDATE api_tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
                &[&id],
            )
            .await
            .map_err(query_err)?;
        Ok(n == 1)
    }

    /// Runs `f` while holding, across every replica, the creation locks of `kind` at tenant
    /// `at` (the parent of a new Tenant, the owner of a new Channel) and of the name. `f` gets
    /// the creations of that kind at `at` recorded by any replica within the last minute (to
    /// count those its own watch has not delivered yet) and returns the object to record, if it
    /// created one. The lock is a transaction-scoped advisory lock: released on commit, on
    /// error and if the connection drops.
    pub async fn with_creation_lock<T, F, Fut>(
        &self,
        kind: &str,
        at: &str,
        name: &str,
        f: F,
    ) -> Result<T, ApiError>
    where
        F: FnOnce(Vec<PendingCreation>) -> Fut,
        Fut: std::future::Future<Output = Result<(T, Option<serde_json::Value>), ApiError>>,
    {
        let mut c = self.locks.get().await.map_err(query_err)?;
        let tx = c.transaction().await.map_err(query_err)?;
        let mut keys = [lock_key(&format!("{kind}/at"), at), lock_key(kind, name)];
        keys.sort_unstable();
        for k in keys {
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&k])
                .await
                .map_err(query_err)?;
        }
        tx.execute(
            "DELETE FROM api_creations WHERE created_at < now() - interval '10 minutes'",
            &[],
        )
        .await
        .map_err(query_err)?;
        let rows = tx
            .query(
                "SELECT name, object FROM api_creations WHERE kind = $1 AND at_tenant = $2 \
                 AND created_at > now() - make_interval(secs => $3::bigint)",
                &[&kind, &at, &LEDGER_WINDOW_SECS],
            )
            .await
            .map_err(query_err)?;
        let pending = rows
            .iter()
            .map(|r| PendingCreation {
                name: r.get(0),
                object: r.get::<_, serde_json::Value>(1),
            })
            .collect();
        let (out, record) = f(pending).await?;
        if let Some(object) = record {
            tx.execute(
                "INSERT INTO api_creations (kind, name, at_tenant, object) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (kind, name) DO UPDATE SET at_tenant = $3, object = $4, created_at = now()",
                &[&kind, &name, &at, &object],
            )
            .await
            .map_err(query_err)?;
        }
        tx.commit().await.map_err(query_err)?;
        Ok(out)
    }
}

/// `host:port/database` of a configuration (never the password).
fn describe(c: &tokio_postgres::Config) -> String {
    let host = c
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(s) => s.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = c.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}/{}", c.get_dbname().unwrap_or("postgres"))
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    let mut text = e.to_string();
    while let Some(next) = cur.source() {
        cur = next;
        text = cur.to_string();
    }
    text
}

fn pool_cause(e: &deadpool_postgres::PoolError) -> String {
    match e {
        deadpool_postgres::PoolError::Backend(b) => root_cause(b),
        other => other.to_string(),
    }
}
