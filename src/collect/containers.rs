//! Containers (Docker, containerd, Podman, CRI-O), found through their cgroups and named
//! through the Docker Engine API where its socket answers, with cAdvisor's `container_*` names
//! and labels (`id` the cgroup's path, `name`, `image`) so that container dashboards work.
//!
//! A container is a cgroup whose directory names a runtime's 64-hex-digit id: `docker-<id>.scope`
//! and `docker/<id>` (Docker with the systemd or the cgroupfs driver), `libpod-<id>.scope`
//! (Podman), `cri-containerd-<id>.scope` (containerd under Kubernetes), `crio-<id>.scope`. Both
//! cgroup versions are read: v2's one hierarchy, and v1's per-controller hierarchies (JetPack
//! 4.6 still boots with v1), where one container has a directory of the same relative path in
//! each. The network counters are those of the container's network namespace, read through
//! `/proc/<pid>/net/dev` of a process in it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::Samples;
use crate::config_values::Interval;

/// The agent's `[containers]` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContainersSection {
    /// Record running containers (nothing is recorded where none runs).
    pub enabled: bool,
    pub interval: Interval,
    /// The most containers recorded; the rest are counted in `outpost_containers_left_out`.
    pub max_containers: usize,
    /// Where the cgroup file systems are mounted.
    pub cgroup_root: PathBuf,
    /// The Docker Engine API's socket, asked for names, images, health and restarts; without
    /// it containers are named by their short id.
    pub docker_socket: PathBuf,
}

impl Default for ContainersSection {
    fn default() -> Self {
        ContainersSection {
            enabled: true,
            interval: Interval::secs(10),
            max_containers: 100,
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            docker_socket: PathBuf::from("/var/run/docker.sock"),
        }
    }
}

/// How deep below the cgroup root containers are looked for (Kubernetes nests pods under
/// `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice/`).
const MAX_DEPTH: usize = 6;
/// The cgroup trees are walked again this often (and the API asked again); in between, the
/// containers found are read.
const RESCAN: Duration = Duration::from_secs(30);
/// The API gets this long to answer before the round goes on without names.
const API_TIMEOUT: Duration = Duration::from_millis(500);
/// The most time a rescan spends asking for restart counts (one request per container).
const INSPECT_BUDGET: Duration = Duration::from_millis(500);

/// The cgroup layout of the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Layout {
    /// One hierarchy at the root (`cgroup.controllers` there).
    V2(PathBuf),
    /// A hierarchy per controller, each at `root/<controller>`.
    V1(PathBuf),
}

/// A container found in the cgroup trees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The 64-hex-digit id.
    pub id: String,
    /// The cgroup's path below each hierarchy's root, with a leading `/` (cAdvisor's `id`).
    pub path: String,
    pub runtime: &'static str,
}

/// What the Docker Engine API says of a container.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Described {
    pub name: String,
    pub image: String,
    pub state: String,
    /// `healthy`, `unhealthy`, `starting`, or empty without a health check.
    pub health: String,
    pub created: Option<f64>,
    pub restarts: Option<f64>,
}

pub struct ContainersCollector {
    config: ContainersSection,
    proc_root: PathBuf,
    found: Vec<Found>,
    left_out: usize,
    described: HashMap<String, Described>,
    scanned: Option<Instant>,
}

impl ContainersCollector {
    pub fn new(config: ContainersSection) -> Self {
        Self::with_proc_root(config, Path::new("/proc"))
    }

    /// The collector over another `/proc` (fixture trees in the tests).
    pub fn with_proc_root(config: ContainersSection, proc_root: &Path) -> Self {
        ContainersCollector {
            config,
            proc_root: proc_root.to_path_buf(),
            found: Vec::new(),
            left_out: 0,
            described: HashMap::new(),
            scanned: None,
        }
    }

    pub fn collect(&mut self, out: &mut Samples) {
        let Some(layout) = layout(&self.config.cgroup_root) else {
            return;
        };
        if self.scanned.is_none_or(|at| at.elapsed() >= RESCAN) {
            self.rescan(&layout);
        }
        for container in &self.found {
            let described = self.described.get(&container.id);
            let name = described
                .map(|d| d.name.clone())
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| container.id[..12].to_string());
            let image = described.map_or("", |d| d.image.as_str());
            let labels = [
                ("id", container.path.as_str()),
                ("name", name.as_str()),
                ("image", image),
            ];
            let read = read_container(&layout, &container.path, &self.proc_root, &labels, out);
            if read {
                describe(container, described, &labels, out);
            }
        }
        // Said only where there are containers: a machine without any gets no series.
        if !self.found.is_empty() {
            out.add("outpost_containers_left_out", &[], self.left_out as f64);
        }
    }

    fn rescan(&mut self, layout: &Layout) {
        let mut found = find_containers(layout);
        found.sort_by(|a, b| a.path.cmp(&b.path));
        self.left_out = found.len().saturating_sub(self.config.max_containers);
        if self.left_out > 0 && self.found.len() < self.config.max_containers {
            tracing::warn!(
                found = found.len(),
                max = self.config.max_containers,
                "more containers than containers.max_containers: the rest are left out"
            );
        }
        found.truncate(self.config.max_containers);
        self.found = found;
        self.described = docker_containers(&self.config.docker_socket).unwrap_or_default();
        self.scanned = Some(Instant::now());
    }
}

/// The machine's layout, or `None` without cgroups there.
fn layout(root: &Path) -> Option<Layout> {
    if root.join("cgroup.controllers").exists() {
        return Some(Layout::V2(root.to_path_buf()));
    }
    // Hybrid machines mount v2 at `unified` beside the v1 controllers, which hold the figures.
    if root.join("memory").is_dir() || root.join("cpuacct").is_dir() {
        return Some(Layout::V1(root.to_path_buf()));
    }
    None
}

/// The hierarchy whose directories name the containers: v2's, or v1's memory (cpuacct where
/// there is no memory controller).
fn walk_root(layout: &Layout) -> PathBuf {
    match layout {
        Layout::V2(root) => root.clone(),
        Layout::V1(root) if root.join("memory").is_dir() => root.join("memory"),
        Layout::V1(root) => root.join("cpuacct"),
    }
}

fn find_containers(layout: &Layout) -> Vec<Found> {
    let root = walk_root(layout);
    let mut found = Vec::new();
    let mut pending = vec![(root.clone(), 0usize)];
    while let Some((dir, depth)) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let parent = dir.file_name().map(|n| n.to_string_lossy().to_string());
            match container_of(&name, parent.as_deref().unwrap_or("")) {
                // A container's own child cgroups belong to it.
                Some((id, runtime)) => {
                    let relative = path.strip_prefix(&root).unwrap_or(&path);
                    found.push(Found {
                        id,
                        path: format!("/{}", relative.to_string_lossy()),
                        runtime,
                    });
                }
                None if depth + 1 < MAX_DEPTH => pending.push((path, depth + 1)),
                None => {}
            }
        }
    }
    found
}

/// The container id and runtime a cgroup directory's name gives, if it names one.
pub fn container_of(name: &str, parent: &str) -> Option<(String, &'static str)> {
    let scoped = name.strip_suffix(".scope");
    let (id, runtime) = match scoped {
        Some(scope) => {
            let (prefix, id) = scope.rsplit_once('-')?;
            let runtime = match prefix {
                "docker" => "docker",
                "libpod" => "podman",
                "cri-containerd" => "containerd",
                "crio" => "cri-o",
                _ => return None,
            };
            (id, runtime)
        }
        // The cgroupfs drivers put the id alone under a directory of the runtime's name.
        None => {
            let runtime = match parent {
                "docker" => "docker",
                "libpod_parent" => "podman",
                _ if parent.starts_with("kubepods") || parent.starts_with("pod") => "containerd",
                _ => return None,
            };
            (name, runtime)
        }
    };
    let is_id = id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit());
    is_id.then(|| (id.to_ascii_lowercase(), runtime))
}

/// Reads one container's figures; false when its cgroup has gone.
fn read_container(
    layout: &Layout,
    path: &str,
    proc_root: &Path,
    labels: &[(&str, &str)],
    out: &mut Samples,
) -> bool {
    let relative = path.trim_start_matches('/');
    let figures = match layout {
        Layout::V2(root) => read_v2(&root.join(relative)),
        Layout::V1(root) => read_v1(root, relative),
    };
    let Some(figures) = figures else {
        return false;
    };
    figures.emit(labels, out);
    if let Some(pid) = figures.first_pid {
        network(proc_root, pid, labels, out);
    }
    true
}

/// One container's figures, whichever the cgroup version.
#[derive(Debug, Default, PartialEq)]
pub struct Figures {
    pub cpu_usage: Option<f64>,
    pub cpu_user: Option<f64>,
    pub cpu_system: Option<f64>,
    pub cfs_periods: Option<f64>,
    pub cfs_throttled_periods: Option<f64>,
    pub cfs_throttled_seconds: Option<f64>,
    pub memory_usage: Option<f64>,
    pub memory_working_set: Option<f64>,
    pub memory_rss: Option<f64>,
    pub memory_cache: Option<f64>,
    pub memory_mapped_file: Option<f64>,
    pub memory_swap: Option<f64>,
    pub memory_limit: Option<f64>,
    pub memory_failcnt: Option<f64>,
    pub oom_kills: Option<f64>,
    /// Per block device (`major:minor`): bytes read and written, reads and writes.
    pub io: BTreeMap<String, [Option<f64>; 4]>,
    pub processes: Option<f64>,
    pub threads: Option<f64>,
    pub first_pid: Option<u32>,
}

impl Figures {
    fn emit(&self, labels: &[(&str, &str)], out: &mut Samples) {
        let mut with_cpu = labels.to_vec();
        with_cpu.push(("cpu", "total"));
        let gauges = [
            (
                "container_cpu_usage_seconds_total",
                self.cpu_usage,
                &with_cpu[..],
            ),
            ("container_cpu_user_seconds_total", self.cpu_user, labels),
            (
                "container_cpu_system_seconds_total",
                self.cpu_system,
                labels,
            ),
            ("container_cpu_cfs_periods_total", self.cfs_periods, labels),
            (
                "container_cpu_cfs_throttled_periods_total",
                self.cfs_throttled_periods,
                labels,
            ),
            (
                "container_cpu_cfs_throttled_seconds_total",
                self.cfs_throttled_seconds,
                labels,
            ),
            ("container_memory_usage_bytes", self.memory_usage, labels),
            (
                "container_memory_working_set_bytes",
                self.memory_working_set,
                labels,
            ),
            ("container_memory_rss", self.memory_rss, labels),
            ("container_memory_cache", self.memory_cache, labels),
            (
                "container_memory_mapped_file",
                self.memory_mapped_file,
                labels,
            ),
            ("container_memory_swap", self.memory_swap, labels),
            (
                "container_spec_memory_limit_bytes",
                self.memory_limit,
                labels,
            ),
            ("container_memory_failcnt", self.memory_failcnt, labels),
            ("container_oom_events_total", self.oom_kills, labels),
            ("container_processes", self.processes, labels),
            ("container_threads", self.threads, labels),
        ];
        for (name, value, labels) in gauges {
            if let Some(value) = value {
                out.add(name, labels, value);
            }
        }
        for (device, values) in &self.io {
            let mut with_device = labels.to_vec();
            with_device.push(("device", device.as_str()));
            let names = [
                "container_fs_reads_bytes_total",
                "container_fs_writes_bytes_total",
                "container_fs_reads_total",
                "container_fs_writes_total",
            ];
            for (name, value) in names.iter().zip(values) {
                if let Some(value) = value {
                    out.add(name, &with_device, *value);
                }
            }
        }
    }
}

/// `key value` lines (`cpu.stat`, `memory.stat`, `memory.events`, `cpuacct.stat`).
pub fn flat_keyed(text: &str) -> HashMap<&str, f64> {
    text.lines()
        .filter_map(|line| {
            let (key, value) = line.split_once(' ')?;
            Some((key, value.trim().parse().ok()?))
        })
        .collect()
}

fn read_file(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

fn number(path: &Path) -> Option<f64> {
    read_file(path)?.trim().parse().ok()
}

/// The processes in the cgroup (`cgroup.procs`): how many, and one of them.
fn procs(dir: &Path) -> (Option<f64>, Option<u32>) {
    let Some(text) = read_file(&dir.join("cgroup.procs")) else {
        return (None, None);
    };
    let pids: Vec<u32> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
    (Some(pids.len() as f64), pids.first().copied())
}

/// A v2 cgroup's figures (the kernel's `Documentation/admin-guide/cgroup-v2.rst` formats).
pub fn read_v2(dir: &Path) -> Option<Figures> {
    if !dir.is_dir() {
        return None;
    }
    let mut figures = Figures::default();
    if let Some(text) = read_file(&dir.join("cpu.stat")) {
        let stat = flat_keyed(&text);
        let seconds = |key: &str| stat.get(key).map(|us| us / 1e6);
        figures.cpu_usage = seconds("usage_usec");
        figures.cpu_user = seconds("user_usec");
        figures.cpu_system = seconds("system_usec");
        figures.cfs_periods = stat.get("nr_periods").copied();
        figures.cfs_throttled_periods = stat.get("nr_throttled").copied();
        figures.cfs_throttled_seconds = seconds("throttled_usec");
    }
    figures.memory_usage = number(&dir.join("memory.current"));
    if let Some(text) = read_file(&dir.join("memory.stat")) {
        let stat = flat_keyed(&text);
        figures.memory_rss = stat.get("anon").copied();
        figures.memory_cache = stat.get("file").copied();
        figures.memory_mapped_file = stat.get("file_mapped").copied();
        figures.memory_working_set = working_set(figures.memory_usage, stat.get("inactive_file"));
    }
    figures.memory_swap = number(&dir.join("memory.swap.current"));
    // `max` reads as no number: no limit.
    figures.memory_limit = number(&dir.join("memory.max"));
    if let Some(text) = read_file(&dir.join("memory.events")) {
        let events = flat_keyed(&text);
        figures.oom_kills = events.get("oom_kill").copied();
        figures.memory_failcnt = events.get("max").copied();
    }
    if let Some(text) = read_file(&dir.join("io.stat")) {
        figures.io = io_stat_v2(&text);
    }
    (figures.processes, figures.first_pid) = procs(dir);
    figures.threads = number(&dir.join("pids.current"));
    Some(figures)
}

/// cAdvisor's working set: what is in use less what the kernel may take back first.
fn working_set(usage: Option<f64>, inactive_file: Option<&f64>) -> Option<f64> {
    let usage = usage?;
    Some((usage - inactive_file.copied().unwrap_or(0.0)).max(0.0))
}

/// v2's `io.stat`: `MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=.. ...` per device.
pub fn io_stat_v2(text: &str) -> BTreeMap<String, [Option<f64>; 4]> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let mut fields = line.split_ascii_whitespace();
        let Some(device) = fields.next() else {
            continue;
        };
        let mut values = [None; 4];
        for field in fields {
            let Some((key, value)) = field.split_once('=') else {
                continue;
            };
            let slot = match key {
                "rbytes" => 0,
                "wbytes" => 1,
                "rios" => 2,
                "wios" => 3,
                _ => continue,
            };
            values[slot] = value.parse().ok();
        }
        out.insert(device.to_string(), values);
    }
    out
}

/// A v1 container's figures, from the same relative path in each controller's hierarchy.
pub fn read_v1(root: &Path, relative: &str) -> Option<Figures> {
    let controller = |name: &str| root.join(name).join(relative);
    let memory = controller("memory");
    let cpuacct = controller("cpuacct");
    if !memory.is_dir() && !cpuacct.is_dir() {
        return None;
    }
    let mut figures = Figures {
        cpu_usage: number(&cpuacct.join("cpuacct.usage")).map(|ns| ns / 1e9),
        ..Figures::default()
    };
    if let Some(text) = read_file(&cpuacct.join("cpuacct.stat")) {
        // In clock ticks (USER_HZ).
        let stat = flat_keyed(&text);
        let ticks = super::host::ticks_per_second();
        figures.cpu_user = stat.get("user").map(|t| t / ticks);
        figures.cpu_system = stat.get("system").map(|t| t / ticks);
    }
    if let Some(text) = read_file(&controller("cpu").join("cpu.stat")) {
        let stat = flat_keyed(&text);
        figures.cfs_periods = stat.get("nr_periods").copied();
        figures.cfs_throttled_periods = stat.get("nr_throttled").copied();
        figures.cfs_throttled_seconds = stat.get("throttled_time").map(|ns| ns / 1e9);
    }
    figures.memory_usage = number(&memory.join("memory.usage_in_bytes"));
    if let Some(text) = read_file(&memory.join("memory.stat")) {
        let stat = flat_keyed(&text);
        figures.memory_rss = stat.get("total_rss").copied();
        figures.memory_cache = stat.get("total_cache").copied();
        figures.memory_mapped_file = stat.get("total_mapped_file").copied();
        figures.memory_working_set =
            working_set(figures.memory_usage, stat.get("total_inactive_file"));
    }
    // v1 writes "no limit" as the largest page-aligned number: past 2^62 is none.
    figures.memory_limit =
        number(&memory.join("memory.limit_in_bytes")).filter(|l| *l < 2f64.powi(62));
    figures.memory_failcnt = number(&memory.join("memory.failcnt"));
    if let (Some(both), Some(usage)) = (
        number(&memory.join("memory.memsw.usage_in_bytes")),
        figures.memory_usage,
    ) {
        figures.memory_swap = Some((both - usage).max(0.0));
    }
    if let Some(text) = read_file(&memory.join("memory.oom_control")) {
        figures.oom_kills = flat_keyed(&text).get("oom_kill").copied();
    }
    let blkio = controller("blkio");
    let bytes = read_file(&blkio.join("blkio.throttle.io_service_bytes_recursive"));
    let ios = read_file(&blkio.join("blkio.throttle.io_serviced_recursive"));
    figures.io = io_stat_v1(bytes.as_deref(), ios.as_deref());
    let procs_dir = if memory.is_dir() { memory } else { cpuacct };
    (figures.processes, figures.first_pid) = procs(&procs_dir);
    figures.threads = number(&controller("pids").join("pids.current"));
    Some(figures)
}

/// v1's `blkio.throttle.io_service_bytes_recursive` and `io_serviced_recursive`:
/// `MAJ:MIN Read N` and `MAJ:MIN Write N` lines (and a `Total` line without a device).
pub fn io_stat_v1(bytes: Option<&str>, ios: Option<&str>) -> BTreeMap<String, [Option<f64>; 4]> {
    let mut out: BTreeMap<String, [Option<f64>; 4]> = BTreeMap::new();
    for (text, offset) in [(bytes, 0), (ios, 2)] {
        for line in text.unwrap_or("").lines() {
            let fields: Vec<&str> = line.split_ascii_whitespace().collect();
            let [device, operation, value] = fields[..] else {
                continue;
            };
            let slot = match operation {
                "Read" => offset,
                "Write" => offset + 1,
                _ => continue,
            };
            let entry = out.entry(device.to_string()).or_default();
            entry[slot] = value.parse().ok();
        }
    }
    out
}

/// The container's network counters, from a process in it; none when it shares the host's
/// network namespace (those are the host's, in `node_network_*`).
fn network(proc_root: &Path, pid: u32, labels: &[(&str, &str)], out: &mut Samples) {
    let namespace = |dir: &Path| std::fs::read_link(dir.join("ns/net")).ok();
    let process = proc_root.join(pid.to_string());
    let own = namespace(&proc_root.join("self"));
    if own.is_some() && namespace(&process) == own {
        return;
    }
    let Some(text) = read_file(&process.join("net/dev")) else {
        return;
    };
    const NAMES: [(usize, &str); 8] = [
        (0, "container_network_receive_bytes_total"),
        (1, "container_network_receive_packets_total"),
        (2, "container_network_receive_errors_total"),
        (3, "container_network_receive_packets_dropped_total"),
        (8, "container_network_transmit_bytes_total"),
        (9, "container_network_transmit_packets_total"),
        (10, "container_network_transmit_errors_total"),
        (11, "container_network_transmit_packets_dropped_total"),
    ];
    for line in text.lines() {
        let Some((interface, counters)) = line.split_once(':') else {
            continue;
        };
        let interface = interface.trim();
        if interface.is_empty() || interface == "lo" {
            continue;
        }
        let values: Vec<f64> = counters
            .split_ascii_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        if values.len() < 16 {
            continue;
        }
        let mut with_interface = labels.to_vec();
        with_interface.push(("interface", interface));
        for (field, name) in NAMES {
            out.add(name, &with_interface, values[field]);
        }
    }
}

/// What the API adds: state, health and restarts, and the start time.
fn describe(
    container: &Found,
    described: Option<&Described>,
    labels: &[(&str, &str)],
    out: &mut Samples,
) {
    let state = described.map_or("running", |d| d.state.as_str());
    let health = described.map_or("", |d| d.health.as_str());
    let mut info = labels.to_vec();
    info.extend([
        ("runtime", container.runtime),
        ("state", state),
        ("health", health),
    ]);
    out.add("outpost_container_info", &info, 1.0);
    if let Some(described) = described {
        if let Some(created) = described.created {
            out.add("container_start_time_seconds", labels, created);
        }
        if let Some(restarts) = described.restarts {
            out.add("outpost_container_restarts_total", labels, restarts);
        }
    }
}

/// The Engine API's `GET /containers/json` list, in the shape its reference documents.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListedContainer {
    id: String,
    #[serde(default)]
    names: Vec<String>,
    #[serde(default)]
    image: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    created: Option<f64>,
}

/// `GET /containers/{id}/json`, for the restart count (the list does not carry it).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InspectedContainer {
    #[serde(default)]
    restart_count: Option<f64>,
}

/// Every running container the Docker daemon lists, by id; `None` when its socket does not
/// answer (no Docker, or no right to it).
pub fn docker_containers(socket: &Path) -> Option<HashMap<String, Described>> {
    let body = unix_get(socket, "/containers/json")?;
    let listed: Vec<ListedContainer> = serde_json::from_slice(&body)
        .map_err(|error| tracing::debug!(%error, "the Docker API's container list"))
        .ok()?;
    let mut out = HashMap::new();
    let started = Instant::now();
    for container in listed {
        let inspected = (started.elapsed() < INSPECT_BUDGET)
            .then(|| unix_get(socket, &format!("/containers/{}/json", container.id)))
            .flatten();
        let restarts = inspected
            .and_then(|body| serde_json::from_slice::<InspectedContainer>(&body).ok())
            .and_then(|inspected| inspected.restart_count);
        let name = container
            .names
            .first()
            .map(|n| n.trim_start_matches('/').to_string())
            .unwrap_or_default();
        out.insert(
            container.id.to_ascii_lowercase(),
            Described {
                name,
                image: container.image,
                state: container.state,
                health: health_of(&container.status).to_string(),
                created: container.created,
                restarts,
            },
        );
    }
    Some(out)
}

/// The health the list's status text ends with: `Up 5 minutes (healthy)`.
pub fn health_of(status: &str) -> &'static str {
    if status.ends_with("(healthy)") {
        "healthy"
    } else if status.ends_with("(unhealthy)") {
        "unhealthy"
    } else if status.ends_with("(health: starting)") {
        "starting"
    } else {
        ""
    }
}

/// The most bytes an API answer may have: a list of a few hundred containers is well under.
const MAX_ANSWER: usize = 8 << 20;

/// A GET over the daemon's unix socket (HTTP/1.0, so that the answer ends with the connection
/// and needs no chunked decoding); the body of a 200 answer.
fn unix_get(socket: &Path, path: &str) -> Option<Vec<u8>> {
    use std::io::{Read, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(socket).ok()?;
    stream.set_read_timeout(Some(API_TIMEOUT)).ok()?;
    stream.set_write_timeout(Some(API_TIMEOUT)).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: docker\r\n\r\n").ok()?;
    let mut answer = Vec::new();
    stream
        .take(MAX_ANSWER as u64 + 1)
        .read_to_end(&mut answer)
        .ok()?;
    if answer.len() > MAX_ANSWER {
        return None;
    }
    let split = answer.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&answer[..split]).ok()?;
    let status = head.split_ascii_whitespace().nth(1)?;
    (status == "200").then(|| answer[split + 4..].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4e8a1b2c3d4e5f60718293a4b5c6d7e8f90123456789abcdef0123456789ab";

    #[test]
    fn cgroup_names_of_each_runtime_and_driver() {
        let cases = [
            (format!("docker-{ID}.scope"), "system.slice", Some("docker")),
            (ID.to_string(), "docker", Some("docker")),
            (
                format!("libpod-{ID}.scope"),
                "machine.slice",
                Some("podman"),
            ),
            (
                format!("cri-containerd-{ID}.scope"),
                "kubepods-besteffort-pod1.slice",
                Some("containerd"),
            ),
            (format!("crio-{ID}.scope"), "kubepods.slice", Some("cri-o")),
            (ID.to_string(), "user.slice", None),
            (format!("docker-{}.scope", &ID[..63]), "system.slice", None),
            ("docker.service".to_string(), "system.slice", None),
            (format!("session-{ID}.scope"), "user.slice", None),
        ];
        for (name, parent, runtime) in cases {
            let found = container_of(&name, parent);
            assert_eq!(
                found.as_ref().map(|f| f.1),
                runtime,
                "{name} under {parent}"
            );
            if let Some((id, _)) = found {
                assert_eq!(id, ID);
            }
        }
    }

    #[test]
    fn v2_files_in_the_kernels_formats() {
        let dir = tempfile::tempdir().unwrap();
        let files = [
            ("cpu.stat", "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\nnr_periods 10\nnr_throttled 2\nthrottled_usec 300000\n"),
            ("memory.current", "104857600\n"),
            ("memory.stat", "anon 52428800\nfile 41943040\nfile_mapped 4096\ninactive_file 20971520\n"),
            ("memory.max", "max\n"),
            ("memory.swap.current", "0\n"),
            ("memory.events", "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n"),
            ("io.stat", "8:0 rbytes=1024 wbytes=2048 rios=3 wios=4 dbytes=0 dios=0\n"),
            ("cgroup.procs", "4242\n4243\n"),
            ("pids.current", "7\n"),
        ];
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let figures = read_v2(dir.path()).unwrap();
        assert_eq!(figures.cpu_usage, Some(2.5));
        assert_eq!(figures.cfs_throttled_seconds, Some(0.3));
        assert_eq!(figures.memory_working_set, Some(83886080.0));
        assert_eq!(figures.memory_limit, None, "max is no limit");
        assert_eq!(figures.oom_kills, Some(1.0));
        assert_eq!(
            figures.io["8:0"],
            [Some(1024.0), Some(2048.0), Some(3.0), Some(4.0)]
        );
        assert_eq!(
            (figures.processes, figures.first_pid),
            (Some(2.0), Some(4242))
        );
        assert_eq!(figures.threads, Some(7.0));
    }

    /// A number from a recorded file, for the expectations: read apart from the collector.
    fn recorded(path: &Path, key: Option<&str>) -> f64 {
        let text = std::fs::read_to_string(path).unwrap();
        let value = match key {
            None => text.trim().to_string(),
            Some(key) => text
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{key} ")))
                .unwrap()
                .to_string(),
        };
        value.parse().unwrap()
    }

    #[test]
    fn a_v1_tree_recorded_on_a_real_machine() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/cgroups/v1");
        let id = "0c1d2e3f4a5b6c7d8e9fa0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1";
        let layout = layout(&root).unwrap();
        assert_eq!(layout, Layout::V1(root.clone()));
        let found = find_containers(&layout);
        assert_eq!(
            found,
            [Found {
                id: id.into(),
                path: format!("/docker/{id}"),
                runtime: "docker"
            }]
        );
        let figures = read_v1(&root, &format!("docker/{id}")).unwrap();
        let memory = root.join("memory/docker").join(id);
        let usage = recorded(&memory.join("memory.usage_in_bytes"), None);
        assert_eq!(figures.memory_usage, Some(usage));
        let stat = memory.join("memory.stat");
        assert_eq!(figures.memory_rss, Some(recorded(&stat, Some("total_rss"))));
        let inactive = recorded(&stat, Some("total_inactive_file"));
        assert_eq!(figures.memory_working_set, Some(usage - inactive));
        assert_eq!(figures.memory_limit, None, "v1's \"no limit\" is none");
        let cpu = recorded(
            &root.join("cpuacct/docker").join(id).join("cpuacct.usage"),
            None,
        );
        assert_eq!(figures.cpu_usage, Some(cpu / 1e9));
        assert!(figures.cpu_user.unwrap() > 0.0);
        assert_eq!(figures.processes, Some(1.0));
        assert!(figures.first_pid.is_some());
    }

    #[test]
    fn containers_past_the_bound_are_counted_not_recorded() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("cgroup.controllers"), "cpu memory\n").unwrap();
        let slice = root.path().join("system.slice");
        for i in 0..3 {
            let id = format!("{i}{}", &ID[1..]);
            let dir = slice.join(format!("docker-{id}.scope"));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("memory.current"), "1000\n").unwrap();
        }
        let config = ContainersSection {
            max_containers: 2,
            cgroup_root: root.path().to_path_buf(),
            docker_socket: root.path().join("no-docker.sock"),
            ..ContainersSection::default()
        };
        let mut collector = ContainersCollector::new(config);
        let mut out = Samples::new();
        collector.collect(&mut out);
        let lines = crate::collect::render(out);
        let usage: Vec<&String> = lines
            .iter()
            .filter(|l| l.starts_with("container_memory_usage_bytes"))
            .collect();
        assert_eq!(usage.len(), 2, "{lines:?}");
        assert!(
            lines.contains(&"outpost_containers_left_out 1".to_string()),
            "{lines:?}"
        );
        // Without the API, a container is named by its short id.
        assert!(
            usage[0].contains(&format!("name=\"0{}\"", &ID[1..12])),
            "{usage:?}"
        );
    }

    #[test]
    fn v1_blkio_lines() {
        let bytes = "8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 0\n8:0 Total 12288\nTotal 12288\n";
        let ios = "8:0 Read 1\n8:0 Write 2\nTotal 3\n";
        let io = io_stat_v1(Some(bytes), Some(ios));
        assert_eq!(io.len(), 1);
        assert_eq!(
            io["8:0"],
            [Some(4096.0), Some(8192.0), Some(1.0), Some(2.0)]
        );
    }

    #[test]
    fn health_from_the_status_text() {
        assert_eq!(health_of("Up 5 minutes (healthy)"), "healthy");
        assert_eq!(health_of("Up 1 second (health: starting)"), "starting");
        assert_eq!(health_of("Up 2 hours (unhealthy)"), "unhealthy");
        assert_eq!(health_of("Up 2 hours"), "");
    }
}
