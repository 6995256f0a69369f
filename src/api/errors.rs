//! Errors of the REST API: one JSON shape, `{error, message, field?}`, with the status code
//! that says what went wrong (SPEC "REST API": "Errors are JSON `{error, message}` with the
//! right status code; invalid bodies get 400/422 naming the field").
//!
//! | status | `error` | when |
//! | --- | --- | --- |
//! | 400 | `BadRequest` | body is not JSON, bad query string |
//! | 401 | `Unauthorized` | no token, unknown, revoked or expired token |
//! | 403 | `Forbidden` / `Suspended` / an admission reason | the role lacks a permission, the caller's tenant is suspended, the tree's state forbids it (`LimitExceeded`, `HasChildren`, …) |
//! | 404 | `NotFound` | outside the caller's subtree or missing: one body for both |
//! | 409 | `Conflict` / `AlreadyExists` | name taken, or the object changed since it was read |
//! | 413 | `PayloadTooLarge` | body over `api.maxBodyBytes` |
//! | 422 | `Invalid` / an admission reason | a value is invalid; `field` names it (`limits.devices`) |
//! | 429 | `TooManyRequests` | the token's rate is exceeded; `Retry-After` says when to retry |
//! | 503 | `Unavailable` | PostgreSQL or the Kubernetes API server cannot be reached |

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::hierarchy::roles::Permission;
use crate::webhook::Denial;

/// The error body of every non-2xx answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Machine-readable reason, e.g. `NotFound`, `Invalid`, `LimitExceeded`.
    pub error: String,
    /// What went wrong, for people.
    pub message: String,
    /// The request field at fault (dotted path in the request body, e.g. `limits.devices`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// Why a request failed. Variants are stable names (metric label `error`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest {
        message: String,
        field: Option<String>,
    },
    #[error("{message}")]
    Invalid { message: String, field: String },
    #[error("{0}")]
    Unauthorized(String),
    /// The caller's role lacks `permission` (inside its subtree). The requested-actions issue
    /// turns this into a 202 for callers holding `requests.create` (see `server::mutate`).
    #[error("{message}")]
    Forbidden {
        message: String,
        permission: Option<Permission>,
    },
    /// The caller's tenant (or an ancestor) is suspended: reads only.
    #[error("{0}")]
    Suspended(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{message}")]
    Conflict {
        reason: &'static str,
        message: String,
    },
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(u32),
    #[error("too many requests for this token: retry after {0} s")]
    TooManyRequests(u64),
    /// Refused by the admission rules (the webhook's own decision, or passed back from the API
    /// server): the webhook's status code, reason and message.
    #[error("{message}")]
    Denied {
        code: u16,
        reason: String,
        message: String,
        field: Option<String>,
    },
    #[error("{0}")]
    Unavailable(String),
}

impl ApiError {
    /// The one body for anything outside the caller's subtree or missing: the same bytes
    /// whether the object exists elsewhere or not at all (the name is not repeated either, so
    /// bodies can be compared byte for byte).
    pub fn not_found(kind: &str) -> ApiError {
        ApiError::NotFound(format!("{kind} not found in this token's subtree"))
    }

    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    /// A refusal by the admission rules, with the webhook's message (`Kind/name: field:
    /// reason; …`) and the first denial's field translated to the request's field name.
    pub fn from_denials(denials: &[Denial]) -> ApiError {
        let first = denials.first();
        let reason = first.map_or(crate::webhook::DenialReason::MalformedObject, |d| d.reason);
        ApiError::Denied {
            code: reason.code(),
            reason: reason.as_str().to_string(),
            message: crate::webhook::denial::join(denials),
            field: first.map(|d| request_field(&d.field)),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden { .. } | ApiError::Suspended(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Denied { code, .. } => match StatusCode::from_u16(*code) {
                Ok(s) if s.is_client_error() => s,
                _ => StatusCode::UNPROCESSABLE_ENTITY,
            },
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The `error` field.
    pub fn reason(&self) -> &str {
        match self {
            ApiError::BadRequest { .. } => "BadRequest",
            ApiError::Invalid { .. } => "Invalid",
            ApiError::Unauthorized(_) => "Unauthorized",
            ApiError::Forbidden { .. } => "Forbidden",
            ApiError::Suspended(_) => "Suspended",
            ApiError::NotFound(_) => "NotFound",
            ApiError::Conflict { reason, .. } => reason,
            ApiError::PayloadTooLarge(_) => "PayloadTooLarge",
            ApiError::TooManyRequests(_) => "TooManyRequests",
            ApiError::Denied { reason, .. } => reason,
            ApiError::Unavailable(_) => "Unavailable",
        }
    }

    pub fn body(&self) -> ErrorBody {
        let field = match self {
            ApiError::BadRequest { field, .. } | ApiError::Denied { field, .. } => field.clone(),
            ApiError::Invalid { field, .. } => Some(field.clone()),
            _ => None,
        };
        ErrorBody {
            error: self.reason().to_string(),
            message: self.to_string(),
            field,
        }
    }
}

/// `spec.limits.devices` → `limits.devices`, `metadata.name` → `name`: the webhook names the
/// object's field, the API the request body's.
pub fn request_field(object_field: &str) -> String {
    if let Some(rest) = object_field.strip_prefix("spec.") {
        rest.to_string()
    } else if object_field == "metadata.name" {
        "name".to_string()
    } else {
        object_field.to_string()
    }
}

/// What an error response carries for the audit layer (`api::audit_layer`): the reason and
/// message for the record, and the missing permission (a requested action may replace the
/// refusal).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub reason: String,
    pub message: String,
    pub permission: Option<Permission>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = self.body();
        let refusal = Refusal {
            reason: body.error.clone(),
            message: body.message.clone(),
            permission: match &self {
                ApiError::Forbidden { permission, .. } => *permission,
                _ => None,
            },
        };
        let mut resp = (status, axum::Json(body)).into_response();
        resp.extensions_mut().insert(refusal);
        if let ApiError::TooManyRequests(secs) = self
            && let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hierarchy::ObjectKind;
    use crate::webhook::DenialReason;

    #[test]
    fn denials_keep_the_webhook_message_and_name_the_request_field() {
        let d = Denial::new(
            ObjectKind::Tenant,
            "x",
            "spec.limits.devices",
            DenialReason::InvalidLimit,
            "-5 is not allowed",
        );
        let e = ApiError::from_denials(std::slice::from_ref(&d));
        assert_eq!(e.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            e.body(),
            ErrorBody {
                error: "InvalidLimit".into(),
                message: d.to_string(),
                field: Some("limits.devices".into())
            }
        );
        assert_eq!(request_field("metadata.name"), "name");
        assert_eq!(request_field("status.x"), "status.x");
    }

    #[test]
    fn too_many_requests_says_when_to_retry() {
        let r = ApiError::TooManyRequests(3).into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "3");
        // A status the webhook should never send still ends as a client error.
        let e = ApiError::Denied {
            code: 500,
            reason: "X".into(),
            message: "m".into(),
            field: None,
        };
        assert_eq!(e.status(), StatusCode::UNPROCESSABLE_ENTITY);
    }
}
