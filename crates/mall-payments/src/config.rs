//! The payment service's settings, and how they are read from a channels
//! file.

use mall_router::router::{PayMethod, RouterConfig};
use std::net::SocketAddr;

/// One payment channel as the mall sees it: where the provider is, its key,
/// and what the router may send it.
#[derive(Clone, Debug)]
pub struct ChannelSetup {
    pub name: String,
    pub addr: SocketAddr,
    pub secret: String,
    pub methods: Vec<PayMethod>,
    pub capacity_per_s: u32,
    pub max_concurrency: u32,
    pub fee_bp: u32,
    pub priority: u8,
}

#[derive(Clone, Debug)]
pub struct PaymentsConfig {
    pub channels: Vec<ChannelSetup>,
    pub router: RouterConfig,
    /// Where providers send callbacks: the server's root, e.g. `http://127.0.0.1:8080`.
    pub callback_base: String,
    /// How long a payment request waits for its outcome before answering "pending".
    pub wait_ms: u64,
    /// How long a provider may take to accept a payment.
    pub provider_timeout_ms: u64,
    /// Channels tried per payment, at most.
    pub tries_max: usize,
    /// Payments being *started* at once (reading the order, reserving the
    /// money in the ledger, handing the try to the router), at most; more
    /// wait their turn, first come, first served. A payment waiting for its
    /// provider holds no turn: how many are with providers is bounded by
    /// the router (each channel's capacity and concurrency, and its queue
    /// with deadlines), not by this.
    pub in_process_max: usize,
    /// How long tries given up are watched: their provider is asked now and
    /// then whether it charged after all (a callback may never come), and a
    /// charge is handed back.
    pub watch_ms: i64,
    /// Largest single top-up, in fen.
    pub top_up_max_fen: u64,
}

impl Default for PaymentsConfig {
    fn default() -> Self {
        PaymentsConfig {
            channels: Vec::new(),
            router: RouterConfig::default(),
            callback_base: "http://127.0.0.1:8080".into(),
            wait_ms: 5_000,
            in_process_max: 64,
            watch_ms: 15 * 60_000,
            provider_timeout_ms: 1_000,
            tries_max: 3,
            top_up_max_fen: 5_000_000,
        }
    }
}

fn method(m: mall_provider_sim::config::PayMethod) -> PayMethod {
    match m {
        mall_provider_sim::config::PayMethod::Card => PayMethod::Card,
        mall_provider_sim::config::PayMethod::ThirdParty => PayMethod::ThirdParty,
    }
}

/// The payment service's settings for a server listening on `server`:
/// channels from a channels file (the one `mall channels` serves; none:
/// wallet payments only), at the addresses given (`addrs` overrides the
/// file's ports, for simulators on free ports).
pub fn config_from_file(
    file: Option<&mall_provider_sim::config::ChannelsFile>,
    addrs: &[(String, SocketAddr)],
    server: SocketAddr,
) -> Result<PaymentsConfig, String> {
    // Providers call back on loopback; a server on every address is also there.
    let callback = if server.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], server.port()))
    } else {
        server
    };
    let mut config = PaymentsConfig {
        callback_base: format!("http://{callback}"),
        ..PaymentsConfig::default()
    };
    for spec in file.map(|f| f.channel.as_slice()).unwrap_or_default() {
        let addr = match addrs.iter().find(|(n, _)| *n == spec.name) {
            Some((_, a)) => *a,
            None => SocketAddr::new(file.expect("specs come from a file").host, spec.port),
        };
        if addr.port() == 0 {
            return Err(format!(
                "channel {} has port 0; give it a port to reach it",
                spec.name
            ));
        }
        config.channels.push(ChannelSetup {
            name: spec.name.clone(),
            addr,
            secret: spec.secret.clone(),
            methods: spec.methods.iter().copied().map(method).collect(),
            capacity_per_s: spec.capacity_per_s,
            max_concurrency: spec.max_concurrency,
            fee_bp: spec.fee_bp,
            priority: spec.priority.min(255) as u8,
        });
    }
    Ok(config)
}

/// Simulated providers for `file`'s channels in this process, on free
/// ports, and the settings that route to them (demos and tests).
pub async fn simulated_channels(
    mut file: mall_provider_sim::config::ChannelsFile,
    seed: u64,
    server: SocketAddr,
) -> Result<(mall_provider_sim::Simulator, PaymentsConfig), String> {
    for c in &mut file.channel {
        c.port = 0;
    }
    let simulator = mall_provider_sim::Simulator::start(file.clone(), seed)
        .await
        .map_err(|e| format!("starting simulated channels: {e:#}"))?;
    let config = config_from_file(Some(&file), &simulator.addrs(), server)?;
    Ok((simulator, config))
}
