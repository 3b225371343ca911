//! The example configs in deploy/config are valid for their services and show the defaults.

use std::path::{Path, PathBuf};

fn config(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config").join(name)
}

#[test]
fn service_examples_load_and_equal_the_defaults() {
    let p: tracefold_producer::Config =
        tracefold_runtime::config::load(Some(&config("producer.toml")), Vec::new()).unwrap();
    assert_eq!(p, tracefold_producer::Config::default(), "producer.toml shows the defaults");
    let g: tracefold_grouper::Config =
        tracefold_runtime::config::load(Some(&config("grouper.toml")), Vec::new()).unwrap();
    assert_eq!(g, tracefold_grouper::Config::default(), "grouper.toml shows the defaults");
    let w: tracefold_writer::Config =
        tracefold_runtime::config::load(Some(&config("writer.toml")), Vec::new()).unwrap();
    assert_eq!(w, tracefold_writer::Config::default(), "writer.toml shows the defaults");
    let d: tracefold_cli::dev::DevConfig =
        tracefold_runtime::config::load(Some(&config("dev.toml")), Vec::new()).unwrap();
    assert_eq!(d.http.listen, "127.0.0.1:8080");
}

#[test]
fn a_grouper_key_in_the_writer_config_is_named_with_the_file() {
    let dir = std::env::temp_dir().join(format!("tracefold-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("writer.toml");
    std::fs::write(&f, "[writer]\nbatch_max_events = 5\n").unwrap();
    let err =
        tracefold_runtime::config::load::<tracefold_writer::Config, _>(Some(&f), Vec::new()).unwrap_err().to_string();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(err.contains("batch_max_events") && err.contains("writer.toml"), "{err}");
}
