//! The agent's MQTT connection: one per agent, shared with the alert engine's topics. It
//! publishes the retained `status` (its `offline` form as the last will) and `meta` on every
//! connect, ships the [`Outbox`]'s batches every `batch_interval` under an optional bandwidth
//! cap, resends what the hub has not acknowledged, and applies acknowledgements.

#![deny(clippy::disallowed_methods)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outpost_storage::{Store, WriteBatch};

use crate::state_keys::AgentKey;
use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Packet, QoS, Transport};

use crate::message::{Ack, Command, DeviceKey, HubToDevice, PROTOCOL_VERSION};
use crate::outbox::{AckOutcome, Outbox, OutboxOptions};
use crate::retained::{Meta, State, Status};
use crate::topic::{DeviceTopics, Kind};

/// Where and how to connect. The binary reads it from the `[mqtt]` section of the agent config.
#[derive(Clone)]
pub struct UplinkConfig {
    pub host: String,
    pub port: u16,
    /// TLS with these settings; plain TCP when `None`.
    pub tls: Option<Arc<rumqttc::tokio_rustls::rustls::ClientConfig>>,
    /// The device's broker login: its name, as enrolled.
    pub username: String,
    /// The device's broker password (its secret, derived at enrolment).
    pub password: String,
    /// The device's topics under the fleet's prefix.
    pub topics: DeviceTopics,
    /// Signs batches, statuses and alerts; verifies the hub's acks and commands.
    pub key: DeviceKey,
    /// This boot of the device: it orders statuses across reboots.
    pub boot_id: String,
    /// How often the outbox is drained into batches while connected.
    pub batch_interval: Duration,
    /// A batch not acknowledged within this is sent again.
    pub ack_timeout: Duration,
    /// Bytes per second on average for batches; `None` for no cap.
    pub bandwidth: Option<u64>,
    /// Bytes a UTC day for everything published; past it, batches wait for the next day while
    /// alerts and status still go. `None` for no budget.
    pub daily_budget: Option<u64>,
    pub outbox: OutboxOptions,
    /// Said in the status and meta, for the fleet's dashboard.
    pub agent_version: String,
}

/// One message another part of the agent wants published on its behalf (the alert engine's
/// topics), QoS 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mail {
    /// The sender's name for it, given back in [`Mailbox::delivered`].
    pub id: String,
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

/// A durable queue of messages the uplink publishes over its connection, in order, and reports
/// back once the broker has acknowledged each (PUBACK). Messages still unacknowledged when the
/// connection drops are sent again on the next one.
pub trait Mailbox: Send + Sync {
    /// Queued messages not yet handed to this connection's client, oldest first, at most `max`.
    fn pending(&self, max: usize) -> Vec<Mail>;
    /// The client took `id`; it is not offered again unless [`Mailbox::reconnected`] says so.
    fn handed(&self, id: &str);
    /// The broker acknowledged `id`.
    fn delivered(&self, id: &str);
    /// A new connection: what was handed but never acknowledged may be offered again, and these
    /// messages (the current retained state) are published after the queued ones.
    fn reconnected(&self) -> Vec<Mail>;
    /// Woken when new messages are queued.
    fn wake(&self) -> Arc<tokio::sync::Notify>;
}

/// Matches the broker's PUBACKs to what was published: the client numbers QoS 1 publishes in
/// the order it takes them, and resends unacknowledged ones under their old number.
#[derive(Debug, Default)]
struct PublishTracker {
    /// Publishes handed to the client and not yet numbered: `Some(id)` for mail.
    requested: std::collections::VecDeque<Option<String>>,
    in_flight: std::collections::HashMap<u16, Option<String>>,
}

impl PublishTracker {
    fn requested(&mut self, mail: Option<String>) {
        self.requested.push_back(mail);
    }

    fn numbered(&mut self, pkid: u16) {
        if pkid == 0 || self.in_flight.contains_key(&pkid) {
            // QoS 0, or a resend of a publish already numbered.
            return;
        }
        if let Some(tag) = self.requested.pop_front() {
            self.in_flight.insert(pkid, tag);
        }
    }

    fn acknowledged(&mut self, pkid: u16) -> Option<String> {
        self.in_flight.remove(&pkid).flatten()
    }
}

const DAY_MS: i64 = 86_400_000;

/// Bytes published per UTC day, saved in the store so that a restart does not start the day's
/// count again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct DailyBytes {
    day: i64,
    sent: u64,
}

impl DailyBytes {
    fn load(store: &Store, now_ms: i64) -> Result<DailyBytes, outpost_storage::Error> {
        let saved: DailyBytes = store
            .get(&AgentKey::DailyBytes)?
            .and_then(|bytes| postcard::from_bytes(&bytes).ok())
            .unwrap_or_default();
        let mut daily = saved;
        daily.roll(now_ms);
        Ok(daily)
    }

    fn roll(&mut self, now_ms: i64) {
        let today = now_ms.div_euclid(DAY_MS);
        if self.day != today {
            *self = DailyBytes {
                day: today,
                sent: 0,
            };
        }
    }

    async fn save(&self, store: &Store) -> Result<(), outpost_storage::Error> {
        let mut write = WriteBatch::default();
        write.put(
            &AgentKey::DailyBytes,
            postcard::to_allocvec(self).expect("postcard serializes the daily count"),
        );
        store.write_async(write).await
    }
}

/// What the uplink shows in the agent's self-metrics and health.
#[derive(Debug, Clone, Default)]
pub struct UplinkState {
    /// Connected to the broker now.
    pub connected: bool,
    /// Connections made since the agent started.
    pub connects: u64,
    /// Batches published for the first time.
    pub batches_sent: u64,
    /// Batches published again after their ack did not come in time.
    pub batches_resent: u64,
    /// Batches the hub acknowledged.
    pub batches_acked: u64,
    pub bytes_sent: u64,
    /// Samples in acknowledged batches.
    pub samples_confirmed: u64,
    /// Batches published and not yet acknowledged.
    pub in_flight: usize,
    /// Bytes published this UTC day (by the device's clock), kept across restarts.
    pub sent_today: u64,
    /// The daily budget is used up: batches wait for the next day.
    pub budget_exhausted: bool,
    /// The last connection or publish error, until the next success.
    pub last_error: Option<String>,
    /// Commands from the hub not yet taken by the agent.
    pub commands: Vec<Command>,
    /// The device's last recorded step of its wall clock (kept across restarts).
    pub last_clock_step: Option<crate::message::ClockStep>,
}

fn status(config: &UplinkConfig, state: State, now_ms: i64, connection: u64) -> Vec<u8> {
    let status = Status {
        seq: Some(Status::seq_of(connection, state)),
        device: config.topics.device.clone(),
        state,
        boot_id: config.boot_id.clone(),
        agent_version: config.agent_version.clone(),
        protocol: PROTOCOL_VERSION,
        at_ms: now_ms,
    };
    let json = serde_json::to_string(&status).expect("status serializes");
    crate::sign_json(&json, &config.key).into_bytes()
}

/// One event of an MQTT connection, with the number of the connection it belongs to.
pub type Polled = (u64, Result<Event, rumqttc::ConnectionError>);

/// The task of [`poll_in_task`]; dropping it stops the task.
pub struct PollTask(tokio::task::JoinHandle<()>);

impl Drop for PollTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Polls an MQTT event loop in a task of its own and hands its events over, each with the
/// number of its connection (`first`, then what `renew` returns). `EventLoop::poll` must not be
/// cancelled while it connects: a dropped attempt leaves the broker a session whose last will
/// fires; and a loop that selects over many things would cancel it. After a failure the next
/// try waits out a backoff growing from `backoff.0` to `backoff.1` here, without holding up
/// the caller's loop, and `renew` may prepare it (a last will of its own).
pub fn poll_in_task(
    mut events: EventLoop,
    first: u64,
    (shortest, longest): (Duration, Duration),
    mut renew: impl FnMut(&mut EventLoop) -> u64 + Send + 'static,
) -> (tokio::sync::mpsc::Receiver<Polled>, PollTask) {
    let (sender, receiver) = tokio::sync::mpsc::channel(1024);
    let task = tokio::spawn(async move {
        let (mut connection, mut backoff) = (first, shortest);
        loop {
            let event = events.poll().await;
            let failed = event.is_err();
            if matches!(event, Ok(Event::Incoming(Packet::ConnAck(_)))) {
                backoff = shortest;
            }
            if sender.send((connection, event)).await.is_err() {
                return;
            }
            if failed {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(longest);
                connection = renew(&mut events);
            }
        }
    });
    (receiver, PollTask(task))
}

/// Milliseconds since the Unix epoch by the wall clock: the binary passes its clock in, so that
/// this crate reads none itself.
pub type WallClock = fn() -> i64;
/// Milliseconds since boot.
pub type UptimeClock = fn() -> u64;

/// Runs until `shutdown` turns true; then publishes `offline` and disconnects.
pub async fn run(
    store: Arc<Store>,
    config: UplinkConfig,
    meta: Meta,
    state: Arc<Mutex<UplinkState>>,
    clocks: (WallClock, UptimeClock),
    mailbox: Option<Arc<dyn Mailbox>>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(), outpost_storage::Error> {
    let (wall, uptime) = clocks;
    // Each connection gets its number (crate::retained::Status::seq) and its own last will.
    let connection = uptime();
    let last_will = {
        let config = config.clone();
        move |connection: u64| {
            LastWill::new(
                config.topics.topic(Kind::Status),
                status(&config, State::Offline, wall(), connection),
                QoS::AtLeastOnce,
                true,
            )
        }
    };
    let mut options = mqtt_options(&config);
    options.set_last_will(last_will(connection));
    let (client, events) = AsyncClient::new(options, 64);
    // The next try is a new connection, with a later number than this one's statuses and a
    // last will of its own, so that the hub takes them.
    let mut number = connection;
    let renew = move |events: &mut EventLoop| {
        number = uptime().max(number + 1);
        events.mqtt_options.set_last_will(last_will(number));
        number
    };
    let backoff = (Duration::from_millis(500), Duration::from_secs(30));
    let (mut polled, _event_loop) = poll_in_task(events, connection, backoff, renew);
    let mut uplink = Uplink::open(store, config, (client, connection), clocks, mailbox)?;
    state.lock().expect("uplink state").last_clock_step = uplink.clock.steps().last().cloned();
    // Every second, so that a step of 2 s or more cannot be confused with the clock's next
    // readings (crate::clock).
    let mut clock_ticker = tokio::time::interval(Duration::from_secs(1));
    clock_ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticker = tokio::time::interval(uplink.config.batch_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mail_wake = uplink.mailbox.as_ref().map(|m| m.wake());
    loop {
        tokio::select! {
            // The mailbox wakes with `notify_one`, whose permit waits for this future.
            _ = async {
                match &mail_wake {
                    Some(wake) => wake.notified().await,
                    None => std::future::pending().await,
                }
            } => {
                if uplink.connected {
                    uplink.send_mail();
                }
            }
            _ = shutdown.changed() => {
                uplink.stop(&mut polled).await;
                return Ok(());
            }
            polled_event = polled.recv() => {
                // The task ends only with a panic in the MQTT client; the agent's supervisor
                // restarts the uplink on a panic.
                let (number, event) = polled_event.expect("the MQTT event loop task ended");
                match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => uplink.connected(number, &meta, &state)?,
                    Ok(Event::Outgoing(rumqttc::Outgoing::Publish(pkid))) => uplink.tracker.numbered(pkid),
                    Ok(Event::Incoming(Packet::PubAck(ack))) => uplink.acknowledged(ack.pkid),
                    Ok(Event::Incoming(Packet::Publish(publish))) => uplink.message(&publish, &state),
                    Ok(_) => {}
                    Err(error) => uplink.disconnected(&error.to_string(), &state),
                }
            }
            _ = clock_ticker.tick() => {
                if let Some(step) = uplink.clock.observe(&uplink.store, wall(), uptime())? {
                    state.lock().expect("uplink state").last_clock_step = Some(step);
                }
            }
            _ = ticker.tick() => {
                if uplink.connected {
                    uplink.ship(&state).await?;
                }
            }
        }
    }
}

/// How the agent connects: its client id, keepalive, packet size, login and TLS.
fn mqtt_options(config: &UplinkConfig) -> MqttOptions {
    let client_id = format!("outpost-{}-{}", config.topics.fleet, config.topics.device);
    let mut options = MqttOptions::new(client_id, config.host.clone(), config.port);
    options.set_keep_alive(Duration::from_secs(30));
    // Room for the largest batch plus the protocol's own bytes; rumqttc's default is 10 KiB.
    let packet_limit = config.outbox.max_batch_bytes + (16 << 10);
    options.set_max_packet_size(packet_limit, packet_limit);
    options.set_clean_session(true);
    if !config.username.is_empty() {
        options.set_credentials(config.username.clone(), config.password.clone());
    }
    if let Some(tls) = &config.tls {
        options.set_transport(Transport::Tls(rumqttc::TlsConfiguration::Rustls(
            tls.clone(),
        )));
    }
    options
}

/// What the uplink's loop keeps between events, and what it does on each.
struct Uplink {
    store: Arc<Store>,
    config: UplinkConfig,
    clocks: (WallClock, UptimeClock),
    mailbox: Option<Arc<dyn Mailbox>>,
    client: AsyncClient,
    outbox: Outbox,
    clock: crate::clock::ClockWatch,
    tracker: PublishTracker,
    /// Whether the broker has accepted the current connection, and that connection's number.
    connected: bool,
    connection: u64,
    /// The bandwidth cap as a budget that refills every second, up to one second's worth.
    allowance: f64,
    refilled: Instant,
    daily: DailyBytes,
    daily_saved: DailyBytes,
    budget_logged_day: i64,
    /// Bytes handed to the client since they were last added to `daily`.
    published: u64,
    last_logged_error: String,
    topics: [String; 3],
}

impl Uplink {
    fn open(
        store: Arc<Store>,
        config: UplinkConfig,
        (client, connection): (AsyncClient, u64),
        clocks: (WallClock, UptimeClock),
        mailbox: Option<Arc<dyn Mailbox>>,
    ) -> Result<Uplink, outpost_storage::Error> {
        let (wall, uptime) = clocks;
        let outbox = Outbox::open(
            &store,
            &config.topics.device,
            config.key.clone(),
            &config.boot_id,
            config.outbox.clone(),
        )?;
        let clock = crate::clock::ClockWatch::open(&store, &config.boot_id, wall(), uptime())?;
        let daily = DailyBytes::load(&store, wall())?;
        let topics = [Kind::Ack, Kind::Cmd, Kind::Batch].map(|kind| config.topics.topic(kind));
        Ok(Uplink {
            allowance: config.bandwidth.map_or(f64::INFINITY, |b| b as f64),
            store,
            config,
            clocks,
            mailbox,
            client,
            outbox,
            clock,
            tracker: PublishTracker::default(),
            connected: false,
            connection,
            refilled: Instant::now(),
            daily,
            daily_saved: daily,
            budget_logged_day: i64::MIN,
            published: 0,
            last_logged_error: String::new(),
            topics,
        })
    }

    /// Alert messages are signed like status and meta (a last `"mac"` key that subscribers may
    /// ignore), so that the hub can tell the device's own from a forgery; an empty message
    /// (which clears a retained alert) has nothing to sign.
    fn sign(&self, payload: Vec<u8>) -> Vec<u8> {
        match std::str::from_utf8(&payload) {
            Ok(text) if text.trim_start().starts_with('{') => {
                crate::sign_json(text, &self.config.key).into_bytes()
            }
            _ => payload,
        }
    }

    /// Publishes the mailbox's queued messages the client can take now.
    fn send_mail(&mut self) {
        let Some(mailbox) = self.mailbox.clone() else {
            return;
        };
        for mail in mailbox.pending(32) {
            let payload = self.sign(mail.payload);
            let len = payload.len() as u64;
            if self
                .client
                .try_publish(&mail.topic, QoS::AtLeastOnce, mail.retain, payload)
                .is_err()
            {
                break;
            }
            self.published += len;
            mailbox.handed(&mail.id);
            self.tracker.requested(Some(mail.id));
        }
    }

    fn publish(&mut self, topic: &str, retain: bool, payload: Vec<u8>) -> bool {
        let len = payload.len() as u64;
        let ok = self
            .client
            .try_publish(topic, QoS::AtLeastOnce, retain, payload)
            .is_ok();
        if ok {
            self.published += len;
            self.tracker.requested(None);
        }
        ok
    }

    /// Whether the day's budget leaves room for metric batches, after counting what went out.
    fn batches_allowed(&mut self) -> bool {
        self.daily.roll((self.clocks.0)());
        self.daily.sent += std::mem::take(&mut self.published);
        let Some(budget) = self.config.daily_budget else {
            return true;
        };
        let allowed = self.daily.sent < budget;
        if !allowed && self.budget_logged_day != self.daily.day {
            tracing::warn!(
                budget,
                "the daily byte budget is used up: metric batches wait for 00:00 UTC (alerts still go)"
            );
            self.budget_logged_day = self.daily.day;
        }
        allowed
    }

    /// The broker accepted connection `number`: subscribe, announce the device, and send
    /// what waits.
    fn connected(
        &mut self,
        number: u64,
        meta: &Meta,
        state: &Mutex<UplinkState>,
    ) -> Result<(), outpost_storage::Error> {
        self.connected = true;
        self.connection = number;
        tracing::info!(host = %self.config.host, port = self.config.port, "connected to the MQTT broker");
        let [ack_topic, cmd_topic, batch_topic] = self.topics.clone();
        let _ = self.client.try_subscribe(&ack_topic, QoS::AtLeastOnce);
        let _ = self.client.try_subscribe(&cmd_topic, QoS::AtLeastOnce);
        let wall = self.clocks.0;
        let online = status(&self.config, State::Online, wall(), number);
        self.publish(&self.config.topics.topic(Kind::Status), true, online);
        let meta_json = serde_json::to_string(meta).expect("meta serializes");
        let signed_meta = crate::sign_json(&meta_json, &self.config.key).into_bytes();
        self.publish(&self.config.topics.topic(Kind::Meta), true, signed_meta);
        if let Some(mailbox) = self.mailbox.clone() {
            let refresh = mailbox.reconnected();
            self.send_mail();
            for mail in refresh {
                let payload = self.sign(mail.payload);
                self.publish(&mail.topic, mail.retain, payload);
            }
        }
        if self.batches_allowed() {
            let (wall_ms, uptime_ms) = (wall(), (self.clocks.1)());
            self.clock.observe(&self.store, wall_ms, uptime_ms)?;
            let unacked: Vec<Vec<u8>> = self
                .outbox
                .all_unacked((wall_ms, uptime_ms, self.clock.steps()))
                .into_iter()
                .map(|(_, payload)| payload.to_vec())
                .collect();
            for payload in unacked {
                self.publish(&batch_topic, false, payload);
            }
        }
        let mut s = state.lock().expect("uplink state");
        s.connected = true;
        s.connects += 1;
        s.last_error = None;
        Ok(())
    }

    fn acknowledged(&mut self, pkid: u16) {
        if let (Some(id), Some(mailbox)) = (self.tracker.acknowledged(pkid), &self.mailbox) {
            mailbox.delivered(&id);
        }
    }

    /// A message on the device's `ack` or `cmd` topic.
    fn message(&mut self, publish: &rumqttc::Publish, state: &Mutex<UplinkState>) {
        let device = &self.config.topics.device;
        if publish.topic == self.topics[0] {
            let ack = match Ack::decode(&publish.payload, device, &self.config.key) {
                Ok(ack) => ack,
                Err(error) => {
                    tracing::warn!(%error, "ignoring an ack that does not verify");
                    return;
                }
            };
            match self.outbox.on_ack(&self.store, &ack) {
                AckOutcome::Rejected(reason) => tracing::error!(seq = ack.seq, %reason, "the hub refused a batch"),
                AckOutcome::UnsupportedVersion(supported) => tracing::error!(?supported, ours = PROTOCOL_VERSION, "the hub does not accept this agent's protocol version: upgrade the agent or the hub"),
                AckOutcome::Rewound => tracing::info!("the hub asked for series definitions again"),
                _ => {}
            }
            if let Some(write) = self.outbox.lines_shipped_write() {
                let store = self.store.clone();
                tokio::spawn(async move {
                    if let Err(error) = store.write_async(write).await {
                        tracing::warn!(%error, "how far the hub took the kept log lines was not saved");
                    }
                });
            }
            // As the ack comes, not at the next batch: with a long batch interval the figures
            // would otherwise always show one in flight.
            let mut s = state.lock().expect("uplink state");
            s.batches_acked = self.outbox.stats.batches_acked;
            s.samples_confirmed = self.outbox.stats.samples_confirmed;
            s.in_flight = self.outbox.in_flight();
        } else if publish.topic == self.topics[1] {
            match Command::decode(&publish.payload, device, &self.config.key) {
                Ok(command) => {
                    tracing::info!(id = command.id, "command from the hub");
                    state.lock().expect("uplink state").commands.push(command);
                }
                Err(error) => tracing::warn!(%error, "ignoring a command that does not verify"),
            }
        }
    }

    /// The connection failed or could not be made; the event loop's task tries again.
    fn disconnected(&mut self, error: &str, state: &Mutex<UplinkState>) {
        if self.connected || error != self.last_logged_error {
            tracing::warn!(host = %self.config.host, port = self.config.port, "MQTT connection: {error}; retrying (data stays in the store)");
            self.last_logged_error = error.to_string();
        }
        self.connected = false;
        let mut s = state.lock().expect("uplink state");
        s.connected = false;
        s.last_error = Some(error.to_string());
    }

    /// One batch tick: alerts, then resends that are due, then new batches, within the
    /// bandwidth cap and the daily budget.
    async fn ship(&mut self, state: &Mutex<UplinkState>) -> Result<(), outpost_storage::Error> {
        if let Some(rate) = self.config.bandwidth {
            let elapsed = self.refilled.elapsed().as_secs_f64();
            self.refilled = Instant::now();
            let ceiling = rate as f64 * self.config.batch_interval.as_secs_f64().max(1.0);
            self.allowance = (self.allowance + elapsed * rate as f64).min(ceiling);
        }
        // Alerts first: they are small and matter more than metrics on a capped link.
        self.send_mail();
        let allowed = self.batches_allowed();
        // One reading of the clocks for everything sent now, and any step up to it recorded
        // first: a batch stamped by a new clock must carry the step to it.
        let (wall_ms, uptime_ms) = ((self.clocks.0)(), (self.clocks.1)());
        self.clock.observe(&self.store, wall_ms, uptime_ms)?;
        let batch_topic = self.topics[2].clone();
        if allowed {
            let due: Vec<Vec<u8>> = self
                .outbox
                .due_resends(
                    Instant::now(),
                    self.config.ack_timeout,
                    (wall_ms, uptime_ms, self.clock.steps()),
                )
                .into_iter()
                .map(|(_, payload)| payload.to_vec())
                .collect();
            for payload in due {
                self.allowance -= payload.len() as f64;
                self.publish(&batch_topic, false, payload);
            }
        }
        while allowed && self.allowance > 0.0 {
            let steps = self.clock.steps();
            let Some((_, payload)) =
                self.outbox
                    .next_batch(&self.store, wall_ms, uptime_ms, steps)?
            else {
                break;
            };
            self.allowance -= payload.len() as f64;
            if !self.publish(&batch_topic, false, payload.to_vec()) {
                break;
            }
        }
        self.report(state, allowed);
        if self.daily != self.daily_saved {
            self.daily.save(&self.store).await?;
            self.daily_saved = self.daily;
        }
        Ok(())
    }

    fn report(&mut self, state: &Mutex<UplinkState>, allowed: bool) {
        let mut s = state.lock().expect("uplink state");
        s.batches_sent = self.outbox.stats.batches_sent;
        s.batches_resent = self.outbox.stats.batches_resent;
        s.batches_acked = self.outbox.stats.batches_acked;
        s.bytes_sent = self.outbox.stats.bytes_sent;
        s.samples_confirmed = self.outbox.stats.samples_confirmed;
        s.in_flight = self.outbox.in_flight();
        self.daily.sent += std::mem::take(&mut self.published);
        s.sent_today = self.daily.sent;
        s.budget_exhausted = !allowed;
    }

    /// A clean stop: `offline`, then a disconnect that the event loop flushes (2 s at most).
    async fn stop(&mut self, polled: &mut tokio::sync::mpsc::Receiver<Polled>) {
        if !self.connected {
            return;
        }
        let offline = status(
            &self.config,
            State::Offline,
            (self.clocks.0)(),
            self.connection,
        );
        let topic = self.config.topics.topic(Kind::Status);
        let _ = self
            .client
            .try_publish(topic, QoS::AtLeastOnce, true, offline);
        let _ = self.client.try_disconnect();
        let deadline = tokio::time::sleep(Duration::from_secs(2));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                event = polled.recv() => if !matches!(event, Some((_, Ok(_)))) { break },
            }
        }
    }
}
