//! Envelope encryption with cached data keys, so a tenant costs a handful of provider calls per
//! day instead of one per secret.
//!
//! [`EnvelopeCipher::seal`] encrypts locally (AES-256-GCM) with a data key obtained from
//! [`KeyProvider::generate_data_key`] and reused for `ttl`; the output carries the wrapped data
//! key (format `0x03`, see `format`). [`EnvelopeCipher::open`] unwraps the data key through the
//! provider once per `ttl` and caches it. [`EnvelopeCipher::shred`] shreds the tenant key and drops
//! every cached data key of the tenant, so nothing of it stays usable in this process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::format::{self, FORMAT_ENVELOPE, NONCE_LEN, TAG_LEN};
use super::{KeyContext, KeyError, KeyProvider, ShredReceipt};

/// Default reuse period of a data key.
pub const DEFAULT_DATA_KEY_TTL: Duration = Duration::from_secs(3600);

struct Sealing {
    key: [u8; 32],
    wrapped: Vec<u8>,
    at: Instant,
}

/// Unwrapped data keys by (context, wrapped key), with the time they were unwrapped.
type OpenCache = HashMap<(KeyContext, Vec<u8>), ([u8; 32], Instant)>;

/// Cached envelope encryption over any [`KeyProvider`].
pub struct EnvelopeCipher {
    provider: Arc<dyn KeyProvider>,
    ttl: Duration,
    sealing: Mutex<HashMap<KeyContext, Sealing>>,
    opening: Mutex<OpenCache>,
}

impl std::fmt::Debug for EnvelopeCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnvelopeCipher")
            .field("provider", &self.provider)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

fn poisoned() -> KeyError {
    KeyError::Keyring("data-key cache lock poisoned".into())
}

impl EnvelopeCipher {
    pub fn new(provider: Arc<dyn KeyProvider>, ttl: Duration) -> Self {
        Self {
            provider,
            ttl,
            sealing: Mutex::new(HashMap::new()),
            opening: Mutex::new(HashMap::new()),
        }
    }

    pub fn provider(&self) -> &Arc<dyn KeyProvider> {
        &self.provider
    }

    /// Encrypts `plaintext` for `ctx` with a cached data key.
    pub async fn seal(&self, ctx: &KeyContext, plaintext: &[u8]) -> Result<Vec<u8>, KeyError> {
        ctx.validate()?;
        let cached = {
            let map = self.sealing.lock().map_err(|_| poisoned())?;
            map.get(ctx)
                .filter(|s| s.at.elapsed() < self.ttl)
                .map(|s| (s.key, s.wrapped.clone()))
        };
        let (key, wrapped) = match cached {
            Some(kw) => kw,
            None => {
                let dk = self.provider.generate_data_key(ctx).await?;
                let kw = (dk.plaintext, dk.wrapped);
                self.sealing.lock().map_err(|_| poisoned())?.insert(
                    ctx.clone(),
                    Sealing {
                        key: kw.0,
                        wrapped: kw.1.clone(),
                        at: Instant::now(),
                    },
                );
                kw
            }
        };
        let len = u16::try_from(wrapped.len())
            .map_err(|_| KeyError::Malformed("wrapped data key longer than 65535 bytes".into()))?;
        let mut header = Vec::with_capacity(3 + wrapped.len());
        header.push(FORMAT_ENVELOPE);
        header.extend_from_slice(&len.to_be_bytes());
        header.extend_from_slice(&wrapped);
        format::seal(&format::cipher(&key), &header, ctx, plaintext)
    }

    /// Decrypts what [`seal`](Self::seal) produced for the same `ctx`.
    pub async fn open(&self, ctx: &KeyContext, sealed: &[u8]) -> Result<Vec<u8>, KeyError> {
        ctx.validate()?;
        match sealed.first() {
            Some(&FORMAT_ENVELOPE) => {}
            Some(&f) => {
                return Err(KeyError::Malformed(format!(
                    "format byte {f:#04x} is not an envelope ({FORMAT_ENVELOPE:#04x})"
                )));
            }
            None => return Err(KeyError::Malformed("empty envelope".into())),
        }
        if sealed.len() < 3 {
            return Err(KeyError::Malformed("truncated envelope header".into()));
        }
        let wlen = usize::from(u16::from_be_bytes([sealed[1], sealed[2]]));
        let header_len = 3 + wlen;
        if sealed.len() < header_len + NONCE_LEN + TAG_LEN {
            return Err(KeyError::Malformed(format!(
                "envelope of {} bytes is shorter than its {wlen}-byte wrapped key, nonce and tag",
                sealed.len()
            )));
        }
        let wrapped = &sealed[3..header_len];
        let cache_key = (ctx.clone(), wrapped.to_vec());
        let cached = {
            let map = self.opening.lock().map_err(|_| poisoned())?;
            map.get(&cache_key)
                .filter(|(_, at)| at.elapsed() < self.ttl)
                .map(|(k, _)| *k)
        };
        let key = match cached {
            Some(k) => k,
            None => {
                let k = self.provider.decrypt_data_key(ctx, wrapped).await?;
                self.opening
                    .lock()
                    .map_err(|_| poisoned())?
                    .insert(cache_key, (k, Instant::now()));
                k
            }
        };
        format::open(&format::cipher(&key), sealed, header_len, ctx)
    }

    /// Drops every cached data key of `tenant` (call after a rotation to start a new data key).
    pub fn forget_tenant(&self, tenant: &str) -> Result<(), KeyError> {
        self.sealing
            .lock()
            .map_err(|_| poisoned())?
            .retain(|c, _| c.tenant != tenant);
        self.opening
            .lock()
            .map_err(|_| poisoned())?
            .retain(|(c, _), _| c.tenant != tenant);
        Ok(())
    }

    /// Shreds the tenant key through the provider and forgets the tenant's cached data keys.
    pub async fn shred(&self, tenant: &str) -> Result<ShredReceipt, KeyError> {
        self.forget_tenant(tenant)?;
        let r = self.provider.shred(tenant).await;
        self.forget_tenant(tenant)?;
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::TenantKeySpec;
    use crate::keys::local::{LocalProvider, MemoryKeyringStore};

    async fn env() -> EnvelopeCipher {
        let p = LocalProvider::open(Arc::new(MemoryKeyringStore::default()), 7)
            .await
            .unwrap();
        p.ensure_key(&TenantKeySpec::new("a")).await.unwrap();
        p.ensure_key(&TenantKeySpec::new("b")).await.unwrap();
        EnvelopeCipher::new(Arc::new(p), DEFAULT_DATA_KEY_TTL)
    }

    #[tokio::test]
    async fn seal_open_reuses_data_key_and_binds_context() {
        let e = env().await;
        let a = KeyContext::new("a", "db");
        let s1 = e.seal(&a, b"one").await.unwrap();
        let s2 = e.seal(&a, b"two").await.unwrap();
        // Same cached data key: same wrapped key in both headers.
        let w = |s: &[u8]| s[..3 + usize::from(u16::from_be_bytes([s[1], s[2]]))].to_vec();
        assert_eq!(w(&s1), w(&s2));
        assert_eq!(e.open(&a, &s1).await.unwrap(), b"one");
        assert_eq!(e.open(&a, &s2).await.unwrap(), b"two");
        let err = e
            .open(&KeyContext::new("b", "db"), &s1)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("not under tenant \"b\"'s current key"),
            "{err}"
        );
        let err = e
            .open(&KeyContext::new("a", "mqtt"), &s1)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("decryption failed"), "{err}");
    }

    #[tokio::test]
    async fn shred_drops_cached_keys() {
        let e = env().await;
        let a = KeyContext::new("a", "db");
        let s = e.seal(&a, b"secret").await.unwrap();
        assert_eq!(e.open(&a, &s).await.unwrap(), b"secret");
        e.shred("a").await.unwrap();
        let err = e.open(&a, &s).await.unwrap_err().to_string();
        assert!(err.contains("PendingDeletion"), "{err}");
        let err = e.seal(&a, b"x").await.unwrap_err().to_string();
        assert!(err.contains("tenant \"a\" has no key"), "{err}");
    }

    #[tokio::test]
    async fn malformed_envelopes_are_named() {
        let e = env().await;
        let a = KeyContext::new("a", "db");
        let err = e.open(&a, &[]).await.unwrap_err().to_string();
        assert!(err.contains("empty envelope"), "{err}");
        let err = e.open(&a, &[1, 0]).await.unwrap_err().to_string();
        assert!(err.contains("is not an envelope"), "{err}");
        let err = e.open(&a, &[3, 0]).await.unwrap_err().to_string();
        assert!(err.contains("truncated envelope header"), "{err}");
        let err = e
            .open(&a, &[3, 0, 200, 1, 2])
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("shorter than its 200-byte wrapped key"),
            "{err}"
        );
    }
}
