//! Requested actions (SPEC "REST API": requested actions): a sensitive operation a caller's
//! role lacks, stored with the exact method, path and body, decided by an admin of the
//! target tenant or an ancestor.
//!
//! - Created by the audit layer when a handler refuses a call for a requestable permission
//!   and the caller holds `requests.create` (the `202` answer), or by `POST /v1/requests`.
//! - Visible to the requester (its token) and to callers holding `requests.approve` whose
//!   tenant is the request's tenant or an ancestor; anybody else gets the one 404.
//! - Approval executes the recorded operation through the router as the approver (the same
//!   handlers, re-validation against the tree as it is then, the same audit layer). The
//!   decision is `UPDATE … SET status = 'Approved' WHERE status = 'Pending' RETURNING` in the
//!   transaction that executes it: a second or concurrent decision (another replica) waits
//!   for the row, then finds it decided (409). If the operation fails, the request ends
//!   `Failed` with the reason, in the same transaction.
//! - Nobody decides their own request (same token); requests expire after
//!   `api.requestsExpireDays` (checked lazily on every read and decision).

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tower::ServiceExt;

use crate::audit::{Actor, redact};
use crate::hierarchy::roles::Permission;

use super::authz::Caller;
use super::errors::ApiError;
use super::server::{Api, Authenticated, Execution};
use super::store::StoreError;

/// A requested action as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequestOut {
    /// `req-<time><random>` (sorts by creation).
    pub id: String,
    /// `Pending`, `Approved`, `Declined`, `Expired` or `Failed`.
    pub status: String,
    /// The tenant whose admins (or its ancestors' admins) decide.
    pub tenant: String,
    /// The operation: HTTP method and path (with query) …
    pub method: String,
    pub path: String,
    /// … and body (secrets redacted in this view).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    /// The permission the requester lacked (absent for `POST /v1/requests`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permission: Option<String>,
    pub requested_by: Actor,
    pub created_at: String,
    pub expires_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<Actor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// Why it failed or expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The executed operation's answer: `{status, body}` (body with secrets redacted, except
    /// in the approver's own answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Value>,
}

/// What the audit layer or `POST /v1/requests` stores.
pub struct NewRequest {
    pub method: String,
    pub uri: String,
    pub body: Option<Value>,
    pub tenant: String,
    /// Root … tenant.
    pub path: Vec<String>,
    pub permission: Option<Permission>,
}

const COLUMNS: &str = "id, status, tenant, method, uri, body, permission, reason, \
    requester_token, requester_name, extract(epoch FROM created_at)::bigint, \
    extract(epoch FROM expires_at)::bigint, decided_by_token, decided_by_name, \
    extract(epoch FROM decided_at)::bigint, comment, outcome, path";

/// A stored request with what decides visibility.
pub struct Row {
    pub out: RequestOut,
    pub path: Vec<String>,
}

fn row_of(r: &tokio_postgres::Row) -> Row {
    let rfc = super::routes::rfc3339;
    let reason: String = r.get(7);
    let decided_token: Option<String> = r.get(12);
    let decided_name: Option<String> = r.get(13);
    let body: Option<Value> = r.get(5);
    Row {
        out: RequestOut {
            id: r.get(0),
            status: r.get(1),
            tenant: r.get(2),
            method: r.get(3),
            path: r.get(4),
            body: body.as_ref().map(redact),
            permission: r.get(6),
            requested_by: Actor {
                token: r.get(8),
                name: r.get(9),
            },
            created_at: rfc(r.get(10)),
            expires_at: rfc(r.get(11)),
            decided_by: decided_token.map(|token| Actor {
                token,
                name: decided_name.unwrap_or_default(),
            }),
            decided_at: r.get::<_, Option<i64>>(14).map(rfc),
            comment: r.get(15),
            reason: (!reason.is_empty()).then_some(reason),
            outcome: r.get(16),
        },
        path: r.get(17),
    }
}

fn db(e: impl std::fmt::Display) -> ApiError {
    ApiError::from(StoreError::Query(e.to_string()))
}

/// Whether `id` can be a request id (`req-` + 20 hex digits): anything else is never looked up.
pub fn is_request_id(id: &str) -> bool {
    id.strip_prefix("req-")
        .is_some_and(|h| h.len() == 20 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn new_id() -> String {
    let ms = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
    format!("req-{ms:012x}{:08x}", rand::random::<u32>())
}

/// Marks pending requests past their expiry `Expired`.
async fn expire_due(c: &tokio_postgres::Client) -> Result<(), ApiError> {
    c.execute(
        "UPDATE api_requests SET status = 'Expired', \
         reason = 'not decided before it expired at ' || to_char(expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') \
         WHERE status = 'Pending' AND expires_at <= now()",
        &[],
    )
    .await
    .map_err(db)?;
    Ok(())
}

/// Stores a new pending request by `caller`.
pub async fn create(api: &Api, caller: &Caller, new: NewRequest) -> Result<RequestOut, ApiError> {
    // The request is replayed exactly as stored, so it is refused rather than altered when
    // PostgreSQL could not store it (text and jsonb hold no NUL).
    if new.uri.contains('\0') {
        return Err(ApiError::invalid(
            "uri",
            "must not contain NUL characters (U+0000, %00)",
        ));
    }
    if new
        .body
        .as_ref()
        .is_some_and(|b| crate::audit::escape_nul_json(b) != *b)
    {
        return Err(ApiError::invalid(
            "body",
            "must not contain NUL characters (U+0000)",
        ));
    }
    let c = api.store.conn().await?;
    let days = i32::try_from(api.config.api.requests_expire_days).unwrap_or(7);
    let sql = format!(
        "INSERT INTO api_requests (id, tenant, path, method, uri, body, permission, \
         requester_token, requester_name, requester_tenant, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, now() + make_interval(days => $11)) \
         RETURNING {COLUMNS}"
    );
    let row = c
        .query_one(
            &sql,
            &[
                &new_id(),
                &new.tenant,
                &new.path,
                &new.method,
                &new.uri,
                &new.body,
                &new.permission.map(|p| p.as_str().to_string()),
                &caller.token_id,
                &caller.token_name,
                &caller.tenant,
                &days,
            ],
        )
        .await
        .map_err(db)?;
    let out = row_of(&row).out;
    tracing::info!(target: "silo::api::audit", id = %out.id, tenant = %out.tenant, method = %out.method, path = %out.path, "request created");
    Ok(out)
}

/// Whether `caller` may decide requests filed under `path`: it holds `requests.approve` and
/// its tenant is on the path (the request's tenant or an ancestor).
fn may_decide(caller: &Caller, path: &[String]) -> bool {
    caller.permissions.contains(Permission::RequestsApprove) && path.contains(&caller.tenant)
}

fn visible(caller: &Caller, row: &Row) -> bool {
    row.out.requested_by.token == caller.token_id || may_decide(caller, &row.path)
}

/// Request `id` if the caller may see it (else the one 404).
pub async fn get(api: &Api, caller: &Caller, id: &str) -> Result<RequestOut, ApiError> {
    if !is_request_id(id) {
        return Err(ApiError::not_found("request"));
    }
    let c = api.store.conn().await?;
    expire_due(&c).await?;
    let row = load(&c, id).await?;
    match row {
        Some(r) if visible(caller, &r) => Ok(r.out),
        _ => Err(ApiError::not_found("request")),
    }
}

async fn load(c: &tokio_postgres::Client, id: &str) -> Result<Option<Row>, ApiError> {
    let sql = format!("SELECT {COLUMNS} FROM api_requests WHERE id = $1");
    Ok(c.query_opt(&sql, &[&id])
        .await
        .map_err(db)?
        .as_ref()
        .map(row_of))
}

/// The caller's own requests and those it may decide, newest first, after the cursor id.
pub async fn list(
    api: &Api,
    caller: &Caller,
    status: Option<&str>,
    before: Option<&str>,
    limit: usize,
) -> Result<Vec<RequestOut>, ApiError> {
    let c = api.store.conn().await?;
    expire_due(&c).await?;
    let approver = caller.permissions.contains(Permission::RequestsApprove);
    let sql = format!(
        "SELECT {COLUMNS} FROM api_requests \
         WHERE (requester_token = $1 OR ($2 AND path @> ARRAY[$3::text])) \
           AND ($4::text IS NULL OR status = $4) AND ($5::text IS NULL OR id < $5) \
         ORDER BY id DESC LIMIT $6"
    );
    let rows = c
        .query(
            &sql,
            &[
                &caller.token_id,
                &approver,
                &caller.tenant,
                &status,
                &before,
                &(limit as i64),
            ],
        )
        .await
        .map_err(db)?;
    Ok(rows.iter().map(|r| row_of(r).out).collect())
}

/// The decision of `POST /v1/requests/{id}/approve|decline`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Approve,
    Decline,
}

/// Decides request `id`. Returns the request as decided and its tenant (for the audit
/// record of the decision).
pub async fn decide(
    api: &Api,
    caller: &Caller,
    id: &str,
    decision: Decision,
    comment: Option<String>,
) -> Result<RequestOut, ApiError> {
    if !is_request_id(id) {
        return Err(ApiError::not_found("request"));
    }
    let mut c = api.store.conn().await?;
    expire_due(&c).await?;
    let Some(row) = load(&c, id).await? else {
        return Err(ApiError::not_found("request"));
    };
    if !visible(caller, &row) {
        return Err(ApiError::not_found("request"));
    }
    if row.out.requested_by.token == caller.token_id {
        return Err(ApiError::Forbidden {
            message: format!(
                "request {id} was made by this token: nobody decides their own request; an admin of tenant {:?} or above decides it",
                row.out.tenant
            ),
            permission: None,
        });
    }
    if !may_decide(caller, &row.path) {
        caller.require(Permission::RequestsApprove)?;
        return Err(ApiError::Forbidden {
            message: format!(
                "request {id} is decided by an admin of tenant {:?} or of a tenant above it",
                row.out.tenant
            ),
            permission: None,
        });
    }
    let tx = c.transaction().await.map_err(db)?;
    let new_status = match decision {
        Decision::Approve => "Approved",
        Decision::Decline => "Declined",
    };
    let sql = format!(
        "UPDATE api_requests SET status = $2, decided_by_token = $3, decided_by_name = $4, \
         decided_at = now(), comment = $5 \
         WHERE id = $1 AND status = 'Pending' AND expires_at > now() RETURNING {COLUMNS}, body"
    );
    let claimed = tx
        .query_opt(
            &sql,
            &[
                &id,
                &new_status,
                &caller.token_id,
                &caller.token_name,
                &comment,
            ],
        )
        .await
        .map_err(db)?;
    let Some(claimed) = claimed else {
        drop(tx);
        let c = api.store.conn().await?;
        expire_due(&c).await?;
        let status = load(&c, id)
            .await?
            .map_or_else(|| "gone".to_string(), |r| r.out.status);
        return Err(ApiError::Conflict {
            reason: "AlreadyDecided",
            message: format!("request {id} is no longer pending: it is {status}"),
        });
    };
    let mut out = row_of(&claimed).out;
    if decision == Decision::Decline {
        tx.commit().await.map_err(db)?;
        return Ok(out);
    }
    let body: Option<Value> = claimed.get(18);
    let (status, resp_body) = execute(api, caller, &out, body).await;
    let answer: Value = serde_json::from_slice(&resp_body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&resp_body).into_owned()));
    let stored = serde_json::json!({"status": status.as_u16(), "body": redact(&answer)});
    if status.is_success() {
        tx.execute(
            "UPDATE api_requests SET outcome = $2 WHERE id = $1",
            &[&id, &stored],
        )
        .await
        .map_err(db)?;
        out.outcome = Some(serde_json::json!({"status": status.as_u16(), "body": answer}));
    } else {
        let reason = format!(
            "{} {}: {}",
            status.as_u16(),
            answer["error"].as_str().unwrap_or(""),
            answer["message"].as_str().unwrap_or("")
        );
        tx.execute(
            "UPDATE api_requests SET status = 'Failed', reason = $2, outcome = $3 WHERE id = $1",
            &[&id, &reason, &stored],
        )
        .await
        .map_err(db)?;
        out.status = "Failed".into();
        out.reason = Some(reason);
        out.outcome = Some(stored);
    }
    tx.commit().await.map_err(db)?;
    Ok(out)
}

/// Runs the recorded operation through the router as `approver`; (status, body bytes).
async fn execute(
    api: &Api,
    approver: &Caller,
    req: &RequestOut,
    body: Option<Value>,
) -> (StatusCode, Vec<u8>) {
    let Some(router) = api.router.get().cloned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            br#"{"error":"Unavailable","message":"the router is not built"}"#.to_vec(),
        );
    };
    let bytes = body.map(|b| b.to_string()).unwrap_or_default();
    let built = Request::builder()
        .method(req.method.as_str())
        .uri(req.path.as_str())
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(bytes));
    let mut http = match built {
        Ok(r) => r,
        Err(e) => {
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                serde_json::json!({"error": "Invalid", "message": format!("the recorded operation is not a valid HTTP request: {e}")})
                    .to_string()
                    .into_bytes(),
            );
        }
    };
    http.extensions_mut()
        .insert(Authenticated(Ok(approver.clone())));
    http.extensions_mut().insert(Execution {
        request_id: req.id.clone(),
        requested_by: (
            req.requested_by.token.clone(),
            req.requested_by.name.clone(),
        ),
    });
    let resp = match router.oneshot(http).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .map(|b| b.to_vec())
        .unwrap_or_default();
    (status, bytes)
}
