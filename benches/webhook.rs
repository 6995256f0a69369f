//! Admission latency on a 100,000-tenant tree: the in-process decision alone, the full
//! AdmissionReview handling in process, and end to end over TLS on loopback (one keep-alive
//! connection, as the API server uses). Also the watcher's incremental update cost.
//!
//! `cargo bench --bench webhook` — prints p50/p99/max per scenario.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use silo::hierarchy::{EngineSettings, Inventory, TenantTree};
use silo::types::{Tenant, TenantSpec};
use silo::webhook::{
    Proposal, RotationPolicy, TlsSource, TreeView, WebhookState, ensure_serving_cert,
    review::review_bytes, rustls_config, serve_listener,
};

const TENANTS: usize = 100_000;

fn name(i: usize) -> String {
    format!("t{i}")
}

/// A tree of 100,000 tenants: fan-out 10 per level (root, 10, 100, 1,000, 10,000, rest),
/// depth 6, with count limits and cpu quotas on the upper levels.
fn inventory() -> (Inventory, Vec<usize>) {
    let mut tenants = Vec::with_capacity(TENANTS);
    let mut level_start = vec![0usize];
    let mut deep_parents = Vec::new();
    for i in 0..TENANTS {
        let parent = if i == 0 { None } else { Some((i - 1) / 10) };
        let depth: u32 = {
            let mut d = 1;
            let mut x = i;
            while x > 0 {
                x = (x - 1) / 10;
                d += 1;
            }
            d
        };
        if depth as usize > level_start.len() {
            level_start.push(i);
        }
        let mut spec = TenantSpec {
            parent: parent.map(name),
            ..Default::default()
        };
        if depth <= 3 {
            spec.limits.subtenants = Some(1_000_000);
            spec.limits.devices = Some(10_000_000);
            // 10^6 at the root, 10^5 per child, 10^4 per grandchild: sums fit exactly.
            spec.limits.cpu = Some(silo::types::QuantityValue::new(
                10u64.pow(7 - depth).to_string(),
            ));
        }
        if depth >= 5 {
            deep_parents.push(i);
        }
        tenants.push(Tenant::new(&name(i), spec));
    }
    (
        Inventory {
            tenants,
            ..Default::default()
        },
        deep_parents,
    )
}

fn report(label: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let pct = |p: f64| samples[((samples.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "{label:<58} n={:<6} p50={:>9.1?} p99={:>9.1?} max={:>9.1?}",
        samples.len(),
        pct(0.50),
        pct(0.99),
        samples[samples.len() - 1]
    );
}

/// Small deterministic PRNG (no timing-dependent input).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % n
    }
}

fn body(i: usize, parent: &str) -> Vec<u8> {
    let n = format!("new-{i}");
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": format!("uid-{i}"),
            "kind": {"group": "silo.dev", "version": "v1alpha1", "kind": "Tenant"},
            "resource": {"group": "silo.dev", "version": "v1alpha1", "resource": "tenants"},
            "name": n,
            "operation": "CREATE",
            "userInfo": {"username": "kubernetes-admin", "groups": ["system:masters"]},
            "object": {
                "apiVersion": "silo.dev/v1alpha1", "kind": "Tenant",
                "metadata": {"name": n, "labels": {"team": "iot"}},
                "spec": {"parent": parent, "displayName": "Customer", "isolation": "Shared",
                         "limits": {"devices": 100, "cpu": "1"},
                         "members": [{"user": "ann@example.com", "role": "admin"}]}
            },
            "oldObject": null,
            "dryRun": false
        }
    }))
    .expect("serialisable")
}

fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let settings = EngineSettings::default();
    let (inv, deep) = inventory();

    let t0 = Instant::now();
    let tree = TenantTree::build(inv.clone(), settings.clone());
    println!(
        "TenantTree::build of {} tenants: {:?} ({} problems)",
        tree.len(),
        t0.elapsed(),
        tree.problems().len()
    );
    assert!(tree.problems().is_empty(), "{:?}", &tree.problems()[..1]);

    let view = TreeView::new(settings);
    let t0 = Instant::now();
    view.replace_all(inv);
    println!("TreeView::replace_all: {:?}", t0.elapsed());

    let mut rng = Lcg(42);
    let iters = 20_000;

    // 1. The decision alone (no reservation, so every iteration sees the same tree).
    let mut samples = Vec::with_capacity(iters);
    for i in 0..iters {
        let p = name(deep[rng.next(deep.len())]);
        let mut spec = TenantSpec {
            parent: Some(p),
            ..Default::default()
        };
        spec.limits.cpu = Some(silo::types::QuantityValue::new("1"));
        let prop = Proposal::CreateTenant(Tenant::new(&format!("d-{i}"), spec));
        let t = Instant::now();
        let r = view.decide(&prop, false);
        samples.push(t.elapsed());
        assert!(r.is_ok(), "{r:?}");
    }
    report("decision alone (CREATE at depth 6-7)", samples);

    // 2. AdmissionReview bytes in → review out, in process (JSON + decision + reservation).
    let mut samples = Vec::with_capacity(iters);
    for i in 0..iters {
        let b = body(i, &name(deep[rng.next(deep.len())]));
        let t = Instant::now();
        let r = review_bytes(&view, &b).expect("valid review");
        let out = serde_json::to_vec(&r).expect("serialisable");
        samples.push(t.elapsed());
        assert!(
            r.response.as_ref().is_some_and(|x| x.allowed),
            "{}",
            String::from_utf8_lossy(&out)
        );
    }
    report(
        "AdmissionReview in process (parse+decide+reserve+encode)",
        samples,
    );

    // 3. Watcher updates: new leaves inserted incrementally.
    let mut samples = Vec::with_capacity(2_000);
    for i in 0..2_000 {
        let t = Tenant::new(
            &format!("new-{i}"),
            TenantSpec {
                parent: Some(name(deep[rng.next(deep.len())])),
                ..Default::default()
            },
        );
        let s = Instant::now();
        view.upsert_tenant(t);
        samples.push(s.elapsed());
    }
    report("watcher upsert of a new leaf (incremental)", samples);

    // 4. End to end over TLS on loopback.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let sans = vec!["127.0.0.1".to_string()];
        let (bundle, _) = ensure_serving_cert(
            None,
            &sans,
            time::OffsetDateTime::now_utc(),
            &RotationPolicy::default(),
        )
        .expect("cert");
        let config = rustls_config(&TlsSource::Pem {
            cert: bundle.cert_pem.clone().into_bytes(),
            key: bundle.key_pem.clone().into_bytes(),
        })
        .await
        .expect("tls");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let handle = axum_server::Handle::new();
        let state = Arc::new(WebhookState::new(view));
        tokio::spawn(serve_listener(listener, config, state, handle.clone()));
        handle.listening().await;
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(
                reqwest::Certificate::from_pem(bundle.ca_cert_pem.as_bytes()).expect("ca"),
            )
            .build()
            .expect("client");
        let url = format!("https://127.0.0.1:{port}/validate");
        let mut rng = Lcg(7);
        let n = 10_000;
        let mut samples = Vec::with_capacity(n);
        for i in 0..(n + 200) {
            let b = body(100_000 + i, &name(deep[rng.next(deep.len())]));
            let t = Instant::now();
            let r = client
                .post(&url)
                .header("content-type", "application/json")
                .body(b)
                .send()
                .await
                .expect("send");
            let v: serde_json::Value = r.json().await.expect("json");
            let e = t.elapsed();
            assert_eq!(v["response"]["allowed"], true, "{v}");
            if i >= 200 {
                samples.push(e); // the first 200 warm up the connection
            }
        }
        report("end to end over TLS on loopback (keep-alive)", samples);
        handle.shutdown();
    });
}
