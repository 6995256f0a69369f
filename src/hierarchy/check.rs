//! "May tenant T add N of resource R?": the admission question, answered in O(depth)
//! against the tenant and every ancestor, and the bookkeeping once it was allowed.

use std::fmt;

use crate::types::CountResource;

use super::tree::{NodeId, TenantTree};

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
