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

/// `--config bad.yaml` — a missing file, a file that is not YAML, a field of the wrong type — for
/// every command that reads the platform configuration: one line on stderr, prefixed by the
/// command, naming the file (and the field), exit code 1, before anything touches a cluster or a
/// database (none is reachable here). There is no separate `silo webhook` command: the webhook
/// is served by `silo operator`.
#[test]
fn bad_config_file_gives_one_line_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let kc = kubeconfig(dir.path(), &format!("https://127.0.0.1:{}", closed_port()));
    let missing = dir.path().join("missing.yaml");
    let not_yaml = dir.path().join("bad.yaml");
    std::fs::write(&not_yaml, "maxDepth: [7\nplatformNamespace: : x\n").unwrap();
    let wrong_type = dir.path().join("wrong.yaml");
    std::fs::write(&wrong_type, "maxDepth: many\n").unwrap();
    let commands: [(&str, &[&str]); 3] = [
        (
            "silo operator",
            &["operator", "--metrics-addr", "127.0.0.1:0"],
        ),
        ("silo api", &["api", "--addr", "127.0.0.1:0"]),
        (
            "silo token create",
            &["token", "create", "--tenant", "t", "--role", "admin"],
        ),
    ];
    for (prefix, args) in commands {
        for (file, want) in [
            (&missing, "cannot read config file"),
            (&not_yaml, "not valid YAML"),
            (&wrong_type, "maxDepth"),
        ] {
            let out = Command::new(env!("CARGO_BIN_EXE_silo"))
                .args(args)
                .arg("--config")
                .arg(file)
                .env("KUBECONFIG", &kc)
                .env("SILO_API_DATABASE_URL", "postgres://silo@127.0.0.1:1/silo")
                .env_remove("SILO_CONFIG")
                .env_remove("KUBERNETES_SERVICE_HOST")
                .output()
                .unwrap();
            let err = String::from_utf8(out.stderr).unwrap();
            let what = format!("{prefix} --config {}: {err}", file.display());
            assert_eq!(out.status.code(), Some(1), "{what}");
            assert_eq!(err.lines().count(), 1, "one line: {what}");
            assert!(err.starts_with(&format!("{prefix}: ")), "{what}");
            assert!(
                err.contains(&file.display().to_string()),
                "names the file: {what}"
            );
            assert!(err.contains(want), "{what}");
            assert!(!err.contains("panicked"), "{what}");
        }
    }
}
