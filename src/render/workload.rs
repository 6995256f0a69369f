//! Pieces shared by the siloed workloads.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, ServiceAccount};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::types::QuantityValue;

use super::Context;
use super::meta::namespaced;

/// The ServiceAccount the siloed database and broker run as (no API token mounted).
pub const SERVICE_ACCOUNT: &str = "silo-workload";

pub fn service_account(cx: &Context<'_>) -> ServiceAccount {
    ServiceAccount {
        metadata: namespaced(cx.tenant, &cx.namespace, SERVICE_ACCOUNT, &[]),
        automount_service_account_token: Some(false),
        ..Default::default()
    }
}

/// Requests = limits (Guaranteed QoS) for the platform-managed workloads.
pub fn resources(cpu: &QuantityValue, memory: &QuantityValue) -> ResourceRequirements {
    let m = BTreeMap::from([
        ("cpu".to_string(), Quantity(cpu.to_string())),
        ("memory".to_string(), Quantity(memory.to_string())),
    ]);
    ResourceRequirements {
        requests: Some(m.clone()),
        limits: Some(m),
        ..Default::default()
    }
}
