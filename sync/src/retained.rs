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
    pub device: String,
    /// The module, from the device tree (`NVIDIA Jetson Orin Nano Developer Kit`), or the host's
    /// product name.
    pub model: Option<String>,
    pub l4t: Option<String>,
    pub jetpack: Option<String>,
    pub agent_version: String,
    pub protocol: u16,
    pub boot_id: String,
    /// How many series the device's store holds, and the metric names among them (the
    /// catalogue; the full series keys travel with the batches that first use them).
    pub series: u64,
    pub metrics: Vec<String>,
}
