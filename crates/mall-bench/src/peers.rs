//! The peers mall is measured against, as real servers: throwaway Redis and
//! PostgreSQL started on loopback (installed with apt when missing), or
//! ones given by URL. Each throwaway server lives in a temp directory and is
//! stopped and removed on drop.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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

impl From<mall_postgres::server::ServerError> for PeerError {
    fn from(e: mall_postgres::server::ServerError) -> PeerError {
        use mall_postgres::server::ServerError;
        match e {
            ServerError::Setup(s) => PeerError::Setup(s),
            ServerError::Io(e) => PeerError::Io(e),
            ServerError::Postgres(s) => PeerError::Postgres(s),
        }
    }
}

use mall_postgres::server::{ensure_installed, free_port, temp_dir, wait_for_port};

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

/// The throwaway PostgreSQL lives with the PostgreSQL store, whose tests
/// use it too.
pub use mall_postgres::server::PostgresServer;

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

    /// Writes every command at once, then reads their replies in order
    /// (an error reply is that command's own result).
    pub async fn pipeline(
        &mut self,
        commands: &[&[Vec<u8>]],
    ) -> Result<Vec<Result<RespValue, PeerError>>, PeerError> {
        self.buf.clear();
        for args in commands {
            let _ = write!(self.buf, "*{}\r\n", args.len());
            for a in args.iter() {
                let _ = write!(self.buf, "${}\r\n", a.len());
                self.buf.extend_from_slice(a);
                self.buf.extend_from_slice(b"\r\n");
            }
        }
        self.stream.get_mut().write_all(&self.buf).await?;
        let mut replies = Vec::with_capacity(commands.len());
        for _ in commands {
            match self.read().await {
                Err(PeerError::Redis(e)) => replies.push(Err(PeerError::Redis(e))),
                Err(e) => return Err(e),
                Ok(v) => replies.push(Ok(v)),
            }
        }
        Ok(replies)
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
