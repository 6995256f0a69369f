//! Watches of Tenants, LimitProfiles and Channels that one undecodable object cannot stall.
//!
//! A plain `watcher` over `Api<Tenant>` fails its whole list when one object does not decode
//! (a field of a type the Rust struct does not accept, an object written under an older or
//! looser schema): the watch then retries with backoff forever and nothing else is seen. Here
//! the API is read as [`DeserializeGuard`]`<K>` (kube-rs): every object decodes at least to its
//! metadata, and [`decoded`] lets the valid ones through and reports each invalid one — a
//! warning naming kind, object and error, and `silo_undecodable_objects_total{kind}` — instead.
//!
//! What an invalid object does to the caches: an object that was valid and became invalid
//! keeps its last valid version (it is not treated as deleted, which would detach a whole
//! subtree); a deleted invalid object is removed ([`Watched::placeholder`] carries its
//! metadata to the store); one that never decoded is never seen.

use std::fmt::Debug;
use std::sync::Arc;

use futures::{Stream, TryStreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::DeserializeGuard;
use kube::core::error_boundary::InvalidObject;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;

use crate::operator::metrics::Metrics;
use crate::types::{Channel, LimitProfile, Tenant};

/// A kind watched through [`watch`].
pub trait Watched:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
    /// The kind's name in logs and the metric's `kind` label.
    const KIND: &'static str;

    /// An object of this kind that carries only `metadata` (default spec): what a Delete of
    /// an undecodable object is passed on as, so caches drop it by name.
    fn placeholder(metadata: ObjectMeta) -> Self;
}

macro_rules! watched {
    ($($kind:ident),*) => {$(
        impl Watched for $kind {
            const KIND: &'static str = stringify!($kind);

            fn placeholder(metadata: ObjectMeta) -> Self {
                let mut o = $kind::new("", Default::default());
                o.metadata = metadata;
                o
            }
        }
    )*};
}
watched!(Tenant, LimitProfile, Channel);

/// One event of a guarded watch as an event of `K`: a decoded object passes; an undecodable
/// one goes to `report` and is left out (a Delete passes as [`Watched::placeholder`]).
pub fn decoded<K: Watched>(
    event: watcher::Event<DeserializeGuard<K>>,
    report: impl Fn(&'static str, &InvalidObject),
) -> Option<watcher::Event<K>> {
    use watcher::Event as E;
    let valid = |g: DeserializeGuard<K>| match g.0 {
        Ok(k) => Some(k),
        Err(e) => {
            report(K::KIND, &e);
            None
        }
    };
    match event {
        E::Apply(g) => valid(g).map(E::Apply),
        E::InitApply(g) => valid(g).map(E::InitApply),
        E::Delete(g) => Some(E::Delete(match g.0 {
            Ok(k) => k,
            Err(e) => {
                report(K::KIND, &e);
                K::placeholder(e.metadata)
            }
        })),
        E::Init => Some(E::Init),
        E::InitDone => Some(E::InitDone),
    }
}

/// Logs an undecodable object and counts it (when `metrics` are given).
pub fn report(metrics: Option<&Metrics>, kind: &'static str, e: &InvalidObject) {
    tracing::warn!(
        kind,
        name = e.metadata.name.as_deref().unwrap_or_default(),
        error = %e.error,
        "object cannot be decoded: skipped, the watch goes on"
    );
    if let Some(m) = metrics {
        m.undecodable(kind);
    }
}

/// Watch every object of kind `K` (with the default backoff; listing through the process's
/// [`list_gate`](super::list_gate)), undecodable objects reported and left out as [`decoded`]
/// says.
pub fn watch<K: Watched>(
    client: &Client,
    metrics: Option<Arc<Metrics>>,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static {
    super::list_gate::gated(watcher(
        Api::<DeserializeGuard<K>>::all(client.clone()),
        super::watch_config(),
    ))
    .default_backoff()
    .try_filter_map(move |ev| {
        let out = decoded(ev, |kind, e| report(metrics.as_deref(), kind, e));
        std::future::ready(Ok(out))
    })
    // Cached copies carry no managedFields or kubectl's last-applied copy.
    .modify(crate::types::trim_for_cache::<K>)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::hierarchy::{EngineSettings, Inventory, TenantTree};

    fn guard<K: Watched>(v: serde_json::Value) -> DeserializeGuard<K> {
        serde_json::from_value(v).unwrap()
    }

    fn tenant(name: &str, parent: Option<&str>) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "silo.dev/v1alpha1",
            "kind": "Tenant",
            "metadata": {"name": name, "uid": format!("uid-{name}")},
            "spec": {"displayName": name, "parent": parent},
        })
    }

    /// One Tenant whose spec does not decode (`suspended` is not a boolean) among valid ones:
    /// it is reported with its name and the decode error, the others pass in order, and the
    /// tree built from what passed holds exactly the valid tenants.
    #[test]
    fn an_undecodable_tenant_is_reported_and_the_others_pass() {
        let mut bad = tenant("broken", Some("acme"));
        bad["spec"]["suspended"] = serde_json::json!("yes please");
        let reported = Mutex::new(Vec::new());
        let report = |kind: &'static str, e: &InvalidObject| {
            reported.lock().unwrap().push((
                kind,
                e.metadata.name.clone().unwrap_or_default(),
                e.error.clone(),
            ))
        };
        let events = [
            watcher::Event::Init,
            watcher::Event::InitApply(guard::<Tenant>(tenant("acme", None))),
            watcher::Event::InitApply(guard::<Tenant>(bad.clone())),
            watcher::Event::InitApply(guard::<Tenant>(tenant("child", Some("acme")))),
            watcher::Event::InitDone,
            watcher::Event::Apply(guard::<Tenant>(bad.clone())),
        ];
        let passed: Vec<watcher::Event<Tenant>> = events
            .into_iter()
            .filter_map(|e| decoded(e, report))
            .collect();
        let names: Vec<String> = passed
            .iter()
            .filter_map(|e| match e {
                watcher::Event::InitApply(t) | watcher::Event::Apply(t) => {
                    Some(t.metadata.name.clone().unwrap_or_default())
                }
                _ => None,
            })
            .collect();
        assert_eq!(names, ["acme", "child"]);
        assert_eq!(passed.len(), 4, "Init, two tenants, InitDone: {passed:?}");
        let reported = reported.into_inner().unwrap();
        assert_eq!(reported.len(), 2, "{reported:?}");
        assert_eq!(
            (reported[0].0, reported[0].1.as_str()),
            ("Tenant", "broken")
        );
        assert!(
            reported[0]
                .2
                .contains("Invalid type string \"yes please\". Expected a boolean"),
            "{}",
            reported[0].2
        );
        // What passed builds a tree of the valid tenants.
        let tenants = passed
            .into_iter()
            .filter_map(|e| match e {
                watcher::Event::InitApply(t) => Some(t),
                _ => None,
            })
            .collect();
        let tree = TenantTree::build(
            Inventory {
                tenants,
                ..Default::default()
            },
            EngineSettings::default(),
        );
        assert!(tree.get("acme").is_some() && tree.get("child").is_some());
        assert!(tree.get("broken").is_none());
    }

    /// A deleted undecodable object passes as a Delete of its name (caches drop it), and is
    /// reported; a valid Delete passes unchanged. The metric counts by kind.
    #[test]
    fn a_deleted_undecodable_object_passes_as_a_delete_of_its_name() {
        let bad = serde_json::json!({
            "apiVersion": "silo.dev/v1alpha1",
            "kind": "LimitProfile",
            "metadata": {"name": "gold"},
            "spec": {"owner": 7},
        });
        let metrics = Metrics::new();
        let out = decoded(
            watcher::Event::Delete(guard::<LimitProfile>(bad)),
            |kind, e| report(Some(&metrics), kind, e),
        );
        let Some(watcher::Event::Delete(p)) = out else {
            panic!("expected a Delete, got {out:?}");
        };
        assert_eq!(p.metadata.name.as_deref(), Some("gold"));
        let text = metrics.encode();
        assert!(
            text.contains("silo_undecodable_objects_total{kind=\"LimitProfile\"} 1"),
            "{text}"
        );
        let ok = serde_json::json!({
            "apiVersion": "silo.dev/v1alpha1",
            "kind": "LimitProfile",
            "metadata": {"name": "silver"},
            "spec": {"owner": "acme"},
        });
        let out = decoded(
            watcher::Event::Delete(guard::<LimitProfile>(ok)),
            |kind, e| report(Some(&metrics), kind, e),
        );
        assert!(matches!(out, Some(watcher::Event::Delete(p)) if p.spec.owner == "acme"));
        assert!(
            metrics
                .encode()
                .contains("silo_undecodable_objects_total{kind=\"LimitProfile\"} 1")
        );
    }
}
