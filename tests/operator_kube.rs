//! The kube-rs Cluster checked at the HTTP level: the requests it sends (paths, server-side
//! apply parameters, field manager, content types) against a tower-test mock service.

use http::{Method, Response, StatusCode};
use kube::client::Body;
use serde_json::json;

use silo::config::PlatformConfig;
use silo::hierarchy::{Inventory, TenantTree};
use silo::operator::cluster::kube_client::{KubeCluster, foreign_edit};
use silo::operator::cluster::{Cluster, FailureKind, ObjectKey};
use silo::operator::reconcile::desired::prepare;
use silo::render::render_tenant;
use silo::types::{Tenant, TenantSpec, TenantStatus};

mod kube_mock;
use kube_mock::{Handle, next, status_reply};

fn mock() -> (KubeCluster, Handle) {
    let (client, handle) = kube_mock::mock_client();
    (KubeCluster::new(client, Some("test".into())), handle)
}

fn tenant(name: &str) -> Tenant {
    let mut t = Tenant::new(name, TenantSpec::default());
    t.metadata.uid = Some(format!("uid-{name}"));
    t.metadata.resource_version = Some("42".into());
    t
}

fn desired(kind: &str) -> silo::operator::reconcile::desired::Desired {
    let tree = TenantTree::build(
        Inventory {
            tenants: vec![tenant("acme")],
            ..Default::default()
        },
        Default::default(),
    );
    let id = tree.get("acme").unwrap();
    let objs = render_tenant(&tree, id, &PlatformConfig::default());
    prepare(objs.iter().find(|o| o.kind() == kind).unwrap())
}

#[tokio::test]
async fn apply_is_server_side_apply_with_the_silo_field_manager() {
    let (cluster, mut handle) = mock();
    let ns = desired("Namespace");
    let manifest = ns.manifest.clone();
    let server = tokio::spawn(async move { next(&mut handle, StatusCode::OK, manifest).await });
    cluster.apply(&ns.key, &ns.manifest).await.unwrap();
    let seen = server.await.unwrap();
    assert_eq!(seen.method, Method::PATCH);
    assert_eq!(seen.path, "/api/v1/namespaces/tenant-acme");
    assert_eq!(seen.param("fieldManager"), Some("silo"));
    assert_eq!(seen.param("force"), Some("true"));
    assert_eq!(
        seen.content_type.as_deref(),
        Some("application/apply-patch+yaml")
    );
    assert_eq!(seen.body["kind"], "Namespace");
    assert_eq!(
        seen.body["metadata"]["annotations"]["silo.dev/applied-hash"],
        ns.hash.as_str()
    );
    assert_eq!(
        seen.body["metadata"]["ownerReferences"][0]["uid"],
        "uid-acme"
    );
}

#[tokio::test]
async fn namespaced_objects_go_to_their_group_and_namespace() {
    let (cluster, mut handle) = mock();
    for (kind, path) in [
        (
            "Role",
            "/apis/rbac.authorization.k8s.io/v1/namespaces/tenant-acme/roles/",
        ),
        (
            "NetworkPolicy",
            "/apis/networking.k8s.io/v1/namespaces/tenant-acme/networkpolicies/",
        ),
        (
            "StatefulSet",
            "/apis/apps/v1/namespaces/tenant-acme/statefulsets/silo-postgres",
        ),
        ("ConfigMap", "/api/v1/namespaces/tenant-acme/configmaps/"),
    ] {
        let d = desired(kind);
        let manifest = d.manifest.clone();
        let mut h = handle;
        let server = tokio::spawn(async move {
            let s = next(&mut h, StatusCode::OK, manifest).await;
            (s, h)
        });
        cluster.apply(&d.key, &d.manifest).await.unwrap();
        let (seen, h) = server.await.unwrap();
        handle = h;
        assert!(seen.path.starts_with(path), "{kind}: {}", seen.path);
        assert!(seen.path.ends_with(&d.key.name), "{kind}: {}", seen.path);
        assert_eq!(seen.param("fieldManager"), Some("silo"));
    }
}

#[tokio::test]
async fn status_goes_to_the_status_subresource_by_apply() {
    let (cluster, mut handle) = mock();
    let reply = serde_json::to_value(tenant("acme")).unwrap();
    let server = tokio::spawn(async move { next(&mut handle, StatusCode::OK, reply).await });
    let status = TenantStatus {
        phase: Some(silo::types::Phase::Ready),
        depth: Some(1),
        ..Default::default()
    };
    cluster.patch_status("acme", &status).await.unwrap();
    let seen = server.await.unwrap();
    assert_eq!(seen.method, Method::PATCH);
    assert_eq!(seen.path, "/apis/silo.dev/v1alpha1/tenants/acme/status");
    assert_eq!(seen.param("fieldManager"), Some("silo"));
    assert_eq!(seen.param("force"), Some("true"));
    assert_eq!(
        seen.content_type.as_deref(),
        Some("application/apply-patch+yaml")
    );
    assert_eq!(seen.body["apiVersion"], "silo.dev/v1alpha1");
    assert_eq!(seen.body["kind"], "Tenant");
    assert_eq!(seen.body["status"]["phase"], "Ready");
    assert!(seen.body.get("spec").is_none(), "only the status is sent");
}

#[tokio::test]
async fn channel_status_goes_to_its_status_subresource_by_apply() {
    use silo::types::{Channel, ChannelSpec, ChannelStatus};
    let (cluster, mut handle) = mock();
    let reply = serde_json::to_value(Channel::new(
        "teltonika",
        ChannelSpec {
            owner: "root".into(),
            protocol: Default::default(),
            max_connections: None,
            visibility: None,
        },
    ))
    .unwrap();
    let server = tokio::spawn(async move { next(&mut handle, StatusCode::OK, reply).await });
    let status = ChannelStatus {
        connected_devices: None,
        registered_devices: None,
        tenants: vec!["dealer".into()],
        endpoint: Some("mqtt.shared:1883/channels/teltonika/".into()),
    };
    cluster
        .patch_channel_status("teltonika", &status)
        .await
        .unwrap();
    let seen = server.await.unwrap();
    assert_eq!(seen.method, Method::PATCH);
    assert_eq!(
        seen.path,
        "/apis/silo.dev/v1alpha1/channels/teltonika/status"
    );
    assert_eq!(seen.param("fieldManager"), Some("silo"));
    assert_eq!(seen.param("force"), Some("true"));
    assert_eq!(seen.body["kind"], "Channel");
    assert_eq!(seen.body["status"]["tenants"][0], "dealer");
    assert!(seen.body["status"].get("connectedDevices").is_none());
}

#[tokio::test]
async fn errors_are_classified_and_name_the_object() {
    let (cluster, mut handle) = mock();
    let d = desired("Namespace");
    let server = tokio::spawn(async move {
        next(
            &mut handle,
            StatusCode::CONFLICT,
            status_reply(409, "Conflict"),
        )
        .await;
        next(
            &mut handle,
            StatusCode::FORBIDDEN,
            status_reply(403, "Forbidden"),
        )
        .await;
        next(
            &mut handle,
            StatusCode::NOT_FOUND,
            status_reply(404, "NotFound"),
        )
        .await;
        handle
    });
    let e = cluster.apply(&d.key, &d.manifest).await.unwrap_err();
    assert_eq!(e.kind, FailureKind::Conflict);
    assert_eq!(
        e.to_string(),
        "apply Namespace/tenant-acme: Conflict for test (409)"
    );
    let e = cluster.apply(&d.key, &d.manifest).await.unwrap_err();
    assert_eq!(e.kind, FailureKind::Forbidden);
    // Deleting something already gone is fine.
    cluster.delete(&d.key).await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn delete_is_background_propagation() {
    let (cluster, mut handle) = mock();
    let server = tokio::spawn(async move {
        next(&mut handle, StatusCode::OK, status_reply(200, "Success")).await
    });
    let key = ObjectKey::new("RoleBinding", Some("tenant-acme"), "silo-member-bob");
    cluster.delete(&key).await.unwrap();
    let seen = server.await.unwrap();
    assert_eq!(seen.method, Method::DELETE);
    assert_eq!(
        seen.path,
        "/apis/rbac.authorization.k8s.io/v1/namespaces/tenant-acme/rolebindings/silo-member-bob"
    );
    assert_eq!(seen.body["propagationPolicy"], "Background");
}

#[tokio::test]
async fn owned_objects_are_listed_as_metadata_by_tenant_label() {
    let (cluster, mut handle) = mock();
    let server = tokio::spawn(async move {
        let mut seen = Vec::new();
        for i in 0..11 {
            let items = if i == 0 {
                vec![
                    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                    "metadata": {"name": "tenant-acme", "labels": {"silo.dev/tenant": "acme"},
                                 "annotations": {"silo.dev/applied-hash": "abc"}}}),
                ]
            } else {
                vec![]
            };
            let reply = json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
                               "metadata": {"resourceVersion": "1"}, "items": items});
            let (req, send) = handle.next_request().await.unwrap();
            let accept = req
                .headers()
                .get(http::header::ACCEPT)
                .map(|v| v.to_str().unwrap().to_string());
            seen.push((req.uri().to_string(), accept));
            send.send_response(
                Response::builder()
                    .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                    .unwrap(),
            );
        }
        seen
    });
    let observed = cluster.list_owned("acme").await.unwrap();
    let seen = server.await.unwrap();
    assert_eq!(seen.len(), 11);
    assert!(
        seen[0].0.starts_with("/api/v1/namespaces?"),
        "{}",
        seen[0].0
    );
    for (uri, accept) in &seen {
        assert!(
            uri.contains("labelSelector=silo.dev%2Ftenant%3Dacme"),
            "{uri}"
        );
        assert!(
            accept
                .as_deref()
                .unwrap_or_default()
                .contains("as=PartialObjectMetadataList"),
            "{accept:?}"
        );
    }
    assert_eq!(observed.len(), 1);
    assert_eq!(
        observed[0].key,
        ObjectKey::new("Namespace", None, "tenant-acme")
    );
    assert_eq!(observed[0].hash.as_deref(), Some("abc"));
}

#[tokio::test]
async fn finalizer_is_a_merge_patch_guarded_by_resource_version() {
    let (cluster, mut handle) = mock();
    let reply = serde_json::to_value(tenant("acme")).unwrap();
    let server = tokio::spawn(async move { next(&mut handle, StatusCode::OK, reply).await });
    cluster.add_finalizer(&tenant("acme")).await.unwrap();
    let seen = server.await.unwrap();
    assert_eq!(seen.path, "/apis/silo.dev/v1alpha1/tenants/acme");
    assert_eq!(
        seen.content_type.as_deref(),
        Some("application/merge-patch+json")
    );
    assert_eq!(
        seen.body,
        json!({"metadata": {"finalizers": ["silo.dev/cleanup"], "resourceVersion": "42"}})
    );
}

#[test]
fn foreign_edits_after_our_apply_are_drift_status_and_controllers_are_not() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta, Time};
    let entry = |manager: &str, time: &str, sub: Option<&str>| ManagedFieldsEntry {
        manager: Some(manager.into()),
        operation: Some("Update".into()),
        time: Some(Time(time.parse().unwrap())),
        subresource: sub.map(str::to_string),
        ..Default::default()
    };
    let meta = |e: Vec<ManagedFieldsEntry>| ObjectMeta {
        managed_fields: Some(e),
        ..Default::default()
    };
    let ours = entry("silo", "2026-01-01T10:00:00Z", None);
    assert_eq!(foreign_edit(&meta(vec![ours.clone()])), None);
    assert_eq!(
        foreign_edit(&meta(vec![
            ours.clone(),
            entry("kubectl-edit", "2026-01-01T11:00:00Z", None)
        ])),
        Some("2026-01-01T11:00:00Z".to_string())
    );
    assert_eq!(
        foreign_edit(&meta(vec![
            ours.clone(),
            entry("kubectl-edit", "2026-01-01T09:00:00Z", None)
        ])),
        None,
        "an edit our later apply overrode is not drift"
    );
    // managedFields times have whole seconds: an edit in the same second as our apply may
    // have come after it (found on a real API server: tests/envtest_access.rs).
    assert_eq!(
        foreign_edit(&meta(vec![
            ours.clone(),
            entry("kubectl-edit", "2026-01-01T10:00:00Z", None)
        ])),
        Some("2026-01-01T10:00:00Z".to_string()),
        "an edit in the same second as our apply is drift"
    );
    assert_eq!(
        foreign_edit(&meta(vec![
            ours.clone(),
            entry("kube-controller-manager", "2026-01-01T11:00:00Z", None),
            entry(
                "kube-controller-manager",
                "2026-01-01T12:00:00Z",
                Some("status")
            ),
        ])),
        None
    );
}
