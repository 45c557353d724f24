//! The hub's own keys in its store's state tables, and the check that no two owners of keys in
//! one table (the hub's, the ingestor's, the alert engine's, the alert runtime's) can meet.

use std::fmt;

use outpost_storage::{StateKey, StateTable};

/// The registry and the silences sent as commands, in `DeviceRegistry` (beside the ingestor's
/// keys, `outpost_sync::state_keys::IngestKey`).
#[derive(Debug, Clone, Copy)]
pub enum RegistryKey<'a> {
    /// The names of the devices with a record.
    Index,
    /// A device's record.
    Device(&'a str),
    /// A command waiting for its device, by number.
    Command { device: &'a str, id: u64 },
    /// Every command of a device.
    Commands(&'a str),
    /// The last command number given to a device.
    CommandCounter(&'a str),
    /// A silence the hub made (`hub/silences.rs`), by id.
    Silence(&'a str),
    /// Every silence the hub made.
    Silences,
    /// The last silence number given.
    SilenceCounter,
    /// An operator's note on a probe outage: device, probe and the outage's start.
    OutageNote(&'a str, &'a str, i64),
    /// Every outage note.
    OutageNotes,
    /// A board (`outpost_web::boards`), by name.
    Board(&'a str),
    /// Every board.
    Boards,
    /// The number of a device's first kept log line not yet taken by Loki (`hub/loki.rs`).
    LokiSent(&'a str),
}

impl fmt::Display for RegistryKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegistryKey::Index => f.write_str("devices"),
            RegistryKey::Device(device) => write!(f, "device/{device}"),
            RegistryKey::Command { device, id } => write!(f, "cmd/{device}/{id:020}"),
            RegistryKey::Commands(device) => write!(f, "cmd/{device}/"),
            RegistryKey::CommandCounter(device) => write!(f, "cmd-id/{device}"),
            RegistryKey::Silence(id) => write!(f, "silence/{id}"),
            RegistryKey::Silences => f.write_str("silence/"),
            RegistryKey::SilenceCounter => f.write_str("silence-id"),
            // JSON: a probe's name may hold any character, `/` too.
            RegistryKey::OutageNote(device, probe, start) => write!(
                f,
                "outage-note/{}",
                serde_json::json!([device, probe, start])
            ),
            RegistryKey::OutageNotes => f.write_str("outage-note/"),
            RegistryKey::Board(name) => write!(f, "board/{name}"),
            RegistryKey::Boards => f.write_str("board/"),
            RegistryKey::LokiSent(device) => write!(f, "loki-sent/{device}"),
        }
    }
}

impl StateKey for RegistryKey<'_> {
    const TABLE: StateTable = StateTable::DeviceRegistry;
    const OWNED: &'static [&'static str] = &[
        "devices",
        "device/",
        "cmd/",
        "cmd-id/",
        "silence/",
        "silence-id",
        "outage-note/",
        "board/",
        "loki-sent/",
    ];
}

/// The fleet's alert history, in `AlertState` beside the hub's own alert engine.
#[derive(Debug, Clone, Copy)]
pub enum FleetHistoryKey {
    /// An entry, by arrival (so that keys sort in arrival order).
    Entry(u64),
    All,
}

impl fmt::Display for FleetHistoryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FleetHistoryKey::Entry(seq) => write!(f, "f/{seq:020}"),
            FleetHistoryKey::All => f.write_str("f/"),
        }
    }
}

impl StateKey for FleetHistoryKey {
    const TABLE: StateTable = StateTable::AlertState;
    const OWNED: &'static [&'static str] = &["f/"];
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerting::notify::ExecKey;
    use crate::alerting::runtime::LastCommandKey;
    use outpost::alert::engine::{EngineKey, QueueKey};
    use outpost::alert::schedule::SilenceKey;
    use outpost_sync::state_keys::{AgentKey, IngestKey};

    fn owner<K: StateKey>(
        name: &'static str,
    ) -> (StateTable, (&'static str, &'static [&'static str])) {
        (K::TABLE, (name, K::OWNED))
    }

    /// Every owner of keys in a table, the agent's and the hub's together: no two may have
    /// prefixes of which one starts the other.
    #[test]
    fn no_two_owners_of_state_keys_meet() {
        let owners = [
            owner::<AgentKey>("sync (agent)"),
            owner::<IngestKey>("ingest"),
            owner::<RegistryKey>("hub registry"),
            owner::<EngineKey>("alert engine"),
            owner::<SilenceKey>("silences"),
            owner::<ExecKey>("exec channel"),
            owner::<LastCommandKey>("alert runtime"),
            owner::<FleetHistoryKey>("fleet history"),
            owner::<super::super::firings::FiringKey>("alert firings"),
            owner::<QueueKey>("notification queues"),
            owner::<super::super::remote::DeadLetterKey>("remote storage dead letters"),
            owner::<crate::collect::logs::LogKey>("log files"),
            owner::<crate::collect::journal::JournalKey>("the journal"),
            owner::<crate::collect::kept::KeptKey>("kept log lines"),
        ];
        for table in StateTable::ALL {
            let in_table: Vec<_> = owners
                .iter()
                .filter(|(t, _)| *t == table)
                .map(|(_, owner)| *owner)
                .collect();
            let collisions = outpost_storage::colliding_prefixes(&in_table);
            assert!(collisions.is_empty(), "{table:?}: {collisions:?}");
        }
    }

    /// The strings are what stores already hold: they must not change.
    #[test]
    fn keys_are_spelled_as_stores_hold_them() {
        assert_eq!(RegistryKey::Device("d").to_string(), "device/d");
        let command = RegistryKey::Command { device: "d", id: 7 };
        assert_eq!(command.to_string(), "cmd/d/00000000000000000007");
        assert!(command
            .to_string()
            .starts_with(&RegistryKey::Commands("d").to_string()));
        assert_eq!(RegistryKey::CommandCounter("d").to_string(), "cmd-id/d");
        assert_eq!(RegistryKey::Silence("hub-9").to_string(), "silence/hub-9");
        assert!(RegistryKey::Silence("hub-9")
            .to_string()
            .starts_with(&RegistryKey::Silences.to_string()));
        assert_eq!(
            FleetHistoryKey::Entry(3).to_string(),
            "f/00000000000000000003"
        );
    }
}
