//! Platform root CA and tenant CAs.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, GeneralSubtree, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, NameConstraints, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

use super::{IssuedCert, PkiError, TenantNames, cert_validity, first_cert_der};

pub(super) fn gen_err(subject: &str) -> impl Fn(rcgen::Error) -> PkiError + '_ {
    move |e| PkiError::Generate {
        subject: subject.to_string(),
        reason: e.to_string(),
    }
}

/// 16 random bytes, top bit clear (positive), never zero.
fn random_serial() -> (SerialNumber, String) {
    let mut b = [0u8; 16];
    rand::fill(&mut b);
    b[0] = (b[0] & 0x7f) | 0x01;
    (SerialNumber::from_slice(&b), hex::encode(b))
}

pub(super) fn base_params(
    cn: &str,
    now: OffsetDateTime,
    validity: Duration,
    backdate: Duration,
    cap: Option<OffsetDateTime>,
) -> (CertificateParams, String) {
    // X.509 times have whole seconds: keep the recorded validity equal to the encoded one.
    let now = now.replace_nanosecond(0).unwrap_or(now);
    let mut p = CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.distinguished_name.push(DnType::OrganizationName, "silo");
    p.not_before = now - backdate;
    let end = now + validity;
    p.not_after = match cap {
        Some(c) if c < end => c,
        _ => end,
    };
    let (serial, hex) = random_serial();
    p.serial_number = Some(serial);
    p.use_authority_key_identifier_extension = true;
    (p, hex)
}

pub(super) fn finish(
    cert: rcgen::Certificate,
    key: &KeyPair,
    p: &CertificateParams,
    serial: String,
) -> IssuedCert {
    IssuedCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        der: cert.der().clone(),
        serial,
        not_before: p.not_before,
        not_after: p.not_after,
    }
}

/// Loads a CA certificate + key, checking that it is a CA and that the key belongs to it.
pub(super) fn load_ca(
    what: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<(IssuedCert, Issuer<'static, KeyPair>), PkiError> {
    let der = first_cert_der(cert_pem)?;
    let (_, x509) = x509_parser::parse_x509_certificate(&der).map_err(|e| PkiError::Parse {
        what: format!("{what} certificate"),
        reason: e.to_string(),
    })?;
    let is_ca = x509
        .basic_constraints()
        .ok()
        .flatten()
        .is_some_and(|bc| bc.value.ca);
    if !is_ca {
        return Err(PkiError::Invalid {
            what: format!("{what} certificate"),
            reason: "is not a CA (basicConstraints cA is not set)".into(),
        });
    }
    let key = KeyPair::from_pem(key_pem).map_err(|e| PkiError::Parse {
        what: format!("{what} private key"),
        reason: e.to_string(),
    })?;
    if x509.public_key().subject_public_key.data.as_ref() != rcgen::PublicKeyData::der_bytes(&key) {
        return Err(PkiError::Invalid {
            what: format!("{what} private key"),
            reason: "does not match the certificate's public key".into(),
        });
    }
    let serial = hex::encode(x509.raw_serial());
    let (not_before, not_after) = cert_validity(cert_pem)?;
    let key_pem = key.serialize_pem();
    let issuer = Issuer::from_ca_cert_der(&der, key).map_err(|e| PkiError::Parse {
        what: format!("{what} certificate"),
        reason: e.to_string(),
    })?;
    Ok((
        IssuedCert {
            cert_pem: pem_of(&der),
            key_pem,
            der,
            serial,
            not_before,
            not_after,
        },
        issuer,
    ))
}

pub(super) fn pem_of(der: &[u8]) -> String {
    pem_block("CERTIFICATE", der)
}

/// One PEM block (RFC 7468: base64 in 64-character lines) with `label`.
pub(super) fn pem_block(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut s = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        s.push_str(&String::from_utf8_lossy(chunk));
        s.push('\n');
    }
    s.push_str(&format!("-----END {label}-----\n"));
    s
}

/// The platform root CA.
pub struct PlatformCa {
    cert: IssuedCert,
    issuer: Issuer<'static, KeyPair>,
}

impl PlatformCa {
    /// A new self-signed root (ECDSA P-256), valid for `validity` from `now`.
    pub fn generate(
        common_name: &str,
        validity: Duration,
        now: OffsetDateTime,
    ) -> Result<Self, PkiError> {
        let key = KeyPair::generate().map_err(gen_err(common_name))?;
        let (mut p, serial) = base_params(common_name, now, validity, Duration::minutes(5), None);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = p.self_signed(&key).map_err(gen_err(common_name))?;
        let issued = finish(cert, &key, &p, serial);
        Ok(Self {
            cert: issued,
            issuer: Issuer::new(p, key),
        })
    }

    /// A root taken from a provided Secret (`ca.crt`, `ca.key`).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let (cert, issuer) = load_ca("platform CA", cert_pem, key_pem)?;
        Ok(Self { cert, issuer })
    }

    pub fn cert(&self) -> &IssuedCert {
        &self.cert
    }

    /// The signer (for the device CA, `super::device`).
    pub(super) fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }

    /// A tenant CA: path length 0, name-constrained to the tenant's DNS names, never outliving
    /// the root.
    pub fn issue_tenant_ca(
        &self,
        names: &TenantNames,
        validity: Duration,
        backdate: Duration,
        now: OffsetDateTime,
    ) -> Result<TenantCa, PkiError> {
        let cn = format!("silo tenant CA {}", names.tenant);
        let key = KeyPair::generate().map_err(gen_err(&cn))?;
        let (mut p, serial) = base_params(&cn, now, validity, backdate, Some(self.cert.not_after));
        p.distinguished_name
            .push(DnType::OrganizationalUnitName, names.tenant.as_str());
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let mut permitted = Vec::new();
        for n in names.permitted_dns() {
            permitted.push(GeneralSubtree::DnsName(n));
        }
        p.name_constraints = Some(NameConstraints {
            permitted_subtrees: permitted,
            excluded_subtrees: Vec::new(),
        });
        let cert = p.signed_by(&key, &self.issuer).map_err(gen_err(&cn))?;
        let issued = finish(cert, &key, &p, serial);
        Ok(TenantCa {
            names: names.clone(),
            cert: issued,
            issuer: Issuer::new(p, key),
        })
    }
}

/// One tenant's intermediate CA.
pub struct TenantCa {
    names: TenantNames,
    cert: IssuedCert,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for TenantCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantCa")
            .field("names", &self.names)
            .field("cert", &self.cert)
            .finish()
    }
}

impl TenantCa {
    /// Loads a tenant CA from its Secret data.
    pub fn from_pem(names: TenantNames, cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let (cert, issuer) = load_ca(&format!("tenant {:?} CA", names.tenant), cert_pem, key_pem)?;
        Ok(Self {
            names,
            cert,
            issuer,
        })
    }

    pub fn names(&self) -> &TenantNames {
        &self.names
    }

    pub fn cert(&self) -> &IssuedCert {
        &self.cert
    }

    fn check_names(&self, dns: &[String]) -> Result<(), PkiError> {
        if dns.is_empty() {
            return Err(PkiError::InvalidName {
                what: "DNS name list",
                value: String::new(),
                reason: "at least one name is required".into(),
            });
        }
        for n in dns {
            if !self.names.permits(n) {
                return Err(PkiError::NameNotPermitted {
                    tenant: self.names.tenant.clone(),
                    name: n.clone(),
                    permitted: self.names.permitted_dns().join(", "),
                });
            }
        }
        Ok(())
    }

    fn leaf(
        &self,
        cn: &str,
        dns: &[String],
        eku: ExtendedKeyUsagePurpose,
        validity: Duration,
        backdate: Duration,
        now: OffsetDateTime,
    ) -> Result<IssuedCert, PkiError> {
        self.check_names(dns)?;
        let key = KeyPair::generate().map_err(gen_err(cn))?;
        let (mut p, serial) = base_params(cn, now, validity, backdate, Some(self.cert.not_after));
        p.distinguished_name
            .push(DnType::OrganizationalUnitName, self.names.tenant.as_str());
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![eku];
        for n in dns {
            let name = n
                .clone()
                .try_into()
                .map_err(|e: rcgen::Error| PkiError::InvalidName {
                    what: "DNS name",
                    value: n.clone(),
                    reason: e.to_string(),
                })?;
            p.subject_alt_names.push(SanType::DnsName(name));
        }
        let cert = p.signed_by(&key, &self.issuer).map_err(gen_err(cn))?;
        Ok(finish(cert, &key, &p, serial))
    }

    /// A server certificate (server-auth) for `dns` names, which must lie inside the tenant's
    /// permitted names.
    pub fn issue_server_cert(
        &self,
        dns: &[String],
        validity: Duration,
        backdate: Duration,
        now: OffsetDateTime,
    ) -> Result<IssuedCert, PkiError> {
        let cn = dns.first().cloned().unwrap_or_default();
        self.leaf(
            &cn,
            dns,
            ExtendedKeyUsagePurpose::ServerAuth,
            validity,
            backdate,
            now,
        )
    }

    /// A device client certificate (client-auth): `CN=<device_id>`,
    /// DNS `<device_id>.devices.<ns>.svc`.
    pub fn issue_device_cert(
        &self,
        device_id: &str,
        validity: Duration,
        backdate: Duration,
        now: OffsetDateTime,
    ) -> Result<IssuedCert, PkiError> {
        let dns = self.names.device_dns(device_id)?;
        self.leaf(
            device_id,
            &[dns],
            ExtendedKeyUsagePurpose::ClientAuth,
            validity,
            backdate,
            now,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    #[test]
    fn root_round_trips_through_pem() {
        let root = PlatformCa::generate("silo root", Duration::days(10), now()).unwrap();
        let again = PlatformCa::from_pem(&root.cert().cert_pem, &root.cert().key_pem).unwrap();
        assert_eq!(again.cert().serial, root.cert().serial);
        assert_eq!(again.cert().not_after, root.cert().not_after);
        assert_eq!(again.cert().der, root.cert().der);
    }

    #[test]
    fn loading_checks_ca_flag_and_key() {
        let root = PlatformCa::generate("silo root", Duration::days(10), now()).unwrap();
        let other = PlatformCa::generate("other", Duration::days(10), now()).unwrap();
        let e = PlatformCa::from_pem(&root.cert().cert_pem, &other.cert().key_pem)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("platform CA private key: does not match"), "{e}");
        let names = TenantNames::new("a", "tenant-a").unwrap();
        let ca = root
            .issue_tenant_ca(&names, Duration::days(5), Duration::ZERO, now())
            .unwrap();
        let leaf = ca
            .issue_device_cert("d1", Duration::days(1), Duration::ZERO, now())
            .unwrap();
        let e = PlatformCa::from_pem(&leaf.cert_pem, &leaf.key_pem)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("is not a CA"), "{e}");
        let e = PlatformCa::from_pem(&root.cert().cert_pem, "garbage")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("cannot parse platform CA private key"), "{e}");
    }

    #[test]
    fn leaves_never_outlive_the_issuer_and_serials_differ() {
        let t = now();
        let root = PlatformCa::generate("silo root", Duration::days(10), t).unwrap();
        let names = TenantNames::new("a", "tenant-a").unwrap();
        let ca = root
            .issue_tenant_ca(&names, Duration::days(365), Duration::ZERO, t)
            .unwrap();
        assert_eq!(ca.cert().not_after, root.cert().not_after);
        let d1 = ca
            .issue_device_cert("d1", Duration::days(365), Duration::ZERO, t)
            .unwrap();
        let d2 = ca
            .issue_device_cert("d1", Duration::days(1), Duration::ZERO, t)
            .unwrap();
        assert_eq!(d1.not_after, ca.cert().not_after);
        assert_eq!(
            d2.not_after.unix_timestamp(),
            (t + Duration::days(1)).unix_timestamp()
        );
        assert_ne!(d1.serial, d2.serial);
        assert_eq!(d1.serial.len(), 32);
    }

    #[test]
    fn issuing_outside_the_tenant_is_refused() {
        let root = PlatformCa::generate("silo root", Duration::days(10), now()).unwrap();
        let names = TenantNames::new("a", "tenant-a").unwrap();
        let ca = root
            .issue_tenant_ca(&names, Duration::days(5), Duration::ZERO, now())
            .unwrap();
        let e = ca
            .issue_server_cert(
                &["silo-mosquitto.tenant-b.svc".into()],
                Duration::days(1),
                Duration::ZERO,
                now(),
            )
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("name \"silo-mosquitto.tenant-b.svc\" is outside tenant \"a\"'s permitted names (tenant-a.svc, tenant-a.svc.cluster.local)"),
            "{e}"
        );
        let e = ca
            .issue_server_cert(&[], Duration::days(1), Duration::ZERO, now())
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least one name is required"), "{e}");
    }
}
