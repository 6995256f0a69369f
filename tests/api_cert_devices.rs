//! Certificate devices in a real deployment (issue 13): the operator's code makes the device
//! CA Secret (`silo-device-ca`, in-memory cluster), its files are what the API loads
//! (`api.devices.ca`), devices are registered over HTTP against a throwaway PostgreSQL, and they
//! connect with the returned certificate to a throwaway Mosquitto 2 (dynamic security) whose
//! certificate listener is exactly [`broker::channel_cert_listener`] (the documented settings).
//!
//! Checked: delivery to the tenant's Shared client; crossings refused with a positive control
//! on the same connection; certificates not from the device CA (platform root, tenant CA, a
//! self-made CA with the right CN) refused at TLS while the device's own one is accepted;
//! disabled, deleted and rotated-away certificates can publish, subscribe and receive nothing
//! (and their open connections are ended); an unreadable device CA file answers 503 and a
//! repaired one is used again without a restart.

mod api_support;
mod mosquitto_support;
mod pg_support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use api_support::{Env, four_levels};
use mosquitto_support::{Broker, Mqtt, TlsProxy, connect, raw_connect, tls_client_config};
use reqwest::StatusCode;
use rustls::ClientConfig;
use serde_json::{Value, json};
use silo::api::testing::MemoryApiCluster;
use silo::config::PlatformConfig;
use silo::operator::cluster::Cluster;
use silo::operator::cluster::memory::MemoryCluster;
use silo::operator::device_ca::{self, DEVICE_CA_SECRET};
use silo::pki::store::{CA_CERT_KEY, CA_KEY_KEY, ROOT_CA_SECRET};
use silo::pki::{self, PkiValidity, TenantNames, TenantPki};
use silo::render::broker;
use silo::types::{Channel, ChannelSpec, Tenant};

const CH: &str = "trk";
const QUIET: Duration = Duration::from_millis(400);
/// The endpoint's server name (its certificate, from a CA under the platform root).
const HOST: &str = "silo-mosquitto.silo-system.svc";

struct CertEnv {
    env: Env,
    broker: Broker,
    cert_port: u16,
    /// Root and key of the platform CA (to forge certificates that are not the device CA's).
    root: (String, String),
    /// The device CA files the API reads.
    files: (PathBuf, PathBuf),
    _dir: tempfile::TempDir,
}

fn tree() -> Vec<Tenant> {
    let mut t = four_levels();
    for x in t.iter_mut().skip(1) {
        x.spec.channels = vec![CH.to_string()];
    }
    t
}

async fn start() -> CertEnv {
    // The operator's code: platform root and device CA Secrets.
    let k8s = MemoryCluster::new();
    let platform = PlatformConfig::default();
    let now = time::OffsetDateTime::now_utc();
    device_ca::ensure(&k8s, &platform, now)
        .await
        .unwrap()
        .expect("device CA issued");
    let secret = k8s
        .get_secret("silo-system", DEVICE_CA_SECRET)
        .await
        .unwrap()
        .unwrap();
    let root_secret = k8s
        .get_secret("silo-system", ROOT_CA_SECRET)
        .await
        .unwrap()
        .unwrap();
    let root = (
        root_secret[CA_CERT_KEY].clone(),
        root_secret[CA_KEY_KEY].clone(),
    );
    // The API pod's mount of silo-device-ca.
    let dir = tempfile::tempdir().unwrap();
    let files = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&files.0, &secret[pki::SECRET_CERT]).unwrap();
    std::fs::write(&files.1, &secret[pki::SECRET_KEY]).unwrap();

    // The endpoint's server certificate: from a CA under the same root.
    let pki = TenantPki::new(
        pki::PlatformCa::from_pem(&root.0, &root.1).unwrap(),
        PkiValidity::default(),
    );
    let names = TenantNames::new("platform", "silo-system").unwrap();
    let server_ca = pki.issue_tenant_ca(&names, now).unwrap();
    let server = pki.issue_broker_cert(&server_ca, now).unwrap();
    let server_chain = format!("{}{}", server.cert_pem, server_ca.cert().cert_pem);
    let anchors = secret[pki::SECRET_CLIENT_CA].clone();
    let cert_port = mosquitto_support::free_port();
    let broker = Broker::start_with(|d| {
        let f = |name: &str, body: &str| {
            let p = d.join(name);
            std::fs::write(&p, body).unwrap();
            p.display().to_string()
        };
        broker::channel_cert_listener(
            cert_port,
            &f("device-client-ca.crt", &anchors),
            &f("server.crt", &server_chain),
            &f("server.key", &server.key_pem),
        )
    });
    let cluster = MemoryApiCluster::new();
    cluster.put_channel(Channel::new(
        CH,
        ChannelSpec {
            owner: "platform".into(),
            ..Default::default()
        },
    ));
    let (port, pw) = (broker.port, broker.admin.password.clone());
    let (cert_file, key_file) = files.clone();
    let env = Env::start_with(tree(), cluster, |c| {
        c.api.rate_limit_per_second = 0;
        c.shared.mosquitto.host = "127.0.0.1".into();
        c.shared.mosquitto.port = port;
        c.api.broker.username = mosquitto_support::ADMIN_USER.into();
        c.api.broker.password = pw;
        c.api.devices.ca.cert_file = cert_file.display().to_string();
        c.api.devices.ca.key_file = key_file.display().to_string();
    })
    .await;
    CertEnv {
        env,
        broker,
        cert_port,
        root,
        files,
        _dir: dir,
    }
}

fn devices(tenant: &str) -> String {
    format!("/v1/tenants/{tenant}/devices")
}

/// The TLS client of a device: trusts the returned chain, presents the returned certificate.
fn device_tls(creds: &Value) -> Arc<ClientConfig> {
    tls_client_config(
        creds["caCertificate"].as_str().unwrap(),
        Some((
            creds["certificate"].as_str().unwrap(),
            creds["privateKey"].as_str().unwrap(),
        )),
    )
}

impl CertEnv {
    async fn register(&self, token: &str, tenant: &str, id: &str) -> Value {
        let (s, b) = self
            .env
            .post(
                &devices(tenant),
                token,
                json!({"id": id, "channel": CH, "auth": "certificate"}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        b
    }

    /// An MQTT connection presenting the device's certificate (no username or password: the
    /// listener takes the CN). Keeps its TLS proxy alive with it.
    async fn device(&self, creds: &Value) -> (Mqtt, TlsProxy) {
        self.try_device(creds)
            .await
            .unwrap_or_else(|e| panic!("{e:?}\n{}", self.broker.log()))
    }

    async fn try_device(
        &self,
        creds: &Value,
    ) -> Result<(Mqtt, TlsProxy), mosquitto_support::ConnectFailure> {
        let proxy = TlsProxy::start(self.cert_port, device_tls(creds), HOST).await;
        // rumqttc sends a login; the listener ignores it and uses the certificate's CN.
        let m = connect(proxy.port, "ignored", "ignored").await?;
        Ok((m, proxy))
    }

    async fn tenant_client(&self, tenant: &str) -> Mqtt {
        let mut m = self
            .broker
            .client_with(tenant, silo::backends::topic_filters(tenant, &[CH.into()]))
            .await;
        assert!(m.subscribe(&format!("channels/{CH}/{tenant}/#")).await);
        m
    }
}

/// How the broker ended a TLS connection attempt: the alert it sent (with TLS 1.3 the refusal
/// of the client certificate arrives on the first read, the CONNACK's).
async fn tls_refusal(port: u16, config: Arc<ClientConfig>) -> rustls::Error {
    let err = match mosquitto_support::tls_connect(port, config, HOST).await {
        Err(e) => e,
        Ok(mut s) => match raw_connect(&mut s, "probe", None).await {
            Err(e) => e,
            Ok(code) => panic!("the broker answered CONNACK {code} instead of refusing"),
        },
    };
    mosquitto_support::tls_error(&err)
        .unwrap_or_else(|| panic!("not a TLS refusal: {err:?}"))
        .clone()
}

/// A client certificate with `cn`, clientAuth, signed by `ca` (certificate and key PEM).
fn forged(ca: (&str, &str), cn: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let issuer =
        rcgen::Issuer::from_ca_cert_pem(ca.0, rcgen::KeyPair::from_pem(ca.1).unwrap()).unwrap();
    let cert = p.signed_by(&key, &issuer).unwrap();
    (format!("{}{}", cert.pem(), ca.0), key.serialize_pem())
}

/// A self-signed CA (certificate and key PEM).
fn self_made_ca() -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, pki::DEVICE_CA_NAME);
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let cert = p.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_devices_reach_their_tenant_only_and_foreign_certificates_are_refused() {
    let d = start().await;
    let platform = d.env.token("platform", "admin").await;
    let c1 = d.register(&platform, "cust-a", "c1").await;
    let c2 = d.register(&platform, "cust-a", "c2").await;
    let e1 = d.register(&platform, "cust-b", "e1").await;
    let c1_user = c1["username"].as_str().unwrap().to_string();
    assert!(c1_user.starts_with("cust-a.c1."), "{c1_user}");
    let c1_topic = "channels/trk/cust-a/devices/c1/telemetry";
    let c2_topic = "channels/trk/cust-a/devices/c2/telemetry";
    let e1_topic = "channels/trk/cust-b/devices/e1/telemetry";

    let mut a = d.tenant_client("cust-a").await;
    let mut b = d.tenant_client("cust-b").await;
    let mut all = d
        .broker
        .client_with("observer", vec!["channels/trk/#".into()])
        .await;
    assert!(all.subscribe("channels/trk/#").await);

    // Delivery: c1, logged in by its certificate alone, reaches A's client.
    let (mut m1, _p1) = d.device(&c1).await;
    // (Mosquitto logs the username it took from the CN; the log may trail the CONNACK.)
    let logged = format!("u'{c1_user}'");
    for _ in 0..50 {
        if d.broker.log().contains(&logged) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        d.broker.log().contains(&logged),
        "the CN is the username:\n{}",
        d.broker.log()
    );
    m1.publish(c1_topic, "21.5").await;
    assert_eq!(
        a.next_message(Duration::from_secs(5)).await,
        Some((c1_topic.into(), "21.5".into()))
    );
    assert_eq!(
        all.next_message(Duration::from_secs(5)).await,
        Some((c1_topic.into(), "21.5".into()))
    );

    // Crossings from c1: B's prefix, c2's prefix, the tenant level, another channel.
    let (m2, _p2) = d.device(&c2).await;
    let (me, _pe) = d.device(&e1).await;
    for t in [
        e1_topic,
        c2_topic,
        "channels/trk/cust-a/telemetry",
        "channels/other/cust-a/devices/c1/x",
        "tenants/cust-a/x",
    ] {
        m1.publish(t, "cross").await;
    }
    assert_eq!(b.messages(QUIET).await, vec![], "B received a crossing");
    all.assert_nothing_but_control(QUIET, &m1, c1_topic, "control")
        .await;
    assert_eq!(
        a.next_message(Duration::from_secs(5)).await,
        Some((c1_topic.into(), "control".into()))
    );
    // Subscriptions beyond its prefix refused, its own granted (same connection).
    for f in [
        "#",
        "channels/trk/#",
        "channels/trk/cust-a/#",
        "channels/trk/cust-a/devices/c2/#",
        "channels/trk/cust-b/#",
        "$share/g/channels/trk/cust-a/#",
    ] {
        assert!(!m1.subscribe(f).await, "{f} granted to c1");
    }
    assert!(m1.subscribe("channels/trk/cust-a/devices/c1/#").await);
    // c2 and e1 reach their own tenants (positive controls for the other identities).
    m2.publish(c2_topic, "c2").await;
    assert_eq!(
        a.next_message(Duration::from_secs(5)).await,
        Some((c2_topic.into(), "c2".into()))
    );
    me.publish(e1_topic, "e1").await;
    assert_eq!(
        b.next_message(Duration::from_secs(5)).await,
        Some((e1_topic.into(), "e1".into()))
    );
    assert_eq!(a.messages(QUIET).await, vec![], "A received B's message");

    // Certificates that do not come from the device CA, each with c1's CN: refused at TLS.
    let roots = c1["caCertificate"].as_str().unwrap().to_string();
    let cn = c1_user.as_str();
    let tenant_ca = TenantPki::new(
        pki::PlatformCa::from_pem(&d.root.0, &d.root.1).unwrap(),
        PkiValidity::default(),
    )
    .issue_tenant_ca(
        &TenantNames::new("cust-a", "tenant-cust-a").unwrap(),
        time::OffsetDateTime::now_utc(),
    )
    .unwrap();
    let own_ca = self_made_ca();
    let foreign = [
        (
            "signed by the platform root",
            forged((&d.root.0, &d.root.1), cn),
        ),
        (
            "signed by a tenant CA",
            forged((&tenant_ca.cert().cert_pem, &tenant_ca.cert().key_pem), cn),
        ),
        (
            "signed by a self-made CA",
            forged((&own_ca.0, &own_ca.1), cn),
        ),
    ];
    for (what, (chain, key)) in &foreign {
        let e = tls_refusal(d.cert_port, tls_client_config(&roots, Some((chain, key)))).await;
        assert!(
            matches!(e, rustls::Error::AlertReceived(_)),
            "{what}: {e:?}"
        );
    }
    // No certificate at all: refused too.
    let e = tls_refusal(d.cert_port, tls_client_config(&roots, None)).await;
    assert!(matches!(e, rustls::Error::AlertReceived(_)), "{e:?}");
    // Positive control on the same listener: c1's own certificate logs in.
    let mut s = mosquitto_support::tls_connect(d.cert_port, device_tls(&c1), HOST)
        .await
        .unwrap();
    assert_eq!(raw_connect(&mut s, "again", None).await.unwrap(), 0);
    // And none of them reached anyone.
    assert_eq!(a.messages(QUIET).await, vec![]);
    assert_eq!(b.messages(QUIET).await, vec![]);
}

/// A device connection that can do nothing: every publish is dropped and every subscription
/// refused (checked against `observer`, with `control` publishing to `control_topic` as the
/// positive control on the observer's same connection).
async fn assert_powerless(
    m: &mut Mqtt,
    own_topic: &str,
    observer: &mut Mqtt,
    control: &Mqtt,
    control_topic: &str,
) {
    m.publish(own_topic, "after").await;
    observer
        .assert_nothing_but_control(QUIET, control, control_topic, "control")
        .await;
    let own_filter = format!("{}#", own_topic.trim_end_matches("telemetry"));
    assert!(!m.subscribe(&own_filter).await, "{own_filter} granted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_deleted_and_rotated_away_certificates_can_do_nothing() {
    let d = start().await;
    let platform = d.env.token("platform", "admin").await;
    let c1 = d.register(&platform, "cust-a", "c1").await;
    let c2 = d.register(&platform, "cust-a", "c2").await;
    let c1_topic = "channels/trk/cust-a/devices/c1/telemetry";
    let c2_topic = "channels/trk/cust-a/devices/c2/telemetry";
    let mut a = d.tenant_client("cust-a").await;
    let (control, _pc) = d.device(&c2).await;

    let (mut m1, _p1) = d.device(&c1).await;
    m1.publish(c1_topic, "before").await;
    assert_eq!(
        a.next_message(Duration::from_secs(5)).await,
        Some((c1_topic.into(), "before".into()))
    );

    // Disable: the open connection ends at once.
    let path = format!("{}/c1", devices("cust-a"));
    let (s, b) = d
        .env
        .post(&format!("{path}/disable"), &platform, json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert!(
        m1.closed(Duration::from_secs(5)).await.is_some(),
        "disabled device still connected"
    );
    // Reconnecting with the certificate: Mosquitto asks for no password on this listener, so
    // CONNECT is accepted (measured), but the client is gone and nothing is allowed.
    let (mut m1, _p1) = d.device(&c1).await;
    assert_powerless(&mut m1, c1_topic, &mut a, &control, c2_topic).await;

    // Enable: the same certificate works again.
    let (s, b) = d
        .env
        .post(&format!("{path}/enable"), &platform, json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (mut m1, _p1) = d.device(&c1).await;
    assert!(m1.subscribe("channels/trk/cust-a/devices/c1/#").await);
    m1.publish(c1_topic, "enabled").await;
    assert_eq!(
        a.next_message(Duration::from_secs(5)).await,
        Some((c1_topic.into(), "enabled".into()))
    );

    // Rotate: a new certificate with a new username; the old one's connection ends and the
    // old certificate (still valid, still chaining to the device CA) can do nothing.
    let (s, r) = d
        .env
        .post(&format!("{path}/rotate-credentials"), &platform, json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    let (old_user, new_user) = (
        c1["username"].as_str().unwrap(),
        r["username"].as_str().unwrap(),
    );
    assert!(
        new_user.starts_with("cust-a.c1.") && new_user != old_user,
        "{old_user} → {new_user}"
    );
    assert_ne!(
        r["certificateInfo"]["serial"],
        c1["certificateInfo"]["serial"]
    );
    assert!(
        m1.closed(Duration::from_secs(5)).await.is_some(),
        "the old certificate's connection was not ended"
    );
    let (mut old, _po) = d.device(&c1).await;
    assert_powerless(&mut old, c1_topic, &mut a, &control, c2_topic).await;
    let (mut new, _pn) = d.device(&r).await;
    assert!(new.subscribe("channels/trk/cust-a/devices/c1/#").await);
    new.publish(c1_topic, "rotated").await;
    assert_eq!(
        a.next_message(Duration::from_secs(5)).await,
        Some((c1_topic.into(), "rotated".into()))
    );

    // Delete: the connection ends; the certificate logs in but can do nothing.
    let (s, _) = d
        .env
        .call(reqwest::Method::DELETE, &path, Some(&platform), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert!(new.closed(Duration::from_secs(5)).await.is_some());
    let (mut gone, _pg) = d.device(&r).await;
    assert_powerless(&mut gone, c1_topic, &mut a, &control, c2_topic).await;

    // The same id registered again: the new device's certificate works, and neither of the
    // deleted device's certificates (both still valid) maps to its client.
    let again = d.register(&platform, "cust-a", "c1").await;
    for old in [&c1, &r] {
        assert_ne!(again["username"], old["username"]);
        let (mut m, _p) = d.device(old).await;
        assert_powerless(&mut m, c1_topic, &mut a, &control, c2_topic).await;
    }
    let (m, _p) = d.device(&again).await;
    m.publish(c1_topic, "again").await;
    assert_eq!(
        a.next_message(Duration::from_secs(5)).await,
        Some((c1_topic.into(), "again".into()))
    );

    // The device CA files unreadable: 503, nothing registered; repaired: used again, no
    // restart.
    let key = std::fs::read_to_string(&d.files.1).unwrap();
    std::fs::write(&d.files.1, "not a key").unwrap();
    let (s, b) = d
        .env
        .post(
            &devices("cust-a"),
            &platform,
            json!({"id": "c3", "channel": CH, "auth": "certificate"}),
        )
        .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{b}");
    assert!(
        b["message"]
            .as_str()
            .unwrap()
            .contains("the device CA cannot be used"),
        "{b}"
    );
    let (s, _) = d
        .env
        .get(&format!("{}/c3", devices("cust-a")), &platform)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    std::fs::write(&d.files.1, format!("{key}\n")).unwrap();
    let c3 = d.register(&platform, "cust-a", "c3").await;
    let (m3, _p3) = d.device(&c3).await;
    m3.publish("channels/trk/cust-a/devices/c3/t", "c3").await;
    assert_eq!(
        a.next_message(Duration::from_secs(5)).await,
        Some(("channels/trk/cust-a/devices/c3/t".into(), "c3".into()))
    );
}
