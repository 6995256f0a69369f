//! The real shared services: [`PostgresBackend`] and [`MosquittoBackend`] behind
//! [`SharedServices`]. A service whose `shared.<service>.host` is empty is not configured:
//! its calls fail with [`BackendError::NotConfigured`] and it has no endpoint.

use super::mosquitto::MosquittoBackend;
use super::postgres::PostgresBackend;
use super::{
    BackendError, BackendFuture, BrokerAccount, BrokerRemoval, DatabaseAccount, Ensured, Purged,
    Service, SharedServices, not_configured,
};

/// The platform's shared PostgreSQL and Mosquitto, each optional.
#[derive(Default)]
pub struct PlatformServices {
    postgres: Option<(PostgresBackend, String, u16)>,
    mosquitto: Option<(MosquittoBackend, String, u16)>,
}

impl std::fmt::Debug for PlatformServices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlatformServices")
            .field("postgres", &self.postgres.as_ref().map(|(_, h, p)| (h, p)))
            .field(
                "mosquitto",
                &self.mosquitto.as_ref().map(|(_, h, p)| (h, p)),
            )
            .finish()
    }
}

impl PlatformServices {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_postgres(mut self, host: &str, port: u16, admin: super::AdminCredentials) -> Self {
        self.postgres = Some((
            PostgresBackend::new(host, port, admin),
            host.to_string(),
            port,
        ));
        self
    }

    pub fn with_mosquitto(mut self, host: &str, port: u16, admin: super::AdminCredentials) -> Self {
        self.mosquitto = Some((
            MosquittoBackend::new(host, port, admin),
            host.to_string(),
            port,
        ));
        self
    }

    fn pg(&self) -> Result<&PostgresBackend, BackendError> {
        self.postgres
            .as_ref()
            .map(|(b, ..)| b)
            .ok_or_else(|| not_configured(Service::Postgres))
    }

    fn mq(&self) -> Result<&MosquittoBackend, BackendError> {
        self.mosquitto
            .as_ref()
            .map(|(b, ..)| b)
            .ok_or_else(|| not_configured(Service::Mosquitto))
    }
}

impl SharedServices for PlatformServices {
    fn ensure_database<'a>(&'a self, account: &'a DatabaseAccount) -> BackendFuture<'a, Ensured> {
        Box::pin(async move { self.pg()?.ensure_database(account).await })
    }

    fn retire_database<'a>(&'a self, database: &'a str, now_unix: i64) -> BackendFuture<'a, bool> {
        Box::pin(async move { self.pg()?.retire_database(database, now_unix).await })
    }

    fn purge_retired_databases(&self, before_unix: i64) -> BackendFuture<'_, Vec<Purged>> {
        Box::pin(async move { self.pg()?.purge_retired(before_unix).await })
    }

    fn ensure_broker_client<'a>(
        &'a self,
        account: &'a BrokerAccount,
    ) -> BackendFuture<'a, Ensured> {
        Box::pin(async move { self.mq()?.ensure_client(account).await })
    }

    fn remove_broker_tenant<'a>(&'a self, tenant: &'a str) -> BackendFuture<'a, BrokerRemoval> {
        Box::pin(async move { self.mq()?.remove_tenant(tenant).await })
    }

    fn remove_broker_client<'a>(
        &'a self,
        username: &'a str,
        role: &'a str,
    ) -> BackendFuture<'a, bool> {
        Box::pin(async move { self.mq()?.remove_client(username, role).await })
    }

    fn database_endpoint(&self) -> Option<(String, u16)> {
        self.postgres.as_ref().map(|(_, h, p)| (h.clone(), *p))
    }

    fn broker_endpoint(&self) -> Option<(String, u16)> {
        self.mosquitto.as_ref().map(|(_, h, p)| (h.clone(), *p))
    }
    fn broker_login(&self) -> Option<(String, u16, super::AdminCredentials)> {
        self.mosquitto
            .as_ref()
            .map(|(b, h, p)| (h.clone(), *p, b.admin().clone()))
    }
}
