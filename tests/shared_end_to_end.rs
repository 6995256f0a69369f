//! Shared isolation end to end, the way a platform engineer runs it: the operator's reconcile
//! pipeline against the in-memory cluster, with the REAL shared services (a throwaway
//! PostgreSQL 15 and a throwaway Mosquitto 2 with dynamic security, one pair per test).
//! Every tenant-side connection uses only what the tenant's credential Secrets hold, like an
//! application in the tenant's namespace would.

#[path = "mosquitto_support/mod.rs"]
mod mosquitto_support;
#[path = "pg_support/mod.rs"]
mod pg_support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mosquitto_support::{Broker, ConnectFailure, Mqtt};
use pg_support::PgServer;
use rumqttc::ConnectReturnCode;
use silo::backends::SharedServices;
use silo::backends::platform::PlatformServices;
use silo::config::PlatformConfig;
use silo::operator::Reconciler;
use silo::operator::cluster::ObjectKey;
use silo::operator::cluster::memory::MemoryCluster;
use silo::operator::key_service::ProviderKeys;
use silo::operator::reconcile::pass::{Pass, reconcile_pass};
use silo::types::{Isolation, Phase, Tenant, TenantSpec};
use tokio_postgres::{Client, NoTls};

/// How long a test waits to be sure a message is NOT delivered.
const QUIET: Duration = Duration::from_millis(700);
const WAIT: Duration = Duration::from_secs(5);
const PG_SECRET: &str = "silo-postgres-credentials";
const MQ_SECRET: &str = "silo-mosquitto-credentials";

struct World {
    cluster: Arc<MemoryCluster>,
    services: Arc<PlatformServices>,
    rec: Reconciler<Arc<MemoryCluster>>,
    // Dropped after the reconciler (field order): the servers outlive every client above.
    pg: Option<PgServer>,
    broker: Broker,
}

/// The operator with the real shared services: a throwaway PostgreSQL (or, with
/// `pg_down_port`, an address where nothing listens) and a throwaway Mosquitto.
async fn world(pg_down_port: Option<u16>) -> World {
    let started = Instant::now();
    let broker = Broker::start();
    let (pg, services) = match pg_down_port {
        None => {
            let pg = PgServer::start().await;
            let services = PlatformServices::new().with_postgres("127.0.0.1", pg.port, pg.admin());
            (Some(pg), services)
        }
        Some(port) => {
            let admin = silo::backends::AdminCredentials {
                username: "postgres".to_string(),
                password: "unused".to_string(),
                database: None,
            };
            (
                None,
                PlatformServices::new().with_postgres("127.0.0.1", port, admin),
            )
        }
    };
    let services =
        Arc::new(services.with_mosquitto("127.0.0.1", broker.port, broker.admin.clone()));
    let cluster = Arc::new(MemoryCluster::new());
    let keys = Arc::new(ProviderKeys::in_memory().await.unwrap());
    let rec = Reconciler::new(cluster.clone(), PlatformConfig::default(), keys, None)
        .with_shared(services.clone());
    eprintln!("servers up after {:?}", started.elapsed());
    World {
        cluster,
        services,
        rec,
        pg,
        broker,
    }
}

fn spec(parent: Option<&str>) -> TenantSpec {
    TenantSpec {
        parent: parent.map(str::to_string),
        display_name: "x".into(),
        ..Default::default()
    }
}

fn siloed(name: &str, parent: Option<&str>) -> Tenant {
    Tenant::new(name, spec(parent))
}

fn shared(name: &str, parent: &str) -> Tenant {
    let mut s = spec(Some(parent));
    s.isolation = Isolation::Shared;
    Tenant::new(name, s)
}

impl World {
    async fn pass(&self) -> Pass {
        reconcile_pass(&self.rec, self.cluster.inventory()).await
    }

    /// Passes until one makes no cluster writes (bounded: 20 passes, 60 s). Before each
    /// pass the cluster's controllers catch up (garbage collection, namespace deletion, pods
    /// ready), as they would on a real cluster while the operator waits to requeue.
    async fn settle(&self) -> usize {
        let started = Instant::now();
        for i in 1..=20 {
            self.cluster.run_controllers();
            let before = self.cluster.writes().total();
            let pass = self.pass().await;
            assert!(pass.failures().is_empty(), "{:?}", pass.failures());
            if self.cluster.writes().total() == before {
                eprintln!("settled in {i} pass(es), {:?}", started.elapsed());
                return i;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "not settled after 60 s"
            );
        }
        panic!("did not settle in 20 passes");
    }

    fn phase(&self, name: &str) -> Option<Phase> {
        self.cluster.tenant(name)?.status?.phase
    }

    fn condition(&self, name: &str, type_: &str) -> (String, String, String) {
        let st = self.cluster.tenant(name).unwrap().status.unwrap();
        let c = st.conditions.iter().find(|c| c.type_ == type_).unwrap();
        (c.status.clone(), c.reason.clone(), c.message.clone())
    }

    /// Decoded data of a Secret in the tenant's namespace.
    fn secret(&self, tenant: &str, name: &str) -> Option<BTreeMap<String, String>> {
        use base64::Engine as _;
        let key = ObjectKey::new("Secret", Some(&format!("tenant-{tenant}")), name);
        let v = self.cluster.get(&key)?;
        let data = v["data"].as_object()?;
        Some(
            data.iter()
                .map(|(k, v)| {
                    let raw = base64::engine::general_purpose::STANDARD
                        .decode(v.as_str().unwrap())
                        .unwrap();
                    (k.clone(), String::from_utf8(raw).unwrap())
                })
                .collect(),
        )
    }

    fn creds(&self, tenant: &str) -> (Creds, Creds) {
        let db = self
            .secret(tenant, PG_SECRET)
            .unwrap_or_else(|| panic!("{tenant}: no {PG_SECRET}"));
        let mq = self
            .secret(tenant, MQ_SECRET)
            .unwrap_or_else(|| panic!("{tenant}: no {MQ_SECRET}"));
        (Creds(db), Creds(mq))
    }

    fn pg(&self) -> &PgServer {
        self.pg.as_ref().unwrap()
    }

    async fn database_names(&self) -> Vec<String> {
        self.pg()
            .superuser()
            .await
            .query("SELECT datname FROM pg_database ORDER BY datname", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect()
    }

    fn suspend(&self, name: &str, suspended: bool) {
        let mut t = self.cluster.tenant(name).unwrap();
        t.spec.suspended = suspended;
        self.cluster.put_tenant(t);
    }
}

/// A credential Secret's data, as an application reads it.
#[derive(Clone, Debug)]
struct Creds(BTreeMap<String, String>);

impl Creds {
    fn get(&self, key: &str) -> &str {
        self.0
            .get(key)
            .unwrap_or_else(|| panic!("no {key:?} in {:?}", self.0.keys()))
    }

    fn port(&self) -> u16 {
        self.get("port").parse().unwrap()
    }
}

/// The server's message (or the client error) of a failed PostgreSQL login.
fn pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => format!("{e} ({e:?})"),
    }
}

/// Log in as an application would, with the Secret's host, port, username, password and
/// database (`database` overrides the last).
async fn pg_login(db: &Creds, database: Option<&str>) -> Result<Client, String> {
    let (client, connection) = tokio_postgres::Config::new()
        .host(db.get("host"))
        .port(db.port())
        .user(db.get("username"))
        .password(db.get("password"))
        .dbname(database.unwrap_or(db.get("database")))
        .connect_timeout(WAIT)
        .connect(NoTls)
        .await
        .map_err(|e| pg_error(&e))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// A refused PostgreSQL login: the server's SQLSTATE `code` and a message containing `what`
/// (e.g. `42501` "permission denied for database", `28P01` "password authentication failed",
/// `28000` "is not permitted to log in").
fn assert_pg_refused(err: &str, code: &str, what: &str) {
    assert!(
        err.starts_with(&format!("{code}: ")) && err.contains(what),
        "expected {code} {what:?}, got: {err}"
    );
}

/// The error of a statement on a session the server has ended (SQLSTATE 57P01, "terminating
/// connection due to administrator command", or the closed connection it leaves).
fn assert_session_ended(e: &tokio_postgres::Error) {
    assert!(
        e.is_closed() || e.code() == Some(&tokio_postgres::error::SqlState::ADMIN_SHUTDOWN),
        "{e:?}"
    );
}

/// Connect to the broker with the Secret's host, port, username and password.
async fn mq_login(mq: &Creds) -> Result<Mqtt, ConnectFailure> {
    assert_eq!(mq.get("host"), "127.0.0.1");
    mosquitto_support::connect(mq.port(), mq.get("username"), mq.get("password")).await
}

/// Subscribe, publish and receive under the tenant's own prefix (`<prefix>rt/…`, apart from
/// the retained messages some tests keep under `<prefix>state`).
async fn mq_round_trip(mq: &Creds, payload: &str) {
    let mut c = mq_login(mq).await.unwrap();
    let prefix = mq.get("topicPrefix");
    assert!(c.subscribe(&format!("{prefix}rt/#")).await, "own prefix");
    c.publish(&format!("{prefix}rt/telemetry"), payload).await;
    assert_eq!(
        c.next_message(WAIT).await,
        Some((format!("{prefix}rt/telemetry"), payload.to_string()))
    );
}

#[tokio::test]
async fn shared_tenants_get_working_separate_databases_and_broker_clients() {
    let started = Instant::now();
    let w = world(None).await;
    w.cluster.put_tenant(siloed("root", None));
    w.cluster.put_tenant(shared("a", "root"));
    w.cluster.put_tenant(shared("b", "root"));
    w.settle().await;
    assert_eq!(w.phase("a"), Some(Phase::Ready));
    assert_eq!(w.phase("b"), Some(Phase::Ready));
    let (a_db, a_mq) = w.creds("a");
    let (b_db, b_mq) = w.creds("b");
    assert_eq!(a_db.get("host"), "127.0.0.1");
    assert_eq!(a_db.port(), w.pg().port);
    assert_eq!(a_mq.port(), w.broker.port);
    assert_ne!(a_db.get("database"), b_db.get("database"));
    assert_ne!(a_db.get("password"), b_db.get("password"));
    assert_eq!(a_mq.get("topicPrefix"), "tenants/a/");

    // `a` uses its database.
    let a = pg_login(&a_db, None).await.unwrap();
    a.batch_execute(
        "CREATE TABLE readings (id int PRIMARY KEY, v text); \
         INSERT INTO readings VALUES (1, 'from a');",
    )
    .await
    .unwrap();
    let v: String = a
        .query_one("SELECT v FROM readings WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, "from a");

    // `a`'s login cannot reach `b`'s database, nor log in as `b`.
    let err = pg_login(&a_db, Some(b_db.get("database")))
        .await
        .expect_err("a reached b's database");
    assert_pg_refused(&err, "42501", "permission denied for database");
    let mut a_as_b = a_db.clone();
    a_as_b
        .0
        .insert("username".into(), b_db.get("username").into());
    a_as_b
        .0
        .insert("database".into(), b_db.get("database").into());
    let err = pg_login(&a_as_b, None)
        .await
        .expect_err("a's password logged in as b");
    assert_pg_refused(&err, "28P01", "password authentication failed");
    // The maintenance database: PostgreSQL lets every login in (documented in
    // src/backends/postgres.rs as the administrator's call), but `a` cannot create anything
    // there; the documented hardening closes the door.
    let m = pg_login(&a_db, Some("postgres")).await.unwrap();
    let err = m
        .batch_execute("CREATE TABLE public.planted (v text)")
        .await
        .expect_err("a created a table in the postgres database");
    assert_pg_refused(
        &pg_error(&err),
        "42501",
        "permission denied for schema public",
    );
    drop(m);
    w.pg()
        .superuser()
        .await
        .batch_execute("REVOKE CONNECT, TEMP ON DATABASE postgres, template1 FROM PUBLIC")
        .await
        .unwrap();
    let err = pg_login(&a_db, Some("postgres"))
        .await
        .expect_err("a reached the hardened postgres database");
    assert_pg_refused(&err, "42501", "permission denied for database \"postgres\"");
    // `b` sees an empty database of its own.
    let b = pg_login(&b_db, None).await.unwrap();
    let n: i64 = b
        .query_one(
            "SELECT count(*) FROM pg_catalog.pg_tables WHERE schemaname = 'public'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "b sees a's table");

    // `a` on the broker: its own prefix works.
    mq_round_trip(&a_mq, "a-1").await;

    // `a` asking for b's prefix and for everything is refused (SUBACK failure); each spy
    // also holds its own prefix, where the control message arrives on the same connection.
    let mut spy_b = mq_login(&a_mq).await.unwrap();
    assert!(
        !spy_b.subscribe("tenants/b/#").await,
        "a may subscribe to b's prefix"
    );
    assert!(spy_b.subscribe("tenants/a/#").await);
    let mut spy_all = mq_login(&a_mq).await.unwrap();
    assert!(!spy_all.subscribe("#").await, "a may subscribe to #");
    assert!(spy_all.subscribe("tenants/a/#").await);
    let mut b_client = mq_login(&b_mq).await.unwrap();
    assert!(b_client.subscribe("tenants/b/#").await);
    b_client.publish("tenants/b/telemetry", "b-secret").await;
    // Control: the message was really published (b receives it).
    assert_eq!(
        b_client.next_message(WAIT).await,
        Some(("tenants/b/telemetry".to_string(), "b-secret".to_string()))
    );
    let a_client = mq_login(&a_mq).await.unwrap();
    spy_b
        .assert_nothing_but_control(QUIET, &a_client, "tenants/a/control", "a-1")
        .await;
    // spy_all holds the same subscription: a-1 is its next message too (anything of b's
    // arriving before it fails this), then it too gets nothing but its own control message.
    assert_eq!(
        spy_all.next_message(WAIT).await,
        Some(("tenants/a/control".to_string(), "a-1".to_string()))
    );
    spy_all
        .assert_nothing_but_control(QUIET, &a_client, "tenants/a/control", "a-2")
        .await;
    // And `a` cannot publish into b's prefix: b gets only its own control message.
    a_client.publish("tenants/b/telemetry", "forged").await;
    let b_ctl = mq_login(&b_mq).await.unwrap();
    b_client
        .assert_nothing_but_control(QUIET, &b_ctl, "tenants/b/control", "b-1")
        .await;

    // Steady state: a second full pass writes nothing.
    let writes = w.cluster.writes().total();
    let pass = w.pass().await;
    assert!(pass.failures().is_empty(), "{:?}", pass.failures());
    assert_eq!(w.cluster.writes().total(), writes, "steady state writes");
    eprintln!("test took {:?}", started.elapsed());
}

#[tokio::test]
async fn suspending_the_root_cuts_shared_logins_and_resuming_restores_them_with_the_data() {
    let started = Instant::now();
    let w = world(None).await;
    w.cluster.put_tenant(siloed("root", None));
    w.cluster.put_tenant(shared("a", "root"));
    w.settle().await;
    assert_eq!(w.phase("a"), Some(Phase::Ready));
    let (a_db, a_mq) = w.creds("a");
    let held = pg_login(&a_db, None).await.unwrap();
    held.batch_execute("CREATE TABLE t (v text); INSERT INTO t VALUES ('kept');")
        .await
        .unwrap();
    let mut held_mq = mq_login(&a_mq).await.unwrap();

    w.suspend("root", true);
    w.settle().await;
    assert_eq!(w.phase("a"), Some(Phase::Suspended));
    let err = pg_login(&a_db, None)
        .await
        .expect_err("suspended tenant logged in to PostgreSQL");
    assert_pg_refused(&err, "28000", "is not permitted to log in");
    assert_session_ended(
        &held
            .query_one("SELECT 1", &[])
            .await
            .expect_err("a session opened before the suspension survived it"),
    );
    assert!(
        held_mq.closed(WAIT).await.is_some(),
        "an MQTT connection opened before the suspension survived it"
    );
    let err = mq_login(&a_mq)
        .await
        .err()
        .expect("suspended tenant connected to Mosquitto");
    assert_eq!(err.code(), ConnectReturnCode::NotAuthorized);
    assert_eq!(w.creds("a").0.0, a_db.0, "credentials kept while suspended");

    w.suspend("root", false);
    w.settle().await;
    assert_eq!(w.phase("a"), Some(Phase::Ready));
    let (db2, mq2) = w.creds("a");
    assert_eq!(db2.0, a_db.0);
    assert_eq!(mq2.0, a_mq.0);
    let a = pg_login(&a_db, None).await.unwrap();
    let v: String = a.query_one("SELECT v FROM t", &[]).await.unwrap().get(0);
    assert_eq!(v, "kept");
    mq_round_trip(&a_mq, "back").await;
    eprintln!("test took {:?}", started.elapsed());
}

#[tokio::test]
async fn deleting_a_shared_tenant_locks_it_out_retires_its_database_and_purge_drops_it() {
    let started = Instant::now();
    let w = world(None).await;
    w.cluster.put_tenant(siloed("root", None));
    w.cluster.put_tenant(shared("a", "root"));
    w.cluster.put_tenant(shared("b", "root"));
    w.settle().await;
    let (b_db, b_mq) = w.creds("b");
    let b = pg_login(&b_db, None).await.unwrap();
    b.batch_execute("CREATE TABLE old (v text); INSERT INTO old VALUES ('b');")
        .await
        .unwrap();
    drop(b);
    mq_round_trip(&b_mq, "b-1").await;
    // Retained messages of b (own prefix) and of a.
    let b_pub = mq_login(&b_mq).await.unwrap();
    b_pub
        .publish_retained("tenants/b/state", "b-retained")
        .await;
    let (_, a_mq_early) = w.creds("a");
    let a_pub = mq_login(&a_mq_early).await.unwrap();
    a_pub
        .publish_retained("tenants/a/state", "a-retained")
        .await;
    // Control: b's retained message is there before the deletion.
    let mut probe = mq_login(&b_mq).await.unwrap();
    assert!(probe.subscribe("tenants/b/#").await);
    assert_eq!(
        probe.next_message(WAIT).await,
        Some(("tenants/b/state".to_string(), "b-retained".to_string()))
    );
    drop((b_pub, a_pub, probe));

    let before_deletion = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    w.cluster.request_tenant_deletion("b");
    w.settle().await;
    assert!(w.cluster.tenant("b").is_none(), "b still there");
    assert!(w.secret("b", PG_SECRET).is_none());
    let deleted = w
        .cluster
        .events_for("b")
        .into_iter()
        .find(|e| e.reason == "Deleted")
        .expect("Deleted event");
    assert!(
        deleted
            .note
            .contains("1 retained message(s) cleared under tenants/b/# and channels/+/b/#"),
        "{}",
        deleted.note
    );

    let err = pg_login(&b_db, None)
        .await
        .expect_err("deleted tenant logged in to PostgreSQL");
    // The role is gone under that name: the login fails authentication.
    assert_pg_refused(&err, "28P01", "password authentication failed");
    let err = mq_login(&b_mq)
        .await
        .err()
        .expect("deleted tenant connected to Mosquitto");
    assert_eq!(err.code(), ConnectReturnCode::NotAuthorized);

    let names = w.database_names().await;
    let retired: Vec<&String> = names.iter().filter(|n| n.starts_with("silo_r_")).collect();
    assert_eq!(retired.len(), 1, "{names:?}");
    let retired = retired[0].clone();
    assert!(
        !names.contains(&b_db.get("database").to_string()),
        "{names:?}"
    );
    let retired_at = silo::backends::retired_at(&retired).unwrap();
    assert!(
        retired_at >= before_deletion,
        "{retired} vs {before_deletion}"
    );
    // The retired name is no login either (same old password).
    let mut as_retired = b_db.clone();
    as_retired.0.insert("username".into(), retired.clone());
    as_retired.0.insert("database".into(), retired.clone());
    assert_pg_refused(
        &pg_login(&as_retired, None).await.err().unwrap(),
        "28000",
        "is not permitted to log in",
    );
    // `a` is untouched.
    let (a_db, a_mq) = w.creds("a");
    pg_login(&a_db, None).await.unwrap();
    mq_round_trip(&a_mq, "a-still").await;

    // Recreated: a new, empty database with new credentials; the old password is refused.
    w.cluster.put_tenant(shared("b", "root"));
    w.settle().await;
    assert_eq!(w.phase("b"), Some(Phase::Ready));
    let (nb_db, nb_mq) = w.creds("b");
    assert_ne!(nb_db.get("password"), b_db.get("password"));
    assert_ne!(nb_mq.get("password"), b_mq.get("password"));
    let nb = pg_login(&nb_db, None).await.unwrap();
    let n: i64 = nb
        .query_one(
            "SELECT count(*) FROM pg_catalog.pg_tables WHERE schemaname = 'public'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "the new b sees the old b's data");
    let e = nb
        .query_one("SELECT v FROM old", &[])
        .await
        .expect_err("the old table is visible");
    assert_pg_refused(&pg_error(&e), "42P01", "relation \"old\" does not exist");
    let err = pg_login(&b_db, None).await.expect_err("old password works");
    assert_pg_refused(&err, "28P01", "password authentication failed");
    let err = mq_login(&b_mq)
        .await
        .err()
        .expect("old broker password works");
    assert_eq!(err.code(), ConnectReturnCode::NotAuthorized);
    mq_round_trip(&nb_mq, "b-2").await;
    // The new b's first subscription receives none of the old b's retained messages; its
    // own control message arrives on the same connection. `a`'s retained message stays.
    let mut first = mq_login(&nb_mq).await.unwrap();
    assert!(first.subscribe("tenants/b/#").await);
    let nb_ctl = mq_login(&nb_mq).await.unwrap();
    first
        .assert_nothing_but_control(QUIET, &nb_ctl, "tenants/b/control", "new-b")
        .await;
    let mut a_sub = mq_login(&a_mq).await.unwrap();
    assert!(a_sub.subscribe("tenants/a/#").await);
    assert_eq!(
        a_sub.next_message(WAIT).await,
        Some(("tenants/a/state".to_string(), "a-retained".to_string()))
    );

    // Purge: nothing retired before the retirement; then the retired one is dropped.
    let shared: &dyn SharedServices = w.services.as_ref();
    let none = shared.purge_retired_databases(retired_at).await.unwrap();
    assert!(none.is_empty(), "{none:?}");
    assert!(w.database_names().await.contains(&retired));
    let purged = shared
        .purge_retired_databases(retired_at + 1)
        .await
        .unwrap();
    assert_eq!(purged.len(), 1, "{purged:?}");
    assert_eq!(purged[0].database, retired);
    assert_eq!(purged[0].retired_at_unix, retired_at);
    let names = w.database_names().await;
    assert!(!names.contains(&retired), "{names:?}");
    assert!(names.contains(&nb_db.get("database").to_string()));
    assert!(names.contains(&a_db.get("database").to_string()));
    let role_left: i64 = w
        .pg()
        .superuser()
        .await
        .query_one(
            "SELECT count(*) FROM pg_catalog.pg_roles WHERE rolname = $1",
            &[&retired],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(role_left, 0, "the retired role outlived the purge");
    eprintln!("test took {:?}", started.elapsed());
}

#[tokio::test]
async fn an_unreachable_shared_postgres_is_reported_and_nothing_else_suffers() {
    let started = Instant::now();
    let port = pg_support::free_port();
    let w = world(Some(port)).await;
    w.cluster.put_tenant(siloed("root", None));
    w.cluster.put_tenant(shared("cust", "root"));
    w.cluster.put_tenant(siloed("other", Some("root")));
    let settle_started = Instant::now();
    w.settle().await;
    assert!(
        settle_started.elapsed() < Duration::from_secs(30),
        "settling with PostgreSQL down took {:?}",
        settle_started.elapsed()
    );
    assert_eq!(w.phase("other"), Some(Phase::Ready), "others unaffected");
    assert_eq!(w.phase("root"), Some(Phase::Ready), "others unaffected");
    assert_eq!(w.phase("cust"), Some(Phase::Provisioning));
    let (status, reason, msg) = w.condition("cust", "DatabaseReady");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "SharedUnavailable"),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("shared PostgreSQL at 127.0.0.1:{port}")),
        "{msg}"
    );
    let (status, reason, msg) = w.condition("cust", "BrokerReady");
    assert_eq!(status, "True", "{reason}: {msg}");
    // The broker half really works.
    let (_, mq) = w.creds("cust");
    mq_round_trip(&mq, "without-db").await;
    eprintln!("test took {:?}", started.elapsed());
}
