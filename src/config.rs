//! Platform configuration: one YAML file, every field defaulted, each overridable by an
//! environment variable `SILO_` + the field path in upper snake case
//! (`keys.provider` → `SILO_KEYS_PROVIDER`, `siloed.postgres.image` → `SILO_SILOED_POSTGRES_IMAGE`).

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::types::QuantityValue;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct PlatformConfig {
    pub platform_namespace: String,
    pub max_depth: u32,
    pub namespace_prefix: String,
    pub pod_security: PodSecurityLevel,
    pub siloed: SiloedConfig,
    pub keys: KeysConfig,
    pub shared: SharedConfig,
    pub retention_days: u32,
    /// Default container requests/limits in every tenant namespace (LimitRange).
    pub container_defaults: ContainerDefaults,
    /// The REST API (`silo api`, `silo token create`).
    pub api: ApiConfig,
    /// What the operator exports on `/metrics`.
    pub metrics: MetricsConfig,
}

/// `metrics`: the operator's Prometheus series.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Export `silo_tenant_usage` and `silo_tenant_limit` with a `tenant` label: one series
    /// per tenant and counted resource (about 10 per tenant, over a million at 100,000
    /// tenants). Off by default (`SILO_METRICS_PER_TENANT=true` turns it on); each tenant's
    /// usage is always in its `status.usage` and `GET /v1/tenants/{name}/usage`. The
    /// aggregate series (`silo_tenants{phase}`, reconciles, errors, durations) are always on.
    pub per_tenant: bool,
}

impl Default for PlatformConfig {
    fn default() -> Self {
        Self {
            platform_namespace: "silo-system".into(),
            max_depth: 7,
            namespace_prefix: "tenant-".into(),
            pod_security: PodSecurityLevel::Restricted,
            siloed: SiloedConfig::default(),
            keys: KeysConfig::default(),
            shared: SharedConfig::default(),
            retention_days: 7,
            container_defaults: ContainerDefaults::default(),
            api: ApiConfig::default(),
            metrics: MetricsConfig::default(),
        }
    }
}

/// `api`: the REST API's listen address, its PostgreSQL and its limits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Listen address (`--addr` overrides it).
    pub addr: String,
    pub database: ApiDatabase,
    /// How long requested actions wait for a decision (requested-actions API).
    pub requests_expire_days: u32,
    /// Requests per second each token may make on average; 0 = unlimited.
    pub rate_limit_per_second: u32,
    /// Requests a token may make in a burst above the average.
    pub rate_limit_burst: u32,
    /// Largest request body accepted, in bytes (larger: 413).
    pub max_body_bytes: u32,
    /// The audit trail's checkpoint keys (`silo audit archive`, `silo audit verify`).
    pub audit: AuditConfig,
    /// The dynamic-security admin login the API uses on the shared Mosquitto
    /// (`shared.mosquitto.host`/`port`) to create, disable and delete device clients.
    pub broker: ApiBroker,
    /// Certificate devices: the device CA the API issues their certificates with.
    pub devices: ApiDevices,
}

/// `api.devices`: settings of the device registry.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ApiDevices {
    /// The device CA's files (Secret `silo-device-ca`, kept by the operator, mounted into the
    /// API pod). Unset: certificate registrations answer 503 naming this setting.
    pub ca: DeviceCaFiles,
}

/// `api.devices.ca`: where the mounted device CA is (`certFile` = the CA certificate followed
/// by the platform root, `keyFile` = its key). Both or neither.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct DeviceCaFiles {
    /// PEM: the device CA certificate first, then its chain (`tls.crt` of `silo-device-ca`).
    pub cert_file: String,
    /// PEM: the device CA's private key (`tls.key` of `silo-device-ca`).
    pub key_file: String,
}

/// `api.audit`: the Ed25519 key pair of the signed checkpoints written by
/// `silo audit archive` (docs/audit.md). Both base64 (standard alphabet, with padding), as
/// printed by `silo audit keygen`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct AuditConfig {
    /// The 32-byte Ed25519 seed that signs checkpoints; needed by `silo audit archive` only.
    /// Set it from a Secret (`SILO_API_AUDIT_SIGNING_KEY`), never in the file.
    pub signing_key: String,
    /// The 32-byte Ed25519 public key `silo audit verify` checks checkpoint signatures with
    /// (`SILO_API_AUDIT_VERIFY_KEY`); empty: derived from `signingKey` when that is set,
    /// otherwise signatures are reported as not checked.
    pub verify_key: String,
}

/// `api.broker`: admin login on the shared Mosquitto for device clients. Empty username = no
/// broker: device registration answers 503.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ApiBroker {
    /// A dynamic-security admin client (`SILO_API_BROKER_USERNAME`).
    pub username: String,
    /// Its password: set `SILO_API_BROKER_PASSWORD` from a Secret rather than the file.
    pub password: String,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            addr: "0.0.0.0:8081".into(),
            database: ApiDatabase::default(),
            requests_expire_days: 7,
            rate_limit_per_second: 50,
            rate_limit_burst: 100,
            max_body_bytes: 65536,
            audit: AuditConfig::default(),
            broker: ApiBroker::default(),
            devices: ApiDevices::default(),
        }
    }
}

/// `api.database`: the PostgreSQL holding tokens (devices, requests and audit later).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ApiDatabase {
    /// `postgres://user@host:5432/dbname?sslmode=disable` (`SILO_API_DATABASE_URL`).
    pub url: String,
    /// Password, when it is not in the URL: set `SILO_API_DATABASE_PASSWORD` from a Secret
    /// rather than writing it into the file.
    pub password: String,
    /// URL of the role owning the schema (`SILO_API_DATABASE_OWNER_URL`): when set,
    /// migrations and `silo audit archive` use it and `url` may name a role holding only
    /// `silo_api_writer` (INSERT and SELECT on the audit trail). Empty: `url` does everything.
    pub owner_url: String,
}

impl ApiDatabase {
    /// The connection settings of `url`, with `password` when it is set and a 5-second connect
    /// timeout unless the URL gives one (the API's store, the operator's audit writer and its
    /// device-registry reads all connect this way).
    pub fn pg_config(&self) -> Result<tokio_postgres::Config, tokio_postgres::Error> {
        let mut config = pg_config_of(&self.url)?;
        if !self.password.is_empty() {
            config.password(&self.password);
        }
        Ok(config)
    }
}

/// A PostgreSQL URL's connection settings, with a 5-second connect timeout unless it gives one.
pub fn pg_config_of(url: &str) -> Result<tokio_postgres::Config, tokio_postgres::Error> {
    let mut config: tokio_postgres::Config = url.parse()?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(std::time::Duration::from_secs(5));
    }
    Ok(config)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PodSecurityLevel {
    Privileged,
    Baseline,
    Restricted,
}

impl PodSecurityLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            PodSecurityLevel::Privileged => "privileged",
            PodSecurityLevel::Baseline => "baseline",
            PodSecurityLevel::Restricted => "restricted",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct SiloedConfig {
    pub postgres: SiloedPostgres,
    pub mosquitto: SiloedMosquitto,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct SiloedPostgres {
    pub image: String,
    pub storage: QuantityValue,
    pub cpu: QuantityValue,
    pub memory: QuantityValue,
}

impl Default for SiloedPostgres {
    fn default() -> Self {
        Self {
            image: "postgres:16".into(),
            storage: QuantityValue::new("1Gi"),
            cpu: QuantityValue::new("250m"),
            memory: QuantityValue::new("256Mi"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct SiloedMosquitto {
    pub image: String,
    pub cpu: QuantityValue,
    pub memory: QuantityValue,
}

impl Default for SiloedMosquitto {
    fn default() -> Self {
        Self {
            image: "eclipse-mosquitto:2".into(),
            cpu: QuantityValue::new("100m"),
            memory: QuantityValue::new("64Mi"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct KeysConfig {
    pub provider: KeyProviderKind,
    pub deletion_window_days: u32,
    pub aws_kms: AwsKmsConfig,
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self {
            provider: KeyProviderKind::Local,
            deletion_window_days: 30,
            aws_kms: AwsKmsConfig::default(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyProviderKind {
    Local,
    AwsKms,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct AwsKmsConfig {
    pub region: String,
    pub endpoint: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct SharedConfig {
    pub postgres: SharedService,
    pub mosquitto: SharedMosquitto,
}

/// `shared.mosquitto`: the shared Mosquitto (Shared tenants' broker and the master-channel
/// endpoint). `port` is the plain port the operator and the API administer it on (dynamic
/// security); `tls` is the TLS listener Siloed tenants' bridges connect to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SharedMosquitto {
    #[serde(default)]
    pub host: String,
    pub port: u16,
    #[serde(default)]
    pub admin_secret: String,
    /// TLS for the bridges to the channel endpoint; unset (port 0): plain MQTT on `port`.
    #[serde(default)]
    pub tls: ChannelTls,
}

/// `shared.mosquitto.tls`: the channel endpoint's TLS listener for bridges (server
/// authentication only; the bridge logs in with its identity's password).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ChannelTls {
    /// The listener's port; 0 = no TLS.
    pub port: u16,
    /// PEM of the CA certificate(s) the endpoint's server certificate chains to (for example
    /// the platform root, `ca.crt` of Secret `silo-root-ca`). The server certificate must
    /// name `shared.mosquitto.host`. Required when `port` is set.
    pub ca_cert: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SharedService {
    #[serde(default)]
    pub host: String,
    pub port: u16,
    #[serde(default)]
    pub admin_secret: String,
}

impl Default for SharedConfig {
    fn default() -> Self {
        Self {
            postgres: SharedService {
                host: String::new(),
                port: 5432,
                admin_secret: String::new(),
            },
            mosquitto: SharedMosquitto {
                host: String::new(),
                port: 1883,
                admin_secret: String::new(),
                tls: ChannelTls::default(),
            },
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ContainerDefaults {
    pub cpu_request: QuantityValue,
    pub memory_request: QuantityValue,
    pub cpu_limit: QuantityValue,
    pub memory_limit: QuantityValue,
}

impl Default for ContainerDefaults {
    fn default() -> Self {
        Self {
            cpu_request: QuantityValue::new("100m"),
            memory_request: QuantityValue::new("128Mi"),
            cpu_limit: QuantityValue::new("500m"),
            memory_limit: QuantityValue::new("512Mi"),
        }
    }
}

/// Why the configuration could not be used; always names the file and the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{origin}: {field}: {reason}")]
    Invalid {
        origin: String,
        field: String,
        reason: String,
    },
}

impl PlatformConfig {
    /// Loads the file (if any), applies `SILO_*` environment overrides, then validates.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let (origin, text) = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.display().to_string(),
                    source,
                })?;
                (p.display().to_string(), text)
            }
            None => ("defaults".to_string(), String::new()),
        };
        Self::from_yaml_with_env(&origin, &text, |k| std::env::var(k).ok())
    }

    /// Parses `text` (empty = all defaults), overlays variables from `env`, validates.
    pub fn from_yaml_with_env(
        origin: &str,
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let invalid = |field: String, reason: String| ConfigError::Invalid {
            origin: origin.to_string(),
            field,
            reason,
        };
        // Start from the file merged over the defaults, as a JSON tree.
        let mut tree = serde_json::to_value(PlatformConfig::default())
            .map_err(|e| invalid("-".into(), e.to_string()))?;
        if !text.trim().is_empty() {
            let file: serde_norway::Value = serde_norway::from_str(text)
                .map_err(|e| invalid("-".into(), format!("not valid YAML: {e}")))?;
            let file =
                serde_json::to_value(file).map_err(|e| invalid("-".into(), e.to_string()))?;
            merge(&mut tree, file);
        }
        apply_env(&mut tree, "SILO", &env).map_err(|(field, reason)| ConfigError::Invalid {
            origin: "environment".into(),
            field,
            reason,
        })?;
        let cfg: PlatformConfig = serde_path_to_error::deserialize(tree).map_err(|e| {
            invalid(
                path_or_dash(e.path().to_string()),
                e.into_inner().to_string(),
            )
        })?;
        cfg.validate().map_err(|(f, r)| invalid(f.into(), r))?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), (&'static str, String)> {
        if !(1..=64).contains(&self.max_depth) {
            return Err((
                "maxDepth",
                format!("{} is out of range 1..=64", self.max_depth),
            ));
        }
        if !(7..=30).contains(&self.keys.deletion_window_days) {
            return Err((
                "keys.deletionWindowDays",
                format!(
                    "{} is out of range 7..=30 (the AWS KMS window)",
                    self.keys.deletion_window_days
                ),
            ));
        }
        if !is_dns_label(&self.platform_namespace) {
            return Err((
                "platformNamespace",
                format!(
                    "{:?} is not a valid namespace name",
                    self.platform_namespace
                ),
            ));
        }
        if self.namespace_prefix.len() > 20
            || !(self.namespace_prefix.is_empty()
                || is_dns_label(self.namespace_prefix.trim_end_matches('-')))
        {
            return Err((
                "namespacePrefix",
                format!(
                    "{:?} must be lower-case letters, digits and '-' (at most 20 characters)",
                    self.namespace_prefix
                ),
            ));
        }
        if self.api.addr.parse::<std::net::SocketAddr>().is_err() {
            return Err((
                "api.addr",
                format!("{:?} is not an address such as 0.0.0.0:8081", self.api.addr),
            ));
        }
        if !(1..=365).contains(&self.api.requests_expire_days) {
            return Err((
                "api.requestsExpireDays",
                format!(
                    "{} is out of range: requested actions expire after 1 to 365 days",
                    self.api.requests_expire_days
                ),
            ));
        }
        for (field, value) in [
            ("api.audit.signingKey", &self.api.audit.signing_key),
            ("api.audit.verifyKey", &self.api.audit.verify_key),
        ] {
            if !value.is_empty() && crate::audit::sign::decode_key(value).is_err() {
                return Err((
                    field,
                    "must be 32 bytes in base64 (as printed by `silo audit keygen`)".into(),
                ));
            }
        }
        let tls = &self.shared.mosquitto.tls;
        if tls.port != 0 && !tls.ca_cert.contains("-----BEGIN CERTIFICATE-----") {
            return Err((
                "shared.mosquitto.tls.caCert",
                "must hold the PEM certificate(s) the channel endpoint's server certificate chains to when shared.mosquitto.tls.port is set".into(),
            ));
        }
        let ca = &self.api.devices.ca;
        if ca.cert_file.is_empty() != ca.key_file.is_empty() {
            let missing = if ca.cert_file.is_empty() {
                "api.devices.ca.certFile"
            } else {
                "api.devices.ca.keyFile"
            };
            return Err((
                missing,
                "must be set together with the other api.devices.ca file (both or neither)".into(),
            ));
        }
        if self.api.max_body_bytes < 1024 {
            return Err((
                "api.maxBodyBytes",
                format!("{} is too small: at least 1024", self.api.max_body_bytes),
            ));
        }
        for (field, q) in [
            ("siloed.postgres.storage", &self.siloed.postgres.storage),
            ("siloed.postgres.cpu", &self.siloed.postgres.cpu),
            ("siloed.postgres.memory", &self.siloed.postgres.memory),
            ("siloed.mosquitto.cpu", &self.siloed.mosquitto.cpu),
            ("siloed.mosquitto.memory", &self.siloed.mosquitto.memory),
            (
                "containerDefaults.cpuRequest",
                &self.container_defaults.cpu_request,
            ),
            (
                "containerDefaults.memoryRequest",
                &self.container_defaults.memory_request,
            ),
            (
                "containerDefaults.cpuLimit",
                &self.container_defaults.cpu_limit,
            ),
            (
                "containerDefaults.memoryLimit",
                &self.container_defaults.memory_limit,
            ),
        ] {
            q.millis().map_err(|e| (field, e.to_string()))?;
        }
        Ok(())
    }

    /// Longest tenant name whose namespace name still fits in 63 characters.
    pub fn max_tenant_name_len(&self) -> usize {
        63usize.saturating_sub(self.namespace_prefix.len())
    }

    pub fn namespace_for(&self, tenant: &str) -> String {
        format!("{}{}", self.namespace_prefix, tenant)
    }
}

fn path_or_dash(p: String) -> String {
    if p == "." || p.is_empty() {
        "-".into()
    } else {
        p
    }
}

/// RFC 1123 label: what Kubernetes accepts as a namespace name.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

/// camelCase → UPPER_SNAKE (`awsKms` → `AWS_KMS`).
fn upper_snake(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

fn apply_env(
    tree: &mut Value,
    prefix: &str,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<(), (String, String)> {
    fn walk(
        v: &mut Value,
        var: &str,
        field: &str,
        env: &impl Fn(&str) -> Option<String>,
    ) -> Result<(), (String, String)> {
        match v {
            Value::Object(map) => {
                for (k, child) in map.iter_mut() {
                    let var = format!("{var}_{}", upper_snake(k));
                    let field = if field.is_empty() {
                        k.clone()
                    } else {
                        format!("{field}.{k}")
                    };
                    walk(child, &var, &field, env)?;
                }
                Ok(())
            }
            leaf => {
                if let Some(raw) = env(var) {
                    *leaf = match leaf {
                        Value::Number(_) => {
                            raw.trim().parse::<u64>().map(Value::from).map_err(|_| {
                                (
                                    field.to_string(),
                                    format!("{var}={raw:?} is not a non-negative integer"),
                                )
                            })?
                        }
                        Value::Bool(_) => {
                            raw.trim().parse::<bool>().map(Value::from).map_err(|_| {
                                (
                                    field.to_string(),
                                    format!("{var}={raw:?} is not true or false"),
                                )
                            })?
                        }
                        _ => Value::String(raw),
                    };
                }
                Ok(())
            }
        }
    }
    walk(tree, prefix, "", env)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn defaults_match_the_contract() {
        let c = PlatformConfig::from_yaml_with_env("t", "", no_env).unwrap();
        assert_eq!(c.platform_namespace, "silo-system");
        assert_eq!(c.max_depth, 7);
        assert_eq!(c.namespace_prefix, "tenant-");
        assert_eq!(c.pod_security, PodSecurityLevel::Restricted);
        assert_eq!(c.siloed.postgres.image, "postgres:16");
        assert_eq!(c.siloed.mosquitto.image, "eclipse-mosquitto:2");
        assert_eq!(c.keys.provider, KeyProviderKind::Local);
        assert_eq!(c.keys.deletion_window_days, 30);
        assert_eq!(c.shared.postgres.port, 5432);
        assert_eq!(c.shared.mosquitto.port, 1883);
        assert_eq!(c.retention_days, 7);
    }

    #[test]
    fn file_values_override_defaults() {
        let c = PlatformConfig::from_yaml_with_env(
            "f.yaml",
            "maxDepth: 5\nsiloed:\n  postgres:\n    image: postgres:17\n",
            no_env,
        )
        .unwrap();
        assert_eq!(c.max_depth, 5);
        assert_eq!(c.siloed.postgres.image, "postgres:17");
        assert_eq!(
            c.siloed.postgres.storage.as_str(),
            "1Gi",
            "siblings keep defaults"
        );
    }

    #[test]
    fn device_ca_files_and_bridge_tls_are_checked() {
        let no_env = |_: &str| None;
        let e = PlatformConfig::from_yaml_with_env(
            "f",
            "api:\n  devices:\n    ca:\n      certFile: /x/tls.crt\n",
            no_env,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("api.devices.ca.keyFile"), "{e}");
        let ok = PlatformConfig::from_yaml_with_env(
            "f",
            "api:\n  devices:\n    ca: { certFile: /x/tls.crt, keyFile: /x/tls.key }\n",
            no_env,
        )
        .unwrap();
        assert_eq!(ok.api.devices.ca.key_file, "/x/tls.key");
        let e = PlatformConfig::from_yaml_with_env(
            "f",
            "shared:\n  mosquitto: { port: 1883, tls: { port: 8883 } }\n",
            no_env,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("shared.mosquitto.tls.caCert"), "{e}");
        let e = PlatformConfig::from_yaml_with_env(
            "f",
            "api:\n  devices:\n    ca: { cert: /x }\n",
            no_env,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown field"), "{e}");
        let env = |k: &str| {
            (k == "SILO_API_DEVICES_CA_CERT_FILE" || k == "SILO_API_DEVICES_CA_KEY_FILE")
                .then(|| format!("/m/{k}"))
        };
        let c = PlatformConfig::from_yaml_with_env("f", "{}", env).unwrap();
        assert_eq!(
            c.api.devices.ca.cert_file,
            "/m/SILO_API_DEVICES_CA_CERT_FILE"
        );
    }

    #[test]
    fn env_overrides_file() {
        let env = |k: &str| match k {
            "SILO_KEYS_PROVIDER" => Some("aws-kms".to_string()),
            "SILO_KEYS_AWS_KMS_ENDPOINT" => Some("http://127.0.0.1:5000".to_string()),
            "SILO_MAX_DEPTH" => Some("4".to_string()),
            _ => None,
        };
        let c = PlatformConfig::from_yaml_with_env("f.yaml", "maxDepth: 6\n", env).unwrap();
        assert_eq!(c.keys.provider, KeyProviderKind::AwsKms);
        assert_eq!(c.keys.aws_kms.endpoint, "http://127.0.0.1:5000");
        assert_eq!(c.max_depth, 4);
    }

    #[test]
    fn unknown_field_is_named() {
        let err =
            PlatformConfig::from_yaml_with_env("f.yaml", "siloed:\n  postgress: {}\n", no_env)
                .unwrap_err()
                .to_string();
        assert!(err.starts_with("f.yaml: siloed"), "{err}");
        assert!(err.contains("postgress"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let err =
            PlatformConfig::from_yaml_with_env("f.yaml", "keys:\n  provider: vault\n", no_env)
                .unwrap_err()
                .to_string();
        assert!(err.contains("keys.provider"), "{err}");
        let err = PlatformConfig::from_yaml_with_env(
            "f.yaml",
            "keys:\n  deletionWindowDays: 3\n",
            no_env,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("keys.deletionWindowDays") && err.contains("7..=30"),
            "{err}"
        );
        let err = PlatformConfig::from_yaml_with_env(
            "f.yaml",
            "siloed:\n  postgres:\n    storage: lots\n",
            no_env,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("siloed.postgres.storage"), "{err}");
        let env = |k: &str| (k == "SILO_MAX_DEPTH").then(|| "seven".to_string());
        let err = PlatformConfig::from_yaml_with_env("f.yaml", "", env)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("maxDepth") && err.contains("SILO_MAX_DEPTH"),
            "{err}"
        );
    }

    #[test]
    fn audit_and_request_settings_are_checked() {
        let err = |yaml: &str| {
            PlatformConfig::from_yaml_with_env("f.yaml", yaml, no_env)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err("api:\n  requestsExpireDays: 0\n"),
            "f.yaml: api.requestsExpireDays: 0 is out of range: requested actions expire after 1 to 365 days"
        );
        assert_eq!(
            err("api:\n  audit:\n    signingKey: c2hvcnQ=\n"),
            "f.yaml: api.audit.signingKey: must be 32 bytes in base64 (as printed by `silo audit keygen`)"
        );
        assert!(err("api:\n  audit:\n    verifyKey: '!!'\n").contains("api.audit.verifyKey"));
        let (seed, public) = crate::audit::sign::Signer::generate();
        let ok = PlatformConfig::from_yaml_with_env(
            "f.yaml",
            &format!("api:\n  audit:\n    signingKey: {seed}\n    verifyKey: {public}\n"),
            no_env,
        )
        .unwrap();
        assert_eq!(ok.api.requests_expire_days, 7);
        assert_eq!(crate::audit::verify_key(&ok.api.audit), Some(public));
    }
}
