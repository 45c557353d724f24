//! The hub's side of a batch: turning a verified [`Batch`] into writes to the hub's store,
//! idempotently. Samples are upserted by `(series, timestamp)`, so a batch that arrives twice,
//! or data that the device sends again after a restart, changes nothing; `(epoch, seq)` is
//! tracked per device to count duplicates and gaps, and a batch already stored is acknowledged
//! without being written again.
//!
//! Per-device state lives in the hub store's `DeviceRegistry` state table and is written in the
//! same [`WriteBatch`] as the samples it describes, so that after a crash the two agree.

use std::collections::{BTreeSet, HashMap};

use outpost_storage::codec::{decode_chunk, decode_rollup_chunk, decode_samples};
use outpost_storage::{SeriesId, SeriesKey, StateTable, Store, Tier, WriteBatch};
use serde::{Deserialize, Serialize};

use crate::message::{AckStatus, Batch};

/// The label every series gets at the hub: the device it came from.
pub const INSTANCE: &str = "instance";
/// Where a device's own `instance` label goes, as Prometheus does.
pub const EXPORTED_INSTANCE: &str = "exported_instance";

/// How the hub opens its store. A fleet's head holds many series, each sampled every second: a
/// larger head (8 M samples, about 130 MB) means each chunk is rewritten fewer times as it
/// fills, which is what bounds ingest, and the hub runs where memory is not scarce.
pub fn hub_store_options(budget_bytes: u64) -> outpost_storage::Options {
    outpost_storage::Options {
        budget_bytes: Some(budget_bytes),
        max_head_samples: 8_000_000,
        ..outpost_storage::Options::default()
    }
}

/// Why a batch could not be ingested. The hub answers with [`AckStatus::Rejected`] and counts it.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("series definition {id}: {reason}")]
    BadDefinition { id: u32, reason: String },
    #[error("samples of series {series}: {reason}")]
    BadSamples { series: u32, reason: String },
    #[error("chunk of series {series}: {reason}")]
    BadChunk { series: u32, reason: String },
    #[error("hub store: {0}")]
    Store(#[from] outpost_storage::Error),
}

/// Seen sequence numbers of one (device, epoch): all up to `low`, and some above it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Seen {
    low: u64,
    above: BTreeSet<u64>,
}

impl Seen {
    fn contains(&self, seq: u64) -> bool {
        seq <= self.low || self.above.contains(&seq)
    }

    /// Records `seq`; returns how many sequence numbers it skipped over (a gap, for metrics).
    fn insert(&mut self, seq: u64) -> u64 {
        let highest = self.above.last().copied().unwrap_or(self.low);
        let gap = seq.saturating_sub(highest.max(self.low) + 1);
        self.above.insert(seq);
        while self.above.remove(&(self.low + 1)) {
            self.low += 1;
        }
        // A device that skipped numbers for good (a crash between numbering and sending) must
        // not grow this without bound: far-behind holes are given up on.
        while self.above.len() > 4096 {
            if let Some(first) = self.above.pop_first() {
                self.low = first;
            }
        }
        gap
    }
}

/// What came of one batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ingested {
    pub status: AckStatus,
    /// Sequence numbers skipped before this batch (0 when in order).
    pub gap: u64,
}

/// The hub's ingest state for the whole fleet.
#[derive(Debug, Default)]
pub struct Ingestor {
    /// (device, device's series id) to the hub's series id.
    series: HashMap<(String, u32), SeriesId>,
    seen: HashMap<(String, u64), Seen>,
}

fn series_state_key(device: &str, id: u32) -> String {
    format!("series/{device}/{id}")
}

fn seen_state_key(device: &str, epoch: u64) -> String {
    format!("seq/{device}/{epoch}")
}

/// The hub's key for a device's series: `instance` set to the device, the device's own
/// `instance` kept as `exported_instance`.
pub fn hub_key(device: &str, key: &SeriesKey) -> Result<SeriesKey, outpost_storage::Error> {
    let mut labels: Vec<(String, String)> = key
        .labels()
        .iter()
        .filter(|(l, _)| l != EXPORTED_INSTANCE || !key.labels().iter().any(|(l, _)| l == INSTANCE))
        .map(|(l, v)| {
            let l = if l == INSTANCE {
                EXPORTED_INSTANCE.to_string()
            } else {
                l.clone()
            };
            (l, v.clone())
        })
        .collect();
    labels.push((INSTANCE.to_string(), device.to_string()));
    SeriesKey::new(key.name(), labels)
}

impl Ingestor {
    pub fn new() -> Self {
        Ingestor::default()
    }

    fn resolve(
        &mut self,
        store: &Store,
        device: &str,
        id: u32,
    ) -> Result<Option<SeriesId>, IngestError> {
        if let Some(hub) = self.series.get(&(device.to_string(), id)) {
            return Ok(Some(*hub));
        }
        let Some(stored) =
            store.state_get(StateTable::DeviceRegistry, &series_state_key(device, id))?
        else {
            return Ok(None);
        };
        let key = SeriesKey::parse(&String::from_utf8_lossy(&stored))?;
        let hub = store.series_id(&key)?;
        self.series.insert((device.to_string(), id), hub);
        Ok(Some(hub))
    }

    fn seen(&mut self, store: &Store, device: &str, epoch: u64) -> Result<&mut Seen, IngestError> {
        let key = (device.to_string(), epoch);
        if !self.seen.contains_key(&key) {
            let seen = store
                .state_get(StateTable::DeviceRegistry, &seen_state_key(device, epoch))?
                .and_then(|bytes| postcard::from_bytes(&bytes).ok())
                .unwrap_or_default();
            self.seen.insert(key.clone(), seen);
        }
        Ok(self.seen.get_mut(&key).expect("inserted above"))
    }

    /// Writes a verified batch into `store` (accepted, not yet durable: the caller syncs the
    /// store before it sends the returned acknowledgement).
    pub fn ingest(&mut self, store: &Store, batch: &Batch) -> Result<Ingested, IngestError> {
        let device = batch.header.device.as_str();
        let (epoch, seq) = (batch.header.epoch, batch.header.seq);
        if self.seen(store, device, epoch)?.contains(seq) {
            return Ok(Ingested {
                status: AckStatus::Stored {
                    samples: 0,
                    duplicate: true,
                },
                gap: 0,
            });
        }
        let mut write = WriteBatch::default();
        let mut new_series: Vec<(u32, SeriesId)> = Vec::new();
        for def in &batch.body.defs {
            let bad = |reason: String| IngestError::BadDefinition { id: def.id, reason };
            let key = SeriesKey::parse(&def.key).map_err(|e| bad(e.to_string()))?;
            let key = hub_key(device, &key).map_err(|e| bad(e.to_string()))?;
            let hub = store.series_id(&key)?;
            write.put_state(
                StateTable::DeviceRegistry,
                series_state_key(device, def.id),
                key.to_string().into_bytes(),
            );
            new_series.push((def.id, hub));
        }
        let mut lookup: HashMap<u32, SeriesId> = new_series.iter().copied().collect();
        let mut unknown = Vec::new();
        let referenced: BTreeSet<u32> = batch
            .body
            .live
            .iter()
            .map(|l| l.series)
            .chain(batch.body.chunks.iter().map(|c| c.series))
            .collect();
        for id in referenced {
            if lookup.contains_key(&id) {
                continue;
            }
            match self.resolve(store, device, id)? {
                Some(hub) => {
                    lookup.insert(id, hub);
                }
                None => unknown.push(id),
            }
        }
        if !unknown.is_empty() {
            return Ok(Ingested {
                status: AckStatus::UnknownSeries { ids: unknown },
                gap: 0,
            });
        }
        let mut samples = 0u64;
        // Buckets with raw samples in this batch, per hub series: rollups from the device do not
        // override what the hub can compute from raw data.
        let mut raw_buckets: HashMap<(SeriesId, u8), BTreeSet<i64>> = HashMap::new();
        for live in &batch.body.live {
            let hub = lookup[&live.series];
            let (timestamps, values) =
                decode_samples(&live.samples).map_err(|e| IngestError::BadSamples {
                    series: live.series,
                    reason: e.to_string(),
                })?;
            samples += timestamps.len() as u64;
            note_buckets(&mut raw_buckets, hub, &timestamps);
            for (ts, value) in timestamps.into_iter().zip(values) {
                write.sample(hub, ts, value);
            }
        }
        let mut rollup_chunks = Vec::new();
        for chunk in &batch.body.chunks {
            let hub = lookup[&chunk.series];
            let bad = |reason: String| IngestError::BadChunk {
                series: chunk.series,
                reason,
            };
            match chunk.tier {
                0 => {
                    let (timestamps, values) =
                        decode_chunk(&chunk.bytes).map_err(|e| bad(e.to_string()))?;
                    samples += timestamps.len() as u64;
                    note_buckets(&mut raw_buckets, hub, &timestamps);
                    for (ts, value) in timestamps.into_iter().zip(values) {
                        write.sample(hub, ts, value);
                    }
                }
                1 | 2 => {
                    let tier = if chunk.tier == 1 {
                        Tier::Minute
                    } else {
                        Tier::Hour
                    };
                    let (buckets, rollups) =
                        decode_rollup_chunk(&chunk.bytes).map_err(|e| bad(e.to_string()))?;
                    rollup_chunks.push((hub, tier, buckets, rollups));
                }
                other => return Err(bad(format!("unknown tier {other}"))),
            }
        }
        for (hub, tier, buckets, rollups) in rollup_chunks {
            let (Some(&first), Some(&last)) = (buckets.first(), buckets.last()) else {
                continue;
            };
            let width = tier.resolution_ms();
            let covered = hub_raw_buckets(store, hub, first, last.saturating_add(width), width)?;
            let in_batch = raw_buckets.get(&(hub, tier as u8));
            for (bucket, rollup) in buckets.into_iter().zip(rollups) {
                if !covered.contains(&bucket) && !in_batch.is_some_and(|b| b.contains(&bucket)) {
                    write.rollup(hub, tier, bucket, rollup);
                }
            }
        }
        let seen = self.seen(store, device, epoch)?;
        let mut updated = seen.clone();
        let gap = updated.insert(seq);
        write.put_state(
            StateTable::DeviceRegistry,
            seen_state_key(device, epoch),
            postcard::to_allocvec(&updated).expect("postcard serializes sequence sets"),
        );
        store.write(write)?;
        *self.seen(store, device, epoch)? = updated;
        for (id, hub) in new_series {
            self.series.insert((device.to_string(), id), hub);
        }
        Ok(Ingested {
            status: AckStatus::Stored {
                samples,
                duplicate: false,
            },
            gap,
        })
    }
}

fn note_buckets(
    out: &mut HashMap<(SeriesId, u8), BTreeSet<i64>>,
    hub: SeriesId,
    timestamps: &[i64],
) {
    for (tier, width) in [(Tier::Minute, 60_000i64), (Tier::Hour, 3_600_000)] {
        let set = out.entry((hub, tier as u8)).or_default();
        set.extend(timestamps.iter().map(|ts| ts.div_euclid(width) * width));
    }
}

/// Buckets of `width` in `[from, to)` where the hub store holds raw samples of `series`.
fn hub_raw_buckets(
    store: &Store,
    series: SeriesId,
    from: i64,
    to: i64,
    width: i64,
) -> Result<BTreeSet<i64>, IngestError> {
    let Some(key) = store.series_key(series) else {
        return Ok(BTreeSet::new());
    };
    let selector = outpost_storage::Selector::parse(&key.to_string())?;
    let points = store.query_raw(&selector, from, to.saturating_sub(1))?;
    Ok(points
        .into_iter()
        .filter(|s| s.series == key)
        .flat_map(|s| {
            s.points
                .into_iter()
                .map(move |(ts, _)| ts.div_euclid(width) * width)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_are_tracked_with_gaps() {
        let mut seen = Seen::default();
        assert_eq!(seen.insert(1), 0);
        assert_eq!(seen.insert(2), 0);
        assert_eq!(seen.insert(5), 2);
        assert!(seen.contains(2) && seen.contains(5) && !seen.contains(3));
        assert_eq!(seen.insert(3), 0);
        assert_eq!(seen.insert(4), 0);
        assert_eq!(seen.low, 5);
        assert!(seen.above.is_empty());
    }

    #[test]
    fn instance_is_the_device_and_the_devices_own_is_kept() {
        let key = SeriesKey::parse(r#"fps{instance="cam",stream="0"}"#).unwrap();
        assert_eq!(
            hub_key("orin-01", &key).unwrap().to_string(),
            r#"fps{exported_instance="cam",instance="orin-01",stream="0"}"#
        );
        let plain = SeriesKey::parse("node_load1").unwrap();
        assert_eq!(
            hub_key("orin-01", &plain).unwrap().to_string(),
            r#"node_load1{instance="orin-01"}"#
        );
    }
}
