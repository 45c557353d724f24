//! PromQL over a month that raw retention removed: 300 series, one sample every 2 minutes from
//! 61 to 31 days before "now", in a store whose 30-day raw retention dropped them at a seal,
//! keeping the minute and hour rollups; a 30-day range query at a 1-hour step, as a long
//! Grafana panel asks (target: 50 ms, issue 21). Compared with the same query over the same
//! month kept raw.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use outpost_storage::promql::{self, Options as QueryOptions};
use outpost_storage::{ManualWallClock, Options, Retention, SeriesKey, Store, WriteBatch};

const DAY: i64 = 86_400_000;
const HOUR: i64 = 3_600_000;
const NOW: i64 = 1_800_000_000_000 / HOUR * HOUR;
const FIRST: i64 = NOW - 61 * DAY;

fn bench_dir() -> tempfile::TempDir {
    let base = concat!(env!("CARGO_MANIFEST_DIR"), "/target");
    std::fs::create_dir_all(base).expect("target dir");
    tempfile::tempdir_in(base).expect("temp dir")
}

/// The month, raw samples kept for `raw_days`.
fn month(dir: &std::path::Path, raw_days: u64) -> Store {
    let options = Options {
        retention: Retention {
            raw: Some(Duration::from_secs(raw_days * 86_400)),
            minute: None,
            hour: None,
        },
        wall_clock: Some(Arc::new(ManualWallClock::new(NOW))),
        ..Options::default()
    };
    let store = Store::open(dir.join(format!("month-{raw_days}.redb")), options).expect("store");
    // A sample now, first: retention counts back from the newest sample stored at each seal
    // (and a seal may come while the month is written).
    let now = store
        .series_id(&SeriesKey::new("now", []).expect("key"))
        .expect("id");
    let mut batch = WriteBatch::default();
    batch.sample(now, NOW, 1.0);
    store.write(batch).expect("write");
    for s in 0..300 {
        let key = SeriesKey::new("load_ratio", [("series".to_string(), format!("{s:03}"))]);
        let id = store.series_id(&key.expect("key")).expect("id");
        let mut batch = WriteBatch::with_capacity(21_600);
        for i in 0..(30 * 24 * 30) {
            let value = 50.0 + 40.0 * (((i + 7 * s) as f64) / 90.0).sin();
            batch.sample(id, FIRST + i * 120_000, value);
        }
        store.write(batch).expect("write");
    }
    store.seal().expect("seal");
    store
}

fn month_at_an_hour_step(c: &mut Criterion) {
    let dir = bench_dir();
    let aged = month(dir.path(), 30);
    let kept = month(dir.path(), 365);
    let (start, end) = (FIRST + HOUR, FIRST + 30 * DAY);
    let options = QueryOptions::default();
    let mut group = c.benchmark_group("promql");
    group.sample_size(20);
    for expr in [
        "max_over_time(load_ratio[1h])",
        "avg_over_time(load_ratio[1h])",
    ] {
        for (name, store) in [("rollups", &aged), ("raw", &kept)] {
            let answer =
                promql::range(store, expr, start, end, HOUR, &options, None).expect("answer");
            match &answer.value {
                promql::Value::Matrix(series) => assert_eq!(series.len(), 300, "{name}"),
                other => panic!("{other:?}"),
            }
            // The rollups' answer says it is approximate: a closed window also takes the first
            // instant of the next hour, which a sample may sit on.
            assert_eq!(name == "rollups", !answer.warnings.is_empty(), "{name}");
            group.bench_function(format!("30d-1h-step/{name}/{expr}"), |b| {
                b.iter(|| black_box(promql::range(store, expr, start, end, HOUR, &options, None)))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, month_at_an_hour_step);
criterion_main!(benches);
