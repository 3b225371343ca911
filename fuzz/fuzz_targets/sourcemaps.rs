//! Source maps from any bytes: parsing (as uploaded maps are), the debug-id and
//! sourceMappingURL scanners on the minified text, and resolution of positions taken from the
//! input. Nothing may panic; a resolved frame's context stays within its bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use tracefold_symbolicate::{
    debug_id_of_minified, is_minified_js, map_key, normalize_debug_id, source_mapping_url, symbolicate_frames, url_key,
    DebugImage, Limits, MinifiedFrame, ParsedMap,
};

fuzz_target!(|data: &[u8]| {
    // First 8 bytes: a position; then the map and an optional minified file after a 0 byte.
    let (pos, rest) = data.split_at(data.len().min(8));
    let mut p = [0u8; 8];
    p[..pos.len()].copy_from_slice(pos);
    let line = u32::from_le_bytes([p[0], p[1], p[2], p[3]]);
    let col = u32::from_le_bytes([p[4], p[5], p[6], p[7]]);
    let (map, minified) = match rest.iter().position(|b| *b == 0) {
        Some(i) => (&rest[..i], std::str::from_utf8(&rest[i + 1..]).ok()),
        None => (rest, None),
    };
    let text = String::from_utf8_lossy(rest);
    let _ = debug_id_of_minified(&text);
    let _ = source_mapping_url(&text);
    let _ = normalize_debug_id(&text);
    let _ = url_key(&text);
    let limits = Limits::default();
    // Frames named by the input text (any Unicode), with and without a debug image.
    let frame = MinifiedFrame {
        abs_path: Some(&text),
        filename: text.get(..text.len() / 2),
        function: minified,
        lineno: Some(line),
        colno: Some(col),
    };
    let _ = is_minified_js(&frame);
    let images = [DebugImage { code_file: text.to_string(), debug_id: text.to_string() }];
    let _ = map_key(&text, &text, &images, &frame);
    if let Ok(m) = ParsedMap::parse(map, minified, &limits) {
        let m = Arc::new(m);
        let frames = [frame, MinifiedFrame { abs_path: Some("https://x/a.js"), ..frame }];
        let got = symbolicate_frames("p", "r", &[], &frames, |_| Some(Arc::clone(&m)));
        assert_eq!(got.len(), frames.len());
        let _ = m.debug_id();
        for (l, c) in [(line, col), (line % 8, col % 256), (1, 1)] {
            if let Some(f) = m.resolve(l, c, minified.map(|s| s.get(..s.len().min(32)).unwrap_or(""))) {
                assert!(f.line >= 1 && f.col >= 1);
                assert!(f.pre_context.len() as u32 <= limits.context_lines);
                assert!(f.post_context.len() as u32 <= limits.context_lines);
                let max = limits.max_context_line_bytes + '…'.len_utf8();
                assert!(f.context_line.iter().chain(&f.pre_context).chain(&f.post_context).all(|s| s.len() <= max));
            }
        }
    }
});
