//! `silo audit verify`: recomputes every hash chain from the stored records and names the
//! first broken record of each broken chain.
//!
//! A chain is intact when its records have the sequence numbers 1, 2, … without gaps (or
//! start right after a signed checkpoint's `throughSeq`), each `prev_hash` is the previous
//! record's `hash` (32 zero bytes for seq 1, the checkpoint's `throughHash` after an archive),
//! each `hash` is SHA-256(`prev_hash` || canonical form) of what is stored now, and the last
//! record is the one `audit_heads` points at (a deleted tail is detected).

use std::collections::HashMap;
use std::fmt;

use futures::{StreamExt, pin_mut};
use sha2::{Digest, Sha256};
use tokio_postgres::GenericClient;

use super::sign;
use super::{AuditError, db_err, rfc3339_micros};

/// The first broken record of a chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Broken {
    pub chain: String,
    /// The record's id; None when the chain has no record left at all.
    pub id: Option<i64>,
    pub seq: i64,
    pub at: String,
    pub action: String,
    pub reason: String,
}

impl fmt::Display for Broken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.id {
            Some(id) => write!(
                f,
                "chain {:?}: record id {id} (seq {}, {}, {}): {}",
                self.chain, self.seq, self.at, self.action, self.reason
            ),
            None => write!(f, "chain {:?}: {}", self.chain, self.reason),
        }
    }
}

/// What `silo audit verify` found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub chains: usize,
    pub records: u64,
    /// Chains starting from a checkpoint whose signature was checked.
    pub checkpoints_verified: usize,
    /// Chains starting from a checkpoint whose signature could not be checked (no key).
    pub checkpoints_unchecked: usize,
    /// The first broken record of each broken chain.
    pub broken: Vec<Broken>,
}

fn field(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(s.as_bytes());
    out.push(b';');
}

/// The stored fields of a record, as the insert trigger hashes them.
#[derive(Clone, Debug, Default)]
pub struct Canonical<'a> {
    pub seq: i64,
    pub chain: &'a str,
    pub at_micros: i64,
    pub actor_token: &'a str,
    pub actor_name: &'a str,
    pub tenant: &'a str,
    /// `path` joined by `/`.
    pub path: &'a str,
    pub action: &'a str,
    pub target: &'a str,
    /// `summary::text` as PostgreSQL prints jsonb.
    pub summary: &'a str,
    pub status: i32,
    pub outcome: &'a str,
}

impl Canonical<'_> {
    /// SHA-256(prev || canonical bytes) — `silo_audit_canonical` in the migration.
    pub fn hash(&self, prev: &[u8]) -> [u8; 32] {
        let mut b = Vec::with_capacity(256);
        field(&mut b, &self.seq.to_string());
        field(&mut b, self.chain);
        field(&mut b, &self.at_micros.to_string());
        field(&mut b, self.actor_token);
        field(&mut b, self.actor_name);
        field(&mut b, self.tenant);
        field(&mut b, self.path);
        field(&mut b, self.action);
        field(&mut b, self.target);
        field(&mut b, self.summary);
        field(&mut b, &self.status.to_string());
        field(&mut b, self.outcome);
        let mut h = Sha256::new();
        h.update(prev);
        h.update(&b);
        h.finalize().into()
    }
}

/// A checkpoint as recorded in its chain's summary.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Checkpoint {
    through_seq: i64,
    through_hash: String,
    signature: String,
}

struct ChainState {
    chain: String,
    next_seq: i64,
    prev: Vec<u8>,
    last: Option<(i64, i64, String, String)>,
    broken: bool,
}

/// Verifies every chain. `verify_key`: base64 Ed25519 public key for checkpoint signatures
/// (None: signatures are counted as unchecked).
pub async fn verify<C: GenericClient>(
    client: &C,
    verify_key: Option<&str>,
) -> Result<VerifyReport, AuditError> {
    let mut checkpoints: HashMap<String, Vec<Checkpoint>> = HashMap::new();
    for r in client
        .query(
            "SELECT chain, summary FROM audit_records WHERE action = 'audit.checkpoint'",
            &[],
        )
        .await
        .map_err(db_err)?
    {
        let chain: String = r.get(0);
        if let Ok(c) = serde_json::from_value::<Checkpoint>(r.get(1)) {
            checkpoints.entry(chain).or_default().push(c);
        }
    }
    let heads: HashMap<String, (i64, Vec<u8>)> = client
        .query("SELECT chain, seq, hash FROM audit_heads", &[])
        .await
        .map_err(db_err)?
        .iter()
        .map(|r| (r.get::<_, String>(0), (r.get(1), r.get(2))))
        .collect();
    let stream = client
        .query_raw(
            "SELECT id, chain, seq, (extract(epoch FROM at) * 1000000)::bigint, actor_token, \
             actor_name, tenant, array_to_string(path, '/'), action, target, summary::text, \
             status, outcome, prev_hash, hash FROM audit_records ORDER BY chain, seq",
            std::iter::empty::<i32>(),
        )
        .await
        .map_err(db_err)?;
    pin_mut!(stream);
    let mut report = VerifyReport::default();
    let mut state: Option<ChainState> = None;
    let mut seen_chains = Vec::new();
    while let Some(row) = stream.next().await {
        let r = row.map_err(db_err)?;
        report.records += 1;
        let id: i64 = r.get(0);
        let chain: String = r.get(1);
        let seq: i64 = r.get(2);
        let at: i64 = r.get(3);
        let action: String = r.get(8);
        let prev_hash: Vec<u8> = r.get(13);
        let hash: Vec<u8> = r.get(14);
        if state.as_ref().is_none_or(|s| s.chain != chain) {
            if let Some(done) = state.take() {
                finish(done, &heads, &mut report);
            }
            seen_chains.push(chain.clone());
            report.chains += 1;
            let mut s = ChainState {
                chain: chain.clone(),
                next_seq: seq,
                prev: prev_hash.clone(),
                last: None,
                broken: false,
            };
            let zero = vec![0u8; 32];
            if seq == 1 {
                s.prev = zero;
            } else {
                let through = hex::encode(&prev_hash);
                match checkpoints.get(&chain).and_then(|cs| {
                    cs.iter()
                        .find(|c| c.through_seq == seq - 1 && c.through_hash == through)
                }) {
                    None => {
                        s.broken = true;
                        report.broken.push(Broken {
                            chain: chain.clone(),
                            id: Some(id),
                            seq,
                            at: rfc3339_micros(at),
                            action: action.clone(),
                            reason: format!(
                                "records before seq {seq} are missing and no checkpoint covers them"
                            ),
                        });
                    }
                    Some(c) => match verify_key {
                        None => report.checkpoints_unchecked += 1,
                        Some(key) => {
                            let m =
                                sign::checkpoint_message(&chain, c.through_seq, &c.through_hash);
                            if sign::verify(key, &m, &c.signature).is_ok() {
                                report.checkpoints_verified += 1;
                            } else {
                                s.broken = true;
                                report.broken.push(Broken {
                                    chain: chain.clone(),
                                    id: Some(id),
                                    seq,
                                    at: rfc3339_micros(at),
                                    action: action.clone(),
                                    reason: format!(
                                        "the checkpoint through seq {} has no valid signature by api.audit.verifyKey",
                                        c.through_seq
                                    ),
                                });
                            }
                        }
                    },
                }
            }
            state = Some(s);
        }
        let Some(s) = state.as_mut() else { continue };
        if s.broken {
            continue;
        }
        let mut fail = |reason: String| {
            s.broken = true;
            report.broken.push(Broken {
                chain: chain.clone(),
                id: Some(id),
                seq,
                at: rfc3339_micros(at),
                action: action.clone(),
                reason,
            });
        };
        if seq != s.next_seq {
            fail(format!(
                "records seq {}..{} before it are missing (deleted)",
                s.next_seq,
                seq - 1
            ));
            continue;
        }
        if prev_hash != s.prev {
            fail("its prev_hash is not the previous record's hash".into());
            continue;
        }
        let c = Canonical {
            seq,
            chain: &chain,
            at_micros: at,
            actor_token: r.get(4),
            actor_name: r.get(5),
            tenant: r.get(6),
            path: r.get(7),
            action: &action,
            target: r.get(9),
            summary: r.get(10),
            status: r.get(11),
            outcome: r.get(12),
        };
        if c.hash(&prev_hash).as_slice() != hash.as_slice() {
            fail("its contents changed after it was written (hash mismatch)".into());
            continue;
        }
        s.next_seq = seq + 1;
        s.prev = hash;
        s.last = Some((id, seq, rfc3339_micros(at), action));
    }
    if let Some(done) = state.take() {
        finish(done, &heads, &mut report);
    }
    for (chain, (seq, _)) in &heads {
        if *seq > 0 && !seen_chains.contains(chain) {
            report.chains += 1;
            report.broken.push(Broken {
                chain: chain.clone(),
                id: None,
                seq: *seq,
                at: String::new(),
                action: String::new(),
                reason: format!("all records are missing (the head is at seq {seq})"),
            });
        }
    }
    Ok(report)
}

/// The end of a chain: its last record must be the head's.
fn finish(s: ChainState, heads: &HashMap<String, (i64, Vec<u8>)>, report: &mut VerifyReport) {
    if s.broken {
        return;
    }
    let Some((id, seq, at, action)) = s.last else {
        return;
    };
    match heads.get(&s.chain) {
        Some((head_seq, head_hash)) if *head_seq == seq && *head_hash == s.prev => {}
        Some((head_seq, _)) => report.broken.push(Broken {
            chain: s.chain,
            id: Some(id),
            seq,
            at,
            action,
            reason: format!(
                "the chain ends here but its head is at seq {head_seq}: later records are missing"
            ),
        }),
        None => report.broken.push(Broken {
            chain: s.chain,
            id: Some(id),
            seq,
            at,
            action,
            reason: "the chain has no head".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_fields_are_length_prefixed() {
        let mut b = Vec::new();
        field(&mut b, "ab;");
        field(&mut b, "");
        assert_eq!(b, b"3:ab;;0:;");
        // Moving a separator between fields changes the hash.
        let a = Canonical {
            actor_token: "a;",
            actor_name: "b",
            ..Default::default()
        };
        let b = Canonical {
            actor_token: "a",
            actor_name: ";b",
            ..Default::default()
        };
        assert_ne!(a.hash(&[0; 32]), b.hash(&[0; 32]));
    }
}
