//! The operator: reconciles Tenants into live silos.

pub mod permissions;
