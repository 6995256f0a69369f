//! Roles (admin, technician, viewer) and RoleBindings for the tenant's admins, its members
//! and the admins of every ancestor (who administer the whole subtree).

use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject as RbacSubject};

use crate::hierarchy::roles::{Permission, PermissionSet};
use crate::types::{Subject, SubjectKind};

use super::Context;
use super::meta::{namespaced, slug};

pub const ADMIN_ROLE: &str = "silo-admin";
pub const TECHNICIAN_ROLE: &str = "silo-technician";
pub const VIEWER_ROLE: &str = "silo-viewer";
pub const ADMINS_BINDING: &str = "silo-admins";
pub const ANCESTOR_ADMINS_BINDING: &str = "silo-ancestor-admins";
pub const MEMBER_BINDING_PREFIX: &str = "silo-member-";
const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

/// The built-in role names members may hold.
pub const BUILTIN_ROLES: [&str; 3] = ["admin", "technician", "viewer"];

/// Name of the namespace Role that grants member role `role`.
/// Custom roles (`GET/POST /v1/roles`) are materialised as `silo-role-<name>`.
pub fn role_for_member(role: &str) -> String {
    match role {
        "admin" => ADMIN_ROLE.to_string(),
        "technician" => TECHNICIAN_ROLE.to_string(),
        "viewer" => VIEWER_ROLE.to_string(),
        custom => format!("silo-role-{custom}"),
    }
}

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
    let v = |s: &[&str]| s.iter().map(|x| (*x).to_string()).collect::<Vec<_>>();
    PolicyRule {
        api_groups: Some(v(groups)),
        resources: Some(v(resources)),
        verbs: v(verbs),
        ..Default::default()
    }
}

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &[
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
];

/// Kubernetes rules of the `admin` Role (also what `workloads.manage` grants a custom role).
fn admin_rules() -> Vec<PolicyRule> {
    vec![
        rule(
            &[""],
            &[
                "pods",
                "services",
                "configmaps",
                "secrets",
                "persistentvolumeclaims",
                "serviceaccounts",
            ],
            WRITE,
        ),
        // Read-only, as in Kubernetes' own admin/edit since CVE-2021-25740: writing
        // Endpoints would let a tenant point a Service at another tenant's pods.
        rule(&[""], &["endpoints"], READ),
        rule(&["discovery.k8s.io"], &["endpointslices"], READ),
        rule(&[""], &["pods/log"], &["get"]),
        rule(
            &[""],
            &["pods/exec", "pods/portforward"],
            &["get", "create"],
        ),
        rule(
            &["apps"],
            &[
                "deployments",
                "statefulsets",
                "replicasets",
                "deployments/scale",
                "statefulsets/scale",
            ],
            WRITE,
        ),
        rule(&["batch"], &["jobs", "cronjobs"], WRITE),
        rule(&["autoscaling"], &["horizontalpodautoscalers"], WRITE),
        rule(&["networking.k8s.io"], &["ingresses"], WRITE),
        rule(&[""], &["events"], READ),
        rule(&[""], &["resourcequotas", "limitranges"], READ),
        rule(&["networking.k8s.io"], &["networkpolicies"], READ),
        rule(&[RBAC_GROUP], &["roles", "rolebindings"], READ),
    ]
}

/// Kubernetes rules of the `technician` Role (also what `workloads.operate` grants).
fn technician_rules() -> Vec<PolicyRule> {
    vec![
        rule(
            &[""],
            &[
                "pods",
                "services",
                "endpoints",
                "configmaps",
                "persistentvolumeclaims",
            ],
            READ,
        ),
        rule(&[""], &["pods"], &["delete"]),
        rule(&[""], &["pods/log"], &["get"]),
        rule(&[""], &["pods/exec"], &["create"]),
        rule(
            &["apps"],
            &["deployments", "statefulsets", "replicasets"],
            READ,
        ),
        rule(&["apps"], &["deployments", "statefulsets"], &["patch"]),
        rule(
            &["apps"],
            &["deployments/scale", "statefulsets/scale"],
            &["get", "update", "patch"],
        ),
        rule(&["batch"], &["jobs", "cronjobs"], READ),
        rule(&[""], &["events"], READ),
        rule(&[""], &["resourcequotas", "limitranges"], READ),
    ]
}

/// Kubernetes rules of the `viewer` Role (also what `workloads.read` grants).
fn viewer_rules() -> Vec<PolicyRule> {
    vec![
        rule(
            &[""],
            &[
                "pods",
                "services",
                "endpoints",
                "configmaps",
                "persistentvolumeclaims",
            ],
            READ,
        ),
        rule(&[""], &["pods/log"], &["get"]),
        rule(
            &["apps"],
            &["deployments", "statefulsets", "replicasets"],
            READ,
        ),
        rule(&["batch"], &["jobs", "cronjobs"], READ),
        rule(&[""], &["events"], READ),
        rule(&[""], &["resourcequotas", "limitranges"], READ),
    ]
}

/// The Kubernetes rules a custom role gets in the tenant namespace: those of the built-in
/// Role matching each `workloads.*` permission it holds (the other permissions act on the
/// REST API only and grant nothing in the namespace).
pub fn custom_role_rules(permissions: PermissionSet) -> Vec<PolicyRule> {
    let mut out = Vec::new();
    for (p, rules) in [
        (
            Permission::WorkloadsRead,
            viewer_rules as fn() -> Vec<PolicyRule>,
        ),
        (Permission::WorkloadsOperate, technician_rules),
        (Permission::WorkloadsManage, admin_rules),
    ] {
        if permissions.contains(p) {
            for r in rules() {
                if !out.contains(&r) {
                    out.push(r);
                }
            }
        }
    }
    out
}

/// The three built-in Roles, then one `silo-role-<name>` per custom role the tenant's members
/// hold. Nobody in the tenant may edit its quota, limit range, network policy or RBAC: those
/// are the silo's walls and belong to the operator. Each built-in Role is a subset of
/// Kubernetes' own ClusterRole of the same level (admin → `admin`, technician → `edit`,
/// viewer → `view`, as of Kubernetes 1.28), minus what tenants must not do, and a custom role
/// is a union of them; `render::rbac_upstream` checks that against the captured upstream rules.
pub fn roles(cx: &Context<'_>) -> Vec<Role> {
    let builtin = [
        (ADMIN_ROLE.to_string(), admin_rules(), None),
        (TECHNICIAN_ROLE.to_string(), technician_rules(), None),
        (VIEWER_ROLE.to_string(), viewer_rules(), None),
    ];
    let custom = cx.custom_roles.iter().map(|r| {
        (
            role_for_member(&r.name),
            custom_role_rules(r.permissions),
            r.defined_by.clone(),
        )
    });
    builtin
        .into_iter()
        .chain(custom)
        .map(|(name, rules, defined_by)| {
            let mut metadata = namespaced(cx.tenant, &cx.namespace, &name, &[]);
            if let Some(by) = defined_by {
                metadata
                    .annotations
                    .get_or_insert_with(Default::default)
                    .insert("silo.dev/role-defined-by".to_string(), by);
            }
            Role {
                metadata,
                rules: Some(rules),
            }
        })
        .collect()
}

fn to_rbac(s: &Subject) -> RbacSubject {
    match s.kind {
        SubjectKind::User => RbacSubject {
            kind: "User".into(),
            name: s.name.clone(),
            api_group: Some(RBAC_GROUP.into()),
            namespace: None,
        },
        SubjectKind::Group => RbacSubject {
            kind: "Group".into(),
            name: s.name.clone(),
            api_group: Some(RBAC_GROUP.into()),
            namespace: None,
        },
        SubjectKind::ServiceAccount => RbacSubject {
            kind: "ServiceAccount".into(),
            name: s.name.clone(),
            api_group: Some(String::new()),
            namespace: s.namespace.clone(),
        },
    }
}

fn binding(
    cx: &Context<'_>,
    name: &str,
    role: &str,
    subjects: Vec<RbacSubject>,
    extra: &[(&str, &str)],
) -> RoleBinding {
    RoleBinding {
        metadata: namespaced(cx.tenant, &cx.namespace, name, extra),
        role_ref: RoleRef {
            api_group: RBAC_GROUP.into(),
            kind: "Role".into(),
            name: role.to_string(),
        },
        subjects: Some(subjects),
    }
}

/// Name of the RoleBinding of member `user` with role `role`:
/// `silo-member-<slug of user>-<role>`. The role is part of the name because a RoleBinding's
/// `roleRef` cannot change in place (see [`super::immutable`]): a new role renders a new
/// binding, created before the old one is deleted.
pub fn member_binding_name(user: &str, role: &str) -> String {
    let role = if crate::config::is_dns_label(role) && role.len() <= 40 {
        role.to_string()
    } else {
        slug(role)
    };
    format!("{MEMBER_BINDING_PREFIX}{}-{role}", slug(user))
}

/// Bindings: own admins, ancestors' admins, then one per member (sorted by user).
/// While the tenant (or an ancestor) is suspended only admin access remains.
pub fn role_bindings(cx: &Context<'_>) -> Vec<RoleBinding> {
    let t = cx.tenant;
    let mut out = Vec::new();
    if !t.spec.admins.is_empty() {
        out.push(binding(
            cx,
            ADMINS_BINDING,
            ADMIN_ROLE,
            t.spec.admins.iter().map(to_rbac).collect(),
            &[],
        ));
    }
    let mut ancestor_subjects: Vec<RbacSubject> = Vec::new();
    for a in &cx.ancestor_admins {
        let s = to_rbac(a);
        if !ancestor_subjects.contains(&s) {
            ancestor_subjects.push(s);
        }
    }
    if !ancestor_subjects.is_empty() {
        out.push(binding(
            cx,
            ANCESTOR_ADMINS_BINDING,
            ADMIN_ROLE,
            ancestor_subjects,
            &[],
        ));
    }
    let mut members: Vec<_> = t
        .spec
        .members
        .iter()
        .filter(|m| !cx.suspended || m.role == "admin")
        .collect();
    members.sort_by(|a, b| a.user.cmp(&b.user));
    for m in members {
        let name = member_binding_name(&m.user, &m.role);
        let subject = RbacSubject {
            kind: "User".into(),
            name: m.user.clone(),
            api_group: Some(RBAC_GROUP.into()),
            namespace: None,
        };
        out.push(binding(
            cx,
            &name,
            &role_for_member(&m.role),
            vec![subject],
            &[("silo.dev/member-role", &m.role)],
        ));
    }
    out
}
