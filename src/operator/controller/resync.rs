//! The periodic resync: every tenant is reconciled once per [`RESYNC`] (drift no watch
//! reports: the shared PostgreSQL and Mosquitto of Shared tenants, a key due for rotation),
//! spread evenly over the period and only while the controller has room for it.
//!
//! A reconcile that asks to be looked at again no sooner than [`RESYNC`] is not requeued by
//! kube-runtime's scheduler (which would keep an entry per tenant and bunch the resyncs of
//! tenants made Ready together); instead each tenant has a fixed one-second slot in the period
//! ([`slot_of`], from its name) and [`resync_loop`] triggers the tenants of each slot as it
//! comes round. While every reconcile worker is busy — the first pass over thousands of
//! tenants, a burst of changes — the loop waits: a resync would only lengthen the backlog
//! (issue #11, part 6: at 10,000 tenants the 5-minute requeues of tenants made Ready early were
//! most of the first pass's reconciles). The slots it waited through are caught up afterwards
//! at [`CATCH_UP`] slots a second (at most one period's worth: older slots have come round
//! again), so every tenant is still resynced once per period plus the time the workers were
//! all busy.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Duration;

use futures::channel::mpsc::UnboundedSender;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::watch;

use super::cached::CachedTenant;
use crate::operator::reconcile::RESYNC;
use crate::types::TenantLinks;

/// How often the loop looks at the next slot.
pub const SLOT: Duration = Duration::from_secs(1);

/// Slots triggered per [`SLOT`] at most while catching up with slots waited through.
pub const CATCH_UP: u64 = 2;

/// Whether a reconcile's requeue after `after` is left to the periodic resync.
pub fn left_to_resync(after: Duration) -> bool {
    after >= RESYNC
}

/// The slot (0..`slots`) of tenant `name` in the period: the same for the process's life,
/// spread evenly over the slots.
pub fn slot_of(name: &str, slots: u64) -> u64 {
    let mut h = DefaultHasher::new();
    name.hash(&mut h);
    h.finish() % slots.max(1)
}

/// Triggers, every [`SLOT`], the tenants of `store` whose slot has come ([`slot_of`] with
/// one slot per second of [`RESYNC`]) on `queue`, and up to [`CATCH_UP`] slots when behind;
/// nothing while `busy()` says every reconcile worker is taken. Runs until `shutdown` fires.
pub async fn resync_loop(
    store: Store<CachedTenant>,
    queue: UnboundedSender<ObjectRef<CachedTenant>>,
    busy: impl Fn() -> bool,
    mut shutdown: watch::Receiver<bool>,
) {
    if store.wait_until_ready().await.is_err() {
        return;
    }
    let slots = RESYNC.as_secs().max(1);
    let mut tick = tokio::time::interval(SLOT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // Slots counted since the start: `due` have come round, `done` have been triggered.
    let (mut due, mut done) = (0u64, 0u64);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        due += 1;
        // More than a period behind: the oldest slots have come round again since.
        done = done.max(due.saturating_sub(slots));
        if busy() || done == due {
            continue;
        }
        let upto = due.min(done + CATCH_UP);
        let tenants = store.state();
        for slot in (done..upto).map(|n| n % slots) {
            for t in &tenants {
                if slot_of(t.name(), slots) == slot {
                    let _ = queue.unbounded_send(ObjectRef::new(t.name()));
                }
            }
        }
        done = upto;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tenant_has_one_slot_and_the_slots_are_spread() {
        let slots = RESYNC.as_secs();
        let mut per_slot = vec![0u32; slots as usize];
        for n in 0..30_000 {
            let name = format!("tenant-{n}");
            let s = slot_of(&name, slots);
            assert_eq!(s, slot_of(&name, slots), "stable");
            per_slot[s as usize] += 1;
        }
        // 100 per slot on average; no slot gets twice its share or is left empty.
        let (min, max) = (per_slot.iter().min(), per_slot.iter().max());
        assert!(min.is_some_and(|&m| m > 50), "{min:?}");
        assert!(max.is_some_and(|&m| m < 200), "{max:?}");
        assert_eq!(slot_of("x", 0), 0, "no slots: one");
    }

    #[test]
    fn requeues_from_the_resync_on_are_left_to_it() {
        assert!(left_to_resync(RESYNC));
        assert!(left_to_resync(RESYNC * 2));
        assert!(!left_to_resync(crate::operator::reconcile::WAIT_READY));
        assert!(!left_to_resync(Duration::from_secs(299)));
    }

    /// The loop triggers each tenant of the store in its slot and none while busy.
    #[tokio::test(start_paused = true)]
    async fn the_loop_triggers_each_tenant_once_per_period_unless_busy() {
        use kube::runtime::watcher::Event;
        let (store, mut writer) = kube::runtime::reflector::store::<CachedTenant>();
        writer.apply_watcher_event(&Event::Init);
        for n in 0..20 {
            let t = crate::types::Tenant::new(&format!("t{n}"), Default::default());
            writer.apply_watcher_event(&Event::InitApply(CachedTenant::from(t)));
        }
        writer.apply_watcher_event(&Event::InitDone);
        let (tx, mut rx) = futures::channel::mpsc::unbounded();
        let (stop, shutdown) = watch::channel(false);
        let busy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let b = busy.clone();
        let task = tokio::spawn(resync_loop(
            store,
            tx,
            move || b.load(std::sync::atomic::Ordering::Relaxed),
            shutdown,
        ));
        // One whole period (its first tick is at once): every tenant exactly once.
        tokio::time::sleep(RESYNC - SLOT / 2).await;
        let mut got = Vec::new();
        while let Ok(r) = rx.try_recv() {
            got.push(r.name);
        }
        got.sort();
        let mut want: Vec<String> = (0..20).map(|n| format!("t{n}")).collect();
        want.sort();
        assert_eq!(got, want);
        // Busy for two periods: nothing.
        busy.store(true, std::sync::atomic::Ordering::Relaxed);
        tokio::time::sleep(RESYNC * 2).await;
        assert!(
            rx.try_recv().is_err(),
            "no resync while every worker is busy"
        );
        // Free again: the period waited through is caught up at CATCH_UP slots a second, so
        // within a period every tenant has come round.
        busy.store(false, std::sync::atomic::Ordering::Relaxed);
        tokio::time::sleep(RESYNC).await;
        let mut caught: Vec<String> = Vec::new();
        while let Ok(r) = rx.try_recv() {
            caught.push(r.name);
        }
        caught.sort();
        caught.dedup();
        assert_eq!(caught, want, "every tenant resynced after the busy spell");
        let _ = stop.send(true);
        let _ = task.await;
    }
}
