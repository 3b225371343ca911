//! tracefold's ClickHouse, in one place: the client, the schema and its migrations (one
//! source, three flavours), the row types, every query the command line, the writer and the
//! detector run, and the typed issue status. No other crate holds SQL text (tests aside):
//! callers pass parameters and get typed rows back.
//!
//! Values are bound (`?` with `.bind`); identifiers (database and table names) cannot be, so
//! they are checked to be `[A-Za-z0-9_]+` ([`client::ident`]) before they are formatted in.
#![warn(missing_docs)]

pub mod aggregates;
pub mod artifacts;
pub mod client;
pub mod deliveries;
pub mod detector;
mod error;
pub mod issues;
pub mod migrate;
pub mod outcomes;
pub mod rankings;
pub mod rows;
mod sql;
pub mod storage;
pub mod synthetic;
#[cfg(test)]
mod testdb;
pub mod ui;

pub use clickhouse::Client;
pub use error::{Error, Result};
pub use issues::IssueStatus;
