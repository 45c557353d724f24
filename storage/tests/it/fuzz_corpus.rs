//! Replays the fuzzers' seeds (`storage/fuzz/seeds/`, valid inputs made from real data) and
//! corpora (`storage/fuzz/corpus/`, what the fuzzers kept), so that every input the fuzzers ever
//! kept, including those that once crashed a decoder, is checked on every CI run without cargo
//! fuzz. Run the fuzzers with `cargo fuzz run -O chunk_decoder fuzz/corpus/chunk_decoder
//! fuzz/seeds/chunk_decoder` from `storage/` (cargo-fuzz; on a stable toolchain with
//! `RUSTC_BOOTSTRAP=1`).

use std::path::Path;

use outpost_storage::codec::{decode_chunk, decode_rollup_chunk};
use outpost_storage::fuzzing::{decode_chunk_body, decode_log, decode_log_record, inputs};

use std::collections::BTreeMap;
use std::io::BufRead;

use outpost_storage::codec::{encode_chunk, encode_rollup_chunk};
use outpost_storage::fuzzing::encode_chunk_body;
use outpost_storage::{Options, Rollup, SeriesKey, StateTable, Store, WriteBatch};

/// The fuzz targets' seeds and kept corpora.
const FUZZ_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz");

#[test]
fn chunk_corpus_decodes_or_fails_cleanly() {
    for (name, bytes) in &inputs(Path::new(FUZZ_DIR), "chunk_decoder", 10).unwrap() {
        let raw = decode_chunk(bytes);
        let rollup = decode_rollup_chunk(bytes);
        let body = decode_chunk_body(bytes);
        // The hand-made seeds are valid, so the decoders are really exercised.
        if name.starts_with("raw-") || name == "special" {
            assert!(raw.is_ok(), "{name}: {raw:?}");
        }
        if name.starts_with("rollup-") {
            assert!(rollup.is_ok(), "{name}: {rollup:?}");
        }
        if name.starts_with("body-") {
            assert_eq!(body, Ok(100), "{name}");
        }
    }
}

#[test]
fn log_corpus_decodes_or_fails_cleanly() {
    for (name, bytes) in &inputs(Path::new(FUZZ_DIR), "log_decoder", 1).unwrap() {
        let frames = decode_log(bytes);
        let _ = decode_log_record(bytes);
        if name == "log-5-frames" {
            assert_eq!(frames, Ok(5), "{name}");
            // Every cut of a valid log is a torn tail, never an error of the whole file.
            for cut in 20..bytes.len() {
                assert!(decode_log(&bytes[..cut]).is_ok(), "{name} cut at {cut}");
            }
        }
    }
}

#[test]
#[ignore = "writes the fuzzers' seeds from the real host data; run after a format change"]
fn write_seeds() {
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/host/host-1h.prom.zst");
    let reader =
        std::io::BufReader::new(zstd::Decoder::new(std::fs::File::open(data).unwrap()).unwrap());
    let mut series: BTreeMap<String, (Vec<i64>, Vec<f64>)> = BTreeMap::new();
    for line in reader.lines() {
        let line = line.unwrap();
        if let Ok(outpost_storage::text::Line::Sample {
            series: name,
            value,
            timestamp_ms: Some(ts),
        }) = outpost_storage::text::parse_line(&line)
        {
            let entry = series.entry(name.to_string()).or_default();
            entry.0.push(ts);
            entry.1.push(value);
        }
    }
    let chunks = seeds.join("chunk_decoder");
    std::fs::create_dir_all(&chunks).unwrap();
    for (i, name) in [
        "node_load1",
        "node_memory_Active_bytes",
        "node_context_switches_total",
    ]
    .iter()
    .enumerate()
    {
        let (t, v) = &series[*name];
        std::fs::write(
            chunks.join(format!("body-{i}")),
            encode_chunk_body(&t[..100], &v[..100]),
        )
        .unwrap();
        std::fs::write(
            chunks.join(format!("raw-{i}")),
            encode_chunk(&t[..200], &v[..200], 3),
        )
        .unwrap();
        let rollups: Vec<Rollup> = v[..60].iter().map(|x| Rollup::of(*x)).collect();
        std::fs::write(
            chunks.join(format!("rollup-{i}")),
            encode_rollup_chunk(&t[..60], &rollups, 3),
        )
        .unwrap();
    }
    let special = encode_chunk(
        &[1, 2, 3, i64::MAX],
        &[f64::NAN, -0.0, f64::INFINITY, 0.1],
        3,
    );
    std::fs::write(chunks.join("special"), special).unwrap();

    // A log of five frames, copied while the store still has it open.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("s.redb"), Options::default()).unwrap();
    for (name, (t, v)) in series.iter().take(5) {
        let id = store.series_id(&SeriesKey::parse(name).unwrap()).unwrap();
        let mut batch = WriteBatch::default();
        for k in 0..20 {
            batch.sample(id, t[k], v[k]);
        }
        batch.put_state(StateTable::SyncCursor, "c", vec![1, 2]);
        store.write(batch).unwrap();
        store.sync().unwrap();
    }
    let logs = seeds.join("log_decoder");
    std::fs::create_dir_all(&logs).unwrap();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name().to_string_lossy().contains(".wal.") {
            std::fs::copy(entry.path(), logs.join("log-5-frames")).unwrap();
        }
    }
    store.close().unwrap();
}
