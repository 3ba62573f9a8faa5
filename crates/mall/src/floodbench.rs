//! `mall bench flood`: snap-up latency at a steady rate with and without
//! hostile traffic, in one run, against a real `mall serve` (a child
//! process of this binary):
//!
//! 1. quiet: snap-ups only;
//! 2. a login flood: failed logins at `--logins-per-s` (unknown usernames,
//!    so each costs a full Argon2 hash);
//! 3. a connection flood: idle connections from three 127.0.0.0/8
//!    addresses kept at `--idle-connections`, plus `--slowloris`
//!    connections sending a header byte a second.
//!
//! Then resident memory before and after `--rss-logins` failed logins, sent
//! from 64 loopback source addresses (so per-address limits do not hide the
//! cost). `--target URL --pid PID` runs only that last part against a
//! server you started (any version: for a before/after comparison).
//!
//! The snap-ups come from the rehearsal's open-loop generator (latency
//! from the intended send time), in this process; the floods from threads.

use anyhow::{Context, Result};
use mall_rush::http::Target;
use mall_rush::plan::Plan;
use mall_rush::run::{run, Backend};
use mall_rush::scenario::Scenario;
use mall_rush::summary::summarize;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args, Clone)]
pub struct FloodArgs {
    /// Snap-ups per second during each phase.
    #[arg(long, default_value_t = 10_000)]
    pub rate: u32,
    /// Length of each phase's snap-up window.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Failed logins per second in the login phase.
    #[arg(long, default_value_t = 100)]
    pub logins_per_s: u32,
    /// Idle connections kept open in the connection phase.
    #[arg(long, default_value_t = 3_000)]
    pub idle_connections: usize,
    /// Slowloris connections in the connection phase.
    #[arg(long, default_value_t = 500)]
    pub slowloris: usize,
    /// Failed logins before the second memory reading (0: skip).
    #[arg(long, default_value_t = 5_000)]
    pub rss_logins: u32,
    /// Only the memory part, against this server (needs --pid).
    #[arg(long)]
    pub target: Option<String>,
    #[arg(long)]
    pub pid: Option<u32>,
}

const TOKEN: &str = "flood-bench-admin-token-0123456789abcdef";

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// One request on a fresh connection from `from`; the status (0: no answer).
fn request(from: [u8; 4], to: SocketAddr, raw: &str) -> u16 {
    let Ok(mut s) = connect_from(from, to) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    if s.write_all(raw.as_bytes()).is_err() {
        return 0;
    }
    let mut text = Vec::new();
    let _ = s.read_to_end(&mut text);
    std::str::from_utf8(text.get(9..12).unwrap_or_default())
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn connect_from(from: [u8; 4], to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::from((from, 0)).into())?;
    socket.connect_timeout(&to.into(), Duration::from_secs(2))?;
    Ok(socket.into())
}

fn failed_login(n: u64) -> String {
    let body = format!(r#"{{"username":"ghost-{n}","password":"guessing 12345"}}"#);
    format!(
        "POST /v1/sessions HTTP/1.1\r\nHost: mall\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")?;
    Ok(kb / 1024.0)
}

/// Counts of a flood's answers.
#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    unauthorized: AtomicU64,
    busy: AtomicU64,
    other: AtomicU64,
    refused: AtomicU64,
    reconnects: AtomicU64,
}

impl Tally {
    fn line(&self) -> String {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "sent {} (401 {}, 503 busy {}, other {}), connections refused {} , reconnects {}",
            l(&self.sent),
            l(&self.unauthorized),
            l(&self.busy),
            l(&self.other),
            l(&self.refused),
            l(&self.reconnects)
        )
    }
}

/// Failed logins at `per_s` from 8 threads until `stop`.
fn login_flood(
    to: SocketAddr,
    per_s: u32,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> Vec<std::thread::JoinHandle<()>> {
    let threads = 8u32;
    (0..threads)
        .map(|t| {
            let (stop, tally) = (stop.clone(), tally.clone());
            std::thread::spawn(move || {
                let every = Duration::from_secs_f64(f64::from(threads) / f64::from(per_s.max(1)));
                let mut next = Instant::now();
                let mut n = u64::from(t) << 40;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let status = request([127, 0, 1, 1 + t as u8], to, &failed_login(n));
                    tally.sent.fetch_add(1, Ordering::Relaxed);
                    let c = match status {
                        401 => &tally.unauthorized,
                        503 => &tally.busy,
                        _ => &tally.other,
                    };
                    c.fetch_add(1, Ordering::Relaxed);
                    next += every;
                    if let Some(wait) = next.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                }
            })
        })
        .collect()
}

/// Idle connections from three addresses and slowloris connections from a
/// fourth, kept up until `stop`.
fn connection_flood(
    to: SocketAddr,
    idle: usize,
    slowloris: usize,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let sources = [[127, 0, 2, 1], [127, 0, 2, 2], [127, 0, 2, 3]];
        let mut idle_conns: Vec<TcpStream> = Vec::new();
        let mut slow: Vec<TcpStream> = Vec::new();
        let mut k = 0usize;
        let alive = |s: &TcpStream| {
            let mut b = [0u8; 256];
            let _ = s.set_nonblocking(true);
            match (&*s).read(&mut b) {
                Ok(0) => false,
                Ok(_) => false, // an answer (429 or a close): done with it
                Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
            }
        };
        while !stop.load(Ordering::Relaxed) {
            idle_conns.retain(|s| alive(s));
            while idle_conns.len() < idle && !stop.load(Ordering::Relaxed) {
                k += 1;
                match connect_from(sources[k % 3], to) {
                    Ok(s) => {
                        std::thread::sleep(Duration::from_micros(200));
                        if alive(&s) {
                            idle_conns.push(s);
                        } else {
                            tally.refused.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(_) => break,
                }
                tally.reconnects.fetch_add(1, Ordering::Relaxed);
                if k.is_multiple_of(200) {
                    break; // let the slowloris side run too
                }
            }
            slow.retain_mut(|s| s.write_all(b"a").is_ok());
            while slow.len() < slowloris {
                match connect_from([127, 0, 3, 1], to) {
                    Ok(mut s) => {
                        let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nX-Slow: ");
                        slow.push(s);
                        tally.reconnects.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => break,
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
}

fn scenario(name: &str, seed: u64, rate: u32, seconds: f64) -> Result<Scenario> {
    let users = (f64::from(rate) * seconds).round().max(1.0) as u32;
    let text = format!(
        r#"name = "{name}"
seed = {seed}
users = {users}
items = 2000
zipf_s = 1.1
wish_list = 1
stock_min = 50
stock_max = 2000
stock_alpha = 0.9
browse_share = 0.0
opens_in_s = 2.0
spike_share = 1.0
spike_s = {seconds}
tail_s = 0.0
cod_share = 0.2
cancel_share = 0.0
pay_share = 0.0
late_pay_share = 0.0
connections = 256
timeout_ms = 3000
retries = 2
duration_max_s = 120.0
requests_max = 10000000
"#
    );
    let s: Scenario = toml::from_str(&text)?;
    s.validate()?;
    Ok(s)
}

/// `mall serve` on a fresh store, as a child; killed on drop.
struct Child(std::process::Child, #[allow(dead_code)] tempfile_dir::Dir);

mod tempfile_dir {
    /// A directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server(port: u16) -> Result<Child> {
    let dir = std::env::temp_dir().join(format!("mall-flood-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let child = std::process::Command::new(std::env::current_exe()?)
        .args(["serve", "--addr", &format!("127.0.0.1:{port}")])
        .args(["--admin-addr", "127.0.0.1:0", "--shards", "2"])
        .args(["--user-rate-per-s", "1000000", "--user-burst", "1000000"])
        .args([
            "--anonymous-rate-per-s",
            "1000000",
            "--anonymous-burst",
            "1000000",
        ])
        .arg("--data")
        .arg(&dir)
        .env("MALL_ADMIN_TOKEN", TOKEN)
        .env("MALL_LOG", "error")
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("starting mall serve")?;
    let child = Child(child, tempfile_dir::Dir(dir));
    let to = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(30);
    while request(
        [127, 0, 0, 1],
        to,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nconnection: close\r\n\r\n",
    ) != 200
    {
        anyhow::ensure!(Instant::now() < deadline, "mall serve did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(child)
}

/// Failed logins as fast as the server takes them, from 64 addresses.
fn rss_part(to: SocketAddr, pid: u32, logins: u32) -> Result<()> {
    if logins == 0 {
        return Ok(());
    }
    let before = rss_mib(pid)?;
    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    std::thread::scope(|s| {
        for t in 0..8u8 {
            let (tally, next) = (tally.clone(), next.clone());
            s.spawn(move || loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= u64::from(logins) {
                    return;
                }
                let from = [127, 0, 4, 1 + (n % 64) as u8];
                let status = request(from, to, &failed_login(n + (u64::from(t) << 50)));
                tally.sent.fetch_add(1, Ordering::Relaxed);
                match status {
                    401 => &tally.unauthorized,
                    503 => {
                        std::thread::sleep(Duration::from_millis(20));
                        &tally.busy
                    }
                    _ => &tally.other,
                }
                .fetch_add(1, Ordering::Relaxed);
            });
        }
    });
    let after = rss_mib(pid)?;
    println!(
        "memory: {logins} failed logins in {:.1} s ({}); resident memory {before:.1} MiB before, {after:.1} MiB after",
        started.elapsed().as_secs_f64(),
        tally.line()
    );
    Ok(())
}

pub fn flood(args: FloodArgs) -> Result<()> {
    if let Some(target) = &args.target {
        let pid = args
            .pid
            .context("--target needs --pid (to read its memory)")?;
        let to: SocketAddr = target
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .context("--target must be http://127.x.y.z:port")?;
        anyhow::ensure!(to.ip().is_loopback(), "loopback targets only");
        return rss_part(to, pid, args.rss_logins);
    }
    let port = free_port()?;
    let child = start_server(port)?;
    let to = SocketAddr::from(([127, 0, 0, 1], port));
    let backend = Backend::Http {
        target: Target::parse(&format!("http://127.0.0.1:{port}"), false)?,
        admin_token: TOKEN.into(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    println!(
        "mall bench flood: {} snap-ups/s for {} s per phase against mall serve (pid {}), generator in this process; login flood {}/s; connection flood {} idle + {} slowloris",
        args.rate, args.seconds, child.0.id(), args.logins_per_s, args.idle_connections, args.slowloris
    );
    println!("  phase              snap-ups/s   p50 ms   p99 ms  p999 ms  errors   flood");
    for (i, phase) in ["quiet", "login flood", "connection flood"]
        .iter()
        .enumerate()
    {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally::default());
        let mut threads = Vec::new();
        match i {
            1 => threads = login_flood(to, args.logins_per_s, stop.clone(), tally.clone()),
            2 => threads.push(connection_flood(
                to,
                args.idle_connections,
                args.slowloris,
                stop.clone(),
                tally.clone(),
            )),
            _ => {}
        }
        let s = scenario(
            &format!("flood-{i}"),
            100 + i as u64,
            args.rate,
            args.seconds,
        )?;
        let outcome = runtime.block_on(run(Plan::new(&s), backend.clone(), false));
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            let _ = t.join();
        }
        let outcome = outcome?;
        let summary = summarize(&outcome, "http");
        let snap = summary.by_kind.get("snap_up");
        let errors: u64 = snap.map_or(0, |k| {
            k.codes
                .iter()
                .filter(|(c, _)| {
                    matches!(
                        c.as_str(),
                        "timeout"
                            | "transport_error"
                            | "store_unavailable"
                            | "internal"
                            | "unanswered"
                    ) || c.starts_with("http_5")
                })
                .map(|(_, n)| n)
                .sum()
        });
        let l = &summary.snapup_latency;
        println!(
            "  {phase:<17} {:>11.0} {:>8.1} {:>8.1} {:>8.1} {:>7}   {}",
            summary.snapups_per_s,
            l.p50_ms,
            l.p99_ms,
            l.p999_ms,
            errors,
            if i == 0 { String::new() } else { tally.line() }
        );
    }
    drop(runtime);
    rss_part(to, child.0.id(), args.rss_logins)
}
