//! Siloed Mosquitto: configuration, a Deployment serving TLS on 8883, and its Service.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, PodSpec,
    PodTemplateSpec, Probe, SecretVolumeSource, Service, ServicePort, ServiceSpec, TCPSocketAction,
    Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sha2::{Digest, Sha256};

use crate::types::CountResource;

use super::Context;
use super::meta::{
    COMPONENT_LABEL, NAME_LABEL, TENANT_LABEL, namespaced, restricted_container, restricted_pod,
};
use super::workload::{SERVICE_ACCOUNT, resources};

pub const BROKER_NAME: &str = "silo-mosquitto";
pub const BROKER_CONFIG: &str = "silo-mosquitto-config";
/// Secret (filled by the operator) with key `passwd`: the Mosquitto password file.
pub const BROKER_CREDENTIALS_SECRET: &str = "silo-mosquitto-credentials";
/// Secret (filled by the PKI) with keys `ca.crt`, `tls.crt`, `tls.key` from the tenant CA.
pub const BROKER_TLS_SECRET: &str = "silo-mosquitto-tls";
pub const BROKER_TLS_PORT: i32 = 8883;
const MOSQUITTO_UID: i64 = 1883;

fn selector(tenant: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (NAME_LABEL.to_string(), "mosquitto".to_string()),
        (TENANT_LABEL.to_string(), tenant.to_string()),
    ])
}

/// Connection cap: `spec.mqtt.maxConnections`, else the effective `mqttConnections` limit.
pub fn max_connections(cx: &Context<'_>) -> i64 {
    cx.tenant
        .spec
        .mqtt
        .as_ref()
        .and_then(|m| m.max_connections)
        .or_else(|| cx.effective_limits.count(CountResource::MqttConnections))
        .unwrap_or(-1)
}

pub fn mosquitto_conf(cx: &Context<'_>) -> String {
    format!(
        "# Rendered by silo for tenant {tenant}; do not edit (the operator restores it).\n\
         per_listener_settings false\n\
         allow_anonymous false\n\
         password_file /mosquitto/auth/passwd\n\
         persistence false\n\
         log_dest stdout\n\
         max_connections {max}\n\
         listener {port}\n\
         cafile /mosquitto/tls/ca.crt\n\
         certfile /mosquitto/tls/tls.crt\n\
         keyfile /mosquitto/tls/tls.key\n\
         tls_version tlsv1.2\n",
        tenant = cx.tenant.name(),
        max = max_connections(cx),
        port = BROKER_TLS_PORT,
    )
}

pub fn config_map(cx: &Context<'_>) -> ConfigMap {
    ConfigMap {
        metadata: namespaced(
            cx.tenant,
            &cx.namespace,
            BROKER_CONFIG,
            &[(COMPONENT_LABEL, "broker")],
        ),
        data: Some(BTreeMap::from([(
            "mosquitto.conf".to_string(),
            mosquitto_conf(cx),
        )])),
        ..Default::default()
    }
}

pub fn deployment(cx: &Context<'_>) -> Deployment {
    let t = cx.tenant;
    let m = &cx.config.siloed.mosquitto;
    let labels = selector(t.name());
    let mut pod_labels = labels.clone();
    pod_labels.insert(COMPONENT_LABEL.into(), "broker".into());
    // Roll the pod when its configuration changes.
    let conf_hash = hex::encode(&Sha256::digest(mosquitto_conf(cx).as_bytes())[..8]);
    let mount = |name: &str, path: &str| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(name != "data"),
        ..Default::default()
    };
    let secret = |name: &str, secret: &str| Volume {
        name: name.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            default_mode: Some(0o440),
            ..Default::default()
        }),
        ..Default::default()
    };
    let container = Container {
        name: "mosquitto".into(),
        image: Some(m.image.clone()),
        command: Some(vec![
            "mosquitto".into(),
            "-c".into(),
            "/mosquitto/config/mosquitto.conf".into(),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some("mqtts".into()),
            container_port: BROKER_TLS_PORT,
            ..Default::default()
        }]),
        readiness_probe: Some(Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(BROKER_TLS_PORT),
                host: None,
            }),
            period_seconds: Some(10),
            ..Default::default()
        }),
        resources: Some(resources(&m.cpu, &m.memory)),
        security_context: Some(restricted_container()),
        volume_mounts: Some(vec![
            mount("config", "/mosquitto/config"),
            mount("tls", "/mosquitto/tls"),
            mount("auth", "/mosquitto/auth"),
            mount("data", "/mosquitto/data"),
        ]),
        ..Default::default()
    };
    Deployment {
        metadata: namespaced(
            t,
            &cx.namespace,
            BROKER_NAME,
            &[(COMPONENT_LABEL, "broker")],
        ),
        spec: Some(DeploymentSpec {
            replicas: Some(if cx.suspended { 0 } else { 1 }),
            strategy: Some(DeploymentStrategy {
                type_: Some("Recreate".into()),
                rolling_update: None,
            }),
            selector: LabelSelector {
                match_labels: Some(labels),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(BTreeMap::from([(
                        "silo.dev/config-hash".to_string(),
                        conf_hash,
                    )])),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(SERVICE_ACCOUNT.into()),
                    automount_service_account_token: Some(false),
                    security_context: Some(restricted_pod(MOSQUITTO_UID)),
                    containers: vec![container],
                    volumes: Some(vec![
                        Volume {
                            name: "config".into(),
                            config_map: Some(ConfigMapVolumeSource {
                                name: BROKER_CONFIG.into(),
                                ..Default::default()
                            }),
                            ..Default::default()
                        },
                        secret("tls", BROKER_TLS_SECRET),
                        secret("auth", BROKER_CREDENTIALS_SECRET),
                        Volume {
                            name: "data".into(),
                            empty_dir: Some(EmptyDirVolumeSource::default()),
                            ..Default::default()
                        },
                    ]),
                    ..Default::default()
                }),
            },
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
            BROKER_NAME,
            &[(COMPONENT_LABEL, "broker")],
        ),
        spec: Some(ServiceSpec {
            selector: Some(selector(cx.tenant.name())),
            ports: Some(vec![ServicePort {
                name: Some("mqtts".into()),
                port: BROKER_TLS_PORT,
                target_port: Some(IntOrString::String("mqtts".into())),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}
