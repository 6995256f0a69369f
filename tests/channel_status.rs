//! Channel status and devices usage from real servers (issue 13, deliver items 2 and 5): a
//! throwaway Mosquitto 2 (dynamic security, `log_dest topic`, `sys_interval 1`) as the channel
//! endpoint, a throwaway PostgreSQL as the device registry, devices registered through the
//! real API, and the operator's code writing to the in-memory cluster:
//!
//! - `connectedDevices` follows a device connecting and disconnecting, on its channel only;
//!   stopping the broker turns `Ready` False (`BrokerUnreachable`, with the error, one Warning
//!   event) and a restarted broker turns it True again; 100 devices connecting at once are
//!   all counted;
//! - the registry's counts become each Tenant's `status.usage.devices` (own and subtree),
//!   equal to `GET /v1/tenants/{name}/usage` and the tree, also after a deletion.

mod api_support;
mod mosquitto_support;
mod pg_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use api_support::{Env, four_levels};
use mosquitto_support::{Broker, connect};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use silo::api::testing::MemoryApiCluster;
use silo::config::PlatformConfig;
use silo::operator::Reconciler;
use silo::operator::broker_observer::BrokerObserver;
use silo::operator::channels::{
    self, BROKER_REACHABLE, BROKER_UNREACHABLE, CLIENTS_UNSEEN, DEVICES_COUNTED,
};
use silo::operator::cluster::memory::MemoryCluster;
use silo::operator::key_service::ProviderKeys;
use silo::operator::reconcile::pass::reconcile_pass;
use silo::operator::registry::{DeviceUsage, Registry, usage_loop};
use silo::types::{Channel, ChannelSpec, ChannelStatus, Tenant};

const TRK: &str = "trk";
const GPS: &str = "gps";

fn channel(name: &str) -> Channel {
    Channel::new(
        name,
        ChannelSpec {
            owner: "platform".into(),
            ..Default::default()
        },
    )
}

/// The four-level tree: `dist-a`'s subtree uses `trk`, `dist-b`'s uses `gps`.
fn tree() -> Vec<Tenant> {
    let mut t = four_levels();
    for x in t.iter_mut().skip(1) {
        let ch = if x.name().ends_with("-a") { TRK } else { GPS };
        x.spec.channels = vec![ch.to_string()];
    }
    t
}

struct World {
    env: Env,
    broker: Broker,
    token: String,
}

async fn start() -> World {
    let broker = Broker::start();
    let cluster = MemoryApiCluster::new();
    cluster.put_channel(channel(TRK));
    cluster.put_channel(channel(GPS));
    let (port, pw) = (broker.port, broker.admin.password.clone());
    let env = Env::start_with(tree(), cluster, |c| {
        c.api.rate_limit_per_second = 0;
        c.shared.mosquitto.host = "127.0.0.1".into();
        c.shared.mosquitto.port = port;
        c.api.broker.username = mosquitto_support::ADMIN_USER.to_string();
        c.api.broker.password = pw;
    })
    .await;
    let token = env.token("platform", "admin").await;
    World { env, broker, token }
}

impl World {
    async fn register(&self, tenant: &str, id: &str, channel: &str) -> Value {
        let (s, b) = self
            .env
            .post(
                &format!("/v1/tenants/{tenant}/devices"),
                &self.token,
                json!({"id": id, "channel": channel, "auth": "password"}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        b
    }

    fn registry(&self) -> Registry {
        Registry::new(&self.env.config.api.database).expect("registry")
    }
}

/// The operator's cluster with the tree's tenants and both channels.
fn operator_cluster() -> Arc<MemoryCluster> {
    let op = Arc::new(MemoryCluster::new());
    for t in tree() {
        op.put_tenant(t);
    }
    op.put_channel(channel(TRK));
    op.put_channel(channel(GPS));
    op
}

fn status(op: &MemoryCluster, name: &str) -> ChannelStatus {
    op.channel(name).and_then(|c| c.status).unwrap_or_default()
}

/// Runs channel status rounds (as the leader's loop does) until `ok` holds for both
/// channels' statuses; panics with the last statuses after 20 s.
async fn until(
    op: &MemoryCluster,
    port: u16,
    registry: &Registry,
    observer: &BrokerObserver,
    what: &str,
    ok: impl Fn(&ChannelStatus, &ChannelStatus) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let endpoint = ("127.0.0.1".to_string(), port);
    loop {
        let (trk, gps) = (op.channel(TRK).unwrap(), op.channel(GPS).unwrap());
        let view = observer.view();
        let (_, errors) = channels::round(
            op,
            &[&trk, &gps],
            &[] as &[&silo::types::Tenant],
            Some(&endpoint),
            Some(registry),
            Some(&view),
        )
        .await;
        let (a, b) = (status(op, TRK), status(op, GPS));
        if ok(&a, &b) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not reached in 20 s\ntrk: {a:?}\ngps: {b:?}\nview: {view:?}\nerrors: {errors:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn condition<'a>(s: &'a ChannelStatus, type_: &str) -> Option<(&'a str, &'a str, &'a str)> {
    s.conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.as_str(), c.reason.as_str(), c.message.as_str()))
}

fn ready(s: &ChannelStatus) -> Option<(&str, &str, &str)> {
    condition(s, "Ready")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connected_devices_follow_the_broker_and_ready_reports_it_unreachable() {
    let mut w = start().await;
    let d1 = w.register("cust-a", "d1", TRK).await;
    w.register("cust-b", "d2", GPS).await;
    let port = w.broker.port;
    let op = operator_cluster();
    let registry = w.registry();
    let observer = BrokerObserver::spawn("127.0.0.1", port, w.broker.admin.clone());

    // Nothing connected yet: both known (0), registered 1 each, Ready True.
    until(&op, port, &registry, &observer, "idle", |a, b| {
        a.connected_devices == Some(0)
            && b.connected_devices == Some(0)
            && condition(a, DEVICES_COUNTED).is_some_and(|c| c.0 != "Unknown")
    })
    .await;
    let (a, b) = (status(&op, TRK), status(&op, GPS));
    assert_eq!(
        (a.registered_devices, b.registered_devices),
        (Some(1), Some(1))
    );
    assert_eq!(
        ready(&a).map(|r| (r.0, r.1)),
        Some(("True", BROKER_REACHABLE))
    );
    // The API's admin connection (made while registering, before the observer started) was
    // never announced to the observer: the count is a lower bound, and says so.
    let (st, reason, message) = condition(&a, DEVICES_COUNTED).unwrap();
    assert_eq!((st, reason), ("False", CLIENTS_UNSEEN), "{message}");
    assert!(
        message.starts_with("1 client(s) connected to the broker before"),
        "{message}"
    );
    assert_eq!(
        a.endpoint.as_deref(),
        Some(format!("127.0.0.1:{port}/channels/trk/").as_str())
    );

    // A client that is not a device (the test's admin login) changes nothing.
    let admin = connect(
        port,
        mosquitto_support::ADMIN_USER,
        &w.broker.admin.password,
    )
    .await
    .unwrap();
    // d1 (cust-a, trk) connects: trk 1, gps still 0.
    let dev = connect(
        port,
        d1["username"].as_str().unwrap(),
        d1["password"].as_str().unwrap(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e:?}\n{}", w.broker.log()));
    until(&op, port, &registry, &observer, "d1 connected", |a, b| {
        a.connected_devices == Some(1) && b.connected_devices == Some(0)
    })
    .await;
    drop(admin);
    // Steady: another round writes nothing.
    let writes = op.writes().status_patches;
    until(&op, port, &registry, &observer, "steady", |_, _| true).await;
    assert_eq!(
        op.writes().status_patches,
        writes,
        "an unchanged status is not written"
    );

    // d1 goes away: 0.
    drop(dev);
    until(
        &op,
        port,
        &registry,
        &observer,
        "d1 disconnected",
        |a, b| a.connected_devices == Some(0) && b.connected_devices == Some(0),
    )
    .await;
    assert!(op.events_for("Channel/trk").is_empty());

    // The broker stops: Ready False with the error, the count omitted, one Warning event.
    w.broker.stop();
    // (The first error may be the lost connection; the next attempts are refused.)
    until(&op, port, &registry, &observer, "broker stopped", |a, b| {
        ready(a).is_some_and(|r| r.0 == "False" && r.2.contains("refused"))
            && ready(b).is_some_and(|r| r.0 == "False")
    })
    .await;
    let a = status(&op, TRK);
    let (_, reason, message) = ready(&a).unwrap();
    assert_eq!(reason, BROKER_UNREACHABLE);
    assert!(
        message.contains(&format!("cannot reach 127.0.0.1:{port}")) && message.contains("refused"),
        "{message}"
    );
    assert_eq!(a.connected_devices, None, "unknown while unreachable");
    assert_eq!(a.registered_devices, Some(1), "the registry still answers");
    let events = op.events_for("Channel/trk");
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(events[0].warning);
    assert_eq!(events[0].reason, BROKER_UNREACHABLE);
    assert!(
        events[0]
            .note
            .contains(&format!("cannot reach 127.0.0.1:{port}")),
        "{}",
        events[0].note
    );

    // Restarted on the same port: True again (the observer reconnects), a Normal event.
    w.broker = Broker::start_at(port, w.broker.admin.password.clone());
    until(
        &op,
        port,
        &registry,
        &observer,
        "broker restarted",
        |a, b| ready(a).is_some_and(|r| r.0 == "True") && ready(b).is_some_and(|r| r.0 == "True"),
    )
    .await;
    let events = op.events_for("Channel/trk");
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(!events[1].warning);
    assert_eq!(events[1].reason, BROKER_REACHABLE);
    // The restarted broker has only clients the observer saw: the count is exact again.
    until(
        &op,
        port,
        &registry,
        &observer,
        "count exact again",
        |a, _| {
            a.connected_devices == Some(0)
                && condition(a, DEVICES_COUNTED).is_some_and(|c| c.0 == "True")
        },
    )
    .await;
}

/// `devices` of `usage` from the API: (own, subtree).
fn api_devices(usage: &Value) -> (i64, i64) {
    let d = &usage["counts"]["devices"];
    (d["own"].as_i64().unwrap(), d["subtree"].as_i64().unwrap())
}

fn tenant_devices(op: &MemoryCluster, name: &str) -> (i64, i64) {
    let u = op
        .tenant(name)
        .and_then(|t| t.status)
        .and_then(|s| s.usage)
        .unwrap_or_else(|| panic!("{name} has no status.usage"));
    (u.own.devices, u.subtree.devices)
}

/// Every tenant's `status.usage.devices` equals the API's `/usage` and its tree node.
async fn assert_agree(w: &World, op: &MemoryCluster) {
    let (s, tree) = w.env.get("/v1/tenants/platform/tree", &w.token).await;
    assert_eq!(s, StatusCode::OK, "{tree}");
    let mut nodes = vec![&tree];
    let mut in_tree = std::collections::BTreeMap::new();
    while let Some(n) = nodes.pop() {
        in_tree.insert(
            n["name"].as_str().unwrap().to_string(),
            (
                n["usage"]["own"]["devices"].as_i64().unwrap_or(0),
                n["usage"]["subtree"]["devices"].as_i64().unwrap_or(0),
            ),
        );
        nodes.extend(n["children"].as_array().unwrap());
    }
    for t in tree_names() {
        let (s, u) = w.env.get(&format!("/v1/tenants/{t}/usage"), &w.token).await;
        assert_eq!(s, StatusCode::OK, "{u}");
        let api = api_devices(&u);
        assert_eq!(tenant_devices(op, &t), api, "{t}: status.usage vs /usage");
        assert_eq!(in_tree.get(&t), Some(&api), "{t}: tree vs /usage");
    }
}

fn tree_names() -> Vec<String> {
    tree().iter().map(|t| t.name().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_counts_become_tenant_usage_and_agree_with_the_api() {
    let w = start().await;
    w.register("cust-a", "a1", TRK).await;
    w.register("cust-a", "a2", TRK).await;
    w.register("dealer-a", "a3", TRK).await;
    w.register("cust-b", "b1", GPS).await;

    let op = operator_cluster();
    let usage = Arc::new(DeviceUsage::new());
    let keys = Arc::new(ProviderKeys::in_memory().await.unwrap());
    let rec = Reconciler::new(op.clone(), PlatformConfig::default(), keys, None)
        .with_device_usage(usage.clone());
    let registry = w.registry();

    // Before the registry is read, nothing is claimed: devices stay 0 (stored/none).
    let pass = reconcile_pass(&rec, op.inventory()).await;
    assert!(pass.failures().is_empty(), "{:?}", pass.failures());
    assert_eq!(tenant_devices(&op, "cust-a"), (0, 0));

    // The leader's refresh loop: one grouped read for all tenants every 10 s; the first load
    // concerns everyone, later ones name the tenants whose counts moved.
    let (tx, mut triggered) = tokio::sync::mpsc::unbounded_channel();
    let (_stop, stop) = tokio::sync::watch::channel(false);
    let refresh = tokio::spawn(usage_loop(
        Arc::new(registry),
        usage.clone(),
        async {},
        move |names| {
            let _ = tx.send(names);
        },
        stop,
    ));
    let first = tokio::time::timeout(Duration::from_secs(15), triggered.recv())
        .await
        .expect("first refresh")
        .unwrap();
    assert_eq!(first, None, "first load: every tenant");
    let pass = reconcile_pass(&rec, op.inventory()).await;
    assert!(pass.failures().is_empty(), "{:?}", pass.failures());
    assert_eq!(tenant_devices(&op, "cust-a"), (2, 2));
    assert_eq!(tenant_devices(&op, "dealer-a"), (1, 3));
    assert_eq!(tenant_devices(&op, "dist-a"), (0, 3));
    assert_eq!(tenant_devices(&op, "cust-b"), (1, 1));
    assert_eq!(tenant_devices(&op, "platform"), (0, 4));
    assert_agree(&w, &op).await;

    // A deletion through the API: the refresh names exactly the tenants whose counts moved.
    let (s, b) = w
        .env
        .call(
            Method::DELETE,
            "/v1/tenants/cust-a/devices/a1",
            Some(&w.token),
            None,
        )
        .await;
    assert!(s.is_success(), "{s} {b}");
    let changed = tokio::time::timeout(Duration::from_secs(15), triggered.recv())
        .await
        .expect("a refresh after the deletion")
        .unwrap();
    assert_eq!(
        changed,
        Some(
            ["cust-a", "dealer-a", "dist-a", "platform"]
                .map(String::from)
                .to_vec()
        )
    );
    let pass = reconcile_pass(&rec, op.inventory()).await;
    assert!(pass.failures().is_empty(), "{:?}", pass.failures());
    assert_eq!(tenant_devices(&op, "cust-a"), (1, 1));
    assert_eq!(tenant_devices(&op, "platform"), (0, 3));
    assert_agree(&w, &op).await;
    refresh.abort();
}

/// 100 devices connecting at once are all counted on their channel (none lost among the
/// notices), and all disconnecting brings it back to 0; prints how long the count took.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_connections_is_counted_exactly() {
    const N: usize = 100;
    let w = start().await;
    let mut creds = Vec::new();
    for i in 0..N {
        creds.push(w.register("cust-a", &format!("b{i}"), TRK).await);
    }
    let port = w.broker.port;
    let op = operator_cluster();
    let registry = w.registry();
    let observer = BrokerObserver::spawn("127.0.0.1", port, w.broker.admin.clone());
    until(&op, port, &registry, &observer, "idle", |a, _| {
        a.connected_devices == Some(0)
            && condition(a, DEVICES_COUNTED).is_some_and(|c| c.0 != "Unknown")
    })
    .await;
    let started = Instant::now();
    let conns = futures::future::join_all(creds.iter().map(|c| {
        connect(
            port,
            c["username"].as_str().unwrap(),
            c["password"].as_str().unwrap(),
        )
    }))
    .await;
    let conns: Vec<_> = conns.into_iter().map(|c| c.unwrap()).collect();
    let connected_in = started.elapsed();
    until(&op, port, &registry, &observer, "all connected", |a, b| {
        a.connected_devices == Some(N as i64) && b.connected_devices == Some(0)
    })
    .await;
    println!(
        "{N} devices: connected in {connected_in:?}, counted on the channel {:?} after the first CONNECT",
        started.elapsed()
    );
    drop(conns);
    until(&op, port, &registry, &observer, "all gone", |a, _| {
        a.connected_devices == Some(0)
    })
    .await;
}
