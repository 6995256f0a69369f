//! Keeping an analysed tree current one object at a time, for the admission webhook's
//! always-current view (watch events arrive one by one; rebuilding 100,000 tenants per
//! event would be far too slow).
//!
//! The common cases are incremental: a new leaf tenant, a changed tenant that keeps its
//! parent, removal of a leaf, any change to a LimitProfile (O(tenants) scan, profiles change
//! rarely) or a Channel. Rare structural cases (an unknown parent, a removed tenant that
//! still has children, a name that repairs a broken chain) fall back to a full
//! [`TenantTree::build`]; the caller learns which happened from [`Applied`].
//!
//! The result of every operation equals what `build` would compute from the same objects,
//! except for [`TenantTree::problems`], which describes the last full build only.

use crate::types::{Channel, CountResource, LimitProfile, Limits, Tenant};

use super::problem::{ObjectKind, ProblemKind};
use super::tree::{ChannelInfo, Node, NodeId, TenantTree};

/// How an incremental operation was carried out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Only the affected nodes and their ancestors were touched.
    Incremental,
    /// The whole tree was rebuilt from its objects (usage recorded with
    /// [`TenantTree::record_usage`] since the last build is gone and must be re-applied).
    Rebuilt,
}

impl TenantTree {
    /// Builds the tree again from its current objects.
    pub fn rebuild(&mut self) {
        let inventory = std::mem::take(&mut self.inventory);
        *self = TenantTree::build(inventory, self.settings.clone());
    }

    /// Inserts a tenant or replaces the one with the same name.
    pub fn upsert_tenant(&mut self, t: Tenant) -> Applied {
        let name = t.name().to_string();
        match self.by_name.get(&name).copied() {
            Some(id) => {
                let old = self.tenant(id);
                if self.nodes[id].depth == 0 || old.spec.parent != t.spec.parent {
                    let input = self.nodes[id].input;
                    self.inventory.tenants[input] = t;
                    self.rebuild();
                    return Applied::Rebuilt;
                }
                self.update_in_place(id, t);
                Applied::Incremental
            }
            None => {
                let parent = match t.spec.parent.as_deref() {
                    None => None,
                    Some(p) => match self.by_name.get(p).copied() {
                        Some(pid) if self.nodes[pid].depth > 0 => Some(pid),
                        _ => {
                            self.inventory.tenants.push(t);
                            self.rebuild();
                            return Applied::Rebuilt;
                        }
                    },
                };
                if self.someone_waits_for(&name) {
                    self.inventory.tenants.push(t);
                    self.rebuild();
                    return Applied::Rebuilt;
                }
                self.insert_leaf(t, parent);
                Applied::Incremental
            }
        }
    }

    /// Removes the tenant with this name; None when there is none.
    pub fn remove_tenant(&mut self, name: &str) -> Option<(Tenant, Applied)> {
        let id = self.by_name.get(name).copied()?;
        let referenced_by_channel = self
            .channels
            .values()
            .any(|c| c.owner == Some(id) || c.visibility.as_ref().is_some_and(|v| v.contains(&id)));
        // Detached tenants keep parent links without being in a children list; moving one
        // into the freed slot would leave those links stale, so rebuild instead.
        let last_is_detached = self.nodes.last().is_some_and(|n| n.depth == 0);
        if self.nodes[id].depth == 0
            || !self.nodes[id].children.is_empty()
            || referenced_by_channel
            || last_is_detached
        {
            let input = self.nodes[id].input;
            let t = self.inventory.tenants.remove(input);
            self.inventory.tenants.retain(|x| x.name() != name);
            self.rebuild();
            return Some((t, Applied::Rebuilt));
        }
        Some((self.remove_leaf(id), Applied::Incremental))
    }

    /// Inserts or replaces a LimitProfile and refreshes the limits of the tenants using it.
    pub fn upsert_profile(&mut self, p: LimitProfile) -> Applied {
        let name = p.name().to_string();
        match self.profiles.get(&name).copied() {
            Some(i) => self.inventory.profiles[i] = p,
            None => {
                self.profiles
                    .insert(name.clone(), self.inventory.profiles.len());
                self.inventory.profiles.push(p);
            }
        }
        self.refresh_profile_users(&name);
        Applied::Incremental
    }

    /// Removes a LimitProfile; tenants that named it fall back to their explicit limits.
    pub fn remove_profile(&mut self, name: &str) -> Option<LimitProfile> {
        let i = self.profiles.remove(name)?;
        let removed = self.inventory.profiles.swap_remove(i);
        if let Some(moved) = self.inventory.profiles.get(i) {
            let moved_name = moved.name().to_string();
            if let Some(slot) = self.profiles.get_mut(&moved_name)
                && *slot == self.inventory.profiles.len()
            {
                *slot = i;
            }
        }
        // A later duplicate of the same name (only possible from `build` input) takes over.
        if let Some(j) = self
            .inventory
            .profiles
            .iter()
            .position(|p| p.name() == name)
        {
            self.profiles.insert(name.to_string(), j);
        }
        self.refresh_profile_users(name);
        Some(removed)
    }

    /// Inserts or replaces a Channel; its owner's `channels` usage follows.
    pub fn upsert_channel(&mut self, c: Channel) -> Applied {
        let name = c.name().to_string();
        let input = match self.channels.get(&name) {
            Some(info) => {
                let (input, owner) = (info.input, info.owner);
                if let Some(o) = owner {
                    self.record_usage(o, CountResource::Channels, -1);
                }
                self.inventory.channels[input] = c;
                input
            }
            None => {
                self.inventory.channels.push(c);
                self.inventory.channels.len() - 1
            }
        };
        let info = self.channel_info(input);
        if let Some(o) = info.owner {
            self.record_usage(o, CountResource::Channels, 1);
        }
        self.channels.insert(name, info);
        Applied::Incremental
    }

    /// Removes a Channel; None when there is none.
    pub fn remove_channel(&mut self, name: &str) -> Option<Channel> {
        let info = self.channels.remove(name)?;
        if let Some(o) = info.owner {
            self.record_usage(o, CountResource::Channels, -1);
        }
        let removed = self.inventory.channels.swap_remove(info.input);
        let last = self.inventory.channels.len();
        if let Some(moved) = self.inventory.channels.get(info.input) {
            let moved_name = moved.name().to_string();
            if let Some(m) = self.channels.get_mut(&moved_name)
                && m.input == last
            {
                m.input = info.input;
            }
        }
        Some(removed)
    }

    // ----- queries used to judge a proposed object without inserting it -----

    /// The LimitProfile with this name.
    pub fn profile(&self, name: &str) -> Option<&LimitProfile> {
        self.profiles
            .get(name)
            .map(|&i| &self.inventory.profiles[i])
    }

    /// The Channel object with this name.
    pub fn channel_object(&self, name: &str) -> Option<&Channel> {
        self.channels
            .get(name)
            .map(|c| &self.inventory.channels[c.input])
    }

    /// Whether `channel` would be visible to a new tenant placed directly below `parent`
    /// (None = a new root): whether it is visible to `parent`, as the new tenant owns nothing
    /// and heads no visibility subtree.
    pub fn channel_visible_to_new_child(&self, channel: &str, parent: Option<NodeId>) -> bool {
        parent.is_some_and(|p| self.is_channel_visible(channel, p))
    }

    /// The limits a tenant with this `limitProfile` and explicit `limits` gets when placed
    /// directly below `parent`: the profile applies only when its owner is `parent` or one
    /// of its ancestors (i.e. a strict ancestor of the new tenant).
    pub fn limits_for_new_child(
        &self,
        profile: Option<&str>,
        limits: &Limits,
        parent: Option<NodeId>,
    ) -> Limits {
        let base = profile
            .and_then(|p| self.profile_for("", p, parent).ok())
            .cloned()
            .unwrap_or_default();
        limits.overlay_on(&base)
    }

    // ----- internals -----

    /// True when a channel or a detached tenant refers to `name`, which is not in the tree:
    /// inserting it must re-resolve those references, so a full build is used.
    fn someone_waits_for(&self, name: &str) -> bool {
        let channel_ref = self.inventory.channels.iter().any(|c| {
            c.spec.owner == name
                || c.spec
                    .visibility
                    .as_ref()
                    .is_some_and(|v| v.subtrees.iter().any(|s| s == name))
        });
        channel_ref
            || self.problems.iter().any(|p| {
                p.object == ObjectKind::Tenant
                    && matches!(p.kind, ProblemKind::UnknownParent | ProblemKind::Cycle)
                    && self
                        .by_name
                        .get(&p.name)
                        .is_some_and(|&c| self.tenant(c).spec.parent.as_deref() == Some(name))
            })
    }

    fn insert_leaf(&mut self, t: Tenant, parent: Option<NodeId>) -> NodeId {
        let input = self.inventory.tenants.len();
        let name = t.name().to_string();
        let depth = parent.map_or(1, |p| self.nodes[p].depth + 1);
        let observed = observed_usage(&t);
        self.inventory.tenants.push(t);
        let id = self.nodes.len();
        let mut own = crate::types::UsageCounts {
            devices: observed.devices,
            mqtt_connections: observed.mqtt_connections,
            ..Default::default()
        };
        own.subtenants = 0;
        self.nodes.push(Node {
            input,
            parent,
            children: Vec::new(),
            depth,
            limits: Limits::default(),
            counts: [-1; 4],
            quotas: [None; 4],
            effective_counts: [-1; 4],
            effective_quotas: [None; 4],
            namespace_quotas: [None; 4],
            own,
            subtree: own,
        });
        self.by_name.insert(name.clone(), id);
        let siblings = match parent {
            Some(p) => &self.nodes[p].children,
            None => &self.roots,
        };
        let pos = siblings.partition_point(|&s| self.tname_of(s) < name.as_str());
        match parent {
            Some(p) => self.nodes[p].children.insert(pos, id),
            None => self.roots.insert(pos, id),
        }
        self.resolve_node_limits(id);
        self.compute_effective_one(id);
        self.regrant(parent.unwrap_or(id));
        let chain: Vec<NodeId> = self.ancestors(id).collect();
        for a in chain {
            self.nodes[a].subtree.add(&own);
        }
        if let Some(p) = parent {
            self.record_usage(p, CountResource::Subtenants, 1);
        }
        id
    }

    fn update_in_place(&mut self, id: NodeId, t: Tenant) {
        let input = self.nodes[id].input;
        let observed = observed_usage(&t);
        let reordered = t.metadata.creation_timestamp
            != self.inventory.tenants[input].metadata.creation_timestamp;
        self.inventory.tenants[input] = t;
        self.refresh_limits(id);
        if reordered && let Some(p) = self.nodes[id].parent {
            // Grants among siblings follow creation order.
            self.regrant(p);
        }
        let own = self.nodes[id].own;
        let dd = observed.devices - own.devices;
        let dm = observed.mqtt_connections - own.mqtt_connections;
        if dd != 0 {
            self.record_usage(id, CountResource::Devices, dd);
        }
        if dm != 0 {
            self.record_usage(id, CountResource::MqttConnections, dm);
        }
    }

    fn remove_leaf(&mut self, id: NodeId) -> Tenant {
        let sub = self.nodes[id].subtree;
        let chain: Vec<NodeId> = self.ancestors(id).collect();
        for a in chain {
            let s = &mut self.nodes[a].subtree;
            s.subtenants -= sub.subtenants;
            s.devices -= sub.devices;
            s.channels -= sub.channels;
            s.mqtt_connections -= sub.mqtt_connections;
        }
        let parent = self.nodes[id].parent;
        if let Some(p) = parent {
            self.record_usage(p, CountResource::Subtenants, -1);
            self.nodes[p].children.retain(|&c| c != id);
        } else {
            self.roots.retain(|&c| c != id);
        }
        let name = self.tname_of(id).to_string();
        self.by_name.remove(&name);

        // Move the last node into slot `id`.
        let last = self.nodes.len() - 1;
        let node = self.nodes.swap_remove(id);
        if id != last {
            let moved_name = self.tname_of(id).to_string();
            self.by_name.insert(moved_name, id);
            let replace = |v: &mut Vec<NodeId>| {
                for x in v.iter_mut() {
                    if *x == last {
                        *x = id;
                    }
                }
            };
            match self.nodes[id].parent {
                Some(p) => replace(&mut self.nodes[p].children),
                None => replace(&mut self.roots),
            }
            let children = self.nodes[id].children.clone();
            for c in children {
                self.nodes[c].parent = Some(id);
            }
            for info in self.channels.values_mut() {
                if info.owner == Some(last) {
                    info.owner = Some(id);
                }
                if let Some(v) = info.visibility.as_mut() {
                    replace(v);
                }
            }
        }

        // Move the last tenant object into slot `node.input`.
        let input = node.input;
        let last_input = self.inventory.tenants.len() - 1;
        let removed = self.inventory.tenants.swap_remove(input);
        if input != last_input {
            let moved = self.inventory.tenants[input].name().to_string();
            if let Some(&m) = self.by_name.get(&moved)
                && self.nodes[m].input == last_input
            {
                self.nodes[m].input = input;
            }
        }
        // The parent (possibly moved into slot `id`) shares its budget among fewer children.
        if let Some(p) = parent.map(|p| if p == last { id } else { p }) {
            self.regrant(p);
        }
        removed
    }

    fn tname_of(&self, id: NodeId) -> &str {
        self.inventory.tenants[self.nodes[id].input].name()
    }

    /// Own limits of `id`, by the same rule as `build` ([`TenantTree::resolved_limits`]).
    fn resolve_node_limits(&mut self, id: NodeId) {
        let limits = self.resolved_limits(id);
        self.nodes[id].set_limits(limits);
    }

    /// Resolves `id`'s own limits again and updates what depends on them: the effective
    /// counts of its subtree, the quota grants of its family (only for attached tenants).
    fn refresh_limits(&mut self, id: NodeId) {
        let (counts, quotas) = (self.nodes[id].counts, self.nodes[id].quotas);
        self.resolve_node_limits(id);
        if self.nodes[id].depth == 0 {
            return;
        }
        if counts != self.nodes[id].counts {
            self.compute_effective_one(id);
            for d in self.descendants(id) {
                self.compute_effective_one(d);
            }
        }
        if quotas != self.nodes[id].quotas {
            self.regrant(self.nodes[id].parent.unwrap_or(id));
        }
    }

    fn refresh_profile_users(&mut self, profile: &str) {
        let users: Vec<NodeId> = (0..self.nodes.len())
            .filter(|&id| self.tenant(id).spec.limit_profile.as_deref() == Some(profile))
            .collect();
        for id in users {
            self.refresh_limits(id);
        }
    }

    fn channel_info(&self, input: usize) -> ChannelInfo {
        let c = &self.inventory.channels[input];
        let owner = self.by_name.get(&c.spec.owner).copied();
        let visibility = c.spec.visibility.as_ref().map(|v| {
            v.subtrees
                .iter()
                .filter_map(|s| self.by_name.get(s).copied())
                .filter(|&s| owner.is_none_or(|o| self.is_self_or_ancestor(o, s)))
                .collect()
        });
        ChannelInfo {
            input,
            owner,
            visibility,
        }
    }
}

fn observed_usage(t: &Tenant) -> crate::types::UsageCounts {
    t.status
        .as_ref()
        .and_then(|s| s.usage.as_ref())
        .map(|u| u.own)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hierarchy::{EngineSettings, Inventory};
    use crate::types::{ChannelSpec, LimitProfileSpec, QuantityValue, QuotaResource, Visibility};

    use crate::hierarchy::synthetic::tenant;

    fn with_limits(mut t: Tenant, f: impl FnOnce(&mut Limits)) -> Tenant {
        f(&mut t.spec.limits);
        t
    }

    fn profile(name: &str, owner: &str, devices: i64) -> LimitProfile {
        LimitProfile::new(
            name,
            LimitProfileSpec {
                owner: owner.into(),
                limits: Limits {
                    devices: Some(devices),
                    cpu: Some(QuantityValue::new("2")),
                    ..Default::default()
                },
            },
        )
    }

    fn channel(name: &str, owner: &str, vis: Option<Vec<&str>>) -> Channel {
        Channel::new(
            name,
            ChannelSpec {
                owner: owner.into(),
                visibility: vis.map(|v| Visibility {
                    subtrees: v.into_iter().map(String::from).collect(),
                }),
                ..Default::default()
            },
        )
    }

    /// Everything derived per tenant, keyed by name, for comparing two trees.
    fn snapshot(t: &TenantTree) -> Vec<String> {
        let mut ids: Vec<NodeId> = t.by_name.values().copied().collect();
        ids.sort_by_key(|&id| t.name(id).to_string());
        let mut out: Vec<String> = ids
            .into_iter()
            .map(|id| {
                let n = t.node(id);
                let ch: Vec<&str> = n.children.iter().map(|&c| t.name(c)).collect();
                let problems: Vec<String> =
                    t.tenant_problems(id).iter().map(|p| p.to_string()).collect();
                format!(
                    "{} parent={:?} depth={} counts={:?} quotas={:?} eff={:?}/{:?}/{:?} own={:?} sub={:?} children={:?} problems={:?}",
                    t.name(id),
                    n.parent.map(|p| t.name(p)),
                    n.depth,
                    n.counts,
                    n.quotas,
                    n.effective_counts,
                    n.effective_quotas,
                    n.namespace_quotas,
                    n.own,
                    n.subtree,
                    ch,
                    problems
                )
            })
            .collect();
        let roots: Vec<&str> = t.roots().iter().map(|&r| t.name(r)).collect();
        out.push(format!("roots={roots:?}"));
        let mut chans: Vec<String> = t
            .channels
            .iter()
            .map(|(k, v)| {
                let vis = v
                    .visibility
                    .as_ref()
                    .map(|v| v.iter().map(|&x| t.name(x).to_string()).collect::<Vec<_>>());
                format!("{k} owner={:?} vis={vis:?}", v.owner.map(|o| t.name(o)))
            })
            .collect();
        chans.sort();
        out.extend(chans);
        out
    }

    fn rebuilt(t: &TenantTree) -> TenantTree {
        TenantTree::build(t.inventory().clone(), EngineSettings::default())
    }

    fn base() -> TenantTree {
        let inv = Inventory {
            tenants: vec![
                with_limits(tenant("root", None), |l| {
                    l.subtenants = Some(10);
                    l.cpu = Some(QuantityValue::new("8"));
                }),
                tenant("a", Some("root")),
                tenant("b", Some("root")),
                tenant("a1", Some("a")),
            ],
            profiles: vec![profile("small", "root", 5)],
            channels: vec![channel("tel", "root", Some(vec!["a"]))],
        };
        TenantTree::build(inv, EngineSettings::default())
    }

    #[test]
    fn leaf_insert_matches_full_build() {
        let mut t = base();
        let mut x = tenant("a0", Some("a"));
        x.spec.limit_profile = Some("small".into());
        assert_eq!(t.upsert_tenant(x), Applied::Incremental);
        assert_eq!(t.upsert_tenant(tenant("c", None)), Applied::Incremental);
        assert_eq!(snapshot(&t), snapshot(&rebuilt(&t)));
        let a0 = t.get("a0").unwrap();
        assert_eq!(t.node(a0).counts[CountResource::Devices.index()], 5);
        assert_eq!(t.node(t.get("root").unwrap()).subtree.subtenants, 4);
    }

    #[test]
    fn update_limits_and_usage_match_full_build() {
        let mut t = base();
        let mut a = t.tenant(t.get("a").unwrap()).clone();
        a.spec.limits.devices = Some(3);
        a.status = Some(crate::types::TenantStatus {
            usage: Some(crate::types::tenant::UsageStatus {
                own: crate::types::UsageCounts {
                    devices: 2,
                    ..Default::default()
                },
                subtree: Default::default(),
            }),
            ..Default::default()
        });
        assert_eq!(t.upsert_tenant(a), Applied::Incremental);
        assert_eq!(snapshot(&t), snapshot(&rebuilt(&t)));
        let a1 = t.get("a1").unwrap();
        assert_eq!(
            t.node(a1).effective_counts[CountResource::Devices.index()],
            3
        );
    }

    #[test]
    fn leaf_removal_matches_full_build() {
        let mut t = base();
        let (_, how) = t.remove_tenant("b").unwrap();
        assert_eq!(how, Applied::Incremental);
        assert_eq!(snapshot(&t), snapshot(&rebuilt(&t)));
        let (_, how) = t.remove_tenant("a1").unwrap();
        assert_eq!(how, Applied::Incremental);
        assert_eq!(snapshot(&t), snapshot(&rebuilt(&t)));
        assert!(t.remove_tenant("nope").is_none());
    }

    #[test]
    fn removing_a_parent_or_channel_owner_rebuilds() {
        let mut t = base();
        let (_, how) = t.remove_tenant("a").unwrap();
        assert_eq!(how, Applied::Rebuilt);
        assert!(
            t.problems()
                .iter()
                .any(|p| p.name == "a1" && p.kind == ProblemKind::UnknownParent)
        );
        // Putting the parent back re-attaches the orphan.
        assert_eq!(t.upsert_tenant(tenant("a", Some("root"))), Applied::Rebuilt);
        assert!(t.node(t.get("a1").unwrap()).depth == 3);
        assert_eq!(snapshot(&t), snapshot(&rebuilt(&t)));
    }

    #[test]
    fn profile_and_channel_changes_match_full_build() {
        let mut t = base();
        let mut x = tenant("a0", Some("a"));
        x.spec.limit_profile = Some("small".into());
        t.upsert_tenant(x);
        t.upsert_profile(profile("small", "root", 7));
        assert_eq!(snapshot(&t), snapshot(&rebuilt(&t)));
        let a0 = t.get("a0").unwrap();
        assert_eq!(t.node(a0).counts[CountResource::Devices.index()], 7);
        t.upsert_channel(channel("tel", "a", None));
        t.upsert_channel(channel("other", "b", Some(vec!["b"])));
        assert_eq!(snapshot(&t), snapshot(&rebuilt(&t)));
        assert!(t.remove_channel("tel").is_some());
        assert_eq!(snapshot(&t), snapshot(&rebuilt(&t)));
        assert!(t.remove_profile("small").is_some());
        assert_eq!(snapshot(&t), snapshot(&rebuilt(&t)));
        assert_eq!(t.node(a0).counts[CountResource::Devices.index()], -1);
    }

    #[test]
    fn tenant_problems_are_current_after_incremental_changes() {
        let mut t = base();
        let mut x = tenant("a0", Some("a"));
        x.spec.channels = vec!["missing".into()];
        x.spec.limit_profile = Some("nope".into());
        assert_eq!(t.upsert_tenant(x), Applied::Incremental);
        let a0 = t.get("a0").unwrap();
        let own: Vec<String> = t
            .tenant_problems(a0)
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(
            own,
            vec![
                "Tenant/a0: spec.limitProfile: LimitProfile \"nope\" does not exist",
                "Tenant/a0: spec.channels[0]: Channel \"missing\" does not exist",
            ]
        );
        // The full build's list has not seen it (it describes the last build) ...
        assert!(!t.problems().iter().any(|p| p.name == "a0"));
        // ... and a full build agrees with the per-tenant answer (which leaves out usage
        // against limits and quotas: a0 has no cpu quota of its own below a's).
        let full = rebuilt(&t);
        let built: Vec<String> = full
            .problems()
            .iter()
            .filter(|p| p.name == "a0" && p.kind != ProblemKind::QuotaRequired)
            .map(|p| p.to_string())
            .collect();
        assert_eq!(own, built);
        // Fixed in place: the problems go away without a rebuild.
        assert_eq!(
            t.upsert_tenant(tenant("a0", Some("a"))),
            Applied::Incremental
        );
        assert!(t.tenant_problems(a0).is_empty());
    }

    #[test]
    fn parent_change_rebuilds() {
        let mut t = base();
        assert_eq!(t.upsert_tenant(tenant("a1", Some("b"))), Applied::Rebuilt);
        assert_eq!(t.path(t.get("a1").unwrap()), vec!["root", "b", "a1"]);
    }

    #[test]
    fn new_child_queries() {
        let t = base();
        let a = t.get("a");
        let b = t.get("b");
        assert!(t.channel_visible_to_new_child("tel", a));
        assert!(!t.channel_visible_to_new_child("tel", b));
        assert!(!t.channel_visible_to_new_child("tel", None));
        let l = t.limits_for_new_child(Some("small"), &Limits::default(), a);
        assert_eq!(l.devices, Some(5));
        let l = t.limits_for_new_child(Some("small"), &Limits::default(), None);
        assert_eq!(l.devices, None);
        assert_eq!(
            t.children_quota_sum(t.get("root").unwrap(), QuotaResource::Cpu),
            0
        );
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        const NAMES: [&str; 7] = ["n0", "n1", "n2", "n3", "n4", "n5", "n6"];

        #[derive(Clone, Debug)]
        enum Op {
            Tenant {
                name: usize,
                parent: Option<usize>,
                subtenants: Option<i64>,
                cpu: Option<u8>,
                profile: Option<usize>,
                devices_used: i64,
                channel: Option<usize>,
            },
            RemoveTenant(usize),
            Profile {
                name: usize,
                owner: usize,
                devices: i64,
            },
            RemoveProfile(usize),
            Channel {
                name: usize,
                owner: usize,
                vis: Option<Vec<usize>>,
            },
            RemoveChannel(usize),
        }

        fn op() -> impl Strategy<Value = Op> {
            let n = 0..NAMES.len();
            prop_oneof![
                4 => (n.clone(), proptest::option::of(0..NAMES.len()), proptest::option::of(-1i64..4), proptest::option::of(1u8..5), proptest::option::of(0usize..2), 0i64..3, proptest::option::of(0usize..3))
                    .prop_map(|(name, parent, subtenants, cpu, profile, devices_used, channel)| Op::Tenant { name, parent, subtenants, cpu, profile, devices_used, channel }),
                2 => n.clone().prop_map(Op::RemoveTenant),
                1 => (0usize..2, n.clone(), 0i64..5).prop_map(|(name, owner, devices)| Op::Profile { name, owner, devices }),
                1 => (0usize..2).prop_map(Op::RemoveProfile),
                1 => (0usize..2, n.clone(), proptest::option::of(proptest::collection::vec(0..NAMES.len(), 0..3)))
                    .prop_map(|(name, owner, vis)| Op::Channel { name, owner, vis }),
                1 => (0usize..2).prop_map(Op::RemoveChannel),
            ]
        }

        fn apply(t: &mut TenantTree, op: &Op) {
            match op {
                Op::Tenant {
                    name,
                    parent,
                    subtenants,
                    cpu,
                    profile: p,
                    devices_used,
                    channel,
                } => {
                    let mut x = tenant(NAMES[*name], parent.map(|p| NAMES[p]));
                    x.spec.limits.subtenants = *subtenants;
                    x.spec.limits.cpu = cpu.map(|c| QuantityValue::new(c.to_string()));
                    x.spec.limit_profile = p.map(|i| format!("p{i}"));
                    // c2 never exists: an unknown channel; c0/c1 may be invisible.
                    x.spec.channels = channel.map(|i| format!("c{i}")).into_iter().collect();
                    x.status = Some(crate::types::TenantStatus {
                        usage: Some(crate::types::tenant::UsageStatus {
                            own: crate::types::UsageCounts {
                                devices: *devices_used,
                                ..Default::default()
                            },
                            subtree: Default::default(),
                        }),
                        ..Default::default()
                    });
                    t.upsert_tenant(x);
                }
                Op::RemoveTenant(n) => {
                    t.remove_tenant(NAMES[*n]);
                }
                Op::Profile {
                    name,
                    owner,
                    devices,
                } => {
                    t.upsert_profile(profile(&format!("p{name}"), NAMES[*owner], *devices));
                }
                Op::RemoveProfile(n) => {
                    t.remove_profile(&format!("p{n}"));
                }
                Op::Channel { name, owner, vis } => {
                    let v = vis.as_ref().map(|v| v.iter().map(|&i| NAMES[i]).collect());
                    t.upsert_channel(channel(&format!("c{name}"), NAMES[*owner], v));
                }
                Op::RemoveChannel(n) => {
                    t.remove_channel(&format!("c{n}"));
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]
            /// After any sequence of changes the incrementally kept tree equals a full build,
            /// each tenant's own problems included.
            #[test]
            fn incremental_equals_full_build(ops in proptest::collection::vec(op(), 1..40)) {
                let mut t = TenantTree::build(Inventory::default(), EngineSettings::default());
                for op in &ops {
                    apply(&mut t, op);
                    prop_assert_eq!(snapshot(&t), snapshot(&rebuilt(&t)), "after {:?}", op);
                }
            }
        }
    }
}
