//! `outpost demo`: the whole product on one machine in one command. A hub with its embedded
//! broker, and an agent enrolled with it that collects this machine's real host metrics and
//! replays a real tegrastats log (a Jetson TX2's, carried in the binary), both as child
//! processes of this one, with their data in a temporary directory that goes when it stops.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;

/// 2,660 lines at 1 s from a Jetson TX2 on JetPack 4 (tests/data/README.md says where from).
const TX2_LOG: &[u8] = include_bytes!("../tests/data/tegrastats/tx2-jetpack4-2660s.log.zst");
const DEVICE: &str = "demo-jetson";

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// The dashboard's address.
    #[arg(long, default_value = "127.0.0.1:9820")]
    listen: SocketAddr,
    /// The embedded MQTT broker's address.
    #[arg(long, default_value = "127.0.0.1:1883")]
    mqtt_listen: SocketAddr,
    /// The agent's /metrics and API address.
    #[arg(long, default_value = "127.0.0.1:9810")]
    agent_listen: SocketAddr,
    /// Replay this tegrastats log (plain or .zst) instead of the TX2 log built in.
    #[arg(long, value_name = "FILE")]
    tegrastats_replay: Option<PathBuf>,
    /// Replay pace: 1 is the log's own, 10 ten times faster.
    #[arg(long, default_value_t = 1.0, value_name = "FACTOR")]
    replay_speed: f64,
    /// Keep the data here instead of in a temporary directory removed at exit.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Stop by itself after this many seconds (0: run until Ctrl-C).
    #[arg(long, default_value_t = 0, value_name = "SECONDS")]
    duration: u64,
}

struct Children(Vec<(&'static str, Child)>);

impl Drop for Children {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            terminate(child);
        }
        for (_, child) in &mut self.0 {
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn terminate(child: &Child) {
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id() as i32).expect("child pids are positive"),
        rustix::process::Signal::TERM,
    );
}

fn check_free(address: SocketAddr, flag: &str) -> Result<()> {
    TcpListener::bind(address).map(drop).with_context(|| {
        format!("{address} is in use (another Outpost running?); choose another with {flag}")
    })
}

fn toml_path(path: &Path) -> String {
    toml::Value::String(path.display().to_string()).to_string()
}

pub fn run(args: DemoArgs) -> Result<std::process::ExitCode> {
    if !(args.replay_speed > 0.0 && args.replay_speed.is_finite()) {
        bail!("--replay-speed: must be a positive factor");
    }
    check_free(args.listen, "--listen")?;
    check_free(args.mqtt_listen, "--mqtt-listen")?;
    check_free(args.agent_listen, "--agent-listen")?;
    let temporary;
    let dir = match &args.data_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            dir.clone()
        }
        None => {
            temporary = tempfile::Builder::new()
                .prefix("outpost-demo-")
                .tempdir()
                .context("creating a temporary directory")?;
            temporary.path().to_path_buf()
        }
    };
    let log = match &args.tegrastats_replay {
        Some(path) => {
            anyhow::ensure!(
                path.exists(),
                "--tegrastats-replay: {} not found",
                path.display()
            );
            path.canonicalize()?
        }
        None => {
            let path = dir.join("tx2-jetpack4-2660s.log.zst");
            std::fs::write(&path, TX2_LOG).context("writing the built-in tegrastats log")?;
            path
        }
    };

    let (hub_config, agent_config, password) = write_configs(&args, &dir)?;

    let exe = std::env::current_exe().context("finding this program")?;
    let spawn = |name: &'static str, args: &[&std::ffi::OsStr]| -> Result<Child> {
        let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
        Command::new(&exe)
            .args(["--log", "info"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting the {name}"))
    };
    let mut children = Children(Vec::new());
    children.0.push((
        "hub",
        spawn(
            "hub",
            &["hub".as_ref(), "--config".as_ref(), hub_config.as_os_str()],
        )?,
    ));
    wait_for(args.listen, &mut children, &dir)?;
    let speed = args.replay_speed.to_string();
    children.0.push((
        "agent",
        spawn(
            "agent",
            &[
                "agent".as_ref(),
                "--config".as_ref(),
                agent_config.as_os_str(),
                "--tegrastats-replay".as_ref(),
                log.as_os_str(),
                "--replay-speed".as_ref(),
                speed.as_ref(),
            ],
        )?,
    ));
    wait_for(args.agent_listen, &mut children, &dir)?;

    print_banner(&args, &dir, &password);

    let stopped_by = wait_until_stopped(args.duration, &mut children)?;
    drop(children);
    match stopped_by {
        None => {
            println!("stopped");
            Ok(std::process::ExitCode::SUCCESS)
        }
        Some((name, status)) => {
            let log = std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            eprintln!(
                "the {name} stopped ({status}); the end of its log:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
            Ok(std::process::ExitCode::FAILURE)
        }
    }
}

/// Enrols the demo device (once) and writes the hub's and the agent's configs into `dir`;
/// returns their paths and the dashboard's admin password.
fn write_configs(args: &DemoArgs, dir: &Path) -> Result<(PathBuf, PathBuf, String)> {
    let devices_file = dir.join("devices.toml");
    let mut devices = crate::hub::devices::DevicesFile::load(&devices_file)?;
    let (key_file, password_file) = match devices.device.contains_key(DEVICE) {
        true => (
            dir.join(format!("{DEVICE}.key")),
            dir.join(format!("{DEVICE}.password")),
        ),
        false => crate::hub::devices::enrol(&mut devices, &devices_file, DEVICE, dir)?,
    };
    let password = crate::sysinfo_ids::random_hex(9)?;
    let hash = outpost_web::hash_password(&password)?;
    let hub_config = dir.join("hub.toml");
    std::fs::write(
        &hub_config,
        format!(
            "[hub]\nlisten = \"{listen}\"\ndevices_file = {devices}\n\n[store]\npath = {store}\nbudget = \"1GiB\"\n\n\
             [mqtt]\nlisten = \"{mqtt}\"\n\n[[web.users]]\nname = \"admin\"\nrole = \"admin\"\npassword_hash = \"{hash}\"\n",
            listen = args.listen,
            devices = toml_path(&devices_file),
            store = toml_path(&dir.join("hub.redb")),
            mqtt = args.mqtt_listen,
        ),
    )?;
    let agent_config = dir.join("agent.toml");
    std::fs::write(
        &agent_config,
        format!(
            "[agent]\nlisten = \"{agent}\"\n\n[store]\npath = {store}\n\n\
             # The replay stands in for this machine's tegrastats.\n[jetson]\nenabled = \"off\"\n\n\
             [mqtt]\nenabled = true\nurl = \"mqtt://{mqtt}\"\ndevice = \"{DEVICE}\"\nkey_file = {key}\npassword_file = {password}\n",
            agent = args.agent_listen,
            store = toml_path(&dir.join("agent.redb")),
            mqtt = args.mqtt_listen,
            key = toml_path(&key_file),
            password = toml_path(&password_file),
        ),
    )?;

    Ok((hub_config, agent_config, password))
}

/// Runs until a signal, `duration` seconds (0: no limit), or a child's exit, which it returns.
fn wait_until_stopped(
    duration: u64,
    children: &mut Children,
) -> Result<Option<(&'static str, std::process::ExitStatus)>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let limit = async {
            match duration {
                0 => std::future::pending::<()>().await,
                seconds => tokio::time::sleep(Duration::from_secs(seconds)).await,
            }
        };
        let mut check = tokio::time::interval(Duration::from_millis(500));
        tokio::pin!(limit);
        loop {
            tokio::select! {
                _ = terminate.recv() => return anyhow::Ok(None),
                _ = interrupt.recv() => return Ok(None),
                _ = &mut limit => return Ok(None),
                _ = check.tick() => {
                    for (name, child) in &mut children.0 {
                        if let Ok(Some(status)) = child.try_wait() {
                            return Ok(Some((*name, status)));
                        }
                    }
                }
            }
        }
    })
}

fn print_banner(args: &DemoArgs, dir: &Path, password: &str) {
    println!("Outpost demo: a hub with its embedded broker, and one agent ({DEVICE}) sending");
    println!("this machine's host metrics and a Jetson TX2's tegrastats, replayed.\n");
    println!("  dashboard  http://{}/", args.listen);
    println!("  login      admin / {password}");
    println!("  agent      http://{}/metrics", args.agent_listen);
    println!("  broker     mqtt://{}", args.mqtt_listen);
    match &args.data_dir {
        Some(_) => println!("  data       {} (kept)", dir.display()),
        None => println!("  data       {} (removed at exit)", dir.display()),
    }
    println!("\nLogs are hub.log and agent.log there. Ctrl-C stops both.");
}

/// Waits until `address` accepts connections, or says which child died and why.
fn wait_for(address: SocketAddr, children: &mut Children, dir: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(address).is_err() {
        for (name, child) in &mut children.0 {
            if let Some(status) = child.try_wait()? {
                let log =
                    std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
                bail!("the {name} did not start ({status}):\n{log}");
            }
        }
        if Instant::now() > deadline {
            bail!("nothing listens on {address} after 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
