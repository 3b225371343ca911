//! Synthetic error events for load tests, demos and end-to-end tests: several platforms,
//! Zipf-like issue popularity, many users, releases and environments, and the variation that
//! real traffic has (line shifts between releases, new bundle hashes, ids in messages).
//!
//! Each generated event belongs to a known issue (`issue` index); events of one issue differ
//! only in ways grouping must ignore, so a correct pipeline shows exactly one issue per index.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::fmt::Write as _;

/// Platforms the generator cycles through, with the project each reports to.
pub const PLATFORMS: &[(&str, &str)] = &[
    ("javascript", "web"),
    ("node", "api-node"),
    ("python", "api"),
    ("java", "billing"),
    ("go", "gateway"),
    ("ruby", "shop"),
    ("php", "cms"),
    ("csharp", "payments"),
    ("rust", "edge"),
];

const ENVIRONMENTS: &[&str] = &["production", "production", "production", "staging", "development"];
const BROWSERS: &[(&str, &str)] =
    &[("Chrome", "131.0.6778"), ("Firefox", "133.0"), ("Safari", "18.1"), ("Edge", "131.0.2903")];
const OSES: &[(&str, &str)] =
    &[("Windows", "11"), ("macOS", "15.1"), ("iOS", "18.1"), ("Android", "15"), ("Linux", "6.8")];
const NOUNS: &[&str] = &[
    "cart", "order", "invoice", "user", "session", "payment", "report", "shipment", "coupon", "profile", "search",
    "token",
];
const VERBS: &[&str] =
    &["load", "save", "render", "validate", "fetch", "apply", "parse", "sync", "resolve", "charge", "notify", "export"];

/// The current time in Unix seconds (0 if the clock is before 1970): the usual reference
/// time of generated events.
pub fn now_secs() -> i64 {
    tracefold_model::time::now_secs()
}

/// Generator options.
#[derive(Debug, Clone)]
pub struct GenOptions {
    /// Number of distinct issues.
    pub issues: usize,
    /// Zipf exponent of issue popularity (0 = uniform).
    pub zipf_s: f64,
    /// Distinct users.
    pub users: u64,
    /// Releases per project.
    pub releases: u32,
    /// Random seed.
    pub seed: u64,
    /// Event times are spread over this many seconds before `now_secs`.
    pub spread_secs: i64,
    /// Reference time (Unix seconds).
    pub now_secs: i64,
}

impl Default for GenOptions {
    fn default() -> Self {
        Self { issues: 50, zipf_s: 1.1, users: 5_000, releases: 4, seed: 1, spread_secs: 3600, now_secs: 0 }
    }
}

/// A deterministic stream of events.
pub struct Generator {
    opts: GenOptions,
    rng: SmallRng,
    cdf: Vec<f64>,
    n: u64,
}

/// One generated event.
#[derive(Debug, Clone)]
pub struct Generated {
    /// Which issue it belongs to (0-based).
    pub issue: usize,
    /// Its project.
    pub project: &'static str,
    /// Its user id.
    pub user: u64,
    /// The event id.
    pub event_id: String,
    /// The JSON.
    pub json: String,
}

impl Generator {
    /// A generator with `opts`.
    pub fn new(opts: GenOptions) -> Self {
        let weights: Vec<f64> = (0..opts.issues.max(1)).map(|k| 1.0 / ((k + 1) as f64).powf(opts.zipf_s)).collect();
        let total: f64 = weights.iter().sum();
        let mut acc = 0.0;
        let cdf = weights
            .iter()
            .map(|w| {
                acc += w / total;
                acc
            })
            .collect();
        let rng = SmallRng::seed_from_u64(opts.seed);
        Self { opts, rng, cdf, n: 0 }
    }

    /// The project issue `k` reports to.
    pub fn project_of(k: usize) -> &'static str {
        PLATFORMS[k % PLATFORMS.len()].1
    }

    /// Picks an issue by popularity.
    pub fn pick_issue(&mut self) -> usize {
        let x: f64 = self.rng.gen();
        self.cdf.partition_point(|c| *c < x).min(self.cdf.len() - 1)
    }

    /// The next event, of a popularity-weighted issue.
    pub fn next_event(&mut self) -> Generated {
        let k = self.pick_issue();
        let user = self.rng.gen_range(0..self.opts.users.max(1));
        self.event_for(k, user)
    }

    /// The next event of issue `k` for user `user`.
    pub fn event_for(&mut self, k: usize, user: u64) -> Generated {
        self.n += 1;
        let (platform, project) = PLATFORMS[k % PLATFORMS.len()];
        let id: u128 = self.rng.gen::<u128>() ^ u128::from(self.n);
        let event_id = format!("{id:032x}");
        let release_n = self.rng.gen_range(0..self.opts.releases.max(1));
        let release = format!("{project}@1.{}.{}", 4 + release_n / 3, release_n % 3);
        let environment = ENVIRONMENTS[self.rng.gen_range(0..ENVIRONMENTS.len())];
        let ts = self.opts.now_secs - self.rng.gen_range(0..self.opts.spread_secs.max(1));
        let noun = NOUNS[k % NOUNS.len()];
        let verb = VERBS[(k / NOUNS.len()) % VERBS.len()];
        let func = format!("{verb}{}{}", capitalize(noun), k);
        let ident: u32 = self.rng.gen();
        let mut j = String::with_capacity(2500);
        let _ = write!(
            j,
            r#"{{"event_id":"{event_id}","project":"{project}","timestamp":{ts},"platform":"{platform}","level":"{level}","release":"{release}","environment":"{environment}","server_name":"host-{host}","#,
            level = if k % 7 == 3 {
                "fatal"
            } else if k % 5 == 4 {
                "warning"
            } else {
                "error"
            },
            host = self.rng.gen_range(1..40),
        );
        let (ty, value) = exception_of(platform, k, noun, ident, &mut self.rng);
        let _ = write!(
            j,
            r#""exception":[{{"type":"{ty}","value":"{value}","mechanism":{{"type":"generic","handled":{}}},"stacktrace":{{"frames":["#,
            !k.is_multiple_of(3)
        );
        let depth = 6 + (k % 9);
        let bundle = release_hash(&release);
        let mut first = true;
        for d in 0..depth {
            let lib = d < depth - 3;
            let line = self.rng.gen_range(10..2000) + release_n * 7;
            let col = self.rng.gen_range(1..120);
            if !first {
                j.push(',');
            }
            first = false;
            frame(&mut j, platform, lib, d, k, &func, noun, line, col, &bundle);
        }
        j.push_str("]}}],");
        let (bname, bver) = BROWSERS[self.rng.gen_range(0..BROWSERS.len())];
        let (oname, over) = OSES[self.rng.gen_range(0..OSES.len())];
        let _ = write!(
            j,
            r#""user":{{"id":"user-{user}","email":"user{user}@example.com","ip_address":"10.{}.{}.{}"}},"tags":{{"route":"/{noun}s/:id","region":"{region}","feature_flag":"new-{noun}-flow","browser.name":"{bname}"}},"request":{{"url":"https://{project}.example.com/{noun}s/{ident}?ref=email","method":"{method}","headers":{{"User-Agent":"Mozilla/5.0 ({oname} {over}) {bname}/{bver}","Accept-Language":"en-US"}}}},"contexts":{{"browser":{{"name":"{bname}","version":"{bver}"}},"os":{{"name":"{oname}","version":"{over}"}},"device":{{"family":"{device}"}},"runtime":{{"name":"{platform}","version":"{rt}"}}}},"sdk":{{"name":"tracefold.loadgen","version":"0.1.0"}}}}"#,
            user % 250,
            (user / 250) % 250,
            user % 7 + 1,
            region = ["eu-west-1", "us-east-1", "ap-south-1"][(user % 3) as usize],
            method = if k.is_multiple_of(4) { "POST" } else { "GET" },
            device = if oname == "iOS" || oname == "Android" { "Mobile" } else { "Desktop" },
            rt = ["18.20", "3.12", "21", "1.23", "3.3", "8.3", "8.0", "1.82", "131"][k % 9],
        );
        Generated { issue: k, project, user, event_id, json: j }
    }
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
}

fn release_hash(release: &str) -> String {
    format!("{:08x}", xxhash_rust::xxh3::xxh3_64(release.as_bytes()) as u32)
}

fn exception_of(platform: &str, k: usize, noun: &str, ident: u32, rng: &mut SmallRng) -> (String, String) {
    let variant = k / PLATFORMS.len();
    let ms: u32 = rng.gen_range(50..5000);
    match platform {
        "javascript" | "node" => (
            ["TypeError", "RangeError", "ReferenceError", "Error"][variant % 4].to_string(),
            format!("Cannot read properties of undefined (reading '{noun}Id') for {noun} {ident}"),
        ),
        "python" => (
            ["KeyError", "ValueError", "AttributeError", "TimeoutError"][variant % 4].to_string(),
            format!("{noun} {ident} not found after {ms}ms"),
        ),
        "java" => (
            ["java.lang.NullPointerException", "java.lang.IllegalStateException", "java.io.IOException"][variant % 3]
                .to_string(),
            format!("Cannot invoke \\\"{noun}.getId()\\\" because \\\"{noun}\\\" is null (id={ident})"),
        ),
        "go" => ("*errors.errorString".to_string(), format!("{noun} {ident}: context deadline exceeded after {ms}ms")),
        "ruby" => (
            ["NoMethodError", "ActiveRecord::RecordNotFound"][variant % 2].to_string(),
            format!("Couldn't find {noun} with 'id'={ident}"),
        ),
        "php" => (["ErrorException", "TypeError"][variant % 2].to_string(), format!("Undefined index: {noun}_{ident}")),
        "csharp" => (
            ["System.NullReferenceException", "System.InvalidOperationException"][variant % 2].to_string(),
            format!("Object reference not set to an instance of an object. {noun} {ident}"),
        ),
        _ => ("core::panicking".to_string(), format!("called `Option::unwrap()` on a `None` value ({noun} {ident})")),
    }
}

#[allow(clippy::too_many_arguments)]
fn frame(
    j: &mut String,
    platform: &str,
    lib: bool,
    d: usize,
    k: usize,
    func: &str,
    noun: &str,
    line: u32,
    col: u32,
    bundle: &str,
) {
    let in_app = !lib;
    let f = if lib { format!("libCall{d}") } else { format!("{func}Step{d}") };
    let _ = match platform {
        "javascript" => write!(
            j,
            r#"{{"function":"{f}","filename":"https://cdn.example.com/static/js/{}.{bundle}.js","abs_path":"https://cdn.example.com/static/js/{}.{bundle}.js","lineno":1,"colno":{},"in_app":{in_app}}}"#,
            if lib { "vendor" } else { "main" },
            if lib { "vendor" } else { "main" },
            line * 10 + col
        ),
        "node" => write!(
            j,
            r#"{{"function":"{f}","filename":"{}","lineno":{line},"colno":{col},"in_app":{in_app}}}"#,
            if lib {
                format!("/app/node_modules/express@4.21.{d}/lib/router.js")
            } else {
                format!("/app/src/{noun}s/service{k}.js")
            }
        ),
        "python" => write!(
            j,
            r#"{{"function":"{}","module":"{}","filename":"{}","lineno":{line},"in_app":{in_app}}}"#,
            f.to_lowercase(),
            if lib { "django.core.handlers.base".to_string() } else { format!("app.{noun}s.views{k}") },
            if lib { "django/core/handlers/base.py".to_string() } else { format!("app/{noun}s/views{k}.py") }
        ),
        "java" => write!(
            j,
            r#"{{"function":"{f}","module":"{}","filename":"{}.java","lineno":{line},"in_app":{in_app}}}"#,
            if lib {
                "org.springframework.web.servlet.DispatcherServlet".to_string()
            } else {
                format!("com.example.{noun}.Service{k}")
            },
            if lib { "DispatcherServlet".to_string() } else { format!("Service{k}") }
        ),
        "go" => write!(
            j,
            r#"{{"function":"{f}","module":"{}","filename":"{}.go","lineno":{line},"in_app":{in_app}}}"#,
            if lib { "net/http".to_string() } else { format!("example.com/gateway/{noun}{k}") },
            if lib { "server" } else { "handler" }
        ),
        "ruby" => write!(
            j,
            r#"{{"function":"{}","filename":"{}","lineno":{line},"in_app":{in_app}}}"#,
            if lib { format!("block in call{d}") } else { f.to_lowercase() },
            if lib { format!("gems/rack-3.1.{d}/lib/rack/builder.rb") } else { format!("app/models/{noun}{k}.rb") }
        ),
        "php" => write!(
            j,
            r#"{{"function":"{f}","filename":"{}","lineno":{line},"in_app":{in_app}}}"#,
            if lib {
                "vendor/laravel/framework/src/Illuminate/Pipeline/Pipeline.php".to_string()
            } else {
                format!("app/Http/Controllers/{noun}{k}Controller.php")
            }
        ),
        "csharp" => write!(
            j,
            r#"{{"function":"{f}","module":"{}","lineno":{line},"in_app":{in_app}}}"#,
            if lib {
                "Microsoft.AspNetCore.Mvc.Infrastructure.ActionMethodExecutor".to_string()
            } else {
                format!("Payments.Services.{}{k}Service", capitalize(noun))
            }
        ),
        _ => write!(
            j,
            r#"{{"function":"{}::h{:016x}","filename":"{}","lineno":{line},"in_app":{in_app}}}"#,
            if lib {
                format!("tokio::runtime::task::poll{d}")
            } else {
                format!("edge::{noun}{k}::{}", f.to_lowercase())
            },
            xxhash_rust::xxh3::xxh3_64(bundle.as_bytes()),
            if lib { "tokio/src/runtime/task/mod.rs".to_string() } else { format!("src/{noun}{k}.rs") }
        ),
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};
    use tracefold_fingerprint::{fingerprint, GroupingConfig, Scratch};

    #[test]
    fn each_issue_index_is_exactly_one_fingerprint() {
        let mut g = Generator::new(GenOptions { issues: 60, now_secs: 1_795_671_540, ..GenOptions::default() });
        let mut by_issue: BTreeMap<usize, BTreeSet<u128>> = BTreeMap::new();
        let mut scratch = Scratch::default();
        for _ in 0..3000 {
            let e = g.next_event();
            let mut buf = e.json.clone().into_bytes();
            let ev = tracefold_model::parse_event_slice(&mut buf).unwrap_or_else(|err| panic!("{err}: {}", e.json));
            tracefold_model::validate(&ev, 1_795_671_540_000).unwrap();
            by_issue.entry(e.issue).or_default().insert(fingerprint(&ev, &GroupingConfig::default(), &mut scratch).0);
        }
        for (k, fps) in &by_issue {
            assert_eq!(fps.len(), 1, "issue {k} split into {} fingerprints", fps.len());
        }
        let all: BTreeSet<u128> = by_issue.values().flatten().copied().collect();
        assert_eq!(all.len(), by_issue.len(), "two issues share a fingerprint");
        assert!(by_issue.len() > 40, "zipf still reaches most issues: {}", by_issue.len());
    }

    #[test]
    fn events_are_realistically_sized_and_deterministic() {
        let opts = GenOptions { seed: 7, now_secs: 1_795_671_540, ..GenOptions::default() };
        let a: Vec<String> = {
            let mut g = Generator::new(opts.clone());
            (0..200).map(|_| g.next_event().json).collect()
        };
        let b: Vec<String> = {
            let mut g = Generator::new(opts);
            (0..200).map(|_| g.next_event().json).collect()
        };
        assert_eq!(a, b);
        let avg = a.iter().map(String::len).sum::<usize>() / a.len();
        assert!((1000..=3000).contains(&avg), "average event size {avg}");
    }
}
