//! API tokens: minting, the stored form, parsing and verification.
//!
//! A token is `silo_<id>_<secret>`: the `silo_` prefix lets secret scanners recognise it,
//! `<id>` (16 hex digits, public: listed by `GET /v1/tokens`, used to revoke) finds the stored
//! record, `<secret>` is 256 random bits (43 base64url characters). Only SHA-256 of the secret
//! is stored. A plain hash (no salt, no slow KDF) is enough because the secret is uniformly
//! random with 256 bits of entropy: there is no dictionary to try and brute force is out of
//! reach, so a KDF would only slow every request down. The presented hash is compared with the
//! stored one in constant time (`subtle`).

use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The prefix of every token.
pub const TOKEN_PREFIX: &str = "silo_";

/// A freshly minted token: the text is shown once, only `id` and `hash` are kept.
#[derive(Clone)]
pub struct Minted {
    pub id: String,
    /// `silo_<id>_<secret>`.
    pub token: String,
    /// SHA-256 of the secret part.
    pub hash: [u8; 32],
}

impl std::fmt::Debug for Minted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minted").field("id", &self.id).finish()
    }
}

/// Mints a new token from the operating system's CSPRNG.
pub fn mint() -> Minted {
    let mut rng = rand::rng();
    let id = format!("{:016x}", rng.next_u64());
    let mut secret = [0u8; 32];
    rng.fill_bytes(&mut secret);
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
    Minted {
        hash: hash_secret(&secret),
        token: format!("{TOKEN_PREFIX}{id}_{secret}"),
        id,
    }
}

pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// A token as presented: its id and the hash of its secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Presented {
    pub id: String,
    pub hash: [u8; 32],
}

/// Splits `silo_<id>_<secret>`; None when the text cannot be a token.
pub fn parse(token: &str) -> Option<Presented> {
    let rest = token.strip_prefix(TOKEN_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let hex_id = id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit());
    let b64 = secret.len() == 43
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (hex_id && b64).then(|| Presented {
        id: id.to_ascii_lowercase(),
        hash: hash_secret(secret),
    })
}

/// Whether `s` contains something shaped like a token (`silo_` and 16 hex digits): such
/// strings are never written to the audit trail.
pub fn looks_like_token(s: &str) -> bool {
    s.match_indices(TOKEN_PREFIX).any(|(i, _)| {
        let rest = &s.as_bytes()[i + TOKEN_PREFIX.len()..];
        rest.len() >= 16 && rest[..16].iter().all(u8::is_ascii_hexdigit)
    })
}

/// Whether `s` can be a token id (16 hex digits): anything else is never looked up.
pub fn is_token_id(s: &str) -> bool {
    s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Constant-time comparison of a stored hash with a presented one.
pub fn hash_matches(stored: &[u8], presented: &[u8; 32]) -> bool {
    stored.len() == presented.len() && bool::from(stored.ct_eq(presented))
}

/// `30d`, `12h`, `90m`, `3600s` → seconds (at least one minute, at most 366 days).
pub fn parse_duration(text: &str) -> Result<i64, String> {
    let bad = || {
        format!(
            "{text:?} is not a duration: use a number with s, m, h or d (e.g. 30d), between 1m and 366d"
        )
    };
    let t = text.trim();
    let (num, unit) = t.split_at(t.len().saturating_sub(1));
    let n: i64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => n,
        "m" => n.checked_mul(60).ok_or_else(bad)?,
        "h" => n.checked_mul(3600).ok_or_else(bad)?,
        "d" => n.checked_mul(86_400).ok_or_else(bad)?,
        _ => return Err(bad()),
    };
    if !(60..=366 * 86_400).contains(&secs) {
        return Err(bad());
    }
    Ok(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_parse_back_to_their_id_and_hash() {
        let m = mint();
        assert!(m.token.starts_with("silo_"));
        assert_eq!(m.token.len(), 5 + 16 + 1 + 43);
        let p = parse(&m.token).unwrap();
        assert_eq!(p.id, m.id);
        assert!(hash_matches(&m.hash, &p.hash));
        assert_ne!(mint().token, m.token);
        assert!(
            !format!("{m:?}").contains(&m.token),
            "Debug never shows the secret"
        );
    }

    #[test]
    fn anything_else_is_not_a_token() {
        let m = mint();
        for bad in [
            "",
            "silo_",
            "bearer",
            &m.token[1..],
            &m.token[..m.token.len() - 1],
            &m.token.replace('_', "-"),
            "silo_zzzzzzzzzzzzzzzz_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
        let mut other = parse(&m.token).unwrap();
        other.hash[0] ^= 1;
        assert!(!hash_matches(&m.hash, &other.hash));
        assert!(!hash_matches(&m.hash[..31], &other.hash));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30d"), Ok(30 * 86_400));
        assert_eq!(parse_duration("12h"), Ok(12 * 3600));
        assert_eq!(parse_duration("90m"), Ok(5400));
        for bad in [
            "",
            "d",
            "30",
            "30y",
            "-1d",
            "10s",
            "400d",
            "99999999999999999d",
        ] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.contains("is not a duration"), "{bad}: {e}");
        }
    }
}
