//! Validate: the problems that stop a tenant from being reconciled, and what an invalid spec
//! still does — status Failed naming every problem, and the withdrawal of bindings the spec
//! may not grant.

use crate::hierarchy::{NodeId, ObjectKind, ProblemKind, TenantTree};
use crate::render;
use crate::types::{Phase, Tenant};

use super::{Next, Outcome, Reconciler, status};
use crate::operator::cluster::{Cluster, EventInfo, ObjectKey};
use crate::operator::error::Error;

/// Problems that stop the tenant from being reconciled: its own spec problems (over-use of
/// limits is reported by the webhook and API, it does not tear a running silo down; a quota
/// that breaks the hierarchical rule is rendered with the grant that keeps the rule).
pub fn blocking_problems(tree: &TenantTree, id: NodeId) -> Vec<String> {
    let name = tree.name(id);
    let mut out: Vec<String> = tree
        .problems()
        .iter()
        .filter(|p| p.object == ObjectKind::Tenant && p.name == name)
        .filter(|p| {
            !matches!(
                p.kind,
                ProblemKind::LimitExceeded
                    | ProblemKind::QuotaOverParent
                    | ProblemKind::QuotaRequired
            )
        })
        .map(|p| format!("{}: {}", p.field, p.reason))
        .collect();
    if out.is_empty() && tree.node(id).depth == 0 {
        out.push(
            "spec.parent: the tenant is not attached to the tree (an ancestor is missing or invalid)"
                .to_string(),
        );
    }
    out
}

impl<C: Cluster> Reconciler<C> {
    /// Invalid spec: status Failed naming every problem, one event, then wait for a change.
    pub(super) async fn fail(
        &self,
        tenant: &Tenant,
        problems: Vec<String>,
    ) -> Result<Outcome, Error> {
        let message = problems.join("; ");
        tracing::warn!(%message, "invalid tenant spec");
        self.count_error("invalid_spec");
        let new = status::invalid_spec(tenant, &message);
        let deleted = self.withdraw_refused_people(tenant).await?;
        let written = self.write_status(tenant, new).await?;
        if written {
            self.event(
                tenant,
                EventInfo::warning("InvalidSpec", "Validate", &message),
            )
            .await;
        }
        Ok(Outcome {
            next: Next::AwaitChange,
            phase: Phase::Failed,
            applied: 0,
            deleted,
            status_written: written,
        })
    }

    /// A spec that is not reconciled must not keep granting what it names wrongly: the
    /// RoleBindings an earlier operator (or an earlier, laxer rule) made for admins or members
    /// the people rule now refuses ([`crate::hierarchy::check_admin`],
    /// [`crate::hierarchy::check_member`]: `system:authenticated`, another namespace's service
    /// accounts, …) are deleted — `silo-admins` whole when any admin is refused (its other
    /// subjects come back once the spec is fixed), and the member binding of each refused
    /// member. Everything else stays as it was until the spec is valid again. Returns the
    /// number of bindings deleted (a Warning event names each).
    async fn withdraw_refused_people(&self, tenant: &Tenant) -> Result<usize, Error> {
        let ns = self.config.namespace_for(tenant.name());
        let mut doomed = Vec::new();
        if tenant
            .spec
            .admins
            .iter()
            .any(|a| crate::hierarchy::check_admin(a, &ns).is_err())
        {
            doomed.push(render::rbac::ADMINS_BINDING.to_string());
        }
        for m in &tenant.spec.members {
            if crate::hierarchy::check_member(m, &ns).is_err() {
                doomed.push(render::rbac::member_binding_name(&m.user, &m.role));
            }
        }
        if doomed.is_empty() {
            return Ok(0);
        }
        let owned = self.cluster.list_owned(tenant.name()).await?;
        let mut deleted = 0;
        for name in doomed {
            let key = ObjectKey::new("RoleBinding", Some(&ns), &name);
            if !owned.iter().any(|o| o.key == key) {
                continue;
            }
            self.cluster.delete(&key).await?;
            deleted += 1;
            let note = format!(
                "deleted {key}: it binds a subject the spec may not name (see the InvalidSpec condition)"
            );
            let event = EventInfo::warning("AccessWithdrawn", "Validate", &note);
            self.event(tenant, event).await;
        }
        Ok(deleted)
    }
}
