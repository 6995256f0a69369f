//! The admission decision: a proposed Tenant, LimitProfile or Channel change judged against
//! the current tree with the rules of `silo plan` (same engine, same messages where the
//! rule is the same), in O(depth + object size) for tenant creations and updates.

use std::time::{Duration, Instant};

use crate::hierarchy::quota::quota_millis;
use crate::hierarchy::{
    ObjectKind, QuotaEdit, QuotaTarget, TenantTree, check_people, check_tenant_name,
};
use crate::types::tenant::DeletionPolicy;
use crate::types::{Channel, CountResource, LimitProfile, Limits, QuotaResource, Tenant};

use super::denial::{Denial, DenialReason as R};
use super::view::Inner;

/// A change to judge. For updates both the old and the new object are given (the old one as
/// the API server sent it); for deletions the object being deleted.
#[derive(Clone, Debug)]
pub enum Proposal {
    CreateTenant(Tenant),
    UpdateTenant {
        old: Box<Tenant>,
        new: Box<Tenant>,
    },
    DeleteTenant(Tenant),
    CreateProfile(LimitProfile),
    UpdateProfile {
        old: Box<LimitProfile>,
        new: Box<LimitProfile>,
    },
    DeleteProfile(LimitProfile),
    CreateChannel(Channel),
    UpdateChannel {
        old: Box<Channel>,
        new: Box<Channel>,
    },
    DeleteChannel(Channel),
}

/// Collects denials for one object.
struct Out<'a> {
    object: ObjectKind,
    name: &'a str,
    list: Vec<Denial>,
}

impl Out<'_> {
    fn deny(&mut self, field: impl Into<String>, reason: R, message: impl Into<String>) {
        self.list
            .push(Denial::new(self.object, self.name, field, reason, message));
    }
}

fn names(list: impl IntoIterator<Item = impl AsRef<str>>, max: usize) -> String {
    let all: Vec<String> = list.into_iter().map(|s| s.as_ref().to_string()).collect();
    let mut shown = all.iter().take(max).cloned().collect::<Vec<_>>().join(", ");
    if all.len() > max {
        shown.push_str(&format!(", … ({} in all)", all.len()));
    }
    shown
}

fn check_limit_values(limits: &Limits, out: &mut Out<'_>) {
    crate::hierarchy::check_limit_values(limits, |field, reason| {
        out.deny(field, R::InvalidLimit, reason)
    });
}

impl Inner {
    pub(crate) fn decide(
        &mut self,
        p: &Proposal,
        reserve: bool,
        now: Instant,
        ttl: Duration,
    ) -> Result<(), Vec<Denial>> {
        // A retried creation replaces its own earlier reservation instead of adding to it;
        // if the retry is refused, the earlier reservation stands.
        let retry_key = match p {
            Proposal::CreateTenant(t) if reserve => {
                Some((ObjectKind::Tenant, t.name().to_string()))
            }
            Proposal::CreateChannel(c) if reserve => {
                Some((ObjectKind::Channel, c.name().to_string()))
            }
            _ => None,
        };
        let earlier = retry_key.as_ref().and_then(|k| self.take(k));
        let result = self.decide_inner(p, reserve, now, ttl);
        if result.is_err()
            && let (Some(k), Some(r)) = (retry_key, earlier)
        {
            self.restore(k, r);
        }
        result
    }

    fn decide_inner(
        &mut self,
        p: &Proposal,
        reserve: bool,
        now: Instant,
        ttl: Duration,
    ) -> Result<(), Vec<Denial>> {
        match p {
            Proposal::CreateTenant(t) => self.create_tenant(t, reserve, now, ttl),
            Proposal::UpdateTenant { old, new } => self.update_tenant(old, new),
            Proposal::DeleteTenant(t) => self.delete_tenant(t, reserve, now, ttl),
            Proposal::CreateProfile(p) => self.create_profile(p),
            Proposal::UpdateProfile { old, new } => self.update_profile(old, new),
            Proposal::DeleteProfile(p) => self.delete_in_use(ObjectKind::LimitProfile, p.name()),
            Proposal::CreateChannel(c) => self.create_channel(c, reserve, now, ttl),
            Proposal::UpdateChannel { old, new } => self.update_channel(old, new),
            Proposal::DeleteChannel(c) => self.delete_in_use(ObjectKind::Channel, c.name()),
        }
    }

    // ----- Tenant -----

    fn create_tenant(
        &mut self,
        t: &Tenant,
        reserve: bool,
        now: Instant,
        ttl: Duration,
    ) -> Result<(), Vec<Denial>> {
        let name = t.name();
        let mut out = Out {
            object: ObjectKind::Tenant,
            name,
            list: Vec::new(),
        };
        let tree = &self.tree;
        if let Err(reason) = check_tenant_name(name, tree.settings().max_name_len) {
            out.deny("metadata.name", R::InvalidName, reason);
        }
        if tree.get(name).is_some() {
            out.deny(
                "metadata.name",
                R::AlreadyExists,
                format!(
                    "Tenant {name:?} already exists (or its deletion has not been observed yet)"
                ),
            );
        }
        let parent = self.check_parent_for_new(t, &mut out);
        if !out.list.is_empty() {
            return Err(out.list);
        }
        check_limit_values(&t.spec.limits, &mut out);
        check_profile(
            tree,
            name,
            t.spec.limit_profile.as_deref(),
            parent,
            &mut out,
        );
        for (k, ch) in t.spec.channels.iter().enumerate() {
            check_channel_use(
                tree,
                name,
                ch,
                k,
                tree.channel_object(ch).is_some() && tree.channel_visible_to_new_child(ch, parent),
                &mut out,
            );
        }
        check_members(tree, t, None, &mut out);
        crate::hierarchy::roles::check_roles(tree, parent, &t.spec, |f, r| {
            out.deny(f, R::InvalidMember, r)
        });
        let limits =
            tree.limits_for_new_child(t.spec.limit_profile.as_deref(), &t.spec.limits, parent);
        let quotas = own_quotas(&limits);
        if let Some(pid) = parent
            && let Err(e) = tree.check_add(pid, CountResource::Subtenants, 1)
        {
            out.deny(
                "spec.parent",
                R::LimitExceeded,
                format!("cannot add a subtenant below {:?}: {e}", tree.name(pid)),
            );
        }
        if !has_invalid_limit(&out) {
            let edit = QuotaEdit {
                target: QuotaTarget::New {
                    name: name.to_string(),
                    parent,
                },
                quotas,
            };
            self.check_quotas(&[edit], &mut out);
        }
        if !out.list.is_empty() {
            return Err(out.list);
        }
        if reserve && let Some(pid) = parent {
            let at = self.tree.name(pid).to_string();
            let r = Inner::new_reservation(
                &at,
                CountResource::Subtenants,
                quotas,
                t.spec.limit_profile.clone(),
                t.spec.channels.clone(),
            );
            self.reserve((ObjectKind::Tenant, name.to_string()), r, now, ttl);
        }
        Ok(())
    }

    /// Parent checks for a new tenant: exists, no cycle, depth, not suspended, not being deleted.
    fn check_parent_for_new(&self, t: &Tenant, out: &mut Out<'_>) -> Option<usize> {
        let tree = &self.tree;
        let name = t.name();
        let p = t.spec.parent.as_deref()?;
        if p == name {
            out.deny(
                "spec.parent",
                R::Cycle,
                format!("cycle: {p} -> {p} (a tenant cannot be its own parent)"),
            );
            return None;
        }
        let Some(pid) = tree.get(p) else {
            out.deny(
                "spec.parent",
                R::UnknownParent,
                format!("parent tenant {p:?} does not exist"),
            );
            return None;
        };
        if tree.node(pid).depth == 0 {
            // The parent hangs below an unknown tenant or a cycle: walk its chain by name.
            let mut chain = vec![name.to_string(), p.to_string()];
            let mut cur = pid;
            for _ in 0..=tree.len() {
                match tree.tenant(cur).spec.parent.as_deref() {
                    Some(up) if up == name => {
                        chain.push(name.to_string());
                        out.deny(
                            "spec.parent",
                            R::Cycle,
                            format!("cycle: {}", chain.join(" -> ")),
                        );
                        return None;
                    }
                    Some(up) => match tree.get(up) {
                        Some(next) if !chain.iter().any(|c| c == up) => {
                            chain.push(up.to_string());
                            cur = next;
                        }
                        _ => break,
                    },
                    None => break,
                }
            }
            out.deny(
                "spec.parent",
                R::UnknownParent,
                format!("parent tenant {p:?} is not attached to the tree (its own chain of parents is broken)"),
            );
            return None;
        }
        let depth = tree.node(pid).depth + 1;
        let max = tree.settings().max_depth;
        if depth > max {
            let mut path = tree.path(pid).join("/");
            path.push('/');
            path.push_str(name);
            out.deny(
                "spec.parent",
                R::TooDeep,
                format!("depth {depth} exceeds maxDepth {max} (path {path})"),
            );
        }
        if let Some(s) = tree.suspended_by(pid) {
            let by = if s == pid {
                String::new()
            } else {
                format!(" (suspended through its ancestor {:?})", tree.name(s))
            };
            out.deny(
                "spec.parent",
                R::ParentSuspended,
                format!("cannot create a tenant below {p:?}: it is suspended{by}"),
            );
        }
        if let Some(d) = tree
            .path(pid)
            .into_iter()
            .find(|a| self.deleting.contains_key(*a) || is_being_deleted(tree, a))
        {
            out.deny(
                "spec.parent",
                R::ParentDeleting,
                format!("cannot create a tenant below {p:?}: tenant {d:?} is being deleted"),
            );
        }
        Some(pid)
    }

    fn update_tenant(&mut self, old: &Tenant, new: &Tenant) -> Result<(), Vec<Denial>> {
        let name = new.name();
        let mut out = Out {
            object: ObjectKind::Tenant,
            name,
            list: Vec::new(),
        };
        if old.spec.parent != new.spec.parent {
            out.deny(
                "spec.parent",
                R::ParentImmutable,
                format!(
                    "spec.parent is immutable: cannot move {name:?} from {} to {}",
                    show_parent(&old.spec.parent),
                    show_parent(&new.spec.parent)
                ),
            );
            return Err(out.list);
        }
        let tree = &self.tree;
        let Some(id) = tree.get(name) else {
            // Not observed yet: judge it like a creation, without reserving.
            let mut probe = new.clone();
            probe.metadata.name = Some(name.to_string());
            return self.create_tenant_probe(&probe);
        };
        let parent = tree.node(id).parent;
        check_limit_values(&new.spec.limits, &mut out);
        if new.spec.limit_profile != old.spec.limit_profile {
            check_profile(
                tree,
                name,
                new.spec.limit_profile.as_deref(),
                parent,
                &mut out,
            );
        }
        for (k, ch) in new.spec.channels.iter().enumerate() {
            if !old.spec.channels.contains(ch) {
                check_channel_use(tree, name, ch, k, tree.is_channel_visible(ch, id), &mut out);
            }
        }
        check_members(tree, new, Some(old), &mut out);
        crate::hierarchy::roles::check_roles(tree, parent, &new.spec, |f, r| {
            out.deny(f, R::InvalidMember, r)
        });
        for (field, reason) in
            crate::render::immutable::refused_tenant_changes(old, new, &self.siloed_postgres)
        {
            out.deny(field, R::NotInPlace, reason);
        }
        let limits =
            tree.limits_for_new_child(new.spec.limit_profile.as_deref(), &new.spec.limits, parent);
        let node = tree.node(id);
        for r in CountResource::ALL {
            let new_limit = limits.count(r).filter(|&v| v >= 0);
            let old_limit = (node.counts[r.index()] >= 0).then_some(node.counts[r.index()]);
            let used = node.subtree.get(r);
            if let Some(n) = new_limit
                && new_limit != old_limit
                && used > n
            {
                out.deny(
                    format!("spec.limits.{}", r.field()),
                    R::LimitExceeded,
                    format!("the subtree of {name:?} already uses {used} {r}, more than the new limit {n}"),
                );
            }
        }
        let quotas = own_quotas(&limits);
        if quotas != node.quotas && !has_invalid_limit(&out) {
            let edit = QuotaEdit {
                target: QuotaTarget::Existing(id),
                quotas,
            };
            self.check_quotas(&[edit], &mut out);
        }
        if out.list.is_empty() {
            Ok(())
        } else {
            Err(out.list)
        }
    }

    /// The hierarchical quota rule (`TenantTree::check_quota_edits`) for proposed own quotas,
    /// counting the quotas reserved for children being created. Refusals about another tenant
    /// than the object (a LimitProfile's users) name that tenant.
    fn check_quotas(&self, edits: &[QuotaEdit], out: &mut Out<'_>) {
        let tree = &self.tree;
        let reserved = |p: usize| {
            self.reserved_quota
                .get(tree.name(p))
                .copied()
                .unwrap_or_default()
        };
        for q in tree.check_quota_edits(edits, &reserved) {
            let message = if out.object == ObjectKind::Tenant && q.tenant == out.name {
                q.message
            } else {
                format!("tenant {:?}: {}", q.tenant, q.message)
            };
            out.deny(q.field, q.kind.into(), message);
        }
    }

    fn create_tenant_probe(&mut self, t: &Tenant) -> Result<(), Vec<Denial>> {
        self.create_tenant(t, false, Instant::now(), Duration::ZERO)
    }

    fn delete_tenant(
        &mut self,
        t: &Tenant,
        reserve: bool,
        now: Instant,
        ttl: Duration,
    ) -> Result<(), Vec<Denial>> {
        let name = t.name();
        let mut out = Out {
            object: ObjectKind::Tenant,
            name,
            list: Vec::new(),
        };
        let tree = &self.tree;
        let mut children: Vec<String> = tree
            .get(name)
            .map(|id| {
                tree.node(id)
                    .children
                    .iter()
                    .map(|&c| tree.name(c).to_string())
                    .collect()
            })
            .unwrap_or_default();
        let mut pending: Vec<&str> = self
            .reservations
            .iter()
            .filter(|((k, _), r)| *k == ObjectKind::Tenant && r.at == name)
            .map(|((_, n), _)| n.as_str())
            .collect();
        pending.sort_unstable();
        children.extend(pending.iter().map(|p| format!("{p} (being created)")));
        if t.spec.deletion_policy == DeletionPolicy::Retain && !children.is_empty() {
            out.deny(
                "spec.deletionPolicy",
                R::HasChildren,
                format!(
                    "tenant {name:?} still has {} child tenant(s) ({}) and deletionPolicy is Retain: delete them first or set deletionPolicy: Cascade",
                    children.len(),
                    names(&children, 5)
                ),
            );
            return Err(out.list);
        }
        if reserve {
            self.tombstone(name, now, ttl);
        }
        Ok(())
    }

    // ----- LimitProfile -----

    fn create_profile(&self, p: &LimitProfile) -> Result<(), Vec<Denial>> {
        let mut out = Out {
            object: ObjectKind::LimitProfile,
            name: p.name(),
            list: Vec::new(),
        };
        self.check_owner(&p.spec.owner, "LimitProfile", true, &mut out);
        check_limit_values(&p.spec.limits, &mut out);
        if out.list.is_empty() {
            Ok(())
        } else {
            Err(out.list)
        }
    }

    fn update_profile(&self, old: &LimitProfile, new: &LimitProfile) -> Result<(), Vec<Denial>> {
        let name = new.name();
        let mut out = Out {
            object: ObjectKind::LimitProfile,
            name,
            list: Vec::new(),
        };
        let tree = &self.tree;
        let owner = self.check_owner(&new.spec.owner, "LimitProfile", false, &mut out);
        check_limit_values(&new.spec.limits, &mut out);
        let users: Vec<&String> = self
            .profile_users
            .get(name)
            .map(|s| s.iter().collect())
            .unwrap_or_default();
        if new.spec.owner != old.spec.owner
            && let Some(o) = owner
        {
            let outside: Vec<&String> = users
                .iter()
                .copied()
                .filter(|u| {
                    tree.get(u)
                        .is_some_and(|id| !tree.ancestors(id).any(|a| a == o))
                })
                .collect();
            if !outside.is_empty() {
                out.deny(
                    "spec.owner",
                    R::ProfileNotOwnedByAncestor,
                    format!(
                        "tenant(s) {} use this profile but are not strictly below the new owner {:?}",
                        names(&outside, 5),
                        new.spec.owner
                    ),
                );
            }
        }
        if new.spec.limits != old.spec.limits {
            let edits: Vec<QuotaEdit> = users
                .iter()
                .filter_map(|u| tree.get(u))
                .filter_map(|id| {
                    let limits = tree.tenant(id).spec.limits.overlay_on(&new.spec.limits);
                    let quotas = own_quotas(&limits);
                    (quotas != tree.node(id).quotas).then_some(QuotaEdit {
                        target: QuotaTarget::Existing(id),
                        quotas,
                    })
                })
                .collect();
            if !edits.is_empty() && !has_invalid_limit(&out) {
                self.check_quotas(&edits, &mut out);
            }
            for u in &users {
                let Some(id) = tree.get(u) else { continue };
                let t = tree.tenant(id);
                let limits = t.spec.limits.overlay_on(&new.spec.limits);
                let node = tree.node(id);
                for r in CountResource::ALL {
                    if let Some(n) = limits.count(r).filter(|&v| v >= 0)
                        && node.subtree.get(r) > n
                        && node.counts[r.index()] != n
                    {
                        out.deny(
                            format!("spec.limits.{}", r.field()),
                            R::LimitExceeded,
                            format!(
                                "tenant {u:?} uses this profile and its subtree already uses {} {r}, more than the new limit {n}",
                                node.subtree.get(r)
                            ),
                        );
                    }
                }
            }
        }
        if out.list.is_empty() {
            Ok(())
        } else {
            Err(out.list)
        }
    }

    // ----- Channel -----

    fn create_channel(
        &mut self,
        c: &Channel,
        reserve: bool,
        now: Instant,
        ttl: Duration,
    ) -> Result<(), Vec<Denial>> {
        let name = c.name();
        let mut out = Out {
            object: ObjectKind::Channel,
            name,
            list: Vec::new(),
        };
        let owner = self.check_owner(&c.spec.owner, "Channel", true, &mut out);
        if let Some(o) = owner {
            self.check_visibility(c, o, &mut out);
            if let Err(e) = self.tree.check_add(o, CountResource::Channels, 1) {
                out.deny(
                    "spec.owner",
                    R::LimitExceeded,
                    format!("cannot add a channel owned by {:?}: {e}", c.spec.owner),
                );
            }
        }
        if !out.list.is_empty() {
            return Err(out.list);
        }
        if reserve && owner.is_some() {
            let r = Inner::new_reservation(
                &c.spec.owner,
                CountResource::Channels,
                [None; 4],
                None,
                Vec::new(),
            );
            self.reserve((ObjectKind::Channel, name.to_string()), r, now, ttl);
        }
        Ok(())
    }

    fn update_channel(&self, old: &Channel, new: &Channel) -> Result<(), Vec<Denial>> {
        let name = new.name();
        let mut out = Out {
            object: ObjectKind::Channel,
            name,
            list: Vec::new(),
        };
        let tree = &self.tree;
        let Some(o) = self.check_owner(&new.spec.owner, "Channel", false, &mut out) else {
            return Err(out.list);
        };
        self.check_visibility(new, o, &mut out);
        if new.spec.owner != old.spec.owner
            && let Err(e) = tree.check_add(o, CountResource::Channels, 1)
        {
            out.deny(
                "spec.owner",
                R::LimitExceeded,
                format!("cannot move the channel to {:?}: {e}", new.spec.owner),
            );
        }
        if new.spec.owner != old.spec.owner || new.spec.visibility != old.spec.visibility {
            let roots: Option<Vec<usize>> = new
                .spec
                .visibility
                .as_ref()
                .map(|v| v.subtrees.iter().filter_map(|s| tree.get(s)).collect());
            let users = self.channel_users.get(name);
            let lost: Vec<&String> = users
                .into_iter()
                .flatten()
                .filter(|u| {
                    tree.get(u).is_some_and(|id| {
                        let visible = tree.is_self_or_ancestor(o, id)
                            && roots.as_ref().is_none_or(|rs| {
                                rs.iter().any(|&r| tree.is_self_or_ancestor(r, id))
                            });
                        !visible
                    })
                })
                .collect();
            if !lost.is_empty() {
                out.deny(
                    if new.spec.owner != old.spec.owner {
                        "spec.owner"
                    } else {
                        "spec.visibility"
                    },
                    R::ChannelNotVisible,
                    format!(
                        "tenant(s) {} use this channel and would no longer see it",
                        names(&lost, 5)
                    ),
                );
            }
        }
        if out.list.is_empty() {
            Ok(())
        } else {
            Err(out.list)
        }
    }

    fn check_visibility(&self, c: &Channel, owner: usize, out: &mut Out<'_>) {
        let tree = &self.tree;
        let Some(v) = &c.spec.visibility else { return };
        for (k, sub) in v.subtrees.iter().enumerate() {
            let field = format!("spec.visibility.subtrees[{k}]");
            match tree.get(sub) {
                None => out.deny(
                    field,
                    R::UnknownOwner,
                    format!("tenant {sub:?} does not exist"),
                ),
                Some(s) if !tree.is_self_or_ancestor(owner, s) => out.deny(
                    field,
                    R::VisibilityOutsideOwner,
                    format!(
                        "tenant {sub:?} is outside the subtree of the owner {:?}",
                        c.spec.owner
                    ),
                ),
                Some(_) => {}
            }
        }
    }

    // ----- shared -----

    /// The owner of a new or changed LimitProfile/Channel must exist; nothing may be created
    /// under a suspended tenant.
    fn check_owner(
        &self,
        owner: &str,
        what: &str,
        creating: bool,
        out: &mut Out<'_>,
    ) -> Option<usize> {
        let tree = &self.tree;
        let Some(o) = tree.get(owner) else {
            out.deny(
                "spec.owner",
                R::UnknownOwner,
                format!("owner tenant {owner:?} does not exist"),
            );
            return None;
        };
        if creating && let Some(s) = tree.suspended_by(o) {
            let by = if s == o {
                String::new()
            } else {
                format!(" (suspended through its ancestor {:?})", tree.name(s))
            };
            out.deny(
                "spec.owner",
                R::ParentSuspended,
                format!("cannot create a {what} owned by {owner:?}: it is suspended{by}"),
            );
        }
        Some(o)
    }

    fn delete_in_use(&self, kind: ObjectKind, name: &str) -> Result<(), Vec<Denial>> {
        let (users, pending): (Option<&std::collections::BTreeSet<String>>, Vec<&str>) = match kind
        {
            ObjectKind::LimitProfile => (
                self.profile_users.get(name),
                self.reservations
                    .iter()
                    .filter(|(_, r)| r.uses_profile.as_deref() == Some(name))
                    .map(|((_, n), _)| n.as_str())
                    .collect(),
            ),
            _ => (
                self.channel_users.get(name),
                self.reservations
                    .iter()
                    .filter(|(_, r)| r.uses_channels.iter().any(|c| c == name))
                    .map(|((_, n), _)| n.as_str())
                    .collect(),
            ),
        };
        let mut all: Vec<String> = users.into_iter().flatten().cloned().collect();
        all.extend(pending.iter().map(|p| format!("{p} (being created)")));
        if all.is_empty() {
            return Ok(());
        }
        let field = match kind {
            ObjectKind::LimitProfile => "spec.limitProfile",
            _ => "spec.channels",
        };
        Err(vec![Denial::new(
            kind,
            name,
            "metadata.name",
            R::InUse,
            format!(
                "still used by {} tenant(s) ({}): remove it from their {field} first",
                all.len(),
                names(&all, 5)
            ),
        )])
    }
}

fn show_parent(p: &Option<String>) -> String {
    match p {
        Some(p) => format!("{p:?}"),
        None => "no parent (root)".to_string(),
    }
}

fn is_being_deleted(tree: &TenantTree, name: &str) -> bool {
    tree.get(name)
        .is_some_and(|id| tree.tenant(id).metadata.deletion_timestamp.is_some())
}

/// An invalid limit value was refused: the quota rule is not judged on top of it (the value
/// would read as "no quota" and be refused twice).
fn has_invalid_limit(out: &Out<'_>) -> bool {
    out.list.iter().any(|d| d.reason == R::InvalidLimit)
}

fn own_quotas(l: &Limits) -> [Option<i128>; 4] {
    let mut q = [None; 4];
    for r in QuotaResource::ALL {
        q[r.index()] = l.quota(r).and_then(|v| quota_millis(v).ok());
    }
    q
}

/// `limitProfile` must exist and be owned by a strict ancestor (the rule:
/// [`TenantTree::profile_for`]).
fn check_profile(
    tree: &TenantTree,
    name: &str,
    profile: Option<&str>,
    parent: Option<usize>,
    out: &mut Out<'_>,
) {
    let Some(pname) = profile else { return };
    if let Err((kind, reason)) = tree.profile_for(name, pname, parent) {
        out.deny("spec.limitProfile", kind.into(), reason);
    }
}

fn check_channel_use(
    tree: &TenantTree,
    name: &str,
    ch: &str,
    k: usize,
    visible: bool,
    out: &mut Out<'_>,
) {
    let field = format!("spec.channels[{k}]");
    match tree.channel_object(ch) {
        None => out.deny(
            field,
            R::UnknownChannel,
            format!("Channel {ch:?} does not exist"),
        ),
        Some(c) if !visible => {
            let seen_by = match &c.spec.visibility {
                None => format!("the subtree of its owner {:?}", c.spec.owner),
                Some(v) => format!(
                    "the subtrees {} of its owner {:?}",
                    names(&v.subtrees, 5),
                    c.spec.owner
                ),
            };
            out.deny(
                field,
                R::ChannelNotVisible,
                format!("Channel {ch:?} is not visible to tenant {name:?} (only to {seen_by})"),
            );
        }
        Some(_) => {}
    }
}

/// Admins and members, with the rule of `silo plan` (`hierarchy::check_people`); on an
/// update only the subjects it adds are judged for standing for more than the tenant's people.
fn check_members(tree: &TenantTree, t: &Tenant, old: Option<&Tenant>, out: &mut Out<'_>) {
    let namespace = tree.settings().namespace_for(t.name());
    for p in check_people(&t.spec, &namespace, old.map(|o| &o.spec)) {
        out.deny(p.field, p.kind.into(), p.message);
    }
}
