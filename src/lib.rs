//! Silo: turns a tree of tenants into isolated infrastructure on Kubernetes.
//!
//! Layout (each folder one layer):
//! - [`types`]: the CRD kinds and their fields.
//! - [`hierarchy`]: the tenant tree and limit rules, plain functions with no I/O.
//! - [`render`]: the Kubernetes objects a tenant's silo consists of.
//! - [`plan`]: loading YAML from files and printing the analysed tree (`silo plan`).
//! - [`config`]: the platform configuration file.

pub mod config;
pub mod hierarchy;
pub mod operator;
pub mod plan;
pub mod render;
pub mod types;
