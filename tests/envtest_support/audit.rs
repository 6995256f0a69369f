//! The API server's audit log (`--audit-log-path`, JSON lines, level `Metadata` for every
//! request except the server's own loopback client and health probes), read back to count
//! what one identity did: writes (create, update, patch, delete, deletecollection) and
//! refusals (403).
//!
//! The log backend runs in `blocking` mode, so a request's `ResponseComplete` event is in the
//! file once its response has been sent. Take a [`Mark`] before the phase you measure and
//! count [`AuditLog::since`] it.

use std::path::PathBuf;

use serde::Deserialize;

/// The audit policy written for the API server.
pub const POLICY: &str = r#"apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived", "ResponseStarted"]
rules:
  - level: None
    users: ["system:apiserver"]
  - level: None
    nonResourceURLs: ["/readyz*", "/livez*", "/healthz*", "/version", "/openapi*"]
  - level: Metadata
"#;

/// Verbs that change stored state.
pub const WRITE_VERBS: [&str; 5] = ["create", "update", "patch", "delete", "deletecollection"];

/// One `ResponseComplete` audit event, reduced to what the tests count.
#[derive(Clone, Debug)]
pub struct AuditEvent {
    /// The user the request acted as (the impersonated user when impersonating).
    pub user: String,
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, …
    pub verb: String,
    /// `namespaces`, `tenants`, `rolebindings`, … (empty for non-resource URLs).
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    /// HTTP status code of the response.
    pub code: u16,
    pub uri: String,
}

impl AuditEvent {
    /// A request that changes stored state: a write verb on a stored resource (access and
    /// token reviews and TokenRequests are `create`s that store nothing).
    pub fn is_write(&self) -> bool {
        WRITE_VERBS.contains(&self.verb.as_str())
            && !self.resource.ends_with("reviews")
            && !(self.resource == "serviceaccounts" && self.subresource == "token")
    }

    pub fn is_forbidden(&self) -> bool {
        self.code == 403
    }

    /// `verb resource[/subresource] namespace/name -> code`, for failure messages.
    pub fn describe(&self) -> String {
        let res = if self.subresource.is_empty() {
            self.resource.clone()
        } else {
            format!("{}/{}", self.resource, self.subresource)
        };
        format!(
            "{} {} {} {}/{} -> {} ({})",
            self.user, self.verb, res, self.namespace, self.name, self.code, self.uri
        )
    }
}

/// A position in the log: events after it are "since" the mark.
#[derive(Clone, Copy, Debug, Default)]
pub struct Mark(usize);

/// The audit log file of one control plane.
#[derive(Clone, Debug)]
pub struct AuditLog {
    pub path: PathBuf,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    #[serde(default)]
    stage: String,
    #[serde(default)]
    verb: String,
    #[serde(default, rename = "requestURI")]
    request_uri: String,
    #[serde(default)]
    user: RawUser,
    impersonated_user: Option<RawUser>,
    object_ref: Option<RawRef>,
    response_status: Option<RawStatus>,
}

#[derive(Default, Deserialize)]
struct RawUser {
    #[serde(default)]
    username: String,
}

#[derive(Deserialize)]
struct RawRef {
    #[serde(default)]
    resource: String,
    #[serde(default)]
    subresource: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    name: String,
}

#[derive(Deserialize)]
struct RawStatus {
    #[serde(default)]
    code: u16,
}

impl AuditLog {
    fn text(&self) -> String {
        std::fs::read_to_string(&self.path).unwrap_or_default()
    }

    /// The current end of the log.
    pub fn mark(&self) -> Mark {
        Mark(self.text().len())
    }

    /// Every completed request logged so far.
    pub fn events(&self) -> Vec<AuditEvent> {
        self.since(Mark(0))
    }

    /// Completed requests logged after `mark` (a partly written last line is skipped).
    pub fn since(&self, mark: Mark) -> Vec<AuditEvent> {
        let text = self.text();
        let tail = text.get(mark.0..).unwrap_or("");
        tail.lines()
            .filter_map(|l| serde_json::from_str::<Raw>(l).ok())
            .filter(|r| r.stage == "ResponseComplete" || r.stage == "Panic")
            .map(|r| {
                let user = r
                    .impersonated_user
                    .map(|u| u.username)
                    .unwrap_or(r.user.username);
                let o = r.object_ref;
                AuditEvent {
                    user,
                    verb: r.verb,
                    resource: o.as_ref().map(|o| o.resource.clone()).unwrap_or_default(),
                    subresource: o
                        .as_ref()
                        .map(|o| o.subresource.clone())
                        .unwrap_or_default(),
                    namespace: o.as_ref().map(|o| o.namespace.clone()).unwrap_or_default(),
                    name: o.as_ref().map(|o| o.name.clone()).unwrap_or_default(),
                    code: r.response_status.map(|s| s.code).unwrap_or_default(),
                    uri: r.request_uri,
                }
            })
            .collect()
    }

    /// Write requests by `user` after `mark` (whatever their outcome).
    pub fn writes_by(&self, user: &str, mark: Mark) -> Vec<AuditEvent> {
        self.since(mark)
            .into_iter()
            .filter(|e| e.user == user && e.is_write())
            .collect()
    }

    /// Requests by `user` after `mark` answered 403 Forbidden.
    pub fn forbidden_for(&self, user: &str, mark: Mark) -> Vec<AuditEvent> {
        self.since(mark)
            .into_iter()
            .filter(|e| e.user == user && e.is_forbidden())
            .collect()
    }

    /// Every request by `user` after `mark`.
    pub fn requests_by(&self, user: &str, mark: Mark) -> Vec<AuditEvent> {
        self.since(mark)
            .into_iter()
            .filter(|e| e.user == user)
            .collect()
    }
}
