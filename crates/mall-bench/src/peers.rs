//! The peers mall is measured against, as real servers: throwaway Redis and
//! PostgreSQL started on loopback (installed with apt when missing), or
//! ones given by URL. Each throwaway server lives in a temp directory and is
//! stopped and removed on drop.

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("{0}")]
    Setup(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("redis: {0}")]
    Redis(String),
    #[error("postgres: {0}")]
    Postgres(String),
}

impl From<tokio_postgres::Error> for PeerError {
    fn from(e: tokio_postgres::Error) -> PeerError {
        // The server's own message says what went wrong; the Display alone is "db error".
        match e.as_db_error() {
            Some(db) => PeerError::Postgres(format!("{}: {}", db.code().code(), db.message())),
            None => PeerError::Postgres(e.to_string()),
        }
    }
}

fn free_port() -> Result<u16, PeerError> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn temp_dir(name: &str) -> Result<PathBuf, PeerError> {
    let dir = std::env::temp_dir().join(format!(
        "mall-{name}-{}-{}",
        std::process::id(),
        free_port()?
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn is_root() -> bool {
    // Effective uid from /proc; root needs to run PostgreSQL as another user.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// Installs Debian packages unless `installed()` says they are there;
/// refreshes the package lists once if the first try fails.
fn ensure_installed(installed: impl Fn() -> bool, packages: &[&str]) -> Result<(), PeerError> {
    if installed() {
        return Ok(());
    }
    eprintln!("installing {} with apt-get...", packages.join(" "));
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let install = |apt: &dyn Fn(&[&str]) -> bool| {
        let mut args = vec!["install", "-y", "-q"];
        args.extend_from_slice(packages);
        apt(&args) && installed()
    };
    if install(&apt) || (apt(&["update", "-q"]) && install(&apt)) {
        Ok(())
    } else {
        Err(PeerError::Setup(format!(
            "could not install {}",
            packages.join(" ")
        )))
    }
}

fn wait_for_port(port: u16, what: &str) -> Result<(), PeerError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(PeerError::Setup(format!(
        "{what} did not start on port {port}"
    )))
}

const REDIS_SERVER: &str = "/usr/bin/redis-server";

/// A Redis server of our own: AOF on, `appendfsync always` (durable like mall).
pub struct RedisServer {
    child: Child,
    dir: PathBuf,
    pub port: u16,
}

impl RedisServer {
    pub fn start() -> Result<RedisServer, PeerError> {
        ensure_installed(|| Path::new(REDIS_SERVER).exists(), &["redis-server"])?;
        let port = free_port()?;
        let dir = temp_dir("redis")?;
        let spawned = Command::new(REDIS_SERVER)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
            ])
            .args([
                "--appendfsync",
                "always",
                "--protected-mode",
                "yes",
                "--daemonize",
                "no",
                "--dir",
            ])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e.into());
            }
        };
        let server = RedisServer { child, dir, port };
        wait_for_port(port, "redis-server")?;
        Ok(server)
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A PostgreSQL cluster of our own, with durable commits (`fsync=on`,
/// `synchronous_commit=on`, the defaults).
pub struct PostgresServer {
    bin: PathBuf,
    dir: PathBuf,
    pub port: u16,
    as_postgres: bool,
}

fn postgres_bin() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .collect();
    versions.sort();
    versions
        .into_iter()
        .rev()
        .find(|b| b.join("initdb").exists())
}

impl PostgresServer {
    pub fn start() -> Result<PostgresServer, PeerError> {
        ensure_installed(|| postgres_bin().is_some(), &["postgresql"])?;
        let bin =
            postgres_bin().ok_or_else(|| PeerError::Setup("PostgreSQL is not installed".into()))?;
        let port = free_port()?;
        let dir = temp_dir("postgres")?;
        let as_postgres = is_root();
        // The guard first: whatever fails below, the directory goes.
        let server = PostgresServer {
            bin,
            dir,
            port,
            as_postgres,
        };
        if as_postgres {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&server.dir)
                .status()?;
            if !status.success() {
                return Err(PeerError::Setup(
                    "chown of the PostgreSQL directory failed".into(),
                ));
            }
        }
        let data = server.dir.join("data");
        server.run(&[
            "initdb",
            "-D",
            &data.to_string_lossy(),
            "-A",
            "trust",
            "-U",
            "mall",
            "--no-sync",
        ])?;
        let opts = format!("-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=on -c synchronous_commit=on", server.dir.display());
        server.run(&[
            "pg_ctl",
            "-D",
            &data.to_string_lossy(),
            "-o",
            &opts,
            "-l",
            &server.dir.join("log").to_string_lossy(),
            "-w",
            "start",
        ])?;
        wait_for_port(port, "postgres")?;
        Ok(server)
    }

    fn run(&self, args: &[&str]) -> Result<(), PeerError> {
        let program = self.bin.join(args[0]);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        let out = cmd.args(&args[1..]).current_dir(&self.dir).output()?;
        if !out.status.success() {
            return Err(PeerError::Setup(format!(
                "{}: {}",
                args[0],
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    pub fn url(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=mall dbname=postgres",
            self.port
        )
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let _ = self.run(&[
            "pg_ctl",
            "-D",
            &data.to_string_lossy(),
            "-m",
            "immediate",
            "-w",
            "stop",
        ]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Largest bulk reply the RESP client accepts.
const BULK_MAX: i64 = 64 * 1024 * 1024;

/// The PostgreSQL to use: the one at `url`, or a throwaway one started now
/// (kept alive by the returned guard).
pub fn postgres_target(url: Option<&str>) -> Result<(Option<PostgresServer>, String), PeerError> {
    match url {
        Some(url) => Ok((None, url.to_string())),
        None => {
            let server = PostgresServer::start()?;
            let url = server.url();
            Ok((Some(server), url))
        }
    }
}

/// One PostgreSQL session, its connection driven in the background.
pub async fn pg_connect(url: &str) -> Result<tokio_postgres::Client, PeerError> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// A minimal RESP2 client: one connection, one command at a time.
pub struct Resp {
    stream: BufReader<TcpStream>,
    buf: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RespValue {
    Simple(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<RespValue>),
}

impl Resp {
    pub async fn connect(addr: &str) -> Result<Resp, PeerError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Resp {
            stream: BufReader::new(stream),
            buf: Vec::with_capacity(256),
        })
    }

    pub async fn call(&mut self, args: &[&[u8]]) -> Result<RespValue, PeerError> {
        self.buf.clear();
        let _ = write!(self.buf, "*{}\r\n", args.len());
        for a in args {
            let _ = write!(self.buf, "${}\r\n", a.len());
            self.buf.extend_from_slice(a);
            self.buf.extend_from_slice(b"\r\n");
        }
        self.stream.get_mut().write_all(&self.buf).await?;
        self.read().await
    }

    async fn read(&mut self) -> Result<RespValue, PeerError> {
        let mut line = String::new();
        self.stream.read_line(&mut line).await?;
        let line = line.trim_end();
        let (kind, rest) = line.split_at(line.len().min(1));
        let int = |s: &str| {
            s.parse::<i64>()
                .map_err(|_| PeerError::Redis(format!("bad reply {line:?}")))
        };
        match kind {
            "+" => Ok(RespValue::Simple(rest.into())),
            "-" => Err(PeerError::Redis(rest.into())),
            ":" => Ok(RespValue::Int(int(rest)?)),
            "$" => {
                let n = int(rest)?;
                if n < 0 {
                    return Ok(RespValue::Bulk(None));
                }
                if n > BULK_MAX {
                    return Err(PeerError::Redis(format!(
                        "a {n}-byte reply is more than this client takes"
                    )));
                }
                let mut data = vec![0; n as usize + 2];
                self.stream.read_exact(&mut data).await?;
                data.truncate(n as usize);
                Ok(RespValue::Bulk(Some(data)))
            }
            "*" => {
                let n = int(rest)?;
                let mut items = Vec::new();
                for _ in 0..n.max(0) {
                    items.push(Box::pin(self.read()).await?);
                }
                Ok(RespValue::Array(items))
            }
            _ => Err(PeerError::Redis(format!("bad reply {line:?}"))),
        }
    }
}
