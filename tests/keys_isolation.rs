//! Crossing tenant boundaries with keys must fail, even with a doctored ciphertext header.

use std::sync::Arc;

use silo::keys::envelope::{DEFAULT_DATA_KEY_TTL, EnvelopeCipher};
use silo::keys::local::{LocalProvider, MemoryKeyringStore};
use silo::keys::{KeyContext, KeyError, KeyProvider, TenantKeySpec};

async fn two_tenants() -> (Arc<LocalProvider>, String, String) {
    let p = LocalProvider::open(Arc::new(MemoryKeyringStore::default()), 7)
        .await
        .unwrap();
    let a = p.ensure_key(&TenantKeySpec::new("a")).await.unwrap();
    let b = p.ensure_key(&TenantKeySpec::new("b")).await.unwrap();
    (Arc::new(p), a.key_id, b.key_id)
}

#[tokio::test]
async fn rewriting_the_header_to_b_key_does_not_decrypt_a_data() {
    let (p, _a_id, b_id) = two_tenants().await;
    let ct = p
        .encrypt(&KeyContext::new("a", "db"), b"tenant a password")
        .await
        .unwrap();
    // Header: format(1) | version(4) | key id(8). Point it at B's key and ask as B.
    let mut forged = ct.clone();
    forged[5..13].copy_from_slice(&hex::decode(&b_id).unwrap());
    let err = p
        .decrypt(&KeyContext::new("b", "db"), &forged)
        .await
        .unwrap_err();
    assert!(matches!(err, KeyError::DecryptFailed { .. }), "{err}");
    // Asking as A with the doctored header fails too (it names B's key, not A's).
    let err = p
        .decrypt(&KeyContext::new("a", "db"), &forged)
        .await
        .unwrap_err();
    assert!(matches!(err, KeyError::WrongKey { .. }), "{err}");
    // The untouched ciphertext opens only as A.
    let err = p
        .decrypt(&KeyContext::new("b", "db"), &ct)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not under tenant \"b\"'s current key"),
        "{err}"
    );
    // Control: as A it does open.
    assert_eq!(
        p.decrypt(&KeyContext::new("a", "db"), &ct).await.unwrap(),
        b"tenant a password"
    );
}

#[tokio::test]
async fn envelopes_do_not_cross_tenants() {
    let (p, _, _) = two_tenants().await;
    let env = EnvelopeCipher::new(p, DEFAULT_DATA_KEY_TTL);
    let sealed = env
        .seal(&KeyContext::new("a", "mqtt"), b"a's broker password")
        .await
        .unwrap();
    let err = env
        .open(&KeyContext::new("b", "mqtt"), &sealed)
        .await
        .unwrap_err();
    assert!(matches!(err, KeyError::WrongKey { .. }), "{err}");
    // Control: A opens it.
    assert_eq!(
        env.open(&KeyContext::new("a", "mqtt"), &sealed)
            .await
            .unwrap(),
        b"a's broker password"
    );
}

#[tokio::test]
async fn shredding_a_leaves_b_untouched_and_a_unreadable() {
    let (p, _, _) = two_tenants().await;
    let (ca, cb) = (KeyContext::new("a", "db"), KeyContext::new("b", "db"));
    let cta = p.encrypt(&ca, b"a").await.unwrap();
    let ctb = p.encrypt(&cb, b"b").await.unwrap();
    // Control: A's ciphertext opens as A before the shredding.
    assert_eq!(p.decrypt(&ca, &cta).await.unwrap(), b"a");
    p.shred("a").await.unwrap();
    let err = p.decrypt(&ca, &cta).await.unwrap_err();
    assert!(
        matches!(&err, KeyError::Unavailable { tenant, state, .. }
            if tenant == "a" && *state == silo::keys::KeyState::PendingDeletion),
        "{err}"
    );
    // As B it is not even B's key.
    let err = p.decrypt(&cb, &cta).await.unwrap_err();
    assert!(
        matches!(&err, KeyError::WrongKey { tenant, .. } if tenant == "b"),
        "{err}"
    );
    assert_eq!(p.decrypt(&cb, &ctb).await.unwrap(), b"b");
    // After the window the key material itself is gone.
    let far = time::OffsetDateTime::now_utc() + time::Duration::days(8);
    assert_eq!(p.purge_expired(far).await.unwrap().len(), 1);
    let err = p.decrypt(&ca, &cta).await.unwrap_err().to_string();
    assert!(err.contains("Destroyed"), "{err}");
    assert_eq!(p.decrypt(&cb, &ctb).await.unwrap(), b"b");
}
