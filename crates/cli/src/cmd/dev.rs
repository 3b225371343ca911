//! `tracefold dev`: the whole pipeline in one process on an embedded Kafka (librdkafka's mock
//! cluster) against a ClickHouse server, until Ctrl-C; optionally a sample load and the top
//! issues it made.

use crate::args::DevArgs;
use anyhow::Context as _;
use std::time::Duration;
use tracefold_cli::query;
use tracefold_devtools::dev::{
    add_default_project, describe_broker, embedded_broker_backpressure, wait_for_events, DevConfig, DevProjectOrigin,
    Pipeline, DEV_KEY_FILE, DEV_PARTITIONS, STATE_DIR,
};
use tracefold_devtools::{gen, loadgen};
use tracefold_runtime::devbroker::{DevBroker, DevBrokerOptions};
use tracefold_runtime::Shutdown;

/// Runs `tracefold dev`.
///
/// # Errors
/// When the pipeline cannot start, or a service fails.
pub async fn run(a: DevArgs) -> anyhow::Result<()> {
    let mut cfg: DevConfig = tracefold_runtime::config::load(a.config.as_deref(), std::env::vars())?;
    cfg.clickhouse.url.clone_from(&a.clickhouse_url);
    if let Some(d) = &a.database {
        cfg.clickhouse.database.clone_from(d);
    }
    if let Some(url) = &a.webhook {
        cfg.detector.channels.push(tracefold_detector::notify::Channel {
            name: "dev-webhook".into(),
            target: tracefold_detector::notify::Target::Webhook { url: url.clone(), secret: String::new() },
            types: Vec::new(),
            projects: Vec::new(),
            rules: Vec::new(),
            cooldown_min: 30,
        });
    }
    // Source map uploads on, stored under the state directory, unless the config says where.
    if cfg.sourcemaps.store_url.is_empty() {
        let dir =
            std::env::current_dir().context("cannot read the working directory")?.join(STATE_DIR).join("artifacts");
        cfg.sourcemaps.store_url = reqwest::Url::from_directory_path(&dir)
            .map_err(|()| anyhow::anyhow!("cannot name {} as a file:// URL", dir.display()))?
            .to_string();
    }
    // Backpressure on by default: bounds derived from the embedded broker's retention.
    cfg.backpressure = embedded_broker_backpressure(cfg.backpressure);
    // Quiet unless `-v`: service logs go to a file, the terminal keeps WARN and above.
    let log_file = std::path::Path::new(STATE_DIR).join("logs").join("dev.log");
    let log_file = if a.verbose {
        tracefold_runtime::telemetry::init_logging(&cfg.telemetry);
        None
    } else {
        tracefold_runtime::telemetry::init_interactive_logging(&cfg.telemetry, &log_file)
            .with_context(|| format!("cannot open the log file {}", log_file.display()))?;
        Some(log_file)
    };
    let partitions = Some(a.partitions.unwrap_or(DEV_PARTITIONS));
    let broker_opts = DevBrokerOptions { brokers: a.brokers, partitions, track_requests: false };
    if a.broker_only {
        let broker = DevBroker::start_with(&cfg.topics, &broker_opts)?;
        // A reader gone already (`tracefold dev --broker-only | head -0`): the broker runs on.
        print_out(format_args!("{}\n", broker.bootstrap_servers()))?;
        eprintln!(
            "embedded Kafka running: {} (topics {}, {}, {}); Ctrl-C stops it",
            describe_broker(&broker),
            cfg.topics.events,
            cfg.topics.aggregates,
            cfg.topics.dlq
        );
        let s = Shutdown::new();
        s.trigger_on_signals();
        s.wait().await;
        return Ok(());
    }
    // A project for Sentry SDKs (`dev`, id 1) whose key stays the same from one start to the next.
    let dev_project = add_default_project(&mut cfg, std::path::Path::new(STATE_DIR))?;
    let pipeline = Pipeline::start_with(cfg.clone(), &a.listen, &broker_opts, !a.verbose).await?;
    pipeline.shutdown.trigger_on_signals();
    // A stalled loop ends the process (non-zero) instead of answering `ok` with a dead worker.
    tracefold_runtime::telemetry::spawn_watchdog(pipeline.healths());
    let url = format!("http://{}", pipeline.http_addr);
    let signals = tracefold_ui::signals::Source {
        kafka: tracefold_runtime::config::KafkaConfig {
            bootstrap_servers: pipeline.bootstrap_servers(),
            ..Default::default()
        },
        topic: cfg.topics.signals.clone(),
    };
    let ui = start_ui(&a.ui_listen, &cfg.clickhouse, &cfg.grouping, signals, &pipeline.shutdown).await?;
    let m = &pipeline.migrations;
    if !a.verbose {
        eprintln!(
            "ClickHouse {} at {}: database {} ({} migrations applied, {} already there)",
            m.server_version,
            cfg.clickhouse.url,
            cfg.clickhouse.database,
            m.applied.len(),
            m.skipped.len()
        );
    }
    eprintln!("\ntracefold dev is running");
    eprintln!("  ingest:    POST {url}/api/v1/projects/{{project}}/events   (one JSON event or NDJSON)");
    match dev_project.dsn(pipeline.http_addr) {
        Some(dsn) => {
            let whence = match dev_project.origin {
                DevProjectOrigin::NewKey => format!("new key, kept in {STATE_DIR}/{DEV_KEY_FILE}"),
                DevProjectOrigin::KeptKey => format!("key from {STATE_DIR}/{DEV_KEY_FILE}"),
                DevProjectOrigin::Config => "from the config file".to_owned(),
            };
            eprintln!("  sentry:    DSN {dsn}   (project {}, {whence})", dev_project.slug);
        }
        None => eprintln!(
            "  sentry:    no DSN: project {} of the config file has no numeric id or no key",
            dev_project.slug
        ),
    }
    eprintln!(
        "  sourcemaps: tracefold sourcemaps upload --project {} --release R --endpoint {url} --key KEY DIR   (stored in {})",
        dev_project.slug, cfg.sourcemaps.store_url
    );
    eprintln!("  ops:       {url}/metrics  {url}/healthz  {url}/readyz");
    if let Some((addr, token)) = &ui {
        eprintln!("  ui:        http://{addr}/   (resolve / ignore / reopen with the operator token {token})");
    }
    eprintln!("  kafka:     {}  ({})", pipeline.bootstrap_servers(), describe_broker(&pipeline.broker));
    let b = cfg.backpressure.bounds();
    if b.is_off() {
        eprintln!("  backpressure: off");
    } else {
        eprintln!(
            "  backpressure: new events get 503/429 while the grouper is over {} events or {} bytes behind on a partition (0 = no bound)",
            b.events, b.bytes
        );
    }
    match &log_file {
        Some(f) => eprintln!("  logs:      {}   (here: WARN and above; -v for everything)", f.display()),
        None => eprintln!("  logs:      here (-v)"),
    }
    eprintln!("  try:       tracefold loadgen --http {url} --events 10000");
    eprintln!("             tracefold top --since 1h --clickhouse-url {}", cfg.clickhouse.url);
    eprintln!("  Ctrl-C stops it\n");
    if a.sample_events > 0 {
        // Events already stored by an earlier run are not this load's.
        let client = tracefold_store::client::client(&cfg.clickhouse);
        let before = tracefold_store::aggregates::visible_events(&client, &cfg.clickhouse.database).await?;
        let summary = sample_load(&url, &a).await?;
        eprintln!("sample load: {}", loadgen::describe(&summary));
        let stored = wait_for_events(&cfg.clickhouse, before, summary.accepted, Duration::from_secs(120), true).await?;
        let rows = tracefold_store::issues::top_issues(&client, &cfg.clickhouse.database, 2 * 3600, 15, None).await?;
        // `tracefold dev --exit | head -1`: once the reader is gone, nothing more is printed and
        // the pipeline stops as it would have (drained), exit status 0.
        let open = print_out(format_args!(
            "\nTop issues (last 2 hours), {stored} sample events stored:\n\n{}",
            query::render_top(&rows)
        ))?;
        // The detector judges the records a moment after the writer stored them: its signals
        // for this load are counted once it has taken every record the grouper emitted.
        if !wait_for_detector(Duration::from_secs(30)).await {
            eprintln!("the detector has not judged every sample record after 30 s; signals so far:");
        }
        if open {
            print_out(format_args!("\n{}\n", signals_line(&pipeline.bootstrap_servers(), a.exit)))?;
        }
        if a.exit {
            pipeline.shutdown.trigger();
        }
    }
    pipeline.shutdown.wait().await;
    eprintln!("stopping ...");
    pipeline.stop().await
}

/// Writes `args` to stdout; false when the reader went away (a closed pipe: `tracefold dev
/// --exit | head -1`). Unlike `println!` it does not panic then, and unlike `out::outln!` it
/// does not exit: the pipeline in this process is stopped and drained as usual.
///
/// # Errors
/// Another write error.
fn print_out(args: std::fmt::Arguments<'_>) -> anyhow::Result<bool> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_fmt(args).and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e).context("cannot write to stdout"),
    }
}

/// Starts the web UI on `listen` (unless `off`) until `shutdown`, with the pipeline's grouping
/// config (so that it marks the frames the grouper fingerprinted); its address and the operator
/// token (`TRACEFOLD_UI_OPERATOR_TOKEN`, else a random one for this run).
async fn start_ui(
    listen: &str,
    ch: &tracefold_runtime::config::ClickHouseConfig,
    grouping: &tracefold_fingerprint::GroupingConfig,
    signals: tracefold_ui::signals::Source,
    shutdown: &Shutdown,
) -> anyhow::Result<Option<(std::net::SocketAddr, String)>> {
    if listen == "off" {
        return Ok(None);
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} for the UI (--ui-listen off: no UI)"))?;
    let addr = listener.local_addr()?;
    let token = std::env::var("TRACEFOLD_UI_OPERATOR_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()));
    let cfg = tracefold_ui::Config {
        clickhouse: ch.clone(),
        signals: Some(signals),
        operator_token: Some(token.clone()),
        grouping: grouping.clone(),
    };
    let stop = shutdown.clone();
    tokio::spawn(async move {
        if let Err(e) = tracefold_ui::serve(listener, cfg, async move { stop.wait().await }).await {
            tracing::error!(error = %e, "ui server failed");
        }
    });
    Ok(Some((addr, token)))
}

async fn sample_load(url: &str, a: &DevArgs) -> anyhow::Result<loadgen::LoadSummary> {
    let load = loadgen::LoadOptions {
        events: a.sample_events,
        rate: loadgen::Rate::Unpaced,
        batch: 200,
        concurrency: 4,
        progress: true,
        max_lag: None,
        max_retries: loadgen::DEFAULT_MAX_RETRIES,
        gen: gen::GenOptions {
            issues: a.sample_issues,
            now_secs: gen::now_secs(),
            seed: rand::random(),
            ..Default::default()
        },
    };
    loadgen::run(&loadgen::Target::Http(url.to_owned()), &load).await
}

/// One line with the signals the detector produced so far in this process, per kind, read from
/// its counter (`tracefold_detector_signals_total`), and where to see them.
fn signals_line(bootstrap: &str, exiting: bool) -> String {
    let text = tracefold_runtime::telemetry::metrics_handle().render();
    let counts = signal_counts(&text);
    let kinds = ["new_issue", "regression", "spike", "threshold"];
    let parts: Vec<String> = kinds.iter().map(|k| format!("{} {k}", counts.get(*k).copied().unwrap_or(0))).collect();
    let details = if exiting {
        "each is a `signal` line of the log".to_owned()
    } else {
        format!("details: tracefold signals --bootstrap-servers {bootstrap}")
    };
    format!("signals so far: {} ({details})", parts.join(", "))
}

/// Waits until the detector (in this process) has counted as many records as the grouper emitted
/// aggregates (it counts records only once the signals they cause are emitted: no lookup or
/// judgement of theirs still waits), or `timeout` passes; whether it got there.
async fn wait_for_detector(timeout: Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let text = tracefold_runtime::telemetry::metrics_handle().render();
        let judged = counter_sum(&text, tracefold_detector::metrics::RECORDS_TOTAL);
        if judged >= counter_sum(&text, tracefold_grouper::metrics::AGGREGATES_TOTAL) {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The sum over all labels of counter `name` in a Prometheus text rendering.
fn counter_sum(text: &str, name: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.strip_prefix(name))
        .filter(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        .filter_map(|rest| rest.rsplit_once(' ').and_then(|(_, v)| v.trim().parse::<f64>().ok()))
        .map(|v| v as u64)
        .sum()
}

/// `type` label -> count of `tracefold_detector_signals_total` in a Prometheus text rendering.
fn signal_counts(text: &str) -> std::collections::BTreeMap<String, u64> {
    let prefix = format!("{}{{", tracefold_detector::metrics::SIGNALS_TOTAL);
    let mut out = std::collections::BTreeMap::new();
    for rest in text.lines().filter_map(|l| l.strip_prefix(prefix.as_str())) {
        let Some((labels, value)) = rest.split_once("} ") else { continue };
        let kind = labels.split(',').find_map(|l| l.strip_prefix("type=\"")).map(|v| v.trim_end_matches('"'));
        if let (Some(kind), Ok(n)) = (kind, value.trim().parse::<f64>()) {
            *out.entry(kind.to_owned()).or_insert(0) += n as u64;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn signal_counts_read_the_counter_per_type() {
        let text = "# TYPE tracefold_detector_signals_total counter\n\
                    tracefold_detector_signals_total{type=\"new_issue\"} 12\n\
                    tracefold_detector_signals_total{type=\"spike\"} 1\n\
                    tracefold_detector_signals_deduplicated_total{type=\"spike\"} 4\n";
        let c = super::signal_counts(text);
        assert_eq!(c.get("new_issue"), Some(&12));
        assert_eq!(c.get("spike"), Some(&1));
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn counter_sums_add_every_label_set_of_that_counter_only() {
        let text = "# TYPE tracefold_grouper_aggregates_total counter\n\
                    tracefold_grouper_aggregates_total 2972\n\
                    tracefold_grouper_aggregates_total_other 5\n\
                    tracefold_detector_records_total{partition=\"0\"} 10\n\
                    tracefold_detector_records_total{partition=\"1\"} 7\n";
        assert_eq!(super::counter_sum(text, "tracefold_grouper_aggregates_total"), 2972);
        assert_eq!(super::counter_sum(text, "tracefold_detector_records_total"), 17);
        assert_eq!(super::counter_sum(text, "tracefold_writer_rows_total"), 0);
    }
}
