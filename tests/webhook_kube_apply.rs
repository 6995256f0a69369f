//! The Kubernetes calls, checked at the HTTP level against a mock API server.

use http::{Request, Response};
use http_body_util::BodyExt;
use kube::client::Body;
use silo::webhook::tls::{WebhookEndpoint, desired_secret, ensure_serving_cert};
use silo::webhook::{CertSettings, RotationPolicy, reconcile_certificates};

fn settings() -> CertSettings {
    CertSettings {
        namespace: "silo-system".into(),
        secret_name: "silo-webhook-tls".into(),
        endpoint: WebhookEndpoint::Service {
            namespace: "silo-system".into(),
            name: "silo-webhook".into(),
            port: 443,
        },
        policy: RotationPolicy::default(),
        timeout_seconds: 5,
    }
}

fn query(req: &Request<Body>) -> Vec<(String, String)> {
    req.uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn assert_apply(req: &Request<Body>, path: &str) {
    assert_eq!(req.method(), http::Method::PATCH);
    assert_eq!(req.uri().path(), path);
    let q = query(req);
    // The operator's one field manager, as the API server sees it on the wire (the install
    // docs and the envtest audit checks name it "silo").
    assert!(q.contains(&("fieldManager".into(), "silo".into())), "{q:?}");
    assert!(q.contains(&("force".into(), "true".into())), "{q:?}");
    assert_eq!(
        req.headers()["content-type"],
        "application/apply-patch+yaml"
    );
}

async fn body_json(req: Request<Body>) -> serde_json::Value {
    let bytes = req.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

fn json_response(v: serde_json::Value) -> Response<Body> {
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(&v).unwrap()))
        .unwrap()
}

#[tokio::test]
async fn first_run_creates_ca_secret_and_webhook_configuration() {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "default");
    let server = tokio::spawn(async move {
        // 1. GET the Secret: not found.
        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!(req.method(), http::Method::GET);
        assert_eq!(
            req.uri().path(),
            "/api/v1/namespaces/silo-system/secrets/silo-webhook-tls"
        );
        send.send_response(Response::builder().status(404).header("content-type", "application/json").body(Body::from(
            serde_json::to_vec(&serde_json::json!({"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404,"message":"secrets \"silo-webhook-tls\" not found"})).unwrap())).unwrap());
        // 2. Apply the Secret.
        let (req, send) = handle.next_request().await.unwrap();
        assert_apply(
            &req,
            "/api/v1/namespaces/silo-system/secrets/silo-webhook-tls",
        );
        let secret = body_json(req).await;
        assert_eq!(secret["kind"], "Secret");
        assert_eq!(secret["type"], "kubernetes.io/tls");
        for k in ["tls.crt", "tls.key", "ca.crt", "ca.key"] {
            assert!(secret["data"][k].is_string(), "missing {k}");
        }
        send.send_response(json_response(secret.clone()));
        // 3. Apply the webhook configuration with the CA from the Secret.
        let (req, send) = handle.next_request().await.unwrap();
        assert_apply(
            &req,
            "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/silo-validating",
        );
        let cfg = body_json(req).await;
        assert_eq!(cfg["kind"], "ValidatingWebhookConfiguration");
        let w = &cfg["webhooks"][0];
        assert_eq!(w["clientConfig"]["caBundle"], secret["data"]["ca.crt"]);
        assert_eq!(w["failurePolicy"], "Fail");
        assert_eq!(w["rules"][0]["apiGroups"], serde_json::json!(["silo.dev"]));
        send.send_response(json_response(cfg));
    });
    let (bundle, action) =
        reconcile_certificates(&client, &settings(), time::OffsetDateTime::now_utc())
            .await
            .unwrap();
    assert!(matches!(action, silo::webhook::CertAction::NewCa(_)));
    assert!(
        silo::webhook::tls::subject_alt_names(&bundle.cert_pem)
            .contains(&"silo-webhook.silo-system.svc".to_string())
    );
    server.await.unwrap();
}

#[tokio::test]
async fn a_valid_stored_certificate_is_kept_and_only_the_configuration_is_applied() {
    let s = settings();
    let (stored, _) = ensure_serving_cert(
        None,
        &s.endpoint.sans(),
        time::OffsetDateTime::now_utc(),
        &s.policy,
    )
    .unwrap();
    let secret =
        serde_json::to_value(desired_secret(&s.namespace, &s.secret_name, &stored)).unwrap();
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "default");
    let server = tokio::spawn(async move {
        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!(req.method(), http::Method::GET);
        send.send_response(json_response(secret));
        let (req, send) = handle.next_request().await.unwrap();
        assert_apply(
            &req,
            "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/silo-validating",
        );
        let cfg = body_json(req).await;
        send.send_response(json_response(cfg));
    });
    let (bundle, action) = reconcile_certificates(&client, &s, time::OffsetDateTime::now_utc())
        .await
        .unwrap();
    assert_eq!(action, silo::webhook::CertAction::Kept);
    assert_eq!(bundle, stored);
    server.await.unwrap();
}

#[tokio::test]
async fn api_errors_name_the_object() {
    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(svc, "default");
    let server = tokio::spawn(async move {
        let (_req, send) = handle.next_request().await.unwrap();
        send.send_response(Response::builder().status(403).header("content-type", "application/json").body(Body::from(
            serde_json::to_vec(&serde_json::json!({"kind":"Status","apiVersion":"v1","status":"Failure","reason":"Forbidden","code":403,"message":"secrets is forbidden"})).unwrap())).unwrap());
    });
    let e = reconcile_certificates(&client, &settings(), time::OffsetDateTime::now_utc())
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("cannot read Secret silo-system/silo-webhook-tls"),
        "{e}"
    );
    server.await.unwrap();
}
