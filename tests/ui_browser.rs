//! The web UI in a real browser: headless Chromium (Debian's `chromium`, which `scripts/deps.sh`
//! installs; `TRACEFOLD_CHROMIUM` names another binary) loads each page of a UI over a pipeline
//! fed with generated events, the numbers it shows are checked against ClickHouse, a hostile
//! title injects nothing, a click on "Resolve" changes the status, and a screenshot of each
//! page is written for review (`target/tmp/ui-screenshots/`).
//!
//! The browser is driven over the DevTools protocol with a minimal WebSocket client (below):
//! the page itself has no script; the test uses script only to read the DOM and click.
//! A missing browser fails the test, it never skips it.

use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;
use tracefold_devtools::dev::{DevConfig, Pipeline};
use tracefold_tests::{generate, post_ndjson, TestDb};

const TOKEN: &str = "browser-test-token";
const HOSTILE_TYPE: &str = "<svg/onload=window.pwned=3>Evil\"Error";
const HOSTILE: &str = "<script>window.pwned=1</script><img src=x onerror=\"window.pwned=2\"> \u{202E}طويل 中文";

fn chromium() -> PathBuf {
    let name = std::env::var("TRACEFOLD_CHROMIUM").unwrap_or_else(|_| "chromium".into());
    let found = if name.contains('/') {
        Some(PathBuf::from(&name)).filter(|p| p.exists())
    } else {
        std::env::var_os("PATH")
            .into_iter()
            .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .map(|d| d.join(&name))
            .find(|p| p.exists())
    };
    found.unwrap_or_else(|| {
        panic!(
            "{name} not found: this test needs headless Chromium. Run scripts/deps.sh \
             (apt-get install chromium) or set TRACEFOLD_CHROMIUM"
        )
    })
}

/// A WebSocket client connection (RFC 6455), text frames only: enough for DevTools.
struct Ws {
    stream: TcpStream,
}

impl Ws {
    async fn connect(url: &str) -> Self {
        let rest = url.strip_prefix("ws://").expect("ws:// URL");
        let (host, path) = rest.split_at(rest.find('/').unwrap());
        let mut stream = TcpStream::connect(host).await.unwrap();
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(stream.read_u8().await.unwrap());
        }
        let head = String::from_utf8_lossy(&head);
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        Self { stream }
    }

    async fn send(&mut self, text: &str) {
        let data = text.as_bytes();
        let mut frame = vec![0x81u8];
        match data.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mask = [0x37u8, 0xfa, 0x21, 0x3d];
        frame.extend_from_slice(&mask);
        frame.extend(data.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&frame).await.unwrap();
    }

    /// The next text message (continuation frames joined; control frames other than close
    /// skipped).
    async fn recv(&mut self) -> String {
        let mut msg = Vec::new();
        loop {
            let b0 = self.stream.read_u8().await.unwrap();
            let b1 = self.stream.read_u8().await.unwrap();
            let len = match b1 & 0x7f {
                126 => u64::from(self.stream.read_u16().await.unwrap()),
                127 => self.stream.read_u64().await.unwrap(),
                n => u64::from(n),
            };
            let mask = if b1 & 0x80 != 0 {
                let mut m = [0u8; 4];
                self.stream.read_exact(&mut m).await.unwrap();
                Some(m)
            } else {
                None
            };
            let mut payload = vec![0u8; len as usize];
            self.stream.read_exact(&mut payload).await.unwrap();
            if let Some(m) = mask {
                payload.iter_mut().enumerate().for_each(|(i, b)| *b ^= m[i % 4]);
            }
            match b0 & 0x0f {
                0x8 => panic!("DevTools closed the connection"),
                0x0..=0x2 => msg.extend_from_slice(&payload),
                _ => continue,
            }
            if b0 & 0x80 != 0 {
                return String::from_utf8(msg).unwrap();
            }
        }
    }
}

/// A DevTools session with one page.
struct Cdp {
    ws: Ws,
    next: u64,
    events: Vec<Value>,
}

impl Cdp {
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        self.ws.send(&json!({"id": id, "method": method, "params": params}).to_string()).await;
        loop {
            let m: Value = serde_json::from_str(&self.ws.recv().await).unwrap();
            if m["id"] == id {
                assert!(m["error"].is_null(), "{method}: {m}");
                return m["result"].clone();
            }
            self.events.push(m);
        }
    }

    /// Waits for the page's load event (one seen since the last [`Cdp::expect_load`]).
    async fn wait_load(&mut self) {
        let wait = async {
            while !self.events.iter().any(|e| e["method"] == "Page.loadEventFired") {
                let m: Value = serde_json::from_str(&self.ws.recv().await).unwrap();
                self.events.push(m);
            }
        };
        tokio::time::timeout(Duration::from_secs(60), wait).await.expect("the page loads");
        self.events.clear();
    }

    async fn goto(&mut self, url: &str) {
        self.events.clear();
        let r = self.call("Page.navigate", json!({"url": url})).await;
        assert!(r["errorText"].is_null(), "{url}: {r}");
        self.wait_load().await;
    }

    /// Evaluates `expr` in the page; its value (JSON).
    async fn eval(&mut self, expr: &str) -> Value {
        let r = self.call("Runtime.evaluate", json!({"expression": expr, "returnByValue": true})).await;
        assert!(r["exceptionDetails"].is_null(), "{expr}: {r}");
        r["result"]["value"].clone()
    }

    async fn screenshot(&mut self, name: &str) -> PathBuf {
        let r = self.call("Page.captureScreenshot", json!({"format": "png", "captureBeyondViewport": true})).await;
        let png = base64(r["data"].as_str().unwrap());
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }
}

fn base64(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, &c)| acc | (u32::from(val(c)) << (18 - 6 * i)));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

/// Events and distinct users per issue, all time, as ClickHouse holds them.
fn shown_str(v: Value) -> String {
    v.as_str().unwrap_or_else(|| panic!("not text: {v}")).to_owned()
}

async fn truth(db: &TestDb) -> std::collections::BTreeMap<String, (u64, u64)> {
    #[derive(clickhouse::Row, serde::Deserialize)]
    struct T {
        issue_id: String,
        c: u64,
        u: u64,
    }
    db.client
        .query(
            "SELECT issue_id, sum(count) AS c, toUInt64(uniqExactArray(users)) AS u FROM aggregates GROUP BY issue_id",
        )
        .fetch_all::<T>()
        .await
        .unwrap()
        .into_iter()
        .map(|t| (t.issue_id, (t.c, t.u)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_shows_clickhouses_numbers_runs_no_injected_script_and_resolves() {
    let browser = chromium();
    let db = TestDb::new("ui_browser").await;
    let pipeline =
        Pipeline::start(DevConfig { clickhouse: db.cfg.clone(), ..DevConfig::default() }, "127.0.0.1:0", Some(2), true)
            .await
            .expect("pipeline starts");
    let (mut events, _) = generate(3000, 12, 7);
    // One event whose title is hostile.
    let mut hostile: Value = serde_json::from_str(&events[0].json).unwrap();
    hostile["event_id"] = json!("feedfacefeedfacefeedfacefeedface");
    hostile["exception"][0]["type"] = json!(HOSTILE_TYPE);
    hostile["exception"][0]["value"] = json!(HOSTILE);
    let mut h = events[0].clone();
    h.json = hostile.to_string();
    events.push(h);
    post_ndjson(pipeline.http_addr, &events, 500).await;
    let stored = db.wait_for_total(events.len() as u64, Duration::from_secs(120)).await;
    assert_eq!(stored, events.len() as u64);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ui = format!("http://{}", listener.local_addr().unwrap());
    let signals = tracefold_ui::signals::Source {
        kafka: tracefold_tests::kafka(&pipeline.bootstrap_servers()),
        topic: pipeline.cfg.topics.signals.clone(),
    };
    let cfg = tracefold_ui::Config {
        clickhouse: db.cfg.clone(),
        signals: Some(signals),
        operator_token: Some(TOKEN.into()),
        ..Default::default()
    };
    let server = tokio::spawn(tracefold_ui::serve(listener, cfg, std::future::pending()));

    let profile = std::env::temp_dir().join(format!("tracefold-chromium-{}", std::process::id()));
    let mut child = tokio::process::Command::new(&browser)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--remote-debugging-port=0"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--window-size=1200,900")
        .arg("about:blank")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", browser.display()));
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let find = async {
        while let Some(l) = lines.next_line().await.unwrap() {
            if let Some(u) = l.split("DevTools listening on ").nth(1) {
                return u.trim().to_owned();
            }
        }
        panic!("chromium ended without a DevTools address");
    };
    let browser_ws = tokio::time::timeout(Duration::from_secs(60), find).await.expect("chromium starts");
    // Keep draining its log so that it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let port = browser_ws.trim_start_matches("ws://").split(['/', ':']).nth(1).unwrap().to_owned();
    let targets: Value =
        reqwest::get(format!("http://127.0.0.1:{port}/json/list")).await.unwrap().json().await.unwrap();
    let page_ws = targets
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["type"] == "page")
        .and_then(|t| t["webSocketDebuggerUrl"].as_str())
        .expect("a page")
        .to_owned();
    let mut cdp = Cdp { ws: Ws::connect(&page_ws).await, next: 0, events: Vec::new() };
    cdp.call("Page.enable", json!({})).await;
    cdp.call("Runtime.enable", json!({})).await;

    // The list: every issue with ClickHouse's events and users; the hostile title is text.
    let want = truth(&db).await;
    cdp.goto(&format!("{ui}/?window=24h")).await;
    let rows = cdp
        .eval(
            "JSON.stringify([...document.querySelectorAll('#issues tbody tr')].map(r => \
             [r.dataset.issue, r.querySelector('.events').textContent, r.querySelector('.users').textContent]))",
        )
        .await;
    let rows: Vec<(String, String, String)> = serde_json::from_str(rows.as_str().unwrap()).unwrap();
    assert_eq!(rows.len(), want.len(), "every issue listed");
    for (id, events, users) in &rows {
        let (c, u) = want[id];
        assert_eq!((events.as_str(), users.as_str()), (c.to_string().as_str(), u.to_string().as_str()), "{id}");
    }
    assert_eq!(cdp.eval("document.querySelectorAll('script').length").await, 0);
    assert!(cdp.eval("window.pwned === undefined").await == true, "injected script ran");
    let texts = cdp.eval("document.body.innerText").await;
    let texts = texts.as_str().unwrap();
    assert!(texts.contains(HOSTILE_TYPE), "the hostile title shown as text: {texts}");
    let list_png = cdp.screenshot("issues").await;

    // The filter form: a search typed into it lands in the URL, and the list holds only the
    // issues whose title or culprit holds it (here: the last row's title, in upper case).
    let needle =
        shown_str(cdp.eval("[...document.querySelectorAll('#issues tbody tr a bdi')].pop().textContent").await);
    let upper = needle.to_uppercase();
    cdp.events.clear();
    cdp.eval(&format!(
        "(() => {{ const f = document.getElementById('filters'); f.querySelector('input[name=q]').value = {}; \
         f.submit(); return true; }})()",
        serde_json::to_string(&upper).unwrap()
    ))
    .await;
    cdp.wait_load().await;
    let search = shown_str(cdp.eval("new URLSearchParams(location.search).get('q')").await);
    assert_eq!(search, upper, "the search is in the URL");
    let found = cdp
        .eval(
            "JSON.stringify([...document.querySelectorAll('#issues tbody tr')].map(r => \
             r.querySelector('td.t').textContent.toLowerCase()))",
        )
        .await;
    let found: Vec<String> = serde_json::from_str(found.as_str().unwrap()).unwrap();
    assert!(!found.is_empty(), "the issue searched for is listed");
    assert!(found.len() < rows.len() || rows.len() == 1, "the search narrows the list: {found:?}");
    for text in &found {
        assert!(text.contains(&needle.to_lowercase()), "{text} does not hold {needle}");
    }

    // The issue page of the most frequent issue: numbers, then Resolve.
    cdp.goto(&format!("{ui}/?window=24h")).await;
    let (id, _, _) = rows[0].clone();
    let project = cdp.eval(&format!("document.querySelector('tr[data-issue=\"{id}\"]').dataset.project")).await;
    let project = project.as_str().unwrap().to_owned();
    cdp.goto(&format!("{ui}/issues/{project}/{id}?window=24h")).await;
    let shown = |v: Value| v.as_str().unwrap().to_owned();
    assert_eq!(shown(cdp.eval("document.getElementById('window-events').textContent").await), want[&id].0.to_string());
    assert_eq!(shown(cdp.eval("document.getElementById('users').textContent").await), want[&id].1.to_string());
    assert_eq!(shown(cdp.eval("document.getElementById('status').textContent").await), "active");
    assert!(cdp.eval("document.querySelectorAll('ol.frames li').length").await.as_u64().unwrap() > 0, "stack trace");
    // The generated events group by their stacks (default grouping config, as the UI assumes):
    // the frames that made the fingerprint carry the marker, explained above the traces.
    let marked = cdp.eval("document.querySelectorAll('ol.frames li.fp .fpm').length").await.as_u64().unwrap();
    assert!(marked > 0, "fingerprint frames marked");
    let grouping = shown(cdp.eval("document.getElementById('grouping').textContent").await);
    assert!(grouping.starts_with("Grouped by the stack trace"), "{grouping}");
    let issue_png = cdp.screenshot("issue").await;
    cdp.events.clear();
    cdp.eval(&format!(
        "(() => {{ const b = document.querySelector('button[value=resolved]'); \
         b.form.querySelector('input[name=token]').value = '{TOKEN}'; b.click(); return true; }})()"
    ))
    .await;
    cdp.wait_load().await;
    assert_eq!(shown(cdp.eval("document.getElementById('status').textContent").await), "resolved");
    assert_eq!(
        tracefold_store::issues::issue_status(&db.client, &db.cfg.database, &project, &id).await.unwrap(),
        tracefold_store::IssueStatus::Resolved,
        "ClickHouse holds the change"
    );
    let resolved_png = cdp.screenshot("issue-resolved").await;

    // The signals page: a table whose issue links lead to issue pages of this UI.
    cdp.goto(&format!("{ui}/signals")).await;
    let links = cdp
        .eval("[...document.querySelectorAll('#signals a')].every(a => a.getAttribute('href').startsWith('/issues/'))")
        .await;
    assert_eq!(links, true);
    let signals_png = cdp.screenshot("signals").await;

    // A phone-sized screen: the list fits its width.
    cdp.call(
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": true}),
    )
    .await;
    cdp.goto(&format!("{ui}/?window=24h")).await;
    let overflow = cdp.eval("document.documentElement.scrollWidth <= window.innerWidth + 1").await;
    assert_eq!(overflow, true, "no horizontal scrolling on a phone");
    let phone_png = cdp.screenshot("issues-phone").await;
    for p in [list_png, issue_png, resolved_png, signals_png, phone_png] {
        eprintln!("screenshot: {}", p.display());
    }

    drop(cdp);
    child.kill().await.unwrap();
    let _ = std::fs::remove_dir_all(&profile);
    server.abort();
    pipeline.shutdown.trigger();
    pipeline.stop().await.unwrap();
}
