//! The `silo` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use silo::plan::{self, OutputFormat};

#[derive(Parser)]
#[command(
    name = "silo",
    // "0.1.0 (<git revision>)": the revision comes from build.rs ("unknown" without one);
    // " +test-support" follows when the test doubles are compiled in (never in the image).
    version = concat!(
        env!("CARGO_PKG_VERSION"),
        " (",
        env!("SILO_GIT_REVISION"),
        ")",
        env!("SILO_BUILD_NOTE")
    ),
    about = "Turns a tree of tenants into isolated silos on Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controllers, the admission webhook, /metrics, /healthz and /readyz.
    Operator {
        /// Platform configuration file.
        #[arg(long, env = "SILO_CONFIG")]
        config: Option<PathBuf>,
        /// Register the webhook with this URL instead of the in-cluster Service (development).
        #[arg(long)]
        webhook_url: Option<String>,
        /// Address serving the admission webhook (HTTPS, `/validate`), on every replica.
        #[arg(long, default_value = silo::operator::admission::DEFAULT_ADDR)]
        webhook_addr: std::net::SocketAddr,
        /// Serve this mounted certificate (cert-manager) instead of the operator's own.
        #[arg(long, requires = "webhook_key_file")]
        webhook_cert_file: Option<PathBuf>,
        /// Key of --webhook-cert-file.
        #[arg(long, requires = "webhook_cert_file")]
        webhook_key_file: Option<PathBuf>,
        /// Address serving /healthz, /readyz and /metrics.
        #[arg(long, default_value = "0.0.0.0:8080")]
        metrics_addr: std::net::SocketAddr,
    },
    /// Run the control-plane REST API (needs api.database.url and a reachable cluster).
    Api {
        /// Platform configuration file.
        #[arg(long, env = "SILO_CONFIG")]
        config: Option<PathBuf>,
        /// Listen address (default: api.addr of the configuration, 0.0.0.0:8081).
        #[arg(long)]
        addr: Option<std::net::SocketAddr>,
    },
    /// Print the CustomResourceDefinitions as YAML.
    Crds,
    /// Validate Tenant/LimitProfile/Channel YAML offline and show the tree or the objects.
    Plan {
        /// Files or directories (YAML/JSON, multi-document). Directories are read one level
        /// deep unless --recursive is given, as with kubectl.
        #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
        files: Vec<PathBuf>,
        /// Descend into sub-directories.
        #[arg(short = 'R', long)]
        recursive: bool,
        /// Output: the tree, every Kubernetes object as YAML, or tree and objects as JSON.
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Tree)]
        output: Output,
        /// Platform configuration file (images, maxDepth, namespace prefix…).
        #[arg(long, env = "SILO_CONFIG")]
        config: Option<PathBuf>,
    },
    /// API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// The audit trail (api.database): verify its hash chains, archive old records.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Recompute every hash chain; exit 1 naming the first broken record of each broken chain.
    Verify {
        /// Platform configuration file.
        #[arg(long, env = "SILO_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Export records older than --before as JSON lines, append a signed checkpoint to each
    /// chain and remove them (as api.database.ownerUrl; needs api.audit.signingKey).
    Archive {
        /// RFC 3339 time, or <n>d for n days ago.
        #[arg(long)]
        before: String,
        /// The JSON-lines file to create (an existing file is refused).
        #[arg(long)]
        out: PathBuf,
        /// Platform configuration file.
        #[arg(long, env = "SILO_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Print a new checkpoint key pair (api.audit.signingKey and api.audit.verifyKey).
    Keygen,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Mint an API token bound to a tenant and a role; the token is printed once, alone on
    /// the last line. Uses the API database of the configuration (api.database).
    Create {
        /// The tenant the token acts for (its whole subtree).
        #[arg(long)]
        tenant: String,
        /// admin, technician, viewer or a custom role defined for the tenant or above.
        #[arg(long)]
        role: String,
        /// Lifetime: a number with m, h or d.
        #[arg(long, default_value = "30d")]
        expires: String,
        /// A label for people.
        #[arg(long)]
        name: Option<String>,
        /// Platform configuration file.
        #[arg(long, env = "SILO_CONFIG")]
        config: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Tree,
    Yaml,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crds => match silo::types::crds_yaml() {
            Ok(yaml) => emit(&yaml),
            Err(e) => {
                eprintln!("error: cannot render CRDs: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Plan {
            files,
            recursive,
            output,
            config,
        } => {
            let format = match output {
                Output::Tree => OutputFormat::Tree,
                Output::Yaml => OutputFormat::Yaml,
                Output::Json => OutputFormat::Json,
            };
            let cfg = match silo::config::PlatformConfig::load(config.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match plan::run(&files, recursive, format, &cfg) {
                Ok(text) => emit(&text),
                Err(problems) => {
                    use std::io::Write;
                    let mut err = std::io::stderr().lock();
                    for p in problems {
                        // Nothing better to do if stderr itself is closed.
                        let _ = writeln!(err, "{p}");
                    }
                    ExitCode::FAILURE
                }
            }
        }
        Command::Operator {
            config,
            webhook_url,
            webhook_addr,
            webhook_cert_file,
            webhook_key_file,
            metrics_addr,
        } => run_operator(
            config,
            metrics_addr,
            WebhookFlags {
                url: webhook_url,
                addr: webhook_addr,
                cert_file: webhook_cert_file,
                key_file: webhook_key_file,
            },
        ),
        Command::Api { config, addr } => run_api(config, addr),
        Command::Token {
            command:
                TokenCommand::Create {
                    tenant,
                    role,
                    expires,
                    name,
                    config,
                },
        } => token_create(config, &tenant, &role, &expires, name.as_deref()),
        Command::Audit { command } => audit_command(command),
    }
}

/// `silo audit …`: one line per problem on stderr, exit 1.
fn audit_command(command: AuditCommand) -> ExitCode {
    let load = |config: Option<PathBuf>| {
        silo::config::PlatformConfig::load(config.as_deref()).map_err(|e| e.to_string())
    };
    let rt = match runtime("silo audit") {
        Ok(r) => r,
        Err(code) => return code,
    };
    match command {
        AuditCommand::Keygen => {
            let (seed, public) = silo::audit::sign::Signer::generate();
            emit(&format!(
                "# api.audit.signingKey (keep it secret: SILO_API_AUDIT_SIGNING_KEY)\nsigningKey: {seed}\n# api.audit.verifyKey (public)\nverifyKey: {public}\n"
            ))
        }
        AuditCommand::Verify { config } => {
            let result = rt.block_on(async {
                let cfg = load(config)?;
                let client = silo::audit::connect(&cfg.api.database, false)
                    .await
                    .map_err(|e| e.to_string())?;
                let key = silo::audit::verify_key(&cfg.api.audit);
                silo::audit::verify(&client, key.as_deref())
                    .await
                    .map_err(|e| e.to_string())
            });
            match result {
                Err(e) => {
                    eprintln!("silo audit verify: {e}");
                    ExitCode::FAILURE
                }
                Ok(r) if r.broken.is_empty() => emit(&format!(
                    "audit trail intact: {} records in {} chains ({} checkpoints verified, {} not checked)\n",
                    r.records, r.chains, r.checkpoints_verified, r.checkpoints_unchecked
                )),
                Ok(r) => {
                    for b in &r.broken {
                        eprintln!("BROKEN {b}");
                    }
                    eprintln!(
                        "silo audit verify: {} of {} chains broken ({} records read)",
                        r.broken.len(),
                        r.chains,
                        r.records
                    );
                    ExitCode::FAILURE
                }
            }
        }
        AuditCommand::Archive {
            before,
            out,
            config,
        } => {
            let result = rt.block_on(async {
                let cfg = load(config)?;
                let before = silo::audit::parse_before(&before)?;
                if cfg.api.audit.signing_key.is_empty() {
                    return Err("api.audit.signingKey is not set: checkpoints must be signed (create a key pair with `silo audit keygen`)".to_string());
                }
                let signer = silo::audit::sign::Signer::from_seed_b64(&cfg.api.audit.signing_key)
                    .map_err(|e| format!("api.audit.signingKey: {e}"))?;
                let mut client = silo::audit::connect(&cfg.api.database, true)
                    .await
                    .map_err(|e| e.to_string())?;
                silo::audit::archive(&mut client, &before, &out, &signer)
                    .await
                    .map_err(|e| e.to_string())
            });
            match result {
                Err(e) => {
                    eprintln!("silo audit archive: {e}");
                    ExitCode::FAILURE
                }
                Ok(r) => {
                    let mut text =
                        format!("archived {} records to {}\n", r.records, r.file.display());
                    for (chain, seq) in &r.checkpoints {
                        text.push_str(&format!("checkpoint: chain {chain:?} through seq {seq}\n"));
                    }
                    emit(&text)
                }
            }
        }
    }
}

/// The webhook flags of `silo operator`.
struct WebhookFlags {
    url: Option<String>,
    addr: std::net::SocketAddr,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
}

/// `silo operator`: one clear line on stderr and exit 1 when it cannot start.
fn run_operator(
    config: Option<PathBuf>,
    metrics_addr: std::net::SocketAddr,
    webhook: WebhookFlags,
) -> ExitCode {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cfg = match silo::config::PlatformConfig::load(config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("silo operator: {e}");
            return ExitCode::FAILURE;
        }
    };
    let admission = match silo::operator::admission::AdmissionOptions::from_flags(
        webhook.addr,
        &cfg.platform_namespace,
        webhook.url.as_deref(),
        webhook.cert_file,
        webhook.key_file,
    ) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("silo operator: {e}");
            return ExitCode::FAILURE;
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,kube_client::client::builder=off")
    });
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(true)
        .with_span_list(false)
        .with_writer(std::io::stdout)
        .try_init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("silo operator: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let identity = std::env::var("POD_NAME").unwrap_or_else(|_| {
        format!(
            "{}-{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "silo-operator".into()),
            std::process::id()
        )
    });
    let lease_namespace =
        std::env::var("POD_NAMESPACE").unwrap_or_else(|_| cfg.platform_namespace.clone());
    // Only the leader's controllers call the provider; at start-up every replica reads the
    // keyring (and the first one to start writes the new master key, see `local_keyring`).
    let keys = match runtime.block_on(key_service(&cfg)) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("silo operator: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shared = match runtime.block_on(shared_services(&cfg)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("silo operator: {e}");
            return ExitCode::FAILURE;
        }
    };
    let opts = silo::operator::controller::Options {
        shared,
        config: cfg,
        metrics_addr,
        lease_namespace,
        identity,
        keys,
        extra_routes: None,
        admission: Some(admission),
    };
    match runtime.block_on(silo::operator::controller::run(opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("silo operator: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The operator's key service: `local` keeps its keyring in the Secret `silo-keyring` (master)
/// and one `silo-key-*` Secret per tenant key record in the platform namespace, `aws-kms` uses the standard AWS configuration.
async fn key_service(
    cfg: &silo::config::PlatformConfig,
) -> Result<std::sync::Arc<dyn silo::operator::key_service::KeyService>, KeyStart> {
    let store: Option<std::sync::Arc<dyn silo::keys::local::KeyringStore>> = match cfg.keys.provider
    {
        silo::config::KeyProviderKind::Local => {
            // The same start-up checks (and one-line errors) as `operator::controller::run`,
            // which repeats them: the keyring is read only from a reachable cluster.
            use silo::operator::controller::StartError;
            let kube_config = kube::Config::infer()
                .await
                .map_err(|e| KeyStart::Kube(StartError::Config(e.to_string())))?;
            let server = kube_config.cluster_url.to_string();
            let client = kube::Client::try_from(kube_config)
                .map_err(|e| KeyStart::Kube(StartError::Config(e.to_string())))?;
            silo::operator::controller::wait_for_crds(&client, &server)
                .await
                .map_err(KeyStart::Kube)?;
            Some(std::sync::Arc::new(
                silo::keys::keyring_store::SecretKeyringStore::new(client, &cfg.platform_namespace),
            ))
        }
        silo::config::KeyProviderKind::AwsKms => None,
    };
    // Two replicas starting at once may both try to create the keyring Secret; the loser
    // gets a conflict and re-reads the winner's keyring.
    let mut attempt = 0;
    loop {
        attempt += 1;
        let opened = match &store {
            Some(store) => {
                silo::keys::local::LocalProvider::open(store.clone(), cfg.keys.deletion_window_days)
                    .await
                    .map(|p| {
                        let p = std::sync::Arc::new(p);
                        // Writes are compare-and-swap per record (a stale cache meets a
                        // conflict and re-reads); the periodic re-read (one LIST of every key
                        // record) only lets a new leader see versions its predecessor added.
                        silo::operator::key_service::ProviderKeys::new(p.clone())
                            .with_local_refresh(p, std::time::Duration::from_secs(60))
                    })
            }
            None => silo::keys::provider_from_config(cfg, None)
                .await
                .map(silo::operator::key_service::ProviderKeys::new),
        };
        match opened {
            Ok(k) => return Ok(std::sync::Arc::new(k)),
            Err(silo::keys::KeyError::Conflict(m)) if attempt < 3 => {
                tracing::warn!(error = %m, "keyring changed while starting; re-reading");
            }
            Err(e) => {
                let kind = match cfg.keys.provider {
                    silo::config::KeyProviderKind::Local => "local",
                    silo::config::KeyProviderKind::AwsKms => "aws-kms",
                };
                return Err(KeyStart::Provider(kind, e));
            }
        }
    }
}

/// The shared PostgreSQL and Mosquitto of Shared tenants (`shared.*` in the platform
/// configuration), their admin credentials read from Secrets in the platform namespace.
async fn shared_services(
    cfg: &silo::config::PlatformConfig,
) -> Result<std::sync::Arc<dyn silo::backends::SharedServices>, String> {
    if cfg.shared.postgres.host.is_empty() && cfg.shared.mosquitto.host.is_empty() {
        return Ok(std::sync::Arc::new(silo::backends::Unconfigured));
    }
    let kube_config = kube::Config::infer().await.map_err(|e| e.to_string())?;
    let client = kube::Client::try_from(kube_config).map_err(|e| e.to_string())?;
    let cluster = silo::operator::cluster::kube_client::KubeCluster::new(client, None);
    let services = silo::operator::reconcile::shared::services_from_config(&cluster, cfg)
        .await
        .map_err(|e| e.to_string())?;
    Ok(std::sync::Arc::new(services))
}

/// Why the key service could not start.
#[derive(Debug, thiserror::Error)]
enum KeyStart {
    /// The cluster itself is unusable: reported as `silo operator` reports it.
    #[error(transparent)]
    Kube(silo::operator::controller::StartError),
    #[error("key provider {0}: {1}")]
    Provider(&'static str, silo::keys::KeyError),
}

/// Writes the output; a reader that stopped early (`silo plan … | head`) is not an error
/// (`print!` would panic on the closed pipe).
fn emit(text: &str) -> ExitCode {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: cannot write the output: {e}");
            ExitCode::FAILURE
        }
    }
}

fn runtime(what: &str) -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("{what}: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        })
}

/// `silo api`: one clear line on stderr and exit 1 when it cannot start.
fn run_api(config: Option<PathBuf>, addr: Option<std::net::SocketAddr>) -> ExitCode {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cfg = match silo::config::PlatformConfig::load(config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("silo api: {e}");
            return ExitCode::FAILURE;
        }
    };
    let addr = match addr {
        Some(a) => a,
        None => match cfg.api.addr.parse() {
            Ok(a) => a,
            Err(_) => {
                eprintln!("silo api: api.addr {:?} is not an address", cfg.api.addr);
                return ExitCode::FAILURE;
            }
        },
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,kube_client::client::builder=off")
    });
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
        .try_init();
    let rt = match runtime("silo api") {
        Ok(r) => r,
        Err(c) => return c,
    };
    match rt.block_on(silo::api::run(cfg, addr)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("silo api: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `silo token create`: the token alone on the last line of stdout.
fn token_create(
    config: Option<PathBuf>,
    tenant: &str,
    role: &str,
    expires: &str,
    name: Option<&str>,
) -> ExitCode {
    let cfg = match silo::config::PlatformConfig::load(config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("silo token create: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rt = match runtime("silo token create") {
        Ok(r) => r,
        Err(c) => return c,
    };
    match rt.block_on(silo::api::create_token_cli(
        &cfg, tenant, role, expires, name,
    )) {
        Ok((rec, token)) => emit(&format!(
            "# token {} for tenant {} with role {}, expires {} (shown only now)\n{token}\n",
            rec.id,
            rec.tenant,
            rec.role,
            silo::api::routes::rfc3339(rec.expires_at)
        )),
        Err(e) => {
            eprintln!("silo token create: {e}");
            ExitCode::FAILURE
        }
    }
}
