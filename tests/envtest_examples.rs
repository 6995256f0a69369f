//! The example tree (`examples/`, 36 tenants over 6 levels, Siloed and Shared, profiles,
//! channels, a suspended customer) against a real API server, with the real operator as its
//! own ServiceAccount (`operator/rbac.yaml`, not admin), its admission webhook registered at a
//! loopback URL and a throwaway shared PostgreSQL and Mosquitto:
//! - the CRDs from `crds/` are accepted and Established;
//! - every example object is admitted by the webhook (applied in dependency order);
//! - every tenant is reconciled to Ready (Suspended below a suspended tenant) for its current
//!   generation, with the status fields the SPEC lists;
//! - every object the operator renders exists, labelled with its tenant, owned by the Tenant,
//!   and managed by exactly one field manager (`silo`: server-side apply; Secrets are created
//!   once and patched, never applied over);
//! - `kubectl get tenants` printer columns and `kubectl describe` events are as the SPEC says;
//! - not one request of the operator was refused (audit log).

mod envtest_support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{self, Scope};
use kube::{Client, ResourceExt};
use serde_json::Value;

use envtest_support::platform::{OPERATOR_FIELD_MANAGER, Platform, PlatformOptions, current};
use envtest_support::{FIELD_MANAGER, Mark, repo_root};
use silo::config::PlatformConfig;
use silo::hierarchy::{Inventory, TenantTree};
use silo::render::render_tenant;
use silo::types::{Channel, LimitProfile, Phase, Tenant};

/// Every document of `examples/*.yaml` (one level deep, as `silo plan -f examples/`).
fn example_documents() -> Vec<(String, Value)> {
    let dir = repo_root().join("examples");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for doc in serde_norway::Deserializer::from_str(&text) {
            let v: Value = serde::Deserialize::deserialize(doc).unwrap();
            if !v.is_null() {
                out.push((f.file_name().unwrap().to_string_lossy().into_owned(), v));
            }
        }
    }
    out
}

/// Applies `docs` as the admin through the webhook. A refusal because something the object
/// refers to does not exist yet (parent, owner, profile, channel) is retried after the others;
/// any other refusal fails the test with the webhook's message. Returns the rounds taken.
async fn admit_in_dependency_order(client: &Client, docs: Vec<(String, Value)>) -> usize {
    let mut pending = docs;
    let mut rounds = 0;
    while !pending.is_empty() {
        rounds += 1;
        let before = pending.len();
        let mut deferred = Vec::new();
        let mut last = Vec::new();
        for (file, v) in pending {
            match try_apply(client, &v).await {
                Ok(()) => {}
                Err(msg) if msg.contains("does not exist") => {
                    last.push(format!("{file}: {msg}"));
                    deferred.push((file, v));
                }
                Err(msg) => panic!("{file}: {} refused: {msg}", v["metadata"]["name"]),
            }
        }
        assert!(
            deferred.len() < before,
            "no progress: every remaining example is refused:\n{}",
            last.join("\n")
        );
        pending = deferred;
    }
    rounds
}

async fn try_apply(client: &Client, v: &Value) -> Result<(), String> {
    let (group, version) = v["apiVersion"].as_str().unwrap().split_once('/').unwrap();
    let gvk = GroupVersionKind::gvk(group, version, v["kind"].as_str().unwrap());
    let (ar, _) = discovery::pinned_kind(client, &gvk).await.unwrap();
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let name = v["metadata"]["name"].as_str().unwrap();
    api.patch(name, &PatchParams::apply(FIELD_MANAGER), &Patch::Apply(v))
        .await
        .map(|_| ())
        .map_err(|e| match e {
            kube::Error::Api(s) => format!("{} ({})", s.message, s.code),
            other => other.to_string(),
        })
}

/// Whether the tenant or an ancestor is suspended.
fn suspended_in_path(by_name: &BTreeMap<String, Tenant>, name: &str) -> bool {
    let mut cur = by_name.get(name);
    while let Some(t) = cur {
        if t.spec.suspended {
            return true;
        }
        cur = t.spec.parent.as_ref().and_then(|p| by_name.get(p));
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_example_is_admitted_reconciled_and_owned_as_the_spec_says() {
    let Some(p) = Platform::start(PlatformOptions {
        webhook: true,
        shared_services: true,
        ..Default::default()
    })
    .await
    else {
        return;
    };
    let admin = p.admin();

    // Admission: every example object is accepted (in an order that creates what each one
    // refers to first).
    let docs = example_documents();
    let n_docs = docs.len();
    let rounds = admit_in_dependency_order(&admin, docs).await;
    eprintln!("{n_docs} example objects admitted in {rounds} rounds");

    // Reconciled: Ready, or Suspended below a suspended tenant, for the current generation.
    let tenants_api: Api<Tenant> = Api::all(admin.clone());
    let all = tenants_api.list(&Default::default()).await.unwrap().items;
    assert_eq!(all.len(), 36, "the example tree has 36 tenants");
    let by_name: BTreeMap<String, Tenant> = all.into_iter().map(|t| (t.name_any(), t)).collect();
    let expected: BTreeMap<String, Phase> = by_name
        .keys()
        .map(|n| {
            let phase = if suspended_in_path(&by_name, n) {
                Phase::Suspended
            } else {
                Phase::Ready
            };
            (n.clone(), phase)
        })
        .collect();
    assert!(expected.values().any(|p| *p == Phase::Suspended));
    let tenants = envtest_support::eventually(
        "every example tenant reconciled",
        Duration::from_secs(240),
        || {
            let api = tenants_api.clone();
            let expected = expected.clone();
            async move {
                let items = api
                    .list(&Default::default())
                    .await
                    .map_err(|e| e.to_string())?
                    .items;
                let behind: Vec<String> = items
                    .iter()
                    .filter(|t| !current(t, expected[&t.name_any()]))
                    .map(|t| {
                        let s = t.status.as_ref();
                        format!(
                            "{} {:?} {:?}",
                            t.name_any(),
                            s.and_then(|s| s.phase),
                            s.and_then(|s| s
                                .conditions
                                .iter()
                                .find(|c| c.type_ == "Ready")
                                .map(|c| c.message.clone()))
                        )
                    })
                    .collect();
                if behind.is_empty() {
                    Ok(items)
                } else {
                    Err(format!("{} behind: {behind:#?}", behind.len()))
                }
            }
        },
    )
    .await;

    check_status(&tenants);
    check_objects(&p, &tenants).await;
    check_printer_columns(&admin, &by_name).await;
    check_events(&admin, &tenants).await;

    // Not one request of the operator was refused, from its start to now.
    let refused = p
        .env
        .audit()
        .forbidden_for(&p.operator_user(), Mark::default());
    assert!(
        refused.is_empty(),
        "requests of the operator refused:\n{}",
        refused
            .iter()
            .map(|e| e.describe())
            .collect::<Vec<_>>()
            .join("\n")
    );
    let all_requests = p
        .env
        .audit()
        .requests_by(&p.operator_user(), Mark::default());
    eprintln!(
        "operator: {} requests, {} writes, 0 refused",
        all_requests.len(),
        all_requests.iter().filter(|e| e.is_write()).count()
    );
}

/// The status fields of SPEC "Tenant … status".
fn check_status(tenants: &[Tenant]) {
    const CONDITIONS: [&str; 7] = [
        "NamespaceReady",
        "AccessReady",
        "DatabaseReady",
        "BrokerReady",
        "KeyReady",
        "ChannelsReady",
        "Ready",
    ];
    for t in tenants {
        let name = t.name_any();
        let s = t.status.as_ref().unwrap();
        assert_eq!(
            s.namespace.as_deref(),
            Some(format!("tenant-{name}").as_str())
        );
        assert_eq!(s.path.last(), Some(&name), "{name}: path ends with itself");
        assert_eq!(
            s.depth,
            Some(s.path.len() as u32),
            "{name}: depth = path length"
        );
        assert_eq!(s.path.len() == 1, t.spec.parent.is_none(), "{name}");
        if let Some(parent) = &t.spec.parent {
            assert_eq!(&s.path[s.path.len() - 2], parent, "{name}");
        }
        for c in CONDITIONS {
            let cond = s.conditions.iter().find(|x| x.type_ == c);
            let cond = cond.unwrap_or_else(|| panic!("{name}: no condition {c}"));
            assert!(
                !cond.reason.is_empty() && !cond.message.is_empty(),
                "{name}: {c}"
            );
        }
        assert!(s.effective_limits.is_some(), "{name}: effectiveLimits");
        assert!(s.usage.is_some(), "{name}: usage");
        let key = s.key.as_ref().unwrap_or_else(|| panic!("{name}: key"));
        assert!(!key.id.is_empty() && key.version >= 1, "{name}: {key:?}");
        let ep = s
            .endpoints
            .as_ref()
            .unwrap_or_else(|| panic!("{name}: endpoints"));
        assert!(ep.database.is_some() && ep.mqtt.is_some(), "{name}: {ep:?}");
        assert!(!s.secrets.is_empty(), "{name}: secret references");
    }
}

/// Every rendered object (and every Secret the operator wrote) exists with the tenant's
/// labels, an owner reference to the Tenant and exactly one field manager: `silo`, Apply.
async fn check_objects(p: &Platform, tenants: &[Tenant]) {
    let admin = p.admin();
    let inventory = Inventory {
        tenants: tenants.to_vec(),
        profiles: Api::<LimitProfile>::all(admin.clone())
            .list(&Default::default())
            .await
            .unwrap()
            .items,
        channels: Api::<Channel>::all(admin.clone())
            .list(&Default::default())
            .await
            .unwrap()
            .items,
    };
    let tree = TenantTree::build(inventory, Default::default());
    assert!(tree.problems().is_empty(), "{:?}", tree.problems());
    let config = PlatformConfig::default();
    let mut apis: BTreeMap<String, (kube::discovery::ApiResource, Scope)> = BTreeMap::new();
    let mut checked = 0;
    let mut kinds = BTreeSet::new();
    for t in tenants {
        let name = t.name_any();
        let uid = t.metadata.uid.clone().unwrap();
        let id = tree.get(&name).unwrap();
        let mut keys: Vec<(String, String, Option<String>, String)> =
            render_tenant(&tree, id, &config)
                .iter()
                .map(|o| {
                    (
                        o.api_version().to_string(),
                        o.kind().to_string(),
                        o.namespace().map(str::to_string),
                        o.name().to_string(),
                    )
                })
                .collect();
        for secret in t.status.as_ref().unwrap().secrets.values() {
            keys.push((
                "v1".into(),
                "Secret".into(),
                Some(format!("tenant-{name}")),
                secret.clone(),
            ));
        }
        keys.push((
            "v1".into(),
            "Secret".into(),
            Some(format!("tenant-{name}")),
            "silo-data-key".into(),
        ));
        for (api_version, kind, ns, obj) in keys {
            let k = format!("{api_version}/{kind}");
            if !apis.contains_key(&k) {
                let (g, v) = api_version.split_once('/').unwrap_or(("", &api_version));
                let (ar, caps) =
                    discovery::pinned_kind(&admin, &GroupVersionKind::gvk(g, v, &kind))
                        .await
                        .unwrap();
                apis.insert(k.clone(), (ar, caps.scope));
            }
            let (ar, scope) = &apis[&k];
            let api: Api<DynamicObject> = match (scope, &ns) {
                (Scope::Namespaced, Some(ns)) => Api::namespaced_with(admin.clone(), ns, ar),
                _ => Api::all_with(admin.clone(), ar),
            };
            let what = format!("{kind} {}/{obj} of {name}", ns.clone().unwrap_or_default());
            let o = api
                .get_opt(&obj)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("{what} does not exist"));
            assert_eq!(
                o.labels().get("silo.dev/tenant").map(String::as_str),
                Some(name.as_str()),
                "{what}: label silo.dev/tenant"
            );
            let owners = o.owner_references();
            assert!(
                owners.iter().any(|r| r.uid == uid && r.kind == "Tenant"),
                "{what}: owner references {owners:?}"
            );
            // Status written by the stand-in kubelet is a subresource; the object itself has
            // exactly one manager.
            let managers: Vec<(String, String)> = o
                .managed_fields()
                .iter()
                .filter(|m| m.subresource.as_deref().unwrap_or_default().is_empty())
                .map(|m| {
                    (
                        m.manager.clone().unwrap_or_default(),
                        m.operation.clone().unwrap_or_default(),
                    )
                })
                .collect();
            // Secrets are created once and never replaced (credentials, wrapped keys: a
            // second writer must meet a conflict, not overwrite them), so their operation is
            // Update; everything else is server-side applied.
            let operation = if kind == "Secret" { "Update" } else { "Apply" };
            assert_eq!(
                managers,
                vec![(OPERATOR_FIELD_MANAGER.to_string(), operation.to_string())],
                "{what}: field managers"
            );
            kinds.insert(kind.clone());
            checked += 1;
        }
    }
    eprintln!("{checked} objects checked, kinds {kinds:?}");
}

/// `kubectl get tenants`: Name, Parent, Depth, Isolation, Phase, Namespace, Age (SPEC
/// "Users"), with the values of each tenant.
async fn check_printer_columns(admin: &Client, by_name: &BTreeMap<String, Tenant>) {
    let req = http::Request::get("/apis/silo.dev/v1alpha1/tenants")
        .header("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
        .body(Vec::new())
        .unwrap();
    let table: Value = serde_json::from_str(&admin.request_text(req).await.unwrap()).unwrap();
    let columns: Vec<&str> = table["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        columns,
        [
            "Name",
            "Parent",
            "Depth",
            "Isolation",
            "Phase",
            "Namespace",
            "Age"
        ]
    );
    let rows = table["rows"].as_array().unwrap();
    assert_eq!(rows.len(), by_name.len());
    for row in rows {
        let cells = row["cells"].as_array().unwrap();
        let name = cells[0].as_str().unwrap();
        let t = &by_name[name];
        let parent = t
            .spec
            .parent
            .clone()
            .map(Value::from)
            .unwrap_or(Value::Null);
        assert!(
            cells[1] == parent || (parent.is_null() && cells[1] == ""),
            "{name}: parent {}",
            cells[1]
        );
        assert!(
            cells[2].as_i64().is_some_and(|d| d >= 1),
            "{name}: depth {}",
            cells[2]
        );
        assert_eq!(
            cells[3],
            format!("{:?}", t.spec.isolation),
            "{name}: isolation"
        );
        assert!(
            cells[4] == "Ready" || cells[4] == "Suspended",
            "{name}: phase {}",
            cells[4]
        );
        assert_eq!(cells[5], format!("tenant-{name}"), "{name}: namespace");
    }
}

/// `kubectl describe tenant X` shows events: each tenant has the event of the phase it
/// reached and one naming what was applied (`Applied`, or folded into the phase change of
/// the same reconcile), regarding the Tenant.
async fn check_events(admin: &Client, tenants: &[Tenant]) {
    let events = Api::<Event>::all(admin.clone())
        .list(&Default::default())
        .await
        .unwrap()
        .items;
    for t in tenants {
        let name = t.name_any();
        let uid = t.metadata.uid.clone();
        let mine: Vec<_> = events
            .iter()
            .filter(|e| {
                e.regarding
                    .as_ref()
                    .is_some_and(|r| r.kind.as_deref() == Some("Tenant") && r.uid == uid)
            })
            .collect();
        let reasons: BTreeSet<String> = mine.iter().filter_map(|e| e.reason.clone()).collect();
        let phase = format!("{:?}", t.status.as_ref().unwrap().phase.unwrap());
        assert!(
            reasons.contains(&phase),
            "{name}: events {reasons:?} lack {phase}"
        );
        // What was applied: its own `Applied` event, or folded into the phase change of the
        // same reconcile.
        assert!(
            mine.iter()
                .any(|e| e.note.as_deref().is_some_and(|n| n.contains("applied "))),
            "{name}: no event names what was applied: {reasons:?}"
        );
    }
}
