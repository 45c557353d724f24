//! `GET /api/range`: picks the step and the tier for a time range, reduces every series to at
//! most the points asked for, and marks where a device sent nothing with an explicit null, so a
//! chart draws a gap instead of a line across the outage.

use std::collections::BTreeMap;

use outpost_storage::{Aggregation, Selector};
use serde::Serialize;

use crate::samples::Samples;
use crate::WebError;

/// Steps a range is reduced to, smallest first: whole seconds, minutes and hours, so that
/// buckets line up with the store's minute and hour tiers.
const NICE_STEPS_MS: &[i64] = &[
    1_000, 2_000, 5_000, 10_000, 15_000, 30_000, 60_000, 120_000, 300_000, 600_000, 900_000,
    1_800_000, 3_600_000, 7_200_000, 10_800_000, 21_600_000, 43_200_000, 86_400_000,
];

/// The smallest step that keeps `[start, end]` within `max_points` buckets.
pub fn step_for(start_ms: i64, end_ms: i64, max_points: usize) -> i64 {
    let span = end_ms.saturating_sub(start_ms).max(1);
    let per = max_points.max(1) as i64;
    let wanted = span / per + i64::from(span % per != 0);
    NICE_STEPS_MS
        .iter()
        .copied()
        .find(|step| *step >= wanted)
        .unwrap_or_else(|| {
            let days = wanted / 86_400_000 + i64::from(wanted % 86_400_000 != 0);
            days.saturating_mul(86_400_000)
        })
}

/// Which tier the store answers a step from (`Store::query_step`'s rule).
pub fn tier_of(step_ms: i64) -> &'static str {
    if step_ms % 3_600_000 == 0 {
        "hour"
    } else if step_ms % 60_000 == 0 {
        "minute"
    } else {
        "raw"
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeriesOut {
    /// The series in selector syntax, `name{label="value",...}`.
    pub series: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// `[timestamp_ms, value]`, value `null` where the series has a gap (or a value JSON cannot
    /// hold: NaN, infinity).
    pub points: Vec<(i64, Option<f64>)>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RangeAnswer {
    pub start: i64,
    pub end: i64,
    pub step_ms: i64,
    pub tier: &'static str,
    #[serde(rename = "fn")]
    pub aggregation: String,
    pub series: Vec<SeriesOut>,
}

pub struct RangeQuery<'a> {
    pub selector: &'a Selector,
    pub start_ms: i64,
    pub end_ms: i64,
    /// Chosen from `max_points` when `None`.
    pub step_ms: Option<i64>,
    pub max_points: usize,
    pub aggregation: Aggregation,
    /// Bounds from the config: points per series and series per answer.
    pub limit_points: usize,
    pub limit_series: usize,
}

pub async fn answer(samples: &Samples, query: &RangeQuery<'_>) -> Result<RangeAnswer, WebError> {
    if query.end_ms < query.start_ms {
        return Err(WebError::BadRequest("end is before start".into()));
    }
    if query.max_points == 0 || query.max_points > query.limit_points {
        return Err(WebError::BadRequest(format!(
            "max_points must be between 1 and {} (web.max_points)",
            query.limit_points
        )));
    }
    let series_count = samples
        .series(query.selector, query.start_ms, query.end_ms)
        .await?
        .len();
    if series_count > query.limit_series {
        return Err(WebError::BadRequest(format!(
            "the selector matches {series_count} series, more than the {} one request may return \
             (web.max_series); narrow it",
            query.limit_series
        )));
    }
    let mut step = match query.step_ms {
        Some(step) if step <= 0 => {
            return Err(WebError::BadRequest("step must be positive".into()))
        }
        Some(step) => {
            // Saturating: an absurd range must be refused, not wrap around to a small count.
            let buckets = (query.end_ms.saturating_sub(query.start_ms) / step).saturating_add(1);
            if buckets > query.limit_points as i64 {
                return Err(WebError::BadRequest(format!(
                    "a step of {step} ms gives {buckets} points per series over this range, more \
                     than {} (web.max_points); use a larger step or a shorter range",
                    query.limit_points
                )));
            }
            step
        }
        None => step_for(query.start_ms, query.end_ms, query.max_points),
    };
    let mut found = query_at(samples, query, step).await?;
    // Raw data that the budget or retention dropped still has its rollups: a range whose raw
    // samples are gone is answered from the minute tier, then the hour tier.
    for coarser in [60_000, 3_600_000] {
        if !found.is_empty() || step >= coarser || query.step_ms.is_some() {
            break;
        }
        step = coarser;
        found = query_at(samples, query, step).await?;
    }
    let series = found
        .into_iter()
        .map(|points| {
            let key = points.series;
            SeriesOut {
                series: key.to_string(),
                name: key.name().to_string(),
                labels: key.owned_labels().into_iter().collect(),
                points: with_gaps(&points.points, step),
            }
        })
        .collect();
    Ok(RangeAnswer {
        start: query.start_ms,
        end: query.end_ms,
        step_ms: step,
        tier: tier_of(step),
        aggregation: query.aggregation.to_string(),
        series,
    })
}

async fn query_at(
    samples: &Samples,
    query: &RangeQuery<'_>,
    step: i64,
) -> Result<Vec<outpost_storage::SeriesPoints>, WebError> {
    samples
        .query_step(
            query.selector,
            query.start_ms,
            query.end_ms,
            step,
            query.aggregation,
        )
        .await
}

/// The buckets that hold data, with a null inserted after every bucket that is followed by a
/// silence much longer than the series' usual spacing (its median gap, at least one step).
pub fn with_gaps(points: &[(i64, f64)], step_ms: i64) -> Vec<(i64, Option<f64>)> {
    let mut spacings: Vec<i64> = points.windows(2).map(|w| w[1].0 - w[0].0).collect();
    let usual = if spacings.is_empty() {
        step_ms
    } else {
        let middle = spacings.len() / 2;
        *spacings.select_nth_unstable(middle).1
    }
    .max(step_ms);
    let limit = usual.saturating_mul(3);
    let mut out = Vec::with_capacity(points.len() + 8);
    for (i, &(timestamp, value)) in points.iter().enumerate() {
        if i > 0 {
            let previous = points[i - 1].0;
            if timestamp - previous > limit {
                out.push((previous + step_ms, None));
            }
        }
        out.push((timestamp, value.is_finite().then_some(value)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn steps_keep_within_the_points_asked_for_and_line_up_with_tiers() {
        assert_eq!(step_for(0, 900_000, 1000), 1_000);
        assert_eq!(step_for(0, 3_600_000, 1000), 5_000);
        assert_eq!(step_for(0, 86_400_000, 1000), 120_000);
        assert_eq!(tier_of(step_for(0, 86_400_000, 1000)), "minute");
        assert_eq!(tier_of(step_for(0, 30 * 86_400_000, 1000)), "hour");
        assert_eq!(tier_of(step_for(0, 3_600_000, 1000)), "raw");
    }

    #[test]
    fn an_outage_becomes_one_null_and_regular_data_none() {
        let regular: Vec<(i64, f64)> = (0..100).map(|i| (i * 1000, i as f64)).collect();
        assert!(with_gaps(&regular, 1000).iter().all(|(_, v)| v.is_some()));
        let mut outage = regular.clone();
        outage.retain(|(t, _)| !(40_000..70_000).contains(t));
        let out = with_gaps(&outage, 1000);
        let nulls: Vec<i64> = out
            .iter()
            .filter(|(_, v)| v.is_none())
            .map(|(t, _)| *t)
            .collect();
        assert_eq!(nulls, vec![40_000]);
        assert_eq!(out.len(), outage.len() + 1);
        // A series sampled every 5 s, read at a 1 s step, has no gaps.
        let sparse: Vec<(i64, f64)> = (0..50).map(|i| (i * 5000, 1.0)).collect();
        assert!(with_gaps(&sparse, 1000).iter().all(|(_, v)| v.is_some()));
        assert_eq!(with_gaps(&[(0, f64::NAN)], 1000), vec![(0, None)]);
    }

    /// `end - start` once wrapped around for a range to `i64::MAX`, so that a 1 ms step over it
    /// passed the points bound.
    #[tokio::test]
    async fn absurd_ranges_are_refused_by_the_points_bound() {
        let dir = tempfile::tempdir().unwrap();
        let store = outpost_storage::Store::open(
            dir.path().join("s.redb"),
            outpost_storage::Options::default(),
        )
        .unwrap();
        let samples = Samples::Store(std::sync::Arc::new(store));
        let selector = Selector::parse("up").unwrap();
        for (start_ms, end_ms) in [(0, i64::MAX), (i64::MIN, i64::MAX), (i64::MIN, 0)] {
            let query = RangeQuery {
                selector: &selector,
                start_ms,
                end_ms,
                step_ms: Some(1),
                max_points: 1000,
                aggregation: Aggregation::Avg,
                limit_points: 11_000,
                limit_series: 100,
            };
            let refused = answer(&samples, &query).await;
            assert!(
                matches!(refused, Err(WebError::BadRequest(_))),
                "{start_ms}..{end_ms}"
            );
            assert!(step_for(start_ms, end_ms, 1000) > 0);
        }
    }

    proptest! {
        #[test]
        fn gaps_only_add_nulls_and_keep_every_point(
            times in proptest::collection::btree_set(0i64..1_000_000, 0..200),
            step in 1i64..10_000,
        ) {
            let points: Vec<(i64, f64)> = times.iter().map(|t| (*t, *t as f64)).collect();
            let out = with_gaps(&points, step);
            let kept: Vec<(i64, f64)> = out.iter().filter_map(|(t, v)| v.map(|v| (*t, v))).collect();
            prop_assert_eq!(kept, points);
            prop_assert!(out.windows(2).all(|w| w[0].0 < w[1].0));
            prop_assert!(out.windows(2).all(|w| w[0].1.is_some() || w[1].1.is_some()));
        }
    }
}
