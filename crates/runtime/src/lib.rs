//! Shared runtime pieces of tracefold's services: configuration loading, Kafka client
//! construction, the consumer runtime every consumer service runs on, topic definitions, logs and metrics, shutdown, and the embedded dev broker.
#![warn(missing_docs)]

pub mod config;
pub mod consumer;
pub mod devbroker;
pub mod failpoint;
pub mod kafka;
pub mod server;
pub mod service;
pub mod shutdown;
pub mod telemetry;
pub mod topics;

pub use shutdown::Shutdown;
