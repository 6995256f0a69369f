//! The tenant tree and its rules: structure, depth, profiles, channels, limits, usage and
//! settings. Plain functions with no I/O, shared by `silo plan`, the operator and the webhook.

mod check;
mod incremental;
pub mod people;
mod problem;
pub mod quota;
pub mod roles;
mod settings;
pub mod synthetic;
mod tenant_checks;
mod tree;
mod view;

pub use check::LimitDenied;
pub use incremental::Applied;
pub use people::{PeopleProblem, SubjectRefusal, check_admin, check_member, check_people};
pub use problem::{ObjectKind, Problem, ProblemKind};
pub use quota::{QuotaEdit, QuotaRefusal, QuotaTarget};
pub use settings::overlay as overlay_settings;
pub(crate) use tenant_checks::check_limit_values;
pub use tenant_checks::check_tenant_name;
pub use tree::{ChannelInfo, EngineSettings, Inventory, Node, NodeId, TenantTree, engine_copy};
pub use view::{EffectiveLimits, TenantSummary};

/// Up to `max` names joined with ", " (quoted), with the total when there are more.
pub(crate) fn names_list(list: &[&str], max: usize) -> String {
    let mut shown = list
        .iter()
        .take(max)
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    if list.len() > max {
        shown.push_str(&format!(", … ({} in all)", list.len()));
    }
    shown
}

#[cfg(test)]
mod tests;
