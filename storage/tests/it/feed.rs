//! The change feed against a subscriber that loses deliveries and acknowledgements: whatever
//! the interleaving of writes, seals, reopens and lost messages, once the feed is drained the
//! subscriber holds every sample the store holds, bit for bit.

use std::collections::BTreeMap;

use outpost_storage::codec::decode_chunk;
use outpost_storage::{DirtyChunk, HeadMark, LiveChanges, Options, Store, Tier};
use proptest::prelude::*;

use crate::{key, raw_bits, test_options, write, MODEL_SERIES as SERIES};

#[derive(Debug, Clone)]
enum Op {
    Write(Vec<(usize, i64, f64)>),
    Seal,
    Reopen,
    /// Read live data and backlog; deliver it or not, have it acknowledged or not.
    Ship {
        delivered: bool,
        confirmed: bool,
    },
    /// The sender's resend timer fires.
    Resend,
}

fn op() -> impl Strategy<Value = Op> {
    let sample = (
        0..SERIES.len(),
        // Twelve hours on a coarse grid: replacements, several raw windows, late writes.
        (0i64..4_000).prop_map(|k| k * 10_799),
        (-500i64..500).prop_map(|v| v as f64 / 10.0),
    );
    prop_oneof![
        6 => proptest::collection::vec(sample, 1..40).prop_map(Op::Write),
        1 => Just(Op::Seal),
        1 => Just(Op::Reopen),
        3 => (any::<bool>(), any::<bool>()).prop_map(|(delivered, confirmed)| Op::Ship { delivered, confirmed }),
        1 => Just(Op::Resend),
    ]
}

fn options(carry_limit_samples: usize) -> Options {
    Options {
        track_changes: true,
        // The carry limit is a quarter of this: small enough that some seals make backlog.
        max_head_samples: carry_limit_samples * 4,
        ..test_options()
    }
}

type Replica = BTreeMap<String, BTreeMap<i64, u64>>;

/// The sync layer as the feed expects it to behave: it reads on from its mark, keeps what it sent
/// until acknowledged, resends what was lost, and confirms live marks in send order only.
#[derive(Default)]
struct Sender {
    mark: Option<HeadMark>,
    /// Sent batches in order, with whether their ack came.
    unacked: Vec<(LiveChanges, Vec<DirtyChunk>, bool)>,
}

fn deliver(store: &Store, replica: &mut Replica, live: &LiveChanges, chunks: &[DirtyChunk]) {
    for chunk in chunks {
        if chunk.tier == Tier::Raw {
            let (t, v) = decode_chunk(&chunk.bytes).unwrap();
            let series = replica.entry(chunk.key.to_string()).or_default();
            for (t, v) in t.into_iter().zip(v) {
                series.insert(t, v.to_bits());
            }
        }
    }
    for (id, samples) in &live.series {
        let series = replica
            .entry(store.series_key(*id).unwrap().to_string())
            .or_default();
        for (t, v) in samples {
            series.insert(*t, v.to_bits());
        }
    }
}

impl Sender {
    /// Sends one batch; returns whether there was nothing to send.
    fn ship(&mut self, store: &Store, replica: &mut Replica, delivered: bool, acked: bool) -> bool {
        let live = store.live_since(self.mark.as_ref(), 50);
        let chunks = store.dirty_chunks(4096, &Default::default()).unwrap();
        let empty = live.samples() == 0 && chunks.is_empty();
        self.mark = Some(live.mark.clone());
        if delivered {
            deliver(store, replica, &live, &chunks);
        }
        self.unacked.push((live, chunks, delivered && acked));
        self.confirm_in_order(store);
        empty
    }

    fn confirm_in_order(&mut self, store: &Store) {
        while self.unacked.first().is_some_and(|(_, _, acked)| *acked) {
            let (live, chunks, _) = self.unacked.remove(0);
            store.confirm_live(&live.mark);
            store.confirm_chunks(&chunks.iter().map(|c| c.receipt()).collect::<Vec<_>>());
        }
    }

    /// The resend timer: everything unacknowledged goes again, and this time it arrives.
    fn resend(&mut self, store: &Store, replica: &mut Replica) {
        for (live, chunks, acked) in &mut self.unacked {
            deliver(store, replica, live, chunks);
            *acked = true;
        }
        self.confirm_in_order(store);
    }
}

fn run(ops: Vec<Op>, carry: usize) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("feed.redb");
    let mut store = Store::open(&path, options(carry)).unwrap();
    let mut sender = Sender::default();
    let mut replica = Replica::new();
    for op in ops {
        match op {
            Op::Write(samples) => {
                let named: Vec<(&str, i64, f64)> =
                    samples.iter().map(|&(s, t, v)| (SERIES[s], t, v)).collect();
                write(&store, &named);
            }
            Op::Seal => store.seal().unwrap(),
            Op::Reopen => {
                store.close().unwrap();
                store = Store::open(&path, options(carry)).unwrap();
                // A restarted sync layer starts from nothing.
                sender = Sender::default();
            }
            Op::Ship {
                delivered,
                confirmed,
            } => {
                sender.ship(&store, &mut replica, delivered, confirmed);
            }
            Op::Resend => sender.resend(&store, &mut replica),
        }
    }
    // Drain: resend what is outstanding, then ship until the feed is empty, sealing so that
    // delivered backlog entries leave the table.
    sender.resend(&store, &mut replica);
    for round in 0.. {
        assert!(round < 10_000, "the feed never drains");
        if sender.ship(&store, &mut replica, true, true) {
            store.seal().unwrap();
            if sender.ship(&store, &mut replica, true, true) {
                break;
            }
        }
    }
    let backlog = store.backlog().unwrap();
    assert_eq!(backlog.dirty_chunks, 0, "{backlog:?}");
    assert_eq!(backlog.live_unconfirmed_samples, 0, "{backlog:?}");
    let stored = raw_bits(&store, r#"{__name__=~"m.*"}"#);
    for (name, points) in &stored {
        let got: Vec<(i64, u64)> = replica
            .get(name)
            .map(|s| s.iter().map(|(t, v)| (*t, *v)).collect())
            .unwrap_or_default();
        assert_eq!(&got, points, "{name}");
    }
    assert_eq!(replica.len(), stored.len());
    store.close().unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn a_lossy_subscriber_ends_with_everything(ops in proptest::collection::vec(op(), 1..40), carry in prop_oneof![Just(8usize), Just(100_000)]) {
        run(ops, carry);
    }
}

#[test]
fn a_store_that_did_not_track_changes_ships_everything_it_holds() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.redb");
    let store = Store::open(&path, test_options()).unwrap();
    write(&store, &[("m0", 1_000, 1.0), ("m0", 8_000_000, 2.0)]);
    store.close().unwrap();
    let store = Store::open(&path, options(1000)).unwrap();
    let chunks = store.dirty_chunks(usize::MAX, &Default::default()).unwrap();
    // Two raw windows, one minute window, one hour window.
    let tiers: Vec<Tier> = chunks.iter().map(|c| c.tier).collect();
    assert_eq!(
        tiers.iter().filter(|t| **t == Tier::Raw).count(),
        2,
        "{tiers:?}"
    );
    assert_eq!(chunks.len(), 4);
    assert!(chunks
        .windows(2)
        .all(|w| w[0].window_start <= w[1].window_start));
    assert_eq!(chunks[0].key, key("m0"));
    store.confirm_chunks(&chunks.iter().map(|c| c.receipt()).collect::<Vec<_>>());
    assert!(store
        .dirty_chunks(usize::MAX, &Default::default())
        .unwrap()
        .is_empty());
    assert_eq!(store.backlog().unwrap().dirty_chunks, 0);
    store.close().unwrap();
    // Delivered entries were removed durably by the close's seal.
    let store = Store::open(&path, options(1000)).unwrap();
    assert!(store
        .dirty_chunks(usize::MAX, &Default::default())
        .unwrap()
        .is_empty());
    store.close().unwrap();
}

#[test]
fn a_long_outage_becomes_backlog_and_drains() {
    let ops = vec![
        Op::Write(
            (0..30)
                .map(|i| (i % 3, i as i64 * 600_000, i as f64))
                .collect(),
        ),
        Op::Ship {
            delivered: false,
            confirmed: false,
        },
        Op::Seal,
        Op::Write(vec![(0, 1, 0.5)]),
    ];
    run(ops, 8);
}
