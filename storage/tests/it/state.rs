//! The state tables against a `BTreeMap` model: puts, deletions, seals and reopens in any order
//! read back the same, and entries put and deleted within one head do not stay in memory.

use std::collections::BTreeMap;

use outpost_storage::{StateTable, Store, WriteBatch};
use proptest::prelude::*;

use crate::open;

const TABLES: [StateTable; 2] = [StateTable::NotificationQueue, StateTable::AlertState];

type Model = BTreeMap<(usize, String), Vec<u8>>;

#[derive(Debug, Clone)]
enum Op {
    Put(usize, u8, u8),
    Delete(usize, u8),
    /// Puts `n` fresh keys of a table, deleting each older than the last `keep`: a bounded
    /// ring of kept lines, as the agent keeps log lines.
    Churn {
        table: usize,
        n: usize,
        keep: usize,
    },
    Seal,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..TABLES.len(), 0u8..12, any::<u8>()).prop_map(|(t, k, v)| Op::Put(t, k, v)),
        4 => (0..TABLES.len(), 0u8..12).prop_map(|(t, k)| Op::Delete(t, k)),
        2 => (0..TABLES.len(), 1usize..2_500, 0usize..40)
            .prop_map(|(table, n, keep)| Op::Churn { table, n, keep }),
        1 => Just(Op::Seal),
        1 => Just(Op::Reopen),
    ]
}

fn key(k: u8) -> String {
    format!("k/{k:02}")
}

/// Applies a churn to the store and the model; `next` numbers the fresh keys across calls.
fn churn(
    store: &Store,
    model: &mut Model,
    (table, n, keep): (usize, usize, usize),
    next: &mut u64,
) {
    let mut batch = WriteBatch::default();
    for _ in 0..n {
        let ring = format!("ring/{next:010}");
        batch.put_state(TABLES[table], &ring, next.to_le_bytes().to_vec());
        model.insert((table, ring), next.to_le_bytes().to_vec());
        if *next >= keep as u64 {
            let old = format!("ring/{:010}", *next - keep as u64);
            batch.delete_state(TABLES[table], &old);
            model.remove(&(table, old));
        }
        *next += 1;
        // Small batches, as the agent writes them.
        if batch.len() >= 64 {
            store.write(std::mem::take(&mut batch)).unwrap();
        }
    }
    store.write(batch).unwrap();
}

fn check(store: &Store, model: &Model) {
    for (t, table) in TABLES.iter().enumerate() {
        let got = store.state_list(*table, "").unwrap();
        let want: Vec<(String, Vec<u8>)> = model
            .iter()
            .filter(|((mt, _), _)| *mt == t)
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect();
        assert_eq!(got, want, "list of {table:?}");
        for k in 0..12 {
            assert_eq!(
                store.state_get(*table, &key(k)).unwrap(),
                model.get(&(t, key(k))).cloned(),
                "{table:?} {}",
                key(k)
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn any_order_of_state_writes_matches_the_model(ops in proptest::collection::vec(op(), 1..30)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let mut store = open(&path);
        let mut model = Model::new();
        let mut next = 0u64;
        for op in ops {
            match op {
                Op::Put(t, k, v) => {
                    let mut batch = WriteBatch::default();
                    batch.put_state(TABLES[t], key(k), vec![v]);
                    store.write(batch).unwrap();
                    model.insert((t, key(k)), vec![v]);
                }
                Op::Delete(t, k) => {
                    let mut batch = WriteBatch::default();
                    batch.delete_state(TABLES[t], key(k));
                    store.write(batch).unwrap();
                    model.remove(&(t, key(k)));
                }
                Op::Churn { table, n, keep } => churn(&store, &mut model, (table, n, keep), &mut next),
                Op::Seal => store.seal().unwrap(),
                Op::Reopen => {
                    store.close().unwrap();
                    store = open(&path);
                }
            }
            check(&store, &model);
        }
        store.close().unwrap();
        check(&open(&path), &model);
    }
}

#[test]
fn entries_put_and_deleted_within_one_head_do_not_wait_in_memory_for_the_seal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ring.redb");
    let store = open(&path);
    let mut model = Model::new();
    // Sealed entries, then deleted in the head: these deletions must stay until the seal.
    let mut batch = WriteBatch::default();
    for k in 0..10 {
        batch.put_state(TABLES[0], key(k), vec![k]);
    }
    store.write(batch).unwrap();
    store.seal().unwrap();
    let mut batch = WriteBatch::default();
    for k in 0..10 {
        batch.delete_state(TABLES[0], key(k));
    }
    store.write(batch).unwrap();
    // A quarter of an hour of kept log lines at 200 a second, 100 kept.
    let mut next = 0;
    churn(&store, &mut model, (0, 180_000, 100), &mut next);
    let in_head = store.stats().unwrap().head_state_writes;
    assert!(
        in_head < 2_500,
        "{in_head} state writes wait for the seal, for 110 entries that matter"
    );
    check(&store, &model);
    // The same from the log after a crash-like reopen (no seal on the way), and after a seal.
    drop(store);
    let store = open(&path);
    check(&store, &model);
    store.seal().unwrap();
    check(&store, &model);
}

#[test]
fn deletions_stay_right_while_seals_run_beside_the_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("concurrent.redb");
    let store = std::sync::Arc::new(open(&path));
    let writer = {
        let store = store.clone();
        std::thread::spawn(move || {
            let mut model = Model::new();
            let mut next = 0;
            for round in 0..40u8 {
                churn(&store, &mut model, (0, 500, 30), &mut next);
                let mut batch = WriteBatch::default();
                batch.put_state(TABLES[1], key(round % 12), vec![round]);
                batch.delete_state(TABLES[1], key((round + 5) % 12));
                store.write(batch).unwrap();
                model.insert((1, key(round % 12)), vec![round]);
                model.remove(&(1, key((round + 5) % 12)));
            }
            model
        })
    };
    while !writer.is_finished() {
        store.seal().unwrap();
    }
    let model = writer.join().unwrap();
    check(&store, &model);
    let store = std::sync::Arc::into_inner(store).unwrap();
    store.close().unwrap();
    check(&open(&path), &model);
}

#[test]
fn state_writes_past_the_byte_bound_seal_the_head_rather_than_wait_for_the_hour() {
    // A hub that keeps its samples in another engine writes state only: a fleet's first batches
    // define every series of every device (100,000 keys here), and the head held them all
    // until the hourly seal.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("defs.redb");
    let bound = 1 << 20;
    let options = outpost_storage::Options {
        max_head_state_bytes: bound,
        ..crate::test_options()
    };
    let store = Store::open(&path, options.clone()).unwrap();
    let mut model = Model::new();
    let value = |n: u64| format!("node_cpu_seconds_total{{cpu=\"{n}\",instance=\"dev-{n:05}\"}}");
    let mut most_in_head = 0;
    for chunk in 0..100u64 {
        let mut batch = WriteBatch::default();
        for n in chunk * 1_000..(chunk + 1) * 1_000 {
            let key = format!("series/dev-{:05}/{n}", n / 100);
            batch.put_state(TABLES[0], &key, value(n).into_bytes());
            model.insert((0, key), value(n).into_bytes());
        }
        store.write(batch).unwrap();
        most_in_head = most_in_head.max(store.stats().unwrap().head_state_writes);
    }
    // Each write is at least its key and value (some 70 bytes): the bound, plus the batch
    // that crossed it, plus one taken while the seal ran.
    let most_allowed = bound as u64 / 70 + 2 * 1_000;
    assert!(
        most_in_head <= most_allowed,
        "{most_in_head} state writes in the head at once (at most {most_allowed} fit the bound)"
    );
    check(&store, &model);
    drop(store);
    let store = Store::open(&path, options).unwrap();
    check(&store, &model);
}

#[test]
fn a_megabyte_of_writes_reaches_the_log_before_the_flush_interval() {
    // A hub receiving a fleet's first batches defines a hundred thousand series in seconds:
    // held until the flush, they were in memory three times (head, record, its encoding).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("early.redb");
    // A clock that never moves: no flush, sync or seal falls due.
    let options = outpost_storage::Options {
        clock: std::sync::Arc::new(crate::ManualClock::default()),
        ..crate::test_options()
    };
    let store = Store::open(&path, options.clone()).unwrap();
    let mut model = Model::new();
    for n in 0..1_500u32 {
        let mut batch = WriteBatch::default();
        let key = format!("k/{n:05}");
        batch.put_state(TABLES[1], &key, vec![n as u8; 1_000]);
        model.insert((1, key), vec![n as u8; 1_000]);
        store.write(batch).unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while store.stats().unwrap().log_bytes_written_since_open == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "1.5 MB of writes, none of them in the log after 30 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // What a crash now leaves: the files as they are, the process's memory gone.
    let copy = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), copy.path().join(entry.file_name())).unwrap();
    }
    let reopened = Store::open(copy.path().join("early.redb"), crate::test_options()).unwrap();
    let kept = reopened.state_list(TABLES[1], "").unwrap();
    // At least the first megabyte's worth (some 1,080 bytes each, as the store counts them).
    assert!(
        kept.len() >= 900,
        "{} of 1,500 entries survive a crash",
        kept.len()
    );
    for (key, value) in &kept {
        assert_eq!(model.get(&(1, key.clone())), Some(value), "{key}");
    }
    drop(store);
}
