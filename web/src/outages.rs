//! Probe outages and availability over a range, from the `probe_up` and `probe_success` series
//! the agents send: each outage with its start, end, duration, severity and an operator's note,
//! and each probe's availability, the "service availability" view of uptime monitors.
//!
//! Both series are read in buckets of `step` (the minimum of each, so one failed round marks its
//! bucket): an outage (`critical`) is a run of buckets where `probe_up` was 0, a degradation
//! (`warning`) a run where rounds failed (`probe_success` 0) without an outage. Buckets without
//! data (the device unheard) count neither way, and do not end an outage: it ends at the first
//! bucket seen up again.

use std::collections::BTreeMap;

use outpost_storage::{Aggregation, SeriesKey, SeriesPoints};
use serde::{Deserialize, Serialize};

use crate::samples::Samples;
use crate::WebError;

/// An operator's note on one outage: of a probe, or of the device itself (`probe` empty).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutageNote {
    pub device: String,
    pub probe: String,
    /// The outage's start as the operator saw it: a bucket start, so the real start is within
    /// `step_ms` after it.
    pub start_ms: i64,
    #[serde(default)]
    pub step_ms: i64,
    pub note: String,
    #[serde(default)]
    pub by: String,
    #[serde(default)]
    pub at_ms: i64,
}

/// One outage or degradation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outage {
    pub start_ms: i64,
    /// `None` while it goes on.
    pub end_ms: Option<i64>,
    pub duration_seconds: f64,
    /// `critical` for an outage, `warning` for failed rounds short of one.
    pub severity: &'static str,
    pub note: Option<OutageNote>,
}

/// One probe of one device over the range.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProbeReport {
    pub device: String,
    pub probe: String,
    pub kind: String,
    /// Up time over the time seen, in percent; `None` when nothing was seen.
    pub availability: Option<f64>,
    pub up_seconds: f64,
    pub down_seconds: f64,
    pub outages: Vec<Outage>,
}

/// The bucket width for a range: 10 s, or wider so that a range has at most 10,000 buckets.
pub fn step_for(start: i64, end: i64) -> i64 {
    (end.saturating_sub(start) / 10_000).max(10_000)
}

/// Runs of buckets whose value is 0 in `points` (bucket starts, sorted): (first bucket start,
/// first up bucket start after it, if any).
fn runs_down(points: &[(i64, f64)]) -> Vec<(i64, Option<i64>)> {
    let mut out = Vec::new();
    let mut open: Option<i64> = None;
    for &(t, v) in points {
        match (open, v == 0.0) {
            (None, true) => open = Some(t),
            (Some(start), false) => {
                out.push((start, Some(t)));
                open = None;
            }
            _ => {}
        }
    }
    if let Some(start) = open {
        out.push((start, None));
    }
    out
}

fn key_of(series: &SeriesKey) -> (String, String) {
    (
        series.label("instance").to_string(),
        series.label("probe").to_string(),
    )
}

/// The newest note on the outage of `probe` (empty: the device's own) from `start_ms` to
/// `end_ms` (`None`: ongoing). A note belongs to an outage whose time it overlaps: it was made
/// at one resolution and is read at any other, where the outage's buckets start elsewhere.
pub fn note_for(
    notes: &[OutageNote],
    (device, probe): (&str, &str),
    (start_ms, end_ms): (i64, Option<i64>),
) -> Option<OutageNote> {
    notes
        .iter()
        .filter(|n| n.device == device && n.probe == probe)
        .filter(|n| {
            let noted_until = n.start_ms.saturating_add(n.step_ms.max(1));
            noted_until > start_ms && end_ms.is_none_or(|end| n.start_ms < end)
        })
        .max_by_key(|n| n.at_ms)
        .cloned()
}

/// The report of every probe matching `device` and `probe` (empty: any) over `start..end`.
pub async fn report(
    samples: &Samples,
    notes: &[OutageNote],
    (device, probe): (&str, &str),
    (start, end, step): (i64, i64, i64),
) -> Result<Vec<ProbeReport>, WebError> {
    let selector = |name: &str| {
        let mut selector = outpost_storage::Selector::parse(name)
            .map_err(|e| WebError::BadRequest(e.to_string()))?;
        if !device.is_empty() {
            selector = selector.and_equal("instance", device);
        }
        if !probe.is_empty() {
            selector = selector.and_equal("probe", probe);
        }
        Ok::<_, WebError>(selector)
    };
    let up = samples
        .query_step(&selector("probe_up")?, start, end, step, Aggregation::Min)
        .await?;
    let success = samples
        .query_step(
            &selector("probe_success")?,
            start,
            end,
            step,
            Aggregation::Min,
        )
        .await?;
    let success: BTreeMap<(String, String), SeriesPoints> = success
        .into_iter()
        .map(|s| (key_of(&s.series), s))
        .collect();
    let mut out = Vec::new();
    for series in up {
        let (device, probe) = key_of(&series.series);
        let step_s = step as f64 / 1000.0;
        let down_buckets = series.points.iter().filter(|p| p.1 == 0.0).count();
        let up_buckets = series.points.len() - down_buckets;
        let seen = series.points.len();
        let outage = |(start_ms, end_ms): (i64, Option<i64>), severity| Outage {
            start_ms,
            end_ms,
            duration_seconds: (end_ms.unwrap_or(end) - start_ms).max(0) as f64 / 1000.0,
            severity,
            note: note_for(notes, (&device, &probe), (start_ms, end_ms)),
        };
        let critical = runs_down(&series.points);
        let mut outages: Vec<Outage> = critical.iter().map(|&r| outage(r, "critical")).collect();
        // Failed rounds outside every outage: degradations.
        if let Some(rounds) = success.get(&(device.clone(), probe.clone())) {
            let inside = |t: i64| {
                critical
                    .iter()
                    .any(|&(s, e)| t >= s && e.is_none_or(|e| t < e))
            };
            let outside: Vec<(i64, f64)> = rounds
                .points
                .iter()
                .map(|&(t, v)| (t, if inside(t) { 1.0 } else { v }))
                .collect();
            outages.extend(
                runs_down(&outside)
                    .into_iter()
                    .map(|r| outage(r, "warning")),
            );
        }
        outages.sort_by_key(|o| o.start_ms);
        out.push(ProbeReport {
            kind: series.series.label("kind").to_string(),
            availability: (seen > 0).then(|| 100.0 * up_buckets as f64 / seen as f64),
            up_seconds: up_buckets as f64 * step_s,
            down_seconds: down_buckets as f64 * step_s,
            outages,
            device,
            probe,
        });
    }
    out.sort_by(|a, b| (&a.device, &a.probe).cmp(&(&b.device, &b.probe)));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(probe: &str, (start_ms, step_ms): (i64, i64), at_ms: i64, text: &str) -> OutageNote {
        OutageNote {
            device: "d".into(),
            probe: probe.into(),
            start_ms,
            step_ms,
            note: text.into(),
            by: "admin".into(),
            at_ms,
        }
    }

    /// A note made on a day's view (10 s buckets) is found on a month's (5 min buckets), and the
    /// other way round, though the outage starts at another bucket in each.
    #[test]
    fn a_note_follows_its_outage_across_resolutions() {
        let day_view = [note("", (1_000_130_000, 10_000), 1, "switch replaced")];
        // The month's view: the outage from the 5 minute bucket that holds 1_000_130_000.
        let found = note_for(&day_view, ("d", ""), (1_000_020_000, Some(1_000_320_000)));
        assert_eq!(found.map(|n| n.note).as_deref(), Some("switch replaced"));
        let month_view = [note("", (1_000_020_000, 300_000), 1, "power cut")];
        let found = note_for(&month_view, ("d", ""), (1_000_130_000, Some(1_000_200_000)));
        assert_eq!(found.map(|n| n.note).as_deref(), Some("power cut"));
        // Not another outage of the device, nor a probe's, nor before or after.
        for (probe, range) in [
            ("", (1_000_400_000, Some(1_000_500_000))),
            ("", (900_000_000, Some(1_000_000_000))),
            ("http", (1_000_020_000, None)),
        ] {
            assert_eq!(note_for(&day_view, ("d", probe), range), None);
        }
        // An ongoing outage has its note; the newest of two wins.
        let two = [
            note("", (1_000_130_000, 10_000), 5, "newer"),
            note("", (1_000_120_000, 10_000), 2, "older"),
        ];
        let found = note_for(&two, ("d", ""), (1_000_100_000, None));
        assert_eq!(found.map(|n| n.note).as_deref(), Some("newer"));
    }

    #[test]
    fn runs_of_down_buckets_end_at_the_first_up_one_across_gaps() {
        let points = [
            (0, 1.0),
            (10, 0.0),
            (20, 0.0),
            (50, 0.0),
            (60, 1.0),
            (70, 0.0),
        ];
        assert_eq!(runs_down(&points), [(10, Some(60)), (70, None)]);
        assert!(runs_down(&[(0, 1.0), (10, 1.0)]).is_empty());
        assert_eq!(step_for(0, 3_600_000), 10_000);
        assert_eq!(step_for(0, 30 * 86_400_000), 259_200);
        // A hostile range neither overflows nor asks for more than 10,000 buckets.
        assert!(i64::MAX / step_for(i64::MIN, i64::MAX) <= 10_001);
    }
}
