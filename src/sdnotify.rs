//! systemd's service notification protocol (`sd_notify`), spoken directly: one datagram per
//! message to the socket that `NOTIFY_SOCKET` names. The packaged units are `Type=notify` with a
//! watchdog, so systemd knows when the store has been recovered and the service is up, and
//! restarts a daemon whose main loop has stopped turning. Outside systemd there is no
//! `NOTIFY_SOCKET` and nothing here does anything.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

pub struct Notifier {
    socket: UnixDatagram,
    address: SocketAddr,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// The notifier systemd asked for, if it did.
    pub fn from_env() -> Option<Notifier> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        let address = match socket_address(path.as_encoded_bytes()) {
            Ok(address) => address,
            Err(error) => {
                tracing::warn!("NOTIFY_SOCKET {path:?} is unusable: {error}");
                return None;
            }
        };
        // Never blocking: a manager that is slow to read (its queue full) must not stall the
        // daemon's async thread; a ping that cannot be sent at once is dropped.
        let socket = match UnixDatagram::unbound().and_then(|s| s.set_nonblocking(true).map(|()| s))
        {
            Ok(socket) => socket,
            Err(error) => {
                tracing::warn!("cannot create the socket for NOTIFY_SOCKET: {error}");
                return None;
            }
        };
        Some(Notifier {
            socket,
            address,
            watchdog: watchdog_timeout(),
        })
    }

    /// How often to ping: half of systemd's `WatchdogSec`, as sd_watchdog_enabled(3) advises,
    /// so that one late turn of the loop does not get the service killed.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|timeout| timeout / 2)
    }

    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}\n"));
    }

    pub fn watchdog(&self) {
        self.send("WATCHDOG=1\n");
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=stopping: sealing the store\n");
    }

    fn send(&self, message: &str) {
        // A lost notification is systemd's to notice (a start timeout, a watchdog restart);
        // the daemon itself keeps working either way.
        if let Err(error) = self.socket.send_to_addr(message.as_bytes(), &self.address) {
            tracing::warn!("sd_notify: {error}");
        }
    }
}

/// `NOTIFY_SOCKET` is a filesystem path or, starting with `@`, a name in Linux's abstract
/// socket namespace.
fn socket_address(path: &[u8]) -> std::io::Result<SocketAddr> {
    match path {
        [] => Err(std::io::Error::other("empty")),
        [b'@', name @ ..] => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name)
        }
        _ => {
            use std::os::unix::ffi::OsStrExt;
            SocketAddr::from_pathname(std::ffi::OsStr::from_bytes(path))
        }
    }
}

/// `WATCHDOG_USEC`, when it is meant for this process (`WATCHDOG_PID`, if set, names it).
fn watchdog_timeout() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    let micros: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (micros > 0).then(|| Duration::from_micros(micros))
}

/// A daemon's side of the protocol: ready once, a watchdog ping for its main loop to await,
/// stopping at the end. Without systemd every call does nothing and the ping never comes due.
pub struct Service {
    notifier: Option<Notifier>,
    pings: Option<tokio::time::Interval>,
}

impl Service {
    /// Tells systemd the daemon is up.
    pub fn ready(status: &str) -> Service {
        let notifier = Notifier::from_env();
        if let Some(notifier) = &notifier {
            notifier.ready(status);
        }
        let pings = notifier
            .as_ref()
            .and_then(Notifier::watchdog_interval)
            .map(tokio::time::interval);
        Service { notifier, pings }
    }

    /// Completes when a watchdog ping is due, and sends it if `alive()` says every essential
    /// task is. Awaited in the daemon's main loop, so that systemd restarts a daemon whose loop
    /// has stopped turning or whose tasks keep dying.
    pub async fn watchdog(&mut self, alive: impl FnOnce() -> bool) {
        match (&mut self.pings, &self.notifier) {
            (Some(pings), Some(notifier)) => {
                pings.tick().await;
                if alive() {
                    notifier.watchdog();
                } else {
                    tracing::error!("a task keeps failing: not feeding systemd's watchdog");
                }
            }
            _ => std::future::pending().await,
        }
    }

    pub fn stopping(&self) {
        if let Some(notifier) = &self.notifier {
            notifier.stopping();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abstract_and_path_addresses_are_told_apart() {
        use std::os::linux::net::SocketAddrExt;
        let abstract_address = socket_address(b"@outpost/notify").unwrap();
        assert_eq!(
            abstract_address.as_abstract_name(),
            Some(&b"outpost/notify"[..])
        );
        let path_address = socket_address(b"/run/systemd/notify").unwrap();
        assert_eq!(
            path_address.as_pathname(),
            Some(std::path::Path::new("/run/systemd/notify"))
        );
        assert!(socket_address(b"").is_err());
    }
}
