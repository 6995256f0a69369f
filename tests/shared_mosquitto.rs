//! The shared-Mosquitto backend against a real throwaway Mosquitto 2 with dynamic security,
//! with real MQTT clients connecting as the tenants.

mod mosquitto_support;

use std::time::{Duration, Instant};

use mosquitto_support::{Broker, admin_command, connect, connect_with, free_port};
use rumqttc::ConnectReturnCode;
use serde_json::json;
use silo::backends::mosquitto::MosquittoBackend;
use silo::backends::{
    AdminCredentials, BackendError, BrokerAccount, BrokerRemoval, broker_role, topic_filters,
};

/// How long a test waits to be sure a message is NOT delivered.
const QUIET: Duration = Duration::from_millis(700);
const WAIT: Duration = Duration::from_secs(5);

fn account(tenant: &str, password: &str) -> BrokerAccount {
    BrokerAccount {
        tenant: tenant.to_string(),
        username: tenant.to_string(),
        password: password.to_string(),
        reset_password: false,
        role: broker_role(tenant),
        topics: topic_filters(tenant, &[]),
        enabled: true,
    }
}

fn backend(broker: &Broker) -> MosquittoBackend {
    MosquittoBackend::new("127.0.0.1", broker.port, broker.admin.clone())
}

fn has(changes: &[String], needle: &str) -> bool {
    changes.iter().any(|c| c.contains(needle))
}

#[tokio::test]
async fn ensure_creates_a_client_that_uses_its_own_prefix() {
    let broker = Broker::start();
    let be = backend(&broker);
    let t = Instant::now();
    let done = be.ensure_client(&account("a", "pw-a")).await.unwrap();
    eprintln!("first ensure: {:?}", t.elapsed());
    assert!(
        has(&done.changes, "created broker role silo-tenant-a"),
        "{done:?}"
    );
    assert!(has(&done.changes, "created broker client a"), "{done:?}");

    let mut a = connect(broker.port, "a", "pw-a").await.unwrap();
    assert!(a.subscribe("tenants/a/#").await);
    // Wildcard subscriptions within the prefix are allowed too.
    assert!(a.subscribe("tenants/a/+/y").await);
    a.publish("tenants/a/x", "hello").await;
    assert_eq!(
        a.next_message(WAIT).await,
        Some(("tenants/a/x".to_string(), "hello".to_string()))
    );
    a.publish("tenants/a/z/y", "deep").await;
    let got = a.messages(QUIET).await;
    // Matched by both subscriptions: mosquitto delivers it once per matching subscription.
    assert!(got.iter().all(|(t, p)| t == "tenants/a/z/y" && p == "deep") && !got.is_empty());
}

#[tokio::test]
async fn steady_state_changes_nothing() {
    let broker = Broker::start();
    let be = backend(&broker);
    let mut acc = account("a", "pw-a");
    acc.topics = topic_filters("a", &["ch1".to_string()]);
    assert!(be.ensure_client(&acc).await.unwrap().changed());
    let t = Instant::now();
    let again = be.ensure_client(&acc).await.unwrap();
    eprintln!("steady ensure: {:?}", t.elapsed());
    assert_eq!(again.changes, Vec::<String>::new());

    // Suspended is a steady state too.
    acc.enabled = false;
    assert!(be.ensure_client(&acc).await.unwrap().changed());
    assert!(!be.ensure_client(&acc).await.unwrap().changed());
    // A fresh backend (new connection) sees the same.
    assert!(
        !backend(&broker)
            .ensure_client(&acc)
            .await
            .unwrap()
            .changed()
    );
}

#[tokio::test]
async fn tenants_cannot_cross_into_each_other_or_the_control_topic() {
    let broker = Broker::start();
    let be = backend(&broker);
    be.ensure_client(&account("a", "pw-a")).await.unwrap();
    be.ensure_client(&account("b", "pw-b")).await.unwrap();

    let mut a = connect(broker.port, "a", "pw-a").await.unwrap();
    assert!(a.subscribe("tenants/a/#").await);
    for filter in [
        "tenants/b/#",
        "tenants/b/x",
        "#",
        "tenants/#",
        "+/b/#",
        "tenants/+/x",
        "$share/g/tenants/b/#",
        "$CONTROL/#",
        "$CONTROL/dynamic-security/v1",
        "$CONTROL/dynamic-security/v1/response",
        "$SYS/#",
    ] {
        assert!(!a.subscribe(filter).await, "A may subscribe to {filter}");
    }

    let mut b = connect(broker.port, "b", "pw-b").await.unwrap();
    assert!(b.subscribe("tenants/b/#").await);
    b.publish("tenants/b/secret", "b-only").await;
    assert_eq!(
        b.next_message(WAIT).await,
        Some(("tenants/b/secret".to_string(), "b-only".to_string()))
    );
    // An admin command carrying B's password goes over $CONTROL while A listens; A gets
    // nothing of it, while A's own control message reaches the same connection.
    let a_ctl = connect(broker.port, "a", "pw-a").await.unwrap();
    let mut reset = account("b", "pw-b2");
    reset.reset_password = true;
    be.ensure_client(&reset).await.unwrap();
    a.assert_nothing_but_control(QUIET, &a_ctl, "tenants/a/control", "a-1")
        .await;

    // A publishing into B's prefix does not reach B (B was kicked by the password change:
    // reconnect with the new password); B's own control message does.
    let mut b = connect(broker.port, "b", "pw-b2").await.unwrap();
    assert!(b.subscribe("tenants/b/#").await);
    let b_ctl = connect(broker.port, "b", "pw-b2").await.unwrap();
    a.publish("tenants/b/x", "from-a").await;
    a.publish("b/x", "from-a").await;
    b.assert_nothing_but_control(QUIET, &b_ctl, "tenants/b/control", "b-1")
        .await;

    // A cannot command the dynamic-security plugin.
    a.publish(
        "$CONTROL/dynamic-security/v1",
        &json!({"commands": [
            {"command": "createClient", "username": "evil", "password": "evil"},
            {"command": "addClientRole", "username": "a", "rolename": "admin"},
        ]})
        .to_string(),
    )
    .await;
    tokio::time::sleep(QUIET).await;
    let err = connect(broker.port, "evil", "evil").await.err().unwrap();
    assert_eq!(err.code(), ConnectReturnCode::NotAuthorized);
    assert!(!be.remove_client("evil", "evil").await.unwrap());
    // Control: the plugin does answer commands (the admin's), so the silence was A's refusal.
    let r = admin_command(&broker, json!({"command": "getClient", "username": "a"})).await;
    assert_eq!(
        r["data"]["client"]["roles"],
        json!([{"rolename": broker_role("a")}]),
        "{r}"
    );
    assert!(
        !be.ensure_client(&account("a", "pw-a"))
            .await
            .unwrap()
            .changed()
    );

    // Wrong password.
    let err = connect(broker.port, "a", "pw-b2").await.err().unwrap();
    assert_eq!(err.code(), ConnectReturnCode::NotAuthorized);
    let err = connect(broker.port, "nobody", "x").await.err().unwrap();
    assert_eq!(err.code(), ConnectReturnCode::NotAuthorized);

    // Taking over A's persistent session by its client id does not deliver A's traffic to B.
    let mut a_dev = connect_with(broker.port, "a", "pw-a", "dev-1", false)
        .await
        .unwrap();
    assert!(a_dev.subscribe("tenants/a/#").await);
    let _b_thief = connect_with(broker.port, "b", "pw-b2", "dev-1", false)
        .await
        .unwrap();
    assert!(
        a_dev.closed(WAIT).await.is_some(),
        "A's session was not taken over"
    );
    let mut b_thief = _b_thief;
    assert!(b_thief.subscribe("tenants/b/#").await);
    a_ctl.publish("tenants/a/private", "a-only").await;
    // Published for real: A's other subscriber gets it…
    assert_eq!(
        a.next_message(WAIT).await,
        Some(("tenants/a/private".to_string(), "a-only".to_string()))
    );
    // …while the thief, holding A's session and subscription, gets only B's control message.
    b_thief
        .assert_nothing_but_control(QUIET, &b_ctl, "tenants/b/control", "b-2")
        .await;
}

#[tokio::test]
async fn channel_access_is_limited_to_the_tenants_own_part() {
    let broker = Broker::start();
    let be = backend(&broker);
    let ch = ["ch1".to_string()];
    let mut acc_a = account("a", "pw-a");
    acc_a.topics = topic_filters("a", &ch);
    let mut acc_b = account("b", "pw-b");
    acc_b.topics = topic_filters("b", &ch);
    be.ensure_client(&acc_a).await.unwrap();
    be.ensure_client(&acc_b).await.unwrap();

    let mut a = connect(broker.port, "a", "pw-a").await.unwrap();
    let mut b = connect(broker.port, "b", "pw-b").await.unwrap();
    assert!(a.subscribe("channels/ch1/a/#").await);
    assert!(b.subscribe("channels/ch1/b/#").await);
    for filter in [
        "channels/ch1/b/#",
        "channels/ch1/#",
        "channels/ch1/+/x",
        "channels/#",
    ] {
        assert!(!a.subscribe(filter).await, "A may subscribe to {filter}");
    }
    a.publish("channels/ch1/a/m", "mine").await;
    assert_eq!(
        a.next_message(WAIT).await,
        Some(("channels/ch1/a/m".to_string(), "mine".to_string()))
    );
    a.publish("channels/ch1/b/m", "into-b").await;
    b.publish("channels/ch1/b/n", "b-own").await;
    assert_eq!(
        b.messages(QUIET).await,
        vec![("channels/ch1/b/n".to_string(), "b-own".to_string())]
    );
    // B publishing into A's part does not reach A; A's own control message does.
    b.publish("channels/ch1/a/m", "into-a").await;
    let a_ctl = connect(broker.port, "a", "pw-a").await.unwrap();
    a.assert_nothing_but_control(QUIET, &a_ctl, "channels/ch1/a/control", "a-own")
        .await;
}

#[tokio::test]
async fn suspension_disconnects_and_refuses_until_enabled() {
    let broker = Broker::start();
    let be = backend(&broker);
    let mut acc = account("a", "pw-a");
    be.ensure_client(&acc).await.unwrap();
    let mut a = connect(broker.port, "a", "pw-a").await.unwrap();

    acc.enabled = false;
    let done = be.ensure_client(&acc).await.unwrap();
    assert_eq!(done.changes, vec!["disabled broker client a".to_string()]);
    assert!(
        a.closed(WAIT).await.is_some(),
        "suspended client stays connected"
    );
    let err = connect(broker.port, "a", "pw-a").await.err().unwrap();
    assert_eq!(err.code(), ConnectReturnCode::NotAuthorized);

    acc.enabled = true;
    let done = be.ensure_client(&acc).await.unwrap();
    assert_eq!(done.changes, vec!["enabled broker client a".to_string()]);
    let mut a = connect(broker.port, "a", "pw-a").await.unwrap();
    assert!(a.subscribe("tenants/a/#").await);

    // A tenant created suspended cannot connect.
    let mut c = account("c", "pw-c");
    c.enabled = false;
    let done = be.ensure_client(&c).await.unwrap();
    assert!(has(&done.changes, "disabled broker client c"), "{done:?}");
    let err = connect(broker.port, "c", "pw-c").await.err().unwrap();
    assert_eq!(err.code(), ConnectReturnCode::NotAuthorized);
    // Control: the same credentials work once the client is enabled.
    c.enabled = true;
    be.ensure_client(&c).await.unwrap();
    connect(broker.port, "c", "pw-c").await.unwrap();
}

#[tokio::test]
async fn drift_is_corrected_and_acls_follow_channels() {
    let broker = Broker::start();
    let be = backend(&broker);
    let mut acc = account("a", "pw-a");
    be.ensure_client(&acc).await.unwrap();
    let role = broker_role("a");

    // Someone widens A's role, gives A the admin role, pins its client id and drops a deny.
    for cmd in [
        json!({"command": "addRoleACL", "rolename": role, "acltype": "subscribePattern",
               "topic": "tenants/b/#", "allow": true}),
        json!({"command": "removeRoleACL", "rolename": role, "acltype": "publishClientSend",
               "topic": "tenants/a/#"}),
        json!({"command": "addRoleACL", "rolename": role, "acltype": "publishClientSend",
               "topic": "tenants/a/#", "allow": false, "priority": 5}),
        json!({"command": "removeRoleACL", "rolename": role, "acltype": "publishClientReceive",
               "topic": "#"}),
        json!({"command": "addClientRole", "username": "a", "rolename": "admin"}),
        json!({"command": "modifyClient", "username": "a", "clientid": "pinned"}),
    ] {
        let r = admin_command(&broker, cmd.clone()).await;
        assert!(r.get("error").is_none(), "{cmd}: {r}");
    }
    let mut a = connect_with(broker.port, "a", "pw-a", "pinned", true)
        .await
        .unwrap();
    assert!(a.subscribe("tenants/b/#").await, "drift not in effect");

    let done = be.ensure_client(&acc).await.unwrap();
    let c = &done.changes;
    assert!(
        has(
            c,
            "removed ACL subscribePattern allow tenants/b/# (priority 0) from broker role silo-tenant-a"
        ),
        "{c:?}"
    );
    // Same type and topic as a wanted ACL but another priority/allow: replaced.
    assert!(
        has(
            c,
            "removed ACL publishClientSend deny tenants/a/# (priority 5)"
        ),
        "{c:?}"
    );
    assert!(
        has(
            c,
            "added ACL publishClientSend allow tenants/a/# (priority 0)"
        ),
        "{c:?}"
    );
    assert!(
        has(c, "added ACL publishClientReceive deny # (priority -1)"),
        "{c:?}"
    );
    assert!(has(c, "removed role admin from broker client a"), "{c:?}");
    assert!(
        has(c, "removed the client-id restriction of broker client a"),
        "{c:?}"
    );
    assert_eq!(c.len(), 6, "{c:?}");
    assert!(!be.ensure_client(&acc).await.unwrap().changed());

    let mut a = connect(broker.port, "a", "pw-a").await.unwrap();
    assert!(!a.subscribe("tenants/b/#").await);
    assert!(!a.subscribe("$CONTROL/dynamic-security/v1").await);

    // The channel list follows the tenant's channels.
    acc.topics = topic_filters("a", &["ch1".to_string()]);
    let done = be.ensure_client(&acc).await.unwrap();
    assert_eq!(done.changes.len(), 3, "{done:?}");
    assert!(
        done.changes
            .iter()
            .all(|c| c.starts_with("added ACL") && c.contains("channels/ch1/a/#"))
    );
    let mut a = connect(broker.port, "a", "pw-a").await.unwrap();
    assert!(a.subscribe("channels/ch1/a/#").await);
    acc.topics = topic_filters("a", &[]);
    let done = be.ensure_client(&acc).await.unwrap();
    assert_eq!(done.changes.len(), 3, "{done:?}");
    assert!(
        done.changes
            .iter()
            .all(|c| c.starts_with("removed ACL") && c.contains("channels/ch1/a/#"))
    );
    let mut a = connect(broker.port, "a", "pw-a").await.unwrap();
    assert!(!a.subscribe("channels/ch1/a/#").await);
    assert!(a.subscribe("tenants/a/#").await);
}

#[tokio::test]
async fn password_reset_and_removal() {
    let broker = Broker::start();
    let be = backend(&broker);
    be.ensure_client(&account("a", "pw-1")).await.unwrap();
    // A new password without reset_password is not applied (the broker can't be asked).
    assert!(
        !be.ensure_client(&account("a", "pw-2"))
            .await
            .unwrap()
            .changed()
    );
    connect(broker.port, "a", "pw-1").await.unwrap();
    let err = connect(broker.port, "a", "pw-2").await.err().unwrap();
    assert_eq!(err.code(), ConnectReturnCode::NotAuthorized);

    let mut reset = account("a", "pw-2");
    reset.reset_password = true;
    let done = be.ensure_client(&reset).await.unwrap();
    assert_eq!(
        done.changes,
        vec!["set the password of broker client a".to_string()]
    );
    let err = connect(broker.port, "a", "pw-1").await.err().unwrap();
    assert_eq!(err.code(), ConnectReturnCode::NotAuthorized);
    let mut a = connect(broker.port, "a", "pw-2").await.unwrap();
    assert!(a.subscribe("tenants/a/#").await);

    be.ensure_client(&account("b", "pw-b")).await.unwrap();
    assert!(be.remove_client("a", &broker_role("a")).await.unwrap());
    assert!(
        a.closed(WAIT).await.is_some(),
        "removed client stays connected"
    );
    let err = connect(broker.port, "a", "pw-2").await.err().unwrap();
    assert_eq!(err.code(), ConnectReturnCode::NotAuthorized);
    assert!(!be.remove_client("a", &broker_role("a")).await.unwrap());
    // B is untouched.
    assert!(
        !be.ensure_client(&account("b", "pw-b"))
            .await
            .unwrap()
            .changed()
    );
    connect(broker.port, "b", "pw-b").await.unwrap();
    // Recreated from scratch.
    let done = be.ensure_client(&account("a", "pw-3")).await.unwrap();
    assert!(has(&done.changes, "created broker client a"), "{done:?}");
    connect(broker.port, "a", "pw-3").await.unwrap();
}

/// The names in a dynsec list answer (`listClients` → `clients`, `listRoles` → `roles`).
async fn dynsec_names(broker: &Broker, command: &str, field: &str) -> Vec<String> {
    let r = admin_command(broker, json!({"command": command, "verbose": false})).await;
    r["data"][field]
        .as_array()
        .unwrap_or_else(|| panic!("{command}: {r}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn a_deleted_tenant_leaves_no_retained_messages_for_a_new_tenant_of_the_same_name() {
    // The issue's example: dealer-1 retains a message, is deleted, a new dealer-1 is created
    // and its first subscription must not receive the old tenant's message.
    let broker = Broker::start();
    let be = backend(&broker);
    let mut old = account("dealer-1", "pw-old");
    old.topics = topic_filters("dealer-1", &["ch0".to_string(), "ch1".to_string()]);
    be.ensure_client(&old).await.unwrap();
    let mut b = account("b", "pw-b");
    b.topics = topic_filters("b", &["ch1".to_string()]);
    be.ensure_client(&b).await.unwrap();

    let d = connect(broker.port, "dealer-1", "pw-old").await.unwrap();
    d.publish_retained("tenants/dealer-1/state", "old-secret")
        .await;
    d.publish_retained("channels/ch1/dealer-1/dev-1/state", "old-channel")
        .await;
    d.publish_retained("channels/ch0/dealer-1/dev-9/state", "old-unused-channel")
        .await;
    let bc = connect(broker.port, "b", "pw-b").await.unwrap();
    bc.publish_retained("tenants/b/state", "b-state").await;
    bc.publish_retained("channels/ch1/b/dev-2/state", "b-channel")
        .await;
    // dealer-1 stops using ch0: its retained message there must go too.
    old.topics = topic_filters("dealer-1", &["ch1".to_string()]);
    be.ensure_client(&old).await.unwrap();
    // Positive control: the retained messages exist (the old tenant's own fresh subscriber
    // gets them), so their absence below is the cleanup's doing.
    let mut check = connect(broker.port, "dealer-1", "pw-old").await.unwrap();
    assert!(check.subscribe("tenants/dealer-1/#").await);
    assert_eq!(
        check.next_message(WAIT).await,
        Some(("tenants/dealer-1/state".into(), "old-secret".into()))
    );
    drop((d, check));
    // dynsec leftovers someone attached to the tenant: a group holding its role and client.
    for cmd in [
        json!({"command": "createGroup", "groupname": "fleet"}),
        json!({"command": "addGroupRole", "groupname": "fleet", "rolename": broker_role("dealer-1")}),
        json!({"command": "addGroupClient", "groupname": "fleet", "username": "dealer-1"}),
    ] {
        let r = admin_command(&broker, cmd.clone()).await;
        assert!(r.get("error").is_none(), "{cmd}: {r}");
    }

    let t = Instant::now();
    let done = be.remove_tenant("dealer-1").await.unwrap();
    eprintln!(
        "removing a tenant with 3 retained messages: {:?}",
        t.elapsed()
    );
    assert_eq!(
        done,
        BrokerRemoval {
            removed: true,
            retained_cleared: 3
        }
    );
    let group = admin_command(
        &broker,
        json!({"command": "getGroup", "groupname": "fleet"}),
    )
    .await;
    assert_eq!(group["data"]["group"]["roles"], json!([]), "{group}");
    assert_eq!(group["data"]["group"]["clients"], json!([]), "{group}");
    // No cleanup client or role is left behind.
    for (cmd, field) in [("listClients", "clients"), ("listRoles", "roles")] {
        let names = dynsec_names(&broker, cmd, field).await;
        assert!(
            !names.iter().any(|n| n.contains("dealer-1")),
            "{cmd}: {names:?}"
        );
    }
    // Idempotent: nothing left to remove or clear.
    assert_eq!(
        be.remove_tenant("dealer-1").await.unwrap(),
        BrokerRemoval::default()
    );

    // The new dealer-1: its first subscriptions receive nothing of the old tenant; the
    // control message it publishes itself arrives on the same connection.
    let mut new = account("dealer-1", "pw-new");
    new.topics = topic_filters("dealer-1", &["ch0".to_string(), "ch1".to_string()]);
    be.ensure_client(&new).await.unwrap();
    let mut n = connect(broker.port, "dealer-1", "pw-new").await.unwrap();
    for f in [
        "tenants/dealer-1/#",
        "channels/ch1/dealer-1/#",
        "channels/ch0/dealer-1/#",
    ] {
        assert!(n.subscribe(f).await, "{f}");
    }
    let control = connect(broker.port, "dealer-1", "pw-new").await.unwrap();
    n.assert_nothing_but_control(QUIET, &control, "tenants/dealer-1/hello", "new")
        .await;
    // b's retained messages are untouched: the cleanup stays inside dealer-1's trees.
    let mut bn = connect(broker.port, "b", "pw-b").await.unwrap();
    assert!(bn.subscribe("tenants/b/#").await);
    assert!(bn.subscribe("channels/ch1/b/#").await);
    let mut got = bn.messages(QUIET).await;
    got.sort();
    assert_eq!(
        got,
        vec![
            ("channels/ch1/b/dev-2/state".into(), "b-channel".into()),
            ("tenants/b/state".into(), "b-state".into())
        ]
    );
}

#[tokio::test]
async fn clearing_a_tenant_with_many_retained_messages_clears_them_all() {
    // More retained messages than Mosquitto queues for one client by default (1000 plus 20 in
    // flight): the
    // passes repeat until one finds nothing.
    let broker = Broker::start();
    let be = backend(&broker);
    be.ensure_client(&account("a", "pw-a")).await.unwrap();
    let a = connect(broker.port, "a", "pw-a").await.unwrap();
    for i in 0..1100 {
        a.publish_retained(&format!("tenants/a/m/{i}"), "x").await;
    }
    // Control: they are all retained (a fresh subscriber sees the last one among them).
    let mut probe = connect(broker.port, "a", "pw-a").await.unwrap();
    assert!(probe.subscribe("tenants/a/m/1099").await);
    assert_eq!(
        probe.next_message(WAIT).await,
        Some(("tenants/a/m/1099".into(), "x".into()))
    );
    drop((a, probe));
    let t = Instant::now();
    let done = be.remove_tenant("a").await.unwrap();
    eprintln!(
        "removing a tenant with 1100 retained messages: {:?}",
        t.elapsed()
    );
    assert_eq!(done.retained_cleared, 1100, "{done:?}");
    be.ensure_client(&account("a", "pw-a2")).await.unwrap();
    let mut n = connect(broker.port, "a", "pw-a2").await.unwrap();
    assert!(n.subscribe("tenants/a/#").await);
    let control = connect(broker.port, "a", "pw-a2").await.unwrap();
    n.assert_nothing_but_control(QUIET, &control, "tenants/a/after", "fresh")
        .await;
}

fn command_message(r: Result<impl std::fmt::Debug, BackendError>) -> String {
    match r {
        Err(e @ BackendError::Command { .. }) => e.to_string(),
        other => panic!("expected a Command error, got {other:?}"),
    }
}

#[tokio::test]
async fn bad_input_is_refused_before_touching_the_broker() {
    // Nothing listens there: validation must come first.
    let be = MosquittoBackend::new(
        "127.0.0.1",
        free_port(),
        AdminCredentials {
            username: "admin".into(),
            password: "x".into(),
            database: None,
        },
    );
    type Change = Box<dyn Fn(&mut BrokerAccount)>;
    let cases: Vec<(Change, &str)> = vec![
        (
            Box::new(|a| a.username = String::new()),
            "invalid username \"\": empty",
        ),
        (
            Box::new(|a| a.username = "a/b".into()),
            "invalid username \"a/b\"",
        ),
        (Box::new(|a| a.username = "a#".into()), "invalid username"),
        (
            Box::new(|a| a.username = "a\u{1}".into()),
            "invalid username",
        ),
        (
            Box::new(|a| a.username = "admin".into()),
            "is the admin client's username",
        ),
        (Box::new(|a| a.role = "r+".into()), "invalid role \"r+\""),
        (Box::new(|a| a.role = String::new()), "invalid role"),
        (
            Box::new(|a| a.password = String::new()),
            "invalid password: empty",
        ),
        (
            Box::new(|a| a.topics = vec!["#".into()]),
            "invalid topic \"#\"",
        ),
        (
            Box::new(|a| a.topics = vec!["tenants/+/#".into()]),
            "wildcards",
        ),
        (
            Box::new(|a| a.topics = vec!["tenants/a".into()]),
            "must end with /#",
        ),
        (
            Box::new(|a| a.topics = vec!["".into()]),
            "invalid topic \"\": empty",
        ),
        (
            Box::new(|a| a.topics = vec!["tenants/a\n/#".into()]),
            "control character",
        ),
        (
            Box::new(|a| a.topics = vec!["$CONTROL/x/#".into()]),
            "must be under",
        ),
    ];
    for (change, want) in cases {
        let mut acc = account("a", "pw");
        change(&mut acc);
        let m = command_message(be.ensure_client(&acc).await);
        assert!(
            m.starts_with("shared Mosquitto: ensure broker client"),
            "{m}"
        );
        assert!(m.contains(want), "{acc:?}: {m} (want {want})");
    }
    let m = command_message(be.remove_client("", "r").await);
    assert!(m.contains("invalid username \"\""), "{m}");
    let m = command_message(be.remove_client("a", "r/#").await);
    assert!(m.contains("invalid role \"r/#\""), "{m}");
    let m = command_message(be.remove_client("admin", "r").await);
    assert!(m.contains("admin client"), "{m}");
}

#[tokio::test]
async fn unreachable_or_refusing_brokers_give_bounded_connect_errors() {
    let admin = AdminCredentials {
        username: "admin".into(),
        password: "x".into(),
        database: None,
    };
    // Nothing listening.
    let port = free_port();
    let be = MosquittoBackend::new("127.0.0.1", port, admin.clone());
    let t = Instant::now();
    let err = be.ensure_client(&account("a", "pw")).await.unwrap_err();
    assert!(matches!(err, BackendError::Connect { .. }), "{err:?}");
    let m = err.to_string();
    assert!(
        m.starts_with(&format!("shared Mosquitto at 127.0.0.1:{port}: ")),
        "{m}"
    );
    assert!(t.elapsed() < Duration::from_secs(6), "{:?}", t.elapsed());
    let err = be.remove_client("a", "r").await.unwrap_err();
    assert!(matches!(err, BackendError::Connect { .. }), "{err:?}");

    // Something that accepts but never speaks MQTT: bounded by the request timeout.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent = listener.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let be = MosquittoBackend::new("127.0.0.1", silent, admin.clone());
    let t = Instant::now();
    let m = be
        .ensure_client(&account("a", "pw"))
        .await
        .unwrap_err()
        .to_string();
    let took = t.elapsed();
    assert!(
        m.starts_with(&format!("shared Mosquitto at 127.0.0.1:{silent}: ")),
        "{m}"
    );
    assert!(took < Duration::from_secs(8), "{took:?}");
    eprintln!("silent listener: {took:?}: {m}");
    hold.abort();

    // Wrong admin password.
    let broker = Broker::start();
    let mut wrong = broker.admin.clone();
    wrong.password.push('x');
    let be = MosquittoBackend::new("127.0.0.1", broker.port, wrong);
    let err = be.ensure_client(&account("a", "pw")).await.unwrap_err();
    assert!(matches!(err, BackendError::Connect { .. }), "{err:?}");
    let m = err.to_string();
    assert!(m.contains("refused the admin login"), "{m}");
    assert!(m.contains("shared.mosquitto.adminSecret"), "{m}");
    assert!(!m.contains(&broker.admin.password), "{m}");

    // Empty admin credentials.
    let mut empty = broker.admin.clone();
    empty.password.clear();
    let be = MosquittoBackend::new("127.0.0.1", broker.port, empty);
    let err = be.ensure_client(&account("a", "pw")).await.unwrap_err();
    assert!(matches!(err, BackendError::Credentials { .. }), "{err:?}");
    assert!(err.to_string().contains("admin credentials"), "{err}");

    // A tenant client is not an admin: its commands are never answered.
    let be = backend(&broker);
    be.ensure_client(&account("t", "pw-t")).await.unwrap();
    let as_tenant = MosquittoBackend::new(
        "127.0.0.1",
        broker.port,
        AdminCredentials {
            username: "t".into(),
            password: "pw-t".into(),
            database: None,
        },
    );
    let m = as_tenant
        .ensure_client(&account("a", "pw"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        m.contains("may not subscribe to $CONTROL/dynamic-security/v1/response"),
        "{m}"
    );
}

#[tokio::test]
async fn reconnects_after_the_broker_restarts() {
    let broker = Broker::start();
    let (port, password) = (broker.port, broker.admin.password.clone());
    let be = backend(&broker);
    be.ensure_client(&account("a", "pw-a")).await.unwrap();
    drop(broker);
    let err = be.ensure_client(&account("a", "pw-a")).await.unwrap_err();
    assert!(matches!(err, BackendError::Connect { .. }), "{err:?}");
    // A new broker on the same port (empty: the tenant is created again).
    let broker = Broker::start_at(port, password);
    let done = be.ensure_client(&account("a", "pw-a")).await.unwrap();
    assert!(has(&done.changes, "created broker client a"), "{done:?}");
    connect(broker.port, "a", "pw-a").await.unwrap();
}
