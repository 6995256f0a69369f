//! Admission of changes Kubernetes cannot apply in place without losing data (SPEC
//! "Admission"): the webhook sees the old and the new Tenant and refuses, naming the field
//! and what to do instead. (Changes Silo can carry out — a member's new role, a bigger
//! volume — are admitted and handled by the operator.)

mod webhook_support;

use serde_json::json;
use silo::types::QuantityValue;
use webhook_support::{fixture, review, serve, settings, tenant_json};

fn view_with_default(storage: &str) -> silo::webhook::TreeView {
    let postgres = silo::config::SiloedPostgres {
        storage: QuantityValue::new(storage),
        ..Default::default()
    };
    let v = silo::webhook::TreeView::new(settings()).with_siloed_postgres(postgres);
    v.replace_all(fixture());
    v
}

fn cust(extra: serde_json::Value) -> serde_json::Value {
    // "dealer" has a cpu quota: every tenant below it states its own (README "Quota limits").
    let mut spec = json!({"parent": "dealer", "limits": {"cpu": "1"}});
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    tenant_json("cust", spec)
}

#[tokio::test]
async fn shrinking_a_siloed_database_volume_is_refused_and_growing_it_admitted() {
    let s = serve(view_with_default("2Gi")).await;
    let old = cust(json!({"database": {"storage": "10Gi"}}));
    s.denied(
        &review(
            "UPDATE",
            "Tenant",
            "cust",
            Some(cust(json!({"database": {"storage": "5Gi"}}))),
            Some(old.clone()),
        ),
        "NotInPlace",
        422,
        &[
            "Tenant/cust: spec.database.storage: cannot shrink the database volume from 10Gi to 5Gi",
            "a PersistentVolumeClaim can only grow",
            "keep 10Gi or more",
        ],
    )
    .await;
    // Positive controls: growth, the same size written differently, other fields.
    for storage in ["20Gi", "10240Mi"] {
        s.allowed(&review(
            "UPDATE",
            "Tenant",
            "cust",
            Some(cust(json!({"database": {"storage": storage}}))),
            Some(old.clone()),
        ))
        .await;
    }
    s.allowed(&review(
        "UPDATE",
        "Tenant",
        "cust",
        Some(cust(
            json!({"database": {"storage": "10Gi"}, "displayName": "Customer"}),
        )),
        Some(old.clone()),
    ))
    .await;
    // Without a value the platform's siloed.postgres.storage counts.
    s.denied(
        &review(
            "UPDATE",
            "Tenant",
            "cust",
            Some(cust(json!({"database": {"storage": "1Gi"}}))),
            Some(cust(json!({}))),
        ),
        "NotInPlace",
        422,
        &["from 2Gi to 1Gi"],
    )
    .await;
    s.denied(
        &review(
            "UPDATE",
            "Tenant",
            "cust",
            Some(cust(json!({}))),
            Some(old.clone()),
        ),
        "NotInPlace",
        422,
        &["from 10Gi to 2Gi"],
    )
    .await;
    // A Shared tenant has no volume of its own: any value is admitted.
    let shared =
        |storage: &str| cust(json!({"isolation": "Shared", "database": {"storage": storage}}));
    s.allowed(&review(
        "UPDATE",
        "Tenant",
        "cust",
        Some(shared("1Gi")),
        Some(shared("10Gi")),
    ))
    .await;
}

#[tokio::test]
async fn a_member_role_change_is_admitted() {
    // roleRef cannot change in place, but the operator gives the binding a new identity.
    let s = serve(view_with_default("1Gi")).await;
    let with_role =
        |role: &str| cust(json!({"members": [{"user": "carol@acme.example", "role": role}]}));
    s.allowed(&review(
        "UPDATE",
        "Tenant",
        "cust",
        Some(with_role("viewer")),
        Some(with_role("admin")),
    ))
    .await;
}

#[tokio::test]
async fn a_major_postgres_version_change_is_refused_and_a_minor_one_admitted() {
    let s = serve(view_with_default("1Gi")).await;
    let old = cust(json!({"database": {"version": "16"}}));
    s.denied(
        &review(
            "UPDATE",
            "Tenant",
            "cust",
            Some(cust(json!({"database": {"version": "17"}}))),
            Some(old.clone()),
        ),
        "NotInPlace",
        422,
        &[
            "Tenant/cust: spec.database.version: cannot change the PostgreSQL major version in place (postgres:16 to postgres:17)",
            "keep version 16",
        ],
    )
    .await;
    // Without a version the platform image's tag (postgres:16) counts.
    s.denied(
        &review(
            "UPDATE",
            "Tenant",
            "cust",
            Some(cust(json!({"database": {"version": "15"}}))),
            Some(cust(json!({}))),
        ),
        "NotInPlace",
        422,
        &["(postgres:16 to postgres:15)"],
    )
    .await;
    // Positive controls: a minor update, the default spelled out, a Shared tenant.
    s.allowed(&review(
        "UPDATE",
        "Tenant",
        "cust",
        Some(cust(json!({"database": {"version": "16.4"}}))),
        Some(old.clone()),
    ))
    .await;
    s.allowed(&review(
        "UPDATE",
        "Tenant",
        "cust",
        Some(cust(json!({"database": {"version": "16"}}))),
        Some(cust(json!({}))),
    ))
    .await;
    let shared = |v: &str| cust(json!({"isolation": "Shared", "database": {"version": v}}));
    s.allowed(&review(
        "UPDATE",
        "Tenant",
        "cust",
        Some(shared("17")),
        Some(shared("16")),
    ))
    .await;
}
