//! Certificates change while requests are in flight: none of them fails.

mod webhook_support;

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use silo::webhook::{RotationPolicy, ensure_serving_cert};
use webhook_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serving_cert_rotation_while_requests_are_in_flight() {
    let s = Arc::new(serve(fixture_view()).await);
    let sans = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let now = time::OffsetDateTime::now_utc();
    // A policy that wants more validity than the certificate has left: renewed now, from the
    // same CA, so clients keep trusting it.
    let eager = RotationPolicy {
        cert_renew_before: time::Duration::days(91),
        ..RotationPolicy::default()
    };
    let (renewed, action) = ensure_serving_cert(Some(&s.bundle), &sans, now, &eager).unwrap();
    assert!(matches!(
        action,
        silo::webhook::CertAction::RenewedServingCert(_)
    ));
    assert_eq!(renewed.ca_cert_pem, s.bundle.ca_cert_pem);

    let mut workers = Vec::new();
    for w in 0..4 {
        let s = s.clone();
        workers.push(tokio::spawn(async move {
            for i in 0..60 {
                // A fresh client per request forces new TLS handshakes during the swap.
                let client = client_trusting(&s.bundle.ca_bundle());
                let name = format!("w{w}-{i}");
                let t = tenant_json(&name, json!({"parent": "ghost"}));
                let r = client
                    .post(&s.url)
                    .json(&review("CREATE", "Tenant", &name, Some(t), None))
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("request {name} failed: {e:?}"));
                assert_eq!(r.status(), 200);
                let v: serde_json::Value = r.json().await.unwrap();
                assert_eq!(v["response"]["status"]["reason"], "UnknownParent");
            }
        }));
    }
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        s.config
            .reload_from_pem(
                renewed.cert_pem.clone().into_bytes(),
                renewed.key_pem.clone().into_bytes(),
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        s.config
            .reload_from_pem(
                s.bundle.cert_pem.clone().into_bytes(),
                s.bundle.key_pem.clone().into_bytes(),
            )
            .await
            .unwrap();
    }
    s.config
        .reload_from_pem(
            renewed.cert_pem.clone().into_bytes(),
            renewed.key_pem.clone().into_bytes(),
        )
        .await
        .unwrap();
    for w in workers {
        w.await.unwrap();
    }
    // The server now presents the renewed certificate.
    let served = served_leaf(&s.url).await;
    assert_eq!(served, pem_to_der(&renewed.cert_pem));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_rotation_keeps_both_cas_in_the_bundle() {
    let s = serve(fixture_view()).await;
    let sans = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    // A policy that wants more CA validity than is left: a new CA now.
    let eager = RotationPolicy {
        ca_renew_before: time::Duration::days(3651),
        ..RotationPolicy::default()
    };
    let (next, action) = ensure_serving_cert(
        Some(&s.bundle),
        &sans,
        time::OffsetDateTime::now_utc(),
        &eager,
    )
    .unwrap();
    assert!(matches!(action, silo::webhook::CertAction::NewCa(_)));
    assert_ne!(next.ca_cert_pem, s.bundle.ca_cert_pem);
    // An API server that learned the new caBundle (old + new CA) works before and after the
    // swap (a fresh client each time, so each request makes its own TLS handshake).
    let body = review(
        "CREATE",
        "Tenant",
        "x",
        Some(tenant_json("x", json!({"parent": "acme"}))),
        None,
    );
    let r = client_trusting(&next.ca_bundle())
        .post(&s.url)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    s.config
        .reload_from_pem(
            next.cert_pem.clone().into_bytes(),
            next.key_pem.clone().into_bytes(),
        )
        .await
        .unwrap();
    let r = client_trusting(&next.ca_bundle())
        .post(&s.url)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(served_leaf(&s.url).await, pem_to_der(&next.cert_pem));
    // Only the old CA: the new certificate is not trusted (the bundle really matters). The
    // refusal is the certificate check, not any failure to connect (the same request with the
    // new bundle just got 200 from the same server): the new CA has the old one's subject, so
    // the verifier tries the old CA's key and the signature does not match.
    let old_only = client_trusting(&s.bundle.ca_cert_pem)
        .post(&s.url)
        .json(&body)
        .send()
        .await
        .expect_err("a client trusting only the old CA accepted the new certificate");
    assert_eq!(
        rustls_cause(&old_only),
        Some(&rustls::Error::InvalidCertificate(
            rustls::CertificateError::BadSignature
        )),
        "{old_only:?}"
    );
}

/// The rustls error somewhere in `e`'s cause chain (an `io::Error` hides its inner error from
/// `source()`, so it is opened explicitly).
fn rustls_cause<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        cur = match err.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|i| i as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mounted_cert_files_are_reloaded_when_they_change() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let sans = vec!["127.0.0.1".to_string()];
    let now = time::OffsetDateTime::now_utc();
    let (a, _) = ensure_serving_cert(None, &sans, now, &RotationPolicy::default()).unwrap();
    let (b, _) = ensure_serving_cert(None, &sans, now, &RotationPolicy::default()).unwrap();
    std::fs::write(&cert, &a.cert_pem).unwrap();
    std::fs::write(&key, &a.key_pem).unwrap();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let config = silo::webhook::rustls_config(&silo::webhook::TlsSource::Files {
        cert: cert.clone(),
        key: key.clone(),
        poll: Duration::from_millis(20),
    })
    .await
    .unwrap();
    let watcher = tokio::spawn(silo::webhook::watch_cert_files(
        config.clone(),
        cert.clone(),
        key.clone(),
        Duration::from_millis(20),
    ));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = axum_server::Handle::new();
    let state = Arc::new(silo::webhook::WebhookState::new(fixture_view()));
    tokio::spawn(silo::webhook::serve_listener(
        listener,
        config,
        state,
        handle.clone(),
    ));
    handle.listening().await;
    let url = format!("https://127.0.0.1:{port}/validate");
    assert_eq!(served_leaf(&url).await, pem_to_der(&a.cert_pem));
    // cert-manager renews: a new key pair from another CA lands in the files.
    std::fs::write(&key, &b.key_pem).unwrap();
    std::fs::write(&cert, &b.cert_pem).unwrap();
    let mut swapped = false;
    for _ in 0..1000 {
        if served_leaf(&url).await == pem_to_der(&b.cert_pem) {
            swapped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(swapped, "the server never picked up the new certificate");
    let client = client_trusting(&b.ca_bundle());
    let body = review(
        "CREATE",
        "Tenant",
        "x",
        Some(tenant_json("x", json!({"parent": "acme"}))),
        None,
    );
    assert_eq!(
        client.post(&url).json(&body).send().await.unwrap().status(),
        200
    );
    watcher.abort();
    handle.shutdown();
}

fn pem_to_der(pem: &str) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// The leaf certificate the server presents (no verification: we only look at it).
async fn served_leaf(url: &str) -> Vec<u8> {
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    #[derive(Debug)]
    struct Any;
    impl ServerCertVerifier for Any {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            rustls::crypto::aws_lc_rs::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
    let addr = url
        .trim_start_matches("https://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let cfg = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Any))
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let tls = connector
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}
