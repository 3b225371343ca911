use super::*;
use proptest::prelude::*;
use sourcemap::SourceMapBuilder;

const ORIGINAL: &str =
    "// ünïcode.ts\nfunction función(msg) {\n  throw new Error(msg);\n}\nexport function run() {\n  función('x');\n}\n";

/// A map of a two-line minified file onto [`ORIGINAL`]: line 1 column 15 (`throw`) comes from
/// line 3 column 3, line 2 column 14 (the call) from line 6 column 3.
fn map_json(debug_id: Option<&str>, contents: bool) -> Vec<u8> {
    let mut b = SourceMapBuilder::new(Some("main.3f9a2c1b.js"));
    let src = b.add_source("src/ünïcode.ts");
    if contents {
        b.set_source_contents(src, Some(ORIGINAL));
    }
    b.add(0, 0, 1, 0, Some("src/ünïcode.ts"), Some("función"), false);
    b.add(0, 14, 2, 2, Some("src/ünïcode.ts"), None, false);
    b.add(1, 13, 5, 2, Some("src/ünïcode.ts"), Some("función"), false);
    b.set_debug_id(debug_id.map(|d| d.parse().unwrap()));
    let mut out = Vec::new();
    b.into_sourcemap().to_writer(&mut out).unwrap();
    out
}

fn parse(map: &[u8]) -> ParsedMap {
    ParsedMap::parse(map, None, &Limits::default()).unwrap()
}

#[test]
fn resolves_to_original_file_line_column_and_context() {
    let m = parse(&map_json(None, true));
    let f = m.resolve(1, 20, Some("a")).unwrap();
    assert_eq!(f.file, "src/ünïcode.ts");
    assert_eq!((f.line, f.col), (3, 3));
    assert_eq!(f.context_line.as_deref(), Some("  throw new Error(msg);"));
    assert_eq!(f.pre_context, vec!["// ünïcode.ts", "function función(msg) {"]);
    // The file's final newline starts an empty last line, as in an editor.
    assert_eq!(f.post_context, vec!["}", "export function run() {", "  función('x');", "}", ""]);

    let call = m.resolve(2, 14, None).unwrap();
    assert_eq!((call.line, call.col), (6, 3));
    assert_eq!(call.function.as_deref(), Some("función"));
}

#[test]
fn without_sources_content_there_is_no_context() {
    let f = parse(&map_json(None, false)).resolve(1, 15, None).unwrap();
    assert_eq!((f.file.as_str(), f.line), ("src/ünïcode.ts", 3));
    assert!(f.context_line.is_none() && f.pre_context.is_empty() && f.post_context.is_empty());
}

#[test]
fn positions_without_a_mapping_on_their_line_are_not_resolved() {
    let m = parse(&map_json(None, true));
    assert!(m.resolve(3, 1, None).is_none(), "line past the map");
    assert!(m.resolve(0, 1, None).is_none(), "line 0 is not a JavaScript line");
    assert!(m.resolve(u32::MAX, u32::MAX, None).is_none());
    // Column 0 (unknown) is read as the start of the line.
    assert_eq!(m.resolve(1, 0, None).unwrap().line, 2);
}

#[test]
fn too_large_and_malformed_maps_are_rejected_with_a_reason() {
    let map = map_json(None, true);
    let small = Limits { max_map_bytes: map.len() - 1, ..Limits::default() };
    let err = ParsedMap::parse(&map, None, &small).unwrap_err();
    assert_eq!(err, MapError::TooLarge { size: map.len(), limit: map.len() - 1 });
    assert!(err.to_string().contains("larger than the limit"));

    for bad in
        [&b""[..], b"{", b"not json", b"[]", b"{\"version\":3,\"sources\":[],\"names\":[],\"mappings\":\"!!!!\"}"]
    {
        match ParsedMap::parse(bad, None, &Limits::default()) {
            Err(MapError::Malformed(why)) => assert!(!why.is_empty()),
            other => panic!("{:?} parsed as {other:?}", String::from_utf8_lossy(bad)),
        }
    }
}

#[test]
fn debug_ids_from_the_map_and_the_minified_file_agree() {
    let id = "3F2504E0-4F89-11D3-9A0C-0305E82C3301";
    let m = parse(&map_json(Some(id), true));
    assert_eq!(m.debug_id().as_deref(), Some("3f2504e0-4f89-11d3-9a0c-0305e82c3301"));
    let minified =
        format!("function a(b){{throw new Error(b)}}\n//# debugId={id}\n//# sourceMappingURL=main.3f9a2c1b.js.map\n");
    assert_eq!(debug_id_of_minified(&minified), m.debug_id());
    assert_eq!(source_mapping_url(&minified), Some("main.3f9a2c1b.js.map"));
    assert_eq!(source_mapping_url("x\n//# sourceMappingURL=data:application/json;base64,e30="), None);
    assert_eq!(debug_id_of_minified("//# debugId=not-a-uuid"), None);
    assert_eq!(
        normalize_debug_id("3f2504e04f8911d39a0c0305e82c3301").as_deref(),
        Some("3f2504e0-4f89-11d3-9a0c-0305e82c3301")
    );
    assert_eq!(normalize_debug_id("ü3f2504e04f8911d39a0c0305e82c330"), None);
}

#[test]
fn url_keys_drop_scheme_host_query_and_fragment() {
    assert_eq!(url_key("https://example.com/static/js/main.js?v=1#x"), "~/static/js/main.js");
    assert_eq!(url_key("http://localhost:3000"), "~/");
    assert_eq!(url_key("app:///bundle.js"), "~/bundle.js");
    assert_eq!(url_key("/static/js/ü.js"), "/static/js/ü.js");
}

#[test]
fn context_lines_are_cut_at_character_boundaries() {
    assert_eq!(cut_line("ééé\n", 3), "é…");
    assert_eq!(cut_line("abc", 3), "abc");
}

#[test]
fn cache_evicts_least_recently_used_within_its_budgets() {
    let map = Arc::new(parse(&map_json(None, true)));
    let cost = map.cost();
    let key = |i: u64| MapKey::Url { project: "p".into(), release: "r".into(), url: format!("~/{i}.js") };
    let mut cache = MapCache::new(2, cost * 10);
    cache.insert(key(1), Arc::clone(&map));
    cache.insert(key(2), Arc::clone(&map));
    assert!(cache.get(&key(1)).is_some());
    cache.insert(key(3), Arc::clone(&map));
    assert!(cache.get(&key(2)).is_none(), "2 was least recently used");
    assert!(cache.get(&key(1)).is_some() && cache.get(&key(3)).is_some());
    assert_eq!((cache.len(), cache.bytes(), cache.evictions()), (2, 2 * cost, 1));

    let mut by_bytes = MapCache::new(100, cost * 2 + cost / 2);
    for i in 0..5 {
        by_bytes.insert(key(i), Arc::clone(&map));
        assert!(by_bytes.bytes() <= cost * 2 + cost / 2);
    }
    assert_eq!(by_bytes.len(), 2);
    let mut tiny = MapCache::new(100, cost - 1);
    tiny.insert(key(1), map);
    assert!(tiny.is_empty(), "a map larger than the whole budget is not cached");
}

proptest! {
    #[test]
    fn any_bytes_parse_or_fail_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = ParsedMap::parse(&bytes, None, &Limits::default());
    }

    #[test]
    fn any_mappings_and_positions_resolve_without_panicking(
        mappings in "[A-Za-z0-9+/,;]{0,64}",
        name in "\\PC{0,8}",
        line in any::<u32>(),
        col in any::<u32>(),
        minified in "\\PC{0,64}",
    ) {
        let json = serde_json_like(&mappings, &name);
        if let Ok(m) = ParsedMap::parse(json.as_bytes(), Some(&minified), &Limits::default()) {
            let _ = m.resolve(line, col, Some(&name));
            let _ = m.resolve(line % 4, col % 64, Some(&name));
        }
    }
}

/// A map with the given mappings and one name, as JSON (the name escaped).
fn serde_json_like(mappings: &str, name: &str) -> String {
    let name: String = name
        .chars()
        .flat_map(|c| match c {
            '"' | '\\' => vec!['\\', c],
            c if (c as u32) < 0x20 => format!("\\u{:04x}", c as u32).chars().collect(),
            c => vec![c],
        })
        .collect();
    format!(
        "{{\"version\":3,\"sources\":[\"a.js\",\"b.js\"],\"sourcesContent\":[\"x\\ny\",null],\"names\":[\"{name}\"],\"mappings\":\"{mappings}\"}}"
    )
}

/// The memo of located positions answers as a fresh map does: past its bound (emptied and
/// filled again), and when an entry under the same hash holds another position (the exact
/// key is checked, so a collision costs a new lookup, never a wrong answer).
#[test]
fn memoized_positions_are_those_located_afresh() {
    let m = ParsedMap::parse(
        &map_json(None, true),
        Some("function a(){throw new Error(msg)}\nrun()\n"),
        &Limits::default(),
    )
    .unwrap();
    let fresh = || {
        ParsedMap::parse(&map_json(None, true), Some("function a(){throw new Error(msg)}\nrun()\n"), &Limits::default())
            .unwrap()
    };
    let names: Vec<String> = (0..MAX_MEMOIZED_POSITIONS + 100).map(|i| format!("n{i}")).collect();
    for _ in 0..2 {
        for (i, name) in names.iter().enumerate() {
            let (line, col) = (1 + (i % 2) as u32, 14 + (i % 7) as u32);
            let got = m.position(line, col, Some(name));
            assert!(m.located.lock().unwrap().len() <= MAX_MEMOIZED_POSITIONS);
            assert_eq!(got.as_deref().map(Position::to_original), fresh().locate(line, col, Some(name)), "{name}");
        }
    }
    for f in [None, Some(""), Some("a"), Some("Object.a [as é]")] {
        assert_eq!(m.position(1, 20, f).map(|p| p.to_original()), fresh().locate(1, 20, f), "{f:?}");
    }
    // Another position's entry under this position's hash: not taken for it.
    let elsewhere = m.position(2, 14, None);
    assert!(elsewhere.is_some());
    let wrong = MemoEntry { line: 2, col: 14, function: None, found: elsewhere };
    m.located.lock().unwrap().insert(memo_key(1, 20, Some("a")), wrong);
    assert_eq!(m.position(1, 20, Some("a")).map(|p| p.to_original()), fresh().locate(1, 20, Some("a")));
    assert_eq!(m.position(9, 1, Some("a")), None, "no mapping on that line");
}

/// The memoized source context is what `add_context` fills, at every position of the map, the
/// second time from the memo and past its bound; its JSON is what `serde_json` writes for the
/// three fields.
#[test]
fn memoized_contexts_are_those_read_afresh() {
    let limits = Limits { max_context_line_bytes: 12, ..Limits::default() };
    let m = ParsedMap::parse(&map_json(None, true), None, &limits).unwrap();
    let fresh = ParsedMap::parse(&map_json(None, true), None, &limits).unwrap();
    for round in 0..2 {
        for line in 0..4u32 {
            for col in 0..40u32 {
                let got = m.context(line, col);
                let mut want = OriginalFrame::default();
                fresh.add_context(line, col, &mut want);
                match (&got, want.context_line) {
                    (None, None) => {}
                    (Some(c), Some(l)) => {
                        assert_eq!(
                            (&c.pre_context, &c.context_line, &c.post_context),
                            (&want.pre_context, &l, &want.post_context)
                        );
                        let json = format!(
                            r#""pre_context":{},"context_line":{},"post_context":{}"#,
                            serde_json::to_string(&want.pre_context).unwrap(),
                            serde_json::to_string(&l).unwrap(),
                            serde_json::to_string(&want.post_context).unwrap()
                        );
                        assert_eq!(c.json, json, "{line}:{col}");
                    }
                    other => panic!("{line}:{col} round {round}: {other:?}"),
                }
            }
        }
        assert!(m.contexts.lock().unwrap().by_position.len() <= MAX_MEMOIZED_CONTEXTS);
    }
    let without = ParsedMap::parse(&map_json(None, false), None, &limits).unwrap();
    assert_eq!(without.context(1, 20), None, "no sources content");
    // The bound: a full memo is emptied, and answers stay right.
    for i in 0..MAX_MEMOIZED_CONTEXTS as u32 + 10 {
        let _ = m.context(1, 100 + i);
        assert!(m.contexts.lock().unwrap().by_position.len() <= MAX_MEMOIZED_CONTEXTS);
    }
    assert_eq!(m.context(1, 20).map(|c| c.context_line.clone()), Some("  throw new …".to_owned()));
}

/// A reported name past the bound is located each time, never kept: hostile names cannot
/// fill the memo with their bytes; the answer is what a fresh map gives.
#[test]
fn long_reported_names_are_located_but_not_memoized() {
    let m = parse(&map_json(None, true));
    let fresh = parse(&map_json(None, true));
    let long = "é".repeat(MAX_MEMOIZED_FUNCTION_BYTES);
    for col in 0..40 {
        assert_eq!(m.position(1, col, Some(&long)), fresh.position(1, col, Some(&long)));
    }
    assert!(m.located.lock().unwrap().is_empty());
    let _ = m.position(1, 20, Some("a"));
    assert_eq!(m.located.lock().unwrap().len(), 1, "a short name is kept");
}

/// Many positions of one token share one large context (every column of the token; lines of
/// control characters, escaped six times over in the JSON): the memo stays within its byte
/// bound however many positions are asked, and still answers as a fresh read.
#[test]
fn memoized_contexts_stay_within_their_byte_bound() {
    let line = "\u{1}".repeat(200);
    let source = [line.as_str(); 11].join("\n");
    let mut b = SourceMapBuilder::new(Some("main.js"));
    let src = b.add_source("src/control.ts");
    b.set_source_contents(src, Some(&source));
    b.add(0, 0, 5, 0, Some("src/control.ts"), None, false);
    let mut map = Vec::new();
    b.into_sourcemap().to_writer(&mut map).unwrap();
    let m = parse(&map);
    let fresh = parse(&map);
    let one = m.context(1, 1).expect("a context");
    assert!(one.bytes() > 8 << 10, "each entry is large: {}", one.bytes());
    for col in 1..=MAX_MEMOIZED_CONTEXTS as u32 * 2 {
        let got = m.context(1, col).expect("a context");
        let memo = m.contexts.lock().unwrap();
        assert!(memo.bytes <= MAX_MEMOIZED_CONTEXT_BYTES, "{} bytes at column {col}", memo.bytes);
        let held: usize = memo.by_position.values().map(|c| c.as_ref().map_or(0, |c| c.bytes()) + 32).sum();
        assert_eq!(held, memo.bytes, "the count is what the entries hold");
        drop(memo);
        let mut want = OriginalFrame::default();
        fresh.add_context(1, col, &mut want);
        assert_eq!(Some(&got.context_line), want.context_line.as_ref());
    }
}

/// The cache's budget counts what a map is once parsed, not only its bytes: `A,` is two bytes of
/// JSON and a 28-byte token. Before, a map of a million such segments counted as its 2 MB, and
/// a cache of 512 MiB could hold maps worth gigabytes.
#[test]
fn the_cost_of_a_map_counts_its_parsed_tokens_names_and_sources() {
    let n = 1_000_000;
    let mappings = vec!["A"; n].join(",");
    let names = vec!["\"n\""; 1000].join(",");
    let map = format!(r#"{{"version":3,"sources":["a.js"],"names":[{names}],"mappings":"{mappings}"}}"#);
    let parsed = parse(map.as_bytes());
    let parsed_size = n * PARSED_TOKEN_BYTES + 1000 * PARSED_ENTRY_BYTES;
    const { assert!(PARSED_TOKEN_BYTES >= 24, "six u32 and a flag") };
    assert!(parsed.cost() >= map.len() + parsed_size, "cost {} for {} bytes", parsed.cost(), map.len());
    // A cache whose budget the bytes fit but the parsed map does not keeps none of it.
    let mut cache = MapCache::new(8, 4 * map.len());
    let key = MapKey::Url { project: "web".into(), release: "1".into(), url: "~/a.js".into() };
    cache.insert(key.clone(), std::sync::Arc::new(parsed));
    assert!(cache.get(&key).is_none(), "a map of {} parsed bytes is not kept in {} bytes", parsed_size, 4 * map.len());
}
