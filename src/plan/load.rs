//! Reading Tenant, LimitProfile and Channel objects from YAML/JSON files and directories.
//! Every problem names the file, the object and the field; loading never stops at the first.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::hierarchy::{Inventory, ObjectKind};
use crate::types::{API_VERSION, Channel, LimitProfile, Tenant};

/// A problem in the input, printed as `FILE: Kind/name: field: reason`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputProblem {
    pub file: String,
    /// `Kind/name`, or `document N` when the object could not be identified.
    pub object: String,
    pub field: String,
    pub reason: String,
}

impl std::fmt::Display for InputProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {}: {}: {}",
            self.file, self.object, self.field, self.reason
        )
    }
}

/// The objects read, and for each the file it came from (same order as the inventory).
#[derive(Debug, Default)]
pub struct Loaded {
    pub inventory: Inventory,
    pub tenant_files: Vec<String>,
    pub profile_files: Vec<String>,
    pub channel_files: Vec<String>,
}

impl Loaded {
    pub fn file_of(&self, kind: ObjectKind, index: usize) -> &str {
        let files = match kind {
            ObjectKind::Tenant => &self.tenant_files,
            ObjectKind::LimitProfile => &self.profile_files,
            ObjectKind::Channel => &self.channel_files,
        };
        files.get(index).map_or("-", String::as_str)
    }
}

/// Expands the paths: files as given, directories to their `.yaml`/`.yml`/`.json` files
/// (sorted; sub-directories only with `recursive`, as `kubectl apply -f DIR [-R]`).
pub fn expand(
    paths: &[PathBuf],
    recursive: bool,
    problems: &mut Vec<InputProblem>,
) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            collect_dir(p, recursive, &mut out, problems);
        } else if p.exists() {
            out.push(p.clone());
        } else {
            problems.push(InputProblem {
                file: p.display().to_string(),
                object: "-".into(),
                field: "-".into(),
                reason: "no such file or directory".into(),
            });
        }
    }
    out
}

fn collect_dir(
    dir: &Path,
    recursive: bool,
    out: &mut Vec<PathBuf>,
    problems: &mut Vec<InputProblem>,
) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            problems.push(InputProblem {
                file: dir.display().to_string(),
                object: "-".into(),
                field: "-".into(),
                reason: format!("cannot read directory: {e}"),
            });
            return;
        }
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for p in paths {
        if p.is_dir() {
            if recursive {
                collect_dir(&p, recursive, out, problems);
            }
        } else if matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            out.push(p);
        }
    }
}

/// Reads every file; objects that parse go into the inventory, the rest become problems.
pub fn load(files: &[PathBuf], problems: &mut Vec<InputProblem>) -> Loaded {
    let mut loaded = Loaded::default();
    for f in files {
        let name = f.display().to_string();
        match std::fs::read_to_string(f) {
            Ok(text) => load_text(&name, &text, &mut loaded, problems),
            Err(e) => problems.push(InputProblem {
                file: name,
                object: "-".into(),
                field: "-".into(),
                reason: format!("cannot read file: {e}"),
            }),
        }
    }
    loaded
}

/// Parses one multi-document YAML (or JSON) text.
pub fn load_text(file: &str, text: &str, loaded: &mut Loaded, problems: &mut Vec<InputProblem>) {
    for (n, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
        let label = format!("document {}", n + 1);
        let value = match serde_norway::Value::deserialize_from(doc) {
            Ok(v) => v,
            Err(e) => {
                problems.push(InputProblem {
                    file: file.into(),
                    object: label,
                    field: "-".into(),
                    reason: format!("invalid YAML: {e}"),
                });
                // The parser cannot resynchronise after a syntax error: skip the rest of the file.
                return;
            }
        };
        load_value(file, &label, value, loaded, problems);
    }
}

trait DeserializeFrom: Sized {
    fn deserialize_from(d: serde_norway::Deserializer<'_>) -> Result<Self, serde_norway::Error>;
}

impl DeserializeFrom for serde_norway::Value {
    fn deserialize_from(d: serde_norway::Deserializer<'_>) -> Result<Self, serde_norway::Error> {
        serde::Deserialize::deserialize(d)
    }
}

fn load_value(
    file: &str,
    label: &str,
    value: serde_norway::Value,
    loaded: &mut Loaded,
    problems: &mut Vec<InputProblem>,
) {
    use serde_norway::Value;
    let problem = |object: String, field: &str, reason: String| InputProblem {
        file: file.into(),
        object,
        field: field.into(),
        reason,
    };
    match &value {
        Value::Null => return, // empty document (e.g. a trailing `---`)
        Value::Mapping(_) => {}
        _ => {
            problems.push(problem(
                label.into(),
                "-",
                "expected a Kubernetes object (a mapping with apiVersion, kind, metadata)".into(),
            ));
            return;
        }
    }
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let api_version = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let name = value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    // kubectl's `kind: List` (as printed by `kubectl get -o yaml`).
    if kind == "List" && api_version == "v1" {
        if let Some(Value::Sequence(items)) = value.get("items") {
            for (i, item) in items.iter().enumerate() {
                load_value(
                    file,
                    &format!("{label} item {}", i + 1),
                    item.clone(),
                    loaded,
                    problems,
                );
            }
        }
        return;
    }
    let object = if kind.is_empty() {
        label.to_string()
    } else {
        format!("{kind}/{}", if name.is_empty() { "?" } else { &name })
    };
    if kind.is_empty() {
        problems.push(problem(object, "kind", "required field is missing".into()));
        return;
    }
    if api_version != API_VERSION {
        let reason = if api_version.is_empty() {
            "required field is missing".to_string()
        } else {
            format!("unknown apiVersion {api_version:?} (expected {API_VERSION:?})")
        };
        problems.push(problem(object, "apiVersion", reason));
        return;
    }
    if name.is_empty() {
        problems.push(problem(
            object,
            "metadata.name",
            "required field is missing".into(),
        ));
        return;
    }
    let mut field_problems = Vec::new();
    match kind.as_str() {
        "Tenant" => {
            if let Some(t) = typed::<Tenant>(value, &mut field_problems) {
                loaded.inventory.tenants.push(t);
                loaded.tenant_files.push(file.into());
            }
        }
        "LimitProfile" => {
            if let Some(p) = typed::<LimitProfile>(value, &mut field_problems) {
                loaded.inventory.profiles.push(p);
                loaded.profile_files.push(file.into());
            }
        }
        "Channel" => {
            if let Some(c) = typed::<Channel>(value, &mut field_problems) {
                loaded.inventory.channels.push(c);
                loaded.channel_files.push(file.into());
            }
        }
        other => {
            problems.push(problem(
                object,
                "kind",
                format!("unknown kind {other:?} (expected Tenant, LimitProfile or Channel)"),
            ));
            return;
        }
    }
    problems.extend(
        field_problems
            .into_iter()
            .map(|(field, reason)| problem(object.clone(), &field, reason)),
    );
}

/// Deserializes with the exact path of a bad value, and reports unknown fields (which the
/// API server would prune or reject) instead of silently dropping them.
fn typed<T: DeserializeOwned>(
    value: serde_norway::Value,
    problems: &mut Vec<(String, String)>,
) -> Option<T> {
    let mut unknown = Vec::new();
    let mut track = serde_path_to_error::Track::new();
    let de = serde_path_to_error::Deserializer::new(value, &mut track);
    let result: Result<T, _> = serde_ignored::deserialize(de, |path| {
        let p = path.to_string();
        if p != "apiVersion" && p != "kind" {
            unknown.push(p);
        }
    });
    match result {
        Ok(v) => {
            for p in unknown {
                problems.push((p, "unknown field".into()));
            }
            if problems.is_empty() { Some(v) } else { None }
        }
        Err(e) => {
            let path = track.path().to_string();
            let path = if path == "." { String::new() } else { path };
            let message = e.to_string();
            // serde names a missing field in the message and points at the enclosing
            // object: report the field itself (`spec.owner`), as the API server would.
            let (field, reason) = match missing_field(&message) {
                Some(name) if path.is_empty() => (name.to_string(), MISSING.to_string()),
                Some(name) => (format!("{path}.{name}"), MISSING.to_string()),
                None if path.is_empty() => ("-".to_string(), message),
                None => (path, message),
            };
            problems.push((field, reason));
            None
        }
    }
}

const MISSING: &str = "required field is missing";

/// The field name in serde's "missing field `x`" message.
fn missing_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("missing field `")?;
    rest.split_once('`').map(|(name, _)| name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems_of(text: &str) -> Vec<String> {
        let mut loaded = Loaded::default();
        let mut problems = Vec::new();
        load_text("in.yaml", text, &mut loaded, &mut problems);
        problems.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn missing_nested_field_names_the_field() {
        let p = problems_of(
            "apiVersion: silo.dev/v1alpha1\nkind: LimitProfile\nmetadata: {name: p}\nspec:\n  limits: {devices: 5}\n",
        );
        assert_eq!(
            p,
            ["in.yaml: LimitProfile/p: spec.owner: required field is missing"]
        );
    }

    #[test]
    fn missing_spec_names_spec() {
        let p = problems_of("apiVersion: silo.dev/v1alpha1\nkind: Tenant\nmetadata: {name: t}\n");
        assert_eq!(p, ["in.yaml: Tenant/t: spec: required field is missing"]);
    }

    #[test]
    fn missing_field_in_a_list_item_names_the_item() {
        let p = problems_of(
            "apiVersion: silo.dev/v1alpha1\nkind: Tenant\nmetadata: {name: t}\nspec:\n  members:\n    - user: a@b.example\n",
        );
        assert_eq!(
            p,
            ["in.yaml: Tenant/t: spec.members[0].role: required field is missing"]
        );
    }
}
