//! Names, labels, owner references and security contexts shared by every rendered object.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, PodSecurityContext, SeccompProfile, SecurityContext,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use crate::types::{API_VERSION, Tenant};

pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGER: &str = "silo";
pub const TENANT_LABEL: &str = "silo.dev/tenant";
pub const PARENT_LABEL: &str = "silo.dev/parent";
pub const DEPTH_LABEL: &str = "silo.dev/depth";
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
pub const NAME_LABEL: &str = "app.kubernetes.io/name";

/// `<ancestor>.tree.silo.dev/depth`: present on the namespace of every tenant in the
/// ancestor's subtree (value: distance from it), so policies can select a whole subtree.
pub fn tree_label(ancestor: &str) -> String {
    format!("{ancestor}.tree.silo.dev/depth")
}

/// Labels every object of a tenant carries.
pub fn base_labels(tenant: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY.to_string(), MANAGER.to_string()),
        (TENANT_LABEL.to_string(), tenant.to_string()),
    ])
}

/// Owner reference to the Tenant, when it is known (objects read from files have no uid;
/// the operator always renders from the live object, which has one).
pub fn owner_refs(t: &Tenant) -> Option<Vec<OwnerReference>> {
    let uid = t.metadata.uid.clone()?;
    Some(vec![OwnerReference {
        api_version: API_VERSION.to_string(),
        kind: "Tenant".to_string(),
        name: t.name().to_string(),
        uid,
        controller: Some(true),
        block_owner_deletion: Some(true),
    }])
}

/// Metadata for an object in the tenant's namespace.
pub fn namespaced(t: &Tenant, namespace: &str, name: &str, extra: &[(&str, &str)]) -> ObjectMeta {
    let mut labels = base_labels(t.name());
    for (k, v) in extra {
        labels.insert((*k).to_string(), (*v).to_string());
    }
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(namespace.to_string()),
        labels: Some(labels),
        owner_references: owner_refs(t),
        ..Default::default()
    }
}

/// Pod security context that passes Pod Security Admission `restricted`.
pub fn restricted_pod(uid: i64) -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(uid),
        run_as_group: Some(uid),
        fs_group: Some(uid),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_string(),
            localhost_profile: None,
        }),
        ..Default::default()
    }
}

/// Container security context that passes Pod Security Admission `restricted`.
pub fn restricted_container() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_string()]),
            add: None,
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_string(),
            localhost_profile: None,
        }),
        ..Default::default()
    }
}

/// A Kubernetes-safe name fragment for free text (e-mail addresses as user names):
/// lower-case alphanumerics and '-', plus a short hash so distinct inputs never collide.
pub fn slug(input: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut s: String = input
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    s.truncate(30);
    let s = s.trim_matches('-').to_string();
    let hash = hex::encode(&Sha256::digest(input.as_bytes())[..4]);
    if s.is_empty() {
        hash
    } else {
        format!("{s}-{hash}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_valid_and_distinct() {
        let a = slug("Alice@Example.com");
        let b = slug("alice@example.com");
        assert_ne!(a, b, "case differences must not collide");
        assert!(a.starts_with("alice-example-com-"), "{a}");
        assert!(crate::config::is_dns_label(&a), "{a}");
        assert!(crate::config::is_dns_label(&slug("@@@")));
        assert!(slug(&"x".repeat(200)).len() <= 63);
    }
}
