//! Development tools of tracefold: the event generator, the load generator, the whole
//! pipeline in one process, grouping and detection quality, and the benchmark harnesses.
//!
//! The `tracefold` command line calls into this crate for `gen`, `loadgen`, `dev`,
//! `grouping-quality`, `detection-quality` and the `bench-*` commands; the end-to-end tests
//! use it directly (the generator and [`dev::Pipeline`]), without the command line's crate.
//! [`render`] (tables, sparklines, printable text) lives here because both sides draw
//! tables: the quality reports here, the analyst queries in the command line.
#![warn(missing_docs)]

pub mod bench;
pub mod detection;
pub mod dev;
pub mod gen;
pub mod loadgen;
pub mod quality;
pub mod render;
