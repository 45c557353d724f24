//! `outpost agent`: the daemon that runs on each device. It opens the local store, starts the
//! collectors that this device supports, serves its HTTP endpoints, and on SIGTERM stops the
//! collectors and seals the store; on SIGHUP it reloads the config and restarts the collectors.
//!
//! Everything runs on one thread of a current-thread tokio runtime (collectors read small files
//! and are quick), beside the store's own writer thread: the agent has to stay small on a
//! 4 GiB Jetson.

#![deny(clippy::disallowed_methods)]

pub mod config;
pub mod http;
pub mod sink;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use outpost_storage::{Options, Store};
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;

use crate::collect::{self, Samples};
use crate::config_values::{ConfigFile, Toggle};
use config::AgentConfig;
use outpost::timearg::now_ms;
use sink::Sink;

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The agent's TOML config; without it the defaults apply (see --print-default-config).
    #[arg(long, short, env = "OUTPOST_AGENT_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    daemon: crate::daemon::DaemonFlags,
    /// Address for /metrics and the API (overrides [agent] listen).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Replay a recorded tegrastats log (plain or .zst) instead of running tegrastats.
    #[arg(long, value_name = "FILE")]
    tegrastats_replay: Option<PathBuf>,
    /// Replay pace: 1 is the log's own, 10 ten times faster, 0 as fast as possible.
    #[arg(long, value_name = "FACTOR")]
    replay_speed: Option<f64>,
    /// Stop the agent (cleanly, store sealed) when the replay reaches the end of the log.
    #[arg(long, requires = "tegrastats_replay")]
    exit_after_replay: bool,
}

pub fn run(args: AgentArgs) -> Result<std::process::ExitCode> {
    crate::daemon::start(
        &args.daemon,
        config::DEFAULT_CONFIG,
        || load_config(&args),
        |config| daemon(&args, config),
    )
}

fn load_config(args: &AgentArgs) -> Result<AgentConfig> {
    let mut config = match &args.config {
        Some(path) => AgentConfig::load(path)?,
        None => AgentConfig::default(),
    };
    if let Some(store) = &args.daemon.store {
        config.store.path = store.clone();
    }
    if let Some(listen) = args.listen {
        config.agent.listen = listen;
    }
    if let Some(replay) = &args.tegrastats_replay {
        config.tegrastats.replay = Some(replay.clone());
        config.tegrastats.enabled = Toggle::On;
    }
    if let Some(speed) = args.replay_speed {
        config.tegrastats.replay_speed = speed;
    }
    config.validate()?;
    Ok(config)
}

fn store_options(config: &AgentConfig) -> Options {
    Options {
        flush_interval: config.store.flush_interval.0,
        sync_interval: config.store.sync_interval.0,
        seal_interval: config.store.seal_interval.0,
        max_head_samples: config.store.max_head_samples,
        budget_bytes: Some(config.store.budget.0),
        cache_bytes: usize::try_from(config.store.cache.0).unwrap_or(usize::MAX),
        // The sync layer reads the store's change feed.
        track_changes: config.mqtt.enabled,
        ..outpost::timearg::store_options()
    }
}

/// The agent: its start, one `select!` over every event it waits for (signals, the replay's end,
/// upkeep, the watchdog, the alert tick), and its stop, whose order matters.
async fn daemon(args: &AgentArgs, mut config: AgentConfig) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let started = Instant::now();
    let sink = Arc::new(Sink::new(open_store(&config).await?));
    let uplink_config = if config.mqtt.enabled {
        Some(uplink_config(&config).context("[mqtt]")?)
    } else {
        None
    };
    let tasks = Arc::new(crate::supervise::Tasks::default());
    let mut alert_runtime = start_alerts(&config, uplink_config.as_ref(), &sink, &tasks)?;
    let alert_shared = alert_runtime.as_ref().map(|r| r.shared.clone());
    let (stop_uplink, uplink_stopped) = tokio::sync::watch::channel(false);
    let mut uplink = JoinSet::new();
    if let Some(uplink_config) = uplink_config {
        let mailbox = alert_shared.as_ref().and_then(|a| a.mailbox.clone());
        let run = (&config, &sink, &tasks);
        start_uplink(run, uplink_config, mailbox, uplink_stopped, &mut uplink);
    }
    let http_state = Arc::new(http::HttpState {
        sink: sink.clone(),
        import: std::sync::RwLock::new(config.import.clone()),
        started,
        alerts: alert_shared.clone(),
        tasks: tasks.clone(),
        tokens: config.agent.tokens.clone(),
    });
    let (stop_http, server) = start_http(&config, http_state.clone()).await?;

    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let (replay_done_tx, mut replay_done) = tokio::sync::mpsc::channel::<()>(1);
    let mut collectors = start_collectors(
        &config,
        &sink,
        started,
        replay_done_tx.clone(),
        alert_shared.clone(),
        &tasks,
    );
    let mut maintenance = tokio::time::interval(Duration::from_secs(60));
    let mut service = crate::sdnotify::Service::ready("collecting");
    let mut alert_ticker = tokio::time::interval(config.alerts.interval.0);
    alert_ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = terminate.recv() => { tracing::info!("SIGTERM: stopping"); break; }
            _ = interrupt.recv() => { tracing::info!("SIGINT: stopping"); break; }
            _ = hangup.recv() => {
                let Some(new) = reload_config(args) else {
                    sink.config_reloads.lock().expect("reload record").last_failed = true;
                    continue;
                };
                warn_of_restart_only_keys(&config, &new);
                // Rule files are read again whether or not the config names new ones.
                if let Some(runtime) = alert_runtime.as_mut() {
                    if let Err(error) = runtime.reload(&new.alerts).await {
                        tracing::error!("SIGHUP: alert rules not reloaded, keeping the running ones: {error:#}");
                    }
                }
                collectors.shutdown().await;
                *http_state.import.write().expect("import config lock") = new.import.clone();
                config = new;
                collectors = start_collectors(&config, &sink, started, replay_done_tx.clone(), alert_shared.clone(), &tasks);
                *sink.config_reloads.lock().expect("reload record") = sink::ConfigReloads {
                    last_success_ms: Some(now_ms()),
                    last_failed: false,
                };
                tracing::info!("SIGHUP: config reloaded");
            }
            Some(()) = replay_done.recv() => {
                if args.exit_after_replay {
                    tracing::info!("replay finished: stopping");
                    break;
                }
            }
            _ = maintenance.tick() => sink.drop_stale(now_ms()),
            // A task in a crash loop withholds the ping, so that systemd restarts the agent.
            () = service.watchdog(|| tasks.crash_looping(Instant::now()).is_empty()) => {}
            _ = alert_ticker.tick(), if alert_shared.is_some() => {
                let commands = std::mem::take(&mut sink.uplink.lock().expect("uplink state").commands);
                if let Some(shared) = &alert_shared {
                    shared.evaluate(commands).await;
                }
            }
        }
    }
    service.stopping();
    collectors.shutdown().await;
    if let Some(runtime) = alert_runtime.as_mut() {
        runtime.shutdown().await;
    }
    let _ = stop_http.send(());
    let _ = server.await;
    stop_sync(stop_uplink, uplink).await;
    drop(http_state);
    seal_and_close(sink).await?;
    tracing::info!("agent stopped");
    Ok(())
}

/// The config again, for SIGHUP; `None`, said in the log, when it does not load.
fn reload_config(args: &AgentArgs) -> Option<AgentConfig> {
    load_config(args)
        .map_err(|error| {
            tracing::error!("SIGHUP: config not reloaded, keeping the running one: {error:#}");
        })
        .ok()
}

/// Tells the uplink to stop, and waits up to 5 s for it (it says `offline` and disconnects).
async fn stop_sync(stop: tokio::sync::watch::Sender<bool>, mut uplink: JoinSet<()>) {
    let _ = stop.send(true);
    if !uplink.is_empty()
        && tokio::time::timeout(Duration::from_secs(5), uplink.join_next())
            .await
            .is_err()
    {
        tracing::warn!("sync did not stop within 5 s");
    }
    uplink.shutdown().await;
}

/// The store, opened off the runtime's thread (a replay of its log can take a while).
async fn open_store(config: &AgentConfig) -> Result<Store> {
    let path = config.store.path.clone();
    let options = store_options(config);
    tokio::task::spawn_blocking(move || Store::open(&path, options))
        .await?
        .with_context(|| format!("opening the store {}", config.store.path.display()))
}

/// The API on `[agent] listen`; says that the agent started, and warns when the API is open to
/// other machines without tokens.
async fn start_http(
    config: &AgentConfig,
    state: Arc<http::HttpState>,
) -> Result<(
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<std::io::Result<()>>,
)> {
    let listen = config.agent.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} ([agent] listen)"))?;
    let serving = serve_http(listener, state);
    tracing::info!(%listen, store = %config.store.path.display(), "agent started");
    if !listen.ip().is_loopback() && config.agent.tokens.is_empty() {
        tracing::warn!(
            %listen,
            "the API is open to every machine that reaches this address (agent.allow_unauthenticated); changes are taken from loopback only"
        );
    }
    Ok(serving)
}

/// The alert runtime, when `[alerts]` is enabled; its engine sees every stored sample.
fn start_alerts(
    config: &AgentConfig,
    uplink_config: Option<&outpost_sync::uplink::UplinkConfig>,
    sink: &Arc<Sink>,
    tasks: &Arc<crate::supervise::Tasks>,
) -> Result<Option<crate::alerting::runtime::AlertRuntime>> {
    if !config.alerts.enabled {
        return Ok(None);
    }
    let device = match uplink_config {
        Some(u) => u.topics.device.clone(),
        None => crate::sysinfo_ids::machine_id().unwrap_or_else(|| "local".into()),
    };
    let mqtt_base = uplink_config.map(|u| {
        let root = outpost_sync::topic::ROOT;
        format!("{root}/{}/{}", u.topics.fleet, u.topics.device)
    });
    let runtime = crate::alerting::runtime::AlertRuntime::start(
        &config.alerts,
        crate::alerting::pack::AGENT_PACK,
        sink.store.clone(),
        device,
        mqtt_base,
        tasks.clone(),
    )
    .context("[alerts]")?;
    let _ = sink.alerts.set(runtime.shared.engine.clone());
    Ok(Some(runtime))
}

/// The uplink, supervised, until `stopped` turns true.
fn start_uplink(
    (config, sink, tasks): (&AgentConfig, &Arc<Sink>, &Arc<crate::supervise::Tasks>),
    uplink_config: outpost_sync::uplink::UplinkConfig,
    mailbox: Option<Arc<crate::alerting::notify::AlertMailbox>>,
    stopped: tokio::sync::watch::Receiver<bool>,
    set: &mut JoinSet<()>,
) {
    let meta = device_meta(config, &uplink_config.topics.device, &sink.store);
    let state = sink.uplink.clone();
    let store = sink.store.clone();
    let mailbox = mailbox.map(|m| m as Arc<dyn outpost_sync::uplink::Mailbox>);
    tracing::info!(url = %config.mqtt.url, device = %uplink_config.topics.device, "syncing to the hub");
    crate::supervise::spawn(set, tasks, "uplink", move || {
        let run = outpost_sync::uplink::run(
            store.clone(),
            uplink_config.clone(),
            meta.clone(),
            state.clone(),
            (crate::sysinfo_ids::wall_ms, crate::sysinfo_ids::uptime_ms),
            mailbox.clone(),
            stopped.clone(),
        );
        async move { Ok(run.await?) }
    });
}

/// `/metrics` and the API, until `stop` is sent.
fn serve_http(
    listener: tokio::net::TcpListener,
    state: Arc<http::HttpState>,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let app = http::router(state).into_make_service_with_connect_info::<SocketAddr>();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });
    (stop, server)
}

fn warn_of_restart_only_keys(running: &AgentConfig, new: &AgentConfig) {
    if new.store != running.store || new.agent.listen != running.agent.listen {
        tracing::warn!("[store] and [agent] listen change only at restart; the rest is reloaded");
    }
    if new.alerts.enabled != running.alerts.enabled {
        tracing::warn!("[alerts] enabled changes only at restart");
    }
}

/// Seals what the head holds, so that a clean stop leaves nothing for recovery to replay, and
/// closes the store once nothing else holds it.
async fn seal_and_close(sink: Arc<Sink>) -> Result<()> {
    let sink_for_seal = sink.clone();
    #[allow(clippy::disallowed_methods)] // on the blocking pool
    tokio::task::spawn_blocking(move || sink_for_seal.store.seal())
        .await?
        .context("sealing the store at shutdown")?;
    let store = Arc::try_unwrap(sink)
        .ok()
        .and_then(|sink| Arc::try_unwrap(sink.store).ok());
    if let Some(store) = store {
        #[allow(clippy::disallowed_methods)] // on the blocking pool
        tokio::task::spawn_blocking(move || store.close()).await??;
    }
    Ok(())
}

fn start_collectors(
    config: &AgentConfig,
    sink: &Arc<Sink>,
    started: Instant,
    replay_done: tokio::sync::mpsc::Sender<()>,
    alerts: Option<Arc<crate::alerting::runtime::AlertShared>>,
    tasks: &Arc<crate::supervise::Tasks>,
) -> JoinSet<()> {
    let mut set = JoinSet::new();
    if config.host.enabled {
        let (host_config, interval, sink) =
            (config.host.clone(), config.host.interval.0, sink.clone());
        crate::supervise::spawn(&mut set, tasks, "host", move || {
            let mut host = collect::host::HostCollector::new(host_config.clone());
            periodic("host", interval, sink.clone(), move |out| {
                host.collect(out);
                Ok(())
            })
        });
    }
    if let Some(directory) = config.host.textfile_directory.clone() {
        let (interval, sink) = (config.host.textfile_interval.0, sink.clone());
        crate::supervise::spawn(&mut set, tasks, "textfile", move || {
            let mut textfiles = collect::textfile::TextfileCollector::new(directory.clone());
            periodic("textfile", interval, sink.clone(), move |out| {
                textfiles.collect(out);
                Ok(())
            })
        });
    }
    if config.containers.enabled {
        let (containers_config, interval, sink) = (
            config.containers.clone(),
            config.containers.interval.0,
            sink.clone(),
        );
        crate::supervise::spawn(&mut set, tasks, "containers", move || {
            let mut containers =
                collect::containers::ContainersCollector::new(containers_config.clone());
            periodic("containers", interval, sink.clone(), move |out| {
                containers.collect(out);
                Ok(())
            })
        });
    }
    let reads_logs = !config.logs.files.is_empty() || journal_on(&config.logs);
    // Compiled once for the files and the journal, whose clones share the program: one with a
    // Unicode class (`\w`) takes most of a megabyte. The config was checked at load.
    match reads_logs.then(|| collect::logs::compile(&config.logs)) {
        None => {}
        Some(Err(error)) => tracing::error!("logs not read: {error:#}"),
        Some(Ok(patterns)) => {
            if !config.logs.files.is_empty() {
                let (logs, sink, patterns) = (config.logs.clone(), sink.clone(), patterns.clone());
                crate::supervise::spawn(&mut set, tasks, "logs", move || {
                    logs_task(logs.clone(), patterns.clone(), sink.clone())
                });
            }
            if journal_on(&config.logs) {
                let (logs, sink) = (config.logs.clone(), sink.clone());
                crate::supervise::spawn(&mut set, tasks, "journal", move || {
                    journal_task(logs.clone(), patterns.clone(), sink.clone())
                });
            }
        }
    }
    if config.processes.enabled {
        let (processes_config, interval, sink) = (
            config.processes.clone(),
            config.processes.interval.0,
            sink.clone(),
        );
        crate::supervise::spawn(&mut set, tasks, "processes", move || {
            let mut processes =
                collect::processes::ProcessesCollector::new(processes_config.clone());
            periodic("processes", interval, sink.clone(), move |out| {
                processes.collect(out);
                Ok(())
            })
        });
    }
    let jetson_root = config.jetson.root.clone();
    let jetson_on = match config.jetson.enabled {
        Toggle::On => true,
        Toggle::Off => false,
        Toggle::Auto => collect::jetson::is_jetson(&jetson_root),
    };
    if jetson_on {
        let id = collect::jetson::JetsonCollector::new(jetson_root.clone())
            .identity()
            .clone();
        tracing::info!(model = %id.model, l4t = %id.l4t, jetpack = %id.jetpack, "Jetson collector on");
        let (interval, sink) = (config.jetson.interval.0, sink.clone());
        crate::supervise::spawn(&mut set, tasks, "jetson", move || {
            let mut jetson = collect::jetson::JetsonCollector::new(jetson_root.clone());
            periodic("jetson", interval, sink.clone(), move |out| {
                jetson.collect(out);
                Ok(())
            })
        });
    }
    start_nvml(config, sink, tasks, &mut set);
    if let Some(source) = tegrastats_source(&config.tegrastats) {
        let (interval, sink) = (config.tegrastats.interval.0, sink.clone());
        crate::supervise::spawn_loop(&mut set, tasks, "tegrastats", move || {
            tegrastats_task(source.clone(), interval, sink.clone(), replay_done.clone())
        });
    }
    for probe in &config.probes {
        let (probe, sink) = (probe.clone(), sink.clone());
        let name = format!("probe:{}", probe.name);
        crate::supervise::spawn_loop(&mut set, tasks, &name, move || {
            probe_task(probe.clone(), sink.clone())
        });
    }
    for scrape in &config.scrapes {
        let (scrape, sink) = (scrape.clone(), sink.clone());
        let name = format!("scrape:{}", scrape.name);
        crate::supervise::spawn_loop(&mut set, tasks, &name, move || {
            scrape_task(scrape.clone(), sink.clone())
        });
    }
    let (interval, sink, budget, supervised) = (
        config.agent.self_interval.0,
        sink.clone(),
        config.store.budget.0,
        tasks.clone(),
    );
    crate::supervise::spawn_loop(&mut set, tasks, "self", move || {
        let (sink, alerts, supervised) = (sink.clone(), alerts.clone(), supervised.clone());
        self_metrics_task(interval, sink, started, budget, alerts, supervised)
    });
    set
}

/// The NVIDIA dGPU collector, when NVML loads (or `[nvml] enabled = "on"` insists).
fn start_nvml(
    config: &AgentConfig,
    sink: &Arc<Sink>,
    tasks: &Arc<crate::supervise::Tasks>,
    set: &mut JoinSet<()>,
) {
    if config.nvml.enabled == Toggle::Off {
        return;
    }
    match collect::nvml::NvmlCollector::open(&config.nvml.library) {
        Ok(nvml) => {
            tracing::info!("NVML collector on: {}", nvml.describe());
            let (library, interval, sink) = (
                config.nvml.library.clone(),
                config.nvml.interval.0,
                sink.clone(),
            );
            let mut opened = Some(nvml);
            crate::supervise::spawn(set, tasks, "nvml", move || {
                // The first run uses the library opened to decide; a restart opens it again.
                let opened = opened.take();
                let (library, sink) = (library.clone(), sink.clone());
                async move {
                    let mut nvml = match opened {
                        Some(nvml) => nvml,
                        None => collect::nvml::NvmlCollector::open(&library)?,
                    };
                    periodic("nvml", interval, sink, move |out| nvml.collect(out)).await
                }
            });
        }
        Err(error) if config.nvml.enabled == Toggle::On => {
            tracing::error!("{error:#}; NVIDIA dGPU collector off");
        }
        Err(error) => tracing::info!("{error:#}; NVIDIA dGPU collector off"),
    }
}

fn tegrastats_source(
    tegrastats: &config::TegrastatsSection,
) -> Option<collect::tegrastats::Source> {
    match (&tegrastats.replay, tegrastats.enabled) {
        (_, Toggle::Off) => None,
        (Some(path), _) => Some(collect::tegrastats::Source::Replay {
            path: path.clone(),
            speed: tegrastats.replay_speed,
        }),
        (None, Toggle::On) => Some(collect::tegrastats::Source::Spawn {
            path: tegrastats.path.clone(),
            interval: tegrastats.interval.0,
        }),
        (None, Toggle::Auto) if collect::tegrastats::installed(&tegrastats.path) => {
            Some(collect::tegrastats::Source::Spawn {
                path: tegrastats.path.clone(),
                interval: tegrastats.interval.0,
            })
        }
        (None, Toggle::Auto) => None,
    }
}

/// How long a collection round may take before the agent says that it is stuck.
const STUCK_AFTER: Duration = Duration::from_secs(10);

/// Runs a synchronous collector every `interval` and stores what it returns. Each round runs on
/// the blocking pool: a read that never returns (a hung device's sysfs file, NVML waiting on
/// its driver) holds up this collector only, not the runtime that every other collector, the
/// sync and the HTTP API share.
async fn periodic<F>(
    name: &'static str,
    interval: Duration,
    sink: Arc<Sink>,
    collect: F,
) -> Result<()>
where
    F: FnMut(&mut Samples) -> Result<()> + Send + 'static,
{
    periodic_boxed(name, interval, sink, Box::new(collect)).await
}

/// A collector as [`periodic`] runs it: boxed, so that the blocking pool's task and this loop
/// are made once for all collectors, not once per collector (59 KB of the Jetson binary).
type Collect = Box<dyn FnMut(&mut Samples) -> Result<()> + Send>;

async fn periodic_boxed(
    name: &'static str,
    interval: Duration,
    sink: Arc<Sink>,
    collect: Collect,
) -> Result<()> {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut failing = false;
    let mut collector = Some(collect);
    loop {
        ticker.tick().await;
        let started = Instant::now();
        let mut collect = collector
            .take()
            .expect("each round gives the collector back");
        let mut round = tokio::task::spawn_blocking(move || {
            let mut samples = Samples::new();
            let result = collect(&mut samples);
            (collect, samples, result)
        });
        let joined = loop {
            match tokio::time::timeout(STUCK_AFTER, &mut round).await {
                Ok(joined) => break joined,
                Err(_) => tracing::warn!(
                    collector = name,
                    "a collection round has not returned for {} s (a device that does not \
                     answer?); the other collectors go on",
                    started.elapsed().as_secs()
                ),
            }
        };
        let (collect, samples, result) = joined.context("a collection round panicked")?;
        collector = Some(collect);
        let at = now_ms();
        let result = match result {
            Ok(()) => sink.write(name, at, samples, false).await,
            Err(e) => Err(e),
        };
        if let Err(error) = &result {
            if !failing {
                tracing::warn!(collector = name, "collection failed: {error:#}");
            }
        } else if failing {
            tracing::info!(collector = name, "collection works again");
        }
        failing = result.is_err();
        sink.collector_round(name, started.elapsed(), result.is_ok(), at);
    }
}

async fn tegrastats_task(
    source: collect::tegrastats::Source,
    interval: Duration,
    sink: Arc<Sink>,
    replay_done: tokio::sync::mpsc::Sender<()>,
) {
    use collect::tegrastats::{read_log, replay_gap, run_tegrastats, to_samples, Source};
    let (lines_tx, mut lines) = tokio::sync::mpsc::channel::<String>(64);
    let producer = {
        let source = source.clone();
        tokio::spawn(async move {
            match source {
                Source::Replay { path, speed } => {
                    let log = match read_log(&path) {
                        Ok(log) => log,
                        Err(error) => {
                            tracing::error!("tegrastats replay: {error:#}");
                            return;
                        }
                    };
                    tracing::info!(lines = log.len(), file = %path.display(), speed, "replaying tegrastats");
                    for (i, line) in log.iter().enumerate() {
                        if i > 0 {
                            let gap = replay_gap(&log[i - 1], line, interval, speed);
                            if !gap.is_zero() {
                                tokio::time::sleep(gap).await;
                            }
                        }
                        if lines_tx.send(line.clone()).await.is_err() {
                            return;
                        }
                    }
                    tracing::info!("tegrastats replay finished");
                }
                Source::Spawn { path, interval } => {
                    let mut backoff = Duration::from_secs(1);
                    loop {
                        let started = Instant::now();
                        let error = run_tegrastats(&path, interval, &lines_tx).await;
                        if lines_tx.is_closed() {
                            return;
                        }
                        if started.elapsed() > Duration::from_secs(60) {
                            backoff = Duration::from_secs(1);
                        }
                        match error {
                            Err(error) => tracing::warn!("{error:#}; restarting in {backoff:?}"),
                            Ok(()) => return,
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(60));
                    }
                }
            }
        })
    };
    // Replayed lines at full speed arrive faster than the clock ticks: stamps stay strictly
    // increasing so that no line overwrites the one before.
    let mut last_stamp = i64::MIN;
    let (mut lines_total, mut unknown_total) = (0u64, 0u64);
    while let Some(line) = lines.recv().await {
        let started = Instant::now();
        let parsed = outpost::tegrastats::parse(&line);
        let mut samples = Samples::new();
        to_samples(&parsed, &mut samples);
        lines_total += 1;
        unknown_total += parsed.unknown.len() as u64;
        if !parsed.unknown.is_empty() && unknown_total == parsed.unknown.len() as u64 {
            tracing::warn!(tokens = ?parsed.unknown, "tegrastats printed fields this agent does not know; they are skipped");
        }
        samples.add("outpost_tegrastats_lines_total", &[], lines_total as f64);
        samples.add(
            "outpost_tegrastats_unknown_tokens_total",
            &[],
            unknown_total as f64,
        );
        let at = now_ms().max(last_stamp + 1);
        last_stamp = at;
        let result = sink.write("tegrastats", at, samples, false).await;
        if let Err(error) = &result {
            tracing::warn!("storing tegrastats samples: {error:#}");
        }
        sink.collector_round("tegrastats", started.elapsed(), result.is_ok(), at);
    }
    let _ = producer.await;
    let _ = replay_done.send(()).await;
}

async fn probe_task(config: collect::probes::ProbeConfig, sink: Arc<Sink>) {
    let mut ticker = tokio::time::interval(config.interval.0);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let source = format!("probe:{}", config.name);
    let mut probe = collect::probes::Probe::new(config);
    loop {
        ticker.tick().await;
        let started = Instant::now();
        let mut samples = Samples::new();
        probe.round(&mut samples).await;
        let at = now_ms();
        let result = sink.write(&source, at, samples, false).await;
        sink.collector_round(&source, started.elapsed(), result.is_ok(), at);
    }
}

async fn scrape_task(config: config::ScrapeConfig, sink: Arc<Sink>) {
    let mut ticker = tokio::time::interval(config.interval.0);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let source = format!("scrape:{}", config.name);
    let Ok(target) = crate::http_client::Target::parse(&config.url) else {
        return;
    };
    let mut dropped_total = 0u64;
    let mut last_error = String::new();
    loop {
        ticker.tick().await;
        let started = Instant::now();
        let now = now_ms();
        let response = crate::http_client::get(&target, config.timeout.0, false, 16 << 20).await;
        let mut up = false;
        let mut samples: Vec<(outpost_storage::SeriesKey, f64, i64)> = Vec::new();
        match response {
            Ok(response) if response.status == 200 => {
                let text = String::from_utf8_lossy(&response.body);
                let parsed = collect::scrape::parse_exposition(
                    &text,
                    &source,
                    &config.labels,
                    collect::scrape::accepted_window(now),
                );
                let mut seen = std::collections::HashSet::new();
                for (key, value, timestamp) in parsed.samples {
                    if seen.len() >= config.max_series && !seen.contains(&key) {
                        dropped_total += 1;
                        continue;
                    }
                    seen.insert(key.clone());
                    samples.push((key, value, timestamp.unwrap_or(now)));
                }
                if parsed.bad_lines > 0 && last_error.is_empty() {
                    tracing::warn!(scrape = %config.name, "{} bad lines: {}", parsed.bad_lines, parsed.errors.join("; "));
                }
                up = true;
                last_error.clear();
            }
            Ok(response) => {
                let error = format!("status {}", response.status);
                if error != last_error {
                    tracing::warn!(scrape = %config.name, url = %config.url, "{error}");
                }
                last_error = error;
            }
            Err(error) => {
                let error = format!("{error:#}");
                if error != last_error {
                    tracing::warn!(scrape = %config.name, url = %config.url, "{error}");
                }
                last_error = error;
            }
        }
        let mut own = Samples::new();
        let labels = [("scrape", config.name.as_str())];
        own.add("outpost_scrape_up", &labels, f64::from(up));
        own.add(
            "outpost_scrape_duration_seconds",
            &labels,
            started.elapsed().as_secs_f64(),
        );
        own.add("outpost_scrape_samples", &labels, samples.len() as f64);
        own.add(
            "outpost_scrape_dropped_series_total",
            &labels,
            dropped_total as f64,
        );
        samples.extend(own.values.into_iter().map(|(k, v)| (k, v, now)));
        let result = sink.write_timestamped(&source, now, samples, false).await;
        sink.collector_round(&source, started.elapsed(), up && result.is_ok(), now);
    }
}

/// Follows the log files: each round reads what they gained and saves where it got to, on the
/// blocking pool (file and store I/O), then stores the counters.
async fn logs_task(
    section: collect::logs::LogsSection,
    patterns: collect::logs::Patterns,
    sink: Arc<Sink>,
) -> Result<()> {
    let interval = section.interval.0;
    let store = sink.store.clone();
    let opened = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || {
            collect::logs::LogsCollector::open(section, patterns, &store)
        })
    };
    let mut collector = opened.await??;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let started = Instant::now();
        let (store, kept_by) = (store.clone(), sink.clone());
        let (returned, samples, result) = tokio::task::spawn_blocking(move || {
            let mut samples = Samples::new();
            let result = collector.collect(
                (&store, &kept_by.kept),
                (now_ms(), Instant::now()),
                &mut samples,
            );
            (collector, samples, result)
        })
        .await?;
        collector = returned;
        let at = now_ms();
        let result = match result {
            Ok(()) => sink.write("logs", at, samples, false).await,
            Err(error) => Err(error),
        };
        if let Err(error) = &result {
            tracing::warn!("following the log files: {error:#}");
        }
        sink.collector_round("logs", started.elapsed(), result.is_ok(), at);
    }
}

/// Whether to follow the journal: `auto` where systemd runs the machine (or journal files are
/// named).
fn journal_on(logs: &collect::logs::LogsSection) -> bool {
    match logs.journal {
        Toggle::On => true,
        Toggle::Off => false,
        Toggle::Auto => {
            !logs.journal_files.is_empty() || std::path::Path::new("/run/systemd/system").is_dir()
        }
    }
}

/// Follows the journal on a thread of the blocking pool; each round saves what was counted up
/// to which entry, and stores the counters. Stopping the task stops `journalctl`.
async fn journal_task(
    section: collect::logs::LogsSection,
    patterns: collect::logs::Patterns,
    sink: Arc<Sink>,
) -> Result<()> {
    use collect::journal::{Journal, JournalSource};
    struct StopOnDrop(Arc<Journal>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.stop();
        }
    }
    let source = JournalSource {
        journalctl: section.journalctl.clone(),
        files: section.journal_files.clone(),
        reader: section.journal_reader,
        max_units: section.max_units,
        max_series_per_pattern: section.max_series_per_pattern,
        keep: section.keep_bounds(),
    };
    let store = sink.store.clone();
    let opened = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || Journal::open(&store, source, patterns))
    };
    let journal = opened.await??;
    let _stop = StopOnDrop(journal.clone());
    let mut follower = {
        let journal = journal.clone();
        tokio::task::spawn_blocking(move || journal.follow())
    };
    let mut ticker = tokio::time::interval(section.interval.0);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let ended = tokio::select! {
            ended = &mut follower => Some(ended),
            _ = ticker.tick() => None,
        };
        let started = Instant::now();
        let (journal_now, store_now, sink_now) = (journal.clone(), store.clone(), sink.clone());
        let saved = tokio::task::spawn_blocking(move || {
            let mut samples = Samples::new();
            journal_now
                .save((&store_now, &sink_now.kept), Instant::now(), &mut samples)
                .map(|()| samples)
        })
        .await?;
        let at = now_ms();
        let result = match saved {
            Ok(samples) => sink.write("journal", at, samples, false).await,
            Err(error) => Err(error),
        };
        sink.collector_round("journal", started.elapsed(), result.is_ok(), at);
        if let Some(ended) = ended {
            // journalctl ended: an error, and the supervisor starts the task again.
            return ended?;
        }
        result?;
    }
}

/// The agent's own figures: what it costs the device.
async fn self_metrics_task(
    interval: Duration,
    sink: Arc<Sink>,
    started: Instant,
    budget_bytes: u64,
    alerts: Option<Arc<crate::alerting::runtime::AlertShared>>,
    tasks: Arc<crate::supervise::Tasks>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let start_written = self_io_write_bytes().unwrap_or(0.0);
    loop {
        ticker.tick().await;
        let mut out = Samples::new();
        let at = now_ms();
        process_figures(&mut out, started.elapsed().as_secs_f64(), start_written);
        out.add("outpost_store_budget_bytes", &[], budget_bytes as f64);
        if let Some(alerts) = &alerts {
            crate::alerting::runtime::self_metrics(alerts, &mut out);
        }
        store_figures(&sink, &mut out).await;
        change_figures(&sink, &mut out);
        if sink.store.tracks_changes() {
            sync_figures(&sink, &mut out, at).await;
        }
        for (task, restarts) in tasks.restarts() {
            let labels = [("task", task.as_str())];
            out.add("outpost_task_restarts_total", &labels, restarts as f64);
        }
        for (name, stats) in sink.collector_stats() {
            let labels = [("collector", name.as_str())];
            // node_exporter's names for the same two figures of its own collectors.
            let duration = stats.last_duration.as_secs_f64();
            out.add("node_scrape_collector_duration_seconds", &labels, duration);
            let succeeded = f64::from(u8::from(stats.last_succeeded));
            out.add("node_scrape_collector_success", &labels, succeeded);
            out.add(
                "outpost_collector_errors_total",
                &labels,
                stats.errors as f64,
            );
        }
        if let Err(error) = sink.write("self", at, out, false).await {
            tracing::warn!("storing self-metrics: {error:#}");
        }
    }
}

/// CPU, memory, descriptors, uptime and disk writes of this process.
fn process_figures(out: &mut Samples, uptime: f64, start_written: f64) {
    collect::own_process::figures(
        Path::new("/proc/self"),
        Path::new("/proc/stat"),
        collect::host::ticks_per_second(),
        collect::host::page_bytes(),
        out,
    );
    out.add("outpost_uptime_seconds", &[], uptime);
    if let Some(written) = self_io_write_bytes() {
        out.add("outpost_process_disk_written_bytes_total", &[], written);
        if uptime >= 1.0 {
            let per_day = (written - start_written).max(0.0) / uptime * 86_400.0;
            out.add("outpost_disk_write_bytes_per_day", &[], per_day);
        }
    }
}

/// The last config reload and the last step of the wall clock, which the dashboard marks on the
/// device's charts.
fn change_figures(sink: &Sink, out: &mut Samples) {
    let reloads = *sink.config_reloads.lock().expect("reload record");
    let successful = f64::from(!reloads.last_failed);
    out.add("outpost_config_last_reload_successful", &[], successful);
    if let Some(at) = reloads.last_success_ms {
        let seconds = at as f64 / 1000.0;
        out.add(
            "outpost_config_last_reload_success_timestamp_seconds",
            &[],
            seconds,
        );
    }
    let step = sink
        .uplink
        .lock()
        .expect("uplink state")
        .last_clock_step
        .clone();
    if let Some(step) = step {
        // The moment of the step by the corrected clock: the old clock's last reading plus
        // what it was off by.
        let at = step.until_ms.saturating_add(step.delta_ms) as f64 / 1000.0;
        out.add("outpost_clock_last_step_timestamp_seconds", &[], at);
        out.add(
            "outpost_clock_last_step_seconds",
            &[],
            step.delta_ms as f64 / 1000.0,
        );
    }
}

/// What the store holds and how much was written to it.
async fn store_figures(sink: &Arc<Sink>, out: &mut Samples) {
    use std::sync::atomic::Ordering::Relaxed;
    let written = sink.samples_written.load(Relaxed) as f64;
    out.add("outpost_store_samples_written_total", &[], written);
    let errors = sink.write_errors.load(Relaxed) as f64;
    out.add("outpost_store_write_errors_total", &[], errors);
    let sink_for_stats = sink.clone();
    #[allow(clippy::disallowed_methods)] // on the blocking pool
    let stats = tokio::task::spawn_blocking(move || sink_for_stats.store.stats()).await;
    if let Ok(Ok(stats)) = stats {
        out.add("outpost_store_series", &[], stats.series as f64);
        out.add("outpost_store_disk_bytes", &[], stats.disk_bytes as f64);
        out.add("outpost_store_head_samples", &[], stats.head_samples as f64);
        let written = stats.bytes_written_since_open as f64;
        out.add("outpost_store_written_bytes_total", &[], written);
    }
}

/// The uplink's counters and how far the hub is behind.
async fn sync_figures(sink: &Arc<Sink>, out: &mut Samples, at: i64) {
    let uplink = sink.uplink.lock().expect("uplink state").clone();
    let counters = [
        ("outpost_sync_connected", f64::from(uplink.connected)),
        ("outpost_sync_connects_total", uplink.connects as f64),
        (
            "outpost_sync_batches_sent_total",
            uplink.batches_sent as f64,
        ),
        (
            "outpost_sync_batches_resent_total",
            uplink.batches_resent as f64,
        ),
        (
            "outpost_sync_batches_acked_total",
            uplink.batches_acked as f64,
        ),
        ("outpost_sync_sent_bytes_total", uplink.bytes_sent as f64),
        (
            "outpost_sync_confirmed_samples_total",
            uplink.samples_confirmed as f64,
        ),
        ("outpost_sync_in_flight_batches", uplink.in_flight as f64),
        ("outpost_sync_sent_today_bytes", uplink.sent_today as f64),
        (
            "outpost_sync_daily_budget_exhausted",
            f64::from(uplink.budget_exhausted),
        ),
    ];
    for (name, value) in counters {
        out.add(name, &[], value);
    }
    let store = sink.store.clone();
    #[allow(clippy::disallowed_methods)] // on the blocking pool
    let backlog = tokio::task::spawn_blocking(move || store.backlog()).await;
    if let Ok(Ok(backlog)) = backlog {
        out.add(
            "outpost_sync_backlog_chunks",
            &[],
            backlog.dirty_chunks as f64,
        );
        let unconfirmed = backlog.live_unconfirmed_samples as f64;
        out.add("outpost_sync_unconfirmed_samples", &[], unconfirmed);
        let lag = backlog
            .oldest_ms
            .map_or(0.0, |oldest| (at - oldest).max(0) as f64 / 1000.0);
        out.add("outpost_sync_lag_seconds", &[], lag);
    }
}

/// Bytes this process caused to be written to storage (`write_bytes` in `/proc/self/io`):
/// what reaches the flash, page cache write-back included.
fn self_io_write_bytes() -> Option<f64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines()
        .find_map(|line| line.strip_prefix("write_bytes:"))?
        .trim()
        .parse()
        .ok()
}

/// The uplink's settings from `[mqtt]`, with the device's secrets read (and their file modes
/// checked) now, so that a bad file stops the agent at start with a message that names it.
fn uplink_config(config: &AgentConfig) -> Result<outpost_sync::uplink::UplinkConfig> {
    let mqtt = &config.mqtt;
    let url = crate::netaddr::MqttUrl::parse(&mqtt.url).context("url")?;
    let device = if mqtt.device.is_empty() {
        crate::sysinfo_ids::machine_id()
            .context("device: empty, and this machine has no /etc/machine-id; set one")?
    } else {
        mqtt.device.clone()
    };
    let topics = outpost_sync::topic::DeviceTopics::new(&mqtt.fleet, &device)?;
    let key = crate::sysinfo_ids::read_secret(&mqtt.key_file, "device key (mqtt.key_file)")?;
    let key = outpost_sync::DeviceKey::from_hex(&key)
        .with_context(|| format!("key_file {}", mqtt.key_file.display()))?;
    let password = if mqtt.password_file.as_os_str().is_empty() {
        String::new()
    } else {
        crate::sysinfo_ids::read_secret(
            &mqtt.password_file,
            "broker password (mqtt.password_file)",
        )?
    };
    let tls = if url.tls {
        Some(Arc::new(crate::tls::client_config(
            &mqtt.ca_file,
            &mqtt.cert_file,
            &mqtt.client_key_file,
        )?))
    } else {
        None
    };
    Ok(outpost_sync::uplink::UplinkConfig {
        host: url.host,
        port: url.port,
        tls,
        username: if mqtt.username.is_empty() {
            device.clone()
        } else {
            mqtt.username.clone()
        },
        password,
        topics,
        key,
        boot_id: crate::sysinfo_ids::boot_id(),
        batch_interval: mqtt.batch_interval.0,
        ack_timeout: mqtt.ack_timeout.0,
        bandwidth: (mqtt.bandwidth.0 > 0).then_some(mqtt.bandwidth.0),
        daily_budget: (mqtt.daily_budget.0 > 0).then_some(mqtt.daily_budget.0),
        outbox: outpost_sync::outbox::OutboxOptions {
            max_batch_bytes: usize::try_from(mqtt.max_batch.0).unwrap_or(usize::MAX),
            self_contained: mqtt.shared_hubs,
            ..Default::default()
        },
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
    })
}

/// What the retained `meta` topic says of this device.
fn device_meta(config: &AgentConfig, device: &str, store: &Store) -> outpost_sync::Meta {
    let identity = collect::jetson::is_jetson(&config.jetson.root).then(|| {
        collect::jetson::JetsonCollector::new(config.jetson.root.clone())
            .identity()
            .clone()
    });
    let series = store
        .series(&outpost_storage::Selector::parse(r#"{__name__=~".+"}"#).expect("valid selector"));
    let mut metrics: Vec<String> = series.iter().map(|(_, k)| k.name().to_string()).collect();
    metrics.dedup();
    outpost_sync::Meta {
        device: device.to_string(),
        model: identity.as_ref().map(|i| i.model.clone()),
        l4t: identity.as_ref().map(|i| i.l4t.clone()),
        jetpack: identity.as_ref().map(|i| i.jetpack.clone()),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        protocol: outpost_sync::PROTOCOL_VERSION,
        boot_id: crate::sysinfo_ids::boot_id(),
        series: series.len() as u64,
        metrics,
    }
}
