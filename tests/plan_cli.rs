//! `silo plan` end to end: the built binary on `examples/`, on every file of
//! `examples/invalid/`, and on small inputs written to temporary directories.
//!
//! Expected values are derived from the example files themselves (read here independently
//! of the crate), so adding a tenant to the examples keeps these tests meaningful.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{
    ConfigMap, LimitRange, Namespace, ResourceQuota, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use serde::Deserialize;
use serde_json::Value;

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs the built `silo` in the crate root with no SILO_* overrides and backtraces on,
/// so that a panic would be visible in stderr.
fn silo(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_silo"));
    cmd.args(args)
        .current_dir(manifest_dir())
        .env("RUST_BACKTRACE", "1");
    for (k, _) in std::env::vars() {
        if k.starts_with("SILO_") {
            cmd.env_remove(k);
        }
    }
    cmd.output().expect("run silo")
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).expect("utf-8 stdout")
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).expect("utf-8 stderr")
}

fn assert_no_panic(o: &Output) {
    let err = stderr(o);
    assert!(!err.contains("panicked"), "panic in stderr:\n{err}");
    assert!(
        !err.contains("stack backtrace"),
        "backtrace in stderr:\n{err}"
    );
    assert!(
        !err.contains("RUST_BACKTRACE"),
        "backtrace hint in stderr:\n{err}"
    );
}

/// Every document of a multi-document YAML text, as JSON values (empty documents skipped).
fn yaml_documents(text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).expect("valid YAML document"))
        .filter(|v| !v.is_null())
        .collect()
}

/// A Tenant as written in `examples/`, read without the crate's own loader.
#[derive(Debug, Clone)]
struct ExampleTenant {
    parent: Option<String>,
    isolation: String,
    suspended: bool,
    own_devices: i64,
    /// (user, role)
    members: Vec<(String, String)>,
}

/// Objects of `examples/*.yaml` (one level, as `plan -f examples/` reads them).
fn example_documents() -> Vec<Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(manifest_dir().join("examples"))
        .expect("examples/")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|f| yaml_documents(&std::fs::read_to_string(f).expect("read example")))
        .collect()
}

fn example_tenants() -> BTreeMap<String, ExampleTenant> {
    example_documents()
        .into_iter()
        .filter(|d| d["kind"] == "Tenant")
        .map(|d| {
            let name = d["metadata"]["name"].as_str().expect("name").to_string();
            let spec = &d["spec"];
            let t = ExampleTenant {
                parent: spec["parent"].as_str().map(String::from),
                isolation: spec["isolation"].as_str().unwrap_or("Siloed").to_string(),
                suspended: spec["suspended"].as_bool().unwrap_or(false),
                own_devices: d["status"]["usage"]["own"]["devices"].as_i64().unwrap_or(0),
                members: spec["members"]
                    .as_array()
                    .map(|ms| {
                        ms.iter()
                            .map(|m| {
                                (
                                    m["user"].as_str().expect("user").to_string(),
                                    m["role"].as_str().expect("role").to_string(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            };
            (name, t)
        })
        .collect()
}

/// Names from the root down to `name`.
fn path_of(tenants: &BTreeMap<String, ExampleTenant>, name: &str) -> Vec<String> {
    let mut path = vec![name.to_string()];
    let mut cur = name;
    while let Some(p) = tenants[cur].parent.as_deref() {
        assert!(path.len() <= tenants.len(), "cycle in examples at {name}");
        path.push(p.to_string());
        cur = p;
    }
    path.reverse();
    path
}

// ---------------------------------------------------------------- examples/ (valid)

#[test]
fn examples_are_a_realistic_tree() {
    let tenants = example_tenants();
    assert!(tenants.len() >= 25, "only {} tenants", tenants.len());
    let max_depth = tenants
        .keys()
        .map(|n| path_of(&tenants, n).len())
        .max()
        .unwrap();
    assert!(max_depth >= 5, "depth {max_depth}");
    let roots: Vec<_> = tenants.iter().filter(|(_, t)| t.parent.is_none()).collect();
    assert_eq!(roots.len(), 1, "one main company");
    let root = roots[0].0.as_str();
    let distributors = tenants
        .values()
        .filter(|t| t.parent.as_deref() == Some(root))
        .count();
    assert_eq!(distributors, 3);
    let isolations: BTreeSet<&str> = tenants.values().map(|t| t.isolation.as_str()).collect();
    assert_eq!(isolations, BTreeSet::from(["Shared", "Siloed"]));
    assert!(tenants.values().any(|t| t.suspended));
    let roles: BTreeSet<&str> = tenants
        .values()
        .flat_map(|t| t.members.iter().map(|(_, r)| r.as_str()))
        .collect();
    for r in ["admin", "technician", "viewer"] {
        assert!(roles.contains(r), "no member with role {r}");
    }
    assert!(roles.len() > 3, "no custom role: {roles:?}");
    let docs = example_documents();
    let block = docs.iter().any(|d| {
        d["kind"] == "LimitProfile"
            && ["subtenants", "devices", "channels", "mqttConnections"]
                .iter()
                .all(|r| d["spec"]["limits"][r] == 0)
    });
    assert!(block, "no all-zero block profile");
    let restricted = docs.iter().any(|d| {
        d["kind"] == "Channel"
            && d["spec"]["owner"] == root
            && d["spec"]["visibility"]["subtrees"]
                .as_array()
                .is_some_and(|s| s.len() == 1 && s[0] != root)
    });
    assert!(restricted, "no master channel restricted to one subtree");
}

#[test]
fn plan_examples_prints_every_tenant_indented_at_its_depth() {
    let out = silo(&["plan", "-f", "examples/"]);
    assert_no_panic(&out);
    assert!(out.status.success(), "stderr:\n{}", stderr(&out));
    assert!(stderr(&out).is_empty(), "stderr:\n{}", stderr(&out));
    let text = stdout(&out);
    let tenants = example_tenants();
    let mut lines = text.lines();
    let header = lines.next().expect("header line");
    assert!(
        header.starts_with(&format!("{} tenants,", tenants.len())),
        "{header}"
    );

    // name -> (line index, depth shown, indentation in characters)
    let mut seen: BTreeMap<String, (usize, u32, usize)> = BTreeMap::new();
    let body: Vec<&str> = lines.by_ref().take_while(|l| !l.is_empty()).collect();
    // Below the tree, after a blank line: how quotas read.
    let legend: Vec<&str> = lines.collect();
    assert_eq!(legend.len(), 1, "{legend:?}");
    assert!(
        legend[0].starts_with("Quotas (cpu, memory, storage, pods) bound a tenant's whole subtree"),
        "{legend:?}"
    );
    for (i, line) in body.iter().enumerate() {
        let indent = line
            .chars()
            .take_while(|c| matches!(c, ' ' | '│' | '├' | '└' | '─'))
            .count();
        let rest: String = line.chars().skip(indent).collect();
        let (name, after) = rest.split_once(" (").expect("`name (` in tree line");
        let depth: u32 = after
            .split_once("depth ")
            .and_then(|(_, d)| d.split_once(')'))
            .map(|(d, _)| d.parse().expect("depth number"))
            .expect("depth in tree line");
        assert!(
            seen.insert(name.to_string(), (i, depth, indent)).is_none(),
            "{name} printed twice"
        );
    }
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        tenants.keys().collect::<Vec<_>>(),
        "the tree lists exactly the example tenants"
    );
    for (name, t) in &tenants {
        let path = path_of(&tenants, name);
        let (line, depth, indent) = seen[name];
        assert_eq!(depth as usize, path.len(), "depth of {name}");
        assert_eq!(indent, 4 * (path.len() - 1), "indentation of {name}");
        assert!(
            body[line].contains(&format!("({}, depth", t.isolation)),
            "isolation of {name}: {}",
            body[line]
        );
        // The parent is the nearest line above that is one level shallower.
        if let Some(parent) = &t.parent {
            let above = body[..line]
                .iter()
                .enumerate()
                .rev()
                .find_map(|(j, _)| {
                    seen.iter()
                        .find(|(_, (l, d, _))| *l == j && *d + 1 == depth)
                        .map(|(n, _)| n.clone())
                })
                .expect("a parent line above");
            assert_eq!(&above, parent, "{name} is printed below its parent");
        }
        if t.suspended {
            assert!(body[line].contains("[suspended]"), "{}", body[line]);
        }
    }
}

/// Parses one manifest as its k8s-openapi type and checks nothing is lost on the way
/// (a field the type does not know would be dropped by the API server too).
fn parse_typed(doc: &Value) {
    fn check<T: serde::de::DeserializeOwned + serde::Serialize>(doc: &Value) {
        let typed: T = serde_json::from_value(doc.clone())
            .unwrap_or_else(|e| panic!("{e}: does not parse as its type:\n{doc:#}"));
        assert_eq!(
            &serde_json::to_value(&typed).unwrap(),
            doc,
            "round trip through the k8s-openapi type changed the object"
        );
    }
    let kind = doc["kind"].as_str().expect("kind");
    match kind {
        "Namespace" => check::<Namespace>(doc),
        "ResourceQuota" => check::<ResourceQuota>(doc),
        "LimitRange" => check::<LimitRange>(doc),
        "NetworkPolicy" => check::<NetworkPolicy>(doc),
        "Role" => check::<Role>(doc),
        "RoleBinding" => check::<RoleBinding>(doc),
        "ServiceAccount" => check::<ServiceAccount>(doc),
        "ConfigMap" => check::<ConfigMap>(doc),
        "Service" => check::<Service>(doc),
        "StatefulSet" => check::<StatefulSet>(doc),
        "Deployment" => check::<Deployment>(doc),
        other => panic!("unexpected kind {other:?} in plan output"),
    }
}

fn plan_yaml_objects() -> Vec<Value> {
    let out = silo(&["plan", "-f", "examples/", "-o", "yaml"]);
    assert_no_panic(&out);
    assert!(out.status.success(), "stderr:\n{}", stderr(&out));
    yaml_documents(&stdout(&out))
}

fn objects_in<'a>(objects: &'a [Value], kind: &str, namespace: &str) -> Vec<&'a Value> {
    objects
        .iter()
        .filter(|o| o["kind"] == kind && o["metadata"]["namespace"] == namespace)
        .collect()
}

/// Own quota of each example tenant for `field` (explicit, else from its LimitProfile), in
/// thousandths, read from the files independently of the crate's engine.
fn example_quotas(field: &str) -> BTreeMap<String, Option<i128>> {
    let docs = example_documents();
    let profile = |name: &str| {
        docs.iter()
            .find(|d| d["kind"] == "LimitProfile" && d["metadata"]["name"] == name)
            .map(|d| d["spec"]["limits"][field].clone())
            .unwrap_or(Value::Null)
    };
    docs.iter()
        .filter(|d| d["kind"] == "Tenant")
        .map(|d| {
            let spec = &d["spec"];
            let mut v = spec["limits"][field].clone();
            if v.is_null()
                && let Some(p) = spec["limitProfile"].as_str()
            {
                v = profile(p);
            }
            let q = match v {
                Value::Null => None,
                Value::String(s) => Some(silo::types::quantity::parse_millis(&s).unwrap()),
                n => Some(silo::types::quantity::parse_millis(&n.to_string()).unwrap()),
            };
            (d["metadata"]["name"].as_str().unwrap().to_string(), q)
        })
        .collect()
}

/// Issue #10 (2): for every tenant and quota resource, the ResourceQuotas of all namespaces
/// of its subtree together stay within its quota — and exactly use it, since every tenant
/// below a quota has its own and the own namespace gets the rest.
#[test]
fn plan_yaml_quotas_of_every_subtree_add_up_to_its_quota() {
    let objects = plan_yaml_objects();
    let tenants = example_tenants();
    let mut checked = 0;
    for (field, key) in [
        ("cpu", "requests.cpu"),
        ("cpu", "limits.cpu"),
        ("memory", "requests.memory"),
        ("storage", "requests.storage"),
        ("pods", "pods"),
    ] {
        let quotas = example_quotas(field);
        let hard = |t: &str| -> Option<i128> {
            objects_in(&objects, "ResourceQuota", &format!("tenant-{t}"))
                .first()
                .and_then(|q| q["spec"]["hard"][key].as_str())
                .map(|v| silo::types::quantity::parse_millis(v).unwrap())
        };
        for (name, own) in &quotas {
            let Some(own) = own else { continue };
            let subtree: Vec<&String> = tenants
                .keys()
                .filter(|n| path_of(&tenants, n).contains(name))
                .collect();
            let sum: i128 = subtree
                .iter()
                .map(|n| hard(n).unwrap_or_else(|| panic!("{n} has no {key} below {name}")))
                .sum();
            assert_eq!(sum, *own, "{key} over the subtree of {name}");
            checked += 1;
        }
    }
    assert!(checked > 100, "{checked}");
}

#[test]
fn plan_yaml_objects_parse_as_kubernetes_types() {
    let objects = plan_yaml_objects();
    for o in &objects {
        parse_typed(o);
    }
    let kinds: BTreeSet<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
    // Every kind the operator owns appears at least once in the examples.
    assert_eq!(
        kinds,
        BTreeSet::from([
            "ConfigMap",
            "Deployment",
            "LimitRange",
            "Namespace",
            "NetworkPolicy",
            "ResourceQuota",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount",
            "StatefulSet",
        ])
    );
    // No two objects with the same identity.
    let mut keys = BTreeSet::new();
    for o in &objects {
        let key = format!(
            "{}/{}/{}",
            o["kind"],
            o["metadata"]["namespace"].as_str().unwrap_or("-"),
            o["metadata"]["name"].as_str().expect("name")
        );
        assert!(keys.insert(key.clone()), "duplicate object {key}");
    }
}

#[test]
fn plan_yaml_namespaces_carry_tree_labels() {
    let objects = plan_yaml_objects();
    let tenants = example_tenants();
    let namespaces: Vec<&Value> = objects
        .iter()
        .filter(|o| o["kind"] == "Namespace")
        .collect();
    assert_eq!(namespaces.len(), tenants.len(), "one Namespace per tenant");
    for (name, t) in &tenants {
        let ns_name = format!("tenant-{name}");
        let ns = namespaces
            .iter()
            .find(|n| n["metadata"]["name"] == ns_name.as_str())
            .unwrap_or_else(|| panic!("no Namespace {ns_name}"));
        let labels: BTreeMap<String, String> =
            serde_json::from_value(ns["metadata"]["labels"].clone()).expect("labels");
        let path = path_of(&tenants, name);
        assert_eq!(labels["silo.dev/tenant"], *name);
        assert_eq!(
            labels.get("silo.dev/parent"),
            t.parent.as_ref(),
            "{ns_name}"
        );
        assert_eq!(
            labels["silo.dev/depth"],
            path.len().to_string(),
            "{ns_name}"
        );
        assert_eq!(labels["pod-security.kubernetes.io/enforce"], "restricted");
        // One label per tenant on the path (ancestors and itself), valued by the distance.
        let tree_labels: BTreeMap<&str, &str> = labels
            .iter()
            .filter_map(|(k, v)| {
                k.strip_suffix(".tree.silo.dev/depth")
                    .map(|a| (a, v.as_str()))
            })
            .collect();
        let expected: BTreeMap<&str, String> = path
            .iter()
            .rev()
            .enumerate()
            .map(|(distance, a)| (a.as_str(), distance.to_string()))
            .collect();
        assert_eq!(
            tree_labels,
            expected
                .iter()
                .map(|(k, v)| (*k, v.as_str()))
                .collect::<BTreeMap<_, _>>(),
            "tree labels of {ns_name}"
        );
    }
}

#[test]
fn plan_yaml_siloed_tenants_get_workloads_shared_ones_do_not() {
    let objects = plan_yaml_objects();
    let tenants = example_tenants();
    let mut siloed = 0;
    for (name, t) in &tenants {
        let ns = format!("tenant-{name}");
        let sts = objects_in(&objects, "StatefulSet", &ns);
        let deploy = objects_in(&objects, "Deployment", &ns);
        let sa = objects_in(&objects, "ServiceAccount", &ns);
        if t.isolation == "Siloed" {
            siloed += 1;
            assert_eq!(sts.len(), 1, "database StatefulSet in {ns}");
            assert_eq!(deploy.len(), 1, "broker Deployment in {ns}");
            assert_eq!(sa.len(), 1, "workload ServiceAccount in {ns}");
        } else {
            assert!(sts.is_empty(), "Shared tenant {name} has a StatefulSet");
            assert!(deploy.is_empty(), "Shared tenant {name} has a Deployment");
            assert!(sa.is_empty(), "Shared tenant {name} has a ServiceAccount");
        }
        // Always dedicated, whatever the isolation.
        assert_eq!(objects_in(&objects, "NetworkPolicy", &ns).len(), 1, "{ns}");
        assert!(
            objects_in(&objects, "ConfigMap", &ns)
                .iter()
                .any(|c| c["metadata"]["name"] == "silo-settings"),
            "silo-settings in {ns}"
        );
    }
    assert!(siloed > 0 && siloed < tenants.len());
}

#[test]
fn plan_yaml_suspended_tenant_is_scaled_down_and_keeps_only_admin_access() {
    let objects = plan_yaml_objects();
    let tenants = example_tenants();
    let replicas = |ns: &str, kind: &str| -> i64 {
        objects_in(&objects, kind, ns)[0]["spec"]["replicas"]
            .as_i64()
            .expect("replicas")
    };
    let member_bindings = |ns: &str| -> BTreeMap<String, String> {
        objects_in(&objects, "RoleBinding", ns)
            .iter()
            .filter_map(|b| {
                let role = b["metadata"]["labels"]["silo.dev/member-role"].as_str()?;
                let user = b["subjects"][0]["name"].as_str().expect("subject");
                Some((user.to_string(), role.to_string()))
            })
            .collect()
    };
    let mut suspended_checked = 0;
    let mut active_with_members = 0;
    for (name, t) in &tenants {
        let ns = format!("tenant-{name}");
        let suspended = path_of(&tenants, name).iter().any(|a| tenants[a].suspended);
        if t.isolation == "Siloed" {
            let want = if suspended { 0 } else { 1 };
            assert_eq!(replicas(&ns, "StatefulSet"), want, "database of {name}");
            assert_eq!(replicas(&ns, "Deployment"), want, "broker of {name}");
        }
        let bound = member_bindings(&ns);
        let expected: BTreeMap<String, String> = t
            .members
            .iter()
            .filter(|(_, role)| !suspended || role == "admin")
            .cloned()
            .collect();
        assert_eq!(bound, expected, "member RoleBindings of {name}");
        if suspended {
            suspended_checked += 1;
            assert!(
                t.members.iter().any(|(_, r)| r != "admin"),
                "the suspended example should have non-admin members to drop"
            );
            assert!(bound.values().all(|r| r == "admin"));
            assert!(
                !bound.is_empty(),
                "the suspended tenant's admin member stays"
            );
            // Its admins (spec.admins) keep their binding.
            assert!(
                objects_in(&objects, "RoleBinding", &ns)
                    .iter()
                    .any(|b| b["metadata"]["labels"]["silo.dev/member-role"].is_null()),
                "admins binding of {name}"
            );
        } else if t.members.iter().any(|(_, r)| r != "admin") {
            active_with_members += 1;
        }
    }
    assert!(suspended_checked >= 1);
    assert!(active_with_members >= 1);
}

fn plan_json() -> Value {
    let out = silo(&["plan", "-f", "examples/", "-o", "json"]);
    assert_no_panic(&out);
    assert!(out.status.success(), "stderr:\n{}", stderr(&out));
    serde_json::from_str(&stdout(&out)).expect("plan -o json is JSON")
}

#[test]
fn plan_json_has_limits_usage_and_the_flespi_example() {
    let plan = plan_json();
    let tenants = example_tenants();
    let list = plan["tenants"].as_array().expect("tenants array");
    assert_eq!(list.len(), tenants.len());
    let by_name: BTreeMap<&str, &Value> = list
        .iter()
        .map(|t| (t["name"].as_str().expect("name"), t))
        .collect();
    for t in list {
        assert!(t["effectiveLimits"].is_object(), "{t}");
        assert!(t["usage"]["own"].is_object() && t["usage"]["subtree"].is_object());
    }
    // objects: the same manifests as -o yaml.
    assert_eq!(
        plan["objects"].as_array().expect("objects").len(),
        plan_yaml_objects().len()
    );

    // Subtree device usage of the root is the sum of the observed usage in the files.
    let root = tenants
        .iter()
        .find(|(_, t)| t.parent.is_none())
        .map(|(n, _)| n.as_str())
        .unwrap();
    let devices: i64 = tenants.values().map(|t| t.own_devices).sum();
    assert!(devices > 0);
    assert_eq!(by_name[root]["usage"]["subtree"]["devices"], devices);
    // Subtenants: every tenant but the root is someone's subtenant.
    assert_eq!(
        by_name[root]["usage"]["subtree"]["subtenants"],
        (tenants.len() - 1) as i64
    );

    // flespi's example: riga-gps allows 10 channels over its subtree and owns 3 itself;
    // its two customers have no limits and share the remaining 7.
    let channels_owned_by = |owner: &str| {
        example_documents()
            .iter()
            .filter(|d| d["kind"] == "Channel" && d["spec"]["owner"] == owner)
            .count() as i64
    };
    let sub = by_name["riga-gps"];
    assert_eq!(sub["effectiveLimits"]["channels"], 10);
    assert_eq!(channels_owned_by("riga-gps"), 3);
    assert_eq!(sub["usage"]["own"]["channels"], 3);
    assert_eq!(sub["usage"]["subtree"]["channels"], 3);
    let customers: Vec<&str> = tenants
        .iter()
        .filter(|(_, t)| t.parent.as_deref() == Some("riga-gps"))
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(customers, ["daugava-taxi", "latvijas-piens"]);
    let headroom = |name: &str| -> i64 {
        // Tightest (limit − subtree usage) on the path root … tenant.
        by_name[name]["path"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|a| {
                let t = by_name[a.as_str().unwrap()];
                let limit = t["effectiveLimits"]["channels"].as_i64()?;
                Some(limit - t["usage"]["subtree"]["channels"].as_i64().unwrap())
            })
            .min()
            .expect("a channels limit on the path")
    };
    for c in customers {
        let t = by_name[c];
        assert_eq!(t["effectiveLimits"]["channels"], 10, "{c} inherits the 10");
        assert_eq!(t["usage"]["own"]["channels"], 0, "{c}");
        assert_eq!(headroom(c), 7, "{c} shares the remaining 7");
    }
    assert_eq!(headroom("riga-gps"), 7);

    // The block profile: everything prohibited for the blocked tenant.
    let blocked = by_name["sevilla-demo"];
    assert_eq!(blocked["limitProfile"], "block");
    for r in ["subtenants", "devices", "channels", "mqttConnections"] {
        assert_eq!(blocked["effectiveLimits"][r], 0, "{r}");
    }

    // Settings: inherited from above, overridden below.
    let s = &by_name["latvijas-piens"]["effectiveSettings"];
    assert_eq!(s["timezone"], "Europe/Riga", "from the sub-dealer");
    assert_eq!(
        s["support"]["email"], "support@balticfleet.example",
        "from the distributor"
    );
    assert_eq!(s["support"]["hours"], "24/7", "merged from the root");
    assert_eq!(s["dataRetentionDays"], 365, "from the root");
    assert_eq!(s["alerts"]["temperatureMaxC"], 6, "its own");

    // The suspended customer and everything it carries.
    let suspended = by_name["tartu-bus"];
    assert_eq!(suspended["suspended"], true);
    assert!(suspended["suspendedBy"].is_null(), "suspended itself");
}

#[test]
fn plan_output_does_not_panic_when_the_reader_goes_away() {
    // `silo plan -f examples/ -o yaml | head -1`: the output (hundreds of KiB) cannot fit in
    // the pipe once the reader is gone, so the write fails with EPIPE.
    let mut child = Command::new(env!("CARGO_BIN_EXE_silo"))
        .args(["plan", "-f", "examples/", "-o", "yaml"])
        .current_dir(manifest_dir())
        .env("RUST_BACKTRACE", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn silo");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    assert_no_panic(&out);
    assert!(out.status.success(), "stderr:\n{}", stderr(&out));
}

// ---------------------------------------------------------------- examples/invalid/

/// Checks `FILE: Kind/name: field: reason` (or `document N` for objects that could not be
/// identified, `-` when not about one object or field).
fn assert_problem_line(line: &str, file: &str) {
    let rest = line
        .strip_prefix(&format!("{file}: "))
        .unwrap_or_else(|| panic!("line does not start with the file {file:?}: {line}"));
    let mut parts = rest.splitn(3, ": ");
    let object = parts.next().unwrap_or_default();
    let field = parts.next().unwrap_or_default();
    let reason = parts.next().unwrap_or_default();
    let object_ok = object == "-"
        || object
            .strip_prefix("document ")
            .is_some_and(|n| n.split(" item ").all(|d| d.parse::<u32>().is_ok()))
        || object.split_once('/').is_some_and(|(kind, name)| {
            kind.chars().next().is_some_and(|c| c.is_ascii_uppercase())
                && kind.chars().all(|c| c.is_ascii_alphanumeric())
                && !name.is_empty()
                && !name.contains(char::is_whitespace)
        });
    assert!(object_ok, "object part {object:?} in: {line}");
    assert!(
        !field.is_empty() && !field.contains(char::is_whitespace),
        "field part {field:?} in: {line}"
    );
    assert!(!reason.trim().is_empty(), "empty reason in: {line}");
}

#[test]
fn every_invalid_example_is_rejected_with_its_own_message() {
    let dir = manifest_dir().join("examples/invalid");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("examples/invalid/")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(files.len() >= 20, "only {} invalid examples", files.len());
    let mut expectations = BTreeSet::new();
    for path in &files {
        let rel = format!(
            "examples/invalid/{}",
            path.file_name().unwrap().to_string_lossy()
        );
        let text = std::fs::read_to_string(path).expect("read");
        let mut head = text.lines();
        let expect = head
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{rel} must start with `# expect: …`"));
        assert!(!expect.trim().is_empty(), "{rel}: empty expectation");
        assert!(
            head.next()
                .is_some_and(|l| l.starts_with("# ") && l.len() > 10),
            "{rel}: second line must explain the rejection"
        );
        assert!(
            expectations.insert(expect.to_string()),
            "{rel}: same expectation as another file"
        );

        let out = silo(&["plan", "-f", &rel]);
        assert_no_panic(&out);
        let err = stderr(&out);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{rel} exit code; stderr:\n{err}"
        );
        assert!(stdout(&out).is_empty(), "{rel}: nothing on stdout");
        assert!(
            err.contains(expect),
            "{rel}: expected {expect:?} in:\n{err}"
        );
        assert!(!err.trim().is_empty());
        for line in err.lines() {
            assert_problem_line(line, &rel);
        }
    }
}

// ---------------------------------------------------------------- paths and -R

#[test]
fn missing_path_is_one_clear_line() {
    let out = silo(&["plan", "-f", "examples/no-such-dir/tenants.yaml"]);
    assert_no_panic(&out);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "examples/no-such-dir/tenants.yaml: -: -: no such file or directory\n"
    );

    // Together with valid input the missing path still fails the run.
    let out = silo(&["plan", "-f", "examples/", "-f", "nope.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out), "nope.yaml: -: -: no such file or directory\n");
    assert!(stdout(&out).is_empty());
}

#[test]
fn directory_without_manifests_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a manifest").unwrap();
    let d = dir.path().display().to_string();
    let out = silo(&["plan", "-f", &d]);
    assert_no_panic(&out);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        format!("{d}: -: -: no .yaml, .yml or .json files found\n")
    );
}

const TENANT_ROOT: &str = "apiVersion: silo.dev/v1alpha1
kind: Tenant
metadata:
  name: acme
spec:
  displayName: Acme Tracking
";

const TENANT_CHILD: &str = "apiVersion: silo.dev/v1alpha1
kind: Tenant
metadata:
  name: acme-dealer
spec:
  parent: acme
  displayName: Acme Dealer
";

#[test]
fn directories_are_read_one_level_deep_unless_recursive() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("00-root.yaml"), TENANT_ROOT).unwrap();
    std::fs::create_dir(dir.path().join("dealers")).unwrap();
    std::fs::write(dir.path().join("dealers/acme-dealer.yml"), TENANT_CHILD).unwrap();
    let d = dir.path().display().to_string();

    let flat = silo(&["plan", "-f", &d]);
    assert!(flat.status.success(), "{}", stderr(&flat));
    let text = stdout(&flat);
    assert!(text.starts_with("1 tenants,"), "{text}");
    assert!(!text.contains("acme-dealer"), "{text}");

    for flag in ["-R", "--recursive"] {
        let deep = silo(&["plan", flag, "-f", &d]);
        assert!(deep.status.success(), "{}", stderr(&deep));
        let text = stdout(&deep);
        assert!(text.starts_with("2 tenants,"), "{text}");
        assert!(text.contains("└── acme-dealer (Siloed, depth 2)"), "{text}");
    }

    // plan -f examples/ skips examples/invalid/; with -R it reads (and rejects) them.
    let ok = silo(&["plan", "-f", "examples/"]);
    assert!(ok.status.success());
    let all = silo(&["plan", "-R", "-f", "examples/"]);
    assert_no_panic(&all);
    assert_eq!(all.status.code(), Some(1));
    let err = stderr(&all);
    assert!(err.lines().all(|l| l.starts_with("examples/")), "{err}");
    assert!(err.contains("examples/invalid/"), "{err}");
}

#[test]
fn every_problem_in_one_file_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("three-problems.yaml");
    let text = format!(
        "{TENANT_ROOT}---
apiVersion: silo.dev/v1alpha1
kind: Tenant
metadata:
  name: orphan
spec:
  parent: nobody
---
apiVersion: silo.dev/v1alpha1
kind: Tenant
metadata:
  name: typo
spec:
  parent: acme
  dispalyName: Typo Ltd
---
apiVersion: silo.dev/v1alpha1
kind: Tenant
metadata:
  name: greedy
spec:
  parent: acme
  limits:
    memory: lots
"
    );
    std::fs::write(&file, text).unwrap();
    let f = file.display().to_string();
    let out = silo(&["plan", "-f", &f]);
    assert_no_panic(&out);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 3, "{err}");
    for l in &lines {
        assert_problem_line(l, &f);
    }
    let want = [
        format!("{f}: Tenant/typo: spec.dispalyName: unknown field"),
        format!("{f}: Tenant/orphan: spec.parent: parent tenant \"nobody\" does not exist"),
        format!("{f}: Tenant/greedy: spec.limits.memory: invalid quantity \"lots\""),
    ];
    for w in &want {
        assert!(
            lines.iter().any(|l| l.starts_with(w.as_str())),
            "missing {w:?} in:\n{err}"
        );
    }
}

#[test]
fn problems_in_several_files_name_each_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.yaml"), TENANT_ROOT).unwrap();
    std::fs::write(
        dir.path().join("b.yaml"),
        TENANT_CHILD.replace("parent: acme", "parent: acme-holding"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("c.json"),
        "{\"apiVersion\": \"v1\", \"kind\": \"Tenant\", \"metadata\": {\"name\": \"x\"}}",
    )
    .unwrap();
    let d = dir.path().display().to_string();
    let out = silo(&["plan", "-f", &d]);
    assert_no_panic(&out);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    let b = dir.path().join("b.yaml").display().to_string();
    let c = dir.path().join("c.json").display().to_string();
    assert!(
        err.contains(&format!(
            "{b}: Tenant/acme-dealer: spec.parent: parent tenant \"acme-holding\" does not exist"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{c}: Tenant/x: apiVersion: unknown apiVersion \"v1\""
        )),
        "{err}"
    );
    assert_eq!(err.lines().count(), 2, "{err}");
}

// ---------------------------------------------------------------- extreme values

/// Writes `text` to a temporary file and runs `silo plan -f FILE ARGS…`.
fn plan_text(text: &str, args: &[&str]) -> (String, Output) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("input.yaml");
    std::fs::write(&file, text).unwrap();
    let f = file.display().to_string();
    let mut all = vec!["plan", "-f", f.as_str()];
    all.extend_from_slice(args);
    let out = silo(&all);
    assert_no_panic(&out);
    (f, out)
}

#[test]
fn huge_observed_usage_is_counted_without_overflow() {
    let child = |name: &str| {
        format!(
            "---\napiVersion: silo.dev/v1alpha1\nkind: Tenant\nmetadata: {{name: {name}}}\n\
             spec: {{parent: acme}}\nstatus: {{usage: {{own: {{devices: {}}}}}}}\n",
            i64::MAX
        )
    };
    let root = "apiVersion: silo.dev/v1alpha1\nkind: Tenant\nmetadata: {name: acme}\n\
                spec: {limits: {devices: 5}}\n";
    let (f, out) = plan_text(&format!("{root}{}{}", child("a"), child("b")), &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        format!(
            "{f}: Tenant/acme: spec.limits.devices: the subtree uses {} devices, but this tenant allows at most 5\n",
            i64::MAX
        )
    );
}

#[test]
fn huge_quotas_are_rejected_without_overflow() {
    // The largest quotas (2^63 - 1 units each): their sum is exact, not wrapped.
    let text = "apiVersion: silo.dev/v1alpha1\nkind: Tenant\nmetadata: {name: acme}\n\
                spec: {limits: {cpu: 1}}\n---\n\
                apiVersion: silo.dev/v1alpha1\nkind: Tenant\nmetadata: {name: a}\n\
                spec: {parent: acme, limits: {cpu: 9223372036854775807}}\n---\n\
                apiVersion: silo.dev/v1alpha1\nkind: Tenant\nmetadata: {name: b}\n\
                spec: {parent: acme, limits: {cpu: 9223372036854775807}}\n";
    let (f, out) = plan_text(text, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        format!(
            "{f}: Tenant/acme: spec.limits.cpu: direct children together ask for 18446744073709551614 cpu (a=9223372036854775807, b=9223372036854775807), more than this tenant's 1\n"
        )
    );
    // Each child's cpu fits in i128 thousandths but their sum would not: such values are
    // not quotas at all (and are not reported twice, as missing too).
    let text = "apiVersion: silo.dev/v1alpha1\nkind: Tenant\nmetadata: {name: acme}\n\
                spec: {limits: {cpu: 1}}\n---\n\
                apiVersion: silo.dev/v1alpha1\nkind: Tenant\nmetadata: {name: a}\n\
                spec: {parent: acme, limits: {cpu: 100000000000000000E}}\n---\n\
                apiVersion: silo.dev/v1alpha1\nkind: Tenant\nmetadata: {name: b}\n\
                spec: {parent: acme, limits: {cpu: 100000000000000000E}}\n";
    let (f, out) = plan_text(text, &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 2, "{err}");
    for t in ["a", "b"] {
        assert!(
            err.contains(&format!("{f}: Tenant/{t}: spec.limits.cpu: quantity \"100000000000000000E\" is too large for a quota")),
            "{err}"
        );
    }

    // Rounding a value at the very top of the range up to thousandths.
    let text = "apiVersion: silo.dev/v1alpha1\nkind: Tenant\nmetadata: {name: acme}\n\
                spec: {limits: {memory: \"170141183460469231731687303715884.105\"}}\n";
    let (f, out) = plan_text(text, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        format!(
            "{f}: Tenant/acme: spec.limits.memory: quantity \"170141183460469231731687303715884.105\" is too large\n"
        )
    );
}

#[test]
fn cpu_and_pod_quotas_stay_decimal() {
    let text = "apiVersion: silo.dev/v1alpha1\nkind: Tenant\nmetadata: {name: acme}\n\
                spec: {limits: {cpu: 1024, pods: 2048, memory: 2Gi}}\n";
    let (_, out) = plan_text(text, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("| cpu 1024 memory 2Gi pods 2048"),
        "{}",
        stdout(&out)
    );
    let (_, out) = plan_text(text, &["-o", "yaml"]);
    let quota = yaml_documents(&stdout(&out))
        .into_iter()
        .find(|o| o["kind"] == "ResourceQuota")
        .expect("ResourceQuota");
    let hard = &quota["spec"]["hard"];
    assert_eq!(hard["requests.cpu"], "1024");
    assert_eq!(hard["limits.cpu"], "1024");
    assert_eq!(hard["pods"], "2048");
    assert_eq!(hard["requests.memory"], "2Gi");
}

#[test]
fn fields_rendered_into_workloads_are_validated() {
    let text = "apiVersion: silo.dev/v1alpha1\nkind: Tenant\nmetadata: {name: acme}\n\
                spec:\n  database: {storage: lots}\n  mqtt: {maxConnections: -5}\n\
                \x20 encryption: {rotationDays: 0}\n";
    let (f, out) = plan_text(text, &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    for want in [
        format!("{f}: Tenant/acme: spec.database.storage: invalid quantity \"lots\""),
        format!("{f}: Tenant/acme: spec.mqtt.maxConnections: -5 is not allowed"),
        format!("{f}: Tenant/acme: spec.encryption.rotationDays: 0 is not allowed"),
    ] {
        assert!(
            err.lines().any(|l| l.starts_with(&want)),
            "{want:?} in:\n{err}"
        );
    }
    assert_eq!(err.lines().count(), 3, "{err}");
}
