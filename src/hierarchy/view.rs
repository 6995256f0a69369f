//! Read-only views of one tenant in the analysed tree (for status, `silo plan`, the API).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::types::tenant::UsageStatus;
use crate::types::{CountResource, Isolation, Limits, QuantityValue, QuotaResource};

use super::quota::format_quota;
use super::tree::{NodeId, TenantTree};

/// Limits in force for a tenant: the tightest count on its path and its (or inherited) quotas.
pub type EffectiveLimits = Limits;

/// Everything known about one tenant after analysis.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TenantSummary {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    pub depth: u32,
    pub path: Vec<String>,
    pub namespace: String,
    pub isolation: Isolation,
    pub suspended: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suspended_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit_profile: Option<String>,
    pub effective_limits: EffectiveLimits,
    /// The tenant's own namespace's ResourceQuota (quota fields only; empty = no quota).
    #[serde(skip_serializing_if = "is_empty_limits")]
    pub namespace_quota: Limits,
    pub usage: UsageStatus,
    pub effective_settings: BTreeMap<String, serde_json::Value>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
}

fn is_empty_limits(l: &Limits) -> bool {
    *l == Limits::default()
}

impl TenantTree {
    /// The quotas of the tenant's own namespace (its ResourceQuota `hard`): what its subtree
    /// may use minus what its children were granted. Only quota fields; None = no quota.
    pub fn namespace_quota(&self, id: NodeId) -> Limits {
        let n = self.node(id);
        let mut out = Limits::default();
        for r in QuotaResource::ALL {
            out.set_quota(
                r,
                n.namespace_quotas[r.index()].map(|m| QuantityValue::new(format_quota(r, m))),
            );
        }
        out
    }

    /// Effective limits: counts are the tightest on the path (absent = unlimited); quotas
    /// what the tenant's whole subtree may use (its own quota as granted by its parent;
    /// absent = unbounded).
    pub fn effective_limits(&self, id: NodeId) -> EffectiveLimits {
        let n = self.node(id);
        let mut out = Limits::default();
        for r in CountResource::ALL {
            let v = n.effective_counts[r.index()];
            out.set_count(r, (v >= 0).then_some(v));
        }
        for r in QuotaResource::ALL {
            out.set_quota(
                r,
                n.effective_quotas[r.index()].map(|m| QuantityValue::new(format_quota(r, m))),
            );
        }
        out
    }

    pub fn summary(&self, id: NodeId, namespace_prefix: &str) -> TenantSummary {
        let t = self.tenant(id);
        let n = self.node(id);
        let suspended_by = self.suspended_by(id);
        TenantSummary {
            name: t.name().to_string(),
            parent: t.spec.parent.clone(),
            depth: n.depth,
            path: self.path(id).into_iter().map(String::from).collect(),
            namespace: format!("{namespace_prefix}{}", t.name()),
            isolation: t.spec.isolation,
            suspended: suspended_by.is_some(),
            suspended_by: suspended_by
                .filter(|&s| s != id)
                .map(|s| self.name(s).to_string()),
            limit_profile: t.spec.limit_profile.clone(),
            effective_limits: self.effective_limits(id),
            namespace_quota: self.namespace_quota(id),
            usage: UsageStatus {
                own: n.own,
                subtree: n.subtree,
            },
            effective_settings: self.effective_settings(id),
            channels: t.spec.channels.clone(),
        }
    }
}
