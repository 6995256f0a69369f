//! Peak memory and wall time of building + validating a 100,000-tenant 7-level tree
//! (input objects included). Run: `cargo bench --bench engine_memory`.

use std::time::Instant;

use silo::hierarchy::{EngineSettings, TenantTree, synthetic};

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: run either way.
    let n = 100_000;
    let before = peak_rss_mib().unwrap_or(0.0);
    let inventory = synthetic::tree(n, 7);
    let after_input = peak_rss_mib().unwrap_or(0.0);
    let start = Instant::now();
    let tree = TenantTree::build(inventory, EngineSettings::default());
    let elapsed = start.elapsed();
    let after_build = peak_rss_mib().unwrap_or(0.0);
    assert!(tree.problems().is_empty(), "generated tree must be valid");
    println!("engine_memory: {n} tenants, depth 7");
    println!("  build+validate: {:.1} ms", elapsed.as_secs_f64() * 1000.0);
    println!(
        "  peak RSS: {after_build:.1} MiB (process start {before:.1} MiB, after generating input {after_input:.1} MiB)"
    );
}
