//! Tenants and the rest of the API over HTTP: the same validation and messages as the
//! admission webhook (one engine), race-free creation within and across replicas, the
//! webhook's denials passed back, JSON merge patch with preconditions, Retain/Cascade
//! deletion, members, profiles, channels, the error shapes (400/409/413/422/429), the OpenAPI
//! document against the router, probes and metrics.

mod api_support;
mod pg_support;

use std::sync::Arc;

use api_support::{Env, call_at, four_levels, tenant};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use silo::api::testing::MemoryApiCluster;
use silo::hierarchy::{EngineSettings, Inventory};
use silo::types::Tenant;
use silo::webhook::{Proposal, TreeView};

/// What the webhook itself answers for `proposal` on `tenants`.
fn webhook_message(tenants: Vec<Tenant>, proposal: &Proposal) -> String {
    let view = TreeView::new(EngineSettings::default());
    view.replace_all(Inventory {
        tenants,
        ..Default::default()
    });
    let denials = view.decide(proposal, false).unwrap_err();
    silo::webhook::denial::join(&denials)
}

fn unlimited(c: &mut silo::config::PlatformConfig) {
    c.api.rate_limit_per_second = 0;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creation_is_validated_with_the_webhooks_rules_and_messages() {
    let mut tree = four_levels();
    tree[1].spec.limits.devices = Some(100);
    let env = Env::start(tree.clone()).await;
    let admin = env.token("dist-a", "admin").await;

    // A valid child: 201 {name, spec, status}, readable at once.
    let (s, b) = env
        .post("/v1/tenants", &admin, json!({"name": "dealer-7", "parent": "dist-a", "displayName": "Dealer 7", "limits": {"devices": 50}}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert_eq!(b["name"], "dealer-7");
    assert_eq!(b["spec"]["limits"]["devices"], 50);
    assert!(b.get("status").is_some());
    assert_eq!(
        env.get("/v1/tenants/dealer-7", &admin).await.0,
        StatusCode::OK
    );
    let w = env.cluster.writes();
    assert!(w.iter().all(|w| w.field_manager == "silo-api"));

    // Invalid values: 422 with the webhook's exact message, the request's field name.
    let cases: Vec<(Value, &str)> = vec![
        (json!({"name": "Bad_Name", "parent": "dist-a"}), "name"),
        (
            json!({"name": "neg", "parent": "dist-a", "limits": {"devices": -5}}),
            "limits.devices",
        ),
        (
            json!({"name": "prof", "parent": "dist-a", "members": [{"user": "", "role": "viewer"}]}),
            "members[0].user",
        ),
        // Subjects that stand for everyone (README "Admins and members"): one rule with the
        // webhook and `silo plan`.
        (
            json!({"name": "anon", "parent": "dist-a", "members": [{"user": "system:anonymous", "role": "admin"}]}),
            "members[0].user",
        ),
        (
            json!({"name": "everyone", "parent": "dist-a", "admins": [{"kind": "Group", "name": "system:authenticated"}]}),
            "admins[0].name",
        ),
    ];
    for (body, field) in cases {
        let (s, b) = env.post("/v1/tenants", &admin, body.clone()).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {b}");
        assert_eq!(b["field"], field, "{b}");
        let mut t: Tenant = serde_json::from_value(json!({
            "apiVersion": "silo.dev/v1alpha1", "kind": "Tenant",
            "metadata": {"name": body["name"]},
            "spec": {"parent": "dist-a", "limits": body.get("limits").cloned().unwrap_or(json!({})),
                     "members": body.get("members").cloned().unwrap_or(json!([])),
                     "admins": body.get("admins").cloned().unwrap_or(json!([]))}
        }))
        .unwrap();
        t.metadata.name = body["name"].as_str().map(String::from);
        let mut known = tree.clone();
        known.push(tenant("dealer-7", Some("dist-a")));
        assert_eq!(
            b["message"],
            webhook_message(known, &Proposal::CreateTenant(t)),
            "{field}"
        );
    }
    // Missing parent, parent outside the subtree (the one 404), a taken name.
    let (s, b) = env
        .post("/v1/tenants", &admin, json!({"name": "orphan"}))
        .await;
    assert_eq!(
        (s, b["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("parent"))
    );
    let (s, outside) = env
        .post(
            "/v1/tenants",
            &admin,
            json!({"name": "x", "parent": "dist-b"}),
        )
        .await;
    let (_, missing) = env
        .post(
            "/v1/tenants",
            &admin,
            json!({"name": "x", "parent": "nowhere"}),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(outside, missing);
    let (s, b) = env
        .post(
            "/v1/tenants",
            &admin,
            json!({"name": "dealer-7", "parent": "dist-a"}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    // Malformed JSON, wrong types, unknown fields, oversized bodies.
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/v1/tenants", env.base))
        .bearer_auth(&admin)
        .body("{\"name\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["error"], "BadRequest");
    let (s, b) = env
        .post(
            "/v1/tenants",
            &admin,
            json!({"name": "t", "parent": "dist-a", "limits": {"devices": "many"}}),
        )
        .await;
    assert_eq!(
        (s, b["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("limits.devices")),
        "{b}"
    );
    let (s, b) = env
        .post(
            "/v1/tenants",
            &admin,
            json!({"name": "t", "parent": "dist-a", "limts": {}}),
        )
        .await;
    assert_eq!(
        (s, b["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("limts")),
        "{b}"
    );
    let big = "x".repeat(70_000);
    let (s, b) = env
        .post(
            "/v1/tenants",
            &admin,
            json!({"name": "t", "parent": "dist-a", "displayName": big}),
        )
        .await;
    assert_eq!(
        (s, b["error"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("PayloadTooLarge")),
        "{b}"
    );
    // Nothing of the refused requests reached the cluster.
    assert_eq!(env.cluster.tenant_count(), 8);
}

/// 50 concurrent creations under a parent whose `subtenants` limit leaves 10.
async fn race(bases: &[String], token: &str) -> (usize, usize, Vec<String>) {
    let http = reqwest::Client::new();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let base = bases[i % bases.len()].clone();
        let http = http.clone();
        let token = token.to_string();
        tasks.push(tokio::spawn(async move {
            call_at(
                &http,
                &base,
                Method::POST,
                "/v1/tenants",
                Some(&token),
                Some(json!({"name": format!("racer-{i}"), "parent": "dist-a"})),
            )
            .await
        }));
    }
    let (mut created, mut refused, mut other) = (0, 0, Vec::new());
    for t in tasks {
        let (s, b) = t.await.unwrap();
        match s {
            StatusCode::CREATED => created += 1,
            StatusCode::FORBIDDEN if b["error"] == "LimitExceeded" => refused += 1,
            _ => other.push(format!("{s} {b}")),
        }
    }
    (created, refused, other)
}

fn limited_tree() -> Vec<Tenant> {
    let mut tree = four_levels();
    // dist-a's subtree already holds dealer-a and cust-a: 12 allowed → 10 left.
    tree[1].spec.limits.subtenants = Some(12);
    tree
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_creates_admit_exactly_the_limit() {
    let env = Env::start_with(limited_tree(), MemoryApiCluster::new(), unlimited).await;
    let admin = env.token("platform", "admin").await;
    let (created, refused, other) = race(std::slice::from_ref(&env.base), &admin).await;
    assert!(other.is_empty(), "{other:?}");
    assert_eq!((created, refused), (10, 40));
    assert_eq!(env.cluster.tenant_count(), 7 + 10);
    let (_, b) = env
        .post(
            "/v1/tenants",
            &admin,
            json!({"name": "one-more", "parent": "dist-a"}),
        )
        .await;
    assert!(
        b["message"]
            .as_str()
            .unwrap()
            .contains("tenant \"dist-a\" allows at most 12 subtenants"),
        "{b}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_creates_across_two_replicas_with_lagging_watches() {
    // No webhook behind the API server here: the replicas alone must hold the limit, and
    // their watches deliver nothing during the race (each sees only its own creations).
    let env = Env::start_with(limited_tree(), MemoryApiCluster::new(), unlimited).await;
    let second = env.second_replica().await;
    let admin = env.token("platform", "admin").await;
    env.cluster.pause_events();
    let (created, refused, other) = race(&[env.base.clone(), second], &admin).await;
    env.cluster.resume_events();
    assert!(other.is_empty(), "{other:?}");
    assert_eq!((created, refused), (10, 40));
    assert_eq!(env.cluster.tenant_count(), 7 + 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_remains_the_last_word_and_its_denial_comes_back() {
    let env = Env::start_with(limited_tree(), MemoryApiCluster::with_webhook(), unlimited).await;
    let admin = env.token("platform", "admin").await;
    // Someone fills the parent with kubectl while the API's watch lags behind.
    env.cluster.pause_events();
    for i in 0..10 {
        env.cluster
            .put_tenant(tenant(&format!("kubectl-{i}"), Some("dist-a")));
    }
    let (s, b) = env
        .post(
            "/v1/tenants",
            &admin,
            json!({"name": "late", "parent": "dist-a"}),
        )
        .await;
    env.cluster.resume_events();
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    assert_eq!(b["error"], "LimitExceeded");
    assert!(
        b["message"]
            .as_str()
            .unwrap()
            .starts_with("Tenant/late: spec.parent: cannot add a subtenant below \"dist-a\""),
        "{b}"
    );
    assert!(env.cluster.tenant("late").is_none());
    // The reservation the API took for the refused creation is gone: after the watch catches
    // up nothing is left over (a removal frees one place for exactly one creation).
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (s, _) = env
        .call(Method::DELETE, "/v1/tenants/kubectl-0", Some(&admin), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (s, b) = env
        .post(
            "/v1/tenants",
            &admin,
            json!({"name": "late", "parent": "dist-a"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_merges_checks_preconditions_and_refuses_parent_changes() {
    let env = Env::start(four_levels()).await;
    let admin = env.token("dist-a", "admin").await;
    let r = env
        .http
        .get(format!("{}/v1/tenants/dealer-a", env.base))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    let patch = |body: Value, if_match: Option<&str>| {
        let mut req = env
            .http
            .patch(format!("{}/v1/tenants/dealer-a", env.base))
            .bearer_auth(&admin)
            .header("content-type", "application/merge-patch+json")
            .body(body.to_string());
        if let Some(m) = if_match {
            req = req.header("if-match", m);
        }
        req.send()
    };
    let r = patch(
        json!({"displayName": "A", "limits": {"devices": 10}, "settings": {"tz": "UTC", "x": 1}}),
        Some(&etag),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["spec"]["limits"]["devices"], 10);
    // The old ETag is stale now: 409.
    let r = patch(json!({"displayName": "B"}), Some(&etag))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    // null removes a field, nested objects merge.
    let r = patch(json!({"displayName": null, "settings": {"x": null}}), None)
        .await
        .unwrap();
    let b: Value = r.json().await.unwrap();
    assert!(b["spec"].get("displayName").is_none(), "{b}");
    assert_eq!(b["spec"]["settings"], json!({"tz": "UTC"}));
    assert_eq!(b["spec"]["limits"]["devices"], 10, "untouched fields stay");
    // parent is immutable (the webhook's message), values are validated.
    let r = patch(json!({"parent": "dist-b"}), None).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["error"], "ParentImmutable");
    assert!(
        b["message"]
            .as_str()
            .unwrap()
            .contains("spec.parent is immutable"),
        "{b}"
    );
    let r = patch(json!({"isolation": "Sideways"}), None).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.json::<Value>().await.unwrap()["field"], "isolation");
    // A limit below what the subtree already uses: the webhook's LimitExceeded.
    let r = patch(json!({"limits": {"subtenants": 0}}), None)
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "LimitExceeded");
    // A concurrent change between read and write: the write's precondition fails (409).
    env.cluster
        .fail_next(silo::api::cluster::WriteError::Conflict("modified".into()));
    let r = patch(json!({"displayName": "C"}), None).await.unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    // The API server is down: 503, nothing applied.
    env.cluster
        .fail_next(silo::api::cluster::WriteError::Unavailable(
            "connection refused".into(),
        ));
    let r = patch(json!({"displayName": "D"}), None).await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        env.cluster
            .tenant("dealer-a")
            .unwrap()
            .spec
            .display_name
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_follows_retain_and_cascade_and_rotation_sets_the_annotation() {
    let env = Env::start(four_levels()).await;
    let admin = env.token("dist-a", "admin").await;
    let (s, b) = env
        .call(Method::DELETE, "/v1/tenants/dealer-a", Some(&admin), None)
        .await;
    assert_eq!(
        (s, b["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("HasChildren")),
        "{b}"
    );
    assert!(
        b["message"]
            .as_str()
            .unwrap()
            .contains("deletionPolicy is Retain"),
        "{b}"
    );
    let (s, _) = env
        .call(
            Method::PATCH,
            "/v1/tenants/dealer-a",
            Some(&admin),
            Some(json!({"deletionPolicy": "Cascade"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = env
        .call(Method::DELETE, "/v1/tenants/dealer-a", Some(&admin), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert!(env.cluster.tenant("dealer-a").is_none() && env.cluster.tenant("cust-a").is_none());
    // Its own tenant is deleted from above only.
    let (s, _) = env
        .call(Method::DELETE, "/v1/tenants/dist-a", Some(&admin), None)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    let (s, b) = env
        .post("/v1/tenants/dist-a/rotate-key", &admin, json!({}))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    let id = b["id"].as_str().unwrap();
    let t = env.cluster.tenant("dist-a").unwrap();
    assert_eq!(t.metadata.annotations.unwrap()["silo.dev/rotate-key"], id);
    // A later write keeps the annotation (the operator compares it with status.key).
    env.call(
        Method::PATCH,
        "/v1/tenants/dist-a",
        Some(&admin),
        Some(json!({"displayName": "A"})),
    )
    .await;
    let t = env.cluster.tenant("dist-a").unwrap();
    assert_eq!(t.metadata.annotations.unwrap()["silo.dev/rotate-key"], id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_tree_usage_profiles_and_channels() {
    let mut tree = four_levels();
    tree[1].spec.limits.devices = Some(1000);
    tree[2].spec.limits.devices = Some(300);
    tree[1].spec.limits.channels = Some(1);
    let env = Env::start(tree).await;
    let admin = env.token("dist-a", "admin").await;
    // One user, several tenants, different roles.
    for (t, role) in [
        ("dist-a", "viewer"),
        ("dealer-a", "technician"),
        ("cust-a", "admin"),
    ] {
        let (s, b) = env
            .post(
                &format!("/v1/tenants/{t}/members"),
                &admin,
                json!({"user": "eve@x.io", "role": role}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
    }
    let (s, _) = env
        .post(
            "/v1/tenants/cust-a/members",
            &admin,
            json!({"user": "eve@x.io", "role": "viewer"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "role changed");
    let (_, m) = env.get("/v1/tenants/cust-a/members", &admin).await;
    assert_eq!(m["items"], json!([{"user": "eve@x.io", "role": "viewer"}]));
    let (s, _) = env
        .call(
            Method::DELETE,
            "/v1/tenants/cust-a/members?user=eve@x.io",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = env
        .call(
            Method::DELETE,
            "/v1/tenants/cust-a/members/eve@x.io",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, m) = env.get("/v1/tenants/dealer-a/members", &admin).await;
    assert_eq!(m["items"][0]["role"], "technician");

    // Tree and usage with the binding tenant.
    let (s, t) = env.get("/v1/tenants/dist-a/tree", &admin).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(t["children"][0]["name"], "dealer-a");
    assert_eq!(t["children"][0]["children"][0]["name"], "cust-a");
    let (_, u) = env.get("/v1/tenants/cust-a/usage", &admin).await;
    assert_eq!(u["counts"]["devices"]["limit"], 300);
    assert_eq!(u["counts"]["devices"]["boundBy"], "dealer-a");

    // Profiles: owned in the subtree, usable below the owner.
    let (s, p) = env
        .post(
            "/v1/limit-profiles",
            &admin,
            json!({"name": "small", "limits": {"devices": 5}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{p}");
    assert_eq!(p["spec"]["owner"], "dist-a");
    let (s, _) = env
        .call(
            Method::PATCH,
            "/v1/tenants/dealer-a",
            Some(&admin),
            Some(json!({"limitProfile": "small"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let other = env.token("dist-b", "admin").await;
    assert_eq!(
        env.get("/v1/limit-profiles/small", &other).await.0,
        StatusCode::NOT_FOUND
    );
    let (s, b) = env
        .call(
            Method::PATCH,
            "/v1/tenants/dealer-b",
            Some(&other),
            Some(json!({"limitProfile": "small"})),
        )
        .await;
    assert_eq!(
        (s, b["message"].as_str()),
        (
            StatusCode::NOT_FOUND,
            Some("limit profile not found in this token's subtree")
        )
    );
    let (_, list) = env.get("/v1/limit-profiles", &other).await;
    assert_eq!(list["items"], json!([]));
    let (s, _) = env
        .post(
            "/v1/limit-profiles",
            &admin,
            json!({"name": "x", "owner": "dist-b"}),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Channels: counted against `channels` (the webhook's message), visible below the owner.
    let (s, c) = env
        .post(
            "/v1/channels",
            &admin,
            json!({"name": "teltonika", "maxConnections": 100}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{c}");
    let (s, b) = env
        .post("/v1/channels", &admin, json!({"name": "second"}))
        .await;
    assert_eq!(
        (s, b["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("LimitExceeded")),
        "{b}"
    );
    let (s, b) = env
        .post(
            "/v1/channels",
            &admin,
            json!({"name": "vis", "visibility": {"subtrees": ["dist-b"]}}),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
    let dealer = env.token("cust-a", "viewer").await;
    let (_, list) = env.get("/v1/channels", &dealer).await;
    assert_eq!(list["items"][0]["name"], "teltonika");
    assert_eq!(
        env.get("/v1/channels/teltonika", &other).await.0,
        StatusCode::NOT_FOUND
    );
    let (s, _) = env
        .call(
            Method::PATCH,
            "/v1/tenants/cust-a",
            Some(&admin),
            Some(json!({"channels": ["teltonika"]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_answers_429_with_retry_after() {
    let env = Env::start_with(four_levels(), MemoryApiCluster::new(), |c| {
        c.api.rate_limit_per_second = 1;
        c.api.rate_limit_burst = 3;
    })
    .await;
    let token = env.token("dist-a", "viewer").await;
    let mut statuses = Vec::new();
    let mut retry = None;
    for _ in 0..6 {
        let r = env
            .http
            .get(format!("{}/v1/tenants/dist-a", env.base))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            retry = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
        }
        statuses.push(r.status().as_u16());
    }
    assert_eq!(&statuses[..3], &[200, 200, 200]);
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(retry.unwrap().parse::<u64>().unwrap() >= 1);
    // Another token is not affected.
    let other = env.token("dist-a", "viewer").await;
    assert_eq!(
        env.get("/v1/tenants/dist-a", &other).await.0,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_and_router_serve_the_same_routes() {
    let env = Env::start(four_levels()).await;
    let (s, doc) = call_at(
        &env.http,
        &env.base,
        Method::GET,
        "/openapi.json",
        None,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
    let paths = doc["paths"].as_object().unwrap();
    let methods = ["get", "post", "put", "patch", "delete"];
    let mut documented = 0;
    let token = env.token("platform", "viewer").await;
    for (path, item) in paths {
        let concrete = path
            .replace("{name}", "platform")
            .replace("{user}", "someone")
            .replace("{id}", "0123456789abcdef");
        for m in methods {
            let method: Method = m.to_uppercase().parse().unwrap();
            let (s, b) = call_at(&env.http, &env.base, method, &concrete, Some(&token), None).await;
            let served = s != StatusCode::METHOD_NOT_ALLOWED && b["error"] != "NoRoute";
            assert_eq!(served, item.get(m).is_some(), "{m} {path}: {s} {b}");
            if served {
                documented += 1;
                // Every operation documents its answers, with the error shape.
                let op = &item[m];
                assert!(
                    !op["responses"].as_object().unwrap().is_empty(),
                    "{m} {path}"
                );
            }
        }
    }
    assert!(documented >= 27, "{documented}");
    // The SPEC's endpoints are all there.
    for p in [
        "/v1/tenants",
        "/v1/tenants/{name}",
        "/v1/tenants/{name}/tree",
        "/v1/tenants/{name}/usage",
        "/v1/tenants/{name}/suspend",
        "/v1/tenants/{name}/resume",
        "/v1/tenants/{name}/rotate-key",
        "/v1/limit-profiles",
        "/v1/channels",
        "/v1/tokens",
        "/v1/tenants/{name}/members",
        "/v1/roles",
    ] {
        assert!(paths.contains_key(p), "{p}");
    }
    // A path outside the document is not served.
    let (s, b) = call_at(
        &env.http,
        &env.base,
        Method::GET,
        "/v1/secrets",
        Some(&token),
        None,
    )
    .await;
    assert_eq!(
        (s, b["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("NoRoute"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_and_metrics() {
    let env = Env::start(four_levels()).await;
    let http = &env.http;
    let (s, _) = call_at(http, &env.base, Method::GET, "/healthz", None, None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, b) = call_at(http, &env.base, Method::GET, "/readyz", None, None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let token = env.token("dist-a", "viewer").await;
    env.get("/v1/tenants/dist-a", &token).await;
    env.get("/v1/tenants/nope", &token).await;
    let text = http
        .get(format!("{}/metrics", env.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(
            "silo_api_requests_total{method=\"GET\",route=\"/v1/tenants/{name}\",status=\"200\"} 1"
        ),
        "{text}"
    );
    assert!(text.contains("status=\"404\""), "{text}");
    assert!(
        text.contains("silo_api_request_duration_seconds_bucket"),
        "{text}"
    );
    // The database goes away: not ready, with the reason.
    let Env { pg, api, .. } = env;
    drop(pg);
    let base = api_support::serve(Arc::clone(&api)).await;
    let (s, b) = call_at(
        &reqwest::Client::new(),
        &base,
        Method::GET,
        "/readyz",
        None,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert!(b.as_str().unwrap().starts_with("database"), "{b}");
}

/// A custom role still held by a member or a usable token cannot be removed — neither with
/// `DELETE /v1/roles/{name}` nor by a `PATCH` of the defining tenant's `roles`: 409 `RoleInUse`
/// naming each place. Expired and revoked tokens, and members whose nearest definition of the
/// name is another one, do not count; once the last use is gone the removal goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_role_in_use_cannot_be_removed() {
    let env = Env::start_with(four_levels(), MemoryApiCluster::new(), unlimited).await;
    let root = env.token("platform", "admin").await;
    let perms = json!(["tenants.read", "members.manage"]);
    for t in ["dist-a", "cust-a"] {
        let (s, b) = env
            .post(
                "/v1/roles",
                &root,
                json!({"name": "support", "permissions": perms, "tenant": t}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
    }
    // Held at dealer-a (dist-a's definition) and at cust-a (cust-a's own, which shadows it).
    for t in ["dealer-a", "cust-a"] {
        let (s, b) = env
            .post(
                &format!("/v1/tenants/{t}/members"),
                &root,
                json!({"user": format!("eve@{t}.io"), "role": "support"}),
            )
            .await;
        assert!(s.is_success(), "{b}");
    }
    let (s, minted) = env
        .post(
            "/v1/tokens",
            &root,
            json!({"tenant": "dealer-a", "role": "support"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{minted}");
    let token_id = minted["id"].as_str().unwrap().to_string();
    // An expired token with the role does not hold it.
    let expired = silo::api::auth::mint();
    env.store
        .insert_token(&expired, "dealer-a", "support", None, "cli", -60)
        .await
        .unwrap();

    let delete = |q: &'static str| {
        let (env, root) = (&env, &root);
        async move {
            env.call(
                Method::DELETE,
                &format!("/v1/roles/support{q}"),
                Some(root),
                None,
            )
            .await
        }
    };
    let (s, b) = delete("?tenant=dist-a").await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    assert_eq!(b["error"], "RoleInUse", "{b}");
    let msg = b["message"].as_str().unwrap();
    assert!(
        msg.starts_with("role \"support\" of tenant \"dist-a\" is still used by "),
        "{msg}"
    );
    assert!(
        msg.contains("member \"eve@dealer-a.io\" of tenant \"dealer-a\""),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("token {token_id} of tenant \"dealer-a\"")),
        "{msg}"
    );
    assert!(
        !msg.contains("cust-a"),
        "cust-a's own definition is another role: {msg}"
    );
    assert!(
        !msg.contains(&expired.id),
        "expired tokens do not count: {msg}"
    );
    // The same refusal through PATCH of spec.roles, and nothing changed.
    let (s, b) = env
        .call(
            Method::PATCH,
            "/v1/tenants/dist-a",
            Some(&root),
            Some(json!({"roles": []})),
        )
        .await;
    assert_eq!(
        (s, b["error"].as_str()),
        (StatusCode::CONFLICT, Some("RoleInUse")),
        "{b}"
    );
    let (_, t) = env.get("/v1/tenants/dist-a", &root).await;
    assert_eq!(t["spec"]["roles"][0]["name"], "support", "{t}");

    // The member gets another role: only the token is left.
    let (s, b) = env
        .post(
            "/v1/tenants/dealer-a/members",
            &root,
            json!({"user": "eve@dealer-a.io", "role": "viewer"}),
        )
        .await;
    assert!(s.is_success(), "{b}");
    let (s, b) = delete("?tenant=dist-a").await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    let msg = b["message"].as_str().unwrap();
    assert!(!msg.contains("member"), "{msg}");
    assert!(msg.contains(&token_id), "{msg}");
    // Revoked: removed; the token-less, member-less name is gone, a second removal is 404.
    let (s, b) = env
        .call(
            Method::DELETE,
            &format!("/v1/tokens/{token_id}"),
            Some(&root),
            None,
        )
        .await;
    assert!(s.is_success(), "{b}");
    let (s, b) = delete("?tenant=dist-a").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["name"], "support");
    assert_eq!(b["tenant"], "dist-a");
    let (_, roles) = env.get("/v1/roles?tenant=dealer-a", &root).await;
    assert!(
        !roles["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "support"),
        "{roles}"
    );
    let (s, b) = delete("?tenant=dist-a").await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
    // cust-a's own definition, held by its member, is still refused.
    let (s, b) = delete("?tenant=cust-a").await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    assert!(
        b["message"].as_str().unwrap().contains("eve@cust-a.io"),
        "{b}"
    );
}
