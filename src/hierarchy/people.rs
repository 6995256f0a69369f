//! Who may be given access to a tenant: its `admins` (RBAC subjects) and `members` (users
//! with a role). One rule for `silo plan`, the admission webhook and the REST API.
//!
//! SPEC "Admission": admins or members that stand for more than the tenant's own people are
//! refused — Kubernetes' `system:` users and groups (`system:authenticated`,
//! `system:unauthenticated`, `system:anonymous`, `system:masters`, `system:nodes`,
//! `system:serviceaccounts[:<ns>]`, …; see "Referring to subjects" in the Kubernetes RBAC
//! documentation) and service accounts of any namespace but the tenant's own. A subject bound
//! here gets `silo-admin` (or its member role) in the tenant's namespace and, for admins, in
//! every namespace below it, so one that means "everyone" would open the silo to every
//! principal of the cluster, other tenants' workloads included.

use crate::config::is_dns_label;
use crate::types::{Member, Subject, SubjectKind, TenantSpec};

use super::problem::ProblemKind;

/// Why a subject was refused: the field below the subject (`name`, `namespace`, `user` or
/// `role`), the rule (`InvalidMember` for malformed entries, `SubjectTooBroad` for subjects
/// that stand for more than the tenant's people) and the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubjectRefusal {
    pub field: &'static str,
    pub kind: ProblemKind,
    pub message: String,
}

/// A refusal located in a Tenant spec: `field` is the full path (`spec.admins[0].name`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeopleProblem {
    pub field: String,
    pub kind: ProblemKind,
    pub message: String,
}

fn too_broad(field: &'static str, what: String, namespace: &str) -> SubjectRefusal {
    SubjectRefusal {
        field,
        kind: ProblemKind::SubjectTooBroad,
        message: format!(
            "{what}: only the tenant's own people may be admins or members (users, groups, and service accounts of its namespace {namespace:?})"
        ),
    }
}

fn invalid(field: &'static str, message: impl Into<String>) -> SubjectRefusal {
    SubjectRefusal {
        field,
        kind: ProblemKind::InvalidMember,
        message: message.into(),
    }
}

/// Names that are empty, padded or carry control characters (Kubernetes compares names
/// byte for byte, so `"alice "` would be another user than the one meant).
fn check_text(field: &'static str, kind: &str, name: &str) -> Result<(), SubjectRefusal> {
    if name.trim().is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if name.trim() != name || name.chars().any(char::is_control) {
        return Err(invalid(
            field,
            format!(
                "{kind} {name:?} has leading or trailing spaces or control characters: Kubernetes would take it for another name"
            ),
        ));
    }
    Ok(())
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// A user name (`kind: User` admin or a member's `user`) for a tenant whose namespace is
/// `namespace`. `system:serviceaccount:<namespace>:<name>` of the tenant's own namespace is
/// allowed (it is the same principal as a ServiceAccount subject); every other `system:`
/// user and anything with `*` is refused.
pub fn check_user(field: &'static str, user: &str, namespace: &str) -> Result<(), SubjectRefusal> {
    check_text(field, "User", user)?;
    if user.contains('*') {
        return Err(too_broad(
            field,
            format!(
                "User {user:?} looks like a wildcard (RBAC matches names literally; no name means everyone)"
            ),
            namespace,
        ));
    }
    if !user.to_ascii_lowercase().starts_with("system:") {
        return Ok(());
    }
    let what = if let Some(rest) = user.strip_prefix("system:serviceaccount:") {
        match rest.split_once(':') {
            Some((ns, name)) if ns == namespace && is_dns_subdomain(name) => return Ok(()),
            Some((ns, name)) if ns != namespace => format!(
                "User {user:?} is the service account {name:?} of namespace {ns:?}, not of this tenant's namespace"
            ),
            _ => format!("User {user:?} is not a valid service account user name"),
        }
    } else if user == "system:anonymous" {
        format!("User {user:?} is every unauthenticated request to the cluster")
    } else if user.starts_with("system:node:") {
        format!("User {user:?} is a node's kubelet")
    } else {
        format!("User {user:?} is reserved for Kubernetes' own components")
    };
    Err(too_broad(field, what, namespace))
}

/// A group name (`kind: Group` admin): every `system:` group is refused — each stands for a
/// class of principals of the whole cluster (or of a namespace's workloads), never for people.
pub fn check_group(
    field: &'static str,
    group: &str,
    namespace: &str,
) -> Result<(), SubjectRefusal> {
    check_text(field, "Group", group)?;
    if group.contains('*') {
        return Err(too_broad(
            field,
            format!(
                "Group {group:?} looks like a wildcard (RBAC matches names literally; no name means everyone)"
            ),
            namespace,
        ));
    }
    if !group.to_ascii_lowercase().starts_with("system:") {
        return Ok(());
    }
    let what = match group {
        "system:authenticated" => {
            "every authenticated user and service account of the cluster".to_string()
        }
        "system:unauthenticated" => "every unauthenticated request to the cluster".to_string(),
        "system:masters" => "Kubernetes' superuser group (it bypasses RBAC)".to_string(),
        "system:serviceaccounts" => "every service account of the cluster".to_string(),
        "system:nodes" => "every node's kubelet".to_string(),
        g => match g.strip_prefix("system:serviceaccounts:") {
            Some(ns) => format!(
                "every service account of namespace {ns:?} (every workload there, present and future): name the service accounts instead"
            ),
            None => "reserved for Kubernetes' own components".to_string(),
        },
    };
    Err(too_broad(
        field,
        format!("Group {group:?} is {what}"),
        namespace,
    ))
}

/// An admin subject of a tenant whose namespace is `namespace`. Errors name the field below
/// the subject (`name` or `namespace`).
pub fn check_admin(s: &Subject, namespace: &str) -> Result<(), SubjectRefusal> {
    match s.kind {
        SubjectKind::User => check_user("name", &s.name, namespace),
        SubjectKind::Group => check_group("name", &s.name, namespace),
        SubjectKind::ServiceAccount => {
            check_text("name", "ServiceAccount", &s.name)?;
            let Some(ns) = s.namespace.as_deref().filter(|n| !n.is_empty()) else {
                return Err(invalid("namespace", "required for a ServiceAccount"));
            };
            if s.name.contains('*') {
                return Err(too_broad(
                    "name",
                    format!(
                        "ServiceAccount {:?} looks like a wildcard (RBAC matches names literally; no name means everyone)",
                        s.name
                    ),
                    namespace,
                ));
            }
            if ns != namespace {
                return Err(too_broad(
                    "namespace",
                    format!(
                        "ServiceAccount \"{ns}/{}\" belongs to namespace {ns:?}, not to this tenant's namespace (whoever runs workloads there would act as this tenant's admin)",
                        s.name
                    ),
                    namespace,
                ));
            }
            if !is_dns_subdomain(&s.name) {
                return Err(invalid(
                    "name",
                    format!(
                        "{:?} is not a valid service account name (lower-case letters, digits, '-' and '.')",
                        s.name
                    ),
                ));
            }
            Ok(())
        }
    }
}

/// A member (a user with a role) of a tenant whose namespace is `namespace`: the user as in
/// [`check_user`], the role `admin`, `technician`, `viewer` or a custom role name.
pub fn check_member(m: &Member, namespace: &str) -> Result<(), Vec<SubjectRefusal>> {
    let mut out = Vec::new();
    if let Err(e) = check_user("user", &m.user, namespace) {
        out.push(e);
    }
    if !is_dns_label(&m.role) {
        out.push(invalid(
            "role",
            format!("role {:?} must be admin, technician, viewer or a custom role name (lower-case letters, digits, '-')", m.role),
        ));
    }
    if out.is_empty() { Ok(()) } else { Err(out) }
}

/// Every admin and member of `spec` (tenant namespace `namespace`), with duplicate members.
/// With `before` (an update), subjects already present there are not judged again for being
/// too broad, so an object admitted before this rule can still be edited (and deleted) while
/// the operator and the plan report it; malformed entries are always refused.
pub fn check_people(
    spec: &TenantSpec,
    namespace: &str,
    before: Option<&TenantSpec>,
) -> Vec<PeopleProblem> {
    let mut out = Vec::new();
    let keep =
        |e: &SubjectRefusal, existed: bool| !(existed && e.kind == ProblemKind::SubjectTooBroad);
    for (k, a) in spec.admins.iter().enumerate() {
        let existed = before.is_some_and(|b| b.admins.contains(a));
        if let Err(e) = check_admin(a, namespace)
            && keep(&e, existed)
        {
            out.push(PeopleProblem {
                field: format!("spec.admins[{k}].{}", e.field),
                kind: e.kind,
                message: e.message,
            });
        }
    }
    let mut seen = std::collections::HashSet::new();
    for (k, m) in spec.members.iter().enumerate() {
        let existed = before.is_some_and(|b| b.members.iter().any(|o| o.user == m.user));
        for e in check_member(m, namespace).err().into_iter().flatten() {
            if keep(&e, existed) {
                out.push(PeopleProblem {
                    field: format!("spec.members[{k}].{}", e.field),
                    kind: e.kind,
                    message: e.message,
                });
            }
        }
        if !m.user.trim().is_empty() && !seen.insert(m.user.as_str()) {
            out.push(PeopleProblem {
                field: format!("spec.members[{k}].user"),
                kind: ProblemKind::InvalidMember,
                message: format!("user {:?} is listed more than once", m.user),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const NS: &str = "tenant-acme";

    fn admin(kind: SubjectKind, name: &str, ns: Option<&str>) -> Subject {
        Subject {
            kind,
            name: name.into(),
            namespace: ns.map(String::from),
        }
    }

    fn refused(s: &Subject) -> SubjectRefusal {
        check_admin(s, NS).expect_err("refused")
    }

    #[test]
    fn the_tenants_own_people_are_accepted() {
        for s in [
            admin(SubjectKind::User, "alice@acme.example", None),
            admin(SubjectKind::User, "oidc:alice", None),
            admin(SubjectKind::Group, "acme:admins", None),
            admin(SubjectKind::ServiceAccount, "ci-bot", Some(NS)),
            admin(
                SubjectKind::User,
                "system:serviceaccount:tenant-acme:ci-bot",
                None,
            ),
        ] {
            assert_eq!(check_admin(&s, NS), Ok(()), "{s:?}");
        }
        assert_eq!(
            check_user("user", "system:serviceaccount:tenant-acme:ci-bot", NS),
            Ok(())
        );
    }

    #[test]
    fn system_groups_are_refused_naming_what_they_stand_for() {
        let cases = [
            (
                "system:authenticated",
                "every authenticated user and service account of the cluster",
            ),
            (
                "system:unauthenticated",
                "every unauthenticated request to the cluster",
            ),
            ("system:masters", "Kubernetes' superuser group"),
            (
                "system:serviceaccounts",
                "every service account of the cluster",
            ),
            (
                "system:serviceaccounts:tenant-other",
                "every service account of namespace \"tenant-other\"",
            ),
            (
                "system:serviceaccounts:tenant-acme",
                "every service account of namespace \"tenant-acme\"",
            ),
            ("system:nodes", "every node's kubelet"),
            (
                "system:bootstrappers:kubeadm:default-node-token",
                "reserved for Kubernetes' own components",
            ),
            (
                "System:Authenticated",
                "reserved for Kubernetes' own components",
            ),
        ];
        for (g, what) in cases {
            let e = refused(&admin(SubjectKind::Group, g, None));
            assert_eq!(e.kind, ProblemKind::SubjectTooBroad, "{g}");
            assert_eq!(e.field, "name");
            assert!(
                e.message.starts_with(&format!("Group {g:?} is {what}")),
                "{}",
                e.message
            );
            assert!(e.message.ends_with("only the tenant's own people may be admins or members (users, groups, and service accounts of its namespace \"tenant-acme\")"), "{}", e.message);
        }
    }

    #[test]
    fn system_users_and_foreign_service_accounts_are_refused() {
        let cases = [
            (
                "system:anonymous",
                "is every unauthenticated request to the cluster",
            ),
            ("system:node:worker-1", "is a node's kubelet"),
            (
                "system:kube-controller-manager",
                "is reserved for Kubernetes' own components",
            ),
            (
                "system:serviceaccount:tenant-other:default",
                "is the service account \"default\" of namespace \"tenant-other\", not of this tenant's namespace",
            ),
            (
                "system:serviceaccount:tenant-acme",
                "is not a valid service account user name",
            ),
            (
                "system:serviceaccount:tenant-acme:Bad Name",
                "is not a valid service account user name",
            ),
        ];
        for (u, what) in cases {
            let e = check_user("user", u, NS).expect_err(u);
            assert_eq!(e.kind, ProblemKind::SubjectTooBroad, "{u}");
            assert!(
                e.message.starts_with(&format!("User {u:?} {what}")),
                "{}",
                e.message
            );
            let e = refused(&admin(SubjectKind::User, u, None));
            assert!(
                e.message.starts_with(&format!("User {u:?} {what}")),
                "{}",
                e.message
            );
        }
        let e = refused(&admin(
            SubjectKind::ServiceAccount,
            "gitops",
            Some("argocd"),
        ));
        assert_eq!(
            (e.field, e.kind),
            ("namespace", ProblemKind::SubjectTooBroad)
        );
        assert!(e.message.starts_with("ServiceAccount \"argocd/gitops\" belongs to namespace \"argocd\", not to this tenant's namespace"), "{}", e.message);
        // A descendant's or an ancestor's namespace is another namespace too.
        let e = refused(&admin(
            SubjectKind::ServiceAccount,
            "bot",
            Some("tenant-acme-child"),
        ));
        assert_eq!(e.kind, ProblemKind::SubjectTooBroad);
    }

    #[test]
    fn wildcards_empty_and_padded_names() {
        for kind in [SubjectKind::User, SubjectKind::Group] {
            let e = refused(&admin(kind, "*", None));
            assert_eq!(e.kind, ProblemKind::SubjectTooBroad);
            assert!(e.message.contains("looks like a wildcard"), "{}", e.message);
            assert_eq!(
                refused(&admin(kind, "acme:*", None)).kind,
                ProblemKind::SubjectTooBroad
            );
            let e = refused(&admin(kind, "", None));
            assert_eq!(
                (e.field, e.kind, e.message.as_str()),
                ("name", ProblemKind::InvalidMember, "must not be empty")
            );
            let e = refused(&admin(kind, " system:masters", None));
            assert_eq!(e.kind, ProblemKind::InvalidMember);
            assert!(
                e.message.contains("leading or trailing spaces"),
                "{}",
                e.message
            );
            assert_eq!(
                refused(&admin(kind, "bob\n", None)).kind,
                ProblemKind::InvalidMember
            );
        }
        let e = refused(&admin(SubjectKind::ServiceAccount, "*", Some(NS)));
        assert_eq!(e.kind, ProblemKind::SubjectTooBroad);
        let e = refused(&admin(SubjectKind::ServiceAccount, "Bad_Name", Some(NS)));
        assert_eq!(e.kind, ProblemKind::InvalidMember);
        let e = refused(&admin(SubjectKind::ServiceAccount, "ci", None));
        assert_eq!(
            (e.field, e.message.as_str()),
            ("namespace", "required for a ServiceAccount")
        );
    }

    #[test]
    fn members_are_users_with_a_role() {
        let m = |u: &str, r: &str| Member {
            user: u.into(),
            role: r.into(),
        };
        assert_eq!(check_member(&m("bob", "viewer"), NS), Ok(()));
        let e = check_member(&m("system:anonymous", "admin"), NS).unwrap_err();
        assert_eq!(e.len(), 1);
        assert_eq!(
            (e[0].field, e[0].kind),
            ("user", ProblemKind::SubjectTooBroad)
        );
        let e = check_member(&m("system:anonymous", "Super User"), NS).unwrap_err();
        assert_eq!(e.len(), 2);
        assert_eq!(e[1].field, "role");
    }

    #[test]
    fn an_update_judges_only_subjects_it_adds() {
        let mut old = TenantSpec {
            admins: vec![admin(SubjectKind::Group, "system:authenticated", None)],
            ..Default::default()
        };
        let mut new = old.clone();
        assert!(check_people(&new, NS, Some(&old)).is_empty());
        assert_eq!(check_people(&new, NS, None).len(), 1);
        new.members = vec![Member {
            user: "system:anonymous".into(),
            role: "admin".into(),
        }];
        let p = check_people(&new, NS, Some(&old));
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].field, "spec.members[0].user");
        // Malformed entries stay refused even when unchanged.
        old.admins.push(admin(SubjectKind::User, "", None));
        let p = check_people(&old.clone(), NS, Some(&old));
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].field, "spec.admins[1].name");
    }
}
