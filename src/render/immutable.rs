//! What the API server refuses to change in place, for every kind Silo renders or writes,
//! and what Silo does about each field instead. This is the ONE list: the operator's planning
//! (an object whose immutable part changed gets a new identity), the admission webhook's
//! refusals and the in-memory cluster's 422 answers all read it.
//!
//! Source: Kubernetes 1.28 validation (`pkg/apis/*/validation`, `pkg/registry/*/strategy.go`),
//! checked against the envtest API server by `tests/envtest_immutable.rs`.
//!
//! | kind | field | server says | Silo |
//! | --- | --- | --- | --- |
//! | RoleBinding | `roleRef` | `cannot change roleRef` | the role is part of a member binding's name: a new binding is created, then the old one deleted ([`Remedy::NewName`]) |
//! | StatefulSet | `spec.volumeClaimTemplates` | `updates to statefulset spec for fields other than …` | growth: the claims are expanded, then the StatefulSet is deleted orphaning its pods and created again, which adopts them ([`Remedy::RecreateOrphaning`]); shrinking is refused at admission |
//! | StatefulSet | `spec.selector`, `spec.serviceName`, `spec.podManagementPolicy` | same | deleted (pods go, claims stay) and created again ([`Remedy::Recreate`]) |
//! | Deployment | `spec.selector` | `field is immutable` | recreated (the broker is stateless) |
//! | Service | `spec.clusterIP` (and `clusterIPs`/`ipFamilies[0]`, not rendered) | `spec.clusterIPs[0]: … may not change once set` | recreated |
//! | ResourceQuota | `spec.scopes`, `spec.scopeSelector` (not rendered) | `field is immutable` | recreated |
//! | ConfigMap, Secret | `data`, `binaryData` once `immutable: true` (never set by Silo); Secret `type` | `field is immutable…` | recreated (ConfigMap); Secrets are created once and only their `data` is patched |
//! | Tenant | `spec.parent` | CEL rule of the CRD | refused at admission ([`Remedy::Refuse`]) |
//! | Namespace, LimitRange, NetworkPolicy, Role, ServiceAccount | — | — | every field Silo renders changes in place |
//!
//! Tenant changes that would need one of these and cannot be done without losing data are
//! refused at admission: [`refused_tenant_changes`].

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::SiloedPostgres;
use crate::types::{Isolation, Tenant};

/// What Silo does when the value of an immutable field must change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Remedy {
    /// The value is part of the object's name, so a new value renders a new object: it is
    /// created first, then the old one is deleted (as no longer desired). If an object of the
    /// same name still changes (an older operator's name), it is recreated.
    NewName,
    /// Delete (background propagation: dependents such as pods go), then create.
    Recreate,
    /// Delete with `propagationPolicy: Orphan` (pods and volume claims stay and are adopted by
    /// the new object), then create.
    RecreateOrphaning,
    /// Never changed: the change is refused at admission.
    Refuse,
}

/// One field the API server will not change in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImmutableField {
    pub kind: &'static str,
    /// JSON pointer into the manifest, e.g. `/roleRef`.
    pub pointer: &'static str,
    /// The field as the API server names it in its answer.
    pub field: &'static str,
    /// A fragment of the API server's 422 message for a change of this field.
    pub server_message: &'static str,
    /// Immutable only when this boolean field of the stored object is `true`
    /// (ConfigMap/Secret `immutable`).
    pub only_if_true: Option<&'static str>,
    /// The API server keeps the stored value when an update omits the field (allocated
    /// values such as a Service's `clusterIP`).
    pub kept_when_omitted: bool,
    /// Whether Silo sets this field at all (the others are listed so the list is complete).
    pub rendered: bool,
    pub remedy: Remedy,
}

const STS_MESSAGE: &str = "updates to statefulset spec for fields other than";
const IMMUTABLE: &str = "field is immutable";

const fn field(
    kind: &'static str,
    pointer: &'static str,
    field: &'static str,
    server_message: &'static str,
    rendered: bool,
    remedy: Remedy,
) -> ImmutableField {
    ImmutableField {
        kind,
        pointer,
        field,
        server_message,
        only_if_true: None,
        kept_when_omitted: false,
        rendered,
        remedy,
    }
}

/// Every field of a kind Silo renders (plus its own Tenant) that cannot change in place.
pub const IMMUTABLE_FIELDS: &[ImmutableField] = &[
    field(
        "RoleBinding",
        "/roleRef",
        "roleRef",
        "cannot change roleRef",
        true,
        Remedy::NewName,
    ),
    field(
        "StatefulSet",
        "/spec/volumeClaimTemplates",
        "spec",
        STS_MESSAGE,
        true,
        Remedy::RecreateOrphaning,
    ),
    field(
        "StatefulSet",
        "/spec/selector",
        "spec",
        STS_MESSAGE,
        true,
        Remedy::Recreate,
    ),
    field(
        "StatefulSet",
        "/spec/serviceName",
        "spec",
        STS_MESSAGE,
        true,
        Remedy::Recreate,
    ),
    field(
        "StatefulSet",
        "/spec/podManagementPolicy",
        "spec",
        STS_MESSAGE,
        false,
        Remedy::Recreate,
    ),
    field(
        "Deployment",
        "/spec/selector",
        "spec.selector",
        IMMUTABLE,
        true,
        Remedy::Recreate,
    ),
    ImmutableField {
        kept_when_omitted: true,
        ..field(
            "Service",
            "/spec/clusterIP",
            "spec.clusterIPs[0]",
            "may not change once set",
            true,
            Remedy::Recreate,
        )
    },
    field(
        "ResourceQuota",
        "/spec/scopes",
        "spec.scopes",
        IMMUTABLE,
        false,
        Remedy::Recreate,
    ),
    field(
        "ResourceQuota",
        "/spec/scopeSelector",
        "spec.scopeSelector",
        IMMUTABLE,
        false,
        Remedy::Recreate,
    ),
    ImmutableField {
        only_if_true: Some("/immutable"),
        ..field(
            "ConfigMap",
            "/data",
            "data",
            IMMUTABLE,
            false,
            Remedy::Recreate,
        )
    },
    ImmutableField {
        only_if_true: Some("/immutable"),
        ..field(
            "ConfigMap",
            "/binaryData",
            "binaryData",
            IMMUTABLE,
            false,
            Remedy::Recreate,
        )
    },
    ImmutableField {
        only_if_true: Some("/immutable"),
        ..field(
            "ConfigMap",
            "/immutable",
            "immutable",
            IMMUTABLE,
            false,
            Remedy::Recreate,
        )
    },
    field("Secret", "/type", "type", IMMUTABLE, true, Remedy::Refuse),
    ImmutableField {
        only_if_true: Some("/immutable"),
        ..field("Secret", "/data", "data", IMMUTABLE, false, Remedy::Refuse)
    },
    field(
        "Tenant",
        "/spec/parent",
        "spec.parent",
        "spec.parent is immutable",
        true,
        Remedy::Refuse,
    ),
];

/// Rendered kinds every field of which (as Silo renders them) changes in place.
pub const MUTABLE_KINDS: &[&str] = &[
    "Namespace",
    "LimitRange",
    "NetworkPolicy",
    "Role",
    "ServiceAccount",
];

/// The immutable fields of `kind`.
pub fn fields_of(kind: &str) -> impl Iterator<Item = &'static ImmutableField> + '_ {
    IMMUTABLE_FIELDS.iter().filter(move |f| f.kind == kind)
}

fn short_hash(v: Option<&Value>) -> String {
    let bytes = serde_json::to_vec(v.unwrap_or(&Value::Null)).unwrap_or_default();
    hex::encode(&Sha256::digest(&bytes)[..4])
}

/// Identity of a manifest: `pointer=hash` of every immutable field of its kind, joined with
/// `,` (None for kinds without immutable fields). Two manifests of the same object with
/// different identities cannot be applied one over the other.
pub fn identity(kind: &str, manifest: &Value) -> Option<String> {
    let parts: Vec<String> = fields_of(kind)
        .filter(|f| f.only_if_true.is_none())
        .map(|f| format!("{}={}", f.pointer, short_hash(manifest.pointer(f.pointer))))
        .collect();
    (!parts.is_empty()).then(|| parts.join(","))
}

/// The fields whose hashes differ between two identities (fields known to only one side,
/// e.g. after the list grew, do not count).
pub fn changed_fields(kind: &str, old: &str, new: &str) -> Vec<&'static ImmutableField> {
    let parse = |s: &str| -> Vec<(String, String)> {
        s.split(',')
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let (old, new) = (parse(old), parse(new));
    fields_of(kind)
        .filter(|f| {
            let o = old.iter().find(|(k, _)| k == f.pointer);
            let n = new.iter().find(|(k, _)| k == f.pointer);
            matches!((o, n), (Some(a), Some(b)) if a.1 != b.1)
        })
        .collect()
}

/// The fields of `kind` an update from `stored` to `updated` (both whole objects) would
/// change although the API server refuses it.
pub fn violations(kind: &str, stored: &Value, updated: &Value) -> Vec<&'static ImmutableField> {
    fields_of(kind)
        .filter(|f| {
            if let Some(flag) = f.only_if_true
                && stored.pointer(flag) != Some(&Value::Bool(true))
            {
                return false;
            }
            let old = stored.pointer(f.pointer);
            let new = updated.pointer(f.pointer);
            if new.is_none() && f.kept_when_omitted {
                return false;
            }
            old != new
        })
        .collect()
}

/// Whether an API server message says an update touched one of `kind`'s immutable fields.
pub fn is_immutable_refusal(kind: &str, message: &str) -> bool {
    fields_of(kind).any(|f| message.contains(f.server_message))
}

/// The Remedy for a set of changed fields: the strongest one (a plain recreate wins over an
/// orphaning one, since pods that the new object could not adopt must not stay behind).
pub fn remedy_for(fields: &[&ImmutableField]) -> Remedy {
    if fields.iter().any(|f| f.remedy == Remedy::Refuse) {
        Remedy::Refuse
    } else if fields
        .iter()
        .any(|f| matches!(f.remedy, Remedy::Recreate | Remedy::NewName))
    {
        Remedy::Recreate
    } else {
        Remedy::RecreateOrphaning
    }
}

/// Tenant changes that Kubernetes cannot apply in place without losing data, as
/// `(field, reason)`: refused at admission (SPEC "Admission").
///
/// - `spec.database.storage` of a tenant that stays Siloed may not shrink: a
///   PersistentVolumeClaim can only grow (an absent value stands for the platform's
///   `siloed.postgres.storage`). Growth is done by the operator (claims expanded,
///   StatefulSet recreated orphaning its pod), where the StorageClass allows expansion.
/// - `spec.database.version` of a tenant that stays Siloed may not change its PostgreSQL major
///   version (the image tag's leading number; an absent value stands for the tag of the
///   platform's `siloed.postgres.image`): a server does not start on the data directory of
///   another major version ("database files are incompatible with server"), and a new volume
///   would lose the database. Minor updates (`16.2` → `16.4`) are allowed; tags without a
///   leading number (`latest`) may not change at all, since their major version is unknown.
///
/// (`spec.parent` is refused by the webhook's tree checks and the CRD rule.)
pub fn refused_tenant_changes(
    old: &Tenant,
    new: &Tenant,
    postgres: &SiloedPostgres,
) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let default_storage = &postgres.storage;
    if old.spec.isolation == Isolation::Siloed && new.spec.isolation == Isolation::Siloed {
        let storage = |t: &Tenant| {
            t.spec
                .database
                .as_ref()
                .and_then(|d| d.storage.clone())
                .unwrap_or_else(|| default_storage.clone())
        };
        let (was, will) = (storage(old), storage(new));
        if let (Ok(a), Ok(b)) = (was.millis(), will.millis())
            && b < a
        {
            out.push((
                "spec.database.storage",
                format!(
                    "cannot shrink the database volume from {was} to {will}: a PersistentVolumeClaim can only grow, and replacing it would lose the database; keep {was} or more (to move to a smaller volume, dump the database, switch the tenant to a new one and restore)"
                ),
            ));
        }
        let image = |t: &Tenant| {
            crate::render::database::image_for(
                &postgres.image,
                t.spec.database.as_ref().and_then(|d| d.version.as_deref()),
            )
        };
        let (was, will) = (image(old), image(new));
        let tag = |image: &str| image.rsplit_once(':').map_or("", |(_, t)| t).to_string();
        let (was_tag, will_tag) = (tag(&was), tag(&will));
        let same_major = match (major_version(&was_tag), major_version(&will_tag)) {
            (Some(a), Some(b)) => a == b,
            _ => was == will,
        };
        if !same_major {
            out.push((
                "spec.database.version",
                format!(
                    "cannot change the PostgreSQL major version in place ({was} to {will}): the server does not start on a data directory of another major version, and a new volume would lose the database; keep version {was_tag} (to upgrade, dump the database, create a tenant with the new version and restore into it)"
                ),
            ));
        }
    }
    out
}

/// The major version a PostgreSQL image tag names: its leading number (`16`, `16.4`,
/// `16-alpine` → 16); None for tags like `latest`.
fn major_version(tag: &str) -> Option<u32> {
    let digits: String = tag.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::OwnedKind;
    use crate::types::tenant::DatabaseSpec;
    use crate::types::{QuantityValue, TenantSpec};
    use serde_json::json;

    #[test]
    fn every_owned_kind_is_either_listed_or_known_to_be_mutable() {
        for kind in OwnedKind::ALL.iter().map(|k| k.name()) {
            let listed = fields_of(kind).next().is_some();
            assert!(
                listed != MUTABLE_KINDS.contains(&kind),
                "{kind}: listed {listed}, in MUTABLE_KINDS {}",
                MUTABLE_KINDS.contains(&kind)
            );
        }
    }

    #[test]
    fn identity_changes_only_with_immutable_fields_and_names_them() {
        let rb = |role: &str, subject: &str| json!({"kind": "RoleBinding", "roleRef": {"name": role}, "subjects": [{"name": subject}]});
        let a = identity("RoleBinding", &rb("silo-admin", "carol")).unwrap();
        assert_eq!(
            a,
            identity("RoleBinding", &rb("silo-admin", "dave")).unwrap()
        );
        let b = identity("RoleBinding", &rb("silo-viewer", "carol")).unwrap();
        assert_ne!(a, b);
        let changed = changed_fields("RoleBinding", &a, &b);
        assert_eq!(changed.len(), 1);
        assert_eq!(changed[0].field, "roleRef");
        assert_eq!(identity("ConfigMap", &json!({"data": {}})), None);
        // A field unknown to the older identity does not count as a change.
        assert!(changed_fields("RoleBinding", "", &b).is_empty());
    }

    #[test]
    fn violations_follow_the_server_rules() {
        let sts = |size: &str, replicas: i64| {
            json!({"spec": {"replicas": replicas, "selector": {"a": "b"},
              "volumeClaimTemplates": [{"spec": {"resources": {"requests": {"storage": size}}}}]}})
        };
        assert!(violations("StatefulSet", &sts("1Gi", 1), &sts("1Gi", 0)).is_empty());
        let v = violations("StatefulSet", &sts("1Gi", 1), &sts("2Gi", 1));
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].pointer, "/spec/volumeClaimTemplates");
        // An allocated clusterIP stays when the update omits it; a different one is refused.
        let svc = |ip: Option<&str>| match ip {
            Some(ip) => json!({"spec": {"clusterIP": ip}}),
            None => json!({"spec": {}}),
        };
        assert!(violations("Service", &svc(Some("10.96.0.7")), &svc(None)).is_empty());
        assert_eq!(
            violations("Service", &svc(Some("10.96.0.7")), &svc(Some("None"))).len(),
            1
        );
        // ConfigMap data is immutable only once `immutable: true`.
        let cm = |imm: bool, v: &str| json!({"immutable": imm, "data": {"k": v}});
        assert!(violations("ConfigMap", &cm(false, "a"), &cm(false, "b")).is_empty());
        assert_eq!(
            violations("ConfigMap", &cm(true, "a"), &cm(true, "b"))[0].field,
            "data"
        );
        assert!(is_immutable_refusal(
            "RoleBinding",
            "RoleBinding.rbac.authorization.k8s.io \"x\" is invalid: roleRef: Invalid value: …: cannot change roleRef"
        ));
        assert!(!is_immutable_refusal(
            "RoleBinding",
            "subjects[0].name: Required value"
        ));
    }

    #[test]
    fn remedies_prefer_a_clean_recreate_over_orphaning() {
        let vct = &IMMUTABLE_FIELDS[1];
        let sel = &IMMUTABLE_FIELDS[2];
        assert_eq!(vct.pointer, "/spec/volumeClaimTemplates");
        assert_eq!(remedy_for(&[vct]), Remedy::RecreateOrphaning);
        assert_eq!(remedy_for(&[vct, sel]), Remedy::Recreate);
    }

    fn siloed(storage: Option<&str>) -> Tenant {
        Tenant::new(
            "acme",
            TenantSpec {
                database: storage.map(|s| DatabaseSpec {
                    version: None,
                    storage: Some(QuantityValue::new(s)),
                }),
                ..Default::default()
            },
        )
    }

    #[test]
    fn shrinking_a_siloed_database_is_refused_and_growing_is_not() {
        let d = SiloedPostgres::default();
        assert_eq!(d.storage, QuantityValue::new("1Gi"));
        let r = refused_tenant_changes(&siloed(Some("10Gi")), &siloed(Some("5Gi")), &d);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].0, "spec.database.storage");
        assert!(
            r[0].1
                .starts_with("cannot shrink the database volume from 10Gi to 5Gi"),
            "{}",
            r[0].1
        );
        // Positive controls: growth, the same size in other units, no change.
        assert!(refused_tenant_changes(&siloed(Some("5Gi")), &siloed(Some("10Gi")), &d).is_empty());
        assert!(
            refused_tenant_changes(&siloed(Some("1Gi")), &siloed(Some("1024Mi")), &d).is_empty()
        );
        assert!(refused_tenant_changes(&siloed(None), &siloed(Some("1Gi")), &d).is_empty());
        // An absent value is the platform default.
        let r = refused_tenant_changes(&siloed(None), &siloed(Some("500Mi")), &d);
        assert!(r[0].1.contains("from 1Gi to 500Mi"), "{}", r[0].1);
        let r = refused_tenant_changes(&siloed(Some("2Gi")), &siloed(None), &d);
        assert!(r[0].1.contains("from 2Gi to 1Gi"), "{}", r[0].1);
        // A Shared tenant has no volume; leaving or entering Siloed starts a fresh one.
        let mut shared = siloed(Some("10Gi"));
        shared.spec.isolation = Isolation::Shared;
        assert!(refused_tenant_changes(&shared, &siloed(Some("1Gi")), &d).is_empty());
        assert!(refused_tenant_changes(&siloed(Some("10Gi")), &shared, &d).is_empty());
    }

    fn versioned(version: Option<&str>) -> Tenant {
        Tenant::new(
            "acme",
            TenantSpec {
                database: Some(DatabaseSpec {
                    version: version.map(str::to_string),
                    storage: None,
                }),
                ..Default::default()
            },
        )
    }

    #[test]
    fn a_major_version_change_of_a_siloed_database_is_refused_and_a_minor_one_is_not() {
        let d = SiloedPostgres::default();
        assert_eq!(d.image, "postgres:16");
        let r = refused_tenant_changes(&versioned(Some("16")), &versioned(Some("17")), &d);
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0].0, "spec.database.version");
        assert!(
            r[0].1.starts_with(
                "cannot change the PostgreSQL major version in place (postgres:16 to postgres:17)"
            ),
            "{}",
            r[0].1
        );
        assert!(r[0].1.contains("keep version 16"), "{}", r[0].1);
        // An absent version is the platform image's tag; a downgrade is refused too.
        let r = refused_tenant_changes(&versioned(None), &versioned(Some("15")), &d);
        assert!(
            r[0].1.contains("(postgres:16 to postgres:15)"),
            "{}",
            r[0].1
        );
        let r = refused_tenant_changes(&versioned(Some("15")), &versioned(None), &d);
        assert!(
            r[0].1.contains("(postgres:15 to postgres:16)"),
            "{}",
            r[0].1
        );
        // A tag without a number: any change is refused.
        let r = refused_tenant_changes(&versioned(Some("latest")), &versioned(Some("16")), &d);
        assert_eq!(r.len(), 1, "{r:?}");
        // Positive controls: the same major version, the default spelled out, variants.
        for (a, b) in [
            (Some("16"), Some("16.4")),
            (None, Some("16")),
            (Some("16.2"), Some("16.4-alpine")),
            (Some("latest"), Some("latest")),
        ] {
            assert!(
                refused_tenant_changes(&versioned(a), &versioned(b), &d).is_empty(),
                "{a:?} -> {b:?}"
            );
        }
        // Leaving or entering Siloed starts a fresh database: no refusal.
        let mut shared = versioned(Some("17"));
        shared.spec.isolation = Isolation::Shared;
        assert!(refused_tenant_changes(&versioned(Some("16")), &shared, &d).is_empty());
        assert!(refused_tenant_changes(&shared, &versioned(Some("15")), &d).is_empty());
    }
}
