//! NetworkPolicy: ingress only from the tenant's own namespace and the platform namespace.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::Context;
use super::meta::namespaced;

pub const NETWORK_POLICY_NAME: &str = "silo-isolation";

pub fn network_policy(cx: &Context<'_>) -> NetworkPolicy {
    let same_namespace = NetworkPolicyPeer {
        pod_selector: Some(LabelSelector::default()),
        ..Default::default()
    };
    let platform = NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                "kubernetes.io/metadata.name".to_string(),
                cx.config.platform_namespace.clone(),
            )])),
            ..Default::default()
        }),
        ..Default::default()
    };
    NetworkPolicy {
        metadata: namespaced(cx.tenant, &cx.namespace, NETWORK_POLICY_NAME, &[]),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector::default()),
            policy_types: Some(vec!["Ingress".to_string()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![same_namespace, platform]),
                ports: None,
            }]),
            egress: None,
        }),
    }
}
