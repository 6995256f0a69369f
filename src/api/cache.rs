//! The API's read side: the admission webhook's always-current tree ([`TreeView`], fed by the
//! same [`Feeder`] from the same watches, so reads, scope checks and the validation of writes
//! use one engine) plus, per tenant, what the engine's copy leaves out and responses show:
//! the status, the API-managed annotations and the resourceVersion.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use kube::runtime::watcher;

use crate::hierarchy::EngineSettings;
use crate::operator::admission::{Feeder, WatchEvent};
use crate::types::{Tenant, TenantStatus};
use crate::webhook::{TreeView, WebhookState};

/// Annotations the API writes and keeps on later applies.
pub const API_ANNOTATIONS: [&str; 1] = [ROTATE_KEY_ANNOTATION];
/// Set to a new value to ask the operator for a key rotation (see `README` Keys).
pub const ROTATE_KEY_ANNOTATION: &str = "silo.dev/rotate-key";

/// What a response shows of a tenant beyond the engine's copy.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TenantExtra {
    pub status: Option<TenantStatus>,
    pub resource_version: Option<String>,
    pub uid: Option<String>,
    /// Only [`API_ANNOTATIONS`].
    pub annotations: BTreeMap<String, String>,
}

impl TenantExtra {
    fn of(t: &Tenant) -> Self {
        TenantExtra {
            status: t.status.clone(),
            resource_version: t.metadata.resource_version.clone(),
            uid: t.metadata.uid.clone(),
            annotations: t
                .metadata
                .annotations
                .iter()
                .flatten()
                .filter(|(k, _)| API_ANNOTATIONS.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }
}

/// The watch-fed state every request reads.
pub struct Cache {
    /// The tree and its reservations (and whether the first lists are loaded).
    pub state: Arc<WebhookState>,
    extras: RwLock<HashMap<String, Arc<TenantExtra>>>,
}

impl Cache {
    pub fn new(settings: EngineSettings) -> Self {
        Cache {
            state: Arc::new(WebhookState::starting(TreeView::new(settings))),
            extras: RwLock::new(HashMap::new()),
        }
    }

    pub fn view(&self) -> &TreeView {
        &self.state.view
    }

    /// The first complete lists are in.
    pub fn is_ready(&self) -> bool {
        self.state.is_ready()
    }

    pub fn extra(&self, name: &str) -> Arc<TenantExtra> {
        self.extras
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
            .unwrap_or_default()
    }

    /// Runs `f` with every tenant's extras under one read lock (for responses covering many
    /// tenants). Called inside [`TreeView::with_tree`] is fine: the lock order is tree, then
    /// extras, as in [`Cache::apply`].
    pub fn with_extras<R>(&self, f: impl FnOnce(&HashMap<String, Arc<TenantExtra>>) -> R) -> R {
        f(&self.extras.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Applies one watch event (the tree first, then the extras: a reader that sees the new
    /// resourceVersion also finds the tenant in the tree).
    pub fn apply(&self, feeder: &mut Feeder, ev: WatchEvent) {
        enum Then {
            Nothing,
            Insert(String, Box<TenantExtra>),
            Remove(String),
            Prune,
        }
        let then = match &ev {
            WatchEvent::Tenant(watcher::Event::Apply(t) | watcher::Event::InitApply(t)) => {
                Then::Insert(t.name().to_string(), Box::new(TenantExtra::of(t)))
            }
            WatchEvent::Tenant(watcher::Event::Delete(t)) => Then::Remove(t.name().to_string()),
            WatchEvent::Tenant(watcher::Event::InitDone) => Then::Prune,
            _ => Then::Nothing,
        };
        if feeder.apply(&self.state.view, ev) {
            self.state.set_ready();
            tracing::info!("API: tenant tree loaded, ready");
        }
        // The tree is read before the extras are locked (lock order: tree, then extras).
        let known: Option<std::collections::HashSet<String>> =
            (matches!(then, Then::Prune) && feeder.is_loaded()).then(|| {
                self.state.view.with_tree(|t| {
                    t.inventory()
                        .tenants
                        .iter()
                        .map(|x| x.name().to_string())
                        .collect()
                })
            });
        let mut extras = self.extras.write().unwrap_or_else(|e| e.into_inner());
        match then {
            Then::Nothing => {}
            Then::Insert(name, x) => {
                extras.insert(name, Arc::new(*x));
            }
            Then::Remove(name) => {
                extras.remove(&name);
            }
            Then::Prune => {
                if let Some(known) = known {
                    extras.retain(|k, _| known.contains(k));
                }
            }
        }
    }

    /// Feeds the cache from `events` until the stream ends.
    pub async fn feed<S>(self: Arc<Self>, events: S)
    where
        S: Stream<Item = Result<WatchEvent, String>>,
    {
        let mut feeder = Feeder::new();
        let mut events = std::pin::pin!(events);
        while let Some(ev) = events.next().await {
            match ev {
                Ok(ev) => self.apply(&mut feeder, ev),
                Err(e) => tracing::warn!(error = %e, "API: watch failed, retrying"),
            }
        }
    }

    /// Waits (up to `timeout`) until the watch has delivered `name` at `resource_version` or
    /// later, so that a read right after a write shows the write. Gives up silently.
    pub async fn wait_for(&self, name: &str, resource_version: Option<&str>, timeout: Duration) {
        let Some(rv) = resource_version else { return };
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let seen = self.extra(name).resource_version.clone();
            // resourceVersions are opaque; equal means seen, and any change after ours is newer.
            if seen.as_deref() == Some(rv) || newer(seen.as_deref(), rv) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits (up to `timeout`) until `name` is gone from the tree.
    pub async fn wait_gone(&self, name: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.view().with_tree(|t| t.get(name).is_none()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// True when `seen` is a numeric resourceVersion above `rv` (etcd's are; anything else is
/// compared for equality only).
fn newer(seen: Option<&str>, rv: &str) -> bool {
    match (seen.and_then(|s| s.parse::<u64>().ok()), rv.parse::<u64>()) {
        (Some(a), Ok(b)) => a > b,
        _ => false,
    }
}
