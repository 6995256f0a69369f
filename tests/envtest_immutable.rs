//! Changes the API server will not make in place (issue #10, `render/immutable.rs`), with the
//! real `silo operator` on an envtest API server:
//! - a member demoted from admin to viewer: the viewer binding is created first, then the
//!   admin binding deleted; the user's effective rights (the API server's authorizer) follow
//!   and `AccessReady` says so;
//! - shrinking a Siloed database volume is refused at admission naming the field; growing it
//!   is admitted;
//! - growing it with a StorageClass that does not allow expansion: the API server's refusal
//!   becomes `DatabaseReady=False/Rejected` with its words and a Warning event, the rest of
//!   the silo is reconciled; once the class allows expansion the claim grows and the
//!   StatefulSet is replaced, orphaning (not deleting) its pod;
//! - a Deployment left by an older operator with another selector is replaced when the API
//!   server refuses the change (422 `field is immutable`).

mod envtest_support;

use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use envtest_support::access::user_can;
use envtest_support::platform::{Platform, PlatformOptions};
use envtest_support::{FIELD_MANAGER, apply_as, eventually};
use silo::operator::cluster::{HASH_ANNOTATION, IDENTITY_ANNOTATION};
use silo::render::rbac::member_binding_name;
use silo::types::{Phase, Tenant};

const NS: &str = "tenant-acme";
const CAROL: &str = "carol@acme.example";
const WAIT: Duration = Duration::from_secs(90);

fn acme(spec: Value) -> Value {
    json!({"apiVersion": "silo.dev/v1alpha1", "kind": "Tenant",
           "metadata": {"name": "acme"}, "spec": spec})
}

/// Server-side apply of a Tenant as the admin (kubectl apply --server-side); the refusal.
async fn apply_tenant(client: &Client, t: Value) -> Result<(), kube::Error> {
    Api::<Tenant>::all(client.clone())
        .patch(
            "acme",
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&t),
        )
        .await
        .map(|_| ())
}

async fn condition(client: &Client, type_: &str) -> Option<(String, String, String)> {
    let t = Api::<Tenant>::all(client.clone()).get("acme").await.ok()?;
    let c = t
        .status?
        .conditions
        .into_iter()
        .find(|c| c.type_ == type_)?;
    Some((c.status, c.reason, c.message))
}

/// Events about Tenant acme: `(type, reason, note)`.
async fn events(client: &Client) -> Vec<(String, String, String)> {
    Api::<Event>::all(client.clone())
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("acme"))
        .map(|e| {
            (
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.note.unwrap_or_default(),
            )
        })
        .collect()
}

fn member_bindings(list: &[RoleBinding]) -> Vec<(String, String)> {
    list.iter()
        .filter(|b| b.name_any().starts_with("silo-member-"))
        .map(|b| (b.name_any(), b.role_ref.name.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demoted_member_loses_admin_rights_and_a_volume_may_grow_but_not_shrink() {
    let Some(p) = Platform::start(PlatformOptions {
        webhook: true,
        ..Default::default()
    })
    .await
    else {
        return;
    };
    let admin = p.admin();
    let member = |role: &str| json!([{"user": CAROL, "role": role}]);
    apply_tenant(
        &admin,
        acme(json!({"members": member("admin"), "database": {"storage": "2Gi"}})),
    )
    .await
    .unwrap();
    p.wait_ready(&["acme"], WAIT).await;
    assert!(user_can(&admin, CAROL, &[], "create", "secrets", Some(NS)).await);
    let bindings: Api<RoleBinding> = Api::namespaced(admin.clone(), NS);
    let (old, new) = (
        member_binding_name(CAROL, "admin"),
        member_binding_name(CAROL, "viewer"),
    );

    // The example: admin → viewer.
    let mark = p.env.audit().mark();
    apply_tenant(
        &admin,
        acme(json!({"members": member("viewer"), "database": {"storage": "2Gi"}})),
    )
    .await
    .unwrap();
    eventually("carol demoted to viewer", WAIT, || async {
        let list = bindings.list(&Default::default()).await.unwrap().items;
        let got = member_bindings(&list);
        let can_write = user_can(&admin, CAROL, &[], "create", "secrets", Some(NS)).await;
        let can_read = user_can(&admin, CAROL, &[], "list", "pods", Some(NS)).await;
        if got == vec![(new.clone(), "silo-viewer".to_string())] && !can_write && can_read {
            Ok(())
        } else {
            Err(format!(
                "bindings {got:?}, writes {can_write}, reads {can_read}"
            ))
        }
    })
    .await;
    let tenant = p.wait_ready(&["acme"], WAIT).await.remove(0);
    assert!(tenant.status.unwrap().observed_generation >= Some(2));
    let (status, reason, message) = condition(&admin, "AccessReady").await.unwrap();
    assert_eq!((status.as_str(), reason.as_str()), ("True", "Applied"));
    assert_eq!(
        message,
        "roles and bindings for 0 admin(s) and 1 member(s) applied"
    );
    // The new binding was written before the old one was deleted.
    let writes: Vec<(String, String)> = p
        .env
        .audit()
        .writes_by(&p.operator_user(), mark)
        .into_iter()
        .filter(|e| e.resource == "rolebindings" && e.code < 300)
        .map(|e| (e.verb, e.name))
        .collect();
    let created = writes.iter().position(|(v, n)| v == "patch" && *n == new);
    let deleted = writes.iter().position(|(v, n)| v == "delete" && *n == old);
    assert!(
        matches!((created, deleted), (Some(c), Some(d)) if c < d),
        "{writes:?}"
    );
    let warnings: Vec<_> = events(&admin)
        .await
        .into_iter()
        .filter(|e| e.0 == "Warning")
        .collect();
    assert!(warnings.is_empty(), "{warnings:?}");

    // Shrinking the volume is refused at admission, naming the field and the way out.
    let err = apply_tenant(
        &admin,
        acme(json!({"members": member("viewer"), "database": {"storage": "1Gi"}})),
    )
    .await
    .unwrap_err();
    let kube::Error::Api(s) = err else {
        panic!("{err:?}")
    };
    assert_eq!(s.code, 422, "{s:?}");
    assert!(
        s.message.contains(
            "Tenant/acme: spec.database.storage: cannot shrink the database volume from 2Gi to 1Gi: a PersistentVolumeClaim can only grow"
        ),
        "{}",
        s.message
    );
    // Positive control: growing it is admitted.
    apply_tenant(
        &admin,
        acme(json!({"members": member("viewer"), "database": {"storage": "3Gi"}})),
    )
    .await
    .unwrap();
    let refused = p
        .env
        .audit()
        .forbidden_for(&p.operator_user(), Default::default());
    assert!(refused.is_empty(), "{refused:#?}");
}

/// The claim the StatefulSet controller would create (envtest runs none); Pending.
async fn database_claim(p: &Platform, class: &str) {
    apply_as(
        &p.admin(),
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
               "metadata": {"name": "data-silo-postgres-0", "namespace": NS},
               "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": class,
                        "resources": {"requests": {"storage": "1Gi"}}}}),
        "kube-controller-manager",
    )
    .await;
}

/// What the volume binder would do (envtest runs none).
async fn bind_claim(p: &Platform) {
    Api::<PersistentVolumeClaim>::namespaced(p.admin(), NS)
        .patch_status(
            "data-silo-postgres-0",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Bound", "capacity": {"storage": "1Gi"}}})),
        )
        .await
        .unwrap();
}

/// A change of the Tenant that is no spec change (what a user does to retry now rather than
/// at the next resync).
async fn touch(client: &Client, n: u32) {
    Api::<Tenant>::all(client.clone())
        .patch(
            "acme",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"example.com/retry": n.to_string()}}}),
            ),
        )
        .await
        .unwrap();
}

/// Waits for `DatabaseReady=False/Rejected` with a message containing `fragment`.
async fn rejected(client: &Client, fragment: &str) -> String {
    eventually("DatabaseReady Rejected", WAIT, || async {
        match condition(client, "DatabaseReady").await {
            Some((s, r, m)) if s == "False" && r == "Rejected" && m.contains(fragment) => Ok(m),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

/// The database's pod as the StatefulSet controller would create it (envtest runs none).
async fn database_pod(p: &Platform, sts: &StatefulSet) {
    let template = serde_json::to_value(&sts.spec.as_ref().unwrap().template).unwrap();
    let mut pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "silo-postgres-0", "namespace": NS,
                     "labels": template["metadata"]["labels"].clone(),
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet",
                         "name": "silo-postgres", "uid": sts.uid().unwrap(),
                         "controller": true, "blockOwnerDeletion": true}]},
        "spec": template["spec"].clone()});
    pod["spec"]["volumes"].as_array_mut().unwrap().push(
        json!({"name": "data", "persistentVolumeClaim": {"claimName": "data-silo-postgres-0"}}),
    );
    apply_as(&p.admin(), pod, "kube-controller-manager").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_that_cannot_grow_is_reported_and_grows_once_the_class_allows_it() {
    let Some(p) = Platform::start(PlatformOptions {
        controller_manager: true,
        ..Default::default()
    })
    .await
    else {
        return;
    };
    let admin = p.admin();
    apply_as(
        &admin,
        json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
               "metadata": {"name": "fixed"}, "provisioner": "example.com/disk",
               "allowVolumeExpansion": false}),
        FIELD_MANAGER,
    )
    .await;
    apply_tenant(&admin, acme(json!({"database": {"storage": "1Gi"}})))
        .await
        .unwrap();
    p.wait_ready(&["acme"], WAIT).await;
    let statefulsets: Api<StatefulSet> = Api::namespaced(admin.clone(), NS);
    let before = statefulsets.get("silo-postgres").await.unwrap();
    database_claim(&p, "fixed").await;
    database_pod(&p, &before).await;

    // Bigger volume and a new member in one change, while the claim is not bound yet: the
    // API server refuses the claim's growth (422).
    apply_tenant(
        &admin,
        acme(json!({"database": {"storage": "2Gi"},
                    "members": [{"user": CAROL, "role": "viewer"}]})),
    )
    .await
    .unwrap();
    let message = rejected(
        &admin,
        "spec is immutable after creation except resources.requests",
    )
    .await;
    assert!(
        message.starts_with("StatefulSet/tenant-acme/silo-postgres: the volume cannot grow in place, the API server refused to expand its claim: PersistentVolumeClaim \"data-silo-postgres-0\" is invalid: spec: Forbidden: "),
        "{message}"
    );
    assert!(message.ends_with("for bound claims (422)"), "{message}");
    let t = Api::<Tenant>::all(admin.clone()).get("acme").await.unwrap();
    assert_eq!(t.status.as_ref().unwrap().phase, Some(Phase::Failed));
    let warnings = || async {
        events(&admin)
            .await
            .into_iter()
            .filter(|e| e.0 == "Warning" && e.1 == "Rejected")
            .map(|e| e.2)
            .collect::<Vec<_>>()
    };
    assert_eq!(warnings().await, vec![message.clone()]);
    // The rest of the silo follows the new spec; the database is untouched.
    eventually("the new member can read", WAIT, || async {
        if user_can(&admin, CAROL, &[], "list", "pods", Some(NS)).await {
            Ok(())
        } else {
            Err("not yet".to_string())
        }
    })
    .await;
    let (status, ..) = condition(&admin, "AccessReady").await.unwrap();
    assert_eq!(status, "True");
    let same = statefulsets.get("silo-postgres").await.unwrap();
    assert_eq!(same.uid(), before.uid());
    assert_eq!(same.spec, before.spec);

    // Bound now, but its class does not allow expansion: the resize admission refuses (403).
    bind_claim(&p).await;
    touch(&admin, 1).await;
    let refusal = "persistentvolumeclaims \"data-silo-postgres-0\" is forbidden: only dynamically provisioned pvc can be resized and the storageclass that provisions the pvc must support resize";
    rejected(&admin, refusal).await;
    // (kube's event recorder folds events of the same reason into one series: the second
    // refusal counts on the first event rather than adding one.)
    assert!(!warnings().await.is_empty());
    assert_eq!(
        statefulsets.get("silo-postgres").await.unwrap().uid(),
        before.uid()
    );

    // The class now allows expansion: the claim grows and the StatefulSet is replaced.
    Api::<StorageClass>::all(admin.clone())
        .patch(
            "fixed",
            &PatchParams::default(),
            &Patch::Merge(json!({"allowVolumeExpansion": true})),
        )
        .await
        .unwrap();
    touch(&admin, 2).await;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(admin.clone(), NS);
    let after = eventually("claim grown and StatefulSet replaced", WAIT, || async {
        let claim = claims.get("data-silo-postgres-0").await.unwrap();
        let asked = claim.spec.unwrap().resources.unwrap().requests.unwrap()["storage"]
            .0
            .clone();
        let sts = statefulsets
            .get_opt("silo-postgres")
            .await
            .unwrap()
            .ok_or("no StatefulSet")?;
        let template = sts
            .spec
            .as_ref()
            .unwrap()
            .volume_claim_templates
            .as_ref()
            .unwrap()[0]
            .spec
            .as_ref()
            .unwrap()
            .resources
            .as_ref()
            .unwrap()
            .requests
            .as_ref()
            .unwrap()["storage"]
            .0
            .clone();
        if asked == "2Gi" && template == "2Gi" && sts.uid() != before.uid() {
            Ok(sts)
        } else {
            Err(format!("claim {asked}, template {template}"))
        }
    })
    .await;
    assert!(after.metadata.deletion_timestamp.is_none());
    // The pod was orphaned, not deleted (its volume stays mounted; the new StatefulSet adopts it).
    let pod = Api::<Pod>::namespaced(admin.clone(), NS)
        .get("silo-postgres-0")
        .await
        .unwrap();
    assert!(pod.metadata.deletion_timestamp.is_none());
    assert!(
        !pod.owner_references()
            .iter()
            .any(|o| Some(&o.uid) == before.uid().as_ref()),
        "{:?}",
        pod.owner_references()
    );
    let tenant = p.wait_ready(&["acme"], WAIT).await.remove(0);
    assert_eq!(tenant.status.unwrap().phase, Some(Phase::Ready));
    // The only 403s are the resize admission's refusals (no RBAC denial of the operator).
    let refused: Vec<_> = p
        .env
        .audit()
        .forbidden_for(&p.operator_user(), Default::default())
        .into_iter()
        .filter(|e| e.resource != "persistentvolumeclaims" || e.verb != "patch")
        .collect();
    assert!(refused.is_empty(), "{refused:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_operators_deployment_with_another_selector_is_replaced() {
    let Some(mut p) = Platform::start(PlatformOptions {
        no_operator: true,
        ..Default::default()
    })
    .await
    else {
        return;
    };
    let admin = p.admin();
    // What an older operator left: the broker Deployment with another selector, applied by
    // field manager silo, without the identity annotation.
    p.env.ensure_namespace(NS).await;
    let tree = silo::hierarchy::TenantTree::build(
        silo::hierarchy::Inventory {
            tenants: vec![Tenant::new("acme", Default::default())],
            ..Default::default()
        },
        Default::default(),
    );
    let id = tree.get("acme").unwrap();
    let mut old = silo::render::render_tenant(&tree, id, &Default::default())
        .iter()
        .map(silo::operator::reconcile::desired::prepare)
        .find(|d| d.key.kind == "Deployment")
        .unwrap()
        .manifest;
    old["spec"]["selector"]["matchLabels"]["app"] = json!("mosquitto-v1");
    old["spec"]["template"]["metadata"]["labels"]["app"] = json!("mosquitto-v1");
    let ann = old["metadata"]["annotations"].as_object_mut().unwrap();
    ann.remove(IDENTITY_ANNOTATION);
    ann.insert(HASH_ANNOTATION.into(), json!("older-operator"));
    apply_as(&admin, old, "silo").await;

    apply_tenant(&admin, acme(json!({}))).await.unwrap();
    p.start_operator().await;
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), NS);
    eventually("the Deployment replaced", WAIT, || async {
        // Replacing is delete then create: between the two the Deployment is absent.
        let Some(d) = deployments.get_opt("silo-mosquitto").await.unwrap() else {
            return Err("the Deployment is being replaced (absent)".to_string());
        };
        let labels = d.spec.unwrap().selector.match_labels.unwrap_or_default();
        let identity = d
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key(IDENTITY_ANNOTATION);
        if !labels.contains_key("app") && identity {
            Ok(())
        } else {
            Err(format!("selector {labels:?}, identity {identity}"))
        }
    })
    .await;
    p.wait_ready(&["acme"], WAIT).await;
    // The event that says so (published by the reconcile that replaced it).
    eventually("the replacement in an event", WAIT, || async {
        let all = events(&admin).await;
        let said = all.iter().any(|e| {
            e.2.contains(
                "replaced Deployment/tenant-acme/silo-mosquitto (spec.selector cannot change in place)",
            )
        });
        if said { Ok(()) } else { Err(format!("{all:?}")) }
    })
    .await;
}
