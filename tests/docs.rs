//! The docs (`README.md`, `docs/*.md`, the operations guide `deploy/README.md` and the
//! benchmark figures `benches/README.md`) cannot rot silently:
//! - every relative link resolves to a file, and its `#anchor` to a heading or `<a id>` there;
//! - every fenced block has a known kind: `sh`/`bash` (every line a command; a `for` loop gives
//!   its body once per value), `console` (commands after `$ `, the rest output), `sql` (run
//!   against ClickHouse), `toml` (read as a `tracefold dev` and a producer config), `json`
//!   (output: every line a JSON object), `yaml` (a user's kustomization: what it starts from and
//!   names exists; tests/deploy.rs renders it), or plain (output and pictures: no command line);
//! - every command in those blocks has a disposition: `tracefold ...` (and the release build's
//!   `target/release/tracefold ...`) is parsed by the CLI's own argument definitions and, when
//!   quick, run against a pipeline started here (real ClickHouse, embedded Kafka); `curl` runs
//!   against that pipeline's producer; long commands (the quickstart, the whole suite,
//!   benchmarks and their wrappers `time`/`valgrind`/`perf`, examples, load, Docker, Kubernetes,
//!   an installation's ClickHouse and Kafka) are listed in [`not_run`] with the reason and the
//!   check made instead (flags parsed, scripts, examples, packages, targets, tests, manifests'
//!   objects, config keys, tables exist). Anything else fails;
//! - every `tracefold <command> --flag` written in backticks anywhere (the command tables,
//!   prose) names a real command and real flags of it; every `scripts/...`, `benches/*.sh` and
//!   `cargo ...` there names scripts, flags, packages and test targets that exist;
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

/// The pages checked: the README, every page of `docs/`, the operations guide
/// (`deploy/README.md`) and the benchmark figures with the commands that produced them
/// (`benches/README.md`).
fn pages() -> Vec<PathBuf> {
    let mut v = vec![repo().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    v.extend(docs);
    v.push(repo().join("deploy/README.md"));
    v.push(repo().join("benches/README.md"));
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

/// The release build's path to the CLI: the same command line as `tracefold`.
const RELEASE_CLI: &str = "target/release/tracefold";

impl Shown {
    fn new(at: String, text: String) -> Shown {
        let argv = words(&text);
        Shown::of(at, text, argv)
    }

    fn of(at: String, text: String, mut argv: Vec<String>) -> Shown {
        if argv.first().is_some_and(|p| p == RELEASE_CLI) {
            argv[0] = "tracefold".into();
        }
        Shown { at, text, argv, shown_output: None }
    }

    /// A part of the command (the command a wrapper runs, one side of `&&`), at the same place.
    fn part(&self, argv: &[&str]) -> Shown {
        let argv: Vec<String> = argv.iter().map(|w| (*w).to_owned()).collect();
        Shown::of(self.at.clone(), argv.join(" "), argv)
    }
}

/// The commands of a `sh` block as written: (body line, text, a `#` line that follows it).
fn sh_lines(b: &Block) -> Vec<(usize, String, Option<String>)> {
    let mut out: Vec<(usize, String, Option<String>)> = Vec::new();
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
                last.2.get_or_insert_with(|| c.trim().to_owned());
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
        out.push((start, strip_comment(&text).trim().to_owned(), None));
        i += 1;
    }
    out
}

/// The commands of a block, by its kind; panics on a kind without a disposition. A
/// `for V in A B; do ... done` loop in a `sh` block gives its body once per value, `$V` replaced.
fn commands(b: &Block) -> Vec<Shown> {
    let at = |i: usize| format!("{}:{}", b.page, b.line + 1 + i);
    let mut out: Vec<Shown> = Vec::new();
    match b.info.as_str() {
        "sh" | "bash" => {
            let lines = sh_lines(b);
            let mut k = 0;
            while k < lines.len() {
                let (i, text, shown) = &lines[k];
                let Some(head) = text.strip_prefix("for ").and_then(|h| h.strip_suffix("; do")) else {
                    let mut c = Shown::new(at(*i), text.clone());
                    c.shown_output.clone_from(shown);
                    out.push(c);
                    k += 1;
                    continue;
                };
                let w = words(head);
                assert!(w.len() >= 3 && w[1] == "in", "{}: a loop `for V in VALUES; do` expected: {text}", at(*i));
                let end = k + lines[k..].iter().position(|l| l.1 == "done").unwrap_or_else(|| panic!("{}: no `done`", at(*i)));
                for value in &w[2..] {
                    for (j, body, _) in &lines[k + 1..end] {
                        let text = body.replace(&format!("${{{}}}", w[0]), value).replace(&format!("${}", w[0]), value);
                        out.push(Shown::new(at(*j), text));
                    }
                }
                k = end + 1;
            }
            // A profile read by `callgrind_annotate` is the one a valgrind line above writes.
            for (n, c) in out.iter().enumerate().filter(|(_, c)| c.argv[0] == "callgrind_annotate") {
                let args = c.argv.iter().take_while(|a| *a != "|");
                let file = args.filter(|a| !a.starts_with('-')).last().unwrap_or_else(|| panic!("{}: no file", c.at));
                let written = format!("--callgrind-out-file={file}");
                assert!(
                    out[..n].iter().any(|p| p.argv.contains(&written)),
                    "{}: no valgrind command above writes {file} ({})",
                    c.at,
                    c.text
                );
            }
        }
        "console" => {
            for (i, l) in b.body.iter().enumerate() {
                if let Some(c) = l.strip_prefix("$ ") {
                    out.push(Shown::new(at(i), strip_comment(c).trim().to_owned()));
                }
            }
            assert!(!out.is_empty(), "{}:{}: a console block without a `$ ` command", b.page, b.line);
        }
        "" | "text" => {
            let commands = ["$ ", "tracefold ", "target/", "cargo ", "scripts/", "benches/", "kubectl ", "docker "];
            for (i, l) in b.body.iter().enumerate() {
                assert!(
                    !commands.iter().any(|c| l.trim_start().starts_with(c)),
                    "{}: a command in a plain block is checked by nothing; use ```sh or ```console",
                    at(i)
                );
            }
        }
        "json" => {
            // Output: one JSON object a line (what `--format json` and the bench programs print).
            for (i, l) in b.body.iter().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                let v: serde_json::Value =
                    serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: not a JSON line ({e}): {l}", at(i)));
                assert!(v.is_object(), "{}: not a JSON object: {l}", at(i));
            }
        }
        "yaml" => kustomization(b),
        "sql" | "toml" => {}
        other => panic!(
            "{}:{}: fenced block of kind {other:?} has no disposition in tests/docs.rs (sh, bash, console, sql, toml, json, yaml, or plain)",
            b.page, b.line
        ),
    }
    out
}

/// A YAML block is a user's kustomization on top of tracefold's (deploy/README.md): it says
/// where it lives, and what it starts from and names exists in tracefold's manifests.
fn kustomization(b: &Block) {
    let at = |i: usize| format!("{}:{}", b.page, b.line + 1 + i);
    let first = b.body.first().map(String::as_str).unwrap_or("");
    assert!(
        first.starts_with('#')
            && first.contains("kustomization.yaml")
            && b.body.iter().any(|l| l == "kind: Kustomization"),
        "{}: a yaml block is a kustomization that names its file in a first `#` line (the only kind checked)",
        at(0)
    );
    let base = repo().join("deploy/kubernetes/base");
    let manifests: String =
        std::fs::read_dir(&base).unwrap().flatten().filter_map(|e| std::fs::read_to_string(e.path()).ok()).collect();
    let mut resources = 0;
    for (i, l) in b.body.iter().enumerate() {
        let item = strip_comment(l).trim();
        if let Some(r) = item.strip_prefix("- ../tracefold/") {
            assert!(repo().join(r).join("kustomization.yaml").exists(), "{}: no kustomization in {r}", at(i));
            resources += 1;
        } else if let Some(n) = item.strip_prefix("- name: ").or_else(|| item.strip_prefix("name: ")) {
            assert!(manifests.contains(n), "{}: nothing under deploy/kubernetes/base names {n}", at(i));
        } else if let Some(f) = item.strip_prefix("- ").filter(|f| f.ends_with(".toml")) {
            assert!(base.join("config").join(f).exists(), "{}: tracefold ships no config {f} to replace", at(i));
        } else if let Some(t) = item.strip_prefix("- target: ") {
            for kv in t.trim_start_matches('{').split('}').next().unwrap().split(',') {
                let (k, v) = kv.split_once(':').unwrap_or_else(|| panic!("{}: {t}", at(i)));
                let wanted = format!("{}: {}", k.trim(), v.trim());
                assert!(manifests.contains(&wanted), "{}: no object with {wanted} under deploy/kubernetes/base", at(i));
            }
        }
    }
    assert!(resources >= 1, "{}:{}: the kustomization starts from one of tracefold's", b.page, b.line);
    // Rendered with `kubectl kustomize` and checked for what it says it does by tests/deploy.rs
    // (the_guides_own_overlay_example_patches_what_it_says), which finds it by its first line.
    let deploy_test = read(&repo().join("tests/deploy.rs"));
    assert!(
        deploy_test.contains(&format!("\"{first}\\n\"")),
        "{}: tests/deploy.rs does not render this kustomization (it looks for its first line)",
        at(0)
    );
}

/// Every command shown in the docs, in page order.
fn all_commands() -> Vec<Shown> {
    pages().iter().flat_map(|p| blocks(p)).flat_map(|b| commands(&b)).collect()
}

/// Programs a documented command may pipe its output into.
const FILTERS: [&str; 6] = ["head", "tail", "grep", "jq", "sort", "less"];

/// Why a command is not run by this test, and what is checked instead; `None` for commands
/// this test runs. Panics for a command nothing knows how to check.
fn not_run(c: &Shown) -> Option<&'static str> {
    let argv: Vec<&str> = c.argv.iter().map(String::as_str).collect();
    let exists = |p: &str| assert!(repo().join(p).exists(), "{}: {p} does not exist ({})", c.at, c.text);
    if let Some(i) = argv.iter().position(|w| *w == "&&") {
        let _ = not_run(&c.part(&argv[..i]));
        let _ = not_run(&c.part(&argv[i + 1..]));
        return Some("a chain of commands; each is checked by these rules");
    }
    if let Some(i) = argv.iter().position(|w| *w == "|") {
        let filter = argv.get(i + 1).copied().unwrap_or("");
        assert!(FILTERS.contains(&filter), "{}: a pipe into {filter:?}, not one of {FILTERS:?} ({})", c.at, c.text);
        let _ = not_run(&c.part(&argv[..i]));
        return Some("a command piped into a filter; the command is checked by these rules");
    }
    let env = argv.iter().take_while(|w| w.split_once('=').is_some_and(|(k, _)| is_env_name(k))).count();
    if env > 0 {
        for w in &argv[..env] {
            let var = w.split('=').next().unwrap();
            assert!(sources_mention(var), "{}: no source file reads {var} ({})", c.at, c.text);
        }
        let inner = not_run(&c.part(&argv[env..]));
        assert!(inner.is_some(), "{}: this test runs commands without an environment; {}", c.at, c.text);
        return inner;
    }
    match argv.as_slice() {
        ["tracefold", sub, ..] => {
            parse_cli(c);
            match *sub {
                "top" | "issue" | "outcomes" | "dlq" | "signals" | "gen" | "fingerprint" => None,
                "--help" | "-h" | "--version" | "-V" | "help" => None,
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
        [bin @ ("tracefold-producer" | "tracefold-grouper" | "tracefold-writer" | "tracefold-detector"), ..] => {
            service(c, bin);
            Some("a long-running service; its flags are parsed by the services' own definitions (ServiceArgs) and its --config file loads as that service's config")
        }
        ["curl", ..] if c.at.starts_with("deploy/") => {
            installed_curl(c);
            Some("against an installation (Compose or a cluster); the route is the producer's, the port the one Compose publishes, the key the example project's")
        }
        ["curl", ..] => None,
        [wrapper @ ("/usr/bin/time" | "valgrind" | "perf"), rest @ ..] => {
            let start = if *wrapper == "perf" {
                rest.iter().position(|a| *a == "--").map(|i| i + 1)
            } else {
                rest.iter().position(|a| !a.starts_with('-'))
            };
            let start = start.unwrap_or_else(|| panic!("{}: {wrapper} wraps no command ({})", c.at, c.text));
            let inner = c.part(&rest[start..]);
            let _ = not_run(&inner);
            for f in rest[..start].iter().filter_map(|o| o.strip_prefix("--toggle-collect=")) {
                // valgrind counts from a function of the program: `example::function`.
                let (program, function) = f.split_once("::").unwrap_or_else(|| panic!("{}: {f}", c.at));
                let src = inner.argv[0].strip_prefix("target/release/examples/").and_then(example_file);
                assert!(
                    src.is_some_and(|s| program == inner.argv[0].rsplit('/').next().unwrap()
                        && read(&s).contains(&format!("fn {function}("))),
                    "{}: --toggle-collect={f}: {} has no function {function}",
                    c.at,
                    inner.argv[0]
                );
            }
            Some("a measurement wrapper (time, valgrind, perf) around a benchmark; the command it runs is checked by these rules")
        }
        [program, args @ ..] if program.starts_with("target/release/examples/") => {
            let example = &program["target/release/examples/".len()..];
            let src = example_file(example)
                .unwrap_or_else(|| panic!("{}: no example {example} in benches/examples or a crate's examples/", c.at));
            let text = read(&src);
            for a in args.iter().filter(|a| a.parse::<f64>().is_err()) {
                assert!(text.contains(&format!("\"{a}\"")), "{}: example {example} knows no argument {a:?}", c.at);
            }
            Some("a benchmark program of seconds to minutes; the example exists and knows its word arguments")
        }
        ["callgrind_annotate", ..] => {
            Some("reads the profile that the valgrind command above it writes (checked with the block)")
        }
        ["scripts/quickstart.sh", ..] => {
            executable(c, "scripts/quickstart.sh");
            Some("installs and starts ClickHouse and builds a release; what it runs (`tracefold dev --sample-events 20000 --exit`) is parsed above, and the pipeline it starts is this test's fixture")
        }
        ["scripts/test.sh", ..] => {
            executable(c, "scripts/test.sh");
            Some("the whole suite: CI runs it (.ci/run, checked by the_readme_shows_exactly_the_two_front_door_commands)")
        }
        [script, args @ ..]
            if (script.starts_with("scripts/") || script.starts_with("benches/")) && script.ends_with(".sh") =>
        {
            executable(c, script);
            let text = read(&repo().join(script));
            for a in args.iter().filter(|a| a.starts_with("--")) {
                assert!(text.contains(a), "{}: {script} knows no {a}", c.at);
            }
            Some("a script of minutes (a soak, a local ClickHouse, a benchmark); the script and its flags exist")
        }
        ["cargo", "install", "--locked", "--path", path] => {
            exists(&format!("{path}/Cargo.toml"));
            Some("installs into the user's cargo bin; the crate exists")
        }
        ["cargo", verb @ ("build" | "test" | "bench"), rest @ ..] => {
            cargo(c, verb, rest);
            Some("builds (and runs) a binary, example, test or benchmark target; the packages, targets and test names exist")
        }
        ["docker", "build", .., dir] => {
            exists(&format!("{dir}/Dockerfile"));
            Some("needs Docker and builds for minutes; the Dockerfile exists (tests/deploy.rs checks the manifests that run its image)")
        }
        ["docker", "run", rest @ ..] => {
            let image = rest.iter().position(|a| !a.starts_with('-')).unwrap_or_else(|| panic!("{}: no image", c.at));
            let inner = c.part(&rest[image + 1..]);
            let dockerfile = read(&repo().join("Dockerfile"));
            assert!(dockerfile.contains(&inner.argv[0]), "{}: the Dockerfile installs no {}", c.at, inner.argv[0]);
            let _ = not_run(&inner);
            Some("needs Docker; the image's Dockerfile installs the program, whose command line is checked by these rules")
        }
        ["docker", "compose", "-f", file, action, rest @ ..] => {
            let services = compose_services(c, file);
            match *action {
                "up" => {}
                "run" | "exec" => {
                    let i =
                        rest.iter().position(|a| !a.starts_with('-')).unwrap_or_else(|| panic!("{}: no service", c.at));
                    assert!(services.contains(rest[i]), "{}: {file} has no service {} ({services:?})", c.at, rest[i]);
                    if i + 1 < rest.len() {
                        let _ = not_run(&c.part(&rest[i + 1..]));
                    }
                }
                other => panic!("{}: no disposition for `docker compose {other}` in tests/docs.rs", c.at),
            }
            Some("needs Docker and pulls Kafka and ClickHouse; the compose file, the services named and the commands run in them are checked")
        }
        ["clickhouse-client", "-q" | "--query", sql] => {
            clickhouse_names(c, sql);
            Some("against an installation's ClickHouse; the tables it names are created by schemas/clickhouse/, and a partition it drops has the shape of the table's partition key")
        }
        [tool, rest @ ..] if tool.starts_with("kafka-") && tool.ends_with(".sh") => {
            for w in rest.windows(2) {
                match w[0] {
                    "--group" => assert!(
                        sources_mention(&format!("\"{}\"", w[1])),
                        "{}: no service uses the group {}",
                        c.at,
                        w[1]
                    ),
                    "--topic" => assert!(
                        read(&repo().join("schemas/topics.toml")).contains(&format!("name = \"{}\"", w[1])),
                        "{}: schemas/topics.toml has no topic {}",
                        c.at,
                        w[1]
                    ),
                    _ => {}
                }
            }
            Some("Apache Kafka's own tool, against a cluster; the consumer group and topic it names are tracefold's")
        }
        ["kubectl", "apply", "-k", dir] | ["kubectl", "kustomize", dir] => {
            exists(&format!("{dir}/kustomization.yaml"));
            Some("needs a cluster; tests/deploy.rs renders every overlay with `kubectl kustomize` and validates it")
        }
        ["kubectl", "-n", "tracefold", "rollout", "restart", objects @ ..]
        | ["kubectl", "-n", "tracefold", "scale", objects @ ..] => {
            for o in objects.iter().filter(|o| !o.starts_with('-')) {
                deployment(c, o);
            }
            Some("needs a cluster; the Deployments it names are the manifests' (tests/deploy.rs validates them)")
        }
        ["kubectl", "-n", "tracefold", "set", "env", object, assignments @ ..] => {
            let service = deployment(c, object);
            for a in assignments {
                config_key(c, service, a.split('=').next().unwrap());
            }
            Some("needs a cluster; the Deployment is the manifests', the variable overrides a key of its service's config")
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

/// `NAME` of a `NAME=value` environment assignment.
fn is_env_name(k: &str) -> bool {
    !k.is_empty() && k.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// Whether a source file of the repository (Rust, shell) contains `s` as a whole word
/// (`TRACEFOLD_X` is not found in `TRACEFOLD_XS`).
fn sources_mention(s: &str) -> bool {
    let word = |c: char| c.is_alphanumeric() || c == '_';
    let whole = |t: &str| {
        t.match_indices(s).any(|(i, _)| {
            let before = t[..i].chars().next_back();
            let after = t[i + s.len()..].chars().next();
            !(s.starts_with(word) && before.is_some_and(word) || s.ends_with(word) && after.is_some_and(word))
        })
    };
    fn walk(dir: &Path, whole: &dyn Fn(&str) -> bool) -> bool {
        std::fs::read_dir(dir).into_iter().flatten().flatten().any(|e| {
            let p = e.path();
            if p.is_dir() {
                !p.ends_with("target") && walk(&p, whole)
            } else {
                p.extension().is_some_and(|x| x == "rs" || x == "sh")
                    && std::fs::read_to_string(&p).is_ok_and(|t| whole(&t))
            }
        })
    }
    ["crates", "tests", "benches", "scripts"].iter().any(|d| walk(&repo().join(d), &whole))
}

/// The source of an example program: `examples/NAME.rs` of a workspace package.
fn example_file(name: &str) -> Option<PathBuf> {
    packages().values().map(|d| d.join("examples").join(format!("{name}.rs"))).find(|p| p.exists())
}

/// `cargo build|test|bench ARGS`: the packages, targets (`--test`, `--bench`, `--example`) and a
/// test-name filter exist.
fn cargo(c: &Shown, verb: &str, args: &[&str]) {
    let pkgs = packages();
    let (args, libtest) = match args.iter().position(|a| *a == "--") {
        Some(i) => (&args[..i], &args[i + 1..]),
        None => (args, &[][..]),
    };
    let mut dirs = Vec::new();
    let mut targets = Vec::new();
    let mut filters = Vec::new();
    let mut i = 0;
    while i < args.len() {
        match args[i] {
            "-p" | "--package" => {
                let dir = pkgs
                    .get(args[i + 1])
                    .unwrap_or_else(|| panic!("{}: no package {} in the workspace", c.at, args[i + 1]));
                dirs.push(dir.clone());
                i += 1;
            }
            kind @ ("--test" | "--bench" | "--example") => {
                targets.push((kind, args[i + 1]));
                i += 1;
            }
            "--release" | "--locked" | "--all-targets" => {}
            f if f.starts_with('-') => panic!("{}: no disposition for the cargo flag {f} in tests/docs.rs", c.at),
            f => filters.push(f),
        }
        i += 1;
    }
    // After `--`: libtest's own flags, and test-name filters like those before it.
    filters.extend(libtest.iter().filter(|a| !a.starts_with('-')));
    let mut files = Vec::new();
    for (kind, t) in &targets {
        let candidates: Vec<PathBuf> = dirs
            .iter()
            .flat_map(|d| match *kind {
                "--example" => vec![d.join("examples").join(format!("{t}.rs"))],
                _ => vec![
                    d.join("tests").join(format!("{t}.rs")),
                    d.join("benches").join(format!("{t}.rs")),
                    d.join(format!("{t}.rs")),
                ],
            })
            .filter(|p| p.exists())
            .collect();
        assert!(!candidates.is_empty(), "{}: no {} target {t} in {dirs:?}", c.at, &kind[2..]);
        files.extend(candidates);
    }
    // libtest matches a filter against a test's whole path: modules (named after the files of
    // a package's source when no target is named, or declared with `mod`) and function.
    let by_path = files.is_empty();
    if files.is_empty() {
        // No target named: a filter looks at every test of the packages.
        fn rs(dir: &Path, out: &mut Vec<PathBuf>) {
            for p in std::fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.path()) {
                if p.is_dir() && !p.ends_with("target") {
                    rs(&p, out);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    out.push(p);
                }
            }
        }
        dirs.iter().for_each(|d| rs(d, &mut files));
    }
    for f in filters {
        assert!(
            verb == "test" && !files.is_empty(),
            "{}: a test-name filter {f} without `cargo test -p PACKAGE`",
            c.at
        );
        assert!(
            files.iter().any(|p| {
                let path = p.strip_prefix(repo()).unwrap_or(p).with_extension("");
                (by_path && path.components().skip(2).any(|m| m.as_os_str().to_string_lossy().contains(f)))
                    || read(p).lines().any(|l| (l.contains("fn ") || l.contains("mod ")) && l.contains(f))
            }),
            "{}: no test named with {f} in {files:?}",
            c.at
        );
    }
}

/// `tracefold-producer|grouper|writer|detector ARGS`: parsed by the services' flags; the
/// `--config` file loads as that service's config.
fn service(c: &Shown, bin: &str) {
    #[derive(clap::Parser)]
    struct Service {
        #[command(flatten)]
        common: tracefold_runtime::service::ServiceArgs,
    }
    let args = Service::try_parse_from(&c.argv)
        .unwrap_or_else(|e| panic!("{}: `{}` is not a valid {bin} command line:\n{e}", c.at, c.text));
    if let Some(path) = args.common.config {
        let text = read(&repo().join(&path));
        let loaded = match bin {
            "tracefold-producer" => toml::from_str::<tracefold_producer::Config>(&text).map(drop),
            "tracefold-grouper" => toml::from_str::<tracefold_grouper::Config>(&text).map(drop),
            "tracefold-writer" => toml::from_str::<tracefold_writer::Config>(&text).map(drop),
            _ => toml::from_str::<tracefold_detector::Config>(&text).map(drop),
        };
        loaded.unwrap_or_else(|e| panic!("{}: {} is not a {bin} config: {e}", c.at, path.display()));
    }
}

/// A `curl` to an installed producer: the route is one the producer serves, the port the one
/// the Compose file publishes, and an `X-Tracefold-Key` the example project's.
fn installed_curl(c: &Shown) {
    let compose = read(&repo().join("deploy/compose/docker-compose.yml"));
    let url = c.argv.iter().find(|a| a.contains("/api/")).unwrap_or_else(|| panic!("{}: no URL", c.at));
    let url = url.trim_start_matches("http://").trim_start_matches("https://");
    let (host, path) = url.split_once('/').unwrap();
    let port = host.rsplit(':').next().unwrap();
    assert!(compose.contains(&format!("\"{port}:{port}\"")), "{}: the Compose file publishes no port {port}", c.at);
    let routes = read(&repo().join("crates/producer/src/http.rs"));
    let wanted: Vec<&str> = path.split('/').collect();
    let served = routes.split(".route(\"/").skip(1).map(|r| r.split('"').next().unwrap()).any(|r| {
        let r: Vec<&str> = r.split('/').collect();
        r.len() == wanted.len() && r.iter().zip(&wanted).all(|(r, p)| r == p || (r.starts_with('{') && !p.is_empty()))
    });
    assert!(served, "{}: the producer serves no route /{path}", c.at);
    for h in c.argv.windows(2).filter(|w| w[0] == "-H").map(|w| &w[1]) {
        if let Some(key) = h.strip_prefix("X-Tracefold-Key: ") {
            assert!(compose.contains(&format!("\"{key}\"")), "{}: the Compose file registers no key {key}", c.at);
        }
    }
}
/// The services of a Compose file (the keys under `services:`).
fn compose_services(c: &Shown, file: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(repo().join(file)).unwrap_or_else(|e| panic!("{}: {file}: {e}", c.at));
    let services = text.split("\nservices:\n").nth(1).unwrap_or_else(|| panic!("{}: {file} has no services", c.at));
    services
        .lines()
        .take_while(|l| l.is_empty() || l.starts_with(' ') || l.starts_with('#'))
        .filter_map(|l| l.strip_prefix("  ").and_then(|l| l.strip_suffix(':')))
        .filter(|l| !l.starts_with(' '))
        .map(str::to_owned)
        .collect()
}

/// The `tracefold.TABLE`s of a query exist in schemas/clickhouse/; `DROP PARTITION ID` has the
/// shape of the table's partition key (`toYYYYMMDD`: 8 digits, `toYYYYMM`: 6).
fn clickhouse_names(c: &Shown, sql: &str) {
    let schemas: Vec<String> = std::fs::read_dir(repo().join("schemas/clickhouse"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .collect();
    let mut tables = Vec::new();
    for part in sql.split("tracefold.").skip(1) {
        let table: String = part.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        let create = schemas
            .iter()
            .flat_map(|s| s.split("CREATE ").skip(1))
            .find(|d| {
                // The object a CREATE defines is the first `{db}.NAME` in it.
                let defined = d.split_whitespace().find(|w| w.starts_with("{db}."));
                defined.is_some_and(|w| w.trim_end_matches('(') == format!("{{db}}.{table}"))
            })
            .unwrap_or_else(|| panic!("{}: schemas/clickhouse/ creates no table {table} ({})", c.at, c.text));
        tables.push((table, create));
    }
    assert!(!tables.is_empty(), "{}: the query names no tracefold.TABLE", c.at);
    if let Some(id) = sql.split("DROP PARTITION ").nth(1) {
        let id = id.trim().trim_matches('\'');
        let (table, create) = &tables[0];
        let key =
            create.split("PARTITION BY ").nth(1).unwrap_or_else(|| panic!("{}: {table} is not partitioned", c.at));
        let digits = if key.starts_with("toYYYYMMDD(") {
            8
        } else if key.starts_with("toYYYYMM(") {
            6
        } else {
            0
        };
        assert!(
            id.len() == digits && id.chars().all(|c| c.is_ascii_digit()),
            "{}: {id} is no partition of {table}, partitioned by {}",
            c.at,
            key.lines().next().unwrap()
        );
    }
}

/// `deploy/NAME`: a Deployment of the manifests; returns its service (`tracefold-NAME`).
fn deployment<'a>(c: &Shown, object: &'a str) -> &'a str {
    let name = object.strip_prefix("deploy/").unwrap_or_else(|| panic!("{}: {object} is not deploy/NAME", c.at));
    let found = std::fs::read_dir(repo().join("deploy/kubernetes/base")).unwrap().flatten().any(|e| {
        std::fs::read_to_string(e.path()).is_ok_and(|y| {
            y.split("\n---").any(|d| d.contains("kind: Deployment") && d.contains(&format!("  name: {name}\n")))
        })
    });
    assert!(found, "{}: no Deployment {name} under deploy/kubernetes/base", c.at);
    name.strip_prefix("tracefold-").unwrap_or(name)
}

/// `TRACEFOLD__SECTION__KEY` overrides a key of the service's example config (which has them all).
fn config_key(c: &Shown, service: &str, var: &str) {
    let path = repo().join(format!("deploy/config/{service}.toml"));
    let cfg: toml::Value = toml::from_str(&read(&path)).unwrap();
    let keys = var.strip_prefix("TRACEFOLD__").unwrap_or_else(|| panic!("{}: {var} is no TRACEFOLD__ override", c.at));
    let mut v = &cfg;
    for k in keys.split("__") {
        v = v.get(k.to_lowercase()).unwrap_or_else(|| panic!("{}: {var}: no key {k} in {}", c.at, name(&path)));
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
        if matches!(e.kind(), clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion) {
            return; // `--help`, `--version`: parsed, and printed instead of run
        }
        panic!("{}: `{}` is not a valid tracefold command line:\n{e}", c.at, c.text);
    }
}

#[test]
fn every_command_in_the_docs_has_a_disposition_and_parses() {
    let all = all_commands();
    assert!(all.len() >= 8, "the commands are found: {all:#?}");
    for page in ["deploy/README.md:", "benches/README.md:"] {
        let n = all.iter().filter(|c| c.at.starts_with(page)).count();
        assert!(n >= 10, "the commands of {page} are read ({n})");
    }
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
    parse_cli(&Shown::of("scripts/quickstart.sh".into(), line.clone(), argv));
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
            let script = span
                .split_whitespace()
                .next()
                .is_some_and(|w| (w.starts_with("scripts/") || w.starts_with("benches/")) && w.ends_with(".sh"));
            if script || span.starts_with("cargo ") {
                // A script or cargo command in prose: the same checks as in a block.
                let span = span.split_whitespace().collect::<Vec<_>>().join(" ");
                let c = Shown::new(name(&page), span);
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
    // The queries `clickhouse-client -q` is shown running against an installation (the operations
    // guide), on the test's database; what they change is checked in `not_run` instead.
    let mut client_queries = 0;
    for c in &all {
        let Some(w) = c.argv.windows(3).find(|w| w[0] == "clickhouse-client" && (w[1] == "-q" || w[1] == "--query"))
        else {
            continue;
        };
        if !w[2].trim_start().to_uppercase().starts_with("SELECT") {
            continue;
        }
        let sql = w[2].replace("tracefold.", &format!("{}.", db.cfg.database));
        let fail = |e: clickhouse::error::Error| -> ! { panic!("{}: {e}\n{sql}", c.at) };
        let mut cursor = db.client.query(&sql).fetch_bytes("TabSeparated").unwrap_or_else(|e| fail(e));
        while cursor.next().await.unwrap_or_else(|e| fail(e)).is_some() {}
        client_queries += 1;
    }
    assert!(client_queries >= 1, "the operations guide's clickhouse-client queries are run");
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
