//! Command bodies: one function per command, taking that command's flags from `crate::args`.

pub mod dev;
pub mod fingerprint;
pub mod issues;
pub mod load;
pub mod measure;
pub mod migrate;
pub mod outcomes;
pub mod signals;
pub mod sourcemaps;
pub mod ui;
