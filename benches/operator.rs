//! Reconcile 1,000 and 10,000 tenants against the in-memory cluster: objects applied per
//! second, reconciles per second, peak RSS, and a second full pass that must write nothing.
//!
//! Also the operator's own memory at steady state, counted by a global allocator (the fake
//! cluster in the same process would otherwise dominate RSS): the Tenant watch cache, the
//! metadata index of owned objects, the analysed tree and the webhook's tree.
//!
//! Run: `cargo bench --bench operator`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use silo::hierarchy::{Inventory, TenantTree, engine_copy};
use silo::operator::cluster::kube_client::OwnedIndex;
use silo::operator::cluster::{Cluster, HASH_ANNOTATION, IDENTITY_ANNOTATION};
use silo::render::meta::TENANT_LABEL;

/// Counts live heap bytes.
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

fn live_mib() -> f64 {
    LIVE.load(Ordering::Relaxed) as f64 / (1024.0 * 1024.0)
}

use silo::backends::memory::MemoryShared;
use silo::config::PlatformConfig;
use silo::operator::Reconciler;
use silo::operator::cluster::memory::MemoryCluster;
use silo::operator::key_service::ProviderKeys;
use silo::operator::reconcile::pass::reconcile_pass;
use silo::types::{Isolation, Member, Subject, SubjectKind, Tenant, TenantSpec};

/// Peak resident set size (VmHWM) in MiB.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// Current resident set size (VmRSS) in MiB.
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// `n` tenants in a tree with fan-out 10 (root, distributors, dealers, …), a mix of
/// Siloed and Shared, each with an admin and two members.
fn tenants(n: usize, prefix: &str) -> Vec<Tenant> {
    (0..n)
        .map(|i| {
            let name = format!("{prefix}{i}");
            let parent = (i > 0).then(|| format!("{prefix}{}", (i - 1) / 10));
            Tenant::new(
                &name,
                TenantSpec {
                    parent,
                    display_name: name.clone(),
                    isolation: if i % 4 == 3 {
                        Isolation::Shared
                    } else {
                        Isolation::Siloed
                    },
                    admins: vec![Subject {
                        kind: SubjectKind::User,
                        name: format!("admin@{name}.example"),
                        namespace: None,
                    }],
                    members: vec![
                        Member {
                            user: format!("tech@{name}.example"),
                            role: "technician".into(),
                        },
                        Member {
                            user: format!("view@{name}.example"),
                            role: "viewer".into(),
                        },
                    ],
                    ..Default::default()
                },
            )
        })
        .collect()
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!("operator reconcile benchmark (in-memory cluster, lean store)");
    for (n, prefix) in [(1_000usize, "a"), (10_000, "b")] {
        let cluster = Arc::new(MemoryCluster::lean());
        for t in tenants(n, prefix) {
            cluster.put_tenant(t);
        }
        // The real `local` key provider (in-memory keyring): tenant keys, sealed CA keys.
        let keys = runtime
            .block_on(ProviderKeys::in_memory())
            .expect("local key provider");
        let rec = Reconciler::new(
            cluster.clone(),
            PlatformConfig::default(),
            Arc::new(keys),
            None,
        )
        .with_shared(Arc::new(MemoryShared::new()));
        let rss_start = rss_mib();
        let started = Instant::now();
        let pass = runtime.block_on(reconcile_pass(&rec, cluster.inventory()));
        let first = started.elapsed().as_secs_f64();
        assert!(pass.failures().is_empty(), "{:?}", &pass.failures()[..1]);
        drop(pass);
        let rss_first = rss_mib();
        // The pods come up (the kubelets report), and the tenants turn Ready.
        cluster.run_controllers();
        let pass = runtime.block_on(reconcile_pass(&rec, cluster.inventory()));
        assert!(pass.failures().is_empty());
        drop(pass);
        let w1 = cluster.writes();

        let started = Instant::now();
        let pass = runtime.block_on(reconcile_pass(&rec, cluster.inventory()));
        let second = started.elapsed().as_secs_f64();
        assert!(pass.failures().is_empty());
        drop(pass);
        let w2 = cluster.writes();
        let second_writes = w2.total() - w1.total();
        assert_eq!(
            second_writes, 0,
            "the second pass must make no writes: {w1:?} -> {w2:?}"
        );

        println!(
            "{n:>6} tenants: first pass   {first:6.2}s  {:>7.0} objects applied/s  {:>6.0} reconciles/s  ({} objects, {} status writes)",
            w1.applies as f64 / first,
            n as f64 / first,
            w1.applies,
            w1.status_patches,
        );
        println!(
            "{n:>6} tenants: no-op pass   {second:6.2}s  {:>6.0} reconciles/s  writes: {second_writes}",
            n as f64 / second,
        );
        println!(
            "{n:>6} tenants: RSS before {rss_start:.1} MiB, after first pass {rss_first:.1} MiB (fake cluster holds {} objects), now {:.1} MiB, peak {:.1} MiB",
            cluster.object_count(),
            rss_mib(),
            peak_rss_mib(),
        );

        // The operator's own state, as a live replica holds it after the passes.
        let inv = cluster.inventory();
        let mut metas: Vec<(String, ObjectMeta)> = Vec::new();
        for t in &inv.tenants {
            let name = t.metadata.name.clone().unwrap_or_default();
            for o in runtime.block_on(cluster.list_owned(&name)).expect("list") {
                let meta = ObjectMeta {
                    name: Some(o.key.name.clone()),
                    namespace: o.key.namespace.clone(),
                    labels: Some(BTreeMap::from([(TENANT_LABEL.to_string(), name.clone())])),
                    annotations: Some(
                        [(HASH_ANNOTATION, o.hash), (IDENTITY_ANNOTATION, o.identity)]
                            .into_iter()
                            .filter_map(|(k, v)| Some((k.to_string(), v?)))
                            .collect(),
                    ),
                    ..Default::default()
                };
                metas.push((o.key.kind.clone(), meta));
            }
        }
        let before = live_mib();
        let store: Vec<Arc<Tenant>> = inv.tenants.iter().cloned().map(Arc::new).collect();
        let after_store = live_mib();
        let index = OwnedIndex::default();
        for (kind, meta) in &metas {
            runtime.block_on(index.upsert(kind, meta));
        }
        let after_index = live_mib();
        let tree = TenantTree::build(
            Inventory {
                tenants: store.iter().map(|t| engine_copy(t)).collect(),
                profiles: Vec::new(),
                channels: Vec::new(),
            },
            Default::default(),
        );
        let after_tree = live_mib();
        // The webhook keeps its own tree from its own watch (its own copies of the tenants).
        let webhook_tree = TenantTree::build(
            Inventory {
                tenants: store.iter().map(|t| engine_copy(t)).collect(),
                profiles: Vec::new(),
                channels: Vec::new(),
            },
            Default::default(),
        );
        let after_all = live_mib();
        println!(
            "{n:>6} tenants: operator state {:.1} MiB = Tenant watch cache {:.1} + owned-object index ({} objects) {:.1} + analysed tree {:.1} + webhook tree {:.1}",
            after_all - before,
            after_store - before,
            metas.len(),
            after_index - after_store,
            after_tree - after_index,
            after_all - after_tree,
        );
        drop((store, index, tree, webhook_tree, inv));
    }
}
