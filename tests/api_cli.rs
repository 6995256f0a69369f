//! `silo token create` and `silo api` as commands: the token alone on the last line (usable at
//! once), migrations applied once when two start together, and one clear line with exit code
//! 1 when the database or the cluster cannot be used.

mod pg_support;

use std::net::TcpListener;
use std::process::Command;

use pg_support::PgServer;

fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    port
}

fn silo(args: &[&str], db_url: &str, password: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kubeconfig");
    std::fs::write(
        &kc,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster:\n    server: https://127.0.0.1:{}\n    insecure-skip-tls-verify: true\nusers:\n- name: t\n  user:\n    token: x\ncontexts:\n- name: t\n  context:\n    cluster: t\n    user: t\ncurrent-context: t\n",
            closed_port()
        ),
    )
    .unwrap();
    Command::new(env!("CARGO_BIN_EXE_silo"))
        .args(args)
        .env("SILO_API_DATABASE_URL", db_url)
        .env("SILO_API_DATABASE_PASSWORD", password)
        .env("KUBECONFIG", &kc)
        .env_remove("SILO_CONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_create_prints_the_token_alone_on_the_last_line() {
    let pg = PgServer::start().await;
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port);
    // Two at once: the migrations are applied once (advisory lock), both tokens are stored.
    let (a, b) = tokio::join!(
        tokio::task::spawn_blocking({
            let (url, pw) = (url.clone(), pg.password.clone());
            move || {
                silo(
                    &[
                        "token", "create", "--tenant", "north", "--role", "admin", "--name",
                        "first",
                    ],
                    &url,
                    &pw,
                )
            }
        }),
        tokio::task::spawn_blocking({
            let (url, pw) = (url.clone(), pg.password.clone());
            move || {
                silo(
                    &[
                        "token",
                        "create",
                        "--tenant",
                        "north",
                        "--role",
                        "viewer",
                        "--expires",
                        "2h",
                    ],
                    &url,
                    &pw,
                )
            }
        }),
    );
    let mut tokens = Vec::new();
    for out in [a.unwrap(), b.unwrap()] {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        let last = stdout.lines().last().unwrap();
        assert!(last.starts_with("silo_") && !last.contains(' '), "{stdout}");
        tokens.push(last.to_string());
    }
    let client = pg.superuser().await;
    let rows = client
        .query("SELECT tenant, role, name, created_by, expires_at > now() + interval '1 hour' FROM api_tokens ORDER BY role", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].get::<_, String>(1), "admin");
    assert_eq!(
        rows[0].get::<_, Option<String>>(2).as_deref(),
        Some("first")
    );
    assert_eq!(rows[0].get::<_, String>(3), "cli");
    let history = client
        .query_one(
            "SELECT count(*), count(DISTINCT version) FROM silo_api_schema_history",
            &[],
        )
        .await
        .unwrap();
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap()
        .filter(|e| {
            let n = e.as_ref().unwrap().file_name();
            let n = n.to_string_lossy();
            n.starts_with('V') && n.ends_with(".sql")
        })
        .count() as i64;
    assert_eq!(
        (history.get::<_, i64>(0), history.get::<_, i64>(1)),
        (files, files),
        "each migration recorded once"
    );
    // Only hashes are stored.
    let dump = client
        .query("SELECT encode(secret_hash, 'hex') FROM api_tokens", &[])
        .await
        .unwrap();
    for r in dump {
        let h: String = r.get(0);
        assert!(
            tokens
                .iter()
                .all(|t| !t.contains(&h) && !h.contains(&t[22..]))
        );
    }
    // Bad arguments: one line, exit 1, nothing stored.
    let out = silo(
        &[
            "token",
            "create",
            "--tenant",
            "north",
            "--role",
            "admin",
            "--expires",
            "soon",
        ],
        &url,
        &pg.password,
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("silo token create: --expires:"), "{err}");
}

#[test]
fn unusable_database_or_cluster_gives_one_clear_line() {
    // No database configured.
    let out = silo(&["api", "--addr", "127.0.0.1:0"], "", "");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("api.database.url is not set"), "{err}");
    // A database nobody listens on.
    let port = closed_port();
    let out = silo(
        &["api", "--addr", "127.0.0.1:0"],
        &format!("postgres://silo@127.0.0.1:{port}/silo"),
        "pw",
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!(
            "silo api: cannot reach the API database at 127.0.0.1:{port}/silo"
        )),
        "{err}"
    );
    assert!(!err.contains("pw"), "the password never shows: {err}");
    let out = silo(
        &["token", "create", "--tenant", "t", "--role", "admin"],
        "not a url",
        "",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains("api.database.url is not a valid PostgreSQL URL")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_cluster_gives_one_clear_line() {
    let pg = PgServer::start().await;
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port);
    let pw = pg.password.clone();
    let out =
        tokio::task::spawn_blocking(move || silo(&["api", "--addr", "127.0.0.1:0"], &url, &pw))
            .await
            .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("silo api: cannot reach the Kubernetes API server at https://127.0.0.1:"),
        "{err}"
    );
}
