//! Prometheus metrics: reconciles, errors by kind, reconcile duration, tenants by phase and
//! per-tenant usage against limits.

use std::collections::HashMap;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::types::{CountResource, Limits, Phase, UsageCounts};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    pub phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UsageLabel {
    pub tenant: String,
    pub resource: String,
}

pub struct Metrics {
    registry: Registry,
    pub reconciles: Counter,
    pub errors: Family<KindLabel, Counter>,
    /// Watched objects that could not be decoded, by kind (skipped; see
    /// [`crate::operator::controller::guard`]).
    pub undecodable: Family<KindLabel, Counter>,
    pub duration: Histogram,
    pub applied: Counter,
    pub phases: Family<PhaseLabel, Gauge>,
    pub usage: Family<UsageLabel, Gauge>,
    pub limit: Family<UsageLabel, Gauge>,
    phase_of: Mutex<HashMap<String, Phase>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("silo");
        let reconciles = Counter::default();
        let errors = Family::<KindLabel, Counter>::default();
        let undecodable = Family::<KindLabel, Counter>::default();
        let duration = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        let applied = Counter::default();
        let phases = Family::<PhaseLabel, Gauge>::default();
        let usage = Family::<UsageLabel, Gauge>::default();
        let limit = Family::<UsageLabel, Gauge>::default();
        registry.register("reconciles", "Tenant reconciles run", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Failed reconciles by error kind",
            errors.clone(),
        );
        registry.register(
            "undecodable_objects",
            "Watched objects that could not be decoded, by kind (skipped)",
            undecodable.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of one tenant reconcile",
            duration.clone(),
        );
        registry.register(
            "objects_applied",
            "Objects written by server-side apply",
            applied.clone(),
        );
        registry.register("tenants", "Tenants by phase", phases.clone());
        registry.register(
            "tenant_usage",
            "Subtree usage per tenant and resource",
            usage.clone(),
        );
        registry.register(
            "tenant_limit",
            "Effective limit per tenant and resource (absent = unlimited)",
            limit.clone(),
        );
        Metrics {
            registry,
            reconciles,
            errors,
            undecodable,
            duration,
            applied,
            phases,
            usage,
            limit,
            phase_of: Mutex::new(HashMap::new()),
        }
    }

    pub fn error(&self, kind: &str) {
        self.errors
            .get_or_create(&KindLabel {
                kind: kind.to_string(),
            })
            .inc();
    }

    /// Counts one watched object of `kind` that could not be decoded.
    pub fn undecodable(&self, kind: &str) {
        self.undecodable
            .get_or_create(&KindLabel {
                kind: kind.to_string(),
            })
            .inc();
    }

    pub fn objects_applied(&self, n: u64) {
        self.applied.inc_by(n);
    }

    pub fn reconciled(&self, seconds: f64) {
        self.reconciles.inc();
        self.duration.observe(seconds);
    }

    /// Track the tenant's phase (for the tenants-by-phase gauge).
    pub fn set_phase(&self, tenant: &str, phase: Phase) {
        let Ok(mut map) = self.phase_of.lock() else {
            return;
        };
        if let Some(old) = map.insert(tenant.to_string(), phase) {
            self.phase_gauge(old).dec();
        }
        self.phase_gauge(phase).inc();
    }

    fn phase_gauge(&self, phase: Phase) -> Gauge {
        self.phases
            .get_or_create(&PhaseLabel {
                phase: phase.to_string(),
            })
            .clone()
    }

    pub fn record_tenant(&self, tenant: &str, limits: &Limits, subtree: &UsageCounts) {
        for r in CountResource::ALL {
            let label = UsageLabel {
                tenant: tenant.to_string(),
                resource: r.field().to_string(),
            };
            self.usage.get_or_create(&label).set(subtree.get(r));
            match limits.count(r) {
                Some(l) => {
                    self.limit.get_or_create(&label).set(l);
                }
                None => {
                    self.limit.remove(&label);
                }
            }
        }
    }

    pub fn forget_tenant(&self, tenant: &str) {
        if let Ok(mut map) = self.phase_of.lock()
            && let Some(old) = map.remove(tenant)
        {
            self.phase_gauge(old).dec();
        }
        for r in CountResource::ALL {
            let label = UsageLabel {
                tenant: tenant.to_string(),
                resource: r.field().to_string(),
            };
            self.usage.remove(&label);
            self.limit.remove(&label);
        }
    }

    /// Text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_reconciles_errors_phases_and_usage() {
        let m = Metrics::new();
        m.reconciled(0.01);
        m.error("transient");
        m.set_phase("acme", Phase::Provisioning);
        m.set_phase("acme", Phase::Ready);
        let limits = Limits {
            devices: Some(100),
            ..Default::default()
        };
        let used = UsageCounts {
            devices: 7,
            ..Default::default()
        };
        m.record_tenant("acme", &limits, &used);
        let text = m.encode();
        assert!(text.contains("silo_reconciles_total 1"), "{text}");
        assert!(
            text.contains("silo_reconcile_errors_total{kind=\"transient\"} 1"),
            "{text}"
        );
        assert!(text.contains("silo_tenants{phase=\"Ready\"} 1"), "{text}");
        assert!(
            text.contains("silo_tenants{phase=\"Provisioning\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("silo_tenant_usage{tenant=\"acme\",resource=\"devices\"} 7"),
            "{text}"
        );
        assert!(
            text.contains("silo_tenant_limit{tenant=\"acme\",resource=\"devices\"} 100"),
            "{text}"
        );
        assert!(
            text.contains("silo_reconcile_duration_seconds_bucket"),
            "{text}"
        );
        m.forget_tenant("acme");
        assert!(!m.encode().contains("tenant=\"acme\""));
    }
}
