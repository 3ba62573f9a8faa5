//! Payment channels: `mall channels` runs the simulated providers of a
//! channels file; `mall serve --channels FILE` routes payments to them.

use anyhow::{Context, Result};
use clap::Args;
use mall_provider_sim::config::ChannelsFile;
use std::path::PathBuf;

/// The example channels file: three providers, one with an outage from 30 s to 60 s.
pub const EXAMPLE: &str = include_str!("../../mall-provider-sim/channels.example.toml");

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
    /// The channels file (see crates/mall-provider-sim/channels.example.toml).
    #[arg(long, env = "MALL_CHANNELS")]
    pub config: PathBuf,
    /// Seed of latency and failure draws (a run is reproducible).
    #[arg(long, default_value_t = 11)]
    pub seed: u64,
}

/// `mall channels`: serves every channel's simulated provider until Ctrl-C.
pub fn run(args: ChannelsArgs) -> Result<()> {
    let file = mall_provider_sim::config::load(&args.config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let sim = mall_provider_sim::Simulator::start(file, args.seed).await?;
        for (name, addr) in sim.addrs() {
            tracing::info!(channel = %name, %addr, "payment provider simulated");
        }
        crate::shutdown_signal().await;
        sim.shutdown().await;
        anyhow::Ok(())
    })
}

/// Reads a channels file for `serve`.
pub fn load(path: &std::path::Path) -> Result<ChannelsFile> {
    mall_provider_sim::config::load(path)
        .with_context(|| format!("channels file {}", path.display()))
}
