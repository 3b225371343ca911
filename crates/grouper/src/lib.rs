//! The tracefold grouper: reads raw events, fingerprints them, pre-aggregates per
//! (project, issue, minute, release, environment) in replayable batches, and publishes the
//! aggregates; rejected events go to the DLQ with the reason.
#![warn(missing_docs)]

pub mod batch;
pub mod config;
pub mod dedup;
pub mod metrics;
pub mod outcomes;
pub mod service;
pub mod symbolicate;

pub use config::Config;
