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
    let grouping = match &a.grouping_from {
        Some(path) => grouping_from(path)?,
        None => tracefold_fingerprint::GroupingConfig::default(),
    };
    let cfg = tracefold_ui::Config { clickhouse: a.ch.config(), signals, operator_token: a.operator_token, grouping };
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

/// The `[grouping]` section of the config file at `path` (the default config when the file has
/// none), with the same `TRACEFOLD__GROUPING__*` overrides the grouper takes. Only that section
/// is read: the rest of the file (a grouper's or `tracefold dev`'s config) is not the UI's.
///
/// # Errors
/// The file cannot be read, is not TOML, or its `[grouping]` section is not a grouping config
/// (the message names the file and the key).
pub fn grouping_from(path: &std::path::Path) -> anyhow::Result<tracefold_fingerprint::GroupingConfig> {
    /// A config file seen through its `[grouping]` section (other sections are ignored).
    #[derive(serde::Deserialize, serde::Serialize, Default)]
    struct OnlyGrouping {
        #[serde(default)]
        grouping: tracefold_fingerprint::GroupingConfig,
    }
    let only: OnlyGrouping = tracefold_runtime::config::load(Some(path), std::env::vars())?;
    Ok(only.grouping)
}

#[cfg(test)]
mod tests {
    use super::grouping_from;

    /// A file holding `text`, removed when dropped.
    struct File(std::path::PathBuf);

    impl File {
        fn path(&self) -> &std::path::Path {
            &self.0
        }
    }

    impl Drop for File {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn file(text: &str) -> File {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("tracefold-ui-grouping-{}-{n}.toml", std::process::id()));
        std::fs::write(&path, text).unwrap();
        File(path)
    }

    #[test]
    fn the_grouping_section_of_a_grouper_config_is_read_and_the_rest_ignored() {
        let f = file(
            "[grouper]\nbatch_max_age_ms = 500\n\n[grouping]\nmax_frames = 4\n\n[[grouping.stack_rules]]\n\
             match = { module = \"shop.cache\" }\naction = \"-group\"\n",
        );
        let g = grouping_from(f.path()).unwrap();
        assert_eq!(g.max_frames, 4);
        assert_eq!(g.stack_rules.len(), 1);
        // No [grouping]: the default.
        let f = file("[grouper]\nbatch_max_age_ms = 500\n");
        assert_eq!(grouping_from(f.path()).unwrap(), tracefold_fingerprint::GroupingConfig::default());
    }

    #[test]
    fn a_bad_grouping_section_names_the_file_and_the_key() {
        let f = file("[grouping]\nmax_frames = \"ten\"\n");
        let e = format!("{:#}", grouping_from(f.path()).unwrap_err());
        assert!(e.contains(&f.path().display().to_string()) && e.contains("max_frames"), "{e}");
        let f = file("[grouping]\nmax_frame = 3\n");
        let e = format!("{:#}", grouping_from(f.path()).unwrap_err());
        assert!(e.contains("max_frame"), "{e}");
        let e = format!("{:#}", grouping_from(std::path::Path::new("/nonexistent/grouper.toml")).unwrap_err());
        assert!(e.contains("/nonexistent/grouper.toml"), "{e}");
    }
}
