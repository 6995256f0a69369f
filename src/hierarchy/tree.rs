//! Building the tenant tree from Tenants, LimitProfiles and Channels, and reporting every
//! problem in it. Pure: no I/O, no clock; the same input always gives the same output. The
//! checks of one tenant's own spec, which the build runs over every tenant, are in
//! `tenant_checks.rs`.

use std::collections::HashMap;

use crate::config::PlatformConfig;
use crate::types::{
    Channel, CountResource, LimitProfile, Limits, QuotaResource, Tenant, UsageCounts,
};

use super::problem::{ObjectKind, Problem, ProblemKind};
use super::quota::quota_millis;
use super::tenant_checks::{check_limit_values, check_name_of};

pub type NodeId = usize;

/// Platform settings the rules depend on.
#[derive(Clone, Debug)]
pub struct EngineSettings {
    pub max_depth: u32,
    /// Longest tenant name whose namespace name fits (63 − prefix length).
    pub max_name_len: usize,
    /// `namespacePrefix` of the platform: tenant T's namespace is `<prefix>T` (the only
    /// namespace whose service accounts may be T's admins or members).
    pub namespace_prefix: String,
}

impl EngineSettings {
    /// The namespace of tenant `name`: `<namespacePrefix><name>`.
    pub fn namespace_for(&self, name: &str) -> String {
        format!("{}{name}", self.namespace_prefix)
    }
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self::from(&PlatformConfig::default())
    }
}

impl From<&PlatformConfig> for EngineSettings {
    fn from(c: &PlatformConfig) -> Self {
        Self {
            max_depth: c.max_depth,
            max_name_len: c.max_tenant_name_len(),
            namespace_prefix: c.namespace_prefix.clone(),
        }
    }
}

/// Everything the tree is built from.
#[derive(Clone, Debug, Default)]
pub struct Inventory {
    pub tenants: Vec<Tenant>,
    pub profiles: Vec<LimitProfile>,
    pub channels: Vec<Channel>,
}

/// A tenant in the tree.
#[derive(Clone, Debug)]
pub struct Node {
    /// Index into `Inventory::tenants`.
    pub input: usize,
    pub parent: Option<NodeId>,
    pub children: Vec<NodeId>,
    /// 1 for a root; 0 when the tenant hangs below an unknown parent or a cycle.
    pub depth: u32,
    /// Own limits: the profile's, overridden by the explicit ones.
    pub limits: Limits,
    /// Own count limits, indexed by `CountResource::index`; -1 = no own limit.
    pub counts: [i64; 4],
    /// Own quotas in thousandths, indexed by `QuotaResource::index` (None = no own quota).
    pub quotas: [Option<i128>; 4],
    /// Tightest count limit on the path root … self (-1 = none anywhere).
    pub effective_counts: [i64; 4],
    /// What the tenant's whole subtree may use, in thousandths (None = unbounded): its own
    /// quota as granted by its parent (see [`super::quota::grant_children`]).
    pub effective_quotas: [Option<i128>; 4],
    /// The tenant's own namespace's ResourceQuota in thousandths: its subtree budget minus
    /// what its children were granted (None = no quota).
    pub namespace_quotas: [Option<i128>; 4],
    pub own: UsageCounts,
    pub subtree: UsageCounts,
}

impl Node {
    /// Sets the own limits and the derived per-resource arrays (-1 = no own count limit).
    pub(crate) fn set_limits(&mut self, limits: Limits) {
        for r in CountResource::ALL {
            self.counts[r.index()] = match limits.count(r) {
                Some(v) if v >= 0 => v,
                _ => -1,
            };
        }
        for r in QuotaResource::ALL {
            self.quotas[r.index()] = limits.quota(r).and_then(|q| quota_millis(q).ok());
        }
        self.limits = limits;
    }
}

#[derive(Clone, Debug)]
pub struct ChannelInfo {
    pub input: usize,
    pub owner: Option<NodeId>,
    /// Roots of the subtrees allowed to use the channel; None = the owner's subtree.
    pub visibility: Option<Vec<NodeId>>,
}

/// The analysed tree: structure, limits, usage and the problems found.
#[derive(Clone, Debug)]
pub struct TenantTree {
    pub(crate) inventory: Inventory,
    pub(crate) nodes: Vec<Node>,
    pub(crate) by_name: HashMap<String, NodeId>,
    pub(crate) roots: Vec<NodeId>,
    pub(crate) profiles: HashMap<String, usize>,
    pub(crate) channels: HashMap<String, ChannelInfo>,
    pub(crate) settings: EngineSettings,
    pub(crate) problems: Vec<Problem>,
}

/// Where the checks put the problems they find.
pub(super) struct Report<'a> {
    pub(super) problems: &'a mut Vec<Problem>,
}

impl Report<'_> {
    pub(super) fn add(
        &mut self,
        object: ObjectKind,
        name: &str,
        index: usize,
        field: impl Into<String>,
        kind: ProblemKind,
        reason: impl Into<String>,
    ) {
        self.problems.push(Problem {
            object,
            name: name.to_string(),
            field: field.into(),
            reason: reason.into(),
            kind,
            index,
        });
    }
}

#[derive(Clone, Copy)]
enum Up {
    Root,
    Parent(NodeId),
    Unknown,
}

impl TenantTree {
    /// Builds the tree and collects every problem (it never stops at the first).
    pub fn build(inventory: Inventory, settings: EngineSettings) -> TenantTree {
        let mut problems = Vec::new();
        let mut report = Report {
            problems: &mut problems,
        };

        // 1. Index tenants by name; later duplicates are reported and left out.
        let mut by_name: HashMap<String, NodeId> = HashMap::with_capacity(inventory.tenants.len());
        let mut nodes: Vec<Node> = Vec::with_capacity(inventory.tenants.len());
        for (i, t) in inventory.tenants.iter().enumerate() {
            let name = t.name();
            check_name_of(name, i, &settings, &mut report);
            if by_name.contains_key(name) {
                report.add(
                    ObjectKind::Tenant,
                    name,
                    i,
                    "metadata.name",
                    ProblemKind::DuplicateName,
                    format!("duplicate Tenant {name:?}: it is defined more than once"),
                );
                continue;
            }
            by_name.insert(name.to_string(), nodes.len());
            nodes.push(Node {
                input: i,
                parent: None,
                children: Vec::new(),
                depth: 0,
                limits: Limits::default(),
                counts: [-1; 4],
                quotas: [None; 4],
                effective_counts: [-1; 4],
                effective_quotas: [None; 4],
                namespace_quotas: [None; 4],
                own: UsageCounts::default(),
                subtree: UsageCounts::default(),
            });
        }

        // 2. Parent links.
        let mut up = vec![Up::Root; nodes.len()];
        for (id, node) in nodes.iter_mut().enumerate() {
            let t = &inventory.tenants[node.input];
            if let Some(p) = t.spec.parent.as_deref() {
                match by_name.get(p) {
                    Some(&pid) if pid == id => {
                        up[id] = Up::Unknown;
                        report.add(
                            ObjectKind::Tenant,
                            t.name(),
                            node.input,
                            "spec.parent",
                            ProblemKind::Cycle,
                            format!("cycle: {p} -> {p} (a tenant cannot be its own parent)"),
                        );
                    }
                    Some(&pid) => {
                        up[id] = Up::Parent(pid);
                        node.parent = Some(pid);
                    }
                    None => {
                        up[id] = Up::Unknown;
                        report.add(
                            ObjectKind::Tenant,
                            t.name(),
                            node.input,
                            "spec.parent",
                            ProblemKind::UnknownParent,
                            format!("parent tenant {p:?} does not exist"),
                        );
                    }
                }
            }
        }

        // 3. Depths, with cycle detection (iterative, so deep or cyclic input cannot overflow the stack).
        const NEW: u8 = 0;
        const ON_STACK: u8 = 1;
        const DONE: u8 = 2;
        let mut state = vec![NEW; nodes.len()];
        let mut stack: Vec<NodeId> = Vec::new();
        for start in 0..nodes.len() {
            if state[start] == DONE {
                continue;
            }
            stack.clear();
            let mut cur = start;
            // depth of the node above the bottom of the stack; None = chain is broken.
            let base: Option<u32> = loop {
                match state[cur] {
                    DONE => break (nodes[cur].depth > 0).then_some(nodes[cur].depth),
                    ON_STACK => {
                        let pos = stack.iter().position(|&x| x == cur).unwrap_or(0);
                        let cycle: Vec<NodeId> = stack[pos..].to_vec();
                        let mut names: Vec<&str> = cycle
                            .iter()
                            .rev()
                            .map(|&c| inventory.tenants[nodes[c].input].name())
                            .collect();
                        names.push(names[0]);
                        let text = names.join(" -> ");
                        for &c in &cycle {
                            let t = &inventory.tenants[nodes[c].input];
                            report.add(
                                ObjectKind::Tenant,
                                t.name(),
                                nodes[c].input,
                                "spec.parent",
                                ProblemKind::Cycle,
                                format!("cycle: {text}"),
                            );
                            state[c] = DONE;
                            nodes[c].parent = None;
                        }
                        stack.truncate(pos);
                        break None;
                    }
                    _ => {
                        state[cur] = ON_STACK;
                        stack.push(cur);
                        match up[cur] {
                            Up::Root => break Some(0),
                            Up::Unknown => break None,
                            Up::Parent(p) => cur = p,
                        }
                    }
                }
            };
            let mut depth = base;
            while let Some(c) = stack.pop() {
                depth = depth.map(|d| d + 1);
                nodes[c].depth = depth.unwrap_or(0);
                state[c] = DONE;
            }
        }

        // 4. Children (sorted by name) and roots.
        let mut roots = Vec::new();
        for id in 0..nodes.len() {
            if nodes[id].depth == 0 {
                continue;
            }
            match nodes[id].parent {
                Some(p) => nodes[p].children.push(id),
                None => roots.push(id),
            }
        }
        let name_of =
            |id: NodeId, nodes: &[Node]| inventory.tenants[nodes[id].input].name().to_string();
        roots.sort_by_key(|&id| name_of(id, &nodes));
        for id in 0..nodes.len() {
            let mut ch = std::mem::take(&mut nodes[id].children);
            ch.sort_by(|a, b| {
                inventory.tenants[nodes[*a].input]
                    .name()
                    .cmp(inventory.tenants[nodes[*b].input].name())
            });
            nodes[id].children = ch;
        }

        let mut tree = TenantTree {
            inventory,
            nodes,
            by_name,
            roots,
            profiles: HashMap::new(),
            channels: HashMap::new(),
            settings,
            problems: Vec::new(),
        };
        tree.check_depths(&mut report);
        tree.index_profiles(&mut report);
        tree.resolve_limits(&mut report);
        tree.index_channels(&mut report);
        tree.check_tenant_fields(&mut report);
        tree.check_roles(&mut report);
        tree.compute_usage();
        tree.compute_effective();
        tree.check_counts(&mut report);
        for (id, field, kind, reason) in tree.quota_problems() {
            let n = &tree.nodes[id];
            report.add(
                ObjectKind::Tenant,
                tree.tname(id),
                n.input,
                field,
                kind,
                reason,
            );
        }
        tree.problems = problems;
        tree
    }

    pub(super) fn tname(&self, id: NodeId) -> &str {
        self.inventory.tenants[self.nodes[id].input].name()
    }

    fn index_profiles(&mut self, report: &mut Report<'_>) {
        for (i, p) in self.inventory.profiles.iter().enumerate() {
            let name = p.name();
            if self.profiles.contains_key(name) {
                report.add(
                    ObjectKind::LimitProfile,
                    name,
                    i,
                    "metadata.name",
                    ProblemKind::DuplicateName,
                    format!("duplicate LimitProfile {name:?}: it is defined more than once"),
                );
                continue;
            }
            self.profiles.insert(name.to_string(), i);
            if !self.by_name.contains_key(&p.spec.owner) {
                report.add(
                    ObjectKind::LimitProfile,
                    name,
                    i,
                    "spec.owner",
                    ProblemKind::UnknownOwner,
                    format!("owner tenant {:?} does not exist", p.spec.owner),
                );
            }
            check_limit_values(&p.spec.limits, |field, reason| {
                report.add(
                    ObjectKind::LimitProfile,
                    name,
                    i,
                    field,
                    ProblemKind::InvalidLimit,
                    reason,
                )
            });
        }
    }

    fn index_channels(&mut self, report: &mut Report<'_>) {
        for (i, c) in self.inventory.channels.iter().enumerate() {
            let name = c.name();
            if self.channels.contains_key(name) {
                report.add(
                    ObjectKind::Channel,
                    name,
                    i,
                    "metadata.name",
                    ProblemKind::DuplicateName,
                    format!("duplicate Channel {name:?}: it is defined more than once"),
                );
                continue;
            }
            if let Some(v) = c.spec.max_connections
                && v < 0
            {
                report.add(
                    ObjectKind::Channel,
                    name,
                    i,
                    "spec.maxConnections",
                    ProblemKind::InvalidLimit,
                    format!("{v} is not allowed: it must be 0 or more"),
                );
            }
            let owner = self.by_name.get(&c.spec.owner).copied();
            if owner.is_none() {
                report.add(
                    ObjectKind::Channel,
                    name,
                    i,
                    "spec.owner",
                    ProblemKind::UnknownOwner,
                    format!("owner tenant {:?} does not exist", c.spec.owner),
                );
            }
            let visibility = c.spec.visibility.as_ref().map(|v| {
                let mut ids = Vec::new();
                for (k, sub) in v.subtrees.iter().enumerate() {
                    let field = format!("spec.visibility.subtrees[{k}]");
                    match self.by_name.get(sub).copied() {
                        None => report.add(
                            ObjectKind::Channel,
                            name,
                            i,
                            field,
                            ProblemKind::UnknownOwner,
                            format!("tenant {sub:?} does not exist"),
                        ),
                        Some(s) => {
                            if owner.is_some_and(|o| !self.is_self_or_ancestor(o, s)) {
                                report.add(
                                    ObjectKind::Channel,
                                    name,
                                    i,
                                    field,
                                    ProblemKind::VisibilityOutsideOwner,
                                    format!(
                                        "tenant {sub:?} is outside the subtree of the owner {:?}",
                                        c.spec.owner
                                    ),
                                );
                            } else {
                                ids.push(s);
                            }
                        }
                    }
                }
                ids
            });
            if let Some(o) = owner {
                self.nodes[o].own.channels += 1;
            }
            self.channels.insert(
                name.to_string(),
                ChannelInfo {
                    input: i,
                    owner,
                    visibility,
                },
            );
        }
    }

    /// Effective count limits down the tree (`check.rs`), then the quotas granted (`quota.rs`).
    fn compute_effective(&mut self) {
        for id in self.preorder() {
            self.compute_effective_one(id);
        }
        self.grant_all();
    }

    // ----- queries -----

    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    pub fn inventory(&self) -> &Inventory {
        &self.inventory
    }

    pub fn settings(&self) -> &EngineSettings {
        &self.settings
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn get(&self, name: &str) -> Option<NodeId> {
        self.by_name.get(name).copied()
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id]
    }

    pub fn tenant(&self, id: NodeId) -> &Tenant {
        &self.inventory.tenants[self.nodes[id].input]
    }

    pub fn name(&self, id: NodeId) -> &str {
        self.tname(id)
    }

    pub fn roots(&self) -> &[NodeId] {
        &self.roots
    }

    /// Strict ancestors, nearest first. Bounded by the depth, so safe on broken input.
    pub fn ancestors(&self, id: NodeId) -> impl Iterator<Item = NodeId> + '_ {
        let steps = self.nodes[id].depth.saturating_sub(1) as usize;
        std::iter::successors(self.nodes[id].parent, move |&p| self.nodes[p].parent).take(steps)
    }

    /// True if `a` is `b` or one of `b`'s ancestors.
    pub fn is_self_or_ancestor(&self, a: NodeId, b: NodeId) -> bool {
        a == b || self.ancestors(b).any(|x| x == a)
    }

    /// Names from the root down to the tenant.
    pub fn path(&self, id: NodeId) -> Vec<&str> {
        let mut p: Vec<&str> = self.ancestors(id).map(|a| self.tname(a)).collect();
        p.reverse();
        p.push(self.tname(id));
        p
    }

    /// Attached tenants in depth-first order, children by name.
    pub fn preorder(&self) -> Vec<NodeId> {
        let mut out = Vec::with_capacity(self.nodes.len());
        let mut stack: Vec<NodeId> = self.roots.iter().rev().copied().collect();
        while let Some(id) = stack.pop() {
            out.push(id);
            stack.extend(self.nodes[id].children.iter().rev().copied());
        }
        out
    }

    /// Descendants (not including `id`), depth-first.
    pub fn descendants(&self, id: NodeId) -> Vec<NodeId> {
        let mut out = Vec::new();
        let mut stack: Vec<NodeId> = self.nodes[id].children.iter().rev().copied().collect();
        while let Some(c) = stack.pop() {
            out.push(c);
            stack.extend(self.nodes[c].children.iter().rev().copied());
        }
        out
    }

    /// The tenant itself or the nearest ancestor that is suspended.
    pub fn suspended_by(&self, id: NodeId) -> Option<NodeId> {
        std::iter::once(id)
            .chain(self.ancestors(id))
            .find(|&a| self.tenant(a).spec.suspended)
    }

    pub fn channel(&self, name: &str) -> Option<&ChannelInfo> {
        self.channels.get(name)
    }

    /// True if Channel `channel` exists, its owner is `id` or above it, and `id` lies in one of
    /// its visibility subtrees (the owner's whole subtree when it lists none).
    pub fn is_channel_visible(&self, channel: &str, id: NodeId) -> bool {
        let Some(info) = self.channels.get(channel) else {
            return false;
        };
        let Some(owner) = info.owner else {
            return false;
        };
        if !self.is_self_or_ancestor(owner, id) {
            return false;
        }
        match &info.visibility {
            None => true,
            Some(roots) => roots.iter().any(|&r| self.is_self_or_ancestor(r, id)),
        }
    }
}

/// What the engine reads of a Tenant, for the trees the operator and the webhook keep in
/// memory: identity and lifecycle metadata (no annotations, no managed fields: a
/// `kubectl apply` annotation alone can be as large as the object), the spec, and the observed
/// usage of its status (the rest of the status is the operator's output, not the engine's
/// input). The controller's watch cache keeps the rest of the metadata and the status, and
/// takes the spec from here (`operator::controller::cached`).
pub fn engine_copy(t: &Tenant) -> Tenant {
    let m = &t.metadata;
    let metadata = kube::api::ObjectMeta {
        name: m.name.clone(),
        uid: m.uid.clone(),
        generation: m.generation,
        resource_version: m.resource_version.clone(),
        creation_timestamp: m.creation_timestamp.clone(),
        deletion_timestamp: m.deletion_timestamp.clone(),
        finalizers: m.finalizers.clone(),
        labels: m.labels.clone(),
        ..Default::default()
    };
    let status = t
        .status
        .as_ref()
        .and_then(|s| s.usage.clone())
        .map(|usage| crate::types::TenantStatus {
            usage: Some(usage),
            ..Default::default()
        });
    Tenant {
        metadata,
        spec: t.spec.clone(),
        status,
    }
}
