//! Rules of the tenant tree, one test per rule, plus flespi's worked example and property tests.

use proptest::prelude::*;

use super::*;
use crate::types::channel::{ChannelSpec, Visibility};
use crate::types::profile::LimitProfileSpec;
use crate::types::tenant::{TenantStatus, UsageStatus};
use crate::types::{
    Channel, CountResource, LimitProfile, Limits, QuantityValue, Tenant, TenantSpec, UsageCounts,
};

use super::synthetic::{built as build, tenant};

fn with_limits(mut t: Tenant, l: Limits) -> Tenant {
    t.spec.limits = l;
    t
}

fn with_devices(mut t: Tenant, devices: i64) -> Tenant {
    t.status = Some(TenantStatus {
        usage: Some(UsageStatus {
            own: UsageCounts {
                devices,
                ..Default::default()
            },
            ..Default::default()
        }),
        ..Default::default()
    });
    t
}

fn profile(name: &str, owner: &str, l: Limits) -> LimitProfile {
    LimitProfile::new(
        name,
        LimitProfileSpec {
            owner: owner.into(),
            limits: l,
        },
    )
}

fn channel(name: &str, owner: &str, subtrees: Option<&[&str]>) -> Channel {
    Channel::new(
        name,
        ChannelSpec {
            owner: owner.into(),
            visibility: subtrees.map(|s| Visibility {
                subtrees: s.iter().map(|x| x.to_string()).collect(),
            }),
            ..Default::default()
        },
    )
}

fn build_all(
    tenants: Vec<Tenant>,
    profiles: Vec<LimitProfile>,
    channels: Vec<Channel>,
) -> TenantTree {
    TenantTree::build(
        Inventory {
            tenants,
            profiles,
            channels,
        },
        EngineSettings::default(),
    )
}

fn lines(tree: &TenantTree) -> Vec<String> {
    tree.problems().iter().map(ToString::to_string).collect()
}

fn chain(n: usize) -> Vec<Tenant> {
    (0..n)
        .map(|i| {
            tenant(
                &format!("t{i}"),
                (i > 0).then(|| format!("t{}", i - 1)).as_deref(),
            )
        })
        .collect()
}

#[test]
fn valid_tree_has_depths_paths_and_no_problems() {
    let tree = build(vec![
        tenant("acme", None),
        tenant("north", Some("acme")),
        tenant("dealer", Some("north")),
    ]);
    assert!(tree.problems().is_empty(), "{:?}", lines(&tree));
    let d = tree.get("dealer").unwrap();
    assert_eq!(tree.node(d).depth, 3);
    assert_eq!(tree.path(d), vec!["acme", "north", "dealer"]);
    let acme = tree.get("acme").unwrap();
    assert_eq!(tree.node(acme).own.subtenants, 1);
    assert_eq!(tree.node(acme).subtree.subtenants, 2);
}

#[test]
fn unknown_parent_is_named() {
    let tree = build(vec![tenant("a", Some("ghost"))]);
    assert_eq!(
        lines(&tree),
        vec![r#"Tenant/a: spec.parent: parent tenant "ghost" does not exist"#]
    );
    assert_eq!(tree.problems()[0].kind, ProblemKind::UnknownParent);
}

#[test]
fn cycle_names_every_member_once() {
    let tree = build(vec![
        tenant("a", Some("c")),
        tenant("b", Some("a")),
        tenant("c", Some("b")),
        tenant("x", Some("a")),
    ]);
    let l = lines(&tree);
    assert_eq!(l.len(), 3, "{l:?}");
    for name in ["a", "b", "c"] {
        assert!(
            l.iter()
                .any(|p| p.starts_with(&format!("Tenant/{name}: spec.parent: cycle: "))),
            "{l:?}"
        );
    }
    assert!(l[0].contains(" -> "), "{l:?}");
    // A tenant below the cycle is not attached (depth 0) but raises no extra noise.
    assert_eq!(tree.node(tree.get("x").unwrap()).depth, 0);
    assert!(tree.preorder().is_empty());
}

#[test]
fn self_parent_is_a_cycle() {
    let tree = build(vec![tenant("a", Some("a"))]);
    assert_eq!(
        lines(&tree),
        vec!["Tenant/a: spec.parent: cycle: a -> a (a tenant cannot be its own parent)"]
    );
}

#[test]
fn depth_over_max_is_rejected_root_is_depth_one() {
    let tree = build(chain(7));
    assert!(
        tree.problems().is_empty(),
        "7 levels are allowed: {:?}",
        lines(&tree)
    );
    let tree = build(chain(8));
    let l = lines(&tree);
    assert_eq!(l.len(), 1, "{l:?}");
    assert!(
        l[0].starts_with(
            "Tenant/t7: spec.parent: depth 8 exceeds maxDepth 7 (path t0/t1/t2/t3/t4/t5/t6/t7)"
        ),
        "{l:?}"
    );
    let custom = TenantTree::build(
        Inventory {
            tenants: chain(4),
            ..Default::default()
        },
        EngineSettings {
            max_depth: 3,
            ..EngineSettings::default()
        },
    );
    assert_eq!(custom.problems().len(), 1);
}

#[test]
fn duplicate_and_invalid_names() {
    let tree = build(vec![
        tenant("a", None),
        tenant("a", None),
        tenant("Bad_Name", None),
    ]);
    let l = lines(&tree);
    assert!(
        l.contains(
            &r#"Tenant/a: metadata.name: duplicate Tenant "a": it is defined more than once"#
                .to_string()
        ),
        "{l:?}"
    );
    assert!(
        l.iter()
            .any(|p| p
                .starts_with(r#"Tenant/Bad_Name: metadata.name: "Bad_Name" must be lower-case"#)),
        "{l:?}"
    );
    let long = "x".repeat(57);
    let tree = build(vec![tenant(&long, None)]);
    assert!(lines(&tree)[0].contains("at most 56 characters"));
}

#[test]
fn profile_must_be_owned_by_strict_ancestor() {
    let mut child = tenant("child", Some("parent"));
    child.spec.limit_profile = Some("gold".into());
    let mut sibling = tenant("sibling", Some("parent"));
    sibling.spec.limit_profile = Some("sib".into());
    let mut own = tenant("selfish", Some("parent"));
    own.spec.limit_profile = Some("mine".into());
    let tree = build_all(
        vec![tenant("parent", None), child, sibling, own],
        vec![
            profile(
                "gold",
                "parent",
                Limits {
                    devices: Some(5),
                    ..Default::default()
                },
            ),
            profile("sib", "child", Limits::default()),
            profile("mine", "selfish", Limits::default()),
        ],
        vec![],
    );
    let l = lines(&tree);
    assert_eq!(
        l,
        vec![
            r#"Tenant/sibling: spec.limitProfile: LimitProfile "sib" is owned by "child", which is not a strict ancestor of "sibling""#,
            r#"Tenant/selfish: spec.limitProfile: LimitProfile "mine" is owned by "selfish", which is not a strict ancestor of "selfish""#,
        ]
    );
    assert_eq!(
        tree.effective_limits(tree.get("child").unwrap()).devices,
        Some(5)
    );
}

#[test]
fn unknown_profile_and_owner() {
    let mut t = tenant("a", None);
    t.spec.limit_profile = Some("nope".into());
    let tree = build_all(
        vec![t],
        vec![profile("orphan", "ghost", Limits::default())],
        vec![channel("ch", "ghost", None)],
    );
    let l = lines(&tree);
    assert!(
        l.contains(
            &r#"LimitProfile/orphan: spec.owner: owner tenant "ghost" does not exist"#.to_string()
        ),
        "{l:?}"
    );
    assert!(
        l.contains(
            &r#"Tenant/a: spec.limitProfile: LimitProfile "nope" does not exist"#.to_string()
        ),
        "{l:?}"
    );
    assert!(
        l.contains(&r#"Channel/ch: spec.owner: owner tenant "ghost" does not exist"#.to_string()),
        "{l:?}"
    );
}

#[test]
fn explicit_limits_override_the_profile() {
    let mut t = tenant("c", Some("p"));
    t.spec.limit_profile = Some("std".into());
    t.spec.limits.devices = Some(3);
    let tree = build_all(
        vec![tenant("p", None), t],
        vec![profile(
            "std",
            "p",
            Limits {
                devices: Some(100),
                channels: Some(4),
                ..Default::default()
            },
        )],
        vec![],
    );
    let eff = tree.effective_limits(tree.get("c").unwrap());
    assert_eq!(eff.devices, Some(3));
    assert_eq!(eff.channels, Some(4));
}

#[test]
fn channel_visibility_rules() {
    let mut inside = tenant("d1-customer", Some("d1"));
    inside.spec.channels = vec!["teltonika".into()];
    let mut outside = tenant("d2-customer", Some("d2"));
    outside.spec.channels = vec!["teltonika".into(), "missing".into()];
    let tree = build_all(
        vec![
            tenant("acme", None),
            tenant("d1", Some("acme")),
            tenant("d2", Some("acme")),
            tenant("other", None),
            inside,
            outside,
        ],
        vec![],
        vec![
            channel("teltonika", "acme", Some(&["d1"])),
            channel("bad", "d1", Some(&["d2"])),
        ],
    );
    let l = lines(&tree);
    assert_eq!(
        l,
        vec![
            r#"Channel/bad: spec.visibility.subtrees[0]: tenant "d2" is outside the subtree of the owner "d1""#,
            r#"Tenant/d2-customer: spec.channels[0]: Channel "teltonika" is not visible to tenant "d2-customer""#,
            r#"Tenant/d2-customer: spec.channels[1]: Channel "missing" does not exist"#,
        ]
    );
    assert!(tree.is_channel_visible("teltonika", tree.get("d1-customer").unwrap()));
    assert!(!tree.is_channel_visible("teltonika", tree.get("other").unwrap()));
}

#[test]
fn channel_without_visibility_serves_the_owners_whole_subtree_only() {
    let tree = build_all(
        vec![tenant("a", None), tenant("b", Some("a")), tenant("z", None)],
        vec![],
        vec![channel("c", "a", None)],
    );
    assert!(tree.is_channel_visible("c", tree.get("b").unwrap()));
    assert!(tree.is_channel_visible("c", tree.get("a").unwrap()));
    assert!(!tree.is_channel_visible("c", tree.get("z").unwrap()));
}

/// flespi's worked example: a sub-dealer limited to 10 channels owns 3 itself; its two
/// customers have no own limit and share the remaining 7, first come first served.
#[test]
fn flespi_worked_example_siblings_share_the_rest() {
    let sub = with_limits(
        tenant("sub-dealer", Some("dealer")),
        Limits {
            channels: Some(10),
            ..Default::default()
        },
    );
    let channels = (0..3)
        .map(|i| channel(&format!("own-{i}"), "sub-dealer", None))
        .collect();
    let mut tree = build_all(
        vec![
            tenant("dealer", None),
            sub,
            tenant("cust-a", Some("sub-dealer")),
            tenant("cust-b", Some("sub-dealer")),
        ],
        vec![],
        channels,
    );
    assert!(tree.problems().is_empty(), "{:?}", lines(&tree));
    let sd = tree.get("sub-dealer").unwrap();
    let a = tree.get("cust-a").unwrap();
    let b = tree.get("cust-b").unwrap();
    assert_eq!(tree.node(sd).subtree.channels, 3);
    assert_eq!(tree.headroom(a, CountResource::Channels), Some(7));
    assert_eq!(tree.headroom(b, CountResource::Channels), Some(7));
    // Customer A takes 5: B can still take only 2 — no reservations between siblings.
    tree.try_add(a, CountResource::Channels, 5).unwrap();
    assert_eq!(tree.headroom(b, CountResource::Channels), Some(2));
    tree.try_add(b, CountResource::Channels, 2).unwrap();
    let denied = tree.check_add(a, CountResource::Channels, 1).unwrap_err();
    assert_eq!(denied.tenant, "sub-dealer");
    assert_eq!((denied.limit, denied.usage, denied.requested), (10, 10, 1));
    assert_eq!(
        denied.to_string(),
        r#"tenant "sub-dealer" allows at most 10 channels in its subtree and uses 10; adding 1 would exceed it"#
    );
    // The dealer above has no limit: it is not the one refusing.
    assert_eq!(
        tree.headroom(tree.get("dealer").unwrap(), CountResource::Channels),
        None
    );
}

#[test]
fn zero_prohibits_and_minus_one_does_not_limit() {
    let blocked = with_limits(
        tenant("blocked", Some("root")),
        Limits {
            devices: Some(0),
            ..Default::default()
        },
    );
    let free = with_limits(
        tenant("free", Some("root")),
        Limits {
            devices: Some(-1),
            ..Default::default()
        },
    );
    let tree = build(vec![
        with_limits(
            tenant("root", None),
            Limits {
                devices: Some(100),
                ..Default::default()
            },
        ),
        blocked,
        free,
        tenant("below", Some("blocked")),
    ]);
    let err = tree
        .check_add(tree.get("below").unwrap(), CountResource::Devices, 1)
        .unwrap_err();
    assert_eq!(err.tenant, "blocked");
    assert_eq!(
        err.to_string(),
        r#"tenant "blocked" prohibits devices in its subtree (limit 0)"#
    );
    assert!(
        tree.check_add(tree.get("free").unwrap(), CountResource::Devices, 100)
            .is_ok()
    );
    let err = tree
        .check_add(tree.get("free").unwrap(), CountResource::Devices, 101)
        .unwrap_err();
    assert_eq!(err.tenant, "root");
    assert_eq!(
        tree.effective_limits(tree.get("free").unwrap()).devices,
        Some(100),
        "-1 inherits the ancestor's bound"
    );
}

#[test]
fn observed_usage_over_a_limit_is_reported() {
    let tree = build(vec![
        with_limits(
            tenant("dealer", None),
            Limits {
                devices: Some(10),
                subtenants: Some(1),
                ..Default::default()
            },
        ),
        with_devices(tenant("c1", Some("dealer")), 6),
        with_devices(tenant("c2", Some("dealer")), 6),
    ]);
    let l = lines(&tree);
    assert_eq!(
        l,
        vec![
            "Tenant/dealer: spec.limits.subtenants: the subtree uses 2 subtenants, but this tenant allows at most 1",
            "Tenant/dealer: spec.limits.devices: the subtree uses 12 devices, but this tenant allows at most 10",
        ]
    );
}

fn cpu(v: &str) -> Limits {
    Limits {
        cpu: Some(QuantityValue::new(v)),
        ..Default::default()
    }
}

/// (effective = what the subtree may use, namespace = the ResourceQuota) of one tenant's cpu.
fn cpu_of(tree: &TenantTree, name: &str) -> (Option<String>, Option<String>) {
    let id = tree.get(name).unwrap();
    let q = |l: Limits| l.cpu.map(|q| q.0);
    (q(tree.effective_limits(id)), q(tree.namespace_quota(id)))
}

fn some(e: &str, ns: &str) -> (Option<String>, Option<String>) {
    (Some(e.to_string()), Some(ns.to_string()))
}

#[test]
fn quota_sum_of_children_may_not_exceed_parent() {
    let tree = build(vec![
        with_limits(tenant("p", None), cpu("4")),
        with_limits(tenant("a", Some("p")), cpu("2500m")),
        with_limits(tenant("b", Some("p")), cpu("2")),
        with_limits(tenant("c", Some("p")), cpu("0")),
    ]);
    assert_eq!(
        lines(&tree),
        vec![
            "Tenant/p: spec.limits.cpu: direct children together ask for 4500m cpu (a=2500m, b=2, c=0), more than this tenant's 4"
        ]
    );
    // Even so the namespaces never add up to more than 4: the older (here: by name) child
    // keeps its quota, the next gets what is left.
    assert_eq!(cpu_of(&tree, "a"), some("2500m", "2500m"));
    assert_eq!(cpu_of(&tree, "b"), some("1500m", "1500m"));
    assert_eq!(cpu_of(&tree, "p"), some("4", "0"));
}

#[test]
fn a_quota_bounds_the_subtree_and_the_namespace_gets_what_children_do_not_take() {
    let tree = build(vec![
        with_limits(tenant("p", None), cpu("8")),
        with_limits(tenant("a", Some("p")), cpu("2")),
        with_limits(tenant("b", Some("p")), cpu("3")),
        with_limits(tenant("b1", Some("b")), cpu("1")),
        tenant("free", None),
        tenant("free-child", Some("free")),
    ]);
    assert!(tree.problems().is_empty(), "{:?}", lines(&tree));
    assert_eq!(cpu_of(&tree, "p"), some("8", "3"));
    assert_eq!(cpu_of(&tree, "a"), some("2", "2"));
    assert_eq!(cpu_of(&tree, "b"), some("3", "2"));
    assert_eq!(cpu_of(&tree, "b1"), some("1", "1"));
    // No quota anywhere above: unbounded, no ResourceQuota.
    assert_eq!(cpu_of(&tree, "free-child"), (None, None));
}

/// Issue #10, example 2: `acme {cpu: 4}`, `dealer-1 {parent: acme}` without a quota and
/// `dealer-2 {parent: acme, cpu: 4}` used to plan cleanly with `limits.cpu: 4` in each of the
/// three namespaces — 12 CPUs under a tenant given 4.
#[test]
fn a_child_without_its_own_quota_below_a_quota_is_refused_and_gets_no_share() {
    let tree = build(vec![
        with_limits(tenant("acme", None), cpu("4")),
        tenant("dealer-1", Some("acme")),
        with_limits(tenant("dealer-2", Some("acme")), cpu("4")),
    ]);
    assert_eq!(
        lines(&tree),
        vec![
            "Tenant/dealer-1: spec.limits.cpu: no cpu quota of its own below \"acme\", whose cpu quota 4 bounds its whole subtree: every tenant below a quota needs its own (in spec.limits or its LimitProfile); \"acme\" has 0 cpu left to give"
        ]
    );
    assert_eq!(tree.problems()[0].kind, ProblemKind::QuotaRequired);
    // What the operator would apply all the same keeps the 4.
    assert_eq!(cpu_of(&tree, "acme"), some("4", "0"));
    assert_eq!(cpu_of(&tree, "dealer-1"), some("0", "0"));
    assert_eq!(cpu_of(&tree, "dealer-2"), some("4", "4"));
    // With room left, children without a quota share it equally with the parent's namespace.
    let tree = build(vec![
        with_limits(tenant("acme", None), cpu("8")),
        tenant("dealer-1", Some("acme")),
        with_limits(tenant("dealer-2", Some("acme")), cpu("4")),
        tenant("dealer-1a", Some("dealer-1")),
    ]);
    assert_eq!(tree.problems().len(), 2, "{:?}", lines(&tree));
    assert_eq!(cpu_of(&tree, "dealer-1"), some("2", "1"));
    assert_eq!(cpu_of(&tree, "dealer-1a"), some("1", "1"));
    assert_eq!(cpu_of(&tree, "acme"), some("8", "2"));
}

#[test]
fn quota_sums_stay_exact_at_the_largest_quotas() {
    let max = "9223372036854775807";
    let tree = build(vec![
        with_limits(tenant("p", None), cpu(max)),
        with_limits(tenant("a", Some("p")), cpu(max)),
        with_limits(tenant("b", Some("p")), cpu(max)),
        with_limits(tenant("c", Some("p")), cpu(max)),
    ]);
    let l = lines(&tree);
    assert_eq!(l.len(), 1, "{l:?}");
    assert!(
        l[0].starts_with(
            "Tenant/p: spec.limits.cpu: direct children together ask for 27670116110564327421 cpu"
        ),
        "{l:?}"
    );
    assert_eq!(cpu_of(&tree, "b"), some("0", "0"));
    // One unit more is not a quota at all.
    let tree = build(vec![with_limits(
        tenant("p", None),
        cpu("9223372036854775808"),
    )]);
    assert_eq!(tree.problems()[0].kind, ProblemKind::InvalidLimit);
    assert_eq!(cpu_of(&tree, "p"), (None, None));
}

#[test]
fn invalid_limit_values_are_named() {
    let tree = build(vec![with_limits(
        tenant("a", None),
        Limits {
            devices: Some(-2),
            memory: Some(QuantityValue::new("lots")),
            ..Default::default()
        },
    )]);
    let l = lines(&tree);
    assert_eq!(l.len(), 2, "{l:?}");
    assert!(
        l[0].starts_with("Tenant/a: spec.limits.devices: -2 is not allowed"),
        "{l:?}"
    );
    assert!(
        l[1].starts_with(r#"Tenant/a: spec.limits.memory: invalid quantity "lots""#),
        "{l:?}"
    );
}

#[test]
fn members_and_admins_are_checked() {
    use crate::types::{Member, Subject, SubjectKind};
    let mut t = tenant("a", None);
    t.spec.admins = vec![Subject {
        kind: SubjectKind::ServiceAccount,
        name: "ci".into(),
        namespace: None,
    }];
    t.spec.members = vec![
        Member {
            user: "bob".into(),
            role: "viewer".into(),
        },
        Member {
            user: "bob".into(),
            role: "admin".into(),
        },
        Member {
            user: "eve".into(),
            role: "Super User".into(),
        },
    ];
    let l = lines(&build(vec![t]));
    assert_eq!(l.len(), 3, "{l:?}");
    assert_eq!(
        l[0],
        "Tenant/a: spec.admins[0].namespace: required for a ServiceAccount"
    );
    assert_eq!(
        l[1],
        r#"Tenant/a: spec.members[1].user: user "bob" is listed more than once"#
    );
    assert!(l[2].starts_with("Tenant/a: spec.members[2].role:"), "{l:?}");
}

#[test]
fn every_problem_is_reported_at_once() {
    let mut bad_profile = tenant("p2", Some("root"));
    bad_profile.spec.limit_profile = Some("missing".into());
    let tree = build(vec![
        tenant("root", None),
        tenant("orphan", Some("ghost")),
        bad_profile,
        tenant("root", None),
    ]);
    assert_eq!(tree.problems().len(), 3, "{:?}", lines(&tree));
}

#[test]
fn suspension_covers_the_subtree() {
    let mut d = tenant("dealer", Some("root"));
    d.spec.suspended = true;
    let tree = build(vec![
        tenant("root", None),
        d,
        tenant("cust", Some("dealer")),
    ]);
    let cust = tree.get("cust").unwrap();
    assert_eq!(tree.suspended_by(cust), tree.get("dealer"));
    assert_eq!(tree.suspended_by(tree.get("root").unwrap()), None);
    let s = tree.summary(cust, "tenant-");
    assert!(s.suspended);
    assert_eq!(s.suspended_by.as_deref(), Some("dealer"));
}

#[test]
fn settings_inherit_and_override() {
    let mut root = tenant("root", None);
    root.spec.settings = serde_json::from_value(
        serde_json::json!({"units": "metric", "branding": {"color": "blue", "logo": "acme.png"}}),
    )
    .unwrap();
    let mut child = tenant("child", Some("root"));
    child.spec.settings =
        serde_json::from_value(serde_json::json!({"branding": {"color": "green"}})).unwrap();
    let tree = build(vec![root, child]);
    let s = tree.effective_settings(tree.get("child").unwrap());
    assert_eq!(
        serde_json::json!(s),
        serde_json::json!({"units": "metric", "branding": {"color": "green", "logo": "acme.png"}})
    );
}

// ---------- property tests ----------

/// A random forest: parent[i] < i (or none), random limits with -1, 0 and small N.
fn arb_tree() -> impl Strategy<Value = (Vec<Option<usize>>, Vec<i64>)> {
    (2usize..40).prop_flat_map(|n| {
        let parents = (0..n)
            .map(|i| {
                if i == 0 {
                    Just(None).boxed()
                } else {
                    proptest::option::weighted(0.9, 0..i).boxed()
                }
            })
            .collect::<Vec<_>>();
        let limits = proptest::collection::vec(
            prop_oneof![3 => Just(-1i64), 1 => Just(0i64), 4 => 1i64..15],
            n,
        );
        (parents, limits)
    })
}

fn tree_from(parents: &[Option<usize>], limits: &[i64]) -> TenantTree {
    let tenants = parents
        .iter()
        .zip(limits)
        .enumerate()
        .map(|(i, (p, l))| {
            with_limits(
                tenant(&format!("t{i}"), p.map(|p| format!("t{p}")).as_deref()),
                Limits {
                    devices: Some(*l),
                    ..Default::default()
                },
            )
        })
        .collect();
    TenantTree::build(
        Inventory {
            tenants,
            ..Default::default()
        },
        EngineSettings {
            max_depth: 64,
            ..EngineSettings::default()
        },
    )
}

/// Model of the property tests, independent of the tree's own accounting: input index `i`,
/// then its parent, up to the root.
fn model_path(parents: &[Option<usize>], i: usize) -> Vec<usize> {
    let mut out = vec![i];
    while let Some(p) = parents[*out.last().unwrap_or(&i)] {
        out.push(p);
    }
    out
}

/// Model: devices used by input index `a`'s whole subtree.
fn model_subtree(parents: &[Option<usize>], own: &[i64], a: usize) -> i64 {
    (0..parents.len())
        .filter(|&d| model_path(parents, d).contains(&a))
        .map(|d| own[d])
        .sum()
}

/// Model: the first tenant on `i`'s path (itself first) whose limit adding `n` would pass.
fn model_denier(
    parents: &[Option<usize>],
    limits: &[i64],
    own: &[i64],
    i: usize,
    n: i64,
) -> Option<usize> {
    model_path(parents, i)
        .into_iter()
        .find(|&a| limits[a] >= 0 && model_subtree(parents, own, a) + n > limits[a])
}

proptest! {
    #[test]
    fn allowed_additions_never_exceed_any_ancestor_limit(
        (parents, limits) in arb_tree(),
        adds in proptest::collection::vec((0usize..40, 1i64..4), 1..80),
    ) {
        let mut tree = tree_from(&parents, &limits);
        prop_assert!(tree.problems().is_empty());
        let ids: Vec<NodeId> = (0..parents.len())
            .map(|i| tree.get(&format!("t{i}")).expect("tenant"))
            .collect();
        let mut own = vec![0i64; parents.len()];
        for (who, n) in adds {
            let i = who % parents.len();
            // Accepted exactly when the model says it fits (an engine refusing everything
            // fails here); a refusal names the first tenant on the path that it would pass.
            match (tree.try_add(ids[i], CountResource::Devices, n), model_denier(&parents, &limits, &own, i, n)) {
                (Ok(()), None) => own[i] += n,
                (Err(d), Some(a)) => {
                    prop_assert_eq!(&d.tenant, &format!("t{a}"));
                    prop_assert_eq!(d.limit, limits[a]);
                    prop_assert_eq!(d.usage, model_subtree(&parents, &own, a));
                    prop_assert_eq!(d.requested, n);
                }
                (got, want) => prop_assert!(false, "adding {n} at t{i}: engine {got:?}, model refuses at {want:?}"),
            }
            for a in 0..tree.len() {
                let node = tree.node(a);
                let limit = node.counts[CountResource::Devices.index()];
                prop_assert!(limit < 0 || node.subtree.devices <= limit, "t{a} uses {} over limit {limit}", node.subtree.devices);
            }
        }
    }

    #[test]
    fn a_zero_anywhere_above_blocks((parents, limits) in arb_tree(), who in 0usize..40) {
        let tree = tree_from(&parents, &limits);
        let id = who % tree.len();
        let path: Vec<NodeId> = std::iter::once(id).chain(tree.ancestors(id)).collect();
        let first_zero = path.iter().copied().find(|&a| tree.node(a).counts[CountResource::Devices.index()] == 0);
        // Nothing is used yet, so only a zero can refuse one more device.
        match (tree.check_add(id, CountResource::Devices, 1), first_zero) {
            (Err(d), Some(z)) => {
                prop_assert_eq!(d.tenant.as_str(), tree.name(z));
                prop_assert_eq!(d.limit, 0);
            }
            (Ok(()), None) => {}
            (got, zero) => prop_assert!(false, "engine {got:?}, first zero on the path {zero:?}"),
        }
    }

    #[test]
    fn minus_one_never_blocks_by_itself((parents, _limits) in arb_tree(), who in 0usize..40, n in 1i64..1000) {
        let limits = vec![-1; parents.len()];
        let tree = tree_from(&parents, &limits);
        let id = who % tree.len();
        prop_assert!(tree.check_add(id, CountResource::Devices, n).is_ok());
    }

    #[test]
    fn check_agrees_with_a_full_rebuild((parents, limits) in arb_tree(), who in 0usize..40, n in 1i64..5) {
        // Incremental try_add must leave the tree as a rebuild with the new usage would.
        let mut tree = tree_from(&parents, &limits);
        let i = who % parents.len();
        let id = tree.get(&format!("t{i}")).expect("tenant");
        let fits = model_denier(&parents, &limits, &vec![0; parents.len()], i, n).is_none();
        let added = tree.try_add(id, CountResource::Devices, n);
        prop_assert_eq!(added.is_ok(), fits, "{:?}", added);
        if fits {
            let mut tenants = tree.inventory().tenants.clone();
            tenants[tree.node(id).input] = with_devices(tenants[tree.node(id).input].clone(), n);
            let rebuilt = TenantTree::build(Inventory { tenants, ..Default::default() }, EngineSettings { max_depth: 64, max_name_len: 56, namespace_prefix: "tenant-".into() });
            for a in 0..tree.len() {
                prop_assert_eq!(tree.node(a).subtree.devices, rebuilt.node(a).subtree.devices);
            }
            prop_assert!(rebuilt.problems().is_empty());
        }
    }
}

#[test]
fn engine_copy_keeps_what_the_engine_reads_and_drops_the_rest() {
    use crate::types::tenant::UsageStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
    let mut t = Tenant::new("acme", TenantSpec::default());
    t.metadata.uid = Some("u-1".into());
    t.metadata.labels = Some([("team".to_string(), "x".to_string())].into());
    t.metadata.annotations = Some(
        [(
            "kubectl.kubernetes.io/last-applied-configuration".to_string(),
            "x".repeat(4000),
        )]
        .into(),
    );
    t.metadata.managed_fields = Some(vec![ManagedFieldsEntry::default()]);
    let mut usage = UsageStatus::default();
    usage.own.devices = 7;
    t.status = Some(crate::types::TenantStatus {
        usage: Some(usage.clone()),
        path: vec!["acme".into()],
        ..Default::default()
    });
    let c = crate::hierarchy::engine_copy(&t);
    assert_eq!(c.metadata.name.as_deref(), Some("acme"));
    assert_eq!(c.metadata.uid.as_deref(), Some("u-1"));
    assert_eq!(c.metadata.labels, t.metadata.labels);
    assert_eq!(c.metadata.annotations, None);
    assert_eq!(c.metadata.managed_fields, None);
    assert_eq!(c.spec, t.spec);
    let st = c.status.unwrap();
    assert_eq!(st.usage, Some(usage));
    assert!(st.path.is_empty(), "the operator's output is not kept");
}
