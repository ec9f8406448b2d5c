//! The wall clock, in the two forms Patchbay stores: Unix seconds (database rows, agent state,
//! deadlines) and RFC 3339 UTC text with whole seconds (manifests, channel documents, reports).
//!
//! Every crate reads the time here, so a timestamp one side writes is one the other parses.

use jiff::Timestamp;

/// Seconds since the Unix epoch, now.
pub fn unix_seconds() -> i64 {
    Timestamp::now().as_second()
}

/// Seconds since the Unix epoch for state that stores them unsigned (0 before 1970, which a
/// host's clock can report after a dead RTC battery).
pub fn unix_seconds_unsigned() -> u64 {
    u64::try_from(unix_seconds()).unwrap_or(0)
}

/// Now as RFC 3339 UTC with whole seconds, e.g. `2026-11-30T12:00:00Z`.
pub fn now_rfc3339() -> String {
    rfc3339(unix_seconds())
}

/// `secs` since the epoch as RFC 3339 UTC with whole seconds; out-of-range values (near
/// year 9999 and beyond) clamp to the nearest representable instant.
pub fn rfc3339(secs: i64) -> String {
    let clamped = secs.clamp(Timestamp::MIN.as_second(), Timestamp::MAX.as_second());
    let instant = Timestamp::from_second(clamped).unwrap_or(Timestamp::UNIX_EPOCH);
    instant.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Parses RFC 3339 text (any offset, optional fraction) back into Unix seconds; `None` when it
/// is not a timestamp.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    text.parse::<Timestamp>().ok().map(|t| t.as_second())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_written_in_utc_with_whole_seconds() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_000_000), "2026-11-18T11:06:40Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(-86_400), "1969-12-31T00:00:00Z");
        let latest = rfc3339(i64::MAX);
        assert!(latest.starts_with("9999-12-"), "{latest}");
    }

    #[test]
    fn what_is_written_parses_back() {
        for secs in [0, 951_782_400, 1_795_000_000] {
            assert_eq!(parse_rfc3339(&rfc3339(secs)), Some(secs));
        }
        assert_eq!(
            parse_rfc3339("2026-11-18T12:06:40+01:00"),
            Some(1_795_000_000)
        );
        assert_eq!(parse_rfc3339("2026-11-18T11:06:40.5Z"), Some(1_795_000_000));
        assert_eq!(parse_rfc3339("yesterday"), None);
        assert_eq!(parse_rfc3339("2026-13-01T00:00:00Z"), None);
    }

    #[test]
    fn now_is_after_this_code_was_written() {
        let before = unix_seconds();
        let written = now_rfc3339();
        let after = unix_seconds();
        assert!(before > 1_795_000_000, "clock reads {before}");
        let parsed = parse_rfc3339(&written);
        assert!(
            parsed.is_some_and(|s| (before..=after).contains(&s)),
            "{written} ({parsed:?}) is not between {before} and {after}"
        );
    }
}
