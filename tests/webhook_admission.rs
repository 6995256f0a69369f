//! Every rejection reason, and accepted objects, sent as AdmissionReview over real HTTPS.

mod webhook_support;

use serde_json::json;
use webhook_support::*;

#[tokio::test]
async fn unknown_parent_is_rejected() {
    let s = serve(fixture_view()).await;
    let t = tenant_json("x", json!({"parent": "ghost"}));
    s.denied(
        &review("CREATE", "Tenant", "x", Some(t), None),
        "UnknownParent",
        422,
        &["Tenant/x: spec.parent: parent tenant \"ghost\" does not exist"],
    )
    .await;
}

#[tokio::test]
async fn cycles_are_rejected() {
    let s = serve(fixture_view()).await;
    let t = tenant_json("x", json!({"parent": "x"}));
    s.denied(
        &review("CREATE", "Tenant", "x", Some(t), None),
        "Cycle",
        422,
        &["Tenant/x: spec.parent: cycle: x -> x (a tenant cannot be its own parent)"],
    )
    .await;
    // o1 waits for parent o2; creating o2 below o1 would close the loop.
    let t = tenant_json("o2", json!({"parent": "o1"}));
    s.denied(
        &review("CREATE", "Tenant", "o2", Some(t), None),
        "Cycle",
        422,
        &["Tenant/o2: spec.parent: cycle: o2 -> o1 -> o2"],
    )
    .await;
}

#[tokio::test]
async fn below_a_detached_tenant_is_rejected() {
    let s = serve(fixture_view()).await;
    let t = tenant_json("x", json!({"parent": "o1"}));
    s.denied(
        &review("CREATE", "Tenant", "x", Some(t), None),
        "UnknownParent",
        422,
        &["Tenant/x: spec.parent: parent tenant \"o1\" is not attached to the tree"],
    )
    .await;
}

#[tokio::test]
async fn depth_over_max_depth_is_rejected() {
    let s = serve(fixture_view()).await;
    let t = tenant_json("deep", json!({"parent": "cust"}));
    s.denied(
        &review("CREATE", "Tenant", "deep", Some(t), None),
        "TooDeep",
        422,
        &["Tenant/deep: spec.parent: depth 5 exceeds maxDepth 4 (path acme/dist/dealer/cust/deep)"],
    )
    .await;
}

#[tokio::test]
async fn parent_change_is_rejected() {
    let s = serve(fixture_view()).await;
    let old = tenant_json("dealer", json!({"parent": "dist"}));
    let new = tenant_json("dealer", json!({"parent": "acme"}));
    s.denied(&review("UPDATE", "Tenant", "dealer", Some(new), Some(old.clone())), "ParentImmutable", 422,
        &["Tenant/dealer: spec.parent: spec.parent is immutable: cannot move \"dealer\" from \"dist\" to \"acme\""]).await;
    let root = tenant_json("dealer", json!({}));
    s.denied(
        &review("UPDATE", "Tenant", "dealer", Some(root), Some(old)),
        "ParentImmutable",
        422,
        &["from \"dist\" to no parent (root)"],
    )
    .await;
}

#[tokio::test]
async fn subtenant_limits_name_the_blocking_ancestor() {
    let s = serve(fixture_view()).await;
    let t = tenant_json("x", json!({"parent": "full"}));
    s.denied(&review("CREATE", "Tenant", "x", Some(t), None), "LimitExceeded", 403,
        &["Tenant/x: spec.parent: cannot add a subtenant below \"full\": tenant \"full\" allows at most 1 subtenants in its subtree and uses 1; adding 1 would exceed it"]).await;
    // The limit sits on an ancestor, not on the parent.
    let t = tenant_json("y", json!({"parent": "capped-a"}));
    s.denied(&review("CREATE", "Tenant", "y", Some(t), None), "LimitExceeded", 403,
        &["cannot add a subtenant below \"capped-a\": tenant \"capped\" allows at most 1 subtenants in its subtree and uses 1"]).await;
    let t = tenant_json("z", json!({"parent": "blocked"}));
    s.denied(
        &review("CREATE", "Tenant", "z", Some(t), None),
        "LimitExceeded",
        403,
        &["tenant \"blocked\" prohibits subtenants in its subtree (limit 0)"],
    )
    .await;
}

#[tokio::test]
async fn lowering_a_limit_below_usage_is_rejected() {
    let s = serve(fixture_view()).await;
    let old = tenant_json(
        "full",
        json!({"parent": "acme", "limits": {"subtenants": 1}}),
    );
    let new = tenant_json(
        "full",
        json!({"parent": "acme", "limits": {"subtenants": 0}}),
    );
    s.denied(&review("UPDATE", "Tenant", "full", Some(new), Some(old)), "LimitExceeded", 403,
        &["Tenant/full: spec.limits.subtenants: the subtree of \"full\" already uses 1 subtenants, more than the new limit 0"]).await;
}

#[tokio::test]
async fn quota_sums_over_the_parent_are_rejected() {
    let s = serve(fixture_view()).await;
    let t = tenant_json("x", json!({"parent": "dist", "limits": {"cpu": "2"}}));
    s.denied(&review("CREATE", "Tenant", "x", Some(t), None), "QuotaOverParent", 403,
        &["Tenant/x: spec.limits.cpu: asks for 2 cpu, but the direct children of \"dist\" already ask for 3 of its 4; together 5 would exceed it"]).await;
    // Raising a child's quota past what the parent has left.
    let old = tenant_json(
        "dealer",
        json!({"parent": "dist", "limits": {"cpu": "3"}, "limitProfile": "acme-std", "channels": ["tel"]}),
    );
    let new = tenant_json(
        "dealer",
        json!({"parent": "dist", "limits": {"cpu": "5"}, "limitProfile": "acme-std", "channels": ["tel"]}),
    );
    s.denied(
        &review("UPDATE", "Tenant", "dealer", Some(new), Some(old)),
        "QuotaOverParent",
        403,
        &[
            "Tenant/dealer: spec.limits.cpu: asks for 5 cpu",
            "\"dist\"",
            "of its 4",
        ],
    )
    .await;
    // Shrinking a parent below what its children already ask for.
    let old = tenant_json(
        "dist",
        json!({"parent": "acme", "limits": {"subtenants": 3, "cpu": "4", "devices": 100}}),
    );
    let new = tenant_json(
        "dist",
        json!({"parent": "acme", "limits": {"subtenants": 3, "cpu": "2", "devices": 100}}),
    );
    s.denied(&review("UPDATE", "Tenant", "dist", Some(new), Some(old)), "QuotaOverParent", 403,
        &["Tenant/dist: spec.limits.cpu: its direct children already ask for 3 cpu, more than the new 2"]).await;
}

/// A view of exactly these tenants (and profiles), maxDepth 4.
fn view_of(
    tenants: Vec<silo::types::Tenant>,
    profiles: Vec<silo::types::LimitProfile>,
) -> silo::webhook::TreeView {
    let v = silo::webhook::TreeView::new(settings());
    v.replace_all(silo::hierarchy::Inventory {
        tenants,
        profiles,
        ..Default::default()
    });
    v
}

/// Issue #10 (2): `acme {cpu: 4}`, `dealer-2 {parent: acme, cpu: 4}`: a `dealer-1` without a
/// quota of its own used to be admitted and to get `limits.cpu: 4` of its own.
#[tokio::test]
async fn a_child_without_its_own_quota_below_a_quota_is_rejected() {
    let s = serve(view_of(
        vec![
            tenant("acme", json!({"limits": {"cpu": 4}})),
            tenant("dealer-2", json!({"parent": "acme", "limits": {"cpu": 4}})),
        ],
        vec![],
    ))
    .await;
    let t = tenant_json("dealer-1", json!({"parent": "acme"}));
    let msg = s
        .denied(
            &review("CREATE", "Tenant", "dealer-1", Some(t), None),
            "QuotaRequired",
            403,
            &[],
        )
        .await;
    assert_eq!(
        msg,
        "Tenant/dealer-1: spec.limits.cpu: no cpu quota of its own below \"acme\", whose cpu quota 4 bounds its whole subtree: every tenant below a quota needs its own (in spec.limits or its LimitProfile); \"acme\" has 0 cpu left to give"
    );
    // Positive control: with a quota that fits (here all that is left: none) it is admitted.
    let t = tenant_json("dealer-1", json!({"parent": "acme", "limits": {"cpu": 0}}));
    s.allowed(&review("CREATE", "Tenant", "dealer-1", Some(t), None))
        .await;
    // Dropping an existing tenant's quota below a quota is refused the same way…
    let old = tenant_json("dealer-2", json!({"parent": "acme", "limits": {"cpu": 4}}));
    let new = tenant_json(
        "dealer-2",
        json!({"parent": "acme", "limits": {"devices": 5}}),
    );
    s.denied(&review("UPDATE", "Tenant", "dealer-2", Some(new), Some(old.clone())), "QuotaRequired", 403,
        &["Tenant/dealer-2: spec.limits.cpu: no cpu quota of its own below \"acme\", whose cpu quota 4 bounds its whole subtree"]).await;
    // …while lowering it is fine.
    let new = tenant_json(
        "dealer-2",
        json!({"parent": "acme", "limits": {"cpu": "3500m"}}),
    );
    s.allowed(&review(
        "UPDATE",
        "Tenant",
        "dealer-2",
        Some(new),
        Some(old),
    ))
    .await;
}

#[tokio::test]
async fn a_quota_over_children_without_their_own_is_rejected() {
    let s = serve(view_of(
        vec![
            tenant("acme", json!({})),
            tenant("dealer", json!({"parent": "acme"})),
            tenant("dealer-b", json!({"parent": "acme", "limits": {"cpu": 1}})),
        ],
        vec![],
    ))
    .await;
    let old = tenant_json("acme", json!({}));
    let new = tenant_json("acme", json!({"limits": {"cpu": 8}}));
    s.denied(&review("UPDATE", "Tenant", "acme", Some(new), Some(old.clone())), "QuotaRequired", 403,
        &["Tenant/acme: spec.limits.cpu: a cpu quota here would bound the whole subtree, but its direct children \"dealer\" have no cpu quota of their own: give them one first"]).await;
    // Positive control: another resource, which every child sets, is fine.
    let s = serve(view_of(
        vec![
            tenant("acme", json!({})),
            tenant("dealer", json!({"parent": "acme", "limits": {"cpu": 2}})),
        ],
        vec![],
    ))
    .await;
    let new = tenant_json("acme", json!({"limits": {"cpu": 8}}));
    s.allowed(&review("UPDATE", "Tenant", "acme", Some(new), Some(old)))
        .await;
}

/// A LimitProfile's quotas are its users' own quotas: a change must fit their parents too
/// (it used to be admitted unchecked, giving every user more than its parent has).
#[tokio::test]
async fn a_profile_change_that_breaks_the_quota_rule_is_rejected() {
    let s = serve(view_of(
        vec![
            tenant("acme", json!({"limits": {"cpu": 4}})),
            tenant("a", json!({"parent": "acme", "limitProfile": "small"})),
            tenant("b", json!({"parent": "acme", "limitProfile": "small"})),
        ],
        vec![profile(
            "small",
            json!({"owner": "acme", "limits": {"cpu": 1}}),
        )],
    ))
    .await;
    let old = profile_json("small", json!({"owner": "acme", "limits": {"cpu": 1}}));
    // Each user alone would fit (3 + 1), both together (3 + 3) do not.
    let new = profile_json("small", json!({"owner": "acme", "limits": {"cpu": 3}}));
    let msg = s
        .denied(&review("UPDATE", "LimitProfile", "small", Some(new), Some(old.clone())), "QuotaOverParent", 403,
            &["LimitProfile/small: spec.limits.cpu: tenant \"a\": asks for 3 cpu, but the other direct children of \"acme\" already ask for 3 of its 4; together 6 would exceed it"])
        .await;
    assert!(msg.contains("tenant \"b\": asks for 3 cpu"), "{msg}");
    let new = profile_json("small", json!({"owner": "acme", "limits": {"devices": 3}}));
    s.denied(&review("UPDATE", "LimitProfile", "small", Some(new), Some(old.clone())), "QuotaRequired", 403,
        &["LimitProfile/small: spec.limits.cpu: tenant \"a\": no cpu quota of its own below \"acme\""]).await;
    let new = profile_json("small", json!({"owner": "acme", "limits": {"cpu": 2}}));
    s.allowed(&review(
        "UPDATE",
        "LimitProfile",
        "small",
        Some(new),
        Some(old),
    ))
    .await;
}

/// Quota sums are exact for every value admitted and no value can make them wrap (they used
/// to be plain `i128` additions of values up to `i128::MAX`).
#[tokio::test]
async fn quota_arithmetic_cannot_wrap() {
    let max = "9223372036854775807";
    let s = serve(view_of(
        vec![
            tenant("acme", json!({"limits": {"cpu": max}})),
            tenant("a", json!({"parent": "acme", "limits": {"cpu": max}})),
        ],
        vec![],
    ))
    .await;
    let t = tenant_json("b", json!({"parent": "acme", "limits": {"cpu": max}}));
    s.denied(&review("CREATE", "Tenant", "b", Some(t), None), "QuotaOverParent", 403,
        &["Tenant/b: spec.limits.cpu: asks for 9223372036854775807 cpu, but the direct children of \"acme\" already ask for 9223372036854775807 of its 9223372036854775807; together 18446744073709551614 would exceed it"]).await;
    // Near i128::MAX thousandths: two of these used to overflow the sum.
    let huge = "170141183460469231731687303715884";
    let t = tenant_json("c", json!({"parent": "acme", "limits": {"cpu": huge}}));
    let msg = s
        .denied(
            &review("CREATE", "Tenant", "c", Some(t), None),
            "InvalidLimit",
            422,
            &[],
        )
        .await;
    assert_eq!(
        msg,
        format!(
            "Tenant/c: spec.limits.cpu: quantity \"{huge}\" is too large for a quota: at most 9223372036854775807 units (2^63 - 1, the largest value Kubernetes reads as a 64-bit integer)"
        )
    );
    let t = tenant_json("c", json!({"parent": "acme", "limits": {"cpu": 0}}));
    s.allowed(&review("CREATE", "Tenant", "c", Some(t), None))
        .await;
}

/// Issue #10 (6): a subject that stands for more than the tenant's own people.
#[tokio::test]
async fn admins_and_members_that_mean_everyone_are_rejected() {
    let s = serve(fixture_view()).await;
    let cases = [
        (
            json!({"admins": [{"kind": "Group", "name": "system:authenticated"}]}),
            "Tenant/x: spec.admins[0].name: Group \"system:authenticated\" is every authenticated user and service account of the cluster: only the tenant's own people may be admins or members (users, groups, and service accounts of its namespace \"tenant-x\")",
        ),
        (
            json!({"members": [{"user": "system:anonymous", "role": "admin"}]}),
            "Tenant/x: spec.members[0].user: User \"system:anonymous\" is every unauthenticated request to the cluster",
        ),
        (
            json!({"admins": [{"kind": "Group", "name": "system:masters"}]}),
            "Group \"system:masters\" is Kubernetes' superuser group",
        ),
        (
            json!({"admins": [{"kind": "Group", "name": "system:nodes"}]}),
            "Group \"system:nodes\" is every node's kubelet",
        ),
        (
            json!({"admins": [{"kind": "Group", "name": "system:serviceaccounts"}]}),
            "Group \"system:serviceaccounts\" is every service account of the cluster",
        ),
        (
            json!({"admins": [{"kind": "Group", "name": "system:serviceaccounts:tenant-dist"}]}),
            "every service account of namespace \"tenant-dist\"",
        ),
        (
            json!({"admins": [{"kind": "User", "name": "system:serviceaccount:tenant-dist:default"}]}),
            "spec.admins[0].name: User \"system:serviceaccount:tenant-dist:default\" is the service account \"default\" of namespace \"tenant-dist\", not of this tenant's namespace",
        ),
        (
            json!({"members": [{"user": "system:serviceaccount:kube-system:admin", "role": "viewer"}]}),
            "of namespace \"kube-system\"",
        ),
        (
            json!({"admins": [{"kind": "ServiceAccount", "name": "default", "namespace": "tenant-dist"}]}),
            "spec.admins[0].namespace: ServiceAccount \"tenant-dist/default\" belongs to namespace \"tenant-dist\", not to this tenant's namespace",
        ),
        (
            json!({"admins": [{"kind": "User", "name": "*"}]}),
            "User \"*\" looks like a wildcard",
        ),
        (
            json!({"members": [{"user": "system:node:worker-1", "role": "technician"}]}),
            "User \"system:node:worker-1\" is a node's kubelet",
        ),
    ];
    for (spec, fragment) in cases {
        let mut spec = spec;
        spec["parent"] = json!("acme");
        spec["limits"] = json!({"cpu": 1});
        let t = tenant_json("x", spec.clone());
        s.denied(
            &review("CREATE", "Tenant", "x", Some(t), None),
            "SubjectTooBroad",
            422,
            &[fragment],
        )
        .await;
    }
    // Updates: adding such a subject is refused; the tenant's own people are admitted.
    let old = tenant_json(
        "dist",
        json!({"parent": "acme", "limits": {"subtenants": 3, "cpu": "4", "devices": 100}}),
    );
    let new = tenant_json(
        "dist",
        json!({"parent": "acme", "limits": {"subtenants": 3, "cpu": "4", "devices": 100},
        "admins": [{"kind": "Group", "name": "system:authenticated"}]}),
    );
    s.denied(
        &review("UPDATE", "Tenant", "dist", Some(new), Some(old.clone())),
        "SubjectTooBroad",
        422,
        &["Tenant/dist: spec.admins[0].name: Group \"system:authenticated\""],
    )
    .await;
    let new = tenant_json(
        "dist",
        json!({"parent": "acme", "limits": {"subtenants": 3, "cpu": "4", "devices": 100},
        "admins": [{"kind": "Group", "name": "dist:admins"}, {"kind": "ServiceAccount", "name": "ci", "namespace": "tenant-dist"},
                   {"kind": "User", "name": "system:serviceaccount:tenant-dist:deployer"}],
        "members": [{"user": "eva@dist.example", "role": "viewer"}]}),
    );
    s.allowed(&review("UPDATE", "Tenant", "dist", Some(new), Some(old)))
        .await;
}

/// `silo plan` and the webhook refuse with the same message: each new rejection example of
/// `examples/invalid/` is replayed as a CREATE of the object its expectation names, against
/// a view holding the file's other objects.
#[tokio::test]
async fn the_webhook_refuses_the_invalid_examples_with_the_plan_message() {
    use serde::Deserialize;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/invalid");
    for (file, reason, code) in [
        ("28-quota-required.yaml", "QuotaRequired", 403),
        ("29-quota-too-large.yaml", "InvalidLimit", 422),
        ("30-admin-system-group.yaml", "SubjectTooBroad", 422),
        ("31-member-system-user.yaml", "SubjectTooBroad", 422),
        (
            "32-admin-foreign-service-account.yaml",
            "SubjectTooBroad",
            422,
        ),
    ] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        let expect = text
            .lines()
            .next()
            .unwrap()
            .strip_prefix("# expect: ")
            .unwrap();
        let name = expect
            .split(':')
            .next()
            .unwrap()
            .strip_prefix("Tenant/")
            .unwrap();
        let docs: Vec<serde_json::Value> = serde_norway::Deserializer::from_str(&text)
            .map(|d| serde_json::Value::deserialize(d).unwrap())
            .collect();
        let (offending, rest): (Vec<_>, Vec<_>) = docs
            .into_iter()
            .partition(|d| d["metadata"]["name"] == name);
        let others = rest
            .into_iter()
            .map(|d| serde_json::from_value(d).unwrap())
            .collect();
        let s = serve(view_of(others, vec![])).await;
        let msg = s
            .denied(
                &review("CREATE", "Tenant", name, Some(offending[0].clone()), None),
                reason,
                code,
                &[expect],
            )
            .await;
        assert!(msg.starts_with(expect), "{file}: {msg}");
    }
}

#[tokio::test]
async fn profile_not_owned_by_a_strict_ancestor_is_rejected() {
    let s = serve(fixture_view()).await;
    let t = tenant_json("x", json!({"parent": "acme", "limitProfile": "dist-small"}));
    s.denied(&review("CREATE", "Tenant", "x", Some(t), None), "ProfileNotOwnedByAncestor", 422,
        &["Tenant/x: spec.limitProfile: LimitProfile \"dist-small\" is owned by \"dist\", which is not a strict ancestor of \"x\""]).await;
    let t = tenant_json("y", json!({"parent": "acme", "limitProfile": "nope"}));
    s.denied(
        &review("CREATE", "Tenant", "y", Some(t), None),
        "UnknownProfile",
        422,
        &["Tenant/y: spec.limitProfile: LimitProfile \"nope\" does not exist"],
    )
    .await;
    // Moving a used profile to an owner that is not above its users.
    let old = profile_json(
        "acme-std",
        json!({"owner": "acme", "limits": {"devices": 50}}),
    );
    let new = profile_json(
        "acme-std",
        json!({"owner": "full", "limits": {"devices": 50}}),
    );
    s.denied(&review("UPDATE", "LimitProfile", "acme-std", Some(new), Some(old)), "ProfileNotOwnedByAncestor", 422,
        &["LimitProfile/acme-std: spec.owner: tenant(s) dealer use this profile but are not strictly below the new owner \"full\""]).await;
}

#[tokio::test]
async fn channel_not_visible_is_rejected() {
    let s = serve(fixture_view()).await;
    let t = tenant_json(
        "x",
        json!({"parent": "full", "channels": ["acme-all", "tel"]}),
    );
    s.denied(&review("CREATE", "Tenant", "x", Some(t), None), "ChannelNotVisible", 422,
        &["Tenant/x: spec.channels[1]: Channel \"tel\" is not visible to tenant \"x\" (only to the subtrees dist of its owner \"acme\")"]).await;
    let t = tenant_json("y", json!({"parent": "dist", "channels": ["nope"]}));
    s.denied(
        &review("CREATE", "Tenant", "y", Some(t), None),
        "UnknownChannel",
        422,
        &["Tenant/y: spec.channels[0]: Channel \"nope\" does not exist"],
    )
    .await;
    // Narrowing a channel's visibility away from a tenant that uses it.
    let old = channel_json(
        "tel",
        json!({"owner": "acme", "visibility": {"subtrees": ["dist"]}}),
    );
    let new = channel_json(
        "tel",
        json!({"owner": "acme", "visibility": {"subtrees": ["full"]}}),
    );
    s.denied(&review("UPDATE", "Channel", "tel", Some(new), Some(old)), "ChannelNotVisible", 422,
        &["Channel/tel: spec.visibility: tenant(s) dealer use this channel and would no longer see it"]).await;
}

#[tokio::test]
async fn visibility_outside_the_owner_is_rejected() {
    let s = serve(fixture_view()).await;
    let c = channel_json(
        "c",
        json!({"owner": "dist", "visibility": {"subtrees": ["dealer", "full"]}}),
    );
    s.denied(&review("CREATE", "Channel", "c", Some(c), None), "VisibilityOutsideOwner", 422,
        &["Channel/c: spec.visibility.subtrees[1]: tenant \"full\" is outside the subtree of the owner \"dist\""]).await;
    let c = channel_json("d", json!({"owner": "ghost"}));
    s.denied(
        &review("CREATE", "Channel", "d", Some(c), None),
        "UnknownOwner",
        422,
        &["Channel/d: spec.owner: owner tenant \"ghost\" does not exist"],
    )
    .await;
}

#[tokio::test]
async fn deleting_a_tenant_with_children_under_retain_is_rejected() {
    let s = serve(fixture_view()).await;
    let t = tenant_json("dist", json!({"parent": "acme"}));
    s.denied(&review("DELETE", "Tenant", "dist", None, Some(t)), "HasChildren", 403,
        &["Tenant/dist: spec.deletionPolicy: tenant \"dist\" still has 1 child tenant(s) (dealer) and deletionPolicy is Retain"]).await;
    // Cascade: allowed.
    let t = tenant_json(
        "dist",
        json!({"parent": "acme", "deletionPolicy": "Cascade"}),
    );
    s.allowed(&review("DELETE", "Tenant", "dist", None, Some(t)))
        .await;
}

#[tokio::test]
async fn no_identity_bypasses_the_checks_on_delete() {
    let s = serve(fixture_view()).await;
    let t = tenant_json("dist", json!({"parent": "acme"}));
    let body = review_as(
        "DELETE",
        "Tenant",
        "dist",
        None,
        Some(t),
        "system:serviceaccount:silo-system:silo-operator",
        &[
            "system:serviceaccounts",
            "system:serviceaccounts:silo-system",
            "system:masters",
        ],
    );
    s.denied(
        &body,
        "HasChildren",
        403,
        &["still has 1 child tenant(s) (dealer)"],
    )
    .await;
}

#[tokio::test]
async fn anything_created_under_a_suspended_tenant_is_rejected() {
    let s = serve(fixture_view()).await;
    let t = tenant_json("x", json!({"parent": "frozen"}));
    s.denied(
        &review("CREATE", "Tenant", "x", Some(t), None),
        "ParentSuspended",
        403,
        &["Tenant/x: spec.parent: cannot create a tenant below \"frozen\": it is suspended"],
    )
    .await;
    let t = tenant_json("y", json!({"parent": "frozen-a"}));
    s.denied(&review("CREATE", "Tenant", "y", Some(t), None), "ParentSuspended", 403,
        &["cannot create a tenant below \"frozen-a\": it is suspended (suspended through its ancestor \"frozen\")"]).await;
    let c = channel_json("c", json!({"owner": "frozen-a"}));
    s.denied(&review("CREATE", "Channel", "c", Some(c), None), "ParentSuspended", 403,
        &["Channel/c: spec.owner: cannot create a Channel owned by \"frozen-a\": it is suspended (suspended through its ancestor \"frozen\")"]).await;
    let p = profile_json("p", json!({"owner": "frozen", "limits": {}}));
    s.denied(&review("CREATE", "LimitProfile", "p", Some(p), None), "ParentSuspended", 403,
        &["LimitProfile/p: spec.owner: cannot create a LimitProfile owned by \"frozen\": it is suspended"]).await;
    // Unsuspending (an update) is allowed.
    let old = tenant_json(
        "frozen",
        json!({"parent": "acme", "suspended": true, "limits": {"cpu": "0"}}),
    );
    let new = tenant_json("frozen", json!({"parent": "acme", "limits": {"cpu": "0"}}));
    s.allowed(&review("UPDATE", "Tenant", "frozen", Some(new), Some(old)))
        .await;
}

#[tokio::test]
async fn deleting_a_profile_or_channel_in_use_is_rejected() {
    let s = serve(fixture_view()).await;
    let p = profile_json("acme-std", json!({"owner": "acme"}));
    s.denied(&review("DELETE", "LimitProfile", "acme-std", None, Some(p)), "InUse", 403,
        &["LimitProfile/acme-std: metadata.name: still used by 1 tenant(s) (dealer): remove it from their spec.limitProfile first"]).await;
    let c = channel_json("tel", json!({"owner": "acme"}));
    s.denied(&review("DELETE", "Channel", "tel", None, Some(c)), "InUse", 403,
        &["Channel/tel: metadata.name: still used by 1 tenant(s) (dealer): remove it from their spec.channels first"]).await;
    // Unused ones may go.
    let p = profile_json("spare", json!({"owner": "acme"}));
    s.allowed(&review("DELETE", "LimitProfile", "spare", None, Some(p)))
        .await;
    let c = channel_json("spare-ch", json!({"owner": "acme"}));
    s.allowed(&review("DELETE", "Channel", "spare-ch", None, Some(c)))
        .await;
}

#[tokio::test]
async fn a_pending_creation_counts_as_a_use_and_as_a_child() {
    let s = serve(fixture_view()).await;
    let t = tenant_json(
        "newbie",
        json!({"parent": "acme", "limitProfile": "spare", "channels": ["spare-ch"], "limits": {"cpu": "1"}}),
    );
    s.allowed(&review("CREATE", "Tenant", "newbie", Some(t), None))
        .await;
    let p = profile_json("spare", json!({"owner": "acme"}));
    s.denied(
        &review("DELETE", "LimitProfile", "spare", None, Some(p)),
        "InUse",
        403,
        &["still used by 1 tenant(s) (newbie (being created))"],
    )
    .await;
    // The watcher reports it: the reservation becomes real usage.
    s.state.view.upsert_tenant(tenant(
        "newbie",
        json!({"parent": "acme", "limitProfile": "spare", "channels": ["spare-ch"], "limits": {"cpu": "1"}}),
    ));
    assert_eq!(s.state.view.reservations(), 0);
    // A child admitted but not observed yet blocks a Retain delete of its parent.
    let kid = tenant_json("kid", json!({"parent": "newbie", "limits": {"cpu": "1"}}));
    s.allowed(&review("CREATE", "Tenant", "kid", Some(kid), None))
        .await;
    assert_eq!(s.state.view.reservations(), 1);
    let newbie = tenant_json("newbie", json!({"parent": "acme"}));
    s.denied(
        &review("DELETE", "Tenant", "newbie", None, Some(newbie)),
        "HasChildren",
        403,
        &["tenant \"newbie\" still has 1 child tenant(s) (kid (being created))"],
    )
    .await;
    let c = channel_json("spare-ch", json!({"owner": "acme"}));
    s.denied(
        &review("DELETE", "Channel", "spare-ch", None, Some(c)),
        "InUse",
        403,
        &["still used by 1 tenant(s) (newbie)"],
    )
    .await;
}

#[tokio::test]
async fn nothing_is_created_below_a_tenant_whose_deletion_was_admitted() {
    let s = serve(fixture_view()).await;
    let full_a = tenant_json("capped-a", json!({"parent": "capped"}));
    s.allowed(&review("DELETE", "Tenant", "capped-a", None, Some(full_a)))
        .await;
    let t = tenant_json("late", json!({"parent": "capped-a"}));
    s.denied(&review("CREATE", "Tenant", "late", Some(t), None), "ParentDeleting", 403,
        &["Tenant/late: spec.parent: cannot create a tenant below \"capped-a\": tenant \"capped-a\" is being deleted"]).await;
}

#[tokio::test]
async fn invalid_names_limits_and_members_are_rejected() {
    let s = serve(fixture_view()).await;
    let t = tenant_json("Bad_Name", json!({"parent": "acme"}));
    s.denied(
        &review("CREATE", "Tenant", "Bad_Name", Some(t), None),
        "InvalidName",
        422,
        &["Tenant/Bad_Name: metadata.name: \"Bad_Name\" must be lower-case letters"],
    )
    .await;
    let p = profile_json("neg", json!({"owner": "acme", "limits": {"devices": -5}}));
    s.denied(
        &review("CREATE", "LimitProfile", "neg", Some(p), None),
        "InvalidLimit",
        422,
        &["LimitProfile/neg: spec.limits.devices: -5 is not allowed"],
    )
    .await;
    let t = tenant_json(
        "m",
        json!({"parent": "acme", "members": [{"user": "ann", "role": "admin"}, {"user": "ann", "role": "Viewer!"}]}),
    );
    s.denied(
        &review("CREATE", "Tenant", "m", Some(t), None),
        "InvalidMember",
        422,
        &[
            "Tenant/m: spec.members[1].user: user \"ann\" is listed more than once",
            "spec.members[1].role: role \"Viewer!\"",
        ],
    )
    .await;
    let t = tenant_json("dist", json!({"parent": "acme"}));
    s.denied(
        &review("CREATE", "Tenant", "dist", Some(t), None),
        "AlreadyExists",
        409,
        &["Tenant/dist: metadata.name: Tenant \"dist\" already exists"],
    )
    .await;
    let p = profile_json("q", json!({"owner": "ghost"}));
    s.denied(
        &review("CREATE", "LimitProfile", "q", Some(p), None),
        "UnknownOwner",
        422,
        &["LimitProfile/q: spec.owner: owner tenant \"ghost\" does not exist"],
    )
    .await;
}

#[tokio::test]
async fn valid_objects_are_accepted() {
    let s = serve(fixture_view()).await;
    // A tenant using a profile of a strict ancestor, a visible channel and a quota that fits.
    let t = tenant_json(
        "shop",
        json!({"parent": "dist", "limitProfile": "acme-std", "channels": ["tel", "acme-all"], "limits": {"cpu": "1"}}),
    );
    s.allowed(&review("CREATE", "Tenant", "shop", Some(t), None))
        .await;
    let t = tenant_json("newroot", json!({}));
    s.allowed(&review("CREATE", "Tenant", "newroot", Some(t), None))
        .await;
    let old = tenant_json(
        "dealer",
        json!({"parent": "dist", "limits": {"cpu": "3"}, "limitProfile": "acme-std", "channels": ["tel"]}),
    );
    let new = tenant_json(
        "dealer",
        json!({"parent": "dist", "displayName": "Dealer GmbH", "limits": {"cpu": "3"}, "limitProfile": "acme-std", "channels": ["tel"]}),
    );
    s.allowed(&review("UPDATE", "Tenant", "dealer", Some(new), Some(old)))
        .await;
    s.allowed(&review(
        "DELETE",
        "Tenant",
        "cust",
        None,
        Some(tenant_json("cust", json!({"parent": "dealer"}))),
    ))
    .await;
    let p = profile_json("gold", json!({"owner": "dist", "limits": {"devices": 20}}));
    s.allowed(&review("CREATE", "LimitProfile", "gold", Some(p), None))
        .await;
    let c = channel_json(
        "ruptela",
        json!({"owner": "dist", "visibility": {"subtrees": ["dealer"]}}),
    );
    s.allowed(&review("CREATE", "Channel", "ruptela", Some(c), None))
        .await;
    // Kinds outside silo.dev are never judged.
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}});
    s.allowed(&review("CREATE", "Pod", "p", Some(pod), None))
        .await;
}

#[tokio::test]
async fn a_type_error_in_the_object_is_denied_naming_the_field() {
    let s = serve(fixture_view()).await;
    let t = tenant_json(
        "x",
        json!({"parent": "acme", "limits": {"subtenants": "many"}}),
    );
    s.denied(
        &review("CREATE", "Tenant", "x", Some(t), None),
        "MalformedObject",
        422,
        &["Tenant/x: object: object.spec.limits.subtenants is invalid"],
    )
    .await;
}

#[tokio::test]
async fn malformed_bodies_get_a_clean_400() {
    let s = serve(fixture_view()).await;
    for (body, fragment) in [
        (
            "not json at all".to_string(),
            "request body is not a valid AdmissionReview",
        ),
        (
            r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_string(),
            "AdmissionReview has no request",
        ),
        (
            r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":7}}"#
                .to_string(),
            "request body is not a valid AdmissionReview",
        ),
        (String::new(), "request body is not a valid AdmissionReview"),
    ] {
        let r = s
            .client
            .post(&s.url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        assert_eq!(r.headers()["content-type"], "application/json");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["error"], "BadRequest");
        assert!(v["message"].as_str().unwrap().contains(fragment), "{v}");
    }
    // The server is still up and answering.
    let t = tenant_json("still", json!({"parent": "acme", "limits": {"cpu": "1"}}));
    s.allowed(&review("CREATE", "Tenant", "still", Some(t), None))
        .await;
}
