//! One master channel serving 100 tenants, on real servers: a throwaway PostgreSQL (the
//! device registry) and a throwaway Mosquitto with the dynamic-security plugin (the channel
//! endpoint), `silo api` over HTTP on loopback.
//!
//! - Device registrations per second through the API (HTTP → limit locks in PostgreSQL →
//!   dynsec client on the broker → commit), sequential and 8 at a time.
//! - Message throughput through the channel to 100 tenants' prefixes: one device per tenant
//!   publishes (QoS 1) under its own prefix, each tenant's Shared client (ACLs as the operator
//!   makes them) subscribes to `channels/trk/<tenant>/#`; messages/s, p50/p99 latency from
//!   publish to delivery, and cross-delivered messages (a tenant receiving another tenant's
//!   message), which must be 0.
//!
//! Client, server and broker share the machine (2 cores): the rates are a lower bound.
//! Run: `cargo bench --bench channel`.

#[path = "../tests/api_support/mod.rs"]
mod api_support;
#[path = "../tests/mosquitto_support/mod.rs"]
mod mosquitto_support;
#[path = "../tests/pg_support/mod.rs"]
mod pg_support;

use std::time::{Duration, Instant};

use api_support::{Env, call_at};
use mosquitto_support::{Broker, connect, random_password};
use reqwest::{Method, StatusCode};
use serde_json::json;
use silo::api::testing::MemoryApiCluster;
use silo::backends::BrokerAccount;
use silo::backends::mosquitto::MosquittoBackend;
use silo::types::{Channel, ChannelSpec, Tenant, TenantSpec};

const TENANTS: usize = 100;
const MESSAGES_PER_DEVICE: usize = 100;
const CH: &str = "trk";

fn tenant_name(i: usize) -> String {
    format!("t{i:03}")
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let broker = Broker::start();
    let cluster = MemoryApiCluster::new();
    cluster.put_channel(Channel::new(
        CH,
        ChannelSpec {
            owner: "platform".into(),
            ..Default::default()
        },
    ));
    let mut tenants = vec![Tenant::new("platform", TenantSpec::default())];
    for i in 0..TENANTS {
        tenants.push(Tenant::new(
            &tenant_name(i),
            TenantSpec {
                parent: Some("platform".into()),
                channels: vec![CH.into()],
                ..Default::default()
            },
        ));
    }
    tenants[0].spec.limits.devices = Some(1_000_000);
    let (port, pw) = (broker.port, broker.admin.password.clone());
    let env = Env::start_with(tenants, cluster, |c| {
        c.api.rate_limit_per_second = 0;
        c.shared.mosquitto.host = "127.0.0.1".into();
        c.shared.mosquitto.port = port;
        c.api.broker.username = mosquitto_support::ADMIN_USER.into();
        c.api.broker.password = pw;
    })
    .await;
    let token = env.token("platform", "admin").await;

    // Registrations: one device per tenant sequentially (the ones that publish below), then
    // 400 more 8 at a time.
    let mut passwords = Vec::new();
    let started = Instant::now();
    for i in 0..TENANTS {
        let (s, b) = env
            .post(
                &format!("/v1/tenants/{}/devices", tenant_name(i)),
                &token,
                json!({"id": "d0", "channel": CH, "auth": "password"}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        passwords.push(b["password"].as_str().unwrap_or_default().to_string());
    }
    let sequential = TENANTS as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    let extra = 400;
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (http, base, token) = (env.http.clone(), env.base.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            for k in (w..extra).step_by(8) {
                let (s, b) = call_at(
                    &http,
                    &base,
                    Method::POST,
                    &format!("/v1/tenants/{}/devices", tenant_name(k % TENANTS)),
                    Some(&token),
                    Some(json!({"id": format!("x{k}"), "channel": CH, "auth": "password"})),
                )
                .await;
                assert_eq!(s, StatusCode::CREATED, "{b}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let concurrent = extra as f64 / started.elapsed().as_secs_f64();
    println!(
        "registrations: {sequential:.0}/s sequential, {concurrent:.0}/s 8 at a time (HTTP → PostgreSQL limit locks → dynsec client)"
    );

    // Each tenant's Shared client, as the operator makes it.
    let backend = MosquittoBackend::new("127.0.0.1", broker.port, broker.admin.clone());
    let mut subscribers = Vec::new();
    let started = Instant::now();
    let mut ensure_time = Duration::ZERO;
    for i in 0..TENANTS {
        let name = tenant_name(i);
        let pw = random_password();
        let t0 = Instant::now();
        backend
            .ensure_client(&BrokerAccount {
                tenant: name.clone(),
                username: name.clone(),
                password: pw.clone(),
                reset_password: true,
                role: silo::backends::broker_role(&name),
                topics: silo::backends::topic_filters(&name, &[CH.into()]),
                enabled: true,
            })
            .await
            .unwrap();
        ensure_time += t0.elapsed();
        let mut m = connect(broker.port, &name, &pw).await.unwrap();
        assert!(m.subscribe(&format!("channels/{CH}/{name}/#")).await);
        subscribers.push((name, m));
    }
    println!(
        "tenant clients: {TENANTS} ensured (4 dynsec commands each) in {:.2} s, connected and subscribed in {:.2} s",
        ensure_time.as_secs_f64(),
        started.elapsed().as_secs_f64() - ensure_time.as_secs_f64()
    );
    let mut devices = Vec::new();
    for (i, pw) in passwords.iter().enumerate() {
        devices.push(
            connect(broker.port, &format!("{}.d0", tenant_name(i)), pw)
                .await
                .unwrap(),
        );
    }

    let base = Instant::now();
    let total = TENANTS * MESSAGES_PER_DEVICE;
    let mut receivers = Vec::new();
    for (name, mut m) in subscribers {
        receivers.push(tokio::spawn(async move {
            let own_prefix = format!("channels/{CH}/{name}/");
            let (mut own, mut cross, mut lat) = (0usize, 0usize, Vec::new());
            let deadline = Instant::now() + Duration::from_secs(120);
            while own < MESSAGES_PER_DEVICE && Instant::now() < deadline {
                let Some((topic, payload)) = m.next_message(Duration::from_secs(5)).await else {
                    continue;
                };
                if topic.starts_with(&own_prefix) {
                    own += 1;
                    if let Ok(sent) = payload.parse::<u128>() {
                        lat.push((base.elapsed().as_nanos() - sent) as f64 / 1e6);
                    }
                } else {
                    cross += 1;
                }
            }
            // Anything arriving late is counted too.
            for (topic, _) in m.messages(Duration::from_millis(300)).await {
                if topic.starts_with(&own_prefix) {
                    own += 1;
                } else {
                    cross += 1;
                }
            }
            (own, cross, lat)
        }));
    }
    let started = Instant::now();
    let mut senders = Vec::new();
    for (i, d) in devices.into_iter().enumerate() {
        senders.push(tokio::spawn(async move {
            let topic = format!("channels/{CH}/{}/devices/d0/telemetry", tenant_name(i));
            for _ in 0..MESSAGES_PER_DEVICE {
                d.publish(&topic, &base.elapsed().as_nanos().to_string())
                    .await;
            }
            d
        }));
    }
    let mut keep = Vec::new();
    for s in senders {
        keep.push(s.await.unwrap());
    }
    let (mut own, mut cross, mut lat) = (0, 0, Vec::new());
    for r in receivers {
        let (o, c, l) = r.await.unwrap();
        own += o;
        cross += c;
        lat.extend(l);
    }
    let elapsed = started.elapsed().as_secs_f64();
    lat.sort_by(|a, b| a.total_cmp(b));
    println!(
        "channel throughput: {own}/{total} messages delivered to {TENANTS} tenants' prefixes in {elapsed:.2} s = {:.0} messages/s; latency p50 {:.1} ms, p99 {:.1} ms; cross-delivered: {cross}",
        own as f64 / elapsed,
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
    );
    assert_eq!(cross, 0, "messages delivered to another tenant");
    assert_eq!(own, total, "messages lost");
    drop(keep);
}
