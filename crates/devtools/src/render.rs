//! Terminal rendering: aligned tables and sparklines, and [`printable`], which every
//! event-derived text goes through before it reaches the terminal.

use std::borrow::Cow;

/// `s` as it may be printed to a terminal: the C0 and C1 control characters (ESC, `\r`,
/// `\n`, `\t`, U+007F DEL, U+0080–U+009F) and the bidi embedding, override and isolate
/// characters (U+202A–U+202E, U+2066–U+2069) replaced, whitespace controls by a space and
/// the others by `�`. Event text (titles, culprits, messages, release and environment names)
/// then cannot move the cursor, clear the screen, set the window title, start an escape
/// sequence or reorder what is printed after it. Borrowed when there is nothing to replace.
/// JSON output does not need it: the JSON keeps the text as it is.
pub fn printable(s: &str) -> Cow<'_, str> {
    let unsafe_char = |c: char| c.is_control() || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}');
    if !s.chars().any(unsafe_char) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(
        s.chars()
            .map(|c| match c {
                '\t' | '\n' | '\r' | '\u{0B}' | '\u{0C}' => ' ',
                c if unsafe_char(c) => '\u{FFFD}',
                c => c,
            })
            .collect(),
    )
}

/// `s` cut to at most `max` characters, the last of them an ellipsis when it was cut; never
/// inside a character.
pub fn truncate(s: &str, max: usize) -> Cow<'_, str> {
    if s.chars().count() <= max {
        return Cow::Borrowed(s);
    }
    if max == 0 {
        return Cow::Borrowed("");
    }
    let mut t = prefix(s, max - 1).to_owned();
    t.push('…');
    Cow::Owned(t)
}

/// The first `n` characters of `s` (all of it when shorter), e.g. a short issue id.
pub fn prefix(s: &str, n: usize) -> &str {
    s.char_indices().nth(n).map_or(s, |(i, _)| &s[..i])
}

/// Renders `values` as a sparkline of block characters, scaled to the largest value.
pub fn sparkline(values: &[u64]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let max = values.iter().copied().max().unwrap_or(0);
    values
        .iter()
        .map(|&v| {
            if v == 0 {
                ' '
            } else if max == 0 {
                BARS[0]
            } else {
                BARS[(((v * 8).div_ceil(max)).saturating_sub(1) as usize).min(7)]
            }
        })
        .collect()
}

/// Sums `values` into `n` buckets of equal width (the last may be shorter).
pub fn rebucket(values: &[u64], n: usize) -> Vec<u64> {
    if values.len() <= n || n == 0 {
        return values.to_vec();
    }
    let width = values.len().div_ceil(n);
    values.chunks(width).map(|c| c.iter().sum()).collect()
}

/// Column alignment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    /// Left.
    Left,
    /// Right (numbers).
    Right,
}

/// Renders a table with a header row, columns padded to the widest cell (by characters),
/// every cell made [`printable`] and, when longer than `max_width` characters, cut with an
/// ellipsis.
pub fn table(headers: &[(&str, Align)], rows: &[Vec<String>], max_width: usize) -> String {
    let rows: Vec<Vec<String>> =
        rows.iter().map(|r| r.iter().map(|c| truncate(&printable(c), max_width).into_owned()).collect()).collect();
    let mut widths: Vec<usize> = headers.iter().map(|(h, _)| h.chars().count()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: &[String], out: &mut String| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            let pad = widths[i] - c.chars().count();
            if i > 0 {
                l.push_str("  ");
            }
            match headers[i].1 {
                Align::Left => {
                    l.push_str(c);
                    l.extend(std::iter::repeat_n(' ', pad));
                }
                Align::Right => {
                    l.extend(std::iter::repeat_n(' ', pad));
                    l.push_str(c);
                }
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&headers.iter().map(|(h, _)| (*h).to_owned()).collect::<Vec<_>>(), &mut out);
    line(&widths.iter().map(|w| "─".repeat(*w)).collect::<Vec<_>>(), &mut out);
    for r in &rows {
        line(r, &mut out);
    }
    out
}

/// `1234567` -> `1,234,567`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparkline_scales_and_shows_gaps() {
        assert_eq!(sparkline(&[0, 1, 4, 8]), " ▁▄█");
        assert_eq!(sparkline(&[3, 3]), "██");
        assert_eq!(sparkline(&[]), "");
    }

    #[test]
    fn rebucket_sums() {
        assert_eq!(rebucket(&[1, 2, 3, 4, 5], 3), vec![3, 7, 5]);
        assert_eq!(rebucket(&[1, 2], 3), vec![1, 2]);
    }

    #[test]
    fn table_aligns() {
        let t = table(
            &[("name", Align::Left), ("n", Align::Right)],
            &[vec!["a".into(), "10".into()], vec!["bbb".into(), "2".into()]],
            40,
        );
        assert_eq!(t, "name   n\n────  ──\na     10\nbbb    2\n");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(thousands(12), "12");
    }

    #[test]
    fn printable_defuses_terminal_escapes_and_bidi() {
        let hostile = "\x1b[2J\x1b]0;pwned\x07title\r\n";
        let shown = printable(hostile);
        assert_eq!(shown, "\u{FFFD}[2J\u{FFFD}]0;pwned\u{FFFD}title  ");
        assert!(!shown.chars().any(char::is_control));
        assert_eq!(printable("a\tb\u{7f}\u{9b}31m\u{85}c"), "a b\u{FFFD}\u{FFFD}31m\u{FFFD}c");
        assert_eq!(
            printable("user \u{202E}gnp.exe\u{202C} \u{2066}x\u{2069} \u{202A}\u{202B}\u{202D}\u{2067}\u{2068}"),
            "user \u{FFFD}gnp.exe\u{FFFD} \u{FFFD}x\u{FFFD} \u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD}"
        );
        // Ordinary text, also non-ASCII and right-to-left, is left alone (and not copied).
        assert!(matches!(printable("TypeError: 日本語 — שלום 😀"), Cow::Borrowed(_)));
    }

    #[test]
    fn tables_print_no_control_characters_and_cut_by_characters() {
        let t = table(
            &[("TITLE", Align::Left), ("N", Align::Right)],
            &[
                vec!["\x1b[2J\x1b]0;pwned\x07title\r\n".into(), "1".into()],
                vec!["\u{202E}evil".into(), "2".into()],
                vec!["日本語日本語日本語日本語".into(), "3".into()],
            ],
            10,
        );
        assert!(!t.chars().any(|c| c.is_control() && c != '\n'), "{t:?}");
        assert!(!t.contains('\u{202E}'));
        assert_eq!(t.lines().count(), 5, "{t}");
        assert_eq!(
            t,
            "TITLE       N\n──────────  ─\n\u{FFFD}[2J\u{FFFD}]0;p…  1\n\u{FFFD}evil       2\n日本語日本語日本語…  3\n"
        );
    }

    #[test]
    fn truncation_and_prefixes_respect_characters() {
        assert_eq!(truncate("日本語", 2), "日…");
        assert_eq!(truncate("日本語", 3), "日本語");
        assert_eq!(truncate("😀😀", 1), "…");
        assert_eq!(truncate("abc", 0), "");
        assert_eq!(prefix("日本語abc", 4), "日本語a");
        assert_eq!(prefix("abc", 12), "abc");
        for n in 0..8 {
            for s in ["", "a", "é日😀x", "\u{301}e\u{301}"] {
                assert!(truncate(s, n).chars().count() <= n);
                assert!(prefix(s, n).chars().count() <= n);
            }
        }
    }
}
