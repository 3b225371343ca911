//! The baselines tracefold's grouping is scored against: keys built the way Swetrix and
//! PostHog group errors.

use std::fmt::Write as _;

/// Swetrix-style key: name + message + line + column + file name of the top frame.
pub fn swetrix_key(ev: &tracefold_model::Event<'_>) -> String {
    let Some(exc) = ev.exception.last() else {
        return format!("msg:{}", tracefold_fingerprint::message_source(ev).unwrap_or(""));
    };
    let top = exc.stacktrace.as_ref().and_then(|s| s.frames.last());
    format!(
        "{}|{}|{}|{}|{}",
        exc.ty.as_deref().unwrap_or(""),
        exc.value.as_deref().unwrap_or(""),
        top.and_then(|f| f.lineno).unwrap_or(0),
        top.and_then(|f| f.colno).unwrap_or(0),
        top.and_then(|f| f.filename.as_deref()).unwrap_or("")
    )
}

/// PostHog-style key: type + in-app frames (function and module or file, as reported), with
/// line and column for frames without a function; no message parameterization.
pub fn posthog_key(ev: &tracefold_model::Event<'_>) -> String {
    let Some(exc) = ev.exception.last() else {
        return format!("msg:{}", tracefold_fingerprint::message_source(ev).unwrap_or(""));
    };
    let mut k = exc.ty.as_deref().unwrap_or("").to_owned();
    for f in exc.stacktrace.as_ref().map_or(&[][..], |s| &s.frames[..]).iter().filter(|f| f.in_app == Some(true)) {
        let loc = f.module.as_deref().or(f.filename.as_deref()).unwrap_or("");
        match f.function.as_deref() {
            Some(func) if !func.is_empty() && func != "<anonymous>" => {
                let _ = write!(k, "|{loc}:{func}");
            }
            _ => {
                let _ = write!(k, "|{loc}:{}:{}", f.lineno.unwrap_or(0), f.colno.unwrap_or(0));
            }
        }
    }
    k
}
