//! What every service binary does the same way: the common flags (`--config`,
//! `--bootstrap-servers`, `--clickhouse-url`, `--listen`), config loading with environment
//! overrides, logging, signal handling, the ops endpoints, and running the service loop on a
//! blocking thread until SIGTERM or SIGINT.

use crate::config::{ClickHouseConfig, KafkaConfig, TelemetryConfig};
use crate::telemetry::{self, Health};
use crate::Shutdown;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::PathBuf;

/// Flags every service takes; they win over the config file and the environment.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServiceArgs {
    /// TOML config file.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Kafka bootstrap servers (overrides the config).
    #[arg(long)]
    pub bootstrap_servers: Option<String>,
    /// ClickHouse HTTP URL (overrides the config; for services that use ClickHouse).
    #[arg(long)]
    pub clickhouse_url: Option<String>,
    /// Listen address: the HTTP endpoint of the producer, the ops endpoints of the others.
    #[arg(long)]
    pub listen: Option<String>,
}

/// A service's config as the common machinery sees it.
pub trait ServiceConfig: DeserializeOwned + Serialize + Default + Send + 'static {
    /// Kafka settings.
    fn kafka(&mut self) -> &mut KafkaConfig;
    /// ClickHouse settings, for services that use ClickHouse.
    fn clickhouse(&mut self) -> Option<&mut ClickHouseConfig>;
    /// The listen address (`--listen`).
    fn listen(&mut self) -> &mut String;
    /// Logging.
    fn telemetry(&self) -> &TelemetryConfig;
    /// Checks the values the types allow but the service cannot use (a negative span, one
    /// whose arithmetic would overflow, a zero where at least one is needed).
    ///
    /// # Errors
    /// The dotted key and what is wrong with its value.
    fn check(&self) -> Result<(), (String, String)> {
        Ok(())
    }
}

/// Implements [`ServiceConfig`] for a config struct with `kafka` and `telemetry` fields, the
/// listen address at `$($listen).+`, (with `clickhouse`) a `clickhouse` field, and (with
/// `check`) the struct's own `check` as [`ServiceConfig::check`].
#[macro_export]
macro_rules! service_config {
    ($ty:ty, listen: $($listen:ident).+) => {
        $crate::service_config!(@impl $ty, None, [], $($listen).+);
    };
    ($ty:ty, listen: $($listen:ident).+, clickhouse) => {
        $crate::service_config!(@impl $ty, Some, [], $($listen).+);
    };
    ($ty:ty, listen: $($listen:ident).+, clickhouse, check) => {
        $crate::service_config!(@impl $ty, Some, [
            fn check(&self) -> Result<(), (String, String)> {
                <$ty>::check(self)
            }
        ], $($listen).+);
    };
    (@impl $ty:ty, $ch:ident, [$($check:tt)*], $($listen:ident).+) => {
        impl $crate::service::ServiceConfig for $ty {
            fn kafka(&mut self) -> &mut $crate::config::KafkaConfig {
                &mut self.kafka
            }
            fn clickhouse(&mut self) -> Option<&mut $crate::config::ClickHouseConfig> {
                $crate::service_config!(@ch self, $ch)
            }
            fn listen(&mut self) -> &mut String {
                &mut self.$($listen).+
            }
            fn telemetry(&self) -> &$crate::config::TelemetryConfig {
                &self.telemetry
            }
            $($check)*
        }
    };
    (@ch $self:ident, None) => {
        None
    };
    (@ch $self:ident, Some) => {
        Some(&mut $self.clickhouse)
    };
}

impl ServiceArgs {
    /// Loads the config (file, environment, then these flags).
    ///
    /// # Errors
    /// A config error naming the key and the file.
    pub fn load<C: ServiceConfig>(&self) -> anyhow::Result<C> {
        // The flags below set no value that `check` looks at.
        let mut cfg: C = crate::config::load_checked(self.config.as_deref(), std::env::vars(), C::check)?;
        if let Some(b) = &self.bootstrap_servers {
            cfg.kafka().bootstrap_servers.clone_from(b);
        }
        if let Some(u) = &self.clickhouse_url {
            match cfg.clickhouse() {
                Some(ch) => ch.url.clone_from(u),
                // Accepted so that one command line fits every service; said so on stderr.
                None => eprintln!("note: --clickhouse-url is ignored: this service does not use ClickHouse"),
            }
        }
        if let Some(l) = &self.listen {
            cfg.listen().clone_from(l);
        }
        Ok(cfg)
    }
}

/// Runs the consumer service `name`: loads `C` from `args`, sets up logging, signals, the ops
/// endpoints and the liveness watchdog, and runs `run` on a blocking thread until a shutdown
/// signal. A panic in `run` is an error (the process exits non-zero).
///
/// # Errors
/// Config errors, or what `run` returns.
pub async fn run_blocking<C: ServiceConfig>(
    name: &str,
    args: &ServiceArgs,
    run: impl FnOnce(&C, &Shutdown, &Health) -> anyhow::Result<()> + Send + 'static,
) -> anyhow::Result<()> {
    let mut cfg: C = args.load()?;
    telemetry::init_logging(cfg.telemetry());
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();
    let health = Health::named(name);
    telemetry::spawn_ops(cfg.listen(), health.clone(), shutdown.clone())?;
    telemetry::spawn_watchdog(vec![health.clone()]);
    let (s, h) = (shutdown.clone(), health.clone());
    let result = tokio::task::spawn_blocking(move || telemetry::run_guarded(&h, || run(&cfg, &s, &h))).await?;
    shutdown.trigger();
    result
}

/// A loop that [`run_loops`] runs beside a service's main loop: its thread's name, its health
/// (a child of the service's, [`Health::child`]) and the loop.
pub type Beside<'a> = (String, &'a Health, Box<dyn FnOnce() -> anyhow::Result<()> + Send + 'a>);

/// Runs each of `others` on a thread of its own (a panic caught as an error,
/// [`telemetry::run_guarded`]) and `main` on this one. Any loop ending, done or failed, triggers
/// `shutdown`, so that the others end too: a service's loops live and die together. A thread
/// that cannot start ends the ones started (and `main` is not run). Every loop's error is in
/// the result.
///
/// # Errors
/// The loops' errors, and a thread that could not start.
pub fn run_loops<'a>(
    shutdown: &'a Shutdown,
    others: Vec<Beside<'a>>,
    main: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    std::thread::scope(|scope| {
        let mut started = Vec::with_capacity(others.len());
        let mut result = Ok(());
        for (name, health, run) in others {
            let spawned = std::thread::Builder::new().name(name).spawn_scoped(scope, move || {
                let r = telemetry::run_guarded(health, run);
                shutdown.trigger();
                r
            });
            match spawned {
                Ok(t) => started.push(t),
                Err(e) => {
                    shutdown.trigger();
                    result = Err(anyhow::Error::new(e).context("cannot start a loop's thread"));
                    break;
                }
            }
        }
        if result.is_ok() {
            result = main();
        }
        shutdown.trigger();
        for t in started {
            let r = t.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a loop's thread panicked")));
            result = result.and(r);
        }
        result
    })
}

/// Runs `work` (a request to `server`, e.g. ClickHouse) on `rt` from a loop's blocking thread
/// until it ends, `limit` passes (an error: "`server` did not answer within ... ms"), or `stop`
/// fires (`Ok(None)`); calls `beat` every second meanwhile, since a wait for a server is not a
/// stall of the loop. For the requests of clients that set no deadline of their own: a server
/// that takes the connection and never answers would hold the loop for ever.
///
/// # Errors
/// `work`'s error, or `limit` passed.
pub fn wait_bounded<T, E>(
    rt: &tokio::runtime::Runtime,
    server: &str,
    limit: std::time::Duration,
    stop: Option<&Shutdown>,
    beat: &dyn Fn(),
    work: impl std::future::Future<Output = Result<T, E>>,
) -> anyhow::Result<Option<T>>
where
    anyhow::Error: From<E>,
{
    rt.block_on(async {
        tokio::pin!(work);
        let deadline = tokio::time::sleep(limit);
        tokio::pin!(deadline);
        let stopped = async {
            match stop {
                Some(s) => s.wait().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(stopped);
        loop {
            tokio::select! {
                r = &mut work => return Ok(Some(r?)),
                () = &mut stopped => return Ok(None),
                () = &mut deadline => anyhow::bail!("{server} did not answer within {} ms", limit.as_millis()),
                () = tokio::time::sleep(std::time::Duration::from_secs(1)) => beat(),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Until `shutdown` fires, then `Ok`.
    fn until(shutdown: &Shutdown) -> anyhow::Result<()> {
        while !shutdown.is_triggered() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        Ok(())
    }

    #[test]
    fn one_loop_failing_ends_the_others_and_its_error_is_returned() {
        let shutdown = Shutdown::new();
        let service = Health::named("svc");
        let (a, b) = (service.child("svc-1"), service.child("svc-2"));
        let others: Vec<Beside<'_>> = vec![
            ("svc-1".into(), &a, Box::new(|| until(&shutdown))),
            ("svc-2".into(), &b, Box::new(|| anyhow::bail!("loop 2 failed"))),
        ];
        let r = run_loops(&shutdown, others, || until(&shutdown));
        assert!(format!("{:#}", r.unwrap_err()).contains("loop 2 failed"));
        assert!(shutdown.is_triggered());
    }

    #[test]
    fn a_panicking_loop_is_an_error_and_the_main_loop_ending_ends_the_rest() {
        let shutdown = Shutdown::new();
        let service = Health::named("svc");
        let a = service.child("svc-1");
        let others: Vec<Beside<'_>> = vec![("svc-1".into(), &a, Box::new(|| panic!("boom")))];
        let r = run_loops(&shutdown, others, || until(&shutdown));
        assert!(format!("{:#}", r.unwrap_err()).contains("boom"));
        let (b, done) = (service.child("svc-2"), Shutdown::new());
        let others: Vec<Beside<'_>> = vec![("svc-2".into(), &b, Box::new(|| until(&done)))];
        assert!(run_loops(&done, others, || Ok(())).is_ok(), "main done: the other loop is ended, no error");
    }
}
