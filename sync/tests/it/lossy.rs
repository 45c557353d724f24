//! Whatever the channel loses, duplicates or reorders, and however often the agent restarts,
//! once it drains the hub holds every sample of every series the agent holds, bit for bit, and
//! the same rollups in both tiers.

use outpost_sync::HubToDevice;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use outpost_storage::text::timestamped_samples;
use outpost_storage::{Options, Selector, SeriesKey, Store, Tier, WriteBatch};
use outpost_sync::ingest::{hub_key, Ingestor};
use outpost_sync::outbox::{Outbox, OutboxOptions};
use outpost_sync::{Ack, Batch, DeviceKey, Limits};

/// The hour of host data as (series, timestamp, value), in file order.
fn host_hour() -> Vec<(String, i64, f64)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/host/host-1h.prom.zst");
    let text =
        String::from_utf8(zstd::decode_all(std::fs::File::open(path).unwrap()).unwrap()).unwrap();
    timestamped_samples(&text)
        .map(|(series, ts, value)| (series.to_string(), ts, value))
        .collect()
}

fn agent_options() -> Options {
    Options {
        track_changes: true,
        flush_interval: Duration::from_millis(20),
        sync_interval: Duration::from_millis(100),
        seal_interval: Duration::from_secs(3600),
        // A carry limit of 2,500 samples: seals while the hub is away make backlog.
        max_head_samples: 10_000,
        zstd_level: 3,
        ..Options::default()
    }
}

fn hub_options() -> Options {
    Options {
        zstd_level: 3,
        ..Options::default()
    }
}

/// A deterministic pseudo-random stream, so that a failure replays.
struct Dice(u64);
impl Dice {
    fn roll(&mut self, sides: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % sides
    }
}

struct Hub {
    store: Store,
    ingestor: Ingestor,
    key: DeviceKey,
    duplicates: u64,
}

impl Hub {
    /// One delivered payload: verify, ingest, make durable, answer.
    fn receive(&mut self, payload: &[u8]) -> Vec<u8> {
        let batch = Batch::decode(payload, "dev-1", &self.key, &Limits::default()).unwrap();
        let ingested = self
            .ingestor
            .ingest(&self.store, &batch, batch.header.sent_wall_ms)
            .unwrap();
        if matches!(
            ingested.status,
            outpost_sync::AckStatus::Stored {
                duplicate: true,
                ..
            }
        ) {
            self.duplicates += 1;
        }
        self.store.sync().unwrap();
        Ack {
            device: "dev-1".into(),
            epoch: batch.header.epoch,
            seq: batch.header.seq,
            status: ingested.status,
        }
        .encode(&self.key)
    }
}

#[test]
fn the_hub_ends_with_exactly_what_the_agent_holds() {
    let dir = tempfile::tempdir().unwrap();
    let agent_path = dir.path().join("agent.redb");
    let key = DeviceKey::new(vec![42; 32]).unwrap();
    let mut hub = Hub {
        store: Store::open(dir.path().join("hub.redb"), hub_options()).unwrap(),
        ingestor: Ingestor::new(),
        key: key.clone(),
        duplicates: 0,
    };
    let options = OutboxOptions {
        max_batch_bytes: 16 << 10,
        ..OutboxOptions::default()
    };
    let mut agent = Store::open(&agent_path, agent_options()).unwrap();
    let mut outbox = Outbox::open(&agent, "dev-1", key.clone(), "boot-1", options.clone()).unwrap();
    let mut dice = Dice(0x5eed_1234_abcd_ef01);
    // Payloads on their way to the hub, and acks on their way back.
    let mut to_hub: Vec<Vec<u8>> = Vec::new();
    let mut to_agent: Vec<Vec<u8>> = Vec::new();
    let mut resent = 0u64;
    let samples = host_hour();
    let mut ids: BTreeMap<String, outpost_storage::SeriesId> = BTreeMap::new();
    let mut offline = false;
    // The outbox's resend timer runs on this simulated clock, ten seconds a round, so that
    // which batches are due never depends on how fast the machine runs the test.
    let mut clock = Instant::now();
    for (round, chunk) in samples.chunks(1050).enumerate() {
        // Ten seconds of collection.
        let mut write = WriteBatch::default();
        for (series, ts, value) in chunk {
            let id = *ids
                .entry(series.clone())
                .or_insert_with(|| agent.series_id(&SeriesKey::parse(series).unwrap()).unwrap());
            write.sample(id, *ts, *value);
        }
        agent.write(write).unwrap();
        clock += Duration::from_secs(10);
        // The link: offline now and then for a while, lossy otherwise.
        if dice.roll(40) == 0 {
            offline = !offline;
        }
        if !offline {
            while let Some((_, payload)) = outbox.next_batch(&agent, 0, 0, &[]).unwrap() {
                to_hub.push(payload.to_vec());
            }
            // The resend timer fires now and then, so that restarts catch batches in flight.
            if dice.roll(4) == 0 {
                for (_, payload) in outbox.due_resends(clock, Duration::from_secs(30), (0, 0, &[]))
                {
                    resent += 1;
                    to_hub.push(payload.to_vec());
                }
            }
            // Deliver in a shuffled order; lose some, duplicate some, in both directions.
            while !to_hub.is_empty() {
                let payload = to_hub.swap_remove(dice.roll(to_hub.len() as u64) as usize);
                match dice.roll(10) {
                    0 => continue,
                    1 => to_agent.push(hub.receive(&payload)),
                    _ => {}
                }
                let ack = hub.receive(&payload);
                if dice.roll(8) != 0 {
                    to_agent.push(ack);
                }
            }
            while !to_agent.is_empty() {
                let ack = to_agent.swap_remove(dice.roll(to_agent.len() as u64) as usize);
                let ack = Ack::decode(&ack, "dev-1", &key).unwrap();
                outbox.on_ack(&agent, &ack);
            }
        }
        match dice.roll(25) {
            0 => agent.seal().unwrap(),
            1 => {
                // The agent restarts: new epoch, nothing in flight, acks for the old one stale.
                agent.close().unwrap();
                agent = Store::open(&agent_path, agent_options()).unwrap();
                ids.clear();
                outbox = Outbox::open(
                    &agent,
                    "dev-1",
                    key.clone(),
                    &format!("boot-{round}"),
                    options.clone(),
                )
                .unwrap();
            }
            _ => {}
        }
    }
    // Back online for good: drain, with resends, until nothing is left.
    for round in 0.. {
        assert!(round < 100_000, "never drained");
        // Every unacknowledged batch is overdue each round.
        clock += Duration::from_secs(31);
        let mut sent = Vec::new();
        while let Some((_, payload)) = outbox.next_batch(&agent, 0, 0, &[]).unwrap() {
            sent.push(payload.to_vec());
        }
        for (_, payload) in outbox.due_resends(clock, Duration::from_secs(30), (0, 0, &[])) {
            resent += 1;
            sent.push(payload.to_vec());
        }
        if sent.is_empty() && outbox.in_flight() == 0 {
            agent.seal().unwrap();
            if outbox.next_batch(&agent, 0, 0, &[]).unwrap().is_none() {
                break;
            }
            continue;
        }
        for payload in sent {
            let ack = hub.receive(&payload);
            outbox.on_ack(&agent, &Ack::decode(&ack, "dev-1", &key).unwrap());
        }
    }
    let backlog = agent.backlog().unwrap();
    assert_eq!(backlog.dirty_chunks, 0);
    assert_eq!(backlog.live_unconfirmed_samples, 0);
    assert!(resent > 0, "the test never exercised resends");
    assert!(hub.duplicates > 0, "the hub never saw a duplicate batch");

    // Every series, every tier, bit for bit.
    let all = Selector::parse(r#"{__name__=~".+"}"#).unwrap();
    let agent_raw = agent.query_raw(&all, i64::MIN, i64::MAX).unwrap();
    assert_eq!(agent_raw.len(), 105, "the hour has 105 series");
    let mut compared = 0usize;
    for series in &agent_raw {
        let hub_series = hub_key("dev-1", &series.series).unwrap();
        let exact = Selector::parse(&hub_series.to_string()).unwrap();
        let got = hub.store.query_raw(&exact, i64::MIN, i64::MAX).unwrap();
        let got = got
            .into_iter()
            .find(|s| s.series == hub_series)
            .expect("series at the hub");
        let bits = |p: &[(i64, f64)]| p.iter().map(|(t, v)| (*t, v.to_bits())).collect::<Vec<_>>();
        assert_eq!(
            bits(&got.points),
            bits(&series.points),
            "raw {}",
            series.series
        );
        compared += got.points.len();
        for tier in [Tier::Minute, Tier::Hour] {
            let a = agent
                .query_rollups(
                    &Selector::parse(&series.series.to_string()).unwrap(),
                    tier,
                    i64::MIN / 4,
                    i64::MAX / 4,
                )
                .unwrap();
            let a = a.into_iter().find(|s| s.0 == series.series).unwrap().1;
            let h = hub
                .store
                .query_rollups(&exact, tier, i64::MIN / 4, i64::MAX / 4)
                .unwrap();
            let h = h.into_iter().find(|s| s.0 == hub_series).unwrap().1;
            assert_eq!(a.len(), h.len(), "{tier:?} {}", series.series);
            for (x, y) in a.iter().zip(&h) {
                assert!(
                    x.0 == y.0 && x.1.bits_eq(&y.1),
                    "{tier:?} {} at {}",
                    series.series,
                    x.0
                );
            }
        }
    }
    assert_eq!(compared, samples.len(), "every sample of the hour");
    agent.close().unwrap();
    hub.store.close().unwrap();
}
