//! Helpers of the scale measurements on envtest (`tests/envtest_scale.rs`,
//! `benches/operator_envtest.rs`): a tenant tree of any size, created parents first; the raw
//! server-side apply rate of the server (small ConfigMaps, and the objects the operator renders);
//! the operator's reconcile count; writes grouped by
//! kind; the resident memory of a process.

use std::collections::BTreeMap;
use std::time::Instant;

use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};
use silo::config::PlatformConfig;
use silo::hierarchy::{EngineSettings, Inventory, TenantTree};
use silo::operator::cluster::kube_client::owned_api_resource;
use silo::render::render_tenant;
use silo::types::Tenant;

use super::{AuditEvent, FIELD_MANAGER};

/// How many requests the helpers keep in flight when they write (tenants, raw applies).
pub const IN_FLIGHT: usize = 8;

/// A tree of `n` tenants: a root, 10 distributors, customers spread below them, all of
/// `isolation` (`"Siloed"` or `"Shared"`).
pub fn tree_of(n: usize, isolation: &str) -> Vec<Value> {
    let t = |name: String, parent: Option<String>| {
        let mut spec = json!({"displayName": name, "isolation": isolation});
        if let Some(p) = parent {
            spec["parent"] = p.into();
        }
        json!({"apiVersion": "silo.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": name}, "spec": spec})
    };
    let mut out = vec![t("root".into(), None)];
    for d in 0..10.min(n - 1) {
        out.push(t(format!("dist-{d}"), Some("root".into())));
    }
    for c in 0..n.saturating_sub(out.len()) {
        out.push(t(format!("cust-{c}"), Some(format!("dist-{}", c % 10))));
    }
    out
}

/// A tree of `n` Siloed tenants (see [`tree_of`]).
pub fn tree(n: usize) -> Vec<Value> {
    tree_of(n, "Siloed")
}

/// Applies the objects in order of depth (parents first), [`IN_FLIGHT`] at a time.
pub async fn create_all(client: &Client, objects: Vec<Value>) {
    let api: Api<Tenant> = Api::all(client.clone());
    let pp = PatchParams::apply(FIELD_MANAGER);
    let (parents, rest): (Vec<_>, Vec<_>) = objects
        .into_iter()
        .partition(|o| !o["metadata"]["name"].as_str().unwrap().starts_with("cust-"));
    for batch in [parents, rest] {
        stream::iter(batch)
            .map(|o| {
                let api = api.clone();
                let pp = pp.clone();
                async move {
                    let name = o["metadata"]["name"].as_str().unwrap().to_string();
                    api.patch(&name, &pp, &Patch::Apply(&o)).await.unwrap();
                }
            })
            .buffer_unordered(IN_FLIGHT)
            .collect::<Vec<_>>()
            .await;
    }
}

/// Raw server-side apply rate of this server: `n` ConfigMaps applied as the admin, one at a
/// time and [`IN_FLIGHT`] at a time. Returns (sequential/s, concurrent/s).
pub async fn raw_apply_rate(client: &Client, namespace: &str, n: usize) -> (f64, f64) {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let cm = |i: usize, round: &str| {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": format!("raw-{round}-{i}"), "labels": {"bench": "raw"}},
               "data": {"a": "1", "b": "two", "c": "x".repeat(200)}})
    };
    let pp = PatchParams::apply("raw-bench").force();
    let started = Instant::now();
    for i in 0..n {
        api.patch(&format!("raw-seq-{i}"), &pp, &Patch::Apply(&cm(i, "seq")))
            .await
            .unwrap();
    }
    let sequential = n as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            let pp = pp.clone();
            let body = cm(i, "par");
            async move {
                api.patch(&format!("raw-par-{i}"), &pp, &Patch::Apply(&body))
                    .await
                    .unwrap();
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect::<Vec<_>>()
        .await;
    let concurrent = n as f64 / started.elapsed().as_secs_f64();
    (sequential, concurrent)
}

/// Raw server-side apply of the objects the operator itself renders, the bound issue #11 names
/// ("raw server-side apply of those writes"): the rendered object set of `n` Siloed tenants of
/// [`tree_of`]'s shape, renamed `<round>-<name>` so they meet no real tenant, without owner
/// references (their Tenants do not exist, and the garbage collector would delete them) and
/// without the `silo.dev/tenant` label (the operator under test never sees them). As
/// the operator does, each tenant's objects go one after another in apply order (its
/// Namespace first), [`IN_FLIGHT`] tenants at a time. The default platform configuration is
/// the benchmark's (Siloed, no shared services). Returns (writes, writes/s).
pub async fn raw_apply_rendered(client: &Client, round: &str, n: usize) -> (usize, f64) {
    let renamed = |v: &Value| v.as_str().map(|s| format!("{round}-{s}"));
    let tenants: Vec<Tenant> = tree_of(n, "Siloed")
        .into_iter()
        .map(|mut t| {
            t["metadata"]["name"] = renamed(&t["metadata"]["name"]).into();
            if let Some(p) = renamed(&t["spec"]["parent"]) {
                t["spec"]["parent"] = p.into();
            }
            serde_json::from_value(t).unwrap()
        })
        .collect();
    let names: Vec<String> = tenants
        .iter()
        .map(|t| t.metadata.name.clone().unwrap())
        .collect();
    let config = PlatformConfig::default();
    let tree = TenantTree::build(
        Inventory {
            tenants,
            ..Default::default()
        },
        EngineSettings::from(&config),
    );
    let per_tenant: Vec<Vec<silo::render::DesiredObject>> = names
        .iter()
        .map(|name| render_tenant(&tree, tree.get(name).unwrap(), &config))
        .collect();
    let writes = per_tenant.iter().map(Vec::len).sum();
    let pp = PatchParams::apply("raw-bench").force();
    let started = Instant::now();
    stream::iter(per_tenant)
        .map(|objects| {
            let pp = pp.clone();
            async move {
                for o in objects {
                    let mut body = o.to_json();
                    if let Some(m) = body["metadata"].as_object_mut() {
                        m.remove("ownerReferences");
                    }
                    if let Some(l) = body["metadata"]["labels"].as_object_mut() {
                        l.remove(silo::render::meta::TENANT_LABEL);
                    }
                    let ar = owned_api_resource(o.owned_kind());
                    let api: Api<DynamicObject> = match o.namespace() {
                        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
                        None => Api::all_with(client.clone(), &ar),
                    };
                    api.patch(o.name(), &pp, &Patch::Apply(&body))
                        .await
                        .unwrap_or_else(|e| panic!("raw apply of {}: {e}", o.key()));
                }
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect::<Vec<_>>()
        .await;
    (writes, writes as f64 / started.elapsed().as_secs_f64())
}

/// `silo_reconciles_total` of the operator serving metrics on `port`.
pub async fn reconciles(port: u16) -> Result<u64, String> {
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .map_err(|e| e.to_string())?
        .text()
        .await
        .map_err(|e| e.to_string())?;
    text.lines()
        .find_map(|l| l.strip_prefix("silo_reconciles_total "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| "no silo_reconciles_total".to_string())
}

/// Writes grouped as `resource[/subresource]` → count.
pub fn by_resource(writes: &[AuditEvent]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for w in writes {
        *m.entry(kind_of(w)).or_insert(0) += 1;
    }
    m
}

/// Writes grouped as `verb resource[/subresource]` → count.
pub fn by_verb_and_resource(writes: &[AuditEvent]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for w in writes {
        *m.entry(format!("{} {}", w.verb, kind_of(w))).or_insert(0) += 1;
    }
    m
}

fn kind_of(w: &AuditEvent) -> String {
    if w.subresource.is_empty() {
        w.resource.clone()
    } else {
        format!("{}/{}", w.resource, w.subresource)
    }
}

/// What the operator writes at every start whatever the tenants: the leader Lease and the
/// webhook's configuration and certificate Secret.
pub fn start_up_write(e: &AuditEvent) -> bool {
    e.resource == "leases"
        || e.resource == "validatingwebhookconfigurations"
        || (e.resource == "secrets" && e.name == "silo-webhook-tls")
}

/// Resident memory of a process from `/proc/<pid>/status`, in KiB.
#[derive(Clone, Copy, Debug, Default)]
pub struct Rss {
    /// `VmRSS`: resident now.
    pub rss: u64,
    /// `VmHWM`: the peak of `VmRSS` since the process started.
    pub peak: u64,
    /// `RssAnon`: the resident heap, stacks and other anonymous memory (without the
    /// binary's own pages, `RssFile`, which a debug build makes large).
    pub anon: u64,
}

/// The [`Rss`] of process `pid`; None when it is gone.
pub fn rss_kib(pid: u32) -> Option<Rss> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status.lines().find_map(|l| {
            l.strip_prefix(name)?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
    };
    Some(Rss {
        rss: field("VmRSS:")?,
        peak: field("VmHWM:")?,
        anon: field("RssAnon:")?,
    })
}
