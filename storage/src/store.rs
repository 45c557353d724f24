//! The store: an in-memory head with its write-ahead log, folded into redb by one writer thread.
//!
//! Invariants (see `FORMAT.md` for the file layout):
//! - Every accepted write is in the head until a seal commits it durably to redb; readers look at
//!   the head *before* they open a read transaction, so a seal that commits and then clears the
//!   head never hides data from them.
//! - Only the writer thread opens redb write transactions.
//! - A log generation is deleted only after a durable commit recorded that it was folded in.
//! - After a failed log write, fsync or commit, the store is poisoned and refuses writes until it
//!   heals: a failed seal's data goes back into the head, so that healing (reopening redb, a new
//!   log generation, a seal) commits everything the store ever accepted.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::{Debug, Write as _};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redb::{BackendError, Database, Durability, ReadableTable, StorageBackend, TableDefinition};

use crate::changes::{Backlog, ChunkReceipt, DirtyChunk, HeadMark, LiveChanges, Tracker};
use crate::codec::{self, Rollup};
use crate::disk::{Disk, RealDisk};
use crate::error::{Error, Result};
use crate::fasthash::FastMap;
use crate::query::{self, bucket_of, Aggregation};
use crate::series::{Selector, SeriesKey};
use crate::series_buffer::SeriesBuffer;
use crate::wal::{self, LogWriter, Record, RollupWrite};
use crate::{SeriesId, StateOp, StateTable, Tier, WriteBatch};

/// The on-disk format this build reads and writes. Format 1 is the first released format; a
/// build that changes the format bumps this and migrates older stores in `init_or_check_format`.
pub const FORMAT_VERSION: u32 = 1;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(crate) const SERIES: TableDefinition<u32, &str> = TableDefinition::new("series");
/// Every tier's chunks, keyed `(series, tier, window start)`: a series' raw and rollup chunks sit
/// side by side, so a seal rewrites few pages and a query reads neighbouring ones.
pub(crate) const CHUNKS: TableDefinition<(u32, u8, i64), &[u8]> = TableDefinition::new("chunks");
type ChunkTable<'t> = redb::Table<'t, (u32, u8, i64), &'static [u8]>;

const META_FORMAT: &str = "format_version";
/// Log generations below this one are folded into the file.
const META_GENERATION: &str = "log_generation";
const META_NEWEST: &str = "newest_timestamp";
/// The time that age retention was last measured against (ms, two's complement): see
/// [`Shared::retention_now`].
const META_RETENTION_NOW: &str = "retention_now";
const META_RAW_SAMPLES: &str = "raw_samples";
const META_MINUTE_POINTS: &str = "minute_points";
const META_HOUR_POINTS: &str = "hour_points";
/// Present once the store tracks changes for a subscriber; before that, every chunk is backlog.
const META_CHANGES_TRACKED: &str = "changes_tracked";
/// The change feed's backlog: chunks written while some of their samples were unconfirmed,
/// keyed `(window start, tier, series)` so that the oldest come first, valued with the log
/// generation of the seal that last dirtied them.
const DIRTY: TableDefinition<(i64, u8, u32), u64> = TableDefinition::new("sync.dirty");

/// Chunk windows: one chunk per series per window, aligned to the epoch.
const RAW_WINDOW: i64 = 2 * 3_600_000;
const MINUTE_WINDOW: i64 = 86_400_000;
const HOUR_WINDOW: i64 = 30 * 86_400_000;
const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 3_600_000;

/// A monotonic clock for the store's timers. The store never reads the wall clock; sample
/// timestamps come from the caller.
pub trait Clock: Send + Sync + Debug + 'static {
    /// Time elapsed since an arbitrary fixed origin.
    fn now(&self) -> Duration;
}

/// The caller's idea of the current Unix time, in milliseconds: what age retention is measured
/// against. The store reads no clock itself; the binary passes the system's, tests a manual one.
pub trait WallClock: Send + Sync + Debug + 'static {
    fn unix_ms(&self) -> i64;
}

/// A wall clock that says what it was last set to: for tests, and for callers whose "now" is
/// data rather than a clock.
#[derive(Debug, Default)]
pub struct ManualWallClock(std::sync::atomic::AtomicI64);

impl ManualWallClock {
    pub fn new(unix_ms: i64) -> Self {
        ManualWallClock(std::sync::atomic::AtomicI64::new(unix_ms))
    }

    pub fn set(&self, unix_ms: i64) {
        self.0.store(unix_ms, Ordering::Relaxed);
    }
}

impl WallClock for ManualWallClock {
    fn unix_ms(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The real monotonic clock.
#[derive(Debug)]
pub struct SystemClock(Instant);

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock(Instant::now())
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.0.elapsed()
    }
}

/// How long each tier keeps data, by sample time, measured back from the store's retention time
/// (see [`Options::wall_clock`]). `None` keeps data until the byte budget needs the room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub raw: Option<Duration>,
    pub minute: Option<Duration>,
    pub hour: Option<Duration>,
}

impl Default for Retention {
    fn default() -> Self {
        let day = Duration::from_secs(86_400);
        Retention {
            raw: Some(day * 30),
            minute: Some(day * 180),
            hour: Some(day * 5 * 366),
        }
    }
}

/// Store settings. The defaults suit an agent on a Jetson's flash.
#[derive(Debug, Clone)]
pub struct Options {
    /// How often accepted samples are written to the log; a process crash loses at most this.
    pub flush_interval: Duration,
    /// How often the log is fsynced; a power loss loses at most this.
    pub sync_interval: Duration,
    /// How often the head is folded into redb chunks with one durable commit. Longer means fewer
    /// bytes written to flash and a larger head in memory.
    pub seal_interval: Duration,
    /// A seal also happens when the head holds this many samples.
    pub max_head_samples: usize,
    /// A seal also happens when the head's state writes (keys, values and their bookkeeping,
    /// estimated) pass this many bytes: a hub that keeps its samples in another engine writes
    /// almost only state, and a fleet's first batches define every series of every device.
    pub max_head_state_bytes: usize,
    /// The most bytes that the store's files may occupy; `None` for no limit.
    pub budget_bytes: Option<u64>,
    pub retention: Retention,
    /// The trusted time that age retention is measured against. Without one, only the byte
    /// budget removes data. Retention's "now" is the earliest of this clock, the newest sample
    /// stored and the last retention time advanced by the monotonic [`Options::clock`]: no
    /// sample, however far in the future, and no forward step of the wall clock can make data
    /// look older than it is (storage/FORMAT.md, "Budget and retention").
    pub wall_clock: Option<Arc<dyn WallClock>>,
    /// redb's page cache.
    pub cache_bytes: usize,
    /// zstd level for sealed chunks (1..=22).
    pub zstd_level: i32,
    pub clock: Arc<dyn Clock>,
    /// Where the files live: the real file system, or a simulated disk in tests.
    pub disk: Arc<dyn Disk>,
    /// Keep a change feed for one subscriber (the agent's sync layer): see
    /// [`Store::live_since`] and [`Store::dirty_chunks`].
    pub track_changes: bool,
    /// Open without modifying anything: the file is not written, logs are replayed into memory
    /// but neither folded in nor removed, and every write answers [`Error::ReadOnly`]. For
    /// commands that only look (`outpost db stats`, `query`, `check`). The file must exist.
    pub read_only: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            flush_interval: Duration::from_secs(5),
            sync_interval: Duration::from_secs(30),
            seal_interval: Duration::from_secs(3600),
            max_head_samples: 2_000_000,
            max_head_state_bytes: 4 << 20,
            budget_bytes: Some(1 << 30),
            retention: Retention::default(),
            wall_clock: None,
            cache_bytes: 16 << 20,
            zstd_level: 9,
            clock: Arc::new(SystemClock::default()),
            disk: Arc::new(RealDisk),
            track_changes: false,
            read_only: false,
        }
    }
}

impl Options {
    fn validate(&self) -> Result<()> {
        let bad = |name, reason: &str| {
            Err(Error::Option {
                name,
                reason: reason.to_string(),
            })
        };
        if self.flush_interval.is_zero() {
            return bad("flush_interval", "must be greater than zero");
        }
        if self.sync_interval < self.flush_interval {
            return bad("sync_interval", "must be at least flush_interval");
        }
        if self.seal_interval < self.flush_interval {
            return bad("seal_interval", "must be at least flush_interval");
        }
        if self.max_head_samples == 0 {
            return bad("max_head_samples", "must be greater than zero");
        }
        if self.max_head_state_bytes == 0 {
            return bad("max_head_state_bytes", "must be greater than zero");
        }
        if self.budget_bytes.is_some_and(|b| b < 4 << 20) {
            return bad("budget_bytes", "must be at least 4 MiB");
        }
        if !(1..=22).contains(&self.zstd_level) {
            return bad("zstd_level", "must be between 1 and 22");
        }
        Ok(())
    }
}

/// Points of one series returned by a query, sorted by timestamp, one per timestamp.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesPoints {
    pub series: SeriesKey,
    pub points: Vec<(i64, f64)>,
}

/// Rollup points of one series, sorted by bucket start.
pub type SeriesRollups = (SeriesKey, Vec<(i64, Rollup)>);

/// What `outpost db stats` reports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    pub series: u64,
    /// Raw samples in sealed chunks plus samples still in the head (a replaced sample in the head
    /// counts twice until the next seal).
    pub raw_samples: u64,
    pub minute_points: u64,
    pub hour_points: u64,
    pub head_samples: u64,
    /// State-table writes (puts and deletions) in the head, waiting for the seal.
    pub head_state_writes: u64,
    /// Bytes allocated on disk to the store file and its logs (what `du` reports).
    pub disk_bytes: u64,
    /// Bytes this process wrote to the store's files since it opened the store.
    pub bytes_written_since_open: u64,
    /// Of those, the bytes written to the write-ahead log.
    pub log_bytes_written_since_open: u64,
    pub log_generation: u64,
}

/// What a health check needs, from memory only: it never waits for the disk or for a seal, so
/// that a health endpoint stays cheap whatever the store holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub series: u64,
    /// [`Stats::disk_bytes`] as of the writer's last maintenance (a second or so ago).
    pub disk_bytes: u64,
    /// Why the store refuses writes, while it does ([`Store::write_failure`]).
    pub write_failure: Option<String>,
}

impl Stats {
    pub fn bytes_per_raw_sample(&self) -> f64 {
        if self.raw_samples == 0 {
            0.0
        } else {
            self.disk_bytes as f64 / self.raw_samples as f64
        }
    }
}

// ---------------------------------------------------------------------------------------------

/// redb's file backend, counting the bytes it writes (for `bytes_written_since_open`).
#[derive(Debug)]
struct CountingBackend {
    inner: Box<dyn StorageBackend>,
    written: Arc<AtomicU64>,
}

impl StorageBackend for CountingBackend {
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.inner.read(offset, out)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.inner.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.written.fetch_add(data.len() as u64, Ordering::Relaxed);
        self.inner.write(offset, data)
    }
    fn close(&self) -> std::io::Result<()> {
        self.inner.close()
    }
    fn try_lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(s, e)
    }
    fn try_lock_shared_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(s, e)
    }
    fn lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(s, e)
    }
    fn lock_shared_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(s, e)
    }
    fn unlock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(s, e)
    }
    fn query_lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(s, e)
    }
}

#[derive(Debug, Default)]
struct Catalogue {
    /// Each key held once, shared by both indexes: a hub's catalogue of a large fleet's series
    /// is most of its memory.
    keys: Vec<Arc<SeriesKey>>,
    by_key: HashMap<Arc<SeriesKey>, u32>,
    /// Keys below this index are in the SERIES table.
    persisted: usize,
}

/// The catalogue held for reading: see [`Store::series_keys`].
pub struct SeriesKeys<'a>(RwLockReadGuard<'a, Catalogue>);

impl SeriesKeys<'_> {
    pub fn get(&self, id: SeriesId) -> Option<&SeriesKey> {
        self.0.keys.get(id.0 as usize).map(|key| &**key)
    }
}

impl Catalogue {
    fn define(&mut self, id: u32, key: SeriesKey) -> std::result::Result<(), String> {
        match (id as usize).cmp(&self.keys.len()) {
            std::cmp::Ordering::Less if *self.keys[id as usize] == key => Ok(()),
            std::cmp::Ordering::Equal => {
                let key = Arc::new(key);
                self.by_key.insert(key.clone(), id);
                self.keys.push(key);
                Ok(())
            }
            _ => Err(format!(
                "series id {id} for {key} does not follow the catalogue"
            )),
        }
    }
}

/// Data accepted but not yet sealed into redb.
#[derive(Debug, Default, Clone)]
struct HeadData {
    /// Per series, samples in write order (so the last write of a timestamp wins).
    series: FastMap<u32, SeriesBuffer>,
    samples: usize,
    state: StateWrites,
    rollups: Vec<RollupWrite>,
}

/// The head's state writes, the last one per key (`None` for a deletion). A hub rewrites each
/// device's bookkeeping with every batch: kept in write order, a head of a large fleet held
/// every version until the seal and read the newest by scanning them all.
#[derive(Debug, Clone)]
struct StateWrites {
    tables: HashMap<StateTable, BTreeMap<String, Option<Vec<u8>>>>,
    /// How many of the writes are deletions.
    deletions: usize,
    /// Deletions past which the head looks for ones that hide nothing ([`Shared::prune_deletions`]).
    prune_at: usize,
    /// The memory the writes hold, estimated: see [`state_entry_bytes`].
    bytes: usize,
}

/// What one state write holds in memory, estimated for the seal's byte bound: its key and
/// value, their two headers and a share of the map's node, each allocation rounded up by malloc.
fn state_entry_bytes(key: &str, value: Option<&[u8]>) -> usize {
    const PER_ENTRY: usize = 96;
    PER_ENTRY + key.len() + value.map_or(0, <[u8]>::len)
}

/// The size of a pending log record past which it is flushed before `flush_interval`: a hub
/// that receives a fleet's first batches (a hundred thousand series defined within seconds)
/// otherwise held them twice more until the flush, in the record and in its encoding.
const PENDING_FLUSH_BYTES: usize = 1 << 20;

/// What a pending sample, rollup or series definition costs beside its key, estimated.
const PENDING_BYTES_PER_ITEM: usize = 24;

fn state_op_bytes(op: &StateOp) -> usize {
    match op {
        StateOp::Put { key, value, .. } => PENDING_BYTES_PER_ITEM * 3 + key.len() + value.len(),
        StateOp::Delete { key, .. } => PENDING_BYTES_PER_ITEM * 2 + key.len(),
    }
}

/// The pending log record has grown past [`PENDING_FLUSH_BYTES`]: the writer flushes it now.
fn pending_full(head: &Head) -> bool {
    head.pending_bytes >= PENDING_FLUSH_BYTES
}

/// The fewest deletions a head holds before it looks for ones that hide nothing: a lookup in
/// redb each, done in bulk.
const PRUNE_DELETIONS_FROM: usize = 1024;

impl Default for StateWrites {
    fn default() -> StateWrites {
        StateWrites {
            tables: HashMap::new(),
            deletions: 0,
            prune_at: PRUNE_DELETIONS_FROM,
            bytes: 0,
        }
    }
}

impl StateWrites {
    fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    fn len(&self) -> usize {
        self.tables.values().map(BTreeMap::len).sum()
    }

    fn record(&mut self, op: &StateOp) {
        let (table, key, value) = match op {
            StateOp::Put { table, key, value } => (table, key, Some(value.clone())),
            StateOp::Delete { table, key } => (table, key, None),
        };
        self.insert(*table, key.clone(), value);
    }

    fn insert(&mut self, table: StateTable, key: String, value: Option<Vec<u8>>) {
        let deletes = value.is_none();
        self.bytes += state_entry_bytes(&key, value.as_deref());
        let written = key.len();
        let replaced = self.tables.entry(table).or_default().insert(key, value);
        if let Some(old) = &replaced {
            self.bytes -= state_entry_bytes("", old.as_deref()) + written;
        }
        let deleted_before = matches!(replaced, Some(None));
        match (deleted_before, deletes) {
            (false, true) => self.deletions += 1,
            (true, false) => self.deletions -= 1,
            _ => {}
        }
    }

    /// `Some(None)` when the last write of `key` deleted it; `None` when it was not written.
    fn get(&self, table: StateTable, key: &str) -> Option<Option<&[u8]>> {
        let value = self.tables.get(&table)?.get(key)?;
        Some(value.as_deref())
    }

    /// The writes of `table` from key `from` on, in key order.
    fn starting_at<'a>(
        &'a self,
        table: StateTable,
        from: &'a str,
    ) -> impl Iterator<Item = (&'a str, Option<&'a [u8]>)> + 'a {
        self.tables.get(&table).into_iter().flat_map(move |writes| {
            writes
                .range::<str, _>((Bound::Included(from), Bound::Unbounded))
                .map(|(key, value)| (key.as_str(), value.as_deref()))
        })
    }

    /// Takes in writes made after these.
    fn append(&mut self, newer: StateWrites) {
        for (table, writes) in newer.tables {
            for (key, value) in writes {
                self.insert(table, key, value);
            }
        }
    }

    /// The deletions, by table.
    fn deleted_keys(&self) -> Vec<(StateTable, String)> {
        self.tables
            .iter()
            .flat_map(|(table, writes)| {
                writes
                    .iter()
                    .filter(|(_, value)| value.is_none())
                    .map(|(key, _)| (*table, key.clone()))
            })
            .collect()
    }

    /// Forgets the deletion of `key`: the caller knows it hides nothing.
    fn forget_deletion(&mut self, table: StateTable, key: &str) {
        if let Some(writes) = self.tables.get_mut(&table) {
            if matches!(writes.get(key), Some(None)) {
                writes.remove(key);
                self.deletions -= 1;
                self.bytes -= state_entry_bytes(key, None);
                if writes.is_empty() {
                    self.tables.remove(&table);
                }
            }
        }
    }
}

impl HeadData {
    fn is_empty(&self) -> bool {
        self.samples == 0 && self.state.is_empty() && self.rollups.is_empty()
    }

    fn apply(&mut self, samples: &[(u32, i64, f64)], state: &[StateOp], rollups: &[RollupWrite]) {
        for &(id, ts, value) in samples {
            self.series.entry(id).or_default().push(ts, value);
        }
        self.samples += samples.len();
        for op in state {
            self.state.record(op);
        }
        self.rollups.extend_from_slice(rollups);
    }

    /// Adds what was written after this, keeping write order.
    fn append(&mut self, newer: HeadData) {
        for (id, buffer) in newer.series {
            let into = self.series.entry(id).or_default();
            for (ts, value) in buffer.range(0, buffer.len()) {
                into.push(ts, value);
            }
        }
        self.samples += newer.samples;
        self.state.append(newer.state);
        self.rollups.extend(newer.rollups);
    }
}

/// Puts a seal whose commit failed back into the head, before what was written since, so that
/// nothing it held is lost while the store heals. The feed sees all of it as unconfirmed again:
/// a subscriber may get some samples twice, never none. (A small unconfirmed tail that the seal
/// had carried into the new head is then there twice; a timestamp's last write wins, and both
/// writes are the same.)
fn restore_unsealed(head: &mut Head, frozen: Arc<HeadData>, feed: FeedCommit) {
    let newer = std::mem::take(&mut head.active);
    let mut restored = Arc::try_unwrap(frozen).unwrap_or_else(|shared| (*shared).clone());
    restored.append(newer);
    head.active = restored;
    for (key, version) in feed.delivered {
        let kept = head.tracker.delivered.entry(key).or_insert(version);
        *kept = (*kept).max(version);
    }
}

#[derive(Debug)]
struct Head {
    active: HeadData,
    /// The data being sealed, visible to readers until its commit is done.
    frozen: Option<Arc<HeadData>>,
    /// What the next log frame will hold.
    pending: Record,
    /// The memory `pending` holds, estimated: past [`PENDING_FLUSH_BYTES`] it is flushed early.
    pending_bytes: usize,
    log: LogWriter,
    tracker: Tracker,
}

/// Why the store refuses writes.
#[derive(Debug, Clone)]
struct Poison {
    cause: String,
    /// An I/O failure (a full disk, a device that went away) may pass; a damaged file does not.
    heals: bool,
    /// When it happened (or when healing last failed), by the store's clock.
    at: Duration,
}

/// How long a poisoned store waits before its first try to heal: a failure that repeats at once
/// (a disk still full) should not make the writer spin.
const HEAL_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
struct Timers {
    last_flush: Duration,
    last_sync: Duration,
    last_seal: Duration,
    /// When [`Shared::disk_bytes`] was last measured for [`Store::health`].
    last_measure: Duration,
}

/// How often maintenance measures the files for [`Store::health`]: listing the logs and
/// reading their sizes after every write cost a hub taking a thousand batches a second 2 % of
/// its CPU.
const MEASURE_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Shared {
    path: PathBuf,
    options: Options,
    db: RwLock<Db>,
    catalogue: RwLock<Catalogue>,
    head: Mutex<Head>,
    /// Signalled when a seal finishes, for writers held back by a full head.
    sealed: std::sync::Condvar,
    timers: Mutex<Timers>,
    poison: Mutex<Option<Poison>>,
    db_written: Arc<AtomicU64>,
    log_written: AtomicU64,
    /// [`Shared::disk_bytes`] as of the last maintenance.
    disk_bytes: AtomicU64,
    /// The retention time of the last seal and the monotonic time it was taken at: retention's
    /// "now" advances no faster than the monotonic clock from there.
    retention_anchor: Mutex<Option<(i64, Duration)>>,
    /// What replaying the logs at open could not recover, one line per problem.
    replay_report: Vec<String>,
}

enum Command {
    Write(WriteBatch, flume::Sender<Result<()>>),
    Sync(flume::Sender<Result<()>>),
    Seal(flume::Sender<Result<()>>),
    Tick(flume::Sender<Result<()>>),
    Compact(flume::Sender<Result<bool>>),
    Backup(PathBuf, flume::Sender<Result<u64>>),
    Close(flume::Sender<Result<()>>),
    Wake,
}

/// A handle to an open store. Cheap to share behind an `Arc`; all methods take `&self`.
#[derive(Debug)]
pub struct Store {
    shared: Arc<Shared>,
    commands: flume::Sender<CommandBox>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

/// `Command` is not `Debug`; this wrapper lets `Store` derive it.
struct CommandBox(Command);
impl Debug for CommandBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Copies a file and makes the copy durable. Only the writer thread changes the store's file,
/// and it is busy here, so the file is the state of its last commit.
fn copy_synced(from: &Path, to: &Path) -> Result<u64> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |cause| Error::Io { path, cause }
    };
    let temporary = to.with_extension("partial");
    let bytes = std::fs::copy(from, &temporary).map_err(io(&temporary))?;
    std::fs::File::open(&temporary)
        .and_then(|f| f.sync_all())
        .map_err(io(&temporary))?;
    std::fs::rename(&temporary, to).map_err(io(to))?;
    Ok(bytes)
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |cause| Error::Io {
        path: path.to_path_buf(),
        cause,
    }
}

impl Store {
    /// Opens the store at `path`, creating it if the file does not exist, replaying its log after
    /// a crash. Fails with [`Error::Locked`] if another process has it open.
    pub fn open(path: impl AsRef<Path>, options: Options) -> Result<Store> {
        let path = path.as_ref().to_path_buf();
        contain(&path, || Store::open_unguarded(path.clone(), options))
    }

    fn open_unguarded(path: PathBuf, options: Options) -> Result<Store> {
        options.validate()?;
        let disk = options.disk.clone();
        let db_written = Arc::new(AtomicU64::new(0));
        let db = if options.read_only {
            open_read_only(&path, &options)?
        } else {
            let (backend, fresh) = disk.database(&path).map_err(io_error(&path))?;
            let backend = CountingBackend {
                inner: backend,
                written: db_written.clone(),
            };
            let db = redb::Builder::new()
                .set_cache_size(options.cache_bytes)
                .create_with_backend(backend)
                .map_err(|e| open_error(e, &path, fresh))?;
            init_format(&db, &path, fresh)?;
            if options.track_changes {
                start_tracking(&db)?;
            }
            Db::Writable(db)
        };
        let generation = check_format(&db, &path)?;
        let catalogue = load_catalogue(&db, &path)?;
        let retention_anchor =
            read_meta(&db, META_RETENTION_NOW)?.map(|at| (at as i64, options.clock.now()));

        let logs = wal::list_logs(&*disk, &path).map_err(io_error(&path))?;
        let replay = replay_logs(&*disk, &logs, generation, catalogue, options.read_only)?;
        let catalogue = replay.catalogue;
        let replayed = replay.head;
        let next_generation = replay.next_generation;
        let replay_report = replay.report;
        for line in &replay_report {
            tracing::warn!(store = %path.display(), "{line}");
        }

        let log = if options.read_only {
            LogWriter::detached(&path, next_generation)
        } else {
            LogWriter::create(&*disk, &path, next_generation).map_err(io_error(&path))?
        };
        let now = options.clock.now();
        let read_only = options.read_only;
        let shared = Arc::new(Shared {
            path: path.clone(),
            db: RwLock::new(db),
            catalogue: RwLock::new(catalogue),
            head: Mutex::new(Head {
                active: replayed,
                frozen: None,
                pending: Record::default(),
                pending_bytes: 0,
                log,
                tracker: Tracker::default(),
            }),
            sealed: std::sync::Condvar::new(),
            timers: Mutex::new(Timers {
                last_flush: now,
                last_sync: now,
                last_seal: now,
                last_measure: now,
            }),
            poison: Mutex::new(None),
            db_written,
            log_written: AtomicU64::new(0),
            disk_bytes: AtomicU64::new(0),
            retention_anchor: Mutex::new(retention_anchor),
            replay_report,
            options,
        });
        let (commands, receiver) = flume::bounded::<CommandBox>(64);
        if read_only {
            // No writer thread: every command that would write answers `Error::ReadOnly`.
            return Ok(Store {
                shared,
                commands,
                writer: Mutex::new(None),
            });
        }
        // Fold what the logs held into the file now, so that a crash loop cannot grow them; then
        // every older log is either folded in or held nothing.
        if !logs.is_empty() {
            shared.seal()?;
            shared.remove_logs_before(lock(&shared.head).log.generation);
        }
        shared
            .disk_bytes
            .store(shared.disk_bytes(), Ordering::Relaxed);
        let writer_shared = shared.clone();
        let writer = std::thread::Builder::new()
            .name("outpost-store-writer".into())
            .spawn(move || writer_loop(&writer_shared, &receiver))
            .map_err(io_error(&path))?;
        Ok(Store {
            shared,
            commands,
            writer: Mutex::new(Some(writer)),
        })
    }

    /// What replaying the write-ahead logs at open could not recover (damaged frames, samples of
    /// series whose definition was lost), one line per problem; empty after a clean replay.
    pub fn replay_report(&self) -> &[String] {
        &self.shared.replay_report
    }

    /// Whether this store keeps a change feed ([`Options::track_changes`]).
    /// Why the store refuses writes, while it does: after an I/O failure (a full disk) until it
    /// heals by itself, or for good after finding its file damaged.
    pub fn write_failure(&self) -> Option<String> {
        self.shared.write_failure()
    }

    pub fn tracks_changes(&self) -> bool {
        self.shared.options.track_changes
    }

    /// The path of the store file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// The id of a series, creating it if it is new.
    pub fn series_id(&self, key: &SeriesKey) -> Result<SeriesId> {
        if let Some(&id) = read(&self.shared.catalogue).by_key.get(key) {
            return Ok(SeriesId(id));
        }
        let mut catalogue = self
            .shared
            .catalogue
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(&id) = catalogue.by_key.get(key) {
            return Ok(SeriesId(id));
        }
        self.writable()?;
        let id = u32::try_from(catalogue.keys.len()).map_err(|_| Error::Option {
            name: "series",
            reason: "the store holds 2^32 series already".into(),
        })?;
        let shared = Arc::new(key.clone());
        catalogue.by_key.insert(shared.clone(), id);
        catalogue.keys.push(shared);
        let text = key.to_string();
        let mut head = lock(&self.shared.head);
        head.pending_bytes += PENDING_BYTES_PER_ITEM + text.len();
        head.pending.defs.push((id, text));
        Ok(SeriesId(id))
    }

    /// The key of a series id, shared with the catalogue: no copy of its strings.
    pub fn shared_series_key(&self, id: SeriesId) -> Option<Arc<SeriesKey>> {
        read(&self.shared.catalogue)
            .keys
            .get(id.0 as usize)
            .cloned()
    }

    /// The catalogue's keys, read under one lock for many look-ups: a caller that reads the
    /// keys of thousands of series at once takes the lock once, and clones no `Arc` (whose
    /// count is one more cache miss per key). Defining a series waits while this is held: hold
    /// it for one pass, not across I/O.
    pub fn series_keys(&self) -> SeriesKeys<'_> {
        SeriesKeys(read(&self.shared.catalogue))
    }

    /// The key of a series id.
    pub fn series_key(&self, id: SeriesId) -> Option<SeriesKey> {
        read(&self.shared.catalogue)
            .keys
            .get(id.0 as usize)
            .map(|key| SeriesKey::clone(key))
    }

    /// Accepts a batch into the head. It survives a process crash once the next flush has run
    /// (within `flush_interval`), and a power loss once the log is synced (within
    /// `sync_interval`, or at [`Store::sync`]).
    ///
    /// When the head is full and the writer thread is still sealing, this waits for it: a
    /// producer faster than the disk is slowed down rather than allowed to grow memory and log
    /// without bound.
    pub fn write(&self, batch: WriteBatch) -> Result<()> {
        self.writable()?;
        let mut batch = Some(batch);
        loop {
            let seal_due = self.shared.try_write(&mut batch)?;
            if seal_due || batch.is_some() {
                let woken = self.commands.try_send(CommandBox(Command::Wake));
                if let Err(flume::TrySendError::Disconnected(_)) = woken {
                    // The writer thread is gone: nobody will ever empty the head.
                    return Err(Error::Closed);
                }
            }
            if batch.is_none() {
                return Ok(());
            }
            self.shared.wait_for_room();
        }
    }

    /// [`Store::write`] for async callers: the batch is handed to the writer thread, and the
    /// future completes when it has been accepted. Works on any executor.
    pub async fn write_async(&self, batch: WriteBatch) -> Result<()> {
        self.writable()?;
        let (reply, answer) = flume::bounded(1);
        self.commands
            .send_async(CommandBox(Command::Write(batch, reply)))
            .await
            .map_err(|_| Error::Closed)?;
        answer.recv_async().await.map_err(|_| Error::Closed)?
    }

    /// Returns when everything written so far is durable (survives a power loss).
    pub fn sync(&self) -> Result<()> {
        self.request(Command::Sync)
    }

    /// [`Store::sync`] for async callers; never blocks the executor.
    pub async fn sync_async(&self) -> Result<()> {
        self.writable()?;
        let (reply, answer) = flume::bounded(1);
        self.commands
            .send_async(CommandBox(Command::Sync(reply)))
            .await
            .map_err(|_| Error::Closed)?;
        answer.recv_async().await.map_err(|_| Error::Closed)?
    }

    /// Folds the head into redb now, with one durable commit.
    pub fn seal(&self) -> Result<()> {
        self.request(Command::Seal)
    }

    /// Runs the flush, sync and seal that are due by the store's clock. The writer thread does
    /// this by itself; callers that drive a manual [`Clock`] call it after moving the clock.
    pub fn tick(&self) -> Result<()> {
        self.request(Command::Tick)
    }

    /// Seals, then rewrites the file so that it holds no free pages. Waits for running queries.
    pub fn compact(&self) -> Result<bool> {
        self.writable()?;
        let (reply, answer) = flume::bounded(1);
        self.commands
            .send(CommandBox(Command::Compact(reply)))
            .map_err(|_| Error::Closed)?;
        answer.recv().map_err(|_| Error::Closed)?
    }

    /// Writes a consistent copy of the store to `to` while it stays open: seals, then copies the
    /// file before the writer thread may change it again. Writes made meanwhile wait in the
    /// head, so the copy holds everything up to the moment of the seal. Returns its size.
    pub fn backup(&self, to: &Path) -> Result<u64> {
        self.writable()?;
        let (reply, answer) = flume::bounded(1);
        self.commands
            .send(CommandBox(Command::Backup(to.to_path_buf(), reply)))
            .map_err(|_| Error::Closed)?;
        answer.recv().map_err(|_| Error::Closed)?
    }

    fn contain<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        contain(&self.shared.path, f)
    }

    pub(crate) fn read_db(&self) -> RwLockReadGuard<'_, Db> {
        read(&self.shared.db)
    }

    /// Every series the catalogue knows, by id.
    pub(crate) fn all_series(&self) -> Vec<(u32, SeriesKey)> {
        read(&self.shared.catalogue)
            .keys
            .iter()
            .enumerate()
            .map(|(id, key)| (id as u32, SeriesKey::clone(key)))
            .collect()
    }

    /// The samples of a series that are in the head, not yet in chunks.
    pub(crate) fn head_points(&self, id: u32) -> Vec<(i64, f64)> {
        self.shared
            .head_snapshot(&[id], i64::MIN, i64::MAX)
            .samples(id)
    }

    fn writable(&self) -> Result<()> {
        if self.shared.options.read_only {
            return Err(Error::ReadOnly);
        }
        Ok(())
    }

    fn request(&self, make: fn(flume::Sender<Result<()>>) -> Command) -> Result<()> {
        self.writable()?;
        let (reply, answer) = flume::bounded(1);
        self.commands
            .send(CommandBox(make(reply)))
            .map_err(|_| Error::Closed)?;
        answer.recv().map_err(|_| Error::Closed)?
    }

    /// Seals the head and closes the store.
    pub fn close(self) -> Result<()> {
        if self.shared.options.read_only {
            return Ok(());
        }
        let result = self.request(Command::Close);
        if let Some(writer) = lock(&self.writer).take() {
            let _ = writer.join();
        }
        result
    }

    /// The value of `key`'s entry, including writes not yet sealed.
    pub fn get<K: crate::StateKey>(&self, key: &K) -> Result<Option<Vec<u8>>> {
        self.state_get(K::TABLE, &key.to_string())
    }

    /// Every entry of `prefix`'s table whose key starts with `prefix`, in key order.
    pub fn list<K: crate::StateKey>(&self, prefix: &K) -> Result<Vec<(String, Vec<u8>)>> {
        self.state_list(K::TABLE, &prefix.to_string())
    }

    /// The value of a state table entry, including writes not yet sealed.
    pub fn state_get(&self, table: StateTable, key: &str) -> Result<Option<Vec<u8>>> {
        self.contain(|| {
            {
                let head = lock(&self.shared.head);
                let newest = head.active.state.get(table, key).or_else(|| {
                    let frozen = head.frozen.as_ref()?;
                    frozen.state.get(table, key)
                });
                if let Some(value) = newest {
                    return Ok(value.map(<[u8]>::to_vec));
                }
            }
            let db = read(&self.shared.db);
            let txn = db.begin_read()?;
            let definition: TableDefinition<&str, &[u8]> = TableDefinition::new(table.table_name());
            match txn.open_table(definition) {
                Ok(t) => Ok(t.get(key)?.map(|v| v.value().to_vec())),
                Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
                Err(e) => Err(e.into()),
            }
        })
    }

    /// Every entry of a state table whose key starts with `prefix`, in key order, including
    /// writes not yet sealed.
    pub fn state_list(&self, table: StateTable, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        self.state_scan(table, prefix, |key| key.starts_with(prefix), usize::MAX)
    }

    /// Every entry of `from`'s table with a key from `from` up to, not including, `to`, in key
    /// order, including writes not yet sealed.
    pub fn range<K: crate::StateKey>(&self, from: &K, to: &K) -> Result<Vec<(String, Vec<u8>)>> {
        self.state_range(K::TABLE, &from.to_string(), &to.to_string())
    }

    /// The first `limit` entries of [`Store::range`], read without going past them.
    pub fn range_first<K: crate::StateKey>(
        &self,
        from: &K,
        to: &K,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        self.state_range_first(K::TABLE, &from.to_string(), &to.to_string(), limit)
    }

    /// The first `limit` entries of [`Store::state_range`], read without going past them.
    pub fn state_range_first(
        &self,
        table: StateTable,
        from: &str,
        to: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        self.state_scan(table, from, |key| key < to, limit)
    }

    /// Every entry of a state table with a key from `from` up to, not including, `to`, in key
    /// order, including writes not yet sealed.
    pub fn state_range(
        &self,
        table: StateTable,
        from: &str,
        to: &str,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        self.state_scan(table, from, |key| key < to, usize::MAX)
    }

    /// The entries from `from` on while `within` holds, the first `limit` of them: `within`
    /// must hold for a contiguous run of keys starting at `from`.
    fn state_scan(
        &self,
        table: StateTable,
        from: &str,
        within: impl Fn(&str) -> bool,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        self.contain(|| {
            let mut entries: BTreeMap<String, Option<Vec<u8>>> = BTreeMap::new();
            // The head stays locked while the database is read, so that no seal moves operations
            // from the head into the database unseen between the two reads.
            let head = lock(&self.shared.head);
            // The frozen head's writes are older than the active one's.
            let writes = || {
                head.frozen
                    .iter()
                    .map(|f| &f.state)
                    .chain([&head.active.state])
                    .flat_map(|writes| {
                        writes
                            .starting_at(table, from)
                            .take_while(|(k, _)| within(k))
                    })
            };
            // Each deletion in the head may hide one of the first entries read: read that many
            // more, so that the first `limit` after the merge are all there.
            let read_limit = if limit == usize::MAX {
                limit
            } else {
                let deletions = writes().filter(|(_, value)| value.is_none()).count();
                limit.saturating_add(deletions)
            };
            {
                let db = read(&self.shared.db);
                let txn = db.begin_read()?;
                let definition: TableDefinition<&str, &[u8]> =
                    TableDefinition::new(table.table_name());
                match txn.open_table(definition) {
                    Ok(t) => {
                        for entry in t.range(from..)?.take(read_limit) {
                            let (key, value) = entry?;
                            if !within(key.value()) {
                                break;
                            }
                            entries.insert(key.value().to_string(), Some(value.value().to_vec()));
                        }
                    }
                    Err(redb::TableError::TableDoesNotExist(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            // The head's writes are newer than the database.
            for (key, value) in writes() {
                entries.insert(key.to_string(), value.map(<[u8]>::to_vec));
            }
            Ok(entries
                .into_iter()
                .filter_map(|(k, v)| v.map(|v| (k, v)))
                .take(limit)
                .collect())
        })
    }

    /// Live samples accepted after `mark` (all of the head for `None` or a mark of an earlier
    /// head), at most about `max_samples`, in series order, with the mark after them. Needs
    /// [`Options::track_changes`].
    pub fn live_since(&self, mark: Option<&HeadMark>, max_samples: usize) -> LiveChanges {
        let head = lock(&self.shared.head);
        let generation = head.tracker.generation;
        let start = mark.filter(|m| m.generation == generation);
        let mut ids: Vec<u32> = head.active.series.keys().copied().collect();
        ids.sort_unstable();
        let mut out = LiveChanges {
            series: Vec::new(),
            mark: HeadMark {
                generation,
                lengths: Vec::with_capacity(ids.len()),
            },
        };
        let mut budget = max_samples.max(1);
        for id in ids {
            let samples = &head.active.series[&id];
            let from = start.map_or(0, |m| m.length(id)).min(samples.len());
            let to = if budget == 0 {
                from
            } else {
                samples.len().min(from + budget)
            };
            budget -= to - from;
            if to > from {
                out.series.push((SeriesId(id), samples.range(from, to)));
            }
            out.mark.lengths.push((id, to as u32));
        }
        out
    }

    /// The subscriber has delivered everything before `mark`. A mark of an earlier head is
    /// ignored: its unconfirmed samples were handed on when that head was sealed.
    pub fn confirm_live(&self, mark: &HeadMark) {
        lock(&self.shared.head).tracker.confirm(mark);
    }

    /// Backlog chunks, oldest window first, up to about `max_bytes` (at least one), leaving out
    /// those in `in_flight` (sent, not yet confirmed) unless a seal has dirtied them again since.
    /// A raw chunk whose window also has samples in the head is shipped merged with them, so that
    /// it is never older than live data already sent.
    pub fn dirty_chunks(
        &self,
        max_bytes: usize,
        in_flight: &std::collections::HashSet<ChunkReceipt>,
    ) -> Result<Vec<DirtyChunk>> {
        self.contain(|| {
            let delivered = lock(&self.shared.head).tracker.delivered.clone();
            let db = read(&self.shared.db);
            let txn = db.begin_read()?;
            let dirty = match txn.open_table(DIRTY) {
                Ok(table) => table,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(e.into()),
            };
            let chunks = txn.open_table(CHUNKS)?;
            let mut out: Vec<DirtyChunk> = Vec::new();
            let mut missing: Vec<((i64, u8, u32), u64)> = Vec::new();
            let mut bytes = 0usize;
            for entry in dirty.iter()? {
                let (key, version) = entry?;
                let (window, tier, series) = key.value();
                let version = version.value();
                let receipt = ChunkReceipt {
                    key: (window, tier, series),
                    version,
                };
                if delivered.get(&(window, tier, series)) == Some(&version)
                    || in_flight.contains(&receipt)
                {
                    continue;
                }
                let Some(tier_enum) = [Tier::Raw, Tier::Minute, Tier::Hour]
                    .into_iter()
                    .find(|t| *t as u8 == tier)
                else {
                    continue;
                };
                let Some(stored) = chunks.get((series, tier, window))? else {
                    // Dropped by retention or the budget since: nothing left to ship.
                    missing.push(((window, tier, series), version));
                    continue;
                };
                let mut chunk_bytes = stored.value().to_vec();
                if tier_enum == Tier::Raw {
                    let head_samples = self.head_samples_in(series, window, window + RAW_WINDOW);
                    if !head_samples.is_empty() {
                        if let Ok((t, v)) = codec::decode_chunk(&chunk_bytes) {
                            let stored: Vec<(i64, f64)> = t.into_iter().zip(v).collect();
                            let merged = merge_sorted(&stored, &sort_last_wins(head_samples));
                            let (t, v): (Vec<i64>, Vec<f64>) = merged.into_iter().unzip();
                            chunk_bytes =
                                codec::encode_chunk(&t, &v, self.shared.options.zstd_level);
                        }
                    }
                }
                let Some(key) = self.series_key(SeriesId(series)) else {
                    continue;
                };
                bytes += chunk_bytes.len();
                out.push(DirtyChunk {
                    series: SeriesId(series),
                    key,
                    tier: tier_enum,
                    window_start: window,
                    bytes: chunk_bytes,
                    version,
                });
                if bytes >= max_bytes {
                    break;
                }
            }
            if !missing.is_empty() {
                lock(&self.shared.head).tracker.delivered.extend(missing);
            }
            Ok(out)
        })
    }

    /// The subscriber has delivered these backlog chunks; the next seal removes them from the
    /// backlog unless a seal since dirtied them again.
    pub fn confirm_chunks(&self, receipts: &[ChunkReceipt]) {
        let mut head = lock(&self.shared.head);
        for receipt in receipts {
            head.tracker.delivered.insert(receipt.key, receipt.version);
        }
    }

    /// How far behind the subscriber is.
    pub fn backlog(&self) -> Result<Backlog> {
        self.contain(|| {
            let (live, oldest_live, delivered) = {
                let head = lock(&self.shared.head);
                let mut live = 0u64;
                let mut oldest: Option<i64> = None;
                for (&id, samples) in &head.active.series {
                    let from = head.tracker.confirmed_length(id).min(samples.len());
                    live += (samples.len() - from) as u64;
                    if let Some(min) = samples.range(from, samples.len()).iter().map(|s| s.0).min()
                    {
                        oldest = Some(oldest.map_or(min, |o| o.min(min)));
                    }
                }
                (live, oldest, head.tracker.delivered.clone())
            };
            let db = read(&self.shared.db);
            let txn = db.begin_read()?;
            let (mut dirty_chunks, mut oldest_dirty) = (0u64, None);
            match txn.open_table(DIRTY) {
                Ok(table) => {
                    for entry in table.iter()? {
                        let (key, version) = entry?;
                        if delivered.get(&key.value()) != Some(&version.value()) {
                            dirty_chunks += 1;
                            // A rollup chunk's window starts up to 30 days before its data, and
                            // its buckets summarise raw data that is counted here too: only raw
                            // windows tell the age.
                            let (start, tier, _) = key.value();
                            if tier == Tier::Raw as u8 {
                                oldest_dirty =
                                    Some(oldest_dirty.map_or(start, |o: i64| o.min(start)));
                            }
                        }
                    }
                }
                Err(redb::TableError::TableDoesNotExist(_)) => {}
                Err(e) => return Err(e.into()),
            }
            let oldest_ms = match (oldest_live, oldest_dirty) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            Ok(Backlog {
                live_unconfirmed_samples: live,
                dirty_chunks,
                oldest_ms,
            })
        })
    }

    /// Head samples (frozen and active) of one series within `[from, to)`, in write order.
    fn head_samples_in(&self, series: u32, from: i64, to: i64) -> Vec<(i64, f64)> {
        let head = lock(&self.shared.head);
        head.frozen
            .iter()
            .map(|f| &**f)
            .chain(std::iter::once(&head.active))
            .filter_map(|data| data.series.get(&series))
            .flat_map(SeriesBuffer::to_vec)
            .filter(|(ts, _)| (from..to).contains(ts))
            .collect()
    }

    /// Every series that the selector matches, sorted by key.
    pub fn series(&self, selector: &Selector) -> Vec<(SeriesId, SeriesKey)> {
        let catalogue = read(&self.shared.catalogue);
        let mut out: Vec<(SeriesId, SeriesKey)> = catalogue
            .keys
            .iter()
            .enumerate()
            .filter(|(_, key)| selector.exact_name().is_none_or(|n| n == key.name()))
            .filter(|(_, key)| selector.matches(key))
            .map(|(id, key)| (SeriesId(id as u32), SeriesKey::clone(key)))
            .collect();
        out.sort_by(|a, b| a.1.cmp(&b.1));
        out
    }

    /// A read of `series` over `from..=to`: the stored tiers as of now (in `db`, which the
    /// caller holds for as long as it reads) and the head's data not yet in them.
    fn range_read(
        &self,
        db: &Db,
        series: &[(SeriesId, SeriesKey)],
        from: i64,
        to: i64,
    ) -> Result<RangeRead> {
        let ids: Vec<u32> = series.iter().map(|s| s.0 .0).collect();
        let head = self.shared.head_snapshot(&ids, from, to);
        let reader = TierReader::new(&db.begin_read()?)?;
        Ok(RangeRead {
            reader,
            head,
            from,
            to,
        })
    }

    /// Raw samples with `from <= timestamp <= to` of every matching series.
    pub fn query_raw(&self, selector: &Selector, from: i64, to: i64) -> Result<Vec<SeriesPoints>> {
        self.contain(|| {
            let series = self.series(selector);
            let db = read(&self.shared.db);
            let range = self.range_read(&db, &series, from, to)?;
            series
                .into_iter()
                .map(|(id, key)| {
                    let points = range.raw(id, &key)?;
                    Ok(SeriesPoints {
                        series: key,
                        points,
                    })
                })
                .collect()
        })
    }

    /// One value per `step`-wide bucket, buckets aligned to multiples of `step` since the epoch.
    /// Every bucket whose start lies in `[from rounded down to a step, to]` and that holds data
    /// is returned, aggregated over its whole width. A step that is a multiple of one hour is
    /// answered from the hourly tier, of one minute from the minute tier, anything else from raw
    /// samples.
    pub fn query_step(
        &self,
        selector: &Selector,
        from: i64,
        to: i64,
        step_ms: i64,
        aggregation: Aggregation,
    ) -> Result<Vec<SeriesPoints>> {
        self.contain(|| {
            if step_ms <= 0 {
                return Err(Error::Option {
                    name: "step",
                    reason: "must be positive".into(),
                });
            }
            let tier = if step_ms % HOUR_MS == 0 {
                Tier::Hour
            } else if step_ms % MINUTE_MS == 0 {
                Tier::Minute
            } else {
                Tier::Raw
            };
            let first = bucket_of(from, step_ms);
            let end = bucket_of(to, step_ms).saturating_add(step_ms - 1);
            // A rate needs each bucket's first sample's predecessor.
            let data_from = if aggregation == Aggregation::Rate {
                first.saturating_sub(step_ms)
            } else {
                first
            };
            let series = self.series(selector);
            let db = read(&self.shared.db);
            let range = self.range_read(&db, &series, data_from, end)?;
            let mut out = Vec::with_capacity(series.len());
            for (id, key) in series {
                let mut points = match (tier, aggregation) {
                    (Tier::Raw, Aggregation::Rate) => query::rate(&range.raw(id, &key)?, step_ms),
                    (Tier::Raw, _) => {
                        let samples = range.raw(id, &key)?;
                        query::reduce(&query::rollups_from_samples(&samples, step_ms), aggregation)
                    }
                    (_, Aggregation::Rate) => {
                        let points = range.tier(id, tier, &key)?;
                        let lasts: Vec<(i64, f64)> =
                            points.iter().map(|(b, r)| (*b, r.last)).collect();
                        query::rate(&lasts, step_ms)
                    }
                    (_, _) => {
                        let points = range.tier(id, tier, &key)?;
                        query::reduce(&query::coarsen(&points, step_ms), aggregation)
                    }
                };
                points.retain(|(bucket, _)| *bucket >= first && *bucket <= to);
                if !points.is_empty() {
                    out.push(SeriesPoints {
                        series: key,
                        points,
                    });
                }
            }
            Ok(out)
        })
    }

    /// The matching series that have data between `from` and `to`, sorted by key. Raw samples
    /// (stored or in the head) answer exactly; before a series' raw samples begin, where
    /// retention left only rollups, a minute or hour bucket that overlaps the range counts.
    /// Never by chunk windows alone: an hour chunk spans 30 days, and a Grafana variable asking
    /// for the last hour must not list a device gone for weeks.
    pub fn series_between(
        &self,
        selector: &Selector,
        from: i64,
        to: i64,
    ) -> Result<Vec<(SeriesId, SeriesKey)>> {
        self.contain(|| {
            let series = self.series(selector);
            if from > to {
                return Ok(Vec::new());
            }
            let db = read(&self.shared.db);
            let txn = db.begin_read()?;
            let reader = TierReader::new(&txn)?;
            let mut out = Vec::with_capacity(series.len());
            for (id, key) in series {
                if self.has_data_between(&reader, id.0, &key, from, to)? {
                    out.push((id, key));
                }
            }
            Ok(out)
        })
    }

    fn has_data_between(
        &self,
        reader: &TierReader,
        id: u32,
        key: &SeriesKey,
        from: i64,
        to: i64,
    ) -> Result<bool> {
        if reader.has_raw_between(id, from, to, key)? {
            return Ok(true);
        }
        let head = self.head_samples_in(id, i64::MIN, i64::MAX);
        if head.iter().any(|(t, _)| (from..=to).contains(t)) {
            return Ok(true);
        }
        let raw_start = Self::raw_start(reader, id, || head.iter().map(|(t, _)| *t).min())?;
        let rollups_to = raw_start.map_or(to, |start| to.min(start.saturating_sub(1)));
        if from > rollups_to {
            return Ok(false);
        }
        let head_rollups = self.head_rollup_buckets(id);
        for tier in [Tier::Minute, Tier::Hour] {
            let width = tier.resolution_ms();
            let first = bucket_of(from, width);
            let stored = read_rollups(&reader.chunks, id, tier, first, rollups_to, &|| {
                key.to_string()
            })?;
            let in_head = head_rollups
                .iter()
                .any(|(t, bucket)| *t == tier && (first..=rollups_to).contains(bucket));
            if !stored.is_empty() || in_head {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The tiers and buckets of the rollups written straight into the head for one series.
    fn head_rollup_buckets(&self, id: u32) -> Vec<(Tier, i64)> {
        let head = lock(&self.shared.head);
        head.frozen
            .iter()
            .map(|f| &**f)
            .chain(std::iter::once(&head.active))
            .flat_map(|part| part.rollups.iter())
            .filter(|write| write.series == id)
            .map(|write| (write.tier, write.bucket))
            .collect()
    }

    /// Where each matching series' raw samples begin in the store: the start of its oldest raw
    /// chunk's window, else its first sample in the head; `None` when it has no raw samples.
    /// Rollups before it stand for raw samples that retention or the budget removed.
    pub fn raw_starts(&self, selector: &Selector) -> Result<Vec<(SeriesKey, Option<i64>)>> {
        self.contain(|| {
            let series = self.series(selector);
            let db = read(&self.shared.db);
            let txn = db.begin_read()?;
            let reader = TierReader::new(&txn)?;
            let mut out = Vec::with_capacity(series.len());
            for (id, key) in series {
                let head_start = || {
                    self.head_samples_in(id.0, i64::MIN, i64::MAX)
                        .iter()
                        .map(|(t, _)| *t)
                        .min()
                };
                out.push((key, Self::raw_start(&reader, id.0, head_start)?));
            }
            Ok(out)
        })
    }

    /// Where a series' raw samples begin: the start of its oldest raw chunk's window, else its
    /// first sample in the head, which `head_start` gives.
    fn raw_start(
        reader: &TierReader,
        id: u32,
        head_start: impl FnOnce() -> Option<i64>,
    ) -> Result<Option<i64>> {
        let raw = Tier::Raw as u8;
        let stored = reader
            .chunks
            .range((id, raw, i64::MIN)..=(id, raw, i64::MAX))?
            .next()
            .transpose()?
            .map(|(k, _)| k.value().2);
        Ok(stored.or_else(head_start))
    }

    /// Rollup points of one tier, exactly as stored plus the head's contribution.
    pub fn query_rollups(
        &self,
        selector: &Selector,
        tier: Tier,
        from: i64,
        to: i64,
    ) -> Result<Vec<SeriesRollups>> {
        self.contain(|| {
            let series = self.series(selector);
            let width = tier.resolution_ms();
            let (from, to) = (
                bucket_of(from, width),
                bucket_of(to, width).saturating_add(width - 1),
            );
            let db = read(&self.shared.db);
            let range = self.range_read(&db, &series, from, to)?;
            series
                .into_iter()
                .map(|(id, key)| {
                    let points = match tier {
                        Tier::Raw => {
                            let samples = range.raw(id, &key)?;
                            samples
                                .into_iter()
                                .map(|(t, v)| (t, Rollup::of(v)))
                                .collect()
                        }
                        _ => range.tier(id, tier, &key)?,
                    };
                    Ok((key, points))
                })
                .collect()
        })
    }

    pub fn stats(&self) -> Result<Stats> {
        self.contain(|| {
            let shared = &self.shared;
            let (head_samples, head_state_writes, generation) = {
                let head = lock(&shared.head);
                let frozen = head.frozen.as_ref();
                let frozen_samples = frozen.map_or(0, |f| f.samples);
                let frozen_state = frozen.map_or(0, |f| f.state.len());
                (
                    (head.active.samples + frozen_samples) as u64,
                    (head.active.state.len() + frozen_state) as u64,
                    head.log.generation,
                )
            };
            let db = read(&shared.db);
            let txn = db.begin_read()?;
            let meta = txn.open_table(META)?;
            let get = |key: &str| -> Result<u64> { Ok(meta.get(key)?.map_or(0, |v| v.value())) };
            Ok(Stats {
                series: read(&shared.catalogue).keys.len() as u64,
                raw_samples: get(META_RAW_SAMPLES)? + head_samples,
                minute_points: get(META_MINUTE_POINTS)?,
                hour_points: get(META_HOUR_POINTS)?,
                head_samples,
                head_state_writes,
                disk_bytes: shared.disk_bytes(),
                bytes_written_since_open: shared.db_written.load(Ordering::Relaxed)
                    + shared.log_written.load(Ordering::Relaxed),
                log_bytes_written_since_open: shared.log_written.load(Ordering::Relaxed),
                log_generation: generation,
            })
        })
    }

    /// Bytes of encoded chunks per tier (raw, 1-minute, 1-hour), before redb's page overhead.
    /// Reads every chunk: for `outpost db stats --full`, not for anything that runs often.
    pub fn chunk_bytes(&self) -> Result<[u64; 3]> {
        self.contain(|| {
            let db = read(&self.shared.db);
            let txn = db.begin_read()?;
            let mut chunk_bytes = [0u64; 3];
            for entry in txn.open_table(CHUNKS)?.iter()? {
                let (key, value) = entry?;
                if let Some(slot) = chunk_bytes.get_mut(usize::from(key.value().1)) {
                    *slot += value.value().len() as u64;
                }
            }
            Ok(chunk_bytes)
        })
    }

    /// The store's health from memory: cheap enough for any health endpoint.
    pub fn health(&self) -> Health {
        Health {
            series: read(&self.shared.catalogue).keys.len() as u64,
            disk_bytes: self.shared.disk_bytes.load(Ordering::Relaxed),
            write_failure: self.shared.write_failure(),
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Some(writer) = lock(&self.writer).take() {
            let (reply, answer) = flume::bounded(1);
            if self
                .commands
                .send(CommandBox(Command::Close(reply)))
                .is_ok()
            {
                if let Ok(Err(error)) = answer.recv() {
                    tracing::error!(%error, "sealing the store on drop failed");
                }
            }
            let _ = writer.join();
        }
    }
}

/// What a seal's commit does to the change feed's backlog.
#[derive(Debug, Default)]
struct FeedCommit {
    /// Delivered entries to remove, if no later seal dirtied them again.
    delivered: crate::fasthash::FastMap<(i64, u8, u32), u64>,
    dirty: BTreeSet<(i64, u8, u32)>,
}

/// The first time a store tracks changes, everything it already holds is backlog.
fn start_tracking(db: &Database) -> Result<()> {
    let txn = db.begin_write()?;
    {
        let mut meta = txn.open_table(META)?;
        if meta.get(META_CHANGES_TRACKED)?.is_some() {
            drop(meta);
            txn.abort()?;
            return Ok(());
        }
        let chunks = txn.open_table(CHUNKS)?;
        let mut dirty = txn.open_table(DIRTY)?;
        for entry in chunks.iter()? {
            let (key, _) = entry?;
            let (series, tier, window) = key.value();
            dirty.insert((window, tier, series), 0)?;
        }
        meta.insert(META_CHANGES_TRACKED, 1)?;
    }
    txn.commit()?;
    Ok(())
}

/// The redb handle: read-write, or read-only for commands that must not modify the store.
pub(crate) enum Db {
    Writable(Database),
    ReadOnly(redb::ReadOnlyDatabase),
    /// A store that was not closed cleanly, opened read-only: redb must repair its allocator
    /// state before reading, which it does here in a copy held in memory, never in the file.
    RepairedCopy(Database),
    /// Between dropping a database that failed and opening it again (redb latches an I/O
    /// failure until then), or after that reopening failed.
    Closed,
}

impl Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Db::Writable(_) => "Db::Writable",
            Db::ReadOnly(_) => "Db::ReadOnly",
            Db::RepairedCopy(_) => "Db::RepairedCopy",
            Db::Closed => "Db::Closed",
        })
    }
}

impl Db {
    pub(crate) fn begin_read(
        &self,
    ) -> std::result::Result<redb::ReadTransaction, redb::TransactionError> {
        use redb::ReadableDatabase;
        match self {
            Db::Writable(db) | Db::RepairedCopy(db) => db.begin_read(),
            Db::ReadOnly(db) => db.begin_read(),
            Db::Closed => Err(redb::TransactionError::Storage(
                redb::StorageError::DatabaseClosed,
            )),
        }
    }

    fn writable(&self) -> Result<&Database> {
        match self {
            Db::Writable(db) => Ok(db),
            _ => Err(Error::ReadOnly),
        }
    }

    fn writable_mut(&mut self) -> Result<&mut Database> {
        match self {
            Db::Writable(db) => Ok(db),
            _ => Err(Error::ReadOnly),
        }
    }
}

fn open_error(e: redb::DatabaseError, path: &Path, fresh: bool) -> Error {
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen => Error::Locked {
            path: path.to_path_buf(),
        },
        redb::DatabaseError::Storage(redb::StorageError::Io(io))
            if io.kind() == std::io::ErrorKind::WouldBlock =>
        {
            Error::Locked {
                path: path.to_path_buf(),
            }
        }
        redb::DatabaseError::Storage(redb::StorageError::Corrupted(detail)) if !fresh => {
            Error::Damaged {
                path: path.to_path_buf(),
                detail,
            }
        }
        redb::DatabaseError::Storage(storage) if !fresh => Error::NotAStore {
            path: path.to_path_buf(),
            reason: storage.to_string(),
        },
        other => other.into(),
    }
}

/// Opens the file without writing to it. A file that needs redb's repair (its writer did not
/// close it) is read into memory and repaired there.
fn open_read_only(path: &Path, options: &Options) -> Result<Db> {
    let backend = options
        .disk
        .database_read_only(path)
        .map_err(io_error(path))?;
    let builder = {
        let mut builder = redb::Builder::new();
        builder.set_cache_size(options.cache_bytes);
        builder
    };
    let backend = CountingBackend {
        inner: backend,
        written: Arc::new(AtomicU64::new(0)),
    };
    match builder.open_read_only_with_backend(backend) {
        Ok(db) => Ok(Db::ReadOnly(db)),
        Err(redb::DatabaseError::RepairAborted) => {
            let bytes = options.disk.read(path).map_err(io_error(path))?;
            let memory = redb::backends::InMemoryBackend::new();
            let write = |memory: &redb::backends::InMemoryBackend| {
                use redb::StorageBackend;
                memory.set_len(bytes.len() as u64)?;
                memory.write(0, &bytes)
            };
            write(&memory).map_err(io_error(path))?;
            let db = builder
                .create_with_backend(memory)
                .map_err(|e| open_error(e, path, false))?;
            Ok(Db::RepairedCopy(db))
        }
        Err(e) => Err(open_error(e, path, false)),
    }
}

/// Writes the metadata of a new store; refuses a redb file that is not a store.
fn init_format(db: &Database, path: &Path, fresh: bool) -> Result<()> {
    let txn = db.begin_write()?;
    if txn.open_table(META)?.get(META_FORMAT)?.is_some() {
        txn.abort()?;
        return Ok(());
    }
    let tables = txn.list_tables()?.count();
    if !fresh && tables > 1 {
        return Err(Error::NotAStore {
            path: path.to_path_buf(),
            reason: "a redb database without Outpost's metadata table".into(),
        });
    }
    {
        let mut meta = txn.open_table(META)?;
        meta.insert(META_FORMAT, u64::from(FORMAT_VERSION))?;
        meta.insert(META_GENERATION, 0)?;
        txn.open_table(SERIES)?;
        txn.open_table(CHUNKS)?;
    }
    txn.commit()?;
    Ok(())
}

/// Checks the format version; returns the log generation the file has folded in.
fn check_format(db: &Db, path: &Path) -> Result<u64> {
    let not_a_store = |reason: String| Error::NotAStore {
        path: path.to_path_buf(),
        reason,
    };
    let txn = db.begin_read()?;
    let meta = match txn.open_table(META) {
        Ok(meta) => meta,
        Err(redb::TableError::TableDoesNotExist(_)) => {
            return Err(not_a_store("no Outpost metadata table".into()))
        }
        Err(e) => return Err(e.into()),
    };
    let Some(version) = meta.get(META_FORMAT)?.map(|v| v.value()) else {
        return Err(not_a_store("no format version".into()));
    };
    let generation = meta.get(META_GENERATION)?.map_or(0, |v| v.value());
    let version = u32::try_from(version).unwrap_or(u32::MAX);
    if version > FORMAT_VERSION {
        return Err(Error::FormatTooNew {
            path: path.to_path_buf(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    if version < FORMAT_VERSION {
        // Format 1 is the first released format; a smaller number was never written.
        return Err(not_a_store(format!(
            "format version {version} was never released"
        )));
    }
    Ok(generation)
}

/// What the logs held beyond the file.
struct Replayed {
    catalogue: Catalogue,
    head: HeadData,
    next_generation: u64,
    report: Vec<String>,
}

/// Log series ids to catalogue ids while replaying. They are the same until a damaged frame
/// loses series definitions; from then on, definitions are matched by key, and samples of a
/// series whose definition was lost cannot be named and are counted as lost.
#[derive(Default)]
struct IdMap {
    diverged: bool,
    remapped: HashMap<u32, u32>,
}

impl IdMap {
    fn define(&mut self, catalogue: &mut Catalogue, id: u32, key: SeriesKey) {
        if !self.diverged && catalogue.define(id, key.clone()).is_ok() {
            return;
        }
        self.diverged = true;
        let mapped = match catalogue.by_key.get(&key) {
            Some(&existing) => existing,
            None => {
                let next = catalogue.keys.len() as u32;
                let _ = catalogue.define(next, key);
                next
            }
        };
        self.remapped.insert(id, mapped);
    }

    fn resolve(&self, id: u32, known: u32) -> Option<u32> {
        match self.remapped.get(&id) {
            Some(&mapped) => Some(mapped),
            None if !self.diverged && id < known => Some(id),
            None => None,
        }
    }
}

/// Replays every log that the file has not folded in yet, oldest first. Damage is skipped and
/// reported, never fatal: every intact frame is kept. Read-only, older logs are left alone.
fn replay_logs(
    disk: &dyn Disk,
    logs: &[(u64, PathBuf)],
    generation: u64,
    mut catalogue: Catalogue,
    read_only: bool,
) -> Result<Replayed> {
    let mut head = HeadData::default();
    let mut next_generation = generation;
    let mut report = Vec::new();
    let mut ids = IdMap::default();
    let mut unnamed_samples = 0u64;
    for (log_generation, log_path) in logs {
        if *log_generation < generation {
            if !read_only {
                let _ = disk.remove(log_path);
            }
            continue;
        }
        let replay = match wal::read_log(disk, log_path) {
            Ok(replay) => replay,
            Err(wal::ReadLogError::Io(e)) => return Err(io_error(log_path)(e)),
            Err(wal::ReadLogError::Header(error)) => {
                // A header cut short by a crash right after the file was created: nothing
                // was ever acknowledged from it.
                tracing::warn!(log = %log_path.display(), %error, "ignoring log with a bad header");
                continue;
            }
        };
        if replay.generation != *log_generation {
            report.push(format!(
                "log {} names generation {} in its header: ignored",
                log_path.display(),
                replay.generation
            ));
            continue;
        }
        if let Some(error) = &replay.torn {
            tracing::warn!(log = %log_path.display(), %error, valid_bytes = replay.valid_len,
                "log ends in a torn frame (a crash mid-write); replaying up to it");
        }
        for damage in &replay.damaged {
            report.push(format!(
                "log {}: {} damaged bytes at offset {} ({}): the samples written in them are \
                 lost; replay resumed at the next intact frame",
                log_path.display(),
                damage.len,
                damage.offset,
                damage.error
            ));
        }
        for record in replay.records {
            for (id, key) in record.defs {
                match SeriesKey::parse(&key) {
                    Ok(key) => ids.define(&mut catalogue, id, key),
                    Err(e) => report.push(format!(
                        "log {}: series {id} has a bad key ({e}): its samples are lost",
                        log_path.display()
                    )),
                }
            }
            let known = catalogue.keys.len() as u32;
            let mut samples = Vec::with_capacity(record.samples.len());
            for (id, ts, value) in record.samples {
                match ids.resolve(id, known) {
                    Some(id) => samples.push((id, ts, value)),
                    None => unnamed_samples += 1,
                }
            }
            let rollups: Vec<_> = record
                .rollups
                .into_iter()
                .filter_map(|mut r| {
                    r.series = ids.resolve(r.series, known)?;
                    Some(r)
                })
                .collect();
            head.apply(&samples, &record.state, &rollups);
        }
        next_generation = next_generation.max(log_generation + 1);
    }
    if unnamed_samples > 0 {
        report.push(format!(
            "{unnamed_samples} samples are lost: their series were defined in damaged log frames"
        ));
    }
    Ok(Replayed {
        catalogue,
        head,
        next_generation,
        report,
    })
}

fn read_meta(db: &Db, key: &str) -> Result<Option<u64>> {
    let txn = db.begin_read()?;
    let meta = txn.open_table(META)?;
    let value = meta.get(key)?.map(|v| v.value());
    Ok(value)
}

fn load_catalogue(db: &Db, path: &Path) -> Result<Catalogue> {
    let txn = db.begin_read()?;
    let table = txn.open_table(SERIES)?;
    let mut catalogue = Catalogue::default();
    for entry in table.iter()? {
        let (id, key) = entry?;
        let key = SeriesKey::parse(key.value()).map_err(|e| Error::NotAStore {
            path: path.to_path_buf(),
            reason: format!("corrupt series catalogue: {e}"),
        })?;
        catalogue
            .define(id.value(), key)
            .map_err(|reason| Error::NotAStore {
                path: path.to_path_buf(),
                reason: format!("corrupt series catalogue: {reason}"),
            })?;
    }
    catalogue.persisted = catalogue.keys.len();
    Ok(catalogue)
}

/// Stored points overlaid with head samples (write order; the head's last write wins).
fn overlay(stored: Vec<(i64, f64)>, head: Vec<(i64, f64)>) -> Vec<(i64, f64)> {
    if head.is_empty() {
        return stored;
    }
    let newest = sort_last_wins(head);
    merge_sorted(&stored, &newest)
}

/// Sorts by timestamp keeping, for each timestamp, the last of the writes.
fn sort_last_wins(mut samples: Vec<(i64, f64)>) -> Vec<(i64, f64)> {
    // Samples usually arrive in order; then there is nothing to do.
    if samples.windows(2).all(|w| w[0].0 < w[1].0) {
        return samples;
    }
    samples.reverse();
    // Stable sort of the reversed list puts the last write of each timestamp first.
    samples.sort_by_key(|s| s.0);
    samples.dedup_by_key(|s| s.0);
    samples
}

/// Merges two sorted, unique lists; on equal timestamps `newer` wins.
fn merge_sorted(older: &[(i64, f64)], newer: &[(i64, f64)]) -> Vec<(i64, f64)> {
    let mut out = Vec::with_capacity(older.len() + newer.len());
    let (mut i, mut j) = (0, 0);
    while i < older.len() && j < newer.len() {
        match older[i].0.cmp(&newer[j].0) {
            std::cmp::Ordering::Less => {
                out.push(older[i]);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(newer[j]);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                out.push(newer[j]);
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(&older[i..]);
    out.extend_from_slice(&newer[j..]);
    out
}

/// The head's data for some series in a time range, copied so no lock is held while reading.
#[derive(Default)]
struct HeadSnapshot {
    samples: HashMap<u32, Vec<(i64, f64)>>,
    rollups: HashMap<u32, Vec<RollupWrite>>,
}

impl HeadSnapshot {
    fn samples(&self, id: u32) -> Vec<(i64, f64)> {
        self.samples.get(&id).cloned().unwrap_or_default()
    }
}

/// Read access to the stored tiers inside one read transaction.
/// The stored tiers and the head's data of some series over `from..=to`, for one query.
struct RangeRead {
    reader: TierReader,
    head: HeadSnapshot,
    from: i64,
    to: i64,
}

impl RangeRead {
    /// Raw samples of a series, the head's in place of stored ones at the same time.
    fn raw(&self, id: SeriesId, key: &SeriesKey) -> Result<Vec<(i64, f64)>> {
        let stored = self.reader.raw(id.0, self.from, self.to, key)?;
        Ok(overlay(stored, self.head.samples(id.0)))
    }

    /// The points of a series in a rollup tier, with the head's contribution.
    fn tier(&self, id: SeriesId, tier: Tier, key: &SeriesKey) -> Result<Vec<(i64, Rollup)>> {
        let (from, to) = (self.from, self.to);
        self.reader
            .tier_points(id.0, tier, from, to, key, &self.head)
    }
}

struct TierReader {
    chunks: redb::ReadOnlyTable<(u32, u8, i64), &'static [u8]>,
}

impl TierReader {
    fn new(txn: &redb::ReadTransaction) -> Result<Self> {
        Ok(TierReader {
            chunks: txn.open_table(CHUNKS)?,
        })
    }

    /// Whether a stored raw sample lies in `[from, to]`. Only the chunks at the range's two
    /// edges can hold samples outside it, so this decodes at most a few chunks.
    fn has_raw_between(&self, id: u32, from: i64, to: i64, key: &SeriesKey) -> Result<bool> {
        let raw = Tier::Raw as u8;
        for entry in self
            .chunks
            .range((id, raw, bucket_of(from, RAW_WINDOW))..=(id, raw, to))?
        {
            let (start, chunk) = entry?;
            // A stored chunk holds at least one sample, so one whose window lies inside the
            // range answers without being decoded.
            let start = start.value().2;
            if start >= from && start.saturating_add(RAW_WINDOW - 1) <= to {
                return Ok(true);
            }
            let timestamps = Self::raw_timestamps(chunk.value(), key)?;
            if timestamps.iter().any(|t| (from..=to).contains(t)) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn raw_timestamps(chunk: &[u8], key: &SeriesKey) -> Result<Vec<i64>> {
        codec::decode_chunk_timestamps(chunk).map_err(|cause| Error::CorruptChunk {
            what: "raw chunk",
            series: key.to_string(),
            cause,
        })
    }

    fn raw(&self, id: u32, from: i64, to: i64, key: &SeriesKey) -> Result<Vec<(i64, f64)>> {
        let mut out = Vec::new();
        if from > to {
            return Ok(out);
        }
        let raw = Tier::Raw as u8;
        for entry in self
            .chunks
            .range((id, raw, bucket_of(from, RAW_WINDOW))..=(id, raw, to))?
        {
            let (_, chunk) = entry?;
            let (timestamps, values) =
                codec::decode_chunk(chunk.value()).map_err(|cause| Error::CorruptChunk {
                    what: "raw chunk",
                    series: key.to_string(),
                    cause,
                })?;
            let start = timestamps.partition_point(|&t| t < from);
            let end = timestamps.partition_point(|&t| t <= to);
            out.extend(
                timestamps[start..end]
                    .iter()
                    .copied()
                    .zip(values[start..end].iter().copied()),
            );
        }
        Ok(out)
    }

    /// Rollup points of `tier` in `[from, to]` (bucket-aligned), with the buckets that the head
    /// touches recomputed as the next seal will compute them.
    fn tier_points(
        &self,
        id: u32,
        tier: Tier,
        from: i64,
        to: i64,
        key: &SeriesKey,
        head: &HeadSnapshot,
    ) -> Result<Vec<(i64, Rollup)>> {
        let stored = read_rollups(&self.chunks, id, tier, from, to, &|| key.to_string())?;
        let mut points: BTreeMap<i64, Rollup> = stored.into_iter().collect();
        let head_samples = head.samples(id);
        let head_rollups = head.rollups.get(&id);
        // Direct writes first: raw data in the same bucket overrides them, as in a seal.
        let mut dirty = BTreeSet::new();
        for write in head_rollups.into_iter().flatten() {
            if write.tier == tier && write.bucket >= from && write.bucket <= to {
                points.insert(write.bucket, write.rollup);
            }
            if tier == Tier::Hour && write.tier == Tier::Minute {
                dirty.insert(bucket_of(write.bucket, HOUR_MS));
            }
        }
        let width = tier.resolution_ms();
        dirty.extend(head_samples.iter().map(|s| bucket_of(s.0, width)));
        if let (Some(&first), Some(&last)) = (dirty.first(), dirty.last()) {
            let span_end = last.saturating_add(width - 1);
            let recomputed = match tier {
                Tier::Minute => {
                    let raw = overlay(self.raw(id, first, span_end, key)?, head_samples.clone());
                    query::rollups_from_samples(&raw, MINUTE_MS)
                }
                _ => {
                    let minutes = self.tier_points(id, Tier::Minute, first, span_end, key, head)?;
                    query::coarsen(&minutes, HOUR_MS)
                }
            };
            for (bucket, rollup) in recomputed {
                if dirty.contains(&bucket) {
                    points.insert(bucket, rollup);
                }
            }
        }
        Ok(points.into_iter().collect())
    }
}

// ---------------------------------------------------------------------------------------------
// The writer side

/// Runs `f`, turning a panic inside it (redb panics on some damaged pages) into
/// [`Error::Damaged`]: no damaged file may take the process down.
pub(crate) fn contain<T>(path: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(panic) => {
            let detail = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "the database engine failed".into());
            Err(Error::Damaged {
                path: path.to_path_buf(),
                detail,
            })
        }
    }
}

/// The writer thread's work, with a panic contained: the store is poisoned instead of left
/// without a writer.
fn guarded<T>(shared: &Shared, f: impl FnOnce() -> Result<T>) -> Result<T> {
    contain(&shared.path, f).map_err(|error| match error {
        Error::Damaged { .. } => shared.poisoned(error),
        other => other,
    })
}

/// Failing background maintenance (a full disk, a poisoned store): retried with a growing
/// delay rather than in a busy loop, and logged at most once a minute.
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
    retry_at: Duration,
    last_logged: Option<Duration>,
    suppressed: u64,
}

impl Backoff {
    /// How long until the next try, from `now`.
    fn wait(&self, now: Duration) -> Duration {
        self.retry_at.saturating_sub(now)
    }

    fn failed(&mut self, error: &Error, now: Duration) {
        self.failures = self.failures.saturating_add(1);
        let delay = Duration::from_millis(100) * (1u32 << self.failures.min(9));
        self.retry_at = now + delay.min(Duration::from_secs(30));
        if self
            .last_logged
            .is_some_and(|at| now.saturating_sub(at) < Duration::from_secs(60))
        {
            self.suppressed += 1;
            return;
        }
        tracing::error!(%error, repeated = self.suppressed, "store maintenance failed");
        self.last_logged = Some(now);
        self.suppressed = 0;
    }

    fn succeeded(&mut self) {
        if self.failures > 0 {
            tracing::info!(failures = self.failures, "store maintenance works again");
        }
        *self = Backoff::default();
    }
}

/// Whether a round of maintenance measures the files whatever the time since it last did.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Measure {
    Now,
    IfDue,
}

fn writer_loop(shared: &Shared, commands: &flume::Receiver<CommandBox>) {
    let mut backoff = Backoff::default();
    loop {
        let timeout = shared
            .time_to_next_deadline()
            .max(backoff.wait(shared.options.clock.now()));
        let command = match commands.recv_timeout(timeout) {
            Ok(CommandBox(command)) => Some(command),
            Err(flume::RecvTimeoutError::Timeout) => None,
            Err(flume::RecvTimeoutError::Disconnected) => {
                if let Err(error) = guarded(shared, || shared.seal_with(true)) {
                    tracing::error!(%error, "final seal failed");
                }
                return;
            }
        };
        match command {
            Some(Command::Write(batch, reply)) => {
                // A full head refuses the batch; the writer seals it itself (rather than wait
                // for itself) and tries once more, into the emptied head.
                let mut batch = Some(batch);
                let mut result = guarded(shared, || shared.try_write(&mut batch).map(|_| ()));
                if result.is_ok() && batch.is_some() {
                    result = guarded(shared, || {
                        shared
                            .seal()
                            .and_then(|()| shared.try_write(&mut batch).map(|_| ()))
                    });
                }
                let _ = reply.send(result);
            }
            Some(Command::Sync(reply)) => {
                let _ = reply.send(guarded(shared, || shared.sync()));
            }
            Some(Command::Seal(reply)) => {
                let _ = reply.send(guarded(shared, || shared.seal()));
            }
            Some(Command::Tick(reply)) => {
                let _ = reply.send(guarded(shared, || shared.run_due(Measure::Now)));
                continue;
            }
            Some(Command::Compact(reply)) => {
                let _ = reply.send(guarded(shared, || {
                    shared.seal().and_then(|()| shared.compact())
                }));
            }
            Some(Command::Backup(to, reply)) => {
                let _ = reply.send(guarded(shared, || {
                    shared.seal().and_then(|()| copy_synced(&shared.path, &to))
                }));
            }
            Some(Command::Close(reply)) => {
                let result = guarded(shared, || shared.close());
                let _ = reply.send(result);
                return;
            }
            Some(Command::Wake) | None => {}
        }
        let now = shared.options.clock.now();
        if !backoff.wait(now).is_zero() {
            // A command woke the writer before maintenance's retry time.
            continue;
        }
        match guarded(shared, || shared.run_due(Measure::IfDue)) {
            Ok(()) => backoff.succeeded(),
            Err(error) => backoff.failed(&error, now),
        }
    }
}

impl Shared {
    fn check_poison(&self) -> Result<()> {
        match &*lock(&self.poison) {
            Some(poison) => Err(Error::Poisoned {
                cause: poison.cause.clone(),
                heals: poison.heals,
            }),
            None => Ok(()),
        }
    }

    fn poisoned(&self, error: Error) -> Error {
        let mut poison = lock(&self.poison);
        if poison.is_none() {
            tracing::error!(%error, "store refusing writes until it heals");
            *poison = Some(Poison {
                cause: error.to_string(),
                heals: !matches!(error, Error::Damaged { .. }),
                at: self.options.clock.now(),
            });
        }
        error
    }

    /// Heals a store poisoned by an I/O failure once [`HEAL_AFTER`] has passed since the failure
    /// (or since the last try): every try that fails waits as long again.
    fn heal_if_due(&self) -> Result<()> {
        let Some(poison) = lock(&self.poison).clone() else {
            return Ok(());
        };
        let now = self.options.clock.now();
        if !poison.heals || now < poison.at + HEAL_AFTER {
            return Err(Error::Poisoned {
                cause: poison.cause,
                heals: poison.heals,
            });
        }
        match self.heal() {
            Ok(()) => {
                tracing::info!(was = %poison.cause, "store healed: accepting writes again");
                Ok(())
            }
            Err(error) => {
                let mut current = lock(&self.poison);
                let heals = current.as_ref().is_none_or(|p| p.heals);
                *current = Some(Poison {
                    cause: poison.cause,
                    heals: heals && !matches!(error, Error::Damaged { .. }),
                    at: now,
                });
                Err(error)
            }
        }
    }

    /// After an I/O failure: reopens redb if the failure reached it (it refuses every call until
    /// then, and rolls back to its last durable commit, which is all that the head needs on top),
    /// starts a new log generation (the old one may end in a torn frame, or have lost pages to a
    /// failed fsync) and seals, which commits everything the head holds, including what the
    /// broken log never got.
    fn heal(&self) -> Result<()> {
        let database_works = matches!(
            read(&self.db)
                .writable()
                .map(|db| db.begin_write().map(|txn| txn.abort())),
            Ok(Ok(Ok(())))
        );
        if !database_works {
            self.reopen_database()?;
        }
        {
            let mut head = lock(&self.head);
            let generation = head.log.generation + 1;
            head.log = LogWriter::create(&*self.options.disk, &self.path, generation)
                .map_err(io_error(&self.path))?;
        }
        *lock(&self.poison) = None;
        self.seal()
    }

    fn reopen_database(&self) -> Result<()> {
        let mut db = self.db.write().unwrap_or_else(|e| e.into_inner());
        // Dropped first: the open database holds the file's lock.
        *db = Db::Closed;
        let (backend, _) = self
            .options
            .disk
            .database(&self.path)
            .map_err(io_error(&self.path))?;
        let backend = CountingBackend {
            inner: backend,
            written: self.db_written.clone(),
        };
        let reopened = redb::Builder::new()
            .set_cache_size(self.options.cache_bytes)
            .create_with_backend(backend)
            .map_err(|e| open_error(e, &self.path, false))?;
        *db = Db::Writable(reopened);
        Ok(())
    }

    /// Why the store refuses writes, while it does.
    fn write_failure(&self) -> Option<String> {
        lock(&self.poison).as_ref().map(|p| p.cause.clone())
    }

    /// Accepts a batch; returns whether a seal is due because the head is full.
    /// Accepts a batch unless the head is full; returns whether a seal is now due.
    fn try_write(&self, batch: &mut Option<WriteBatch>) -> Result<bool> {
        self.check_poison()?;
        let Some(pending_batch) = batch.as_ref() else {
            return Ok(false);
        };
        let known = read(&self.catalogue).keys.len();
        if let Some(unknown) = pending_batch
            .samples
            .iter()
            .map(|s| s.0)
            .chain(pending_batch.rollups.iter().map(|r| r.series))
            .find(|&id| id as usize >= known)
        {
            return Err(Error::UnknownSeries(unknown));
        }
        let mut head = lock(&self.head);
        if self.head_full(&head) {
            return Ok(true);
        }
        let Some(WriteBatch {
            samples,
            state,
            rollups,
        }) = batch.take()
        else {
            return Ok(false);
        };
        head.active.apply(&samples, &state, &rollups);
        self.prune_deletions(&mut head);
        head.pending_bytes += PENDING_BYTES_PER_ITEM * (samples.len() + rollups.len())
            + state.iter().map(state_op_bytes).sum::<usize>();
        let pending = &mut head.pending;
        pending.samples.extend(samples);
        pending.state.extend(state);
        pending.rollups.extend(rollups);
        Ok(self.head_full(&head) || pending_full(&head))
    }

    /// Drops the active head's deletions that hide nothing: neither the frozen head nor the
    /// database holds their key. An entry put and deleted within one head (a kept log line
    /// pushed out by newer ones, at up to hundreds a second) otherwise stays in memory as a
    /// deletion until the seal. Runs once the deletions double since the last pass, so that
    /// its lookups cost a constant per write; skipped while a compaction holds the database
    /// (the next write tries again). A lookup that fails keeps its deletion.
    fn prune_deletions(&self, head: &mut Head) {
        if head.active.state.deletions < head.active.state.prune_at {
            return;
        }
        let Ok(db) = self.db.try_read() else {
            return;
        };
        let Ok(txn) = db.begin_read() else {
            return;
        };
        // Per table: its entries, none when it does not exist, an error when it cannot be read.
        type Opened =
            std::result::Result<Option<redb::ReadOnlyTable<&'static str, &'static [u8]>>, ()>;
        let mut tables: HashMap<StateTable, Opened> = HashMap::new();
        let mut hide_nothing = Vec::new();
        for (table, key) in head.active.state.deleted_keys() {
            let below_in_frozen = head.frozen.as_ref().and_then(|f| f.state.get(table, &key));
            let held_below = match below_in_frozen {
                Some(value) => value.is_some(),
                None => {
                    let opened = tables.entry(table).or_insert_with(|| {
                        let definition: TableDefinition<&str, &[u8]> =
                            TableDefinition::new(table.table_name());
                        match txn.open_table(definition) {
                            Ok(opened) => Ok(Some(opened)),
                            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
                            Err(_) => Err(()),
                        }
                    });
                    match opened {
                        Ok(Some(opened)) => !matches!(opened.get(key.as_str()), Ok(None)),
                        Ok(None) => false,
                        // Unknown, so held: the deletion stays.
                        Err(()) => true,
                    }
                }
            };
            if !held_below {
                hide_nothing.push((table, key));
            }
        }
        let state = &mut head.active.state;
        for (table, key) in hide_nothing {
            state.forget_deletion(table, &key);
        }
        state.prune_at = PRUNE_DELETIONS_FROM.max(2 * state.deletions);
    }

    /// A full head needs a seal before it takes more: it holds `max_head_samples` or
    /// `max_head_state_bytes` of state writes, or its log (counting a byte for each sample not
    /// yet flushed, a lower bound) holds an eighth of the byte budget, so that the log never
    /// crowds the budget.
    fn head_full(&self, head: &Head) -> bool {
        let log_estimate = head.log.len + head.pending.samples.len() as u64;
        head.active.samples >= self.options.max_head_samples
            || head.active.state.bytes >= self.options.max_head_state_bytes
            || self
                .options
                .budget_bytes
                .is_some_and(|budget| log_estimate > budget / 8)
    }

    /// Waits (bounded) until a seal has emptied a full head.
    fn wait_for_room(&self) {
        let head = lock(&self.head);
        if self.head_full(&head) {
            let _ = self
                .sealed
                .wait_timeout(head, Duration::from_millis(50))
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    fn time_to_next_deadline(&self) -> Duration {
        let now = self.options.clock.now();
        let timers = *lock(&self.timers);
        let next = [
            timers.last_flush + self.options.flush_interval,
            timers.last_sync + self.options.sync_interval,
            timers.last_seal + self.options.seal_interval,
        ]
        .into_iter()
        .min()
        .unwrap_or(now);
        next.saturating_sub(now).max(Duration::from_millis(1))
    }

    fn run_due(&self, measure: Measure) -> Result<()> {
        let result = self.run_due_unmeasured();
        let now = self.options.clock.now();
        let due = {
            let mut timers = lock(&self.timers);
            // A clock that went back measures too, rather than wait for it to catch up.
            let due = measure == Measure::Now
                || now >= timers.last_measure + MEASURE_INTERVAL
                || now < timers.last_measure;
            if due {
                timers.last_measure = now;
            }
            due
        };
        if due {
            self.disk_bytes.store(self.disk_bytes(), Ordering::Relaxed);
        }
        result
    }

    fn run_due_unmeasured(&self) -> Result<()> {
        self.heal_if_due()?;
        let now = self.options.clock.now();
        let timers = *lock(&self.timers);
        let (head_full, pending_full) = {
            let head = lock(&self.head);
            (self.head_full(&head), pending_full(&head))
        };
        if head_full || now >= timers.last_seal + self.options.seal_interval {
            self.seal()?;
        }
        if pending_full || now >= timers.last_flush + self.options.flush_interval {
            self.flush()?;
        }
        if now >= timers.last_sync + self.options.sync_interval {
            self.sync()?;
        }
        Ok(())
    }

    /// Appends the pending record to the log (a write syscall, no fsync). Caller holds the head.
    fn flush_locked(&self, head: &mut Head) -> Result<()> {
        if head.pending.is_empty() {
            return Ok(());
        }
        let record = std::mem::take(&mut head.pending);
        head.pending_bytes = 0;
        match head.log.append(&record, 3) {
            Ok(bytes) => {
                self.log_written.fetch_add(bytes, Ordering::Relaxed);
                Ok(())
            }
            Err(cause) => Err(self.poisoned(Error::Io {
                path: head.log.path.clone(),
                cause,
            })),
        }
    }

    fn flush(&self) -> Result<()> {
        self.check_poison()?;
        let mut head = lock(&self.head);
        self.flush_locked(&mut head)?;
        drop(head);
        lock(&self.timers).last_flush = self.options.clock.now();
        Ok(())
    }

    /// Flushes and fsyncs the log: everything accepted so far survives a power loss.
    fn sync(&self) -> Result<()> {
        self.check_poison()?;
        let (file, path) = {
            let mut head = lock(&self.head);
            self.flush_locked(&mut head)?;
            if head.log.unsynced == 0 {
                lock(&self.timers).last_sync = self.options.clock.now();
                return Ok(());
            }
            head.log.unsynced = 0;
            (head.log.file.clone(), head.log.path.clone())
        };
        file.sync()
            .map_err(|cause| self.poisoned(Error::Io { path, cause }))?;
        let now = self.options.clock.now();
        let mut timers = lock(&self.timers);
        timers.last_sync = now;
        timers.last_flush = now;
        Ok(())
    }

    /// Folds the head into redb with one durable commit and starts a new log generation.
    fn seal(&self) -> Result<()> {
        self.seal_with(false)
    }

    /// A seal; `closing` for the last one, which leaves the change feed's unconfirmed samples as
    /// backlog rather than in a head that nobody will log.
    fn seal_with(&self, closing: bool) -> Result<()> {
        self.check_poison()?;
        let now = self.options.clock.now();
        let (frozen, new_generation, defs, persisted_to, feed) = {
            let catalogue = read(&self.catalogue);
            let mut head = lock(&self.head);
            let new_defs = catalogue.keys.len() > catalogue.persisted;
            if head.active.is_empty() && !new_defs && head.tracker.delivered.is_empty() {
                drop(head);
                lock(&self.timers).last_seal = now;
                return Ok(());
            }
            self.flush_locked(&mut head)?;
            let new_generation = head.log.generation + 1;
            let log = LogWriter::create(&*self.options.disk, &self.path, new_generation)
                .map_err(|source| self.poisoned(io_error(&self.path)(source)))?;
            head.log = log;
            let frozen = Arc::new(std::mem::take(&mut head.active));
            head.frozen = Some(frozen.clone());
            let feed = if self.options.track_changes {
                self.hand_over_tail(&mut head, &frozen, closing)
            } else {
                FeedCommit::default()
            };
            self.sealed.notify_all();
            // Shared, not formatted here: the head's lock is held, and a fleet's first seal
            // has a hundred thousand keys to write out.
            let defs: Vec<(u32, Arc<SeriesKey>)> = catalogue.keys[catalogue.persisted..]
                .iter()
                .enumerate()
                .map(|(i, k)| ((catalogue.persisted + i) as u32, k.clone()))
                .collect();
            (frozen, new_generation, defs, catalogue.keys.len(), feed)
        };
        let result = self.commit_frozen(&frozen, new_generation, &defs, &feed);
        {
            let mut head = lock(&self.head);
            head.frozen = None;
            if result.is_err() {
                restore_unsealed(&mut head, frozen, feed);
            }
        }
        self.sealed.notify_all();
        if let Err(error) = result {
            return Err(self.poisoned(error));
        }
        {
            let mut catalogue = self.catalogue.write().unwrap_or_else(|e| e.into_inner());
            catalogue.persisted = catalogue.persisted.max(persisted_to);
        }
        self.remove_logs_before(new_generation);
        {
            let mut timers = lock(&self.timers);
            timers.last_seal = now;
        }
        self.enforce_budget()
    }

    /// At a seal, what the subscriber has not confirmed of the frozen head either moves into the
    /// new head (a short tail: it stays live) or becomes backlog (a long one). Caller holds the
    /// head, whose active part is the new, empty generation.
    fn hand_over_tail(&self, head: &mut Head, frozen: &HeadData, closing: bool) -> FeedCommit {
        let mut tail: Vec<(u32, i64, f64)> = Vec::new();
        let mut ids: Vec<u32> = frozen.series.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let samples = &frozen.series[&id];
            let from = head.tracker.confirmed_length(id).min(samples.len());
            tail.extend(
                samples
                    .range(from, samples.len())
                    .into_iter()
                    .map(|(ts, v)| (id, ts, v)),
            );
        }
        let carry_limit = (self.options.max_head_samples / 4).clamp(1, 100_000);
        let mut feed = FeedCommit {
            delivered: std::mem::take(&mut head.tracker.delivered),
            dirty: BTreeSet::new(),
        };
        if tail.len() <= carry_limit && !closing {
            // Logged again in the new generation, so it survives the old log's deletion.
            head.active.apply(&tail, &[], &[]);
            head.pending_bytes += PENDING_BYTES_PER_ITEM * tail.len();
            head.pending.samples.extend(tail);
        } else {
            for &(id, ts, _) in &tail {
                feed.dirty
                    .insert((bucket_of(ts, RAW_WINDOW), Tier::Raw as u8, id));
                feed.dirty
                    .insert((bucket_of(ts, MINUTE_WINDOW), Tier::Minute as u8, id));
                feed.dirty
                    .insert((bucket_of(ts, HOUR_WINDOW), Tier::Hour as u8, id));
            }
        }
        head.tracker.generation += 1;
        head.tracker.confirmed = HeadMark::default();
        feed
    }

    fn commit_frozen(
        &self,
        frozen: &HeadData,
        new_generation: u64,
        defs: &[(u32, Arc<SeriesKey>)],
        feed: &FeedCommit,
    ) -> Result<()> {
        let level = self.options.zstd_level;
        let db = read(&self.db);
        let mut txn = db.writable()?.begin_write()?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| Error::Redb(e.into()))?;
        let retention_at;
        // Only a damaged chunk's report names its series; the catalogue is read then.
        let key_of = |id: u32| {
            read(&self.catalogue)
                .keys
                .get(id as usize)
                .map_or_else(|| format!("#{id}"), ToString::to_string)
        };
        {
            let mut series = txn.open_table(SERIES)?;
            let mut text = String::new();
            for (id, key) in defs {
                text.clear();
                let _ = write!(text, "{key}");
                series.insert(*id, text.as_str())?;
            }
            let mut meta = txn.open_table(META)?;
            let mut chunks = txn.open_table(CHUNKS)?;
            let mut raw_delta: i64 = 0;
            let mut minute_delta: i64 = 0;
            let mut hour_delta: i64 = 0;
            let mut newest = meta.get(META_NEWEST)?.map(|v| v.value() as i64);

            // Direct rollup writes first; raw samples of the same seal override their buckets.
            let (mut minute_updates, mut hour_updates, mut dirty_hours) =
                rollup_writes_by_series(&frozen.rollups);
            // Series by series, raw then minute then hour chunks: writing in key order keeps
            // redb's leaves full.
            let ids: BTreeSet<u32> = frozen
                .series
                .keys()
                .copied()
                .chain(minute_updates.keys().copied())
                .chain(hour_updates.keys().copied())
                .collect();
            for id in ids {
                let samples = sort_last_wins(
                    frozen
                        .series
                        .get(&id)
                        .map(SeriesBuffer::to_vec)
                        .unwrap_or_default(),
                );
                if let Some(last) = samples.last() {
                    newest = Some(newest.map_or(last.0, |n| n.max(last.0)));
                }
                let rollups = SealRollups {
                    minutes: minute_updates.remove(&id).unwrap_or_default(),
                    hours: hour_updates.remove(&id).unwrap_or_default(),
                    hours_dirty: dirty_hours.remove(&id).unwrap_or_default(),
                };
                let deltas = merge_series(&mut chunks, id, &samples, rollups, (level, &key_of))?;
                raw_delta += deltas[0];
                minute_delta += deltas[1];
                hour_delta += deltas[2];
            }
            apply_state_writes(&txn, &frozen.state)?;

            if let Some(newest) = newest {
                meta.insert(META_NEWEST, newest as u64)?;
            }
            retention_at = self.retention_now(newest);
            if let Some(now) = retention_at {
                let dropped = self.apply_retention(&txn, &mut chunks, now, feed)?;
                raw_delta -= dropped[0];
                minute_delta -= dropped[1];
                hour_delta -= dropped[2];
                meta.insert(META_RETENTION_NOW, now as u64)?;
            }
            if self.options.track_changes {
                update_feed(&txn, feed, new_generation)?;
            }
            add_counter(&mut meta, META_RAW_SAMPLES, raw_delta)?;
            add_counter(&mut meta, META_MINUTE_POINTS, minute_delta)?;
            add_counter(&mut meta, META_HOUR_POINTS, hour_delta)?;
            meta.insert(META_GENERATION, new_generation)?;
        }
        txn.commit()?;
        if let Some(now) = retention_at {
            *lock(&self.retention_anchor) = Some((now, self.options.clock.now()));
        }
        Ok(())
    }

    /// The time that age retention is measured against at this seal: the earliest of the
    /// caller's wall clock, the newest sample stored, and the last retention time advanced by
    /// the monotonic clock since; never earlier than the last retention time. So a sample with a
    /// far-future timestamp cannot make others look old (the wall clock bounds it), nor can a
    /// wall clock stepped forward (the monotonic clock bounds it). `None`: no age retention.
    fn retention_now(&self, newest: Option<i64>) -> Option<i64> {
        let wall = self.options.wall_clock.as_ref()?.unix_ms();
        let mut now = wall.min(newest?);
        if let Some((at, since)) = *lock(&self.retention_anchor) {
            let elapsed = self.options.clock.now().saturating_sub(since);
            let elapsed_ms = i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX);
            now = now.min(at.saturating_add(elapsed_ms)).max(at);
        }
        Some(now)
    }

    /// Drops whole windows older than each tier's retention before `now`; returns how many
    /// samples and points went, per tier. What the sync layer has not shipped yet is spared:
    /// age alone must not lose it, only the byte budget may.
    fn apply_retention(
        &self,
        txn: &redb::WriteTransaction,
        chunks: &mut ChunkTable<'_>,
        now: i64,
        feed: &FeedCommit,
    ) -> Result<[i64; 3]> {
        let retention = self.options.retention;
        let cut = |keep: Option<Duration>| {
            keep.map(|d| now.saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)))
        };
        let mut unshipped = BTreeSet::new();
        if self.options.track_changes {
            if let Ok(dirty) = txn.open_table(DIRTY) {
                for entry in dirty.iter()? {
                    let (key, version) = entry?;
                    let (key, version) = (key.value(), version.value());
                    // Confirmed with this commit: shipped.
                    if feed.delivered.get(&key) != Some(&version) {
                        unshipped.insert(key);
                    }
                }
            }
            unshipped.extend(feed.dirty.iter().copied());
        }
        Ok([
            drop_before(chunks, cut(retention.raw), Tier::Raw, &unshipped)? as i64,
            drop_before(chunks, cut(retention.minute), Tier::Minute, &unshipped)? as i64,
            drop_before(chunks, cut(retention.hour), Tier::Hour, &unshipped)? as i64,
        ])
    }

    fn remove_logs_before(&self, generation: u64) {
        if let Ok(logs) = wal::list_logs(&*self.options.disk, &self.path) {
            for (g, path) in logs {
                if g < generation {
                    let _ = self.options.disk.remove(&path);
                }
            }
        }
    }

    /// After the final seal, the current log holds nothing: remove it, so that a closed store is
    /// one file.
    fn close(&self) -> Result<()> {
        self.seal_with(true)?;
        let head = lock(&self.head);
        if head.pending.is_empty()
            && head.active.is_empty()
            && head.log.len <= wal::HEADER_LEN as u64
        {
            self.options
                .disk
                .remove(&head.log.path)
                .map_err(io_error(&head.log.path))?;
        }
        Ok(())
    }

    /// Bytes allocated on disk to the store file and its logs.
    fn disk_bytes(&self) -> u64 {
        let disk = &*self.options.disk;
        let logs = wal::list_logs(disk, &self.path).unwrap_or_default();
        disk.allocated_bytes(&self.path)
            + logs
                .iter()
                .map(|(_, p)| disk.allocated_bytes(p))
                .sum::<u64>()
    }

    /// Keeps the store inside its byte budget: drops the oldest raw windows first, then the
    /// oldest rollups, well before the file reaches the budget, because redb reuses freed pages
    /// but never shrinks its file without a compaction.
    fn enforce_budget(&self) -> Result<()> {
        let Some(budget) = self.options.budget_bytes else {
            return Ok(());
        };
        let high_water = budget / 10 * 6;
        let low_water = budget / 10 * 4;
        let live = self.live_bytes()?;
        if live > high_water {
            let need = live - low_water;
            tracing::info!(
                live,
                budget,
                need,
                "store near its byte budget: dropping the oldest data"
            );
            self.evict(need).map_err(|e| self.poisoned(e))?;
        }
        if self.disk_bytes() > budget / 10 * 9 {
            tracing::info!(budget, "store file near its byte budget: compacting");
            self.compact()?;
        }
        Ok(())
    }

    /// Bytes of pages in use in the store file, plus the log.
    fn live_bytes(&self) -> Result<u64> {
        let db = read(&self.db);
        let txn = db.writable()?.begin_write()?;
        let stats = txn.stats()?;
        txn.abort()?;
        let log_bytes = lock(&self.head).log.len;
        Ok(stats.allocated_pages() * stats.page_size() as u64 + log_bytes)
    }

    fn evict(&self, need: u64) -> Result<()> {
        let db = read(&self.db);
        let txn = db.writable()?.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            let mut freed = 0u64;
            let tiers = [
                (Tier::Raw, META_RAW_SAMPLES),
                (Tier::Minute, META_MINUTE_POINTS),
                (Tier::Hour, META_HOUR_POINTS),
            ];
            let mut table = txn.open_table(CHUNKS)?;
            for (tier, counter) in tiers {
                if freed >= need {
                    break;
                }
                // Bytes per window across all series, oldest first.
                let mut windows: BTreeMap<i64, u64> = BTreeMap::new();
                for entry in table.iter()? {
                    let (key, value) = entry?;
                    let (_, t, window) = key.value();
                    if t == tier as u8 {
                        *windows.entry(window).or_default() += value.value().len() as u64 + 24;
                    }
                }
                // The newest window stays: it is where current data goes.
                windows.pop_last();
                let mut cut = None;
                for (&window, &bytes) in &windows {
                    if freed >= need {
                        break;
                    }
                    freed += bytes;
                    cut = Some(window);
                }
                if let Some(cut) = cut {
                    let dropped = drop_windows_through(&mut table, cut, tier, &BTreeSet::new())?;
                    add_counter(&mut meta, counter, -(dropped as i64))?;
                }
            }
        }
        txn.commit()?;
        Ok(())
    }

    fn compact(&self) -> Result<bool> {
        let mut guard = self.db.write().unwrap_or_else(|e| e.into_inner());
        let db = guard.writable_mut()?;
        // Each pass moves what it can; a few passes reach the fixed point without risking a loop
        // that never ends.
        let mut compacted = false;
        for _ in 0..4 {
            if !db.compact()? {
                break;
            }
            compacted = true;
        }
        Ok(compacted)
    }

    fn head_snapshot(&self, ids: &[u32], from: i64, to: i64) -> HeadSnapshot {
        let head = lock(&self.head);
        let mut snapshot = HeadSnapshot::default();
        let wanted: BTreeSet<u32> = ids.iter().copied().collect();
        let parts = head
            .frozen
            .iter()
            .map(|f| &**f)
            .chain(std::iter::once(&head.active));
        for part in parts {
            for id in &wanted {
                if let Some(samples) = part.series.get(id) {
                    let samples = samples.to_vec();
                    let in_range = samples.into_iter().filter(|s| s.0 >= from && s.0 <= to);
                    snapshot.samples.entry(*id).or_default().extend(in_range);
                }
            }
            for write in &part.rollups {
                if wanted.contains(&write.series) {
                    snapshot
                        .rollups
                        .entry(write.series)
                        .or_default()
                        .push(write.clone());
                }
            }
        }
        snapshot
    }
}

fn add_counter(meta: &mut redb::Table<&str, u64>, key: &str, delta: i64) -> Result<()> {
    if delta == 0 {
        return Ok(());
    }
    let current = meta.get(key)?.map_or(0, |v| v.value());
    meta.insert(key, current.saturating_add_signed(delta))?;
    Ok(())
}

fn chunk_len(bytes: &[u8], tier: Tier) -> u64 {
    let decoded = match tier {
        Tier::Raw => codec::decode_chunk(bytes).map(|(t, _)| t.len()),
        _ => codec::decode_rollup_chunk(bytes).map(|(b, _)| b.len()),
    };
    decoded.unwrap_or(0) as u64
}

/// Removes every chunk of `tier` whose whole window ends at or before `cut`; returns the points
/// removed.
/// Drops the chunks of `tier` that end before `cut`, except those in `spared` (keys as in the
/// change feed: window, tier, series).
fn drop_before(
    table: &mut ChunkTable<'_>,
    cut: Option<i64>,
    tier: Tier,
    spared: &BTreeSet<(i64, u8, u32)>,
) -> Result<u64> {
    let Some(cut) = cut else { return Ok(0) };
    let window = window_of(tier);
    // Windows starting at or before this one end at or before `cut`.
    let last_droppable = bucket_of(cut, window).saturating_sub(window);
    drop_windows_through(table, last_droppable, tier, spared)
}

fn drop_windows_through(
    table: &mut ChunkTable<'_>,
    last_window: i64,
    tier: Tier,
    spared: &BTreeSet<(i64, u8, u32)>,
) -> Result<u64> {
    let mut doomed = Vec::new();
    let mut points = 0u64;
    for entry in table.iter()? {
        let (key, value) = entry?;
        let (id, t, window) = key.value();
        if t == tier as u8 && window <= last_window && !spared.contains(&(window, t, id)) {
            points += chunk_len(value.value(), tier);
            doomed.push((id, t, window));
        }
    }
    for key in doomed {
        table.remove(key)?;
    }
    Ok(points)
}

/// Rollup points of one series and tier with bucket starts in `[from, to]`, from either a read
/// or a write transaction's table.
fn read_rollups(
    table: &impl ReadableTable<(u32, u8, i64), &'static [u8]>,
    id: u32,
    tier: Tier,
    from: i64,
    to: i64,
    series: &dyn Fn() -> String,
) -> Result<Vec<(i64, Rollup)>> {
    let mut out = Vec::new();
    if from > to {
        return Ok(out);
    }
    let t = tier as u8;
    for entry in table.range((id, t, bucket_of(from, window_of(tier)))..=(id, t, to))? {
        let (_, chunk) = entry?;
        let (buckets, rollups) =
            codec::decode_rollup_chunk(chunk.value()).map_err(|cause| Error::CorruptChunk {
                what: "rollup chunk",
                series: series(),
                cause,
            })?;
        out.extend(
            buckets
                .into_iter()
                .zip(rollups)
                .filter(|(b, _)| *b >= from && *b <= to),
        );
    }
    Ok(out)
}

/// Replaces rollup buckets of one series; returns the change in the number of stored points.
/// A seal's direct rollup writes by series and tier, and the hours that minute writes make
/// stale.
#[allow(clippy::type_complexity)] // three maps of the same shape, named where they are used
fn rollup_writes_by_series(
    writes: &[RollupWrite],
) -> (
    HashMap<u32, BTreeMap<i64, Rollup>>,
    HashMap<u32, BTreeMap<i64, Rollup>>,
    HashMap<u32, BTreeSet<i64>>,
) {
    let mut minutes: HashMap<u32, BTreeMap<i64, Rollup>> = HashMap::new();
    let mut hours: HashMap<u32, BTreeMap<i64, Rollup>> = HashMap::new();
    let mut dirty_hours: HashMap<u32, BTreeSet<i64>> = HashMap::new();
    for write in writes {
        match write.tier {
            Tier::Minute => {
                minutes
                    .entry(write.series)
                    .or_default()
                    .insert(write.bucket, write.rollup);
                dirty_hours
                    .entry(write.series)
                    .or_default()
                    .insert(bucket_of(write.bucket, HOUR_MS));
            }
            _ => {
                hours
                    .entry(write.series)
                    .or_default()
                    .insert(write.bucket, write.rollup);
            }
        }
    }
    (minutes, hours, dirty_hours)
}

/// One series' rollups for a seal: written directly, and the hours to recompute.
struct SealRollups {
    minutes: BTreeMap<i64, Rollup>,
    hours: BTreeMap<i64, Rollup>,
    hours_dirty: BTreeSet<i64>,
}

/// Merges one series' frozen samples (sorted, last write wins) into its raw chunks, then
/// rewrites the minute and hour rollups they touch; returns the change in raw samples, minute
/// points and hour points.
fn merge_series(
    chunks: &mut ChunkTable<'_>,
    id: u32,
    samples: &[(i64, f64)],
    mut rollups: SealRollups,
    (level, key_of): (i32, &dyn Fn(u32) -> String),
) -> Result<[i64; 3]> {
    let mut raw_delta = 0i64;
    let mut start = 0;
    while start < samples.len() {
        let window = bucket_of(samples[start].0, RAW_WINDOW);
        let end =
            start + samples[start..].partition_point(|s| bucket_of(s.0, RAW_WINDOW) == window);
        let new = &samples[start..end];
        start = end;
        let existing: Vec<(i64, f64)> = {
            let stored = chunks.get((id, Tier::Raw as u8, window))?;
            let stored = stored.as_ref().map(|chunk| chunk.value());
            decoded_or_empty(stored, codec::decode_chunk, (&|| key_of(id), window))
        };
        let merged = merge_sorted(&existing, new);
        raw_delta += merged.len() as i64 - existing.len() as i64;
        let (timestamps, values): (Vec<i64>, Vec<f64>) = merged.iter().copied().unzip();
        chunks.insert(
            (id, Tier::Raw as u8, window),
            codec::encode_chunk(&timestamps, &values, level).as_slice(),
        )?;
        let dirty: BTreeSet<i64> = new.iter().map(|s| bucket_of(s.0, MINUTE_MS)).collect();
        for (bucket, rollup) in query::rollups_from_samples(&merged, MINUTE_MS) {
            if dirty.contains(&bucket) {
                rollups.minutes.insert(bucket, rollup);
            }
        }
        rollups
            .hours_dirty
            .extend(dirty.iter().map(|&m| bucket_of(m, HOUR_MS)));
    }
    let minute_delta = apply_rollups(chunks, id, Tier::Minute, &rollups.minutes, level, key_of)?;
    for hour in rollups.hours_dirty {
        let last = hour.saturating_add(HOUR_MS - 1);
        let points = read_rollups(chunks, id, Tier::Minute, hour, last, &|| key_of(id))?;
        if let Some((_, rollup)) = query::coarsen(&points, HOUR_MS).into_iter().next() {
            rollups.hours.insert(hour, rollup);
        }
    }
    let hour_delta = apply_rollups(chunks, id, Tier::Hour, &rollups.hours, level, key_of)?;
    Ok([raw_delta, minute_delta, hour_delta])
}

/// The state tables' puts and deletes of a seal.
fn apply_state_writes(txn: &redb::WriteTransaction, writes: &StateWrites) -> Result<()> {
    for (table, writes) in &writes.tables {
        let definition: TableDefinition<&str, &[u8]> = TableDefinition::new(table.table_name());
        let mut opened = txn.open_table(definition)?;
        for (key, value) in writes {
            match value {
                Some(value) => opened.insert(key.as_str(), value.as_slice())?,
                None => opened.remove(key.as_str())?,
            };
        }
    }
    Ok(())
}

/// The change feed's part of a seal: what the sync layer confirmed goes (unless written again
/// since), and what the seal folded into chunks is marked for it.
fn update_feed(txn: &redb::WriteTransaction, feed: &FeedCommit, generation: u64) -> Result<()> {
    let mut dirty = txn.open_table(DIRTY)?;
    for (key, version) in &feed.delivered {
        if dirty.get(*key)?.map(|v| v.value()) == Some(*version) {
            dirty.remove(*key)?;
        }
    }
    for key in &feed.dirty {
        dirty.insert(*key, generation)?;
    }
    Ok(())
}

/// A chunk decoder: timestamps (or buckets) and their values.
type Decoder<V> = fn(&[u8]) -> std::result::Result<(Vec<i64>, Vec<V>), crate::DecodeError>;

/// A stored chunk's points, or none where there is no chunk. A chunk that does not decode is
/// logged and counts as empty: the seal replaces it with what it writes into its window.
fn decoded_or_empty<V, C: FromIterator<(i64, V)>>(
    stored: Option<&[u8]>,
    decode: Decoder<V>,
    (series, window): (&dyn Fn() -> String, i64),
) -> C {
    match stored.map(decode) {
        Some(Ok((timestamps, values))) => timestamps.into_iter().zip(values).collect(),
        Some(Err(error)) => {
            tracing::error!(series = %series(), window, %error,
                "corrupt chunk replaced by what the seal writes into its window");
            std::iter::empty().collect()
        }
        None => std::iter::empty().collect(),
    }
}

fn apply_rollups(
    table: &mut ChunkTable<'_>,
    id: u32,
    tier: Tier,
    updates: &BTreeMap<i64, Rollup>,
    level: i32,
    key_of: &dyn Fn(u32) -> String,
) -> Result<i64> {
    let mut delta = 0i64;
    let window = window_of(tier);
    let t = tier as u8;
    let mut by_window: BTreeMap<i64, Vec<(i64, Rollup)>> = BTreeMap::new();
    for (&bucket, &rollup) in updates {
        by_window
            .entry(bucket_of(bucket, window))
            .or_default()
            .push((bucket, rollup));
    }
    for (start, changes) in by_window {
        let mut points: BTreeMap<i64, Rollup> = {
            let stored = table.get((id, t, start))?;
            let stored = stored.as_ref().map(|chunk| chunk.value());
            decoded_or_empty(stored, codec::decode_rollup_chunk, (&|| key_of(id), start))
        };
        let before = points.len() as i64;
        points.extend(changes);
        delta += points.len() as i64 - before;
        let (buckets, rollups): (Vec<i64>, Vec<Rollup>) = points.into_iter().unzip();
        table.insert(
            (id, t, start),
            codec::encode_rollup_chunk(&buckets, &rollups, level).as_slice(),
        )?;
    }
    Ok(delta)
}

/// The time span of one chunk of a tier.
fn window_of(tier: Tier) -> i64 {
    match tier {
        Tier::Raw => RAW_WINDOW,
        Tier::Minute => MINUTE_WINDOW,
        Tier::Hour => HOUR_WINDOW,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full disk made the writer retry maintenance in a busy loop, logging each failure.
    #[test]
    fn failing_maintenance_waits_longer_each_time_and_logs_once_a_minute() {
        let mut backoff = Backoff::default();
        let error = Error::Closed;
        let mut now = Duration::ZERO;
        let mut waits = Vec::new();
        let mut logged = Vec::new();
        for _ in 0..12 {
            backoff.failed(&error, now);
            if backoff.last_logged == Some(now) {
                logged.push(now);
            }
            let wait = backoff.wait(now);
            waits.push(wait);
            now += wait;
        }
        assert!(waits[0] >= Duration::from_millis(100), "{waits:?}");
        assert!(waits.windows(2).all(|w| w[1] >= w[0]), "{waits:?}");
        assert_eq!(*waits.last().unwrap(), Duration::from_secs(30));
        // 12 failures over about three minutes, logged at most once a minute.
        assert!(logged.len() <= 4, "{logged:?}");
        assert!(logged
            .windows(2)
            .all(|w| w[1] - w[0] >= Duration::from_secs(60)));
        backoff.succeeded();
        assert_eq!(backoff.wait(now), Duration::ZERO);
    }
}
