//! The operator: reconciles Tenants into live silos and keeps them so.
//!
//! - [`reconcile`]: the pipeline for one tenant (read → validate → render → apply → status),
//!   with the cleanup path for deletion; no client code.
//! - [`cluster`]: the thin I/O trait; [`kube_cluster`] implements it with kube-rs,
//!   [`memory`] in memory for tests and benchmarks.
//! - [`desired`]: hashes and the diff that makes a steady-state reconcile write nothing.
//! - [`objects`]: carrying out that diff: apply, replace what cannot change in place,
//!   delete; a refused object becomes a condition while the rest goes on.
//! - [`status`]: conditions and phase; [`mappers`]: fan-out to dependent tenants.
//! - [`run`]: `silo operator` (controllers, leader election, health, metrics, shutdown).
//! - [`admission`]: the validating webhook served by every replica (tree feed, certificates).
//! - [`channels`]: master channel status (tenants using it, endpoint).
//! - [`data_key`]: the tenant's wrapped data key in its namespace.
//! - [`secret_checks`]: which Secrets are unchanged since checked (no reads at steady state).
//! - [`secrets`]: the credential and TLS Secrets a siloed tenant's workloads mount.
//! - [`shared`]: a Shared tenant's database and broker client on the shared services.
//! - [`permissions`]: every API permission the operator uses (the ClusterRole must match).

pub mod admission;
pub mod channels;
pub mod cluster;
pub mod data_key;
pub mod desired;
pub mod device_ca;
pub mod driver;
pub mod error;
pub mod keyring_store;
pub mod keys;
pub mod kube_cluster;
pub mod leader;
pub mod mappers;
#[cfg(any(test, feature = "test-support"))]
pub mod memory;
pub mod metrics;
pub mod objects;
pub mod permissions;
pub mod reconcile;
pub mod run;
pub mod secret_checks;
pub mod secrets;
pub mod shared;
pub mod status;

pub use cluster::{Cluster, FIELD_MANAGER, FINALIZER, ObjectKey};
pub use error::Error;
pub use reconcile::{Next, Outcome, Reconciler};
