//! The provider behaviour suite against the real AWS KMS API, served by the `moto` emulator on
//! 127.0.0.1 (one server per test, reset before use), driven by the real aws-sdk-kms client.
//!
//! Needs `moto_server` on PATH (or `SILO_MOTO_SERVER=/path/to/moto_server`):
//! `python3 -m pip install 'moto[server]'`. Without it every test here FAILS with that hint.
//!
//! moto does not enforce key states (a disabled or pending-deletion key still encrypts there);
//! the tests below show that and that the provider refuses such keys itself.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_kms::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_kms::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_kms::error::BoxError;
use silo::keys::envelope::{DEFAULT_DATA_KEY_TTL, EnvelopeCipher};

use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::KeyState as KmsState;
use silo::config::{KeyProviderKind, PlatformConfig};
use silo::keys::kms::{KmsProvider, TAG_PARENT, TAG_TENANT, alias_for, tombstone_alias_for};
use silo::keys::testkit::{self, MotoServer};
use silo::keys::{
    KeyContext, KeyError, KeyProvider, KeyState, TenantKeySpec, provider_from_config,
};

const WINDOW: u32 = 7;

async fn moto() -> MotoServer {
    let server = MotoServer::start()
        .await
        .unwrap_or_else(|e| panic!("KMS emulator unavailable: {e}"));
    server.reset().await.expect("reset moto state");
    server
}

fn provider(server: &MotoServer) -> KmsProvider {
    KmsProvider::new(server.client(), WINDOW).unwrap()
}

#[tokio::test]
async fn kms_create_is_idempotent_across_restart() {
    let s = moto().await;
    let p = provider(&s);
    let restart = || {
        let client = s.client();
        async move { Arc::new(KmsProvider::new(client, WINDOW).unwrap()) as Arc<dyn KeyProvider> }
    };
    testkit::create_is_idempotent(&p, restart, "t").await;
}

#[tokio::test]
async fn kms_concurrent_ensure_makes_one_key() {
    let s = moto().await;
    testkit::concurrent_ensure_makes_one_key(&provider(&s), "t").await;
    // The losers of the alias race scheduled their duplicate keys for deletion.
    let keys = s.client().list_keys().send().await.unwrap();
    let mut enabled = 0;
    for k in keys.keys() {
        let id = k.key_id().unwrap();
        let md = s.client().describe_key().key_id(id).send().await.unwrap();
        if md.key_metadata().unwrap().key_state() == Some(&KmsState::Enabled) {
            enabled += 1;
        }
    }
    assert_eq!(enabled, 1, "exactly one live key may remain");
}

#[tokio::test]
async fn kms_round_trip_and_context_binding() {
    let s = moto().await;
    testkit::round_trip_and_context_binding(&provider(&s), "t").await;
}

#[tokio::test]
async fn kms_cross_tenant_isolation() {
    let s = moto().await;
    testkit::cross_tenant_isolation(&provider(&s), "t").await;
}

#[tokio::test]
async fn kms_rotation_keeps_old_ciphertexts() {
    let s = moto().await;
    testkit::rotation_keeps_old_ciphertexts(&provider(&s), "t").await;
}

#[tokio::test]
async fn kms_data_keys_are_wrapped() {
    let s = moto().await;
    testkit::data_keys_are_wrapped(&provider(&s), "t").await;
}

#[tokio::test]
async fn kms_shred_refuses_immediately() {
    let s = moto().await;
    testkit::shred_refuses_immediately(&provider(&s), "t", WINDOW).await;
}

#[tokio::test]
async fn kms_recreate_after_shred_gets_new_key() {
    let s = moto().await;
    testkit::recreate_after_shred_gets_new_key(&provider(&s), "t").await;
}

#[tokio::test]
async fn kms_bad_input_is_named() {
    let s = moto().await;
    testkit::bad_input_is_named(&provider(&s), "t").await;
}

#[tokio::test]
async fn kms_key_has_alias_tags_and_rotation() {
    let s = moto().await;
    let p = provider(&s);
    let k = p
        .ensure_key(
            &TenantKeySpec::new("dealer-1")
                .with_parent("distributor")
                .with_rotation_days(30),
        )
        .await
        .unwrap();
    let c = s.client();
    let md = c
        .describe_key()
        .key_id(alias_for("dealer-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(md.key_metadata().unwrap().key_id(), k.key_id);
    let tags = c
        .list_resource_tags()
        .key_id(&k.key_id)
        .send()
        .await
        .unwrap();
    let tag = |name: &str| {
        tags.tags()
            .iter()
            .find(|t| t.tag_key() == name)
            .map(|t| t.tag_value().to_string())
    };
    assert_eq!(tag(TAG_TENANT).as_deref(), Some("dealer-1"));
    assert_eq!(tag(TAG_PARENT).as_deref(), Some("distributor"));
    let rot = c
        .get_key_rotation_status()
        .key_id(&k.key_id)
        .send()
        .await
        .unwrap();
    assert!(rot.key_rotation_enabled(), "automatic rotation not enabled");
}

#[tokio::test]
async fn kms_every_call_carries_the_encryption_context() {
    let s = moto().await;
    let p = provider(&s);
    p.ensure_key(&TenantKeySpec::new("acme")).await.unwrap();
    let ctx = KeyContext::new("acme", "db");
    let framed = p.encrypt(&ctx, b"pw").await.unwrap();
    // Strip the provider's frame (02, len, key id) to get the raw KMS blob.
    let blob = framed[2 + usize::from(framed[1])..].to_vec();
    let c = s.client();
    let without = c
        .decrypt()
        .ciphertext_blob(Blob::new(blob.clone()))
        .send()
        .await
        .expect_err("KMS decrypted without the encryption context");
    // KMS's refusal for a context mismatch (not a transport failure).
    assert!(
        without
            .as_service_error()
            .is_some_and(|e| e.is_invalid_ciphertext_exception()),
        "{without:?}"
    );
    let with = c
        .decrypt()
        .ciphertext_blob(Blob::new(blob))
        .encryption_context("tenant", "acme")
        .encryption_context("purpose", "db")
        .send()
        .await
        .unwrap();
    assert_eq!(with.plaintext().unwrap().as_ref(), b"pw");
}

#[tokio::test]
async fn kms_provider_refuses_a_disabled_key_the_emulator_would_use() {
    let s = moto().await;
    let p = provider(&s).with_metadata_ttl(Duration::ZERO);
    let k = p.ensure_key(&TenantKeySpec::new("acme")).await.unwrap();
    let ctx = KeyContext::new("acme", "db");
    let ct = p.encrypt(&ctx, b"x").await.unwrap();
    let c = s.client();
    c.disable_key().key_id(&k.key_id).send().await.unwrap();
    // The emulator itself still encrypts with the disabled key...
    let raw = c
        .encrypt()
        .key_id(&k.key_id)
        .plaintext(Blob::new(&b"x"[..]))
        .send()
        .await;
    assert!(
        raw.is_ok(),
        "moto started enforcing key states; this test's premise changed"
    );
    // ...the provider does not.
    for err in [
        p.encrypt(&ctx, b"x").await.unwrap_err(),
        p.decrypt(&ctx, &ct).await.unwrap_err(),
        p.generate_data_key(&ctx).await.map(|_| ()).unwrap_err(),
        p.rotate("acme").await.map(|_| ()).unwrap_err(),
    ] {
        assert!(
            matches!(
                err,
                KeyError::Unavailable {
                    state: KeyState::Disabled,
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string().contains("is Disabled and cannot be used"),
            "{err}"
        );
    }
    // A disabled (not shredded) key is not silently replaced.
    let err = p.ensure_key(&TenantKeySpec::new("acme")).await.unwrap_err();
    assert!(matches!(err, KeyError::Unavailable { .. }), "{err}");
}

#[tokio::test]
async fn kms_provider_refuses_a_pending_deletion_key_the_emulator_would_use() {
    let s = moto().await;
    let p = provider(&s).with_metadata_ttl(Duration::ZERO);
    let k = p.ensure_key(&TenantKeySpec::new("acme")).await.unwrap();
    let ctx = KeyContext::new("acme", "db");
    let ct = p.encrypt(&ctx, b"x").await.unwrap();
    let c = s.client();
    c.schedule_key_deletion()
        .key_id(&k.key_id)
        .pending_window_in_days(7)
        .send()
        .await
        .unwrap();
    let raw = c
        .decrypt()
        .ciphertext_blob(Blob::new(ct[2 + usize::from(ct[1])..].to_vec()))
        .encryption_context("tenant", "acme")
        .encryption_context("purpose", "db")
        .send()
        .await;
    assert!(
        raw.is_ok(),
        "moto started enforcing key states; this test's premise changed"
    );
    let err = p.decrypt(&ctx, &ct).await.unwrap_err();
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
    // An interrupted shred (alias still on the dying key) does not block re-creation.
    let fresh = p.ensure_key(&TenantKeySpec::new("acme")).await.unwrap();
    assert!(fresh.created);
    assert_ne!(fresh.key_id, k.key_id);
}

#[tokio::test]
async fn kms_shred_disables_schedules_and_moves_the_alias() {
    let s = moto().await;
    let p = provider(&s);
    let k = p.ensure_key(&TenantKeySpec::new("acme")).await.unwrap();
    let r = p.shred("acme").await.unwrap();
    let c = s.client();
    let md = c.describe_key().key_id(&k.key_id).send().await.unwrap();
    let md = md.key_metadata().unwrap();
    assert_eq!(md.key_state(), Some(&KmsState::PendingDeletion));
    assert_eq!(
        md.deletion_date().map(|d| d.secs()),
        Some(r.delete_after.unix_timestamp())
    );
    let err = c
        .describe_key()
        .key_id(alias_for("acme"))
        .send()
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("NotFound"), "{err:?}");
    let tomb = c
        .describe_key()
        .key_id(tombstone_alias_for("acme"))
        .send()
        .await
        .unwrap();
    assert_eq!(tomb.key_metadata().unwrap().key_id(), k.key_id);
    // Recreate and shred again: the tombstone follows the newest key.
    let k2 = p.ensure_key(&TenantKeySpec::new("acme")).await.unwrap();
    p.shred("acme").await.unwrap();
    let tomb = c
        .describe_key()
        .key_id(tombstone_alias_for("acme"))
        .send()
        .await
        .unwrap();
    assert_eq!(tomb.key_metadata().unwrap().key_id(), k2.key_id);
    assert!(p.purge_expired(r.delete_after).await.unwrap().is_empty());
}

#[tokio::test]
async fn kms_provider_from_config_uses_the_endpoint_override() {
    let s = moto().await;
    // Standard AWS configuration: credentials from the environment of this test process only
    // (nextest runs each test in its own process).
    // SAFETY: no other thread of this process reads the environment concurrently here.
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", "silo-test");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "silo-test-secret");
        std::env::remove_var("AWS_PROFILE");
    }
    let text = format!(
        "keys:\n  provider: aws-kms\n  deletionWindowDays: 7\n  awsKms:\n    region: us-east-1\n    endpoint: {}\n",
        s.endpoint()
    );
    let cfg = PlatformConfig::from_yaml_with_env("test.yaml", &text, |_| None).unwrap();
    let p = provider_from_config(&cfg, None).await.unwrap();
    assert_eq!(p.kind(), KeyProviderKind::AwsKms);
    let k = p.ensure_key(&TenantKeySpec::new("acme")).await.unwrap();
    let md = s
        .client()
        .describe_key()
        .key_id(alias_for("acme"))
        .send()
        .await
        .unwrap();
    assert_eq!(md.key_metadata().unwrap().key_id(), k.key_id);
}

/// Records the KMS operation of every request the client sends.
#[derive(Debug, Clone, Default)]
struct CallLog(Arc<Mutex<Vec<String>>>);

impl Intercept for CallLog {
    fn name(&self) -> &'static str {
        "silo-call-log"
    }

    fn read_before_transmit(
        &self,
        ctx: &BeforeTransmitInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let op = ctx
            .request()
            .headers()
            .get("x-amz-target")
            .unwrap_or("?")
            .trim_start_matches("TrentService.")
            .to_string();
        self.0.lock().unwrap().push(op);
        Ok(())
    }
}

impl CallLog {
    fn take(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for op in self.0.lock().unwrap().drain(..) {
            *m.entry(op).or_insert(0) += 1;
        }
        m
    }
}

fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

#[tokio::test]
async fn kms_calls_per_tenant_with_caching() {
    let s = moto().await;
    let log = CallLog::default();
    let client = aws_sdk_kms::Client::from_conf(s.client_config().interceptor(log.clone()).build());
    let p: Arc<dyn KeyProvider> = Arc::new(KmsProvider::new(client, WINDOW).unwrap());
    let spec = TenantKeySpec::new("acme").with_parent("root");
    p.ensure_key(&spec).await.unwrap();
    assert_eq!(
        log.take(),
        counts(&[
            ("CreateAlias", 1),
            ("CreateKey", 1),
            ("DescribeKey", 2),
            ("EnableKeyRotation", 1),
            ("ListKeyRotations", 1),
        ]),
        "first reconcile"
    );
    // Steady state inside one cache period: 100 reconciles, 100 secrets sealed and opened.
    let env = EnvelopeCipher::new(p.clone(), DEFAULT_DATA_KEY_TTL);
    let ctx = KeyContext::new("acme", "credentials");
    for i in 0..100 {
        p.ensure_key(&spec).await.unwrap();
        let sealed = env
            .seal(&ctx, format!("secret {i}").as_bytes())
            .await
            .unwrap();
        assert_eq!(
            env.open(&ctx, &sealed).await.unwrap(),
            format!("secret {i}").as_bytes()
        );
    }
    assert_eq!(
        log.take(),
        counts(&[("Decrypt", 1), ("DescribeKey", 1), ("GenerateDataKey", 1)]),
        "300 operations within the cache period"
    );
}
