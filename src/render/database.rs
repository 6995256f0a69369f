//! Siloed PostgreSQL: a StatefulSet with its volume and a headless Service.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, ExecAction,
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSpec, PodTemplateSpec, Probe,
    SecretKeySelector, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::Context;
use super::meta::{
    COMPONENT_LABEL, NAME_LABEL, TENANT_LABEL, namespaced, restricted_container, restricted_pod,
};
use super::workload::{SERVICE_ACCOUNT, resources};

pub const DATABASE_NAME: &str = "silo-postgres";
/// Secret (filled by the operator) with keys `username`, `password`, `database`.
pub const DATABASE_SECRET: &str = "silo-postgres-credentials";
pub const DATABASE_PORT: i32 = 5432;
/// The Unix socket directory (the pod's `run` volume).
pub const SOCKET_DIR: &str = "/var/run/postgresql";
const POSTGRES_UID: i64 = 999;

fn selector(tenant: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (NAME_LABEL.to_string(), "postgres".to_string()),
        (TENANT_LABEL.to_string(), tenant.to_string()),
    ])
}

/// The image: the platform's image with its tag replaced by `spec.database.version`, if set.
pub fn image(cx: &Context<'_>) -> String {
    image_for(
        &cx.config.siloed.postgres.image,
        cx.tenant
            .spec
            .database
            .as_ref()
            .and_then(|d| d.version.as_deref()),
    )
}

/// The PostgreSQL image of a Siloed tenant: `base` (the platform's `siloed.postgres.image`)
/// with its tag replaced by `version` (`spec.database.version`) when one is given.
pub fn image_for(base: &str, version: Option<&str>) -> String {
    match version {
        Some(v) => {
            let repo = base
                .rsplit_once(':')
                .filter(|(_, tag)| !tag.contains('/'))
                .map_or(base, |(r, _)| r);
            format!("{repo}:{v}")
        }
        None => base.to_string(),
    }
}

fn secret_env(name: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: DATABASE_SECRET.to_string(),
                key: key.to_string(),
                optional: Some(false),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The container's arguments: the server and the options that decide what it listens on,
/// rendered here rather than left to the image's defaults: TCP on every address of the pod
/// (`listen_addresses=*`, the NetworkPolicy decides who reaches it) at [`DATABASE_PORT`], and
/// the Unix socket in [`SOCKET_DIR`]. The image's entrypoint passes them to `postgres`.
/// `tests/siloed_servers.rs` starts PostgreSQL with exactly these.
pub fn server_args() -> Vec<String> {
    [
        "postgres".to_string(),
        "-c".to_string(),
        "listen_addresses=*".to_string(),
        "-c".to_string(),
        format!("port={DATABASE_PORT}"),
        "-c".to_string(),
        format!("unix_socket_directories={SOCKET_DIR}"),
    ]
    .into()
}

pub fn statefulset(cx: &Context<'_>) -> StatefulSet {
    let t = cx.tenant;
    let pg = &cx.config.siloed.postgres;
    let storage = t
        .spec
        .database
        .as_ref()
        .and_then(|d| d.storage.clone())
        .unwrap_or_else(|| pg.storage.clone());
    let labels = selector(t.name());
    let mut pod_labels = labels.clone();
    pod_labels.insert(COMPONENT_LABEL.into(), "database".into());
    let mount = |name: &str, path: &str| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        ..Default::default()
    };
    let container = Container {
        name: "postgres".into(),
        image: Some(image(cx)),
        args: Some(server_args()),
        env: Some(vec![
            secret_env("POSTGRES_USER", "username"),
            secret_env("POSTGRES_PASSWORD", "password"),
            secret_env("POSTGRES_DB", "database"),
            EnvVar {
                name: "PGDATA".into(),
                value: Some("/var/lib/postgresql/data/pgdata".into()),
                ..Default::default()
            },
        ]),
        ports: Some(vec![ContainerPort {
            name: Some("postgres".into()),
            container_port: DATABASE_PORT,
            ..Default::default()
        }]),
        readiness_probe: Some(Probe {
            exec: Some(ExecAction {
                command: Some(vec!["pg_isready".into(), "-h".into(), "127.0.0.1".into()]),
            }),
            period_seconds: Some(10),
            ..Default::default()
        }),
        liveness_probe: Some(Probe {
            exec: Some(ExecAction {
                command: Some(vec!["pg_isready".into(), "-h".into(), "127.0.0.1".into()]),
            }),
            initial_delay_seconds: Some(30),
            period_seconds: Some(20),
            ..Default::default()
        }),
        resources: Some(resources(&pg.cpu, &pg.memory)),
        security_context: Some(restricted_container()),
        volume_mounts: Some(vec![
            mount("data", "/var/lib/postgresql/data"),
            mount("run", SOCKET_DIR),
            mount("tmp", "/tmp"),
        ]),
        ..Default::default()
    };
    let empty = |name: &str| Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    };
    StatefulSet {
        metadata: namespaced(
            t,
            &cx.namespace,
            DATABASE_NAME,
            &[(COMPONENT_LABEL, "database")],
        ),
        spec: Some(StatefulSetSpec {
            replicas: Some(if cx.suspended { 0 } else { 1 }),
            service_name: Some(DATABASE_NAME.into()),
            selector: LabelSelector {
                match_labels: Some(labels),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(SERVICE_ACCOUNT.into()),
                    automount_service_account_token: Some(false),
                    security_context: Some(restricted_pod(POSTGRES_UID)),
                    containers: vec![container],
                    volumes: Some(vec![empty("run"), empty("tmp")]),
                    ..Default::default()
                }),
            },
            volume_claim_templates: Some(vec![PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some("data".into()),
                    ..Default::default()
                },
                spec: Some(PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteOnce".into()]),
                    resources: Some(VolumeResourceRequirements {
                        requests: Some(BTreeMap::from([(
                            "storage".to_string(),
                            Quantity(storage.to_string()),
                        )])),
                        limits: None,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn service(cx: &Context<'_>) -> Service {
    Service {
        metadata: namespaced(
            cx.tenant,
            &cx.namespace,
            DATABASE_NAME,
            &[(COMPONENT_LABEL, "database")],
        ),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(selector(cx.tenant.name())),
            ports: Some(vec![ServicePort {
                name: Some("postgres".into()),
                port: DATABASE_PORT,
                target_port: Some(IntOrString::String("postgres".into())),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}
