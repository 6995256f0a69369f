//! A throwaway PostgreSQL 15 for one test: `initdb` in a temp dir owned by `postgres` (tests
//! run as root in CI, and initdb refuses root), scram-sha-256 for TCP logins, superuser
//! `postgres` with a random password, listening on 127.0.0.1 only on a free port; stopped
//! and removed on Drop.

#![allow(dead_code)]

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use silo::backends::AdminCredentials;
use silo::backends::postgres::PostgresBackend;
use tokio_postgres::{Client, NoTls};

const DEFAULT_BIN: &str = "/usr/lib/postgresql/15/bin";
const START_TIMEOUT: Duration = Duration::from_secs(30);

pub struct PgServer {
    pub port: u16,
    pub password: String,
    dir: tempfile::TempDir,
    child: Option<Child>,
    bin: PathBuf,
    uid: u32,
    gid: u32,
}

fn bin_dir() -> PathBuf {
    let dir = std::env::var_os("SILO_PG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_BIN));
    assert!(
        dir.join("initdb").is_file() && dir.join("postgres").is_file(),
        "PostgreSQL server binaries not found in {} (install postgresql-15, or set SILO_PG_BIN)",
        dir.display()
    );
    dir
}

/// Who runs the server: as root (CI), the `postgres` system user (initdb refuses root);
/// otherwise the current user.
fn postgres_user() -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let me = std::fs::metadata("/proc/self").expect("stat /proc/self");
    if me.uid() != 0 {
        return (me.uid(), me.gid());
    }
    let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    for line in passwd.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() > 3 && fields[0] == "postgres" {
            return (
                fields[2].parse().expect("postgres uid"),
                fields[3].parse().expect("postgres gid"),
            );
        }
    }
    panic!(
        "running as root and no `postgres` user in /etc/passwd (the postgresql-15 package creates it)"
    );
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .expect("local addr")
        .port()
}

impl PgServer {
    fn command(&self, name: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(name));
        cmd.uid(self.uid)
            .gid(self.gid)
            .current_dir(self.dir.path())
            .env("LC_ALL", "C")
            .env_remove("PGDATA")
            .env_remove("PGPORT")
            .env_remove("PGHOST");
        cmd
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub async fn start() -> PgServer {
        PgServer::start_with(|port, sock| {
            [
                "-p".to_string(),
                port.to_string(),
                "-k".to_string(),
                sock.display().to_string(),
            ]
            .into_iter()
            .chain(
                [
                    "listen_addresses=127.0.0.1",
                    "fsync=off",
                    "synchronous_commit=off",
                    "full_page_writes=off",
                    "shared_buffers=16MB",
                    "max_connections=40",
                ]
                .into_iter()
                .flat_map(|o| ["-c".to_string(), o.to_string()]),
            )
            .collect()
        })
        .await
    }

    /// A server started with the arguments a rendered StatefulSet gives the image
    /// (`postgres -c …`, see `silo::render::database::server_args`), changed only where a
    /// test must: `port=` gets a free port and `unix_socket_directories=` the temp socket dir.
    pub async fn start_rendered(args: &[String]) -> PgServer {
        assert_eq!(
            args.first().map(String::as_str),
            Some("postgres"),
            "{args:?}"
        );
        let args = args[1..].to_vec();
        PgServer::start_with(move |port, sock| {
            args.iter()
                .map(|a| {
                    if a.starts_with("port=") {
                        format!("port={port}")
                    } else if a.starts_with("unix_socket_directories=") {
                        format!("unix_socket_directories={}", sock.display())
                    } else {
                        a.clone()
                    }
                })
                .collect()
        })
        .await
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    /// initdb, then `postgres -D <data>` with `args(port, socket dir)`.
    async fn start_with(args: impl Fn(u16, &Path) -> Vec<String>) -> PgServer {
        let started = Instant::now();
        let bin = bin_dir();
        let (uid, gid) = postgres_user();
        let dir = tempfile::Builder::new()
            .prefix("silo-pg-")
            .tempdir()
            .expect("temp dir");
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown temp dir");
        let password: String = format!("admin-{:032x}", rand::random::<u128>());
        let mut server = PgServer {
            port: 0,
            password,
            dir,
            child: None,
            bin,
            uid,
            gid,
        };
        let pwfile = server.dir.path().join("pwfile");
        std::fs::write(&pwfile, &server.password).expect("write pwfile");
        std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid)).expect("chown pwfile");
        let sock = server.dir.path().join("sock");
        std::fs::create_dir(&sock).expect("socket dir");
        std::os::unix::fs::chown(&sock, Some(uid), Some(gid)).expect("chown socket dir");

        let out = server
            .command("initdb")
            .arg("-D")
            .arg(server.data())
            .args([
                "-U",
                "postgres",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );

        // A free port can be taken by another test between probing and binding: retry.
        for attempt in 0..3 {
            server.port = free_port();
            let log = std::fs::File::create(server.log_path()).expect("log file");
            let child = server
                .command("postgres")
                .arg("-D")
                .arg(server.data())
                .args(args(server.port, &sock))
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("spawn postgres");
            server.child = Some(child);
            match server.wait_ready().await {
                Ok(()) => {
                    eprintln!(
                        "PostgreSQL on 127.0.0.1:{} ready after {:?}",
                        server.port,
                        started.elapsed()
                    );
                    return server;
                }
                Err(why) if attempt < 2 && why.contains("already in use") => {
                    server.child = None;
                    continue;
                }
                Err(why) => panic!("PostgreSQL did not start: {why}\nlog:\n{}", server.log()),
            }
        }
        unreachable!()
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait().map_err(|e| e.to_string())?
            {
                return Err(format!("postgres exited with {status}: {}", self.log()));
            }
            if self.connect_admin("postgres").await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("not accepting connections after {START_TIMEOUT:?}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn admin(&self) -> AdminCredentials {
        AdminCredentials {
            username: "postgres".to_string(),
            password: self.password.clone(),
            database: None,
        }
    }

    pub fn backend(&self) -> PostgresBackend {
        PostgresBackend::new("127.0.0.1", self.port, self.admin())
    }

    /// Log in over TCP as `user`.
    pub async fn connect_as(
        &self,
        user: &str,
        password: &str,
        database: &str,
    ) -> Result<Client, tokio_postgres::Error> {
        let (client, connection) = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(self.port)
            .user(user)
            .password(password)
            .dbname(database)
            .connect_timeout(Duration::from_secs(5))
            .connect(NoTls)
            .await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    pub async fn connect_admin(&self, database: &str) -> Result<Client, tokio_postgres::Error> {
        self.connect_as("postgres", &self.password, database).await
    }

    pub async fn superuser(&self) -> Client {
        self.connect_admin("postgres")
            .await
            .expect("superuser connection")
    }
}

fn stop(bin: &Path, uid: u32, gid: u32, data: &Path, child: &mut Child) {
    let _ = Command::new(bin.join("pg_ctl"))
        .uid(uid)
        .gid(gid)
        .arg("stop")
        .arg("-D")
        .arg(data)
        .args(["-m", "immediate", "-t", "10", "-s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let data = self.data();
            stop(&self.bin, self.uid, self.gid, &data, &mut child);
            if std::thread::panicking() {
                let mut log = String::new();
                if let Ok(mut f) = std::fs::File::open(self.log_path()) {
                    let _ = f.read_to_string(&mut log);
                }
                eprintln!("--- PostgreSQL log ---\n{log}");
            }
        }
    }
}
