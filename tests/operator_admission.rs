//! The operator's admission wiring without a cluster: watcher events feed the webhook's tree
//! (`silo::operator::admission::Feeder` / `feed`), and the webhook served from that state over
//! real HTTPS on 127.0.0.1 fails closed until the initial lists are loaded.

mod webhook_support;

use std::sync::Arc;

use axum_server::Handle;
use futures::stream;
use kube::runtime::watcher::Event;
use serde_json::{Value, json};
use silo::operator::admission::{Feeder, WatchEvent, feed};
use silo::webhook::review::STARTING_MESSAGE;
use silo::webhook::{
    RotationPolicy, TlsSource, TreeView, WebhookState, ensure_serving_cert, rustls_config,
    serve_listener,
};
use webhook_support::{channel, client_trusting, profile, review, settings, tenant, tenant_json};

type Names = (Vec<String>, Vec<String>, Vec<String>);

fn names(view: &TreeView) -> Names {
    view.with_tree(|t| {
        let inv = t.inventory();
        let mut a: Vec<String> = inv
            .tenants
            .iter()
            .map(|x| x.metadata.name.clone().unwrap())
            .collect();
        let mut b: Vec<String> = inv
            .profiles
            .iter()
            .map(|x| x.metadata.name.clone().unwrap())
            .collect();
        let mut c: Vec<String> = inv
            .channels
            .iter()
            .map(|x| x.metadata.name.clone().unwrap())
            .collect();
        a.sort();
        b.sort();
        c.sort();
        (a, b, c)
    })
}

fn v(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn tenant_list() -> Vec<WatchEvent> {
    vec![
        WatchEvent::Tenant(Event::Init),
        WatchEvent::Tenant(Event::InitApply(tenant(
            "acme",
            json!({"limits": {"subtenants": 5}}),
        ))),
        WatchEvent::Tenant(Event::InitApply(tenant("dist", json!({"parent": "acme"})))),
        WatchEvent::Tenant(Event::InitDone),
    ]
}

fn profile_list() -> Vec<WatchEvent> {
    vec![
        WatchEvent::Profile(Event::Init),
        WatchEvent::Profile(Event::InitApply(profile(
            "std",
            json!({"owner": "acme", "limits": {"cpu": "1"}}),
        ))),
        WatchEvent::Profile(Event::InitDone),
    ]
}

fn channel_list() -> Vec<WatchEvent> {
    vec![
        WatchEvent::Channel(Event::Init),
        WatchEvent::Channel(Event::InitApply(channel("tel", json!({"owner": "acme"})))),
        WatchEvent::Channel(Event::InitDone),
    ]
}

#[test]
fn the_tree_is_loaded_only_when_all_three_initial_lists_are_complete() {
    let view = TreeView::new(settings());
    let mut f = Feeder::new();
    for ev in tenant_list().into_iter().chain(profile_list()) {
        assert!(!f.apply(&view, ev), "loaded before the channel list");
    }
    assert!(!f.is_loaded());
    assert_eq!(names(&view), (vec![], vec![], vec![]));
    let mut done = Vec::new();
    for ev in channel_list() {
        done.push(f.apply(&view, ev));
    }
    assert_eq!(done, [false, false, true]);
    assert!(f.is_loaded());
    assert_eq!(
        names(&view),
        (v(&["acme", "dist"]), v(&["std"]), v(&["tel"]))
    );
    assert!(view.with_tree(|t| t.problems().is_empty()));
}

#[test]
fn changes_before_the_first_load_are_kept_and_later_events_update_the_view() {
    let view = TreeView::new(settings());
    let mut f = Feeder::new();
    for ev in tenant_list() {
        f.apply(&view, ev);
    }
    // Between the tenant list and the others: one tenant appears, one goes.
    f.apply(
        &view,
        WatchEvent::Tenant(Event::Apply(tenant("dealer", json!({"parent": "dist"})))),
    );
    f.apply(
        &view,
        WatchEvent::Tenant(Event::Delete(tenant("dist", json!({"parent": "acme"})))),
    );
    for ev in profile_list().into_iter().chain(channel_list()) {
        f.apply(&view, ev);
    }
    assert_eq!(
        names(&view),
        (v(&["acme", "dealer"]), v(&["std"]), v(&["tel"]))
    );

    // After the load: single events are upserts and removals.
    assert!(!f.apply(
        &view,
        WatchEvent::Tenant(Event::Apply(tenant("dist", json!({"parent": "acme"}))))
    ));
    f.apply(
        &view,
        WatchEvent::Channel(Event::Apply(channel("ota", json!({"owner": "acme"})))),
    );
    f.apply(
        &view,
        WatchEvent::Profile(Event::Delete(profile("std", json!({"owner": "acme"})))),
    );
    assert_eq!(
        names(&view),
        (v(&["acme", "dealer", "dist"]), v(&[]), v(&["ota", "tel"]))
    );
}

#[test]
fn a_relist_after_the_load_removes_what_is_gone_and_keeps_the_rest() {
    let view = TreeView::new(settings());
    let mut f = Feeder::new();
    for ev in tenant_list()
        .into_iter()
        .chain(profile_list())
        .chain(channel_list())
    {
        f.apply(&view, ev);
    }
    // The tenant watch restarts: "dist" was deleted meanwhile, "shop" created.
    for ev in [
        WatchEvent::Tenant(Event::Init),
        WatchEvent::Tenant(Event::InitApply(tenant(
            "acme",
            json!({"limits": {"subtenants": 5}}),
        ))),
        WatchEvent::Tenant(Event::InitApply(tenant("shop", json!({"parent": "acme"})))),
    ] {
        f.apply(&view, ev);
    }
    // Until the re-list completes, the view keeps the last known state.
    assert_eq!(names(&view).0, v(&["acme", "dist"]));
    assert!(!f.apply(&view, WatchEvent::Tenant(Event::InitDone)));
    assert_eq!(
        names(&view),
        (v(&["acme", "shop"]), v(&["std"]), v(&["tel"]))
    );
}

struct Served {
    url: String,
    client: reqwest::Client,
    state: Arc<WebhookState>,
    handle: Handle<std::net::SocketAddr>,
}

/// Serves a webhook whose tree is still loading, as the operator does at start.
async fn serve_starting() -> Served {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let (bundle, _) = ensure_serving_cert(
        None,
        &["127.0.0.1".to_string()],
        time::OffsetDateTime::now_utc(),
        &RotationPolicy::default(),
    )
    .unwrap();
    let config = rustls_config(&TlsSource::Pem {
        cert: bundle.cert_pem.clone().into_bytes(),
        key: bundle.key_pem.clone().into_bytes(),
    })
    .await
    .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let state = Arc::new(WebhookState::starting(TreeView::new(settings())));
    let handle = Handle::new();
    tokio::spawn(serve_listener(
        listener,
        config,
        state.clone(),
        handle.clone(),
    ));
    handle.listening().await;
    Served {
        url: format!("https://127.0.0.1:{port}/validate"),
        client: client_trusting(&bundle.ca_bundle()),
        state,
        handle,
    }
}

impl Served {
    async fn send(&self, body: &Value) -> Value {
        let r = self.client.post(&self.url).json(body).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["response"]["uid"], body["request"]["uid"]);
        v["response"].clone()
    }
}

fn under_ghost() -> Value {
    review(
        "CREATE",
        "Tenant",
        "x",
        Some(tenant_json("x", json!({"parent": "ghost"}))),
        None,
    )
}

fn under_acme() -> Value {
    review(
        "CREATE",
        "Tenant",
        "shop",
        Some(tenant_json("shop", json!({"parent": "acme"}))),
        None,
    )
}

#[tokio::test]
async fn the_served_webhook_denies_while_starting_then_decides_on_the_fed_tree() {
    let s = serve_starting().await;
    assert!(!s.state.is_ready());
    for body in [under_ghost(), under_acme()] {
        let r = s.send(&body).await;
        assert_eq!(r["allowed"], false, "{r}");
        assert_eq!(r["status"]["message"], STARTING_MESSAGE, "{r}");
        assert_eq!(r["status"]["code"], 503, "{r}");
    }

    // Incomplete initial lists (no channel list yet): still starting.
    feed(
        stream::iter(tenant_list().into_iter().chain(profile_list()).map(Ok)),
        s.state.clone(),
    )
    .await;
    assert!(!s.state.is_ready());
    let r = s.send(&under_ghost()).await;
    assert_eq!(r["status"]["message"], STARTING_MESSAGE, "{r}");

    // Complete lists: the tree decides.
    feed(
        stream::iter(
            tenant_list()
                .into_iter()
                .chain(profile_list())
                .chain(channel_list())
                .map(Ok),
        ),
        s.state.clone(),
    )
    .await;
    assert!(s.state.is_ready());
    let r = s.send(&under_ghost()).await;
    assert_eq!(r["allowed"], false, "{r}");
    let msg = r["status"]["message"].as_str().unwrap();
    assert!(
        msg.contains("Tenant/x: spec.parent: parent tenant \"ghost\" does not exist"),
        "{msg}"
    );
    assert_eq!(r["status"]["reason"], "UnknownParent", "{r}");
    let r = s.send(&under_acme()).await;
    assert_eq!(r["allowed"], true, "{r}");
    s.handle.shutdown();
}

#[tokio::test]
async fn while_starting_status_writes_and_malformed_bodies_are_answered_cleanly() {
    let s = serve_starting().await;
    let mut status = under_acme();
    status["request"]["subResource"] = json!("status");
    status["request"]["operation"] = json!("UPDATE");
    status["request"]["oldObject"] = status["request"]["object"].clone();
    let r = s.send(&status).await;
    assert_eq!(r["allowed"], true, "{r}");

    let r = s
        .client
        .post(&s.url)
        .body("{not json")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .starts_with("request body is not a valid AdmissionReview"),
        "{v}"
    );
    s.handle.shutdown();
}

#[test]
fn a_bad_webhook_url_is_refused_with_one_line_before_contacting_the_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_silo"))
        .args([
            "operator",
            "--metrics-addr",
            "127.0.0.1:0",
            "--webhook-addr",
            "127.0.0.1:0",
            "--webhook-url",
            "http://laptop.example:9443",
        ])
        .env("KUBECONFIG", dir.path().join("absent"))
        .env_remove("SILO_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        err.trim_end(),
        "silo operator: --webhook-url: invalid webhook URL \"http://laptop.example:9443\": must start with https://"
    );
}
