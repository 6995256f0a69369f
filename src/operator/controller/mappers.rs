//! Fan-out: which tenants must be reconciled again when something they depend on changes.
//! Pure functions over the tenants as the watch cache holds them.

use std::collections::{BTreeSet, HashMap};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::types::TenantLinks;

/// Children by parent name.
fn children_index<'a, T: TenantLinks>(tenants: &'a [&'a T]) -> HashMap<&'a str, Vec<&'a str>> {
    let mut out: HashMap<&str, Vec<&str>> = HashMap::new();
    for t in tenants {
        if let Some(p) = t.parent() {
            out.entry(p).or_default().push(t.name());
        }
    }
    out
}

/// Every tenant strictly below `roots` (cycle-safe).
fn below<T: TenantLinks>(tenants: &[&T], roots: &[&str]) -> BTreeSet<String> {
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
pub fn affected_by_tenant<T: TenantLinks>(tenants: &[&T], changed: &T) -> Vec<String> {
    let mut out = below(tenants, &[changed.name()]);
    if let Some(p) = changed.parent() {
        out.insert(p.to_string());
    }
    out.remove(changed.name());
    out.into_iter().collect()
}

/// A LimitProfile changed: the tenants using it and everything below them (effective
/// limits flow down), and their parents (a user's quota is carved out of its parent's, so
/// the parent's own namespace quota follows it).
pub fn affected_by_profile<T: TenantLinks>(tenants: &[&T], profile: &str) -> Vec<String> {
    let using: Vec<&&T> = tenants
        .iter()
        .filter(|t| t.limit_profile() == Some(profile))
        .collect();
    let users: Vec<&str> = using.iter().map(|t| t.name()).collect();
    let mut out = below(tenants, &users);
    out.extend(users.iter().map(|u| u.to_string()));
    out.extend(using.iter().filter_map(|t| t.parent().map(str::to_string)));
    out.into_iter().collect()
}

/// A Channel changed: the tenants that list it.
pub fn affected_by_channel<T: TenantLinks>(tenants: &[&T], channel: &str) -> Vec<String> {
    let mut out: Vec<String> = tenants
        .iter()
        .filter(|t| t.channels().iter().any(|c| c == channel))
        .map(|t| t.name().to_string())
        .collect();
    out.sort();
    out
}

/// What the controller compares between the cached version of a Tenant and a watch event's:
/// what a reconcile acts on, apart from the spec (its `generation` stands for it). Not the status,
/// which only the operator writes: the watch event of its own status write is no reason to
/// reconcile again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TenantSeen {
    generation: Option<i64>,
    deleting: bool,
    /// Hash of labels, annotations and finalizers.
    metadata: u64,
}

impl TenantSeen {
    /// What `m` (a Tenant's metadata) shows.
    pub fn of(m: &ObjectMeta) -> TenantSeen {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (&m.labels, &m.annotations, &m.finalizers).hash(&mut h);
        TenantSeen {
            generation: m.generation,
            deleting: m.deletion_timestamp.is_some(),
            metadata: h.finish(),
        }
    }
}

/// What one watch event of a Tenant (seen `before`, `now`) calls for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TenantChange {
    /// The tree's structure may have changed (a new tenant, a new generation, deletion):
    /// the Channel status loop looks again.
    pub structural: bool,
    /// Its descendants and parent are reconciled ([`affected_by_tenant`]).
    pub fan_out: bool,
    /// The tenant itself is reconciled.
    pub reconcile: bool,
}

/// The rule for a Tenant's watch event: a tenant seen for the first time is reconciled (and,
/// unless it comes from the initial list, its relatives too); a new generation or the start
/// of its deletion reaches its relatives as well; a change of labels, annotations or
/// finalizers reconciles the tenant alone; a change of nothing but its status (the operator's
/// own status write coming back) calls for nothing.
pub fn tenant_change(before: Option<TenantSeen>, now: TenantSeen, initial: bool) -> TenantChange {
    match before {
        None => TenantChange {
            structural: true,
            fan_out: !initial,
            reconcile: true,
        },
        Some(b) if (b.generation, b.deleting) != (now.generation, now.deleting) => TenantChange {
            structural: true,
            fan_out: true,
            reconcile: true,
        },
        Some(b) => TenantChange {
            reconcile: b.metadata != now.metadata,
            ..TenantChange::default()
        },
    }
}

/// The rule for a Tenant's removal from the cluster (its finalizer released): the tree
/// changed and its parent may be waiting for it (deletion of a subtree). Its own trigger is
/// passed on too; the controller finds it gone from its cache and runs nothing.
pub fn tenant_deleted() -> TenantChange {
    TenantChange {
        structural: true,
        fan_out: true,
        reconcile: true,
    }
}

/// An owned object changed: the tenant named by its `silo.dev/tenant` label.
pub fn owner_of(labels: Option<&std::collections::BTreeMap<String, String>>) -> Option<String> {
    labels?.get(crate::render::meta::TENANT_LABEL).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::controller::cached::CachedTenant;
    use crate::types::{Tenant, TenantSpec};

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

    /// The controller runs these rules over its cache records: same answers as over Tenants.
    #[test]
    fn cache_records_reach_the_same_tenants() {
        let all = tree();
        let refs: Vec<&Tenant> = all.iter().collect();
        let cached: Vec<CachedTenant> = all.iter().cloned().map(CachedTenant::from).collect();
        let crefs: Vec<&CachedTenant> = cached.iter().collect();
        for i in 0..all.len() {
            assert_eq!(
                affected_by_tenant(&crefs, &cached[i]),
                affected_by_tenant(&refs, &all[i])
            );
        }
        for p in ["gold", "unused"] {
            assert_eq!(
                affected_by_profile(&crefs, p),
                affected_by_profile(&refs, p)
            );
        }
        for c in ["teltonika", "none"] {
            assert_eq!(
                affected_by_channel(&crefs, c),
                affected_by_channel(&refs, c)
            );
        }
    }

    #[test]
    fn cycles_do_not_loop() {
        let all = [t("a", Some("b"), None, &[]), t("b", Some("a"), None, &[])];
        let refs: Vec<&Tenant> = all.iter().collect();
        assert_eq!(affected_by_tenant(&refs, &all[0]), vec!["b"]);
    }

    #[test]
    fn only_a_status_change_calls_for_nothing() {
        let base = t("acme", Some("root"), None, &[]);
        let seen = |f: &dyn Fn(&mut Tenant)| {
            let mut t = base.clone();
            f(&mut t);
            TenantSeen::of(&t.metadata)
        };
        let before = seen(&|_| {});
        // First sight: reconciled; relatives too unless from the initial list.
        let first = tenant_change(None, before, false);
        assert!(first.structural && first.fan_out && first.reconcile);
        assert!(!tenant_change(None, before, true).fan_out);
        // Status only (the operator's own write): nothing.
        let status = seen(&|t| {
            t.status = Some(crate::types::TenantStatus {
                observed_generation: Some(3),
                ..Default::default()
            });
            t.metadata.resource_version = Some("99".into());
        });
        assert_eq!(
            tenant_change(Some(before), status, false),
            TenantChange::default()
        );
        // Labels, annotations, finalizers: the tenant alone.
        for f in [
            &(|t: &mut Tenant| t.metadata.labels = Some([("a".into(), "b".into())].into()))
                as &dyn Fn(&mut Tenant),
            &|t| t.metadata.annotations = Some([("silo.dev/x".into(), "1".into())].into()),
            &|t| t.metadata.finalizers = Some(vec!["silo.dev/cleanup".into()]),
        ] {
            let c = tenant_change(Some(before), seen(f), false);
            assert!(c.reconcile && !c.structural && !c.fan_out, "{c:?}");
        }
        // A new generation or the start of deletion: everything.
        for f in [
            &(|t: &mut Tenant| t.metadata.generation = Some(2)) as &dyn Fn(&mut Tenant),
            &|t| {
                t.metadata.deletion_timestamp = Some(
                    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Default::default()),
                )
            },
        ] {
            let c = tenant_change(Some(before), seen(f), false);
            assert!(c.reconcile && c.structural && c.fan_out, "{c:?}");
        }
    }

    #[test]
    fn a_removed_tenant_reaches_its_relatives() {
        let c = tenant_deleted();
        assert!(c.structural && c.fan_out && c.reconcile);
    }

    #[test]
    fn owner_from_label() {
        let labels =
            std::collections::BTreeMap::from([("silo.dev/tenant".to_string(), "acme".to_string())]);
        assert_eq!(owner_of(Some(&labels)), Some("acme".to_string()));
        assert_eq!(owner_of(None), None);
    }
}
