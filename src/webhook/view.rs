//! The webhook's always-current view of the tree, fed one object at a time by the
//! operator's watchers, plus the reservations that make limit checks race-free.
//!
//! A reservation is taken, atomically with the check, when a creation that consumes a
//! counted resource is admitted (a Tenant takes one `subtenants` at its parent, a Channel one
//! `channels` at its owner). It is recorded as usage in the tree at once, so the next
//! request already sees it. It ends when the watcher reports the object (the usage then
//! becomes real: net zero change) or when it expires (the creation failed later in the API
//! server or never happened), after a configurable TTL.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::config::SiloedPostgres;
use crate::hierarchy::{Applied, EngineSettings, Inventory, ObjectKind, TenantTree};
use crate::types::{Channel, CountResource, LimitProfile, Tenant};

use super::decide::Proposal;
use super::denial::Denial;

/// Default lifetime of a reservation whose object was not (yet) reported by the watcher.
pub const DEFAULT_RESERVATION_TTL: Duration = Duration::from_secs(30);

/// Source of "now" (injectable so that tests can expire reservations without sleeping).
pub trait Clock: Send + Sync {
    fn now(&self) -> Instant;
}

/// The real monotonic clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that moves only when told to (tests and the `test-support` feature only).
#[cfg(any(test, feature = "test-support"))]
#[derive(Debug)]
pub struct ManualClock(Mutex<Instant>);

#[cfg(any(test, feature = "test-support"))]
impl Default for ManualClock {
    fn default() -> Self {
        ManualClock(Mutex::new(Instant::now()))
    }
}

#[cfg(any(test, feature = "test-support"))]
impl ManualClock {
    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *g += d;
    }
}

#[cfg(any(test, feature = "test-support"))]
impl Clock for ManualClock {
    fn now(&self) -> Instant {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub(crate) type Key = (ObjectKind, String);

/// Usage held for an admitted creation that the watcher has not reported yet.
#[derive(Clone, Debug)]
pub(crate) struct Reservation {
    /// The tenant whose usage carries it (parent of a new Tenant, owner of a new Channel).
    pub at: String,
    pub resource: CountResource,
    /// Own quotas (thousandths) of a new Tenant, counted against its parent's quota.
    pub quotas: [Option<i128>; 4],
    /// Profile and channels the new object uses (they may not be deleted meanwhile).
    pub uses_profile: Option<String>,
    pub uses_channels: Vec<String>,
    expiry: (Instant, u64),
}

/// A deletion that was admitted but not yet observed: nothing may be created below it.
#[derive(Clone, Debug)]
pub(crate) struct Tombstone {
    expiry: Instant,
}

pub(crate) struct Inner {
    pub tree: TenantTree,
    /// Profile name → tenants naming it in `spec.limitProfile`.
    pub profile_users: HashMap<String, BTreeSet<String>>,
    /// Channel name → tenants listing it in `spec.channels`.
    pub channel_users: HashMap<String, BTreeSet<String>>,
    pub reservations: HashMap<Key, Reservation>,
    expiry: BTreeMap<(Instant, u64), Key>,
    seq: u64,
    /// Parent name → number of reserved child creations.
    pub pending_children: HashMap<String, i64>,
    /// Parent name → quotas reserved by pending child creations.
    pub reserved_quota: HashMap<String, [i128; 4]>,
    pub deleting: HashMap<String, Tombstone>,
    /// The platform's `siloed.postgres` (image and volume of a Siloed tenant that names
    /// none: a shrink or a major-version change of them is refused like an explicit one).
    pub siloed_postgres: SiloedPostgres,
}

/// The always-current tree the webhook decides on. Cheap to share (`Arc`), internally locked:
/// every decision and every watcher update takes one short lock, which is what makes
/// check-and-reserve atomic.
pub struct TreeView {
    inner: Mutex<Inner>,
    clock: Arc<dyn Clock>,
    ttl: Duration,
}

impl TreeView {
    /// An empty view with the real clock and the default reservation TTL.
    pub fn new(settings: EngineSettings) -> Self {
        Self::with_clock(settings, DEFAULT_RESERVATION_TTL, Arc::new(SystemClock))
    }

    pub fn with_clock(settings: EngineSettings, ttl: Duration, clock: Arc<dyn Clock>) -> Self {
        let tree = TenantTree::build(Inventory::default(), settings);
        TreeView {
            inner: Mutex::new(Inner {
                tree,
                profile_users: HashMap::new(),
                channel_users: HashMap::new(),
                reservations: HashMap::new(),
                expiry: BTreeMap::new(),
                seq: 0,
                pending_children: HashMap::new(),
                reserved_quota: HashMap::new(),
                deleting: HashMap::new(),
                siloed_postgres: SiloedPostgres::default(),
            }),
            clock,
            ttl,
        }
    }

    /// With the platform's Siloed database defaults (`siloed.postgres`: image and volume).
    pub fn with_siloed_postgres(self, postgres: SiloedPostgres) -> Self {
        self.lock().siloed_postgres = postgres;
        self
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the tree half-updated in a way that
        // matters more than refusing all admissions, so keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces everything (initial list, or a watcher restart). Live reservations stay.
    pub fn replace_all(&self, mut inventory: Inventory) {
        // Like every upsert, the tree keeps what the engine reads, not the whole object.
        for t in &mut inventory.tenants {
            *t = crate::hierarchy::engine_copy(t);
        }
        let mut g = self.lock();
        let settings = g.tree.settings().clone();
        g.tree = TenantTree::build(inventory, settings);
        g.profile_users.clear();
        g.channel_users.clear();
        let g = &mut *g;
        for t in &g.tree.inventory().tenants {
            index_uses(&mut g.profile_users, &mut g.channel_users, t, true);
        }
        g.reapply_reservations();
    }

    /// The watcher saw a Tenant (created or changed).
    pub fn upsert_tenant(&self, t: Tenant) {
        let t = crate::hierarchy::engine_copy(&t);
        let mut g = self.lock();
        g.release(&(ObjectKind::Tenant, t.name().to_string()));
        g.deleting.remove(t.name());
        if let Some(id) = g.tree.get(t.name()) {
            let old = g.tree.tenant(id).clone();
            g.index_uses(&old, false);
        }
        g.index_uses(&t, true);
        if g.tree.upsert_tenant(t) == Applied::Rebuilt {
            g.reapply_reservations();
        }
    }

    /// The watcher saw a Tenant disappear.
    pub fn remove_tenant(&self, name: &str) {
        let mut g = self.lock();
        g.deleting.remove(name);
        // Reservations carried by this tenant vanish with it.
        let carried: Vec<Key> = g
            .reservations
            .iter()
            .filter(|(_, r)| r.at == name)
            .map(|(k, _)| k.clone())
            .collect();
        for k in carried {
            g.release(&k);
        }
        if let Some((old, how)) = g.tree.remove_tenant(name) {
            g.index_uses(&old, false);
            if how == Applied::Rebuilt {
                g.reapply_reservations();
            }
        }
    }

    pub fn upsert_profile(&self, p: LimitProfile) {
        self.lock().tree.upsert_profile(p);
    }

    pub fn remove_profile(&self, name: &str) {
        self.lock().tree.remove_profile(name);
    }

    pub fn upsert_channel(&self, c: Channel) {
        let mut g = self.lock();
        g.release(&(ObjectKind::Channel, c.name().to_string()));
        g.tree.upsert_channel(c);
    }

    pub fn remove_channel(&self, name: &str) {
        self.lock().tree.remove_channel(name);
    }

    /// Decides on a proposed change. When it is allowed and `reserve` is true, the usage it
    /// consumes is reserved in the same critical section.
    pub fn decide(&self, proposal: &Proposal, reserve: bool) -> Result<(), Vec<Denial>> {
        let now = self.clock.now();
        let mut g = self.lock();
        g.expire(now);
        g.decide(proposal, reserve, now, self.ttl)
    }

    /// Ends the reservation of an admitted creation that will not happen after all (the write
    /// failed after the decision, e.g. in the REST API); a no-op when there is none.
    pub fn cancel_reservation(&self, kind: ObjectKind, name: &str) {
        self.lock().take(&(kind, name.to_string()));
    }

    /// Number of live reservations (after expiring old ones).
    pub fn reservations(&self) -> usize {
        let now = self.clock.now();
        let mut g = self.lock();
        g.expire(now);
        g.reservations.len()
    }

    /// Runs `f` on the current tree (for status, metrics, tests).
    pub fn with_tree<R>(&self, f: impl FnOnce(&TenantTree) -> R) -> R {
        f(&self.lock().tree)
    }

    /// Runs `f` on the tree as the watchers see it: usage without the live reservations of
    /// admitted creations not yet observed — what a Tenant's `status.usage` reports (the
    /// operator reads its tenants this way). The reservations are taken out and put back
    /// inside one critical section, so no decision ever sees the tree without them.
    pub fn with_observed_tree<R>(&self, f: impl FnOnce(&TenantTree) -> R) -> R {
        let mut g = self.lock();
        let held: Vec<(String, CountResource)> = g
            .reservations
            .values()
            .map(|r| (r.at.clone(), r.resource))
            .collect();
        let shift = |g: &mut Inner, sign: i64| {
            for (at, resource) in &held {
                if let Some(id) = g.tree.get(at) {
                    g.tree.record_usage(id, *resource, sign);
                }
            }
        };
        shift(&mut g, -1);
        let out = f(&g.tree);
        shift(&mut g, 1);
        out
    }
}

/// Adds (or removes) `t` as a user of its LimitProfile and Channels in the two reverse maps.
fn index_uses(
    profile_users: &mut HashMap<String, BTreeSet<String>>,
    channel_users: &mut HashMap<String, BTreeSet<String>>,
    t: &Tenant,
    add: bool,
) {
    let name = t.name().to_string();
    let edit = |map: &mut HashMap<String, BTreeSet<String>>, key: &str| {
        if add {
            map.entry(key.to_string()).or_default().insert(name.clone());
        } else if let Some(s) = map.get_mut(key) {
            s.remove(&name);
            if s.is_empty() {
                map.remove(key);
            }
        }
    };
    if let Some(p) = t.spec.limit_profile.as_deref() {
        edit(profile_users, p);
    }
    for c in &t.spec.channels {
        edit(channel_users, c);
    }
}

impl Inner {
    fn index_uses(&mut self, t: &Tenant, add: bool) {
        index_uses(&mut self.profile_users, &mut self.channel_users, t, add);
    }

    /// Drops reservations and tombstones whose time is up.
    pub(crate) fn expire(&mut self, now: Instant) {
        while let Some((&(t, seq), _)) = self.expiry.first_key_value() {
            if t > now {
                break;
            }
            if let Some(key) = self.expiry.remove(&(t, seq)) {
                tracing::debug!(kind = %key.0, name = %key.1, "admission reservation expired");
                self.release(&key);
            }
        }
        self.deleting.retain(|_, t| t.expiry > now);
    }

    /// Records a reservation and its usage.
    pub(crate) fn reserve(&mut self, key: Key, mut r: Reservation, now: Instant, ttl: Duration) {
        self.release(&key);
        self.seq += 1;
        r.expiry = (now + ttl, self.seq);
        self.expiry.insert(r.expiry, key.clone());
        self.apply(&r, 1);
        self.reservations.insert(key, r);
    }

    pub(crate) fn new_reservation(
        at: &str,
        resource: CountResource,
        quotas: [Option<i128>; 4],
        uses_profile: Option<String>,
        uses_channels: Vec<String>,
    ) -> Reservation {
        Reservation {
            at: at.to_string(),
            resource,
            quotas,
            uses_profile,
            uses_channels,
            expiry: (Instant::now(), 0),
        }
    }

    pub(crate) fn tombstone(&mut self, name: &str, now: Instant, ttl: Duration) {
        self.deleting
            .insert(name.to_string(), Tombstone { expiry: now + ttl });
    }

    /// Ends a reservation (object observed, expired, or replaced by a retry).
    fn release(&mut self, key: &Key) {
        self.take(key);
    }

    /// Ends a reservation and returns it (to be put back with [`Inner::restore`]).
    pub(crate) fn take(&mut self, key: &Key) -> Option<Reservation> {
        let r = self.reservations.remove(key)?;
        self.expiry.remove(&r.expiry);
        self.apply(&r, -1);
        Some(r)
    }

    /// Puts back a reservation taken by [`Inner::take`], with its original expiry.
    pub(crate) fn restore(&mut self, key: Key, r: Reservation) {
        self.expiry.insert(r.expiry, key.clone());
        self.apply(&r, 1);
        self.reservations.insert(key, r);
    }

    /// Adds (`sign` 1) or removes (-1) a reservation's usage.
    fn apply(&mut self, r: &Reservation, sign: i64) {
        if let Some(id) = self.tree.get(&r.at) {
            self.tree.record_usage(id, r.resource, sign);
        }
        if r.resource == CountResource::Subtenants {
            let n = self.pending_children.entry(r.at.clone()).or_default();
            *n += sign;
            if *n <= 0 {
                self.pending_children.remove(&r.at);
            }
            if r.quotas.iter().any(Option::is_some) {
                let q = self.reserved_quota.entry(r.at.clone()).or_default();
                // Quotas are bounded (hierarchy::quota::MAX_QUOTA_UNITS), so these sums stay
                // exact; saturating all the same, so no input can make them wrap.
                for (k, v) in r.quotas.iter().enumerate() {
                    q[k] = q[k].saturating_add(v.unwrap_or(0).saturating_mul(i128::from(sign)));
                }
                if q.iter().all(|&v| v == 0) {
                    self.reserved_quota.remove(&r.at);
                }
            }
        }
    }

    /// After a rebuild the tree's usage is recomputed from objects: put reservations back.
    fn reapply_reservations(&mut self) {
        let all: Vec<Reservation> = self.reservations.values().cloned().collect();
        for r in all {
            if let Some(id) = self.tree.get(&r.at) {
                self.tree.record_usage(id, r.resource, 1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::TenantSpec;

    fn t(name: &str, parent: Option<&str>, subtenants: Option<i64>) -> Tenant {
        let mut spec = TenantSpec {
            parent: parent.map(String::from),
            ..Default::default()
        };
        spec.limits.subtenants = subtenants;
        Tenant::new(name, spec)
    }

    #[test]
    fn reservations_expire_in_order_and_tombstones_too() {
        let clock = Arc::new(ManualClock::default());
        let view = TreeView::with_clock(
            EngineSettings::default(),
            Duration::from_secs(10),
            clock.clone(),
        );
        view.replace_all(Inventory {
            tenants: vec![t("p", None, Some(5)), t("q", Some("p"), None)],
            ..Default::default()
        });
        let create = |n: &str, p: &str| Proposal::CreateTenant(t(n, Some(p), None));
        let pending = |v: &TreeView| v.lock().pending_children.get("p").copied().unwrap_or(0);
        view.decide(&create("a", "p"), true).unwrap(); // expires at 10
        clock.advance(Duration::from_secs(5));
        view.decide(&create("b", "p"), true).unwrap(); // expires at 15
        view.decide(&Proposal::DeleteTenant(t("q", Some("p"), None)), true)
            .unwrap(); // tombstone until 15
        assert!(view.decide(&create("c", "q"), false).is_err());
        assert_eq!(pending(&view), 2);
        clock.advance(Duration::from_secs(6)); // 11
        assert_eq!(view.reservations(), 1, "a expired, b not yet");
        assert_eq!(pending(&view), 1);
        assert!(
            view.decide(&create("c", "q"), false).is_err(),
            "q is still being deleted"
        );
        clock.advance(Duration::from_secs(5)); // 16
        assert_eq!(view.reservations(), 0);
        assert_eq!(pending(&view), 0);
        assert!(
            view.decide(&create("c", "q"), false).is_ok(),
            "the tombstone of q expired"
        );
        let used = view.with_tree(|tr| {
            tr.node(tr.get("p").unwrap())
                .subtree
                .get(CountResource::Subtenants)
        });
        assert_eq!(used, 1, "only q remains");
    }

    #[test]
    fn the_initial_load_keeps_only_what_the_engine_reads() {
        let view = TreeView::new(EngineSettings::default());
        let mut x = t("x", None, None);
        x.metadata.annotations = Some(
            [(
                "kubectl.kubernetes.io/last-applied-configuration".to_string(),
                "{}".repeat(500),
            )]
            .into(),
        );
        x.status = Some(crate::types::TenantStatus {
            phase: Some(crate::types::Phase::Ready),
            ..Default::default()
        });
        view.replace_all(Inventory {
            tenants: vec![x],
            ..Default::default()
        });
        let kept = view.with_tree(|tr| tr.tenant(tr.get("x").unwrap()).clone());
        assert!(kept.metadata.annotations.is_none());
        assert!(
            kept.status.is_none(),
            "no usage observed: nothing of the status kept"
        );
    }

    #[test]
    fn the_observed_tree_leaves_reservations_out_and_keeps_them() {
        let view = TreeView::new(EngineSettings::default());
        view.replace_all(Inventory {
            tenants: vec![t("p", None, Some(2)), t("q", Some("p"), None)],
            ..Default::default()
        });
        view.decide(&Proposal::CreateTenant(t("a", Some("q"), None)), true)
            .unwrap();
        let used = |tr: &TenantTree, n: &str| {
            let node = tr.node(tr.get(n).unwrap());
            (
                node.own.get(CountResource::Subtenants),
                node.subtree.get(CountResource::Subtenants),
            )
        };
        assert_eq!(view.with_tree(|tr| used(tr, "q")), (1, 1));
        assert_eq!(view.with_tree(|tr| used(tr, "p")), (1, 2));
        assert_eq!(view.with_observed_tree(|tr| used(tr, "q")), (0, 0));
        assert_eq!(view.with_observed_tree(|tr| used(tr, "p")), (1, 1));
        // The reservation still counts for the next decision: p allows 2 in its subtree.
        assert_eq!(view.with_tree(|tr| used(tr, "p")), (1, 2));
        assert!(
            view.decide(&Proposal::CreateTenant(t("b", Some("q"), None)), false)
                .is_err()
        );
    }

    #[test]
    fn observing_a_tenant_indexes_its_profile_and_channels() {
        let view = TreeView::new(EngineSettings::default());
        let mut x = t("x", None, None);
        x.spec.limit_profile = Some("gold".into());
        x.spec.channels = vec!["tel".into()];
        view.upsert_tenant(x.clone());
        assert!(view.lock().profile_users["gold"].contains("x"));
        x.spec.limit_profile = None;
        view.upsert_tenant(x);
        assert!(!view.lock().profile_users.contains_key("gold"));
        view.remove_tenant("x");
        assert!(view.lock().channel_users.is_empty());
    }
}
