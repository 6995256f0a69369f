//! A problem found in the tenant tree: which object, which field, why.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectKind {
    Tenant,
    LimitProfile,
    Channel,
}

impl ObjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Tenant => "Tenant",
            ObjectKind::LimitProfile => "LimitProfile",
            ObjectKind::Channel => "Channel",
        }
    }
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a problem was raised; stable names usable as metric labels and event reasons.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProblemKind {
    InvalidName,
    DuplicateName,
    UnknownParent,
    Cycle,
    TooDeep,
    UnknownProfile,
    ProfileNotOwnedByAncestor,
    UnknownOwner,
    InvalidLimit,
    LimitExceeded,
    QuotaOverParent,
    /// A tenant without its own quota for a resource below a tenant that has one.
    QuotaRequired,
    UnknownChannel,
    ChannelNotVisible,
    VisibilityOutsideOwner,
    InvalidMember,
    /// An admin or member that stands for more than the tenant's own people.
    SubjectTooBroad,
}

impl ProblemKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemKind::InvalidName => "InvalidName",
            ProblemKind::DuplicateName => "DuplicateName",
            ProblemKind::UnknownParent => "UnknownParent",
            ProblemKind::Cycle => "Cycle",
            ProblemKind::TooDeep => "TooDeep",
            ProblemKind::UnknownProfile => "UnknownProfile",
            ProblemKind::ProfileNotOwnedByAncestor => "ProfileNotOwnedByAncestor",
            ProblemKind::UnknownOwner => "UnknownOwner",
            ProblemKind::InvalidLimit => "InvalidLimit",
            ProblemKind::LimitExceeded => "LimitExceeded",
            ProblemKind::QuotaOverParent => "QuotaOverParent",
            ProblemKind::QuotaRequired => "QuotaRequired",
            ProblemKind::UnknownChannel => "UnknownChannel",
            ProblemKind::ChannelNotVisible => "ChannelNotVisible",
            ProblemKind::VisibilityOutsideOwner => "VisibilityOutsideOwner",
            ProblemKind::InvalidMember => "InvalidMember",
            ProblemKind::SubjectTooBroad => "SubjectTooBroad",
        }
    }
}

/// One problem, printed as `Kind/name: field: reason`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub object: ObjectKind,
    pub name: String,
    /// Dotted path of the offending field, e.g. `spec.limits.devices`.
    pub field: String,
    pub reason: String,
    pub kind: ProblemKind,
    /// Index of the object in the input slice of its kind (to find its source file).
    pub index: usize,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}: {}: {}",
            self.object, self.name, self.field, self.reason
        )
    }
}
