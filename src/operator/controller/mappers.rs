//! Fan-out: which tenants must be reconciled again when something they depend on changes.
//! Pure functions over the tenants as the watch cache holds them.

use std::collections::{BTreeSet, HashMap};

use crate::types::Tenant;

/// Children by parent name.
fn children_index<'a>(tenants: &'a [&'a Tenant]) -> HashMap<&'a str, Vec<&'a str>> {
    let mut out: HashMap<&str, Vec<&str>> = HashMap::new();
    for t in tenants {
        if let Some(p) = t.spec.parent.as_deref() {
            out.entry(p).or_default().push(t.name());
        }
    }
    out
}

/// Every tenant strictly below `roots` (cycle-safe).
fn below(tenants: &[&Tenant], roots: &[&str]) -> BTreeSet<String> {
    let index = children_index(tenants);
    let mut out = BTreeSet::new();
    let mut stack: Vec<&str> = roots.to_vec();
    while let Some(n) = stack.pop() {
        for &c in index.get(n).map(Vec::as_slice).unwrap_or(&[]) {
            if out.insert(c.to_string()) {
                stack.push(c);
            }
        }
    }
    out
}

/// A tenant changed (limits, admins, settings, suspension, deletion): its descendants
/// inherit from it and its parent may be waiting for it (deletion of a subtree).
pub fn affected_by_tenant(tenants: &[&Tenant], changed: &Tenant) -> Vec<String> {
    let mut out = below(tenants, &[changed.name()]);
    if let Some(p) = &changed.spec.parent {
        out.insert(p.clone());
    }
    out.remove(changed.name());
    out.into_iter().collect()
}

/// A LimitProfile changed: the tenants using it and everything below them (effective
/// limits flow down), and their parents (a user's quota is carved out of its parent's, so
/// the parent's own namespace quota follows it).
pub fn affected_by_profile(tenants: &[&Tenant], profile: &str) -> Vec<String> {
    let using: Vec<&&Tenant> = tenants
        .iter()
        .filter(|t| t.spec.limit_profile.as_deref() == Some(profile))
        .collect();
    let users: Vec<&str> = using.iter().map(|t| t.name()).collect();
    let mut out = below(tenants, &users);
    out.extend(users.iter().map(|u| u.to_string()));
    out.extend(using.iter().filter_map(|t| t.spec.parent.clone()));
    out.into_iter().collect()
}

/// A Channel changed: the tenants that list it.
pub fn affected_by_channel(tenants: &[&Tenant], channel: &str) -> Vec<String> {
    let mut out: Vec<String> = tenants
        .iter()
        .filter(|t| t.spec.channels.iter().any(|c| c == channel))
        .map(|t| t.name().to_string())
        .collect();
    out.sort();
    out
}

/// An owned object changed: the tenant named by its `silo.dev/tenant` label.
pub fn owner_of(labels: Option<&std::collections::BTreeMap<String, String>>) -> Option<String> {
    labels?.get(crate::render::meta::TENANT_LABEL).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::TenantSpec;

    fn t(name: &str, parent: Option<&str>, profile: Option<&str>, channels: &[&str]) -> Tenant {
        let mut t = Tenant::new(
            name,
            TenantSpec {
                parent: parent.map(str::to_string),
                limit_profile: profile.map(str::to_string),
                channels: channels.iter().map(|c| c.to_string()).collect(),
                ..Default::default()
            },
        );
        t.metadata.name = Some(name.to_string());
        t
    }

    fn tree() -> Vec<Tenant> {
        vec![
            t("root", None, None, &[]),
            t("dist", Some("root"), Some("gold"), &[]),
            t("dealer", Some("dist"), None, &["teltonika"]),
            t("cust", Some("dealer"), None, &["teltonika"]),
            t("other", Some("root"), None, &[]),
        ]
    }

    #[test]
    fn tenant_change_reaches_descendants_and_parent() {
        let all = tree();
        let refs: Vec<&Tenant> = all.iter().collect();
        let by = |i: usize| affected_by_tenant(&refs, &all[i]);
        assert_eq!(by(1), vec!["cust", "dealer", "root"]);
        assert_eq!(by(4), vec!["root"]);
        assert_eq!(by(0), vec!["cust", "dealer", "dist", "other"]);
    }

    #[test]
    fn profile_and_channel_changes_reach_their_users() {
        let all = tree();
        let refs: Vec<&Tenant> = all.iter().collect();
        // A profile: its users, their subtrees and parents only.
        let by = |p: &str| affected_by_profile(&refs, p);
        assert_eq!(by("gold"), vec!["cust", "dealer", "dist", "root"]);
        assert!(by("unused").is_empty());
        // A channel: its users.
        let by = |c: &str| affected_by_channel(&refs, c);
        assert_eq!(by("teltonika"), vec!["cust", "dealer"]);
        assert!(by("none").is_empty());
    }

    #[test]
    fn cycles_do_not_loop() {
        let all = [t("a", Some("b"), None, &[]), t("b", Some("a"), None, &[])];
        let refs: Vec<&Tenant> = all.iter().collect();
        assert_eq!(affected_by_tenant(&refs, &all[0]), vec!["b"]);
    }

    #[test]
    fn owner_from_label() {
        let labels =
            std::collections::BTreeMap::from([("silo.dev/tenant".to_string(), "acme".to_string())]);
        assert_eq!(owner_of(Some(&labels)), Some("acme".to_string()));
        assert_eq!(owner_of(None), None);
    }
}
