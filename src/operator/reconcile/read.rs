//! Read, the pipeline's first step: everything a reconcile takes from the analysed tree,
//! copied out in one short look ([`Placement::read`]).
//!
//! In `silo operator` the tree is the one the admission webhook keeps current and decides on
//! ([`crate::webhook::TreeView`], one per process): every reconcile reads it under the view's
//! lock, so the rest of the pipeline — which awaits the API server — never holds it.

use crate::config::PlatformConfig;
use crate::hierarchy::{NodeId, TenantTree};
use crate::render;
use crate::types::Tenant;
use crate::types::tenant::UsageStatus;

use super::desired::Desired;
use super::status::TreeFacts;
use super::{apply, validate};

/// A tenant's place in the tree, as one reconcile needs it.
#[derive(Clone, Debug)]
pub struct Placement {
    /// The tree's copy of the tenant (spec, generation, deletion timestamp, finalizers).
    pub tenant: Tenant,
    /// What stops it from being built ([`validate::blocking_problems`]); empty when none.
    pub problems: Vec<String>,
    /// Its objects with their hashes; empty when there are problems or it is being deleted.
    pub desired: Vec<Desired>,
    /// Itself or the nearest suspended ancestor, when one is suspended.
    pub suspended_by: Option<String>,
    /// Depth, path, namespace, effective limits and usage (own and subtree) for the status.
    pub facts: TreeFacts,
    /// How many admins its ancestors have (they are bound in its namespace too).
    pub ancestor_admins: usize,
    /// Whether its broker runs ([`render::broker::runs`]: not suspended, MQTT not prohibited).
    pub broker_runs: bool,
    /// Its child tenants, by name.
    pub children: Vec<String>,
    /// Every descendant, for a Cascade deletion (filled only for a tenant being deleted).
    pub descendants: Vec<Descendant>,
}

/// A tenant below one being deleted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Descendant {
    pub name: String,
    /// It has no children of its own (deleted first: Cascade goes bottom-up).
    pub leaf: bool,
    /// It already has a deletion timestamp.
    pub deleting: bool,
}

impl Placement {
    /// Reads tenant `name` from `tree`; None when the tree does not hold it. Renders its
    /// objects ([`crate::render::render_tenant`]) unless it is invalid or being deleted.
    pub fn read(tree: &TenantTree, name: &str, config: &PlatformConfig) -> Option<Placement> {
        let id = tree.get(name)?;
        let tenant = tree.tenant(id);
        let deleting = tenant.metadata.deletion_timestamp.is_some();
        let problems = if deleting {
            Vec::new()
        } else {
            validate::blocking_problems(tree, id)
        };
        let desired = if deleting || !problems.is_empty() {
            Vec::new()
        } else {
            apply::build(tree, id, config)
        };
        let cx = render::Context::new(tree, id, config);
        let node = tree.node(id);
        Some(Placement {
            tenant: tenant.clone(),
            problems,
            desired,
            suspended_by: tree.suspended_by(id).map(|s| tree.name(s).to_string()),
            facts: TreeFacts {
                depth: cx.depth,
                path: cx.path.clone(),
                namespace: cx.namespace.clone(),
                effective_limits: Some(cx.effective_limits.clone()),
                usage: Some(UsageStatus {
                    own: node.own,
                    subtree: node.subtree,
                }),
            },
            ancestor_admins: cx.ancestor_admins.len(),
            broker_runs: render::broker::runs(&cx),
            children: node
                .children
                .iter()
                .map(|&c| tree.name(c).to_string())
                .collect(),
            descendants: if deleting {
                descendants(tree, id)
            } else {
                Vec::new()
            },
        })
    }
}

fn descendants(tree: &TenantTree, id: NodeId) -> Vec<Descendant> {
    tree.descendants(id)
        .into_iter()
        .map(|d| Descendant {
            name: tree.name(d).to_string(),
            leaf: tree.node(d).children.is_empty(),
            deleting: tree.tenant(d).metadata.deletion_timestamp.is_some(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hierarchy::synthetic::{built as tree, tenant};

    #[test]
    fn a_valid_tenant_is_rendered_with_its_place() {
        let config = PlatformConfig::default();
        let t = tree(vec![
            tenant("acme", None),
            tenant("dealer", Some("acme")),
            tenant("shop", Some("dealer")),
        ]);
        let p = Placement::read(&t, "dealer", &config).unwrap();
        assert!(p.problems.is_empty());
        assert!(!p.desired.is_empty());
        assert_eq!(p.facts.depth, 2);
        assert_eq!(p.facts.path, vec!["acme", "dealer"]);
        assert_eq!(p.children, vec!["shop"]);
        assert!(p.descendants.is_empty());
        assert_eq!(p.facts.usage.unwrap().own.subtenants, 1);
        assert!(Placement::read(&t, "nobody", &config).is_none());
    }

    #[test]
    fn an_invalid_tenant_is_not_rendered() {
        let config = PlatformConfig::default();
        let mut bad = tenant("dealer", Some("acme"));
        bad.spec.channels = vec!["missing".into()];
        let t = tree(vec![tenant("acme", None), bad]);
        let p = Placement::read(&t, "dealer", &config).unwrap();
        assert_eq!(
            p.problems,
            vec!["spec.channels[0]: Channel \"missing\" does not exist"]
        );
        assert!(p.desired.is_empty());
    }

    #[test]
    fn a_deleted_tenant_lists_its_descendants_bottom_up_facts() {
        let config = PlatformConfig::default();
        let mut root = tenant("acme", None);
        root.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        let t = tree(vec![
            root,
            tenant("dealer", Some("acme")),
            tenant("shop", Some("dealer")),
        ]);
        let p = Placement::read(&t, "acme", &config).unwrap();
        assert!(p.desired.is_empty());
        let mut d = p.descendants.clone();
        d.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(
            d,
            vec![
                Descendant {
                    name: "dealer".into(),
                    leaf: false,
                    deleting: false
                },
                Descendant {
                    name: "shop".into(),
                    leaf: true,
                    deleting: false
                },
            ]
        );
    }
}
