//! The audit trail over HTTP with a real PostgreSQL: exactly one record per mutating call of
//! every endpoint in the OpenAPI document (accepted or refused, routes added later included),
//! what a record holds, the subtree boundary of `GET /v1/tenants/{name}/audit`, filters and
//! paging, no secret in any record, append-only for the API's role (SQLSTATEs), and
//! `silo audit verify` / `silo audit archive` naming edited and deleted records.

mod api_support;
mod pg_support;

use std::process::Command;

use api_support::{Env, four_levels, tenant};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use silo::operator::cluster::EventInfo;

fn unlimited(c: &mut silo::config::PlatformConfig) {
    c.api.rate_limit_per_second = 0;
}

async fn start() -> Env {
    let mut tree = four_levels();
    tree.push(tenant("other", None));
    tree.push(tenant("other-a", Some("other")));
    Env::start_with(tree, silo::api::testing::MemoryApiCluster::new(), unlimited).await
}

async fn count(env: &Env) -> i64 {
    let c = env.pg.superuser().await;
    c.query_one("SELECT count(*) FROM audit_records", &[])
        .await
        .unwrap()
        .get(0)
}

/// (action, status, outcome, actor_token, tenant) of the newest record.
async fn last(env: &Env) -> (String, i32, String, String, String) {
    let c = env.pg.superuser().await;
    let r = c
        .query_one(
            "SELECT action, status, outcome, actor_token, tenant FROM audit_records ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))
}

fn silo_cmd(env: &Env, args: &[&str], extra: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_silo"));
    cmd.args(args)
        .env("SILO_API_DATABASE_URL", &env.config.api.database.url)
        .env(
            "SILO_API_DATABASE_PASSWORD",
            &env.config.api.database.password,
        )
        .env_remove("SILO_CONFIG")
        .env_remove("SILO_API_AUDIT_SIGNING_KEY")
        .env_remove("SILO_API_AUDIT_VERIFY_KEY");
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mutating_endpoint_leaves_exactly_one_record() {
    let env = start().await;
    let (admin, admin_id) = env.named_token("dealer-a", "admin", "dana").await;
    let doc = env.get("/openapi.json", &admin).await.1;
    let mut covered = 0;
    // Every non-GET operation of the document (devices and whatever comes later included):
    // one call each, with a body the handler refuses or accepts, and exactly one record.
    for (template, item) in doc["paths"].as_object().unwrap() {
        for method in ["post", "patch", "delete", "put"] {
            if item.get(method).is_none() {
                continue;
            }
            let path = template
                .replace("{name}", "cust-a")
                .replace("{id}", "0000000000000000")
                .replace("{user}", "nobody");
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let body = (method != "delete").then(|| json!({}));
            let before = count(&env).await;
            let (status, _) = env.call(m.clone(), &path, Some(&admin), body).await;
            assert_eq!(count(&env).await, before + 1, "{m} {template}");
            let (action, st, _, actor, _) = last(&env).await;
            assert_eq!(action, format!("{m} {template}"));
            assert_eq!(st, i32::from(status.as_u16()), "{m} {template}");
            assert_eq!(actor, admin_id);
            covered += 1;
        }
    }
    assert!(covered >= 15, "{covered} mutating operations");
    // Without a valid token: still one record, actor `-`, in no tenant's trail.
    let before = count(&env).await;
    let (s, _) = env
        .call(
            Method::POST,
            "/v1/tenants",
            None,
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(count(&env).await, before + 1);
    let (action, status, outcome, actor, tenant) = last(&env).await;
    assert_eq!(
        (
            action.as_str(),
            status,
            outcome.as_str(),
            actor.as_str(),
            tenant.as_str()
        ),
        ("POST /v1/tenants", 401, "Unauthorized", "-", "")
    );
    // Reads leave nothing.
    let before = count(&env).await;
    env.get("/v1/tenants/cust-a", &admin).await;
    env.get("/v1/tenants/dealer-a/audit", &admin).await;
    assert_eq!(count(&env).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_show_who_what_outcome_inside_the_subtree_only() {
    let env = start().await;
    let (dana, dana_id) = env.named_token("dealer-a", "admin", "dana").await;
    let (viewer, _) = env.named_token("dealer-a", "viewer", "vic").await;
    let (bob, bob_id) = env.named_token("dealer-b", "admin", "bob").await;

    let (s, _) = env
        .call(
            Method::PATCH,
            "/v1/tenants/cust-a",
            Some(&dana),
            Some(json!({"displayName": "Customer A"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = env
        .call(
            Method::PATCH,
            "/v1/tenants/cust-a",
            Some(&viewer),
            Some(json!({"displayName": "No"})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // A probe from the sibling subtree: 404, filed in the prober's own trail.
    let (s, _) = env
        .call(
            Method::PATCH,
            "/v1/tenants/cust-a",
            Some(&bob),
            Some(json!({"displayName": "Mine"})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let (s, page) = env.get("/v1/tenants/dealer-a/audit", &dana).await;
    assert_eq!(s, StatusCode::OK, "{page}");
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{page}");
    let refused = &items[0];
    let ok = &items[1];
    assert_eq!(ok["actor"], json!({"token": dana_id, "name": "dana"}));
    assert_eq!(ok["tenant"], "cust-a");
    assert_eq!(ok["action"], "PATCH /v1/tenants/{name}");
    assert_eq!(ok["target"], "/v1/tenants/cust-a");
    assert_eq!(ok["summary"]["body"], json!({"displayName": "Customer A"}));
    assert_eq!(
        (ok["status"].as_i64(), ok["outcome"].as_str()),
        (Some(200), Some("ok"))
    );
    assert_eq!(ok["chain"], "platform");
    assert_eq!(ok["hash"].as_str().unwrap().len(), 64);
    assert_eq!(refused["prevHash"], ok["hash"]);
    assert_eq!(refused["actor"]["name"], "vic");
    assert_eq!(
        (refused["status"].as_i64(), refused["outcome"].as_str()),
        (Some(403), Some("Forbidden"))
    );
    assert!(
        refused["summary"]["error"]
            .as_str()
            .unwrap()
            .contains("tenants.update"),
        "{refused}"
    );
    // Bob's probe is in dealer-b's trail, not in dealer-a's, and names no more than he sent.
    let (_, b) = env.get("/v1/tenants/dealer-b/audit", &bob).await;
    assert_eq!(b["items"].as_array().unwrap().len(), 1, "{b}");
    assert_eq!(b["items"][0]["tenant"], "dealer-b");
    assert_eq!(b["items"][0]["actor"]["token"], bob_id);
    assert_eq!(b["items"][0]["status"], 404);

    // The boundary: bob reading dealer-a's trail is the one 404 (positive control above).
    let (s, b404) = env.get("/v1/tenants/dealer-a/audit", &bob).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, missing) = env.get("/v1/tenants/nowhere/audit", &bob).await;
    assert_eq!(b404, missing);
    // An ancestor sees the subtree's records; the root sees both subtrees.
    let (root, _) = env.named_token("platform", "admin", "root").await;
    let (_, all) = env.get("/v1/tenants/platform/audit", &root).await;
    assert_eq!(all["items"].as_array().unwrap().len(), 3);
    let (_, a) = env.get("/v1/tenants/cust-a/audit", &dana).await;
    assert_eq!(a["items"].as_array().unwrap().len(), 2);

    // Filters and paging.
    let (_, f) = env.get("/v1/tenants/platform/audit?actor=vic", &root).await;
    assert_eq!(f["items"].as_array().unwrap().len(), 1);
    let (_, f) = env
        .get(
            &format!("/v1/tenants/platform/audit?actor={dana_id}"),
            &root,
        )
        .await;
    assert_eq!(f["items"].as_array().unwrap().len(), 1);
    let (_, f) = env
        .get(
            "/v1/tenants/platform/audit?action=PATCH%20/v1/tenants/%7Bname%7D",
            &root,
        )
        .await;
    assert_eq!(f["items"].as_array().unwrap().len(), 3);
    let (_, f) = env
        .get(
            "/v1/tenants/platform/audit?from=2999-01-01T00:00:00Z",
            &root,
        )
        .await;
    assert_eq!(f["items"].as_array().unwrap().len(), 0);
    let (_, f) = env
        .get(
            "/v1/tenants/platform/audit?to=2999-01-01T00:00:00Z&from=2000-01-01T00:00:00Z",
            &root,
        )
        .await;
    assert_eq!(f["items"].as_array().unwrap().len(), 3);
    let (s, e) = env
        .get("/v1/tenants/platform/audit?from=yesterday", &root)
        .await;
    assert_eq!(
        (s, e["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("from")),
        "{e}"
    );
    assert!(e["message"].as_str().unwrap().contains("RFC 3339"));
    let (s, e) = env
        .get("/v1/tenants/platform/audit?cursor=bad", &root)
        .await;
    assert_eq!(
        (s, e["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("cursor"))
    );
    let (_, p1) = env.get("/v1/tenants/platform/audit?limit=2", &root).await;
    assert_eq!(p1["items"].as_array().unwrap().len(), 2);
    let next = p1["next"].as_str().unwrap();
    let (_, p2) = env
        .get(
            &format!("/v1/tenants/platform/audit?limit=2&cursor={next}"),
            &root,
        )
        .await;
    assert_eq!(p2["items"].as_array().unwrap().len(), 1);
    assert_eq!(p2["next"], Value::Null);
    assert!(p2["items"][0]["id"].as_i64() < p1["items"][1]["id"].as_i64());
    // A role without audit.read.
    env.cluster.put_tenant({
        let mut t = tenant("dealer-a", Some("dist-a"));
        t.spec.roles = vec![silo::types::CustomRole {
            name: "blind".into(),
            permissions: vec!["tenants.read".into()],
        }];
        t
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let blind = env.token("dealer-a", "blind").await;
    let (s, e) = env.get("/v1/tenants/dealer-a/audit", &blind).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{e}");
    assert!(e["message"].as_str().unwrap().contains("audit.read"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_or_password_appears_in_any_record() {
    let env = start().await;
    let (admin, _) = env.named_token("dealer-a", "admin", "dana").await;
    let mut secrets = vec![admin.clone()];
    let (s, minted) = env
        .post(
            "/v1/tokens",
            &admin,
            json!({"tenant": "cust-a", "role": "viewer", "name": "ci"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{minted}");
    secrets.push(minted["token"].as_str().unwrap().to_string());
    // Secrets pasted where they do not belong: a setting, a display name, a password field.
    let (s, b) = env
        .call(
            Method::PATCH,
            "/v1/tenants/cust-a",
            Some(&admin),
            Some(
                json!({"settings": {"mqttPassword": "hunter2-secret", "apiToken": "tok-123"},
                        "displayName": format!("see {}", secrets[1])}),
            ),
        )
        .await;
    assert!(s.is_success(), "{b}");
    env.post(
        "/v1/tenants",
        &admin,
        json!({"name": "x", "parent": "cust-a", "password": "pw-777"}),
    )
    .await;
    env.call(
        Method::POST,
        "/v1/tenants",
        Some(&secrets[1]),
        Some(json!({"name": "y"})),
    )
    .await;
    env.call(
        Method::POST,
        "/v1/tenants",
        Some("silo_0123456789abcdef_notavalidsecretnotavalidsecretnotavali"),
        Some(json!({})),
    )
    .await;
    secrets.extend(["hunter2-secret", "tok-123", "pw-777", "notavalidsecret"].map(String::from));
    let c = env.pg.superuser().await;
    let rows = c
        .query("SELECT row_to_json(a)::text FROM audit_records a", &[])
        .await
        .unwrap();
    assert!(rows.len() >= 5);
    for r in rows {
        let text: String = r.get(0);
        for s in &secrets {
            assert!(!text.contains(s.as_str()), "{s} in {text}");
        }
    }
    // The minted token's record is there, without the token.
    let (_, t) = env
        .get(
            "/v1/tenants/dealer-a/audit?action=POST%20/v1/tokens",
            &admin,
        )
        .await;
    assert_eq!(t["items"][0]["status"], 201);
    assert_eq!(t["items"][0]["tenant"], "cust-a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_role_may_only_insert_and_select() {
    let env = start().await;
    let (admin, _) = env.named_token("dealer-a", "admin", "dana").await;
    env.call(
        Method::PATCH,
        "/v1/tenants/cust-a",
        Some(&admin),
        Some(json!({"displayName": "A"})),
    )
    .await;
    let su = env.pg.superuser().await;
    su.batch_execute("CREATE ROLE silo_api LOGIN PASSWORD 'api-pw' IN ROLE silo_api_writer")
        .await
        .unwrap();
    let api = env
        .pg
        .connect_as("silo_api", "api-pw", "postgres")
        .await
        .unwrap();
    // Positive controls: the role reads and appends (the chain is extended by the trigger).
    let n: i64 = api
        .query_one("SELECT count(*) FROM audit_records", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    let entry = silo::audit::Entry {
        actor_token: "t".into(),
        actor_name: String::new(),
        tenant: "cust-a".into(),
        path: vec![
            "platform".into(),
            "dist-a".into(),
            "dealer-a".into(),
            "cust-a".into(),
        ],
        action: "TEST".into(),
        target: "x".into(),
        summary: json!({}),
        status: 200,
        outcome: "ok".into(),
    };
    silo::audit::append(&api, &entry).await.unwrap();
    // The API's own tables stay writable for it.
    api.execute("UPDATE api_tokens SET name = name", &[])
        .await
        .unwrap();
    // UPDATE, DELETE, TRUNCATE by the API's role: no privilege (42501).
    for sql in [
        "UPDATE audit_records SET outcome = 'x'",
        "DELETE FROM audit_records",
        "TRUNCATE audit_records",
        "UPDATE audit_heads SET seq = 0",
        "DELETE FROM audit_heads",
    ] {
        let e = api.batch_execute(sql).await.unwrap_err();
        assert_eq!(e.code().map(|c| c.code()), Some("42501"), "{sql}: {e}");
    }
    // Even the owner (here a superuser) is refused by the append-only triggers (SA001).
    for sql in [
        "UPDATE audit_records SET outcome = 'x'",
        "DELETE FROM audit_records",
        "TRUNCATE audit_records",
    ] {
        let e = su.batch_execute(sql).await.unwrap_err();
        assert_eq!(e.code().map(|c| c.code()), Some("SA001"), "{sql}: {e}");
        assert!(e.to_string().contains("append-only") || format!("{e:?}").contains("append-only"));
    }
    let out = silo_cmd(&env, &["audit", "verify"], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_the_edited_and_the_deleted_record() {
    let env = start().await;
    let (admin, _) = env.named_token("platform", "admin", "root").await;
    let (other, _) = env.named_token("other", "admin", "o").await;
    for i in 0..4 {
        env.call(
            Method::PATCH,
            "/v1/tenants/cust-a",
            Some(&admin),
            Some(json!({"displayName": format!("A{i}")})),
        )
        .await;
        env.call(
            Method::PATCH,
            "/v1/tenants/other-a",
            Some(&other),
            Some(json!({"displayName": format!("O{i}")})),
        )
        .await;
    }
    let out = silo_cmd(&env, &["audit", "verify"], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("audit trail intact: 8 records in 2 chains"),
        "{stdout}"
    );

    let su = env.pg.superuser().await;
    let id = |chain: &'static str, seq: i64| {
        let su = &su;
        async move {
            su.query_one(
                "SELECT id FROM audit_records WHERE chain = $1 AND seq = $2",
                &[&chain, &seq],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
        }
    };
    let edited = id("platform", 2).await;
    let deleted_next = id("other", 3).await;
    // Tampering needs the triggers off (superuser: session_replication_role).
    su.batch_execute(&format!(
        "SET session_replication_role = replica; \
         UPDATE audit_records SET summary = '{{\"body\": {{\"displayName\": \"forged\"}}}}' WHERE id = {edited}; \
         DELETE FROM audit_records WHERE chain = 'other' AND seq = 2; \
         RESET session_replication_role;"
    ))
    .await
    .unwrap();
    let out = silo_cmd(&env, &["audit", "verify"], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("chain \"platform\": record id {edited} (seq 2,"))
            && stderr.contains("contents changed"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "chain \"other\": record id {deleted_next} (seq 3,"
        )) && stderr.contains("seq 2..2 before it are missing"),
        "{stderr}"
    );
    // Deleting the newest record (the tail) is found through the chain's head.
    su.batch_execute(
        "SET session_replication_role = replica; \
         UPDATE audit_records SET summary = '{\"body\": {\"displayName\": \"A1\"}}' WHERE chain = 'platform' AND seq = 2; \
         DELETE FROM audit_records WHERE chain = 'platform' AND seq = 4; \
         RESET session_replication_role;",
    )
    .await
    .unwrap();
    let out = silo_cmd(&env, &["audit", "verify"], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail = id("platform", 3).await;
    assert!(
        stderr.contains(&format!("chain \"platform\": record id {tail} (seq 3,"))
            && stderr.contains("head is at seq 4"),
        "{stderr}"
    );
    // A database that cannot be reached: one line, exit 1.
    let out = Command::new(env!("CARGO_BIN_EXE_silo"))
        .args(["audit", "verify"])
        .env("SILO_API_DATABASE_URL", "postgres://x@127.0.0.1:1/db")
        .env_remove("SILO_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("silo audit verify: "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_exports_signs_a_checkpoint_and_verify_still_passes() {
    let env = start().await;
    let (admin, _) = env.named_token("platform", "admin", "root").await;
    for i in 0..5 {
        env.call(
            Method::PATCH,
            "/v1/tenants/cust-a",
            Some(&admin),
            Some(json!({"displayName": format!("A{i}")})),
        )
        .await;
    }
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("audit-2026.jsonl");
    let out_arg = out_file.to_str().unwrap();
    // Without a signing key: refused, nothing removed.
    let out = silo_cmd(
        &env,
        &["audit", "archive", "--before", "0d", "--out", out_arg],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("api.audit.signingKey is not set"));
    assert!(!out_file.exists());
    let out = silo_cmd(
        &env,
        &[
            "audit",
            "archive",
            "--before",
            "last week",
            "--out",
            out_arg,
        ],
        &[],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("--before \"last week\""));

    let (seed, public) = silo::audit::sign::Signer::generate();
    let keys = [("SILO_API_AUDIT_SIGNING_KEY", seed.as_str())];
    let cutoff = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    env.call(
        Method::PATCH,
        "/v1/tenants/cust-a",
        Some(&admin),
        Some(json!({"displayName": "after"})),
    )
    .await;
    let out = silo_cmd(
        &env,
        &["audit", "archive", "--before", &cutoff, "--out", out_arg],
        &keys,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("archived 5 records"), "{stdout}");
    assert!(
        stdout.contains("chain \"platform\" through seq 5"),
        "{stdout}"
    );
    let lines: Vec<Value> = std::fs::read_to_string(&out_file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5);
    assert_eq!(lines[0]["seq"], 1);
    assert_eq!(lines[4]["summary"]["body"]["displayName"], "A4");
    // The API shows what is left: the later call and the checkpoint.
    let (_, left) = env.get("/v1/tenants/platform/audit", &admin).await;
    let items = left["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{left}");
    assert_eq!(items[0]["action"], "audit.checkpoint");
    assert_eq!(items[0]["summary"]["throughSeq"], 5);
    assert_eq!(items[0]["summary"]["throughHash"], lines[4]["hash"]);
    // Verify starts from the checkpoint: with the public key it checks the signature.
    let verify = [("SILO_API_AUDIT_VERIFY_KEY", public.as_str())];
    let out = silo_cmd(&env, &["audit", "verify"], &verify);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("1 checkpoints verified"), "{stdout}");
    let out = silo_cmd(&env, &["audit", "verify"], &[]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 not checked"));
    // Another key pair's public key: the checkpoint is not trusted.
    let (_, stranger) = silo::audit::sign::Signer::generate();
    let out = silo_cmd(
        &env,
        &["audit", "verify"],
        &[("SILO_API_AUDIT_VERIFY_KEY", stranger.as_str())],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no valid signature"));
    // Appends go on after the archive and the chain stays whole.
    env.call(
        Method::PATCH,
        "/v1/tenants/cust-a",
        Some(&admin),
        Some(json!({"displayName": "later"})),
    )
    .await;
    let out = silo_cmd(&env, &["audit", "verify"], &verify);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // An existing file is never overwritten.
    let out = silo_cmd(
        &env,
        &["audit", "archive", "--before", "0d", "--out", out_arg],
        &keys,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot create"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_events_reach_the_trail_through_the_database() {
    let env = start().await;
    let audit =
        silo::audit::OperatorAudit::spawn(&env.config.api.database, "silo-operator-0").unwrap();
    let mut t = tenant("cust-a", Some("dealer-a"));
    t.status = Some(silo::types::TenantStatus {
        path: vec![
            "platform".into(),
            "dist-a".into(),
            "dealer-a".into(),
            "cust-a".into(),
        ],
        ..Default::default()
    });
    assert!(audit.event(
        &t,
        &EventInfo::normal("KeyRotated", "RotateKey", "key k rotated: version 1 → 2")
    ));
    // Progress events are not audit records.
    assert!(!audit.event(
        &t,
        &EventInfo::normal("Provisioning", "Reconcile", "waiting")
    ));
    // A tenant whose status has no path yet is filed under its latest known path.
    let mut bare = tenant("cust-a", Some("dealer-a"));
    bare.status = None;
    assert!(audit.event(
        &bare,
        &EventInfo::normal(
            "Deleted",
            "Delete",
            "namespace tenant-cust-a deleted and key scheduled for deletion"
        )
    ));
    let (admin, _) = env.named_token("dealer-a", "admin", "dana").await;
    let mut items = Vec::new();
    for _ in 0..50 {
        let (_, page) = env
            .get("/v1/tenants/dealer-a/audit?actor=operator", &admin)
            .await;
        items = page["items"].as_array().cloned().unwrap_or_default();
        if items.len() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(items.len(), 2, "{items:?}");
    assert_eq!(items[0]["action"], "operator.Deleted");
    assert_eq!(items[1]["action"], "operator.KeyRotated");
    assert_eq!(
        items[1]["actor"],
        json!({"token": "operator", "name": "silo-operator-0"})
    );
    assert_eq!(items[1]["target"], "Tenant/cust-a");
    assert_eq!(items[1]["status"], 0);
    let out = silo_cmd(&env, &["audit", "verify"], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconciler_sends_its_significant_events_to_the_trail() {
    use silo::operator::Reconciler;
    use silo::operator::cluster::memory::MemoryCluster;
    use silo::operator::reconcile::pass::reconcile_pass;
    let env = start().await;
    let cluster = std::sync::Arc::new(MemoryCluster::new());
    let keys = std::sync::Arc::new(
        silo::operator::key_service::ProviderKeys::in_memory()
            .await
            .unwrap(),
    );
    let audit =
        silo::audit::OperatorAudit::spawn(&env.config.api.database, "silo-operator-0").unwrap();
    let rec = Reconciler::new(
        cluster.clone(),
        silo::config::PlatformConfig::default(),
        keys,
        None,
    )
    .with_shared(std::sync::Arc::new(silo::backends::Unconfigured))
    .with_audit(audit);
    cluster.put_tenant(tenant("platform", None));
    cluster.put_tenant(tenant("dist-a", Some("platform")));
    for _ in 0..6 {
        cluster.run_controllers();
        reconcile_pass(&rec, cluster.inventory()).await;
    }
    let (admin, _) = env.named_token("platform", "admin", "root").await;
    let mut actions = Vec::new();
    for _ in 0..50 {
        let (_, page) = env
            .get("/v1/tenants/dist-a/audit?actor=operator", &admin)
            .await;
        actions = page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["action"].as_str().unwrap().to_string())
            .collect();
        if actions.iter().any(|a| a == "operator.Ready") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(actions.iter().any(|a| a == "operator.Ready"), "{actions:?}");
    assert!(
        actions.iter().all(|a| a != "operator.Provisioning"),
        "{actions:?}"
    );
    let out = silo_cmd(&env, &["audit", "verify"], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Found by api_fuzz: a body or query with a NUL character (PostgreSQL text and jsonb hold
/// none) answered 503 — the call still gets its normal answer and leaves its record, with the
/// NUL written as `\u0000`; a requested action carrying one is refused (422 naming the field)
/// rather than stored altered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_character_is_recorded_escaped_not_a_503() {
    let env = start().await;
    let admin = env.token("platform", "admin").await;
    let before = count(&env).await;
    let (status, answer) = env
        .call(
            Method::DELETE,
            "/v1/roles/platform",
            Some(&admin),
            Some(json!({"action": ["\u{0}"]})),
        )
        .await;
    assert!(status.as_u16() < 500, "{status} {answer}");
    assert_eq!(count(&env).await, before + 1);
    let c = env.pg.superuser().await;
    let summary: String = c
        .query_one(
            "SELECT summary::text FROM audit_records ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(summary.contains("\\\\u0000"), "{summary}");
    // A technician's requestable call with a NUL in its body: refused, not stored altered.
    let tech = env.token("dealer-a", "technician").await;
    let (status, answer) = env
        .call(
            Method::PATCH,
            "/v1/tenants/cust-a",
            Some(&tech),
            Some(json!({"limits": {"devices": 5}, "displayName": "a\u{0}b"})),
        )
        .await;
    assert!(status.as_u16() < 500, "{status} {answer}");
}
