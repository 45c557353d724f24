//! The retained JSON messages on `status` and `meta`, signed with [`crate::sign_json`].

use serde::{Deserialize, Serialize};

/// `status`: `online` when the agent connects, `offline` as its last will (or on a clean stop).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub device: String,
    pub state: State,
    pub boot_id: String,
    pub agent_version: String,
    pub protocol: u16,
    /// The device's wall clock when the message was made, ms since the epoch.
    pub at_ms: i64,
    /// Orders the statuses of one boot, so that the hub can refuse an old one sent again: twice
    /// the connection's number, plus one for `offline`. A connection's number is the
    /// milliseconds since boot when the agent set up that connection (its last will is fixed
    /// then), raised past the previous one: so `online` < its `offline` < the next `online`,
    /// across restarts of the agent too. Absent from agents before it was added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
}

impl Status {
    /// The sequence number of `state` on connection `connection`.
    pub fn seq_of(connection: u64, state: State) -> u64 {
        connection.saturating_mul(2) + u64::from(state == State::Offline)
    }
}

/// Boots remembered per device, to refuse their statuses later.
pub const EARLIER_BOOTS: usize = 16;
/// The longest boot id a status may name (Linux's are 36 characters): the hub remembers the
/// last [`EARLIER_BOOTS`] of them per device, and that must stay small.
pub const MAX_BOOT_ID: usize = 64;

/// Where one device's statuses stand at the hub: the boot and sequence number of the last one
/// taken, and the boots before it. A status is taken only if it is newer: a higher number in
/// the same boot, or a boot not seen before. So a status captured once and published again
/// later (by anyone who can publish on the device's topic) is refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusOrder {
    pub boot_id: Option<String>,
    pub seq: Option<u64>,
    #[serde(default)]
    pub earlier_boots: Vec<String>,
}

/// What to do with a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusVerdict {
    /// Newer than any before: take it.
    Take,
    /// The same status again (the broker redelivers retained messages on every subscription):
    /// nothing to do, and nothing wrong.
    Again,
    /// Older than one already taken.
    Replay(&'static str),
    /// Not a status this protocol writes.
    Malformed(&'static str),
}

impl StatusOrder {
    /// Judges `status` and, if it is taken, moves the order on.
    pub fn admit(&mut self, status: &Status) -> StatusVerdict {
        if status.boot_id.len() > MAX_BOOT_ID {
            return StatusVerdict::Malformed("a status whose boot id is longer than 64 bytes");
        }
        let Some(seq) = status.seq else {
            // An agent from before statuses were numbered; once the device numbers them, an
            // unnumbered one is an old message.
            if self.seq.is_some() {
                return StatusVerdict::Replay("a status without a sequence number (a replay)");
            }
            return StatusVerdict::Take;
        };
        if self.boot_id.as_deref() == Some(status.boot_id.as_str()) {
            return match self.seq {
                Some(last) if seq == last => StatusVerdict::Again,
                Some(last) if seq < last => StatusVerdict::Replay("an old status (a replay)"),
                _ => {
                    self.seq = Some(seq);
                    StatusVerdict::Take
                }
            };
        }
        if self.earlier_boots.contains(&status.boot_id) {
            return StatusVerdict::Replay("a status from an earlier boot (a replay)");
        }
        if let Some(previous) = self.boot_id.take() {
            if self.earlier_boots.len() >= EARLIER_BOOTS {
                self.earlier_boots.remove(0);
            }
            self.earlier_boots.push(previous);
        }
        self.boot_id = Some(status.boot_id.clone());
        self.seq = Some(seq);
        StatusVerdict::Take
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Online,
    Offline,
}

/// `meta`: what the device is, republished on every connect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// The device's enrolled name.
    pub device: String,
    /// The module, from the device tree (`NVIDIA Jetson Orin Nano Developer Kit`), or the host's
    /// product name.
    pub model: Option<String>,
    /// The L4T release (`36.4.3`), on a Jetson.
    pub l4t: Option<String>,
    /// The JetPack release that L4T release belongs to.
    pub jetpack: Option<String>,
    pub agent_version: String,
    /// The newest batch protocol version the agent speaks.
    pub protocol: u16,
    /// The boot this meta was sent in.
    pub boot_id: String,
    /// How many series the device's store holds, and the metric names among them (the
    /// catalogue; the full series keys travel with the batches that first use them).
    pub series: u64,
    pub metrics: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn status(boot: &str, connection: u64, state: State) -> Status {
        Status {
            device: "d".into(),
            state,
            boot_id: boot.into(),
            agent_version: "0".into(),
            protocol: crate::PROTOCOL_VERSION,
            at_ms: 0,
            seq: Some(Status::seq_of(connection, state)),
        }
    }

    #[test]
    fn newer_statuses_are_taken_and_older_ones_refused() {
        let mut order = StatusOrder::default();
        let (online, offline) = (
            status("b1", 100, State::Online),
            status("b1", 100, State::Offline),
        );
        assert_eq!(order.admit(&online), StatusVerdict::Take);
        // The broker hands the retained status again on every subscription.
        assert_eq!(order.admit(&online), StatusVerdict::Again);
        assert_eq!(order.admit(&offline), StatusVerdict::Take);
        assert!(matches!(order.admit(&online), StatusVerdict::Replay(_)));
        // The next connection, and the next boot.
        assert_eq!(
            order.admit(&status("b1", 5_000, State::Online)),
            StatusVerdict::Take
        );
        assert_eq!(
            order.admit(&status("b2", 7, State::Online)),
            StatusVerdict::Take
        );
        // The first boot's statuses, however high their numbers, are over.
        assert!(matches!(
            order.admit(&status("b1", 9_000_000, State::Online)),
            StatusVerdict::Replay(_)
        ));
        // An agent that numbers its statuses cannot be followed by an unnumbered one.
        let mut unnumbered = status("b2", 8, State::Offline);
        unnumbered.seq = None;
        assert!(matches!(order.admit(&unnumbered), StatusVerdict::Replay(_)));
        // A boot id that is not one is refused, and remembered nowhere.
        let mut huge = status("b3", 1, State::Online);
        huge.boot_id = "x".repeat(MAX_BOOT_ID + 1);
        assert!(matches!(order.admit(&huge), StatusVerdict::Malformed(_)));
        assert!(!order.earlier_boots.contains(&huge.boot_id));
        // An older agent's, before any numbered one: taken.
        assert_eq!(
            StatusOrder::default().admit(&unnumbered),
            StatusVerdict::Take
        );
    }

    /// What an agent's life can do between two statuses.
    #[derive(Debug, Clone)]
    enum Life {
        /// The connection drops and comes back (the last will, then `online`).
        Reconnect,
        /// The agent stops cleanly and starts again in the same boot.
        Restart,
        /// The device reboots.
        Reboot,
    }

    /// The statuses a real agent sends over `lives`, in order, numbered as `uplink.rs` does.
    fn statuses(lives: &[(Life, u64)]) -> Vec<Status> {
        let (mut boot, mut uptime) = (0, 1_000u64);
        let mut connection = uptime;
        let mut out = vec![status("boot-0", connection, State::Online)];
        for (life, elapsed) in lives {
            out.push(status(&format!("boot-{boot}"), connection, State::Offline));
            match life {
                Life::Reboot => {
                    boot += 1;
                    uptime = *elapsed % 5_000;
                    connection = uptime;
                }
                Life::Reconnect | Life::Restart => {
                    uptime += elapsed;
                    connection = uptime.max(connection + 1);
                }
            }
            out.push(status(&format!("boot-{boot}"), connection, State::Online));
        }
        out
    }

    proptest! {
        /// Every status of a real agent's life is taken in order, and any earlier one sent
        /// again after a later one was taken is refused (or, if it is that same one, ignored).
        #[test]
        fn an_agents_statuses_are_taken_in_order_and_never_again(
            lives in prop::collection::vec(
                (prop_oneof![Just(Life::Reconnect), Just(Life::Restart), Just(Life::Reboot)], 0..100_000u64),
                0..40,
            ),
            replays in prop::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>()), 1..20),
        ) {
            let sent = statuses(&lives);
            prop_assume!(sent.iter().map(|s| &s.boot_id).collect::<std::collections::BTreeSet<_>>().len() <= EARLIER_BOOTS);
            let mut order = StatusOrder::default();
            for status in &sent {
                prop_assert_eq!(order.admit(status), StatusVerdict::Take, "{:?}", status);
            }
            for (later, earlier) in replays {
                let later = later.index(sent.len());
                let earlier = earlier.index(later + 1);
                let mut order = StatusOrder::default();
                for status in &sent[..=later] {
                    order.admit(status);
                }
                let verdict = order.admit(&sent[earlier]);
                if earlier == later {
                    prop_assert_eq!(verdict, StatusVerdict::Again);
                } else {
                    prop_assert!(matches!(verdict, StatusVerdict::Replay(_)), "{:?}", verdict);
                }
            }
        }
    }
}
