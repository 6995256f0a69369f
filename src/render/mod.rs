//! Rendering: the full list of Kubernetes objects a tenant's silo consists of, as plain
//! functions of the analysed tree and the platform configuration. Deterministic: the same
//! input renders byte-identical objects, which is what lets the operator skip no-op writes.
//!
//! Secrets (database and broker credentials, TLS material) are referenced here by name and
//! filled by the operator and the key/PKI providers, never rendered from specs.

pub mod broker;
pub mod database;
pub mod immutable;
pub mod meta;
pub mod namespace;
pub mod network;
pub mod quota;
pub mod rbac;
pub mod settings;
pub mod workload;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{
    ConfigMap, LimitRange, Namespace, ResourceQuota, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::{Metadata, Resource};
use serde::Serialize;

use crate::config::PlatformConfig;
use crate::hierarchy::{NodeId, TenantTree};
use crate::types::{Isolation, Limits, Subject, Tenant};

/// What rendering needs to know about one tenant, taken from the analysed tree.
#[derive(Clone, Debug)]
pub struct Context<'a> {
    pub tenant: &'a Tenant,
    pub config: &'a PlatformConfig,
    pub namespace: String,
    pub depth: u32,
    /// Names from the root to the tenant.
    pub path: Vec<String>,
    /// The tenant or an ancestor is suspended.
    pub suspended: bool,
    pub effective_limits: Limits,
    /// The quotas of the tenant's own namespace (its ResourceQuota): what its subtree may use
    /// minus what its children were granted. Only the quota fields are set.
    pub namespace_quota: Limits,
    /// Admins of every ancestor, root first (subjects the rule of `hierarchy::people` refuses
    /// are left out, so an ancestor admitted before the rule cannot open this namespace).
    pub ancestor_admins: Vec<Subject>,
    pub settings: BTreeMap<String, serde_json::Value>,
    /// Custom roles held by the tenant's members, resolved on the tenant's path (nearest
    /// definition), sorted by name: each becomes the Role `silo-role-<name>`.
    pub custom_roles: Vec<crate::hierarchy::roles::ResolvedRole>,
}

impl<'a> Context<'a> {
    pub fn new(tree: &'a TenantTree, id: NodeId, config: &'a PlatformConfig) -> Self {
        let tenant = tree.tenant(id);
        let mut ancestors: Vec<NodeId> = tree.ancestors(id).collect();
        ancestors.reverse();
        Context {
            tenant,
            config,
            namespace: config.namespace_for(tenant.name()),
            depth: tree.node(id).depth,
            path: tree.path(id).into_iter().map(String::from).collect(),
            suspended: tree.suspended_by(id).is_some(),
            effective_limits: tree.effective_limits(id),
            namespace_quota: tree.namespace_quota(id),
            ancestor_admins: ancestors
                .iter()
                .flat_map(|&a| {
                    let ns = tree.settings().namespace_for(tree.name(a));
                    tree.tenant(a)
                        .spec
                        .admins
                        .iter()
                        .filter(move |s| crate::hierarchy::check_admin(s, &ns).is_ok())
                        .cloned()
                })
                .collect(),
            settings: tree.effective_settings(id),
            custom_roles: member_custom_roles(tree, id),
        }
    }
}

/// The custom roles the tenant's members hold (a role that does not resolve is refused by
/// admission and rendered as nothing: its RoleBinding then grants nothing).
fn member_custom_roles(
    tree: &TenantTree,
    id: NodeId,
) -> Vec<crate::hierarchy::roles::ResolvedRole> {
    let mut out: Vec<crate::hierarchy::roles::ResolvedRole> = Vec::new();
    for m in &tree.tenant(id).spec.members {
        if crate::hierarchy::roles::builtin_permissions(&m.role).is_some()
            || out.iter().any(|r| r.name == m.role)
        {
            continue;
        }
        if let Some(r) = tree.resolve_role(id, &m.role) {
            out.push(r);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The one list of the kinds the operator owns per tenant (issue #11): each line names the
/// [`DesiredObject`] variant and its Kubernetes type. From it come the rendered object set
/// ([`DesiredObject`]), the kinds ([`OwnedKind`], with the API group, version and plural the
/// operator's watches, owned-object index and RBAC permissions are derived from). Adding a
/// per-tenant kind is a line here plus the renderer that produces it; every `match` on the
/// kinds is exhaustive, so the compiler points at anything else that must know about it.
/// (Secrets are not in it: they are written by create/patch by the credential step, never
/// rendered from specs.)
macro_rules! owned_kinds {
    ($($variant:ident($ty:ty)),* $(,)?) => {
        /// One object the operator owns for a tenant.
        #[derive(Clone, Debug, PartialEq, Serialize)]
        #[serde(untagged)]
        pub enum DesiredObject {
            $($variant($ty),)*
        }

        /// A kind of object the operator owns per tenant (see the list in `render/mod.rs`).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum OwnedKind {
            $($variant,)*
        }

        impl OwnedKind {
            /// Every owned kind, in the order the list gives them.
            pub const ALL: &'static [OwnedKind] = &[$(OwnedKind::$variant,)*];

            /// `kind` as the API server spells it (`StatefulSet`).
            pub fn name(self) -> &'static str {
                match self {
                    $(OwnedKind::$variant => <$ty as Resource>::KIND,)*
                }
            }

            /// API group (`""` for core, `apps`, `rbac.authorization.k8s.io`, …).
            pub fn group(self) -> &'static str {
                match self {
                    $(OwnedKind::$variant => <$ty as Resource>::GROUP,)*
                }
            }

            /// API version within the group (`v1`).
            pub fn version(self) -> &'static str {
                match self {
                    $(OwnedKind::$variant => <$ty as Resource>::VERSION,)*
                }
            }

            /// `apiVersion` (`apps/v1`, `v1`).
            pub fn api_version(self) -> &'static str {
                match self {
                    $(OwnedKind::$variant => <$ty as Resource>::API_VERSION,)*
                }
            }

            /// The resource's plural, as RBAC rules and URLs name it (`statefulsets`).
            pub fn plural(self) -> &'static str {
                match self {
                    $(OwnedKind::$variant => <$ty as Resource>::URL_PATH_SEGMENT,)*
                }
            }

            /// The owned kind called `kind`, if it is one.
            pub fn from_name(kind: &str) -> Option<OwnedKind> {
                OwnedKind::ALL.iter().copied().find(|k| k.name() == kind)
            }
        }

        macro_rules! each_variant {
            ($self:expr, $o:ident => $body:expr) => {
                match $self {
                    $(DesiredObject::$variant($o) => $body,)*
                }
            };
        }

        impl DesiredObject {
            /// The object's kind as an [`OwnedKind`].
            pub fn owned_kind(&self) -> OwnedKind {
                match self {
                    $(DesiredObject::$variant(_) => OwnedKind::$variant,)*
                }
            }
        }
    };
}

owned_kinds! {
    Namespace(Namespace),
    ResourceQuota(ResourceQuota),
    LimitRange(LimitRange),
    NetworkPolicy(NetworkPolicy),
    Role(Role),
    RoleBinding(RoleBinding),
    ServiceAccount(ServiceAccount),
    ConfigMap(ConfigMap),
    Service(Service),
    StatefulSet(StatefulSet),
    Deployment(Deployment),
}

impl std::fmt::Display for OwnedKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

fn kind_of<T: Resource>(_: &T) -> &'static str {
    T::KIND
}

fn api_version_of<T: Resource>(_: &T) -> &'static str {
    T::API_VERSION
}

impl DesiredObject {
    pub fn kind(&self) -> &'static str {
        each_variant!(self, o => kind_of(o))
    }

    pub fn api_version(&self) -> &'static str {
        each_variant!(self, o => api_version_of(o))
    }

    pub fn metadata(&self) -> &ObjectMeta {
        each_variant!(self, o => o.metadata())
    }

    pub fn name(&self) -> &str {
        self.metadata().name.as_deref().unwrap_or_default()
    }

    pub fn namespace(&self) -> Option<&str> {
        self.metadata().namespace.as_deref()
    }

    /// `Kind/namespace/name`, a stable identity for diffs and logs.
    pub fn key(&self) -> String {
        match self.namespace() {
            Some(ns) => format!("{}/{}/{}", self.kind(), ns, self.name()),
            None => format!("{}/{}", self.kind(), self.name()),
        }
    }

    /// The manifest as JSON (with apiVersion and kind), as sent to the API server.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

/// Every object the operator creates and owns for tenant `id`, in apply order.
pub fn render_tenant(tree: &TenantTree, id: NodeId, config: &PlatformConfig) -> Vec<DesiredObject> {
    let cx = Context::new(tree, id, config);
    render(&cx)
}

pub fn render(cx: &Context<'_>) -> Vec<DesiredObject> {
    let mut out = vec![DesiredObject::Namespace(namespace::namespace(cx))];
    if let Some(q) = quota::resource_quota(cx) {
        out.push(DesiredObject::ResourceQuota(q));
    }
    out.push(DesiredObject::LimitRange(quota::limit_range(cx)));
    out.push(DesiredObject::NetworkPolicy(network::network_policy(cx)));
    out.extend(rbac::roles(cx).into_iter().map(DesiredObject::Role));
    out.extend(
        rbac::role_bindings(cx)
            .into_iter()
            .map(DesiredObject::RoleBinding),
    );
    out.push(DesiredObject::ConfigMap(settings::settings_config_map(cx)));
    if cx.tenant.spec.isolation == Isolation::Siloed {
        out.push(DesiredObject::ServiceAccount(workload::service_account(cx)));
        out.push(DesiredObject::StatefulSet(database::statefulset(cx)));
        out.push(DesiredObject::Service(database::service(cx)));
        out.push(DesiredObject::ConfigMap(broker::config_map(cx)));
        out.push(DesiredObject::Deployment(broker::deployment(cx)));
        out.push(DesiredObject::Service(broker::service(cx)));
    }
    out
}

#[cfg(test)]
mod rbac_upstream;
#[cfg(test)]
mod tests;
