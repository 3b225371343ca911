//! Benchmark harnesses of `tracefold bench-ingest`, `bench-writer` and `bench-pipeline`: each
//! runs the real services on the embedded Kafka (and the local ClickHouse where it needs one),
//! and returns a report the command prints as a table or as JSON. `bench-detector` measures
//! the detector's engine alone (its memory with many issues). `bench-queries` times the
//! analyst queries on a large database generated inside ClickHouse. `bench-storage` measures
//! bytes on disk per event against a raw-row table.
//!
//! Harnesses check their counts after the report is printed: [`WriterReport::check`],
//! [`PipelineReport::check`].

pub(crate) mod cpu;
mod detector;
mod ingest;
mod pipeline;
mod procs;
mod queries;
mod storage;
mod writer;

pub use cpu::CpuSnapshot;
pub use detector::{detector, DetectorOptions, DetectorReport};
pub use ingest::{ingest, IngestOptions, IngestReport};
pub use pipeline::{pipeline, PipelineOptions, PipelineReport, ServiceFigures, POOL_EVENTS, WARMUP_EVENTS};
pub use procs::{proc_figures, ProcFigures, ServiceProcesses, SERVICES};
pub use queries::{cookbook_queries, queries, QueriesOptions, QueriesReport, QueryTime};
pub use storage::{memory, storage, Arrival, MemoryCase, StorageCase, StorageOptions, StorageReport};
pub use writer::{writer, WriterOptions, WriterReport};

/// Benchmarks log warnings only: their own output is the result.
fn quiet_logging() {
    tracefold_runtime::telemetry::init_logging(&tracefold_runtime::config::TelemetryConfig {
        log_level: "warn".into(),
        ..Default::default()
    });
}
