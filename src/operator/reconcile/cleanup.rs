//! Cleanup (the tenant has a deletion timestamp): wait for or delete the child tenants as
//! `deletionPolicy` says, then leave the shared services, shred the key, delete the namespace
//! with all it holds and remove the finalizer.

use crate::types::tenant::DeletionPolicy;
use crate::types::{Isolation, Phase, Tenant};

use super::read::Placement;
use super::{Next, Outcome, Reconciler, WAIT_DELETE, finalizer, shared, status};
use crate::operator::cluster::{Cluster, EventInfo, ObjectKey};
use crate::operator::error::Error;

impl<C: Cluster> Reconciler<C> {
    /// Cleanup path (the tenant has a deletion timestamp).
    pub(super) async fn cleanup(
        &self,
        placement: &Placement,
        tenant: &Tenant,
    ) -> Result<Outcome, Error> {
        let name = tenant.name();
        let mut out = Outcome {
            next: Next::AwaitChange,
            phase: Phase::Deleting,
            applied: 0,
            deleted: 0,
            status_written: false,
        };
        if !finalizer::present(tenant) {
            return Ok(out);
        }
        let names = &placement.children;
        if !names.is_empty() {
            let (reason, message) = match tenant.spec.deletion_policy {
                DeletionPolicy::Retain => (
                    "DeletionBlocked",
                    format!(
                        "deletionPolicy Retain: {} child tenant(s) still exist ({}); delete them first or set deletionPolicy: Cascade",
                        names.len(),
                        names.join(", ")
                    ),
                ),
                DeletionPolicy::Cascade => {
                    // Bottom-up: delete the leaves of the subtree; their parents follow once
                    // they are gone.
                    let mut started = Vec::new();
                    for d in &placement.descendants {
                        if d.leaf && !d.deleting {
                            self.cluster.delete_tenant(&d.name).await?;
                            started.push(d.name.clone());
                        }
                    }
                    out.deleted = started.len();
                    (
                        "DeletingDescendants",
                        format!(
                            "deletionPolicy Cascade: deleting {} descendant tenant(s) bottom-up{}",
                            placement.descendants.len(),
                            if started.is_empty() {
                                String::new()
                            } else {
                                format!("; now deleting {}", started.join(", "))
                            }
                        ),
                    )
                }
            };
            let new = status::deleting(tenant, reason, &message);
            out.status_written = self.write_status(tenant, new).await?;
            if out.status_written || out.deleted > 0 {
                let warning = reason == "DeletionBlocked";
                self.event(tenant, EventInfo::new(warning, reason, "Delete", &message))
                    .await;
            }
            out.next = Next::Requeue(WAIT_DELETE);
            return Ok(out);
        }
        // No children left: leave the shared services (the database is kept for
        // `retentionDays`), shred the key, remove the namespace with all it holds, let go.
        let mut left = Vec::new();
        if tenant.spec.isolation == Isolation::Shared {
            let now_unix = time::OffsetDateTime::now_utc().unix_timestamp();
            left = shared::leave_shared(&*self.shared, name, now_unix).await?;
        }
        // A Siloed tenant's bridge identity on the channel endpoint goes with it.
        let bridge = crate::render::broker::bridge_username(name);
        match self.shared.remove_broker_client(&bridge, &bridge).await {
            Ok(true) => left.push(format!("bridge identity {bridge} removed")),
            Ok(false) | Err(crate::backends::BackendError::NotConfigured { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        self.keys.schedule_key_deletion(name).await?;
        let ns = ObjectKey::new("Namespace", None, &self.config.namespace_for(name));
        self.cluster.delete(&ns).await?;
        self.event(
            tenant,
            EventInfo::normal(
                "Deleted",
                "Delete",
                &format!(
                    "namespace {} deleted and key scheduled for deletion{}",
                    ns.name,
                    if left.is_empty() {
                        String::new()
                    } else {
                        format!("; {}", left.join("; "))
                    }
                ),
            ),
        )
        .await;
        finalizer::set(&self.cluster, tenant, false).await?;
        self.checks.forget_namespace(&ns.name);
        self.with_metrics(|m| m.forget_tenant(name));
        out.deleted = 1;
        Ok(out)
    }
}
