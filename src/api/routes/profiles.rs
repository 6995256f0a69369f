//! `/v1/limit-profiles`: LimitProfiles usable by the caller (owned by a tenant of its subtree
//! or above its tenant) and creating one owned by a tenant of the subtree.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use crate::hierarchy::roles::Permission;
use crate::types::profile::LimitProfileStatus;
use crate::types::{LimitProfile, LimitProfileSpec, Limits};
use crate::webhook::Proposal;

use super::super::authz::Caller;
use super::super::body::{JsonBody, QueryOf};
use super::super::errors::{ApiError, ErrorBody};
use super::super::server::AppState;
use super::tenants::rules::profile_visible;
use super::{List, Page, paginate};

/// A LimitProfile: `{name, spec, status}`.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProfileOut {
    pub name: String,
    pub spec: LimitProfileSpec,
    pub status: LimitProfileStatus,
}

impl From<&LimitProfile> for ProfileOut {
    fn from(p: &LimitProfile) -> Self {
        ProfileOut {
            name: p.name().to_string(),
            spec: p.spec.clone(),
            status: p.status.clone().unwrap_or_default(),
        }
    }
}

/// `POST /v1/limit-profiles` body.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileCreate {
    pub name: String,
    /// Owning tenant (default: the caller's); the profile is usable strictly below it.
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub limits: Limits,
}

/// Profiles usable in the caller's subtree, by name.
#[utoipa::path(get, path = "/v1/limit-profiles", tag = "limit-profiles",
    params(Page),
    responses(
        (status = 200, description = "profiles", body = List<ProfileOut>),
        (status = 400, description = "bad query", body = ErrorBody),
        (status = 401, description = "no or bad token", body = ErrorBody),
        (status = 403, description = "the role cannot read tenants", body = ErrorBody),
    ))]
pub async fn list_profiles(
    State(api): State<AppState>,
    caller: Caller,
    QueryOf(page): QueryOf<Page>,
) -> Result<Json<List<ProfileOut>>, ApiError> {
    caller.require(Permission::TenantsRead)?;
    let (limit, after) = page.parse()?;
    api.cache.view().with_tree(|tree| {
        let home = caller.home(tree)?;
        let mut all: Vec<ProfileOut> = tree
            .inventory()
            .profiles
            .iter()
            .filter(|p| profile_visible(tree, &caller, home, p.name()))
            .map(ProfileOut::from)
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        let (items, next) = paginate(all, |p| p.name.as_str(), limit, after.as_deref());
        Ok(Json(List { items, next }))
    })
}

/// One profile usable by the caller.
#[utoipa::path(get, path = "/v1/limit-profiles/{name}", tag = "limit-profiles",
    params(("name" = String, Path, description = "profile name")),
    responses(
        (status = 200, description = "the profile", body = ProfileOut),
        (status = 401, description = "no or bad token", body = ErrorBody),
        (status = 403, description = "the role cannot read tenants", body = ErrorBody),
        (status = 404, description = "not usable by the caller, or missing", body = ErrorBody),
    ))]
pub async fn get_profile(
    State(api): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<ProfileOut>, ApiError> {
    caller.require(Permission::TenantsRead)?;
    api.cache.view().with_tree(|tree| {
        let home = caller.home(tree)?;
        match tree.profile(&name) {
            Some(p) if profile_visible(tree, &caller, home, &name) => Ok(Json(ProfileOut::from(p))),
            _ => Err(ApiError::not_found("limit profile")),
        }
    })
}

/// Creates a profile owned by a tenant of the subtree.
#[utoipa::path(post, path = "/v1/limit-profiles", tag = "limit-profiles",
    request_body = ProfileCreate,
    responses(
        (status = 201, description = "created", body = ProfileOut),
        (status = 400, description = "not JSON", body = ErrorBody),
        (status = 401, description = "no or bad token", body = ErrorBody),
        (status = 403, description = "the role lacks `profiles.manage`, or the owner is suspended", body = ErrorBody),
        (status = 404, description = "`owner` outside the subtree or missing", body = ErrorBody),
        (status = 409, description = "the name is taken", body = ErrorBody),
        (status = 422, description = "an invalid value; `field` names it", body = ErrorBody),
        (status = 429, description = "too many requests", body = ErrorBody),
    ))]
pub async fn create_profile(
    State(api): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<ProfileCreate>,
) -> Result<(StatusCode, Json<ProfileOut>), ApiError> {
    caller.require(Permission::ProfilesManage)?;
    let name = body.name.clone();
    api.mutate(&caller, "limit-profiles.create", &name, async {
        let owner = body.owner.clone().unwrap_or_else(|| caller.tenant.clone());
        api.cache
            .view()
            .with_tree(|tree| caller.scope(tree, &owner).map(|_| ()))?;
        if !crate::config::is_dns_label(&body.name) {
            return Err(ApiError::invalid(
                "name",
                format!("{:?} must be lower-case letters, digits and '-'", body.name),
            ));
        }
        let p = LimitProfile::new(
            &body.name,
            LimitProfileSpec {
                owner,
                limits: body.limits.clone(),
            },
        );
        if api
            .cache
            .view()
            .with_tree(|t| t.profile(&body.name).is_some())
        {
            return Err(ApiError::Conflict {
                reason: "AlreadyExists",
                message: format!(
                    "LimitProfile {:?} already exists (names are unique in the cluster)",
                    body.name
                ),
            });
        }
        api.cache
            .view()
            .decide(&Proposal::CreateProfile(p.clone()), false)
            .map_err(|d| ApiError::from_denials(&d))?;
        let created = api.cluster.create_profile(p).await?;
        Ok((StatusCode::CREATED, Json(ProfileOut::from(&created))))
    })
    .await
}
