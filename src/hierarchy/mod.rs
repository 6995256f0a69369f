//! The tenant tree and its rules: structure, depth, profiles, channels, limits, usage and
//! settings. Plain functions with no I/O, shared by `silo plan`, the operator and the webhook.

mod check;
mod incremental;
mod problem;
pub mod quota;
pub mod roles;
mod settings;
pub mod synthetic;
mod tree;
mod view;

pub use check::LimitDenied;
pub use incremental::Applied;
pub use problem::{ObjectKind, Problem, ProblemKind};
pub use settings::overlay as overlay_settings;
pub(crate) use tree::check_limit_values;
pub use tree::{
    ChannelInfo, EngineSettings, Inventory, Node, NodeId, TenantTree, check_tenant_name,
    engine_copy,
};
pub use view::{EffectiveLimits, TenantSummary};

#[cfg(test)]
mod tests;
