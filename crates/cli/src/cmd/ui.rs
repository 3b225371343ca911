//! `tracefold ui`: serves the web UI until Ctrl-C.

use crate::args::UiArgs;
use anyhow::Context as _;

/// Runs `tracefold ui`.
///
/// # Errors
/// When the address cannot be bound.
pub async fn run(a: UiArgs) -> anyhow::Result<()> {
    let listener =
        tokio::net::TcpListener::bind(&a.listen).await.with_context(|| format!("cannot listen on {}", a.listen))?;
    let addr = listener.local_addr()?;
    let signals = a.bootstrap_servers.map(|b| tracefold_ui::signals::Source {
        kafka: tracefold_runtime::config::KafkaConfig { bootstrap_servers: b, ..Default::default() },
        topic: a.signals_topic,
    });
    let cfg = tracefold_ui::Config { clickhouse: a.ch.config(), signals, operator_token: a.operator_token };
    eprintln!(
        "tracefold ui on http://{addr}/ ({}); Ctrl-C stops it",
        if cfg.operator_token.is_some() { "status changes allowed with the operator token" } else { "read-only" }
    );
    tracefold_ui::serve(listener, cfg, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
