//! `silo api` over real HTTP on loopback, 10,000 tenants (seven levels, each with a Ready
//! status and seven conditions, as the operator writes them), a throwaway real PostgreSQL for
//! tokens: p50/p99 latency and requests per second of `GET /v1/tenants/{name}/tree` (a subtree
//! of 156 tenants), `GET /v1/tenants/{name}/usage` and token authentication alone
//! (`GET /v1/tenants/{name}` of a leaf); the API's own memory (heap counted by a global
//! allocator, apart from the in-memory cluster) and the process RSS.
//!
//! Client and server share the machine (and its 2 cores): the rates are a lower bound.
//!
//! Run: `cargo bench --bench api`.

#[path = "../tests/pg_support/mod.rs"]
mod pg_support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use silo::api::testing::{MemoryApiCluster, replica};
use silo::types::{Phase, TenantStatus};

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: delegates every call to the system allocator unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn mib(bytes: isize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn status() -> TenantStatus {
    let t = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    TenantStatus {
        phase: Some(Phase::Ready),
        conditions: [
            "NamespaceReady",
            "AccessReady",
            "DatabaseReady",
            "BrokerReady",
            "KeyReady",
            "ChannelsReady",
            "Ready",
        ]
        .iter()
        .map(|c| Condition {
            type_: c.to_string(),
            status: "True".into(),
            reason: "Applied".into(),
            message: format!("{c}: everything the tenant needs is in place and up to date"),
            last_transition_time: t.clone(),
            observed_generation: Some(1),
        })
        .collect(),
        ..Default::default()
    }
}

/// `total` GETs of `path` with `concurrency` clients: (p50, p99, requests per second).
async fn load(
    base: &str,
    path: &str,
    token: &str,
    total: usize,
    concurrency: usize,
) -> (Duration, Duration, f64) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .unwrap();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, next) = (client.clone(), next.clone());
        let url = format!("{base}{path}");
        let token = token.to_string();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let t = Instant::now();
                let r = client.get(&url).bearer_auth(&token).send().await.unwrap();
                assert!(r.status().is_success(), "{}", r.status());
                r.bytes().await.unwrap();
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
    all.sort();
    (all[all.len() / 2], all[all.len() * 99 / 100], rate)
}

fn main() {
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

        let cluster = Arc::new(MemoryApiCluster::new());
        let mut inv = silo::hierarchy::synthetic::tree(10_000, 7);
        for t in &mut inv.tenants {
            let usage = t.status.take().and_then(|s| s.usage);
            let mut s = status();
            s.usage = usage;
            t.status = Some(s);
        }
        for t in inv.tenants {
            cluster.put_tenant(t);
        }
        let before = LIVE.load(Ordering::Relaxed);
        let rss_before = rss_mib();
        let loaded = Instant::now();
        let api = replica(cluster.clone(), store.clone(), config).await;
        let load_time = loaded.elapsed();
        let api_heap = LIVE.load(Ordering::Relaxed) - before;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(listener, silo::api::router(api)).await;
        });
        let m = silo::api::auth::mint();
        store.insert_token(&m, "t0", "admin", None, "bench", 3600).await.unwrap();
        println!(
            "10,000 tenants: cache loaded in {:.0} ms; API state on the heap {:.1} MiB; process RSS {:.0} MiB (the in-memory cluster's copy included, {:.0} MiB before the API)",
            load_time.as_secs_f64() * 1000.0,
            mib(api_heap),
            rss_mib(),
            rss_before
        );
        // Warm up connections and caches.
        load(&base, "/v1/tenants/t31/tree", &m.token, 500, 8).await;
        for (what, path, n) in [
            ("tree (156 tenants)", "/v1/tenants/t31/tree", 5_000),
            ("usage", "/v1/tenants/t9000/usage", 10_000),
            ("token authentication + one tenant", "/v1/tenants/t9000", 10_000),
        ] {
            let (p50, p99, rate) = load(&base, path, &m.token, n, 16).await;
            println!(
                "{what:36} p50 {:6.2} ms  p99 {:6.2} ms  {:7.0} requests/s",
                p50.as_secs_f64() * 1000.0,
                p99.as_secs_f64() * 1000.0,
                rate
            );
        }
        println!("process RSS after the load: {:.0} MiB", rss_mib());
    });
}
