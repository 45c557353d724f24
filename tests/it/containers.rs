//! Containers on a real kernel: the test makes a cgroup where Docker's cgroupfs driver would
//! (v1: `<controller>/docker/<id>`; v2: `<slice>/docker-<id>.scope`), puts a process that holds
//! 64 MiB and burns CPU in it, and answers the Docker Engine API on a unix socket; the agent must
//! find the container, name it through the API, read its figures, and drop it once it is gone.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::agent::{metric_value, wait_until, Agent};

const ID: &str = "0c1d2e3f4a5b6c7d8e9fa0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1";
const CONTROLLERS_V1: [&str; 5] = ["memory", "cpuacct", "cpu", "pids", "blkio"];

/// The container's cgroup directories and the process in them; removed when dropped.
struct TestContainer {
    dirs: Vec<PathBuf>,
    /// The path the agent reports as `id`.
    path: String,
    process: Child,
}

impl Drop for TestContainer {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
        for dir in self.dirs.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

impl TestContainer {
    /// A cgroup with a process in it, or why the machine does not allow one.
    fn start(root: &Path) -> Result<TestContainer, String> {
        let process = Command::new("python3")
            .args([
                "-c",
                // Memory is charged to the cgroup a process is in when it allocates: it waits
                // to be moved in first.
                "import sys, time\nsys.stdin.readline()\nheld = b'\\x01' * (64 << 20)\n\
                 print('ready', flush=True)\nend = time.time() + 120\n\
                 while time.time() < end:\n    sum(range(10000))\n",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("python3: {e}"))?;
        let mut container = TestContainer {
            dirs: Vec::new(),
            path: String::new(),
            process,
        };
        let pid = container.process.id().to_string();
        let v2 = root.join("cgroup.controllers").exists();
        let targets: Vec<PathBuf> = if v2 {
            let slice = root.join("outpost-test.slice");
            container.path = format!("/outpost-test.slice/docker-{ID}.scope");
            // Memory figures need the memory controller handed down to the slice.
            let _ = std::fs::write(root.join("cgroup.subtree_control"), "+memory +pids +io");
            vec![slice.clone(), slice.join(format!("docker-{ID}.scope"))]
        } else {
            container.path = format!("/docker/{ID}");
            CONTROLLERS_V1
                .iter()
                .flat_map(|c| {
                    [
                        root.join(c).join("docker"),
                        root.join(c).join("docker").join(ID),
                    ]
                })
                .collect()
        };
        for dir in targets {
            if dir.is_dir() {
                continue;
            }
            std::fs::create_dir(&dir).map_err(|e| format!("making {}: {e}", dir.display()))?;
            container.dirs.push(dir);
        }
        if v2 {
            let slice = root.join("outpost-test.slice");
            let _ = std::fs::write(slice.join("cgroup.subtree_control"), "+memory +pids +io");
        }
        let leaves: Vec<PathBuf> = container
            .dirs
            .iter()
            .filter(|d| d.ends_with(ID) || d.ends_with(format!("docker-{ID}.scope")))
            .cloned()
            .collect();
        for leaf in leaves {
            std::fs::write(leaf.join("cgroup.procs"), &pid)
                .map_err(|e| format!("moving the process into {}: {e}", leaf.display()))?;
        }
        // The memory is held (and charged to the cgroup) once the process says so.
        let mut stdin = container.process.stdin.take().unwrap();
        writeln!(stdin, "go").unwrap();
        let stdout = container.process.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready");
        Ok(container)
    }
}

/// The Docker Engine API's two answers the agent asks for (`GET /containers/json` and
/// `GET /containers/{id}/json`), as a real daemon gave them (`tests/data/docker/`), on a unix
/// socket: with the test's container id, and the restart count set to 2.
fn serve_docker_api(socket: &Path) {
    const RECORDED_ID: &str = "74fb52ab57ca0836ee60c3a0c4d89e607f77b82f0ad2282789887d1ba2240b85";
    // The recorded container's id (in its paths too) becomes the test's.
    let recorded = |name: &str| {
        let path = crate::agent::root().join("tests/data/docker").join(name);
        let text = std::fs::read_to_string(path).unwrap();
        assert!(text.contains(RECORDED_ID));
        serde_json::from_str::<serde_json::Value>(&text.replace(RECORDED_ID, ID)).unwrap()
    };
    let list = recorded("containers.json");
    let mut inspected = recorded("container.json");
    inspected["RestartCount"] = 2.into();
    let (list, inspected) = (list.to_string(), inspected.to_string());
    let listener = UnixListener::bind(socket).unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut request = String::new();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            if reader.read_line(&mut request).is_err() {
                continue;
            }
            let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
            let body = if path == "/containers/json" {
                &list
            } else if path == format!("/containers/{ID}/json") {
                &inspected
            } else {
                let _ = write!(stream, "HTTP/1.0 404 Not Found\r\n\r\n");
                continue;
            };
            let _ = write!(
                stream,
                "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    });
}

/// The value of the first `/metrics` line of `name` whose labels hold every one of `labels`.
fn value_with(metrics: &str, name: &str, labels: &[&str]) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let (key, value) = line.rsplit_once(' ')?;
        let matches =
            key.starts_with(&format!("{name}{{")) && labels.iter().all(|l| key.contains(l));
        matches.then(|| value.parse().ok())?
    })
}

#[test]
fn a_real_cgroup_is_read_as_a_container_and_named_by_the_docker_api() {
    let root = Path::new("/sys/fs/cgroup");
    let container = match TestContainer::start(root) {
        Ok(container) => container,
        Err(why) => {
            // Only where the machine allows cgroups to be made (root, a writable hierarchy).
            eprintln!("skipped: this machine does not let the test make a cgroup: {why}");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("docker.sock");
    serve_docker_api(&socket);
    let config = format!(
        "[host]\nenabled = false\n[jetson]\nenabled = \"off\"\n[nvml]\nenabled = \"off\"\n\
         [containers]\ninterval = \"500ms\"\ndocker_socket = \"{}\"\n\
         [processes]\ninterval = \"500ms\"\ntop = 50\n",
        socket.display()
    );
    let agent = Agent::start(dir.path(), &config, &[]);
    let id = format!("id=\"{}\"", container.path);
    let named = ["name=\"web-1\"", "image=\"outpost-test/busybox:1\""];
    let mut labels = vec![id.as_str()];
    labels.extend(named);
    let memory = wait_until("the container's memory", Duration::from_secs(30), || {
        value_with(&agent.metrics(), "container_memory_usage_bytes", &labels)
            .filter(|bytes| *bytes >= (64 << 20) as f64)
    });
    let metrics = agent.metrics();
    let working_set = value_with(&metrics, "container_memory_working_set_bytes", &labels).unwrap();
    assert!(
        working_set >= (60 << 20) as f64 && working_set <= memory,
        "{working_set} of {memory}"
    );
    let cpu = wait_until("CPU time", Duration::from_secs(30), || {
        value_with(
            &agent.metrics(),
            "container_cpu_usage_seconds_total",
            &labels,
        )
        .filter(|seconds| *seconds > 0.05)
    });
    assert!(cpu < 200.0, "{cpu}");
    eprintln!("the container: {memory} bytes, working set {working_set}, {cpu} s of CPU");
    assert_eq!(
        value_with(&metrics, "container_processes", &labels),
        Some(1.0)
    );
    assert_eq!(
        value_with(
            &metrics,
            "outpost_container_info",
            &[&id, "health=\"healthy\"", "runtime=\"docker\""]
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        value_with(&metrics, "outpost_container_restarts_total", &labels),
        Some(2.0)
    );
    assert_eq!(
        value_with(&metrics, "container_start_time_seconds", &labels),
        Some(1796552866.0)
    );
    assert_eq!(
        metric_value(&metrics, "outpost_containers_left_out"),
        Some(0.0)
    );

    // The process, among the top by memory, is put in its container.
    let pid = format!("pid=\"{}\"", container.process.id());
    let in_container = format!("container=\"{}\"", &ID[..12]);
    let held = wait_until(
        "the process in its container",
        Duration::from_secs(30),
        || {
            value_with(
                &agent.metrics(),
                "outpost_top_process_resident_memory_bytes",
                &[&pid, &in_container],
            )
        },
    );
    assert!(held >= (64 << 20) as f64, "{held}");

    // Gone: its series leave /metrics at the next round.
    drop(container);
    wait_until(
        "the container gone from /metrics",
        Duration::from_secs(30),
        || (!agent.metrics().contains(&id)).then_some(()),
    );
    agent.stop();
}

/// A Docker daemon of the test's own (`dockerd` on a socket in a temporary directory, the
/// cgroupfs driver, no network or iptables, the vfs storage driver) and its processes; stopped
/// and removed when dropped.
struct Dockerd {
    daemon: Child,
    dir: tempfile::TempDir,
}

impl Dockerd {
    fn socket(&self) -> PathBuf {
        self.dir.path().join("docker.sock")
    }

    /// `docker` on this daemon.
    fn docker(&self, args: &[&str]) -> Command {
        let mut command = Command::new("docker");
        command
            .arg("-H")
            .arg(format!("unix://{}", self.socket().display()))
            .args(args);
        command
    }

    /// The daemon, answering, with an image of Debian's static busybox; or why not.
    fn start() -> Result<Dockerd, String> {
        let busybox = ["/usr/bin/busybox", "/bin/busybox"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .ok_or("no busybox (apt-get install busybox-static)")?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = |name: &str| dir.path().join(name).display().to_string();
        let daemon = Command::new("dockerd")
            .args(["--iptables=false", "--ip6tables=false", "--bridge=none"])
            .args([
                "--storage-driver=vfs",
                "--exec-opt",
                "native.cgroupdriver=cgroupfs",
            ])
            .arg(format!("--data-root={}", path("data")))
            .arg(format!("--exec-root={}", path("exec")))
            .arg(format!("--pidfile={}", path("docker.pid")))
            .arg(format!("--host=unix://{}", path("docker.sock")))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(dir.path().join("dockerd.log")).map_err(|e| e.to_string())?,
            )
            .spawn()
            .map_err(|e| format!("dockerd: {e} (apt-get install docker.io)"))?;
        let dockerd = Dockerd { daemon, dir };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let answered = dockerd
                .docker(&["version"])
                .output()
                .is_ok_and(|o| o.status.success());
            if answered {
                break;
            }
            if std::time::Instant::now() > deadline {
                let log = std::fs::read_to_string(dockerd.dir.path().join("dockerd.log"))
                    .unwrap_or_default();
                return Err(format!(
                    "dockerd did not answer: {}",
                    log.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        // An image of one static binary: nothing to download.
        let rootfs = dockerd.dir.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).map_err(|e| e.to_string())?;
        std::fs::copy(busybox, rootfs.join("bin/busybox")).map_err(|e| e.to_string())?;
        for tool in ["sh", "sleep", "true"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(tool))
                .map_err(|e| e.to_string())?;
        }
        let tar = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .args(["-c", "."])
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let imported = dockerd
            .docker(&["import", "-", "outpost-it/busybox:1"])
            .stdin(tar.stdout.ok_or("tar's output")?)
            .output()
            .map_err(|e| e.to_string())?;
        if !imported.status.success() {
            return Err(format!(
                "docker import: {}",
                String::from_utf8_lossy(&imported.stderr)
            ));
        }
        Ok(dockerd)
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let _ = self.docker(&["rm", "-f", "outpost-it-web"]).output();
        // SIGTERM: the daemon stops its containerd and containers before it exits.
        let _ = Command::new("kill")
            .args(["-TERM", &self.daemon.id().to_string()])
            .status();
        let _ = self.daemon.wait();
    }
}

/// A container of a real Docker daemon: the agent finds it through the cgroup Docker made,
/// names it through the daemon's API, reads its memory limit and health, and drops it once it
/// is removed. Skipped where `dockerd` cannot run (no root, no cgroups it can use).
#[test]
fn a_real_docker_container_is_found_named_and_dropped() {
    let dockerd = match Dockerd::start() {
        Ok(dockerd) => dockerd,
        Err(why) => {
            eprintln!("skipped: no Docker daemon can run here: {why}");
            return;
        }
    };
    let ran = dockerd
        .docker(&[
            "run",
            "-d",
            "--name",
            "outpost-it-web",
            "--network",
            "none",
            "--memory",
            "64m",
            "--health-cmd",
            "true",
            "--health-interval",
            "1s",
            "outpost-it/busybox:1",
            "sleep",
            "100000",
        ])
        .output()
        .unwrap();
    if !ran.status.success() {
        // A daemon that answers but cannot start a container here (cgroups it may not use).
        eprintln!(
            "skipped: dockerd runs but cannot start a container here: {}",
            String::from_utf8_lossy(&ran.stderr)
        );
        return;
    }
    let id = String::from_utf8_lossy(&ran.stdout).trim().to_string();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[host]\nenabled = false\n[jetson]\nenabled = \"off\"\n[nvml]\nenabled = \"off\"\n\
         [processes]\nenabled = false\n\
         [containers]\ninterval = \"500ms\"\ndocker_socket = \"{}\"\n",
        dockerd.socket().display()
    );
    let agent = Agent::start(dir.path(), &config, &[]);
    let named = ["name=\"outpost-it-web\"", "image=\"outpost-it/busybox:1\""];
    let info = wait_until(
        "the container, named and healthy",
        // Its health is read from the daemon at each rescan (every 30 s): the first may see
        // the health check still starting.
        Duration::from_secs(75),
        || {
            let metrics = agent.metrics();
            metrics
                .lines()
                .find(|l| {
                    l.starts_with("outpost_container_info{")
                        && named.iter().all(|n| l.contains(n))
                        && l.contains("health=\"healthy\"")
                })
                .map(str::to_string)
        },
    );
    assert!(
        info.contains(&id),
        "the id is the cgroup's, which ends in the container's: {info}"
    );
    let metrics = agent.metrics();
    assert_eq!(
        value_with(&metrics, "container_spec_memory_limit_bytes", &named),
        Some((64u64 << 20) as f64)
    );
    assert!(value_with(&metrics, "container_memory_usage_bytes", &named).is_some_and(|b| b > 0.0));
    assert_eq!(
        value_with(&metrics, "container_processes", &named),
        Some(1.0)
    );
    assert_eq!(
        value_with(&metrics, "outpost_container_restarts_total", &named),
        Some(0.0)
    );
    let removed = dockerd
        .docker(&["rm", "-f", "outpost-it-web"])
        .output()
        .unwrap();
    assert!(removed.status.success());
    wait_until(
        "the container to leave /metrics",
        Duration::from_secs(30),
        || (!agent.metrics().contains("name=\"outpost-it-web\"")).then_some(()),
    );
    agent.stop();
}
