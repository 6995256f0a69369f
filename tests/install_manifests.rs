//! The install artifacts (`operator/` kustomize base, `charts/silo` Helm chart, `crds/`) are
//! consistent with each other and with the code, without a cluster and without helm:
//! - every manifest parses as its Kubernetes type with no unknown field;
//! - the RBAC grants exactly the operator's permission list (`src/operator/permissions.rs`);
//! - the operator Deployment passes the Pod Security `restricted` profile;
//! - the webhook matches only `silo.dev` kinds and fails closed;
//! - the ConfigMap holds the platform configuration defaults;
//! - the chart, rendered by the small Go-template subset below with its default values, equals
//!   the kustomize base object for object (labels and annotations aside).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::PodSpec;
use serde_json::{Value, json};
use silo::config::PlatformConfig;

// The operator's permission list (derived from the owned kinds, `render::OwnedKind`).
use silo::operator::permissions;

// The REST API's permission list, likewise compiled from its source file.
#[path = "../src/api/permissions.rs"]
#[allow(dead_code)]
mod api_permissions;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Every document of a multi-document YAML text, as JSON values (empty documents skipped).
fn parse_docs(origin: &str, text: &str) -> Result<Vec<Value>, String> {
    use serde::Deserialize;
    let mut out = Vec::new();
    for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
        let v = serde_norway::Value::deserialize(doc)
            .map_err(|e| format!("{origin}: document {}: {e}", i + 1))?;
        let v =
            serde_json::to_value(v).map_err(|e| format!("{origin}: document {}: {e}", i + 1))?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// (kind, namespace, name)
type Key = (String, String, String);

fn key(o: &Value) -> Key {
    (
        str_at(o, "/kind").to_string(),
        str_at(o, "/metadata/namespace").to_string(),
        str_at(o, "/metadata/name").to_string(),
    )
}

fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| str_at(o, "/kind") == kind && str_at(o, "/metadata/name") == name)
        .unwrap_or_else(|| panic!("no {kind} {name} among the manifests"))
}

// ---------------------------------------------------------------------------------------------
// kustomize: resources (files or directories holding a kustomization.yaml) and `images`.

fn kustomize(dir: &Path) -> Result<Vec<Value>, String> {
    let kfile = dir.join("kustomization.yaml");
    let text = std::fs::read_to_string(&kfile)
        .map_err(|e| format!("{}: cannot read: {e}", kfile.display()))?;
    let k: Value = parse_docs(&kfile.display().to_string(), &text)?
        .into_iter()
        .next()
        .ok_or_else(|| format!("{}: empty", kfile.display()))?;
    if str_at(&k, "/kind") != "Kustomization" {
        return Err(format!("{}: kind is not Kustomization", kfile.display()));
    }
    let mut objs = Vec::new();
    for r in k["resources"].as_array().into_iter().flatten() {
        let r = r
            .as_str()
            .ok_or_else(|| format!("{}: a resource is not a string", kfile.display()))?;
        let path = dir.join(r);
        if path.is_dir() {
            objs.extend(kustomize(&path)?);
        } else if path.is_file() {
            objs.extend(parse_docs(&path.display().to_string(), &read(&path))?);
        } else {
            return Err(format!(
                "{}: resource {r} does not exist ({})",
                kfile.display(),
                path.display()
            ));
        }
    }
    for img in k["images"].as_array().into_iter().flatten() {
        let name = str_at(img, "/name");
        let new_name = img["newName"].as_str().unwrap_or(name);
        let tag = img["newTag"].as_str();
        for o in objs.iter_mut() {
            for c in containers_mut(o) {
                let image = c["image"].as_str().unwrap_or("").to_string();
                let base = image.split(':').next().unwrap_or("");
                if base == name {
                    let old_tag = image.split(':').nth(1);
                    c["image"] = match tag.or(old_tag) {
                        Some(t) => json!(format!("{new_name}:{t}")),
                        None => json!(new_name),
                    };
                }
            }
        }
    }
    Ok(objs)
}

fn containers_mut(o: &mut Value) -> Vec<&mut Value> {
    match o.pointer_mut("/spec/template/spec/containers") {
        Some(Value::Array(cs)) => cs.iter_mut().collect(),
        _ => Vec::new(),
    }
}

/// The optional REST API (`operator/api/`).
fn api_objects() -> Vec<Value> {
    kustomize(&root().join("operator/api")).unwrap_or_else(|e| panic!("{e}"))
}

fn operator_objects() -> Vec<Value> {
    kustomize(&root().join("operator")).unwrap_or_else(|e| panic!("{e}"))
}

// ---------------------------------------------------------------------------------------------
// A small renderer for the Go-template subset the chart uses: `{{ .Path }}`, string and integer
// literals, pipelines with include/toYaml/nindent/indent/quote/default/sha256sum, `if`/`else`/
// `end`, `define`, comments and `{{-`/`-}}` trimming. A missing value is an error (stricter
// than helm), so a typo in a value path fails the tests.

mod tpl {
    use std::collections::BTreeMap;

    use serde_json::Value;
    use sha2::{Digest, Sha256};

    #[derive(Debug)]
    enum Tok {
        Text(String),
        Act(String),
    }

    #[derive(Debug, Clone)]
    enum Node {
        Text(String),
        Act(String),
        If(String, Vec<Node>, Vec<Node>),
    }

    #[derive(Default)]
    pub struct Templates {
        defines: BTreeMap<String, Vec<Node>>,
    }

    fn lex(origin: &str, src: &str) -> Result<Vec<Tok>, String> {
        let mut toks = Vec::new();
        let mut rest = src;
        let mut trim_next = false;
        while let Some(start) = rest.find("{{") {
            let mut text = rest[..start].to_string();
            if trim_next {
                text = text.trim_start().to_string();
            }
            let after = &rest[start + 2..];
            let end = after
                .find("}}")
                .ok_or_else(|| format!("{origin}: unclosed {{{{"))?;
            let mut act = &after[..end];
            if let Some(a) = act.strip_prefix('-') {
                text = text.trim_end().to_string();
                act = a;
            }
            trim_next = false;
            if let Some(a) = act.strip_suffix('-') {
                trim_next = true;
                act = a;
            }
            toks.push(Tok::Text(text));
            let act = act.trim();
            if !(act.starts_with("/*") && act.ends_with("*/")) {
                toks.push(Tok::Act(act.to_string()));
            }
            rest = &after[end + 2..];
        }
        let text = if trim_next { rest.trim_start() } else { rest };
        toks.push(Tok::Text(text.to_string()));
        Ok(toks)
    }

    /// Parses until `else`/`end` (returned) or the end of input.
    fn parse(
        origin: &str,
        toks: &[Tok],
        pos: &mut usize,
        defines: &mut BTreeMap<String, Vec<Node>>,
    ) -> Result<(Vec<Node>, Option<String>), String> {
        let mut nodes = Vec::new();
        while *pos < toks.len() {
            let t = &toks[*pos];
            *pos += 1;
            match t {
                Tok::Text(s) => nodes.push(Node::Text(s.clone())),
                Tok::Act(a) if a == "end" || a == "else" => return Ok((nodes, Some(a.clone()))),
                Tok::Act(a) => {
                    if let Some(cond) = a.strip_prefix("if ") {
                        let (then, term) = parse(origin, toks, pos, defines)?;
                        let els = match term.as_deref() {
                            Some("else") => {
                                let (els, term) = parse(origin, toks, pos, defines)?;
                                if term.as_deref() != Some("end") {
                                    return Err(format!("{origin}: `if {cond}` has no end"));
                                }
                                els
                            }
                            Some("end") => Vec::new(),
                            _ => return Err(format!("{origin}: `if {cond}` has no end")),
                        };
                        nodes.push(Node::If(cond.trim().to_string(), then, els));
                    } else if let Some(name) = a.strip_prefix("define ") {
                        let name = name.trim().trim_matches('"').to_string();
                        let (body, term) = parse(origin, toks, pos, defines)?;
                        if term.as_deref() != Some("end") {
                            return Err(format!("{origin}: define {name:?} has no end"));
                        }
                        defines.insert(name, body);
                    } else {
                        let word = a.split_whitespace().next().unwrap_or("");
                        if ["range", "with", "template", "block"].contains(&word) {
                            return Err(format!(
                                "{origin}: `{word}` is outside the template subset these tests render"
                            ));
                        }
                        nodes.push(Node::Act(a.clone()));
                    }
                }
            }
        }
        Ok((nodes, None))
    }

    fn truthy(v: &Value) -> bool {
        match v {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
            Value::String(s) => !s.is_empty(),
            Value::Array(a) => !a.is_empty(),
            Value::Object(o) => !o.is_empty(),
        }
    }

    fn to_text(v: &Value) -> Result<String, String> {
        match v {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            Value::Bool(b) => Ok(b.to_string()),
            other => Err(format!("cannot print {other} directly (use toYaml)")),
        }
    }

    fn words(cmd: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut cur = String::new();
        let mut quoted = false;
        for c in cmd.chars() {
            match c {
                '"' => {
                    quoted = !quoted;
                    cur.push(c);
                }
                c if c.is_whitespace() && !quoted => {
                    if !cur.is_empty() {
                        out.push(std::mem::take(&mut cur));
                    }
                }
                c => cur.push(c),
            }
        }
        if !cur.is_empty() {
            out.push(cur);
        }
        out
    }

    impl Templates {
        /// Collects the `define`s of a file (helpers) and returns its top-level nodes.
        fn load(&mut self, origin: &str, src: &str) -> Result<Vec<Node>, String> {
            let toks = lex(origin, src)?;
            let mut pos = 0;
            let (nodes, term) = parse(origin, &toks, &mut pos, &mut self.defines)?;
            if let Some(t) = term {
                return Err(format!("{origin}: unexpected `{t}`"));
            }
            Ok(nodes)
        }

        pub fn add_helpers(&mut self, origin: &str, src: &str) -> Result<(), String> {
            self.load(origin, src).map(|_| ())
        }

        pub fn render(&mut self, origin: &str, src: &str, ctx: &Value) -> Result<String, String> {
            let nodes = self.load(origin, src)?;
            let mut out = String::new();
            self.render_nodes(&nodes, ctx, &mut out)
                .map_err(|e| format!("{origin}: {e}"))?;
            Ok(out)
        }

        fn render_nodes(
            &self,
            nodes: &[Node],
            ctx: &Value,
            out: &mut String,
        ) -> Result<(), String> {
            for n in nodes {
                match n {
                    Node::Text(s) => out.push_str(s),
                    Node::Act(a) => out.push_str(&to_text(&self.pipeline(a, ctx)?)?),
                    Node::If(cond, then, els) => {
                        let branch = if truthy(&self.pipeline(cond, ctx)?) {
                            then
                        } else {
                            els
                        };
                        self.render_nodes(branch, ctx, out)?;
                    }
                }
            }
            Ok(())
        }

        fn operand(&self, w: &str, ctx: &Value) -> Result<Value, String> {
            if let Some(s) = w.strip_prefix('"') {
                let s = s
                    .strip_suffix('"')
                    .ok_or_else(|| format!("unterminated string {w}"))?;
                return Ok(Value::String(s.replace("\\\"", "\"")));
            }
            if w == "." {
                return Ok(ctx.clone());
            }
            if let Some(path) = w.strip_prefix('.') {
                let mut v = ctx;
                for part in path.split('.') {
                    v = v.get(part).ok_or_else(|| format!("{w}: no such value"))?;
                }
                return Ok(v.clone());
            }
            if let Ok(n) = w.parse::<i64>() {
                return Ok(Value::from(n));
            }
            Err(format!("unknown operand {w:?}"))
        }

        fn call(&self, f: &str, args: Vec<Value>) -> Result<Value, String> {
            let n = args.len();
            let arity = |want: usize| {
                if n == want {
                    Ok(())
                } else {
                    Err(format!("{f} takes {want} arguments, got {n}"))
                }
            };
            let int = |v: &Value| {
                v.as_u64()
                    .map(|u| u as usize)
                    .ok_or_else(|| format!("{f}: {v} is not a count"))
            };
            match f {
                "include" => {
                    arity(2)?;
                    let name = args[0].as_str().ok_or("include: name is not a string")?;
                    let body = self
                        .defines
                        .get(name)
                        .ok_or_else(|| format!("include: no template {name:?}"))?;
                    let mut out = String::new();
                    self.render_nodes(body, &args[1], &mut out)?;
                    Ok(Value::String(out))
                }
                "toYaml" => {
                    arity(1)?;
                    let y = serde_norway::to_string(&args[0]).map_err(|e| e.to_string())?;
                    Ok(Value::String(y.trim_end().to_string()))
                }
                "indent" | "nindent" => {
                    arity(2)?;
                    let pad = " ".repeat(int(&args[0])?);
                    let s = to_text(&args[1])?;
                    let body = format!("{pad}{}", s.replace('\n', &format!("\n{pad}")));
                    Ok(Value::String(if f == "nindent" {
                        format!("\n{body}")
                    } else {
                        body
                    }))
                }
                "quote" => {
                    arity(1)?;
                    let s = to_text(&args[0])?;
                    Ok(Value::String(format!(
                        "\"{}\"",
                        s.replace('\\', "\\\\").replace('"', "\\\"")
                    )))
                }
                "default" => {
                    arity(2)?;
                    Ok(if truthy(&args[1]) {
                        args[1].clone()
                    } else {
                        args[0].clone()
                    })
                }
                "sha256sum" => {
                    arity(1)?;
                    Ok(Value::String(hex::encode(Sha256::digest(
                        to_text(&args[0])?.as_bytes(),
                    ))))
                }
                other => Err(format!("function {other:?} is outside the template subset")),
            }
        }

        fn pipeline(&self, expr: &str, ctx: &Value) -> Result<Value, String> {
            let mut acc: Option<Value> = None;
            for cmd in expr.split('|') {
                let ws = words(cmd);
                let (first, rest) = ws
                    .split_first()
                    .ok_or_else(|| format!("empty command in {expr:?}"))?;
                let is_fn = first
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic());
                let v = if is_fn {
                    let mut args = rest
                        .iter()
                        .map(|w| self.operand(w, ctx))
                        .collect::<Result<Vec<_>, _>>()?;
                    args.extend(acc.take());
                    self.call(first, args)?
                } else {
                    if acc.is_some() || !rest.is_empty() {
                        return Err(format!("cannot pipe into {first:?} in {expr:?}"));
                    }
                    self.operand(first, ctx)?
                };
                acc = Some(v);
            }
            acc.ok_or_else(|| format!("empty action {expr:?}"))
        }
    }
}

/// Helm's value coalescing: maps merge, everything else replaces.
fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (slot, v) => *slot = v.clone(),
    }
}

fn chart_dir() -> PathBuf {
    root().join("charts/silo")
}

fn chart_values() -> Value {
    let p = chart_dir().join("values.yaml");
    parse_docs("values.yaml", &read(&p)).unwrap().remove(0)
}

/// Renders every `templates/*.yaml` of the chart with values.yaml overlaid by `overrides`.
fn render_chart(overrides: &Value, namespace: &str) -> Result<Vec<Value>, String> {
    let dir = chart_dir();
    let chart = parse_docs("Chart.yaml", &read(&dir.join("Chart.yaml")))?.remove(0);
    let mut values = chart_values();
    merge(&mut values, overrides);
    let ctx = json!({
        "Values": values,
        "Release": { "Name": "silo", "Namespace": namespace, "Service": "Helm" },
        "Chart": {
            "Name": chart["name"], "Version": chart["version"], "AppVersion": chart["appVersion"],
        },
    });
    let mut t = tpl::Templates::default();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("templates"))
        .map_err(|e| e.to_string())?
        .map(|e| e.map(|e| e.path()).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    files.sort();
    for f in files.iter().filter(|f| file_name(f).starts_with('_')) {
        t.add_helpers(&file_name(f), &read(f))?;
    }
    let mut objs = Vec::new();
    for f in &files {
        let name = file_name(f);
        if name.starts_with('_') {
            continue;
        }
        let out = t.render(&name, &read(f), &ctx)?;
        if name.ends_with(".yaml") {
            objs.extend(parse_docs(&name, &out)?);
        }
    }
    Ok(objs)
}

fn file_name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

/// Non-default values shared with the reference rendering by real Helm (charts/rendered/).
fn custom_values() -> Value {
    let p = root().join("charts/rendered/custom-values.yaml");
    parse_docs("custom-values.yaml", &read(&p))
        .unwrap()
        .remove(0)
}

fn chart_objects() -> Vec<Value> {
    render_chart(&json!({}), "silo-system").unwrap_or_else(|e| panic!("{e}"))
}

fn chart_crds() -> Vec<Value> {
    let p = chart_dir().join("crds/silo.yaml");
    parse_docs("charts/silo/crds/silo.yaml", &read(&p)).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Checks shared by the kustomize base and the chart.

/// Deserializes into the k8s-openapi type of its kind and back: an unknown or misspelt field
/// (dropped by the typed model) or a wrong type shows up as a difference.
fn typed_roundtrip(o: &Value) -> Result<(), String> {
    use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service, ServiceAccount};
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

    fn rt<T: serde::de::DeserializeOwned + serde::Serialize>(o: &Value) -> Result<Value, String> {
        let t: T = serde_json::from_value(o.clone()).map_err(|e| e.to_string())?;
        serde_json::to_value(t).map_err(|e| e.to_string())
    }
    let k = key(o);
    let back = match k.0.as_str() {
        "Namespace" => rt::<Namespace>(o),
        "ServiceAccount" => rt::<ServiceAccount>(o),
        "ClusterRole" => rt::<ClusterRole>(o),
        "ClusterRoleBinding" => rt::<ClusterRoleBinding>(o),
        "Role" => rt::<Role>(o),
        "RoleBinding" => rt::<RoleBinding>(o),
        "ConfigMap" => rt::<ConfigMap>(o),
        "Deployment" => rt::<Deployment>(o),
        "Service" => rt::<Service>(o),
        "PodDisruptionBudget" => rt::<PodDisruptionBudget>(o),
        "Ingress" => rt::<k8s_openapi::api::networking::v1::Ingress>(o),
        "ValidatingWebhookConfiguration" => rt::<ValidatingWebhookConfiguration>(o),
        "CustomResourceDefinition" => rt::<CustomResourceDefinition>(o),
        other => return Err(format!("{k:?}: unexpected kind {other}")),
    }
    .map_err(|e| format!("{k:?}: {e}"))?;
    if let Some(path) = first_difference(o, &back, String::new()) {
        return Err(format!(
            "{k:?}: field {path} is not part of the {} schema (or has the wrong type)",
            k.0
        ));
    }
    Ok(())
}

fn first_difference(a: &Value, b: &Value, at: String) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, v) in x {
                let here = format!("{at}.{k}");
                match y.get(k) {
                    Some(w) => {
                        if let Some(d) = first_difference(v, w, here) {
                            return Some(d);
                        }
                    }
                    // An empty map/list may be dropped by the typed model.
                    None if v.as_object().is_some_and(|m| m.is_empty())
                        || v.as_array().is_some_and(|l| l.is_empty()) => {}
                    None => return Some(here),
                }
            }
            None
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (v, w))| first_difference(v, w, format!("{at}[{i}]"))),
        _ if a == b => None,
        _ => Some(if at.is_empty() { ".".into() } else { at }),
    }
}

type Grant = (String, String, String); // (apiGroup, resource, verb)

fn permission_grants() -> BTreeSet<Grant> {
    permissions::permissions()
        .iter()
        .flat_map(|p| {
            p.verbs.iter().map(|v| {
                (
                    p.api_group.to_string(),
                    p.resource.to_string(),
                    v.to_string(),
                )
            })
        })
        .collect()
}

/// Everything a Role/ClusterRole grants; wildcards and resourceNames are refused.
fn rule_grants(role: &Value) -> Result<BTreeSet<Grant>, String> {
    let name = str_at(role, "/metadata/name");
    let mut out = BTreeSet::new();
    for (i, rule) in role["rules"].as_array().into_iter().flatten().enumerate() {
        let list = |f: &str| -> Vec<String> {
            rule[f]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        };
        if rule.get("nonResourceURLs").is_some() || rule.get("resourceNames").is_some() {
            return Err(format!(
                "{name}: rule {i} uses nonResourceURLs/resourceNames, which the operator's list does not describe"
            ));
        }
        for g in list("apiGroups") {
            for r in list("resources") {
                for v in list("verbs") {
                    if g == "*" || r == "*" || v == "*" {
                        return Err(format!("{name}: rule {i} grants a wildcard ({g}/{r} {v})"));
                    }
                    out.insert((g.clone(), r.clone(), v));
                }
            }
        }
    }
    Ok(out)
}

/// The ClusterRole `silo-operator` plus the leader-election Role in `namespace` must grant
/// exactly the operator's permission list; the Role holds only Leases.
fn check_rbac(objs: &[Value], namespace: &str) -> Result<(), String> {
    let cluster = rule_grants(find(objs, "ClusterRole", "silo-operator"))?;
    let role_obj = find(objs, "Role", "silo-operator");
    if str_at(role_obj, "/metadata/namespace") != namespace {
        return Err(format!("Role silo-operator is not in {namespace}"));
    }
    let role = rule_grants(role_obj)?;
    for (g, r, v) in &role {
        if (g.as_str(), r.as_str()) != ("coordination.k8s.io", "leases") {
            return Err(format!(
                "Role silo-operator grants {g}/{r} {v}: only leases belong in the namespaced Role"
            ));
        }
    }
    if let Some(both) = cluster.intersection(&role).next() {
        return Err(format!(
            "{both:?} is granted by both the ClusterRole and the Role"
        ));
    }
    compare_grants(&cluster.union(&role).cloned().collect())?;
    for (kind, name, ref_kind) in [
        ("ClusterRoleBinding", "silo-operator", "ClusterRole"),
        ("RoleBinding", "silo-operator", "Role"),
    ] {
        let b = find(objs, kind, name);
        if str_at(b, "/roleRef/kind") != ref_kind || str_at(b, "/roleRef/name") != "silo-operator" {
            return Err(format!(
                "{kind} {name} does not refer to {ref_kind} silo-operator"
            ));
        }
        let subjects = b["subjects"].as_array().cloned().unwrap_or_default();
        if subjects
            != vec![json!({"kind": "ServiceAccount", "name": "silo", "namespace": namespace})]
        {
            return Err(format!(
                "{kind} {name} must bind exactly ServiceAccount {namespace}/silo, binds {subjects:?}"
            ));
        }
    }
    Ok(())
}

fn compare_grants(granted: &BTreeSet<Grant>) -> Result<(), String> {
    let wanted = permission_grants();
    let fmt = |s: Vec<&Grant>| {
        s.iter()
            .map(|(g, r, v)| format!("{}/{r} {v}", if g.is_empty() { "core" } else { g }))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let missing: Vec<_> = wanted.difference(granted).collect();
    let extra: Vec<_> = granted.difference(&wanted).collect();
    let mut problems = Vec::new();
    if !missing.is_empty() {
        problems.push(format!(
            "not granted but used by the operator: {}",
            fmt(missing)
        ));
    }
    if !extra.is_empty() {
        problems.push(format!(
            "granted but not in src/operator/permissions.rs: {}",
            fmt(extra)
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// Pod Security Standards, `restricted` profile (v1.32), plus our own rules: read-only root
/// filesystem and CPU/memory requests and limits on every container.
fn restricted_violations(spec: &PodSpec) -> Vec<String> {
    let mut v = Vec::new();
    if spec.host_network == Some(true) || spec.host_pid == Some(true) || spec.host_ipc == Some(true)
    {
        v.push("pod: hostNetwork/hostPID/hostIPC must not be set".to_string());
    }
    for vol in spec.volumes.iter().flatten() {
        let allowed = vol.config_map.is_some()
            || vol.csi.is_some()
            || vol.downward_api.is_some()
            || vol.empty_dir.is_some()
            || vol.ephemeral.is_some()
            || vol.persistent_volume_claim.is_some()
            || vol.projected.is_some()
            || vol.secret.is_some();
        if !allowed {
            v.push(format!(
                "volume {}: type not allowed under restricted",
                vol.name
            ));
        }
    }
    let psc = spec.security_context.clone().unwrap_or_default();
    if psc.run_as_user == Some(0) {
        v.push("pod: securityContext.runAsUser must not be 0".to_string());
    }
    let pod_seccomp = psc.seccomp_profile.as_ref().map(|s| s.type_.clone());
    let all = spec
        .containers
        .iter()
        .map(|c| (c, false))
        .chain(spec.init_containers.iter().flatten().map(|c| (c, true)));
    for (c, init) in all {
        let who = format!("container {}", c.name);
        let sc = c.security_context.clone().unwrap_or_default();
        if sc.privileged == Some(true) {
            v.push(format!(
                "{who}: securityContext.privileged must not be true"
            ));
        }
        if sc.allow_privilege_escalation != Some(false) {
            v.push(format!(
                "{who}: securityContext.allowPrivilegeEscalation must be false"
            ));
        }
        let caps = sc.capabilities.clone().unwrap_or_default();
        if !caps.drop.iter().flatten().any(|d| d == "ALL") {
            v.push(format!(
                "{who}: securityContext.capabilities.drop must contain ALL"
            ));
        }
        for a in caps.add.iter().flatten() {
            if a != "NET_BIND_SERVICE" {
                v.push(format!(
                    "{who}: securityContext.capabilities.add must not add {a}"
                ));
            }
        }
        if sc.run_as_non_root.or(psc.run_as_non_root) != Some(true) {
            v.push(format!(
                "{who}: runAsNonRoot must be true (container or pod)"
            ));
        }
        if sc.run_as_user == Some(0) {
            v.push(format!("{who}: securityContext.runAsUser must not be 0"));
        }
        let seccomp = sc
            .seccomp_profile
            .as_ref()
            .map(|s| s.type_.clone())
            .or(pod_seccomp.clone());
        if !matches!(seccomp.as_deref(), Some("RuntimeDefault" | "Localhost")) {
            v.push(format!(
                "{who}: seccompProfile.type must be RuntimeDefault or Localhost (container or pod)"
            ));
        }
        if c.ports
            .iter()
            .flatten()
            .any(|p| p.host_port.is_some_and(|h| h != 0))
        {
            v.push(format!("{who}: hostPort must not be used"));
        }
        if sc.read_only_root_filesystem != Some(true) {
            v.push(format!(
                "{who}: securityContext.readOnlyRootFilesystem must be true"
            ));
        }
        if !init {
            let r = c.resources.clone().unwrap_or_default();
            for (what, m) in [("requests", &r.requests), ("limits", &r.limits)] {
                for res in ["cpu", "memory"] {
                    if !m.as_ref().is_some_and(|m| m.contains_key(res)) {
                        v.push(format!("{who}: resources.{what}.{res} must be set"));
                    }
                }
            }
        }
    }
    v
}

fn pod_spec(deploy: &Value) -> PodSpec {
    serde_json::from_value(deploy["spec"]["template"]["spec"].clone()).unwrap()
}

const SILO_RESOURCES: [&str; 3] = ["tenants", "limitprofiles", "channels"];
const SILO_OPERATIONS: [&str; 3] = ["CREATE", "UPDATE", "DELETE"];

/// The webhook configuration is safe: only silo.dev kinds, fail closed, short timeout,
/// AdmissionReview v1, no side effects, served by `silo-webhook` in `namespace` at /validate.
fn check_webhook(cfg: &Value, namespace: &str) -> Result<(), String> {
    let hooks = cfg["webhooks"].as_array().cloned().unwrap_or_default();
    if hooks.is_empty() {
        return Err("silo-validating has no webhooks".into());
    }
    let list = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(String::from))
            .collect()
    };
    let mut covered = BTreeSet::new();
    for h in &hooks {
        let name = str_at(h, "/name");
        let bad = |why: String| Err(format!("webhook {name}: {why}"));
        if str_at(h, "/failurePolicy") != "Fail" {
            return bad(format!(
                "failurePolicy is {:?}, must be Fail",
                h["failurePolicy"]
            ));
        }
        if str_at(h, "/sideEffects") != "None" {
            return bad("sideEffects must be None".into());
        }
        match h["timeoutSeconds"].as_u64() {
            Some(t) if (1..=5).contains(&t) => {}
            other => return bad(format!("timeoutSeconds {other:?} must be set, at most 5")),
        }
        if list(&h["admissionReviewVersions"]) != ["v1"] {
            return bad("admissionReviewVersions must be [v1]".into());
        }
        if h.pointer("/clientConfig/caBundle").is_some() {
            return bad("caBundle must be left to the operator".into());
        }
        if h.pointer("/clientConfig/url").is_some() {
            return bad(
                "clientConfig.url must not be set (the Service is used in a cluster)".into(),
            );
        }
        let svc = &h["clientConfig"]["service"];
        if (
            str_at(svc, "/name"),
            str_at(svc, "/namespace"),
            str_at(svc, "/path"),
        ) != ("silo-webhook", namespace, "/validate")
            || svc["port"].as_u64().unwrap_or(443) != 443
        {
            return bad(format!(
                "clientConfig.service must be silo-webhook.{namespace}:443/validate, is {svc}"
            ));
        }
        for sel in ["namespaceSelector", "objectSelector"] {
            if h[sel].as_object().is_some_and(|m| !m.is_empty()) {
                return bad(format!("{sel} would let some objects bypass the checks"));
            }
        }
        let rules = h["rules"].as_array().cloned().unwrap_or_default();
        if rules.is_empty() {
            return bad("no rules".into());
        }
        for r in &rules {
            let groups = list(&r["apiGroups"]);
            if groups != ["silo.dev"] {
                return bad(format!(
                    "apiGroups {groups:?}: only silo.dev may be matched (never * or core)"
                ));
            }
            let versions = list(&r["apiVersions"]);
            if versions.iter().any(|v| v == "*") {
                return bad("apiVersions must not be *".into());
            }
            let resources = list(&r["resources"]);
            if let Some(x) = resources
                .iter()
                .find(|x| !SILO_RESOURCES.contains(&x.as_str()))
            {
                return bad(format!(
                    "resource {x:?} is not a silo.dev kind (tenants, limitprofiles, channels)"
                ));
            }
            let ops = list(&r["operations"]);
            if ops.iter().any(|o| o == "*" || o == "CONNECT") {
                return bad(format!(
                    "operations {ops:?} must list CREATE/UPDATE/DELETE explicitly"
                ));
            }
            for res in &resources {
                for op in &ops {
                    covered.insert((res.clone(), op.clone()));
                }
            }
        }
    }
    for res in SILO_RESOURCES {
        for op in SILO_OPERATIONS {
            if !covered.contains(&(res.to_string(), op.to_string())) {
                return Err(format!("no webhook checks {op} of {res}"));
            }
        }
    }
    Ok(())
}

/// Removes what legitimately differs between the kustomize base and the chart: labels and
/// annotations (helm's own labels, the config checksum) and comments in the config file.
fn normalise(o: &Value) -> Value {
    let mut o = o.clone();
    for p in ["/metadata", "/spec/template/metadata"] {
        if let Some(Value::Object(m)) = o.pointer_mut(p) {
            m.remove("labels");
            m.remove("annotations");
        }
    }
    if str_at(&o, "/kind") == "ConfigMap"
        && let Some(Value::String(text)) = o.pointer("/data/config.yaml").cloned()
    {
        let parsed = parse_docs("config.yaml", &text).unwrap().remove(0);
        o["data"]["config.yaml"] = parsed;
    }
    o
}

fn by_key(objs: &[Value]) -> BTreeMap<Key, Value> {
    let mut m = BTreeMap::new();
    for o in objs {
        assert!(
            m.insert(key(o), normalise(o)).is_none(),
            "{:?} appears twice",
            key(o)
        );
    }
    m
}

fn config_of(objs: &[Value]) -> String {
    str_at(find(objs, "ConfigMap", "silo-config"), "/data/config.yaml").to_string()
}

// =============================================================================================
// Tests

#[test]
fn kustomizations_list_every_manifest_and_only_existing_files() {
    for sub in ["operator", "operator/api"] {
        let dir = root().join(sub);
        let k = parse_docs("kustomization.yaml", &read(&dir.join("kustomization.yaml")))
            .unwrap()
            .remove(0);
        let listed: BTreeSet<String> = k["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap().to_string())
            .collect();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let name = file_name(&entry.unwrap().path());
            if name.ends_with(".yaml") && name != "kustomization.yaml" {
                assert!(
                    listed.contains(&name),
                    "{sub}/{name} is not listed in its kustomization.yaml"
                );
            }
        }
        if sub == "operator" {
            assert!(
                listed.contains("../crds"),
                "the CRDs are part of the base: {listed:?}"
            );
        }
    }
    // All of them load (a missing file would be an error naming it).
    let objs = operator_objects();
    assert!(objs.len() >= 15, "{} objects", objs.len());
    assert_eq!(api_objects().len(), 5);
}

#[test]
fn a_missing_resource_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("kustomization.yaml"),
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - gone.yaml\n",
    )
    .unwrap();
    let err = kustomize(tmp.path()).unwrap_err();
    assert!(err.contains("resource gone.yaml does not exist"), "{err}");
}

#[test]
fn every_manifest_is_a_valid_kubernetes_object() {
    let mut all = operator_objects();
    all.extend(chart_objects());
    all.extend(chart_crds());
    for o in &all {
        typed_roundtrip(o).unwrap_or_else(|e| panic!("{e}"));
    }
    let kinds: BTreeSet<_> = all.iter().map(|o| key(o).0).collect();
    for k in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "ValidatingWebhookConfiguration",
        "CustomResourceDefinition",
    ] {
        assert!(kinds.contains(k), "no {k} in the install manifests");
    }
}

#[test]
fn a_misspelt_field_is_caught() {
    let mut d = find(&operator_objects(), "Deployment", "silo-operator").clone();
    d["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFileSystem"] =
        json!(true);
    let err = typed_roundtrip(&d).unwrap_err();
    assert!(
        err.contains(".spec.template.spec.containers[0].securityContext.readOnlyRootFileSystem"),
        "{err}"
    );
    let mut w = find(
        &operator_objects(),
        "ValidatingWebhookConfiguration",
        "silo-validating",
    )
    .clone();
    w["webhooks"][0]["timeoutSeconds"] = json!("five");
    let err = typed_roundtrip(&w).unwrap_err();
    assert!(err.contains("ValidatingWebhookConfiguration"), "{err}");
}

#[test]
fn rbac_grants_exactly_the_operators_permissions() {
    check_rbac(&operator_objects(), "silo-system").unwrap_or_else(|e| panic!("operator/: {e}"));
    check_rbac(&chart_objects(), "silo-system").unwrap_or_else(|e| panic!("charts/silo: {e}"));
    // The chart follows the release namespace.
    let other = render_chart(&json!({}), "platform").unwrap();
    check_rbac(&other, "platform").unwrap_or_else(|e| panic!("charts/silo -n platform: {e}"));
}

#[test]
fn rbac_drift_is_reported_both_ways() {
    let mut granted = permission_grants();
    granted.insert(("".into(), "pods".into(), "delete".into()));
    let removed = (
        "coordination.k8s.io".to_string(),
        "leases".to_string(),
        "update".to_string(),
    );
    granted.remove(&removed);
    let err = compare_grants(&granted).unwrap_err();
    assert!(
        err.contains("not granted but used by the operator: coordination.k8s.io/leases update"),
        "{err}"
    );
    assert!(
        err.contains("granted but not in src/operator/permissions.rs: core/pods delete"),
        "{err}"
    );

    let mut objs = operator_objects();
    let role = objs.iter_mut().find(|o| key(o).0 == "ClusterRole").unwrap();
    role["rules"][0]["verbs"] = json!(["*"]);
    let err = check_rbac(&objs, "silo-system").unwrap_err();
    assert!(
        err.contains("grants a wildcard (silo.dev/tenants *)"),
        "{err}"
    );

    let mut objs = operator_objects();
    let role = objs.iter_mut().find(|o| key(o).0 == "Role").unwrap();
    role["rules"]
        .as_array_mut()
        .unwrap()
        .push(json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}));
    let err = check_rbac(&objs, "silo-system").unwrap_err();
    assert!(
        err.contains("Role silo-operator grants /secrets get"),
        "{err}"
    );
}

#[test]
fn operator_pods_pass_pod_security_restricted() {
    for (origin, objs) in [
        ("operator/", operator_objects()),
        ("charts/silo", chart_objects()),
    ] {
        let d = find(&objs, "Deployment", "silo-operator");
        let v = restricted_violations(&pod_spec(d));
        assert!(v.is_empty(), "{origin}: {v:?}");
    }
    // The namespace itself enforces restricted.
    let ns = find(&operator_objects(), "Namespace", "silo-system").clone();
    assert_eq!(
        str_at(&ns, "/metadata/labels/pod-security.kubernetes.io~1enforce"),
        "restricted"
    );
}

#[test]
fn pod_security_violations_are_named() {
    let base = pod_spec(find(&operator_objects(), "Deployment", "silo-operator"));
    let mut s = base.clone();
    let sc = s.containers[0].security_context.as_mut().unwrap();
    sc.allow_privilege_escalation = None;
    sc.capabilities = None;
    sc.read_only_root_filesystem = Some(false);
    sc.seccomp_profile = None;
    s.security_context.as_mut().unwrap().seccomp_profile = None;
    let v = restricted_violations(&s);
    for want in [
        "container operator: securityContext.allowPrivilegeEscalation must be false",
        "container operator: securityContext.capabilities.drop must contain ALL",
        "container operator: securityContext.readOnlyRootFilesystem must be true",
        "container operator: seccompProfile.type must be RuntimeDefault or Localhost (container or pod)",
    ] {
        assert!(v.iter().any(|x| x == want), "{want:?} not in {v:?}");
    }
    let mut s = base.clone();
    s.host_network = Some(true);
    s.containers[0]
        .security_context
        .as_mut()
        .unwrap()
        .run_as_non_root = None;
    s.security_context.as_mut().unwrap().run_as_non_root = None;
    s.containers[0].resources = None;
    let v = restricted_violations(&s);
    for want in [
        "pod: hostNetwork/hostPID/hostIPC must not be set",
        "container operator: runAsNonRoot must be true (container or pod)",
        "container operator: resources.limits.memory must be set",
    ] {
        assert!(v.iter().any(|x| x == want), "{want:?} not in {v:?}");
    }
}

#[test]
fn operator_deployment_runs_the_operator_with_probes_ports_and_config() {
    for (origin, objs) in [
        ("operator/", operator_objects()),
        ("charts/silo", chart_objects()),
    ] {
        let d = find(&objs, "Deployment", "silo-operator");
        assert_eq!(
            d["spec"]["replicas"],
            json!(2),
            "{origin}: two replicas (leader election)"
        );
        let spec = pod_spec(d);
        assert_eq!(
            spec.service_account_name.as_deref(),
            Some("silo"),
            "{origin}"
        );
        let c = &spec.containers[0];
        assert_eq!(
            c.args.as_deref().unwrap(),
            ["operator", "--config", "/etc/silo/config.yaml"],
            "{origin}"
        );
        let ports: BTreeMap<_, _> = c
            .ports
            .iter()
            .flatten()
            .map(|p| (p.name.clone().unwrap(), p.container_port))
            .collect();
        assert_eq!(
            ports,
            BTreeMap::from([("metrics".into(), 8080), ("webhook".into(), 8443)]),
            "{origin}"
        );
        for (probe, path) in [
            (&c.liveness_probe, "/healthz"),
            (&c.readiness_probe, "/readyz"),
        ] {
            let get = probe.as_ref().and_then(|p| p.http_get.as_ref()).unwrap();
            assert_eq!(get.path.as_deref(), Some(path), "{origin}");
            let port = serde_json::to_value(&get.port).unwrap();
            assert!(
                port == json!("metrics") || port == json!(8080),
                "{origin}: probe on {port}"
            );
        }
        // The config file named in the args comes from the silo-config ConfigMap.
        let mount = c
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.mount_path == "/etc/silo")
            .unwrap();
        let vol = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == mount.name)
            .unwrap();
        assert_eq!(
            vol.config_map.as_ref().unwrap().name,
            "silo-config",
            "{origin}"
        );
        let _ = find(&objs, "ConfigMap", "silo-config");
        // The pods' labels satisfy the selector, and the PDB and Services select them.
        let labels = d["spec"]["template"]["metadata"]["labels"]
            .as_object()
            .unwrap();
        let selects = |sel: &Value| {
            sel.as_object()
                .unwrap()
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v))
        };
        assert!(selects(&d["spec"]["selector"]["matchLabels"]), "{origin}");
        assert!(
            selects(
                &find(&objs, "PodDisruptionBudget", "silo-operator")["spec"]["selector"]["matchLabels"]
            ),
            "{origin}"
        );
        for svc in ["silo-metrics", "silo-webhook"] {
            assert!(
                selects(&find(&objs, "Service", svc)["spec"]["selector"]),
                "{origin}: {svc}"
            );
        }
        let pdb = find(&objs, "PodDisruptionBudget", "silo-operator");
        assert_eq!(pdb["spec"]["minAvailable"], json!(1), "{origin}");
    }
}

#[test]
fn services_expose_metrics_and_the_webhook() {
    for (origin, objs) in [
        ("operator/", operator_objects()),
        ("charts/silo", chart_objects()),
    ] {
        let d = find(&objs, "Deployment", "silo-operator");
        let ports: BTreeMap<String, u64> = d["spec"]["template"]["spec"]["containers"][0]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    str_at(p, "/name").to_string(),
                    p["containerPort"].as_u64().unwrap(),
                )
            })
            .collect();
        for (svc, port, target) in [("silo-metrics", 8080, 8080), ("silo-webhook", 443, 8443)] {
            let s = find(&objs, "Service", svc);
            let p = &s["spec"]["ports"][0];
            assert_eq!(p["port"], json!(port), "{origin}: {svc}");
            let t = match &p["targetPort"] {
                Value::String(name) => ports[name],
                other => other.as_u64().unwrap(),
            };
            assert_eq!(t, target, "{origin}: {svc} targets {t}");
        }
    }
}

#[test]
fn webhook_matches_only_silo_kinds_and_fails_closed() {
    let crd_plurals: BTreeSet<String> = parse_docs("crds", &read(&root().join("crds/silo.yaml")))
        .unwrap()
        .iter()
        .filter(|c| str_at(c, "/spec/group") == "silo.dev")
        .map(|c| str_at(c, "/spec/names/plural").to_string())
        .collect();
    assert_eq!(
        crd_plurals,
        SILO_RESOURCES.iter().map(|s| s.to_string()).collect()
    );
    for (origin, objs) in [
        ("operator/", operator_objects()),
        ("charts/silo", chart_objects()),
    ] {
        let w = find(&objs, "ValidatingWebhookConfiguration", "silo-validating");
        check_webhook(w, "silo-system").unwrap_or_else(|e| panic!("{origin}: {e}"));
        let versions = &w["webhooks"][0]["rules"][0]["apiVersions"];
        assert_eq!(versions, &json!([silo::types::VERSION]), "{origin}");
    }
}

#[test]
fn unsafe_webhook_configurations_are_refused_with_the_reason() {
    let base = find(
        &operator_objects(),
        "ValidatingWebhookConfiguration",
        "silo-validating",
    )
    .clone();
    let cases: [(&str, Value, &str); 6] = [
        (
            "/webhooks/0/rules/0/apiGroups",
            json!(["*"]),
            "apiGroups [\"*\"]: only silo.dev may be matched (never * or core)",
        ),
        (
            "/webhooks/0/rules/0/apiGroups",
            json!(["", "silo.dev"]),
            "only silo.dev may be matched",
        ),
        (
            "/webhooks/0/rules/0/resources",
            json!(["tenants", "pods"]),
            "resource \"pods\" is not a silo.dev kind",
        ),
        (
            "/webhooks/0/failurePolicy",
            json!("Ignore"),
            "failurePolicy is String(\"Ignore\"), must be Fail",
        ),
        (
            "/webhooks/0/rules/0/operations",
            json!(["CREATE", "UPDATE"]),
            "no webhook checks DELETE of tenants",
        ),
        (
            "/webhooks/0/timeoutSeconds",
            json!(30),
            "timeoutSeconds Some(30) must be set, at most 5",
        ),
    ];
    for (pointer, value, want) in cases {
        let mut w = base.clone();
        *w.pointer_mut(pointer).unwrap() = value;
        let err = check_webhook(&w, "silo-system").unwrap_err();
        assert!(err.contains(want), "{pointer}: {err}");
    }
}

#[test]
fn config_map_holds_the_platform_defaults() {
    let no_env = |_: &str| None;
    for (origin, objs) in [
        ("operator/", operator_objects()),
        ("charts/silo", chart_objects()),
    ] {
        let text = config_of(&objs);
        let cfg = PlatformConfig::from_yaml_with_env(origin, &text, no_env)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg, PlatformConfig::default(), "{origin}");
        // Every key is spelt out (a platform engineer sees what can be set), not just defaulted.
        let written = parse_docs(origin, &text).unwrap().remove(0);
        let full = serde_json::to_value(PlatformConfig::default()).unwrap();
        assert_eq!(
            first_difference(&full, &written, String::new()),
            None,
            "{origin}: the config file does not show every key"
        );
    }
}

#[test]
fn chart_values_flow_into_the_rendered_objects() {
    let objs = render_chart(&custom_values(), "silo-system").unwrap();
    let d = find(&objs, "Deployment", "silo-operator");
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], json!("registry.example/silo:9.9.9"));
    assert_eq!(c["imagePullPolicy"], json!("Always"));
    assert_eq!(d["spec"]["replicas"], json!(3));
    assert_eq!(c["resources"]["limits"]["memory"], json!("2Gi"));
    assert!(
        c["env"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "RUST_LOG", "value": "info,silo=debug"}))
    );
    assert!(
        c["env"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "SILO_RETENTION_DAYS", "value": "30"}))
    );
    let w = find(&objs, "ValidatingWebhookConfiguration", "silo-validating");
    assert_eq!(w["webhooks"][0]["failurePolicy"], json!("Ignore"));
    assert_eq!(w["webhooks"][0]["timeoutSeconds"], json!(3));
    let cfg = PlatformConfig::from_yaml_with_env("chart", &config_of(&objs), |_| None).unwrap();
    assert_eq!(cfg.max_depth, 5);
    assert_eq!(cfg.keys.provider, silo::config::KeyProviderKind::AwsKms);
    assert_eq!(
        cfg.namespace_prefix, "tenant-",
        "untouched keys keep their defaults"
    );
    let sa = find(&objs, "ServiceAccount", "silo");
    assert_eq!(
        str_at(sa, "/metadata/annotations/eks.amazonaws.com~1role-arn"),
        "arn:aws:iam::1:role/silo"
    );
    // A config change changes the pod template, so the pods roll.
    let default = chart_objects();
    let checksum = |o: &[Value]| {
        find(o, "Deployment", "silo-operator")["spec"]["template"]["metadata"]["annotations"]["checksum/config"].clone()
    };
    assert_ne!(checksum(&objs), checksum(&default));
    // Default image: the chart's appVersion.
    let c =
        &find(&default, "Deployment", "silo-operator")["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        c["image"],
        json!(format!("localhost/silo:{}", env!("CARGO_PKG_VERSION")))
    );
}

#[test]
fn a_template_referring_to_a_missing_value_is_an_error() {
    let mut t = tpl::Templates::default();
    let ctx = json!({"Values": {"image": {"tag": ""}}});
    let err = t
        .render("x.yaml", "image: {{ .Values.image.repo }}\n", &ctx)
        .unwrap_err();
    assert_eq!(err, "x.yaml: .Values.image.repo: no such value");
    let err = t
        .render("y.yaml", "{{ if .Values.image.tag }}x\n", &ctx)
        .unwrap_err();
    assert!(err.contains("has no end"), "{err}");
    let err = t
        .render("z.yaml", "{{ .Values.image | upper }}", &ctx)
        .unwrap_err();
    assert!(
        err.contains("function \"upper\" is outside the template subset"),
        "{err}"
    );
    // And the subset behaves like helm on what the chart uses.
    let out = t
        .render(
            "ok.yaml",
            "a:\n  {{- toYaml .Values.image | nindent 2 }}\nb: {{ .Values.image.tag | default \"d\" | quote }}\n{{- if .Values.image.tag }}\nc: 1\n{{- end }}\n",
            &ctx,
        )
        .unwrap();
    assert_eq!(out, "a:\n  tag: ''\nb: \"d\"\n");
}

#[test]
fn kustomize_base_and_chart_agree() {
    let kust = by_key(&operator_objects());
    let mut chart_objs = chart_objects();
    chart_objs.extend(chart_crds());
    let chart = by_key(&chart_objs);
    // helm creates the namespace (--create-namespace); everything else must be in both.
    let ns_key: Key = ("Namespace".into(), String::new(), "silo-system".into());
    let kust_keys: BTreeSet<_> = kust.keys().filter(|k| **k != ns_key).cloned().collect();
    let chart_keys: BTreeSet<_> = chart.keys().cloned().collect();
    assert_eq!(
        kust_keys, chart_keys,
        "the kustomize base and the chart install different objects"
    );
    for k in &kust_keys {
        if let Some(path) = first_difference(&kust[k], &chart[k], String::new())
            .or_else(|| first_difference(&chart[k], &kust[k], String::new()))
        {
            panic!("{k:?} differs between operator/ and charts/silo at {path}");
        }
    }
}

#[test]
fn chart_crds_are_the_generated_crds() {
    let crds = read(&root().join("crds/silo.yaml"));
    let chart = read(&chart_dir().join("crds/silo.yaml"));
    assert!(
        crds == chart,
        "charts/silo/crds/silo.yaml differs from crds/silo.yaml: run `cp crds/silo.yaml charts/silo/crds/silo.yaml`"
    );
    assert_eq!(
        crds,
        silo::types::crds_yaml().unwrap(),
        "crds/silo.yaml is out of date: run `cargo run -- crds > crds/silo.yaml`"
    );
}

#[test]
fn versions_follow_the_crate() {
    let chart = parse_docs("Chart.yaml", &read(&chart_dir().join("Chart.yaml")))
        .unwrap()
        .remove(0);
    assert_eq!(chart["appVersion"], json!(env!("CARGO_PKG_VERSION")));
    let d = find(&operator_objects(), "Deployment", "silo-operator").clone();
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        json!(format!("localhost/silo:{}", env!("CARGO_PKG_VERSION")))
    );
}

#[test]
fn install_doc_shows_the_real_printer_columns() {
    let doc = read(&root().join("docs/install.md"));
    let crds = parse_docs("crds", &read(&root().join("crds/silo.yaml"))).unwrap();
    let tenant = crds
        .iter()
        .find(|c| str_at(c, "/spec/names/kind") == "Tenant")
        .unwrap();
    let mut header = vec!["NAME".to_string()];
    for col in tenant["spec"]["versions"][0]["additionalPrinterColumns"]
        .as_array()
        .unwrap()
    {
        header.push(str_at(col, "/name").to_uppercase());
    }
    assert_eq!(
        header,
        [
            "NAME",
            "PARENT",
            "DEPTH",
            "ISOLATION",
            "PHASE",
            "NAMESPACE",
            "AGE"
        ]
    );
    let found = doc
        .lines()
        .any(|l| l.split_whitespace().collect::<Vec<_>>() == header);
    assert!(
        found,
        "docs/install.md has no `kubectl get tenants` header {header:?}"
    );
    for needle in [
        "kubectl apply -k operator/",
        "helm install silo charts/silo -n silo-system --create-namespace",
        "SILO_KEYS_PROVIDER",
    ] {
        assert!(
            doc.contains(needle),
            "docs/install.md does not mention {needle}"
        );
    }
}

#[test]
fn api_is_optional_and_the_same_in_both_installs() {
    let is_api = |o: &Value| str_at(o, "/metadata/name") == "silo-api";
    assert!(
        !chart_objects().iter().any(is_api),
        "the chart installs the API only with api.enabled"
    );
    let with_api = render_chart(&json!({"api": {"enabled": true}}), "silo-system").unwrap();
    let chart = by_key(&with_api.into_iter().filter(is_api).collect::<Vec<_>>());
    let kust = by_key(&api_objects());
    assert_eq!(
        chart.keys().collect::<Vec<_>>(),
        kust.keys().collect::<Vec<_>>()
    );
    for (k, v) in &kust {
        if let Some(path) = first_difference(v, &chart[k], String::new())
            .or_else(|| first_difference(&chart[k], v, String::new()))
        {
            panic!("{k:?} differs between operator/api/ and charts/silo at {path}");
        }
    }
}

#[test]
fn api_runs_restricted_on_port_8081_with_rights_on_silo_kinds_only() {
    let with_api = render_chart(&json!({"api": {"enabled": true}}), "silo-system").unwrap();
    for (origin, objs) in [("operator/api/", api_objects()), ("charts/silo", with_api)] {
        for o in &objs {
            typed_roundtrip(o).unwrap_or_else(|e| panic!("{origin}: {e}"));
        }
        let d = find(&objs, "Deployment", "silo-api");
        let spec = pod_spec(d);
        let v = restricted_violations(&spec);
        assert!(v.is_empty(), "{origin}: {v:?}");
        assert_eq!(spec.service_account_name.as_deref(), Some("silo-api"));
        let c = &spec.containers[0];
        assert_eq!(
            c.args.as_deref().unwrap(),
            ["api", "--config", "/etc/silo/config.yaml"]
        );
        let port = c.ports.as_ref().unwrap()[0].clone();
        assert_eq!(
            (port.name.as_deref(), port.container_port),
            (Some("http"), 8081)
        );
        let svc = find(&objs, "Service", "silo-api");
        assert_eq!(svc["spec"]["ports"][0]["port"], json!(8081));
        assert_eq!(svc["spec"]["ports"][0]["targetPort"], json!("http"));
        // The reseller-facing API never holds rights beyond the silo.dev kinds (no secrets,
        // no namespaces): those stay with the operator.
        let grants = rule_grants(find(&objs, "ClusterRole", "silo-api")).unwrap();
        assert!(!grants.is_empty());
        for (g, r, v) in &grants {
            assert_eq!(g, "silo.dev", "{origin}: API granted {g}/{r} {v}");
        }
        let b = find(&objs, "ClusterRoleBinding", "silo-api");
        assert_eq!(b["roleRef"]["name"], json!("silo-api"));
        assert_eq!(
            b["subjects"],
            json!([{"kind": "ServiceAccount", "name": "silo-api", "namespace": "silo-system"}])
        );
    }
}

/// Keys of `values` that the schema (with `additionalProperties: false`) does not declare.
fn undeclared_values(values: &Value, schema: &Value, at: &str, out: &mut Vec<String>) {
    let (Some(vals), Some(props)) = (values.as_object(), schema["properties"].as_object()) else {
        return;
    };
    for (k, v) in vals {
        let here = format!("{at}.{k}");
        match props.get(k) {
            Some(s) => {
                let s = match s["$ref"].as_str() {
                    Some(r) => {
                        let name = r.trim_start_matches("#/definitions/");
                        &schema_root()["definitions"][name]
                    }
                    None => s,
                };
                undeclared_values(v, s, &here, out);
            }
            None if schema["additionalProperties"] == json!(false) => out.push(here),
            None => {}
        }
    }
}

fn schema_root() -> &'static Value {
    static SCHEMA: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    SCHEMA.get_or_init(|| {
        serde_json::from_str(&read(&chart_dir().join("values.schema.json"))).unwrap()
    })
}

#[test]
fn values_schema_declares_every_value() {
    let mut out = Vec::new();
    undeclared_values(&chart_values(), schema_root(), "", &mut out);
    assert!(
        out.is_empty(),
        "values.yaml keys missing from values.schema.json: {out:?}"
    );
    // And it would catch a misspelt value.
    let mut out = Vec::new();
    undeclared_values(
        &json!({"replica": 3, "image": {"tags": "x"}}),
        schema_root(),
        "",
        &mut out,
    );
    assert_eq!(out, [".image.tags", ".replica"]);
    assert_eq!(
        schema_root()["properties"]["webhook"]["properties"]["failurePolicy"]["enum"],
        json!(["Fail", "Ignore"])
    );
}

/// The committed rendering by real Helm (charts/rendered/render.py) equals what the small
/// renderer of these tests produces, object for object. Two known differences are allowed:
/// the config checksum (a hash of toYaml text, which Helm formats slightly differently) and
/// the formatting of the config file (compared parsed).
#[test]
fn chart_renders_as_helm_does() {
    let regenerate = "regenerate with charts/rendered/render.py (see its header)";
    for (case, values) in [("default", json!({})), ("custom", custom_values())] {
        let helm_text = read(&root().join(format!("charts/rendered/{case}.yaml")));
        let helm = by_key(&parse_docs(case, &helm_text).unwrap());
        let mine = by_key(&render_chart(&values, "silo-system").unwrap());
        assert_eq!(
            helm.keys().collect::<Vec<_>>(),
            mine.keys().collect::<Vec<_>>(),
            "{case}: objects differ from Helm's rendering; {regenerate}"
        );
        let raw_helm = parse_docs(case, &helm_text).unwrap();
        let raw_mine = render_chart(&values, "silo-system").unwrap();
        for h in &raw_helm {
            let m = raw_mine.iter().find(|m| key(m) == key(h)).unwrap();
            let (hn, mn) = (normalise(h), normalise(m));
            if let Some(path) = first_difference(&hn, &mn, String::new())
                .or_else(|| first_difference(&mn, &hn, String::new()))
            {
                panic!(
                    "{case}: {:?} differs from Helm's rendering at {path}; {regenerate}",
                    key(h)
                );
            }
            // Labels and annotations too (normalise drops them for the kustomize comparison),
            // the config checksum aside.
            for p in ["/metadata", "/spec/template/metadata"] {
                let meta = |o: &Value| {
                    let mut m = o.pointer(p).cloned().unwrap_or(Value::Null);
                    if let Some(Value::Object(a)) = m.pointer_mut("/annotations") {
                        a.remove("checksum/config");
                    }
                    m
                };
                assert_eq!(
                    meta(h),
                    meta(m),
                    "{case}: {:?} at {p}; {regenerate}",
                    key(h)
                );
            }
            let checksum = "/spec/template/metadata/annotations/checksum~1config";
            assert_eq!(
                h.pointer(checksum).is_some(),
                m.pointer(checksum).is_some(),
                "{case}: {:?}",
                key(h)
            );
        }
    }
}

/// The Tenant YAML a platform engineer pastes from docs/install.md is valid (same engine as
/// the webhook: `silo plan`).
#[test]
fn install_doc_tenants_pass_silo_plan() {
    let doc = read(&root().join("docs/install.md"));
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in doc.lines() {
        match &mut current {
            None if line.starts_with("kubectl apply -f - <<'EOF'") => current = Some(String::new()),
            Some(text) if line == "EOF" => {
                blocks.push(std::mem::take(text));
                current = None;
            }
            Some(text) => {
                text.push_str(line);
                text.push('\n');
            }
            None => {}
        }
    }
    assert!(
        !blocks.is_empty(),
        "docs/install.md shows no Tenant to apply"
    );
    let tmp = tempfile::tempdir().unwrap();
    let paths: Vec<PathBuf> = blocks
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let p = tmp.path().join(format!("block{i}.yaml"));
            std::fs::write(&p, b).unwrap();
            p
        })
        .collect();
    let tree = silo::plan::run(
        &paths,
        false,
        silo::plan::OutputFormat::Tree,
        &PlatformConfig::default(),
    )
    .unwrap_or_else(|problems| panic!("{problems:?}"));
    assert!(tree.contains("acme-baltic (Siloed, depth 2)"), "{tree}");
}

#[test]
fn api_rbac_grants_exactly_the_apis_permissions() {
    let want: BTreeSet<Grant> = api_permissions::PERMISSIONS
        .iter()
        .flat_map(|p| {
            p.verbs.iter().map(move |v| {
                (
                    p.api_group.to_string(),
                    p.resource.to_string(),
                    v.to_string(),
                )
            })
        })
        .collect();
    let with_api = render_chart(&json!({"api": {"enabled": true}}), "silo-system").unwrap();
    for (origin, objs) in [("operator/api/", api_objects()), ("charts/silo", with_api)] {
        let got = rule_grants(find(&objs, "ClusterRole", "silo-api")).unwrap();
        assert_eq!(
            got, want,
            "{origin}: the ClusterRole silo-api must grant exactly src/api/permissions.rs"
        );
    }
    // Drift is caught: one verb more fails.
    let mut more = want.clone();
    more.insert(("silo.dev".into(), "tenants".into(), "update".into()));
    assert_ne!(more, want);
}

#[test]
fn api_probes_password_secret_and_ingress() {
    let with_api = render_chart(&custom_values(), "silo-system").unwrap();
    for (origin, objs) in [
        ("operator/api/", api_objects()),
        ("charts/silo", with_api.clone()),
    ] {
        let d = find(&objs, "Deployment", "silo-api");
        let c = &d["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(
            c["readinessProbe"]["httpGet"]["path"], "/readyz",
            "{origin}"
        );
        assert_eq!(
            c["livenessProbe"]["httpGet"]["path"], "/healthz",
            "{origin}"
        );
        let env = c["env"].as_array().unwrap();
        let pw = env
            .iter()
            .find(|e| e["name"] == "SILO_API_DATABASE_PASSWORD")
            .unwrap_or_else(|| panic!("{origin}: no SILO_API_DATABASE_PASSWORD"));
        assert_eq!(pw["valueFrom"]["secretKeyRef"]["name"], "silo-api-database");
    }
    let ing = find(&with_api, "Ingress", "silo-api");
    typed_roundtrip(ing).unwrap();
    assert_eq!(ing["spec"]["rules"][0]["host"], "api.reseller.example");
    assert_eq!(
        ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"],
        "silo-api"
    );
    assert_eq!(
        ing["metadata"]["annotations"]["cert-manager.io/cluster-issuer"],
        "letsencrypt"
    );
    let default = render_chart(&json!({"api": {"enabled": true}}), "silo-system").unwrap();
    assert!(!default.iter().any(|o| str_at(o, "/kind") == "Ingress"));
}

/// A 127.0.0.1 port nobody listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    port
}

/// Runs the built `silo` with the first container's args of Deployment `name`, the file named by
/// `--config` replaced by the installed ConfigMap's `config.yaml` (written to a temp dir), the
/// Kubernetes API server and the API database pointed at a closed port. Returns exit code and
/// stderr: the args parse with the binary's own clap definition and the shipped configuration
/// loads only if the command gets as far as its first outside dependency.
fn run_container(objs: &[Value], name: &str, config_yaml: &str) -> (Option<i32>, String, u16) {
    let d = find(objs, "Deployment", name);
    let spec = pod_spec(d);
    let c = &spec.containers[0];
    assert!(
        c.command.is_none(),
        "{name}: the image's entrypoint runs silo"
    );
    let mut args = c.args.clone().unwrap_or_default();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, config_yaml).unwrap();
    let at = args
        .iter()
        .position(|a| a == "--config")
        .unwrap_or_else(|| panic!("{name}: no --config in {args:?}"));
    let mounted = &args[at + 1];
    assert!(
        c.volume_mounts
            .iter()
            .flatten()
            .any(|m| Path::new(mounted).parent() == Some(Path::new(&m.mount_path))),
        "{name}: {mounted} is not on a mounted volume"
    );
    args[at + 1] = config.display().to_string();
    let port = closed_port();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster:\n    server: https://127.0.0.1:{port}\n    insecure-skip-tls-verify: true\nusers:\n- name: t\n  user:\n    token: x\ncontexts:\n- name: t\n  context:\n    cluster: t\n    user: t\ncurrent-context: t\n"
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_silo"))
        .args(&args)
        .env("KUBECONFIG", &kubeconfig)
        .env(
            "SILO_API_DATABASE_URL",
            format!("postgres://silo_api@127.0.0.1:{port}/silo_api"),
        )
        .env("SILO_API_DATABASE_PASSWORD", "pw")
        .env_remove("SILO_CONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        port,
    )
}

#[test]
fn deployments_start_the_binary_with_the_shipped_configuration() {
    let with_api = render_chart(&json!({"api": {"enabled": true}}), "silo-system").unwrap();
    let kust = operator_objects();
    for (origin, objs, config) in [
        ("operator/", kust.clone(), config_of(&kust)),
        ("charts/silo", with_api.clone(), config_of(&with_api)),
    ] {
        let (code, err, port) = run_container(&objs, "silo-operator", &config);
        assert_eq!(code, Some(1), "{origin}: {err}");
        assert_eq!(err.lines().count(), 1, "{origin}: one line: {err}");
        assert!(
            err.starts_with(&format!(
                "silo operator: cannot reach the Kubernetes API server at https://127.0.0.1:{port}"
            )),
            "{origin}: {err}"
        );
    }
    let api = api_objects();
    for (origin, objs, config) in [
        ("operator/api/", api, config_of(&kust)),
        ("charts/silo", with_api.clone(), config_of(&with_api)),
    ] {
        let (code, err, port) = run_container(&objs, "silo-api", &config);
        assert_eq!(code, Some(1), "{origin}: {err}");
        assert_eq!(err.lines().count(), 1, "{origin}: one line: {err}");
        assert!(
            err.starts_with(&format!(
                "silo api: cannot reach the API database at 127.0.0.1:{port}/silo_api"
            )),
            "{origin}: {err}"
        );
        assert!(
            !err.contains("pw"),
            "{origin}: the password never shows: {err}"
        );
    }
}
