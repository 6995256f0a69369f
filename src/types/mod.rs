//! The API types: `silo.dev/v1alpha1` kinds Tenant, LimitProfile and Channel.

pub mod channel;
pub mod limits;
pub mod profile;
pub mod quantity;
mod schema;
pub mod tenant;

use kube::CustomResourceExt;

pub use channel::{Channel, ChannelSpec, ChannelStatus, Visibility};
pub use limits::{CountResource, Limits, QuotaResource, UsageCounts};
pub use profile::{LimitProfile, LimitProfileSpec};
pub use quantity::QuantityValue;
pub use tenant::{
    CustomRole, Isolation, Member, Phase, Subject, SubjectKind, Tenant, TenantSpec, TenantStatus,
};

pub const GROUP: &str = "silo.dev";
pub const VERSION: &str = "v1alpha1";
pub const API_VERSION: &str = "silo.dev/v1alpha1";

/// The CRDs in a fixed order, as `silo crds` prints them.
pub fn crds()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    vec![Tenant::crd(), LimitProfile::crd(), Channel::crd()]
}

/// The CRDs as one multi-document YAML stream.
pub fn crds_yaml() -> Result<String, serde_norway::Error> {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_norway::to_string(&crd)?);
    }
    Ok(out)
}
