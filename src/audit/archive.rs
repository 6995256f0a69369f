//! `silo audit archive --before T --out FILE`: retention without breaking verifiability.
//!
//! In one transaction, as the schema's owner (`api.database.ownerUrl`):
//! 1. locks every chain head (appends wait for the few seconds this takes);
//! 2. per chain, takes the records older than `before` (a prefix of the chain: times are
//!    stamped under the head lock) and writes them to FILE as JSON lines (the API's record
//!    shape: chain, seq, hashes included, so the archive verifies on its own);
//! 3. appends a checkpoint record to the chain (`action: audit.checkpoint`) whose summary
//!    holds `throughSeq`, `throughHash` (the hash of the last archived record), the file's
//!    SHA-256 and an Ed25519 signature over (chain, throughSeq, throughHash) by
//!    `api.audit.signingKey`;
//! 4. disables the append-only trigger for this transaction only, deletes the archived
//!    records, enables it again; commits.
//!
//! `silo audit verify` then starts each chain at `throughSeq + 1`, whose `prev_hash` must be
//! `throughHash`, and checks the signature with `api.audit.verifyKey`.

use std::io::Write;
use std::path::{Path, PathBuf};

use futures::{StreamExt, pin_mut};
use sha2::{Digest, Sha256};

use super::sign::{Signer, checkpoint_message};
use super::{AuditError, Entry, RECORD_COLUMNS, append, db_err, record_of};

/// What an archive run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArchiveReport {
    pub file: PathBuf,
    pub records: u64,
    /// (chain, throughSeq) of each checkpoint written.
    pub checkpoints: Vec<(String, i64)>,
}

/// Archives records older than `before` (RFC 3339) into `out` (created; an existing file is
/// refused). Needs the owner's connection (the trigger is disabled for the deletion).
pub async fn archive(
    client: &mut tokio_postgres::Client,
    before: &str,
    out: &Path,
    signer: &Signer,
) -> Result<ArchiveReport, AuditError> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(out)
        .map_err(|e| AuditError::Io(format!("cannot create {}: {e}", out.display())))?;
    let result = run(client, before, out, file, signer).await;
    if result.is_err() {
        let _ = std::fs::remove_file(out);
    }
    result
}

async fn run(
    client: &mut tokio_postgres::Client,
    before: &str,
    out: &Path,
    file: std::fs::File,
    signer: &Signer,
) -> Result<ArchiveReport, AuditError> {
    let io = |e: std::io::Error| AuditError::Io(format!("writing {}: {e}", out.display()));
    let mut w = std::io::BufWriter::new(file);
    let mut digest = Sha256::new();
    let tx = client.transaction().await.map_err(db_err)?;
    let chains: Vec<String> = tx
        .query(
            "SELECT chain FROM audit_heads ORDER BY chain FOR UPDATE",
            &[],
        )
        .await
        .map_err(db_err)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut report = ArchiveReport {
        file: out.to_path_buf(),
        ..Default::default()
    };
    let mut cuts: Vec<(String, i64, String, u64)> = Vec::new();
    for chain in &chains {
        let through: Option<i64> = tx
            .query_one(
                "SELECT max(seq) FROM audit_records WHERE chain = $1 AND at < $2::text::timestamptz",
                &[chain, &before],
            )
            .await
            .map_err(db_err)?
            .get(0);
        let Some(through) = through else { continue };
        let sql = format!(
            "SELECT {RECORD_COLUMNS} FROM audit_records WHERE chain = $1 AND seq <= $2 ORDER BY seq"
        );
        let stream = tx
            .query_raw(
                &sql,
                [
                    chain as &(dyn tokio_postgres::types::ToSql + Sync),
                    &through,
                ],
            )
            .await
            .map_err(db_err)?;
        pin_mut!(stream);
        let mut last_hash = String::new();
        let mut n = 0u64;
        while let Some(row) = stream.next().await {
            let rec = record_of(&row.map_err(db_err)?);
            let mut line = serde_json::to_vec(&rec).map_err(|e| AuditError::Io(e.to_string()))?;
            line.push(b'\n');
            digest.update(&line);
            w.write_all(&line).map_err(io)?;
            last_hash = rec.hash;
            n += 1;
        }
        report.records += n;
        cuts.push((chain.clone(), through, last_hash, n));
    }
    w.flush().map_err(io)?;
    w.get_ref().sync_all().map_err(io)?;
    let file_sha = hex::encode(digest.finalize());
    let file_name = out
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    tx.batch_execute("ALTER TABLE audit_records DISABLE TRIGGER audit_records_append_only")
        .await
        .map_err(db_err)?;
    for (chain, through, hash, n) in cuts {
        let signature = signer.sign(&checkpoint_message(&chain, through, &hash));
        append(
            &tx,
            &Entry {
                actor_token: "silo audit archive".into(),
                actor_name: String::new(),
                tenant: chain.clone(),
                path: if chain.is_empty() {
                    Vec::new()
                } else {
                    vec![chain.clone()]
                },
                action: "audit.checkpoint".into(),
                target: format!("audit/{chain}"),
                summary: serde_json::json!({
                    "throughSeq": through,
                    "throughHash": hash,
                    "archivedRecords": n,
                    "before": before,
                    "file": file_name,
                    "fileSha256": file_sha,
                    "publicKey": signer.public_key_b64(),
                    "signature": signature,
                }),
                status: 0,
                outcome: "ok".into(),
            },
        )
        .await?;
        tx.execute(
            "DELETE FROM audit_records WHERE chain = $1 AND seq <= $2",
            &[&chain, &through],
        )
        .await
        .map_err(db_err)?;
        report.checkpoints.push((chain, through));
    }
    tx.batch_execute("ALTER TABLE audit_records ENABLE TRIGGER audit_records_append_only")
        .await
        .map_err(db_err)?;
    tx.commit().await.map_err(db_err)?;
    Ok(report)
}
