//! The quality scores (`detection-quality`, `grouping-quality`) and the benchmarks
//! (`bench-ingest`, `bench-writer`, `bench-pipeline`, `bench-detector`, `bench-queries`,
//! `bench-storage`): the harnesses are in
//! `tracefold_devtools`; this prints their reports as tables or JSON.

use crate::args::{
    BenchDetectorArgs, BenchIngestArgs, BenchPipelineArgs, BenchQueriesArgs, BenchStorageArgs, BenchWriterArgs,
    DetectionPath, DetectionQualityArgs, Format, GroupingQualityArgs, PaceBy,
};
use crate::out::{out, outln};
use tracefold_devtools::{bench, detection, quality};

/// Runs `tracefold detection-quality`.
///
/// # Errors
/// When stdout cannot take the JSON.
pub fn detection_quality(a: &DetectionQualityArgs) -> anyhow::Result<()> {
    let path = match a.path {
        DetectionPath::Model => detection::Path::Model,
        DetectionPath::Engine => detection::Path::Engine,
    };
    let r = detection::evaluate(&detection::DetectionOptions { issues: a.issues, weeks: a.weeks, seed: a.seed, path });
    match a.format {
        Format::Json => outln!("{}", serde_json::to_string(&r)?),
        Format::Table => out!("{}", detection::render(&r, a.seed)),
    }
    Ok(())
}

/// Runs `tracefold grouping-quality`.
///
/// # Errors
/// When stdout cannot take the JSON.
pub fn grouping_quality(a: &GroupingQualityArgs) -> anyhow::Result<()> {
    let r = quality::evaluate(&quality::CorpusOptions { bugs: a.bugs, events: a.events, seed: a.seed });
    match a.format {
        Format::Json => outln!("{}", serde_json::to_string(&r)?),
        Format::Table => out!("{}", quality::render(&r)),
    }
    Ok(())
}

/// Runs `tracefold bench-ingest`.
///
/// # Errors
/// When the producer or the embedded Kafka cannot start.
pub async fn bench_ingest(a: &BenchIngestArgs) -> anyhow::Result<()> {
    let opts = bench::IngestOptions {
        events: a.events,
        batch: a.batch,
        concurrency: a.concurrency,
        progress: a.format == Format::Table,
        librdkafka: a.librdkafka.clone(),
    };
    let r = bench::ingest(&opts).await?;
    match a.format {
        Format::Json => outln!("{}", r.json()),
        Format::Table => out!("{}", r.table()),
    }
    Ok(())
}

/// Runs `tracefold bench-writer`.
///
/// # Errors
/// When Kafka or ClickHouse is unusable, or ClickHouse holds another number of rows than
/// were sent (after the report is printed).
pub async fn bench_writer(a: &BenchWriterArgs) -> anyhow::Result<()> {
    let r = bench::writer(&bench::WriterOptions {
        records: a.records,
        partitions: a.partitions,
        batch_max_rows: a.batch_max_rows,
        batch_max_bytes: a.batch_max_bytes,
        consumers: a.writer_consumers,
        clickhouse: a.ch.config(),
    })
    .await?;
    match a.format {
        Format::Json => outln!("{}", r.json()),
        Format::Table => out!("{}", r.table()),
    }
    r.check()
}

/// Runs `tracefold bench-pipeline`.
///
/// # Errors
/// When the pipeline cannot start, or ClickHouse counts another number of events than Kafka
/// accepted (after the report is printed).
pub async fn bench_pipeline(a: &BenchPipelineArgs) -> anyhow::Result<()> {
    let opts = bench::PipelineOptions {
        events: a.events,
        issues: a.issues,
        partitions: a.partitions,
        max_lag_per_partition: a.max_lag_per_partition,
        batch_max_age_ms: a.batch_max_age_ms,
        writer_batch_max_age_ms: a.writer_batch_max_age_ms,
        pace_by_commits: a.pace_by.unwrap_or(if a.processes { PaceBy::Committed } else { PaceBy::Read })
            == PaceBy::Committed,
        grouper_consumers: a.grouper_consumers,
        processes: a.processes,
        clickhouse: a.ch.config(),
    };
    let r = bench::pipeline(&opts).await?;
    match a.format {
        Format::Json => outln!("{}", r.json()),
        Format::Table => out!("{}", r.table()),
    }
    r.check()
}

/// Runs `tracefold bench-detector`.
///
/// # Errors
/// When stdout cannot take the JSON.
pub fn bench_detector(a: &BenchDetectorArgs) -> anyhow::Result<()> {
    let mut opts = bench::DetectorOptions { issues: a.issues, minutes: a.minutes, ..Default::default() };
    if let Some(n) = a.max_issues {
        opts.engine.max_issues = n;
    }
    let r = bench::detector(&opts);
    match a.format {
        Format::Json => outln!("{}", serde_json::to_string(&r)?),
        Format::Table => out!("{}", r.table()),
    }
    Ok(())
}

/// Runs `tracefold bench-queries`.
///
/// # Errors
/// When ClickHouse refuses the generated data or a query fails.
pub async fn bench_queries(a: &BenchQueriesArgs) -> anyhow::Result<()> {
    let opts = bench::QueriesOptions {
        events: a.events,
        issues_per_hour: a.issues,
        rows: a.rows,
        days: a.days,
        runs: a.runs,
        clickhouse: a.ch.config(),
        keep: a.keep,
        progress: true,
    };
    let r = bench::queries(&opts).await?;
    match a.format {
        Format::Json => outln!("{}", r.json()),
        Format::Table => out!("{}\n{}\n", r.table(), r.json()),
    }
    Ok(())
}

/// Runs `tracefold bench-storage`.
///
/// # Errors
/// When ClickHouse refuses the data or is unreachable.
pub async fn bench_storage(a: &BenchStorageArgs) -> anyhow::Result<()> {
    let opts = bench::StorageOptions {
        events: a.events,
        issues: a.issues.clone(),
        zipf_s: a.zipf,
        batch_events: a.batch_events,
        memory_issues: a.memory_issues.iter().copied().filter(|&n| n > 0).collect(),
        memory_events_per_issue: a.memory_events_per_issue,
        clickhouse: a.ch.config(),
        progress: true,
    };
    let r = bench::storage(&opts).await?;
    match a.format {
        Format::Json => outln!("{}", r.json()),
        Format::Table => out!("{}\n{}\n", r.table(), r.json()),
    }
    Ok(())
}
