//! `GET /v1/tenants/{name}/audit`: the audit trail of a subtree (see [`crate::audit`]).

use axum::Json;
use axum::extract::{Path, State};
use serde::Deserialize;

use crate::audit::{Filter, Record};
use crate::hierarchy::roles::Permission;

use super::super::authz::Caller;
use super::super::body::QueryOf;
use super::super::errors::{ApiError, ErrorBody};
use super::super::server::AppState;
use super::{List, Page, encode_cursor};

/// Filters of `GET /v1/tenants/{name}/audit` (all optional).
#[derive(Clone, Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Records at or after this time (RFC 3339).
    pub from: Option<String>,
    /// Records before this time (RFC 3339).
    pub to: Option<String>,
    /// Token id or token name (`operator` for the operator's records).
    pub actor: Option<String>,
    /// Exact action, e.g. `PATCH /v1/tenants/{name}` or `operator.KeyRotated`.
    pub action: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

fn time_param(field: &str, v: &Option<String>) -> Result<Option<String>, ApiError> {
    match v {
        None => Ok(None),
        Some(t) => time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
            .map(|_| Some(t.clone()))
            .map_err(|e| ApiError::BadRequest {
                message: format!(
                    "{field} {t:?} is not an RFC 3339 time such as 2026-11-29T20:00:00Z: {e}"
                ),
                field: Some(field.into()),
            }),
    }
}

/// The records of the tenant and its descendants (API calls, request decisions, operator
/// actions), newest first. Needs `audit.read`.
#[utoipa::path(get, path = "/v1/tenants/{name}/audit", tag = "audit",
    params(("name" = String, Path, description = "tenant name"), AuditQuery),
    responses(
        (status = 200, description = "records, newest first", body = List<Record>),
        (status = 400, description = "bad filter or cursor; `field` names it", body = ErrorBody),
        (status = 401, description = "no or bad token", body = ErrorBody),
        (status = 403, description = "the role lacks `audit.read`", body = ErrorBody),
        (status = 404, description = "outside the subtree or missing", body = ErrorBody),
    ))]
pub async fn tenant_audit(
    State(api): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    QueryOf(q): QueryOf<AuditQuery>,
) -> Result<Json<List<Record>>, ApiError> {
    caller.require(Permission::AuditRead)?;
    api.cache
        .view()
        .with_tree(|tree| caller.scope(tree, &name).map(|_| ()))?;
    let (limit, after) = Page {
        limit: q.limit,
        cursor: q.cursor.clone(),
    }
    .parse()?;
    let before = match after {
        None => None,
        Some(a) => Some(
            a.split_once('.')
                .and_then(|(at, id)| Some((at.parse::<i64>().ok()?, id.parse::<i64>().ok()?)))
                .ok_or_else(|| ApiError::BadRequest {
                    message:
                        "cursor is not a cursor returned by this API (pass `next` back unchanged)"
                            .into(),
                    field: Some("cursor".into()),
                })?,
        ),
    };
    for (field, v) in [("actor", &q.actor), ("action", &q.action)] {
        if v.as_deref()
            .is_some_and(|t| t.len() > 200 || t.chars().any(char::is_control))
        {
            return Err(ApiError::BadRequest {
                message: format!("{field}: at most 200 characters, no control characters"),
                field: Some(field.into()),
            });
        }
    }
    let filter = Filter {
        tenant: name,
        from: time_param("from", &q.from)?,
        to: time_param("to", &q.to)?,
        actor: q.actor.clone(),
        action: q.action.clone(),
        before,
        limit: limit as i64 + 1,
    };
    let c = api.store.conn().await?;
    let mut items = crate::audit::query(&**c, &filter)
        .await
        .map_err(|e| ApiError::from(super::super::store::StoreError::Query(e.to_string())))?;
    let next = if items.len() > limit {
        items.truncate(limit);
        items
            .last()
            .map(|r| encode_cursor(&format!("{}.{}", r.at_micros, r.id)))
    } else {
        None
    };
    Ok(Json(List { items, next }))
}
