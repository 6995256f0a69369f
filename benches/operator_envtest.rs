//! The real `silo operator` binary against a real API server (envtest): its resident memory,
//! the writes it makes per new tenant and the time it takes, at 1,000 and more tenants.
//!
//! ```sh
//! KUBEBUILDER_ASSETS=/path/to/envtest cargo test --bench operator_envtest        # debug build
//! KUBEBUILDER_ASSETS=/path/to/envtest cargo bench --bench operator_envtest       # release build
//! SILO_BENCH_TENANTS=1000,5000 SILO_BENCH_ISOLATION=Siloed …                      # sizes, mode
//! SILO_BENCH_QUIET=400 …                  # RSS again after 400 s without changes
//! ```
//!
//! For each size, on a fresh control plane: the raw server-side apply rate of the server, of
//! small ConfigMaps and of the operator's own rendered objects (issue #11's bound: "raw
//! server-side apply of those writes"; the rendered set of `SILO_BENCH_RAW_TENANTS` tenants,
//! default 100, renamed so they meet no real tenant — they stay on the server);
//! the operator's RSS idle with no tenants; then N tenants (a root, 10 distributors, the rest
//! customers) created before the operator starts, and the operator started over them
//! ("first pass": from start until every tenant is Ready for its generation, followed through
//! one watch of Tenants, not by listing them) — its reconciles
//! and writes
//! per tenant by verb and resource from the server's audit log, the time against the same
//! number of raw applies of either kind (at the mean of the rate measured before and after
//! the pass: on a shared machine it moves with the load), and its RSS (`VmRSS`) once converged and its peak (`VmHWM`);
//! finally a restart over the N existing tenants ("no-op pass": until it has reconciled each
//! once) — its writes about tenants (expected 0), its time and its RSS and peak.
//! RSS is read from `/proc/<pid>/status` of the operator process. Shared tenants
//! (`SILO_BENCH_ISOLATION=Shared`) need a throwaway PostgreSQL and Mosquitto (as the envtest
//! suite: `initdb`/`postgres`, `mosquitto`). Not part of the test suite: 1,000 Siloed tenants
//! take several minutes on a 2-core machine.
//!
//! `SILO_ENVTEST_PROFILING=1` starts the API server with Go's profiler on; during a pass,
//! `scripts/apiserver-profile 60 out.pb.gz` takes a CPU profile of it (`go tool pprof`).

#[path = "../tests/envtest_support/mod.rs"]
mod envtest_support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use kube::ResourceExt;
use kube::api::Api;
use silo::types::{Phase, Tenant};

use envtest_support::AuditEvent;
use envtest_support::platform::{Platform, PlatformOptions, current};
use envtest_support::scale::{
    IN_FLIGHT, Rss, by_verb_and_resource, create_all, raw_apply_rate, raw_apply_rendered,
    reconciles, rss_kib, start_up_write, tree_of,
};

fn main() {
    // `cargo bench` passes `--bench`; nothing else is accepted.
    let sizes: Vec<usize> = std::env::var("SILO_BENCH_TENANTS")
        .unwrap_or_else(|_| "1000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .filter(|n| *n >= 12)
        .collect();
    let isolation = std::env::var("SILO_BENCH_ISOLATION").unwrap_or_else(|_| "Siloed".into());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    for n in sizes {
        runtime.block_on(measure(n, &isolation));
    }
}

/// Tenants whose rendered objects measure the raw apply rate of those objects
/// (`SILO_BENCH_RAW_TENANTS`, default 100: ~1,600 writes, before and again after the first pass).
fn raw_rendered_tenants() -> usize {
    std::env::var("SILO_BENCH_RAW_TENANTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|n| *n >= 12)
        .unwrap_or(100)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// RSS of the running operator.
fn operator_rss(p: &mut Platform) -> Rss {
    let pid = p.operator().pid().expect("operator running");
    rss_kib(pid).expect("operator's /proc status")
}

/// Waits until every tenant is Ready for its current generation, following one watch of
/// Tenants (one paged list at the start, then only changes).
///
/// Not a list every few seconds: a full list of 10,000 Tenants is a quorum read of some
/// 40 MB from etcd, decoded and encoded again by the API server — at that size, polling
/// took a share of the server's CPU that grew with the tenant count and was counted against
/// the operator (sessions 7 and 8 measured with it).
async fn wait_all_ready(p: &Platform, n: usize, timeout: Duration) {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    let api: Api<Tenant> = Api::all(p.admin());
    let deadline = tokio::time::Instant::now() + timeout;
    let mut ready: HashMap<String, bool> = HashMap::new();
    let mut listing: HashMap<String, bool> = HashMap::new();
    let mut done = 0;
    let mut last_report = Instant::now();
    let mut events = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    while done < n {
        let next = tokio::time::timeout_at(deadline, events.next()).await;
        let Ok(Some(event)) = next else {
            panic!("only {done} of {n} tenants Ready after {timeout:?}");
        };
        match event {
            Ok(watcher::Event::Apply(t)) => {
                let now = current(&t, Phase::Ready);
                let before = ready.insert(t.name_any(), now).unwrap_or(false);
                done = done + usize::from(now) - usize::from(before);
            }
            Ok(watcher::Event::Delete(t)) => {
                done -= usize::from(ready.remove(&t.name_any()).unwrap_or(false));
            }
            Ok(watcher::Event::Init) => listing.clear(),
            Ok(watcher::Event::InitApply(t)) => {
                listing.insert(t.name_any(), current(&t, Phase::Ready));
            }
            Ok(watcher::Event::InitDone) => {
                ready = std::mem::take(&mut listing);
                done = ready.values().filter(|r| **r).count();
            }
            // The watcher retries by itself (with backoff); the deadline bounds the wait.
            Err(_) => {}
        }
        if last_report.elapsed() > Duration::from_secs(30) {
            eprintln!("  … {done} of {n} Ready");
            last_report = Instant::now();
        }
    }
}

async fn measure(n: usize, isolation: &str) {
    let Some(mut p) = Platform::start(PlatformOptions {
        no_operator: true,
        shared_services: isolation == "Shared",
        ..Default::default()
    })
    .await
    else {
        eprintln!("SKIPPED: set KUBEBUILDER_ASSETS to a folder with kube-apiserver");
        return;
    };
    let admin = p.admin();
    p.env.ensure_namespace("raw-bench").await;
    let (seq, par) = raw_apply_rate(&admin, "raw-bench", 300).await;
    let raw_tenants = raw_rendered_tenants();
    let (rendered_writes, rendered) = raw_apply_rendered(&admin, "rawa", raw_tenants).await;

    // The operator alone: no tenants.
    p.start_operator().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle = operator_rss(&mut p);
    p.operator().terminate();
    // Its webhook registration would refuse every Tenant write until the next one starts.
    let hooks: Api<ValidatingWebhookConfiguration> = Api::all(admin.clone());
    // (On a loaded machine the idle operator may have stopped before registering it.)
    match hooks
        .delete(
            silo::webhook::tls::WEBHOOK_CONFIGURATION_NAME,
            &Default::default(),
        )
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => panic!("delete the webhook configuration: {e}"),
    }

    let created = Instant::now();
    create_all(&admin, tree_of(n, isolation)).await;
    let create_secs = created.elapsed().as_secs_f64();

    // First pass: every tenant new.
    let audit = p.env.audit();
    let user = p.operator_user();
    let mark = audit.mark();
    let started = Instant::now();
    p.start_operator().await;
    wait_all_ready(&p, n, Duration::from_secs(7200)).await;
    let first = started.elapsed().as_secs_f64();
    let first_reconciles = reconciles(p.operator().metrics_port).await.unwrap_or(0);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let first_rss = operator_rss(&mut p);
    let writes: Vec<AuditEvent> = audit
        .writes_by(&user, mark)
        .into_iter()
        .filter(|e| !start_up_write(e))
        .collect();
    // The raw rate again, after the pass: on a shared machine it moves with the load, so
    // the bound uses the mean of both measurements (both are printed).
    p.env.ensure_namespace("raw-bench-after").await;
    let (seq_after, par_after) = raw_apply_rate(&admin, "raw-bench-after", 300).await;
    let bound = writes.len() as f64 / ((par + par_after) / 2.0);
    let (_, rendered_after) = raw_apply_rendered(&admin, "rawb", raw_tenants).await;
    let rendered_bound = writes.len() as f64 / ((rendered + rendered_after) / 2.0);
    let reads: Vec<AuditEvent> = audit
        .requests_by(&user, mark)
        .into_iter()
        .filter(|e| !e.is_write() && e.verb != "watch")
        .collect();
    // `SILO_BENCH_QUIET=<seconds>`: RSS again after that long without changes (the event
    // recorder's cache goes after 6 quiet minutes: 400 shows it).
    let mut quiet = None;
    if let Some(secs) = std::env::var("SILO_BENCH_QUIET")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        tokio::time::sleep(Duration::from_secs(secs)).await;
        quiet = Some((secs, operator_rss(&mut p)));
    }

    // No-op pass: a new process over the same tenants.
    p.operator().terminate();
    let mark = audit.mark();
    let started = Instant::now();
    p.start_operator().await;
    let port = p.operator().metrics_port;
    loop {
        if reconciles(port).await.is_ok_and(|r| r >= n as u64) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let noop = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let noop_rss = operator_rss(&mut p);
    let again: Vec<AuditEvent> = audit
        .writes_by(&user, mark)
        .into_iter()
        .filter(|e| !start_up_write(e))
        .collect();
    // `SILO_BENCH_HOLD=<seconds>`: keep the operator running for inspection (gdb, heaptrack).
    if let Some(secs) = std::env::var("SILO_BENCH_HOLD")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        eprintln!(
            "holding the operator (pid {:?}) for {secs} s",
            p.operator().pid()
        );
        tokio::time::sleep(Duration::from_secs(secs)).await;
    }
    p.operator().terminate();

    // Per tenant: over the idle operator's figure, in KiB.
    let show = |r: Rss| {
        let per = |now: u64, idle: u64| now.saturating_sub(idle) as f64 / n as f64;
        format!(
            "RSS {:.1} MiB ({:.1} KiB per tenant over idle), of which anonymous {:.1} MiB ({:.1} KiB per tenant); peak RSS {:.1} MiB ({:.1} KiB per tenant)",
            mib(r.rss),
            per(r.rss, idle.rss),
            mib(r.anon),
            per(r.anon, idle.anon),
            mib(r.peak),
            per(r.peak, idle.rss),
        )
    };
    eprintln!(
        "\n== operator on envtest: {n} {isolation} tenants ==\n\
         raw server-side apply: {seq:.0}/s one at a time, {par:.0}/s {IN_FLIGHT} in flight (after the first pass: {seq_after:.0}/s, {par_after:.0}/s); {n} Tenants created in {create_secs:.1} s\n\
         idle operator (no tenants): RSS {:.1} MiB, of which anonymous {:.1} MiB\n\
         raw server-side apply of the rendered objects of {raw_tenants} tenants ({rendered_writes} writes): {rendered:.0}/s {IN_FLIGHT} tenants in flight (after the first pass: {rendered_after:.0}/s)\n\
         first pass: all Ready after {first:.1} s; {first_reconciles} reconciles = {:.1} per tenant; {} writes = {:.1} per tenant; {:.2}× the time of as many raw ConfigMap applies ({bound:.1} s at the mean of both rates); {:.2}× the time of as many raw applies of rendered objects ({rendered_bound:.1} s)\n\
         \x20 by verb and resource: {:?}\n\
         \x20 reads (get, list): {} = {:.1} per tenant: {:?}\n\
         \x20 once converged: {}\n\
         \x20 after a quiet spell: {}\n\
         no-op pass (restart): every tenant reconciled after {noop:.1} s, {} writes about tenants\n\
         \x20 10 s later: {}",
        mib(idle.rss),
        mib(idle.anon),
        first_reconciles as f64 / n as f64,
        writes.len(),
        writes.len() as f64 / n as f64,
        first / bound,
        first / rendered_bound,
        by_verb_and_resource(&writes),
        reads.len(),
        reads.len() as f64 / n as f64,
        by_verb_and_resource(&reads),
        show(first_rss),
        quiet.map_or(
            "not measured (SILO_BENCH_QUIET unset)".to_string(),
            |(secs, r)| format!("{secs} s later: {}", show(r))
        ),
        again.len(),
        show(noop_rss),
    );
}
