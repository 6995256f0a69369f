//! Delivery of a master channel to a Siloed tenant (issue 13): the tenant's own Mosquitto,
//! started with the `mosquitto.conf` Silo renders (listeners, Secrets from the real operator
//! pipeline) and the rendered bridge section, bridges from a throwaway shared Mosquitto (the
//! channel endpoint, dynamic security) as the tenant's bridge identity, and receives its own
//! devices' messages and nothing else.

#[path = "mosquitto_support/mod.rs"]
mod mosquitto_support;
#[path = "pg_support/mod.rs"]
mod pg_support;
#[path = "siloed_support/mod.rs"]
mod siloed_support;

use std::collections::BTreeMap;
use std::time::Duration;

use mosquitto_support::{
    Broker, RenderedBroker, TlsProxy, connect, random_password, tls_client_config,
};
use silo::api::devices::device_topic;
use silo::backends::BrokerAccount;
use silo::backends::mosquitto::MosquittoBackend;
use silo::config::PlatformConfig;
use silo::hierarchy::{EngineSettings, Inventory, TenantTree};
use silo::render::{Context, broker};
use silo::types::{Tenant, TenantSpec};
use siloed_support::{broker_host, reconciled};

const MQTT_USER: &str = silo::operator::reconcile::secrets::MQTT_USER;

/// A dynsec client on the shared broker allowed exactly `topics`.
async fn client(shared: &Broker, user: &str, topics: Vec<String>) -> String {
    let pw = random_password();
    MosquittoBackend::new("127.0.0.1", shared.port, shared.admin.clone())
        .ensure_client(&BrokerAccount {
            tenant: user.into(),
            username: user.into(),
            password: pw.clone(),
            reset_password: true,
            role: user.into(),
            topics,
            enabled: true,
        })
        .await
        .unwrap();
    pw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_siloed_broker_bridges_in_its_own_devices_messages_and_nothing_else() {
    let shared = Broker::start();
    // The Siloed tenant's Secrets (TLS, password file) from the operator pipeline.
    let silo = reconciled(vec![Tenant::new("s", TenantSpec::default())]).await;
    let tls = silo.secret("s", broker::BROKER_TLS_SECRET).await;
    let auth = silo.secret("s", broker::BROKER_CREDENTIALS_SECRET).await;
    let app_password = auth["password"].clone();

    // The tenant uses channels trk and gps; the platform's channel endpoint is `shared`.
    let mut config = PlatformConfig::default();
    config.shared.mosquitto.host = "127.0.0.1".into();
    config.shared.mosquitto.port = shared.port;
    let t = Tenant::new(
        "s",
        TenantSpec {
            channels: vec!["trk".into(), "gps".into()],
            ..Default::default()
        },
    );
    let tree = TenantTree::build(
        Inventory {
            tenants: vec![t.clone()],
            ..Default::default()
        },
        EngineSettings::default(),
    );
    let cx = Context::new(&tree, tree.get("s").unwrap(), &config);
    let conf = broker::mosquitto_conf(&cx);
    assert!(
        conf.contains("#   channels/gps/s/#\n#   channels/trk/s/#\n"),
        "{conf}"
    );
    assert!(conf.ends_with("include_dir /mosquitto/bridge\n"), "{conf}");
    assert!(
        !conf.contains("remote_password"),
        "the ConfigMap must not hold the password"
    );

    // The bridge identity, as the operator makes it: only the tenant's part of its channels.
    let topics = broker::bridge_topics("s", &["trk".into(), "gps".into()]);
    assert_eq!(topics, ["channels/gps/s/#", "channels/trk/s/#"]);
    let bridge_pw = client(&shared, &broker::bridge_username("s"), topics).await;
    let bridge = BTreeMap::from([(
        broker::BRIDGE_FILE.to_string(),
        broker::bridge_conf(&config, &t, &bridge_pw),
    )]);
    let b = RenderedBroker::start(
        &conf,
        &[
            (broker::TLS_DIR, &tls),
            (broker::AUTH_DIR, &auth),
            (broker::BRIDGE_DIR, &bridge),
        ],
    );

    // The tenant's application on its own broker (TLS listener), subscribed to everything.
    let root = silo.platform_root_pem().await;
    let proxy = TlsProxy::start(
        b.port(broker::BROKER_TLS_PORT),
        tls_client_config(&root, None),
        &broker_host("s"),
    )
    .await;
    let mut app = connect(proxy.port, MQTT_USER, &app_password).await.unwrap();
    assert!(app.subscribe("#").await);

    // Devices on the shared endpoint: two of s, one of another tenant o on the same channel.
    let d1_topic = device_topic("trk", "s", "d1");
    let d1_pw = client(&shared, "s.d1", vec![d1_topic.clone()]).await;
    let g1_pw = client(&shared, "s.g1", vec![device_topic("gps", "s", "g1")]).await;
    let o1_pw = client(&shared, "o.e1", vec![device_topic("trk", "o", "e1")]).await;
    let d1 = connect(shared.port, "s.d1", &d1_pw).await.unwrap();
    let g1 = connect(shared.port, "s.g1", &g1_pw).await.unwrap();
    let o1 = connect(shared.port, "o.e1", &o1_pw).await.unwrap();

    // Wait for the bridge: d1's messages arrive once it is connected and subscribed.
    let own = "channels/trk/s/devices/d1/telemetry";
    let mut arrived = None;
    for i in 0..100 {
        d1.publish(own, &format!("m{i}")).await;
        if let Some(m) = app.next_message(Duration::from_millis(200)).await {
            arrived = Some(m);
            break;
        }
    }
    let (topic, _) = arrived.unwrap_or_else(|| panic!("bridge never delivered:\n{}", b.log()));
    assert_eq!(topic, own);
    let _ = app.messages(Duration::from_millis(500)).await; // the rest of the probe burst

    // Both channels arrive.
    g1.publish("channels/gps/s/devices/g1/fix", "52.1,4.3")
        .await;
    assert_eq!(
        app.next_message(Duration::from_secs(5)).await,
        Some(("channels/gps/s/devices/g1/fix".into(), "52.1,4.3".into()))
    );

    // The other tenant's device on the same channel: nothing reaches s's broker. Neither does
    // d1 publishing outside its prefix. Then d1's own message does (positive control).
    o1.publish("channels/trk/o/devices/e1/telemetry", "other")
        .await;
    d1.publish("channels/trk/o/devices/e1/telemetry", "cross")
        .await;
    d1.publish("channels/trk/s/devices/g1/x", "cross").await;
    app.assert_nothing_but_control(Duration::from_millis(700), &d1, own, "control")
        .await;

    // The bridge identity itself can read nothing else on the endpoint.
    let mut id = connect(shared.port, &broker::bridge_username("s"), &bridge_pw)
        .await
        .unwrap();
    for f in [
        "channels/trk/#",
        "#",
        "channels/trk/o/#",
        "$share/g/channels/trk/o/#",
    ] {
        assert!(
            !id.subscribe(f).await,
            "bridge identity may subscribe to {f}"
        );
    }
    assert!(id.subscribe("channels/trk/s/#").await);
}
