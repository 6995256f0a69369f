//! Master channel status: which tenants use the channel and where devices connect. Pure
//! [`desired_status`] plus [`sync`], which writes only the statuses that changed.

use crate::types::{Channel, ChannelStatus, Tenant};

use crate::operator::cluster::{Cluster, ClusterError};

/// The status a channel should have: the tenants listing it (sorted; tenants being deleted
/// excluded) and, when the shared broker is configured, its endpoint with the channel's topic
/// root (`host:port/channels/<channel>/`; each tenant publishes under
/// `channels/<channel>/<tenant>/…`). The connected-device count is kept as stored.
pub fn desired_status(
    channel: &Channel,
    tenants: &[&Tenant],
    broker: Option<&(String, u16)>,
) -> ChannelStatus {
    let name = channel.name();
    let mut users: Vec<String> = tenants
        .iter()
        .filter(|t| t.metadata.deletion_timestamp.is_none())
        .filter(|t| t.spec.channels.iter().any(|c| c == name))
        .map(|t| t.name().to_string())
        .collect();
    users.sort();
    ChannelStatus {
        connected_devices: channel.status.as_ref().and_then(|s| s.connected_devices),
        registered_devices: channel.status.as_ref().and_then(|s| s.registered_devices),
        tenants: users,
        endpoint: broker.map(|(h, p)| format!("{h}:{p}/{}/{name}/", crate::backends::CHANNEL_ROOT)),
    }
}

/// Write the status of every channel whose status differs from [`desired_status`]. Returns
/// the channels written; a failure for one channel does not stop the others.
pub async fn sync<C: Cluster>(
    cluster: &C,
    channels: &[&Channel],
    tenants: &[&Tenant],
    broker: Option<&(String, u16)>,
) -> (Vec<String>, Vec<ClusterError>) {
    let mut written = Vec::new();
    let mut errors = Vec::new();
    for c in channels {
        let want = desired_status(c, tenants, broker);
        if c.status.as_ref() == Some(&want) {
            continue;
        }
        match cluster.patch_channel_status(c.name(), &want).await {
            Ok(()) => written.push(c.name().to_string()),
            Err(e) => errors.push(e),
        }
    }
    (written, errors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{ChannelSpec, TenantSpec};

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
        let st = desired_status(&ch, &[&a, &b, &c, &gone], None);
        assert_eq!(st.tenants, vec!["a-dealer", "b-dealer"]);
        assert_eq!(st.endpoint, None);
        assert_eq!(st.connected_devices, None);
        let broker = ("mqtt.shared".to_string(), 1883);
        let st = desired_status(&ch, &[&a], Some(&broker));
        assert_eq!(
            st.endpoint.as_deref(),
            Some("mqtt.shared:1883/channels/teltonika/")
        );
    }
}
