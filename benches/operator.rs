//! Reconcile 1,000 and 10,000 tenants against the in-memory cluster: objects applied per
//! second, reconciles per second, peak RSS, and a second full pass that must write nothing.
//!
//! Run: `cargo bench --bench operator`.

use std::sync::Arc;
use std::time::Instant;

use silo::backends::memory::MemoryShared;
use silo::config::PlatformConfig;
use silo::operator::Reconciler;
use silo::operator::driver::reconcile_pass;
use silo::operator::keys::ProviderKeys;
use silo::operator::memory::MemoryCluster;
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
        let w1 = cluster.writes();
        let rss_first = rss_mib();

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
    }
}
