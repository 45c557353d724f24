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

/// The Docker Engine API's two answers the agent asks for, in the shapes of the API's reference
/// (`GET /containers/json` and `GET /containers/{id}/json`, API version 1.43), on a unix socket.
fn serve_docker_api(socket: &Path) {
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
                format!(
                    r#"[{{"Id":"{ID}","Names":["/outpost-test-web"],"Image":"nginx:1.25","ImageID":"sha256:aa","Command":"nginx -g 'daemon off;'","Created":1733400000,"Ports":[],"Labels":{{}},"State":"running","Status":"Up 3 minutes (healthy)","HostConfig":{{"NetworkMode":"bridge"}},"NetworkSettings":{{"Networks":{{}}}},"Mounts":[]}}]"#
                )
            } else if path == format!("/containers/{ID}/json") {
                format!(
                    r#"{{"Id":"{ID}","RestartCount":2,"State":{{"Status":"running","Health":{{"Status":"healthy"}}}}}}"#
                )
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
    let named = ["name=\"outpost-test-web\"", "image=\"nginx:1.25\""];
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
        Some(1733400000.0)
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
