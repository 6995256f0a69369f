//! The real `silo operator` binary (`CARGO_BIN_EXE_silo`) as a child process against an
//! envtest control plane: its own kubeconfig (usually the operator ServiceAccount's, bound by
//! `operator/rbac.yaml`), a platform configuration file, `/readyz` on a free port, and the
//! admission webhook registered with a loopback URL (`--webhook-url`).
//! [`SiloOperator::kill`] is a SIGKILL (crash), [`SiloOperator::terminate`] a SIGTERM (graceful
//! stop); dropping it kills it. Logs (JSON lines) go to a file, dumped when a test panics.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use super::{free_port, spawn_tied, tail};

/// How to run the operator.
#[derive(Clone, Debug)]
pub struct OperatorOptions {
    /// `KUBECONFIG` of the process (see [`super::Envtest::kubeconfig`]).
    pub kubeconfig: PathBuf,
    /// The platform configuration file's YAML (`--config`); empty = all defaults.
    pub config_yaml: String,
    /// Wait (in [`super::platform::Platform::start_operator`]) until the API server calls
    /// the webhook. The webhook is always served on a free port and registered as
    /// `https://127.0.0.1:PORT` (`--webhook-url`): every replica serves it and the leader
    /// registers it, and the in-cluster Service it would name otherwise does not resolve
    /// here, which with `failurePolicy: Fail` would refuse every silo.dev write.
    pub webhook: bool,
    /// Replica identity (`POD_NAME`).
    pub identity: String,
    /// Extra environment (`RUST_LOG`, `SILO_*` overrides, …).
    pub env: Vec<(String, String)>,
    /// Serve the webhook on this port (None: a free one). A restarted operator must keep
    /// its predecessor's port: the registered URL is re-applied only once it leads, and
    /// until then the API server keeps calling the old one.
    pub webhook_port: Option<u16>,
}

impl OperatorOptions {
    pub fn new(kubeconfig: PathBuf) -> OperatorOptions {
        OperatorOptions {
            kubeconfig,
            config_yaml: String::new(),
            webhook: false,
            identity: "silo-operator-0".into(),
            env: Vec::new(),
            webhook_port: None,
        }
    }
}

/// A running `silo operator`.
pub struct SiloOperator {
    child: Option<Child>,
    /// Port of `/healthz`, `/readyz`, `/metrics` on 127.0.0.1.
    pub metrics_port: u16,
    /// Port of the webhook (`/validate`), registered as `https://127.0.0.1:PORT/validate`
    /// (always `Some`; an `Option` for compatibility with the first version of this API).
    pub webhook_port: Option<u16>,
    dir: tempfile::TempDir,
    log: PathBuf,
}

impl SiloOperator {
    /// Starts the operator (does not wait: see [`SiloOperator::wait_ready`]).
    pub fn spawn(opts: &OperatorOptions) -> SiloOperator {
        let dir = tempfile::Builder::new()
            .prefix("silo-operator-")
            .tempdir()
            .expect("temp dir");
        let config = dir.path().join("config.yaml");
        std::fs::write(&config, &opts.config_yaml).expect("write config");
        let metrics_port = free_port();
        let webhook_port = opts.webhook_port.unwrap_or_else(free_port);
        // `SILO_OPERATOR_BIN` runs another build of the binary (benchmarks compare builds).
        let bin = std::env::var_os("SILO_OPERATOR_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_silo")));
        let mut cmd = Command::new(bin);
        cmd.arg("operator")
            .arg("--config")
            .arg(&config)
            .arg(format!("--metrics-addr=127.0.0.1:{metrics_port}"))
            .env("KUBECONFIG", &opts.kubeconfig)
            .env("POD_NAME", &opts.identity)
            .env_remove("POD_NAMESPACE")
            .env_remove("SILO_CONFIG")
            .env(
                "RUST_LOG",
                "info,kube_client::client::builder=off,kube_runtime=warn",
            );
        cmd.arg(format!("--webhook-addr=127.0.0.1:{webhook_port}"))
            .arg(format!("--webhook-url=https://127.0.0.1:{webhook_port}"));
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let log = dir.path().join("operator.log");
        let child = spawn_tied(&mut cmd, &log);
        SiloOperator {
            child: Some(child),
            metrics_port,
            webhook_port: Some(webhook_port),
            dir,
            log,
        }
    }

    /// Waits until `/readyz` answers 200 (CRDs found, webhook tree loaded), for at most
    /// `timeout`; panics with the log tail when the process exits or the time is up.
    pub async fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let url = format!("http://127.0.0.1:{}/readyz", self.metrics_port);
        let http = reqwest::Client::new();
        loop {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("silo operator exited ({status}):\n{}", tail(&self.log, 40));
            }
            if let Ok(r) = http.get(&url).send().await
                && r.status().is_success()
            {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "silo operator not ready after {timeout:?}:\n{}",
                    tail(&self.log, 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The text of `/metrics`.
    pub async fn metrics(&self) -> String {
        let url = format!("http://127.0.0.1:{}/metrics", self.metrics_port);
        reqwest::get(&url)
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics body")
    }

    /// SIGKILL, as a crash or an evicted pod would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait (at most 30 s, then SIGKILL) for a graceful stop.
    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe {
                libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The process id while it runs (for `/proc/<pid>/status`).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The whole log so far (JSON lines).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SiloOperator {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- silo operator log (last 40 lines) ---\n{}",
                tail(&self.log, 40)
            );
        }
        self.kill();
    }
}
