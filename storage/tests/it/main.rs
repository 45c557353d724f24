//! Integration tests of the store through its public API, on real files.

mod budget;
mod crash;
mod damage;
mod feed;
mod fixtures;
mod fuzz_corpus;
mod model;
mod power;
mod retention;
mod state;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use outpost_storage::{Clock, Options, Selector, SeriesKey, Store, WriteBatch};

/// A monotonic clock that moves only when a test says so.
#[derive(Debug, Default)]
pub struct ManualClock(pub AtomicU64);

impl ManualClock {
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_millis(self.0.load(Ordering::SeqCst))
    }
}

/// Options that make a test store seal and flush often, so that tests cross every boundary.
pub fn test_options() -> Options {
    Options {
        flush_interval: Duration::from_millis(50),
        sync_interval: Duration::from_millis(200),
        seal_interval: Duration::from_secs(3600),
        max_head_samples: 1 << 20,
        zstd_level: 3,
        ..Options::default()
    }
}

/// The series the model-based tests write: one bare name, and one name under two labels.
pub const MODEL_SERIES: [&str; 3] = ["m0", r#"m1{core="0"}"#, r#"m1{core="1"}"#];

/// The ids of `count` series `name{s="0"}`, `name{s="1"}`... in `store`.
pub fn numbered_series(
    store: &outpost_storage::Store,
    name: &str,
    count: usize,
) -> Vec<outpost_storage::SeriesId> {
    (0..count)
        .map(|s| {
            store
                .series_id(&key(&format!("{name}{{s=\"{s}\"}}")))
                .unwrap()
        })
        .collect()
}

pub fn key(text: &str) -> SeriesKey {
    SeriesKey::parse(text).expect("valid series key")
}

pub fn selector(text: &str) -> Selector {
    Selector::parse(text).expect("valid selector")
}

/// Writes `(series, ts, value)` samples in one batch.
pub fn write(store: &Store, samples: &[(&str, i64, f64)]) {
    let mut batch = WriteBatch::default();
    for &(series, ts, value) in samples {
        let id = store.series_id(&key(series)).expect("series id");
        batch.sample(id, ts, value);
    }
    store.write(batch).expect("write accepted");
}

pub fn raw_bits(store: &Store, sel: &str) -> Vec<(String, Vec<(i64, u64)>)> {
    store
        .query_raw(&selector(sel), i64::MIN, i64::MAX)
        .expect("query")
        .into_iter()
        .map(|s| {
            (
                s.series.to_string(),
                s.points.iter().map(|(t, v)| (*t, v.to_bits())).collect(),
            )
        })
        .collect()
}

/// How many samples of the selected series the hourly rollups count, all time.
pub fn rollup_count(store: &Store, sel: &Selector) -> usize {
    let counts = store
        .query_step(
            sel,
            i64::MIN / 4,
            i64::MAX / 4,
            3_600_000,
            outpost_storage::Aggregation::Count,
        )
        .expect("count query");
    counts
        .first()
        .map_or(0.0, |c| c.points.iter().map(|p| p.1).sum::<f64>()) as usize
}

pub fn open(path: &Path) -> Store {
    Store::open(path, test_options()).expect("store opens")
}
