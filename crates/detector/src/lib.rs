//! The tracefold detector's core: spike detection on per-minute counts, and the seeded
//! traffic simulator that measures it against a baseline rule.
#![warn(missing_docs)]

pub mod simulate;
pub mod spike;
