//! Printing the analysed tree: an indented tree, every object as YAML, or JSON.

use std::fmt::Write as _;

use serde::Serialize;

use crate::config::PlatformConfig;
use crate::hierarchy::{NodeId, TenantSummary, TenantTree};
use crate::render::{DesiredObject, render_tenant};
use crate::types::{CountResource, QuotaResource};

/// How quotas read in the tree, printed below it (the rule of `hierarchy::quota`).
pub const QUOTA_LEGEND: &str = "Quotas (cpu, memory, storage, pods) bound a tenant's whole subtree: the quotas of its children are carved out of it and its own namespace's ResourceQuota gets the rest, shown as (namespace N) where it differs; below a tenant with a quota every tenant needs its own.";

/// The tree, one tenant a line, children indented below their parent:
/// `name (Isolation, depth N) subtenants 3/10 devices 120/∞ … | cpu 4 (namespace 1) memory 8Gi`,
/// then a blank line and [`QUOTA_LEGEND`].
pub fn tree_text(tree: &TenantTree, cfg: &PlatformConfig) -> String {
    let mut out = String::new();
    let profiles = tree.inventory().profiles.len();
    let channels = tree.inventory().channels.len();
    let max_depth = tree
        .preorder()
        .iter()
        .map(|&id| tree.node(id).depth)
        .max()
        .unwrap_or(0);
    let _ = writeln!(
        out,
        "{} tenants, {profiles} limit profiles, {channels} channels, depth {max_depth} of at most {}",
        tree.len(),
        cfg.max_depth
    );
    for &root in tree.roots() {
        write_node(tree, root, "", "", &mut out);
    }
    out.push('\n');
    out.push_str(QUOTA_LEGEND);
    out.push('\n');
    out
}

fn write_node(tree: &TenantTree, id: NodeId, lead: &str, child_lead: &str, out: &mut String) {
    let t = tree.tenant(id);
    let n = tree.node(id);
    let eff = tree.effective_limits(id);
    let mut line = format!(
        "{lead}{} ({}, depth {})",
        t.name(),
        t.spec.isolation,
        n.depth
    );
    for r in CountResource::ALL {
        let limit = eff.count(r).map_or("∞".to_string(), |v| v.to_string());
        let _ = write!(line, " {r} {}/{limit}", n.subtree.get(r));
    }
    let own = tree.namespace_quota(id);
    let quotas: Vec<String> = QuotaResource::ALL
        .iter()
        .filter_map(|&r| {
            eff.quota(r).map(|q| match own.quota(r) {
                Some(ns) if ns != q => format!("{r} {q} (namespace {ns})"),
                _ => format!("{r} {q}"),
            })
        })
        .collect();
    if !quotas.is_empty() {
        let _ = write!(line, " | {}", quotas.join(" "));
    }
    if let Some(p) = &t.spec.limit_profile {
        let _ = write!(line, " [profile {p}]");
    }
    match tree.suspended_by(id) {
        Some(s) if s == id => line.push_str(" [suspended]"),
        Some(s) => {
            let _ = write!(line, " [suspended via {}]", tree.name(s));
        }
        None => {}
    }
    out.push_str(&line);
    out.push('\n');
    let children = &n.children;
    for (i, &c) in children.iter().enumerate() {
        let last = i + 1 == children.len();
        let (branch, cont) = if last {
            ("└── ", "    ")
        } else {
            ("├── ", "│   ")
        };
        write_node(
            tree,
            c,
            &format!("{child_lead}{branch}"),
            &format!("{child_lead}{cont}"),
            out,
        );
    }
}

/// Every object the operator would create, tenant by tenant (tree order), as multi-document YAML.
pub fn objects(tree: &TenantTree, cfg: &PlatformConfig) -> Vec<DesiredObject> {
    tree.preorder()
        .into_iter()
        .flat_map(|id| render_tenant(tree, id, cfg))
        .collect()
}

pub fn yaml(tree: &TenantTree, cfg: &PlatformConfig) -> Result<String, serde_norway::Error> {
    let mut out = String::new();
    for o in objects(tree, cfg) {
        out.push_str("---\n");
        out.push_str(&serde_norway::to_string(&o)?);
    }
    Ok(out)
}

#[derive(Serialize)]
struct JsonPlan {
    tenants: Vec<TenantSummary>,
    objects: Vec<DesiredObject>,
}

/// `{"tenants": [...analysis...], "objects": [...manifests...]}`.
pub fn json(tree: &TenantTree, cfg: &PlatformConfig) -> Result<String, serde_json::Error> {
    let plan = JsonPlan {
        tenants: tree
            .preorder()
            .into_iter()
            .map(|id| tree.summary(id, &cfg.namespace_prefix))
            .collect(),
        objects: objects(tree, cfg),
    };
    let mut s = serde_json::to_string_pretty(&plan)?;
    s.push('\n');
    Ok(s)
}
