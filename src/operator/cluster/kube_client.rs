//! [`Cluster`] on a real API server through kube-rs. Thin: each method is one or a few API
//! calls, errors classified by HTTP status.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use kube::runtime::events::{Event, EventType, Reporter};
use kube::{Client, Resource};
use serde_json::{Value, json};

use crate::render::meta::TENANT_LABEL;
use crate::types::{API_VERSION, Channel, ChannelStatus, Tenant, TenantStatus};

use super::echoes::{Echoes, TENANT_KIND};
use super::events::EventRecorder;
use super::index::{OwnedIndex, SECRET_KIND};
use crate::operator::cluster::{
    Cluster, ClusterError, ClusterResult, EventInfo, FIELD_MANAGER, FINALIZER, FailureKind,
    HASH_ANNOTATION, IDENTITY_ANNOTATION, ObjectKey, Observed, OwnedKind, Readiness, SecretData,
};

/// Field managers whose writes to an owned object are normal operation, not drift
/// (e.g. the deployment controller's revision annotation).
const SYSTEM_MANAGERS: [&str; 3] = ["kube-controller-manager", "kube-scheduler", "kubelet"];

/// The API resource of an owned kind, or of a Secret (not an [`OwnedKind`]: written by the
/// credential step, not applied; deleted when a tenant switches isolation).
pub fn api_resource(kind: &str) -> Option<ApiResource> {
    if kind == SECRET_KIND {
        return Some(ApiResource::erase::<Secret>(&()));
    }
    OwnedKind::from_name(kind).map(owned_api_resource)
}

/// The API resource (group, version, kind, plural) of an owned kind.
pub fn owned_api_resource(kind: OwnedKind) -> ApiResource {
    ApiResource {
        group: kind.group().to_string(),
        version: kind.version().to_string(),
        api_version: kind.api_version().to_string(),
        kind: kind.name().to_string(),
        plural: kind.plural().to_string(),
    }
}

/// Classify a kube error.
pub fn classify(
    action: &'static str,
    object: impl std::fmt::Display,
    e: kube::Error,
) -> ClusterError {
    let kind = match &e {
        kube::Error::Api(s) => match s.code {
            409 => FailureKind::Conflict,
            404 => FailureKind::NotFound,
            403 => FailureKind::Forbidden,
            400 | 422 => FailureKind::Invalid,
            _ => FailureKind::Transient,
        },
        _ => FailureKind::Transient,
    };
    let message = match &e {
        kube::Error::Api(s) => format!("{} ({})", s.message, s.code),
        other => other.to_string(),
    };
    ClusterError::new(kind, action, object, message)
}

/// The latest time another (non-system) field manager changed the object's main resource
/// at or after the operator's own last apply. RFC 3339 text, so it can be remembered.
/// managedFields times have whole seconds: an edit in the same second as the operator's apply
/// counts (it may have come after it; at worst one re-apply, which `acknowledged` then
/// remembers), or it would stay unrepaired until the next resync.
pub fn foreign_edit(meta: &ObjectMeta) -> Option<String> {
    let fields = meta.managed_fields.as_ref()?;
    let ours = fields
        .iter()
        .filter(|m| m.manager.as_deref() == Some(FIELD_MANAGER))
        .filter_map(|m| m.time.as_ref())
        .max();
    fields
        .iter()
        .filter(|m| {
            let manager = m.manager.as_deref().unwrap_or_default();
            manager != FIELD_MANAGER
                && !SYSTEM_MANAGERS.contains(&manager)
                && m.subresource.as_deref().unwrap_or_default() != "status"
        })
        .filter_map(|m| m.time.as_ref())
        .filter(|t| ours.is_none_or(|o| *t >= o))
        .max()
        .map(|t| t.0.to_string())
}

/// What the operator sees of an owned object, from its metadata.
pub fn observe(kind: &str, meta: &ObjectMeta) -> Option<(String, Observed)> {
    let tenant = meta.labels.as_ref()?.get(TENANT_LABEL)?.clone();
    let key = ObjectKey::new(kind, meta.namespace.as_deref(), meta.name.as_deref()?);
    let annotation = |name: &str| meta.annotations.as_ref().and_then(|a| a.get(name)).cloned();
    Some((
        tenant,
        Observed {
            key,
            hash: annotation(HASH_ANNOTATION),
            identity: annotation(IDENTITY_ANNOTATION),
            foreign_edit: foreign_edit(meta),
        },
    ))
}

/// The kube-rs implementation.
#[derive(Clone)]
pub struct KubeCluster {
    client: Client,
    events: Arc<EventRecorder>,
    index: Option<Arc<OwnedIndex>>,
    /// What this client wrote, so the controller can tell the watch events it causes.
    echoes: Arc<Echoes>,
}

impl KubeCluster {
    /// Publishes `event` on the object `reference` (named `what` in errors); notes are cut to
    /// the API server's 1,000-character limit.
    async fn publish_on(
        &self,
        reference: k8s_openapi::api::core::v1::ObjectReference,
        what: &str,
        event: &EventInfo,
    ) -> ClusterResult<()> {
        let ev = Event {
            type_: if event.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: event.reason.clone(),
            note: Some(event.note.chars().take(1000).collect()),
            action: event.action.clone(),
            secondary: None,
        };
        self.events
            .recorder()
            .publish(&ev, &reference)
            .await
            .map_err(|e| classify("publish event on", what.to_string(), e))
    }

    pub fn new(client: Client, reporter_instance: Option<String>) -> Self {
        let reporter = Reporter {
            controller: "silo-operator".to_string(),
            instance: reporter_instance,
        };
        KubeCluster {
            events: Arc::new(EventRecorder::new(client.clone(), reporter)),
            client,
            index: None,
            echoes: Arc::new(Echoes::default()),
        }
    }

    /// The resourceVersions this client's writes returned ([`Echoes`]): the controller does
    /// not trigger a tenant on the watch events they cause.
    pub fn echoes(&self) -> Arc<Echoes> {
        self.echoes.clone()
    }

    /// Notes a write's result: the index learns it now rather than when the watch reports it
    /// (a reconcile of the same tenant meanwhile would otherwise write the object again), and
    /// [`Echoes`] so the watch event it causes triggers nothing.
    async fn wrote(&self, kind: &'static str, meta: &ObjectMeta) {
        self.echoes.wrote(kind, meta);
        if let Some(index) = &self.index {
            index.upsert(kind, meta).await;
        }
    }

    /// Lets go of the event recorder's cache after a quiet spell ([`EventRecorder`]).
    pub fn forget_quiet_events(&self) -> bool {
        self.events.forget_if_quiet()
    }

    /// Read owned objects from `index` once it is synced (falls back to API lists before).
    pub fn with_index(mut self, index: Arc<OwnedIndex>) -> Self {
        self.index = Some(index);
        self
    }

    fn dynamic(&self, key: &ObjectKey) -> ClusterResult<Api<DynamicObject>> {
        let ar = api_resource(&key.kind).ok_or_else(|| {
            ClusterError::new(
                FailureKind::Invalid,
                "resolve",
                key,
                "not a kind the operator owns",
            )
        })?;
        Ok(match &key.namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &ar),
            None => Api::all_with(self.client.clone(), &ar),
        })
    }

    fn tenants(&self) -> Api<Tenant> {
        Api::all(self.client.clone())
    }

    /// Merge patch of the finalizer list, guarded by resourceVersion (409 if stale).
    async fn set_finalizers(&self, tenant: &Tenant, finalizers: Vec<String>) -> ClusterResult<()> {
        let patch = json!({
            "metadata": {
                "finalizers": finalizers,
                "resourceVersion": tenant.metadata.resource_version,
            }
        });
        let name = tenant.name();
        let _writing = self.echoes.writing(TENANT_KIND, None, name);
        match self
            .tenants()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(t) => {
                self.echoes.wrote(TENANT_KIND, &t.metadata);
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(classify("patch finalizers of", format!("Tenant/{name}"), e)),
        }
    }
}

impl Cluster for KubeCluster {
    async fn apply(&self, key: &ObjectKey, manifest: &Value) -> ClusterResult<()> {
        let api = self.dynamic(key)?;
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let owned = OwnedKind::from_name(&key.kind);
        let _writing = owned.map(|k| {
            self.echoes
                .writing(k.name(), key.namespace.as_deref(), &key.name)
        });
        let written = api
            .patch(&key.name, &params, &Patch::Apply(manifest))
            .await
            .map_err(|e| classify("apply", key, e))?;
        if let Some(kind) = owned {
            self.wrote(kind.name(), &written.metadata).await;
        }
        Ok(())
    }

    async fn delete(&self, key: &ObjectKey) -> ClusterResult<()> {
        let api = self.dynamic(key)?;
        match api.delete(&key.name, &DeleteParams::background()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(classify("delete", key, e)),
        }
    }

    async fn delete_orphaning(&self, key: &ObjectKey) -> ClusterResult<()> {
        let api = self.dynamic(key)?;
        let params = DeleteParams {
            propagation_policy: Some(kube::api::PropagationPolicy::Orphan),
            ..Default::default()
        };
        match api.delete(&key.name, &params).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(classify("delete (orphaning dependents)", key, e)),
        }
    }

    async fn get_tenant(&self, name: &str) -> ClusterResult<Option<Tenant>> {
        self.tenants()
            .get_opt(name)
            .await
            .map_err(|e| classify("get", format!("Tenant/{name}"), e))
    }

    async fn claim_storage(&self, namespace: &str, name: &str) -> ClusterResult<Option<String>> {
        let api: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), namespace);
        let claim = api.get_opt(name).await.map_err(|e| {
            classify(
                "get",
                format!("PersistentVolumeClaim/{namespace}/{name}"),
                e,
            )
        })?;
        Ok(claim.map(|c| {
            c.spec
                .and_then(|s| s.resources)
                .and_then(|r| r.requests)
                .and_then(|mut r| r.remove("storage"))
                .map(|q| q.0)
                .unwrap_or_default()
        }))
    }

    async fn resize_claim(&self, namespace: &str, name: &str, storage: &str) -> ClusterResult<()> {
        let api: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), namespace);
        let patch = json!({"spec": {"resources": {"requests": {"storage": storage}}}});
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..Default::default()
        };
        api.patch(name, &params, &Patch::Merge(&patch))
            .await
            .map(|_| ())
            .map_err(|e| {
                classify(
                    "resize",
                    format!("PersistentVolumeClaim/{namespace}/{name}"),
                    e,
                )
            })
    }

    async fn list_owned(&self, tenant: &str) -> ClusterResult<Vec<Observed>> {
        if let Some(index) = &self.index
            && index.wait_synced(super::index::SYNC_WAIT).await
        {
            return Ok(index.get(tenant).await);
        }
        let lp = ListParams::default().labels(&format!("{TENANT_LABEL}={tenant}"));
        let mut out = Vec::new();
        for owned in OwnedKind::ALL {
            let (kind, ar) = (owned.name(), owned_api_resource(*owned));
            let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &ar);
            let list = api
                .list_metadata(&lp)
                .await
                .map_err(|e| classify("list", format!("{kind} of tenant {tenant}"), e))?;
            out.extend(
                list.items
                    .iter()
                    .filter_map(|o| observe(kind, &o.metadata).map(|(_, obs)| obs)),
            );
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn readiness(&self, key: &ObjectKey) -> ClusterResult<Option<Readiness>> {
        let ns = key.namespace.as_deref().unwrap_or_default();
        let workload = matches!(key.kind.as_str(), "StatefulSet" | "Deployment");
        let Some(resource) = api_resource(&key.kind).filter(|_| workload) else {
            return Err(ClusterError::new(
                FailureKind::Invalid,
                "read readiness of",
                key,
                "not a workload",
            ));
        };
        // Unchanged since it was last read (the watch shows the same version): no GET.
        if let Some(index) = &self.index
            && let Some(known) = index.readiness(key).await
        {
            return Ok(Some(known));
        }
        let got = Api::<DynamicObject>::namespaced_with(self.client.clone(), ns, &resource)
            .get_opt(&key.name)
            .await
            .map_err(|e| classify("get", key, e))?;
        // `spec.replicas` defaults to 1, an absent `status.readyReplicas` means none.
        let count = |o: &DynamicObject, pointer: &str, default: i32| {
            o.data
                .pointer(pointer)
                .and_then(Value::as_i64)
                .and_then(|n| i32::try_from(n).ok())
                .unwrap_or(default)
        };
        let Some(o) = got else {
            return Ok(None);
        };
        let readiness = Readiness {
            desired: count(&o, "/spec/replicas", 1),
            ready: count(&o, "/status/readyReplicas", 0),
        };
        if let (Some(index), Some(version)) = (&self.index, o.metadata.resource_version.as_deref())
        {
            index.record_readiness(key, version, readiness).await;
        }
        Ok(Some(readiness))
    }

    async fn patch_status(&self, tenant: &str, status: &TenantStatus) -> ClusterResult<()> {
        let body = json!({
            "apiVersion": API_VERSION,
            "kind": "Tenant",
            "status": status,
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        // Its watch event triggers nothing: the controller ignores status-only changes
        // (`mappers::tenant_change`).
        self.tenants()
            .patch_status(tenant, &params, &Patch::Apply(&body))
            .await
            .map(|_| ())
            .map_err(|e| classify("patch status of", format!("Tenant/{tenant}"), e))
    }

    async fn patch_channel_status(
        &self,
        channel: &str,
        status: &ChannelStatus,
    ) -> ClusterResult<()> {
        let body = json!({
            "apiVersion": API_VERSION,
            "kind": "Channel",
            "status": status,
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        Api::<Channel>::all(self.client.clone())
            .patch_status(channel, &params, &Patch::Apply(&body))
            .await
            .map(|_| ())
            .map_err(|e| classify("patch status of", format!("Channel/{channel}"), e))
    }

    async fn add_finalizer(&self, tenant: &Tenant) -> ClusterResult<()> {
        let mut f = tenant.metadata.finalizers.clone().unwrap_or_default();
        if f.iter().any(|x| x == FINALIZER) {
            return Ok(());
        }
        f.push(FINALIZER.to_string());
        self.set_finalizers(tenant, f).await
    }

    async fn remove_finalizer(&self, tenant: &Tenant) -> ClusterResult<()> {
        let f: Vec<String> = tenant
            .metadata
            .finalizers
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter(|x| x != FINALIZER)
            .collect();
        self.set_finalizers(tenant, f).await
    }

    async fn delete_tenant(&self, name: &str) -> ClusterResult<()> {
        match self
            .tenants()
            .delete(name, &DeleteParams::background())
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(classify("delete", format!("Tenant/{name}"), e)),
        }
    }

    async fn publish_event(&self, tenant: &Tenant, event: &EventInfo) -> ClusterResult<()> {
        self.publish_on(
            tenant.object_ref(&()),
            &format!("Tenant/{}", tenant.name()),
            event,
        )
        .await
    }
    async fn publish_channel_event(
        &self,
        channel: &Channel,
        event: &EventInfo,
    ) -> ClusterResult<()> {
        self.publish_on(
            channel.object_ref(&()),
            &format!("Channel/{}", channel.name()),
            event,
        )
        .await
    }
    async fn get_secret(&self, namespace: &str, name: &str) -> ClusterResult<Option<SecretData>> {
        let what = format!("Secret/{namespace}/{name}");
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let Some(secret) = api
            .get_opt(name)
            .await
            .map_err(|e| classify("get", &what, e))?
        else {
            return Ok(None);
        };
        let mut out = SecretData::new();
        for (k, v) in secret.data.unwrap_or_default() {
            let text = String::from_utf8(v.0).map_err(|_| {
                ClusterError::new(
                    FailureKind::Invalid,
                    "read",
                    &what,
                    format!("key {k:?} is not UTF-8 text"),
                )
            })?;
            out.insert(k, text);
        }
        Ok(Some(out))
    }

    async fn secret_version(&self, namespace: &str, name: &str) -> Option<Option<String>> {
        match &self.index {
            Some(index) => index.secret_version(namespace, name).await,
            None => None,
        }
    }

    async fn create_secret(&self, key: &ObjectKey, manifest: &Value) -> ClusterResult<()> {
        let ns = key.namespace.as_deref().unwrap_or_default();
        let secret: Secret = serde_json::from_value(manifest.clone())
            .map_err(|e| ClusterError::new(FailureKind::Invalid, "create", key, e.to_string()))?;
        let api: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        let pp = PostParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..Default::default()
        };
        let _writing = self.echoes.writing(SECRET_KIND, Some(ns), &key.name);
        let created = api
            .create(&pp, &secret)
            .await
            .map_err(|e| classify("create", key, e))?;
        self.wrote(SECRET_KIND, &created.metadata).await;
        Ok(())
    }

    async fn patch_secret_data(&self, key: &ObjectKey, data: &SecretData) -> ClusterResult<()> {
        use base64::Engine as _;
        let ns = key.namespace.as_deref().unwrap_or_default();
        let encoded: serde_json::Map<String, Value> = data
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    Value::String(base64::engine::general_purpose::STANDARD.encode(v)),
                )
            })
            .collect();
        let api: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..Default::default()
        };
        let _writing = self.echoes.writing(SECRET_KIND, Some(ns), &key.name);
        let patched = api
            .patch(
                &key.name,
                &params,
                &Patch::Merge(json!({ "data": encoded })),
            )
            .await
            .map_err(|e| classify("patch", key, e))?;
        self.wrote(SECRET_KIND, &patched.metadata).await;
        Ok(())
    }
}
