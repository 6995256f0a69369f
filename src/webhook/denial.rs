//! Why an admission request was refused: object, field, reason — in the same
//! `Kind/name: field: reason` shape as the problems `silo plan` prints.

use std::fmt;

use crate::hierarchy::{ObjectKind, Problem, ProblemKind};

/// Machine-readable reason, sent as `status.reason` of the AdmissionReview response.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DenialReason {
    InvalidName,
    AlreadyExists,
    UnknownParent,
    Cycle,
    TooDeep,
    ParentImmutable,
    InvalidLimit,
    LimitExceeded,
    QuotaOverParent,
    QuotaRequired,
    UnknownProfile,
    ProfileNotOwnedByAncestor,
    UnknownOwner,
    UnknownChannel,
    ChannelNotVisible,
    VisibilityOutsideOwner,
    InvalidMember,
    SubjectTooBroad,
    HasChildren,
    ParentSuspended,
    ParentDeleting,
    InUse,
    /// A change Kubernetes cannot apply in place without losing data
    /// ([`crate::render::immutable::refused_tenant_changes`]).
    NotInPlace,
    MalformedObject,
}

impl DenialReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DenialReason::InvalidName => "InvalidName",
            DenialReason::AlreadyExists => "AlreadyExists",
            DenialReason::UnknownParent => "UnknownParent",
            DenialReason::Cycle => "Cycle",
            DenialReason::TooDeep => "TooDeep",
            DenialReason::ParentImmutable => "ParentImmutable",
            DenialReason::InvalidLimit => "InvalidLimit",
            DenialReason::LimitExceeded => "LimitExceeded",
            DenialReason::QuotaOverParent => "QuotaOverParent",
            DenialReason::QuotaRequired => "QuotaRequired",
            DenialReason::UnknownProfile => "UnknownProfile",
            DenialReason::ProfileNotOwnedByAncestor => "ProfileNotOwnedByAncestor",
            DenialReason::UnknownOwner => "UnknownOwner",
            DenialReason::UnknownChannel => "UnknownChannel",
            DenialReason::ChannelNotVisible => "ChannelNotVisible",
            DenialReason::VisibilityOutsideOwner => "VisibilityOutsideOwner",
            DenialReason::InvalidMember => "InvalidMember",
            DenialReason::SubjectTooBroad => "SubjectTooBroad",
            DenialReason::HasChildren => "HasChildren",
            DenialReason::ParentSuspended => "ParentSuspended",
            DenialReason::ParentDeleting => "ParentDeleting",
            DenialReason::InUse => "InUse",
            DenialReason::NotInPlace => "NotInPlace",
            DenialReason::MalformedObject => "MalformedObject",
        }
    }

    /// HTTP-style code for `status.code`: 403 when the object is valid but the current
    /// state of the tree forbids it, 409 for name clashes, 422 when the object itself is invalid.
    pub fn code(self) -> u16 {
        match self {
            DenialReason::LimitExceeded
            | DenialReason::QuotaOverParent
            | DenialReason::QuotaRequired
            | DenialReason::HasChildren
            | DenialReason::ParentSuspended
            | DenialReason::ParentDeleting
            | DenialReason::InUse => 403,
            DenialReason::AlreadyExists => 409,
            _ => 422,
        }
    }
}

impl From<ProblemKind> for DenialReason {
    fn from(k: ProblemKind) -> Self {
        match k {
            ProblemKind::InvalidName => DenialReason::InvalidName,
            ProblemKind::DuplicateName => DenialReason::AlreadyExists,
            ProblemKind::UnknownParent => DenialReason::UnknownParent,
            ProblemKind::Cycle => DenialReason::Cycle,
            ProblemKind::TooDeep => DenialReason::TooDeep,
            ProblemKind::UnknownProfile => DenialReason::UnknownProfile,
            ProblemKind::ProfileNotOwnedByAncestor => DenialReason::ProfileNotOwnedByAncestor,
            ProblemKind::UnknownOwner => DenialReason::UnknownOwner,
            ProblemKind::InvalidLimit => DenialReason::InvalidLimit,
            ProblemKind::LimitExceeded => DenialReason::LimitExceeded,
            ProblemKind::QuotaOverParent => DenialReason::QuotaOverParent,
            ProblemKind::QuotaRequired => DenialReason::QuotaRequired,
            ProblemKind::UnknownChannel => DenialReason::UnknownChannel,
            ProblemKind::ChannelNotVisible => DenialReason::ChannelNotVisible,
            ProblemKind::VisibilityOutsideOwner => DenialReason::VisibilityOutsideOwner,
            ProblemKind::InvalidMember => DenialReason::InvalidMember,
            ProblemKind::SubjectTooBroad => DenialReason::SubjectTooBroad,
        }
    }
}

/// One reason to refuse: `Kind/name: field: message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    pub object: ObjectKind,
    pub name: String,
    /// Dotted path of the offending field, e.g. `spec.parent`.
    pub field: String,
    pub reason: DenialReason,
    pub message: String,
}

impl Denial {
    pub fn new(
        object: ObjectKind,
        name: &str,
        field: impl Into<String>,
        reason: DenialReason,
        message: impl Into<String>,
    ) -> Self {
        Denial {
            object,
            name: name.to_string(),
            field: field.into(),
            reason,
            message: message.into(),
        }
    }
}

impl From<Problem> for Denial {
    fn from(p: Problem) -> Self {
        Denial {
            object: p.object,
            name: p.name,
            field: p.field,
            reason: p.kind.into(),
            message: p.reason,
        }
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}: {}: {}",
            self.object, self.name, self.field, self.message
        )
    }
}

/// All reasons found for one request, joined with "; " for `status.message`.
pub fn join(denials: &[Denial]) -> String {
    denials
        .iter()
        .map(Denial::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_object_field_and_reason() {
        let d = Denial::new(
            ObjectKind::Tenant,
            "x",
            "spec.parent",
            DenialReason::UnknownParent,
            "parent tenant \"y\" does not exist",
        );
        assert_eq!(
            d.to_string(),
            "Tenant/x: spec.parent: parent tenant \"y\" does not exist"
        );
        let e = Denial::new(
            ObjectKind::Tenant,
            "x",
            "metadata.name",
            DenialReason::InvalidName,
            "bad",
        );
        assert_eq!(
            join(&[d, e]),
            "Tenant/x: spec.parent: parent tenant \"y\" does not exist; Tenant/x: metadata.name: bad"
        );
    }

    // The status code and reason of each denial are checked where they matter, in the
    // AdmissionReview answered over HTTPS (`tests/webhook_admission.rs`: Cycle/TooDeep 422,
    // LimitExceeded/HasChildren 403, AlreadyExists 409) and as the API server passes them on
    // (`tests/envtest_webhook.rs`), not by restating `code()` here.
}
