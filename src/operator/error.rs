//! The operator's errors. Each variant names a metric label and an event reason, and says
//! whether it is worth retrying.

use crate::operator::cluster::{ClusterError, FailureKind};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the cluster failed.
    #[error("cluster: {0}")]
    Cluster(#[from] ClusterError),
    /// The tenant's spec is invalid; nothing will change until the spec (or the tree) does.
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    /// The key provider failed (typed: its variant gives the metric label and whether to
    /// retry).
    #[error("key provider: {0}")]
    Key(#[from] crate::operator::key_service::KeyServiceError),
    /// A shared service (PostgreSQL, Mosquitto) failed while a Shared tenant left it.
    #[error("shared services: {0}")]
    Shared(#[from] crate::backends::BackendError),
    /// The tenant is not in the cache (deleted meanwhile).
    #[error("tenant {0} is no longer known")]
    Gone(String),
}

impl Error {
    /// Label for the `silo_reconcile_errors_total{kind}` metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Cluster(e) => match e.kind {
                FailureKind::Conflict => "conflict",
                FailureKind::NotFound => "not_found",
                FailureKind::Forbidden => "forbidden",
                FailureKind::Invalid => "rejected",
                FailureKind::Transient => "transient",
            },
            Error::InvalidSpec(_) => "invalid_spec",
            Error::Key(e) => e.label(),
            Error::Shared(e) => e.label(),
            Error::Gone(_) => "gone",
        }
    }

    /// Reason of the Warning event published for this error.
    pub fn event_reason(&self) -> &'static str {
        match self {
            Error::Cluster(e) => match e.kind {
                FailureKind::Forbidden => "Forbidden",
                FailureKind::Invalid => "Rejected",
                _ => "ApplyFailed",
            },
            Error::InvalidSpec(_) => "InvalidSpec",
            Error::Key(_) => "KeyFailed",
            Error::Shared(_) => "SharedUnavailable",
            Error::Gone(_) => "Gone",
        }
    }

    /// Worth retrying with backoff (as opposed to waiting for a change).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Cluster(e) => !matches!(e.kind, FailureKind::Invalid),
            Error::Key(e) => e.is_transient(),
            Error::Shared(_) => true,
            Error::InvalidSpec(_) | Error::Gone(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_retry_classes() {
        let e = Error::Cluster(ClusterError::new(
            FailureKind::Transient,
            "apply",
            "Namespace/tenant-a",
            "connection reset",
        ));
        assert_eq!(e.metric_label(), "transient");
        assert!(e.is_transient());
        assert_eq!(
            e.to_string(),
            "cluster: apply Namespace/tenant-a: connection reset"
        );
        let e = Error::InvalidSpec("Tenant/x: spec.parent: unknown parent y".into());
        assert_eq!(e.metric_label(), "invalid_spec");
        assert_eq!(e.event_reason(), "InvalidSpec");
        assert!(!e.is_transient());
        let e = Error::Cluster(ClusterError::new(FailureKind::Invalid, "apply", "x", "bad"));
        assert!(!e.is_transient());
        assert_eq!(e.event_reason(), "Rejected");
    }

    #[test]
    fn key_errors_keep_their_type_for_labels_and_retries() {
        use crate::keys::KeyError;
        use crate::operator::key_service::KeyServiceError;
        let provider = |source| {
            Error::from(KeyServiceError::Provider {
                doing: "key of tenant a".into(),
                source,
            })
        };
        // An invalid tenant name will not become valid by retrying.
        let e = provider(KeyError::InvalidTenant("A_".into()));
        assert_eq!(e.metric_label(), "key_invalid_tenant");
        assert!(!e.is_transient());
        assert_eq!(e.event_reason(), "KeyFailed");
        assert!(
            e.to_string()
                .starts_with("key provider: key of tenant a: invalid tenant name"),
            "{e}"
        );
        // A lost race on the keyring is found by its variant, not by "(409" in a message.
        let e = provider(KeyError::Conflict("keyring record x changed".into()));
        assert_eq!(e.metric_label(), "key_conflict");
        assert!(e.is_transient());
        let e = provider(KeyError::Kms {
            operation: "CreateKey",
            message: "throttled".into(),
        });
        assert_eq!((e.metric_label(), e.is_transient()), ("key_kms", true));
        let e = Error::from(KeyServiceError::NotConfigured("cannot rotate".into()));
        assert_eq!(
            (e.metric_label(), e.is_transient()),
            ("key_not_configured", false)
        );
    }
}
