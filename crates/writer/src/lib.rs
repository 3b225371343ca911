//! The tracefold writer: reads partial aggregates and stores them in ClickHouse exactly once;
//! also owns the ClickHouse schema and its migrations.
#![warn(missing_docs)]

pub mod config;
pub mod metrics;
pub mod migrate;
pub mod service;
pub mod store;

pub use config::Config;
