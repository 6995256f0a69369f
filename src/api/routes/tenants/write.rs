//! The changing handlers of `/v1/tenants` (create, merge-patch, delete, suspend, resume,
//! rotate-key), each through [`Api::mutate`] (audit, requested actions), and
//! [`write_tenant`], the one write of a changed spec after the webhook's own decision.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};

use crate::api::authz::Caller;
use crate::api::body::{JsonValue, from_value};
use crate::api::cache::{ROTATE_KEY_ANNOTATION, TenantExtra};
use crate::api::cluster::TenantApply;
use crate::api::errors::{ApiError, ErrorBody};
use crate::api::server::{Api, AppState};
use crate::api::store::PendingCreation;
use crate::hierarchy::ObjectKind;
use crate::hierarchy::roles::Permission;
use crate::types::{Tenant, TenantSpec};
use crate::webhook::Proposal;

use super::read::current;
use super::rules::{authorize_spec_change, refuse_removing_used_roles};
use super::shapes::{RotationOut, TenantCreate, TenantOut, tenant_out_of};

/// Splits a creation body into the name and the spec (strictly: unknown fields are named).
fn split_create(body: serde_json::Value) -> Result<(String, TenantSpec), ApiError> {
    let serde_json::Value::Object(mut map) = body else {
        return Err(ApiError::invalid("-", "a JSON object is expected"));
    };
    let name = match map.remove("name") {
        Some(serde_json::Value::String(n)) => n,
        Some(_) => return Err(ApiError::invalid("name", "must be a string")),
        None => return Err(ApiError::invalid("name", "required: the new tenant's name")),
    };
    let spec: TenantSpec = from_value(serde_json::Value::Object(map))?;
    Ok((name, spec))
}

/// Counts, as reservations, the creations other replicas recorded that this replica's watch
/// has not delivered yet.
pub fn reserve_pending(api: &Api, pending: Vec<PendingCreation>) {
    for p in pending {
        if api.cache.view().with_tree(|t| t.get(&p.name).is_some()) {
            continue;
        }
        if let Ok(t) = serde_json::from_value::<Tenant>(p.object) {
            // Admitted by the other replica: a refusal here changes nothing.
            let _ = api.cache.view().decide(&Proposal::CreateTenant(t), true);
        }
    }
}

/// Creates a child tenant inside the caller's subtree.
#[utoipa::path(post, path = "/v1/tenants", tag = "tenants",
    request_body = TenantCreate,
    responses(
        (status = 201, description = "created", body = TenantOut),
        (status = 400, description = "not JSON", body = ErrorBody),
        (status = 401, description = "no or bad token", body = ErrorBody),
        (status = 403, description = "the role lacks a permission, the caller's tenant is suspended, or a limit of the tree forbids it", body = ErrorBody),
        (status = 404, description = "the parent (or a profile or channel) is outside the subtree or missing", body = ErrorBody),
        (status = 409, description = "the name is taken", body = ErrorBody),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 422, description = "an invalid value; `field` names it", body = ErrorBody),
        (status = 429, description = "too many requests", body = ErrorBody),
    ))]
pub async fn create_tenant(
    State(api): State<AppState>,
    caller: Caller,
    JsonValue(body): JsonValue,
) -> Result<(StatusCode, Json<TenantOut>), ApiError> {
    caller.require(Permission::TenantsCreate)?;
    let (name, spec) = split_create(body)?;
    let target = name.clone();
    api.mutate(&caller, "tenants.create", &target, async {
        let parent = spec.parent.clone().ok_or_else(|| {
            ApiError::invalid(
                "parent",
                "required: a tenant created through the API is placed below a tenant of the caller's subtree",
            )
        })?;
        api.cache.view().with_tree(|tree| {
            let pid = caller.scope(tree, &parent)?;
            let empty = TenantSpec {
                parent: Some(parent.clone()),
                ..Default::default()
            };
            authorize_spec_change(&caller, tree, None, Some(pid), &empty, &spec)
        })?;
        let tenant = Tenant::new(&name, spec);
        let proposal = Proposal::CreateTenant(tenant.clone());
        // Judged once without the lock: invalid requests never wait for it.
        api.cache
            .view()
            .decide(&proposal, false)
            .map_err(|d| ApiError::from_denials(&d))?;
        let record = serde_json::to_value(&tenant).unwrap_or_default();
        let created = api
            .store
            .with_creation_lock("Tenant", &parent, &name, |pending| async {
                reserve_pending(&api, pending);
                api.cache
                    .view()
                    .decide(&proposal, true)
                    .map_err(|d| ApiError::from_denials(&d))?;
                match api.cluster.create_tenant(tenant.clone()).await {
                    Ok(created) => Ok((created, Some(record))),
                    Err(e) => {
                        api.cache.view().cancel_reservation(ObjectKind::Tenant, &name);
                        Err(e.into())
                    }
                }
            })
            .await?;
        api.cache
            .wait_for(
                &name,
                created.metadata.resource_version.as_deref(),
                api.read_your_writes,
            )
            .await;
        Ok((StatusCode::CREATED, Json(tenant_out_of(&created))))
    })
    .await
}

/// Writes a changed spec (and the API's annotations) with the resourceVersion it was
/// computed from, after the webhook's own decision.
pub async fn write_tenant(
    api: &Api,
    old: &Tenant,
    extra: &TenantExtra,
    new_spec: TenantSpec,
    annotations: BTreeMap<String, String>,
) -> Result<Tenant, ApiError> {
    refuse_removing_used_roles(api, old, &new_spec).await?;
    let mut new = old.clone();
    new.spec = new_spec;
    api.cache
        .view()
        .decide(
            &Proposal::UpdateTenant {
                old: Box::new(old.clone()),
                new: Box::new(new.clone()),
            },
            false,
        )
        .map_err(|d| ApiError::from_denials(&d))?;
    let written = api
        .cluster
        .apply_tenant(TenantApply {
            name: old.name().to_string(),
            spec: new.spec,
            annotations,
            resource_version: extra
                .resource_version
                .clone()
                .or_else(|| old.metadata.resource_version.clone()),
        })
        .await?;
    api.cache
        .wait_for(
            old.name(),
            written.metadata.resource_version.as_deref(),
            api.read_your_writes,
        )
        .await;
    Ok(written)
}

/// Changes a tenant with a JSON merge patch (RFC 7396) of its spec fields.
#[utoipa::path(patch, path = "/v1/tenants/{name}", tag = "tenants",
    params(("name" = String, Path, description = "tenant name"),
           ("If-Match" = Option<String>, Header, description = "the ETag read before: 409 if the tenant changed since")),
    request_body(content = Object, content_type = "application/merge-patch+json",
        description = "spec fields to set (null removes); `parent` cannot change"),
    responses(
        (status = 200, description = "changed", body = TenantOut),
        (status = 400, description = "not JSON", body = ErrorBody),
        (status = 401, description = "no or bad token", body = ErrorBody),
        (status = 403, description = "the role may not change a field, the caller's tenant is suspended, or the tree forbids it", body = ErrorBody),
        (status = 404, description = "outside the subtree or missing", body = ErrorBody),
        (status = 409, description = "changed since it was read", body = ErrorBody),
        (status = 413, description = "body too large", body = ErrorBody),
        (status = 422, description = "an invalid value; `field` names it", body = ErrorBody),
        (status = 429, description = "too many requests", body = ErrorBody),
    ))]
pub async fn patch_tenant(
    State(api): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    headers: HeaderMap,
    JsonValue(patch): JsonValue,
) -> Result<Json<TenantOut>, ApiError> {
    caller.require(Permission::TenantsRead)?;
    api.mutate(&caller, "tenants.update", &name, async {
        let (old, extra) = current(&api, &caller, &name)?;
        let serde_json::Value::Object(mut patch) = patch else {
            return Err(ApiError::invalid("-", "a JSON merge patch object is expected"));
        };
        match patch.remove("name") {
            None => {}
            Some(serde_json::Value::String(n)) if n == name => {}
            Some(_) => return Err(ApiError::invalid("name", "a tenant cannot be renamed")),
        }
        if let Some(expected) = headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok()) {
            let expected = expected.trim().trim_start_matches("W/").trim_matches('"');
            if extra.resource_version.as_deref() != Some(expected) {
                return Err(ApiError::Conflict {
                    reason: "Conflict",
                    message: format!(
                        "tenant {name:?} changed since it was read (If-Match {expected:?}, now {:?}): read it again and retry",
                        extra.resource_version.as_deref().unwrap_or("")
                    ),
                });
            }
        }
        let mut doc = serde_json::to_value(&old.spec).unwrap_or_default();
        json_patch::merge(&mut doc, &serde_json::Value::Object(patch));
        let new_spec: TenantSpec = from_value(doc)?;
        if new_spec.parent != old.spec.parent {
            // The webhook's own message (ParentImmutable).
            let mut new = old.clone();
            new.spec = new_spec;
            api.cache
                .view()
                .decide(
                    &Proposal::UpdateTenant {
                        old: Box::new(old.clone()),
                        new: Box::new(new),
                    },
                    false,
                )
                .map_err(|d| ApiError::from_denials(&d))?;
            return Err(ApiError::invalid("parent", "spec.parent is immutable"));
        }
        api.cache.view().with_tree(|tree| {
            let id = caller.scope(tree, &name)?;
            authorize_spec_change(&caller, tree, Some(id), tree.node(id).parent, &old.spec, &new_spec)
        })?;
        if new_spec == old.spec {
            return Ok(Json(TenantOut {
                name: name.clone(),
                spec: old.spec.clone(),
                status: extra.status.clone().unwrap_or_default(),
            }));
        }
        let written = write_tenant(&api, &old, &extra, new_spec, extra.annotations.clone()).await?;
        Ok(Json(tenant_out_of(&written)))
    })
    .await
}

/// Deletes a tenant strictly below the caller's: refused while it has children under
/// `deletionPolicy: Retain`; under `Cascade` the operator deletes the subtree bottom-up.
#[utoipa::path(delete, path = "/v1/tenants/{name}", tag = "tenants",
    params(("name" = String, Path, description = "tenant name")),
    responses(
        (status = 200, description = "deletion started (the operator cleans up, then the tenant disappears)", body = TenantOut),
        (status = 401, description = "no or bad token", body = ErrorBody),
        (status = 403, description = "the role may not delete, it is the caller's own tenant, or it has children under Retain", body = ErrorBody),
        (status = 404, description = "outside the subtree or missing", body = ErrorBody),
        (status = 429, description = "too many requests", body = ErrorBody),
    ))]
pub async fn delete_tenant(
    State(api): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<TenantOut>, ApiError> {
    caller.require(Permission::TenantsRead)?;
    api.mutate(&caller, "tenants.delete", &name, async {
        let (old, extra) = current(&api, &caller, &name)?;
        caller.require(Permission::TenantsDelete)?;
        api.cache.view().with_tree(|tree| {
            let id = caller.scope(tree, &name)?;
            caller.require_below(tree, id, "deletion")
        })?;
        api.cache
            .view()
            .decide(&Proposal::DeleteTenant(old.clone()), false)
            .map_err(|d| ApiError::from_denials(&d))?;
        api.cluster
            .delete_tenant(name.clone(), extra.uid.clone().or(old.metadata.uid.clone()))
            .await?;
        Ok(Json(TenantOut {
            name: name.clone(),
            spec: old.spec,
            status: extra.status.clone().unwrap_or_default(),
        }))
    })
    .await
}

async fn set_suspended(
    api: &Api,
    caller: &Caller,
    name: &str,
    suspended: bool,
) -> Result<Json<TenantOut>, ApiError> {
    let (old, extra) = current(api, caller, name)?;
    caller.require(Permission::Suspend)?;
    api.cache.view().with_tree(|tree| {
        let id = caller.scope(tree, name)?;
        caller.require_below(tree, id, "suspension")
    })?;
    if old.spec.suspended == suspended {
        return Ok(Json(TenantOut {
            name: name.to_string(),
            spec: old.spec,
            status: extra.status.clone().unwrap_or_default(),
        }));
    }
    let mut spec = old.spec.clone();
    spec.suspended = suspended;
    let written = write_tenant(api, &old, &extra, spec, extra.annotations.clone()).await?;
    Ok(Json(tenant_out_of(&written)))
}

/// Suspends a tenant strictly below the caller's, and with it its whole subtree.
#[utoipa::path(post, path = "/v1/tenants/{name}/suspend", tag = "tenants",
    params(("name" = String, Path, description = "tenant name")),
    responses(
        (status = 200, description = "suspended (spec.suspended = true)", body = TenantOut),
        (status = 401, description = "no or bad token", body = ErrorBody),
        (status = 403, description = "the role lacks `suspend`, or it is the caller's own tenant", body = ErrorBody),
        (status = 404, description = "outside the subtree or missing", body = ErrorBody),
        (status = 409, description = "changed concurrently", body = ErrorBody),
        (status = 429, description = "too many requests", body = ErrorBody),
    ))]
pub async fn suspend_tenant(
    State(api): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<TenantOut>, ApiError> {
    caller.require(Permission::TenantsRead)?;
    api.mutate(
        &caller,
        "tenants.suspend",
        &name,
        set_suspended(&api, &caller, &name, true),
    )
    .await
}

/// Resumes a suspended tenant strictly below the caller's.
#[utoipa::path(post, path = "/v1/tenants/{name}/resume", tag = "tenants",
    params(("name" = String, Path, description = "tenant name")),
    responses(
        (status = 200, description = "resumed (spec.suspended = false)", body = TenantOut),
        (status = 401, description = "no or bad token", body = ErrorBody),
        (status = 403, description = "the role lacks `suspend`, or it is the caller's own tenant", body = ErrorBody),
        (status = 404, description = "outside the subtree or missing", body = ErrorBody),
        (status = 409, description = "changed concurrently", body = ErrorBody),
        (status = 429, description = "too many requests", body = ErrorBody),
    ))]
pub async fn resume_tenant(
    State(api): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<TenantOut>, ApiError> {
    caller.require(Permission::TenantsRead)?;
    api.mutate(
        &caller,
        "tenants.resume",
        &name,
        set_suspended(&api, &caller, &name, false),
    )
    .await
}

/// Asks the operator to rotate the tenant's encryption key (sets the annotation
/// `silo.dev/rotate-key`); poll `status.key.rotationRequest` for the returned id.
#[utoipa::path(post, path = "/v1/tenants/{name}/rotate-key", tag = "tenants",
    params(("name" = String, Path, description = "tenant name")),
    responses(
        (status = 202, description = "rotation requested", body = RotationOut),
        (status = 401, description = "no or bad token", body = ErrorBody),
        (status = 403, description = "the role lacks `keys.rotate`", body = ErrorBody),
        (status = 404, description = "outside the subtree or missing", body = ErrorBody),
        (status = 409, description = "changed concurrently", body = ErrorBody),
        (status = 429, description = "too many requests", body = ErrorBody),
    ))]
pub async fn rotate_key(
    State(api): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<RotationOut>), ApiError> {
    caller.require(Permission::TenantsRead)?;
    api.mutate(&caller, "keys.rotate", &name, async {
        let (old, extra) = current(&api, &caller, &name)?;
        caller.require(Permission::KeysRotate)?;
        let id = format!(
            "rk-{}-{:08x}",
            time::OffsetDateTime::now_utc().unix_timestamp(),
            rand::random::<u32>()
        );
        let mut annotations = extra.annotations.clone();
        annotations.insert(ROTATE_KEY_ANNOTATION.to_string(), id.clone());
        write_tenant(&api, &old, &extra, old.spec.clone(), annotations).await?;
        Ok((
            StatusCode::ACCEPTED,
            Json(RotationOut {
                id,
                tenant: name.clone(),
                status: "Requested".into(),
            }),
        ))
    })
    .await
}
