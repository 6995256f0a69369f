//! `/v1/tokens`: admins mint, list and revoke API tokens for their subtree. The secret is
//! shown once, in the answer to `POST`; lists never show it.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use crate::hierarchy::roles::Permission;

use super::super::auth;
use super::super::authz::Caller;
use super::super::body::{JsonBody, QueryOf};
use super::super::errors::{ApiError, ErrorBody};
use super::super::server::{Api, AppState};
use super::super::store::TokenRecord;
use super::{List, Page, rfc3339};

/// Default token lifetime.
pub const DEFAULT_EXPIRES: &str = "30d";

/// `POST /v1/tokens` body: `{tenant, role, expires?, name?}`.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenCreate {
    /// A tenant of the caller's subtree.
    pub tenant: String,
    /// `admin`, `technician`, `viewer` or a custom role usable at `tenant`; never more than
    /// the caller's own role holds.
    pub role: String,
    /// Lifetime: a number with `m`, `h` or `d` (default `30d`, at most `366d`).
    #[serde(default)]
    pub expires: Option<String>,
    /// A label for people (at most 100 characters).
    #[serde(default)]
    pub name: Option<String>,
}

/// The answer to `POST /v1/tokens`: the only time `token` is shown.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenCreated {
    pub id: String,
    /// `silo_<id>_<secret>`: send as `Authorization: Bearer …`.
    pub token: String,
    pub tenant: String,
    pub role: String,
    /// RFC 3339.
    pub expires_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A token as listed (never its secret).
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenOut {
    pub id: String,
    pub tenant: String,
    pub role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The minting token's id, or `cli`.
    pub created_by: String,
    pub created_at: String,
    pub expires_at: String,
    pub expired: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
}

impl From<TokenRecord> for TokenOut {
    fn from(r: TokenRecord) -> Self {
        TokenOut {
            id: r.id,
            tenant: r.tenant,
            role: r.role,
            name: r.name,
            created_by: r.created_by,
            created_at: rfc3339(r.created_at),
            expires_at: rfc3339(r.expires_at),
            expired: r.expired,
            revoked_at: r.revoked_at.map(rfc3339),
        }
    }
}

/// Filters of `GET /v1/tokens`.
#[derive(Clone, Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TokenQuery {
    /// Only tokens of this tenant (inside the caller's subtree).
    pub tenant: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// `?id=` of `DELETE /v1/tokens`.
#[derive(Clone, Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct IdQuery {
    /// The token id.
    pub id: String,
}

/// Mints a token for a tenant of the subtree.
#[utoipa::path(post, path = "/v1/tokens", tag = "tokens",
    request_body = TokenCreate,
    responses(
        (status = 201, description = "minted; `token` is shown only here", body = TokenCreated),
        (status = 400, description = "not JSON", body = ErrorBody),
        (status = 401, description = "no or bad token", body = ErrorBody),
        (status = 403, description = "the role lacks `tokens.manage`, or the new token's role grants more than the caller holds", body = ErrorBody),
        (status = 404, description = "`tenant` outside the subtree or missing", body = ErrorBody),
        (status = 422, description = "undefined role, bad `expires` or `name`; `field` names it", body = ErrorBody),
        (status = 429, description = "too many requests", body = ErrorBody),
    ))]
pub async fn create_token(
    State(api): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<TokenCreate>,
) -> Result<(StatusCode, Json<TokenCreated>), ApiError> {
    caller.require(Permission::TokensManage)?;
    let target = body.tenant.clone();
    api.mutate(&caller, "tokens.create", &target, async {
        let perms = api.cache.view().with_tree(|tree| {
            let id = caller.scope(tree, &body.tenant)?;
            tree.resolve_role(id, &body.role)
                .map(|r| r.permissions)
                .ok_or_else(|| {
                    ApiError::invalid(
                        "role",
                        format!(
                            "role {:?} is not defined for tenant {:?}: use admin, technician, viewer or a custom role defined there or above (GET /v1/roles)",
                            body.role, body.tenant
                        ),
                    )
                })
        })?;
        caller.require_superset(perms, &format!("a token with role {:?}", body.role))?;
        let ttl = auth::parse_duration(body.expires.as_deref().unwrap_or(DEFAULT_EXPIRES))
            .map_err(|e| ApiError::invalid("expires", e))?;
        if let Some(n) = &body.name
            && (n.chars().count() > 100 || n.chars().any(char::is_control))
        {
            return Err(ApiError::invalid(
                "name",
                "at most 100 characters, no control characters",
            ));
        }
        let minted = auth::mint();
        let rec = api
            .store
            .insert_token(
                &minted,
                &body.tenant,
                &body.role,
                body.name.as_deref(),
                &caller.token_id,
                ttl,
            )
            .await?;
        Ok((
            StatusCode::CREATED,
            Json(TokenCreated {
                id: rec.id,
                token: minted.token,
                tenant: rec.tenant,
                role: rec.role,
                expires_at: rfc3339(rec.expires_at),
                name: rec.name,
            }),
        ))
    })
    .await
}

/// Tokens of the subtree that are not revoked (expired ones included, marked), by id.
#[utoipa::path(get, path = "/v1/tokens", tag = "tokens",
    params(TokenQuery),
    responses(
        (status = 200, description = "tokens (never their secrets)", body = List<TokenOut>),
        (status = 400, description = "bad query", body = ErrorBody),
        (status = 401, description = "no or bad token", body = ErrorBody),
        (status = 403, description = "the role lacks `tokens.manage`", body = ErrorBody),
        (status = 404, description = "`tenant` outside the subtree or missing", body = ErrorBody),
    ))]
pub async fn list_tokens(
    State(api): State<AppState>,
    caller: Caller,
    QueryOf(q): QueryOf<TokenQuery>,
) -> Result<Json<List<TokenOut>>, ApiError> {
    caller.require(Permission::TokensManage)?;
    let (limit, after) = Page {
        limit: q.limit,
        cursor: q.cursor.clone(),
    }
    .parse()?;
    if after.as_deref().is_some_and(|a| !auth::is_token_id(a)) {
        return Err(ApiError::BadRequest {
            message: "cursor is not a cursor returned by this API (pass `next` back unchanged)"
                .into(),
            field: Some("cursor".into()),
        });
    }
    let tenants: Vec<String> = api.cache.view().with_tree(|tree| {
        Ok::<_, ApiError>(match &q.tenant {
            Some(t) => vec![tree.name(caller.scope(tree, t)?).to_string()],
            None => {
                let home = caller.home(tree)?;
                std::iter::once(home)
                    .chain(tree.descendants(home))
                    .map(|id| tree.name(id).to_string())
                    .collect()
            }
        })
    })?;
    let rows = api
        .store
        .tokens(&tenants, after.as_deref(), limit as i64 + 1)
        .await?;
    let (items, next) = super::paginate(rows, |r| r.id.as_str(), limit, None);
    Ok(Json(List {
        items: items.into_iter().map(TokenOut::from).collect(),
        next,
    }))
}

async fn revoke(api: &Api, caller: &Caller, id: &str) -> Result<Json<TokenOut>, ApiError> {
    let not_found = || ApiError::not_found("token");
    if !auth::is_token_id(id) {
        return Err(not_found());
    }
    let rec = api.store.token(id).await?.ok_or_else(not_found)?;
    let perms = api.cache.view().with_tree(|tree| {
        let tid = caller.scope(tree, &rec.tenant).map_err(|_| not_found())?;
        Ok::<_, ApiError>(tree.resolve_role(tid, &rec.role).map(|r| r.permissions))
    })?;
    if let Some(perms) = perms {
        caller.require_superset(perms, &format!("revoking a token with role {:?}", rec.role))?;
    }
    api.store.revoke(id).await?;
    let rec = api.store.token(id).await?.ok_or_else(not_found)?;
    Ok(Json(TokenOut::from(rec)))
}

/// Revokes a token of the subtree (`?id=`); effective on the next request, on every replica.
#[utoipa::path(delete, path = "/v1/tokens", tag = "tokens",
    params(IdQuery),
    responses(
        (status = 200, description = "revoked", body = TokenOut),
        (status = 400, description = "no `id`", body = ErrorBody),
        (status = 401, description = "no or bad token", body = ErrorBody),
        (status = 403, description = "the role lacks `tokens.manage` or the token's role grants more than the caller holds", body = ErrorBody),
        (status = 404, description = "no such token in the subtree", body = ErrorBody),
        (status = 429, description = "too many requests", body = ErrorBody),
    ))]
pub async fn revoke_token_query(
    State(api): State<AppState>,
    caller: Caller,
    QueryOf(q): QueryOf<IdQuery>,
) -> Result<Json<TokenOut>, ApiError> {
    caller.require(Permission::TokensManage)?;
    api.mutate(
        &caller,
        "tokens.revoke",
        &q.id,
        revoke(&api, &caller, &q.id),
    )
    .await
}

/// Revokes a token of the subtree (the id in the path).
#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "tokens",
    params(("id" = String, Path, description = "token id")),
    responses(
        (status = 200, description = "revoked", body = TokenOut),
        (status = 401, description = "no or bad token", body = ErrorBody),
        (status = 403, description = "the role lacks `tokens.manage` or the token's role grants more than the caller holds", body = ErrorBody),
        (status = 404, description = "no such token in the subtree", body = ErrorBody),
        (status = 429, description = "too many requests", body = ErrorBody),
    ))]
pub async fn revoke_token(
    State(api): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<TokenOut>, ApiError> {
    caller.require(Permission::TokensManage)?;
    api.mutate(&caller, "tokens.revoke", &id, revoke(&api, &caller, &id))
        .await
}
