//! Keeps a message that repeats from flooding the log: a failure that recurs every second (a
//! full disk, a dead endpoint) would otherwise write megabytes a minute and bury everything
//! else. Each place in the code that logs may log [`PER_WINDOW`] events a [`WINDOW`]; what it
//! logs beyond that is counted, and the count is printed when the place next logs in a new
//! window.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::callsite::Identifier;
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

pub const WINDOW: Duration = Duration::from_secs(60);
pub const PER_WINDOW: u32 = 10;

#[derive(Debug)]
struct Window {
    started: Instant,
    logged: u32,
    dropped: u64,
}

/// The layer. `now` is injected so that the tests need not wait a minute.
pub struct RepeatLimit<W> {
    windows: Mutex<HashMap<Identifier, Window>>,
    now: fn() -> Instant,
    /// Where the count of dropped messages goes: the same place as the log.
    notices: Mutex<W>,
}

impl RepeatLimit<std::io::Stderr> {
    pub fn stderr() -> Self {
        RepeatLimit::new(Instant::now, std::io::stderr())
    }
}

impl<W: Write> RepeatLimit<W> {
    pub fn new(now: fn() -> Instant, notices: W) -> Self {
        RepeatLimit {
            windows: Mutex::new(HashMap::new()),
            now,
            notices: Mutex::new(notices),
        }
    }

    /// Whether an event from `callsite` may be logged now.
    fn admit(&self, callsite: Identifier, file: Option<&str>, line: Option<u32>) -> bool {
        let now = (self.now)();
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let window = windows.entry(callsite).or_insert(Window {
            started: now,
            logged: 0,
            dropped: 0,
        });
        if now.duration_since(window.started) >= WINDOW {
            if window.dropped > 0 {
                let mut notices = self.notices.lock().unwrap_or_else(|e| e.into_inner());
                // Best effort: a log that cannot be written has nowhere to report it.
                let _ = writeln!(
                    notices,
                    "(log) {} more messages from {}:{} were not logged in the minute before the next one",
                    window.dropped,
                    file.unwrap_or("?"),
                    line.unwrap_or(0)
                );
            }
            *window = Window {
                started: now,
                logged: 0,
                dropped: 0,
            };
        }
        if window.logged < PER_WINDOW {
            window.logged += 1;
            true
        } else {
            window.dropped += 1;
            false
        }
    }
}

impl<S: Subscriber, W: Write + 'static> Layer<S> for RepeatLimit<W> {
    fn event_enabled(&self, event: &Event<'_>, _: Context<'_, S>) -> bool {
        let metadata = event.metadata();
        self.admit(metadata.callsite(), metadata.file(), metadata.line())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, OnceLock};
    use tracing_subscriber::layer::SubscriberExt;

    static BASE: OnceLock<Instant> = OnceLock::new();
    static ELAPSED_MS: AtomicU64 = AtomicU64::new(0);

    fn fake_now() -> Instant {
        *BASE.get_or_init(Instant::now) + Duration::from_millis(ELAPSED_MS.load(Ordering::SeqCst))
    }

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    fn disk_full(i: u64) {
        tracing::error!(i, "the disk is full");
    }

    #[test]
    fn a_repeating_message_is_logged_ten_times_a_minute_and_the_rest_counted() {
        let log = Captured::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::registry()
            .with(RepeatLimit::new(fake_now, log.clone()))
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(move || writer.clone()),
            );
        tracing::subscriber::with_default(subscriber, || {
            for i in 0..1000 {
                disk_full(i);
                if i % 100 == 0 {
                    tracing::warn!("another message, from another place");
                }
            }
            assert_eq!(log.text().matches("the disk is full").count(), 10);
            assert_eq!(log.text().matches("another message").count(), 10);
            ELAPSED_MS.fetch_add(61_000, Ordering::SeqCst);
            disk_full(1000);
        });
        let text = log.text();
        assert_eq!(text.matches("the disk is full").count(), 11, "{text}");
        assert!(
            text.contains("990 more messages from src/repeat_limit.rs:"),
            "{text}"
        );
    }
}
