//! Per-tenant PKI (rcgen).
//!
//! ```text
//! platform root CA (Secret in the platform namespace, generated or provided)
//!  └─ tenant CA "silo tenant CA <tenant>"   path length 0, name-constrained to the tenant's names
//!      ├─ broker server certificate        mosquitto.<ns>.svc, mosquitto.<ns>.svc.cluster.local
//!      └─ device client certificates       CN=<device>, DNS <device>.devices.<ns>.svc
//! ```
//!
//! **Name constraints.** A tenant CA may only issue for DNS names under `<ns>.svc` and
//! `<ns>.svc.cluster.local` (`<ns>` = the tenant's namespace, `tenant-<name>` by default). The
//! constraints are written without a leading dot (RFC 5280 DNS semantics: the name itself and any
//! subdomain, matched label by label), so `tenant-a.svc` does not permit `x.tenant-ab.svc`. Short
//! names (`mosquitto`, `mosquitto.tenant-a`) are not permitted: clients use the FQDN forms.
//! Device certificates carry a DNS SAN `<device>.devices.<ns>.svc`, so they are subject to the same
//! constraints.
//!
//! **Trust.** A tenant's broker trusts, for client certificates, only the tenant's own CA bundle
//! (mosquitto's `cafile` is [`TrustBundle::to_client_auth_anchors_pem`], the bundle marked as
//! OpenSSL trust anchors; [`TrustBundle::client_verifier`] is the rustls equivalent): a device
//! certificate from another tenant's CA has no path to it, although both chain to the same
//! platform root.
//!
//! **Lifetimes.** Every certificate has explicit validity ([`PkiValidity`]), a random 127-bit
//! serial, and is due for renewal at two thirds of its lifetime ([`needs_renewal`]). A leaf never
//! outlives its issuer.
//!
//! **Rotation.** [`TenantPki::rotate_tenant_ca`] issues a new tenant CA and keeps the old one in
//! the [`TrustBundle`] until every leaf it could have issued has expired ([`TrustBundle::prune`]).
//!
//! The operator's seam is [`TenantPki`] plus [`issue_device_cert`] and [`needs_renewal`].
//!
//! **Channel devices** (devices registered on a master channel through the API) are not issued
//! by a tenant CA but by the device CA of the channel endpoint ([`DeviceCa`], `device.rs`), an
//! intermediate of the platform root that issues client certificates only.

mod bundle;
mod ca;
mod device;
pub mod store;

use std::collections::BTreeMap;

use rustls_pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};

pub use bundle::{BundleEntry, TrustBundle};
pub use ca::{PlatformCa, TenantCa};
pub use device::{DEVICE_CA_NAME, DEVICE_CA_VALIDITY, DEVICE_CERT_VALIDITY, DeviceCa, device_uri};

use crate::config::{PlatformConfig, is_dns_label};
use crate::render::broker::BROKER_NAME;

/// Why a PKI operation failed; names the subject, name or field involved.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidName {
        what: &'static str,
        value: String,
        reason: String,
    },
    #[error("name {name:?} is outside tenant {tenant:?}'s permitted names ({permitted})")]
    NameNotPermitted {
        tenant: String,
        name: String,
        permitted: String,
    },
    #[error("cannot create certificate for {subject}: {reason}")]
    Generate { subject: String, reason: String },
    #[error("cannot parse {what}: {reason}")]
    Parse { what: String, reason: String },
    #[error("{what}: {reason}")]
    Invalid { what: String, reason: String },
    #[error("cannot build TLS verifier: {0}")]
    Verifier(String),
}

/// Validity periods. `backdate` moves `not_before` into the past to absorb clock skew.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PkiValidity {
    pub root_ca: Duration,
    pub tenant_ca: Duration,
    pub server: Duration,
    pub device: Duration,
    pub backdate: Duration,
}

impl Default for PkiValidity {
    fn default() -> Self {
        Self {
            root_ca: Duration::days(3650),
            tenant_ca: Duration::days(730),
            server: Duration::days(90),
            device: Duration::days(365),
            backdate: Duration::minutes(5),
        }
    }
}

/// A certificate with its private key, as the operator stores it in a Secret.
#[derive(Clone)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
    /// Hex of the serial number.
    pub serial: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert")
            .field("serial", &self.serial)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl IssuedCert {
    /// When renewal is due: two thirds into the lifetime.
    pub fn renew_at(&self) -> OffsetDateTime {
        renew_at(self.not_before, self.not_after)
    }

    pub fn needs_renewal(&self, now: OffsetDateTime) -> bool {
        now >= self.renew_at()
    }
}

/// Two thirds into `[not_before, not_after]`.
pub fn renew_at(not_before: OffsetDateTime, not_after: OffsetDateTime) -> OffsetDateTime {
    not_before + (not_after - not_before) * 2 / 3
}

/// `(not_before, not_after)` of the first certificate in `cert_pem`.
pub fn cert_validity(cert_pem: &str) -> Result<(OffsetDateTime, OffsetDateTime), PkiError> {
    let der = first_cert_der(cert_pem)?;
    let (_, x509) = x509_parser::parse_x509_certificate(&der).map_err(|e| PkiError::Parse {
        what: "certificate".into(),
        reason: e.to_string(),
    })?;
    let v = x509.validity();
    let conv = |t: x509_parser::time::ASN1Time| {
        OffsetDateTime::from_unix_timestamp(t.timestamp()).map_err(|e| PkiError::Parse {
            what: "certificate validity".into(),
            reason: e.to_string(),
        })
    };
    Ok((conv(v.not_before)?, conv(v.not_after)?))
}

/// True when the first certificate in `cert_pem` is two thirds through its lifetime (or past it).
/// The operator calls this on the `tls.crt` it finds in a Secret.
pub fn needs_renewal(cert_pem: &str, now: OffsetDateTime) -> Result<bool, PkiError> {
    let (nb, na) = cert_validity(cert_pem)?;
    Ok(now >= renew_at(nb, na))
}

/// DER of every `CERTIFICATE` block in `pem`, in order.
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let mut out = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.map_err(|e| PkiError::Parse {
            what: "PEM".into(),
            reason: e.to_string(),
        })?;
        if block.label == "CERTIFICATE" {
            out.push(CertificateDer::from(block.contents));
        }
    }
    if out.is_empty() {
        return Err(PkiError::Parse {
            what: "PEM".into(),
            reason: "no CERTIFICATE block found".into(),
        });
    }
    Ok(out)
}

fn first_cert_der(pem: &str) -> Result<CertificateDer<'static>, PkiError> {
    certs_from_pem(pem)?
        .into_iter()
        .next()
        .ok_or(PkiError::Parse {
            what: "PEM".into(),
            reason: "no CERTIFICATE block found".into(),
        })
}

/// The DNS names of one tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantNames {
    pub tenant: String,
    pub namespace: String,
}

impl TenantNames {
    pub fn new(tenant: impl Into<String>, namespace: impl Into<String>) -> Result<Self, PkiError> {
        let (tenant, namespace) = (tenant.into(), namespace.into());
        for (what, v) in [("tenant name", &tenant), ("namespace", &namespace)] {
            if !is_dns_label(v) {
                return Err(PkiError::InvalidName {
                    what,
                    value: v.clone(),
                    reason: "must be a DNS label (lower-case letters, digits, '-')".into(),
                });
            }
        }
        Ok(Self { tenant, namespace })
    }

    /// Names for `tenant` with the platform's namespace prefix.
    pub fn from_config(cfg: &PlatformConfig, tenant: &str) -> Result<Self, PkiError> {
        Self::new(tenant, cfg.namespace_for(tenant))
    }

    /// The name-constraint subtrees of the tenant CA.
    pub fn permitted_dns(&self) -> Vec<String> {
        vec![
            format!("{}.svc", self.namespace),
            format!("{}.svc.cluster.local", self.namespace),
        ]
    }

    /// FQDNs of a Service in the tenant's namespace.
    pub fn service_dns(&self, service: &str) -> Result<Vec<String>, PkiError> {
        if !is_dns_label(service) {
            return Err(PkiError::InvalidName {
                what: "service name",
                value: service.into(),
                reason: "must be a DNS label (lower-case letters, digits, '-')".into(),
            });
        }
        Ok(vec![
            format!("{service}.{}.svc", self.namespace),
            format!("{service}.{}.svc.cluster.local", self.namespace),
        ])
    }

    /// The DNS SAN of a device certificate.
    pub fn device_dns(&self, device_id: &str) -> Result<String, PkiError> {
        if !is_dns_label(device_id) {
            return Err(PkiError::InvalidName {
                what: "device id",
                value: device_id.into(),
                reason: "must be 1..=63 lower-case letters, digits or '-' (not at either end)"
                    .into(),
            });
        }
        Ok(format!("{device_id}.devices.{}.svc", self.namespace))
    }

    /// Whether `name` lies inside [`permitted_dns`](Self::permitted_dns) (label-wise suffix).
    pub fn permits(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        self.permitted_dns()
            .iter()
            .any(|base| name == *base || name.ends_with(&format!(".{base}")))
    }
}

/// The operator's seam: a platform CA plus validity policy.
pub struct TenantPki {
    platform: PlatformCa,
    validity: PkiValidity,
}

impl std::fmt::Debug for TenantPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantPki")
            .field("platform", &self.platform.cert())
            .field("validity", &self.validity)
            .finish()
    }
}

/// Keys of the broker TLS Secret (`silo-mosquitto-tls`).
pub const SECRET_CA: &str = "ca.crt";
/// The tenant CA bundle as OpenSSL client-authentication trust anchors
/// ([`TrustBundle::to_client_auth_anchors_pem`]): the broker's `cafile` on its certificate
/// listener.
pub const SECRET_CLIENT_CA: &str = "client-ca.crt";
pub const SECRET_CERT: &str = "tls.crt";
pub const SECRET_KEY: &str = "tls.key";

impl TenantPki {
    pub fn new(platform: PlatformCa, validity: PkiValidity) -> Self {
        Self { platform, validity }
    }

    pub fn platform(&self) -> &PlatformCa {
        &self.platform
    }

    pub fn validity(&self) -> &PkiValidity {
        &self.validity
    }

    /// A new tenant CA signed by the platform CA.
    pub fn issue_tenant_ca(
        &self,
        names: &TenantNames,
        now: OffsetDateTime,
    ) -> Result<TenantCa, PkiError> {
        self.platform
            .issue_tenant_ca(names, self.validity.tenant_ca, self.validity.backdate, now)
    }

    /// Loads a tenant CA from its Secret data.
    pub fn load_tenant_ca(
        &self,
        names: &TenantNames,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<TenantCa, PkiError> {
        TenantCa::from_pem(names.clone(), cert_pem, key_pem)
    }

    /// CA rotation: a new tenant CA; the old CAs stay in `bundle` until the leaves they may have
    /// issued expire (the longest leaf validity from now). Returns the new CA.
    pub fn rotate_tenant_ca(
        &self,
        names: &TenantNames,
        bundle: &mut TrustBundle,
        now: OffsetDateTime,
    ) -> Result<TenantCa, PkiError> {
        let ca = self.issue_tenant_ca(names, now)?;
        let longest = self.validity.server.max(self.validity.device);
        bundle.rotate(ca.cert(), now, longest)?;
        Ok(ca)
    }

    /// The broker's server certificate for Service `silo-mosquitto` in the tenant namespace.
    pub fn issue_broker_cert(
        &self,
        ca: &TenantCa,
        now: OffsetDateTime,
    ) -> Result<IssuedCert, PkiError> {
        let names = ca.names().service_dns(BROKER_NAME)?;
        ca.issue_server_cert(&names, self.validity.server, self.validity.backdate, now)
    }

    /// A device client certificate from the tenant CA.
    pub fn issue_device_cert(
        &self,
        ca: &TenantCa,
        device_id: &str,
        now: OffsetDateTime,
    ) -> Result<IssuedCert, PkiError> {
        ca.issue_device_cert(device_id, self.validity.device, self.validity.backdate, now)
    }

    /// Data of the broker TLS Secret: `ca.crt` = the tenant CA bundle (the only client trust
    /// anchors), `client-ca.crt` = the same CAs in the form Mosquitto's `cafile` needs to use
    /// them as anchors ([`TrustBundle::to_client_auth_anchors_pem`]), `tls.crt` = broker
    /// certificate followed by the issuing tenant CA, `tls.key`. Errors when a bundle entry is
    /// not a PEM certificate.
    pub fn broker_tls_secret(
        &self,
        ca: &TenantCa,
        broker: &IssuedCert,
        client_bundle: &TrustBundle,
    ) -> Result<BTreeMap<String, String>, PkiError> {
        Ok(BTreeMap::from([
            (SECRET_CA.to_string(), client_bundle.to_pem()),
            (
                SECRET_CLIENT_CA.to_string(),
                client_bundle.to_client_auth_anchors_pem()?,
            ),
            (
                SECRET_CERT.to_string(),
                format!("{}{}", broker.cert_pem, ca.cert().cert_pem),
            ),
            (SECRET_KEY.to_string(), broker.key_pem.clone()),
        ]))
    }
}

/// Issues a device client certificate (`CN=<device_id>`, DNS `<device_id>.devices.<ns>.svc`,
/// client-auth only) from `tenant_ca`, valid for the default device period from now.
pub fn issue_device_cert(tenant_ca: &TenantCa, device_id: &str) -> Result<IssuedCert, PkiError> {
    let v = PkiValidity::default();
    tenant_ca.issue_device_cert(device_id, v.device, v.backdate, OffsetDateTime::now_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_at_two_thirds() {
        let nb = OffsetDateTime::from_unix_timestamp(0).unwrap();
        let na = nb + Duration::days(90);
        assert_eq!(renew_at(nb, na), nb + Duration::days(60));
    }

    #[test]
    fn names_and_permits() {
        let n = TenantNames::new("a", "tenant-a").unwrap();
        assert_eq!(
            n.permitted_dns(),
            ["tenant-a.svc", "tenant-a.svc.cluster.local"]
        );
        assert!(n.permits("silo-mosquitto.tenant-a.svc"));
        assert!(n.permits("x.devices.tenant-a.svc.cluster.local"));
        assert!(!n.permits("silo-mosquitto.tenant-ab.svc"));
        assert!(!n.permits("silo-mosquitto.tenant-b.svc"));
        assert!(!n.permits("tenant-a.svc.evil.com"));
        assert!(!n.permits("xtenant-a.svc"));
        let cfg = PlatformConfig::default();
        assert_eq!(TenantNames::from_config(&cfg, "a").unwrap(), n);
    }

    #[test]
    fn bad_names_are_named() {
        let e = TenantNames::new("A", "tenant-a").unwrap_err().to_string();
        assert!(e.contains("invalid tenant name \"A\""), "{e}");
        let n = TenantNames::new("a", "tenant-a").unwrap();
        let e = n.device_dns("dev_1").unwrap_err().to_string();
        assert!(e.contains("invalid device id \"dev_1\""), "{e}");
        let e = n.service_dns("Svc").unwrap_err().to_string();
        assert!(e.contains("invalid service name \"Svc\""), "{e}");
    }

    #[test]
    fn unparsable_pem_is_reported() {
        let e = needs_renewal("nothing here", OffsetDateTime::now_utc())
            .unwrap_err()
            .to_string();
        assert!(e.contains("no CERTIFICATE block"), "{e}");
    }
}
