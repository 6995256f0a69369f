//! The Kubernetes permissions `silo api` uses: one row per (apiGroup, resource) with the
//! exact verbs the code sends. The ClusterRole `silo-api` in `operator/api/` and
//! `charts/silo` must grant exactly these (a test compares them), so every API call added to
//! `api::cluster` adds its verb here. Self-contained (no crate imports): the install test
//! compiles this file on its own.

/// One rule: API group, resource, verbs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Permission {
    pub api_group: &'static str,
    pub resource: &'static str,
    pub verbs: &'static [&'static str],
}

/// Every permission of the API's ServiceAccount, in a stable order. Reads come from watches
/// (`list`, `watch`; also the start-up check that the CRDs are served); creations are `create`;
/// changes are server-side applies (`patch`); deletion of a Tenant is `delete`. Nothing
/// outside `silo.dev`: namespaces, Secrets and RBAC stay with the operator.
pub const PERMISSIONS: &[Permission] = &[
    Permission {
        api_group: "silo.dev",
        resource: "tenants",
        verbs: &["list", "watch", "create", "patch", "delete"],
    },
    Permission {
        api_group: "silo.dev",
        resource: "limitprofiles",
        verbs: &["list", "watch", "create"],
    },
    Permission {
        api_group: "silo.dev",
        resource: "channels",
        verbs: &["list", "watch", "create"],
    },
];
