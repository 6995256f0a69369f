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
//!   [`super::device_ca::FileDeviceCa`]) and authenticate on the channel endpoint's certificate
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
//! devices on the channel, all tenants). [`Store::register_device`] does it in one
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

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::backends::CHANNEL_ROOT;

use super::errors::ApiError;
use super::store::{Store, StoreError, lock_key, query_err};

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
/// client-auth only); in a deployment [`super::device_ca::FileDeviceCa`].
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

/// Longest device id (a DNS label).
pub const MAX_ID_LEN: usize = 63;
/// Most labels on one device; longest label key and value.
pub const MAX_LABELS: usize = 32;
pub const MAX_LABEL_LEN: usize = 128;

/// 422 naming `id` unless `id` is a DNS label (SPEC: ids are validated, charset and length).
pub fn check_id(id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(ApiError::invalid(
            "id",
            format!(
                "{id:?} must be 1 to {MAX_ID_LEN} characters long (it has {})",
                id.len()
            ),
        ));
    }
    if !crate::config::is_dns_label(id) {
        return Err(ApiError::invalid(
            "id",
            format!(
                "{id:?} must be lower-case letters, digits and '-' (not first or last): it is a topic level, a certificate name and part of the broker username"
            ),
        ));
    }
    Ok(())
}

/// 422 naming `labels` unless there are at most [`MAX_LABELS`], each key 1–128 bytes of
/// `A-Z a-z 0-9 . _ - /` and each value at most 128 bytes without control characters.
pub fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if labels.len() > MAX_LABELS {
        return Err(ApiError::invalid(
            "labels",
            format!("{} labels: at most {MAX_LABELS}", labels.len()),
        ));
    }
    for (k, v) in labels {
        let key_ok = !k.is_empty()
            && k.len() <= MAX_LABEL_LEN
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'));
        if !key_ok {
            return Err(ApiError::invalid(
                format!("labels.{k}"),
                format!("label key {k:?} must be 1 to {MAX_LABEL_LEN} of A-Z a-z 0-9 . _ - /"),
            ));
        }
        if v.len() > MAX_LABEL_LEN || v.chars().any(char::is_control) {
            return Err(ApiError::invalid(
                format!("labels.{k}"),
                format!(
                    "label value must be at most {MAX_LABEL_LEN} bytes without control characters"
                ),
            ));
        }
    }
    Ok(())
}

/// The broker username and role of a device: `<tenant>.<id>`.
pub fn broker_username(tenant: &str, id: &str) -> String {
    format!("{tenant}.{id}")
}

/// A new broker username for a certificate device: `<tenant>.<id>.<tag>`, `tag` 16 random hex
/// digits, drawn at registration and at each `rotate-credentials`; it is the certificate's CN.
/// Each certificate has its own dynamic-security client and a replaced one's client is deleted,
/// so a certificate that was replaced, or belonged to a deleted device of the same id, maps to
/// no client although it still chains to the device CA until it expires (the listener takes the
/// username from the CN and dynamic security knows no certificates). The tag is random, not a
/// counter, so a re-registered id never gets an earlier certificate's name back.
pub fn cert_username(tenant: &str, id: &str) -> String {
    use rand::RngCore as _;
    let mut tag = [0u8; 8];
    rand::rng().fill_bytes(&mut tag);
    format!("{tenant}.{id}.{}", hex::encode(tag))
}

/// Longest broker username (the broker backend's bound).
pub const MAX_USERNAME_LEN: usize = 128;

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

/// The device's own topic prefix: `channels/<channel>/<tenant>/devices/<id>/`.
pub fn device_prefix(channel: &str, tenant: &str, id: &str) -> String {
    format!("{CHANNEL_ROOT}/{channel}/{tenant}/devices/{id}/")
}

/// The one topic filter the device's role allows: [`device_prefix`] + `#`.
pub fn device_topic(channel: &str, tenant: &str, id: &str) -> String {
    format!("{}#", device_prefix(channel, tenant, id))
}

/// A refusal by a limit: 403 `LimitExceeded`, naming the resource, the binding tenant (and
/// that it is an ancestor), its limit and its usage.
fn limit_refusal(tenant: &str, binding: &str, limit: i64, used: i64) -> ApiError {
    let whose = if binding == tenant {
        format!("tenant {binding:?}")
    } else {
        format!("tenant {binding:?} (an ancestor of {tenant:?})")
    };
    ApiError::Denied {
        code: 403,
        reason: "LimitExceeded".into(),
        message: format!(
            "devices: limit reached: {whose} allows {limit} devices in its subtree and {used} are registered; cannot register one more"
        ),
        field: None,
    }
}

fn channel_refusal(channel: &str, max: i64, used: i64) -> ApiError {
    ApiError::Denied {
        code: 403,
        reason: "LimitExceeded".into(),
        message: format!(
            "channel {channel:?} is at capacity: maxConnections {max} and {used} devices are registered on it; cannot register one more"
        ),
        field: None,
    }
}

const COLUMNS: &str = "tenant, id, channel, auth, labels, username, enabled, disabled_reason, \
    cert_serial, cert_sha256, extract(epoch from cert_not_after)::bigint, created_by, \
    extract(epoch from created_at)::bigint, extract(epoch from credentials_at)::bigint";

fn row(r: &tokio_postgres::Row) -> DeviceRecord {
    let labels: serde_json::Value = r.get(4);
    DeviceRecord {
        tenant: r.get(0),
        id: r.get(1),
        channel: r.get(2),
        auth: DeviceAuth::parse(r.get::<_, &str>(3)),
        labels: serde_json::from_value(labels).unwrap_or_default(),
        username: r.get(5),
        enabled: r.get(6),
        disabled_reason: r.get(7),
        cert_serial: r.get(8),
        cert_sha256: r.get(9),
        cert_not_after: r.get(10),
        created_by: r.get(11),
        created_at: r.get(12),
        credentials_at: r.get(13),
    }
}

fn conflict(tenant: &str, id: &str) -> ApiError {
    ApiError::Conflict {
        reason: "AlreadyExists",
        message: format!(
            "device {id:?} already exists in tenant {tenant:?} (ids are unique per tenant)"
        ),
    }
}

impl Store {
    /// Admits `new` against the limits of `chain` and the channel's `max_connections`, then
    /// runs `provision` (the broker client) and commits; all under the locks described in
    /// the module doc. When `provision` fails nothing is recorded; when the commit fails after
    /// `provision` succeeded, `undo` removes what it made.
    pub async fn register_device<T, P, U>(
        &self,
        new: &NewDevice,
        chain: &Chain,
        max_connections: Option<i64>,
        provision: P,
        undo: U,
    ) -> Result<(DeviceRecord, T), ApiError>
    where
        P: std::future::Future<Output = Result<T, ApiError>>,
        U: std::future::Future<Output = ()>,
    {
        let mut c = self.devices_client().await?;
        let tx = c.transaction().await.map_err(query_err)?;
        for (name, _) in &chain.tenants {
            tx.execute(
                "SELECT pg_advisory_xact_lock($1)",
                &[&lock_key("devices", name)],
            )
            .await
            .map_err(query_err)?;
        }
        tx.execute(
            "SELECT pg_advisory_xact_lock($1)",
            &[&lock_key("channel-devices", &new.channel)],
        )
        .await
        .map_err(query_err)?;
        if tx
            .query_opt(
                "SELECT 1 FROM devices WHERE tenant = $1 AND id = $2",
                &[&new.tenant, &new.id],
            )
            .await
            .map_err(query_err)?
            .is_some()
        {
            return Err(conflict(&new.tenant, &new.id));
        }
        let limited: Vec<&str> = chain
            .tenants
            .iter()
            .filter(|(_, l)| *l >= 0)
            .map(|(n, _)| n.as_str())
            .collect();
        if !limited.is_empty() {
            let rows = tx
                .query(
                    "SELECT p, count(*) FROM devices, unnest(path) AS p \
                     WHERE path && $1 AND p = ANY($1) GROUP BY p",
                    &[&limited],
                )
                .await
                .map_err(query_err)?;
            let used: BTreeMap<String, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            // The tightest: least room left; on a tie the one nearest the root.
            let binding = chain
                .tenants
                .iter()
                .filter(|(_, l)| *l >= 0)
                .map(|(n, l)| (n, *l, used.get(n).copied().unwrap_or(0)))
                .filter(|(_, l, u)| u + 1 > *l)
                .min_by_key(|(_, l, u)| l - u);
            if let Some((name, limit, u)) = binding {
                return Err(limit_refusal(&new.tenant, name, limit, u));
            }
        }
        if let Some(max) = max_connections {
            let used: i64 = tx
                .query_one(
                    "SELECT count(*) FROM devices WHERE channel = $1",
                    &[&new.channel],
                )
                .await
                .map_err(query_err)?
                .get(0);
            if used + 1 > max {
                return Err(channel_refusal(&new.channel, max, used));
            }
        }
        let path: Vec<&str> = chain.tenants.iter().map(|(n, _)| n.as_str()).collect();
        let labels = serde_json::to_value(&new.labels).unwrap_or_default();
        let username = new.username.clone();
        let cert = new.cert.clone();
        let sql = format!(
            "INSERT INTO devices (tenant, id, channel, auth, labels, path, username, created_by, \
             cert_serial, cert_sha256, cert_not_after) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, to_timestamp($11::bigint)) \
             RETURNING {COLUMNS}"
        );
        let inserted = tx
            .query_one(
                &sql,
                &[
                    &new.tenant,
                    &new.id,
                    &new.channel,
                    &new.auth.as_str(),
                    &labels,
                    &path,
                    &username,
                    &new.created_by,
                    &cert.as_ref().map(|c| c.serial.clone()),
                    &cert.as_ref().map(|c| c.sha256.clone()),
                    &cert.as_ref().map(|c| c.not_after),
                ],
            )
            .await;
        let inserted = match inserted {
            Ok(r) => row(&r),
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {
                return Err(conflict(&new.tenant, &new.id));
            }
            Err(e) => return Err(query_err(e).into()),
        };
        let out = provision.await?;
        if let Err(e) = tx.commit().await {
            undo.await;
            return Err(query_err(e).into());
        }
        Ok((inserted, out))
    }

    /// One device of `tenant`.
    pub async fn device(&self, tenant: &str, id: &str) -> Result<Option<DeviceRecord>, StoreError> {
        let c = self.devices_client().await?;
        let sql = format!("SELECT {COLUMNS} FROM devices WHERE tenant = $1 AND id = $2");
        let r = c
            .query_opt(&sql, &[&tenant, &id])
            .await
            .map_err(query_err)?;
        Ok(r.as_ref().map(row))
    }

    /// Devices of `tenant` matching `filter`, by id, after `after`, at most `limit`.
    pub async fn devices(
        &self,
        tenant: &str,
        filter: &DeviceFilter,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<DeviceRecord>, StoreError> {
        let c = self.devices_client().await?;
        let labels = serde_json::to_value(&filter.labels).unwrap_or_default();
        let prefix = filter.prefix.as_deref().map(|p| {
            format!(
                "{}%",
                p.replace('\\', "\\\\")
                    .replace('%', "\\%")
                    .replace('_', "\\_")
            )
        });
        let sql = format!(
            "SELECT {COLUMNS} FROM devices WHERE tenant = $1 AND id > $2 \
             AND ($3::text IS NULL OR channel = $3) AND ($4::text IS NULL OR auth = $4) \
             AND ($5::bool IS NULL OR enabled = $5) AND labels @> $6 \
             AND ($7::text IS NULL OR id LIKE $7) ORDER BY id LIMIT $8"
        );
        let rows = c
            .query(
                &sql,
                &[
                    &tenant,
                    &after.unwrap_or(""),
                    &filter.channel,
                    &filter.auth.map(DeviceAuth::as_str),
                    &filter.enabled,
                    &labels,
                    &prefix,
                    &limit,
                ],
            )
            .await
            .map_err(query_err)?;
        Ok(rows.iter().map(row).collect())
    }

    /// Runs `change` on the locked row of device `tenant/id` (`SELECT … FOR UPDATE`) and
    /// applies the returned update: `Some(Some(reason))` disables, `Some(None)` enables,
    /// `None` deletes the row. `cert` replaces the certificate facts (rotation). `change` runs
    /// the broker side first; when it fails, the row is unchanged.
    pub async fn change_device<T, F, Fut>(
        &self,
        tenant: &str,
        id: &str,
        change: F,
    ) -> Result<Option<(DeviceRecord, T)>, ApiError>
    where
        F: FnOnce(DeviceRecord) -> Fut,
        Fut: std::future::Future<Output = Result<(DeviceChange, T), ApiError>>,
    {
        let mut c = self.devices_client().await?;
        let tx = c.transaction().await.map_err(query_err)?;
        let sql = format!("SELECT {COLUMNS} FROM devices WHERE tenant = $1 AND id = $2 FOR UPDATE");
        let Some(current) = tx
            .query_opt(&sql, &[&tenant, &id])
            .await
            .map_err(query_err)?
            .as_ref()
            .map(row)
        else {
            return Ok(None);
        };
        let (what, out) = change(current.clone()).await?;
        let after = match what {
            DeviceChange::Delete => {
                tx.execute(
                    "DELETE FROM devices WHERE tenant = $1 AND id = $2",
                    &[&tenant, &id],
                )
                .await
                .map_err(query_err)?;
                current
            }
            DeviceChange::Enabled(reason) => {
                let sql = format!(
                    "UPDATE devices SET enabled = $3, disabled_reason = $4 \
                     WHERE tenant = $1 AND id = $2 RETURNING {COLUMNS}"
                );
                let r = tx
                    .query_one(&sql, &[&tenant, &id, &reason.is_none(), &reason])
                    .await
                    .map_err(query_err)?;
                row(&r)
            }
            DeviceChange::Credentials(cert, username) => {
                let sql = format!(
                    "UPDATE devices SET credentials_at = now(), cert_serial = $3, cert_sha256 = $4, \
                     cert_not_after = to_timestamp($5::bigint), username = coalesce($6, username) \
                     WHERE tenant = $1 AND id = $2 RETURNING {COLUMNS}"
                );
                let r = tx
                    .query_one(
                        &sql,
                        &[
                            &tenant,
                            &id,
                            &cert.as_ref().map(|c| c.serial.clone()),
                            &cert.as_ref().map(|c| c.sha256.clone()),
                            &cert.as_ref().map(|c| c.not_after),
                            &username,
                        ],
                    )
                    .await
                    .map_err(query_err)?;
                row(&r)
            }
        };
        tx.commit().await.map_err(query_err)?;
        Ok(Some((after, out)))
    }

    /// Registered devices of each tenant of `names`' subtrees: name → (own, subtree).
    /// Tenants without devices are absent.
    /// With `only_these`, only the tenants of `names` are counted (not their subtrees'
    /// members).
    pub async fn device_counts(
        &self,
        names: &[String],
        only_these: bool,
    ) -> Result<BTreeMap<String, (i64, i64)>, StoreError> {
        let c = self.devices_client().await?;
        let mut out: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        let sub = c
            .query(
                "SELECT p, count(*) FROM devices, unnest(path) AS p \
                 WHERE path && $1 AND (NOT $2 OR p = ANY($1)) GROUP BY p",
                &[&names, &only_these],
            )
            .await
            .map_err(query_err)?;
        for r in &sub {
            out.entry(r.get(0)).or_default().1 = r.get(1);
        }
        let own = c
            .query(
                "SELECT tenant, count(*) FROM devices WHERE path && $1 \
                 AND (NOT $2 OR tenant = ANY($1)) GROUP BY tenant",
                &[&names, &only_these],
            )
            .await
            .map_err(query_err)?;
        for r in &own {
            out.entry(r.get(0)).or_default().0 = r.get(1);
        }
        Ok(out)
    }

    /// Registered devices per channel, and the tenants having devices on it.
    pub async fn channel_device_counts(
        &self,
    ) -> Result<BTreeMap<String, (i64, Vec<String>)>, StoreError> {
        let c = self.devices_client().await?;
        let rows = c
            .query(
                "SELECT channel, count(*), array_agg(DISTINCT tenant ORDER BY tenant) \
                 FROM devices GROUP BY channel",
                &[],
            )
            .await
            .map_err(query_err)?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), (r.get(1), r.get(2))))
            .collect())
    }
}

/// What [`Store::change_device`] writes.
#[derive(Clone, Debug)]
pub enum DeviceChange {
    /// `None` = enabled; `Some(reason)` = disabled for that reason.
    Enabled(Option<String>),
    /// New credentials: certificate facts and the new broker username for a certificate
    /// device.
    Credentials(Option<CertFacts>, Option<String>),
    Delete,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_dns_labels_and_errors_name_the_field() {
        for ok in ["d1", "356938035643809", "tracker-7"] {
            assert!(check_id(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "D1",
            "a/b",
            "a+b",
            "#",
            "-a",
            "a.b",
            "$sys",
            &"x".repeat(64),
        ] {
            let e = check_id(bad).unwrap_err();
            assert_eq!(e.body().field.as_deref(), Some("id"), "{bad}");
            assert_eq!(e.status(), axum::http::StatusCode::UNPROCESSABLE_ENTITY);
        }
        assert!(
            check_id(&"x".repeat(64))
                .unwrap_err()
                .to_string()
                .contains("1 to 63")
        );
        assert!(
            check_id("a/b")
                .unwrap_err()
                .to_string()
                .contains("lower-case")
        );
        let longest = broker_username(&"t".repeat(63), &"d".repeat(63));
        assert!(longest.len() <= 128);
    }

    #[test]
    fn labels_are_bounded() {
        let mut l = BTreeMap::new();
        l.insert("site".to_string(), "north".to_string());
        assert!(check_labels(&l).is_ok());
        l.insert("bad key".to_string(), "x".to_string());
        let e = check_labels(&l).unwrap_err();
        assert_eq!(e.body().field.as_deref(), Some("labels.bad key"));
        let many: BTreeMap<String, String> =
            (0..33).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(
            check_labels(&many)
                .unwrap_err()
                .to_string()
                .contains("at most 32")
        );
        let mut v = BTreeMap::new();
        v.insert("k".to_string(), "a\nb".to_string());
        assert!(
            check_labels(&v)
                .unwrap_err()
                .to_string()
                .contains("control")
        );
    }

    #[test]
    fn refusals_name_resource_binding_tenant_limit_and_usage() {
        let e = limit_refusal("cust", "dist", 10, 10).to_string();
        assert_eq!(
            e,
            "devices: limit reached: tenant \"dist\" (an ancestor of \"cust\") allows 10 devices in its subtree and 10 are registered; cannot register one more"
        );
        let e = channel_refusal("teltonika", 5, 5);
        assert_eq!(e.status(), axum::http::StatusCode::FORBIDDEN);
        assert!(e.to_string().contains("maxConnections 5"));
        assert_eq!(device_topic("c", "t", "d"), "channels/c/t/devices/d/#");
    }
}

/// Prefix of the reasons [`sync_devices`] writes: a device disabled for such a reason is
/// enabled again by it once the reason is gone; a device disabled by a person stays disabled.
pub const AUTO_REASON: &str = "[tenant] ";

/// Why a device of tenant `t` on `channel` may not be enabled now: the tenant is suspended
/// (itself or through an ancestor), no longer lists the channel, or can no longer see it.
pub fn blocked(
    tree: &crate::hierarchy::TenantTree,
    t: crate::hierarchy::NodeId,
    channel: &str,
) -> Option<String> {
    let tenant = tree.name(t);
    if let Some(s) = tree.suspended_by(t) {
        Some(if s == t {
            format!("tenant {tenant:?} is suspended")
        } else {
            format!(
                "tenant {tenant:?} is suspended (through its ancestor {:?})",
                tree.name(s)
            )
        })
    } else if !tree.tenant(t).spec.channels.iter().any(|c| c == channel) {
        Some(format!(
            "tenant {tenant:?} no longer uses channel {channel:?}"
        ))
    } else if tree.channel_object(channel).is_none() || !tree.is_channel_visible(channel, t) {
        Some(format!(
            "channel {channel:?} is no longer visible to tenant {tenant:?}"
        ))
    } else {
        None
    }
}

/// What [`sync_devices`] does to one device.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Wanted {
    Keep,
    Disable(String),
    Enable,
    Remove,
}

impl Store {
    /// Every device's key, channel and state (for [`sync_devices`]).
    async fn device_states(
        &self,
    ) -> Result<Vec<(String, String, String, bool, Option<String>)>, StoreError> {
        let c = self.devices_client().await?;
        let rows = c
            .query(
                "SELECT tenant, id, channel, enabled, disabled_reason FROM devices ORDER BY tenant, id",
                &[],
            )
            .await
            .map_err(query_err)?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
            .collect())
    }
}

/// Brings devices in line with their tenants (issue 13, item 3): a device of a tenant that is
/// suspended (itself or through an ancestor) is disabled, and one on a channel its tenant no
/// longer lists or can no longer see is disabled too, each with the reason in
/// `disabledReason` (prefixed [`AUTO_REASON`]); they are enabled again when the reason is
/// gone. The devices of a deleted tenant are removed (broker client and registry row). The
/// broker is changed before the registry, per device, so a failure leaves both in their old
/// state for the next pass. Runs only on a loaded tree (never mistakes a tree that is still
/// loading for deleted tenants). Returns what it changed (`tenant/id: …`).
pub async fn sync_devices(api: &super::server::Api) -> Result<Vec<String>, ApiError> {
    if !api.cache.is_ready() {
        return Ok(Vec::new());
    }
    let Some(broker) = api.broker.clone() else {
        return Ok(Vec::new());
    };
    let mut done = Vec::new();
    for (tenant, id, channel, enabled, reason) in api.store.device_states().await? {
        let wanted = api.cache.view().with_tree(|tree| {
            let Some(t) = tree.get(&tenant) else {
                return Wanted::Remove;
            };
            let why = blocked(tree, t, &channel).map(|w| format!("{AUTO_REASON}{w}"));
            let auto = reason
                .as_deref()
                .is_some_and(|r| r.starts_with(AUTO_REASON));
            match why {
                Some(w) if enabled || (auto && reason.as_deref() != Some(w.as_str())) => {
                    Wanted::Disable(w)
                }
                None if !enabled && auto => Wanted::Enable,
                _ => Wanted::Keep,
            }
        });
        if wanted == Wanted::Keep {
            continue;
        }
        let b = broker.clone();
        let w = wanted.clone();
        let changed = api
            .store
            .change_device(&tenant, &id, |rec| async move {
                let err = |e: crate::backends::BackendError| {
                    tracing::warn!(error = %e, "device sync: broker");
                    ApiError::Unavailable("the channel broker is unavailable".into())
                };
                match w {
                    Wanted::Remove => {
                        b.remove_client(&rec.username, &rec.username)
                            .await
                            .map_err(err)?;
                        Ok((DeviceChange::Delete, ()))
                    }
                    Wanted::Disable(why) => {
                        set_device_enabled(&b, &rec, false).await.map_err(err)?;
                        Ok((DeviceChange::Enabled(Some(why)), ()))
                    }
                    Wanted::Enable | Wanted::Keep => {
                        set_device_enabled(&b, &rec, true).await.map_err(err)?;
                        Ok((DeviceChange::Enabled(None), ()))
                    }
                }
            })
            .await?;
        if changed.is_some() {
            let what = match &wanted {
                Wanted::Remove => "removed: its tenant was deleted".to_string(),
                Wanted::Disable(w) => format!("disabled: {}", w.trim_start_matches(AUTO_REASON)),
                _ => "enabled again".to_string(),
            };
            tracing::info!(tenant = %tenant, device = %id, "{what}");
            done.push(format!("{tenant}/{id}: {what}"));
        }
    }
    Ok(done)
}

/// Runs [`sync_devices`] every `every` (in `silo api`; every replica may run it, each change
/// is idempotent and taken under the device's row lock).
pub async fn sync_loop(api: std::sync::Arc<super::server::Api>, every: std::time::Duration) {
    loop {
        tokio::time::sleep(every).await;
        if let Err(e) = sync_devices(&api).await {
            tracing::warn!(error = %e, "device sync failed; retrying");
        }
    }
}
