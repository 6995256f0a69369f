//! Property-based fuzzing against the OpenAPI document: random operations of the document
//! with random path segments (names inside, outside and nowhere in the tree, odd bytes, long
//! strings), random query strings and random JSON bodies (the documented fields with values
//! of every type, unknown fields, non-objects, garbage) never get a 5xx, and every error
//! answer has the `{error, message}` shape.

mod api_support;
mod pg_support;

use api_support::{Env, four_levels};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use reqwest::Method;
use serde_json::{Value, json};

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("platform".to_string()),
        Just("dist-a".to_string()),
        Just("cust-b".to_string()),
        Just("ghost".to_string()),
        Just("0123456789abcdef".to_string()),
        "[a-z0-9-]{1,70}",
        "[^/?#]{0,20}".prop_map(|s| urlencode(&s)),
        Just("%00".to_string()),
        Just("..".to_string()),
    ]
}

fn urlencode(s: &str) -> String {
    s.bytes().map(|b| format!("%{b:02X}")).collect()
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-2i64..1000).prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "[a-z0-9-]{0,12}".prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
        Just(json!("dist-a")),
        Just(json!("admin")),
        Just(json!("500m")),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-zA-Z]{1,12}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Bodies built from the documented field names (so they reach deep validation), plus noise.
fn body(fields: Vec<String>) -> impl Strategy<Value = Option<Value>> {
    let known = prop::collection::btree_map(prop::sample::select(fields), value(), 0..6)
        .prop_map(|m| Some(Value::Object(m.into_iter().collect())));
    prop_oneof![
        3 => known,
        1 => value().prop_map(Some),
        1 => Just(None),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_requests_from_the_document_never_get_a_5xx() {
    let env = Env::start_with(
        four_levels(),
        silo::api::testing::MemoryApiCluster::with_webhook(),
        |c| c.api.rate_limit_per_second = 0,
    )
    .await;
    let (_, doc) = env.call(Method::GET, "/openapi.json", None, None).await;
    // (method, path template) of every operation.
    let mut ops: Vec<(String, String)> = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in ["get", "post", "patch", "delete"] {
            if item.get(m).is_some() {
                ops.push((m.to_string(), path.clone()));
            }
        }
    }
    // Every property name of every schema: bodies use them.
    let mut fields: Vec<String> = vec!["name".into(), "parent".into()];
    for s in doc["components"]["schemas"].as_object().unwrap().values() {
        if let Some(p) = s["properties"].as_object() {
            fields.extend(p.keys().cloned());
        }
    }
    fields.sort();
    fields.dedup();
    let tokens = vec![
        env.token("platform", "admin").await,
        env.token("dealer-a", "technician").await,
        env.token("cust-a", "viewer").await,
    ];
    let handle = tokio::runtime::Handle::current();
    let env = std::sync::Arc::new(env);
    let e2 = env.clone();
    let failures = tokio::task::spawn_blocking(move || {
        // Built on this thread: recursive strategies are neither Send nor Sync.
        let strategy = (
            prop::sample::select(ops),
            prop::collection::vec(segment(), 3),
            prop::option::of(prop::collection::vec(("[a-z]{1,8}", segment()), 0..4)),
            body(fields),
            prop::sample::select(tokens),
        );
        let mut runner = TestRunner::new(Config {
            cases: 400,
            failure_persistence: None,
            ..Config::default()
        });
        runner
            .run(
                &strategy,
                |((method, template), segs, query, body, token)| {
                    let mut path = template.clone();
                    for (i, p) in ["{name}", "{user}", "{id}"].iter().enumerate() {
                        path = path.replace(p, &segs[i]);
                    }
                    if let Some(q) = &query {
                        let q: Vec<String> = q.iter().map(|(k, v)| format!("{k}={v}")).collect();
                        path = format!("{path}?{}", q.join("&"));
                    }
                    let m: Method = method.to_uppercase().parse().unwrap();
                    let (status, answer) =
                        handle.block_on(e2.call(m, &path, Some(&token), body.clone()));
                    prop_assert!(
                        status.as_u16() < 500
                            || status.as_u16() == 503 && answer["error"] == "Unavailable",
                        "{method} {path} {body:?}: {status} {answer}"
                    );
                    prop_assert!(status.as_u16() != 503, "{method} {path}: {answer}");
                    if !status.is_success() {
                        prop_assert!(
                            answer["error"].is_string() && answer["message"].is_string(),
                            "{method} {path}: error shape {answer}"
                        );
                    }
                    Ok(())
                },
            )
            .err()
            .map(|e| e.to_string())
    })
    .await
    .unwrap();
    assert!(failures.is_none(), "{}", failures.unwrap_or_default());
}
