//! The store's error types: one for decoding bytes, one for everything the store does.

use std::path::PathBuf;

/// Why a byte sequence (a stored chunk, a log frame) could not be decoded.
///
/// Decoders return this for any input, however hostile; they never panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("input ends {needed} bytes early")]
    Truncated { needed: usize },
    #[error("varint longer than 10 bytes")]
    VarintOverflow,
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum { stored: u32, computed: u32 },
    #[error("unknown {what} tag {tag}")]
    UnknownTag { what: &'static str, tag: u8 },
    #[error("{what} count {count} exceeds the limit of {limit}")]
    TooLarge {
        what: &'static str,
        count: u64,
        limit: u64,
    },
    #[error("{0}")]
    Invalid(&'static str),
    #[error("zstd: {0}")]
    Zstd(String),
    #[error("{extra} bytes left after the end of the data")]
    TrailingBytes { extra: usize },
}

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "store {path} is already open in another process (an agent or hub running on it?); \
         stop it, or query the running process over its HTTP API"
    )]
    Locked { path: PathBuf },
    #[error(
        "store {path} has format version {found}, but this Outpost reads versions up to {supported}; \
         use a newer Outpost"
    )]
    FormatTooNew {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("{path} is not an Outpost store: {reason}")]
    NotAStore { path: PathBuf, reason: String },
    #[error(
        "the store refuses writes since {cause}; {}",
        if *heals {
            "it tries again by itself and resumes once the disk works, keeping everything it accepted before"
        } else {
            "restart the process once the file is repaired"
        }
    )]
    Poisoned { cause: String, heals: bool },
    // Each cause is in the message and is not also the error's `source()`, so that a chain
    // printed whole (anyhow's `{:#}`) says it once.
    #[error("corrupt {what} for series {series}: {cause}")]
    CorruptChunk {
        what: &'static str,
        series: String,
        cause: DecodeError,
    },
    #[error("corrupt write-ahead log {path}: {reason}")]
    CorruptLog { path: PathBuf, reason: String },
    #[error("invalid selector {selector:?}: {reason}")]
    Selector { selector: String, reason: String },
    #[error("invalid series key {key:?}: {reason}")]
    SeriesKey { key: String, reason: String },
    #[error("invalid option {name}: {reason}")]
    Option { name: &'static str, reason: String },
    #[error("{0}")]
    Duration(String),
    #[error("unknown series id {0}")]
    UnknownSeries(u32),
    #[error("the store is closed")]
    Closed,
    #[error("store {path} is damaged: {detail}")]
    Damaged { path: PathBuf, detail: String },
    #[error("the store is open read-only")]
    ReadOnly,
    #[error("I/O on {path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("redb: {0}")]
    Redb(redb::Error),
}

impl From<redb::Error> for Error {
    fn from(e: redb::Error) -> Self {
        Error::Redb(e)
    }
}

/// redb's narrower errors, each through `redb::Error`.
macro_rules! from_redb {
    ($($kind:ty),*) => {
        $(impl From<$kind> for Error {
            fn from(e: $kind) -> Self {
                Error::Redb(e.into())
            }
        })*
    };
}

from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::CompactionError
);

/// The store's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
