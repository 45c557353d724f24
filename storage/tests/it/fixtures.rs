//! Format versions, foreign files, locking and corruption.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use outpost_storage::{Aggregation, Error, Store, FORMAT_VERSION};
use redb::TableDefinition;

use crate::{open, raw_bits, selector, write};

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

fn fixture_path(version: u32) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/data")
        .join(format!("store-v{version}.redb.zst"))
}

/// The fixture's content: deterministic, crossing chunk windows, with special values.
fn fixture_samples() -> Vec<(&'static str, i64, f64)> {
    let mut samples = Vec::new();
    for i in 0..10_000i64 {
        samples.push((
            r#"fixture_gauge{unit="a"}"#,
            1_700_000_000_000 + i * 1000,
            (i % 97) as f64 / 4.0,
        ));
    }
    samples.push((
        "fixture_special",
        1_700_000_000_001,
        f64::from_bits(0x7ff8_0000_dead_beef),
    ));
    samples.push(("fixture_special", 1_700_000_000_002, -0.0));
    samples.push(("fixture_special", 1_700_000_000_003, f64::NEG_INFINITY));
    samples
}

#[test]
#[ignore = "writes the fixture of the current format; run when a new format is released"]
fn write_fixture() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fixture.redb");
    let store = open(&path);
    write(&store, &fixture_samples());
    store.close().unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let compressed = zstd::bulk::compress(&bytes, 19).unwrap();
    std::fs::write(fixture_path(FORMAT_VERSION), compressed).unwrap();
}

#[test]
fn every_released_format_opens() {
    for version in 1..=FORMAT_VERSION {
        let compressed = std::fs::read(fixture_path(version))
            .unwrap_or_else(|e| panic!("fixture of format {version} is missing: {e}"));
        let bytes = zstd::bulk::decompress(&compressed, 64 << 20).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.redb");
        std::fs::write(&path, bytes).unwrap();
        let store = open(&path);
        let expected = fixture_samples();
        let gauge: Vec<(i64, u64)> = expected
            .iter()
            .filter(|s| s.0.starts_with("fixture_gauge"))
            .map(|s| (s.1, s.2.to_bits()))
            .collect();
        let special: Vec<(i64, u64)> = expected
            .iter()
            .filter(|s| s.0 == "fixture_special")
            .map(|s| (s.1, s.2.to_bits()))
            .collect();
        assert_eq!(
            raw_bits(&store, "fixture_gauge"),
            vec![(r#"fixture_gauge{unit="a"}"#.to_string(), gauge)]
        );
        assert_eq!(
            raw_bits(&store, "fixture_special"),
            vec![("fixture_special".to_string(), special)]
        );
        let max = store
            .query_step(
                &selector("fixture_gauge"),
                0,
                i64::MAX / 2,
                86_400_000,
                Aggregation::Max,
            )
            .unwrap();
        assert_eq!(max[0].points[0].1, 24.0);
        // Still writable.
        write(&store, &[("fixture_special", 1_700_000_000_004, 1.0)]);
        store.close().unwrap();
    }
}

fn set_format_version(path: &Path, version: u64) {
    let db = redb::Database::open(path).unwrap();
    let txn = db.begin_write().unwrap();
    txn.open_table(META)
        .unwrap()
        .insert("format_version", version)
        .unwrap();
    txn.commit().unwrap();
}

#[test]
fn a_newer_format_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("future.redb");
    let store = open(&path);
    write(&store, &[("up", 1, 1.0)]);
    store.close().unwrap();
    set_format_version(&path, 999);
    let error = Store::open(&path, crate::test_options()).unwrap_err();
    assert!(
        matches!(error, Error::FormatTooNew { found: 999, .. }),
        "{error}"
    );
    assert!(error.to_string().contains("newer Outpost"), "{error}");
}

#[test]
fn foreign_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.redb");
    std::fs::write(&garbage, vec![0x5a; 10_000]).unwrap();
    let error = Store::open(&garbage, crate::test_options()).unwrap_err();
    assert!(matches!(error, Error::NotAStore { .. }), "{error}");
    // The file was left alone.
    assert_eq!(std::fs::read(&garbage).unwrap(), vec![0x5a; 10_000]);

    let other = dir.path().join("other.redb");
    {
        let db = redb::Database::create(&other).unwrap();
        let txn = db.begin_write().unwrap();
        let table: TableDefinition<&str, &str> = TableDefinition::new("somebody_elses");
        txn.open_table(table).unwrap().insert("k", "v").unwrap();
        txn.commit().unwrap();
    }
    let error = Store::open(&other, crate::test_options()).unwrap_err();
    assert!(matches!(error, Error::NotAStore { .. }), "{error}");
}

#[test]
#[ignore = "the child process of a_second_process_gets_a_clear_lock_error"]
fn lock_child() {
    let Ok(path) = std::env::var("OUTPOST_LOCK_STORE") else {
        return;
    };
    match Store::open(&path, crate::test_options()) {
        Ok(_) => println!("RESULT opened"),
        Err(Error::Locked { .. }) => println!("RESULT locked"),
        Err(other) => println!("RESULT other {other}"),
    }
}

#[test]
fn a_second_process_gets_a_clear_lock_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("locked.redb");
    let store = open(&path);
    write(&store, &[("up", 1, 1.0)]);
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "fixtures::lock_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("OUTPOST_LOCK_STORE", &path)
        .stderr(Stdio::null())
        .output()
        .unwrap();
    let result = BufReader::new(output.stdout.as_slice())
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.split_once("RESULT ").map(|(_, r)| r.to_string()));
    assert_eq!(result.as_deref(), Some("locked"));
    // The holder is unaffected.
    write(&store, &[("up", 2, 2.0)]);
    store.close().unwrap();
    let message = Error::Locked { path: path.clone() }.to_string();
    assert!(
        message.contains("already open in another process"),
        "{message}"
    );
}

#[test]
fn a_corrupt_page_on_disk_is_an_error_that_names_its_series() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corrupt.redb");
    let store = open(&path);
    // Values that compress poorly, so the chunk is long enough to find in the file.
    let samples: Vec<(&str, i64, f64)> = (0..3000i64)
        .map(|i| {
            (
                r#"victim{core="3"}"#,
                1_700_000_000_000 + i * 1000,
                ((i * 7919) % 1000) as f64 / 7.0,
            )
        })
        .collect();
    write(&store, &samples);
    write(&store, &[("bystander", 1_700_000_000_000, 1.0)]);
    store.close().unwrap();

    // Flip one bit of the chunk where it lies in the file, as rotting flash would.
    let (timestamps, values): (Vec<i64>, Vec<f64>) = samples.iter().map(|s| (s.1, s.2)).unzip();
    let chunk = outpost_storage::codec::encode_chunk(
        &timestamps,
        &values,
        crate::test_options().zstd_level,
    );
    let mut file = std::fs::read(&path).unwrap();
    let at = file
        .windows(64)
        .position(|w| w == &chunk[100..164])
        .expect("the chunk is stored as encoded");
    file[at + 10] ^= 0x40;
    std::fs::write(&path, &file).unwrap();

    let store = open(&path);
    let error = store
        .query_raw(&selector("victim"), i64::MIN, i64::MAX)
        .unwrap_err();
    assert!(matches!(error, Error::CorruptChunk { .. }), "{error}");
    assert!(error.to_string().contains(r#"victim{core="3"}"#), "{error}");
    // Other series still answer.
    assert_eq!(raw_bits(&store, "bystander").len(), 1);
}
