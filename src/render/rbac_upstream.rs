//! Our tenant Roles against Kubernetes' own (issue #10, part 5): `silo-admin` ⊆ `admin`,
//! `silo-technician` ⊆ `edit`, `silo-viewer` ⊆ `view`, resource by resource and verb by verb,
//! minus what tenants must not do at all. The upstream rules are the bootstrap ClusterRoles of
//! kube-apiserver 1.28 (aggregated), captured into
//! `tests/fixtures/k8s-builtin-clusterroles.json` by
//! `tests/fixtures/capture-builtin-clusterroles.sh` (see `tests/fixtures/README.md`).

use k8s_openapi::api::rbac::v1::PolicyRule;
use serde::Deserialize;

use super::Context;
use super::rbac::{ADMIN_ROLE, TECHNICIAN_ROLE, VIEWER_ROLE, roles};
use crate::config::PlatformConfig;
use crate::hierarchy::{EngineSettings, Inventory, TenantTree};
use crate::types::{Tenant, TenantSpec};

const FIXTURE: &str = include_str!("../../tests/fixtures/k8s-builtin-clusterroles.json");

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Fixture {
    kubernetes_version: String,
    cluster_roles: Vec<FixtureRole>,
}

#[derive(Deserialize)]
struct FixtureRole {
    name: String,
    rules: Vec<PolicyRule>,
}

fn upstream(name: &str) -> Vec<PolicyRule> {
    let f: Fixture = serde_json::from_str(FIXTURE).expect("fixture parses");
    assert_eq!(f.kubernetes_version, "v1.28.0");
    f.cluster_roles
        .into_iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no ClusterRole {name} in the fixture"))
        .rules
}

/// (apiGroup, resource, verb) triples a list of rules grants (no resourceNames in ours).
fn triples(rules: &[PolicyRule]) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for r in rules {
        assert!(
            r.resource_names.as_ref().is_none_or(Vec::is_empty),
            "resourceNames are not compared: {r:?}"
        );
        for g in r.api_groups.iter().flatten() {
            for res in r.resources.iter().flatten() {
                for v in &r.verbs {
                    out.push((g.clone(), res.clone(), v.clone()));
                }
            }
        }
    }
    out
}

/// Whether `rules` grant `verb` on `group`/`resource` (RBAC matching: exact names or `*`;
/// rules with resourceNames grant only those names, so they never count here).
fn allows(rules: &[PolicyRule], group: &str, resource: &str, verb: &str) -> bool {
    let has = |list: &[String], x: &str| list.iter().any(|v| v == x || v == "*");
    rules.iter().any(|r| {
        r.resource_names.as_ref().is_none_or(Vec::is_empty)
            && has(r.api_groups.as_deref().unwrap_or_default(), group)
            && has(r.resources.as_deref().unwrap_or_default(), resource)
            && has(&r.verbs, verb)
    })
}

/// Our three Roles by name.
fn ours() -> Vec<(String, Vec<PolicyRule>)> {
    let tree = TenantTree::build(
        Inventory {
            tenants: vec![Tenant::new("acme", TenantSpec::default())],
            ..Default::default()
        },
        EngineSettings::default(),
    );
    let config = PlatformConfig::default();
    let cx = Context::new(&tree, tree.get("acme").expect("acme"), &config);
    roles(&cx)
        .into_iter()
        .map(|r| {
            (
                r.metadata.name.clone().unwrap_or_default(),
                r.rules.unwrap_or_default(),
            )
        })
        .collect()
}

fn role<'a>(all: &'a [(String, Vec<PolicyRule>)], name: &str) -> &'a [PolicyRule] {
    &all.iter().find(|(n, _)| n == name).expect("role").1
}

const PAIRS: [(&str, &str); 3] = [
    (ADMIN_ROLE, "admin"),
    (TECHNICIAN_ROLE, "edit"),
    (VIEWER_ROLE, "view"),
];

const WRITE_VERBS: [&str; 6] = [
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
    "*",
];

#[test]
fn every_permission_of_our_roles_is_granted_by_the_kubernetes_role_of_that_level() {
    let ours = ours();
    for (mine, theirs) in PAIRS {
        let upstream = upstream(theirs);
        let wider: Vec<String> = triples(role(&ours, mine))
            .into_iter()
            .filter(|(g, r, v)| !allows(&upstream, g, r, v))
            .map(|(g, r, v)| format!("{v} {r} (apiGroup {g:?})"))
            .collect();
        assert!(
            wider.is_empty(),
            "{mine} grants what Kubernetes 1.28's {theirs} does not: {wider:?}"
        );
    }
}

/// Issue #10 (5) and its kin: what no tenant role may grant, even where upstream does.
#[test]
fn no_tenant_role_crosses_the_silo_walls() {
    let ours = ours();
    // (apiGroup, resource) nobody in a tenant may write: the silo's walls (quota, limit range,
    // network policy, RBAC, the namespace itself) and the endpoints of Services
    // (CVE-2021-25740: a tenant could point its Service at another tenant's pods).
    let walls = [
        ("", "resourcequotas"),
        ("", "limitranges"),
        ("networking.k8s.io", "networkpolicies"),
        ("rbac.authorization.k8s.io", "roles"),
        ("rbac.authorization.k8s.io", "rolebindings"),
        ("", "namespaces"),
        ("", "endpoints"),
        ("discovery.k8s.io", "endpointslices"),
    ];
    for (name, rules) in &ours {
        for (g, r, v) in triples(rules) {
            assert!(
                !["escalate", "bind", "impersonate", "*"].contains(&v.as_str()),
                "{name}: {v} {r}"
            );
            assert!(g != "*" && r != "*", "{name}: wildcard {g:?}/{r:?}");
        }
        for (g, r) in walls {
            for v in WRITE_VERBS {
                assert!(!allows(rules, g, r, v), "{name} may {v} {r}");
            }
        }
        assert!(
            !allows(rules, "", "serviceaccounts", "impersonate"),
            "{name} may impersonate"
        );
    }
    // Viewers read, and not secrets; they cannot reach into pods.
    let viewer = role(&ours, VIEWER_ROLE);
    for (_, r, v) in triples(viewer) {
        assert!(
            ["get", "list", "watch"].contains(&v.as_str()),
            "viewer may {v} {r}"
        );
    }
    for r in [
        "pods/exec",
        "pods/attach",
        "pods/portforward",
        "pods/proxy",
        "services/proxy",
    ] {
        for v in ["get", "create"] {
            assert!(!allows(viewer, "", r, v), "viewer may {v} {r}");
        }
    }
    for (name, rules) in [
        (VIEWER_ROLE, viewer),
        (TECHNICIAN_ROLE, role(&ours, TECHNICIAN_ROLE)),
    ] {
        for v in ["get", "list", "watch"] {
            assert!(!allows(rules, "", "secrets", v), "{name} may {v} secrets");
        }
    }
}

/// The comparison can fail: the fixture is the real 1.28 policy, which no longer lets `admin`
/// or `edit` write Endpoints (what `silo-admin` used to grant) yet lets them read them, and
/// whose `view` has neither secrets nor pods/exec.
#[test]
fn the_fixture_is_the_upstream_policy_after_cve_2021_25740() {
    for theirs in ["admin", "edit"] {
        let rules = upstream(theirs);
        assert!(allows(&rules, "", "endpoints", "get"), "{theirs}");
        assert!(!allows(&rules, "", "endpoints", "create"), "{theirs}");
        assert!(!allows(&rules, "", "endpoints", "update"), "{theirs}");
        assert!(
            !allows(&rules, "discovery.k8s.io", "endpointslices", "create"),
            "{theirs}"
        );
        assert!(allows(&rules, "", "pods/exec", "create"), "{theirs}");
        assert!(allows(&rules, "", "secrets", "get"), "{theirs}");
    }
    let view = upstream("view");
    assert!(!allows(&view, "", "secrets", "get"));
    assert!(!allows(&view, "", "pods/exec", "create"));
    assert!(allows(&view, "", "pods/log", "get"));
    assert!(!allows(
        &upstream("admin"),
        "events.k8s.io",
        "events",
        "get"
    ));
    // What silo-admin granted before this check: Endpoints writes and pods/log create.
    let old_admin = vec![PolicyRule {
        api_groups: Some(vec![String::new()]),
        resources: Some(vec!["endpoints".into(), "pods/log".into()]),
        verbs: vec!["create".into(), "update".into()],
        ..Default::default()
    }];
    let admin = upstream("admin");
    assert!(
        triples(&old_admin)
            .iter()
            .all(|(g, r, v)| !allows(&admin, g, r, v))
    );
}
