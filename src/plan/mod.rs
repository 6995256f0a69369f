//! `silo plan`: read objects from files, analyse the tree, print it or what it renders to.

pub mod load;
pub mod output;

use std::path::PathBuf;

use crate::config::PlatformConfig;
use crate::hierarchy::{EngineSettings, TenantTree};

pub use load::InputProblem;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    Tree,
    Yaml,
    Json,
}

/// Loads and validates everything under `paths`. On success the rendered output; otherwise
/// every problem found (input and tree), one per line, each naming file, object and field.
pub fn run(
    paths: &[PathBuf],
    recursive: bool,
    format: OutputFormat,
    cfg: &PlatformConfig,
) -> Result<String, Vec<InputProblem>> {
    let (tree, problems) = analyse(paths, recursive, cfg);
    if !problems.is_empty() {
        return Err(problems);
    }
    let rendered = match format {
        OutputFormat::Tree => Ok(output::tree_text(&tree, cfg)),
        OutputFormat::Yaml => output::yaml(&tree, cfg).map_err(|e| e.to_string()),
        OutputFormat::Json => output::json(&tree, cfg).map_err(|e| e.to_string()),
    };
    rendered.map_err(|reason| {
        vec![InputProblem {
            file: "-".into(),
            object: "-".into(),
            field: "-".into(),
            reason: format!("cannot print the plan: {reason}"),
        }]
    })
}

/// Loads the files and builds the tree; returns the tree and all problems, sorted by file.
pub fn analyse(
    paths: &[PathBuf],
    recursive: bool,
    cfg: &PlatformConfig,
) -> (TenantTree, Vec<InputProblem>) {
    let mut problems = Vec::new();
    let files = load::expand(paths, recursive, &mut problems);
    if files.is_empty() && problems.is_empty() {
        problems.push(InputProblem {
            file: paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            object: "-".into(),
            field: "-".into(),
            reason: "no .yaml, .yml or .json files found".into(),
        });
    }
    let mut loaded = load::load(&files, &mut problems);
    let mut tree_problems: Vec<(String, InputProblem)> = Vec::new();
    let tree = TenantTree::build(
        std::mem::take(&mut loaded.inventory),
        EngineSettings::from(cfg),
    );
    for p in tree.problems() {
        let file = loaded.file_of(p.object, p.index).to_string();
        tree_problems.push((
            file.clone(),
            InputProblem {
                file,
                object: format!("{}/{}", p.object, p.name),
                field: p.field.clone(),
                reason: p.reason.clone(),
            },
        ));
    }
    tree_problems.sort_by(|a, b| a.0.cmp(&b.0));
    problems.extend(tree_problems.into_iter().map(|(_, p)| p));
    (tree, problems)
}
