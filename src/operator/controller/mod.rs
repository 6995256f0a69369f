//! `silo operator`: start-up checks, leader election and graceful shutdown; the leader runs
//! the Tenant controller ([`tenants`]: watches, reconcile glue, channel status) and the
//! [`housekeeping`]; every replica keeps the one tenant tree
//! ([`crate::operator::admission::start_tree`]) and serves the [`probes`] and the admission
//! webhook.
//! [`mappers`] says which tenants a change concerns.

pub mod cached;
pub mod guard;
pub mod housekeeping;
pub mod leader;
pub mod list_gate;
pub mod mappers;
pub mod probes;
pub mod resync;
pub mod tenants;

use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Router;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::Api;
use tokio::sync::watch;

use crate::backends::SharedServices;
use crate::config::PlatformConfig;
use crate::operator::key_service::KeyService;

use leader::LeaseLock;
use probes::{ReplicaState, http_router};
use tenants::run_controller;

/// The CRDs the operator needs, by name.
pub const REQUIRED_CRDS: [&str; 3] = [
    "tenants.silo.dev",
    "limitprofiles.silo.dev",
    "channels.silo.dev",
];
pub const LEASE_NAME: &str = "silo-operator";

/// Objects per page of a watch's initial list (kube's default is 500). Every watch of the
/// leader (13 kinds) and of the webhook (3) lists at start, all at once, and a page is held
/// decoded, managedFields included, until its objects are processed: smaller pages lower the
/// restart's memory peak for a few more list requests (300 for 60,000 Secrets).
pub const WATCH_PAGE_SIZE: u32 = 200;

/// The watcher configuration of every watch of the operator and its webhook. List-then-watch
/// (kube's default initial list strategy), which [`list_gate`] relies on: a streaming list
/// emits no `Init` and would pass the gate ungated.
pub fn watch_config() -> kube::runtime::watcher::Config {
    kube::runtime::watcher::Config::default().page_size(WATCH_PAGE_SIZE)
}

/// Why `silo operator` could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("no Kubernetes configuration: {0} (set KUBECONFIG or run in a cluster)")]
    Config(String),
    #[error("cannot reach the Kubernetes API server at {server}: {reason}")]
    Unreachable { server: String, reason: String },
    #[error(
        "CustomResourceDefinition {0} is not installed: apply it with `silo crds | kubectl apply -f -`"
    )]
    MissingCrd(String),
    #[error("CustomResourceDefinition {0} is not established after {1}s")]
    CrdNotEstablished(String, u64),
    #[error("cannot serve {what} on {addr}: {reason}")]
    Listen {
        what: &'static str,
        addr: SocketAddr,
        reason: String,
    },
    #[error("leader election: {0}")]
    Leadership(String),
}

/// Options of `silo operator`.
pub struct Options {
    pub config: PlatformConfig,
    /// Address of `/healthz`, `/readyz`, `/metrics`.
    pub metrics_addr: SocketAddr,
    /// Where the leader-election Lease lives.
    pub lease_namespace: String,
    /// This replica's identity (pod name).
    pub identity: String,
    pub keys: Arc<dyn KeyService>,
    /// The shared PostgreSQL and Mosquitto of Shared tenants.
    pub shared: Arc<dyn SharedServices>,
    /// Extra routes served beside the probes (the admission webhook plugs in here).
    pub extra_routes: Option<Router>,
    /// The admission webhook, served on every replica (None: not served).
    pub admission: Option<crate::operator::admission::AdmissionOptions>,
}

/// Wait for the CRDs to exist and be established; the first call also proves the API
/// server is reachable.
pub async fn wait_for_crds(client: &Client, server: &str) -> Result<(), StartError> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    const WAIT_SECS: u64 = 60;
    for name in REQUIRED_CRDS {
        let started = Instant::now();
        loop {
            let crd = api.get_opt(name).await.map_err(|e| match e {
                kube::Error::Api(s) => StartError::Unreachable {
                    server: server.to_string(),
                    reason: format!("reading CRD {name}: {} ({})", s.message, s.code),
                },
                other => StartError::Unreachable {
                    server: server.to_string(),
                    reason: root_cause(&other),
                },
            })?;
            let Some(crd) = crd else {
                return Err(StartError::MissingCrd(name.to_string()));
            };
            let established = crd
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            if established {
                break;
            }
            if started.elapsed().as_secs() >= WAIT_SECS {
                return Err(StartError::CrdNotEstablished(name.to_string(), WAIT_SECS));
            }
            tracing::info!(crd = name, "waiting for the CRD to be established");
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
    Ok(())
}

/// The innermost cause of an error, e.g. "Connection refused (os error 111)".
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// Resolves on SIGTERM or Ctrl-C.
async fn termination() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// `silo operator`.
pub async fn run(opts: Options) -> Result<(), StartError> {
    let kube_config = kube::Config::infer()
        .await
        .map_err(|e| StartError::Config(e.to_string()))?;
    let server = kube_config.cluster_url.to_string();
    let client = Client::try_from(kube_config).map_err(|e| StartError::Config(root_cause(&e)))?;
    wait_for_crds(&client, &server).await?;
    tracing::info!(%server, "API server reachable, CRDs established");

    let replica = Arc::new(ReplicaState::new(true));
    let tree = crate::operator::admission::start_tree(&client, &opts.config, &replica);
    let webhook = match opts.admission.clone() {
        Some(a) => Some(
            crate::operator::admission::spawn(
                client.clone(),
                tree.clone(),
                replica.clone(),
                a.clone(),
            )
            .map_err(|e| StartError::Listen {
                what: "the admission webhook",
                addr: a.addr,
                reason: e.to_string(),
            })?,
        ),
        None => None,
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let trimmer = crate::heap::spawn_trimmer(crate::heap::TRIM_EVERY);

    let mut router = http_router(replica.clone());
    if let Some(extra) = opts.extra_routes {
        router = router.merge(extra);
    }
    let listener = tokio::net::TcpListener::bind(opts.metrics_addr)
        .await
        .map_err(|e| StartError::Listen {
            what: "/metrics and probes",
            addr: opts.metrics_addr,
            reason: e.to_string(),
        })?;
    let mut http_stop = stop_rx.clone();
    let http = tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = http_stop.wait_for(|s| *s).await;
            })
            .await;
    });

    let lock = LeaseLock::new(
        Api::namespaced(client.clone(), &opts.lease_namespace),
        LEASE_NAME,
        &opts.identity,
        Duration::from_secs(15),
    );
    let term = termination();
    tokio::pin!(term);
    let mut controller: Option<tokio::task::JoinHandle<()>> = None;
    let mut last_renewed = Instant::now();
    let mut outcome = Ok(());
    loop {
        match lock.try_acquire_or_renew().await {
            Ok(true) => {
                last_renewed = Instant::now();
                if controller.is_none() {
                    tracing::info!(
                        identity = lock.identity(),
                        "acquired leadership, starting controllers"
                    );
                    replica.leading.store(true, Ordering::Relaxed);
                    controller = Some(tokio::spawn(run_controller(
                        client.clone(),
                        tree.clone(),
                        opts.config.clone(),
                        opts.keys.clone(),
                        opts.shared.clone(),
                        replica.metrics.clone(),
                        stop_rx.clone(),
                    )));
                }
            }
            Ok(false) => {
                if controller.is_some() {
                    outcome = Err(StartError::Leadership(
                        "lost the lease to another replica; stopping".to_string(),
                    ));
                    break;
                }
            }
            Err(kube::Error::Api(s)) if s.code == 403 => {
                outcome = Err(StartError::Leadership(format!(
                    "not allowed to use Lease {LEASE_NAME} in namespace {}: {}",
                    opts.lease_namespace, s.message
                )));
                break;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot renew the leader lease");
                if controller.is_some() && last_renewed.elapsed() > lock.duration() {
                    outcome = Err(StartError::Leadership(format!(
                        "could not renew the lease for {}s: {e}",
                        lock.duration().as_secs()
                    )));
                    break;
                }
            }
        }
        tokio::select! {
            _ = &mut term => {
                tracing::info!("termination signal received, shutting down");
                break;
            }
            _ = tokio::time::sleep(lock.renew_interval()) => {}
        }
    }
    let _ = stop_tx.send(true);
    replica.leading.store(false, Ordering::Relaxed);
    if let Some(c) = controller {
        let _ = tokio::time::timeout(Duration::from_secs(20), c).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), http).await;
    if let Some(w) = webhook {
        w.abort();
    }
    if let Some(t) = trimmer {
        t.abort();
    }
    outcome
}
