//! The provider behaviour suite (`silo::keys::testkit`) against the `local` provider, plus
//! local-only behaviour: persistence through the keyring store and the deletion window.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use silo::config::PlatformConfig;
use silo::keys::local::{KeyringDocument, LocalProvider, MemoryKeyringStore};
use silo::keys::testkit;
use silo::keys::{
    KeyContext, KeyError, KeyProvider, KeyState, TenantKeySpec, provider_from_config,
};
use time::OffsetDateTime;

const WINDOW: u32 = 30;

async fn local() -> (LocalProvider, MemoryKeyringStore) {
    let store = MemoryKeyringStore::default();
    let p = LocalProvider::open(Arc::new(store.clone()), WINDOW)
        .await
        .unwrap();
    (p, store)
}

#[tokio::test]
async fn local_create_is_idempotent_across_restart() {
    let (p, store) = local().await;
    let restart = || {
        let store = store.clone();
        async move {
            Arc::new(LocalProvider::open(Arc::new(store), WINDOW).await.unwrap())
                as Arc<dyn KeyProvider>
        }
    };
    testkit::create_is_idempotent(&p, restart, "t").await;
}

#[tokio::test]
async fn local_concurrent_ensure_makes_one_key() {
    let (p, _) = local().await;
    testkit::concurrent_ensure_makes_one_key(&p, "t").await;
}

#[tokio::test]
async fn local_round_trip_and_context_binding() {
    let (p, _) = local().await;
    testkit::round_trip_and_context_binding(&p, "t").await;
}

#[tokio::test]
async fn local_cross_tenant_isolation() {
    let (p, _) = local().await;
    testkit::cross_tenant_isolation(&p, "t").await;
}

#[tokio::test]
async fn local_rotation_keeps_old_ciphertexts() {
    let (p, _) = local().await;
    testkit::rotation_keeps_old_ciphertexts(&p, "t").await;
}

#[tokio::test]
async fn local_data_keys_are_wrapped() {
    let (p, _) = local().await;
    testkit::data_keys_are_wrapped(&p, "t").await;
}

#[tokio::test]
async fn local_shred_refuses_immediately() {
    let (p, _) = local().await;
    testkit::shred_refuses_immediately(&p, "t", WINDOW).await;
}

#[tokio::test]
async fn local_recreate_after_shred_gets_new_key() {
    let (p, _) = local().await;
    testkit::recreate_after_shred_gets_new_key(&p, "t").await;
}

#[tokio::test]
async fn local_bad_input_is_named() {
    let (p, _) = local().await;
    testkit::bad_input_is_named(&p, "t").await;
}

#[tokio::test]
async fn local_whole_suite_on_one_provider_via_config() {
    // The operator's entry point, all suite functions sharing one provider.
    let store = MemoryKeyringStore::default();
    let cfg = PlatformConfig::default();
    let p = provider_from_config(&cfg, Some(Arc::new(store.clone())))
        .await
        .unwrap();
    let restart = || {
        let (cfg, store) = (cfg.clone(), store.clone());
        async move {
            provider_from_config(&cfg, Some(Arc::new(store)))
                .await
                .unwrap()
        }
    };
    testkit::create_is_idempotent(p.as_ref(), restart, "s1").await;
    testkit::round_trip_and_context_binding(p.as_ref(), "s2").await;
    testkit::cross_tenant_isolation(p.as_ref(), "s3").await;
    testkit::rotation_keeps_old_ciphertexts(p.as_ref(), "s4").await;
    testkit::data_keys_are_wrapped(p.as_ref(), "s5").await;
    testkit::shred_refuses_immediately(p.as_ref(), "s6", cfg.keys.deletion_window_days).await;
    testkit::recreate_after_shred_gets_new_key(p.as_ref(), "s7").await;
    testkit::bad_input_is_named(p.as_ref(), "s8").await;
}

#[tokio::test]
async fn local_keyring_persists_as_json_and_reloads() {
    let (p, store) = local().await;
    p.ensure_key(&TenantKeySpec::new("acme")).await.unwrap();
    let ctx = KeyContext::new("acme", "db");
    let ct = p.encrypt(&ctx, b"persisted").await.unwrap();
    // What the operator writes into the Secret, and reads back on the next start.
    let json = store.snapshot_json().unwrap().unwrap();
    assert!(!json.contains("persisted"));
    let reloaded = MemoryKeyringStore::default();
    reloaded
        .replace(&KeyringDocument::from_json(&json).unwrap())
        .unwrap();
    let p2 = LocalProvider::open(Arc::new(reloaded), WINDOW)
        .await
        .unwrap();
    assert_eq!(p2.decrypt(&ctx, &ct).await.unwrap(), b"persisted");
}

#[tokio::test]
async fn local_shredded_key_is_destroyed_after_the_window_only() {
    let store = MemoryKeyringStore::default();
    let now = Arc::new(AtomicI64::new(OffsetDateTime::now_utc().unix_timestamp()));
    let clock = {
        let now = now.clone();
        Arc::new(move || OffsetDateTime::from_unix_timestamp(now.load(Ordering::SeqCst)).unwrap())
    };
    let p = LocalProvider::open_with_clock(Arc::new(store.clone()), 7, clock)
        .await
        .unwrap();
    p.ensure_key(&TenantKeySpec::new("gone")).await.unwrap();
    let ctx = KeyContext::new("gone", "db");
    let ct = p.encrypt(&ctx, b"bye").await.unwrap();
    let r = p.shred("gone").await.unwrap();
    let start = now.load(Ordering::SeqCst);
    assert_eq!(r.delete_after.unix_timestamp(), start + 7 * 86_400);
    // Inside the window the wrapped key still exists (an operator could cancel), but is refused.
    let mid = OffsetDateTime::from_unix_timestamp(start + 6 * 86_400).unwrap();
    assert!(p.purge_expired(mid).await.unwrap().is_empty());
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
    // After the window the key material is gone, also from the stored keyring.
    let purged = p.purge_expired(r.delete_after).await.unwrap();
    assert_eq!(purged, vec![r.key_id.clone()]);
    let err = p.decrypt(&ctx, &ct).await.unwrap_err().to_string();
    assert!(err.contains("is Destroyed and cannot be used"), "{err}");
    let doc = KeyringDocument::from_json(&store.snapshot_json().unwrap().unwrap()).unwrap();
    assert!(doc.retired[&r.key_id].versions.is_empty());
    assert!(!doc.tenants.contains_key("gone"));
}

#[tokio::test]
async fn local_second_instance_never_overwrites_the_first() {
    // Two instances over one store (e.g. a stale replica): changes are made on the stored
    // keyring, so neither loses the other's keys.
    let store = MemoryKeyringStore::default();
    let p1 = LocalProvider::open(Arc::new(store.clone()), WINDOW)
        .await
        .unwrap();
    let p2 = LocalProvider::open(Arc::new(store.clone()), WINDOW)
        .await
        .unwrap();
    let a = p1.ensure_key(&TenantKeySpec::new("a")).await.unwrap();
    let b = p2.ensure_key(&TenantKeySpec::new("b")).await.unwrap();
    let a_again = p2.ensure_key(&TenantKeySpec::new("a")).await.unwrap();
    assert_eq!(a_again.key_id, a.key_id);
    assert!(!a_again.created);
    p1.refresh().await.unwrap();
    assert_eq!(p1.key_info("b").await.unwrap().key_id, b.key_id);
    let doc = KeyringDocument::from_json(&store.snapshot_json().unwrap().unwrap()).unwrap();
    assert_eq!(doc.tenants.len(), 2);
}
