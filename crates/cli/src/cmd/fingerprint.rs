//! `tracefold fingerprint`: fingerprints of NDJSON events (tracefold or Sentry payloads) read
//! from files or stdin, one JSON line per event.

use crate::args::{FingerprintArgs, InputFormat};
use crate::out::outln;
use anyhow::Context as _;
use std::io::BufRead as _;
use std::path::PathBuf;
use tracefold_devtools::render::printable;

/// Runs `tracefold fingerprint` with the `[grouping]` section of `--config` (or the defaults).
///
/// # Errors
/// When the config or a file cannot be read, or some lines are not events (after printing
/// every line's result).
pub fn run(a: &FingerprintArgs) -> anyhow::Result<()> {
    let cfg: tracefold_grouper::Config = tracefold_runtime::config::load(a.config.as_deref(), std::env::vars())?;
    fingerprint(&a.files, a.explain, a.input, &cfg.grouping)
}

fn fingerprint(
    files: &[PathBuf],
    explain: bool,
    input: InputFormat,
    cfg: &tracefold_fingerprint::GroupingConfig,
) -> anyhow::Result<()> {
    let mut scratch = tracefold_fingerprint::Scratch::default();
    let mut errors = 0usize;
    let readers: Vec<(String, Box<dyn std::io::BufRead>)> = if files.is_empty() {
        vec![("<stdin>".into(), Box::new(std::io::stdin().lock()))]
    } else {
        files
            .iter()
            .map(|f| {
                Ok((
                    f.display().to_string(),
                    Box::new(std::io::BufReader::new(
                        std::fs::File::open(f).with_context(|| format!("cannot open {}", f.display()))?,
                    )) as Box<dyn std::io::BufRead>,
                ))
            })
            .collect::<anyhow::Result<_>>()?
    };
    for (name, reader) in readers {
        for (i, line) in reader.lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let converted;
            let text = match input {
                InputFormat::Tracefold => line.as_str(),
                InputFormat::Sentry => {
                    match serde_json::from_str::<serde_json::Value>(&line)
                        .map_err(|e| e.to_string())
                        .and_then(|v| tracefold_model::sentry::to_event(&v, None).map_err(|e| e.to_string()))
                    {
                        Ok(v) => {
                            converted = v.to_string();
                            converted.as_str()
                        }
                        Err(e) => {
                            errors += 1;
                            eprintln!("{name}:{}: invalid sentry event: {}", i + 1, printable(&e));
                            outln!(
                                "{}",
                                serde_json::json!({"line": i + 1, "error": format!("invalid sentry event: {e}")})
                            );
                            continue;
                        }
                    }
                }
            };
            let out = match tracefold_model::parse_event_str(text) {
                Ok(ev) => {
                    let meta = tracefold_fingerprint::describe(&ev);
                    if explain {
                        let ex = tracefold_fingerprint::explain(&ev, cfg);
                        serde_json::json!({"line": i + 1, "fingerprint": ex.fingerprint, "title": meta.title, "grouping_version": ex.grouping_version, "basis": ex.basis, "components": ex.components})
                    } else {
                        let fp = tracefold_fingerprint::fingerprint(&ev, cfg, &mut scratch);
                        serde_json::json!({"line": i + 1, "fingerprint": fp.to_hex(), "title": meta.title, "grouping_version": tracefold_fingerprint::GROUPING_VERSION})
                    }
                }
                Err(e) => {
                    errors += 1;
                    eprintln!("{name}:{}: {}", i + 1, printable(&e.to_string()));
                    serde_json::json!({"line": i + 1, "error": e.to_string()})
                }
            };
            outln!("{out}");
        }
    }
    if errors > 0 {
        anyhow::bail!("{errors} lines could not be read");
    }
    Ok(())
}
