//! The channels file (TOML), shared by the simulator and the mall server:
//! the simulator serves each `[[channel]]` on its port; the mall server
//! reads the same file to configure its router and adapters.
//!
//! Parsing is strict (unknown fields are refused) and [`validate`] refuses a
//! file that cannot describe a provider, with a message naming the channel
//! and the field.

use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

/// At most this many channels in one file.
pub const CHANNELS_MAX: usize = 64;
/// A secret is the HMAC key for callbacks and the bearer key; shorter ones are guessable.
pub const SECRET_BYTES_MIN: usize = 16;
/// At most this many outage windows per channel.
pub const OUTAGES_MAX: usize = 64;
/// Latency draws (median, p99) are bounded by this.
pub const LATENCY_MS_MAX: u64 = 600_000;
/// Default bound on payments (and, separately, refunds) kept per channel.
pub const PAYMENTS_MAX_DEFAULT: usize = 2_000_000;
/// Default bound on callback requests in flight across all channels.
pub const CALLBACKS_IN_FLIGHT_MAX_DEFAULT: usize = 256;

/// The whole file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelsFile {
    /// The address every channel binds on. Default `127.0.0.1`.
    #[serde(default = "default_host")]
    pub host: IpAddr,
    /// Payments kept in memory per channel (refunds likewise); beyond it a
    /// create or refund answers 503 `payments_full`. A full map of 2,000,000
    /// payments takes up to about 140 MB per channel (33 bytes per slot).
    #[serde(default = "default_payments_max")]
    pub payments_max: usize,
    /// Callback requests in flight at once, across all channels.
    #[serde(default = "default_callbacks_in_flight_max")]
    pub callbacks_in_flight_max: usize,
    /// The providers, in file order.
    #[serde(default)]
    pub channel: Vec<ChannelSpec>,
}

/// One simulated provider.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelSpec {
    /// `[a-z0-9_-]{1,32}`, unique in the file.
    pub name: String,
    /// The loopback port; 0 = any free port (tests). Unique unless 0.
    pub port: u16,
    /// HMAC key for callbacks and the bearer key the mall calls with;
    /// at least [`SECRET_BYTES_MIN`] bytes.
    pub secret: String,
    /// The payment methods this provider takes; not empty, no repeats.
    pub methods: Vec<PayMethod>,
    /// Payment creates the provider takes per second.
    pub capacity_per_s: u32,
    /// Payments pending (created, not yet called back) at most.
    pub max_concurrency: u32,
    /// The provider's fee in basis points (0 to 10,000); for the mall's router.
    #[serde(default)]
    pub fee_bp: u32,
    /// Routing preference for the mall's router (lower first).
    #[serde(default)]
    pub priority: u32,
    /// What happens beyond capacity. Default `refuse`.
    #[serde(default)]
    pub over_capacity: OverCapacity,
    /// Share of payments that end failed (declined), 0 to 1. Default 0.
    #[serde(default)]
    pub failure_rate: f64,
    /// Time from create to callback: log-normal from its median and p99.
    pub latency_ms: Latency,
    /// Windows, in seconds since the simulator started, when the provider
    /// misbehaves. They must not overlap.
    #[serde(default)]
    pub outage: Vec<Outage>,
}

pub use mall_router::router::PayMethod;

impl ChannelsFile {
    /// The mall's description of each channel: routing from the file, the
    /// provider at the file's host and port, or at the address `addrs`
    /// names (simulators on free ports).
    pub fn setups(
        &self,
        addrs: &[(String, std::net::SocketAddr)],
    ) -> Result<Vec<mall_router::ChannelSetup>, ConfigError> {
        self.channel
            .iter()
            .map(|spec| {
                let addr = match addrs.iter().find(|(n, _)| *n == spec.name) {
                    Some((_, a)) => *a,
                    None => std::net::SocketAddr::new(self.host, spec.port),
                };
                if addr.port() == 0 {
                    return Err(ConfigError::Invalid(format!(
                        "channel {} has port 0; give it a port to reach it",
                        spec.name
                    )));
                }
                Ok(mall_router::ChannelSetup {
                    route: mall_router::router::ChannelConfig {
                        name: spec.name.clone(),
                        methods: spec.methods.clone(),
                        capacity_per_s: spec.capacity_per_s,
                        max_concurrency: spec.max_concurrency,
                        fee_bp: spec.fee_bp,
                        priority: spec.priority.min(255) as u8,
                    },
                    addr,
                    secret: spec.secret.clone(),
                })
            })
            .collect()
    }
}

/// What a provider does with creates beyond `capacity_per_s` in the current
/// second or beyond `max_concurrency` pending.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverCapacity {
    /// Answer 429 `over_capacity`.
    #[default]
    Refuse,
    /// Accept; the callback comes later, by the time the excess would take
    /// to drain at `capacity_per_s`.
    Slow,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Latency {
    pub median: u64,
    pub p99: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outage {
    /// Start, in seconds since the simulator started (inclusive).
    pub from_s: u64,
    /// End, in seconds since the simulator started (exclusive); > `from_s`.
    pub to_s: u64,
    pub kind: OutageKind,
    /// Latency multiplier, >= 1; for `slow` only (and required there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factor: Option<f64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutageKind {
    /// Creates are never answered (held until the client gives up) and no
    /// callbacks are sent; callbacks that fall due are sent when it ends.
    Timeout,
    /// Creates answer 503 `unavailable`.
    Error,
    /// Payments created in the window take `factor` times longer.
    Slow,
    /// Payments created in the window all fail.
    Decline,
}

impl Outage {
    /// Whether the window covers `elapsed_ms` since start.
    pub fn covers(&self, elapsed_ms: u64) -> bool {
        let from_ms = self.from_s.saturating_mul(1000);
        let to_ms = self.to_s.saturating_mul(1000);
        from_ms <= elapsed_ms && elapsed_ms < to_ms
    }
}

impl ChannelSpec {
    /// The outage in force `elapsed_ms` after start, if any.
    pub fn outage_at(&self, elapsed_ms: u64) -> Option<&Outage> {
        self.outage.iter().find(|o| o.covers(elapsed_ms))
    }
}

impl ChannelsFile {
    /// The channel called `name`.
    pub fn channel(&self, name: &str) -> Option<&ChannelSpec> {
        self.channel.iter().find(|c| c.name == name)
    }
}

fn default_host() -> IpAddr {
    IpAddr::V4(Ipv4Addr::LOCALHOST)
}

fn default_payments_max() -> usize {
    PAYMENTS_MAX_DEFAULT
}

fn default_callbacks_in_flight_max() -> usize {
    CALLBACKS_IN_FLIGHT_MAX_DEFAULT
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not TOML, an unknown field, a missing field or a wrong type; toml's
    /// message names the line and the field.
    #[error("channels file: {0}")]
    Syntax(#[from] toml::de::Error),
    /// Well formed but impossible; the message names the channel and field.
    #[error("channels file: {0}")]
    Invalid(String),
    #[error("reading channels file {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// A file's content is wrong: `error` says how, `path` where.
    #[error("{error} (in {path})")]
    In {
        path: std::path::PathBuf,
        error: Box<ConfigError>,
    },
}

/// Reads, parses and validates the file at `path`.
pub fn load(path: impl AsRef<Path>) -> Result<ChannelsFile, ConfigError> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text).map_err(|error| ConfigError::In {
        path: path.to_path_buf(),
        error: Box::new(error),
    })
}

/// Parses and validates a channels file.
pub fn parse(text: &str) -> Result<ChannelsFile, ConfigError> {
    let file: ChannelsFile = toml::from_str(text)?;
    validate(&file)?;
    Ok(file)
}

/// Checks everything serde cannot: ranges, uniqueness, outage windows.
pub fn validate(file: &ChannelsFile) -> Result<(), ConfigError> {
    if file.channel.is_empty() {
        return invalid("no channels: add at least one [[channel]]".into());
    }
    if file.channel.len() > CHANNELS_MAX {
        return invalid(format!("at most {CHANNELS_MAX} channels"));
    }
    if file.payments_max == 0 {
        return invalid("payments_max must be positive".into());
    }
    if file.callbacks_in_flight_max == 0 {
        return invalid("callbacks_in_flight_max must be positive".into());
    }
    let mut names = HashSet::new();
    let mut ports = HashSet::new();
    for spec in &file.channel {
        validate_channel(spec)?;
        if !names.insert(spec.name.as_str()) {
            return invalid(format!("channel name {:?} is used twice", spec.name));
        }
        if spec.port != 0 && !ports.insert(spec.port) {
            return invalid(format!(
                "channel {:?}: port {} is used by another channel",
                spec.name, spec.port
            ));
        }
    }
    Ok(())
}

fn validate_channel(spec: &ChannelSpec) -> Result<(), ConfigError> {
    let name = &spec.name;
    let name_ok = (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if !name_ok {
        return invalid(format!(
            "channel name {name:?} must be 1 to 32 of a-z, 0-9, '_' and '-'"
        ));
    }
    let bad = |what: String| invalid(format!("channel {name:?}: {what}"));
    if spec.secret.len() < SECRET_BYTES_MIN {
        return bad(format!("secret must be at least {SECRET_BYTES_MIN} bytes"));
    }
    if spec.methods.is_empty() {
        return bad("methods must name at least one of \"card\", \"third_party\"".into());
    }
    let distinct: HashSet<_> = spec.methods.iter().collect();
    if distinct.len() != spec.methods.len() {
        return bad("methods lists a method twice".into());
    }
    if spec.capacity_per_s == 0 {
        return bad("capacity_per_s must be positive".into());
    }
    if spec.max_concurrency == 0 {
        return bad("max_concurrency must be positive".into());
    }
    if spec.fee_bp > 10_000 {
        return bad(format!("fee_bp {} must be 0 to 10000", spec.fee_bp));
    }
    if !(0.0..=1.0).contains(&spec.failure_rate) {
        return bad(format!(
            "failure_rate {} must be a share from 0 to 1",
            spec.failure_rate
        ));
    }
    let latency = spec.latency_ms;
    if latency.median == 0 || latency.p99 < latency.median || latency.p99 > LATENCY_MS_MAX {
        return bad(format!(
            "latency_ms needs 1 <= median <= p99 <= {LATENCY_MS_MAX} (got median {}, p99 {})",
            latency.median, latency.p99
        ));
    }
    if spec.outage.len() > OUTAGES_MAX {
        return bad(format!("at most {OUTAGES_MAX} outages"));
    }
    for outage in &spec.outage {
        validate_outage(outage).or_else(&bad)?;
    }
    let mut windows: Vec<_> = spec.outage.iter().map(|o| (o.from_s, o.to_s)).collect();
    windows.sort_unstable();
    for pair in windows.windows(2) {
        if pair[1].0 < pair[0].1 {
            return bad(format!(
                "outages {}..{} s and {}..{} s overlap",
                pair[0].0, pair[0].1, pair[1].0, pair[1].1
            ));
        }
    }
    Ok(())
}

fn validate_outage(outage: &Outage) -> Result<(), String> {
    let window = format!("outage {}..{} s", outage.from_s, outage.to_s);
    if outage.from_s >= outage.to_s {
        return Err(format!("{window}: from_s must be before to_s"));
    }
    match (outage.kind, outage.factor) {
        (OutageKind::Slow, Some(f)) if (1.0..=1000.0).contains(&f) => Ok(()),
        (OutageKind::Slow, Some(f)) => Err(format!("{window}: factor {f} must be 1 to 1000")),
        (OutageKind::Slow, None) => Err(format!("{window}: kind \"slow\" needs a factor")),
        (_, Some(_)) => Err(format!("{window}: factor is for kind \"slow\" only")),
        (_, None) => Ok(()),
    }
}

fn invalid<T>(message: String) -> Result<T, ConfigError> {
    Err(ConfigError::Invalid(message))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../channels.example.toml");

    #[test]
    fn the_example_file_parses() {
        let file = parse(EXAMPLE).unwrap();
        assert_eq!(file.host, default_host());
        let names: Vec<_> = file.channel.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["alipay", "wechat", "unionpay"]);
        let ports: Vec<_> = file.channel.iter().map(|c| c.port).collect();
        assert_eq!(ports, [18101, 18102, 18103]);
        let wechat = file.channel("wechat").unwrap();
        assert_eq!(wechat.capacity_per_s, 2500);
        assert_eq!(wechat.outage.len(), 1);
        assert_eq!(wechat.outage[0].kind, OutageKind::Timeout);
        assert!(wechat.outage_at(29_999).is_none());
        assert!(wechat.outage_at(30_000).is_some());
        assert!(wechat.outage_at(59_999).is_some());
        assert!(wechat.outage_at(60_000).is_none());
        assert_eq!(file.channel("unionpay").unwrap().methods, [PayMethod::Card]);
    }
}
