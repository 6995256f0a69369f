//! Devices on master channels (issue 13) over HTTP, against a throwaway PostgreSQL (the
//! registry) and a throwaway Mosquitto with the dynamic-security plugin (the channel
//! endpoint): registration with credentials shown once and nothing secret stored, the id and
//! body rules (422 naming the field), paging and filters, the one 404 outside the subtree,
//! the 50-way registration race against an ancestor's limit from two replicas, the channel's
//! `maxConnections`, usage and tree from the registry, and on the broker: delivery to the
//! tenant, every crossing attempt refused with a positive control on the same connection,
//! disable/delete disconnecting at once and refusing reconnection.

mod api_support;
mod mosquitto_support;
mod pg_support;

use std::collections::BTreeSet;
use std::time::Duration;

use api_support::{Env, call_at, four_levels};
use mosquitto_support::{Broker, Mqtt, connect};
use reqwest::{Method, StatusCode};
use rumqttc::ConnectReturnCode;
use serde_json::{Value, json};
use silo::api::testing::MemoryApiCluster;
use silo::types::{Channel, ChannelSpec, Tenant};

const CH: &str = "trk";
const QUIET: Duration = Duration::from_millis(400);

struct DevEnv {
    env: Env,
    broker: Broker,
}

fn channel(name: &str, max: Option<i64>) -> Channel {
    Channel::new(
        name,
        ChannelSpec {
            owner: "platform".into(),
            max_connections: max,
            ..Default::default()
        },
    )
}

/// The four-level tree, every tenant below `platform` using channel `trk`.
fn tree() -> Vec<Tenant> {
    let mut t = four_levels();
    for x in t.iter_mut().skip(1) {
        x.spec.channels = vec![CH.to_string()];
    }
    t
}

async fn start(tenants: Vec<Tenant>, max: Option<i64>) -> DevEnv {
    let broker = Broker::start();
    let cluster = MemoryApiCluster::new();
    cluster.put_channel(channel(CH, max));
    let (port, pw) = (broker.port, broker.admin.password.clone());
    let env = Env::start_with(tenants, cluster, |c| {
        c.api.rate_limit_per_second = 0;
        c.shared.mosquitto.host = "127.0.0.1".into();
        c.shared.mosquitto.port = port;
        c.api.broker.username = broker_admin();
        c.api.broker.password = pw;
    })
    .await;
    DevEnv { env, broker }
}

fn broker_admin() -> String {
    mosquitto_support::ADMIN_USER.to_string()
}

fn devices(tenant: &str) -> String {
    format!("/v1/tenants/{tenant}/devices")
}

impl DevEnv {
    async fn register(&self, token: &str, tenant: &str, id: &str, auth: &str) -> Value {
        let (s, b) = self
            .env
            .post(
                &devices(tenant),
                token,
                json!({"id": id, "channel": CH, "auth": auth}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        b
    }
}

async fn device_conn(d: &DevEnv, creds: &Value) -> Mqtt {
    connect(
        d.broker.port,
        creds["username"].as_str().unwrap(),
        creds["password"].as_str().unwrap(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e:?}\n{}", d.broker.log()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_returns_credentials_once_and_validates_every_field() {
    let d = start(tree(), None).await;
    let admin = d.env.token("dist-a", "admin").await;

    // Bad ids: 422 naming `id`, saying why.
    for (id, why) in [
        ("", "1 to 63"),
        ("Tracker", "lower-case"),
        ("a/b", "lower-case"),
        ("a+b", "lower-case"),
        ("#", "lower-case"),
        ("x.y", "lower-case"),
        ("-x", "lower-case"),
    ]
    .into_iter()
    .chain(std::iter::once((&*"x".repeat(64), "1 to 63")))
    {
        let (s, b) = d
            .env
            .post(
                &devices("cust-a"),
                &admin,
                json!({"id": id, "channel": CH, "auth": "password"}),
            )
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{id}: {b}");
        assert_eq!(b["field"], "id", "{id}: {b}");
        assert!(b["message"].as_str().unwrap().contains(why), "{id}: {b}");
    }
    // Other fields.
    let cases = [
        (
            json!({"id": "d1", "channel": "nope", "auth": "password"}),
            "channel",
            "does not use channel \"nope\"",
        ),
        (json!({"id": "d1", "channel": CH}), "auth", "auth"),
        (
            json!({"id": "d1", "channel": CH, "auth": "token"}),
            "auth",
            "token",
        ),
        (
            json!({"id": "d1", "channel": CH, "auth": "password", "colour": 1}),
            "colour",
            "unknown field",
        ),
        (
            json!({"id": "d1", "channel": CH, "auth": "password", "labels": {"bad key": "x"}}),
            "labels.bad key",
            "label key",
        ),
    ];
    for (body, field, text) in cases {
        let (s, b) = d.env.post(&devices("cust-a"), &admin, body.clone()).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {b}");
        assert_eq!(b["field"], field, "{body}: {b}");
        assert!(b["message"].as_str().unwrap().contains(text), "{body}: {b}");
    }
    // A viewer cannot register.
    let viewer = d.env.token("dist-a", "viewer").await;
    let (s, b) = d
        .env
        .post(
            &devices("cust-a"),
            &viewer,
            json!({"id": "d1", "channel": CH, "auth": "password"}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    assert!(
        b["message"].as_str().unwrap().contains("devices.manage"),
        "{b}"
    );

    // A password device: the password is shown once; the username binds tenant and id.
    let created = d.register(&admin, "cust-a", "d1", "password").await;
    assert_eq!(created["username"], "cust-a.d1");
    assert_eq!(created["topicPrefix"], "channels/trk/cust-a/devices/d1/");
    assert_eq!(created["enabled"], true);
    let password = created["password"].as_str().unwrap().to_string();
    assert!(password.len() >= 32);
    assert!(created.get("privateKey").is_none());
    // Taken id: 409; the same id in another tenant is fine.
    let (s, b) = d
        .env
        .post(
            &devices("cust-a"),
            &admin,
            json!({"id": "d1", "channel": CH, "auth": "password"}),
        )
        .await;
    assert_eq!(
        (s, b["error"].as_str()),
        (StatusCode::CONFLICT, Some("AlreadyExists")),
        "{b}"
    );
    assert!(
        b["message"]
            .as_str()
            .unwrap()
            .contains("\"d1\" already exists in tenant \"cust-a\"")
    );
    d.register(&admin, "dealer-a", "d1", "password").await;
    // Read back: never the secret.
    let (s, one) = d.env.get("/v1/tenants/cust-a/devices/d1", &admin).await;
    assert_eq!(s, StatusCode::OK);
    assert!(one.get("password").is_none(), "{one}");
    assert_eq!(one["channel"], CH);
    // Nothing secret in the registry: no column holds the password or a hash of it.
    let pg = d.env.pg.superuser().await;
    let rows = pg
        .query("SELECT row_to_json(d)::text FROM devices d", &[])
        .await
        .unwrap();
    for r in rows {
        let text: String = r.get(0);
        assert!(!text.contains(&password), "{text}");
        assert!(!text.to_lowercase().contains("password\":\""), "{text}");
    }
    // The broker accepts the credentials (the plugin holds the only hash).
    let m = device_conn(&d, &created).await;
    drop(m);

    // A certificate device: certificate and key from the device CA, CN (its broker username)
    // and URI SAN binding tenant and id; only serial and fingerprint are kept.
    let c = d.register(&admin, "cust-a", "c1", "certificate").await;
    let pem = c["certificate"].as_str().unwrap();
    assert!(c["privateKey"].as_str().unwrap().contains("PRIVATE KEY"));
    assert!(
        c["caCertificate"]
            .as_str()
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
    assert!(c.get("password").is_none());
    let user = c["username"].as_str().unwrap().to_string();
    let tag = user
        .strip_prefix("cust-a.c1.")
        .unwrap_or_else(|| panic!("{user}"));
    assert!(
        tag.len() == 16 && tag.bytes().all(|b| b.is_ascii_hexdigit()),
        "{user}"
    );
    let der = silo::pki::certs_from_pem(pem).unwrap();
    let (_, x) = x509_parser::parse_x509_certificate(der[0].as_ref()).unwrap();
    let cn: Vec<_> = x
        .subject()
        .iter_common_name()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert_eq!(cn, [user.as_str()]);
    let san = x
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|g| match g {
            x509_parser::extensions::GeneralName::URI(n) => n.to_string(),
            other => format!("{other:?}"),
        })
        .collect::<Vec<_>>();
    assert_eq!(san, ["urn:silo:tenant:cust-a:device:c1"]);
    let issuer = x.issuer().to_string();
    assert!(issuer.contains("silo device CA"), "{issuer}");
    assert!(!c["certificateInfo"]["serial"].as_str().unwrap().is_empty());
    let (_, c1) = d.env.get("/v1/tenants/cust-a/devices/c1", &admin).await;
    assert!(
        c1.get("privateKey").is_none() && c1.get("certificate").is_none(),
        "{c1}"
    );
    assert_eq!(c1["certificateInfo"], c["certificateInfo"]);

    // Lists: paging, filters.
    for id in ["d2", "d3"] {
        let (s, b) = d
            .env
            .post(
                &devices("cust-a"),
                &admin,
                json!({"id": id, "channel": CH, "auth": "password", "labels": {"site": "north"}}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
    }
    let (_, p1) = d
        .env
        .get("/v1/tenants/cust-a/devices?limit=2", &admin)
        .await;
    let ids = |v: &Value| {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&p1), ["c1", "d1"]);
    let next = p1["next"].as_str().unwrap();
    let (_, p2) = d
        .env
        .get(
            &format!("/v1/tenants/cust-a/devices?limit=2&cursor={next}"),
            &admin,
        )
        .await;
    assert_eq!(ids(&p2), ["d2", "d3"]);
    assert!(p2["next"].is_null());
    let (_, f) = d
        .env
        .get("/v1/tenants/cust-a/devices?auth=certificate", &admin)
        .await;
    assert_eq!(ids(&f), ["c1"]);
    let (_, f) = d
        .env
        .get("/v1/tenants/cust-a/devices?label=site=north", &admin)
        .await;
    assert_eq!(ids(&f), ["d2", "d3"]);
    let (_, f) = d
        .env
        .get(
            "/v1/tenants/cust-a/devices?q=d&enabled=true&channel=trk",
            &admin,
        )
        .await;
    assert_eq!(ids(&f), ["d1", "d2", "d3"]);
    let (s, b) = d
        .env
        .get("/v1/tenants/cust-a/devices?auth=token", &admin)
        .await;
    assert_eq!(
        (s, b["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("auth")),
        "{b}"
    );
    let (s, b) = d
        .env
        .get("/v1/tenants/cust-a/devices?label=site", &admin)
        .await;
    assert_eq!(
        (s, b["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("label")),
        "{b}"
    );
    let (s, b) = d.env.get("/v1/tenants/cust-a/devices?q=%00", &admin).await;
    assert_eq!(
        (s, b["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("q")),
        "{b}"
    );
    assert_eq!(b["message"], "q must not contain control characters");
    // A path id no device can have is the device 404.
    let (s, b) = d.env.get("/v1/tenants/cust-a/devices/%00", &admin).await;
    assert_eq!(
        (s, b["message"].as_str()),
        (
            StatusCode::NOT_FOUND,
            Some("device not found in this token's subtree")
        ),
        "{b}"
    );

    // Rotation: a new password, shown once; the old one stops working at once.
    let (s, r) = d
        .env
        .post(
            "/v1/tenants/cust-a/devices/d1/rotate-credentials",
            &admin,
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    let new_pw = r["password"].as_str().unwrap();
    assert_ne!(new_pw, password);
    assert_eq!(
        connect(d.broker.port, "cust-a.d1", &password)
            .await
            .err()
            .map(|e| e.code()),
        Some(ConnectReturnCode::NotAuthorized)
    );
    connect(d.broker.port, "cust-a.d1", new_pw).await.unwrap();
    let (s, r) = d
        .env
        .post(
            "/v1/tenants/cust-a/devices/c1/rotate-credentials",
            &admin,
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_ne!(
        r["certificateInfo"]["serial"],
        c["certificateInfo"]["serial"]
    );
    assert!(r["privateKey"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_the_subtree_every_device_endpoint_is_the_same_404() {
    let d = start(tree(), None).await;
    let platform = d.env.token("platform", "admin").await;
    d.register(&platform, "cust-b", "e1", "password").await;
    d.register(&platform, "cust-a", "d1", "password").await;
    let a = d.env.token("dist-a", "admin").await;
    let calls = |tenant: &str, id: &str| {
        vec![
            (Method::GET, devices(tenant), None),
            (
                Method::POST,
                devices(tenant),
                Some(json!({"id": "z1", "channel": CH, "auth": "password"})),
            ),
            (Method::GET, format!("{}/{id}", devices(tenant)), None),
            (Method::DELETE, format!("{}/{id}", devices(tenant)), None),
            (
                Method::POST,
                format!("{}/{id}/disable", devices(tenant)),
                None,
            ),
            (
                Method::POST,
                format!("{}/{id}/enable", devices(tenant)),
                None,
            ),
            (
                Method::POST,
                format!("{}/{id}/rotate-credentials", devices(tenant)),
                None,
            ),
        ]
    };
    for ((m, path, body), (_, ghost, gbody)) in calls("cust-b", "e1")
        .into_iter()
        .zip(calls("no-such-tenant", "e1"))
    {
        let (s, b) = call_at(&d.env.http, &d.env.base, m.clone(), &path, Some(&a), body).await;
        let (gs, gb) = call_at(&d.env.http, &d.env.base, m.clone(), &ghost, Some(&a), gbody).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{m} {path}: {b}");
        assert_eq!((s, &b), (gs, &gb), "{m} {path}");
        assert_eq!(b["message"], "tenant not found in this token's subtree");
    }
    // Positive control with the same token: its own subtree's device.
    let (s, _) = d.env.get("/v1/tenants/cust-a/devices/d1", &a).await;
    assert_eq!(s, StatusCode::OK);
    // A device id of another tenant under one's own tenant is just missing.
    let (s, b) = d.env.get("/v1/tenants/cust-a/devices/e1", &a).await;
    let (_, g) = d.env.get("/v1/tenants/cust-a/devices/zz", &a).await;
    assert_eq!((s, &b), (StatusCode::NOT_FOUND, &g));
    assert_eq!(b["message"], "device not found in this token's subtree");
    // B's device still exists and was not touched.
    let (s, e1) = d.env.get("/v1/tenants/cust-b/devices/e1", &platform).await;
    assert_eq!((s, e1["enabled"].as_bool()), (StatusCode::OK, Some(true)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_registrations_where_ten_fit_admit_exactly_ten_across_two_replicas() {
    let mut t = tree();
    t[1].spec.limits.devices = Some(10); // dist-a: its whole subtree may hold 10 devices
    let d = start(t, None).await;
    let admin = d.env.token("dist-a", "admin").await;
    // Two devices already registered: 8 places left.
    d.register(&admin, "dealer-a", "pre1", "password").await;
    d.register(&admin, "cust-a", "pre2", "password").await;
    let second = d.env.second_replica().await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let base = if i % 2 == 0 {
            d.env.base.clone()
        } else {
            second.clone()
        };
        let http = d.env.http.clone();
        let token = admin.clone();
        let tenant = if i % 3 == 0 { "dealer-a" } else { "cust-a" };
        tasks.push(tokio::spawn(async move {
            call_at(
                &http,
                &base,
                Method::POST,
                &devices(tenant),
                Some(&token),
                Some(json!({"id": format!("r{i}"), "channel": CH, "auth": "password"})),
            )
            .await
        }));
    }
    let mut created = 0;
    let mut refused = BTreeSet::new();
    for t in tasks {
        let (s, b) = t.await.unwrap();
        match s {
            StatusCode::CREATED => created += 1,
            StatusCode::FORBIDDEN => {
                refused.insert(b["message"].as_str().unwrap().to_string());
                assert_eq!(b["error"], "LimitExceeded");
            }
            other => panic!("{other}: {b}"),
        }
    }
    assert_eq!(created, 8, "{refused:?}");
    // Every refusal names the resource, the binding ancestor, its limit and its usage.
    let cust = "devices: limit reached: tenant \"dist-a\" (an ancestor of \"cust-a\") allows 10 devices in its subtree and 10 are registered; cannot register one more";
    let dealer = cust.replace("cust-a", "dealer-a");
    assert!(
        refused.iter().all(|m| m == cust || *m == dealer),
        "{refused:?}"
    );
    // The registry, usage and tree agree.
    let pg = d.env.pg.superuser().await;
    let n: i64 = pg
        .query_one("SELECT count(*) FROM devices", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 10);
    let (_, u) = d.env.get("/v1/tenants/dist-a/usage", &admin).await;
    let dev = &u["counts"]["devices"];
    assert_eq!(
        (dev["own"].as_i64(), dev["subtree"].as_i64()),
        (Some(0), Some(10)),
        "{u}"
    );
    assert_eq!(
        (dev["limit"].as_i64(), dev["remaining"].as_i64()),
        (Some(10), Some(0)),
        "{u}"
    );
    assert_eq!(dev["boundBy"], "dist-a");
    let (_, cu) = d.env.get("/v1/tenants/cust-a/usage", &admin).await;
    let (_, du) = d.env.get("/v1/tenants/dealer-a/usage", &admin).await;
    let own_c = cu["counts"]["devices"]["own"].as_i64().unwrap();
    let own_d = du["counts"]["devices"]["own"].as_i64().unwrap();
    assert_eq!(own_c + own_d, 10);
    assert_eq!(du["counts"]["devices"]["subtree"].as_i64(), Some(10));
    assert_eq!(cu["counts"]["devices"]["boundBy"], "dist-a");
    let (_, tr) = d.env.get("/v1/tenants/dist-a/tree", &admin).await;
    assert_eq!(tr["usage"]["subtree"]["devices"], 10, "{tr}");
    assert_eq!(
        tr["children"][0]["usage"]["own"]["devices"].as_i64(),
        Some(own_d)
    );
    assert_eq!(
        tr["children"][0]["children"][0]["usage"]["own"]["devices"].as_i64(),
        Some(own_c)
    );
    // The other subtree is not held back by dist-a's limit (positive control).
    let platform = d.env.token("platform", "admin").await;
    d.register(&platform, "cust-b", "b1", "password").await;
    // Deleting frees a place.
    let (s, _) = d
        .env
        .call(
            Method::DELETE,
            "/v1/tenants/cust-a/devices/pre2",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    d.register(&admin, "cust-a", "again", "password").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_at_capacity_refuses_with_a_clear_message() {
    let d = start(tree(), Some(3)).await;
    let platform = d.env.token("platform", "admin").await;
    d.register(&platform, "cust-a", "d1", "password").await;
    d.register(&platform, "cust-b", "e1", "password").await;
    d.register(&platform, "dealer-b", "e2", "password").await;
    let (s, b) = d
        .env
        .post(
            &devices("cust-a"),
            &platform,
            json!({"id": "d2", "channel": CH, "auth": "password"}),
        )
        .await;
    assert_eq!(
        (s, b["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("LimitExceeded")),
        "{b}"
    );
    assert_eq!(
        b["message"],
        "channel \"trk\" is at capacity: maxConnections 3 and 3 devices are registered on it; cannot register one more"
    );
    // The channel reports its registered devices (from the registry).
    let (_, ch) = d.env.get("/v1/channels/trk", &platform).await;
    assert_eq!(ch["status"]["registeredDevices"], 3, "{ch}");
    let (_, chs) = d.env.get("/v1/channels", &platform).await;
    assert_eq!(chs["items"][0]["status"]["registeredDevices"], 3, "{chs}");
    // Nothing half-made: no registry row and no broker client for d2.
    let (s, _) = d.env.get("/v1/tenants/cust-a/devices/d2", &platform).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let r = mosquitto_support::admin_command(
        &d.broker,
        json!({"command": "getClient", "username": "cust-a.d2"}),
    )
    .await;
    assert!(
        r["error"]
            .as_str()
            .unwrap_or_default()
            .contains("not found"),
        "{r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_reach_their_tenant_only_and_every_crossing_fails() {
    let d = start(tree(), None).await;
    let platform = d.env.token("platform", "admin").await;
    let d1c = d.register(&platform, "cust-a", "d1", "password").await;
    let d2c = d.register(&platform, "cust-a", "d2", "password").await;
    let e1c = d.register(&platform, "cust-b", "e1", "password").await;
    let d1_topic = "channels/trk/cust-a/devices/d1/telemetry";
    let d2_topic = "channels/trk/cust-a/devices/d2/telemetry";
    let e1_topic = "channels/trk/cust-b/devices/e1/telemetry";

    // Tenants' Shared clients as the operator makes them (silo::backends::topic_filters).
    let mut a = d
        .broker
        .client_with(
            "cust-a",
            silo::backends::topic_filters("cust-a", &[CH.into()]),
        )
        .await;
    assert!(a.subscribe("channels/trk/cust-a/#").await);
    let mut b = d
        .broker
        .client_with(
            "cust-b",
            silo::backends::topic_filters("cust-b", &[CH.into()]),
        )
        .await;
    assert!(b.subscribe("channels/trk/cust-b/#").await);
    // An observer of the whole channel (a test client; no tenant has this).
    let mut all = d
        .broker
        .client_with("observer", vec!["channels/trk/#".into()])
        .await;
    assert!(all.subscribe("channels/trk/#").await);

    let mut d1 = device_conn(&d, &d1c).await;
    let d2 = device_conn(&d, &d2c).await;
    let e1 = device_conn(&d, &e1c).await;

    // Delivery: d1 → A's client.
    d1.publish(d1_topic, "21.5").await;
    assert_eq!(
        a.next_message(Duration::from_secs(5)).await,
        Some((d1_topic.into(), "21.5".into()))
    );
    assert_eq!(
        all.next_message(Duration::from_secs(5)).await,
        Some((d1_topic.into(), "21.5".into()))
    );
    assert_eq!(b.messages(QUIET).await, vec![]);

    // d1 publishing into B's prefix, another device's prefix, its tenant's level and
    // outside the channel: nothing arrives anywhere; then d1's own publish (same connection)
    // does arrive (positive control).
    for t in [
        e1_topic,
        "channels/trk/cust-b/devices/d1/telemetry",
        d2_topic,
        "channels/trk/cust-a/telemetry",
        "channels/other/cust-a/devices/d1/x",
        "tenants/cust-a/x",
    ] {
        d1.publish(t, "cross").await;
    }
    assert_eq!(
        b.messages(QUIET).await,
        vec![],
        "B received a crossing message"
    );
    all.assert_nothing_but_control(QUIET, &d1, d1_topic, "control")
        .await;
    assert_eq!(
        a.next_message(Duration::from_secs(5)).await,
        Some((d1_topic.into(), "control".into()))
    );
    assert_eq!(
        a.messages(QUIET).await,
        vec![],
        "A received a crossing message"
    );

    // d1 subscribing beyond its prefix: refused (SUBACK failure) on the same connection
    // that is then granted its own prefix.
    for f in [
        "channels/trk/#",
        "#",
        "channels/trk/cust-a/#",
        "channels/trk/cust-b/#",
        "channels/trk/cust-a/devices/d2/#",
        "channels/+/cust-a/devices/d1/#",
        "$share/g/channels/trk/cust-a/#",
        "$share/g/channels/trk/cust-a/devices/d2/#",
        "$SYS/#",
        "$CONTROL/dynamic-security/#",
    ] {
        assert!(!d1.subscribe(f).await, "d1 was allowed to subscribe to {f}");
    }
    assert!(d1.subscribe("channels/trk/cust-a/devices/d1/#").await);
    // d2 and e1 publish; d1 gets nothing of theirs, then its own (control) message.
    d2.publish(d2_topic, "d2").await;
    e1.publish(e1_topic, "e1").await;
    assert_eq!(
        d1.messages(QUIET).await,
        vec![],
        "d1 received another device's message"
    );
    d1.publish("channels/trk/cust-a/devices/d1/cmd", "own")
        .await;
    assert_eq!(
        d1.next_message(Duration::from_secs(5)).await,
        Some(("channels/trk/cust-a/devices/d1/cmd".into(), "own".into())),
        "positive control: d1's own message did not arrive"
    );
    assert_eq!(
        b.next_message(Duration::from_secs(5)).await,
        Some((e1_topic.into(), "e1".into()))
    );
    // Their own tenants do get them.
    assert_eq!(
        a.next_message(Duration::from_secs(5)).await,
        Some((d2_topic.into(), "d2".into()))
    );
    assert_eq!(
        a.next_message(Duration::from_secs(5)).await,
        Some(("channels/trk/cust-a/devices/d1/cmd".into(), "own".into()))
    );
    assert_eq!(a.messages(QUIET).await, vec![]);

    // Disable: the open connection is closed at once, reconnecting is refused; enable
    // restores it.
    let (s, b2) = d
        .env
        .post(
            "/v1/tenants/cust-a/devices/d1/disable",
            &platform,
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b2}");
    assert_eq!(b2["enabled"], false);
    assert!(
        b2["disabledReason"]
            .as_str()
            .unwrap()
            .contains("disabled through the API")
    );
    assert!(
        d1.closed(Duration::from_secs(5)).await.is_some(),
        "disabled device still connected"
    );
    let pw = d1c["password"].as_str().unwrap();
    assert_eq!(
        connect(d.broker.port, "cust-a.d1", pw)
            .await
            .err()
            .map(|e| e.code()),
        Some(ConnectReturnCode::NotAuthorized)
    );
    let (s, _) = d
        .env
        .post("/v1/tenants/cust-a/devices/d1/enable", &platform, json!({}))
        .await;
    assert_eq!(s, StatusCode::OK);
    let d1 = connect(d.broker.port, "cust-a.d1", pw).await.unwrap();
    d1.publish(d1_topic, "back").await;
    assert_eq!(
        a.next_message(Duration::from_secs(5)).await,
        Some((d1_topic.into(), "back".into()))
    );

    // Delete: disconnected at once, refused afterwards.
    let mut d1 = d1;
    let (s, _) = d
        .env
        .call(
            Method::DELETE,
            "/v1/tenants/cust-a/devices/d1",
            Some(&platform),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert!(
        d1.closed(Duration::from_secs(5)).await.is_some(),
        "deleted device still connected"
    );
    assert_eq!(
        connect(d.broker.port, "cust-a.d1", pw)
            .await
            .err()
            .map(|e| e.code()),
        Some(ConnectReturnCode::NotAuthorized)
    );
    // The other devices are untouched (positive control).
    d2.publish(d2_topic, "still").await;
    assert_eq!(
        a.next_message(Duration::from_secs(5)).await,
        Some((d2_topic.into(), "still".into()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspended_tenants_and_an_unavailable_broker_refuse_registration_and_change_nothing() {
    let mut t = tree();
    t[5].spec.suspended = true; // dealer-b, and so cust-b below it
    assert_eq!(t[5].name(), "dealer-b");
    let d = start(t, None).await;
    let platform = d.env.token("platform", "admin").await;
    let (s, b) = d
        .env
        .post(
            &devices("cust-b"),
            &platform,
            json!({"id": "e1", "channel": CH, "auth": "password"}),
        )
        .await;
    assert_eq!(
        (s, b["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("Suspended")),
        "{b}"
    );
    assert_eq!(
        b["message"],
        "tenant \"cust-b\" is suspended (by \"dealer-b\"): no devices can be registered"
    );
    // Positive control: the same token registers in a tenant that is not suspended.
    d.register(&platform, "cust-a", "d1", "password").await;

    // The broker goes away: registration and changes answer 503 and nothing is recorded.
    let DevEnv { env, broker } = d;
    drop(broker);
    let (s, b) = env
        .post(
            &devices("cust-a"),
            &platform,
            json!({"id": "d2", "channel": CH, "auth": "password"}),
        )
        .await;
    assert_eq!(
        (s, b["error"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("Unavailable")),
        "{b}"
    );
    assert_eq!(
        b["message"],
        "the channel broker is unavailable; nothing was changed, retry later"
    );
    let (s, _) = env.get("/v1/tenants/cust-a/devices/d2", &platform).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, b) = env
        .post(
            "/v1/tenants/cust-a/devices/d1/disable",
            &platform,
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{b}");
    let (_, d1) = env.get("/v1/tenants/cust-a/devices/d1", &platform).await;
    assert_eq!(
        d1["enabled"], true,
        "the registry changed although the broker did not"
    );

    // An API without a channel broker configured says so.
    let cluster = MemoryApiCluster::new();
    cluster.put_channel(channel(CH, None));
    let bare = Env::start_with(tree(), cluster, |c| c.api.rate_limit_per_second = 0).await;
    let token = bare.token("platform", "admin").await;
    let (s, b) = bare
        .post(
            &devices("cust-a"),
            &token,
            json!({"id": "d1", "channel": CH, "auth": "password"}),
        )
        .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{b}");
    assert!(
        b["message"]
            .as_str()
            .unwrap()
            .contains("no channel broker configured"),
        "{b}"
    );
}

/// Waits until the API's tree shows `check`.
async fn until_tree(d: &DevEnv, check: impl Fn(&silo::hierarchy::TenantTree) -> bool) {
    for _ in 0..500 {
        if d.env.api.cache.view().with_tree(&check) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the API's tree never showed the change");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspension_lost_channels_and_deletion_disable_or_remove_devices_and_say_why() {
    use silo::api::cluster::ApiCluster;
    use silo::api::devices::sync_devices;
    let d = start(tree(), None).await;
    let platform = d.env.token("platform", "admin").await;
    let e1c = d.register(&platform, "cust-b", "e1", "password").await;
    let d1c = d.register(&platform, "cust-a", "d1", "password").await;
    let manual = d.register(&platform, "cust-b", "e2", "password").await;
    let (s, _) = d
        .env
        .post(
            "/v1/tenants/cust-b/devices/e2/disable",
            &platform,
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let pw = |c: &Value| c["password"].as_str().unwrap().to_string();
    assert!(
        sync_devices(&d.env.api).await.unwrap().is_empty(),
        "nothing to do yet"
    );

    // dealer-b suspended: cust-b's devices are disabled (connections closed) with the reason.
    let mut e1 = device_conn(&d, &e1c).await;
    let mut t = d.env.cluster.tenant("dealer-b").unwrap();
    t.spec.suspended = true;
    d.env.cluster.put_tenant(t);
    until_tree(&d, |t| {
        t.get("cust-b")
            .is_some_and(|id| t.suspended_by(id).is_some())
    })
    .await;
    let done = sync_devices(&d.env.api).await.unwrap();
    assert_eq!(
        done,
        ["cust-b/e1: disabled: tenant \"cust-b\" is suspended (through its ancestor \"dealer-b\")"]
    );
    assert!(e1.closed(Duration::from_secs(5)).await.is_some());
    assert_eq!(
        connect(d.broker.port, "cust-b.e1", &pw(&e1c))
            .await
            .err()
            .map(|e| e.code()),
        Some(ConnectReturnCode::NotAuthorized)
    );
    let (_, e1r) = d.env.get("/v1/tenants/cust-b/devices/e1", &platform).await;
    assert_eq!(e1r["enabled"], false);
    assert_eq!(
        e1r["disabledReason"],
        "[tenant] tenant \"cust-b\" is suspended (through its ancestor \"dealer-b\")"
    );
    // Enabling it by hand is refused while the reason holds.
    let (s, b) = d
        .env
        .post("/v1/tenants/cust-b/devices/e1/enable", &platform, json!({}))
        .await;
    assert_eq!(
        (s, b["error"].as_str()),
        (StatusCode::CONFLICT, Some("DeviceBlocked")),
        "{b}"
    );
    assert_eq!(
        b["message"],
        "device \"e1\" cannot be enabled: tenant \"cust-b\" is suspended (through its ancestor \"dealer-b\")"
    );
    // Positive control: cust-a's device is untouched and connects.
    device_conn(&d, &d1c).await;
    // Resumed: enabled again; the device a person disabled stays disabled.
    let mut t = d.env.cluster.tenant("dealer-b").unwrap();
    t.spec.suspended = false;
    d.env.cluster.put_tenant(t);
    until_tree(&d, |t| {
        t.get("cust-b")
            .is_some_and(|id| t.suspended_by(id).is_none())
    })
    .await;
    assert_eq!(
        sync_devices(&d.env.api).await.unwrap(),
        ["cust-b/e1: enabled again"]
    );
    device_conn(&d, &e1c).await;
    assert_eq!(
        connect(d.broker.port, "cust-b.e2", &pw(&manual))
            .await
            .err()
            .map(|e| e.code()),
        Some(ConnectReturnCode::NotAuthorized)
    );

    // cust-a stops using the channel: its device is disabled, saying why.
    let mut t = d.env.cluster.tenant("cust-a").unwrap();
    t.spec.channels.clear();
    d.env.cluster.put_tenant(t);
    until_tree(&d, |t| {
        t.get("cust-a")
            .is_some_and(|id| t.tenant(id).spec.channels.is_empty())
    })
    .await;
    assert_eq!(
        sync_devices(&d.env.api).await.unwrap(),
        ["cust-a/d1: disabled: tenant \"cust-a\" no longer uses channel \"trk\""]
    );

    // cust-b deleted: its devices are removed from the broker and the registry.
    d.env
        .cluster
        .delete_tenant("cust-b".into(), None)
        .await
        .unwrap();
    until_tree(&d, |t| t.get("cust-b").is_none()).await;
    let mut done = sync_devices(&d.env.api).await.unwrap();
    done.sort();
    assert_eq!(
        done,
        [
            "cust-b/e1: removed: its tenant was deleted",
            "cust-b/e2: removed: its tenant was deleted"
        ]
    );
    let r = mosquitto_support::admin_command(
        &d.broker,
        json!({"command": "getClient", "username": "cust-b.e1"}),
    )
    .await;
    assert!(
        r["error"]
            .as_str()
            .unwrap_or_default()
            .contains("not found"),
        "{r}"
    );
    let pg = d.env.pg.superuser().await;
    let n: i64 = pg
        .query_one("SELECT count(*) FROM devices WHERE tenant = 'cust-b'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    assert!(
        sync_devices(&d.env.api).await.unwrap().is_empty(),
        "a second pass changes nothing"
    );
}
