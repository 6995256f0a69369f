//! `/v1/tenants`: list, create, read, change (JSON merge patch), delete, tree, usage,
//! suspend, resume and rotate-key.
//!
//! Every change is judged by the admission webhook's own decision (`TreeView::decide`, the
//! same engine and messages) before it is written, and by the webhook again when it is.
//!
//! - [`shapes`]: the request and response bodies and query parameters (the OpenAPI schemas);
//! - [`read`]: the reading handlers (list, one tenant, tree, usage) and the usage figures;
//! - [`write`](mod@write): the changing handlers (create, patch, delete, suspend, resume,
//!   rotate-key) and [`write::write_tenant`], the one write of a changed spec (also used by
//!   members and roles);
//! - [`rules`]: what the caller may change or reference (field by field, visibility of
//!   profiles and channels, roles still in use), on top of the webhook's decision.

pub mod read;
pub mod rules;
pub mod shapes;
pub mod write;
