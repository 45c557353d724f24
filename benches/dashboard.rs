//! What the dashboard costs the hub: the fleet page's summary (current values and hour-long
//! sparklines of every device) for a fleet of 1,000 Jetsons, one chart's range query, and a
//! device page's whole set of chart queries over a day of 1 Hz data.
//! `cargo bench --bench dashboard`.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use outpost_storage::{Aggregation, SeriesKey, Store, WriteBatch};
use outpost_web::samples::Samples;

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

/// The group every dashboard bench is in: ten samples over 20 s, as each answer takes long.
fn dashboard_group(
    c: &mut Criterion,
) -> criterion::BenchmarkGroup<'_, criterion::measurement::WallTime> {
    let mut group = c.benchmark_group("dashboard");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group
}

/// The web crate's reads are async (they may go to a remote engine); the benches drive them
/// on a runtime of the hub's kind.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let fleet = std::sync::Arc::new(fleet_store(dir.path()));
    let store = Samples::Store(fleet.clone());
    let runtime = runtime();
    let mut group = dashboard_group(c);
    group.bench_function("fleet summary, 1000 devices x 17 series, last hour", |b| {
        b.iter(|| {
            let summary = runtime
                .block_on(outpost_web::summary::summarize(&store, END_MS, None))
                .expect("summary");
            assert_eq!(summary.len(), DEVICES);
        })
    });
    group.bench_function("one device's summary", |b| {
        b.iter(|| {
            runtime
                .block_on(outpost_web::summary::summarize(
                    &store,
                    END_MS,
                    Some("orin-0500"),
                ))
                .expect("summary")
        })
    });
    let selector =
        outpost_storage::Selector::parse(r#"jetson_temperature_celsius{instance="orin-0500"}"#)
            .expect("selector");
    group.bench_function("a chart: 8 series, 1 h, 1000 points", |b| {
        b.iter(|| {
            runtime
                .block_on(outpost_web::range::answer(
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
                ))
                .expect("answer")
        })
    });
    let every = outpost_storage::Selector::parse(r#"{__name__=~".+"}"#).expect("selector");
    // Grafana's label completion: `/api/v1/labels?start&end` over the whole fleet.
    group.bench_function("series lookup: the whole fleet, last 30 min", |b| {
        b.iter(|| {
            #[allow(clippy::disallowed_methods)] // a bench, no runtime to block
            let found = fleet
                .series_between(&every, END_MS - 1_800_000, END_MS)
                .expect("lookup");
            assert_eq!(found.len(), DEVICES * device_series("x").len());
        })
    });
    group.finish();
}

/// The device page's charts, as `web/frontend/src/main.js` asks for them (match, fn).
const DEVICE_PAGE: [(&str, &str); 18] = [
    (
        r#"{__name__=~"host_cpu_usage_ratio|jetson_cpu_load_ratio",cpu!="total"}"#,
        "avg",
    ),
    (
        r#"{__name__=~"node_cpu_scaling_frequency_hertz|jetson_cpu_frequency_hertz"}"#,
        "avg",
    ),
    (
        r#"{__name__=~"jetson_gpu_load_ratio|jetson_engine_load_ratio",engine=~"|GR3D"}"#,
        "avg",
    ),
    (
        r#"{__name__=~"DCGM_FI_DEV_GPU_UTIL|DCGM_FI_DEV_MEM_COPY_UTIL"}"#,
        "avg",
    ),
    (
        r#"{__name__=~"DCGM_FI_DEV_FB_USED|DCGM_FI_DEV_FB_TOTAL"}"#,
        "avg",
    ),
    (
        r#"{__name__=~"DCGM_FI_DEV_SM_CLOCK|DCGM_FI_DEV_MEM_CLOCK"}"#,
        "avg",
    ),
    (
        r#"{__name__=~"jetson_gpu_frequency_hertz|jetson_engine_frequency_hertz",engine=~"|GR3D"}"#,
        "avg",
    ),
    (
        r#"{__name__=~"jetson_engine_load_ratio|jetson_engine_frequency_hertz",engine="EMC"}"#,
        "avg",
    ),
    (
        r#"{__name__="jetson_engine_load_ratio",engine!~"GR3D|EMC"}"#,
        "avg",
    ),
    (
        r#"{__name__=~"jetson_ram_used_bytes|jetson_swap_used_bytes|host_memory_used_bytes|host_swap_used_bytes"}"#,
        "avg",
    ),
    (
        r#"{__name__=~"jetson_temperature_celsius|node_hwmon_temp_celsius|DCGM_FI_DEV_GPU_TEMP|jetson_thermal_zone_celsius"}"#,
        "avg",
    ),
    (
        r#"{__name__=~"jetson_rail_power_watts|DCGM_FI_DEV_POWER_USAGE"}"#,
        "avg",
    ),
    ("node_filesystem_avail_bytes", "avg"),
    (
        r#"{__name__=~"node_disk_read_bytes_total|node_disk_written_bytes_total"}"#,
        "rate",
    ),
    (
        r#"{__name__=~"node_network_receive_bytes_total|node_network_transmit_bytes_total"}"#,
        "rate",
    ),
    (r#"{__name__=~"probe_success|probe_up"}"#, "avg"),
    ("probe_duration_seconds", "avg"),
    (
        r#"{__name__!~"(host|node|jetson|nvml|DCGM|probe|outpost)_.*"}"#,
        "avg",
    ),
];

/// One Orin's series, named as the agent names them: 92 series.
fn orin_series() -> Vec<String> {
    let mut out = Vec::new();
    for cpu in 0..6 {
        out.push(format!(r#"jetson_cpu_load_ratio{{cpu="{cpu}"}}"#));
        out.push(format!(r#"jetson_cpu_frequency_hertz{{cpu="{cpu}"}}"#));
        out.push(format!(r#"host_cpu_usage_ratio{{cpu="{cpu}"}}"#));
        out.push(format!(
            r#"node_cpu_scaling_frequency_hertz{{cpu="{cpu}"}}"#
        ));
    }
    out.push(r#"host_cpu_usage_ratio{cpu="total"}"#.into());
    for engine in [
        "GR3D", "EMC", "NVENC", "NVDEC", "NVJPG", "APE", "VIC", "NVDLA0", "NVDLA1",
    ] {
        out.push(format!(r#"jetson_engine_load_ratio{{engine="{engine}"}}"#));
        out.push(format!(
            r#"jetson_engine_frequency_hertz{{engine="{engine}"}}"#
        ));
    }
    for name in [
        "jetson_ram_used_bytes",
        "jetson_swap_used_bytes",
        "host_memory_used_bytes",
        "host_swap_used_bytes",
    ] {
        out.push(name.into());
    }
    for sensor in [
        "cpu", "gpu", "soc0", "soc1", "soc2", "tj", "cv0", "cv1", "cv2",
    ] {
        out.push(format!(
            r#"jetson_temperature_celsius{{sensor="{sensor}"}}"#
        ));
        out.push(format!(
            r#"jetson_thermal_zone_celsius{{zone="{sensor}-thermal"}}"#
        ));
    }
    for rail in ["VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"] {
        out.push(format!(r#"jetson_rail_power_watts{{rail="{rail}"}}"#));
    }
    for mountpoint in ["/", "/data", "/boot/efi"] {
        out.push(format!(
            r#"node_filesystem_avail_bytes{{mountpoint="{mountpoint}"}}"#
        ));
    }
    for device in ["mmcblk0", "nvme0n1"] {
        out.push(format!(
            r#"node_disk_read_bytes_total{{device="{device}"}}"#
        ));
        out.push(format!(
            r#"node_disk_written_bytes_total{{device="{device}"}}"#
        ));
    }
    for device in ["eth0", "wlan0", "l4tbr0", "docker0"] {
        out.push(format!(
            r#"node_network_receive_bytes_total{{device="{device}"}}"#
        ));
        out.push(format!(
            r#"node_network_transmit_bytes_total{{device="{device}"}}"#
        ));
    }
    for probe in ["camera-rtsp", "inference-api", "hub-dns"] {
        out.push(format!(r#"probe_success{{probe="{probe}"}}"#));
        out.push(format!(r#"probe_duration_seconds{{probe="{probe}"}}"#));
    }
    for app in [
        "frames_processed_total",
        "inference_latency_seconds",
        "queue_depth",
    ] {
        out.push(app.into());
    }
    out
}

/// A day of 1 Hz samples of one Orin, as the hub stores it (with `instance`).
fn day_store(dir: &std::path::Path) -> Store {
    let store = Store::open(dir.join("day.redb"), hub_like_options()).expect("store opens");
    for (i, name) in orin_series().iter().enumerate() {
        let text = match name.split_once('{') {
            Some((metric, labels)) => format!(r#"{metric}{{instance="orin-0001",{labels}"#),
            None => format!(r#"{name}{{instance="orin-0001"}}"#),
        };
        let key = SeriesKey::parse(&text).expect("valid key");
        let id = store.series_id(&key).expect("series id");
        let counter = name.contains("_total");
        let mut write = WriteBatch::with_capacity(DAY_SECONDS as usize);
        for s in 0..DAY_SECONDS {
            let t = END_MS - (DAY_SECONDS - s) * 1000;
            let wave = ((s * 7 + i as i64 * 13) % 100) as f64 / 100.0;
            write.sample(
                id,
                t,
                if counter {
                    (s * 4096) as f64 + wave
                } else {
                    wave
                },
            );
        }
        store.write(write).expect("write");
    }
    store.seal().expect("seal");
    store
}

const DAY_SECONDS: i64 = 86_400;

fn range(
    runtime: &tokio::runtime::Runtime,
    store: &Samples,
    matcher: &str,
    aggregation: &str,
    hours: i64,
) -> usize {
    let selector = outpost_storage::Selector::parse(matcher)
        .expect("selector")
        .and_equal("instance", "orin-0001");
    let answer = runtime
        .block_on(outpost_web::range::answer(
            store,
            &outpost_web::range::RangeQuery {
                selector: &selector,
                start_ms: END_MS - hours * 3_600_000,
                end_ms: END_MS,
                step_ms: None,
                max_points: 1000,
                aggregation: aggregation.parse().expect("aggregation"),
                limit_points: 11_000,
                limit_series: 500,
            },
        ))
        .expect("answer");
    answer.series.len()
}

fn device_page(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = Samples::Store(std::sync::Arc::new(day_store(dir.path())));
    let runtime = runtime();
    let mut group = dashboard_group(c);
    group.bench_function("range: one series, 24 h at 1 Hz, 1000 points", |b| {
        b.iter(|| {
            assert_eq!(
                range(
                    &runtime,
                    &store,
                    r#"jetson_engine_load_ratio{engine="GR3D"}"#,
                    "avg",
                    24
                ),
                1
            )
        })
    });
    for hours in [1, 24] {
        group.bench_function(
            format!("device page: 15 charts, 84 series, {hours} h, 1000 points"),
            |b| {
                b.iter(|| {
                    let series: usize = DEVICE_PAGE
                        .iter()
                        .map(|(matcher, aggregation)| {
                            range(&runtime, &store, matcher, aggregation, hours)
                        })
                        .sum();
                    // Not shown: the total CPU usage and the clocks of engines other than GR3D and EMC.
                    assert_eq!(series, 84, "series on the page");
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench, device_page);
criterion_main!(benches);
