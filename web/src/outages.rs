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

/// An operator's note on one outage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutageNote {
    pub device: String,
    pub probe: String,
    pub start_ms: i64,
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
        let note_for = |start_ms: i64| {
            notes
                .iter()
                .find(|n| n.device == device && n.probe == probe && n.start_ms == start_ms)
                .cloned()
        };
        let outage = |(start_ms, end_ms): (i64, Option<i64>), severity| Outage {
            start_ms,
            end_ms,
            duration_seconds: (end_ms.unwrap_or(end) - start_ms).max(0) as f64 / 1000.0,
            severity,
            note: note_for(start_ms),
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
