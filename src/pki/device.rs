//! The device CA of the channel endpoint (issue 13, certificate devices).
//!
//! ```text
//! platform root CA
//!  └─ device CA "silo device CA"     path length 0, EKU clientAuth: issues device certificates only
//!      └─ device certificate         CN=<broker username>, URI urn:silo:tenant:<t>:device:<id>
//! ```
//!
//! The shared Mosquitto's certificate listener trusts **only** this CA (its `cafile` is
//! [`DeviceCa::client_anchor_pem`]), never the platform root: a certificate of a tenant broker
//! or a tenant CA's device chains to the root too, and must not log in with a CN it chose.
//! The operator keeps it in Secret `silo-device-ca` in the platform namespace
//! (`crate::operator::device_ca`); the API mounts that Secret and issues with it
//! (`crate::api::devices::ca`).

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use super::ca::{base_params, finish, gen_err, load_ca};
use super::{IssuedCert, PkiError, PlatformCa, TrustBundle};

/// Common name of the device CA.
pub const DEVICE_CA_NAME: &str = "silo device CA";

/// Default validity of the device CA (renewed at two thirds, like every Silo certificate).
pub const DEVICE_CA_VALIDITY: Duration = Duration::days(365);

/// Default validity of a device certificate: 90 days (rotate with `rotate-credentials`).
pub const DEVICE_CERT_VALIDITY: Duration = Duration::days(90);

/// The URI SAN binding a device certificate to its tenant and id.
pub fn device_uri(tenant: &str, id: &str) -> String {
    format!("urn:silo:tenant:{tenant}:device:{id}")
}

/// The device CA with its private key.
pub struct DeviceCa {
    cert: IssuedCert,
    /// The CA certificate followed by the rest of its chain (up to the root), PEM.
    chain_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for DeviceCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceCa")
            .field("cert", &self.cert)
            .finish()
    }
}

impl DeviceCa {
    /// A new device CA signed by `platform`: path length 0, key usage certificate and CRL
    /// signing, extended key usage clientAuth (OpenSSL then refuses it for anything but client
    /// certificates), never outliving the root.
    pub fn issue(
        platform: &PlatformCa,
        validity: Duration,
        backdate: Duration,
        now: OffsetDateTime,
    ) -> Result<DeviceCa, PkiError> {
        let key = KeyPair::generate().map_err(gen_err(DEVICE_CA_NAME))?;
        let (mut p, serial) = base_params(
            DEVICE_CA_NAME,
            now,
            validity,
            backdate,
            Some(platform.cert().not_after),
        );
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = p
            .signed_by(&key, platform.issuer())
            .map_err(gen_err(DEVICE_CA_NAME))?;
        let issued = finish(cert, &key, &p, serial);
        let chain_pem = format!("{}{}", issued.cert_pem, platform.cert().cert_pem);
        Ok(DeviceCa {
            cert: issued,
            chain_pem,
            issuer: Issuer::new(p, key),
        })
    }

    /// Loads the device CA from `cert_pem` (the CA certificate first, optionally followed by
    /// its chain) and `key_pem`; checks that it is a CA and that the key is its key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<DeviceCa, PkiError> {
        let (cert, issuer) = load_ca("device CA", cert_pem, key_pem)?;
        let chain: String = super::certs_from_pem(cert_pem)?
            .iter()
            .map(|d| super::ca::pem_of(d))
            .collect();
        Ok(DeviceCa {
            cert,
            chain_pem: chain,
            issuer,
        })
    }

    /// The CA certificate (and its key, for the operator's Secret).
    pub fn cert(&self) -> &IssuedCert {
        &self.cert
    }

    /// The CA certificate followed by the platform root (PEM): what a device is given as
    /// `caCertificate`, and the Secret's `ca.crt`.
    pub fn chain_pem(&self) -> &str {
        &self.chain_pem
    }

    /// The device CA alone as an OpenSSL client-authentication trust anchor: the `cafile` of
    /// the channel endpoint's certificate listener (Mosquitto needs it in this form to trust
    /// an intermediate without its root; the root must not be trusted there).
    pub fn client_anchor_pem(&self) -> Result<String, PkiError> {
        TrustBundle::new(&self.cert).to_client_auth_anchors_pem()
    }

    /// A device client certificate: `CN=<username>` (the broker username the listener takes
    /// from it), `OU=<tenant>`, URI SAN [`device_uri`], extended key usage clientAuth only,
    /// valid for `validity` (never beyond the CA).
    pub fn issue_device(
        &self,
        tenant: &str,
        id: &str,
        username: &str,
        validity: Duration,
        now: OffsetDateTime,
    ) -> Result<IssuedCert, PkiError> {
        for (what, v) in [("tenant name", tenant), ("device id", id)] {
            if !crate::config::is_dns_label(v) {
                return Err(PkiError::InvalidName {
                    what,
                    value: v.to_string(),
                    reason: "must be a DNS label (lower-case letters, digits, '-')".into(),
                });
            }
        }
        let key = KeyPair::generate().map_err(gen_err(username))?;
        let (mut p, serial): (CertificateParams, String) = base_params(
            username,
            now,
            validity,
            Duration::minutes(5),
            Some(self.cert.not_after),
        );
        p.distinguished_name
            .push(DnType::OrganizationalUnitName, tenant);
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let uri = device_uri(tenant, id);
        let uri = uri
            .clone()
            .try_into()
            .map_err(|e: rcgen::Error| PkiError::InvalidName {
                what: "device URI",
                value: uri,
                reason: e.to_string(),
            })?;
        p.subject_alt_names.push(SanType::URI(uri));
        let cert = p.signed_by(&key, &self.issuer).map_err(gen_err(username))?;
        Ok(finish(cert, &key, &p, serial))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ca_is_a_client_auth_intermediate_and_issues_bound_certificates() {
        let now = OffsetDateTime::now_utc();
        let short = PlatformCa::generate("root", Duration::days(30), now).unwrap();
        let ca = DeviceCa::issue(&short, Duration::days(365), Duration::ZERO, now).unwrap();
        // Never outlives the root.
        assert_eq!(ca.cert().not_after, short.cert().not_after);
        let root = PlatformCa::generate("root", Duration::days(400), now).unwrap();
        let ca = DeviceCa::issue(&root, Duration::days(365), Duration::ZERO, now).unwrap();
        let (_, x) = x509_parser::parse_x509_certificate(ca.cert().der.as_ref()).unwrap();
        let bc = x.basic_constraints().unwrap().unwrap().value;
        assert!(bc.ca);
        assert_eq!(bc.path_len_constraint, Some(0));
        let eku = x.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        assert!(x.issuer().to_string().contains("CN=root"), "{}", x.issuer());
        assert!(ca.chain_pem().ends_with(&root.cert().cert_pem));

        // Round trip through the Secret's files.
        let again = DeviceCa::from_pem(ca.chain_pem(), &ca.cert().key_pem).unwrap();
        assert_eq!(again.cert().serial, ca.cert().serial);
        assert_eq!(again.chain_pem(), ca.chain_pem());
        let e = DeviceCa::from_pem(ca.chain_pem(), &root.cert().key_pem)
            .unwrap_err()
            .to_string();
        assert!(e.contains("device CA private key: does not match"), "{e}");

        let leaf = again
            .issue_device("acme", "t1", "acme.t1.1", Duration::days(90), now)
            .unwrap();
        let (_, x) = x509_parser::parse_x509_certificate(leaf.der.as_ref()).unwrap();
        let cn: Vec<_> = x
            .subject()
            .iter_common_name()
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
        assert_eq!(cn, ["acme.t1.1"]);
        let san: Vec<String> = x
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|g| format!("{g:?}"))
            .collect();
        assert_eq!(san, ["URI(\"urn:silo:tenant:acme:device:t1\")"]);
        let eku = x.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        assert!(!x.basic_constraints().unwrap().unwrap().value.ca);
        assert_eq!(
            leaf.not_after.unix_timestamp(),
            (now + Duration::days(90)).unix_timestamp()
        );
        assert!(x.issuer().to_string().contains(DEVICE_CA_NAME));
        let e = again
            .issue_device("acme", "a/b", "x", Duration::days(1), now)
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid device id \"a/b\""), "{e}");
        // The anchor form Mosquitto's cafile needs.
        assert!(
            ca.client_anchor_pem()
                .unwrap()
                .starts_with("-----BEGIN TRUSTED CERTIFICATE-----")
        );
    }
}
