//! Tenant PKI isolation: certificates of one tenant never pass for another. The broker checks
//! run the real Mosquitto with the `mosquitto.conf` the operator renders and the
//! `silo-mosquitto-tls` / `silo-mosquitto-credentials` Secrets it reconciles (see
//! `siloed_support`); the rest checks the PKI's own verifiers and name constraints.

#[path = "mosquitto_support/mod.rs"]
mod mosquitto_support;
#[path = "siloed_support/mod.rs"]
mod siloed_support;

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::ClientConfig;
use rustls::client::danger::ServerCertVerifier;
use rustls_pki_types::{ServerName, UnixTime};
use silo::pki::{
    IssuedCert, PkiError, PkiValidity, PlatformCa, TenantCa, TenantNames, TenantPki, TrustBundle,
    issue_device_cert, needs_renewal,
};
use time::{Duration, OffsetDateTime};

fn install_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

struct World {
    pki: TenantPki,
    a: TenantCa,
    b: TenantCa,
}

fn world() -> World {
    install_provider();
    let now = OffsetDateTime::now_utc();
    let root = PlatformCa::generate("silo platform root", Duration::days(3650), now).unwrap();
    let pki = TenantPki::new(root, PkiValidity::default());
    let a = pki
        .issue_tenant_ca(&TenantNames::new("a", "tenant-a").unwrap(), now)
        .unwrap();
    let b = pki
        .issue_tenant_ca(&TenantNames::new("b", "tenant-b").unwrap(), now)
        .unwrap();
    World { pki, a, b }
}

fn unix(t: OffsetDateTime) -> UnixTime {
    UnixTime::since_unix_epoch(std::time::Duration::from_secs(t.unix_timestamp() as u64))
}

fn platform_roots(w: &World) -> TrustBundle {
    TrustBundle::new(w.pki.platform().cert())
}

/// Signs a leaf for arbitrary names with a CA's key, bypassing `TenantCa`'s own name check:
/// what someone holding tenant A's CA key could do.
fn forge(ca: &IssuedCert, dns: &[&str], eku: ExtendedKeyUsagePurpose, is_ca: bool) -> IssuedCert {
    let ca_key = KeyPair::from_pem(&ca.key_pem).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, dns[0]);
    p.subject_alt_names = dns
        .iter()
        .map(|d| SanType::DnsName((*d).to_string().try_into().unwrap()))
        .collect();
    let now = OffsetDateTime::now_utc();
    p.not_before = now - Duration::minutes(1);
    p.not_after = now + Duration::days(1);
    p.use_authority_key_identifier_extension = true;
    if is_ca {
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
    } else {
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![eku];
    }
    let cert = p.signed_by(&key, &issuer).unwrap();
    IssuedCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        der: cert.der().clone(),
        serial: String::new(),
        not_before: p.not_before,
        not_after: p.not_after,
    }
}

#[test]
fn device_cert_of_tenant_a_is_rejected_by_tenant_b_broker_verifier() {
    let w = world();
    let now = OffsetDateTime::now_utc();
    let dev_a = issue_device_cert(&w.a, "tracker-1").unwrap();
    let dev_b = issue_device_cert(&w.b, "tracker-1").unwrap();
    let broker_b = TrustBundle::new(w.b.cert()).client_verifier().unwrap();
    // B's own device passes, with or without its CA in the presented chain.
    broker_b
        .verify_client_cert(&dev_b.der, &[], unix(now))
        .expect("tenant B device must be accepted by tenant B broker");
    broker_b
        .verify_client_cert(&dev_b.der, &[w.b.cert().der.clone()], unix(now))
        .expect("tenant B device with chain must be accepted");
    // A's device is rejected, also when it presents A's CA and the shared platform root.
    let chain_a = [w.a.cert().der.clone(), w.pki.platform().cert().der.clone()];
    for presented in [&[][..], &chain_a[..]] {
        let err = broker_b
            .verify_client_cert(&dev_a.der, presented, unix(now))
            .expect_err("tenant A device must be rejected by tenant B broker");
        assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    }
    // And A's broker accepts A's device.
    TrustBundle::new(w.a.cert())
        .client_verifier()
        .unwrap()
        .verify_client_cert(&dev_a.der, &[], unix(now))
        .expect("tenant A device accepted by tenant A broker");
}

fn two_siloed_tenants() -> Vec<silo::types::Tenant> {
    ["a", "b"]
        .into_iter()
        .map(|n| {
            silo::types::Tenant::new(
                n,
                silo::types::TenantSpec {
                    display_name: n.into(),
                    ..Default::default()
                },
            )
        })
        .collect()
}

/// How the broker ended a TLS connection attempt at its certificate listener: the alert it
/// sent. (With TLS 1.3 the client's handshake finishes before the server has checked the
/// client certificate; the refusal arrives on the first read, here the CONNACK's.)
async fn tls_refusal(port: u16, config: Arc<ClientConfig>, host: &str) -> rustls::Error {
    let err = match mosquitto_support::tls_connect(port, config, host).await {
        Err(e) => e,
        Ok(mut s) => match mosquitto_support::raw_connect(&mut s, "probe", None).await {
            Err(e) => e,
            Ok(code) => panic!("the broker answered CONNACK {code} instead of refusing"),
        },
    };
    mosquitto_support::tls_error(&err)
        .unwrap_or_else(|| panic!("not a TLS refusal: {err:?}"))
        .clone()
}

/// Log in on the certificate listener with `chain`/`key`: the CONNACK code.
async fn cert_login(port: u16, roots: &str, chain: &str, key: &str, host: &str) -> u8 {
    let config = mosquitto_support::tls_client_config(roots, Some((chain, key)));
    let mut s = mosquitto_support::tls_connect(port, config, host)
        .await
        .expect("TLS handshake");
    mosquitto_support::raw_connect(&mut s, "device", None)
        .await
        .expect("CONNACK")
}

fn alert(e: &rustls::Error) -> Option<rustls::AlertDescription> {
    match e {
        rustls::Error::AlertReceived(a) => Some(*a),
        _ => None,
    }
}

#[tokio::test]
async fn tenant_b_broker_refuses_tenant_a_devices_and_serves_its_own() {
    use silo::render::broker::BROKER_CERT_PORT;
    let silo = siloed_support::reconciled(two_siloed_tenants()).await;
    let broker_b = silo.start_broker("b").await;
    let port = broker_b.port(BROKER_CERT_PORT);
    let host = siloed_support::broker_host("b");
    let root = silo.platform_root_pem().await;
    let (ca_a, ca_b) = (silo.tenant_ca("a").await, silo.tenant_ca("b").await);
    let dev_a = issue_device_cert(&ca_a, "tracker-1").unwrap();
    let dev_b = issue_device_cert(&ca_b, "tracker-1").unwrap();

    // Positive control: B's device logs in, with or without its CA in the chain, and its
    // traffic flows (rumqttc through a TLS proxy presenting B's device certificate).
    assert_eq!(
        cert_login(port, &root, &dev_b.cert_pem, &dev_b.key_pem, &host).await,
        0
    );
    let b_chain = format!("{}{}", dev_b.cert_pem, ca_b.cert().cert_pem);
    assert_eq!(
        cert_login(port, &root, &b_chain, &dev_b.key_pem, &host).await,
        0
    );
    let proxy = mosquitto_support::TlsProxy::start(
        port,
        mosquitto_support::tls_client_config(&root, Some((&dev_b.cert_pem, &dev_b.key_pem))),
        &host,
    )
    .await;
    let mut device = mosquitto_support::connect(proxy.port, "ignored", "ignored")
        .await
        .expect("B's device through the proxy");
    assert!(device.subscribe("devices/tracker-1/#").await);
    device.publish("devices/tracker-1/pos", "54.6,25.3").await;
    assert_eq!(
        device
            .next_message(std::time::Duration::from_secs(10))
            .await,
        Some(("devices/tracker-1/pos".into(), "54.6,25.3".into()))
    );

    // A's device: refused with "unknown CA", alone, with A's CA, and with A's CA and the
    // platform root both tenants chain to.
    for chain in [
        dev_a.cert_pem.clone(),
        format!("{}{}", dev_a.cert_pem, ca_a.cert().cert_pem),
        format!(
            "{}{}{}",
            dev_a.cert_pem,
            ca_a.cert().cert_pem,
            silo.platform_root_pem().await
        ),
    ] {
        let config = mosquitto_support::tls_client_config(&root, Some((&chain, &dev_a.key_pem)));
        let e = tls_refusal(port, config, &host).await;
        assert_eq!(
            alert(&e),
            Some(rustls::AlertDescription::UnknownCA),
            "{e:?}"
        );
    }
    // A certificate forged with A's CA key for B's device names: same refusal.
    let forged = forge(
        &IssuedCert {
            cert_pem: ca_a.cert().cert_pem.clone(),
            key_pem: ca_a.cert().key_pem.clone(),
            der: ca_a.cert().der.clone(),
            serial: String::new(),
            not_before: ca_a.cert().not_before,
            not_after: ca_a.cert().not_after,
        },
        &["tracker-1.devices.tenant-b.svc"],
        ExtendedKeyUsagePurpose::ClientAuth,
        false,
    );
    let config =
        mosquitto_support::tls_client_config(&root, Some((&forged.cert_pem, &forged.key_pem)));
    let e = tls_refusal(port, config, &host).await;
    assert_eq!(
        alert(&e),
        Some(rustls::AlertDescription::UnknownCA),
        "{e:?}"
    );
    // And A's own broker serves A's device (the refusal is B's, not a broken certificate).
    let broker_a = silo.start_broker("a").await;
    assert_eq!(
        cert_login(
            broker_a.port(BROKER_CERT_PORT),
            &root,
            &dev_a.cert_pem,
            &dev_a.key_pem,
            &siloed_support::broker_host("a")
        )
        .await,
        0
    );
}

#[tokio::test]
async fn after_a_ca_rotation_the_broker_trusts_old_and_new_devices_until_the_old_ca_leaves() {
    use silo::operator::reconcile::secrets::{
        CA_BUNDLE_KEY, CA_CERT_KEY, CA_KEY_KEY, ROOT_CA_SECRET,
    };
    use silo::render::broker::{AUTH_DIR, BROKER_CERT_PORT, BROKER_CREDENTIALS_SECRET, TLS_DIR};
    let silo = siloed_support::reconciled(two_siloed_tenants()).await;
    let host = siloed_support::broker_host("b");
    let root = silo.platform_root_pem().await;
    let root_secret = silo.secret_in("silo-system", ROOT_CA_SECRET).await;
    let pki = TenantPki::new(
        PlatformCa::from_pem(&root_secret[CA_CERT_KEY], &root_secret[CA_KEY_KEY]).unwrap(),
        PkiValidity::default(),
    );
    let old_ca = silo.tenant_ca("b").await;
    let old_dev = issue_device_cert(&old_ca, "d1").unwrap();
    // The rotation as the operator does it (`tenant_ca` in src/operator/reconcile/secrets.rs): a new
    // CA into the stored bundle, a broker certificate from it, the Secret data from both.
    let ca_secret = silo
        .secret_in(
            "silo-system",
            &silo::operator::reconcile::secrets::tenant_ca_secret("b"),
        )
        .await;
    let mut bundle: TrustBundle = serde_json::from_str(&ca_secret[CA_BUNDLE_KEY]).unwrap();
    let now = OffsetDateTime::now_utc();
    let new_ca = pki
        .rotate_tenant_ca(old_ca.names(), &mut bundle, now)
        .unwrap();
    let new_dev = issue_device_cert(&new_ca, "d2").unwrap();
    let broker_cert = pki.issue_broker_cert(&new_ca, now).unwrap();
    let auth = silo.secret("b", BROKER_CREDENTIALS_SECRET).await;
    let conf = silo.mosquitto_conf("b");
    let dev_a = issue_device_cert(&silo.tenant_ca("a").await, "d1").unwrap();

    let both = pki
        .broker_tls_secret(&new_ca, &broker_cert, &bundle)
        .unwrap();
    let b = mosquitto_support::RenderedBroker::start(&conf, &[(TLS_DIR, &both), (AUTH_DIR, &auth)]);
    let port = b.port(BROKER_CERT_PORT);
    for dev in [&old_dev, &new_dev] {
        assert_eq!(
            cert_login(port, &root, &dev.cert_pem, &dev.key_pem, &host).await,
            0,
            "{dev:?}"
        );
    }
    let config =
        mosquitto_support::tls_client_config(&root, Some((&dev_a.cert_pem, &dev_a.key_pem)));
    let e = tls_refusal(port, config, &host).await;
    assert_eq!(
        alert(&e),
        Some(rustls::AlertDescription::UnknownCA),
        "{e:?}"
    );
    drop(b);

    // Once the old CA has left the bundle, its devices are refused; the new ones stay in.
    let new_only = pki
        .broker_tls_secret(&new_ca, &broker_cert, &TrustBundle::new(new_ca.cert()))
        .unwrap();
    let b =
        mosquitto_support::RenderedBroker::start(&conf, &[(TLS_DIR, &new_only), (AUTH_DIR, &auth)]);
    let port = b.port(BROKER_CERT_PORT);
    assert_eq!(
        cert_login(port, &root, &new_dev.cert_pem, &new_dev.key_pem, &host).await,
        0
    );
    let config =
        mosquitto_support::tls_client_config(&root, Some((&old_dev.cert_pem, &old_dev.key_pem)));
    let e = tls_refusal(port, config, &host).await;
    assert_eq!(
        alert(&e),
        Some(rustls::AlertDescription::UnknownCA),
        "{e:?}"
    );
}

#[tokio::test]
async fn the_certificate_listener_requires_a_client_certificate() {
    use silo::render::broker::{BROKER_CERT_PORT, BROKER_TLS_PORT};
    let silo = siloed_support::reconciled(two_siloed_tenants()).await;
    let b = silo.start_broker("b").await;
    let host = siloed_support::broker_host("b");
    let root = silo.platform_root_pem().await;
    let password = silo
        .secret("b", silo::render::broker::BROKER_CREDENTIALS_SECRET)
        .await["password"]
        .clone();
    // Without a certificate, even with B's password: refused at TLS level.
    let server_only = mosquitto_support::tls_client_config(&root, None);
    let e =
        match mosquitto_support::tls_connect(b.port(BROKER_CERT_PORT), server_only.clone(), &host)
            .await
        {
            Err(e) => e,
            Ok(mut s) => mosquitto_support::raw_connect(
                &mut s,
                "app",
                Some((silo::operator::reconcile::secrets::MQTT_USER, &password)),
            )
            .await
            .expect_err("a client without a certificate was served on the certificate listener"),
        };
    let e = mosquitto_support::tls_error(&e)
        .unwrap_or_else(|| panic!("not a TLS refusal: {e:?}"))
        .clone();
    assert_eq!(
        alert(&e),
        Some(rustls::AlertDescription::CertificateRequired),
        "{e:?}"
    );
    // Positive control: the same client configuration with the password on 8883 is served.
    let mut s = mosquitto_support::tls_connect(b.port(BROKER_TLS_PORT), server_only, &host)
        .await
        .unwrap();
    assert_eq!(
        mosquitto_support::raw_connect(
            &mut s,
            "app",
            Some((silo::operator::reconcile::secrets::MQTT_USER, &password))
        )
        .await
        .unwrap(),
        0
    );
    // A device certificate is no login on the password listener: not authorised (5).
    let dev = issue_device_cert(&silo.tenant_ca("b").await, "meter-7").unwrap();
    let with_cert =
        mosquitto_support::tls_client_config(&root, Some((&dev.cert_pem, &dev.key_pem)));
    let mut s = mosquitto_support::tls_connect(b.port(BROKER_TLS_PORT), with_cert.clone(), &host)
        .await
        .unwrap();
    assert_eq!(
        mosquitto_support::raw_connect(&mut s, "dev", None)
            .await
            .unwrap(),
        5
    );
    // And a wrong password is not authorised either, on the same listener.
    let mut s = mosquitto_support::tls_connect(b.port(BROKER_TLS_PORT), with_cert, &host)
        .await
        .unwrap();
    assert_eq!(
        mosquitto_support::raw_connect(
            &mut s,
            "app",
            Some((silo::operator::reconcile::secrets::MQTT_USER, "wrong"))
        )
        .await
        .unwrap(),
        5
    );
}

#[tokio::test]
async fn tenant_b_broker_certificate_does_not_pass_for_tenant_a() {
    use silo::render::broker::BROKER_TLS_PORT;
    let silo = siloed_support::reconciled(two_siloed_tenants()).await;
    let b = silo.start_broker("b").await;
    let root = silo.platform_root_pem().await;
    // A client of tenant A's broker name that reaches B's broker refuses it (wrong name)…
    let e = mosquitto_support::tls_connect(
        b.port(BROKER_TLS_PORT),
        mosquitto_support::tls_client_config(&root, None),
        &siloed_support::broker_host("a"),
    )
    .await
    .expect_err("B's broker certificate passed for A's name");
    let e = mosquitto_support::tls_error(&e)
        .unwrap_or_else(|| panic!("not a TLS error: {e:?}"))
        .clone();
    assert!(
        matches!(
            e,
            rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. }
            ) | rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName)
        ),
        "{e:?}"
    );
    // …while B's name verifies against the platform root (positive control).
    mosquitto_support::tls_connect(
        b.port(BROKER_TLS_PORT),
        mosquitto_support::tls_client_config(&root, None),
        &siloed_support::broker_host("b"),
    )
    .await
    .expect("B's broker under B's name");
}

#[test]
fn tenant_a_ca_cannot_issue_for_tenant_b_names() {
    let w = world();
    let now = OffsetDateTime::now_utc();
    // The API refuses outright.
    let err =
        w.a.issue_server_cert(
            &["silo-mosquitto.tenant-b.svc".to_string()],
            Duration::days(1),
            Duration::ZERO,
            now,
        )
        .unwrap_err();
    assert!(matches!(err, PkiError::NameNotPermitted { .. }), "{err}");
    // A certificate forged with A's CA key for B's names fails path validation (webpki name
    // constraints), while the same forgery for A's own names validates.
    let verifier = platform_roots(&w).server_verifier().unwrap();
    let inter = [w.a.cert().der.clone()];
    for host in [
        "silo-mosquitto.tenant-b.svc",
        "silo-mosquitto.tenant-b.svc.cluster.local",
        "silo-mosquitto.tenant-ab.svc",
        "api.example.com",
    ] {
        let forged = forge(
            w.a.cert(),
            &[host],
            ExtendedKeyUsagePurpose::ServerAuth,
            false,
        );
        let err = verifier
            .verify_server_cert(
                &forged.der,
                &inter,
                &ServerName::try_from(host.to_string()).unwrap(),
                &[],
                unix(now),
            )
            .expect_err("name constraints must reject a foreign name");
        assert!(
            format!("{err:?}").contains("NameConstraintViolation"),
            "{host}: {err:?}"
        );
    }
    let own = forge(
        w.a.cert(),
        &["silo-mosquitto.tenant-a.svc"],
        ExtendedKeyUsagePurpose::ServerAuth,
        false,
    );
    verifier
        .verify_server_cert(
            &own.der,
            &inter,
            &ServerName::try_from("silo-mosquitto.tenant-a.svc").unwrap(),
            &[],
            unix(now),
        )
        .expect("control: A's CA may issue for A's names");
    // The same holds for device (client) certificates under the platform root.
    let forged_dev = forge(
        w.a.cert(),
        &["tracker-1.devices.tenant-b.svc"],
        ExtendedKeyUsagePurpose::ClientAuth,
        false,
    );
    let err = platform_roots(&w)
        .client_verifier()
        .unwrap()
        .verify_client_cert(&forged_dev.der, &inter, unix(now))
        .expect_err("device cert for B's names under A's CA");
    assert!(
        format!("{err:?}").contains("NameConstraintViolation"),
        "{err:?}"
    );
}

#[test]
fn tenant_ca_path_length_zero_forbids_sub_cas() {
    let w = world();
    let now = OffsetDateTime::now_utc();
    let sub = forge(
        w.a.cert(),
        &["sub.tenant-a.svc"],
        ExtendedKeyUsagePurpose::ServerAuth,
        true,
    );
    let leaf = forge(
        &sub,
        &["x.tenant-a.svc"],
        ExtendedKeyUsagePurpose::ServerAuth,
        false,
    );
    let err = platform_roots(&w)
        .server_verifier()
        .unwrap()
        .verify_server_cert(
            &leaf.der,
            &[sub.der.clone(), w.a.cert().der.clone()],
            &ServerName::try_from("x.tenant-a.svc").unwrap(),
            &[],
            unix(now),
        )
        .expect_err("a CA below a path-length-0 tenant CA must not validate");
    // Positive control: the same leaf issued directly by the tenant CA validates.
    let direct = forge(
        w.a.cert(),
        &["x.tenant-a.svc"],
        ExtendedKeyUsagePurpose::ServerAuth,
        false,
    );
    platform_roots(&w)
        .server_verifier()
        .unwrap()
        .verify_server_cert(
            &direct.der,
            &[w.a.cert().der.clone()],
            &ServerName::try_from("x.tenant-a.svc").unwrap(),
            &[],
            unix(now),
        )
        .expect("a leaf directly under the tenant CA validates");
    let s = format!("{err:?}");
    assert!(s.contains("PathLenConstraintViolated"), "{s}");
}

#[test]
fn broker_certificate_validates_for_its_service_names() {
    let w = world();
    let now = OffsetDateTime::now_utc();
    let broker = w.pki.issue_broker_cert(&w.a, now).unwrap();
    let v = platform_roots(&w).server_verifier().unwrap();
    for host in [
        "silo-mosquitto.tenant-a.svc",
        "silo-mosquitto.tenant-a.svc.cluster.local",
    ] {
        v.verify_server_cert(
            &broker.der,
            &[w.a.cert().der.clone()],
            &ServerName::try_from(host).unwrap(),
            &[],
            unix(now),
        )
        .unwrap_or_else(|e| panic!("{host}: {e}"));
    }
    let err = v
        .verify_server_cert(
            &broker.der,
            &[w.a.cert().der.clone()],
            &ServerName::try_from("silo-mosquitto.tenant-b.svc").unwrap(),
            &[],
            unix(now),
        )
        .expect_err("wrong host");
    assert!(err.to_string().contains("not valid for name"), "{err}");
}

#[test]
fn ca_rotation_trusts_old_and_new_until_old_leaves_expire() {
    let w = world();
    let names = TenantNames::new("a", "tenant-a").unwrap();
    let t0 = OffsetDateTime::now_utc();
    let mut bundle = TrustBundle::new(w.a.cert());
    let old_dev = w.pki.issue_device_cert(&w.a, "d1", t0).unwrap();
    let new_ca = w.pki.rotate_tenant_ca(&names, &mut bundle, t0).unwrap();
    let new_dev = w.pki.issue_device_cert(&new_ca, "d1", t0).unwrap();
    assert_eq!(bundle.entries.len(), 2);
    assert_eq!(
        bundle.entries[0].cert_pem,
        new_ca.cert().cert_pem,
        "newest first"
    );
    let v = bundle.client_verifier().unwrap();
    v.verify_client_cert(&old_dev.der, &[], unix(t0))
        .expect("old device still trusted");
    v.verify_client_cert(&new_dev.der, &[], unix(t0))
        .expect("new device trusted");
    // Until the old CA's leaves have expired it stays; then it is pruned.
    let longest = PkiValidity::default().device;
    // The operator keeps the bundle's JSON next to ca.crt so that the retirement time survives a
    // restart: restored from JSON the old CA leaves on time; restored from the PEM alone (no
    // retirement time) it would stay until its own expiry.
    let mut restarted: TrustBundle =
        serde_json::from_str(&serde_json::to_string(&bundle).unwrap()).unwrap();
    assert_eq!(restarted.prune(t0 + longest), 1);
    assert_eq!(restarted.entries[0].cert_pem, new_ca.cert().cert_pem);
    let mut pem_only = TrustBundle::from_pem(&bundle.to_pem()).unwrap();
    assert_eq!(pem_only.prune(t0 + longest), 0);
    assert_eq!(bundle.prune(t0 + longest - Duration::hours(1)), 0);
    assert_eq!(bundle.prune(t0 + longest), 1);
    assert_eq!(bundle.entries.len(), 1);
    let v = bundle.client_verifier().unwrap();
    v.verify_client_cert(&new_dev.der, &[], unix(t0))
        .expect("new device");
    let err = v
        .verify_client_cert(&old_dev.der, &[], unix(t0))
        .expect_err("old CA retired");
    // Same subject as the new CA, so webpki finds the new CA and the signature check fails.
    let s = err.to_string();
    assert!(s.contains("BadSignature"), "{s}");
    // Rotating in a CA that is already present is refused.
    let err = bundle
        .rotate(new_ca.cert(), t0, longest)
        .unwrap_err()
        .to_string();
    assert!(err.contains("is already in the bundle"), "{err}");
    // The PEM written to the Secret parses back to the same certificates.
    assert_eq!(
        TrustBundle::from_pem(&bundle.to_pem()).unwrap().to_pem(),
        bundle.to_pem()
    );
}

#[test]
fn renewal_is_due_at_two_thirds_of_lifetime() {
    let w = world();
    let t0 = OffsetDateTime::now_utc();
    let broker = w.pki.issue_broker_cert(&w.a, t0).unwrap();
    let life = broker.not_after - broker.not_before;
    assert!(!needs_renewal(&broker.cert_pem, t0).unwrap());
    let due = broker.not_before + life * 2 / 3;
    assert!(!needs_renewal(&broker.cert_pem, due - Duration::seconds(1)).unwrap());
    assert!(needs_renewal(&broker.cert_pem, due).unwrap());
    assert_eq!(broker.renew_at(), due);
    assert!(broker.needs_renewal(due));
    assert!(!w.a.cert().needs_renewal(t0 + Duration::days(486)));
    assert!(w.a.cert().needs_renewal(t0 + Duration::days(487)));
}

#[test]
fn platform_root_loaded_from_pem_keeps_issuing_trusted_chains() {
    let w = world();
    let root = w.pki.platform().cert();
    let loaded = PlatformCa::from_pem(&root.cert_pem, &root.key_pem).unwrap();
    let pki = TenantPki::new(loaded, PkiValidity::default());
    let now = OffsetDateTime::now_utc();
    let ca = pki
        .issue_tenant_ca(&TenantNames::new("c", "tenant-c").unwrap(), now)
        .unwrap();
    // Load the tenant CA back from its Secret data too.
    let ca = pki
        .load_tenant_ca(ca.names(), &ca.cert().cert_pem, &ca.cert().key_pem)
        .unwrap();
    let broker = pki.issue_broker_cert(&ca, now).unwrap();
    platform_roots(&w)
        .server_verifier()
        .unwrap()
        .verify_server_cert(
            &broker.der,
            &[ca.cert().der.clone()],
            &ServerName::try_from("silo-mosquitto.tenant-c.svc").unwrap(),
            &[],
            unix(now),
        )
        .expect("chain from the reloaded root validates against the original root");
}

#[test]
fn bad_device_ids_are_refused_with_the_reason() {
    let w = world();
    for bad in ["", "Tracker", "a_b", "-x", &"9".repeat(64)] {
        let err = issue_device_cert(&w.a, bad).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("invalid device id {bad:?}")),
            "{err}"
        );
    }
}
