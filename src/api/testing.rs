//! Test support (compiled for tests and with the `test-support` feature only, never in the
//! product): an in-memory [`ApiCluster`] that stores Tenants, LimitProfiles and Channels,
//! hands out watch streams (which tests can pause to play a lagging watch), records who wrote
//! what with which field manager, and can run the admission webhook's decision on every write
//! as the real API server would.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use futures::channel::mpsc;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use kube::runtime::watcher;

use crate::hierarchy::{EngineSettings, Inventory};
use crate::operator::admission::WatchEvent;
use crate::types::{Channel, LimitProfile, Tenant};
use crate::webhook::{Proposal, TreeView};

use super::cache::API_ANNOTATIONS;
use super::cluster::{ApiCluster, FIELD_MANAGER, TenantApply, WriteError};

/// One write as the API server saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    /// `create`, `apply` or `delete`.
    pub verb: &'static str,
    pub kind: &'static str,
    pub name: String,
    pub field_manager: &'static str,
}

struct Subscriber {
    tx: mpsc::UnboundedSender<WatchEvent>,
    paused: bool,
    queue: Vec<WatchEvent>,
}

#[derive(Default)]
struct State {
    tenants: BTreeMap<String, Tenant>,
    profiles: BTreeMap<String, LimitProfile>,
    channels: BTreeMap<String, Channel>,
    version: u64,
    uid: u64,
    subscribers: Vec<Subscriber>,
    writes: Vec<Write>,
    fail_next: Option<WriteError>,
}

/// The in-memory cluster.
#[derive(Default)]
pub struct MemoryApiCluster {
    state: Mutex<State>,
    /// The admission webhook (None: every valid write is accepted).
    webhook: Option<TreeView>,
}

impl MemoryApiCluster {
    pub fn new() -> Self {
        Self::default()
    }

    /// With the admission webhook judging every write, as installed.
    pub fn with_webhook() -> Self {
        MemoryApiCluster {
            state: Mutex::default(),
            webhook: Some(TreeView::new(EngineSettings::default())),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Seeds objects (as kubectl would), delivered to watchers.
    pub fn put_tenant(&self, mut t: Tenant) {
        let mut s = self.lock();
        stamp(&mut s, &mut t.metadata, true);
        s.tenants.insert(t.name().to_string(), t.clone());
        self.publish(&mut s, WatchEvent::Tenant(watcher::Event::Apply(t)));
    }

    pub fn put_profile(&self, mut p: LimitProfile) {
        let mut s = self.lock();
        stamp(&mut s, &mut p.metadata, true);
        s.profiles.insert(p.name().to_string(), p.clone());
        self.publish(&mut s, WatchEvent::Profile(watcher::Event::Apply(p)));
    }

    pub fn put_channel(&self, mut c: Channel) {
        let mut s = self.lock();
        stamp(&mut s, &mut c.metadata, true);
        s.channels.insert(c.name().to_string(), c.clone());
        self.publish(&mut s, WatchEvent::Channel(watcher::Event::Apply(c)));
    }

    pub fn tenant(&self, name: &str) -> Option<Tenant> {
        self.lock().tenants.get(name).cloned()
    }

    pub fn tenant_count(&self) -> usize {
        self.lock().tenants.len()
    }

    pub fn channel(&self, name: &str) -> Option<Channel> {
        self.lock().channels.get(name).cloned()
    }

    pub fn profile(&self, name: &str) -> Option<LimitProfile> {
        self.lock().profiles.get(name).cloned()
    }

    /// Every write so far.
    pub fn writes(&self) -> Vec<Write> {
        self.lock().writes.clone()
    }

    /// The next write fails with `e` (an API server outage, a conflict…).
    pub fn fail_next(&self, e: WriteError) {
        self.lock().fail_next = Some(e);
    }

    /// Holds back watch events (a lagging watch) until [`resume_events`](Self::resume_events).
    pub fn pause_events(&self) {
        for s in &mut self.lock().subscribers {
            s.paused = true;
        }
    }

    pub fn resume_events(&self) {
        for s in &mut self.lock().subscribers {
            s.paused = false;
            for ev in s.queue.drain(..) {
                let _ = s.tx.unbounded_send(ev);
            }
        }
    }

    fn publish(&self, s: &mut State, ev: WatchEvent) {
        if let Some(w) = &self.webhook {
            match &ev {
                WatchEvent::Tenant(watcher::Event::Apply(t)) => w.upsert_tenant(t.clone()),
                WatchEvent::Tenant(watcher::Event::Delete(t)) => w.remove_tenant(t.name()),
                WatchEvent::Profile(watcher::Event::Apply(p)) => w.upsert_profile(p.clone()),
                WatchEvent::Channel(watcher::Event::Apply(c)) => w.upsert_channel(c.clone()),
                _ => {}
            }
        }
        s.subscribers.retain(|sub| !sub.tx.is_closed());
        for sub in &mut s.subscribers {
            if sub.paused {
                sub.queue.push(ev.clone());
            } else {
                let _ = sub.tx.unbounded_send(ev.clone());
            }
        }
    }

    fn admit(&self, p: &Proposal) -> Result<(), WriteError> {
        let Some(w) = &self.webhook else {
            return Ok(());
        };
        w.decide(p, true).map_err(|d| {
            let reason = d
                .first()
                .map_or(crate::webhook::DenialReason::MalformedObject, |x| x.reason);
            WriteError::Denied {
                code: reason.code(),
                reason: reason.as_str().to_string(),
                message: crate::webhook::denial::join(&d),
            }
        })
    }

    fn record(&self, s: &mut State, verb: &'static str, kind: &'static str, name: &str) {
        s.writes.push(Write {
            verb,
            kind,
            name: name.to_string(),
            field_manager: FIELD_MANAGER,
        });
    }
}

fn stamp(s: &mut State, m: &mut kube::api::ObjectMeta, new: bool) {
    s.version += 1;
    m.resource_version = Some(s.version.to_string());
    if new && m.uid.is_none() {
        s.uid += 1;
        m.uid = Some(format!("uid-{}", s.uid));
        m.generation = Some(1);
    }
}

impl ApiCluster for MemoryApiCluster {
    fn events(&self) -> BoxStream<'static, Result<WatchEvent, String>> {
        let (tx, rx) = mpsc::unbounded();
        let mut s = self.lock();
        let inv = Inventory {
            tenants: s.tenants.values().cloned().collect(),
            profiles: s.profiles.values().cloned().collect(),
            channels: s.channels.values().cloned().collect(),
        };
        let _ = tx.unbounded_send(WatchEvent::Tenant(watcher::Event::Init));
        for t in inv.tenants {
            let _ = tx.unbounded_send(WatchEvent::Tenant(watcher::Event::InitApply(t)));
        }
        let _ = tx.unbounded_send(WatchEvent::Tenant(watcher::Event::InitDone));
        let _ = tx.unbounded_send(WatchEvent::Profile(watcher::Event::Init));
        for p in inv.profiles {
            let _ = tx.unbounded_send(WatchEvent::Profile(watcher::Event::InitApply(p)));
        }
        let _ = tx.unbounded_send(WatchEvent::Profile(watcher::Event::InitDone));
        let _ = tx.unbounded_send(WatchEvent::Channel(watcher::Event::Init));
        for c in inv.channels {
            let _ = tx.unbounded_send(WatchEvent::Channel(watcher::Event::InitApply(c)));
        }
        let _ = tx.unbounded_send(WatchEvent::Channel(watcher::Event::InitDone));
        s.subscribers.push(Subscriber {
            tx,
            paused: false,
            queue: Vec::new(),
        });
        rx.map(Ok).boxed()
    }

    fn create_tenant(&self, mut t: Tenant) -> BoxFuture<'_, Result<Tenant, WriteError>> {
        Box::pin(async move {
            let mut s = self.lock();
            if let Some(e) = s.fail_next.take() {
                return Err(e);
            }
            let name = t.name().to_string();
            if s.tenants.contains_key(&name) {
                return Err(WriteError::AlreadyExists(format!("Tenant {name:?}")));
            }
            self.admit(&Proposal::CreateTenant(t.clone()))?;
            stamp(&mut s, &mut t.metadata, true);
            s.tenants.insert(name.clone(), t.clone());
            self.record(&mut s, "create", "Tenant", &name);
            self.publish(&mut s, WatchEvent::Tenant(watcher::Event::Apply(t.clone())));
            Ok(t)
        })
    }

    fn apply_tenant(&self, change: TenantApply) -> BoxFuture<'_, Result<Tenant, WriteError>> {
        Box::pin(async move {
            let mut s = self.lock();
            if let Some(e) = s.fail_next.take() {
                return Err(e);
            }
            let Some(old) = s.tenants.get(&change.name).cloned() else {
                return Err(WriteError::NotFound(format!("Tenant {:?}", change.name)));
            };
            if let Some(rv) = &change.resource_version
                && old.metadata.resource_version.as_deref() != Some(rv.as_str())
            {
                return Err(WriteError::Conflict(format!(
                    "Operation cannot be fulfilled on tenants.silo.dev {:?}: the object has been modified",
                    change.name
                )));
            }
            let mut new = old.clone();
            new.spec = change.spec.clone();
            let ann = new
                .metadata
                .annotations
                .get_or_insert_with(Default::default);
            for k in API_ANNOTATIONS {
                ann.remove(k);
            }
            ann.extend(change.annotations.clone());
            self.admit(&Proposal::UpdateTenant {
                old: Box::new(old.clone()),
                new: Box::new(new.clone()),
            })?;
            if new.spec != old.spec {
                new.metadata.generation = Some(old.metadata.generation.unwrap_or(1) + 1);
            }
            stamp(&mut s, &mut new.metadata, false);
            s.tenants.insert(change.name.clone(), new.clone());
            self.record(&mut s, "apply", "Tenant", &change.name);
            self.publish(
                &mut s,
                WatchEvent::Tenant(watcher::Event::Apply(new.clone())),
            );
            Ok(new)
        })
    }

    fn delete_tenant(
        &self,
        name: String,
        uid: Option<String>,
    ) -> BoxFuture<'_, Result<(), WriteError>> {
        Box::pin(async move {
            let mut s = self.lock();
            if let Some(e) = s.fail_next.take() {
                return Err(e);
            }
            let Some(t) = s.tenants.get(&name).cloned() else {
                return Err(WriteError::NotFound(format!("Tenant {name:?}")));
            };
            if uid.is_some() && t.metadata.uid != uid {
                return Err(WriteError::Conflict(format!(
                    "uid of Tenant {name:?} changed"
                )));
            }
            self.admit(&Proposal::DeleteTenant(t.clone()))?;
            self.record(&mut s, "delete", "Tenant", &name);
            // The operator's cascade, finished at once: the subtree goes, deepest first.
            let mut gone = vec![name.clone()];
            let mut i = 0;
            while i < gone.len() {
                let parent = gone[i].clone();
                gone.extend(
                    s.tenants
                        .values()
                        .filter(|x| x.spec.parent.as_deref() == Some(parent.as_str()))
                        .map(|x| x.name().to_string()),
                );
                i += 1;
            }
            for n in gone.into_iter().rev() {
                if let Some(t) = s.tenants.remove(&n) {
                    self.publish(&mut s, WatchEvent::Tenant(watcher::Event::Delete(t)));
                }
            }
            Ok(())
        })
    }

    fn create_profile(
        &self,
        mut p: LimitProfile,
    ) -> BoxFuture<'_, Result<LimitProfile, WriteError>> {
        Box::pin(async move {
            let mut s = self.lock();
            if let Some(e) = s.fail_next.take() {
                return Err(e);
            }
            let name = p.name().to_string();
            if s.profiles.contains_key(&name) {
                return Err(WriteError::AlreadyExists(format!("LimitProfile {name:?}")));
            }
            self.admit(&Proposal::CreateProfile(p.clone()))?;
            stamp(&mut s, &mut p.metadata, true);
            s.profiles.insert(name.clone(), p.clone());
            self.record(&mut s, "create", "LimitProfile", &name);
            self.publish(
                &mut s,
                WatchEvent::Profile(watcher::Event::Apply(p.clone())),
            );
            Ok(p)
        })
    }

    fn create_channel(&self, mut c: Channel) -> BoxFuture<'_, Result<Channel, WriteError>> {
        Box::pin(async move {
            let mut s = self.lock();
            if let Some(e) = s.fail_next.take() {
                return Err(e);
            }
            let name = c.name().to_string();
            if s.channels.contains_key(&name) {
                return Err(WriteError::AlreadyExists(format!("Channel {name:?}")));
            }
            self.admit(&Proposal::CreateChannel(c.clone()))?;
            stamp(&mut s, &mut c.metadata, true);
            s.channels.insert(name.clone(), c.clone());
            self.record(&mut s, "create", "Channel", &name);
            self.publish(
                &mut s,
                WatchEvent::Channel(watcher::Event::Apply(c.clone())),
            );
            Ok(c)
        })
    }
}

/// An API replica over `cluster` and `store`, its cache fed from the cluster's watch; waits
/// until the first lists are loaded.
pub async fn replica(
    cluster: Arc<MemoryApiCluster>,
    store: super::store::Store,
    config: crate::config::PlatformConfig,
) -> Arc<super::Api> {
    let cache = Arc::new(super::cache::Cache::new(EngineSettings::from(&config)));
    let events = cluster.events();
    tokio::spawn(cache.clone().feed(events));
    for _ in 0..2000 {
        if cache.is_ready() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let mut api = super::Api::new(cache, cluster, store, config);
    api.read_your_writes = std::time::Duration::from_millis(500);
    if api.device_ca.is_none() {
        api.device_ca = Some(Arc::new(GeneratedDeviceCa::new()));
    }
    Arc::new(api)
}

/// A device CA generated in memory under a generated platform root (tests that do not mount
/// the operator's `silo-device-ca` files): the same issuing code as
/// [`super::devices::ca::FileDeviceCa`].
pub struct GeneratedDeviceCa {
    root: crate::pki::PlatformCa,
    ca: crate::pki::DeviceCa,
}

impl Default for GeneratedDeviceCa {
    fn default() -> Self {
        Self::new()
    }
}

impl GeneratedDeviceCa {
    pub fn new() -> Self {
        let now = time::OffsetDateTime::now_utc();
        let validity = crate::pki::PkiValidity::default();
        let root = crate::pki::PlatformCa::generate("silo test root", validity.root_ca, now)
            .expect("generate a test root CA");
        let ca = crate::pki::DeviceCa::issue(
            &root,
            crate::pki::DEVICE_CA_VALIDITY,
            validity.backdate,
            now,
        )
        .expect("generate a test device CA");
        GeneratedDeviceCa { root, ca }
    }

    /// The platform root certificate (PEM).
    pub fn root_pem(&self) -> String {
        self.root.cert().cert_pem.clone()
    }

    /// The device CA.
    pub fn device_ca(&self) -> &crate::pki::DeviceCa {
        &self.ca
    }
}

impl super::devices::DeviceCa for GeneratedDeviceCa {
    fn issue<'a>(
        &'a self,
        tenant: &'a str,
        id: &'a str,
        username: &'a str,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<Output = Result<super::devices::IssuedDevice, String>>
                + Send
                + 'a,
        >,
    > {
        Box::pin(async move { super::devices::ca::issue_with(&self.ca, tenant, id, username) })
    }
}
