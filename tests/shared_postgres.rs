//! The Shared tenant's database on a real (throwaway) PostgreSQL: what `PostgresBackend`
//! creates, and that tenants logging in with their own roles cannot cross into each other,
//! escalate, or survive suspension and retirement.

#[path = "pg_support/mod.rs"]
mod pg_support;

use std::time::{Duration, Instant};

use pg_support::{PgServer, free_port};
use silo::backends::postgres::PostgresBackend;
use silo::backends::{
    AdminCredentials, BackendError, DatabaseAccount, database_name, retired_name,
};

fn account(tenant: &str, password: &str) -> DatabaseAccount {
    DatabaseAccount {
        tenant: tenant.to_string(),
        database: database_name(tenant),
        password: password.to_string(),
        reset_password: false,
        login: true,
    }
}

trait MustFail {
    fn must_fail(self, what: &str) -> tokio_postgres::Error;
}

impl<T> MustFail for Result<T, tokio_postgres::Error> {
    fn must_fail(self, what: &str) -> tokio_postgres::Error {
        match self {
            Ok(_) => panic!("{what}"),
            Err(e) => e,
        }
    }
}

/// A refusal by the server: SQLSTATE `code` and a message containing `what`.
fn assert_refused(e: &tokio_postgres::Error, code: &str, what: &str) {
    let text = err_text(e);
    assert!(
        text.starts_with(&format!("{code} ")) && text.contains(what),
        "expected {code} {what:?}, got: {text}"
    );
}

/// A statement on a session the server ended: SQLSTATE 57P01 ("terminating connection due to
/// administrator command") or the closed connection it leaves behind.
fn assert_session_ended(e: &tokio_postgres::Error) {
    assert!(
        e.is_closed() || e.code() == Some(&tokio_postgres::error::SqlState::ADMIN_SHUTDOWN),
        "{e:?}"
    );
}

fn err_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} {}", db.code().code(), db.message()),
        None => format!("{e} {:?}", e),
    }
}

async fn stored_password(pg: &PgServer, role: &str) -> Option<String> {
    pg.superuser()
        .await
        .query_one(
            "SELECT rolpassword FROM pg_authid WHERE rolname = $1::text",
            &[&role],
        )
        .await
        .expect("read pg_authid")
        .get(0)
}

#[tokio::test]
async fn ensure_creates_role_and_database_the_tenant_can_use() {
    let pg = PgServer::start().await;
    let backend = pg.backend();
    let a = account("acme", "s3cret-A");
    let t = Instant::now();
    let ensured = backend.ensure_database(&a).await.expect("ensure");
    eprintln!("first ensure took {:?}: {:?}", t.elapsed(), ensured.changes);
    let joined = ensured.changes.join("\n");
    assert!(
        joined.contains(&format!("created role {}", a.database)),
        "{joined}"
    );
    assert!(
        joined.contains(&format!("created database {}", a.database)),
        "{joined}"
    );
    assert!(
        joined.contains("revoked access") && joined.contains("PUBLIC"),
        "{joined}"
    );

    // Stored as a SCRAM verifier, not in clear.
    let stored = stored_password(&pg, &a.database)
        .await
        .expect("password set");
    assert!(stored.starts_with("SCRAM-SHA-256$4096:"), "{stored}");

    let tenant = pg
        .connect_as(&a.database, "s3cret-A", &a.database)
        .await
        .expect("tenant logs in to its database");
    tenant
        .batch_execute("CREATE TABLE things (id int primary key, name text); INSERT INTO things VALUES (1, 'one')")
        .await
        .expect("create table and insert in public schema");
    let name: String = tenant
        .query_one("SELECT name FROM things WHERE id = 1", &[])
        .await
        .expect("select")
        .get(0);
    assert_eq!(name, "one");

    // The database is owned by the role and grants nothing to PUBLIC.
    let row = pg
        .superuser()
        .await
        .query_one(
            "SELECT pg_get_userbyid(datdba)::text, datacl::text FROM pg_database WHERE datname = $1::text",
            &[&a.database],
        )
        .await
        .unwrap();
    let (owner, acl): (String, String) = (row.get(0), row.get(1));
    assert_eq!(owner, a.database);
    assert!(
        !acl.contains("{=") && !acl.contains(",="),
        "PUBLIC still in {acl}"
    );
}

#[tokio::test]
async fn steady_state_ensure_makes_no_change() {
    let pg = PgServer::start().await;
    let backend = pg.backend();
    let a = account("steady", "pw-1");
    backend.ensure_database(&a).await.expect("first ensure");
    let before = stored_password(&pg, &a.database).await;
    let t = Instant::now();
    let again = backend.ensure_database(&a).await.expect("second ensure");
    eprintln!("steady ensure took {:?}", t.elapsed());
    assert!(again.changes.is_empty(), "{:?}", again.changes);
    assert!(!again.changed());
    assert_eq!(
        stored_password(&pg, &a.database).await,
        before,
        "password rewritten"
    );

    // Suspended steady state too.
    let mut s = a.clone();
    s.login = false;
    assert!(backend.ensure_database(&s).await.unwrap().changed());
    let again = backend.ensure_database(&s).await.unwrap();
    assert!(again.changes.is_empty(), "{:?}", again.changes);
}

#[tokio::test]
async fn tenants_cannot_cross_into_each_other_or_escalate() {
    let pg = PgServer::start().await;
    let backend = pg.backend();
    let a = account("tenant-a", "pw-a");
    let b = account("tenant-b", "pw-b");
    backend.ensure_database(&a).await.unwrap();
    backend.ensure_database(&b).await.unwrap();

    let b_client = pg
        .connect_as(&b.database, "pw-b", &b.database)
        .await
        .unwrap();
    b_client
        .batch_execute("CREATE TABLE secrets (v text); INSERT INTO secrets VALUES ('b-only')")
        .await
        .unwrap();

    // A cannot connect to B's database.
    let e = pg
        .connect_as(&a.database, "pw-a", &b.database)
        .await
        .must_fail("A connected to B's database");
    assert_refused(&e, "42501", "permission denied for database");
    // Nor with B's role and A's password.
    let e = pg
        .connect_as(&b.database, "pw-a", &b.database)
        .await
        .must_fail("wrong password accepted");
    assert_refused(&e, "28P01", "password authentication failed");

    // Even inside B's database (were CONNECT granted by mistake), A cannot read B's table.
    pg.superuser()
        .await
        .batch_execute(&format!(
            "GRANT CONNECT ON DATABASE \"{}\" TO \"{}\"",
            b.database, a.database
        ))
        .await
        .unwrap();
    let a_in_b = pg
        .connect_as(&a.database, "pw-a", &b.database)
        .await
        .unwrap();
    let e = a_in_b
        .query("SELECT * FROM secrets", &[])
        .await
        .must_fail("A read B's table");
    assert_refused(&e, "42501", "permission denied for table secrets");
    let e = a_in_b
        .batch_execute("CREATE TABLE intruder (x int)")
        .await
        .must_fail("A created a table in B's public schema");
    assert_refused(&e, "42501", "permission denied for schema public");
    // Control on the same session: A can run statements in B's database at all.
    let one: i32 = a_in_b.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    drop(a_in_b);
    // ensure corrects that drift: the stray grant is revoked and reported.
    let fixed = backend.ensure_database(&b).await.unwrap();
    assert!(
        fixed
            .changes
            .iter()
            .any(|c| c.contains("revoked access") && c.contains(&a.database)),
        "{:?}",
        fixed.changes
    );
    let e = pg
        .connect_as(&a.database, "pw-a", &b.database)
        .await
        .must_fail("grant not revoked");
    assert_refused(&e, "42501", "permission denied for database");

    // A is not privileged.
    let a_client = pg
        .connect_as(&a.database, "pw-a", &a.database)
        .await
        .unwrap();
    let row = a_client
        .query_one(
            "SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls, NOT rolinherit \
             FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .unwrap();
    for i in 0..6 {
        assert!(!row.get::<_, bool>(i), "attribute {i} set");
    }
    // Each attempt is refused with insufficient_privilege (42501) and the server's reason
    // for that statement; the same session runs what A may do (control).
    let set_b = format!("SET ROLE \"{}\"", b.database);
    let set_b_reason = format!("permission denied to set role \"{}\"", b.database);
    let grant_b = format!("GRANT \"{}\" TO \"{}\"", b.database, a.database);
    let grant_b_reason = format!("must have admin option on role \"{}\"", b.database);
    let alter = format!("ALTER ROLE \"{}\" SUPERUSER", a.database);
    for (sql, reason) in [
        (
            "CREATE DATABASE escape",
            "permission denied to create database",
        ),
        (
            "CREATE ROLE escape LOGIN PASSWORD 'x'",
            "permission denied to create role",
        ),
        (
            alter.as_str(),
            "must be superuser to alter superuser roles or change superuser attribute",
        ),
        (grant_b.as_str(), grant_b_reason.as_str()),
        (
            "SET ROLE postgres",
            "permission denied to set role \"postgres\"",
        ),
        (set_b.as_str(), set_b_reason.as_str()),
        (
            "COPY (SELECT 1) TO PROGRAM 'true'",
            "must be superuser or have privileges of the pg_execute_server_program role",
        ),
    ] {
        let e = a_client
            .batch_execute(sql)
            .await
            .err()
            .unwrap_or_else(|| panic!("A could run {sql}"));
        assert_refused(&e, "42501", reason);
    }
    a_client
        .batch_execute("CREATE TABLE mine (x int); DROP TABLE mine")
        .await
        .expect("control: A works in its own database on the same session");

    // Documented limit: the maintenance database still grants CONNECT to PUBLIC, but the
    // tenant can create nothing in its public schema.
    let in_postgres = pg
        .connect_as(&a.database, "pw-a", "postgres")
        .await
        .unwrap();
    let e = in_postgres
        .batch_execute("CREATE TABLE squat (x int)")
        .await
        .must_fail("created in postgres");
    assert_refused(&e, "42501", "permission denied for schema public");
}

#[tokio::test]
async fn a_server_where_public_may_create_in_the_maintenance_database_is_refused() {
    // Before PostgreSQL 15, PUBLIC may CREATE in schema public of every database, so any
    // tenant login could plant objects in the maintenance database (which it may connect to)
    // for other sessions to pick up. Silo does not rely on the version's default: it checks.
    let pg = PgServer::start().await;
    let backend = pg.backend();
    let a = account("tenant-a", "pw-a");
    backend
        .ensure_database(&a)
        .await
        .expect("a server with the PostgreSQL 15 default is fine");
    let in_postgres = pg
        .connect_as(&a.database, "pw-a", "postgres")
        .await
        .unwrap();
    let e = in_postgres
        .batch_execute("CREATE TABLE public.squat (x int)")
        .await
        .must_fail("created in postgres under the PostgreSQL 15 default");
    assert_refused(&e, "42501", "permission denied for schema public");

    // The PostgreSQL 14 default, set on this PostgreSQL 15: the tenant can now plant objects…
    let su = pg.superuser().await;
    su.batch_execute("GRANT CREATE ON SCHEMA public TO PUBLIC")
        .await
        .unwrap();
    in_postgres
        .batch_execute(
            "CREATE FUNCTION public.lower(varchar) RETURNS text LANGUAGE sql AS $$SELECT 'planted'$$",
        )
        .await
        .expect("the hole is real: a tenant plants a function in the maintenance database");
    // …so provisioning stops, naming the setting and the fix; no database is created.
    let b = account("tenant-b", "pw-b");
    let e = backend.ensure_database(&b).await.unwrap_err();
    assert!(matches!(e, BackendError::Unsafe { .. }), "{e:?}");
    assert_eq!(e.label(), "shared_unsafe");
    let text = e.to_string();
    assert!(
        text.starts_with(&format!(
            "shared PostgreSQL at 127.0.0.1:{}: refusing to provision tenants: PUBLIC may CREATE in schema public of database \"postgres\"",
            pg.port
        )),
        "{text}"
    );
    assert!(
        text.contains(
            "run `REVOKE CREATE ON SCHEMA \"public\" FROM PUBLIC` in database \"postgres\""
        ),
        "{text}"
    );
    let exists: i64 = su
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname = $1::text",
            &[&b.database],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(exists, 0);
    // Control: with the right revoked again, the same call provisions.
    su.batch_execute(
        "REVOKE CREATE ON SCHEMA public FROM PUBLIC; DROP FUNCTION public.lower(varchar)",
    )
    .await
    .unwrap();
    backend.ensure_database(&b).await.unwrap();
}

#[tokio::test]
async fn objects_planted_in_template1_do_not_reach_new_tenant_databases() {
    let pg = PgServer::start().await;
    let backend = pg.backend();
    let a = account("planter", "pw-a");
    backend.ensure_database(&a).await.unwrap();
    // template1 open to PUBLIC for CREATE (the pre-15 default there), a tenant plants a table.
    let su1 = pg.connect_admin("template1").await.unwrap();
    su1.batch_execute("GRANT CREATE ON SCHEMA public TO PUBLIC")
        .await
        .unwrap();
    let planter = pg
        .connect_as(&a.database, "pw-a", "template1")
        .await
        .unwrap();
    planter
        .batch_execute(
            "CREATE TABLE public.planted (v text); INSERT INTO public.planted VALUES ('from planter')",
        )
        .await
        .unwrap();
    drop(planter);
    drop(su1);
    // Control: a database made from template1 does carry it.
    let su = pg.superuser().await;
    su.batch_execute("CREATE DATABASE probe").await.unwrap();
    let probe = pg.connect_admin("probe").await.unwrap();
    let n: i64 = probe
        .query_one("SELECT count(*) FROM public.planted", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    // A new tenant's database does not.
    let c = account("newcomer", "pw-c");
    backend.ensure_database(&c).await.unwrap();
    let newcomer = pg
        .connect_as(&c.database, "pw-c", &c.database)
        .await
        .unwrap();
    let e = newcomer
        .query_one("SELECT count(*) FROM public.planted", &[])
        .await
        .must_fail("the planted table reached the new tenant's database");
    assert_refused(&e, "42P01", "relation \"public.planted\" does not exist");
}

#[tokio::test]
async fn suspension_ends_sessions_and_blocks_login_until_resumed() {
    let pg = PgServer::start().await;
    let backend = pg.backend();
    let mut a = account("suspended", "pw-s");
    backend.ensure_database(&a).await.unwrap();
    let open = pg
        .connect_as(&a.database, "pw-s", &a.database)
        .await
        .unwrap();
    open.batch_execute("CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)")
        .await
        .unwrap();

    a.login = false;
    let t = Instant::now();
    let ensured = backend.ensure_database(&a).await.unwrap();
    eprintln!("suspend took {:?}: {:?}", t.elapsed(), ensured.changes);
    let joined = ensured.changes.join("\n");
    assert!(joined.contains("disabled login"), "{joined}");
    assert!(joined.contains("terminated 1 session"), "{joined}");
    assert_session_ended(
        &open
            .query("SELECT 1", &[])
            .await
            .must_fail("open session survived suspension"),
    );
    let e = pg
        .connect_as(&a.database, "pw-s", &a.database)
        .await
        .must_fail("login while suspended");
    assert_refused(&e, "28000", "is not permitted to log in");

    a.login = true;
    let ensured = backend.ensure_database(&a).await.unwrap();
    assert_eq!(
        ensured.changes,
        vec![format!("enabled login of role {}", a.database)]
    );
    let back = pg
        .connect_as(&a.database, "pw-s", &a.database)
        .await
        .unwrap();
    let v: i32 = back
        .query_one("SELECT v FROM kept", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 42);
}

#[tokio::test]
async fn password_is_reset_only_when_asked() {
    let pg = PgServer::start().await;
    let backend = pg.backend();
    let mut a = account("rotating", "old-pw");
    backend.ensure_database(&a).await.unwrap();

    a.password = "new-pw".to_string();
    let ensured = backend.ensure_database(&a).await.unwrap();
    assert!(ensured.changes.is_empty(), "{:?}", ensured.changes);
    pg.connect_as(&a.database, "old-pw", &a.database)
        .await
        .expect("old password kept without reset");
    let e = pg
        .connect_as(&a.database, "new-pw", &a.database)
        .await
        .must_fail("new password applied without reset");
    assert_refused(&e, "28P01", "password authentication failed");

    a.reset_password = true;
    let ensured = backend.ensure_database(&a).await.unwrap();
    assert_eq!(
        ensured.changes,
        vec![format!("set the password of role {}", a.database)]
    );
    let e = pg
        .connect_as(&a.database, "old-pw", &a.database)
        .await
        .must_fail("old password still works");
    assert_refused(&e, "28P01", "password authentication failed");
    pg.connect_as(&a.database, "new-pw", &a.database)
        .await
        .expect("new password works");
}

#[tokio::test]
async fn retire_keeps_data_under_retired_name_and_purge_drops_it() {
    let pg = PgServer::start().await;
    let backend = pg.backend();
    let a = account("leaving", "pw-l");
    backend.ensure_database(&a).await.unwrap();
    let open = pg
        .connect_as(&a.database, "pw-l", &a.database)
        .await
        .unwrap();
    open.batch_execute("CREATE TABLE old_data (v text); INSERT INTO old_data VALUES ('before')")
        .await
        .unwrap();

    let now = 1_700_000_000;
    let retired = retired_name(&a.database, now);
    let t = Instant::now();
    assert!(backend.retire_database(&a.database, now).await.unwrap());
    eprintln!("retire took {:?}", t.elapsed());
    assert_session_ended(
        &open
            .query("SELECT 1", &[])
            .await
            .must_fail("session survived retirement"),
    );
    let e = pg
        .connect_as(&a.database, "pw-l", &a.database)
        .await
        .must_fail("the live name still logs in");
    assert_refused(&e, "28P01", "password authentication failed");
    let e = pg
        .connect_as(&retired, "pw-l", &retired)
        .await
        .must_fail("retired role can log in");
    assert_refused(&e, "28000", "is not permitted to log in");
    // Retiring again: nothing left under the live name.
    assert!(!backend.retire_database(&a.database, now + 5).await.unwrap());

    let admin_in_retired = pg
        .connect_admin(&retired)
        .await
        .expect("retired database exists");
    let v: String = admin_in_retired
        .query_one("SELECT v FROM old_data", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, "before");
    drop(admin_in_retired);

    // Same tenant again: a fresh empty database.
    let ensured = backend.ensure_database(&a).await.unwrap();
    assert!(
        ensured
            .changes
            .iter()
            .any(|c| c.starts_with("created database")),
        "{:?}",
        ensured.changes
    );
    let fresh = pg
        .connect_as(&a.database, "pw-l", &a.database)
        .await
        .unwrap();
    let e = fresh
        .query("SELECT * FROM old_data", &[])
        .await
        .must_fail("old data visible");
    assert_refused(&e, "42P01", "relation \"old_data\" does not exist");

    // Purge: cut-off at the retirement keeps it, after drops database and role.
    assert!(backend.purge_retired(now).await.unwrap().is_empty());
    let purged = backend.purge_retired(now + 1).await.unwrap();
    assert_eq!(purged.len(), 1, "{purged:?}");
    assert_eq!(purged[0].database, retired);
    assert_eq!(purged[0].retired_at_unix, now);
    let su = pg.superuser().await;
    let left: i64 = su
        .query_one(
            "SELECT (SELECT count(*) FROM pg_database WHERE datname = $1::text) + (SELECT count(*) FROM pg_roles WHERE rolname = $1::text)",
            &[&retired],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    // The live tenant is untouched.
    let v: i32 = fresh.query_one("SELECT 7", &[]).await.unwrap().get(0);
    assert_eq!(v, 7);
    assert!(backend.purge_retired(now + 1).await.unwrap().is_empty());
}

#[tokio::test]
async fn invalid_database_names_are_refused_before_any_connection() {
    // Nothing listens here: a name check that connected first would report Connect.
    let backend = PostgresBackend::new(
        "127.0.0.1",
        free_port(),
        AdminCredentials {
            username: "postgres".into(),
            password: "x".into(),
            database: None,
        },
    );
    for bad in [
        "postgres",
        "silo_t_XYZ",
        "silo_t_ab\"; DROP DATABASE postgres; --",
        "silo_r_1_ab",
        "",
    ] {
        let mut a = account("x", "pw");
        a.database = bad.to_string();
        let e = backend.ensure_database(&a).await.unwrap_err();
        assert!(matches!(e, BackendError::Command { .. }), "{e:?}");
        let text = e.to_string();
        assert!(
            text.contains("not a tenant database name") && text.contains(&format!("{bad:?}")),
            "{text}"
        );
        let e = backend.retire_database(bad, 1).await.unwrap_err();
        assert!(e.to_string().contains("not a tenant database name"), "{e}");
    }
    let e = backend
        .retire_database(&database_name("x"), -1)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not a valid identifier"), "{e}");
    let e = backend
        .ensure_database(&account("x", ""))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("password is empty"), "{e}");
}

#[tokio::test]
async fn unreachable_server_is_a_connect_error_naming_the_address() {
    let port = free_port();
    let backend = PostgresBackend::new(
        "127.0.0.1",
        port,
        AdminCredentials {
            username: "postgres".into(),
            password: "x".into(),
            database: None,
        },
    );
    let t = Instant::now();
    let e = backend
        .ensure_database(&account("x", "pw"))
        .await
        .unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(6), "{:?}", t.elapsed());
    let BackendError::Connect {
        address, message, ..
    } = &e
    else {
        panic!("{e:?}")
    };
    assert_eq!(address, &format!("127.0.0.1:{port}"));
    assert!(message.contains("cannot connect"), "{message}");
    assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");
    assert_eq!(e.label(), "shared_connect");
}

#[tokio::test]
async fn silent_server_times_out_as_a_connect_error() {
    // Accepts TCP (kernel backlog) but never answers the startup message.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let backend = PostgresBackend::new(
        "127.0.0.1",
        port,
        AdminCredentials {
            username: "postgres".into(),
            password: "x".into(),
            database: None,
        },
    );
    let t = Instant::now();
    let e = backend.purge_retired(0).await.unwrap_err();
    let took = t.elapsed();
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(8),
        "{took:?}"
    );
    let text = e.to_string();
    assert!(matches!(e, BackendError::Connect { .. }), "{e:?}");
    assert!(
        text.contains(&format!("127.0.0.1:{port}")) && text.contains("no answer within 5s"),
        "{text}"
    );
    drop(listener);
}

#[tokio::test]
async fn wrong_admin_password_is_a_clear_connect_error() {
    let pg = PgServer::start().await;
    let backend = PostgresBackend::new(
        "127.0.0.1",
        pg.port,
        AdminCredentials {
            username: "postgres".into(),
            password: "wrong".into(),
            database: None,
        },
    );
    let e = backend
        .ensure_database(&account("x", "pw"))
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, BackendError::Connect { .. }), "{e:?}");
    assert!(
        text.contains("authentication failed (check the admin Secret)"),
        "{text}"
    );
    assert!(
        text.contains("password authentication failed for user \"postgres\""),
        "{text}"
    );
    assert!(!text.contains("wrong"), "password leaked: {text}");

    let backend = PostgresBackend::new(
        "127.0.0.1",
        pg.port,
        AdminCredentials {
            username: String::new(),
            password: "x".into(),
            database: None,
        },
    );
    let e = backend
        .ensure_database(&account("x", "pw"))
        .await
        .unwrap_err();
    assert!(matches!(e, BackendError::Credentials { .. }), "{e:?}");
    assert!(e.to_string().contains("empty username"), "{e}");
}

#[tokio::test]
async fn passwords_with_quotes_backslashes_and_dollars_work_and_inject_nothing() {
    let pg = PgServer::start().await;
    let backend = pg.backend();
    let nasty = [
        (
            "ascii",
            r#"it's "quoted" \\ back\slash $$ dollar $x$; CREATE ROLE injected SUPERUSER LOGIN; --"#,
        ),
        ("ascii2", "'; DROP DATABASE postgres; --\\"),
        (
            "unicode",
            "pässwörd' || E'\\\\' $$; CREATE ROLE injected2 SUPERUSER; -- ✓",
        ),
    ];
    for (tenant, password) in nasty {
        let mut a = account(tenant, password);
        backend
            .ensure_database(&a)
            .await
            .unwrap_or_else(|e| panic!("{tenant}: {e}"));
        pg.connect_as(&a.database, password, &a.database)
            .await
            .unwrap_or_else(|e| panic!("{tenant} cannot log in: {}", err_text(&e)));
        // Reset path too.
        a.reset_password = true;
        backend.ensure_database(&a).await.unwrap();
        pg.connect_as(&a.database, password, &a.database)
            .await
            .unwrap_or_else(|e| panic!("{tenant} after reset: {}", err_text(&e)));
    }
    let su = pg.superuser().await;
    let injected: i64 = su
        .query_one(
            "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'injected%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(injected, 0);
    let postgres_there: i64 = su
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname = 'postgres'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(postgres_there, 1);
}

#[tokio::test]
async fn reconnects_after_the_admin_connection_is_killed_and_fixes_role_drift() {
    let pg = PgServer::start().await;
    let backend = pg.backend();
    let a = account("drift", "pw-d");
    backend.ensure_database(&a).await.unwrap();

    let su = pg.superuser().await;
    su.batch_execute(&format!(
        "ALTER ROLE \"{0}\" SUPERUSER CREATEDB NOINHERIT; GRANT pg_read_all_data TO \"{0}\"; \
         SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'silo-operator'",
        a.database
    ))
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let ensured = backend
        .ensure_database(&a)
        .await
        .expect("ensure after the connection was killed");
    let joined = ensured.changes.join("\n");
    assert!(joined.contains("removed privileges"), "{joined}");
    assert!(
        joined.contains("revoked membership") && joined.contains("pg_read_all_data"),
        "{joined}"
    );
    let row = su
        .query_one(
            "SELECT rolsuper OR rolcreatedb OR NOT rolinherit, pg_has_role($1::text, 'pg_read_all_data', 'MEMBER') FROM pg_roles WHERE rolname = $1::text",
            &[&a.database],
        )
        .await
        .unwrap();
    assert!(!row.get::<_, bool>(0));
    assert!(!row.get::<_, bool>(1));
    assert!(
        backend
            .ensure_database(&a)
            .await
            .unwrap()
            .changes
            .is_empty()
    );
}
