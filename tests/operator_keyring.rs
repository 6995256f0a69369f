//! The Secret-backed, sharded keyring store of the `local` key provider, checked at the HTTP
//! level against a tower-test mock API server: which Secrets are read and written, with which
//! method and resourceVersion, 404 → empty, 409 → a conflict error naming the Secret.

use std::sync::Arc;

use base64::Engine as _;
use http::{Method, StatusCode};
use serde_json::{Value, json};
use time::OffsetDateTime;

use silo::keys::keyring_store::SecretKeyringStore;
use silo::keys::local::{
    KeyringDocument, KeyringStore, LocalProvider, MemoryKeyringStore, TenantKeyRecord,
};
use silo::keys::{KeyProvider, TenantKeySpec};

mod kube_mock;
use kube_mock::{Handle, Seen, next, status};

const NS: &str = "silo-system";
const COLLECTION: &str = "/api/v1/namespaces/silo-system/secrets";

fn item(name: &str) -> String {
    format!("{COLLECTION}/{name}")
}

fn mock() -> (Arc<SecretKeyringStore>, Handle) {
    let (client, handle) = kube_mock::mock_client();
    (Arc::new(SecretKeyringStore::new(client, NS)), handle)
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn unb64(v: &Value) -> String {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(v.as_str().expect("a base64 string"))
        .unwrap();
    String::from_utf8(raw).unwrap()
}

fn secret(name: &str, key: &str, text: &str, rv: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": NS, "resourceVersion": rv,
                     "labels": {"app.kubernetes.io/managed-by": "silo", "silo.dev/keyring": "true"}},
        "type": "Opaque",
        "data": {key: b64(text)}
    })
}

/// The master Secret: format and master keyring only.
fn master_secret(doc: &KeyringDocument, rv: &str) -> Value {
    let master = KeyringDocument {
        tenants: Default::default(),
        retired: Default::default(),
        ..doc.clone()
    };
    secret(
        "silo-keyring",
        "keyring.json",
        &master.to_json().unwrap(),
        rv,
    )
}

fn record_secret(name: &str, rec: &TenantKeyRecord, rv: &str) -> Value {
    secret(
        name,
        "record.json",
        &serde_json::to_string(rec).unwrap(),
        rv,
    )
}

fn list(items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": "SecretList", "metadata": {"resourceVersion": "100"}, "items": items})
}

/// The reply the API server gives to a create or patch: what was sent, with `rv`.
fn echo(seen: &Seen, name: &str, rv: &str) -> Value {
    let mut v = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": NS, "resourceVersion": rv}});
    if let Some(d) = seen.body.get("data") {
        v["data"] = d.clone();
    }
    v
}

/// Answers a create or patch with an echo of it at `rv`.
async fn answer_write(handle: &mut Handle, name: &str, rv: &str) -> Seen {
    let (req, send) = handle.next_request().await.expect("a write");
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query: Vec<(String, String)> = req
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_string(), v.to_string())
        })
        .collect();
    let content_type = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_string());
    let bytes = http_body_util::BodyExt::collect(req.into_body())
        .await
        .unwrap()
        .to_bytes();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let seen = Seen {
        method,
        path,
        query,
        content_type,
        body,
    };
    let status = if seen.method == Method::POST {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    send.send_response(
        http::Response::builder()
            .status(status)
            .body(kube::client::Body::from(
                serde_json::to_vec(&echo(&seen, name, rv)).unwrap(),
            ))
            .unwrap(),
    );
    seen
}

fn assert_labels(body: &Value) {
    assert_eq!(
        body["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "silo"
    );
    assert_eq!(body["metadata"]["labels"]["silo.dev/keyring"], "true");
}

fn assert_listed_by_label(seen: &Seen) {
    assert_eq!(
        (seen.method.clone(), seen.path.as_str()),
        (Method::GET, COLLECTION)
    );
    assert_eq!(seen.param("labelSelector"), Some("silo.dev/keyring=true"));
}

/// A consistent keyring made by a provider: tenant `acme` active, `old` shredded.
async fn sample() -> KeyringDocument {
    let store = MemoryKeyringStore::default();
    let p = LocalProvider::open(Arc::new(store.clone()), 30)
        .await
        .unwrap();
    p.ensure_key(&TenantKeySpec::new("acme")).await.unwrap();
    p.ensure_key(&TenantKeySpec::new("old")).await.unwrap();
    p.shred("old").await.unwrap();
    store.snapshot().unwrap().unwrap()
}

#[tokio::test]
async fn absent_keyring_loads_as_empty() {
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
    assert_eq!(
        (seen.method, seen.path),
        (Method::GET, item("silo-keyring"))
    );
    assert!(task.await.unwrap().unwrap().is_none());
}

#[tokio::test]
async fn first_start_generates_the_master_key_and_creates_only_the_master_secret() {
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
    assert_eq!((get.method, get.path), (Method::GET, item("silo-keyring")));
    let post = answer_write(&mut handle, "silo-keyring", "1").await;
    assert_eq!(
        (post.method.clone(), post.path.as_str()),
        (Method::POST, COLLECTION)
    );
    assert_eq!(post.param("fieldManager"), Some("silo"));
    assert_eq!(post.body["metadata"]["name"], "silo-keyring");
    assert_eq!(post.body["metadata"]["namespace"], NS);
    assert!(post.body["metadata"].get("resourceVersion").is_none());
    assert_labels(&post.body);
    let text = unb64(&post.body["data"]["keyring.json"]);
    let created = KeyringDocument::from_json(&text).unwrap();
    assert_eq!(created.master.current, 1);
    assert_eq!(created.master.versions.len(), 1);
    assert!(
        !text.contains("tenants") && !text.contains("retired"),
        "the master Secret holds no tenant records: {text}"
    );
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn load_assembles_the_keyring_from_one_get_and_one_list() {
    let (store, mut handle) = mock();
    let stored = sample().await;
    let old = stored.retired.values().next().unwrap().clone();
    let task = tokio::spawn({
        let store = store.clone();
        async move { store.load().await }
    });
    next(&mut handle, StatusCode::OK, master_secret(&stored, "41")).await;
    let l = next(
        &mut handle,
        StatusCode::OK,
        list(vec![
            master_secret(&stored, "41"),
            record_secret("silo-key-acme", &stored.tenants["acme"], "50"),
            record_secret(&format!("silo-key-retired.{}", old.key_id), &old, "51"),
        ]),
    )
    .await;
    assert_listed_by_label(&l);
    let doc = task.await.unwrap().unwrap().unwrap();
    assert_eq!(doc, stored);
}

#[tokio::test]
async fn creating_rotating_and_shredding_write_only_that_tenants_secrets() {
    let (store, mut handle) = mock();
    let stored = sample().await;
    let task = tokio::spawn({
        let store = store.clone();
        async move {
            let p = LocalProvider::open(store, 30).await?;
            let created = p.ensure_key(&TenantKeySpec::new("newco")).await?;
            let rotated = p.rotate("acme").await?;
            let shred = p.shred("acme").await?;
            Ok::<_, silo::keys::KeyError>((created, rotated, shred))
        }
    });
    next(&mut handle, StatusCode::OK, master_secret(&stored, "41")).await;
    next(
        &mut handle,
        StatusCode::OK,
        list(vec![record_secret(
            "silo-key-acme",
            &stored.tenants["acme"],
            "50",
        )]),
    )
    .await;
    // A new key: exactly one POST of its own Secret.
    let post = answer_write(&mut handle, "silo-key-newco", "60").await;
    assert_eq!(
        (post.method.clone(), post.path.as_str()),
        (Method::POST, COLLECTION)
    );
    assert_eq!(post.body["metadata"]["name"], "silo-key-newco");
    assert_eq!(post.param("fieldManager"), Some("silo"));
    assert_labels(&post.body);
    let rec: TenantKeyRecord =
        serde_json::from_str(&unb64(&post.body["data"]["record.json"])).unwrap();
    assert_eq!((rec.tenant.as_str(), rec.current), ("newco", 1));
    // A rotation: one merge patch of that tenant's Secret, guarded by its resourceVersion.
    let patch = answer_write(&mut handle, "silo-key-acme", "61").await;
    assert_eq!(
        (patch.method.clone(), patch.path.clone()),
        (Method::PATCH, item("silo-key-acme"))
    );
    assert_eq!(
        patch.content_type.as_deref(),
        Some("application/merge-patch+json")
    );
    assert_eq!(patch.body["metadata"]["resourceVersion"], "50");
    let rec: TenantKeyRecord =
        serde_json::from_str(&unb64(&patch.body["data"]["record.json"])).unwrap();
    assert_eq!(rec.current, 2);
    // A shred: the retired record is created, then the active one deleted (guarded).
    let key_id = stored.tenants["acme"].key_id.clone();
    let retired_name = format!("silo-key-retired.{key_id}");
    let post = answer_write(&mut handle, &retired_name, "62").await;
    assert_eq!(
        (post.method.clone(), post.path.as_str()),
        (Method::POST, COLLECTION)
    );
    assert_eq!(post.body["metadata"]["name"], retired_name.as_str());
    assert_labels(&post.body);
    let rec: TenantKeyRecord =
        serde_json::from_str(&unb64(&post.body["data"]["record.json"])).unwrap();
    assert_eq!(rec.state.to_string(), "PendingDeletion");
    let del = next(
        &mut handle,
        StatusCode::OK,
        record_secret("silo-key-acme", &stored.tenants["acme"], "61"),
    )
    .await;
    assert_eq!(
        (del.method, del.path.clone()),
        (Method::DELETE, item("silo-key-acme"))
    );
    assert_eq!(del.body["preconditions"]["resourceVersion"], "61");
    // Nothing else was sent: the task ends without further answers.
    let (created, rotated, shred) = task.await.unwrap().unwrap();
    assert!(created.created);
    assert_eq!(rotated.version, 2);
    assert_eq!(shred.key_id, key_id);
}

#[tokio::test]
async fn a_lost_create_race_rereads_and_adopts_the_winners_key() {
    let (store, mut handle) = mock();
    let stored = sample().await;
    let task = tokio::spawn({
        let store = store.clone();
        async move {
            let p = LocalProvider::open(store, 30).await?;
            p.ensure_key(&TenantKeySpec::new("acme")).await
        }
    });
    // Loaded before the other replica created acme's key.
    next(&mut handle, StatusCode::OK, master_secret(&stored, "41")).await;
    next(&mut handle, StatusCode::OK, list(vec![])).await;
    let post = next(
        &mut handle,
        StatusCode::CONFLICT,
        status(
            409,
            "AlreadyExists",
            "secrets \"silo-key-acme\" already exists",
        ),
    )
    .await;
    assert_eq!(post.method, Method::POST);
    // Re-read: the winner's record is there, and nothing more is written.
    next(&mut handle, StatusCode::OK, master_secret(&stored, "41")).await;
    next(
        &mut handle,
        StatusCode::OK,
        list(vec![record_secret(
            "silo-key-acme",
            &stored.tenants["acme"],
            "55",
        )]),
    )
    .await;
    let info = task.await.unwrap().unwrap();
    assert!(!info.created);
    assert_eq!(info.key_id, stored.tenants["acme"].key_id);
}

#[tokio::test]
async fn a_conflicting_update_is_an_error_naming_the_secret_and_nothing_changes() {
    let (store, mut handle) = mock();
    let stored = sample().await;
    let task = tokio::spawn({
        let store = store.clone();
        async move {
            let p = LocalProvider::open(store, 30).await.unwrap();
            let e = p.rotate("acme").await.unwrap_err().to_string();
            (e, p.document().await)
        }
    });
    let conflict = || {
        status(
            409,
            "Conflict",
            "Operation cannot be fulfilled on secrets \"silo-key-acme\": the object has been modified",
        )
    };
    let acme = |rv: &str| {
        list(vec![record_secret(
            "silo-key-acme",
            &stored.tenants["acme"],
            rv,
        )])
    };
    next(&mut handle, StatusCode::OK, master_secret(&stored, "41")).await;
    next(&mut handle, StatusCode::OK, acme("7")).await;
    let patch = next(&mut handle, StatusCode::CONFLICT, conflict()).await;
    assert_eq!(
        (patch.method, patch.path),
        (Method::PATCH, item("silo-key-acme"))
    );
    assert_eq!(patch.body["metadata"]["resourceVersion"], "7");
    // One re-read and one retry, which loses again.
    next(&mut handle, StatusCode::OK, master_secret(&stored, "41")).await;
    next(&mut handle, StatusCode::OK, acme("8")).await;
    let patch = next(&mut handle, StatusCode::CONFLICT, conflict()).await;
    assert_eq!(patch.body["metadata"]["resourceVersion"], "8");
    let (e, mem) = task.await.unwrap();
    assert!(
        e.contains("Secret silo-system/silo-key-acme changed since it was read (409 Conflict)")
            && e.contains("re-read"),
        "{e}"
    );
    assert_eq!(
        mem.tenants["acme"].current, 1,
        "a failed save changes nothing"
    );
}

#[tokio::test]
async fn a_master_create_race_is_a_conflict_error() {
    let (store, mut handle) = mock();
    let task = tokio::spawn({
        let store = store.clone();
        async move {
            LocalProvider::open(store, 30)
                .await
                .unwrap_err()
                .to_string()
        }
    });
    next(
        &mut handle,
        StatusCode::NOT_FOUND,
        status(404, "NotFound", "not found"),
    )
    .await;
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
    // `key_service` in main.rs retries on "(409": the loser re-reads the winner's keyring.
    assert!(
        e.contains("Secret silo-system/silo-keyring changed since it was read (409 AlreadyExists)"),
        "{e}"
    );
}

#[tokio::test]
async fn a_keyring_of_the_single_secret_layout_is_moved_into_one_secret_per_record() {
    let (store, mut handle) = mock();
    let stored = sample().await;
    let old = stored.retired.values().next().unwrap().clone();
    let task = tokio::spawn({
        let store = store.clone();
        async move { store.load().await }
    });
    next(
        &mut handle,
        StatusCode::OK,
        secret(
            "silo-keyring",
            "keyring.json",
            &stored.to_json().unwrap(),
            "41",
        ),
    )
    .await;
    next(&mut handle, StatusCode::OK, list(vec![])).await;
    let retired_name = format!("silo-key-retired.{}", old.key_id);
    let post = answer_write(&mut handle, &retired_name, "42").await;
    assert_eq!(post.body["metadata"]["name"], retired_name.as_str());
    let post = answer_write(&mut handle, "silo-key-acme", "43").await;
    assert_eq!(post.body["metadata"]["name"], "silo-key-acme");
    // Only after every record has its Secret is the master rewritten without them.
    let patch = answer_write(&mut handle, "silo-keyring", "44").await;
    assert_eq!(
        (patch.method.clone(), patch.path.clone()),
        (Method::PATCH, item("silo-keyring"))
    );
    assert_eq!(patch.body["metadata"]["resourceVersion"], "41");
    let text = unb64(&patch.body["data"]["keyring.json"]);
    assert!(
        !text.contains("tenants") && !text.contains("retired"),
        "{text}"
    );
    assert_eq!(task.await.unwrap().unwrap().unwrap(), stored);
}

#[tokio::test]
async fn a_record_in_the_wrong_secret_is_refused() {
    let (store, mut handle) = mock();
    let stored = sample().await;
    let task = tokio::spawn({
        let store = store.clone();
        async move { store.load().await.unwrap_err().to_string() }
    });
    next(&mut handle, StatusCode::OK, master_secret(&stored, "41")).await;
    // acme's record copied into another tenant's Secret.
    next(
        &mut handle,
        StatusCode::OK,
        list(vec![record_secret(
            "silo-key-evil",
            &stored.tenants["acme"],
            "9",
        )]),
    )
    .await;
    let e = task.await.unwrap();
    assert!(
        e.contains("Secret silo-system/silo-key-evil holds the Enabled record")
            && e.contains("of tenant \"acme\", which belongs in silo-key-acme"),
        "{e}"
    );
}

#[tokio::test]
async fn a_record_secret_without_its_record_is_refused() {
    let (store, mut handle) = mock();
    let stored = sample().await;
    let task = tokio::spawn({
        let store = store.clone();
        async move { store.load().await.unwrap_err().to_string() }
    });
    next(&mut handle, StatusCode::OK, master_secret(&stored, "41")).await;
    next(
        &mut handle,
        StatusCode::OK,
        list(vec![secret("silo-key-acme", "other", "x", "9")]),
    )
    .await;
    let e = task.await.unwrap();
    assert!(
        e.contains("Secret silo-system/silo-key-acme exists but has no record.json"),
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
    next(
        &mut handle,
        StatusCode::OK,
        secret("silo-keyring", "keyring.json", "{not json", "3"),
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

#[tokio::test]
async fn a_forbidden_list_is_named() {
    let (store, mut handle) = mock();
    let stored = sample().await;
    let task = tokio::spawn({
        let store = store.clone();
        async move { store.load().await.unwrap_err().to_string() }
    });
    next(&mut handle, StatusCode::OK, master_secret(&stored, "41")).await;
    next(
        &mut handle,
        StatusCode::FORBIDDEN,
        status(403, "Forbidden", "secrets is forbidden"),
    )
    .await;
    let e = task.await.unwrap();
    assert!(
        e.contains("list Secret silo-system/silo-key-*") && e.contains("(403)"),
        "{e}"
    );
}

#[test]
fn one_record_is_far_below_the_limit_of_a_secret() {
    // ~500 bytes per record: the per-Secret guard only stops a corrupt record.
    let rec = TenantKeyRecord {
        tenant: "t".repeat(63),
        parent: Some("p".repeat(63)),
        key_id: "0123456789abcdef".into(),
        rotation_days: 90,
        current: 1,
        min_decryption_version: 1,
        created_at: OffsetDateTime::now_utc().unix_timestamp(),
        rotated_at: None,
        state: silo::keys::KeyState::Enabled,
        shred_requested_at: None,
        shred_after: None,
        versions: Default::default(),
    };
    let n = serde_json::to_string_pretty(&rec).unwrap().len();
    assert!(n < 1_000, "{n}");
    assert!(silo::keys::keyring_store::check_size("x", n).is_ok());
}
