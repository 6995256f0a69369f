//! The hierarchical quota invariant over random trees and random edits (issue #10, part 2).
//!
//! For every tenant T with a quota and every quota resource, the ResourceQuota `hard` values
//! of all namespaces of T's subtree (as rendered — what the operator applies and
//! `silo plan -o yaml` prints) add up to at most T's quota; and below a quota no namespace is
//! left without one.
//!
//! 1. It holds for *any* tree, including ones that break the rule (created before it, or
//!    while the webhook was down), kept incrementally the way the operator keeps its tree;
//!    the incrementally kept tree renders the same quotas as a full build.
//! 2. Admission enforces exactly the rule `silo plan` reports: starting from a valid tree, the
//!    webhook admits a random edit if and only if the tree after it has no quota problem.

use std::collections::BTreeMap;

use proptest::prelude::*;
use silo::config::PlatformConfig;
use silo::hierarchy::{EngineSettings, Inventory, ProblemKind, TenantTree};
use silo::render::{DesiredObject, render_tenant};
use silo::types::quantity::parse_millis;
use silo::types::{QuantityValue, Tenant, TenantSpec};
use silo::webhook::{Proposal, TreeView};

/// (resource field, ResourceQuota keys it renders to)
const RESOURCES: [(&str, &[&str]); 2] = [
    ("cpu", &["requests.cpu", "limits.cpu"]),
    ("pods", &["pods"]),
];

fn settings() -> EngineSettings {
    EngineSettings {
        max_depth: 64,
        ..EngineSettings::default()
    }
}

/// A tenant `t<i>` with the given parent and own quotas (cpu in thousandths, pods whole).
fn tenant(i: usize, parent: Option<usize>, cpu: Option<u16>, pods: Option<u8>) -> Tenant {
    let mut spec = TenantSpec {
        parent: parent.map(|p| format!("t{p}")),
        ..Default::default()
    };
    spec.limits.cpu = cpu.map(|m| QuantityValue::new(format!("{m}m")));
    spec.limits.pods = pods.map(|p| QuantityValue::new(p.to_string()));
    let mut t = Tenant::new(&format!("t{i}"), spec);
    // Creation order differs from name order, so grants "oldest first" are exercised.
    t.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::from_second(1_700_000_000 + ((i * 7919) % 101) as i64)
            .unwrap(),
    ));
    t
}

/// Own quota of `t` for `field` in thousandths.
fn own(t: &Tenant, field: &str) -> Option<i128> {
    let q = match field {
        "cpu" => t.spec.limits.cpu.as_ref(),
        _ => t.spec.limits.pods.as_ref(),
    };
    q.map(|q| parse_millis(q.as_str()).unwrap())
}

/// `hard[key]` of every tenant namespace that has a ResourceQuota.
fn rendered_quotas(tree: &TenantTree) -> BTreeMap<String, BTreeMap<String, i128>> {
    let cfg = PlatformConfig::default();
    let mut out = BTreeMap::new();
    for id in tree.preorder() {
        for o in render_tenant(tree, id, &cfg) {
            if let DesiredObject::ResourceQuota(q) = o {
                let hard = q
                    .spec
                    .and_then(|s| s.hard)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, parse_millis(&v.0).unwrap()))
                    .collect();
                out.insert(tree.name(id).to_string(), hard);
            }
        }
    }
    out
}

/// The invariant on a tree: returns a description of the first violation.
fn check_invariant(tree: &TenantTree) -> Result<(), String> {
    let hard = rendered_quotas(tree);
    for id in tree.preorder() {
        let t = tree.tenant(id);
        let mut subtree = tree.descendants(id);
        subtree.push(id);
        for (field, keys) in RESOURCES {
            let Some(q) = own(t, field) else { continue };
            for key in keys {
                let mut sum: i128 = 0;
                for &n in &subtree {
                    let name = tree.name(n);
                    let v = hard
                        .get(name)
                        .and_then(|h| h.get(*key))
                        .copied()
                        .ok_or_else(|| {
                            format!("{name} has no {key} although {} bounds it", t.name())
                        })?;
                    sum += v;
                }
                if sum > q {
                    return Err(format!(
                        "{key} over the subtree of {} is {sum}, more than its {q}",
                        t.name()
                    ));
                }
            }
        }
    }
    Ok(())
}

#[derive(Clone, Debug)]
enum Edit {
    /// Set (or drop) the own quotas of tenant #i (if it exists).
    Quota(usize, Option<u16>, Option<u8>),
    /// Add a new leaf below tenant #i (if it exists) with these quotas.
    Add(usize, Option<u16>, Option<u8>),
    /// Remove tenant #i if it is a leaf.
    Remove(usize),
}

fn quota_cpu() -> impl Strategy<Value = Option<u16>> {
    prop_oneof![1 => Just(None), 4 => (0u16..4000).prop_map(Some)]
}

fn quota_pods() -> impl Strategy<Value = Option<u8>> {
    prop_oneof![1 => Just(None), 4 => (0u8..12).prop_map(Some)]
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        3 => (0usize..16, quota_cpu(), quota_pods()).prop_map(|(i, c, p)| Edit::Quota(i, c, p)),
        3 => (0usize..16, quota_cpu(), quota_pods()).prop_map(|(i, c, p)| Edit::Add(i, c, p)),
        1 => (0usize..16).prop_map(Edit::Remove),
    ]
}

/// Random trees: tenant i hangs below an earlier one (or is a root).
fn random_tree() -> impl Strategy<Value = Vec<Tenant>> {
    proptest::collection::vec(
        (proptest::option::of(0usize..100), quota_cpu(), quota_pods()),
        1..10,
    )
    .prop_map(|rows| {
        rows.into_iter()
            .enumerate()
            .map(|(i, (p, c, pods))| tenant(i, p.filter(|_| i > 0).map(|p| p % i), c, pods))
            .collect()
    })
}

/// The proposal an edit makes on the current objects (None when it does not apply).
fn proposal(tenants: &[Tenant], next: usize, e: &Edit) -> Option<Proposal> {
    let nth = |i: usize| tenants.get(i % tenants.len().max(1));
    match e {
        Edit::Quota(i, c, p) => {
            let old = nth(*i)?.clone();
            let mut new = old.clone();
            new.spec.limits.cpu = c.map(|m| QuantityValue::new(format!("{m}m")));
            new.spec.limits.pods = p.map(|p| QuantityValue::new(p.to_string()));
            Some(Proposal::UpdateTenant {
                old: Box::new(old),
                new: Box::new(new),
            })
        }
        Edit::Add(i, c, p) => {
            let parent = nth(*i)?;
            let idx: usize = parent.name()[1..].parse().unwrap();
            Some(Proposal::CreateTenant(tenant(next, Some(idx), *c, *p)))
        }
        Edit::Remove(i) => {
            let t = nth(*i)?;
            let has_children = tenants
                .iter()
                .any(|x| x.spec.parent.as_deref() == Some(t.name()));
            (!has_children).then(|| Proposal::DeleteTenant(t.clone()))
        }
    }
}

/// The objects after a proposal.
fn apply(tenants: &mut Vec<Tenant>, p: &Proposal) {
    match p {
        Proposal::UpdateTenant { new, .. } => {
            let slot = tenants.iter_mut().find(|t| t.name() == new.name()).unwrap();
            *slot = (**new).clone();
        }
        Proposal::CreateTenant(t) => tenants.push(t.clone()),
        Proposal::DeleteTenant(t) => tenants.retain(|x| x.name() != t.name()),
        _ => unreachable!(),
    }
}

fn quota_problems(tenants: &[Tenant]) -> Vec<String> {
    let tree = TenantTree::build(
        Inventory {
            tenants: tenants.to_vec(),
            ..Default::default()
        },
        settings(),
    );
    tree.problems()
        .iter()
        .filter(|p| {
            matches!(
                p.kind,
                ProblemKind::QuotaRequired | ProblemKind::QuotaOverParent
            )
        })
        .map(|p| p.to_string())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 150, ..ProptestConfig::default() })]

    /// 1. Any tree, any edits, kept incrementally: the rendered quotas add up.
    #[test]
    fn rendered_quotas_never_exceed_any_ancestors_quota(
        start in random_tree(),
        edits in proptest::collection::vec(edit(), 0..25),
    ) {
        let mut tenants = start.clone();
        let mut tree = TenantTree::build(
            Inventory { tenants: start, ..Default::default() },
            settings(),
        );
        prop_assert_eq!(check_invariant(&tree), Ok(()));
        let mut next = tenants.len();
        for e in &edits {
            let Some(p) = proposal(&tenants, next, e) else { continue };
            apply(&mut tenants, &p);
            match &p {
                Proposal::UpdateTenant { new, .. } => { tree.upsert_tenant((**new).clone()); }
                Proposal::CreateTenant(t) => { tree.upsert_tenant(t.clone()); next += 1; }
                Proposal::DeleteTenant(t) => { tree.remove_tenant(t.name()); }
                _ => unreachable!(),
            }
            prop_assert_eq!(check_invariant(&tree), Ok(()), "after {:?}", e);
            let full = TenantTree::build(tree.inventory().clone(), settings());
            prop_assert_eq!(rendered_quotas(&tree), rendered_quotas(&full), "after {:?}", e);
        }
    }

    /// 2. From a valid tree, the webhook admits an edit iff the plan finds no quota problem
    ///    after it, so the tree stays valid (and the invariant holds with equality).
    #[test]
    fn admission_enforces_exactly_the_plan_rule(
        seed in random_tree(),
        edits in proptest::collection::vec(edit(), 1..30),
    ) {
        // A valid start: the seed's tenants in order, each admitted or left out.
        let view = TreeView::new(settings());
        let mut tenants: Vec<Tenant> = Vec::new();
        for t in seed {
            if t.spec.parent.as_ref().is_some_and(|p| !tenants.iter().any(|x| x.name() == p)) {
                continue;
            }
            if view.decide(&Proposal::CreateTenant(t.clone()), false).is_ok() {
                view.upsert_tenant(t.clone());
                tenants.push(t);
            }
        }
        prop_assert!(quota_problems(&tenants).is_empty());
        let mut next = 100;
        for e in &edits {
            let Some(p) = proposal(&tenants, next, e) else { continue };
            let mut after = tenants.clone();
            apply(&mut after, &p);
            let problems = quota_problems(&after);
            let verdict = view.decide(&p, false);
            prop_assert_eq!(
                verdict.is_ok(),
                problems.is_empty(),
                "{:?}: webhook {:?}, plan {:?}", e, verdict, problems
            );
            if verdict.is_ok() {
                match &p {
                    Proposal::UpdateTenant { new, .. } => view.upsert_tenant((**new).clone()),
                    Proposal::CreateTenant(t) => { view.upsert_tenant(t.clone()); next += 1; }
                    Proposal::DeleteTenant(t) => view.remove_tenant(t.name()),
                    _ => unreachable!(),
                }
                tenants = after;
            }
        }
        let res = view.with_tree(check_invariant);
        prop_assert_eq!(res, Ok(()));
    }
}
