//! Power loss, simulated: the store runs on a disk that keeps, per file, what was last synced;
//! cutting the power throws away every write since, in the redb file and the logs alike. After
//! each cut the store must reopen consistent, with every sample accepted more than
//! `sync_interval` before the cut.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outpost_storage::{Disk, LogFile, Options, Store, WriteBatch};
use redb::{BackendError, StorageBackend};

use crate::{key, selector, ManualClock};

#[derive(Debug, Default, Clone)]
struct SimFile {
    /// What the running process sees.
    current: Vec<u8>,
    /// What survives a power cut.
    durable: Vec<u8>,
}

/// A disk whose files lose their unsynced writes at a power cut. Handles opened before a cut
/// belong to the dead process: every call on them fails.
#[derive(Debug, Default)]
struct SimDisk {
    files: Mutex<HashMap<PathBuf, SimFile>>,
    epoch: AtomicU64,
}

impl SimDisk {
    fn cut_power(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        for file in self.files.lock().unwrap().values_mut() {
            file.current = file.durable.clone();
        }
    }
}

#[derive(Debug)]
struct SimHandle {
    disk: Arc<SimDisk>,
    path: PathBuf,
    epoch: u64,
}

impl SimHandle {
    fn with<T>(&self, f: impl FnOnce(&mut SimFile) -> std::io::Result<T>) -> std::io::Result<T> {
        if self.disk.epoch.load(Ordering::SeqCst) != self.epoch {
            return Err(std::io::Error::other("the power went out"));
        }
        let mut files = self.disk.files.lock().unwrap();
        let file = files
            .get_mut(&self.path)
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))?;
        f(file)
    }
}

impl StorageBackend for SimHandle {
    fn len(&self) -> std::io::Result<u64> {
        self.with(|f| Ok(f.current.len() as u64))
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.with(|f| {
            let start = offset as usize;
            let bytes = f
                .current
                .get(start..start + out.len())
                .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
            out.copy_from_slice(bytes);
            Ok(())
        })
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.with(|f| {
            f.current.resize(len as usize, 0);
            Ok(())
        })
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.with(|f| {
            f.durable = f.current.clone();
            Ok(())
        })
    }
    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.with(|f| {
            let end = offset as usize + data.len();
            if f.current.len() < end {
                f.current.resize(end, 0);
            }
            f.current[offset as usize..end].copy_from_slice(data);
            Ok(())
        })
    }
    fn try_lock_range(&self, _: Bound<u64>, _: Bound<u64>) -> Result<bool, BackendError> {
        Err(BackendError::Unsupported)
    }
}

impl LogFile for SimHandle {
    fn append(&self, bytes: &[u8]) -> std::io::Result<()> {
        self.with(|f| {
            f.current.extend_from_slice(bytes);
            Ok(())
        })
    }
    fn sync(&self) -> std::io::Result<()> {
        self.with(|f| {
            f.durable = f.current.clone();
            Ok(())
        })
    }
}

#[derive(Debug)]
struct SimDiskRef(Arc<SimDisk>);

impl SimDiskRef {
    fn handle(&self, path: &Path) -> SimHandle {
        SimHandle {
            disk: self.0.clone(),
            path: path.to_path_buf(),
            epoch: self.0.epoch.load(Ordering::SeqCst),
        }
    }
}

impl Disk for SimDiskRef {
    fn database(&self, path: &Path) -> std::io::Result<(Box<dyn StorageBackend>, bool)> {
        let mut files = self.0.files.lock().unwrap();
        let file = files.entry(path.to_path_buf()).or_default();
        let fresh = file.current.is_empty();
        drop(files);
        Ok((Box::new(self.handle(path)), fresh))
    }
    fn create_log(&self, path: &Path) -> std::io::Result<Arc<dyn LogFile>> {
        // The file's name is durable at once (the real disk fsyncs the directory), its content
        // only when synced.
        self.0
            .files
            .lock()
            .unwrap()
            .insert(path.to_path_buf(), SimFile::default());
        Ok(Arc::new(self.handle(path)))
    }
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        self.handle(path).with(|f| Ok(f.current.clone()))
    }
    fn remove(&self, path: &Path) -> std::io::Result<()> {
        self.0.files.lock().unwrap().remove(path);
        Ok(())
    }
    fn list(&self, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
        Ok(self
            .0
            .files
            .lock()
            .unwrap()
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .cloned()
            .collect())
    }
    fn allocated_bytes(&self, path: &Path) -> u64 {
        self.0
            .files
            .lock()
            .unwrap()
            .get(path)
            .map_or(0, |f| f.current.len() as u64)
    }
}

const SYNC_INTERVAL_MS: u64 = 2_000;
const SERIES: usize = 3;

#[test]
fn power_loss_loses_at_most_sync_interval() {
    let disk = Arc::new(SimDisk::default());
    let clock = Arc::new(ManualClock::default());
    let path = PathBuf::from("/sim/power.redb");
    let options = || Options {
        flush_interval: Duration::from_millis(500),
        sync_interval: Duration::from_millis(SYNC_INTERVAL_MS),
        seal_interval: Duration::from_millis(7_000),
        max_head_samples: 2_000,
        zstd_level: 1,
        clock: clock.clone(),
        disk: Arc::new(SimDiskRef(disk.clone())),
        ..Options::default()
    };
    // Every sample ever accepted: timestamp -> accepted at (simulated ms).
    let mut accepted: BTreeMap<i64, u64> = BTreeMap::new();
    let mut next = 0i64;
    let mut rng = 0x853c_49e6_748f_ea9bu64;
    let mut random = move |bound: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % bound
    };
    let mut checked = 0usize;
    for cut in 0..30 {
        let store = Store::open(&path, options()).unwrap();
        let ids: Vec<_> = crate::numbered_series(&store, "power", SERIES);
        // Run for a random while: writes, time passing, the store's timers.
        for _ in 0..random(400) {
            let mut batch = WriteBatch::default();
            for _ in 0..1 + random(20) {
                for (s, id) in ids.iter().enumerate() {
                    batch.sample(*id, next * 1000, next as f64 + s as f64 / 10.0);
                }
                accepted.insert(next, clock.0.load(Ordering::SeqCst));
                next += 1;
            }
            store.write(batch).unwrap();
            clock.0.fetch_add(random(300), Ordering::SeqCst);
            store.tick().unwrap();
        }
        let cut_at = clock.0.load(Ordering::SeqCst);
        disk.cut_power();
        // The dead process' store can no longer write anything; let it go.
        drop(store);

        let store = Store::open(&path, options()).unwrap();
        for s in 0..SERIES {
            let sel = selector(&format!("power{{s=\"{s}\"}}"));
            let points = store.query_raw(&sel, i64::MIN, i64::MAX).unwrap();
            let points: BTreeMap<i64, f64> = points
                .first()
                .map(|p| p.points.iter().map(|(t, v)| (t / 1000, *v)).collect())
                .unwrap_or_default();
            for (n, v) in &points {
                assert_eq!(*v, *n as f64 + s as f64 / 10.0, "cut {cut}: wrong value");
            }
            for (n, at) in &accepted {
                if at + SYNC_INTERVAL_MS <= cut_at {
                    assert!(
                        points.contains_key(n),
                        "cut {cut}: sample {n} of series {s}, accepted at {at} ms, lost by the \
                         cut at {cut_at} ms"
                    );
                    checked += 1;
                }
            }
            assert_eq!(
                crate::rollup_count(&store, &sel),
                points.len(),
                "cut {cut}: rollups disagree"
            );
        }
        // What survived is the truth from now on.
        let survivors = store
            .query_raw(&selector(r#"power{s="0"}"#), i64::MIN, i64::MAX)
            .unwrap();
        let kept: std::collections::BTreeSet<i64> = survivors
            .first()
            .map(|p| p.points.iter().map(|(t, _)| t / 1000).collect())
            .unwrap_or_default();
        accepted.retain(|n, _| kept.contains(n));
        next = kept.last().map_or(0, |n| n + 1).max(next);
        store.close().unwrap();
        clock.0.fetch_add(1, Ordering::SeqCst);
    }
    assert!(
        checked > 1_000,
        "only {checked} samples were old enough to check"
    );
}

#[test]
fn after_a_failed_sync_the_store_refuses_writes_with_a_distinct_error() {
    let disk = Arc::new(SimDisk::default());
    let options = Options {
        disk: Arc::new(SimDiskRef(disk.clone())),
        clock: Arc::new(ManualClock::default()),
        ..crate::test_options()
    };
    let store = Store::open("/sim/poison.redb", options).unwrap();
    crate::write(&store, &[("up", 1, 1.0)]);
    // The device goes away under the running store.
    disk.cut_power();
    let failed = store.sync().unwrap_err();
    assert!(
        matches!(failed, outpost_storage::Error::Io { .. }),
        "{failed}"
    );
    let id = store.series_id(&key("up")).unwrap();
    let mut batch = WriteBatch::default();
    batch.sample(id, 2, 2.0);
    let refused = store.write(batch).unwrap_err();
    assert!(
        matches!(refused, outpost_storage::Error::Poisoned { .. }),
        "{refused}"
    );
    assert!(
        matches!(
            refused,
            outpost_storage::Error::Poisoned { heals: true, .. }
        ),
        "{refused}"
    );
    assert!(refused.to_string().contains("tries again"), "{refused}");
    assert!(store.write_failure().is_some());
    assert!(matches!(
        store.sync(),
        Err(outpost_storage::Error::Poisoned { .. })
    ));
}

/// Every sample the change feed offers now, live or backlog, per series.
fn feed_contents(store: &Store) -> BTreeMap<String, Vec<i64>> {
    let mut out: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let live = store.live_since(None, usize::MAX);
    for (id, samples) in &live.series {
        let series = out
            .entry(store.series_key(*id).unwrap().to_string())
            .or_default();
        series.extend(samples.iter().map(|(t, _)| *t));
    }
    for chunk in store.dirty_chunks(usize::MAX, &Default::default()).unwrap() {
        if chunk.tier == outpost_storage::Tier::Raw {
            let (t, _) = outpost_storage::codec::decode_chunk(&chunk.bytes).unwrap();
            out.entry(chunk.key.to_string()).or_default().extend(t);
        }
    }
    for series in out.values_mut() {
        series.sort_unstable();
        series.dedup();
    }
    out
}

#[test]
fn a_store_whose_commit_failed_heals_by_itself_and_keeps_everything_it_accepted() {
    // Without a change feed; with one that carries its unconfirmed tail into the next head; and
    // with one whose tail is past the carry limit (a quarter of the head), which the failed
    // commit would have marked as backlog.
    heal_after_a_failed_commit(false, 1 << 20);
    heal_after_a_failed_commit(true, 1 << 20);
    heal_after_a_failed_commit(true, 8);
}

fn heal_after_a_failed_commit(track_changes: bool, max_head_samples: usize) {
    let disk = Arc::new(SimDisk::default());
    let clock = Arc::new(ManualClock::default());
    let options = || Options {
        disk: Arc::new(SimDiskRef(disk.clone())),
        clock: clock.clone(),
        track_changes,
        max_head_samples,
        ..crate::test_options()
    };
    let path = Path::new("/sim/heal.redb");
    let store = Store::open(path, options()).unwrap();
    crate::write(&store, &[("up", 1, 1.0), ("up", 2, 2.0)]);
    store.seal().unwrap();
    crate::write(&store, &[("up", 3, 3.0), ("down", 3, 30.0)]);
    store.sync().unwrap();
    // The device goes away under the running store: the seal's commit fails.
    disk.cut_power();
    store.seal().unwrap_err();
    let refused = store
        .write({
            let mut batch = WriteBatch::default();
            batch.sample(store.series_id(&key("up")).unwrap(), 9, 9.0);
            batch
        })
        .unwrap_err();
    assert!(
        matches!(
            refused,
            outpost_storage::Error::Poisoned { heals: true, .. }
        ),
        "{refused}"
    );
    assert!(
        matches!(store.tick(), Err(outpost_storage::Error::Poisoned { .. })),
        "no second try at once"
    );
    // The device is back (new handles work); the next maintenance heals the store.
    clock.advance(Duration::from_secs(2));
    store.tick().unwrap();
    assert_eq!(store.write_failure(), None);
    crate::write(&store, &[("up", 4, 4.0)]);
    let expected_up: Vec<(i64, u64)> = (1..=4).map(|t| (t, (t as f64).to_bits())).collect();
    let expected = |store: &Store| {
        assert_eq!(
            crate::raw_bits(store, "up"),
            vec![("up".to_string(), expected_up.clone())]
        );
        assert_eq!(
            crate::raw_bits(store, "down"),
            vec![("down".to_string(), vec![(3, 30f64.to_bits())])]
        );
    };
    expected(&store);
    if track_changes {
        // The sync layer has not confirmed anything: the feed still offers every sample.
        let feed = feed_contents(&store);
        assert_eq!(feed["up"], vec![1, 2, 3, 4]);
        assert_eq!(feed["down"], vec![3]);
    }
    store.close().unwrap();
    let store = Store::open(path, options()).unwrap();
    expected(&store);
}
