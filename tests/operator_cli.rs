//! `silo operator` without a reachable cluster: one clear line, no panic.

use std::net::TcpListener;
use std::process::Command;

fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    port
}

fn kubeconfig(dir: &std::path::Path, server: &str) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: {server}
    insecure-skip-tls-verify: true
users:
- name: test
  user:
    token: not-a-real-token
contexts:
- name: test
  context:
    cluster: test
    user: test
current-context: test
"
        ),
    )
    .unwrap();
    path
}

fn run_operator(kubeconfig: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_silo"))
        .args(["operator", "--metrics-addr", "127.0.0.1:0"])
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_BACKTRACE", "1")
        .env_remove("SILO_CONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap()
}

#[test]
fn unreachable_cluster_gives_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let port = closed_port();
    let kc = kubeconfig(dir.path(), &format!("https://127.0.0.1:{port}"));
    let out = run_operator(&kc);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "exactly one line: {stderr}");
    let line = lines[0];
    assert!(
        line.starts_with(&format!(
            "silo operator: cannot reach the Kubernetes API server at https://127.0.0.1:{port}"
        )),
        "{line}"
    );
    assert!(line.to_lowercase().contains("refused"), "{line}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.trim().is_empty(),
        "nothing else is printed: {stdout}"
    );
}

#[test]
fn missing_kubeconfig_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_operator(&dir.path().join("absent"));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "exactly one line: {stderr}");
    assert!(
        lines[0].starts_with("silo operator: no Kubernetes configuration:"),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains("absent"), "names the file: {}", lines[0]);
    assert!(!stderr.contains("panicked"), "{stderr}");
}
