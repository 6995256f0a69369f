//! `/v1/requests`: requested actions (see `api::requests` for the rules).

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::hierarchy::roles::Permission;

use super::super::audit_layer::{AuditNote, filed_under, operation_tenant};
use super::super::authz::Caller;
use super::super::body::{JsonBody, QueryOf, from_value, parse_value};
use super::super::errors::{ApiError, ErrorBody};
use super::super::requests::{self, Decision, NewRequest, RequestOut};
use super::super::server::AppState;
use super::{List, Page, encode_cursor};

/// `POST /v1/requests`: the operation to ask for.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestCreate {
    /// `POST`, `PATCH` or `DELETE`.
    pub method: String,
    /// An API path, e.g. `/v1/tenants/cust-a` (query allowed).
    pub path: String,
    /// The JSON body the operation sends.
    #[serde(default)]
    pub body: Option<Value>,
}

/// `POST /v1/requests/{id}/approve|decline` (the body may be empty).
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecisionBody {
    /// Why (shown to the requester, at most 1,000 characters).
    #[serde(default)]
    pub comment: Option<String>,
}

/// Filters of `GET /v1/requests`.
#[derive(Clone, Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RequestQuery {
    /// Only requests in this status (`Pending`, `Approved`, `Declined`, `Expired`, `Failed`).
    pub status: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

const STATUSES: [&str; 5] = ["Pending", "Approved", "Declined", "Expired", "Failed"];

/// The caller's own requests and, for callers holding `requests.approve`, those it may
/// decide (filed under its tenant or below), newest first.
#[utoipa::path(get, path = "/v1/requests", tag = "requests",
    params(RequestQuery),
    responses(
        (status = 200, description = "requests", body = List<RequestOut>),
        (status = 400, description = "bad query; `field` names it", body = ErrorBody),
        (status = 401, description = "no or bad token", body = ErrorBody),
    ))]
pub async fn list_requests(
    State(api): State<AppState>,
    caller: Caller,
    QueryOf(q): QueryOf<RequestQuery>,
) -> Result<Json<List<RequestOut>>, ApiError> {
    let (limit, after) = Page {
        limit: q.limit,
        cursor: q.cursor.clone(),
    }
    .parse()?;
    if after
        .as_deref()
        .is_some_and(|a| !requests::is_request_id(a))
    {
        return Err(ApiError::BadRequest {
            message: "cursor is not a cursor returned by this API (pass `next` back unchanged)"
                .into(),
            field: Some("cursor".into()),
        });
    }
    if let Some(s) = &q.status
        && !STATUSES.contains(&s.as_str())
    {
        return Err(ApiError::BadRequest {
            message: format!("status {s:?} is not one of {}", STATUSES.join(", ")),
            field: Some("status".into()),
        });
    }
    let mut items = requests::list(
        &api,
        &caller,
        q.status.as_deref(),
        after.as_deref(),
        limit + 1,
    )
    .await?;
    let next = if items.len() > limit {
        items.truncate(limit);
        items.last().map(|r| encode_cursor(&r.id))
    } else {
        None
    };
    Ok(Json(List { items, next }))
}

/// One request (the requester's, or one the caller may decide; otherwise 404).
#[utoipa::path(get, path = "/v1/requests/{id}", tag = "requests",
    params(("id" = String, Path, description = "request id")),
    responses(
        (status = 200, description = "the request", body = RequestOut),
        (status = 401, description = "no or bad token", body = ErrorBody),
        (status = 404, description = "not visible to this token, or missing", body = ErrorBody),
    ))]
pub async fn get_request(
    State(api): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<RequestOut>, ApiError> {
    Ok(Json(requests::get(&api, &caller, &id).await?))
}

/// Asks for an operation to be approved by an admin above (`202` with the pending request).
/// Sensitive calls the role lacks become requests on their own; this endpoint asks for any
/// change of the API explicitly.
#[utoipa::path(post, path = "/v1/requests", tag = "requests",
    request_body = RequestCreate,
    responses(
        (status = 202, description = "pending", body = RequestOut),
        (status = 400, description = "not JSON", body = ErrorBody),
        (status = 401, description = "no or bad token", body = ErrorBody),
        (status = 403, description = "the role lacks `requests.create`, or the caller's tenant is suspended", body = ErrorBody),
        (status = 404, description = "the operation's tenant is outside the subtree or missing", body = ErrorBody),
        (status = 422, description = "not an operation of this API; `field` names the part", body = ErrorBody),
    ))]
pub async fn create_request(
    State(api): State<AppState>,
    caller: Caller,
    axum::Extension(doc): axum::Extension<Arc<utoipa::openapi::OpenApi>>,
    JsonBody(body): JsonBody<RequestCreate>,
) -> Result<Response, ApiError> {
    caller.require(Permission::RequestsCreate)?;
    caller.require_writable()?;
    let method = body.method.to_ascii_uppercase();
    if !["POST", "PATCH", "DELETE"].contains(&method.as_str()) {
        return Err(ApiError::invalid(
            "method",
            format!(
                "{:?}: only changes are requested (POST, PATCH or DELETE)",
                body.method
            ),
        ));
    }
    let path_only = body.path.split('?').next().unwrap_or("");
    if path_only.starts_with("/v1/requests") || !served(&doc, &method, path_only) {
        return Err(ApiError::invalid(
            "path",
            format!(
                "{method} {path_only} is not an operation of this API that can be requested (see /openapi.json)"
            ),
        ));
    }
    let wanted = operation_tenant(path_only, body.body.as_ref());
    let in_scope = api.cache.view().with_tree(|tree| match &wanted {
        Some(w) => caller.sees(tree, w),
        None => true,
    });
    if !in_scope {
        return Err(ApiError::not_found("tenant"));
    }
    let (tenant, path) = filed_under(&api, Some(&caller), wanted.as_deref());
    let out = requests::create(
        &api,
        &caller,
        NewRequest {
            method,
            uri: body.path.clone(),
            body: body.body.clone(),
            tenant: tenant.clone(),
            path,
            permission: None,
        },
    )
    .await?;
    let mut resp = (StatusCode::ACCEPTED, Json(out.clone())).into_response();
    resp.extensions_mut().insert(AuditNote {
        tenant: Some(tenant),
        target: Some(format!("/v1/requests/{}", out.id)),
        detail: Some(serde_json::json!({"request": out.id})),
    });
    Ok(resp)
}

/// Whether the document serves `method` on `path` (template segments `{x}` match any).
fn served(doc: &utoipa::openapi::OpenApi, method: &str, path: &str) -> bool {
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    doc.paths.paths.iter().any(|(template, item)| {
        let t: Vec<&str> = template.split('/').collect();
        let shape = t.len() == segs.len()
            && t.iter()
                .zip(&segs)
                .all(|(a, b)| (a.starts_with('{') && a.ends_with('}') && !b.is_empty()) || a == b);
        let has = match method {
            "POST" => item.post.is_some(),
            "PATCH" => item.patch.is_some(),
            "DELETE" => item.delete.is_some(),
            _ => false,
        };
        shape && has
    })
}

fn decision_body(bytes: &Bytes) -> Result<DecisionBody, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(DecisionBody::default());
    }
    let d: DecisionBody = from_value(parse_value(bytes)?)?;
    if d.comment
        .as_ref()
        .is_some_and(|c| c.chars().count() > 1000 || c.contains('\0'))
    {
        return Err(ApiError::invalid(
            "comment",
            "at most 1,000 characters, no NUL characters",
        ));
    }
    Ok(d)
}

async fn decide(
    api: AppState,
    caller: Caller,
    id: String,
    bytes: Bytes,
    decision: Decision,
) -> Result<Response, ApiError> {
    caller.require_writable()?;
    let d = decision_body(&bytes)?;
    let out = requests::decide(&api, &caller, &id, decision, d.comment).await?;
    let tenant = out.tenant.clone();
    let status = out.status.clone();
    let mut resp = Json(out).into_response();
    resp.extensions_mut().insert(AuditNote {
        tenant: Some(tenant),
        target: None,
        detail: Some(serde_json::json!({"request": id, "decision": status})),
    });
    Ok(resp)
}

/// Approves: executes the recorded operation as this caller, re-validated against the tree as
/// it is now; the request ends `Approved` (with the operation's answer) or `Failed` (with the
/// reason).
#[utoipa::path(post, path = "/v1/requests/{id}/approve", tag = "requests",
    params(("id" = String, Path, description = "request id")),
    request_body = DecisionBody,
    responses(
        (status = 200, description = "decided: `Approved`, or `Failed` with the reason", body = RequestOut),
        (status = 401, description = "no or bad token", body = ErrorBody),
        (status = 403, description = "own request, the role lacks `requests.approve`, or not an admin of the request's tenant or above", body = ErrorBody),
        (status = 404, description = "not visible to this token, or missing", body = ErrorBody),
        (status = 409, description = "already decided or expired", body = ErrorBody),
        (status = 422, description = "bad comment", body = ErrorBody),
    ))]
pub async fn approve_request(
    State(api): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    decide(api, caller, id, bytes, Decision::Approve).await
}

/// Declines: the request ends `Declined`; nothing is executed.
#[utoipa::path(post, path = "/v1/requests/{id}/decline", tag = "requests",
    params(("id" = String, Path, description = "request id")),
    request_body = DecisionBody,
    responses(
        (status = 200, description = "declined", body = RequestOut),
        (status = 401, description = "no or bad token", body = ErrorBody),
        (status = 403, description = "own request, the role lacks `requests.approve`, or not an admin of the request's tenant or above", body = ErrorBody),
        (status = 404, description = "not visible to this token, or missing", body = ErrorBody),
        (status = 409, description = "already decided or expired", body = ErrorBody),
        (status = 422, description = "bad comment", body = ErrorBody),
    ))]
pub async fn decline_request(
    State(api): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    decide(api, caller, id, bytes, Decision::Decline).await
}
