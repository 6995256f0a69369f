//! The operator's cost on a real API server, counted in the server's audit log:
//! - 300 Siloed tenants provisioned from scratch: writes per new tenant and the time until all
//!   are Ready, printed next to the raw server-side apply rate of the same server measured in
//!   the same run (nothing timing-dependent is asserted: the machine is shared);
//! - a restart over those 300 existing tenants makes 0 writes about tenants (only the leader
//!   Lease and the webhook configuration it re-applies at start);
//! - a SIGKILL in the middle of provisioning 100 tenants converges after a restart with
//!   exactly one key and one data key per tenant, the data key wrapped by that key.
//!
//! Run `cargo nextest run --test envtest_scale --no-capture` to see the numbers.

mod envtest_support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::Api;

use envtest_support::platform::{OPERATOR_NAMESPACE, Platform, PlatformOptions};
use envtest_support::scale::{
    IN_FLIGHT, by_resource, by_verb_and_resource, create_all, raw_apply_rate, reconciles,
    start_up_write, tree,
};
use envtest_support::{AuditEvent, Mark, eventually};
use silo::types::Phase;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioning_300_tenants_costs_and_a_restart_over_them_writes_nothing() {
    const N: usize = 300;
    let Some(mut p) = Platform::start(PlatformOptions {
        no_operator: true,
        ..Default::default()
    })
    .await
    else {
        return;
    };
    let admin = p.admin();
    p.env.ensure_namespace("raw-bench").await;
    let (seq, par) = raw_apply_rate(&admin, "raw-bench", 300).await;

    create_all(&admin, tree(N)).await;
    let audit = p.env.audit();
    let user = p.operator_user();
    let mark = audit.mark();
    let started = Instant::now();
    p.start_operator().await;
    let tenants = p.wait_all(Phase::Ready, Duration::from_secs(600)).await;
    let converged = started.elapsed();
    assert_eq!(tenants.len(), N);
    let writes: Vec<AuditEvent> = audit
        .writes_by(&user, mark)
        .into_iter()
        .filter(|e| !start_up_write(e))
        .collect();
    let per_tenant = writes.len() as f64 / N as f64;
    let bound = writes.len() as f64 / par;
    eprintln!(
        "\n== envtest numbers (same API server, same run) ==\n\
         raw server-side apply (ConfigMaps, admin): {seq:.0}/s one at a time, {par:.0}/s {IN_FLIGHT} in flight\n\
         {N} Siloed tenants from operator start to all Ready: {:.1} s ({:.1} tenants/s)\n\
         operator writes: {} = {per_tenant:.1} per new tenant; by verb and resource {:?}\n\
         the same number of raw applies ({IN_FLIGHT} in flight) would take {bound:.1} s: convergence took {:.2}× that",
        converged.as_secs_f64(),
        N as f64 / converged.as_secs_f64(),
        writes.len(),
        by_verb_and_resource(&writes),
        converged.as_secs_f64() / bound,
    );
    // Objects written more than once while provisioning (a reconcile that ran before the
    // watch reported its predecessor's applies, a status written twice, …).
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for w in writes
        .iter()
        .filter(|w| w.verb == "patch" && w.subresource.is_empty())
    {
        *seen
            .entry(format!("{} {}/{}", w.resource, w.namespace, w.name))
            .or_insert(0) += 1;
    }
    let mut again: BTreeMap<String, usize> = BTreeMap::new();
    for (k, n) in &seen {
        if *n > 1 {
            *again
                .entry(k.split(' ').next().unwrap().to_string())
                .or_insert(0) += n - 1;
        }
    }
    eprintln!(
        "objects applied: {} distinct, {} applies more than once by resource {again:?}",
        seen.len(),
        again.values().sum::<usize>()
    );
    let refused = audit.forbidden_for(&user, Mark::default());
    assert!(refused.is_empty(), "{refused:#?}");
    // Sanity, not timing: every tenant costs writes (its objects), a bounded number of them.
    assert!(
        (20.0..60.0).contains(&per_tenant),
        "writes per tenant: {per_tenant}"
    );

    // Restart over the existing tenants: a graceful stop, a new process, a full pass.
    p.operator().terminate();
    let mark = audit.mark();
    let started = Instant::now();
    p.start_operator().await;
    let port = p.operator().metrics_port;
    eventually(
        "the restarted operator reconciled every tenant",
        Duration::from_secs(300),
        || async move {
            let n = reconciles(port).await?;
            if n >= N as u64 {
                Ok(())
            } else {
                Err(format!("{n} reconciles"))
            }
        },
    )
    .await;
    let pass = started.elapsed();
    // Let anything still in flight land before counting.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let all = audit.writes_by(&user, mark);
    let (start_up, tenant_writes): (Vec<_>, Vec<_>) = all.into_iter().partition(start_up_write);
    let requests = audit.requests_by(&user, mark);
    let mut reads: BTreeMap<String, usize> = BTreeMap::new();
    for r in &requests {
        *reads
            .entry(format!("{} {}", r.verb, r.resource))
            .or_insert(0) += 1;
    }
    eprintln!(
        "restart over {N} tenants: first full pass after {:.1} s, {} requests {reads:?}; writes about tenants: {}; start-up writes (lease, webhook): {:?}",
        pass.as_secs_f64(),
        requests.len(),
        tenant_writes.len(),
        by_resource(&start_up),
    );
    assert!(
        tenant_writes.is_empty(),
        "a restart over unchanged tenants wrote:\n{}",
        tenant_writes
            .iter()
            .take(30)
            .map(|e| e.describe())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_provisioning_100_tenants_converges_with_one_key_and_data_key_each() {
    const N: usize = 100;
    let Some(mut p) = Platform::start(PlatformOptions {
        no_operator: true,
        ..Default::default()
    })
    .await
    else {
        return;
    };
    let admin = p.admin();
    create_all(&admin, tree(N)).await;
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), OPERATOR_NAMESPACE);
    let key_records = || {
        let secrets = secrets.clone();
        async move {
            secrets
                .list(&Default::default())
                .await
                .unwrap()
                .items
                .iter()
                .map(|s| s.name_any())
                .filter(|n| n.starts_with("silo-key-"))
                .collect::<BTreeSet<String>>()
        }
    };

    let started = Instant::now();
    p.start_operator().await;
    // Kill it once part of the tenants have their key, well before all do.
    let at_kill = eventually(
        "a third of the keys created",
        Duration::from_secs(300),
        || async {
            let n = key_records().await.len();
            if n >= N / 3 {
                Ok(n)
            } else {
                Err(format!("{n} keys"))
            }
        },
    )
    .await;
    p.operator().kill();
    let ready_at_kill = p
        .phases()
        .await
        .values()
        .filter(|ph| **ph == Some(Phase::Ready))
        .count();
    eprintln!(
        "SIGKILL after {:.1} s with {at_kill} key records and {ready_at_kill} tenants Ready of {N}",
        started.elapsed().as_secs_f64()
    );
    assert!(ready_at_kill < N, "killed too late to prove anything");

    let restarted = Instant::now();
    p.start_operator().await;
    let tenants = p.wait_all(Phase::Ready, Duration::from_secs(300)).await;
    assert_eq!(tenants.len(), N);
    eprintln!(
        "after the restart all {N} Ready in {:.1} s",
        restarted.elapsed().as_secs_f64()
    );
    let log = p.operator().log();
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("\"WARN\"")).collect();
    eprintln!(
        "the restarted operator logged {} warnings, e.g.:\n{}",
        warnings.len(),
        warnings
            .iter()
            .take(8)
            .copied()
            .collect::<Vec<_>>()
            .join("\n")
    );

    // Exactly one key record per tenant, none retired (nothing was re-created).
    let records = key_records().await;
    let want: BTreeSet<String> = tenants
        .iter()
        .map(|t| format!("silo-key-{}", t.name_any()))
        .collect();
    assert_eq!(records, want, "one key record per tenant, nothing else");
    // One data key per tenant namespace, wrapped by the tenant's (only) key.
    for t in &tenants {
        let name = t.name_any();
        let key = t.status.as_ref().unwrap().key.as_ref().unwrap();
        assert_eq!(key.version, 1, "{name}: key never rotated or re-created");
        let ns = format!("tenant-{name}");
        let data_keys: Vec<Secret> = Api::<Secret>::namespaced(admin.clone(), &ns)
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|s| s.name_any() == "silo-data-key")
            .collect();
        assert_eq!(data_keys.len(), 1, "{name}");
        let data = data_keys[0].data.as_ref().unwrap();
        let key_id = String::from_utf8(data["keyId"].0.clone()).unwrap();
        assert_eq!(
            key_id, key.id,
            "{name}: data key wrapped by the tenant's key"
        );
    }
    let refused = p
        .env
        .audit()
        .forbidden_for(&p.operator_user(), Mark::default());
    assert!(refused.is_empty(), "{refused:#?}");
}
