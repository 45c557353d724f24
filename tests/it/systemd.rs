//! The daemons speak systemd's notification protocol to a real datagram socket, as systemd
//! itself listens for it under `Type=notify` with `WatchdogSec=`.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::agent::{free_port, Agent};
use crate::sync::Hub;

const QUIET: &str =
    "[host]\nenabled = false\n[jetson]\nenabled = \"off\"\n[nvml]\nenabled = \"off\"\n[processes]\nenabled = false\n[containers]\nenabled = false\n";

fn listen(dir: &Path) -> (UnixDatagram, String) {
    let path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    (socket, path.to_str().unwrap().to_string())
}

/// What systemd sets for a `Type=notify` service with `WatchdogSec=400ms`.
fn notify_env(path: &str) -> [(&str, &str); 2] {
    [("NOTIFY_SOCKET", path), ("WATCHDOG_USEC", "400000")]
}

/// Every message that arrives within `window`.
fn messages(socket: &UnixDatagram, window: Duration) -> Vec<String> {
    let deadline = Instant::now() + window;
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(length) = socket.recv(&mut buffer) {
            received.push(String::from_utf8_lossy(&buffer[..length]).into_owned());
        }
    }
    received
}

/// READY once the daemon serves, WATCHDOG pings at half the timeout, STOPPING at SIGTERM.
fn assert_the_protocol(socket: &UnixDatagram, stop: impl FnOnce()) {
    let first = messages(socket, Duration::from_secs(3));
    assert!(
        first.first().is_some_and(|m| m.starts_with("READY=1\n")),
        "READY=1 comes first: {first:?}"
    );
    assert_eq!(
        first.iter().filter(|m| m.starts_with("READY=1")).count(),
        1,
        "{first:?}"
    );
    // A 400 ms timeout asks for a ping every 200 ms: about 15 in 3 s, at least 8 on a slow box.
    let pings = first.iter().filter(|m| *m == "WATCHDOG=1\n").count();
    assert!(pings >= 8, "{pings} watchdog pings in 3 s: {first:?}");
    stop();
    let last = messages(socket, Duration::from_millis(500));
    assert!(
        last.iter().any(|m| m.starts_with("STOPPING=1\n")),
        "STOPPING=1 at SIGTERM: {last:?}"
    );
}

#[test]
fn the_agent_tells_systemd_it_is_ready_pings_the_watchdog_and_says_when_it_stops() {
    let dir = tempfile::tempdir().unwrap();
    let (socket, path) = listen(dir.path());
    let agent = Agent::start_with_env(dir.path(), QUIET, &[], &notify_env(&path));
    assert_the_protocol(&socket, || {
        agent.stop();
    });
}

#[test]
fn the_hub_tells_systemd_it_is_ready_pings_the_watchdog_and_says_when_it_stops() {
    let dir = tempfile::tempdir().unwrap();
    let (socket, path) = listen(dir.path());
    let hub = Hub::start_with_env(
        dir.path(),
        free_port(),
        free_port(),
        &[],
        &notify_env(&path),
    );
    assert_the_protocol(&socket, || hub.stop());
}

#[test]
fn a_watchdog_meant_for_another_process_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (socket, path) = listen(dir.path());
    // systemd sets WATCHDOG_PID to the main process; a child that inherits it must not ping.
    let agent = Agent::start_with_env(
        dir.path(),
        QUIET,
        &[],
        &[notify_env(&path).as_slice(), &[("WATCHDOG_PID", "1")]].concat(),
    );
    let received = messages(&socket, Duration::from_secs(2));
    assert!(
        received.iter().any(|m| m.starts_with("READY=1")),
        "{received:?}"
    );
    assert!(
        !received.iter().any(|m| m.starts_with("WATCHDOG=1")),
        "{received:?}"
    );
    agent.stop();
}

/// A collector that dies at every start: restarted with a growing delay each time, until the
/// third failure within five minutes makes it a crash loop; then `/api/health` is degraded and
/// the watchdog pings stop, so that systemd restarts the agent.
#[test]
fn a_task_in_a_crash_loop_stops_the_watchdog() {
    let dir = tempfile::tempdir().unwrap();
    let (socket, path) = listen(dir.path());
    let config = "[host]\nenabled = true\ninterval = \"1s\"\n[jetson]\nenabled = \"off\"\n[nvml]\nenabled = \"off\"\n[processes]\nenabled = false\n[containers]\nenabled = false\n";
    let agent = Agent::start_with_env(
        dir.path(),
        config,
        &[],
        &[
            notify_env(&path).as_slice(),
            &[("OUTPOST_FAULT", "crashloop:host"), ("RUST_BACKTRACE", "0")],
        ]
        .concat(),
    );
    // Failures at 0 s, 1 s and 3 s (backoff 1 s, then 2 s). Without RUST_BACKTRACE from the test
    // runner: symbolising a debug build's backtrace at each panic takes seconds.
    let health = crate::agent::wait_until("a crash loop", Duration::from_secs(30), || {
        let (status, body) = crate::agent::http(agent.port, "GET", "/api/health", "");
        (status == 503).then_some(body)
    });
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["status"], "degraded");
    assert!(
        health["tasks"]["host"]["crash_loop"]
            .as_str()
            .is_some_and(|why| why.contains("panicked")),
        "{health}"
    );
    // Whatever was on its way, then a whole second (five ping intervals) without a ping.
    messages(&socket, Duration::from_millis(300));
    let received = messages(&socket, Duration::from_secs(1));
    assert!(
        !received.iter().any(|m| m == "WATCHDOG=1\n"),
        "{received:?}"
    );
    let log = agent.stop();
    assert!(log.contains("not feeding systemd's watchdog"), "{log}");
}
