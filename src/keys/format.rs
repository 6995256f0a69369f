//! Ciphertext layouts shared by the providers. Every ciphertext starts with a format byte:
//!
//! | format | layout |
//! | --- | --- |
//! | `0x01` local | `01 ‖ version u32 BE ‖ key id (8 bytes) ‖ nonce (12) ‖ AES-256-GCM ciphertext+tag` |
//! | `0x02` aws-kms | `02 ‖ key id length u8 ‖ key id (ASCII) ‖ KMS CiphertextBlob` |
//! | `0x03` envelope | `03 ‖ wrapped key length u16 BE ‖ wrapped data key ‖ nonce (12) ‖ ciphertext+tag` |
//!
//! For the AES-GCM formats the AAD is the header (everything before the nonce) followed by the
//! length-prefixed tenant and purpose, so neither header nor context can be swapped.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};

use super::{KeyContext, KeyError};

pub const FORMAT_LOCAL: u8 = 0x01;
pub const FORMAT_KMS: u8 = 0x02;
pub const FORMAT_ENVELOPE: u8 = 0x03;
pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;
pub const LOCAL_HEADER_LEN: usize = 1 + 4 + 8;

fn aad(header: &[u8], ctx: &KeyContext) -> Vec<u8> {
    let mut a = Vec::with_capacity(header.len() + 16 + ctx.tenant.len() + ctx.purpose.len());
    a.extend_from_slice(header);
    a.extend_from_slice(b"silo/ctx/v1");
    for part in [&ctx.tenant, &ctx.purpose] {
        // Both are validated to at most 64 bytes, so u16 cannot overflow.
        a.extend_from_slice(&(part.len() as u16).to_be_bytes());
        a.extend_from_slice(part.as_bytes());
    }
    a
}

pub fn cipher(key: &[u8; 32]) -> Aes256Gcm {
    Aes256Gcm::new(key.into())
}

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::fill(&mut b);
    b
}

/// `header ‖ nonce ‖ AES-256-GCM(plaintext, aad = header ‖ ctx)` with a random nonce.
pub fn seal(
    cipher: &Aes256Gcm,
    header: &[u8],
    ctx: &KeyContext,
    plaintext: &[u8],
) -> Result<Vec<u8>, KeyError> {
    let nonce: [u8; NONCE_LEN] = random_bytes();
    let aad = aad(header, ctx);
    let ct = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad: &aad,
            },
        )
        .map_err(|_| KeyError::Keyring("AES-GCM encryption failed".into()))?;
    let mut out = Vec::with_capacity(header.len() + NONCE_LEN + ct.len());
    out.extend_from_slice(header);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Opens what [`seal`] produced; `header_len` says where the nonce starts.
pub fn open(
    cipher: &Aes256Gcm,
    sealed: &[u8],
    header_len: usize,
    ctx: &KeyContext,
) -> Result<Vec<u8>, KeyError> {
    if sealed.len() < header_len + NONCE_LEN + TAG_LEN {
        return Err(KeyError::Malformed(format!(
            "{} bytes is shorter than header, nonce and tag ({} bytes)",
            sealed.len(),
            header_len + NONCE_LEN + TAG_LEN
        )));
    }
    let (header, rest) = sealed.split_at(header_len);
    let (nonce, ct) = rest.split_at(NONCE_LEN);
    let aad = aad(header, ctx);
    cipher
        .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad: &aad })
        .map_err(|_| KeyError::DecryptFailed {
            tenant: ctx.tenant.clone(),
            purpose: ctx.purpose.clone(),
        })
}

/// Parsed header of a local-provider ciphertext.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalHeader {
    pub version: u32,
    pub key_id: [u8; 8],
}

impl LocalHeader {
    pub fn encode(&self) -> [u8; LOCAL_HEADER_LEN] {
        let mut h = [0u8; LOCAL_HEADER_LEN];
        h[0] = FORMAT_LOCAL;
        h[1..5].copy_from_slice(&self.version.to_be_bytes());
        h[5..13].copy_from_slice(&self.key_id);
        h
    }

    pub fn parse(ct: &[u8]) -> Result<Self, KeyError> {
        let Some(&format) = ct.first() else {
            return Err(KeyError::Malformed("empty ciphertext".into()));
        };
        if format != FORMAT_LOCAL {
            return Err(KeyError::Malformed(format!(
                "format byte {format:#04x} is not a local-provider ciphertext ({FORMAT_LOCAL:#04x})"
            )));
        }
        if ct.len() < LOCAL_HEADER_LEN + NONCE_LEN + TAG_LEN {
            return Err(KeyError::Malformed(format!(
                "{} bytes is too short for a local-provider ciphertext",
                ct.len()
            )));
        }
        let mut v = [0u8; 4];
        v.copy_from_slice(&ct[1..5]);
        let mut key_id = [0u8; 8];
        key_id.copy_from_slice(&ct[5..13]);
        Ok(Self {
            version: u32::from_be_bytes(v),
            key_id,
        })
    }
}

/// `02 ‖ len ‖ key id ‖ blob`.
pub fn encode_kms(key_id: &str, blob: &[u8]) -> Result<Vec<u8>, KeyError> {
    let len = u8::try_from(key_id.len())
        .map_err(|_| KeyError::Malformed(format!("KMS key id {key_id:?} is too long")))?;
    let mut out = Vec::with_capacity(2 + key_id.len() + blob.len());
    out.push(FORMAT_KMS);
    out.push(len);
    out.extend_from_slice(key_id.as_bytes());
    out.extend_from_slice(blob);
    Ok(out)
}

/// Splits a KMS-provider ciphertext into key id and KMS blob.
pub fn decode_kms(ct: &[u8]) -> Result<(&str, &[u8]), KeyError> {
    match ct.first() {
        None => return Err(KeyError::Malformed("empty ciphertext".into())),
        Some(&FORMAT_KMS) => {}
        Some(&f) => {
            return Err(KeyError::Malformed(format!(
                "format byte {f:#04x} is not an aws-kms ciphertext ({FORMAT_KMS:#04x})"
            )));
        }
    }
    let len = *ct
        .get(1)
        .ok_or_else(|| KeyError::Malformed("truncated aws-kms header".into()))?
        as usize;
    if ct.len() <= 2 + len {
        return Err(KeyError::Malformed(
            "truncated aws-kms ciphertext (no KMS blob after the key id)".into(),
        ));
    }
    let key_id = std::str::from_utf8(&ct[2..2 + len])
        .map_err(|_| KeyError::Malformed("aws-kms key id is not UTF-8".into()))?;
    Ok((key_id, &ct[2 + len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> KeyContext {
        KeyContext::new("a", "p")
    }

    #[test]
    fn seal_open_round_trip_and_context_binding() {
        let c = cipher(&[1; 32]);
        let h = LocalHeader {
            version: 3,
            key_id: [9; 8],
        }
        .encode();
        let s = seal(&c, &h, &ctx(), b"hello").unwrap();
        assert_eq!(LocalHeader::parse(&s).unwrap().version, 3);
        assert_eq!(open(&c, &s, h.len(), &ctx()).unwrap(), b"hello");
        let e = open(&c, &s, h.len(), &KeyContext::new("a", "q"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("decryption failed") && e.contains("\"q\""),
            "{e}"
        );
        // Swapping the header version is detected by the AAD.
        let mut t = s.clone();
        t[4] ^= 1;
        assert!(matches!(
            open(&c, &t, h.len(), &ctx()),
            Err(KeyError::DecryptFailed { .. })
        ));
    }

    #[test]
    fn short_and_foreign_inputs_are_malformed() {
        let e = LocalHeader::parse(&[]).unwrap_err().to_string();
        assert!(e.contains("empty ciphertext"), "{e}");
        let e = LocalHeader::parse(&[FORMAT_LOCAL, 0, 0])
            .unwrap_err()
            .to_string();
        assert!(e.contains("too short"), "{e}");
        let e = LocalHeader::parse(&[FORMAT_KMS; 64])
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a local-provider ciphertext"), "{e}");
        let e = open(&cipher(&[0; 32]), &[1, 2], 1, &ctx())
            .unwrap_err()
            .to_string();
        assert!(e.contains("shorter than header"), "{e}");
    }

    #[test]
    fn kms_frame_round_trip_and_errors() {
        let f = encode_kms("1234-abcd", b"blob").unwrap();
        assert_eq!(decode_kms(&f).unwrap(), ("1234-abcd", &b"blob"[..]));
        let e = decode_kms(&[FORMAT_LOCAL, 1]).unwrap_err().to_string();
        assert!(e.contains("not an aws-kms ciphertext"), "{e}");
        let e = decode_kms(&[FORMAT_KMS, 5, b'a']).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        let e = decode_kms(&[FORMAT_KMS]).unwrap_err().to_string();
        assert!(e.contains("truncated aws-kms header"), "{e}");
        let e = encode_kms(&"k".repeat(300), b"x").unwrap_err().to_string();
        assert!(e.contains("too long"), "{e}");
    }
}
