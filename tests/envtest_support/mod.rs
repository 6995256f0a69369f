//! A throwaway Kubernetes control plane for one test ("envtest"): etcd + kube-apiserver (+
//! kube-controller-manager on request) on free 127.0.0.1 ports in a temp dir, with
//! certificates generated here, a static token file (an admin in `system:masters` and
//! unprivileged users), RBAC authorization and an audit log. Everything is stopped on drop,
//! also when the test panics (and the processes die with the test thread that started them:
//! `PR_SET_PDEATHSIG`, so a killed test leaves nothing behind). Test-only: never part of the
//! shipped binary.
//!
//! # Binaries
//! `KUBEBUILDER_ASSETS` names a folder holding `kube-apiserver` (and `kube-controller-manager`
//! for [`Envtest::start_with_controller_manager`]), the layout of controller-runtime's
//! envtest (`setup-envtest use 1.28.0 -p path`). etcd comes from that folder when present,
//! else from `PATH` (Debian's `etcd-server`: `/usr/bin/etcd`). When the variable is unset,
//! [`Envtest::start`] prints a loud `SKIPPED` line and returns `None`, unless `CI` is set: then
//! it panics, so CI can never pass without running the suite.
//!
//! # Use
//! ```ignore
//! mod envtest_support;
//! use envtest_support::{Envtest, Identity};
//!
//! #[tokio::test]
//! async fn something() {
//!     let Some(env) = Envtest::start().await else { return };   // skipped without binaries
//!     env.install_crds().await;                                   // crds/silo.yaml, Established
//!     let operator = Identity::service_account("silo-system", "silo");
//!     env.install_operator_rbac(&operator).await;                 // operator/rbac.yaml for it
//!     let client = env.client(&operator).await;                   // a kube::Client as the SA
//!     let kubeconfig = env.kubeconfig(&operator).await;           // for `silo operator`
//!     let mark = env.audit().mark();
//!     // … run something …
//!     assert!(env.audit().forbidden_for(&operator.username(), mark).is_empty());
//! }
//! ```
//!
//! Identities: [`Identity::Admin`] (token, `system:masters`), [`Identity::User`] (a bearer
//! token of its own when listed in [`Options::users`] or one of [`DEFAULT_USERS`] with the same
//! groups, otherwise the admin impersonating it: authorization sees the same user either way)
//! and [`Identity::ServiceAccount`] (the ServiceAccount is created when missing and a real
//! token is requested from the TokenRequest API). Each test starts its own control plane
//! (~2 s); `.config/nextest.toml` runs the `envtest_*` binaries one at a time.
//!
//! Beyond the control plane: [`platform::Platform`] sets up Silo as the install manifests do
//! (CRDs, `operator/rbac.yaml` for `silo-system/silo`, the real `silo operator` with its
//! webhook at a loopback URL, optionally a throwaway shared PostgreSQL and Mosquitto, and a
//! stand-in kubelet that marks workloads ready); [`operator::SiloOperator`] runs the binary
//! (SIGKILL, SIGTERM, restart, `/metrics`); [`access`] asks the authorizer (`can-i`) as a user
//! or about one; [`AuditLog`] counts writes and refusals per user since a [`Mark`].
//!
//! Start the control plane from the test's own task (not from a `tokio::spawn`ed or blocking
//! task): the child processes are tied to the thread that started them.
#![allow(dead_code, unused_imports)]

pub mod access;
mod audit;
mod certs;
pub mod operator;
pub mod platform;
pub mod scale;

use std::collections::HashMap;
use std::future::Future;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::GroupVersionKind;
use kube::discovery::{self, Scope};
use kube::{Client, Config, ResourceExt};

pub use audit::{AuditEvent, AuditLog, Mark, WRITE_VERBS};

/// The admin user of the static token file (group `system:masters`).
pub const ADMIN_USER: &str = "envtest-admin";
/// Unprivileged users every control plane has a token for (no groups beyond
/// `system:authenticated`): they hold only what RBAC grants them.
pub const DEFAULT_USERS: [&str; 4] = ["alice", "bob", "carol", "mallory"];
/// The field manager the support uses for what it applies as admin (CRDs, RBAC, manifests).
pub const FIELD_MANAGER: &str = "envtest";
/// How long the API server may take to answer `/readyz` (a loaded 2-core machine).
pub const START_TIMEOUT: Duration = Duration::from_secs(90);

/// The repository root (CRDs, operator manifests, examples).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Who a client acts as.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Identity {
    /// The static-token admin (`system:masters`).
    Admin,
    /// A user with these groups (besides `system:authenticated`).
    User { name: String, groups: Vec<String> },
    /// `system:serviceaccount:<namespace>:<name>`.
    ServiceAccount { namespace: String, name: String },
}

impl Identity {
    pub fn user(name: &str, groups: &[&str]) -> Identity {
        Identity::User {
            name: name.to_string(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    pub fn service_account(namespace: &str, name: &str) -> Identity {
        Identity::ServiceAccount {
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }

    /// The user name the API server sees (audit log, access reviews).
    pub fn username(&self) -> String {
        match self {
            Identity::Admin => ADMIN_USER.to_string(),
            Identity::User { name, .. } => name.clone(),
            Identity::ServiceAccount { namespace, name } => {
                format!("system:serviceaccount:{namespace}:{name}")
            }
        }
    }

    /// An RBAC subject for this identity.
    pub fn subject(&self) -> k8s_openapi::api::rbac::v1::Subject {
        use k8s_openapi::api::rbac::v1::Subject;
        match self {
            Identity::Admin => Subject {
                kind: "User".into(),
                name: ADMIN_USER.into(),
                api_group: Some("rbac.authorization.k8s.io".into()),
                ..Default::default()
            },
            Identity::User { name, .. } => Subject {
                kind: "User".into(),
                name: name.clone(),
                api_group: Some("rbac.authorization.k8s.io".into()),
                ..Default::default()
            },
            Identity::ServiceAccount { namespace, name } => Subject {
                kind: "ServiceAccount".into(),
                name: name.clone(),
                namespace: Some(namespace.clone()),
                ..Default::default()
            },
        }
    }
}

/// How to start the control plane.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Also run kube-controller-manager (namespace deletion, garbage collection,
    /// ServiceAccount controllers).
    pub controller_manager: bool,
    /// Users with their own token in the static token file, besides [`ADMIN_USER`] and
    /// [`DEFAULT_USERS`]: `(name, groups)`.
    pub users: Vec<(String, Vec<String>)>,
    /// Extra kube-apiserver flags (`--flag=value`).
    pub apiserver_args: Vec<String>,
}

struct StaticUser {
    name: String,
    groups: Vec<String>,
    token: String,
}

/// A running control plane; stopped and removed on drop.
pub struct Envtest {
    dir: tempfile::TempDir,
    /// The API server's secure port on 127.0.0.1.
    pub port: u16,
    ca_pem: String,
    users: Vec<StaticUser>,
    sa_tokens: Mutex<HashMap<(String, String), String>>,
    etcd: Option<Child>,
    apiserver: Option<Child>,
    controller_manager: Option<Child>,
    admin: Client,
}

/// The binaries folder, or None (skip) when `KUBEBUILDER_ASSETS` is unset outside CI.
pub fn assets() -> Option<PathBuf> {
    match std::env::var_os("KUBEBUILDER_ASSETS") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            assert!(
                dir.join("kube-apiserver").is_file(),
                "KUBEBUILDER_ASSETS={} holds no kube-apiserver",
                dir.display()
            );
            Some(dir)
        }
        _ => {
            let msg = "KUBEBUILDER_ASSETS is not set: the envtest suite (a real kube-apiserver) \
                       cannot run. Point it at a folder with kube-apiserver and \
                       kube-controller-manager 1.28 (README: \"Tests against a real API server\")";
            if std::env::var_os("CI").is_some() {
                panic!("{msg}; CI is set, so this is a failure, not a skip");
            }
            eprintln!("\n!!!!!!!!!! SKIPPED: {msg} !!!!!!!!!!\n");
            None
        }
    }
}

fn etcd_binary(assets: &Path) -> PathBuf {
    let local = assets.join("etcd");
    if local.is_file() {
        return local;
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("etcd");
            if p.is_file() {
                return p;
            }
        }
    }
    let debian = PathBuf::from("/usr/bin/etcd");
    assert!(
        debian.is_file(),
        "etcd not found in KUBEBUILDER_ASSETS nor PATH (apt-get install etcd-server)"
    );
    debian
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .expect("local addr")
        .port()
}

fn random_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Spawns `cmd` with output to `log`, killed with SIGKILL when the spawning thread exits.
pub fn spawn_tied(cmd: &mut Command, log: &Path) -> Child {
    let out = std::fs::File::create(log).expect("create log file");
    let err = out.try_clone().expect("clone log file");
    // SAFETY: prctl is async-signal-safe and touches only the child's own state.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {:?}: {e}", cmd.get_program()))
}

fn kill(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// The last `n` lines of a log file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Polls `f` every 200 ms until it returns `Ok`, for at most `timeout`; panics naming `what`
/// and the last error otherwise.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    match wait_until(timeout, f).await {
        Ok(v) => v,
        Err(e) => panic!("{what}: not reached after {timeout:?}; last: {e}"),
    }
}

/// Polls `f` every 200 ms until it returns `Ok`, for at most `timeout`; the last error
/// otherwise (for callers that add context before failing).
pub async fn wait_until<T, F, Fut>(timeout: Duration, mut f: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

impl Envtest {
    /// etcd + kube-apiserver, no controller-manager. None: skipped (see the module docs).
    pub async fn start() -> Option<Envtest> {
        Envtest::start_with(Options::default()).await
    }

    /// etcd + kube-apiserver + kube-controller-manager (namespace deletion, garbage
    /// collection, ServiceAccount controllers).
    pub async fn start_with_controller_manager() -> Option<Envtest> {
        Envtest::start_with(Options {
            controller_manager: true,
            ..Options::default()
        })
        .await
    }

    pub async fn start_with(opts: Options) -> Option<Envtest> {
        let assets = assets()?;
        Some(Envtest::start_from(&assets, opts).await)
    }

    async fn start_from(assets: &Path, opts: Options) -> Envtest {
        let started = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("silo-envtest-")
            .tempdir()
            .expect("temp dir");
        let d = dir.path();
        let certs = certs::ControlPlaneCerts::generate();
        for (name, pem) in [
            ("ca.crt", &certs.ca_pem),
            ("apiserver.crt", &certs.serving_cert_pem),
            ("apiserver.key", &certs.serving_key_pem),
            ("sa.key", &certs.sa_key_pem),
            ("sa.pub", &certs.sa_pub_pem),
        ] {
            std::fs::write(d.join(name), pem).expect("write certificate");
        }
        let mut users = vec![StaticUser {
            name: ADMIN_USER.into(),
            groups: vec!["system:masters".into()],
            token: random_token(),
        }];
        for name in DEFAULT_USERS {
            users.push(StaticUser {
                name: name.into(),
                groups: vec![],
                token: random_token(),
            });
        }
        for (name, groups) in &opts.users {
            users.push(StaticUser {
                name: name.clone(),
                groups: groups.clone(),
                token: random_token(),
            });
        }
        let csv: String = users
            .iter()
            .enumerate()
            .map(|(i, u)| {
                format!(
                    "{},{},uid-{i},\"{}\"\n",
                    u.token,
                    u.name,
                    u.groups.join(",")
                )
            })
            .collect();
        std::fs::write(d.join("tokens.csv"), csv).expect("write tokens.csv");
        std::fs::write(d.join("audit-policy.yaml"), audit::POLICY).expect("write audit policy");

        let etcd_bin = etcd_binary(assets);
        let mut last_error = String::new();
        // A free port can be taken by another process between probing and binding: retry.
        for _attempt in 0..3 {
            let (p_client, p_peer, p_api) = (free_port(), free_port(), free_port());
            let etcd_data = d.join("etcd");
            let _ = std::fs::remove_dir_all(&etcd_data);
            let mut etcd = Some(spawn_tied(
                Command::new(&etcd_bin)
                    .arg(format!("--data-dir={}", etcd_data.display()))
                    .arg(format!("--listen-client-urls=http://127.0.0.1:{p_client}"))
                    .arg(format!(
                        "--advertise-client-urls=http://127.0.0.1:{p_client}"
                    ))
                    .arg(format!("--listen-peer-urls=http://127.0.0.1:{p_peer}"))
                    .arg(format!(
                        "--initial-advertise-peer-urls=http://127.0.0.1:{p_peer}"
                    ))
                    .arg(format!(
                        "--initial-cluster=default=http://127.0.0.1:{p_peer}"
                    ))
                    .arg("--quota-backend-bytes=4294967296"),
                &d.join("etcd.log"),
            ));
            let mut args = vec![
                format!("--etcd-servers=http://127.0.0.1:{p_client}"),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                format!("--secure-port={p_api}"),
                format!("--tls-cert-file={}", d.join("apiserver.crt").display()),
                format!(
                    "--tls-private-key-file={}",
                    d.join("apiserver.key").display()
                ),
                format!("--client-ca-file={}", d.join("ca.crt").display()),
                "--service-account-issuer=https://kubernetes.default.svc".into(),
                format!("--service-account-key-file={}", d.join("sa.pub").display()),
                format!(
                    "--service-account-signing-key-file={}",
                    d.join("sa.key").display()
                ),
                format!("--token-auth-file={}", d.join("tokens.csv").display()),
                "--authorization-mode=RBAC".into(),
                "--service-cluster-ip-range=10.96.0.0/16".into(),
                "--enable-priority-and-fairness=false".into(),
                "--endpoint-reconciler-type=none".into(),
                format!(
                    "--audit-policy-file={}",
                    d.join("audit-policy.yaml").display()
                ),
                format!("--audit-log-path={}", d.join("audit.log").display()),
                "--audit-log-mode=blocking".into(),
                // In MB; 0 would mean lumberjack's default of 100 MB, which a 5,000-tenant
                // benchmark passes (a rotation loses the marks' byte offsets).
                "--audit-log-maxsize=1000000".into(),
                // `SILO_ENVTEST_PROFILING=1` serves Go's /debug/pprof (for the admin user), to
                // profile the server under a benchmark: see the README's "Benchmarks".
                format!(
                    "--profiling={}",
                    std::env::var("SILO_ENVTEST_PROFILING").is_ok_and(|v| v == "1")
                ),
            ];
            args.extend(opts.apiserver_args.iter().cloned());
            let mut apiserver = Some(spawn_tied(
                Command::new(assets.join("kube-apiserver")).args(&args),
                &d.join("kube-apiserver.log"),
            ));
            let admin = client_from_kubeconfig(&kubeconfig_yaml(
                p_api,
                &certs.ca_pem,
                &users[0].token,
                None,
            ))
            .await;
            match wait_ready(&admin, d, &mut etcd, &mut apiserver).await {
                Ok(()) => {
                    let mut env = Envtest {
                        dir,
                        port: p_api,
                        ca_pem: certs.ca_pem.clone(),
                        users,
                        sa_tokens: Mutex::new(HashMap::new()),
                        etcd,
                        apiserver,
                        controller_manager: None,
                        admin,
                    };
                    if opts.controller_manager {
                        env.start_controller_manager(assets);
                    }
                    eprintln!(
                        "envtest: kube-apiserver on https://127.0.0.1:{} ready after {:.1?} ({})",
                        env.port,
                        started.elapsed(),
                        env.dir.path().display()
                    );
                    return env;
                }
                Err(e) => {
                    kill(&mut apiserver);
                    kill(&mut etcd);
                    let retry = e.contains("address already in use");
                    last_error = e;
                    if !retry {
                        break;
                    }
                }
            }
        }
        panic!("the envtest control plane did not start: {last_error}");
    }

    fn start_controller_manager(&mut self, assets: &Path) {
        let d = self.dir.path().to_path_buf();
        let kubeconfig = d.join("controller-manager.kubeconfig");
        std::fs::write(
            &kubeconfig,
            kubeconfig_yaml(self.port, &self.ca_pem, &self.users[0].token, None),
        )
        .expect("write kubeconfig");
        let child = spawn_tied(
            Command::new(assets.join("kube-controller-manager"))
                .arg(format!("--kubeconfig={}", kubeconfig.display()))
                .arg("--leader-elect=false")
                .arg("--secure-port=0")
                .arg(
                    "--controllers=namespace-controller,garbage-collector-controller,\
                     serviceaccount-controller,serviceaccount-token-controller",
                )
                .arg(format!(
                    "--service-account-private-key-file={}",
                    d.join("sa.key").display()
                ))
                .arg(format!("--root-ca-file={}", d.join("ca.crt").display()))
                .arg("--concurrent-gc-syncs=5")
                .arg("--concurrent-namespace-syncs=5"),
            &d.join("kube-controller-manager.log"),
        );
        self.controller_manager = Some(child);
    }

    /// The temp dir holding certificates, logs and kubeconfigs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `https://127.0.0.1:<port>`.
    pub fn server_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The CA that signed the API server's certificate (PEM).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A client as the admin (`system:masters`).
    pub fn admin(&self) -> Client {
        self.admin.clone()
    }

    /// The server's audit log.
    pub fn audit(&self) -> AuditLog {
        AuditLog {
            path: self.dir.path().join("audit.log"),
        }
    }

    /// The last `n` lines of `kube-apiserver.log`, `etcd.log` or `kube-controller-manager.log`.
    pub fn log_tail(&self, file: &str, n: usize) -> String {
        tail(&self.dir.path().join(file), n)
    }

    /// A client as `name` with `groups` (see the module docs on tokens vs impersonation).
    pub async fn client_as_user(&self, name: &str, groups: &[&str]) -> Client {
        self.client(&Identity::user(name, groups)).await
    }

    /// A client as ServiceAccount `namespace/name` with a real token (TokenRequest); the
    /// namespace and ServiceAccount are created when missing.
    pub async fn client_as_service_account(&self, namespace: &str, name: &str) -> Client {
        self.client(&Identity::service_account(namespace, name))
            .await
    }

    /// A client acting as `who`.
    pub async fn client(&self, who: &Identity) -> Client {
        client_from_kubeconfig(&self.kubeconfig_text(who).await).await
    }

    /// Writes a kubeconfig for `who` into the temp dir and returns its path (for `KUBECONFIG`
    /// of a spawned `silo` binary).
    pub async fn kubeconfig(&self, who: &Identity) -> PathBuf {
        let text = self.kubeconfig_text(who).await;
        let file = match who {
            Identity::Admin => "admin".to_string(),
            Identity::User { name, .. } => format!("user-{name}"),
            Identity::ServiceAccount { namespace, name } => format!("sa-{namespace}-{name}"),
        };
        let path = self.dir.path().join(format!("{file}.kubeconfig"));
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }

    async fn kubeconfig_text(&self, who: &Identity) -> String {
        let admin_token = &self.users[0].token;
        match who {
            Identity::Admin => kubeconfig_yaml(self.port, &self.ca_pem, admin_token, None),
            Identity::User { name, groups } => {
                match self
                    .users
                    .iter()
                    .find(|u| &u.name == name && &u.groups == groups)
                {
                    Some(u) => kubeconfig_yaml(self.port, &self.ca_pem, &u.token, None),
                    None => kubeconfig_yaml(
                        self.port,
                        &self.ca_pem,
                        admin_token,
                        Some((name.as_str(), groups.as_slice())),
                    ),
                }
            }
            Identity::ServiceAccount { namespace, name } => {
                let token = self.service_account_token(namespace, name).await;
                kubeconfig_yaml(self.port, &self.ca_pem, &token, None)
            }
        }
    }

    /// A token for ServiceAccount `namespace/name` (24 h), created once per control plane.
    pub async fn service_account_token(&self, namespace: &str, name: &str) -> String {
        let key = (namespace.to_string(), name.to_string());
        if let Some(t) = self.sa_tokens.lock().expect("token cache").get(&key) {
            return t.clone();
        }
        self.ensure_namespace(namespace).await;
        let sas: Api<ServiceAccount> = Api::namespaced(self.admin(), namespace);
        let sa = ServiceAccount {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        sas.patch(name, &apply_params(), &Patch::Apply(&sa))
            .await
            .unwrap_or_else(|e| panic!("create ServiceAccount {namespace}/{name}: {e}"));
        let req = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![],
                expiration_seconds: Some(86_400),
                bound_object_ref: None,
            },
            ..Default::default()
        };
        let token = sas
            .create_token_request(name, &PostParams::default(), &req)
            .await
            .unwrap_or_else(|e| panic!("TokenRequest for {namespace}/{name}: {e}"))
            .status
            .expect("token status")
            .token;
        self.sa_tokens
            .lock()
            .expect("token cache")
            .insert(key, token.clone());
        token
    }

    /// Creates `name` when missing (server-side apply as admin).
    pub async fn ensure_namespace(&self, name: &str) {
        let api: Api<Namespace> = Api::all(self.admin());
        let ns = Namespace {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        api.patch(name, &apply_params(), &Patch::Apply(&ns))
            .await
            .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
    }

    /// Installs `crds/` (the same YAML `silo crds` prints) and waits until every CRD is
    /// Established.
    pub async fn install_crds(&self) {
        let yaml = std::fs::read_to_string(repo_root().join("crds/silo.yaml"))
            .expect("read crds/silo.yaml");
        let names = self.apply_yaml(&yaml).await;
        let api: Api<CustomResourceDefinition> = Api::all(self.admin());
        for (_, name) in names {
            eventually(
                &format!("CRD {name} Established"),
                Duration::from_secs(60),
                || {
                    let api = api.clone();
                    let name = name.clone();
                    async move {
                        let crd = api.get(&name).await.map_err(|e| e.to_string())?;
                        let ok = crd
                            .status
                            .and_then(|s| s.conditions)
                            .unwrap_or_default()
                            .iter()
                            .any(|c| c.type_ == "Established" && c.status == "True");
                        if ok {
                            Ok(())
                        } else {
                            Err("not Established".into())
                        }
                    }
                },
            )
            .await;
        }
        // Discovery of the new group can lag a moment behind Established.
        let client = self.admin();
        eventually("silo.dev in discovery", Duration::from_secs(30), || {
            let client = client.clone();
            async move {
                let gvk = GroupVersionKind::gvk("silo.dev", "v1alpha1", "Tenant");
                discovery::pinned_kind(&client, &gvk)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        })
        .await;
    }

    /// Installs `operator/rbac.yaml` (the operator's ClusterRole, its binding, the Lease Role
    /// and its binding) with every binding's subjects replaced by `who`; creates the
    /// operator's namespace `silo-system`.
    pub async fn install_operator_rbac(&self, who: &Identity) {
        self.ensure_namespace("silo-system").await;
        let yaml = std::fs::read_to_string(repo_root().join("operator/rbac.yaml"))
            .expect("read operator/rbac.yaml");
        let subject = serde_json::to_value(who.subject()).expect("subject");
        let mut docs = Vec::new();
        for doc in serde_norway::Deserializer::from_str(&yaml) {
            let mut v: serde_json::Value =
                serde::Deserialize::deserialize(doc).expect("operator/rbac.yaml parses");
            if v.is_null() {
                continue;
            }
            if v.get("subjects").is_some() {
                v["subjects"] = serde_json::json!([subject.clone()]);
            }
            docs.push(v);
        }
        for v in docs {
            self.apply_value(v).await;
        }
    }

    /// Server-side applies every document of `yaml` as admin (any kind the server knows);
    /// returns `(kind, name)` of each.
    pub async fn apply_yaml(&self, yaml: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for doc in serde_norway::Deserializer::from_str(yaml) {
            let v: serde_json::Value = serde::Deserialize::deserialize(doc).expect("YAML parses");
            if v.is_null() {
                continue;
            }
            out.push(self.apply_value(v).await);
        }
        out
    }

    /// Server-side applies one object as admin; returns `(kind, name)`.
    pub async fn apply_value(&self, v: serde_json::Value) -> (String, String) {
        apply_as(&self.admin(), v, FIELD_MANAGER).await
    }

    /// Stands in for the kubelet (envtest runs no pods): sets the status of every
    /// StatefulSet and Deployment in `namespace` to all replicas ready. Returns how many
    /// workloads it marked.
    pub async fn mark_workloads_ready(&self, namespace: &str) -> usize {
        use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
        let admin = self.admin();
        let mut n = 0;
        let sts: Api<StatefulSet> = Api::namespaced(admin.clone(), namespace);
        for s in sts
            .list(&Default::default())
            .await
            .expect("list StatefulSets")
        {
            let r = s.spec.as_ref().and_then(|x| x.replicas).unwrap_or(1);
            set_workload_ready(
                &admin,
                "StatefulSet",
                namespace,
                &s.name_any(),
                r,
                s.metadata.generation,
            )
            .await
            .expect("patch StatefulSet status");
            n += 1;
        }
        let deps: Api<Deployment> = Api::namespaced(admin.clone(), namespace);
        for d in deps
            .list(&Default::default())
            .await
            .expect("list Deployments")
        {
            let r = d.spec.as_ref().and_then(|x| x.replicas).unwrap_or(1);
            set_workload_ready(
                &admin,
                "Deployment",
                namespace,
                &d.name_any(),
                r,
                d.metadata.generation,
            )
            .await
            .expect("patch Deployment status");
            n += 1;
        }
        n
    }

    /// The API server's log, tail included in panic messages.
    fn dump_logs(&self) {
        for f in [
            "kube-apiserver.log",
            "etcd.log",
            "kube-controller-manager.log",
        ] {
            let p = self.dir.path().join(f);
            if p.exists() {
                eprintln!("--- {f} (last 30 lines) ---\n{}", tail(&p, 30));
            }
        }
    }
}

/// Server-side applies one object with `client` under `field_manager` (forced); the kind is
/// resolved by discovery. Returns `(kind, name)`; panics with the server's message.
pub async fn apply_as(
    client: &Client,
    v: serde_json::Value,
    field_manager: &str,
) -> (String, String) {
    let api_version = v["apiVersion"].as_str().expect("apiVersion").to_string();
    let kind = v["kind"].as_str().expect("kind").to_string();
    let name = v["metadata"]["name"].as_str().expect("name").to_string();
    let namespace = v["metadata"]["namespace"].as_str().map(str::to_string);
    let (group, version) = match api_version.split_once('/') {
        Some((g, ver)) => (g.to_string(), ver.to_string()),
        None => (String::new(), api_version.clone()),
    };
    let gvk = GroupVersionKind::gvk(&group, &version, &kind);
    let (ar, caps) = discovery::pinned_kind(client, &gvk)
        .await
        .unwrap_or_else(|e| panic!("discover {api_version} {kind}: {e}"));
    let api: Api<DynamicObject> = match (&caps.scope, &namespace) {
        (Scope::Namespaced, Some(ns)) => Api::namespaced_with(client.clone(), ns, &ar),
        (Scope::Namespaced, None) => Api::default_namespaced_with(client.clone(), &ar),
        (Scope::Cluster, _) => Api::all_with(client.clone(), &ar),
    };
    api.patch(
        &name,
        &PatchParams::apply(field_manager).force(),
        &Patch::Apply(&v),
    )
    .await
    .unwrap_or_else(|e| panic!("apply {kind} {name}: {e}"));
    (kind, name)
}

/// What the kubelet and the workload controllers would report once every pod of a
/// StatefulSet or Deployment (`kind`) runs: `replicas` ready, for `generation`.
pub async fn set_workload_ready(
    client: &Client,
    kind: &str,
    namespace: &str,
    name: &str,
    replicas: i32,
    generation: Option<i64>,
) -> Result<(), kube::Error> {
    use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
    let mut status = serde_json::json!({
        "replicas": replicas, "readyReplicas": replicas,
        "availableReplicas": replicas, "updatedReplicas": replicas,
        "observedGeneration": generation,
    });
    let pp = PatchParams::default();
    if kind == "StatefulSet" {
        status["currentReplicas"] = replicas.into();
        let patch = Patch::Merge(serde_json::json!({ "status": status }));
        Api::<StatefulSet>::namespaced(client.clone(), namespace)
            .patch_status(name, &pp, &patch)
            .await
            .map(|_| ())
    } else {
        let patch = Patch::Merge(serde_json::json!({ "status": status }));
        Api::<Deployment>::namespaced(client.clone(), namespace)
            .patch_status(name, &pp, &patch)
            .await
            .map(|_| ())
    }
}

fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// A kubeconfig for the server on `port`: the bearer `token`, optionally impersonating
/// `(user, groups)`.
fn kubeconfig_yaml(
    port: u16,
    ca_pem: &str,
    token: &str,
    act_as: Option<(&str, &[String])>,
) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let mut user = serde_json::json!({ "token": token });
    if let Some((name, groups)) = act_as {
        user["as"] = name.into();
        if !groups.is_empty() {
            user["as-groups"] = serde_json::json!(groups);
        }
    }
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "envtest", "cluster": {
            "server": format!("https://127.0.0.1:{port}"),
            "certificate-authority-data": ca,
        }}],
        "users": [{"name": "envtest", "user": user}],
        "contexts": [{"name": "envtest", "context": {"cluster": "envtest", "user": "envtest"}}],
        "current-context": "envtest",
    });
    serde_norway::to_string(&doc).expect("kubeconfig YAML")
}

async fn client_from_kubeconfig(text: &str) -> Client {
    let kc = Kubeconfig::from_yaml(text).expect("kubeconfig parses");
    let mut cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig loads");
    cfg.read_timeout = Some(Duration::from_secs(60));
    Client::try_from(cfg).expect("kube client")
}

/// Waits until the API server answers `/readyz` with `ok`; an early exit of either process
/// is an error carrying the tail of its log.
async fn wait_ready(
    admin: &Client,
    dir: &Path,
    etcd: &mut Option<Child>,
    apiserver: &mut Option<Child>,
) -> Result<(), String> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        for (what, child, log) in [
            ("etcd", &mut *etcd, "etcd.log"),
            ("kube-apiserver", &mut *apiserver, "kube-apiserver.log"),
        ] {
            if let Some(c) = child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                return Err(format!(
                    "{what} exited ({status}):\n{}",
                    tail(&dir.join(log), 40)
                ));
            }
        }
        let req = http::Request::get("/readyz")
            .body(Vec::new())
            .expect("request");
        match admin.request_text(req).await {
            Ok(body) if body.trim() == "ok" => return Ok(()),
            _ if Instant::now() > deadline => {
                return Err(format!(
                    "kube-apiserver not ready after {START_TIMEOUT:?}:\n{}",
                    tail(&dir.join("kube-apiserver.log"), 40)
                ));
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

impl Drop for Envtest {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
            if std::env::var_os("SILO_ENVTEST_KEEP").is_some() {
                let path = self.dir.path().to_path_buf();
                eprintln!("envtest: keeping {}", path.display());
                std::mem::forget(std::mem::replace(
                    &mut self.dir,
                    tempfile::tempdir().expect("temp dir"),
                ));
            }
        }
        kill(&mut self.controller_manager);
        kill(&mut self.apiserver);
        kill(&mut self.etcd);
    }
}
