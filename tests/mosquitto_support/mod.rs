//! A throwaway Mosquitto 2 with the dynamic-security plugin, and small MQTT clients, for the
//! shared-broker tests. The plugin's configuration (one admin client) is written here, not
//! by `mosquitto_ctrl`.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use rand::RngCore;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeReasonCode};
use serde_json::json;
use silo::backends::AdminCredentials;
use silo::operator::secrets::{PBKDF2_ITERATIONS, pbkdf2_sha512};
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
    /// A broker on a free port (retried: another test may take the port between the probe
    /// and mosquitto's bind).
    pub fn start() -> Broker {
        let mut last = String::new();
        for _ in 0..3 {
            match Broker::try_start(free_port(), random_password()) {
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
        let dir = tempfile::tempdir().unwrap();
        write_dynsec(&dir.path().join("dynamic-security.json"), &password);
        let conf = dir.path().join("mosquitto.conf");
        // `user root`: when run as root (CI), stay root so the broker can use the temp dir;
        // ignored otherwise.
        std::fs::write(
            &conf,
            format!(
                "per_listener_settings false\nallow_anonymous false\nuser root\n\
                 listener {port} 127.0.0.1\nplugin {PLUGIN}\n\
                 plugin_opt_config_file {}\nlog_dest stderr\nlog_type all\n",
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

/// What a test client sees.
#[derive(Debug)]
pub enum Ev {
    ConnAck,
    SubAck(Vec<SubscribeReasonCode>),
    Msg(String, String),
    Closed(String),
}

/// A plain MQTT 3.1.1 client (rumqttc) with its event loop in a task.
pub struct Mqtt {
    pub client: AsyncClient,
    rx: mpsc::UnboundedReceiver<Ev>,
    task: JoinHandle<()>,
}

impl Drop for Mqtt {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn connect(port: u16, user: &str, password: &str) -> Result<Mqtt, String> {
    let id = format!("test-{}", random_password());
    connect_with(port, user, password, &id, true).await
}

pub async fn connect_with(
    port: u16,
    user: &str,
    password: &str,
    client_id: &str,
    clean: bool,
) -> Result<Mqtt, String> {
    let mut opts = MqttOptions::new(client_id, "127.0.0.1", port);
    opts.set_credentials(user, password);
    opts.set_clean_session(clean);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(opts, 32);
    let (tx, mut rx) = mpsc::unbounded_channel();
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
                    let _ = tx.send(Ev::Closed(e.to_string()));
                    return;
                }
            };
            if tx.send(ev).is_err() {
                return;
            }
        }
    });
    match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
        Ok(Some(Ev::ConnAck)) => Ok(Mqtt { client, rx, task }),
        Ok(Some(Ev::Closed(e))) => {
            task.abort();
            Err(e)
        }
        other => {
            task.abort();
            Err(format!("unexpected: {other:?}"))
        }
    }
}

impl Mqtt {
    /// Subscribe and wait for the broker's answer: `true` when granted.
    pub async fn subscribe(&mut self, filter: &str) -> bool {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(Ev::SubAck(codes))) => {
                    return codes
                        .iter()
                        .all(|c| matches!(c, SubscribeReasonCode::Success(_)));
                }
                Ok(Some(Ev::Closed(e))) => panic!("closed while subscribing to {filter}: {e}"),
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

    /// Messages received within `wait`.
    pub async fn messages(&mut self, wait: Duration) -> Vec<(String, String)> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut out = Vec::new();
        while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            match ev {
                Ev::Msg(t, p) => out.push((t, p)),
                Ev::Closed(_) => break,
                _ => {}
            }
        }
        out
    }

    /// Wait for one message (bounded).
    pub async fn next_message(&mut self, wait: Duration) -> Option<(String, String)> {
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            match ev {
                Ev::Msg(t, p) => return Some((t, p)),
                Ev::Closed(_) => return None,
                _ => {}
            }
        }
        None
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
