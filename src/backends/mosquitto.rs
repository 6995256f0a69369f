//! A Shared tenant's client and role on the platform's shared Mosquitto (dynamic security).
//!
//! The operator logs in to the shared broker as a dynamic-security admin client
//! (`shared.mosquitto.adminSecret`) and sends commands to the plugin's control topic
//! [`CONTROL_TOPIC`], reading the answers from [`RESPONSE_TOPIC`]; each command carries a
//! `correlationData` so an answer is matched to its request (answers to requests that
//! timed out are skipped). The connection is opened on first use and dropped after any
//! transport failure or timeout, so the next call reconnects. Every request is bounded by
//! [`REQUEST_TIMEOUT`].
//!
//! # What a tenant gets
//!
//! A client named after the tenant with exactly one role, [`crate::backends::broker_role`],
//! holding for each of the tenant's topic filters ([`crate::backends::topic_filters`]):
//!
//! - `publishClientSend` allow: it may publish under the filter;
//! - `subscribePattern` allow: it may subscribe to the filter and to any filter *within* it
//!   (`tenants/a/+/x`), while `#`, `tenants/#` or `+/a/#` are refused (dynsec checks that the
//!   subscription is covered by the pattern; `subscribeLiteral` would only allow the exact
//!   string `tenants/a/#`);
//! - `publishClientReceive` allow;
//!
//! and, at priority -1 (checked after the allows), a catch-all `#` **deny** for each of the
//! three, so the role alone decides what the tenant can do on normal topics, whatever the
//! broker's default ACL access says. The receive deny matters: Mosquitto 2.0 lets any client
//! take over a persistent session by its client id, whoever owned it, and with the default
//! `publishClientReceive` = allow the new owner would be delivered the old owner's
//! subscriptions (`tests/shared_mosquitto.rs` shows that this is closed). A tenant can still
//! *disconnect* another tenant's client by reusing its client id; tenants should use
//! unguessable client ids. The client has no client-id restriction (a tenant may open
//! several connections); a restriction found on it is removed as drift.
//!
//! # Leaving
//!
//! [`MosquittoBackend::remove_tenant`] deletes the client and role and clears the retained
//! messages under the tenant's trees ([`MosquittoBackend::clear_retained`]). Offline
//! persistent sessions of the tenant's client ids cannot be found: Mosquitto 2.0 keys sessions
//! by client id only and has no command to list them; the broker's
//! `persistent_client_expiration` ends them.
//!
//! # Broker requirements
//!
//! Topics starting with `$` are not matched by `#`, so for `$CONTROL/…` and `$SYS/…` the
//! broker's `defaultACLAccess` applies: the platform's shared broker **must keep the dynsec
//! defaults** `publishClientSend` = deny and `subscribe` = deny (otherwise a tenant could
//! send commands to the plugin, or read the admin's commands, which carry passwords). This
//! module never changes the global defaults; the tests check that with them a tenant cannot
//! cross into another tenant's topics nor into `$CONTROL`. The admin client's role needs
//! `publishClientSend`, `publishClientReceive` and `subscribePattern` on
//! `$CONTROL/dynamic-security/#` (what `mosquitto_ctrl dynsec init` creates).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, MqttOptions, Packet, QoS,
    SubscribeReasonCode,
};
use serde_json::{Value, json};
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout_at};

use super::{
    AdminCredentials, BackendError, BrokerAccount, BrokerRemoval, CHANNEL_ROOT, Ensured, Service,
    TOPIC_ROOT,
};

/// Topic the dynamic-security plugin reads commands from.
pub const CONTROL_TOPIC: &str = "$CONTROL/dynamic-security/v1";
/// Topic the plugin publishes its answers to.
pub const RESPONSE_TOPIC: &str = "$CONTROL/dynamic-security/v1/response";
/// Bound on connecting, and on each command's answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How many subscribe-and-clear passes [`MosquittoBackend::clear_retained`] makes at most.
pub const CLEAR_PASSES: usize = 10;
/// Priority of the catch-all deny ACLs (below the allows at 0).
pub const DENY_PRIORITY: i64 = -1;
/// The three kinds of ACL a tenant's role holds per topic filter.
pub const ACL_TYPES: [&str; 3] = [
    "publishClientSend",
    "subscribePattern",
    "publishClientReceive",
];

const SERVICE: Service = Service::Mosquitto;
const MAX_PACKET: usize = 4 * 1024 * 1024;

/// A tenant's clients and roles on the shared Mosquitto.
pub struct MosquittoBackend {
    host: String,
    port: u16,
    admin: AdminCredentials,
    conn: Mutex<Option<Connection>>,
    seq: AtomicU64,
}

impl std::fmt::Debug for MosquittoBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MosquittoBackend")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("admin", &self.admin)
            .finish_non_exhaustive()
    }
}

/// One ACL of a dynsec role.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Acl {
    acltype: String,
    topic: String,
    allow: bool,
    priority: i64,
}

impl Acl {
    fn describe(&self) -> String {
        format!(
            "{} {} {} (priority {})",
            self.acltype,
            if self.allow { "allow" } else { "deny" },
            self.topic,
            self.priority
        )
    }

    fn to_json(&self) -> Value {
        json!({
            "acltype": self.acltype,
            "topic": self.topic,
            "allow": self.allow,
            "priority": self.priority,
        })
    }
}

/// What the event-loop task reports.
enum Incoming {
    ConnAck,
    SubAck(Vec<SubscribeReasonCode>),
    Response(Vec<u8>),
    Failed(String),
}

/// An open admin connection: the client, the event-loop task and what it reports.
struct Connection {
    client: AsyncClient,
    events: mpsc::UnboundedReceiver<Incoming>,
    task: JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the cleanup client's event loop reports.
enum Cleanup {
    ConnAck,
    SubAck(Vec<SubscribeReasonCode>),
    /// Topic and retain flag of a delivered message.
    Message(String, bool),
    Failed(String),
}

/// Aborts the task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A command's answer: its `data` (or `null`), or the plugin's error message.
type Reply = Result<Value, String>;

impl MosquittoBackend {
    pub fn new(host: impl Into<String>, port: u16, admin: AdminCredentials) -> Self {
        MosquittoBackend {
            host: host.into(),
            port,
            admin,
            conn: Mutex::new(None),
            seq: AtomicU64::new(1),
        }
    }

    /// The admin login this backend uses.
    pub fn admin(&self) -> &AdminCredentials {
        &self.admin
    }

    fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    fn connect_error(&self, message: impl Into<String>) -> BackendError {
        BackendError::Connect {
            service: SERVICE,
            address: self.address(),
            message: message.into(),
        }
    }

    /// Create or correct the tenant's role (ACLs exactly as described in the module doc) and
    /// client (only that role, no groups, no client-id restriction), apply `enabled` and, when
    /// asked, the password. A steady state only reads.
    pub async fn ensure_client(&self, a: &BrokerAccount) -> Result<Ensured, BackendError> {
        let action = format!("ensure broker client {:?}", a.username);
        check_name(&action, "username", &a.username)?;
        check_name(&action, "role", &a.role)?;
        if a.username == self.admin.username {
            return Err(invalid(
                &action,
                "username",
                &a.username,
                "is the admin client's username",
            ));
        }
        if a.password.is_empty() {
            return Err(BackendError::Command {
                service: SERVICE,
                action,
                message: "invalid password: empty".to_string(),
            });
        }
        for t in &a.topics {
            check_topic(&action, t)?;
        }
        let desired = desired_acls(&a.topics);
        let mut changes = Vec::new();
        let mut conn = self.conn.lock().await;

        // The role first, so the client never exists without its ACLs.
        let role = a.role.as_str();
        match self
            .call(&mut conn, json!({"command": "getRole", "rolename": role}))
            .await?
        {
            Err(e) if is_not_found(&e) => {
                let acls: Vec<Value> = desired.iter().map(Acl::to_json).collect();
                self.call_ok(
                    &mut conn,
                    json!({
                        "command": "createRole",
                        "rolename": role,
                        "textname": format!("silo tenant {}", a.tenant),
                        "acls": acls,
                    }),
                    &format!("createRole {role:?}"),
                )
                .await?;
                changes.push(format!(
                    "created broker role {role} with {} ACLs",
                    desired.len()
                ));
            }
            Err(e) => return Err(command_error(&format!("getRole {role:?}"), e)),
            Ok(data) => {
                let existing = parse_acls(&data).map_err(|m| {
                    command_error(
                        &format!("getRole {role:?}"),
                        format!("unexpected answer: {m}"),
                    )
                })?;
                for acl in existing.iter().filter(|x| !desired.contains(x)) {
                    self.call_ok(
                        &mut conn,
                        json!({
                            "command": "removeRoleACL",
                            "rolename": role,
                            "acltype": acl.acltype,
                            "topic": acl.topic,
                        }),
                        &format!("removeRoleACL {role:?} {} {:?}", acl.acltype, acl.topic),
                    )
                    .await?;
                    changes.push(format!(
                        "removed ACL {} from broker role {role}",
                        acl.describe()
                    ));
                }
                for acl in desired.iter().filter(|x| !existing.contains(x)) {
                    let mut cmd = acl.to_json();
                    cmd["command"] = json!("addRoleACL");
                    cmd["rolename"] = json!(role);
                    self.call_ok(
                        &mut conn,
                        cmd,
                        &format!("addRoleACL {role:?} {} {:?}", acl.acltype, acl.topic),
                    )
                    .await?;
                    changes.push(format!(
                        "added ACL {} to broker role {role}",
                        acl.describe()
                    ));
                }
            }
        }

        let user = a.username.as_str();
        match self
            .call(&mut conn, json!({"command": "getClient", "username": user}))
            .await?
        {
            Err(e) if is_not_found(&e) => {
                self.call_ok(
                    &mut conn,
                    json!({
                        "command": "createClient",
                        "username": user,
                        "password": a.password,
                        "textname": format!("silo tenant {}", a.tenant),
                        "roles": [{"rolename": role}],
                    }),
                    &format!("createClient {user:?}"),
                )
                .await?;
                changes.push(format!("created broker client {user} with role {role}"));
                if !a.enabled {
                    self.set_enabled(&mut conn, user, false).await?;
                    changes.push(format!("disabled broker client {user}"));
                }
            }
            Err(e) => return Err(command_error(&format!("getClient {user:?}"), e)),
            Ok(data) => {
                let client = &data["client"];
                let disabled = client["disabled"].as_bool().unwrap_or(false);
                // Suspend before anything else; re-enable only once everything is right.
                if !a.enabled && !disabled {
                    self.set_enabled(&mut conn, user, false).await?;
                    changes.push(format!("disabled broker client {user}"));
                }
                let roles: Vec<String> = names(&client["roles"], "rolename");
                for r in roles.iter().filter(|r| r.as_str() != role) {
                    self.call_ok(
                        &mut conn,
                        json!({"command": "removeClientRole", "username": user, "rolename": r}),
                        &format!("removeClientRole {user:?} {r:?}"),
                    )
                    .await?;
                    changes.push(format!("removed role {r} from broker client {user}"));
                }
                if !roles.iter().any(|r| r == role) {
                    self.call_ok(
                        &mut conn,
                        json!({"command": "addClientRole", "username": user, "rolename": role}),
                        &format!("addClientRole {user:?} {role:?}"),
                    )
                    .await?;
                    changes.push(format!("added role {role} to broker client {user}"));
                }
                for g in names(&client["groups"], "groupname") {
                    self.call_ok(
                        &mut conn,
                        json!({"command": "removeGroupClient", "groupname": g, "username": user}),
                        &format!("removeGroupClient {g:?} {user:?}"),
                    )
                    .await?;
                    changes.push(format!("removed broker client {user} from group {g}"));
                }
                if client["clientid"].as_str().is_some_and(|c| !c.is_empty()) {
                    self.call_ok(
                        &mut conn,
                        json!({"command": "modifyClient", "username": user, "clientid": ""}),
                        &format!("modifyClient {user:?}"),
                    )
                    .await?;
                    changes.push(format!(
                        "removed the client-id restriction of broker client {user}"
                    ));
                }
                if a.reset_password {
                    self.call_ok(
                        &mut conn,
                        json!({"command": "setClientPassword", "username": user, "password": a.password}),
                        &format!("setClientPassword {user:?}"),
                    )
                    .await?;
                    changes.push(format!("set the password of broker client {user}"));
                }
                if a.enabled && disabled {
                    self.set_enabled(&mut conn, user, true).await?;
                    changes.push(format!("enabled broker client {user}"));
                }
            }
        }
        if !changes.is_empty() {
            tracing::info!(tenant = %a.tenant, ?changes, "shared Mosquitto client ensured");
        }
        Ok(Ensured { changes })
    }

    /// Delete the tenant's client (the broker disconnects it) and role. `false` when neither
    /// existed.
    pub async fn remove_client(&self, username: &str, role: &str) -> Result<bool, BackendError> {
        let action = format!("remove broker client {username:?}");
        check_name(&action, "username", username)?;
        check_name(&action, "role", role)?;
        if username == self.admin.username {
            return Err(invalid(
                &action,
                "username",
                username,
                "is the admin client's username",
            ));
        }
        let mut conn = self.conn.lock().await;
        let mut removed = false;
        for (cmd, key, name) in [
            ("deleteClient", "username", username),
            ("deleteRole", "rolename", role),
        ] {
            match self
                .call(&mut conn, json!({"command": cmd, key: name}))
                .await?
            {
                Ok(_) => removed = true,
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(command_error(&format!("{cmd} {name:?}"), e)),
            }
        }
        if removed {
            tracing::info!(username, role, "shared Mosquitto client removed");
        }
        Ok(removed)
    }

    /// The tenant leaves the broker: [`Self::remove_client`] for its client and role, then
    /// [`Self::clear_retained`] under [`crate::backends::retained_filters`].
    pub async fn remove_tenant(&self, tenant: &str) -> Result<BrokerRemoval, BackendError> {
        let removed = self
            .remove_client(tenant, &crate::backends::broker_role(tenant))
            .await?;
        let retained_cleared = self.clear_retained(tenant).await?;
        Ok(BrokerRemoval {
            removed,
            retained_cleared,
        })
    }

    /// Clear every retained message under the tenant's topic trees; returns how many.
    ///
    /// Mosquitto has no command to list or drop retained messages, so this is done the MQTT way
    /// with a short-lived client of its own: a dynsec client and role `silo_cleanup.<tenant>`
    /// (the `_` and `.` cannot occur in a tenant's names) allowed exactly those trees and a
    /// marker topic, created with a fresh random password and deleted afterwards (a leftover
    /// from an interrupted run is replaced the next time). It subscribes, which makes the
    /// broker send every retained message there (with the retain flag), then publishes a marker
    /// message to itself: the broker queues it after the retained ones, so once it arrives all
    /// were seen. Each one is cleared by publishing an empty retained message to its topic, and
    /// the pass is repeated until one finds nothing (the broker may drop part of a very large
    /// set from its delivery queue; a pass clears what it saw). Bounded: [`CLEAR_PASSES`]
    /// passes of at most [`REQUEST_TIMEOUT`] waiting each.
    pub async fn clear_retained(&self, tenant: &str) -> Result<usize, BackendError> {
        let action = format!("clear retained messages of tenant {tenant:?}");
        check_name(&action, "tenant", tenant)?;
        let user = format!("silo_cleanup.{tenant}");
        let filters = crate::backends::retained_filters(tenant);
        let marker_root = format!("silo-cleanup/{tenant}");
        let password = format!("{:032x}", rand::random::<u128>());
        {
            let mut conn = self.conn.lock().await;
            for (cmd, key) in [("deleteClient", "username"), ("deleteRole", "rolename")] {
                match self
                    .call(&mut conn, json!({"command": cmd, key: user}))
                    .await?
                {
                    Ok(_) => {}
                    Err(e) if is_not_found(&e) => {}
                    Err(e) => return Err(command_error(&format!("{cmd} {user:?}"), e)),
                }
            }
            let acls: Vec<Value> = filters
                .iter()
                .chain(std::iter::once(&format!("{marker_root}/#")))
                .flat_map(|f| {
                    ACL_TYPES.iter().map(
                        move |t| json!({"acltype": t, "topic": f, "allow": true, "priority": 0}),
                    )
                })
                .collect();
            self.call_ok(
                &mut conn,
                json!({"command": "createRole", "rolename": user, "acls": acls,
                       "textname": format!("silo: clearing tenant {tenant}'s retained messages")}),
                &format!("createRole {user:?}"),
            )
            .await?;
            self.call_ok(
                &mut conn,
                json!({"command": "createClient", "username": user, "password": password,
                       "roles": [{"rolename": user}]}),
                &format!("createClient {user:?}"),
            )
            .await?;
        }
        let cleared = self
            .clear_as(&user, &password, &filters, &marker_root)
            .await;
        let mut conn = self.conn.lock().await;
        for (cmd, key) in [("deleteClient", "username"), ("deleteRole", "rolename")] {
            match self
                .call(&mut conn, json!({"command": cmd, key: user}))
                .await?
            {
                Ok(_) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(command_error(&format!("{cmd} {user:?}"), e)),
            }
        }
        let cleared = cleared?;
        if cleared > 0 {
            tracing::info!(
                tenant,
                cleared,
                "retained messages cleared on the shared Mosquitto"
            );
        }
        Ok(cleared)
    }

    /// The passes of [`Self::clear_retained`], logged in as `user`.
    async fn clear_as(
        &self,
        user: &str,
        password: &str,
        filters: &[String],
        marker_root: &str,
    ) -> Result<usize, BackendError> {
        let action = format!("clear retained messages under {}", filters.join(", "));
        let fail = |m: String| command_error(&action, m);
        let suffix: u64 = rand::random();
        let mut opts = MqttOptions::new(
            format!("silo-cleanup-{suffix:016x}"),
            self.host.clone(),
            self.port,
        );
        opts.set_credentials(user.to_string(), password.to_string());
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_clean_session(true);
        opts.set_max_packet_size(MAX_PACKET, MAX_PACKET);
        let (client, mut eventloop) = AsyncClient::new(opts, 64);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let report = match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => Cleanup::ConnAck,
                    Ok(Event::Incoming(Packet::SubAck(s))) => Cleanup::SubAck(s.return_codes),
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        Cleanup::Message(p.topic.clone(), p.retain)
                    }
                    Ok(_) => continue,
                    Err(e) => {
                        let _ = tx.send(Cleanup::Failed(describe(&e)));
                        return;
                    }
                };
                if tx.send(report).is_err() {
                    return;
                }
            }
        });
        let _stop = AbortOnDrop(task);
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        loop {
            match next_cleanup(&mut rx, deadline, &fail).await? {
                None => return Err(fail("no CONNACK for the cleanup client".to_string())),
                Some(Cleanup::ConnAck) => break,
                Some(_) => {}
            }
        }
        let mut cleared = BTreeSet::new();
        for pass in 0..CLEAR_PASSES {
            let deadline = Instant::now() + REQUEST_TIMEOUT;
            let marker = format!("{marker_root}/{suffix:016x}-{pass}");
            for f in filters.iter().chain(std::iter::once(&marker)) {
                client
                    .subscribe(f.as_str(), QoS::AtLeastOnce)
                    .await
                    .map_err(|e| fail(format!("subscribe {f}: {e}")))?;
            }
            client
                .publish(marker.as_str(), QoS::AtLeastOnce, false, Vec::<u8>::new())
                .await
                .map_err(|e| fail(format!("publish the marker: {e}")))?;
            let (mut acks, mut seen, mut marker_seen) = (0, 0, false);
            while !marker_seen {
                match next_cleanup(&mut rx, deadline, &fail).await? {
                    None => break,
                    Some(Cleanup::SubAck(codes)) => {
                        if !codes
                            .iter()
                            .all(|c| matches!(c, SubscribeReasonCode::Success(_)))
                        {
                            return Err(fail(format!(
                                "the cleanup client may not subscribe ({codes:?})"
                            )));
                        }
                        acks += 1;
                    }
                    Some(Cleanup::Message(t, _)) if t == marker => marker_seen = true,
                    // Only the copies sent because of the new subscription carry the retain
                    // flag; live traffic (and our own clearing publishes) does not.
                    Some(Cleanup::Message(t, true)) => {
                        seen += 1;
                        client
                            .publish(t.as_str(), QoS::AtLeastOnce, true, Vec::<u8>::new())
                            .await
                            .map_err(|e| fail(format!("clear {t}: {e}")))?;
                        cleared.insert(t);
                    }
                    Some(_) => {}
                }
            }
            match (marker_seen, seen) {
                (true, 0) if acks == filters.len() + 1 => {
                    let _ = client.disconnect().await;
                    return Ok(cleared.len());
                }
                (false, 0) => {
                    return Err(fail(format!(
                        "neither retained messages nor the marker arrived within {} s ({acks} of {} SUBACKs)",
                        REQUEST_TIMEOUT.as_secs(),
                        filters.len() + 1
                    )));
                }
                // Some were cleared (or the broker dropped part of a large set, marker
                // included): look again.
                _ => {}
            }
            let _ = client.unsubscribe(marker.as_str()).await;
        }
        Err(fail(format!(
            "retained messages still arriving after {CLEAR_PASSES} passes ({} cleared)",
            cleared.len()
        )))
    }

    /// Enable or disable client `username` (`enableClient` / `disableClient`). Disabling
    /// disconnects its open connections at once and refuses new ones (CONNACK "not
    /// authorized"); the plugin's answer is awaited, so on `Ok` the broker has done it.
    pub async fn set_client_enabled(
        &self,
        username: &str,
        enabled: bool,
    ) -> Result<(), BackendError> {
        let action = format!("set broker client {username:?} enabled={enabled}");
        check_name(&action, "username", username)?;
        if username == self.admin.username {
            return Err(invalid(
                &action,
                "username",
                username,
                "is the admin client's username",
            ));
        }
        let mut conn = self.conn.lock().await;
        self.set_enabled(&mut conn, username, enabled).await
    }

    /// Replace the password of client `username` and end its open connections (a disable
    /// and re-enable, so a holder of the old password is not left connected). With
    /// `reenable = false` the client stays disabled (a disabled device keeps its state).
    pub async fn set_client_password(
        &self,
        username: &str,
        password: &str,
        reenable: bool,
    ) -> Result<(), BackendError> {
        let action = format!("set the password of broker client {username:?}");
        check_name(&action, "username", username)?;
        if username == self.admin.username || password.is_empty() {
            return Err(invalid(
                &action,
                "username",
                username,
                "is the admin client's username, or the password is empty",
            ));
        }
        let mut conn = self.conn.lock().await;
        self.call_ok(
            &mut conn,
            json!({"command": "setClientPassword", "username": username, "password": password}),
            &format!("setClientPassword {username:?}"),
        )
        .await?;
        self.set_enabled(&mut conn, username, false).await?;
        if reenable {
            self.set_enabled(&mut conn, username, true).await?;
        }
        Ok(())
    }

    async fn set_enabled(
        &self,
        conn: &mut Option<Connection>,
        user: &str,
        enabled: bool,
    ) -> Result<(), BackendError> {
        let cmd = if enabled {
            "enableClient"
        } else {
            "disableClient"
        };
        self.call_ok(
            conn,
            json!({"command": cmd, "username": user}),
            &format!("{cmd} {user:?}"),
        )
        .await
        .map(|_| ())
    }

    /// [`Self::call`], with a plugin error turned into [`BackendError::Command`].
    async fn call_ok(
        &self,
        conn: &mut Option<Connection>,
        command: Value,
        action: &str,
    ) -> Result<Value, BackendError> {
        self.call(conn, command)
            .await?
            .map_err(|e| command_error(action, e))
    }

    /// Send one command (connecting first if needed) and wait for its answer. A transport
    /// failure or timeout drops the connection.
    async fn call(
        &self,
        conn: &mut Option<Connection>,
        mut command: Value,
    ) -> Result<Reply, BackendError> {
        let name = command["command"].as_str().unwrap_or("?").to_string();
        if conn.is_none() {
            *conn = Some(self.connect().await?);
        }
        let result = match conn.as_mut() {
            Some(c) => {
                let id = format!("silo-{}", self.seq.fetch_add(1, Ordering::Relaxed));
                command["correlationData"] = json!(id);
                self.exchange(c, &name, &id, &command).await
            }
            None => Err(self.connect_error("not connected")),
        };
        if result.is_err() {
            *conn = None;
        }
        result
    }

    async fn exchange(
        &self,
        c: &mut Connection,
        name: &str,
        id: &str,
        command: &Value,
    ) -> Result<Reply, BackendError> {
        let payload = json!({"commands": [command]}).to_string();
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        let timed_out = || BackendError::Command {
            service: SERVICE,
            action: name.to_string(),
            message: format!(
                "no answer from the dynamic-security plugin at {} within {} s (is the plugin \
                 loaded, and may the admin client publish to {CONTROL_TOPIC}?)",
                self.address(),
                REQUEST_TIMEOUT.as_secs()
            ),
        };
        match timeout_at(
            deadline,
            c.client
                // QoS 0: a command on a live TCP connection needs no PUBACK, and with one the
                // broker holds the answer behind it until our delayed ACK (Nagle, ~40 ms per
                // command); a lost command is a timeout like any other.
                .publish(CONTROL_TOPIC, QoS::AtMostOnce, false, payload),
        )
        .await
        {
            Err(_) => return Err(timed_out()),
            Ok(Err(e)) => return Err(self.connect_error(format!("sending {name}: {e}"))),
            Ok(Ok(())) => {}
        }
        loop {
            let event = match timeout_at(deadline, c.events.recv()).await {
                Err(_) => return Err(timed_out()),
                Ok(None) => return Err(self.connect_error("connection closed")),
                Ok(Some(e)) => e,
            };
            match event {
                Incoming::Failed(m) => {
                    return Err(self.connect_error(format!("connection lost during {name}: {m}")));
                }
                Incoming::Response(bytes) => {
                    if let Some(reply) = find_reply(&bytes, id) {
                        tracing::debug!(command = name, ok = reply.is_ok(), "dynsec answer");
                        return Ok(reply);
                    }
                }
                Incoming::ConnAck | Incoming::SubAck(_) => {}
            }
        }
    }

    /// Log in as the admin client and subscribe to the response topic.
    async fn connect(&self) -> Result<Connection, BackendError> {
        if self.admin.username.is_empty() || self.admin.password.is_empty() {
            return Err(BackendError::Credentials {
                service: SERVICE,
                message: "username and password must not be empty".to_string(),
            });
        }
        let suffix: u64 = rand::random();
        let mut opts = MqttOptions::new(
            format!("silo-operator-{suffix:016x}"),
            self.host.clone(),
            self.port,
        );
        opts.set_credentials(self.admin.username.clone(), self.admin.password.clone());
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_clean_session(true);
        opts.set_max_packet_size(MAX_PACKET, MAX_PACKET);
        let (client, mut eventloop) = AsyncClient::new(opts, 16);
        // Commands are small request/answer exchanges: without TCP_NODELAY each one waits for
        // the peer's delayed ACK of the previous packet (Nagle), ~40 ms per command.
        let mut network = rumqttc::NetworkOptions::new();
        network.set_tcp_nodelay(true);
        eventloop.set_network_options(network);
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(drive(eventloop, tx));
        let mut c = Connection {
            client,
            events,
            task,
        };
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        let timed_out = || {
            self.connect_error(format!(
                "no MQTT connection within {} s",
                REQUEST_TIMEOUT.as_secs()
            ))
        };
        // ConnAck.
        loop {
            match timeout_at(deadline, c.events.recv()).await {
                Err(_) => return Err(timed_out()),
                Ok(None) => return Err(self.connect_error("connection closed")),
                Ok(Some(Incoming::Failed(m))) => return Err(self.connect_error(m)),
                Ok(Some(Incoming::ConnAck)) => break,
                Ok(Some(_)) => {}
            }
        }
        match timeout_at(
            deadline,
            c.client.subscribe(RESPONSE_TOPIC, QoS::AtLeastOnce),
        )
        .await
        {
            Err(_) => return Err(timed_out()),
            Ok(Err(e)) => return Err(self.connect_error(format!("subscribing: {e}"))),
            Ok(Ok(())) => {}
        }
        loop {
            match timeout_at(deadline, c.events.recv()).await {
                Err(_) => return Err(timed_out()),
                Ok(None) => return Err(self.connect_error("connection closed")),
                Ok(Some(Incoming::Failed(m))) => return Err(self.connect_error(m)),
                Ok(Some(Incoming::SubAck(codes))) => {
                    if codes
                        .iter()
                        .all(|c| matches!(c, SubscribeReasonCode::Success(_)))
                    {
                        break;
                    }
                    return Err(self.connect_error(format!(
                        "the admin client {:?} may not subscribe to {RESPONSE_TOPIC} (its role \
                         needs subscribePattern/publishClientReceive/publishClientSend on \
                         $CONTROL/dynamic-security/#)",
                        self.admin.username
                    )));
                }
                Ok(Some(_)) => {}
            }
        }
        tracing::debug!(address = %self.address(), "connected to the shared Mosquitto");
        Ok(c)
    }
}

/// The cleanup connection's next event before `deadline` (`None` when it passed).
async fn next_cleanup(
    rx: &mut mpsc::UnboundedReceiver<Cleanup>,
    deadline: Instant,
    fail: &impl Fn(String) -> BackendError,
) -> Result<Option<Cleanup>, BackendError> {
    match timeout_at(deadline, rx.recv()).await {
        Err(_) => Ok(None),
        Ok(None) => Err(fail("the cleanup connection closed".to_string())),
        Ok(Some(Cleanup::Failed(m))) => Err(fail(format!("cleanup connection: {m}"))),
        Ok(Some(ev)) => Ok(Some(ev)),
    }
}

/// Poll the event loop, reporting what the requests need; stop at the first error (polling
/// again would reconnect behind our back).
async fn drive(mut eventloop: EventLoop, tx: mpsc::UnboundedSender<Incoming>) {
    loop {
        let report = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => Incoming::ConnAck,
            Ok(Event::Incoming(Packet::SubAck(s))) => Incoming::SubAck(s.return_codes),
            Ok(Event::Incoming(Packet::Publish(p))) if p.topic == RESPONSE_TOPIC => {
                Incoming::Response(p.payload.to_vec())
            }
            Ok(_) => continue,
            Err(e) => {
                let _ = tx.send(Incoming::Failed(describe(&e)));
                return;
            }
        };
        if tx.send(report).is_err() {
            return;
        }
    }
}

fn describe(e: &ConnectionError) -> String {
    match e {
        ConnectionError::ConnectionRefused(
            code @ (ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized),
        ) => format!(
            "the broker refused the admin login ({code:?}): check username and password in \
             the shared.mosquitto.adminSecret Secret"
        ),
        ConnectionError::ConnectionRefused(code) => format!("connection refused: {code:?}"),
        other => other.to_string(),
    }
}

/// The answer with correlation data `id` in a response message, if any.
fn find_reply(bytes: &[u8], id: &str) -> Option<Reply> {
    let v: Value = serde_json::from_slice(bytes).ok()?;
    let r = v["responses"]
        .as_array()?
        .iter()
        .find(|r| r["correlationData"].as_str() == Some(id))?;
    Some(match r.get("error") {
        Some(e) => Err(e.as_str().map_or_else(|| e.to_string(), str::to_string)),
        None => Ok(r.get("data").cloned().unwrap_or(Value::Null)),
    })
}

/// "Client not found", "Role not found".
fn is_not_found(e: &str) -> bool {
    e.ends_with("not found")
}

fn command_error(action: &str, message: impl Into<String>) -> BackendError {
    BackendError::Command {
        service: SERVICE,
        action: action.to_string(),
        message: message.into(),
    }
}

fn invalid(action: &str, field: &str, value: &str, why: &str) -> BackendError {
    command_error(action, format!("invalid {field} {value:?}: {why}"))
}

/// Usernames and role names: 1–128 of `[A-Za-z0-9._-]` (tenant names and
/// [`crate::backends::broker_role`] fit; nothing that could be a topic wildcard or an ACL
/// substitution).
fn check_name(action: &str, field: &str, value: &str) -> Result<(), BackendError> {
    if value.is_empty() {
        return Err(invalid(action, field, value, "empty"));
    }
    if value.len() > 128 {
        return Err(invalid(action, field, value, "longer than 128 bytes"));
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(invalid(
            action,
            field,
            value,
            &format!("character {c:?} not allowed (only A-Z a-z 0-9 . _ -)"),
        ));
    }
    Ok(())
}

/// A tenant topic filter: `<root>/<level>/…/#` with root `tenants` or `channels`, no empty
/// level, no wildcard but the trailing `#`, no control character.
fn check_topic(action: &str, topic: &str) -> Result<(), BackendError> {
    let bad = |why: &str| invalid(action, "topic", topic, why);
    if topic.is_empty() {
        return Err(bad("empty"));
    }
    if topic.chars().any(char::is_control) {
        return Err(bad("contains a control character"));
    }
    let Some(prefix) = topic.strip_suffix("/#") else {
        return Err(bad("must end with /#"));
    };
    if prefix.contains(['+', '#']) {
        return Err(bad("wildcards are only allowed as the trailing /#"));
    }
    let levels: Vec<&str> = prefix.split('/').collect();
    if levels.iter().any(|l| l.is_empty()) {
        return Err(bad("empty topic level"));
    }
    if levels.len() < 2 || !(levels[0] == TOPIC_ROOT || levels[0] == CHANNEL_ROOT) {
        return Err(bad(&format!(
            "must be under {TOPIC_ROOT}/<tenant>/ or {CHANNEL_ROOT}/<channel>/"
        )));
    }
    Ok(())
}

/// The role's ACLs for `topics`: the three allows per filter, then the catch-all denies.
fn desired_acls(topics: &[String]) -> Vec<Acl> {
    let filters: BTreeSet<&str> = topics.iter().map(String::as_str).collect();
    let mut out = Vec::new();
    for f in filters {
        for t in ACL_TYPES {
            out.push(Acl {
                acltype: t.to_string(),
                topic: f.to_string(),
                allow: true,
                priority: 0,
            });
        }
    }
    for t in ACL_TYPES {
        out.push(Acl {
            acltype: t.to_string(),
            topic: "#".to_string(),
            allow: false,
            priority: DENY_PRIORITY,
        });
    }
    out
}

/// The ACLs in a getRole answer.
fn parse_acls(data: &Value) -> Result<Vec<Acl>, String> {
    let Some(acls) = data["role"]["acls"].as_array() else {
        return Err("no role.acls list".to_string());
    };
    acls.iter()
        .map(|a| {
            Ok(Acl {
                acltype: a["acltype"]
                    .as_str()
                    .ok_or_else(|| format!("ACL without acltype: {a}"))?
                    .to_string(),
                topic: a["topic"]
                    .as_str()
                    .ok_or_else(|| format!("ACL without topic: {a}"))?
                    .to_string(),
                allow: a["allow"].as_bool().unwrap_or(false),
                priority: a["priority"].as_i64().unwrap_or(0),
            })
        })
        .collect()
}

/// The `key` fields of a list of objects (`roles`, `groups` of a getClient answer).
fn names(list: &Value, key: &str) -> Vec<String> {
    list.as_array()
        .map(|l| {
            l.iter()
                .filter_map(|x| x[key].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(r: Result<(), BackendError>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("a", "username", "acme-dealer_1.x").is_ok());
        assert!(msg(check_name("a", "username", "")).contains("invalid username \"\": empty"));
        assert!(msg(check_name("a", "role", "a+b")).contains("invalid role \"a+b\""));
        assert!(msg(check_name("a", "role", "a/b")).contains("'/' not allowed"));
        assert!(msg(check_name("a", "username", "a\nb")).contains("not allowed"));
        assert!(msg(check_name("a", "username", &"x".repeat(129))).contains("longer than 128"));
    }

    #[test]
    fn topics_are_checked() {
        assert!(check_topic("a", "tenants/a/#").is_ok());
        assert!(check_topic("a", "channels/ch1/a/#").is_ok());
        for (t, why) in [
            ("", "empty"),
            ("#", "must end with /#"),
            ("tenants/a", "must end with /#"),
            ("tenants/+/#", "wildcards"),
            ("tenants/#/#", "wildcards"),
            ("tenants//#", "empty topic level"),
            ("tenants/#", "must be under"),
            ("$CONTROL/x/#", "must be under"),
            ("other/a/#", "must be under"),
            ("tenants/a\u{0}/#", "control character"),
        ] {
            let m = msg(check_topic("ensure", t));
            assert!(m.contains("invalid topic") && m.contains(why), "{t:?}: {m}");
        }
    }

    #[test]
    fn desired_acls_are_allows_then_catch_all_denies() {
        let acls = desired_acls(&["tenants/a/#".to_string(), "tenants/a/#".to_string()]);
        assert_eq!(acls.len(), 6);
        assert!(
            acls[..3]
                .iter()
                .all(|a| a.allow && a.topic == "tenants/a/#")
        );
        assert!(
            acls[3..]
                .iter()
                .all(|a| !a.allow && a.topic == "#" && a.priority == DENY_PRIORITY)
        );
    }

    #[test]
    fn replies_are_matched_by_correlation_data() {
        let body = br#"{"responses":[{"command":"getClient","error":"Client not found","correlationData":"silo-1"},{"command":"getRole","data":{"role":{"rolename":"r","acls":[{"acltype":"publishClientSend","topic":"t/#","priority":0,"allow":true}]}},"correlationData":"silo-2"}]}"#;
        assert_eq!(
            find_reply(body, "silo-1"),
            Some(Err("Client not found".to_string()))
        );
        let data = find_reply(body, "silo-2").unwrap().unwrap();
        assert_eq!(
            parse_acls(&data).unwrap(),
            vec![Acl {
                acltype: "publishClientSend".into(),
                topic: "t/#".into(),
                allow: true,
                priority: 0
            }]
        );
        assert_eq!(find_reply(body, "silo-3"), None);
        assert_eq!(find_reply(b"not json", "silo-1"), None);
        assert!(parse_acls(&json!({"role": {}})).is_err());
    }
}
