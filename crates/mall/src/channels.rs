//! Payment channels: `mall channels` runs the simulated providers of a
//! channels file; `mall serve --channels FILE` routes payments to them.

use anyhow::{Context, Result};
use clap::Args;
use mall_channels::config::ChannelsFile;
use mall_pay::router::PayMethod;
use mall_payments::{ChannelSetup, PaymentsConfig};
use std::net::SocketAddr;
use std::path::PathBuf;

/// The example channels file: three providers, one with an outage from 30 s to 60 s.
pub const EXAMPLE: &str = include_str!("../../mall-channels/channels.example.toml");

/// Prints each channel's live figures (the demo's closing table).
pub fn print_channels(p: &mall_payments::Payments) {
    println!();
    println!("payment channels (queue depth {}):", p.queue_depth());
    println!(
        "  {:<10} {:>9} {:>10} {:>10} {:>9} {:>9} {:>8}",
        "channel", "circuit", "dispatched", "succeeded", "failed", "timed out", "p99 ms"
    );
    for c in p.channels() {
        println!(
            "  {:<10} {:>9} {:>10} {:>10} {:>9} {:>9} {:>8.0}",
            c.name,
            c.circuit.as_str(),
            c.dispatched_total,
            c.succeeded_total,
            c.failed_total,
            c.timed_out_total,
            c.p99_latency_ms
        );
    }
    let k = p.counters();
    let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "  payments succeeded {}, failed {}, late successes handed back {}, refunds {}, callbacks refused {}",
        get(&k.succeeded),
        get(&k.failed),
        get(&k.late_refunds),
        get(&k.refunds),
        get(&k.callbacks_refused)
    );
}

#[derive(Args)]
pub struct ChannelsArgs {
    /// The channels file (see crates/mall-channels/channels.example.toml).
    #[arg(long, env = "MALL_CHANNELS")]
    pub config: PathBuf,
    /// Seed of latency and failure draws (a run is reproducible).
    #[arg(long, default_value_t = 11)]
    pub seed: u64,
}

/// `mall channels`: serves every channel's simulated provider until Ctrl-C.
pub fn run(args: ChannelsArgs) -> Result<()> {
    let file = mall_channels::config::load(&args.config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let sim = mall_channels::Simulator::start(file, args.seed).await?;
        for (name, addr) in sim.addrs() {
            tracing::info!(channel = %name, %addr, "payment provider simulated");
        }
        crate::shutdown_signal().await;
        sim.shutdown().await;
        anyhow::Ok(())
    })
}

fn method(m: mall_channels::config::PayMethod) -> PayMethod {
    match m {
        mall_channels::config::PayMethod::Card => PayMethod::Card,
        mall_channels::config::PayMethod::ThirdParty => PayMethod::ThirdParty,
    }
}

/// The payment service's settings for a server listening on `server`:
/// channels from `file` (none: wallet payments only), at the addresses
/// given (`addrs` overrides the file's ports, for in-process simulators).
pub fn payments_config(
    file: Option<&ChannelsFile>,
    addrs: &[(String, SocketAddr)],
    server: SocketAddr,
) -> Result<PaymentsConfig> {
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
        anyhow::ensure!(
            addr.port() != 0,
            "channel {} has port 0; give it a port to reach it",
            spec.name
        );
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

/// Reads a channels file for `serve`.
pub fn load(path: &std::path::Path) -> Result<ChannelsFile> {
    mall_channels::config::load(path).with_context(|| format!("channels file {}", path.display()))
}
