//! Terminal rendering: aligned tables and sparklines.

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
/// cells longer than `max_width` cut with an ellipsis.
pub fn table(headers: &[(&str, Align)], rows: &[Vec<String>], max_width: usize) -> String {
    let cut = |s: &str| -> String {
        if s.chars().count() > max_width {
            let mut t: String = s.chars().take(max_width.saturating_sub(1)).collect();
            t.push('…');
            t
        } else {
            s.to_owned()
        }
    };
    let rows: Vec<Vec<String>> = rows.iter().map(|r| r.iter().map(|c| cut(c)).collect()).collect();
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
}
