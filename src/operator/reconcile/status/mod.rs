//! Status: the Tenant status and every condition it carries, in one place — the part
//! conditions of a reconciled tenant ([`conditions`]), `Ready` and the phase derived from them,
//! the `Ready` of an invalid spec ([`invalid_spec`]) and of a deletion waiting for children
//! ([`deleting`]), the write (only when it differs) and the event of a phase change. Building a
//! status is pure: time is passed in.

mod conditions;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::render::{broker, database};
use crate::types::tenant::{Endpoints, KeyStatus, UsageStatus};
use crate::types::{Isolation, Limits, Phase, Tenant, TenantStatus};

use super::credentials::Credentials;
use super::objects::{Applied, Problem};
use super::read::Placement;
use super::secrets::SecretError;
use super::{Next, Outcome, RESYNC, Reconciler, WAIT_READY, WAIT_WORKLOADS, shared};
use crate::operator::cluster::{Cluster, EventInfo};
use crate::operator::error::Error;

pub const NAMESPACE_READY: &str = "NamespaceReady";
pub const ACCESS_READY: &str = "AccessReady";
pub const DATABASE_READY: &str = "DatabaseReady";
pub const BROKER_READY: &str = "BrokerReady";
pub const KEY_READY: &str = "KeyReady";
pub const CHANNELS_READY: &str = "ChannelsReady";
pub const READY: &str = "Ready";

/// The sub-conditions that make up `Ready`, in the order they are reported.
pub const PARTS: [&str; 6] = [
    NAMESPACE_READY,
    ACCESS_READY,
    DATABASE_READY,
    BROKER_READY,
    KEY_READY,
    CHANNELS_READY,
];

/// `True`, `False` or `Unknown`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Truth {
    True,
    False,
    Unknown,
}

impl Truth {
    pub fn as_str(self) -> &'static str {
        match self {
            Truth::True => "True",
            Truth::False => "False",
            Truth::Unknown => "Unknown",
        }
    }
}

/// Whether the stored status already has condition `type_` with this reason and message.
pub fn has_condition(old: Option<&TenantStatus>, type_: &str, reason: &str, message: &str) -> bool {
    old.is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == type_ && c.reason == reason && c.message == message)
    })
}

/// One condition before it gets its timestamps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cond {
    pub type_: &'static str,
    pub status: Truth,
    pub reason: String,
    pub message: String,
}

impl Cond {
    pub fn new(
        type_: &'static str,
        status: Truth,
        reason: &str,
        message: impl Into<String>,
    ) -> Self {
        Cond {
            type_,
            status,
            reason: reason.to_string(),
            message: message.into(),
        }
    }
}

/// Facts about the tenant's place in the tree.
#[derive(Clone, Debug, Default)]
pub struct TreeFacts {
    pub depth: u32,
    pub path: Vec<String>,
    pub namespace: String,
    pub effective_limits: Option<Limits>,
    pub usage: Option<UsageStatus>,
}

/// Derives `Ready` from the parts: True only when every part is True.
pub fn ready_from(parts: &[Cond]) -> Cond {
    let not_ready: Vec<&Cond> = parts.iter().filter(|c| c.status != Truth::True).collect();
    if not_ready.is_empty() {
        return Cond::new(
            READY,
            Truth::True,
            "SiloReady",
            "every part of the silo is ready",
        );
    }
    let msg = not_ready
        .iter()
        .map(|c| format!("{}: {}", c.type_, c.message))
        .collect::<Vec<_>>()
        .join("; ");
    Cond::new(READY, Truth::False, "NotReady", msg)
}

/// Phase from the parts when nothing overrides it (suspension, deletion, failure).
pub fn phase_from(ready: &Cond) -> Phase {
    if ready.status == Truth::True {
        Phase::Ready
    } else {
        Phase::Provisioning
    }
}

/// Assemble a status. Conditions keep their previous `lastTransitionTime` when their status
/// did not change, so an unchanged tenant produces an identical status (and no write).
pub fn build(
    previous: Option<&TenantStatus>,
    phase: Phase,
    conds: Vec<Cond>,
    facts: TreeFacts,
    key: Option<KeyStatus>,
    generation: Option<i64>,
    now: &Time,
) -> TenantStatus {
    let prev_conds: &[Condition] = previous.map(|s| s.conditions.as_slice()).unwrap_or(&[]);
    let conditions = conds
        .into_iter()
        .map(|c| {
            let since = prev_conds
                .iter()
                .find(|p| p.type_ == c.type_ && p.status == c.status.as_str())
                .map(|p| p.last_transition_time.clone())
                .unwrap_or_else(|| now.clone());
            Condition {
                type_: c.type_.to_string(),
                status: c.status.as_str().to_string(),
                reason: c.reason,
                message: c.message,
                last_transition_time: since,
                observed_generation: generation,
            }
        })
        .collect();
    let mut status = previous.cloned().unwrap_or_default();
    status.phase = Some(phase);
    status.conditions = conditions;
    status.observed_generation = generation;
    if facts.depth > 0 {
        status.depth = Some(facts.depth);
        status.path = facts.path;
        status.namespace = Some(facts.namespace);
        status.effective_limits = facts.effective_limits;
        status.usage = facts.usage;
    }
    if key.is_some() {
        status.key = key;
    }
    status
}

/// The message of a part whose credential Secret could not be ensured; the same message gates
/// the `SecretFailed` event (one per new failure, not one per retry).
pub fn secret_missing(e: &SecretError) -> String {
    format!("credential Secret missing: {e}")
}

/// Whether the stored status already shows refused object `p` in its part's condition.
pub fn shows_problem(old: Option<&TenantStatus>, p: &Problem) -> bool {
    old.is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == p.part && c.message.contains(&p.message))
    })
}

/// Whether every part that is not True only waits for a workload of the tenant (its
/// StatefulSet or Deployment missing or not ready yet): the watch on them triggers the
/// tenant when that changes, so it needs no polling.
pub fn waits_for_workloads_only(parts: &[Cond]) -> bool {
    parts.iter().filter(|c| c.status != Truth::True).all(|c| {
        matches!(c.type_, DATABASE_READY | BROKER_READY)
            && matches!(c.reason.as_str(), "Missing" | "NotReady")
    })
}

/// Now, at the second precision the API server stores (so a status read back compares
/// equal to the one written).
fn now() -> Time {
    let secs = k8s_openapi::jiff::Timestamp::now().as_second();
    Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap_or_default())
}

/// The status of a tenant whose spec is invalid: phase Failed, `Ready` False with reason
/// `InvalidSpec` and `message` naming every problem.
pub fn invalid_spec(tenant: &Tenant, message: &str) -> TenantStatus {
    let ready = Cond::new(READY, Truth::False, "InvalidSpec", message);
    build(
        tenant.status.as_ref(),
        Phase::Failed,
        vec![ready],
        TreeFacts::default(),
        None,
        tenant.metadata.generation,
        &now(),
    )
}

/// The status of a deletion waiting for child tenants: phase Deleting, `Ready` False with
/// `reason` (`DeletionBlocked`, `DeletingDescendants`) and `message`.
pub fn deleting(tenant: &Tenant, reason: &str, message: &str) -> TenantStatus {
    let ready = Cond::new(READY, Truth::False, reason, message);
    build(
        tenant.status.as_ref(),
        Phase::Deleting,
        vec![ready],
        TreeFacts::default(),
        None,
        tenant.metadata.generation,
        &now(),
    )
}

impl<C: Cluster> Reconciler<C> {
    /// Status: every condition from what the steps found, the phase, the tree facts and the
    /// endpoints; written when it differs from the stored one, with an event when the phase
    /// changed. Says when to look at the tenant again.
    pub(in crate::operator::reconcile) async fn report_status(
        &self,
        placement: &Placement,
        tenant: &Tenant,
        applied: &Applied,
        creds: Credentials,
    ) -> Result<Outcome, Error> {
        let name = tenant.name();
        let suspended_by = placement.suspended_by.as_deref();
        let conds = self
            .conditions(tenant, placement, &creds, &applied.problems)
            .await?;
        let key_status = conds.1;
        let mut parts = conds.0;
        let ready = ready_from(&parts);
        let rejected = applied.problems.iter().any(Problem::permanent);
        let phase = if suspended_by.is_some() {
            Phase::Suspended
        } else if rejected {
            Phase::Failed
        } else {
            phase_from(&ready)
        };
        let workloads_only = waits_for_workloads_only(&parts);
        parts.push(ready);
        let mut facts = placement.facts.clone();
        if let (Some(d), Some(usage)) = (&self.device_usage, facts.usage.as_mut()) {
            d.overlay(tenant.name(), usage);
        }
        let namespace = placement.facts.namespace.as_str();
        let mut new = build(
            tenant.status.as_ref(),
            phase,
            parts,
            facts,
            key_status,
            tenant.metadata.generation,
            &now(),
        );
        if tenant.spec.isolation == Isolation::Siloed {
            new.endpoints = Some(Endpoints {
                database: Some(format!(
                    "{}.{}.svc:{}",
                    database::DATABASE_NAME,
                    namespace,
                    database::DATABASE_PORT
                )),
                mqtt: Some(format!(
                    "{}.{}.svc:{}",
                    broker::BROKER_NAME,
                    namespace,
                    broker::BROKER_TLS_PORT
                )),
            });
            new.secrets = [
                ("database", database::DATABASE_SECRET),
                ("mqtt", broker::BROKER_CREDENTIALS_SECRET),
                ("mqttTls", broker::BROKER_TLS_SECRET),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        } else {
            let endpoint = |p: Option<&shared::Part>| p.and_then(|p| p.endpoint.clone());
            new.endpoints = Some(Endpoints {
                database: endpoint(creds.shared.as_ref().map(|s| &s.database)),
                mqtt: endpoint(creds.shared.as_ref().map(|s| &s.broker)),
            })
            .filter(|e| e.database.is_some() || e.mqtt.is_some());
            new.secrets = [
                ("database", database::DATABASE_SECRET),
                ("mqtt", broker::BROKER_CREDENTIALS_SECRET),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        }
        let previous_phase = tenant.status.as_ref().and_then(|s| s.phase);
        // Per-tenant series only when asked for (`metrics.perTenant`): they grow with the tree.
        if self.config.metrics.per_tenant
            && let (Some(limits), Some(usage)) =
                (&placement.facts.effective_limits, &placement.facts.usage)
        {
            self.with_metrics(|m| m.record_tenant(name, limits, &usage.subtree));
        }
        let written = self.write_status(tenant, new).await?;
        let phase_event = (written && previous_phase != Some(phase)).then(|| {
            match phase {
                Phase::Suspended => (
                    false,
                    "Suspended",
                    format!(
                        "suspended by {}: non-admin access removed, workloads scaled to 0",
                        suspended_by.unwrap_or(name)
                    ),
                ),
                // Workloads scaled up again are not ready at once: resuming shows as
                // Suspended → Provisioning → Ready, with Resumed at the first step.
                Phase::Ready if previous_phase == Some(Phase::Suspended) => {
                    (false, "Resumed", "service restored".to_string())
                }
                Phase::Provisioning if previous_phase == Some(Phase::Suspended) => (
                    false,
                    "Resumed",
                    "service restored; waiting for the workloads to become ready".to_string(),
                ),
                Phase::Ready => (
                    false,
                    "Ready",
                    "every part of the silo is ready".to_string(),
                ),
                // The Rejected events above name the objects.
                Phase::Failed => (
                    true,
                    "Failed",
                    "the API server refused part of the silo (see the conditions)".to_string(),
                ),
                _ => (
                    false,
                    "Provisioning",
                    "waiting for the silo to become ready".to_string(),
                ),
            }
        });
        // One event per reconcile (each is a write): what was applied goes into the note of
        // the phase change (its audit record is already queued under `Applied`).
        match (phase_event, &applied.note) {
            (Some((warning, reason, note)), Some(applied_note)) => {
                self.record(tenant, &EventInfo::new(warning, reason, "Reconcile", &note));
                let both = format!("{note}; {applied_note}");
                self.publish(tenant, &EventInfo::new(warning, reason, "Reconcile", &both))
                    .await;
            }
            (Some((warning, reason, note)), None) => {
                self.event(tenant, EventInfo::new(warning, reason, "Reconcile", &note))
                    .await;
            }
            (None, Some(applied_note)) => {
                self.publish(tenant, &EventInfo::normal("Applied", "Apply", applied_note))
                    .await;
            }
            (None, None) => {}
        }
        // A refusal is permanent for this spec: the change of spec (or of an owned object)
        // triggers a new attempt; the periodic resync catches a cluster fixed meanwhile.
        let next = match phase {
            Phase::Ready | Phase::Suspended | Phase::Failed => Next::Requeue(RESYNC),
            _ if workloads_only => Next::Requeue(WAIT_WORKLOADS),
            _ => Next::Requeue(WAIT_READY),
        };
        Ok(Outcome {
            next,
            phase,
            applied: applied.writes(),
            deleted: applied.deleted.len(),
            status_written: written,
        })
    }

    /// Write the status when it differs from the stored one. Returns whether it wrote.
    pub(in crate::operator::reconcile) async fn write_status(
        &self,
        tenant: &Tenant,
        new: TenantStatus,
    ) -> Result<bool, Error> {
        if tenant.status.as_ref() == Some(&new) {
            return Ok(false);
        }
        self.cluster.patch_status(tenant.name(), &new).await?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Time {
        Time(s.parse().unwrap())
    }

    #[test]
    fn ready_names_every_part_that_is_not() {
        let parts = vec![
            Cond::new(NAMESPACE_READY, Truth::True, "Applied", "ok"),
            Cond::new(
                DATABASE_READY,
                Truth::False,
                "NotReady",
                "StatefulSet tenant-a/silo-postgres has 0/1 ready replicas",
            ),
            Cond::new(
                KEY_READY,
                Truth::Unknown,
                "NoKeyProvider",
                "no key provider",
            ),
        ];
        let r = ready_from(&parts);
        assert_eq!(r.status, Truth::False);
        assert_eq!(
            r.message,
            "DatabaseReady: StatefulSet tenant-a/silo-postgres has 0/1 ready replicas; KeyReady: no key provider"
        );
        assert_eq!(phase_from(&r), Phase::Provisioning);
        let ok = ready_from(&parts[..1]);
        assert_eq!(ok.status, Truth::True);
        assert_eq!(phase_from(&ok), Phase::Ready);
    }

    #[test]
    fn only_workloads_not_ready_yet_need_no_polling() {
        let ok = |t| Cond::new(t, Truth::True, "Applied", "ok");
        let waiting = vec![
            ok(NAMESPACE_READY),
            Cond::new(DATABASE_READY, Truth::False, "NotReady", "0/1 ready"),
            Cond::new(BROKER_READY, Truth::False, "Missing", "does not exist yet"),
        ];
        assert!(waits_for_workloads_only(&waiting));
        for other in [
            Cond::new(DATABASE_READY, Truth::False, "SecretMissing", "x"),
            Cond::new(DATABASE_READY, Truth::False, "SharedUnavailable", "x"),
            Cond::new(BROKER_READY, Truth::False, "Replacing", "x"),
            Cond::new(KEY_READY, Truth::Unknown, "NoKeyProvider", "x"),
        ] {
            let mut parts = waiting.clone();
            parts.push(other.clone());
            assert!(!waits_for_workloads_only(&parts), "{other:?}");
        }
    }

    #[test]
    fn unchanged_conditions_keep_their_time() {
        let c = || vec![Cond::new(READY, Truth::True, "SiloReady", "ok")];
        let first = build(
            None,
            Phase::Ready,
            c(),
            TreeFacts::default(),
            None,
            Some(1),
            &t("2026-01-01T00:00:00Z"),
        );
        let again = build(
            Some(&first),
            Phase::Ready,
            c(),
            TreeFacts::default(),
            None,
            Some(1),
            &t("2026-01-02T00:00:00Z"),
        );
        assert_eq!(
            first, again,
            "same facts later must give an identical status"
        );
        let flipped = build(
            Some(&first),
            Phase::Provisioning,
            vec![Cond::new(READY, Truth::False, "NotReady", "x")],
            TreeFacts::default(),
            None,
            Some(1),
            &t("2026-01-02T00:00:00Z"),
        );
        assert_eq!(
            flipped.conditions[0].last_transition_time,
            t("2026-01-02T00:00:00Z")
        );
    }
}
