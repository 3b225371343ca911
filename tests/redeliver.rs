//! Delivery survives restarts: a signal a channel never took (its receiver failing every
//! attempt) is handed to it again by the next detector that starts, exactly once, while a
//! channel that took it gets nothing again; one never taken and older than
//! `redeliver_max_age_min` is given up and counted.
//!
//! The real detector binary runs as a child process (three lives, stopped with SIGTERM), the
//! grouper and writer on threads, librdkafka's mock cluster, a real ClickHouse (its
//! `signal_deliveries` table is read back). Local webhook receivers answer 500 or 200 as the
//! test says. No test sleeps for a fixed time: each waits, with a deadline, for a metric, a
//! log line or a receiver's requests.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracefold_detector::metrics::{
    DELIVERY_RECORDS_TOTAL, NOTIFICATIONS_TOTAL, REDELIVERED_TOTAL, REDELIVERY_EXPIRED_TOTAL, SIGNALS_TOTAL,
};
use tracefold_detector::signal::{Kind, Signal};
use tracefold_runtime::devbroker::DevBroker;
use tracefold_tests::procs::{Env, Svc};
use tracefold_tests::{ServiceThread, TestDb};

/// How long any one awaited condition may take.
const DEADLINE: Duration = Duration::from_secs(120);

const EVENTS: &str = "tracefold.events";

async fn wait_for<T>(what: &str, check: impl FnMut() -> Result<T, String>) -> T {
    tracefold_tests::wait_for(what, DEADLINE, check).await
}

/// A local webhook receiver that answers 500 until told to accept.
#[derive(Clone)]
struct Receiver {
    url: String,
    accepting: Arc<AtomicBool>,
    /// (accepted, body) of every request.
    hits: Arc<Mutex<Vec<(bool, Bytes)>>>,
}

type ReceiverState = (Arc<AtomicBool>, Arc<Mutex<Vec<(bool, Bytes)>>>);

impl Receiver {
    async fn start(accepting: bool) -> Self {
        let accepting = Arc::new(AtomicBool::new(accepting));
        let hits: Arc<Mutex<Vec<(bool, Bytes)>>> = Arc::default();
        let app = axum::Router::new()
            .fallback(axum::routing::post(|State((accepting, hits)): State<ReceiverState>, body: Bytes| async move {
                let ok = accepting.load(Ordering::SeqCst);
                hits.lock().unwrap().push((ok, body));
                if ok {
                    StatusCode::OK
                } else {
                    StatusCode::INTERNAL_SERVER_ERROR
                }
            }))
            .with_state((accepting.clone(), hits.clone()));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        Self { url, accepting, hits }
    }

    fn accept(&self) {
        self.accepting.store(true, Ordering::SeqCst);
    }

    /// (refused, accepted) requests so far.
    fn counts(&self) -> (usize, usize) {
        let hits = self.hits.lock().unwrap();
        let accepted = hits.iter().filter(|(ok, _)| *ok).count();
        (hits.len() - accepted, accepted)
    }

    /// The signals it took.
    fn signals(&self) -> Vec<Signal> {
        self.hits
            .lock()
            .unwrap()
            .iter()
            .filter(|(ok, _)| *ok)
            .map(|(_, b)| serde_json::from_slice(b).unwrap())
            .collect()
    }
}

/// Writes `detector.toml`: two attempts 100 ms apart, the redelivery age, and the channels.
fn write_detector_toml(env: &Env, max_age_min: u64, hooks: &[(&str, &Receiver)]) {
    let mut t = format!(
        "[kafka.librdkafka]\n\"session.timeout.ms\" = \"6000\"\n\n[detector]\ngroup_id = \"tracefold-detector-redeliver\"\n\n\
         [detector.retry]\nattempts = 2\ninitial_ms = 100\nmax_ms = 100\nredeliver_max_age_min = {max_age_min}\n"
    );
    for (name, r) in hooks {
        t.push_str(&format!(
            "\n[[detector.channels]]\nname = \"{name}\"\ntarget = {{ kind = \"webhook\", url = \"{}\" }}\n",
            r.url
        ));
    }
    std::fs::write(env.config_dir.join("detector.toml"), t).unwrap();
}

fn notifications(d: &Svc, outcome: &str) -> f64 {
    d.metric(NOTIFICATIONS_TOTAL, &format!("outcome=\"{outcome}\""))
}

/// Waits until `d` is past its start-up redelivery: its redelivery counters exist (zero or
/// not).
async fn wait_started(d: &Svc) {
    wait_for("the detector's start-up redelivery", || {
        let text = d.metrics_text();
        let has = |name: &str| text.lines().any(|l| l.starts_with(&format!("{name}{{")));
        if has(REDELIVERED_TOTAL) && has(REDELIVERY_EXPIRED_TOTAL) {
            Ok(())
        } else {
            Err("not yet".into())
        }
    })
    .await;
}

/// Waits until the child's metric `name` (summed over its series) is `n`, failing beyond.
async fn wait_metric(d: &Svc, name: &str, filter: &str, n: f64) {
    wait_for(&format!("{name}{{{filter}}} = {n}"), || match d.metric(name, filter) {
        v if v == n => Ok(()),
        v if v > n => panic!("{name}{{{filter}}} = {v}, more than {n}"),
        v => Err(v.to_string()),
    })
    .await;
}

#[derive(Debug, clickhouse::Row, serde::Deserialize)]
struct Final {
    channel: String,
    outcome: String,
    attempts: u32,
    error: String,
}

/// Per channel, the highest-ranked delivery row of `signal_id`.
async fn final_rows(db: &TestDb, signal_id: &str) -> Vec<(String, String, u32, String)> {
    let q = format!(
        "SELECT channel, argMax(outcome, outcome_rank) AS outcome, max(attempts) AS attempts, \
         argMax(error, outcome_rank) AS error FROM {}.signal_deliveries WHERE signal_id = ? \
         GROUP BY channel ORDER BY channel",
        db.cfg.database
    );
    let rows: Vec<Final> = db.client.query(&q).bind(signal_id).fetch_all().await.unwrap();
    rows.into_iter().map(|r| (r.channel, r.outcome, r.attempts, r.error)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_a_channel_never_took_goes_to_it_once_after_a_restart_and_expires_past_the_max_age() {
    let (good, flaky, dead) = (Receiver::start(true).await, Receiver::start(false).await, Receiver::start(false).await);
    let hooks = [("good", &good), ("flaky", &flaky), ("dead", &dead)];
    let db = TestDb::new("redeliver").await;
    let broker = DevBroker::start(1, &tracefold_tests::topics(), Some(1)).unwrap();
    let b = broker.bootstrap_servers();
    let grouper = ServiceThread::grouper(tracefold_tests::grouper_config(&b));
    let writer = ServiceThread::writer(tracefold_tests::writer_config(&b, &db));
    let config_dir = std::env::temp_dir().join(format!("tracefold-redeliver-{}", std::process::id()));
    std::fs::create_dir_all(&config_dir).unwrap();
    let env = Env { bootstrap: b.clone(), ch_url: db.cfg.url.clone(), database: db.cfg.database.clone(), config_dir };

    // First life: one new issue; "good" takes it, "flaky" and "dead" refuse both attempts.
    write_detector_toml(&env, 60, &hooks);
    let first = env.spawn("detector");
    let ts = tracefold_model::time::now_secs() - 3600;
    let event = format!(
        r#"{{"event_id":"{:032x}","project":"web","timestamp":{ts},"platform":"python","level":"error","exception":[{{"type":"RedeliverError","value":"boom","stacktrace":{{"frames":[{{"function":"handle","filename":"app.py","in_app":true}}]}}}}]}}"#,
        1
    );
    tracefold_tests::publish(&b, EVENTS, &[event.into_bytes()]).await;
    assert_eq!(db.wait_for_total(1, DEADLINE).await, 1, "the event is stored");
    wait_metric(&first, SIGNALS_TOTAL, "type=\"new_issue\"", 1.0).await;
    wait_metric(&first, NOTIFICATIONS_TOTAL, "outcome=\"failed\"", 2.0).await;
    assert_eq!(notifications(&first, "sent"), 1.0);
    // queued x3, delivered, failed x2: written before it stops.
    wait_metric(&first, DELIVERY_RECORDS_TOTAL, "", 6.0).await;
    assert_eq!(first.metric(REDELIVERED_TOTAL, ""), 0.0, "nothing to hand again on a fresh start");
    assert!(first.term(DEADLINE).success());
    let signal = good.signals().pop().expect("good took the signal");
    assert_eq!(signal.kind, Kind::NewIssue);
    assert_eq!((good.counts(), flaky.counts(), dead.counts()), ((0, 1), (2, 0), (2, 0)));

    // Second life: "flaky" accepts now. It gets the signal again, once; "good", which took it,
    // does not; "dead" is tried again and fails again.
    flaky.accept();
    let second = env.spawn("detector");
    wait_started(&second).await;
    assert_eq!(second.metric(REDELIVERED_TOTAL, "channel=\"webhook\""), 2.0, "to flaky and dead, not to good");
    wait_metric(&second, NOTIFICATIONS_TOTAL, "outcome=\"sent\"", 1.0).await;
    wait_metric(&second, NOTIFICATIONS_TOTAL, "outcome=\"failed\"", 1.0).await;
    wait_metric(&second, DELIVERY_RECORDS_TOTAL, "", 4.0).await;
    assert_eq!(second.metric(SIGNALS_TOTAL, ""), 0.0, "no signal produced again");
    assert!(second.term(DEADLINE).success());
    assert_eq!(flaky.signals(), std::slice::from_ref(&signal), "the same signal, once");
    assert_eq!((good.counts(), flaky.counts(), dead.counts()), ((0, 1), (2, 1), (4, 0)));

    // Third life, with a redelivery age of 0: the signal "dead" never took is given up (an
    // `expired` row, counted); nothing goes anywhere again.
    write_detector_toml(&env, 0, &hooks);
    let third = env.spawn("detector");
    wait_started(&third).await;
    assert_eq!(third.metric(REDELIVERY_EXPIRED_TOTAL, "channel=\"webhook\""), 1.0);
    assert_eq!(third.metric(REDELIVERED_TOTAL, ""), 0.0);
    wait_metric(&third, DELIVERY_RECORDS_TOTAL, "", 1.0).await;
    // Redelivery is done at start-up and no new event came: nothing was handed to a channel.
    assert_eq!(third.metric(NOTIFICATIONS_TOTAL, ""), 0.0, "no notification in the third life");
    assert!(third.term(DEADLINE).success());
    assert_eq!((good.counts(), flaky.counts(), dead.counts()), ((0, 1), (2, 1), (4, 0)));

    // What ClickHouse holds, per channel: the outcome that ranks highest, the attempts of
    // every life.
    let rows = final_rows(&db, &signal.signal_id).await;
    let short: Vec<(&str, &str, u32)> = rows.iter().map(|(c, o, a, _)| (c.as_str(), o.as_str(), *a)).collect();
    assert_eq!(short, [("dead", "expired", 4), ("flaky", "delivered", 3), ("good", "delivered", 1)]);
    assert_eq!(rows[0].3, "status 500 Internal Server Error", "the last error, kept when expired");

    grouper.stop().unwrap();
    writer.stop().unwrap();
    let _ = std::fs::remove_dir_all(&env.config_dir);
}
