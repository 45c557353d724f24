//! The embedded broker's door: every MQTT connection from outside passes through here before it
//! reaches rumqttd (which listens on loopback only), because rumqttd authenticates logins but
//! has no topic ACLs. The gate reads each packet a client sends and lets a device's login
//! publish only under its own topics (`outpost/v1/<fleet>/<device>/...`, its last will
//! included) and subscribe only to its own `ack` and `cmd` topics; the hub's login may do
//! anything. A packet that breaks the rule, or is larger than `[mqtt] max_packet`, closes the
//! connection: the device's data is never touched by another login, and what was refused is
//! counted against the login that sent it. Only MQTT 3.1 and 3.1.1 are spoken, as by rumqttd.
//!
//! The parsing follows the MQTT 3.1.1 specification, sections 2 and 3; it is written here (a
//! few dozen lines) because only the client-to-broker framing and four fields are needed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What a login may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rights {
    /// The hub itself.
    Everything,
    /// A device: its own topics under `prefix` (`outpost/v1/<fleet>/<device>/`).
    Device { prefix: String },
    /// A person's tool: reads the alert and status topics under `fleet` (`outpost/v1/<fleet>/`)
    /// of any device, publishes nothing.
    Reader { fleet: String },
}

/// Refusals per login, for the hub's `/metrics`.
#[derive(Debug, Default)]
pub struct Refusals {
    by_login: Mutex<BTreeMap<String, u64>>,
}

/// Logins counted by name at most; the rest (anyone may try any name) share one count.
const MAX_LOGINS: usize = 1_000;

impl Refusals {
    fn count(&self, login: &str) {
        let mut by_login = self.by_login.lock().expect("refusals lock");
        let key = if by_login.len() < MAX_LOGINS || by_login.contains_key(login) {
            login
        } else {
            "(other)"
        };
        *by_login.entry(key.to_string()).or_default() += 1;
    }

    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.by_login.lock().expect("refusals lock").clone()
    }
}

/// The rule for a login: `hub_user` may do anything; every other name is a device's.
pub fn rights(login: &str, hub_user: &str, fleet: &str) -> Rights {
    if login == hub_user {
        Rights::Everything
    } else {
        Rights::Device {
            prefix: format!("outpost/v1/{fleet}/{login}/"),
        }
    }
}

impl Rights {
    pub fn may_publish(&self, topic: &str) -> bool {
        match self {
            Rights::Everything => true,
            Rights::Reader { .. } => false,
            Rights::Device { prefix } => {
                topic.len() > prefix.len()
                    && topic.starts_with(prefix.as_str())
                    && !topic.contains(['+', '#'])
            }
        }
    }

    pub fn may_subscribe(&self, filter: &str) -> bool {
        match self {
            Rights::Everything => true,
            // `<device or +>/status` or `<device or +>/alerts/...`.
            Rights::Reader { fleet } => filter
                .strip_prefix(fleet.as_str())
                .and_then(|rest| rest.split_once('/'))
                .is_some_and(|(device, tail)| {
                    !device.is_empty()
                        && device != "#"
                        && (tail == "status" || tail == "alerts/#" || tail.starts_with("alerts/"))
                }),
            Rights::Device { prefix } => filter
                .strip_prefix(prefix.as_str())
                .is_some_and(|rest| rest == "ack" || rest == "cmd"),
        }
    }
}

/// Why a packet was not let through.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    Malformed(&'static str),
    TooLarge(usize),
    Protocol(u8),
    Publish(String),
    Subscribe(String),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Malformed(what) => write!(f, "a malformed packet ({what})"),
            Refused::TooLarge(size) => {
                write!(f, "a packet of {size} bytes, over [mqtt] max_packet")
            }
            Refused::Protocol(level) => write!(f, "MQTT protocol level {level} (3.1.1 is spoken)"),
            Refused::Publish(topic) => write!(f, "a publish to {topic:?}, not its own topic"),
            Refused::Subscribe(filter) => write!(f, "a subscription to {filter:?}, not its own"),
        }
    }
}

/// One packet's fixed header: type, flags and the length of the rest, with the header's size.
fn fixed_header(buffer: &[u8]) -> Result<Option<(u8, u8, usize, usize)>, Refused> {
    let Some(&first) = buffer.first() else {
        return Ok(None);
    };
    let mut length = 0usize;
    for i in 0..4 {
        let Some(&byte) = buffer.get(1 + i) else {
            return Ok(None);
        };
        length |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((first >> 4, first & 0x0f, length, 2 + i)));
        }
    }
    Err(Refused::Malformed("remaining length over four bytes"))
}

/// A length-prefixed UTF-8 string at `at`, and where the next field starts.
fn string(body: &[u8], at: usize) -> Result<(&str, usize), Refused> {
    let length = body
        .get(at..at + 2)
        .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
        .ok_or(Refused::Malformed("a string's length"))?;
    let bytes = body
        .get(at + 2..at + 2 + length)
        .ok_or(Refused::Malformed("a string past the packet's end"))?;
    let text = std::str::from_utf8(bytes).map_err(|_| Refused::Malformed("a string not UTF-8"))?;
    Ok((text, at + 2 + length))
}

/// What a CONNECT says: the login (empty without one) and the will topic, if any.
#[derive(Debug, PartialEq, Eq)]
pub struct Connect {
    pub login: String,
    pub will_topic: Option<String>,
}

/// Parses a CONNECT body (after the fixed header).
pub fn parse_connect(body: &[u8]) -> Result<Connect, Refused> {
    let (protocol, at) = string(body, 0)?;
    let level = *body
        .get(at)
        .ok_or(Refused::Malformed("the protocol level"))?;
    match (protocol, level) {
        ("MQTT", 4) | ("MQIsdp", 3) => {}
        (_, level) => return Err(Refused::Protocol(level)),
    }
    let flags = *body
        .get(at + 1)
        .ok_or(Refused::Malformed("the connect flags"))?;
    // Flags (1), keep alive (2), then the payload: client id first.
    let (_client_id, mut at) = string(body, at + 4)?;
    let mut will_topic = None;
    if flags & 0x04 != 0 {
        let (topic, next) = string(body, at)?;
        will_topic = Some(topic.to_string());
        let (_, next) = string(body, next)?;
        at = next;
    }
    let login = if flags & 0x80 != 0 {
        string(body, at)?.0.to_string()
    } else {
        String::new()
    };
    Ok(Connect { login, will_topic })
}

/// Checks one packet a client sends (type, flags, body) against its rights.
pub fn check(rights: &Rights, kind: u8, flags: u8, body: &[u8]) -> Result<(), Refused> {
    match kind {
        // PUBLISH: the topic first.
        3 => {
            let (topic, _) = string(body, 0)?;
            if !rights.may_publish(topic) {
                return Err(Refused::Publish(topic.to_string()));
            }
            let qos = (flags >> 1) & 3;
            if qos == 3 {
                return Err(Refused::Malformed("QoS 3"));
            }
        }
        // SUBSCRIBE: a packet id, then (filter, QoS) pairs.
        8 => {
            let mut at = 2;
            if body.len() <= at {
                return Err(Refused::Malformed("a subscribe without filters"));
            }
            while at < body.len() {
                let (filter, next) = string(body, at)?;
                if !rights.may_subscribe(filter) {
                    return Err(Refused::Subscribe(filter.to_string()));
                }
                at = next + 1;
            }
        }
        // A second CONNECT is a protocol violation (3.1.0-2).
        1 => return Err(Refused::Malformed("a second CONNECT")),
        _ => {}
    }
    Ok(())
}

/// What one client, and all of them together, may take of the gate.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once: the rest wait in the listen queue, so that idle sockets
    /// cannot exhaust the hub.
    pub connections: usize,
    /// How long a new connection may take to send its CONNECT.
    pub connect_timeout: std::time::Duration,
    /// The largest packet, in bytes of its body.
    pub max_packet: usize,
}

impl Limits {
    /// As many connections as the broker takes, and as long for the CONNECT as rumqttd allows.
    pub fn embedded(max_packet: usize) -> Limits {
        Limits {
            connections: 10_000,
            connect_timeout: std::time::Duration::from_secs(10),
            max_packet,
        }
    }
}

/// Serves the gate on `listener`, passing allowed traffic to the broker at `broker`.
pub async fn serve(
    listener: TcpListener,
    broker: SocketAddr,
    rights_of: Arc<dyn Fn(&str) -> Rights + Send + Sync>,
    limits: Limits,
    refusals: Arc<Refusals>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.connections));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Ok((client, peer)) = listener.accept().await else {
            continue;
        };
        let (rights_of, refusals) = (rights_of.clone(), refusals.clone());
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(error) = pass(client, broker, &*rights_of, limits, &refusals).await {
                tracing::debug!(%peer, "MQTT connection ended: {error}");
            }
        });
    }
}

/// Reads one whole packet into `buffer` (which keeps what follows it); returns its type, flags,
/// header size and body range.
async fn read_packet(
    stream: &mut tokio::net::tcp::OwnedReadHalf,
    buffer: &mut Vec<u8>,
    max_packet: usize,
) -> std::io::Result<Option<(u8, u8, usize, usize)>> {
    loop {
        match fixed_header(buffer) {
            Ok(Some((kind, flags, length, header))) => {
                if length > max_packet {
                    return Err(std::io::Error::other(Refused::TooLarge(length).to_string()));
                }
                if buffer.len() >= header + length {
                    return Ok(Some((kind, flags, header, length)));
                }
            }
            Ok(None) => {}
            Err(refused) => return Err(std::io::Error::other(refused.to_string())),
        }
        let mut chunk = [0u8; 16 << 10];
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Ok(None);
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
}

async fn pass(
    client: TcpStream,
    broker: SocketAddr,
    rights_of: &(dyn Fn(&str) -> Rights + Send + Sync),
    limits: Limits,
    refusals: &Refusals,
) -> std::io::Result<()> {
    let max_packet = limits.max_packet;
    let (mut from_client, mut to_client) = client.into_split();
    let mut buffer = Vec::new();
    let first = read_packet(&mut from_client, &mut buffer, max_packet);
    let Some((kind, _, header, length)) = tokio::time::timeout(limits.connect_timeout, first)
        .await
        .map_err(|_| std::io::Error::other("no CONNECT in time"))??
    else {
        return Ok(());
    };
    if kind != 1 {
        return Err(std::io::Error::other("the first packet is not a CONNECT"));
    }
    let connect = parse_connect(&buffer[header..header + length])
        .map_err(|refused| std::io::Error::other(refused.to_string()))?;
    let rights = rights_of(&connect.login);
    if let Some(topic) = &connect.will_topic {
        if !rights.may_publish(topic) {
            refusals.count(&connect.login);
            tracing::warn!(
                login = connect.login,
                topic,
                "refused a last will on another's topic"
            );
            return Ok(());
        }
    }
    let upstream = TcpStream::connect(broker).await?;
    upstream.set_nodelay(true)?;
    let (mut from_broker, mut to_broker) = upstream.into_split();
    // The CONNECT as it came (the broker checks the login and the client id).
    to_broker.write_all(&buffer[..header + length]).await?;
    buffer.drain(..header + length);
    // Broker to client: as it comes.
    let down = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut from_broker, &mut to_client).await;
        let _ = to_client.shutdown().await;
    });
    let result = async {
        loop {
            let Some((kind, flags, header, length)) =
                read_packet(&mut from_client, &mut buffer, max_packet).await?
            else {
                return Ok(());
            };
            let end = header + length;
            if let Err(refused) = check(&rights, kind, flags, &buffer[header..end]) {
                refusals.count(&connect.login);
                tracing::warn!(login = connect.login, "closed a connection: {refused}");
                return Ok(());
            }
            to_broker.write_all(&buffer[..end]).await?;
            buffer.drain(..end);
        }
    }
    .await;
    down.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect_packet(login: Option<&str>, will: Option<&str>) -> Vec<u8> {
        let mut body = Vec::new();
        let push_string = |body: &mut Vec<u8>, text: &str| {
            body.extend_from_slice(&(text.len() as u16).to_be_bytes());
            body.extend_from_slice(text.as_bytes());
        };
        push_string(&mut body, "MQTT");
        body.push(4);
        let mut flags = 0x02;
        if login.is_some() {
            flags |= 0xc0;
        }
        if will.is_some() {
            flags |= 0x04;
        }
        body.push(flags);
        body.extend_from_slice(&30u16.to_be_bytes());
        push_string(&mut body, "outpost-default-dev-a");
        if let Some(topic) = will {
            push_string(&mut body, topic);
            push_string(&mut body, "offline");
        }
        if let Some(login) = login {
            push_string(&mut body, login);
            push_string(&mut body, "secret");
        }
        body
    }

    #[test]
    fn a_device_publishes_and_subscribes_under_its_own_topics_only() {
        let rights = rights("dev-a", "outpost-hub", "default");
        assert!(rights.may_publish("outpost/v1/default/dev-a/batch"));
        assert!(rights.may_publish("outpost/v1/default/dev-a/alerts/disk_full/_"));
        assert!(!rights.may_publish("outpost/v1/default/dev-b/batch"));
        assert!(!rights.may_publish("outpost/v1/default/dev-ab/batch"));
        assert!(!rights.may_publish("outpost/v1/default/dev-a/"));
        assert!(!rights.may_publish("outpost/v1/other/dev-a/batch"));
        assert!(rights.may_subscribe("outpost/v1/default/dev-a/cmd"));
        assert!(rights.may_subscribe("outpost/v1/default/dev-a/ack"));
        assert!(!rights.may_subscribe("outpost/v1/default/dev-a/#"));
        assert!(!rights.may_subscribe("outpost/v1/default/+/batch"));
        assert!(!rights.may_subscribe("#"));
        let hub = super::rights("outpost-hub", "outpost-hub", "default");
        assert!(hub.may_subscribe("outpost/v1/default/+/batch"));
        let reader = Rights::Reader {
            fleet: "outpost/v1/default/".into(),
        };
        for allowed in [
            "outpost/v1/default/+/alerts/events",
            "outpost/v1/default/+/alerts/#",
            "outpost/v1/default/dev-a/alerts/+/+",
            "outpost/v1/default/+/status",
        ] {
            assert!(reader.may_subscribe(allowed), "{allowed}");
        }
        for refused in [
            "outpost/v1/default/+/batch",
            "outpost/v1/default/#",
            "outpost/v1/default/+/#",
            "outpost/v1/default/dev-a/cmd",
            "outpost/v1/other/+/status",
            "#",
        ] {
            assert!(!reader.may_subscribe(refused), "{refused}");
        }
        assert!(!reader.may_publish("outpost/v1/default/dev-a/alerts/events"));
    }

    #[test]
    fn connect_packets_give_the_login_and_the_will() {
        let parsed = parse_connect(&connect_packet(
            Some("dev-a"),
            Some("outpost/v1/default/dev-b/status"),
        ))
        .unwrap();
        assert_eq!(parsed.login, "dev-a");
        assert_eq!(
            parsed.will_topic.as_deref(),
            Some("outpost/v1/default/dev-b/status")
        );
        assert_eq!(
            parse_connect(&connect_packet(None, None)).unwrap().login,
            ""
        );
        let mut v5 = connect_packet(Some("dev-a"), None);
        v5[6] = 5;
        assert_eq!(parse_connect(&v5), Err(Refused::Protocol(5)));
    }

    #[test]
    fn publishes_and_subscriptions_are_checked_and_nothing_panics() {
        let rights = rights("dev-a", "outpost-hub", "default");
        let publish = |topic: &str| {
            let mut body = (topic.len() as u16).to_be_bytes().to_vec();
            body.extend_from_slice(topic.as_bytes());
            body.extend_from_slice(&[0, 1, b'x']);
            body
        };
        assert!(check(&rights, 3, 2, &publish("outpost/v1/default/dev-a/batch")).is_ok());
        assert!(check(&rights, 3, 2, &publish("outpost/v1/default/dev-b/batch")).is_err());
        let mut subscribe = vec![0, 1];
        for filter in [
            "outpost/v1/default/dev-a/ack",
            "outpost/v1/default/dev-b/ack",
        ] {
            subscribe.extend_from_slice(&(filter.len() as u16).to_be_bytes());
            subscribe.extend_from_slice(filter.as_bytes());
            subscribe.push(1);
        }
        assert_eq!(
            check(&rights, 8, 2, &subscribe),
            Err(Refused::Subscribe("outpost/v1/default/dev-b/ack".into()))
        );
        // Any bytes: an error or a pass, never a panic.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let length = (seed % 40) as usize;
            let bytes: Vec<u8> = (0..length).map(|i| (seed >> (i % 8 * 8)) as u8).collect();
            let _ = check(&rights, (seed % 16) as u8, (seed >> 8) as u8 & 15, &bytes);
            let _ = parse_connect(&bytes);
            let _ = fixed_header(&bytes);
        }
    }

    /// A whole CONNECT packet, fixed header and all.
    fn framed_connect(login: &str) -> Vec<u8> {
        let body = connect_packet(Some(login), None);
        let mut packet = vec![0x10, u8::try_from(body.len()).unwrap()];
        packet.extend_from_slice(&body);
        packet
    }

    /// The gate in front of a stand-in broker that only counts the connections reaching it.
    #[tokio::test(flavor = "current_thread")]
    async fn connections_are_capped_and_slow_or_huge_ones_closed() {
        use std::time::{Duration, Instant};
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let broker = upstream.local_addr().unwrap();
        let (reached_tx, mut reached) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((socket, _)) = upstream.accept().await {
                let _ = reached_tx.send(socket);
            }
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gate = listener.local_addr().unwrap();
        let limits = Limits {
            connections: 2,
            connect_timeout: Duration::from_millis(300),
            max_packet: 1024,
        };
        tokio::spawn(serve(
            listener,
            broker,
            Arc::new(|login: &str| rights(login, "hub", "default")),
            limits,
            Arc::new(Refusals::default()),
        ));
        let closed_within = |mut socket: TcpStream, limit: Duration| async move {
            let mut byte = [0u8; 1];
            let read = tokio::time::timeout(limit, socket.read(&mut byte)).await;
            matches!(read, Ok(Ok(0) | Err(_)))
        };

        // A connection that says nothing is closed after the CONNECT timeout, not before.
        let started = Instant::now();
        let silent = TcpStream::connect(gate).await.unwrap();
        assert!(closed_within(silent, Duration::from_secs(5)).await);
        assert!(started.elapsed() >= Duration::from_millis(300));

        // One that announces a packet over the limit is closed at once, before it is read.
        let mut huge = TcpStream::connect(gate).await.unwrap();
        huge.write_all(&[0x10, 0xff, 0xff, 0xff, 0x7f])
            .await
            .unwrap();
        assert!(closed_within(huge, Duration::from_secs(1)).await);

        // Two connections take both places; a third waits until one of them leaves.
        let mut first = TcpStream::connect(gate).await.unwrap();
        first.write_all(&framed_connect("dev-a")).await.unwrap();
        let _first_upstream = reached.recv().await.unwrap();
        let mut second = TcpStream::connect(gate).await.unwrap();
        second.write_all(&framed_connect("dev-b")).await.unwrap();
        let _second_upstream = reached.recv().await.unwrap();
        let mut third = TcpStream::connect(gate).await.unwrap();
        third.write_all(&framed_connect("dev-c")).await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(500), reached.recv())
                .await
                .is_err(),
            "a third connection was let through"
        );
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), reached.recv())
            .await
            .expect("the third connection is served once a place is free")
            .unwrap();
    }
}
