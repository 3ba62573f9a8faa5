//! `mall serve` configuration: defaults, then a TOML file, then environment
//! variables and flags (clap reads both), later ones winning.

use mall_engine::EngineConfig;
use mall_http::{HttpConfig, RateConfig};
use mall_inventory::InventoryConfig;
use mall_shard::RuntimeConfig;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Every setting of `mall serve`, as it appears in the TOML file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub addr: SocketAddr,
    /// The node's local files (event log, admin token) and, without
    /// `store`, the SQLite store.
    pub data: PathBuf,
    /// PostgreSQL servers (connection URLs, a list or one string with
    /// commas); empty: the SQLite store in `data`.
    #[serde(deserialize_with = "one_or_many")]
    pub store: Vec<String>,
    /// Connections this node opens per PostgreSQL server, at most.
    pub store_connections: Option<usize>,
    /// Inventory shards; default one per core (a data directory keeps the count it was made with).
    pub shards: Option<usize>,
    #[serde(with = "humantime_serde_lite")]
    pub hold_timeout: Duration,
    pub queue_capacity: usize,
    pub batch_commands_max: usize,
    pub staged_effects_max: usize,
    pub idempotency_keys_max: usize,
    pub body_bytes_max: usize,
    pub connections_max: usize,
    /// The operators' listener (health, metrics, dashboard, admin routes),
    /// with its own connections. Default: loopback, the API's port + 1.
    pub admin_addr: Option<SocketAddr>,
    /// Open connections from one client address (an IPv6 /64), at most.
    pub connections_per_address_max: usize,
    /// From a request's first byte to its last header byte, at most.
    #[serde(with = "humantime_serde_lite")]
    pub header_read_timeout: Duration,
    /// A keep-alive connection with no request, at most this long idle.
    #[serde(with = "humantime_serde_lite")]
    pub idle_timeout: Duration,
    /// Proxies (addresses or blocks, comma-separated) whose
    /// X-Forwarded-For / Forwarded client addresses are believed.
    pub trusted_proxies: String,
    #[serde(with = "humantime_serde_lite")]
    pub session_ttl: Duration,
    /// Lifetime of an admin's login (the bootstrap token lasts until rotated).
    #[serde(with = "humantime_serde_lite")]
    pub admin_session_ttl: Duration,
    /// Threads that hash passwords (each holds 19 MiB; they take at most
    /// this many cores from order placement).
    pub password_hash_threads: usize,
    /// Accounts one client address may register per hour.
    pub registrations_per_address_per_h: f64,
    pub user_rate_per_s: f64,
    pub user_burst: f64,
    pub anonymous_rate_per_s: f64,
    pub anonymous_burst: f64,
    /// The payment channels file (see `mall channels`).
    pub channels: Option<PathBuf>,
    /// Snap-ups admitted per second, all shoppers together (a capacity
    /// plan sets it); unset: only the shard queues bound them.
    pub snapups_per_s_max: Option<f64>,
    /// Payments worked on at once; more wait their turn, so a payment peak
    /// never starves order placement.
    pub payments_in_process_max: usize,
    /// How long a payment request waits for the provider's answer before
    /// answering 202 (pending).
    #[serde(with = "humantime_serde_lite")]
    pub payment_wait: Duration,
}

impl Default for Config {
    fn default() -> Self {
        let http = HttpConfig::default();
        let runtime = RuntimeConfig::default();
        Config {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data: PathBuf::from("mall-data"),
            store: Vec::new(),
            store_connections: None,
            shards: None,
            hold_timeout: Duration::from_millis(InventoryConfig::default().hold_timeout_ms as u64),
            queue_capacity: runtime.queue_capacity,
            batch_commands_max: runtime.batch_commands_max,
            staged_effects_max: runtime.staged_effects_max,
            idempotency_keys_max: InventoryConfig::default().idempotency_keys_max,
            body_bytes_max: http.body_bytes_max,
            connections_max: http.listener.connections_max,
            admin_addr: None,
            connections_per_address_max: http.listener.connections_per_address_max,
            header_read_timeout: http.listener.header_read_timeout,
            idle_timeout: http.listener.idle_timeout,
            trusted_proxies: String::new(),
            session_ttl: Duration::from_millis(http.session_ttl_ms as u64),
            admin_session_ttl: Duration::from_millis(http.admin_session_ttl_ms as u64),
            password_hash_threads: http.passwords.threads,
            registrations_per_address_per_h: http.rate.registrations_per_address_per_h,
            user_rate_per_s: http.rate.user_rate_per_s,
            user_burst: http.rate.user_burst,
            anonymous_rate_per_s: http.rate.anonymous_rate_per_s,
            anonymous_burst: http.rate.anonymous_burst,
            channels: None,
            snapups_per_s_max: None,
            payments_in_process_max: mall_payments::PaymentsConfig::default().in_process_max,
            payment_wait: Duration::from_millis(mall_payments::PaymentsConfig::default().wait_ms),
        }
    }
}

/// `store = "postgres://a,postgres://b"` or `store = ["postgres://a", ...]`.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => crate::store::split_stores(&s),
        OneOrMany::Many(v) => v,
    })
}

/// Durations in TOML as humantime strings ("15m", "30s").
mod humantime_serde_lite {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

impl Config {
    pub fn load(file: Option<&std::path::Path>) -> anyhow::Result<Config> {
        use anyhow::Context;
        let Some(path) = file else {
            return Ok(Config::default());
        };
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// The store, as the commands that open one take it.
    pub fn store_args(&self) -> crate::store::StoreArgs {
        crate::store::StoreArgs {
            store: vec![crate::store::Stores(self.store.clone())],
            store_connections: self.store_connections,
        }
    }

    pub fn engine(&self) -> EngineConfig {
        EngineConfig {
            inventory: InventoryConfig {
                hold_timeout_ms: self.hold_timeout.as_millis() as i64,
                idempotency_keys_max: self.idempotency_keys_max,
                ..InventoryConfig::default()
            },
            runtime: RuntimeConfig {
                queue_capacity: self.queue_capacity,
                batch_commands_max: self.batch_commands_max,
                staged_effects_max: self.staged_effects_max,
                ..RuntimeConfig::default()
            },
            ledger: Default::default(),
        }
    }

    pub fn trusted_proxies(&self) -> anyhow::Result<Vec<mall_http::client::Cidr>> {
        mall_http::client::parse_list(&self.trusted_proxies)
            .map_err(|e| anyhow::anyhow!("trusted_proxies: {e}"))
    }

    /// The operators' listener: as set, or loopback on the API's port + 1
    /// (an ephemeral port when the API's is).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr.unwrap_or_else(|| {
            let port = match self.addr.port() {
                0 | u16::MAX => 0,
                p => p + 1,
            };
            SocketAddr::from(([127, 0, 0, 1], port))
        })
    }

    pub fn http(&self) -> anyhow::Result<HttpConfig> {
        let trusted = self.trusted_proxies()?;
        Ok(HttpConfig {
            body_bytes_max: self.body_bytes_max,
            listener: mall_http::listener::ListenerConfig {
                connections_max: self.connections_max,
                connections_per_address_max: self.connections_per_address_max,
                header_read_timeout: self.header_read_timeout,
                idle_timeout: self.idle_timeout,
                exempt: trusted.clone(),
            },
            trusted_proxies: trusted,
            session_ttl_ms: self.session_ttl.as_millis() as i64,
            admin_session_ttl_ms: self.admin_session_ttl.as_millis() as i64,
            passwords: mall_http::passwords::PasswordConfig {
                threads: self.password_hash_threads,
                ..Default::default()
            },
            rate: RateConfig {
                user_rate_per_s: self.user_rate_per_s,
                user_burst: self.user_burst,
                anonymous_rate_per_s: self.anonymous_rate_per_s,
                anonymous_burst: self.anonymous_burst,
                snapups_per_s_max: self.snapups_per_s_max,
                registrations_per_address_per_h: self.registrations_per_address_per_h,
                ..RateConfig::default()
            },
            ..HttpConfig::default()
        })
    }

    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.hold_timeout >= Duration::from_secs(1),
            "hold_timeout must be at least 1s"
        );
        anyhow::ensure!(
            self.queue_capacity >= 1,
            "queue_capacity must be at least 1"
        );
        anyhow::ensure!(
            (1..=100_000).contains(&self.payments_in_process_max),
            "payments_in_process_max must be 1 to 100000"
        );
        anyhow::ensure!(
            self.snapups_per_s_max
                .is_none_or(|r| r.is_finite() && r >= 1.0),
            "snapups_per_s_max must be at least 1"
        );
        anyhow::ensure!(
            self.payment_wait <= Duration::from_secs(60),
            "payment_wait must be at most 60s"
        );
        anyhow::ensure!(
            self.batch_commands_max >= 1,
            "batch_commands_max must be at least 1"
        );
        anyhow::ensure!(
            self.staged_effects_max >= 1,
            "staged_effects_max must be at least 1"
        );
        anyhow::ensure!(
            self.body_bytes_max >= 1024,
            "body_bytes_max must be at least 1024"
        );
        anyhow::ensure!(
            self.connections_max >= 1,
            "connections_max must be at least 1"
        );
        anyhow::ensure!(
            (1..=self.connections_max).contains(&self.connections_per_address_max),
            "connections_per_address_max must be 1 to connections_max"
        );
        anyhow::ensure!(
            self.header_read_timeout >= Duration::from_millis(100)
                && self.idle_timeout >= Duration::from_millis(100),
            "header_read_timeout and idle_timeout must be at least 100ms"
        );
        anyhow::ensure!(
            (1..=64).contains(&self.password_hash_threads),
            "password_hash_threads must be 1 to 64"
        );
        anyhow::ensure!(
            self.registrations_per_address_per_h > 0.0
                && self.registrations_per_address_per_h.is_finite(),
            "registrations_per_address_per_h must be positive"
        );
        anyhow::ensure!(
            self.admin_session_ttl >= Duration::from_secs(60),
            "admin_session_ttl must be at least 1m"
        );
        self.trusted_proxies()?;
        anyhow::ensure!(
            self.user_rate_per_s > 0.0 && self.anonymous_rate_per_s > 0.0,
            "rates must be positive"
        );
        if let Some(n) = self.shards {
            anyhow::ensure!(
                (1..=mall_core::OrderId::SHARDS_MAX).contains(&n),
                "shards must be 1 to 256"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Config;

    #[test]
    fn store_is_a_list_or_one_comma_separated_string() {
        let one: Config = toml::from_str(r#"store = "postgres://a/m, postgres://b/m""#).unwrap();
        let many: Config =
            toml::from_str(r#"store = ["postgres://a/m", "postgres://b/m"]"#).unwrap();
        assert_eq!(one.store, vec!["postgres://a/m", "postgres://b/m"]);
        assert_eq!(one.store, many.store);
        assert!(
            Config::default().store.is_empty(),
            "SQLite unless a store is named"
        );
        assert!(toml::from_str::<Config>("store = 5").is_err());
    }
}
