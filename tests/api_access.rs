//! Who may do what, over HTTP: a four-level tree with a token of each built-in role at every
//! level of one branch, every endpoint against every tenant (own, below, sibling, cousin,
//! ancestor, missing). Exactly the allowed calls succeed; everything outside the subtree
//! answers one byte-identical 404; tokens expire and are revoked at once on every replica; a
//! suspended subtree reads but cannot write; custom roles never grant more than their
//! creator holds.

mod api_support;
mod pg_support;

use api_support::{Env, call_at, four_levels};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const LEVELS: [&str; 4] = ["platform", "dist-a", "dealer-a", "cust-a"];
const TARGETS: [&str; 8] = [
    "platform", "dist-a", "dealer-a", "cust-a", "dist-b", "dealer-b", "cust-b", "ghost",
];

fn in_scope(caller: &str, target: &str) -> bool {
    match caller {
        "platform" => target != "ghost",
        _ => {
            let i = LEVELS.iter().position(|l| *l == caller).unwrap();
            LEVELS[i..].contains(&target)
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    /// Success with this status.
    Ok(u16),
    /// 403 with this `error`.
    Refused(&'static str),
    NotFound,
}

#[derive(Clone, Copy)]
struct Endpoint {
    name: &'static str,
    /// Permission checked before the target (same answer for every target).
    early: Option<&'static str>,
    /// Permission checked once the target is in scope.
    late: Option<&'static str>,
    /// Not on the caller's own tenant.
    below: bool,
    ok: u16,
}

const ENDPOINTS: [Endpoint; 13] = [
    Endpoint {
        name: "get",
        early: None,
        late: None,
        below: false,
        ok: 200,
    },
    Endpoint {
        name: "tree",
        early: None,
        late: None,
        below: false,
        ok: 200,
    },
    Endpoint {
        name: "usage",
        early: None,
        late: None,
        below: false,
        ok: 200,
    },
    Endpoint {
        name: "members",
        early: None,
        late: None,
        below: false,
        ok: 200,
    },
    Endpoint {
        name: "list-children",
        early: None,
        late: None,
        below: false,
        ok: 200,
    },
    Endpoint {
        name: "roles",
        early: None,
        late: None,
        below: false,
        ok: 200,
    },
    Endpoint {
        name: "patch",
        early: None,
        late: Some("tenants.update"),
        below: false,
        ok: 200,
    },
    Endpoint {
        name: "add-member",
        early: None,
        late: Some("members.manage"),
        below: false,
        ok: 0,
    },
    Endpoint {
        name: "rotate-key",
        early: None,
        late: Some("keys.rotate"),
        below: false,
        ok: 202,
    },
    Endpoint {
        name: "mint-token",
        early: Some("tokens.manage"),
        late: None,
        below: false,
        ok: 201,
    },
    Endpoint {
        name: "suspend",
        early: None,
        late: Some("suspend"),
        below: true,
        ok: 200,
    },
    Endpoint {
        name: "delete",
        early: None,
        late: Some("tenants.delete"),
        below: true,
        ok: 0,
    },
    Endpoint {
        name: "create-child",
        early: Some("tenants.create"),
        late: None,
        below: false,
        ok: 201,
    },
];

fn holds(role: &str, perm: &str) -> bool {
    let p: silo::hierarchy::roles::Permission = perm.parse().unwrap();
    silo::hierarchy::roles::builtin_permissions(role)
        .unwrap()
        .contains(p)
}

/// A refusal for lacking `perm`: 403, or a requested action (202) when the permission is
/// requestable and the role holds `requests.create` (then a tenant outside the subtree is the
/// one 404).
fn lacking(role: &str, perm: &str, caller: &str, target: &str) -> Expect {
    let p: silo::hierarchy::roles::Permission = perm.parse().unwrap();
    if p.is_requestable() && holds(role, "requests.create") {
        if in_scope(caller, target) {
            Expect::Ok(202)
        } else {
            Expect::NotFound
        }
    } else {
        Expect::Refused("Forbidden")
    }
}

fn expect(caller: &str, role: &str, e: &Endpoint, target: &str) -> Expect {
    if let Some(p) = e.early
        && !holds(role, p)
    {
        return lacking(role, p, caller, target);
    }
    if !in_scope(caller, target) {
        return Expect::NotFound;
    }
    if let Some(p) = e.late
        && !holds(role, p)
    {
        return lacking(role, p, caller, target);
    }
    if e.below && caller == target {
        return Expect::Refused("Forbidden");
    }
    match e.name {
        // Every target has children: Retain refuses (the tree's rule, after authorization).
        "delete" => Expect::Refused("HasChildren"),
        "add-member" => Expect::Ok(0),
        _ => Expect::Ok(e.ok),
    }
}

async fn run(env: &Env, token: &str, e: &Endpoint, target: &str, n: usize) -> (StatusCode, Value) {
    let t = Some(token);
    match e.name {
        "get" => {
            env.call(Method::GET, &format!("/v1/tenants/{target}"), t, None)
                .await
        }
        "tree" => {
            env.call(Method::GET, &format!("/v1/tenants/{target}/tree"), t, None)
                .await
        }
        "usage" => {
            env.call(Method::GET, &format!("/v1/tenants/{target}/usage"), t, None)
                .await
        }
        "members" => {
            env.call(
                Method::GET,
                &format!("/v1/tenants/{target}/members"),
                t,
                None,
            )
            .await
        }
        "list-children" => {
            env.call(
                Method::GET,
                &format!("/v1/tenants?parent={target}"),
                t,
                None,
            )
            .await
        }
        "roles" => {
            env.call(Method::GET, &format!("/v1/roles?tenant={target}"), t, None)
                .await
        }
        "patch" => {
            env.call(
                Method::PATCH,
                &format!("/v1/tenants/{target}"),
                t,
                Some(json!({"displayName": format!("renamed {n}")})),
            )
            .await
        }
        "add-member" => {
            env.call(
                Method::POST,
                &format!("/v1/tenants/{target}/members"),
                t,
                Some(json!({"user": "matrix@example.com", "role": "viewer"})),
            )
            .await
        }
        "rotate-key" => {
            env.call(
                Method::POST,
                &format!("/v1/tenants/{target}/rotate-key"),
                t,
                None,
            )
            .await
        }
        "mint-token" => {
            env.call(
                Method::POST,
                "/v1/tokens",
                t,
                Some(json!({"tenant": target, "role": "viewer"})),
            )
            .await
        }
        "suspend" => {
            let r = env
                .call(
                    Method::POST,
                    &format!("/v1/tenants/{target}/suspend"),
                    t,
                    None,
                )
                .await;
            if r.0 == StatusCode::OK {
                let back = env
                    .call(
                        Method::POST,
                        &format!("/v1/tenants/{target}/resume"),
                        t,
                        None,
                    )
                    .await;
                assert_eq!(back.0, StatusCode::OK, "resume {target}: {}", back.1);
            }
            r
        }
        "delete" => {
            env.call(Method::DELETE, &format!("/v1/tenants/{target}"), t, None)
                .await
        }
        "create-child" => {
            env.call(
                Method::POST,
                "/v1/tenants",
                t,
                Some(json!({"name": format!("new-{n}"), "parent": target})),
            )
            .await
        }
        other => unreachable!("{other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_for_every_role_at_every_level() {
    let mut tenants = four_levels();
    // Every target has a child, so that deletion under Retain is refused by the tree's rule
    // (and the matrix never deletes its own fixture).
    for leaf in ["cust-a", "cust-b"] {
        tenants.push(api_support::tenant(&format!("{leaf}-leaf"), Some(leaf)));
    }
    // Hundreds of calls per token: no rate limit here (it has its own test).
    let env = Env::start_with(tenants, silo::api::testing::MemoryApiCluster::new(), |c| {
        c.api.rate_limit_per_second = 0
    })
    .await;
    let mut n = 0;
    let mut checked = 0;
    for caller in LEVELS {
        for role in ["admin", "technician", "viewer"] {
            let token = env.token(caller, role).await;
            for e in &ENDPOINTS {
                // The reference 404 of this endpoint: a name that exists nowhere.
                n += 1;
                let ghost = run(&env, &token, e, "ghost", n).await;
                for target in TARGETS {
                    n += 1;
                    let want = expect(caller, role, e, target);
                    let (status, body) = run(&env, &token, e, target, n).await;
                    let what = format!("{caller}/{role} {} {target}: {status} {body}", e.name);
                    match want {
                        Expect::Ok(0) => assert!(status.is_success(), "{what}"),
                        Expect::Ok(code) => assert_eq!(status.as_u16(), code, "{what}"),
                        Expect::Refused(reason) => {
                            assert_eq!(status, StatusCode::FORBIDDEN, "{what}");
                            assert_eq!(body["error"], reason, "{what}");
                        }
                        Expect::NotFound => {
                            assert_eq!(status, StatusCode::NOT_FOUND, "{what}");
                            assert_eq!(body, ghost.1, "{what}: 404 differs from a missing name's");
                        }
                    }
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, LEVELS.len() * 3 * ENDPOINTS.len() * TARGETS.len());
    // The positive controls above created children: the platform admin sees them, a dealer
    // only those of its subtree.
    let admin = env.token("platform", "admin").await;
    let (_, all) = env.get("/v1/tenants?limit=1000", &admin).await;
    let dealer = env.token("dealer-a", "viewer").await;
    let (s, mine) = env.get("/v1/tenants?limit=1000", &dealer).await;
    assert_eq!(s, StatusCode::OK);
    let names = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(names(&all).len() > names(&mine).len());
    for name in names(&mine) {
        let (_, t) = env.get(&format!("/v1/tenants/{name}"), &admin).await;
        let path = t["spec"]["parent"].as_str().unwrap_or("");
        assert!(
            ["dealer-a", "cust-a", "cust-a-leaf"].contains(&name.as_str())
                || ["dealer-a", "cust-a", "cust-a-leaf"].contains(&path),
            "{name} (parent {path}) leaked to dealer-a"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_required_expire_and_revocation_is_seen_by_every_replica() {
    let env = Env::start(four_levels()).await;
    let admin = env.token("dist-a", "admin").await;
    // No token, not a token, a forged secret.
    let (s, b) = env
        .call(Method::GET, "/v1/tenants/dist-a", None, None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(
        b["message"]
            .as_str()
            .unwrap()
            .contains("missing bearer token"),
        "{b}"
    );
    let (s, b) = env.get("/v1/tenants/dist-a", "hello").await;
    assert_eq!(
        (s, b["message"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid token"))
    );
    let forged = format!(
        "{}{}",
        &admin[..admin.len() - 1],
        if admin.ends_with('A') { 'B' } else { 'A' }
    );
    let (s, b) = env.get("/v1/tenants/dist-a", &forged).await;
    assert_eq!(
        (s, b["message"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid token"))
    );
    // Positive control.
    assert_eq!(
        env.get("/v1/tenants/dist-a", &admin).await.0,
        StatusCode::OK
    );

    // An expired token.
    let m = silo::api::auth::mint();
    env.store
        .insert_token(&m, "dist-a", "admin", None, "cli", -5)
        .await
        .unwrap();
    let (s, b) = env.get("/v1/tenants/dist-a", &m.token).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(b["message"].as_str().unwrap().contains("expired at"), "{b}");

    // Minted through the API (shown once), used on two replicas, revoked on one.
    let (s, minted) = env
        .post(
            "/v1/tokens",
            &admin,
            json!({"tenant": "dealer-a", "role": "viewer", "expires": "1h", "name": "ci"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{minted}");
    let token = minted["token"].as_str().unwrap().to_string();
    let id = minted["id"].as_str().unwrap().to_string();
    assert!(token.starts_with(&format!("silo_{id}_")));
    let other = env.second_replica().await;
    let http = reqwest::Client::new();
    for base in [env.base.as_str(), other.as_str()] {
        let (s, _) = call_at(
            &http,
            base,
            Method::GET,
            "/v1/tenants/dealer-a",
            Some(&token),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::OK);
    }
    // Lists never show the secret.
    let (_, list) = env.get("/v1/tokens?tenant=dealer-a", &admin).await;
    assert!(list.to_string().contains(&id) && !list.to_string().contains(&token[22..]));
    let (s, _) = env
        .call(
            Method::DELETE,
            &format!("/v1/tokens/{id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    for base in [env.base.as_str(), other.as_str()] {
        let (s, b) = call_at(
            &http,
            base,
            Method::GET,
            "/v1/tenants/dealer-a",
            Some(&token),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{base}");
        assert!(
            b["message"].as_str().unwrap().contains("has been revoked"),
            "{b}"
        );
    }
    // Tokens outside the subtree cannot be revoked (nor told apart from missing ones).
    let b_admin = env.token("dist-b", "admin").await;
    let b_id = silo::api::auth::parse(&b_admin).unwrap().id;
    let (s, outside) = env
        .call(
            Method::DELETE,
            &format!("/v1/tokens?id={b_id}"),
            Some(&admin),
            None,
        )
        .await;
    let (s2, missing) = env
        .call(
            Method::DELETE,
            "/v1/tokens?id=0123456789abcdef",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!((s, s2), (StatusCode::NOT_FOUND, StatusCode::NOT_FOUND));
    assert_eq!(outside, missing);
    assert_eq!(
        env.get("/v1/tenants/dist-b", &b_admin).await.0,
        StatusCode::OK,
        "still valid"
    );
    // A token for a tenant outside the subtree cannot be minted.
    let (s, _) = env
        .post(
            "/v1/tokens",
            &admin,
            json!({"tenant": "dist-b", "role": "viewer"}),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Bad expiry and undefined role name the field.
    let (s, b) = env
        .post(
            "/v1/tokens",
            &admin,
            json!({"tenant": "dist-a", "role": "viewer", "expires": "forever"}),
        )
        .await;
    assert_eq!(
        (s, b["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("expires"))
    );
    let (s, b) = env
        .post(
            "/v1/tokens",
            &admin,
            json!({"tenant": "dist-a", "role": "boss"}),
        )
        .await;
    assert_eq!(
        (s, b["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("role"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspended_subtree_reads_but_cannot_write_until_resumed() {
    let env = Env::start(four_levels()).await;
    let root = env.token("platform", "admin").await;
    let dealer = env.token("dealer-a", "admin").await;
    let patch = || json!({"displayName": "Dealer A"});
    // Positive control: the dealer can write.
    let (s, _) = env
        .call(
            Method::PATCH,
            "/v1/tenants/dealer-a",
            Some(&dealer),
            Some(patch()),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, t) = env
        .post("/v1/tenants/dist-a/suspend", &root, json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{t}");
    assert_eq!(t["spec"]["suspended"], true);
    // Reads work, every write is refused naming the suspended ancestor.
    assert_eq!(
        env.get("/v1/tenants/cust-a", &dealer).await.0,
        StatusCode::OK
    );
    for (method, path, body) in [
        (Method::PATCH, "/v1/tenants/dealer-a", Some(patch())),
        (
            Method::POST,
            "/v1/tenants",
            Some(json!({"name": "x1", "parent": "dealer-a"})),
        ),
        (
            Method::POST,
            "/v1/tokens",
            Some(json!({"tenant": "cust-a", "role": "viewer"})),
        ),
        (
            Method::POST,
            "/v1/tenants/cust-a/members",
            Some(json!({"user": "u", "role": "viewer"})),
        ),
        (Method::POST, "/v1/tenants/cust-a/rotate-key", None),
    ] {
        let (s, b) = env.call(method, path, Some(&dealer), body).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{path}: {b}");
        assert_eq!(b["error"], "Suspended", "{path}");
        assert_eq!(
            b["message"],
            "tenant \"dealer-a\" is suspended (through its ancestor \"dist-a\"): its tokens may read but not change anything"
        );
    }
    // The suspended tenant cannot resume itself; its parent's admin can.
    let dist = env.token("dist-a", "admin").await;
    let (s, b) = env
        .post("/v1/tenants/dist-a/resume", &dist, json!({}))
        .await;
    assert_eq!(
        (s, b["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("Suspended"))
    );
    let (s, _) = env
        .post("/v1/tenants/dist-a/resume", &root, json!({}))
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = env
        .call(
            Method::PATCH,
            "/v1/tenants/dealer-a",
            Some(&dealer),
            Some(patch()),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "writes work again after resume");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_roles_never_grant_more_than_their_creator_holds() {
    let env = Env::start(four_levels()).await;
    let dist = env.token("dist-a", "admin").await;
    // Unknown permission: 422 naming it.
    let (s, b) = env
        .post(
            "/v1/roles",
            &dist,
            json!({"name": "support", "permissions": ["tenants.read", "fly"]}),
        )
        .await;
    assert_eq!(
        (s, b["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("permissions[1]")),
        "{b}"
    );
    // A support role defined at dist-a: read, manage members, define roles.
    let (s, b) = env
        .post("/v1/roles", &dist, json!({"name": "support", "permissions": ["tenants.read", "members.manage", "roles.manage", "tokens.manage"]}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert_eq!(b["tenant"], "dist-a");
    let (s, _) = env
        .post(
            "/v1/roles",
            &dist,
            json!({"name": "support", "permissions": []}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    // Usable below dist-a (listed there), not in the other branch.
    let (_, roles) = env.get("/v1/roles?tenant=cust-a", &dist).await;
    assert!(
        roles["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "support")
    );
    assert!(roles["catalogue"].as_array().unwrap().len() >= 20);
    let root = env.token("platform", "admin").await;
    let (_, other) = env.get("/v1/roles?tenant=cust-b", &root).await;
    assert!(
        !other["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "support")
    );
    let (s, b) = env
        .post(
            "/v1/tenants/cust-b/members",
            &root,
            json!({"user": "x", "role": "support"}),
        )
        .await;
    assert_eq!(
        (s, b["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("role")),
        "{b}"
    );
    assert!(
        b["message"]
            .as_str()
            .unwrap()
            .contains("role \"support\" is not defined"),
        "{b}"
    );

    // A token with the custom role at dealer-a.
    let (s, minted) = env
        .post(
            "/v1/tokens",
            &dist,
            json!({"tenant": "dealer-a", "role": "support"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{minted}");
    let support = minted["token"].as_str().unwrap().to_string();
    // Within its permissions: members with roles it holds.
    let (s, _) = env
        .post(
            "/v1/tenants/cust-a/members",
            &support,
            json!({"user": "ann", "role": "support"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, b) = env
        .post(
            "/v1/tenants/cust-a/members",
            &support,
            json!({"user": "bob", "role": "admin"}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    assert!(
        b["message"].as_str().unwrap().contains("would grant"),
        "{b}"
    );
    let (s, _) = env
        .post(
            "/v1/tenants/cust-a/members",
            &support,
            json!({"user": "bob", "role": "technician"}),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::FORBIDDEN,
        "technician holds workloads.* the support role lacks"
    );
    // Cannot define a role or mint a token beyond itself.
    let (s, b) = env
        .post(
            "/v1/roles",
            &support,
            json!({"name": "bigger", "permissions": ["tenants.delete"]}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    let (s, _) = env
        .post(
            "/v1/roles",
            &support,
            json!({"name": "smaller", "permissions": ["tenants.read"]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _) = env
        .post(
            "/v1/tokens",
            &support,
            json!({"tenant": "cust-a", "role": "admin"}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = env
        .post(
            "/v1/tokens",
            &support,
            json!({"tenant": "cust-a", "role": "smaller"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    // Nor change what it lacks.
    let (s, b) = env
        .call(
            Method::PATCH,
            "/v1/tenants/cust-a",
            Some(&support),
            Some(json!({"limits": {"devices": 5}})),
        )
        .await;
    assert_eq!(
        (s, b["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("Forbidden"))
    );
    // A technician cannot make anyone admin, nor change limits; an admin cannot raise its own.
    let tech = env.token("dealer-a", "technician").await;
    let (s, _) = env
        .post(
            "/v1/tenants/dealer-a/members",
            &tech,
            json!({"user": "carl", "role": "viewer"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _) = env
        .post(
            "/v1/tenants/dealer-a/members",
            &tech,
            json!({"user": "carl", "role": "admin"}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, b) = env
        .call(
            Method::PATCH,
            "/v1/tenants/dist-a",
            Some(&dist),
            Some(json!({"limits": {"devices": 99}})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(b["message"].as_str().unwrap().contains("own tenant"), "{b}");
    let (s, _) = env
        .call(
            Method::PATCH,
            "/v1/tenants/dealer-a",
            Some(&dist),
            Some(json!({"limits": {"devices": 99}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "below its own tenant it may");
}
