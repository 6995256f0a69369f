//! `/v1/channels`: master channels visible to the caller (owned in its subtree, or visible to
//! its tenant) and creating one owned by a tenant of the subtree.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use crate::hierarchy::ObjectKind;
use crate::hierarchy::roles::Permission;
use crate::types::channel::ChannelProtocol;
use crate::types::{Channel, ChannelSpec, ChannelStatus, Visibility};
use crate::webhook::Proposal;

use super::super::authz::Caller;
use super::super::body::{JsonBody, QueryOf};
use super::super::errors::{ApiError, ErrorBody};
use super::super::server::AppState;
use super::tenants::rules::channel_visible;
use super::{List, Page, paginate};

/// A Channel: `{name, spec, status}`.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChannelOut {
    pub name: String,
    pub spec: ChannelSpec,
    pub status: ChannelStatus,
}

impl From<&Channel> for ChannelOut {
    fn from(c: &Channel) -> Self {
        ChannelOut {
            name: c.name().to_string(),
            spec: c.spec.clone(),
            status: c.status.clone().unwrap_or_default(),
        }
    }
}

/// `POST /v1/channels` body.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ChannelCreate {
    pub name: String,
    /// Owning tenant (default: the caller's).
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub protocol: ChannelProtocol,
    #[serde(default)]
    pub max_connections: Option<i64>,
    /// Subtrees (inside the owner's) that may use it; absent = the owner's whole subtree.
    #[serde(default)]
    pub visibility: Option<Visibility>,
}

/// Channels visible to the caller, by name.
#[utoipa::path(get, path = "/v1/channels", tag = "channels",
    params(Page),
    responses(
        (status = 200, description = "channels", body = List<ChannelOut>),
        (status = 400, description = "bad query", body = ErrorBody),
        (status = 401, description = "no or bad token", body = ErrorBody),
        (status = 403, description = "the role cannot read tenants", body = ErrorBody),
    ))]
pub async fn list_channels(
    State(api): State<AppState>,
    caller: Caller,
    QueryOf(page): QueryOf<Page>,
) -> Result<Json<List<ChannelOut>>, ApiError> {
    caller.require(Permission::TenantsRead)?;
    let (limit, after) = page.parse()?;
    let counts = api.store.channel_device_counts().await?;
    let out = api.cache.view().with_tree(|tree| {
        let home = caller.home(tree)?;
        let mut all: Vec<ChannelOut> = tree
            .inventory()
            .channels
            .iter()
            .filter(|c| channel_visible(tree, &caller, home, c.name()))
            .map(ChannelOut::from)
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        let (items, next) = paginate(all, |c| c.name.as_str(), limit, after.as_deref());
        Ok::<_, ApiError>(List { items, next })
    })?;
    Ok(Json(List {
        next: out.next,
        items: out
            .items
            .into_iter()
            .map(|c| with_registry(c, &counts))
            .collect(),
    }))
}

/// `status.registeredDevices` from the device registry (0 when none).
fn with_registry(
    mut c: ChannelOut,
    counts: &std::collections::BTreeMap<String, (i64, Vec<String>)>,
) -> ChannelOut {
    c.status.registered_devices = Some(counts.get(&c.name).map_or(0, |(n, _)| *n));
    c
}

/// One channel visible to the caller.
#[utoipa::path(get, path = "/v1/channels/{name}", tag = "channels",
    params(("name" = String, Path, description = "channel name")),
    responses(
        (status = 200, description = "the channel", body = ChannelOut),
        (status = 401, description = "no or bad token", body = ErrorBody),
        (status = 403, description = "the role cannot read tenants", body = ErrorBody),
        (status = 404, description = "not visible to the caller, or missing", body = ErrorBody),
    ))]
pub async fn get_channel(
    State(api): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<ChannelOut>, ApiError> {
    caller.require(Permission::TenantsRead)?;
    let c = api.cache.view().with_tree(|tree| {
        let home = caller.home(tree)?;
        match tree.channel_object(&name) {
            Some(c) if channel_visible(tree, &caller, home, &name) => Ok(ChannelOut::from(c)),
            _ => Err(ApiError::not_found("channel")),
        }
    })?;
    let counts = api.store.channel_device_counts().await?;
    Ok(Json(with_registry(c, &counts)))
}

/// Creates a channel owned by a tenant of the subtree (counts against `channels`).
#[utoipa::path(post, path = "/v1/channels", tag = "channels",
    request_body = ChannelCreate,
    responses(
        (status = 201, description = "created", body = ChannelOut),
        (status = 400, description = "not JSON", body = ErrorBody),
        (status = 401, description = "no or bad token", body = ErrorBody),
        (status = 403, description = "the role lacks `channels.manage`, the owner is suspended, or its `channels` limit is reached", body = ErrorBody),
        (status = 404, description = "`owner` or a visibility subtree outside the caller's subtree or missing", body = ErrorBody),
        (status = 409, description = "the name is taken", body = ErrorBody),
        (status = 422, description = "an invalid value; `field` names it", body = ErrorBody),
        (status = 429, description = "too many requests", body = ErrorBody),
    ))]
pub async fn create_channel(
    State(api): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<ChannelCreate>,
) -> Result<(StatusCode, Json<ChannelOut>), ApiError> {
    caller.require(Permission::ChannelsManage)?;
    let name = body.name.clone();
    api.mutate(&caller, "channels.create", &name, async {
        let owner = body.owner.clone().unwrap_or_else(|| caller.tenant.clone());
        api.cache.view().with_tree(|tree| {
            caller.scope(tree, &owner)?;
            for s in body.visibility.iter().flat_map(|v| &v.subtrees) {
                caller.scope(tree, s)?;
            }
            Ok::<_, ApiError>(())
        })?;
        if !crate::config::is_dns_label(&body.name) {
            return Err(ApiError::invalid(
                "name",
                format!("{:?} must be lower-case letters, digits and '-'", body.name),
            ));
        }
        if let Some(m) = body.max_connections
            && m < 0
        {
            return Err(ApiError::invalid(
                "maxConnections",
                format!("{m} is not allowed: it must be 0 or more"),
            ));
        }
        if api
            .cache
            .view()
            .with_tree(|t| t.channel_object(&body.name).is_some())
        {
            return Err(ApiError::Conflict {
                reason: "AlreadyExists",
                message: format!(
                    "Channel {:?} already exists (names are unique in the cluster)",
                    body.name
                ),
            });
        }
        let channel = Channel::new(
            &body.name,
            ChannelSpec {
                owner: owner.clone(),
                protocol: body.protocol,
                max_connections: body.max_connections,
                visibility: body.visibility.clone(),
            },
        );
        let proposal = Proposal::CreateChannel(channel.clone());
        api.cache
            .view()
            .decide(&proposal, false)
            .map_err(|d| ApiError::from_denials(&d))?;
        let record = serde_json::to_value(&channel).unwrap_or_default();
        let created = api
            .store
            .with_creation_lock("Channel", &owner, &name, |pending| async {
                for p in pending {
                    if api
                        .cache
                        .view()
                        .with_tree(|t| t.channel_object(&p.name).is_some())
                    {
                        continue;
                    }
                    if let Ok(c) = serde_json::from_value::<Channel>(p.object) {
                        let _ = api.cache.view().decide(&Proposal::CreateChannel(c), true);
                    }
                }
                api.cache
                    .view()
                    .decide(&proposal, true)
                    .map_err(|d| ApiError::from_denials(&d))?;
                match api.cluster.create_channel(channel.clone()).await {
                    Ok(c) => Ok((c, Some(record))),
                    Err(e) => {
                        api.cache
                            .view()
                            .cancel_reservation(ObjectKind::Channel, &name);
                        Err(e.into())
                    }
                }
            })
            .await?;
        Ok((StatusCode::CREATED, Json(ChannelOut::from(&created))))
    })
    .await
}
