//! Desired objects as manifests with their hash, and the diff against what is observed.

use std::collections::{HashMap, HashSet};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::render::DesiredObject;
use crate::render::immutable::{self, ImmutableField};

use crate::operator::cluster::{HASH_ANNOTATION, IDENTITY_ANNOTATION, ObjectKey, Observed};

/// A rendered object ready to apply: its key, its hash and the manifest (with the hash
/// annotation set).
#[derive(Clone, Debug)]
pub struct Desired {
    pub key: ObjectKey,
    pub hash: String,
    /// Hashes of the fields the API server will not change in place (None: the kind has
    /// none), also in the `silo.dev/identity` annotation.
    pub identity: Option<String>,
    pub manifest: Value,
}

/// Hash of a manifest: SHA-256 of its canonical JSON (serde_json maps are sorted).
pub fn manifest_hash(manifest: &Value) -> String {
    let bytes = serde_json::to_vec(manifest).unwrap_or_default();
    hex::encode(&Sha256::digest(&bytes)[..16])
}

pub fn prepare(obj: &DesiredObject) -> Desired {
    let key = ObjectKey::new(obj.kind(), obj.namespace(), obj.name());
    let mut manifest = obj.to_json();
    let hash = manifest_hash(&manifest);
    let identity = immutable::identity(obj.kind(), &manifest);
    if let Some(meta) = manifest.get_mut("metadata").and_then(Value::as_object_mut) {
        let ann = meta
            .entry("annotations")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(ann) = ann.as_object_mut() {
            ann.insert(HASH_ANNOTATION.to_string(), Value::String(hash.clone()));
            if let Some(id) = &identity {
                ann.insert(IDENTITY_ANNOTATION.to_string(), Value::String(id.clone()));
            }
        }
    }
    Desired {
        key,
        hash,
        identity,
        manifest,
    }
}

/// Why an object is (re)applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApplyReason {
    Missing,
    Changed,
    /// Edited by someone else since the operator's last apply.
    Drift,
}

/// An object whose desired state changes a field the API server will not change in place:
/// it is deleted and created again (see [`immutable::remedy_for`]).
#[derive(Debug)]
pub struct Replace<'a> {
    pub desired: &'a Desired,
    pub fields: Vec<&'static ImmutableField>,
}

/// What to do to reach the desired state.
#[derive(Debug, Default)]
pub struct Plan<'a> {
    pub apply: Vec<(&'a Desired, ApplyReason)>,
    pub replace: Vec<Replace<'a>>,
    pub delete: Vec<ObjectKey>,
}

/// Compare desired with observed. `acknowledged` holds, per object, the foreign-edit time
/// already answered by a re-apply (an edit to a field the operator does not own survives
/// the re-apply; it must not cause a write on every reconcile).
pub fn plan<'a>(
    desired: &'a [Desired],
    observed: &[Observed],
    acknowledged: &HashMap<ObjectKey, String>,
) -> Plan<'a> {
    let by_key: HashMap<&ObjectKey, &Observed> = observed.iter().map(|o| (&o.key, o)).collect();
    let mut out = Plan::default();
    for d in desired {
        match by_key.get(&d.key) {
            None => out.apply.push((d, ApplyReason::Missing)),
            Some(o) if o.hash.as_deref() != Some(d.hash.as_str()) => {
                let fields = match (&o.identity, &d.identity) {
                    (Some(old), Some(new)) if old != new => {
                        immutable::changed_fields(&d.key.kind, old, new)
                    }
                    _ => Vec::new(),
                };
                if fields.is_empty() {
                    out.apply.push((d, ApplyReason::Changed))
                } else {
                    out.replace.push(Replace { desired: d, fields })
                }
            }
            Some(o) => {
                if let Some(t) = &o.foreign_edit
                    && acknowledged.get(&d.key) != Some(t)
                {
                    out.apply.push((d, ApplyReason::Drift));
                }
            }
        }
    }
    let wanted: HashSet<&ObjectKey> = desired.iter().map(|d| &d.key).collect();
    let mut stale: Vec<ObjectKey> = observed
        .iter()
        .filter(|o| !wanted.contains(&o.key))
        .map(|o| o.key.clone())
        .collect();
    stale.sort();
    out.delete = stale;
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn d(kind: &str, name: &str, body: Value) -> Desired {
        let manifest = json!({"kind": kind, "metadata": {"name": name}, "data": body});
        let hash = manifest_hash(&manifest);
        Desired {
            key: ObjectKey::new(kind, Some("ns"), name),
            hash,
            identity: None,
            manifest,
        }
    }

    fn seen(x: &Desired, hash: Option<&str>, edit: Option<&str>) -> Observed {
        Observed {
            key: x.key.clone(),
            hash: hash.map(str::to_string),
            identity: None,
            foreign_edit: edit.map(str::to_string),
        }
    }

    #[test]
    fn hash_is_stable_and_sensitive() {
        let a = d("ConfigMap", "a", json!({"x": 1, "y": 2}));
        let b = d("ConfigMap", "a", json!({"y": 2, "x": 1}));
        let c = d("ConfigMap", "a", json!({"x": 1, "y": 3}));
        assert_eq!(a.hash, b.hash);
        assert_ne!(a.hash, c.hash);
    }

    #[test]
    fn plan_applies_missing_changed_and_drifted_and_deletes_stale() {
        let a = d("ConfigMap", "a", json!(1));
        let b = d("ConfigMap", "b", json!(2));
        let c = d("ConfigMap", "c", json!(3));
        let same = d("ConfigMap", "same", json!(4));
        let stale = d("RoleBinding", "gone", json!(5));
        let desired = vec![a.clone(), b.clone(), c.clone(), same.clone()];
        let observed = vec![
            seen(&b, Some("old"), None),
            seen(&c, Some(&c.hash), Some("2026-01-01T00:00:00Z")),
            seen(&same, Some(&same.hash), None),
            seen(&stale, Some("x"), None),
        ];
        let p = plan(&desired, &observed, &HashMap::new());
        let applied: Vec<_> = p
            .apply
            .iter()
            .map(|(d, r)| (d.key.name.as_str(), *r))
            .collect();
        assert_eq!(
            applied,
            vec![
                ("a", ApplyReason::Missing),
                ("b", ApplyReason::Changed),
                ("c", ApplyReason::Drift)
            ]
        );
        assert_eq!(p.delete, vec![stale.key.clone()]);

        let ack = HashMap::from([(c.key.clone(), "2026-01-01T00:00:00Z".to_string())]);
        let p = plan(&desired, &observed, &ack);
        assert_eq!(
            p.apply.len(),
            2,
            "an acknowledged edit is not re-applied again"
        );
    }

    #[test]
    fn a_changed_immutable_field_is_a_replacement_and_an_unknown_identity_an_apply() {
        let sts = |size: &str, replicas: i64| {
            let manifest = json!({"kind": "StatefulSet", "metadata": {"name": "db"},
                "spec": {"replicas": replicas, "volumeClaimTemplates": [{"storage": size}]}});
            Desired {
                key: ObjectKey::new("StatefulSet", Some("ns"), "db"),
                hash: manifest_hash(&manifest),
                identity: immutable::identity("StatefulSet", &manifest),
                manifest,
            }
        };
        let old = sts("1Gi", 1);
        let seen_old = |identity: Option<String>| Observed {
            key: old.key.clone(),
            hash: Some(old.hash.clone()),
            identity,
            foreign_edit: None,
        };
        let observed = vec![seen_old(old.identity.clone())];
        // Scaling changes a mutable field: applied in place.
        let scaled = [sts("1Gi", 0)];
        let p = plan(&scaled, &observed, &HashMap::new());
        assert_eq!(p.apply.len(), 1);
        assert!(p.replace.is_empty());
        // A bigger volume changes volumeClaimTemplates: replaced, naming the field.
        let grown = [sts("2Gi", 1)];
        let p = plan(&grown, &observed, &HashMap::new());
        assert!(p.apply.is_empty());
        assert_eq!(p.replace.len(), 1);
        assert_eq!(p.replace[0].fields[0].pointer, "/spec/volumeClaimTemplates");
        // An object without the annotation (an older operator's) is applied; a refusal of
        // that apply is handled by the reconciler.
        let p = plan(&grown, &[seen_old(None)], &HashMap::new());
        assert_eq!(p.apply.len(), 1);
    }

    #[test]
    fn steady_state_plans_nothing() {
        let a = d("ConfigMap", "a", json!(1));
        let observed = vec![seen(&a, Some(&a.hash), None)];
        let p = plan(std::slice::from_ref(&a), &observed, &HashMap::new());
        assert!(p.apply.is_empty() && p.delete.is_empty());
    }
}
