//! An HTML writer that escapes every value: text goes through [`Page::text`] (escaped for
//! element content and quoted attributes alike); markup is only ever `&'static str`
//! ([`Page::raw`]), so no request or database value can reach the page unescaped.

/// Escapes `s` for HTML element content and double- or single-quoted attribute values.
pub fn escape(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Controls (other than tab and newline) have no place in a page.
            c if c.is_control() && c != '\n' && c != '\t' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
}

/// Percent-encodes `s` for a URL path segment or query value (everything but the unreserved
/// characters of RFC 3986).
pub fn url_part(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A page being written.
#[derive(Debug, Default)]
pub struct Page {
    buf: String,
}

impl Page {
    /// Markup: static text only.
    pub fn raw(&mut self, s: &'static str) -> &mut Self {
        self.buf.push_str(s);
        self
    }

    /// A value, escaped.
    pub fn text(&mut self, s: &str) -> &mut Self {
        escape(s, &mut self.buf);
        self
    }

    /// A number.
    pub fn num(&mut self, n: impl std::fmt::Display) -> &mut Self {
        let s = n.to_string();
        self.text(&s)
    }

    /// A user-supplied string (title, culprit, release ...) isolated from the surrounding
    /// text's direction (`<bdi>`), so that right-to-left text or direction overrides in it
    /// cannot reorder the page around it.
    pub fn user(&mut self, s: &str) -> &mut Self {
        self.raw("<bdi>").text(s).raw("</bdi>")
    }

    /// An SVG chart from [`crate::svg`], drawn from numbers and escaped labels only.
    pub(crate) fn raw_svg(&mut self, svg: &str) -> &mut Self {
        self.buf.push_str(svg);
        self
    }

    /// The page's HTML.
    pub fn finish(self) -> String {
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_quotes_and_controls_and_keeps_the_rest() {
        let mut p = Page::default();
        p.text("<script>alert('x')</script> & \"q\" \u{0}\u{1b} é 中文 🙈 \u{202E}rtl");
        assert_eq!(
            p.finish(),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot; \u{FFFD}\u{FFFD} é 中文 🙈 \u{202E}rtl"
        );
        let mut p = Page::default();
        p.user("<b>");
        assert_eq!(p.finish(), "<bdi>&lt;b&gt;</bdi>");
    }

    #[test]
    fn url_parts_keep_only_unreserved_characters() {
        assert_eq!(url_part("a-b_c.d~e"), "a-b_c.d~e");
        assert_eq!(url_part("a b/&?\"<é"), "a%20b%2F%26%3F%22%3C%C3%A9");
    }
}
