//! The hub's TOML configuration: what `outpost hub --config FILE` reads. Every key has a
//! default (`config/hub.toml` spells them out, and a test keeps the two equal); unknown keys
//! are errors, and values are checked at load with messages that name the key.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::config_values::{ByteSize, ConfigFile, Interval};

pub const DEFAULT_CONFIG: &str = include_str!("../../config/hub.toml");

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct HubConfig {
    pub hub: HubSection,
    pub store: HubStoreSection,
    pub mqtt: HubMqttSection,
    /// Alert rules over the hub's view of each device (`config/hub-rules.toml` built in), and
    /// their channels: the same keys as the agent's `[alerts]`.
    pub alerts: crate::alerting::config::AlertsSection,
    /// The dashboard and API: bounds, users and tokens.
    pub web: outpost_web::WebConfig,
    /// The fleet's samples in another engine (Prometheus remote_write) instead of this store.
    pub remote_write: super::remote::RemoteWriteSection,
    /// The devices' kept log lines forwarded to Loki's push API.
    pub loki: super::loki::LokiSection,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HubSection {
    pub listen: SocketAddr,
    pub fleet: String,
    pub devices_file: PathBuf,
    /// A device that sends nothing for this long is offline, last will or not.
    pub offline_after: Interval,
    /// A connected device whose last batch is older than this is stale.
    pub stale_after: Interval,
}

impl Default for HubSection {
    fn default() -> Self {
        HubSection {
            listen: SocketAddr::from(([127, 0, 0, 1], 9820)),
            fleet: "default".into(),
            devices_file: PathBuf::from("outpost-devices.toml"),
            offline_after: Interval::secs(120),
            stale_after: Interval::secs(30),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HubStoreSection {
    pub path: PathBuf,
    pub budget: ByteSize,
}

impl Default for HubStoreSection {
    fn default() -> Self {
        HubStoreSection {
            path: PathBuf::from("outpost-hub.redb"),
            budget: ByteSize(16 << 30),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HubMqttSection {
    /// Run the embedded broker; off to use `url`.
    pub embedded: bool,
    /// Where the embedded broker listens.
    pub listen: SocketAddr,
    /// An external broker (`embedded = false`): `mqtt://host:port` or `mqtts://`.
    pub url: String,
    /// The hub's own login on an external broker.
    pub username: String,
    pub password_file: PathBuf,
    /// For `mqtts://`: the broker's CA (else the system's roots), and the hub's client
    /// certificate and key when the broker asks for one.
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub client_key_file: PathBuf,
    /// Subscribe as `$share/<group>/...`, so that several hubs split one fleet's batches.
    pub shared_group: String,
    /// The largest MQTT packet the broker and the hub accept.
    pub max_packet: ByteSize,
}

impl Default for HubMqttSection {
    fn default() -> Self {
        HubMqttSection {
            embedded: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 1883)),
            url: String::new(),
            username: String::new(),
            password_file: PathBuf::new(),
            ca_file: PathBuf::new(),
            cert_file: PathBuf::new(),
            client_key_file: PathBuf::new(),
            shared_group: String::new(),
            max_packet: ByteSize(1 << 20),
        }
    }
}

impl ConfigFile for HubConfig {
    fn validate(&self) -> Result<()> {
        outpost_sync::topic::check_id("fleet", &self.hub.fleet).context("hub.fleet")?;
        if self.hub.offline_after.0.as_secs() < 1 {
            bail!("hub.offline_after: must be at least 1s");
        }
        if self.store.budget.0 < 4 << 20 {
            bail!("store.budget: must be at least 4MiB");
        }
        if !self.mqtt.embedded {
            crate::netaddr::MqttUrl::parse(&self.mqtt.url)
                .context("mqtt.url (needed when mqtt.embedded = false)")?;
        }
        if self.mqtt.max_packet.0 < 64 << 10 {
            bail!(
                "mqtt.max_packet: must be at least 64KiB (agents send 128KiB batches by default)"
            );
        }
        if !self.mqtt.shared_group.is_empty() {
            outpost_sync::topic::check_id("shared group", &self.mqtt.shared_group)
                .context("mqtt.shared_group")?;
        }
        if self.hub.stale_after.0.as_secs() < 1 {
            bail!("hub.stale_after: must be at least 1s");
        }
        self.alerts.validate()?;
        super::routing::Router::from_config(&self.alerts)?;
        self.remote_write.validate()?;
        self.loki.validate()?;
        self.web
            .validate(self.hub.listen.ip().is_loopback())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_default_config_is_the_default() {
        assert_eq!(
            HubConfig::parse(DEFAULT_CONFIG).unwrap(),
            HubConfig::default()
        );
        assert_eq!(HubConfig::parse("").unwrap(), HubConfig::default());
    }

    #[test]
    fn errors_name_the_key() {
        let error = format!(
            "{:#}",
            HubConfig::parse("[hub]\nflet = \"x\"\n").unwrap_err()
        );
        assert!(error.contains("flet"), "{error}");
        let error = format!(
            "{:#}",
            HubConfig::parse("[mqtt]\nembedded = false\n").unwrap_err()
        );
        assert!(error.contains("mqtt.url"), "{error}");
        let error = format!(
            "{:#}",
            HubConfig::parse("[hub]\nfleet = \"a/b\"\n").unwrap_err()
        );
        assert!(error.contains("hub.fleet"), "{error}");
    }
}
