//! The operator: reconciles Tenants into live silos and keeps them so.
//!
//! - [`controller`]: `silo operator` — start-up checks, leader election, the watches and the
//!   Tenant controller, housekeeping, `/healthz` `/readyz` `/metrics`, shutdown.
//! - [`reconcile`]: the pipeline for one tenant (read → validate → apply → credentials →
//!   status), with the cleanup path for deletion; no client code.
//! - [`cluster`]: the thin I/O trait the pipeline talks to, its kube-rs implementation and the
//!   owned-object index (and, for tests only, an in-memory stand-in).
//! - [`admission`]: the validating webhook served by every replica (tree feed, certificates).
//! - [`channels`]: master channel status (tenants using it, endpoint).
//! - [`key_service`]: the seam where the key provider ([`crate::keys`]) plugs in.
//! - [`metrics`], [`error`], [`permissions`]: Prometheus series, the reconcile error, every
//!   API permission the operator uses (the ClusterRole must match).

pub mod admission;
pub mod channels;
pub mod cluster;
pub mod controller;
pub mod error;
pub mod key_service;
pub mod metrics;
pub mod permissions;
pub mod reconcile;

pub use cluster::{Cluster, FIELD_MANAGER, FINALIZER, ObjectKey};
pub use error::Error;
pub use reconcile::{Next, Outcome, Reconciler};
