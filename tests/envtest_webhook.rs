//! The admission webhook as a real API server calls it: `silo operator --webhook-url
//! https://127.0.0.1:PORT` registers its ValidatingWebhookConfiguration (with its own CA in
//! `caBundle`), and every write of a silo.dev kind through the API server is judged by it —
//! the scenarios of `tests/webhook_admission.rs` and `tests/webhook_concurrency.rs`, end to end:
//! bad trees refused with their messages and status codes, a Retain delete with children
//! refused, a burst of 50 parallel creates admitting exactly the limit. Each refusal has its
//! positive control on the same tree.

mod envtest_support;

use std::sync::Arc;

use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use envtest_support::FIELD_MANAGER;
use envtest_support::platform::{Platform, PlatformOptions};
use silo::types::{Channel, LimitProfile, Tenant};

const FIXTURE: &str = r#"
apiVersion: silo.dev/v1alpha1
kind: Tenant
metadata: {name: acme}
spec: {limits: {subtenants: 20}}
---
apiVersion: silo.dev/v1alpha1
kind: Tenant
metadata: {name: dist}
spec: {parent: acme, limits: {cpu: "4"}}
---
apiVersion: silo.dev/v1alpha1
kind: LimitProfile
metadata: {name: acme-std}
spec: {owner: acme, limits: {devices: 50}}
---
apiVersion: silo.dev/v1alpha1
kind: LimitProfile
metadata: {name: dist-small}
spec: {owner: dist, limits: {devices: 5}}
---
apiVersion: silo.dev/v1alpha1
kind: Channel
metadata: {name: tel}
spec: {owner: acme, protocol: mqtt, visibility: {subtrees: [dist]}}
---
apiVersion: silo.dev/v1alpha1
kind: Tenant
metadata: {name: dealer}
spec: {parent: dist, limits: {cpu: "3"}, limitProfile: acme-std, channels: [tel]}
---
apiVersion: silo.dev/v1alpha1
kind: Tenant
metadata: {name: full}
spec: {parent: acme, limits: {subtenants: 1}}
---
apiVersion: silo.dev/v1alpha1
kind: Tenant
metadata: {name: full-a}
spec: {parent: full}
---
apiVersion: silo.dev/v1alpha1
kind: Tenant
metadata: {name: frozen}
spec: {parent: acme, suspended: true}
"#;

/// The platform with the webhook and `maxDepth: 4`, and the fixture tree admitted.
async fn platform() -> Option<Platform> {
    let p = Platform::start(PlatformOptions {
        webhook: true,
        extra_config: "maxDepth: 4\n".into(),
        ..Default::default()
    })
    .await?;
    p.apply(FIXTURE).await;
    Some(p)
}

fn tenant(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "silo.dev/v1alpha1", "kind": "Tenant", "metadata": {"name": name}, "spec": spec})
}

/// Server-side applies `v` as the admin; the API server's answer.
async fn apply(client: &Client, v: &Value) -> Result<(), kube::core::Status> {
    let name = v["metadata"]["name"].as_str().unwrap();
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let res = match v["kind"].as_str().unwrap() {
        "Tenant" => Api::<Tenant>::all(client.clone())
            .patch(name, &pp, &Patch::Apply(v))
            .await
            .map(|_| ()),
        "LimitProfile" => Api::<LimitProfile>::all(client.clone())
            .patch(name, &pp, &Patch::Apply(v))
            .await
            .map(|_| ()),
        "Channel" => Api::<Channel>::all(client.clone())
            .patch(name, &pp, &Patch::Apply(v))
            .await
            .map(|_| ()),
        other => panic!("kind {other}"),
    };
    res.map_err(|e| match e {
        kube::Error::Api(s) => *s,
        other => panic!("not an API answer: {other}"),
    })
}

/// The write is refused with `code` and a message holding every fragment (the webhook's
/// message, prefixed by the API server with the webhook's name).
#[track_caller]
fn assert_refused(r: Result<(), kube::core::Status>, code: u16, fragments: &[&str]) {
    let s = match r {
        Ok(()) => panic!("admitted, expected a refusal with {fragments:?}"),
        Err(s) => s,
    };
    assert_eq!(s.code, code, "{}", s.message);
    assert!(
        s.message
            .starts_with("admission webhook \"validate.silo.dev\" denied the request: "),
        "not the webhook's refusal: {}",
        s.message
    );
    for f in fragments {
        assert!(s.message.contains(f), "{:?} lacks {f:?}", s.message);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_trees_are_refused_with_their_messages() {
    let Some(p) = platform().await else { return };
    let c = p.admin();

    // The operator registered its webhook at the loopback URL with its CA.
    let vwc = Api::<ValidatingWebhookConfiguration>::all(c.clone())
        .get("silo-validating")
        .await
        .unwrap();
    let hook = &vwc.webhooks.as_ref().unwrap()[0];
    let port = p.operator.as_ref().unwrap().webhook_port.unwrap();
    assert_eq!(
        hook.client_config.url.as_deref(),
        Some(format!("https://127.0.0.1:{port}/validate").as_str())
    );
    assert!(hook.client_config.ca_bundle.is_some());
    assert_eq!(hook.failure_policy.as_deref(), Some("Fail"));

    // Positive control: a valid tenant below dist, using a profile of a strict ancestor and
    // a visible channel with a quota that fits.
    apply(&c, &tenant("shop", json!({"parent": "dist", "limitProfile": "acme-std", "channels": ["tel"], "limits": {"cpu": "1"}})))
        .await
        .unwrap();

    assert_refused(
        apply(&c, &tenant("x", json!({"parent": "ghost"}))).await,
        422,
        &["Tenant/x: spec.parent: parent tenant \"ghost\" does not exist"],
    );
    assert_refused(
        apply(&c, &tenant("x", json!({"parent": "x"}))).await,
        422,
        &["Tenant/x: spec.parent: cycle: x -> x"],
    );
    // acme/dist/dealer/cust is depth 4 = maxDepth; one more is refused.
    apply(
        &c,
        &tenant("cust", json!({"parent": "dealer", "limits": {"cpu": "1"}})),
    )
    .await
    .unwrap();
    assert_refused(
        apply(
            &c,
            &tenant("deep", json!({"parent": "cust", "limits": {"cpu": "1"}})),
        )
        .await,
        422,
        &["Tenant/deep: spec.parent: depth 5 exceeds maxDepth 4 (path acme/dist/dealer/cust/deep)"],
    );
    // spec.parent is immutable: refused by the CRD's rule before the webhook is asked.
    let moved = apply(&c, &tenant("dealer", json!({"parent": "acme", "limits": {"cpu": "3"}, "limitProfile": "acme-std", "channels": ["tel"]}))).await;
    let s = moved.expect_err("moving a tenant is refused");
    assert_eq!(s.code, 422, "{}", s.message);
    assert!(
        s.message.contains("spec.parent") && s.message.contains("immutable"),
        "{}",
        s.message
    );
    assert_refused(
        apply(&c, &tenant("y", json!({"parent": "full"}))).await,
        403,
        &[
            "Tenant/y: spec.parent: cannot add a subtenant below \"full\": tenant \"full\" allows at most 1 subtenants in its subtree and uses 1",
        ],
    );
    assert_refused(
        apply(
            &c,
            &tenant("q", json!({"parent": "dist", "limits": {"cpu": "2"}})),
        )
        .await,
        403,
        &[
            "Tenant/q: spec.limits.cpu: asks for 2 cpu, but the direct children of \"dist\" already ask for 4 of its 4",
        ],
    );
    assert_refused(
        apply(
            &c,
            &tenant(
                "pr",
                json!({"parent": "acme", "limitProfile": "dist-small"}),
            ),
        )
        .await,
        422,
        &[
            "Tenant/pr: spec.limitProfile: LimitProfile \"dist-small\" is owned by \"dist\", which is not a strict ancestor of \"pr\"",
        ],
    );
    assert_refused(
        apply(
            &c,
            &tenant("ch", json!({"parent": "full-a", "channels": ["tel"]})),
        )
        .await,
        422,
        &["Tenant/ch: spec.channels[0]: Channel \"tel\" is not visible to tenant \"ch\""],
    );
    assert_refused(
        apply(&c, &tenant("ice", json!({"parent": "frozen"}))).await,
        403,
        &["Tenant/ice: spec.parent: cannot create a tenant below \"frozen\": it is suspended"],
    );
    assert_refused(
        apply(&c, &json!({"apiVersion": "silo.dev/v1alpha1", "kind": "Channel", "metadata": {"name": "c"},
            "spec": {"owner": "dist", "protocol": "mqtt", "visibility": {"subtrees": ["dealer", "full"]}}})).await,
        422,
        &["Channel/c: spec.visibility.subtrees[1]: tenant \"full\" is outside the subtree of the owner \"dist\""],
    );
    assert_refused(
        apply(&c, &json!({"apiVersion": "silo.dev/v1alpha1", "kind": "LimitProfile", "metadata": {"name": "p"},
            "spec": {"owner": "ghost"}})).await,
        422,
        &["LimitProfile/p: spec.owner: owner tenant \"ghost\" does not exist"],
    );

    // Deletion under Retain with children is refused; a leaf goes.
    let tenants: Api<Tenant> = Api::all(c.clone());
    let err = tenants
        .delete("dist", &DeleteParams::default())
        .await
        .unwrap_err();
    let kube::Error::Api(s) = err else {
        panic!("{err}")
    };
    assert_refused(
        Err(*s),
        403,
        &[
            "Tenant/dist: spec.deletionPolicy: tenant \"dist\" still has 2 child tenant(s) (dealer, shop) and deletionPolicy is Retain",
        ],
    );
    tenants
        .delete("shop", &DeleteParams::default())
        .await
        .unwrap();
    // A profile or channel in use cannot be deleted.
    let err = Api::<LimitProfile>::all(c.clone())
        .delete("acme-std", &DeleteParams::default())
        .await
        .unwrap_err();
    let kube::Error::Api(s) = err else {
        panic!("{err}")
    };
    assert_refused(Err(*s), 403, &["still used by", "dealer"]);

    // Nothing refused reached storage.
    let names: Vec<String> = tenants
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|t| t.name_any())
        .collect();
    for n in ["x", "deep", "y", "q", "pr", "ch", "ice"] {
        assert!(!names.contains(&n.to_string()), "{n} was stored: {names:?}");
    }
    assert_eq!(
        tenants.get("dealer").await.unwrap().spec.parent.as_deref(),
        Some("dist")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_fifty_creates_admits_exactly_the_limit() {
    let Some(p) = platform().await else { return };
    let c = p.admin();
    apply(
        &c,
        &tenant(
            "burst",
            json!({"parent": "acme", "limits": {"subtenants": 10}}),
        ),
    )
    .await
    .unwrap();
    let c = Arc::new(c);
    let mut tasks = Vec::new();
    for i in 0..50 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let t: Tenant =
                serde_json::from_value(tenant(&format!("b-{i}"), json!({"parent": "burst"})))
                    .unwrap();
            Api::<Tenant>::all((*c).clone())
                .create(&PostParams::default(), &t)
                .await
        }));
    }
    let (mut admitted, mut refused) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => admitted += 1,
            Err(kube::Error::Api(s)) => {
                refused += 1;
                assert_eq!(s.code, 403, "{}", s.message);
                assert!(
                    s.message.contains(
                        "tenant \"burst\" allows at most 10 subtenants in its subtree and uses 10"
                    ),
                    "{}",
                    s.message
                );
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!((admitted, refused), (10, 40));
    let stored = Api::<Tenant>::all((*c).clone())
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|t| t.spec.parent.as_deref() == Some("burst"))
        .count();
    assert_eq!(stored, 10);
    // The limit still holds for a late one.
    assert_refused(
        apply(&c, &tenant("late", json!({"parent": "burst"}))).await,
        403,
        &["tenant \"burst\" allows at most 10 subtenants in its subtree and uses 10"],
    );
}
