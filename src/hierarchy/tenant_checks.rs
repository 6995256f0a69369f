//! The checks of one tenant's own spec, each a function of the tree and one tenant: its
//! name, its depth, its limit profile and limit values, its channels, its people, the fields
//! the CRD schema bounds, its observed usage, and its custom roles and members' roles (SPEC
//! "Tenant", "LimitProfile" and "Admission"). [`TenantTree::build`] runs each check over every tenant,
//! one pass a check; [`TenantTree::tenant_problems`] runs them for one tenant of a tree kept
//! current incrementally. Both run them in the same order, so that one tenant's problems read
//! the same either way. Problems between objects (duplicate names, unknown parents, cycles)
//! and usage against limits are the build's (`tree.rs`, `check.rs`, `quota.rs`).

use crate::config::is_dns_label;
use crate::types::{CountResource, Limits, QuotaResource};

use super::people::check_people;
use super::problem::{ObjectKind, Problem, ProblemKind};
use super::quota::quota_millis;
use super::tree::{EngineSettings, NodeId, Report, TenantTree};

impl TenantTree {
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

    /// The build's pass of [`Self::check_depth_of`] over every tenant.
    pub(super) fn check_depths(&self, report: &mut Report<'_>) {
        for id in 0..self.nodes.len() {
            self.check_depth_of(id, report);
        }
    }

    /// `spec.parent`: the tenant's depth is at most `maxDepth`.
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

    /// The build's pass of [`Self::limits_of`] over every tenant, which also sets its limits.
    pub(super) fn resolve_limits(&mut self, report: &mut Report<'_>) {
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

    /// The build's pass of [`Self::check_fields_of`] over every tenant.
    pub(super) fn check_tenant_fields(&self, report: &mut Report<'_>) {
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
                Some(_) if !self.is_channel_visible(ch, id) => report.add(
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

    /// The build's pass of [`Self::check_roles_of`] over every tenant.
    pub(super) fn check_roles(&self, report: &mut Report<'_>) {
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
pub(super) fn check_name_of(
    name: &str,
    input: usize,
    settings: &EngineSettings,
    report: &mut Report<'_>,
) {
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
