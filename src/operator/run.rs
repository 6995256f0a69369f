//! `silo operator`: start-up checks, leader election, the Tenant controller with its
//! watches, `/healthz` `/readyz` `/metrics`, and graceful shutdown.

use std::collections::HashMap;
use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use rand::Rng;
use tokio::sync::watch;

use crate::backends::SharedServices;
use crate::config::PlatformConfig;
use crate::hierarchy::{EngineSettings, Inventory, TenantTree};
use crate::render::meta::TENANT_LABEL;
use crate::types::{Channel, LimitProfile, Tenant};

use super::cluster::OwnedKind;
use super::error::Error;
use super::keys::KeyService;
use super::kube_cluster::{KubeCluster, OwnedIndex, SECRET_KIND, owned_api_resource};
use super::leader::LeaseLock;
use super::mappers;
use super::metrics::Metrics;
use super::reconcile::{Next, Reconciler};

/// The CRDs the operator needs, by name.
pub const REQUIRED_CRDS: [&str; 3] = [
    "tenants.silo.dev",
    "limitprofiles.silo.dev",
    "channels.silo.dev",
];
pub const LEASE_NAME: &str = "silo-operator";

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
    pub admission: Option<super::admission::AdmissionOptions>,
}

/// State shared by the probes and the controller.
pub struct Shared {
    pub metrics: Arc<Metrics>,
    /// Start-up checks passed (CRDs present, API reachable).
    pub started: AtomicBool,
    pub leading: AtomicBool,
    /// The admission webhook served by this replica, once spawned: the replica is not ready
    /// (gets no webhook traffic) until its tree is loaded.
    pub webhook: std::sync::OnceLock<Arc<crate::webhook::WebhookState>>,
}

/// `/healthz`, `/readyz`, `/metrics`.
pub fn http_router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(shared)
}

async fn readyz(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    if s.webhook.get().is_some_and(|w| !w.is_ready()) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "starting: the admission webhook's tenant tree is not loaded yet".to_string(),
        );
    }
    if s.started.load(Ordering::Relaxed) {
        let role = if s.leading.load(Ordering::Relaxed) {
            "leader"
        } else {
            "standby"
        };
        (StatusCode::OK, format!("ready ({role})"))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting".to_string())
    }
}

async fn metrics(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
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

/// The tree of all tenants, rebuilt only when a watched Tenant/LimitProfile/Channel changed.
pub struct TreeCache {
    version: AtomicU64,
    cached: Mutex<Option<(u64, Arc<TenantTree>)>>,
    settings: EngineSettings,
}

impl TreeCache {
    pub fn new(settings: EngineSettings) -> Self {
        TreeCache {
            version: AtomicU64::new(1),
            cached: Mutex::new(None),
            settings,
        }
    }

    pub fn bump(&self) {
        self.version.fetch_add(1, Ordering::Release);
    }

    /// Changes seen so far (bumped on every structural change of tenants, profiles, channels).
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    pub fn get(&self, build: impl FnOnce() -> Inventory) -> Arc<TenantTree> {
        let v = self.version.load(Ordering::Acquire);
        let Ok(mut guard) = self.cached.lock() else {
            return Arc::new(TenantTree::build(build(), self.settings.clone()));
        };
        if let Some((cv, tree)) = guard.as_ref()
            && *cv == v
        {
            return tree.clone();
        }
        let tree = Arc::new(TenantTree::build(build(), self.settings.clone()));
        *guard = Some((v, tree.clone()));
        tree
    }
}

struct Ctx {
    rec: Reconciler<KubeCluster>,
    trees: TreeCache,
    tenants: Store<Tenant>,
    profiles: Store<LimitProfile>,
    channels: Store<Channel>,
    failures: Mutex<HashMap<String, u32>>,
}

impl Ctx {
    fn inventory(&self) -> Inventory {
        Inventory {
            // The tree needs spec and usage; the live object (status, annotations) comes from
            // the watch cache at reconcile time.
            tenants: self
                .tenants
                .state()
                .iter()
                .map(|t| crate::hierarchy::engine_copy(t))
                .collect(),
            profiles: self
                .profiles
                .state()
                .iter()
                .map(|p| (**p).clone())
                .collect(),
            channels: self
                .channels
                .state()
                .iter()
                .map(|c| (**c).clone())
                .collect(),
        }
    }
}

async fn reconcile(tenant: Arc<Tenant>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let name = tenant.name().to_string();
    let span = tracing::info_span!("reconcile", tenant = %name);
    let _ = ctx.profiles.wait_until_ready().await;
    let _ = ctx.channels.wait_until_ready().await;
    let mut tree = ctx.trees.get(|| ctx.inventory());
    // The tree must hold this tenant's current structure (spec generation, deletion).
    let stale = tree.get(&name).is_none_or(|id| {
        let t = tree.tenant(id);
        t.metadata.generation != tenant.metadata.generation
            || t.metadata.deletion_timestamp.is_some()
                != tenant.metadata.deletion_timestamp.is_some()
    });
    if stale {
        ctx.trees.bump();
        tree = ctx.trees.get(|| ctx.inventory());
    }
    let result = tracing::Instrument::instrument(
        ctx.rec.reconcile_live(&tree, &name, Some(&tenant)),
        span.clone(),
    )
    .await;
    match result {
        Ok(outcome) => {
            if let Ok(mut f) = ctx.failures.lock() {
                f.remove(&name);
            }
            Ok(match outcome.next {
                Next::AwaitChange => Action::await_change(),
                Next::Requeue(d) => Action::requeue(d),
            })
        }
        // The watch cache already dropped it (deleted meanwhile): nothing to do.
        Err(Error::Gone(_)) => Ok(Action::await_change()),
        Err(e) => {
            tracing::Instrument::instrument(ctx.rec.report_error(&tenant, &e), span).await;
            Err(e)
        }
    }
}

/// Exponential backoff with jitter for transient errors; a long wait for the others.
pub fn backoff(failures: u32, transient: bool) -> Duration {
    if !transient {
        return Duration::from_secs(300);
    }
    let base = 2f64.powi(failures.min(8) as i32).min(300.0);
    let jitter = rand::rng().random_range(0.5..1.5);
    Duration::from_secs_f64((base * jitter).clamp(0.5, 300.0))
}

fn error_policy(tenant: Arc<Tenant>, error: &Error, ctx: Arc<Ctx>) -> Action {
    let n = ctx
        .failures
        .lock()
        .map(|mut f| {
            let n = f.entry(tenant.name().to_string()).or_insert(0);
            *n += 1;
            *n
        })
        .unwrap_or(1);
    let delay = backoff(n, error.is_transient());
    tracing::warn!(tenant = tenant.name(), error = %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// Metadata-only watch of one kind (objects labelled `silo.dev/tenant`), feeding the
/// owned-object index; `kind` names the kind in the index, `ar` is its API resource. Every
/// owned kind and the Secrets are watched through this one function and mapped to their
/// Tenant by the same label ([`by_label`]).
fn owned(
    client: &Client,
    kind: &'static str,
    ar: &ApiResource,
    index: Arc<OwnedIndex>,
) -> impl Stream<Item = Result<PartialObjectMeta<DynamicObject>, watcher::Error>> + Send + 'static {
    let api = Api::<PartialObjectMeta<DynamicObject>>::all_with(client.clone(), ar);
    watcher(api, watcher::Config::default().labels(TENANT_LABEL))
        .default_backoff()
        .then(move |ev| {
            let index = index.clone();
            async move {
                if let Ok(e) = &ev {
                    match e {
                        watcher::Event::Apply(o) => index.upsert(kind, &o.metadata).await,
                        watcher::Event::Delete(o) => index.remove(kind, &o.metadata).await,
                        watcher::Event::Init => index.relist_start(kind).await,
                        watcher::Event::InitApply(o) => index.relist_item(kind, &o.metadata).await,
                        watcher::Event::InitDone => index.relist_done(kind).await,
                    }
                }
                ev
            }
        })
        .touched_objects()
}

/// The Tenant an owned object belongs to, from its `silo.dev/tenant` label. (Mapping by
/// owner reference would put the namespaced child's namespace into the reference of the
/// cluster-scoped Tenant, which then matches nothing in the cache.)
fn by_label(o: PartialObjectMeta<DynamicObject>) -> Option<ObjectRef<Tenant>> {
    mappers::owner_of(o.metadata.labels.as_ref()).map(|n| ObjectRef::new(&n))
}

/// Run the controllers until `shutdown` fires.
async fn run_controller(
    client: Client,
    opts_config: PlatformConfig,
    keys: Arc<dyn KeyService>,
    shared: Arc<dyn SharedServices>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let housekeeping = tokio::spawn(housekeeping(
        keys.clone(),
        shared.clone(),
        opts_config.retention_days,
        shutdown.clone(),
    ));
    let index = Arc::new(OwnedIndex::default());
    let cluster =
        KubeCluster::new(client.clone(), std::env::var("POD_NAME").ok()).with_index(index.clone());
    let trees = TreeCache::new(EngineSettings::from(&opts_config));
    let (tenants, tw) = reflector::store::<Tenant>();
    let (profiles, pw) = reflector::store::<LimitProfile>();
    let (channels, cw) = reflector::store::<Channel>();
    // Significant operator actions go to the audit trail in the API's database, written by
    // the operator itself (docs/audit.md: no dependency on the API being up).
    let audit = if opts_config.api.database.url.trim().is_empty() {
        None
    } else {
        let identity = std::env::var("POD_NAME").unwrap_or_else(|_| "silo-operator".into());
        match crate::audit::OperatorAudit::spawn(&opts_config.api.database, &identity) {
            Ok(a) => Some(a),
            Err(e) => {
                tracing::warn!(error = %e, "operator audit disabled");
                None
            }
        }
    };
    let mut rec = Reconciler::new(cluster, opts_config, keys, Some(metrics)).with_shared(shared);
    if let Some(a) = audit {
        rec = rec.with_audit(a);
    }
    let ctx = Arc::new(Ctx {
        rec,
        trees,
        tenants: tenants.clone(),
        profiles: profiles.clone(),
        channels: channels.clone(),
        failures: Mutex::new(HashMap::new()),
    });
    let channel_status = tokio::spawn(channel_status_loop(ctx.clone(), shutdown.clone()));
    // Tenant events: the tree is rebuilt on structural changes only (generation, deletion,
    // appearance), not on status writes; a change requeues what depends on it (descendants,
    // the parent). The main stream triggers the tenant itself.
    let (fan_tx, fan_rx) = futures::channel::mpsc::unbounded::<ObjectRef<Tenant>>();
    let fan_store = tenants.clone();
    let mut seen: HashMap<String, (Option<i64>, bool)> = HashMap::new();
    let trees_ctx = ctx.clone();
    let tenant_stream = watcher(
        Api::<Tenant>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(crate::types::trim_for_cache::<Tenant>)
    .reflect(tw)
    .inspect(move |ev| {
        let Ok(ev) = ev else {
            return;
        };
        let (structural, fan_out) = match ev {
            watcher::Event::Init | watcher::Event::InitDone => (true, None),
            watcher::Event::Delete(t) => {
                seen.remove(t.name());
                (true, Some(t))
            }
            watcher::Event::Apply(t) | watcher::Event::InitApply(t) => {
                let sig = (
                    t.metadata.generation,
                    t.metadata.deletion_timestamp.is_some(),
                );
                let initial = matches!(ev, watcher::Event::InitApply(_));
                match seen.insert(t.name().to_string(), sig) {
                    None => (true, (!initial).then_some(t)),
                    Some(old) if old != sig => (true, Some(t)),
                    Some(_) => (false, None),
                }
            }
        };
        if structural {
            trees_ctx.trees.bump();
        }
        if let Some(t) = fan_out {
            let all = fan_store.state();
            let refs: Vec<&Tenant> = all.iter().map(|a| a.as_ref()).collect();
            for n in mappers::affected_by_tenant(&refs, t) {
                let _ = fan_tx.unbounded_send(ObjectRef::new(&n));
            }
        }
    })
    .touched_objects();
    let profile_stream = watcher(
        Api::<LimitProfile>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(crate::types::trim_for_cache::<LimitProfile>)
    .reflect(pw)
    .inspect({
        let c = ctx.clone();
        move |_| c.trees.bump()
    })
    .touched_objects();
    let channel_stream = watcher(
        Api::<Channel>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(crate::types::trim_for_cache::<Channel>)
    .reflect(cw)
    .inspect({
        let c = ctx.clone();
        move |_| c.trees.bump()
    })
    .touched_objects();

    let for_profiles = tenants.clone();
    let for_channels = tenants.clone();
    let shutdown_signal = async move {
        let _ = shutdown.wait_for(|s| *s).await;
    };

    let mut controller = Controller::for_stream(tenant_stream, tenants).with_config(
        ControllerConfig::default()
            .concurrency(16)
            .debounce(Duration::from_millis(200)),
    );
    // Every owned kind (the one list, `render::OwnedKind`), then the credential, TLS and
    // data-key Secrets: a change triggers the tenant by its label (a deleted or edited object
    // is repaired) and the index spares the reconcile a list (and unchanged Secrets a read).
    let watched = OwnedKind::ALL
        .iter()
        .map(|k| (k.name(), owned_api_resource(*k)))
        .chain(std::iter::once((
            SECRET_KIND,
            ApiResource::erase::<Secret>(&()),
        )));
    for (kind, ar) in watched {
        controller =
            controller.watches_stream_with(owned(&client, kind, &ar, index.clone()), by_label, ar);
    }
    controller
        .watches_stream(profile_stream, move |p: LimitProfile| {
            let all = for_profiles.state();
            let refs: Vec<&Tenant> = all.iter().map(|a| a.as_ref()).collect();
            mappers::affected_by_profile(&refs, p.name())
                .into_iter()
                .map(|n| ObjectRef::new(&n))
                .collect::<Vec<_>>()
        })
        .watches_stream(channel_stream, move |c: Channel| {
            let all = for_channels.state();
            let refs: Vec<&Tenant> = all.iter().map(|a| a.as_ref()).collect();
            let name = c.metadata.name.clone().unwrap_or_default();
            mappers::affected_by_channel(&refs, &name)
                .into_iter()
                .map(|n| ObjectRef::new(&n))
                .collect::<Vec<_>>()
        })
        .reconcile_on(fan_rx)
        .graceful_shutdown_on(shutdown_signal)
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "controller");
            }
        })
        .await;
    housekeeping.abort();
    channel_status.abort();
}

/// Keeps every Channel's status (tenants using it, endpoint) current: re-checked shortly
/// after any structural change of tenants or channels, and every few minutes regardless.
async fn channel_status_loop(ctx: Arc<Ctx>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    let mut seen = 0u64;
    let mut last = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let version = ctx.trees.version();
        if version == seen && last.elapsed() < Duration::from_secs(300) {
            continue;
        }
        let channels = ctx.channels.state();
        let tenants = ctx.tenants.state();
        let c: Vec<&Channel> = channels.iter().map(|c| c.as_ref()).collect();
        let t: Vec<&Tenant> = tenants.iter().map(|t| t.as_ref()).collect();
        let broker = ctx.rec.shared.broker_endpoint();
        let (written, errors) =
            super::channels::sync(&ctx.rec.cluster, &c, &t, broker.as_ref()).await;
        for name in &written {
            tracing::info!(channel = %name, "channel status written");
        }
        for e in &errors {
            tracing::warn!(error = %e, "channel status not written");
        }
        if errors.is_empty() {
            seen = version;
            last = Instant::now();
        }
    }
}

/// How often the leader purges what the retention windows released.
pub const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(3600);

/// The leader's periodic duties: destroy shredded local keys whose deletion window has passed,
/// and drop retired shared databases older than `retentionDays`.
async fn housekeeping(
    keys: Arc<dyn KeyService>,
    shared: Arc<dyn SharedServices>,
    retention_days: u32,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(HOUSEKEEPING_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        housekeeping_once(
            &*keys,
            &*shared,
            retention_days,
            time::OffsetDateTime::now_utc(),
        )
        .await;
    }
}

/// One round of [`housekeeping`]; failures are logged and retried next round.
pub async fn housekeeping_once(
    keys: &dyn KeyService,
    shared: &dyn SharedServices,
    retention_days: u32,
    now: time::OffsetDateTime,
) -> (Vec<String>, Vec<crate::backends::Purged>) {
    let purged_keys = match keys.purge_expired().await {
        Ok(ids) => {
            for id in &ids {
                tracing::info!(key = %id, "shredded key destroyed after its deletion window");
            }
            ids
        }
        Err(e) => {
            tracing::warn!(error = %e, "purging shredded keys failed");
            Vec::new()
        }
    };
    let mut purged_dbs = Vec::new();
    if shared.database_endpoint().is_some() {
        let before = now.unix_timestamp() - i64::from(retention_days) * 86_400;
        match shared.purge_retired_databases(before).await {
            Ok(p) => {
                for d in &p {
                    tracing::info!(database = %d.database, retired_at = d.retired_at_unix, "retired shared database dropped after retentionDays");
                }
                purged_dbs = p;
            }
            Err(e) => tracing::warn!(error = %e, "purging retired shared databases failed"),
        }
    }
    (purged_keys, purged_dbs)
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

    let shared = Arc::new(Shared {
        metrics: Arc::new(Metrics::new()),
        started: AtomicBool::new(true),
        leading: AtomicBool::new(false),
        webhook: std::sync::OnceLock::new(),
    });
    let webhook = match opts.admission.clone() {
        Some(a) => Some(
            super::admission::spawn(client.clone(), &opts.config, shared.clone(), a.clone())
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

    let mut router = http_router(shared.clone());
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
                    shared.leading.store(true, Ordering::Relaxed);
                    controller = Some(tokio::spawn(run_controller(
                        client.clone(),
                        opts.config.clone(),
                        opts.keys.clone(),
                        opts.shared.clone(),
                        shared.metrics.clone(),
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
    shared.leading.store(false, Ordering::Relaxed);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_is_bounded() {
        for n in 1..20 {
            let d = backoff(n, true).as_secs_f64();
            let base = 2f64.powi(n.min(8) as i32).min(300.0);
            assert!(
                d >= (base * 0.5).max(0.5) - 1e-9 && d <= (base * 1.5).min(300.0) + 1e-9,
                "{n}: {d}"
            );
        }
        assert_eq!(backoff(1, false), Duration::from_secs(300));
    }

    #[test]
    fn owned_objects_map_to_their_cluster_scoped_tenant() {
        let meta = |labels: serde_json::Value| -> PartialObjectMeta<DynamicObject> {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "silo-settings", "namespace": "tenant-acme", "labels": labels},
            }))
            .unwrap()
        };
        let r = by_label(meta(serde_json::json!({TENANT_LABEL: "acme"}))).unwrap();
        assert_eq!(r, ObjectRef::<Tenant>::new("acme"));
        assert_eq!(r.namespace, None, "Tenants are cluster-scoped");
        let unlabelled = meta(serde_json::json!({"app": "x"}));
        assert!(by_label(unlabelled).is_none());
    }

    #[test]
    fn tree_cache_rebuilds_only_after_a_change() {
        let cache = TreeCache::new(EngineSettings::default());
        let mut builds = 0;
        let a = cache.get(|| {
            builds += 1;
            Inventory::default()
        });
        let b = cache.get(|| {
            builds += 1;
            Inventory::default()
        });
        assert!(Arc::ptr_eq(&a, &b));
        cache.bump();
        let c = cache.get(|| {
            builds += 1;
            Inventory::default()
        });
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(builds, 2);
    }

    /// The router `run` serves, on a real socket: the three paths answer with their status and
    /// content, an unknown path is 404.
    #[tokio::test]
    async fn probes_and_metrics_are_served() {
        let shared = Arc::new(Shared {
            metrics: Arc::new(Metrics::new()),
            started: AtomicBool::new(false),
            leading: AtomicBool::new(false),
            webhook: std::sync::OnceLock::new(),
        });
        shared.metrics.reconciled(0.02);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let router = http_router(shared.clone());
        let server = tokio::spawn(async move { axum::serve(listener, router).await });
        let http = reqwest::Client::new();
        let get = |path: &'static str| {
            let (http, url) = (http.clone(), format!("{base}{path}"));
            async move {
                let r = http.get(url).send().await.unwrap();
                let status = r.status().as_u16();
                let ctype = r
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                (status, ctype, r.text().await.unwrap())
            }
        };
        assert_eq!(get("/healthz").await.0, 200);
        assert_eq!(get("/healthz").await.2, "ok");
        // Not started yet (CRDs not checked): not ready, with the reason.
        let (status, _, body) = get("/readyz").await;
        assert_eq!(status, 503, "{body}");
        shared.started.store(true, Ordering::Relaxed);
        assert_eq!(
            get("/readyz").await,
            (
                200,
                "text/plain; charset=utf-8".into(),
                "ready (standby)".into()
            )
        );
        shared.leading.store(true, Ordering::Relaxed);
        assert_eq!(get("/readyz").await.2, "ready (leader)");
        let (status, ctype, body) = get("/metrics").await;
        assert_eq!(status, 200);
        assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
        assert!(body.contains("silo_reconciles_total 1"), "{body}");
        assert!(body.trim_end().ends_with("# EOF"), "{body}");
        assert_eq!(get("/nothing").await.0, 404);
        server.abort();
    }

    #[tokio::test]
    async fn not_ready_until_the_webhook_tree_is_loaded() {
        use crate::hierarchy::EngineSettings;
        use crate::webhook::{TreeView, WebhookState};
        let shared = Arc::new(Shared {
            metrics: Arc::new(Metrics::new()),
            started: AtomicBool::new(true),
            leading: AtomicBool::new(false),
            webhook: std::sync::OnceLock::new(),
        });
        let state = Arc::new(WebhookState::starting(TreeView::new(
            EngineSettings::default(),
        )));
        assert!(shared.webhook.set(state.clone()).is_ok());
        let resp = readyz(State(shared.clone())).await.into_response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        state.set_ready();
        let resp = readyz(State(shared.clone())).await.into_response();
        assert_eq!(resp.status(), StatusCode::OK);
    }
}
