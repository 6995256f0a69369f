//! The device registry in PostgreSQL (`devices`, migration `V3__devices.sql`): registration
//! under the limits' advisory locks (see the parent module's doc), reads, locked changes and
//! the counts the tenant and channel answers show. Refusals name the resource, the binding
//! tenant, its limit and its usage.

use std::collections::BTreeMap;

use crate::api::errors::ApiError;
use crate::api::store::{Store, StoreError, lock_key, query_err};

use super::{Chain, DeviceAuth, DeviceChange, DeviceFilter, DeviceRecord, NewDevice};

/// A refusal by a limit: 403 `LimitExceeded`, naming the resource, the binding tenant (and
/// that it is an ancestor), its limit and its usage.
fn limit_refusal(tenant: &str, binding: &str, limit: i64, used: i64) -> ApiError {
    let whose = if binding == tenant {
        format!("tenant {binding:?}")
    } else {
        format!("tenant {binding:?} (an ancestor of {tenant:?})")
    };
    ApiError::Denied {
        code: 403,
        reason: "LimitExceeded".into(),
        message: format!(
            "devices: limit reached: {whose} allows {limit} devices in its subtree and {used} are registered; cannot register one more"
        ),
        field: None,
    }
}

fn channel_refusal(channel: &str, max: i64, used: i64) -> ApiError {
    ApiError::Denied {
        code: 403,
        reason: "LimitExceeded".into(),
        message: format!(
            "channel {channel:?} is at capacity: maxConnections {max} and {used} devices are registered on it; cannot register one more"
        ),
        field: None,
    }
}

const COLUMNS: &str = "tenant, id, channel, auth, labels, username, enabled, disabled_reason, \
    cert_serial, cert_sha256, extract(epoch from cert_not_after)::bigint, created_by, \
    extract(epoch from created_at)::bigint, extract(epoch from credentials_at)::bigint";

fn row(r: &tokio_postgres::Row) -> DeviceRecord {
    let labels: serde_json::Value = r.get(4);
    DeviceRecord {
        tenant: r.get(0),
        id: r.get(1),
        channel: r.get(2),
        auth: DeviceAuth::parse(r.get::<_, &str>(3)),
        labels: serde_json::from_value(labels).unwrap_or_default(),
        username: r.get(5),
        enabled: r.get(6),
        disabled_reason: r.get(7),
        cert_serial: r.get(8),
        cert_sha256: r.get(9),
        cert_not_after: r.get(10),
        created_by: r.get(11),
        created_at: r.get(12),
        credentials_at: r.get(13),
    }
}

fn conflict(tenant: &str, id: &str) -> ApiError {
    ApiError::Conflict {
        reason: "AlreadyExists",
        message: format!(
            "device {id:?} already exists in tenant {tenant:?} (ids are unique per tenant)"
        ),
    }
}

impl Store {
    /// Admits `new` against the limits of `chain` and the channel's `max_connections`, then
    /// runs `provision` (the broker client) and commits; all under the locks described in
    /// the module doc. When `provision` fails nothing is recorded; when the commit fails after
    /// `provision` succeeded, `undo` removes what it made.
    pub async fn register_device<T, P, U>(
        &self,
        new: &NewDevice,
        chain: &Chain,
        max_connections: Option<i64>,
        provision: P,
        undo: U,
    ) -> Result<(DeviceRecord, T), ApiError>
    where
        P: std::future::Future<Output = Result<T, ApiError>>,
        U: std::future::Future<Output = ()>,
    {
        let mut c = self.devices_client().await?;
        let tx = c.transaction().await.map_err(query_err)?;
        for (name, _) in &chain.tenants {
            tx.execute(
                "SELECT pg_advisory_xact_lock($1)",
                &[&lock_key("devices", name)],
            )
            .await
            .map_err(query_err)?;
        }
        tx.execute(
            "SELECT pg_advisory_xact_lock($1)",
            &[&lock_key("channel-devices", &new.channel)],
        )
        .await
        .map_err(query_err)?;
        if tx
            .query_opt(
                "SELECT 1 FROM devices WHERE tenant = $1 AND id = $2",
                &[&new.tenant, &new.id],
            )
            .await
            .map_err(query_err)?
            .is_some()
        {
            return Err(conflict(&new.tenant, &new.id));
        }
        let limited: Vec<&str> = chain
            .tenants
            .iter()
            .filter(|(_, l)| *l >= 0)
            .map(|(n, _)| n.as_str())
            .collect();
        if !limited.is_empty() {
            let rows = tx
                .query(
                    "SELECT p, count(*) FROM devices, unnest(path) AS p \
                     WHERE path && $1 AND p = ANY($1) GROUP BY p",
                    &[&limited],
                )
                .await
                .map_err(query_err)?;
            let used: BTreeMap<String, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            // The tightest: least room left; on a tie the one nearest the root.
            let binding = chain
                .tenants
                .iter()
                .filter(|(_, l)| *l >= 0)
                .map(|(n, l)| (n, *l, used.get(n).copied().unwrap_or(0)))
                .filter(|(_, l, u)| u + 1 > *l)
                .min_by_key(|(_, l, u)| l - u);
            if let Some((name, limit, u)) = binding {
                return Err(limit_refusal(&new.tenant, name, limit, u));
            }
        }
        if let Some(max) = max_connections {
            let used: i64 = tx
                .query_one(
                    "SELECT count(*) FROM devices WHERE channel = $1",
                    &[&new.channel],
                )
                .await
                .map_err(query_err)?
                .get(0);
            if used + 1 > max {
                return Err(channel_refusal(&new.channel, max, used));
            }
        }
        let path: Vec<&str> = chain.tenants.iter().map(|(n, _)| n.as_str()).collect();
        let labels = serde_json::to_value(&new.labels).unwrap_or_default();
        let username = new.username.clone();
        let cert = new.cert.clone();
        let sql = format!(
            "INSERT INTO devices (tenant, id, channel, auth, labels, path, username, created_by, \
             cert_serial, cert_sha256, cert_not_after) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, to_timestamp($11::bigint)) \
             RETURNING {COLUMNS}"
        );
        let inserted = tx
            .query_one(
                &sql,
                &[
                    &new.tenant,
                    &new.id,
                    &new.channel,
                    &new.auth.as_str(),
                    &labels,
                    &path,
                    &username,
                    &new.created_by,
                    &cert.as_ref().map(|c| c.serial.clone()),
                    &cert.as_ref().map(|c| c.sha256.clone()),
                    &cert.as_ref().map(|c| c.not_after),
                ],
            )
            .await;
        let inserted = match inserted {
            Ok(r) => row(&r),
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {
                return Err(conflict(&new.tenant, &new.id));
            }
            Err(e) => return Err(query_err(e).into()),
        };
        let out = provision.await?;
        if let Err(e) = tx.commit().await {
            undo.await;
            return Err(query_err(e).into());
        }
        Ok((inserted, out))
    }

    /// One device of `tenant`.
    pub async fn device(&self, tenant: &str, id: &str) -> Result<Option<DeviceRecord>, StoreError> {
        let c = self.devices_client().await?;
        let sql = format!("SELECT {COLUMNS} FROM devices WHERE tenant = $1 AND id = $2");
        let r = c
            .query_opt(&sql, &[&tenant, &id])
            .await
            .map_err(query_err)?;
        Ok(r.as_ref().map(row))
    }

    /// Devices of `tenant` matching `filter`, by id, after `after`, at most `limit`.
    pub async fn devices(
        &self,
        tenant: &str,
        filter: &DeviceFilter,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<DeviceRecord>, StoreError> {
        let c = self.devices_client().await?;
        let labels = serde_json::to_value(&filter.labels).unwrap_or_default();
        let prefix = filter.prefix.as_deref().map(|p| {
            format!(
                "{}%",
                p.replace('\\', "\\\\")
                    .replace('%', "\\%")
                    .replace('_', "\\_")
            )
        });
        let sql = format!(
            "SELECT {COLUMNS} FROM devices WHERE tenant = $1 AND id > $2 \
             AND ($3::text IS NULL OR channel = $3) AND ($4::text IS NULL OR auth = $4) \
             AND ($5::bool IS NULL OR enabled = $5) AND labels @> $6 \
             AND ($7::text IS NULL OR id LIKE $7) ORDER BY id LIMIT $8"
        );
        let rows = c
            .query(
                &sql,
                &[
                    &tenant,
                    &after.unwrap_or(""),
                    &filter.channel,
                    &filter.auth.map(DeviceAuth::as_str),
                    &filter.enabled,
                    &labels,
                    &prefix,
                    &limit,
                ],
            )
            .await
            .map_err(query_err)?;
        Ok(rows.iter().map(row).collect())
    }

    /// Runs `change` on the locked row of device `tenant/id` (`SELECT … FOR UPDATE`) and
    /// applies the returned update: `Some(Some(reason))` disables, `Some(None)` enables,
    /// `None` deletes the row. `cert` replaces the certificate facts (rotation). `change` runs
    /// the broker side first; when it fails, the row is unchanged.
    pub async fn change_device<T, F, Fut>(
        &self,
        tenant: &str,
        id: &str,
        change: F,
    ) -> Result<Option<(DeviceRecord, T)>, ApiError>
    where
        F: FnOnce(DeviceRecord) -> Fut,
        Fut: std::future::Future<Output = Result<(DeviceChange, T), ApiError>>,
    {
        let mut c = self.devices_client().await?;
        let tx = c.transaction().await.map_err(query_err)?;
        let sql = format!("SELECT {COLUMNS} FROM devices WHERE tenant = $1 AND id = $2 FOR UPDATE");
        let Some(current) = tx
            .query_opt(&sql, &[&tenant, &id])
            .await
            .map_err(query_err)?
            .as_ref()
            .map(row)
        else {
            return Ok(None);
        };
        let (what, out) = change(current.clone()).await?;
        let after = match what {
            DeviceChange::Delete => {
                tx.execute(
                    "DELETE FROM devices WHERE tenant = $1 AND id = $2",
                    &[&tenant, &id],
                )
                .await
                .map_err(query_err)?;
                current
            }
            DeviceChange::Enabled(reason) => {
                let sql = format!(
                    "UPDATE devices SET enabled = $3, disabled_reason = $4 \
                     WHERE tenant = $1 AND id = $2 RETURNING {COLUMNS}"
                );
                let r = tx
                    .query_one(&sql, &[&tenant, &id, &reason.is_none(), &reason])
                    .await
                    .map_err(query_err)?;
                row(&r)
            }
            DeviceChange::Credentials(cert, username) => {
                let sql = format!(
                    "UPDATE devices SET credentials_at = now(), cert_serial = $3, cert_sha256 = $4, \
                     cert_not_after = to_timestamp($5::bigint), username = coalesce($6, username) \
                     WHERE tenant = $1 AND id = $2 RETURNING {COLUMNS}"
                );
                let r = tx
                    .query_one(
                        &sql,
                        &[
                            &tenant,
                            &id,
                            &cert.as_ref().map(|c| c.serial.clone()),
                            &cert.as_ref().map(|c| c.sha256.clone()),
                            &cert.as_ref().map(|c| c.not_after),
                            &username,
                        ],
                    )
                    .await
                    .map_err(query_err)?;
                row(&r)
            }
        };
        tx.commit().await.map_err(query_err)?;
        Ok(Some((after, out)))
    }

    /// Registered devices of each tenant of `names`' subtrees: name → (own, subtree).
    /// Tenants without devices are absent.
    /// With `only_these`, only the tenants of `names` are counted (not their subtrees'
    /// members).
    pub async fn device_counts(
        &self,
        names: &[String],
        only_these: bool,
    ) -> Result<BTreeMap<String, (i64, i64)>, StoreError> {
        let c = self.devices_client().await?;
        let mut out: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        let sub = c
            .query(
                "SELECT p, count(*) FROM devices, unnest(path) AS p \
                 WHERE path && $1 AND (NOT $2 OR p = ANY($1)) GROUP BY p",
                &[&names, &only_these],
            )
            .await
            .map_err(query_err)?;
        for r in &sub {
            out.entry(r.get(0)).or_default().1 = r.get(1);
        }
        let own = c
            .query(
                "SELECT tenant, count(*) FROM devices WHERE path && $1 \
                 AND (NOT $2 OR tenant = ANY($1)) GROUP BY tenant",
                &[&names, &only_these],
            )
            .await
            .map_err(query_err)?;
        for r in &own {
            out.entry(r.get(0)).or_default().0 = r.get(1);
        }
        Ok(out)
    }

    /// Registered devices per channel, and the tenants having devices on it.
    pub async fn channel_device_counts(
        &self,
    ) -> Result<BTreeMap<String, (i64, Vec<String>)>, StoreError> {
        let c = self.devices_client().await?;
        let rows = c
            .query(
                "SELECT channel, count(*), array_agg(DISTINCT tenant ORDER BY tenant) \
                 FROM devices GROUP BY channel",
                &[],
            )
            .await
            .map_err(query_err)?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), (r.get(1), r.get(2))))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::super::device_topic;
    use super::*;

    #[test]
    fn refusals_name_resource_binding_tenant_limit_and_usage() {
        let e = limit_refusal("cust", "dist", 10, 10).to_string();
        assert_eq!(
            e,
            "devices: limit reached: tenant \"dist\" (an ancestor of \"cust\") allows 10 devices in its subtree and 10 are registered; cannot register one more"
        );
        let e = channel_refusal("teltonika", 5, 5);
        assert_eq!(e.status(), axum::http::StatusCode::FORBIDDEN);
        assert!(e.to_string().contains("maxConnections 5"));
        assert_eq!(device_topic("c", "t", "d"), "channels/c/t/devices/d/#");
    }
}
