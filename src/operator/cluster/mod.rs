//! The thin I/O layer the reconciler talks to. Everything the operator does to the cluster
//! goes through [`Cluster`], so the reconcile pipeline can run against the API server
//! ([`crate::operator::cluster::kube_client::KubeCluster`]) or a plain in-memory stand-in
//! ([`crate::operator::cluster::memory::MemoryCluster`]) that counts writes.

pub mod echoes;
pub mod events;
pub mod index;
pub mod kube_client;
#[cfg(any(test, feature = "test-support"))]
pub mod memory;
mod readings;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;

use serde_json::Value;

use crate::types::{Channel, ChannelStatus, Tenant, TenantStatus};

/// The one server-side apply field manager the operator writes with.
pub const FIELD_MANAGER: &str = "silo";
/// Finalizer that keeps a Tenant until its silo is cleaned up.
pub const FINALIZER: &str = "silo.dev/cleanup";
/// Annotation holding the hash of the manifest last applied.
pub const HASH_ANNOTATION: &str = "silo.dev/applied-hash";
/// Annotation holding the hashes of the fields the API server will not change in place
/// ([`crate::render::immutable::identity`]): when they differ from the desired ones the
/// object is replaced instead of applied.
pub const IDENTITY_ANNOTATION: &str = "silo.dev/identity";

/// The kinds the operator owns per tenant: the one list is in `render/mod.rs`
/// ([`crate::render::OwnedKind`]); watches, the owned-object index, API resources and RBAC
/// permissions derive from it.
pub use crate::render::OwnedKind;

/// Identity of an object: kind, namespace (None for cluster-scoped) and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjectKey {
    pub fn new(kind: &str, namespace: Option<&str>, name: &str) -> Self {
        ObjectKey {
            kind: kind.to_string(),
            namespace: namespace.map(str::to_string),
            name: name.to_string(),
        }
    }

    /// `namespace/name` (`/name` for a cluster-scoped object), as messages name Secrets.
    pub fn path(&self) -> String {
        format!(
            "{}/{}",
            self.namespace.as_deref().unwrap_or_default(),
            self.name
        )
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{}/{}/{}", self.kind, ns, self.name),
            None => write!(f, "{}/{}", self.kind, self.name),
        }
    }
}

/// What the operator sees of an object it owns: metadata only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub key: ObjectKey,
    /// Value of the `silo.dev/applied-hash` annotation.
    pub hash: Option<String>,
    /// Value of the `silo.dev/identity` annotation.
    pub identity: Option<String>,
    /// Time of the latest change to the object's spec by another field manager, made after
    /// the operator's own last apply (someone edited the object: drift to repair).
    pub foreign_edit: Option<String>,
}

/// Replica readiness of a StatefulSet or Deployment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Readiness {
    pub desired: i32,
    pub ready: i32,
}

/// A Kubernetes Event about a Tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventInfo {
    pub warning: bool,
    /// CamelCase reason, e.g. `Applied`, `InvalidSpec`, `DeletionBlocked`.
    pub reason: String,
    /// What the operator did or tried, e.g. `Reconcile`, `Delete`.
    pub action: String,
    pub note: String,
}

impl EventInfo {
    /// An event of type `Warning` when `warning`, else `Normal`.
    pub fn new(warning: bool, reason: &str, action: &str, note: &str) -> EventInfo {
        EventInfo {
            warning,
            reason: reason.to_string(),
            action: action.to_string(),
            note: note.to_string(),
        }
    }

    /// An event of type `Normal`.
    pub fn normal(reason: &str, action: &str, note: &str) -> EventInfo {
        EventInfo::new(false, reason, action, note)
    }

    /// An event of type `Warning`.
    pub fn warning(reason: &str, action: &str, note: &str) -> EventInfo {
        EventInfo::new(true, reason, action, note)
    }
}

/// How a cluster call failed; decides retry and backoff.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// 409: somebody else wrote first; retry at once with fresh state.
    Conflict,
    NotFound,
    /// 403: the operator's RBAC does not allow the call.
    Forbidden,
    /// 422/400: the server rejected the object.
    Invalid,
    /// Timeouts, 5xx, 429, connection errors: retry with backoff.
    Transient,
}

/// A failed cluster call, with what was attempted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{action} {object}: {message}")]
pub struct ClusterError {
    pub kind: FailureKind,
    pub action: &'static str,
    pub object: String,
    pub message: String,
}

impl ClusterError {
    pub fn new(
        kind: FailureKind,
        action: &'static str,
        object: impl fmt::Display,
        message: impl Into<String>,
    ) -> Self {
        ClusterError {
            kind,
            action,
            object: object.to_string(),
            message: message.into(),
        }
    }
}

pub type ClusterResult<T> = Result<T, ClusterError>;

/// The data of a Secret, values decoded (the operator's Secrets hold text only).
pub type SecretData = BTreeMap<String, String>;

/// The operations the reconciler needs. Implementations: the API server through kube-rs,
/// and an in-memory cluster for tests and benchmarks.
pub trait Cluster: Send + Sync {
    /// Server-side apply `manifest` (full object with apiVersion/kind/metadata) with field
    /// manager [`FIELD_MANAGER`], forcing conflicts.
    fn apply(
        &self,
        key: &ObjectKey,
        manifest: &Value,
    ) -> impl Future<Output = ClusterResult<()>> + Send;

    /// Delete an object (background propagation: its dependents are garbage-collected);
    /// an object already gone is not an error.
    fn delete(&self, key: &ObjectKey) -> impl Future<Output = ClusterResult<()>> + Send;

    /// Delete an object with `propagationPolicy: Orphan`: its dependents (a StatefulSet's
    /// pods) stay. The object lingers, Terminating, until the garbage collector has released
    /// them. An object already gone is not an error.
    fn delete_orphaning(&self, key: &ObjectKey) -> impl Future<Output = ClusterResult<()>> + Send;

    /// The Tenant as stored now (fresh `resourceVersion`); None when it is gone.
    fn get_tenant(&self, name: &str) -> impl Future<Output = ClusterResult<Option<Tenant>>> + Send;

    /// `spec.resources.requests.storage` of PersistentVolumeClaim `namespace/name`; None when
    /// the claim does not exist.
    fn claim_storage(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = ClusterResult<Option<String>>> + Send;

    /// Ask for a larger volume: merge patch of the claim's storage request. The API server
    /// refuses it (422) for an unbound claim or a smaller size, and (403) when the claim's
    /// StorageClass does not allow volume expansion.
    fn resize_claim(
        &self,
        namespace: &str,
        name: &str,
        storage: &str,
    ) -> impl Future<Output = ClusterResult<()>> + Send;

    /// Metadata of every object of an [`OwnedKind`] labelled `silo.dev/tenant=<tenant>`.
    fn list_owned(&self, tenant: &str)
    -> impl Future<Output = ClusterResult<Vec<Observed>>> + Send;

    /// Readiness of a StatefulSet or Deployment; None when it does not exist. The kube-rs
    /// implementation answers from memory while its watch shows the workload unchanged since
    /// the last read (`readings`).
    fn readiness(
        &self,
        key: &ObjectKey,
    ) -> impl Future<Output = ClusterResult<Option<Readiness>>> + Send;

    /// Server-side apply of the Tenant's status subresource.
    fn patch_status(
        &self,
        tenant: &str,
        status: &TenantStatus,
    ) -> impl Future<Output = ClusterResult<()>> + Send;

    /// Server-side apply of a Channel's status subresource.
    fn patch_channel_status(
        &self,
        channel: &str,
        status: &ChannelStatus,
    ) -> impl Future<Output = ClusterResult<()>> + Send;

    /// Add [`FINALIZER`] to the Tenant.
    fn add_finalizer(&self, tenant: &Tenant) -> impl Future<Output = ClusterResult<()>> + Send;

    /// Remove [`FINALIZER`] from the Tenant (it may then disappear).
    fn remove_finalizer(&self, tenant: &Tenant) -> impl Future<Output = ClusterResult<()>> + Send;

    /// Delete a Tenant object (cascading deletion of a subtree).
    fn delete_tenant(&self, name: &str) -> impl Future<Output = ClusterResult<()>> + Send;

    /// Publish an Event on the Tenant.
    fn publish_event(
        &self,
        tenant: &Tenant,
        event: &EventInfo,
    ) -> impl Future<Output = ClusterResult<()>> + Send;

    /// Publish an Event on the Channel (its `Ready` condition changing).
    fn publish_channel_event(
        &self,
        channel: &Channel,
        event: &EventInfo,
    ) -> impl Future<Output = ClusterResult<()>> + Send;

    /// Data of Secret `namespace/name`; None when it does not exist.
    fn get_secret(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = ClusterResult<Option<SecretData>>> + Send;

    /// The resourceVersion of Secret `namespace/name` as the watch cache knows it, without a
    /// request: `Some(Some(rv))` exists, `Some(None)` absent, `None` not known (no synced cache;
    /// read it with [`get_secret`](Self::get_secret)).
    fn secret_version(
        &self,
        _namespace: &str,
        _name: &str,
    ) -> impl Future<Output = Option<Option<String>>> + Send {
        async { None }
    }

    /// Create a Secret from a full manifest; an existing Secret is a Conflict (never replaced).
    fn create_secret(
        &self,
        key: &ObjectKey,
        manifest: &Value,
    ) -> impl Future<Output = ClusterResult<()>> + Send;

    /// Replace the given keys of an existing Secret's data (merge patch).
    fn patch_secret_data(
        &self,
        key: &ObjectKey,
        data: &SecretData,
    ) -> impl Future<Output = ClusterResult<()>> + Send;
}

impl<T: Cluster> Cluster for std::sync::Arc<T> {
    fn apply(
        &self,
        key: &ObjectKey,
        manifest: &Value,
    ) -> impl Future<Output = ClusterResult<()>> + Send {
        (**self).apply(key, manifest)
    }
    fn delete(&self, key: &ObjectKey) -> impl Future<Output = ClusterResult<()>> + Send {
        (**self).delete(key)
    }
    fn delete_orphaning(&self, key: &ObjectKey) -> impl Future<Output = ClusterResult<()>> + Send {
        (**self).delete_orphaning(key)
    }
    fn get_tenant(&self, name: &str) -> impl Future<Output = ClusterResult<Option<Tenant>>> + Send {
        (**self).get_tenant(name)
    }
    fn claim_storage(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = ClusterResult<Option<String>>> + Send {
        (**self).claim_storage(namespace, name)
    }
    fn resize_claim(
        &self,
        namespace: &str,
        name: &str,
        storage: &str,
    ) -> impl Future<Output = ClusterResult<()>> + Send {
        (**self).resize_claim(namespace, name, storage)
    }
    fn list_owned(
        &self,
        tenant: &str,
    ) -> impl Future<Output = ClusterResult<Vec<Observed>>> + Send {
        (**self).list_owned(tenant)
    }
    fn readiness(
        &self,
        key: &ObjectKey,
    ) -> impl Future<Output = ClusterResult<Option<Readiness>>> + Send {
        (**self).readiness(key)
    }
    fn patch_status(
        &self,
        tenant: &str,
        status: &TenantStatus,
    ) -> impl Future<Output = ClusterResult<()>> + Send {
        (**self).patch_status(tenant, status)
    }
    fn patch_channel_status(
        &self,
        channel: &str,
        status: &ChannelStatus,
    ) -> impl Future<Output = ClusterResult<()>> + Send {
        (**self).patch_channel_status(channel, status)
    }
    fn add_finalizer(&self, tenant: &Tenant) -> impl Future<Output = ClusterResult<()>> + Send {
        (**self).add_finalizer(tenant)
    }
    fn remove_finalizer(&self, tenant: &Tenant) -> impl Future<Output = ClusterResult<()>> + Send {
        (**self).remove_finalizer(tenant)
    }
    fn delete_tenant(&self, name: &str) -> impl Future<Output = ClusterResult<()>> + Send {
        (**self).delete_tenant(name)
    }
    fn publish_event(
        &self,
        tenant: &Tenant,
        event: &EventInfo,
    ) -> impl Future<Output = ClusterResult<()>> + Send {
        (**self).publish_event(tenant, event)
    }
    fn publish_channel_event(
        &self,
        channel: &Channel,
        event: &EventInfo,
    ) -> impl Future<Output = ClusterResult<()>> + Send {
        (**self).publish_channel_event(channel, event)
    }
    fn get_secret(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = ClusterResult<Option<SecretData>>> + Send {
        (**self).get_secret(namespace, name)
    }
    fn secret_version(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Option<Option<String>>> + Send {
        (**self).secret_version(namespace, name)
    }
    fn create_secret(
        &self,
        key: &ObjectKey,
        manifest: &Value,
    ) -> impl Future<Output = ClusterResult<()>> + Send {
        (**self).create_secret(key, manifest)
    }
    fn patch_secret_data(
        &self,
        key: &ObjectKey,
        data: &SecretData,
    ) -> impl Future<Output = ClusterResult<()>> + Send {
        (**self).patch_secret_data(key, data)
    }
}
