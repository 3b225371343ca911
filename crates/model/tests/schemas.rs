//! The checked-in JSON Schemas and examples agree with the model.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn schemas_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas")
}

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn every_example_parses_and_validates() {
    let dir = schemas_dir().join("examples");
    let mut platforms = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let ev = tracefold_model::parse_event_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let received = ev.timestamp.expect("examples carry a timestamp");
        tracefold_model::validate(&ev, received).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        platforms.insert(ev.platform.unwrap().into_owned());
    }
    for p in ["javascript", "node", "python", "java", "go", "ruby", "php", "csharp", "rust"] {
        assert!(platforms.contains(p), "an example for {p}");
    }
}

#[test]
fn event_schema_names_exactly_the_model_fields() {
    let schema = read_json(&schemas_dir().join("event.v1.schema.json"));
    let in_schema: BTreeSet<String> = schema["properties"].as_object().unwrap().keys().cloned().collect();
    // A fully populated event, serialized by the model, plus timestamp (read, never written).
    let full = std::fs::read_to_string(schemas_dir().join("examples/javascript.json")).unwrap();
    let mut ev = tracefold_model::parse_event_str(&full).unwrap();
    ev.logentry = Some(tracefold_model::event::LogEntry { message: Some("m".into()), formatted: None });
    ev.message = Some("m".into());
    ev.fingerprint = vec!["x".into()];
    ev.logger = Some("l".into());
    let v = serde_json::to_value(&ev).unwrap();
    let mut in_model: BTreeSet<String> = v.as_object().unwrap().keys().cloned().collect();
    in_model.insert("timestamp".into());
    assert_eq!(in_schema, in_model);
    let required: Vec<&str> = schema["required"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(required, ["event_id", "project"]);
}

#[test]
fn aggregate_schema_names_exactly_the_record_fields() {
    let schema = read_json(&schemas_dir().join("aggregate.v1.schema.json"));
    let in_schema: BTreeSet<String> = schema["properties"].as_object().unwrap().keys().cloned().collect();
    let rec = tracefold_model::AggregateRecord {
        v: 1,
        batch: tracefold_model::BatchRef {
            epoch: "e".into(),
            topic: "t".into(),
            partition: 0,
            first_offset: 0,
            last_offset: 0,
            index: 0,
            count: 1,
        },
        project: "p".into(),
        issue_id: "0".repeat(32),
        minute: 0,
        release: String::new(),
        environment: String::new(),
        count: 1,
        users: Default::default(),
        first_seen_ms: 0,
        last_seen_ms: 0,
        title: String::new(),
        culprit: String::new(),
        exc_type: String::new(),
        level: String::new(),
        platform: String::new(),
        grouping_version: String::new(),
        sample: String::new(),
    };
    let v = serde_json::to_value(&rec).unwrap();
    let in_model: BTreeSet<String> = v.as_object().unwrap().keys().cloned().collect();
    assert_eq!(in_schema, in_model);
    let batch_fields: BTreeSet<String> = v["batch"].as_object().unwrap().keys().cloned().collect();
    let schema_batch: BTreeSet<String> =
        schema["properties"]["batch"]["properties"].as_object().unwrap().keys().cloned().collect();
    assert_eq!(batch_fields, schema_batch);
}
