//! A device's names: its id and labels (checked, with the 422 naming the field), its broker
//! username (password and certificate devices) and the one topic prefix it may use.

use std::collections::BTreeMap;

use crate::api::errors::ApiError;
use crate::backends::CHANNEL_ROOT;

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

/// The device's own topic prefix: `channels/<channel>/<tenant>/devices/<id>/`.
pub fn device_prefix(channel: &str, tenant: &str, id: &str) -> String {
    format!("{CHANNEL_ROOT}/{channel}/{tenant}/devices/{id}/")
}

/// The one topic filter the device's role allows: [`device_prefix`] + `#`.
pub fn device_topic(channel: &str, tenant: &str, id: &str) -> String {
    format!("{}#", device_prefix(channel, tenant, id))
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
}
