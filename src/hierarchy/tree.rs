//! Building the tenant tree from Tenants, LimitProfiles and Channels, and reporting every
//! problem in it. Pure: no I/O, no clock; the same input always gives the same output.

use std::collections::HashMap;

use crate::config::{PlatformConfig, is_dns_label};
use crate::types::{
    Channel, CountResource, LimitProfile, Limits, QuotaResource, Tenant, UsageCounts,
};

use super::people::check_people;
use super::problem::{ObjectKind, Problem, ProblemKind};
use super::quota::quota_millis;

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

struct Report<'a> {
    problems: &'a mut Vec<Problem>,
}

impl Report<'_> {
    fn add(
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

    fn tname(&self, id: NodeId) -> &str {
        self.inventory.tenants[self.nodes[id].input].name()
    }

    /// Problems of one tenant's own spec, computed now: its name, depth, limit profile, limit
    /// values, channels, people, the bounded fields (`spec.database.storage`,
    /// `spec.mqtt.maxConnections`, `spec.encryption.rotationDays`) and custom roles — the same
    /// checks, in the same order, as [`TenantTree::build`] runs for every tenant. Unlike
    /// [`TenantTree::problems`] (the last full build) it is current in a tree kept up to date
    /// incrementally, which is what the operator reconciles against. Left out: problems
    /// between objects (duplicate names, unknown parent, cycles — every change that can cause
    /// them rebuilds the tree, so [`TenantTree::problems`] holds them) and usage against
    /// limits and quotas.
    pub fn tenant_problems(&self, id: NodeId) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut report = Report {
            problems: &mut problems,
        };
        let input = self.nodes[id].input;
        check_name_of(self.tname(id), input, &self.settings, &mut report);
        self.check_depth_of(id, &mut report);
        self.limits_of(id, &mut report);
        self.check_fields_of(id, &mut report);
        self.check_roles_of(id, &mut report);
        problems
    }

    fn check_depths(&self, report: &mut Report<'_>) {
        for id in 0..self.nodes.len() {
            self.check_depth_of(id, report);
        }
    }

    fn check_depth_of(&self, id: NodeId, report: &mut Report<'_>) {
        let n = &self.nodes[id];
        if n.depth > self.settings.max_depth {
            let path = self.path(id).join("/");
            report.add(
                ObjectKind::Tenant,
                self.tname(id),
                n.input,
                "spec.parent",
                ProblemKind::TooDeep,
                format!(
                    "depth {} exceeds maxDepth {} (path {path})",
                    n.depth, self.settings.max_depth
                ),
            );
        }
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

    fn resolve_limits(&mut self, report: &mut Report<'_>) {
        for id in 0..self.nodes.len() {
            let limits = self.limits_of(id, report);
            self.nodes[id].set_limits(limits);
        }
    }

    /// The rule of `spec.limitProfile`: the profile must exist and be owned by a strict
    /// ancestor of `tenant` — `parent` (the tenant's parent, None for a root or a tenant not
    /// attached to the tree) or above. Gives the profile's limits, or the problem
    /// ([`ProblemKind::UnknownProfile`], [`ProblemKind::ProfileNotOwnedByAncestor`]) with its
    /// message. Used by the full build, the incremental tree and the admission webhook alike.
    pub fn profile_for(
        &self,
        tenant: &str,
        profile: &str,
        parent: Option<NodeId>,
    ) -> Result<&Limits, (ProblemKind, String)> {
        let Some(&pi) = self.profiles.get(profile) else {
            return Err((
                ProblemKind::UnknownProfile,
                format!("LimitProfile {profile:?} does not exist"),
            ));
        };
        let p = &self.inventory.profiles[pi];
        let owned = self
            .by_name
            .get(&p.spec.owner)
            .zip(parent)
            .is_some_and(|(&o, par)| self.is_self_or_ancestor(o, par));
        if owned {
            Ok(&p.spec.limits)
        } else {
            Err((
                ProblemKind::ProfileNotOwnedByAncestor,
                format!(
                    "LimitProfile {profile:?} is owned by {:?}, which is not a strict ancestor of {tenant:?}",
                    p.spec.owner
                ),
            ))
        }
    }

    /// A tenant's own limits: its explicit ones over its limit profile's when the profile may
    /// be used ([`TenantTree::profile_for`]).
    pub(crate) fn resolved_limits(&self, id: NodeId) -> Limits {
        let mut ignored = Vec::new();
        self.limits_of(
            id,
            &mut Report {
                problems: &mut ignored,
            },
        )
    }

    /// A tenant's limits (its own over its limit profile's, when the profile exists and is
    /// owned by a strict ancestor), reporting a bad profile reference and invalid values.
    fn limits_of(&self, id: NodeId, report: &mut Report<'_>) -> Limits {
        let input = self.nodes[id].input;
        let t = &self.inventory.tenants[input];
        let mut base = Limits::default();
        if let Some(pname) = t.spec.limit_profile.as_deref() {
            let parent = self.nodes[id].parent.filter(|_| self.nodes[id].depth > 0);
            match self.profile_for(t.name(), pname, parent) {
                Ok(limits) => base = limits.clone(),
                Err((kind, reason)) => report.add(
                    ObjectKind::Tenant,
                    t.name(),
                    input,
                    "spec.limitProfile",
                    kind,
                    reason,
                ),
            }
        }
        check_limit_values(&t.spec.limits, |field, reason| {
            report.add(
                ObjectKind::Tenant,
                t.name(),
                input,
                field,
                ProblemKind::InvalidLimit,
                reason,
            )
        });
        t.spec.limits.overlay_on(&base)
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

    fn check_tenant_fields(&self, report: &mut Report<'_>) {
        for id in 0..self.nodes.len() {
            self.check_fields_of(id, report);
        }
    }

    /// A tenant's channels (exist, visible), people and the fields the CRD schema bounds.
    fn check_fields_of(&self, id: NodeId, report: &mut Report<'_>) {
        let node = &self.nodes[id];
        let t = &self.inventory.tenants[node.input];
        for (k, ch) in t.spec.channels.iter().enumerate() {
            let field = format!("spec.channels[{k}]");
            match self.channels.get(ch) {
                None => report.add(
                    ObjectKind::Tenant,
                    t.name(),
                    node.input,
                    field,
                    ProblemKind::UnknownChannel,
                    format!("Channel {ch:?} does not exist"),
                ),
                Some(_) if !self.channel_visible_to(ch, id) => report.add(
                    ObjectKind::Tenant,
                    t.name(),
                    node.input,
                    field,
                    ProblemKind::ChannelNotVisible,
                    format!("Channel {ch:?} is not visible to tenant {:?}", t.name()),
                ),
                Some(_) => {}
            }
        }
        let namespace = self.settings.namespace_for(t.name());
        for p in check_people(&t.spec, &namespace, None) {
            report.add(
                ObjectKind::Tenant,
                t.name(),
                node.input,
                p.field,
                p.kind,
                p.message,
            );
        }
        // Values the CRD schema bounds (or that render into workloads): the offline plan
        // must not accept what the API server or the rendered objects would reject.
        let mut invalid = |field: &str, reason: String| {
            report.add(
                ObjectKind::Tenant,
                t.name(),
                node.input,
                field,
                ProblemKind::InvalidLimit,
                reason,
            )
        };
        if let Some(Err(e)) = t
            .spec
            .database
            .as_ref()
            .and_then(|d| d.storage.as_ref())
            .map(|q| q.millis())
        {
            invalid("spec.database.storage", e.to_string());
        }
        if let Some(v) = t.spec.mqtt.as_ref().and_then(|m| m.max_connections)
            && v < 0
        {
            invalid(
                "spec.mqtt.maxConnections",
                format!("{v} is not allowed: it must be 0 or more"),
            );
        }
        if let Some(v) = t.spec.encryption.as_ref().and_then(|e| e.rotation_days)
            && !(1..=3650).contains(&v)
        {
            invalid(
                "spec.encryption.rotationDays",
                format!("{v} is not allowed: it must be between 1 and 3650 days"),
            );
        }
        if let Some(u) = t.status.as_ref().and_then(|s| s.usage.as_ref()) {
            for r in [CountResource::Devices, CountResource::MqttConnections] {
                let v = u.own.get(r);
                if v < 0 {
                    report.add(
                        ObjectKind::Tenant,
                        t.name(),
                        node.input,
                        format!("status.usage.own.{}", r.field()),
                        ProblemKind::InvalidLimit,
                        format!("{v} is not a valid usage: it cannot be negative"),
                    );
                }
            }
        }
    }

    fn check_roles(&self, report: &mut Report<'_>) {
        for id in 0..self.nodes.len() {
            self.check_roles_of(id, report);
        }
    }

    /// Custom role definitions and that every member's role exists (`hierarchy::roles`), for
    /// an attached tenant.
    fn check_roles_of(&self, id: NodeId, report: &mut Report<'_>) {
        let n = &self.nodes[id];
        if n.depth == 0 {
            return;
        }
        let t = self.tenant(id);
        super::roles::check_roles(self, n.parent, &t.spec, |field, reason| {
            report.add(
                ObjectKind::Tenant,
                t.name(),
                n.input,
                field,
                ProblemKind::InvalidMember,
                reason,
            )
        });
    }

    /// Own usage (children, owned channels, observed devices and connections) and subtree sums.
    fn compute_usage(&mut self) {
        for id in 0..self.nodes.len() {
            let t = &self.inventory.tenants[self.nodes[id].input];
            let observed = t
                .status
                .as_ref()
                .and_then(|s| s.usage.as_ref())
                .map(|u| u.own)
                .unwrap_or_default();
            let n = &mut self.nodes[id];
            n.own.subtenants = n.children.len() as i64;
            // Negative observations are reported by check_tenant_fields; never count them.
            n.own.devices = observed.devices.max(0);
            n.own.mqtt_connections = observed.mqtt_connections.max(0);
            n.subtree = n.own;
        }
        for id in self.order_deepest_first() {
            if let Some(p) = self.nodes[id].parent {
                let sub = self.nodes[id].subtree;
                self.nodes[p].subtree.add(&sub);
            }
        }
    }

    /// Attached nodes, deepest first (children before parents).
    fn order_deepest_first(&self) -> Vec<NodeId> {
        let mut order: Vec<NodeId> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].depth > 0)
            .collect();
        order.sort_by_key(|&i| std::cmp::Reverse(self.nodes[i].depth));
        order
    }

    fn compute_effective(&mut self) {
        for id in self.preorder() {
            self.compute_effective_one(id);
        }
        self.grant_all();
    }

    /// Effective count limits of one tenant from its own and its parent's (already computed).
    /// Quotas are granted per family of siblings instead (`regrant`, `grant_all`).
    pub(crate) fn compute_effective_one(&mut self, id: NodeId) {
        let pc = match self.nodes[id].parent {
            Some(p) => self.nodes[p].effective_counts,
            None => [-1; 4],
        };
        let n = &mut self.nodes[id];
        for ((eff, &own), &up) in n.effective_counts.iter_mut().zip(&n.counts).zip(&pc) {
            *eff = match (own, up) {
                (-1, x) | (x, -1) => x,
                (a, b) => a.min(b),
            };
        }
    }

    fn check_counts(&self, report: &mut Report<'_>) {
        for (id, n) in self.nodes.iter().enumerate() {
            if n.depth == 0 {
                continue;
            }
            for r in CountResource::ALL {
                let limit = n.counts[r.index()];
                let used = n.subtree.get(r);
                if limit >= 0 && used > limit {
                    let what = if limit == 0 {
                        "prohibits it (limit 0)".to_string()
                    } else {
                        format!("allows at most {limit}")
                    };
                    report.add(
                        ObjectKind::Tenant,
                        self.tname(id),
                        n.input,
                        format!("spec.limits.{}", r.field()),
                        ProblemKind::LimitExceeded,
                        format!(
                            "the subtree uses {used} {r}, but this tenant {what}{}",
                            self.limit_source(id, r)
                        ),
                    );
                }
            }
        }
    }

    /// " (from LimitProfile p)" when the limit comes from the profile, else "".
    fn limit_source(&self, id: NodeId, r: CountResource) -> String {
        let t = &self.inventory.tenants[self.nodes[id].input];
        match (&t.spec.limit_profile, t.spec.limits.count(r)) {
            (Some(p), None) => format!(" (from LimitProfile {p:?})"),
            _ => String::new(),
        }
    }

    fn channel_visible_to(&self, channel: &str, id: NodeId) -> bool {
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

    pub fn is_channel_visible(&self, channel: &str, id: NodeId) -> bool {
        self.channel_visible_to(channel, id)
    }
}

/// A tenant name must be a DNS label short enough that its namespace name fits.
pub fn check_tenant_name(name: &str, max_len: usize) -> Result<(), String> {
    if is_dns_label(name) && name.len() <= max_len {
        Ok(())
    } else {
        Err(format!(
            "{name:?} must be lower-case letters, digits and '-' (starting and ending with a letter or digit), at most {max_len} characters so that its namespace name fits"
        ))
    }
}

/// Reports counts below -1 and quantities that do not parse.
pub(crate) fn check_limit_values(l: &Limits, mut problem: impl FnMut(String, String)) {
    for r in CountResource::ALL {
        if let Some(v) = l.count(r)
            && v < -1
        {
            problem(
                format!("spec.limits.{}", r.field()),
                format!(
                    "{v} is not allowed: use -1 (no own limit), 0 (prohibited) or a positive count"
                ),
            );
        }
    }
    for r in QuotaResource::ALL {
        if let Some(q) = l.quota(r)
            && let Err(e) = quota_millis(q)
        {
            problem(format!("spec.limits.{}", r.field()), e.to_string());
        }
    }
}

/// `metadata.name` of a Tenant: a DNS label the namespace prefix still fits.
fn check_name_of(name: &str, input: usize, settings: &EngineSettings, report: &mut Report<'_>) {
    if let Err(reason) = check_tenant_name(name, settings.max_name_len) {
        report.add(
            ObjectKind::Tenant,
            name,
            input,
            "metadata.name",
            ProblemKind::InvalidName,
            reason,
        );
    }
}

/// What the engine reads of a Tenant, for the trees the operator and the webhook keep in
/// memory: identity and lifecycle metadata (no annotations, no managed fields: a
/// `kubectl apply` annotation alone can be as large as the object), the spec, and the observed
/// usage of its status (the rest of the status is the operator's output, not the engine's
/// input). The controller's watch cache keeps the whole object.
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
