//! The store against a `BTreeMap` model: any order of writes, replacements, seals and reopens
//! gives the same raw points, rollups and stepped queries.

use std::collections::BTreeMap;

use outpost_storage::codec::add_decimal;
use outpost_storage::{Aggregation, Rollup, Tier, WriteBatch};
use proptest::prelude::*;

use crate::{key, open, selector, MODEL_SERIES as SERIES};

#[derive(Debug, Clone)]
enum Op {
    /// Samples: series index, timestamp, value.
    Write(Vec<(usize, i64, f64)>),
    Seal,
    Reopen,
}

fn value() -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => (-5_000i64..5_000, 0u32..3).prop_map(|(i, s)| i as f64 / 10f64.powi(s as i32)),
        1 => any::<u64>().prop_map(f64::from_bits),
        1 => Just(-0.0),
    ]
}

fn timestamp() -> impl Strategy<Value = i64> {
    // About nine hours around the epoch, on a coarse grid so that replacements happen, crossing
    // raw-chunk windows, hours and minutes, and negative times.
    (-400i64..3_600).prop_map(|k| k * 8_999)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => proptest::collection::vec((0..SERIES.len(), timestamp(), value()), 1..60).prop_map(Op::Write),
        1 => Just(Op::Seal),
        1 => Just(Op::Reopen),
    ]
}

type Model = BTreeMap<usize, BTreeMap<i64, f64>>;

fn bucket(ts: i64, width: i64) -> i64 {
    ts.div_euclid(width) * width
}

/// Rollups of the model's samples, built the obvious way: fold each bucket's samples in order.
fn model_rollups(samples: &BTreeMap<i64, f64>, width: i64) -> Vec<(i64, Rollup)> {
    let mut out: BTreeMap<i64, Rollup> = BTreeMap::new();
    for (&ts, &v) in samples {
        out.entry(bucket(ts, width))
            .and_modify(|r| r.merge(&Rollup::of(v)))
            .or_insert_with(|| Rollup::of(v));
    }
    out.into_iter().collect()
}

fn model_coarsen(points: &[(i64, Rollup)], width: i64) -> Vec<(i64, Rollup)> {
    let mut out: BTreeMap<i64, Rollup> = BTreeMap::new();
    for (start, r) in points {
        out.entry(bucket(*start, width))
            .and_modify(|acc| acc.merge(r))
            .or_insert(*r);
    }
    out.into_iter().collect()
}

fn model_value(r: &Rollup, aggregation: Aggregation) -> f64 {
    match aggregation {
        Aggregation::Avg => r.sum / r.count as f64,
        Aggregation::Min => r.min,
        Aggregation::Max => r.max,
        Aggregation::Sum => r.sum,
        Aggregation::Count => r.count as f64,
        _ => r.last,
    }
}

/// [`model_rate`] over the buckets of `from..=to`, from the points in and just around them.
fn model_rate_between(points: &[(i64, f64)], from: i64, to: i64, step: i64) -> Vec<(i64, f64)> {
    let first = bucket(from, step);
    let lookback: Vec<(i64, f64)> = points
        .iter()
        .copied()
        .filter(|(t, _)| *t >= first - step && *t < bucket(to, step) + step)
        .collect();
    model_rate(&lookback, step)
        .into_iter()
        .filter(|(b, _)| *b >= first && *b <= to)
        .collect()
}

fn model_rate(samples: &[(i64, f64)], step: i64) -> Vec<(i64, f64)> {
    let mut out: BTreeMap<i64, f64> = BTreeMap::new();
    for pair in samples.windows(2) {
        let (prev, (ts, v)) = (pair[0].1, pair[1]);
        let increase = if v >= prev { v - prev } else { v };
        *out.entry(bucket(ts, step)).or_insert(0.0) += increase;
    }
    out.into_iter()
        .map(|(b, inc)| (b, inc / (step as f64 / 1000.0)))
        .collect()
}

fn bits(points: &[(i64, f64)]) -> Vec<(i64, u64)> {
    points.iter().map(|(t, v)| (*t, v.to_bits())).collect()
}

fn check(store: &outpost_storage::Store, model: &Model) {
    for (index, name) in SERIES.iter().enumerate() {
        let samples = model.get(&index).cloned().unwrap_or_default();
        let exact = selector(&key(name).to_string());
        let raw = store.query_raw(&exact, i64::MIN, i64::MAX).unwrap();
        let got: Vec<(i64, f64)> = raw.first().map(|s| s.points.clone()).unwrap_or_default();
        let want: Vec<(i64, f64)> = samples.iter().map(|(t, v)| (*t, *v)).collect();
        assert_eq!(bits(&got), bits(&want), "raw points of {name}");

        let minutes = model_rollups(&samples, 60_000);
        let hours = model_coarsen(&minutes, 3_600_000);
        for (tier, expected) in [(Tier::Minute, &minutes), (Tier::Hour, &hours)] {
            let stored = store
                .query_rollups(&exact, tier, i64::MIN / 2, i64::MAX / 2)
                .unwrap();
            let got = stored.first().map(|s| s.1.clone()).unwrap_or_default();
            assert_eq!(got.len(), expected.len(), "{tier:?} rollups of {name}");
            for (g, e) in got.iter().zip(expected.iter()) {
                assert_eq!(g.0, e.0, "{tier:?} bucket of {name}");
                assert!(
                    g.1.bits_eq(&e.1),
                    "{tier:?} rollup of {name} at {}: {:?} != {:?}",
                    g.0,
                    g.1,
                    e.1
                );
            }
        }

        let (from, to) = (-3_600_000, 40_000_000);
        let cases = [
            (90_000, Aggregation::Avg),
            (90_000, Aggregation::Max),
            (300_000, Aggregation::Sum),
            (300_000, Aggregation::Count),
            (300_000, Aggregation::Min),
            (7_200_000, Aggregation::Last),
            (7_200_000, Aggregation::Avg),
        ];
        for (step, aggregation) in cases {
            let points = if step % 60_000 == 0 {
                // Answered from the minute or hour tier: merged minute rollups.
                let base = if step % 3_600_000 == 0 {
                    &hours
                } else {
                    &minutes
                };
                model_coarsen(base, step)
            } else {
                model_rollups(&samples, step)
            };
            let want: Vec<(i64, f64)> = points
                .iter()
                .filter(|(b, _)| *b >= bucket(from, step) && *b <= to)
                .map(|(b, r)| (*b, model_value(r, aggregation)))
                .collect();
            let got = store
                .query_step(&exact, from, to, step, aggregation)
                .unwrap();
            let got: Vec<(i64, f64)> = got.first().map(|s| s.points.clone()).unwrap_or_default();
            assert_eq!(
                bits(&got),
                bits(&want),
                "{aggregation} at step {step} of {name}"
            );
        }

        // Rate from raw samples (90 s) and from the minute tier's last values (5 m).
        let raw_points: Vec<(i64, f64)> = samples.iter().map(|(t, v)| (*t, *v)).collect();
        let got = |step| {
            let got = store
                .query_step(&exact, from, to, step, Aggregation::Rate)
                .unwrap();
            bits(&got.first().map(|s| s.points.clone()).unwrap_or_default())
        };
        let want = |points: &[(i64, f64)], step| bits(&model_rate_between(points, from, to, step));
        assert_eq!(got(90_000), want(&raw_points, 90_000), "raw rate of {name}");
        let lasts: Vec<(i64, f64)> = minutes.iter().map(|(b, r)| (*b, r.last)).collect();
        assert_eq!(got(300_000), want(&lasts, 300_000), "tier rate of {name}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn any_order_of_writes_matches_the_model(ops in proptest::collection::vec(op(), 1..25)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.redb");
        let mut store = open(&path);
        let mut model: Model = BTreeMap::new();
        for op in ops {
            match op {
                Op::Write(samples) => {
                    let mut batch = WriteBatch::default();
                    for (series, ts, v) in samples {
                        let id = store.series_id(&key(SERIES[series])).unwrap();
                        batch.sample(id, ts, v);
                        model.entry(series).or_default().insert(ts, v);
                    }
                    store.write(batch).unwrap();
                }
                Op::Seal => store.seal().unwrap(),
                Op::Reopen => {
                    store.close().unwrap();
                    store = open(&path);
                }
            }
            check(&store, &model);
        }
        store.close().unwrap();
        let store = open(&path);
        check(&store, &model);
    }
}

#[test]
fn decimal_sums_stay_exact_in_rollups() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("sums.redb"));
    let samples: Vec<(&str, i64, f64)> = (0..60).map(|i| ("cpu", i * 1000, 0.1)).collect();
    crate::write(&store, &samples);
    store.seal().unwrap();
    let sum = store
        .query_step(&selector("cpu"), 0, 59_999, 60_000, Aggregation::Sum)
        .unwrap();
    assert_eq!(sum[0].points, vec![(0, 6.0)]);
    let naive: f64 = (0..60).map(|_| 0.1).sum();
    assert_ne!(naive, 6.0, "binary floating point would not give 6 here");
    assert_eq!(add_decimal(0.1, 0.2), 0.3);
}

#[test]
fn direct_rollup_writes_answer_until_raw_data_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rollups.redb");
    let store = open(&path);
    let id = store.series_id(&key("temp")).unwrap();
    let mut batch = WriteBatch::default();
    let hour_rollup = Rollup {
        min: 1.0,
        max: 9.0,
        sum: 50.0,
        count: 10,
        last: 3.0,
    };
    batch.rollup(id, Tier::Hour, 7_200_000, hour_rollup);
    batch.rollup(id, Tier::Minute, 60_000, Rollup::of(4.0));
    store.write(batch).unwrap();
    let check_hour = |store: &outpost_storage::Store| {
        let got = store
            .query_step(
                &selector("temp"),
                7_200_000,
                7_200_000,
                3_600_000,
                Aggregation::Max,
            )
            .unwrap();
        assert_eq!(got[0].points, vec![(7_200_000, 9.0)]);
    };
    check_hour(&store);
    store.seal().unwrap();
    check_hour(&store);
    store.close().unwrap();
    let store = open(&path);
    check_hour(&store);
    // The minute write also made its hour, from the minute tier.
    let hour0 = store
        .query_step(&selector("temp"), 0, 0, 3_600_000, Aggregation::Avg)
        .unwrap();
    assert_eq!(hour0[0].points, vec![(0, 4.0)]);
    // Raw samples in that minute recompute it.
    crate::write(&store, &[("temp", 61_000, 10.0), ("temp", 62_000, 20.0)]);
    let minute = store
        .query_step(&selector("temp"), 60_000, 60_000, 60_000, Aggregation::Avg)
        .unwrap();
    assert_eq!(minute[0].points, vec![(60_000, 15.0)]);
    store.seal().unwrap();
    let minute = store
        .query_step(&selector("temp"), 60_000, 60_000, 60_000, Aggregation::Avg)
        .unwrap();
    assert_eq!(minute[0].points, vec![(60_000, 15.0)]);
}

#[test]
fn async_callers_write_and_sync_without_a_runtime_of_ours() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("async.redb"));
    let id = store.series_id(&key("up")).unwrap();
    pollster::block_on(async {
        let mut batch = WriteBatch::default();
        batch.sample(id, 5, 1.0);
        store.write_async(batch).await.unwrap();
        store.sync_async().await.unwrap();
    });
    assert_eq!(
        crate::raw_bits(&store, "up"),
        vec![("up".to_string(), vec![(5, 1f64.to_bits())])]
    );
}

#[test]
fn state_tables_commit_with_samples_and_survive_reopen() {
    use outpost_storage::StateTable;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let store = open(&path);
    let id = store.series_id(&key("up")).unwrap();
    let mut batch = WriteBatch::default();
    batch.sample(id, 1, 1.0);
    batch.put_state(StateTable::SyncCursor, "cursor", b"42".to_vec());
    batch.put_state(StateTable::AlertState, "cpu", b"firing".to_vec());
    store.write(batch).unwrap();
    assert_eq!(
        store.state_get(StateTable::SyncCursor, "cursor").unwrap(),
        Some(b"42".to_vec())
    );
    let mut batch = WriteBatch::default();
    batch.delete_state(StateTable::AlertState, "cpu");
    store.write(batch).unwrap();
    assert_eq!(
        store.state_get(StateTable::AlertState, "cpu").unwrap(),
        None
    );
    store.close().unwrap();
    let store = open(&path);
    assert_eq!(
        store.state_get(StateTable::SyncCursor, "cursor").unwrap(),
        Some(b"42".to_vec())
    );
    assert_eq!(
        store.state_get(StateTable::AlertState, "cpu").unwrap(),
        None
    );
    assert_eq!(
        store.state_get(StateTable::DeviceRegistry, "x").unwrap(),
        None
    );
}

#[test]
fn retention_drops_old_windows_per_tier() {
    use outpost_storage::{Options, Retention};
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let day = 86_400_000i64;
    let options = Options {
        retention: Retention {
            raw: Some(Duration::from_secs(2 * 86_400)),
            minute: Some(Duration::from_secs(5 * 86_400)),
            hour: None,
        },
        wall_clock: Some(std::sync::Arc::new(outpost_storage::ManualWallClock::new(
            10 * day,
        ))),
        ..crate::test_options()
    };
    let store = outpost_storage::Store::open(dir.path().join("retention.redb"), options).unwrap();
    // One sample a minute for ten days.
    let samples: Vec<(&str, i64, f64)> = (0..10 * 1440)
        .map(|m| ("temp", m * 60_000, (m % 50) as f64))
        .collect();
    crate::write(&store, &samples);
    store.seal().unwrap();
    let newest = 10 * day - 60_000;
    let raw = store
        .query_raw(&selector("temp"), i64::MIN, i64::MAX)
        .unwrap();
    let oldest_raw = raw[0].points[0].0;
    // Whole two-hour windows older than two days before the newest sample are gone.
    assert!(
        oldest_raw >= newest - 2 * day - 2 * 3_600_000,
        "{oldest_raw}"
    );
    assert!(oldest_raw <= newest - 2 * day, "{oldest_raw}");
    let minutes = store
        .query_rollups(&selector("temp"), Tier::Minute, i64::MIN / 2, i64::MAX / 2)
        .unwrap();
    let oldest_minute = minutes[0].1[0].0;
    assert!(
        oldest_minute >= newest - 6 * day && oldest_minute <= newest - 5 * day,
        "{oldest_minute}"
    );
    // The hour tier keeps everything: ten days of hours, each of sixty samples.
    let hours = store
        .query_step(
            &selector("temp"),
            0,
            10 * day,
            3_600_000,
            Aggregation::Count,
        )
        .unwrap();
    assert_eq!(hours[0].points.len(), 240);
    assert!(hours[0].points.iter().all(|p| p.1 == 60.0));
    let stats = store.stats().unwrap();
    assert_eq!(stats.raw_samples as usize, raw[0].points.len());
}

/// A device that was off the network for a year: everything it wrote before looks old, but
/// with a change feed, age retention waits until that data has been shipped.
#[test]
fn retention_by_age_spares_what_is_not_shipped_yet() {
    use outpost_storage::Options;
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let day = 86_400_000i64;
    let mono = Arc::new(crate::ManualClock::default());
    // A small head, so that the unshipped samples become backlog chunks at the seal rather than
    // being carried over in the head.
    let options = Options {
        track_changes: true,
        max_head_samples: 40,
        wall_clock: Some(Arc::new(outpost_storage::ManualWallClock::new(
            400 * day + 10_000,
        ))),
        clock: mono.clone(),
        ..crate::test_options()
    };
    let store = outpost_storage::Store::open(dir.path().join("spare.redb"), options).unwrap();
    let old: Vec<(&str, i64, f64)> = (0..60).map(|s| ("temp", s * 1_000, s as f64)).collect();
    crate::write(&store, &old);
    store.seal().unwrap();
    mono.advance(std::time::Duration::from_secs(400 * 86_400));
    crate::write(&store, &[("temp", 400 * day, 1.0)]);
    store.seal().unwrap();
    let raw = || {
        store
            .query_raw(&selector("temp"), i64::MIN, i64::MAX)
            .unwrap()[0]
            .points
            .len()
    };
    assert_eq!(raw(), 61, "400 days past raw retention, but never shipped");
    // Shipped: the next seal applies retention.
    let live = store.live_since(None, usize::MAX);
    let chunks = store.dirty_chunks(usize::MAX, &Default::default()).unwrap();
    assert!(!chunks.is_empty());
    store.confirm_chunks(&chunks.iter().map(|c| c.receipt()).collect::<Vec<_>>());
    store.confirm_live(&live.mark);
    crate::write(&store, &[("temp", 400 * day + 1_000, 2.0)]);
    store.seal().unwrap();
    assert_eq!(raw(), 2);
}

#[test]
fn the_backlog_age_comes_from_raw_windows_not_rollup_windows() {
    use outpost_storage::Options;
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        track_changes: true,
        max_head_samples: 40,
        ..crate::test_options()
    };
    let store = outpost_storage::Store::open(dir.path().join("age.redb"), options).unwrap();
    // Samples 20 days into a 30-day hour window and half an hour into a 2-hour raw window.
    let start = 20 * 86_400_000 + 1_800_000;
    let samples: Vec<(&str, i64, f64)> = (0..60)
        .map(|s| ("temp", start + s * 1_000, s as f64))
        .collect();
    crate::write(&store, &samples);
    store.seal().unwrap();
    let backlog = store.backlog().unwrap();
    assert!(backlog.dirty_chunks >= 3, "raw, minute and hour chunks");
    let oldest = backlog.oldest_ms.unwrap();
    assert!(
        oldest >= start - 2 * 3_600_000 && oldest <= start,
        "oldest unshipped data at {oldest}, written from {start}"
    );
}

#[test]
fn a_backup_of_an_open_store_holds_everything_written_before_it() {
    use outpost_storage::{StateTable, WriteBatch};
    let dir = tempfile::tempdir().unwrap();
    let store =
        outpost_storage::Store::open(dir.path().join("live.redb"), crate::test_options()).unwrap();
    let before: Vec<(&str, i64, f64)> = (0..500).map(|s| ("temp", s * 1_000, s as f64)).collect();
    crate::write(&store, &before);
    let mut state = WriteBatch::default();
    state.put_state(StateTable::DeviceRegistry, "k", b"v".to_vec());
    store.write(state).unwrap();
    let copy = dir.path().join("copy.redb");
    let bytes = store.backup(&copy).unwrap();
    assert_eq!(bytes, std::fs::metadata(&copy).unwrap().len());
    // Written after the backup: in the store, not in the copy.
    crate::write(&store, &[("temp", 600_000, 1.0)]);
    let backup = outpost_storage::Store::open(&copy, crate::test_options()).unwrap();
    let points = &backup
        .query_raw(&selector("temp"), i64::MIN, i64::MAX)
        .unwrap()[0]
        .points;
    assert_eq!(points.len(), 500);
    assert_eq!(points[499], (499_000, 499.0));
    assert_eq!(
        backup.state_get(StateTable::DeviceRegistry, "k").unwrap(),
        Some(b"v".to_vec())
    );
    assert_eq!(
        store
            .query_raw(&selector("temp"), i64::MIN, i64::MAX)
            .unwrap()[0]
            .points
            .len(),
        501
    );
}

#[test]
fn state_lists_merge_the_head_over_sealed_entries_by_prefix() {
    use outpost_storage::StateTable;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("list.redb");
    let store = open(&path);
    let put = |pairs: &[(&str, &str)], deletes: &[&str]| {
        let mut batch = WriteBatch::default();
        for (k, v) in pairs {
            batch.put_state(StateTable::NotificationQueue, *k, v.as_bytes().to_vec());
        }
        for k in deletes {
            batch.delete_state(StateTable::NotificationQueue, *k);
        }
        store.write(batch).unwrap();
    };
    put(
        &[("q/2", "b"), ("q/1", "a"), ("r/1", "other"), ("q/3", "c")],
        &[],
    );
    store.seal().unwrap();
    // After the seal: one overwritten, one deleted, one added, all still in the head.
    put(&[("q/2", "B"), ("q/4", "d")], &["q/1"]);
    let list = |store: &outpost_storage::Store| {
        store
            .state_list(StateTable::NotificationQueue, "q/")
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8(v).unwrap()))
            .collect::<Vec<_>>()
    };
    let expected = vec![
        ("q/2".to_string(), "B".to_string()),
        ("q/3".to_string(), "c".to_string()),
        ("q/4".to_string(), "d".to_string()),
    ];
    assert_eq!(list(&store), expected);
    assert!(store
        .state_list(StateTable::AlertState, "")
        .unwrap()
        .is_empty());
    store.close().unwrap();
    let store = open(&path);
    assert_eq!(list(&store), expected, "after reopen");
    assert_eq!(
        store
            .state_list(StateTable::NotificationQueue, "")
            .unwrap()
            .len(),
        4
    );
}

#[test]
fn state_ranges_merge_the_head_over_sealed_entries_between_two_keys() {
    use outpost_storage::StateTable;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("range.redb");
    let store = open(&path);
    let write = |pairs: &[(&str, &str)], deletes: &[&str]| {
        let mut batch = WriteBatch::default();
        for (k, v) in pairs {
            batch.put_state(StateTable::AlertState, *k, v.as_bytes().to_vec());
        }
        for k in deletes {
            batch.delete_state(StateTable::AlertState, *k);
        }
        store.write(batch).unwrap();
    };
    write(
        &[("t/10", "a"), ("t/20", "b"), ("t/30", "c"), ("u/1", "x")],
        &[],
    );
    store.seal().unwrap();
    // In the head: one sealed entry deleted, one added inside the range, one added after it.
    write(&[("t/15", "d"), ("t/40", "e")], &["t/20"]);
    let range = |store: &outpost_storage::Store, from: &str, to: &str| {
        store
            .state_range(StateTable::AlertState, from, to)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect::<Vec<_>>()
    };
    assert_eq!(range(&store, "t/10", "t/30"), ["t/10", "t/15"]);
    assert_eq!(range(&store, "t/11", "t/4"), ["t/15", "t/30"]);
    assert_eq!(range(&store, "t/", "u/"), ["t/10", "t/15", "t/30", "t/40"]);
    assert!(range(&store, "t/30", "t/30").is_empty());
    // The first two from t/0: the deleted t/20 is not among them, and t/30 fills its place.
    let first = |store: &outpost_storage::Store, limit: usize| {
        store
            .state_range_first(StateTable::AlertState, "t/", "u/", limit)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect::<Vec<_>>()
    };
    assert_eq!(first(&store, 3), ["t/10", "t/15", "t/30"]);
    assert_eq!(first(&store, 1), ["t/10"]);
    let mut deletes = WriteBatch::default();
    deletes.delete_state(StateTable::AlertState, "t/10");
    deletes.delete_state(StateTable::AlertState, "t/15");
    store.write(deletes).unwrap();
    assert_eq!(first(&store, 1), ["t/30"], "past the head's deletions");
    write(&[("t/10", "a"), ("t/15", "d")], &[]);
    store.close().unwrap();
    let store = open(&path);
    assert_eq!(
        range(&store, "t/", "u/"),
        ["t/10", "t/15", "t/30", "t/40"],
        "after reopen"
    );
}

#[derive(Debug, Clone)]
enum StateStep {
    /// Writes of one batch: table index, key index, value (`None` deletes).
    Write(Vec<(usize, usize, Option<u8>)>),
    Seal,
    Reopen,
}

fn state_step() -> impl Strategy<Value = StateStep> {
    let write = (0..2usize, 0..6usize, proptest::option::of(any::<u8>()));
    prop_oneof![
        8 => proptest::collection::vec(write, 1..8).prop_map(StateStep::Write),
        1 => Just(StateStep::Seal),
        1 => Just(StateStep::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// The state tables against a map: any order of puts, deletes, rewrites of one key, seals
    /// and reopens reads back the last write of each key, by key, by prefix and by range.
    #[test]
    fn state_writes_read_back_as_the_last_write_of_each_key(
        steps in proptest::collection::vec(state_step(), 1..30)
    ) {
        use outpost_storage::StateTable;
        const TABLES: [StateTable; 2] = [StateTable::AlertState, StateTable::NotificationQueue];
        let key = |k: usize| format!("k/{k}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let mut store = open(&path);
        let mut model: [BTreeMap<String, Vec<u8>>; 2] = Default::default();
        for step in steps {
            match step {
                StateStep::Write(writes) => {
                    let mut batch = WriteBatch::default();
                    for (table, k, value) in writes {
                        match value {
                            Some(v) => {
                                batch.put_state(TABLES[table], key(k), vec![v; k + 1]);
                                model[table].insert(key(k), vec![v; k + 1]);
                            }
                            None => {
                                batch.delete_state(TABLES[table], key(k));
                                model[table].remove(&key(k));
                            }
                        }
                    }
                    store.write(batch).unwrap();
                }
                StateStep::Seal => store.seal().unwrap(),
                StateStep::Reopen => {
                    store.close().unwrap();
                    store = open(&path);
                }
            }
            for (table, expected) in TABLES.iter().zip(&model) {
                for k in 0..6 {
                    let value = store.state_get(*table, &key(k)).unwrap();
                    prop_assert_eq!(value.as_ref(), expected.get(&key(k)));
                }
                let all: Vec<_> = expected.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                prop_assert_eq!(&store.state_list(*table, "k/").unwrap(), &all);
                let first: Vec<_> = all.iter().filter(|(k, _)| k.as_str() >= "k/2").take(2).cloned().collect();
                prop_assert_eq!(store.state_range_first(*table, "k/2", "k/9", 2).unwrap(), first);
            }
        }
    }
}
