//! Addresses as users write them: the `host[:port]` part of every URL the binary takes (HTTP(S)
//! probes and webhooks, MQTT brokers, SMTP servers), and broker URLs, `mqtt://host:port` and
//! `mqtts://host:port`. One parser of ours rather than the `url` crate: these URLs have no
//! user info, and only the host and port are needed.

use anyhow::{bail, Context, Result};

/// Whether `url` is the TLS form of `plain` (`mqtts` of `mqtt`, `https` of `http`), and what
/// follows the `://`; an error for any other scheme.
pub fn scheme<'u>(url: &'u str, plain: &str) -> Result<(bool, &'u str)> {
    let rest = |scheme: &str| url.strip_prefix(scheme)?.strip_prefix("://");
    if let Some(rest) = rest(plain) {
        Ok((false, rest))
    } else if let Some(rest) = rest(&format!("{plain}s")) {
        Ok((true, rest))
    } else {
        bail!("{url:?}: must start with {plain}:// or {plain}s://")
    }
}

/// The host and port of a URL's authority (`host`, `host:port`, `[v6]`, `[v6]:port`); the
/// host without brackets. `url` is the whole URL, for the error messages.
pub fn host_port(url: &str, authority: &str, default_port: u16) -> Result<(String, u16)> {
    if authority.contains('@') {
        bail!("{url:?}: credentials in URLs are not supported");
    }
    let port = |text: &str| {
        text.parse::<u16>()
            .with_context(|| format!("{url:?}: port {text:?} is not a number"))
    };
    let (host, port) = match authority.strip_prefix('[') {
        Some(bracketed) => {
            let (host, after) = bracketed
                .split_once(']')
                .with_context(|| format!("{url:?}: unclosed [ in the host"))?;
            match after.strip_prefix(':') {
                Some(text) => (host, port(text)?),
                None if after.is_empty() => (host, default_port),
                None => bail!("{url:?}: unexpected {after:?} after the host"),
            }
        }
        None => match authority.split_once(':') {
            Some((host, text)) => (host, port(text)?),
            None => (authority, default_port),
        },
    };
    if host.is_empty() || host.contains(['/', '[', ']']) {
        bail!("{url:?}: no host name");
    }
    Ok((host.to_string(), port))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl MqttUrl {
    pub fn parse(url: &str) -> Result<MqttUrl> {
        let (tls, rest) = scheme(url, "mqtt")?;
        let (host, port) = host_port(
            url,
            rest.trim_end_matches('/'),
            if tls { 8883 } else { 1883 },
        )?;
        Ok(MqttUrl { tls, host, port })
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
        // An IPv6 literal without a port used to read "1]" as the port.
        let u = MqttUrl::parse("mqtt://[::1]").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 1883));
        let u = MqttUrl::parse("mqtts://[fe80::1]/").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("fe80::1", 8883));
        assert!(MqttUrl::parse("mqtt://[::1").is_err());
        assert!(MqttUrl::parse("mqtt://::1").is_err());
        assert!(MqttUrl::parse("mqtt://user@host").is_err());
        assert!(MqttUrl::parse("http://x").is_err());
        assert!(MqttUrl::parse("mqtt://:1883").is_err());
        assert!(MqttUrl::parse("mqtt://x:port").is_err());
    }

    #[test]
    fn schemes() {
        assert_eq!(scheme("https://h/p", "http").unwrap(), (true, "h/p"));
        assert_eq!(scheme("http://h", "http").unwrap(), (false, "h"));
        // A scheme that only starts like the right one is another scheme.
        for other in ["httpx://h", "http:/h", "mqtt://h", "h", ""] {
            let error = scheme(other, "http").unwrap_err().to_string();
            assert!(
                error.contains("must start with http:// or https://"),
                "{error}"
            );
        }
    }
}
