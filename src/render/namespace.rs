//! The tenant's Namespace: labelled with the tenant, its parent, depth and every ancestor,
//! and with Pod Security Admission enforcement.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::Context;
use super::meta::{DEPTH_LABEL, PARENT_LABEL, base_labels, owner_refs, tree_label};

pub fn namespace(cx: &Context<'_>) -> Namespace {
    let t = cx.tenant;
    let mut labels = base_labels(t.name());
    if let Some(p) = &t.spec.parent {
        labels.insert(PARENT_LABEL.into(), p.clone());
    }
    labels.insert(DEPTH_LABEL.into(), cx.depth.to_string());
    // self at distance 0, parent 1, … root depth-1 (as HNC does).
    for (distance, name) in cx.path.iter().rev().enumerate() {
        labels.insert(tree_label(name), distance.to_string());
    }
    let level = cx.config.pod_security.as_str();
    for mode in ["enforce", "audit", "warn"] {
        labels.insert(
            format!("pod-security.kubernetes.io/{mode}"),
            level.to_string(),
        );
    }
    labels.insert(
        "pod-security.kubernetes.io/enforce-version".into(),
        "latest".into(),
    );
    let annotations = BTreeMap::from([("silo.dev/path".to_string(), cx.path.join("/"))]);
    Namespace {
        metadata: ObjectMeta {
            name: Some(cx.namespace.clone()),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: owner_refs(t),
            ..Default::default()
        },
        ..Default::default()
    }
}
