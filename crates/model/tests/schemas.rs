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
    // A fully populated event, serialized by the model.
    let full = std::fs::read_to_string(schemas_dir().join("examples/javascript.json")).unwrap();
    let mut ev = tracefold_model::parse_event_str(&full).unwrap();
    ev.logentry = Some(tracefold_model::event::LogEntry { message: Some("m".into()), formatted: None });
    ev.message = Some("m".into());
    ev.fingerprint = vec!["x".into()];
    ev.logger = Some("l".into());
    ev.threads = vec![tracefold_model::event::Thread { id: Some("1".into()), ..Default::default() }];
    ev.debug_meta = Some(tracefold_model::event::DebugMeta { images: Vec::new() });
    let v = serde_json::to_value(&ev).unwrap();
    let in_model: BTreeSet<String> = v.as_object().unwrap().keys().cloned().collect();
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
        batch: tracefold_model::BatchRef { epoch: "e".into(), topic: "t".into(), count: 1, ..Default::default() },
        project: "p".into(),
        issue_id: "0".repeat(32),
        count: 1,
        // Left out when empty: set, so that it is named.
        merged_from: vec!["1".repeat(32)],
        ..Default::default()
    };
    let v = serde_json::to_value(&rec).unwrap();
    let in_model: BTreeSet<String> = v.as_object().unwrap().keys().cloned().collect();
    assert_eq!(in_schema, in_model);
    let batch_fields: BTreeSet<String> = v["batch"].as_object().unwrap().keys().cloned().collect();
    let schema_batch: BTreeSet<String> =
        schema["properties"]["batch"]["properties"].as_object().unwrap().keys().cloned().collect();
    assert_eq!(batch_fields, schema_batch);
}

/// A validator for the schema file `name`, with `format` asserted (`date-time`).
fn validator(name: &str) -> jsonschema::Validator {
    let schema = read_json(&schemas_dir().join(name));
    jsonschema::options().should_validate_formats(true).build(&schema).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Every schema violation of `doc`, as `instance path: message`.
fn violations(v: &jsonschema::Validator, doc: &serde_json::Value) -> Vec<String> {
    v.iter_errors(doc).map(|e| format!("{}: {e}", e.instance_path())).collect()
}

/// The examples, by file name.
fn examples() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = std::fs::read_dir(schemas_dir().join("examples"))
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            (path.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read_to_string(&path).unwrap())
        })
        .collect();
    out.sort();
    out
}

#[test]
fn every_example_is_valid_against_the_event_schema() {
    let v = validator("event.v1.schema.json");
    let examples = examples();
    assert_eq!(examples.len(), 10, "nine platforms and a message-only event");
    for (name, text) in &examples {
        let doc: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(violations(&v, &doc), Vec::<String>::new(), "{name}");
    }
}

/// `doc` with the value at JSON pointer `at` replaced by `value`, or removed when `None`.
fn mutate(doc: &serde_json::Value, at: &str, value: Option<serde_json::Value>) -> serde_json::Value {
    let mut doc = doc.clone();
    let (parent, key) = at.rsplit_once('/').unwrap();
    let p = doc.pointer_mut(parent).unwrap_or_else(|| panic!("{parent} exists"));
    match (p, value) {
        (serde_json::Value::Object(m), Some(v)) => {
            m.insert(key.to_owned(), v);
        }
        (serde_json::Value::Object(m), None) => {
            assert!(m.remove(key).is_some(), "{at} exists");
        }
        (serde_json::Value::Array(a), Some(v)) => a[key.parse::<usize>().unwrap()] = v,
        (serde_json::Value::Array(a), None) => {
            a.remove(key.parse::<usize>().unwrap());
        }
        (other, _) => panic!("{parent} is {other}"),
    }
    doc
}

#[test]
fn invalid_events_fail_the_event_schema_where_they_are_wrong() {
    use serde_json::json;
    let v = validator("event.v1.schema.json");
    let base: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(schemas_dir().join("examples/python.json")).unwrap()).unwrap();
    assert!(v.is_valid(&base));
    let lineno = "/exception/0/stacktrace/frames/0/lineno";
    let in_app = "/exception/0/stacktrace/frames/0/in_app";
    let exc33 = json!((0..33).map(|i| json!({"type": format!("E{i}")})).collect::<Vec<_>>());
    // (what is changed, its new value (None: removed), where the schema must say it is wrong)
    let cases: Vec<(&str, Option<serde_json::Value>, &str)> = vec![
        ("/event_id", None, ""),
        ("/event_id", Some(json!("not-an-id")), "/event_id"),
        ("/project", None, ""),
        ("/project", Some(json!("Web")), "/project"),
        ("/timestamp", Some(json!("yesterday")), "/timestamp"),
        ("/timestamp", Some(json!(true)), "/timestamp"),
        ("/level", Some(json!("loud")), "/level"),
        ("/release", Some(json!("r".repeat(201))), "/release"),
        ("/environment", Some(json!("prod/eu")), "/environment"),
        ("/exception", Some(json!([])), ""),
        ("/exception", Some(json!("not a list")), "/exception"),
        ("/exception", Some(exc33), "/exception"),
        ("/exception/0", Some(json!({"module": "m"})), "/exception/0"),
        ("/exception/0/mechanism/handled", Some(json!("yes")), "/exception/0/mechanism/handled"),
        (lineno, Some(json!(-1)), lineno),
        (in_app, Some(json!("true")), in_app),
        ("/user", Some(json!({"id": 1.5})), "/user/id"),
        ("/tags", Some(json!({"route": 7})), "/tags/route"),
        ("/fingerprint", Some(json!(["ok", 1])), "/fingerprint/1"),
        ("/contexts", Some(json!({"os": {"name": 10}})), "/contexts/os/name"),
    ];
    for (at, value, wrong_at) in cases {
        let doc = mutate(&base, at, value.clone());
        let errors: Vec<String> = v.iter_errors(&doc).map(|e| e.instance_path().to_string()).collect();
        assert!(!errors.is_empty(), "{at} = {value:?} passes the schema");
        assert!(errors.iter().all(|p| p == wrong_at), "{at} = {value:?}: errors at {errors:?}, expected {wrong_at:?}");
        // The model refuses it too: the schema describes what the grouper accepts.
        let text = serde_json::to_string(&doc).unwrap();
        let received = tracefold_model::parse_event_str(&serde_json::to_string(&base).unwrap()).unwrap().timestamp;
        let model = tracefold_model::parse_event_str(&text)
            .map_err(|e| e.to_string())
            .and_then(|ev| tracefold_model::validate(&ev, received.unwrap()).map(|_| ()).map_err(|e| e.to_string()));
        assert!(model.is_err(), "{at} = {value:?}: the schema refuses it, the model accepts it");
    }
    // An event without exception, message or logentry has nothing to group by.
    let mut bare = mutate(&base, "/exception", None);
    bare.as_object_mut().unwrap().retain(|k, _| k != "message" && k != "logentry");
    assert!(!v.is_valid(&bare));
    let text = serde_json::to_string(&bare).unwrap();
    let ev = tracefold_model::parse_event_str(&text).unwrap();
    assert!(tracefold_model::validate(&ev, ev.timestamp.unwrap()).is_err());
    assert!(v.is_valid(&mutate(&bare, "/message", Some(json!("m")))));
}

/// Aggregate records as the grouper emits them: the real batch builder over every example,
/// the events again in a later minute without a user, and more users than the exact bound.
fn real_aggregates() -> Vec<tracefold_model::AggregateRecord> {
    use tracefold_grouper::batch::{BatchBuilder, BatchOptions};
    let mut b = BatchBuilder::new(BatchOptions { max_users: 3, ..BatchOptions::default() });
    let mut offset = 100;
    // Received when it happened (no clamping); each event with an id of its own.
    let add = |b: &mut BatchBuilder, offset: &mut i64, doc: &mut serde_json::Value| {
        doc["event_id"] = serde_json::json!(format!("{offset:032x}"));
        let bytes = serde_json::to_string(doc).unwrap();
        let received = tracefold_model::parse_event_str(&bytes).unwrap().timestamp.unwrap();
        b.add(bytes.as_bytes(), *offset, received);
        *offset += 1;
    };
    for (_, text) in examples() {
        let mut doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        add(&mut b, &mut offset, &mut doc);
        // The same issue a minute later, without a user: a second bucket, without a sample.
        let at = tracefold_model::parse_event_str(&text).unwrap().timestamp.unwrap();
        doc["timestamp"] = serde_json::json!(at / 1000 + 60);
        doc.as_object_mut().unwrap().remove("user");
        add(&mut b, &mut offset, &mut doc);
        // Five users in that bucket, more than the bound of 3: a saturated user set.
        for u in 0..5 {
            doc["user"] = serde_json::json!({"id": format!("u{u}")});
            add(&mut b, &mut offset, &mut doc);
        }
    }
    let out = b.finish("epoch-1", "tracefold.events", 2, 100, offset - 1);
    assert!(out.rejected.is_empty(), "{:?}", out.rejected);
    assert_eq!(out.accepted, 70);
    assert_eq!(out.records.iter().map(|r| r.count).sum::<u64>(), 70);
    out.records
}

#[test]
fn aggregates_from_the_real_batch_builder_are_valid_against_the_aggregate_schema() {
    let v = validator("aggregate.v1.schema.json");
    let records = real_aggregates();
    assert_eq!(records.len(), 20, "two minutes of ten issues");
    assert!(records.iter().any(|r| r.sample.is_empty()) && records.iter().any(|r| !r.sample.is_empty()));
    assert!(records.iter().any(|r| r.users.saturated) && records.iter().any(|r| !r.users.saturated));
    assert!(records.iter().any(|r| !r.breakdown.browser.is_empty() && !r.breakdown.url.is_empty()), "breakdowns");
    for r in &records {
        // As it goes on the topic: the record's own JSON encoding.
        let doc: serde_json::Value = serde_json::from_str(&serde_json::to_string(r).unwrap()).unwrap();
        assert_eq!(violations(&v, &doc), Vec::<String>::new(), "{doc}");
    }
}

#[test]
fn invalid_aggregates_fail_the_aggregate_schema_where_they_are_wrong() {
    use serde_json::json;
    let v = validator("aggregate.v1.schema.json");
    let base = serde_json::to_value(&real_aggregates()[0]).unwrap();
    assert!(v.is_valid(&base));
    let cases: Vec<(&str, Option<serde_json::Value>, &str)> = vec![
        ("/v", Some(json!(2)), "/v"),
        ("/issue_id", Some(json!("ABCDEF")), "/issue_id"),
        ("/issue_id", None, ""),
        ("/count", Some(json!(0)), "/count"),
        ("/minute", Some(json!("2026-11-26T00:00:00Z")), "/minute"),
        ("/users/saturated", None, "/users"),
        ("/users/hashes", Some(json!([-1])), "/users/hashes/0"),
        ("/batch/index", Some(json!(-1)), "/batch/index"),
        ("/batch/count", Some(json!(0)), "/batch/count"),
        ("/batch/first_offset", None, "/batch"),
        ("/sample", Some(json!({"message": "m"})), "/sample"),
        ("/breakdown", Some(json!({"os": [{"value": "Linux", "count": 0}]})), "/breakdown/os/0/count"),
        ("/breakdown", Some(json!({"os": [{"value": "", "count": 1}]})), "/breakdown/os/0/value"),
    ];
    for (at, value, wrong_at) in cases {
        let doc = mutate(&base, at, value.clone());
        let errors: Vec<String> = v.iter_errors(&doc).map(|e| e.instance_path().to_string()).collect();
        assert!(!errors.is_empty(), "{at} = {value:?} passes the schema");
        assert!(errors.iter().all(|p| p == wrong_at), "{at} = {value:?}: errors at {errors:?}, expected {wrong_at:?}");
    }
}

/// A valid event as the model serializes it (the producer publishes Sentry events so) is valid
/// against the event schema: every example, and events with any text in every field.
#[test]
fn serialized_events_are_valid_against_the_event_schema() {
    let v = validator("event.v1.schema.json");
    for (name, text) in examples() {
        let ev = tracefold_model::parse_event_str(&text).unwrap();
        let doc = serde_json::to_value(&ev).unwrap();
        assert_eq!(violations(&v, &doc), Vec::<String>::new(), "{name}: {doc}");
        assert!(doc["timestamp"].is_string(), "{name}: timestamps are written as RFC 3339");
        // Everything the model reads is written again (tags in their order: not through a map).
        let text = serde_json::to_string(&ev).unwrap();
        assert_eq!(tracefold_model::parse_event_str(&text).unwrap(), ev, "{name}");
    }
}

mod any_text {
    use super::*;
    use proptest::prelude::*;
    use std::borrow::Cow;
    use tracefold_model::event::{Event, Exception, Frame, Stacktrace, User};

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            "\\PC{1,40}",
            "[\u{4e00}-\u{9fff}]{1,20}",
            "[a-z]{1,5}[\u{0300}-\u{036f}]{1,4}",
            "[\u{1f600}-\u{1f64f}]{1,10}",
            "[\u{0590}-\u{05ff}\u{0600}-\u{06ff} ]{1,20}",
            "[\"\\\\\u{0}-\u{1f}a-z]{1,12}",
        ]
    }

    fn owned(s: String) -> Option<Cow<'static, str>> {
        Some(Cow::Owned(s))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn valid_events_with_any_text_are_valid_against_the_schema(
            ty in text(), value in text(), function in text(), message in text(), tag in text(),
            user in text(), ts in 1_700_000_000_000i64..1_800_000_000_000, lineno in any::<u32>(),
        ) {
            let ev = Event {
                event_id: owned("0123456789abcdef0123456789abcdef".into()),
                project: owned("web".into()),
                timestamp: Some(ts),
                message: owned(message),
                exception: vec![Exception {
                    ty: owned(ty),
                    value: owned(value),
                    stacktrace: Some(Stacktrace { frames: vec![Frame { function: owned(function), lineno: Some(lineno), ..Frame::default() }] }),
                    ..Exception::default()
                }],
                user: Some(User { id: owned(user), ..User::default() }),
                tags: vec![(Cow::Owned(tag.clone()), Cow::Owned(tag))],
                ..Event::default()
            };
            prop_assert!(tracefold_model::validate(&ev, ts).is_ok());
            let doc = serde_json::to_value(&ev).unwrap();
            let v = validator("event.v1.schema.json");
            prop_assert_eq!(violations(&v, &doc), Vec::<String>::new(), "{}", doc);
        }
    }
}
