//! The Kubernetes side of the API: a small trait ([`ApiCluster`]) for what the API reads
//! (watch events of Tenants, LimitProfiles and Channels) and writes (those objects, with the
//! field manager [`FIELD_MANAGER`]), implemented with kube-rs by [`KubeApiCluster`] and, for
//! tests only, in memory (`api::testing`).
//!
//! Writes: a creation is a `create` (the API server answers 409 when the name is taken, which
//! server-side apply would silently turn into an update); every later change is a server-side
//! apply of the complete spec with `force` and the resourceVersion the change was computed
//! from (409 when the object changed in between). The admission webhook judges each write; its
//! denial comes back as [`WriteError::Denied`] with its code, reason and message.

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};

use crate::operator::admission::WatchEvent;
use crate::types::{API_VERSION, Channel, LimitProfile, Tenant, TenantSpec};

use super::errors::ApiError;

/// The server-side apply field manager of every API write.
pub const FIELD_MANAGER: &str = "silo-api";

/// A change to a Tenant: the complete new spec and the annotations the API manages.
#[derive(Clone, Debug, PartialEq)]
pub struct TenantApply {
    pub name: String,
    pub spec: TenantSpec,
    /// Annotations owned by the API (e.g. `silo.dev/rotate-key`).
    pub annotations: BTreeMap<String, String>,
    /// The resourceVersion the change was computed from (precondition).
    pub resource_version: Option<String>,
}

/// Why a write failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0} not found")]
    NotFound(String),
    /// Refused by admission (the webhook) or the API server's validation (CRD schema, CEL).
    #[error("{message}")]
    Denied {
        code: u16,
        reason: String,
        message: String,
    },
    /// The API's ServiceAccount lacks a permission (an installation problem).
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Unavailable(String),
}

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::AlreadyExists(what) => ApiError::Conflict {
                reason: "AlreadyExists",
                message: format!("{what} already exists (names are unique in the cluster)"),
            },
            WriteError::Conflict(m) => ApiError::Conflict {
                reason: "Conflict",
                message: format!(
                    "the object changed since it was read ({m}): read it again and retry"
                ),
            },
            WriteError::NotFound(what) => ApiError::NotFound(format!("{what} not found")),
            WriteError::Denied {
                code,
                reason,
                message,
            } => ApiError::Denied {
                code,
                reason,
                message,
                field: None,
            },
            WriteError::Forbidden(m) => {
                tracing::error!(error = %m, "the API's ServiceAccount is not allowed to write");
                ApiError::Unavailable(
                    "the API is not allowed to write this object (installation RBAC); tell the platform team".into(),
                )
            }
            WriteError::Unavailable(m) => {
                tracing::warn!(error = %m, "Kubernetes API server unavailable");
                ApiError::Unavailable(
                    "the Kubernetes API server is unavailable; retry later".into(),
                )
            }
        }
    }
}

/// What the API does to the cluster.
pub trait ApiCluster: Send + Sync + 'static {
    /// Watch events of Tenants, LimitProfiles and Channels (each starting with a full list),
    /// the same feed the admission webhook's tree is kept with.
    fn events(&self) -> BoxStream<'static, Result<WatchEvent, String>>;
    fn create_tenant(&self, t: Tenant) -> BoxFuture<'_, Result<Tenant, WriteError>>;
    fn apply_tenant(&self, change: TenantApply) -> BoxFuture<'_, Result<Tenant, WriteError>>;
    /// Deletes a Tenant, only if its uid is still `uid` (not a re-created namesake).
    fn delete_tenant(
        &self,
        name: String,
        uid: Option<String>,
    ) -> BoxFuture<'_, Result<(), WriteError>>;
    fn create_profile(&self, p: LimitProfile) -> BoxFuture<'_, Result<LimitProfile, WriteError>>;
    fn create_channel(&self, c: Channel) -> BoxFuture<'_, Result<Channel, WriteError>>;
}

/// The manifest applied for a [`TenantApply`].
pub fn tenant_apply_manifest(change: &TenantApply) -> serde_json::Value {
    let mut metadata = serde_json::json!({ "name": change.name });
    if !change.annotations.is_empty() {
        metadata["annotations"] = serde_json::json!(change.annotations);
    }
    if let Some(rv) = &change.resource_version {
        metadata["resourceVersion"] = serde_json::json!(rv);
    }
    serde_json::json!({
        "apiVersion": API_VERSION,
        "kind": "Tenant",
        "metadata": metadata,
        "spec": change.spec,
    })
}

/// [`ApiCluster`] on a real API server.
#[derive(Clone)]
pub struct KubeApiCluster {
    client: Client,
}

impl KubeApiCluster {
    pub fn new(client: Client) -> Self {
        KubeApiCluster { client }
    }
}

fn write_error(what: String, e: kube::Error) -> WriteError {
    match e {
        kube::Error::Api(s) => {
            let webhook = s.message.contains("admission webhook");
            match s.code {
                409 if s.reason == "AlreadyExists" => WriteError::AlreadyExists(what),
                409 if !webhook => WriteError::Conflict(s.message),
                404 => WriteError::NotFound(what),
                403 if !webhook => WriteError::Forbidden(s.message),
                400 | 403 | 409 | 422 => WriteError::Denied {
                    code: if s.code == 400 { 422 } else { s.code },
                    reason: if s.reason.is_empty() || s.reason == "Invalid" {
                        "Invalid".to_string()
                    } else {
                        s.reason
                    },
                    message: webhook_message(&s.message),
                },
                _ => WriteError::Unavailable(format!("{} ({})", s.message, s.code)),
            }
        }
        other => WriteError::Unavailable(other.to_string()),
    }
}

/// `admission webhook "x" denied the request: MSG` → `MSG` (the webhook's own words).
fn webhook_message(m: &str) -> String {
    match m.split_once("denied the request: ") {
        Some((_, rest)) => rest.to_string(),
        None => m.to_string(),
    }
}

impl ApiCluster for KubeApiCluster {
    fn events(&self) -> BoxStream<'static, Result<WatchEvent, String>> {
        crate::operator::admission::watch_events(&self.client, None)
            .map_err(|e| e.to_string())
            .boxed()
    }

    fn create_tenant(&self, t: Tenant) -> BoxFuture<'_, Result<Tenant, WriteError>> {
        Box::pin(async move {
            let what = format!("Tenant {:?}", t.name());
            let api: Api<Tenant> = Api::all(self.client.clone());
            let pp = PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            };
            api.create(&pp, &t).await.map_err(|e| write_error(what, e))
        })
    }

    fn apply_tenant(&self, change: TenantApply) -> BoxFuture<'_, Result<Tenant, WriteError>> {
        Box::pin(async move {
            let what = format!("Tenant {:?}", change.name);
            let api: Api<Tenant> = Api::all(self.client.clone());
            let manifest = tenant_apply_manifest(&change);
            api.patch(
                &change.name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&manifest),
            )
            .await
            .map_err(|e| write_error(what, e))
        })
    }

    fn delete_tenant(
        &self,
        name: String,
        uid: Option<String>,
    ) -> BoxFuture<'_, Result<(), WriteError>> {
        Box::pin(async move {
            let what = format!("Tenant {name:?}");
            let api: Api<Tenant> = Api::all(self.client.clone());
            let dp = DeleteParams {
                preconditions: uid.map(|uid| Preconditions {
                    uid: Some(uid),
                    resource_version: None,
                }),
                ..Default::default()
            };
            api.delete(&name, &dp)
                .await
                .map(|_| ())
                .map_err(|e| write_error(what, e))
        })
    }

    fn create_profile(&self, p: LimitProfile) -> BoxFuture<'_, Result<LimitProfile, WriteError>> {
        Box::pin(async move {
            let what = format!("LimitProfile {:?}", p.name());
            let api: Api<LimitProfile> = Api::all(self.client.clone());
            let pp = PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            };
            api.create(&pp, &p).await.map_err(|e| write_error(what, e))
        })
    }

    fn create_channel(&self, c: Channel) -> BoxFuture<'_, Result<Channel, WriteError>> {
        Box::pin(async move {
            let what = format!("Channel {:?}", c.name());
            let api: Api<Channel> = Api::all(self.client.clone());
            let pp = PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            };
            api.create(&pp, &c).await.map_err(|e| write_error(what, e))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16, reason: &str, message: &str) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure(message, reason)
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn webhook_denials_keep_code_reason_and_message() {
        let e = write_error(
            "Tenant \"x\"".into(),
            api_error(
                403,
                "LimitExceeded",
                "admission webhook \"tenants.silo.dev\" denied the request: Tenant/x: spec.parent: no",
            ),
        );
        assert_eq!(
            e,
            WriteError::Denied {
                code: 403,
                reason: "LimitExceeded".into(),
                message: "Tenant/x: spec.parent: no".into()
            }
        );
        assert_eq!(
            write_error("T".into(), api_error(409, "AlreadyExists", "exists")),
            WriteError::AlreadyExists("T".into())
        );
        assert!(matches!(
            write_error(
                "T".into(),
                api_error(
                    403,
                    "Forbidden",
                    "forbidden: User \"system:serviceaccount:x\""
                )
            ),
            WriteError::Forbidden(_)
        ));
        assert!(matches!(
            write_error(
                "T".into(),
                api_error(409, "Conflict", "the object has been modified")
            ),
            WriteError::Conflict(_)
        ));
    }

    #[test]
    fn the_apply_manifest_carries_the_precondition() {
        let m = tenant_apply_manifest(&TenantApply {
            name: "x".into(),
            spec: TenantSpec::default(),
            annotations: [("silo.dev/rotate-key".to_string(), "r1".to_string())].into(),
            resource_version: Some("42".into()),
        });
        assert_eq!(m["metadata"]["resourceVersion"], "42");
        assert_eq!(m["metadata"]["annotations"]["silo.dev/rotate-key"], "r1");
        assert_eq!(m["kind"], "Tenant");
    }
}
