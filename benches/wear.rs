//! Flash wear: bytes written to the device per sample at steady 1 Hz ingestion of 300 series,
//! for a few flush and sync intervals.
//!
//! Time is simulated (a manual clock advanced one second per batch, the store's timers driven
//! by `Store::tick`), so hours of ingestion run in seconds while every flush, fsync and seal
//! happens as it would in real time. The store lives under `target/`, on the real block device,
//! not tmpfs. Bytes are read from the process' `write_bytes` in `/proc/self/io` (what the kernel
//! sent, or will send, to the device, in pages) and cross-checked with the store's own counter.
//!
//! The values replay the project's hour of real host metrics (105 series, each used for about
//! three of the 300 series), so the compression is that of real gauges and counters.
//!
//! `cargo bench --bench wear` (OUTPOST_WEAR_HOURS sets the simulated hours, default 3).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use outpost_storage::{Clock, Options, SeriesKey, Store, WriteBatch};

mod common;

#[derive(Debug, Default)]
struct ManualClock(AtomicU64);

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::SeqCst))
    }
}

fn write_bytes() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").expect("/proc/self/io");
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("write_bytes line")
}

fn run(templates: &[Vec<f64>], flush: u64, sync: u64, hours: i64) -> (f64, f64, f64) {
    let base = concat!(env!("CARGO_MANIFEST_DIR"), "/target");
    let dir = tempfile::tempdir_in(base).expect("temp dir");
    let clock = Arc::new(ManualClock::default());
    let options = Options {
        flush_interval: Duration::from_secs(flush),
        sync_interval: Duration::from_secs(sync),
        clock: clock.clone(),
        ..Options::default()
    };
    let store = Store::open(dir.path().join("wear.redb"), options).expect("store");
    let series = 300usize;
    let ids: Vec<_> = (0..series)
        .map(|s| {
            store
                .series_id(&SeriesKey::parse(&format!("replayed{{n=\"{s}\"}}")).unwrap())
                .unwrap()
        })
        .collect();
    let before = write_bytes();
    let stats_before = store.stats().unwrap();
    let start_ms = 1_795_219_200_000i64;
    for second in 0..hours * 3600 {
        let mut batch = WriteBatch::with_capacity(series);
        for (s, id) in ids.iter().enumerate() {
            let template = &templates[s % templates.len()];
            let value = template[second as usize % template.len()];
            batch.sample(*id, start_ms + second * 1000, value);
        }
        store.write(batch).expect("write");
        clock.0.fetch_add(1_000_000_000, Ordering::SeqCst);
        store.tick().expect("tick");
    }
    let stats = store.stats().unwrap();
    let counted = stats.bytes_written_since_open - stats_before.bytes_written_since_open;
    let log = stats.log_bytes_written_since_open - stats_before.log_bytes_written_since_open;
    store.close().expect("close");
    let written = write_bytes() - before;
    let samples = (hours * 3600) as f64 * series as f64;
    (
        written as f64 / samples,
        counted as f64 / samples,
        log as f64 / samples,
    )
}

fn main() {
    // `cargo bench` passes --bench; a filter or `--test` run should not spend minutes here.
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    let hours: i64 = std::env::var("OUTPOST_WEAR_HOURS")
        .ok()
        .and_then(|h| h.parse().ok())
        .unwrap_or(3);
    let templates: Vec<Vec<f64>> = common::host_series()
        .into_values()
        .map(|(_, v)| v)
        .collect();
    println!("300 series at 1 Hz for {hours} simulated hours, seal every hour");
    println!("| flush_interval | sync_interval | device bytes/sample | store-counted bytes/sample | of which log |");
    println!("| --- | --- | --- | --- | --- |");
    for (flush, sync) in [(5, 30), (1, 10), (10, 60), (5, 5)] {
        let (device, counted, log) = run(&templates, flush, sync, hours);
        println!("| {flush} s | {sync} s | {device:.2} | {counted:.2} | {log:.2} |");
    }
}
