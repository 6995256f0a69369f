//! Credentials: the tenant's key (created, rotated on schedule or on request) and its data key
//! Secret, then the credentials its workloads use — the Secrets a Siloed tenant's workloads
//! mount and its channel bridge ([`secrets`], [`shared::ensure_bridge`]), or a Shared
//! tenant's place on the shared services ([`shared::ensure`]). A failure of one part is kept
//! for its condition; only the key provider failing stops the reconcile.

use crate::types::{Isolation, Tenant};

use super::secrets::{self, Ensured, SecretError};
use super::shared::{self, SharedOutcome};
use super::{ROTATE_KEY_ANNOTATION, Reconciler, status};
use crate::operator::cluster::{Cluster, EventInfo};
use crate::operator::error::Error;
use crate::operator::key_service::TenantKey;

/// What the credentials step found, for the status.
pub(super) struct Credentials {
    pub key: TenantKey,
    /// The data key Secret: the name written, if any (None: no key to wrap it with).
    pub data_key: Option<Result<Option<String>, SecretError>>,
    /// A Siloed tenant's Secrets.
    pub secrets: Option<Ensured>,
    /// A Shared tenant's database and broker client.
    pub shared: Option<SharedOutcome>,
    /// Details of applying for the step's `Applied` event: Secrets and the data key written,
    /// channel bridge changes, as (event reason, note) (see [`Reconciler::report_applied`]).
    pub progress: Vec<(&'static str, String)>,
}

impl<C: Cluster> Reconciler<C> {
    /// The tenant's key first (the credentials kept outside its namespace are sealed with it),
    /// then the Secrets the siloed workloads mount or the tenant's place on the shared
    /// services (the namespace exists now). `suspended`: an ancestor or the tenant itself is
    /// suspended.
    pub(super) async fn credentials(
        &self,
        tenant: &Tenant,
        suspended: bool,
    ) -> Result<Credentials, Error> {
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
        let mut progress = Vec::new();
        let (key, data_key) = self.tenant_key(tenant, key, &mut progress).await?;
        let (secrets, shared) = match tenant.spec.isolation {
            Isolation::Siloed => (
                Some(self.siloed_secrets(tenant, suspended, &mut progress).await),
                None,
            ),
            Isolation::Shared => (
                None,
                Some(self.shared_place(tenant, suspended, &mut progress).await),
            ),
        };
        Ok(Credentials {
            key,
            data_key,
            secrets,
            shared,
            progress,
        })
    }

    /// A Siloed tenant's credential and TLS Secrets, and its bridge on the channel endpoint.
    async fn siloed_secrets(
        &self,
        tenant: &Tenant,
        suspended: bool,
        progress: &mut Vec<(&'static str, String)>,
    ) -> Ensured {
        let s = secrets::ensure(
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
            self.event(tenant, EventInfo::normal("LeftShared", "Apply", &note))
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
            self.count_error("secret");
            // One event per new failure, not one per retry.
            if !status::has_condition(
                tenant.status.as_ref(),
                type_,
                "SecretMissing",
                &status::secret_missing(e),
            ) {
                self.event(
                    tenant,
                    EventInfo::warning("SecretFailed", "Apply", &e.to_string()),
                )
                .await;
            }
        }
        // Master channels reach the tenant's own broker through its bridge.
        match shared::ensure_bridge(
            &self.cluster,
            &self.config,
            &*self.shared,
            &self.checks,
            tenant,
            suspended,
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
                self.count_error("bridge");
            }
        }
        s
    }

    /// A Shared tenant's database and broker client on the shared services, and the Secrets
    /// that point there.
    async fn shared_place(
        &self,
        tenant: &Tenant,
        suspended: bool,
        progress: &mut Vec<(&'static str, String)>,
    ) -> SharedOutcome {
        let s = shared::ensure(
            &self.cluster,
            &self.config,
            &*self.shared,
            tenant,
            suspended,
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
            self.event(
                tenant,
                EventInfo::normal("SharedProvisioned", "Apply", &note),
            )
            .await;
        }
        for (type_, part) in [
            (status::DATABASE_READY, &s.database),
            (status::BROKER_READY, &s.broker),
        ] {
            let Err(e) = &part.result else { continue };
            tracing::warn!(error = %e, "shared service not provisioned");
            self.count_error(match e {
                shared::PartError::Backend(b) => b.label(),
                shared::PartError::Secret { .. } => "secret",
            });
            // One event per new failure, not one per retry.
            let message = e.to_string();
            if !status::has_condition(tenant.status.as_ref(), type_, e.reason(), &message) {
                self.event(tenant, EventInfo::warning(e.reason(), "Apply", &message))
                    .await;
            }
        }
        s
    }

    /// The tenant's key after an on-demand rotation request (annotation
    /// [`ROTATE_KEY_ANNOTATION`], handled once per value), and its data key Secret.
    async fn tenant_key(
        &self,
        tenant: &Tenant,
        key: TenantKey,
        progress: &mut Vec<(&'static str, String)>,
    ) -> Result<(TenantKey, Option<Result<Option<String>, SecretError>>), Error> {
        let TenantKey::Ready(mut k) = key else {
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
                EventInfo::normal(
                    "KeyRotated",
                    "RotateKey",
                    &format!(
                        "key {} rotated on request {req:?}: version {from} → {}",
                        k.id, k.version
                    ),
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
                self.count_error("data_key");
            }
        }
        Ok((TenantKey::Ready(k), Some(dk)))
    }
}
