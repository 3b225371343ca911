//! The docs (`README.md`, `docs/*.md`) cannot rot silently:
//! - every relative link resolves to a file, and its `#anchor` to a heading or `<a id>` there;
//! - every fenced block has a known kind: `sh`/`bash` (every line a command), `console`
//!   (commands after `$ `, the rest output), `sql` (run against ClickHouse), `toml` (read as
//!   a `tracefold dev` and a producer config), or plain (output and pictures: no `$ ` line);
//! - every command in those blocks has a disposition: `tracefold ...` is parsed by the CLI's
//!   own argument definitions and, when quick, run against a pipeline started here (real
//!   ClickHouse, embedded Kafka); `curl` runs against that pipeline's producer; long commands
//!   (the quickstart, the whole suite, benchmarks, load, Kubernetes) are listed in
//!   [`not_run`] with the reason and the check made instead. Anything else fails;
//! - every `tracefold <command> --flag` written in backticks anywhere (the command tables,
//!   prose) names a real command and real flags of it; every `scripts/...` and `cargo ...`
//!   there names scripts, flags, packages and test targets that exist;
//! - the README shows exactly the two front-door commands, and `.ci/run` runs the same test
//!   command.

use clap::CommandFactory as _;
use clap::Parser as _;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tracefold_devtools::dev::{DevConfig, Pipeline};
use tracefold_tests::procs::repo;
use tracefold_tests::TestDb;

/// The CLI's argument definitions, the very file the binary is built from (no copy to drift).
#[path = "../crates/cli/src"]
#[allow(dead_code, unreachable_pub, unused_imports)]
mod cli {
    pub mod args;
}

/// The pages checked: the README and every page of `docs/`.
fn pages() -> Vec<PathBuf> {
    let mut v = vec![repo().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    v.extend(docs);
    v
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn name(p: &Path) -> String {
    p.strip_prefix(repo()).unwrap_or(p).display().to_string()
}

/// A fenced block: its page, first line (1-based, the fence), info string and body lines.
struct Block {
    page: String,
    line: usize,
    info: String,
    body: Vec<String>,
}

fn blocks(page: &Path) -> Vec<Block> {
    let text = read(page);
    let mut out = Vec::new();
    let mut open: Option<Block> = None;
    for (i, l) in text.lines().enumerate() {
        match (&mut open, l.strip_prefix("```")) {
            (None, Some(info)) => {
                open = Some(Block { page: name(page), line: i + 1, info: info.trim().to_owned(), body: vec![] })
            }
            (Some(_), Some(rest)) if rest.trim().is_empty() => out.push(open.take().unwrap()),
            (Some(b), _) => b.body.push(l.to_owned()),
            (None, None) => {}
        }
    }
    assert!(open.is_none(), "{}: a fenced block is not closed", name(page));
    out
}

/// Markdown text outside fenced blocks (links and inline code are looked for there).
fn prose(page: &Path) -> String {
    let mut inside = false;
    let mut out = String::new();
    for l in read(page).lines() {
        if l.starts_with("```") {
            inside = !inside;
        } else if !inside {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// Splits a shell command into words: single and double quotes, backslash escapes outside
/// single quotes, line continuations.
fn words(cmd: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut has = false;
    let mut chars = cmd.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('\''), c) => cur.push(c),
            (Some(_), '\\') => cur.push(chars.next().unwrap_or('\\')),
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                has = true;
            }
            (None, '\\') => match chars.next() {
                Some('\n') | None => {}
                Some(n) => {
                    cur.push(n);
                    has = true;
                }
            },
            (None, c) if c.is_whitespace() => {
                if has || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                has = false;
            }
            (None, c) => {
                cur.push(c);
                has = true;
            }
        }
    }
    assert!(quote.is_none(), "unbalanced quotes in {cmd:?}");
    if has || !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Whether `s` leaves a quote open (so the command goes on on the next line).
fn open_quote(s: &str) -> bool {
    let mut quote: Option<char> = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"') | None, '\\') => {
                chars.next();
            }
            (None, '\'' | '"') => quote = Some(c),
            _ => {}
        }
    }
    quote.is_some()
}

/// The part of a line before a `#` comment outside quotes.
fn strip_comment(s: &str) -> &str {
    let mut quote: Option<char> = None;
    let mut prev = ' ';
    for (i, c) in s.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (None, '\'' | '"') => quote = Some(c),
            (None, '#') if prev.is_whitespace() => return s[..i].trim_end(),
            _ => {}
        }
        prev = c;
    }
    s
}

/// A command shown in the docs, with the output shown for it when a `# {...}` line follows.
#[derive(Debug)]
struct Shown {
    at: String,
    text: String,
    argv: Vec<String>,
    shown_output: Option<String>,
}

/// The commands of a block, by its kind; panics on a kind without a disposition.
fn commands(b: &Block) -> Vec<Shown> {
    let at = |i: usize| format!("{}:{}", b.page, b.line + 1 + i);
    let mut out: Vec<Shown> = Vec::new();
    match b.info.as_str() {
        "sh" | "bash" => {
            let mut i = 0;
            while i < b.body.len() {
                let line = b.body[i].trim();
                if line.is_empty() {
                    i += 1;
                    continue;
                }
                if let Some(c) = line.strip_prefix('#') {
                    // A comment line right after a command is the output it shows.
                    if let Some(last) = out.last_mut() {
                        last.shown_output.get_or_insert_with(|| c.trim().to_owned());
                    }
                    i += 1;
                    continue;
                }
                let start = i;
                let mut text = b.body[i].clone();
                while (open_quote(&text) || strip_comment(&text).ends_with('\\')) && i + 1 < b.body.len() {
                    i += 1;
                    text.push('\n');
                    text.push_str(&b.body[i]);
                }
                let text = strip_comment(&text).trim().to_owned();
                out.push(Shown { at: at(start), argv: words(&text), text, shown_output: None });
                i += 1;
            }
        }
        "console" => {
            for (i, l) in b.body.iter().enumerate() {
                if let Some(c) = l.strip_prefix("$ ") {
                    let text = strip_comment(c).trim().to_owned();
                    out.push(Shown { at: at(i), argv: words(&text), text, shown_output: None });
                }
            }
            assert!(!out.is_empty(), "{}:{}: a console block without a `$ ` command", b.page, b.line);
        }
        "" | "text" => {
            for (i, l) in b.body.iter().enumerate() {
                assert!(
                    !l.starts_with("$ ") && !l.starts_with("tracefold "),
                    "{}: a command in a plain block is checked by nothing; use ```sh or ```console",
                    at(i)
                );
            }
        }
        "sql" | "toml" => {}
        other => panic!(
            "{}:{}: fenced block of kind {other:?} has no disposition in tests/docs.rs (sh, bash, console, sql, toml, or plain)",
            b.page, b.line
        ),
    }
    out
}

/// Every command shown in the docs, in page order.
fn all_commands() -> Vec<Shown> {
    pages().iter().flat_map(|p| blocks(p)).flat_map(|b| commands(&b)).collect()
}

/// Why a command is not run by this test, and what is checked instead; `None` for commands
/// this test runs. Panics for a command nothing knows how to check.
fn not_run(c: &Shown) -> Option<&'static str> {
    let argv: Vec<&str> = c.argv.iter().map(String::as_str).collect();
    let exists = |p: &str| assert!(repo().join(p).exists(), "{}: {p} does not exist ({})", c.at, c.text);
    match argv.as_slice() {
        ["tracefold", sub, ..] => {
            parse_cli(c);
            match *sub {
                "top" | "issue" | "outcomes" | "dlq" | "signals" | "gen" | "fingerprint" => None,
                "migrate" if argv.contains(&"--print-for") => None,
                "dev" => Some("runs until Ctrl-C (or is the quickstart); the same pipeline is what this test and the end-to-end tests start (dev::Pipeline)"),
                "ui" => Some("serves until Ctrl-C; its pages are loaded from a server started in process by tests/ui.rs and in headless Chromium by tests/ui_browser.rs"),
                "loadgen" => Some("a load of minutes; its HTTP path and retries are run by tests/no_loss.rs and tests/backpressure.rs"),
                "sourcemaps" => Some("sends a build's files to a running producer; its code path (tracefold_cli::sourcemaps) runs against a producer, a local object store and ClickHouse in tests/sourcemaps.rs"),
                "migrate" | "retention" => Some("changes a real database; run on scratch databases by tracefold-store's tests and tests/analytics.rs"),
                s if s.starts_with("bench-") || s.ends_with("-quality") => {
                    Some("a benchmark or quality score of minutes; benches/README.md holds its figures, the harnesses have unit tests")
                }
                s => panic!("{}: no disposition for `tracefold {s}` in tests/docs.rs", c.at),
            }
        }
        ["curl", ..] => None,
        ["scripts/quickstart.sh", ..] => {
            executable(c, "scripts/quickstart.sh");
            Some("installs and starts ClickHouse and builds a release; what it runs (`tracefold dev --sample-events 20000 --exit`) is parsed above, and the pipeline it starts is this test's fixture")
        }
        ["scripts/test.sh", ..] => {
            executable(c, "scripts/test.sh");
            Some("the whole suite: CI runs it (.ci/run, checked by the_readme_shows_exactly_the_two_front_door_commands)")
        }
        [script, args @ ..] if script.starts_with("scripts/") => {
            executable(c, script);
            let text = read(&repo().join(script));
            for a in args.iter().filter(|a| a.starts_with("--")) {
                assert!(text.contains(a), "{}: {script} knows no {a}", c.at);
            }
            Some("a script of minutes (a soak, a local ClickHouse); the script and its flags exist")
        }
        ["cargo", "install", "--locked", "--path", path] => {
            exists(&format!("{path}/Cargo.toml"));
            Some("installs into the user's cargo bin; the crate exists")
        }
        ["cargo", "test" | "bench", rest @ ..] => {
            let pkgs = packages();
            let mut dirs = Vec::new();
            for w in rest.windows(2).filter(|w| w[0] == "-p") {
                let dir = pkgs.get(w[1]).unwrap_or_else(|| panic!("{}: no package {} in the workspace", c.at, w[1]));
                dirs.push(dir.clone());
            }
            for w in rest.windows(2).filter(|w| w[0] == "--test") {
                assert!(
                    dirs.iter().any(|d| d.join("tests").join(format!("{}.rs", w[1])).exists()
                        || d.join(format!("{}.rs", w[1])).exists()),
                    "{}: no test target {} in {dirs:?}",
                    c.at,
                    w[1]
                );
            }
            Some("builds and runs a test or benchmark target; the packages and test files exist")
        }
        ["kubectl", "apply", "-k", dir] => {
            exists(&format!("{dir}/kustomization.yaml"));
            Some("needs a cluster; tests/deploy.rs renders every overlay with `kubectl kustomize` and validates it")
        }
        ["kubectl", "-n", "tracefold", "create", "secret", "generic", name, ..]
        | ["kubectl", "-n", "tracefold", "port-forward", name, ..] => {
            // The object the command names is one the manifests use.
            let name = name.trim_start_matches("svc/");
            let base = repo().join("deploy/kubernetes/base");
            let used = std::fs::read_dir(&base)
                .expect("deploy/kubernetes/base")
                .flatten()
                .any(|e| std::fs::read_to_string(e.path()).is_ok_and(|y| y.contains(&format!("name: {name}"))));
            assert!(used, "{}: no manifest under deploy/kubernetes/base names {name} ({})", c.at, c.text);
            Some("needs a cluster; the Secret or Service it names is the one the manifests use (tests/deploy.rs validates them)")
        }
        _ => panic!("{}: no disposition for `{}` in tests/docs.rs", c.at, c.text),
    }
}

fn executable(c: &Shown, script: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::metadata(repo().join(script)).unwrap_or_else(|e| panic!("{}: {script}: {e}", c.at));
    assert!(meta.permissions().mode() & 0o111 != 0, "{}: {script} is not executable", c.at);
}

/// The workspace's packages: name -> directory.
fn packages() -> std::collections::BTreeMap<String, PathBuf> {
    let mut out = std::collections::BTreeMap::new();
    let mut dirs: Vec<PathBuf> = vec![repo().join("tests"), repo().join("benches")];
    dirs.extend(std::fs::read_dir(repo().join("crates")).unwrap().map(|e| e.unwrap().path()));
    for d in dirs {
        if let Ok(t) = std::fs::read_to_string(d.join("Cargo.toml")) {
            let v: toml::Value = toml::from_str(&t).unwrap();
            if let Some(n) = v.get("package").and_then(|p| p.get("name")).and_then(|n| n.as_str()) {
                out.insert(n.to_owned(), d.clone());
            }
        }
    }
    out
}

/// The command's arguments as the `tracefold` binary parses them.
fn parse_cli(c: &Shown) {
    if let Err(e) = cli::args::Cli::try_parse_from(&c.argv) {
        panic!("{}: `{}` is not a valid tracefold command line:\n{e}", c.at, c.text);
    }
}

#[test]
fn every_command_in_the_docs_has_a_disposition_and_parses() {
    let all = all_commands();
    assert!(all.len() >= 8, "the commands are found: {all:#?}");
    for c in &all {
        let _ = not_run(c);
    }
}

#[test]
fn the_readme_shows_exactly_the_two_front_door_commands() {
    let readme = repo().join("README.md");
    let shown: Vec<String> = blocks(&readme).iter().flat_map(commands).map(|c| c.text).collect();
    assert_eq!(shown, ["scripts/quickstart.sh", "scripts/test.sh"], "the README's commands");
    // The quickstart runs the pipeline on embedded defaults with a sample load.
    let quickstart = read(&repo().join("scripts/quickstart.sh"));
    let start = quickstart.find("exec target/release/tracefold dev").expect("the quickstart runs tracefold dev");
    let mut line = String::new();
    for l in quickstart[start..].lines() {
        line.push_str(l.trim_end_matches('\\'));
        if !l.ends_with('\\') {
            break;
        }
    }
    let mut argv: Vec<String> = words(&line).into_iter().skip(1).filter(|w| w != "$@").collect();
    argv[0] = "tracefold".into();
    assert!(argv.iter().any(|a| a == "--sample-events") && argv.iter().any(|a| a == "--exit"), "{argv:?}");
    parse_cli(&Shown { at: "scripts/quickstart.sh".into(), text: line.clone(), argv, shown_output: None });
    // CI runs the test command the README gives.
    let ci = read(&repo().join(".ci/run"));
    assert!(ci.lines().any(|l| l.trim() == "scripts/test.sh"), ".ci/run runs scripts/test.sh");
}

#[test]
fn the_config_snippets_are_valid_configs() {
    let mut n = 0;
    for b in pages().iter().flat_map(|p| blocks(p)).filter(|b| b.info == "toml") {
        let text = b.body.join("\n");
        toml::from_str::<DevConfig>(&text)
            .unwrap_or_else(|e| panic!("{}:{}: not a valid tracefold dev config: {e}", b.page, b.line));
        toml::from_str::<tracefold_producer::Config>(&text)
            .unwrap_or_else(|e| panic!("{}:{}: not a valid producer config: {e}", b.page, b.line));
        n += 1;
    }
    assert!(n >= 1, "the config snippets are found");
}

/// The long flags and short flags of a clap command and its subcommands.
fn flags(cmd: &clap::Command) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for a in cmd.get_arguments() {
        out.extend(a.get_long_and_visible_aliases().into_iter().flatten().map(|l| format!("--{l}")));
        out.extend(a.get_short_and_visible_aliases().into_iter().flatten().map(|s| format!("-{s}")));
    }
    for s in cmd.get_subcommands() {
        out.extend(flags(s));
    }
    out
}

#[test]
fn every_command_written_in_backticks_names_real_commands_flags_and_files() {
    let mut cli = cli::args::Cli::command();
    cli.build();
    let mut checked = 0;
    for page in pages() {
        let text = prose(&page);
        for span in text.split('`').skip(1).step_by(2) {
            let script =
                span.split_whitespace().next().is_some_and(|w| w.starts_with("scripts/") && w.ends_with(".sh"));
            if script || span.starts_with("cargo ") {
                // A script or cargo command in prose: the same checks as in a block.
                let span = span.split_whitespace().collect::<Vec<_>>().join(" ");
                let c = Shown { at: name(&page), argv: words(&span), text: span, shown_output: None };
                let _ = not_run(&c);
                checked += 1;
                continue;
            }
            let Some(rest) = span.strip_prefix("tracefold ") else { continue };
            let rest = rest.replace("\\|", "|");
            let mut toks = rest.split_whitespace();
            let Some(sub) = toks.next() else { continue };
            if sub.starts_with('<') {
                continue; // `tracefold <command> --help`
            }
            let cmd = cli
                .find_subcommand(sub)
                .unwrap_or_else(|| panic!("{}: `tracefold {rest}`: no command {sub:?}", name(&page)));
            let known = flags(cmd);
            for t in toks.flat_map(|t| t.split('|')) {
                let t = t.trim_matches(|c| matches!(c, '[' | ']' | '(' | ')' | '|' | ','));
                let flag = t.split('=').next().unwrap();
                if flag.starts_with('-') && flag.len() > 1 && !flag.starts_with("---") {
                    assert!(
                        known.contains(flag),
                        "{}: `tracefold {rest}`: {sub} has no flag {flag} (it has {known:?})",
                        name(&page)
                    );
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= 30, "the command table and the prose are read ({checked} spans)");
}

/// GitHub's anchor of a heading: lower case, punctuation other than `-` and `_` dropped,
/// spaces to `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors a Markdown file offers: its headings (outside fenced blocks) and `<a id>`s.
fn anchors(file: &Path) -> BTreeSet<String> {
    let text = prose(file);
    let mut out: BTreeSet<String> = BTreeSet::new();
    for l in text.lines() {
        if let Some(h) = l.strip_prefix('#') {
            out.insert(slug(h.trim_start_matches('#')));
        }
    }
    for part in text.split("<a id=\"").skip(1) {
        out.insert(part.split('"').next().unwrap().to_owned());
    }
    out
}

#[test]
fn every_relative_link_resolves_to_a_file_and_anchor() {
    let mut checked = 0;
    for page in pages() {
        let text = prose(&page);
        let dir = page.parent().unwrap();
        for part in text.split("](").skip(1) {
            let target = part.split(')').next().unwrap();
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (path, anchor) = match target.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (target, None),
            };
            let file = if path.is_empty() { page.clone() } else { dir.join(path) };
            assert!(file.exists(), "{}: link to {target}: no {}", name(&page), file.display());
            if let Some(a) = anchor {
                let have = anchors(&file);
                assert!(
                    have.contains(a),
                    "{}: link to {target}: no anchor #{a} in {} ({have:?})",
                    name(&page),
                    name(&file)
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 20, "the links are read ({checked})");
}

/// The quick commands and the SQL, run against a pipeline: the events of the docs' curl
/// commands go in, then the analyst commands and queries run on what they stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quick_commands_and_the_sql_of_the_docs_run_against_a_pipeline() {
    let db = TestDb::new("docs").await;
    let mut cfg = DevConfig { clickhouse: db.cfg.clone(), ..DevConfig::default() };
    cfg.writer.batch_max_age_ms = 200;
    let pipeline = Pipeline::start(cfg, "127.0.0.1:0", Some(1), true).await.expect("pipeline starts");
    let http = pipeline.http_addr.to_string();
    let bootstrap = pipeline.bootstrap_servers();
    let substitute = |argv: &[String]| -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for a in argv {
            let a = a.replace("localhost:8080", &http).replace("127.0.0.1:8080", &http);
            if out.last().is_some_and(|p| p == "--bootstrap-servers") {
                out.push(bootstrap.clone());
            } else {
                out.push(a);
            }
        }
        out
    };
    let run = |c: &Shown, argv: Vec<String>| -> String {
        let (program, args) = match argv[0].as_str() {
            "tracefold" => (env!("CARGO_BIN_EXE_tracefold-under-test").to_owned(), &argv[1..]),
            _ => (argv[0].clone(), &argv[1..]),
        };
        let out = Command::new(&program)
            .args(args)
            .env("TRACEFOLD_CLICKHOUSE_URL", &db.cfg.url)
            .env("TRACEFOLD_CLICKHOUSE_DATABASE", &db.cfg.database)
            .output()
            .unwrap_or_else(|e| panic!("{}: {program}: {e}", c.at));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{}: `{}` failed ({}):\n{stdout}\n{}",
            c.at,
            c.text,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let all = all_commands();
    let runnable: Vec<&Shown> = all.iter().filter(|c| not_run(c).is_none()).collect();
    // First what sends events.
    let mut sent = 0;
    for c in runnable.iter().filter(|c| c.argv[0] == "curl") {
        let out = run(c, substitute(&c.argv));
        if let Some(shown) = c.shown_output.as_deref().filter(|s| s.starts_with('{')) {
            let keys = |s: &str| -> BTreeSet<String> {
                let v: serde_json::Value =
                    serde_json::from_str(s).unwrap_or_else(|e| panic!("{}: not JSON ({e}): {s}", c.at));
                v.as_object().unwrap_or_else(|| panic!("{}: not an object: {s}", c.at)).keys().cloned().collect()
            };
            assert_eq!(keys(&out), keys(shown), "{}: the answer has the fields the docs show: {out}", c.at);
            sent += serde_json::from_str::<serde_json::Value>(&out).unwrap()["accepted"].as_u64().unwrap_or(0);
        }
    }
    assert!(sent >= 1, "the docs send events with curl");
    let stored = db.wait_for_total(sent, Duration::from_secs(120)).await;
    assert_eq!(stored, sent, "the events the docs send are stored");
    // Then every other quick command, on what is stored.
    for c in runnable.iter().filter(|c| c.argv[0] != "curl") {
        let out = run(c, substitute(&c.argv));
        assert!(!out.trim().is_empty(), "{}: `{}` printed nothing", c.at, c.text);
        if c.argv.windows(2).any(|w| w == ["--format", "json"]) || c.argv.iter().any(|a| a == "--json") {
            serde_json::from_str::<serde_json::Value>(&out)
                .unwrap_or_else(|e| panic!("{}: not JSON ({e}):\n{out}", c.at));
        }
    }
    // The SQL, as written, on the test's database.
    let mut queries = 0;
    for b in pages().iter().flat_map(|p| blocks(p)).filter(|b| b.info == "sql") {
        let text: String =
            b.body.iter().filter(|l| !l.trim_start().starts_with("--")).map(|l| format!("{l}\n")).collect();
        for stmt in text.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            let sql = stmt.replace("tracefold.", &format!("{}.", db.cfg.database));
            let fail = |e: clickhouse::error::Error| -> ! { panic!("{}:{}: {e}\n{sql}", b.page, b.line) };
            let mut cursor = db.client.query(&sql).fetch_bytes("TabSeparated").unwrap_or_else(|e| fail(e));
            while cursor.next().await.unwrap_or_else(|e| fail(e)).is_some() {}
            queries += 1;
        }
    }
    assert!(queries >= 2, "the cookbook's SQL is run ({queries} statements)");
    pipeline.stop().await.unwrap();
}

#[test]
fn the_command_reference_names_every_command_and_every_flag() {
    let mut cli = cli::args::Cli::command();
    cli.build();
    let page = read(&repo().join("docs/commands.md"));
    let intro: String = page.lines().take_while(|l| !l.starts_with('|')).collect::<Vec<_>>().join(" ");
    let connection = ["--clickhouse-url", "--database", "--user", "--password"];
    for s in cli.get_subcommands().filter(|s| s.get_name() != "help") {
        let sub = s.get_name();
        let rows: Vec<&str> = page
            .lines()
            .filter(|l| {
                l.starts_with(&format!("| `tracefold {sub} ")) || l.starts_with(&format!("| `tracefold {sub}`"))
            })
            .collect();
        assert!(!rows.is_empty(), "docs/commands.md has no row for `tracefold {sub}`");
        let rows = rows.join("\n");
        for f in flags(s).into_iter().filter(|f| f != "--help" && f != "-h") {
            let named = rows.split(|c: char| !(c.is_alphanumeric() || c == '-')).any(|w| w == f);
            let common = connection.contains(&f.as_str()) && intro.contains(&format!("`{sub}`"));
            assert!(named || common, "docs/commands.md does not name {f} of `tracefold {sub}`");
        }
    }
}
