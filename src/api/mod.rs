//! The control-plane REST API (`silo api`, SPEC "REST API"): resellers manage their own
//! subtree of tenants with bearer tokens bound to one tenant and one role.
//!
//! - [`server`]: state, authentication, the single write path ([`server::Api::mutate`], where
//!   audit records and requested actions will hook in), router + OpenAPI document, probes.
//! - [`routes`]: the `/v1` endpoints, one module per resource.
//! - [`audit_layer`]: one audit record per mutating call, and the `202` requested action
//!   replacing a refusal for a requestable permission ([`requests`]).
//! - [`auth`]: token format, hashing, constant-time comparison.
//! - [`authz`]: the caller, its subtree scope (one 404 outside), permissions, no escalation.
//! - [`store`]: PostgreSQL (tokens, creation ledger) with refinery migrations from
//!   `migrations/`.
//! - [`cache`]: the watch-fed tree (the admission webhook's [`crate::webhook::TreeView`]) plus
//!   what responses show beyond it (status).
//! - [`devices`]: the device registry (limits under locks, broker clients, certificates, the
//!   sync with the tenant tree, the device CA files).
//! - [`cluster`]: the Kubernetes side as a small trait, with kube-rs; writes use the field
//!   manager `silo-api`.
//! - [`body`], [`errors`], [`metrics`]: strict JSON bodies, the error shape, `/metrics`.
//! - `testing` (tests and the `test-support` feature only): an in-memory cluster.
//!
//! Kubernetes stays the source of truth for the tree: every change is a write to a Tenant,
//! LimitProfile or Channel, judged by the same rules (and messages) as the webhook, which
//! judges it again when it arrives.

pub mod audit_layer;
pub mod auth;
pub mod authz;
pub mod body;
pub mod cache;
pub mod cluster;
pub mod devices;
pub mod errors;
pub mod metrics;
pub mod permissions;
pub mod requests;
pub mod routes;
pub mod server;
pub mod store;

#[cfg(any(test, feature = "test-support"))]
pub mod testing;

use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::PlatformConfig;
use crate::hierarchy::EngineSettings;

pub use server::{Api, AppState, router, router_and_document};

/// Why `silo api` could not start (one line each).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Kube(#[from] crate::operator::controller::StartError),
    #[error("cannot serve the API on {addr}: {reason}")]
    Listen { addr: SocketAddr, reason: String },
}

/// `silo api`: opens the database (migrating it), checks the cluster, starts the watches and
/// serves until SIGTERM/SIGINT.
pub async fn run(config: PlatformConfig, addr: SocketAddr) -> Result<(), StartError> {
    let store = store::Store::open(&config.api.database).await?;
    tracing::info!(database = store.addr(), "API database ready");
    let kube_config = kube::Config::infer()
        .await
        .map_err(|e| crate::operator::controller::StartError::Config(e.to_string()))?;
    let server = kube_config.cluster_url.to_string();
    let client = kube::Client::try_from(kube_config)
        .map_err(|e| crate::operator::controller::StartError::Config(e.to_string()))?;
    check_cluster(&client, &server).await?;
    tracing::info!(%server, "API server reachable, Tenants served");
    let cluster = Arc::new(cluster::KubeApiCluster::new(client));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| StartError::Listen {
            addr,
            reason: e.to_string(),
        })?;
    let cache = Arc::new(cache::Cache::new(EngineSettings::from(&config)));
    let events = cluster::ApiCluster::events(cluster.as_ref());
    tokio::spawn(cache.clone().feed(events));
    let api = Arc::new(Api::new(cache, cluster, store, config));
    tokio::spawn(devices::sync_loop(
        api.clone(),
        std::time::Duration::from_secs(15),
    ));
    tracing::info!(%addr, "silo api serving");
    axum::serve(listener, router(api))
        .with_graceful_shutdown(termination())
        .await
        .map_err(|e| StartError::Listen {
            addr,
            reason: e.to_string(),
        })
}

/// One LIST of Tenants (limit 1) with the API's own rights: proves the API server answers,
/// the CRDs are installed and the ServiceAccount may read them (the API holds no right on
/// CustomResourceDefinitions).
async fn check_cluster(
    client: &kube::Client,
    server: &str,
) -> Result<(), crate::operator::controller::StartError> {
    use crate::operator::controller::StartError;
    let api: kube::Api<crate::types::Tenant> = kube::Api::all(client.clone());
    match api.list(&kube::api::ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => {
            Err(StartError::MissingCrd("tenants.silo.dev".into()))
        }
        Err(kube::Error::Api(s)) => Err(StartError::Unreachable {
            server: server.to_string(),
            reason: format!("listing Tenants: {} ({})", s.message, s.code),
        }),
        Err(e) => {
            let mut cause: &dyn std::error::Error = &e;
            while let Some(next) = cause.source() {
                cause = next;
            }
            Err(StartError::Unreachable {
                server: server.to_string(),
                reason: cause.to_string(),
            })
        }
    }
}

async fn termination() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("termination signal received, shutting down");
}

/// `silo token create`: mints a token in the API database (same configuration as `silo api`).
/// The tenant and role are checked against the live tree when the token is used, not here
/// (the command needs no cluster access).
pub async fn create_token_cli(
    config: &PlatformConfig,
    tenant: &str,
    role: &str,
    expires: &str,
    name: Option<&str>,
) -> Result<(store::TokenRecord, String), String> {
    if !crate::config::is_dns_label(tenant) {
        return Err(format!("--tenant {tenant:?} is not a tenant name"));
    }
    if !crate::config::is_dns_label(role) {
        return Err(format!(
            "--role {role:?} must be admin, technician, viewer or a custom role name"
        ));
    }
    let ttl = auth::parse_duration(expires).map_err(|e| format!("--expires: {e}"))?;
    let store = store::Store::open(&config.api.database)
        .await
        .map_err(|e| e.to_string())?;
    let minted = auth::mint();
    let rec = store
        .insert_token(&minted, tenant, role, name, "cli", ttl)
        .await
        .map_err(|e| e.to_string())?;
    Ok((rec, minted.token))
}
