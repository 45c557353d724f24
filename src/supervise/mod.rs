//! Long-lived tasks (collectors, the uplink, alert channels) under supervision: a task that panics or returns an
//! error is logged, counted and started again after a growing delay, instead of ending silently
//! while the rest of the agent carries on. A task that keeps failing (a crash loop) makes the
//! agent stop feeding systemd's watchdog, so that systemd restarts the whole process.

#![deny(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::task::{JoinHandle, JoinSet};

mod fault;

/// The first restart's delay; it doubles up to [`MAX_BACKOFF`], and starts over once a run has
/// lasted [`HEALTHY_RUN`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
const HEALTHY_RUN: Duration = Duration::from_secs(600);
/// This many failures of one task within [`CRASH_LOOP_WINDOW`] is a crash loop.
const CRASH_LOOP_FAILURES: usize = 3;
const CRASH_LOOP_WINDOW: Duration = Duration::from_secs(300);

#[derive(Debug, Default)]
struct TaskRecord {
    restarts: u64,
    recent_failures: Vec<Instant>,
    last_failure: Option<String>,
}

/// What every supervised task has been through; shared with `/api/health`, the self-metrics
/// and the watchdog.
#[derive(Debug, Default)]
pub struct Tasks {
    records: Mutex<BTreeMap<String, TaskRecord>>,
}

impl Tasks {
    fn failed(&self, name: &str, why: &str, now: Instant) {
        let mut records = self.records.lock().expect("task records lock");
        let record = records.entry(name.to_string()).or_default();
        record.restarts += 1;
        record.recent_failures.push(now);
        record
            .recent_failures
            .retain(|at| now.duration_since(*at) < CRASH_LOOP_WINDOW);
        record.last_failure = Some(why.to_string());
    }

    /// Restarts per task since the agent started.
    pub fn restarts(&self) -> Vec<(String, u64)> {
        let records = self.records.lock().expect("task records lock");
        records
            .iter()
            .map(|(name, record)| (name.clone(), record.restarts))
            .collect()
    }

    /// Tasks in a crash loop now, with their last failure.
    pub fn crash_looping(&self, now: Instant) -> Vec<(String, String)> {
        let records = self.records.lock().expect("task records lock");
        records
            .iter()
            .filter(|(_, record)| {
                record
                    .recent_failures
                    .iter()
                    .filter(|at| now.duration_since(**at) < CRASH_LOOP_WINDOW)
                    .count()
                    >= CRASH_LOOP_FAILURES
            })
            .map(|(name, record)| {
                (
                    name.clone(),
                    record.last_failure.clone().unwrap_or_default(),
                )
            })
            .collect()
    }
}

/// Aborts the task when dropped: aborting a supervisor (at shutdown, or a SIGHUP's restart of
/// the collectors) must take the task it watches with it.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// [`spawn`] for a task that runs until it is stopped and has no error to return (a collector's
/// loop): only a panic ends a run early, and the task is started again.
pub fn spawn_loop<F, Fut>(set: &mut JoinSet<()>, tasks: &Arc<Tasks>, name: &str, mut make: F)
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    spawn(set, tasks, name, move || {
        let run = make();
        async move {
            run.await;
            Ok(())
        }
    });
}

/// Runs `make()`'s task in `set` under supervision. A run that ends with `Ok` (a replay that
/// reached its end, a stop that was asked for) ends the supervision.
pub fn spawn<F, Fut>(set: &mut JoinSet<()>, tasks: &Arc<Tasks>, name: &str, mut make: F)
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    spawn_erased(set, tasks, name, Box::new(move || Box::pin(make())));
}

/// A run of a supervised task, its type erased.
type Run = std::pin::Pin<Box<dyn Future<Output = Result<()>> + Send>>;

/// [`spawn`] made once for every task: the runtime's task machinery is generated per future
/// type, twice per supervised task when each had its own: 250 KB of the Jetson binary.
fn spawn_erased(
    set: &mut JoinSet<()>,
    tasks: &Arc<Tasks>,
    name: &str,
    mut make: Box<dyn FnMut() -> Run + Send>,
) {
    let tasks = tasks.clone();
    let name = name.to_string();
    set.spawn(async move {
        let mut backoff = FIRST_BACKOFF;
        loop {
            let started = Instant::now();
            let run = make();
            let task_name = name.clone();
            let mut handle = AbortOnDrop(tokio::spawn(async move {
                fault::inject(&task_name)?;
                run.await
            }));
            let why = match (&mut handle.0).await {
                Ok(Ok(())) => return,
                Ok(Err(error)) => format!("{error:#}"),
                Err(error) if error.is_panic() => panic_message(error.into_panic()),
                Err(_) => return,
            };
            tasks.failed(&name, &why, Instant::now());
            if started.elapsed() >= HEALTHY_RUN {
                backoff = FIRST_BACKOFF;
            }
            tracing::error!(task = %name, restart_in = ?backoff, "task failed: {why}");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    });
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into());
    format!("panicked: {text}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_failures_within_five_minutes_are_a_crash_loop() {
        let tasks = Tasks::default();
        let start = Instant::now();
        tasks.failed("host", "boom", start);
        tasks.failed("host", "boom", start + Duration::from_secs(100));
        assert!(tasks
            .crash_looping(start + Duration::from_secs(101))
            .is_empty());
        tasks.failed("host", "boom again", start + Duration::from_secs(200));
        assert_eq!(
            tasks.crash_looping(start + Duration::from_secs(201)),
            vec![("host".to_string(), "boom again".to_string())]
        );
        // The first failure leaves the window: no longer a loop.
        assert!(tasks
            .crash_looping(start + Duration::from_secs(301))
            .is_empty());
        assert_eq!(tasks.restarts(), vec![("host".to_string(), 3)]);
    }
}
