use thiserror::Error;

/// Why a message was refused. Every decoder of untrusted bytes in this crate returns one of these
/// rather than panicking, and the hub counts them per device.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum Error {
    #[error("not an Outpost message (bad magic or message kind)")]
    NotOutpost,
    #[error("message is {len} bytes, over the limit of {limit}")]
    TooLarge { len: usize, limit: usize },
    #[error("message is truncated ({0})")]
    Truncated(&'static str),
    #[error("protocol version {found} is not supported (supported: {supported:?})")]
    UnsupportedVersion { found: u16, supported: Vec<u16> },
    #[error("bad signature: the message was not signed with this device's key")]
    BadSignature,
    #[error("malformed {what}: {reason}")]
    Malformed { what: &'static str, reason: String },
    #[error("body decompresses to more than {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("the message names device {payload:?} but was published on device {topic:?}'s topic")]
    DeviceMismatch { topic: String, payload: String },
    #[error("{what} {value:?} is not allowed: {reason}")]
    BadName {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("batch has {count} {what}, over the limit of {limit}")]
    OverLimit {
        what: &'static str,
        count: usize,
        limit: usize,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
