//! `/v1/tenants/{name}/members`: users taking part in a tenant with a role (one user may be a
//! member of many tenants with different roles). The operator's RoleBindings follow the
//! tenant's `spec.members`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;

use crate::hierarchy::roles::Permission;
use crate::types::Member;

use super::super::authz::Caller;
use super::super::body::{JsonBody, QueryOf};
use super::super::errors::{ApiError, ErrorBody};
use super::super::server::{Api, AppState};
use super::List;
use super::tenants::read::current;
use super::tenants::rules::authorize_spec_change;
use super::tenants::write::write_tenant;

/// `?user=` of `DELETE /v1/tenants/{name}/members`.
#[derive(Clone, Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UserQuery {
    /// The member's user name.
    pub user: String,
}

/// The members of a tenant.
#[utoipa::path(get, path = "/v1/tenants/{name}/members", tag = "members",
    params(("name" = String, Path, description = "tenant name")),
    responses(
        (status = 200, description = "members", body = List<Member>),
        (status = 401, description = "no or bad token", body = ErrorBody),
        (status = 403, description = "the role cannot read tenants", body = ErrorBody),
        (status = 404, description = "outside the subtree or missing", body = ErrorBody),
    ))]
pub async fn list_members(
    State(api): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<List<Member>>, ApiError> {
    caller.require(Permission::TenantsRead)?;
    let (t, _) = current(&api, &caller, &name)?;
    Ok(Json(List {
        items: t.spec.members,
        next: None,
    }))
}

/// Adds a member, or changes the role of an existing one; only roles the caller holds itself.
#[utoipa::path(post, path = "/v1/tenants/{name}/members", tag = "members",
    params(("name" = String, Path, description = "tenant name")),
    request_body = Member,
    responses(
        (status = 201, description = "added", body = Member),
        (status = 200, description = "role changed (or unchanged)", body = Member),
        (status = 400, description = "not JSON", body = ErrorBody),
        (status = 401, description = "no or bad token", body = ErrorBody),
        (status = 403, description = "the role lacks `members.manage` or the member's role grants more than the caller holds", body = ErrorBody),
        (status = 404, description = "outside the subtree or missing", body = ErrorBody),
        (status = 409, description = "changed concurrently", body = ErrorBody),
        (status = 422, description = "invalid user or undefined role; `field` names it", body = ErrorBody),
        (status = 429, description = "too many requests", body = ErrorBody),
    ))]
pub async fn add_member(
    State(api): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    JsonBody(member): JsonBody<Member>,
) -> Result<(StatusCode, Json<Member>), ApiError> {
    caller.require(Permission::TenantsRead)?;
    api.mutate(&caller, "members.add", &name, async {
        let (old, extra) = current(&api, &caller, &name)?;
        let mut spec = old.spec.clone();
        let status = match spec.members.iter_mut().find(|m| m.user == member.user) {
            Some(m) if m.role == member.role => {
                caller.require(Permission::MembersManage)?;
                return Ok((StatusCode::OK, Json(member.clone())));
            }
            Some(m) => {
                m.role = member.role.clone();
                StatusCode::OK
            }
            None => {
                spec.members.push(member.clone());
                StatusCode::CREATED
            }
        };
        change(&api, &caller, &name, &old, &extra, spec).await?;
        Ok((status, Json(member.clone())))
    })
    .await
}

async fn change(
    api: &Api,
    caller: &Caller,
    name: &str,
    old: &crate::types::Tenant,
    extra: &super::super::cache::TenantExtra,
    spec: crate::types::TenantSpec,
) -> Result<(), ApiError> {
    api.cache.view().with_tree(|tree| {
        let id = caller.scope(tree, name)?;
        authorize_spec_change(
            caller,
            tree,
            Some(id),
            tree.node(id).parent,
            &old.spec,
            &spec,
        )
    })?;
    write_tenant(api, old, extra, spec, extra.annotations.clone())
        .await
        .map_err(|e| match e {
            // The engine names `spec.members[k].role`; the body's field is `role`.
            ApiError::Denied {
                code,
                reason,
                message,
                field: Some(f),
            } if f.starts_with("members[") => ApiError::Denied {
                code,
                reason,
                message,
                field: Some(f.rsplit('.').next().unwrap_or("role").to_string()),
            },
            other => other,
        })?;
    Ok(())
}

async fn remove(
    api: &Api,
    caller: &Caller,
    name: &str,
    user: &str,
) -> Result<Json<Member>, ApiError> {
    let (old, extra) = current(api, caller, name)?;
    let mut spec = old.spec.clone();
    let Some(pos) = spec.members.iter().position(|m| m.user == user) else {
        caller.require(Permission::MembersManage)?;
        return Err(ApiError::not_found("member"));
    };
    let removed = spec.members.remove(pos);
    change(api, caller, name, &old, &extra, spec).await?;
    Ok(Json(removed))
}

/// Removes a member (`?user=`), only one whose role the caller holds itself.
#[utoipa::path(delete, path = "/v1/tenants/{name}/members", tag = "members",
    params(("name" = String, Path, description = "tenant name"), UserQuery),
    responses(
        (status = 200, description = "removed", body = Member),
        (status = 400, description = "no `user`", body = ErrorBody),
        (status = 401, description = "no or bad token", body = ErrorBody),
        (status = 403, description = "the role lacks `members.manage` or the member's role grants more than the caller holds", body = ErrorBody),
        (status = 404, description = "tenant outside the subtree or missing, or no such member", body = ErrorBody),
        (status = 409, description = "changed concurrently", body = ErrorBody),
        (status = 429, description = "too many requests", body = ErrorBody),
    ))]
pub async fn remove_member_query(
    State(api): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    QueryOf(q): QueryOf<UserQuery>,
) -> Result<Json<Member>, ApiError> {
    caller.require(Permission::TenantsRead)?;
    api.mutate(
        &caller,
        "members.remove",
        &name,
        remove(&api, &caller, &name, &q.user),
    )
    .await
}

/// Removes a member (the user in the path).
#[utoipa::path(delete, path = "/v1/tenants/{name}/members/{user}", tag = "members",
    params(("name" = String, Path, description = "tenant name"),
           ("user" = String, Path, description = "the member's user name")),
    responses(
        (status = 200, description = "removed", body = Member),
        (status = 401, description = "no or bad token", body = ErrorBody),
        (status = 403, description = "the role lacks `members.manage` or the member's role grants more than the caller holds", body = ErrorBody),
        (status = 404, description = "tenant outside the subtree or missing, or no such member", body = ErrorBody),
        (status = 409, description = "changed concurrently", body = ErrorBody),
        (status = 429, description = "too many requests", body = ErrorBody),
    ))]
pub async fn remove_member(
    State(api): State<AppState>,
    caller: Caller,
    Path((name, user)): Path<(String, String)>,
) -> Result<Json<Member>, ApiError> {
    caller.require(Permission::TenantsRead)?;
    api.mutate(
        &caller,
        "members.remove",
        &name,
        remove(&api, &caller, &name, &user),
    )
    .await
}
