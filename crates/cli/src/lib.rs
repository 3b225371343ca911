//! The `tracefold` command line as a library: the dev pipeline, the load generator, the
//! analyst queries and terminal rendering (tests and benchmarks drive these directly).
#![warn(missing_docs)]

pub mod dev;
pub mod gen;
pub mod loadgen;
pub mod quality;
pub mod query;
pub mod render;
