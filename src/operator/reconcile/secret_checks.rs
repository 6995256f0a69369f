//! Which Secrets a reconcile already checked, at which resourceVersion: with the Secret
//! metadata watch synced, a steady-state reconcile reads no Secret at all. A Secret is read
//! again when its resourceVersion changes (someone edited or deleted it, or the operator
//! wrote it), when what it must match changes (`context`, e.g. the key version), or when its
//! check expires (a certificate due for renewal).

use std::collections::HashMap;
use std::sync::Mutex;

use crate::operator::cluster::{Cluster, ObjectKey};

/// What to do with a Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    /// Unchanged since it was last found good: no read needed.
    Skip,
    /// Read and check it; pass the token to [`SecretChecks::record`] when it is good.
    Read(Option<String>),
    /// The Secret watch has listed every tenant Secret and this one is not among them: no
    /// read needed, create it (a concurrent creation shows as a conflict).
    Absent,
}

/// Checked Secrets by namespace and name: the digest of the fingerprint (resourceVersion +
/// context) and the time the check expires. One entry per tenant Secret is kept for the
/// operator's life, so it is compact: the namespace once per tenant, its few Secrets as an
/// exact-size list, 16 bytes of SHA-256 of the fingerprint instead of the text (~60 bytes per
/// Secret instead of ~250).
#[derive(Debug, Default)]
pub struct SecretChecks {
    map: Mutex<HashMap<Box<str>, Namespace>>,
}

/// The checked Secrets of one namespace (a handful: looked up by a scan).
type Namespace = Vec<(Box<str>, Checked)>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Checked {
    fingerprint: [u8; 16],
    until: i64,
}

fn digest(fingerprint: &str) -> [u8; 16] {
    use sha2::Digest;
    let full = sha2::Sha256::digest(fingerprint.as_bytes());
    let mut out = [0u8; 16];
    out.copy_from_slice(&full[..16]);
    out
}

impl SecretChecks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether Secret `key` must be read, at unix time `now`.
    pub async fn check<C: Cluster>(
        &self,
        cluster: &C,
        key: &ObjectKey,
        context: &str,
        now: i64,
    ) -> Check {
        let ns = key.namespace.as_deref().unwrap_or_default();
        let rv = match cluster.secret_version(ns, &key.name).await {
            Some(Some(rv)) => rv,
            Some(None) => return Check::Absent,
            None => return Check::Read(None),
        };
        let fingerprint = format!("{rv}|{context}");
        let fresh = self
            .map
            .lock()
            .ok()
            .and_then(|m| {
                m.get(ns)
                    .and_then(|names| names.iter().find(|(n, _)| **n == *key.name))
                    .map(|(_, c)| *c)
            })
            .is_some_and(|c| c.fingerprint == digest(&fingerprint) && now < c.until);
        if fresh {
            Check::Skip
        } else {
            Check::Read(Some(fingerprint))
        }
    }

    /// The Secret read under `check` was good until `until` (unix time; `i64::MAX` = until it
    /// changes). A Secret this reconcile wrote is not recorded: its new resourceVersion is
    /// read once more next time.
    pub fn record(&self, key: &ObjectKey, check: &Check, until: i64) {
        if let (Check::Read(Some(fp)), Ok(mut m)) = (check, self.map.lock()) {
            let ns = key.namespace.as_deref().unwrap_or_default();
            let checked = Checked {
                fingerprint: digest(fp),
                until,
            };
            let names = m.entry(ns.into()).or_default();
            let item = (key.name.as_str().into(), checked);
            crate::heap::upsert_exact(names, item, |(a, _), (b, _)| a == b);
        }
    }

    /// Records a Secret the operator has just created (with `context`) as checked until
    /// `until`, at the version the cluster now reports for it: the next reconcile does not
    /// read back what it wrote. Nothing is recorded while that version is unknown.
    pub async fn created<C: Cluster>(
        &self,
        cluster: &C,
        key: &ObjectKey,
        context: &str,
        now: i64,
        until: i64,
    ) {
        let check = self.check(cluster, key, context, now).await;
        self.record(key, &check, until);
    }

    /// Forget the Secrets of a namespace (the tenant is gone).
    pub fn forget_namespace(&self, namespace: &str) {
        if let Ok(mut m) = self.map.lock() {
            m.remove(namespace);
        }
    }

    /// Number of Secrets recorded as checked.
    pub fn len(&self) -> usize {
        self.map
            .lock()
            .map(|m| m.values().map(Vec::len).sum())
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::cluster::memory::MemoryCluster;

    #[tokio::test]
    async fn a_checked_secret_is_skipped_until_it_changes_or_expires() {
        let cluster = MemoryCluster::new();
        let key = ObjectKey::new("Secret", Some("tenant-a"), "s");
        let checks = SecretChecks::new();
        let manifest = serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "s", "namespace": "tenant-a"}, "data": {"k": "dg=="},
        });
        // Known absent (the cluster has listed its Secrets): no read, create it.
        assert_eq!(checks.check(&cluster, &key, "", 0).await, Check::Absent);
        cluster.create_secret(&key, &manifest).await.unwrap();
        let c = checks.check(&cluster, &key, "v1", 0).await;
        assert!(matches!(c, Check::Read(Some(_))));
        checks.record(&key, &c, 100);
        assert_eq!(checks.check(&cluster, &key, "v1", 50).await, Check::Skip);
        // Recorded again: still one entry for the Secret.
        checks.record(&key, &c, 100);
        assert_eq!(checks.len(), 1);
        // Another context, or past its expiry: read again.
        assert_ne!(checks.check(&cluster, &key, "v2", 50).await, Check::Skip);
        assert_ne!(checks.check(&cluster, &key, "v1", 100).await, Check::Skip);
        // Changed behind our back: read again.
        cluster.edit_behind_our_back(&key, |_| {});
        assert_ne!(checks.check(&cluster, &key, "v1", 50).await, Check::Skip);
        checks.forget_namespace("tenant-a");
        assert!(checks.is_empty());
    }

    /// A Secret the operator just created is not read back by the next reconcile; one it
    /// has not created is still read.
    #[tokio::test]
    async fn a_secret_just_created_counts_as_checked() {
        let cluster = MemoryCluster::new();
        let checks = SecretChecks::new();
        let manifest = |name: &str| {
            serde_json::json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": name, "namespace": "tenant-a"}, "data": {"k": "dg=="},
            })
        };
        let mine = ObjectKey::new("Secret", Some("tenant-a"), "mine");
        let other = ObjectKey::new("Secret", Some("tenant-a"), "other");
        cluster
            .create_secret(&mine, &manifest("mine"))
            .await
            .unwrap();
        cluster
            .create_secret(&other, &manifest("other"))
            .await
            .unwrap();
        checks.created(&cluster, &mine, "v1", 0, 100).await;
        assert_eq!(checks.check(&cluster, &mine, "v1", 10).await, Check::Skip);
        assert!(matches!(
            checks.check(&cluster, &other, "v1", 10).await,
            Check::Read(Some(_))
        ));
        // Until the recorded expiry only.
        assert_ne!(checks.check(&cluster, &mine, "v1", 100).await, Check::Skip);
    }
}
