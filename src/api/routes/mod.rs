//! The `/v1` endpoints (SPEC "REST API"), one module per resource. Each handler is annotated
//! with `#[utoipa::path]`; [`router`] registers them with `utoipa_axum::routes!`, so the
//! OpenAPI document and the router come from the same list.

pub mod audit;
pub mod channels;
pub mod devices;
pub mod members;
pub mod profiles;
pub mod requests;
pub mod roles;
pub mod tenants;
pub mod tokens;

use base64::Engine;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::errors::ApiError;
use super::server::AppState;

/// Every `/v1` route.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(
            tenants::read::list_tenants,
            tenants::write::create_tenant
        ))
        .routes(routes!(
            tenants::read::get_tenant,
            tenants::write::patch_tenant,
            tenants::write::delete_tenant
        ))
        .routes(routes!(tenants::read::tenant_tree))
        .routes(routes!(tenants::read::tenant_usage))
        .routes(routes!(tenants::write::suspend_tenant))
        .routes(routes!(tenants::write::resume_tenant))
        .routes(routes!(tenants::write::rotate_key))
        .routes(routes!(
            members::list_members,
            members::add_member,
            members::remove_member_query
        ))
        .routes(routes!(members::remove_member))
        .routes(routes!(roles::list_roles, roles::create_role))
        .routes(routes!(roles::delete_role))
        .routes(routes!(
            tokens::list_tokens,
            tokens::create_token,
            tokens::revoke_token_query
        ))
        .routes(routes!(tokens::revoke_token))
        .routes(routes!(profiles::list_profiles, profiles::create_profile))
        .routes(routes!(profiles::get_profile))
        .routes(routes!(channels::list_channels, channels::create_channel))
        .routes(routes!(channels::get_channel))
        .routes(routes!(audit::tenant_audit))
        .routes(routes!(requests::list_requests, requests::create_request))
        .routes(routes!(requests::get_request))
        .routes(routes!(requests::approve_request))
        .routes(routes!(requests::decline_request))
        .routes(routes!(devices::list_devices, devices::register_device))
        .routes(routes!(devices::get_device, devices::delete_device))
        .routes(routes!(devices::disable_device))
        .routes(routes!(devices::enable_device))
        .routes(routes!(devices::rotate_credentials))
}

/// Largest page.
pub const MAX_LIMIT: u32 = 1000;
/// Page size when `limit` is not given.
pub const DEFAULT_LIMIT: u32 = 100;

/// `limit` and `cursor` of a list request.
#[derive(Clone, Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Page {
    /// Page size (1…1000, default 100).
    pub limit: Option<u32>,
    /// `next` of the previous page.
    pub cursor: Option<String>,
}

impl Page {
    /// The page size and the last key of the previous page.
    pub fn parse(&self) -> Result<(usize, Option<String>), ApiError> {
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(ApiError::BadRequest {
                message: format!("limit {limit} is out of range 1..={MAX_LIMIT}"),
                field: Some("limit".into()),
            });
        }
        let after = match &self.cursor {
            None => None,
            Some(c) => Some(decode_cursor(c).ok_or_else(|| {
                ApiError::BadRequest {
                    message:
                        "cursor is not a cursor returned by this API (pass `next` back unchanged)"
                            .into(),
                    field: Some("cursor".into()),
                }
            })?),
        };
        Ok((limit as usize, after))
    }
}

/// An opaque cursor for the last key of a page.
pub fn encode_cursor(key: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("k:{key}"))
}

fn decode_cursor(c: &str) -> Option<String> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(c)
        .ok()?;
    String::from_utf8(bytes)
        .ok()?
        .strip_prefix("k:")
        .map(String::from)
}

/// Keys sorted ascending → the page after `after` and the cursor of the next page.
pub fn paginate<T>(
    sorted: Vec<T>,
    key: impl Fn(&T) -> &str,
    limit: usize,
    after: Option<&str>,
) -> (Vec<T>, Option<String>) {
    let mut page: Vec<T> = sorted
        .into_iter()
        .filter(|x| after.is_none_or(|a| key(x) > a))
        .take(limit + 1)
        .collect();
    let next = if page.len() > limit {
        page.truncate(limit);
        page.last().map(|x| encode_cursor(key(x)))
    } else {
        None
    };
    (page, next)
}

/// A list answer: `{items, next}` (SPEC "Shapes").
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct List<T> {
    pub items: Vec<T>,
    /// Cursor of the next page (pass as `?cursor=`); null on the last page.
    pub next: Option<String>,
}

/// Unix seconds → RFC 3339 (UTC).
pub fn rfc3339(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| secs.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_follow_each_other_and_cursors_are_checked() {
        let names: Vec<String> = (0..5).map(|i| format!("t{i}")).collect();
        let (p1, next) = paginate(names.clone(), |s| s.as_str(), 2, None);
        assert_eq!(p1, ["t0", "t1"]);
        let after = Page {
            limit: Some(2),
            cursor: next,
        }
        .parse()
        .unwrap()
        .1;
        let (p2, next) = paginate(names.clone(), |s| s.as_str(), 2, after.as_deref());
        assert_eq!(p2, ["t2", "t3"]);
        let after = decode_cursor(&next.unwrap());
        let (p3, next) = paginate(names, |s| s.as_str(), 2, after.as_deref());
        assert_eq!((p3, next), (vec!["t4".to_string()], None));
        for bad in [Some(0), Some(1001)] {
            let e = Page {
                limit: bad,
                cursor: None,
            }
            .parse()
            .unwrap_err();
            assert_eq!(e.body().field.as_deref(), Some("limit"));
        }
        let e = Page {
            limit: None,
            cursor: Some("!!".into()),
        }
        .parse()
        .unwrap_err();
        assert_eq!(e.body().field.as_deref(), Some("cursor"));
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    }
}
