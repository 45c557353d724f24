//! Import of the Prometheus text exposition format (`name{label="v"} value [timestamp_ms]`).
//!
//! [`Importer`] turns lines into write batches. It caches each series' text as it appears in the
//! input, so a known series costs a hash lookup instead of a parse: that keeps a bulk import
//! bound by the store, not by the parser.

use crate::error::Result;
use crate::fasthash::FastMap;
use crate::series::SeriesKey;
use crate::{SeriesId, Store, WriteBatch};

/// One parsed line of the exposition format.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Line<'a> {
    /// A comment, a `# TYPE`/`# HELP` line, or a blank line.
    Skip,
    Sample {
        /// The series exactly as written (`name` or `name{...}`), not yet validated.
        series: &'a str,
        value: f64,
        timestamp_ms: Option<i64>,
    },
}

/// Splits a line into series text, value and optional timestamp. The series text is validated
/// later by [`SeriesKey::parse`].
pub fn parse_line(line: &str) -> std::result::Result<Line<'_>, String> {
    let line = line.trim_end_matches(['\r', '\n']);
    let trimmed = line.trim_start();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return Ok(Line::Skip);
    }
    let series_end = series_end(trimmed)?;
    let (series, rest) = trimmed.split_at(series_end);
    let mut fields = rest.split_ascii_whitespace();
    let value_text = fields
        .next()
        .ok_or_else(|| format!("missing value after {series:?}"))?;
    let value = parse_value(value_text)?;
    let timestamp_ms = match fields.next() {
        Some(text) => Some(
            text.parse::<i64>()
                .map_err(|_| format!("timestamp {text:?} is not an integer of milliseconds"))?,
        ),
        None => None,
    };
    if let Some(extra) = fields.next() {
        return Err(format!("unexpected {extra:?} after the timestamp"));
    }
    Ok(Line::Sample {
        series,
        value,
        timestamp_ms,
    })
}

/// The samples of `text` that carry their own timestamp, as (series, timestamp ms, value), in
/// the text's order. Comments, malformed lines and samples without a timestamp are passed over:
/// this reads recorded data, where [`Importer`] is the way to take input and report each line.
pub fn timestamped_samples(text: &str) -> impl Iterator<Item = (&str, i64, f64)> {
    text.lines().filter_map(|line| match parse_line(line) {
        Ok(Line::Sample {
            series,
            value,
            timestamp_ms: Some(ts),
        }) => Some((series, ts, value)),
        _ => None,
    })
}

/// The byte offset where the series part ends: after the closing `}` of the labels (skipping
/// quoted values, which may hold braces and spaces), or at the first whitespace.
fn series_end(line: &str) -> std::result::Result<usize, String> {
    let bytes = line.as_bytes();
    let mut i = 0;
    while i < bytes.len() && !bytes[i].is_ascii_whitespace() && bytes[i] != b'{' {
        i += 1;
    }
    if i == bytes.len() || bytes[i] != b'{' {
        return Ok(i);
    }
    let mut in_quotes = false;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if in_quotes => i += 1,
            b'"' => in_quotes = !in_quotes,
            b'}' if !in_quotes => return Ok(i + 1),
            _ => {}
        }
        i += 1;
    }
    Err("labels are not closed with }".into())
}

fn parse_value(text: &str) -> std::result::Result<f64, String> {
    // Rust accepts inf/infinity/nan in any case, with a sign; Prometheus writes +Inf, -Inf, NaN.
    text.parse::<f64>()
        .map_err(|_| format!("value {text:?} is not a number"))
}

/// The sample timestamps a door accepts (inclusive, milliseconds since the Unix epoch). A door
/// refuses a sample outside it with [`TimeWindow::check`]'s message rather than storing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeWindow {
    pub earliest_ms: i64,
    pub latest_ms: i64,
}

impl TimeWindow {
    /// Every timestamp.
    pub const ANY: TimeWindow = TimeWindow {
        earliest_ms: i64::MIN,
        latest_ms: i64::MAX,
    };

    /// From `past` before `now_ms` (any age when `None`) to `future` after it.
    pub fn around(
        now_ms: i64,
        past: Option<std::time::Duration>,
        future: std::time::Duration,
    ) -> Self {
        let ms = |d: std::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        TimeWindow {
            earliest_ms: past.map_or(i64::MIN, |p| now_ms.saturating_sub(ms(p))),
            latest_ms: now_ms.saturating_add(ms(future)),
        }
    }

    pub fn contains(&self, ts: i64) -> bool {
        (self.earliest_ms..=self.latest_ms).contains(&ts)
    }

    /// `Err` names the timestamp, the window, and the likely mistake when the timestamp is in
    /// another unit.
    pub fn check(&self, ts: i64) -> std::result::Result<(), String> {
        if self.contains(ts) {
            return Ok(());
        }
        let bound = |ms: i64| match ms {
            i64::MIN => "any time".to_string(),
            i64::MAX => "any time".to_string(),
            ms => format!("{ms} ({})", crate::rfc3339_ms(ms)),
        };
        let unit = [(1_000_000, "nanoseconds"), (1_000, "microseconds")]
            .into_iter()
            .find(|(per_ms, _)| self.contains(ts / per_ms))
            .map(|(_, unit)| unit)
            .or_else(|| {
                ts.checked_mul(1_000)
                    .filter(|t| self.contains(*t))
                    .map(|_| "seconds")
            });
        let hint = unit.map_or(String::new(), |unit| {
            format!("; it looks like {unit}, but timestamps are milliseconds since the epoch")
        });
        Err(format!(
            "timestamp {ts} is outside the accepted window from {} to {}{hint}",
            bound(self.earliest_ms),
            bound(self.latest_ms),
        ))
    }
}

/// A malformed line, reported and skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    pub line_number: u64,
    pub message: String,
}

/// Feeds exposition-format lines into a store in large batches.
pub struct Importer<'s> {
    store: &'s Store,
    ids: FastMap<Box<str>, SeriesId>,
    batch: WriteBatch,
    batch_size: usize,
    now_ms: i64,
    window: TimeWindow,
    pub samples: u64,
}

impl<'s> Importer<'s> {
    /// `now_ms` is the timestamp given to samples that have none.
    pub fn new(store: &'s Store, now_ms: i64) -> Self {
        let batch_size = 64 * 1024;
        Importer {
            store,
            ids: FastMap::default(),
            batch: WriteBatch::with_capacity(batch_size),
            batch_size,
            now_ms,
            window: TimeWindow::ANY,
            samples: 0,
        }
    }

    /// Refuses samples with timestamps outside `window`, as malformed lines.
    pub fn with_window(mut self, window: TimeWindow) -> Self {
        self.window = window;
        self
    }

    /// Imports one line. A malformed line is returned as an error; the import goes on. Store errors (which stop the import) are the outer error.
    pub fn line(
        &mut self,
        line: &str,
        line_number: u64,
    ) -> Result<std::result::Result<(), LineError>> {
        let parsed = match parse_line(line) {
            Ok(Line::Skip) => return Ok(Ok(())),
            Ok(parsed) => parsed,
            Err(message) => {
                return Ok(Err(LineError {
                    line_number,
                    message,
                }))
            }
        };
        let Line::Sample {
            series,
            value,
            timestamp_ms,
        } = parsed
        else {
            return Ok(Ok(()));
        };
        let timestamp_ms = timestamp_ms.unwrap_or(self.now_ms);
        if let Err(message) = self.window.check(timestamp_ms) {
            return Ok(Err(LineError {
                line_number,
                message: format!("{series}: {message}"),
            }));
        }
        let id = match self.ids.get(series) {
            Some(&id) => id,
            None => {
                let key = match SeriesKey::parse(series) {
                    Ok(key) => key,
                    Err(e) => {
                        return Ok(Err(LineError {
                            line_number,
                            message: e.to_string(),
                        }))
                    }
                };
                let id = self.store.series_id(&key)?;
                self.ids.insert(series.into(), id);
                id
            }
        };
        self.batch.sample(id, timestamp_ms, value);
        self.samples += 1;
        if self.batch.len() >= self.batch_size {
            self.store.write(std::mem::replace(
                &mut self.batch,
                WriteBatch::with_capacity(self.batch_size),
            ))?;
        }
        Ok(Ok(()))
    }

    /// Writes what is left and seals it into the store.
    pub fn finish(mut self) -> Result<()> {
        if !self.batch.is_empty() {
            self.store.write(std::mem::take(&mut self.batch))?;
        }
        self.store.seal()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_exposition_format() {
        let check = |line: &str, series: &str, value: f64, ts: Option<i64>| {
            assert_eq!(
                parse_line(line),
                Ok(Line::Sample {
                    series,
                    value,
                    timestamp_ms: ts
                }),
                "{line}"
            );
        };
        check("up 1", "up", 1.0, None);
        check(
            "node_load1 0.77 1795257761024\n",
            "node_load1",
            0.77,
            Some(1795257761024),
        );
        check(
            r#"m{a="x y}",b="\"q\""} -Inf 5"#,
            r#"m{a="x y}",b="\"q\""}"#,
            f64::NEG_INFINITY,
            Some(5),
        );
        check("m{} +Inf", "m{}", f64::INFINITY, None);
        assert!(matches!(parse_line("m NaN"), Ok(Line::Sample { value, .. }) if value.is_nan()));
        assert_eq!(parse_line("# TYPE up gauge"), Ok(Line::Skip));
        assert_eq!(parse_line("   "), Ok(Line::Skip));
        for bad in ["m", "m abc", "m 1 2.5", "m 1 2 3", r#"m{a="x" 1"#] {
            assert!(parse_line(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn time_windows_name_the_sample_the_window_and_the_likely_unit() {
        let now = 1_796_456_600_000;
        let window = TimeWindow::around(now, None, std::time::Duration::from_secs(600));
        assert!(window.check(now).is_ok());
        assert!(window.check(i64::MIN).is_ok(), "any age");
        let nanos = window.check(now * 1_000_000).unwrap_err();
        assert!(nanos.contains("1796456600000000000"), "{nanos}");
        assert!(nanos.contains("2026-12-05T"), "{nanos}");
        assert!(nanos.contains("like nanoseconds"), "{nanos}");
        let max = window.check(i64::MAX).unwrap_err();
        assert!(!max.contains("like"), "{max}");
        let recent = TimeWindow::around(
            now,
            Some(std::time::Duration::from_secs(86_400)),
            std::time::Duration::ZERO,
        );
        let seconds = recent.check(now / 1_000).unwrap_err();
        assert!(seconds.contains("like seconds"), "{seconds}");
        assert!(seconds.contains("from 1796370200000"), "{seconds}");
    }
}
