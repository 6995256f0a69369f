//! The operator's own writes, so that their watch events do not trigger another reconcile.
//!
//! Every write the operator makes (an applied object, a created or patched Secret, a Tenant's
//! status or finalizers) comes back to it as a watch event carrying the resourceVersion the
//! write returned. Without this, each such echo would trigger the tenant again: a new
//! Siloed tenant's ~20 writes used to cost about two more reconciles that found nothing to do
//! (issue #11, part 6: "no write whose result the watch cache already shows").
//!
//! [`Echoes::writing`] marks a write as in flight before its request is sent;
//! [`Echoes::wrote`] notes the resourceVersion it returned; [`Echoes::is_echo`] is asked once
//! per watch event of that object and forgets the note either way, so at most one note per
//! object lives between a write and its event. The watch event often arrives before the
//! write's own response has been handled (the API server sends both at once; on a busy
//! machine either task may run first), so an event for an object with a write in flight waits
//! for that write's result — at most [`IN_FLIGHT_WAIT`] — before it is judged. An event with
//! any other resourceVersion (someone else changed the object after the operator did, or
//! deleted it) is not an echo and triggers the tenant as before.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tokio::sync::Notify;

/// The kind under which the Tenant's own writes (status, finalizers) are noted.
pub const TENANT_KIND: &str = "Tenant";

/// How long a watch event waits for the result of the operator's write in flight on the
/// same object (a request's round trip; past it the event is passed on, as if no write were
/// known).
pub const IN_FLIGHT_WAIT: Duration = Duration::from_secs(2);

/// An object's identity: kind (as the API server spells it), namespace, name.
type Key = (&'static str, Option<Box<str>>, Box<str>);

/// What is known of the operator's latest write of one object.
#[derive(Debug)]
enum Note {
    /// Sent, no answer yet.
    InFlight,
    /// Answered with this resourceVersion.
    Wrote(Box<str>),
}

/// The operator's latest writes whose watch events have not come yet.
#[derive(Debug, Default)]
pub struct Echoes {
    written: Mutex<HashMap<Key, Note>>,
    /// Wakes the events waiting for a write in flight.
    settled: Notify,
}

fn key(kind: &'static str, meta: &ObjectMeta) -> Option<Key> {
    Some((
        kind,
        meta.namespace.as_deref().map(Box::from),
        meta.name.as_deref()?.into(),
    ))
}

/// A write in flight ([`Echoes::writing`]); dropped without [`Echoes::wrote`] (the request
/// failed or was abandoned), it takes its mark away.
#[must_use]
pub struct InFlight {
    echoes: Arc<Echoes>,
    key: Key,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut w) = self.echoes.written.lock()
            && matches!(w.get(&self.key), Some(Note::InFlight))
        {
            w.remove(&self.key);
        }
        self.echoes.settled.notify_waiters();
    }
}

impl Echoes {
    /// Marks a write of object `kind` `namespace`/`name` as in flight, until the returned
    /// guard is dropped or [`Echoes::wrote`] notes its result.
    pub fn writing(
        self: &Arc<Self>,
        kind: &'static str,
        namespace: Option<&str>,
        name: &str,
    ) -> InFlight {
        let key: Key = (kind, namespace.map(Box::from), name.into());
        if let Ok(mut w) = self.written.lock() {
            w.insert(key.clone(), Note::InFlight);
        }
        InFlight {
            echoes: self.clone(),
            key,
        }
    }

    /// Notes that a write of the operator left the object `meta` describes (of `kind`) at
    /// `meta.resource_version` (the metadata the write returned).
    pub fn wrote(&self, kind: &'static str, meta: &ObjectMeta) {
        let (Some(k), Some(rv)) = (key(kind, meta), meta.resource_version.as_deref()) else {
            return;
        };
        if let Ok(mut w) = self.written.lock() {
            w.insert(k, Note::Wrote(rv.into()));
        }
        self.settled.notify_waiters();
    }

    /// Whether a watch event showing the object at `meta` is the echo of the operator's own
    /// latest write of it (same resourceVersion). With that write still in flight, waits for
    /// its result (at most [`IN_FLIGHT_WAIT`]). The note is forgotten either way.
    pub async fn is_echo(&self, kind: &'static str, meta: &ObjectMeta) -> bool {
        let Some(k) = key(kind, meta) else {
            return false;
        };
        let deadline = tokio::time::Instant::now() + IN_FLIGHT_WAIT;
        loop {
            // Registered before the check, so a result noted in between is not missed.
            let settled = self.settled.notified();
            {
                let Ok(mut w) = self.written.lock() else {
                    return false;
                };
                match w.get(&k) {
                    None => return false,
                    Some(Note::Wrote(_)) => {
                        let rv = match w.remove(&k) {
                            Some(Note::Wrote(rv)) => rv,
                            _ => return false,
                        };
                        return meta.resource_version.as_deref() == Some(&*rv);
                    }
                    Some(Note::InFlight) => {}
                }
            }
            if tokio::time::timeout_at(deadline, settled).await.is_err() {
                return false;
            }
        }
    }

    /// Notes not yet matched by an event.
    #[cfg(test)]
    fn pending(&self) -> usize {
        self.written.lock().map_or(0, |w| w.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(ns: Option<&str>, name: &str, rv: &str) -> ObjectMeta {
        ObjectMeta {
            namespace: ns.map(str::to_string),
            name: Some(name.to_string()),
            resource_version: Some(rv.to_string()),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn the_event_of_the_operators_own_write_is_an_echo_once() {
        let e = Echoes::default();
        e.wrote("ConfigMap", &meta(Some("tenant-a"), "silo-settings", "41"));
        assert!(
            e.is_echo("ConfigMap", &meta(Some("tenant-a"), "silo-settings", "41"))
                .await
        );
        // Forgotten: the same version seen again (a relist) triggers as before.
        assert!(
            !e.is_echo("ConfigMap", &meta(Some("tenant-a"), "silo-settings", "41"))
                .await
        );
        assert_eq!(e.pending(), 0);
    }

    #[tokio::test]
    async fn a_change_by_someone_else_after_the_write_is_not_an_echo() {
        let e = Echoes::default();
        e.wrote("Tenant", &meta(None, "acme", "7"));
        // Another writer's version arrives first: it triggers, and the note is gone.
        assert!(!e.is_echo("Tenant", &meta(None, "acme", "9")).await);
        assert_eq!(e.pending(), 0);
    }

    #[tokio::test]
    async fn kind_namespace_and_name_all_tell_objects_apart() {
        let e = Echoes::default();
        e.wrote("Role", &meta(Some("tenant-a"), "silo-admin", "5"));
        assert!(
            !e.is_echo("RoleBinding", &meta(Some("tenant-a"), "silo-admin", "5"))
                .await
        );
        assert!(
            !e.is_echo("Role", &meta(Some("tenant-b"), "silo-admin", "5"))
                .await
        );
        assert!(
            !e.is_echo("Role", &meta(Some("tenant-a"), "silo-viewer", "5"))
                .await
        );
        assert!(
            e.is_echo("Role", &meta(Some("tenant-a"), "silo-admin", "5"))
                .await
        );
    }

    #[tokio::test]
    async fn a_write_without_a_version_or_name_notes_nothing() {
        let e = Echoes::default();
        e.wrote("Tenant", &ObjectMeta::default());
        let mut m = meta(None, "acme", "1");
        m.resource_version = None;
        e.wrote("Tenant", &m);
        assert_eq!(e.pending(), 0);
        assert!(!e.is_echo("Tenant", &ObjectMeta::default()).await);
    }

    #[tokio::test]
    async fn an_event_that_overtakes_the_writes_answer_waits_for_it() {
        let e = Arc::new(Echoes::default());
        let writing = e.writing("Namespace", None, "tenant-a");
        let waiter = {
            let e = e.clone();
            tokio::spawn(async move { e.is_echo("Namespace", &meta(None, "tenant-a", "12")).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "judged before the write's answer");
        e.wrote("Namespace", &meta(None, "tenant-a", "12"));
        drop(writing);
        assert!(waiter.await.unwrap(), "its own write's event");
        assert_eq!(e.pending(), 0);
    }

    #[tokio::test]
    async fn a_failed_write_releases_the_waiting_event() {
        let e = Arc::new(Echoes::default());
        let writing = e.writing("Role", Some("tenant-a"), "silo-admin");
        let waiter = {
            let e = e.clone();
            tokio::spawn(async move {
                e.is_echo("Role", &meta(Some("tenant-a"), "silo-admin", "3"))
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(writing);
        assert!(
            !waiter.await.unwrap(),
            "no write landed: someone else's change"
        );
        assert_eq!(e.pending(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_that_never_answers_holds_an_event_at_most_the_wait() {
        let e = Arc::new(Echoes::default());
        let _writing = e.writing("Role", Some("tenant-a"), "silo-admin");
        let started = tokio::time::Instant::now();
        assert!(
            !e.is_echo("Role", &meta(Some("tenant-a"), "silo-admin", "3"))
                .await
        );
        assert_eq!(started.elapsed(), IN_FLIGHT_WAIT);
    }
}
