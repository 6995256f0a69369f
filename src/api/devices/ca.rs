//! The device CA as the API uses it: the files of Secret `silo-device-ca` (kept by the
//! operator, `crate::operator::device_ca`), mounted into the API pod and named by
//! `api.devices.ca.certFile`/`keyFile`. The kubelet reads the Secret, so the API's
//! ServiceAccount needs no Secret rights.
//!
//! The files are read at start (an unreadable or invalid file is logged as one error line
//! naming it) and read again whenever their modification time or size changes (the kubelet
//! swaps the mounted files when the operator renews the CA), so a renewed CA is used without
//! a restart. While they cannot be used, certificate registrations answer 503 and the log
//! names the file and why.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use time::OffsetDateTime;

use super::{DeviceCa, IssuedDevice};
use crate::pki::{self, DEVICE_CERT_VALIDITY};

/// Why the device CA files cannot be used; names the file and the setting.
#[derive(Debug, thiserror::Error)]
pub enum DeviceCaError {
    #[error("device CA file {path} ({setting}): cannot read it: {reason}")]
    Read {
        path: String,
        setting: &'static str,
        reason: String,
    },
    #[error("device CA files {cert} and {key} (api.devices.ca): {source}")]
    Invalid {
        cert: String,
        key: String,
        #[source]
        source: pki::PkiError,
    },
}

/// Size and modification time of a file: a change means "read it again".
type Stamp = (u64, Option<SystemTime>);

struct Loaded {
    stamps: (Stamp, Stamp),
    ca: Arc<pki::DeviceCa>,
}

/// The device CA read from files, re-read when they change.
pub struct FileDeviceCa {
    cert_file: PathBuf,
    key_file: PathBuf,
    loaded: Mutex<Option<Loaded>>,
}

impl std::fmt::Debug for FileDeviceCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileDeviceCa")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .finish()
    }
}

fn stamp(path: &Path, setting: &'static str) -> Result<Stamp, DeviceCaError> {
    let m = std::fs::metadata(path).map_err(|e| DeviceCaError::Read {
        path: path.display().to_string(),
        setting,
        reason: e.to_string(),
    })?;
    Ok((m.len(), m.modified().ok()))
}

fn read(path: &Path, setting: &'static str) -> Result<String, DeviceCaError> {
    std::fs::read_to_string(path).map_err(|e| DeviceCaError::Read {
        path: path.display().to_string(),
        setting,
        reason: e.to_string(),
    })
}

const CERT_SETTING: &str = "api.devices.ca.certFile";
const KEY_SETTING: &str = "api.devices.ca.keyFile";

impl FileDeviceCa {
    /// Reads the files once now; a failure is logged (one line naming the file) and retried
    /// on each issuance.
    pub fn open(cert_file: impl Into<PathBuf>, key_file: impl Into<PathBuf>) -> FileDeviceCa {
        let ca = FileDeviceCa {
            cert_file: cert_file.into(),
            key_file: key_file.into(),
            loaded: Mutex::new(None),
        };
        match ca.current() {
            Ok(c) => tracing::info!(
                file = %ca.cert_file.display(),
                serial = %c.cert().serial,
                "device CA loaded"
            ),
            Err(e) => tracing::error!("certificate devices unavailable: {e}"),
        }
        ca
    }

    /// The CA as the files hold it now (read again when they changed).
    pub fn current(&self) -> Result<Arc<pki::DeviceCa>, DeviceCaError> {
        let stamps = (
            stamp(&self.cert_file, CERT_SETTING)?,
            stamp(&self.key_file, KEY_SETTING)?,
        );
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = loaded.as_ref()
            && l.stamps == stamps
        {
            return Ok(l.ca.clone());
        }
        let cert = read(&self.cert_file, CERT_SETTING)?;
        let key = read(&self.key_file, KEY_SETTING)?;
        let ca = pki::DeviceCa::from_pem(&cert, &key).map_err(|source| DeviceCaError::Invalid {
            cert: self.cert_file.display().to_string(),
            key: self.key_file.display().to_string(),
            source,
        })?;
        let ca = Arc::new(ca);
        if loaded.is_some() {
            tracing::info!(serial = %ca.cert().serial, "device CA files changed: reloaded");
        }
        *loaded = Some(Loaded {
            stamps,
            ca: ca.clone(),
        });
        Ok(ca)
    }
}

/// Issues a device certificate with `ca` ([`pki::DeviceCa::issue_device`], valid
/// [`DEVICE_CERT_VALIDITY`]); `caCertificate` is the CA's chain.
pub fn issue_with(
    ca: &pki::DeviceCa,
    tenant: &str,
    id: &str,
    username: &str,
) -> Result<IssuedDevice, String> {
    let cert = ca
        .issue_device(
            tenant,
            id,
            username,
            DEVICE_CERT_VALIDITY,
            OffsetDateTime::now_utc(),
        )
        .map_err(|e| e.to_string())?;
    Ok(IssuedDevice {
        cert,
        ca_pem: ca.chain_pem().to_string(),
    })
}

impl DeviceCa for FileDeviceCa {
    fn issue<'a>(
        &'a self,
        tenant: &'a str,
        id: &'a str,
        username: &'a str,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<IssuedDevice, String>> + Send + 'a>,
    > {
        Box::pin(async move {
            let ca = self.current().map_err(|e| e.to_string())?;
            issue_with(&ca, tenant, id, username)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_read_checked_and_read_again_when_they_change() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let now = OffsetDateTime::now_utc();
        let root = pki::PlatformCa::generate("root", time::Duration::days(30), now).unwrap();
        let ca = FileDeviceCa::open(&cert, &key);
        let e = ca.current().unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "device CA file {} (api.devices.ca.certFile): cannot read it",
                cert.display()
            )),
            "{e}"
        );
        let one = pki::DeviceCa::issue(&root, time::Duration::days(9), time::Duration::ZERO, now)
            .unwrap();
        std::fs::write(&cert, one.chain_pem()).unwrap();
        std::fs::write(&key, "not a key").unwrap();
        let e = ca.current().unwrap_err().to_string();
        assert!(e.contains("cannot parse device CA private key"), "{e}");
        std::fs::write(&key, &one.cert().key_pem).unwrap();
        assert_eq!(ca.current().unwrap().cert().serial, one.cert().serial);
        // Renewed by the operator: the next issuance uses the new CA.
        let two = pki::DeviceCa::issue(&root, time::Duration::days(9), time::Duration::ZERO, now)
            .unwrap();
        std::fs::write(&cert, two.chain_pem()).unwrap();
        std::fs::write(&key, format!("{}\n", two.cert().key_pem)).unwrap();
        assert_eq!(ca.current().unwrap().cert().serial, two.cert().serial);
        let issued = issue_with(&ca.current().unwrap(), "t", "d", "t.d.1").unwrap();
        assert_eq!(issued.ca_pem, two.chain_pem());
    }
}
