//! Deleting tenants on a real API server with kube-controller-manager running (namespace
//! deletion, owner-reference garbage collection), the real operator as its own
//! ServiceAccount and its webhook registered:
//! - `deletionPolicy: Retain` (the default) with children is refused, nothing changes;
//! - `Cascade` removes the whole subtree bottom-up — Tenants, namespaces with all they hold,
//!   the tenant CA Secrets in the platform namespace — shreds each tenant's key (the active
//!   key record becomes a retired one) and retires the Shared tenant's database;
//! - nothing of the deleted tenants is left anywhere (every kind the operator writes, by
//!   label), and the rest of the tree is untouched.

mod envtest_support;

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, DeleteParams, ListParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::discovery::{self, Scope};
use kube::{Client, ResourceExt};

use envtest_support::eventually;
use envtest_support::platform::{OPERATOR_NAMESPACE, Platform, PlatformOptions};
use silo::types::{Phase, Tenant};

const TREE: &str = r#"
apiVersion: silo.dev/v1alpha1
kind: Tenant
metadata: {name: acme}
spec: {}
---
apiVersion: silo.dev/v1alpha1
kind: Tenant
metadata: {name: dist}
spec: {parent: acme, deletionPolicy: Cascade}
---
apiVersion: silo.dev/v1alpha1
kind: Tenant
metadata: {name: d1}
spec: {parent: dist}
---
apiVersion: silo.dev/v1alpha1
kind: Tenant
metadata: {name: d1a}
spec: {parent: d1}
---
apiVersion: silo.dev/v1alpha1
kind: Tenant
metadata: {name: d2}
spec: {parent: dist, isolation: Shared}
---
apiVersion: silo.dev/v1alpha1
kind: Tenant
metadata: {name: other}
spec: {parent: acme}
"#;

const SUBTREE: [&str; 4] = ["dist", "d1", "d1a", "d2"];
const KEPT: [&str; 2] = ["acme", "other"];

/// Every kind the operator writes, as `(apiVersion, kind)`.
const KINDS: [(&str, &str); 12] = [
    ("v1", "Namespace"),
    ("v1", "ResourceQuota"),
    ("v1", "LimitRange"),
    ("v1", "ServiceAccount"),
    ("v1", "ConfigMap"),
    ("v1", "Service"),
    ("v1", "Secret"),
    ("apps/v1", "StatefulSet"),
    ("apps/v1", "Deployment"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
    ("rbac.authorization.k8s.io/v1", "Role"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"),
];

/// `Kind namespace/name` of every object, of any kind the operator writes, labelled as
/// belonging to `tenant`.
async fn objects_of(client: &Client, tenant: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (api_version, kind) in KINDS {
        let (g, v) = api_version.split_once('/').unwrap_or(("", api_version));
        let (ar, caps): (ApiResource, _) =
            discovery::pinned_kind(client, &GroupVersionKind::gvk(g, v, kind))
                .await
                .unwrap();
        assert!(matches!(caps.scope, Scope::Cluster | Scope::Namespaced));
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
        let lp = ListParams::default().labels(&format!("silo.dev/tenant={tenant}"));
        for o in api.list(&lp).await.unwrap() {
            out.push(format!(
                "{kind} {}/{}",
                o.namespace().unwrap_or_default(),
                o.name_any()
            ));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cascade_removes_the_subtree_retain_refuses_and_nothing_is_orphaned() {
    let Some(p) = Platform::start(PlatformOptions {
        controller_manager: true,
        webhook: true,
        shared_services: true,
        ..Default::default()
    })
    .await
    else {
        return;
    };
    let admin = p.admin();
    p.apply(TREE).await;
    let all: Vec<&str> = SUBTREE.iter().chain(KEPT.iter()).copied().collect();
    p.wait_ready(&all, Duration::from_secs(120)).await;
    for t in SUBTREE {
        assert!(
            !objects_of(&admin, t).await.is_empty(),
            "positive control: {t} has objects"
        );
    }
    let tenants: Api<Tenant> = Api::all(admin.clone());

    // Retain with children: refused by the webhook, nothing changes.
    for (name, children) in [
        ("acme", "2 child tenant(s) (dist, other)"),
        ("d1", "1 child tenant(s) (d1a)"),
    ] {
        let err = tenants
            .delete(name, &DeleteParams::default())
            .await
            .expect_err("Retain with children");
        let kube::Error::Api(s) = err else {
            panic!("{err}")
        };
        assert_eq!(s.code, 403, "{}", s.message);
        assert!(
            s.message.contains(&format!(
                "tenant \"{name}\" still has {children} and deletionPolicy is Retain"
            )),
            "{}",
            s.message
        );
        let t = tenants.get(name).await.unwrap();
        assert!(t.metadata.deletion_timestamp.is_none(), "{name}");
    }

    // Cascade: the whole subtree goes, bottom-up.
    let key_records_before = secrets_in_platform_namespace(&admin).await;
    tenants
        .delete("dist", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the subtree deleted", Duration::from_secs(180), || {
        let tenants = tenants.clone();
        let namespaces: Api<Namespace> = Api::all(admin.clone());
        async move {
            let mut left = Vec::new();
            for t in SUBTREE {
                if tenants
                    .get_opt(t)
                    .await
                    .map_err(|e| e.to_string())?
                    .is_some()
                {
                    left.push(format!("Tenant {t}"));
                }
                let ns = format!("tenant-{t}");
                if let Some(n) = namespaces.get_opt(&ns).await.map_err(|e| e.to_string())? {
                    left.push(format!(
                        "Namespace {ns} ({:?})",
                        n.status.and_then(|s| s.phase)
                    ));
                }
            }
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("{left:?}"))
            }
        }
    })
    .await;

    // Nothing of theirs is left but the shredded key records (kept for the deletion window).
    eventually(
        "nothing of the subtree left",
        Duration::from_secs(60),
        || {
            let admin = admin.clone();
            async move {
                let mut left = Vec::new();
                for t in SUBTREE {
                    left.extend(
                        objects_of(&admin, t)
                            .await
                            .into_iter()
                            .filter(|o| !o.contains("/silo-key-retired.")),
                    );
                }
                if left.is_empty() {
                    Ok(())
                } else {
                    Err(format!("{left:#?}"))
                }
            }
        },
    )
    .await;
    let key_records_after = secrets_in_platform_namespace(&admin).await;
    for t in SUBTREE {
        // Every tenant has a key; Siloed ones also a tenant CA (their broker serves TLS).
        let mut gone = vec![format!("silo-key-{t}")];
        if t != "d2" {
            gone.push(format!("silo-ca-{t}"));
        }
        for g in gone {
            assert!(key_records_before.contains(&g), "positive control: {g}");
            assert!(!key_records_after.contains(&g), "{g} left behind");
        }
    }
    let retired = key_records_after
        .iter()
        .filter(|n| n.starts_with("silo-key-retired."))
        .count();
    assert_eq!(
        retired,
        SUBTREE.len(),
        "one shredded key record per deleted tenant: {key_records_after:?}"
    );

    // The Shared tenant's database was retired (login revoked, renamed silo_r_…).
    let pg = p.postgres.as_ref().unwrap().superuser().await;
    let rows = pg
        .query(
            "SELECT datname FROM pg_database WHERE datname LIKE 'silo_%'",
            &[],
        )
        .await
        .unwrap();
    let dbs: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert!(
        dbs.iter().all(|d| d.starts_with("silo_r_")) && dbs.len() == 1,
        "the Shared tenant's database retired: {dbs:?}"
    );

    // The rest of the tree is untouched.
    let kept = p.wait_ready(&KEPT, Duration::from_secs(60)).await;
    for t in &kept {
        assert_eq!(t.status.as_ref().unwrap().phase, Some(Phase::Ready));
        assert!(!objects_of(&admin, &t.name_any()).await.is_empty());
    }
    let refused = p
        .env
        .audit()
        .forbidden_for(&p.operator_user(), Default::default());
    assert!(refused.is_empty(), "{refused:#?}");
}

async fn secrets_in_platform_namespace(client: &Client) -> BTreeSet<String> {
    Api::<Secret>::namespaced(client.clone(), OPERATOR_NAMESPACE)
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|s| s.name_any())
        .collect()
}
