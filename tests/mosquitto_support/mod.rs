//! A throwaway Mosquitto 2 for the broker tests, and small MQTT clients:
//!
//! - [`Broker`]: the shared-broker setup, with the dynamic-security plugin (its configuration,
//!   one admin client, is written here, not by `mosquitto_ctrl`);
//! - [`RenderedBroker`]: Mosquitto started with a configuration Silo renders (the Siloed
//!   broker's `mosquitto.conf`) and the files of the Secrets the operator reconciles, changed
//!   only where a test must: listener ports mapped to free ones, mount paths mapped to a temp
//!   dir; [`listening_tcp_ports`] reads which sockets the process really listens on;
//! - [`Mqtt`]: a rumqttc client whose negative checks fail on a dropped connection, and
//!   [`TlsProxy`] / [`tls_connect`] / [`raw_connect`] to reach the TLS listeners.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use rand::RngCore;
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, MqttOptions, Packet, QoS,
    SubscribeReasonCode,
};
use serde_json::json;
use silo::backends::AdminCredentials;
use silo::operator::reconcile::secrets::{PBKDF2_ITERATIONS, pbkdf2_sha512};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub const PLUGIN: &str = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so";
pub const ADMIN_USER: &str = "admin";

fn mosquitto_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("mosquitto");
            if p.is_file() {
                return p;
            }
        }
    }
    PathBuf::from("/usr/sbin/mosquitto")
}

/// A running broker; killed on drop.
pub struct Broker {
    pub port: u16,
    pub admin: AdminCredentials,
    child: Child,
    dir: tempfile::TempDir,
}

impl Broker {
    /// A client allowed exactly `topics` (what the operator makes for a Shared tenant, or a
    /// test observer of a whole channel), created through the dynamic-security backend and
    /// connected on the plain port.
    pub async fn client_with(&self, name: &str, topics: Vec<String>) -> Mqtt {
        let pw = random_password();
        silo::backends::mosquitto::MosquittoBackend::new(
            "127.0.0.1",
            self.port,
            self.admin.clone(),
        )
        .ensure_client(&silo::backends::BrokerAccount {
            tenant: name.into(),
            username: name.into(),
            password: pw.clone(),
            reset_password: true,
            role: format!("silo-tenant-{name}"),
            topics,
            enabled: true,
        })
        .await
        .unwrap();
        connect(self.port, name, &pw).await.unwrap()
    }

    /// A broker on a free port (retried: another test may take the port between the probe
    /// and mosquitto's bind).
    pub fn start() -> Broker {
        Broker::start_with(|_| String::new())
    }

    /// [`Broker::start`] with more configuration after the plain listener: `extra` gets the
    /// broker's temp dir (to write files into) and returns the lines (more listeners).
    pub fn start_with(extra: impl Fn(&Path) -> String) -> Broker {
        let mut last = String::new();
        for _ in 0..3 {
            match Broker::try_start_with(free_port(), random_password(), &extra) {
                Ok(b) => return b,
                Err(e) => last = e,
            }
        }
        panic!("{last}");
    }

    /// A broker on `port` whose admin client has `password`.
    pub fn start_at(port: u16, password: String) -> Broker {
        Broker::try_start(port, password).unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_start(port: u16, password: String) -> Result<Broker, String> {
        Broker::try_start_with(port, password, &|_| String::new())
    }

    fn try_start_with(
        port: u16,
        password: String,
        extra: &dyn Fn(&Path) -> String,
    ) -> Result<Broker, String> {
        let dir = tempfile::tempdir().unwrap();
        write_dynsec(&dir.path().join("dynamic-security.json"), &password);
        let extra = extra(dir.path());
        let conf = dir.path().join("mosquitto.conf");
        // `user root`: when run as root (CI), stay root so the broker can use the temp dir;
        // ignored otherwise.
        std::fs::write(
            &conf,
            format!(
                "per_listener_settings false\nallow_anonymous false\nuser root\n\
                 listener {port} 127.0.0.1\nplugin {PLUGIN}\n\
                 plugin_opt_config_file {}\nlog_dest stderr\nlog_dest topic\nlog_type all\n\
                 sys_interval 1\n{extra}",
                dir.path().join("dynamic-security.json").display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("mosquitto.log")).unwrap();
        let child = Command::new(mosquitto_binary())
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start mosquitto (/usr/sbin/mosquitto)");
        let mut broker = Broker {
            port,
            admin: AdminCredentials {
                username: ADMIN_USER.to_string(),
                password,
                database: None,
            },
            child,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = broker.child.try_wait().unwrap() {
                return Err(format!("mosquitto exited ({status}):\n{}", broker.log()));
            }
            // "running" is logged once the listener and the plugin are up (a bare connect
            // could reach another process that took the port).
            if broker.log().contains(" running") && TcpStream::connect(("127.0.0.1", port)).is_ok()
            {
                break;
            }
            if Instant::now() > deadline {
                panic!(
                    "mosquitto not listening on {port} after 10 s:\n{}",
                    broker.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(broker)
    }

    /// Stops the broker (its port is free again; `start_at` the same port to restart).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn random_password() -> String {
    let mut b = [0u8; 18];
    rand::rng().fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// The plugin's configuration as `mosquitto_ctrl dynsec init` writes it: one admin client
/// whose role may use `$CONTROL/dynamic-security/#`, and the plugin's default ACL access.
fn write_dynsec(path: &Path, password: &str) {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut salt = [0u8; 12];
    rand::rng().fill_bytes(&mut salt);
    let hash = pbkdf2_sha512(password.as_bytes(), &salt, PBKDF2_ITERATIONS);
    let control = "$CONTROL/dynamic-security/#";
    let config = json!({
        "clients": [{
            "username": ADMIN_USER,
            "textName": "Dynsec admin user",
            "password": b64.encode(hash),
            "salt": b64.encode(salt),
            "iterations": PBKDF2_ITERATIONS,
            "roles": [{"rolename": "admin"}],
        }],
        "roles": [{
            "rolename": "admin",
            "acls": [
                {"acltype": "publishClientSend", "topic": control, "allow": true},
                {"acltype": "publishClientReceive", "topic": control, "allow": true},
                {"acltype": "subscribePattern", "topic": control, "allow": true},
                // The operator's broker observer: connect notices and the client count.
                {"acltype": "subscribePattern", "topic": "$SYS/#", "allow": true},
            ],
        }],
        "defaultACLAccess": {
            "publishClientSend": false,
            "publishClientReceive": true,
            "subscribe": false,
            "unsubscribe": true,
        },
    });
    std::fs::write(path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
}

/// Send one command to the plugin as the admin client, directly (not through the backend);
/// its answer.
pub async fn admin_command(broker: &Broker, command: serde_json::Value) -> serde_json::Value {
    let mut m = connect(broker.port, ADMIN_USER, &broker.admin.password)
        .await
        .unwrap();
    assert!(m.subscribe("$CONTROL/dynamic-security/v1/response").await);
    m.publish(
        "$CONTROL/dynamic-security/v1",
        &json!({ "commands": [command] }).to_string(),
    )
    .await;
    let (_, body) = m
        .next_message(Duration::from_secs(5))
        .await
        .expect("dynsec answer");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["responses"][0].clone()
}

/// The uid/gid a server started by a test runs as: as root (CI), the `user` system account
/// (so the server does not run as root and drops no privileges behind the test's back);
/// otherwise the current user. `fallback` is used when `user` does not exist.
pub fn service_user(user: &str, fallback: &str) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let me = std::fs::metadata("/proc/self").expect("stat /proc/self");
    if me.uid() != 0 {
        return (me.uid(), me.gid());
    }
    let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    for wanted in [user, fallback] {
        for line in passwd.lines() {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() > 3 && f[0] == wanted {
                return (f[2].parse().expect("uid"), f[3].parse().expect("gid"));
            }
        }
    }
    panic!("running as root and neither {user} nor {fallback} is in /etc/passwd");
}

/// TCP ports process `pid` listens on (IPv4 and IPv6), read from `/proc`: its socket
/// inodes (`/proc/<pid>/fd`) joined with the listening sockets of `/proc/<pid>/net/tcp{,6}`.
pub fn listening_tcp_ports(pid: u32) -> BTreeSet<(String, u16)> {
    try_listening_tcp_ports(pid).unwrap_or_else(|e| panic!("{e}"))
}

/// [`listening_tcp_ports`], or why `/proc` could not be read (the process has exited).
fn try_listening_tcp_ports(pid: u32) -> Result<BTreeSet<(String, u16)>, String> {
    let inodes = try_socket_inodes(pid)?;
    let mut out = BTreeSet::new();
    for (file, family) in [("tcp", "ipv4"), ("tcp6", "ipv6")] {
        let path = format!("/proc/{pid}/net/{file}");
        let table = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            // No IPv6 on this machine: no tcp6 table.
            Err(_) if file == "tcp6" && std::path::Path::new(&format!("/proc/{pid}")).exists() => {
                continue;
            }
            Err(e) => return Err(format!("read {path}: {e}")),
        };
        for line in table.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            if f.len() > 9 && f[3] == "0A" && inodes.contains(f[9]) {
                let port = f[1].rsplit(':').next().expect("port");
                out.insert((
                    family.to_string(),
                    u16::from_str_radix(port, 16).expect("hex port"),
                ));
            }
        }
    }
    Ok(out)
}

/// Paths of the Unix-domain sockets process `pid` listens on.
pub fn listening_unix_sockets(pid: u32) -> BTreeSet<String> {
    let inodes = socket_inodes(pid);
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/unix")).expect("read net/unix");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // Num RefCount Protocol Flags Type St Inode Path; flag 00010000 = listening
            (f.len() > 7 && f[3] == "00010000" && inodes.contains(f[6])).then(|| f[7].to_string())
        })
        .collect()
}

fn socket_inodes(pid: u32) -> HashSet<String> {
    try_socket_inodes(pid).unwrap_or_else(|e| panic!("{e}"))
}

fn try_socket_inodes(pid: u32) -> Result<HashSet<String>, String> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map_err(|e| format!("read /proc/{pid}/fd: {e}"))?
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            l.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')
                .map(str::to_string)
        })
        .collect())
}

/// Mosquitto running a configuration Silo rendered. The text is used as rendered except:
/// each `listener <port>` gets a free port instead ([`RenderedBroker::port`] maps them), and
/// each mount path (`/mosquitto/tls`, …) is replaced by a temp directory holding the files
/// given for it (a Secret's or ConfigMap's data, as the pod would mount them). The broker runs
/// as the `mosquitto` system user when the test runs as root. Killed on drop.
pub struct RenderedBroker {
    pub ports: BTreeMap<u16, u16>,
    pub conf: String,
    child: Child,
    dir: tempfile::TempDir,
}

impl RenderedBroker {
    /// Start `conf` with `mounts` (mount path → file name → content). Retried on a port
    /// taken between probing and binding.
    pub fn start(conf: &str, mounts: &[(&str, &BTreeMap<String, String>)]) -> RenderedBroker {
        let mut last = String::new();
        for _ in 0..3 {
            match RenderedBroker::try_start(conf, mounts) {
                Ok(b) => return b,
                Err(e) if e.contains("Address already in use") => last = e,
                Err(e) => panic!("{e}"),
            }
        }
        panic!("{last}");
    }

    /// Start `conf` and return the log when Mosquitto refuses it (exits at start-up).
    pub fn start_err(conf: &str, mounts: &[(&str, &BTreeMap<String, String>)]) -> String {
        match RenderedBroker::try_start(conf, mounts) {
            Ok(b) => panic!("mosquitto started with:\n{}\nlog:\n{}", b.conf, b.log()),
            Err(e) => e,
        }
    }

    fn try_start(
        conf: &str,
        mounts: &[(&str, &BTreeMap<String, String>)],
    ) -> Result<RenderedBroker, String> {
        let (uid, gid) = service_user("mosquitto", "nobody");
        let dir = tempfile::Builder::new()
            .prefix("silo-mosquitto-")
            .tempdir()
            .unwrap();
        let mut text = conf.to_string();
        let locals: Vec<(String, String)> = mounts
            .iter()
            .enumerate()
            .map(|(i, (mount, _))| {
                let local = dir.path().join(format!("mount-{i}"));
                (mount.to_string(), local.to_str().unwrap().to_string())
            })
            .collect();
        // Mount paths are mapped in the configuration and in the mounted files (an included
        // bridge section names its CA file by its mount path).
        let map = |s: &str| {
            locals.iter().fold(s.to_string(), |acc, (mount, local)| {
                acc.replace(mount, local)
            })
        };
        for ((_, files), (_, local)) in mounts.iter().zip(&locals) {
            std::fs::create_dir(local).unwrap();
            for (name, content) in *files {
                std::fs::write(Path::new(local).join(name), map(content)).unwrap();
            }
        }
        text = map(&text);
        let mut ports = BTreeMap::new();
        let mut lines = Vec::new();
        for line in text.lines() {
            match line.strip_prefix("listener ") {
                Some(rest) => {
                    let mut parts = rest.splitn(2, ' ');
                    let rendered: u16 = parts.next().unwrap().parse().expect("listener port");
                    let free = free_port();
                    ports.insert(rendered, free);
                    lines.push(match parts.next() {
                        Some(bind) => format!("listener {free} {bind}"),
                        None => format!("listener {free}"),
                    });
                }
                None => lines.push(line.to_string()),
            }
        }
        let text = lines.join("\n") + "\n";
        let conf_path = dir.path().join("mosquitto.conf");
        std::fs::write(&conf_path, &text).unwrap();
        chown_tree(dir.path(), uid, gid);
        let log = std::fs::File::create(dir.path().join("mosquitto.log")).unwrap();
        use std::os::unix::process::CommandExt;
        let child = Command::new(mosquitto_binary())
            .arg("-c")
            .arg(&conf_path)
            .uid(uid)
            .gid(gid)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start mosquitto");
        let mut broker = RenderedBroker {
            ports,
            conf: text,
            child,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = broker.child.try_wait().unwrap() {
                return Err(format!("mosquitto exited ({status}):\n{}", broker.log()));
            }
            // Every listener open, read from /proc (a probe connection would show up in the
            // log and count against a connection cap).
            // (An error here means the process just exited: the next round reports it.)
            let listening: BTreeSet<u16> = try_listening_tcp_ports(broker.child.id())
                .unwrap_or_default()
                .into_iter()
                .map(|(_, p)| p)
                .collect();
            if broker.ports.values().all(|p| listening.contains(p)) {
                return Ok(broker);
            }
            if Instant::now() > deadline {
                panic!("mosquitto not up after 20 s:\n{}", broker.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The free port standing in for the rendered `rendered` listener.
    pub fn port(&self, rendered: i32) -> u16 {
        let rendered = u16::try_from(rendered).expect("port");
        *self
            .ports
            .get(&rendered)
            .unwrap_or_else(|| panic!("no listener {rendered} in:\n{}", self.conf))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for RenderedBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- mosquitto.conf ---\n{}--- mosquitto log ---\n{}",
                self.conf,
                self.log()
            );
        }
    }
}

fn chown_tree(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown");
    if path.is_dir() {
        for e in std::fs::read_dir(path).unwrap() {
            chown_tree(&e.unwrap().path(), uid, gid);
        }
    }
}

/// A rustls client configuration trusting the CA certificates in `roots_pem`, presenting
/// `client` (certificate chain PEM, key PEM) when given.
pub fn tls_client_config(
    roots_pem: &str,
    client: Option<(&str, &str)>,
) -> Arc<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(roots_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    Arc::new(match client {
        None => builder.with_no_client_auth(),
        Some((chain, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(chain.as_bytes())
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
    })
}

pub type TlsStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A TLS connection to 127.0.0.1:`port`, verifying the server as `server_name`.
pub async fn tls_connect(
    port: u16,
    config: Arc<rustls::ClientConfig>,
    server_name: &str,
) -> std::io::Result<TlsStream> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let name = rustls_pki_types::ServerName::try_from(server_name.to_string())
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .map_err(|_| std::io::Error::other("TLS handshake timed out"))?
}

/// The TLS alert (or other rustls error) inside an I/O error, if any.
pub fn tls_error(e: &std::io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}

/// MQTT 3.1.1 CONNECT (clean session, keep-alive 30 s, optional username/password) on
/// `stream`; the CONNACK return code, or the I/O error that ended the exchange (for a TLS
/// stream, a client certificate the server refuses surfaces here as the alert it sent).
pub async fn raw_connect<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    client_id: &str,
    login: Option<(&str, &str)>,
) -> std::io::Result<u8> {
    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u16).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    let mut body = Vec::new();
    string(&mut body, "MQTT");
    body.push(4);
    body.push(if login.is_some() {
        0b1100_0010
    } else {
        0b0000_0010
    });
    body.extend_from_slice(&30u16.to_be_bytes());
    string(&mut body, client_id);
    if let Some((user, password)) = login {
        string(&mut body, user);
        string(&mut body, password);
    }
    assert!(body.len() < 128);
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend(body);
    stream.write_all(&packet).await?;
    stream.flush().await?;
    let mut ack = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut ack))
        .await
        .map_err(|_| std::io::Error::other("no CONNACK within 10 s"))??;
    assert_eq!(&ack[..2], &[0x20, 0x02], "CONNACK header");
    Ok(ack[3])
}

/// A local plaintext port forwarding each connection over TLS to 127.0.0.1:`port`, so the
/// rumqttc clients ([`connect`]) can use a TLS listener. A connection whose TLS handshake
/// fails is closed. Stops on drop.
pub struct TlsProxy {
    pub port: u16,
    task: JoinHandle<()>,
}

impl TlsProxy {
    pub async fn start(port: u16, config: Arc<rustls::ClientConfig>, server_name: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let local = listener.local_addr().unwrap().port();
        let name = server_name.to_string();
        let task = tokio::spawn(async move {
            while let Ok((mut plain, _)) = listener.accept().await {
                let (config, name) = (config.clone(), name.clone());
                tokio::spawn(async move {
                    if let Ok(mut tls) = tls_connect(port, config, &name).await {
                        let _ = tokio::io::copy_bidirectional(&mut plain, &mut tls).await;
                    }
                });
            }
        });
        TlsProxy { port: local, task }
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a test client sees.
#[derive(Debug)]
pub enum Ev {
    ConnAck,
    SubAck(Vec<SubscribeReasonCode>),
    Msg(String, String),
    Closed(String),
}

/// Why a connection attempt failed: the broker's CONNACK refusal code, or the connection
/// ending without one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectFailure {
    Refused(ConnectReturnCode),
    Closed(String),
}

impl ConnectFailure {
    /// The refusal code, panicking (with what happened instead) when there was none: a
    /// "must not connect" check asserts the broker's answer, not just any failure.
    pub fn code(&self) -> ConnectReturnCode {
        match self {
            ConnectFailure::Refused(c) => *c,
            ConnectFailure::Closed(e) => panic!("no CONNACK refusal, the connection ended: {e}"),
        }
    }
}

/// A plain MQTT 3.1.1 client (rumqttc) with its event loop in a task.
pub struct Mqtt {
    pub client: AsyncClient,
    rx: mpsc::UnboundedReceiver<Ev>,
    task: JoinHandle<()>,
    /// Messages that arrived while waiting for something else (a SUBACK).
    pending: std::collections::VecDeque<(String, String)>,
}

impl Drop for Mqtt {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn connect(port: u16, user: &str, password: &str) -> Result<Mqtt, ConnectFailure> {
    let id = format!("test-{}", random_password());
    connect_with(port, user, password, &id, true).await
}

pub async fn connect_with(
    port: u16,
    user: &str,
    password: &str,
    client_id: &str,
    clean: bool,
) -> Result<Mqtt, ConnectFailure> {
    let mut opts = MqttOptions::new(client_id, "127.0.0.1", port);
    opts.set_credentials(user, password);
    opts.set_clean_session(clean);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(opts, 32);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (refused_tx, mut refused_rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            let ev = match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => Ev::ConnAck,
                Ok(Event::Incoming(Packet::SubAck(s))) => Ev::SubAck(s.return_codes),
                Ok(Event::Incoming(Packet::Publish(p))) => Ev::Msg(
                    p.topic.clone(),
                    String::from_utf8_lossy(&p.payload).into_owned(),
                ),
                Ok(_) => continue,
                Err(e) => {
                    if let ConnectionError::ConnectionRefused(code) = e {
                        let _ = refused_tx.send(code);
                    }
                    let _ = tx.send(Ev::Closed(e.to_string()));
                    return;
                }
            };
            if tx.send(ev).is_err() {
                return;
            }
        }
    });
    match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
        Ok(Some(Ev::ConnAck)) => Ok(Mqtt {
            client,
            rx,
            task,
            pending: Default::default(),
        }),
        Ok(Some(Ev::Closed(e))) => {
            task.abort();
            Err(match refused_rx.try_recv() {
                Ok(code) => ConnectFailure::Refused(code),
                Err(_) => ConnectFailure::Closed(e),
            })
        }
        other => {
            task.abort();
            Err(ConnectFailure::Closed(format!("unexpected: {other:?}")))
        }
    }
}

impl Mqtt {
    /// Subscribe and wait for the broker's answer: `true` when granted, `false` when the
    /// SUBACK carries the failure code (0x80, MQTT 3.1.1's refusal); panics when the
    /// connection ends instead (a dropped connection is not a refusal).
    pub async fn subscribe(&mut self, filter: &str) -> bool {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(Ev::SubAck(codes))) => {
                    assert_eq!(codes.len(), 1, "{filter}: {codes:?}");
                    return match codes[0] {
                        SubscribeReasonCode::Success(_) => true,
                        SubscribeReasonCode::Failure => false,
                    };
                }
                Ok(Some(Ev::Closed(e))) => panic!("closed while subscribing to {filter}: {e}"),
                Ok(Some(Ev::Msg(t, p))) => self.pending.push_back((t, p)),
                Ok(Some(_)) => {}
                other => panic!("no SUBACK for {filter}: {other:?}"),
            }
        }
    }

    pub async fn publish(&self, topic: &str, payload: &str) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.to_string())
            .await
            .unwrap();
    }

    pub async fn publish_retained(&self, topic: &str, payload: &str) {
        self.client
            .publish(topic, QoS::AtLeastOnce, true, payload.to_string())
            .await
            .unwrap();
    }

    /// Messages received within `wait`. Panics when the connection ends meanwhile: an empty
    /// list must mean "nothing delivered", never "no longer connected".
    pub async fn messages(&mut self, wait: Duration) -> Vec<(String, String)> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut out: Vec<(String, String)> = self.pending.drain(..).collect();
        while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            match ev {
                Ev::Msg(t, p) => out.push((t, p)),
                Ev::Closed(e) => panic!("the connection ended while waiting for messages: {e}"),
                _ => {}
            }
        }
        out
    }

    /// Wait for one message (bounded). Panics when the connection ends meanwhile.
    pub async fn next_message(&mut self, wait: Duration) -> Option<(String, String)> {
        if let Some(m) = self.pending.pop_front() {
            return Some(m);
        }
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            match ev {
                Ev::Msg(t, p) => return Some((t, p)),
                Ev::Closed(e) => panic!("the connection ended while waiting for a message: {e}"),
                _ => {}
            }
        }
        None
    }

    /// A "must not receive" check with its positive control on the same connection: nothing
    /// arrives within `quiet`, then `control` publishes `payload` to `topic` (which this
    /// client is subscribed to and may receive) and exactly that arrives next. So the silence
    /// was neither a dead connection nor a subscription that never worked.
    pub async fn assert_nothing_but_control(
        &mut self,
        quiet: Duration,
        control: &Mqtt,
        topic: &str,
        payload: &str,
    ) {
        let leaked = self.messages(quiet).await;
        assert_eq!(leaked, vec![], "messages delivered that must not be");
        control.publish(topic, payload).await;
        assert_eq!(
            self.next_message(Duration::from_secs(10)).await,
            Some((topic.to_string(), payload.to_string())),
            "positive control: the control message did not arrive"
        );
    }

    /// Wait until the broker closes the connection; the reason, or `None` after `wait`.
    pub async fn closed(&mut self, wait: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            if let Ev::Closed(e) = ev {
                return Some(e);
            }
        }
        None
    }
}
