//! Whole-store speed: bulk import of real data, and queries over a day of 1 Hz samples.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use outpost_storage::text::Importer;
use outpost_storage::{Aggregation, Options, Selector, SeriesKey, Store, WriteBatch};

mod common;

fn bench_dir() -> tempfile::TempDir {
    // Under target/, on the same file system as the build: a real disk rather than tmpfs.
    let base = concat!(env!("CARGO_MANIFEST_DIR"), "/target");
    std::fs::create_dir_all(base).expect("target dir");
    tempfile::tempdir_in(base).expect("temp dir")
}

fn import(c: &mut Criterion) {
    let text = common::host_text();
    let lines: Vec<&str> = text.lines().collect();
    let mut group = c.benchmark_group("store");
    group.sample_size(20);
    group.throughput(Throughput::Elements(lines.len() as u64));
    group.bench_function("import/host-1h", |b| {
        b.iter_with_setup(
            || {
                let dir = bench_dir();
                let store =
                    Store::open(dir.path().join("bench.redb"), Options::default()).expect("store");
                (dir, store)
            },
            |(dir, store)| {
                let mut importer = Importer::new(&store, 0);
                for (n, line) in lines.iter().enumerate() {
                    let _ = importer.line(line, n as u64).expect("store error");
                }
                importer.finish().expect("seal");
                store.close().expect("close");
                drop(dir);
            },
        )
    });
    group.finish();
}

fn queries(c: &mut Criterion) {
    let dir = bench_dir();
    let store = Store::open(dir.path().join("query.redb"), Options::default()).expect("store");
    let day_ms = 86_400_000i64;
    let start = 1_795_219_200_000i64;
    // One day of 1 Hz samples for the queried series and nine neighbours, real-looking values.
    for s in 0..10 {
        let id = store
            .series_id(&SeriesKey::parse(&format!("cpu_load{{core=\"{s}\"}}")).unwrap())
            .unwrap();
        let mut batch = WriteBatch::with_capacity(86_400);
        for i in 0..86_400i64 {
            let value = ((i * 37 + s * 11) % 1000) as f64 / 10.0;
            batch.sample(id, start + i * 1000, value);
        }
        store.write(batch).unwrap();
    }
    store.seal().unwrap();
    let selector = Selector::parse(r#"cpu_load{core="3"}"#).unwrap();

    let mut group = c.benchmark_group("query");
    group.measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(86_400));
    group.bench_function("raw-24h", |b| {
        b.iter(|| {
            let points = store
                .query_raw(black_box(&selector), start, start + day_ms - 1)
                .unwrap();
            assert_eq!(points[0].points.len(), 86_400);
            points
        })
    });
    group.throughput(Throughput::Elements(1440));
    group.bench_function("step-1m-24h", |b| {
        b.iter(|| {
            let points = store
                .query_step(
                    black_box(&selector),
                    start,
                    start + day_ms - 1,
                    60_000,
                    Aggregation::Avg,
                )
                .unwrap();
            assert_eq!(points[0].points.len(), 1440);
            points
        })
    });
    group.finish();
    store.close().unwrap();
}

/// Opening a store after a crash: the head's samples are replayed from the log. The head holds
/// its most, `max_head_samples` (300,000 by default), as it does just before a seal. This is what
/// the packaged units' start timeout has to allow for (docs/jetson.md).
fn recovery(c: &mut Criterion) {
    let crashed = bench_dir();
    let options = Options::default();
    let head = options.max_head_samples - 1;
    let store = Store::open(crashed.path().join("crashed.redb"), options).expect("store");
    let series = 300;
    let start = 1_795_219_200_000i64;
    let mut batch = WriteBatch::with_capacity(head);
    for s in 0..series {
        let id = store
            .series_id(
                &SeriesKey::parse(&format!("jetson_rail_power_watts{{rail=\"r{s}\"}}")).unwrap(),
            )
            .unwrap();
        for i in 0..(head / series) as i64 {
            batch.sample(
                id,
                start + i * 1000,
                ((i * 31 + s as i64) % 977) as f64 / 10.0,
            );
        }
    }
    store.write(batch).unwrap();
    store.sync().unwrap();
    // A crash: the log is on disk, the head was never sealed, nothing is closed.
    std::mem::forget(store);

    let mut group = c.benchmark_group("store");
    group.sample_size(10);
    group.throughput(Throughput::Elements(head as u64));
    group.bench_function("recover/head-300k", |b| {
        b.iter_with_setup(
            || {
                let copy = bench_dir();
                for entry in std::fs::read_dir(crashed.path()).unwrap() {
                    let entry = entry.unwrap();
                    std::fs::copy(entry.path(), copy.path().join(entry.file_name())).unwrap();
                }
                copy
            },
            |copy| {
                let store =
                    Store::open(copy.path().join("crashed.redb"), Options::default()).unwrap();
                let points = store
                    .query_raw(
                        &Selector::parse(r#"jetson_rail_power_watts{rail="r7"}"#).unwrap(),
                        0,
                        i64::MAX,
                    )
                    .unwrap();
                assert_eq!(
                    points[0].points.len(),
                    head / series,
                    "every replayed sample is back"
                );
                store.close().unwrap();
                copy
            },
        )
    });
    group.finish();
}

criterion_group!(benches, import, queries, recovery);
criterion_main!(benches);
