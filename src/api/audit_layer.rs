//! The audit layer: a router-level middleware around every mutating route (every method but
//! GET, HEAD and OPTIONS), so routes added later are recorded without doing anything.
//!
//! For each call it
//! 1. authenticates once (the [`Caller`] extractor reuses the result, so the rate limiter
//!    counts the call once) and buffers the body (up to `api.maxBodyBytes`);
//! 2. runs the handler;
//! 3. when the handler refused the call for a requestable permission
//!    ([`Permission::REQUESTABLE`]) and the caller holds `requests.create`, stores a requested
//!    action instead and answers `202` with it (`api::requests`) — or the one 404 when the
//!    operation's tenant is outside the caller's subtree or missing;
//! 4. appends exactly one audit record: actor (token id and name, `-` without a valid token),
//!    tenant (the tenant the call is about when it is in the caller's subtree, else the
//!    caller's own: a probe outside the subtree lands in the prober's trail, never in the
//!    probed tenant's), action (`METHOD /route/{template}`), target (the concrete path, plus
//!    the new object's name for creations), summary (the body with secrets redacted, the
//!    refusal's message, the request id), outcome (status code and error reason).
//!
//! A failure to append is logged (`silo::api::audit` at error level); the
//! response is not changed, because the change it reports has already happened.

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::audit::{Entry, redact};
use crate::hierarchy::roles::Permission;

use super::authz::{Caller, path_of};
use super::errors::{ApiError, Refusal};
use super::server::{AppState, Authenticated, Execution};

/// What a handler may add to its call's audit record (response extension).
#[derive(Clone, Debug, Default)]
pub struct AuditNote {
    /// The tenant the call is about (must be in the caller's subtree).
    pub tenant: Option<String>,
    /// A better target than the request path (e.g. the new token's id).
    pub target: Option<String>,
    /// Merged into the summary.
    pub detail: Option<Value>,
}

/// The tenant an operation is about: `/v1/tenants/{name}/…` → name; otherwise the body's
/// `parent` (a new tenant), `tenant` or `owner`; None: the caller's own.
pub fn operation_tenant(path: &str, body: Option<&Value>) -> Option<String> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    if segs.len() >= 3 && segs[0] == "v1" && segs[1] == "tenants" {
        return Some(segs[2].to_string());
    }
    let body = body?;
    ["parent", "tenant", "owner"]
        .iter()
        .find_map(|k| body.get(*k).and_then(Value::as_str))
        .map(String::from)
}

/// The tenant and path (root … tenant) a record or request is filed under: the operation's
/// tenant when the caller sees it, else the caller's own; (`''`, []) without a caller.
pub fn filed_under(
    api: &super::Api,
    caller: Option<&Caller>,
    wanted: Option<&str>,
) -> (String, Vec<String>) {
    let Some(c) = caller else {
        return (String::new(), Vec::new());
    };
    api.cache.view().with_tree(|tree| {
        if let Some(w) = wanted
            && let Some(p) = c.path_in_scope(tree, w)
        {
            return (w.to_string(), p);
        }
        let path = tree
            .get(&c.tenant)
            .map(|id| path_of(tree, id))
            .unwrap_or_else(|| vec![c.tenant.clone()]);
        (c.tenant.clone(), path)
    })
}

/// The middleware (see the module documentation).
pub async fn audit_layer(State(api): State<AppState>, req: Request, next: Next) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(req).await;
    }
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(String::new, |m| m.as_str().to_string());
    let path = req.uri().path().to_string();
    let uri = req
        .uri()
        .path_and_query()
        .map_or_else(|| path.clone(), |p| p.as_str().to_string());
    let (mut parts, body) = req.into_parts();
    let execution = parts.extensions.get::<Execution>().cloned();
    let auth = api.caller_of(&parts).await;
    parts.extensions.insert(Authenticated(auth.clone()));
    let limit = api.config.api.max_body_bytes;
    let (resp, json_body) = match axum::body::to_bytes(body, limit as usize).await {
        Err(_) => (ApiError::PayloadTooLarge(limit).into_response(), None),
        Ok(bytes) => {
            let json_body: Option<Value> = serde_json::from_slice(&bytes).ok();
            let req = Request::from_parts(parts, Body::from(bytes));
            (next.run(req).await, json_body)
        }
    };
    let caller = auth.as_ref().ok();
    let wanted = operation_tenant(&path, json_body.as_ref());
    let mut resp = resp;
    let mut request_id = execution.as_ref().map(|e| e.request_id.clone());
    let refusal = resp.extensions().get::<Refusal>().cloned();
    if resp.status() == StatusCode::FORBIDDEN
        && execution.is_none()
        && let (Some(c), Some(r)) = (caller, refusal.as_ref())
        && let Some(p) = r.permission
        && p.is_requestable()
        && c.permissions.contains(Permission::RequestsCreate)
        && c.suspended_by.is_none()
    {
        let in_scope = wanted
            .as_deref()
            .is_none_or(|w| api.cache.view().with_tree(|tree| c.sees(tree, w)));
        let (tenant, tpath) = filed_under(&api, Some(c), wanted.as_deref());
        resp = if !in_scope {
            // The refusal came before the handler looked at the tenant: answer the one 404 a
            // request for a tenant outside the subtree (or missing) gets anyway.
            ApiError::not_found("tenant").into_response()
        } else {
            match super::requests::create(
                &api,
                c,
                super::requests::NewRequest {
                    method: method.as_str().to_string(),
                    uri: uri.clone(),
                    body: json_body.clone(),
                    tenant,
                    path: tpath,
                    permission: Some(p),
                },
            )
            .await
            {
                Ok(out) => {
                    request_id = Some(out.id.clone());
                    (StatusCode::ACCEPTED, axum::Json(out)).into_response()
                }
                Err(e) => e.into_response(),
            }
        };
    }
    let note = resp
        .extensions()
        .get::<AuditNote>()
        .cloned()
        .unwrap_or_default();
    let (tenant, tpath) = filed_under(&api, caller, note.tenant.as_deref().or(wanted.as_deref()));
    let target = note.target.clone().unwrap_or_else(|| {
        let created = (route == "/v1/tenants"
            || route.ends_with("/members")
            || route.ends_with("/devices")
            || route == "/v1/roles"
            || route == "/v1/limit-profiles"
            || route == "/v1/channels")
            .then(|| {
                json_body.as_ref().and_then(|b| {
                    ["name", "id", "user"]
                        .iter()
                        .find_map(|k| b.get(*k).and_then(Value::as_str))
                })
            })
            .flatten();
        match created {
            Some(n) => format!("{path}/{n}"),
            None => path.clone(),
        }
    });
    let mut summary = serde_json::Map::new();
    if let Some(b) = &json_body {
        summary.insert("body".into(), redact(b));
    }
    if let Some(q) = uri.split_once('?').map(|(_, q)| q) {
        summary.insert("query".into(), Value::String(q.chars().take(500).collect()));
    }
    let final_refusal = resp.extensions().get::<Refusal>().cloned();
    if let Some(r) = &final_refusal {
        summary.insert("error".into(), Value::String(r.message.clone()));
    }
    if let Some(id) = &request_id {
        summary.insert("request".into(), Value::String(id.clone()));
    }
    if let Some(e) = &execution {
        summary.insert(
            "requestedBy".into(),
            json!({"token": e.requested_by.0, "name": e.requested_by.1}),
        );
    }
    if let Some(Value::Object(d)) = note.detail.as_ref().map(redact) {
        summary.extend(d);
    }
    let status = resp.status();
    let outcome = match &final_refusal {
        Some(r) => r.reason.clone(),
        None if status == StatusCode::ACCEPTED && request_id.is_some() && execution.is_none() => {
            "Requested".to_string()
        }
        None => "ok".to_string(),
    };
    let entry = Entry {
        actor_token: caller.map_or_else(|| "-".to_string(), |c| c.token_id.clone()),
        actor_name: caller.map(|c| c.token_name.clone()).unwrap_or_default(),
        tenant,
        path: tpath,
        action: format!("{method} {route}"),
        target,
        summary: Value::Object(summary),
        status: i32::from(status.as_u16()),
        outcome,
    };
    if let Err(e) = api.store.append_audit(&entry).await {
        tracing::error!(target: "silo::api::audit", error = %e, action = %entry.action, "audit record not written");
    }
    resp
}
