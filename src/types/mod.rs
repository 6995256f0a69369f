//! The API types: `silo.dev/v1alpha1` kinds Tenant, LimitProfile and Channel.

pub mod channel;
pub mod limits;
pub mod profile;
pub mod quantity;
mod schema;
pub mod tenant;

use kube::CustomResourceExt;

pub use channel::{Channel, ChannelSpec, ChannelStatus, Visibility};
pub use limits::{CountResource, Limits, QuotaResource, UsageCounts};
pub use profile::{LimitProfile, LimitProfileSpec};
pub use quantity::QuantityValue;
pub use tenant::{
    CustomRole, Isolation, Member, Phase, Subject, SubjectKind, Tenant, TenantLinks, TenantSpec,
    TenantStatus,
};

pub const GROUP: &str = "silo.dev";
pub const VERSION: &str = "v1alpha1";
pub const API_VERSION: &str = "silo.dev/v1alpha1";

/// The annotation `kubectl apply` (client-side) keeps a whole copy of the object in.
pub const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops what no reader of a watch cache uses from an object before it is cached: its
/// `managedFields` (every field manager's field set: often larger than the spec and status
/// together) and the `kubectl apply` copy of the object ([`LAST_APPLIED_ANNOTATION`]). The
/// operator's and the webhook's caches hold every Tenant, LimitProfile and Channel.
pub fn trim_for_cache<K: kube::Resource>(o: &mut K) {
    let meta = o.meta_mut();
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove(LAST_APPLIED_ANNOTATION);
        if a.is_empty() {
            meta.annotations = None;
        }
    }
}

/// The CRDs in a fixed order, as `silo crds` prints them.
pub fn crds()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    vec![Tenant::crd(), LimitProfile::crd(), Channel::crd()]
}

/// The CRDs as one multi-document YAML stream.
pub fn crds_yaml() -> Result<String, serde_norway::Error> {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_norway::to_string(&crd)?);
    }
    Ok(out)
}

#[cfg(test)]
mod trim_tests {
    use super::*;

    #[test]
    fn cached_objects_lose_managed_fields_and_the_kubectl_copy_only() {
        let mut t: Tenant = serde_json::from_value(serde_json::json!({
            "apiVersion": API_VERSION, "kind": "Tenant",
            "metadata": {
                "name": "acme", "generation": 3, "finalizers": ["silo.dev/cleanup"],
                "annotations": {
                    LAST_APPLIED_ANNOTATION: "{\"a\":1}",
                    "silo.dev/rotate-key": "r1",
                },
                "managedFields": [{"manager": "kubectl", "operation": "Apply"}],
            },
            "spec": {"displayName": "Acme"},
        }))
        .unwrap();
        trim_for_cache(&mut t);
        assert_eq!(t.metadata.managed_fields, None);
        let a = t.metadata.annotations.clone().unwrap();
        assert_eq!(a.len(), 1, "{a:?}");
        assert_eq!(a["silo.dev/rotate-key"], "r1");
        assert_eq!(t.metadata.generation, Some(3));
        assert_eq!(t.metadata.finalizers, Some(vec!["silo.dev/cleanup".into()]));
        assert_eq!(t.spec.display_name, "Acme");
        // Only the kubectl copy: no annotations left at all.
        t.metadata.annotations = Some([(LAST_APPLIED_ANNOTATION.to_string(), "x".into())].into());
        trim_for_cache(&mut t);
        assert_eq!(t.metadata.annotations, None);
    }
}
