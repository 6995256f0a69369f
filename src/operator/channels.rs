//! Master channel status: which tenants use the channel, where devices connect, how many
//! devices are registered and connected, and whether the endpoint answers. Pure
//! [`desired_status`] plus [`sync`], which writes only the statuses that changed, and
//! [`round`], which gathers the facts (device registry, broker observer) first.
//!
//! Sources: `registeredDevices` is the registry's count per channel; `connectedDevices` is the
//! number of the channel's registered devices whose username the broker observer
//! ([`super::broker_observer`]) has seen connect and not yet disconnect (absent while the
//! broker is unreachable or has not sent its client count yet); `Ready` is whether the observer's login gets a CONNACK;
//! `DevicesCounted` says whether that count is exact (True: every client connected to the
//! broker was seen connecting) or a lower bound (False, `ClientsUnseen`: clients connected
//! before the observer started are not identified until they disconnect). The leader runs a round at
//! most every [`CHANNEL_STATUS_EVERY`] and only when something changed, so devices connecting
//! by the thousand cause at most one status write per channel per period.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::types::{Channel, ChannelStatus, TenantLinks};

use super::broker_observer::{BrokerView, Reach};
use super::cluster::{Cluster, ClusterError, EventInfo};
use super::registry::Registry;

/// The channel's condition type.
pub const READY: &str = "Ready";
/// Reason of `Ready=False`: the endpoint did not answer the operator's MQTT CONNECT.
pub const BROKER_UNREACHABLE: &str = "BrokerUnreachable";
/// Reason of `Ready=True`.
pub const BROKER_REACHABLE: &str = "BrokerReachable";
/// Whether `connectedDevices` is exact.
pub const DEVICES_COUNTED: &str = "DevicesCounted";
/// Reason of `DevicesCounted=False`: clients connected before the observer are unidentified.
pub const CLIENTS_UNSEEN: &str = "ClientsUnseen";
/// At most one channel status round (and so one write per channel) per this period.
pub const CHANNEL_STATUS_EVERY: Duration = Duration::from_secs(5);

/// Connected devices per channel as far as known.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Connected {
    /// Keep what is stored (the registry could not be read this round).
    #[default]
    Keep,
    /// Not known (no observer, broker unreachable, no client count yet): omitted.
    Unknown,
    /// Per channel (absent = 0).
    Known(BTreeMap<String, i64>),
}

/// What the operator knows about the channels beyond the objects.
#[derive(Clone, Debug, Default)]
pub struct ChannelFacts {
    /// Registered devices per channel (absent = 0), when the registry was read.
    pub registered: Option<BTreeMap<String, i64>>,
    pub connected: Connected,
    /// The endpoint's reachability; `None` (no observer) or `Unknown` keep the stored
    /// conditions.
    pub reach: Option<Reach>,
    /// Connected clients the observer has not seen connecting ([`BrokerView::unseen`]).
    pub unseen: Option<i64>,
}

/// `DevicesCounted` for `unseen`: status, reason, message.
fn counted(unseen: Option<i64>) -> (&'static str, &'static str, String) {
    match unseen {
        Some(0) => (
            "True",
            "AllClientsSeen",
            "every client connected to the broker was seen connecting: connectedDevices is exact"
                .to_string(),
        ),
        Some(n) if n > 0 => (
            "False",
            CLIENTS_UNSEEN,
            format!(
                "{n} client(s) connected to the broker before the operator's observer started are not identified: \
                 connectedDevices counts the devices seen connecting since (a lower bound) until they disconnect"
            ),
        ),
        Some(n) => (
            "False",
            "NoticesMissed",
            format!(
                "the observer holds {} more client(s) than the broker counts (disconnect notices missed): \
                 connectedDevices may be too high",
                -n
            ),
        ),
        None => (
            "Unknown",
            "NoBrokerCount",
            format!(
                "no {} received yet (it is published every sys_interval when it changes)",
                super::broker_observer::CONNECTED_TOPIC
            ),
        ),
    }
}

/// The status a channel should have: the tenants listing it (sorted; tenants being deleted
/// excluded), when the shared broker is configured its endpoint with the channel's topic
/// root (`host:port/channels/<channel>/`; each tenant publishes under
/// `channels/<channel>/<tenant>/…`), the device counts and the `Ready` condition of `facts`.
/// A condition keeps its `lastTransitionTime` while its status stays, so unchanged facts give
/// an identical status (and no write).
pub fn desired_status<T: TenantLinks>(
    channel: &Channel,
    tenants: &[&T],
    broker: Option<&(String, u16)>,
    facts: &ChannelFacts,
    now: &Time,
) -> ChannelStatus {
    let name = channel.name();
    let stored = channel.status.as_ref();
    let mut users: Vec<String> = tenants
        .iter()
        .filter(|t| !t.deleting())
        .filter(|t| t.channels().iter().any(|c| c == name))
        .map(|t| t.name().to_string())
        .collect();
    users.sort();
    let endpoint =
        broker.map(|(h, p)| format!("{h}:{p}/{}/{name}/", crate::backends::CHANNEL_ROOT));
    let connected_devices = match &facts.connected {
        Connected::Keep => stored.and_then(|s| s.connected_devices),
        Connected::Unknown => None,
        Connected::Known(m) => Some(m.get(name).copied().unwrap_or(0)),
    };
    let registered_devices = match &facts.registered {
        Some(m) => Some(m.get(name).copied().unwrap_or(0)),
        None => stored.and_then(|s| s.registered_devices),
    };
    let previous: &[Condition] = stored.map(|s| s.conditions.as_slice()).unwrap_or(&[]);
    let wanted: Option<Vec<(&str, &str, &str, String)>> = match &facts.reach {
        Some(Reach::Reachable) => {
            let (status, reason, message) = counted(facts.unseen);
            Some(vec![
                (
                    READY,
                    "True",
                    BROKER_REACHABLE,
                    match broker {
                        Some((h, p)) => {
                            format!("{h}:{p} answers an MQTT CONNECT with the operator's login")
                        }
                        None => "the broker answers an MQTT CONNECT with the operator's login"
                            .to_string(),
                    },
                ),
                (DEVICES_COUNTED, status, reason, message),
            ])
        }
        Some(Reach::Unreachable(e)) => Some(vec![(READY, "False", BROKER_UNREACHABLE, e.clone())]),
        Some(Reach::Unknown) | None => None,
    };
    let conditions = match wanted {
        None => previous.to_vec(),
        Some(list) => list
            .into_iter()
            .map(|(type_, status, reason, message)| {
                let since = previous
                    .iter()
                    .find(|c| c.type_ == type_ && c.status == status)
                    .map(|c| c.last_transition_time.clone())
                    .unwrap_or_else(|| now.clone());
                Condition {
                    type_: type_.to_string(),
                    status: status.to_string(),
                    reason: reason.to_string(),
                    message,
                    last_transition_time: since,
                    observed_generation: channel.metadata.generation,
                }
            })
            .collect(),
    };
    ChannelStatus {
        connected_devices,
        registered_devices,
        tenants: users,
        endpoint,
        conditions,
    }
}

fn ready_of(s: Option<&ChannelStatus>) -> Option<&Condition> {
    s.and_then(|s| s.conditions.iter().find(|c| c.type_ == READY))
}

/// Write the status of every channel whose status differs from [`desired_status`], with a
/// Warning event when `Ready` turns False (a Normal one when it turns True again). Returns
/// the channels written; a failure for one channel does not stop the others.
pub async fn sync<C: Cluster, T: TenantLinks + Sync>(
    cluster: &C,
    channels: &[&Channel],
    tenants: &[&T],
    broker: Option<&(String, u16)>,
    facts: &ChannelFacts,
) -> (Vec<String>, Vec<ClusterError>) {
    // Second precision, as the API server stores it (a status read back compares equal).
    let secs = k8s_openapi::jiff::Timestamp::now().as_second();
    let now = Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap_or_default());
    let mut written = Vec::new();
    let mut errors = Vec::new();
    for c in channels {
        let want = desired_status(c, tenants, broker, facts, &now);
        if c.status.as_ref() == Some(&want) {
            continue;
        }
        match cluster.patch_channel_status(c.name(), &want).await {
            Ok(()) => written.push(c.name().to_string()),
            Err(e) => {
                errors.push(e);
                continue;
            }
        }
        let (old, new) = (ready_of(c.status.as_ref()), ready_of(Some(&want)));
        let Some(new) = new else { continue };
        if old.map(|o| o.status.as_str()) == Some(new.status.as_str()) {
            continue;
        }
        let event = match new.status.as_str() {
            "False" => EventInfo::warning(BROKER_UNREACHABLE, "Connect", &new.message),
            _ if old.is_some() => EventInfo::normal(BROKER_REACHABLE, "Connect", &new.message),
            _ => continue,
        };
        if let Err(e) = cluster.publish_channel_event(c, &event).await {
            tracing::warn!(error = %e, channel = c.name(), "could not publish event");
        }
    }
    (written, errors)
}

/// The facts of one round: the registry's counts per channel and, when the observer vouches
/// for its set of connected usernames, how many of them are devices of each channel. A
/// registry failure keeps the stored counts (and is returned for the log).
pub async fn gather(
    registry: Option<&Registry>,
    view: Option<&BrokerView>,
) -> (ChannelFacts, Vec<super::registry::RegistryError>) {
    let mut errors = Vec::new();
    let registered = match registry {
        Some(r) => match r.channel_counts().await {
            Ok(m) => Some(m),
            Err(e) => {
                errors.push(e);
                None
            }
        },
        None => None,
    };
    // Before the broker's first count (or without `$SYS` access) nothing is known yet.
    let reachable = view.filter(|v| v.reach == Reach::Reachable && v.unseen.is_some());
    let connected = match (reachable, registry) {
        (Some(v), Some(r)) => {
            let names: Vec<String> = v.connected.iter().cloned().collect();
            match r.devices_by_channel(&names).await {
                Ok(m) => Connected::Known(m),
                Err(e) => {
                    errors.push(e);
                    Connected::Keep
                }
            }
        }
        _ => Connected::Unknown,
    };
    let facts = ChannelFacts {
        registered,
        connected,
        reach: view.map(|v| v.reach.clone()),
        unseen: view.and_then(|v| v.unseen),
    };
    (facts, errors)
}

/// One round: [`gather`] then [`sync`]. Returns the channels written and the writes that
/// failed. Registry failures keep the stored counts and are logged at debug level only (the
/// usage refresh, `super::registry::usage_loop`, warns about the same database).
pub async fn round<C: Cluster, T: TenantLinks + Sync>(
    cluster: &C,
    channels: &[&Channel],
    tenants: &[&T],
    broker: Option<&(String, u16)>,
    registry: Option<&Registry>,
    view: Option<&BrokerView>,
) -> (Vec<String>, Vec<ClusterError>) {
    let (facts, registry_errors) = gather(registry, view).await;
    for e in &registry_errors {
        tracing::debug!(error = %e, "channel device counts kept as stored");
    }
    sync(cluster, channels, tenants, broker, &facts).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{ChannelSpec, Tenant, TenantSpec};

    fn tenant(name: &str, channels: &[&str]) -> Tenant {
        Tenant::new(
            name,
            TenantSpec {
                channels: channels.iter().map(|c| c.to_string()).collect(),
                ..Default::default()
            },
        )
    }

    #[test]
    fn status_lists_the_using_tenants_and_the_endpoint() {
        let ch = Channel::new(
            "teltonika",
            ChannelSpec {
                owner: "root".into(),
                protocol: Default::default(),
                max_connections: None,
                visibility: None,
            },
        );
        let a = tenant("b-dealer", &["teltonika"]);
        let b = tenant("a-dealer", &["teltonika", "other"]);
        let c = tenant("c-dealer", &["other"]);
        let mut gone = tenant("d-dealer", &["teltonika"]);
        gone.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        let now = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        let none = ChannelFacts::default();
        let st = desired_status(&ch, &[&a, &b, &c, &gone], None, &none, &now);
        assert_eq!(st.tenants, vec!["a-dealer", "b-dealer"]);
        assert_eq!(st.endpoint, None);
        assert_eq!(st.connected_devices, None);
        let broker = ("mqtt.shared".to_string(), 1883);
        let st = desired_status(&ch, &[&a], Some(&broker), &none, &now);
        assert_eq!(
            st.endpoint.as_deref(),
            Some("mqtt.shared:1883/channels/teltonika/")
        );
    }

    #[tokio::test]
    async fn counts_and_ready_follow_the_facts_with_one_write_and_event_per_change() {
        let cluster = crate::operator::cluster::memory::MemoryCluster::new();
        let ch = |name: &str| {
            Channel::new(
                name,
                ChannelSpec {
                    owner: "root".into(),
                    ..Default::default()
                },
            )
        };
        cluster.put_channel(ch("trk"));
        cluster.put_channel(ch("other"));
        let broker = ("mqtt.shared".to_string(), 1883);
        let run = |facts: ChannelFacts| {
            let cluster = &cluster;
            let broker = &broker;
            async move {
                let a = cluster.channel("trk").unwrap();
                let b = cluster.channel("other").unwrap();
                sync(cluster, &[&a, &b], &[] as &[&Tenant], Some(broker), &facts)
                    .await
                    .0
            }
        };
        let facts = ChannelFacts {
            registered: Some([("trk".to_string(), 3)].into()),
            connected: Connected::Known([("trk".to_string(), 1)].into()),
            reach: Some(Reach::Reachable),
            unseen: Some(0),
        };
        assert_eq!(run(facts.clone()).await, vec!["trk", "other"]);
        let trk = cluster.channel("trk").unwrap().status.unwrap();
        let other = cluster.channel("other").unwrap().status.unwrap();
        assert_eq!(
            (trk.registered_devices, trk.connected_devices),
            (Some(3), Some(1))
        );
        assert_eq!(
            (other.registered_devices, other.connected_devices),
            (Some(0), Some(0))
        );
        assert_eq!(trk.conditions[0].status, "True");
        assert_eq!(trk.conditions[0].reason, BROKER_REACHABLE);
        assert_eq!(trk.conditions[1].type_, DEVICES_COUNTED);
        assert_eq!(trk.conditions[1].status, "True");
        assert!(
            cluster.events_for("Channel/trk").is_empty(),
            "first True: no event"
        );
        // The same facts again: nothing written.
        assert!(run(facts).await.is_empty());
        // Unreachable: False with the error, one Warning event per channel, count omitted.
        let down = ChannelFacts {
            registered: None,
            connected: Connected::Unknown,
            reach: Some(Reach::Unreachable(
                "cannot reach mqtt.shared:1883: refused".into(),
            )),
            unseen: None,
        };
        assert_eq!(run(down.clone()).await.len(), 2);
        let trk = cluster.channel("trk").unwrap().status.unwrap();
        assert_eq!(trk.registered_devices, Some(3), "registry unread: kept");
        assert_eq!(trk.connected_devices, None);
        assert_eq!(trk.conditions[0].status, "False");
        assert_eq!(trk.conditions[0].reason, BROKER_UNREACHABLE);
        assert_eq!(
            trk.conditions[0].message,
            "cannot reach mqtt.shared:1883: refused"
        );
        assert!(run(down).await.is_empty());
        let ev = cluster.events_for("Channel/trk");
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert!(ev[0].warning);
        assert_eq!(ev[0].reason, BROKER_UNREACHABLE);
        assert_eq!(ev[0].note, "cannot reach mqtt.shared:1883: refused");
        // Back: True again, a Normal event.
        let up = ChannelFacts {
            registered: None,
            connected: Connected::Keep,
            reach: Some(Reach::Reachable),
            unseen: Some(2),
        };
        assert_eq!(run(up).await.len(), 2);
        let ev = cluster.events_for("Channel/trk");
        assert_eq!(ev.len(), 2);
        assert!(!ev[1].warning);
        assert_eq!(ev[1].reason, BROKER_REACHABLE);
        let trk = cluster.channel("trk").unwrap().status.unwrap();
        assert_eq!(trk.conditions[1].status, "False");
        assert_eq!(trk.conditions[1].reason, CLIENTS_UNSEEN);
        assert!(
            trk.conditions[1]
                .message
                .starts_with("2 client(s) connected")
        );
    }
}
