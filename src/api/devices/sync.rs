//! The device sync with the tenant tree (issue 13, item 3), run every 15 seconds by `silo
//! api` ([`sync_loop`]): devices of suspended tenants, or on channels their tenant no longer
//! lists or sees, are disabled with the reason (and enabled again when it is gone); devices
//! of deleted tenants are removed.

use crate::api::errors::ApiError;
use crate::api::server::Api;
use crate::api::store::{Store, StoreError, query_err};

use super::{DeviceChange, set_device_enabled};

/// Prefix of the reasons [`sync_devices`] writes: a device disabled for such a reason is
/// enabled again by it once the reason is gone; a device disabled by a person stays disabled.
pub const AUTO_REASON: &str = "[tenant] ";

/// Why a device of tenant `t` on `channel` may not be enabled now: the tenant is suspended
/// (itself or through an ancestor), no longer lists the channel, or can no longer see it.
pub fn blocked(
    tree: &crate::hierarchy::TenantTree,
    t: crate::hierarchy::NodeId,
    channel: &str,
) -> Option<String> {
    let tenant = tree.name(t);
    if let Some(s) = tree.suspended_by(t) {
        Some(if s == t {
            format!("tenant {tenant:?} is suspended")
        } else {
            format!(
                "tenant {tenant:?} is suspended (through its ancestor {:?})",
                tree.name(s)
            )
        })
    } else if !tree.tenant(t).spec.channels.iter().any(|c| c == channel) {
        Some(format!(
            "tenant {tenant:?} no longer uses channel {channel:?}"
        ))
    } else if tree.channel_object(channel).is_none() || !tree.is_channel_visible(channel, t) {
        Some(format!(
            "channel {channel:?} is no longer visible to tenant {tenant:?}"
        ))
    } else {
        None
    }
}

/// What [`sync_devices`] does to one device.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Wanted {
    Keep,
    Disable(String),
    Enable,
    Remove,
}

impl Store {
    /// Every device's key, channel and state (for [`sync_devices`]).
    async fn device_states(
        &self,
    ) -> Result<Vec<(String, String, String, bool, Option<String>)>, StoreError> {
        let c = self.devices_client().await?;
        let rows = c
            .query(
                "SELECT tenant, id, channel, enabled, disabled_reason FROM devices ORDER BY tenant, id",
                &[],
            )
            .await
            .map_err(query_err)?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
            .collect())
    }
}

/// Brings devices in line with their tenants (issue 13, item 3): a device of a tenant that is
/// suspended (itself or through an ancestor) is disabled, and one on a channel its tenant no
/// longer lists or can no longer see is disabled too, each with the reason in
/// `disabledReason` (prefixed [`AUTO_REASON`]); they are enabled again when the reason is
/// gone. The devices of a deleted tenant are removed (broker client and registry row). The
/// broker is changed before the registry, per device, so a failure leaves both in their old
/// state for the next pass. Runs only on a loaded tree (never mistakes a tree that is still
/// loading for deleted tenants). Returns what it changed (`tenant/id: …`).
pub async fn sync_devices(api: &Api) -> Result<Vec<String>, ApiError> {
    if !api.cache.is_ready() {
        return Ok(Vec::new());
    }
    let Some(broker) = api.broker.clone() else {
        return Ok(Vec::new());
    };
    let mut done = Vec::new();
    for (tenant, id, channel, enabled, reason) in api.store.device_states().await? {
        let wanted = api.cache.view().with_tree(|tree| {
            let Some(t) = tree.get(&tenant) else {
                return Wanted::Remove;
            };
            let why = blocked(tree, t, &channel).map(|w| format!("{AUTO_REASON}{w}"));
            let auto = reason
                .as_deref()
                .is_some_and(|r| r.starts_with(AUTO_REASON));
            match why {
                Some(w) if enabled || (auto && reason.as_deref() != Some(w.as_str())) => {
                    Wanted::Disable(w)
                }
                None if !enabled && auto => Wanted::Enable,
                _ => Wanted::Keep,
            }
        });
        if wanted == Wanted::Keep {
            continue;
        }
        let b = broker.clone();
        let w = wanted.clone();
        let changed = api
            .store
            .change_device(&tenant, &id, |rec| async move {
                let err = |e: crate::backends::BackendError| {
                    tracing::warn!(error = %e, "device sync: broker");
                    ApiError::Unavailable("the channel broker is unavailable".into())
                };
                match w {
                    Wanted::Remove => {
                        b.remove_client(&rec.username, &rec.username)
                            .await
                            .map_err(err)?;
                        Ok((DeviceChange::Delete, ()))
                    }
                    Wanted::Disable(why) => {
                        set_device_enabled(&b, &rec, false).await.map_err(err)?;
                        Ok((DeviceChange::Enabled(Some(why)), ()))
                    }
                    Wanted::Enable | Wanted::Keep => {
                        set_device_enabled(&b, &rec, true).await.map_err(err)?;
                        Ok((DeviceChange::Enabled(None), ()))
                    }
                }
            })
            .await?;
        if changed.is_some() {
            let what = match &wanted {
                Wanted::Remove => "removed: its tenant was deleted".to_string(),
                Wanted::Disable(w) => format!("disabled: {}", w.trim_start_matches(AUTO_REASON)),
                _ => "enabled again".to_string(),
            };
            tracing::info!(tenant = %tenant, device = %id, "{what}");
            done.push(format!("{tenant}/{id}: {what}"));
        }
    }
    Ok(done)
}

/// Runs [`sync_devices`] every `every` (in `silo api`; every replica may run it, each change
/// is idempotent and taken under the device's row lock).
pub async fn sync_loop(api: std::sync::Arc<Api>, every: std::time::Duration) {
    loop {
        tokio::time::sleep(every).await;
        if let Err(e) = sync_devices(&api).await {
            tracing::warn!(error = %e, "device sync failed; retrying");
        }
    }
}
