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
    for line in host_text().lines() {
        if let Ok(outpost_storage::text::Line::Sample {
            series: name,
            value,
            timestamp_ms: Some(ts),
        }) = outpost_storage::text::parse_line(line)
        {
            let entry = series.entry(name.to_string()).or_default();
            entry.0.push(ts);
            entry.1.push(value);
        }
    }
    series
}
