//! What the dashboard costs the hub: the fleet page's summary (current values and hour-long
//! sparklines of every device) for a fleet of 1,000 Jetsons, and one chart's range query.
//! `cargo bench --bench dashboard`.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use outpost_storage::{Aggregation, SeriesKey, Store, WriteBatch};

const DEVICES: usize = 1000;
/// An hour at one sample every 10 s.
const SAMPLES: i64 = 360;
const STEP_MS: i64 = 10_000;
const END_MS: i64 = 1_800_000_000_000;

/// What a Jetson sends that the fleet page reads: 6 CPU cores, GR3D, RAM used and total, 8
/// temperatures, the input rail.
fn device_series(device: &str) -> Vec<SeriesKey> {
    let mut out = Vec::new();
    let key = |text: String| SeriesKey::parse(&text).expect("valid key");
    for cpu in 0..6 {
        out.push(key(format!(
            r#"jetson_cpu_load_ratio{{cpu="{cpu}",instance="{device}"}}"#
        )));
    }
    out.push(key(format!(
        r#"jetson_engine_load_ratio{{engine="GR3D",instance="{device}"}}"#
    )));
    out.push(key(format!(
        r#"jetson_ram_used_bytes{{instance="{device}"}}"#
    )));
    out.push(key(format!(
        r#"jetson_ram_total_bytes{{instance="{device}"}}"#
    )));
    for sensor in [
        "AO", "CPU", "GPU", "PLL", "PMIC", "thermal", "Tboard", "Tdiode",
    ] {
        out.push(key(format!(
            r#"jetson_temperature_celsius{{sensor="{sensor}",instance="{device}"}}"#
        )));
    }
    out.push(key(format!(
        r#"jetson_rail_power_watts{{rail="VDD_IN",instance="{device}"}}"#
    )));
    out
}

fn fleet_store(dir: &std::path::Path) -> Store {
    let store = Store::open(dir.join("fleet.redb"), hub_like_options()).expect("store opens");
    for d in 0..DEVICES {
        let device = format!("orin-{d:04}");
        let mut write = WriteBatch::with_capacity(20 * SAMPLES as usize);
        for (i, key) in device_series(&device).iter().enumerate() {
            let id = store.series_id(key).expect("series id");
            for s in 0..SAMPLES {
                let t = END_MS - (SAMPLES - s) * STEP_MS;
                write.sample(id, t, ((s as usize * 7 + i * 13 + d) % 100) as f64 / 100.0);
            }
        }
        store.write(write).expect("write");
    }
    store.seal().expect("seal");
    store
}

fn hub_like_options() -> outpost_storage::Options {
    outpost_storage::Options {
        max_head_samples: 8_000_000,
        ..outpost_storage::Options::default()
    }
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = fleet_store(dir.path());
    let mut group = c.benchmark_group("dashboard");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.bench_function("fleet summary, 1000 devices x 17 series, last hour", |b| {
        b.iter(|| {
            let summary = outpost_web::summary::summarize(&store, END_MS, None).expect("summary");
            assert_eq!(summary.len(), DEVICES);
        })
    });
    group.bench_function("one device's summary", |b| {
        b.iter(|| {
            outpost_web::summary::summarize(&store, END_MS, Some("orin-0500")).expect("summary")
        })
    });
    let selector =
        outpost_storage::Selector::parse(r#"jetson_temperature_celsius{instance="orin-0500"}"#)
            .expect("selector");
    group.bench_function("a chart: 8 series, 1 h, 1000 points", |b| {
        b.iter(|| {
            outpost_web::range::answer(
                &store,
                &outpost_web::range::RangeQuery {
                    selector: &selector,
                    start_ms: END_MS - 3_600_000,
                    end_ms: END_MS,
                    step_ms: None,
                    max_points: 1000,
                    aggregation: Aggregation::Avg,
                    limit_points: 11_000,
                    limit_series: 500,
                },
            )
            .expect("answer")
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
