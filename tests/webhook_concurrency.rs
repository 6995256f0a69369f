//! Race-free limits: concurrent creations over real HTTPS never exceed a limit, and
//! reservations end when the object is observed or their TTL runs out.

mod webhook_support;

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use silo::hierarchy::Inventory;
use silo::types::CountResource;
use silo::webhook::{ManualClock, Proposal, TreeView};
use webhook_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_parallel_creations_under_a_limit_of_ten_admit_exactly_ten() {
    let view = TreeView::new(settings());
    view.replace_all(Inventory {
        tenants: vec![tenant("parent", json!({"limits": {"subtenants": 10}}))],
        ..Default::default()
    });
    let s = Arc::new(serve(view).await);
    let mut tasks = Vec::new();
    for i in 0..50 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let name = format!("child-{i}");
            let t = tenant_json(&name, json!({"parent": "parent"}));
            let r = s
                .send(&review("CREATE", "Tenant", &name, Some(t), None))
                .await;
            (name, r)
        }));
    }
    let mut admitted = Vec::new();
    let mut denied = 0;
    for t in tasks {
        let (name, r) = t.await.unwrap();
        if r["allowed"] == true {
            admitted.push(name);
        } else {
            denied += 1;
            assert_eq!(r["status"]["reason"], "LimitExceeded", "{r}");
            let msg = r["status"]["message"].as_str().unwrap();
            assert!(
                msg.contains(
                    "tenant \"parent\" allows at most 10 subtenants in its subtree and uses 10"
                ),
                "{msg}"
            );
        }
    }
    assert_eq!(admitted.len(), 10, "admitted: {admitted:?}");
    assert_eq!(denied, 40);
    assert_eq!(s.state.view.reservations(), 10);

    // The watcher reports the ten: usage becomes real, the limit still holds.
    for name in &admitted {
        s.state
            .view
            .upsert_tenant(tenant(name, json!({"parent": "parent"})));
    }
    assert_eq!(s.state.view.reservations(), 0);
    let used = s.state.view.with_tree(|t| {
        t.node(t.get("parent").unwrap())
            .subtree
            .get(CountResource::Subtenants)
    });
    assert_eq!(used, 10);
    let t = tenant_json("one-more", json!({"parent": "parent"}));
    s.denied(
        &review("CREATE", "Tenant", "one-more", Some(t), None),
        "LimitExceeded",
        403,
        &["uses 10; adding 1 would exceed it"],
    )
    .await;
}

fn create(name: &str, parent: &str) -> Proposal {
    Proposal::CreateTenant(tenant(name, json!({"parent": parent})))
}

#[test]
fn reservations_expire_after_their_ttl() {
    let clock = Arc::new(ManualClock::default());
    let view = TreeView::with_clock(settings(), Duration::from_secs(5), clock.clone());
    view.replace_all(Inventory {
        tenants: vec![tenant("p", json!({"limits": {"subtenants": 1}}))],
        ..Default::default()
    });
    view.decide(&create("a", "p"), true).unwrap();
    let denied = view.decide(&create("b", "p"), true).unwrap_err();
    assert!(
        denied[0]
            .to_string()
            .contains("tenant \"p\" allows at most 1 subtenants in its subtree and uses 1"),
        "{}",
        denied[0]
    );
    clock.advance(Duration::from_secs(4));
    let still = view.decide(&create("b", "p"), true).unwrap_err();
    assert_eq!(still[0].to_string(), denied[0].to_string());
    // "a" never appeared: after the TTL its reservation is gone and "b" fits.
    clock.advance(Duration::from_secs(2));
    assert_eq!(view.reservations(), 0);
    view.decide(&create("b", "p"), true).unwrap();
    assert_eq!(view.reservations(), 1);
}

#[test]
fn a_retried_creation_does_not_reserve_twice_and_dry_run_reserves_nothing() {
    let view = TreeView::new(settings());
    view.replace_all(Inventory {
        tenants: vec![tenant("p", json!({"limits": {"subtenants": 1}}))],
        ..Default::default()
    });
    view.decide(&create("a", "p"), false).unwrap();
    assert_eq!(view.reservations(), 0);
    view.decide(&create("a", "p"), true).unwrap();
    view.decide(&create("a", "p"), true).unwrap();
    assert_eq!(view.reservations(), 1);
    let denied = view.decide(&create("b", "p"), true).unwrap_err();
    assert!(
        denied[0]
            .to_string()
            .contains("tenant \"p\" allows at most 1 subtenants in its subtree and uses 1"),
        "{}",
        denied[0]
    );
}

#[test]
fn quota_reservations_keep_concurrent_siblings_within_the_parent() {
    let view = TreeView::new(settings());
    view.replace_all(Inventory {
        tenants: vec![tenant("p", json!({"limits": {"cpu": "3"}}))],
        ..Default::default()
    });
    let with_cpu =
        |n: &str| Proposal::CreateTenant(tenant(n, json!({"parent": "p", "limits": {"cpu": "2"}})));
    view.decide(&with_cpu("a"), true).unwrap();
    let denied = view.decide(&with_cpu("b"), true).unwrap_err();
    assert!(denied[0].to_string().contains("Tenant/b: spec.limits.cpu: asks for 2 cpu, but the direct children of \"p\" already ask for 2 of its 3"), "{}", denied[0]);
    // Once "a" is observed its quota is real usage (same outcome).
    view.upsert_tenant(tenant("a", json!({"parent": "p", "limits": {"cpu": "2"}})));
    let again = view.decide(&with_cpu("b"), true).unwrap_err();
    assert_eq!(again[0].to_string(), denied[0].to_string());
    view.remove_tenant("a");
    view.decide(&with_cpu("b"), true).unwrap();
}

#[test]
fn channel_creations_reserve_against_the_owners_channel_limit() {
    let view = TreeView::new(settings());
    view.replace_all(Inventory {
        tenants: vec![tenant("p", json!({"limits": {"channels": 1}}))],
        ..Default::default()
    });
    let ch = |n: &str| Proposal::CreateChannel(channel(n, json!({"owner": "p"})));
    view.decide(&ch("c1"), true).unwrap();
    let denied = view.decide(&ch("c2"), true).unwrap_err();
    assert_eq!(
        denied[0].to_string(),
        "Channel/c2: spec.owner: cannot add a channel owned by \"p\": tenant \"p\" allows at most 1 channels in its subtree and uses 1; adding 1 would exceed it"
    );
    view.upsert_channel(channel("c1", json!({"owner": "p"})));
    assert_eq!(view.reservations(), 0);
    let again = view.decide(&ch("c2"), true).unwrap_err();
    assert_eq!(again[0].to_string(), denied[0].to_string());
    view.remove_channel("c1");
    view.decide(&ch("c2"), true).unwrap();
}

#[test]
fn reservations_survive_a_rebuild_of_the_view() {
    let view = TreeView::new(settings());
    view.replace_all(Inventory {
        tenants: vec![
            tenant("p", json!({"limits": {"subtenants": 3}})),
            tenant("q", json!({"parent": "p"})),
            tenant("q1", json!({"parent": "q"})),
        ],
        ..Default::default()
    });
    view.decide(&create("a", "p"), true).unwrap();
    // Removing a tenant that still has a child forces a full rebuild of the tree.
    view.remove_tenant("q");
    let used = view.with_tree(|t| {
        t.node(t.get("p").unwrap())
            .subtree
            .get(CountResource::Subtenants)
    });
    assert_eq!(used, 1, "the pending creation of a is still counted");
    view.upsert_tenant(tenant("q", json!({"parent": "p"})));
    // q, q1 and the pending a: 3 of 3.
    let denied = view.decide(&create("b", "p"), true).unwrap_err();
    assert!(
        denied[0]
            .to_string()
            .contains("allows at most 3 subtenants in its subtree and uses 3"),
        "{}",
        denied[0]
    );
}
