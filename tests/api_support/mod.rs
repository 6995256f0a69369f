//! An API under test over real HTTP on 127.0.0.1: the real router, the in-memory cluster
//! (`silo::api::testing`) for Kubernetes, a throwaway real PostgreSQL for storage.

#![allow(dead_code)]

use std::sync::Arc;

use reqwest::{Method, StatusCode};
use serde_json::Value;
use silo::api::Api;
use silo::api::store::Store;
use silo::api::testing::{MemoryApiCluster, replica};
use silo::config::PlatformConfig;
use silo::types::{Tenant, TenantSpec};

use crate::pg_support::PgServer;

pub struct Env {
    pub pg: PgServer,
    pub cluster: Arc<MemoryApiCluster>,
    pub store: Store,
    pub api: Arc<Api>,
    pub base: String,
    pub http: reqwest::Client,
    pub config: PlatformConfig,
}

/// A tenant with a parent.
pub fn tenant(name: &str, parent: Option<&str>) -> Tenant {
    Tenant::new(
        name,
        TenantSpec {
            parent: parent.map(String::from),
            ..Default::default()
        },
    )
}

/// The four-level tree of the access tests:
///
/// ```text
/// platform ─┬─ dist-a ── dealer-a ── cust-a
///           └─ dist-b ── dealer-b ── cust-b
/// ```
pub fn four_levels() -> Vec<Tenant> {
    vec![
        tenant("platform", None),
        tenant("dist-a", Some("platform")),
        tenant("dealer-a", Some("dist-a")),
        tenant("cust-a", Some("dealer-a")),
        tenant("dist-b", Some("platform")),
        tenant("dealer-b", Some("dist-b")),
        tenant("cust-b", Some("dealer-b")),
    ]
}

pub fn config(pg: &PgServer) -> PlatformConfig {
    let mut c = PlatformConfig::default();
    c.api.database.url = format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port);
    c.api.database.password = pg.password.clone();
    c
}

/// Serves `api` on a free loopback port; returns the base URL.
pub async fn serve(api: Arc<Api>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, silo::api::router(api)).await;
    });
    format!("http://{addr}")
}

impl Env {
    pub async fn start(tenants: Vec<Tenant>) -> Env {
        Self::start_with(tenants, MemoryApiCluster::new(), |_| {}).await
    }

    pub async fn start_with(
        tenants: Vec<Tenant>,
        cluster: MemoryApiCluster,
        tune: impl FnOnce(&mut PlatformConfig),
    ) -> Env {
        let pg = PgServer::start().await;
        let mut config = config(&pg);
        tune(&mut config);
        let store = Store::open(&config.api.database)
            .await
            .expect("API database");
        let cluster = Arc::new(cluster);
        for t in tenants {
            cluster.put_tenant(t);
        }
        let api = replica(cluster.clone(), store.clone(), config.clone()).await;
        let base = serve(api.clone()).await;
        Env {
            pg,
            cluster,
            store,
            api,
            base,
            http: reqwest::Client::new(),
            config,
        }
    }

    /// Another replica on the same cluster and database (its own tree and port).
    pub async fn second_replica(&self) -> String {
        let api = replica(
            self.cluster.clone(),
            self.store.clone(),
            self.config.clone(),
        )
        .await;
        serve(api).await
    }

    /// Mints a token directly in the database (as `silo token create` does).
    pub async fn token(&self, tenant: &str, role: &str) -> String {
        let m = silo::api::auth::mint();
        self.store
            .insert_token(&m, tenant, role, None, "cli", 3600)
            .await
            .expect("insert token");
        m.token
    }

    /// Mints a named token directly in the database; returns (token, id).
    pub async fn named_token(&self, tenant: &str, role: &str, name: &str) -> (String, String) {
        let m = silo::api::auth::mint();
        self.store
            .insert_token(&m, tenant, role, Some(name), "cli", 3600)
            .await
            .expect("insert token");
        (m.token, m.id)
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        call_at(&self.http, &self.base, method, path, token, body).await
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }
}

pub async fn call_at(
    http: &reqwest::Client,
    base: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = http.request(method, format!("{base}{path}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status();
    let text = resp.text().await.expect("body");
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, v)
}
