//! Hierarchical namespace quotas (cpu, memory, storage, pods): the rule, the grants that keep
//! it in any tree, and the admission check of proposed quota changes.
//!
//! The rule (SPEC "Quota semantics"): a tenant's quota for a resource bounds its whole subtree
//! — its own namespace plus every namespace below it. The quotas of its direct children are
//! carved out of it, and its own namespace's ResourceQuota gets what the children do not take.
//! Below a tenant with a quota for a resource, every tenant needs its own quota for that
//! resource (explicit or from its LimitProfile): nothing below a quota is unbounded, and no
//! namespace's quota changes because a sibling was added.
//!
//! Invariant (checked by a property test): for every tenant T with a quota and every quota
//! resource, the sum of the ResourceQuota `hard` values of all namespaces in T's subtree never
//! exceeds T's quota. The grants computed here keep it even for trees that break the rule
//! (created before it existed, or while the webhook was unreachable): see [`grant_children`].

use crate::types::QuotaResource;
use crate::types::quantity::{QuantityError, QuantityValue, format_millis};

use super::problem::ProblemKind;
use super::tree::{NodeId, TenantTree};

/// The largest quota a tenant may set: 2^63 − 1 units (bytes, cores or pods), the largest
/// value Kubernetes' `Quantity.Value()` returns as an int64. Bounding inputs keeps every sum
/// of quotas exact in `i128` thousandths (sums are also saturating, so they can never wrap).
pub const MAX_QUOTA_UNITS: i128 = i64::MAX as i128;

/// A quota value in thousandths of a unit, refused above [`MAX_QUOTA_UNITS`].
pub fn quota_millis(q: &QuantityValue) -> Result<i128, QuantityError> {
    let m = q.millis()?;
    if m > MAX_QUOTA_UNITS * 1000 {
        return Err(QuantityError::TooLargeForQuota(q.0.clone()));
    }
    Ok(m)
}

/// Formats a quota value for messages, status and the ResourceQuota: `memory`/`storage`
/// with binary suffixes (`2Gi`), `cpu`/`pods` as plain decimals (`1024`, `1500m`): a cpu
/// or pod count of 1024 is "1024", not "1Ki".
pub fn format_quota(r: QuotaResource, millis: i128) -> String {
    match r {
        QuotaResource::Memory | QuotaResource::Storage => format_millis(millis),
        QuotaResource::Cpu | QuotaResource::Pods => {
            if millis % 1000 == 0 {
                (millis / 1000).to_string()
            } else {
                format!("{millis}m")
            }
        }
    }
}

/// The smallest step a grant is cut in: a thousandth of a core for cpu, whole bytes and pods.
fn step(r: QuotaResource) -> i128 {
    match r {
        QuotaResource::Cpu => 1,
        _ => 1000,
    }
}

/// The grants of a family for one resource: each child's, and the parent's own namespace quota.
type Grants = (Vec<Option<i128>>, Option<i128>);

/// Saturating sum of quota values (thousandths).
pub fn sum_quotas(values: impl IntoIterator<Item = i128>) -> i128 {
    values.into_iter().fold(0, i128::saturating_add)
}

/// How the subtree budget `cap` of a tenant (None = unbounded) is shared for one resource
/// between its direct children (`requested[i]`: the child's own quota, None = none) and its
/// own namespace. Children must be given in grant order (oldest first, then by name).
///
/// Returns the children's grants (their subtree budgets) and the own namespace's quota.
/// - Unbounded: every child keeps what it asks for; the own namespace has no quota.
/// - Within the rule (the children's quotas fit, every child has one): each child gets its
///   quota and the own namespace the rest.
/// - Otherwise (a tree that breaks the rule): children with a quota are served oldest first
///   while the budget lasts (a child that no longer fits gets what is left); children
///   without a quota and the own namespace share the rest equally. The sum of the grants and
///   the own quota never exceeds `cap`.
pub fn grant_children(
    r: QuotaResource,
    cap: Option<i128>,
    requested: &[Option<i128>],
) -> (Vec<Option<i128>>, Option<i128>) {
    let Some(cap) = cap else {
        return (requested.to_vec(), None);
    };
    let mut left = cap.max(0);
    let mut grants: Vec<Option<i128>> = requested
        .iter()
        .map(|q| {
            q.map(|q| {
                let g = q.clamp(0, left);
                left -= g;
                g
            })
        })
        .collect();
    let without = requested.iter().filter(|q| q.is_none()).count() as i128;
    if without > 0 {
        let unit = step(r);
        let share = left / (without + 1) / unit * unit;
        for g in grants.iter_mut().filter(|g| g.is_none()) {
            *g = Some(share);
        }
        left -= share * without;
    }
    (grants, Some(left))
}

impl TenantTree {
    /// The children of `p` in grant order: oldest first (creation timestamp; objects read
    /// from files have none), then by name.
    fn grant_order(&self, p: NodeId) -> Vec<NodeId> {
        let mut ch = self.nodes[p].children.clone();
        ch.sort_by(|&a, &b| {
            let ka = &self.tenant(a).metadata.creation_timestamp;
            let kb = &self.tenant(b).metadata.creation_timestamp;
            ka.cmp(kb).then_with(|| self.name(a).cmp(self.name(b)))
        });
        ch
    }

    /// Grants of `p`'s children and `p`'s own namespace quota, per resource index: the
    /// children in the order the grants are given for, and (grants, own quota). Within the
    /// rule (every child has a quota and together they fit) the order plays no part and
    /// nothing is sorted: O(children).
    fn family_grants(&self, p: NodeId) -> (Vec<NodeId>, [Grants; 4]) {
        let children = &self.nodes[p].children;
        let within_rule = |k: usize| {
            self.nodes[p].effective_quotas[k].is_none_or(|cap| {
                children.iter().all(|&c| self.nodes[c].quotas[k].is_some())
                    && sum_quotas(children.iter().filter_map(|&c| self.nodes[c].quotas[k])) <= cap
            })
        };
        let order = if (0..4).all(within_rule) {
            children.clone()
        } else {
            self.grant_order(p)
        };
        let grants = QuotaResource::ALL.map(|r| {
            let k = r.index();
            let requested: Vec<Option<i128>> =
                order.iter().map(|&c| self.nodes[c].quotas[k]).collect();
            grant_children(r, self.nodes[p].effective_quotas[k], &requested)
        });
        (order, grants)
    }

    /// Writes one family's grants; returns the children whose grant changed.
    fn set_family_grants(&mut self, p: NodeId) -> Vec<NodeId> {
        let (order, grants) = self.family_grants(p);
        let mut changed = vec![false; order.len()];
        for (k, (child_grants, own)) in grants.into_iter().enumerate() {
            self.nodes[p].namespace_quotas[k] = own;
            for (i, (&c, g)) in order.iter().zip(child_grants).enumerate() {
                if self.nodes[c].effective_quotas[k] != g {
                    self.nodes[c].effective_quotas[k] = g;
                    changed[i] = true;
                }
            }
        }
        order
            .into_iter()
            .zip(changed)
            .filter_map(|(c, ch)| ch.then_some(c))
            .collect()
    }

    /// Recomputes the grants below `start` (its own grant is taken as given, except for a root,
    /// whose grant is its own quota), descending only where a grant changed.
    pub(crate) fn regrant(&mut self, start: NodeId) {
        if self.nodes[start].parent.is_none() {
            self.nodes[start].effective_quotas = self.nodes[start].quotas;
        }
        let mut stack = vec![start];
        while let Some(p) = stack.pop() {
            let changed = self.set_family_grants(p);
            stack.extend(changed);
        }
    }

    /// Grants of the whole tree, top-down (every attached tenant).
    pub(crate) fn grant_all(&mut self) {
        for id in self.preorder() {
            if self.nodes[id].parent.is_none() {
                self.nodes[id].effective_quotas = self.nodes[id].quotas;
            }
            self.set_family_grants(id);
        }
    }

    /// What bounds the children of `p` for resource index `k`: its own quota, or — when it has
    /// none although an ancestor has one (a tree breaking the rule) — what it was granted.
    pub fn quota_cap(&self, p: NodeId, k: usize) -> Option<i128> {
        self.nodes[p].quotas[k].or(self.nodes[p].effective_quotas[k])
    }

    /// Sum of the own quotas (thousandths) of `id`'s direct children for `r` (saturating).
    pub fn children_quota_sum(&self, id: NodeId, r: QuotaResource) -> i128 {
        sum_quotas(
            self.nodes[id]
                .children
                .iter()
                .filter_map(|&c| self.nodes[c].quotas[r.index()]),
        )
    }

    /// The rule on a whole tree, for `TenantTree::build`: (tenant, field, kind, message).
    pub(crate) fn quota_problems(&self) -> Vec<(NodeId, String, ProblemKind, String)> {
        let mut out = Vec::new();
        for p in self.preorder() {
            for r in QuotaResource::ALL {
                let k = r.index();
                let Some(cap) = self.quota_cap(p, k) else {
                    continue;
                };
                let children = &self.nodes[p].children;
                let sum = self.children_quota_sum(p, r);
                for &c in children {
                    // An invalid value is reported as such (InvalidLimit), not as missing.
                    if self.nodes[c].quotas[k].is_none() && self.nodes[c].limits.quota(r).is_none()
                    {
                        out.push((
                            c,
                            format!("spec.limits.{}", r.field()),
                            ProblemKind::QuotaRequired,
                            quota_required(r, self.name(p), cap, cap.saturating_sub(sum)),
                        ));
                    }
                }
                if sum > cap {
                    let list = children
                        .iter()
                        .filter_map(|&c| {
                            self.nodes[c].quotas[k]
                                .map(|q| format!("{}={}", self.name(c), format_quota(r, q)))
                        })
                        .collect::<Vec<_>>()
                        .join(", ");
                    out.push((
                        p,
                        format!("spec.limits.{}", r.field()),
                        ProblemKind::QuotaOverParent,
                        format!(
                            "direct children together ask for {} {r} ({list}), more than this tenant's {}",
                            format_quota(r, sum),
                            format_quota(r, cap)
                        ),
                    ));
                }
            }
        }
        out
    }

    /// Judges proposed changes of own quotas against the rule, as admission does: `edits`
    /// gives tenants' new own quotas (thousandths; an existing tenant, or a new one directly
    /// below a parent), `reserved(p)` the quotas already promised to `p`'s children being
    /// created. Only what the edits make worse is refused: an unrelated tenant that already
    /// breaks the rule does not block them, and an edit that lowers an excess is allowed.
    pub fn check_quota_edits(
        &self,
        edits: &[QuotaEdit],
        reserved: &dyn Fn(NodeId) -> [i128; 4],
    ) -> Vec<QuotaRefusal> {
        let new_quota = |id: NodeId, k: usize| -> Option<i128> {
            edits
                .iter()
                .find(|e| e.target == QuotaTarget::Existing(id))
                .map_or(self.nodes[id].quotas[k], |e| e.quotas[k])
        };
        let edited = |id: NodeId| edits.iter().any(|e| e.target == QuotaTarget::Existing(id));
        // Parents whose children change, and edited tenants (whose own cap changes).
        let mut parents: Vec<NodeId> = Vec::new();
        for e in edits {
            let (up, me) = match &e.target {
                QuotaTarget::Existing(id) => (self.nodes[*id].parent, Some(*id)),
                QuotaTarget::New { parent, .. } => (*parent, None),
            };
            parents.extend(up);
            parents.extend(me);
        }
        parents.sort_unstable();
        parents.dedup();
        let mut out = Vec::new();
        for p in parents {
            let pname = self.name(p);
            let new_children: Vec<&QuotaEdit> = edits
                .iter()
                .filter(
                    |e| matches!(&e.target, QuotaTarget::New { parent: Some(x), .. } if *x == p),
                )
                .collect();
            for r in QuotaResource::ALL {
                let k = r.index();
                let held = reserved(p)[k];
                let old_cap = self.quota_cap(p, k);
                let new_cap = new_quota(p, k).or(self.nodes[p].effective_quotas[k]);
                let old_sum = self.children_quota_sum(p, r).saturating_add(held);
                let new_sum = sum_quotas(
                    self.nodes[p]
                        .children
                        .iter()
                        .filter_map(|&c| new_quota(c, k))
                        .chain(new_children.iter().filter_map(|e| e.quotas[k]))
                        .chain([held]),
                );
                let Some(cap) = new_cap else { continue };
                let field = format!("spec.limits.{}", r.field());
                // Children without a quota of their own below a quota.
                let others = |except: i128| new_sum.saturating_sub(except);
                for &c in &self.nodes[p].children {
                    if edited(c) && new_quota(c, k).is_none() && self.nodes[c].quotas[k].is_some() {
                        out.push(QuotaRefusal {
                            tenant: self.name(c).to_string(),
                            field: field.clone(),
                            kind: ProblemKind::QuotaRequired,
                            message: quota_required(r, pname, cap, cap.saturating_sub(others(0))),
                        });
                    }
                }
                for e in &new_children {
                    if e.quotas[k].is_none() {
                        out.push(QuotaRefusal {
                            tenant: e.target.name(self).to_string(),
                            field: field.clone(),
                            kind: ProblemKind::QuotaRequired,
                            message: quota_required(r, pname, cap, cap.saturating_sub(others(0))),
                        });
                    }
                }
                if old_cap.is_none() {
                    let bare: Vec<&str> = self.nodes[p]
                        .children
                        .iter()
                        .filter(|&&c| new_quota(c, k).is_none())
                        .map(|&c| self.name(c))
                        .collect();
                    if !bare.is_empty() {
                        out.push(QuotaRefusal {
                            tenant: pname.to_string(),
                            field: field.clone(),
                            kind: ProblemKind::QuotaRequired,
                            message: format!(
                                "a {r} quota here would bound the whole subtree, but its direct children {} have no {r} quota of their own: give them one first",
                                super::names_list(&bare, 5)
                            ),
                        });
                    }
                }
                // The children's quotas must fit; refuse only an edit that makes an excess worse.
                let excess_after = new_sum.saturating_sub(cap);
                let excess_before = old_cap.map_or(0, |c| old_sum.saturating_sub(c).max(0));
                if excess_after <= 0 || excess_after <= excess_before {
                    continue;
                }
                let mut blamed = false;
                for &c in &self.nodes[p].children {
                    let (Some(q), true) = (new_quota(c, k), edited(c)) else {
                        continue;
                    };
                    if self.nodes[c].quotas[k].is_some_and(|old| old >= q) {
                        continue;
                    }
                    blamed = true;
                    out.push(QuotaRefusal {
                        tenant: self.name(c).to_string(),
                        field: field.clone(),
                        kind: ProblemKind::QuotaOverParent,
                        message: over_parent(r, q, pname, others(q), cap, true),
                    });
                }
                for e in &new_children {
                    if let Some(q) = e.quotas[k] {
                        blamed = true;
                        out.push(QuotaRefusal {
                            tenant: e.target.name(self).to_string(),
                            field: field.clone(),
                            kind: ProblemKind::QuotaOverParent,
                            message: over_parent(r, q, pname, others(q), cap, false),
                        });
                    }
                }
                if !blamed {
                    out.push(QuotaRefusal {
                        tenant: pname.to_string(),
                        field,
                        kind: ProblemKind::QuotaOverParent,
                        message: format!(
                            "its direct children already ask for {} {r}, more than the new {}",
                            format_quota(r, new_sum),
                            format_quota(r, cap)
                        ),
                    });
                }
            }
        }
        out
    }
}

/// The message for a tenant without its own quota below one with a quota (plan and webhook).
pub fn quota_required(r: QuotaResource, parent: &str, cap: i128, left: i128) -> String {
    format!(
        "no {r} quota of its own below {parent:?}, whose {r} quota {} bounds its whole subtree: every tenant below a quota needs its own (in spec.limits or its LimitProfile); {parent:?} has {} {r} left to give",
        format_quota(r, cap),
        format_quota(r, left.max(0))
    )
}

fn over_parent(
    r: QuotaResource,
    q: i128,
    parent: &str,
    siblings: i128,
    cap: i128,
    existing: bool,
) -> String {
    format!(
        "asks for {} {r}, but the {}direct children of {parent:?} already ask for {} of its {}; together {} would exceed it",
        format_quota(r, q),
        if existing { "other " } else { "" },
        format_quota(r, siblings),
        format_quota(r, cap),
        format_quota(r, siblings.saturating_add(q))
    )
}

/// Whose own quotas a [`QuotaEdit`] changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QuotaTarget {
    Existing(NodeId),
    /// A tenant being created directly below `parent` (None = a new root).
    New {
        name: String,
        parent: Option<NodeId>,
    },
}

impl QuotaTarget {
    fn name<'a>(&'a self, tree: &'a TenantTree) -> &'a str {
        match self {
            QuotaTarget::Existing(id) => tree.name(*id),
            QuotaTarget::New { name, .. } => name,
        }
    }
}

/// A tenant's proposed own quotas in thousandths, indexed by `QuotaResource::index`.
#[derive(Clone, Debug)]
pub struct QuotaEdit {
    pub target: QuotaTarget,
    pub quotas: [Option<i128>; 4],
}

/// Why a quota change was refused: which tenant, field, rule and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuotaRefusal {
    pub tenant: String,
    pub field: String,
    /// `QuotaRequired` or `QuotaOverParent`.
    pub kind: ProblemKind,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_of_cores_and_pods_stay_decimal() {
        assert_eq!(format_quota(QuotaResource::Cpu, 1024 * 1000), "1024");
        assert_eq!(format_quota(QuotaResource::Pods, 2048 * 1000), "2048");
        assert_eq!(format_quota(QuotaResource::Cpu, 1500), "1500m");
        assert_eq!(format_quota(QuotaResource::Cpu, 64_000), "64");
    }

    #[test]
    fn bytes_use_binary_suffixes() {
        assert_eq!(format_quota(QuotaResource::Memory, (2 << 30) * 1000), "2Gi");
        assert_eq!(
            format_quota(QuotaResource::Storage, (1 << 40) * 2000),
            "2Ti"
        );
    }

    #[test]
    fn quotas_above_an_int64_of_units_are_refused() {
        assert_eq!(
            quota_millis(&QuantityValue::new("9223372036854775807")),
            Ok(MAX_QUOTA_UNITS * 1000)
        );
        let e = quota_millis(&QuantityValue::new("9223372036854775808")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "quantity \"9223372036854775808\" is too large for a quota: at most 9223372036854775807 units (2^63 - 1, the largest value Kubernetes reads as a 64-bit integer)"
        );
        assert!(quota_millis(&QuantityValue::new("8Ei")).is_err());
        assert!(quota_millis(&QuantityValue::new("7Ei")).is_ok());
    }

    #[test]
    fn grants_within_the_rule_give_children_their_quota_and_the_parent_the_rest() {
        let (g, own) = grant_children(QuotaResource::Cpu, Some(8000), &[Some(2000), Some(3000)]);
        assert_eq!(g, [Some(2000), Some(3000)]);
        assert_eq!(own, Some(3000));
        let (g, own) = grant_children(QuotaResource::Cpu, None, &[Some(2000), None]);
        assert_eq!(g, [Some(2000), None]);
        assert_eq!(own, None);
    }

    #[test]
    fn grants_of_a_tree_breaking_the_rule_still_fit() {
        // The example: acme 4, dealer-1 without a quota, dealer-2 4.
        let (g, own) = grant_children(QuotaResource::Cpu, Some(4000), &[None, Some(4000)]);
        assert_eq!(g, [Some(0), Some(4000)]);
        assert_eq!(own, Some(0));
        // Over-committed: the oldest keeps its quota, the next gets what is left.
        let (g, own) = grant_children(QuotaResource::Cpu, Some(4000), &[Some(3000), Some(3000)]);
        assert_eq!(g, [Some(3000), Some(1000)]);
        assert_eq!(own, Some(0));
        // Children without a quota share the rest with the own namespace, in whole units.
        let (g, own) = grant_children(QuotaResource::Pods, Some(10_000), &[None, None]);
        assert_eq!(g, [Some(3000), Some(3000)]);
        assert_eq!(own, Some(4000));
        let (g, own) = grant_children(QuotaResource::Cpu, Some(1000), &[None, None]);
        assert_eq!(g, [Some(333), Some(333)]);
        assert_eq!(own, Some(334));
    }
}
