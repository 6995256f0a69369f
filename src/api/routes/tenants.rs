//! `/v1/tenants`: list, create, read, change (JSON merge patch), delete, tree, usage,
//! suspend, resume and rotate-key.
//!
//! Every change is judged by the admission webhook's own decision (`TreeView::decide`, the
//! same engine and messages) before it is written, and by the webhook again when it is.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::hierarchy::roles::{Permission, PermissionSet, builtin_permissions};
use crate::hierarchy::{NodeId, ObjectKind, TenantTree, quota::format_quota};
use crate::types::tenant::UsageStatus;
use crate::types::{
    CountResource, Isolation, Limits, Phase, QuotaResource, Tenant, TenantSpec, TenantStatus,
};
use crate::webhook::Proposal;

use super::super::authz::Caller;
use super::super::body::{JsonValue, QueryOf, from_value};
use super::super::cache::{ROTATE_KEY_ANNOTATION, TenantExtra};
use super::super::cluster::TenantApply;
use super::super::errors::{ApiError, ErrorBody};
use super::super::server::{Api, AppState};
use super::super::store::PendingCreation;
use super::{List, Page, paginate};

/// A tenant in a response: `{name, spec, status}` (SPEC "Shapes"). Its resourceVersion is
/// the `ETag` header of `GET /v1/tenants/{name}`; send it back as `If-Match` to make a PATCH
/// conditional.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TenantOut {
    pub name: String,
    pub spec: TenantSpec,
    pub status: TenantStatus,
}

/// `POST /v1/tenants` body: the spec's fields plus `name`; `parent` is required (a tenant
/// created through the API is placed inside the caller's subtree).
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TenantCreate {
    /// DNS label, unique in the cluster.
    pub name: String,
    #[serde(flatten)]
    pub spec: TenantSpec,
}

/// Filters of `GET /v1/tenants` (all optional; the caller's subtree is always the scope).
#[derive(Clone, Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TenantQuery {
    /// Only the direct children of this tenant (inside the caller's subtree).
    pub parent: Option<String>,
    /// Only tenants in this phase.
    #[param(value_type = Option<String>)]
    pub phase: Option<Phase>,
    /// Only `Siloed` or `Shared` tenants.
    #[param(value_type = Option<String>)]
    pub isolation: Option<Isolation>,
    /// Case-insensitive substring of the name or the displayName.
    pub q: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// One tenant of `GET /v1/tenants/{name}/tree`, with its children.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TreeNode {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub display_name: String,
    pub depth: u32,
    pub isolation: Isolation,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// The tenant or an ancestor is suspended.
    pub suspended: bool,
    pub effective_limits: Limits,
    pub usage: UsageStatus,
    #[schema(no_recursion)]
    pub children: Vec<TreeNode>,
}

/// Usage of one count resource.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CountUsage {
    /// The tenant alone.
    pub own: i64,
    /// The tenant and its descendants.
    pub subtree: i64,
    /// The tightest limit on the path root … tenant (absent = unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
    /// How much more the tenant may add before some limit on its path is reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining: Option<i64>,
    /// The tenant (itself or an ancestor) whose limit leaves the least room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound_by: Option<String>,
}

/// A quota in force and where it comes from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuotaUsage {
    pub limit: String,
    /// The tenant setting it (itself, or the nearest ancestor it inherits it from).
    pub bound_by: String,
}

/// `GET /v1/tenants/{name}/usage`.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageOut {
    pub tenant: String,
    /// `subtenants`, `devices`, `channels`, `mqttConnections`.
    pub counts: BTreeMap<String, CountUsage>,
    /// `cpu`, `memory`, `storage`, `pods` that are limited.
    pub quotas: BTreeMap<String, QuotaUsage>,
}

/// `POST /v1/tenants/{name}/rotate-key`: the request id; poll the tenant until
/// `status.key.rotationRequest` equals it.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RotationOut {
    pub id: String,
    pub tenant: String,
    /// `Requested`.
    pub status: String,
}

// ----- reading -----

/// The response shape of a tenant in the tree.
pub fn tenant_out(tree: &TenantTree, id: NodeId, extra: &TenantExtra) -> TenantOut {
    let t = tree.tenant(id);
    TenantOut {
        name: t.name().to_string(),
        spec: t.spec.clone(),
        status: extra.status.clone().unwrap_or_default(),
    }
}

/// The response shape of an object returned by the API server.
pub fn tenant_out_of(t: &Tenant) -> TenantOut {
    TenantOut {
        name: t.name().to_string(),
        spec: t.spec.clone(),
        status: t.status.clone().unwrap_or_default(),
    }
}

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

// ----- writing -----

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

/// Permissions a role resolved for a member of the tenant `target` (existing) or of a new
/// tenant below `parent`, whose spec is `spec` (its own `roles` count).
fn member_role(
    tree: &TenantTree,
    parent: Option<NodeId>,
    spec: &TenantSpec,
    role: &str,
) -> Option<PermissionSet> {
    builtin_permissions(role)
        .or_else(|| {
            spec.roles.iter().find(|r| r.name == role).map(|r| {
                r.permissions
                    .iter()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
        })
        .or_else(|| parent.and_then(|p| tree.resolve_role(p, role).map(|r| r.permissions)))
}

/// What the caller may change in a tenant's spec, field by field (creation: `target` None,
/// `old` the empty spec). Also refuses, with the one 404, references to profiles, channels
/// and tenants the caller cannot see (the engine's messages would tell them apart).
pub fn authorize_spec_change(
    caller: &Caller,
    tree: &TenantTree,
    target: Option<NodeId>,
    parent: Option<NodeId>,
    old: &TenantSpec,
    new: &TenantSpec,
) -> Result<(), ApiError> {
    let creating = target.is_none();
    let below = |what: &str| match target {
        Some(t) => caller.require_below(tree, t, what),
        None => Ok(()),
    };
    if old.limits != new.limits || old.limit_profile != new.limit_profile {
        caller.require(Permission::LimitsUpdate)?;
        below("limits")?;
    }
    if old.isolation != new.isolation {
        caller.require(Permission::IsolationUpdate)?;
        below("isolation")?;
    }
    if old.suspended != new.suspended {
        caller.require(Permission::Suspend)?;
        below("suspension")?;
    }
    if old.deletion_policy != new.deletion_policy {
        caller.require(Permission::TenantsDelete)?;
        below("deletionPolicy")?;
    }
    if old.admins != new.admins {
        caller.require(Permission::AdminsManage)?;
        // Who may be an admin at all (no `system:` users and groups, no service accounts of
        // other namespaces: `hierarchy::people`) is judged by the webhook decision below.
    }
    if old.roles != new.roles {
        caller.require(Permission::RolesManage)?;
        for r in &new.roles {
            if !old.roles.contains(r) {
                let perms = PermissionSet::parse(&r.permissions).unwrap_or_default();
                caller.require_superset(perms, &format!("role {:?}", r.name))?;
            }
        }
    }
    if old.members != new.members {
        caller.require(Permission::MembersManage)?;
        let changed = new
            .members
            .iter()
            .filter(|m| !old.members.contains(m))
            .map(|m| (m, new))
            .chain(
                old.members
                    .iter()
                    .filter(|m| !new.members.contains(m))
                    .map(|m| (m, old)),
            );
        for (m, spec) in changed {
            if let Some(perms) = member_role(tree, parent, spec, &m.role) {
                caller.require_superset(
                    perms,
                    &format!("member {:?} with role {:?}", m.user, m.role),
                )?;
            }
        }
    }
    let others_changed = {
        let mut a = old.clone();
        let mut b = new.clone();
        for s in [&mut a, &mut b] {
            s.limits = Limits::default();
            s.limit_profile = None;
            s.isolation = Isolation::Siloed;
            s.suspended = false;
            s.deletion_policy = Default::default();
            s.admins.clear();
            s.roles.clear();
            s.members.clear();
            s.parent = None;
        }
        a != b
    };
    if others_changed && !creating {
        caller.require(Permission::TenantsUpdate)?;
    }
    // References the caller must be able to see.
    let home = caller.home(tree)?;
    if let Some(p) = new.limit_profile.as_deref()
        && old.limit_profile.as_deref() != Some(p)
        && !profile_visible(tree, caller, home, p)
    {
        return Err(ApiError::not_found("limit profile"));
    }
    for c in &new.channels {
        if !old.channels.contains(c) && !channel_visible(tree, caller, home, c) {
            return Err(ApiError::not_found("channel"));
        }
    }
    Ok(())
}

/// A profile is visible when its owner is in the caller's subtree or above the caller's
/// tenant (those are the ones the caller's descendants may use).
pub fn profile_visible(tree: &TenantTree, caller: &Caller, home: NodeId, name: &str) -> bool {
    tree.profile(name).is_some_and(|p| {
        caller.sees(tree, &p.spec.owner)
            || tree
                .get(&p.spec.owner)
                .is_some_and(|o| tree.ancestors(home).any(|a| a == o))
    })
}

/// A channel is visible when its owner is in the caller's subtree or it is visible to the
/// caller's tenant.
pub fn channel_visible(tree: &TenantTree, caller: &Caller, home: NodeId, name: &str) -> bool {
    tree.channel_object(name)
        .is_some_and(|c| caller.sees(tree, &c.spec.owner) || tree.is_channel_visible(name, home))
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

/// Refuses (409 `RoleInUse`) removing a custom role from `old`'s `spec.roles` while a member or
/// a usable token still holds it: members of the tenant (as in `new`) or of a tenant below whose
/// role resolves to this definition (the nearest definition wins, so a redefinition further
/// down shadows it), and unrevoked, unexpired tokens of those tenants with that role. The
/// message names where it is used (at most ten places, then how many more). Without this, the
/// members' RoleBindings would point at a Role that no longer exists and the tokens would stop
/// authenticating with "role … is no longer defined".
pub async fn refuse_removing_used_roles(
    api: &Api,
    old: &Tenant,
    new: &TenantSpec,
) -> Result<(), ApiError> {
    let name = old.name();
    let removed: Vec<&str> = old
        .spec
        .roles
        .iter()
        .filter(|r| !new.roles.iter().any(|n| n.name == r.name))
        .map(|r| r.name.as_str())
        .collect();
    if removed.is_empty() {
        return Ok(());
    }
    // Per removed role: members holding it, and the tenants where it resolves to this definition.
    let found: Vec<(String, Vec<String>, Vec<String>)> = api.cache.view().with_tree(|tree| {
        let Some(id) = tree.get(name) else {
            return Vec::new();
        };
        removed
            .iter()
            .map(|role| {
                let (mut uses, mut tenants) = (Vec::new(), Vec::new());
                for d in std::iter::once(id).chain(tree.descendants(id)) {
                    let defined_here = tree
                        .resolve_role(d, role)
                        .and_then(|r| r.defined_by)
                        .is_some_and(|by| by == name);
                    if !defined_here {
                        continue;
                    }
                    let t = tree.name(d).to_string();
                    let members = if d == id {
                        &new.members
                    } else {
                        &tree.tenant(d).spec.members
                    };
                    for m in members.iter().filter(|m| m.role == *role) {
                        uses.push(format!("member {:?} of tenant {t:?}", m.user));
                    }
                    tenants.push(t);
                }
                (role.to_string(), uses, tenants)
            })
            .collect()
    });
    for (role, mut uses, tenants) in found {
        for t in api.store.usable_tokens_with_role(&tenants, &role).await? {
            uses.push(format!("token {} of tenant {:?}", t.id, t.tenant));
        }
        if uses.is_empty() {
            continue;
        }
        let more = uses.len().saturating_sub(10);
        uses.truncate(10);
        let mut list = uses.join(", ");
        if more > 0 {
            list.push_str(&format!(" and {more} more"));
        }
        return Err(ApiError::Conflict {
            reason: "RoleInUse",
            message: format!(
                "role {role:?} of tenant {name:?} is still used by {list}: give them another role or revoke the tokens first"
            ),
        });
    }
    Ok(())
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
