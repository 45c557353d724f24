//! Age retention is measured against trusted time, never against a sample: no write of any
//! timestamp, and no forward step of the caller's wall clock, removes data that is inside its
//! retention.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use outpost_storage::{ManualWallClock, Options, Retention, Store, Tier, WriteBatch};
use proptest::prelude::*;

use crate::{key, selector, ManualClock};

const DAY: i64 = 86_400_000;
/// The trusted "now" of these tests: 2026-12-01.
const NOW: i64 = 1_796_083_200_000;
const SERIES: [&str; 3] = ["a", r#"b{core="0"}"#, r#"b{core="1"}"#];

fn retention() -> Retention {
    Retention {
        raw: Some(Duration::from_secs(2 * 86_400)),
        minute: Some(Duration::from_secs(5 * 86_400)),
        hour: Some(Duration::from_secs(20 * 86_400)),
    }
}

struct Clocks {
    wall: Arc<ManualWallClock>,
    mono: Arc<ManualClock>,
}

impl Clocks {
    fn new() -> Self {
        Clocks {
            wall: Arc::new(ManualWallClock::new(NOW)),
            mono: Arc::new(ManualClock::default()),
        }
    }

    fn options(&self) -> Options {
        Options {
            retention: retention(),
            wall_clock: Some(self.wall.clone()),
            clock: self.mono.clone(),
            ..crate::test_options()
        }
    }
}

/// Any timestamp, with the absurd ones (the extremes, nanoseconds, seconds, zero) well
/// represented.
fn any_timestamp() -> impl Strategy<Value = i64> {
    prop_oneof![
        1 => Just(i64::MAX),
        1 => Just(i64::MIN),
        1 => Just(0i64),
        1 => Just(i64::MAX - 1),
        1 => Just(NOW * 1_000_000 / 1_000),
        1 => Just(NOW / 1_000),
        2 => any::<i64>(),
        2 => (-400 * DAY..400 * DAY).prop_map(|d| NOW + d),
    ]
}

/// What the store holds inside the raw tier's retention, where `now` is the trusted time.
fn raw_points(store: &Store, name: &str) -> BTreeMap<i64, u64> {
    store
        .query_raw(&selector(&key(name).to_string()), i64::MIN, i64::MAX)
        .unwrap()
        .into_iter()
        .filter(|s| s.series == key(name))
        .flat_map(|s| s.points)
        .map(|(t, v)| (t, v.to_bits()))
        .collect()
}

#[derive(Debug, Clone)]
enum Op {
    /// One sample: series index, timestamp, value.
    Write(usize, i64, f64),
    Seal,
    Reopen,
    /// The monotonic clock moves on (the wall clock stays: it is the trusted "now").
    Wait(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..SERIES.len(), any_timestamp(), -100i32..100)
            .prop_map(|(s, t, v)| Op::Write(s, t, f64::from(v))),
        2 => Just(Op::Seal),
        1 => Just(Op::Reopen),
        1 => (0u64..3 * 86_400_000).prop_map(Op::Wait),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Against a model of the samples: after any sequence of single-sample writes, seals and
    /// reopens, every sample inside its retention by the trusted clock is still there, with
    /// the value last written.
    #[test]
    fn no_write_of_any_timestamp_removes_data_inside_retention(
        ops in proptest::collection::vec(op(), 1..40)
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("retention.redb");
        let clocks = Clocks::new();
        let mut store = Store::open(&path, clocks.options()).unwrap();
        // A day of history, one sample a minute per series, all inside raw retention.
        let mut model: Vec<BTreeMap<i64, u64>> = vec![BTreeMap::new(); SERIES.len()];
        let mut history = WriteBatch::default();
        for (index, name) in SERIES.iter().enumerate() {
            let id = store.series_id(&key(name)).unwrap();
            for minute in 0..1_440 {
                let t = NOW - DAY + minute * 60_000;
                history.sample(id, t, minute as f64);
                model[index].insert(t, (minute as f64).to_bits());
            }
        }
        store.write(history).unwrap();
        store.seal().unwrap();
        let raw_cut = NOW - 2 * DAY;
        for op in ops {
            match op {
                Op::Write(series, t, v) => {
                    let id = store.series_id(&key(SERIES[series])).unwrap();
                    let mut batch = WriteBatch::default();
                    batch.sample(id, t, v);
                    store.write(batch).unwrap();
                    model[series].insert(t, v.to_bits());
                }
                Op::Seal => store.seal().unwrap(),
                Op::Reopen => {
                    store.close().unwrap();
                    store = Store::open(&path, clocks.options()).unwrap();
                }
                Op::Wait(ms) => clocks.mono.advance(Duration::from_millis(ms)),
            }
            for (index, name) in SERIES.iter().enumerate() {
                let got = raw_points(&store, name);
                for (t, bits) in model[index].range(raw_cut..) {
                    prop_assert_eq!(
                        got.get(t), Some(bits),
                        "{} at {} inside raw retention", name, t
                    );
                }
            }
        }
        store.seal().unwrap();
        // The rollups of the history's day are intact too.
        let minutes = store
            .query_rollups(&selector("a"), Tier::Minute, NOW - DAY, NOW)
            .unwrap();
        let expected: std::collections::BTreeSet<i64> = model[0]
            .range(NOW - DAY..=NOW)
            .map(|(t, _)| t.div_euclid(60_000) * 60_000)
            .collect();
        prop_assert_eq!(minutes[0].1.len(), expected.len());
    }
}

/// The defect this guards against: one far-future sample made every other window "expired".
#[test]
fn one_far_future_sample_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let clocks = Clocks::new();
    let store = Store::open(dir.path().join("future.redb"), clocks.options()).unwrap();
    let history: Vec<(&str, i64, f64)> = (0..2_000)
        .map(|i| ("temp", NOW - i * 30_000, i as f64))
        .collect();
    crate::write(&store, &history);
    store.seal().unwrap();
    for evil in [i64::MAX, NOW * 1_000_000, NOW + 365 * DAY] {
        crate::write(&store, &[("evil", evil, 1.0)]);
        store.seal().unwrap();
        assert_eq!(
            raw_points(&store, "temp").len(),
            2_000,
            "after a sample at {evil}"
        );
    }
}

/// A wall clock stepped forward by a year (with the samples it stamps) moves retention's "now"
/// only as fast as real time passes.
#[test]
fn a_wall_clock_stepped_forward_deletes_nothing_early() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("step.redb");
    let clocks = Clocks::new();
    let store = Store::open(&path, clocks.options()).unwrap();
    let history: Vec<(&str, i64, f64)> = (0..1_000)
        .map(|i| ("temp", NOW - i * 60_000, i as f64))
        .collect();
    crate::write(&store, &history);
    store.seal().unwrap();
    let stepped = NOW + 365 * DAY;
    clocks.wall.set(stepped);
    clocks.mono.advance(Duration::from_secs(60));
    crate::write(&store, &[("temp", stepped, 1.0)]);
    store.seal().unwrap();
    assert_eq!(raw_points(&store, "temp").len(), 1_001);
    // Across a restart too: the last retention time is kept in the file.
    store.close().unwrap();
    let store = Store::open(&path, clocks.options()).unwrap();
    crate::write(&store, &[("temp", stepped + 1_000, 2.0)]);
    store.seal().unwrap();
    assert_eq!(raw_points(&store, "temp").len(), 1_002);
    // Real time passing does expire data: three days later the history is past raw retention.
    clocks.mono.advance(Duration::from_secs(3 * 86_400));
    crate::write(&store, &[("temp", stepped + 2_000, 3.0)]);
    store.seal().unwrap();
    assert_eq!(raw_points(&store, "temp").len(), 3);
}

/// Without a trusted clock the store does no age retention at all: a library caller who passes
/// none cannot lose data to a sample's timestamp.
#[test]
fn without_a_wall_clock_only_the_budget_removes_data() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        retention: retention(),
        ..crate::test_options()
    };
    let store = Store::open(dir.path().join("noclock.redb"), options).unwrap();
    crate::write(
        &store,
        &[("temp", NOW - 100 * DAY, 1.0), ("temp", NOW, 2.0)],
    );
    store.seal().unwrap();
    assert_eq!(raw_points(&store, "temp").len(), 2);
}
