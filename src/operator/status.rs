//! Building the Tenant status from what the reconcile found. Pure: time is passed in.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::types::tenant::{KeyStatus, UsageStatus};
use crate::types::{Limits, Phase, TenantStatus};

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
