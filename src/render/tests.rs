//! Rendering: what a tenant's silo consists of, checked object by object and as snapshots.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{
    ConfigMap, LimitRange, Namespace, ResourceQuota, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};

use super::*;
use crate::hierarchy::{EngineSettings, Inventory, TenantTree};
use crate::types::tenant::DatabaseSpec;
use crate::types::{Member, QuantityValue, Subject, SubjectKind, TenantSpec};

fn sample_tree(suspend_dealer: bool) -> TenantTree {
    let admin = |name: &str| Subject {
        kind: SubjectKind::User,
        name: name.into(),
        namespace: None,
    };
    let mut acme = Tenant::new(
        "acme",
        TenantSpec {
            display_name: "ACME IoT".into(),
            admins: vec![admin("ceo@acme.io")],
            ..Default::default()
        },
    );
    acme.spec.limits.cpu = Some(QuantityValue::new("32"));
    // A custom role defined at the root, held by a member of dealer-7 (materialised there).
    acme.spec.roles = vec![crate::types::CustomRole {
        name: "auditor".into(),
        permissions: vec!["tenants.read".into(), "workloads.read".into()],
    }];
    acme.spec.settings = serde_json::from_value(
        serde_json::json!({"units": "metric", "branding": {"color": "blue"}}),
    )
    .unwrap_or_default();
    let mut north = Tenant::new(
        "north",
        TenantSpec {
            parent: Some("acme".into()),
            isolation: Isolation::Shared,
            admins: vec![admin("ops@north.io")],
            ..Default::default()
        },
    );
    north.spec.limits.cpu = Some(QuantityValue::new("8"));
    north.spec.limits.memory = Some(QuantityValue::new("16Gi"));
    let mut dealer = Tenant::new(
        "dealer-7",
        TenantSpec {
            parent: Some("north".into()),
            suspended: suspend_dealer,
            admins: vec![Subject {
                kind: SubjectKind::Group,
                name: "dealer-7-admins".into(),
                namespace: None,
            }],
            members: vec![
                Member {
                    user: "tech@dealer7.io".into(),
                    role: "technician".into(),
                },
                Member {
                    user: "boss@dealer7.io".into(),
                    role: "admin".into(),
                },
                Member {
                    user: "audit@dealer7.io".into(),
                    role: "auditor".into(),
                },
            ],
            database: Some(DatabaseSpec {
                version: Some("17".into()),
                storage: Some(QuantityValue::new("5Gi")),
            }),
            ..Default::default()
        },
    );
    dealer.spec.limits.cpu = Some(QuantityValue::new("4"));
    dealer.spec.limits.memory = Some(QuantityValue::new("6Gi"));
    dealer.spec.limits.pods = Some(QuantityValue::new("40"));
    dealer.spec.limits.mqtt_connections = Some(500);
    dealer.spec.settings =
        serde_json::from_value(serde_json::json!({"branding": {"color": "red"}}))
            .unwrap_or_default();
    dealer.metadata.uid = Some("1f0e4c1a-0000-4000-8000-000000000007".into());
    TenantTree::build(
        Inventory {
            tenants: vec![acme, north, dealer],
            ..Default::default()
        },
        EngineSettings::default(),
    )
}

fn objects_of(tree: &TenantTree, name: &str) -> Vec<DesiredObject> {
    let id = tree.get(name).expect("tenant exists");
    render_tenant(tree, id, &PlatformConfig::default())
}

fn find<'a>(objs: &'a [DesiredObject], kind: &str, name: &str) -> Option<&'a DesiredObject> {
    objs.iter().find(|o| o.kind() == kind && o.name() == name)
}

fn yaml(objs: &[DesiredObject]) -> String {
    objs.iter()
        .map(|o| format!("---\n{}", serde_norway::to_string(o).expect("serializes")))
        .collect()
}

#[test]
fn siloed_dealer_snapshot() {
    let tree = sample_tree(false);
    assert!(tree.problems().is_empty(), "{:?}", tree.problems());
    insta::assert_snapshot!("siloed_dealer", yaml(&objects_of(&tree, "dealer-7")));
}

#[test]
fn shared_distributor_snapshot() {
    let tree = sample_tree(false);
    insta::assert_snapshot!("shared_distributor", yaml(&objects_of(&tree, "north")));
}

#[test]
fn rendering_is_deterministic() {
    let a = yaml(&objects_of(&sample_tree(false), "dealer-7"));
    let b = yaml(&objects_of(&sample_tree(false), "dealer-7"));
    assert_eq!(a, b);
}

#[test]
fn every_object_parses_as_its_kubernetes_type() {
    let tree = sample_tree(false);
    for name in ["acme", "north", "dealer-7"] {
        for o in objects_of(&tree, name) {
            let v = o.to_json();
            assert_eq!(v["apiVersion"], o.api_version());
            assert_eq!(v["kind"], o.kind());
            let ok = match o.kind() {
                "Namespace" => serde_json::from_value::<Namespace>(v).is_ok(),
                "ResourceQuota" => serde_json::from_value::<ResourceQuota>(v).is_ok(),
                "LimitRange" => serde_json::from_value::<LimitRange>(v).is_ok(),
                "NetworkPolicy" => serde_json::from_value::<NetworkPolicy>(v).is_ok(),
                "Role" => serde_json::from_value::<Role>(v).is_ok(),
                "RoleBinding" => serde_json::from_value::<RoleBinding>(v).is_ok(),
                "ServiceAccount" => serde_json::from_value::<ServiceAccount>(v).is_ok(),
                "ConfigMap" => serde_json::from_value::<ConfigMap>(v).is_ok(),
                "Service" => serde_json::from_value::<Service>(v).is_ok(),
                "StatefulSet" => serde_json::from_value::<StatefulSet>(v).is_ok(),
                "Deployment" => serde_json::from_value::<Deployment>(v).is_ok(),
                other => panic!("unexpected kind {other}"),
            };
            assert!(ok, "{} does not parse", o.key());
        }
    }
}

#[test]
fn namespace_carries_tree_labels_and_pod_security() {
    let tree = sample_tree(false);
    let objs = objects_of(&tree, "dealer-7");
    let ns = find(&objs, "Namespace", "tenant-dealer-7").expect("namespace");
    let labels = ns.metadata().labels.clone().unwrap_or_default();
    assert_eq!(labels["silo.dev/tenant"], "dealer-7");
    assert_eq!(labels["silo.dev/parent"], "north");
    assert_eq!(labels["silo.dev/depth"], "3");
    assert_eq!(labels["dealer-7.tree.silo.dev/depth"], "0");
    assert_eq!(labels["north.tree.silo.dev/depth"], "1");
    assert_eq!(labels["acme.tree.silo.dev/depth"], "2");
    assert_eq!(labels["pod-security.kubernetes.io/enforce"], "restricted");
    // Owned by the Tenant, so nothing is orphaned.
    let owner = &ns.metadata().owner_references.clone().unwrap_or_default()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        ("Tenant", "dealer-7", Some(true))
    );
    // Every namespaced object lives in the tenant namespace.
    assert!(
        objs.iter()
            .skip(1)
            .all(|o| o.namespace() == Some("tenant-dealer-7"))
    );
}

fn hard_of(tree: &TenantTree, name: &str) -> std::collections::BTreeMap<String, String> {
    let objs = objects_of(tree, name);
    let Some(DesiredObject::ResourceQuota(q)) = find(&objs, "ResourceQuota", "silo-quota") else {
        panic!("no quota for {name}")
    };
    q.spec
        .as_ref()
        .and_then(|s| s.hard.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect()
}

#[test]
fn quota_is_what_the_children_do_not_take() {
    let tree = sample_tree(false);
    assert!(tree.problems().is_empty(), "{:?}", tree.problems());
    let dealer = hard_of(&tree, "dealer-7");
    assert_eq!(dealer["requests.cpu"], "4");
    assert_eq!(dealer["limits.cpu"], "4");
    assert_eq!(dealer["requests.memory"], "6Gi");
    assert_eq!(dealer["pods"], "40");
    // north: cpu 8 and memory 16Gi for its subtree, dealer-7 takes 4 and 6Gi.
    let north = hard_of(&tree, "north");
    assert_eq!(north["requests.cpu"], "4");
    assert_eq!(north["limits.memory"], "10Gi");
    assert!(!north.contains_key("pods"), "no pods quota above dealer-7");
    // acme: cpu 32, north takes 8; acme sets no memory, so its namespace has none.
    let acme = hard_of(&tree, "acme");
    assert_eq!(acme["requests.cpu"], "24");
    assert!(!acme.contains_key("requests.memory"));
}

#[test]
fn network_policy_admits_only_own_and_platform_namespace() {
    let tree = sample_tree(false);
    let objs = objects_of(&tree, "north");
    let Some(DesiredObject::NetworkPolicy(np)) = find(&objs, "NetworkPolicy", "silo-isolation")
    else {
        panic!("no policy")
    };
    let spec = np.spec.clone().unwrap_or_default();
    assert_eq!(spec.policy_types, Some(vec!["Ingress".to_string()]));
    let from = spec.ingress.unwrap_or_default()[0]
        .from
        .clone()
        .unwrap_or_default();
    assert_eq!(from.len(), 2);
    assert!(
        from[0].namespace_selector.is_none(),
        "first peer: same namespace only"
    );
    let sel = from[1]
        .namespace_selector
        .clone()
        .and_then(|s| s.match_labels)
        .unwrap_or_default();
    assert_eq!(sel["kubernetes.io/metadata.name"], "silo-system");
}

#[test]
fn rbac_binds_own_admins_ancestor_admins_and_each_member() {
    let tree = sample_tree(false);
    let objs = objects_of(&tree, "dealer-7");
    for role in ["silo-admin", "silo-technician", "silo-viewer"] {
        assert!(find(&objs, "Role", role).is_some(), "{role}");
    }
    let Some(DesiredObject::RoleBinding(anc)) = find(&objs, "RoleBinding", "silo-ancestor-admins")
    else {
        panic!("no ancestor binding")
    };
    let names: Vec<_> = anc
        .subjects
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, vec!["ceo@acme.io", "ops@north.io"], "root first");
    let members: Vec<_> = objs
        .iter()
        .filter(|o| o.kind() == "RoleBinding" && o.name().starts_with("silo-member-"))
        .collect();
    assert_eq!(members.len(), 3);
    let custom = members.iter().find_map(|o| match o {
        DesiredObject::RoleBinding(rb)
            if rb
                .subjects
                .as_ref()
                .is_some_and(|s| s[0].name == "audit@dealer7.io") =>
        {
            Some(rb.role_ref.name.clone())
        }
        _ => None,
    });
    assert_eq!(custom.as_deref(), Some("silo-role-auditor"));
    // No tenant role may touch the silo's walls.
    let Some(DesiredObject::Role(admin)) = find(&objs, "Role", "silo-admin") else {
        panic!()
    };
    for rule in admin.rules.clone().unwrap_or_default() {
        let resources = rule.resources.unwrap_or_default();
        let writes = rule
            .verbs
            .iter()
            .any(|v| v != "get" && v != "list" && v != "watch");
        for wall in [
            "resourcequotas",
            "limitranges",
            "networkpolicies",
            "roles",
            "rolebindings",
        ] {
            assert!(
                !(writes && resources.iter().any(|r| r == wall)),
                "admin may write {wall}"
            );
        }
    }
}

#[test]
fn siloed_workloads_follow_spec_and_config() {
    let tree = sample_tree(false);
    let objs = objects_of(&tree, "dealer-7");
    let Some(DesiredObject::StatefulSet(sts)) = find(&objs, "StatefulSet", "silo-postgres") else {
        panic!("no db")
    };
    let spec = sts.spec.clone().unwrap_or_default();
    assert_eq!(spec.replicas, Some(1));
    let pod = spec.template.spec.unwrap_or_default();
    assert_eq!(pod.containers[0].image.as_deref(), Some("postgres:17"));
    let pvc = &spec.volume_claim_templates.unwrap_or_default()[0];
    assert_eq!(
        pvc.spec
            .as_ref()
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.requests.as_ref())
            .map(|r| r["storage"].0.clone()),
        Some("5Gi".into())
    );
    let sc = pod.containers[0]
        .security_context
        .clone()
        .unwrap_or_default();
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        pod.security_context.and_then(|s| s.run_as_non_root),
        Some(true)
    );
    let Some(DesiredObject::ConfigMap(conf)) = find(&objs, "ConfigMap", "silo-mosquitto-config")
    else {
        panic!("no broker config")
    };
    let text = conf.data.clone().unwrap_or_default()["mosquitto.conf"].clone();
    let (global, listeners) = listeners_of(&text);
    assert!(global.contains(&"allow_anonymous false"), "{text}");
    let ports: Vec<&str> = listeners.iter().map(|(p, _)| *p).collect();
    assert_eq!(ports, ["8883", "8884"], "{text}");
    for (port, opts) in &listeners {
        assert!(opts.contains(&"max_connections 500"), "{port}: {text}");
        assert!(
            opts.contains(&"certfile /mosquitto/tls/tls.crt"),
            "{port}: {text}"
        );
    }
    let Some(DesiredObject::Service(svc)) = find(&objs, "Service", "silo-mosquitto") else {
        panic!("no broker svc")
    };
    let ports: Vec<(Option<String>, i32)> = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .map(|p| p.iter().map(|p| (p.name.clone(), p.port)).collect())
        .unwrap_or_default();
    assert_eq!(
        ports,
        [
            (Some("mqtts".to_string()), 8883),
            (Some("mqtts-cert".to_string()), 8884)
        ]
    );
}

/// A `mosquitto.conf` split into the options before the first `listener` line and, per
/// listener, its port and options (comments and blank lines dropped).
fn listeners_of(text: &str) -> (Vec<&str>, Vec<(&str, Vec<&str>)>) {
    let mut global = Vec::new();
    let mut listeners: Vec<(&str, Vec<&str>)> = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(port) = line.strip_prefix("listener ") {
            listeners.push((port, Vec::new()));
        } else if let Some((_, opts)) = listeners.last_mut() {
            opts.push(line);
        } else {
            global.push(line);
        }
    }
    (global, listeners)
}

/// A one-tenant tree: root `t` (Siloed) with `limit` as its `mqttConnections` and `own` as
/// `spec.mqtt.maxConnections`.
fn broker_tree(limit: Option<i64>, own: Option<i64>) -> TenantTree {
    let mut t = Tenant::new(
        "t",
        TenantSpec {
            display_name: "T".into(),
            ..Default::default()
        },
    );
    t.spec.limits.mqtt_connections = limit;
    t.spec.mqtt = own.map(|v| crate::types::tenant::MqttSpec {
        max_connections: Some(v),
    });
    TenantTree::build(
        Inventory {
            tenants: vec![t],
            ..Default::default()
        },
        EngineSettings::default(),
    )
}

#[test]
fn broker_listeners_are_exactly_the_two_tls_ones_with_nothing_before_the_first() {
    let tree = broker_tree(Some(7), None);
    let id = tree.get("t").expect("t");
    let cfg = PlatformConfig::default();
    let cx = Context::new(&tree, id, &cfg);
    let text = broker::mosquitto_conf(&cx);
    let (global, listeners) = listeners_of(&text);
    // Mosquitto turns any listener option written before the first `listener` line into an
    // implicit plaintext listener on 1883: only global options may come first.
    assert_eq!(
        global,
        [
            "per_listener_settings false",
            "allow_anonymous false",
            "password_file /mosquitto/auth/passwd",
            "persistence false",
            "log_dest stderr",
        ],
        "{text}"
    );
    assert_eq!(
        listeners,
        [
            (
                "8883",
                vec![
                    "max_connections 7",
                    "certfile /mosquitto/tls/tls.crt",
                    "keyfile /mosquitto/tls/tls.key",
                    "tls_version tlsv1.2",
                ]
            ),
            (
                "8884",
                vec![
                    "max_connections 7",
                    "cafile /mosquitto/tls/client-ca.crt",
                    "certfile /mosquitto/tls/tls.crt",
                    "keyfile /mosquitto/tls/tls.key",
                    "tls_version tlsv1.2",
                    "require_certificate true",
                    "use_identity_as_username true",
                ]
            ),
        ],
        "{text}"
    );
}

#[test]
fn broker_cap_is_the_tighter_of_spec_and_limit_and_zero_stops_the_broker() {
    let cfg = PlatformConfig::default();
    for (limit, own, cap, replicas) in [
        (None, None, -1, 1),
        (Some(500), None, 500, 1),
        (None, Some(40), 40, 1),
        (Some(500), Some(40), 40, 1),
        (Some(30), Some(40), 30, 1),
        (Some(-1), Some(40), 40, 1),
        (Some(0), None, 0, 0),
        (Some(500), Some(0), 0, 0),
    ] {
        let tree = broker_tree(limit, own);
        let id = tree.get("t").expect("t");
        let cx = Context::new(&tree, id, &cfg);
        assert_eq!(broker::max_connections(&cx), cap, "{limit:?} {own:?}");
        let text = broker::mosquitto_conf(&cx);
        assert_eq!(
            text.matches(&format!("max_connections {cap}\n")).count(),
            2,
            "{text}"
        );
        let dep = broker::deployment(&cx);
        assert_eq!(
            dep.spec.and_then(|s| s.replicas),
            Some(replicas),
            "{limit:?} {own:?}"
        );
    }
}

#[test]
fn shared_tenants_get_no_workloads() {
    let tree = sample_tree(false);
    let objs = objects_of(&tree, "north");
    assert!(
        !objs
            .iter()
            .any(|o| matches!(o.kind(), "StatefulSet" | "Deployment" | "ServiceAccount"))
    );
    assert!(find(&objs, "ConfigMap", "silo-settings").is_some());
}

#[test]
fn suspension_scales_to_zero_and_keeps_only_admin_access() {
    let tree = sample_tree(true);
    let objs = objects_of(&tree, "dealer-7");
    let Some(DesiredObject::StatefulSet(sts)) = find(&objs, "StatefulSet", "silo-postgres") else {
        panic!()
    };
    assert_eq!(sts.spec.as_ref().and_then(|s| s.replicas), Some(0));
    let Some(DesiredObject::Deployment(dep)) = find(&objs, "Deployment", "silo-mosquitto") else {
        panic!()
    };
    assert_eq!(dep.spec.as_ref().and_then(|s| s.replicas), Some(0));
    let members: Vec<_> = objs
        .iter()
        .filter(|o| o.name().starts_with("silo-member-"))
        .collect();
    assert_eq!(members.len(), 1, "only the admin member keeps access");
    assert!(find(&objs, "RoleBinding", "silo-admins").is_some());
    // The suspended silo differs from the running one only by the dropped member bindings
    // (and replicas): resuming renders the running set again, nothing else is lost.
    let running: Vec<String> = objects_of(&sample_tree(false), "dealer-7")
        .iter()
        .map(DesiredObject::key)
        .collect();
    let suspended: Vec<String> = objs.iter().map(DesiredObject::key).collect();
    let dropped: Vec<&String> = running.iter().filter(|k| !suspended.contains(k)).collect();
    assert_eq!(dropped.len(), 2, "{dropped:?}");
    assert!(
        dropped
            .iter()
            .all(|k| k.starts_with("RoleBinding/tenant-dealer-7/silo-member-"))
    );
    assert!(suspended.iter().all(|k| running.contains(k)));
}

#[test]
fn settings_config_map_holds_effective_settings() {
    let tree = sample_tree(false);
    let objs = objects_of(&tree, "dealer-7");
    let Some(DesiredObject::ConfigMap(cm)) = find(&objs, "ConfigMap", "silo-settings") else {
        panic!()
    };
    let data = cm.data.clone().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&data["settings.json"]).expect("json");
    assert_eq!(
        v,
        serde_json::json!({"units": "metric", "branding": {"color": "red"}})
    );
    assert_eq!(data["path"], "acme/north/dealer-7");
}

/// An ancestor admitted before the subject rule (or behind the webhook's back) with an admin
/// that means everyone does not open its descendants' namespaces: the descendants' ancestor
/// binding leaves that subject out (the ancestor itself is reported and not reconciled).
#[test]
fn ancestor_admins_that_mean_everyone_are_not_bound_below() {
    let mut tree = sample_tree(false);
    let mut acme = tree.tenant(tree.get("acme").unwrap()).clone();
    acme.spec.admins.push(Subject {
        kind: SubjectKind::Group,
        name: "system:authenticated".into(),
        namespace: None,
    });
    acme.spec.admins.push(Subject {
        kind: SubjectKind::ServiceAccount,
        name: "default".into(),
        namespace: Some("tenant-dealer-7".into()),
    });
    tree.upsert_tenant(acme);
    assert!(
        tree.problems().is_empty(),
        "incremental: problems are the last build's"
    );
    let full = TenantTree::build(tree.inventory().clone(), EngineSettings::default());
    assert_eq!(
        full.problems()
            .iter()
            .map(|p| (p.name.as_str(), p.kind))
            .collect::<Vec<_>>(),
        [
            ("acme", crate::hierarchy::ProblemKind::SubjectTooBroad),
            ("acme", crate::hierarchy::ProblemKind::SubjectTooBroad)
        ]
    );
    for t in [&tree, &full] {
        let objs = objects_of(t, "dealer-7");
        let Some(DesiredObject::RoleBinding(anc)) =
            find(&objs, "RoleBinding", "silo-ancestor-admins")
        else {
            panic!("no ancestor binding")
        };
        let names: Vec<_> = anc
            .subjects
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, vec!["ceo@acme.io", "ops@north.io"]);
    }
}
