//! Outpost's time-series store: compressed, crash-safe, on one redb file.
//!
//! Everything in Outpost reads or writes a [`Store`]: the agent on a Jetson, its alert engine and
//! sync outbox (through the [state tables](StateTable)), and the hub, which holds the whole fleet
//! in a second instance. The store keeps, per series ([`SeriesKey`]):
//!
//! - raw samples `(timestamp_ms, f64)`, losslessly (every bit of every f64, NaN payloads and -0.0
//!   included), in two-hour chunks compressed by [`codec`];
//! - 1-minute and 1-hour [rollups](Rollup) (min, max, sum, count, last), kept up to date when
//!   late or replaced samples arrive;
//! - retention by age per tier and a byte budget for the whole store.
//!
//! Writes land in an in-memory head and a compact write-ahead log ([`wal`]), and are folded into
//! redb by a dedicated writer thread; see `FORMAT.md` for the on-disk format and the crash-safety
//! contract. The crate has no async runtime and no network; async callers use
//! [`Store::write_async`] and [`Store::sync_async`], which never block the executor.
//!
//! ```no_run
//! use outpost_storage::{Aggregation, Options, Selector, SeriesKey, Store, WriteBatch};
//! # fn main() -> outpost_storage::Result<()> {
//! let store = Store::open("metrics.redb", Options::default())?;
//! let cpu = store.series_id(&SeriesKey::parse(r#"cpu_load{core="0"}"#)?)?;
//! let mut batch = WriteBatch::default();
//! batch.sample(cpu, 1_700_000_000_000, 42.5);
//! store.write(batch)?;
//! let selector = Selector::parse("cpu_load")?;
//! let raw = store.query_raw(&selector, 0, i64::MAX)?;
//! let per_minute = store.query_step(&selector, 0, 1_800_000_000_000, 60_000, Aggregation::Avg)?;
//! store.close()?;
//! # Ok(()) }
//! ```

mod changes;
mod check;
pub mod codec;
mod disk;
mod duration;
mod error;
mod fasthash;
pub mod promql;
mod query;
mod series;
mod series_buffer;
mod store;
pub mod text;
mod wal;

pub use changes::{Backlog, ChunkReceipt, DirtyChunk, HeadMark, LiveChanges};
pub use check::CheckReport;
pub use codec::Rollup;
pub use disk::{Disk, LogFile, RealDisk};
pub use duration::parse_duration_ms;
pub use error::{DecodeError, Error, Result};
pub use query::{bucket_of as bucket_start, rate as rate_per_bucket, Aggregation};
pub use series::{KeyLabels, MatchOp, Selector, SeriesKey};
pub use store::{
    Clock, Health, ManualWallClock, Options, Retention, SeriesKeys, SeriesPoints, Stats, Store,
    SystemClock, WallClock, FORMAT_VERSION,
};

/// `ms` since the epoch as RFC 3339 UTC with milliseconds, or the number when out of range.
pub fn rfc3339_ms(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_else(|_| format!("{ms} ms"))
}

/// Entry points for the fuzz targets in `storage/fuzz` and the tests that replay their corpus:
/// the decoders of untrusted bytes that are not public otherwise.
#[doc(hidden)]
pub mod fuzzing {
    use crate::DecodeError;

    /// A fuzz target's inputs, for the tests that replay them without the fuzzer: its
    /// hand-made seeds (`FUZZ_DIR/seeds/TARGET`), checked to be at least `min_seeds`, then what
    /// the fuzzer kept (`FUZZ_DIR/corpus/TARGET`); each folder's files by name, hidden ones left
    /// out.
    pub fn inputs(
        fuzz_dir: &std::path::Path,
        target: &str,
        min_seeds: usize,
    ) -> std::io::Result<Vec<(String, Vec<u8>)>> {
        let seeds = folder(&fuzz_dir.join("seeds").join(target))?;
        if seeds.len() < min_seeds {
            let found = seeds.len();
            let message = format!("{target}: {found} seeds, fewer than {min_seeds}");
            return Err(std::io::Error::new(std::io::ErrorKind::NotFound, message));
        }
        let kept = folder(&fuzz_dir.join("corpus").join(target))?;
        Ok(seeds.into_iter().chain(kept).collect())
    }

    fn folder(dir: &std::path::Path) -> std::io::Result<Vec<(String, Vec<u8>)>> {
        let named =
            |e: std::io::Error| std::io::Error::new(e.kind(), format!("{}: {e}", dir.display()));
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(named)? {
            let path = entry?.path();
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if !name.starts_with('.') {
                files.push((name.into_owned(), std::fs::read(&path)?));
            }
        }
        files.sort();
        Ok(files)
    }

    /// Parses a whole write-ahead log file; returns how many frames were valid.
    pub fn decode_log(bytes: &[u8]) -> Result<usize, DecodeError> {
        crate::wal::parse_log(bytes).map(|replay| replay.records.len())
    }

    /// Decodes a raw chunk's body without its framing (tag, zstd, checksum), so that a fuzzer
    /// reaches the codecs instead of stopping at the checksum.
    pub fn decode_chunk_body(bytes: &[u8]) -> Result<usize, DecodeError> {
        let mut reader = crate::codec::Reader::new(bytes);
        let (timestamps, _) = crate::codec::decode_samples_body(&mut reader)?;
        reader.finish()?;
        Ok(timestamps.len())
    }

    /// The body of a raw chunk, unframed: seeds for the fuzzer.
    pub fn encode_chunk_body(timestamps: &[i64], values: &[f64]) -> Vec<u8> {
        let mut out = Vec::new();
        crate::codec::encode_samples_body(timestamps, values, &mut out);
        out
    }

    /// Decodes one log record body; returns how many samples it held.
    pub fn decode_log_record(bytes: &[u8]) -> Result<usize, DecodeError> {
        crate::wal::Record::decode(bytes).map(|record| record.samples.len())
    }

    /// `store` with `damage` applied (5-byte steps: offset u32 LE, then a byte XORed in there),
    /// written to a scratch file, opened read-only and checked. Returns the problems found, or
    /// the error that stopped the open; panics only if the store failed to contain one.
    pub fn check_damaged_store(store: &[u8], damage: &[u8]) -> Result<usize, crate::Error> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let mut file = store.to_vec();
        for step in damage.chunks_exact(5) {
            let offset = u32::from_le_bytes([step[0], step[1], step[2], step[3]]) as usize;
            if let Some(byte) = file.get_mut(offset % store.len().max(1)) {
                *byte ^= step[4];
            }
        }
        let path = std::env::temp_dir().join(format!(
            "outpost-fuzz-{}-{}.redb",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, &file).map_err(|cause| crate::Error::Io {
            path: path.clone(),
            cause,
        })?;
        let options = crate::Options {
            read_only: true,
            ..crate::Options::default()
        };
        let result = crate::Store::open(&path, options).and_then(|store| {
            let report = store.check()?;
            let _ = store.query_raw(
                &crate::Selector::parse("{__name__=~\".+\"}")?,
                i64::MIN,
                i64::MAX,
            );
            Ok(report.problems.len())
        });
        let _ = std::fs::remove_file(&path);
        result
    }
}

/// A series' number in the store's catalogue. Valid only for the store that issued it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesId(pub u32);

/// The resolution of stored data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Tier {
    Raw = 0,
    /// One rollup point per series per minute.
    Minute = 1,
    /// One rollup point per series per hour.
    Hour = 2,
}

impl Tier {
    /// The bucket width in milliseconds (1 for raw samples).
    pub fn resolution_ms(self) -> i64 {
        match self {
            Tier::Raw => 1,
            Tier::Minute => 60_000,
            Tier::Hour => 3_600_000,
        }
    }
}

/// The small state tables that other components keep in the store's file, so that their state
/// commits atomically with the samples it refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StateTable {
    /// The alert engine's per-alert state and transition history.
    AlertState,
    /// Notifications waiting to be delivered.
    NotificationQueue,
    /// The sync layer's cursor, epoch and sequence numbers.
    SyncCursor,
    /// The hub's registry of devices.
    DeviceRegistry,
}

/// A key of a state table, built by the one module that owns its kind of entry: its table, and
/// the prefixes its keys start with (`OWNED`, a key that is a whole word counts as its own
/// prefix), so that a test can show that no two owners' keys in one table meet.
pub trait StateKey: std::fmt::Display {
    const TABLE: StateTable;
    const OWNED: &'static [&'static str];
}

/// An owner of state keys and one of its prefixes.
pub type OwnedPrefix<'a> = (&'a str, &'a str);

/// Where the owners of one table's keys collide: a pair of prefixes, one of which starts the
/// other, that belong to different owners (`owners`: a name and its `OWNED` each).
pub fn colliding_prefixes<'a>(
    owners: &[(&'a str, &'a [&'a str])],
) -> Vec<(OwnedPrefix<'a>, OwnedPrefix<'a>)> {
    let mut out = Vec::new();
    for (i, (a, a_prefixes)) in owners.iter().enumerate() {
        for (b, b_prefixes) in &owners[i + 1..] {
            for pa in *a_prefixes {
                for pb in *b_prefixes {
                    if pa.starts_with(pb) || pb.starts_with(pa) {
                        out.push(((*a, *pa), (*b, *pb)));
                    }
                }
            }
        }
    }
    out
}

impl StateTable {
    pub const ALL: [StateTable; 4] = [
        StateTable::AlertState,
        StateTable::NotificationQueue,
        StateTable::SyncCursor,
        StateTable::DeviceRegistry,
    ];

    pub(crate) fn tag(self) -> u8 {
        self as u8 + 1
    }

    pub(crate) fn from_tag(tag: u8) -> Option<Self> {
        Self::ALL.get(usize::from(tag).checked_sub(1)?).copied()
    }

    pub(crate) fn table_name(self) -> &'static str {
        match self {
            StateTable::AlertState => "state.alerts",
            StateTable::NotificationQueue => "state.notifications",
            StateTable::SyncCursor => "state.sync",
            StateTable::DeviceRegistry => "state.devices",
        }
    }
}

/// One change to a state table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateOp {
    Put {
        table: StateTable,
        key: String,
        value: Vec<u8>,
    },
    Delete {
        table: StateTable,
        key: String,
    },
}

/// What [`WriteBatch::take_points`] took: samples as (series, timestamp, value), rollups as
/// (series, tier, bucket start, rollup).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct TakenPoints {
    pub samples: Vec<(SeriesId, i64, f64)>,
    pub rollups: Vec<(SeriesId, Tier, i64, Rollup)>,
}

/// Samples and state changes that the store accepts together: after a crash, either all of a
/// batch is recovered or none of it.
#[derive(Debug, Clone, Default)]
pub struct WriteBatch {
    pub(crate) samples: Vec<(u32, i64, f64)>,
    pub(crate) state: Vec<StateOp>,
    pub(crate) rollups: Vec<wal::RollupWrite>,
}

impl WriteBatch {
    pub fn with_capacity(samples: usize) -> Self {
        WriteBatch {
            samples: Vec::with_capacity(samples),
            ..Default::default()
        }
    }

    /// Appends `other`'s writes after this batch's, in order (a later write of the same key
    /// still wins).
    pub fn extend(&mut self, other: WriteBatch) {
        // Into nothing, a move: a hub gathers each device's batches this way, most often one.
        fn append<T>(to: &mut Vec<T>, from: Vec<T>) {
            if to.is_empty() {
                *to = from;
            } else {
                to.extend(from);
            }
        }
        append(&mut self.samples, other.samples);
        append(&mut self.state, other.state);
        append(&mut self.rollups, other.rollups);
    }

    /// Takes the batch's samples and rollup points out, leaving its state writes: for a hub
    /// that keeps the fleet's samples in another engine and only its bookkeeping here.
    pub fn take_points(&mut self) -> TakenPoints {
        TakenPoints {
            samples: std::mem::take(&mut self.samples)
                .into_iter()
                .map(|(series, ts, value)| (SeriesId(series), ts, value))
                .collect(),
            rollups: std::mem::take(&mut self.rollups)
                .into_iter()
                .map(|r| (SeriesId(r.series), r.tier, r.bucket, r.rollup))
                .collect(),
        }
    }

    /// Room for `samples` more samples.
    pub fn reserve(&mut self, samples: usize) {
        self.samples.reserve(samples);
    }

    /// Adds a sample; a later write of the same series and timestamp replaces it.
    pub fn sample(&mut self, series: SeriesId, timestamp_ms: i64, value: f64) {
        self.samples.push((series.0, timestamp_ms, value));
    }

    /// Writes a rollup point directly, replacing the bucket, for periods whose raw samples this
    /// store will not see (a device's rollups for data it has already dropped). `bucket_start`
    /// must be a multiple of the tier's resolution; raw samples later written into the same
    /// bucket recompute it from raw data.
    pub fn rollup(&mut self, series: SeriesId, tier: Tier, bucket_start: i64, rollup: Rollup) {
        if tier != Tier::Raw {
            self.rollups.push(wal::RollupWrite {
                tier,
                series: series.0,
                bucket: query::bucket_of(bucket_start, tier.resolution_ms()),
                rollup,
            });
        }
    }

    /// Puts `key`'s entry in its state table.
    pub fn put<K: StateKey>(&mut self, key: &K, value: Vec<u8>) {
        self.put_state(K::TABLE, key.to_string(), value);
    }

    /// Deletes `key`'s entry from its state table.
    pub fn remove<K: StateKey>(&mut self, key: &K) {
        self.delete_state(K::TABLE, key.to_string());
    }

    pub fn put_state(&mut self, table: StateTable, key: impl Into<String>, value: Vec<u8>) {
        self.state.push(StateOp::Put {
            table,
            key: key.into(),
            value,
        });
    }

    pub fn delete_state(&mut self, table: StateTable, key: impl Into<String>) {
        self.state.push(StateOp::Delete {
            table,
            key: key.into(),
        });
    }

    pub fn len(&self) -> usize {
        self.samples.len() + self.state.len() + self.rollups.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_extended_batch_holds_both_batches_writes_in_order() {
        let batch = |from: i64, count: i64| {
            let mut write = WriteBatch::default();
            for at in from..from + count {
                write.sample(SeriesId(1), at, at as f64);
                write.put_state(StateTable::AlertState, at.to_string(), vec![at as u8]);
            }
            write
        };
        for (first, second) in [(0, 0), (0, 2), (3, 0), (3, 2)] {
            let mut write = batch(0, first);
            write.extend(batch(first, second));
            let times: Vec<i64> = write.samples.iter().map(|s| s.1).collect();
            assert_eq!(times, (0..first + second).collect::<Vec<_>>());
            assert_eq!(write.state, batch(0, first + second).state);
        }
    }

    #[test]
    fn prefixes_that_start_one_another_collide() {
        let owners: [(&str, &[&str]); 3] = [
            ("engine", &["a/", "~event_seq"]),
            ("fleet", &["f/"]),
            ("runtime", &["~event_seq_x", "f"]),
        ];
        let found = colliding_prefixes(&owners);
        assert_eq!(
            found,
            vec![
                (("engine", "~event_seq"), ("runtime", "~event_seq_x")),
                (("fleet", "f/"), ("runtime", "f")),
            ]
        );
        assert!(colliding_prefixes(&owners[..2]).is_empty());
    }
}
