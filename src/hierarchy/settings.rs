//! Effective settings: the parent's effective settings overlaid with the tenant's own.

use std::collections::BTreeMap;

use serde_json::Value;

use super::tree::{NodeId, TenantTree};

/// Deep merge: objects merge key by key, anything else (scalars, lists) is replaced.
pub fn overlay(base: &mut BTreeMap<String, Value>, over: &BTreeMap<String, Value>) {
    for (k, v) in over {
        match (base.get_mut(k), v) {
            (Some(Value::Object(b)), Value::Object(o)) => merge_objects(b, o),
            _ => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
}

fn merge_objects(base: &mut serde_json::Map<String, Value>, over: &serde_json::Map<String, Value>) {
    for (k, v) in over {
        match (base.get_mut(k), v) {
            (Some(Value::Object(b)), Value::Object(o)) => merge_objects(b, o),
            _ => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
}

impl TenantTree {
    /// Settings from the root down to the tenant, each level overriding the one above.
    pub fn effective_settings(&self, id: NodeId) -> BTreeMap<String, Value> {
        let mut chain: Vec<NodeId> = self.ancestors(id).collect();
        chain.reverse();
        chain.push(id);
        let mut out = BTreeMap::new();
        for a in chain {
            overlay(&mut out, &self.tenant(a).spec.settings);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> BTreeMap<String, Value> {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn nested_objects_merge_and_scalars_replace() {
        let mut base = map(
            json!({"branding": {"color": "blue", "logo": "a.png"}, "retention": 30, "tags": ["a"]}),
        );
        overlay(
            &mut base,
            &map(json!({"branding": {"color": "red"}, "tags": ["b"]})),
        );
        assert_eq!(
            json!(base),
            json!({"branding": {"color": "red", "logo": "a.png"}, "retention": 30, "tags": ["b"]})
        );
    }
}
