//! Application metrics in the Prometheus text format, scraped from local endpoints or pushed to
//! the agent's import endpoint. Both go through [`parse_exposition`], which keeps the label
//! `instance` free for the hub (an application's own `instance` becomes `exported_instance`,
//! as Prometheus does), keeps the agent's own series apart from an application's series of the
//! same name (see [`SOURCE_LABEL`]), and counts bad lines instead of failing the whole payload.

use std::collections::BTreeMap;

use std::time::Duration;

use outpost_storage::text::{parse_line, Line, TimeWindow};
use outpost_storage::SeriesKey;

/// How far ahead of the agent's clock an application's timestamp may be: more is a unit mistake
/// (seconds, microseconds, nanoseconds) or a wrong clock, and is refused.
pub const MAX_FUTURE: Duration = Duration::from_secs(600);

/// The timestamps that a push or a scrape may carry at `now_ms`: no older than the store keeps
/// raw data, no further ahead than [`MAX_FUTURE`].
pub fn accepted_window(now_ms: i64) -> TimeWindow {
    TimeWindow::around(
        now_ms,
        outpost_storage::Retention::default().raw,
        MAX_FUTURE,
    )
}

/// The label that an application's series gets when its name is one the agent itself emits
/// (`docs/metrics.md`): most applications export `process_cpu_seconds_total`, and a scraped
/// node_exporter exports every `node_*` name, and without the label their samples would land in
/// the agent's own series between the agent's samples. Its value names the source
/// (`scrape:NAME`, `import:NAME`, `textfile:FILE`).
pub const SOURCE_LABEL: &str = "outpost_source";

/// What a payload held.
#[derive(Debug, Default)]
pub struct Parsed {
    /// Series, value, and the timestamp the line carried, if any.
    pub samples: Vec<(SeriesKey, f64, Option<i64>)>,
    /// The first few bad lines, with their line numbers, for the error message.
    pub errors: Vec<String>,
    pub bad_lines: usize,
}

/// Parses exposition text from `source`, adding `extra_labels` to every series. A line whose
/// timestamp lies outside `window` is a bad line.
pub fn parse_exposition(
    text: &str,
    source: &str,
    extra_labels: &BTreeMap<String, String>,
    window: TimeWindow,
) -> Parsed {
    let mut parsed = Parsed::default();
    for (number, line) in text.lines().enumerate() {
        let result = parse_line(line).and_then(|line| match line {
            Line::Skip => Ok(None),
            Line::Sample {
                series,
                value,
                timestamp_ms,
            } => {
                let key = SeriesKey::parse(series).map_err(|e| e.to_string())?;
                let key = relabel(key, source, extra_labels).map_err(|e| e.to_string())?;
                if let Some(ts) = timestamp_ms {
                    window.check(ts).map_err(|e| format!("{series}: {e}"))?;
                }
                Ok(Some((key, value, timestamp_ms)))
            }
        });
        match result {
            Ok(Some(sample)) => parsed.samples.push(sample),
            Ok(None) => {}
            Err(message) => {
                parsed.bad_lines += 1;
                if parsed.errors.len() < 5 {
                    parsed
                        .errors
                        .push(format!("line {}: {message}", number + 1));
                }
            }
        }
    }
    parsed
}

fn relabel(
    key: SeriesKey,
    source: &str,
    extra: &BTreeMap<String, String>,
) -> outpost_storage::Result<SeriesKey> {
    let agents_own = crate::catalogue::lookup(key.name()).is_some();
    if extra.is_empty() && !agents_own && key.label("instance").is_empty() {
        return Ok(key);
    }
    let mut labels: BTreeMap<String, String> = key
        .labels()
        .map(|(l, v)| {
            let l = match l {
                "instance" => "exported_instance",
                SOURCE_LABEL => "exported_outpost_source",
                l => l,
            };
            (l.to_string(), v.to_string())
        })
        .collect();
    for (label, value) in extra {
        labels.insert(label.clone(), value.clone());
    }
    if agents_own {
        labels.insert(SOURCE_LABEL.to_string(), source.to_string());
    }
    SeriesKey::new(key.name(), labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys_of(parsed: &Parsed) -> Vec<String> {
        parsed
            .samples
            .iter()
            .map(|(k, _, _)| k.to_string())
            .collect()
    }

    #[test]
    fn relabels_and_reports_bad_lines() {
        let text = "# TYPE fps gauge\nfps{stream=\"0\",instance=\"x\"} 29.5\nbad line here\nqueue 3 1700000000000\n";
        let extra = BTreeMap::from([("app".to_string(), "det".to_string())]);
        let parsed = parse_exposition(text, "scrape:det", &extra, TimeWindow::ANY);
        let keys = keys_of(&parsed);
        assert_eq!(
            keys,
            [
                r#"fps{app="det",exported_instance="x",stream="0"}"#,
                r#"queue{app="det"}"#
            ]
        );
        assert_eq!(parsed.samples[1].2, Some(1_700_000_000_000));
        assert_eq!(parsed.bad_lines, 1);
        assert!(
            parsed.errors[0].starts_with("line 3:"),
            "{:?}",
            parsed.errors
        );
    }

    #[test]
    fn an_applications_series_named_as_the_agents_own_are_kept_apart() {
        let text = "process_cpu_seconds_total 12.5\n\
                    node_memory_MemFree_bytes{outpost_source=\"mine\"} 1\n\
                    fps 30\n";
        let parsed = parse_exposition(text, "import:det", &BTreeMap::new(), TimeWindow::ANY);
        let keys = keys_of(&parsed);
        assert_eq!(
            keys,
            [
                r#"process_cpu_seconds_total{outpost_source="import:det"}"#,
                r#"node_memory_MemFree_bytes{exported_outpost_source="mine",outpost_source="import:det"}"#,
                "fps",
            ]
        );
        assert_eq!(parsed.bad_lines, 0);
    }
}
