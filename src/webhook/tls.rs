//! The webhook's own PKI and its registration, as pure functions:
//! - [`ensure_serving_cert`]: keep, renew or create the CA and serving certificate (rcgen),
//!   renewing well before expiry; on CA renewal the old CA stays in the `caBundle` until it
//!   expires, so the API server trusts both the old and the new serving certificate.
//! - [`desired_secret`] / [`CertBundle::from_secret`]: how the bundle is stored in a Secret.
//! - [`desired_webhook_configuration`]: the ValidatingWebhookConfiguration to server-side apply.
//!
//! The Kubernetes calls live in [`super::apply`].

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    RuleWithOperations, ServiceReference, ValidatingWebhook, ValidatingWebhookConfiguration,
    WebhookClientConfig,
};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use super::server::WEBHOOK_PATH;

/// Field manager for every server-side apply Silo does.
pub const FIELD_MANAGER: &str = "silo";
/// Name of the ValidatingWebhookConfiguration (and of its single webhook, with a suffix).
pub const WEBHOOK_CONFIGURATION_NAME: &str = "silo-validating";
pub const WEBHOOK_NAME: &str = "validate.silo.dev";
/// Keys in the Secret (kubernetes.io/tls plus the CA).
pub const SECRET_CA_CERT: &str = "ca.crt";
pub const SECRET_CA_KEY: &str = "ca.key";
pub const SECRET_PREVIOUS_CA: &str = "ca-previous.crt";
pub const SECRET_TLS_CERT: &str = "tls.crt";
pub const SECRET_TLS_KEY: &str = "tls.key";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("invalid webhook URL {url:?}: {reason}")]
    Url { url: String, reason: String },
}

/// How the API server reaches the webhook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WebhookEndpoint {
    /// In-cluster: through a Service.
    Service {
        namespace: String,
        name: String,
        port: u16,
    },
    /// `--webhook-url https://HOST:PORT` (operator outside the cluster).
    Url { url: String, host: String },
}

impl WebhookEndpoint {
    /// Parses `https://HOST[:PORT][/path]`; HOST may be a DNS name, an IPv4 address or `[IPv6]`.
    pub fn from_url(url: &str) -> Result<Self, TlsError> {
        let bad = |reason: &str| TlsError::Url {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let rest = url
            .strip_prefix("https://")
            .ok_or_else(|| bad("must start with https://"))?;
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if authority.contains('@') {
            return Err(bad("must not contain user information"));
        }
        let host = if let Some(v6) = authority.strip_prefix('[') {
            v6.split(']').next().unwrap_or_default().to_string()
        } else {
            authority.split(':').next().unwrap_or_default().to_string()
        };
        if host.is_empty() {
            return Err(bad("has no host"));
        }
        let base = url.trim_end_matches('/');
        let full = if rest.contains('/') {
            url.to_string()
        } else {
            format!("{base}{WEBHOOK_PATH}")
        };
        Ok(WebhookEndpoint::Url { url: full, host })
    }

    /// Names the serving certificate must carry.
    pub fn sans(&self) -> Vec<String> {
        match self {
            WebhookEndpoint::Service {
                namespace, name, ..
            } => vec![
                name.clone(),
                format!("{name}.{namespace}"),
                format!("{name}.{namespace}.svc"),
                format!("{name}.{namespace}.svc.cluster.local"),
            ],
            WebhookEndpoint::Url { host, .. } => vec![host.clone()],
        }
    }
}

/// Validity and renewal windows.
#[derive(Clone, Copy, Debug)]
pub struct RotationPolicy {
    pub ca_validity: Duration,
    pub cert_validity: Duration,
    /// Renew when less than this is left (of the CA, of the serving certificate).
    pub ca_renew_before: Duration,
    pub cert_renew_before: Duration,
}

impl Default for RotationPolicy {
    fn default() -> Self {
        RotationPolicy {
            ca_validity: Duration::days(3650),
            cert_validity: Duration::days(90),
            ca_renew_before: Duration::days(365),
            cert_renew_before: Duration::days(30),
        }
    }
}

/// The CA and the serving certificate, PEM encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertBundle {
    pub ca_cert_pem: String,
    pub ca_key_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// The CA before the last CA renewal, still trusted until it expires.
    pub previous_ca_pem: Option<String>,
}

impl CertBundle {
    /// What goes into `clientConfig.caBundle`: the current CA and, during a CA change,
    /// the previous one.
    pub fn ca_bundle(&self) -> String {
        let mut s = self.ca_cert_pem.clone();
        if let Some(p) = &self.previous_ca_pem {
            if !s.ends_with('\n') {
                s.push('\n');
            }
            s.push_str(p);
        }
        s
    }

    /// Reads a bundle from a Secret written by [`desired_secret`]; None when incomplete.
    pub fn from_secret(secret: &Secret) -> Option<CertBundle> {
        let data = secret.data.as_ref()?;
        let get = |k: &str| {
            data.get(k)
                .and_then(|b| String::from_utf8(b.0.clone()).ok())
        };
        Some(CertBundle {
            ca_cert_pem: get(SECRET_CA_CERT)?,
            ca_key_pem: get(SECRET_CA_KEY)?,
            cert_pem: get(SECRET_TLS_CERT)?,
            key_pem: get(SECRET_TLS_KEY)?,
            previous_ca_pem: get(SECRET_PREVIOUS_CA),
        })
    }
}

/// What [`ensure_serving_cert`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertAction {
    /// Everything is valid long enough and covers the names.
    Kept,
    /// A new serving certificate from the existing CA (expiring, or names changed).
    RenewedServingCert(String),
    /// A new CA (none yet, unreadable, or expiring) and a serving certificate from it.
    NewCa(String),
}

struct Parsed {
    not_after: OffsetDateTime,
    sans: Vec<String>,
}

fn parse_cert(pem: &str) -> Option<Parsed> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    let cert = p.parse_x509().ok()?;
    let not_after =
        OffsetDateTime::from_unix_timestamp(cert.validity().not_after.timestamp()).ok()?;
    let mut sans = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for n in &ext.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => sans.push(d.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(b) => match b.len() {
                    4 => {
                        let a: [u8; 4] = [b[0], b[1], b[2], b[3]];
                        sans.push(IpAddr::from(a).to_string())
                    }
                    16 => {
                        let mut a = [0u8; 16];
                        a.copy_from_slice(b);
                        sans.push(IpAddr::from(a).to_string())
                    }
                    _ => {}
                },
                _ => {}
            }
        }
    }
    Some(Parsed { not_after, sans })
}

/// Expiry of a PEM certificate (None when it cannot be read).
pub fn not_after(pem: &str) -> Option<OffsetDateTime> {
    parse_cert(pem).map(|p| p.not_after)
}

/// DNS names and IP addresses of a PEM certificate.
pub fn subject_alt_names(pem: &str) -> Vec<String> {
    parse_cert(pem).map(|p| p.sans).unwrap_or_default()
}

/// Keeps, renews or creates the webhook's certificates so that the serving certificate is
/// valid for at least `cert_renew_before` more, covers `sans`, and is issued by a CA valid for
/// at least `ca_renew_before` more. Pure apart from key generation; `now` is injected.
pub fn ensure_serving_cert(
    existing: Option<&CertBundle>,
    sans: &[String],
    now: OffsetDateTime,
    policy: &RotationPolicy,
) -> Result<(CertBundle, CertAction), TlsError> {
    let Some(old) = existing else {
        return new_ca(None, sans, now, policy, "no certificate yet".into());
    };
    let ca = parse_cert(&old.ca_cert_pem);
    let ca_key = KeyPair::from_pem(&old.ca_key_pem).ok();
    let (Some(ca), Some(ca_key)) = (ca, ca_key) else {
        return new_ca(None, sans, now, policy, "stored CA cannot be read".into());
    };
    if ca.not_after - now < policy.ca_renew_before {
        let keep_old = (ca.not_after > now).then(|| old.ca_cert_pem.clone());
        return new_ca(
            keep_old,
            sans,
            now,
            policy,
            format!("CA expires at {}", ca.not_after),
        );
    }
    // Drop a previous CA once it has expired.
    let previous_ca_pem = old
        .previous_ca_pem
        .clone()
        .filter(|p| not_after(p).is_some_and(|t| t > now));
    let reason = match parse_cert(&old.cert_pem) {
        None => Some("serving certificate cannot be read".to_string()),
        Some(c) if c.not_after - now < policy.cert_renew_before => {
            Some(format!("serving certificate expires at {}", c.not_after))
        }
        Some(c) => {
            let missing: Vec<&String> = sans.iter().filter(|s| !c.sans.contains(s)).collect();
            (!missing.is_empty()).then(|| {
                format!(
                    "serving certificate lacks {}",
                    missing
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
        }
    };
    match reason {
        None => {
            let kept = CertBundle {
                previous_ca_pem,
                ..old.clone()
            };
            Ok((kept, CertAction::Kept))
        }
        Some(reason) => {
            let issuer = Issuer::from_ca_cert_pem(&old.ca_cert_pem, ca_key)?;
            let (cert_pem, key_pem) = issue_serving(&issuer, sans, now, policy, ca.not_after)?;
            Ok((
                CertBundle {
                    ca_cert_pem: old.ca_cert_pem.clone(),
                    ca_key_pem: old.ca_key_pem.clone(),
                    cert_pem,
                    key_pem,
                    previous_ca_pem,
                },
                CertAction::RenewedServingCert(reason),
            ))
        }
    }
}

fn new_ca(
    previous_ca_pem: Option<String>,
    sans: &[String],
    now: OffsetDateTime,
    policy: &RotationPolicy,
    reason: String,
) -> Result<(CertBundle, CertAction), TlsError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "silo-webhook-ca");
    dn.push(DnType::OrganizationName, "silo.dev");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + policy.ca_validity;
    let ca_not_after = params.not_after;
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    let ca_cert_pem = cert.pem();
    let ca_key_pem = key.serialize_pem();
    let issuer = Issuer::new(params, key);
    let (cert_pem, key_pem) = issue_serving(&issuer, sans, now, policy, ca_not_after)?;
    Ok((
        CertBundle {
            ca_cert_pem,
            ca_key_pem,
            cert_pem,
            key_pem,
            previous_ca_pem,
        },
        CertAction::NewCa(reason),
    ))
}

fn issue_serving(
    issuer: &Issuer<'_, KeyPair>,
    sans: &[String],
    now: OffsetDateTime,
    policy: &RotationPolicy,
    ca_not_after: OffsetDateTime,
) -> Result<(String, String), TlsError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        sans.first().map(String::as_str).unwrap_or("silo-webhook"),
    );
    params.distinguished_name = dn;
    params.subject_alt_names = sans
        .iter()
        .map(|s| match s.parse::<IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => Ok(SanType::DnsName(s.clone().try_into()?)),
        })
        .collect::<Result<_, rcgen::Error>>()?;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = now - Duration::minutes(5);
    params.not_after = (now + policy.cert_validity).min(ca_not_after);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The Secret holding the bundle (type kubernetes.io/tls, plus the CA and its key).
pub fn desired_secret(namespace: &str, name: &str, bundle: &CertBundle) -> Secret {
    let mut data = BTreeMap::new();
    let mut put = |k: &str, v: &str| {
        data.insert(k.to_string(), ByteString(v.as_bytes().to_vec()));
    };
    put(SECRET_TLS_CERT, &bundle.cert_pem);
    put(SECRET_TLS_KEY, &bundle.key_pem);
    put(SECRET_CA_CERT, &bundle.ca_cert_pem);
    put(SECRET_CA_KEY, &bundle.ca_key_pem);
    if let Some(p) = &bundle.previous_ca_pem {
        put(SECRET_PREVIOUS_CA, p);
    }
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_string(),
                "silo".to_string(),
            )])),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".to_string()),
        data: Some(data),
        ..Default::default()
    }
}

/// The ValidatingWebhookConfiguration: only `silo.dev` tenants, limitprofiles and channels
/// (never `*`, never core kinds, so an outage cannot lock the cluster), CREATE/UPDATE/DELETE,
/// `failurePolicy: Fail`, short timeout, no side effects, AdmissionReview v1 only.
pub fn desired_webhook_configuration(
    endpoint: &WebhookEndpoint,
    ca_bundle_pem: &str,
    timeout_seconds: i32,
) -> ValidatingWebhookConfiguration {
    let client_config = match endpoint {
        WebhookEndpoint::Service {
            namespace,
            name,
            port,
        } => WebhookClientConfig {
            ca_bundle: Some(ByteString(ca_bundle_pem.as_bytes().to_vec())),
            service: Some(ServiceReference {
                name: name.clone(),
                namespace: namespace.clone(),
                path: Some(WEBHOOK_PATH.to_string()),
                port: Some(i32::from(*port)),
            }),
            url: None,
        },
        WebhookEndpoint::Url { url, .. } => WebhookClientConfig {
            ca_bundle: Some(ByteString(ca_bundle_pem.as_bytes().to_vec())),
            service: None,
            url: Some(url.clone()),
        },
    };
    ValidatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(WEBHOOK_CONFIGURATION_NAME.to_string()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_string(),
                "silo".to_string(),
            )])),
            ..Default::default()
        },
        webhooks: Some(vec![ValidatingWebhook {
            name: WEBHOOK_NAME.to_string(),
            admission_review_versions: vec!["v1".to_string()],
            client_config,
            failure_policy: Some("Fail".to_string()),
            match_policy: Some("Equivalent".to_string()),
            side_effects: "None".to_string(),
            timeout_seconds: Some(timeout_seconds.clamp(1, 30)),
            rules: Some(vec![RuleWithOperations {
                api_groups: Some(vec![crate::types::GROUP.to_string()]),
                api_versions: Some(vec![crate::types::VERSION.to_string()]),
                operations: Some(["CREATE", "UPDATE", "DELETE"].map(String::from).to_vec()),
                resources: Some(
                    ["tenants", "limitprofiles", "channels"]
                        .map(String::from)
                        .to_vec(),
                ),
                scope: Some("Cluster".to_string()),
            }]),
            ..Default::default()
        }]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc() -> WebhookEndpoint {
        WebhookEndpoint::Service {
            namespace: "silo-system".into(),
            name: "silo-webhook".into(),
            port: 443,
        }
    }

    #[test]
    fn service_sans_cover_the_service_dns_names() {
        let s = svc().sans();
        assert!(s.contains(&"silo-webhook.silo-system.svc".to_string()));
        assert!(s.contains(&"silo-webhook.silo-system.svc.cluster.local".to_string()));
    }

    #[test]
    fn url_endpoint_parses_dns_ipv4_ipv6() {
        let e = WebhookEndpoint::from_url("https://dev.example.com:8443").unwrap();
        assert_eq!(
            e,
            WebhookEndpoint::Url {
                url: "https://dev.example.com:8443/validate".into(),
                host: "dev.example.com".into()
            }
        );
        assert_eq!(
            WebhookEndpoint::from_url("https://10.0.0.5:9443")
                .unwrap()
                .sans(),
            vec!["10.0.0.5"]
        );
        assert_eq!(
            WebhookEndpoint::from_url("https://[::1]:9443/x").unwrap(),
            WebhookEndpoint::Url {
                url: "https://[::1]:9443/x".into(),
                host: "::1".into()
            }
        );
        let e = WebhookEndpoint::from_url("http://x:1").unwrap_err();
        assert!(e.to_string().contains("must start with https://"), "{e}");
        let e = WebhookEndpoint::from_url("https://:1").unwrap_err();
        assert!(e.to_string().contains("has no host"), "{e}");
    }

    #[test]
    fn new_bundle_then_kept_then_renewed_then_new_ca() {
        let p = RotationPolicy::default();
        let sans = svc().sans();
        let now = OffsetDateTime::now_utc();
        let (b, a) = ensure_serving_cert(None, &sans, now, &p).unwrap();
        assert!(matches!(a, CertAction::NewCa(_)));
        assert_eq!(subject_alt_names(&b.cert_pem), sans);
        let (b2, a) = ensure_serving_cert(Some(&b), &sans, now + Duration::days(1), &p).unwrap();
        assert_eq!(a, CertAction::Kept);
        assert_eq!(b2, b);
        // 70 days later the 90-day serving cert has < 30 days left: renewed, same CA.
        let (b3, a) = ensure_serving_cert(Some(&b), &sans, now + Duration::days(70), &p).unwrap();
        assert!(matches!(a, CertAction::RenewedServingCert(ref r) if r.contains("expires")));
        assert_eq!(b3.ca_cert_pem, b.ca_cert_pem);
        assert_ne!(b3.cert_pem, b.cert_pem);
        // New names → renewed.
        let mut more = sans.clone();
        more.push("10.1.2.3".into());
        let (b4, a) = ensure_serving_cert(Some(&b), &more, now, &p).unwrap();
        assert!(matches!(a, CertAction::RenewedServingCert(ref r) if r.contains("10.1.2.3")));
        assert!(subject_alt_names(&b4.cert_pem).contains(&"10.1.2.3".to_string()));
        // Close to CA expiry: new CA, old one kept in the bundle.
        let late = now + Duration::days(3650 - 100);
        let (b5, a) = ensure_serving_cert(Some(&b), &sans, late, &p).unwrap();
        assert!(matches!(a, CertAction::NewCa(ref r) if r.contains("CA expires")));
        assert_ne!(b5.ca_cert_pem, b.ca_cert_pem);
        assert_eq!(b5.previous_ca_pem.as_deref(), Some(b.ca_cert_pem.as_str()));
        assert!(b5.ca_bundle().contains(&b.ca_cert_pem));
        // After the old CA expired it leaves the bundle.
        let later = now + Duration::days(3651);
        let (b6, _) = ensure_serving_cert(Some(&b5), &sans, later, &p).unwrap();
        assert_eq!(b6.previous_ca_pem, None);
    }

    #[test]
    fn unreadable_stored_ca_is_replaced() {
        let p = RotationPolicy::default();
        let sans = svc().sans();
        let now = OffsetDateTime::now_utc();
        let (mut b, _) = ensure_serving_cert(None, &sans, now, &p).unwrap();
        b.ca_key_pem = "garbage".into();
        let (_, a) = ensure_serving_cert(Some(&b), &sans, now, &p).unwrap();
        assert_eq!(a, CertAction::NewCa("stored CA cannot be read".into()));
    }

    #[test]
    fn secret_round_trip() {
        let now = OffsetDateTime::now_utc();
        let (b, _) =
            ensure_serving_cert(None, &svc().sans(), now, &RotationPolicy::default()).unwrap();
        let s = desired_secret("silo-system", "silo-webhook-tls", &b);
        assert_eq!(s.type_.as_deref(), Some("kubernetes.io/tls"));
        assert_eq!(CertBundle::from_secret(&s), Some(b));
    }

    #[test]
    fn webhook_configuration_is_scoped_and_safe() {
        let c = desired_webhook_configuration(&svc(), "PEM", 5);
        let w = &c.webhooks.as_ref().unwrap()[0];
        assert_eq!(w.failure_policy.as_deref(), Some("Fail"));
        assert_eq!(w.side_effects, "None");
        assert_eq!(w.timeout_seconds, Some(5));
        assert_eq!(w.admission_review_versions, vec!["v1"]);
        let rules = w.rules.as_ref().unwrap();
        for r in rules {
            assert_eq!(r.api_groups.as_deref(), Some(&["silo.dev".to_string()][..]));
            for res in r.resources.as_ref().unwrap() {
                assert!(["tenants", "limitprofiles", "channels"].contains(&res.as_str()));
            }
        }
        let cc = &w.client_config;
        assert_eq!(cc.ca_bundle.as_ref().unwrap().0, b"PEM");
        assert_eq!(
            cc.service.as_ref().unwrap().path.as_deref(),
            Some("/validate")
        );
        assert!(cc.url.is_none());

        let u = WebhookEndpoint::from_url("https://192.168.1.10:8443").unwrap();
        let c = desired_webhook_configuration(&u, "PEM", 5);
        let cc = &c.webhooks.unwrap()[0].client_config;
        assert_eq!(
            cc.url.as_deref(),
            Some("https://192.168.1.10:8443/validate")
        );
        assert!(cc.service.is_none());
    }
}
