//! A whole Silo platform on an envtest control plane, as the install manifests set it up:
//! the CRDs from `crds/`, the operator's ClusterRole from `operator/rbac.yaml` bound to the
//! ServiceAccount `silo-system/silo`, and the real `silo operator` binary running with that
//! ServiceAccount's token (optionally with its admission webhook registered at a loopback
//! URL, and with a throwaway shared PostgreSQL and Mosquitto for Shared tenants). A stand-in
//! kubelet marks the silo's StatefulSets and Deployments ready (envtest runs no pods).

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use silo::types::{Phase, Tenant};
use tokio::task::JoinHandle;

use super::operator::{OperatorOptions, SiloOperator};
use super::{Envtest, Identity, Options, eventually};

#[path = "../mosquitto_support/mod.rs"]
pub mod mosquitto_support;
#[path = "../pg_support/mod.rs"]
pub mod pg_support;

/// The operator's namespace and ServiceAccount (install manifests).
pub const OPERATOR_NAMESPACE: &str = "silo-system";
pub const OPERATOR_SERVICE_ACCOUNT: &str = "silo";
/// The operator's field manager (SPEC: server-side apply with one field manager).
pub const OPERATOR_FIELD_MANAGER: &str = "silo";

/// What to start.
#[derive(Clone, Debug, Default)]
pub struct PlatformOptions {
    /// Run kube-controller-manager (namespace deletion, garbage collection).
    pub controller_manager: bool,
    /// Wait at start until the API server calls the operator's webhook (it is always
    /// registered, at `https://127.0.0.1:PORT`).
    pub webhook: bool,
    /// Start a throwaway PostgreSQL and Mosquitto and configure them as `shared.*`.
    pub shared_services: bool,
    /// Extra platform configuration YAML appended to the generated file (top-level keys
    /// other than `shared`).
    pub extra_config: String,
    /// Do not start the operator (start it later with [`Platform::start_operator`]).
    pub no_operator: bool,
}

/// A running platform; everything stops on drop.
pub struct Platform {
    pub operator: Option<SiloOperator>,
    /// The operator's identity (`system:serviceaccount:silo-system:silo`).
    pub identity: Identity,
    pub operator_options: OperatorOptions,
    pub postgres: Option<pg_support::PgServer>,
    pub mosquitto: Option<mosquitto_support::Broker>,
    kubelet: JoinHandle<()>,
    // Dropped last: the control plane outlives the processes that talk to it.
    pub env: Envtest,
}

impl Platform {
    /// None: the envtest binaries are missing and the test is skipped (see [`Envtest`]).
    pub async fn start(opts: PlatformOptions) -> Option<Platform> {
        let env = Envtest::start_with(Options {
            controller_manager: opts.controller_manager,
            ..Options::default()
        })
        .await?;
        env.install_crds().await;
        let identity = Identity::service_account(OPERATOR_NAMESPACE, OPERATOR_SERVICE_ACCOUNT);
        env.install_operator_rbac(&identity).await;

        let mut config = String::new();
        let (mut postgres, mut mosquitto) = (None, None);
        if opts.shared_services {
            let pg = pg_support::PgServer::start().await;
            let broker = mosquitto_support::Broker::start();
            for (name, user, password) in [
                ("silo-shared-postgres", "postgres", pg.password.clone()),
                (
                    "silo-shared-mosquitto",
                    mosquitto_support::ADMIN_USER,
                    broker.admin.password.clone(),
                ),
            ] {
                env.apply_value(json!({
                    "apiVersion": "v1", "kind": "Secret",
                    "metadata": {"name": name, "namespace": OPERATOR_NAMESPACE},
                    "stringData": {"username": user, "password": password},
                }))
                .await;
            }
            config.push_str(&format!(
                "shared:\n  postgres: {{host: 127.0.0.1, port: {}, adminSecret: silo-shared-postgres}}\n  \
                 mosquitto: {{host: 127.0.0.1, port: {}, adminSecret: silo-shared-mosquitto}}\n",
                pg.port, broker.port
            ));
            postgres = Some(pg);
            mosquitto = Some(broker);
        }
        config.push_str(&opts.extra_config);

        let mut operator_options = OperatorOptions::new(env.kubeconfig(&identity).await);
        operator_options.config_yaml = config;
        operator_options.webhook = opts.webhook;
        let kubelet = spawn_kubelet(env.admin());
        let mut platform = Platform {
            operator: None,
            identity,
            operator_options,
            postgres,
            mosquitto,
            kubelet,
            env,
        };
        if !opts.no_operator {
            platform.start_operator().await;
        }
        Some(platform)
    }

    /// Starts (or restarts) the operator and waits for `/readyz`; with the webhook, also
    /// until the API server calls it (a Tenant dry-run create is judged by it).
    pub async fn start_operator(&mut self) {
        if let Some(mut old) = self.operator.take() {
            old.terminate();
        }
        let mut op = SiloOperator::spawn(&self.operator_options);
        // Restarts keep the port: the API server calls the registered URL until the new
        // leader re-registers it.
        self.operator_options.webhook_port = op.webhook_port;
        op.wait_ready(Duration::from_secs(90)).await;
        self.operator = Some(op);
        if self.operator_options.webhook {
            self.wait_webhook_serving().await;
        }
    }

    /// Waits until the registered webhook judges Tenant writes: a dry-run create below a
    /// parent that does not exist is refused by the webhook (only it knows that rule).
    async fn wait_webhook_serving(&self) {
        let api: Api<Tenant> = Api::all(self.admin());
        eventually(
            "the webhook is registered and called",
            Duration::from_secs(90),
            || {
                let api = api.clone();
                async move {
                    let t: Tenant = serde_json::from_value(json!({
                        "apiVersion": "silo.dev/v1alpha1", "kind": "Tenant",
                        "metadata": {"name": "webhook-probe"},
                        "spec": {"parent": "no-such-parent-probe"},
                    }))
                    .expect("probe tenant");
                    match api
                        .create(
                            &kube::api::PostParams {
                                dry_run: true,
                                ..Default::default()
                            },
                            &t,
                        )
                        .await
                    {
                        Err(kube::Error::Api(s)) if s.message.contains("no-such-parent-probe") => {
                            Ok(())
                        }
                        other => Err(format!("{other:?}")),
                    }
                }
            },
        )
        .await;
    }

    /// The running operator (panics when stopped).
    pub fn operator(&mut self) -> &mut SiloOperator {
        self.operator.as_mut().expect("the operator is running")
    }

    pub fn admin(&self) -> Client {
        self.env.admin()
    }

    /// The operator's user name in the audit log.
    pub fn operator_user(&self) -> String {
        self.identity.username()
    }

    /// Server-side applies YAML as the admin (as `kubectl apply --server-side` would).
    pub async fn apply(&self, yaml: &str) -> Vec<(String, String)> {
        self.env.apply_yaml(yaml).await
    }

    /// Waits until every named tenant is `Ready` for its current generation.
    pub async fn wait_ready(&self, names: &[&str], timeout: Duration) -> Vec<Tenant> {
        let api: Api<Tenant> = Api::all(self.admin());
        let mut out = Vec::new();
        for name in names {
            let api = api.clone();
            out.push(
                eventually(&format!("tenant {name} Ready"), timeout, || {
                    let api = api.clone();
                    async move { ready(&api, name).await }
                })
                .await,
            );
        }
        out
    }

    /// Waits until every Tenant in the cluster is in `phase` for its current generation;
    /// returns them.
    pub async fn wait_all(&self, phase: Phase, timeout: Duration) -> Vec<Tenant> {
        let api: Api<Tenant> = Api::all(self.admin());
        eventually(&format!("every tenant {phase:?}"), timeout, || {
            let api = api.clone();
            async move {
                let all = api
                    .list(&Default::default())
                    .await
                    .map_err(|e| e.to_string())?
                    .items;
                let behind: Vec<String> = all
                    .iter()
                    .filter(|t| !current(t, phase))
                    .map(|t| t.name_any())
                    .collect();
                if behind.is_empty() {
                    Ok(all)
                } else {
                    Err(format!(
                        "{} of {} not yet: {:?}",
                        behind.len(),
                        all.len(),
                        &behind[..behind.len().min(10)]
                    ))
                }
            }
        })
        .await
    }

    /// Every tenant's phase, by name.
    pub async fn phases(&self) -> BTreeMap<String, Option<Phase>> {
        Api::<Tenant>::all(self.admin())
            .list(&Default::default())
            .await
            .expect("list tenants")
            .items
            .into_iter()
            .map(|t| (t.name_any(), t.status.and_then(|s| s.phase)))
            .collect()
    }
}

/// The tenant is in `phase` and its status describes its current generation.
pub fn current(t: &Tenant, phase: Phase) -> bool {
    t.status
        .as_ref()
        .is_some_and(|s| s.phase == Some(phase) && s.observed_generation == t.metadata.generation)
}

async fn ready(api: &Api<Tenant>, name: &str) -> Result<Tenant, String> {
    let t = api.get(name).await.map_err(|e| e.to_string())?;
    if current(&t, Phase::Ready) {
        Ok(t)
    } else {
        let s = t.status.as_ref();
        Err(format!(
            "phase {:?}, observedGeneration {:?} of {:?}, conditions {:?}",
            s.and_then(|s| s.phase),
            s.and_then(|s| s.observed_generation),
            t.metadata.generation,
            s.map(|s| s
                .conditions
                .iter()
                .filter(|c| c.status != "True")
                .map(|c| format!("{}: {}", c.type_, c.message))
                .collect::<Vec<_>>())
        ))
    }
}

/// The stand-in kubelet: whenever a tenant's StatefulSet or Deployment is not fully ready,
/// sets its status to all replicas ready (0 when scaled to 0).
fn spawn_kubelet(admin: Client) -> JoinHandle<()> {
    tokio::spawn(async move {
        let sts = Api::<StatefulSet>::all(admin.clone());
        let deps = Api::<Deployment>::all(admin.clone());
        let cfg = watcher::Config::default().labels("silo.dev/tenant");
        let s = watcher::watcher(sts, cfg.clone())
            .boxed()
            .map(|e| e.map(Workload::from_sts_event));
        let d = watcher::watcher(deps, cfg)
            .boxed()
            .map(|e| e.map(Workload::from_dep_event));
        let mut events = futures::stream::select(s, d);
        while let Some(ev) = events.next().await {
            let Ok(Some(w)) = ev else { continue };
            if w.ready.unwrap_or(0) == w.replicas && w.observed == w.generation {
                continue;
            }
            let mut status = json!({
                "replicas": w.replicas, "readyReplicas": w.replicas,
                "availableReplicas": w.replicas, "updatedReplicas": w.replicas,
                "observedGeneration": w.generation,
            });
            let pp = PatchParams::default();
            let patch = |st| Patch::Merge(json!({ "status": st }));
            let _ = if w.kind == "StatefulSet" {
                status["currentReplicas"] = w.replicas.into();
                Api::<StatefulSet>::namespaced(admin.clone(), &w.namespace)
                    .patch_status(&w.name, &pp, &patch(status))
                    .await
                    .map(|_| ())
            } else {
                Api::<Deployment>::namespaced(admin.clone(), &w.namespace)
                    .patch_status(&w.name, &pp, &patch(status))
                    .await
                    .map(|_| ())
            };
        }
    })
}

struct Workload {
    kind: &'static str,
    namespace: String,
    name: String,
    replicas: i32,
    ready: Option<i32>,
    generation: Option<i64>,
    observed: Option<i64>,
}

impl Workload {
    fn from_sts_event(e: watcher::Event<StatefulSet>) -> Option<Workload> {
        match e {
            watcher::Event::Apply(s) | watcher::Event::InitApply(s) => Some(Workload {
                kind: "StatefulSet",
                namespace: s.namespace().unwrap_or_default(),
                name: s.name_any(),
                replicas: s.spec.as_ref().and_then(|x| x.replicas).unwrap_or(1),
                ready: s.status.as_ref().and_then(|x| x.ready_replicas),
                generation: s.metadata.generation,
                observed: s.status.as_ref().and_then(|x| x.observed_generation),
            }),
            _ => None,
        }
    }

    fn from_dep_event(e: watcher::Event<Deployment>) -> Option<Workload> {
        match e {
            watcher::Event::Apply(d) | watcher::Event::InitApply(d) => Some(Workload {
                kind: "Deployment",
                namespace: d.namespace().unwrap_or_default(),
                name: d.name_any(),
                replicas: d.spec.as_ref().and_then(|x| x.replicas).unwrap_or(1),
                ready: d.status.as_ref().and_then(|x| x.ready_replicas),
                generation: d.metadata.generation,
                observed: d.status.as_ref().and_then(|x| x.observed_generation),
            }),
            _ => None,
        }
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        self.kubelet.abort();
        if let Some(mut op) = self.operator.take() {
            op.kill();
        }
    }
}
