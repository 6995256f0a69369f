//! The operator's own writes, so that their watch events do not trigger another reconcile.
//!
//! Every write the operator makes (an applied object, a created or patched Secret, a Tenant's
//! status or finalizers) comes back to it as a watch event carrying the resourceVersion the
//! write returned. Without this, each such echo would trigger the tenant again: a new
//! Siloed tenant's ~20 writes used to cost about two more reconciles that found nothing to do
//! (issue #11, part 6: "no write whose result the watch cache already shows").
//!
//! [`Echoes::wrote`] notes the resourceVersion a write returned; [`Echoes::is_echo`] is asked
//! once per watch event of that object and forgets the note either way, so at most one note
//! per object lives between a write and its event. An event with any other resourceVersion
//! (someone else changed the object after the operator did, or deleted it) is not an echo
//! and triggers the tenant as before.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// The kind under which the Tenant's own writes (status, finalizers) are noted.
pub const TENANT_KIND: &str = "Tenant";

/// An object's identity: kind (as the API server spells it), namespace, name.
type Key = (&'static str, Option<Box<str>>, Box<str>);

/// resourceVersions of the operator's latest writes whose watch events have not come yet.
#[derive(Debug, Default)]
pub struct Echoes {
    written: Mutex<HashMap<Key, Box<str>>>,
}

fn key(kind: &'static str, meta: &ObjectMeta) -> Option<Key> {
    Some((
        kind,
        meta.namespace.as_deref().map(Box::from),
        meta.name.as_deref()?.into(),
    ))
}

impl Echoes {
    /// Notes that a write of the operator left the object `meta` describes (of `kind`) at
    /// `meta.resource_version` (the metadata the write returned).
    pub fn wrote(&self, kind: &'static str, meta: &ObjectMeta) {
        let (Some(k), Some(rv)) = (key(kind, meta), meta.resource_version.as_deref()) else {
            return;
        };
        if let Ok(mut w) = self.written.lock() {
            w.insert(k, rv.into());
        }
    }

    /// Whether a watch event showing the object at `meta` is the echo of the operator's own
    /// latest write of it (same resourceVersion). The note is forgotten either way.
    pub fn is_echo(&self, kind: &'static str, meta: &ObjectMeta) -> bool {
        let Some(k) = key(kind, meta) else {
            return false;
        };
        let noted = self.written.lock().ok().and_then(|mut w| w.remove(&k));
        noted.is_some_and(|rv| meta.resource_version.as_deref() == Some(&*rv))
    }

    /// Notes not yet matched by an event (for tests and diagnostics).
    pub fn pending(&self) -> usize {
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

    #[test]
    fn the_event_of_the_operators_own_write_is_an_echo_once() {
        let e = Echoes::default();
        e.wrote("ConfigMap", &meta(Some("tenant-a"), "silo-settings", "41"));
        assert!(e.is_echo("ConfigMap", &meta(Some("tenant-a"), "silo-settings", "41")));
        // Forgotten: the same version seen again (a relist) triggers as before.
        assert!(!e.is_echo("ConfigMap", &meta(Some("tenant-a"), "silo-settings", "41")));
        assert_eq!(e.pending(), 0);
    }

    #[test]
    fn a_change_by_someone_else_after_the_write_is_not_an_echo() {
        let e = Echoes::default();
        e.wrote("Tenant", &meta(None, "acme", "7"));
        // Another writer's version arrives first: it triggers, and the note is gone.
        assert!(!e.is_echo("Tenant", &meta(None, "acme", "9")));
        assert_eq!(e.pending(), 0);
    }

    #[test]
    fn kind_namespace_and_name_all_tell_objects_apart() {
        let e = Echoes::default();
        e.wrote("Role", &meta(Some("tenant-a"), "silo-admin", "5"));
        assert!(!e.is_echo("RoleBinding", &meta(Some("tenant-a"), "silo-admin", "5")));
        assert!(!e.is_echo("Role", &meta(Some("tenant-b"), "silo-admin", "5")));
        assert!(!e.is_echo("Role", &meta(Some("tenant-a"), "silo-viewer", "5")));
        assert!(e.is_echo("Role", &meta(Some("tenant-a"), "silo-admin", "5")));
    }

    #[test]
    fn a_write_without_a_version_or_name_notes_nothing() {
        let e = Echoes::default();
        e.wrote("Tenant", &ObjectMeta::default());
        let mut m = meta(None, "acme", "1");
        m.resource_version = None;
        e.wrote("Tenant", &m);
        assert_eq!(e.pending(), 0);
        assert!(!e.is_echo("Tenant", &ObjectMeta::default()));
    }
}
