//! The reconcile pipeline for one tenant, as a short driver ([`Reconciler::reconcile`]) that
//! calls one function per step:
//!
//! | step | file | does |
//! | --- | --- | --- |
//! | read | [`read`] | its place in the analysed tree, its problems and its rendered objects, copied out in one look ([`read::Placement`]); the finalizer ([`finalizer`]) |
//! | validate | [`validate`] | the problems that stop it; status Failed and withdrawn bindings |
//! | build | [`apply`] | the desired objects ([`crate::render`]) with their hashes ([`desired`]), rendered by the read step |
//! | apply | [`apply`], [`objects`] | apply what differs, replace what cannot change in place, delete what is no longer desired |
//! | credentials | [`credentials`] | the tenant's key and data key ([`data_key`]), its Secrets ([`secrets`]) or its place on the shared services ([`shared`]) |
//! | status | [`status`] | every condition, the phase, the write, the phase-change event |
//!
//! Deletion takes the [`cleanup`] path instead. Events and metrics go through [`events`]; no
//! step holds client code (that is [`crate::operator::cluster`]). [`pass`] reconciles a whole
//! inventory once (tests, benchmark).

pub mod apply;
pub mod cleanup;
pub mod credentials;
pub mod data_key;
pub mod desired;
pub mod events;
pub mod finalizer;
pub mod objects;
pub mod pass;
pub mod read;
pub mod secret_checks;
pub mod secrets;
pub mod shared;
pub mod status;
pub mod validate;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::backends::{SharedServices, Unconfigured};
use crate::config::PlatformConfig;
use crate::hierarchy::TenantTree;
use crate::types::{Phase, Tenant};
use read::Placement;

use crate::operator::cluster::{Cluster, EventInfo, ObjectKey};
use crate::operator::error::Error;
use crate::operator::key_service::KeyService;
use crate::operator::metrics::Metrics;
use secret_checks::SecretChecks;

/// Periodic re-check of a healthy tenant (drift is also caught by watches).
pub const RESYNC: Duration = Duration::from_secs(300);
/// Re-check of a tenant waiting for something no watch reports (a shared service, the key
/// provider, a Secret that could not be written, an object being replaced).
pub const WAIT_READY: Duration = Duration::from_secs(15);
/// Safety re-check of a tenant waiting only for its workloads to become ready: their status
/// changes reach the owned-object watch, which triggers the tenant, so no polling.
pub const WAIT_WORKLOADS: Duration = RESYNC;
/// Re-check of a deletion blocked by children (Retain) or waiting for descendants (Cascade).
pub const WAIT_DELETE: Duration = Duration::from_secs(10);
/// Annotation requesting an on-demand key rotation; each new value rotates once
/// (`POST /v1/tenants/{name}/rotate-key` sets it to a fresh request id).
pub const ROTATE_KEY_ANNOTATION: &str = "silo.dev/rotate-key";
/// When to look at the tenant again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Nothing will change until the tenant (or something it depends on) changes.
    AwaitChange,
    Requeue(Duration),
}

/// What one reconcile did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub next: Next,
    pub phase: Phase,
    pub applied: usize,
    pub deleted: usize,
    pub status_written: bool,
}

/// Everything a reconcile needs besides the tree.
pub struct Reconciler<C> {
    pub cluster: C,
    pub config: PlatformConfig,
    pub keys: Arc<dyn KeyService>,
    pub metrics: Option<Arc<Metrics>>,
    /// The shared PostgreSQL and Mosquitto of Shared tenants.
    pub shared: Arc<dyn SharedServices>,
    /// Secrets found good, by resourceVersion (no reads at steady state).
    checks: SecretChecks,
    /// Foreign edits already answered by a re-apply (see [`desired::plan`]).
    acknowledged: Mutex<HashMap<ObjectKey, String>>,
    /// Where significant events also go: the audit trail in the API's database
    /// ([`crate::audit::OperatorAudit`]), when `api.database.url` is configured.
    audit: Option<crate::audit::OperatorAudit>,
    /// The device registry's counts, written as `status.usage` `devices` (own and subtree)
    /// once read ([`super::registry`]); without them the stored values are kept.
    device_usage: Option<Arc<super::registry::DeviceUsage>>,
}

impl<C: Cluster> Reconciler<C> {
    pub fn new(
        cluster: C,
        config: PlatformConfig,
        keys: Arc<dyn KeyService>,
        metrics: Option<Arc<Metrics>>,
    ) -> Self {
        Reconciler {
            cluster,
            config,
            keys,
            metrics,
            shared: Arc::new(Unconfigured),
            checks: SecretChecks::new(),
            acknowledged: Mutex::new(HashMap::new()),
            audit: None,
            device_usage: None,
        }
    }

    /// Writes the registry's device counts into `status.usage` (`devices`, own and subtree).
    pub fn with_device_usage(mut self, usage: Arc<super::registry::DeviceUsage>) -> Self {
        self.device_usage = Some(usage);
        self
    }

    /// Also records significant events in the audit trail.
    pub fn with_audit(mut self, audit: crate::audit::OperatorAudit) -> Self {
        self.audit = Some(audit);
        self
    }

    /// With the platform's shared services (default: none configured).
    pub fn with_shared(mut self, shared: Arc<dyn SharedServices>) -> Self {
        self.shared = shared;
        self
    }

    /// Reconcile tenant `name` against the analysed `tree` (which holds the live objects).
    pub async fn reconcile(&self, tree: &TenantTree, name: &str) -> Result<Outcome, Error> {
        self.reconcile_live(tree, name, None).await
    }

    /// Like [`reconcile`](Self::reconcile), with the tenant's live object (from the watch
    /// cache) for its metadata and status; the tree supplies the structure.
    pub async fn reconcile_live(
        &self,
        tree: &TenantTree,
        name: &str,
        live: Option<&Tenant>,
    ) -> Result<Outcome, Error> {
        let placement = Placement::read(tree, name, &self.config)
            .ok_or_else(|| Error::Gone(name.to_string()))?;
        self.reconcile_placed(&placement, live).await
    }

    /// Reconcile a tenant read from the tree ([`Placement::read`]), with its live object (from
    /// the watch cache) for metadata and status when given; the placement supplies the
    /// structure and the desired objects.
    pub async fn reconcile_placed(
        &self,
        placement: &Placement,
        live: Option<&Tenant>,
    ) -> Result<Outcome, Error> {
        let started = std::time::Instant::now();
        let tenant = live.unwrap_or(&placement.tenant);
        let result = self.reconcile_inner(placement, tenant).await;
        self.with_metrics(|m| {
            m.reconciled(started.elapsed().as_secs_f64());
            if let Ok(o) = &result
                && !(o.phase == Phase::Deleting && placement.children.is_empty())
            {
                m.set_phase(tenant.name(), o.phase);
            }
        });
        result
    }

    /// The pipeline: read → validate → build → apply → credentials → status (or cleanup,
    /// for a tenant being deleted). Each step is one call; see the module docs.
    async fn reconcile_inner(
        &self,
        placement: &Placement,
        tenant: &Tenant,
    ) -> Result<Outcome, Error> {
        if tenant.metadata.deletion_timestamp.is_some() {
            return self.cleanup(placement, tenant).await;
        }
        if !finalizer::present(tenant) {
            finalizer::set(&self.cluster, tenant, true).await?;
        }
        // Validate.
        if !placement.problems.is_empty() {
            return self.fail(tenant, placement.problems.clone()).await;
        }
        // Build (rendered by the read step), apply.
        let mut applied = self.apply(tenant, &placement.desired).await?;
        // Credentials.
        let suspended_by = placement.suspended_by.as_deref();
        let mut creds = self.credentials(tenant, suspended_by.is_some()).await?;
        let progress = std::mem::take(&mut creds.progress);
        self.report_applied(tenant, &mut applied, progress).await;
        // Status (with the `Applied` event, folded into the phase change's when there is one).
        let status = self.report_status(placement, tenant, &applied, creds).await;
        if status.is_err()
            && let Some(note) = &applied.note
        {
            self.publish(tenant, &EventInfo::normal("Applied", "Apply", note))
                .await;
        }
        status
    }
}
