//! The credential Secrets of siloed tenants, reconciled against the in-memory cluster, and the
//! Mosquitto password file checked against a real `mosquitto` broker.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use base64::Engine as _;
use silo::config::PlatformConfig;
use silo::hierarchy::TenantTree;
use silo::operator::Reconciler;
use silo::operator::cluster::memory::MemoryCluster;
use silo::operator::cluster::{Cluster, ObjectKey, SecretData};
use silo::operator::key_service::{KeyService, ProviderKeys};
use silo::operator::reconcile::secrets::{
    self, MQTT_USER, ROOT_CA_SECRET, mosquitto_password_line, pbkdf2_sha512, tenant_ca_secret,
};
use silo::pki::{TrustBundle, certs_from_pem};
use silo::types::{Isolation, Tenant, TenantSpec};

const DB: &str = "silo-postgres-credentials";
const MQ: &str = "silo-mosquitto-credentials";
const TLS: &str = "silo-mosquitto-tls";

struct World {
    cluster: Arc<MemoryCluster>,
    keys: Arc<ProviderKeys>,
    rec: Reconciler<Arc<MemoryCluster>>,
}

/// The in-memory cluster with the real `local` key provider (in-memory keyring).
async fn world() -> World {
    let cluster = Arc::new(MemoryCluster::new());
    let keys = Arc::new(ProviderKeys::in_memory().await.unwrap());
    let rec = Reconciler::new(
        cluster.clone(),
        PlatformConfig::default(),
        keys.clone(),
        None,
    );
    World { cluster, keys, rec }
}

impl World {
    fn put(&self, name: &str, parent: Option<&str>, isolation: Isolation) {
        let spec = TenantSpec {
            parent: parent.map(str::to_string),
            display_name: name.into(),
            isolation,
            ..Default::default()
        };
        self.cluster.put_tenant(Tenant::new(name, spec));
    }

    async fn reconcile_all(&self) {
        let tree = TenantTree::build(self.cluster.inventory(), Default::default());
        let names: Vec<String> = self
            .cluster
            .inventory()
            .tenants
            .iter()
            .map(|t| t.metadata.name.clone().unwrap())
            .collect();
        for n in names {
            let live = self.cluster.tenant(&n);
            self.rec
                .reconcile_live(&tree, &n, live.as_ref())
                .await
                .unwrap();
        }
    }

    /// The tenant CA key (PEM) unsealed from its Secret's data with the tenant's key.
    async fn open_ca_key(&self, tenant: &str, ca: &SecretData) -> String {
        let sealed = base64::engine::general_purpose::STANDARD
            .decode(&ca["ca.key.sealed"])
            .unwrap();
        let plain = self
            .keys
            .open(tenant, secrets::CA_KEY_PURPOSE, &sealed)
            .await
            .unwrap();
        String::from_utf8(plain).unwrap()
    }

    /// `secrets::ensure` for `tenant` as if `days` had passed.
    async fn ensure_in_days(&self, tenant: &str, days: i64) -> secrets::Ensured {
        let t = self.cluster.tenant(tenant).unwrap();
        let later = time::OffsetDateTime::now_utc() + time::Duration::days(days);
        secrets::ensure(
            &*self.cluster,
            &PlatformConfig::default(),
            &*self.keys,
            &silo::backends::Unconfigured,
            &silo::operator::reconcile::secret_checks::SecretChecks::new(),
            &t,
            later,
        )
        .await
    }

    async fn secret(&self, tenant: &str, name: &str) -> Option<SecretData> {
        self.cluster
            .get_secret(&format!("tenant-{tenant}"), name)
            .await
            .unwrap()
    }
}

fn key(tenant: &str, name: &str) -> ObjectKey {
    ObjectKey::new("Secret", Some(&format!("tenant-{tenant}")), name)
}

#[tokio::test]
async fn secrets_are_created_once_with_the_right_keys_labels_and_owner() {
    let w = world().await;
    w.put("acme", None, Isolation::Siloed);
    w.reconcile_all().await;

    let db = w.secret("acme", DB).await.expect("postgres credentials");
    assert_eq!(
        db.keys().map(String::as_str).collect::<Vec<_>>(),
        ["database", "password", "username"]
    );
    assert!(db["password"].len() >= 32);
    let mq = w.secret("acme", MQ).await.expect("mosquitto credentials");
    assert!(mq["passwd"].starts_with(&format!("{MQTT_USER}:$7$101$")));
    assert!(mq["passwd"].ends_with('\n'));
    let tls = w.secret("acme", TLS).await.expect("mosquitto tls");
    assert_eq!(
        tls.keys().map(String::as_str).collect::<Vec<_>>(),
        ["ca.crt", "client-ca.crt", "tls.crt", "tls.key"]
    );
    assert!(
        tls["client-ca.crt"].starts_with("-----BEGIN TRUSTED CERTIFICATE-----\n"),
        "{}",
        tls["client-ca.crt"]
    );

    let manifest = w.cluster.get(&key("acme", DB)).unwrap();
    assert_eq!(manifest["metadata"]["labels"]["silo.dev/tenant"], "acme");
    assert_eq!(
        manifest["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "silo"
    );
    let owner = &manifest["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "Tenant");
    assert_eq!(owner["name"], "acme");
    assert_eq!(
        owner["uid"],
        w.cluster.tenant("acme").unwrap().metadata.uid.unwrap()
    );

    // The CA keys stay in the platform namespace, never in the tenant's.
    let ca = w
        .cluster
        .get_secret("silo-system", &tenant_ca_secret("acme"))
        .await
        .unwrap()
        .expect("tenant CA secret");
    assert!(
        !ca.contains_key("ca.key"),
        "the CA key is never stored in plaintext"
    );
    assert!(ca.contains_key("ca.key.sealed"));
    assert!(
        w.cluster
            .get_secret("silo-system", ROOT_CA_SECRET)
            .await
            .unwrap()
            .is_some()
    );
    let ca_key = w.open_ca_key("acme", &ca).await;
    assert!(ca_key.contains("PRIVATE KEY"));
    for name in [DB, MQ, TLS] {
        let d = w.secret("acme", name).await.unwrap();
        assert!(!d.values().any(|v| v.contains(ca_key.trim())), "{name}");
    }

    // Status names the Secrets.
    let status = w.cluster.tenant("acme").unwrap().status.unwrap();
    assert_eq!(status.secrets["database"], DB);
}

#[tokio::test]
async fn a_second_reconcile_writes_nothing_and_never_rotates_passwords() {
    let w = world().await;
    w.put("acme", None, Isolation::Siloed);
    w.reconcile_all().await;
    w.reconcile_all().await;
    let db = w.secret("acme", DB).await.unwrap();
    let tls = w.secret("acme", TLS).await.unwrap();
    let before = w.cluster.writes();
    w.reconcile_all().await;
    assert_eq!(w.cluster.writes(), before, "steady state must not write");
    assert_eq!(w.secret("acme", DB).await.unwrap(), db);
    assert_eq!(w.secret("acme", TLS).await.unwrap(), tls);
}

#[tokio::test]
async fn a_deleted_secret_is_recreated_and_the_others_are_kept() {
    let w = world().await;
    w.put("acme", None, Isolation::Siloed);
    w.reconcile_all().await;
    let mq = w.secret("acme", MQ).await.unwrap();
    let old = w.secret("acme", DB).await.unwrap();
    assert!(w.cluster.delete_behind_our_back(&key("acme", DB)));
    let before = w.cluster.writes().secrets;
    w.reconcile_all().await;
    let new = w.secret("acme", DB).await.expect("recreated");
    assert_eq!(w.cluster.writes().secrets, before + 1);
    assert_ne!(new["password"], old["password"]);
    assert_eq!(w.secret("acme", MQ).await.unwrap(), mq);
    // The TLS Secret comes back from the same tenant CA.
    let ca_before = w
        .cluster
        .get_secret("silo-system", &tenant_ca_secret("acme"))
        .await
        .unwrap();
    assert!(w.cluster.delete_behind_our_back(&key("acme", TLS)));
    w.reconcile_all().await;
    let tls = w.secret("acme", TLS).await.expect("recreated");
    let ca_after = w
        .cluster
        .get_secret("silo-system", &tenant_ca_secret("acme"))
        .await
        .unwrap();
    assert_eq!(ca_before, ca_after);
    assert!(tls["tls.crt"].contains(&ca_after.unwrap()["ca.crt"]));
}

#[tokio::test]
async fn tenants_get_different_passwords_and_cas() {
    let w = world().await;
    w.put("a", None, Isolation::Siloed);
    w.put("b", None, Isolation::Siloed);
    w.reconcile_all().await;
    let a = w.secret("a", DB).await.unwrap();
    let b = w.secret("b", DB).await.unwrap();
    assert_ne!(a["password"], b["password"]);
    assert_ne!(
        w.secret("a", MQ).await.unwrap()["password"],
        w.secret("b", MQ).await.unwrap()["password"]
    );
    assert_ne!(
        w.secret("a", TLS).await.unwrap()["ca.crt"],
        w.secret("b", TLS).await.unwrap()["ca.crt"]
    );
}

fn verify_server(bundle_pem: &str, chain_pem: &str, dns: &str) -> Result<(), String> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    use rustls::client::danger::ServerCertVerifier;
    let bundle = TrustBundle::from_pem(bundle_pem).map_err(|e| e.to_string())?;
    let verifier = bundle.server_verifier().map_err(|e| e.to_string())?;
    let chain = certs_from_pem(chain_pem).map_err(|e| e.to_string())?;
    let name =
        rustls_pki_types::ServerName::try_from(dns.to_string()).map_err(|e| e.to_string())?;
    verifier
        .verify_server_cert(
            &chain[0],
            &chain[1..],
            &name,
            &[],
            rustls_pki_types::UnixTime::now(),
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn a_tls_secret_of_an_earlier_build_gets_the_certificate_listener_anchors() {
    let w = world().await;
    w.put("acme", None, Isolation::Siloed);
    w.reconcile_all().await;
    let before = w.secret("acme", TLS).await.unwrap();
    // Control: a current Secret is left alone.
    assert!(w.ensure_in_days("acme", 0).await.written.is_empty());
    // An earlier build wrote no client-ca.crt: the broker would start without its cafile.
    assert!(w.cluster.edit_behind_our_back(&key("acme", TLS), |v| {
        v["data"].as_object_mut().unwrap().remove("client-ca.crt");
    }));
    let done = w.ensure_in_days("acme", 0).await;
    assert_eq!(done.written, vec![format!("tenant-acme/{TLS}")]);
    let after = w.secret("acme", TLS).await.unwrap();
    assert!(after["client-ca.crt"].starts_with("-----BEGIN TRUSTED CERTIFICATE-----\n"));
    assert_eq!(after["ca.crt"], before["ca.crt"], "same tenant CA bundle");
}

#[tokio::test]
async fn tenant_a_broker_cert_does_not_verify_under_tenant_b_ca() {
    let w = world().await;
    w.put("a", None, Isolation::Siloed);
    w.put("b", None, Isolation::Siloed);
    w.reconcile_all().await;
    let a = w.secret("a", TLS).await.unwrap();
    let b = w.secret("b", TLS).await.unwrap();
    let dns_a = "silo-mosquitto.tenant-a.svc";
    verify_server(&a["ca.crt"], &a["tls.crt"], dns_a).expect("A's cert under A's CA");
    let err = verify_server(&b["ca.crt"], &a["tls.crt"], dns_a).unwrap_err();
    assert_eq!(err, "invalid peer certificate: UnknownIssuer");
    // And under the platform root, A's chain verifies for A's name only.
    let root = w
        .cluster
        .get_secret("silo-system", ROOT_CA_SECRET)
        .await
        .unwrap()
        .unwrap();
    verify_server(&root["ca.crt"], &a["tls.crt"], dns_a).expect("chain to the root");
    let err = verify_server(
        &root["ca.crt"],
        &a["tls.crt"],
        "silo-mosquitto.tenant-b.svc",
    )
    .unwrap_err();
    assert!(
        err.starts_with("invalid peer certificate: certificate not valid for name \"silo-mosquitto.tenant-b.svc\""),
        "{err}"
    );
}

#[tokio::test]
async fn shared_tenants_without_shared_services_get_no_credential_secrets() {
    let w = world().await;
    w.put("s", None, Isolation::Shared);
    w.reconcile_all().await;
    for name in [DB, MQ, TLS] {
        assert_eq!(w.secret("s", name).await, None, "{name}");
    }
    assert_eq!(
        w.cluster.writes().secrets,
        1,
        "only the data key Secret (the shared services are not configured)"
    );
    assert!(w.secret("s", "silo-data-key").await.is_some());
    assert!(
        w.cluster
            .get_secret("silo-system", &tenant_ca_secret("s"))
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn a_due_broker_cert_is_renewed_and_passwords_stay() {
    let w = world().await;
    w.put("acme", None, Isolation::Siloed);
    w.reconcile_all().await;
    let db = w.secret("acme", DB).await.unwrap();
    let old = w.secret("acme", TLS).await.unwrap();
    // 61 days on (server certs live 90 days, renewal at two thirds).
    let before = w.cluster.writes().secrets;
    let out = w.ensure_in_days("acme", 61).await;
    assert!(out.database.is_none() && out.broker.is_none(), "{out:?}");
    assert_eq!(out.written, ["tenant-acme/silo-mosquitto-tls"]);
    assert_eq!(w.cluster.writes().secrets, before + 1);
    let new = w.secret("acme", TLS).await.unwrap();
    assert_ne!(new["tls.crt"], old["tls.crt"]);
    assert_ne!(new["tls.key"], old["tls.key"]);
    assert_eq!(new["ca.crt"], old["ca.crt"], "same tenant CA");
    assert_eq!(w.secret("acme", DB).await.unwrap(), db);
    // Now not due any more at that time.
    let out = w.ensure_in_days("acme", 61).await;
    assert!(out.written.is_empty());
}

#[tokio::test]
async fn a_broken_ca_secret_is_reported_in_the_broker_condition() {
    let w = world().await;
    w.put("acme", None, Isolation::Siloed);
    // Someone left an unusable root CA Secret in the platform namespace.
    let bad = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": ROOT_CA_SECRET, "namespace": "silo-system"},
        "data": {"ca.crt": base64::engine::general_purpose::STANDARD.encode("garbage")},
    });
    w.cluster
        .create_secret(
            &ObjectKey::new("Secret", Some("silo-system"), ROOT_CA_SECRET),
            &bad,
        )
        .await
        .unwrap();
    w.reconcile_all().await;
    assert!(
        w.secret("acme", DB).await.is_some(),
        "database part unaffected"
    );
    assert!(w.secret("acme", TLS).await.is_none());
    let status = w.cluster.tenant("acme").unwrap().status.unwrap();
    let broker = status
        .conditions
        .iter()
        .find(|c| c.type_ == "BrokerReady")
        .unwrap();
    assert_eq!(broker.status, "False");
    assert_eq!(broker.reason, "SecretMissing");
    assert!(
        broker.message.contains("credential Secret missing")
            && broker.message.contains("silo-system/silo-root-ca")
            && broker.message.contains("ca.key"),
        "{}",
        broker.message
    );
    let events = w.cluster.events_for("acme");
    assert!(
        events
            .iter()
            .any(|e| e.warning && e.reason == "SecretFailed")
    );
}

#[tokio::test]
async fn the_tenant_ca_key_is_sealed_with_the_tenant_key_only() {
    let w = world().await;
    w.put("acme", None, Isolation::Siloed);
    w.put("beta", None, Isolation::Siloed);
    w.reconcile_all().await;
    let ca = w
        .cluster
        .get_secret("silo-system", &tenant_ca_secret("acme"))
        .await
        .unwrap()
        .unwrap();
    let sealed = base64::engine::general_purpose::STANDARD
        .decode(&ca["ca.key.sealed"])
        .unwrap();
    // Another tenant's key, or another purpose, cannot open it.
    let e = w
        .keys
        .open("beta", secrets::CA_KEY_PURPOSE, &sealed)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("not under tenant \"beta\"'s current key"), "{e}");
    let e = w
        .keys
        .open("acme", "db-credentials", &sealed)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("decryption failed for tenant \"acme\", purpose \"db-credentials\""),
        "{e}"
    );
    // Control: the tenant's own key and purpose open it.
    w.keys
        .open("acme", secrets::CA_KEY_PURPOSE, &sealed)
        .await
        .expect("acme opens its own CA key");
    // Shredding the tenant's key makes the CA key unreadable: a renewal fails loudly.
    w.keys.schedule_key_deletion("acme").await.unwrap();
    let e = w
        .keys
        .open("acme", secrets::CA_KEY_PURPOSE, &sealed)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("is PendingDeletion and cannot be used"), "{e}");
    let out = w.ensure_in_days("acme", 61).await;
    let e = out.broker.expect("renewal must fail").to_string();
    assert!(
        e.contains("silo-system/silo-ca-acme")
            && e.contains("decrypting tenant-ca-key of tenant acme"),
        "{e}"
    );
}

#[tokio::test]
async fn a_plaintext_tenant_ca_key_of_an_older_build_is_sealed() {
    let w = world().await;
    w.put("acme", None, Isolation::Siloed);
    w.reconcile_all().await;
    // What an older build stored: the key in plaintext, no bundle.
    let key = ObjectKey::new("Secret", Some("silo-system"), &tenant_ca_secret("acme"));
    let stored = w
        .cluster
        .get_secret("silo-system", &key.name)
        .await
        .unwrap()
        .unwrap();
    let pem = w.open_ca_key("acme", &stored).await;
    let b64 = base64::engine::general_purpose::STANDARD;
    let legacy = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": key.name, "namespace": "silo-system"},
        "data": {"ca.crt": b64.encode(&stored["ca.crt"]), "ca.key": b64.encode(&pem)},
    });
    assert!(w.cluster.delete_behind_our_back(&key));
    w.cluster.create_secret(&key, &legacy).await.unwrap();
    // The broker certificate is due: the CA is loaded, and sealed on the way.
    let out = w.ensure_in_days("acme", 61).await;
    assert!(out.broker.is_none(), "{out:?}");
    let now = w
        .cluster
        .get_secret("silo-system", &key.name)
        .await
        .unwrap()
        .unwrap();
    assert!(
        !now.contains_key("ca.key"),
        "plaintext gone: {:?}",
        now.keys()
    );
    assert_eq!(now["ca.crt"], stored["ca.crt"], "same CA");
    assert!(now.contains_key("ca.key.sealed"));
}

#[tokio::test]
async fn the_tenant_ca_rotates_at_two_thirds_and_the_broker_trusts_old_and_new() {
    let w = world().await;
    w.put("acme", None, Isolation::Siloed);
    w.reconcile_all().await;
    let old_ca = w
        .cluster
        .get_secret("silo-system", &tenant_ca_secret("acme"))
        .await
        .unwrap()
        .unwrap()["ca.crt"]
        .clone();
    // Tenant CAs live 730 days; two thirds is day 487.
    let out = w.ensure_in_days("acme", 490).await;
    assert!(out.broker.is_none(), "{out:?}");
    let ca = w
        .cluster
        .get_secret("silo-system", &tenant_ca_secret("acme"))
        .await
        .unwrap()
        .unwrap();
    assert_ne!(ca["ca.crt"], old_ca, "a new tenant CA");
    let tls = w.secret("acme", TLS).await.unwrap();
    let trusted = certs_from_pem(&tls["ca.crt"]).unwrap();
    assert_eq!(trusted.len(), 2, "old and new CA trusted together");
    assert_eq!(
        trusted[0],
        certs_from_pem(&ca["ca.crt"]).unwrap()[0],
        "newest first"
    );
    assert_eq!(trusted[1], certs_from_pem(&old_ca).unwrap()[0]);
    let chain = certs_from_pem(&tls["tls.crt"]).unwrap();
    assert_eq!(
        chain[1], trusted[0],
        "the broker cert comes from the new CA"
    );
    let bundle: TrustBundle = serde_json::from_str(&ca["bundle.json"]).unwrap();
    assert!(
        bundle.entries[1].retire_after.is_some(),
        "the old CA has a retirement time"
    );
}

// --- Mosquitto password file against the real broker ---------------------------------------

#[test]
fn our_hash_matches_mosquitto_passwd() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("passwd");
    let out = Command::new("mosquitto_passwd")
        .arg("-c")
        .arg("-b")
        .arg(&file)
        .arg("user")
        .arg("s3cret pass")
        .output()
        .expect("mosquitto_passwd (Mosquitto 2.x) must be installed for this test");
    assert!(out.status.success(), "{out:?}");
    let line = std::fs::read_to_string(&file).unwrap();
    let parts: Vec<&str> = line.trim_end().split('$').collect();
    assert_eq!(parts[0], "user:");
    assert_eq!(parts[1], "7");
    let iterations: u32 = parts[2].parse().unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    let salt = b64.decode(parts[3]).unwrap();
    let hash = b64.decode(parts[4]).unwrap();
    assert_eq!(
        pbkdf2_sha512(b"s3cret pass", &salt, iterations).to_vec(),
        hash
    );
    // Same iteration count as mosquitto_passwd's (a change there must fail here, not skip
    // the comparison), so our whole line equals the tool's.
    assert_eq!(iterations, secrets::PBKDF2_ITERATIONS, "{line}");
    let ours = secrets::mosquitto_password_line_with_salt("user", "s3cret pass", &salt);
    assert_eq!(ours, line);
}

struct Broker {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_mosquitto(passwd: &str) -> Broker {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("passwd");
    std::fs::write(&pw, passwd).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let port = free_port();
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "user root\npersistence false\nlistener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\n",
            pw.display()
        ),
    )
    .unwrap();
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the mosquitto broker (Mosquitto 2.x) must be installed for this test");
    let mut broker = Broker {
        child,
        port,
        _dir: dir,
    };
    for _ in 0..200 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return broker;
        }
        if let Ok(Some(status)) = broker.child.try_wait() {
            panic!("mosquitto exited at start-up: {status}");
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    panic!("mosquitto did not listen on 127.0.0.1:{}", broker.port);
}

fn mqtt_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// MQTT 3.1.1 CONNECT with username and password; returns the CONNACK return code.
fn connect(port: u16, user: &str, password: &str) -> u8 {
    let mut body = Vec::new();
    mqtt_string(&mut body, "MQTT");
    body.push(4); // protocol level 3.1.1
    body.push(0b1100_0010); // username, password, clean session
    body.extend_from_slice(&30u16.to_be_bytes());
    mqtt_string(&mut body, "silo-test");
    mqtt_string(&mut body, user);
    mqtt_string(&mut body, password);
    assert!(body.len() < 128);
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend(body);
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    s.write_all(&packet).unwrap();
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).expect("a CONNACK");
    assert_eq!(&ack[..2], &[0x20, 0x02], "CONNACK header");
    ack[3]
}

#[test]
fn mosquitto_accepts_our_password_file() {
    let line = mosquitto_password_line("silo", "correct-horse-battery-staple-0123456789");
    let broker = start_mosquitto(&line);
    assert_eq!(
        connect(
            broker.port,
            "silo",
            "correct-horse-battery-staple-0123456789"
        ),
        0,
        "right password accepted"
    );
    // Mosquitto 2 answers a failed password check with "not authorised" (5).
    assert_eq!(connect(broker.port, "silo", "wrong"), 5, "wrong password");
    assert_eq!(
        connect(
            broker.port,
            "other",
            "correct-horse-battery-staple-0123456789"
        ),
        5,
        "unknown user"
    );
}
