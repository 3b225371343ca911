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
    let det: tracefold_detector::Config =
        tracefold_runtime::config::load(Some(&config("detector.toml")), Vec::new()).unwrap();
    assert_eq!(det, tracefold_detector::Config::default(), "detector.toml shows the defaults");
    let d: tracefold_devtools::dev::DevConfig =
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

#[test]
fn grouping_rules_from_a_config_file_change_fingerprints() {
    let dir = std::env::temp_dir().join(format!("tracefold-rules-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("grouper.toml");
    std::fs::write(
        &f,
        r#"
[[grouping.fingerprint_rules]]
match = { type = "ConnectionRefused*" }
fingerprint = ["database-unavailable"]

[[grouping.stack_rules]]
match = { function = "reportError" }
action = "cut"
"#,
    )
    .unwrap();
    let cfg: tracefold_grouper::Config = tracefold_runtime::config::load(Some(&f), Vec::new()).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let fp = |json: &str, grouping: &tracefold_fingerprint::GroupingConfig| {
        let ev = tracefold_model::parse_event_str(json).unwrap();
        tracefold_fingerprint::fingerprint(&ev, grouping, &mut Default::default())
    };
    let stack = |top: &str, ty: &str| {
        format!(
            r#"{{"exception":[{{"type":"{ty}","stacktrace":{{"frames":[
            {{"function":"{top}","filename":"a.py","in_app":true}},
            {{"function":"reportError","filename":"errors.py","in_app":true}},
            {{"function":"formatReport","filename":"errors.py","in_app":true}}]}}}}]}}"#
        )
    };
    let defaults = tracefold_fingerprint::GroupingConfig::default();
    // Two different refused connections: one issue by the rule, two without it.
    let (a, b) = (stack("load_cart", "ConnectionRefusedError"), stack("load_user", "ConnectionRefusedError"));
    assert_eq!(fp(&a, &cfg.grouping), fp(&b, &cfg.grouping));
    assert_ne!(fp(&a, &defaults), fp(&b, &defaults));
    // The helper is cut: changing what it calls no longer matters.
    let c = stack("load_cart", "KeyError");
    let d = c.replace("formatReport", "renderReport");
    assert_eq!(fp(&c, &cfg.grouping), fp(&d, &cfg.grouping));
    assert_ne!(fp(&c, &defaults), fp(&d, &defaults));
}
