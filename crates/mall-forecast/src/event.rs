//! The event log format, shared with the server's event log: JSON lines,
//! one event per line, in `*.jsonl` files of one directory.
//!
//! ```text
//! {"t": <ms since epoch>, "k": "<kind>", "u": <user>, "s": <sku>,
//!  "o": <order, optional>, "a": <amount fen, optional>, "q": <quantity, optional, default 1>,
//!  "c": "<channel, optional>", "r": "<refusal reason, optional>", "l": <latency µs, optional>}
//! ```
//!
//! The server's log (`mall-events`) also marks a cash-on-delivery order
//! with `"m": true`; it is read and written here too (between `q` and `c`,
//! as the server writes it), and an order with `"c": "cod"` counts the same.
//!
//! Reading is lenient where the format allows it and strict where it does
//! not: unknown kinds and unknown fields are skipped silently (newer writers
//! may add them); a line that is not JSON, misses `t`/`k`/`u`/`s`, has a
//! field of the wrong type or a quantity outside `1..=QUANTITY_MAX` is
//! *malformed*: counted, a few kept as examples, and skipped. Files are read
//! in name order and lines in file order, but nothing assumes the lines are
//! sorted by time.

use crate::Error;
use mall_core::{Fen, OrderId, Sku, UserId, QUANTITY_MAX};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

/// Longest line read; a longer one is malformed (and read no further).
pub const LINE_BYTES_MAX: usize = 64 * 1024;
/// Malformed lines kept as examples in [`ReadStats`].
pub const MALFORMED_EXAMPLES_MAX: usize = 5;
/// Most `*.jsonl` files read from one directory.
pub const FILES_MAX: usize = 10_000;

/// The kinds of events: the server's own (`mall-events`), one definition.
pub use mall_events::Kind;

/// One event of the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Milliseconds since the Unix epoch (UTC).
    pub t_ms: i64,
    pub kind: Kind,
    pub user: UserId,
    pub sku: Sku,
    pub order: Option<OrderId>,
    pub amount: Option<Fen>,
    /// Units; 1 when the line has no `q`.
    pub quantity: u32,
    /// Cash on delivery (`"m": true`, or `"c": "cod"`, on an order).
    pub cod: bool,
    /// Payment channel (payments, deposits, refunds).
    pub channel: Option<String>,
    /// Refusal reason, e.g. `sold_out`.
    pub reason: Option<String>,
    pub latency_us: Option<u64>,
}

impl Event {
    /// A bare event: quantity 1, no optional fields.
    pub fn new(t_ms: i64, kind: Kind, user: u64, sku: u64) -> Event {
        Event {
            t_ms,
            kind,
            user: UserId(user),
            sku: Sku(sku),
            order: None,
            amount: None,
            quantity: 1,
            cod: false,
            channel: None,
            reason: None,
            latency_us: None,
        }
    }

    /// Appends this event as one JSON line (with its `\n`). Keys in the
    /// documented order; optional fields only when set, `q` only when not 1.
    pub fn write_line(&self, out: &mut String) {
        // `write!` to a String cannot fail.
        let _ = write!(
            out,
            "{{\"t\":{},\"k\":\"{}\",\"u\":{},\"s\":{}",
            self.t_ms,
            self.kind.as_str(),
            self.user.0,
            self.sku.0
        );
        if let Some(o) = self.order {
            let _ = write!(out, ",\"o\":{}", o.0);
        }
        if let Some(a) = self.amount {
            let _ = write!(out, ",\"a\":{}", a.0);
        }
        if self.quantity != 1 {
            let _ = write!(out, ",\"q\":{}", self.quantity);
        }
        if self.cod {
            out.push_str(",\"m\":true");
        }
        let text = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
        if let Some(c) = &self.channel {
            let _ = write!(out, ",\"c\":{}", text(c));
        }
        if let Some(r) = &self.reason {
            let _ = write!(out, ",\"r\":{}", text(r));
        }
        if let Some(l) = self.latency_us {
            let _ = write!(out, ",\"l\":{l}");
        }
        out.push_str("}\n");
    }
}

/// What reading a directory of event files met.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadStats {
    pub files: u64,
    /// Non-blank lines.
    pub lines: u64,
    /// Events handed on.
    pub events: u64,
    /// Well-formed lines of a kind this reader does not know: skipped.
    pub unknown_kinds: u64,
    /// Lines skipped because they are not a valid event.
    pub malformed: u64,
    /// The first few malformed lines: `file:line: reason`.
    pub malformed_examples: Vec<String>,
}

/// The line as written; fields borrowed where the JSON has no escapes.
#[derive(Deserialize)]
struct Line<'a> {
    t: i64,
    #[serde(borrow)]
    k: Cow<'a, str>,
    u: u64,
    s: u64,
    #[serde(default)]
    o: Option<u64>,
    #[serde(default)]
    a: Option<i64>,
    #[serde(default)]
    q: Option<u32>,
    #[serde(default)]
    m: Option<bool>,
    #[serde(default)]
    c: Option<String>,
    #[serde(default)]
    r: Option<String>,
    #[serde(default)]
    l: Option<u64>,
}

/// How one line parsed.
pub enum Parsed {
    Event(Event),
    UnknownKind,
    Malformed(String),
}

/// Parses one line (without its newline).
pub fn parse_line(line: &str) -> Parsed {
    let raw: Line = match serde_json::from_str(line) {
        Ok(raw) => raw,
        Err(e) => return Parsed::Malformed(e.to_string()),
    };
    let Some(kind) = Kind::parse(&raw.k) else {
        return Parsed::UnknownKind;
    };
    let quantity = raw.q.unwrap_or(1);
    if !(1..=QUANTITY_MAX).contains(&quantity) {
        return Parsed::Malformed(format!("quantity {quantity} outside 1..={QUANTITY_MAX}"));
    }
    Parsed::Event(Event {
        t_ms: raw.t,
        kind,
        user: UserId(raw.u),
        sku: Sku(raw.s),
        order: raw.o.map(OrderId),
        amount: raw.a.map(Fen),
        quantity,
        cod: raw.m == Some(true) || (kind == Kind::Order && raw.c.as_deref() == Some("cod")),
        channel: raw.c,
        reason: raw.r,
        latency_us: raw.l,
    })
}

/// The `*.jsonl` files directly in `dir`, in name order.
pub fn event_files(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let io = |source| Error::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.is_file() && path.extension().is_some_and(|e| e == "jsonl") {
            files.push(path);
        }
    }
    if files.is_empty() {
        return Err(Error::NoEventFiles {
            dir: dir.to_path_buf(),
        });
    }
    if files.len() > FILES_MAX {
        return Err(Error::TooManyFiles {
            dir: dir.to_path_buf(),
            found: files.len(),
            max: FILES_MAX,
        });
    }
    files.sort();
    Ok(files)
}

/// Reads every `*.jsonl` file in `dir` and hands each event to `visit`.
/// Streams: memory stays bounded by one line whatever the log's size.
pub fn read_dir(dir: &Path, mut visit: impl FnMut(&Event)) -> Result<ReadStats, Error> {
    let mut stats = ReadStats::default();
    let mut buf = Vec::with_capacity(256);
    for path in event_files(dir)? {
        let io = |source| Error::Io {
            path: path.clone(),
            source,
        };
        let mut reader = BufReader::new(File::open(&path).map_err(io)?);
        stats.files += 1;
        let mut line_no = 0u64;
        while let Some(too_long) = read_line_bounded(&mut reader, &mut buf).map_err(io)? {
            line_no += 1;
            let text = std::str::from_utf8(&buf).map(str::trim);
            if matches!(text, Ok("")) && !too_long {
                continue;
            }
            stats.lines += 1;
            let parsed = match text {
                _ if too_long => Parsed::Malformed(format!("longer than {LINE_BYTES_MAX} bytes")),
                Err(_) => Parsed::Malformed("not UTF-8".into()),
                Ok(text) => parse_line(text),
            };
            match parsed {
                Parsed::Event(event) => {
                    stats.events += 1;
                    visit(&event);
                }
                Parsed::UnknownKind => stats.unknown_kinds += 1,
                Parsed::Malformed(reason) => {
                    stats.malformed += 1;
                    if stats.malformed_examples.len() < MALFORMED_EXAMPLES_MAX {
                        let name = path.file_name().unwrap_or_default().to_string_lossy();
                        stats
                            .malformed_examples
                            .push(format!("{name}:{line_no}: {reason}"));
                    }
                }
            }
        }
    }
    Ok(stats)
}

/// Reads one line into `buf` (without its `\n`), keeping at most
/// [`LINE_BYTES_MAX`] bytes. `None` at the end of the input; `Some(true)`
/// when the line was longer (the rest of it is skipped).
fn read_line_bounded(
    reader: &mut impl BufRead,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<bool>> {
    buf.clear();
    let mut too_long = false;
    let mut read_any = false;
    loop {
        let chunk = reader.fill_buf()?;
        if chunk.is_empty() {
            return Ok(read_any.then_some(too_long));
        }
        read_any = true;
        let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (chunk.len(), false),
        };
        let room = LINE_BYTES_MAX.saturating_sub(buf.len());
        if take > room {
            too_long = true;
        }
        buf.extend_from_slice(&chunk[..take.min(room)]);
        reader.consume(if done { take + 1 } else { take });
        if done {
            return Ok(Some(too_long));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_event_parses_back() {
        let mut event = Event::new(1_762_790_400_123, Kind::Order, 42, 7);
        event.order = Some(OrderId(99));
        event.amount = Some(Fen(12_900));
        event.quantity = 2;
        event.cod = true;
        event.channel = Some("alipay".into());
        event.latency_us = Some(1_500);
        let mut line = String::new();
        event.write_line(&mut line);
        assert!(line.ends_with('\n'));
        match parse_line(line.trim_end()) {
            Parsed::Event(back) => assert_eq!(back, event),
            _ => panic!("{line}"),
        }
        let mut bare = String::new();
        Event::new(5, Kind::View, 1, 2).write_line(&mut bare);
        assert_eq!(bare, "{\"t\":5,\"k\":\"view\",\"u\":1,\"s\":2}\n");
    }

    #[test]
    fn bounded_lines() {
        let long = "x".repeat(LINE_BYTES_MAX + 10);
        let input = format!("a\n{long}\nb");
        let mut reader = std::io::Cursor::new(input.into_bytes());
        let mut buf = Vec::new();
        assert_eq!(
            read_line_bounded(&mut reader, &mut buf).unwrap(),
            Some(false)
        );
        assert_eq!(buf, b"a");
        assert_eq!(
            read_line_bounded(&mut reader, &mut buf).unwrap(),
            Some(true)
        );
        assert_eq!(buf.len(), LINE_BYTES_MAX);
        assert_eq!(
            read_line_bounded(&mut reader, &mut buf).unwrap(),
            Some(false)
        );
        assert_eq!(buf, b"b");
        assert_eq!(read_line_bounded(&mut reader, &mut buf).unwrap(), None);
    }
}
