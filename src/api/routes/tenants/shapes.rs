//! The bodies of `/v1/tenants`: what a request sends and a response shows (SPEC "Shapes"),
//! each a schema of the OpenAPI document, and the functions that build a [`TenantOut`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::api::cache::TenantExtra;
use crate::hierarchy::{NodeId, TenantTree};
use crate::types::tenant::UsageStatus;
use crate::types::{Isolation, Limits, Phase, Tenant, TenantSpec, TenantStatus};

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
