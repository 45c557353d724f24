//! The keys the sync layer keeps in the stores' state tables, each kind of entry in one place.

use std::fmt;

use outpost_storage::{StateKey, StateTable};

/// The agent's side, in its store's `SyncCursor` table (which it owns alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentKey {
    /// The outbox's epoch (`outbox.rs`).
    Epoch,
    /// The record of the clock's steps (`clock.rs`).
    Clock,
    /// Bytes published today (`uplink.rs`).
    DailyBytes,
    /// The number of the last kept log line the hub has acknowledged (`outbox.rs`).
    LinesShipped,
}

impl fmt::Display for AgentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AgentKey::Epoch => "epoch",
            AgentKey::Clock => "clock",
            AgentKey::DailyBytes => "daily_bytes",
            AgentKey::LinesShipped => "kept_shipped",
        })
    }
}

impl StateKey for AgentKey {
    const TABLE: StateTable = StateTable::SyncCursor;
    const OWNED: &'static [&'static str] = &["epoch", "clock", "daily_bytes", "kept_shipped"];
}

/// The agent's kept log lines, in its store's `SyncCursor` table, as JSON of
/// [`crate::LogLine`]: the log collectors write them, the outbox ships them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeptKey {
    /// A line, by its number.
    Line(u64),
    /// Every line.
    All,
}

impl fmt::Display for KeptKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeptKey::Line(seq) => write!(f, "kept/{seq:020}"),
            KeptKey::All => f.write_str("kept/"),
        }
    }
}

impl StateKey for KeptKey {
    const TABLE: StateTable = StateTable::SyncCursor;
    const OWNED: &'static [&'static str] = &["kept/"];
}

/// The ingestor's bookkeeping per device, in the hub store's `DeviceRegistry` table, beside
/// the hub's registry and commands (their keys are the hub's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestKey<'a> {
    /// A device's series id and the hub's key for it.
    Series { device: &'a str, id: u32 },
    /// The sequence numbers seen of one epoch of a device.
    Seen { device: &'a str, epoch: u64 },
    /// A device's clock frames.
    Clock { device: &'a str },
    /// A log line a device kept and sent, by its number.
    Line { device: &'a str, seq: u64 },
    /// Every log line of a device.
    Lines { device: &'a str },
    /// How the hub numbers a device's lines in the current life of its store (`lines.rs`).
    LineNumbering { device: &'a str },
}

impl fmt::Display for IngestKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IngestKey::Series { device, id } => write!(f, "series/{device}/{id}"),
            IngestKey::Seen { device, epoch } => write!(f, "seq/{device}/{epoch}"),
            IngestKey::Clock { device } => write!(f, "clock/{device}"),
            IngestKey::Line { device, seq } => write!(f, "lines/{device}/{seq:020}"),
            IngestKey::Lines { device } => write!(f, "lines/{device}/"),
            IngestKey::LineNumbering { device } => write!(f, "line-numbering/{device}"),
        }
    }
}

impl StateKey for IngestKey<'_> {
    const TABLE: StateTable = StateTable::DeviceRegistry;
    const OWNED: &'static [&'static str] =
        &["series/", "seq/", "clock/", "lines/", "line-numbering/"];
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The strings are what stores already hold: they must not change.
    #[test]
    fn keys_are_spelled_as_stores_hold_them() {
        assert_eq!(AgentKey::DailyBytes.to_string(), "daily_bytes");
        let device = "dev-1";
        assert_eq!(
            IngestKey::Series { device, id: 7 }.to_string(),
            "series/dev-1/7"
        );
        assert_eq!(
            IngestKey::Seen { device, epoch: 2 }.to_string(),
            "seq/dev-1/2"
        );
        assert_eq!(IngestKey::Clock { device }.to_string(), "clock/dev-1");
        assert_eq!(KeptKey::Line(3).to_string(), "kept/00000000000000000003");
        assert_eq!(
            IngestKey::Line { device, seq: 3 }.to_string(),
            "lines/dev-1/00000000000000000003"
        );
        for key in [
            AgentKey::Epoch,
            AgentKey::Clock,
            AgentKey::DailyBytes,
            AgentKey::LinesShipped,
        ] {
            assert!(AgentKey::OWNED.contains(&key.to_string().as_str()));
        }
    }
}
