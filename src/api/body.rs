//! Request bodies and query strings: JSON only, strict, and every problem named.
//!
//! - not JSON (syntax) → 400 `BadRequest`;
//! - a value of the wrong type, a missing or an unknown field → 422 `Invalid` with `field`
//!   (dotted path, e.g. `limits.devices`);
//! - over `api.maxBodyBytes` → 413 (axum's body limit, mapped here).

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::errors::ApiError;

/// A JSON body deserialized strictly into `T`.
pub struct JsonBody<T>(pub T);

/// The raw JSON value of a body (PATCH: a JSON merge patch).
pub struct JsonValue(pub serde_json::Value);

async fn read_bytes<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    let limit = req.extensions().get::<BodyLimit>().map_or(65536, |l| l.0);
    Bytes::from_request(req, state).await.map_err(|e| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(limit)
        } else {
            ApiError::BadRequest {
                message: format!("cannot read the request body: {e}"),
                field: None,
            }
        }
    })
}

/// The configured body limit, put into each request's extensions by the server (so the 413
/// message can state it).
#[derive(Clone, Copy, Debug)]
pub struct BodyLimit(pub u32);

/// Parses JSON text into a value (400 when it is not JSON).
pub fn parse_value(bytes: &[u8]) -> Result<serde_json::Value, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::BadRequest {
            message: "the request body is empty: a JSON object is expected".into(),
            field: None,
        });
    }
    serde_json::from_slice(bytes).map_err(|e| ApiError::BadRequest {
        message: format!("the request body is not valid JSON: {e}"),
        field: None,
    })
}

/// Deserializes `value` into `T`, naming the field of a wrong, missing or unknown value.
pub fn from_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, ApiError> {
    if !value.is_object() {
        return Err(ApiError::invalid(
            "-",
            format!("a JSON object is expected, not {}", kind_of(&value)),
        ));
    }
    // Unknown fields first (a misspelt optional field would otherwise pass silently).
    let mut unknown: Option<String> = None;
    let probe = serde_ignored::deserialize(&value, |path| {
        if unknown.is_none() {
            // serde_ignored marks `Option` levels with `?`: not part of the field's name.
            let p = path.to_string();
            unknown = Some(
                p.split('.')
                    .filter(|s| *s != "?")
                    .collect::<Vec<_>>()
                    .join("."),
            );
        }
    });
    let _: Result<T, _> = probe;
    if let Some(path) = unknown {
        return Err(ApiError::invalid(
            path.clone(),
            format!("unknown field {path:?}"),
        ));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let field = if path == "." { "-".to_string() } else { path };
        // serde names a missing field in the message: use it as the field.
        let field = match (field.as_str(), missing_field(&inner)) {
            ("-", Some(m)) => m,
            (f, Some(m)) => format!("{f}.{m}"),
            _ => field,
        };
        ApiError::invalid(field, inner)
    })
}

fn missing_field(msg: &str) -> Option<String> {
    let rest = msg.strip_prefix("missing field `")?;
    Some(rest.split('`').next()?.to_string())
}

fn kind_of(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = read_bytes(req, state).await?;
        from_value(parse_value(&bytes)?).map(JsonBody)
    }
}

impl<S: Send + Sync> FromRequest<S> for JsonValue {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = read_bytes(req, state).await?;
        parse_value(&bytes).map(JsonValue)
    }
}

/// A query string deserialized strictly into `T` (400 naming the parameter).
pub struct QueryOf<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryOf<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|q| QueryOf(q.0))
            .map_err(|e| ApiError::BadRequest {
                message: format!("invalid query string: {}", e.body_text()),
                field: None,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    #[allow(dead_code)]
    struct Inner {
        devices: Option<i64>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        #[serde(default)]
        limits: Option<Inner>,
    }

    fn err(v: serde_json::Value) -> (Option<String>, String) {
        let b = from_value::<Body>(v).unwrap_err().body();
        (b.field, b.message)
    }

    #[test]
    fn fields_at_fault_are_named() {
        assert_eq!(
            err(serde_json::json!({"name": "x", "limits": {"devices": "many"}})).0,
            Some("limits.devices".into())
        );
        assert_eq!(
            err(serde_json::json!({"name": "x", "limits": {"devicez": 1}})),
            (
                Some("limits.devicez".into()),
                "unknown field \"limits.devicez\"".into()
            )
        );
        assert_eq!(err(serde_json::json!({})).0, Some("name".into()));
        assert_eq!(err(serde_json::json!([1])).0, Some("-".into()));
        assert!(from_value::<Body>(serde_json::json!({"name": "x"})).is_ok());
    }

    #[test]
    fn non_json_is_a_bad_request() {
        for b in [&b""[..], b"  ", b"{", b"nope"] {
            let e = parse_value(b).unwrap_err();
            assert_eq!(e.status(), axum::http::StatusCode::BAD_REQUEST);
        }
    }
}
