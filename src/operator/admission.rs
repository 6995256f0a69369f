//! The admission webhook inside `silo operator`, on every replica.
//!
//! The API server calls any pod behind the `silo-webhook` Service, so every replica (not
//! only the leader) serves `POST /validate` over TLS on `--webhook-addr` (default
//! `0.0.0.0:8443`, the Service's port 443 targets it).
//!
//! # The tree
//!
//! Each replica watches Tenants, LimitProfiles and Channels and keeps one tree
//! ([`start_tree`]): the webhook decides on it and, on the leader, the controller reads each
//! tenant's place from it — there is no second tree. [`Feeder`] turns the watcher events into
//! [`TreeView`] updates: the first complete initial list of all three kinds is
//! loaded with `replace_all`; afterwards each event is an upsert/remove, and a re-list of one
//! kind (watch restart) upserts what it lists and removes what it no longer lists. Until the
//! first load the webhook denies every silo.dev write with
//! [`crate::webhook::review::STARTING_MESSAGE`] (fail closed).
//!
//! # Certificates
//!
//! - Default: the operator's own CA and serving certificate, stored in the Secret
//!   [`SECRET_NAME`] in the platform namespace. **Only the leader writes**: it runs
//!   [`reconcile_certificates`] (create/renew the Secret, server-side apply the
//!   ValidatingWebhookConfiguration `silo-validating` with the current `caBundle`) at start
//!   and every [`CERT_INTERVAL`]. Followers only read the Secret: until it exists they do not
//!   serve (the port is bound, connections wait), afterwards they re-read it every
//!   [`CERT_INTERVAL`] and hot-reload a changed certificate. Renewal happens well before
//!   expiry (the [`RotationPolicy`] window is days), so a follower serving the previous
//!   certificate for one interval is still trusted. A replica that becomes leader reconciles
//!   on its next tick. This replaces `maintain_certificates` (which always writes) so that
//!   replicas never race on the Secret.
//! - `--webhook-url https://HOST:PORT`: the configuration registers that URL instead of the
//!   Service and HOST goes into the certificate's SANs (operator outside the cluster).
//! - `--webhook-cert-file/--webhook-key-file` (cert-manager): the mounted files are served and
//!   reloaded when they change; the operator then writes neither the Secret nor the webhook
//!   configuration (cert-manager's CA injector keeps the installed configuration's `caBundle`).

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum_server::Handle;
use axum_server::tls_rustls::RustlsConfig;
use futures::{Stream, StreamExt, TryStreamExt};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use time::OffsetDateTime;

use crate::config::PlatformConfig;
use crate::hierarchy::{EngineSettings, Inventory};
use crate::types::{Channel, LimitProfile, Tenant};
use crate::webhook::apply::{ApplyError, read_cert_secret};
use crate::webhook::server::reload_if_changed;
use crate::webhook::tls::TlsError;
use crate::webhook::{
    CertBundle, CertSettings, RotationPolicy, TlsSource, TreeView, WebhookEndpoint, WebhookState,
    reconcile_certificates, rustls_config, serve_listener, watch_cert_files,
};

use crate::operator::controller::guard;
use crate::operator::controller::probes::ReplicaState;
use crate::operator::metrics::Metrics;

/// Default address of the webhook server.
pub const DEFAULT_ADDR: &str = "0.0.0.0:8443";
/// The Service in front of the webhook (install manifests), and its port.
pub const SERVICE_NAME: &str = "silo-webhook";
pub const SERVICE_PORT: u16 = 443;
/// The Secret holding the operator's own CA and serving certificate.
pub const SECRET_NAME: &str = "silo-webhook-tls";
/// How often the leader reconciles the certificates and followers re-read them.
pub const CERT_INTERVAL: Duration = Duration::from_secs(60);
/// How often a follower looks for the Secret before the first certificate exists.
const FIRST_CERT_RETRY: Duration = Duration::from_secs(5);
/// How often mounted certificate files are checked for changes.
const FILE_POLL: Duration = Duration::from_secs(10);
/// The API server's timeout for one admission call.
const TIMEOUT_SECONDS: i32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum AdmissionError {
    #[error("--webhook-url: {0}")]
    Url(#[from] TlsError),
    #[error("--webhook-cert-file and --webhook-key-file must be given together")]
    HalfCertificate,
    #[error(
        "--webhook-url registers the operator's own certificate; it cannot be combined with --webhook-cert-file"
    )]
    UrlWithFiles,
}

/// Where the certificate comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertSource {
    /// The operator's own CA (Secret [`SECRET_NAME`]), registered for `endpoint`.
    Managed(WebhookEndpoint),
    /// Mounted files (cert-manager).
    Files { cert: PathBuf, key: PathBuf },
}

/// The webhook part of `silo operator`'s options.
#[derive(Clone, Debug)]
pub struct AdmissionOptions {
    pub addr: SocketAddr,
    /// Platform namespace: the Service and the Secret live there.
    pub namespace: String,
    pub certs: CertSource,
}

impl AdmissionOptions {
    /// Checks the flags: `--webhook-url` must be `https://HOST[:PORT]`, the cert and key
    /// files come together.
    pub fn from_flags(
        addr: SocketAddr,
        namespace: &str,
        webhook_url: Option<&str>,
        cert_file: Option<PathBuf>,
        key_file: Option<PathBuf>,
    ) -> Result<Self, AdmissionError> {
        let certs = match (cert_file, key_file, webhook_url) {
            (Some(_), Some(_), Some(_)) => return Err(AdmissionError::UrlWithFiles),
            (Some(cert), Some(key), None) => CertSource::Files { cert, key },
            (None, None, Some(url)) => CertSource::Managed(WebhookEndpoint::from_url(url)?),
            (None, None, None) => CertSource::Managed(WebhookEndpoint::Service {
                namespace: namespace.to_string(),
                name: SERVICE_NAME.to_string(),
                port: SERVICE_PORT,
            }),
            _ => return Err(AdmissionError::HalfCertificate),
        };
        Ok(AdmissionOptions {
            addr,
            namespace: namespace.to_string(),
            certs,
        })
    }
}

/// One event of any of the three watched kinds.
// Each event is moved once from the watcher into the view; boxing would add an allocation per
// event for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum WatchEvent {
    Tenant(watcher::Event<Tenant>),
    Profile(watcher::Event<LimitProfile>),
    Channel(watcher::Event<Channel>),
}

/// A kind the view holds.
trait Fed: ResourceExt + Clone {
    fn upsert(view: &TreeView, k: Self);
    fn remove(view: &TreeView, name: &str);
    /// What the view keeps of an object: the form it is held in while an initial list is
    /// buffered, so that the buffer is no larger than the view it becomes.
    fn kept(k: Self) -> Self {
        k
    }
}

impl Fed for Tenant {
    fn upsert(view: &TreeView, k: Self) {
        view.upsert_tenant(k)
    }
    /// The engine's copy ([`crate::hierarchy::engine_copy`]): a full Tenant's status and
    /// metadata are several times its spec, and the first list buffers every tenant at once
    /// (at 10,000 tenants that buffer was most of the start-up's memory peak).
    fn kept(k: Self) -> Self {
        crate::hierarchy::engine_copy(&k)
    }
    fn remove(view: &TreeView, name: &str) {
        view.remove_tenant(name)
    }
}
impl Fed for LimitProfile {
    fn upsert(view: &TreeView, k: Self) {
        view.upsert_profile(k)
    }
    fn remove(view: &TreeView, name: &str) {
        view.remove_profile(name)
    }
}
impl Fed for Channel {
    fn upsert(view: &TreeView, k: Self) {
        view.upsert_channel(k)
    }
    fn remove(view: &TreeView, name: &str) {
        view.remove_channel(name)
    }
}

/// Per-kind feeding state.
struct KindFeed<K> {
    /// Names in the view (after the first load).
    known: HashSet<String>,
    /// A list in progress (between `Init` and `InitDone`).
    listing: Option<BTreeMap<String, K>>,
    /// Before the first load: the kind's objects so far, and whether its list completed.
    pending: BTreeMap<String, K>,
    listed: bool,
}

impl<K> Default for KindFeed<K> {
    fn default() -> Self {
        KindFeed {
            known: HashSet::new(),
            listing: None,
            pending: BTreeMap::new(),
            listed: false,
        }
    }
}

impl<K: Fed> KindFeed<K> {
    fn apply(&mut self, view: &TreeView, loaded: bool, ev: watcher::Event<K>) {
        match ev {
            watcher::Event::Init => self.listing = Some(BTreeMap::new()),
            watcher::Event::InitApply(o) => match self.listing.as_mut() {
                Some(l) => {
                    l.insert(o.name_any(), K::kept(o));
                }
                None => self.apply(view, loaded, watcher::Event::Apply(o)),
            },
            watcher::Event::InitDone => {
                let list = self.listing.take().unwrap_or_default();
                if loaded {
                    let gone: Vec<String> = self
                        .known
                        .iter()
                        .filter(|n| !list.contains_key(*n))
                        .cloned()
                        .collect();
                    for n in gone {
                        K::remove(view, &n);
                    }
                    self.known = list.keys().cloned().collect();
                    for o in list.into_values() {
                        K::upsert(view, o);
                    }
                } else {
                    self.pending = list;
                    self.listed = true;
                }
            }
            watcher::Event::Apply(o) => {
                let name = o.name_any();
                if loaded {
                    self.known.insert(name);
                    K::upsert(view, o);
                } else {
                    self.pending.insert(name, K::kept(o));
                }
            }
            watcher::Event::Delete(o) => {
                let name = o.name_any();
                if loaded {
                    self.known.remove(&name);
                    K::remove(view, &name);
                } else {
                    self.pending.remove(&name);
                }
            }
        }
    }

    fn take_pending(&mut self) -> Vec<K> {
        let pending = std::mem::take(&mut self.pending);
        self.known = pending.keys().cloned().collect();
        pending.into_values().collect()
    }
}

/// Turns watcher events into [`TreeView`] updates (see the module docs).
#[derive(Default)]
pub struct Feeder {
    tenants: KindFeed<Tenant>,
    profiles: KindFeed<LimitProfile>,
    channels: KindFeed<Channel>,
    loaded: bool,
}

impl Feeder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the initial lists of all three kinds are in the view.
    pub fn is_loaded(&self) -> bool {
        self.loaded
    }

    /// Applies one event; true when this event completed the first load.
    pub fn apply(&mut self, view: &TreeView, ev: WatchEvent) -> bool {
        let loaded = self.loaded;
        match ev {
            WatchEvent::Tenant(e) => self.tenants.apply(view, loaded, e),
            WatchEvent::Profile(e) => self.profiles.apply(view, loaded, e),
            WatchEvent::Channel(e) => self.channels.apply(view, loaded, e),
        }
        if !loaded && self.tenants.listed && self.profiles.listed && self.channels.listed {
            view.replace_all(Inventory {
                tenants: self.tenants.take_pending(),
                profiles: self.profiles.take_pending(),
                channels: self.channels.take_pending(),
            });
            self.loaded = true;
            return true;
        }
        false
    }
}

/// Feeds `state.view` from `events` until the stream ends; marks the state ready once the
/// initial lists are loaded. Watch errors are logged (the watcher retries with backoff).
pub async fn feed<S>(events: S, state: Arc<WebhookState>)
where
    S: Stream<Item = Result<WatchEvent, watcher::Error>>,
{
    let mut feeder = Feeder::new();
    let mut events = std::pin::pin!(events);
    while let Some(ev) = events.next().await {
        match ev {
            Ok(ev) => {
                if feeder.apply(&state.view, ev) {
                    state.set_ready();
                    tracing::info!("admission webhook: tenant tree loaded, deciding");
                }
            }
            Err(e) => tracing::warn!(error = %e, "admission webhook: watch failed, retrying"),
        }
    }
}

/// Watches of Tenants, LimitProfiles and Channels, merged.
pub fn watch_events(
    client: &Client,
    metrics: Option<Arc<Metrics>>,
) -> impl Stream<Item = Result<WatchEvent, watcher::Error>> + Send + 'static {
    let t = guard::watch::<Tenant>(client, metrics.clone()).map_ok(WatchEvent::Tenant);
    let p = guard::watch::<LimitProfile>(client, metrics.clone()).map_ok(WatchEvent::Profile);
    let c = guard::watch::<Channel>(client, metrics.clone()).map_ok(WatchEvent::Channel);
    futures::stream::select_all([t.boxed(), p.boxed(), c.boxed()])
}

/// The replica's one tree: a [`TreeView`] fed by [`watch_events`] from now on (see the module
/// docs), shared by the webhook's decisions and — on the leader — the controller's reconciles
/// ([`crate::operator::reconcile::read`]). `/readyz` reports not ready until it is loaded.
pub fn start_tree(
    client: &Client,
    config: &PlatformConfig,
    replica: &ReplicaState,
) -> Arc<WebhookState> {
    let view = TreeView::new(EngineSettings::from(config))
        .with_siloed_postgres(config.siloed.postgres.clone());
    let state = Arc::new(WebhookState::starting(view));
    let _ = replica.webhook.set(state.clone());
    tokio::spawn(feed(
        watch_events(client, Some(replica.metrics.clone())),
        state.clone(),
    ));
    state
}

/// Binds the webhook port and starts fetching certificates and serving decisions on `state`
/// ([`start_tree`]). Fails only when the port cannot be bound; everything later is logged and
/// retried.
pub fn spawn(
    client: Client,
    state: Arc<WebhookState>,
    replica: Arc<ReplicaState>,
    opts: AdmissionOptions,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = std::net::TcpListener::bind(opts.addr)?;
    Ok(tokio::spawn(async move {
        let config = match opts.certs {
            CertSource::Files { cert, key } => {
                let source = TlsSource::Files {
                    cert: cert.clone(),
                    key: key.clone(),
                    poll: FILE_POLL,
                };
                match rustls_config(&source).await {
                    Ok(c) => {
                        tokio::spawn(watch_cert_files(c.clone(), cert, key, FILE_POLL));
                        c
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "admission webhook cannot start");
                        return;
                    }
                }
            }
            CertSource::Managed(endpoint) => {
                let settings = CertSettings {
                    namespace: opts.namespace.clone(),
                    secret_name: SECRET_NAME.to_string(),
                    endpoint,
                    policy: RotationPolicy::default(),
                    timeout_seconds: TIMEOUT_SECONDS,
                };
                match managed_config(&client, &settings, &replica).await {
                    Some(c) => c,
                    None => return,
                }
            }
        };
        tracing::info!(addr = %opts.addr, "admission webhook serving");
        if let Err(e) = serve_listener(listener, config, state, Handle::new()).await {
            tracing::error!(error = %e, "admission webhook stopped");
        }
    }))
}

/// Leader: reconcile (writes); follower: read the Secret (None while it does not exist).
async fn current_bundle(
    client: &Client,
    settings: &CertSettings,
    leading: bool,
) -> Result<Option<CertBundle>, ApplyError> {
    if leading {
        let (bundle, action) =
            reconcile_certificates(client, settings, OffsetDateTime::now_utc()).await?;
        tracing::debug!(?action, "webhook certificates reconciled");
        Ok(Some(bundle))
    } else {
        read_cert_secret(client, &settings.namespace, &settings.secret_name).await
    }
}

/// Waits for the first certificate, then keeps it current in the background.
async fn managed_config(
    client: &Client,
    settings: &CertSettings,
    replica: &Arc<ReplicaState>,
) -> Option<RustlsConfig> {
    let first = loop {
        let leading = replica.leading.load(Ordering::Relaxed);
        match current_bundle(client, settings, leading).await {
            Ok(Some(b)) => break b,
            Ok(None) => tracing::info!(
                secret = %settings.secret_name,
                "admission webhook: waiting for the leader to create the certificate"
            ),
            Err(e) => tracing::warn!(error = %e, "admission webhook: no certificate yet"),
        }
        tokio::time::sleep(FIRST_CERT_RETRY).await;
    };
    let source = TlsSource::Pem {
        cert: first.cert_pem.clone().into_bytes(),
        key: first.key_pem.clone().into_bytes(),
    };
    let config = match rustls_config(&source).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "admission webhook cannot load its certificate");
            return None;
        }
    };
    tokio::spawn(keep_current(
        client.clone(),
        settings.clone(),
        replica.clone(),
        config.clone(),
        first,
    ));
    Some(config)
}

async fn keep_current(
    client: Client,
    settings: CertSettings,
    replica: Arc<ReplicaState>,
    server: RustlsConfig,
    mut current: CertBundle,
) {
    loop {
        tokio::time::sleep(CERT_INTERVAL).await;
        let leading = replica.leading.load(Ordering::Relaxed);
        match current_bundle(&client, &settings, leading).await {
            Ok(Some(b)) => match reload_if_changed(&server, Some(&current), &b).await {
                Ok(true) => {
                    tracing::info!(leading, "webhook serving certificate reloaded");
                    current = b;
                }
                Ok(false) => {}
                Err(e) => tracing::error!(error = %e, "webhook certificate reload failed"),
            },
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "webhook certificate refresh failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        DEFAULT_ADDR.parse().unwrap()
    }

    #[test]
    fn default_registers_the_installed_service() {
        let o = AdmissionOptions::from_flags(addr(), "silo-system", None, None, None).unwrap();
        assert_eq!(
            o.certs,
            CertSource::Managed(WebhookEndpoint::Service {
                namespace: "silo-system".into(),
                name: "silo-webhook".into(),
                port: 443
            })
        );
    }

    #[test]
    fn webhook_url_puts_the_host_in_the_endpoint() {
        let o = AdmissionOptions::from_flags(
            addr(),
            "silo-system",
            Some("https://10.0.0.5:9443"),
            None,
            None,
        )
        .unwrap();
        assert!(
            matches!(o.certs, CertSource::Managed(WebhookEndpoint::Url { ref host, .. }) if host == "10.0.0.5")
        );
    }

    #[test]
    fn bad_flags_are_refused_with_a_message() {
        let e = AdmissionOptions::from_flags(addr(), "s", Some("http://x"), None, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--webhook-url") && e.contains("https://"), "{e}");
        let e = AdmissionOptions::from_flags(addr(), "s", None, Some("c.pem".into()), None)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "--webhook-cert-file and --webhook-key-file must be given together"
        );
        let e = AdmissionOptions::from_flags(
            addr(),
            "s",
            Some("https://h"),
            Some("c".into()),
            Some("k".into()),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("cannot be combined"), "{e}");
    }

    /// A listed Tenant with a full status, managed fields and annotations.
    fn listed_tenant(name: &str) -> Tenant {
        let mut t: Tenant = serde_json::from_value(serde_json::json!({
            "apiVersion": "silo.dev/v1alpha1", "kind": "Tenant",
            "metadata": {"name": name, "uid": "u-1", "generation": 2,
                "annotations": {"note": "x".repeat(4000)},
                "managedFields": [{"manager": "kubectl", "operation": "Apply"}]},
            "spec": {"displayName": name},
            "status": {"phase": "Ready", "namespace": format!("tenant-{name}"),
                "usage": {"own": {"devices": 3}},
                "conditions": [{"type": "Ready", "status": "True", "reason": "Ready",
                    "message": "y".repeat(2000), "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
        }))
        .unwrap();
        t.metadata.labels = Some([("team".to_string(), "a".to_string())].into());
        t
    }

    #[test]
    fn the_first_list_is_buffered_as_the_engine_copies_the_view_keeps() {
        let view = TreeView::new(crate::hierarchy::EngineSettings::default());
        let mut f = Feeder::new();
        f.apply(&view, WatchEvent::Tenant(watcher::Event::Init));
        f.apply(
            &view,
            WatchEvent::Tenant(watcher::Event::InitApply(listed_tenant("acme"))),
        );
        let buffered = &f.tenants.listing.as_ref().unwrap()["acme"];
        let json = |t: &Tenant| serde_json::to_value(t).unwrap();
        assert_eq!(
            json(buffered),
            json(&crate::hierarchy::engine_copy(&listed_tenant("acme")))
        );
        assert!(buffered.metadata.annotations.is_none());
        assert!(buffered.metadata.managed_fields.is_none());
        let status = buffered.status.as_ref().unwrap();
        assert!(status.conditions.is_empty() && status.phase.is_none());
        assert!(status.usage.is_some(), "the engine reads the usage");
        // An Apply before the first load is buffered the same way.
        f.apply(&view, WatchEvent::Tenant(watcher::Event::InitDone));
        f.apply(
            &view,
            WatchEvent::Tenant(watcher::Event::Apply(listed_tenant("beta"))),
        );
        assert_eq!(
            json(&f.tenants.pending["beta"]),
            json(&crate::hierarchy::engine_copy(&listed_tenant("beta")))
        );
    }
}
