//! Workload readiness the operator has read, kept for as long as the watch shows the workload
//! unchanged, so a reconcile that finds nothing new — the periodic resync of a Ready tenant,
//! a trigger by another of its objects — reads no StatefulSet or Deployment from the API
//! server (issue #11, part 6: "no read whose result the watch cache already shows").
//!
//! The owned kinds are watched metadata-only, so the watch does not carry `status`; but every
//! change of a workload, its status included, gives it a new resourceVersion that the watch
//! reports. A reading (replicas desired and ready, from a GET at resourceVersion R) is used
//! only while the latest version reported — by the watch or by the operator's own write — is
//! R, and any report of another version drops it. The watch and the writes report
//! concurrently, so a late watch event can report an older version after a write reported a
//! newer one; as the reading was dropped by the newer report, the older one finds nothing to
//! revive and the next reconcile reads again. resourceVersions are compared for equality only,
//! as the Kubernetes API conventions require ("clients must not assume resource versions are
//! numeric or collatable"); they are kept as numbers (etcd's), and a version that is not one is
//! never cached.

use std::collections::HashMap;
use std::sync::Arc;

use super::{OwnedKind, Readiness};

/// A workload: its kind (StatefulSet or Deployment), namespace and name (shared copies).
pub(super) type WorkloadKey = (OwnedKind, Arc<str>, Arc<str>);

/// Readings of every StatefulSet and Deployment the operator owns (two per Siloed tenant).
#[derive(Debug, Default)]
pub(super) struct Readings {
    by_workload: HashMap<WorkloadKey, Reading>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Reading {
    /// The version the watch or a write reported last (None: unknown or not a number).
    watched: Option<u64>,
    /// The last GET's answer and the version it was read at.
    read: Option<(u64, Readiness)>,
}

impl Readings {
    /// Whether the readiness of `kind` is cached at all (StatefulSets and Deployments).
    pub fn holds(kind: OwnedKind) -> bool {
        matches!(kind, OwnedKind::StatefulSet | OwnedKind::Deployment)
    }

    /// The watch (or the operator's write) reported `workload` at `version`: a reading taken
    /// at another version is dropped (one taken ahead of the watch at this very version stays).
    pub fn watched(&mut self, workload: WorkloadKey, version: Option<u64>) {
        let entry = self.by_workload.entry(workload).or_default();
        entry.watched = version;
        if entry.read.map(|(at, _)| at) != version {
            entry.read = None;
        }
    }

    /// The workload is gone.
    pub fn removed(&mut self, workload: &WorkloadKey) {
        self.by_workload.remove(workload);
    }

    /// The watch of `kind` starts over (re-list): everything known of that kind is forgotten;
    /// the re-list reports every workload again.
    pub fn forget_kind(&mut self, kind: OwnedKind) {
        self.by_workload.retain(|(k, _, _), _| *k != kind);
        self.by_workload.shrink_to_fit();
    }

    /// A GET answered `readiness` for `workload` at `version`. Kept only for a workload the
    /// watch (or a write) has reported and not removed since, so nothing outlives its object.
    pub fn read(&mut self, workload: &WorkloadKey, version: Option<u64>, readiness: Readiness) {
        if let Some(entry) = self.by_workload.get_mut(workload) {
            entry.read = version.map(|v| (v, readiness));
        }
    }

    /// The cached readiness of `workload`: Some only while the version last read is the one
    /// the watch reported last.
    pub fn current(&self, workload: &WorkloadKey) -> Option<Readiness> {
        let r = self.by_workload.get(workload)?;
        match (r.watched, r.read) {
            (Some(w), Some((at, readiness))) if w == at => Some(readiness),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> WorkloadKey {
        (OwnedKind::StatefulSet, "tenant-a".into(), name.into())
    }

    const READY: Readiness = Readiness {
        desired: 1,
        ready: 1,
    };

    #[test]
    fn a_reading_holds_while_the_watch_shows_the_version_it_was_read_at() {
        let mut r = Readings::default();
        assert_eq!(r.current(&key("db")), None, "never read");
        r.read(&key("db"), Some(7), READY);
        assert_eq!(r.current(&key("db")), None, "never watched: not kept");
        r.watched(key("db"), Some(5));
        r.read(&key("db"), Some(7), READY);
        assert_eq!(r.current(&key("db")), None, "the watch has not shown 7 yet");
        r.watched(key("db"), Some(7));
        assert_eq!(r.current(&key("db")), Some(READY));
        // The stand-in kubelet (or anyone) changed it: a new version, read again.
        r.watched(key("db"), Some(9));
        assert_eq!(r.current(&key("db")), None);
        assert_eq!(r.current(&key("other")), None);
    }

    #[test]
    fn a_reading_older_than_the_watch_is_never_used() {
        let mut r = Readings::default();
        r.watched(key("db"), Some(9));
        // The GET was answered before the change the watch already showed.
        r.read(&key("db"), Some(7), READY);
        assert_eq!(r.current(&key("db")), None);
    }

    /// A GET ran ahead of the watch (read at 9, watched 8); the next reconcile's apply
    /// reported 10; then the watch's late event for 9 arrived. The reading at 9 must not come
    /// back: the object is at 10.
    #[test]
    fn a_late_event_does_not_revive_a_reading_a_newer_write_dropped() {
        let mut r = Readings::default();
        r.watched(key("db"), Some(8));
        r.read(&key("db"), Some(9), READY);
        r.watched(key("db"), Some(10));
        r.watched(key("db"), Some(9));
        assert_eq!(r.current(&key("db")), None);
        // The watch catching up with a GET that ran ahead keeps the reading.
        r.read(&key("db"), Some(11), READY);
        r.watched(key("db"), Some(11));
        assert_eq!(r.current(&key("db")), Some(READY));
    }

    #[test]
    fn versions_that_are_not_numbers_are_never_cached() {
        let mut r = Readings::default();
        r.watched(key("db"), None);
        r.read(&key("db"), None, READY);
        assert_eq!(r.current(&key("db")), None);
    }

    #[test]
    fn removal_and_a_re_list_forget_readings() {
        let mut r = Readings::default();
        r.watched(key("db"), Some(7));
        r.read(&key("db"), Some(7), READY);
        r.removed(&key("db"));
        assert_eq!(r.current(&key("db")), None, "deleted");
        r.watched(key("db"), Some(8));
        r.read(&key("db"), Some(8), READY);
        let broker = (
            OwnedKind::Deployment,
            Arc::from("tenant-a"),
            Arc::from("mq"),
        );
        r.watched(broker.clone(), Some(3));
        r.read(&broker, Some(3), READY);
        r.forget_kind(OwnedKind::StatefulSet);
        assert_eq!(r.current(&key("db")), None, "its watch starts over");
        assert_eq!(
            r.current(&broker),
            Some(READY),
            "another kind's watch did not"
        );
    }
}
