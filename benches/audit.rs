//! The audit trail on a throwaway real PostgreSQL (fsync off: the numbers are the database's
//! and the API's work, not the disk's):
//!
//! - seeding 1,000,000 records of one chain (a valid chain: hashes computed here, loaded with
//!   COPY with the triggers off — appending them one by one would take an hour);
//! - `silo audit verify` over the 1,000,000 records;
//! - append throughput through the insert trigger: one writer, 16 writers on one chain
//!   (serialized by the head's row lock), 16 writers on 16 chains;
//! - `GET /v1/tenants/{name}/audit` over real HTTP: p50/p99 of the first page of the root
//!   (every record), of a dealer (1% of them), paging 100 pages deep with cursors, and with an
//!   actor filter.
//!
//! Client and server share the machine (2 cores): the rates are a lower bound.
//!
//! Run: `cargo bench --bench audit` (`SILO_AUDIT_BENCH_RECORDS` changes the 1,000,000).

#[path = "../tests/pg_support/mod.rs"]
mod pg_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::SinkExt;
use silo::api::testing::{MemoryApiCluster, replica};
use silo::audit::verify::Canonical;
use silo::types::{Tenant, TenantSpec};

fn tenant(name: &str, parent: Option<&str>) -> Tenant {
    Tenant::new(
        name,
        TenantSpec {
            parent: parent.map(String::from),
            ..Default::default()
        },
    )
}

fn pct(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    (ms(v[v.len() / 2]), ms(v[v.len() * 99 / 100]))
}

/// COPY text-format escaping (tabs, newlines, backslashes).
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('\t', "\\t")
        .replace('\n', "\\n")
}

fn main() {
    let n: i64 = std::env::var("SILO_AUDIT_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let pg = pg_support::PgServer::start().await;
        let mut config = silo::config::PlatformConfig::default();
        config.api.database.url = format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port);
        config.api.database.password = pg.password.clone();
        config.api.rate_limit_per_second = 0;
        let store = silo::api::store::Store::open(&config.api.database).await.unwrap();
        let su = pg.superuser().await;

        // platform → dist-0..9 → dealer-0..99 (10 per distributor).
        let mut tenants = vec![tenant("platform", None)];
        for d in 0..10 {
            tenants.push(tenant(&format!("dist-{d}"), Some("platform")));
        }
        for k in 0..100 {
            tenants.push(tenant(&format!("dealer-{k}"), Some(&format!("dist-{}", k / 10))));
        }

        // --- seed: a valid chain of n records, hashed here, loaded with COPY ---
        let started = Instant::now();
        let t0: i64 = 1_767_225_600_000_000; // 2026-01-01T00:00:00Z in µs
        let mut prev = [0u8; 32];
        let mut buf = String::with_capacity(64 << 20);
        let mut chunks: Vec<String> = Vec::new();
        for seq in 1..=n {
            let k = seq % 100;
            let dealer = format!("dealer-{k}");
            let path = format!("platform/dist-{}/{dealer}", k / 10);
            let at = t0 + seq * 1000;
            let actor = format!("{:016x}", seq % 50);
            let summary = format!("{{\"body\": {{\"displayName\": \"D{seq}\"}}}}");
            let target = format!("/v1/tenants/{dealer}");
            let c = Canonical {
                seq,
                chain: "platform",
                at_micros: at,
                actor_token: &actor,
                actor_name: "bench",
                tenant: &dealer,
                path: &path,
                action: "PATCH /v1/tenants/{name}",
                target: &target,
                summary: &summary,
                status: 200,
                outcome: "ok",
            };
            let hash = c.hash(&prev);
            let ts = silo::audit::rfc3339_micros(at);
            buf.push_str(&format!(
                "platform\t{seq}\t{ts}\t{actor}\tbench\t{dealer}\t{{platform,dist-{},{dealer}}}\tPATCH /v1/tenants/{{name}}\t{target}\t{}\t200\tok\t\\\\x{}\t\\\\x{}\n",
                k / 10,
                esc(&summary),
                hex::encode(prev),
                hex::encode(hash)
            ));
            prev = hash;
            if buf.len() > 8 << 20 {
                chunks.push(std::mem::take(&mut buf));
            }
        }
        chunks.push(buf);
        let hashed = started.elapsed();
        su.batch_execute("SET session_replication_role = replica").await.unwrap();
        let sink = su
            .copy_in(
                "COPY audit_records (chain, seq, at, actor_token, actor_name, tenant, path, action, \
                 target, summary, status, outcome, prev_hash, hash) FROM STDIN",
            )
            .await
            .unwrap();
        futures::pin_mut!(sink);
        for c in chunks {
            sink.send(axum::body::Bytes::from(c)).await.unwrap();
        }
        sink.close().await.unwrap();
        su.execute(
            "INSERT INTO audit_heads (chain, seq, hash) VALUES ('platform', $1, $2)",
            &[&n, &prev.as_slice()],
        )
        .await
        .unwrap();
        su.batch_execute("RESET session_replication_role; ANALYZE audit_records")
            .await
            .unwrap();
        println!(
            "seed: {n} records hashed in {:.1} s, loaded (COPY, indexes maintained) in {:.1} s",
            hashed.as_secs_f64(),
            (started.elapsed() - hashed).as_secs_f64()
        );

        // --- verify ---
        let started = Instant::now();
        let report = silo::audit::verify(&su, None).await.unwrap();
        assert!(report.broken.is_empty(), "{:?}", report.broken);
        let took = started.elapsed().as_secs_f64();
        println!(
            "silo audit verify: {} records in {:.1} s ({:.0} records/s)",
            report.records,
            took,
            report.records as f64 / took
        );

        // --- appends through the trigger ---
        let entry = |chain: &str, i: usize| silo::audit::Entry {
            actor_token: "0123456789abcdef".into(),
            actor_name: "bench".into(),
            tenant: chain.to_string(),
            path: vec![chain.to_string()],
            action: "PATCH /v1/tenants/{name}".into(),
            target: format!("/v1/tenants/{chain}"),
            summary: serde_json::json!({"body": {"displayName": format!("N{i}")}}),
            status: 200,
            outcome: "ok".into(),
        };
        for (what, writers, chains, total) in [
            ("1 writer, chain platform", 1usize, 1usize, 3_000usize),
            ("16 writers, chain platform", 16, 1, 6_000),
            ("16 writers, 16 chains", 16, 16, 6_000),
        ] {
            let started = Instant::now();
            let mut tasks = Vec::new();
            for w in 0..writers {
                let store = store.clone();
                let chain = if chains == 1 {
                    "platform".to_string()
                } else {
                    format!("root-{w}")
                };
                tasks.push(tokio::spawn(async move {
                    let mut lat = Vec::new();
                    for i in 0..total / writers {
                        let t = Instant::now();
                        store.append_audit(&entry(&chain, i)).await.unwrap();
                        lat.push(t.elapsed());
                    }
                    lat
                }));
            }
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await.unwrap());
            }
            let rate = all.len() as f64 / started.elapsed().as_secs_f64();
            let (p50, p99) = pct(all);
            println!("append, {what:28} {rate:7.0} records/s  p50 {p50:6.2} ms  p99 {p99:6.2} ms");
        }
        let report = silo::audit::verify(&su, None).await.unwrap();
        assert!(report.broken.is_empty(), "{:?}", report.broken);

        // --- GET …/audit over HTTP ---
        let cluster = Arc::new(MemoryApiCluster::new());
        for t in tenants {
            cluster.put_tenant(t);
        }
        let api = replica(cluster, store.clone(), config).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(listener, silo::api::router(api)).await;
        });
        let m = silo::api::auth::mint();
        store.insert_token(&m, "platform", "admin", None, "bench", 3600).await.unwrap();
        let http = reqwest::Client::new();
        let get = |url: String| {
            let http = http.clone();
            let token = m.token.clone();
            async move {
                let t = Instant::now();
                let r = http.get(&url).bearer_auth(&token).send().await.unwrap();
                assert!(r.status().is_success(), "{}", r.status());
                let v: serde_json::Value = r.json().await.unwrap();
                (t.elapsed(), v)
            }
        };
        // A window of 1% of the records (they are 1 ms apart), in the middle of the trail.
        let window = format!(
            "/v1/tenants/platform/audit?limit=100&from={}&to={}",
            silo::audit::rfc3339_micros(t0 + n / 2 * 1000),
            silo::audit::rfc3339_micros(t0 + (n / 2 + n / 100) * 1000)
        );
        for (what, path, runs) in [
            ("root, first page of 100", "/v1/tenants/platform/audit?limit=100", 300),
            ("dealer (1%), first page of 100", "/v1/tenants/dealer-7/audit?limit=100", 300),
            ("distributor (10%), page of 100", "/v1/tenants/dist-3/audit?limit=100", 300),
            ("root, actor filter, page of 100", "/v1/tenants/platform/audit?limit=100&actor=0000000000000007", 100),
            ("root, time window, page of 100", window.as_str(), 100),
        ] {
            let mut lat = Vec::new();
            for _ in 0..runs {
                let (d, v) = get(format!("{base}{path}")).await;
                assert!(!v["items"].as_array().unwrap().is_empty());
                lat.push(d);
            }
            let (p50, p99) = pct(lat);
            println!("GET audit, {what:36} p50 {p50:6.2} ms  p99 {p99:6.2} ms");
        }
        for (what, tenant) in [("root", "platform"), ("dealer (1%)", "dealer-7")] {
            let mut lat = Vec::new();
            let mut url = format!("{base}/v1/tenants/{tenant}/audit?limit=100");
            for _ in 0..100 {
                let (d, v) = get(url.clone()).await;
                lat.push(d);
                let Some(next) = v["next"].as_str().map(String::from) else {
                    break;
                };
                url = format!("{base}/v1/tenants/{tenant}/audit?limit=100&cursor={next}");
            }
            let (p50, p99) = pct(lat);
            println!("GET audit, {what:12} paging 100 pages deep    p50 {p50:6.2} ms  p99 {p99:6.2} ms");
        }
    });
}
