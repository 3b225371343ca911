//! The tracefold error event, deserialized without copying strings out of the input buffer.
//!
//! Field names follow Sentry's event payload where the concept is the same, so that SDK
//! authors and people used to Sentry recognise them. The authoritative description is the
//! JSON Schema in `schemas/event.v1.schema.json`.
//!
//! An event serializes to that format and reads back equal: `parse(serialize(e)) == e` for
//! every event the parsers produce (at most [`MAX_TAGS`] tags and headers; timestamps as
//! [`crate::time`] writes them). So a producer builds events as values and serializes them
//! once, and what it publishes is what the grouper reads.

use crate::time::{deserialize_opt_millis, serialize_opt_millis, Millis};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// A string borrowed from the input buffer when possible.
pub type Str<'a> = Cow<'a, str>;

/// Most tags (and request headers) read from one event; later ones are ignored by grouping
/// rules and breakdowns (the sample event keeps them, within its size bound).
pub const MAX_TAGS: usize = 256;

/// Most threads read from one event (Sentry's `threads` interface); later ones are ignored
/// (the sample event keeps them, within its size bound). Grouping reads one thread's stack at
/// most, the one that raised an exception without a stack of its own.
pub const MAX_THREADS: usize = 256;

/// Most `debug_meta.images` read from one event (the source-map hook looks maps up by their
/// debug ids, docs/sourcemaps.md); later ones are ignored (the sample keeps them).
pub const MAX_DEBUG_IMAGES: usize = 32;

/// One error event as it travels on the raw events topic.
#[derive(Debug, Default, Clone, Deserialize, Serialize, PartialEq)]
pub struct Event<'a> {
    /// 32 hex digits (a UUID with or without dashes); assigned by the producer when absent.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none", deserialize_with = "de::opt_str")]
    pub event_id: Option<Str<'a>>,
    /// Project slug: `[a-z0-9][a-z0-9_-]{0,63}`.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none", deserialize_with = "de::opt_str")]
    pub project: Option<Str<'a>>,
    /// When the error happened: Unix seconds or an RFC 3339 string.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "deserialize_opt_millis",
        serialize_with = "serialize_opt_millis"
    )]
    pub timestamp: Option<Millis>,
    /// `javascript`, `node`, `python`, `java`, `go`, `ruby`, `php`, `csharp`, `rust`, ...
    #[serde(borrow, default, skip_serializing_if = "Option::is_none", deserialize_with = "de::opt_str")]
    pub platform: Option<Str<'a>>,
    /// `fatal`, `error`, `warning`, `info` or `debug`; `error` when absent.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none", deserialize_with = "de::opt_str")]
    pub level: Option<Str<'a>>,
    /// Release (version) of the software that produced the event.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none", deserialize_with = "de::opt_str")]
    pub release: Option<Str<'a>>,
    /// Deployment environment (`production`, `staging`, ...).
    #[serde(borrow, default, skip_serializing_if = "Option::is_none", deserialize_with = "de::opt_str")]
    pub environment: Option<Str<'a>>,
    /// Name of the logger that reported the event.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none", deserialize_with = "de::opt_str")]
    pub logger: Option<Str<'a>>,
    /// Server or host name.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none", deserialize_with = "de::opt_str")]
    pub server_name: Option<Str<'a>>,
    /// Formatted message, for events without an exception or as extra context.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none", deserialize_with = "de::opt_str")]
    pub message: Option<Str<'a>>,
    /// Message template with its parameters; the template groups better than the formatted text.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub logentry: Option<LogEntry<'a>>,
    /// The exception chain, innermost cause first and the raised exception last (Sentry order).
    #[serde(borrow, default, skip_serializing_if = "Vec::is_empty", deserialize_with = "de::vec_or_null")]
    pub exception: Vec<Exception<'a>>,
    /// The threads of the process when the event was captured (Sentry's `threads` interface,
    /// as a plain list like `exception`); at most [`MAX_THREADS`] are read. An exception
    /// without a stack is grouped by the stack of the thread that raised it.
    #[serde(borrow, default, skip_serializing_if = "Vec::is_empty", deserialize_with = "de::threads")]
    pub threads: Vec<Thread<'a>>,
    /// Custom fingerprint; `{{ default }}` stands for the computed one.
    #[serde(borrow, default, skip_serializing_if = "Vec::is_empty", deserialize_with = "de::vec_str")]
    pub fingerprint: Vec<Str<'a>>,
    /// The affected user.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub user: Option<User<'a>>,
    /// Free-form tags, string values.
    #[serde(borrow, default, skip_serializing_if = "Vec::is_empty", with = "tags")]
    pub tags: Vec<(Str<'a>, Str<'a>)>,
    /// The HTTP request during which the error happened.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Request<'a>>,
    /// Browser, OS, device and runtime of the client.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub contexts: Option<Contexts<'a>>,
    /// The SDK that sent the event.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub sdk: Option<Sdk<'a>>,
    /// Debug files the event's code was built with (Sentry's `debug_meta`): for JavaScript,
    /// the source maps of the minified files by debug id. Read leniently (it was passed
    /// through unread before the model carried it): a value of another shape, or an image or
    /// field of another type, is ignored rather than refused.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none", deserialize_with = "de::debug_meta")]
    pub debug_meta: Option<DebugMeta<'a>>,
}

/// Sentry's `debug_meta` interface: the debug files of the event's code (read by
/// [`Event`]'s deserializer, leniently).
#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct DebugMeta<'a> {
    /// The images: of the first [`MAX_DEBUG_IMAGES`] elements, the objects (the rest skipped,
    /// whatever their values).
    pub images: Vec<DebugImage<'a>>,
}

/// One `debug_meta.images[]` entry. The source-map hook reads those of type `sourcemap`: the
/// minified file (`code_file`, its URL) and the debug id its map was uploaded with.
/// Its fields are read when they are strings (another type reads as absent).
#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct DebugImage<'a> {
    /// `sourcemap` for a JavaScript file's map (other types are kept but not used).
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub ty: Option<Str<'a>>,
    /// The file the image is for: a minified file's URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code_file: Option<Str<'a>>,
    /// The debug id (a UUID).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub debug_id: Option<Str<'a>>,
}

/// A log message template and its formatted form.
#[derive(Debug, Default, Clone, Deserialize, Serialize, PartialEq)]
pub struct LogEntry<'a> {
    /// The template, e.g. `user %s not found`.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none", deserialize_with = "de::opt_str")]
    pub message: Option<Str<'a>>,
    /// The formatted message.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none", deserialize_with = "de::opt_str")]
    pub formatted: Option<Str<'a>>,
}

/// One exception of the chain.
#[derive(Debug, Default, Clone, Deserialize, Serialize, PartialEq)]
pub struct Exception<'a> {
    /// Exception class or error type, e.g. `TypeError`, `java.lang.NullPointerException`.
    #[serde(
        borrow,
        default,
        rename = "type",
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de::opt_str"
    )]
    pub ty: Option<Str<'a>>,
    /// The exception message.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none", deserialize_with = "de::opt_str")]
    pub value: Option<Str<'a>>,
    /// Module or package the exception type is defined in.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none", deserialize_with = "de::opt_str")]
    pub module: Option<Str<'a>>,
    /// How the exception was captured.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub mechanism: Option<Mechanism<'a>>,
    /// The stack at the point the exception was raised.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub stacktrace: Option<Stacktrace<'a>>,
    /// The `id` of the thread (in [`Event::threads`]) that raised the exception; a string or
    /// an integer (as its decimal text).
    #[serde(borrow, default, skip_serializing_if = "Option::is_none", deserialize_with = "de::opt_str_or_number")]
    pub thread_id: Option<Str<'a>>,
}

/// One thread of the process (Sentry's `threads.values[]`).
#[derive(Debug, Default, Clone, Deserialize, Serialize, PartialEq)]
pub struct Thread<'a> {
    /// Thread id, a string or an integer (as its decimal text); what
    /// [`Exception::thread_id`] refers to.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none", deserialize_with = "de::opt_str_or_number")]
    pub id: Option<Str<'a>>,
    /// Thread name, e.g. `main`.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none", deserialize_with = "de::opt_str")]
    pub name: Option<Str<'a>>,
    /// Whether this thread crashed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crashed: Option<bool>,
    /// Whether this thread captured the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<bool>,
    /// The thread's stack when the event was captured.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub stacktrace: Option<Stacktrace<'a>>,
}

/// How an exception was captured.
#[derive(Debug, Default, Clone, Deserialize, Serialize, PartialEq)]
pub struct Mechanism<'a> {
    /// `onerror`, `generic`, `panic`, ...
    #[serde(
        borrow,
        default,
        rename = "type",
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de::opt_str"
    )]
    pub ty: Option<Str<'a>>,
    /// Whether the application handled the error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handled: Option<bool>,
    /// True when the exception type was made up by the SDK and says nothing about the bug.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synthetic: Option<bool>,
}

/// A stack trace.
#[derive(Debug, Default, Clone, Deserialize, Serialize, PartialEq)]
pub struct Stacktrace<'a> {
    /// Frames, oldest call first and the crashing frame last (Sentry order).
    #[serde(borrow, default, deserialize_with = "de::vec_or_null")]
    pub frames: Vec<Frame<'a>>,
}

/// One stack frame.
#[derive(Debug, Default, Clone, Deserialize, Serialize, PartialEq)]
pub struct Frame<'a> {
    /// Function or method name.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none", deserialize_with = "de::opt_str")]
    pub function: Option<Str<'a>>,
    /// Module, package or class path (`app.views`, `com.example.Foo`).
    #[serde(borrow, default, skip_serializing_if = "Option::is_none", deserialize_with = "de::opt_str")]
    pub module: Option<Str<'a>>,
    /// File name as reported, usually relative.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none", deserialize_with = "de::opt_str")]
    pub filename: Option<Str<'a>>,
    /// Absolute path or URL of the file.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none", deserialize_with = "de::opt_str")]
    pub abs_path: Option<Str<'a>>,
    /// Package, library or binary image the frame belongs to.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none", deserialize_with = "de::opt_str")]
    pub package: Option<Str<'a>>,
    /// 1-based line number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lineno: Option<u32>,
    /// 1-based column number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub colno: Option<u32>,
    /// Whether the frame belongs to the application (as opposed to a library).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_app: Option<bool>,
    /// Instruction address of native frames, as a hex string.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none", deserialize_with = "de::opt_str")]
    pub instruction_addr: Option<Str<'a>>,
}

/// The user affected by the event. At least one field identifies the user.
#[derive(Debug, Default, Clone, Deserialize, Serialize, PartialEq)]
pub struct User<'a> {
    /// Application user id.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none", deserialize_with = "de::opt_str_or_number")]
    pub id: Option<Str<'a>>,
    /// E-mail address.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none", deserialize_with = "de::opt_str")]
    pub email: Option<Str<'a>>,
    /// User name.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none", deserialize_with = "de::opt_str")]
    pub username: Option<Str<'a>>,
    /// IP address.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none", deserialize_with = "de::opt_str")]
    pub ip_address: Option<Str<'a>>,
}

/// The HTTP request during which the error happened.
#[derive(Debug, Default, Clone, Deserialize, Serialize, PartialEq)]
pub struct Request<'a> {
    /// Full URL.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none", deserialize_with = "de::opt_str")]
    pub url: Option<Str<'a>>,
    /// HTTP method.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none", deserialize_with = "de::opt_str")]
    pub method: Option<Str<'a>>,
    /// Query string, without the `?`.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none", deserialize_with = "de::opt_str")]
    pub query_string: Option<Str<'a>>,
    /// Selected request headers (string values).
    #[serde(borrow, default, skip_serializing_if = "Vec::is_empty", with = "tags")]
    pub headers: Vec<(Str<'a>, Str<'a>)>,
}

/// Browser, OS, device and runtime contexts.
#[derive(Debug, Default, Clone, Deserialize, Serialize, PartialEq)]
pub struct Contexts<'a> {
    /// Browser name and version.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub browser: Option<NameVersion<'a>>,
    /// Operating system name and version.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub os: Option<NameVersion<'a>>,
    /// Language runtime name and version.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<NameVersion<'a>>,
    /// Device family and model.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub device: Option<Device<'a>>,
}

/// A named component with a version.
#[derive(Debug, Default, Clone, Deserialize, Serialize, PartialEq)]
pub struct NameVersion<'a> {
    /// Name, e.g. `Chrome`, `iOS`.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none", deserialize_with = "de::opt_str")]
    pub name: Option<Str<'a>>,
    /// Version string.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none", deserialize_with = "de::opt_str")]
    pub version: Option<Str<'a>>,
}

/// The device the client ran on.
#[derive(Debug, Default, Clone, Deserialize, Serialize, PartialEq)]
pub struct Device<'a> {
    /// Device family, e.g. `iPhone`, `Desktop`.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none", deserialize_with = "de::opt_str")]
    pub family: Option<Str<'a>>,
    /// Device model, e.g. `iPhone15,2`.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none", deserialize_with = "de::opt_str")]
    pub model: Option<Str<'a>>,
}

/// The SDK that sent the event.
#[derive(Debug, Default, Clone, Deserialize, Serialize, PartialEq)]
pub struct Sdk<'a> {
    /// SDK name, e.g. `sentry.python`.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none", deserialize_with = "de::opt_str")]
    pub name: Option<Str<'a>>,
    /// SDK version.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none", deserialize_with = "de::opt_str")]
    pub version: Option<Str<'a>>,
}

/// Tags and headers: a JSON object of strings, kept as ordered pairs (no hashing, no map).
mod tags {
    use super::Str;
    use serde::de::{MapAccess, Visitor};
    use serde::ser::SerializeMap;
    use serde::{Deserializer, Serializer};
    use std::fmt;

    pub fn deserialize<'de: 'a, 'a, D: Deserializer<'de>>(d: D) -> Result<Vec<(Str<'a>, Str<'a>)>, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Vec<(Str<'a>, Str<'a>)>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object with string values")
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(Vec::new())
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(m.size_hint().unwrap_or(0).min(64));
                while out.len() < super::MAX_TAGS {
                    match m.next_entry::<super::de::BStr<'a>, super::de::BStr<'a>>()? {
                        Some((k, v)) => out.push((k.0, v.0)),
                        None => return Ok(out),
                    }
                }
                // Past the bound: read and ignore the rest (the sample keeps them).
                while m.next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?.is_some() {}
                Ok(out)
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }

    pub fn serialize<S: Serializer>(v: &[(Str<'_>, Str<'_>)], s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(v.len()))?;
        for (k, val) in v {
            m.serialize_entry(k, val)?;
        }
        m.end()
    }
}

/// Deserializers that borrow strings from the input whenever the format allows it
/// (always with simd-json, which unescapes in place; with serde_json when there is no escape).
pub(crate) mod de {
    use super::Str;
    use serde::de::{Deserializer, Error, MapAccess, SeqAccess, Visitor};
    use serde::Deserialize;
    use std::borrow::Cow;
    use std::fmt;
    use std::marker::PhantomData;

    /// A string that borrows when it can.
    pub struct BStr<'a>(pub Str<'a>);

    struct StrV<'a>(PhantomData<&'a ()>);
    impl<'de: 'a, 'a> Visitor<'de> for StrV<'a> {
        type Value = Str<'a>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_borrowed_str<E: Error>(self, v: &'de str) -> Result<Self::Value, E> {
            Ok(Cow::Borrowed(v))
        }
        fn visit_str<E: Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Cow::Owned(v.to_owned()))
        }
        fn visit_string<E: Error>(self, v: String) -> Result<Self::Value, E> {
            Ok(Cow::Owned(v))
        }
    }

    impl<'de: 'a, 'a> Deserialize<'de> for BStr<'a> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_str(StrV(PhantomData)).map(BStr)
        }
    }

    struct OptV<'a, const NUM: bool>(PhantomData<&'a ()>);
    impl<'de: 'a, 'a, const NUM: bool> Visitor<'de> for OptV<'a, NUM> {
        type Value = Option<Str<'a>>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(if NUM { "a string or a number" } else { "a string" })
        }
        fn visit_none<E: Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            if NUM {
                d.deserialize_any(self)
            } else {
                d.deserialize_str(StrV(PhantomData)).map(Some)
            }
        }
        fn visit_borrowed_str<E: Error>(self, v: &'de str) -> Result<Self::Value, E> {
            Ok(Some(Cow::Borrowed(v)))
        }
        fn visit_str<E: Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(Cow::Owned(v.to_owned())))
        }
        fn visit_string<E: Error>(self, v: String) -> Result<Self::Value, E> {
            Ok(Some(Cow::Owned(v)))
        }
        fn visit_i64<E: Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(Cow::Owned(v.to_string())))
        }
        fn visit_u64<E: Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(Cow::Owned(v.to_string())))
        }
    }

    pub fn opt_str<'de: 'a, 'a, D: Deserializer<'de>>(d: D) -> Result<Option<Str<'a>>, D::Error> {
        d.deserialize_option(OptV::<'a, false>(PhantomData))
    }

    pub fn opt_str_or_number<'de: 'a, 'a, D: Deserializer<'de>>(d: D) -> Result<Option<Str<'a>>, D::Error> {
        d.deserialize_option(OptV::<'a, true>(PhantomData))
    }

    /// A list, with `null` read as empty (SDKs send `null` for absent fields).
    pub fn vec_or_null<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
        Option::<Vec<T>>::deserialize(d).map(Option::unwrap_or_default)
    }

    /// Threads: `null` or an array, at most [`super::MAX_THREADS`] elements read (the rest
    /// skipped, whatever their values).
    pub fn threads<'de: 'a, 'a, D: Deserializer<'de>>(d: D) -> Result<Vec<super::Thread<'a>>, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Vec<super::Thread<'a>>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of threads")
            }
            fn visit_unit<E: Error>(self) -> Result<Self::Value, E> {
                Ok(Vec::new())
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(16));
                while out.len() < super::MAX_THREADS {
                    match seq.next_element::<super::Thread<'a>>()? {
                        Some(t) => out.push(t),
                        None => return Ok(out),
                    }
                }
                // Past the bound: read and ignore the rest.
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(out)
            }
        }
        d.deserialize_any(V(PhantomData))
    }

    /// Visitor methods for the values a lenient reader ignores: scalars read as the default,
    /// arrays and objects are read through and ignored.
    macro_rules! ignore_others {
        () => {
            fn visit_unit<E: Error>(self) -> Result<Self::Value, E> {
                Ok(Default::default())
            }
            fn visit_none<E: Error>(self) -> Result<Self::Value, E> {
                Ok(Default::default())
            }
            fn visit_bool<E: Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Default::default())
            }
            fn visit_i64<E: Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Default::default())
            }
            fn visit_u64<E: Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Default::default())
            }
            fn visit_f64<E: Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Default::default())
            }
        };
    }

    fn ignore_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(())
    }

    fn ignore_map<'de, A: MapAccess<'de>>(mut m: A) -> Result<(), A::Error> {
        while m.next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?.is_some() {}
        Ok(())
    }

    /// A string, or `None` for a value of any other type.
    struct LenientStr<'a>(Option<Str<'a>>);

    impl<'de: 'a, 'a> Deserialize<'de> for LenientStr<'a> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V<'a>(PhantomData<&'a ()>);
            impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
                type Value = Option<Str<'a>>;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("any value")
                }
                ignore_others!();
                fn visit_borrowed_str<E: Error>(self, v: &'de str) -> Result<Self::Value, E> {
                    Ok(Some(Cow::Borrowed(v)))
                }
                fn visit_str<E: Error>(self, v: &str) -> Result<Self::Value, E> {
                    Ok(Some(Cow::Owned(v.to_owned())))
                }
                fn visit_string<E: Error>(self, v: String) -> Result<Self::Value, E> {
                    Ok(Some(Cow::Owned(v)))
                }
                fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                    ignore_seq(seq).map(|()| None)
                }
                fn visit_map<A: MapAccess<'de>>(self, m: A) -> Result<Self::Value, A::Error> {
                    ignore_map(m).map(|()| None)
                }
            }
            d.deserialize_any(V(PhantomData)).map(LenientStr)
        }
    }

    /// A debug image when the value is an object (its first `type`, `code_file`, `debug_id`).
    struct LenientImage<'a>(Option<super::DebugImage<'a>>);

    impl<'de: 'a, 'a> Deserialize<'de> for LenientImage<'a> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V<'a>(PhantomData<&'a ()>);
            impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
                type Value = Option<super::DebugImage<'a>>;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("any value")
                }
                ignore_others!();
                fn visit_str<E: Error>(self, _: &str) -> Result<Self::Value, E> {
                    Ok(None)
                }
                fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                    ignore_seq(seq).map(|()| None)
                }
                fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                    let mut image = super::DebugImage::default();
                    let mut seen = [false; 3];
                    while let Some(BStr(k)) = m.next_key::<BStr<'a>>()? {
                        let (slot, at) = match &*k {
                            "type" => (&mut image.ty, 0),
                            "code_file" => (&mut image.code_file, 1),
                            "debug_id" => (&mut image.debug_id, 2),
                            _ => {
                                m.next_value::<serde::de::IgnoredAny>()?;
                                continue;
                            }
                        };
                        let LenientStr(v) = m.next_value()?;
                        if !seen[at] {
                            (*slot, seen[at]) = (v, true);
                        }
                    }
                    Ok(Some(image))
                }
            }
            d.deserialize_any(V(PhantomData)).map(LenientImage)
        }
    }

    /// Debug images: of an array's first [`super::MAX_DEBUG_IMAGES`] elements, the objects;
    /// anything else reads as none.
    struct LenientImages<'a>(Vec<super::DebugImage<'a>>);

    impl<'de: 'a, 'a> Deserialize<'de> for LenientImages<'a> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V<'a>(PhantomData<&'a ()>);
            impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
                type Value = Vec<super::DebugImage<'a>>;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("any value")
                }
                ignore_others!();
                fn visit_str<E: Error>(self, _: &str) -> Result<Self::Value, E> {
                    Ok(Vec::new())
                }
                fn visit_map<A: MapAccess<'de>>(self, m: A) -> Result<Self::Value, A::Error> {
                    ignore_map(m).map(|()| Vec::new())
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                    let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(super::MAX_DEBUG_IMAGES));
                    for _ in 0..super::MAX_DEBUG_IMAGES {
                        match seq.next_element::<LenientImage<'a>>()? {
                            Some(LenientImage(Some(i))) => out.push(i),
                            Some(LenientImage(None)) => {}
                            None => return Ok(out),
                        }
                    }
                    // Past the bound: read and ignore the rest.
                    ignore_seq(seq).map(|()| out)
                }
            }
            d.deserialize_any(V(PhantomData)).map(LenientImages)
        }
    }

    /// `debug_meta`, leniently: an object gives its (first) `images`; anything else reads as
    /// absent.
    pub fn debug_meta<'de: 'a, 'a, D: Deserializer<'de>>(d: D) -> Result<Option<super::DebugMeta<'a>>, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Option<super::DebugMeta<'a>>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any value")
            }
            ignore_others!();
            fn visit_str<E: Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                ignore_seq(seq).map(|()| None)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                let mut images = None;
                while let Some(BStr(k)) = m.next_key::<BStr<'a>>()? {
                    if k == "images" && images.is_none() {
                        images = Some(m.next_value::<LenientImages<'a>>()?.0);
                    } else {
                        m.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
                Ok(Some(super::DebugMeta { images: images.unwrap_or_default() }))
            }
        }
        d.deserialize_any(V(PhantomData))
    }

    pub fn vec_str<'de: 'a, 'a, D: Deserializer<'de>>(d: D) -> Result<Vec<Str<'a>>, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Vec<Str<'a>>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of strings")
            }
            fn visit_unit<E: Error>(self) -> Result<Self::Value, E> {
                Ok(Vec::new())
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(16));
                while let Some(BStr(s)) = seq.next_element::<BStr<'a>>()? {
                    out.push(s);
                }
                Ok(out)
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}
