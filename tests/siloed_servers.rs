//! The Siloed tenant's servers run with the configuration Silo renders: Mosquitto with the
//! `mosquitto.conf` the operator applied (and the Secrets it reconciled), PostgreSQL with the
//! server options of the rendered StatefulSet. Each is started for real and checked for the
//! sockets it listens on and the limits it enforces.

#[path = "mosquitto_support/mod.rs"]
mod mosquitto_support;
#[path = "pg_support/mod.rs"]
mod pg_support;
#[path = "siloed_support/mod.rs"]
mod siloed_support;

use std::collections::BTreeSet;
use std::time::Duration;

use mosquitto_support::{
    TlsProxy, connect, listening_tcp_ports, listening_unix_sockets, raw_connect, tls_client_config,
    tls_connect,
};
use silo::pki::issue_device_cert;
use silo::render::{broker, database};
use silo::types::tenant::MqttSpec;
use silo::types::{Tenant, TenantSpec};
use siloed_support::{broker_host, reconciled};

const MQTT_USER: &str = silo::operator::reconcile::secrets::MQTT_USER;

fn tenant(name: &str, max_connections: Option<i64>, limit: Option<i64>) -> Tenant {
    let mut t = Tenant::new(
        name,
        TenantSpec {
            display_name: name.into(),
            ..Default::default()
        },
    );
    t.spec.mqtt = max_connections.map(|v| MqttSpec {
        max_connections: Some(v),
    });
    t.spec.limits.mqtt_connections = limit;
    t
}

/// Ports a process listens on, without the address family.
fn ports(pid: u32) -> BTreeSet<u16> {
    listening_tcp_ports(pid)
        .into_iter()
        .map(|(_, p)| p)
        .collect()
}

#[tokio::test]
async fn the_rendered_broker_listens_only_on_its_two_tls_listeners() {
    // The issue's example: a tenant with `mqttConnections: 500`.
    let silo = reconciled(vec![tenant("t", None, Some(500))]).await;
    let b = silo.start_broker("t").await;
    let tls = b.port(broker::BROKER_TLS_PORT);
    let cert = b.port(broker::BROKER_CERT_PORT);
    assert_eq!(b.ports.len(), 2, "{}", b.conf);
    assert_eq!(ports(b.pid()), BTreeSet::from([tls, cert]), "{}", b.log());
    assert!(
        !b.log().contains("port 1883"),
        "a default listener was opened:\n{}",
        b.log()
    );

    // 8883 speaks TLS only: a plaintext MQTT CONNECT gets no CONNACK, the connection ends.
    let mut plain = tokio::net::TcpStream::connect(("127.0.0.1", tls))
        .await
        .unwrap();
    let err = raw_connect(&mut plain, "plain", Some((MQTT_USER, "x")))
        .await
        .expect_err("a plaintext CONNECT was answered on the TLS listener");
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
        ),
        "{err:?}"
    );

    // Positive control on the same listener: TLS with the reconciled password logs in.
    let root = silo.platform_root_pem().await;
    let password = silo.secret("t", broker::BROKER_CREDENTIALS_SECRET).await["password"].clone();
    let mut s = tls_connect(tls, tls_client_config(&root, None), &broker_host("t"))
        .await
        .unwrap();
    assert_eq!(
        raw_connect(&mut s, "app", Some((MQTT_USER, &password)))
            .await
            .unwrap(),
        0
    );
}

/// Open TLS connections to `port` until `n` are logged in (CONNACK 0), keeping them open.
async fn fill(
    port: u16,
    config: std::sync::Arc<rustls::ClientConfig>,
    host: &str,
    login: Option<(&str, &str)>,
    n: usize,
) -> Vec<mosquitto_support::TlsStream> {
    let mut held = Vec::new();
    for i in 0..n {
        let mut s = tls_connect(port, config.clone(), host)
            .await
            .unwrap_or_else(|e| panic!("connection {i} of {n}: {e}"));
        assert_eq!(
            raw_connect(&mut s, &format!("c{i}"), login).await.unwrap(),
            0
        );
        held.push(s);
    }
    held
}

/// One connection over the cap: the broker accepts the TCP connection and closes it at once
/// (its log names max_connections), so the TLS handshake ends without an answer.
async fn assert_over_cap(
    b: &mosquitto_support::RenderedBroker,
    port: u16,
    config: std::sync::Arc<rustls::ClientConfig>,
    host: &str,
) {
    let denied = "denied: max_connections exceeded";
    let before = b.log().matches(denied).count();
    let err = match tls_connect(port, config, host).await {
        Err(e) => e,
        Ok(mut s) => raw_connect(&mut s, "over", None)
            .await
            .expect_err("a connection over the cap was served"),
    };
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
        ),
        "{err:?}"
    );
    // The broker logs the refusal (bounded wait: the log is written asynchronously).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while b.log().matches(denied).count() == before {
        assert!(
            std::time::Instant::now() < deadline,
            "no max_connections refusal logged:\n{}",
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn each_listener_holds_exactly_the_tenants_connection_cap() {
    // spec.mqtt.maxConnections 3 under an mqttConnections limit of 10: the cap is 3.
    let silo = reconciled(vec![tenant("t", Some(3), Some(10))]).await;
    let b = silo.start_broker("t").await;
    let host = broker_host("t");
    let root = silo.platform_root_pem().await;
    let password = silo.secret("t", broker::BROKER_CREDENTIALS_SECRET).await["password"].clone();
    let tls = b.port(broker::BROKER_TLS_PORT);
    let server_only = tls_client_config(&root, None);

    let mut held = fill(
        tls,
        server_only.clone(),
        &host,
        Some((MQTT_USER, &password)),
        3,
    )
    .await;
    assert_over_cap(&b, tls, server_only.clone(), &host).await;
    // Positive control: with one connection closed, the next one is served.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let again = fill(
        tls,
        server_only.clone(),
        &host,
        Some((MQTT_USER, &password)),
        1,
    )
    .await;
    assert_eq!(again.len(), 1);

    // The certificate listener has the same cap of its own.
    let ca = silo.tenant_ca("t").await;
    let dev = issue_device_cert(&ca, "meter-1").unwrap();
    let with_cert = tls_client_config(&root, Some((&dev.cert_pem, &dev.key_pem)));
    let cert = b.port(broker::BROKER_CERT_PORT);
    let mut devices = fill(cert, with_cert.clone(), &host, None, 3).await;
    assert_over_cap(&b, cert, with_cert.clone(), &host).await;
    drop(devices.pop());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fill(cert, with_cert, &host, None, 1).await.len(), 1);
}

#[tokio::test]
async fn a_broker_without_a_cap_has_none() {
    // No cap anywhere: `max_connections -1` on both listeners. Twenty connections pass.
    let silo = reconciled(vec![tenant("t", None, None)]).await;
    let b = silo.start_broker("t").await;
    assert_eq!(
        b.conf.matches("max_connections -1\n").count(),
        2,
        "{}",
        b.conf
    );
    let root = silo.platform_root_pem().await;
    let password = silo.secret("t", broker::BROKER_CREDENTIALS_SECRET).await["password"].clone();
    let held = fill(
        b.port(broker::BROKER_TLS_PORT),
        tls_client_config(&root, None),
        &broker_host("t"),
        Some((MQTT_USER, &password)),
        20,
    )
    .await;
    assert_eq!(held.len(), 20);
}

#[tokio::test]
async fn password_clients_publish_and_subscribe_through_the_tls_listener() {
    // The rumqttc client through a local TLS proxy: the listener serves real MQTT traffic.
    let silo = reconciled(vec![tenant("t", None, None)]).await;
    let b = silo.start_broker("t").await;
    let root = silo.platform_root_pem().await;
    let password = silo.secret("t", broker::BROKER_CREDENTIALS_SECRET).await["password"].clone();
    let proxy = TlsProxy::start(
        b.port(broker::BROKER_TLS_PORT),
        tls_client_config(&root, None),
        &broker_host("t"),
    )
    .await;
    let mut c = connect(proxy.port, MQTT_USER, &password).await.unwrap();
    assert!(c.subscribe("fleet/#").await);
    c.publish("fleet/1", "hello").await;
    assert_eq!(
        c.next_message(Duration::from_secs(10)).await,
        Some(("fleet/1".to_string(), "hello".to_string()))
    );
}

#[tokio::test]
async fn the_rendered_postgres_listens_on_its_port_and_socket_only() {
    let silo = reconciled(vec![tenant("t", None, None)]).await;
    let key = silo::operator::cluster::ObjectKey::new(
        "StatefulSet",
        Some("tenant-t"),
        database::DATABASE_NAME,
    );
    let sts = silo.cluster.get(&key).expect("StatefulSet applied");
    let args: Vec<String> = sts["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .expect("rendered server arguments")
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    let pg = pg_support::PgServer::start_rendered(&args).await;
    let pid = pg.pid();
    // Every address (`*`): IPv4 and, where the machine has it, IPv6; one port.
    assert!(
        listening_tcp_ports(pid).contains(&("ipv4".to_string(), pg.port)),
        "rendered: {args:?}"
    );
    assert_eq!(ports(pid), BTreeSet::from([pg.port]), "rendered: {args:?}");
    assert_eq!(
        listening_unix_sockets(pid),
        BTreeSet::from([format!(
            "{}/.s.PGSQL.{}",
            pg.socket_dir().display(),
            pg.port
        )]),
        "rendered: {args:?}"
    );
    // The server runs the rendered settings (the port and socket dir mapped for the test).
    let su = pg.superuser().await;
    let show = |name: &'static str| {
        let su = &su;
        async move {
            su.query_one(&format!("SHOW {name}"), &[])
                .await
                .unwrap()
                .get::<_, String>(0)
        }
    };
    assert_eq!(show("listen_addresses").await, "*");
    assert_eq!(show("port").await, pg.port.to_string());
}

#[tokio::test]
async fn a_tenant_whose_mqtt_is_prohibited_runs_no_broker() {
    // `mqttConnections: 0` means prohibited, but `max_connections 0` is unlimited to
    // Mosquitto: the broker is not run at all, and the tenant is not held back by it.
    let silo = reconciled(vec![
        tenant("off", None, Some(0)),
        tenant("on", None, Some(1)),
    ])
    .await;
    for (name, replicas) in [("off", 0), ("on", 1)] {
        let key = silo::operator::cluster::ObjectKey::new(
            "Deployment",
            Some(&format!("tenant-{name}")),
            broker::BROKER_NAME,
        );
        let dep = silo.cluster.get(&key).expect("Deployment applied");
        assert_eq!(dep["spec"]["replicas"], replicas, "{name}");
    }
    let st = silo.cluster.tenant("off").unwrap().status.unwrap();
    let c = st
        .conditions
        .iter()
        .find(|c| c.type_ == "BrokerReady")
        .expect("BrokerReady");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", "Prohibited"),
        "{}",
        c.message
    );
    assert!(c.message.contains("connection cap is 0"), "{}", c.message);
}
