//! `outpost hub`: gathers the fleet. It runs the embedded MQTT broker (or uses an external
//! one), verifies and ingests every device's batches into its own store, acknowledges them once
//! they are durable, tracks which devices are online, and serves the fleet's API.
//!
//! Threads: the broker's own; one async thread for MQTT and HTTP; one ingest thread that owns
//! the ingestor and makes each group of batches durable with one `sync` before their acks go
//! out (an ack is a promise that the data survives a power cut).

#![deny(clippy::disallowed_methods)]

pub mod config;
pub mod devices;
mod firings;
mod fleet;
mod gate;
mod keys;
mod loki;
mod registry;
pub mod remote;
mod routing;
mod silences;
#[cfg(test)]
mod test_payloads;

use crate::config_values::ConfigFile;
use outpost_sync::HubToDevice;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use outpost_storage::{Store, WriteBatch};
use outpost_sync::topic::{self, Kind};
use outpost_sync::{Ack, AckStatus, Batch, Limits};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use config::HubConfig;
use devices::DevicesFile;
use registry::{Registry, Taken};

#[derive(Debug, Args)]
pub struct HubArgs {
    /// The hub's TOML config; without it the defaults apply (see --print-default-config).
    #[arg(long, short, env = "OUTPOST_HUB_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(flatten)]
    daemon: crate::daemon::DaemonFlags,
    /// Address for the HTTP API (overrides [hub] listen).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Address of the embedded broker (overrides [mqtt] listen).
    #[arg(long)]
    mqtt_listen: Option<SocketAddr>,
    /// Devices file (overrides [hub] devices_file).
    #[arg(long, global = true)]
    devices_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<HubCommand>,
}

#[derive(Debug, Subcommand)]
enum HubCommand {
    /// Manage device credentials.
    #[command(subcommand)]
    Device(devices::DeviceCommand),
    /// Manage read-only broker logins for people's tools (embedded broker).
    #[command(subcommand)]
    Reader(devices::ReaderCommand),
    /// Make a dashboard login: prints a [[web.users]] entry (argon2 hash) for the hub config.
    ///
    /// Without --password-stdin a random password is made and printed once.
    User {
        name: String,
        #[arg(long, value_enum, default_value = "viewer")]
        role: RoleArg,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Make an API token: prints it once, and the [[web.tokens]] entry (its SHA-256).
    Token {
        name: String,
        #[arg(long, value_enum, default_value = "viewer")]
        role: RoleArg,
    },
    /// Send the samples that the remote storage ([remote_write]) refused again, now that the
    /// engine may take them (for example after enabling its out-of-order window). The
    /// running hub does this by itself every `resend_every`; this command is for a stopped
    /// hub, as it opens the hub's store.
    ResendRefused {
        /// The hub's store (overrides [store] path).
        #[arg(long)]
        store: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum RoleArg {
    /// Reads everything.
    Viewer,
    /// Also silences alerts.
    Admin,
}

impl RoleArg {
    fn name(self) -> &'static str {
        match self {
            RoleArg::Viewer => "viewer",
            RoleArg::Admin => "admin",
        }
    }
}

fn user_command(name: &str, role: RoleArg, password_stdin: bool) -> Result<()> {
    anyhow::ensure!(!name.is_empty(), "the user name must not be empty");
    let (password, generated) = if password_stdin {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .context("reading the password from standard input")?;
        let password = line.trim_end_matches(['\r', '\n']).to_string();
        anyhow::ensure!(
            password.chars().count() >= 8,
            "the password must have at least 8 characters"
        );
        (password, false)
    } else {
        (crate::sysinfo_ids::random_hex(12)?, true)
    };
    let hash = outpost_web::hash_password(&password)?;
    if generated {
        println!("# Password for {name} (shown once): {password}");
    }
    println!(
        "# Add to the hub config:\n[[web.users]]\nname = {name:?}\nrole = \"{}\"\npassword_hash = \"{hash}\"",
        role.name()
    );
    Ok(())
}

fn token_command(name: &str, role: RoleArg) -> Result<()> {
    anyhow::ensure!(!name.is_empty(), "the token name must not be empty");
    let token = crate::sysinfo_ids::random_hex(32)?;
    println!("# Token for {name} (shown once; send it as Authorization: Bearer ...): {token}");
    println!(
        "# Add to the hub config:\n[[web.tokens]]\nname = {name:?}\nrole = \"{}\"\nsha256 = \"{}\"",
        role.name(),
        outpost_web::sha256_hex(&token)
    );
    Ok(())
}

pub fn run(args: HubArgs) -> Result<std::process::ExitCode> {
    if args.daemon.print_default_config {
        print!("{}", config::DEFAULT_CONFIG);
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let mut config = match &args.config {
        Some(path) => HubConfig::load(path)?,
        None => HubConfig::default(),
    };
    if let Some(path) = &args.devices_file {
        config.hub.devices_file = path.clone();
    }
    if let Some(command) = args.command {
        return match command {
            HubCommand::Device(command) => devices::run(command, &config.hub.devices_file),
            HubCommand::Reader(command) => devices::run_reader(command, &config.hub.devices_file),
            HubCommand::User {
                name,
                role,
                password_stdin,
            } => {
                user_command(&name, role, password_stdin).map(|()| std::process::ExitCode::SUCCESS)
            }
            HubCommand::Token { name, role } => {
                token_command(&name, role).map(|()| std::process::ExitCode::SUCCESS)
            }
            HubCommand::ResendRefused { store } => resend_refused_command(config, store),
        };
    }
    let load = || {
        if let Some(store) = &args.daemon.store {
            config.store.path = store.clone();
        }
        if let Some(listen) = args.listen {
            config.hub.listen = listen;
        }
        if let Some(listen) = args.mqtt_listen {
            config.mqtt.listen = listen;
        }
        config.validate()?;
        // Refuse a world-readable devices file now rather than at the first device.
        DevicesFile::load(&config.hub.devices_file)?;
        Ok(config)
    };
    crate::daemon::start(&args.daemon, config::DEFAULT_CONFIG, load, daemon)
}

fn resend_refused_command(
    mut config: HubConfig,
    store: Option<PathBuf>,
) -> Result<std::process::ExitCode> {
    if let Some(store) = store {
        config.store.path = store;
    }
    config.validate()?;
    if !config.remote_write.enabled() {
        bail!("[remote_write] url is not set: this hub keeps its samples in its own store");
    }
    let store = Store::open(
        &config.store.path,
        outpost_sync::ingest::hub_store_options(config.store.budget.0),
    )
    .with_context(|| {
        format!(
            "opening the store {} (a running hub holds it, and resends refused samples itself \
             every remote_write.resend_every)",
            config.store.path.display()
        )
    })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (mut writer, _) =
        remote::RemoteWriter::new(&config.remote_write, &store, runtime.handle().clone())?;
    // The writer blocks on the runtime's handle from a thread of its own while this thread
    // drives the runtime's I/O (a current-thread runtime has no other thread to).
    let resent = runtime
        .block_on(async move {
            tokio::task::spawn_blocking(move || writer.resend_refused(&store)).await
        })?
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!(
        "{} samples taken by the engine; {} still refused",
        resent.taken, resent.refused
    );
    if resent.unreadable > 0 {
        println!(
            "{} dead letters cannot be read (a damaged store?): kept, and named in the log",
            resent.unreadable
        );
    }
    Ok(if resent.refused == 0 && resent.unreadable == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(1)
    })
}

/// The devices file as last read, re-read when its modification time changes.
struct Devices {
    path: PathBuf,
    current: RwLock<(Option<std::time::SystemTime>, Arc<DevicesFile>)>,
    /// One more at each reload: who acts on changes (silences by device labels) compares it.
    generation: std::sync::atomic::AtomicU64,
}

impl Devices {
    fn get(&self) -> Arc<DevicesFile> {
        self.current.read().expect("devices lock").1.clone()
    }

    fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether the file changed and was read again.
    fn reload_if_changed(&self) -> bool {
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        if self.current.read().expect("devices lock").0 == modified {
            return false;
        }
        match DevicesFile::load(&self.path) {
            Ok(file) => {
                tracing::info!(devices = file.device.len(), file = %self.path.display(), "devices file (re)loaded");
                *self.current.write().expect("devices lock") = (modified, Arc::new(file));
                self.generation
                    .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                true
            }
            Err(error) => {
                // Said once per change of the file, not every round.
                self.current.write().expect("devices lock").0 = modified;
                tracing::error!("devices file not reloaded, keeping the previous one: {error:#}");
                false
            }
        }
    }
}

/// One received batch, on its way to the ingest thread.
struct Incoming {
    device: String,
    payload: Vec<u8>,
    /// When the broker handed it over: what the device's clock is measured against and when
    /// its data came, however long it then waited for the ingest thread.
    received_ms: i64,
}

/// The hub: its start, one `select!` over every event it waits for (signals, the watchdog,
/// upkeep, the alert tick, the broker), and its stop, whose order matters.
async fn daemon(config: HubConfig) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let store = open_store(&config).await?;
    let (devices, registry) = fleet_state(&config, &store);
    let (ingested, _) = tokio::sync::broadcast::channel::<String>(1024);
    let refusals = Arc::new(gate::Refusals::default());
    let (options, broker) = broker_options(&config, &devices, &refusals)?;
    let (client, events) = AsyncClient::new(options, 1024);
    // In a task of its own, so that no connection attempt is cancelled half-way by the loop
    // below, and the backoff after a failure holds up neither signals, the watchdog nor upkeep.
    let backoff = (Duration::from_millis(200), Duration::from_secs(10));
    let (mut polled, _event_loop) = outpost_sync::uplink::poll_in_task(events, 0, backoff, |_| 0);
    let (incoming_tx, ingest) = {
        let shared = (&store, &client, &devices, &registry, &ingested);
        spawn_ingest(&config, shared)?
    };
    let listener = tokio::net::TcpListener::bind(config.hub.listen)
        .await
        .with_context(|| format!("cannot listen on {} ([hub] listen)", config.hub.listen))?;
    let mut alert_runtime = start_alerts(&config, &store)?;
    let alert_shared = alert_runtime.as_ref().map(|r| r.shared.clone());
    let mut alert_ticker = tokio::time::interval(config.alerts.interval.0);
    alert_ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let hub_fleet = Arc::new(fleet::HubFleet {
        registry: registry.clone(),
        devices: devices.clone(),
        store: store.clone(),
        client: client.clone(),
        fleet: config.hub.fleet.clone(),
        offline_after: config.hub.offline_after.0,
        alerts: Mutex::new(fleet::FleetAlerts::load(&store)),
        commands: Mutex::new(()),
        hub_alerts: alert_shared.clone(),
        ingested: ingested.clone(),
        refusals: refusals.clone(),
        router: routing::Router::from_config(&config.alerts)?,
        reminders: Mutex::new(fleet::Reminders::new()),
        query_engine: remote::RemoteQuery::from_config(&config.remote_write)?
            .map(|engine| Arc::new(engine) as Arc<dyn outpost_web::prometheus::QueryEngine>),
    });
    if let Some(shared) = &alert_shared {
        // Weak: the fleet holds the alert runtime, which must not keep the fleet alive.
        let fleet = Arc::downgrade(&hub_fleet);
        let routed: crate::alerting::runtime::Routed = Arc::new(move |channel: &str| {
            fleet
                .upgrade()
                .map_or_else(Vec::new, |fleet| fleet.routed_firing(channel))
        });
        let _ = shared.routed.set(routed);
    }
    let (stop_http, server) = serve_http(listener, &store, hub_fleet.clone(), &config);
    tracing::info!(listen = %config.hub.listen, %broker, embedded = config.mqtt.embedded, "hub started");
    if config.remote_write.enabled() && config.remote_write.query_url.is_empty() {
        tracing::warn!(
            "remote_write.url is set and remote_write.query_url is not: the samples go to the \
             engine only, so the dashboard's charts and /api/v1 reads find none; set query_url \
             to the engine's query API (docs/scale.md)"
        );
    }
    let router = Router {
        fleet: config.hub.fleet.clone(),
        group: config.mqtt.shared_group.clone(),
        client: client.clone(),
        hub_fleet,
        incoming: incoming_tx,
    };
    let loki = start_loki(&config, &store, &registry)?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut housekeeping = tokio::time::interval(Duration::from_secs(2));
    // The first round prunes what aged out while the hub was stopped.
    let mut pruned_at: Option<std::time::Instant> = None;
    // Not the current generation: the first round reconciles the silences with the labels.
    let mut devices_seen = u64::MAX;
    let mut service = crate::sdnotify::Service::ready("serving");
    loop {
        tokio::select! {
            _ = terminate.recv() => { tracing::info!("SIGTERM: stopping"); break; }
            _ = interrupt.recv() => { tracing::info!("SIGINT: stopping"); break; }
            () = service.watchdog(|| true) => {}
            _ = housekeeping.tick() => {
                devices.reload_if_changed();
                if devices.generation() != devices_seen {
                    devices_seen = devices.generation();
                    let fleet = router.hub_fleet.clone();
                    tokio::task::spawn_blocking(move || fleet.reconcile_silences());
                }
                registry.lock().expect("registry lock").persist_if_changed(&store);
                remind(&router.hub_fleet);
                if pruned_at.is_none_or(|at| at.elapsed() >= Duration::from_secs(3600)) {
                    pruned_at = Some(std::time::Instant::now());
                    let fleet = router.hub_fleet.clone();
                    tokio::task::spawn_blocking(move || fleet.prune_firings());
                }
            }
            _ = alert_ticker.tick(), if alert_shared.is_some() => {
                if let Some(shared) = &alert_shared {
                    let state = (registry.as_ref(), &router.hub_fleet);
                    evaluate_hub_alerts(state, shared, config.hub.offline_after.0).await;
                }
            }
            event = polled.recv() => match event.expect("the MQTT event loop task ended").1 {
                Ok(Event::Incoming(Packet::ConnAck(_))) => router.subscribe(),
                Ok(Event::Incoming(Packet::Publish(publish))) => router.route(&publish).await?,
                Ok(_) => {}
                Err(error) => tracing::warn!("broker connection: {error}; retrying"),
            },
        }
    }
    service.stopping();
    if let Some(loki) = loki {
        loki.abort();
    }
    drop(router);
    let _ = tokio::task::spawn_blocking(move || ingest.join()).await;
    let _ = stop_http.send(());
    let _ = server.await;
    registry
        .lock()
        .expect("registry lock")
        .persist_if_changed(&store);
    let _ = client.try_disconnect();
    // The alert tasks hold the store too; they go first so that it can be closed.
    if let Some(runtime) = alert_runtime.as_mut() {
        runtime.shutdown().await;
    }
    drop(alert_runtime);
    drop(alert_shared);
    if let Ok(store) = Arc::try_unwrap(store) {
        #[allow(clippy::disallowed_methods)] // on the blocking pool
        tokio::task::spawn_blocking(move || store.close()).await??;
    }
    tracing::info!("hub stopped");
    Ok(())
}

/// Forwards the devices' kept log lines to Loki every `loki.every`, when `[loki]` is set;
/// the counts go to the registry, for `/metrics`.
fn start_loki(
    config: &HubConfig,
    store: &Arc<Store>,
    registry: &Arc<Mutex<Registry>>,
) -> Result<Option<tokio::task::JoinHandle<()>>> {
    if !config.loki.enabled() {
        return Ok(None);
    }
    let mut forwarder = loki::LokiForwarder::new(&config.loki)?;
    let every = config.loki.every.0;
    let (store, registry) = (store.clone(), registry.clone());
    tracing::info!(url = %config.loki.url, "kept log lines go to Loki");
    Ok(Some(tokio::spawn(async move {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let devices = registry.lock().expect("registry lock").names();
            forwarder.round(&store, &devices).await;
            registry.lock().expect("registry lock").loki = forwarder.counts;
        }
    })))
}

/// Queues the reminders the routes' `repeat_interval` asks for, and wakes their channels once
/// stored.
fn remind(fleet: &Arc<fleet::HubFleet>) {
    if let Some((write, channels)) = fleet.reminders_due() {
        fleet.store_then_wake(write, channels, "reminders");
    }
}

/// The enrolled devices (from the devices file) and what the hub knows of each (from its store).
fn fleet_state(config: &HubConfig, store: &Store) -> (Arc<Devices>, Arc<Mutex<Registry>>) {
    let devices = Arc::new(Devices {
        path: config.hub.devices_file.clone(),
        current: RwLock::new((None, Arc::new(DevicesFile::default()))),
        generation: std::sync::atomic::AtomicU64::new(0),
    });
    devices.reload_if_changed();
    let mut registry = Registry::load(store);
    registry.stale_after = config.hub.stale_after.0;
    registry.counts_from_acks = !config.mqtt.shared_group.is_empty();
    (devices, Arc::new(Mutex::new(registry)))
}

/// The hub's own alert rules (`HUB_PACK` and `[alerts] rules`), when `[alerts]` is enabled.
fn start_alerts(
    config: &HubConfig,
    store: &Arc<Store>,
) -> Result<Option<crate::alerting::runtime::AlertRuntime>> {
    if !config.alerts.enabled {
        return Ok(None);
    }
    let runtime = crate::alerting::runtime::AlertRuntime::start(
        &config.alerts,
        crate::alerting::pack::HUB_PACK,
        store.clone(),
        format!("hub:{}", config.hub.fleet),
        None,
        Arc::default(),
    );
    Ok(Some(runtime.context("[alerts]")?))
}

/// redb's page cache of a hub whose samples go to remote storage.
const REMOTE_MODE_CACHE_BYTES: usize = 4 << 20;

async fn open_store(config: &HubConfig) -> Result<Arc<Store>> {
    let path = config.store.path.clone();
    let defaults = outpost_sync::ingest::hub_store_options(config.store.budget.0);
    let options = outpost_storage::Options {
        wall_clock: Some(Arc::new(outpost::timearg::SystemWallClock)),
        // With the samples in another engine, the store holds the fleet's bookkeeping, read
        // once per device and then kept by the ingestor: redb's page cache would only keep the
        // pages of the last seals, up to 16 MiB of a hub's 100 MB.
        cache_bytes: if config.remote_write.enabled() {
            REMOTE_MODE_CACHE_BYTES
        } else {
            defaults.cache_bytes
        },
        ..defaults
    };
    let store = tokio::task::spawn_blocking(move || Store::open(&path, options))
        .await?
        .with_context(|| format!("opening the store {}", config.store.path.display()))?;
    Ok(Arc::new(store))
}

/// How the hub reaches its broker: the embedded one (started here, behind the gate) or the
/// one `[mqtt] url` names. Returns the options and the broker's address for the log.
fn broker_options(
    config: &HubConfig,
    devices: &Arc<Devices>,
    refusals: &Arc<gate::Refusals>,
) -> Result<(MqttOptions, String)> {
    let max_packet = usize::try_from(config.mqtt.max_packet.0).unwrap_or(usize::MAX);
    let mut tls = None;
    let (host, port, username, password) = if config.mqtt.embedded {
        // The hub itself talks to the broker behind the gate, with a password made at each
        // start.
        let hub_password = crate::sysinfo_ids::random_hex(24)?;
        let broker = start_broker(config, devices.clone(), hub_password.clone(), refusals)?;
        let host = broker.ip().to_string();
        (host, broker.port(), HUB_USER.to_string(), hub_password)
    } else {
        let url = crate::netaddr::MqttUrl::parse(&config.mqtt.url)?;
        let password = if config.mqtt.password_file.as_os_str().is_empty() {
            String::new()
        } else {
            crate::sysinfo_ids::read_secret(
                &config.mqtt.password_file,
                "broker password (mqtt.password_file)",
            )?
        };
        if url.tls {
            tls = Some(Arc::new(crate::tls::client_config(
                &config.mqtt.ca_file,
                &config.mqtt.cert_file,
                &config.mqtt.client_key_file,
            )?));
        }
        (url.host, url.port, config.mqtt.username.clone(), password)
    };
    let address = format!("{host}:{port}");
    let client_id = format!("{HUB_CLIENT_PREFIX}{}", std::process::id());
    let mut options = MqttOptions::new(client_id, host, port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_max_packet_size(max_packet, max_packet);
    options.set_clean_session(true);
    if !username.is_empty() {
        options.set_credentials(username, password);
    }
    if let Some(tls) = tls {
        let tls = rumqttc::TlsConfiguration::Rustls(tls);
        options.set_transport(rumqttc::Transport::Tls(tls));
    }
    Ok((options, address))
}

/// What the ingest thread shares with the daemon.
type IngestShared<'a> = (
    &'a Arc<Store>,
    &'a AsyncClient,
    &'a Arc<Devices>,
    &'a Arc<Mutex<Registry>>,
    &'a tokio::sync::broadcast::Sender<String>,
);

/// Publishes the ingest thread's acks, each waiting for room in the MQTT client's queue. The
/// ingest thread must not wait for that room itself: the event loop that makes it may be
/// waiting for room in the ingest queue. Nor may an ack be dropped when the queue is full, as
/// it was: its device would send the batch again after its ack timeout, more load when the hub
/// is already behind. The queue of acks is not bounded: each ack is for a batch the same
/// event loop delivered, so it grows only while the broker takes the hub's publications more
/// slowly than it hands the hub batches.
fn spawn_ack_publisher(
    client: AsyncClient,
) -> tokio::sync::mpsc::UnboundedSender<(String, Vec<u8>)> {
    let (acks, mut waiting) = tokio::sync::mpsc::unbounded_channel::<(String, Vec<u8>)>();
    tokio::spawn(async move {
        while let Some((topic, ack)) = waiting.recv().await {
            if client
                .publish(topic, QoS::AtLeastOnce, false, ack)
                .await
                .is_err()
            {
                // The event loop is gone: the hub is stopping.
                break;
            }
        }
    });
    acks
}

/// The ingest thread: batches in, acks out. Its queue is bounded: a hub whose disk is slow
/// pushes back on the broker, not into its memory; and awaited, so that a full queue makes the
/// event loop wait without stopping the API.
fn spawn_ingest(
    config: &HubConfig,
    (store, client, devices, registry, ingested): IngestShared,
) -> Result<(flume::Sender<Incoming>, std::thread::JoinHandle<()>)> {
    let (incoming_tx, incoming_rx) = flume::bounded::<Incoming>(1024);
    let (store, client, devices, registry, ingested) = (
        store.clone(),
        client.clone(),
        devices.clone(),
        registry.clone(),
        ingested.clone(),
    );
    let fleet = config.hub.fleet.clone();
    let remote = if config.remote_write.enabled() {
        let (writer, waiting) = remote::RemoteWriter::new(
            &config.remote_write,
            &store,
            tokio::runtime::Handle::current(),
        )?;
        registry
            .lock()
            .expect("registry lock")
            .set_refused(&waiting);
        tracing::info!(url = %config.remote_write.url, "samples go to the remote storage");
        Some((writer, config.remote_write.resend_every.0))
    } else {
        None
    };
    let limits = Limits {
        max_message_bytes: usize::try_from(config.mqtt.max_packet.0).unwrap_or(usize::MAX),
        ..Limits::default()
    };
    let acks = spawn_ack_publisher(client);
    let thread = std::thread::Builder::new()
        .name("outpost-hub-ingest".into())
        .spawn(move || {
            let outlets = Outlets {
                acks: &acks,
                ingested: &ingested,
            };
            ingest_loop(
                &store,
                outlets,
                remote,
                (&devices, &registry),
                (&fleet, &limits),
                &incoming_rx,
            )
        })?;
    Ok((incoming_tx, thread))
}

/// The dashboard and API, until `stop` is sent.
fn serve_http(
    listener: tokio::net::TcpListener,
    store: &Arc<Store>,
    hub_fleet: Arc<fleet::HubFleet>,
    config: &HubConfig,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let app = outpost_web::router(outpost_web::Web::new(
        store.clone(),
        hub_fleet,
        config.web.clone(),
    ));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async {
            let _ = stopped.await;
        })
        .await
    });
    (stop, server)
}

/// One evaluation of the hub's own rules over its view of each device.
async fn evaluate_hub_alerts(
    (registry, fleet): (&Mutex<Registry>, &Arc<fleet::HubFleet>),
    shared: &crate::alerting::runtime::AlertShared,
    offline_after: Duration,
) {
    let now = outpost::timearg::now_ms();
    let samples = registry
        .lock()
        .expect("registry lock")
        .samples(now, offline_after);
    {
        let mut engine = shared.engine.lock().expect("engine lock");
        for (key, value) in &samples {
            engine.observe(key, now, *value);
        }
    }
    let transitions = shared.evaluate(Vec::new()).await;
    fleet.record_hub_transitions(&transitions);
}

/// Where each message from the broker goes: batches to the ingest thread, status and meta to
/// the registry, alert messages to the fleet's alerts.
struct Router {
    fleet: String,
    /// `[mqtt] shared_group`: batches come through a shared subscription when set.
    group: String,
    client: AsyncClient,
    hub_fleet: Arc<fleet::HubFleet>,
    incoming: flume::Sender<Incoming>,
}

impl Router {
    fn subscribe(&self) {
        let fleet = &self.fleet;
        let group = (!self.group.is_empty()).then_some(self.group.as_str());
        for kind in [Kind::Batch, Kind::Status, Kind::Meta] {
            let group = if kind == Kind::Batch { group } else { None };
            let filter = topic::fleet_filter(fleet, kind, group);
            let _ = self.client.try_subscribe(filter, QoS::AtLeastOnce);
        }
        let alerts = format!("outpost/v1/{fleet}/+/alerts/#");
        let _ = self.client.try_subscribe(alerts, QoS::AtLeastOnce);
        if group.is_some() {
            // The other hubs' acks say when each device's data last arrived, so that every
            // hub of the group tells online from stale alike.
            let acks = topic::fleet_filter(fleet, Kind::Ack, None);
            // At least once: a lost ack would leave this hub's counts short of the others'.
            let _ = self.client.try_subscribe(acks, QoS::AtLeastOnce);
        }
        tracing::info!("connected to the broker; subscribed to the fleet's topics");
    }

    async fn route(&self, publish: &rumqttc::Publish) -> Result<()> {
        if let Some((device, suffix)) = fleet::alert_topic(&self.fleet, &publish.topic) {
            self.hub_fleet
                .alert_message(device, suffix, &publish.payload);
            return Ok(());
        }
        let Some((topic_fleet, device, kind)) = topic::parse(&publish.topic) else {
            return Ok(());
        };
        if topic_fleet != self.fleet {
            return Ok(());
        }
        match kind {
            Kind::Batch => {
                let incoming = Incoming {
                    device: device.to_string(),
                    payload: publish.payload.to_vec(),
                    received_ms: outpost::timearg::now_ms(),
                };
                if self.incoming.send_async(incoming).await.is_err() {
                    anyhow::bail!("the ingest thread stopped");
                }
            }
            Kind::Status | Kind::Meta => self.retained(device, kind, &publish.payload),
            Kind::Ack if !self.group.is_empty() => self.acked(device, &publish.payload),
            _ => {}
        }
        Ok(())
    }

    /// An ack a hub of the group sent (this one's too): the device's data arrived now, and the
    /// batch counts. Verified with the device's key, as the device verifies it.
    fn acked(&self, device: &str, payload: &[u8]) {
        let Some(key) = self.hub_fleet.devices.get().key(device) else {
            return;
        };
        let Ok(ack) = Ack::decode(payload, device, &key) else {
            return;
        };
        if matches!(ack.status, AckStatus::Stored { .. }) {
            let mut registry = self.hub_fleet.registry.lock().expect("registry lock");
            registry.data_arrived(device, outpost::timearg::now_ms());
            registry.ack_counted(device, &ack);
        }
    }

    /// A device's `status` or `meta`: verified with its key, then judged by the registry.
    fn retained(&self, device: &str, kind: Kind, payload: &[u8]) {
        let hub_fleet = &self.hub_fleet;
        let Some(key) = hub_fleet.devices.get().key(device) else {
            let mut registry = hub_fleet.registry.lock().expect("registry lock");
            registry.rejected(device, "unknown or revoked device", false);
            return;
        };
        let text = String::from_utf8_lossy(payload);
        if text.is_empty() {
            return;
        }
        let taken = match outpost_sync::verify_json(&text, &key) {
            Ok(json) => {
                let mut registry = hub_fleet.registry.lock().expect("registry lock");
                registry.retained(device, kind, &json)
            }
            Err(error) => {
                let mut registry = hub_fleet.registry.lock().expect("registry lock");
                registry.rejected(device, &error.to_string(), true);
                return;
            }
        };
        match taken {
            Ok(Taken::Online) => hub_fleet.resend_commands(device),
            Ok(Taken::Other | Taken::Nothing) => {}
            Err(reason) => {
                let mut registry = hub_fleet.registry.lock().expect("registry lock");
                registry.rejected(device, reason, true);
            }
        }
    }
}

/// The hub's own login on its embedded broker.
const HUB_USER: &str = "outpost-hub";
/// The start of the hub's client ids (the rest is its process id).
const HUB_CLIENT_PREFIX: &str = "outpost-hub-";

/// The one client id a device's login may use: the agent's (`outpost_sync::uplink`).
fn device_client_id(fleet: &str, device: &str) -> String {
    format!("outpost-{fleet}-{device}")
}

/// Starts rumqttd on a loopback port of its own and the gate (`gate.rs`) on `[mqtt] listen` in
/// front of it; returns the broker's own address.
fn start_broker(
    config: &HubConfig,
    devices: Arc<Devices>,
    hub_password: String,
    refusals: &Arc<gate::Refusals>,
) -> Result<SocketAddr> {
    let max_packet = usize::try_from(config.mqtt.max_packet.0).unwrap_or(usize::MAX);
    let mut connections = rumqttd::ConnectionSettings {
        connection_timeout_ms: 10_000,
        max_payload_size: max_packet,
        max_inflight_count: 100,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let devices_for_gate = devices.clone();
    set_logins(
        &mut connections,
        devices,
        hub_password,
        config.hub.fleet.clone(),
    );
    // Fail here, with the key's name, rather than in the broker's thread.
    let public = std::net::TcpListener::bind(config.mqtt.listen)
        .with_context(|| format!("cannot listen on {} ([mqtt] listen)", config.mqtt.listen))?;
    let internal = std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .context("finding a loopback port for the embedded broker")?;
    let server = rumqttd::ServerSettings {
        name: "outpost-embedded".into(),
        listen: internal,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    let broker_config = rumqttd_config(server, max_packet);
    std::thread::Builder::new()
        .name("outpost-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(broker_config);
            if let Err(error) = broker.start() {
                tracing::error!("embedded broker stopped: {error}");
            }
        })?;
    // The broker binds in its own thread: wait until it accepts connections.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(internal).is_err() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the embedded broker did not start on {internal}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    public.set_nonblocking(true)?;
    let public = tokio::net::TcpListener::from_std(public)?;
    let rights_of = login_rights(devices_for_gate, config.hub.fleet.clone());
    tokio::spawn(gate::serve(
        public,
        internal,
        rights_of,
        gate::Limits::embedded(max_packet.saturating_add(16 << 10)),
        refusals.clone(),
    ));
    Ok(internal)
}

/// Who may log in to the embedded broker, and with which client id: devices with their id
/// and password, readers with theirs, the hub with its own (made at each start). Each login may
/// use its own client id only: a client id is a session, and a second connection with it
/// would evict the first (one device's login taking over another's).
fn set_logins(
    connections: &mut rumqttd::ConnectionSettings,
    devices: Arc<Devices>,
    hub_password: String,
    fleet: String,
) {
    connections.set_auth_handler(move |client_id: String, user: String, pass: String| {
        let devices = devices.clone();
        let hub_password = hub_password.clone();
        let fleet = fleet.clone();
        async move {
            if user == HUB_USER {
                return client_id.starts_with(HUB_CLIENT_PREFIX) && pass == hub_password;
            }
            devices.reload_if_changed();
            if devices.get().reader.contains_key(&user) {
                // Client ids starting `outpost-` are the devices' and the hub's sessions.
                return !client_id.starts_with("outpost-")
                    && devices.get().authenticates_reader(&user, &pass);
            }
            if client_id != device_client_id(&fleet, &user) {
                tracing::warn!(
                    login = user,
                    client_id,
                    "refused a connection whose client id is not its login's"
                );
                return false;
            }
            devices.reload_if_changed();
            devices.get().authenticates(&user, &pass)
        }
    });
}

/// rumqttd's settings: one plain MQTT 3.1.1 server, and bounded logs.
fn rumqttd_config(server: rumqttd::ServerSettings, max_packet: usize) -> rumqttd::Config {
    use std::collections::HashMap;
    rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: 10_010,
            max_outgoing_packet_count: 200,
            // rumqttd keeps every filter's publications in a log of segments, whatever has
            // been delivered: these bound it (a few filters, each at most four segments), so
            // that a login flooding its own topics cannot grow the hub's memory without end.
            // A subscriber that falls further behind loses the oldest messages, which for
            // batches means a resend after the agent's ack timeout.
            max_segment_size: (4 << 20).max(2 * max_packet),
            max_segment_count: 4,
            ..Default::default()
        },
        v4: Some(HashMap::from([("v4".to_string(), server)])),
        v5: None,
        ws: None,
        cluster: None,
        console: None,
        bridge: None,
        prometheus: None,
        metrics: None,
    }
}

/// What each login may publish and subscribe to, for the gate.
fn login_rights(
    devices: Arc<Devices>,
    fleet: String,
) -> Arc<dyn Fn(&str) -> gate::Rights + Send + Sync> {
    Arc::new(move |login: &str| {
        // A reader added while the hub runs is known from its first connection.
        devices.reload_if_changed();
        if devices.get().reader.contains_key(login) {
            gate::Rights::Reader {
                fleet: format!("outpost/v1/{fleet}/"),
            }
        } else {
            gate::rights(login, HUB_USER, &fleet)
        }
    })
}

/// Writes `write` off the async thread (the store's writer may be busy sealing for a while, and
/// the event loop and the API must keep turning); a failure is logged as `what` not stored.
pub(crate) fn write_in_background(store: &Arc<Store>, write: WriteBatch, what: &'static str) {
    let store = store.clone();
    tokio::spawn(async move {
        if let Err(error) = store.write_async(write).await {
            tracing::warn!("{what} not stored: {error}");
        }
    });
}

/// Where the ingest thread's results go: acks to the devices, news to live dashboards.
struct Outlets<'a> {
    /// (topic, ack) to the ack publisher.
    acks: &'a tokio::sync::mpsc::UnboundedSender<(String, Vec<u8>)>,
    ingested: &'a tokio::sync::broadcast::Sender<String>,
}

#[allow(clippy::disallowed_methods)] // its own thread: it waits for the disk so that the loop does not
fn ingest_loop(
    store: &Store,
    outlets: Outlets,
    mut remote: Option<(remote::RemoteWriter, Duration)>,
    (devices, registry): (&Devices, &Mutex<Registry>),
    (fleet, limits): (&str, &Limits),
    incoming: &flume::Receiver<Incoming>,
) {
    let Outlets {
        acks: ack_out,
        ingested,
    } = outlets;
    let mut ingestor = outpost_sync::ingest::Ingestor::new();
    let mut last_resend = Instant::now();
    loop {
        if let Some((writer, every)) = &mut remote {
            if last_resend.elapsed() >= *every {
                last_resend = Instant::now();
                resend_refused(store, writer, registry);
            }
        }
        let first = match incoming.recv_timeout(Duration::from_secs(5)) {
            Ok(first) => first,
            Err(flume::RecvTimeoutError::Timeout) => continue,
            Err(flume::RecvTimeoutError::Disconnected) => break,
        };
        // Everything already waiting goes into this group: one fsync for all of it.
        let mut group = vec![first];
        while group.len() < 256 {
            match incoming.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        let mut acks: Vec<(String, Vec<u8>)> = Vec::new();
        let mut taken: Vec<TakenBatch> = Vec::new();
        // With remote storage, the group's writes wait here, per device, until the engine took
        // its samples.
        let mut pending: BTreeMap<String, WriteBatch> = BTreeMap::new();
        let remote_on = remote.is_some();
        for incoming in group {
            let Incoming {
                device,
                payload,
                received_ms,
            } = incoming;
            let mut deliver = |device: &str, write: &mut WriteBatch| {
                if remote_on {
                    let held = pending.entry(device.to_string()).or_default();
                    held.extend(std::mem::take(write));
                }
            };
            let outcome = ingest_one(
                store,
                (&mut ingestor, &mut deliver),
                (devices, &device),
                (&payload, received_ms),
                limits,
            );
            let mut registry = registry.lock().expect("registry lock");
            match outcome {
                Ok((ack, key, batch, clock)) => taken.push(TakenBatch {
                    ack: ack.encode_as(&key, batch.version),
                    device,
                    header: batch.header,
                    status: ack.status,
                    clock,
                    version: batch.version,
                    received_ms,
                }),
                Err(Refused::Device(reason, reply)) => {
                    let enrolled = devices.get().key(&device).is_some();
                    registry.rejected(&device, &reason, enrolled);
                    if let Some(reply) = reply {
                        acks.push((device.clone(), reply));
                    }
                }
                Err(Refused::Hub(error)) => registry.store_failed(&device, &error),
            }
        }
        if let Some((writer, _)) = &mut remote {
            if !send_group(store, writer, pending, (&mut taken, registry)) {
                // The ingestor's memory ran ahead of the store for the batches left out: it
                // reads the store again.
                ingestor = outpost_sync::ingest::Ingestor::new();
            }
        }
        {
            let mut registry = registry.lock().expect("registry lock");
            for batch in taken {
                let what = (&batch.header, &batch.status, batch.clock, batch.version);
                registry.batch(&batch.device, what, batch.received_ms);
                acks.push((batch.device, batch.ack));
            }
        }
        if let Err(error) = store.sync() {
            // No ack without durability: the devices resend.
            let mut registry = registry.lock().expect("registry lock");
            for (device, _) in &acks {
                registry.store_failed(device, &error.to_string());
            }
            continue;
        }
        let mut fed: Vec<String> = Vec::new();
        for (device, ack) in acks {
            let topics = topic::DeviceTopics {
                fleet: fleet.to_string(),
                device,
            };
            // Gone only when the hub stops.
            let _ = ack_out.send((topics.topic(Kind::Ack), ack));
            if !fed.contains(&topics.device) {
                fed.push(topics.device);
            }
        }
        for device in fed {
            // Nobody listening (no dashboard open) is not an error.
            let _ = ingested.send(device);
        }
    }
}

/// A batch ingested, its ack waiting for the group to be durable (and, with remote storage,
/// for the engine's 2xx).
struct TakenBatch {
    device: String,
    ack: Vec<u8>,
    header: outpost_sync::BatchHeader,
    status: AckStatus,
    clock: ClockCounts,
    version: u16,
    received_ms: i64,
}

/// Sends a group's samples to the remote storage and writes the group's bookkeeping (and dead
/// letters) once it took them. Leaves in `taken` only the batches that may be acknowledged: none
/// when the engine was not reached or the hub's store refused the write; all but a device's
/// whose refused samples found no room in the dead-letter table. False when some were left out
/// (the ingestor then ran ahead of the store).
#[allow(clippy::disallowed_methods)] // on the ingest thread, which waits for the disk
fn send_group(
    store: &Store,
    writer: &mut remote::RemoteWriter,
    pending: BTreeMap<String, WriteBatch>,
    (taken, registry): (&mut Vec<TakenBatch>, &Mutex<Registry>),
) -> bool {
    let give_back = |taken: &mut Vec<TakenBatch>, error: &str, remote: bool| {
        let mut registry = registry.lock().expect("registry lock");
        for batch in taken.drain(..) {
            if remote {
                registry.remote_failed(&batch.device, error);
            } else {
                registry.store_failed(&batch.device, error);
            }
        }
        false
    };
    if taken.is_empty() && pending.is_empty() {
        return true;
    }
    let delivered = match writer.deliver_group(store, pending, outpost::timearg::now_ms()) {
        Ok(delivered) => delivered,
        Err(error) => return give_back(taken, &error, true),
    };
    if !delivered.write.is_empty() {
        if let Err(error) = store.write(delivered.write) {
            return give_back(taken, &error.to_string(), false);
        }
    }
    let mut registry = registry.lock().expect("registry lock");
    for (device, samples) in delivered.refused {
        registry.refused(&device, samples);
    }
    let before = taken.len();
    taken.retain(|batch| {
        let held = delivered.held_back.contains(&batch.device);
        if held {
            registry.remote_failed(
                &batch.device,
                "its refused samples found the dead-letter table full",
            );
        }
        !held
    });
    taken.len() == before
}

/// Sends the dead letters again; what the engine takes now leaves the per-device counts.
fn resend_refused(store: &Store, writer: &mut remote::RemoteWriter, registry: &Mutex<Registry>) {
    match writer.resend_refused(store) {
        Ok(resent) if resent.taken == 0 && resent.refused == 0 && resent.unreadable == 0 => {}
        Ok(resent) => {
            tracing::info!(
                taken = resent.taken,
                refused = resent.refused,
                unreadable = resent.unreadable,
                "refused samples sent to the remote storage again"
            );
            registry
                .lock()
                .expect("registry lock")
                .set_refused(&resent.waiting);
        }
        Err(error) => tracing::warn!("refused samples not sent again: {error}"),
    }
}

/// Why a batch was not stored.
enum Refused {
    /// The device's fault (a bad signature, a malformed batch): counted against it, with a
    /// signed reply where the device needs one to know why.
    Device(String, Option<Vec<u8>>),
    /// The hub's own store failed: not the device's fault; no ack, so the device resends.
    Hub(String),
}

/// Timestamps of a batch that were corrected and that stayed implausible.
type ClockCounts = (u64, u64);

/// Where a batch's points go before its bookkeeping is written (see `Ingestor::ingest_via`).
type Deliver<'a> = dyn FnMut(&str, &mut WriteBatch) + 'a;

fn ingest_one(
    store: &Store,
    (ingestor, deliver): (&mut outpost_sync::ingest::Ingestor, &mut Deliver),
    (devices, device): (&Devices, &str),
    (payload, received_ms): (&[u8], i64),
    limits: &Limits,
) -> std::result::Result<(Ack, outpost_sync::DeviceKey, Batch, ClockCounts), Refused> {
    let Some(key) = devices.get().key(device) else {
        return Err(Refused::Device("unknown or revoked device".into(), None));
    };
    let batch = match Batch::decode(payload, device, &key, limits) {
        Ok(batch) => batch,
        Err(outpost_sync::Error::UnsupportedVersion { found, supported }) => {
            // Tell the device, signed, so that it logs why nothing is acknowledged.
            let ack = Ack {
                device: device.to_string(),
                epoch: 0,
                seq: 0,
                status: AckStatus::UnsupportedVersion {
                    supported: supported.clone(),
                },
            };
            return Err(Refused::Device(
                format!("protocol version {found} is not supported"),
                Some(ack.encode(&key)),
            ));
        }
        Err(error) => return Err(Refused::Device(error.to_string(), None)),
    };
    let mut clock = (0, 0);
    let status = match ingestor.ingest_via(store, &batch, received_ms, deliver) {
        Ok(ingested) => {
            clock = (ingested.clock_corrected, ingested.implausible);
            ingested.status
        }
        Err(error @ outpost_sync::ingest::IngestError::Store(_)) => {
            return Err(Refused::Hub(error.to_string()))
        }
        Err(error) => AckStatus::Rejected {
            reason: error.to_string(),
        },
    };
    let ack = Ack {
        device: device.to_string(),
        epoch: batch.header.epoch,
        seq: batch.header.seq,
        status,
    };
    Ok((ack, key, batch, clock))
}
