//! A silo's walls on a real API server, with the real operator as its own ServiceAccount:
//! - drift: the NetworkPolicy, the ResourceQuota and a member RoleBinding, deleted or edited
//!   by someone else, are restored to what the operator renders;
//! - effective rights follow the Tenant's admins and members — a member's role change, an
//!   admin removed, a custom role — checked as the API server's authorizer decides them
//!   (SubjectAccessReview by the admin and SelfSubjectAccessReview as the user, i.e.
//!   `kubectl auth can-i`), never by reading RBAC objects.

mod envtest_support;

use std::time::Duration;

use k8s_openapi::api::core::v1::ResourceQuota;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use envtest_support::access::{can_i, user_can};
use envtest_support::platform::{Platform, PlatformOptions};
use envtest_support::{Envtest, eventually, wait_until};
use silo::render::rbac::member_binding_name;

const NS: &str = "tenant-acme";
const CHILD_NS: &str = "tenant-acme-east";

/// What a manual edit looks like: `kubectl edit` as the cluster admin.
fn edit_params() -> PatchParams {
    PatchParams {
        field_manager: Some("kubectl-edit".into()),
        ..Default::default()
    }
}

/// The parts of an object the operator owns (everything but metadata and status).
fn body<K: Serialize>(o: &K) -> Value {
    let mut v = serde_json::to_value(o).unwrap();
    let m = v.as_object_mut().unwrap();
    m.remove("metadata");
    m.remove("status");
    v
}

/// Deletes or edits `name`, then waits until the operator restored exactly `want`.
async fn expect_restored<K>(api: &Api<K>, name: &str, want: &Value, what: &str)
where
    K: Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    eventually(what, Duration::from_secs(60), || async {
        match api.get_opt(name).await.map_err(|e| e.to_string())? {
            Some(o) if body(&o) == *want => Ok(()),
            Some(o) => Err(format!("differs: {}", body(&o))),
            None => Err("missing".into()),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_in_network_policy_quota_and_role_bindings_is_repaired() {
    let Some(p) = Platform::start(PlatformOptions::default()).await else {
        return;
    };
    p.apply(
        r#"
apiVersion: silo.dev/v1alpha1
kind: Tenant
metadata: {name: acme}
spec:
  limits: {cpu: "4", memory: 8Gi, pods: "20"}
  members: [{user: carol, role: viewer}]
"#,
    )
    .await;
    p.wait_ready(&["acme"], Duration::from_secs(90)).await;
    let admin = p.admin();
    let netpols: Api<NetworkPolicy> = Api::namespaced(admin.clone(), NS);
    let quotas: Api<ResourceQuota> = Api::namespaced(admin.clone(), NS);
    let bindings: Api<RoleBinding> = Api::namespaced(admin.clone(), NS);
    let np = body(&netpols.get("silo-isolation").await.unwrap());
    let quota = body(&quotas.get("silo-quota").await.unwrap());
    let carol_binding = &member_binding_name("carol", "viewer");
    let rb = body(&bindings.get(carol_binding).await.unwrap());
    assert!(user_can(&admin, "carol", &[], "list", "pods", Some(NS)).await);

    // Each is deleted, and edited right after the operator restored it (within the same
    // second as its apply: managedFields times have whole seconds): each time it comes back
    // as it was.
    let dp = DeleteParams::default();
    netpols.delete("silo-isolation", &dp).await.unwrap();
    expect_restored(
        &netpols,
        "silo-isolation",
        &np,
        "deleted NetworkPolicy restored",
    )
    .await;
    netpols
        .patch(
            "silo-isolation",
            &edit_params(),
            &Patch::Merge(json!({"spec": {"ingress": [{}]}})),
        )
        .await
        .unwrap();
    expect_restored(
        &netpols,
        "silo-isolation",
        &np,
        "edited NetworkPolicy restored",
    )
    .await;

    quotas.delete("silo-quota", &dp).await.unwrap();
    expect_restored(
        &quotas,
        "silo-quota",
        &quota,
        "deleted ResourceQuota restored",
    )
    .await;
    quotas
        .patch(
            "silo-quota",
            &edit_params(),
            &Patch::Merge(json!({"spec": {"hard": {"limits.cpu": "400", "pods": "2000"}}})),
        )
        .await
        .unwrap();
    expect_restored(
        &quotas,
        "silo-quota",
        &quota,
        "edited ResourceQuota restored",
    )
    .await;

    bindings.delete(carol_binding, &dp).await.unwrap();
    expect_restored(
        &bindings,
        carol_binding,
        &rb,
        "deleted RoleBinding restored",
    )
    .await;
    let mut subjects = rb["subjects"].clone();
    subjects
        .as_array_mut()
        .unwrap()
        .push(json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "mallory"}));
    bindings
        .patch(
            carol_binding,
            &edit_params(),
            &Patch::Merge(json!({"subjects": subjects})),
        )
        .await
        .unwrap();
    expect_restored(&bindings, carol_binding, &rb, "edited RoleBinding restored").await;
    // The stranger's access went with the edit; carol kept hers.
    assert!(!user_can(&admin, "mallory", &[], "list", "pods", Some(NS)).await);
    assert!(user_can(&admin, "carol", &[], "list", "pods", Some(NS)).await);

    let refused = p
        .env
        .audit()
        .forbidden_for(&p.operator_user(), Default::default());
    assert!(refused.is_empty(), "{refused:#?}");
}

/// One expected decision: `user` may (or may not) `verb` `resource` in `namespace`.
struct Right {
    user: &'static str,
    verb: &'static str,
    resource: &'static str,
    namespace: &'static str,
    allowed: bool,
}

const fn may(
    user: &'static str,
    verb: &'static str,
    resource: &'static str,
    namespace: &'static str,
) -> Right {
    Right {
        user,
        verb,
        resource,
        namespace,
        allowed: true,
    }
}

const fn may_not(
    user: &'static str,
    verb: &'static str,
    resource: &'static str,
    namespace: &'static str,
) -> Right {
    Right {
        user,
        verb,
        resource,
        namespace,
        allowed: false,
    }
}

/// The decisions that differ from `rights`, asked both ways: SubjectAccessReview by the
/// admin and SelfSubjectAccessReview as the user (the two must agree).
async fn wrong_rights(env: &Envtest, rights: &[Right]) -> Vec<String> {
    let admin = env.admin();
    let mut wrong = Vec::new();
    for r in rights {
        let sar = user_can(&admin, r.user, &[], r.verb, r.resource, Some(r.namespace)).await;
        let client: Client = env.client_as_user(r.user, &[]).await;
        let self_sar = can_i(&client, r.verb, r.resource, Some(r.namespace)).await;
        // While RBAC changes the two answers may come from different moments: a
        // disagreement is a decision not settled yet (the caller waits for agreement).
        if sar != self_sar {
            wrong.push(format!(
                "{}: SubjectAccessReview and SelfSubjectAccessReview disagree on {} {} in {}",
                r.user, r.verb, r.resource, r.namespace
            ));
        } else if sar != r.allowed {
            wrong.push(format!(
                "{} {} {} {} in {}",
                r.user,
                if sar { "CAN" } else { "cannot" },
                r.verb,
                r.resource,
                r.namespace
            ));
        }
    }
    wrong
}

/// Waits (bounded) until every decision is as `rights` says; otherwise fails naming the
/// wrong decisions and the operator's Warning events about the tenant.
async fn expect_rights(p: &Platform, what: &str, rights: &[Right]) {
    let outcome = wait_until(Duration::from_secs(60), || async {
        let wrong = wrong_rights(&p.env, rights).await;
        if wrong.is_empty() {
            Ok(())
        } else {
            Err(format!("{wrong:#?}"))
        }
    })
    .await;
    if let Err(wrong) = outcome {
        let warnings: Vec<String> = Api::<Event>::all(p.admin())
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.type_.as_deref() == Some("Warning"))
            .map(|e| {
                format!(
                    "{} {}: {}",
                    e.regarding.and_then(|r| r.name).unwrap_or_default(),
                    e.reason.unwrap_or_default(),
                    e.note.unwrap_or_default()
                )
            })
            .collect();
        panic!(
            "{what}: not reached after 60 s; wrong: {wrong}\nWarning events:\n{}",
            warnings.join("\n")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn effective_rights_follow_role_changes_admin_removal_and_custom_roles() {
    let Some(p) = Platform::start(PlatformOptions::default()).await else {
        return;
    };
    // alice administers acme (and so its subtree); bob is an admin member, carol a viewer,
    // dave holds the custom role `auditor` (defined in spec.roles, what `POST /v1/roles` does;
    // the operator materialises it as the Role silo-role-auditor); mallory is nobody.
    p.apply(
        r#"
apiVersion: silo.dev/v1alpha1
kind: Tenant
metadata: {name: acme}
spec:
  admins: [{kind: User, name: alice}]
  roles: [{name: auditor, permissions: [tenants.read, workloads.read]}]
  members:
    - {user: bob, role: admin}
    - {user: carol, role: viewer}
    - {user: dave, role: auditor}
---
apiVersion: silo.dev/v1alpha1
kind: Tenant
metadata: {name: acme-east}
spec: {parent: acme}
"#,
    )
    .await;
    p.wait_ready(&["acme", "acme-east"], Duration::from_secs(90))
        .await;

    // Before: every role as documented, the walls hold for everyone.
    expect_rights(
        &p,
        "rights before the change",
        &[
            may("alice", "create", "secrets", NS),
            may("alice", "create", "secrets", CHILD_NS),
            may("bob", "create", "secrets", NS),
            may("bob", "delete", "deployments.apps", NS),
            may_not("bob", "get", "pods", CHILD_NS),
            may("carol", "list", "pods", NS),
            may_not("carol", "get", "secrets", NS),
            may_not("carol", "delete", "pods", NS),
            may_not("carol", "list", "pods", CHILD_NS),
            // The custom role grants what `workloads.read` stands for, in its tenant only.
            may("dave", "list", "pods", NS),
            may("dave", "get", "configmaps", NS),
            may_not("dave", "delete", "pods", NS),
            may_not("dave", "get", "secrets", NS),
            may_not("dave", "list", "pods", CHILD_NS),
            may_not("mallory", "list", "pods", NS),
            // Nobody in the tenant edits its walls.
            may_not("alice", "patch", "networkpolicies.networking.k8s.io", NS),
            may_not(
                "bob",
                "create",
                "rolebindings.rbac.authorization.k8s.io",
                NS,
            ),
            may_not("bob", "patch", "resourcequotas", NS),
        ],
    )
    .await;

    // The change: bob admin → viewer, dave auditor → technician, carol → the custom role,
    // alice no longer an admin.
    p.apply(
        r#"
apiVersion: silo.dev/v1alpha1
kind: Tenant
metadata: {name: acme}
spec:
  admins: [{kind: User, name: erin}]
  roles: [{name: auditor, permissions: [tenants.read, workloads.read]}]
  members:
    - {user: bob, role: viewer}
    - {user: carol, role: auditor}
    - {user: dave, role: technician}
"#,
    )
    .await;
    expect_rights(
        &p,
        "rights after the change",
        &[
            // Demoted: bob reads but no longer writes.
            may_not("bob", "create", "secrets", NS),
            may_not("bob", "get", "secrets", NS),
            may_not("bob", "delete", "deployments.apps", NS),
            may("bob", "list", "pods", NS),
            // Removed admin: nothing left, here or below.
            may_not("alice", "create", "secrets", NS),
            may_not("alice", "list", "pods", NS),
            may_not("alice", "create", "secrets", CHILD_NS),
            // The new admin administers the subtree.
            may("erin", "create", "secrets", NS),
            may("erin", "create", "secrets", CHILD_NS),
            // carol now holds the custom role only (read, no Secrets, no writes).
            may("carol", "get", "configmaps", NS),
            may_not("carol", "get", "secrets", NS),
            may_not("carol", "delete", "pods", NS),
            // dave: technician (deletes pods, still no Secrets).
            may("dave", "delete", "pods", NS),
            may_not("dave", "get", "secrets", NS),
        ],
    )
    .await;
    let acme = p.wait_ready(&["acme"], Duration::from_secs(60)).await;
    assert!(acme[0].status.as_ref().unwrap().observed_generation >= Some(2));
    let refused = p
        .env
        .audit()
        .forbidden_for(&p.operator_user(), Default::default());
    assert!(refused.is_empty(), "{refused:#?}");
}
