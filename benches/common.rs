//! Data shared by the benches: the project's copy of an hour of real host metrics.

use std::collections::BTreeMap;
use std::io::Read;

/// The hour of host metrics as Prometheus text.
pub fn host_text() -> String {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/host/host-1h.prom.zst"
    );
    let compressed = std::fs::read(path).expect("tests/data/host/host-1h.prom.zst");
    let mut text = String::new();
    zstd::Decoder::new(compressed.as_slice())
        .expect("zstd")
        .read_to_string(&mut text)
        .expect("utf-8 text");
    text
}

/// The hour of host metrics, per series: timestamps and values.
#[allow(dead_code)]
pub fn host_series() -> BTreeMap<String, (Vec<i64>, Vec<f64>)> {
    let mut series: BTreeMap<String, (Vec<i64>, Vec<f64>)> = BTreeMap::new();
    for (name, ts, value) in outpost_storage::text::timestamped_samples(&host_text()) {
        let entry = series.entry(name.to_string()).or_default();
        entry.0.push(ts);
        entry.1.push(value);
    }
    series
}

/// Store settings of an agent that ships to a hub: a change feed, and no seal in the way.
#[allow(dead_code)]
pub fn agent_options() -> outpost_storage::Options {
    outpost_storage::Options {
        track_changes: true,
        seal_interval: std::time::Duration::from_secs(24 * 3600),
        ..outpost_storage::Options::default()
    }
}

/// The hour as (series, ts, value) rows, in file order.
#[allow(dead_code)]
pub fn host_rows() -> Vec<(String, i64, f64)> {
    outpost_storage::text::timestamped_samples(&host_text())
        .map(|(series, ts, value)| (series.to_string(), ts, value))
        .collect()
}

/// An agent's store holding 24 hours of 315 series (the hour, three times under a `copy`
/// label, 24 times over: 27 M samples) that a hub never acknowledged: all of it backlog.
#[allow(dead_code)]
pub fn backlog_store(path: &std::path::Path) -> outpost_storage::Store {
    use outpost_storage::{SeriesKey, WriteBatch};
    let agent = outpost_storage::Store::open(path, agent_options()).unwrap();
    let rows = host_rows();
    let start = rows.iter().map(|r| r.1).min().unwrap();
    let mut ids = std::collections::HashMap::new();
    let began = std::time::Instant::now();
    let mut total = 0u64;
    for hour in 0..24i64 {
        for copy in 0..3 {
            let mut write = WriteBatch::with_capacity(rows.len());
            for (series, ts, value) in &rows {
                let name = format!("{series}|{copy}");
                let id = *ids.entry(name).or_insert_with(|| {
                    let key = SeriesKey::parse(series).unwrap();
                    let mut labels: Vec<(String, String)> = key.owned_labels();
                    labels.push(("copy".into(), copy.to_string()));
                    agent
                        .series_id(&SeriesKey::new(key.name(), labels).unwrap())
                        .unwrap()
                });
                write.sample(id, start + hour * 3_600_000 + (ts - start), *value);
            }
            total += rows.len() as u64;
            agent.write(write).unwrap();
        }
        // The hub is away: every hour's seal leaves backlog.
        agent.seal().unwrap();
    }
    println!(
        "backfill: wrote {total} samples of {} series in {:.1} s",
        ids.len(),
        began.elapsed().as_secs_f64()
    );
    agent
}

/// Writes `rows` into `agent` `slice_ms` of sample time at a time, as collection would, calling
/// `after` after each write.
#[allow(dead_code)]
pub fn write_in_slices(
    agent: &outpost_storage::Store,
    rows: &[(String, i64, f64)],
    slice_ms: i64,
    mut after: impl FnMut(),
) {
    let start = rows.iter().map(|r| r.1).min().unwrap();
    let mut ids = std::collections::HashMap::new();
    let (mut cursor, mut window_end) = (0, start + slice_ms);
    while cursor < rows.len() {
        let mut write = outpost_storage::WriteBatch::default();
        while cursor < rows.len() && rows[cursor].1 < window_end {
            let (series, ts, value) = &rows[cursor];
            let id = *ids.entry(series.clone()).or_insert_with(|| {
                agent
                    .series_id(&outpost_storage::SeriesKey::parse(series).unwrap())
                    .unwrap()
            });
            write.sample(id, *ts, *value);
            cursor += 1;
        }
        agent.write(write).unwrap();
        after();
        window_end += slice_ms;
    }
}

/// Runs the parts of a bench named on the command line, or all of them when none is.
#[allow(dead_code)]
pub fn run_selected(parts: &[(&str, fn())]) {
    let which: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    for (name, part) in parts {
        if which.is_empty() || which.iter().any(|w| w == name) {
            part();
        }
    }
}

/// The device's outbox over `store`, as the agent opens it, in a boot named `boot`.
#[allow(dead_code)]
pub fn outbox(
    store: &outpost_storage::Store,
    device: &str,
    key: &outpost_sync::DeviceKey,
) -> outpost_sync::outbox::Outbox {
    let options = outpost_sync::outbox::OutboxOptions::default();
    outpost_sync::outbox::Outbox::open(store, device, key.clone(), "boot", options).unwrap()
}
