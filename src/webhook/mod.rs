//! The validating admission webhook for Tenant, LimitProfile and Channel.
//!
//! # Seam for the operator
//!
//! ```text
//! let view = TreeView::new(EngineSettings::from(&platform_config));
//! view.replace_all(inventory);                 // after the initial list
//! // watchers: view.upsert_tenant(t) / view.remove_tenant(name)
//! //           view.upsert_profile(p) / view.remove_profile(name)
//! //           view.upsert_channel(c) / view.remove_channel(name)
//! let state = Arc::new(WebhookState::new(view));
//! // or, serving before the initial list is loaded (denies "webhook is starting" until ready):
//! let state = Arc::new(WebhookState::starting(view)); /* …load… */ state.set_ready();
//!
//! // Certificates (default: own CA, stored in a Secret, caBundle kept current):
//! let settings = CertSettings { namespace, secret_name, endpoint, policy, timeout_seconds: 5 };
//! let (bundle, _) = apply::reconcile_certificates(&client, &settings, now).await?;
//! let config = rustls_config(&TlsSource::Pem { cert, key }).await?;
//! tokio::spawn(apply::maintain_certificates(client, settings, config.clone(), Some(bundle), hourly));
//! serve(addr, TlsSource::Config(config), state).await?;
//! // or, with a mounted cert-manager certificate (reloaded when the files change):
//! serve(addr, TlsSource::Files { cert, key, poll }, state).await?;
//! ```
//!
//! - [`view::TreeView`]: the always-current tree (the `silo plan` engine, kept current
//!   incrementally) plus reservations: check-and-reserve is atomic under one lock; a
//!   reservation lasts until the watcher reports the object or its TTL (default 30 s) ends.
//! - [`decide::Proposal`] / [`TreeView::decide`]: the decision, in O(depth + object size)
//!   for tenants. Denials name object, field and reason ([`denial::Denial`]).
//! - [`review`]: AdmissionReview v1 handling; `userInfo` is never consulted, so no
//!   identity bypasses the checks (deletes included).
//! - [`server`]: axum over rustls, `POST /validate`; malformed bodies get a 400 JSON error.
//! - [`tls`]: pure certificate generation/rotation and the desired
//!   ValidatingWebhookConfiguration (only `silo.dev` kinds, `failurePolicy: Fail`, 5 s).
//! - [`apply`]: the thin Kubernetes client part (server-side apply, field manager `silo`).

pub mod apply;
pub mod decide;
pub mod denial;
pub mod review;
pub mod server;
pub mod tls;
pub mod view;

pub use apply::{CertSettings, maintain_certificates, reconcile_certificates};
pub use decide::Proposal;
pub use denial::{Denial, DenialReason};
pub use server::{
    ServeError, TlsSource, WEBHOOK_PATH, WebhookState, router, rustls_config, serve,
    serve_listener, watch_cert_files,
};
pub use tls::{
    CertAction, CertBundle, FIELD_MANAGER, RotationPolicy, WebhookEndpoint,
    desired_webhook_configuration, ensure_serving_cert,
};
#[cfg(any(test, feature = "test-support"))]
pub use view::ManualClock;
pub use view::{Clock, DEFAULT_RESERVATION_TTL, SystemClock, TreeView};
