//! The reconcile pipeline for one tenant: read (the tenant and the analysed tree) →
//! validate → render the desired objects → apply what differs, delete what is no longer
//! desired → status. Deletion takes the separate cleanup path (finalizer semantics).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::backends::{SharedServices, Unconfigured};
use crate::config::PlatformConfig;
use crate::hierarchy::{NodeId, ObjectKind, ProblemKind, TenantTree};
use crate::render::{self, broker, database};
use crate::types::tenant::{DeletionPolicy, Endpoints, UsageStatus};
use crate::types::{Isolation, Phase, Tenant, TenantStatus};

use super::cluster::{Cluster, ClusterResult, EventInfo, FINALIZER, FailureKind, ObjectKey};
use super::desired;
use super::error::Error;
use super::keys::{KeyService, KeyState};
use super::metrics::Metrics;
use super::objects::{self, Problem};
use super::secret_checks::SecretChecks;
use super::shared::{self, SharedOutcome};
use super::status::{self, Cond, TreeFacts, Truth};

/// Periodic re-check of a healthy tenant (drift is also caught by watches).
pub const RESYNC: Duration = Duration::from_secs(300);
/// Re-check of a tenant waiting for its workloads to become ready.
pub const WAIT_READY: Duration = Duration::from_secs(15);
/// Re-check of a deletion blocked by children (Retain) or waiting for descendants (Cascade).
pub const WAIT_DELETE: Duration = Duration::from_secs(10);
/// Annotation requesting an on-demand key rotation; each new value rotates once
/// (`POST /v1/tenants/{name}/rotate-key` sets it to a fresh request id).
pub const ROTATE_KEY_ANNOTATION: &str = "silo.dev/rotate-key";
/// Attempts for a write guarded by the Tenant's resourceVersion that meets a 409 conflict
/// (each retry re-reads the Tenant).
const CONFLICT_ATTEMPTS: u32 = 3;

/// What the apply step found, for the conditions.
struct Found<'a> {
    suspended_by: Option<&'a str>,
    secrets: Option<&'a super::secrets::Ensured>,
    shared: Option<&'a SharedOutcome>,
    key: KeyState,
    data_key: Option<&'a Result<Option<String>, super::secrets::SecretError>>,
    /// Objects the API server refused or that are being replaced.
    problems: &'a [Problem],
}

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
}

fn has_finalizer(t: &Tenant) -> bool {
    t.metadata
        .finalizers
        .as_ref()
        .is_some_and(|f| f.iter().any(|x| x == FINALIZER))
}

/// Add (`add`) or remove [`FINALIZER`]: a patch guarded by the Tenant's resourceVersion.
/// On a 409 the Tenant is read again and the patch retried with the fresh version (up to
/// [`CONFLICT_ATTEMPTS`] in all); a Tenant already as wanted, or gone, is done.
async fn set_finalizer<C: Cluster>(cluster: &C, tenant: &Tenant, add: bool) -> ClusterResult<()> {
    let mut current = std::borrow::Cow::Borrowed(tenant);
    let mut attempt = 1;
    loop {
        let r = if add {
            cluster.add_finalizer(&current).await
        } else {
            cluster.remove_finalizer(&current).await
        };
        match r {
            Err(e) if e.kind == FailureKind::Conflict && attempt < CONFLICT_ATTEMPTS => {
                tracing::debug!(error = %e, attempt, "conflict, re-reading the tenant");
                attempt += 1;
                match cluster.get_tenant(tenant.name()).await? {
                    Some(t) if has_finalizer(&t) != add => current = std::borrow::Cow::Owned(t),
                    _ => return Ok(()),
                }
            }
            other => return other,
        }
    }
}

/// Problems that stop the tenant from being reconciled: its own spec problems (over-use of
/// limits is reported by the webhook and API, it does not tear a running silo down; a quota
/// that breaks the hierarchical rule is rendered with the grant that keeps the rule).
pub fn blocking_problems(tree: &TenantTree, id: NodeId) -> Vec<String> {
    let name = tree.name(id);
    let mut out: Vec<String> = tree
        .problems()
        .iter()
        .filter(|p| p.object == ObjectKind::Tenant && p.name == name)
        .filter(|p| {
            !matches!(
                p.kind,
                ProblemKind::LimitExceeded
                    | ProblemKind::QuotaOverParent
                    | ProblemKind::QuotaRequired
            )
        })
        .map(|p| format!("{}: {}", p.field, p.reason))
        .collect();
    if out.is_empty() && tree.node(id).depth == 0 {
        out.push(
            "spec.parent: the tenant is not attached to the tree (an ancestor is missing or invalid)"
                .to_string(),
        );
    }
    out
}

/// Now, at the second precision the API server stores (so a status read back compares
/// equal to the one written).
fn now() -> Time {
    let secs = k8s_openapi::jiff::Timestamp::now().as_second();
    Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap_or_default())
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
        }
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
    /// cache) for its metadata and status; the tree supplies the structure. The tree is
    /// rebuilt on structural changes only, so it may hold an older status.
    pub async fn reconcile_live(
        &self,
        tree: &TenantTree,
        name: &str,
        live: Option<&Tenant>,
    ) -> Result<Outcome, Error> {
        let started = std::time::Instant::now();
        let result = self.reconcile_inner(tree, name, live).await;
        if let Some(m) = &self.metrics {
            m.reconciled(started.elapsed().as_secs_f64());
            if let Ok(o) = &result
                && !(o.phase == Phase::Deleting
                    && tree
                        .get(name)
                        .is_some_and(|id| tree.node(id).children.is_empty()))
            {
                m.set_phase(name, o.phase);
            }
        }
        result
    }

    async fn reconcile_inner(
        &self,
        tree: &TenantTree,
        name: &str,
        live: Option<&Tenant>,
    ) -> Result<Outcome, Error> {
        let id = tree
            .get(name)
            .ok_or_else(|| Error::Gone(name.to_string()))?;
        let tenant = live.unwrap_or_else(|| tree.tenant(id));
        if tenant.metadata.deletion_timestamp.is_some() {
            return self.cleanup(tree, id, tenant).await;
        }
        if !has_finalizer(tenant) {
            set_finalizer(&self.cluster, tenant, true).await?;
        }
        let problems = blocking_problems(tree, id);
        if !problems.is_empty() {
            return self.fail(tenant, problems).await;
        }
        self.apply(tree, id, tenant).await
    }

    /// Invalid spec: status Failed naming every problem, one event, then wait for a change.
    async fn fail(&self, tenant: &Tenant, problems: Vec<String>) -> Result<Outcome, Error> {
        let message = problems.join("; ");
        tracing::warn!(%message, "invalid tenant spec");
        if let Some(m) = &self.metrics {
            m.error("invalid_spec");
        }
        let ready = Cond::new(status::READY, Truth::False, "InvalidSpec", message.clone());
        let new = status::build(
            tenant.status.as_ref(),
            Phase::Failed,
            vec![ready],
            TreeFacts::default(),
            None,
            tenant.metadata.generation,
            &now(),
        );
        let deleted = self.withdraw_refused_people(tenant).await?;
        let written = self.write_status(tenant, new).await?;
        if written {
            self.event(tenant, true, "InvalidSpec", "Validate", &message)
                .await;
        }
        Ok(Outcome {
            next: Next::AwaitChange,
            phase: Phase::Failed,
            applied: 0,
            deleted,
            status_written: written,
        })
    }

    /// A spec that is not reconciled must not keep granting what it names wrongly: the
    /// RoleBindings an earlier operator (or an earlier, laxer rule) made for admins or members
    /// the people rule now refuses ([`crate::hierarchy::check_admin`],
    /// [`crate::hierarchy::check_member`]: `system:authenticated`, another namespace's service
    /// accounts, …) are deleted — `silo-admins` whole when any admin is refused (its other
    /// subjects come back once the spec is fixed), and the member binding of each refused
    /// member. Everything else stays as it was until the spec is valid again. Returns the
    /// number of bindings deleted (a Warning event names each).
    async fn withdraw_refused_people(&self, tenant: &Tenant) -> Result<usize, Error> {
        let ns = self.config.namespace_for(tenant.name());
        let mut doomed = Vec::new();
        if tenant
            .spec
            .admins
            .iter()
            .any(|a| crate::hierarchy::check_admin(a, &ns).is_err())
        {
            doomed.push(render::rbac::ADMINS_BINDING.to_string());
        }
        for m in &tenant.spec.members {
            if crate::hierarchy::check_member(m, &ns).is_err() {
                doomed.push(render::rbac::member_binding_name(&m.user, &m.role));
            }
        }
        if doomed.is_empty() {
            return Ok(0);
        }
        let owned = self.cluster.list_owned(tenant.name()).await?;
        let mut deleted = 0;
        for name in doomed {
            let key = ObjectKey::new("RoleBinding", Some(&ns), &name);
            if !owned.iter().any(|o| o.key == key) {
                continue;
            }
            self.cluster.delete(&key).await?;
            deleted += 1;
            self.event(
                tenant,
                true,
                "AccessWithdrawn",
                "Validate",
                &format!(
                    "deleted {key}: it binds a subject the spec may not name (see the InvalidSpec condition)"
                ),
            )
            .await;
        }
        Ok(deleted)
    }

    async fn apply(
        &self,
        tree: &TenantTree,
        id: NodeId,
        tenant: &Tenant,
    ) -> Result<Outcome, Error> {
        let name = tenant.name();
        let objects = render::render_tenant(tree, id, &self.config);
        let desired: Vec<desired::Desired> = objects.iter().map(desired::prepare).collect();
        let observed = self.cluster.list_owned(name).await?;
        let acknowledged = self
            .acknowledged
            .lock()
            .map(|a| a.clone())
            .unwrap_or_default();
        let plan = desired::plan(&desired, &observed, &acknowledged);
        let applied = objects::apply_plan(&self.cluster, &plan, &observed).await?;
        for key in &applied.drift {
            if let Some(t) = observed
                .iter()
                .find(|o| &o.key == key)
                .and_then(|o| o.foreign_edit.clone())
                && let Ok(mut a) = self.acknowledged.lock()
            {
                a.insert(key.clone(), t);
            }
        }
        // The tenant's key first: the credentials kept outside its namespace are sealed with it.
        let key = self
            .keys
            .ensure_key(
                tenant.name(),
                tenant.spec.parent.as_deref(),
                tenant
                    .spec
                    .encryption
                    .as_ref()
                    .and_then(|e| e.rotation_days),
            )
            .await?;
        // Details of applying (credentials, data key, bridge) reported inside this step's
        // `Applied` event when it has one (see [`Reconciler::report_progress`]).
        let mut progress: Vec<(&'static str, String)> = Vec::new();
        let (key, data_key) = self.tenant_key(tenant, key, &mut progress).await?;
        // Credentials: Secrets the siloed workloads mount, or the tenant's place on the
        // shared services (the namespace exists now).
        let suspended_by = tree.suspended_by(id).map(|s| tree.name(s).to_string());
        let mut secrets = None;
        let mut shared_out = None;
        match tenant.spec.isolation {
            Isolation::Siloed => {
                let s = super::secrets::ensure(
                    &self.cluster,
                    &self.config,
                    &*self.keys,
                    &*self.shared,
                    &self.checks,
                    tenant,
                    time::OffsetDateTime::now_utc(),
                )
                .await;
                if !s.left_shared.is_empty() {
                    let note = format!("left the shared services: {}", s.left_shared.join("; "));
                    self.event(tenant, false, "LeftShared", "Apply", &note)
                        .await;
                }
                if !s.written.is_empty() {
                    let note = format!("wrote Secret(s) {}", s.written.join(", "));
                    progress.push(("SecretsWritten", note));
                }
                for (type_, e) in [
                    (status::DATABASE_READY, &s.database),
                    (status::BROKER_READY, &s.broker),
                ] {
                    let Some(e) = e else { continue };
                    tracing::warn!(error = %e, "credential Secret not ensured");
                    if let Some(m) = &self.metrics {
                        m.error("secret");
                    }
                    // One event per new failure, not one per retry.
                    let cond = format!("credential Secret missing: {e}");
                    if !status::has_condition(tenant.status.as_ref(), type_, "SecretMissing", &cond)
                    {
                        self.event(tenant, true, "SecretFailed", "Apply", &e.to_string())
                            .await;
                    }
                }
                secrets = Some(s);
                // Master channels reach the tenant's own broker through its bridge.
                match shared::ensure_bridge(
                    &self.cluster,
                    &self.config,
                    &*self.shared,
                    &self.checks,
                    tenant,
                    suspended_by.is_some(),
                )
                .await
                {
                    Ok(changes) if !changes.is_empty() => {
                        let note = format!("channel bridge: {}", changes.join("; "));
                        progress.push(("ChannelBridge", note));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "channel bridge not ensured");
                        if let Some(m) = &self.metrics {
                            m.error("bridge");
                        }
                    }
                }
            }
            Isolation::Shared => {
                let s = shared::ensure(
                    &self.cluster,
                    &self.config,
                    &*self.shared,
                    tenant,
                    suspended_by.is_some(),
                )
                .await;
                if !s.written.is_empty() {
                    let note = format!("wrote Secret(s) {}", s.written.join(", "));
                    progress.push(("SecretsWritten", note));
                }
                let changes: Vec<&str> = [&s.database, &s.broker]
                    .iter()
                    .filter_map(|p| p.result.as_ref().ok())
                    .flat_map(|e| e.changes.iter().map(String::as_str))
                    .collect();
                if !changes.is_empty() {
                    let note = format!("shared services: {}", changes.join("; "));
                    self.event(tenant, false, "SharedProvisioned", "Apply", &note)
                        .await;
                }
                for (type_, part) in [
                    (status::DATABASE_READY, &s.database),
                    (status::BROKER_READY, &s.broker),
                ] {
                    let Err(e) = &part.result else { continue };
                    tracing::warn!(error = %e, "shared service not provisioned");
                    if let Some(m) = &self.metrics {
                        m.error(match e {
                            shared::PartError::Backend(b) => b.label(),
                            shared::PartError::Secret { .. } => "secret",
                        });
                    }
                    // One event per new failure, not one per retry.
                    let message = e.to_string();
                    if !status::has_condition(tenant.status.as_ref(), type_, e.reason(), &message) {
                        self.event(tenant, true, e.reason(), "Apply", &message)
                            .await;
                    }
                }
                shared_out = Some(s);
            }
        }
        let stale = &applied.deleted;
        let counts = applied.counts;
        if let Some(m) = &self.metrics {
            m.objects_applied(applied.writes() as u64);
        }
        let applied_note = (applied.writes() > 0 || !stale.is_empty()).then(|| {
            let mut note = format!(
                "applied {} object(s) ({} created, {} updated, {} drift repaired)",
                counts.iter().sum::<usize>(),
                counts[0],
                counts[1],
                counts[2]
            );
            if !applied.replaced.is_empty() {
                let list: Vec<String> = applied
                    .replaced
                    .iter()
                    .map(|(k, why)| format!("{k} ({why})"))
                    .collect();
                note.push_str(&format!("; replaced {}", list.join(", ")));
            }
            if !stale.is_empty() {
                let list: Vec<String> = stale.iter().map(ToString::to_string).collect();
                note.push_str(&format!("; deleted {}", list.join(", ")));
            }
            note
        });
        self.report_progress(tenant, applied_note, progress).await;
        for p in applied.problems.iter().filter(|p| p.permanent()) {
            if let Some(m) = &self.metrics {
                m.error("rejected");
            }
            // One event per new refusal, not one per retry (the condition holds the message).
            let shown = tenant.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == p.part && c.message.contains(&p.message))
            });
            if !shown {
                self.event(tenant, true, objects::REJECTED, "Apply", &p.message)
                    .await;
            }
        }

        // Status.
        let cx = render::Context::new(tree, id, &self.config);
        let conds = self
            .conditions(
                tenant,
                &cx,
                Found {
                    suspended_by: suspended_by.as_deref(),
                    secrets: secrets.as_ref(),
                    shared: shared_out.as_ref(),
                    key,
                    data_key: data_key.as_ref(),
                    problems: &applied.problems,
                },
            )
            .await?;
        let key_status = conds.1;
        let mut parts = conds.0;
        let ready = status::ready_from(&parts);
        let rejected = applied.problems.iter().any(Problem::permanent);
        let phase = if suspended_by.is_some() {
            Phase::Suspended
        } else if rejected {
            Phase::Failed
        } else {
            status::phase_from(&ready)
        };
        parts.push(ready);
        let node = tree.node(id);
        let facts = TreeFacts {
            depth: cx.depth,
            path: cx.path.clone(),
            namespace: cx.namespace.clone(),
            effective_limits: Some(cx.effective_limits.clone()),
            usage: Some(UsageStatus {
                own: node.own,
                subtree: node.subtree,
            }),
        };
        let mut new = status::build(
            tenant.status.as_ref(),
            phase,
            parts,
            facts,
            key_status,
            tenant.metadata.generation,
            &now(),
        );
        if tenant.spec.isolation == Isolation::Siloed {
            new.endpoints = Some(Endpoints {
                database: Some(format!(
                    "{}.{}.svc:{}",
                    database::DATABASE_NAME,
                    cx.namespace,
                    database::DATABASE_PORT
                )),
                mqtt: Some(format!(
                    "{}.{}.svc:{}",
                    broker::BROKER_NAME,
                    cx.namespace,
                    broker::BROKER_TLS_PORT
                )),
            });
            new.secrets = [
                ("database", database::DATABASE_SECRET),
                ("mqtt", broker::BROKER_CREDENTIALS_SECRET),
                ("mqttTls", broker::BROKER_TLS_SECRET),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        } else {
            let endpoint = |p: Option<&shared::Part>| p.and_then(|p| p.endpoint.clone());
            new.endpoints = Some(Endpoints {
                database: endpoint(shared_out.as_ref().map(|s| &s.database)),
                mqtt: endpoint(shared_out.as_ref().map(|s| &s.broker)),
            })
            .filter(|e| e.database.is_some() || e.mqtt.is_some());
            new.secrets = [
                ("database", database::DATABASE_SECRET),
                ("mqtt", broker::BROKER_CREDENTIALS_SECRET),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        }
        let previous_phase = tenant.status.as_ref().and_then(|s| s.phase);
        // Per-tenant series only when asked for (`metrics.perTenant`): they grow with the tree.
        if let Some(m) = &self.metrics
            && self.config.metrics.per_tenant
        {
            m.record_tenant(name, &cx.effective_limits, &node.subtree);
        }
        let written = self.write_status(tenant, new).await?;
        if written && previous_phase != Some(phase) {
            let (warning, reason, note) = match phase {
                Phase::Suspended => (
                    false,
                    "Suspended",
                    format!(
                        "suspended by {}: non-admin access removed, workloads scaled to 0",
                        suspended_by.as_deref().unwrap_or(name)
                    ),
                ),
                // Workloads scaled up again are not ready at once: resuming shows as
                // Suspended → Provisioning → Ready, with Resumed at the first step.
                Phase::Ready if previous_phase == Some(Phase::Suspended) => {
                    (false, "Resumed", "service restored".to_string())
                }
                Phase::Provisioning if previous_phase == Some(Phase::Suspended) => (
                    false,
                    "Resumed",
                    "service restored; waiting for the workloads to become ready".to_string(),
                ),
                Phase::Ready => (
                    false,
                    "Ready",
                    "every part of the silo is ready".to_string(),
                ),
                // The Rejected events above name the objects.
                Phase::Failed => (
                    true,
                    "Failed",
                    "the API server refused part of the silo (see the conditions)".to_string(),
                ),
                _ => (
                    false,
                    "Provisioning",
                    "waiting for the silo to become ready".to_string(),
                ),
            };
            self.event(tenant, warning, reason, "Reconcile", &note)
                .await;
        }
        // A refusal is permanent for this spec: the change of spec (or of an owned object)
        // triggers a new attempt; the periodic resync catches a cluster fixed meanwhile.
        let next = match phase {
            Phase::Ready | Phase::Suspended | Phase::Failed => Next::Requeue(RESYNC),
            _ => Next::Requeue(WAIT_READY),
        };
        Ok(Outcome {
            next,
            phase,
            applied: applied.writes(),
            deleted: stale.len(),
            status_written: written,
        })
    }

    /// The part conditions (without Ready) and the key status.
    async fn conditions(
        &self,
        tenant: &Tenant,
        cx: &render::Context<'_>,
        found: Found<'_>,
    ) -> Result<(Vec<Cond>, Option<crate::types::tenant::KeyStatus>), Error> {
        let Found {
            suspended_by,
            secrets,
            shared: shared_out,
            key,
            data_key,
            problems,
        } = found;
        let ns = cx.namespace.as_str();
        let mut out = vec![Cond::new(
            status::NAMESPACE_READY,
            Truth::True,
            "Applied",
            format!("namespace {ns} with quota, limit range and network policy applied"),
        )];
        out.push(match suspended_by {
            Some(by) => Cond::new(
                status::ACCESS_READY,
                Truth::True,
                "Suspended",
                format!("suspended by {by}: only admins keep access"),
            ),
            None => Cond::new(
                status::ACCESS_READY,
                Truth::True,
                "Applied",
                format!(
                    "roles and bindings for {} admin(s) and {} member(s) applied",
                    tenant.spec.admins.len() + cx.ancestor_admins.len(),
                    tenant.spec.members.len()
                ),
            ),
        });
        match tenant.spec.isolation {
            Isolation::Siloed => {
                let db = ObjectKey::new("StatefulSet", Some(ns), database::DATABASE_NAME);
                let mq = ObjectKey::new("Deployment", Some(ns), broker::BROKER_NAME);
                let db_ready = self.cluster.readiness(&db).await?;
                let mq_ready = self.cluster.readiness(&mq).await?;
                let failed = |e: Option<&super::secrets::SecretError>| {
                    e.map(|e| format!("credential Secret missing: {e}"))
                };
                // (The same message gates the SecretFailed event in `apply`.)
                out.push(match failed(secrets.and_then(|s| s.database.as_ref())) {
                    Some(msg) => {
                        Cond::new(status::DATABASE_READY, Truth::False, "SecretMissing", msg)
                    }
                    None => workload_cond(status::DATABASE_READY, &db, db_ready, suspended_by),
                });
                out.push(match failed(secrets.and_then(|s| s.broker.as_ref())) {
                    Some(msg) => {
                        Cond::new(status::BROKER_READY, Truth::False, "SecretMissing", msg)
                    }
                    // MQTT prohibited (connection cap 0): the broker is meant not to run.
                    None if suspended_by.is_none() && !broker::runs(cx) => Cond::new(
                        status::BROKER_READY,
                        Truth::True,
                        "Prohibited",
                        format!(
                            "MQTT connection cap is 0: Deployment {ns}/{} runs no replica",
                            broker::BROKER_NAME
                        ),
                    ),
                    None => workload_cond(status::BROKER_READY, &mq, mq_ready, suspended_by),
                });
            }
            Isolation::Shared => {
                out.push(shared_cond(
                    status::DATABASE_READY,
                    "database",
                    shared_out.map(|s| &s.database),
                    suspended_by,
                ));
                out.push(shared_cond(
                    status::BROKER_READY,
                    "broker client",
                    shared_out.map(|s| &s.broker),
                    suspended_by,
                ));
            }
        }
        let key_status = match key {
            KeyState::Ready(k) => {
                out.push(match data_key {
                    Some(Err(e)) => Cond::new(
                        status::KEY_READY,
                        Truth::False,
                        "DataKeyFailed",
                        format!("key {} version {}; data key: {e}", k.id, k.version),
                    ),
                    _ => Cond::new(
                        status::KEY_READY,
                        Truth::True,
                        "KeyReady",
                        format!(
                            "key {} version {}; data key in Secret {}",
                            k.id,
                            k.version,
                            super::data_key::DATA_KEY_SECRET
                        ),
                    ),
                });
                Some(k)
            }
            KeyState::NotConfigured => {
                out.push(Cond::new(
                    status::KEY_READY,
                    Truth::Unknown,
                    "NoKeyProvider",
                    "no key provider is wired into this operator",
                ));
                None
            }
        };
        let n = tenant.spec.channels.len();
        out.push(Cond::new(
            status::CHANNELS_READY,
            Truth::True,
            "Visible",
            format!("{n} channel(s) in use, each visible to the tenant"),
        ));
        // Objects refused or being replaced override what their part would otherwise say.
        for c in &mut out {
            let mine: Vec<&Problem> = problems.iter().filter(|p| p.part == c.type_).collect();
            let Some(first) = mine.iter().find(|p| p.permanent()).or(mine.first()) else {
                continue;
            };
            let message = mine
                .iter()
                .map(|p| p.message.as_str())
                .collect::<Vec<_>>()
                .join("; ");
            *c = Cond::new(c.type_, Truth::False, first.reason, message);
        }
        Ok((out, key_status))
    }

    /// The tenant's key after an on-demand rotation request (annotation
    /// [`ROTATE_KEY_ANNOTATION`], handled once per value), and its data key Secret.
    async fn tenant_key(
        &self,
        tenant: &Tenant,
        key: KeyState,
        progress: &mut Vec<(&'static str, String)>,
    ) -> Result<
        (
            KeyState,
            Option<Result<Option<String>, super::secrets::SecretError>>,
        ),
        Error,
    > {
        let KeyState::Ready(mut k) = key else {
            return Ok((key, None));
        };
        let handled = tenant
            .status
            .as_ref()
            .and_then(|s| s.key.as_ref())
            .and_then(|k| k.rotation_request.clone());
        let request = tenant
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ROTATE_KEY_ANNOTATION))
            .filter(|r| !r.is_empty());
        k.rotation_request = handled.clone();
        if let Some(req) = request
            && handled.as_ref() != Some(req)
        {
            let from = k.version;
            k = self.keys.rotate_now(tenant.name()).await?;
            k.rotation_request = Some(req.clone());
            self.event(
                tenant,
                false,
                "KeyRotated",
                "RotateKey",
                &format!(
                    "key {} rotated on request {req:?}: version {from} → {}",
                    k.id, k.version
                ),
            )
            .await;
        }
        let ns = self.config.namespace_for(tenant.name());
        let dk = super::data_key::ensure(&self.cluster, &*self.keys, &self.checks, tenant, &ns, &k)
            .await;
        match &dk {
            Ok(Some(s)) => progress.push((
                "DataKeyWritten",
                format!(
                    "data key wrapped by key {} version {} in Secret {s}",
                    k.id, k.version
                ),
            )),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "data key not ensured");
                if let Some(m) = &self.metrics {
                    m.error("data_key");
                }
            }
        }
        Ok((KeyState::Ready(k), Some(dk)))
    }

    /// Cleanup path (the tenant has a deletion timestamp).
    async fn cleanup(
        &self,
        tree: &TenantTree,
        id: NodeId,
        tenant: &Tenant,
    ) -> Result<Outcome, Error> {
        let name = tenant.name();
        let mut out = Outcome {
            next: Next::AwaitChange,
            phase: Phase::Deleting,
            applied: 0,
            deleted: 0,
            status_written: false,
        };
        if !has_finalizer(tenant) {
            return Ok(out);
        }
        let children = &tree.node(id).children;
        if !children.is_empty() {
            let names: Vec<&str> = children.iter().map(|&c| tree.name(c)).collect();
            let (reason, message) = match tenant.spec.deletion_policy {
                DeletionPolicy::Retain => (
                    "DeletionBlocked",
                    format!(
                        "deletionPolicy Retain: {} child tenant(s) still exist ({}); delete them first or set deletionPolicy: Cascade",
                        names.len(),
                        names.join(", ")
                    ),
                ),
                DeletionPolicy::Cascade => {
                    // Bottom-up: delete the leaves of the subtree; their parents follow once
                    // they are gone.
                    let mut started = Vec::new();
                    for d in tree.descendants(id) {
                        let t = tree.tenant(d);
                        if tree.node(d).children.is_empty()
                            && t.metadata.deletion_timestamp.is_none()
                        {
                            self.cluster.delete_tenant(t.name()).await?;
                            started.push(t.name().to_string());
                        }
                    }
                    out.deleted = started.len();
                    (
                        "DeletingDescendants",
                        format!(
                            "deletionPolicy Cascade: deleting {} descendant tenant(s) bottom-up{}",
                            tree.descendants(id).len(),
                            if started.is_empty() {
                                String::new()
                            } else {
                                format!("; now deleting {}", started.join(", "))
                            }
                        ),
                    )
                }
            };
            let ready = Cond::new(status::READY, Truth::False, reason, message.clone());
            let new = status::build(
                tenant.status.as_ref(),
                Phase::Deleting,
                vec![ready],
                TreeFacts::default(),
                None,
                tenant.metadata.generation,
                &now(),
            );
            out.status_written = self.write_status(tenant, new).await?;
            if out.status_written || out.deleted > 0 {
                let warning = reason == "DeletionBlocked";
                self.event(tenant, warning, reason, "Delete", &message)
                    .await;
            }
            out.next = Next::Requeue(WAIT_DELETE);
            return Ok(out);
        }
        // No children left: leave the shared services (the database is kept for
        // `retentionDays`), shred the key, remove the namespace with all it holds, let go.
        let mut left = Vec::new();
        if tenant.spec.isolation == Isolation::Shared {
            let now_unix = time::OffsetDateTime::now_utc().unix_timestamp();
            left = shared::leave_shared(&*self.shared, name, now_unix).await?;
        }
        // A Siloed tenant's bridge identity on the channel endpoint goes with it.
        let bridge = crate::render::broker::bridge_username(name);
        match self.shared.remove_broker_client(&bridge, &bridge).await {
            Ok(true) => left.push(format!("bridge identity {bridge} removed")),
            Ok(false) | Err(crate::backends::BackendError::NotConfigured { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        self.keys.schedule_key_deletion(name).await?;
        let ns = ObjectKey::new("Namespace", None, &self.config.namespace_for(name));
        self.cluster.delete(&ns).await?;
        self.event(
            tenant,
            false,
            "Deleted",
            "Delete",
            &format!(
                "namespace {} deleted and key scheduled for deletion{}",
                ns.name,
                if left.is_empty() {
                    String::new()
                } else {
                    format!("; {}", left.join("; "))
                }
            ),
        )
        .await;
        set_finalizer(&self.cluster, tenant, false).await?;
        self.checks.forget_namespace(&ns.name);
        if let Some(m) = &self.metrics {
            m.forget_tenant(name);
        }
        out.deleted = 1;
        Ok(out)
    }

    /// Write the status when it differs from the stored one. Returns whether it wrote.
    async fn write_status(&self, tenant: &Tenant, new: TenantStatus) -> Result<bool, Error> {
        if tenant.status.as_ref() == Some(&new) {
            return Ok(false);
        }
        self.cluster.patch_status(tenant.name(), &new).await?;
        Ok(true)
    }

    /// The apply step's events: one `Applied` event when objects were applied or deleted
    /// (`applied`), whose note also carries the details of applying (`progress`: Secrets
    /// and the data key written, channel bridge changes) — so a new tenant gets one event for
    /// everything it was given instead of one per part, and each event is a write to the API
    /// server. Without an `Applied` event each detail is its own event. Every detail still
    /// reaches the audit trail under its own reason.
    async fn report_progress(
        &self,
        tenant: &Tenant,
        applied: Option<String>,
        progress: Vec<(&'static str, String)>,
    ) {
        let Some(mut note) = applied else {
            for (reason, detail) in &progress {
                self.event(tenant, false, reason, "Apply", detail).await;
            }
            return;
        };
        for (reason, detail) in &progress {
            self.record(tenant, false, reason, "Apply", detail);
            note.push_str("; ");
            note.push_str(detail);
        }
        self.event(tenant, false, "Applied", "Apply", &note).await;
    }

    /// Queue the audit record of an event when it is significant (without publishing it).
    fn record(&self, tenant: &Tenant, warning: bool, reason: &str, action: &str, note: &str) {
        if let Some(a) = &self.audit {
            a.event(tenant, warning, reason, action, note);
        }
    }

    /// Publish an event (and queue its audit record when it is significant); a failure to
    /// publish is logged, never fails the reconcile.
    async fn event(&self, tenant: &Tenant, warning: bool, reason: &str, action: &str, note: &str) {
        self.record(tenant, warning, reason, action, note);
        let ev = EventInfo {
            warning,
            reason: reason.to_string(),
            action: action.to_string(),
            note: note.to_string(),
        };
        if let Err(e) = self.cluster.publish_event(tenant, &ev).await {
            tracing::warn!(error = %e, reason, "could not publish event");
        }
    }

    /// Report a failed reconcile: metric and a Warning event.
    pub async fn report_error(&self, tenant: &Tenant, error: &Error) {
        if let Some(m) = &self.metrics {
            m.error(error.metric_label());
        }
        self.event(
            tenant,
            true,
            error.event_reason(),
            "Reconcile",
            &error.to_string(),
        )
        .await;
    }
}

fn workload_cond(
    type_: &'static str,
    key: &ObjectKey,
    readiness: Option<super::cluster::Readiness>,
    suspended_by: Option<&str>,
) -> Cond {
    let what = format!(
        "{} {}/{}",
        key.kind,
        key.namespace.as_deref().unwrap_or_default(),
        key.name
    );
    if let Some(by) = suspended_by {
        return Cond::new(
            type_,
            Truth::False,
            "Suspended",
            format!("{what} scaled to 0 while suspended by {by}"),
        );
    }
    match readiness {
        None => Cond::new(
            type_,
            Truth::False,
            "Missing",
            format!("{what} does not exist yet"),
        ),
        Some(r) if r.ready >= 1 && r.ready >= r.desired => Cond::new(
            type_,
            Truth::True,
            "Ready",
            format!("{what} has {}/{} ready replicas", r.ready, r.desired),
        ),
        Some(r) => Cond::new(
            type_,
            Truth::False,
            "NotReady",
            format!("{what} has {}/{} ready replicas", r.ready, r.desired.max(1)),
        ),
    }
}

/// DatabaseReady / BrokerReady of a Shared tenant.
fn shared_cond(
    type_: &'static str,
    what: &str,
    part: Option<&shared::Part>,
    suspended_by: Option<&str>,
) -> Cond {
    let Some(part) = part else {
        return Cond::new(
            type_,
            Truth::Unknown,
            "NotChecked",
            format!("shared {what} not checked"),
        );
    };
    let at = part.endpoint.as_deref().unwrap_or("the shared service");
    match (&part.result, suspended_by) {
        (Err(e), _) => Cond::new(type_, Truth::False, e.reason(), e.to_string()),
        (Ok(_), Some(by)) => Cond::new(
            type_,
            Truth::False,
            "Suspended",
            format!("shared {what} at {at} disabled while suspended by {by} (data kept)"),
        ),
        (Ok(_), None) => Cond::new(
            type_,
            Truth::True,
            "Provisioned",
            format!("dedicated {what} with its own credentials at {at}"),
        ),
    }
}
