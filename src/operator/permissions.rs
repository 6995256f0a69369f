//! The Kubernetes permissions the operator uses: one row per (apiGroup, resource) with the
//! exact verbs the code sends. The ClusterRole in `operator/` and `charts/silo` must grant
//! exactly these (a test compares them), so every API call added to the operator adds its
//! verb here.

use crate::render::OwnedKind;

/// One rule: API group (`""` = core), resource (`x/status` for a subresource), verbs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Permission {
    pub api_group: &'static str,
    pub resource: &'static str,
    pub verbs: &'static [&'static str],
}

const fn p(
    api_group: &'static str,
    resource: &'static str,
    verbs: &'static [&'static str],
) -> Permission {
    Permission {
        api_group,
        resource,
        verbs,
    }
}

/// Objects the operator owns per tenant: watched (metadata), applied with server-side apply
/// (`patch`; `create` because an apply that creates the object is also authorised as create),
/// read back (`get`: readiness of workloads) and removed when no longer desired (`delete`).
const OWNED: &[&str] = &["get", "list", "watch", "create", "patch", "delete"];

/// The tenant Roles grant rights the operator does not hold itself (pods, jobs, …), so it
/// needs `escalate` to write them and `bind` to bind subjects to them.
const OWNED_ROLES: &[&str] = &[
    "get", "list", "watch", "create", "patch", "delete", "escalate", "bind",
];

/// The verbs on an owned kind ([`OwnedKind`], the one list in `render/mod.rs`).
fn owned_verbs(kind: OwnedKind) -> &'static [&'static str] {
    match kind {
        OwnedKind::Role => OWNED_ROLES,
        _ => OWNED,
    }
}

/// Permissions beyond the owned kinds, in a stable order.
const OTHER_PERMISSIONS: &[Permission] = &[
    // The silo.dev kinds: Tenants are reconciled (finalizer added/removed by a merge patch
    // on the main resource, status by server-side apply on the status subresource) and,
    // under deletionPolicy Cascade, a deleted tenant's descendants are deleted bottom-up.
    p(
        "silo.dev",
        "tenants",
        &["get", "list", "watch", "patch", "delete"],
    ),
    p("silo.dev", "tenants/status", &["get", "patch"]),
    p("silo.dev", "tenants/finalizers", &["update"]),
    p("silo.dev", "limitprofiles", &["get", "list", "watch"]),
    p("silo.dev", "channels", &["get", "list", "watch"]),
    // Channel status (tenants using it, endpoint), by server-side apply.
    p("silo.dev", "channels/status", &["get", "patch"]),
    // Start-up check that the CRDs are installed and established.
    p(
        "apiextensions.k8s.io",
        "customresourcedefinitions",
        &["get", "list", "watch"],
    ),
    // Volume claims of a siloed database: read and grown (merge patch of the storage
    // request) when `spec.database.storage` grows, before its StatefulSet is replaced.
    p("", "persistentvolumeclaims", &["get", "patch"]),
    // Secrets also hold the local key provider's keyring in the platform namespace
    // (`silo-keyring` plus one `silo-key-*` Secret per tenant key record, labelled
    // `silo.dev/keyring=true`: get, list by that label, create, a merge patch guarded by
    // resourceVersion, and a delete with a resourceVersion precondition), and are read
    // (`get`), created (`create`) and, for a broker certificate renewal, merge-patched
    // (`patch`) directly by `operator::secrets`; watched (metadata) like the owned kinds and
    // deleted when a tenant switches isolation; never replaced (`update`).
    p("", "secrets", OWNED),
    // Events on Tenants (kube-runtime's recorder writes events.k8s.io/v1 and patches a
    // repeated event's series).
    p("events.k8s.io", "events", &["create", "patch"]),
    // The admission webhook: the leader server-side applies the ValidatingWebhookConfiguration
    // `silo-validating` with the current caBundle (`create` authorises the apply that creates
    // it); its certificate Secret uses the `secrets` grant above.
    p(
        "admissionregistration.k8s.io",
        "validatingwebhookconfigurations",
        &["create", "patch"],
    ),
    // Leader election.
    p(
        "coordination.k8s.io",
        "leases",
        &["get", "create", "update"],
    ),
];

/// Every permission the operator needs: one row per owned kind (derived from [`OwnedKind`]),
/// then the others. The ClusterRole in `operator/` and `charts/silo` must grant exactly these.
pub fn permissions() -> Vec<Permission> {
    OwnedKind::ALL
        .iter()
        .map(|k| p(k.group(), k.plural(), owned_verbs(*k)))
        .chain(OTHER_PERMISSIONS.iter().copied())
        .collect()
}

// What the table grants is checked against behaviour, not restated here: the envtest suite runs
// the real operator under the ClusterRole of `operator/rbac.yaml` and asserts that the API
// server's audit log holds no forbidden request of the operator (`tests/envtest_*.rs`,
// `forbidden_for`), and `tests/install_manifests.rs` compares that ClusterRole with this table
// both ways.
#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn each_resource_is_listed_once() {
        let mut seen = BTreeSet::new();
        for p in permissions() {
            assert!(
                seen.insert((p.api_group, p.resource)),
                "{}/{} listed twice",
                p.api_group,
                p.resource
            );
            let verbs: BTreeSet<_> = p.verbs.iter().collect();
            assert_eq!(
                verbs.len(),
                p.verbs.len(),
                "duplicate verb on {}",
                p.resource
            );
        }
    }
}
