//! `/v1/roles`: the built-in roles, custom roles usable in the caller's subtree, the permission
//! catalogue, and defining a custom role (stored in the defining tenant's `spec.roles`).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use crate::hierarchy::roles::{BUILTIN_ROLES, Permission, PermissionSet, builtin_permissions};
use crate::types::CustomRole;

use super::super::authz::Caller;
use super::super::body::{JsonBody, QueryOf};
use super::super::errors::{ApiError, ErrorBody};
use super::super::server::AppState;
use super::tenants::read::current;
use super::tenants::rules::authorize_spec_change;
use super::tenants::write::write_tenant;

/// A role: `{name, permissions}` (SPEC "Shapes"), with where it is defined.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RoleOut {
    pub name: String,
    pub permissions: Vec<String>,
    /// The defining tenant; absent for a built-in role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    pub builtin: bool,
}

/// One permission of the catalogue.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PermissionInfo {
    pub name: String,
    pub description: String,
}

/// `GET /v1/roles`: `{items, next, catalogue}`.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RoleList {
    pub items: Vec<RoleOut>,
    pub next: Option<String>,
    /// The fixed permission catalogue custom roles are built from.
    pub catalogue: Vec<PermissionInfo>,
}

/// `POST /v1/roles` body.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleCreate {
    /// DNS label, not `admin`, `technician` or `viewer`.
    pub name: String,
    /// Names from the catalogue; never more than the caller's own role holds.
    pub permissions: Vec<String>,
    /// The tenant defining it (default: the caller's); usable there and below.
    #[serde(default)]
    pub tenant: Option<String>,
}

/// `?tenant=` of `GET /v1/roles`.
#[derive(Clone, Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RoleQuery {
    /// Only the roles usable at this tenant (inside the caller's subtree).
    pub tenant: Option<String>,
}

fn out(name: &str, permissions: PermissionSet, tenant: Option<String>) -> RoleOut {
    RoleOut {
        name: name.to_string(),
        permissions: permissions.names(),
        builtin: tenant.is_none(),
        tenant,
    }
}

/// Roles usable in the caller's subtree and the permission catalogue.
#[utoipa::path(get, path = "/v1/roles", tag = "roles",
    params(RoleQuery),
    responses(
        (status = 200, description = "built-in and custom roles, and the catalogue", body = RoleList),
        (status = 401, description = "no or bad token", body = ErrorBody),
        (status = 403, description = "the role cannot read tenants", body = ErrorBody),
        (status = 404, description = "`tenant` outside the subtree or missing", body = ErrorBody),
    ))]
pub async fn list_roles(
    State(api): State<AppState>,
    caller: Caller,
    QueryOf(q): QueryOf<RoleQuery>,
) -> Result<Json<RoleList>, ApiError> {
    caller.require(Permission::TenantsRead)?;
    let mut items: Vec<RoleOut> = BUILTIN_ROLES
        .iter()
        .filter_map(|r| builtin_permissions(r).map(|p| out(r, p, None)))
        .collect();
    api.cache.view().with_tree(|tree| {
        let at = match &q.tenant {
            Some(t) => caller.scope(tree, t)?,
            None => caller.home(tree)?,
        };
        for r in tree.roles_usable_at(at) {
            items.push(out(&r.name, r.permissions, r.defined_by));
        }
        if q.tenant.is_none() {
            for d in tree.descendants(at) {
                for r in &tree.tenant(d).spec.roles {
                    let perms = r
                        .permissions
                        .iter()
                        .filter_map(|p| p.parse().ok())
                        .collect();
                    items.push(out(&r.name, perms, Some(tree.name(d).to_string())));
                }
            }
        }
        Ok::<_, ApiError>(())
    })?;
    Ok(Json(RoleList {
        items,
        next: None,
        catalogue: Permission::ALL
            .iter()
            .map(|p| PermissionInfo {
                name: p.as_str().to_string(),
                description: p.description().to_string(),
            })
            .collect(),
    }))
}

/// Defines a custom role for a tenant of the subtree (usable there and below).
#[utoipa::path(post, path = "/v1/roles", tag = "roles",
    request_body = RoleCreate,
    responses(
        (status = 201, description = "defined", body = RoleOut),
        (status = 400, description = "not JSON", body = ErrorBody),
        (status = 401, description = "no or bad token", body = ErrorBody),
        (status = 403, description = "the role lacks `roles.manage` or would grant more than it holds", body = ErrorBody),
        (status = 404, description = "`tenant` outside the subtree or missing", body = ErrorBody),
        (status = 409, description = "the tenant already defines a role of that name", body = ErrorBody),
        (status = 422, description = "invalid name or unknown permission; `field` names it", body = ErrorBody),
        (status = 429, description = "too many requests", body = ErrorBody),
    ))]
pub async fn create_role(
    State(api): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<RoleCreate>,
) -> Result<(StatusCode, Json<RoleOut>), ApiError> {
    caller.require(Permission::RolesManage)?;
    let tenant = body.tenant.clone().unwrap_or_else(|| caller.tenant.clone());
    api.mutate(&caller, "roles.create", &tenant, async {
        let (old, extra) = current(&api, &caller, &tenant)?;
        let perms = PermissionSet::parse(&body.permissions)
            .map_err(|(k, reason)| ApiError::invalid(format!("permissions[{k}]"), reason))?;
        if old.spec.roles.iter().any(|r| r.name == body.name) {
            return Err(ApiError::Conflict {
                reason: "AlreadyExists",
                message: format!("tenant {tenant:?} already defines a role {:?}", body.name),
            });
        }
        let mut spec = old.spec.clone();
        spec.roles.push(CustomRole {
            name: body.name.clone(),
            permissions: perms.names(),
        });
        api.cache.view().with_tree(|tree| {
            let id = caller.scope(tree, &tenant)?;
            authorize_spec_change(
                &caller,
                tree,
                Some(id),
                tree.node(id).parent,
                &old.spec,
                &spec,
            )
        })?;
        write_tenant(&api, &old, &extra, spec, extra.annotations.clone())
            .await
            .map_err(|e| match e {
                ApiError::Denied {
                    code,
                    reason,
                    message,
                    field: Some(f),
                } if f.starts_with("roles[") => ApiError::Denied {
                    code,
                    reason,
                    message,
                    field: Some(f.split_once('.').map_or(f.clone(), |(_, r)| r.to_string())),
                },
                other => other,
            })?;
        Ok((
            StatusCode::CREATED,
            Json(out(&body.name, perms, Some(tenant.clone()))),
        ))
    })
    .await
}

/// Removes a custom role from the defining tenant's `spec.roles` (default: the caller's tenant).
/// Refused with 409 `RoleInUse`, naming where, while a member or a usable token holds it
/// ([`super::tenants::rules::refuse_removing_used_roles`]; the same check guards a `PATCH` of
/// `roles`).
#[utoipa::path(delete, path = "/v1/roles/{name}", tag = "roles",
    params(("name" = String, Path, description = "custom role name"), RoleQuery),
    responses(
        (status = 200, description = "removed; the role as it was", body = RoleOut),
        (status = 401, description = "no or bad token", body = ErrorBody),
        (status = 403, description = "the role lacks `roles.manage`, or the caller's tenant is suspended", body = ErrorBody),
        (status = 404, description = "`tenant` outside the subtree or missing, or it defines no such role", body = ErrorBody),
        (status = 409, description = "still used by members or tokens (`RoleInUse`), or changed meanwhile", body = ErrorBody),
        (status = 429, description = "too many requests", body = ErrorBody),
    ))]
pub async fn delete_role(
    State(api): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    QueryOf(q): QueryOf<RoleQuery>,
) -> Result<Json<RoleOut>, ApiError> {
    caller.require(Permission::RolesManage)?;
    let tenant = q.tenant.clone().unwrap_or_else(|| caller.tenant.clone());
    api.mutate(&caller, "roles.delete", &tenant, async {
        let (old, extra) = current(&api, &caller, &tenant)?;
        let Some(role) = old.spec.roles.iter().find(|r| r.name == name).cloned() else {
            return Err(ApiError::NotFound(format!(
                "tenant {tenant:?} defines no role {name:?}"
            )));
        };
        let mut spec = old.spec.clone();
        spec.roles.retain(|r| r.name != name);
        api.cache.view().with_tree(|tree| {
            let id = caller.scope(tree, &tenant)?;
            authorize_spec_change(
                &caller,
                tree,
                Some(id),
                tree.node(id).parent,
                &old.spec,
                &spec,
            )
        })?;
        write_tenant(&api, &old, &extra, spec, extra.annotations.clone()).await?;
        let perms = role
            .permissions
            .iter()
            .filter_map(|p| p.parse().ok())
            .collect();
        Ok(Json(out(&name, perms, Some(tenant.clone()))))
    })
    .await
}
