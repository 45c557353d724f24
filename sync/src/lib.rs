//! The MQTT batch protocol between Outpost agents and the hub: topics, the signed binary
//! messages (batches, acks, commands) and the retained JSON ones (status, meta).
//!
//! The protocol is specified in `sync/PROTOCOL.md`. The messages (`message.rs`), topics, the
//! outbox and the hub's ingest know nothing of the network or of redb: they turn values into
//! payloads and back against a [`outpost_storage::Store`], and refuse anything that does not
//! authenticate or decode, with an [`Error`] and never a panic (its decoders are fuzzed). The
//! network lives in one module, `uplink.rs`, the agent's MQTT client (rumqttc). Samples
//! travel in the store's own encodings ([`outpost_storage::codec`]), live runs as chunk bodies
//! and backfill as the sealed chunks themselves.
//!
//! ```
//! use outpost_sync::{
//!     Batch, BatchBody, BatchHeader, DeviceKey, Limits, LiveSamples, SeriesDef, PROTOCOL_VERSION,
//! };
//! let key = DeviceKey::new(vec![7; 32]).unwrap();
//! let batch = Batch {
//!     header: BatchHeader {
//!         device: "orin-01".into(), epoch: 3, seq: 17, boot_id: "b0".into(),
//!         sent_wall_ms: 1_700_000_000_000, sent_uptime_ms: 60_000,
//!         oldest_unacked_ms: None, body_bytes: 0, clock_steps: vec![],
//!     },
//!     body: BatchBody {
//!         defs: [SeriesDef { id: 0, key: r#"cpu{core="0"}"# }].into_iter().collect(),
//!         live: [LiveSamples {
//!             series: 0,
//!             samples: &outpost_storage::codec::encode_samples(&[1_700_000_000_000], &[0.5]),
//!         }]
//!         .into_iter()
//!         .collect(),
//!         chunks: vec![],
//!         lines: vec![],
//!     },
//!     version: PROTOCOL_VERSION,
//! };
//! let payload = batch.encode(&key, 3);
//! let decoded = Batch::decode(&payload, "orin-01", &key, &Limits::default()).unwrap();
//! assert_eq!(decoded.body, batch.body);
//! let other = DeviceKey::new(vec![8; 32]).unwrap();
//! assert!(Batch::decode(&payload, "orin-01", &other, &Limits::default()).is_err());
//! ```

pub mod clock;
mod error;
pub mod ingest;
pub mod lines;
mod message;
pub mod outbox;
mod retained;
pub mod state_keys;
pub mod topic;
pub mod uplink;

pub use error::{Error, Result};
pub use message::{
    claimed_version, sign_json, verify_json, Ack, AckStatus, Action, Batch, BatchBody, BatchHeader,
    ClockStep, Command, DeviceKey, Direction, FrameKind, HubToDevice, Limits, LiveRuns,
    LiveRunsIter, LiveSamples, LogLine, MatchOp, Matcher, SeriesDef, SeriesDefs, SeriesDefsIter,
    Silence, StoredChunk, PROTOCOL_VERSION, SUPPORTED_VERSIONS,
};
pub use retained::{Meta, State, Status, StatusOrder, StatusVerdict};

/// Entry points for the fuzz targets in `sync/fuzz` and the tests that replay their corpus.
#[doc(hidden)]
pub mod fuzzing {
    use crate::message::{Ack, Batch, BatchBody, Command, DeviceKey, HubToDevice, Limits};

    /// The key the seeds are signed with.
    pub const FUZZ_KEY: [u8; 32] = [7; 32];

    /// Every decoder of a topic's payload; how many accepted it.
    pub fn decode_frames(bytes: &[u8], key: &[u8; 32]) -> usize {
        let key = DeviceKey::new(key.to_vec()).expect("32 bytes");
        let limits = Limits::default();
        let _ = Batch::peek_header(bytes, &limits);
        let _ = crate::claimed_version(bytes);
        let text = String::from_utf8_lossy(bytes);
        [
            Batch::decode(bytes, "fuzz", &key, &limits).is_ok(),
            Ack::decode(bytes, "fuzz", &key).is_ok(),
            Command::decode(bytes, "fuzz", &key).is_ok(),
            crate::verify_json(&text, &key).is_ok(),
        ]
        .into_iter()
        .filter(|ok| *ok)
        .count()
    }

    /// A zstd-compressed batch body as the hub decodes it after authentication: the body, then
    /// each live run and chunk with the store's decoders. Returns the samples and points read.
    pub fn decode_body(compressed: &[u8]) -> Result<usize, String> {
        let limit = Limits::default().max_body_bytes;
        let body = zstd::bulk::decompress(compressed, limit).map_err(|e| e.to_string())?;
        let body: BatchBody = postcard::from_bytes(&body).map_err(|e| e.to_string())?;
        let mut count = 0;
        for live in &body.live {
            if let Ok((t, _)) = outpost_storage::codec::decode_samples(live.samples) {
                count += t.len();
            }
        }
        for chunk in &body.chunks {
            count += match chunk.tier {
                0 => outpost_storage::codec::decode_chunk(&chunk.bytes).map_or(0, |(t, _)| t.len()),
                _ => outpost_storage::codec::decode_rollup_chunk(&chunk.bytes)
                    .map_or(0, |(b, _)| b.len()),
            };
        }
        Ok(count)
    }

    /// The body of an encoded batch, compressed, as [`decode_body`] takes it: seeds.
    pub fn compressed_body(body: &BatchBody) -> Vec<u8> {
        zstd::bulk::compress(&postcard::to_allocvec(body).expect("serializes"), 3)
            .expect("compresses")
    }
}
