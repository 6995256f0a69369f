//! ResourceQuota from the quota limits and a LimitRange with container defaults.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    LimitRange, LimitRangeItem, LimitRangeSpec, ResourceQuota, ResourceQuotaSpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::types::{QuantityValue, QuotaResource};

use super::Context;
use super::meta::namespaced;

pub const QUOTA_NAME: &str = "silo-quota";
pub const LIMIT_RANGE_NAME: &str = "silo-limits";

/// The namespace quota, or None when no quota applies to the tenant. Its values are the
/// tenant's own share (`Context::namespace_quota`): the tenant's quota bounds its whole
/// subtree, and the namespace gets what the children do not take.
pub fn resource_quota(cx: &Context<'_>) -> Option<ResourceQuota> {
    let mut hard = BTreeMap::new();
    for r in QuotaResource::ALL {
        let Some(q) = cx.namespace_quota.quota(r) else {
            continue;
        };
        let keys: &[&str] = match r {
            QuotaResource::Cpu => &["requests.cpu", "limits.cpu"],
            QuotaResource::Memory => &["requests.memory", "limits.memory"],
            QuotaResource::Storage => &["requests.storage"],
            QuotaResource::Pods => &["pods"],
        };
        for k in keys {
            hard.insert((*k).to_string(), Quantity(q.to_string()));
        }
    }
    if hard.is_empty() {
        return None;
    }
    Some(ResourceQuota {
        metadata: namespaced(cx.tenant, &cx.namespace, QUOTA_NAME, &[]),
        spec: Some(ResourceQuotaSpec {
            hard: Some(hard),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// Default requests/limits so pods without them still fit under the quota.
pub fn limit_range(cx: &Context<'_>) -> LimitRange {
    let d = &cx.config.container_defaults;
    let q = |v: &QuantityValue| Quantity(v.to_string());
    LimitRange {
        metadata: namespaced(cx.tenant, &cx.namespace, LIMIT_RANGE_NAME, &[]),
        spec: Some(LimitRangeSpec {
            limits: vec![LimitRangeItem {
                type_: "Container".to_string(),
                default: Some(BTreeMap::from([
                    ("cpu".to_string(), q(&d.cpu_limit)),
                    ("memory".to_string(), q(&d.memory_limit)),
                ])),
                default_request: Some(BTreeMap::from([
                    ("cpu".to_string(), q(&d.cpu_request)),
                    ("memory".to_string(), q(&d.memory_request)),
                ])),
                ..Default::default()
            }],
        }),
    }
}
