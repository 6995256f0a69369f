//! Authorization: who the caller is (a token bound to one tenant and one role) and what it may
//! touch.
//!
//! - **Scope**: a token acts on its tenant's subtree only. Anything else (sibling, cousin,
//!   ancestor, a name that does not exist) answers [`ApiError::not_found`], one body for all,
//!   so existence never leaks ([`Caller::scope`]).
//! - **Permissions**: the role's permissions come from the catalogue in
//!   [`crate::hierarchy::roles`] (built-in roles, or a custom role resolved on the token's
//!   tenant path). [`Caller::require`] refuses with 403 naming the missing permission; the
//!   error carries the permission so the requested-actions layer can turn it into a 202.
//! - **Own tenant**: limits, isolation, suspension and deletion of the caller's own tenant are
//!   decided above it ([`Caller::require_below`]): nobody raises their own limits.
//! - **No escalation**: a role, member or token given by the caller never holds a permission
//!   the caller lacks ([`Caller::require_superset`]).
//! - **Suspension**: a token whose tenant (or an ancestor) is suspended may read; every write
//!   is refused with 403 `Suspended` ([`Caller::require_writable`]).

use crate::hierarchy::roles::{Permission, PermissionSet};
use crate::hierarchy::{NodeId, TenantTree};

use super::errors::ApiError;

/// The authenticated caller of one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The token's public id.
    pub token_id: String,
    /// The token's name (empty when it has none): the actor's name in the audit trail.
    pub token_name: String,
    /// The tenant the token is bound to.
    pub tenant: String,
    pub role: String,
    pub permissions: PermissionSet,
    /// The suspended tenant (the own one or an ancestor) when writes are refused.
    pub suspended_by: Option<String>,
}

impl Caller {
    /// The caller's own tenant in the current tree (it may have disappeared since the token
    /// was checked: then nothing is in scope).
    pub fn home(&self, tree: &TenantTree) -> Result<NodeId, ApiError> {
        tree.get(&self.tenant)
            .ok_or_else(|| ApiError::Unauthorized("the token's tenant no longer exists".into()))
    }

    /// Tenant `name` if it is the caller's tenant or below it; otherwise the one 404.
    pub fn scope(&self, tree: &TenantTree, name: &str) -> Result<NodeId, ApiError> {
        let home = self.home(tree)?;
        match tree.get(name) {
            Some(id) if tree.node(id).depth > 0 && tree.is_self_or_ancestor(home, id) => Ok(id),
            _ => Err(ApiError::not_found("tenant")),
        }
    }

    /// Root … tenant `name` when it is in the caller's subtree.
    pub fn path_in_scope(&self, tree: &TenantTree, name: &str) -> Option<Vec<String>> {
        let id = self.scope(tree, name).ok()?;
        Some(path_of(tree, id))
    }

    /// Whether tenant `name` is visible to the caller (its subtree).
    pub fn sees(&self, tree: &TenantTree, name: &str) -> bool {
        self.scope(tree, name).is_ok()
    }

    /// 403 unless the role holds `p`.
    pub fn require(&self, p: Permission) -> Result<(), ApiError> {
        if self.permissions.contains(p) {
            Ok(())
        } else {
            Err(ApiError::Forbidden {
                message: format!(
                    "role {:?} of this token lacks the permission {p} ({})",
                    self.role,
                    p.description()
                ),
                permission: Some(p),
            })
        }
    }

    /// 403 when `target` is the caller's own tenant: `what` (limits, isolation, suspension,
    /// deletion) of a tenant is decided by the tenant above it.
    pub fn require_below(
        &self,
        tree: &TenantTree,
        target: NodeId,
        what: &str,
    ) -> Result<(), ApiError> {
        if tree.name(target) == self.tenant {
            Err(ApiError::Forbidden {
                message: format!(
                    "the {what} of your own tenant {:?} can only be changed by an admin of the tenant above it",
                    self.tenant
                ),
                permission: None,
            })
        } else {
            Ok(())
        }
    }

    /// 403 unless every permission of `granted` is held by the caller ("a role can never grant
    /// more than its creator holds"; also for members and tokens given a role).
    pub fn require_superset(&self, granted: PermissionSet, what: &str) -> Result<(), ApiError> {
        let missing = granted.missing_from(self.permissions);
        if missing.is_empty() {
            return Ok(());
        }
        let names: Vec<&str> = missing.iter().map(|p| p.as_str()).collect();
        Err(ApiError::Forbidden {
            message: format!(
                "{what} would grant {} that role {:?} of this token does not hold",
                names.join(", "),
                self.role
            ),
            permission: None,
        })
    }

    /// 403 `Suspended` when the caller's tenant or an ancestor is suspended.
    pub fn require_writable(&self) -> Result<(), ApiError> {
        match &self.suspended_by {
            None => Ok(()),
            Some(s) if *s == self.tenant => Err(ApiError::Suspended(format!(
                "tenant {s:?} is suspended: its tokens may read but not change anything"
            ))),
            Some(s) => Err(ApiError::Suspended(format!(
                "tenant {:?} is suspended (through its ancestor {s:?}): its tokens may read but not change anything",
                self.tenant
            ))),
        }
    }
}

/// Root … tenant `id`, by name.
pub fn path_of(tree: &TenantTree, id: NodeId) -> Vec<String> {
    let mut p: Vec<String> = std::iter::once(id)
        .chain(tree.ancestors(id))
        .map(|a| tree.name(a).to_string())
        .collect();
    p.reverse();
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hierarchy::roles::builtin_permissions;
    use crate::hierarchy::{EngineSettings, Inventory};
    use crate::types::{Tenant, TenantSpec};

    fn tree() -> TenantTree {
        let t = |n: &str, p: Option<&str>| {
            Tenant::new(
                n,
                TenantSpec {
                    parent: p.map(String::from),
                    ..Default::default()
                },
            )
        };
        TenantTree::build(
            Inventory {
                tenants: vec![
                    t("root", None),
                    t("a", Some("root")),
                    t("a1", Some("a")),
                    t("b", Some("root")),
                ],
                ..Default::default()
            },
            EngineSettings::default(),
        )
    }

    fn caller(tenant: &str, role: &str) -> Caller {
        Caller {
            token_id: "t".into(),
            token_name: String::new(),
            tenant: tenant.into(),
            role: role.into(),
            permissions: builtin_permissions(role).unwrap(),
            suspended_by: None,
        }
    }

    #[test]
    fn scope_is_the_subtree_and_everything_else_is_one_404() {
        let t = tree();
        let c = caller("a", "viewer");
        assert!(c.scope(&t, "a").is_ok());
        assert!(c.scope(&t, "a1").is_ok());
        let outside = |n: &str| c.scope(&t, n).unwrap_err().body();
        assert_eq!(
            outside("b").message,
            "tenant not found in this token's subtree"
        );
        assert_eq!(outside("b"), outside("nope"));
        assert_eq!(outside("root"), outside("nope"));
    }

    #[test]
    fn permissions_own_tenant_and_escalation() {
        let t = tree();
        let v = caller("a", "viewer");
        let e = v.require(Permission::TenantsCreate).unwrap_err();
        assert!(matches!(
            e,
            ApiError::Forbidden {
                permission: Some(Permission::TenantsCreate),
                ..
            }
        ));
        assert!(
            e.to_string()
                .contains("lacks the permission tenants.create")
        );
        let admin = caller("a", "admin");
        assert!(
            admin
                .require_below(&t, t.get("a").unwrap(), "limits")
                .is_err()
        );
        assert!(
            admin
                .require_below(&t, t.get("a1").unwrap(), "limits")
                .is_ok()
        );
        let tech = caller("a", "technician");
        let e = tech
            .require_superset(
                builtin_permissions("admin").unwrap(),
                "member role \"admin\"",
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("tenants.create"), "{e}");
        assert!(
            tech.require_superset(builtin_permissions("viewer").unwrap(), "x")
                .is_ok()
        );
    }

    #[test]
    fn suspended_callers_are_told_why() {
        let mut c = caller("a1", "admin");
        assert!(c.require_writable().is_ok());
        c.suspended_by = Some("a".into());
        let e = c.require_writable().unwrap_err();
        assert_eq!(e.status(), axum::http::StatusCode::FORBIDDEN);
        assert!(e.to_string().contains("through its ancestor \"a\""), "{e}");
    }
}
