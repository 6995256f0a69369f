//! The `LimitProfile` kind: a named, shared set of limits.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::limits::Limits;

/// A named set of limits owned by a tenant and assignable to tenants strictly below it.
#[derive(
    CustomResource,
    Deserialize,
    Serialize,
    Clone,
    Debug,
    Default,
    PartialEq,
    JsonSchema,
    utoipa::ToSchema,
)]
#[kube(
    group = "silo.dev",
    version = "v1alpha1",
    kind = "LimitProfile",
    plural = "limitprofiles",
    shortname = "lp",
    category = "silo",
    status = "LimitProfileStatus",
    doc = "A named set of limits that tenants below its owner can share.",
    printcolumn(name = "Owner", type_ = "string", json_path = ".spec.owner"),
    printcolumn(name = "Tenants", type_ = "integer", json_path = ".status.tenants"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct LimitProfileSpec {
    /// The tenant that owns the profile; only tenants strictly below it may use it.
    pub owner: String,
    #[serde(default)]
    pub limits: Limits,
}

#[derive(
    Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct LimitProfileStatus {
    /// How many tenants use the profile.
    #[serde(default)]
    pub tenants: i64,
}

impl LimitProfile {
    pub fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or_default()
    }
}
