//! The MQTT batch protocol between Outpost agents and the hub: topics, the signed binary
//! messages (batches, acks, commands) and the retained JSON ones (status, meta).
//!
//! The protocol is specified in `sync/PROTOCOL.md`. This crate knows nothing of the network or
//! of redb: it turns values into payloads and back, and refuses anything that does not
//! authenticate or decode, with an [`Error`] and never a panic (its decoders are fuzzed). Samples
//! travel in the store's own encodings ([`outpost_storage::codec`]), live runs as chunk bodies
//! and backfill as the sealed chunks themselves.
//!
//! ```
//! use outpost_sync::{Batch, BatchBody, BatchHeader, DeviceKey, Limits, LiveSamples, SeriesDef};
//! let key = DeviceKey::new(vec![7; 32]).unwrap();
//! let batch = Batch {
//!     header: BatchHeader {
//!         device: "orin-01".into(), epoch: 3, seq: 17, boot_id: "b0".into(),
//!         sent_wall_ms: 1_700_000_000_000, sent_uptime_ms: 60_000,
//!         oldest_unacked_ms: None, body_bytes: 0,
//!     },
//!     body: BatchBody {
//!         defs: vec![SeriesDef { id: 0, key: r#"cpu{core="0"}"#.into() }],
//!         live: vec![LiveSamples {
//!             series: 0,
//!             samples: outpost_storage::codec::encode_samples(&[1_700_000_000_000], &[0.5]),
//!         }],
//!         chunks: vec![],
//!     },
//! };
//! let payload = batch.encode(&key, 3);
//! let decoded = Batch::decode(&payload, "orin-01", &key, &Limits::default()).unwrap();
//! assert_eq!(decoded.body, batch.body);
//! let other = DeviceKey::new(vec![8; 32]).unwrap();
//! assert!(Batch::decode(&payload, "orin-01", &other, &Limits::default()).is_err());
//! ```

mod error;
pub mod ingest;
mod message;
pub mod outbox;
mod retained;
pub mod topic;
pub mod uplink;

pub use error::{Error, Result};
pub use message::{
    claimed_version, sign_json, verify_json, Ack, AckStatus, Action, Batch, BatchBody, BatchHeader,
    Command, DeviceKey, Direction, Limits, LiveSamples, MatchOp, Matcher, SeriesDef, Silence,
    StoredChunk, PROTOCOL_VERSION, SUPPORTED_VERSIONS,
};
pub use retained::{Meta, State, Status};
