//! `silo api` against a real API server (envtest) with the admission webhook of a running
//! `silo operator`: the real binary, with the kubeconfig of the ServiceAccount
//! `silo-system/silo-api` bound by the ClusterRole of `operator/api/api.yaml`, and a throwaway
//! PostgreSQL for its tokens.
//!
//! - Its writes carry the field manager `silo-api` (creation and server-side apply), none of
//!   its requests is forbidden by that ClusterRole (the API server's audit log), and a denial
//!   that only the webhook makes comes back as the same 4xx with the webhook's own message.
//! - The README's curl walkthrough (section "Walkthrough") runs as written with bash against it.

mod envtest_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use kube::ResourceExt;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

use envtest_support::platform::pg_support::PgServer;
use envtest_support::platform::{Platform, PlatformOptions};
use envtest_support::{Identity, Mark, free_port, repo_root, spawn_tied, tail};
use silo::types::Tenant;

const API_NAMESPACE: &str = "silo-system";
const API_SERVICE_ACCOUNT: &str = "silo-api";

/// Applies the API's ServiceAccount, ClusterRole and ClusterRoleBinding from
/// `operator/api/api.yaml` as installed (its Deployment aside: envtest runs no pods).
async fn install_api_rbac(p: &Platform) {
    let yaml = std::fs::read_to_string(repo_root().join("operator/api/api.yaml"))
        .expect("read operator/api/api.yaml");
    let mut kinds = Vec::new();
    for doc in serde_norway::Deserializer::from_str(&yaml) {
        let v: Value = serde::Deserialize::deserialize(doc).expect("operator/api/api.yaml parses");
        if v.is_null() || v["kind"] == "Deployment" || v["kind"] == "Service" {
            continue;
        }
        kinds.push(p.env.apply_value(v).await);
    }
    for kind in ["ServiceAccount", "ClusterRole", "ClusterRoleBinding"] {
        assert!(kinds.iter().any(|(k, _)| k == kind), "{kinds:?}");
    }
}

/// The environment of every `silo` process of these tests: the API database and the
/// kubeconfig of the API's ServiceAccount.
fn silo_env(pg: &PgServer, kubeconfig: &Path) -> Vec<(String, String)> {
    vec![
        (
            "SILO_API_DATABASE_URL".into(),
            format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port),
        ),
        ("SILO_API_DATABASE_PASSWORD".into(), pg.password.clone()),
        ("KUBECONFIG".into(), kubeconfig.display().to_string()),
    ]
}

/// A running `silo api` (killed on drop; its log printed when a test fails).
struct SiloApi {
    child: Child,
    base: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl SiloApi {
    async fn spawn(env: &[(String, String)], config_yaml: &str) -> SiloApi {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("config.yaml");
        std::fs::write(&config, config_yaml).expect("write config");
        let port = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_silo"));
        cmd.args(["api", "--addr", &format!("127.0.0.1:{port}"), "--config"])
            .arg(&config)
            .env_remove("SILO_CONFIG")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env("RUST_LOG", "info,kube_client::client::builder=off");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let log = dir.path().join("api.log");
        let child = spawn_tied(&mut cmd, &log);
        let mut api = SiloApi {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
            _dir: dir,
        };
        api.wait_ready().await;
        api
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let http = reqwest::Client::new();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("silo api exited ({status}):\n{}", tail(&self.log, 40));
            }
            if let Ok(r) = http.get(format!("{}/readyz", self.base)).send().await
                && r.status().is_success()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "silo api not ready:\n{}",
                tail(&self.log, 40)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for SiloApi {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- silo api log ---\n{}", tail(&self.log, 40));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `silo token create …` with `env`: the token (the last line of its output).
fn mint(env: &[(String, String)], tenant: &str, role: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_silo"))
        .args(["token", "create", "--tenant", tenant, "--role", role])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env_remove("SILO_CONFIG")
        .output()
        .expect("run silo token create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .last()
        .expect("a token line")
        .to_string()
}

async fn call(
    http: &reqwest::Client,
    api: &SiloApi,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = http
        .request(method, format!("{}{path}", api.base))
        .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// The managers (and operations) in a Tenant's managedFields.
fn managers(t: &Tenant) -> Vec<(String, String)> {
    t.managed_fields()
        .iter()
        .map(|m| {
            (
                m.manager.clone().unwrap_or_default(),
                m.operation.clone().unwrap_or_default(),
            )
        })
        .collect()
}

const FIXTURE: &str = r#"
apiVersion: silo.dev/v1alpha1
kind: Tenant
metadata: {name: north}
spec: {limits: {subtenants: 10}}
---
apiVersion: silo.dev/v1alpha1
kind: Tenant
metadata: {name: dealer}
spec: {parent: north}
"#;

/// The platform (operator with its webhook, `maxDepth: 3`), the API's RBAC, a PostgreSQL, and
/// the fixture tree.
async fn platform(max_depth: u32) -> Option<(Platform, PgServer, PathBuf)> {
    let p = Platform::start(PlatformOptions {
        webhook: true,
        extra_config: format!("maxDepth: {max_depth}\n"),
        ..Default::default()
    })
    .await?;
    install_api_rbac(&p).await;
    p.apply(FIXTURE).await;
    let pg = PgServer::start().await;
    let kubeconfig = p
        .env
        .kubeconfig(&Identity::service_account(
            API_NAMESPACE,
            API_SERVICE_ACCOUNT,
        ))
        .await;
    Some((p, pg, kubeconfig))
}

fn api_user() -> String {
    Identity::service_account(API_NAMESPACE, API_SERVICE_ACCOUNT).username()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_writes_as_its_service_account_and_passes_webhook_denials_back() {
    // The operator's webhook allows three levels; this API is configured for seven (in an
    // install both read the same ConfigMap: the mismatch makes a write that only the webhook
    // refuses, so that its answer is what the API passes back).
    let Some((p, pg, kubeconfig)) = platform(3).await else {
        return;
    };
    let mark = Mark::default();
    let env = silo_env(&pg, &kubeconfig);
    let api = SiloApi::spawn(&env, "maxDepth: 7\n").await;
    let token = mint(&env, "north", "admin");
    let http = reqwest::Client::new();
    let tenants: Api<Tenant> = Api::all(p.admin());
    use reqwest::Method;

    // Creation: a `create` by silo-api.
    let (s, b) = call(
        &http,
        &api,
        Method::POST,
        "/v1/tenants",
        &token,
        Some(json!({"name": "shop", "parent": "dealer", "displayName": "Shop"})),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let shop = tenants.get("shop").await.expect("shop was created");
    assert_eq!(shop.spec.parent.as_deref(), Some("dealer"));
    assert!(
        managers(&shop).contains(&("silo-api".into(), "Update".into())),
        "{:?}",
        managers(&shop)
    );
    // A change: server-side apply by silo-api.
    let (s, b) = call(
        &http,
        &api,
        Method::POST,
        "/v1/tenants/shop/members",
        &token,
        Some(json!({"user": "tech@shop.example", "role": "technician"})),
    )
    .await;
    assert!(s == 200 || s == 201, "{s} {b}");
    let shop = tenants.get("shop").await.unwrap();
    assert!(
        managers(&shop).contains(&("silo-api".into(), "Apply".into())),
        "{:?}",
        managers(&shop)
    );
    assert_eq!(shop.spec.members[0].user, "tech@shop.example");
    for (path, body) in [
        (
            "/v1/limit-profiles",
            json!({"name": "north-small", "owner": "north", "limits": {"devices": 5}}),
        ),
        (
            "/v1/channels",
            json!({"name": "north-tel", "owner": "north"}),
        ),
    ] {
        let (s, b) = call(&http, &api, Method::POST, path, &token, Some(body)).await;
        assert_eq!(s, 201, "{path}: {b}");
    }

    // Below shop is the fourth level: the API's own check (maxDepth 7) admits it, the
    // webhook (maxDepth 3) refuses it. The API answers with the webhook's code, reason and
    // message, exactly what the API server returns to a direct create of the same object.
    let deep = json!({"name": "shop-floor", "parent": "shop"});
    let direct: Tenant = serde_json::from_value(json!({
        "apiVersion": "silo.dev/v1alpha1", "kind": "Tenant",
        "metadata": {"name": "shop-floor"}, "spec": {"parent": "shop"},
    }))
    .unwrap();
    let refused = match tenants
        .create(
            &PostParams {
                dry_run: true,
                ..Default::default()
            },
            &direct,
        )
        .await
    {
        Err(kube::Error::Api(s)) => s,
        other => panic!("the webhook admitted a fourth level: {other:?}"),
    };
    let webhook_message = refused
        .message
        .split_once("denied the request: ")
        .map(|(_, m)| m.to_string())
        .unwrap_or_else(|| panic!("not the webhook's denial: {}", refused.message));
    let (s, b) = call(&http, &api, Method::POST, "/v1/tenants", &token, Some(deep)).await;
    assert_eq!(s, refused.code, "{b}");
    assert!((400..500).contains(&s), "{s}");
    assert_eq!(b["error"], "TooDeep", "{b}");
    assert_eq!(b["message"], webhook_message, "{b}");
    assert!(tenants.get_opt("shop-floor").await.unwrap().is_none());
    // Positive control on the same parent: a third-level sibling of shop is admitted.
    let (s, b) = call(
        &http,
        &api,
        Method::POST,
        "/v1/tenants",
        &token,
        Some(json!({"name": "shop-2", "parent": "dealer"})),
    )
    .await;
    assert_eq!(s, 201, "{b}");

    // Suspend, resume, delete (Retain, no children): every write allowed by the ClusterRole.
    for (method, path) in [
        (Method::POST, "/v1/tenants/shop/suspend"),
        (Method::POST, "/v1/tenants/shop/resume"),
        (Method::DELETE, "/v1/tenants/shop-2"),
    ] {
        let (s, b) = call(&http, &api, method, path, &token, None).await;
        assert_eq!(s, 200, "{path}: {b}");
    }

    let audit = p.env.audit();
    let writes = audit.writes_by(&api_user(), mark);
    for (verb, resource) in [
        ("create", "tenants"),
        ("patch", "tenants"),
        ("delete", "tenants"),
        ("create", "limitprofiles"),
        ("create", "channels"),
    ] {
        assert!(
            writes
                .iter()
                .any(|e| e.verb == verb && e.resource == resource),
            "no {verb} {resource} by {} in the audit log: {:#?}",
            api_user(),
            writes.iter().map(|e| e.describe()).collect::<Vec<_>>()
        );
    }
    let forbidden = audit.forbidden_for(&api_user(), mark);
    assert!(
        forbidden.is_empty(),
        "{:#?}",
        forbidden.iter().map(|e| e.describe()).collect::<Vec<_>>()
    );
    drop(api);
}

/// The shell block of the README's "Walkthrough" section, verbatim.
fn readme_walkthrough() -> String {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    let section = readme
        .split_once("### Walkthrough")
        .expect("README has a Walkthrough section")
        .1;
    let block = section
        .split_once("```sh\n")
        .expect("a sh block in the Walkthrough")
        .1;
    block
        .split_once("```")
        .expect("the sh block ends")
        .0
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_walkthrough_runs_as_written() {
    let Some((p, pg, kubeconfig)) = platform(7).await else {
        return;
    };
    let script = readme_walkthrough();
    // Only the lines that name the reader's own database and address change: each is in the
    // README exactly as given here.
    let port = free_port();
    let mut run = script.clone();
    for (line, with) in [
        (
            "export SILO_API_DATABASE_URL=postgres://silo_api@db.example:5432/silo_api",
            format!(
                "export SILO_API_DATABASE_URL=postgres://postgres@127.0.0.1:{}/postgres",
                pg.port
            ),
        ),
        (
            "export SILO_API_DATABASE_PASSWORD=…",
            format!("export SILO_API_DATABASE_PASSWORD='{}'", pg.password),
        ),
        (
            "API=http://127.0.0.1:8081",
            format!("API=http://127.0.0.1:{port}"),
        ),
    ] {
        assert!(
            script.lines().any(|l| l == line),
            "the README walkthrough no longer has the line {line:?}"
        );
        run = run.replace(line, &with);
    }
    // Every curl must succeed (a 4xx/5xx stops the script); `silo api &` is stopped at the end.
    let prelude = "set -euo pipefail\n\
        trap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n\
        curl() { case \" $* \" in *' -sf '*|*' -f '*) command curl \"$@\" ;; \
        *) command curl --fail-with-body \"$@\"; echo ;; esac; }\n";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("walkthrough.sh");
    std::fs::write(&path, format!("{prelude}{run}")).unwrap();
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_silo")).parent().unwrap();
    let search_path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = tokio::task::spawn_blocking(move || {
        Command::new("timeout")
            .args(["180", "bash"])
            .arg(&path)
            .current_dir(path.parent().unwrap())
            .env("PATH", search_path)
            .env("KUBECONFIG", &kubeconfig)
            .env("SILO_API_ADDR", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "warn")
            .env_remove("SILO_CONFIG")
            .env_remove("SILO_API_DATABASE_URL")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .output()
            .expect("run bash")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the walkthrough failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    // What each step printed.
    let json_lines: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("level").is_none())
        .collect();
    let has = |f: &dyn Fn(&Value) -> bool| json_lines.iter().any(f);
    assert!(
        has(&|v| v["name"] == "dealer-7" && v["spec"]["parent"] == "north"),
        "create: {stdout}"
    );
    assert!(
        has(&|v| v["name"] == "north"
            && v["children"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["name"] == "dealer-7"))),
        "tree: {stdout}"
    );
    assert!(has(&|v| v.get("counts").is_some()), "usage: {stdout}");
    assert!(
        has(&|v| v["token"].as_str().is_some_and(|t| t.starts_with("silo_"))),
        "token: {stdout}"
    );
    // And in the cluster: dealer-7 with its member, resumed, written by silo-api.
    let t = Api::<Tenant>::all(p.admin()).get("dealer-7").await.unwrap();
    assert_eq!(t.spec.parent.as_deref(), Some("north"));
    assert_eq!(t.spec.display_name, "Dealer 7");
    assert_eq!(t.spec.limits.devices, Some(500));
    assert!(!t.spec.suspended);
    assert!(
        t.spec
            .members
            .iter()
            .any(|m| m.user == "tech@dealer7.example" && m.role == "technician"),
        "{:?}",
        t.spec.members
    );
    assert!(managers(&t).iter().any(|(m, _)| m == "silo-api"));
    // The dealer's token was revoked; the onboarding token was not.
    let db = pg.superuser().await;
    let rows = db
        .query(
            "SELECT tenant, revoked_at IS NOT NULL FROM api_tokens ORDER BY created_at",
            &[],
        )
        .await
        .unwrap();
    let tokens: Vec<(String, bool)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        tokens,
        vec![("north".to_string(), false), ("dealer-7".to_string(), true)]
    );
    let refused = p.env.audit().forbidden_for(&api_user(), Mark::default());
    assert!(refused.is_empty(), "{refused:#?}");
}
