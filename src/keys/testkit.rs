//! Test kit for key providers: the behaviour suite every [`KeyProvider`] must pass, and a
//! harness that runs the `moto` KMS emulator on 127.0.0.1.
//!
//! The suite is written once as async functions over `&dyn KeyProvider`; `tests/keys_local.rs`
//! and `tests/keys_kms.rs` run each of them against both providers (the operator's tests may reuse
//! them). Functions panic with a message on failure, like assertions. Tenant names are derived
//! from a `prefix`, so several suite functions can share one provider.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{KeyContext, KeyError, KeyProvider, KeyState, TenantKeySpec};

fn t(prefix: &str, name: &str) -> String {
    format!("{prefix}-{name}")
}

/// Creating is idempotent, also across a restart: `restart` opens a new provider over the same
/// backend (called after the key exists).
pub async fn create_is_idempotent<F, Fut>(p: &dyn KeyProvider, restart: F, prefix: &str)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = std::sync::Arc<dyn KeyProvider>>,
{
    let spec = TenantKeySpec::new(t(prefix, "a"))
        .with_parent(t(prefix, "root"))
        .with_rotation_days(30);
    let first = p.ensure_key(&spec).await.expect("first ensure_key");
    assert!(first.created, "first ensure_key must report created");
    assert_eq!(first.version, 1);
    assert_eq!(first.state, KeyState::Enabled);
    let again = p.ensure_key(&spec).await.expect("second ensure_key");
    assert!(!again.created, "second ensure_key must not create");
    assert_eq!(
        again.key_id, first.key_id,
        "second ensure_key made another key"
    );
    let restarted = restart().await;
    let after_restart = restarted
        .ensure_key(&spec)
        .await
        .expect("ensure after restart");
    assert!(!after_restart.created);
    assert_eq!(
        after_restart.key_id, first.key_id,
        "a restart made a second key"
    );
    let info = restarted.key_info(&spec.tenant).await.expect("key_info");
    assert_eq!(info.key_id, first.key_id);
}

/// Concurrent first calls still end with one key.
pub async fn concurrent_ensure_makes_one_key(p: &dyn KeyProvider, prefix: &str) {
    let spec = TenantKeySpec::new(t(prefix, "race"));
    let results = futures::future::join_all((0..4).map(|_| p.ensure_key(&spec))).await;
    let ids: Vec<String> = results
        .into_iter()
        .map(|r| r.expect("concurrent ensure_key").key_id)
        .collect();
    assert!(ids.iter().all(|id| id == &ids[0]), "several keys: {ids:?}");
    assert_eq!(
        p.key_info(&spec.tenant).await.expect("key_info").key_id,
        ids[0]
    );
}

/// Round trip; tenant and purpose are bound to the ciphertext; tampering is detected.
pub async fn round_trip_and_context_binding(p: &dyn KeyProvider, prefix: &str) {
    let a = t(prefix, "a");
    p.ensure_key(&TenantKeySpec::new(&a)).await.expect("ensure");
    let ctx = KeyContext::new(&a, "db-credentials");
    for msg in [&b"x"[..], &[7u8; 4096][..]] {
        let ct = p.encrypt(&ctx, msg).await.expect("encrypt");
        assert_eq!(p.decrypt(&ctx, &ct).await.expect("decrypt"), msg);
    }
    for len in [0, 4097] {
        let err = p
            .encrypt(&ctx, &vec![1u8; len])
            .await
            .expect_err("size limit");
        assert_eq!(
            err.to_string(),
            format!(
                "plaintext is {len} bytes; direct encryption takes 1..=4096 bytes (use envelope encryption for more)"
            )
        );
    }
    let ct = p.encrypt(&ctx, b"password").await.expect("encrypt");
    let err = p
        .decrypt(&KeyContext::new(&a, "mqtt-passwd"), &ct)
        .await
        .expect_err("other purpose must fail");
    assert!(matches!(err, KeyError::DecryptFailed { .. }), "{err}");
    let mut tampered = ct.clone();
    if let Some(last) = tampered.last_mut() {
        *last ^= 0x01;
    }
    let err = p
        .decrypt(&ctx, &tampered)
        .await
        .expect_err("tampered must fail");
    assert!(
        matches!(err, KeyError::DecryptFailed { .. } | KeyError::Kms { .. }),
        "{err}"
    );
    let err = p.decrypt(&ctx, b"\x7fgarbage").await.expect_err("garbage");
    assert!(err.to_string().contains("malformed ciphertext"), "{err}");
}

/// Tenant A's ciphertexts and wrapped data keys do not open under tenant B.
pub async fn cross_tenant_isolation(p: &dyn KeyProvider, prefix: &str) {
    let (a, b) = (t(prefix, "a"), t(prefix, "b"));
    p.ensure_key(&TenantKeySpec::new(&a))
        .await
        .expect("ensure a");
    let kb = p
        .ensure_key(&TenantKeySpec::new(&b))
        .await
        .expect("ensure b");
    let ka = p.key_info(&a).await.expect("info a");
    assert_ne!(ka.key_id, kb.key_id, "tenants share a key");
    let ctx_a = KeyContext::new(&a, "db");
    let ctx_b = KeyContext::new(&b, "db");
    let ct = p
        .encrypt(&ctx_a, b"tenant a secret")
        .await
        .expect("encrypt");
    let err = p
        .decrypt(&ctx_b, &ct)
        .await
        .expect_err("B must not decrypt A");
    assert!(
        err.to_string()
            .contains(&format!("not under tenant \"{b}\"'s current key")),
        "{err}"
    );
    let dk = p.generate_data_key(&ctx_a).await.expect("data key");
    let err = p
        .decrypt_data_key(&ctx_b, &dk.wrapped)
        .await
        .expect_err("B must not unwrap A's data key");
    assert!(matches!(err, KeyError::WrongKey { .. }), "{err}");
    // B's own data still works.
    let ctb = p.encrypt(&ctx_b, b"b").await.expect("encrypt b");
    assert_eq!(p.decrypt(&ctx_b, &ctb).await.expect("decrypt b"), b"b");
}

/// Rotation bumps the version; new writes use it; old ciphertexts still decrypt.
pub async fn rotation_keeps_old_ciphertexts(p: &dyn KeyProvider, prefix: &str) {
    let a = t(prefix, "a");
    let k1 = p.ensure_key(&TenantKeySpec::new(&a)).await.expect("ensure");
    let ctx = KeyContext::new(&a, "db");
    let old = p.encrypt(&ctx, b"before").await.expect("encrypt v1");
    let old_dk = p.generate_data_key(&ctx).await.expect("data key v1");
    let k2 = p.rotate(&a).await.expect("rotate");
    assert_eq!(k2.key_id, k1.key_id, "rotation keeps the key id");
    assert_eq!(k2.version, k1.version + 1);
    assert!(k2.rotated_at.is_some(), "rotated_at not recorded");
    assert_eq!(p.key_info(&a).await.expect("info").version, k2.version);
    let new = p.encrypt(&ctx, b"after").await.expect("encrypt v2");
    assert_eq!(
        p.decrypt(&ctx, &old).await.expect("old decrypts"),
        b"before"
    );
    assert_eq!(p.decrypt(&ctx, &new).await.expect("new decrypts"), b"after");
    assert_eq!(
        p.decrypt_data_key(&ctx, &old_dk.wrapped)
            .await
            .expect("old data key"),
        old_dk.plaintext
    );
    let re = p.rewrap(&ctx, &old).await.expect("rewrap");
    assert_eq!(p.decrypt(&ctx, &re).await.expect("rewrapped"), b"before");
    let dk = p.generate_data_key(&ctx).await.expect("data key v2");
    assert_eq!(dk.version, k2.version);
}

/// Envelope encryption: a random data key plus its wrapped form, unwrap needs the same context.
pub async fn data_keys_are_wrapped(p: &dyn KeyProvider, prefix: &str) {
    let a = t(prefix, "a");
    let k = p.ensure_key(&TenantKeySpec::new(&a)).await.expect("ensure");
    let ctx = KeyContext::new(&a, "secrets");
    let d1 = p.generate_data_key(&ctx).await.expect("data key 1");
    let d2 = p.generate_data_key(&ctx).await.expect("data key 2");
    assert_ne!(d1.plaintext, d2.plaintext, "data keys must be random");
    assert_eq!(d1.key_id, k.key_id);
    assert!(
        !d1.wrapped.windows(32).any(|w| w == d1.plaintext),
        "wrapped key contains the plaintext key"
    );
    assert_eq!(
        p.decrypt_data_key(&ctx, &d1.wrapped).await.expect("unwrap"),
        d1.plaintext
    );
    let err = p
        .decrypt_data_key(&KeyContext::new(&a, "other"), &d1.wrapped)
        .await
        .expect_err("other purpose");
    assert!(matches!(err, KeyError::DecryptFailed { .. }), "{err}");
}

/// Shredding refuses every use at once and reports the deletion time; repeating it is answered.
pub async fn shred_refuses_immediately(p: &dyn KeyProvider, prefix: &str, window_days: u32) {
    let a = t(prefix, "a");
    let k = p.ensure_key(&TenantKeySpec::new(&a)).await.expect("ensure");
    let ctx = KeyContext::new(&a, "db");
    let ct = p.encrypt(&ctx, b"to be shredded").await.expect("encrypt");
    let dk = p.generate_data_key(&ctx).await.expect("data key");
    let before = OffsetDateTime::now_utc();
    let r = p.shred(&a).await.expect("shred");
    assert_eq!(r.key_id, k.key_id);
    let window = time::Duration::days(i64::from(window_days));
    let slack = time::Duration::days(1);
    assert!(
        r.delete_after >= before + window - slack && r.delete_after <= before + window + slack,
        "delete_after {} is not about {window_days} days from now",
        r.delete_after
    );
    let err = p.decrypt(&ctx, &ct).await.expect_err("decrypt after shred");
    assert!(
        matches!(
            err,
            KeyError::Unavailable {
                state: KeyState::PendingDeletion,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("PendingDeletion"), "{err}");
    let err = p
        .decrypt_data_key(&ctx, &dk.wrapped)
        .await
        .expect_err("data key after shred");
    assert!(matches!(err, KeyError::Unavailable { .. }), "{err}");
    let err = p
        .encrypt(&ctx, b"x")
        .await
        .expect_err("encrypt after shred");
    assert!(matches!(err, KeyError::NotFound { .. }), "{err}");
    let err = p
        .generate_data_key(&ctx)
        .await
        .expect_err("data key after shred");
    assert!(matches!(err, KeyError::NotFound { .. }), "{err}");
    let err = p.rotate(&a).await.expect_err("rotate after shred");
    assert!(matches!(err, KeyError::NotFound { .. }), "{err}");
    let err = p.key_info(&a).await.expect_err("info after shred");
    assert_eq!(err.to_string(), format!("tenant \"{a}\" has no key"));
    let again = p.shred(&a).await.expect("second shred");
    assert_eq!(again.key_id, r.key_id);
}

/// A tenant recreated with the same name gets a new key; the old data stays unreadable.
pub async fn recreate_after_shred_gets_new_key(p: &dyn KeyProvider, prefix: &str) {
    let a = t(prefix, "a");
    let old = p.ensure_key(&TenantKeySpec::new(&a)).await.expect("ensure");
    let ctx = KeyContext::new(&a, "db");
    let ct = p.encrypt(&ctx, b"old life").await.expect("encrypt");
    p.shred(&a).await.expect("shred");
    let new = p
        .ensure_key(&TenantKeySpec::new(&a))
        .await
        .expect("recreate");
    assert!(new.created, "recreate must create");
    assert_ne!(
        new.key_id, old.key_id,
        "recreated tenant got its old key back"
    );
    assert_eq!(new.version, 1);
    let err = p
        .decrypt(&ctx, &ct)
        .await
        .expect_err("old data after recreate");
    assert!(matches!(err, KeyError::Unavailable { .. }), "{err}");
    let ct2 = p.encrypt(&ctx, b"new life").await.expect("encrypt new");
    assert_eq!(
        p.decrypt(&ctx, &ct2).await.expect("decrypt new"),
        b"new life"
    );
}

/// Unknown tenants and bad input are refused with messages that name them.
pub async fn bad_input_is_named(p: &dyn KeyProvider, prefix: &str) {
    let ghost = t(prefix, "ghost");
    let err = p
        .encrypt(&KeyContext::new(&ghost, "db"), b"x")
        .await
        .expect_err("no key");
    assert_eq!(err.to_string(), format!("tenant \"{ghost}\" has no key"));
    let err = p.rotate(&ghost).await.expect_err("rotate ghost");
    assert!(matches!(err, KeyError::NotFound { .. }), "{err}");
    let err = p.shred(&ghost).await.expect_err("shred ghost");
    assert!(matches!(err, KeyError::NotFound { .. }), "{err}");
    let err = p
        .ensure_key(&TenantKeySpec::new("Not_A_Name"))
        .await
        .expect_err("bad name");
    assert!(
        err.to_string()
            .contains("invalid tenant name \"Not_A_Name\""),
        "{err}"
    );
    let err = p
        .encrypt(&KeyContext::new(&ghost, "Bad Purpose"), b"x")
        .await
        .expect_err("bad purpose");
    assert!(
        err.to_string()
            .contains("invalid key purpose \"Bad Purpose\""),
        "{err}"
    );
    let err = p
        .decrypt(&KeyContext::new(&ghost, "db"), &[])
        .await
        .expect_err("empty");
    assert!(err.to_string().contains("empty ciphertext"), "{err}");
}

/// A `moto_server` process on 127.0.0.1 with a free port, killed (and its directory removed)
/// on drop.
#[derive(Debug)]
pub struct MotoServer {
    child: Child,
    dir: PathBuf,
    port: u16,
}

/// The program started by [`MotoServer::start`]: `$SILO_MOTO_SERVER`, else `moto_server`.
pub fn moto_program() -> String {
    std::env::var("SILO_MOTO_SERVER").unwrap_or_else(|_| "moto_server".to_string())
}

const MOTO_HINT: &str = "install it with: python3 -m pip install 'moto[server]'";

impl MotoServer {
    /// Starts the emulator and waits (at most 60 s) until it answers its reset endpoint.
    pub async fn start() -> Result<Self, String> {
        let mut last_err = String::new();
        for _ in 0..3 {
            match Self::try_start().await {
                Ok(s) => return Ok(s),
                Err((fatal, e)) if fatal => return Err(e),
                Err((_, e)) => last_err = e,
            }
        }
        Err(last_err)
    }

    async fn try_start() -> Result<Self, (bool, String)> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| (true, format!("no free port on 127.0.0.1: {e}")))?
            .port();
        let dir = std::env::temp_dir().join(format!("silo-moto-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| (true, format!("cannot create {}: {e}", dir.display())))?;
        let log = std::fs::File::create(dir.join("moto.log"))
            .map_err(|e| (true, format!("cannot create moto.log: {e}")))?;
        let log2 = log
            .try_clone()
            .map_err(|e| (true, format!("cannot dup moto.log: {e}")))?;
        let program = moto_program();
        let child = Command::new(&program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .spawn()
            .map_err(|e| {
                let _ = std::fs::remove_dir_all(&dir);
                (
                    true,
                    format!("cannot start the KMS emulator {program:?} ({e}); {MOTO_HINT}"),
                )
            })?;
        let mut server = MotoServer { child, dir, port };
        for _ in 0..600 {
            if let Ok(Some(status)) = server.child.try_wait() {
                let log = std::fs::read_to_string(server.dir.join("moto.log")).unwrap_or_default();
                let tail: String = log.lines().rev().take(15).collect::<Vec<_>>().join("\n");
                let fatal = !log.contains("Address already in use");
                return Err((
                    fatal,
                    format!(
                        "{program} exited with {status} before it was ready; {MOTO_HINT}\n{tail}"
                    ),
                ));
            }
            if server.reset().await.is_ok() {
                return Ok(server);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err((
            true,
            format!("{program} did not answer on port {port} within 60 s"),
        ))
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `POST /moto-api/reset`: forgets every key.
    pub async fn reset(&self) -> Result<(), String> {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .map_err(|e| e.to_string())?;
        let req = format!(
            "POST /moto-api/reset HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        );
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
            .await
            .map_err(|_| "reset timed out".to_string())?
            .map_err(|e| e.to_string())?;
        let head = String::from_utf8_lossy(&buf[..buf.len().min(32)]).to_string();
        if head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200") {
            Ok(())
        } else {
            Err(format!("reset answered {head:?}"))
        }
    }

    /// A real aws-sdk-kms client for this emulator (static test credentials, us-east-1).
    pub fn client(&self) -> aws_sdk_kms::Client {
        aws_sdk_kms::Client::from_conf(self.client_config().build())
    }

    /// The configuration behind [`client`](Self::client), to add interceptors and the like.
    pub fn client_config(&self) -> aws_sdk_kms::config::Builder {
        aws_sdk_kms::Config::builder()
            .behavior_version(aws_sdk_kms::config::BehaviorVersion::latest())
            .region(aws_sdk_kms::config::Region::new("us-east-1"))
            .endpoint_url(self.endpoint())
            .credentials_provider(aws_sdk_kms::config::Credentials::new(
                "silo-test",
                "silo-test-secret",
                None,
                None,
                "silo-testkit",
            ))
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
