//! Count limits (`subtenants`, `devices`, `channels`, `mqttConnections`; SPEC "Tenant",
//! count semantics). For the full build: each tenant's own and subtree usage, its effective
//! limits (the tightest on its path) and every subtree over a limit. For admission: "May
//! tenant T add N of resource R?", answered in O(depth) against the tenant and every
//! ancestor, and the bookkeeping once it was allowed.

use std::fmt;

use crate::types::CountResource;

use super::problem::{ObjectKind, ProblemKind};
use super::tree::{NodeId, Report, TenantTree};

/// Why an addition was refused: which tenant's limit, the limit and its subtree usage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitDenied {
    pub tenant: String,
    pub resource: CountResource,
    pub limit: i64,
    pub usage: i64,
    pub requested: i64,
}

impl fmt::Display for LimitDenied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.limit == 0 {
            write!(
                f,
                "tenant {:?} prohibits {} in its subtree (limit 0)",
                self.tenant, self.resource
            )
        } else {
            write!(
                f,
                "tenant {:?} allows at most {} {} in its subtree and uses {}; adding {} would exceed it",
                self.tenant, self.limit, self.resource, self.usage, self.requested
            )
        }
    }
}

impl std::error::Error for LimitDenied {}

impl TenantTree {
    /// Checks whether `id` may add `n` of `resource`: no tenant on the path root … self may
    /// end up with a subtree usage above its own limit. Reports the nearest blocking tenant.
    pub fn check_add(
        &self,
        id: NodeId,
        resource: CountResource,
        n: i64,
    ) -> Result<(), LimitDenied> {
        let k = resource.index();
        for a in std::iter::once(id).chain(self.ancestors(id)) {
            let node = &self.nodes[a];
            let limit = node.counts[k];
            let usage = node.subtree.get(resource);
            if limit >= 0 && usage.saturating_add(n) > limit {
                return Err(LimitDenied {
                    tenant: self.name(a).to_string(),
                    resource,
                    limit,
                    usage,
                    requested: n,
                });
            }
        }
        Ok(())
    }

    /// Records `n` more (or, negative, fewer) of `resource` as used by `id` itself.
    pub fn record_usage(&mut self, id: NodeId, resource: CountResource, n: i64) {
        let own = self.nodes[id].own.get_mut(resource);
        *own = own.saturating_add(n);
        let chain: Vec<NodeId> = std::iter::once(id).chain(self.ancestors(id)).collect();
        for a in chain {
            let sub = self.nodes[a].subtree.get_mut(resource);
            *sub = sub.saturating_add(n);
        }
    }

    /// Checks and records in one step: the usage changes only when the addition is allowed.
    pub fn try_add(
        &mut self,
        id: NodeId,
        resource: CountResource,
        n: i64,
    ) -> Result<(), LimitDenied> {
        self.check_add(id, resource, n)?;
        self.record_usage(id, resource, n);
        Ok(())
    }

    /// How much more of `resource` `id` may add before some limit on its path is reached
    /// (None = unbounded).
    pub fn headroom(&self, id: NodeId, resource: CountResource) -> Option<i64> {
        let k = resource.index();
        std::iter::once(id)
            .chain(self.ancestors(id))
            .filter_map(|a| {
                let n = &self.nodes[a];
                (n.counts[k] >= 0).then(|| (n.counts[k] - n.subtree.get(resource)).max(0))
            })
            .min()
    }
}

/// The build's side: usage, effective limits and the problems of usage over a limit.
impl TenantTree {
    /// Own usage (children, owned channels, observed devices and connections) and subtree sums.
    pub(super) fn compute_usage(&mut self) {
        for id in 0..self.nodes.len() {
            let t = &self.inventory.tenants[self.nodes[id].input];
            let observed = t
                .status
                .as_ref()
                .and_then(|s| s.usage.as_ref())
                .map(|u| u.own)
                .unwrap_or_default();
            let n = &mut self.nodes[id];
            n.own.subtenants = n.children.len() as i64;
            // Negative observations are reported by check_tenant_fields; never count them.
            n.own.devices = observed.devices.max(0);
            n.own.mqtt_connections = observed.mqtt_connections.max(0);
            n.subtree = n.own;
        }
        for id in self.order_deepest_first() {
            if let Some(p) = self.nodes[id].parent {
                let sub = self.nodes[id].subtree;
                self.nodes[p].subtree.add(&sub);
            }
        }
    }

    /// Attached nodes, deepest first (children before parents).
    fn order_deepest_first(&self) -> Vec<NodeId> {
        let mut order: Vec<NodeId> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].depth > 0)
            .collect();
        order.sort_by_key(|&i| std::cmp::Reverse(self.nodes[i].depth));
        order
    }

    /// Effective count limits of one tenant from its own and its parent's (already computed).
    /// Quotas are granted per family of siblings instead (`regrant`, `grant_all`).
    pub(crate) fn compute_effective_one(&mut self, id: NodeId) {
        let pc = match self.nodes[id].parent {
            Some(p) => self.nodes[p].effective_counts,
            None => [-1; 4],
        };
        let n = &mut self.nodes[id];
        for ((eff, &own), &up) in n.effective_counts.iter_mut().zip(&n.counts).zip(&pc) {
            *eff = match (own, up) {
                (-1, x) | (x, -1) => x,
                (a, b) => a.min(b),
            };
        }
    }

    /// Every attached tenant whose subtree uses more than its own count limit allows.
    pub(super) fn check_counts(&self, report: &mut Report<'_>) {
        for (id, n) in self.nodes.iter().enumerate() {
            if n.depth == 0 {
                continue;
            }
            for r in CountResource::ALL {
                let limit = n.counts[r.index()];
                let used = n.subtree.get(r);
                if limit >= 0 && used > limit {
                    let what = if limit == 0 {
                        "prohibits it (limit 0)".to_string()
                    } else {
                        format!("allows at most {limit}")
                    };
                    report.add(
                        ObjectKind::Tenant,
                        self.tname(id),
                        n.input,
                        format!("spec.limits.{}", r.field()),
                        ProblemKind::LimitExceeded,
                        format!(
                            "the subtree uses {used} {r}, but this tenant {what}{}",
                            self.limit_source(id, r)
                        ),
                    );
                }
            }
        }
    }

    /// " (from LimitProfile p)" when the limit comes from the profile, else "".
    fn limit_source(&self, id: NodeId, r: CountResource) -> String {
        let t = &self.inventory.tenants[self.nodes[id].input];
        match (&t.spec.limit_profile, t.spec.limits.count(r)) {
            (Some(p), None) => format!(" (from LimitProfile {p:?})"),
            _ => String::new(),
        }
    }
}
