//! The operator's reads of the device registry (the `devices` table of the API's PostgreSQL,
//! `api.database`, which the operator already writes its audit records to): device counts per
//! tenant for `status.usage.devices`, per channel for `Channel.status.registeredDevices`, and
//! which channel each connected username belongs to for `connectedDevices`.
//!
//! Every read is one grouped query for all tenants or channels, never one per reconcile: the
//! leader refreshes [`DeviceUsage`] every [`USAGE_REFRESH`] and triggers the reconcile of the
//! tenants whose counts changed; reconciles only read the cached counts.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::types::tenant::UsageStatus;

/// How often the leader re-reads the registry's counts.
pub const USAGE_REFRESH: Duration = Duration::from_secs(10);

/// Registered devices per tenant name: (own, subtree). Tenants without devices are absent.
pub type DeviceCounts = BTreeMap<String, (i64, i64)>;

/// Why the registry could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("api.database.url: {0}")]
    Config(String),
    #[error("cannot reach the device registry (API database): {0}")]
    Unreachable(String),
    #[error("reading the device registry: {0}")]
    Query(String),
}

/// A connection to the registry, opened on first use and again after it fails.
pub struct Registry {
    config: tokio_postgres::Config,
    client: tokio::sync::Mutex<Option<tokio_postgres::Client>>,
}

impl Registry {
    /// The registry on the API database `db` (nothing is connected yet).
    pub fn new(db: &crate::config::ApiDatabase) -> Result<Registry, RegistryError> {
        let mut config = db
            .pg_config()
            .map_err(|e| RegistryError::Config(e.to_string()))?;
        config.application_name("silo-operator-registry");
        Ok(Registry {
            config,
            client: tokio::sync::Mutex::new(None),
        })
    }

    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, RegistryError> {
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            let (c, conn) = self
                .config
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(|e| RegistryError::Unreachable(e.to_string()))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            *guard = Some(c);
        }
        let Some(c) = guard.as_ref() else {
            return Err(RegistryError::Unreachable("no connection".into()));
        };
        match c.query(sql, params).await {
            Ok(rows) => Ok(rows),
            Err(e) => {
                if c.is_closed() {
                    *guard = None;
                }
                Err(RegistryError::Query(
                    e.as_db_error()
                        .map_or_else(|| e.to_string(), |d| d.message().to_string()),
                ))
            }
        }
    }

    /// Registered devices of every tenant, own and subtree (rows whose `path`, the tenant and
    /// its ancestors at registration, holds the tenant), in one grouped query.
    pub async fn tenant_counts(&self) -> Result<DeviceCounts, RegistryError> {
        let rows = self
            .query(
                "SELECT p, count(*) FILTER (WHERE p = tenant), count(*) \
                 FROM devices, unnest(path) AS p GROUP BY p",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<_, String>(0), (r.get(1), r.get(2))))
            .collect())
    }

    /// Registered devices per channel (channels without devices are absent).
    pub async fn channel_counts(&self) -> Result<BTreeMap<String, i64>, RegistryError> {
        let rows = self
            .query(
                "SELECT channel, count(*) FROM devices GROUP BY channel",
                &[],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// How many of `usernames` are registered devices of each channel.
    pub async fn devices_by_channel(
        &self,
        usernames: &[String],
    ) -> Result<BTreeMap<String, i64>, RegistryError> {
        if usernames.is_empty() {
            return Ok(BTreeMap::new());
        }
        let rows = self
            .query(
                "SELECT channel, count(*) FROM devices WHERE username = ANY($1) GROUP BY channel",
                &[&usernames],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}

/// The registry's device counts as the reconciles see them: `None` until first read (the
/// tenants' stored `devices` usage is kept meanwhile).
#[derive(Debug, Default)]
pub struct DeviceUsage {
    counts: RwLock<Option<Arc<DeviceCounts>>>,
}

impl DeviceUsage {
    pub fn new() -> DeviceUsage {
        DeviceUsage::default()
    }

    /// Installs freshly read counts. Returns the tenants whose (own, subtree) changed, or
    /// `None` on the first load (every tenant may need its usage corrected).
    pub fn replace(&self, new: DeviceCounts) -> Option<Vec<String>> {
        let mut guard = match self.counts.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let changed = guard.as_ref().map(|old| {
            old.keys()
                .chain(new.keys())
                .filter(|k| old.get(*k) != new.get(*k))
                .cloned()
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect()
        });
        *guard = Some(Arc::new(new));
        changed
    }

    /// Whether counts were read at least once.
    pub fn loaded(&self) -> bool {
        self.snapshot().is_some()
    }

    fn snapshot(&self) -> Option<Arc<DeviceCounts>> {
        match self.counts.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Replaces `devices` (own and subtree) of `usage` with the registry's counts for `tenant`
    /// once they were read; before that `usage` is left as it is.
    pub fn overlay(&self, tenant: &str, usage: &mut UsageStatus) {
        if let Some(counts) = self.snapshot() {
            let (own, subtree) = counts.get(tenant).copied().unwrap_or_default();
            usage.own.devices = own;
            usage.subtree.devices = subtree;
        }
    }
}

/// The leader's refresh of [`DeviceUsage`]: once `ready` (the tenants are listed), reads the
/// counts every [`USAGE_REFRESH`] and calls `trigger` with the tenants whose counts changed
/// (`None`: all of them, after the first read), until `shutdown` fires. Failures are logged
/// and retried next period.
pub async fn usage_loop(
    registry: Arc<Registry>,
    usage: Arc<DeviceUsage>,
    ready: impl std::future::Future<Output = ()> + Send,
    trigger: impl Fn(Option<Vec<String>>) + Send,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    // The first read's "every tenant" must find the tenants listed.
    tokio::select! {
        _ = ready => {}
        _ = shutdown.wait_for(|s| *s) => return,
    }
    let mut tick = tokio::time::interval(USAGE_REFRESH);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        match registry.tenant_counts().await {
            Ok(counts) => {
                failing = false;
                match usage.replace(counts) {
                    None => trigger(None),
                    Some(changed) if !changed.is_empty() => {
                        tracing::debug!(tenants = ?changed, "registered devices changed");
                        trigger(Some(changed));
                    }
                    Some(_) => {}
                }
            }
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "device usage not refreshed; retrying");
            }
            Err(e) => tracing::debug!(error = %e, "device usage not refreshed"),
        }
    }
}

/// The registry on `api.database` when it is configured (the operator's audit trail uses the
/// same database); a bad URL is logged and leaves it off.
pub fn from_config(config: &crate::config::PlatformConfig) -> Option<Arc<Registry>> {
    if config.api.database.url.trim().is_empty() {
        return None;
    }
    match Registry::new(&config.api.database) {
        Ok(r) => Some(Arc::new(r)),
        Err(e) => {
            tracing::warn!(error = %e, "device registry not read: devices usage and channel counts stay as stored");
            None
        }
    }
}

/// Resolves when the reflector `store` has its first full list (a [`usage_loop`] `ready`).
pub async fn store_ready<K>(store: kube::runtime::reflector::Store<K>)
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    let _ = store.wait_until_ready().await;
}

/// A [`usage_loop`] trigger that queues the reconcile of the named tenants (all tenants of
/// `tenants` for `None`) on the controller's `queue`.
pub fn trigger_reconciles<K>(
    tenants: kube::runtime::reflector::Store<K>,
    queue: futures::channel::mpsc::UnboundedSender<kube::runtime::reflector::ObjectRef<K>>,
) -> impl Fn(Option<Vec<String>>) + Send
where
    K: kube::Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    move |names| {
        let names = names.unwrap_or_else(|| {
            tenants
                .state()
                .iter()
                .map(|t| t.meta().name.clone().unwrap_or_default())
                .collect()
        });
        for n in names {
            let _ = queue.unbounded_send(kube::runtime::reflector::ObjectRef::new(&n));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_reports_changed_tenants_and_overlay_applies_counts() {
        let u = DeviceUsage::new();
        let mut usage = UsageStatus::default();
        usage.own.devices = 7;
        u.overlay("a", &mut usage);
        assert_eq!(usage.own.devices, 7, "nothing read yet: kept");
        assert!(!u.loaded());
        let first: DeviceCounts = [("a".to_string(), (1, 3)), ("b".to_string(), (2, 2))].into();
        assert_eq!(u.replace(first.clone()), None, "first load: everyone");
        u.overlay("a", &mut usage);
        assert_eq!((usage.own.devices, usage.subtree.devices), (1, 3));
        u.overlay("zz", &mut usage);
        assert_eq!((usage.own.devices, usage.subtree.devices), (0, 0));
        assert_eq!(u.replace(first), Some(vec![]));
        let next: DeviceCounts = [("a".to_string(), (1, 4)), ("c".to_string(), (1, 1))].into();
        assert_eq!(
            u.replace(next),
            Some(vec!["a".to_string(), "b".to_string(), "c".to_string()])
        );
    }

    #[test]
    fn triggers_queue_the_named_tenants_or_every_listed_one() {
        use kube::runtime::watcher::Event;
        let (store, mut writer) = kube::runtime::reflector::store::<crate::types::Tenant>();
        for n in ["a", "b"] {
            writer.apply_watcher_event(&Event::Apply(crate::types::Tenant::new(
                n,
                Default::default(),
            )));
        }
        let (tx, mut rx) = futures::channel::mpsc::unbounded();
        let trigger = trigger_reconciles(store, tx);
        trigger(Some(vec!["b".into()]));
        trigger(None);
        let mut got = Vec::new();
        while let Ok(r) = rx.try_recv() {
            got.push(r.name);
        }
        got[1..].sort();
        assert_eq!(got, vec!["b", "a", "b"]);
    }
}
