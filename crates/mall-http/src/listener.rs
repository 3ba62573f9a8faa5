//! A TCP listener that one client cannot exhaust.
//!
//! - At most `connections_max` connections are open; beyond that, new
//!   connections wait in the kernel's backlog instead of exhausting file
//!   descriptors.
//! - At most `connections_per_address_max` of them come from one client
//!   address (an IPv6 /64 counts as one); more are answered 429
//!   `too_many_connections` and closed at once. Trusted proxies are exempt
//!   (every connection through a balancer comes from the balancer).
//! - A request's headers must arrive within `header_read_timeout` from its
//!   first byte: slowloris connections are closed.
//! - A connection with no request in flight (new, or kept alive) is closed
//!   after `idle_timeout` without traffic.
//!
//! The timeouts cost the hot path nothing but a few atomics: a reaper task
//! of the listener looks at every connection four times a second and marks
//! the ones past their deadline; the stream ([`LimitedStream`]) then fails
//! its reads with `TimedOut`, which ends the connection (it is woken for
//! that). Whether a request is in flight comes from [`ConnState`], which
//! [`in_flight`] (called by the edge middleware) updates; a request being worked on
//! (a payment waiting for its provider) is never cut off by these timeouts.

use crate::client::{address_key, Cidr};
use rustc_hash::FxHashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Clone, Debug)]
pub struct ListenerConfig {
    /// Open connections, at most; more wait to be accepted.
    pub connections_max: usize,
    /// Open connections from one client address, at most.
    pub connections_per_address_max: usize,
    /// From a request's first byte to its last header byte.
    pub header_read_timeout: Duration,
    /// A keep-alive connection with no request in flight, at most this long
    /// without traffic.
    pub idle_timeout: Duration,
    /// Addresses not capped per address (trusted proxies).
    pub exempt: Vec<Cidr>,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            connections_max: 16_384,
            connections_per_address_max: 1_024,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            exempt: Vec::new(),
        }
    }
}

/// Counters of a listener, for `/metrics`.
#[derive(Default, Debug)]
pub struct ListenerStats {
    pub open: AtomicU64,
    pub refused_per_address: AtomicU64,
    pub timed_out: AtomicU64,
}

pub struct LimitedListener {
    inner: TcpListener,
    config: ListenerConfig,
    permits: Arc<Semaphore>,
    /// Open connections per client address key; entries at zero are removed.
    per_address: Arc<Mutex<FxHashMap<u64, u32>>>,
    stats: Arc<ListenerStats>,
    epoch: Instant,
    /// Every open connection, for the reaper (dead entries pruned by it).
    conns: Arc<Mutex<Vec<std::sync::Weak<ConnState>>>>,
    reaper: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for LimitedListener {
    fn drop(&mut self) {
        if let Some(r) = &self.reaper {
            r.abort();
        }
    }
}

/// How often the reaper looks for connections past their deadline.
const REAP_EVERY: Duration = Duration::from_millis(250);

/// Marks every connection past its deadline, and wakes it to close.
async fn reap(
    conns: Arc<Mutex<Vec<std::sync::Weak<ConnState>>>>,
    stats: Arc<ListenerStats>,
    header_read_ms: u64,
    idle_ms: u64,
) {
    let mut every = tokio::time::interval(REAP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let mut list = conns.lock().unwrap_or_else(|p| p.into_inner());
        list.retain(|weak| {
            let Some(conn) = weak.upgrade() else {
                return false;
            };
            if conn.past_deadline(header_read_ms, idle_ms) {
                conn.expired.store(true, Ordering::Release);
                stats.timed_out.fetch_add(1, Ordering::Relaxed);
                if let Some(w) = conn.waker.lock().unwrap_or_else(|p| p.into_inner()).take() {
                    w.wake();
                }
                return false;
            }
            true
        });
    }
}

impl LimitedListener {
    pub fn new(inner: TcpListener, config: ListenerConfig) -> LimitedListener {
        assert!(config.connections_per_address_max >= 1);
        LimitedListener {
            inner,
            permits: Arc::new(Semaphore::new(config.connections_max.max(1))),
            config,
            per_address: Arc::new(Mutex::new(FxHashMap::default())),
            stats: Arc::new(ListenerStats::default()),
            epoch: Instant::now(),
            conns: Arc::new(Mutex::new(Vec::new())),
            reaper: None,
        }
    }

    pub fn stats(&self) -> Arc<ListenerStats> {
        self.stats.clone()
    }

    /// Takes a place for `addr` under the per-address cap, if any is left.
    fn take_slot(&self, addr: SocketAddr) -> Result<Option<AddressSlot>, ()> {
        if self.config.exempt.iter().any(|c| c.contains(addr.ip())) {
            return Ok(None);
        }
        let key = address_key(addr.ip());
        let mut map = self.per_address.lock().unwrap_or_else(|p| p.into_inner());
        let open = map.entry(key).or_insert(0);
        if *open as usize >= self.config.connections_per_address_max {
            return Err(());
        }
        *open += 1;
        Ok(Some(AddressSlot {
            map: self.per_address.clone(),
            key,
        }))
    }
}

/// The answer to a connection over its address's cap, written once without
/// waiting (a client that does not read it just sees the close).
const TOO_MANY: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n\
connection: close\r\nretry-after: 1\r\ncontent-length: 97\r\n\r\n\
{\"error\":{\"code\":\"too_many_connections\",\"message\":\"too many open connections from your address\"}}";

/// A connection's place under its address's cap, released when it closes.
struct AddressSlot {
    map: Arc<Mutex<FxHashMap<u64, u32>>>,
    key: u64,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// What the stream and the request middleware share about one connection.
#[derive(Debug)]
pub struct ConnState {
    epoch: Instant,
    /// Requests being worked on (handler running).
    in_flight: AtomicU32,
    /// Last byte read or written, ms since `epoch`.
    last_active_ms: AtomicU64,
    /// First byte of a request whose headers are not complete, ms since
    /// `epoch` (+1, so 0 means none).
    request_started_ms: AtomicU64,
    /// Set by the reaper: past its deadline; reads fail from now on.
    expired: std::sync::atomic::AtomicBool,
    /// Who to wake when the reaper expires it (the last pending read).
    waker: Mutex<Option<std::task::Waker>>,
}

impl ConnState {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// A request reached the handlers.
    fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.request_started_ms.store(0, Ordering::Release);
    }

    /// Past its header-read or idle deadline, with no request in flight?
    fn past_deadline(&self, header_read_ms: u64, idle_ms: u64) -> bool {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return false;
        }
        let started = self.request_started_ms.load(Ordering::Acquire);
        let deadline_ms = if started != 0 {
            started - 1 + header_read_ms
        } else {
            self.last_active_ms.load(Ordering::Acquire) + idle_ms
        };
        self.now_ms() >= deadline_ms
    }

    /// Its handler finished (or was dropped).
    fn end(&self) {
        self.last_active_ms.store(self.now_ms(), Ordering::Release);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection, its places under the limits, and its deadlines.
pub struct LimitedStream {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    _slot: Option<AddressSlot>,
    conn: Arc<ConnState>,
    stats: Arc<ListenerStats>,
}

impl Drop for LimitedStream {
    fn drop(&mut self) {
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl axum::serve::Listener for LimitedListener {
    type Io = LimitedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        if self.reaper.is_none() {
            self.reaper = Some(tokio::spawn(reap(
                self.conns.clone(),
                self.stats.clone(),
                self.config.header_read_timeout.as_millis() as u64,
                self.config.idle_timeout.as_millis() as u64,
            )));
        }
        loop {
            let permit = self
                .permits
                .clone()
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let (stream, addr) = match self.inner.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors or a connection reset before accept:
                    // back off briefly rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let Ok(slot) = self.take_slot(addr) else {
                self.stats
                    .refused_per_address
                    .fetch_add(1, Ordering::Relaxed);
                let _ = stream.try_write(TOO_MANY);
                continue; // dropped: closed, and its permit is free again
            };
            let _ = stream.set_nodelay(true);
            let now_ms = self.epoch.elapsed().as_millis() as u64;
            let conn = Arc::new(ConnState {
                epoch: self.epoch,
                in_flight: AtomicU32::new(0),
                last_active_ms: AtomicU64::new(now_ms),
                // Until its first byte, a new connection is idle (apps
                // open theirs before the sale); then the header clock runs.
                request_started_ms: AtomicU64::new(0),
                expired: std::sync::atomic::AtomicBool::new(false),
                waker: Mutex::new(None),
            });
            self.conns
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Arc::downgrade(&conn));
            self.stats.open.fetch_add(1, Ordering::Relaxed);
            return (
                LimitedStream {
                    stream,
                    _permit: permit,
                    _slot: slot,
                    conn,
                    stats: self.stats.clone(),
                },
                addr,
            );
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

impl LimitedStream {
    /// The read side has nothing: fail if the reaper expired the
    /// connection, else leave a waker for it.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let timed_out = || {
            Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "connection timed out",
            )))
        };
        if self.conn.expired.load(Ordering::Acquire) {
            return timed_out();
        }
        {
            let mut waker = self.conn.waker.lock().unwrap_or_else(|p| p.into_inner());
            if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *waker = Some(cx.waker().clone());
            }
        }
        // Expired between the look and leaving the waker: do not sleep.
        if self.conn.expired.load(Ordering::Acquire) {
            return timed_out();
        }
        Poll::Pending
    }
}

impl AsyncRead for LimitedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    let conn = &self.conn;
                    let now = conn.now_ms();
                    conn.last_active_ms.store(now, Ordering::Release);
                    if conn.in_flight.load(Ordering::Acquire) == 0 {
                        // The first byte of a request starts its header clock.
                        let _ = conn.request_started_ms.compare_exchange(
                            0,
                            now + 1,
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        );
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => self.poll_deadline(cx),
            other => other,
        }
    }
}

impl LimitedStream {
    fn wrote(&self, result: &Poll<io::Result<usize>>) {
        if matches!(result, Poll::Ready(Ok(n)) if *n > 0) {
            self.conn
                .last_active_ms
                .store(self.conn.now_ms(), Ordering::Release);
        }
    }
}

impl AsyncWrite for LimitedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.wrote(&r);
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.wrote(&r);
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The peer's address and its connection's state, as connection info for
/// [`LimitedListener`]'s connections (serve with
/// `into_make_service_with_connect_info::<Peer>()`).
#[derive(Clone, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    pub conn: Option<Arc<ConnState>>,
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, LimitedListener>>
    for Peer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, LimitedListener>) -> Self {
        Peer {
            addr: *stream.remote_addr(),
            conn: Some(stream.io().conn.clone()),
        }
    }
}

/// Marks a request in flight on its connection while the returned guard
/// lives (the handler runs), so the connection's deadlines never cut it off.
pub fn in_flight(request: &axum::extract::Request) -> Option<InFlight> {
    request
        .extensions()
        .get::<axum::extract::ConnectInfo<Peer>>()
        .and_then(|c| c.0.conn.clone())
        .map(|c| {
            c.begin();
            InFlight(c)
        })
}

/// A request in flight on its connection (see [`in_flight`]).
pub struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.end();
    }
}
