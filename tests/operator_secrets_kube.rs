//! The kube-rs Secret calls checked at the HTTP level: paths, methods, bodies and how
//! "not found" and "already exists" come back.

use base64::Engine as _;
use http::{Method, StatusCode};
use serde_json::{Value, json};

use silo::operator::cluster::kube_client::KubeCluster;
use silo::operator::cluster::{Cluster, FailureKind, ObjectKey, SecretData};
use silo::operator::reconcile::secrets::secret_manifest;
use silo::types::{Tenant, TenantSpec};

mod kube_mock;
use kube_mock::{Handle, next, status_reply};

fn mock() -> (KubeCluster, Handle) {
    let (client, handle) = kube_mock::mock_client();
    (KubeCluster::new(client, Some("test".into())), handle)
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn secret_reply(data: &[(&str, &str)]) -> Value {
    let data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(k, v)| (k.to_string(), Value::String(b64(v))))
        .collect();
    json!({"apiVersion": "v1", "kind": "Secret",
           "metadata": {"name": "silo-postgres-credentials", "namespace": "tenant-acme"},
           "data": data})
}

#[tokio::test]
async fn get_secret_is_a_get_on_the_namespaced_path_and_decodes_data() {
    let (cluster, mut handle) = mock();
    let server = tokio::spawn(async move {
        next(
            &mut handle,
            StatusCode::OK,
            secret_reply(&[("username", "silo"), ("password", "pw")]),
        )
        .await
    });
    let d = cluster
        .get_secret("tenant-acme", "silo-postgres-credentials")
        .await
        .unwrap()
        .unwrap();
    let seen = server.await.unwrap();
    assert_eq!(seen.method, Method::GET);
    assert_eq!(
        seen.path,
        "/api/v1/namespaces/tenant-acme/secrets/silo-postgres-credentials"
    );
    assert_eq!(d["username"], "silo");
    assert_eq!(d["password"], "pw");
}

#[tokio::test]
async fn a_missing_secret_is_none() {
    let (cluster, mut handle) = mock();
    let server = tokio::spawn(async move {
        next(
            &mut handle,
            StatusCode::NOT_FOUND,
            status_reply(404, "NotFound"),
        )
        .await
    });
    let d = cluster.get_secret("tenant-acme", "nope").await.unwrap();
    server.await.unwrap();
    assert_eq!(d, None);
}

#[tokio::test]
async fn a_forbidden_get_is_classified_and_named() {
    let (cluster, mut handle) = mock();
    let server = tokio::spawn(async move {
        next(
            &mut handle,
            StatusCode::FORBIDDEN,
            status_reply(403, "Forbidden"),
        )
        .await
    });
    let e = cluster
        .get_secret("silo-system", "silo-root-ca")
        .await
        .unwrap_err();
    server.await.unwrap();
    assert_eq!(e.kind, FailureKind::Forbidden);
    assert!(
        e.to_string().contains("Secret/silo-system/silo-root-ca"),
        "{e}"
    );
}

#[tokio::test]
async fn create_secret_posts_to_the_collection_with_the_field_manager() {
    let (cluster, mut handle) = mock();
    let mut t = Tenant::new("acme", TenantSpec::default());
    t.metadata.uid = Some("uid-acme".into());
    let data = SecretData::from([("password".to_string(), "pw".to_string())]);
    let manifest = secret_manifest(&t, "tenant-acme", "silo-postgres-credentials", &data);
    let reply = manifest.clone();
    let server = tokio::spawn(async move { next(&mut handle, StatusCode::CREATED, reply).await });
    let key = ObjectKey::new("Secret", Some("tenant-acme"), "silo-postgres-credentials");
    cluster.create_secret(&key, &manifest).await.unwrap();
    let seen = server.await.unwrap();
    assert_eq!(seen.method, Method::POST);
    assert_eq!(seen.path, "/api/v1/namespaces/tenant-acme/secrets");
    assert_eq!(seen.param("fieldManager"), Some("silo"), "{:?}", seen.query);
    assert_eq!(seen.body["metadata"]["name"], "silo-postgres-credentials");
    assert_eq!(seen.body["data"]["password"], b64("pw"));
    assert_eq!(
        seen.body["metadata"]["ownerReferences"][0]["uid"],
        "uid-acme"
    );
    assert_eq!(seen.body["metadata"]["labels"]["silo.dev/tenant"], "acme");
}

#[tokio::test]
async fn creating_an_existing_secret_is_a_conflict() {
    let (cluster, mut handle) = mock();
    let t = Tenant::new("acme", TenantSpec::default());
    let manifest = secret_manifest(&t, "tenant-acme", "x", &SecretData::new());
    let server = tokio::spawn(async move {
        next(
            &mut handle,
            StatusCode::CONFLICT,
            status_reply(409, "AlreadyExists"),
        )
        .await
    });
    let key = ObjectKey::new("Secret", Some("tenant-acme"), "x");
    let e = cluster.create_secret(&key, &manifest).await.unwrap_err();
    server.await.unwrap();
    assert_eq!(e.kind, FailureKind::Conflict);
    assert!(
        e.to_string().starts_with("create Secret/tenant-acme/x"),
        "{e}"
    );
}

#[tokio::test]
async fn patch_secret_data_is_a_merge_patch_of_data_only() {
    let (cluster, mut handle) = mock();
    let server = tokio::spawn(async move {
        next(
            &mut handle,
            StatusCode::OK,
            secret_reply(&[("tls.crt", "new")]),
        )
        .await
    });
    let key = ObjectKey::new("Secret", Some("tenant-acme"), "silo-mosquitto-tls");
    let data = SecretData::from([("tls.crt".to_string(), "new".to_string())]);
    cluster.patch_secret_data(&key, &data).await.unwrap();
    let seen = server.await.unwrap();
    assert_eq!(seen.method, Method::PATCH);
    assert_eq!(
        seen.path,
        "/api/v1/namespaces/tenant-acme/secrets/silo-mosquitto-tls"
    );
    assert_eq!(
        seen.content_type.as_deref(),
        Some("application/merge-patch+json")
    );
    assert_eq!(seen.param("fieldManager"), Some("silo"), "{:?}", seen.query);
    assert_eq!(seen.body, json!({"data": {"tls.crt": b64("new")}}));
}
