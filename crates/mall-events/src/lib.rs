//! The event stream: every view, favourite, add-to-cart, order, payment,
//! cancel, refund and refusal as a typed, timestamped [`Event`], appended
//! to an event log and folded into live aggregates for the dashboard.
//!
//! Recording is never on a request's critical path: [`EventLog::record`]
//! pushes into an in-memory buffer (one short lock) and returns; a writer
//! thread drains the buffer a few times a second, appends the events to
//! segment files (JSON lines, rotated by size) and folds them into the
//! [`live::Live`] aggregates.
//!
//! Bounded memory: views (the bulk of the traffic, and the least precious)
//! have a bounded buffer; when it is full a view is dropped and counted
//! ([`EventLog::dropped_views`]). Orders, payments and the rest are never
//! dropped: their number is bounded by the stock on sale and the payments
//! made, and the writer drains them first.
//!
//! The log is for analytics, not the system of record (the shards and the
//! ledger are): a crash loses at most the events of the last drain
//! interval that were not yet written.

pub mod chart;
pub mod live;
pub mod night;

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    View,
    Favorite,
    Cart,
    /// An accepted order (a snap-up that won).
    Order,
    /// A payment that succeeded.
    Pay,
    Cancel,
    Refund,
    /// A snap-up refused (`reason` says why).
    Refusal,
    /// A pre-sale deposit (history only).
    Deposit,
}

impl Kind {
    pub const ALL: [Kind; 9] = [
        Kind::View,
        Kind::Favorite,
        Kind::Cart,
        Kind::Order,
        Kind::Pay,
        Kind::Cancel,
        Kind::Refund,
        Kind::Refusal,
        Kind::Deposit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::View => "view",
            Kind::Favorite => "favorite",
            Kind::Cart => "cart",
            Kind::Order => "order",
            Kind::Pay => "pay",
            Kind::Cancel => "cancel",
            Kind::Refund => "refund",
            Kind::Refusal => "refusal",
            Kind::Deposit => "deposit",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// May this event be dropped when the buffer is full?
    pub fn droppable(self) -> bool {
        self == Kind::View
    }
}

/// One event. On disk, one JSON object per line with short keys (serde
/// renames: `{"t","k","u","s","o","a","q","m","c","r","l"}`, absent when
/// empty), so a night's log stays small; in code, real names.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// When, ms since the epoch.
    #[serde(rename = "t")]
    pub at_ms: i64,
    #[serde(rename = "k")]
    pub kind: Kind,
    /// The shopper (0: anonymous).
    #[serde(rename = "u", default)]
    pub user: u64,
    /// The item.
    #[serde(rename = "s", default)]
    pub sku: u64,
    /// The order, if any.
    #[serde(rename = "o", default, skip_serializing_if = "is_zero")]
    pub order: u64,
    /// Money, fen (orders, payments, refunds).
    #[serde(rename = "a", default, skip_serializing_if = "is_zero_i")]
    pub amount_fen: i64,
    /// Quantity.
    #[serde(rename = "q", default = "one", skip_serializing_if = "is_one")]
    pub quantity: u32,
    /// Cash on delivery (orders).
    #[serde(rename = "m", default, skip_serializing_if = "std::ops::Not::not")]
    pub cod: bool,
    /// Payment channel (payments, refunds), or "wallet".
    #[serde(rename = "c", default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// Refusal reason (its stable code).
    #[serde(rename = "r", default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Server latency of the request, µs.
    #[serde(rename = "l", default, skip_serializing_if = "is_zero_u32")]
    pub latency_us: u32,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}
fn is_zero_i(v: &i64) -> bool {
    *v == 0
}
fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}
fn one() -> u32 {
    1
}
fn is_one(v: &u32) -> bool {
    *v == 1
}

impl Event {
    pub fn new(at_ms: i64, kind: Kind) -> Event {
        Event {
            at_ms,
            kind,
            user: 0,
            sku: 0,
            order: 0,
            amount_fen: 0,
            quantity: 1,
            cod: false,
            channel: None,
            reason: None,
            latency_us: 0,
        }
    }
}

#[derive(Clone, Debug)]
pub struct LogConfig {
    /// Where segment files go; `None`: aggregates only, nothing written.
    pub dir: Option<PathBuf>,
    /// A segment is closed and a new one begun past this size.
    pub segment_bytes: u64,
    /// Views buffered at most between drains; more are dropped and counted.
    pub views_buffered_max: usize,
    /// How often the writer drains the buffer.
    pub drain_every: Duration,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            dir: None,
            segment_bytes: 64 << 20,
            views_buffered_max: 100_000,
            drain_every: Duration::from_millis(200),
        }
    }
}

#[derive(Default)]
struct Buffer {
    views: Vec<Event>,
    others: Vec<Event>,
}

struct Shared {
    buffer: Mutex<Buffer>,
    wake: Condvar,
    stop: AtomicBool,
    dropped_views: AtomicU64,
    recorded: AtomicU64,
    written: AtomicU64,
    write_errors: AtomicU64,
    live: live::Live,
    config: LogConfig,
}

/// The event log: cheap to clone; the writer thread stops when the last
/// clone is dropped (after a final drain).
#[derive(Clone)]
pub struct EventLog {
    shared: Arc<Shared>,
    _writer: Arc<WriterHandle>,
}

struct WriterHandle {
    shared: Arc<Shared>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for WriterHandle {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl EventLog {
    /// Starts the writer. Creates `config.dir` if given.
    pub fn start(config: LogConfig, live: live::LiveConfig) -> std::io::Result<EventLog> {
        if let Some(dir) = &config.dir {
            // Events name shoppers: readable by the owner only.
            std::os::unix::fs::DirBuilderExt::mode(
                std::fs::DirBuilder::new().recursive(true),
                0o700,
            )
            .create(dir)?;
        }
        let shared = Arc::new(Shared {
            buffer: Mutex::new(Buffer::default()),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            dropped_views: AtomicU64::new(0),
            recorded: AtomicU64::new(0),
            written: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
            live: live::Live::new(live),
            config,
        });
        let mut writer = Writer::new(shared.clone())?;
        let thread = std::thread::Builder::new()
            .name("event-writer".into())
            .spawn(move || writer.run())?;
        Ok(EventLog {
            _writer: Arc::new(WriterHandle {
                shared: shared.clone(),
                thread: Mutex::new(Some(thread)),
            }),
            shared,
        })
    }

    /// Records an event: one short lock, no I/O. A view is dropped (and
    /// counted) when the view buffer is full; nothing else ever is.
    pub fn record(&self, event: Event) {
        let mut buffer = lock(&self.shared.buffer);
        if event.kind.droppable() {
            if buffer.views.len() >= self.shared.config.views_buffered_max {
                drop(buffer);
                self.shared.dropped_views.fetch_add(1, Ordering::Relaxed);
                return;
            }
            buffer.views.push(event);
        } else {
            buffer.others.push(event);
        }
        drop(buffer);
        self.shared.recorded.fetch_add(1, Ordering::Relaxed);
    }

    pub fn dropped_views(&self) -> u64 {
        self.shared.dropped_views.load(Ordering::Relaxed)
    }

    pub fn recorded(&self) -> u64 {
        self.shared.recorded.load(Ordering::Relaxed)
    }

    /// Events written to segment files (or folded, without a directory).
    pub fn written(&self) -> u64 {
        self.shared.written.load(Ordering::Relaxed)
    }

    pub fn write_errors(&self) -> u64 {
        self.shared.write_errors.load(Ordering::Relaxed)
    }

    pub fn live(&self) -> &live::Live {
        &self.shared.live
    }

    /// Drains now and waits until everything recorded so far is written and
    /// folded (tests, shutdown).
    pub fn flush(&self) {
        let target = self.recorded();
        self.shared.wake.notify_all();
        while self.written() < target {
            std::thread::sleep(Duration::from_millis(2));
            self.shared.wake.notify_all();
        }
    }
}

/// Drains the buffer into segment files and the aggregates.
struct Writer {
    shared: Arc<Shared>,
    file: Option<std::io::BufWriter<std::fs::File>>,
    bytes: u64,
    segment: u64,
}

impl Writer {
    fn new(shared: Arc<Shared>) -> std::io::Result<Writer> {
        // Continue after the segments already there.
        let segment = match &shared.config.dir {
            Some(dir) => segments(dir)?
                .last()
                .and_then(|p| segment_number(p))
                .map_or(1, |n| n + 1),
            None => 1,
        };
        Ok(Writer {
            shared,
            file: None,
            bytes: 0,
            segment,
        })
    }

    fn run(&mut self) {
        loop {
            let stopping = self.shared.stop.load(Ordering::SeqCst);
            let taken = {
                let mut buffer = lock(&self.shared.buffer);
                if buffer.views.is_empty() && buffer.others.is_empty() && !stopping {
                    buffer = self
                        .shared
                        .wake
                        .wait_timeout(buffer, self.shared.config.drain_every)
                        .map(|(b, _)| b)
                        .unwrap_or_else(|e| e.into_inner().0);
                }
                std::mem::take(&mut *buffer)
            };
            let mut events = taken.others;
            events.extend(taken.views);
            if !events.is_empty() {
                events.sort_by_key(|e| e.at_ms);
                if let Err(e) = self.write(&events) {
                    self.shared.write_errors.fetch_add(1, Ordering::Relaxed);
                    eprintln!("event log: writing failed: {e}");
                }
                self.shared.live.fold(&events);
                self.shared
                    .written
                    .fetch_add(events.len() as u64, Ordering::Relaxed);
            }
            let drained = {
                let b = lock(&self.shared.buffer);
                b.views.is_empty() && b.others.is_empty()
            };
            if stopping && drained {
                if let Some(f) = self.file.as_mut() {
                    let _ = f.flush();
                }
                return;
            }
            if events.is_empty() {
                continue;
            }
            std::thread::sleep(
                self.shared
                    .config
                    .drain_every
                    .min(Duration::from_millis(50)),
            );
        }
    }

    fn write(&mut self, events: &[Event]) -> std::io::Result<()> {
        let Some(dir) = self.shared.config.dir.clone() else {
            return Ok(());
        };
        let mut line = Vec::with_capacity(160);
        for e in events {
            if self.file.is_none() || self.bytes >= self.shared.config.segment_bytes {
                self.rotate(&dir)?;
            }
            line.clear();
            serde_json::to_writer(&mut line, e).map_err(std::io::Error::other)?;
            line.push(b'\n');
            let f = self.file.as_mut().expect("opened above");
            f.write_all(&line)?;
            self.bytes += line.len() as u64;
        }
        if let Some(f) = self.file.as_mut() {
            f.flush()?;
        }
        Ok(())
    }

    fn rotate(&mut self, dir: &Path) -> std::io::Result<()> {
        if let Some(mut f) = self.file.take() {
            f.flush()?;
        }
        let path = dir.join(format!("events-{:06}.jsonl", self.segment));
        self.segment += 1;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        self.file = Some(std::io::BufWriter::with_capacity(1 << 20, file));
        self.bytes = 0;
        Ok(())
    }
}

fn segment_number(path: &Path) -> Option<u64> {
    path.file_name()?
        .to_str()?
        .strip_prefix("events-")?
        .strip_suffix(".jsonl")?
        .parse()
        .ok()
}

/// The segment files of a directory, oldest first.
pub fn segments(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| segment_number(p).is_some())
        .collect();
    found.sort_by_key(|p| segment_number(p));
    Ok(found)
}

/// Reads every event of a directory's `.jsonl` files: `(events, bad lines)`.
/// A malformed line is counted and skipped.
pub fn read_dir(dir: &Path) -> std::io::Result<(Vec<Event>, u64)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    let (mut events, mut bad) = (Vec::new(), 0);
    for f in files {
        let text = std::fs::read_to_string(&f)?;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            match serde_json::from_str::<Event>(line) {
                Ok(e) => events.push(e),
                Err(_) => bad += 1,
            }
        }
    }
    events.sort_by_key(|e| e.at_ms);
    Ok((events, bad))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The file format keeps its short keys: a line written before the
    /// fields had names reads into the named fields, and writes back the same.
    #[test]
    fn the_log_keeps_its_short_keys() {
        let line =
            r#"{"t":1762790400000,"k":"pay","u":7,"s":3,"o":99,"a":12300,"c":"alipay","l":850}"#;
        let e: Event = serde_json::from_str(line).unwrap();
        assert_eq!(
            (e.at_ms, e.kind, e.user, e.sku),
            (1_762_790_400_000, Kind::Pay, 7, 3)
        );
        assert_eq!((e.order, e.amount_fen, e.quantity), (99, 12_300, 1));
        assert_eq!(
            (e.channel.as_deref(), e.latency_us, e.cod),
            (Some("alipay"), 850, false)
        );
        assert_eq!(serde_json::to_string(&e).unwrap(), line);
    }
}
