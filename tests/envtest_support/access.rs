//! Effective rights as the API server's authorizer decides them (`kubectl auth can-i`), not
//! by reading RBAC objects: [`can_i`] asks as the client's own identity
//! (SelfSubjectAccessReview), [`user_can`] asks about any user and groups with the admin's
//! client (SubjectAccessReview).
//!
//! A resource is written as kubectl does: `pods`, `pods/exec`, `deployments.apps`,
//! `rolebindings.rbac.authorization.k8s.io`, `tenants.silo.dev`.

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec, SubjectAccessReview,
    SubjectAccessReviewSpec,
};
use kube::Client;
use kube::api::{Api, PostParams};

/// `RESOURCE[/SUBRESOURCE][.GROUP]` → attributes for `verb` in `namespace`.
pub fn attributes(verb: &str, resource: &str, namespace: Option<&str>) -> ResourceAttributes {
    let (res, group) = resource.split_once('.').unwrap_or((resource, ""));
    let (res, sub) = match res.split_once('/') {
        Some((r, s)) => (r, Some(s.to_string())),
        None => (res, None),
    };
    ResourceAttributes {
        verb: Some(verb.into()),
        group: Some(group.into()),
        resource: Some(res.into()),
        subresource: sub,
        namespace: namespace.map(str::to_string),
        ..Default::default()
    }
}

/// Whether the client's own identity may `verb` `resource` in `namespace`.
pub async fn can_i(client: &Client, verb: &str, resource: &str, namespace: Option<&str>) -> bool {
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(attributes(verb, resource, namespace)),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<SelfSubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .expect("SelfSubjectAccessReview")
        .status
        .expect("SelfSubjectAccessReview status")
        .allowed
}

/// Whether `user` (with `groups`, `system:authenticated` added) may `verb` `resource` in
/// `namespace`; asked with `admin`'s client.
pub async fn user_can(
    admin: &Client,
    user: &str,
    groups: &[&str],
    verb: &str,
    resource: &str,
    namespace: Option<&str>,
) -> bool {
    let mut all: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
    all.push("system:authenticated".into());
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.into()),
            groups: Some(all),
            resource_attributes: Some(attributes(verb, resource, namespace)),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<SubjectAccessReview>::all(admin.clone())
        .create(&PostParams::default(), &review)
        .await
        .expect("SubjectAccessReview")
        .status
        .expect("SubjectAccessReview status")
        .allowed
}
