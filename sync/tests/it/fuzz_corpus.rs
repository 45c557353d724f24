//! Replays the fuzzers' seeds (`sync/fuzz/seeds/`: valid frames and bodies made from the real
//! host hour) and corpora (`sync/fuzz/corpus/`: what the fuzzers kept) on every test run, so that
//! every input they ever kept is checked without cargo fuzz. Run the fuzzers from `sync/` with
//! `cargo fuzz run -O frames fuzz/corpus/frames fuzz/seeds/frames` (cargo-fuzz; on a stable
//! toolchain with `RUSTC_BOOTSTRAP=1`), and likewise `batch_body`.

use outpost_sync::HubToDevice;
use std::path::Path;

use outpost_storage::fuzzing::inputs;

use outpost_storage::codec::encode_samples;
use outpost_sync::fuzzing::{compressed_body, decode_body, decode_frames, FUZZ_KEY};
use outpost_sync::{
    Ack, AckStatus, Batch, BatchBody, BatchHeader, DeviceKey, LiveSamples, SeriesDef,
};

/// The fuzz targets' seeds and kept corpora.
const FUZZ_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz");

#[test]
fn frame_corpus_decodes_or_fails_cleanly() {
    for (name, bytes) in &inputs(Path::new(FUZZ_DIR), "frames", 3).unwrap() {
        let accepted = decode_frames(bytes, &FUZZ_KEY);
        if name.starts_with("valid-") {
            assert_eq!(accepted, 1, "{name}");
        }
    }
}

#[test]
fn body_corpus_decodes_or_fails_cleanly() {
    for (name, bytes) in &inputs(Path::new(FUZZ_DIR), "batch_body", 1).unwrap() {
        let decoded = decode_body(bytes);
        if name.starts_with("valid-") {
            assert!(decoded.unwrap() > 100, "{name}");
        }
    }
}

/// Ten-second batches of the host hour's first minute, as the outbox encodes them.
fn host_bodies() -> Vec<BatchBody> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/host/host-1h.prom.zst");
    let text =
        String::from_utf8(zstd::decode_all(std::fs::File::open(path).unwrap()).unwrap()).unwrap();
    let mut series: std::collections::BTreeMap<String, Vec<(i64, f64)>> = Default::default();
    let first_minute = text.lines().take(6_300).collect::<Vec<_>>().join("\n");
    for (name, ts, value) in outpost_storage::text::timestamped_samples(&first_minute) {
        series
            .entry(name.to_string())
            .or_default()
            .push((ts, value));
    }
    let start = series.values().flatten().map(|p| p.0).min().unwrap();
    (0..6)
        .map(|window| {
            let (from, to) = (start + window * 10_000, start + (window + 1) * 10_000);
            let mut body = BatchBody::default();
            for (id, (key, points)) in series.iter().enumerate() {
                let points: Vec<_> = points
                    .iter()
                    .filter(|p| (from..to).contains(&p.0))
                    .collect();
                let (t, v): (Vec<i64>, Vec<f64>) = points.into_iter().copied().unzip();
                body.defs.push(SeriesDef { id: id as u32, key });
                body.live.push(LiveSamples {
                    series: id as u32,
                    samples: &encode_samples(&t, &v),
                });
            }
            body
        })
        .collect()
}

#[test]
#[ignore = "writes the fuzzers' seeds from the real host data; run after a format change"]
fn write_seeds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let key = DeviceKey::new(FUZZ_KEY.to_vec()).unwrap();
    for (i, body) in host_bodies().into_iter().enumerate() {
        std::fs::write(
            root.join(format!("batch_body/valid-{i}")),
            compressed_body(&body),
        )
        .unwrap();
        let batch = Batch {
            header: BatchHeader {
                device: "fuzz".into(),
                epoch: 1,
                seq: i as u64 + 1,
                boot_id: "boot".into(),
                sent_wall_ms: 0,
                sent_uptime_ms: 0,
                oldest_unacked_ms: None,
                body_bytes: 0,
                clock_steps: vec![outpost_sync::ClockStep {
                    boot_id: "boot".into(),
                    from_ms: 0,
                    until_ms: 60_000,
                    delta_ms: 1_790_000_000_000,
                }],
            },
            body,
            version: outpost_sync::PROTOCOL_VERSION,
        };
        std::fs::write(
            root.join(format!("frames/valid-batch-{i}")),
            batch.encode(&key, 3),
        )
        .unwrap();
    }
    let ack = Ack {
        device: "fuzz".into(),
        epoch: 1,
        seq: 1,
        status: AckStatus::Stored {
            samples: 1,
            duplicate: false,
        },
    };
    std::fs::write(root.join("frames/valid-ack"), ack.encode(&key)).unwrap();
    let json = outpost_sync::sign_json(r#"{"device":"fuzz","state":"online"}"#, &key);
    std::fs::write(root.join("frames/valid-status"), json).unwrap();
}
