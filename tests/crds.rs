//! The CRDs in `crds/` are exactly what `silo crds` prints, and they are structural
//! (a real API server rejects a schema that is not).

use serde_json::Value;

fn checked_in() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/crds/silo.yaml"))
        .expect("crds/silo.yaml exists")
}

#[test]
fn checked_in_crds_match_generated() {
    let generated = silo::types::crds_yaml().expect("renders");
    assert!(
        checked_in() == generated,
        "crds/silo.yaml is out of date: run `cargo run -- crds > crds/silo.yaml` and commit the result"
    );
}

#[test]
fn silo_crds_command_prints_the_same() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_silo"))
        .arg("crds")
        .output()
        .expect("runs");
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), checked_in());
}

/// Structural schema rules (apiextensions v1): every node specifies a type, except where
/// `x-kubernetes-int-or-string` or `x-kubernetes-preserve-unknown-fields` stands for it;
/// no anyOf/oneOf/allOf/not other than the int-or-string form; no `additionalProperties: false`
/// next to properties.
fn assert_structural(path: &str, s: &Value) {
    let obj = s
        .as_object()
        .unwrap_or_else(|| panic!("{path}: schema is not an object"));
    let int_or_string = obj.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    let preserve = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    assert!(
        obj.contains_key("type") || int_or_string || preserve,
        "{path}: no type"
    );
    for k in [
        "anyOf",
        "oneOf",
        "allOf",
        "not",
        "$ref",
        "definitions",
        "$defs",
    ] {
        if obj.contains_key(k) {
            assert!(
                int_or_string && k == "anyOf",
                "{path}: `{k}` makes the schema non-structural"
            );
        }
    }
    if obj.contains_key("properties") {
        assert!(
            !obj.contains_key("additionalProperties"),
            "{path}: properties and additionalProperties together"
        );
    }
    if let Some(Value::Object(props)) = obj.get("properties") {
        for (k, v) in props {
            assert_structural(&format!("{path}.{k}"), v);
        }
    }
    if let Some(items) = obj.get("items") {
        assert_structural(&format!("{path}[]"), items);
    }
    if let Some(ap @ Value::Object(_)) = obj.get("additionalProperties") {
        assert_structural(&format!("{path}{{}}"), ap);
    }
}

#[test]
fn crds_are_structural_cluster_scoped_with_status_and_columns() {
    for crd in silo::types::crds() {
        let v = serde_json::to_value(&crd).expect("json");
        let name = v["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert_eq!(v["spec"]["group"], "silo.dev");
        assert_eq!(v["spec"]["scope"], "Cluster", "{name}");
        let version = &v["spec"]["versions"][0];
        assert_eq!(version["name"], "v1alpha1");
        assert!(
            version["subresources"]["status"].is_object(),
            "{name}: status subresource"
        );
        assert!(
            !v["spec"]["names"]["shortNames"]
                .as_array()
                .is_none_or(Vec::is_empty),
            "{name}: short names"
        );
        assert_structural(&name, &version["schema"]["openAPIV3Schema"]);
    }
}

#[test]
fn tenant_has_the_contract_printer_columns_and_cel_rules() {
    let crd = serde_json::to_value(silo::types::crds()[0].clone()).expect("json");
    assert_eq!(crd["metadata"]["name"], "tenants.silo.dev");
    let version = &crd["spec"]["versions"][0];
    let cols: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .expect("columns")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(
        cols,
        ["Parent", "Depth", "Isolation", "Phase", "Namespace", "Age"]
    );
    let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let rules = spec["x-kubernetes-validations"].to_string();
    assert!(
        rules.contains("oldSelf.parent"),
        "parent immutability rule: {rules}"
    );
    assert_eq!(
        spec["properties"]["limits"]["properties"]["devices"]["minimum"],
        -1.0
    );
    assert_eq!(
        spec["properties"]["limits"]["properties"]["cpu"]["x-kubernetes-int-or-string"],
        true
    );
    assert_eq!(
        spec["properties"]["settings"]["x-kubernetes-preserve-unknown-fields"],
        true
    );
    let root_rules = version["schema"]["openAPIV3Schema"]["x-kubernetes-validations"].to_string();
    assert!(root_rules.contains("self.metadata.name"), "{root_rules}");
}
