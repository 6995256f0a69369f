//! Engine benchmarks: build + validate generated 7-level trees, and the admission question
//! "may T add one device" on the 100,000-tenant tree.
//!
//! Run: `cargo bench --bench engine` (peak memory: `cargo bench --bench engine_memory`).

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use silo::hierarchy::{EngineSettings, TenantTree, synthetic};
use silo::types::CountResource;

fn build_and_validate(c: &mut Criterion) {
    let mut group = c.benchmark_group("build_and_validate");
    group.sample_size(10);
    for n in [1_000usize, 10_000, 100_000] {
        let inventory = synthetic::tree(n, 7);
        group.bench_with_input(BenchmarkId::from_parameter(n), &inventory, |b, inv| {
            b.iter_batched(
                || inv.clone(),
                |inv| {
                    let tree = TenantTree::build(inv, EngineSettings::default());
                    assert!(tree.problems().is_empty());
                    tree
                },
                criterion::BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

fn admission_check(c: &mut Criterion) {
    let tree = TenantTree::build(synthetic::tree(100_000, 7), EngineSettings::default());
    // The deepest tenant: the check walks the longest path.
    let leaf = (0..tree.len())
        .max_by_key(|&i| tree.node(i).depth)
        .unwrap_or(0);
    c.bench_function("check_add_device_100k_deepest", |b| {
        b.iter(|| std::hint::black_box(tree.check_add(leaf, CountResource::Devices, 1)))
    });
    let by_name = tree.name(leaf).to_string();
    c.bench_function("lookup_and_check_add_device_100k", |b| {
        b.iter(|| {
            let id = tree.get(std::hint::black_box(&by_name));
            std::hint::black_box(id.map(|id| tree.check_add(id, CountResource::Devices, 1)))
        })
    });
}

criterion_group!(benches, build_and_validate, admission_check);
criterion_main!(benches);
