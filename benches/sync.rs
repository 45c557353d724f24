//! Sync figures on the real hour of host data, in process (no broker, no sockets): what the
//! protocol itself costs.
//!
//! - wire: bytes per sample at a 10 s batch interval, counting every MQTT byte a TCP stream would
//!   carry in both directions (PUBLISH of the batch with its topic, the hub's PUBACK, the ack
//!   PUBLISH back, the agent's PUBACK); IP and TCP headers not included.
//! - backfill: 24 hours of 315 series (the hour, three times under other labels, 24 times over:
//!   27 M samples) held by an agent whose hub was away, drained into a hub store.
//! - ingest: the hub's ingest (verify, decompress, decode, write, one fsync per group of 100
//!   batches) of 100 devices' batches, each device the hour under its own id.
//!
//! `cargo bench --bench sync -- [wire] [backfill] [ingest]`

mod common;

use outpost_sync::HubToDevice;
use std::sync::Arc;
use std::time::Instant;

use outpost_storage::Store;
use outpost_sync::ingest::Ingestor;
use outpost_sync::outbox::Outbox;
use outpost_sync::{Ack, Batch, DeviceKey, Limits};

/// MQTT 3.1.1 bytes of a QoS 1 PUBLISH: fixed header (1 + remaining-length varint), topic
/// (2 + len), packet id (2), payload.
fn publish_bytes(topic: &str, payload: usize) -> usize {
    let remaining = 2 + topic.len() + 2 + payload;
    let varint = match remaining {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    };
    1 + varint + remaining
}
const PUBACK: usize = 4;

fn ack_for(batch: &[u8], key: &DeviceKey) -> Vec<u8> {
    let header = Batch::peek_header(batch, &Limits::default()).unwrap();
    Ack {
        device: header.device,
        epoch: header.epoch,
        seq: header.seq,
        status: outpost_sync::AckStatus::Stored {
            samples: 0,
            duplicate: false,
        },
    }
    .encode(key)
}

/// Writes the hour into `agent` ten seconds at a time, as collection would, and after each write
/// hands every batch the outbox builds, with the hub's ack for it, to `sent`.
fn collect_and_ship(
    agent: &Store,
    outbox: &mut Outbox,
    rows: &[(String, i64, f64)],
    device: &str,
    key: &DeviceKey,
    mut sent: impl FnMut(&[u8], &[u8]),
) {
    common::write_in_slices(agent, rows, 10_000, || {
        while let Some((_, payload)) = outbox.next_batch(agent, 0, 0, &[]).unwrap() {
            let ack = ack_for(&payload, key);
            sent(&payload, &ack);
            outbox.on_ack(agent, &Ack::decode(&ack, device, key).unwrap());
        }
    });
}

fn wire() {
    let dir = tempfile::tempdir().unwrap();
    let agent = Store::open(dir.path().join("agent.redb"), common::agent_options()).unwrap();
    let key = DeviceKey::new(vec![7; 32]).unwrap();
    let mut outbox = common::outbox(&agent, "orin-nano-0001", &key);
    let (batch_topic, ack_topic) = (
        "outpost/v1/default/orin-nano-0001/batch",
        "outpost/v1/default/orin-nano-0001/ack",
    );
    let rows = common::host_rows();
    let (mut bytes, mut payload_bytes, mut batches) = (0usize, 0usize, 0usize);
    collect_and_ship(
        &agent,
        &mut outbox,
        &rows,
        "orin-nano-0001",
        &key,
        |payload, ack| {
            bytes += publish_bytes(batch_topic, payload.len())
                + PUBACK
                + publish_bytes(ack_topic, ack.len())
                + PUBACK;
            payload_bytes += payload.len();
            batches += 1;
        },
    );
    let samples = rows.len() as f64;
    println!(
        "wire: {} samples, {batches} batches of 10 s: {:.3} MQTT bytes/sample in both directions (batch payloads alone {:.3})",
        rows.len(),
        bytes as f64 / samples,
        payload_bytes as f64 / samples
    );
    agent.close().unwrap();
}

fn backfill() {
    let dir = tempfile::tempdir().unwrap();
    let agent = common::backlog_store(&dir.path().join("agent.redb"));
    let key = DeviceKey::new(vec![7; 32]).unwrap();
    let hub = Store::open(
        dir.path().join("hub.redb"),
        outpost_sync::ingest::hub_store_options(1 << 40),
    )
    .unwrap();
    let mut ingestor = Ingestor::new();
    let mut outbox = common::outbox(&agent, "dev", &key);
    let began = Instant::now();
    let mut batches = 0;
    loop {
        let mut sent = Vec::new();
        while let Some((_, payload)) = outbox.next_batch(&agent, 0, 0, &[]).unwrap() {
            sent.push(payload);
        }
        if sent.is_empty() {
            break;
        }
        let mut acks = Vec::new();
        for payload in sent {
            let batch = Batch::decode(&payload, "dev", &key, &Limits::default()).unwrap();
            let ingested = ingestor
                .ingest(&hub, &batch, batch.header.sent_wall_ms)
                .unwrap();
            acks.push(Ack {
                device: "dev".into(),
                epoch: batch.header.epoch,
                seq: batch.header.seq,
                status: ingested.status,
            });
            batches += 1;
        }
        hub.sync().unwrap();
        for ack in acks {
            outbox.on_ack(&agent, &ack);
        }
    }
    hub.seal().unwrap();
    let elapsed = began.elapsed().as_secs_f64();
    let stats = hub.stats().unwrap();
    println!(
        "backfill: {} samples to the hub in {batches} batches, {elapsed:.1} s ({:.2} M samples/s)",
        stats.raw_samples,
        stats.raw_samples as f64 / elapsed / 1e6
    );
    agent.close().unwrap();
    hub.close().unwrap();
}

fn ingest() {
    let dir = tempfile::tempdir().unwrap();
    let rows = common::host_rows();
    // One device's hour as 10 s batches, then re-signed under 100 device ids (the work per
    // device is the same; building 100 agents' stores would only time the agents).
    let agent = Store::open(dir.path().join("agent.redb"), common::agent_options()).unwrap();
    let key = DeviceKey::new(vec![7; 32]).unwrap();
    let mut outbox = common::outbox(&agent, "template", &key);
    let mut template = Vec::new();
    collect_and_ship(
        &agent,
        &mut outbox,
        &rows,
        "template",
        &key,
        |payload, _| {
            template.push(Batch::decode(payload, "template", &key, &Limits::default()).unwrap());
        },
    );
    let devices = 100;
    let keys: Vec<DeviceKey> = (0..devices)
        .map(|d| DeviceKey::new(vec![d as u8 + 1; 32]).unwrap())
        .collect();
    // Interleaved as they would arrive: batch i of every device, then batch i + 1.
    let mut payloads = Vec::with_capacity(template.len() * devices);
    for batch in &template {
        for (d, key) in keys.iter().enumerate() {
            let mut batch = batch.clone();
            batch.header.device = format!("dev-{d:03}");
            payloads.push((
                batch.header.device.clone(),
                Arc::new(batch.encode(key, 3)),
                d,
            ));
        }
    }
    let hub = Store::open(
        dir.path().join("hub.redb"),
        outpost_sync::ingest::hub_store_options(1 << 40),
    )
    .unwrap();
    let mut ingestor = Ingestor::new();
    let began = Instant::now();
    let mut samples = 0u64;
    for group in payloads.chunks(100) {
        for (device, payload, d) in group {
            let batch = Batch::decode(payload, device, &keys[*d], &Limits::default()).unwrap();
            if let outpost_sync::AckStatus::Stored { samples: n, .. } = ingestor
                .ingest(&hub, &batch, batch.header.sent_wall_ms)
                .unwrap()
                .status
            {
                samples += n;
            }
        }
        hub.sync().unwrap();
    }
    let elapsed = began.elapsed().as_secs_f64();
    println!(
        "ingest: {devices} devices, {} batches, {samples} samples in {elapsed:.1} s: {:.2} M samples/s",
        payloads.len(),
        samples as f64 / elapsed / 1e6
    );
    agent.close().unwrap();
    hub.close().unwrap();
}

fn main() {
    common::run_selected(&[("wire", wire), ("backfill", backfill), ("ingest", ingest)]);
}
