//! The tracefold detector: new-issue, regression, spike and threshold signals from the
//! partial aggregates, on event time; new-issue storms folded into digests; the seeded traffic simulator that measures spike
//! detection against a baseline rule, on the spike model alone and through the engine.
#![warn(missing_docs)]

pub mod config;
pub mod deliveries;
pub mod engine;
pub mod metrics;
pub mod notify;
pub mod replay;
pub mod sent;
pub mod service;
pub mod signal;
pub mod simulate;
pub mod spike;
pub mod storm;

pub use config::Config;
