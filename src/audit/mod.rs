//! The tamper-evident audit trail (SPEC "REST API": `GET /v1/tenants/{name}/audit`,
//! `silo audit verify`), shared by the API, the operator and the command line. Design and
//! operation: docs/audit.md.
//!
//! - Storage: `audit_records` in the API's PostgreSQL (`migrations/V2__audit_and_requests.sql`).
//!   Append-only: the API's role holds INSERT and SELECT only, and triggers refuse UPDATE,
//!   DELETE and TRUNCATE for everybody (SQLSTATE `SA001`).
//! - Chains: one SHA-256 hash chain per tenant root (`chain` = the root's name, `''` for calls
//!   without a valid token). The insert trigger numbers the record (`seq`), stamps the time
//!   and computes `hash = SHA-256(prev_hash || canonical(record))` under a row lock on the
//!   chain's head, so appends from every replica and the operator are serialized per root.
//! - [`verify`]: recomputes every chain and names the first broken record.
//! - [`archive`]: exports old records as JSON lines, appends an Ed25519-signed checkpoint and
//!   removes them ([`sign`]); [`verify`] then starts the chain from the checkpoint.
//! - [`OperatorAudit`]: how the operator's significant actions reach the trail without the
//!   API: it writes to the same database itself, in the background, with retries.
//! - [`redact`]: summaries never hold secrets (tokens, passwords, keys).

pub mod archive;
pub mod sign;
pub mod verify;

use std::time::Duration;

use crate::operator::cluster::EventInfo;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_postgres::GenericClient;

pub use archive::{ArchiveReport, archive};
pub use verify::{Broken, VerifyReport, verify};

/// One record to append. The chain (`path[0]`), sequence number, time and hashes are
/// assigned by the database.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// The token id, `operator`, or `-` (no valid token).
    pub actor_token: String,
    /// The token's name (may be empty) or the operator's identity.
    pub actor_name: String,
    /// The tenant whose subtree the record belongs to (`''`: none).
    pub tenant: String,
    /// Root … tenant; empty: taken from the tenant's latest record (operator records of a
    /// tenant whose status has no path yet), else `[tenant]`.
    pub path: Vec<String>,
    /// `METHOD /route/{template}` for API calls, `operator.<Reason>` for the operator.
    pub action: String,
    /// What was acted on (the concrete path, or `Tenant/<name>`).
    pub target: String,
    /// The change without secrets (see [`redact`]).
    pub summary: Value,
    /// HTTP status code; 0 for operator records.
    pub status: i32,
    /// `ok`, the error reason (`Forbidden`, `LimitExceeded`, …), or `Normal`/`Warning`.
    pub outcome: String,
}

/// Why the trail could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit database: {0}")]
    Db(String),
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Config(String),
}

pub(crate) fn db_err(e: impl std::fmt::Display) -> AuditError {
    AuditError::Db(e.to_string())
}

/// `s` with every NUL (U+0000) written as the six characters `\u0000`: PostgreSQL text and
/// jsonb cannot hold NUL, and a request carrying one must still leave its record.
pub fn escape_nul(s: &str) -> String {
    s.replace('\0', "\\u0000")
}

/// `v` with [`escape_nul`] applied to every string and object key.
pub fn escape_nul_json(v: &Value) -> Value {
    match v {
        Value::String(s) => Value::String(escape_nul(s)),
        Value::Array(a) => Value::Array(a.iter().map(escape_nul_json).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (escape_nul(k), escape_nul_json(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Appends one record; returns its id. NUL characters in any field are escaped
/// ([`escape_nul`]), never a reason to lose the record.
pub async fn append<C: GenericClient>(client: &C, e: &Entry) -> Result<i64, AuditError> {
    let e = &Entry {
        actor_token: escape_nul(&e.actor_token),
        actor_name: escape_nul(&e.actor_name),
        tenant: escape_nul(&e.tenant),
        path: e.path.iter().map(|p| escape_nul(p)).collect(),
        action: escape_nul(&e.action),
        target: escape_nul(&e.target),
        summary: escape_nul_json(&e.summary),
        status: e.status,
        outcome: escape_nul(&e.outcome),
    };
    let row = client
        .query_one(
            "INSERT INTO audit_records (chain, seq, actor_token, actor_name, tenant, path, action, \
             target, summary, status, outcome, prev_hash, hash) \
             VALUES ('', 0, $1, $2, $3, COALESCE(NULLIF($4::text[], '{}'), \
               (SELECT path FROM audit_records WHERE tenant = $3 ORDER BY id DESC LIMIT 1), \
               CASE WHEN $3 = '' THEN '{}'::text[] ELSE ARRAY[$3] END), \
             $5, $6, $7, $8, $9, '', '') RETURNING id",
            &[
                &e.actor_token,
                &e.actor_name,
                &e.tenant,
                &e.path,
                &e.action,
                &e.target,
                &e.summary,
                &e.status,
                &e.outcome,
            ],
        )
        .await
        .map_err(db_err)?;
    Ok(row.get(0))
}

/// A stored record as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// Position in the whole trail (cursor order).
    pub id: i64,
    /// The tenant root whose hash chain holds the record.
    pub chain: String,
    /// Position in the chain, from 1.
    pub seq: i64,
    /// RFC 3339 with microseconds (UTC).
    pub at: String,
    pub actor: Actor,
    pub tenant: String,
    pub action: String,
    pub target: String,
    pub summary: Value,
    /// HTTP status (0: operator record).
    pub status: i32,
    pub outcome: String,
    /// SHA-256 of the previous record in the chain, hex.
    pub prev_hash: String,
    /// SHA-256 of this record, hex.
    pub hash: String,
    /// `at` in Unix microseconds (the cursor), not shown.
    #[serde(skip)]
    pub at_micros: i64,
}

/// Who did it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Actor {
    /// Token id, `operator`, `silo audit archive`, or `-`.
    pub token: String,
    pub name: String,
}

/// Filters of [`query`]; `from`/`to` are RFC 3339 texts checked by the caller.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// The tenant whose subtree is read (its records and its descendants').
    pub tenant: String,
    pub from: Option<String>,
    pub to: Option<String>,
    /// Token id or token name.
    pub actor: Option<String>,
    pub action: Option<String>,
    /// Records before this (at in µs, id) in the order of the answer (the cursor).
    pub before: Option<(i64, i64)>,
    pub limit: i64,
}

pub(crate) const RECORD_COLUMNS: &str = "id, chain, seq, \
    (extract(epoch FROM at) * 1000000)::bigint, actor_token, actor_name, tenant, action, target, \
    summary, status, outcome, encode(prev_hash, 'hex'), encode(hash, 'hex')";

pub(crate) fn record_of(r: &tokio_postgres::Row) -> Record {
    let micros: i64 = r.get(3);
    Record {
        id: r.get(0),
        chain: r.get(1),
        seq: r.get(2),
        at: rfc3339_micros(micros),
        actor: Actor {
            token: r.get(4),
            name: r.get(5),
        },
        tenant: r.get(6),
        action: r.get(7),
        target: r.get(8),
        summary: r.get(9),
        status: r.get(10),
        outcome: r.get(11),
        prev_hash: r.get(12),
        hash: r.get(13),
        at_micros: micros,
    }
}

/// Unix microseconds → RFC 3339 (UTC, microseconds).
pub fn rfc3339_micros(us: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

/// Records of a subtree, newest first (by time, then id: the index on `(at, id)` serves
/// every filter and the cursor), at most `limit`. Only the filters given become
/// conditions (an `$n IS NULL OR …` form would keep PostgreSQL from using the indexes on
/// time and path).
pub async fn query<C: GenericClient>(client: &C, f: &Filter) -> Result<Vec<Record>, AuditError> {
    use tokio_postgres::types::ToSql;
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&f.tenant];
    let mut sql =
        format!("SELECT {RECORD_COLUMNS} FROM audit_records WHERE path @> ARRAY[$1::text]");
    if let Some(from) = &f.from {
        params.push(from);
        sql.push_str(&format!(" AND at >= ${}::text::timestamptz", params.len()));
    }
    if let Some(to) = &f.to {
        params.push(to);
        sql.push_str(&format!(" AND at < ${}::text::timestamptz", params.len()));
    }
    if let Some(actor) = &f.actor {
        params.push(actor);
        let n = params.len();
        sql.push_str(&format!(" AND (actor_token = ${n} OR actor_name = ${n})"));
    }
    if let Some(action) = &f.action {
        params.push(action);
        sql.push_str(&format!(" AND action = ${}", params.len()));
    }
    if let Some((at, id)) = &f.before {
        params.push(at);
        params.push(id);
        let n = params.len();
        sql.push_str(&format!(
            " AND (at, id) < ('epoch'::timestamptz + ${}::bigint * interval '1 microsecond', ${n})",
            n - 1
        ));
    }
    params.push(&f.limit);
    sql.push_str(&format!(
        " ORDER BY at DESC, id DESC LIMIT ${}",
        params.len()
    ));
    let rows = client.query(&sql, &params).await.map_err(db_err)?;
    Ok(rows.iter().map(record_of).collect())
}

/// Object keys whose values are never recorded (case-insensitive substrings).
const SECRET_KEYS: [&str; 8] = [
    "token",
    "password",
    "passwd",
    "secret",
    "privatekey",
    "private_key",
    "credential",
    "apikey",
];

/// The value with secrets replaced by `"[redacted]"`: values of keys naming a secret
/// (token, password, secret, private key, credential, API key) and any string that looks
/// like a Silo API token (`silo_…`). Long strings are cut at 1,000 characters.
pub fn redact(v: &Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let lower = k.to_ascii_lowercase().replace('-', "");
                    if SECRET_KEYS.iter().any(|s| lower.contains(s)) {
                        (k.clone(), Value::String("[redacted]".into()))
                    } else {
                        (k.clone(), redact(v))
                    }
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(redact).collect()),
        Value::String(s) if crate::api::auth::looks_like_token(s) => {
            Value::String("[redacted]".into())
        }
        Value::String(s) if s.chars().count() > 1000 => {
            Value::String(format!("{}…", s.chars().take(1000).collect::<String>()))
        }
        other => other.clone(),
    }
}

/// How the operator's significant actions reach the trail: the operator writes to the API's
/// database itself (when `api.database.url` is configured), so the trail does not depend on
/// the API being up. Records are queued (bounded) and written by one background task that
/// reconnects and retries; a full queue drops the record with a warning rather than slow the
/// reconciles. Only the leader's reconciles produce records.
#[derive(Clone)]
pub struct OperatorAudit {
    tx: tokio::sync::mpsc::Sender<Entry>,
    identity: String,
}

/// Operator event reasons recorded in the trail (the rest, e.g. `Provisioning`, are progress).
pub const OPERATOR_REASONS: [&str; 12] = [
    "Provisioned",
    "Ready",
    "Suspended",
    "Resumed",
    "KeyRotated",
    "DataKeyWritten",
    "SecretsWritten",
    "SharedProvisioned",
    "LeftShared",
    "DeletionBlocked",
    "Deleted",
    "Failed",
];

/// Queue length of [`OperatorAudit`].
const OPERATOR_QUEUE: usize = 1024;

impl OperatorAudit {
    /// Starts the background writer on the API database `db` (must run inside a tokio
    /// runtime). `identity` names the operator replica in the records.
    pub fn spawn(db: &crate::config::ApiDatabase, identity: &str) -> Result<Self, AuditError> {
        let mut config = db
            .pg_config()
            .map_err(|e| AuditError::Config(format!("api.database.url: {e}")))?;
        config.application_name("silo-operator-audit");
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Entry>(OPERATOR_QUEUE);
        tokio::spawn(async move {
            let mut client: Option<tokio_postgres::Client> = None;
            let mut backoff = Duration::from_millis(200);
            while let Some(entry) = rx.recv().await {
                loop {
                    if client.as_ref().is_none_or(|c| c.is_closed()) {
                        match config.connect(tokio_postgres::NoTls).await {
                            Ok((c, conn)) => {
                                tokio::spawn(async move {
                                    let _ = conn.await;
                                });
                                client = Some(c);
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "operator audit: cannot reach the API database; retrying");
                                tokio::time::sleep(backoff).await;
                                backoff = (backoff * 2).min(Duration::from_secs(30));
                                continue;
                            }
                        }
                    }
                    let Some(c) = client.as_ref() else { continue };
                    match append(c, &entry).await {
                        Ok(_) => {
                            backoff = Duration::from_millis(200);
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, action = %entry.action, "operator audit: append failed; retrying");
                            client = None;
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(Duration::from_secs(30));
                        }
                    }
                }
            }
        });
        Ok(OperatorAudit {
            tx,
            identity: identity.to_string(),
        })
    }

    /// Queues a record of an operator event on `tenant` when its reason is significant
    /// ([`OPERATOR_REASONS`]); returns whether it was queued.
    pub fn event(&self, tenant: &crate::types::Tenant, event: &EventInfo) -> bool {
        let EventInfo {
            warning,
            reason,
            action,
            note,
        } = event;
        let reason = reason.as_str();
        if !OPERATOR_REASONS.contains(&reason) {
            return false;
        }
        let path = tenant
            .status
            .as_ref()
            .map(|s| s.path.clone())
            .unwrap_or_default();
        let entry = Entry {
            actor_token: "operator".into(),
            actor_name: self.identity.clone(),
            tenant: tenant.name().to_string(),
            path,
            action: format!("operator.{reason}"),
            target: format!("Tenant/{}", tenant.name()),
            summary: redact(&serde_json::json!({"action": action, "note": note})),
            status: 0,
            outcome: if *warning { "Warning" } else { "Normal" }.into(),
        };
        match self.tx.try_send(entry) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, reason, "operator audit: queue full, record dropped");
                false
            }
        }
    }
}

/// Connects to the API database: as `api.database.url` (+ password), or as the schema's
/// owner (`api.database.ownerUrl`, falling back to `url`) when `owner` is set.
pub async fn connect(
    db: &crate::config::ApiDatabase,
    owner: bool,
) -> Result<tokio_postgres::Client, AuditError> {
    let (url, field) = if owner && !db.owner_url.trim().is_empty() {
        (&db.owner_url, "api.database.ownerUrl")
    } else {
        (&db.url, "api.database.url")
    };
    if url.trim().is_empty() {
        return Err(AuditError::Config(
            "api.database.url is not set: the audit trail lives in the API's PostgreSQL (set api.database.url or SILO_API_DATABASE_URL)".into(),
        ));
    }
    let mut config = crate::config::pg_config_of(url)
        .map_err(|e| AuditError::Config(format!("{field}: {e}")))?;
    if field == "api.database.url" && !db.password.is_empty() {
        config.password(&db.password);
    }
    let (client, conn) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| AuditError::Db(format!("cannot connect ({field}): {e}")))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// The public key checkpoints are verified with: `api.audit.verifyKey`, else derived from
/// `api.audit.signingKey`, else none.
pub fn verify_key(cfg: &crate::config::AuditConfig) -> Option<String> {
    if !cfg.verify_key.is_empty() {
        return Some(cfg.verify_key.clone());
    }
    if cfg.signing_key.is_empty() {
        return None;
    }
    sign::Signer::from_seed_b64(&cfg.signing_key)
        .ok()
        .map(|s| s.public_key_b64())
}

/// `--before`: an RFC 3339 time, or `<n>d` (n days ago). Returns RFC 3339.
pub fn parse_before(text: &str) -> Result<String, String> {
    use time::format_description::well_known::Rfc3339;
    if let Some(days) = text.strip_suffix('d') {
        let n: i64 = days
            .parse()
            .map_err(|_| format!("--before {text:?}: expected an RFC 3339 time or <days>d"))?;
        let t = time::OffsetDateTime::now_utc() - time::Duration::days(n);
        return t.format(&Rfc3339).map_err(|e| e.to_string());
    }
    time::OffsetDateTime::parse(text, &Rfc3339)
        .map(|_| text.to_string())
        .map_err(|e| format!("--before {text:?}: expected an RFC 3339 time or <days>d ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_is_escaped_everywhere_in_text_and_json() {
        assert_eq!(escape_nul("a\0b"), "a\\u0000b");
        let v = serde_json::json!({"k\0": ["x\0", 1, {"y": "\0"}]});
        assert_eq!(
            escape_nul_json(&v),
            serde_json::json!({"k\\u0000": ["x\\u0000", 1, {"y": "\\u0000"}]})
        );
        let clean = serde_json::json!({"a": ["b", 2]});
        assert_eq!(escape_nul_json(&clean), clean);
    }
    use serde_json::json;

    #[test]
    fn secrets_never_reach_a_summary() {
        let token = crate::api::auth::mint().token;
        let v = json!({
            "name": "d1", "password": "hunter2", "apiToken": "x", "nested": {"clientSecret": "s",
            "privateKey": "k", "list": [format!("see {token}"), "ok"]},
            "displayName": "y".repeat(1200)
        });
        let r = redact(&v);
        let text = r.to_string();
        for s in ["hunter2", "\"x\"", "\"s\"", "\"k\"", &token[..21]] {
            assert!(!text.contains(s), "{s} in {text}");
        }
        assert_eq!(r["name"], "d1");
        assert_eq!(r["nested"]["list"][1], "ok");
        assert_eq!(r["displayName"].as_str().unwrap().chars().count(), 1001);
        assert_eq!(rfc3339_micros(1_500_000), "1970-01-01T00:00:01.500000Z");
    }
}
