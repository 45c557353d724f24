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
