//! The `Tenant` kind: one company in the tree, and the silo the operator builds for it.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::limits::{Limits, UsageCounts};
use super::quantity::QuantityValue;
use super::schema::preserve_unknown_object;

/// A tenant (company) in the tree: main company, distributor, dealer or end customer.
#[derive(
    CustomResource,
    KubeSchema,
    Deserialize,
    Serialize,
    Clone,
    Debug,
    Default,
    PartialEq,
    utoipa::ToSchema,
)]
#[kube(
    group = "silo.dev",
    version = "v1alpha1",
    kind = "Tenant",
    plural = "tenants",
    shortname = "tn",
    category = "silo",
    status = "TenantStatus",
    doc = "A tenant in the Silo tree; the operator builds and keeps its isolated silo.",
    printcolumn(name = "Parent", type_ = "string", json_path = ".spec.parent"),
    printcolumn(name = "Depth", type_ = "integer", json_path = ".status.depth"),
    printcolumn(name = "Isolation", type_ = "string", json_path = ".spec.isolation"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Namespace", type_ = "string", json_path = ".status.namespace"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$') && size(self.metadata.name) <= 56").message("metadata.name must be a DNS label (lower-case letters, digits, '-') of at most 56 characters so that the namespace name fits")
)]
#[x_kube(
    validation = Rule::new("has(self.parent) == has(oldSelf.parent) && (!has(self.parent) || self.parent == oldSelf.parent)").message("spec.parent is immutable: a tenant cannot be moved to another parent").field_path(".parent")
)]
#[serde(rename_all = "camelCase")]
pub struct TenantSpec {
    /// Name of the parent Tenant; absent for a root tenant. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Human-readable name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub display_name: String,
    /// Siloed (dedicated database and broker in the namespace) or Shared (platform services).
    #[serde(default)]
    pub isolation: Isolation,
    /// Own limits; they override the ones of `limitProfile`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub limits: Limits,
    /// Name of a LimitProfile owned by a strict ancestor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_profile: Option<String>,
    /// Blocks the tenant and its whole subtree without deleting data.
    #[serde(default, skip_serializing_if = "is_false")]
    pub suspended: bool,
    /// Administrators of this tenant and its whole subtree.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub admins: Vec<Subject>,
    /// Users taking part in this tenant with a role.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<Member>,
    /// Names of master Channels this tenant uses; each must be visible to it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<DatabaseSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt: Option<MqttSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EncryptionSpec>,
    /// Free-form settings, inherited by descendants and overridden by their own.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "preserve_unknown_object")]
    #[schema(value_type = Object)]
    pub settings: BTreeMap<String, serde_json::Value>,
    /// Retain (refuse deletion while children exist) or Cascade (delete the subtree).
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// Custom roles this tenant defines for its subtree (`POST /v1/roles`), usable by members
    /// and API tokens of this tenant and every tenant below it; permissions come from the
    /// fixed catalogue in `hierarchy::roles`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<CustomRole>,
}

/// A custom role: a name (a DNS label other than `admin`, `technician`, `viewer`) and
/// permissions from the fixed catalogue (`tenants.read`, `members.manage`, …). The operator
/// materialises it as the Role `silo-role-<name>` in the namespaces of tenants whose members
/// hold it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CustomRole {
    pub name: String,
    #[serde(default)]
    pub permissions: Vec<String>,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

fn is_false(v: &bool) -> bool {
    !*v
}

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema,
)]
pub enum Isolation {
    #[default]
    Siloed,
    Shared,
}

impl std::fmt::Display for Isolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Isolation::Siloed => "Siloed",
            Isolation::Shared => "Shared",
        })
    }
}

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema,
)]
pub enum DeletionPolicy {
    #[default]
    Retain,
    Cascade,
}

/// A Kubernetes RBAC subject that administers a tenant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Subject {
    pub kind: SubjectKind,
    pub name: String,
    /// Namespace of a ServiceAccount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema,
)]
pub enum SubjectKind {
    User,
    Group,
    ServiceAccount,
}

/// A user taking part in the tenant with one role.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    pub user: String,
    /// `admin`, `technician`, `viewer` or the name of a custom role.
    pub role: String,
}

#[derive(
    Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseSpec {
    /// PostgreSQL major version (image tag), e.g. "16".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Volume size of a Siloed database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<QuantityValue>,
}

#[derive(
    Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct MqttSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_connections: Option<i64>,
}

#[derive(
    Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct EncryptionSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3650))]
    pub rotation_days: Option<u32>,
}

/// What the operator observed and did.
#[derive(
    Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct TenantStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<u32>,
    /// Names from the root to this tenant.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub path: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<Object>)]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective_limits: Option<Limits>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<KeyStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Endpoints>,
    /// Names of the Secrets (in the tenant namespace) holding credentials.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, String>,
}

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema,
)]
pub enum Phase {
    #[default]
    Pending,
    Provisioning,
    Ready,
    Suspended,
    Deleting,
    Failed,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

#[derive(
    Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct UsageStatus {
    /// Usage of this tenant alone.
    #[serde(default)]
    pub own: UsageCounts,
    /// Usage of this tenant and all its descendants.
    #[serde(default)]
    pub subtree: UsageCounts,
}

#[derive(
    Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct KeyStatus {
    pub id: String,
    pub version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotated_at: Option<String>,
    /// The last on-demand rotation request handled (the value of the Tenant's
    /// `silo.dev/rotate-key` annotation, which `POST /v1/tenants/{name}/rotate-key` sets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_request: Option<String>,
}

#[derive(
    Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct Endpoints {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt: Option<String>,
}

impl Tenant {
    /// The tenant's name (cluster-scoped objects always have one once stored).
    pub fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or_default()
    }
}

/// A tenant as far as its links go: what the operator's fan-out and the Channel status read
/// (`spec.parent`, `spec.limitProfile`, `spec.channels`, deletion). Implemented by [`Tenant`]
/// and by the controller's compact cache record
/// (`crate::operator::controller::cached::CachedTenant`), so those rules are written once.
pub trait TenantLinks {
    /// `metadata.name`.
    fn name(&self) -> &str;
    /// `spec.parent`.
    fn parent(&self) -> Option<&str>;
    /// `spec.limitProfile`.
    fn limit_profile(&self) -> Option<&str>;
    /// `spec.channels`: the master channels the tenant uses.
    fn channels(&self) -> &[String];
    /// Whether `metadata.deletionTimestamp` is set.
    fn deleting(&self) -> bool;
}

impl TenantLinks for Tenant {
    fn name(&self) -> &str {
        Tenant::name(self)
    }
    fn parent(&self) -> Option<&str> {
        self.spec.parent.as_deref()
    }
    fn limit_profile(&self) -> Option<&str> {
        self.spec.limit_profile.as_deref()
    }
    fn channels(&self) -> &[String] {
        &self.spec.channels
    }
    fn deleting(&self) -> bool {
        self.metadata.deletion_timestamp.is_some()
    }
}
