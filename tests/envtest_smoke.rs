//! The envtest support itself, against a real kube-apiserver: the control plane starts, the
//! admin, static-token users, impersonated users and ServiceAccounts authenticate as
//! themselves and get exactly what RBAC grants them; the audit log counts writes and
//! refusals per identity; the CRDs and the operator's own ClusterRole install; the real
//! `silo operator` binary, run as its ServiceAccount, provisions one tenant.

mod envtest_support;

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use serde_json::json;

use envtest_support::access::can_i;
use envtest_support::operator::{OperatorOptions, SiloOperator};
use envtest_support::{Envtest, Identity, eventually};
use silo::types::{Phase, Tenant};

fn forbidden(e: kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 403 && s.reason == "Forbidden")
}

/// A control plane with the CRDs, the operator's ServiceAccount (`silo-system/silo`) and its
/// ClusterRole installed; None when envtest is not available here.
async fn with_operator_rbac() -> Option<(Envtest, Identity)> {
    let env = Envtest::start().await?;
    env.install_crds().await;
    let sa = Identity::service_account("silo-system", "silo");
    env.install_operator_rbac(&sa).await;
    Some((env, sa))
}

/// The real `silo operator` binary, run as `sa`, once it is ready.
async fn start_operator(env: &Envtest, sa: &Identity) -> SiloOperator {
    let mut operator = SiloOperator::spawn(&OperatorOptions::new(env.kubeconfig(sa).await));
    operator.wait_ready(Duration::from_secs(60)).await;
    operator
}

/// The operator as in [`start_operator`], and one Tenant `name` (Siloed, no stand-in kubelet:
/// its workloads stay unready until the test marks them); None without envtest.
async fn operator_with_tenant(name: &str, display_name: &str) -> Option<(Envtest, SiloOperator)> {
    let (env, sa) = with_operator_rbac().await?;
    let operator = start_operator(&env, &sa).await;
    env.apply_value(json!({
        "apiVersion": "silo.dev/v1alpha1", "kind": "Tenant",
        "metadata": {"name": name},
        "spec": {"displayName": display_name},
    }))
    .await;
    Some((env, operator))
}

/// Tenant `name` once its phase is Ready (fails the test after `timeout`).
async fn tenant_ready(env: &Envtest, name: &str, timeout: Duration) -> Tenant {
    let tenants: Api<Tenant> = Api::all(env.admin());
    eventually(&format!("tenant {name} Ready"), timeout, || {
        let tenants = tenants.clone();
        async move {
            let t = tenants.get(name).await.map_err(|e| e.to_string())?;
            match t.status.as_ref().and_then(|s| s.phase) {
                Some(Phase::Ready) => Ok(t),
                _ => Err(format!("status {:?}", t.status)),
            }
        }
    })
    .await
}

#[tokio::test]
async fn identities_get_what_rbac_grants_and_the_audit_log_counts_them() {
    let Some(env) = Envtest::start().await else {
        return;
    };
    let admin = env.admin();
    let alice = env.client_as_user("alice", &[]).await; // static token
    let dora = env.client_as_user("dora", &["team-a"]).await; // impersonated

    // Positive control: the admin lists namespaces; the unprivileged users may not.
    let mark = env.audit().mark();
    let nss: Api<Namespace> = Api::all(admin.clone());
    assert!(nss.list(&Default::default()).await.unwrap().items.len() >= 3);
    for (who, client) in [("alice", &alice), ("dora", &dora)] {
        let err = Api::<Namespace>::all(client.clone())
            .list(&Default::default())
            .await
            .expect_err("unprivileged users may not list namespaces");
        assert!(forbidden(err), "{who}");
        assert!(!can_i(client, "list", "namespaces", None).await, "{who}");
    }
    assert!(can_i(&admin, "list", "namespaces", None).await);

    // RBAC applies to the group of an impersonated user: grant team-a configmaps in one ns.
    env.ensure_namespace("team-a").await;
    env.apply_yaml(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: cm-writer, namespace: team-a}
rules: [{apiGroups: [""], resources: [configmaps], verbs: [get, list, create, patch]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: cm-writer, namespace: team-a}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: cm-writer}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: Group, name: team-a}]
"#,
    )
    .await;
    // The authorizer sees a new RoleBinding through its own informer: shortly, not at once.
    eventually(
        "dora's group may create configmaps in team-a",
        Duration::from_secs(30),
        || async {
            if can_i(&dora, "create", "configmaps", Some("team-a")).await {
                Ok(())
            } else {
                Err("not yet".to_string())
            }
        },
    )
    .await;
    assert!(!can_i(&dora, "create", "configmaps", Some("default")).await);
    assert!(!can_i(&alice, "create", "configmaps", Some("team-a")).await);
    let cms: Api<ConfigMap> = Api::namespaced(dora.clone(), "team-a");
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "x"}})).unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();

    // The audit log saw it all, per user: alice 1 refused list, dora 1 refused list + 1
    // create, the admin no refusal.
    let audit = env.audit();
    let alice_forbidden = audit.forbidden_for("alice", mark);
    assert_eq!(
        alice_forbidden
            .iter()
            .filter(|e| e.resource == "namespaces")
            .count(),
        1,
        "{alice_forbidden:#?}"
    );
    let dora_writes = audit.writes_by("dora", mark);
    assert_eq!(dora_writes.len(), 1, "{dora_writes:#?}");
    assert_eq!(
        (
            dora_writes[0].verb.as_str(),
            dora_writes[0].resource.as_str()
        ),
        ("create", "configmaps")
    );
    assert_eq!(audit.forbidden_for("dora", mark).len(), 1);
    assert!(
        audit
            .forbidden_for(envtest_support::ADMIN_USER, mark)
            .is_empty()
    );
}

#[tokio::test]
async fn the_operator_runs_as_its_service_account_with_its_own_cluster_role() {
    let Some((env, sa)) = with_operator_rbac().await else {
        return;
    };
    let as_sa = env.client(&sa).await;
    assert!(can_i(&as_sa, "patch", "tenants.silo.dev", None).await);
    assert!(
        can_i(
            &as_sa,
            "create",
            "rolebindings.rbac.authorization.k8s.io",
            Some("tenant-x")
        )
        .await
    );
    assert!(!can_i(&as_sa, "create", "pods", Some("tenant-x")).await);
    assert!(
        !can_i(
            &as_sa,
            "create",
            "leases.coordination.k8s.io",
            Some("kube-system")
        )
        .await
    );

    let mark = env.audit().mark();
    let mut operator = start_operator(&env, &sa).await;
    env.apply_yaml(
        r#"
apiVersion: silo.dev/v1alpha1
kind: Tenant
metadata: {name: smoke}
spec: {displayName: Smoke test}
"#,
    )
    .await;
    // Envtest runs no pods: once the operator created the workloads, stand in for the
    // kubelet, and the tenant becomes Ready.
    let deps: Api<Deployment> = Api::namespaced(env.admin(), "tenant-smoke");
    eventually("the broker Deployment", Duration::from_secs(60), || {
        let deps = deps.clone();
        async move {
            deps.get("silo-mosquitto")
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    })
    .await;
    assert_eq!(env.mark_workloads_ready("tenant-smoke").await, 2);
    let t = tenant_ready(&env, "smoke", Duration::from_secs(60)).await;
    assert_eq!(
        t.status
            .as_ref()
            .and_then(|s| s.namespace.clone())
            .as_deref(),
        Some("tenant-smoke")
    );
    let ns = Api::<Namespace>::all(env.admin())
        .get("tenant-smoke")
        .await
        .unwrap();
    assert_eq!(
        ns.labels().get("silo.dev/tenant").map(String::as_str),
        Some("smoke")
    );
    let user = sa.username();
    let writes = env.audit().writes_by(&user, mark);
    assert!(!writes.is_empty(), "the operator wrote nothing?");
    let refused = env.audit().forbidden_for(&user, mark);
    assert!(
        refused.is_empty(),
        "requests of the operator refused:\n{}",
        refused
            .iter()
            .map(|e| e.describe())
            .collect::<Vec<_>>()
            .join("\n")
    );
    operator.terminate();
}

/// One Tenant the operator cannot decode (its status `depth` is above `u32::MAX`, which the
/// CRD schema — an integer with minimum 0 — lets through) does not stall the Tenant watch:
/// it is listed before the operator starts (the initial list used to fail whole and retry
/// forever), and a tenant created afterwards is still provisioned, while the undecodable one
/// is reported by the metric and a log line naming it.
#[tokio::test]
async fn an_undecodable_tenant_does_not_stall_the_others() {
    let Some((env, sa)) = with_operator_rbac().await else {
        return;
    };
    env.apply_yaml(
        r#"
apiVersion: silo.dev/v1alpha1
kind: Tenant
metadata: {name: broken}
spec: {displayName: Broken status}
"#,
    )
    .await;
    let tenants: Api<Tenant> = Api::all(env.admin());
    let raw: Api<kube::api::DynamicObject> =
        Api::all_with(env.admin(), &kube::api::ApiResource::erase::<Tenant>(&()));
    raw.patch_status(
        "broken",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"status": {"depth": 5_000_000_000u64}})),
    )
    .await
    .expect("the schema accepts a depth above u32::MAX");
    // Positive control: this object really does not decode as a Tenant.
    let err = tenants.get("broken").await.expect_err("undecodable Tenant");
    assert!(
        err.to_string()
            .contains("invalid value: integer `5000000000`, expected u32"),
        "{err}"
    );

    let mut operator = start_operator(&env, &sa).await;
    env.apply_yaml(
        r#"
apiVersion: silo.dev/v1alpha1
kind: Tenant
metadata: {name: fine}
spec: {displayName: Fine}
"#,
    )
    .await;
    let deps: Api<Deployment> = Api::namespaced(env.admin(), "tenant-fine");
    eventually(
        "tenant fine's broker Deployment",
        Duration::from_secs(60),
        || {
            let deps = deps.clone();
            async move {
                deps.get("silo-mosquitto")
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        },
    )
    .await;
    let metrics = operator.metrics().await;
    assert!(
        metrics.lines().any(
            |l| l.starts_with("silo_undecodable_objects_total{kind=\"Tenant\"}")
                && !l.ends_with(" 0")
        ),
        "{metrics}"
    );
    let log = operator.log();
    assert!(
        log.lines().any(|l| l.contains("object cannot be decoded")
            && l.contains("broken")
            && l.contains("Expected u32")),
        "{log}"
    );
    operator.terminate();
}

/// A tenant waiting for its workloads is not polled: the metadata-only watch on its
/// StatefulSet and Deployment receives their status changes (MODIFIED events) and triggers
/// the tenant. While the workloads stay unready, the operator does not reconcile it at all
/// (for longer than the 15 s re-check of other waits); once they are ready, the tenant is
/// Ready well before the safety resync (300 s) could have made it so.
#[tokio::test]
async fn a_tenant_waiting_for_its_workloads_is_woken_by_their_watch_not_by_polling() {
    let Some((env, mut operator)) = operator_with_tenant("waits", "Waits for its workloads").await
    else {
        return;
    };
    // No stand-in kubelet here: the workloads stay unready until the test marks them.
    let tenants: Api<Tenant> = Api::all(env.admin());
    eventually("tenant waits Provisioning", Duration::from_secs(90), || {
        let tenants = tenants.clone();
        async move {
            let t = tenants.get("waits").await.map_err(|e| e.to_string())?;
            let s = t.status.as_ref();
            let waiting = s.is_some_and(|s| {
                s.phase == Some(Phase::Provisioning)
                    && s.conditions.iter().any(|c| {
                        c.type_ == "DatabaseReady" && c.status == "False" && c.reason == "NotReady"
                    })
            });
            if waiting {
                Ok(())
            } else {
                Err(format!("status {s:?}"))
            }
        }
    })
    .await;
    let port = operator.metrics_port;
    let count = || async move {
        envtest_support::scale::reconciles(port)
            .await
            .expect("silo_reconciles_total")
    };
    let last = settled_reconciles(port).await;
    // Longer than WAIT_READY (15 s): polling would have reconciled it at least once.
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(
        count().await,
        last,
        "a tenant waiting only for its workloads was reconciled without any change"
    );
    assert_eq!(env.mark_workloads_ready("tenant-waits").await, 2);
    tenant_ready(&env, "waits", Duration::from_secs(120)).await;
    assert!(
        count().await > last,
        "the workloads' status change triggered the tenant"
    );
    operator.terminate();
}

/// `silo_reconciles_total` of the operator serving metrics on `port`, once it has not moved
/// for 5 s (the reconciles that earlier changes triggered are done).
async fn settled_reconciles(port: u16) -> u64 {
    let count = || async move {
        envtest_support::scale::reconciles(port)
            .await
            .expect("silo_reconciles_total")
    };
    let mut last = count().await;
    let mut stable_since = std::time::Instant::now();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while stable_since.elapsed() < Duration::from_secs(5) {
        assert!(
            std::time::Instant::now() < deadline,
            "reconciles never settled"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = count().await;
        if now != last {
            last = now;
            stable_since = std::time::Instant::now();
        }
    }
    last
}

/// The operator's own writes do not wake it again: a spec change of a Ready tenant is one
/// reconcile, although that reconcile writes the tenant's status (whose watch event, the echo
/// of the write, used to trigger a second reconcile that found nothing to do).
#[tokio::test]
async fn the_echo_of_the_operators_own_status_write_triggers_no_reconcile() {
    let Some((env, mut operator)) = operator_with_tenant("echo", "Before").await else {
        return;
    };
    let tenants: Api<Tenant> = Api::all(env.admin());
    let phase_is = |want: Phase| {
        let tenants = tenants.clone();
        move || {
            let tenants = tenants.clone();
            async move {
                let t = tenants.get("echo").await.map_err(|e| e.to_string())?;
                let s = t.status.as_ref();
                let current = s.and_then(|s| s.observed_generation) == t.metadata.generation;
                if current && s.and_then(|s| s.phase) == Some(want) {
                    Ok(())
                } else {
                    Err(format!("status {s:?}"))
                }
            }
        }
    };
    eventually(
        "tenant Provisioning",
        Duration::from_secs(90),
        phase_is(Phase::Provisioning),
    )
    .await;
    // No stand-in kubelet: the workloads are marked ready once they exist.
    eventually(
        "workloads marked ready",
        Duration::from_secs(60),
        || async {
            match env.mark_workloads_ready("tenant-echo").await {
                2 => Ok(()),
                n => Err(format!("{n} workloads")),
            }
        },
    )
    .await;
    eventually(
        "tenant Ready",
        Duration::from_secs(120),
        phase_is(Phase::Ready),
    )
    .await;
    let port = operator.metrics_port;
    let before = settled_reconciles(port).await;
    let mark = env.audit().mark();

    // A spec change (generation 2): one reconcile, which writes status.observedGeneration.
    tenants
        .patch(
            "echo",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"displayName": "After"}})),
        )
        .await
        .expect("patch displayName");
    eventually(
        "status shows generation 2",
        Duration::from_secs(60),
        phase_is(Phase::Ready),
    )
    .await;
    let after = settled_reconciles(port).await;
    assert_eq!(
        after - before,
        1,
        "one spec change, one reconcile (its status write's echo must not trigger another)"
    );
    // The workloads did not change since the reconcile that found them ready: their
    // readiness comes from memory, not from a GET (`cluster/readings.rs`).
    let operator_user = Identity::service_account("silo-system", "silo").username();
    let workload_reads: Vec<String> = env
        .audit()
        .requests_by(&operator_user, mark)
        .into_iter()
        .filter(|e| {
            e.verb == "get" && ["statefulsets", "deployments"].contains(&e.resource.as_str())
        })
        .map(|e| e.describe())
        .collect();
    assert!(
        workload_reads.is_empty(),
        "unchanged workloads read again: {workload_reads:?}"
    );
    operator.terminate();
}
