//! `tracefold sourcemaps upload`: the body is `tracefold_cli::sourcemaps`.

use crate::args::{SourcemapsAction, SourcemapsArgs};
use tracefold_cli::sourcemaps::{collect, render_summary, upload_all, Target};
use tracefold_symbolicate::Limits;

/// Runs `tracefold sourcemaps`.
///
/// # Errors
/// When a map is not usable (nothing is sent then), or the producer refuses an artifact.
pub async fn run(a: SourcemapsArgs) -> anyhow::Result<()> {
    match a.action {
        SourcemapsAction::Upload(u) => {
            let found = collect(&u.dir, &u.url_prefix, &Limits::default())?;
            let maps = found.artifacts.iter().filter(|a| a.kind == tracefold_symbolicate::store::ArtifactKind::Map);
            eprintln!(
                "{} source maps checked, {} files to upload to {} (project {}, release {})",
                maps.count(),
                found.artifacts.len(),
                u.endpoint,
                u.project,
                u.release
            );
            let target = Target { endpoint: u.endpoint, project: u.project, release: u.release, key: u.key };
            let uploaded = upload_all(&target, &found, |i, n, a| {
                eprintln!(
                    "[{i}/{n}] {} ({}, {} bytes)",
                    tracefold_cli::render::printable(&a.url_key),
                    a.kind.as_str(),
                    a.size
                );
            })
            .await?;
            print!("{}", render_summary(&found, &uploaded));
            Ok(())
        }
    }
}
