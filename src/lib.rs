//! Silo: turns a tree of tenants into isolated infrastructure on Kubernetes.
//!
//! Layout (each folder one layer):
//! - [`types`]: the CRD kinds and their fields.
//! - [`hierarchy`]: the tenant tree and limit rules, plain functions with no I/O.
//! - [`render`]: the Kubernetes objects a tenant's silo consists of.
//! - [`plan`]: loading YAML from files and printing the analysed tree (`silo plan`).
//! - [`config`]: the platform configuration file.
//! - [`heap`]: returning memory freed by bursts of work to the system (glibc).
//! - [`backends`]: the platform's shared PostgreSQL and Mosquitto (Shared tenants).
//! - [`keys`]: per-tenant encryption keys (local keyring or AWS KMS), crypto-shredding.
//! - [`pki`]: platform root CA, per-tenant CAs, broker and device certificates.
//! - [`webhook`]: the validating admission webhook (served by the operator).
//! - [`operator`]: the controllers that turn Tenants into live silos (`silo operator`).
//! - [`api`]: the control-plane REST API (`silo api`, `silo token create`).
//! - [`audit`]: the tamper-evident audit trail (API, operator, `silo audit`).

pub mod api;
pub mod audit;
pub mod backends;
pub mod config;
pub mod heap;
pub mod hierarchy;
pub mod keys;
pub mod operator;
pub mod pki;
pub mod plan;
pub mod render;
pub mod types;
pub mod webhook;
