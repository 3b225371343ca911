//! The sample event an aggregate carries for its issue, bounded in size.
//!
//! A sample is what people look at first (title, stack trace, request), and what the detector
//! reads the top frames and request URL from. Events can be up to the event size limit; the
//! sample is kept at most [`MAX_SAMPLE_BYTES`]. A larger event is cut while staying valid
//! JSON: long strings are shortened, long arrays keep their first elements (frames keep the
//! ones nearest the crash, which come last), large objects keep their first keys; the result
//! carries `"_tracefold_truncated": {"original_bytes": N}`. The function is deterministic, so
//! a replayed batch carries the same sample.

use crate::text::prefix;
use serde_json::{Map, Value};

/// Largest sample kept per aggregate, bytes.
pub const MAX_SAMPLE_BYTES: usize = 64 << 10;

/// The key that marks a cut sample.
pub const TRUNCATED_KEY: &str = "_tracefold_truncated";

/// The sample for `payload` (an event that parsed): the payload itself when it fits in
/// [`MAX_SAMPLE_BYTES`], else a cut copy that does.
pub fn bounded_sample(payload: &[u8]) -> String {
    bounded_sample_with(payload, MAX_SAMPLE_BYTES)
}

/// [`bounded_sample`] of bytes the caller owns and gives up: a payload that fits is checked as
/// UTF-8 in place and becomes the sample without a copy (the grouper builds the bytes for the
/// sample anyway). The same answer as [`bounded_sample`] for any bytes.
pub fn bounded_sample_owned(payload: Vec<u8>) -> String {
    bounded_sample_owned_with(payload, MAX_SAMPLE_BYTES)
}

/// [`bounded_sample_owned`] with a given bound (tests).
pub fn bounded_sample_owned_with(payload: Vec<u8>, max: usize) -> String {
    if payload.len() > max {
        return bounded_sample_with(&payload, max);
    }
    match String::from_utf8(payload) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

/// [`bounded_sample`] with a given bound (tests).
pub fn bounded_sample_with(payload: &[u8], max: usize) -> String {
    if payload.len() <= max {
        return String::from_utf8_lossy(payload).into_owned();
    }
    let marker = |v: &mut Map<String, Value>| {
        let mut m = Map::new();
        m.insert("original_bytes".into(), Value::from(payload.len() as u64));
        v.insert(TRUNCATED_KEY.into(), Value::Object(m));
    };
    // The payload parsed as an event and passed the depth check, so recursion below is bounded
    // by `json::MAX_DEPTH`.
    if let Ok(Value::Object(full)) = serde_json::from_slice::<Value>(payload) {
        for (max_str, max_items) in [(8192, 256), (2048, 64), (512, 32), (128, 16), (32, 8)] {
            let mut obj = full.clone();
            for v in obj.values_mut() {
                shrink(v, None, max_str, max_items);
            }
            truncate_map(&mut obj, max_items);
            marker(&mut obj);
            if let Ok(s) = serde_json::to_string(&obj) {
                if s.len() <= max {
                    return s;
                }
            }
        }
        // Still too large (thousands of keys at the top level): keep the identity only.
        let mut min = Map::new();
        for k in ["event_id", "project", "platform", "level", "release", "environment"] {
            if let Some(Value::String(s)) = full.get(k) {
                min.insert(k.into(), Value::String(prefix(s, 256).to_owned()));
            }
        }
        marker(&mut min);
        return Value::Object(min).to_string();
    }
    let mut min = Map::new();
    marker(&mut min);
    Value::Object(min).to_string()
}

fn shrink(v: &mut Value, key: Option<&str>, max_str: usize, max_items: usize) {
    match v {
        Value::String(s) => {
            let cut = prefix(s, max_str).len();
            if cut < s.len() {
                s.truncate(cut);
                s.push('…');
            }
        }
        Value::Array(items) => {
            if items.len() > max_items {
                if key == Some("frames") {
                    // Frames are oldest first: keep the ones nearest the crash.
                    items.drain(..items.len() - max_items);
                } else {
                    items.truncate(max_items);
                }
            }
            for it in items.iter_mut() {
                shrink(it, None, max_str, max_items);
            }
        }
        Value::Object(m) => {
            truncate_map(m, max_items);
            for (k, it) in m.iter_mut() {
                shrink(it, Some(k.as_str()), max_str, max_items);
            }
        }
        _ => {}
    }
}

fn truncate_map(m: &mut Map<String, Value>, max_items: usize) {
    let limit = max_items * 4;
    if m.len() > limit {
        let mut n = 0;
        m.retain(|_, _| {
            n += 1;
            n <= limit
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_events_are_kept_verbatim() {
        let p = br#"{"message":"x"}"#;
        assert_eq!(bounded_sample(p), r#"{"message":"x"}"#);
    }

    #[test]
    fn large_events_are_cut_to_valid_json_with_a_marker() {
        let frames: Vec<Value> = (0..5000)
            .map(|i| serde_json::json!({"function": format!("функция{i}"), "filename": "app.js", "lineno": i}))
            .collect();
        let ev = serde_json::json!({
            "event_id": "0123456789abcdef0123456789abcdef", "project": "web",
            "message": "日本語".repeat(100_000),
            "exception": [{"type": "E", "value": "v", "stacktrace": {"frames": frames}}],
            "tags": (0..10_000).map(|i| (format!("t{i}"), Value::from("v"))).collect::<Map<_, _>>(),
        });
        let payload = serde_json::to_vec(&ev).unwrap();
        assert!(payload.len() > MAX_SAMPLE_BYTES);
        let s = bounded_sample(&payload);
        assert!(s.len() <= MAX_SAMPLE_BYTES, "{}", s.len());
        let v: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v[TRUNCATED_KEY]["original_bytes"], payload.len() as u64);
        assert_eq!(v["event_id"], "0123456789abcdef0123456789abcdef");
        // The frames nearest the crash survive.
        let kept = v["exception"][0]["stacktrace"]["frames"].as_array().unwrap();
        assert_eq!(kept.last().unwrap()["function"], "функция4999");
        // Parses as an event again.
        assert!(crate::parse_event_str(&s).is_ok());
        // Deterministic.
        assert_eq!(s, bounded_sample(&payload));
        // The owned form cuts the same way.
        assert_eq!(s, bounded_sample_owned(payload));
    }

    proptest::proptest! {
        /// The owned form answers as the borrowed one for any bytes: valid UTF-8 of any script,
        /// invalid sequences (replaced the same way), and payloads on both sides of the bound.
        #[test]
        fn owned_samples_answer_as_borrowed_ones(
            text in "\\PC{0,40}",
            noise in proptest::collection::vec(proptest::num::u8::ANY, 0..12),
            at in 0usize..64,
            max in 0usize..96,
        ) {
            let mut bytes = serde_json::to_vec(&serde_json::json!({"message": text})).unwrap();
            let at = at.min(bytes.len());
            bytes.splice(at..at, noise);
            proptest::prop_assert_eq!(
                bounded_sample_owned_with(bytes.clone(), max),
                bounded_sample_with(&bytes, max)
            );
        }
    }
}
