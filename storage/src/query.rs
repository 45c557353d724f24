//! Aggregation over time buckets: the pure arithmetic behind stepped queries and rollups.
//!
//! Buckets are aligned to multiples of their width since the Unix epoch, so that minute buckets
//! nest in hours and every step that is a multiple of a tier's resolution can be answered from that
//! tier exactly. Coarser buckets are always built by merging finer ones in time order; the store
//! and the tests' model share these functions so that `sum` (floating point, order-sensitive) is
//! defined once.

use std::fmt;
use std::str::FromStr;

use crate::codec::Rollup;

/// How a stepped query reduces the samples of each bucket to one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregation {
    Avg,
    Min,
    Max,
    Sum,
    Count,
    Last,
    /// Per-second rate of a counter, reset-aware: a decrease counts as a reset to zero.
    Rate,
}

impl FromStr for Aggregation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "avg" => Aggregation::Avg,
            "min" => Aggregation::Min,
            "max" => Aggregation::Max,
            "sum" => Aggregation::Sum,
            "count" => Aggregation::Count,
            "last" => Aggregation::Last,
            "rate" => Aggregation::Rate,
            other => {
                return Err(format!(
                    "unknown function {other:?}: expected avg, min, max, sum, count, last or rate"
                ))
            }
        })
    }
}

impl fmt::Display for Aggregation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Aggregation::Avg => "avg",
            Aggregation::Min => "min",
            Aggregation::Max => "max",
            Aggregation::Sum => "sum",
            Aggregation::Count => "count",
            Aggregation::Last => "last",
            Aggregation::Rate => "rate",
        })
    }
}

/// The start of the bucket of width `width` that holds `ts`. Saturates at `i64::MIN`, where the
/// first bucket would start before the representable range.
pub fn bucket_of(ts: i64, width: i64) -> i64 {
    ts.saturating_sub(ts.rem_euclid(width))
}

/// Rollups of sorted, unique samples in buckets of `width` ms.
pub(crate) fn rollups_from_samples(samples: &[(i64, f64)], width: i64) -> Vec<(i64, Rollup)> {
    let mut out: Vec<(i64, Rollup)> = Vec::new();
    for &(ts, value) in samples {
        let bucket = bucket_of(ts, width);
        match out.last_mut() {
            Some((b, rollup)) if *b == bucket => rollup.merge(&Rollup::of(value)),
            _ => out.push((bucket, Rollup::of(value))),
        }
    }
    out
}

/// Merges sorted rollup points into coarser buckets of `width` ms, in time order.
pub(crate) fn coarsen(points: &[(i64, Rollup)], width: i64) -> Vec<(i64, Rollup)> {
    let mut out: Vec<(i64, Rollup)> = Vec::new();
    for &(start, rollup) in points {
        let bucket = bucket_of(start, width);
        match out.last_mut() {
            Some((b, acc)) if *b == bucket => acc.merge(&rollup),
            _ => out.push((bucket, rollup)),
        }
    }
    out
}

/// The value of each bucket under `aggregation` (anything but rate).
pub(crate) fn reduce(points: &[(i64, Rollup)], aggregation: Aggregation) -> Vec<(i64, f64)> {
    points
        .iter()
        .map(|(bucket, r)| {
            let value = match aggregation {
                Aggregation::Avg => r.sum / r.count as f64,
                Aggregation::Min => r.min,
                Aggregation::Max => r.max,
                Aggregation::Sum => r.sum,
                Aggregation::Count => r.count as f64,
                Aggregation::Last | Aggregation::Rate => r.last,
            };
            (*bucket, value)
        })
        .collect()
}

/// Reset-aware per-second rate in buckets of `step` ms over a sorted sample sequence. Each bucket
/// sums the increases from every sample's predecessor (which may lie in an earlier bucket) to the
/// sample; a bucket whose samples have no predecessor has no rate.
pub fn rate(samples: &[(i64, f64)], step: i64) -> Vec<(i64, f64)> {
    let mut out: Vec<(i64, f64)> = Vec::new();
    for pair in samples.windows(2) {
        let (previous, (ts, value)) = (pair[0].1, pair[1]);
        let increase = if value >= previous {
            value - previous
        } else {
            value
        };
        let bucket = bucket_of(ts, step);
        match out.last_mut() {
            Some((b, acc)) if *b == bucket => *acc += increase,
            // Starting from +0.0 keeps a bucket of -0.0 increases from reporting a rate of -0.
            _ => out.push((bucket, 0.0 + increase)),
        }
    }
    let seconds = step as f64 / 1000.0;
    for point in &mut out {
        point.1 /= seconds;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_handles_counter_resets() {
        let samples = [(0, 10.0), (1000, 20.0), (2000, 5.0), (3000, 15.0)];
        // Increases: 10, reset to 5 (counts 5), 10; one 4 s bucket.
        assert_eq!(rate(&samples, 4000), vec![(0, 25.0 / 4.0)]);
        assert_eq!(rate(&samples, 2000), vec![(0, 5.0), (2000, 7.5)]);
    }

    #[test]
    fn buckets_align_to_the_epoch_for_negative_times() {
        assert_eq!(bucket_of(-1, 60_000), -60_000);
        let points = rollups_from_samples(&[(-1, 1.0), (0, 2.0), (59_999, 3.0)], 60_000);
        assert_eq!(points.len(), 2);
        assert_eq!(points[1].1.sum, 5.0);
        assert_eq!(points[1].1.last, 3.0);
    }
}
