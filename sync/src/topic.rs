//! The topic layout: everything lives under `outpost/v1/<fleet>/<device>/`.

use crate::error::{Error, Result};

/// The first levels of every Outpost topic.
pub const ROOT: &str = "outpost/v1";

/// What a topic under a device carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Device to hub: metric batches, QoS 1.
    Batch,
    /// Hub to device: acknowledgements of stored batches.
    Ack,
    /// Retained `online`/`offline`; the `offline` one is the last will.
    Status,
    /// Retained device metadata.
    Meta,
    /// Hub to device: signed commands (silences).
    Cmd,
}

impl Kind {
    pub const ALL: [Kind; 5] = [Kind::Batch, Kind::Ack, Kind::Status, Kind::Meta, Kind::Cmd];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Batch => "batch",
            Kind::Ack => "ack",
            Kind::Status => "status",
            Kind::Meta => "meta",
            Kind::Cmd => "cmd",
        }
    }
}

/// Checks a fleet or device id: 1 to 64 of `A-Z a-z 0-9 _ - .`, so that it is one topic level,
/// never a wildcard, and safe in file names and URLs.
pub fn check_id(what: &'static str, id: &str) -> Result<()> {
    let bad = |reason| Error::BadName {
        what,
        value: id.chars().take(80).collect(),
        reason,
    };
    if id.is_empty() || id.len() > 64 {
        return Err(bad("it must be 1 to 64 characters long"));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return Err(bad("only letters, digits, '_', '-' and '.' are allowed"));
    }
    if id.starts_with('.') {
        return Err(bad("it must not start with '.'"));
    }
    Ok(())
}

/// The topics of one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceTopics {
    pub fleet: String,
    pub device: String,
}

impl DeviceTopics {
    pub fn new(fleet: &str, device: &str) -> Result<Self> {
        check_id("fleet", fleet)?;
        check_id("device", device)?;
        Ok(DeviceTopics {
            fleet: fleet.to_string(),
            device: device.to_string(),
        })
    }

    pub fn topic(&self, kind: Kind) -> String {
        format!("{ROOT}/{}/{}/{}", self.fleet, self.device, kind.as_str())
    }

    /// Where the alert engine keeps an alert's retained state.
    pub fn alert(&self, rule: &str, instance: &str) -> String {
        format!(
            "{ROOT}/{}/{}/alerts/{rule}/{instance}",
            self.fleet, self.device
        )
    }
}

/// The filter a hub subscribes with for one kind of topic of the whole fleet. With a group, it
/// is an MQTT shared subscription (`$share/<group>/...`), so that several hub processes can split
/// one fleet's batches between them.
pub fn fleet_filter(fleet: &str, kind: Kind, shared_group: Option<&str>) -> String {
    let filter = format!("{ROOT}/{fleet}/+/{}", kind.as_str());
    match shared_group {
        Some(group) => format!("$share/{group}/{filter}"),
        None => filter,
    }
}

/// Splits `outpost/v1/<fleet>/<device>/<kind>` into its parts; `None` for anything else.
pub fn parse(topic: &str) -> Option<(&str, &str, Kind)> {
    let rest = topic.strip_prefix(ROOT)?.strip_prefix('/')?;
    let mut parts = rest.split('/');
    let (fleet, device, kind) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some()
        || check_id("fleet", fleet).is_err()
        || check_id("device", device).is_err()
    {
        return None;
    }
    let kind = Kind::ALL.into_iter().find(|k| k.as_str() == kind)?;
    Some((fleet, device, kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_round_trip_and_refuse_wildcards() {
        let topics = DeviceTopics::new("lab", "orin-nano-01").unwrap();
        for kind in Kind::ALL {
            let topic = topics.topic(kind);
            assert_eq!(parse(&topic), Some(("lab", "orin-nano-01", kind)));
        }
        assert!(DeviceTopics::new("lab", "a/b").is_err());
        assert!(DeviceTopics::new("lab", "+").is_err());
        assert!(DeviceTopics::new("#", "x").is_err());
        assert!(DeviceTopics::new("lab", "").is_err());
        assert!(DeviceTopics::new("lab", &"x".repeat(65)).is_err());
        assert_eq!(parse("outpost/v1/lab/dev/batch/extra"), None);
        assert_eq!(parse("outpost/v1/lab/dev/unknown"), None);
        assert_eq!(parse("other/v1/lab/dev/batch"), None);
        assert_eq!(
            fleet_filter("lab", Kind::Batch, Some("hubs")),
            "$share/hubs/outpost/v1/lab/+/batch"
        );
    }
}
