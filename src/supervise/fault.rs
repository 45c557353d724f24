//! Faults on purpose, for the tests of supervision. `OUTPOST_FAULT` lists `KIND:TASK` items,
//! comma-separated: `panic:TASK` makes the task's first run panic, `fail:TASK` makes it return an
//! error, `crashloop:TASK` makes every run panic. Unset, as in every real deployment, nothing
//! here does anything.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use anyhow::{bail, Result};

struct Fault {
    kind: String,
    task: String,
    used: AtomicBool,
}

fn faults() -> &'static [Fault] {
    static FAULTS: OnceLock<Vec<Fault>> = OnceLock::new();
    FAULTS.get_or_init(|| {
        std::env::var("OUTPOST_FAULT")
            .unwrap_or_default()
            .split(',')
            .filter_map(|item| item.trim().split_once(':'))
            .map(|(kind, task)| Fault {
                kind: kind.to_string(),
                task: task.to_string(),
                used: AtomicBool::new(false),
            })
            .collect()
    })
}

/// Called at the start of each run of a supervised task.
pub fn inject(task: &str) -> Result<()> {
    for fault in faults().iter().filter(|f| f.task == task) {
        let first = !fault.used.swap(true, Ordering::SeqCst);
        match fault.kind.as_str() {
            "panic" if first => panic!("fault injected by OUTPOST_FAULT into {task}"),
            "fail" if first => bail!("fault injected by OUTPOST_FAULT into {task}"),
            "crashloop" => panic!("fault injected by OUTPOST_FAULT into {task}, every run"),
            _ => {}
        }
    }
    Ok(())
}
