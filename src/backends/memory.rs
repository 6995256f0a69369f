//! In-memory [`SharedServices`] for the operator's flow tests and benchmarks: keeps the
//! databases, roles and broker clients it was asked for, counts every change, and can be
//! told to fail like an unreachable server.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::{
    BackendError, BackendFuture, BrokerAccount, BrokerRemoval, DatabaseAccount, Ensured, Purged,
    Service, SharedServices, retired_at, retired_name,
};

/// A database (and its role of the same name) as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredDatabase {
    pub password: String,
    pub login: bool,
}

/// A broker client (with its role) as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredClient {
    pub password: String,
    pub role: String,
    pub topics: Vec<String>,
    pub enabled: bool,
}

#[derive(Debug, Default)]
struct State {
    databases: BTreeMap<String, StoredDatabase>,
    clients: BTreeMap<String, StoredClient>,
    changes: u64,
    down: Option<Service>,
    retained_cleared_for: Vec<String>,
}

/// The in-memory shared services.
#[derive(Debug, Default)]
pub struct MemoryShared {
    state: Mutex<State>,
}

impl MemoryShared {
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut g = match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&mut g)
    }

    /// Tenants whose retained messages were cleared, in call order (the in-memory broker
    /// holds no messages; this records that leaving asked for it).
    pub fn retained_cleared_for(&self) -> Vec<String> {
        self.with(|s| s.retained_cleared_for.clone())
    }

    /// Databases by name (live `silo_t_…` and retired `silo_r_…`).
    pub fn databases(&self) -> BTreeMap<String, StoredDatabase> {
        self.with(|s| s.databases.clone())
    }

    /// Broker clients by username.
    pub fn clients(&self) -> BTreeMap<String, StoredClient> {
        self.with(|s| s.clients.clone())
    }

    /// Changes made so far (a steady state adds none).
    pub fn changes(&self) -> u64 {
        self.with(|s| s.changes)
    }

    /// Make every call to `service` fail as unreachable (`None`: all up again).
    pub fn set_down(&self, service: Option<Service>) {
        self.with(|s| s.down = service);
    }

    fn check(&self, service: Service) -> Result<(), BackendError> {
        match self.with(|s| s.down) {
            Some(d) if d == service => Err(BackendError::Connect {
                service,
                address: "memory".to_string(),
                message: "connection refused".to_string(),
            }),
            _ => Ok(()),
        }
    }
}

impl SharedServices for MemoryShared {
    fn ensure_database<'a>(&'a self, a: &'a DatabaseAccount) -> BackendFuture<'a, Ensured> {
        Box::pin(async move {
            self.check(Service::Postgres)?;
            Ok(self.with(|s| {
                let mut out = Ensured::default();
                match s.databases.get_mut(&a.database) {
                    None => {
                        s.databases.insert(
                            a.database.clone(),
                            StoredDatabase {
                                password: a.password.clone(),
                                login: a.login,
                            },
                        );
                        out.changes.push(format!("created database {}", a.database));
                    }
                    Some(d) => {
                        if a.reset_password && d.password != a.password {
                            d.password = a.password.clone();
                            out.changes.push("password set".to_string());
                        }
                        if d.login != a.login {
                            d.login = a.login;
                            out.changes.push(format!("login {}", a.login));
                        }
                    }
                }
                s.changes += out.changes.len() as u64;
                out
            }))
        })
    }

    fn retire_database<'a>(&'a self, database: &'a str, now_unix: i64) -> BackendFuture<'a, bool> {
        Box::pin(async move {
            self.check(Service::Postgres)?;
            Ok(self.with(|s| match s.databases.remove(database) {
                Some(mut d) => {
                    d.login = false;
                    s.databases.insert(retired_name(database, now_unix), d);
                    s.changes += 1;
                    true
                }
                None => false,
            }))
        })
    }

    fn purge_retired_databases(&self, before_unix: i64) -> BackendFuture<'_, Vec<Purged>> {
        Box::pin(async move {
            self.check(Service::Postgres)?;
            Ok(self.with(|s| {
                let due: Vec<Purged> = s
                    .databases
                    .keys()
                    .filter_map(|n| {
                        retired_at(n).map(|t| Purged {
                            database: n.clone(),
                            retired_at_unix: t,
                        })
                    })
                    .filter(|p| p.retired_at_unix < before_unix)
                    .collect();
                for p in &due {
                    s.databases.remove(&p.database);
                    s.changes += 1;
                }
                due
            }))
        })
    }

    fn ensure_broker_client<'a>(&'a self, a: &'a BrokerAccount) -> BackendFuture<'a, Ensured> {
        Box::pin(async move {
            self.check(Service::Mosquitto)?;
            Ok(self.with(|s| {
                let mut out = Ensured::default();
                match s.clients.get_mut(&a.username) {
                    None => {
                        s.clients.insert(
                            a.username.clone(),
                            StoredClient {
                                password: a.password.clone(),
                                role: a.role.clone(),
                                topics: a.topics.clone(),
                                enabled: a.enabled,
                            },
                        );
                        out.changes.push(format!("created client {}", a.username));
                    }
                    Some(c) => {
                        if a.reset_password && c.password != a.password {
                            c.password = a.password.clone();
                            out.changes.push("password set".to_string());
                        }
                        if c.role != a.role || c.topics != a.topics {
                            c.role = a.role.clone();
                            c.topics = a.topics.clone();
                            out.changes.push("ACLs corrected".to_string());
                        }
                        if c.enabled != a.enabled {
                            c.enabled = a.enabled;
                            out.changes.push(format!("enabled {}", a.enabled));
                        }
                    }
                }
                s.changes += out.changes.len() as u64;
                out
            }))
        })
    }

    fn remove_broker_client<'a>(
        &'a self,
        username: &'a str,
        _role: &'a str,
    ) -> BackendFuture<'a, bool> {
        Box::pin(async move {
            self.check(Service::Mosquitto)?;
            Ok(self.with(|s| {
                let removed = s.clients.remove(username).is_some();
                s.changes += u64::from(removed);
                removed
            }))
        })
    }

    fn remove_broker_tenant<'a>(&'a self, tenant: &'a str) -> BackendFuture<'a, BrokerRemoval> {
        Box::pin(async move {
            self.check(Service::Mosquitto)?;
            Ok(self.with(|s| {
                let removed = s.clients.remove(tenant).is_some();
                s.changes += u64::from(removed);
                s.retained_cleared_for.push(tenant.to_string());
                BrokerRemoval {
                    removed,
                    retained_cleared: 0,
                }
            }))
        })
    }

    fn database_endpoint(&self) -> Option<(String, u16)> {
        Some(("postgres.shared.svc".to_string(), 5432))
    }

    fn broker_endpoint(&self) -> Option<(String, u16)> {
        Some(("mosquitto.shared.svc".to_string(), 1883))
    }
}
