//! The Tenant's finalizer ([`FINALIZER`]): added before anything is created for it, removed
//! when cleanup is done.

use std::borrow::Cow;

use crate::types::Tenant;

use crate::operator::cluster::{Cluster, ClusterResult, FINALIZER, FailureKind};

/// Attempts for a write guarded by the Tenant's resourceVersion that meets a 409 conflict
/// (each retry re-reads the Tenant).
const CONFLICT_ATTEMPTS: u32 = 3;

/// Whether the Tenant carries [`FINALIZER`].
pub(super) fn present(t: &Tenant) -> bool {
    t.metadata
        .finalizers
        .as_ref()
        .is_some_and(|f| f.iter().any(|x| x == FINALIZER))
}

/// Add (`add`) or remove [`FINALIZER`]: a patch guarded by the Tenant's resourceVersion.
/// On a 409 the Tenant is read again and the patch retried with the fresh version (up to
/// [`CONFLICT_ATTEMPTS`] in all); a Tenant already as wanted, or gone, is done.
pub(super) async fn set<C: Cluster>(cluster: &C, tenant: &Tenant, add: bool) -> ClusterResult<()> {
    let mut current = Cow::Borrowed(tenant);
    let mut attempt = 1;
    loop {
        let r = if add {
            cluster.add_finalizer(&current).await
        } else {
            cluster.remove_finalizer(&current).await
        };
        match r {
            Err(e) if e.kind == FailureKind::Conflict && attempt < CONFLICT_ATTEMPTS => {
                tracing::debug!(error = %e, attempt, "conflict, re-reading the tenant");
                attempt += 1;
                match cluster.get_tenant(tenant.name()).await? {
                    Some(t) if present(&t) != add => current = Cow::Owned(t),
                    _ => return Ok(()),
                }
            }
            other => return other,
        }
    }
}
