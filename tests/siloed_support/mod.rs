//! Siloed tenants reconciled by the real operator pipeline on the in-memory cluster (with the
//! built-in `local` key provider), and their broker started from what the operator wrote: the
//! `silo-mosquitto-config` ConfigMap, the `silo-mosquitto-tls` and
//! `silo-mosquitto-credentials` Secrets (see `mosquitto_support::RenderedBroker`).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine as _;
use silo::config::PlatformConfig;
use silo::hierarchy::TenantTree;
use silo::operator::Reconciler;
use silo::operator::cluster::memory::MemoryCluster;
use silo::operator::cluster::{Cluster, ObjectKey};
use silo::operator::key_service::{KeyService, ProviderKeys};
use silo::operator::reconcile::secrets::{self, ROOT_CA_SECRET, tenant_ca_secret};
use silo::pki::{TenantCa, TenantNames};
use silo::render::broker;
use silo::types::Tenant;

use crate::mosquitto_support::RenderedBroker;

pub struct Silo {
    pub cluster: Arc<MemoryCluster>,
    pub keys: Arc<ProviderKeys>,
    rec: Reconciler<Arc<MemoryCluster>>,
}

/// The operator with `tenants` reconciled once each.
pub async fn reconciled(tenants: Vec<Tenant>) -> Silo {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cluster = Arc::new(MemoryCluster::new());
    let keys = Arc::new(ProviderKeys::in_memory().await.unwrap());
    let rec = Reconciler::new(
        cluster.clone(),
        PlatformConfig::default(),
        keys.clone(),
        None,
    );
    let names: Vec<String> = tenants.iter().map(|t| t.name().to_string()).collect();
    for t in tenants {
        cluster.put_tenant(t);
    }
    let silo = Silo { cluster, keys, rec };
    let tree = TenantTree::build(silo.cluster.inventory(), Default::default());
    for n in names {
        let live = silo.cluster.tenant(&n);
        silo.rec
            .reconcile_live(&tree, &n, live.as_ref())
            .await
            .unwrap();
    }
    silo
}

impl Silo {
    /// Decoded data of a Secret (`namespace`/`name`).
    pub async fn secret_in(&self, namespace: &str, name: &str) -> BTreeMap<String, String> {
        self.cluster
            .get_secret(namespace, name)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("no Secret {namespace}/{name}"))
    }

    pub async fn secret(&self, tenant: &str, name: &str) -> BTreeMap<String, String> {
        self.secret_in(&format!("tenant-{tenant}"), name).await
    }

    /// The broker configuration the operator applied (`silo-mosquitto-config`).
    pub fn mosquitto_conf(&self, tenant: &str) -> String {
        let key = ObjectKey::new(
            "ConfigMap",
            Some(&format!("tenant-{tenant}")),
            broker::BROKER_CONFIG,
        );
        let cm = self.cluster.get(&key).unwrap_or_else(|| panic!("no {key}"));
        cm["data"]["mosquitto.conf"]
            .as_str()
            .expect("mosquitto.conf")
            .to_string()
    }

    /// The platform root certificate (PEM): what clients trust to verify a broker.
    pub async fn platform_root_pem(&self) -> String {
        self.secret_in("silo-system", ROOT_CA_SECRET).await[secrets::CA_CERT_KEY].clone()
    }

    /// The tenant's CA with its key, unsealed from `silo-ca-<tenant>` with the tenant's key
    /// (what the operator will use to issue device certificates).
    pub async fn tenant_ca(&self, tenant: &str) -> TenantCa {
        let d = self
            .secret_in("silo-system", &tenant_ca_secret(tenant))
            .await;
        let sealed = base64::engine::general_purpose::STANDARD
            .decode(&d[secrets::CA_KEY_SEALED_KEY])
            .unwrap();
        let key = self
            .keys
            .open(tenant, secrets::CA_KEY_PURPOSE, &sealed)
            .await
            .unwrap();
        TenantCa::from_pem(
            TenantNames::new(tenant, format!("tenant-{tenant}")).unwrap(),
            &d[secrets::CA_CERT_KEY],
            &String::from_utf8(key).unwrap(),
        )
        .unwrap()
    }

    /// Start Mosquitto with the tenant's rendered configuration and the files its pod
    /// would mount from the reconciled Secrets.
    pub async fn start_broker(&self, tenant: &str) -> RenderedBroker {
        let conf = self.mosquitto_conf(tenant);
        let tls = self.secret(tenant, broker::BROKER_TLS_SECRET).await;
        let auth = self.secret(tenant, broker::BROKER_CREDENTIALS_SECRET).await;
        RenderedBroker::start(&conf, &[(broker::TLS_DIR, &tls), (broker::AUTH_DIR, &auth)])
    }
}

/// The DNS name the tenant's broker certificate is valid for.
pub fn broker_host(tenant: &str) -> String {
    format!("{}.tenant-{tenant}.svc", broker::BROKER_NAME)
}
