//! Schema helpers that keep generated CRDs structural.

use schemars::{Schema, SchemaGenerator, json_schema};

/// A free-form object: the API server keeps unknown fields instead of pruning them.
pub fn preserve_unknown_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}
