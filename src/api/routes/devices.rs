//! `/v1/tenants/{name}/devices`: register, list, read, delete, disable, enable and
//! rotate the credentials of a tenant's devices on a master channel (the registry and its
//! rules: [`crate::api::devices`]).
//!
//! Reads need `tenants.read`, changes `devices.manage`; the tenant must be in the caller's
//! subtree (anything else is the one 404), and a device outside it is the same 404.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use crate::backends::BackendError;
use crate::hierarchy::roles::Permission;
use crate::types::CountResource;

use super::super::authz::Caller;
use super::super::body::{JsonBody, QueryOf};
use super::super::devices::{
    CertFacts, Chain, DeviceAuth, DeviceChange, DeviceFilter, DeviceRecord, IssuedDevice,
    MAX_USERNAME_LEN, NewDevice, broker_username, cert_username, check_id, check_labels,
    device_account, device_prefix, generate_password, set_device_enabled,
};
use super::super::errors::{ApiError, ErrorBody};
use super::super::server::{Api, AppState};
use super::{List, Page, encode_cursor, rfc3339};

/// `POST /v1/tenants/{name}/devices` body (SPEC "Shapes": `{id, channel, auth, labels?}`).
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceCreate {
    /// 1–63 of `a-z 0-9 -`, not starting or ending with `-`; unique within the tenant.
    pub id: String,
    /// A master channel listed in the tenant's `spec.channels`.
    pub channel: String,
    pub auth: DeviceAuth,
    /// Free-form labels for filtering (at most 32; keys `A-Z a-z 0-9 . _ - /`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Facts of a certificate device's current certificate.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateInfo {
    /// Hex serial.
    pub serial: String,
    /// Hex SHA-256 of the DER certificate.
    pub sha256: String,
    /// RFC 3339.
    pub not_after: String,
}

/// A device in a response (never a secret).
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceOut {
    pub id: String,
    pub tenant: String,
    pub channel: String,
    pub auth: DeviceAuth,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// MQTT username on the channel endpoint: `<tenant>.<id>` for a password device; for a
    /// certificate device `<tenant>.<id>.<tag>`, the CN of its current certificate (a new
    /// random 16-hex-digit tag at each rotation).
    pub username: String,
    /// The device publishes and subscribes only below this prefix.
    pub topic_prefix: String,
    pub enabled: bool,
    /// Why the device is disabled (absent while enabled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_info: Option<CertificateInfo>,
    /// RFC 3339.
    pub created_at: String,
    /// When the current credentials were issued (RFC 3339).
    pub credentials_issued_at: String,
}

/// A device with its credentials: the answer of a registration or a rotation, the only
/// time they are shown.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceCredentials {
    #[serde(flatten)]
    pub device: DeviceOut,
    /// Auth `password`: the generated password (24 random bytes, base64url).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Auth `certificate`: the client certificate (PEM) from the device CA: `CN=<username>`,
    /// URI SAN `urn:silo:tenant:<tenant>:device:<id>`, client-auth only, valid 90 days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    /// Auth `certificate`: its private key (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    /// Auth `certificate`: the device CA followed by the platform root (PEM): the chain the
    /// channel endpoint trusts the certificate with (its server certificate chains to the
    /// same root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificate: Option<String>,
}

/// Filters of `GET /v1/tenants/{name}/devices`.
#[derive(Clone, Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeviceQuery {
    /// Only devices on this channel.
    pub channel: Option<String>,
    /// `password` or `certificate`.
    pub auth: Option<String>,
    /// `true` or `false`.
    pub enabled: Option<bool>,
    /// `key=value[,key=value…]`: labels that must all match.
    pub label: Option<String>,
    /// Ids starting with this.
    pub q: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

fn out(r: &DeviceRecord) -> DeviceOut {
    DeviceOut {
        id: r.id.clone(),
        tenant: r.tenant.clone(),
        channel: r.channel.clone(),
        auth: r.auth,
        labels: r.labels.clone(),
        username: r.username.clone(),
        topic_prefix: device_prefix(&r.channel, &r.tenant, &r.id),
        enabled: r.enabled,
        disabled_reason: r.disabled_reason.clone(),
        certificate_info: match (&r.cert_serial, &r.cert_sha256, r.cert_not_after) {
            (Some(serial), Some(sha256), Some(na)) => Some(CertificateInfo {
                serial: serial.clone(),
                sha256: sha256.clone(),
                not_after: rfc3339(na),
            }),
            _ => None,
        },
        created_at: rfc3339(r.created_at),
        credentials_issued_at: rfc3339(r.credentials_at),
    }
}

fn with_credentials(
    r: &DeviceRecord,
    password: Option<String>,
    cert: Option<IssuedDevice>,
) -> DeviceCredentials {
    DeviceCredentials {
        device: out(r),
        password,
        certificate: cert.as_ref().map(|c| c.cert.cert_pem.clone()),
        private_key: cert.as_ref().map(|c| c.cert.key_pem.clone()),
        ca_certificate: cert.map(|c| c.ca_pem),
    }
}

fn broker(
    api: &Api,
) -> Result<std::sync::Arc<crate::backends::mosquitto::MosquittoBackend>, ApiError> {
    api.broker.clone().ok_or_else(|| {
        ApiError::Unavailable(
            "devices cannot be changed: this API has no channel broker configured (shared.mosquitto.host and api.broker)".into(),
        )
    })
}

fn broker_err(e: BackendError) -> ApiError {
    tracing::error!(error = %e, "channel broker");
    ApiError::Unavailable(
        "the channel broker is unavailable; nothing was changed, retry later".into(),
    )
}

async fn issue_cert(
    api: &Api,
    tenant: &str,
    id: &str,
    username: &str,
) -> Result<IssuedDevice, ApiError> {
    let ca = api.device_ca.clone().ok_or_else(|| {
        ApiError::Unavailable(
            "certificate devices are not available: this API has no device CA (set api.devices.ca.certFile and keyFile to the mounted Secret silo-device-ca); register with auth \"password\"".into(),
        )
    })?;
    ca.issue(tenant, id, username).await.map_err(|e| {
        tracing::error!(tenant, device = id, error = %e, "device certificate");
        ApiError::Unavailable(
            "cannot issue a device certificate: the device CA cannot be used (the API log says why); retry later".into(),
        )
    })
}

/// The device's tenant in the caller's subtree, its chain for limits and whether it is
/// suspended.
fn tenant_chain(
    api: &Api,
    caller: &Caller,
    name: &str,
) -> Result<(Chain, Option<String>, Vec<String>), ApiError> {
    api.cache.view().with_tree(|tree| {
        let id = caller.scope(tree, name)?;
        let k = CountResource::Devices.index();
        let mut tenants: Vec<(String, i64)> = std::iter::once(id)
            .chain(tree.ancestors(id))
            .map(|a| (tree.name(a).to_string(), tree.node(a).counts[k]))
            .collect();
        tenants.reverse();
        let suspended = tree.suspended_by(id).map(|s| tree.name(s).to_string());
        Ok((
            Chain { tenants },
            suspended,
            tree.tenant(id).spec.channels.clone(),
        ))
    })
}

/// Devices of a tenant, by id, filtered.
#[utoipa::path(get, path = "/v1/tenants/{name}/devices", tag = "devices",
    params(("name" = String, Path, description = "tenant name"), DeviceQuery),
    responses(
        (status = 200, description = "devices", body = List<DeviceOut>),
        (status = 400, description = "bad query", body = ErrorBody),
        (status = 401, description = "no or bad token", body = ErrorBody),
        (status = 403, description = "the role cannot read tenants", body = ErrorBody),
        (status = 404, description = "the tenant is outside the subtree or missing", body = ErrorBody),
    ))]
pub async fn list_devices(
    State(api): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    QueryOf(q): QueryOf<DeviceQuery>,
) -> Result<Json<List<DeviceOut>>, ApiError> {
    caller.require(Permission::TenantsRead)?;
    api.cache
        .view()
        .with_tree(|tree| caller.scope(tree, &name))?;
    let (limit, after) = Page {
        limit: q.limit,
        cursor: q.cursor.clone(),
    }
    .parse()?;
    for (field, v) in [("channel", &q.channel), ("label", &q.label), ("q", &q.q)] {
        if v.as_deref()
            .is_some_and(|v| v.chars().any(char::is_control))
        {
            return Err(ApiError::BadRequest {
                message: format!("{field} must not contain control characters"),
                field: Some(field.into()),
            });
        }
    }
    let auth = match q.auth.as_deref() {
        None => None,
        Some("password") => Some(DeviceAuth::Password),
        Some("certificate") => Some(DeviceAuth::Certificate),
        Some(other) => {
            return Err(ApiError::BadRequest {
                message: format!("auth {other:?} must be password or certificate"),
                field: Some("auth".into()),
            });
        }
    };
    let mut labels = BTreeMap::new();
    for pair in q
        .label
        .iter()
        .flat_map(|l| l.split(','))
        .filter(|p| !p.is_empty())
    {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(ApiError::BadRequest {
                message: format!("label {pair:?} must be key=value"),
                field: Some("label".into()),
            });
        };
        labels.insert(k.to_string(), v.to_string());
    }
    let filter = DeviceFilter {
        channel: q.channel.clone(),
        auth,
        enabled: q.enabled,
        labels,
        prefix: q.q.clone(),
    };
    let mut rows = api
        .store
        .devices(&name, &filter, after.as_deref(), limit as i64 + 1)
        .await?;
    let next = if rows.len() > limit {
        rows.truncate(limit);
        rows.last().map(|r| encode_cursor(&r.id))
    } else {
        None
    };
    Ok(Json(List {
        items: rows.iter().map(out).collect(),
        next,
    }))
}

/// Registers a device: counts against `devices` of the tenant and every ancestor and
/// against the channel's `maxConnections`; returns its credentials once.
#[utoipa::path(post, path = "/v1/tenants/{name}/devices", tag = "devices",
    params(("name" = String, Path, description = "tenant name")),
    request_body = DeviceCreate,
    responses(
        (status = 201, description = "registered; the credentials are shown this once", body = DeviceCredentials),
        (status = 400, description = "not JSON", body = ErrorBody),
        (status = 401, description = "no or bad token", body = ErrorBody),
        (status = 403, description = "the role lacks `devices.manage`, the tenant is suspended, or a `devices` limit or the channel's `maxConnections` is reached (`LimitExceeded`, naming the binding tenant, its limit and usage)", body = ErrorBody),
        (status = 404, description = "the tenant is outside the subtree or missing", body = ErrorBody),
        (status = 409, description = "the id is taken in this tenant", body = ErrorBody),
        (status = 422, description = "an invalid value; `field` names it (`id`, `channel`, `auth`, `labels.<key>`)", body = ErrorBody),
        (status = 503, description = "the database, the channel broker or the tenant CA is unavailable; nothing was registered", body = ErrorBody),
    ))]
pub async fn register_device(
    State(api): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<DeviceCreate>,
) -> Result<(StatusCode, Json<DeviceCredentials>), ApiError> {
    caller.require(Permission::DevicesManage)?;
    let target = format!("{name}/{}", body.id);
    api.mutate(&caller, "devices.register", &target, async {
        let (chain, suspended, channels) = tenant_chain(&api, &caller, &name)?;
        check_id(&body.id)?;
        check_labels(&body.labels)?;
        if let Some(s) = suspended {
            return Err(ApiError::Suspended(format!(
                "tenant {name:?} is suspended (by {s:?}): no devices can be registered"
            )));
        }
        if !channels.contains(&body.channel) {
            return Err(ApiError::invalid(
                "channel",
                format!(
                    "tenant {name:?} does not use channel {:?}: add it to the tenant's channels first",
                    body.channel
                ),
            ));
        }
        let max = api.cache.view().with_tree(|t| {
            t.channel_object(&body.channel)
                .map(|c| c.spec.max_connections)
        });
        let Some(max) = max else {
            return Err(ApiError::invalid(
                "channel",
                format!("channel {:?} does not exist", body.channel),
            ));
        };
        let broker = broker(&api)?;
        let username = match body.auth {
            DeviceAuth::Password => broker_username(&name, &body.id),
            DeviceAuth::Certificate => cert_username(&name, &body.id),
        };
        if username.len() > MAX_USERNAME_LEN {
            return Err(ApiError::invalid(
                "id",
                format!(
                    "{:?} is too long for tenant {name:?}: the broker username {username:?} would exceed {MAX_USERNAME_LEN} bytes",
                    body.id
                ),
            ));
        }
        let cert = match body.auth {
            DeviceAuth::Certificate => Some(issue_cert(&api, &name, &body.id, &username).await?),
            DeviceAuth::Password => None,
        };
        let password = generate_password();
        let account = device_account(
            &name,
            &body.id,
            &body.channel,
            &username,
            password.clone(),
            true,
        );
        let new = NewDevice {
            tenant: name.clone(),
            id: body.id.clone(),
            username: username.clone(),
            channel: body.channel.clone(),
            auth: body.auth,
            labels: body.labels.clone(),
            created_by: caller.token_id.clone(),
            cert: cert.as_ref().map(|c| CertFacts::of(&c.cert)),
        };
        let (rec, ()) = api
            .store
            .register_device(
                &new,
                &chain,
                max,
                async {
                    broker.ensure_client(&account).await.map_err(broker_err)?;
                    Ok(())
                },
                async {
                    if let Err(e) = broker.remove_client(&username, &username).await {
                        tracing::error!(error = %e, username, "could not undo a device client");
                    }
                },
            )
            .await?;
        tracing::info!(tenant = %name, device = %body.id, channel = %body.channel, "device registered");
        let password = (body.auth == DeviceAuth::Password).then_some(password);
        Ok((
            StatusCode::CREATED,
            Json(with_credentials(&rec, password, cert)),
        ))
    })
    .await
}

/// One device.
#[utoipa::path(get, path = "/v1/tenants/{name}/devices/{id}", tag = "devices",
    params(("name" = String, Path, description = "tenant name"), ("id" = String, Path, description = "device id")),
    responses(
        (status = 200, description = "the device", body = DeviceOut),
        (status = 401, description = "no or bad token", body = ErrorBody),
        (status = 403, description = "the role cannot read tenants", body = ErrorBody),
        (status = 404, description = "the tenant is outside the subtree, or no such device", body = ErrorBody),
    ))]
pub async fn get_device(
    State(api): State<AppState>,
    caller: Caller,
    Path((name, id)): Path<(String, String)>,
) -> Result<Json<DeviceOut>, ApiError> {
    caller.require(Permission::TenantsRead)?;
    api.cache
        .view()
        .with_tree(|tree| caller.scope(tree, &name))?;
    if check_id(&id).is_err() {
        // Not an id any device can have.
        return Err(ApiError::not_found("device"));
    }
    match api.store.device(&name, &id).await? {
        Some(r) => Ok(Json(out(&r))),
        None => Err(ApiError::not_found("device")),
    }
}

/// Runs a change on an existing device of a tenant of the caller's subtree.
async fn change<T, F, Fut>(
    api: &Api,
    caller: &Caller,
    name: &str,
    id: &str,
    f: F,
) -> Result<(DeviceRecord, T), ApiError>
where
    F: FnOnce(DeviceRecord) -> Fut,
    Fut: std::future::Future<Output = Result<(DeviceChange, T), ApiError>>,
{
    api.cache
        .view()
        .with_tree(|tree| caller.scope(tree, name))?;
    if check_id(id).is_err() {
        return Err(ApiError::not_found("device"));
    }
    api.store
        .change_device(name, id, f)
        .await?
        .ok_or_else(|| ApiError::not_found("device"))
}

/// Deletes a device: its broker client is deleted first (the broker disconnects it at once).
#[utoipa::path(delete, path = "/v1/tenants/{name}/devices/{id}", tag = "devices",
    params(("name" = String, Path, description = "tenant name"), ("id" = String, Path, description = "device id")),
    responses(
        (status = 204, description = "deleted"),
        (status = 401, description = "no or bad token", body = ErrorBody),
        (status = 403, description = "the role lacks `devices.manage`", body = ErrorBody),
        (status = 404, description = "the tenant is outside the subtree, or no such device", body = ErrorBody),
        (status = 503, description = "the broker is unavailable; nothing was deleted", body = ErrorBody),
    ))]
pub async fn delete_device(
    State(api): State<AppState>,
    caller: Caller,
    Path((name, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    caller.require(Permission::DevicesManage)?;
    api.mutate(&caller, "devices.delete", &format!("{name}/{id}"), async {
        // The broker is needed only for an existing device (a missing one is the 404).
        let broker = broker(&api);
        change(&api, &caller, &name, &id, |rec| async move {
            broker?
                .remove_client(&rec.username, &rec.username)
                .await
                .map_err(broker_err)?;
            Ok((DeviceChange::Delete, ()))
        })
        .await?;
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

async fn set_enabled(
    api: AppState,
    caller: Caller,
    name: String,
    id: String,
    enabled: bool,
) -> Result<Json<DeviceOut>, ApiError> {
    caller.require(Permission::DevicesManage)?;
    let action = if enabled {
        "devices.enable"
    } else {
        "devices.disable"
    };
    api.mutate(&caller, action, &format!("{name}/{id}"), async {
        let broker = broker(&api);
        let reason =
            (!enabled).then(|| format!("disabled through the API by token {}", caller.token_id));
        let api2 = api.clone();
        let (rec, ()) = change(&api, &caller, &name, &id, |rec| async move {
            if enabled {
                let why = api2.cache.view().with_tree(|tree| {
                    tree.get(&rec.tenant)
                        .and_then(|t| super::super::devices::blocked(tree, t, &rec.channel))
                });
                if let Some(why) = why {
                    return Err(ApiError::Denied {
                        code: 409,
                        reason: "DeviceBlocked".into(),
                        message: format!("device {:?} cannot be enabled: {why}", rec.id),
                        field: None,
                    });
                }
            }
            set_device_enabled(&*broker?, &rec, enabled)
                .await
                .map_err(broker_err)?;
            Ok((DeviceChange::Enabled(reason), ()))
        })
        .await?;
        Ok(Json(out(&rec)))
    })
    .await
}

/// Disables a device: the broker disconnects it at once; a password device's logins are
/// refused, a certificate device's client is deleted (it may still complete CONNECT with its
/// certificate, but can publish, subscribe and receive nothing).
#[utoipa::path(post, path = "/v1/tenants/{name}/devices/{id}/disable", tag = "devices",
    params(("name" = String, Path, description = "tenant name"), ("id" = String, Path, description = "device id")),
    responses(
        (status = 200, description = "disabled", body = DeviceOut),
        (status = 401, description = "no or bad token", body = ErrorBody),
        (status = 403, description = "the role lacks `devices.manage`", body = ErrorBody),
        (status = 404, description = "the tenant is outside the subtree, or no such device", body = ErrorBody),
        (status = 503, description = "the broker is unavailable; nothing was changed", body = ErrorBody),
    ))]
pub async fn disable_device(
    State(api): State<AppState>,
    caller: Caller,
    Path((name, id)): Path<(String, String)>,
) -> Result<Json<DeviceOut>, ApiError> {
    set_enabled(api, caller, name, id, false).await
}

/// Enables a disabled device.
#[utoipa::path(post, path = "/v1/tenants/{name}/devices/{id}/enable", tag = "devices",
    params(("name" = String, Path, description = "tenant name"), ("id" = String, Path, description = "device id")),
    responses(
        (status = 200, description = "enabled", body = DeviceOut),
        (status = 401, description = "no or bad token", body = ErrorBody),
        (status = 403, description = "the role lacks `devices.manage`", body = ErrorBody),
        (status = 404, description = "the tenant is outside the subtree, or no such device", body = ErrorBody),
        (status = 409, description = "`DeviceBlocked`: the tenant is suspended, or no longer uses or sees the channel", body = ErrorBody),
        (status = 503, description = "the broker is unavailable; nothing was changed", body = ErrorBody),
    ))]
pub async fn enable_device(
    State(api): State<AppState>,
    caller: Caller,
    Path((name, id)): Path<(String, String)>,
) -> Result<Json<DeviceOut>, ApiError> {
    set_enabled(api, caller, name, id, true).await
}

/// New credentials, shown once: a new password (open connections are ended), or a new
/// certificate and key from the device CA with a new broker username (the old certificate's
/// client is deleted: its connections end and it can publish and subscribe nothing).
#[utoipa::path(post, path = "/v1/tenants/{name}/devices/{id}/rotate-credentials", tag = "devices",
    params(("name" = String, Path, description = "tenant name"), ("id" = String, Path, description = "device id")),
    responses(
        (status = 200, description = "the new credentials, shown this once", body = DeviceCredentials),
        (status = 401, description = "no or bad token", body = ErrorBody),
        (status = 403, description = "the role lacks `devices.manage`", body = ErrorBody),
        (status = 404, description = "the tenant is outside the subtree, or no such device", body = ErrorBody),
        (status = 503, description = "the broker or the tenant CA is unavailable; nothing was changed", body = ErrorBody),
    ))]
pub async fn rotate_credentials(
    State(api): State<AppState>,
    caller: Caller,
    Path((name, id)): Path<(String, String)>,
) -> Result<Json<DeviceCredentials>, ApiError> {
    caller.require(Permission::DevicesManage)?;
    api.mutate(
        &caller,
        "devices.rotate-credentials",
        &format!("{name}/{id}"),
        async {
            let broker = broker(&api);
            let api2 = api.clone();
            let (rec, (password, cert)) = change(&api, &caller, &name, &id, |rec| async move {
                match rec.auth {
                    DeviceAuth::Password => {
                        let pw = generate_password();
                        broker?
                            .set_client_password(&rec.username, &pw, rec.enabled)
                            .await
                            .map_err(broker_err)?;
                        Ok((DeviceChange::Credentials(None, None), (Some(pw), None)))
                    }
                    DeviceAuth::Certificate => {
                        // A new broker identity for the new certificate; the old client goes
                        // (its connections end), so the old certificate, which still chains to
                        // the device CA, no longer maps to any ACL.
                        let user = cert_username(&rec.tenant, &rec.id);
                        if user.len() > MAX_USERNAME_LEN {
                            return Err(ApiError::Unavailable(format!(
                                "cannot rotate: the broker username {user:?} would exceed {MAX_USERNAME_LEN} bytes; delete and register the device again"
                            )));
                        }
                        let c = issue_cert(&api2, &rec.tenant, &rec.id, &user).await?;
                        let broker = broker?;
                        if rec.enabled {
                            broker
                                .ensure_client(&device_account(
                                    &rec.tenant,
                                    &rec.id,
                                    &rec.channel,
                                    &user,
                                    generate_password(),
                                    true,
                                ))
                                .await
                                .map_err(broker_err)?;
                        }
                        broker
                            .remove_client(&rec.username, &rec.username)
                            .await
                            .map_err(broker_err)?;
                        let facts = CertFacts::of(&c.cert);
                        Ok((
                            DeviceChange::Credentials(Some(facts), Some(user)),
                            (None, Some(c)),
                        ))
                    }
                }
            })
            .await?;
            Ok(Json(with_credentials(&rec, password, cert)))
        },
    )
    .await
}
