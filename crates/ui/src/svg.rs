//! Charts as inline SVG, drawn on the server: no script, no external request.

use std::fmt::Write as _;

/// A sparkline of `values` (oldest first), `w` by `h` pixels.
pub fn sparkline(values: &[u64], w: u32, h: u32) -> String {
    let max = values.iter().copied().max().unwrap_or(0).max(1) as f64;
    let n = values.len().max(2) as f64;
    let mut pts = String::new();
    for (i, v) in values.iter().enumerate() {
        let x = i as f64 * f64::from(w) / (n - 1.0);
        let y = f64::from(h) - 1.0 - (*v as f64 / max) * f64::from(h - 2);
        let _ = write!(pts, "{x:.1},{y:.1} ");
    }
    format!(
        "<svg class=\"spark\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"events per minute, last hour\">\
         <polyline fill=\"none\" stroke=\"currentColor\" stroke-width=\"1.5\" points=\"{}\"/></svg>",
        pts.trim_end()
    )
}

/// A bar chart of `values` (oldest first), one bar each, with the largest value labelled
/// (`peak N/{unit}`). `labels` name the buckets (a bar's tooltip: its label and count; escaped
/// here); `markers` draw a vertical line at the start of a bucket (`data-bucket`: its index),
/// with a tooltip (releases; escaped here).
pub fn bars(values: &[u64], labels: &[String], markers: &[(usize, String)], unit: &str, w: u32, h: u32) -> String {
    let max = values.iter().copied().max().unwrap_or(0);
    let scale = max.max(1) as f64;
    let n = values.len().max(1) as f64;
    let bw = f64::from(w) / n;
    let mut out = format!(
        "<svg class=\"bars\" viewBox=\"0 0 {w} {}\" preserveAspectRatio=\"none\" role=\"img\" aria-label=\"events over the window, peak {max}\">",
        h + 14
    );
    for (i, v) in values.iter().enumerate() {
        let bh = (*v as f64 / scale) * f64::from(h);
        let x = i as f64 * bw;
        let y = f64::from(h) - bh;
        let _ = write!(
            out,
            "<rect x=\"{x:.2}\" y=\"{y:.2}\" width=\"{:.2}\" height=\"{bh:.2}\"><title>{}: {v}</title></rect>",
            (bw * 0.85).max(0.5),
            {
                let mut l = String::new();
                crate::html::escape(labels.get(i).map_or("", String::as_str), &mut l);
                l
            }
        );
    }
    for (i, name) in markers {
        let x = *i as f64 * bw;
        let mut l = String::new();
        crate::html::escape(name, &mut l);
        let _ = write!(
            out,
            "<line class=\"release\" data-bucket=\"{i}\" x1=\"{x:.2}\" y1=\"0\" x2=\"{x:.2}\" y2=\"{h}\" stroke=\"#e65100\" stroke-width=\"2\"><title>release {l}</title></line>"
        );
    }
    let mut u = String::new();
    crate::html::escape(unit, &mut u);
    let _ = write!(out, "<text x=\"2\" y=\"{}\" font-size=\"11\">peak {max}/{u}</text></svg>", h + 12);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_svg_for_empty_flat_and_peaked_series() {
        for v in [vec![], vec![0; 60], vec![0, 5, 1]] {
            let s = sparkline(&v, 120, 24);
            assert!(s.starts_with("<svg") && s.ends_with("</svg>"), "{s}");
            let labels: Vec<String> = (0..v.len()).map(|i| i.to_string()).collect();
            let b = bars(&v, &labels, &[(1, "<r>".into())], "<h>", 600, 80);
            assert!(b.starts_with("<svg") && b.ends_with("</svg>"), "{b}");
            assert_eq!(b.matches("<rect").count(), v.len());
            assert!(!b.contains("NaN") && !s.contains("NaN"));
            assert!(b.contains("<title>release &lt;r&gt;</title>") && !b.contains("<r>"));
            assert!(b.contains("data-bucket=\"1\"") && b.contains("/&lt;h&gt;</text>") && !b.contains("<h>"));
        }
    }
}
