//! Damaged files: a bad byte in the write-ahead log loses only the frame it is in, and a store
//! opened read-only changes nothing on disk, whatever state it is in.

use std::path::{Path, PathBuf};

use outpost_storage::{Options, Store};

use crate::{key, selector};

/// A store as a crash leaves it: two log frames (series `x` in the first, `y` defined and
/// written in the second), nothing sealed, the redb file not closed. Returns the store's path
/// and its log's.
fn crashed_store(dir: &Path) -> (PathBuf, PathBuf) {
    let live = dir.join("live");
    std::fs::create_dir(&live).unwrap();
    let store = Store::open(live.join("store.redb"), crate::test_options()).unwrap();
    let x: Vec<(&str, i64, f64)> = (0..272).map(|i| ("x", i * 1_000, i as f64)).collect();
    crate::write(&store, &x);
    store.sync().unwrap();
    let y: Vec<(&str, i64, f64)> = (0..255).map(|i| ("y", i * 1_000, -i as f64)).collect();
    crate::write(&store, &y);
    store.sync().unwrap();
    // The files as they are while the store is open: what a SIGKILL leaves behind.
    let crashed = dir.join("crashed");
    std::fs::create_dir(&crashed).unwrap();
    let mut log = None;
    for entry in std::fs::read_dir(&live).unwrap() {
        let from = entry.unwrap().path();
        let to = crashed.join(from.file_name().unwrap());
        std::fs::copy(&from, &to).unwrap();
        if to.to_string_lossy().contains(".wal.") {
            log = Some(to);
        }
    }
    store.close().unwrap();
    (crashed.join("store.redb"), log.expect("a log file"))
}

fn points(store: &Store, name: &str) -> usize {
    store
        .query_raw(&selector(name), i64::MIN, i64::MAX)
        .unwrap()
        .iter()
        .filter(|s| s.series == key(name))
        .map(|s| s.points.len())
        .sum()
}

fn read_only() -> Options {
    Options {
        read_only: true,
        ..crate::test_options()
    }
}

#[test]
fn an_intact_crashed_store_reads_whole_without_being_changed() {
    let dir = tempfile::tempdir().unwrap();
    let (path, log) = crashed_store(dir.path());
    let before = (std::fs::read(&path).unwrap(), std::fs::read(&log).unwrap());
    let store = Store::open(&path, read_only()).unwrap();
    assert_eq!((points(&store, "x"), points(&store, "y")), (272, 255));
    assert_eq!(store.stats().unwrap().raw_samples, 527);
    assert!(
        store.replay_report().is_empty(),
        "{:?}",
        store.replay_report()
    );
    let refused = store.series_id(&key("new")).unwrap_err();
    assert!(
        matches!(refused, outpost_storage::Error::ReadOnly),
        "{refused}"
    );
    assert!(matches!(
        store.seal(),
        Err(outpost_storage::Error::ReadOnly)
    ));
    store.close().unwrap();
    let after = (std::fs::read(&path).unwrap(), std::fs::read(&log).unwrap());
    assert!(before == after, "a read-only open changed the files");
}

#[test]
fn one_bad_byte_in_the_log_loses_only_its_frame() {
    let dir = tempfile::tempdir().unwrap();
    let (path, log) = crashed_store(dir.path());
    let mut bytes = std::fs::read(&log).unwrap();
    // A byte inside frame 0 (the header is 20 bytes, then the frame's length).
    bytes[40] ^= 0x01;
    std::fs::write(&log, &bytes).unwrap();

    let store = Store::open(&path, read_only()).unwrap();
    assert_eq!((points(&store, "x"), points(&store, "y")), (0, 255));
    let report = store.replay_report().join("\n");
    assert!(report.contains("damaged bytes at offset 20"), "{report}");
    store.close().unwrap();
    assert_eq!(
        std::fs::read(&log).unwrap(),
        bytes,
        "read-only left the log"
    );

    // Opened for writing, the intact frame is folded into the file and kept for good.
    let store = Store::open(&path, crate::test_options()).unwrap();
    assert_eq!(points(&store, "y"), 255);
    store.close().unwrap();
    assert!(!log.exists(), "folded in, the log is gone");
    let store = Store::open(&path, crate::test_options()).unwrap();
    assert_eq!((points(&store, "x"), points(&store, "y")), (0, 255));
    assert!(store.replay_report().is_empty());
}

#[test]
fn a_read_only_open_of_a_missing_store_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.redb");
    assert!(Store::open(&path, read_only()).is_err());
    assert!(!path.exists());
}

/// The store-file fuzzer's check, run here on random damage to its seed (a real store): any
/// damage gives a report or an error, never a panic. `cargo fuzz run store_file` explores
/// further.
mod store_file {
    use proptest::prelude::*;

    fn seed() -> Vec<u8> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/seeds/store_file.redb");
        std::fs::read(path).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn any_damage_is_reported_not_a_panic(
            damage in proptest::collection::vec(any::<u8>(), 5..5 * 200)
        ) {
            let _ = outpost_storage::fuzzing::check_damaged_store(&seed(), &damage);
        }
    }

    #[test]
    fn the_seed_itself_is_clean() {
        assert_eq!(
            outpost_storage::fuzzing::check_damaged_store(&seed(), &[]).unwrap(),
            0
        );
    }

    /// Whole zeroed 4 KiB pages, as a failed flash block leaves them.
    #[test]
    fn zeroed_pages_are_reported_not_a_panic() {
        let seed = seed();
        for page in 1..seed.len() / 4096 {
            let mut damage = Vec::new();
            for (at, &byte) in seed.iter().enumerate().skip(page * 4096).take(4096) {
                if byte != 0 {
                    damage.extend_from_slice(&(at as u32).to_le_bytes());
                    damage.push(byte);
                }
            }
            let _ = outpost_storage::fuzzing::check_damaged_store(&seed, &damage);
        }
    }
}

/// An error's chain, as `anyhow` prints it with `{:#}`: each message, then its source's.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Each cause is printed once, whether the error is shown alone or as a chain.
#[test]
fn errors_say_each_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no such dir").join("s.redb");
    let error = outpost_storage::Store::open(&missing, crate::test_options()).unwrap_err();
    let text = chain(&error);
    assert_eq!(
        text.matches("No such file or directory").count(),
        1,
        "{text}"
    );
    assert!(text.contains("no such dir"), "{text}");
    // And a damaged chunk's decoding error, through the hub's ingest error.
    let decode = outpost_storage::Error::CorruptChunk {
        what: "raw chunk",
        series: "up".into(),
        cause: outpost_storage::DecodeError::Truncated { needed: 3 },
    };
    let text = chain(&decode);
    assert_eq!(text.matches("3 bytes early").count(), 1, "{text}");
}
