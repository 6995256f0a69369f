//! Shared by the webhook integration tests: a fixture tree, a webhook served over real
//! HTTPS on 127.0.0.1 (ephemeral port) and AdmissionReview builders.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use axum_server::Handle;
use axum_server::tls_rustls::RustlsConfig;
use serde_json::{Value, json};
use silo::hierarchy::{EngineSettings, Inventory};
use silo::types::{Channel, LimitProfile, Tenant};
use silo::webhook::{
    CertBundle, RotationPolicy, TlsSource, TreeView, WebhookState, ensure_serving_cert,
    rustls_config, serve_listener,
};

pub fn tenant_json(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "silo.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": name}, "spec": spec})
}

pub fn profile_json(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "silo.dev/v1alpha1", "kind": "LimitProfile", "metadata": {"name": name}, "spec": spec})
}

pub fn channel_json(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "silo.dev/v1alpha1", "kind": "Channel", "metadata": {"name": name}, "spec": spec})
}

pub fn tenant(name: &str, spec: Value) -> Tenant {
    serde_json::from_value(tenant_json(name, spec)).unwrap()
}

pub fn profile(name: &str, spec: Value) -> LimitProfile {
    serde_json::from_value(profile_json(name, spec)).unwrap()
}

pub fn channel(name: &str, spec: Value) -> Channel {
    serde_json::from_value(channel_json(name, spec)).unwrap()
}

/// acme (subtenants 20, cpu 8: 4 of it not given to children)
/// ├── dist (subtenants 3, cpu 4, devices 100)
/// │   └── dealer (cpu 3, profile acme-std, channels [tel])
/// │       └── cust (cpu 1)
/// ├── frozen (suspended, cpu 0) └── frozen-a (cpu 0)
/// ├── blocked (subtenants 0, cpu 0)
/// ├── full (subtenants 1, cpu 0) └── full-a (cpu 0)
/// └── capped (subtenants 1, cpu 0) └── capped-a (cpu 0)
/// o1 → parent o2 (missing): detached
/// profiles: acme-std (owner acme), dist-small (owner dist), spare (owner acme, unused)
/// channels: tel (owner acme, visible to dist), acme-all (owner acme), spare-ch (owner acme)
/// maxDepth 4.
pub fn fixture() -> Inventory {
    Inventory {
        tenants: vec![
            tenant("acme", json!({"limits": {"subtenants": 20, "cpu": "8"}})),
            tenant(
                "dist",
                json!({"parent": "acme", "limits": {"subtenants": 3, "cpu": "4", "devices": 100}}),
            ),
            tenant(
                "dealer",
                json!({"parent": "dist", "limits": {"cpu": "3"}, "limitProfile": "acme-std", "channels": ["tel"]}),
            ),
            tenant("cust", json!({"parent": "dealer", "limits": {"cpu": "1"}})),
            tenant(
                "frozen",
                json!({"parent": "acme", "suspended": true, "limits": {"cpu": "0"}}),
            ),
            tenant(
                "frozen-a",
                json!({"parent": "frozen", "limits": {"cpu": "0"}}),
            ),
            tenant(
                "blocked",
                json!({"parent": "acme", "limits": {"subtenants": 0, "cpu": "0"}}),
            ),
            tenant(
                "full",
                json!({"parent": "acme", "limits": {"subtenants": 1, "cpu": "0"}}),
            ),
            tenant("full-a", json!({"parent": "full", "limits": {"cpu": "0"}})),
            tenant(
                "capped",
                json!({"parent": "acme", "limits": {"subtenants": 1, "cpu": "0"}}),
            ),
            tenant(
                "capped-a",
                json!({"parent": "capped", "limits": {"cpu": "0"}}),
            ),
            tenant("o1", json!({"parent": "o2"})),
        ],
        profiles: vec![
            profile(
                "acme-std",
                json!({"owner": "acme", "limits": {"devices": 50}}),
            ),
            profile(
                "dist-small",
                json!({"owner": "dist", "limits": {"devices": 10}}),
            ),
            profile("spare", json!({"owner": "acme", "limits": {"devices": 5}})),
        ],
        channels: vec![
            channel(
                "tel",
                json!({"owner": "acme", "visibility": {"subtrees": ["dist"]}}),
            ),
            channel("acme-all", json!({"owner": "acme"})),
            channel("spare-ch", json!({"owner": "acme"})),
        ],
    }
}

pub fn settings() -> EngineSettings {
    EngineSettings {
        max_depth: 4,
        ..EngineSettings::default()
    }
}

pub fn fixture_view() -> TreeView {
    let v = TreeView::new(settings());
    v.replace_all(fixture());
    v
}

pub fn plural(kind: &str) -> &'static str {
    match kind {
        "Tenant" => "tenants",
        "LimitProfile" => "limitprofiles",
        "Channel" => "channels",
        _ => "others",
    }
}

/// An AdmissionReview v1 request as the API server sends it.
pub fn review(
    op: &str,
    kind: &str,
    name: &str,
    object: Option<Value>,
    old: Option<Value>,
) -> Value {
    review_as(
        op,
        kind,
        name,
        object,
        old,
        "kubernetes-admin",
        &["system:masters"],
    )
}

pub fn review_as(
    op: &str,
    kind: &str,
    name: &str,
    object: Option<Value>,
    old: Option<Value>,
    user: &str,
    groups: &[&str],
) -> Value {
    let group = if ["Tenant", "LimitProfile", "Channel"].contains(&kind) {
        "silo.dev"
    } else {
        ""
    };
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": format!("uid-{op}-{kind}-{name}"),
            "kind": {"group": group, "version": "v1alpha1", "kind": kind},
            "resource": {"group": group, "version": "v1alpha1", "resource": plural(kind)},
            "name": name,
            "operation": op,
            "userInfo": {"username": user, "groups": groups},
            "object": object,
            "oldObject": old,
            "dryRun": false
        }
    })
}

pub struct Served {
    pub url: String,
    pub client: reqwest::Client,
    pub handle: Handle<SocketAddr>,
    pub config: RustlsConfig,
    pub bundle: CertBundle,
    pub state: Arc<WebhookState>,
}

pub fn client_trusting(ca_pem: &str) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false);
    for cert in reqwest::Certificate::from_pem_bundle(ca_pem.as_bytes()).unwrap() {
        b = b.add_root_certificate(cert);
    }
    b.build().unwrap()
}

/// Serves `view` over HTTPS on 127.0.0.1 with a freshly generated CA and certificate.
pub async fn serve(view: TreeView) -> Served {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let sans = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let (bundle, _) = ensure_serving_cert(
        None,
        &sans,
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
    let state = Arc::new(WebhookState::new(view));
    let handle = Handle::new();
    tokio::spawn(serve_listener(
        listener,
        config.clone(),
        state.clone(),
        handle.clone(),
    ));
    handle.listening().await;
    Served {
        url: format!("https://127.0.0.1:{port}/validate"),
        client: client_trusting(&bundle.ca_bundle()),
        handle,
        config,
        bundle,
        state,
    }
}

impl Served {
    /// Posts a review; returns its `response` object.
    pub async fn send(&self, body: &Value) -> Value {
        let r = self.client.post(&self.url).json(body).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(v["kind"], "AdmissionReview");
        assert_eq!(v["response"]["uid"], body["request"]["uid"]);
        v["response"].clone()
    }

    pub async fn allowed(&self, body: &Value) {
        let r = self.send(body).await;
        assert_eq!(r["allowed"], true, "expected allowed, got {r}");
    }

    /// Asserts a denial with this reason and every fragment in the message; returns the message.
    pub async fn denied(
        &self,
        body: &Value,
        reason: &str,
        code: u16,
        fragments: &[&str],
    ) -> String {
        let r = self.send(body).await;
        assert_eq!(r["allowed"], false, "expected denied, got {r}");
        assert_eq!(r["status"]["reason"], reason, "{r}");
        assert_eq!(r["status"]["code"], code, "{r}");
        let msg = r["status"]["message"].as_str().unwrap().to_string();
        for f in fragments {
            assert!(msg.contains(f), "message {msg:?} lacks {f:?}");
        }
        msg
    }
}
