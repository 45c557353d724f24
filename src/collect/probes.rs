//! Health probes: HTTP(S), TCP, DNS, ICMP ping, process presence and a writable file system
//! with free space. A round is one attempt plus `retries`; an outage (`probe_up` 0) starts after
//! `failures_before_down` consecutive failed rounds, so one lost packet does not page anyone.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use serde::Deserialize;

use super::Samples;
use crate::config_values::{ByteSize, Interval};
use crate::http_client::{self as http, Target};

/// One `[[probes]]` entry of the agent's config.
// No `deny_unknown_fields` here: serde does not support it beside `flatten`; the flattened
// check refuses unknown keys instead.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ProbeConfig {
    /// The `probe` label of the probe's metrics.
    pub name: String,
    #[serde(flatten)]
    pub check: ProbeCheck,
    #[serde(default = "default_probe_interval")]
    pub interval: Interval,
    #[serde(default = "default_timeout")]
    pub timeout: Interval,
    /// Further attempts within one round before the round counts as failed.
    #[serde(default)]
    pub retries: u32,
    /// Consecutive failed rounds before `probe_up` drops to 0 (an outage).
    #[serde(default = "default_failures")]
    pub failures_before_down: u32,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum ProbeCheck {
    Http {
        url: String,
        /// Status codes that count as success; by default 200-399.
        #[serde(default)]
        expect_status: Vec<u16>,
        /// A regular expression the body must match.
        #[serde(default)]
        body_pattern: Option<String>,
        /// Accept any certificate (self-signed devices on a lab network); expiry is still
        /// reported.
        #[serde(default)]
        insecure: bool,
    },
    Tcp {
        address: String,
    },
    /// A datagram to `address` (host:port), and its reply if `expect` asks for one.
    Udp {
        address: String,
        /// What to send, as text; `payload_hex` for bytes (a DNS or RADIUS request).
        #[serde(default)]
        payload: String,
        #[serde(default)]
        payload_hex: String,
        /// A regular expression over the reply's bytes: the round fails without a matching
        /// reply within the timeout. Without it, the round fails only when the host says the
        /// port is closed (ICMP port unreachable).
        #[serde(default)]
        expect: Option<String>,
    },
    Dns {
        /// The name to resolve, with the system's resolver.
        host: String,
    },
    Ping {
        host: String,
        #[serde(default = "default_ping_count")]
        count: u32,
    },
    Process {
        /// Process name, as in `ps -o comm`.
        process: String,
    },
    Filesystem {
        path: PathBuf,
        /// The round fails when less than this is free.
        #[serde(default)]
        min_free: ByteSize,
    },
}

fn default_ping_count() -> u32 {
    3
}

fn default_probe_interval() -> Interval {
    Interval::secs(30)
}
fn default_failures() -> u32 {
    3
}

fn default_timeout() -> Interval {
    Interval::secs(5)
}

/// The result of one attempt.
#[derive(Debug, Default)]
pub struct Outcome {
    pub success: bool,
    /// Probe-specific figures (`probe_http_status_code`, ...).
    pub figures: Vec<(&'static str, f64)>,
    pub error: Option<String>,
}

impl Outcome {
    fn failed(error: impl std::fmt::Display, figures: Vec<(&'static str, f64)>) -> Self {
        Outcome {
            success: false,
            figures,
            error: Some(error.to_string()),
        }
    }
}

/// A probe with its run of consecutive failures.
pub struct Probe {
    pub config: ProbeConfig,
    body_pattern: Option<regex::Regex>,
    reply_pattern: Option<regex::bytes::Regex>,
    consecutive_failures: u32,
    last_error: Option<String>,
}

impl Probe {
    pub fn new(config: ProbeConfig) -> Self {
        let body_pattern = match &config.check {
            // Validated at config load.
            ProbeCheck::Http {
                body_pattern: Some(p),
                ..
            } => regex::Regex::new(p).ok(),
            _ => None,
        };
        let reply_pattern = match &config.check {
            // Validated at config load.
            ProbeCheck::Udp {
                expect: Some(p), ..
            } => regex::bytes::Regex::new(p).ok(),
            _ => None,
        };
        Probe {
            config,
            body_pattern,
            reply_pattern,
            consecutive_failures: 0,
            last_error: None,
        }
    }

    /// Runs one round and records its samples.
    pub async fn round(&mut self, out: &mut Samples) {
        let started = Instant::now();
        let mut outcome = Outcome::default();
        for _attempt in 0..=self.config.retries {
            outcome = self.attempt().await;
            if outcome.success {
                break;
            }
        }
        let elapsed = started.elapsed();
        let name = self.config.name.clone();
        let kind = kind_name(&self.config.check);
        let labels = [("probe", name.as_str()), ("kind", kind)];
        if outcome.success {
            self.consecutive_failures = 0;
            if self.last_error.take().is_some() {
                tracing::info!(probe = %name, "probe succeeds again");
            }
        } else {
            self.consecutive_failures = self.consecutive_failures.saturating_add(1);
            let error = outcome.error.clone().unwrap_or_default();
            if self.last_error.as_deref() != Some(error.as_str()) {
                tracing::warn!(probe = %name, %error, "probe failed");
            }
            self.last_error = Some(error);
        }
        out.add("probe_success", &labels, f64::from(outcome.success));
        out.add("probe_duration_seconds", &labels, elapsed.as_secs_f64());
        out.add(
            "probe_consecutive_failures",
            &labels,
            f64::from(self.consecutive_failures),
        );
        out.add(
            "probe_up",
            &labels,
            f64::from(self.consecutive_failures < self.config.failures_before_down),
        );
        for (metric, value) in outcome.figures {
            out.add(metric, &labels, value);
        }
    }

    /// An HTTP(S) GET: the status (200-399 or `expect_status`), the body's pattern, and the
    /// certificate's expiry.
    async fn http(
        &self,
        url: &str,
        expect_status: &[u16],
        insecure: bool,
        timeout: Duration,
    ) -> Outcome {
        let target = match Target::parse(url) {
            Ok(target) => target,
            Err(e) => return Outcome::failed(format!("{e:#}"), vec![]),
        };
        match http::get(&target, timeout, insecure, 1 << 20).await {
            Ok(response) => {
                let mut figures = vec![("probe_http_status_code", f64::from(response.status))];
                if let Some(expiry) = response.certificate_expiry {
                    figures.push(("probe_ssl_earliest_cert_expiry", expiry as f64));
                }
                let status_ok = if expect_status.is_empty() {
                    (200..400).contains(&response.status)
                } else {
                    expect_status.contains(&response.status)
                };
                if !status_ok {
                    return Outcome::failed(format!("status {}", response.status), figures);
                }
                if let Some(pattern) = &self.body_pattern {
                    let body = String::from_utf8_lossy(&response.body);
                    if !pattern.is_match(&body) {
                        return Outcome::failed(
                            format!("body does not match {:?}", pattern.as_str()),
                            figures,
                        );
                    }
                }
                Outcome {
                    success: true,
                    figures,
                    error: None,
                }
            }
            Err(e) => Outcome::failed(format!("{e:#}"), vec![]),
        }
    }

    async fn attempt(&self) -> Outcome {
        let timeout = self.config.timeout.0;
        match &self.config.check {
            ProbeCheck::Http {
                url,
                expect_status,
                insecure,
                ..
            } => self.http(url, expect_status, *insecure, timeout).await,
            ProbeCheck::Tcp { address } => {
                let connect = tokio::net::TcpStream::connect(address.as_str());
                match tokio::time::timeout(timeout, connect).await {
                    Ok(Ok(_)) => Outcome {
                        success: true,
                        ..Outcome::default()
                    },
                    Ok(Err(e)) => Outcome::failed(format!("connect to {address}: {e}"), vec![]),
                    Err(_) => Outcome::failed(format!("connect to {address}: timed out"), vec![]),
                }
            }
            ProbeCheck::Udp {
                address,
                payload,
                payload_hex,
                expect,
            } => {
                let bytes = match udp_payload(payload, payload_hex) {
                    Ok(bytes) => bytes,
                    Err(e) => return Outcome::failed(format!("{e:#}"), vec![]),
                };
                let wanted = expect.as_ref().and(self.reply_pattern.as_ref());
                udp(address, &bytes, wanted, timeout).await
            }
            ProbeCheck::Dns { host: name } => {
                let lookup = tokio::net::lookup_host((name.as_str(), 0));
                match tokio::time::timeout(timeout, lookup).await {
                    Ok(Ok(addresses)) => {
                        let count = addresses.count();
                        Outcome {
                            success: count > 0,
                            figures: vec![("probe_dns_addresses", count as f64)],
                            error: (count == 0).then(|| format!("{name} has no address")),
                        }
                    }
                    Ok(Err(e)) => Outcome::failed(format!("resolve {name}: {e}"), vec![]),
                    Err(_) => Outcome::failed(format!("resolve {name}: timed out"), vec![]),
                }
            }
            ProbeCheck::Ping { host, count } => {
                let (host, count) = (host.clone(), *count);
                let result = tokio::task::spawn_blocking(move || ping(&host, count, timeout)).await;
                match result {
                    Ok(Ok(report)) => {
                        let mut figures =
                            vec![("probe_icmp_packet_loss_ratio", report.loss_ratio())];
                        if let Some(rtt) = report.average_rtt() {
                            figures.push(("probe_icmp_rtt_seconds", rtt.as_secs_f64()));
                        }
                        Outcome {
                            success: report.received > 0,
                            error: (report.received == 0).then(|| "no echo reply".to_string()),
                            figures,
                        }
                    }
                    Ok(Err(e)) => Outcome::failed(format!("{e:#}"), vec![]),
                    Err(e) => Outcome::failed(e, vec![]),
                }
            }
            ProbeCheck::Process { process } => {
                let names = [process.clone()];
                let found = super::host::find_processes(Path::new("/proc"), &names);
                let count = found.get(process).map_or(0, Vec::len);
                Outcome {
                    success: count > 0,
                    figures: vec![("probe_process_count", count as f64)],
                    error: (count == 0).then(|| format!("no process named {process}")),
                }
            }
            ProbeCheck::Filesystem { path, min_free } => {
                let (path, min_free) = (path.clone(), min_free.0);
                let result = tokio::task::spawn_blocking(move || filesystem(&path, min_free)).await;
                match result {
                    Ok(outcome) => outcome,
                    Err(e) => Outcome::failed(e, vec![]),
                }
            }
        }
    }
}

pub fn kind_name(check: &ProbeCheck) -> &'static str {
    match check {
        ProbeCheck::Http { .. } => "http",
        ProbeCheck::Tcp { .. } => "tcp",
        ProbeCheck::Udp { .. } => "udp",
        ProbeCheck::Dns { .. } => "dns",
        ProbeCheck::Ping { .. } => "ping",
        ProbeCheck::Process { .. } => "process",
        ProbeCheck::Filesystem { .. } => "filesystem",
    }
}

/// A UDP probe's datagram: its text, or its bytes written in hex.
pub fn udp_payload(text: &str, hex_text: &str) -> Result<Vec<u8>> {
    if !hex_text.is_empty() {
        if !text.is_empty() {
            bail!("give payload or payload_hex, not both");
        }
        let digits: String = hex_text.split_whitespace().collect();
        return hex::decode(digits).context("payload_hex is not hex");
    }
    Ok(text.as_bytes().to_vec())
}

/// Sends `payload` to `address` from a socket connected to it, so that the host's "port
/// unreachable" reaches us as a refused receive; then waits for a reply.
async fn udp(
    address: &str,
    payload: &[u8],
    expect: Option<&regex::bytes::Regex>,
    timeout: Duration,
) -> Outcome {
    let exchange = async {
        let target = tokio::net::lookup_host(address)
            .await
            .with_context(|| format!("resolve {address}"))?
            .next()
            .with_context(|| format!("{address} has no address"))?;
        let local: SocketAddr = if target.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = tokio::net::UdpSocket::bind(local).await?;
        socket.connect(target).await?;
        socket.send(payload).await?;
        let mut reply = vec![0u8; 65_536];
        anyhow::Ok(
            match tokio::time::timeout(timeout, socket.recv(&mut reply)).await {
                Ok(Ok(n)) => Some(reply[..n].to_vec()),
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    bail!("{address}: port unreachable")
                }
                Ok(Err(e)) => bail!("{address}: {e}"),
                Err(_) => None,
            },
        )
    };
    match exchange.await {
        Ok(Some(reply)) => {
            let figures = vec![("probe_udp_reply_bytes", reply.len() as f64)];
            match expect {
                Some(pattern) if !pattern.is_match(&reply) => Outcome::failed(
                    format!("the reply does not match {:?}", pattern.as_str()),
                    figures,
                ),
                _ => Outcome {
                    success: true,
                    figures,
                    error: None,
                },
            }
        }
        Ok(None) if expect.is_some() => {
            Outcome::failed(format!("{address}: no reply within {timeout:?}"), vec![])
        }
        // Silence is all a UDP service that does not answer can give.
        Ok(None) => Outcome {
            success: true,
            ..Outcome::default()
        },
        Err(e) => Outcome::failed(format!("{e:#}"), vec![]),
    }
}

/// Writes, syncs and removes a small file, then checks free space.
fn filesystem(path: &Path, min_free: u64) -> Outcome {
    use std::io::Write;
    let probe_file = path.join(format!(".outpost-probe-{}", std::process::id()));
    let written = std::fs::File::create(&probe_file).and_then(|mut file| {
        file.write_all(b"outpost probe\n")?;
        file.sync_all()
    });
    let _ = std::fs::remove_file(&probe_file);
    let mut figures = Vec::new();
    let free = rustix::fs::statvfs(path)
        .map(|s| s.f_bavail.saturating_mul(s.f_frsize))
        .ok();
    if let Some(free) = free {
        figures.push(("probe_filesystem_avail_bytes", free as f64));
    }
    if let Err(e) = written {
        return Outcome::failed(format!("{} is not writable: {e}", path.display()), figures);
    }
    match free {
        Some(free) if free < min_free => Outcome::failed(
            format!(
                "{} has {free} bytes free, less than {min_free}",
                path.display()
            ),
            figures,
        ),
        Some(_) => Outcome {
            success: true,
            figures,
            error: None,
        },
        None => Outcome::failed(format!("cannot stat {}", path.display()), figures),
    }
}

#[derive(Debug, Default)]
pub struct PingReport {
    pub sent: u32,
    pub received: u32,
    pub total_rtt: Duration,
}

impl PingReport {
    pub fn loss_ratio(&self) -> f64 {
        if self.sent == 0 {
            1.0
        } else {
            1.0 - f64::from(self.received) / f64::from(self.sent)
        }
    }

    pub fn average_rtt(&self) -> Option<Duration> {
        (self.received > 0).then(|| self.total_rtt / self.received)
    }
}

/// Sends `count` ICMP echo requests. It prefers an unprivileged ICMP socket (`SOCK_DGRAM`),
/// which Linux allows to the groups in `net.ipv4.ping_group_range` and which needs no
/// capability; where that sysctl refuses, a raw socket, which works for root or with
/// `CAP_NET_RAW` (the packaged service grants it).
pub fn ping(host: &str, count: u32, timeout: Duration) -> Result<PingReport> {
    use socket2::{Domain, Protocol, Socket, Type};
    use std::io::Read;
    let address: IpAddr = (host, 0)
        .to_socket_addrs()
        .with_context(|| format!("resolve {host}"))?
        .map(|a| a.ip())
        .next()
        .with_context(|| format!("{host} has no address"))?;
    let (domain, protocol, request_type, reply_type) = match address {
        IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4, 8u8, 0u8),
        IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6, 128u8, 129u8),
    };
    let refused = |e: &std::io::Error| matches!(e.raw_os_error(), Some(1) | Some(13));
    let (socket, raw) = match Socket::new(domain, Type::DGRAM, Some(protocol)) {
        Ok(socket) => (socket, false),
        Err(e) if refused(&e) => match Socket::new(domain, Type::RAW, Some(protocol)) {
            Ok(socket) => (socket, true),
            Err(_) => bail!(
                "unprivileged ICMP is not allowed for this user ({e}), nor a raw socket: add the \
                 agent's group to the sysctl net.ipv4.ping_group_range (for example `sysctl -w \
                 net.ipv4.ping_group_range=\"0 2147483647\"`), or grant it CAP_NET_RAW"
            ),
        },
        Err(e) => bail!("cannot open an ICMP socket: {e}"),
    };
    socket
        .connect(&SocketAddr::new(address, 0).into())
        .with_context(|| format!("connect ICMP socket to {address}"))?;
    // On a datagram socket the kernel picks the identifier and filters replies by it; on a raw
    // one every ICMP packet of the host arrives, so the identifier is ours to set and check.
    let identifier = (std::process::id() as u16).to_be_bytes();
    let mut report = PingReport::default();
    let per_packet = timeout / count.max(1);
    let mut socket_reader = &socket;
    for sequence in 0..count {
        let sequence = sequence as u16;
        let mut packet = [0u8; 16];
        packet[0] = request_type;
        packet[4..6].copy_from_slice(&identifier);
        packet[6..8].copy_from_slice(&sequence.to_be_bytes());
        packet[8..16].copy_from_slice(b"outpost!");
        // The kernel computes ICMPv6 checksums itself (they cover a pseudo-header).
        if domain == Domain::IPV4 {
            let checksum = icmp_checksum(&packet);
            packet[2..4].copy_from_slice(&checksum.to_be_bytes());
        }
        let sent_at = Instant::now();
        socket
            .send(&packet)
            .with_context(|| format!("send echo request to {address}"))?;
        report.sent += 1;
        // Replies to earlier, timed-out requests may still arrive: skip them.
        loop {
            let left = per_packet.saturating_sub(sent_at.elapsed());
            if left.is_zero() {
                break;
            }
            socket.set_read_timeout(Some(left))?;
            let mut buffer = [0u8; 1500];
            match socket_reader.read(&mut buffer) {
                Ok(n) => {
                    // A raw IPv4 socket hands over the IP header too.
                    let header = if raw && domain == Domain::IPV4 && n > 0 {
                        usize::from(buffer[0] & 0x0f) * 4
                    } else {
                        0
                    };
                    let Some(reply) = buffer[..n].get(header..) else {
                        continue;
                    };
                    if reply.len() >= 8
                        && reply[0] == reply_type
                        && reply[6..8] == sequence.to_be_bytes()
                        && (!raw || reply[4..6] == identifier)
                    {
                        report.received += 1;
                        report.total_rtt += sent_at.elapsed();
                        break;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break
                }
                Err(e) => bail!("receive from {address}: {e}"),
            }
        }
    }
    Ok(report)
}

fn icmp_checksum(packet: &[u8]) -> u16 {
    let mut sum: u32 = packet
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod udp_tests {
    use super::*;

    const WAIT: Duration = Duration::from_millis(300);

    /// A UDP server on loopback that answers `PONG <datagram>`, or nothing when `silent`.
    async fn server(silent: bool) -> String {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let address = socket.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                if !silent {
                    let mut reply = b"PONG ".to_vec();
                    reply.extend_from_slice(&buf[..n]);
                    let _ = socket.send_to(&reply, from).await;
                }
            }
        });
        address
    }

    #[tokio::test]
    async fn a_matching_reply_succeeds_and_others_fail() {
        let address = server(false).await;
        let pattern = regex::bytes::Regex::new("^PONG ping").unwrap();
        let ok = udp(&address, b"ping", Some(&pattern), WAIT).await;
        assert!(ok.success, "{:?}", ok.error);
        assert_eq!(ok.figures, vec![("probe_udp_reply_bytes", 9.0)]);
        let other = regex::bytes::Regex::new("^NACK").unwrap();
        let wrong = udp(&address, b"ping", Some(&other), WAIT).await;
        assert!(!wrong.success);
        assert!(wrong.error.unwrap().contains("does not match"));
    }

    #[tokio::test]
    async fn a_closed_port_fails_and_silence_fails_only_when_a_reply_is_expected() {
        let closed = {
            let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            socket.local_addr().unwrap().to_string()
        };
        let refused = udp(&closed, b"x", None, WAIT).await;
        assert!(!refused.success);
        assert!(refused.error.unwrap().contains("port unreachable"));
        let silent = server(true).await;
        assert!(udp(&silent, b"x", None, WAIT).await.success);
        let pattern = regex::bytes::Regex::new(".").unwrap();
        let waited = udp(&silent, b"x", Some(&pattern), WAIT).await;
        assert!(waited.error.unwrap().contains("no reply"));
    }

    #[test]
    fn payloads_as_text_or_hex() {
        assert_eq!(udp_payload("hi", "").unwrap(), b"hi");
        assert_eq!(
            udp_payload("", "de ad BE EF").unwrap(),
            [0xde, 0xad, 0xbe, 0xef]
        );
        assert!(udp_payload("", "zz").is_err());
        assert!(udp_payload("a", "00").is_err());
    }
}
