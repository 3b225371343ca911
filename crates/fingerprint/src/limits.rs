//! Bounds on the work and the output of fingerprinting. Fingerprinting is total: any event,
//! validated or not, is fingerprinted in time linear in its size, and what goes into the hash,
//! the explanation, the issue title and the per-thread frame cache is bounded by these
//! constants. Events within the bounds (every ordinary event) group exactly as without them.

/// Most bytes of a message (or exception value) that [`crate::normalize::message`] looks at:
/// the first two non-empty lines are taken from this prefix, cut on a character boundary.
/// The rest is never scanned.
pub const MAX_MESSAGE_INPUT: usize = 4096;

/// Longest parameterized message kept, in bytes (cut on a character boundary).
pub const MAX_MESSAGE_LEN: usize = 512;

/// Most exceptions of a chain considered: the last ones (nearest the raised exception).
/// Validation already refuses longer chains (`tracefold_model::validate::MAX_EXCEPTIONS`);
/// this bound holds for unvalidated events too. Older exceptions do not contribute.
pub const MAX_EXCEPTIONS: usize = 32;

/// Most frames of one exception considered: the last ones (nearest the crash). Older frames
/// do not contribute and are not matched by rules (the contributing frames are further capped
/// by [`crate::GroupingConfig::max_frames`]).
pub const MAX_FRAMES_PER_EXCEPTION: usize = 256;

/// Most entries of a client (or rule) fingerprint that are hashed; later ones are ignored.
pub const MAX_FINGERPRINT_ENTRIES: usize = 32;

/// Longest client (or rule) fingerprint entry hashed, in bytes (cut on a character boundary).
pub const MAX_FINGERPRINT_ENTRY_LEN: usize = 256;

/// Longest component from an event hashed, in bytes: the exception type and the normalized
/// module, file name and function of a frame (cut on a character boundary, after
/// normalization, so that generated suffixes are still stripped from long names).
pub const MAX_COMPONENT_LEN: usize = 256;

/// Longest raw value of a dropped component recorded in an explanation, in bytes.
pub const MAX_EXPLAIN_VALUE_LEN: usize = 1024;

/// Longest issue title built by [`crate::describe`], in bytes.
pub const MAX_TITLE_LEN: usize = 200;

/// Longest issue culprit built by [`crate::describe`], in bytes.
pub const MAX_CULPRIT_LEN: usize = 200;

/// Longest exception type kept by [`crate::describe`], in bytes.
pub const MAX_EXC_TYPE_LEN: usize = 200;

/// Distinct frames and whole stacks (`FrameCache::stack_key`) the per-thread frame cache
/// keeps together. When an exception's frames might not
/// fit, the cache starts over before that exception (never while it is being fingerprinted).
pub const MAX_CACHE_ENTRIES: usize = 1 << 16;

/// Bytes of normalized names and hashed components the per-thread frame cache keeps (same
/// policy as [`MAX_CACHE_ENTRIES`]; a frame takes at most `2 * MAX_COMPONENT_LEN` of names and
/// `2 * (13 + MAX_COMPONENT_LEN)` of components; a remembered stack's bytes count too, and
/// a stack is remembered only when its bytes fit).
pub const MAX_CACHE_ARENA_BYTES: usize = 8 << 20;

pub use tracefold_model::text::{prefix, push_bounded, truncate};
