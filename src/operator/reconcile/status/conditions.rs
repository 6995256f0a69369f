//! The part conditions of a reconciled tenant (NamespaceReady … ChannelsReady) from what the
//! steps found; `Ready` and the phase follow from them ([`super::ready_from`]).

use crate::render::{broker, database};
use crate::types::tenant::KeyStatus;
use crate::types::{Isolation, Tenant};

use super::{
    ACCESS_READY, BROKER_READY, CHANNELS_READY, Cond, DATABASE_READY, KEY_READY, NAMESPACE_READY,
    Truth, secret_missing,
};
use crate::operator::cluster::{Cluster, ObjectKey, Readiness};
use crate::operator::error::Error;
use crate::operator::key_service::TenantKey;
use crate::operator::reconcile::Reconciler;
use crate::operator::reconcile::credentials::Credentials;
use crate::operator::reconcile::objects::Problem;
use crate::operator::reconcile::read::Placement;
use crate::operator::reconcile::secrets::SecretError;
use crate::operator::reconcile::shared;

impl<C: Cluster> Reconciler<C> {
    /// The part conditions (without Ready) and the key status.
    pub(super) async fn conditions(
        &self,
        tenant: &Tenant,
        placement: &Placement,
        creds: &Credentials,
        problems: &[Problem],
    ) -> Result<(Vec<Cond>, Option<KeyStatus>), Error> {
        let Credentials {
            key,
            data_key,
            secrets,
            shared: shared_out,
            ..
        } = creds;
        let (secrets, shared_out, data_key) =
            (secrets.as_ref(), shared_out.as_ref(), data_key.as_ref());
        let ns = placement.facts.namespace.as_str();
        let suspended_by = placement.suspended_by.as_deref();
        let mut out = vec![Cond::new(
            NAMESPACE_READY,
            Truth::True,
            "Applied",
            format!("namespace {ns} with quota, limit range and network policy applied"),
        )];
        out.push(match suspended_by {
            Some(by) => Cond::new(
                ACCESS_READY,
                Truth::True,
                "Suspended",
                format!("suspended by {by}: only admins keep access"),
            ),
            None => Cond::new(
                ACCESS_READY,
                Truth::True,
                "Applied",
                format!(
                    "roles and bindings for {} admin(s) and {} member(s) applied",
                    tenant.spec.admins.len() + placement.ancestor_admins,
                    tenant.spec.members.len()
                ),
            ),
        });
        match tenant.spec.isolation {
            Isolation::Siloed => {
                let db = ObjectKey::new("StatefulSet", Some(ns), database::DATABASE_NAME);
                let mq = ObjectKey::new("Deployment", Some(ns), broker::BROKER_NAME);
                let db_ready = self.cluster.readiness(&db).await?;
                let mq_ready = self.cluster.readiness(&mq).await?;
                let failed = |e: Option<&SecretError>| e.map(secret_missing);
                out.push(match failed(secrets.and_then(|s| s.database.as_ref())) {
                    Some(msg) => Cond::new(DATABASE_READY, Truth::False, "SecretMissing", msg),
                    None => workload_cond(DATABASE_READY, &db, db_ready, suspended_by),
                });
                out.push(match failed(secrets.and_then(|s| s.broker.as_ref())) {
                    Some(msg) => Cond::new(BROKER_READY, Truth::False, "SecretMissing", msg),
                    // MQTT prohibited (connection cap 0): the broker is meant not to run.
                    None if suspended_by.is_none() && !placement.broker_runs => Cond::new(
                        BROKER_READY,
                        Truth::True,
                        "Prohibited",
                        format!(
                            "MQTT connection cap is 0: Deployment {ns}/{} runs no replica",
                            broker::BROKER_NAME
                        ),
                    ),
                    None => workload_cond(BROKER_READY, &mq, mq_ready, suspended_by),
                });
            }
            Isolation::Shared => {
                out.push(shared_cond(
                    DATABASE_READY,
                    "database",
                    shared_out.map(|s| &s.database),
                    suspended_by,
                ));
                out.push(shared_cond(
                    BROKER_READY,
                    "broker client",
                    shared_out.map(|s| &s.broker),
                    suspended_by,
                ));
            }
        }
        let key_status = match key {
            TenantKey::Ready(k) => {
                out.push(match data_key {
                    Some(Err(e)) => Cond::new(
                        KEY_READY,
                        Truth::False,
                        "DataKeyFailed",
                        format!("key {} version {}; data key: {e}", k.id, k.version),
                    ),
                    _ => Cond::new(
                        KEY_READY,
                        Truth::True,
                        "KeyReady",
                        format!(
                            "key {} version {}; data key in Secret {}",
                            k.id,
                            k.version,
                            crate::operator::reconcile::data_key::DATA_KEY_SECRET
                        ),
                    ),
                });
                Some(k.clone())
            }
            TenantKey::NotConfigured => {
                out.push(Cond::new(
                    KEY_READY,
                    Truth::Unknown,
                    "NoKeyProvider",
                    "no key provider is wired into this operator",
                ));
                None
            }
        };
        let n = tenant.spec.channels.len();
        out.push(Cond::new(
            CHANNELS_READY,
            Truth::True,
            "Visible",
            format!("{n} channel(s) in use, each visible to the tenant"),
        ));
        // Objects refused or being replaced override what their part would otherwise say.
        for c in &mut out {
            let mine: Vec<&Problem> = problems.iter().filter(|p| p.part == c.type_).collect();
            let Some(first) = mine.iter().find(|p| p.permanent()).or(mine.first()) else {
                continue;
            };
            let message = mine
                .iter()
                .map(|p| p.message.as_str())
                .collect::<Vec<_>>()
                .join("; ");
            *c = Cond::new(c.type_, Truth::False, first.reason, message);
        }
        Ok((out, key_status))
    }
}

fn workload_cond(
    type_: &'static str,
    key: &ObjectKey,
    readiness: Option<Readiness>,
    suspended_by: Option<&str>,
) -> Cond {
    let what = format!(
        "{} {}/{}",
        key.kind,
        key.namespace.as_deref().unwrap_or_default(),
        key.name
    );
    if let Some(by) = suspended_by {
        return Cond::new(
            type_,
            Truth::False,
            "Suspended",
            format!("{what} scaled to 0 while suspended by {by}"),
        );
    }
    match readiness {
        None => Cond::new(
            type_,
            Truth::False,
            "Missing",
            format!("{what} does not exist yet"),
        ),
        Some(r) if r.ready >= 1 && r.ready >= r.desired => Cond::new(
            type_,
            Truth::True,
            "Ready",
            format!("{what} has {}/{} ready replicas", r.ready, r.desired),
        ),
        Some(r) => Cond::new(
            type_,
            Truth::False,
            "NotReady",
            format!("{what} has {}/{} ready replicas", r.ready, r.desired.max(1)),
        ),
    }
}

/// DatabaseReady / BrokerReady of a Shared tenant.
fn shared_cond(
    type_: &'static str,
    what: &str,
    part: Option<&shared::Part>,
    suspended_by: Option<&str>,
) -> Cond {
    let Some(part) = part else {
        return Cond::new(
            type_,
            Truth::Unknown,
            "NotChecked",
            format!("shared {what} not checked"),
        );
    };
    let at = part.endpoint.as_deref().unwrap_or("the shared service");
    match (&part.result, suspended_by) {
        (Err(e), _) => Cond::new(type_, Truth::False, e.reason(), e.to_string()),
        (Ok(_), Some(by)) => Cond::new(
            type_,
            Truth::False,
            "Suspended",
            format!("shared {what} at {at} disabled while suspended by {by} (data kept)"),
        ),
        (Ok(_), None) => Cond::new(
            type_,
            Truth::True,
            "Provisioned",
            format!("dedicated {what} with its own credentials at {at}"),
        ),
    }
}
