//! The only part of the webhook that talks to the Kubernetes API: reading and server-side
//! applying the certificate Secret and the ValidatingWebhookConfiguration (field manager
//! [`FIELD_MANAGER`], forced), and the loop that keeps them current and reloads the
//! serving certificate without downtime.

use std::time::Duration;

use axum_server::tls_rustls::RustlsConfig;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use time::OffsetDateTime;

use super::tls::{
    CertAction, CertBundle, FIELD_MANAGER, RotationPolicy, TlsError, WebhookEndpoint,
    desired_secret, desired_webhook_configuration, ensure_serving_cert,
};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("cannot read Secret {namespace}/{name}: {source}")]
    ReadSecret {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot apply Secret {namespace}/{name}: {source}")]
    ApplySecret {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot apply ValidatingWebhookConfiguration {name}: {source}")]
    ApplyWebhook {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot load the renewed certificate into the server: {0}")]
    Reload(#[source] std::io::Error),
}

/// Where the certificate Secret lives and how the webhook is reached.
#[derive(Clone, Debug)]
pub struct CertSettings {
    pub namespace: String,
    pub secret_name: String,
    pub endpoint: WebhookEndpoint,
    pub policy: RotationPolicy,
    pub timeout_seconds: i32,
}

fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// Reads the stored bundle; None when the Secret does not exist or is incomplete.
pub async fn read_cert_secret(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<Option<CertBundle>, ApplyError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let s = api
        .get_opt(name)
        .await
        .map_err(|source| ApplyError::ReadSecret {
            namespace: namespace.into(),
            name: name.into(),
            source,
        })?;
    Ok(s.as_ref().and_then(CertBundle::from_secret))
}

/// Server-side applies the certificate Secret.
pub async fn apply_secret(client: &Client, secret: &Secret) -> Result<Secret, ApplyError> {
    let namespace = secret.metadata.namespace.clone().unwrap_or_default();
    let name = secret.metadata.name.clone().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    api.patch(&name, &apply_params(), &Patch::Apply(secret))
        .await
        .map_err(|source| ApplyError::ApplySecret {
            namespace,
            name,
            source,
        })
}

/// Server-side applies the ValidatingWebhookConfiguration.
pub async fn apply_webhook_configuration(
    client: &Client,
    config: &ValidatingWebhookConfiguration,
) -> Result<ValidatingWebhookConfiguration, ApplyError> {
    let name = config.metadata.name.clone().unwrap_or_default();
    let api: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    api.patch(&name, &apply_params(), &Patch::Apply(config))
        .await
        .map_err(|source| ApplyError::ApplyWebhook { name, source })
}

/// One pass: read the Secret, keep/renew/create the certificates, store them if they
/// changed, and apply the webhook configuration with the current `caBundle`. The new
/// certificate is applied (and its CA trusted) before the caller starts serving it.
pub async fn reconcile_certificates(
    client: &Client,
    settings: &CertSettings,
    now: OffsetDateTime,
) -> Result<(CertBundle, CertAction), ApplyError> {
    let existing = read_cert_secret(client, &settings.namespace, &settings.secret_name).await?;
    let (bundle, action) = ensure_serving_cert(
        existing.as_ref(),
        &settings.endpoint.sans(),
        now,
        &settings.policy,
    )?;
    if action != CertAction::Kept || existing.as_ref() != Some(&bundle) {
        apply_secret(
            client,
            &desired_secret(&settings.namespace, &settings.secret_name, &bundle),
        )
        .await?;
    }
    apply_webhook_configuration(
        client,
        &desired_webhook_configuration(
            &settings.endpoint,
            &bundle.ca_bundle(),
            settings.timeout_seconds,
        ),
    )
    .await?;
    Ok((bundle, action))
}

/// Keeps the certificates current forever: every `every`, reconcile and, when the serving
/// certificate changed, hot-reload it into `server` (open connections are not dropped).
/// Errors are logged and retried on the next tick.
pub async fn maintain_certificates(
    client: Client,
    settings: CertSettings,
    server: RustlsConfig,
    mut current: Option<CertBundle>,
    every: Duration,
) {
    loop {
        match reconcile_certificates(&client, &settings, OffsetDateTime::now_utc()).await {
            Ok((bundle, action)) => {
                match super::server::reload_if_changed(&server, current.as_ref(), &bundle).await {
                    Ok(true) => {
                        tracing::info!(?action, "webhook serving certificate rotated");
                        current = Some(bundle);
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::error!(error = %ApplyError::Reload(e), "webhook certificate rotation failed")
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "webhook certificate reconciliation failed"),
        }
        tokio::time::sleep(every).await;
    }
}
