//! The Secret-backed keyring store of the `local` key provider, checked at the HTTP level
//! against a tower-test mock API server: paths, methods, the resourceVersion it saves with,
//! 404 → empty, 409 → a conflict error that leaves the provider unchanged.

use std::sync::Arc;

use base64::Engine as _;
use http::{Method, Response, StatusCode};
use http_body_util::BodyExt;
use kube::client::Body;
use serde_json::{Value, json};
use time::OffsetDateTime;

use silo::keys::local::{KeyringDocument, KeyringStore, LocalProvider};
use silo::keys::{KeyProvider, TenantKeySpec};
use silo::operator::keyring_store::SecretKeyringStore;

mod kube_mock;
use kube_mock::{Handle, next, status};

const NS: &str = "silo-system";
const ITEM: &str = "/api/v1/namespaces/silo-system/secrets/silo-keyring";
const COLLECTION: &str = "/api/v1/namespaces/silo-system/secrets";

fn mock() -> (Arc<SecretKeyringStore>, Handle) {
    let (client, handle) = kube_mock::mock_client();
    (Arc::new(SecretKeyringStore::new(client, NS)), handle)
}

fn secret(doc: &KeyringDocument, rv: &str) -> Value {
    let data = base64::engine::general_purpose::STANDARD.encode(doc.to_json().unwrap());
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "silo-keyring", "namespace": NS, "resourceVersion": rv},
        "type": "Opaque",
        "data": {"keyring.json": data}
    })
}

fn decode_keyring(body: &Value) -> KeyringDocument {
    let b64 = body["data"]["keyring.json"]
        .as_str()
        .expect("data.keyring.json");
    let text = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    KeyringDocument::from_json(std::str::from_utf8(&text).unwrap()).unwrap()
}

fn doc() -> KeyringDocument {
    KeyringDocument::generate(OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap())
}

#[tokio::test]
async fn absent_secret_loads_as_empty() {
    let (store, mut handle) = mock();
    let task = tokio::spawn({
        let store = store.clone();
        async move { store.load().await }
    });
    let seen = next(
        &mut handle,
        StatusCode::NOT_FOUND,
        status(404, "NotFound", "secrets \"silo-keyring\" not found"),
    )
    .await;
    assert_eq!(seen.method, Method::GET);
    assert_eq!(seen.path, ITEM);
    assert!(task.await.unwrap().unwrap().is_none());
}

#[tokio::test]
async fn first_start_generates_the_master_key_and_creates_the_secret() {
    let (store, mut handle) = mock();
    let task = tokio::spawn({
        let store = store.clone();
        async move { LocalProvider::open(store, 30).await.map(|_| ()) }
    });
    let get = next(
        &mut handle,
        StatusCode::NOT_FOUND,
        status(404, "NotFound", "not found"),
    )
    .await;
    assert_eq!((get.method, get.path.as_str()), (Method::GET, ITEM));
    let (req, send) = handle.next_request().await.expect("the create");
    assert_eq!(req.method(), Method::POST);
    assert_eq!(req.uri().path(), COLLECTION);
    assert!(
        req.uri()
            .query()
            .unwrap_or_default()
            .split('&')
            .any(|p| p == "fieldManager=silo"),
        "{:?}",
        req.uri().query()
    );
    let body: Value =
        serde_json::from_slice(&req.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["metadata"]["name"], "silo-keyring");
    assert_eq!(body["metadata"]["namespace"], NS);
    assert!(body["metadata"].get("resourceVersion").is_none());
    let created = decode_keyring(&body);
    assert_eq!(created.master.current, 1);
    assert_eq!(created.master.versions.len(), 1);
    assert!(created.tenants.is_empty());
    send.send_response(
        Response::builder()
            .status(StatusCode::CREATED)
            .body(Body::from(
                serde_json::to_vec(&secret(&created, "1")).unwrap(),
            ))
            .unwrap(),
    );
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn an_existing_keyring_is_loaded_and_saved_with_its_resource_version() {
    let (store, mut handle) = mock();
    let stored = doc();
    let task = tokio::spawn({
        let store = store.clone();
        async move {
            let p = LocalProvider::open(store, 30).await?;
            p.ensure_key(&TenantKeySpec::new("acme")).await
        }
    });
    // open: read the keyring; ensure_key: re-read it, then save with its resourceVersion.
    let open = next(&mut handle, StatusCode::OK, secret(&stored, "41")).await;
    assert_eq!((open.method, open.path.as_str()), (Method::GET, ITEM));
    let reread = next(&mut handle, StatusCode::OK, secret(&stored, "42")).await;
    assert_eq!((reread.method, reread.path.as_str()), (Method::GET, ITEM));
    let (req, send) = handle.next_request().await.expect("the update");
    assert_eq!(req.method(), Method::PATCH);
    assert_eq!(req.uri().path(), ITEM);
    assert_eq!(
        req.headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        Some("application/merge-patch+json")
    );
    let body: Value =
        serde_json::from_slice(&req.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(
        body["metadata"]["resourceVersion"], "42",
        "saves with the resourceVersion it last read"
    );
    let saved = decode_keyring(&body);
    assert_eq!(saved.master, stored.master, "the master key is kept");
    assert!(saved.tenants.contains_key("acme"));
    send.send_response(
        Response::builder()
            .status(StatusCode::OK)
            .body(Body::from(
                serde_json::to_vec(&secret(&saved, "43")).unwrap(),
            ))
            .unwrap(),
    );
    let info = task.await.unwrap().unwrap();
    assert!(info.created);
    assert_eq!(info.version, 1);
}

#[tokio::test]
async fn a_conflicting_update_is_a_conflict_error_and_nothing_changes() {
    let (store, mut handle) = mock();
    let stored = doc();
    let task = tokio::spawn({
        let store = store.clone();
        async move {
            let p = LocalProvider::open(store, 30).await.unwrap();
            let e = p
                .ensure_key(&TenantKeySpec::new("acme"))
                .await
                .unwrap_err()
                .to_string();
            (e, p.document().await)
        }
    });
    next(&mut handle, StatusCode::OK, secret(&stored, "7")).await;
    next(&mut handle, StatusCode::OK, secret(&stored, "8")).await;
    let patch = next(
        &mut handle,
        StatusCode::CONFLICT,
        status(
            409,
            "Conflict",
            "Operation cannot be fulfilled on secrets \"silo-keyring\": the object has been modified",
        ),
    )
    .await;
    assert_eq!(patch.method, Method::PATCH);
    assert_eq!(
        patch.content_type.as_deref(),
        Some("application/merge-patch+json")
    );
    assert_eq!(patch.body["metadata"]["resourceVersion"], "8");
    let (e, mem) = task.await.unwrap();
    assert!(
        e.contains("Secret silo-system/silo-keyring changed since it was read")
            && e.contains("409 Conflict")
            && e.contains("re-read"),
        "{e}"
    );
    assert!(mem.tenants.is_empty(), "a failed save changes nothing");
}

#[tokio::test]
async fn a_create_race_is_a_conflict_error() {
    let (store, mut handle) = mock();
    let task = tokio::spawn({
        let store = store.clone();
        async move { store.save(&doc()).await.unwrap_err().to_string() }
    });
    // Never loaded: the store believes the Secret is absent and creates it.
    let post = next(
        &mut handle,
        StatusCode::CONFLICT,
        status(
            409,
            "AlreadyExists",
            "secrets \"silo-keyring\" already exists",
        ),
    )
    .await;
    assert_eq!(
        (post.method, post.path.as_str()),
        (Method::POST, COLLECTION)
    );
    let e = task.await.unwrap();
    assert!(
        e.contains("changed since it was read (409 AlreadyExists)"),
        "{e}"
    );
}

#[tokio::test]
async fn a_secret_without_the_keyring_is_refused() {
    let (store, mut handle) = mock();
    let task = tokio::spawn({
        let store = store.clone();
        async move { store.load().await.unwrap_err().to_string() }
    });
    next(
        &mut handle,
        StatusCode::OK,
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "silo-keyring", "namespace": NS, "resourceVersion": "3"},
            "data": {"other": "eA=="}
        }),
    )
    .await;
    let e = task.await.unwrap();
    assert!(
        e.contains("Secret silo-system/silo-keyring exists but has no keyring.json"),
        "{e}"
    );
}

#[tokio::test]
async fn a_corrupt_keyring_is_refused() {
    let (store, mut handle) = mock();
    let task = tokio::spawn({
        let store = store.clone();
        async move { store.load().await.unwrap_err().to_string() }
    });
    let junk = base64::engine::general_purpose::STANDARD.encode("{not json");
    next(
        &mut handle,
        StatusCode::OK,
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "silo-keyring", "namespace": NS, "resourceVersion": "3"},
            "data": {"keyring.json": junk}
        }),
    )
    .await;
    let e = task.await.unwrap();
    assert!(e.contains("keyring.json is not valid"), "{e}");
}

#[tokio::test]
async fn a_forbidden_read_names_the_secret() {
    let (store, mut handle) = mock();
    let task = tokio::spawn({
        let store = store.clone();
        async move { store.load().await.unwrap_err().to_string() }
    });
    next(
        &mut handle,
        StatusCode::FORBIDDEN,
        status(403, "Forbidden", "secrets \"silo-keyring\" is forbidden"),
    )
    .await;
    let e = task.await.unwrap();
    assert!(
        e.contains("read Secret silo-system/silo-keyring") && e.contains("(403)"),
        "{e}"
    );
}
