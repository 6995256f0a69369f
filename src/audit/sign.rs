//! Ed25519 signatures of audit checkpoints (aws-lc-rs, the crypto library already under
//! rustls). The signed message names the chain, the last archived sequence number and its
//! hash, so a checkpoint cannot be moved to another chain or position.

use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use base64::Engine;

/// Why a key or signature is unusable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignError {
    #[error("not 32 bytes of base64: {0}")]
    BadKey(String),
    #[error("the signature does not match the checkpoint")]
    Mismatch,
}

/// Decodes a base64 32-byte key (seed or public key).
pub fn decode_key(text: &str) -> Result<[u8; 32], SignError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| SignError::BadKey(e.to_string()))?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| SignError::BadKey(format!("{} bytes", b.len())))
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The message a checkpoint signs.
pub fn checkpoint_message(chain: &str, through_seq: i64, through_hash_hex: &str) -> Vec<u8> {
    format!("silo-audit-checkpoint/v1\n{chain}\n{through_seq}\n{through_hash_hex}").into_bytes()
}

/// A signing key (from `api.audit.signingKey`).
pub struct Signer(Ed25519KeyPair);

impl Signer {
    pub fn from_seed_b64(seed: &str) -> Result<Signer, SignError> {
        let seed = decode_key(seed)?;
        Ed25519KeyPair::from_seed_unchecked(&seed)
            .map(Signer)
            .map_err(|e| SignError::BadKey(e.to_string()))
    }

    /// A new random key pair: (seed, public key), base64 (`silo audit keygen`).
    pub fn generate() -> (String, String) {
        let seed: [u8; 32] = rand::random();
        // A 32-byte seed is always a valid Ed25519 key.
        match Ed25519KeyPair::from_seed_unchecked(&seed) {
            Ok(k) => (b64(&seed), b64(k.public_key().as_ref())),
            Err(_) => (String::new(), String::new()),
        }
    }

    pub fn public_key_b64(&self) -> String {
        b64(self.0.public_key().as_ref())
    }

    /// The signature of `message`, base64.
    pub fn sign(&self, message: &[u8]) -> String {
        b64(self.0.sign(message).as_ref())
    }
}

/// Checks a base64 signature of `message` with a base64 public key.
pub fn verify(public_key_b64: &str, message: &[u8], signature_b64: &str) -> Result<(), SignError> {
    let key = decode_key(public_key_b64)?;
    let sig = base64::engine::general_purpose::STANDARD
        .decode(signature_b64.trim())
        .map_err(|_| SignError::Mismatch)?;
    UnparsedPublicKey::new(&ED25519, key)
        .verify(message, &sig)
        .map_err(|_| SignError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_bind_chain_position_and_hash() {
        let (seed, public) = Signer::generate();
        let s = Signer::from_seed_b64(&seed).unwrap();
        assert_eq!(s.public_key_b64(), public);
        let m = checkpoint_message("platform", 10, "ab");
        let sig = s.sign(&m);
        assert_eq!(verify(&public, &m, &sig), Ok(()));
        for other in [
            checkpoint_message("other", 10, "ab"),
            checkpoint_message("platform", 11, "ab"),
            checkpoint_message("platform", 10, "ac"),
        ] {
            assert_eq!(verify(&public, &other, &sig), Err(SignError::Mismatch));
        }
        let (_, stranger) = Signer::generate();
        assert_eq!(verify(&stranger, &m, &sig), Err(SignError::Mismatch));
        assert!(
            decode_key("AAAA")
                .unwrap_err()
                .to_string()
                .contains("3 bytes")
        );
        assert!(decode_key("!!").is_err());
    }
}
