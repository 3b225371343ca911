//! Timestamps: RFC 3339 strings or Unix seconds, as milliseconds since the Unix epoch; and the
//! one clock every crate reads "now" from.

use serde::de::{self, Deserializer, Visitor};
use serde::Serializer;
use std::fmt;

/// Milliseconds since the Unix epoch (UTC).
pub type Millis = i64;

/// Now, in milliseconds since the Unix epoch (the system clock; 0 when it reads before 1970).
/// Every "now" of tracefold comes from here: the producer's receive time, tools and tests.
pub fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| Millis::try_from(d.as_millis()).unwrap_or(Millis::MAX))
}

/// Now, in whole seconds since the Unix epoch.
pub fn now_secs() -> i64 {
    now_ms().div_euclid(1000)
}

/// The first millisecond [`format_rfc3339`] writes with a four-digit year (0000-01-01).
pub const RFC3339_MIN: Millis = -62_167_219_200_000;
/// The last millisecond [`format_rfc3339`] writes with a four-digit year (9999-12-31T23:59:59.999Z).
pub const RFC3339_MAX: Millis = 253_402_300_799_999;

/// Parses an RFC 3339 / ISO 8601 timestamp (`2026-11-26T05:39:00Z`, `...00.123+02:00`,
/// or without a zone, read as UTC) into milliseconds since the Unix epoch.
pub fn parse_rfc3339(s: &str) -> Option<Millis> {
    let b = s.as_bytes();
    if b.len() < 19 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let mut v = 0i64;
        for &c in &b[r] {
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + i64::from(c - b'0');
        }
        Some(v)
    };
    if b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut i = 19;
    let mut millis = 0i64;
    if i < b.len() && b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 3 {
                millis = millis * 10 + i64::from(b[i] - b'0');
            }
            i += 1;
        }
        let digits = i - start;
        if digits == 0 {
            return None;
        }
        for _ in digits..3 {
            millis *= 10;
        }
    }
    let offset_secs = match b.get(i) {
        None => 0,
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(&sign @ (b'+' | b'-')) if b.len() == i + 6 && b[i + 3] == b':' => {
            let off = num(i + 1..i + 3)? * 3600 + num(i + 4..i + 6)? * 60;
            if sign == b'+' {
                off
            } else {
                -off
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    Some(secs * 1000 + millis)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Formats milliseconds since the epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn format_rfc3339(ms: Millis) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Inverse of [`days_from_civil`].
pub fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Serializes a timestamp so that [`deserialize_opt_millis`] reads back the same milliseconds:
/// an RFC 3339 string with milliseconds (`2026-11-26T05:39:00.250Z`) for every instant of the
/// years 0000 to 9999; outside them (where validation uses the receive time anyway) Unix
/// seconds, an integer when whole, else the fractional seconds that read back as the same
/// milliseconds (there is one for every timestamp the parsers produce).
pub(crate) fn serialize_opt_millis<S: Serializer>(ms: &Option<Millis>, s: S) -> Result<S::Ok, S::Error> {
    match *ms {
        None => s.serialize_none(),
        Some(ms) if (RFC3339_MIN..=RFC3339_MAX).contains(&ms) => s.serialize_str(&format_rfc3339(ms)),
        Some(ms) if ms % 1000 == 0 => s.serialize_i64(ms / 1000),
        Some(ms) => s.serialize_f64(secs_reading_back(ms)),
    }
}

/// Milliseconds of fractional Unix seconds, as the parsers read them.
pub(crate) fn millis_of_secs(v: f64) -> Option<Millis> {
    (v.is_finite() && v.abs() < 1e14).then(|| (v * 1000.0).round() as i64)
}

/// Seconds that [`millis_of_secs`] reads as `ms`: `ms / 1000` or one of its nearest
/// neighbours (the seconds a parser read `ms` from are among them), else `ms / 1000`.
fn secs_reading_back(ms: Millis) -> f64 {
    let v = ms as f64 / 1000.0;
    let bits = v.to_bits();
    (0..=8u64)
        .flat_map(|d| [bits.wrapping_add(d), bits.wrapping_sub(d)])
        .map(f64::from_bits)
        .find(|c| millis_of_secs(*c) == Some(ms))
        .unwrap_or(v)
}

/// Deserializes a timestamp given as Unix seconds (integer or float) or an RFC 3339 string.
pub(crate) fn deserialize_opt_millis<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Millis>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<Millis>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("Unix seconds or an RFC 3339 timestamp string")
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
            d.deserialize_any(V)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            i64::try_from(v)
                .ok()
                .and_then(|s| s.checked_mul(1000))
                .map(Some)
                .ok_or_else(|| E::custom("timestamp out of range"))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            v.checked_mul(1000).map(Some).ok_or_else(|| E::custom("timestamp out of range"))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            millis_of_secs(v).map(Some).ok_or_else(|| E::custom("timestamp out of range"))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            parse_rfc3339(v).map(Some).ok_or_else(|| E::custom(format!("invalid RFC 3339 timestamp {v:?}")))
        }
    }
    d.deserialize_option(V)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2026-11-26T05:39:00Z"), Some(1_795_671_540_000));
        assert_eq!(parse_rfc3339("2026-11-26T05:39:00.5Z"), Some(1_795_671_540_500));
        assert_eq!(parse_rfc3339("2026-11-26T07:39:00.123456+02:00"), Some(1_795_671_540_123));
        assert_eq!(parse_rfc3339("2026-11-26 05:39:00"), Some(1_795_671_540_000));
    }

    #[test]
    fn rejects_garbage() {
        for s in [
            "",
            "2026-11-26",
            "2026-13-01T00:00:00Z",
            "2026-11-26T05:39:00Q",
            "2026-11-26T05:39:00.Z",
            "x026-11-26T05:39:00Z",
        ] {
            assert_eq!(parse_rfc3339(s), None, "{s}");
        }
    }

    #[test]
    fn format_round_trips() {
        for ms in [0, 1_795_671_540_123, 951_782_400_000, -86_400_000, RFC3339_MIN, RFC3339_MAX] {
            assert_eq!(parse_rfc3339(&format_rfc3339(ms)), Some(ms));
        }
        assert_eq!(format_rfc3339(RFC3339_MIN), "0000-01-01T00:00:00.000Z");
        assert_eq!(format_rfc3339(RFC3339_MAX), "9999-12-31T23:59:59.999Z");
    }

    /// Every timestamp a parser reads, written and read again, is the same milliseconds.
    fn round_trip(ms: Millis) -> Option<Millis> {
        #[derive(serde::Serialize, serde::Deserialize)]
        struct T {
            #[serde(serialize_with = "serialize_opt_millis", deserialize_with = "deserialize_opt_millis")]
            t: Option<Millis>,
        }
        let text = serde_json::to_string(&T { t: Some(ms) }).unwrap();
        serde_json::from_str::<T>(&text).unwrap().t
    }

    #[test]
    fn written_timestamps_read_back() {
        for ms in [0, 1_795_671_540_123, -1, RFC3339_MIN, RFC3339_MAX, RFC3339_MAX + 1000, RFC3339_MIN - 1000] {
            assert_eq!(round_trip(ms), Some(ms), "{ms}");
        }
    }

    proptest::proptest! {
        /// Fractional seconds far outside the RFC 3339 years, as a client may send them.
        #[test]
        fn fractional_seconds_read_back(secs in -9.99e13f64..9.99e13) {
            let ms = millis_of_secs(secs).unwrap();
            proptest::prop_assert_eq!(round_trip(ms), Some(ms));
        }

        #[test]
        fn whole_seconds_read_back(secs in (i64::MIN / 1000)..=(i64::MAX / 1000)) {
            proptest::prop_assert_eq!(round_trip(secs * 1000), Some(secs * 1000));
        }

        #[test]
        fn rfc3339_years_read_back(ms in RFC3339_MIN..=RFC3339_MAX) {
            proptest::prop_assert_eq!(round_trip(ms), Some(ms));
        }
    }

    #[test]
    fn the_clock_reads_after_2020() {
        assert!(now_ms() > 1_577_836_800_000);
        assert!(now_secs() > 1_577_836_800);
    }
}
