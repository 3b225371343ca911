//! The tracefold writer: reads partial aggregates and stores them in ClickHouse exactly once.
//! The schema, the rows and the queries are `tracefold-store`'s.
#![warn(missing_docs)]

pub mod batch;
pub mod bench;
pub mod config;
pub mod metrics;
pub mod outcomes;
pub mod rankings;
pub mod service;

pub use config::Config;
