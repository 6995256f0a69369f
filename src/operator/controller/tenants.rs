//! The Tenant controller the leader runs: the watches that trigger reconciles (Tenants,
//! LimitProfiles, Channels, every owned kind and the Secrets, metadata-only), the glue between
//! kube-rs's controller and [`Reconciler`] — each reconcile reads its tenant from the replica's
//! one tree, the webhook's ([`ControllerState::placement`]) — the retry policy, the periodic
//! resync ([`resync`]) and the Channel status loop.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
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
use crate::render::meta::TENANT_LABEL;
use crate::types::{Channel, LimitProfile, TenantLinks};

use super::cached::CachedTenant;
use super::guard;
use super::housekeeping::housekeeping;
use super::mappers;
use super::resync;
use crate::operator::cluster::OwnedKind;
use crate::operator::cluster::echoes::{Echoes, TENANT_KIND};
use crate::operator::cluster::index::{OwnedIndex, SECRET_KIND};
use crate::operator::cluster::kube_client::{KubeCluster, owned_api_resource};
use crate::operator::error::Error;
use crate::operator::key_service::KeyService;
use crate::operator::metrics::Metrics;
use crate::operator::reconcile::read::Placement;
use crate::operator::reconcile::{Next, Reconciler};
use crate::webhook::WebhookState;

/// How long a reconcile waits for the shared tree to show the structure (generation, deletion)
/// its live object has; the tree's own watch is usually milliseconds behind. Past it the
/// tenant is requeued after the same time.
const TREE_LAG: Duration = Duration::from_secs(2);
/// How long a reconcile waits for the tree's first load before it is requeued.
const TREE_LOAD: Duration = Duration::from_secs(60);
/// Reconciles run at once (kube-runtime's controller concurrency).
const CONCURRENCY: u16 = 16;

struct ControllerState {
    rec: Reconciler<KubeCluster>,
    /// The replica's one tree ([`crate::operator::admission::start_tree`]), shared with the
    /// admission webhook.
    tree: Arc<WebhookState>,
    /// The watch cache of Tenants: compact records ([`CachedTenant`]); a reconcile takes the
    /// spec from the tree.
    tenants: Store<CachedTenant>,
    channels: Store<Channel>,
    /// Structural changes of tenants and channels seen so far (the channel status loop
    /// re-checks after one).
    changes: AtomicU64,
    failures: Mutex<HashMap<String, u32>>,
    /// Reconciles running now (the periodic resync waits while all workers are busy).
    running: AtomicUsize,
}

/// Counts a running reconcile for as long as it lives.
struct Running<'a>(&'a AtomicUsize);

impl<'a> Running<'a> {
    fn start(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::AcqRel);
        Running(counter)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ControllerState {
    fn changed(&self) {
        self.changes.fetch_add(1, Ordering::Release);
    }

    /// Ends the tenant's run of failures: its next failure backs off from the start.
    fn forget_failures(&self, name: &str) {
        if let Ok(mut f) = self.failures.lock() {
            f.remove(name);
        }
    }

    /// The tenant's placement, read from the shared tree once the tree holds the structure
    /// of `live` (same uid, generation and deletion state); None when it does not within
    /// [`TREE_LAG`] (or the tree is not loaded within [`TREE_LOAD`]). The same generation
    /// means the same spec, so the placement's copy of the spec is the live one.
    async fn placement(&self, live: &ObjectMeta) -> Option<Placement> {
        let name = live.name.as_deref().unwrap_or_default();
        let started = Instant::now();
        while !self.tree.is_ready() {
            if started.elapsed() > TREE_LOAD {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let started = Instant::now();
        loop {
            // Rendered only once the tree's copy is current.
            let placement = self.tree.view.with_observed_tree(|t| {
                let m = &t.tenant(t.get(name)?).metadata;
                // The same object (a tenant deleted and created again under its name is
                // another), at the same generation: the same spec.
                let current = m.uid == live.uid
                    && m.generation == live.generation
                    && m.deletion_timestamp.is_some() == live.deletion_timestamp.is_some();
                current.then(|| Placement::read(t, name, &self.rec.config))?
            });
            if placement.is_some() {
                return placement;
            }
            if started.elapsed() > TREE_LAG {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn reconcile(cached: Arc<CachedTenant>, ctx: Arc<ControllerState>) -> Result<Action, Error> {
    let _running = Running::start(&ctx.running);
    let name = cached.name().to_string();
    let span = tracing::info_span!("reconcile", tenant = %name);
    let Some(placement) = ctx.placement(&cached.metadata).await else {
        tracing::debug!(tenant = %name, "the tree does not show this tenant's change yet");
        return Ok(Action::requeue(TREE_LAG));
    };
    // The live metadata and status with the tree's spec of the same generation.
    let tenant = cached.with_spec(placement.tenant.spec.clone());
    let result = tracing::Instrument::instrument(
        ctx.rec.reconcile_placed(&placement, Some(&tenant)),
        span.clone(),
    )
    .await;
    match result {
        Ok(outcome) => {
            ctx.forget_failures(&name);
            Ok(match outcome.next {
                Next::AwaitChange => Action::await_change(),
                Next::Requeue(d) if resync::left_to_resync(d) => Action::await_change(),
                Next::Requeue(d) => Action::requeue(d),
            })
        }
        // The watch cache already dropped it (deleted meanwhile): nothing to do.
        Err(Error::Gone(_)) => {
            ctx.forget_failures(&name);
            Ok(Action::await_change())
        }
        Err(e) => {
            tracing::Instrument::instrument(ctx.rec.report_error(&tenant, &e), span).await;
            Err(e)
        }
    }
}

/// The controller's backoff over its merged trigger streams: none (a zero wait, never giving
/// up — giving up would end the triggers). Each watch backs off by itself (`default_backoff`);
/// kube's default here would stop every trigger for as long as any one watch fails, a watch
/// holding its [`list_gate`](super::list_gate) permit in the middle of a list included.
struct EachWatchBacksOff;

impl Iterator for EachWatchBacksOff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(Duration::ZERO)
    }
}

impl kube::runtime::utils::Backoff for EachWatchBacksOff {
    fn reset(&mut self) {}
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

fn error_policy(tenant: Arc<CachedTenant>, error: &Error, ctx: Arc<ControllerState>) -> Action {
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
/// Tenant by the same label ([`by_label`]). The echo of the operator's own write ([`Echoes`])
/// updates the index but is not passed on: it would only trigger a reconcile with nothing to do.
fn owned(
    client: &Client,
    kind: &'static str,
    ar: &ApiResource,
    index: Arc<OwnedIndex>,
    echoes: Arc<Echoes>,
) -> impl Stream<Item = Result<PartialObjectMeta<DynamicObject>, watcher::Error>> + Send + 'static {
    let api = Api::<PartialObjectMeta<DynamicObject>>::all_with(client.clone(), ar);
    super::list_gate::gated(watcher(api, super::watch_config().labels(TENANT_LABEL)))
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
        .try_filter(move |o| {
            let echoes = echoes.clone();
            let meta = o.metadata.clone();
            async move { !echoes.is_echo(kind, &meta).await }
        })
}

/// The Tenant an owned object belongs to, from its `silo.dev/tenant` label. (Mapping by
/// owner reference would put the namespaced child's namespace into the reference of the
/// cluster-scoped Tenant, which then matches nothing in the cache.)
fn by_label(o: PartialObjectMeta<DynamicObject>) -> Option<ObjectRef<CachedTenant>> {
    mappers::owner_of(o.metadata.labels.as_ref()).map(|n| ObjectRef::new(&n))
}

/// Run the controllers until `shutdown` fires.
pub(super) async fn run_controller(
    client: Client,
    tree: Arc<WebhookState>,
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
    let echoes = cluster.echoes();
    let (tenants, tw) = reflector::store::<CachedTenant>();
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
    // The device registry (same database) for `devices` usage and channel counts, and the
    // shared broker's observer for connected devices and the channels' `Ready`.
    let registry = crate::operator::registry::from_config(&opts_config);
    let observer = crate::operator::broker_observer::from_shared(&*shared);
    let device_usage = Arc::new(crate::operator::registry::DeviceUsage::new());
    let mut rec =
        Reconciler::new(cluster, opts_config, keys, Some(metrics.clone())).with_shared(shared);
    if let Some(a) = audit {
        rec = rec.with_audit(a);
    }
    if registry.is_some() {
        rec = rec.with_device_usage(device_usage.clone());
    }
    let ctx = Arc::new(ControllerState {
        rec,
        tree,
        tenants: tenants.clone(),
        channels: channels.clone(),
        changes: AtomicU64::new(0),
        failures: Mutex::new(HashMap::new()),
        running: AtomicUsize::new(0),
    });
    let channel_status = tokio::spawn(channel_status_loop(
        ctx.clone(),
        registry.clone(),
        observer,
        shutdown.clone(),
    ));
    // The event recorder's cache goes once it has been quiet for its series window.
    let quiet_events = tokio::spawn({
        let cluster = ctx.rec.cluster.clone();
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                if cluster.forget_quiet_events() {
                    tracing::debug!("event recorder cache released");
                }
            }
        }
    });
    let device_ca = tokio::spawn(crate::operator::device_ca::keep(
        ctx.rec.cluster.clone(),
        ctx.rec.config.clone(),
        shutdown.clone(),
    ));
    // Tenant events: a structural change (generation, deletion, appearance — not a status
    // write) requeues what depends on it (descendants, the parent) and the channel status.
    // The main stream triggers the tenant itself.
    let (fan_tx, fan_rx) = futures::channel::mpsc::unbounded::<ObjectRef<CachedTenant>>();
    let usage_refresh = registry.map(|r| {
        tokio::spawn(crate::operator::registry::usage_loop(
            r,
            device_usage,
            crate::operator::registry::store_ready(tenants.clone()),
            crate::operator::registry::trigger_reconciles(tenants.clone(), fan_tx.clone()),
            shutdown.clone(),
        ))
    });
    // Every tenant once per RESYNC, spread over the period, while workers are free.
    let periodic = tokio::spawn(resync::resync_loop(
        tenants.clone(),
        fan_tx.clone(),
        {
            let ctx = ctx.clone();
            move || ctx.running.load(Ordering::Acquire) >= usize::from(CONCURRENCY)
        },
        shutdown.clone(),
    ));
    let fan_store = tenants.clone();
    let changes_ctx = ctx.clone();
    let tenant_echoes = echoes.clone();
    // Which events reconcile the tenant, reach its relatives or the channel status:
    // `mappers::tenant_change`, between the version the store held and the event's (read just
    // before the event is stored; during a re-list the store keeps the previous versions until
    // the list is done). Its own finalizer write does not trigger it again ([`Echoes`]); the
    // store has every version all the same.
    let mut writer = tw;
    let previous = tenants.clone();
    let tenant_stream = guard::watch::<crate::types::Tenant>(&client, Some(metrics.clone()))
        .map_ok(CachedTenant::event)
        .map_ok(move |ev| {
            let before = match &ev {
                watcher::Event::Apply(t) | watcher::Event::InitApply(t) => previous
                    .get(&ObjectRef::from_obj(t))
                    .map(|old| mappers::TenantSeen::of(&old.metadata)),
                _ => None,
            };
            writer.apply_watcher_event(&ev);
            (ev, before)
        })
        .and_then(move |(ev, before)| {
            let echoes = tenant_echoes.clone();
            async move {
                let echo = match &ev {
                    watcher::Event::Apply(t) | watcher::Event::InitApply(t) => {
                        echoes.is_echo(TENANT_KIND, &t.metadata).await
                    }
                    _ => false,
                };
                Ok((ev, before, echo))
            }
        })
        .try_filter_map(move |(ev, before, echo)| {
            let initial = matches!(ev, watcher::Event::InitApply(_));
            let (change, tenant) = match ev {
                watcher::Event::Init | watcher::Event::InitDone => (
                    mappers::TenantChange {
                        structural: true,
                        ..Default::default()
                    },
                    None,
                ),
                watcher::Event::Delete(t) => {
                    // Its backoff entry goes with it (a tenant deleted while failing).
                    changes_ctx.forget_failures(t.name());
                    (mappers::tenant_deleted(), Some(t))
                }
                watcher::Event::Apply(t) | watcher::Event::InitApply(t) => {
                    let now = mappers::TenantSeen::of(&t.metadata);
                    let mut change = mappers::tenant_change(before, now, initial);
                    if echo {
                        change.reconcile = false;
                    }
                    (change, Some(t))
                }
            };
            if change.structural {
                changes_ctx.changed();
            }
            if let (true, Some(t)) = (change.fan_out, &tenant) {
                let all = fan_store.state();
                let refs: Vec<&CachedTenant> = all.iter().map(|a| a.as_ref()).collect();
                for n in mappers::affected_by_tenant(&refs, t) {
                    let _ = fan_tx.unbounded_send(ObjectRef::new(&n));
                }
            }
            std::future::ready(Ok(tenant.filter(|_| change.reconcile)))
        });
    let profile_stream =
        guard::watch::<LimitProfile>(&client, Some(metrics.clone())).touched_objects();
    let channel_stream = guard::watch::<Channel>(&client, Some(metrics.clone()))
        .reflect(cw)
        .inspect({
            let c = ctx.clone();
            move |_| c.changed()
        })
        .touched_objects();

    let for_profiles = tenants.clone();
    let for_channels = tenants.clone();
    let shutdown_signal = async move {
        let _ = shutdown.wait_for(|s| *s).await;
    };

    let mut controller = Controller::for_stream(tenant_stream, tenants)
        .with_config(
            ControllerConfig::default()
                .concurrency(CONCURRENCY)
                .debounce(Duration::from_millis(200)),
        )
        .trigger_backoff(EachWatchBacksOff);
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
        let stream = owned(&client, kind, &ar, index.clone(), echoes.clone());
        controller = controller.watches_stream_with(stream, by_label, ar);
    }
    controller
        .watches_stream(profile_stream, move |p: LimitProfile| {
            let all = for_profiles.state();
            let refs: Vec<&CachedTenant> = all.iter().map(|a| a.as_ref()).collect();
            mappers::affected_by_profile(&refs, p.name())
                .into_iter()
                .map(|n| ObjectRef::new(&n))
                .collect::<Vec<_>>()
        })
        .watches_stream(channel_stream, move |c: Channel| {
            let all = for_channels.state();
            let refs: Vec<&CachedTenant> = all.iter().map(|a| a.as_ref()).collect();
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
    periodic.abort();
    channel_status.abort();
    quiet_events.abort();
    device_ca.abort();
    if let Some(u) = usage_refresh {
        u.abort();
    }
}

/// Keeps every Channel's status (tenants using it, endpoint, device counts, `Ready`) current:
/// re-checked at most every [`crate::operator::channels::CHANNEL_STATUS_EVERY`] after any
/// structural change of tenants or channels or a change the broker observer saw, and every
/// 30 s regardless (registered devices), so bursts of connections coalesce into one write.
async fn channel_status_loop(
    ctx: Arc<ControllerState>,
    registry: Option<Arc<crate::operator::registry::Registry>>,
    observer: Option<crate::operator::broker_observer::BrokerObserver>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(crate::operator::channels::CHANNEL_STATUS_EVERY);
    let mut seen = (0u64, 0u64);
    let mut last = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let version = (
            ctx.changes.load(Ordering::Acquire),
            observer.as_ref().map_or(0, |o| o.version()),
        );
        if version == seen && last.elapsed() < Duration::from_secs(30) {
            continue;
        }
        let channels = ctx.channels.state();
        let tenants = ctx.tenants.state();
        let c: Vec<&Channel> = channels.iter().map(|c| c.as_ref()).collect();
        let t: Vec<&CachedTenant> = tenants.iter().map(|t| t.as_ref()).collect();
        let broker = ctx.rec.shared.broker_endpoint();
        let view = observer.as_ref().map(|o| o.view());
        let (written, errors) = crate::operator::channels::round(
            &ctx.rec.cluster,
            &c,
            &t,
            broker.as_ref(),
            registry.as_deref(),
            view.as_ref(),
        )
        .await;
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

    /// The controller's trigger backoff neither waits nor gives up: errors of one watch pass
    /// (each watch has backed off already) and the next trigger comes at once.
    #[tokio::test(start_paused = true)]
    async fn the_trigger_streams_are_not_stopped_by_one_watchs_errors() {
        use kube::runtime::utils::StreamBackoff;
        let mut items: Vec<Result<u32, &str>> = vec![Err("list failed"); 50];
        items.push(Ok(7));
        let mut triggers = std::pin::pin!(StreamBackoff::new(
            futures::stream::iter(items),
            EachWatchBacksOff
        ));
        let started = tokio::time::Instant::now();
        let mut errors = 0;
        loop {
            match triggers.next().await {
                Some(Err(_)) => errors += 1,
                Some(Ok(v)) => {
                    assert_eq!(v, 7);
                    break;
                }
                None => panic!("the trigger stream ended after {errors} errors"),
            }
        }
        assert_eq!(errors, 50);
        assert_eq!(started.elapsed(), Duration::ZERO);
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
        assert_eq!(r, ObjectRef::<CachedTenant>::new("acme"));
        assert_eq!(r.namespace, None, "Tenants are cluster-scoped");
        let unlabelled = meta(serde_json::json!({"app": "x"}));
        assert!(by_label(unlabelled).is_none());
    }
}
