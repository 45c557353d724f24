//! Value types that the agent's and the hub's configs share: durations, sizes and three-way
//! switches, each read as people write them and refused with a message that says what fits.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Deserializer};

/// A config file (the agent's, the hub's): TOML, read and then checked for what serde cannot
/// check, with the file named in every error.
pub trait ConfigFile: serde::de::DeserializeOwned {
    /// Checks what serde cannot: ranges and relations between keys.
    fn validate(&self) -> Result<()>;

    /// Reads and validates a config file.
    fn load(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("invalid config {}", path.display()))
    }

    fn parse(text: &str) -> Result<Self> {
        let config: Self = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        config.validate()?;
        Ok(config)
    }
}

/// `auto`, `on` or `off` (`true`/`false` also accepted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Toggle {
    Auto,
    On,
    Off,
}

impl<'de> Deserialize<'de> for Toggle {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Bool(true) => Ok(Toggle::On),
            Raw::Bool(false) => Ok(Toggle::Off),
            Raw::Text(text) => match text.as_str() {
                "auto" => Ok(Toggle::Auto),
                "on" => Ok(Toggle::On),
                "off" => Ok(Toggle::Off),
                other => Err(serde::de::Error::custom(format!(
                    "{other:?} is not one of \"auto\", \"on\", \"off\""
                ))),
            },
        }
    }
}

/// A duration written as in the command line: `500ms`, `1s`, `5m`, `1h30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval(pub Duration);

impl Interval {
    pub const fn secs(secs: u64) -> Self {
        Interval(Duration::from_secs(secs))
    }
}

impl<'de> Deserialize<'de> for Interval {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let ms = outpost::timearg::parse_duration_ms(&text).map_err(serde::de::Error::custom)?;
        Ok(Interval(Duration::from_millis(ms as u64)))
    }
}

/// A size: a number of bytes, or text with a binary unit (`512KiB`, `64MiB`, `1GiB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(text: &str) -> Result<Self> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let number: u64 = text[..split]
            .parse()
            .with_context(|| format!("{text:?} is not a size like 512MiB"))?;
        let factor: u64 = match text[split..].trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "TiB" => 1 << 40,
            unit => bail!("{text:?}: unknown unit {unit:?}; use B, KiB, MiB, GiB or TiB"),
        };
        number
            .checked_mul(factor)
            .map(ByteSize)
            .with_context(|| format!("{text:?} is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Number(n) => Ok(ByteSize(n)),
            Raw::Text(text) => ByteSize::parse(&text).map_err(serde::de::Error::custom),
        }
    }
}
