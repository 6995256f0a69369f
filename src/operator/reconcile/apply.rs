//! Build and apply: render the tenant's objects ([`crate::render`]), compare them with what
//! the cluster holds ([`desired::plan`]) and carry out the difference ([`objects::apply_plan`]).
//! The events that report it come after the credentials step ([`Reconciler::report_applied`]),
//! so that one reconcile's events read in the order the work was done.

use crate::hierarchy::{NodeId, TenantTree};
use crate::render;
use crate::types::Tenant;

use super::desired::{self, Desired};
use super::objects::{self, Applied};
use super::{Reconciler, status};
use crate::operator::cluster::{Cluster, EventInfo};
use crate::operator::error::Error;

/// Build: the objects the tenant should have, each with its hash.
pub(super) fn build(
    tree: &TenantTree,
    id: NodeId,
    config: &crate::config::PlatformConfig,
) -> Vec<Desired> {
    render::render_tenant(tree, id, config)
        .iter()
        .map(desired::prepare)
        .collect()
}

impl<C: Cluster> Reconciler<C> {
    /// Apply what differs from `desired`, delete what is no longer desired, and remember the
    /// foreign edits answered by a re-apply (see [`desired::plan`]).
    pub(super) async fn apply(
        &self,
        tenant: &Tenant,
        desired: &[Desired],
    ) -> Result<Applied, Error> {
        let observed = self.cluster.list_owned(tenant.name()).await?;
        let acknowledged = self
            .acknowledged
            .lock()
            .map(|a| a.clone())
            .unwrap_or_default();
        let plan = desired::plan(desired, &observed, &acknowledged);
        let applied = objects::apply_plan(&self.cluster, &plan, &observed).await?;
        for key in &applied.drift {
            if let Some(t) = observed
                .iter()
                .find(|o| &o.key == key)
                .and_then(|o| o.foreign_edit.clone())
                && let Ok(mut a) = self.acknowledged.lock()
            {
                a.insert(key.clone(), t);
            }
        }
        Ok(applied)
    }

    /// The metric and events of the apply step: one `Applied` event naming what was written,
    /// replaced and deleted, and one `Rejected` event per object the API server newly refused.
    /// The `Applied` event's note also carries the details of applying (`progress`: Secrets
    /// and the data key written, channel bridge changes), so a new tenant gets one event for
    /// everything it was given instead of one per part — each event is a write to the API
    /// server. Without an `Applied` event each detail is its own event. Every detail still
    /// reaches the audit trail under its own reason. The `Applied` event itself is left in
    /// `applied.note` for the status step, which folds it into the phase-change event when
    /// the phase changes in the same reconcile (a new tenant: one event, not two).
    pub(super) async fn report_applied(
        &self,
        tenant: &Tenant,
        applied: &mut Applied,
        progress: Vec<(&'static str, String)>,
    ) {
        let stale = &applied.deleted;
        let counts = applied.counts;
        self.with_metrics(|m| m.objects_applied(applied.writes() as u64));
        if applied.writes() > 0 || !stale.is_empty() {
            let mut note = format!(
                "applied {} object(s) ({} created, {} updated, {} drift repaired)",
                counts.iter().sum::<usize>(),
                counts[0],
                counts[1],
                counts[2]
            );
            if !applied.replaced.is_empty() {
                let list: Vec<String> = applied
                    .replaced
                    .iter()
                    .map(|(k, why)| format!("{k} ({why})"))
                    .collect();
                note.push_str(&format!("; replaced {}", list.join(", ")));
            }
            if !stale.is_empty() {
                let list: Vec<String> = stale.iter().map(ToString::to_string).collect();
                note.push_str(&format!("; deleted {}", list.join(", ")));
            }
            for (reason, detail) in &progress {
                self.record(tenant, &EventInfo::normal(reason, "Apply", detail));
                note.push_str("; ");
                note.push_str(detail);
            }
            self.record(tenant, &EventInfo::normal("Applied", "Apply", &note));
            applied.note = Some(note);
        } else {
            for (reason, detail) in &progress {
                self.event(tenant, EventInfo::normal(reason, "Apply", detail))
                    .await;
            }
        }
        for p in applied.problems.iter().filter(|p| p.permanent()) {
            self.count_error("rejected");
            // One event per new refusal, not one per retry (the condition holds the message).
            if !status::shows_problem(tenant.status.as_ref(), p) {
                self.event(
                    tenant,
                    EventInfo::warning(objects::REJECTED, "Apply", &p.message),
                )
                .await;
            }
        }
    }
}
