//! `spec.limits`: counts (flespi semantics) and namespace quotas.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::quantity::QuantityValue;

/// Limits as written in a Tenant or LimitProfile. Absent fields are "no own limit".
///
/// Counts: `-1` or absent = no own limit, `0` = prohibited, `N` = the whole subtree
/// (the tenant and its descendants) may use at most N.
/// Quotas (cpu, memory, storage, pods): the value becomes the namespace ResourceQuota.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = -1))]
    pub subtenants: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = -1))]
    pub devices: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = -1))]
    pub channels: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = -1))]
    pub mqtt_connections: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<QuantityValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<QuantityValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<QuantityValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<QuantityValue>,
}

impl Limits {
    pub fn count(&self, r: CountResource) -> Option<i64> {
        match r {
            CountResource::Subtenants => self.subtenants,
            CountResource::Devices => self.devices,
            CountResource::Channels => self.channels,
            CountResource::MqttConnections => self.mqtt_connections,
        }
    }

    pub fn set_count(&mut self, r: CountResource, v: Option<i64>) {
        let slot = match r {
            CountResource::Subtenants => &mut self.subtenants,
            CountResource::Devices => &mut self.devices,
            CountResource::Channels => &mut self.channels,
            CountResource::MqttConnections => &mut self.mqtt_connections,
        };
        *slot = v;
    }

    pub fn quota(&self, r: QuotaResource) -> Option<&QuantityValue> {
        match r {
            QuotaResource::Cpu => self.cpu.as_ref(),
            QuotaResource::Memory => self.memory.as_ref(),
            QuotaResource::Storage => self.storage.as_ref(),
            QuotaResource::Pods => self.pods.as_ref(),
        }
    }

    pub fn set_quota(&mut self, r: QuotaResource, v: Option<QuantityValue>) {
        let slot = match r {
            QuotaResource::Cpu => &mut self.cpu,
            QuotaResource::Memory => &mut self.memory,
            QuotaResource::Storage => &mut self.storage,
            QuotaResource::Pods => &mut self.pods,
        };
        *slot = v;
    }

    /// `self` overlaid on `base`: every field `self` sets wins (profile, then explicit limits).
    pub fn overlay_on(&self, base: &Limits) -> Limits {
        let mut out = base.clone();
        for r in CountResource::ALL {
            if let Some(v) = self.count(r) {
                out.set_count(r, Some(v));
            }
        }
        for r in QuotaResource::ALL {
            if let Some(v) = self.quota(r) {
                out.set_quota(r, Some(v.clone()));
            }
        }
        out
    }

    /// True when every resource is set to zero (a "block" profile).
    pub fn is_block(&self) -> bool {
        CountResource::ALL.iter().all(|r| self.count(*r) == Some(0))
    }
}

/// Resources limited by count over a whole subtree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum CountResource {
    Subtenants,
    Devices,
    Channels,
    MqttConnections,
}

impl CountResource {
    pub const ALL: [CountResource; 4] = [
        CountResource::Subtenants,
        CountResource::Devices,
        CountResource::Channels,
        CountResource::MqttConnections,
    ];

    /// The field name in `spec.limits`.
    pub fn field(self) -> &'static str {
        match self {
            CountResource::Subtenants => "subtenants",
            CountResource::Devices => "devices",
            CountResource::Channels => "channels",
            CountResource::MqttConnections => "mqttConnections",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for CountResource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.field())
    }
}

impl std::str::FromStr for CountResource {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CountResource::ALL
            .into_iter()
            .find(|r| r.field() == s)
            .ok_or_else(|| format!("unknown count resource {s:?} (expected one of subtenants, devices, channels, mqttConnections)"))
    }
}

/// Resources that become the namespace ResourceQuota.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QuotaResource {
    Cpu,
    Memory,
    Storage,
    Pods,
}

impl QuotaResource {
    pub const ALL: [QuotaResource; 4] = [
        QuotaResource::Cpu,
        QuotaResource::Memory,
        QuotaResource::Storage,
        QuotaResource::Pods,
    ];

    pub fn field(self) -> &'static str {
        match self {
            QuotaResource::Cpu => "cpu",
            QuotaResource::Memory => "memory",
            QuotaResource::Storage => "storage",
            QuotaResource::Pods => "pods",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for QuotaResource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.field())
    }
}

/// Usage counters of the count resources.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct UsageCounts {
    #[serde(default)]
    pub subtenants: i64,
    #[serde(default)]
    pub devices: i64,
    #[serde(default)]
    pub channels: i64,
    #[serde(default)]
    pub mqtt_connections: i64,
}

impl UsageCounts {
    pub fn get(&self, r: CountResource) -> i64 {
        match r {
            CountResource::Subtenants => self.subtenants,
            CountResource::Devices => self.devices,
            CountResource::Channels => self.channels,
            CountResource::MqttConnections => self.mqtt_connections,
        }
    }

    pub fn get_mut(&mut self, r: CountResource) -> &mut i64 {
        match r {
            CountResource::Subtenants => &mut self.subtenants,
            CountResource::Devices => &mut self.devices,
            CountResource::Channels => &mut self.channels,
            CountResource::MqttConnections => &mut self.mqtt_connections,
        }
    }

    /// Adds `other`, saturating: usage read from objects may be arbitrarily large.
    pub fn add(&mut self, other: &UsageCounts) {
        for r in CountResource::ALL {
            let v = self.get_mut(r);
            *v = v.saturating_add(other.get(r));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_limits_override_profile() {
        let profile = Limits {
            devices: Some(100),
            channels: Some(5),
            ..Default::default()
        };
        let own = Limits {
            devices: Some(10),
            cpu: Some(QuantityValue::new("2")),
            ..Default::default()
        };
        let eff = own.overlay_on(&profile);
        assert_eq!(eff.devices, Some(10));
        assert_eq!(eff.channels, Some(5));
        assert_eq!(eff.cpu, Some(QuantityValue::new("2")));
    }

    #[test]
    fn block_profile_is_all_zero() {
        let block = Limits {
            subtenants: Some(0),
            devices: Some(0),
            channels: Some(0),
            mqtt_connections: Some(0),
            ..Default::default()
        };
        assert!(block.is_block());
        assert!(!Limits::default().is_block());
    }

    #[test]
    fn count_resource_names_round_trip() {
        for r in CountResource::ALL {
            assert_eq!(r.field().parse::<CountResource>(), Ok(r));
        }
        assert!(
            "widgets"
                .parse::<CountResource>()
                .unwrap_err()
                .contains("widgets")
        );
    }
}
