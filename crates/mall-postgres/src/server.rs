//! A throwaway PostgreSQL cluster for tests and benchmarks: `initdb` in a
//! temp directory, started on a free loopback port (as the `postgres` user
//! when running as root, which PostgreSQL refuses to run as), stopped and
//! removed on drop. Installed with apt when missing.
//!
//! Tests share one per test binary and take a database each
//! ([`PostgresServer::create_database`]): a cluster costs about a second to
//! make, a database a few milliseconds.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Why the throwaway server could not be made or driven.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{0}")]
    Setup(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("postgres: {0}")]
    Postgres(String),
}

impl From<postgres::Error> for ServerError {
    fn from(e: postgres::Error) -> ServerError {
        // The server's own message says what went wrong; the Display alone is "db error".
        match e.as_db_error() {
            Some(db) => ServerError::Postgres(format!("{}: {}", db.code().code(), db.message())),
            None => ServerError::Postgres(e.to_string()),
        }
    }
}

/// A free port on loopback (free when asked; a throwaway server takes it
/// right after).
pub fn free_port() -> Result<u16, ServerError> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A new directory for a throwaway server's files.
pub fn temp_dir(name: &str) -> Result<PathBuf, ServerError> {
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
pub fn ensure_installed(
    installed: impl Fn() -> bool,
    packages: &[&str],
) -> Result<(), ServerError> {
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
    let install = || {
        let mut args = vec!["install", "-y", "-q"];
        args.extend_from_slice(packages);
        apt(&args) && installed()
    };
    if install() || (apt(&["update", "-q"]) && install()) {
        Ok(())
    } else {
        Err(ServerError::Setup(format!(
            "{} is not installed and apt-get could not install it",
            packages.join(" ")
        )))
    }
}

/// Waits (30 s at most) until something listens on loopback `port`.
pub fn wait_for_port(port: u16, what: &str) -> Result<(), ServerError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(ServerError::Setup(format!(
        "{what} did not start on port {port}"
    )))
}

/// The newest installed PostgreSQL's `bin` directory.
pub fn postgres_bin() -> Option<PathBuf> {
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

/// A PostgreSQL cluster of our own, with durable commits (`fsync=on`,
/// `synchronous_commit=on`, the defaults). Its superuser is `mall`, trusted
/// on loopback without a password.
pub struct PostgresServer {
    bin: PathBuf,
    dir: PathBuf,
    pub port: u16,
    as_postgres: bool,
}

impl PostgresServer {
    pub fn start() -> Result<PostgresServer, ServerError> {
        ensure_installed(|| postgres_bin().is_some(), &["postgresql"])?;
        let bin = postgres_bin()
            .ok_or_else(|| ServerError::Setup("PostgreSQL is not installed".into()))?;
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
                return Err(ServerError::Setup(
                    "chown of the PostgreSQL directory failed".into(),
                ));
            }
        }
        server.run(&[
            "initdb",
            "-D",
            &server.data().to_string_lossy(),
            "-A",
            "trust",
            "-U",
            "mall",
            "--no-sync",
        ])?;
        server.start_again()?;
        Ok(server)
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn run(&self, args: &[&str]) -> Result<(), ServerError> {
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
            return Err(ServerError::Setup(format!(
                "{}: {}",
                args[0],
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    /// Stops the server the way a crash would (`pg_ctl stop -m immediate`:
    /// no shutdown checkpoint, connections cut); the next start recovers
    /// from the WAL.
    pub fn stop_immediate(&self) -> Result<(), ServerError> {
        self.run(&[
            "pg_ctl",
            "-D",
            &self.data().to_string_lossy(),
            "-m",
            "immediate",
            "-w",
            "stop",
        ])
    }

    /// Starts the server (again, after [`stop_immediate`](Self::stop_immediate)):
    /// same port, same data.
    pub fn start_again(&self) -> Result<(), ServerError> {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=on -c synchronous_commit=on",
            self.port,
            self.dir.display()
        );
        self.run(&[
            "pg_ctl",
            "-D",
            &self.data().to_string_lossy(),
            "-o",
            &opts,
            "-l",
            &self.dir.join("log").to_string_lossy(),
            "-w",
            "start",
        ])?;
        wait_for_port(self.port, "postgres")
    }

    /// A streaming standby of this server, in sync: made from a base
    /// backup, started on its own port, and named in this server's
    /// `synchronous_standby_names`, so a commit here returns only once the
    /// standby has it too (nothing acknowledged is lost when it takes over).
    pub fn start_standby(&self) -> Result<PostgresServer, ServerError> {
        let standby = PostgresServer {
            bin: self.bin.clone(),
            dir: temp_dir("postgres-standby")?,
            port: free_port()?,
            as_postgres: self.as_postgres,
        };
        if standby.as_postgres {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&standby.dir)
                .status()?;
            if !status.success() {
                return Err(ServerError::Setup(
                    "chown of the standby's directory failed".into(),
                ));
            }
        }
        standby.run(&[
            "pg_basebackup",
            "-D",
            &standby.data().to_string_lossy(),
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "mall",
            "-X",
            "stream",
            "-R",
            "-c",
            "fast",
        ])?;
        // The standby names itself in its connection to the primary.
        let auto = standby.data().join("postgresql.auto.conf");
        let text = std::fs::read_to_string(&auto)?;
        let text = text.replace(
            "primary_conninfo = '",
            "primary_conninfo = 'application_name=standby ",
        );
        std::fs::write(&auto, text)?;
        standby.start_again()?;
        let mut client = postgres::Client::connect(&self.url(), postgres::NoTls)?;
        client.batch_execute("ALTER SYSTEM SET synchronous_standby_names = 'standby'")?;
        client.batch_execute("SELECT pg_reload_conf()")?;
        // Until the standby streams in sync, commits here would wait.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let row = client.query_opt(
                "SELECT 1 FROM pg_stat_replication WHERE application_name = 'standby' AND sync_state = 'sync'",
                &[],
            )?;
            if row.is_some() {
                return Ok(standby);
            }
            if Instant::now() > deadline {
                return Err(ServerError::Setup(
                    "the standby did not become synchronous".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Promotes a standby to primary (`pg_ctl promote`), waiting until it
    /// takes writes.
    pub fn promote(&self) -> Result<(), ServerError> {
        self.run(&[
            "pg_ctl",
            "-D",
            &self.data().to_string_lossy(),
            "-w",
            "promote",
        ])
    }

    /// The connection string of the `postgres` database.
    pub fn url(&self) -> String {
        self.url_of("postgres")
    }

    /// The connection string of database `db` on this server.
    pub fn url_of(&self, db: &str) -> String {
        format!("host=127.0.0.1 port={} user=mall dbname={db}", self.port)
    }

    /// Makes an empty database `name` (dropping one of that name first) and
    /// returns its connection string: one server, isolated tests.
    pub fn create_database(&self, name: &str) -> Result<String, ServerError> {
        crate::scratch::check_name(name).map_err(ServerError::Setup)?;
        crate::scratch::recreate(&self.url(), name)?;
        Ok(self.url_of(name))
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        let _ = self.stop_immediate();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The runner of test binaries that share one PostgreSQL (`harness =
/// false`: a server in a `static` would never be stopped): picks the tests
/// the command line's filter names, runs each catching its panic, prints
/// a verdict and time per test, and ends the process with the result.
pub struct Runner {
    started: Instant,
    failed: Vec<String>,
}

impl Runner {
    /// The tests whose name contains the command line's filter (all
    /// without one), and a runner.
    pub fn choose<'a, T>(tests: &'a [(&'static str, T)]) -> (Vec<(&'static str, &'a T)>, Runner) {
        let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
        let chosen = tests
            .iter()
            .filter(|(name, _)| filter.as_deref().is_none_or(|f| name.contains(f)))
            .map(|(name, test)| (*name, test))
            .collect();
        let runner = Runner {
            started: Instant::now(),
            failed: Vec::new(),
        };
        (chosen, runner)
    }

    /// Runs one test; did it pass?
    pub fn run(&mut self, label: &str, test: impl FnOnce()) -> bool {
        let started = Instant::now();
        let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(test)).is_ok();
        println!(
            "test {label} ... {} ({} ms)",
            if ok { "ok" } else { "FAILED" },
            started.elapsed().as_millis()
        );
        if !ok {
            self.failed.push(label.to_string());
        }
        ok
    }

    /// Prints the result; a failure ends the process with status 1 (drop
    /// the servers first: exit runs no destructor).
    pub fn finish(self) {
        if self.failed.is_empty() {
            println!(
                "test result: ok ({} ms in all)",
                self.started.elapsed().as_millis()
            );
        } else {
            println!("test result: FAILED: {}", self.failed.join(", "));
            std::process::exit(1);
        }
    }
}
