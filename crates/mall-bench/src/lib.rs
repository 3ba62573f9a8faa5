//! The benchmarks that measure mall side by side with its peers, and the
//! peers themselves (throwaway Redis and PostgreSQL servers, their
//! clients). Run by `mall bench stock` and `mall bench ledger`.
//!
//! - [`stockbench`]: one flash-sale workload on mall in-process, mall over
//!   HTTP, Redis (Lua, `appendfsync always`) and PostgreSQL (durable), each
//!   checked for overselling.
//! - [`ledgerbench`]: durable double-entry transfers, the ledger in-process
//!   beside PostgreSQL doing the same transfer, both verified.
//! - [`checkoutbench`]: durable 3-line checkouts beside single-SKU
//!   snap-ups, in-process and over HTTP, verified against the units held.
//! - [`peers`]: starting the peers (apt-installing them if missing) on
//!   loopback, and a minimal RESP client.

pub mod axumredis;
pub mod checkoutbench;
pub mod edgebench;
pub mod ledgerbench;
pub mod peers;
pub mod stockbench;
