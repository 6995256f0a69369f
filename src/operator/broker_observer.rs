//! Who is connected to the shared Mosquitto (the master channels' endpoint), as the broker
//! itself announces it, and whether the broker answers at all.
//!
//! Mosquitto 2 keeps no per-client connection list that a client can query (the
//! dynamic-security plugin manages accounts, not sessions; `$SYS` has only broker-wide
//! counters). What it does publish, with `log_dest topic` and the `notice` log type
//! (mosquitto.conf(5)), is every connect and disconnect on `$SYS/broker/log/N`:
//!
//! ```text
//! 1795993279: New client connected from 10.1.2.3:44754 as trk-7 (p2, c1, k60, u'dealer-7.d1').
//! 1795993290: Client trk-7 disconnected.
//! ```
//!
//! The [`BrokerObserver`] (run by the operator leader) logs in with the operator's
//! dynamic-security admin login, subscribes to that topic and to
//! `$SYS/broker/clients/connected`, and keeps the connected clients (client id → username).
//! Device usernames are `<tenant>.<id>`; the device registry maps them to channels
//! (`super::channels`).
//!
//! # What the set means after a (re)start
//!
//! The notices only tell what happens after the observer subscribed: clients connected
//! before (after an operator restart or failover, or a lost observer connection) are unseen,
//! and a client that stays connected is never announced again. The observer therefore also
//! counts what it cannot see: each live (not retained) `$SYS/broker/clients/connected`
//! message is published by the broker's single event loop in order with the log notices on the
//! same connection, so at that point `broker count − seen clients − 1 (the observer)` is the
//! number of connected clients it has not seen ([`BrokerView::unseen`]). `0`: the set is
//! exact. More: the seen devices are a lower bound, until those clients disconnect (their
//! disconnects name ids never seen, and the next count drops). A client id that connects again
//! replaces its old session (Mosquitto logs no disconnect for the old one), so the set is keyed
//! by client id.
//!
//! Limits: QoS 0 `$SYS` messages could be dropped under overload, which the next count
//! detects; an outgoing bridge configured *on the shared broker* is counted by the broker but
//! never announced, which keeps the set "unknown" (the shared broker needs none: Siloed
//! tenants' bridges connect *to* it and are announced like any client).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, ConnectReturnCode, Event, MqttOptions, Packet, QoS};
use tokio::task::JoinHandle;

use crate::backends::AdminCredentials;

/// Where Mosquitto publishes `notice` log lines with `log_dest topic`.
pub const LOG_TOPIC: &str = "$SYS/broker/log/N";
/// The broker's count of connected clients (published when it changes, every `sys_interval`).
pub const CONNECTED_TOPIC: &str = "$SYS/broker/clients/connected";
/// Wait between two connection attempts after a failure.
pub const RETRY: Duration = Duration::from_secs(2);

/// One parsed notice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// `New client connected from <addr> as <client> (p2, c1, k60[, u'<username>']).`
    Connected {
        client: String,
        username: Option<String>,
    },
    /// Any of Mosquitto 2's disconnect notices for `<client>`.
    Disconnected { client: String },
}

/// Disconnect notices of Mosquitto 2.0 (`do_disconnect`): the client id sits between the
/// prefix and the suffix; a suffix ending in `.` must end the line.
const DISCONNECTS: [(&str, &str); 9] = [
    ("Client ", " disconnected."),
    ("Client ", " closed its connection."),
    ("Client ", " disconnected, not authorised."),
    ("Client ", " has exceeded timeout, disconnecting."),
    ("Client ", " been disconnected by administrative action."),
    ("Client ", " disconnected due to "),
    ("Client ", " disconnected: "),
    ("Socket error on client ", ", disconnecting."),
    ("Bad socket read/write on client ", ": "),
];

/// Parses one notice line (with or without Mosquitto's timestamp prefix, `<secs>: ` by
/// default). Other lines (`New connection from …`, warnings) are `None`.
pub fn parse_notice(line: &str) -> Option<Notice> {
    let line = line.trim_end_matches(['\n', '\r']);
    parse_bare(line).or_else(|| {
        // `log_timestamp_format` may hold ": " itself; try every split point.
        line.match_indices(": ")
            .find_map(|(i, _)| parse_bare(&line[i + 2..]))
    })
}

fn parse_bare(line: &str) -> Option<Notice> {
    if let Some(rest) = line.strip_prefix("New client connected from ") {
        let (_, rest) = rest.split_once(" as ")?;
        let at = settings_start(rest)?;
        let client = rest[..at].to_string();
        let settings = rest[at..].strip_suffix(").")?;
        let username = settings
            .find(", u'")
            .and_then(|u| settings[u + 4..].strip_suffix('\''))
            .map(str::to_string);
        return Some(Notice::Connected { client, username });
    }
    for (prefix, suffix) in DISCONNECTS {
        let Some(rest) = line.strip_prefix(prefix) else {
            continue;
        };
        let client = if suffix.ends_with('.') {
            rest.strip_suffix(suffix)
        } else {
            rest.find(suffix).map(|i| &rest[..i])
        };
        if let Some(c) = client.filter(|c| !c.is_empty()) {
            return Some(Notice::Disconnected {
                client: c.to_string(),
            });
        }
    }
    None
}

/// Where ` (p<digit>, c<digit>, k<digits>` starts in `… as <client> (p2, c1, k60, …).`.
fn settings_start(s: &str) -> Option<usize> {
    s.match_indices(" (p").map(|(i, _)| i).find(|&i| {
        let b = &s.as_bytes()[i + 3..];
        b.len() >= 8
            && b[0].is_ascii_digit()
            && b[1..4] == *b", c"
            && b[4].is_ascii_digit()
            && b[5..8] == *b", k"
    })
}

/// Whether the observer's login gets an answer from the broker.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Reach {
    /// Not tried yet.
    #[default]
    Unknown,
    /// The broker accepted the operator's login (CONNACK success).
    Reachable,
    /// The last attempt failed: the error.
    Unreachable(String),
}

/// What the observer knows now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BrokerView {
    pub reach: Reach,
    /// Distinct usernames of the clients seen connecting and still connected (empty unless
    /// reachable).
    pub connected: BTreeSet<String>,
    /// Connected clients not seen connecting, at the broker's last count (module doc): `0`
    /// = `connected` is exact; more = it is a lower bound; negative = the observer missed
    /// disconnects; `None` = no count received yet in this session.
    pub unseen: Option<i64>,
}

/// The observer's state machine: pure, fed by the connection task (and by tests).
#[derive(Debug, Default)]
pub struct ObserverState {
    reach: Reach,
    clients: HashMap<String, Option<String>>,
    unseen: Option<i64>,
    version: u64,
}

impl ObserverState {
    /// The broker accepted the login: a new session, nothing seen yet.
    pub fn on_connected(&mut self) {
        self.reach = Reach::Reachable;
        self.clients.clear();
        self.unseen = None;
        self.version += 1;
    }

    /// The connection failed or was lost: everything seen is void.
    pub fn on_error(&mut self, error: String) {
        let next = Reach::Unreachable(error);
        if self.reach != next || self.unseen.is_some() || !self.clients.is_empty() {
            self.version += 1;
        }
        self.reach = next;
        self.clients.clear();
        self.unseen = None;
    }

    /// One line from [`LOG_TOPIC`].
    pub fn on_log(&mut self, line: &str) {
        match parse_notice(line) {
            Some(Notice::Connected { client, username }) => {
                self.clients.insert(client, username);
                self.version += 1;
            }
            Some(Notice::Disconnected { client }) if self.clients.remove(&client).is_some() => {
                self.version += 1;
            }
            Some(Notice::Disconnected { .. }) | None => {}
        }
    }

    /// A live (not retained) count from [`CONNECTED_TOPIC`]: the broker's connected clients,
    /// the observer included.
    pub fn on_count(&mut self, connected: i64) {
        let seen = i64::try_from(self.clients.len()).unwrap_or(i64::MAX);
        let unseen = Some(connected.saturating_sub(seen).saturating_sub(1));
        if unseen != self.unseen {
            self.unseen = unseen;
            self.version += 1;
        }
    }

    /// Bumped on every change of [`view`](Self::view).
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn view(&self) -> BrokerView {
        BrokerView {
            reach: self.reach.clone(),
            connected: self.clients.values().filter_map(|u| u.clone()).collect(),
            unseen: self.unseen,
        }
    }
}

/// The running observer; stops when dropped.
pub struct BrokerObserver {
    state: Arc<Mutex<ObserverState>>,
    task: JoinHandle<()>,
}

impl Drop for BrokerObserver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl BrokerObserver {
    /// Starts observing the broker at `host:port` with the admin login (inside a tokio
    /// runtime). Reconnects every [`RETRY`] after a failure.
    pub fn spawn(host: &str, port: u16, admin: AdminCredentials) -> BrokerObserver {
        let state = Arc::new(Mutex::new(ObserverState::default()));
        let task = tokio::spawn(observe(host.to_string(), port, admin, state.clone()));
        BrokerObserver { state, task }
    }

    /// What the observer knows now.
    pub fn view(&self) -> BrokerView {
        self.state
            .lock()
            .map(|s| s.view())
            .unwrap_or_else(|p| p.into_inner().view())
    }

    /// Bumped on every change of the view (cheap to poll).
    pub fn version(&self) -> u64 {
        self.state
            .lock()
            .map(|s| s.version())
            .unwrap_or_else(|p| p.into_inner().version())
    }
}

/// An observer of the shared broker when one is configured with an admin login.
pub fn from_shared(shared: &dyn crate::backends::SharedServices) -> Option<BrokerObserver> {
    shared
        .broker_login()
        .map(|(host, port, admin)| BrokerObserver::spawn(&host, port, admin))
}

fn with_state(state: &Mutex<ObserverState>, f: impl FnOnce(&mut ObserverState)) {
    match state.lock() {
        Ok(mut s) => f(&mut s),
        Err(p) => f(&mut p.into_inner()),
    }
}

async fn observe(
    host: String,
    port: u16,
    admin: AdminCredentials,
    state: Arc<Mutex<ObserverState>>,
) {
    let address = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let suffix: u64 = rand::random();
    let mut opts = MqttOptions::new(format!("silo-observer-{suffix:016x}"), host, port);
    opts.set_credentials(admin.username.clone(), admin.password.clone());
    opts.set_keep_alive(Duration::from_secs(15));
    opts.set_clean_session(true);
    let (client, mut eventloop) = AsyncClient::new(opts, 16);
    let mut warned_denied = false;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                if ack.code != ConnectReturnCode::Success {
                    with_state(&state, |s| {
                        s.on_error(format!(
                            "{address} refused the operator's login {:?}: {:?}",
                            admin.username, ack.code
                        ))
                    });
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
                with_state(&state, ObserverState::on_connected);
                tracing::info!(broker = %address, "broker observer connected");
                for topic in [LOG_TOPIC, CONNECTED_TOPIC] {
                    if let Err(e) = client.try_subscribe(topic, QoS::AtMostOnce) {
                        tracing::warn!(error = %e, topic, "broker observer cannot subscribe");
                    }
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let denied = ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure));
                if denied && !warned_denied {
                    warned_denied = true;
                    tracing::warn!(
                        broker = %address,
                        "the broker refused the operator's login a subscription to {LOG_TOPIC} or {CONNECTED_TOPIC}: \
                         give its dynamic-security role subscribePattern $SYS/# (connectedDevices stays unknown)"
                    );
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let text = String::from_utf8_lossy(&p.payload);
                if p.topic == LOG_TOPIC {
                    with_state(&state, |s| s.on_log(&text));
                } else if p.topic == CONNECTED_TOPIC
                    && !p.retain
                    && let Ok(n) = text.trim().parse::<i64>()
                {
                    with_state(&state, |s| s.on_count(n));
                }
            }
            Ok(_) => {}
            Err(e) => {
                let message = match &e {
                    rumqttc::ConnectionError::ConnectionRefused(code) => format!(
                        "{address} refused the operator's login {:?}: {code:?}",
                        admin.username
                    ),
                    other => format!("cannot reach {address}: {other}"),
                };
                tracing::debug!(error = %message, "broker observer");
                with_state(&state, |s| s.on_error(message));
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connected(client: &str, username: Option<&str>) -> Option<Notice> {
        Some(Notice::Connected {
            client: client.into(),
            username: username.map(String::from),
        })
    }

    fn gone(client: &str) -> Option<Notice> {
        Some(Notice::Disconnected {
            client: client.into(),
        })
    }

    #[test]
    fn mosquitto_notices_are_parsed() {
        // Lines as Mosquitto 2.0.11 publishes them on $SYS/broker/log/N.
        assert_eq!(
            parse_notice(
                "1795993279: New client connected from 127.0.0.1:44754 as dev-one (p2, c1, k60, u'acme.d1')."
            ),
            connected("dev-one", Some("acme.d1"))
        );
        assert_eq!(
            parse_notice(
                "1795993279: New client connected from 127.0.0.1:44768 as weird id (p2 (p2, c1, k60, u'x y')."
            ),
            connected("weird id (p2", Some("x y"))
        );
        assert_eq!(
            parse_notice("1795993282: New client connected from [::1]:44770 as k1 (p2, c1, k1)."),
            connected("k1", None)
        );
        assert_eq!(
            parse_notice("1795993279: Client dev-one disconnected."),
            gone("dev-one")
        );
        assert_eq!(
            parse_notice("Client a b has exceeded timeout, disconnecting."),
            gone("a b")
        );
        assert_eq!(
            parse_notice("2026-01-01T00:00:00: Socket error on client k1, disconnecting."),
            gone("k1")
        );
        assert_eq!(
            parse_notice("Client k1 disconnected due to protocol error."),
            gone("k1")
        );
        assert_eq!(
            parse_notice("Client k1 disconnected, not authorised."),
            gone("k1")
        );
        // Not connect/disconnect notices.
        for other in [
            "1795993279: New connection from 127.0.0.1:44754 on port 18931.",
            "mosquitto version 2.0.11 running",
            "Client k1 already connected, closing old connection.",
            "",
        ] {
            assert_eq!(parse_notice(other), None, "{other}");
        }
    }

    #[test]
    fn unseen_clients_are_counted_from_the_broker_count() {
        let names = |s: &ObserverState| s.view().connected.into_iter().collect::<Vec<_>>();
        let mut s = ObserverState::default();
        assert_eq!(s.view().reach, Reach::Unknown);
        s.on_connected();
        assert_eq!(s.view().reach, Reach::Reachable);
        assert_eq!(s.view().unseen, None);
        // Two clients connected before the observer: the broker counts 3, we know 1 (self).
        s.on_count(3);
        assert_eq!(s.view().unseen, Some(2));
        s.on_log("1: New client connected from 1.2.3.4:1 as c1 (p2, c1, k60, u'a.d1').");
        s.on_count(4);
        assert_eq!(s.view().unseen, Some(2), "two unseen clients remain");
        assert_eq!(names(&s), vec!["a.d1"], "a lower bound meanwhile");
        // The unseen ones leave (their disconnects name ids we never saw).
        s.on_log("1: Client old-1 disconnected.");
        s.on_log("1: Client old-2 disconnected.");
        s.on_count(2);
        assert_eq!(s.view().unseen, Some(0), "exact now");
        // A second connection of the same username counts once; a takeover replaces.
        s.on_log("1: New client connected from 1.2.3.4:2 as c2 (p2, c1, k60, u'a.d1').");
        s.on_log("1: New client connected from 1.2.3.4:3 as c1 (p2, c1, k60, u'b.d2').");
        assert_eq!(names(&s), vec!["a.d1", "b.d2"]);
        s.on_count(3);
        assert_eq!(s.view().unseen, Some(0));
        let v = s.version();
        s.on_log("1: Client c2 disconnected.");
        s.on_log("1: Client c1 disconnected.");
        assert!(s.version() > v);
        assert!(s.view().connected.is_empty());
        // Lost connection: unreachable, nothing seen; a new session starts without a count.
        s.on_error("cannot reach 127.0.0.1:1: refused".into());
        assert_eq!(
            s.view(),
            BrokerView {
                reach: Reach::Unreachable("cannot reach 127.0.0.1:1: refused".into()),
                connected: BTreeSet::new(),
                unseen: None,
            }
        );
        let v = s.version();
        s.on_error("cannot reach 127.0.0.1:1: refused".into());
        assert_eq!(s.version(), v, "the same error again is no change");
        s.on_connected();
        assert_eq!(s.view().unseen, None);
        s.on_count(1);
        assert_eq!(s.view().unseen, Some(0));
    }
}
