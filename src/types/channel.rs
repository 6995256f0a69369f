//! The `Channel` kind: a master ingestion channel shared by a subtree.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A shared ingestion endpoint created high in the tree and used by tenants below.
// Two printer columns of type "string" look like a repeated attribute to clippy.
#[allow(clippy::duplicated_attributes)]
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
    kind = "Channel",
    plural = "channels",
    shortname = "ch",
    category = "silo",
    status = "ChannelStatus",
    doc = "A master channel: one ingestion endpoint serving tenants below its owner.",
    printcolumn(name = "Owner", type_ = "string", json_path = ".spec.owner"),
    printcolumn(name = "Protocol", type_ = "string", json_path = ".spec.protocol"),
    printcolumn(
        name = "Devices",
        type_ = "integer",
        json_path = ".status.connectedDevices"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ChannelSpec {
    /// The tenant that owns the channel.
    pub owner: String,
    #[serde(default)]
    pub protocol: ChannelProtocol,
    /// Maximum simultaneous device connections across all tenants using it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_connections: Option<i64>,
    /// Which subtrees may use the channel; absent = the owner's whole subtree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visibility: Option<Visibility>,
}

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ChannelProtocol {
    #[default]
    Mqtt,
}

#[derive(
    Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct Visibility {
    /// Roots of the subtrees that may use the channel; each inside the owner's subtree.
    #[serde(default)]
    pub subtrees: Vec<String>,
}

#[derive(
    Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct ChannelStatus {
    /// Registered devices of the channel connected to the channel endpoint, as the operator's
    /// broker observer sees them (the broker's own connect/disconnect notices on
    /// `$SYS/broker/log/N`, usernames mapped to channels by the device registry). Exact while
    /// condition `DevicesCounted` is True; a lower bound while it is False (clients connected
    /// before the observer started are not identified until they disconnect); absent while
    /// the broker is unreachable or has not sent its client count yet (README "Channel
    /// status").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connected_devices: Option<i64>,
    /// Devices registered on the channel (all tenants), from the API's device registry
    /// (written by the operator; the API also answers it on `GET /v1/channels…`; counted
    /// against `maxConnections`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registered_devices: Option<i64>,
    /// Tenants that list the channel.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tenants: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// `Ready`: `True` when the endpoint answers an MQTT CONNECT with the operator's login,
    /// `False` with reason `BrokerUnreachable` and the error otherwise. `DevicesCounted`:
    /// whether `connectedDevices` is exact (`True`) or a lower bound (`False`, `ClientsUnseen`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<Object>)]
    pub conditions: Vec<Condition>,
}

impl Channel {
    pub fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or_default()
    }
}
