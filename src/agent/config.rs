//! The agent's TOML configuration: what `outpost agent --config FILE` reads.
//!
//! Every key has a default, so an empty file is a working config; `config/agent.toml` spells the
//! defaults out and a test keeps the two equal. Unknown keys are errors (a typo must not silently
//! turn a collector off), and values are checked at load with messages that name the key.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::alerting::config::AlertsSection;
use crate::collect::containers::ContainersSection;
use crate::collect::host::HostSection;
use crate::collect::logs::LogsSection;
use crate::collect::probes::{ProbeCheck, ProbeConfig};
use crate::collect::processes::ProcessesSection;
use crate::config_values::{ByteSize, ConfigFile, Interval, Toggle};

/// The commented default config, printed by `outpost agent --print-default-config`.
pub const DEFAULT_CONFIG: &str = include_str!("../../config/agent.toml");

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    pub agent: AgentSection,
    pub store: StoreSection,
    pub host: HostSection,
    pub tegrastats: TegrastatsSection,
    pub jetson: JetsonSection,
    pub nvml: NvmlSection,
    pub containers: ContainersSection,
    pub processes: ProcessesSection,
    pub logs: LogsSection,
    pub import: ImportSection,
    pub mqtt: MqttSection,
    pub alerts: AlertsSection,
    #[serde(rename = "scrape")]
    pub scrapes: Vec<ScrapeConfig>,
    #[serde(rename = "probe")]
    pub probes: Vec<ProbeConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentSection {
    /// Where `/metrics`, `/api/health`, the store queries and the import endpoint are served.
    pub listen: SocketAddr,
    /// How often the agent's own metrics are recorded.
    pub self_interval: Interval,
    /// Bearer tokens for the API (their SHA-256, as `outpost hub token` prints them): with one,
    /// every request but `/api/health` needs one of them.
    pub tokens: Vec<AgentToken>,
    /// Serve a non-loopback address without tokens: anyone who reaches it reads everything, but
    /// changes (silences) are still taken from loopback only.
    pub allow_unauthenticated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentToken {
    pub name: String,
    /// Lowercase hex SHA-256 of the token.
    pub sha256: String,
}

impl Default for AgentSection {
    fn default() -> Self {
        AgentSection {
            listen: SocketAddr::from(([127, 0, 0, 1], 9810)),
            self_interval: Interval::secs(10),
            tokens: Vec::new(),
            allow_unauthenticated: false,
        }
    }
}

impl AgentSection {
    /// An API open to the network must say who may use it.
    fn validate(&self) -> Result<()> {
        for (i, token) in self.tokens.iter().enumerate() {
            if token.sha256.len() != 64
                || !token
                    .sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                bail!("agent.tokens[{i}].sha256: expected 64 lowercase hex digits (the SHA-256 that `outpost hub token` prints)");
            }
        }
        if !self.listen.ip().is_loopback() && self.tokens.is_empty() && !self.allow_unauthenticated
        {
            bail!(
                "agent.listen: {} is reachable from other machines, and the API has no tokens: \
                 add [[agent.tokens]] (make one with `outpost hub token NAME`), or set \
                 agent.allow_unauthenticated = true to serve it open (changes stay loopback-only)",
                self.listen
            );
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    pub path: PathBuf,
    /// The most bytes the store's files may take; the oldest data goes first.
    pub budget: ByteSize,
    /// How often samples reach the write-ahead log: a crash of the agent loses at most this.
    pub flush_interval: Interval,
    /// How often the log is fsynced: a power cut loses at most this.
    pub sync_interval: Interval,
    /// How often samples are folded into compressed chunks. Longer writes less to flash and
    /// holds more in memory.
    pub seal_interval: Interval,
    /// A seal also happens when this many samples wait in memory.
    pub max_head_samples: usize,
    /// redb's page cache.
    pub cache: ByteSize,
}

impl Default for StoreSection {
    fn default() -> Self {
        StoreSection {
            path: PathBuf::from("outpost-agent.redb"),
            budget: ByteSize(1 << 30),
            flush_interval: Interval::secs(5),
            sync_interval: Interval::secs(30),
            seal_interval: Interval::secs(900),
            max_head_samples: 300_000,
            cache: ByteSize(2 << 20),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TegrastatsSection {
    /// `auto` runs tegrastats when it is installed; `on` insists (and retries); `off` never.
    pub enabled: Toggle,
    pub path: PathBuf,
    pub interval: Interval,
    /// Replays a recorded log instead of running tegrastats (for tests, demos and bug reports).
    pub replay: Option<PathBuf>,
    /// Replay pace relative to the log's own: 1 is real time, 10 ten times faster, 0 as fast as
    /// the store takes it.
    pub replay_speed: f64,
}

impl Default for TegrastatsSection {
    fn default() -> Self {
        TegrastatsSection {
            enabled: Toggle::Auto,
            path: PathBuf::from("tegrastats"),
            interval: Interval::secs(1),
            replay: None,
            replay_speed: 1.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JetsonSection {
    /// `auto` reads the Jetson files in sysfs when the device tree says this is a Jetson.
    pub enabled: Toggle,
    pub interval: Interval,
    /// The file system root under which `/sys`, `/proc` and `/etc` are read (a copy of a
    /// device's files in tests, or the host's root from inside a container).
    pub root: PathBuf,
}

impl Default for JetsonSection {
    fn default() -> Self {
        JetsonSection {
            enabled: Toggle::Auto,
            interval: Interval::secs(5),
            root: PathBuf::from("/"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NvmlSection {
    /// `auto` uses NVML when the driver library loads; `on` logs an error when it does not.
    pub enabled: Toggle,
    pub interval: Interval,
    /// The NVML library; recent drivers install only the `.so.1` name.
    pub library: PathBuf,
}

impl Default for NvmlSection {
    fn default() -> Self {
        NvmlSection {
            enabled: Toggle::Auto,
            interval: Interval::secs(1),
            library: PathBuf::from("libnvidia-ml.so.1"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImportSection {
    /// Accept `POST /api/v1/import/prometheus`.
    pub enabled: bool,
    /// Accept imports from other hosts too (only loopback by default).
    pub allow_remote: bool,
    /// The most distinct series one source (client address, or `source` query parameter) may
    /// create; further new series are refused with 429 so a runaway label cannot fill the store.
    pub max_series_per_source: usize,
    /// The largest request body accepted.
    pub max_body: ByteSize,
}

impl Default for ImportSection {
    fn default() -> Self {
        ImportSection {
            enabled: true,
            allow_remote: false,
            max_series_per_source: 1000,
            max_body: ByteSize(4 << 20),
        }
    }
}

/// The connection to the hub: the sync protocol's settings (`outpost_sync::uplink`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttSection {
    pub enabled: bool,
    /// `mqtt://host:port`, or `mqtts://host:port` for TLS.
    pub url: String,
    pub fleet: String,
    /// Empty: this machine's id (`/etc/machine-id`).
    pub device: String,
    /// Empty: the device id.
    pub username: String,
    /// A file holding the broker password (readable by the agent's user only).
    pub password_file: PathBuf,
    /// The device's signing key, hex, as `outpost hub device add` wrote it (owner-only).
    pub key_file: PathBuf,
    /// For `mqtts://`: the CA that signed the broker's certificate (else the system's roots),
    /// and this device's client certificate and key, when the broker asks for one.
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub client_key_file: PathBuf,
    pub batch_interval: Interval,
    pub ack_timeout: Interval,
    pub max_batch: ByteSize,
    /// Bytes per second for batches on average; 0 for no cap.
    pub bandwidth: ByteSize,
    /// Bytes a UTC day for everything published (batches, alerts, status); past it, batches
    /// wait for the next day and alerts still go. 0 for no budget.
    pub daily_budget: ByteSize,
    /// Several hubs split the fleet's batches (the hubs' `[mqtt] shared_group`): every batch
    /// then carries its series' definitions, since the hub it reaches may not have seen the
    /// batches before it. Costs bytes on the wire; off for one hub.
    pub shared_hubs: bool,
}

impl Default for MqttSection {
    fn default() -> Self {
        MqttSection {
            enabled: false,
            url: "mqtt://127.0.0.1:1883".into(),
            fleet: "default".into(),
            device: String::new(),
            username: String::new(),
            password_file: PathBuf::new(),
            key_file: PathBuf::from("device.key"),
            ca_file: PathBuf::new(),
            cert_file: PathBuf::new(),
            client_key_file: PathBuf::new(),
            batch_interval: Interval::secs(10),
            ack_timeout: Interval::secs(30),
            max_batch: ByteSize(128 << 10),
            bandwidth: ByteSize(0),
            daily_budget: ByteSize(0),
            shared_hubs: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScrapeConfig {
    /// Names the source in `outpost_scrape_*` metrics and logs.
    pub name: String,
    /// `http://` or `https://` URL of a Prometheus text endpoint.
    pub url: String,
    #[serde(default = "default_scrape_interval")]
    pub interval: Interval,
    #[serde(default = "default_timeout")]
    pub timeout: Interval,
    /// The most series kept from one scrape; the rest are dropped and counted.
    #[serde(default = "default_scrape_series")]
    pub max_series: usize,
    /// Labels added to every scraped series.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

fn default_scrape_interval() -> Interval {
    Interval::secs(15)
}
fn default_timeout() -> Interval {
    Interval::secs(5)
}
fn default_scrape_series() -> usize {
    1000
}

impl ConfigFile for AgentConfig {
    fn validate(&self) -> Result<()> {
        self.agent.validate()?;
        self.validate_intervals()?;
        if self.store.sync_interval.0 < self.store.flush_interval.0 {
            bail!("store.sync_interval: must be at least store.flush_interval");
        }
        if self.store.seal_interval.0 < self.store.flush_interval.0 {
            bail!("store.seal_interval: must be at least store.flush_interval");
        }
        if self.store.budget.0 < 4 << 20 {
            bail!("store.budget: must be at least 4MiB");
        }
        if self.mqtt.enabled {
            crate::netaddr::MqttUrl::parse(&self.mqtt.url).context("mqtt.url")?;
            outpost_sync::topic::check_id("fleet", &self.mqtt.fleet).context("mqtt.fleet")?;
            if !self.mqtt.device.is_empty() {
                outpost_sync::topic::check_id("device", &self.mqtt.device)
                    .context("mqtt.device")?;
            }
            if self.mqtt.max_batch.0 < 4 << 10 || self.mqtt.max_batch.0 > 16 << 20 {
                bail!("mqtt.max_batch: must be between 4KiB and 16MiB");
            }
        }
        if self.containers.max_containers == 0 {
            bail!("containers.max_containers: must be at least 1 (set containers.enabled = false to record none)");
        }
        crate::collect::logs::compile(&self.logs)?;
        if self.processes.top > crate::collect::processes::MAX_TOP {
            bail!(
                "processes.top: at most {} (each process is a series)",
                crate::collect::processes::MAX_TOP
            );
        }
        if self.store.max_head_samples == 0 {
            bail!("store.max_head_samples: must be greater than zero");
        }
        if self.store.path.as_os_str().is_empty() {
            bail!("store.path: must not be empty");
        }
        if !(self.tegrastats.replay_speed >= 0.0 && self.tegrastats.replay_speed.is_finite()) {
            bail!("tegrastats.replay_speed: must be 0 (as fast as possible) or a positive factor");
        }
        self.alerts.validate()?;
        if !self.alerts.route.is_empty() {
            bail!(
                "alerts.route: routes are the hub's, for the devices' alerts; on a device, name \
                 channels in a rule's notify, or group with a channel's group_by"
            );
        }
        self.validate_scrapes_and_probes()
    }
}

impl AgentConfig {
    /// Every interval and timeout at least 100 ms: less would make the agent the load it measures.
    fn validate_intervals(&self) -> Result<()> {
        let mut intervals = vec![
            ("agent.self_interval".to_string(), self.agent.self_interval),
            ("store.flush_interval".into(), self.store.flush_interval),
            ("host.interval".into(), self.host.interval),
            ("host.textfile_interval".into(), self.host.textfile_interval),
            ("tegrastats.interval".into(), self.tegrastats.interval),
            ("jetson.interval".into(), self.jetson.interval),
            ("nvml.interval".into(), self.nvml.interval),
            ("containers.interval".into(), self.containers.interval),
            ("processes.interval".into(), self.processes.interval),
            ("logs.interval".into(), self.logs.interval),
            ("mqtt.batch_interval".into(), self.mqtt.batch_interval),
            ("mqtt.ack_timeout".into(), self.mqtt.ack_timeout),
        ];
        for (i, scrape) in self.scrapes.iter().enumerate() {
            intervals.push((format!("scrape[{i}].interval"), scrape.interval));
            intervals.push((format!("scrape[{i}].timeout"), scrape.timeout));
        }
        for (i, probe) in self.probes.iter().enumerate() {
            intervals.push((format!("probe[{i}].interval"), probe.interval));
            intervals.push((format!("probe[{i}].timeout"), probe.timeout));
        }
        for (key, interval) in intervals {
            if interval.0 < Duration::from_millis(100) {
                bail!("{key}: must be at least 100ms");
            }
        }
        Ok(())
    }

    /// Names unique among scrapes and probes, and each target one that can be reached.
    fn validate_scrapes_and_probes(&self) -> Result<()> {
        let mut names = std::collections::BTreeSet::new();
        for (i, scrape) in self.scrapes.iter().enumerate() {
            crate::http_client::Target::parse(&scrape.url)
                .with_context(|| format!("scrape[{i}].url"))?;
            if !names.insert(("scrape", scrape.name.as_str())) {
                bail!("scrape[{i}].name: {:?} is used twice", scrape.name);
            }
            for label in scrape.labels.keys() {
                if label == "instance" {
                    bail!("scrape[{i}].labels: `instance` is reserved (the hub sets it to the device id)");
                }
            }
        }
        for (i, probe) in self.probes.iter().enumerate() {
            if probe.name.is_empty() {
                bail!("probe[{i}].name: must not be empty");
            }
            if !names.insert(("probe", probe.name.as_str())) {
                bail!("probe[{i}].name: {:?} is used twice", probe.name);
            }
            if probe.failures_before_down == 0 {
                bail!("probe[{i}].failures_before_down: must be at least 1");
            }
            match &probe.check {
                ProbeCheck::Http {
                    url, body_pattern, ..
                } => {
                    crate::http_client::Target::parse(url)
                        .with_context(|| format!("probe[{i}].url"))?;
                    if let Some(pattern) = body_pattern {
                        regex::Regex::new(pattern)
                            .with_context(|| format!("probe[{i}].body_pattern"))?;
                    }
                }
                ProbeCheck::Tcp { address } if address.rsplit_once(':').is_none() => {
                    bail!("probe[{i}].address: {address:?} needs a port (host:port)");
                }
                ProbeCheck::Udp {
                    address,
                    payload,
                    payload_hex,
                    expect,
                } => {
                    if address.rsplit_once(':').is_none() {
                        bail!("probe[{i}].address: {address:?} needs a port (host:port)");
                    }
                    let bytes = crate::collect::probes::udp_payload(payload, payload_hex)
                        .with_context(|| format!("probe[{i}].payload_hex"))?;
                    if bytes.len() > 65_507 {
                        bail!(
                            "probe[{i}].payload: {} bytes, more than a datagram holds",
                            bytes.len()
                        );
                    }
                    if let Some(pattern) = expect {
                        regex::bytes::Regex::new(pattern)
                            .with_context(|| format!("probe[{i}].expect"))?;
                    }
                }
                ProbeCheck::Ping { count, .. } if *count == 0 || *count > 100 => {
                    bail!("probe[{i}].count: must be between 1 and 100");
                }
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_default_config_is_the_default() {
        let parsed = AgentConfig::parse(DEFAULT_CONFIG).unwrap();
        assert_eq!(parsed, AgentConfig::default());
        assert_eq!(AgentConfig::parse("").unwrap(), AgentConfig::default());
    }

    #[test]
    fn errors_name_the_key() {
        let error = |text: &str| format!("{:#}", AgentConfig::parse(text).unwrap_err());
        assert!(error("[host]\nintervl = \"1s\"").contains("intervl"));
        let e = error("[host]\ninterval = \"1x\"");
        assert!(e.contains("interval") && e.contains("unknown unit"), "{e}");
        assert!(error("[host]\ninterval = \"10ms\"").contains("host.interval"));
        assert!(error("[store]\nbudget = \"1MiB\"").contains("store.budget"));
        assert!(error("[tegrastats]\nenabled = \"maybe\"").contains("maybe"));
        let e = error("[[probe]]\nname = \"a\"\nkind = \"http\"\nurl = \"ftp://x\"");
        assert!(e.contains("probe[0].url"), "{e}");
        let e = error("[[probe]]\nname = \"a\"\nkind = \"tcp\"\naddress = \"x\"");
        assert!(e.contains("probe[0].address"), "{e}");
        let e = error("[[probe]]\nname = \"a\"\nkind = \"smtp\"");
        assert!(e.contains("smtp"), "{e}");
        let e =
            error("[[probe]]\nname = \"a\"\nkind = \"tcp\"\naddress = \"x:1\"\ntimout = \"1s\"");
        assert!(e.contains("timout"), "{e}");
        AgentConfig::parse(
            "[[probe]]\nname = \"a\"\nkind = \"tcp\"\naddress = \"x:1\"\ntimeout = \"1s\"",
        )
        .unwrap();
        let e =
            error("[[scrape]]\nname = \"a\"\nurl = \"http://x/\"\nlabels = { instance = \"y\" }");
        assert!(e.contains("scrape[0].labels"), "{e}");
    }

    #[test]
    fn sizes() {
        assert_eq!(ByteSize::parse("512").unwrap().0, 512);
        assert_eq!(ByteSize::parse("64MiB").unwrap().0, 64 << 20);
        assert!(ByteSize::parse("1GB").is_err());
        assert!(ByteSize::parse("99999999999TiB").is_err());
    }
}
