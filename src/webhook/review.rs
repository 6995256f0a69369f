//! AdmissionReview v1 in, AdmissionReview v1 out.

use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::core::response::StatusSummary;
use serde::de::DeserializeOwned;

use crate::types::{Channel, GROUP, LimitProfile, Tenant};

use super::decide::Proposal;
use super::denial::{self, Denial, DenialReason};
use super::view::TreeView;

/// The request body could not be understood at all (answered with HTTP 400).
#[derive(Debug, thiserror::Error)]
pub enum BadReview {
    #[error("request body is not a valid AdmissionReview: {0}")]
    Json(#[from] serde_json::Error),
    #[error("AdmissionReview has no request")]
    NoRequest,
}

/// Parses a raw body and answers it.
pub fn review_bytes(
    view: &TreeView,
    body: &[u8],
) -> Result<AdmissionReview<DynamicObject>, BadReview> {
    let review: AdmissionReview<DynamicObject> = serde_json::from_slice(body)?;
    let req: AdmissionRequest<DynamicObject> =
        review.try_into().map_err(|_| BadReview::NoRequest)?;
    Ok(answer(view, &req).into_review())
}

/// The message of every silo.dev write while the tree is not loaded yet.
pub const STARTING_MESSAGE: &str = "the silo admission webhook is starting: the tenant tree is not loaded yet, so no Tenant, LimitProfile or Channel change can be checked; retry in a few seconds";

/// Parses a raw body and answers it while the view is still loading: silo.dev objects are
/// denied with [`STARTING_MESSAGE`] (fail closed), everything else is allowed as in [`answer`].
pub fn review_bytes_starting(body: &[u8]) -> Result<AdmissionReview<DynamicObject>, BadReview> {
    let review: AdmissionReview<DynamicObject> = serde_json::from_slice(body)?;
    let req: AdmissionRequest<DynamicObject> =
        review.try_into().map_err(|_| BadReview::NoRequest)?;
    Ok(answer_starting(&req).into_review())
}

/// Decides one AdmissionRequest while the view is not loaded.
pub fn answer_starting(req: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
    let resp = AdmissionResponse::from(req);
    if req.kind.group != GROUP || req.sub_resource.is_some() {
        return resp;
    }
    tracing::info!(kind = %req.kind.kind, name = %req.name, "admission denied: webhook is starting");
    let mut resp = resp.deny(STARTING_MESSAGE);
    resp.result.code = 503;
    resp.result.reason = "ServiceUnavailable".to_string();
    resp.result.status = Some(StatusSummary::Failure);
    resp
}

/// Decides one AdmissionRequest. Who sends it plays no part (`userInfo` is not consulted):
/// no identity, not even the operator's own, bypasses the checks.
pub fn answer(view: &TreeView, req: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
    let resp = AdmissionResponse::from(req);
    // Only the objects themselves are judged; a status subresource write carries no spec change.
    if req.kind.group != GROUP || req.sub_resource.is_some() {
        return resp;
    }
    let proposal = match proposal(req) {
        Ok(Some(p)) => p,
        Ok(None) => return resp,
        Err(d) => return deny(resp, &[d]),
    };
    match view.decide(&proposal, !req.dry_run) {
        Ok(()) => resp,
        Err(denials) => {
            tracing::info!(
                kind = %req.kind.kind,
                name = %req.name,
                operation = ?req.operation,
                user = ?req.user_info.username,
                reason = denials.first().map(|d| d.reason.as_str()).unwrap_or_default(),
                message = %denial::join(&denials),
                "admission denied"
            );
            deny(resp, &denials)
        }
    }
}

fn deny(resp: AdmissionResponse, denials: &[Denial]) -> AdmissionResponse {
    let reason = denials
        .first()
        .map_or(DenialReason::MalformedObject, |d| d.reason);
    let mut resp = resp.deny(denial::join(denials));
    resp.result.code = reason.code();
    resp.result.reason = reason.as_str().to_string();
    resp.result.status = Some(StatusSummary::Failure);
    resp
}

fn convert<K: DeserializeOwned>(
    obj: &Option<DynamicObject>,
    req: &AdmissionRequest<DynamicObject>,
    field: &str,
) -> Result<K, Denial> {
    let kind = object_kind(&req.kind.kind);
    let malformed = |msg: String| {
        Denial::new(
            kind.unwrap_or(crate::hierarchy::ObjectKind::Tenant),
            &req.name,
            field,
            DenialReason::MalformedObject,
            msg,
        )
    };
    let Some(obj) = obj else {
        return Err(malformed(format!(
            "the AdmissionRequest carries no {field}"
        )));
    };
    let value = serde_json::to_value(obj).map_err(|e| malformed(e.to_string()))?;
    serde_path_to_error::deserialize(value)
        .map_err(|e| malformed(format!("{field}.{} is invalid: {}", e.path(), e.inner())))
}

fn object_kind(kind: &str) -> Option<crate::hierarchy::ObjectKind> {
    use crate::hierarchy::ObjectKind;
    match kind {
        "Tenant" => Some(ObjectKind::Tenant),
        "LimitProfile" => Some(ObjectKind::LimitProfile),
        "Channel" => Some(ObjectKind::Channel),
        _ => None,
    }
}

fn proposal(req: &AdmissionRequest<DynamicObject>) -> Result<Option<Proposal>, Denial> {
    let op = &req.operation;
    let p = match (req.kind.kind.as_str(), op) {
        ("Tenant", Operation::Create) => {
            Proposal::CreateTenant(named(convert(&req.object, req, "object")?, req))
        }
        ("Tenant", Operation::Update) => Proposal::UpdateTenant {
            old: Box::new(named(convert(&req.old_object, req, "oldObject")?, req)),
            new: Box::new(named(convert(&req.object, req, "object")?, req)),
        },
        ("Tenant", Operation::Delete) => {
            Proposal::DeleteTenant(named(convert(&req.old_object, req, "oldObject")?, req))
        }
        ("LimitProfile", Operation::Create) => {
            Proposal::CreateProfile(named(convert(&req.object, req, "object")?, req))
        }
        ("LimitProfile", Operation::Update) => Proposal::UpdateProfile {
            old: Box::new(named(convert(&req.old_object, req, "oldObject")?, req)),
            new: Box::new(named(convert(&req.object, req, "object")?, req)),
        },
        ("LimitProfile", Operation::Delete) => {
            Proposal::DeleteProfile(named(convert(&req.old_object, req, "oldObject")?, req))
        }
        ("Channel", Operation::Create) => {
            Proposal::CreateChannel(named(convert(&req.object, req, "object")?, req))
        }
        ("Channel", Operation::Update) => Proposal::UpdateChannel {
            old: Box::new(named(convert(&req.old_object, req, "oldObject")?, req)),
            new: Box::new(named(convert(&req.object, req, "object")?, req)),
        },
        ("Channel", Operation::Delete) => {
            Proposal::DeleteChannel(named(convert(&req.old_object, req, "oldObject")?, req))
        }
        _ => return Ok(None),
    };
    Ok(Some(p))
}

/// Objects carry their name in metadata; the request's `name` is authoritative when the
/// object has none yet (generateName is resolved before validating webhooks run).
trait Named {
    fn meta_name(&mut self) -> &mut Option<String>;
}

impl Named for Tenant {
    fn meta_name(&mut self) -> &mut Option<String> {
        &mut self.metadata.name
    }
}
impl Named for LimitProfile {
    fn meta_name(&mut self) -> &mut Option<String> {
        &mut self.metadata.name
    }
}
impl Named for Channel {
    fn meta_name(&mut self) -> &mut Option<String> {
        &mut self.metadata.name
    }
}

fn named<K: Named>(mut k: K, req: &AdmissionRequest<DynamicObject>) -> K {
    let slot = k.meta_name();
    if slot.as_deref().is_none_or(str::is_empty) {
        *slot = Some(req.name.clone());
    }
    k
}
