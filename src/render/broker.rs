//! Siloed Mosquitto: configuration, a Deployment and its Service.
//!
//! # Listeners
//!
//! The broker opens exactly two listeners, both TLS with the broker certificate from the
//! tenant CA (`silo-mosquitto-tls`), and nothing else (no plaintext port, no default listener:
//! every listener option is written after its `listener` line, since Mosquitto applies an
//! option written before the first `listener` to an implicit default listener on 1883):
//!
//! - [`BROKER_TLS_PORT`] (8883, port name `mqtts`): username and password from the password
//!   file (`silo-mosquitto-credentials`); clients are not asked for a certificate;
//! - [`BROKER_CERT_PORT`] (8884, port name `mqtts-cert`): mutual TLS for devices with a
//!   certificate from the tenant CA (`require_certificate true`); the certificate's common name
//!   (the device id) is the MQTT username (`use_identity_as_username true`), no password. The
//!   trust anchors (`cafile`) are the tenant CA bundle only, in the form OpenSSL needs to use an
//!   intermediate CA as anchor (`client-ca.crt`, see
//!   [`crate::pki::TrustBundle::to_client_auth_anchors_pem`]): a device certificate of
//!   another tenant, although it chains to the same platform root, is refused.
//!
//! Mosquitto cannot mix both on one listener: without `require_certificate` it never asks
//! for a client certificate, with it every client needs one.
//!
//! # Master channels (bridge)
//!
//! A Siloed tenant whose `spec.channels` is not empty gets, when the platform has a shared
//! Mosquitto (`shared.mosquitto.host`, the channel endpoint), one bridge connection to it
//! ([`bridge_conf`]): it logs in as the tenant's own bridge identity ([`bridge_username`], a
//! dynamic-security client allowed only [`bridge_topics`]) and imports, for each channel,
//! `channels/<channel>/<tenant>/#` only (`topic … in 1`: remote → local, same topic), so the
//! tenant's applications subscribe to `channels/<channel>/<tenant>/#` on their own broker.
//! The bridge section holds the password, so it lives in the Secret
//! [`BROKER_BRIDGE_SECRET`] (key [`BRIDGE_FILE`]), mounted at [`BRIDGE_DIR`] and read through
//! `include_dir` at the end of `mosquitto.conf`; `mosquitto.conf` itself names the imported
//! topics, so a change of the channels changes the config hash on the pod template
//! (`silo.dev/config-hash`) and the broker restarts. With `shared.mosquitto.tls.port` set the
//! bridge uses TLS on that port and verifies the endpoint (`bridge_cafile` =
//! [`BRIDGE_CA_FILE`] in the same Secret, from `shared.mosquitto.tls.caCert`;
//! `bridge_insecure false`: the server certificate must name `shared.mosquitto.host`);
//! otherwise plain MQTT on `shared.mosquitto.port`.
//!
//! # The channel endpoint's certificate listener
//!
//! Certificate devices connect to the shared Mosquitto, which the platform engineer runs, on a
//! listener rendered by [`channel_cert_listener`]: mutual TLS against the device CA only
//! (`crate::pki::DeviceCa`), username = certificate CN.
//!
//! # Connection cap
//!
//! [`max_connections`] on each listener. Mosquitto counts connections per listener and has no
//! broker-wide cap, so the broker holds at most that many password clients plus that many
//! certificate clients. A cap of 0 (MQTT prohibited) is not expressible (`max_connections 0`
//! means unlimited to Mosquitto): the broker is not run at all (0 replicas).

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

use crate::config::PlatformConfig;
use crate::types::{CountResource, Tenant};

use super::Context;
use super::meta::{
    COMPONENT_LABEL, NAME_LABEL, TENANT_LABEL, namespaced, restricted_container, restricted_pod,
};
use super::workload::{SERVICE_ACCOUNT, resources};

pub const BROKER_NAME: &str = "silo-mosquitto";
pub const BROKER_CONFIG: &str = "silo-mosquitto-config";
/// Secret (filled by the operator) with key `passwd`: the Mosquitto password file.
pub const BROKER_CREDENTIALS_SECRET: &str = "silo-mosquitto-credentials";
/// Secret (filled by the PKI) with keys `ca.crt`, `client-ca.crt`, `tls.crt`, `tls.key` from the tenant CA.
pub const BROKER_TLS_SECRET: &str = "silo-mosquitto-tls";
/// TLS listener for password clients.
pub const BROKER_TLS_PORT: i32 = 8883;
/// Mutual-TLS listener for certificate clients (devices with a tenant-CA certificate).
pub const BROKER_CERT_PORT: i32 = 8884;
/// Where the pod mounts `silo-mosquitto-tls`, `silo-mosquitto-credentials` and the config.
pub const TLS_DIR: &str = "/mosquitto/tls";
pub const AUTH_DIR: &str = "/mosquitto/auth";
pub const CONFIG_DIR: &str = "/mosquitto/config";
const MOSQUITTO_UID: i64 = 1883;
/// Secret (filled by the operator) with key [`BRIDGE_FILE`]: the bridge to the channel
/// endpoint, with the bridge identity's password.
pub const BROKER_BRIDGE_SECRET: &str = "silo-mosquitto-bridge";
pub const BRIDGE_DIR: &str = "/mosquitto/bridge";
pub const BRIDGE_FILE: &str = "bridge.conf";
/// The bridge connection's name.
pub const BRIDGE_CONNECTION: &str = "silo-channels";
/// Key of [`BROKER_BRIDGE_SECRET`] holding the channel endpoint's CA (TLS bridges).
pub const BRIDGE_CA_FILE: &str = "channel-ca.crt";

/// The certificate-device listener of the channel endpoint (docs/channels.md): mutual TLS,
/// the client certificate verified against `device_ca_anchor` only (the device CA as a
/// client-auth trust anchor, `client-ca.crt` of Secret `silo-device-ca`: **not** the platform
/// root, or a tenant broker's server certificate or a tenant CA's device certificate, which
/// chain to the root too, could log in with a CN it chose), the CN is the MQTT username and no
/// password is asked for. `certfile`/`keyfile` are the endpoint's server certificate (its chain)
/// and key.
pub fn channel_cert_listener(
    port: u16,
    device_ca_anchor: &str,
    certfile: &str,
    keyfile: &str,
) -> String {
    format!(
        "listener {port}
         cafile {device_ca_anchor}
         certfile {certfile}
         keyfile {keyfile}
         tls_version tlsv1.2
         require_certificate true
         use_identity_as_username true
"
    )
}

/// The dynamic-security client (and role) a Siloed tenant's bridge logs in with on the shared
/// Mosquitto: `silo_bridge.<tenant>`. `_` occurs in no tenant name or device id, so no
/// tenant client (`<tenant>`), device (`<tenant>.<id>`) or cleanup client has this name.
pub fn bridge_username(tenant: &str) -> String {
    format!("silo_bridge.{tenant}")
}

/// What the bridge imports and its identity may read: `channels/<c>/<tenant>/#` per channel
/// (sorted, without duplicates).
pub fn bridge_topics(tenant: &str, channels: &[String]) -> Vec<String> {
    let set: std::collections::BTreeSet<&String> = channels.iter().collect();
    set.into_iter()
        .map(|c| format!("{}/{c}/{tenant}/#", crate::backends::CHANNEL_ROOT))
        .collect()
}

/// Whether the tenant's broker has a bridge: channels listed and a channel endpoint
/// configured.
pub fn has_bridge(cx: &Context<'_>) -> bool {
    has_bridge_for(cx.config, cx.tenant)
}

/// [`has_bridge`] from the configuration and the tenant.
pub fn has_bridge_for(config: &PlatformConfig, tenant: &Tenant) -> bool {
    !tenant.spec.channels.is_empty() && !config.shared.mosquitto.host.is_empty()
}

/// The bridge section (the file in [`BROKER_BRIDGE_SECRET`]): one connection to the channel
/// endpoint as [`bridge_username`] with `password`, importing [`bridge_topics`] at QoS 1.
/// `cleansession true`: nothing queues for a bridge that is down; `try_private false`: the
/// endpoint is a plain Mosquitto that must see an ordinary client; no notification topic
/// (the identity may publish nothing).
pub fn bridge_conf(config: &PlatformConfig, tenant: &Tenant, password: &str) -> String {
    let t = tenant.name();
    let m = &config.shared.mosquitto;
    let host = if m.host.contains(':') {
        format!("[{}]", m.host)
    } else {
        m.host.clone()
    };
    let tls = &m.tls;
    let port = if tls.port != 0 { tls.port } else { m.port };
    let mut out = format!(
        "# Rendered by silo for tenant {t}: the bridge to the master-channel endpoint.\n\
         connection {BRIDGE_CONNECTION}\n\
         address {host}:{port}\n\
         bridge_protocol_version mqttv311\n\
         remote_clientid silo-bridge-{t}\n\
         remote_username {user}\n\
         remote_password {password}\n\
         cleansession true\n\
         try_private false\n\
         notifications false\n\
         start_type automatic\n\
         restart_timeout 2 30\n",
        user = bridge_username(t),
    );
    if tls.port != 0 {
        // The CA's hash: a new CA changes this file, so the operator rewrites the Secret.
        out.push_str(&format!(
            "bridge_cafile {BRIDGE_DIR}/{BRIDGE_CA_FILE}\n\
             bridge_insecure false\n\
             bridge_tls_version tlsv1.2\n\
             # {BRIDGE_CA_FILE} sha256 {}\n",
            hex::encode(Sha256::digest(tls.ca_cert.as_bytes()))
        ));
    }
    for topic in bridge_topics(t, &tenant.spec.channels) {
        out.push_str(&format!("topic {topic} in 1\n"));
    }
    out
}

fn selector(tenant: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (NAME_LABEL.to_string(), "mosquitto".to_string()),
        (TENANT_LABEL.to_string(), tenant.to_string()),
    ])
}

/// Connection cap of each listener: the smaller of `spec.mqtt.maxConnections` and the
/// effective `mqttConnections` limit (own or inherited, SPEC "limits"), whichever are set;
/// `-1` = no cap; `0` = MQTT prohibited (the broker runs with 0 replicas, see the module
/// documentation).
pub fn max_connections(cx: &Context<'_>) -> i64 {
    let own = cx.tenant.spec.mqtt.as_ref().and_then(|m| m.max_connections);
    let limit = cx
        .effective_limits
        .count(CountResource::MqttConnections)
        .filter(|v| *v >= 0);
    match (own.filter(|v| *v >= 0), limit) {
        (Some(a), Some(b)) => a.min(b),
        (Some(a), None) | (None, Some(a)) => a,
        (None, None) => -1,
    }
}

/// Whether the broker runs: not while suspended, nor when MQTT is prohibited (cap 0).
pub fn runs(cx: &Context<'_>) -> bool {
    !cx.suspended && max_connections(cx) != 0
}

/// The broker's `mosquitto.conf` (see the module documentation for the listeners). Logs go
/// to stderr: Mosquitto 2.0 never flushes stdout, which the container runtime reads through a
/// pipe (block-buffered), so `log_dest stdout` would hold log lines back by kilobytes.
pub fn mosquitto_conf(cx: &Context<'_>) -> String {
    let max = max_connections(cx);
    format!(
        "# Rendered by silo for tenant {tenant}; do not edit (the operator restores it).\n\
         per_listener_settings false\n\
         allow_anonymous false\n\
         password_file {AUTH_DIR}/passwd\n\
         persistence false\n\
         log_dest stderr\n\
         \n\
         # Password clients: TLS, no client certificate asked for.\n\
         listener {BROKER_TLS_PORT}\n\
         max_connections {max}\n\
         certfile {TLS_DIR}/tls.crt\n\
         keyfile {TLS_DIR}/tls.key\n\
         tls_version tlsv1.2\n\
         \n\
         # Certificate clients: mutual TLS against the tenant CA only; username = certificate CN.\n\
         listener {BROKER_CERT_PORT}\n\
         max_connections {max}\n\
         cafile {TLS_DIR}/{client_ca}\n\
         certfile {TLS_DIR}/tls.crt\n\
         keyfile {TLS_DIR}/tls.key\n\
         tls_version tlsv1.2\n\
         require_certificate true\n\
         use_identity_as_username true\n",
        tenant = cx.tenant.name(),
        client_ca = crate::pki::SECRET_CLIENT_CA,
    ) + &bridge_include(cx)
}

/// The end of `mosquitto.conf` when there is a bridge: what it imports (so the config hash
/// follows the channels) and the `include_dir` of [`BROKER_BRIDGE_SECRET`].
fn bridge_include(cx: &Context<'_>) -> String {
    if !has_bridge(cx) {
        return String::new();
    }
    let t = cx.tenant.name();
    let m = &cx.config.shared.mosquitto;
    let (port, how) = if m.tls.port != 0 {
        (m.tls.port, " (TLS)")
    } else {
        (m.port, "")
    };
    let mut out = format!(
        "\n# Master channels: bridge {BRIDGE_CONNECTION} to {}:{port}{how} as {}, importing only:\n",
        m.host,
        bridge_username(t)
    );
    for topic in bridge_topics(t, &cx.tenant.spec.channels) {
        out.push_str(&format!("#   {topic}\n"));
    }
    out.push_str(&format!(
        "# (its settings, with the password, are in the Secret {BROKER_BRIDGE_SECRET})\ninclude_dir {BRIDGE_DIR}\n"
    ));
    out
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
            format!("{CONFIG_DIR}/mosquitto.conf"),
        ]),
        ports: Some(vec![
            ContainerPort {
                name: Some("mqtts".into()),
                container_port: BROKER_TLS_PORT,
                ..Default::default()
            },
            ContainerPort {
                name: Some("mqtts-cert".into()),
                container_port: BROKER_CERT_PORT,
                ..Default::default()
            },
        ]),
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
        volume_mounts: Some(
            [
                mount("config", CONFIG_DIR),
                mount("tls", TLS_DIR),
                mount("auth", AUTH_DIR),
                mount("data", "/mosquitto/data"),
            ]
            .into_iter()
            .chain(has_bridge(cx).then(|| mount("bridge", BRIDGE_DIR)))
            .collect(),
        ),
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
            replicas: Some(if runs(cx) { 1 } else { 0 }),
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
                    volumes: Some(
                        [
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
                        ]
                        .into_iter()
                        .chain(has_bridge(cx).then(|| secret("bridge", BROKER_BRIDGE_SECRET)))
                        .chain([Volume {
                            name: "data".into(),
                            empty_dir: Some(EmptyDirVolumeSource::default()),
                            ..Default::default()
                        }])
                        .collect(),
                    ),
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
            ports: Some(vec![
                ServicePort {
                    name: Some("mqtts".into()),
                    port: BROKER_TLS_PORT,
                    target_port: Some(IntOrString::String("mqtts".into())),
                    ..Default::default()
                },
                ServicePort {
                    name: Some("mqtts-cert".into()),
                    port: BROKER_CERT_PORT,
                    target_port: Some(IntOrString::String("mqtts-cert".into())),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }
}
