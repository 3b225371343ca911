//! Cutting text to a byte bound without splitting a character: every bounded string in
//! tracefold (titles, messages, components, DLQ details, samples) goes through these.

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
pub fn prefix(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut cut = max;
    // A UTF-8 character is at most 4 bytes: at most 3 steps back.
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    &s[..cut]
}

/// Cuts `s` to at most `max` bytes, on a character boundary.
pub fn truncate(s: &mut String, max: usize) {
    let keep = prefix(s, max).len();
    s.truncate(keep);
}

/// Appends as much of `add` as keeps `out` within `max` bytes, cut on a character boundary.
pub fn push_bounded(out: &mut String, add: &str, max: usize) {
    out.push_str(prefix(add, max.saturating_sub(out.len())));
}

/// The 8 bytes of `s` from `at`, as a little-endian word (callers check `at + 8 <= s.len()`;
/// shared by the byte comparisons and hashes that read short text a word at a time).
#[inline(always)]
pub fn word(s: &[u8], at: usize) -> u64 {
    let mut w = [0; 8];
    w.copy_from_slice(&s[at..at + 8]);
    u64::from_le_bytes(w)
}

/// The 4 bytes of `s` from `at`, as a little-endian half word (callers check `at + 4 <= s.len()`).
#[inline(always)]
pub fn half(s: &[u8], at: usize) -> u32 {
    let mut w = [0; 4];
    w.copy_from_slice(&s[at..at + 4]);
    u32::from_le_bytes(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_on_character_boundaries() {
        assert_eq!(prefix("abc", 5), "abc");
        assert_eq!(prefix("abc", 2), "ab");
        assert_eq!(prefix("aé", 2), "a");
        assert_eq!(prefix("日本", 5), "日");
        assert_eq!(prefix("日本", 0), "");
        let mut s = String::from("x🦀y");
        truncate(&mut s, 4);
        assert_eq!(s, "x");
        let mut out = String::from("ab");
        push_bounded(&mut out, "cé", 4);
        assert_eq!(out, "abc");
        push_bounded(&mut out, "zzz", 2);
        assert_eq!(out, "abc");
    }
}
