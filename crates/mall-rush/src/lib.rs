//! `mall rush`: the Singles' Day rehearsal.
//!
//! A [`scenario::Scenario`] (TOML) becomes a deterministic [`plan::Plan`];
//! [`run::run`] sends it open-loop over HTTP or straight into the engine;
//! [`summary`] computes the figures; [`audit`] checks the server against
//! everything the client was told; [`report`] writes JSON and HTML.

pub mod audit;
pub mod catalog;
pub mod http;
pub mod plan;
pub mod report;
pub mod run;
pub mod scenario;
pub mod summary;
