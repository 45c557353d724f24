//! The agent's own cost under the names that every Prometheus client library gives its process
//! (`process_cpu_seconds_total`, `process_resident_memory_bytes`, `process_open_fds`...), so that
//! the "exporter" panels of dashboards made for node_exporter chart the agent that replaced it.

use std::path::Path;

use super::Samples;

/// What `/proc/<pid>/stat` says of a process, in the units the kernel counts in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stat {
    /// User plus system time, in clock ticks.
    pub cpu_ticks: f64,
    /// Start, in clock ticks after boot.
    pub start_ticks: f64,
    pub virtual_bytes: f64,
    pub resident_pages: f64,
}

/// Parses `/proc/<pid>/stat`. The command name in parentheses may hold spaces and parentheses,
/// so fields are counted after the last `)`.
pub fn parse_stat(stat: &str) -> Option<Stat> {
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_ascii_whitespace().collect();
    // Numbered as in proc(5): the state is field 3, the first after the name.
    let field = |n: usize| fields.get(n - 3)?.parse::<f64>().ok();
    Some(Stat {
        cpu_ticks: field(14)? + field(15)?,
        start_ticks: field(22)?,
        virtual_bytes: field(23)?,
        resident_pages: field(24)?,
    })
}

/// The boot time (`btime`, seconds since the epoch) from `/proc/stat`.
pub fn boot_time(proc_stat: &str) -> Option<f64> {
    proc_stat
        .lines()
        .find_map(|line| line.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

/// A soft limit from `/proc/<pid>/limits` (`Max open files`, `Max address space`), with
/// "unlimited" as the largest 64-bit count, as the client libraries report it.
pub fn soft_limit(limits: &str, name: &str) -> Option<f64> {
    let rest = limits.lines().find_map(|line| line.strip_prefix(name))?;
    match rest.split_ascii_whitespace().next()? {
        "unlimited" => Some(u64::MAX as f64),
        soft => soft.parse().ok(),
    }
}

/// The process figures of the process whose `/proc` directory is `process_dir`, with the
/// machine's `/proc/stat` for its start time.
pub fn figures(
    process_dir: &Path,
    proc_stat: &Path,
    ticks_per_second: f64,
    page_bytes: f64,
    out: &mut Samples,
) {
    let read = |path: &Path| std::fs::read_to_string(path).ok();
    if let Some(stat) = read(&process_dir.join("stat")).and_then(|s| parse_stat(&s)) {
        let cpu = stat.cpu_ticks / ticks_per_second;
        out.add("process_cpu_seconds_total", &[], cpu);
        let resident = stat.resident_pages * page_bytes;
        out.add("process_resident_memory_bytes", &[], resident);
        out.add("process_virtual_memory_bytes", &[], stat.virtual_bytes);
        if let Some(boot) = read(proc_stat).and_then(|s| boot_time(&s)) {
            let start = boot + stat.start_ticks / ticks_per_second;
            out.add("process_start_time_seconds", &[], start);
        }
    }
    if let Ok(descriptors) = std::fs::read_dir(process_dir.join("fd")) {
        out.add("process_open_fds", &[], descriptors.count() as f64);
    }
    if let Some(limits) = read(&process_dir.join("limits")) {
        if let Some(files) = soft_limit(&limits, "Max open files") {
            out.add("process_max_fds", &[], files);
        }
        if let Some(bytes) = soft_limit(&limits, "Max address space") {
            out.add("process_virtual_memory_max_bytes", &[], bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_limits_and_boot_time_as_the_kernel_writes_them() {
        // A real /proc/<pid>/stat line, its name changed to one with a space and a parenthesis.
        let stat = "4242 (out post) R) S 1 4242 4242 0 -1 4194560 2893 0 0 0 150 25 0 0 20 0 9 0 \
                    123456 1046941696 3768 18446744073709551615 1 1 0 0 0 0 0 4096 17663 0 0 0 17 \
                    1 0 0 0 0 0";
        let parsed = parse_stat(stat).unwrap();
        assert_eq!(
            parsed,
            Stat {
                cpu_ticks: 175.0,
                start_ticks: 123_456.0,
                virtual_bytes: 1_046_941_696.0,
                resident_pages: 3768.0,
            }
        );
        assert_eq!(parse_stat("4242 (cut short) S 1 2"), None);
        assert_eq!(
            boot_time("cpu  1 2 3\nintr 5\nbtime 1796600000\nprocesses 9\n"),
            Some(1_796_600_000.0)
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n\
                      Max address space         unlimited            unlimited            bytes\n";
        assert_eq!(soft_limit(limits, "Max open files"), Some(1024.0));
        assert_eq!(
            soft_limit(limits, "Max address space"),
            Some(18_446_744_073_709_551_615.0)
        );
        assert_eq!(soft_limit(limits, "Max processes"), None);
    }

    #[test]
    fn this_process_has_its_figures_and_an_opened_file_counts() {
        let self_dir = Path::new("/proc/self");
        let proc_stat = Path::new("/proc/stat");
        let collect = || {
            let mut out = Samples::new();
            figures(self_dir, proc_stat, 100.0, 4096.0, &mut out);
            out.values
                .into_iter()
                .map(|(key, value)| (key.name().to_string(), value))
                .collect::<std::collections::BTreeMap<_, _>>()
        };
        let before = collect();
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_virtual_memory_bytes",
            "process_start_time_seconds",
            "process_open_fds",
            "process_max_fds",
            "process_virtual_memory_max_bytes",
        ] {
            assert!(before.contains_key(name), "{name}: {before:?}");
        }
        let now = outpost::timearg::now_ms() as f64 / 1000.0;
        let started = before["process_start_time_seconds"];
        assert!(
            started <= now + 1.0 && started > now - 86_400.0,
            "{started}"
        );
        // Other test threads open and close files too; many opened here must show.
        let held: Vec<_> = (0..64)
            .map(|_| std::fs::File::open("/proc/self/stat").unwrap())
            .collect();
        let during = collect();
        assert!(during["process_open_fds"] >= 64.0, "{before:?} {during:?}");
        drop(held);
    }
}
