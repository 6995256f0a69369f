//! Roles: the fixed permission catalogue, the built-in roles (`admin`, `technician`,
//! `viewer`) and the custom roles tenants define for their subtree (`spec.roles`,
//! `POST /v1/roles`). Plain data and functions, used by the REST API (who may call what), the
//! webhook and `silo plan` (a member's role must exist) and the renderer (the Kubernetes Role
//! a custom role becomes).
//!
//! A custom role defined by tenant X is usable by members and API tokens of X and of every
//! tenant below X; the nearest definition (the tenant itself, then its parent, …) wins when
//! two tenants on a path define the same name. A role never grants more than its creator
//! holds: the API checks that on `POST /v1/roles`, and likewise when a member or token is
//! given a role ([`PermissionSet::missing_from`]).

use std::fmt;

use crate::config::is_dns_label;
use crate::types::{CustomRole, TenantSpec};

use super::tree::{NodeId, TenantTree};

/// One permission of the fixed catalogue (documented in the README, served by
/// `GET /v1/roles`). The names are stable: tokens, members and custom roles refer to them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Permission {
    /// Read tenants, tree, usage, members, roles, profiles and channels of the subtree.
    TenantsRead,
    /// Create tenants below the own tenant or a tenant of the subtree.
    TenantsCreate,
    /// Change displayName, settings, channels, database, mqtt, encryption, deletionPolicy.
    TenantsUpdate,
    /// Delete tenants strictly below the own tenant.
    TenantsDelete,
    /// Change `limits` and `limitProfile` of tenants strictly below the own tenant.
    LimitsUpdate,
    /// Change `isolation` of tenants strictly below the own tenant.
    IsolationUpdate,
    /// Suspend and resume tenants strictly below the own tenant.
    Suspend,
    /// Request an encryption-key rotation (`POST …/rotate-key`).
    KeysRotate,
    /// Add, change and remove members (only with roles the caller itself holds).
    MembersManage,
    /// Change `spec.admins` (Kubernetes subjects administering the subtree).
    AdminsManage,
    /// Define custom roles (`POST /v1/roles`), never granting more than the caller holds.
    RolesManage,
    /// Mint, list and revoke API tokens of the subtree (`/v1/tokens`).
    TokensManage,
    /// Create LimitProfiles owned by a tenant of the subtree.
    ProfilesManage,
    /// Create master Channels owned by a tenant of the subtree.
    ChannelsManage,
    /// Register and manage devices (devices API).
    DevicesManage,
    /// Ask for a sensitive operation the role lacks (requested actions API).
    RequestsCreate,
    /// Approve or decline requested actions from below.
    RequestsApprove,
    /// Read the audit trail of the subtree.
    AuditRead,
    /// Kubernetes: read workloads, services, config maps, events and logs in the namespace.
    WorkloadsRead,
    /// Kubernetes: restart pods, exec, scale and patch deployments/statefulsets.
    WorkloadsOperate,
    /// Kubernetes: create, change and delete workloads, services, secrets and jobs.
    WorkloadsManage,
}

impl Permission {
    pub const ALL: [Permission; 21] = [
        Permission::TenantsRead,
        Permission::TenantsCreate,
        Permission::TenantsUpdate,
        Permission::TenantsDelete,
        Permission::LimitsUpdate,
        Permission::IsolationUpdate,
        Permission::Suspend,
        Permission::KeysRotate,
        Permission::MembersManage,
        Permission::AdminsManage,
        Permission::RolesManage,
        Permission::TokensManage,
        Permission::ProfilesManage,
        Permission::ChannelsManage,
        Permission::DevicesManage,
        Permission::RequestsCreate,
        Permission::RequestsApprove,
        Permission::AuditRead,
        Permission::WorkloadsRead,
        Permission::WorkloadsOperate,
        Permission::WorkloadsManage,
    ];

    /// Sensitive permissions a caller lacking them may still ask for (requested actions,
    /// `POST /v1/requests`): with `requests.create`, a call refused for one of these answers
    /// `202` with a request that an admin of the target tenant or an ancestor decides.
    /// Deleting a tenant, raising limits (or assigning a profile), changing isolation,
    /// changing a custom role's permissions, minting a token (an admin token included).
    pub const REQUESTABLE: [Permission; 5] = [
        Permission::TenantsDelete,
        Permission::LimitsUpdate,
        Permission::IsolationUpdate,
        Permission::RolesManage,
        Permission::TokensManage,
    ];

    /// Whether the permission is in [`Permission::REQUESTABLE`].
    pub fn is_requestable(self) -> bool {
        Permission::REQUESTABLE.contains(&self)
    }

    /// The name used in roles and messages, e.g. `members.manage`.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::TenantsRead => "tenants.read",
            Permission::TenantsCreate => "tenants.create",
            Permission::TenantsUpdate => "tenants.update",
            Permission::TenantsDelete => "tenants.delete",
            Permission::LimitsUpdate => "limits.update",
            Permission::IsolationUpdate => "isolation.update",
            Permission::Suspend => "suspend",
            Permission::KeysRotate => "keys.rotate",
            Permission::MembersManage => "members.manage",
            Permission::AdminsManage => "admins.manage",
            Permission::RolesManage => "roles.manage",
            Permission::TokensManage => "tokens.manage",
            Permission::ProfilesManage => "profiles.manage",
            Permission::ChannelsManage => "channels.manage",
            Permission::DevicesManage => "devices.manage",
            Permission::RequestsCreate => "requests.create",
            Permission::RequestsApprove => "requests.approve",
            Permission::AuditRead => "audit.read",
            Permission::WorkloadsRead => "workloads.read",
            Permission::WorkloadsOperate => "workloads.operate",
            Permission::WorkloadsManage => "workloads.manage",
        }
    }

    /// One line saying what the permission allows (the catalogue as served and documented).
    pub fn description(self) -> &'static str {
        match self {
            Permission::TenantsRead => {
                "read tenants, tree, usage, members, roles, limit profiles and channels of the subtree"
            }
            Permission::TenantsCreate => "create tenants inside the subtree",
            Permission::TenantsUpdate => {
                "change displayName, settings, channels, database, mqtt, encryption and deletionPolicy"
            }
            Permission::TenantsDelete => "delete tenants strictly below the own tenant",
            Permission::LimitsUpdate => {
                "change limits and limitProfile of tenants strictly below the own tenant"
            }
            Permission::IsolationUpdate => {
                "change isolation of tenants strictly below the own tenant"
            }
            Permission::Suspend => "suspend and resume tenants strictly below the own tenant",
            Permission::KeysRotate => "request an encryption key rotation",
            Permission::MembersManage => {
                "add, change and remove members, with roles the caller holds itself"
            }
            Permission::AdminsManage => "change the Kubernetes admins (spec.admins) of tenants",
            Permission::RolesManage => {
                "define custom roles, with permissions the caller holds itself"
            }
            Permission::TokensManage => "mint, list and revoke API tokens of the subtree",
            Permission::ProfilesManage => "create limit profiles owned by a tenant of the subtree",
            Permission::ChannelsManage => "create master channels owned by a tenant of the subtree",
            Permission::DevicesManage => "register and manage devices",
            Permission::RequestsCreate => "ask for a sensitive operation the role lacks",
            Permission::RequestsApprove => "approve or decline requested actions from below",
            Permission::AuditRead => "read the audit trail of the subtree",
            Permission::WorkloadsRead => {
                "Kubernetes: read pods, logs, services, config maps, workloads and events in the tenant namespace"
            }
            Permission::WorkloadsOperate => {
                "Kubernetes: delete (restart) pods, exec, scale and patch deployments and statefulsets"
            }
            Permission::WorkloadsManage => {
                "Kubernetes: create, change and delete workloads, services, secrets, jobs and ingresses"
            }
        }
    }

    fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Permission {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Permission::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                format!("unknown permission {s:?} (see the permission catalogue: GET /v1/roles)")
            })
    }
}

/// A set of permissions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PermissionSet(u32);

impl PermissionSet {
    pub fn empty() -> Self {
        PermissionSet(0)
    }

    /// Every permission of the catalogue (the `admin` role).
    pub fn all() -> Self {
        Permission::ALL.into_iter().collect()
    }

    pub fn contains(self, p: Permission) -> bool {
        self.0 & p.bit() != 0
    }

    pub fn insert(&mut self, p: Permission) {
        self.0 |= p.bit();
    }

    /// The permissions of `self` that `holder` lacks (empty: `self` ⊆ `holder`), in catalogue
    /// order: "a role never grants more than its creator holds".
    pub fn missing_from(self, holder: PermissionSet) -> Vec<Permission> {
        self.iter().filter(|p| !holder.contains(*p)).collect()
    }

    pub fn iter(self) -> impl Iterator<Item = Permission> {
        Permission::ALL
            .into_iter()
            .filter(move |p| self.contains(*p))
    }

    /// Names in catalogue order.
    pub fn names(self) -> Vec<String> {
        self.iter().map(|p| p.as_str().to_string()).collect()
    }

    /// Parses permission names; the first unknown one is reported with its index.
    pub fn parse(names: &[String]) -> Result<Self, (usize, String)> {
        let mut out = PermissionSet::empty();
        for (k, n) in names.iter().enumerate() {
            out.insert(n.parse::<Permission>().map_err(|e| (k, e))?);
        }
        Ok(out)
    }
}

impl FromIterator<Permission> for PermissionSet {
    fn from_iter<I: IntoIterator<Item = Permission>>(iter: I) -> Self {
        let mut s = PermissionSet::empty();
        for p in iter {
            s.insert(p);
        }
        s
    }
}

/// The built-in role names.
pub const BUILTIN_ROLES: [&str; 3] = ["admin", "technician", "viewer"];

/// Permissions of a built-in role: `admin` everything; `technician` reads everything, manages
/// devices and members (with roles it holds, so never admins) and operates workloads, but
/// changes no limits, isolation, deletion or tokens; `viewer` reads.
pub fn builtin_permissions(role: &str) -> Option<PermissionSet> {
    use Permission as P;
    match role {
        "admin" => Some(PermissionSet::all()),
        "technician" => Some(
            [
                P::TenantsRead,
                P::MembersManage,
                P::DevicesManage,
                P::RequestsCreate,
                P::AuditRead,
                P::WorkloadsRead,
                P::WorkloadsOperate,
            ]
            .into_iter()
            .collect(),
        ),
        "viewer" => Some(
            [P::TenantsRead, P::AuditRead, P::WorkloadsRead]
                .into_iter()
                .collect(),
        ),
        _ => None,
    }
}

/// A role name resolved for one tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedRole {
    pub name: String,
    pub permissions: PermissionSet,
    /// The tenant defining it; None for a built-in role.
    pub defined_by: Option<String>,
}

impl TenantTree {
    /// What role `name` means for tenant `id`: a built-in role, or the nearest custom role of
    /// that name defined by the tenant or one of its ancestors. Unknown permissions in a
    /// definition (refused by admission) grant nothing.
    pub fn resolve_role(&self, id: NodeId, name: &str) -> Option<ResolvedRole> {
        if let Some(permissions) = builtin_permissions(name) {
            return Some(ResolvedRole {
                name: name.to_string(),
                permissions,
                defined_by: None,
            });
        }
        std::iter::once(id)
            .chain(self.ancestors(id))
            .find_map(|a| {
                self.tenant(a)
                    .spec
                    .roles
                    .iter()
                    .find(|r| r.name == name)
                    .map(|r| (a, r))
            })
            .map(|(a, r)| ResolvedRole {
                name: name.to_string(),
                permissions: lenient(&r.permissions),
                defined_by: Some(self.name(a).to_string()),
            })
    }

    /// Custom roles usable at `id` (defined by it or an ancestor; nearest definition per name),
    /// sorted by name.
    pub fn roles_usable_at(&self, id: NodeId) -> Vec<ResolvedRole> {
        let mut out: Vec<ResolvedRole> = Vec::new();
        for a in std::iter::once(id).chain(self.ancestors(id)) {
            for r in &self.tenant(a).spec.roles {
                if !out.iter().any(|o| o.name == r.name) {
                    out.push(ResolvedRole {
                        name: r.name.clone(),
                        permissions: lenient(&r.permissions),
                        defined_by: Some(self.name(a).to_string()),
                    });
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

fn lenient(names: &[String]) -> PermissionSet {
    names.iter().filter_map(|n| n.parse().ok()).collect()
}

/// Checks `spec.roles` (names are DNS labels, not built-in, not repeated; permissions from the
/// catalogue) and that every member's role is built-in, defined in `spec.roles`, or defined by
/// an ancestor (`parent` and above; None = a root). Reports `(field, reason)`.
pub fn check_roles(
    tree: &TenantTree,
    parent: Option<NodeId>,
    spec: &TenantSpec,
    mut problem: impl FnMut(String, String),
) {
    check_role_definitions(&spec.roles, &mut problem);
    for (k, m) in spec.members.iter().enumerate() {
        if !is_dns_label(&m.role) {
            continue; // reported by the member checks
        }
        let known = builtin_permissions(&m.role).is_some()
            || spec.roles.iter().any(|r| r.name == m.role)
            || parent.is_some_and(|p| tree.resolve_role(p, &m.role).is_some());
        if !known {
            problem(
                format!("spec.members[{k}].role"),
                format!(
                    "role {:?} is not defined: use admin, technician, viewer or a custom role defined by this tenant or an ancestor (spec.roles, POST /v1/roles)",
                    m.role
                ),
            );
        }
    }
}

/// Checks custom role definitions alone (see [`check_roles`]).
pub fn check_role_definitions(roles: &[CustomRole], mut problem: impl FnMut(String, String)) {
    let mut seen = std::collections::HashSet::new();
    for (k, r) in roles.iter().enumerate() {
        if !is_dns_label(&r.name) || r.name.len() > 50 {
            problem(
                format!("spec.roles[{k}].name"),
                format!(
                    "{:?} must be lower-case letters, digits and '-' (at most 50 characters)",
                    r.name
                ),
            );
        } else if builtin_permissions(&r.name).is_some() {
            problem(
                format!("spec.roles[{k}].name"),
                format!("{:?} is a built-in role and cannot be redefined", r.name),
            );
        } else if !seen.insert(r.name.as_str()) {
            problem(
                format!("spec.roles[{k}].name"),
                format!("role {:?} is defined more than once", r.name),
            );
        }
        if let Err((i, reason)) = PermissionSet::parse(&r.permissions) {
            problem(format!("spec.roles[{k}].permissions[{i}]"), reason);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hierarchy::{EngineSettings, Inventory};
    use crate::types::{Member, Tenant, TenantSpec};

    fn role(name: &str, perms: &[&str]) -> CustomRole {
        CustomRole {
            name: name.into(),
            permissions: perms.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn tree() -> TenantTree {
        let mut root = Tenant::new("root", TenantSpec::default());
        root.spec.roles = vec![
            role("support", &["tenants.read", "members.manage"]),
            role("auditor", &["audit.read"]),
        ];
        let mut a = Tenant::new(
            "a",
            TenantSpec {
                parent: Some("root".into()),
                ..Default::default()
            },
        );
        a.spec.roles = vec![role("support", &["tenants.read"])];
        let b = Tenant::new(
            "b",
            TenantSpec {
                parent: Some("a".into()),
                ..Default::default()
            },
        );
        TenantTree::build(
            Inventory {
                tenants: vec![root, a, b],
                ..Default::default()
            },
            EngineSettings::default(),
        )
    }

    #[test]
    fn catalogue_names_round_trip_and_unknown_names_are_named() {
        for p in Permission::ALL {
            assert_eq!(p.as_str().parse::<Permission>(), Ok(p));
            assert!(!p.description().is_empty());
        }
        let e = "tenants.write".parse::<Permission>().unwrap_err();
        assert!(e.contains("\"tenants.write\""), "{e}");
        assert_eq!(PermissionSet::all().iter().count(), Permission::ALL.len());
    }

    #[test]
    fn builtin_roles_nest_and_technician_cannot_touch_limits_or_tokens() {
        let admin = builtin_permissions("admin").unwrap();
        let tech = builtin_permissions("technician").unwrap();
        let viewer = builtin_permissions("viewer").unwrap();
        assert!(viewer.missing_from(tech).is_empty());
        assert!(tech.missing_from(admin).is_empty());
        for p in [
            Permission::LimitsUpdate,
            Permission::IsolationUpdate,
            Permission::TenantsDelete,
            Permission::TokensManage,
        ] {
            assert!(!tech.contains(p), "{p}");
        }
        assert!(tech.contains(Permission::MembersManage));
        assert_eq!(
            admin.missing_from(tech).first(),
            Some(&Permission::TenantsCreate)
        );
        assert!(builtin_permissions("support").is_none());
    }

    #[test]
    fn the_nearest_definition_wins() {
        let t = tree();
        let b = t.get("b").unwrap();
        let r = t.resolve_role(b, "support").unwrap();
        assert_eq!(r.defined_by.as_deref(), Some("a"));
        assert_eq!(r.permissions.names(), vec!["tenants.read"]);
        let root = t.get("root").unwrap();
        assert_eq!(
            t.resolve_role(root, "support").unwrap().permissions.names(),
            vec!["tenants.read", "members.manage"]
        );
        assert_eq!(
            t.resolve_role(b, "auditor").unwrap().defined_by.as_deref(),
            Some("root")
        );
        assert!(t.resolve_role(root, "nobody").is_none());
        let usable: Vec<String> = t.roles_usable_at(b).into_iter().map(|r| r.name).collect();
        assert_eq!(usable, vec!["auditor", "support"]);
    }

    #[test]
    fn bad_definitions_and_undefined_member_roles_are_named() {
        let t = tree();
        let mut spec = TenantSpec {
            roles: vec![
                role("admin", &[]),
                role("Ops", &[]),
                role("ops", &["tenants.read", "fly"]),
                role("ops", &[]),
            ],
            members: vec![
                Member {
                    user: "u1".into(),
                    role: "auditor".into(),
                },
                Member {
                    user: "u2".into(),
                    role: "ops".into(),
                },
                Member {
                    user: "u3".into(),
                    role: "ghost".into(),
                },
            ],
            ..Default::default()
        };
        let mut got = Vec::new();
        check_roles(&t, t.get("a"), &spec, |f, r| got.push(format!("{f}: {r}")));
        assert_eq!(
            got,
            vec![
                "spec.roles[0].name: \"admin\" is a built-in role and cannot be redefined",
                "spec.roles[1].name: \"Ops\" must be lower-case letters, digits and '-' (at most 50 characters)",
                "spec.roles[2].permissions[1]: unknown permission \"fly\" (see the permission catalogue: GET /v1/roles)",
                "spec.roles[3].name: role \"ops\" is defined more than once",
                "spec.members[2].role: role \"ghost\" is not defined: use admin, technician, viewer or a custom role defined by this tenant or an ancestor (spec.roles, POST /v1/roles)",
            ]
        );
        // A root tenant cannot use a role only a (non-existent) ancestor would define.
        spec.roles.clear();
        let mut got = Vec::new();
        check_roles(&t, None, &spec, |f, _| got.push(f));
        assert_eq!(
            got,
            vec![
                "spec.members[0].role",
                "spec.members[1].role",
                "spec.members[2].role"
            ]
        );
    }
}
