//! Events and metrics of a reconcile, through one helper: every step reports with
//! [`Reconciler::event`] (a Kubernetes Event, and an audit record when the event is
//! significant), [`Reconciler::count_error`] and [`Reconciler::with_metrics`] (nothing when
//! the reconciler runs without metrics).

use crate::types::Tenant;

use super::Reconciler;
use crate::operator::cluster::{Cluster, EventInfo};
use crate::operator::error::Error;
use crate::operator::metrics::Metrics;

impl<C: Cluster> Reconciler<C> {
    /// Runs `f` on the metrics, when they are wired in.
    pub(super) fn with_metrics(&self, f: impl FnOnce(&Metrics)) {
        if let Some(m) = &self.metrics {
            f(m);
        }
    }

    /// Counts one failure in `silo_reconcile_errors_total{kind}`.
    pub(super) fn count_error(&self, kind: &str) {
        self.with_metrics(|m| m.error(kind));
    }

    /// Queue the audit record of an event when it is significant, without publishing it
    /// (a detail reported inside another event's note).
    pub(super) fn record(&self, tenant: &Tenant, event: &EventInfo) {
        if let Some(a) = &self.audit {
            a.event(tenant, event);
        }
    }

    /// Publish an event (and queue its audit record when it is significant); a failure to
    /// publish is logged, never fails the reconcile.
    pub(super) async fn event(&self, tenant: &Tenant, event: EventInfo) {
        self.record(tenant, &event);
        self.publish(tenant, &event).await;
    }

    /// Publish an event without an audit record (one already recorded, or a note that folds
    /// records made under their own reasons); a failure is logged, never fails the reconcile.
    pub(super) async fn publish(&self, tenant: &Tenant, event: &EventInfo) {
        if let Err(e) = self.cluster.publish_event(tenant, event).await {
            tracing::warn!(error = %e, reason = event.reason, "could not publish event");
        }
    }

    /// Report a failed reconcile: metric and a Warning event.
    pub async fn report_error(&self, tenant: &Tenant, error: &Error) {
        self.count_error(error.metric_label());
        let note = error.to_string();
        let event = EventInfo::warning(error.event_reason(), "Reconcile", &note);
        self.event(tenant, event).await;
    }
}
