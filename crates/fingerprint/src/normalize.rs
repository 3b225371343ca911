//! Normalizers for the parts of a frame and a message that go into a fingerprint. Each writes
//! into a caller's reusable buffer, so that fingerprinting does not allocate per frame.
//!
//! All of them are total: any string, including non-ASCII text cut anywhere, is normalized
//! without panicking, in time linear in its length, into an output of bounded length
//! ([`MAX_COMPONENT_LEN`] for names, [`MAX_MESSAGE_LEN`] for messages). Every slice is
//! taken at a position found by searching for an ASCII byte or pattern, or after a
//! character-boundary check, so it cannot fall inside a multi-byte character.

pub use crate::limits::MAX_MESSAGE_LEN;
use crate::limits::{self, MAX_COMPONENT_LEN, MAX_MESSAGE_INPUT};

/// Function names that say nothing about the code (anonymous functions, unknown symbols).
const ANONYMOUS_FUNCTIONS: &[&str] = &[
    "?",
    "<anonymous>",
    "anonymous",
    "Anonymous function",
    "<unknown>",
    "unknown",
    "<redacted>",
    "<lambda>",
    "<module>",
    "*/<",
    "<Anonymous>",
    "Object.<anonymous>",
];

/// File names that are not files.
const NOT_FILES: &[&str] = &["<anonymous>", "[native code]", "native", "eval code", "<eval>", "<unknown>", "unknown"];

/// Normalizes a file path or URL: drops origin, query and fragment, keeps the base name,
/// lower-cases it and replaces content hashes (`main.3f9a2c1b.js` -> `main.<hash>.js`).
/// Writes nothing for pseudo-files such as `<anonymous>` or `[native code]`. At most
/// [`MAX_COMPONENT_LEN`] bytes.
pub fn filename(input: &str, out: &mut String) {
    out.clear();
    let s = input.trim();
    if NOT_FILES.contains(&s) {
        return;
    }
    let s = s.split(['?', '#']).next().unwrap_or(s);
    let base = s.rsplit(['/', '\\']).next().unwrap_or(s);
    if NOT_FILES.contains(&base) {
        return;
    }
    for (i, seg) in base.split('.').enumerate() {
        if i > 0 {
            out.push('.');
        }
        if is_content_hash(seg) {
            out.push_str("<hash>");
        } else if seg.is_ascii() {
            let start = out.len();
            out.push_str(seg);
            out[start..].make_ascii_lowercase();
        } else {
            for c in seg.chars() {
                out.extend(c.to_lowercase());
            }
        }
    }
    limits::truncate(out, MAX_COMPONENT_LEN);
}

/// A bundler content hash: 8 or more hex digits with at least one digit, or 8 or more of
/// `a`-`f` only (a lowercase hex hash that happens to have no digit: one build in about 2,500
/// for 8 characters; no file name is made of those letters alone), or 16+ characters of
/// `[A-Za-z0-9_-]` with at least one digit.
fn is_content_hash(seg: &str) -> bool {
    let b = seg.as_bytes();
    let has_digit = b.iter().any(u8::is_ascii_digit);
    (b.len() >= 8
        && (b.iter().all(|c| (b'a'..=b'f').contains(c)) || (has_digit && b.iter().all(u8::is_ascii_hexdigit))))
        || (has_digit && b.len() >= 16 && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'-'))
}

/// Normalizes a module name: strips generated class suffixes (Java lambdas and anonymous
/// classes, CGLIB/javassist proxies) and version segments (`pkg@1.2.3`). At most
/// [`MAX_COMPONENT_LEN`] bytes.
pub fn module(input: &str, out: &mut String) {
    out.clear();
    let mut s = input.trim();
    // Generated class names all carry a '$' (one memchr rules them out for most frames).
    if s.contains('$') {
        for marker in ["$$Lambda", "$$EnhancerBy", "$$FastClassBy", "_$$_javassist", "$$"] {
            if let Some(i) = s.find(marker) {
                s = &s[..i];
            }
        }
    }
    // Anonymous inner classes: Foo$1 -> Foo
    while let Some(i) = s.rfind('$') {
        if s[i + 1..].bytes().all(|c| c.is_ascii_digit()) {
            s = &s[..i];
        } else {
            break;
        }
    }
    for part in s.split('/') {
        if !out.is_empty() {
            out.push('/');
        }
        match part.find('@') {
            Some(at) if at > 0 && part[at + 1..].starts_with(|c: char| c.is_ascii_digit()) => out.push_str(&part[..at]),
            _ => out.push_str(part),
        }
    }
    limits::truncate(out, MAX_COMPONENT_LEN);
}

/// Normalizes a function name: drops anonymous names, strips receivers the platform adds
/// (`Object.foo`), generated suffixes (Rust `::h<hash>`, Go `.func1`, Java lambdas, Clojure
/// `$fn__123`, .NET `<Main>b__0_1`, Ruby `block in`), and parameter lists. At most
/// [`MAX_COMPONENT_LEN`] bytes.
pub fn function(input: &str, out: &mut String) {
    function_uncapped(input, out);
    limits::truncate(out, MAX_COMPONENT_LEN);
}

/// [`function`] without the length cap (never longer than the input): [`js_function`] needs
/// the last segment of the whole name.
pub(crate) fn function_uncapped(input: &str, out: &mut String) {
    out.clear();
    let mut s = input.trim();
    if ANONYMOUS_FUNCTIONS.contains(&s) {
        return;
    }
    // PHP anonymous classes carry their file, line and a counter: keep the method only.
    if s.starts_with("class@anonymous") {
        out.push_str("class@anonymous");
        if let Some(i) = s.rfind("::") {
            out.push_str(&s[i..]);
        }
        return;
    }
    // Ruby: "block (2 levels) in foo", "rescue in foo"
    for prefix in ["block in ", "rescue in ", "ensure in "] {
        if let Some(rest) = s.strip_prefix(prefix) {
            s = rest;
        }
    }
    if let Some(rest) = s.strip_prefix("block (") {
        if let Some(i) = rest.find(" in ") {
            s = &rest[i + 4..];
        }
    }
    for prefix in ["new ", "async ", "Object.", "Module.", "global.", "Function."] {
        if let Some(rest) = s.strip_prefix(prefix) {
            s = rest;
        }
    }
    // Parameter lists and return types of native signatures: "foo(int, char*) const"
    if let Some(i) = s.find('(') {
        if i > 0 {
            s = &s[..i];
        }
    }
    // Rust legacy symbol hash: "::h0123456789abcdef". Compared as bytes: the last 19 bytes
    // of a non-ASCII name need not start on a character boundary; when they match, they
    // are ASCII and the cut before them is a boundary.
    let b = s.as_bytes();
    if b.len() > 19 {
        let tail = &b[b.len() - 19..];
        if tail.starts_with(b"::h") && tail[3..].iter().all(u8::is_ascii_hexdigit) {
            s = &s[..s.len() - 19];
        }
    }
    // .NET compiler-generated: "<Main>b__0_1", "<DoWork>d__12"
    if let Some(rest) = s.strip_prefix('<') {
        if let Some(end) = rest.find('>') {
            let after = &rest[end + 1..];
            if after.starts_with("b__") || after.starts_with("d__") || after.starts_with("g__") {
                s = &rest[..end];
            }
        }
    }
    if s.contains('$') {
        for marker in ["$$Lambda", "$$Enhancer", "$fn__"] {
            if let Some(i) = s.find(marker) {
                s = &s[..i];
            }
        }
    }
    // Java lambda bodies and anonymous classes: "lambda$run$0" -> "lambda$run"
    while let Some(i) = s.rfind('$') {
        if i + 1 < s.len() && s[i + 1..].bytes().all(|c| c.is_ascii_digit()) {
            s = &s[..i];
        } else {
            break;
        }
    }
    // Go closures: "main.handler.func1", "pkg.glob..func2" (they end in a digit)
    while s.ends_with(|c: char| c.is_ascii_digit()) {
        let Some(i) = s.rfind(".func") else { break };
        if i + 5 < s.len() && s[i + 5..].bytes().all(|c| c.is_ascii_digit()) {
            s = s[..i].trim_end_matches('.');
        } else {
            break;
        }
    }
    if let Some(rest) = s.strip_suffix(".glob") {
        s = rest;
    }
    // ERB templates: "_app_views_foo_html_erb__123_456" -> without the numbers
    if s.ends_with(|c: char| c.is_ascii_digit()) {
        if let Some(i) = s.find("__") {
            if s[i + 2..].bytes().all(|c| c.is_ascii_digit() || c == b'_') {
                s = &s[..i];
            }
        }
    }
    if ANONYMOUS_FUNCTIONS.contains(&s) {
        return;
    }
    out.push_str(s);
}

/// .NET async state machines report `MoveNext` in a generated class `Outer+<Method>d__12`:
/// returns the module `Outer` and the function `Method` when that is the case.
pub fn dotnet_async<'a>(module: &'a str, function: &'a str) -> Option<(&'a str, &'a str)> {
    if function != "MoveNext" {
        return None;
    }
    let start = module.find("+<")?;
    let rest = &module[start + 2..];
    let end = rest.find(">d__")?;
    Some((&module[..start], &rest[..end]))
}

/// JavaScript engines disagree on receivers and anonymous markers (Chrome `Object.foo`,
/// `HTMLButtonElement.onClick`, `async Foo.bar`; Firefox `foo/<`, `Foo.prototype.bar`; Safari
/// `foo@`): keep the last name segment so that all three agree. In place; at most
/// [`MAX_COMPONENT_LEN`] bytes.
pub fn js_function(out: &mut String) {
    const TRAILERS: [char; 4] = ['<', '/', '*', '@'];
    // The kept segment is out[start..end]: both ends are next to an ASCII byte ('.' or a
    // trailer) or at an end of the string, so both are character boundaries.
    let trimmed = out.trim_end_matches(TRAILERS).len();
    let start = match out[..trimmed].rfind('.') {
        Some(i) if i + 1 < trimmed => i + 1,
        _ => 0,
    };
    let end = start + out[start..trimmed].trim_end_matches(TRAILERS).len();
    let s = &out[start..end];
    // Minifiers rename functions to one or two letters, differently in every build.
    if s == "<anonymous>" || s.len() <= 2 || s == "prototype" {
        out.clear();
        return;
    }
    out.truncate(end);
    out.replace_range(..start, "");
    limits::truncate(out, MAX_COMPONENT_LEN);
}

/// Replaces the variable parts of a log message with placeholders: e-mail, URL, IP, UUID, hex
/// (`0x..`, SHA/MD5 runs), numbers, dates and times, quoted literals (`'..'`, `".."` and
/// `` `..` `` become `'<value>'`: in a log line, what is quoted is what was interpolated), and
/// path segments that carry ids (`/var/data/user8812/img_0042.png` ->
/// `/var/data/<id>/<id>.png`). Keeps the first two non-empty lines and at most
/// [`MAX_MESSAGE_LEN`] bytes.
///
/// Only the first [`MAX_MESSAGE_INPUT`] bytes of `input` are looked at (cut on a character
/// boundary), and every step is linear: a hostile message costs no more than a 4 KiB one.
pub fn message(input: &str, out: &mut String) {
    parameterize(input, out, Quoted::All);
}

/// [`message`] for an exception's message: a quoted literal is parameterized like the rest
/// of the line, and becomes `'<value>'` only when a digit is left in it (`'user8812'`); a
/// quoted name stays, since it usually names the bug (`KeyError: 'user'`, `reading 'id'`,
/// `` `Option::unwrap()` ``), and so does `'user-<int>'`.
pub fn exception_value(input: &str, out: &mut String) {
    parameterize(input, out, Quoted::Data);
}

/// Which quoted literals become `<value>` (those after `=` always do).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quoted {
    All,
    Data,
}

fn parameterize(input: &str, out: &mut String, quoted: Quoted) {
    out.clear();
    let input = limits::prefix(input, MAX_MESSAGE_INPUT);
    let mut lines = 0;
    for line in input.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if lines > 0 {
            out.push('\n');
        }
        let start = out.len();
        parameterize_line(line, out, quoted);
        collapse_dates(out, start);
        lines += 1;
        if lines == 2 {
            break;
        }
    }
    limits::truncate(out, MAX_MESSAGE_LEN);
    // A cut just after the line break leaves an empty second line: drop it.
    if out.ends_with('\n') {
        out.pop();
    }
}

/// Whether `c`, just before a quote, continues a word, so that the quote is an apostrophe or
/// part of a name, not the start of a quoted literal (`>` too: the end of a placeholder, so
/// that parameterized text reads as its input did).
fn joins_quote_before(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '>'
}

/// Whether `c`, just after a quote, continues a word, so that the quote does not end a quoted
/// literal (`<` too: the start of a placeholder, and the signs a placeholder of a signed
/// number replaces).
fn joins_quote_after(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '<' | '-' | '+')
}

/// The end (index of the closing quote) of a quoted literal opened by the quote `q` at
/// `open`: the next `q` after at least one character that no word character follows
/// ([`joins_quote_after`]). `None`
/// when there is none; then there is none for any later opening of that kind either (a later
/// search looks at a subset of the same candidates), which the caller records so that no
/// byte is searched twice.
fn quoted_end(line: &str, open: usize, q: u8) -> Option<usize> {
    let b = line.as_bytes();
    let mut from = open + 1;
    loop {
        let j = from + b.get(from..)?.iter().position(|&c| c == q)?;
        // `q` is ASCII: `j + 1` is a character boundary.
        if j > open + 1 && !line[j + 1..].chars().next().is_some_and(joins_quote_after) {
            return Some(j);
        }
        from = j + 1;
    }
}

/// Whether `s` contains `://`. A byte loop: `str::contains` sets up a substring searcher on
/// every call, which costs more than the search itself on a word of a message.
fn has_scheme_sep(s: &str) -> bool {
    let b = s.as_bytes();
    (2..b.len()).any(|i| b[i - 2] == b':' && b[i - 1] == b'/' && b[i] == b'/')
}

fn is_word_byte(c: u8) -> bool {
    WORD_BYTES[usize::from(c)]
}

/// The bytes a word of a message is made of (one load per byte instead of a chain of tests).
const WORD_BYTES: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'@' | b':' | b'/' | b'%' | b'+' | b'~');
        c += 1;
    }
    t
};

fn parameterize_line(line: &str, out: &mut String, quoted: Quoted) {
    let b = line.as_bytes();
    // Quote kinds (`'`, `"`, `` ` ``) known to have no closing quote further on.
    let mut unclosed = [false; 3];
    // `i` is always on a character boundary: it moves over ASCII bytes, over whole
    // characters, or (in a URL) up to an ASCII delimiter or the end.
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if !is_word_byte(c) {
            // Quoted value after '=': key="value" or key='value'. A failed search means no
            // later quote of that kind, so no later search for it: linear overall.
            if (c == b'"' || c == b'\'') && i > 0 && b[i - 1] == b'=' {
                if let Some(end) = line[i + 1..].find(c as char) {
                    out.push(c as char);
                    out.push_str("<value>");
                    out.push(c as char);
                    i += end + 2;
                    continue;
                }
            }
            // A quoted literal: a quote no word character precedes, up to the next quote of
            // its kind that no word character follows (so `can't`, `users' 'x'` read right).
            let kind = match c {
                b'\'' => Some(0),
                b'"' => Some(1),
                b'`' => Some(2),
                _ => None,
            };
            if let Some(k) = kind {
                let opens = !unclosed[k] && !line[..i].chars().next_back().is_some_and(joins_quote_before);
                if opens && b.get(i + 1) == Some(&c) {
                    // An empty literal (`''`) says nothing variable.
                    out.push(c as char);
                    out.push(c as char);
                    i += 2;
                    continue;
                }
                if opens {
                    match quoted_end(line, i, c) {
                        None => unclosed[k] = true,
                        Some(end) => {
                            out.push(c as char);
                            let start = out.len();
                            if quoted == Quoted::Data {
                                // Parameterized like the line (the literal holds no literal
                                // of its own kind: at most three levels, each linear).
                                parameterize_line(&line[i + 1..end], out, quoted);
                            }
                            if quoted == Quoted::All || out.as_bytes()[start..].iter().any(u8::is_ascii_digit) {
                                out.truncate(start);
                                out.push_str("<value>");
                            }
                            out.push(c as char);
                            i = end + 1;
                            continue;
                        }
                    }
                }
            }
            if c.is_ascii() {
                out.push(char::from(c));
                i += 1;
                continue;
            }
            let ch = line[i..].chars().next().unwrap_or(' ');
            out.push(ch);
            i += ch.len_utf8();
            continue;
        }
        let start = i;
        while i < b.len() && is_word_byte(b[i]) {
            i += 1;
        }
        if has_scheme_sep(&line[start..i]) {
            // A URL runs to the next space or closing quote/bracket, query string included.
            while i < b.len() && !b[i].is_ascii_whitespace() && !matches!(b[i], b'"' | b'\'' | b')' | b']' | b'>') {
                i += 1;
            }
        }
        let mut word = &line[start..i];
        // Keep sentence punctuation (one ASCII byte) out of the token.
        let mut trail = "";
        if word.len() > 1 && word.ends_with(['.', ':', ',']) {
            (word, trail) = word.split_at(word.len() - 1);
        }
        let after_eq = start > 0 && b[start - 1] == b'=';
        match classify(word) {
            Some(placeholder) => out.push_str(placeholder),
            None if after_eq && matches!(word, "true" | "false" | "True" | "False" | "TRUE" | "FALSE") => {
                out.push_str("<bool>");
            }
            // A plain word (most of a message): nothing in it to replace, as
            // `parameterize_inner` would find (one part, no class), without splitting it.
            None if word.bytes().all(|c| c.is_ascii_alphabetic()) => out.push_str(word),
            None => parameterize_inner(word, out),
        }
        out.push_str(trail);
    }
}

/// Within a word that is not a whole token of a known kind, replace embedded numbers
/// (`user42` stays, `id=42` -> `id=<int>`, `a/123/b` -> `a/<int>/b`). In a path (a word with
/// a `/`), a segment that still holds a digit after that carries an id: it becomes `<id>`,
/// keeping a file extension of letters (`/data/user8812/img_0042.png` -> `/data/<id>/<id>.png`).
fn parameterize_inner(word: &str, out: &mut String) {
    let mut after_eq = false;
    if !word.contains('/') {
        parameterize_parts(word, out, &mut after_eq);
        return;
    }
    for seg in word.split_inclusive('/') {
        let (body, slash) = match seg.strip_suffix('/') {
            Some(body) => (body, "/"),
            None => (seg, ""),
        };
        let start = out.len();
        parameterize_parts(body, out, &mut after_eq);
        if out.as_bytes()[start..].iter().any(u8::is_ascii_digit) {
            out.truncate(start);
            out.push_str("<id>");
            out.push_str(extension(body));
            after_eq = false;
        }
        out.push_str(slash);
        if !slash.is_empty() {
            after_eq = false;
        }
    }
}

/// A file name's extension of 1 to 8 ASCII letters, with its dot (`.png`), or `""`.
fn extension(name: &str) -> &str {
    match name.rfind('.') {
        Some(dot) if dot > 0 && (2..=9).contains(&(name.len() - dot)) => {
            let ext = &name[dot..];
            if ext[1..].bytes().all(|c| c.is_ascii_alphabetic()) {
                ext
            } else {
                ""
            }
        }
        _ => "",
    }
}

/// [`parameterize_inner`] on a word without `/`, or one path segment.
fn parameterize_parts(word: &str, out: &mut String, after_eq: &mut bool) {
    for part in word.split_inclusive(['=', '/', ':', '_', '-']) {
        let (body, sep) = match part.as_bytes().last() {
            Some(b'=' | b'/' | b':' | b'_' | b'-') => (&part[..part.len() - 1], &part[part.len() - 1..]),
            _ => (part, ""),
        };
        match classify(body) {
            Some(p) if !body.is_empty() => out.push_str(p),
            _ if *after_eq && matches!(body, "true" | "false" | "True" | "False" | "TRUE" | "FALSE") => {
                out.push_str("<bool>")
            }
            _ => out.push_str(body),
        }
        out.push_str(sep);
        *after_eq = sep == "=";
    }
}

const WEEKDAYS: &[&str] = &[
    "Mon",
    "Tue",
    "Wed",
    "Thu",
    "Fri",
    "Sat",
    "Sun",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];
const MONTHS: &[&str] = &["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/// `t` without its trailing commas.
fn trim_commas(t: &[u8]) -> &[u8] {
    let keep = t.iter().rposition(|&c| c != b',').map_or(0, |k| k + 1);
    &t[..keep]
}

/// Whether a token of an already parameterized line can be part of a written-out date
/// (RFC 822 `Tue, 26 Nov 2026 05:39:00 GMT`, JS `Thu Nov 26 2026 05:39:00 GMT+0000 (...)`).
/// On bytes (a token is whole characters: the line is cut at ASCII spaces only).
fn date_token(t: &[u8]) -> (bool, bool) {
    let bare = trim_commas(t);
    // Every date token below starts with an ASCII capital, `<` or `(`: any other token (most
    // of a message) is decided by its first byte, without the comparisons.
    if !bare.first().is_some_and(|&c| c.is_ascii_uppercase() || c == b'<' || c == b'(') {
        return (false, false);
    }
    let named = WEEKDAYS.iter().chain(MONTHS).any(|w| w.as_bytes() == bare);
    let other = matches!(
        bare,
        b"<int>" | b"<time>" | b"<date>" | b"GMT" | b"UTC" | b"Z" | b"(Coordinated" | b"Universal" | b"Time)"
    ) || bare.starts_with(b"GMT+")
        || bare.starts_with(b"GMT-")
        || bare.starts_with(b"UTC+")
        || bare.starts_with(b"UTC-")
        || (bare.starts_with(b"(") && bare.ends_with(b"Time)"));
    (named || other, named || bare == b"<time>")
}

/// Replaces runs of three or more date tokens (with a weekday, month or time among them) in
/// `out[start..]` by one `<date>`.
///
/// One pass over the space-separated tokens, rewriting in place and allocating nothing (see
/// [`collapse_in_place`]).
fn collapse_dates(out: &mut String, start: usize) {
    let line = &out[start..];
    if !line.contains("<int>") && !line.contains("<time>") {
        return;
    }
    let mut bytes = std::mem::take(out).into_bytes();
    let len = start + collapse_in_place(&mut bytes[start..]);
    bytes.truncate(len);
    // Whole tokens and ASCII placeholders: still UTF-8 (checked, not assumed).
    *out = match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    };
}

/// A maximal run of date tokens, not yet written out.
struct DateRun {
    /// Byte range of the run in the line as read.
    start: usize,
    end: usize,
    tokens: usize,
    anchored: bool,
    /// The last token ends in a comma (and is more than commas).
    trailing_comma: bool,
}

/// Collapses the date runs of `line` (space-separated tokens) in place; returns its new
/// length. Only maximal runs are tried: a part of a run that does not collapse is shorter
/// and has no more anchors, so it does not collapse either (this keeps it linear).
///
/// The write position never passes the read position: tokens are copied as they are, and a
/// collapsing run (three tokens, one a name of 3+ bytes or `<time>`, two spaces: 7+ bytes) is
/// never shorter than `<date>,` (a run that would be is kept as it is, should that ever be).
fn collapse_in_place(line: &mut [u8]) -> usize {
    let len = line.len();
    let (mut write, mut pos, mut first) = (0, 0, true);
    let mut run: Option<DateRun> = None;
    // Appends line[from..to] (or a placeholder) to the written part, after a separator.
    let mut emit = |line: &mut [u8], write: &mut usize, piece: Result<(usize, usize), &[u8]>| {
        if !std::mem::take(&mut first) {
            line[*write] = b' ';
            *write += 1;
        }
        match piece {
            Ok((from, to)) => {
                line.copy_within(from..to, *write);
                *write += to - from;
            }
            Err(text) => {
                line[*write..*write + text.len()].copy_from_slice(text);
                *write += text.len();
            }
        }
    };
    loop {
        let end = line[pos..].iter().position(|&c| c == b' ').map_or(len, |k| pos + k);
        let tok = &line[pos..end];
        let (dateish, anchor) = date_token(tok);
        if dateish {
            let r = run.get_or_insert(DateRun { start: pos, end, tokens: 0, anchored: false, trailing_comma: false });
            r.end = end;
            r.tokens += 1;
            r.anchored |= anchor;
            r.trailing_comma = tok.ends_with(b",") && !trim_commas(tok).is_empty();
        }
        let last = end == len;
        if !dateish || last {
            if let Some(r) = run.take() {
                let date: &[u8] = if r.trailing_comma { b"<date>," } else { b"<date>" };
                if r.tokens >= 3 && r.anchored && date.len() <= r.end - r.start {
                    emit(line, &mut write, Err(date));
                } else {
                    emit(line, &mut write, Ok((r.start, r.end)));
                }
            }
        }
        if !dateish {
            emit(line, &mut write, Ok((pos, end)));
        }
        if last {
            return write;
        }
        pos = end + 1;
    }
}

fn classify(w: &str) -> Option<&'static str> {
    // Every class below needs a digit or one of these punctuation bytes (a URL `://`, an email
    // `@`, a hostname's or number's `.`, dashes of ids and dates, colons of times and IPv6):
    // a plain word (most of a message) is none of them, decided in one pass.
    if !w.bytes().any(|c| c.is_ascii_digit() || matches!(c, b'.' | b':' | b'@' | b'/' | b'-')) {
        return None;
    }
    // A word of digits only (ids, counts: most of what a message parameterizes) is decided
    // by its length, as `classify_full` decides it after all its other checks fail.
    if w.bytes().all(|c| c.is_ascii_digit()) {
        return Some(match w.len() {
            40 => "<sha1>",
            32 => "<md5>",
            _ => "<int>",
        });
    }
    classify_full(w)
}

/// [`classify`] without its shortcut.
fn classify_full(w: &str) -> Option<&'static str> {
    let b = w.as_bytes();
    if b.is_empty() {
        return None;
    }
    if has_scheme_sep(w) {
        return Some("<url>");
    }
    if let Some(at) = w.find('@') {
        if at > 0 && w[at + 1..].contains('.') && !w[at + 1..].starts_with(|c: char| c.is_ascii_digit()) {
            return Some("<email>");
        }
    }
    if is_uuid(b) {
        return Some("<uuid>");
    }
    if is_traceparent(b) {
        return Some("<traceparent>");
    }
    if b.len() == 35 && b.starts_with(b"1-") && b[10] == b'-' && hex_run(&b[2..10]) && hex_run(&b[11..]) {
        return Some("<trace_id>");
    }
    if is_hostname(w) {
        return Some("<hostname>");
    }
    if is_ipv4(w) {
        return Some("<ip>");
    }
    if w.matches(':').count() >= 2
        && b.iter().all(|c| c.is_ascii_hexdigit() || *c == b':')
        && b.iter().any(u8::is_ascii_digit)
    {
        if b.len() == 8 && b[2] == b':' && b[5] == b':' {
            return Some("<time>");
        }
        return Some("<ip>");
    }
    if is_date(b) {
        return Some("<date>");
    }
    if (w.starts_with("0x") || w.starts_with("0X")) && b.len() > 2 && b[2..].iter().all(u8::is_ascii_hexdigit) {
        return Some("<hex>");
    }
    if b.iter().all(u8::is_ascii_hexdigit) && b.iter().any(u8::is_ascii_digit) {
        return match b.len() {
            40 => Some("<sha1>"),
            32 => Some("<md5>"),
            n if n >= 8 && b.iter().any(|c| c.is_ascii_alphabetic()) => Some("<hex>"),
            7 if b.iter().any(|c| c.is_ascii_alphabetic()) && b.iter().all(|c| !c.is_ascii_uppercase()) => {
                Some("<sha>")
            }
            _ if b.iter().all(u8::is_ascii_digit) => Some("<int>"),
            _ => None,
        };
    }
    if let Some(num) = duration_number(w) {
        if is_number(num) {
            return Some("<duration>");
        }
    }
    if is_number(w) {
        return Some(if w.contains('.') { "<float>" } else { "<int>" });
    }
    if matches!(w, "true" | "false" | "True" | "False") {
        return None;
    }
    None
}

fn duration_number(w: &str) -> Option<&str> {
    for unit in ["ms", "us", "µs", "ns", "s", "m", "h"] {
        if let Some(n) = w.strip_suffix(unit) {
            if !n.is_empty() {
                return Some(n);
            }
        }
    }
    None
}

fn is_number(w: &str) -> bool {
    let w = w.strip_prefix(['-', '+']).unwrap_or(w);
    let mut dots = 0;
    !w.is_empty()
        && w.bytes().all(|c| {
            if c == b'.' {
                dots += 1;
                true
            } else {
                c.is_ascii_digit()
            }
        })
        && dots <= 1
        && w.bytes().next().is_some_and(|c| c.is_ascii_digit())
        && w.bytes().last().is_some_and(|c| c.is_ascii_digit())
}

fn hex_run(b: &[u8]) -> bool {
    b.iter().all(u8::is_ascii_hexdigit)
}

/// W3C `traceparent`: `00-<32 hex>-<16 hex>-<2 hex>`.
fn is_traceparent(b: &[u8]) -> bool {
    b.len() == 55
        && b[2] == b'-'
        && b[35] == b'-'
        && b[52] == b'-'
        && hex_run(&b[..2])
        && hex_run(&b[3..35])
        && hex_run(&b[36..52])
        && hex_run(&b[53..])
}

/// A lower-case DNS name with at least three labels and a well-known last label.
fn is_hostname(w: &str) -> bool {
    const TLDS: &[&str] = &[
        "com",
        "net",
        "org",
        "io",
        "dev",
        "app",
        "cloud",
        "internal",
        "local",
        "lan",
        "svc",
        "cluster",
        "amazonaws",
        "corp",
    ];
    let mut labels = 0;
    for l in w.split('.') {
        if l.is_empty() || !l.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-') {
            return false;
        }
        labels += 1;
    }
    labels >= 3 && w.rsplit('.').next().is_some_and(|tld| TLDS.contains(&tld))
}

fn is_uuid(b: &[u8]) -> bool {
    b.len() == 36
        && b.iter().enumerate().all(
            |(i, c)| {
                if matches!(i, 8 | 13 | 18 | 23) {
                    *c == b'-'
                } else {
                    c.is_ascii_hexdigit()
                }
            },
        )
}

fn is_ipv4(w: &str) -> bool {
    let w = w.split(':').next().unwrap_or(w);
    let mut n = 0;
    for part in w.split('.') {
        n += 1;
        if part.is_empty() || part.len() > 3 || !part.bytes().all(|c| c.is_ascii_digit()) {
            return false;
        }
    }
    n == 4
}

/// `2026-11-26`, `2026-11-26T05:39:00Z` and similar.
fn is_date(b: &[u8]) -> bool {
    b.len() >= 10
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[5..7].iter().all(u8::is_ascii_digit)
        && b[7] == b'-'
        && b[8..10].iter().all(u8::is_ascii_digit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(n: fn(&str, &mut String), s: &str) -> String {
        let mut out = String::new();
        n(s, &mut out);
        out
    }

    #[test]
    fn filenames() {
        assert_eq!(f(filename, "https://cdn.example.com/static/js/main.3f9a2c1b.js?v=2"), "main.<hash>.js");
        // A hex hash without a digit (found by the stability property test) is a hash too.
        assert_eq!(f(filename, "https://cdn.example.com/js/aaa.dcfabaca.js"), "aaa.<hash>.js");
        assert_eq!(f(filename, "src/facade.js"), "facade.js");
        assert_eq!(f(filename, "src/Deadbeef.js"), "deadbeef.js");
        assert_eq!(f(filename, "C:\\App\\Controllers\\HomeController.cs"), "homecontroller.cs");
        assert_eq!(f(filename, "[native code]"), "");
        assert_eq!(f(filename, "<anonymous>"), "");
        assert_eq!(f(filename, "app/models/user.rb"), "user.rb");
    }

    #[test]
    fn functions() {
        let cases = [
            ("Object.renderCart", "renderCart"),
            ("<anonymous>", ""),
            ("my_crate::db::query::h0123456789abcdef", "my_crate::db::query"),
            ("main.handler.func1", "main.handler"),
            ("pkg.glob..func2", "pkg"),
            ("com.example.Foo.lambda$run$0", "com.example.Foo.lambda$run"),
            ("lambda$run$12", "lambda$run"),
            ("<Main>b__0_1", "Main"),
            ("block (2 levels) in process", "process"),
            ("myapp.core$handler$fn__1234", "myapp.core$handler"),
            ("_app_views_users_show_html_erb__123_456", "_app_views_users_show_html_erb"),
            ("foo(int, char const*)", "foo"),
            ("class@anonymous/app/Http/Kernel.php:12$0::handle", "class@anonymous::handle"),
        ];
        for (input, want) in cases {
            assert_eq!(f(function, input), want, "{input}");
        }
    }

    #[test]
    fn modules() {
        assert_eq!(f(module, "com.example.Service$$EnhancerByCGLIB$$a1b2c3"), "com.example.Service");
        assert_eq!(f(module, "com.example.Outer$1"), "com.example.Outer");
        assert_eq!(f(module, "node_modules/lodash@4.17.21/lodash"), "node_modules/lodash/lodash");
    }

    #[test]
    fn messages() {
        let cases = [
            ("user 12345 not found", "user <int> not found"),
            ("failed to fetch https://api.example.com/v1/users/7?x=1", "failed to fetch <url>"),
            ("mail to bob@example.com bounced", "mail to <email> bounced"),
            (
                "request 3fa85f64-5717-4562-b3fc-2c963f66afa6 timed out after 250ms",
                "request <uuid> timed out after <duration>",
            ),
            ("connect to 10.0.0.12:5432 refused", "connect to <ip> refused"),
            ("segfault at 0x7ffd1234", "segfault at <hex>"),
            ("commit deadbeefcafe1234 missing", "commit <hex> missing"),
            ("ratio 0.75 too high.", "ratio <float> too high."),
            ("key=\"secret value\" rejected", "key=\"<value>\" rejected"),
            ("item id=42 and path /a/123/b", "item id=<int> and path /a/<int>/b"),
            ("Undefined index: report_2085606151", "Undefined index: report_<int>"),
            // A quoted literal in a log line is an interpolated value.
            ("KeyError: 'user-2'", "KeyError: '<value>'"),
            ("user 'alice' can't open \"Q3 report\" in `sales`", "user '<value>' can't open \"<value>\" in `<value>`"),
            ("the users' files 'a'b' and 'x", "the users' files '<value>' and 'x"),
            ("'' and ' ' and 'é'", "'' and '<value>' and '<value>'"),
            ("無効な値 「x」 'ユーザー' です", "無効な値 「x」 '<value>' です"),
            // Path segments that carry ids; a file extension of letters stays.
            ("cannot open /var/data/user8812/img_0042.png: denied", "cannot open /var/data/<id>/<id>.png: denied"),
            ("read /srv/exports/report-2026Q3.csv failed", "read /srv/exports/<id>.csv failed"),
            ("GET /api/orders/ab12cd/items/3 404", "GET /api/orders/<id>/items/<int> <int>"),
            ("file /tmp/файл-42/données.txt gone", "file /tmp/файл-<int>/données.txt gone"),
            ("x-ray and utf-8 and sha-256", "x-ray and utf-<int> and sha-<int>"),
            ("at 2026-11-26T05:39:00Z", "at <date>"),
            ("first\n\n second \nthird", "first\nsecond"),
            ("expired at Tue, 26 Nov 2026 05:39:00 GMT for user 7", "expired at <date> for user <int>"),
            ("at Thu Nov 26 2026 05:39:00 GMT+0000 (Coordinated Universal Time) done", "at <date> done"),
            ("trace 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 lost", "trace <traceparent> lost"),
            ("Root=1-5759e988-bd862e3fe1be46a994272793 failed", "Root=<trace_id> failed"),
            ("cannot reach db-3.prod.internal on 5432", "cannot reach <hostname> on <int>"),
            ("built from a1b2c3d", "built from <sha>"),
            ("cache enabled=true retry=False", "cache enabled=<bool> retry=<bool>"),
            ("retry 3 of 5 at 05:39:00", "retry <int> of <int> at <time>"),
            ("May not be null", "May not be null"),
            ("a Tue, 26 Nov 2026 05:39:00 GMT, b Wed, 27 Nov 2026 06:00:00 GMT", "a <date>, b <date>"),
            ("1 2 3 Nov 4", "<date>"),
            ("1 2  Nov 4", "<int> <int>  Nov <int>"),
            ("Jan Feb", "Jan Feb"),
            ("Nov, 5, x", "Nov, <int>, x"),
            ("日本 1 Tue 05:39:00 終", "日本 <date> 終"),
        ];
        for (input, want) in cases {
            assert_eq!(f(message, input), want, "{input}");
        }
    }

    #[test]
    fn exception_values_keep_quoted_names() {
        let cases = [
            (
                "Cannot read properties of undefined (reading 'id')",
                "Cannot read properties of undefined (reading 'id')",
            ),
            ("KeyError: 'user'", "KeyError: 'user'"),
            ("KeyError: 'user-2'", "KeyError: 'user-<int>'"),
            ("KeyError: 'user8812'", "KeyError: '<value>'"),
            ("called `Option::unwrap()` on a `None` value", "called `Option::unwrap()` on a `None` value"),
            ("no such file: '/var/data/u1/x.txt'", "no such file: '/var/data/<id>/x.txt'"),
            (
                "name 'Zürich' and \"two words\" and \"a 'b7' c\"",
                "name 'Zürich' and \"two words\" and \"a '<value>' c\"",
            ),
            ("open /var/data/user8812/file.txt", "open /var/data/<id>/file.txt"),
        ];
        for (input, want) in cases {
            assert_eq!(f(exception_value, input), want, "{input}");
        }
    }

    /// Names that used to panic (a slice inside a multi-byte character) or that mix
    /// non-ASCII text with the ASCII markers the normalizers look for.
    #[test]
    fn non_ascii_names() {
        let functions = [
            ("обработатьЗаказПользователя", "обработатьЗаказПользователя"),
            ("日本語::関数::h0123456789abcdef", "日本語::関数"),
            ("é::h0123456789abcdef", "é"),
            ("ab::h0123456789abcdeé", "ab::h0123456789abcdeé"),
            ("é$1", "é"),
            ("<Ма>b__0", "Ма"),
            ("<日本>d__12", "日本"),
            ("Object.обработать", "обработать"),
            ("関数.func1", "関数"),
            ("関数.glob", "関数"),
            ("шаблон__12_3", "шаблон"),
            ("block in 処理", "処理"),
            ("class@anonymous/é.php:1$0::処理", "class@anonymous::処理"),
            ("関数(引数)", "関数"),
            ("🦀", "🦀"),
        ];
        for (input, want) in functions {
            assert_eq!(f(function, input), want, "{input}");
        }
        assert_eq!(f(module, "é$1"), "é");
        assert_eq!(f(module, "パッケージ@1.2.3/モジュール$$Lambda$1"), "パッケージ/モジュール");
        assert_eq!(f(filename, "https://例え.jp/ファイル.3f9a2c1b.JS?ä"), "ファイル.<hash>.js");
        assert_eq!(dotnet_async("Магазин+<Оплата>d__12", "MoveNext"), Some(("Магазин", "Оплата")));
        for (input, want) in [
            ("Объект.обработать/<", "обработать"),
            ("é", ""),
            ("日", "日"),
            ("a.é", ""),
            ("日本.", "日本."),
            ("x.日本@", "日本"),
            ("<anonymous>", ""),
        ] {
            let mut out = input.to_owned();
            js_function(&mut out);
            assert_eq!(out, want, "{input}");
        }
    }

    /// Generated suffixes are stripped from names of any length, then the name is capped.
    #[test]
    fn long_names_are_capped_after_normalization() {
        let long = format!("{}::h0123456789abcdef", "é".repeat(300));
        let out = f(function, &long);
        assert!(out.len() <= MAX_COMPONENT_LEN && !out.contains("::h"));
        assert_eq!(out, "é".repeat(MAX_COMPONENT_LEN / 2));
        let out = f(filename, &format!("/x/{}.js", "İ".repeat(300)));
        assert!(out.len() <= MAX_COMPONENT_LEN, "{}", out.len());
        assert!(f(module, &"ü".repeat(1000)).len() <= MAX_COMPONENT_LEN);
        let mut js = format!("{}.render", "a".repeat(1000));
        js_function(&mut js);
        assert_eq!(js, "render");
    }

    /// A 1 MB message of numbers, of dates and of quotes: only a bounded prefix is read, and
    /// the date collapsing itself is linear (a quadratic pass would take minutes here).
    #[test]
    fn huge_messages_are_bounded_and_linear() {
        let mb = 1 << 20;
        let numbers = "1 ".repeat(mb / 2);
        let out = f(message, &numbers);
        assert!(out.len() <= MAX_MESSAGE_LEN && out.starts_with("<int> <int>"), "{out}");
        let dates = "Tue, 26 Nov 2026 05:39:00 GMT ".repeat(mb / 30);
        let out = f(message, &dates);
        assert!(out.len() <= MAX_MESSAGE_LEN && out.starts_with("<date>"), "{out}");
        let quotes = "=\"".repeat(mb / 2);
        assert!(f(message, &quotes).len() <= MAX_MESSAGE_LEN);
        let cjk = "日本語のメッセージ".repeat(mb / 27);
        let out = f(message, &cjk);
        assert!(out.len() <= MAX_MESSAGE_LEN && out.starts_with("日本語"));
        let lines = "\n".repeat(mb);
        assert_eq!(f(message, &lines), "");

        // Past the input cap, straight into the collapsing pass: 1 MB of tokens.
        let mut out = "<int> ".repeat(mb / 6);
        let before = out.clone();
        collapse_dates(&mut out, 0);
        assert_eq!(out, before);
        let mut out = "Tue, <int> Nov <int> <time> GMT x ".repeat(mb / 34);
        collapse_dates(&mut out, 0);
        assert_eq!(out, "<date> x ".repeat(mb / 34));
    }

    proptest::proptest! {
        /// The shortcut in `classify` changes no answer: on words of letters, digits and the
        /// punctuation messages have, and on any text.
        #[test]
        fn classify_shortcut_agrees_with_the_full_check(
            w in proptest::prop_oneof![
                "[a-zA-Z0-9_.:@/%+~-]{0,40}",
                "[a-fA-F0-9:.-]{0,40}",
                "\\PC{0,20}",
                "[0-9]{1,45}",
                "[0-9]{31,41}",
            ],
        ) {
            proptest::prop_assert_eq!(classify(&w), classify_full(&w), "{:?}", w);
        }

        /// `date_token` on bytes with its first-byte shortcut answers as the check on `str`
        /// it replaced (kept here as the reference).
        #[test]
        fn date_token_shortcut_agrees_with_the_full_check(
            t in proptest::prop_oneof![
                "(Mon|Tuesday|Nov|May|GMT|UTC|Z|<int>|<time>|<date>|\\(Coordinated|Universal|Time\\)|GMT\\+0000|UTC-5|\\(Central European Summer Time\\)|mon|nov),{0,2}",
                "[a-zA-Z<>(),+0-9-]{0,12}",
                "\\PC{0,12}",
            ],
        ) {
            proptest::prop_assert_eq!(date_token(t.as_bytes()), date_token_reference(&t), "{:?}", t);
        }

        /// The byte loop finds `://` where `str::contains` does.
        #[test]
        fn scheme_separator_search_agrees_with_contains(s in proptest::prop_oneof!["[:/a日]{0,12}", "\\PC{0,20}"]) {
            proptest::prop_assert_eq!(has_scheme_sep(&s), s.contains("://"), "{:?}", s);
        }

        /// A plain word is written as `parameterize_inner` writes it.
        #[test]
        fn plain_word_shortcut_agrees_with_the_full_path(w in "[a-zA-Z]{0,20}") {
            let mut out = String::new();
            parameterize_inner(&w, &mut out);
            proptest::prop_assert_eq!(out, w);
        }
    }

    /// `date_token` as it was before the shortcut, on `str`.
    fn date_token_reference(t: &str) -> (bool, bool) {
        let bare = t.trim_end_matches(',');
        let named = WEEKDAYS.contains(&bare) || MONTHS.contains(&bare);
        let other = matches!(
            bare,
            "<int>" | "<time>" | "<date>" | "GMT" | "UTC" | "Z" | "(Coordinated" | "Universal" | "Time)"
        ) || bare.starts_with("GMT+")
            || bare.starts_with("GMT-")
            || bare.starts_with("UTC+")
            || bare.starts_with("UTC-")
            || (bare.starts_with('(') && bare.ends_with("Time)"));
        (named || other, named || bare == "<time>")
    }

    /// Words of digits only, of every length around the lengths `classify_full` tells apart,
    /// get its answer from the shortcut; the table of word bytes is the test it replaced.
    #[test]
    fn digit_words_and_word_bytes_agree_with_the_full_checks() {
        for len in 1..=64 {
            for digit in ['0', '7', '9'] {
                let w: String = std::iter::repeat_n(digit, len).collect();
                assert_eq!(classify(&w), classify_full(&w), "{w}");
            }
        }
        for c in 0..=255u8 {
            let old =
                c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.' | b'@' | b':' | b'/' | b'%' | b'+' | b'~');
            assert_eq!(is_word_byte(c), old, "{c}");
        }
    }
}
