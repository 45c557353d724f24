//! The fleet page's columns: per device, the current CPU, GPU, RAM, temperature and power and
//! their last hour at one point a minute. Jetsons, x86 hosts and dGPU hosts name these
//! differently, so each column lists the series that can answer it, best first.

use std::collections::BTreeMap;

use outpost_storage::Selector;
use serde::Serialize;

use crate::samples::{Combine, PerInstance, Samples};
use crate::WebError;

const MINUTE_MS: i64 = 60_000;
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
    /// The newest minute's value.
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
            let values = match source {
                Source::Single(selector, combine) => {
                    per_device(samples, device, selector, *combine, first, now_ms).await?
                }
                Source::Percent(selector, combine) => {
                    let mut values =
                        per_device(samples, device, selector, *combine, first, now_ms).await?;
                    for buckets in values.values_mut() {
                        for value in buckets.values_mut() {
                            *value /= 100.0;
                        }
                    }
                    values
                }
                Source::Ratio(numerator, denominator) => {
                    let top =
                        per_device(samples, device, numerator, Combine::Sum, first, now_ms).await?;
                    let bottom =
                        per_device(samples, device, denominator, Combine::Sum, first, now_ms)
                            .await?;
                    top.into_iter()
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
                        .collect()
                }
            };
            for (device, buckets) in values {
                let columns = out.entry(device).or_default();
                if columns.contains_key(column) || buckets.is_empty() {
                    continue;
                }
                let sparkline = (0..SPARKLINE_POINTS as i64)
                    .map(|i| buckets.get(&(first + i * MINUTE_MS)).copied())
                    .collect();
                columns.insert(
                    column,
                    Column {
                        unit,
                        current: buckets.values().next_back().copied(),
                        sparkline,
                    },
                );
            }
        }
    }
    Ok(out)
}
