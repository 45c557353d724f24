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
}

impl fmt::Display for AgentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AgentKey::Epoch => "epoch",
            AgentKey::Clock => "clock",
            AgentKey::DailyBytes => "daily_bytes",
        })
    }
}

impl StateKey for AgentKey {
    const TABLE: StateTable = StateTable::SyncCursor;
    const OWNED: &'static [&'static str] = &["epoch", "clock", "daily_bytes"];
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
}

impl fmt::Display for IngestKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IngestKey::Series { device, id } => write!(f, "series/{device}/{id}"),
            IngestKey::Seen { device, epoch } => write!(f, "seq/{device}/{epoch}"),
            IngestKey::Clock { device } => write!(f, "clock/{device}"),
        }
    }
}

impl StateKey for IngestKey<'_> {
    const TABLE: StateTable = StateTable::DeviceRegistry;
    const OWNED: &'static [&'static str] = &["series/", "seq/", "clock/"];
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
        for key in [AgentKey::Epoch, AgentKey::Clock, AgentKey::DailyBytes] {
            assert!(AgentKey::OWNED.contains(&key.to_string().as_str()));
        }
    }
}
