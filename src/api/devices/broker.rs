//! A device's dynamic-security client on the shared Mosquitto: its account (own role, own
//! topic, password) and enabling or disabling it (a certificate device's client is deleted
//! and made again, see [`set_device_enabled`]).

use super::{DeviceAuth, DeviceRecord, device_topic};

/// The broker client of a device: its own role named like it, only [`device_topic`], and a
/// password (for a certificate device a random one that nobody keeps: its listener takes the
/// username from the certificate and asks for no password).
pub fn device_account(
    tenant: &str,
    id: &str,
    channel: &str,
    username: &str,
    password: String,
    enabled: bool,
) -> crate::backends::BrokerAccount {
    crate::backends::BrokerAccount {
        tenant: tenant.to_string(),
        username: username.to_string(),
        password,
        reset_password: true,
        role: username.to_string(),
        topics: vec![device_topic(channel, tenant, id)],
        enabled,
    }
}

/// 24 random bytes, base64url (32 characters).
pub fn generate_password() -> String {
    use base64::Engine as _;
    use rand::RngCore as _;
    let mut b = [0u8; 24];
    rand::rng().fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// Enables or disables device `rec` on the broker.
///
/// A password device's client is disabled (`disableClient`: its connections end and its
/// logins are refused). A certificate device's client and role are **deleted** instead, and
/// made again on enable: on a `use_identity_as_username` listener Mosquitto 2.0 asks the
/// plugin for no password check, so a disabled client could still log in with its
/// certificate and keep its ACLs (measured on Mosquitto 2.0.11); a deleted one still completes
/// CONNECT but every publish, subscription and delivery is denied (no client, no ACLs).
pub async fn set_device_enabled(
    broker: &crate::backends::mosquitto::MosquittoBackend,
    rec: &DeviceRecord,
    enabled: bool,
) -> Result<(), crate::backends::BackendError> {
    match (rec.auth, enabled) {
        (DeviceAuth::Password, _) => broker.set_client_enabled(&rec.username, enabled).await,
        (DeviceAuth::Certificate, false) => broker
            .remove_client(&rec.username, &rec.username)
            .await
            .map(|_| ()),
        (DeviceAuth::Certificate, true) => broker
            .ensure_client(&device_account(
                &rec.tenant,
                &rec.id,
                &rec.channel,
                &rec.username,
                generate_password(),
                true,
            ))
            .await
            .map(|_| ()),
    }
}
