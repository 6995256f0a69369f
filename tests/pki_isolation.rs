//! Tenant PKI isolation: certificates of one tenant never pass for another.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::client::danger::ServerCertVerifier;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
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

fn handshake(server: ServerConfig, client: ClientConfig, host: &str) -> Result<(), rustls::Error> {
    let mut c = ClientConnection::new(
        Arc::new(client),
        ServerName::try_from(host.to_string()).unwrap(),
    )?;
    let mut s = ServerConnection::new(Arc::new(server))?;
    for _ in 0..10 {
        let mut buf = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            s.read_tls(&mut &buf[..]).unwrap();
            s.process_new_packets()?;
        }
        let mut buf = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            c.read_tls(&mut &buf[..]).unwrap();
            c.process_new_packets()?;
        }
        if !c.is_handshaking() && !s.is_handshaking() {
            return Ok(());
        }
    }
    Err(rustls::Error::General("handshake did not finish".into()))
}

fn broker_server_config(w: &World, ca: &TenantCa) -> ServerConfig {
    let now = OffsetDateTime::now_utc();
    let broker = w.pki.issue_broker_cert(ca, now).unwrap();
    let bundle = TrustBundle::new(ca.cert());
    // Build the config from exactly what the operator writes into silo-mosquitto-tls.
    let secret = w.pki.broker_tls_secret(ca, &broker, &bundle);
    let chain: Vec<CertificateDer<'static>> =
        silo::pki::certs_from_pem(&secret["tls.crt"]).unwrap();
    assert_eq!(chain.len(), 2, "broker cert + tenant CA");
    let key = PrivateKeyDer::from_pem_slice(secret["tls.key"].as_bytes()).unwrap();
    let clients = TrustBundle::from_pem(&secret["ca.crt"]).unwrap();
    ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(clients.client_verifier().unwrap())
        .with_single_cert(chain, key)
        .unwrap()
}

fn device_client_config(w: &World, ca: &TenantCa, device: &IssuedCert) -> ClientConfig {
    let roots: RootCertStore = platform_roots(w).root_store().unwrap();
    let key = PrivateKeyDer::from_pem_slice(device.key_pem.as_bytes()).unwrap();
    ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![device.der.clone(), ca.cert().der.clone()], key)
        .unwrap()
}

#[test]
fn tls_handshake_with_tenant_b_broker_fails_for_tenant_a_device() {
    let w = world();
    let dev_a = issue_device_cert(&w.a, "meter-7").unwrap();
    let dev_b = issue_device_cert(&w.b, "meter-7").unwrap();
    let host_b = "silo-mosquitto.tenant-b.svc";
    handshake(
        broker_server_config(&w, &w.b),
        device_client_config(&w, &w.b, &dev_b),
        host_b,
    )
    .expect("tenant B device connects to tenant B broker");
    let err = handshake(
        broker_server_config(&w, &w.b),
        device_client_config(&w, &w.a, &dev_a),
        host_b,
    )
    .expect_err("tenant A device must not connect to tenant B broker");
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
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
    let s = format!("{err:?}");
    assert!(
        s.contains("PathLenConstraintViolated") || s.contains("UnknownIssuer"),
        "{s}"
    );
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
    assert!(
        s.contains("BadSignature") || s.contains("UnknownIssuer"),
        "{s}"
    );
    // Rotating in a CA that is already present is refused.
    let err = bundle
        .rotate(new_ca.cert(), t0, longest)
        .unwrap_err()
        .to_string();
    assert!(err.contains("is already in the bundle"), "{err}");
    // The bundle survives JSON (kept next to ca.crt) and PEM round trips.
    let json = serde_json::to_string(&bundle).unwrap();
    assert_eq!(serde_json::from_str::<TrustBundle>(&json).unwrap(), bundle);
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
