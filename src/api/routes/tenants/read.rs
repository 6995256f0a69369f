//! The reading handlers of `/v1/tenants` (list, one tenant with its `ETag`, the subtree,
//! usage against limits), and how usage is figured from the tree and the device registry.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::api::authz::Caller;
use crate::api::body::QueryOf;
use crate::api::cache::TenantExtra;
use crate::api::errors::{ApiError, ErrorBody};
use crate::api::routes::{List, Page, paginate};
use crate::api::server::{Api, AppState};
use crate::hierarchy::roles::Permission;
use crate::hierarchy::{NodeId, TenantTree, quota::format_quota};
use crate::types::tenant::UsageStatus;
use crate::types::{CountResource, QuotaResource, Tenant};

use super::shapes::{
    CountUsage, QuotaUsage, TenantOut, TenantQuery, TreeNode, UsageOut, tenant_out,
};

/// Tenant `name` inside the caller's subtree: the engine's copy (spec, uid, resourceVersion)
/// and its node, or the one 404.
pub fn current(api: &Api, caller: &Caller, name: &str) -> Result<(Tenant, TenantExtra), ApiError> {
    let t = api.cache.view().with_tree(|tree| {
        let id = caller.scope(tree, name)?;
        Ok::<_, ApiError>(tree.tenant(id).clone())
    })?;
    let extra = (*api.cache.extra(name)).clone();
    Ok((t, extra))
}

/// Lists the caller's subtree (or the children of `parent`), filtered, sorted by name.
#[utoipa::path(get, path = "/v1/tenants", tag = "tenants",
    params(TenantQuery),
    responses(
        (status = 200, description = "tenants of the caller's subtree", body = List<TenantOut>),
        (status = 400, description = "bad query", body = ErrorBody),
        (status = 401, description = "no or bad token", body = ErrorBody),
        (status = 403, description = "the role cannot read tenants", body = ErrorBody),
        (status = 404, description = "`parent` is outside the subtree or missing", body = ErrorBody),
    ))]
pub async fn list_tenants(
    State(api): State<AppState>,
    caller: Caller,
    QueryOf(q): QueryOf<TenantQuery>,
) -> Result<Json<List<TenantOut>>, ApiError> {
    caller.require(Permission::TenantsRead)?;
    let (limit, after) = Page {
        limit: q.limit,
        cursor: q.cursor.clone(),
    }
    .parse()?;
    let needle = q.q.as_deref().map(str::to_lowercase);
    api.cache.view().with_tree(|tree| {
        let home = caller.home(tree)?;
        let mut ids: Vec<NodeId> = match &q.parent {
            Some(p) => tree.node(caller.scope(tree, p)?).children.clone(),
            None => {
                let mut v = tree.descendants(home);
                v.push(home);
                v
            }
        };
        ids.retain(|&id| {
            let t = tree.tenant(id);
            q.isolation.is_none_or(|i| t.spec.isolation == i)
                && needle.as_deref().is_none_or(|n| {
                    t.name().contains(n) || t.spec.display_name.to_lowercase().contains(n)
                })
        });
        ids.sort_by(|a, b| tree.name(*a).cmp(tree.name(*b)));
        let mut matching = Vec::with_capacity(ids.len().min(limit + 1));
        for id in ids {
            if after.as_deref().is_some_and(|a| tree.name(id) <= a) {
                continue;
            }
            let extra = api.cache.extra(tree.name(id));
            if let Some(phase) = q.phase {
                let has = extra
                    .status
                    .as_ref()
                    .and_then(|s| s.phase)
                    .unwrap_or_default();
                if has != phase {
                    continue;
                }
            }
            matching.push(tenant_out(tree, id, &extra));
            if matching.len() > limit {
                break;
            }
        }
        let (items, next) = paginate(matching, |t| t.name.as_str(), limit, None);
        Ok(Json(List { items, next }))
    })
}

/// One tenant, with `ETag` = its resourceVersion.
#[utoipa::path(get, path = "/v1/tenants/{name}", tag = "tenants",
    params(("name" = String, Path, description = "tenant name")),
    responses(
        (status = 200, description = "the tenant", body = TenantOut,
            headers(("ETag" = String, description = "resourceVersion, for If-Match"))),
        (status = 401, description = "no or bad token", body = ErrorBody),
        (status = 403, description = "the role cannot read tenants", body = ErrorBody),
        (status = 404, description = "outside the subtree or missing", body = ErrorBody),
    ))]
pub async fn get_tenant(
    State(api): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Permission::TenantsRead)?;
    let (t, extra) = current(&api, &caller, &name)?;
    let out = TenantOut {
        name: t.name().to_string(),
        spec: t.spec,
        status: extra.status.clone().unwrap_or_default(),
    };
    Ok(with_etag(
        Json(out).into_response(),
        extra.resource_version.as_deref(),
    ))
}

fn with_etag(mut resp: Response, rv: Option<&str>) -> Response {
    if let Some(v) = rv.and_then(|rv| header::HeaderValue::from_str(&format!("\"{rv}\"")).ok()) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
}

/// The subtree below `name` with effective limits and usage.
#[utoipa::path(get, path = "/v1/tenants/{name}/tree", tag = "tenants",
    params(("name" = String, Path, description = "tenant name")),
    responses(
        (status = 200, description = "the subtree", body = TreeNode),
        (status = 401, description = "no or bad token", body = ErrorBody),
        (status = 403, description = "the role cannot read tenants", body = ErrorBody),
        (status = 404, description = "outside the subtree or missing", body = ErrorBody),
    ))]
pub async fn tenant_tree(
    State(api): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<TreeNode>, ApiError> {
    caller.require(Permission::TenantsRead)?;
    api.cache
        .view()
        .with_tree(|tree| caller.scope(tree, &name))?;
    let devices = api
        .store
        .device_counts(std::slice::from_ref(&name), false)
        .await?;
    api.cache.view().with_tree(|tree| {
        let id = caller.scope(tree, &name)?;
        // One read lock on the statuses for the whole subtree (lock order: tree, then extras),
        // and suspension passed down instead of walking the ancestors of every node.
        let suspended = tree.suspended_by(id).is_some();
        Ok(api
            .cache
            .with_extras(|extras| Json(tree_node(extras, tree, id, suspended, &devices))))
    })
}

/// Registered devices (own, subtree) per tenant name, from the device registry: they replace
/// the tree's observed `devices` usage in answers.
type DeviceCounts = BTreeMap<String, (i64, i64)>;

/// The subtree of `id`; `suspended`: `id` or an ancestor is suspended; `devices`: the
/// registry's counts.
fn tree_node(
    extras: &HashMap<String, Arc<TenantExtra>>,
    tree: &TenantTree,
    id: NodeId,
    suspended: bool,
    devices: &DeviceCounts,
) -> TreeNode {
    // Recursive: depth is bounded by maxDepth (≤ 64).
    let t = tree.tenant(id);
    let n = tree.node(id);
    let suspended = suspended || t.spec.suspended;
    TreeNode {
        name: t.name().to_string(),
        display_name: t.spec.display_name.clone(),
        depth: n.depth,
        isolation: t.spec.isolation,
        phase: extras
            .get(t.name())
            .and_then(|x| x.status.as_ref())
            .and_then(|s| s.phase),
        suspended,
        effective_limits: tree.effective_limits(id),
        usage: {
            let (own_devices, subtree_devices) = devices.get(t.name()).copied().unwrap_or_default();
            let mut u = UsageStatus {
                own: n.own,
                subtree: n.subtree,
            };
            u.own.devices = own_devices;
            u.subtree.devices = subtree_devices;
            u
        },
        children: n
            .children
            .iter()
            .map(|&c| tree_node(extras, tree, c, suspended, devices))
            .collect(),
    }
}

/// Per resource: own and subtree usage against the effective limit, and which tenant binds.
#[utoipa::path(get, path = "/v1/tenants/{name}/usage", tag = "tenants",
    params(("name" = String, Path, description = "tenant name")),
    responses(
        (status = 200, description = "usage against limits", body = UsageOut),
        (status = 401, description = "no or bad token", body = ErrorBody),
        (status = 403, description = "the role cannot read tenants", body = ErrorBody),
        (status = 404, description = "outside the subtree or missing", body = ErrorBody),
    ))]
pub async fn tenant_usage(
    State(api): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<UsageOut>, ApiError> {
    caller.require(Permission::TenantsRead)?;
    let chain = api.cache.view().with_tree(|tree| {
        let id = caller.scope(tree, &name)?;
        Ok::<_, ApiError>(
            std::iter::once(id)
                .chain(tree.ancestors(id))
                .map(|a| tree.name(a).to_string())
                .collect::<Vec<_>>(),
        )
    })?;
    let devices = api.store.device_counts(&chain, true).await?;
    api.cache.view().with_tree(|tree| {
        let id = caller.scope(tree, &name)?;
        let mut u = usage_of(tree, id);
        overlay_devices(tree, id, &mut u, &devices);
        Ok(Json(u))
    })
}

/// Replaces the `devices` entry of `usage` with the registry's counts: own and subtree of
/// the tenant, and the room left under each limit on its path (the tightest binds).
pub fn overlay_devices(
    tree: &TenantTree,
    id: NodeId,
    usage: &mut UsageOut,
    devices: &DeviceCounts,
) {
    let r = CountResource::Devices;
    let k = r.index();
    let subtree_of = |a: NodeId| devices.get(tree.name(a)).map_or(0, |c| c.1);
    let binding = std::iter::once(id)
        .chain(tree.ancestors(id))
        .filter(|&a| tree.node(a).counts[k] >= 0)
        .map(|a| (a, (tree.node(a).counts[k] - subtree_of(a)).max(0)))
        .min_by_key(|&(_, room)| room);
    if let Some(c) = usage.counts.get_mut(r.field()) {
        c.own = devices.get(tree.name(id)).map_or(0, |c| c.0);
        c.subtree = subtree_of(id);
        c.remaining = binding.map(|(_, room)| room);
        c.bound_by = binding.map(|(a, _)| tree.name(a).to_string());
    }
}

/// Usage of tenant `id` against the limits on its path.
pub fn usage_of(tree: &TenantTree, id: NodeId) -> UsageOut {
    let n = tree.node(id);
    let path: Vec<NodeId> = std::iter::once(id).chain(tree.ancestors(id)).collect();
    let mut counts = BTreeMap::new();
    for r in CountResource::ALL {
        let k = r.index();
        let binding = path
            .iter()
            .filter(|&&a| tree.node(a).counts[k] >= 0)
            .map(|&a| {
                let node = tree.node(a);
                (a, (node.counts[k] - node.subtree.get(r)).max(0))
            })
            .min_by_key(|&(_, room)| room);
        let limit = n.effective_counts[k];
        counts.insert(
            r.field().to_string(),
            CountUsage {
                own: n.own.get(r),
                subtree: n.subtree.get(r),
                limit: (limit >= 0).then_some(limit),
                remaining: binding.map(|(_, room)| room),
                bound_by: binding.map(|(a, _)| tree.name(a).to_string()),
            },
        );
    }
    let mut quotas = BTreeMap::new();
    for r in QuotaResource::ALL {
        let k = r.index();
        if let Some(v) = n.effective_quotas[k] {
            let from = path
                .iter()
                .find(|&&a| tree.node(a).quotas[k].is_some())
                .copied()
                .unwrap_or(id);
            quotas.insert(
                r.field().to_string(),
                QuotaUsage {
                    limit: format_quota(r, v),
                    bound_by: tree.name(from).to_string(),
                },
            );
        }
    }
    UsageOut {
        tenant: tree.name(id).to_string(),
        counts,
        quotas,
    }
}
