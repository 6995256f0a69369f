//! Carrying out a [`desired::Plan`] on the cluster: apply what changed in place, replace what
//! the API server will not change in place ([`crate::render::immutable`]), delete what is no
//! longer desired — and keep going when the API server refuses one object (422), so the rest
//! of the silo is still reconciled and the refusal becomes a condition, not a retry loop.

use serde_json::Value;

use crate::render::immutable::{self, ImmutableField, Remedy};
use crate::render::meta::COMPONENT_LABEL;
use crate::types::quantity::parse_millis;

use crate::operator::cluster::{
    Cluster, ClusterError, ClusterResult, FailureKind, ObjectKey, Observed,
};
use crate::operator::reconcile::desired::{ApplyReason, Desired, Plan};
use crate::operator::reconcile::status;

/// Why a part of the silo is not as desired although the calls succeeded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub key: ObjectKey,
    /// The condition it shows in (`AccessReady`, `DatabaseReady`, …).
    pub part: &'static str,
    /// `Rejected`: the API server refused the object for this spec (permanent until the spec
    /// or the cluster changes); `Replacing`: the old object is still being deleted.
    pub reason: &'static str,
    pub message: String,
}

impl Problem {
    pub fn permanent(&self) -> bool {
        self.reason == REJECTED
    }
}

pub const REJECTED: &str = "Rejected";
pub const REPLACING: &str = "Replacing";

/// What applying a plan did.
#[derive(Debug, Default)]
pub struct Applied {
    /// Created, updated, drift repaired.
    pub counts: [usize; 3],
    /// Objects deleted and created again, with the fields that forced it.
    pub replaced: Vec<(ObjectKey, String)>,
    /// Keys of objects applied because someone else edited them.
    pub drift: Vec<ObjectKey>,
    pub deleted: Vec<ObjectKey>,
    pub problems: Vec<Problem>,
    /// The note of the `Applied` event, not published yet: the status step folds it into
    /// the phase-change event of the same reconcile, or publishes it on its own.
    pub note: Option<String>,
}

impl Applied {
    pub fn writes(&self) -> usize {
        self.counts.iter().sum::<usize>() + self.replaced.len()
    }
}

/// The condition an object belongs to: RBAC → `AccessReady`; the database's and broker's
/// objects (by their `app.kubernetes.io/component` label) → `DatabaseReady`/`BrokerReady`;
/// the rest (namespace, quota, limit range, network policy, settings) → `NamespaceReady`.
pub fn part_of(d: &Desired) -> &'static str {
    match d.key.kind.as_str() {
        "Role" | "RoleBinding" => status::ACCESS_READY,
        _ => match d
            .manifest
            .pointer("/metadata/labels")
            .and_then(|l| l.get(COMPONENT_LABEL))
            .and_then(Value::as_str)
        {
            Some("database") => status::DATABASE_READY,
            Some("broker") => status::BROKER_READY,
            _ => status::NAMESPACE_READY,
        },
    }
}

/// The API server's message without the multi-line detail some refusals append (a diff of
/// the object), keeping the trailing ` (code)` added by the cluster layer.
pub fn first_line(message: &str) -> String {
    match message.split_once('\n') {
        Some((head, rest)) => match rest.trim_end().rsplit_once(' ') {
            Some((_, code)) if code.starts_with('(') && code.ends_with(')') => {
                format!("{} {code}", head.trim_end())
            }
            _ => head.trim_end().to_string(),
        },
        None => message.to_string(),
    }
}

fn rejected(d: &Desired, e: &ClusterError) -> Problem {
    Problem {
        key: d.key.clone(),
        part: part_of(d),
        reason: REJECTED,
        message: format!(
            "{} rejected by the API server: {}",
            d.key,
            first_line(&e.message)
        ),
    }
}

fn field_names(fields: &[&ImmutableField]) -> String {
    let mut names: Vec<&str> = fields
        .iter()
        .map(|f| f.pointer.trim_start_matches('/'))
        .collect();
    names.dedup();
    names
        .iter()
        .map(|n| n.replace('/', "."))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Apply `plan`. A 422/400 for one object is recorded as a [`Problem`] and the others go
/// on; any other failure stops and is returned — after the stale RoleBindings were deleted
/// all the same, so a demoted or removed member never keeps a stronger binding.
pub async fn apply_plan<C: Cluster>(
    cluster: &C,
    plan: &Plan<'_>,
    observed: &[Observed],
) -> ClusterResult<Applied> {
    let mut out = Applied::default();
    let result = apply_and_replace(cluster, plan, observed, &mut out).await;
    // Namespaced objects first, the namespace (if ever stale) last; after a failure only
    // the RoleBindings (losing access is safe, keeping it is not).
    let mut stale: Vec<&ObjectKey> = plan
        .delete
        .iter()
        .filter(|k| result.is_ok() || k.kind == "RoleBinding")
        .collect();
    stale.sort_by_key(|k| k.namespace.is_none());
    for key in stale {
        cluster.delete(key).await?;
        tracing::info!(object = %key, "deleted, no longer desired");
        out.deleted.push(key.clone());
    }
    result.map(|()| out)
}

async fn apply_and_replace<C: Cluster>(
    cluster: &C,
    plan: &Plan<'_>,
    observed: &[Observed],
    out: &mut Applied,
) -> ClusterResult<()> {
    for (d, why) in &plan.apply {
        match cluster.apply(&d.key, &d.manifest).await {
            Ok(()) => {
                tracing::info!(object = %d.key, reason = ?why, "applied");
                match why {
                    ApplyReason::Missing => out.counts[0] += 1,
                    ApplyReason::Changed => out.counts[1] += 1,
                    ApplyReason::Drift => {
                        out.counts[2] += 1;
                        out.drift.push(d.key.clone());
                    }
                }
            }
            Err(e) if e.kind == FailureKind::Invalid => {
                // An object written by an older operator carries no identity: the refusal of
                // an immutable field is the first sign that it must be replaced.
                let unknown_identity = observed
                    .iter()
                    .any(|o| o.key == d.key && o.identity.is_none());
                if unknown_identity && immutable::is_immutable_refusal(&d.key.kind, &e.message) {
                    let fields: Vec<&ImmutableField> = immutable::fields_of(&d.key.kind)
                        .filter(|f| e.message.contains(f.server_message))
                        .collect();
                    replace(cluster, d, &fields, out).await?;
                } else {
                    tracing::warn!(object = %d.key, error = %e, "refused by the API server");
                    out.problems.push(rejected(d, &e));
                }
            }
            Err(e) => return Err(e),
        }
    }
    for r in &plan.replace {
        replace(cluster, r.desired, &r.fields, out).await?;
    }
    Ok(())
}

/// Delete `d`'s object and create it again (see [`immutable::Remedy`]). A StatefulSet whose
/// volume claim templates grew first gets its existing claims expanded; if the API server
/// refuses that, the StatefulSet is left as it is and the refusal reported.
async fn replace<C: Cluster>(
    cluster: &C,
    d: &Desired,
    fields: &[&ImmutableField],
    out: &mut Applied,
) -> ClusterResult<()> {
    let remedy = immutable::remedy_for(fields);
    let claims_change = fields
        .iter()
        .any(|f| f.pointer == "/spec/volumeClaimTemplates");
    if claims_change && let Err(e) = grow_claims(cluster, d).await {
        if matches!(e.kind, FailureKind::Invalid | FailureKind::Forbidden) {
            out.problems.push(Problem {
                key: d.key.clone(),
                part: part_of(d),
                reason: REJECTED,
                message: format!(
                    "{}: the volume cannot grow in place, the API server refused to expand its claim: {}",
                    d.key,
                    first_line(&e.message)
                ),
            });
            return Ok(());
        }
        return Err(e);
    }
    match remedy {
        Remedy::RecreateOrphaning => cluster.delete_orphaning(&d.key).await?,
        _ => cluster.delete(&d.key).await?,
    }
    let why = format!("{} cannot change in place", field_names(fields));
    match cluster.apply(&d.key, &d.manifest).await {
        Ok(()) => {
            tracing::info!(object = %d.key, %why, "replaced");
            out.replaced.push((d.key.clone(), why));
        }
        // The old object is still there, Terminating (its dependents being released).
        Err(e) if matches!(e.kind, FailureKind::Invalid | FailureKind::Conflict) => {
            tracing::info!(object = %d.key, error = %e, "replacement waits for the old object");
            out.problems.push(Problem {
                key: d.key.clone(),
                part: part_of(d),
                reason: REPLACING,
                message: format!(
                    "{} is being replaced ({why}): waiting for the old object to be deleted",
                    d.key
                ),
            });
        }
        Err(e) => return Err(e),
    }
    Ok(())
}

/// Expand the existing claims of a StatefulSet to its templates' storage requests
/// (`<template>-<statefulset>-<ordinal>`); never shrinks, skips claims not created yet.
async fn grow_claims<C: Cluster>(cluster: &C, d: &Desired) -> ClusterResult<()> {
    let ns = d.key.namespace.as_deref().unwrap_or_default();
    let replicas = d
        .manifest
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1)
        .max(1);
    let templates = d
        .manifest
        .pointer("/spec/volumeClaimTemplates")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for t in templates {
        let (Some(name), Some(want)) = (
            t.pointer("/metadata/name").and_then(Value::as_str),
            t.pointer("/spec/resources/requests/storage")
                .and_then(Value::as_str),
        ) else {
            continue;
        };
        for ordinal in 0..replicas {
            let claim = format!("{name}-{}-{ordinal}", d.key.name);
            let Some(have) = cluster.claim_storage(ns, &claim).await? else {
                continue;
            };
            let bigger = match (parse_millis(want), parse_millis(&have)) {
                (Ok(w), Ok(h)) => w > h,
                _ => false,
            };
            if bigger {
                cluster.resize_claim(ns, &claim, want).await?;
                tracing::info!(claim = %claim, from = %have, to = %want, "volume claim expanded");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::first_line;

    #[test]
    fn refusals_keep_their_first_line_and_code() {
        assert_eq!(
            first_line(
                "x is invalid: spec: Forbidden: immutable\n  core.Spec{\n-  a\n+  b\n }\n (422)"
            ),
            "x is invalid: spec: Forbidden: immutable (422)"
        );
        assert_eq!(first_line("one line (403)"), "one line (403)");
    }
}
