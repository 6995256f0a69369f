//! `/healthz`, `/readyz` and `/metrics` of every replica, and the state they report.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::operator::metrics::Metrics;

/// What the probes report of this replica, shared with the controller and the webhook.
pub struct ReplicaState {
    pub metrics: Arc<Metrics>,
    /// Start-up checks passed (CRDs present, API reachable).
    pub started: AtomicBool,
    pub leading: AtomicBool,
    /// The admission webhook served by this replica, once spawned: the replica is not ready
    /// (gets no webhook traffic) until its tree is loaded.
    pub webhook: std::sync::OnceLock<Arc<crate::webhook::WebhookState>>,
}

impl ReplicaState {
    /// A replica with fresh metrics, not leading, no webhook yet; `started`: its start-up
    /// checks have passed.
    pub fn new(started: bool) -> Self {
        Self {
            metrics: Arc::new(Metrics::new()),
            started: AtomicBool::new(started),
            leading: AtomicBool::new(false),
            webhook: std::sync::OnceLock::new(),
        }
    }
}

/// `/healthz`, `/readyz`, `/metrics`.
pub fn http_router(shared: Arc<ReplicaState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(shared)
}

async fn readyz(State(s): State<Arc<ReplicaState>>) -> impl IntoResponse {
    if s.webhook.get().is_some_and(|w| !w.is_ready()) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "starting: the admission webhook's tenant tree is not loaded yet".to_string(),
        );
    }
    if s.started.load(Ordering::Relaxed) {
        let role = if s.leading.load(Ordering::Relaxed) {
            "leader"
        } else {
            "standby"
        };
        (StatusCode::OK, format!("ready ({role})"))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting".to_string())
    }
}

async fn metrics(State(s): State<Arc<ReplicaState>>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The router `run` serves, on a real socket: the three paths answer with their status and
    /// content, an unknown path is 404.
    #[tokio::test]
    async fn probes_and_metrics_are_served() {
        let shared = Arc::new(ReplicaState::new(false));
        shared.metrics.reconciled(0.02);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let router = http_router(shared.clone());
        let server = tokio::spawn(async move { axum::serve(listener, router).await });
        let http = reqwest::Client::new();
        let get = |path: &'static str| {
            let (http, url) = (http.clone(), format!("{base}{path}"));
            async move {
                let r = http.get(url).send().await.unwrap();
                let status = r.status().as_u16();
                let ctype = r
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                (status, ctype, r.text().await.unwrap())
            }
        };
        assert_eq!(get("/healthz").await.0, 200);
        assert_eq!(get("/healthz").await.2, "ok");
        // Not started yet (CRDs not checked): not ready, with the reason.
        let (status, _, body) = get("/readyz").await;
        assert_eq!(status, 503, "{body}");
        shared.started.store(true, Ordering::Relaxed);
        assert_eq!(
            get("/readyz").await,
            (
                200,
                "text/plain; charset=utf-8".into(),
                "ready (standby)".into()
            )
        );
        shared.leading.store(true, Ordering::Relaxed);
        assert_eq!(get("/readyz").await.2, "ready (leader)");
        let (status, ctype, body) = get("/metrics").await;
        assert_eq!(status, 200);
        assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
        assert!(body.contains("silo_reconciles_total 1"), "{body}");
        assert!(body.trim_end().ends_with("# EOF"), "{body}");
        assert_eq!(get("/nothing").await.0, 404);
        server.abort();
    }

    #[tokio::test]
    async fn not_ready_until_the_webhook_tree_is_loaded() {
        use crate::hierarchy::EngineSettings;
        use crate::webhook::{TreeView, WebhookState};
        let shared = Arc::new(ReplicaState::new(true));
        let state = Arc::new(WebhookState::starting(TreeView::new(
            EngineSettings::default(),
        )));
        assert!(shared.webhook.set(state.clone()).is_ok());
        let resp = readyz(State(shared.clone())).await.into_response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        state.set_ready();
        let resp = readyz(State(shared.clone())).await.into_response();
        assert_eq!(resp.status(), StatusCode::OK);
    }
}
