//! The device registry (issue 13, SPEC "REST API" devices): devices of a tenant on a master
//! channel, kept in the API's PostgreSQL (`devices`, migration `V3__devices.sql`), each one a
//! dynamic-security client on the shared Mosquitto.
//!
//! # Names and topics
//!
//! - A device id is a DNS label (1–63 of `a-z 0-9 -`, not starting or ending with `-`): it
//!   is a topic level, part of a certificate device's URI SAN (`crate::pki::device_uri`) and
//!   part of the broker username, so it can hold no wildcard, `/`, `$` or `.`.
//! - Broker username and role: `<tenant>.<id>` for a password device ([`broker_username`]),
//!   `<tenant>.<id>.<tag>` for a certificate device ([`cert_username`]: the CN of its current
//!   certificate, a new random tag at each rotation); at most 128 bytes, and no tenant client
//!   (a DNS label, no `.`), bridge (`silo_bridge.…`) or cleanup client (`silo_cleanup.…`) can
//!   have it.
//! - Certificate devices are issued by the device CA ([`DeviceCa`], in a deployment
//!   [`ca::FileDeviceCa`]) and authenticate on the channel endpoint's certificate
//!   listener (docs/channels.md); disabling one deletes its broker client
//!   ([`set_device_enabled`]).
//! - The device may publish, subscribe and receive only under
//!   `channels/<channel>/<tenant>/devices/<id>/#` ([`device_topic`]); its tenant reads
//!   `channels/<channel>/<tenant>/#` (SPEC "Shapes").
//!
//! # Limits, race-free (flespi semantics, the engine's rule)
//!
//! A registration counts against `limits.devices` of the tenant **and of every ancestor**
//! (each one caps its whole subtree) and against the channel's `maxConnections` (registered
//! devices on the channel, all tenants). [`Store::register_device`](crate::api::store::Store::register_device) does it in one
//! transaction: it takes transaction-scoped advisory locks on the tenant chain, root first,
//! then on the channel, counts the registered rows under those locks, inserts the row, creates
//! the broker client, and commits. Every registration takes its chain's locks in the same
//! root-to-leaf order (chains share a prefix, then diverge), and the channel lock last, so two
//! replicas never deadlock and never both admit the last free place. A refusal names the
//! resource, the binding tenant, its limit and its usage.
//!
//! # Secrets
//!
//! Nothing secret is stored here: a password lives only in the broker's dynamic-security
//! file as the plugin's own salted PBKDF2-SHA512 hash; a certificate device's key is returned
//! once and only the certificate's serial, SHA-256 fingerprint and expiry are kept (its broker
//! client's password is random and kept by nobody).
//!
//! # Modules
//!
//! - this module: the registry's types (a row, a registration, a filter, a change) and the
//!   [`DeviceCa`] seam;
//! - [`names`]: ids, labels, broker usernames and topics (the checks and the naming rules);
//! - [`broker`]: a device's dynamic-security client on the shared Mosquitto;
//! - [`registry`]: the PostgreSQL side: registration under the limits' locks, reads, changes,
//!   counts;
//! - [`sync`]: the periodic pass that brings devices in line with their tenants (suspension,
//!   channels, deletion);
//! - [`ca`]: the device CA files as the API reads them ([`ca::FileDeviceCa`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub mod broker;
pub mod ca;
pub mod names;
pub mod registry;
pub mod sync;

pub use broker::{device_account, generate_password, set_device_enabled};
pub use names::{
    MAX_ID_LEN, MAX_LABEL_LEN, MAX_LABELS, MAX_USERNAME_LEN, broker_username, cert_username,
    check_id, check_labels, device_prefix, device_topic,
};
pub use sync::{AUTO_REASON, blocked, sync_devices, sync_loop};

/// How a device authenticates to the channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeviceAuth {
    /// A generated password (returned once), username `<tenant>.<id>`.
    Password,
    /// A client certificate and key issued by the tenant's CA (returned once).
    Certificate,
}

impl DeviceAuth {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceAuth::Password => "password",
            DeviceAuth::Certificate => "certificate",
        }
    }

    fn parse(s: &str) -> DeviceAuth {
        if s == "certificate" {
            DeviceAuth::Certificate
        } else {
            DeviceAuth::Password
        }
    }
}

/// A certificate issued to a device, with the chain its channel endpoint trusts.
#[derive(Clone, Debug)]
pub struct IssuedDevice {
    pub cert: crate::pki::IssuedCert,
    /// PEM of the device CA followed by the platform root (`caCertificate` in the answer).
    pub ca_pem: String,
}

/// Where certificate devices' certificates come from: the device CA of the channel endpoint
/// (`crate::pki::DeviceCa`: `CN=<broker username>`, URI SAN `urn:silo:tenant:<t>:device:<id>`,
/// client-auth only); in a deployment [`ca::FileDeviceCa`].
pub trait DeviceCa: Send + Sync {
    /// Issues a client certificate for device `id` of `tenant` whose CN is `username` (the
    /// broker username the certificate listener takes from it); the error says why not.
    fn issue<'a>(
        &'a self,
        tenant: &'a str,
        id: &'a str,
        username: &'a str,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<IssuedDevice, String>> + Send + 'a>,
    >;
}

/// A registry row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceRecord {
    pub tenant: String,
    pub id: String,
    pub channel: String,
    pub auth: DeviceAuth,
    pub labels: BTreeMap<String, String>,
    pub username: String,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    pub cert_serial: Option<String>,
    pub cert_sha256: Option<String>,
    /// Unix seconds.
    pub cert_not_after: Option<i64>,
    pub created_by: String,
    pub created_at: i64,
    pub credentials_at: i64,
}

/// Certificate facts kept for a certificate device.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CertFacts {
    pub serial: String,
    pub sha256: String,
    pub not_after: i64,
}

impl CertFacts {
    /// Serial, SHA-256 of the DER and expiry of an issued certificate.
    pub fn of(c: &crate::pki::IssuedCert) -> CertFacts {
        CertFacts {
            serial: c.serial.clone(),
            sha256: hex::encode(Sha256::digest(c.der.as_ref())),
            not_after: c.not_after.unix_timestamp(),
        }
    }
}

/// A registration to admit.
#[derive(Clone, Debug)]
pub struct NewDevice {
    pub tenant: String,
    pub id: String,
    /// Its broker username ([`broker_username`] or, for a certificate device,
    /// [`cert_username`]).
    pub username: String,
    pub channel: String,
    pub auth: DeviceAuth,
    pub labels: BTreeMap<String, String>,
    pub created_by: String,
    pub cert: Option<CertFacts>,
}

/// The tenant chain a registration counts against: root first, the tenant last, each with its
/// own `limits.devices` (-1 = no own limit), read from the tree when the request arrived.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    pub tenants: Vec<(String, i64)>,
}

/// Filters of a device list.
#[derive(Clone, Debug, Default)]
pub struct DeviceFilter {
    pub channel: Option<String>,
    pub auth: Option<DeviceAuth>,
    pub enabled: Option<bool>,
    /// `key=value` labels that must all match.
    pub labels: BTreeMap<String, String>,
    /// Device ids starting with this.
    pub prefix: Option<String>,
}

/// What [`Store::change_device`](crate::api::store::Store::change_device) writes.
#[derive(Clone, Debug)]
pub enum DeviceChange {
    /// `None` = enabled; `Some(reason)` = disabled for that reason.
    Enabled(Option<String>),
    /// New credentials: certificate facts and the new broker username for a certificate
    /// device.
    Credentials(Option<CertFacts>, Option<String>),
    Delete,
}
