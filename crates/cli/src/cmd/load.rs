//! `tracefold loadgen` and `tracefold gen`: synthetic events, sent or printed.

use crate::args::{Format, GenArgs, LoadgenArgs};
use crate::out::outln;
use std::io::Write as _;
use tracefold_devtools::{gen, loadgen};

/// Runs `tracefold loadgen`.
///
/// # Errors
/// When the target cannot be reached, or some events were not accepted.
pub async fn loadgen(a: LoadgenArgs) -> anyhow::Result<()> {
    tracefold_runtime::telemetry::init_logging(&Default::default());
    let target = match (a.http, a.bootstrap_servers) {
        (Some(u), _) => loadgen::Target::Http(u),
        (None, Some(b)) => loadgen::Target::Kafka { bootstrap_servers: b, topic: a.topic },
        (None, None) => anyhow::bail!("give --http URL or --bootstrap-servers"),
    };
    let opts = loadgen::LoadOptions {
        events: a.events,
        rate: loadgen::Rate::per_second(a.rate),
        batch: a.batch,
        concurrency: a.concurrency,
        progress: a.format == Format::Table,
        max_lag: a.max_lag.map(|events| loadgen::LagLimit {
            group: a.lag_group,
            events,
            by: loadgen::LagBy::Committed,
        }),
        max_retries: a.max_retries,
        gen: gen::GenOptions {
            issues: a.issues,
            users: a.users,
            seed: a.seed,
            now_secs: gen::now_secs(),
            ..Default::default()
        },
    };
    let s = loadgen::run(&target, &opts).await?;
    match a.format {
        Format::Json => outln!("{}", serde_json::to_string(&s)?),
        Format::Table => outln!("{}", loadgen::describe(&s)),
    }
    if s.failed > 0 {
        anyhow::bail!("{} events were not accepted", s.failed);
    }
    Ok(())
}

/// Runs `tracefold gen`: NDJSON on stdout.
///
/// # Errors
/// When stdout is closed.
pub fn gen(a: &GenArgs) -> anyhow::Result<()> {
    let mut g = gen::Generator::new(gen::GenOptions {
        issues: a.issues,
        seed: a.seed,
        now_secs: a.now.unwrap_or_else(gen::now_secs),
        ..Default::default()
    });
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for _ in 0..a.events {
        writeln!(out, "{}", g.next_event().json)?;
    }
    out.flush()?;
    Ok(())
}
