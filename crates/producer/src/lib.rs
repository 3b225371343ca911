//! The tracefold producer: an HTTP endpoint that validates error events and publishes them
//! to the raw events topic with an idempotent, batching, compressing Kafka producer.
#![warn(missing_docs)]

pub mod auth;
pub mod backpressure;
pub mod config;
pub mod delivery;
pub mod http;
pub mod metrics;
pub mod outcomes;
pub mod sentry;
pub mod sourcemaps;

pub use config::Config;

use anyhow::Context as _;
use rdkafka::producer::{FutureProducer, Producer};
use std::sync::Arc;
use std::time::Duration;
use tracefold_runtime::telemetry::{ops_router, Health};
use tracefold_runtime::Shutdown;

/// The events producer's librdkafka defaults over tracefold's (`[kafka.librdkafka]` still wins):
/// `linger.ms` 1 instead of 5. Every request waits for Kafka's acknowledgement of its events,
/// and a partition's batch waits up to `linger.ms` for more messages before it is sent, so
/// the linger is a floor under every request's time. With 5 the Kafka part of a request was
/// 7.7 to 8 ms and the whole request about 11 ms at best, so 8 clients in flight with 100
/// events each could not pass about 73,000 events/s however many cores were free; with 1 or 2
/// it was down to 3.3 to 3.8 ms in the runs the machine's load disturbed least, the batches
/// as compressed (benches/README.md, "What bounds the rate").
pub const EVENTS_PRODUCER: &[(&str, &str)] = &[("linger.ms", "1")];

/// Builds the Kafka producer for `cfg` and checks that the events topic exists.
///
/// # Errors
/// When the producer cannot be created or the topic is missing.
pub fn kafka_producer(cfg: &Config) -> anyhow::Result<delivery::EventsProducer> {
    let producer: delivery::EventsProducer =
        tracefold_runtime::kafka::producer_config_with(&cfg.kafka, cfg.http.delivery_timeout_ms, EVENTS_PRODUCER)
            .create_with_context(delivery::AckContext::default())
            .context("cannot create the Kafka producer")?;
    tracefold_runtime::kafka::check_topics(
        producer.client(),
        &[&cfg.topics.events, &cfg.topics.outcomes],
        Duration::from_secs(10),
    )?;
    Ok(producer)
}

/// Loads the producer's config as every service does (defaults, the `--config` file, the
/// `TRACEFOLD__` environment, flags) and checks the values its types allow but the producer
/// cannot use ([`Config::check`], the `[[projects]]` entries), naming the file in the error:
/// [`serve`] checks them too but knows no file.
///
/// # Errors
/// The load's error, or `invalid config value in FILE: KEY ...`.
pub fn load_config(args: &tracefold_runtime::service::ServiceArgs) -> anyhow::Result<Config> {
    let cfg: Config = args.load()?;
    if let Err(e) = cfg.check().and_then(|()| auth::Projects::new(&cfg).map(drop)) {
        let prefix = tracefold_runtime::config::ENV_PREFIX;
        let env = std::env::vars().any(|(k, _)| k.starts_with(prefix) && k.len() > prefix.len());
        let from = tracefold_runtime::config::source_name(args.config.as_deref(), env);
        anyhow::bail!("invalid config value in {from}: {e}");
    }
    Ok(cfg)
}

/// Serves the ingestion endpoint (and `/metrics`, `/healthz`, `/readyz`, ready when every
/// `health` is) on `listener` until `shutdown` fires, then flushes the producer.
///
/// # Errors
/// When Kafka is unusable at start-up or the server fails.
pub async fn serve(
    cfg: Config,
    listener: tokio::net::TcpListener,
    shutdown: Shutdown,
    health: Health,
    others: Vec<Health>,
) -> anyhow::Result<()> {
    cfg.check().map_err(|e| anyhow::anyhow!("invalid producer config: {e}"))?;
    let projects =
        Arc::new(auth::Projects::new(&cfg).map_err(|e| anyhow::anyhow!("invalid [[projects]] config: {e}"))?);
    let cfg = Arc::new(cfg);
    let c = cfg.clone();
    let producer = tokio::task::spawn_blocking(move || kafka_producer(&c)).await??;
    let mut all = vec![health.clone()];
    all.extend(others);
    let mut state = http::AppState::new(cfg.clone(), producer.clone(), projects);
    state.sourcemaps = sourcemaps::Uploads::from_config(&cfg).map_err(|e| anyhow::anyhow!(e))?.map(Arc::new);
    let outcomes = state.outcomes.clone();
    let (bp, kafka, topic, gate, stop) =
        (cfg.backpressure.clone(), cfg.kafka.clone(), cfg.topics.events.clone(), state.gate.clone(), shutdown.clone());
    let h = health.clone();
    let watcher =
        tokio::task::spawn_blocking(move || backpressure::spawn_watcher(&bp, &kafka, &topic, gate, stop, &h)).await??;
    let app = http::router(state).merge(ops_router(all));
    health.set_ready(true);
    // The producer has no work loop of its own: a ticker on the async runtime beats, so that
    // a wedged runtime (every worker blocked) shows as a stall. Its deliveries to Kafka are a
    // loop of their own (`producer-delivery`), beaten while they make progress: failures that
    // go on with no success turn the health unhealthy (see delivery::DeliveryProgress).
    let delivering = health.child("producer-delivery");
    let progress = producer.context().progress.clone();
    let (beat, delivery_beat, stop) = (health.clone(), delivering.clone(), shutdown.clone());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    beat.beat();
                    if progress.progressing() {
                        delivery_beat.beat();
                    }
                }
                () = stop.wait() => break,
            }
        }
    });
    // Outcome counts go to their topic every few seconds, and once more after the server stopped,
    // through a producer of their own: the events producer's queue room is reserved per request
    // (http::QueueRoom) and must not be taken by outcome records.
    let c = cfg.clone();
    let outcome_producer: FutureProducer = tokio::task::spawn_blocking(move || {
        tracefold_runtime::kafka::producer_config(&c.kafka, c.http.delivery_timeout_ms)
            .create()
            .context("cannot create the outcomes producer")
    })
    .await??;
    let (o, p, t, stop) = (outcomes.clone(), outcome_producer.clone(), cfg.topics.outcomes.clone(), shutdown.clone());
    let flusher = tokio::spawn(async move {
        let mut tick = tokio::time::interval(outcomes::FLUSH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => o.flush(&p, &t).await,
                () = stop.wait() => break,
            }
        }
    });
    tracing::info!(addr = %listener.local_addr()?, "producer listening");
    let s = shutdown.clone();
    let header_timeout = Duration::from_millis(cfg.http.header_timeout_ms);
    tracefold_runtime::server::serve(listener, app, header_timeout, async move {
        s.wait().await;
    })
    .await
    .context("http server failed")?;
    health.set_stopped();
    delivering.set_stopped();
    let _ = flusher.await;
    let last = outcomes.flush(&outcome_producer, &cfg.topics.outcomes);
    if tokio::time::timeout(Duration::from_secs(10), last).await.is_err() {
        tracing::warn!("the last outcome counts were not acknowledged within 10 s; they are lost");
    }
    tokio::task::spawn_blocking(move || {
        if let Some(w) = watcher {
            let _ = w.join();
        }
        producer.flush(Duration::from_secs(10))
    })
    .await??;
    tracing::info!("producer stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracefold_runtime::service::ServiceArgs;

    /// A value the producer cannot use is refused at load with its key and its file named
    /// (the promise for every config error), before anything starts.
    #[test]
    fn unusable_values_name_the_key_and_the_file() {
        let dir = std::env::temp_dir().join(format!("tracefold-producer-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cases = [
            ("[http]\nmax_concurrent_requests = 0\n", "http.max_concurrent_requests"),
            ("[backpressure]\nmax_lag_events = 10\ncheck_interval_ms = 0\n", "backpressure.check_interval_ms"),
            ("[[projects]]\nslug = \"web\"\nkeys = [\"short\"]\n", "projects[0].keys"),
        ];
        for (i, (toml, key)) in cases.into_iter().enumerate() {
            let path = dir.join(format!("producer-{i}.toml"));
            std::fs::write(&path, toml).unwrap();
            let args = ServiceArgs { config: Some(path.clone()), ..ServiceArgs::default() };
            let e = load_config(&args).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains(&path.display().to_string()), "{e}");
        }
        let path = dir.join("producer-ok.toml");
        std::fs::write(&path, "[http]\nmax_concurrent_requests = 8\n").unwrap();
        let args = ServiceArgs { config: Some(path), ..ServiceArgs::default() };
        assert_eq!(load_config(&args).unwrap().http.max_concurrent_requests, 8);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
