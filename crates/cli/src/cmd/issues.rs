//! `tracefold top` and `tracefold issue`: the analyst queries, as tables or JSON.

use crate::args::{Format, IssueAction, IssueArgs, TopArgs};
use crate::out::{out, outln};
use tracefold_cli::query;
use tracefold_store::issues::{StatusChange, TopQuery};
use tracefold_store::IssueStatus;

/// Runs `tracefold top`.
///
/// # Errors
/// When ClickHouse does not answer.
pub async fn top(a: TopArgs) -> anyhow::Result<()> {
    let cfg = a.ch.config();
    let client = tracefold_store::client::client(&cfg);
    let q = TopQuery { since_secs: a.since.as_secs(), limit: a.limit, project: a.project.as_deref(), by: a.by.into() };
    // `--by users|events` over 7 or 30 days: the writer's latest ranking while it is fresh and
    // holds the answer (any other case, a stale or missing ranking, a list cut short of the
    // answer, or `--fresh`: counted now, as always).
    if !a.fresh {
        if let Ok(Ok((rows, ranked))) = tracefold_store::rankings::top_cached(&client, &cfg.database, &q).await {
            match a.format {
                Format::Json => {
                    // Each row says it was ranked, and when; an empty list cannot, so the
                    // note also goes to stderr, beside the JSON rather than in it.
                    outln!("{}", serde_json::to_string_pretty(&query::cached_json(&rows, &ranked))?);
                    eprintln!("{}", query::ranked_note(&ranked));
                }
                Format::Table => {
                    out!("{}", query::render_top(&rows));
                    outln!("{}", query::ranked_note(&ranked));
                }
            }
            return Ok(());
        }
    }
    let rows = tracefold_store::issues::top(&client, &cfg.database, &q).await?;
    match a.format {
        Format::Json => outln!("{}", serde_json::to_string_pretty(&rows)?),
        Format::Table => out!("{}", query::render_top(&rows)),
    }
    Ok(())
}

/// Runs `tracefold issue`: shows one issue, or changes its status.
///
/// # Errors
/// When no id is given, the issue is unknown or ambiguous, or ClickHouse does not answer.
pub async fn issue(a: IssueArgs) -> anyhow::Result<()> {
    let IssueArgs { action, id, project, hours, format, ch } = a;
    let cfg = ch.config();
    let client = tracefold_store::client::client(&cfg);
    let Some(action) = action else {
        let id = id.ok_or_else(|| anyhow::anyhow!("give an issue id (see tracefold top)"))?;
        let d = query::issue_detail(&client, &cfg.database, &id, project.as_deref(), hours).await?;
        match format {
            Format::Json => outln!("{}", serde_json::to_string_pretty(&d)?),
            Format::Table => out!("{}", query::render_issue(&d)),
        }
        return Ok(());
    };
    let (id, status, release, note) = match action {
        IssueAction::Resolve { id, release, note } => (id, IssueStatus::Resolved, release, note),
        IssueAction::Ignore { id, note } => (id, IssueStatus::Ignored, String::new(), note),
        IssueAction::Reopen { id, note } => (id, IssueStatus::Active, String::new(), note),
    };
    let d = query::issue_detail(&client, &cfg.database, &id, project.as_deref(), 1).await?;
    let actor = std::env::var("USER").unwrap_or_else(|_| "tracefold".into());
    // An alias (merged into another issue by a late source map) has its canonical issue's status.
    let id = d.issue_id.clone();
    let change =
        StatusChange { project: &d.project, issue_id: &id, status, actor: &actor, release: &release, note: &note };
    tracefold_store::issues::set_status(&client, &cfg.database, &change).await?;
    match format {
        Format::Json => outln!(
            "{}",
            serde_json::json!({"project": d.project, "issue_id": id, "status": status, "release": release})
        ),
        Format::Table => {
            use tracefold_cli::render::printable as p;
            outln!("{} {} ({}): {} -> {status}", p(&d.project), p(&id), p(&d.title), d.status);
        }
    }
    Ok(())
}
