//! What a caller may change in a tenant, beyond the webhook's decision: each spec field
//! needs its own permission (and, for limits, isolation, suspension and deletion, a tenant
//! strictly below the caller's), a role or member may grant no more than the caller holds,
//! references must be to profiles and channels the caller can see (else the one 404), and a
//! custom role still held by a member or a token cannot be removed.

use crate::api::authz::Caller;
use crate::api::errors::ApiError;
use crate::api::server::Api;
use crate::hierarchy::roles::{Permission, PermissionSet, builtin_permissions};
use crate::hierarchy::{NodeId, TenantTree};
use crate::types::{Isolation, Limits, Tenant, TenantSpec};

/// Permissions a role resolved for a member of the tenant `target` (existing) or of a new
/// tenant below `parent`, whose spec is `spec` (its own `roles` count).
fn member_role(
    tree: &TenantTree,
    parent: Option<NodeId>,
    spec: &TenantSpec,
    role: &str,
) -> Option<PermissionSet> {
    builtin_permissions(role)
        .or_else(|| {
            spec.roles.iter().find(|r| r.name == role).map(|r| {
                r.permissions
                    .iter()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
        })
        .or_else(|| parent.and_then(|p| tree.resolve_role(p, role).map(|r| r.permissions)))
}

/// What the caller may change in a tenant's spec, field by field (creation: `target` None,
/// `old` the empty spec). Also refuses, with the one 404, references to profiles, channels
/// and tenants the caller cannot see (the engine's messages would tell them apart).
pub fn authorize_spec_change(
    caller: &Caller,
    tree: &TenantTree,
    target: Option<NodeId>,
    parent: Option<NodeId>,
    old: &TenantSpec,
    new: &TenantSpec,
) -> Result<(), ApiError> {
    let creating = target.is_none();
    let below = |what: &str| match target {
        Some(t) => caller.require_below(tree, t, what),
        None => Ok(()),
    };
    if old.limits != new.limits || old.limit_profile != new.limit_profile {
        caller.require(Permission::LimitsUpdate)?;
        below("limits")?;
    }
    if old.isolation != new.isolation {
        caller.require(Permission::IsolationUpdate)?;
        below("isolation")?;
    }
    if old.suspended != new.suspended {
        caller.require(Permission::Suspend)?;
        below("suspension")?;
    }
    if old.deletion_policy != new.deletion_policy {
        caller.require(Permission::TenantsDelete)?;
        below("deletionPolicy")?;
    }
    if old.admins != new.admins {
        caller.require(Permission::AdminsManage)?;
        // Who may be an admin at all (no `system:` users and groups, no service accounts of
        // other namespaces: `hierarchy::people`) is judged by the webhook decision below.
    }
    if old.roles != new.roles {
        caller.require(Permission::RolesManage)?;
        for r in &new.roles {
            if !old.roles.contains(r) {
                let perms = PermissionSet::parse(&r.permissions).unwrap_or_default();
                caller.require_superset(perms, &format!("role {:?}", r.name))?;
            }
        }
    }
    if old.members != new.members {
        caller.require(Permission::MembersManage)?;
        let changed = new
            .members
            .iter()
            .filter(|m| !old.members.contains(m))
            .map(|m| (m, new))
            .chain(
                old.members
                    .iter()
                    .filter(|m| !new.members.contains(m))
                    .map(|m| (m, old)),
            );
        for (m, spec) in changed {
            if let Some(perms) = member_role(tree, parent, spec, &m.role) {
                caller.require_superset(
                    perms,
                    &format!("member {:?} with role {:?}", m.user, m.role),
                )?;
            }
        }
    }
    let others_changed = {
        let mut a = old.clone();
        let mut b = new.clone();
        for s in [&mut a, &mut b] {
            s.limits = Limits::default();
            s.limit_profile = None;
            s.isolation = Isolation::Siloed;
            s.suspended = false;
            s.deletion_policy = Default::default();
            s.admins.clear();
            s.roles.clear();
            s.members.clear();
            s.parent = None;
        }
        a != b
    };
    if others_changed && !creating {
        caller.require(Permission::TenantsUpdate)?;
    }
    // References the caller must be able to see.
    let home = caller.home(tree)?;
    if let Some(p) = new.limit_profile.as_deref()
        && old.limit_profile.as_deref() != Some(p)
        && !profile_visible(tree, caller, home, p)
    {
        return Err(ApiError::not_found("limit profile"));
    }
    for c in &new.channels {
        if !old.channels.contains(c) && !channel_visible(tree, caller, home, c) {
            return Err(ApiError::not_found("channel"));
        }
    }
    Ok(())
}

/// A profile is visible when its owner is in the caller's subtree or above the caller's
/// tenant (those are the ones the caller's descendants may use).
pub fn profile_visible(tree: &TenantTree, caller: &Caller, home: NodeId, name: &str) -> bool {
    tree.profile(name).is_some_and(|p| {
        caller.sees(tree, &p.spec.owner)
            || tree
                .get(&p.spec.owner)
                .is_some_and(|o| tree.ancestors(home).any(|a| a == o))
    })
}

/// A channel is visible when its owner is in the caller's subtree or it is visible to the
/// caller's tenant.
pub fn channel_visible(tree: &TenantTree, caller: &Caller, home: NodeId, name: &str) -> bool {
    tree.channel_object(name)
        .is_some_and(|c| caller.sees(tree, &c.spec.owner) || tree.is_channel_visible(name, home))
}

/// Refuses (409 `RoleInUse`) removing a custom role from `old`'s `spec.roles` while a member or
/// a usable token still holds it: members of the tenant (as in `new`) or of a tenant below whose
/// role resolves to this definition (the nearest definition wins, so a redefinition further
/// down shadows it), and unrevoked, unexpired tokens of those tenants with that role. The
/// message names where it is used (at most ten places, then how many more). Without this, the
/// members' RoleBindings would point at a Role that no longer exists and the tokens would stop
/// authenticating with "role … is no longer defined".
pub async fn refuse_removing_used_roles(
    api: &Api,
    old: &Tenant,
    new: &TenantSpec,
) -> Result<(), ApiError> {
    let name = old.name();
    let removed: Vec<&str> = old
        .spec
        .roles
        .iter()
        .filter(|r| !new.roles.iter().any(|n| n.name == r.name))
        .map(|r| r.name.as_str())
        .collect();
    if removed.is_empty() {
        return Ok(());
    }
    // Per removed role: members holding it, and the tenants where it resolves to this definition.
    let found: Vec<(String, Vec<String>, Vec<String>)> = api.cache.view().with_tree(|tree| {
        let Some(id) = tree.get(name) else {
            return Vec::new();
        };
        removed
            .iter()
            .map(|role| {
                let (mut uses, mut tenants) = (Vec::new(), Vec::new());
                for d in std::iter::once(id).chain(tree.descendants(id)) {
                    let defined_here = tree
                        .resolve_role(d, role)
                        .and_then(|r| r.defined_by)
                        .is_some_and(|by| by == name);
                    if !defined_here {
                        continue;
                    }
                    let t = tree.name(d).to_string();
                    let members = if d == id {
                        &new.members
                    } else {
                        &tree.tenant(d).spec.members
                    };
                    for m in members.iter().filter(|m| m.role == *role) {
                        uses.push(format!("member {:?} of tenant {t:?}", m.user));
                    }
                    tenants.push(t);
                }
                (role.to_string(), uses, tenants)
            })
            .collect()
    });
    for (role, mut uses, tenants) in found {
        for t in api.store.usable_tokens_with_role(&tenants, &role).await? {
            uses.push(format!("token {} of tenant {:?}", t.id, t.tenant));
        }
        if uses.is_empty() {
            continue;
        }
        let more = uses.len().saturating_sub(10);
        uses.truncate(10);
        let mut list = uses.join(", ");
        if more > 0 {
            list.push_str(&format!(" and {more} more"));
        }
        return Err(ApiError::Conflict {
            reason: "RoleInUse",
            message: format!(
                "role {role:?} of tenant {name:?} is still used by {list}: give them another role or revoke the tokens first"
            ),
        });
    }
    Ok(())
}
