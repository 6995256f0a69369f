//! The leader's periodic duties: destroy shredded local keys whose deletion window has passed,
//! and drop retired shared databases older than `retentionDays`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::backends::SharedServices;
use crate::operator::key_service::KeyService;

/// How often the leader purges what the retention windows released.
pub const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(3600);

/// The leader's periodic duties: destroy shredded local keys whose deletion window has passed,
/// and drop retired shared databases older than `retentionDays`.
pub(super) async fn housekeeping(
    keys: Arc<dyn KeyService>,
    shared: Arc<dyn SharedServices>,
    retention_days: u32,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(HOUSEKEEPING_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        housekeeping_once(
            &*keys,
            &*shared,
            retention_days,
            time::OffsetDateTime::now_utc(),
        )
        .await;
    }
}

/// One round of [`housekeeping`]; failures are logged and retried next round.
pub async fn housekeeping_once(
    keys: &dyn KeyService,
    shared: &dyn SharedServices,
    retention_days: u32,
    now: time::OffsetDateTime,
) -> (Vec<String>, Vec<crate::backends::Purged>) {
    let purged_keys = match keys.purge_expired().await {
        Ok(ids) => {
            for id in &ids {
                tracing::info!(key = %id, "shredded key destroyed after its deletion window");
            }
            ids
        }
        Err(e) => {
            tracing::warn!(error = %e, "purging shredded keys failed");
            Vec::new()
        }
    };
    let mut purged_dbs = Vec::new();
    if shared.database_endpoint().is_some() {
        let before = now.unix_timestamp() - i64::from(retention_days) * 86_400;
        match shared.purge_retired_databases(before).await {
            Ok(p) => {
                for d in &p {
                    tracing::info!(database = %d.database, retired_at = d.retired_at_unix, "retired shared database dropped after retentionDays");
                }
                purged_dbs = p;
            }
            Err(e) => tracing::warn!(error = %e, "purging retired shared databases failed"),
        }
    }
    (purged_keys, purged_dbs)
}
