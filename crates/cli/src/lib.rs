//! The `tracefold` command line as a library: the analyst queries and their terminal
//! rendering (tests drive these directly). The generators, the dev pipeline and the
//! harnesses are in `tracefold_devtools`; so are the table helpers, re-exported here as
//! [`render`] because the queries draw tables too.
#![warn(missing_docs)]

pub mod outcomes;
pub mod query;
pub mod sourcemaps;
pub use tracefold_devtools::render;
