//! The HTTP server of `silo api`: shared state, authentication of each request, the single
//! place every write goes through, the router (with its OpenAPI document generated from the
//! same handlers), probes and metrics.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{Quota, RateLimiter};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::backends::AdminCredentials;
use crate::backends::mosquitto::MosquittoBackend;
use crate::config::PlatformConfig;

use super::auth;
use super::authz::Caller;
use super::body::BodyLimit;
use super::cache::Cache;
use super::cluster::ApiCluster;
use super::devices::DeviceCa;
use super::errors::{ApiError, ErrorBody};
use super::metrics::ApiMetrics;
use super::store::Store;

type KeyedLimiter = RateLimiter<
    String,
    governor::state::keyed::DefaultKeyedStateStore<String>,
    DefaultClock,
    governor::middleware::NoOpMiddleware,
>;

/// Everything a request handler can reach.
pub struct Api {
    pub cache: Arc<Cache>,
    pub cluster: Arc<dyn ApiCluster>,
    pub store: Store,
    pub config: PlatformConfig,
    pub metrics: ApiMetrics,
    limiter: Option<KeyedLimiter>,
    /// How long a write waits for the watch to show it (reads right after see the write).
    pub read_your_writes: Duration,
    /// The router itself, set when it is built: an approved request is executed through it
    /// (the same handlers, checks and audit layer as a direct call).
    pub router: std::sync::OnceLock<axum::Router>,
    /// The shared Mosquitto that device clients are made on (`shared.mosquitto` with the
    /// `api.broker` admin login); `None` when not configured (device writes answer 503).
    pub broker: Option<Arc<MosquittoBackend>>,
    /// Issues certificate devices' certificates from the device CA (`api.devices.ca`);
    /// `None` when it is not configured (certificate registrations answer 503).
    pub device_ca: Option<Arc<dyn DeviceCa>>,
}

/// The authentication of a request, done once by the audit layer (or, for an approved
/// request's execution, the approver) and reused by the [`Caller`] extractor.
#[derive(Clone, Debug)]
pub struct Authenticated(pub Result<Caller, ApiError>);

/// Marks the internal execution of an approved request (`api::requests`): no second request
/// is made of a refusal, and the audit record names the request.
#[derive(Clone, Debug)]
pub struct Execution {
    pub request_id: String,
    /// Token id and name of the requester.
    pub requested_by: (String, String),
}

pub type AppState = Arc<Api>;

impl Api {
    pub fn new(
        cache: Arc<Cache>,
        cluster: Arc<dyn ApiCluster>,
        store: Store,
        config: PlatformConfig,
    ) -> Api {
        let limiter = NonZeroU32::new(config.api.rate_limit_per_second).map(|rate| {
            let burst = NonZeroU32::new(config.api.rate_limit_burst).unwrap_or(rate);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        let broker_of = |config: &PlatformConfig| {
            let m = &config.shared.mosquitto;
            (!m.host.is_empty() && !config.api.broker.username.is_empty()).then(|| {
                Arc::new(MosquittoBackend::new(
                    m.host.clone(),
                    m.port,
                    AdminCredentials {
                        username: config.api.broker.username.clone(),
                        password: config.api.broker.password.clone(),
                        database: None,
                    },
                ))
            })
        };
        let broker = broker_of(&config);
        let files = &config.api.devices.ca;
        let device_ca: Option<Arc<dyn DeviceCa>> = (!files.cert_file.is_empty()).then(|| {
            Arc::new(super::devices::ca::FileDeviceCa::open(
                &files.cert_file,
                &files.key_file,
            )) as Arc<dyn DeviceCa>
        });
        Api {
            cache,
            cluster,
            store,
            config,
            metrics: ApiMetrics::new(),
            broker,
            limiter,
            read_your_writes: Duration::from_secs(3),
            router: std::sync::OnceLock::new(),
            device_ca,
        }
    }

    /// The caller of a request: the authentication the audit layer already did, else the
    /// bearer token of the headers.
    pub async fn caller_of(&self, parts: &Parts) -> Result<Caller, ApiError> {
        if let Some(Authenticated(a)) = parts.extensions.get::<Authenticated>() {
            return a.clone();
        }
        if !self.cache.is_ready() {
            return Err(ApiError::Unavailable(
                "the API is starting: the tenant tree is not loaded yet; retry in a few seconds"
                    .into(),
            ));
        }
        let h = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        self.authenticate(h).await
    }

    /// The single place every write goes through: refuses writes of suspended callers, runs
    /// `work` and logs its outcome. The audit record of the call and the requested action
    /// replacing a refusal are made around every mutating route by
    /// [`super::audit_layer::audit_layer`], so routes that skip this function are covered too.
    pub async fn mutate<T>(
        &self,
        caller: &Caller,
        action: &'static str,
        target: &str,
        work: impl std::future::Future<Output = Result<T, ApiError>>,
    ) -> Result<T, ApiError> {
        let result = match caller.require_writable() {
            Ok(()) => work.await,
            Err(e) => Err(e),
        };
        match &result {
            Ok(_) => tracing::info!(
                target: "silo::api::audit",
                token = %caller.token_id, tenant = %caller.tenant, action, target, outcome = "ok",
                "API change"
            ),
            Err(e) => tracing::info!(
                target: "silo::api::audit",
                token = %caller.token_id, tenant = %caller.tenant, action, target,
                outcome = e.reason(), "API change refused"
            ),
        }
        result
    }

    /// Authenticates a bearer token: 401 unless it is a known, unrevoked, unexpired token
    /// whose tenant and role still exist; 429 over its rate.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Caller, ApiError> {
        let text = authorization
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or_else(|| {
                ApiError::Unauthorized(
                    "missing bearer token: send the header Authorization: Bearer silo_…".into(),
                )
            })?;
        let invalid = || ApiError::Unauthorized("invalid token".into());
        let presented = auth::parse(text).ok_or_else(invalid)?;
        let (hash, record) = self
            .store
            .token_for_auth(&presented.id)
            .await?
            .ok_or_else(invalid)?;
        if !auth::hash_matches(&hash, &presented.hash) {
            return Err(invalid());
        }
        if record.revoked_at.is_some() {
            return Err(ApiError::Unauthorized(format!(
                "token {} has been revoked",
                record.id
            )));
        }
        if record.expired {
            return Err(ApiError::Unauthorized(format!(
                "token {} expired at {}",
                record.id,
                super::routes::rfc3339(record.expires_at)
            )));
        }
        if let Some(limiter) = &self.limiter
            && let Err(not_until) = limiter.check_key(&record.id)
        {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            return Err(ApiError::TooManyRequests(wait.as_secs() + 1));
        }
        self.cache.view().with_tree(|tree| {
            let Some(id) = tree.get(&record.tenant) else {
                return Err(ApiError::Unauthorized(format!(
                    "the tenant {:?} of token {} no longer exists",
                    record.tenant, record.id
                )));
            };
            let Some(role) = tree.resolve_role(id, &record.role) else {
                return Err(ApiError::Unauthorized(format!(
                    "the role {:?} of token {} is no longer defined",
                    record.role, record.id
                )));
            };
            Ok(Caller {
                token_id: record.id.clone(),
                token_name: record.name.clone().unwrap_or_default(),
                tenant: record.tenant.clone(),
                role: record.role.clone(),
                permissions: role.permissions,
                suspended_by: tree.suspended_by(id).map(|s| tree.name(s).to_string()),
            })
        })
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        state.caller_of(parts).await
    }
}

/// The OpenAPI document's fixed parts: title, version, the bearer scheme, the error shape.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Silo control-plane API",
        description = "Resellers provision and manage their own subtree of tenants. Bearer tokens (`silo_…`) are bound to one tenant and one role; anything outside the token's subtree answers 404. Errors are `{error, message, field?}`.",
        license(name = "Apache-2.0")
    ),
    components(schemas(ErrorBody)),
    modifiers(&BearerScheme),
    security(("bearer" = []))
)]
struct Doc;

struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("silo_<id>_<secret>")
                    .description(Some(
                        "An API token from `silo token create` or `POST /v1/tokens`",
                    ))
                    .build(),
            ),
        );
    }
}

/// The router and the OpenAPI document, both built from the same handler list.
pub fn router_and_document(state: AppState) -> (axum::Router, utoipa::openapi::OpenApi) {
    let limit = state.config.api.max_body_bytes;
    let (router, mut doc) = OpenApiRouter::with_openapi(<Doc as utoipa::OpenApi>::openapi())
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(openapi_json))
        .merge(super::routes::router())
        .split_for_parts();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    let served = doc.clone();
    let router = router
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            super::audit_layer::audit_layer,
        ))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), observe))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit as usize))
        .layer(axum::middleware::from_fn(
            move |mut req: Request, next: Next| {
                req.extensions_mut().insert(BodyLimit(limit));
                next.run(req)
            },
        ))
        .layer(axum::Extension(Arc::new(served)))
        .with_state(state.clone());
    // A second router built on the same state (tests) keeps the first one.
    let _ = state.router.set(router.clone());
    (router, doc)
}

/// The router alone.
pub fn router(state: AppState) -> axum::Router {
    router_and_document(state).0
}

async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    let resp = next.run(req).await;
    state.metrics.observe(
        &method,
        &route,
        resp.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    resp
}

/// The body of a path no route serves (tests tell it apart from a handler's 404).
pub const NO_ROUTE: &str = "NoRoute";

async fn no_route() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(ErrorBody {
            error: NO_ROUTE.into(),
            message: "no such endpoint: see /openapi.json".into(),
            field: None,
        }),
    )
        .into_response()
}

async fn method_not_allowed() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        axum::Json(ErrorBody {
            error: "MethodNotAllowed".into(),
            message: "this endpoint does not serve that method: see /openapi.json".into(),
            field: None,
        }),
    )
        .into_response()
}

/// Liveness: the process serves HTTP.
#[utoipa::path(get, path = "/healthz", tag = "probes", security(()),
    responses((status = 200, description = "alive", body = String)))]
async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: the cluster view is synced and the database answers.
#[utoipa::path(get, path = "/readyz", tag = "probes", security(()),
    responses((status = 200, description = "ready", body = String),
              (status = 503, description = "not ready, with the reason", body = String)))]
async fn readyz(State(state): State<AppState>) -> Response {
    if !state.cache.is_ready() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "starting: the tenant tree is not loaded yet",
        )
            .into_response();
    }
    match tokio::time::timeout(Duration::from_secs(2), state.store.ping()).await {
        Ok(Ok(())) => (StatusCode::OK, "ready").into_response(),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, format!("database: {e}")).into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "database: no answer within 2s",
        )
            .into_response(),
    }
}

/// Prometheus metrics (OpenMetrics text): `silo_api_requests_total` by route, method and
/// status, `silo_api_request_duration_seconds`.
#[utoipa::path(get, path = "/metrics", tag = "probes", security(()),
    responses((status = 200, description = "OpenMetrics text", body = String)))]
async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

/// This document (OpenAPI 3.1).
#[utoipa::path(get, path = "/openapi.json", tag = "probes", security(()),
    responses((status = 200, description = "the OpenAPI 3.1 document", body = Object)))]
async fn openapi_json(
    axum::Extension(doc): axum::Extension<Arc<utoipa::openapi::OpenApi>>,
) -> Response {
    axum::Json(doc.as_ref().clone()).into_response()
}
