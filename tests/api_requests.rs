//! Requested actions over HTTP with a real PostgreSQL: a technician's limit raise becomes a
//! request (202) that the dealer's admin approves (executed, approver recorded), declines or
//! lets expire; nobody approves their own request; a sibling's admin sees 404; approval after
//! the parent's limit was lowered ends `Failed` with the reason; two concurrent approvals on
//! two replicas execute once.

mod api_support;
mod pg_support;

use api_support::{Env, call_at, four_levels};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

fn unlimited(c: &mut silo::config::PlatformConfig) {
    c.api.rate_limit_per_second = 0;
}

async fn start() -> Env {
    let mut tree = four_levels();
    tree[1].spec.limits.devices = Some(1000); // dist-a
    tree[2].spec.limits.devices = Some(100); // dealer-a
    tree[3].spec.limits.devices = Some(10); // cust-a
    Env::start_with(tree, silo::api::testing::MemoryApiCluster::new(), unlimited).await
}

async fn cust_a_devices(env: &Env, token: &str) -> Value {
    env.get("/v1/tenants/cust-a", token).await.1["spec"]["limits"]["devices"].clone()
}

async fn raise(env: &Env, tech: &str, devices: i64) -> Value {
    let (s, b) = env
        .call(
            Method::PATCH,
            "/v1/tenants/cust-a",
            Some(tech),
            Some(json!({"limits": {"devices": devices}})),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn technician_requests_a_limit_raise_and_the_dealer_admin_approves() {
    let env = start().await;
    let (tom, tom_id) = env.named_token("dealer-a", "technician", "tom").await;
    let (dana, dana_id) = env.named_token("dealer-a", "admin", "dana").await;
    let (bob, _) = env.named_token("dealer-b", "admin", "bob").await;

    let req = raise(&env, &tom, 50).await;
    let id = req["id"].as_str().unwrap().to_string();
    assert_eq!(req["status"], "Pending");
    assert_eq!(req["tenant"], "cust-a");
    assert_eq!(req["method"], "PATCH");
    assert_eq!(req["path"], "/v1/tenants/cust-a");
    assert_eq!(req["body"], json!({"limits": {"devices": 50}}));
    assert_eq!(req["permission"], "limits.update");
    assert_eq!(req["requestedBy"], json!({"token": tom_id, "name": "tom"}));
    // Expiry from api.requestsExpireDays (default 7).
    let created = time::OffsetDateTime::parse(
        req["createdAt"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let expires = time::OffsetDateTime::parse(
        req["expiresAt"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert_eq!((expires - created).whole_days(), 7);
    assert_eq!(cust_a_devices(&env, &dana).await, 10, "nothing changed yet");

    // The requester sees it; a sibling's admin gets the one 404, also when deciding.
    let (s, own) = env.get(&format!("/v1/requests/{id}"), &tom).await;
    assert_eq!(
        (s, own["status"].as_str()),
        (StatusCode::OK, Some("Pending"))
    );
    let (s, b404) = env.get(&format!("/v1/requests/{id}"), &bob).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, missing) = env.get("/v1/requests/req-000000000000", &bob).await;
    assert_eq!(b404, missing);
    let (s, _) = env
        .post(&format!("/v1/requests/{id}/approve"), &bob, json!({}))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, bl) = env.get("/v1/requests", &bob).await;
    assert_eq!(bl["items"].as_array().unwrap().len(), 0);
    // The technician cannot decide (no requests.approve); the admin lists it as decidable.
    let (s, e) = env
        .post(&format!("/v1/requests/{id}/approve"), &tom, json!({}))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{e}");
    let (_, dl) = env.get("/v1/requests?status=Pending", &dana).await;
    assert_eq!(dl["items"][0]["id"], id.as_str());
    let (s, e) = env.get("/v1/requests?status=Done", &dana).await;
    assert_eq!(
        (s, e["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("status"))
    );

    // Approval executes the recorded operation as the approver.
    let (s, done) = env
        .post(
            &format!("/v1/requests/{id}/approve"),
            &dana,
            json!({"comment": "ok for the fleet"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{done}");
    assert_eq!(done["status"], "Approved");
    assert_eq!(done["decidedBy"], json!({"token": dana_id, "name": "dana"}));
    assert_eq!(done["comment"], "ok for the fleet");
    assert_eq!(done["outcome"]["status"], 200);
    assert_eq!(cust_a_devices(&env, &dana).await, 50);
    let (_, seen) = env.get(&format!("/v1/requests/{id}"), &tom).await;
    assert_eq!(seen["status"], "Approved");
    // Twice: executed once.
    let writes = env.cluster.writes().len();
    let (s, e) = env
        .post(&format!("/v1/requests/{id}/approve"), &dana, json!({}))
        .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (StatusCode::CONFLICT, Some("AlreadyDecided")),
        "{e}"
    );
    assert!(e["message"].as_str().unwrap().contains("it is Approved"));
    assert_eq!(env.cluster.writes().len(), writes);

    // The trail of dealer-a tells the story: the request, the decision, the execution.
    let (_, trail) = env.get("/v1/tenants/dealer-a/audit", &dana).await;
    let items = trail["items"].as_array().unwrap();
    let find = |action: &str, status: i64| {
        items
            .iter()
            .find(|r| r["action"] == action && r["status"] == status)
            .unwrap_or_else(|| panic!("{action} {status} in {trail}"))
            .clone()
    };
    let asked = find("PATCH /v1/tenants/{name}", 202);
    assert_eq!(asked["actor"]["name"], "tom");
    assert_eq!(asked["outcome"], "Requested");
    assert_eq!(asked["summary"]["request"], id.as_str());
    let decided = find("POST /v1/requests/{id}/approve", 200);
    assert_eq!(decided["actor"]["name"], "dana");
    assert_eq!(decided["tenant"], "cust-a");
    assert_eq!(decided["summary"]["decision"], "Approved");
    let executed = find("PATCH /v1/tenants/{name}", 200);
    assert_eq!(executed["actor"]["name"], "dana");
    assert_eq!(executed["summary"]["request"], id.as_str());
    assert_eq!(executed["summary"]["requestedBy"]["name"], "tom");
    let refused = find("POST /v1/requests/{id}/approve", 409);
    assert_eq!(refused["outcome"], "AlreadyDecided");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decline_expiry_self_approval_and_direct_requests() {
    let env = start().await;
    let (tom, _) = env.named_token("dealer-a", "technician", "tom").await;
    let (dana, _) = env.named_token("dealer-a", "admin", "dana").await;
    let (carl, _) = env.named_token("dist-a", "admin", "carl").await;

    // Deleting a tenant: requested, declined, nothing deleted.
    let (s, req) = env
        .call(Method::DELETE, "/v1/tenants/cust-a", Some(&tom), None)
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{req}");
    assert_eq!(req["permission"], "tenants.delete");
    let id = req["id"].as_str().unwrap();
    let (s, d) = env
        .post(
            &format!("/v1/requests/{id}/decline"),
            &carl,
            json!({"comment": "keep it"}),
        )
        .await;
    assert_eq!(
        (s, d["status"].as_str()),
        (StatusCode::OK, Some("Declined")),
        "{d}"
    );
    assert_eq!(env.get("/v1/tenants/cust-a", &dana).await.0, StatusCode::OK);
    let (s, _) = env
        .post(&format!("/v1/requests/{id}/approve"), &dana, json!({}))
        .await;
    assert_eq!(s, StatusCode::CONFLICT);

    // Expiry: past its time, a request is Expired and cannot be approved.
    let req = raise(&env, &tom, 20).await;
    let id = req["id"].as_str().unwrap();
    let su = env.pg.superuser().await;
    su.execute(
        "UPDATE api_requests SET expires_at = now() - interval '1 second' WHERE id = $1",
        &[&id],
    )
    .await
    .unwrap();
    let (_, e) = env.get(&format!("/v1/requests/{id}"), &tom).await;
    assert_eq!(e["status"], "Expired");
    assert!(e["reason"].as_str().unwrap().contains("expired"), "{e}");
    let (s, e) = env
        .post(&format!("/v1/requests/{id}/approve"), &dana, json!({}))
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert!(e["message"].as_str().unwrap().contains("Expired"), "{e}");
    assert_eq!(cust_a_devices(&env, &dana).await, 10);

    // Self-approval: an admin asks explicitly (POST /v1/requests) and may not approve it.
    let (s, own) = env
        .post("/v1/requests", &dana, json!({"method": "PATCH", "path": "/v1/tenants/cust-a", "body": {"limits": {"devices": 30}}}))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{own}");
    let oid = own["id"].as_str().unwrap();
    let (s, e) = env
        .post(&format!("/v1/requests/{oid}/approve"), &dana, json!({}))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("nobody decides their own request")
    );
    // … an admin above approves it (positive control).
    let (s, ok) = env
        .call(
            Method::POST,
            &format!("/v1/requests/{oid}/approve"),
            Some(&carl),
            None,
        )
        .await;
    assert_eq!(
        (s, ok["status"].as_str()),
        (StatusCode::OK, Some("Approved")),
        "{ok}"
    );
    assert_eq!(cust_a_devices(&env, &dana).await, 30);

    // Bad direct requests name the field; outside the subtree is the one 404.
    for (body, field) in [
        (
            json!({"method": "GET", "path": "/v1/tenants/cust-a"}),
            "method",
        ),
        (json!({"method": "POST", "path": "/v1/nothing"}), "path"),
        (json!({"method": "POST", "path": "/v1/requests"}), "path"),
        (json!({"method": "PATCH"}), "path"),
    ] {
        let (s, e) = env.post("/v1/requests", &tom, body.clone()).await;
        assert_eq!(
            (s, e["field"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some(field)),
            "{body}: {e}"
        );
    }
    let (s, _) = env
        .post(
            "/v1/requests",
            &tom,
            json!({"method": "DELETE", "path": "/v1/tenants/cust-b"}),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // A viewer holds no requests.create: a refusal stays 403.
    let viewer = env.token("dealer-a", "viewer").await;
    let (s, e) = env
        .call(
            Method::PATCH,
            "/v1/tenants/cust-a",
            Some(&viewer),
            Some(json!({"limits": {"devices": 11}})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{e}");
    // A refusal for a permission that is not requestable stays 403 for a technician.
    let (s, _) = env
        .post(
            "/v1/tenants",
            &tom,
            json!({"name": "new", "parent": "cust-a"}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_after_the_parent_limit_was_lowered_fails_with_the_reason() {
    // Quotas (pods) must fit the parent's: the sum over the children may not exceed it.
    let mut tree = four_levels();
    tree[2].spec.limits = serde_json::from_value(json!({"pods": 100})).unwrap();
    tree[3].spec.limits = serde_json::from_value(json!({"pods": 10})).unwrap();
    let env = Env::start_with(tree, silo::api::testing::MemoryApiCluster::new(), unlimited).await;
    let (tom, _) = env.named_token("dealer-a", "technician", "tom").await;
    let (dana, _) = env.named_token("dealer-a", "admin", "dana").await;
    let (carl, _) = env.named_token("dist-a", "admin", "carl").await;
    let pods = |v: Value| v["spec"]["limits"]["pods"].clone();
    let (s, req) = env
        .call(
            Method::PATCH,
            "/v1/tenants/cust-a",
            Some(&tom),
            Some(json!({"limits": {"pods": 80}})),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{req}");
    let id = req["id"].as_str().unwrap();
    let (s, b) = env
        .call(
            Method::PATCH,
            "/v1/tenants/dealer-a",
            Some(&carl),
            Some(json!({"limits": {"pods": 40}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, done) = env
        .post(&format!("/v1/requests/{id}/approve"), &dana, json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{done}");
    assert_eq!(done["status"], "Failed", "{done}");
    let reason = done["reason"].as_str().unwrap();
    assert!(reason.contains("pods") && reason.contains("40"), "{reason}");
    assert_eq!(pods(env.get("/v1/tenants/cust-a", &dana).await.1), "10");
    let (_, seen) = env.get(&format!("/v1/requests/{id}"), &tom).await;
    assert_eq!(
        (seen["status"].as_str(), seen["reason"].as_str()),
        (Some("Failed"), Some(reason))
    );
    // Positive control: the same approval before the parent's change would have fitted.
    let (s, req) = env
        .call(
            Method::PATCH,
            "/v1/tenants/cust-a",
            Some(&tom),
            Some(json!({"limits": {"pods": 30}})),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{req}");
    let (_, done) = env
        .post(
            &format!("/v1/requests/{}/approve", req["id"].as_str().unwrap()),
            &dana,
            json!({}),
        )
        .await;
    assert_eq!(done["status"], "Approved", "{done}");
    assert_eq!(pods(env.get("/v1/tenants/cust-a", &dana).await.1), "30");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_approvals_on_two_replicas_execute_once() {
    let env = start().await;
    let second = env.second_replica().await;
    let (tom, _) = env.named_token("dealer-a", "technician", "tom").await;
    let (dana, _) = env.named_token("dealer-a", "admin", "dana").await;
    let (carl, _) = env.named_token("dist-a", "admin", "carl").await;
    for round in 0..5 {
        let req = raise(&env, &tom, 20 + round).await;
        let id = req["id"].as_str().unwrap().to_string();
        let before = env
            .cluster
            .writes()
            .iter()
            .filter(|w| w.name == "cust-a")
            .count();
        let path = format!("/v1/requests/{id}/approve");
        let http = reqwest::Client::new();
        let (a, b) = tokio::join!(
            call_at(
                &http,
                &env.base,
                Method::POST,
                &path,
                Some(&dana),
                Some(json!({}))
            ),
            call_at(
                &http,
                &second,
                Method::POST,
                &path,
                Some(&carl),
                Some(json!({}))
            ),
        );
        let mut codes = [a.0, b.0];
        codes.sort();
        assert_eq!(codes, [StatusCode::OK, StatusCode::CONFLICT], "{a:?} {b:?}");
        let after = env
            .cluster
            .writes()
            .iter()
            .filter(|w| w.name == "cust-a")
            .count();
        assert_eq!(after, before + 1, "executed exactly once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_runs_as_a_role_holding_only_silo_api_writer() {
    // Migrations as the owner (api.database.ownerUrl), requests as silo_api: the grants of
    // the migration are all the API needs (creations, tokens, requests, audit appends).
    let env = start().await;
    let su = env.pg.superuser().await;
    su.batch_execute("CREATE ROLE silo_api LOGIN PASSWORD 'api-pw' IN ROLE silo_api_writer")
        .await
        .unwrap();
    let mut config = env.config.clone();
    config.api.database.owner_url = env
        .config
        .api
        .database
        .url
        .replace("postgres@", &format!("postgres:{}@", env.pg.password));
    config.api.database.url = format!("postgres://silo_api@127.0.0.1:{}/postgres", env.pg.port);
    config.api.database.password = "api-pw".into();
    let store = silo::api::store::Store::open(&config.api.database)
        .await
        .unwrap();
    let api = silo::api::testing::replica(env.cluster.clone(), store, config).await;
    let base = api_support::serve(api).await;
    let http = reqwest::Client::new();
    let call = |m: Method, path: &str, token: &str, body: Option<Value>| {
        let (http, base, path, token) = (
            http.clone(),
            base.clone(),
            path.to_string(),
            token.to_string(),
        );
        async move { call_at(&http, &base, m, &path, Some(&token), body).await }
    };
    let (tom, _) = env.named_token("dealer-a", "technician", "tom").await;
    let (dana, _) = env.named_token("dealer-a", "admin", "dana").await;
    let (s, b) = call(
        Method::POST,
        "/v1/tenants",
        &dana,
        Some(json!({"name": "cust-9", "parent": "dealer-a"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let (s, b) = call(
        Method::POST,
        "/v1/tokens",
        &dana,
        Some(json!({"tenant": "cust-9", "role": "viewer"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let (s, req) = call(
        Method::PATCH,
        "/v1/tenants/cust-a",
        &tom,
        Some(json!({"limits": {"devices": 60}})),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{req}");
    let id = req["id"].as_str().unwrap();
    let (s, done) = call(
        Method::POST,
        &format!("/v1/requests/{id}/approve"),
        &dana,
        None,
    )
    .await;
    assert_eq!(
        (s, done["status"].as_str()),
        (StatusCode::OK, Some("Approved")),
        "{done}"
    );
    let (s, trail) = call(Method::GET, "/v1/tenants/dealer-a/audit", &dana, None).await;
    assert_eq!(s, StatusCode::OK, "{trail}");
    assert_eq!(trail["items"].as_array().unwrap().len(), 5, "{trail}");
    // Every one of those calls was recorded by silo_api, through the chain trigger.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_silo"))
        .args(["audit", "verify"])
        .env(
            "SILO_API_DATABASE_URL",
            format!("postgres://silo_api@127.0.0.1:{}/postgres", env.pg.port),
        )
        .env("SILO_API_DATABASE_PASSWORD", "api-pw")
        .env_remove("SILO_CONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("intact: 5 records"));
}
