//! Tests of the `local` provider: keyring format, wrapping, rotation, shredding, races.

use super::*;
use std::sync::atomic::{AtomicI64, Ordering};

fn fixed_clock(t: Arc<AtomicI64>) -> Clock {
    Arc::new(move || {
        OffsetDateTime::from_unix_timestamp(t.load(Ordering::SeqCst))
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    })
}

async fn provider() -> (LocalProvider, MemoryKeyringStore, Arc<AtomicI64>) {
    let store = MemoryKeyringStore::default();
    let t = Arc::new(AtomicI64::new(1_800_000_000));
    let p = LocalProvider::open_with_clock(Arc::new(store.clone()), 7, fixed_clock(t.clone()))
        .await
        .unwrap();
    (p, store, t)
}

#[tokio::test]
async fn ciphertext_header_is_self_describing() {
    let (p, _, _) = provider().await;
    let k = p.ensure_key(&TenantKeySpec::new("a")).await.unwrap();
    let ctx = KeyContext::new("a", "db");
    let c1 = p.encrypt(&ctx, b"x").await.unwrap();
    let h = LocalHeader::parse(&c1).unwrap();
    assert_eq!((h.version, hex::encode(h.key_id)), (1, k.key_id.clone()));
    p.rotate("a").await.unwrap();
    let c2 = p.encrypt(&ctx, b"x").await.unwrap();
    assert_eq!(LocalHeader::parse(&c2).unwrap().version, 2);
    // Random nonces: the same plaintext never gives the same ciphertext.
    assert_ne!(p.encrypt(&ctx, b"x").await.unwrap(), c2);
}

#[tokio::test]
async fn minimum_decryption_version_refuses_old_ciphertexts() {
    let (p, _, _) = provider().await;
    p.ensure_key(&TenantKeySpec::new("a")).await.unwrap();
    let ctx = KeyContext::new("a", "db");
    let old = p.encrypt(&ctx, b"old").await.unwrap();
    p.rotate("a").await.unwrap();
    let rewrapped = p.rewrap(&ctx, &old).await.unwrap();
    assert_eq!(LocalHeader::parse(&rewrapped).unwrap().version, 2);
    p.set_min_decryption_version("a", 2).await.unwrap();
    let e = p.decrypt(&ctx, &old).await.unwrap_err().to_string();
    assert!(
        e.contains("key version 1 of tenant \"a\" is below the minimum decryption version 2"),
        "{e}"
    );
    assert_eq!(p.decrypt(&ctx, &rewrapped).await.unwrap(), b"old");
    let e = p
        .set_min_decryption_version("a", 1)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("must be between 2 and 2"), "{e}");
    let e = p
        .set_min_decryption_version("nobody", 1)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("tenant \"nobody\" has no key"), "{e}");
}

#[tokio::test]
async fn master_rotation_rewraps_and_retires_old_versions() {
    let (p, store, _) = provider().await;
    p.ensure_key(&TenantKeySpec::new("a")).await.unwrap();
    let ctx = KeyContext::new("a", "db");
    let c = p.encrypt(&ctx, b"data").await.unwrap();
    assert_eq!(p.rotate_master().await.unwrap(), 2);
    let e = p
        .set_master_min_decryption_version(2)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("tenant \"a\" key version 1 is still wrapped by master version 1"),
        "{e}"
    );
    assert_eq!(p.rewrap_tenant_keys().await.unwrap(), 1);
    assert_eq!(p.rewrap_tenant_keys().await.unwrap(), 0);
    p.set_master_min_decryption_version(2).await.unwrap();
    // A restarted provider (fresh cipher cache) still decrypts through master v2.
    let p2 = LocalProvider::open(Arc::new(store), 7).await.unwrap();
    assert_eq!(p2.decrypt(&ctx, &c).await.unwrap(), b"data");
    assert_eq!(p2.master_version().await, 2);
}

#[tokio::test]
async fn shred_then_purge_after_window() {
    let (p, _, t) = provider().await;
    p.ensure_key(&TenantKeySpec::new("a")).await.unwrap();
    let r = p.shred("a").await.unwrap();
    let start = t.load(Ordering::SeqCst);
    assert_eq!(r.delete_after.unix_timestamp(), start + 7 * 86_400);
    // Second shred is idempotent.
    assert_eq!(p.shred("a").await.unwrap(), r);
    let before = OffsetDateTime::from_unix_timestamp(start + 7 * 86_400 - 1).unwrap();
    assert!(p.purge_expired(before).await.unwrap().is_empty());
    let doc = p.document().await;
    assert!(!doc.retired[&r.key_id].versions.is_empty());
    let purged = p.purge_expired(r.delete_after).await.unwrap();
    assert_eq!(purged, vec![r.key_id.clone()]);
    let doc = p.document().await;
    assert!(doc.retired[&r.key_id].versions.is_empty());
    assert_eq!(doc.retired[&r.key_id].state, KeyState::Destroyed);
    assert!(p.purge_expired(r.delete_after).await.unwrap().is_empty());
    let e = p.shred("a").await.unwrap_err().to_string();
    assert!(e.contains("has no key"), "{e}");
}

#[tokio::test]
async fn keyring_json_round_trips_and_bad_documents_are_named() {
    let (p, store, _) = provider().await;
    p.ensure_key(&TenantKeySpec::new("a").with_parent("root"))
        .await
        .unwrap();
    let json = store.snapshot_json().unwrap().unwrap();
    let doc = KeyringDocument::from_json(&json).unwrap();
    assert_eq!(doc, p.document().await);
    assert_eq!(doc.tenants["a"].parent.as_deref(), Some("root"));

    let e = KeyringDocument::from_json("{").unwrap_err().to_string();
    assert!(e.contains("keyring.json is not valid"), "{e}");
    let mut bad = doc.clone();
    bad.master.current = 9;
    let e = bad.validate().unwrap_err().to_string();
    assert!(e.contains("master.current = 9"), "{e}");
    let mut bad = doc.clone();
    if let Some(v) = bad.master.versions.get_mut(&1) {
        v.key = B64.encode([0u8; 5]);
    }
    let e = bad.validate().unwrap_err().to_string();
    assert!(
        e.contains("master.versions.1.key: 5 bytes, expected 32"),
        "{e}"
    );
    let mut bad = doc.clone();
    bad.format = 7;
    let e = bad.validate().unwrap_err().to_string();
    assert!(e.contains("unsupported keyring format 7"), "{e}");
    let mut bad = doc;
    if let Some(r) = bad.tenants.get_mut("a") {
        r.versions.clear();
    }
    let e = bad.validate().unwrap_err().to_string();
    assert!(
        e.contains("tenants.a: current version 1 has no wrapped key"),
        "{e}"
    );
}

#[tokio::test]
async fn tampered_wrapped_key_is_reported() {
    let (p, store, _) = provider().await;
    p.ensure_key(&TenantKeySpec::new("a")).await.unwrap();
    let mut doc = p.document().await;
    // Swap in a wrapped key of another tenant: the AAD (tenant name) must reject it.
    p.ensure_key(&TenantKeySpec::new("b")).await.unwrap();
    let other = p.document().await.tenants["b"].versions[&1].clone();
    if let Some(r) = doc.tenants.get_mut("a") {
        r.versions.insert(1, other);
    }
    store.replace(&doc).unwrap();
    let p2 = LocalProvider::open(Arc::new(store), 7).await.unwrap();
    let e = p2
        .encrypt(&KeyContext::new("a", "db"), b"x")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("header that does not match its record"), "{e}");
}

#[tokio::test]
async fn failed_save_leaves_memory_unchanged() {
    #[derive(Debug)]
    struct FailingStore(MemoryKeyringStore, std::sync::atomic::AtomicBool);
    impl FailingStore {
        fn fail(&self) -> Option<BoxFuture<'_, Result<(), KeyError>>> {
            self.1.load(Ordering::SeqCst).then(|| {
                Box::pin(async { Err(KeyError::Storage("secret update conflict".into())) })
                    as BoxFuture<'_, _>
            })
        }
    }
    impl KeyringStore for FailingStore {
        fn load(&self) -> BoxFuture<'_, Result<Option<KeyringDocument>, KeyError>> {
            self.0.load()
        }
        fn save_master<'a>(&'a self, m: &'a MasterKeyring) -> BoxFuture<'a, Result<(), KeyError>> {
            self.fail().unwrap_or_else(|| self.0.save_master(m))
        }
        fn save_tenant<'a>(
            &'a self,
            r: &'a TenantKeyRecord,
        ) -> BoxFuture<'a, Result<(), KeyError>> {
            self.fail().unwrap_or_else(|| self.0.save_tenant(r))
        }
        fn save_retired<'a>(
            &'a self,
            r: &'a TenantKeyRecord,
        ) -> BoxFuture<'a, Result<(), KeyError>> {
            self.fail().unwrap_or_else(|| self.0.save_retired(r))
        }
        fn delete_tenant<'a>(&'a self, t: &'a str) -> BoxFuture<'a, Result<(), KeyError>> {
            self.fail().unwrap_or_else(|| self.0.delete_tenant(t))
        }
    }
    let store = Arc::new(FailingStore(
        MemoryKeyringStore::default(),
        std::sync::atomic::AtomicBool::new(false),
    ));
    let p = LocalProvider::open(store.clone(), 7).await.unwrap();
    store.1.store(true, Ordering::SeqCst);
    let e = p
        .ensure_key(&TenantKeySpec::new("a"))
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(e, "keyring storage: secret update conflict");
    assert!(p.document().await.tenants.is_empty());
    // After a failed write the next change re-reads the keyring first.
    store.1.store(false, Ordering::SeqCst);
    let loads = store.0.calls().loads;
    p.ensure_key(&TenantKeySpec::new("a")).await.unwrap();
    assert_eq!(store.0.calls().loads, loads + 1);
    p.ensure_key(&TenantKeySpec::new("b")).await.unwrap();
    assert_eq!(store.0.calls().loads, loads + 1, "only once");
}

#[tokio::test]
async fn creating_many_keys_writes_one_record_each_and_never_the_whole_keyring() {
    let (p, store, _) = provider().await;
    assert_eq!(
        store.calls(),
        StoreCalls {
            loads: 1,
            master_saves: 1,
            ..StoreCalls::default()
        }
    );
    for i in 0..5_000 {
        p.ensure_key(&TenantKeySpec::new(format!("t{i}")))
            .await
            .unwrap();
    }
    assert_eq!(
        store.calls(),
        StoreCalls {
            loads: 1,
            master_saves: 1,
            tenant_saves: 5_000,
            ..StoreCalls::default()
        },
        "one tenant record per key, no re-read, no master write"
    );
    // Steady state writes nothing; a rotation writes that one record.
    p.ensure_key(&TenantKeySpec::new("t7")).await.unwrap();
    p.rotate("t7").await.unwrap();
    assert_eq!(store.calls().tenant_saves, 5_001);
    assert_eq!(store.snapshot().unwrap().unwrap().tenants.len(), 5_000);
}

#[tokio::test]
async fn each_change_writes_only_the_records_it_changed() {
    let (p, store, t) = provider().await;
    p.ensure_key(&TenantKeySpec::new("a")).await.unwrap();
    p.ensure_key(&TenantKeySpec::new("b")).await.unwrap();
    let base = store.calls();
    p.rotate_master().await.unwrap();
    assert_eq!(store.calls().master_saves, base.master_saves + 1);
    assert_eq!(store.calls().tenant_saves, base.tenant_saves);
    assert_eq!(p.rewrap_tenant_keys().await.unwrap(), 2);
    assert_eq!(store.calls().tenant_saves, base.tenant_saves + 2);
    let r = p.shred("a").await.unwrap();
    let c = store.calls();
    assert_eq!((c.retired_saves, c.tenant_deletes), (1, 1));
    let doc = store.snapshot().unwrap().unwrap();
    assert!(!doc.tenants.contains_key("a") && doc.tenants.contains_key("b"));
    assert_eq!(doc.retired[&r.key_id].state, KeyState::PendingDeletion);
    t.store(r.delete_after.unix_timestamp(), Ordering::SeqCst);
    p.purge_expired(r.delete_after).await.unwrap();
    let c2 = store.calls();
    assert_eq!(
        (c2.retired_saves, c2.tenant_saves, c2.master_saves),
        (2, c.tenant_saves, c.master_saves)
    );
    assert_eq!(c2.loads, 1, "no change re-read the keyring");
}

#[tokio::test]
async fn a_lost_race_rereads_and_retries_once_and_never_overwrites() {
    let store = MemoryKeyringStore::default();
    let p1 = LocalProvider::open(Arc::new(store.clone()), 7)
        .await
        .unwrap();
    let p2 = LocalProvider::open(Arc::new(store.clone()), 7)
        .await
        .unwrap();
    let a = p1.ensure_key(&TenantKeySpec::new("a")).await.unwrap();
    // p2 never saw "a": its create loses, it re-reads and finds the key p1 made.
    let again = p2.ensure_key(&TenantKeySpec::new("a")).await.unwrap();
    assert_eq!((again.key_id, again.created), (a.key_id.clone(), false));
    // p1 rotates; p2's rotation is computed from a stale record, loses, re-reads, and
    // rotates on top of p1's version.
    p1.rotate("a").await.unwrap();
    assert_eq!(p2.rotate("a").await.unwrap().version, 3);
    assert_eq!(store.snapshot().unwrap().unwrap().tenants["a"].current, 3);
}

#[tokio::test]
async fn a_conflict_names_the_record_and_a_restored_keyring_is_reread() {
    let store = MemoryKeyringStore::default();
    let p = LocalProvider::open(Arc::new(store.clone()), 7)
        .await
        .unwrap();
    p.ensure_key(&TenantKeySpec::new("a")).await.unwrap();
    // A store that saw nothing: its first write of "a" is refused, naming the record.
    let blind = store.unseen_clone();
    let rec = store.snapshot().unwrap().unwrap().tenants["a"].clone();
    let e = blind.save_tenant(&rec).await.unwrap_err();
    assert!(is_conflict(&e), "{e}");
    let e = e.to_string();
    assert!(
        e.contains("keyring record silo-key-a changed since it was read (409 AlreadyExists)"),
        "{e}"
    );
    // Someone else replaces the keyring (a restore): p's writes now conflict; it re-reads
    // and succeeds on the restored keyring.
    let restored = store.snapshot().unwrap().unwrap();
    store.replace(&restored).unwrap();
    let loads = store.calls().loads;
    p.rotate("a").await.unwrap();
    assert_eq!(store.calls().loads, loads + 1);
    assert_eq!(store.snapshot().unwrap().unwrap().tenants["a"].current, 2);
}

/// A record as earlier builds wrote it (versions a JSON object keyed by number, in any order)
/// reads into the version list in order and is written back as the same object.
#[test]
fn key_versions_keep_the_stored_json_shape() {
    let stored = serde_json::json!({
        "tenant": "a", "keyId": "00112233445566ff", "rotationDays": 90, "current": 2,
        "minDecryptionVersion": 1, "createdAt": 1, "state": "Enabled",
        "versions": {
            "2": {"masterVersion": 1, "wrapped": "d2", "createdAt": 2},
            "1": {"masterVersion": 1, "wrapped": "d1", "createdAt": 1}
        }
    });
    let rec: TenantKeyRecord = serde_json::from_value(stored.clone()).unwrap();
    let order: Vec<u32> = rec.versions.iter().map(|(v, _)| *v).collect();
    assert_eq!(order, vec![1, 2]);
    assert_eq!(rec.versions[&2].wrapped, "d2");
    assert_eq!(serde_json::to_value(&rec).unwrap(), stored);
}
