//! A small connection pool per server. Shards share it: 64 shards on one
//! server cost at most `size` connections, not 64, and a commit leases a
//! connection only for the length of its transaction.
//!
//! Each pooled connection keeps the statements it prepared, so after its
//! first use a commit sends no Parse: one round trip per statement.

use crate::Error;
use mall_engine::StoreError;
use postgres::{Client, NoTls, Statement};
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long a caller waits for a free connection before it answers
/// `Unavailable` (every connection busy for this long means the server is
/// stuck, not merely busy).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a new connection may take, unless the connection string says.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Keepalive and user timeout, so a commit to a server that vanished
/// (power cut, partition) fails in seconds instead of hanging on TCP's
/// default of hours.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);

/// One pooled connection and the statements prepared on it.
pub(crate) struct Conn {
    pub(crate) client: Client,
    statements: HashMap<&'static str, Statement>,
}

impl Conn {
    /// The statement for `sql`, prepared on this connection once.
    pub(crate) fn prepare(&mut self, sql: &'static str) -> Result<Statement, Error> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql)?;
        self.statements.insert(sql, s.clone());
        Ok(s)
    }
}

struct State {
    idle: Vec<Conn>,
    /// Connections open, idle or leased.
    open: usize,
    /// Connections this pool may open, at most.
    size: usize,
}

/// The connections to one server.
pub(crate) struct Pool {
    pub(crate) config: postgres::Config,
    /// `user@host:port/db`: for logs and errors, never with the password.
    pub(crate) label: String,
    state: Mutex<State>,
    freed: Condvar,
}

impl Pool {
    pub(crate) fn new(mut config: postgres::Config, label: String, size: usize) -> Pool {
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(TCP_USER_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("mall");
        }
        config.keepalives_idle(KEEPALIVE_IDLE);
        Pool {
            config,
            label,
            state: Mutex::new(State {
                idle: Vec::new(),
                open: 0,
                size: size.max(1),
            }),
            freed: Condvar::new(),
        }
    }

    /// Gives `n` of this pool's connections to a new pool on the same
    /// server (this one keeps the rest); itself when it cannot spare any
    /// and keep one.
    pub(crate) fn split(self: &Arc<Self>, n: usize) -> Arc<Pool> {
        let mut me = self.lock();
        if n == 0 || n >= me.size {
            return self.clone();
        }
        me.size -= n;
        drop(me);
        Arc::new(Pool::new(self.config.clone(), self.label.clone(), n))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `body` on a pooled connection. A connection that failed as a
    /// connection (not a refused statement) is closed, and so are the idle
    /// ones: they most likely lost the same server, and the next caller
    /// should connect afresh rather than find out by failing too.
    pub(crate) fn with<T: Send>(
        &self,
        body: impl FnOnce(&mut Conn) -> Result<T, Error> + Send,
    ) -> Result<T, Error> {
        crate::off_runtime(|| self.with_here(body))
    }

    /// [`Pool::with`] for a body that only reads: when it fails for a lost
    /// connection (an idle one that died with its server, say), it runs
    /// once more on a fresh connection, as nothing can have been written.
    pub(crate) fn read<T: Send>(
        &self,
        body: impl Fn(&mut Conn) -> Result<T, Error> + Send + Sync,
    ) -> Result<T, Error> {
        crate::off_runtime(|| match self.with_here(&body) {
            Err(e) if e.is_connection() => self.with_here(&body),
            done => done,
        })
    }

    fn with_here<T>(&self, body: impl FnOnce(&mut Conn) -> Result<T, Error>) -> Result<T, Error> {
        let mut lease = Lease {
            pool: self,
            conn: Some(self.take()?),
            broken: true, // until body returns: a panic must not pool it
        };
        let conn = lease.conn.as_mut().expect("leased");
        let result = body(conn);
        lease.broken = match &result {
            Err(e) if e.is_connection() => {
                tracing::warn!(server = %self.label, error = %e, "connection lost; reconnecting on next use");
                true
            }
            _ => conn.client.is_closed(),
        };
        result
    }

    fn take(&self) -> Result<Conn, Error> {
        let deadline = Instant::now() + ACQUIRE_TIMEOUT;
        let mut state = self.lock();
        loop {
            if let Some(conn) = state.idle.pop() {
                if !conn.client.is_closed() {
                    return Ok(conn);
                }
                state.open -= 1;
                continue;
            }
            if state.open < state.size {
                state.open += 1;
                drop(state);
                return self.connect().inspect_err(|_| {
                    self.lock().open -= 1;
                    self.freed.notify_one();
                });
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Store(StoreError::Unavailable(format!(
                    "{}: all {} connections busy for {}s",
                    self.label,
                    state.size,
                    ACQUIRE_TIMEOUT.as_secs()
                ))));
            }
            state = self
                .freed
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn connect(&self) -> Result<Conn, Error> {
        // Loopback or a trusted network only: see the crate docs on TLS.
        let mut client = self.config.connect(NoTls)?;
        // Every statement here is prepared once per connection and run
        // thousands of times with arrays or keys as parameters: plan it
        // once, not at every run (PostgreSQL otherwise re-plans the batch
        // statement each time, which costs more CPU than writing it).
        client.batch_execute("SET plan_cache_mode = force_generic_plan")?;
        Ok(Conn {
            client,
            statements: HashMap::new(),
        })
    }

    fn give_back(&self, conn: Conn, broken: bool) {
        let mut state = self.lock();
        let stale = if broken {
            state.open -= 1 + state.idle.len();
            let mut stale = std::mem::take(&mut state.idle);
            stale.push(conn);
            stale
        } else {
            state.idle.push(conn);
            Vec::new()
        };
        drop(state);
        self.freed.notify_all();
        drop(stale); // closing sockets, outside the lock
    }
}

/// A connection out of the pool; goes back (or is closed) when dropped,
/// also when the body panicked.
struct Lease<'a> {
    pool: &'a Pool,
    conn: Option<Conn>,
    broken: bool,
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Closing a connection blocks on the client's own runtime.
        let idle = std::mem::take(&mut self.lock().idle);
        crate::off_runtime(move || drop(idle));
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.give_back(conn, self.broken);
        }
    }
}
