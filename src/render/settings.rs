//! ConfigMap `silo-settings`: the tenant's effective settings in one place.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;

use super::Context;
use super::meta::namespaced;

pub const SETTINGS_CONFIG_MAP: &str = "silo-settings";

pub fn settings_config_map(cx: &Context<'_>) -> ConfigMap {
    // BTreeMap keys keep the JSON stable, so an unchanged tenant renders byte-identical data.
    let json = serde_json::to_string_pretty(&cx.settings).unwrap_or_else(|_| "{}".to_string());
    ConfigMap {
        metadata: namespaced(cx.tenant, &cx.namespace, SETTINGS_CONFIG_MAP, &[]),
        data: Some(BTreeMap::from([
            ("settings.json".to_string(), json),
            ("tenant".to_string(), cx.tenant.name().to_string()),
            ("path".to_string(), cx.path.join("/")),
        ])),
        ..Default::default()
    }
}
