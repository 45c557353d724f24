//! The fleet page's columns: per device, the current CPU, GPU, RAM, temperature and power and
//! their last hour at one point a minute. Jetsons, x86 hosts and dGPU hosts name these
//! differently, so each column lists the series that can answer it, best first.

use std::collections::BTreeMap;

use outpost_storage::Selector;
use serde::Serialize;

use crate::samples::{Combine, Latest, PerInstance, Samples};
use crate::WebError;

const MINUTE_MS: i64 = 60_000;
/// How recent a device's newest sample must be for it to count as its value now: six of the
/// agent's default batch intervals, twice the hub's default `stale_after`. A device offline,
/// or a collector stopped, shows no current value rather than its last one as if it were now.
pub const CURRENT_WITHIN_MS: i64 = 60_000;
/// Sparklines cover the last hour.
pub const SPARKLINE_POINTS: usize = 60;

enum Source {
    Single(&'static str, Combine),
    /// A percentage (DCGM's utilisation), shown as a ratio like the others.
    Percent(&'static str, Combine),
    Ratio(&'static str, &'static str),
}

/// (column, unit, sources in order of preference).
const COLUMNS: &[(&str, &str, &[Source])] = &[
    (
        "cpu",
        "ratio",
        &[
            Source::Single(r#"host_cpu_usage_ratio{cpu="total"}"#, Combine::Mean),
            Source::Single("jetson_cpu_load_ratio", Combine::Mean),
        ],
    ),
    (
        "gpu",
        "ratio",
        &[
            Source::Single(r#"jetson_engine_load_ratio{engine="GR3D"}"#, Combine::Max),
            Source::Single("jetson_gpu_load_ratio", Combine::Max),
            Source::Percent("DCGM_FI_DEV_GPU_UTIL", Combine::Max),
        ],
    ),
    (
        "ram",
        "ratio",
        &[
            Source::Ratio("jetson_ram_used_bytes", "jetson_ram_total_bytes"),
            Source::Ratio("host_memory_used_bytes", "node_memory_MemTotal_bytes"),
        ],
    ),
    (
        "temperature",
        "celsius",
        &[
            Source::Single("jetson_temperature_celsius", Combine::Max),
            Source::Single("node_hwmon_temp_celsius", Combine::Max),
            Source::Single("DCGM_FI_DEV_GPU_TEMP", Combine::Max),
        ],
    ),
    (
        "power",
        "watts",
        &[
            Source::Single(
                r#"jetson_rail_power_watts{rail=~"VDD_IN|POM_5V_IN"}"#,
                Combine::Sum,
            ),
            Source::Single("DCGM_FI_DEV_POWER_USAGE", Combine::Sum),
        ],
    ),
    (
        "uptime",
        "seconds",
        &[Source::Single("host_uptime_seconds", Combine::Max)],
    ),
];

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Column {
    pub unit: &'static str,
    /// The newest value, if it came within [`CURRENT_WITHIN_MS`].
    pub current: Option<f64>,
    /// One value per minute of the last hour, oldest first, null where nothing came.
    pub sparkline: Vec<Option<f64>>,
}

/// Per device (its `instance` label), per column.
pub type Summary = BTreeMap<String, BTreeMap<&'static str, Column>>;

/// Per device, per minute bucket: the combined value of a selector's series.
async fn per_device(
    samples: &Samples,
    device: Option<&str>,
    selector: &str,
    combine: Combine,
    from: i64,
    to: i64,
) -> Result<PerInstance, WebError> {
    let mut selector = Selector::parse(selector).expect("the built-in selectors parse");
    if let Some(device) = device {
        selector = selector.and_equal("instance", device);
    }
    samples.per_instance(&selector, combine, from, to).await
}

/// Per device, the newest value of `selector`'s series (see `Samples::latest_per_instance`).
async fn latest(
    samples: &Samples,
    device: Option<&str>,
    selector: &str,
    combine: Combine,
    now_ms: i64,
) -> Result<Latest, WebError> {
    let mut selector = Selector::parse(selector).expect("the built-in selectors parse");
    if let Some(device) = device {
        selector = selector.and_equal("instance", device);
    }
    samples
        .latest_per_instance(&selector, combine, now_ms, CURRENT_WITHIN_MS)
        .await
}

/// One source's minute values and newest value, per device.
async fn read_source(
    samples: &Samples,
    device: Option<&str>,
    source: &Source,
    (first, now_ms): (i64, i64),
) -> Result<(PerInstance, Latest), WebError> {
    Ok(match source {
        Source::Single(selector, combine) => (
            per_device(samples, device, selector, *combine, first, now_ms).await?,
            latest(samples, device, selector, *combine, now_ms).await?,
        ),
        Source::Percent(selector, combine) => {
            let mut values = per_device(samples, device, selector, *combine, first, now_ms).await?;
            for buckets in values.values_mut() {
                for value in buckets.values_mut() {
                    *value /= 100.0;
                }
            }
            let mut now = latest(samples, device, selector, *combine, now_ms).await?;
            for value in now.values_mut() {
                *value /= 100.0;
            }
            (values, now)
        }
        Source::Ratio(numerator, denominator) => {
            let top = per_device(samples, device, numerator, Combine::Sum, first, now_ms).await?;
            let bottom =
                per_device(samples, device, denominator, Combine::Sum, first, now_ms).await?;
            let ratios = top
                .into_iter()
                .filter_map(|(device, buckets)| {
                    let totals = bottom.get(&device)?;
                    let ratios = buckets
                        .into_iter()
                        .filter_map(|(b, v)| {
                            let total = *totals.get(&b)?;
                            (total > 0.0).then(|| (b, v / total))
                        })
                        .collect();
                    Some((device, ratios))
                })
                .collect();
            let top_now = latest(samples, device, numerator, Combine::Sum, now_ms).await?;
            let bottom_now = latest(samples, device, denominator, Combine::Sum, now_ms).await?;
            let now = top_now
                .into_iter()
                .filter_map(|(device, v)| {
                    let total = *bottom_now.get(&device)?;
                    (total > 0.0).then(|| (device, v / total))
                })
                .collect();
            (ratios, now)
        }
    })
}

/// Every device's columns over the hour before `now_ms`, or only `device`'s.
pub async fn summarize(
    samples: &Samples,
    now_ms: i64,
    device: Option<&str>,
) -> Result<Summary, WebError> {
    let last = now_ms - now_ms.rem_euclid(MINUTE_MS);
    let first = last - (SPARKLINE_POINTS as i64 - 1) * MINUTE_MS;
    let mut out = Summary::new();
    for (column, unit, sources) in COLUMNS {
        for source in *sources {
            let (values, now) = read_source(samples, device, source, (first, now_ms)).await?;
            for (device, buckets) in values {
                let current = now.get(&device).copied();
                let columns = out.entry(device).or_default();
                if columns.contains_key(column) || buckets.is_empty() {
                    continue;
                }
                let sparkline = (0..SPARKLINE_POINTS as i64)
                    .map(|i| buckets.get(&(first + i * MINUTE_MS)).map(|v| drawn(*v)))
                    .collect();
                columns.insert(
                    column,
                    Column {
                        unit,
                        current,
                        sparkline,
                    },
                );
            }
        }
    }
    Ok(out)
}

/// A sparkline's value to four significant digits: a line 60 points wide shows no more, and
/// a fleet of 1,000 devices sends a fifth of the JSON (a minute's mean has 17 digits).
fn drawn(value: f64) -> f64 {
    if value == 0.0 || !value.is_finite() {
        return value;
    }
    let scale = 10f64.powi(3 - value.abs().log10().floor() as i32);
    let rounded = (value * scale).round() / scale;
    // A scale past f64's range (subnormal values) would make infinities of what is small.
    if rounded.is_finite() {
        rounded
    } else {
        value
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    #[test]
    fn sparkline_values_keep_four_significant_digits() {
        use super::drawn;
        assert_eq!(drawn(0.11057471264367814), 0.1106);
        assert_eq!(drawn(40.741379310344826), 40.74);
        assert_eq!(drawn(3_456_789_012.0), 3_457_000_000.0);
        assert_eq!(drawn(-0.000123456), -0.0001235);
        assert_eq!(drawn(0.0), 0.0);
        for extreme in [f64::MIN_POSITIVE / 8.0, 1e-300, f64::MAX, -f64::MAX] {
            let kept = drawn(extreme);
            assert!(kept.is_finite() && (kept - extreme).abs() <= extreme.abs() * 1e-3);
        }
    }

    use outpost_storage::{SeriesKey, Store, WriteBatch};

    use super::*;

    #[tokio::test]
    async fn now_is_the_newest_value_and_nothing_once_it_stopped_coming() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("s.redb"), Default::default()).unwrap();
        let now = 1_800_000_045_000; // 45 s into a minute
        let mut batch = WriteBatch::default();
        let gpu = |device: &str| {
            let labels = [("instance".to_string(), device.to_string())];
            store
                .series_id(&SeriesKey::new("jetson_gpu_load_ratio", labels).unwrap())
                .unwrap()
        };
        // `busy` climbs through the minute to 0.99 now; `gone` stopped two minutes ago at 0.99.
        let (busy, gone) = (gpu("busy"), gpu("gone"));
        for second in 0..=45 {
            let at = now - 45_000 + second * 1000;
            batch.sample(busy, at, 0.5 + f64::from(second as i32) * 0.011);
        }
        for second in 0..30 {
            batch.sample(gone, now - 150_000 + second * 1000, 0.99);
        }
        #[allow(clippy::disallowed_methods)] // a test, not an async thread
        store.write(batch).unwrap();
        let samples = Samples::Store(Arc::new(store));
        let summary = summarize(&samples, now, None).await.unwrap();
        let busy = &summary["busy"]["gpu"];
        assert_eq!(
            busy.current,
            Some(0.995),
            "the newest sample, not the minute's mean"
        );
        assert!(
            busy.sparkline.last().unwrap().unwrap() < 0.8,
            "the sparkline keeps means"
        );
        let gone = &summary["gone"]["gpu"];
        assert_eq!(gone.current, None, "two minutes silent is not now");
        assert!(
            gone.sparkline.iter().flatten().count() >= 1,
            "its past stays"
        );
    }
}
