//! Parsing of the times and durations that commands take.

use anyhow::{Context, Result};

/// A point in time as milliseconds since the Unix epoch: RFC 3339 (`2026-11-21T10:00:00Z`),
/// an integer of milliseconds, or `now`.
pub fn parse_time(text: &str, now_ms: i64) -> Result<i64> {
    let text = text.trim();
    if text == "now" {
        return Ok(now_ms);
    }
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    let parsed: jiff::Timestamp = text.parse().with_context(|| {
        format!("{text:?} is not a time: use RFC 3339 (2026-11-21T10:00:00Z), milliseconds since the epoch, or now")
    })?;
    Ok(parsed.as_millisecond())
}

/// A duration in milliseconds: `500ms`, `30s`, `5m`, `1h`, `7d`, or combinations (`1h30m`).
pub fn parse_duration_ms(text: &str) -> Result<i64> {
    outpost_storage::parse_duration_ms(text).map_err(|e| anyhow::anyhow!(e.to_string()))
}

/// Milliseconds since the Unix epoch, now. The binary owns the wall clock; the libraries are
/// given time.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The system's wall clock, handed to stores as the trusted time that age retention is
/// measured against.
#[derive(Debug, Default)]
pub struct SystemWallClock;

impl outpost_storage::WallClock for SystemWallClock {
    fn unix_ms(&self) -> i64 {
        now_ms()
    }
}

/// Store options with the system's wall clock for retention, the rest default.
pub fn store_options() -> outpost_storage::Options {
    outpost_storage::Options {
        wall_clock: Some(std::sync::Arc::new(SystemWallClock)),
        ..outpost_storage::Options::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(
            parse_time("2026-11-21T00:00:00Z", 0).unwrap(),
            1_795_219_200_000
        );
        assert_eq!(
            parse_time("2026-11-21T01:00:00+01:00", 0).unwrap(),
            1_795_219_200_000
        );
        assert_eq!(parse_time("1795257761024", 0).unwrap(), 1_795_257_761_024);
        assert_eq!(parse_time("now", 42).unwrap(), 42);
        assert!(parse_time("yesterday", 0).is_err());
        // Milliseconds survive, and what is printed parses back.
        let ms = parse_time("2026-11-21T00:00:00.250Z", 0).unwrap();
        assert_eq!(ms, 1_795_219_200_250);
        let printed = crate::alert::engine::rfc3339(ms);
        assert_eq!(printed, "2026-11-21T00:00:00.25Z");
        assert_eq!(parse_time(&printed, 0).unwrap(), ms);
        assert_eq!(
            crate::alert::engine::rfc3339(1_795_219_200_000),
            "2026-11-21T00:00:00Z"
        );
        assert_eq!(
            outpost_storage::rfc3339_ms(1_795_219_200_000),
            "2026-11-21T00:00:00.000Z"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("500ms").unwrap(), 500);
        assert_eq!(parse_duration_ms("5m").unwrap(), 300_000);
        assert_eq!(parse_duration_ms("1h30m").unwrap(), 5_400_000);
        assert_eq!(parse_duration_ms("7d").unwrap(), 604_800_000);
        for bad in ["", "5", "m", "5x", "-5m"] {
            assert!(parse_duration_ms(bad).is_err(), "{bad:?} accepted");
        }
    }
}
