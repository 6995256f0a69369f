//! The `local` provider's keyring: the persisted document (master-key versions, every tenant's
//! wrapped keys, the retired records), how a tenant key is wrapped by a master-key version,
//! and the names of the Secrets it is sharded over.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::keys::format;
use crate::keys::{KeyContext, KeyError, KeyInfo, KeyState};

/// Secret (in the platform namespace) the operator keeps the keyring in.
pub const KEYRING_SECRET_NAME: &str = "silo-keyring";
/// Data key of that Secret holding [`KeyringDocument::to_json`].
pub const KEYRING_SECRET_KEY: &str = "keyring.json";

/// Format of [`KeyringDocument`] (and of the master Secret).
pub const DOC_FORMAT: u32 = 1;
pub(super) const WRAP_FORMAT: u8 = 0x10;
pub(super) const WRAP_HEADER_LEN: usize = 1 + 4 + 8 + 4;
pub(super) const WRAP_PURPOSE: &str = "tenant-key";

/// The persisted keyring: master-key versions and every tenant's wrapped keys.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyringDocument {
    pub format: u32,
    pub master: MasterKeyring,
    /// Active tenant keys by tenant name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tenants: BTreeMap<String, TenantKeyRecord>,
    /// Shredded keys (pending deletion or destroyed) by key id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub retired: BTreeMap<String, TenantKeyRecord>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MasterKeyring {
    pub current: u32,
    pub min_decryption_version: u32,
    /// Version → base64 of 32 random bytes.
    pub versions: BTreeMap<u32, MasterKeyVersion>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MasterKeyVersion {
    pub key: String,
    pub created_at: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TenantKeyRecord {
    pub tenant: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// 16 hex digits, random; also written into every ciphertext header.
    pub key_id: String,
    pub rotation_days: u32,
    pub current: u32,
    pub min_decryption_version: u32,
    pub created_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotated_at: Option<i64>,
    pub state: KeyState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shred_requested_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shred_after: Option<i64>,
    /// Version → tenant key wrapped by a master-key version. Emptied when destroyed.
    #[serde(default)]
    pub versions: KeyVersions,
}

/// A tenant key's versions by number, in order: one sorted list (a tenant has one or a few
/// versions, kept for the operator's life; a `BTreeMap` would reserve a node for eleven),
/// written as the same JSON object as a map (`{"1": {...}, "2": {...}}`).
pub type KeyVersions = litemap::LiteMap<u32, WrappedTenantKey>;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WrappedTenantKey {
    pub master_version: u32,
    /// base64 of `header ‖ nonce ‖ AES-256-GCM(tenant key)`.
    pub wrapped: String,
    pub created_at: i64,
}

impl KeyringDocument {
    /// A new keyring with one random master-key version.
    pub fn generate(now: OffsetDateTime) -> Self {
        let mut versions = BTreeMap::new();
        versions.insert(
            1,
            MasterKeyVersion {
                key: B64.encode(format::random_bytes::<32>()),
                created_at: now.unix_timestamp(),
            },
        );
        Self {
            format: DOC_FORMAT,
            master: MasterKeyring {
                current: 1,
                min_decryption_version: 1,
                versions,
            },
            tenants: BTreeMap::new(),
            retired: BTreeMap::new(),
        }
    }

    pub fn to_json(&self) -> Result<String, KeyError> {
        serde_json::to_string_pretty(self)
            .map_err(|e| KeyError::Keyring(format!("cannot serialise keyring: {e}")))
    }

    /// Parses and checks a stored keyring; the error names what is wrong.
    pub fn from_json(text: &str) -> Result<Self, KeyError> {
        let doc: Self = serde_json::from_str(text)
            .map_err(|e| KeyError::Keyring(format!("{KEYRING_SECRET_KEY} is not valid: {e}")))?;
        doc.validate()?;
        Ok(doc)
    }

    pub fn validate(&self) -> Result<(), KeyError> {
        if self.format != DOC_FORMAT {
            return Err(KeyError::Keyring(format!(
                "unsupported keyring format {} (expected {DOC_FORMAT})",
                self.format
            )));
        }
        if !self.master.versions.contains_key(&self.master.current) {
            return Err(KeyError::Keyring(format!(
                "master.current = {} but no such master version exists",
                self.master.current
            )));
        }
        for (v, mk) in &self.master.versions {
            decode_key(&mk.key)
                .map_err(|why| KeyError::Keyring(format!("master.versions.{v}.key: {why}")))?;
        }
        for (name, rec) in &self.tenants {
            if &rec.tenant != name || rec.state != KeyState::Enabled {
                return Err(KeyError::Keyring(format!(
                    "tenants.{name}: record is for {:?} in state {}",
                    rec.tenant, rec.state
                )));
            }
            if !rec.versions.contains_key(&rec.current) {
                return Err(KeyError::Keyring(format!(
                    "tenants.{name}: current version {} has no wrapped key",
                    rec.current
                )));
            }
        }
        Ok(())
    }

    pub(super) fn master_key(&self, version: u32) -> Result<[u8; 32], KeyError> {
        if version < self.master.min_decryption_version {
            return Err(KeyError::VersionTooOld {
                owner: "the master keyring".into(),
                version,
                min: self.master.min_decryption_version,
            });
        }
        let mk = self
            .master
            .versions
            .get(&version)
            .ok_or(KeyError::UnknownVersion {
                owner: "the master keyring".into(),
                version,
                latest: self.master.current,
            })?;
        decode_key(&mk.key)
            .map_err(|why| KeyError::Keyring(format!("master.versions.{version}.key: {why}")))
    }
}

pub(super) fn decode_key(b64: &str) -> Result<[u8; 32], String> {
    let raw = B64.decode(b64).map_err(|e| format!("not base64: {e}"))?;
    <[u8; 32]>::try_from(raw.as_slice()).map_err(|_| format!("{} bytes, expected 32", raw.len()))
}

pub(super) fn key_id_bytes(key_id: &str) -> Result<[u8; 8], KeyError> {
    let raw = hex::decode(key_id)
        .map_err(|_| KeyError::Keyring(format!("key id {key_id:?} is not hex")))?;
    <[u8; 8]>::try_from(raw.as_slice())
        .map_err(|_| KeyError::Keyring(format!("key id {key_id:?} is not 8 bytes")))
}

pub(super) fn wrap_header(
    master_version: u32,
    key_id: [u8; 8],
    version: u32,
) -> [u8; WRAP_HEADER_LEN] {
    let mut h = [0u8; WRAP_HEADER_LEN];
    h[0] = WRAP_FORMAT;
    h[1..5].copy_from_slice(&master_version.to_be_bytes());
    h[5..13].copy_from_slice(&key_id);
    h[13..17].copy_from_slice(&version.to_be_bytes());
    h
}

pub(super) fn wrap_tenant_key(
    doc: &KeyringDocument,
    tenant: &str,
    key_id: [u8; 8],
    version: u32,
    key: &[u8; 32],
    now: i64,
) -> Result<WrappedTenantKey, KeyError> {
    let mv = doc.master.current;
    let master = format::cipher(&doc.master_key(mv)?);
    let sealed = format::seal(
        &master,
        &wrap_header(mv, key_id, version),
        &KeyContext::new(tenant, WRAP_PURPOSE),
        key,
    )?;
    Ok(WrappedTenantKey {
        master_version: mv,
        wrapped: B64.encode(sealed),
        created_at: now,
    })
}

pub(super) fn unwrap_tenant_key(
    doc: &KeyringDocument,
    rec: &TenantKeyRecord,
    version: u32,
) -> Result<[u8; 32], KeyError> {
    let w = rec.versions.get(&version).ok_or(KeyError::UnknownVersion {
        owner: format!("tenant {:?}", rec.tenant),
        version,
        latest: rec.current,
    })?;
    let master = format::cipher(&doc.master_key(w.master_version)?);
    let sealed = B64.decode(&w.wrapped).map_err(|e| {
        KeyError::Keyring(format!(
            "wrapped key {} v{version} is not base64: {e}",
            rec.key_id
        ))
    })?;
    if sealed.get(..WRAP_HEADER_LEN)
        != Some(&wrap_header(w.master_version, key_id_bytes(&rec.key_id)?, version)[..])
    {
        return Err(KeyError::Keyring(format!(
            "wrapped key {} v{version} has a header that does not match its record",
            rec.key_id
        )));
    }
    let plain = format::open(
        &master,
        &sealed,
        WRAP_HEADER_LEN,
        &KeyContext::new(rec.tenant.clone(), WRAP_PURPOSE),
    )
    .map_err(|_| {
        KeyError::Keyring(format!(
            "wrapped key {} v{version} does not unwrap under master version {}",
            rec.key_id, w.master_version
        ))
    })?;
    <[u8; 32]>::try_from(plain.as_slice())
        .map_err(|_| KeyError::Keyring(format!("tenant key {} is not 32 bytes", rec.key_id)))
}

pub(super) fn ts(secs: Option<i64>) -> Option<OffsetDateTime> {
    secs.and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
}

pub(super) fn info(rec: &TenantKeyRecord, created: bool) -> KeyInfo {
    KeyInfo {
        tenant: rec.tenant.clone(),
        key_id: rec.key_id.clone(),
        version: rec.current,
        state: rec.state,
        created,
        created_at: ts(Some(rec.created_at)),
        rotated_at: ts(rec.rotated_at),
        delete_after: ts(rec.shred_after),
    }
}

/// Label on every Secret of the sharded keyring (`"true"`): load = one GET of
/// [`KEYRING_SECRET_NAME`] plus one LIST by this label.
pub const KEYRING_LABEL: &str = "silo.dev/keyring";
/// Data key of a tenant-record Secret holding one [`TenantKeyRecord`] as JSON.
pub const RECORD_SECRET_KEY: &str = "record.json";

/// Secret holding the active key record of `tenant`: `silo-key-<tenant>`.
pub fn tenant_secret_name(tenant: &str) -> String {
    format!("silo-key-{tenant}")
}

/// Secret holding the retired (shredded) record `key_id`: `silo-key-retired.<key id>`. The dot
/// cannot occur in a tenant name (a DNS label), so no tenant's Secret can take this name.
pub fn retired_secret_name(key_id: &str) -> String {
    format!("silo-key-retired.{key_id}")
}
