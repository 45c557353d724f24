//! Broker addresses as users write them: `mqtt://host:port` and `mqtts://host:port`.

use anyhow::{bail, Context, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl MqttUrl {
    pub fn parse(url: &str) -> Result<MqttUrl> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("mqtt://") {
            (false, rest)
        } else if let Some(rest) = url.strip_prefix("mqtts://") {
            (true, rest)
        } else {
            bail!("{url:?}: must start with mqtt:// or mqtts://");
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => (
                host,
                port.parse::<u16>()
                    .with_context(|| format!("{url:?}: port {port:?} is not a number"))?,
            ),
            _ => (rest, if tls { 8883 } else { 1883 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains('/') {
            bail!("{url:?}: no host name");
        }
        Ok(MqttUrl {
            tls,
            host: host.to_string(),
            port,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = MqttUrl::parse("mqtt://127.0.0.1:1884").unwrap();
        assert_eq!((u.tls, u.host.as_str(), u.port), (false, "127.0.0.1", 1884));
        let u = MqttUrl::parse("mqtts://hub.example.net").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port),
            (true, "hub.example.net", 8883)
        );
        assert_eq!(MqttUrl::parse("mqtt://[::1]:1883").unwrap().host, "::1");
        assert!(MqttUrl::parse("http://x").is_err());
        assert!(MqttUrl::parse("mqtt://:1883").is_err());
        assert!(MqttUrl::parse("mqtt://x:port").is_err());
    }
}
