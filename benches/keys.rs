//! Key-provider throughput.
//!
//! - `local/encrypt|decrypt/<n>B`: direct tenant-key encryption with the local provider.
//! - `envelope/seal|open/<n>B`: envelope encryption with a cached data key (the operator's path).
//! - `kms-emulator/create_tenant_key`: `ensure_key` for new tenants against the moto KMS emulator
//!   (CreateKey + CreateAlias + EnableKeyRotation + DescribeKey + ListKeyRotations per tenant),
//!   only when `moto_server` can be started; otherwise a skip line is printed.
//!
//! Run: `cargo bench --bench keys`.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use silo::keys::envelope::{DEFAULT_DATA_KEY_TTL, EnvelopeCipher};
use silo::keys::kms::KmsProvider;
use silo::keys::local::{LocalProvider, MemoryKeyringStore};
use silo::keys::testkit::MotoServer;
use silo::keys::{KeyContext, KeyProvider, TenantKeySpec};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn local_provider(rt: &tokio::runtime::Runtime) -> Arc<LocalProvider> {
    rt.block_on(async {
        let p = LocalProvider::open(Arc::new(MemoryKeyringStore::default()), 7)
            .await
            .expect("local provider");
        p.ensure_key(&TenantKeySpec::new("bench"))
            .await
            .expect("tenant key");
        Arc::new(p)
    })
}

fn local(c: &mut Criterion) {
    let rt = runtime();
    let p = local_provider(&rt);
    let ctx = KeyContext::new("bench", "db-credentials");
    let mut g = c.benchmark_group("local");
    for size in [64usize, 1024, 4096] {
        let data = vec![0x5au8; size];
        let ct = rt.block_on(p.encrypt(&ctx, &data)).expect("encrypt");
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(
            BenchmarkId::new("encrypt", format!("{size}B")),
            &data,
            |b, d| b.iter(|| rt.block_on(p.encrypt(&ctx, black_box(d))).expect("encrypt")),
        );
        g.bench_with_input(
            BenchmarkId::new("decrypt", format!("{size}B")),
            &ct,
            |b, ct| {
                b.iter(|| {
                    rt.block_on(p.decrypt(&ctx, black_box(ct)))
                        .expect("decrypt")
                })
            },
        );
    }
    g.finish();
}

fn envelope(c: &mut Criterion) {
    let rt = runtime();
    let p = local_provider(&rt);
    let env = EnvelopeCipher::new(p, DEFAULT_DATA_KEY_TTL);
    let ctx = KeyContext::new("bench", "secrets");
    let mut g = c.benchmark_group("envelope");
    for size in [64usize, 1024] {
        let data = vec![0xa5u8; size];
        let sealed = rt.block_on(env.seal(&ctx, &data)).expect("seal");
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(
            BenchmarkId::new("seal", format!("{size}B")),
            &data,
            |b, d| b.iter(|| rt.block_on(env.seal(&ctx, black_box(d))).expect("seal")),
        );
        g.bench_with_input(
            BenchmarkId::new("open", format!("{size}B")),
            &sealed,
            |b, s| b.iter(|| rt.block_on(env.open(&ctx, black_box(s))).expect("open")),
        );
    }
    g.finish();
}

fn kms_emulator(c: &mut Criterion) {
    let rt = runtime();
    let server = match rt.block_on(MotoServer::start()) {
        Ok(s) => s,
        Err(e) => {
            println!("kms-emulator/create_tenant_key: skipped ({e})");
            return;
        }
    };
    let p = KmsProvider::new(server.client(), 7).expect("kms provider");
    let n = AtomicU64::new(0);
    let mut g = c.benchmark_group("kms-emulator");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    g.throughput(Throughput::Elements(1));
    g.bench_function("create_tenant_key", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let i = n.fetch_add(1, Ordering::Relaxed);
                rt.block_on(p.ensure_key(&TenantKeySpec::new(format!("bench-{i}"))))
                    .expect("create key");
            }
            start.elapsed()
        })
    });
    let ctx = KeyContext::new("bench-0", "db");
    g.bench_function("encrypt_64B", |b| {
        let data = [1u8; 64];
        b.iter(|| {
            rt.block_on(p.encrypt(&ctx, black_box(&data)))
                .expect("encrypt")
        })
    });
    g.finish();
    drop(server);
}

criterion_group!(benches, local, envelope, kms_emulator);
criterion_main!(benches);
