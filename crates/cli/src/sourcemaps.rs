//! `tracefold sourcemaps upload`: finds a build's source maps (`*.js.map`) and their minified
//! files (`*.js` beside them), checks every map with [`ParsedMap::parse`] before anything is
//! sent, and posts each artifact to the producer's `POST /api/{project}/sourcemaps`
//! (one request per artifact, see `tracefold_producer::sourcemaps`).

use crate::render::{table, thousands, Align};
use anyhow::{bail, Context as _};
use std::path::{Path, PathBuf};
use tracefold_symbolicate::store::ArtifactKind;
use tracefold_symbolicate::{debug_id_of_minified, Limits, ParsedMap};

/// One file to upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// The file.
    pub path: PathBuf,
    /// The minified file's url key (`~/static/js/main.js`), for the map and the minified file.
    pub url_key: String,
    /// Map or minified file.
    pub kind: ArtifactKind,
    /// Debug id (the map's `debug_id`, or the minified file's `//# debugId=`).
    pub debug_id: Option<String>,
    /// Size in bytes.
    pub size: u64,
}

/// A file found but not uploaded, and why (listed in the summary: nothing is left out in
/// silence).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The file.
    pub path: PathBuf,
    /// Why.
    pub why: String,
}

/// What [`collect`] found.
#[derive(Debug, Default)]
pub struct Found {
    /// To upload, each map followed by its minified file.
    pub artifacts: Vec<Artifact>,
    /// Minified files left out (too large, not UTF-8); their maps are still uploaded.
    pub skipped: Vec<Skipped>,
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("cannot read directory {}", dir.display()))?;
    for e in entries {
        let e = e.with_context(|| format!("cannot read directory {}", dir.display()))?;
        let ty = e.file_type().with_context(|| format!("cannot stat {}", e.path().display()))?;
        if ty.is_dir() {
            walk(&e.path(), out)?;
        } else if ty.is_file() && e.file_name().to_string_lossy().ends_with(".js.map") {
            out.push(e.path());
        }
    }
    Ok(())
}

/// The url key of `file` (under `dir`) with `prefix`: `~/static/js` and `main.js` ->
/// `~/static/js/main.js`.
pub fn url_key_of(dir: &Path, file: &Path, prefix: &str) -> String {
    let rel = file.strip_prefix(dir).unwrap_or(file);
    let rel: Vec<String> = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    let prefix = prefix.trim_end_matches('/');
    format!("{prefix}/{}", rel.join("/"))
}

/// Walks `dir` for `*.js.map` and the `*.js` beside each, and checks every map.
///
/// # Errors
/// When `dir` cannot be read, has no map, a map is not a usable source map (the error names
/// the file and the [`tracefold_symbolicate::MapError`]), or a map's and its minified file's
/// debug ids differ.
pub fn collect(dir: &Path, url_prefix: &str, limits: &Limits) -> anyhow::Result<Found> {
    let mut maps = Vec::new();
    walk(dir, &mut maps)?;
    maps.sort();
    if maps.is_empty() {
        bail!("no *.js.map file under {}", dir.display());
    }
    let mut found = Found::default();
    for map_path in maps {
        let bytes = std::fs::read(&map_path).with_context(|| format!("cannot read {}", map_path.display()))?;
        let parsed = ParsedMap::parse(&bytes, None, limits).with_context(|| format!("{}", map_path.display()))?;
        let js_path = map_path.with_extension("");
        let url_key = url_key_of(dir, &js_path, url_prefix);
        let mut debug_id = parsed.debug_id();
        let mut minified = None;
        if js_path.is_file() {
            let js = std::fs::read(&js_path).with_context(|| format!("cannot read {}", js_path.display()))?;
            if js.len() > limits.max_minified_bytes {
                let why = format!("larger than {} bytes", limits.max_minified_bytes);
                found.skipped.push(Skipped { path: js_path, why });
            } else if let Ok(text) = std::str::from_utf8(&js) {
                match (debug_id.as_deref(), debug_id_of_minified(text)) {
                    (Some(a), Some(b)) if a != b => {
                        bail!("{} has debug id {a} but {} has {b}; rebuild both", map_path.display(), js_path.display())
                    }
                    (None, Some(b)) => debug_id = Some(b),
                    _ => {}
                }
                minified = Some(Artifact {
                    path: js_path,
                    url_key: url_key.clone(),
                    kind: ArtifactKind::Minified,
                    debug_id: None,
                    size: js.len() as u64,
                });
            } else {
                found.skipped.push(Skipped { path: js_path, why: "not UTF-8".into() });
            }
        }
        found.artifacts.push(Artifact {
            path: map_path,
            url_key,
            kind: ArtifactKind::Map,
            debug_id: debug_id.clone(),
            size: bytes.len() as u64,
        });
        if let Some(mut m) = minified {
            m.debug_id = debug_id;
            found.artifacts.push(m);
        }
    }
    Ok(found)
}

/// Where and as whom to upload.
#[derive(Debug, Clone)]
pub struct Target {
    /// The producer's base URL (`http://127.0.0.1:8080`).
    pub endpoint: String,
    /// Project slug (or registered numeric id).
    pub project: String,
    /// Release.
    pub release: String,
    /// One of the project's keys.
    pub key: String,
}

/// The producer's answer for one artifact.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Uploaded {
    /// Url key stored under.
    pub url: String,
    /// `map` or `minified`.
    pub kind: String,
    /// Debug id stored with it.
    pub debug_id: Option<String>,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256, hex.
    pub sha256: String,
}

/// Posts one artifact.
///
/// # Errors
/// When the producer cannot be reached, or answers with an error (its JSON `error` quoted).
pub async fn upload_one(client: &reqwest::Client, t: &Target, a: &Artifact) -> anyhow::Result<Uploaded> {
    let bytes = std::fs::read(&a.path).with_context(|| format!("cannot read {}", a.path.display()))?;
    let base = t.endpoint.trim_end_matches('/');
    let mut url = reqwest::Url::parse(&format!("{base}/api/{}/sourcemaps", t.project))
        .with_context(|| format!("bad endpoint {:?}", t.endpoint))?;
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("release", &t.release).append_pair("url", &a.url_key).append_pair("kind", a.kind.as_str());
        if let Some(id) = &a.debug_id {
            q.append_pair("debug_id", id);
        }
    }
    let resp = client
        .post(url)
        .header("x-tracefold-key", &t.key)
        .body(bytes)
        .send()
        .await
        .with_context(|| format!("cannot reach the producer at {}", t.endpoint))?;
    let status = resp.status();
    let text = resp.text().await.context("cannot read the producer's answer")?;
    if !status.is_success() {
        let why = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or(text);
        bail!("{}: the producer answered {status}: {why}", a.path.display());
    }
    serde_json::from_str(&text).with_context(|| format!("unexpected answer from the producer: {text}"))
}

/// Uploads every artifact of `found` in order, calling `progress(i, n, artifact)` before each.
///
/// # Errors
/// At the first artifact that fails (those before it are stored; uploading again is harmless).
pub async fn upload_all(
    t: &Target,
    found: &Found,
    mut progress: impl FnMut(usize, usize, &Artifact),
) -> anyhow::Result<Vec<Uploaded>> {
    let client = reqwest::Client::new();
    let n = found.artifacts.len();
    let mut out = Vec::with_capacity(n);
    for (i, a) in found.artifacts.iter().enumerate() {
        progress(i + 1, n, a);
        out.push(upload_one(&client, t, a).await?);
    }
    Ok(out)
}

/// The summary table: one row per artifact uploaded, then the files left out.
pub fn render_summary(found: &Found, uploaded: &[Uploaded]) -> String {
    let mut rows: Vec<Vec<String>> = found
        .artifacts
        .iter()
        .zip(uploaded)
        .map(|(a, u)| {
            vec![
                u.url.clone(),
                u.kind.clone(),
                thousands(u.size),
                u.debug_id.clone().unwrap_or_else(|| "-".into()),
                u.sha256.get(..12).unwrap_or(&u.sha256).to_owned(),
                format!("stored ({})", a.path.display()),
            ]
        })
        .collect();
    for s in &found.skipped {
        rows.push(vec![
            "-".into(),
            "minified".into(),
            "-".into(),
            "-".into(),
            "-".into(),
            format!("skipped ({}): {}", s.path.display(), s.why),
        ]);
    }
    let headers = [
        ("url", Align::Left),
        ("kind", Align::Left),
        ("bytes", Align::Right),
        ("debug id", Align::Left),
        ("sha256", Align::Left),
        ("status", Align::Left),
    ];
    table(&headers, &rows, 120)
}
