//! What the Tenant controller keeps of each Tenant between reconciles: its watch cache record.
//!
//! The controller's reflector holds one record per tenant for the operator's life, so it is
//! kept small (issue #11, part 7; a whole [`Tenant`] was ~2.9 KiB of heap per tenant,
//! heaptrack at 1,000 tenants):
//! - `metadata` as the watch gave it (without managedFields or kubectl's copy,
//!   [`crate::types::trim_for_cache`]);
//! - of the spec only the links the fan-out and the Channel status follow ([`TenantLinks`]).
//!   The reconcile takes the whole spec from the replica's tree, whose copy it has already
//!   checked has the same `generation` ([`super::tenants`]): the same generation is the same
//!   spec (the API server bumps `generation` on every spec change of a custom resource);
//! - `status` as its JSON text, one allocation instead of a few dozen small ones, parsed back
//!   when a reconcile needs it ([`CachedTenant::with_spec`]).

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::runtime::watcher;
use serde::Deserialize;

use crate::types::{Tenant, TenantLinks, TenantSpec, TenantStatus};

/// A Tenant as the controller's watch cache keeps it (module docs). Decoded as a whole
/// [`Tenant`] first, so exactly the objects the tree accepts are cached.
#[derive(Clone, Debug, Deserialize)]
#[serde(from = "Tenant")]
pub struct CachedTenant {
    pub metadata: ObjectMeta,
    parent: Option<String>,
    limit_profile: Option<String>,
    channels: Box<[String]>,
    /// `status` serialised as JSON (None: no status yet).
    status: Option<Box<str>>,
}

impl From<Tenant> for CachedTenant {
    fn from(t: Tenant) -> Self {
        let status = t
            .status
            .as_ref()
            .and_then(|s| match serde_json::to_string(s) {
                Ok(json) => Some(json.into_boxed_str()),
                Err(e) => {
                    // Cannot happen for a type of plain strings, numbers and maps; without the
                    // status the next reconcile writes it afresh.
                    tracing::error!(tenant = t.name(), error = %e, "tenant status not cached");
                    None
                }
            });
        CachedTenant {
            parent: t.spec.parent,
            limit_profile: t.spec.limit_profile,
            channels: t.spec.channels.into_boxed_slice(),
            status,
            metadata: t.metadata,
        }
    }
}

impl CachedTenant {
    /// The whole Tenant again: this record's metadata and status with `spec` (the tree's copy
    /// of the same generation). A status that does not parse back (never seen: it is this
    /// type's own serialisation) is left out and logged, so the reconcile writes it afresh.
    pub fn with_spec(&self, spec: TenantSpec) -> Tenant {
        let status = self.status.as_deref().and_then(|json| {
            serde_json::from_str::<TenantStatus>(json)
                .inspect_err(|e| {
                    tracing::error!(tenant = TenantLinks::name(self), error = %e, "cached tenant status unreadable");
                })
                .ok()
        });
        Tenant {
            metadata: self.metadata.clone(),
            spec,
            status,
        }
    }

    /// A watch event of Tenants as one of cached records.
    pub fn event(ev: watcher::Event<Tenant>) -> watcher::Event<CachedTenant> {
        use watcher::Event as E;
        match ev {
            E::Apply(t) => E::Apply(t.into()),
            E::InitApply(t) => E::InitApply(t.into()),
            E::Delete(t) => E::Delete(t.into()),
            E::Init => E::Init,
            E::InitDone => E::InitDone,
        }
    }
}

impl TenantLinks for CachedTenant {
    fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or_default()
    }
    fn parent(&self) -> Option<&str> {
        self.parent.as_deref()
    }
    fn limit_profile(&self) -> Option<&str> {
        self.limit_profile.as_deref()
    }
    fn channels(&self) -> &[String] {
        &self.channels
    }
    fn deleting(&self) -> bool {
        self.metadata.deletion_timestamp.is_some()
    }
}

/// The Tenant kind's API coordinates: a record is listed and watched as a Tenant.
impl Resource for CachedTenant {
    type DynamicType = ();
    type Scope = <Tenant as Resource>::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        Tenant::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        Tenant::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        Tenant::version(dt)
    }
    fn api_version(dt: &()) -> Cow<'_, str> {
        Tenant::api_version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        Tenant::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Phase, UsageCounts};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    fn full_tenant() -> Tenant {
        let mut t: Tenant = serde_json::from_value(serde_json::json!({
            "apiVersion": "silo.dev/v1alpha1",
            "kind": "Tenant",
            "metadata": {"name": "north", "generation": 3, "resourceVersion": "77",
                         "uid": "u-1", "finalizers": ["silo.dev/cleanup"],
                         "labels": {"team": "x"}},
            "spec": {"parent": "acme", "limitProfile": "dealer", "channels": ["gps", "can"],
                     "displayName": "North", "isolation": "Siloed",
                     "admins": [{"kind": "User", "name": "ann"}],
                     "settings": {"retention": 30}},
        }))
        .unwrap();
        let time = Time(k8s_openapi::jiff::Timestamp::from_second(1_700_000_000).unwrap());
        t.status = Some(TenantStatus {
            phase: Some(Phase::Ready),
            depth: Some(2),
            path: vec!["acme".into(), "north".into()],
            namespace: Some("tenant-north".into()),
            observed_generation: Some(3),
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: "True".into(),
                reason: "Ready".into(),
                message: "all ready".into(),
                observed_generation: Some(3),
                last_transition_time: time,
            }],
            effective_limits: Some(crate::types::Limits {
                devices: Some(100),
                ..Default::default()
            }),
            usage: Some(crate::types::tenant::UsageStatus {
                own: UsageCounts {
                    devices: 4,
                    ..Default::default()
                },
                subtree: UsageCounts::default(),
            }),
            key: None,
            endpoints: None,
            secrets: [("database".to_string(), "silo-db".to_string())].into(),
        });
        t
    }

    #[test]
    fn a_record_keeps_the_links_and_gives_back_metadata_and_status_exactly() {
        let t = full_tenant();
        let cached = CachedTenant::from(t.clone());
        assert_eq!(TenantLinks::name(&cached), "north");
        assert_eq!(cached.parent(), Some("acme"));
        assert_eq!(cached.limit_profile(), Some("dealer"));
        assert_eq!(cached.channels(), ["gps".to_string(), "can".to_string()]);
        assert!(!cached.deleting());
        let back = cached.with_spec(t.spec.clone());
        assert_eq!(back.metadata, t.metadata);
        assert_eq!(back.spec, t.spec);
        assert_eq!(back.status, t.status, "the status round-trips exactly");
        let none = CachedTenant::from(Tenant::new("fresh", Default::default()));
        assert_eq!(none.with_spec(Default::default()).status, None);
    }

    #[test]
    fn a_record_decodes_as_a_tenant_does() {
        let ok: CachedTenant = serde_json::from_value(serde_json::json!({
            "apiVersion": "silo.dev/v1alpha1", "kind": "Tenant",
            "metadata": {"name": "a"}, "spec": {"channels": ["gps"]},
        }))
        .unwrap();
        assert_eq!(ok.channels(), ["gps".to_string()]);
        let bad = serde_json::from_value::<CachedTenant>(serde_json::json!({
            "apiVersion": "silo.dev/v1alpha1", "kind": "Tenant",
            "metadata": {"name": "a"}, "spec": {"channels": "gps"},
        }));
        assert!(bad.is_err(), "what the Tenant type refuses is refused");
    }

    #[test]
    fn events_carry_the_same_objects() {
        let ev = CachedTenant::event(watcher::Event::Apply(full_tenant()));
        match ev {
            watcher::Event::Apply(c) => assert_eq!(c.parent(), Some("acme")),
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            CachedTenant::event(watcher::Event::InitDone),
            watcher::Event::InitDone
        ));
    }
}
