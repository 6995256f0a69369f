//! The container image and the version it carries are named the same everywhere: the crate
//! version (Cargo.toml) is the chart's `appVersion`, the kustomize `images:` tag, the tag the
//! docs show and the Containerfile's default `VERSION` label; the image name is the same in the
//! kustomize bases, their Deployments and the chart; `silo --version` prints the version and the
//! git revision. Building the image itself is `scripts/build-image` (run by `.ci/run`).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The name `scripts/build-image` gives the image and the install manifests use by default.
const IMAGE: &str = "localhost/silo";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Every YAML document of a file, as JSON values.
fn yaml_docs(rel: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_norway::Deserializer::from_str(&read(rel))
        .map(|d| {
            let v = serde_norway::Value::deserialize(d).unwrap_or_else(|e| panic!("{rel}: {e}"));
            serde_json::to_value(v).unwrap_or_else(|e| panic!("{rel}: {e}"))
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn yaml(rel: &str) -> Value {
    yaml_docs(rel).remove(0)
}

/// Every `localhost/silo:TAG` (or `…/silo:TAG` with TAG a version) written in a text.
fn image_tags(text: &str) -> Vec<String> {
    let mut tags = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("silo:") {
        let after = &rest[i + "silo:".len()..];
        let tag: String = after
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || ".-_".contains(*c))
            .collect();
        let before = rest[..i].chars().last();
        if tag.starts_with(|c: char| c.is_ascii_digit()) && before == Some('/') {
            tags.push(tag);
        }
        rest = after;
    }
    tags
}

#[test]
fn the_chart_kustomize_and_containerfile_carry_the_crate_version() {
    let chart = yaml("charts/silo/Chart.yaml");
    assert_eq!(
        chart["appVersion"],
        Value::from(VERSION),
        "charts/silo/Chart.yaml appVersion"
    );

    let values = yaml("charts/silo/values.yaml");
    assert_eq!(values["image"]["repository"], Value::from(IMAGE));
    assert_eq!(
        values["image"]["tag"],
        Value::from(""),
        "an empty image.tag means the chart's appVersion: keep it empty so the two cannot differ"
    );

    for (kustomization, manifest) in [
        ("operator/kustomization.yaml", "operator/deployment.yaml"),
        ("operator/api/kustomization.yaml", "operator/api/api.yaml"),
    ] {
        let k = yaml(kustomization);
        let images = k["images"].as_array().expect("an images: list");
        assert_eq!(images.len(), 1, "{kustomization}: one images: entry");
        assert_eq!(images[0]["name"], Value::from(IMAGE), "{kustomization}");
        assert_eq!(images[0]["newTag"], Value::from(VERSION), "{kustomization}");
        assert!(
            images[0].get("newName").is_none(),
            "{kustomization}: no newName by default"
        );
        let docs = yaml_docs(manifest);
        let containers: Vec<&Value> = docs
            .iter()
            .filter_map(|d| d.pointer("/spec/template/spec/containers"))
            .filter_map(Value::as_array)
            .flatten()
            .collect();
        assert!(!containers.is_empty(), "{manifest}: no containers found");
        for c in containers {
            assert_eq!(
                c["image"],
                Value::from(format!("{IMAGE}:{VERSION}")),
                "{manifest}"
            );
        }
    }

    let containerfile = read("Containerfile");
    for line in [
        format!("ARG VERSION={VERSION}"),
        format!("ARG SOURCE={}", env!("CARGO_PKG_REPOSITORY")),
        format!(
            "org.opencontainers.image.licenses=\"{}\"",
            env!("CARGO_PKG_LICENSE")
        ),
    ] {
        assert!(
            containerfile.contains(&line),
            "Containerfile: expected `{line}` (the crate's metadata in Cargo.toml)"
        );
    }
}

#[test]
fn the_docs_name_the_crate_version_and_no_published_image() {
    for doc in ["docs/install.md", "README.md"] {
        let text = read(doc);
        let tags = image_tags(&text);
        assert!(
            tags.iter().all(|t| t == VERSION),
            "{doc}: image tags {tags:?}, expected only {VERSION}"
        );
        assert!(
            !text.contains("ghcr.io/silo-dev"),
            "{doc}: names ghcr.io/silo-dev, an image that was never published"
        );
    }
    let install = read("docs/install.md");
    assert!(
        image_tags(&install).len() >= 2,
        "docs/install.md shows how to build and set the image with its tag"
    );
    for needle in [
        "scripts/build-image",
        "Containerfile",
        "image.repository",
        "kustomize edit set image",
    ] {
        assert!(
            install.contains(needle),
            "docs/install.md: explain `{needle}`"
        );
    }
}

#[test]
fn the_tag_finder_reads_image_references() {
    // Positive and negative cases of the helper the docs test relies on.
    assert_eq!(
        image_tags("a localhost/silo:0.1.0 and registry.example.com/x/silo:1.2.3-rc.1,"),
        ["0.1.0", "1.2.3-rc.1"]
    );
    assert!(image_tags("`silo: plan`, silo:latest, silo-system:8080, /silo:x").is_empty());
}

#[test]
fn version_prints_the_version_and_the_git_revision() {
    let out = Command::new(env!("CARGO_BIN_EXE_silo"))
        .arg("--version")
        .output()
        .expect("run silo --version");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    // build.rs: SILO_GIT_REVISION, or `git rev-parse HEAD` in release-like profiles, or
    // "unknown"; it hands the same value to every target of the package, this test included.
    let revision = env!("SILO_GIT_REVISION");
    // Test builds enable `test-support` (the dev-dependency on the crate itself), and the
    // binary says the test doubles are in it; the image build checks the opposite.
    assert_eq!(text, format!("silo {VERSION} ({revision}) +test-support\n"));
    assert!(
        revision == "unknown" || revision.len() >= 7,
        "revision {revision:?}: a commit id or \"unknown\""
    );
}

#[test]
fn the_build_context_holds_what_cargo_needs() {
    // .dockerignore is an allow-list: every file cargo reads to build the binary must pass it,
    // or `docker build` fails (or, worse, builds something else).
    let ignore = read(".dockerignore");
    let allowed: Vec<&str> = ignore
        .lines()
        .filter_map(|l| l.strip_prefix('!'))
        .map(|l| l.trim_end_matches('/'))
        .collect();
    assert!(
        ignore.lines().any(|l| l.trim() == "*"),
        "starts from excluding everything"
    );
    for needed in ["Cargo.toml", "Cargo.lock", "build.rs", "src", "benches"] {
        assert!(
            allowed.contains(&needed),
            ".dockerignore must let {needed} into the build context"
        );
        assert!(Path::new(&root().join(needed)).exists(), "{needed} exists");
    }
}
