//! Trust bundles: the CA certificates a verifier accepts, old and new during a rotation.

use std::sync::Arc;

use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use super::{IssuedCert, PkiError, cert_validity, certs_from_pem};

/// DER of OpenSSL's `X509_CERT_AUX` holding only `trust = SEQUENCE { id-kp-clientAuth }`
/// (OID 1.3.6.1.5.5.7.3.2, RFC 5280 4.2.1.12): SEQUENCE { SEQUENCE { OID } }.
const CLIENT_AUTH_TRUST_AUX: [u8; 14] = [
    0x30, 0x0c, 0x30, 0x0a, 0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02,
];

/// One CA in a bundle. `retire_after` is set when a newer CA replaced it: the time the last leaf
/// it may have issued expires.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BundleEntry {
    pub cert_pem: String,
    pub not_after: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retire_after: Option<i64>,
}

/// CA certificates trusted together, newest first. Serialisable (the operator keeps the JSON
/// next to the PEM so retirement times survive restarts).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustBundle {
    pub entries: Vec<BundleEntry>,
}

impl TrustBundle {
    /// A bundle holding just `ca`.
    pub fn new(ca: &IssuedCert) -> Self {
        Self {
            entries: vec![BundleEntry {
                cert_pem: ca.cert_pem.clone(),
                not_after: ca.not_after.unix_timestamp(),
                retire_after: None,
            }],
        }
    }

    /// Parses a PEM bundle (e.g. a Secret's `ca.crt`); retirement times are unknown, so each
    /// CA stays until its own expiry.
    pub fn from_pem(pem: &str) -> Result<Self, PkiError> {
        let mut entries = Vec::new();
        for der in certs_from_pem(pem)? {
            let cert_pem = super::ca::pem_of(&der);
            let (_, not_after) = cert_validity(&cert_pem)?;
            entries.push(BundleEntry {
                cert_pem,
                not_after: not_after.unix_timestamp(),
                retire_after: None,
            });
        }
        Ok(Self { entries })
    }

    /// Puts `new_ca` first; every CA it replaces retires `max_leaf_validity` from `now`
    /// (or at its own expiry, whichever is earlier).
    pub fn rotate(
        &mut self,
        new_ca: &IssuedCert,
        now: OffsetDateTime,
        max_leaf_validity: Duration,
    ) -> Result<(), PkiError> {
        if self.entries.iter().any(|e| e.cert_pem == new_ca.cert_pem) {
            return Err(PkiError::Invalid {
                what: "trust bundle".into(),
                reason: format!("CA with serial {} is already in the bundle", new_ca.serial),
            });
        }
        let retire = (now + max_leaf_validity).unix_timestamp();
        for e in &mut self.entries {
            let r = e
                .retire_after
                .unwrap_or(retire)
                .min(retire)
                .min(e.not_after);
            e.retire_after = Some(r);
        }
        self.entries.insert(
            0,
            BundleEntry {
                cert_pem: new_ca.cert_pem.clone(),
                not_after: new_ca.not_after.unix_timestamp(),
                retire_after: None,
            },
        );
        Ok(())
    }

    /// Drops retired and expired CAs; returns how many were dropped.
    pub fn prune(&mut self, now: OffsetDateTime) -> usize {
        let now = now.unix_timestamp();
        let before = self.entries.len();
        self.entries
            .retain(|e| e.not_after > now && e.retire_after.is_none_or(|r| r > now));
        before - self.entries.len()
    }

    /// All certificates, newest first, as one PEM (Secret `ca.crt`).
    pub fn to_pem(&self) -> String {
        self.entries.iter().map(|e| e.cert_pem.as_str()).collect()
    }

    /// The bundle's CAs as OpenSSL trust anchors for client authentication: each certificate
    /// in the `TRUSTED CERTIFICATE` PEM form (the certificate's DER followed by OpenSSL's
    /// `X509_CERT_AUX` with `trust = { id-kp-clientAuth }`, what
    /// `openssl x509 -addtrust clientAuth` writes). This is the siloed broker's `cafile` on its
    /// certificate listener (Secret key `client-ca.crt`).
    ///
    /// Why not the plain PEM: OpenSSL (so Mosquitto) accepts a client chain only when it ends
    /// at a self-signed certificate of its store, unless that store entry is explicitly
    /// trusted for the purpose (`X509_V_FLAG_PARTIAL_CHAIN`, which Mosquitto does not set, is
    /// the other way). A tenant CA is issued by the platform root, so with the plain bundle
    /// every device certificate is refused, and adding the platform root would let another
    /// tenant's device in (its chain ends at the same root). The explicit trust makes the
    /// tenant CA itself the anchor: the tenant's devices pass, other tenants' devices have no
    /// path (`tests/pki_isolation.rs` runs this against Mosquitto).
    pub fn to_client_auth_anchors_pem(&self) -> Result<String, PkiError> {
        let mut out = String::new();
        for e in &self.entries {
            for der in certs_from_pem(&e.cert_pem)? {
                let mut trusted = der.to_vec();
                trusted.extend_from_slice(&CLIENT_AUTH_TRUST_AUX);
                out.push_str(&super::ca::pem_block("TRUSTED CERTIFICATE", &trusted));
            }
        }
        Ok(out)
    }

    pub fn root_store(&self) -> Result<RootCertStore, PkiError> {
        let mut roots = RootCertStore::empty();
        for e in &self.entries {
            for der in certs_from_pem(&e.cert_pem)? {
                roots
                    .add(der)
                    .map_err(|err| PkiError::Verifier(err.to_string()))?;
            }
        }
        Ok(roots)
    }

    /// What a tenant broker uses to check device certificates: only this bundle's CAs are trust
    /// anchors (the tenant CA, not the platform root), so other tenants' devices have no path.
    pub fn client_verifier(&self) -> Result<Arc<dyn ClientCertVerifier>, PkiError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        WebPkiClientVerifier::builder_with_provider(Arc::new(self.root_store()?), provider)
            .build()
            .map_err(|e| PkiError::Verifier(e.to_string()))
    }

    /// What a client uses to check a server certificate chained to this bundle.
    pub fn server_verifier(&self) -> Result<Arc<WebPkiServerVerifier>, PkiError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        WebPkiServerVerifier::builder_with_provider(Arc::new(self.root_store()?), provider)
            .build()
            .map_err(|e| PkiError::Verifier(e.to_string()))
    }
}
