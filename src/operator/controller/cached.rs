//! What the Tenant controller keeps of each Tenant between reconciles: its watch cache record.
//!
//! The controller's reflector holds one record per tenant for the operator's life, so it is
//! kept small (issue #11, part 7; a whole [`Tenant`] was ~2.9 KiB of heap per tenant,
//! heaptrack at 1,000 tenants):
//! - `metadata` as the watch gave it (without managedFields or kubectl's copy,
//!   [`crate::types::trim_for_cache`]);
//! - of the spec only the links the fan-out and the Channel status follow ([`TenantLinks`]).
//!   The reconcile takes the whole spec from the replica's tree, whose copy it has already
//!   checked is the same object (uid) at the same `generation` ([`super::tenants`]): the
//!   same generation is the same spec (the API server bumps `generation` on every spec
//!   change of a custom resource);
//! - `status` as its JSON text compressed (LZ4 against [`STATUS_DICTIONARY`], the words most
//!   statuses share): one allocation of a few hundred bytes instead of a few dozen small ones
//!   (~2 KB as JSON), decompressed and parsed when a reconcile needs it
//!   ([`CachedTenant::with_spec`]).

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
    /// `status` as JSON, LZ4-compressed against [`STATUS_DICTIONARY`] with its length first
    /// (None: no status yet).
    status: Option<Box<[u8]>>,
}

/// What most tenants' statuses say, word for word (a Ready Siloed tenant; the Shared and
/// waiting variants of the conditions): the LZ4 dictionary their JSON is compressed against.
/// Only the size of the cache depends on it: any status compresses and comes back exactly.
pub const STATUS_DICTIONARY: &str = concat!(
    r#"{"phase":"Provisioning","message":"StatefulSet tenant-example/silo-postgres does not exist yet","reason":"Missing","status":"False","type":"DatabaseReady"},"#,
    r#"{"message":"StatefulSet tenant-example/silo-postgres has 0/1 ready replicas","reason":"NotReady","status":"False","type":"DatabaseReady"},"#,
    r#"{"message":"Deployment tenant-example/silo-mosquitto has 0/1 ready replicas","reason":"NotReady","status":"Unknown","type":"BrokerReady"},"#,
    r#"{"message":"dedicated database with its own credentials at ","reason":"Provisioned","type":"DatabaseReady"},"#,
    r#"{"message":"dedicated broker client with its own credentials at ","reason":"Provisioned","type":"BrokerReady"},"#,
    r#"{"message":"suspended by ","reason":"Suspended","status":"False","type":"Ready"},"#,
    r#"{"phase":"Ready","depth":2,"path":["example","tenant"],"namespace":"tenant-example","observedGeneration":1,"conditions":["#,
    r#"{"lastTransitionTime":"2026-01-01T00:00:00Z","message":"namespace tenant-example with quota, limit range and network policy applied","observedGeneration":1,"reason":"Applied","status":"True","type":"NamespaceReady"},"#,
    r#"{"lastTransitionTime":"2026-01-01T00:00:00Z","message":"roles and bindings for 0 admin(s) and 0 member(s) applied","observedGeneration":1,"reason":"Applied","status":"True","type":"AccessReady"},"#,
    r#"{"lastTransitionTime":"2026-01-01T00:00:00Z","message":"StatefulSet tenant-example/silo-postgres has 1/1 ready replicas","observedGeneration":1,"reason":"Ready","status":"True","type":"DatabaseReady"},"#,
    r#"{"lastTransitionTime":"2026-01-01T00:00:00Z","message":"Deployment tenant-example/silo-mosquitto has 1/1 ready replicas","observedGeneration":1,"reason":"Ready","status":"True","type":"BrokerReady"},"#,
    r#"{"lastTransitionTime":"2026-01-01T00:00:00Z","message":"key 0123456789abcdef version 1; data key in Secret silo-data-key","observedGeneration":1,"reason":"KeyReady","status":"True","type":"KeyReady"},"#,
    r#"{"lastTransitionTime":"2026-01-01T00:00:00Z","message":"0 channel(s) in use, each visible to the tenant","observedGeneration":1,"reason":"Visible","status":"True","type":"ChannelsReady"},"#,
    r#"{"lastTransitionTime":"2026-01-01T00:00:00Z","message":"every part of the silo is ready","observedGeneration":1,"reason":"SiloReady","status":"True","type":"Ready"}],"#,
    r#""effectiveLimits":{},"usage":{"own":{"subtenants":0,"devices":0,"channels":0,"mqttConnections":0},"subtree":{"subtenants":0,"devices":0,"channels":0,"mqttConnections":0}},"#,
    r#""key":{"id":"0123456789abcdef","version":1,"rotatedAt":"2026-01-01T00:00:00Z"},"#,
    r#""endpoints":{"database":"silo-postgres.tenant-example.svc:5432","mqtt":"silo-mosquitto.tenant-example.svc:8883"},"#,
    r#""secrets":{"database":"silo-postgres-credentials","mqtt":"silo-mosquitto-credentials","mqttTls":"silo-mosquitto-tls"}}"#,
);

/// `status` as kept in a record.
fn compress(status: &TenantStatus) -> Result<Box<[u8]>, serde_json::Error> {
    let json = serde_json::to_vec(status)?;
    let packed =
        lz4_flex::block::compress_prepend_size_with_dict(&json, STATUS_DICTIONARY.as_bytes());
    Ok(packed.into_boxed_slice())
}

/// A status as [`compress`] kept it.
fn decompress(packed: &[u8]) -> Result<TenantStatus, String> {
    let json =
        lz4_flex::block::decompress_size_prepended_with_dict(packed, STATUS_DICTIONARY.as_bytes())
            .map_err(|e| e.to_string())?;
    serde_json::from_slice(&json).map_err(|e| e.to_string())
}

impl From<Tenant> for CachedTenant {
    fn from(t: Tenant) -> Self {
        let status = t.status.as_ref().and_then(|s| match compress(s) {
            Ok(packed) => Some(packed),
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
        let status = self.status.as_deref().and_then(|packed| {
            decompress(packed)
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

    /// A Ready Siloed tenant's status as the operator wrote it on envtest: ~2 KB of JSON kept
    /// in a few hundred bytes, and given back exactly.
    #[test]
    fn a_typical_status_is_kept_in_a_fraction_of_its_json() {
        let json = r#"{"phase":"Ready","depth":1,"path":["smoke"],"namespace":"tenant-smoke","observedGeneration":1,"conditions":[{"lastTransitionTime":"2026-11-30T12:59:12Z","message":"namespace tenant-smoke with quota, limit range and network policy applied","observedGeneration":1,"reason":"Applied","status":"True","type":"NamespaceReady"},{"lastTransitionTime":"2026-11-30T12:59:12Z","message":"roles and bindings for 0 admin(s) and 0 member(s) applied","observedGeneration":1,"reason":"Applied","status":"True","type":"AccessReady"},{"lastTransitionTime":"2026-11-30T12:59:12Z","message":"StatefulSet tenant-smoke/silo-postgres has 1/1 ready replicas","observedGeneration":1,"reason":"Ready","status":"True","type":"DatabaseReady"},{"lastTransitionTime":"2026-11-30T12:59:12Z","message":"Deployment tenant-smoke/silo-mosquitto has 1/1 ready replicas","observedGeneration":1,"reason":"Ready","status":"True","type":"BrokerReady"},{"lastTransitionTime":"2026-11-30T12:59:12Z","message":"key dd0f112769e2e43b version 1; data key in Secret silo-data-key","observedGeneration":1,"reason":"KeyReady","status":"True","type":"KeyReady"},{"lastTransitionTime":"2026-11-30T12:59:12Z","message":"0 channel(s) in use, each visible to the tenant","observedGeneration":1,"reason":"Visible","status":"True","type":"ChannelsReady"},{"lastTransitionTime":"2026-11-30T12:59:12Z","message":"every part of the silo is ready","observedGeneration":1,"reason":"SiloReady","status":"True","type":"Ready"}],"effectiveLimits":{},"usage":{"own":{"subtenants":0,"devices":0,"channels":0,"mqttConnections":0},"subtree":{"subtenants":0,"devices":0,"channels":0,"mqttConnections":0}},"key":{"id":"dd0f112769e2e43b","version":1,"rotatedAt":"2026-11-30T12:59:12Z"},"endpoints":{"database":"silo-postgres.tenant-smoke.svc:5432","mqtt":"silo-mosquitto.tenant-smoke.svc:8883"},"secrets":{"database":"silo-postgres-credentials","mqtt":"silo-mosquitto-credentials","mqttTls":"silo-mosquitto-tls"}}"#;
        let status: TenantStatus = serde_json::from_str(json).unwrap();
        let packed = compress(&status).unwrap();
        assert_eq!(decompress(&packed).unwrap(), status);
        eprintln!("{} bytes of JSON kept in {}", json.len(), packed.len());
        assert!(
            packed.len() * 5 < json.len(),
            "{} bytes of JSON kept in {}",
            json.len(),
            packed.len()
        );
        // Anything else comes back exactly too, only less compactly.
        let odd = TenantStatus {
            namespace: Some("ünïcode-ß".repeat(40)),
            ..status
        };
        assert_eq!(decompress(&compress(&odd).unwrap()).unwrap(), odd);
        assert!(
            decompress(b"\x05\x00\x00\x00xx").is_err(),
            "garbage is refused"
        );
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
