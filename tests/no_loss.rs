//! No accepted event is lost or counted twice, end to end over HTTP, even when the load is
//! faster than the pipeline and the consumers die: the producer pushes back (503/429 with
//! `Retry-After`) before the broker's retention could delete unread events, `tracefold
//! loadgen` waits and sends again, and the grouper counts re-sent copies once.
//!
//! Sized for CI by default; `TRACEFOLD_NOLOSS_EVENTS` and `TRACEFOLD_NOLOSS_RATE` make the
//! same tests run the full-size loads whose figures docs/operations.md gives (100,000 unpaced events;
//! 150,000 at 15,000/s with four kills of each consumer: `TRACEFOLD_NOLOSS_KILLS`).

use std::time::{Duration, Instant};
use tracefold_devtools::dev::{embedded_broker_backpressure, DevConfig, Pipeline, DEV_PARTITIONS};
use tracefold_devtools::{gen, loadgen};
use tracefold_runtime::devbroker::DevBroker;
use tracefold_runtime::telemetry::Health;
use tracefold_runtime::Shutdown;
use tracefold_tests::procs::{assert_killed, eventually, serial, stored_rows_and_identities, sum, Env, Observer};
use tracefold_tests::TestDb;

const EVENTS: &str = "tracefold.events";
const AGGREGATES: &str = "tracefold.aggregates";
const GROUPER: &str = "tracefold-grouper";
const WRITER: &str = "tracefold-writer";
/// Generous: two cores shared with the services and the load.
const LONG: Duration = Duration::from_secs(240);

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn load(events: u64, rate: u64, seed: u64) -> loadgen::LoadOptions {
    loadgen::LoadOptions {
        events,
        rate: loadgen::Rate::per_second(rate),
        batch: 100,
        concurrency: 8,
        progress: false,
        gen: gen::GenOptions { issues: 50, now_secs: gen::now_secs(), seed, ..Default::default() },
        max_lag: None,
        max_retries: loadgen::DEFAULT_MAX_RETRIES,
    }
}

/// Sums the outcome quantities of `outcome` stored for the last hours.
async fn outcome_total(db: &TestDb, outcome: &str) -> u64 {
    let r = tracefold_store::outcomes::outcomes(&db.client, &db.cfg.database, 3 * 3600, None).await.unwrap();
    r.totals.iter().filter(|t| t.outcome == outcome).map(|t| t.quantity).sum()
}

/// `tracefold dev`'s defaults (embedded Kafka with its partitions, backpressure derived from
/// its retention) and an unpaced `tracefold loadgen --http`: ClickHouse ends with exactly the
/// accepted number, the producer's outcomes say the same, and nothing was lost to retention.
#[test]
fn an_unpaced_http_load_on_dev_defaults_is_stored_exactly() {
    serial(async {
        let n = env_u64("TRACEFOLD_NOLOSS_EVENTS", 30_000);
        let db = TestDb::new("noloss_dev").await;
        let mut cfg = DevConfig { clickhouse: db.cfg.clone(), ..DevConfig::default() };
        cfg.backpressure = embedded_broker_backpressure(cfg.backpressure);
        let pipeline =
            Pipeline::start(cfg, "127.0.0.1:0", Some(DEV_PARTITIONS), true).await.expect("the pipeline starts");
        let url = format!("http://{}", pipeline.http_addr);
        let summary = loadgen::run(&loadgen::Target::Http(url), &load(n, 0, 11)).await.expect("the load runs");
        eprintln!("loadgen: {}", loadgen::describe(&summary));
        assert_eq!((summary.accepted, summary.failed), (n, 0), "every event accepted, after waits if told to");
        let t0 = Instant::now();
        let stored = db.wait_for_total(summary.accepted, LONG).await;
        eprintln!("stored {stored} events {:.1} s after the load ended", t0.elapsed().as_secs_f64());
        assert_eq!(stored, summary.accepted, "exactly the accepted events are in ClickHouse");
        let t0 = Instant::now();
        loop {
            let accepted = outcome_total(&db, "accepted").await;
            if accepted == n {
                break;
            }
            assert!(t0.elapsed() < LONG, "accepted outcomes {accepted} of {n}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert_eq!(outcome_total(&db, "lost").await, 0, "nothing lost to retention");
        assert_eq!(db.total_events().await, n, "and no copy arrives later");
        pipeline.stop().await.expect("a clean stop");
    });
}

/// Kills the service `kind` with SIGKILL once its group is behind the end of its topic (it
/// holds work it has not committed), proves the kill, and starts a successor.
async fn kill_and_restart(
    env: &Env,
    kafka: &Observer,
    svc: tracefold_tests::procs::Svc,
) -> tracefold_tests::procs::Svc {
    let kind = svc.kind;
    let (group, topic) = if kind == "grouper" { (GROUPER, EVENTS) } else { (WRITER, AGGREGATES) };
    eventually(&format!("{group} is behind the end of {topic}"), LONG, |last| {
        let (cm, end) = (kafka.committed_offsets(group, topic), kafka.high_watermarks(topic));
        *last = format!("committed {cm:?}, end {end:?}");
        (sum(&cm) < sum(&end)).then_some(())
    })
    .await;
    assert_killed(kind, svc.kill9());
    // Down for a while: the load keeps coming, the lag grows.
    tokio::time::sleep(Duration::from_secs(2)).await;
    env.spawn(kind)
}

/// The grouper and the writer as separate processes, killed with SIGKILL (each twice by
/// default) during a paced HTTP load; the producer pushes back while the grouper is down. Every
/// event the producer accepted is in ClickHouse exactly once, no aggregate is stored twice, and
/// nothing was lost to retention.
#[test]
fn sigkill_of_the_consumers_under_an_http_load_loses_and_doubles_nothing() {
    serial(async {
        let n = env_u64("TRACEFOLD_NOLOSS_EVENTS", 60_000);
        let rate = env_u64("TRACEFOLD_NOLOSS_RATE", 3_000);
        let kills = env_u64("TRACEFOLD_NOLOSS_KILLS", 2);
        let db = TestDb::new("noloss_kill").await;
        let broker = DevBroker::start(1, &Default::default(), Some(8)).unwrap();
        let bootstrap = broker.bootstrap_servers();
        let kafka = Observer::new(&bootstrap);
        // Quick rebalances after a kill; small batches, many to die in; two consumer loops in
        // the grouper's process, sharing the partitions (killed together).
        let grouper = "[grouper]\nbatch_max_events = 2000\nbatch_max_age_ms = 300\nconsumers = 2\n\n\
                       [kafka.librdkafka]\n\"session.timeout.ms\" = \"6000\"\n";
        let writer = "[writer]\nbatch_max_age_ms = 300\nretry_initial_ms = 100\nretry_max_ms = 1000\n\n\
                      [kafka.librdkafka]\n\"session.timeout.ms\" = \"6000\"\n";
        let env =
            Env::create("noloss", &bootstrap, &tracefold_tests::clickhouse_url(), &db.cfg.database, grouper, writer);

        // The producer, with the bound `tracefold dev` derives from the embedded broker's
        // retention, and a lower one in events so that a consumer down for seconds trips it.
        let mut pcfg = tracefold_producer::Config {
            kafka: tracefold_tests::kafka(&bootstrap),
            backpressure: embedded_broker_backpressure(Default::default()),
            ..Default::default()
        };
        pcfg.backpressure.max_lag_events = Some(rate.max(1000) / 2);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (shutdown, health) = (Shutdown::new(), Health::default());
        tokio::spawn(tracefold_producer::serve(pcfg, listener, shutdown.clone(), health.clone(), Vec::new()));
        eventually("the producer is ready", LONG, |_| health.is_ready().then_some(())).await;

        let mut g = env.spawn("grouper");
        let mut w = env.spawn("writer");
        eventually("the grouper's two consumer loops", LONG, |last| {
            let loops = g.logged_json("consumer started").len();
            *last = format!("{loops} started");
            (loops == 2).then_some(())
        })
        .await;
        let opts = load(n, rate, 12);
        let target = loadgen::Target::Http(url);
        let loading = tokio::spawn(async move { loadgen::run(&target, &opts).await });
        for _ in 0..kills {
            g = kill_and_restart(&env, &kafka, g).await;
            w = kill_and_restart(&env, &kafka, w).await;
        }
        assert!(!loading.is_finished(), "the kills happened during the load (raise TRACEFOLD_NOLOSS_EVENTS)");
        let summary = loading.await.unwrap().expect("the load runs");
        eprintln!("loadgen: {}", loadgen::describe(&summary));
        assert_eq!(summary.failed, 0, "every event accepted in the end");
        assert!(summary.waits > 0, "the producer pushed back while a consumer was down");

        let stored = db.wait_for_total(summary.accepted, LONG).await;
        assert_eq!(stored, summary.accepted, "every accepted event exactly once");
        kafka.wait_caught_up(GROUPER, EVENTS, LONG).await;
        kafka.wait_caught_up(WRITER, AGGREGATES, LONG).await;
        assert_eq!(db.total_events().await, summary.accepted, "still exact once both groups committed everything");
        let (rows, ids) = stored_rows_and_identities(&db).await;
        assert_eq!(rows, ids, "no aggregate record stored twice");
        assert_eq!(outcome_total(&db, "lost").await, 0, "nothing lost to retention");
        assert_eq!(g.metric("tracefold_grouper_events_lost_total", ""), 0.0);
        assert_eq!(w.metric("tracefold_writer_events_lost_total", ""), 0.0);
        for svc in [g, w] {
            let st = svc.term(Duration::from_secs(30));
            assert!(st.success(), "{st}");
        }
        shutdown.trigger();
    });
}
