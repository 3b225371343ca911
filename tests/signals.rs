//! Signals end to end: events through the pipeline (event time in the past, so minutes pass
//! at once) reach the detector; a new issue and a spike reach a local webhook receiver with
//! the signed JSON body, a Slack-format receiver gets its message, and the signals topic holds
//! them.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracefold_cli::dev::{DevConfig, Pipeline};
use tracefold_detector::notify::{sign, Channel, Target};
use tracefold_detector::signal::{Kind, Signal};
use tracefold_tests::TestDb;

type Seen = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

async fn receiver() -> (String, Seen) {
    let seen: Seen = Arc::default();
    // Any path: the Telegram channel posts to /bot<token>/sendMessage.
    let app = axum::Router::new()
        .fallback(post(|State(s): State<Seen>, h: HeaderMap, b: Bytes| async move {
            s.lock().unwrap().push((h, b));
            "ok"
        }))
        .with_state(seen.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (url, seen)
}

fn event(issue: &str, func: &str, ts: i64, user: u64) -> String {
    format!(
        r#"{{"timestamp":{ts},"platform":"javascript","release":"web@2.0","environment":"production","user":{{"id":"u{user}"}},
        "request":{{"url":"https://shop.example.com/cart"}},"contexts":{{"browser":{{"name":"Firefox","version":"133.0"}},"os":{{"name":"Linux","version":"6.8"}}}},
        "exception":[{{"type":"{issue}","value":"boom","stacktrace":{{"frames":[{{"function":"{func}","filename":"https://cdn.example.com/app.js","in_app":true}}]}}}}]}}"#
    )
    .replace('\n', " ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_issues_and_spikes_reach_webhooks_and_the_signals_topic() {
    let db = TestDb::new("signals").await;
    let (hook, seen) = receiver().await;
    let seen_url = hook.clone();
    let (slack, slack_seen) = receiver().await;
    let (discord, discord_seen) = receiver().await;
    let (telegram_api, telegram_seen) = receiver().await;
    let telegram_api = telegram_api.trim_end_matches("/hook").to_owned();
    let mut cfg = DevConfig { clickhouse: db.cfg.clone(), ..DevConfig::default() };
    cfg.detector.channels = vec![
        Channel {
            name: "hook".into(),
            target: Target::Webhook { url: hook, secret: "s3cret".into() },
            types: vec![],
            projects: vec![],
            rules: vec![],
            cooldown_min: 30,
        },
        Channel {
            name: "slack".into(),
            target: Target::Slack { url: slack },
            types: vec![Kind::Spike],
            projects: vec![],
            rules: vec![],
            cooldown_min: 30,
        },
        Channel {
            name: "discord".into(),
            target: Target::Discord { url: discord },
            types: vec![Kind::Spike],
            projects: vec![],
            rules: vec![],
            cooldown_min: 30,
        },
        Channel {
            name: "telegram".into(),
            target: Target::Telegram { api: telegram_api, token: "X".into(), chat_id: "42".into() },
            types: vec![Kind::Spike],
            projects: vec![],
            rules: vec![],
            cooldown_min: 30,
        },
        // A dead endpoint: retried in the background, never in the way of the others.
        Channel {
            name: "dead".into(),
            target: Target::Webhook { url: "http://127.0.0.1:9/nothing".into(), secret: String::new() },
            types: vec![],
            projects: vec![],
            rules: vec![],
            cooldown_min: 30,
        },
    ];
    // One partition keeps event time in order end to end.
    let pipeline = Pipeline::start(cfg, "127.0.0.1:0", Some(1), true).await.unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let t0 = (now - 3 * 3600) / 60 * 60;
    // 45 minutes of 8 events a minute, then 400 in one minute, then three quiet minutes.
    let mut lines = Vec::new();
    for m in 0..45 {
        for i in 0..8 {
            lines.push(event("TypeError", "renderCart", t0 + m * 60 + i * 5, (m * 8 + i) as u64 % 50));
        }
    }
    for i in 0..400 {
        lines.push(event("TypeError", "renderCart", t0 + 45 * 60 + (i % 60), 1000 + i as u64));
    }
    for m in 46..49 {
        for i in 0..8 {
            lines.push(event("TypeError", "renderCart", t0 + m * 60 + i * 5, i as u64));
        }
    }
    lines.push(event("RangeError", "checkout", t0 + 48 * 60, 7));
    let client = reqwest::Client::new();
    for chunk in lines.chunks(500) {
        let r = client
            .post(format!("http://{}/api/v1/projects/web/events", pipeline.http_addr))
            .header("content-type", "application/x-ndjson")
            .body(chunk.join("\n"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }

    let deadline = Instant::now() + Duration::from_secs(90);
    let signals = loop {
        let got: Vec<(HeaderMap, Bytes)> = seen.lock().unwrap().clone();
        let kinds: Vec<Signal> = got.iter().map(|(_, b)| serde_json::from_slice(b).unwrap()).collect();
        if kinds.iter().filter(|s| s.kind == Kind::NewIssue).count() >= 2 && kinds.iter().any(|s| s.kind == Kind::Spike)
        {
            // Every webhook body is signed with the channel's secret.
            for (h, b) in &got {
                let expected = format!("sha256={}", sign("s3cret", std::str::from_utf8(b).unwrap()));
                assert_eq!(h.get("x-tracefold-signature").unwrap().to_str().unwrap(), expected);
            }
            break kinds;
        }
        assert!(Instant::now() < deadline, "signals so far: {kinds:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let spikes: Vec<&Signal> = signals.iter().filter(|s| s.kind == Kind::Spike).collect();
    assert_eq!(spikes.len(), 1, "one spike: {signals:#?}");
    let s = spikes[0];
    assert_eq!(s.count, 400);
    assert_eq!(s.minute, tracefold_model::time::format_rfc3339((t0 + 45 * 60) * 1000).replace(".000Z", "Z"));
    assert!(s.baseline_per_minute > 6.0 && s.baseline_per_minute < 10.0, "{}", s.baseline_per_minute);
    assert_eq!(s.title, "TypeError: boom");
    assert_eq!(s.top_frames, ["https://cdn.example.com/app.js in renderCart"]);
    assert_eq!(
        (s.request_url.as_str(), s.browser.as_str(), s.os.as_str()),
        ("https://shop.example.com/cart", "Firefox 133.0", "Linux 6.8")
    );
    assert_eq!((s.release.as_str(), s.environment.as_str()), ("web@2.0", "production"));
    assert_eq!(s.command, format!("tracefold issue {} --project web", s.issue_id));
    let titles: Vec<&str> = signals.iter().filter(|s| s.kind == Kind::NewIssue).map(|s| s.title.as_str()).collect();
    assert_eq!(titles.len(), 2, "{titles:?}");
    // The chat channels only take spikes, each in its own format: exactly what the
    // notifier's request builder makes for that signal.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let body = |seen: &Seen| -> Vec<serde_json::Value> {
        seen.lock().unwrap().iter().map(|(_, b)| serde_json::from_slice(b).unwrap()).collect()
    };
    let slack = body(&slack_seen);
    assert_eq!(slack, vec![tracefold_detector::notify::request(&Target::Slack { url: String::new() }, s).1]);
    assert!(slack[0]["text"].as_str().unwrap().starts_with("*Spike in web: TypeError: boom (400 events in 1 min"));
    assert_eq!(
        body(&discord_seen),
        vec![tracefold_detector::notify::request(&Target::Discord { url: String::new() }, s).1]
    );
    let tg = Target::Telegram { api: String::new(), token: "X".into(), chat_id: "42".into() };
    assert_eq!(body(&telegram_seen), vec![tracefold_detector::notify::request(&tg, s).1]);
    assert_eq!(telegram_seen.lock().unwrap().len(), 1);
    // And the signals topic holds them, keyed by issue.
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::Message;
    let c: BaseConsumer =
        tracefold_runtime::kafka::consumer_config(&tracefold_tests::kafka(&pipeline.bootstrap_servers()), "sig-reader")
            .create()
            .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..3 {
        tpl.add_partition_offset("tracefold.signals", p, rdkafka::Offset::Beginning).unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut on_topic = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while on_topic.len() < signals.len() && Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            let sig: Signal = serde_json::from_slice(m.payload().unwrap()).unwrap();
            assert_eq!(m.key().unwrap(), format!("web/{}", sig.issue_id).as_bytes());
            on_topic.push(sig.signal_id);
        }
    }
    let mut expected: Vec<String> = signals.iter().map(|s| s.signal_id.clone()).collect();
    expected.sort();
    on_topic.sort();
    assert_eq!(on_topic, expected);

    // A detector that starts over (a new consumer group: it re-reads every aggregate) does
    // not alert again: known issues come from ClickHouse, sent signals from the topic.
    assert_eq!(db.wait_for_total(lines.len() as u64, Duration::from_secs(60)).await, lines.len() as u64);
    let before = seen.lock().unwrap().len();
    let mut dcfg = tracefold_detector::Config {
        kafka: tracefold_tests::kafka(&pipeline.bootstrap_servers()),
        clickhouse: db.cfg.clone(),
        ..Default::default()
    };
    dcfg.detector.group_id = "tracefold-detector-restarted".into();
    dcfg.detector.listen = String::new();
    dcfg.detector.channels = vec![Channel {
        name: "hook".into(),
        target: Target::Webhook { url: seen_url.clone(), secret: "s3cret".into() },
        types: vec![],
        projects: vec![],
        rules: vec![],
        cooldown_min: 30,
    }];
    let shutdown = tracefold_runtime::Shutdown::new();
    let (sd, h) = (shutdown.clone(), tracefold_runtime::telemetry::Health::default());
    let h2 = h.clone();
    let restarted = std::thread::spawn(move || tracefold_detector::service::run(&dcfg, &sd, &h2));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !h.is_ready() {
        assert!(Instant::now() < deadline, "the restarted detector came up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Long enough to re-read everything and close every minute.
    tokio::time::sleep(Duration::from_secs(6)).await;
    shutdown.trigger();
    restarted.join().unwrap().unwrap();
    assert_eq!(seen.lock().unwrap().len(), before, "no signal repeated after a restart");
    pipeline.stop().await.unwrap();
}
