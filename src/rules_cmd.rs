//! `outpost rules check|test`, and what the agent needs to build its alert engine from its
//! config.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use clap::Subcommand;
use outpost_storage::{Options, Store, WriteBatch};

use crate::agent::config::AlertsSection;
use outpost::alert::engine::{AlertMessage, Engine, EngineOptions, State};
use outpost::alert::rules::{self, Rule};
use outpost::alert::schedule::{parse_weekday, Maintenance, Silence, Silences, When};

/// The rule pack built into the binary.
pub const DEFAULT_RULES: &str = include_str!("../config/rules.toml");
pub const DEFAULT_RULES_NAME: &str = "config/rules.toml (built in)";
/// The hub's pack: rules over its view of each device.
pub const HUB_RULES: &str = include_str!("../config/hub-rules.toml");
pub const HUB_RULES_NAME: &str = "config/hub-rules.toml (built in)";

/// A built-in rule pack: its name for messages, and its text.
pub type Pack = (&'static str, &'static str);
pub const AGENT_PACK: Pack = (DEFAULT_RULES_NAME, DEFAULT_RULES);
pub const HUB_PACK: Pack = (HUB_RULES_NAME, HUB_RULES);

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Check rule files (or directories of them): every error, with file, rule and key.
    Check {
        /// Rule files or directories; `default` for the agent's built-in pack, `hub` for the
        /// hub's.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Evaluate rules against a store's history and print what would fire.
    ///
    /// The rules run exactly as in the agent, one evaluation every --step from --from to --at,
    /// so `for` durations and hysteresis count. Without --from, evaluation starts one hour
    /// before --at (or at the first sample, if later). With --transitions, every transition is
    /// printed, not only the alerts active at --at.
    Test {
        /// Rule files or directories; `default` for the built-in pack.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The store to read (not modified).
        #[arg(long)]
        db: PathBuf,
        /// When to judge: RFC 3339, milliseconds since the epoch, `now`, or `end` (the newest
        /// sample).
        #[arg(long, default_value = "end")]
        at: String,
        /// Where the evaluation starts (same forms, or `start` for the oldest sample).
        #[arg(long)]
        from: Option<String>,
        /// Time between evaluations.
        #[arg(long, default_value = "1s")]
        step: String,
        /// Print every transition, one line each.
        #[arg(long)]
        transitions: bool,
        /// Print JSON lines instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn load_files(files: &[PathBuf]) -> Result<Vec<Rule>> {
    let mut all = Vec::new();
    let mut paths = Vec::new();
    for file in files {
        if file.as_os_str() == "default" {
            all.extend(parse_pack(AGENT_PACK)?);
        } else if file.as_os_str() == "hub" {
            all.extend(parse_pack(HUB_PACK)?);
        } else {
            paths.push(file.clone());
        }
    }
    match rules::load(&paths) {
        Ok(loaded) => {
            for rule in loaded {
                if all.iter().any(|r: &Rule| r.name == rule.name) {
                    bail!(
                        "{}: rule {}: name: also defined in the built-in pack",
                        rule.file.display(),
                        rule.name
                    );
                }
                all.push(rule);
            }
            Ok(all)
        }
        Err(errors) => bail!(join_errors(&errors)),
    }
}

fn join_errors(errors: &[rules::RuleError]) -> String {
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    format!(
        "{} error{} in the rules:\n  {}",
        errors.len(),
        if errors.len() == 1 { "" } else { "s" },
        lines.join("\n  ")
    )
}

fn parse_pack((name, text): Pack) -> Result<Vec<Rule>> {
    rules::parse(Path::new(name), text).map_err(|errors| anyhow::anyhow!(join_errors(&errors)))
}

/// The rules of a config: its files, then the built-in pack's rules of other names.
pub fn load_rules(alerts: &AlertsSection, pack: Pack) -> Result<Vec<Rule>> {
    let mut loaded = rules::load(&alerts.rules).map_err(|e| anyhow::anyhow!(join_errors(&e)))?;
    if alerts.default_rules {
        for rule in parse_pack(pack)? {
            if !loaded.iter().any(|r| r.name == rule.name) {
                loaded.push(rule);
            }
        }
    }
    Ok(loaded)
}

/// The config's silences and maintenance windows, checked.
pub fn silences_from_config(alerts: &AlertsSection, now_ms: i64) -> Result<Silences> {
    let time = |key: String, text: &str| {
        outpost::timearg::parse_time(text, now_ms).with_context(|| key.clone())
    };
    let mut silences = Vec::new();
    for (i, s) in alerts.silence.iter().enumerate() {
        let starts_ms = match &s.starts {
            Some(text) => time(format!("alerts.silence[{i}].starts"), text)?,
            // "Always": the epoch, which every API prints as a real time (no sample is older
            // than it, and it shows as 1970-01-01T00:00:00Z rather than an absurd number).
            None => 0,
        };
        let ends_ms = time(format!("alerts.silence[{i}].ends"), &s.ends)?;
        outpost_storage::Selector::parse(&s.matcher)
            .with_context(|| format!("alerts.silence[{i}].match"))?;
        if ends_ms <= starts_ms {
            bail!("alerts.silence[{i}].ends: must be after starts");
        }
        silences.push(Silence {
            id: format!("config-{i}"),
            matcher: s.matcher.clone(),
            starts_ms,
            ends_ms,
            created_by: "config".into(),
            comment: s.comment.clone(),
        });
    }
    let mut windows = Vec::new();
    for (i, m) in alerts.maintenance.iter().enumerate() {
        let key = |k: &str| format!("alerts.maintenance[{i}].{k}");
        let matcher = match &m.matcher {
            Some(text) => {
                Some(outpost_storage::Selector::parse(text).with_context(|| key("match"))?)
            }
            None => None,
        };
        let when = match (&m.starts, &m.ends, m.days.is_empty()) {
            (Some(starts), Some(ends), true) => {
                if m.at.is_some() || m.duration.is_some() {
                    bail!("{}: a fixed window (starts, ends) takes no at or duration", key("at"));
                }
                let (starts_ms, ends_ms) = (time(key("starts"), starts)?, time(key("ends"), ends)?);
                if ends_ms <= starts_ms {
                    bail!("{}: must be after starts", key("ends"));
                }
                When::Fixed { starts_ms, ends_ms }
            }
            (None, None, false) => {
                let mut days = Vec::new();
                for day in &m.days {
                    days.push(parse_weekday(day).with_context(|| {
                        format!("{}: {day:?} is not a weekday (mon, tue, ... or monday, ...)", key("days"))
                    })?);
                }
                let at = m.at.as_deref().with_context(|| format!("{}: missing (HH:MM)", key("at")))?;
                let start: jiff::civil::Time = at
                    .parse()
                    .with_context(|| format!("{}: {at:?} is not a time of day like 02:00", key("at")))?;
                let duration = m
                    .duration
                    .with_context(|| format!("{}: missing (like 2h)", key("duration")))?;
                let zone = match &m.timezone {
                    Some(name) => jiff::tz::TimeZone::get(name)
                        .with_context(|| format!("{}: unknown time zone {name:?}", key("timezone")))?,
                    None => jiff::tz::TimeZone::UTC,
                };
                When::Weekly {
                    days,
                    start,
                    duration_ms: duration.0.as_millis() as i64,
                    zone,
                }
            }
            _ => bail!(
                "{}: give either starts and ends (a fixed window) or days, at and duration (a weekly one)",
                key("name")
            ),
        };
        windows.push(Maintenance {
            name: m.name.clone(),
            matcher,
            when,
        });
    }
    Silences::new(silences, windows).map_err(anyhow::Error::msg)
}

pub fn run(command: RulesCommand) -> Result<std::process::ExitCode> {
    match command {
        RulesCommand::Check { files } => {
            let rules = load_files(&files)?;
            println!("{} rules are valid", rules.len());
            Ok(std::process::ExitCode::SUCCESS)
        }
        RulesCommand::Test {
            files,
            db,
            at,
            from,
            step,
            transitions,
            json,
        } => {
            let rules = load_files(&files)?;
            let step_ms = outpost::timearg::parse_duration_ms(&step).context("--step")?;
            if step_ms <= 0 {
                bail!("--step: must be longer than 0");
            }
            let result = test(&rules, &db, &at, from.as_deref(), step_ms)?;
            if transitions {
                for message in &result.transitions {
                    print_message(message, json);
                }
            } else {
                if !json {
                    println!(
                        "at {}: {} active alert(s) after {} evaluations",
                        outpost::alert::engine::rfc3339(result.at_ms),
                        result.active.len(),
                        result.evaluations
                    );
                }
                for message in &result.active {
                    print_message(message, json);
                }
            }
            Ok(std::process::ExitCode::SUCCESS)
        }
    }
}

fn print_message(message: &AlertMessage, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string(message).expect("message serializes")
        );
    } else {
        println!("{}", describe(message));
    }
}

/// One line per transition, as `rules test --transitions` prints it and the expected-alert
/// files hold it.
pub fn describe(message: &AlertMessage) -> String {
    let labels: Vec<String> = message
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect();
    format!(
        "{} {} {}{{{}}} {} value={}",
        message.at,
        message.state.as_str(),
        message.rule,
        labels.join(","),
        message.severity,
        message
            .value
            .map_or("none".into(), outpost::alert::template::format_number)
    )
}

pub struct TestResult {
    pub at_ms: i64,
    pub transitions: Vec<AlertMessage>,
    pub active: Vec<AlertMessage>,
    pub evaluations: u64,
}

/// Runs `rules` over the history in `db` as the agent would have.
pub fn test(
    rules: &[Rule],
    db: &Path,
    at: &str,
    from: Option<&str>,
    step_ms: i64,
) -> Result<TestResult> {
    if !db.exists() {
        bail!("{}: no such store", db.display());
    }
    let data = Store::open(
        db,
        Options {
            read_only: true,
            ..Options::default()
        },
    )
    .with_context(|| format!("opening the store {}", db.display()))?;
    // Every sample the rules can see, in time order.
    let mut points: Vec<(i64, usize, f64)> = Vec::new();
    let mut keys = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for rule in rules {
        let selectors = std::iter::once(&rule.select)
            .chain(rule.divide_by.as_ref().map(|d| &d.0.select))
            .chain(rule.when.as_ref().map(|w| &w.side.select));
        for selector in selectors {
            for series in data.query_raw(selector, i64::MIN / 4, i64::MAX / 4)? {
                if !seen.insert(series.series.clone()) {
                    continue;
                }
                let index = keys.len();
                keys.push(series.series);
                points.extend(series.points.into_iter().map(|(t, v)| (t, index, v)));
            }
        }
    }
    data.close()?;
    points.sort_by_key(|p| (p.0, p.1));
    let (Some(oldest), Some(newest)) = (points.first().map(|p| p.0), points.last().map(|p| p.0))
    else {
        bail!("{}: no series that the rules select", db.display());
    };
    let now = outpost::timearg::now_ms();
    let resolve = |text: &str| -> Result<i64> {
        match text {
            "end" => Ok(newest),
            "start" => Ok(oldest),
            other => outpost::timearg::parse_time(other, now),
        }
    };
    let at_ms = resolve(at).context("--at")?;
    let from_ms = match from {
        Some(text) => resolve(text).context("--from")?,
        None => (at_ms - 3_600_000).max(oldest),
    };
    if from_ms > at_ms {
        bail!("--from is after --at");
    }
    let longest = rules.iter().map(|r| r.window_ms).max().unwrap_or(0);
    points.retain(|p| p.0 > from_ms - longest && p.0 <= at_ms);
    // The engine's own state goes into a scratch store: the history is only read.
    let scratch = tempfile::tempdir().context("a scratch directory")?;
    let state = Store::open(scratch.path().join("state.redb"), Options::default())?;
    let options = EngineOptions {
        device: db
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        mqtt_base: None,
        channels: Vec::new(),
        max_queued: 1,
    };
    let mut engine = Engine::open(
        &state,
        rules.to_vec(),
        options,
        Silences::default(),
        from_ms,
    )?;
    engine.set_running_since(from_ms.max(oldest));
    let mut transitions = Vec::new();
    let mut next = 0;
    let mut t = from_ms;
    let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        indicatif::ProgressBar::new(((at_ms - from_ms) / step_ms + 1) as u64).with_style(
            indicatif::ProgressStyle::with_template("evaluating [{bar:40}] {pos}/{len} ({eta})")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        )
    } else {
        indicatif::ProgressBar::hidden()
    };
    loop {
        while next < points.len() && points[next].0 <= t {
            let (ts, key, value) = points[next];
            engine.observe(&keys[key], ts, value);
            next += 1;
        }
        let mut write = WriteBatch::default();
        transitions.extend(engine.evaluate(t, &mut write).transitions);
        state.write(write)?;
        bar.inc(1);
        if t >= at_ms {
            break;
        }
        t = (t + step_ms).min(at_ms);
    }
    bar.finish_and_clear();
    let mut latest: BTreeMap<(String, String), AlertMessage> = BTreeMap::new();
    for message in &transitions {
        latest.insert(
            (message.rule.clone(), message.instance.clone()),
            message.clone(),
        );
    }
    let mut active: Vec<AlertMessage> = latest
        .into_values()
        .filter(|m| matches!(m.state, State::Pending | State::Firing))
        .collect();
    active.sort_by(|a, b| (&a.rule, &a.instance).cmp(&(&b.rule, &b.instance)));
    Ok(TestResult {
        at_ms,
        transitions,
        active,
        evaluations: engine.evaluations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::config::AgentConfig;

    #[test]
    fn silences_and_maintenance_windows_from_the_config() {
        let config = AgentConfig::parse(
            r#"
[[alerts.silence]]
match = '{alertname="disk_full"}'
ends = "2026-12-24T00:00:00Z"

[[alerts.maintenance]]
name = "sunday"
days = ["sun"]
at = "02:00"
duration = "2h"
timezone = "America/New_York"

[[alerts.maintenance]]
name = "move"
match = '{alertname=~"probe_.*"}'
starts = "2026-12-05T08:00:00Z"
ends = "2026-12-05T12:00:00Z"
"#,
        )
        .unwrap();
        let silences = silences_from_config(&config.alerts, 0).unwrap();
        let labels = BTreeMap::new();
        let at = |t: &str| t.parse::<jiff::Timestamp>().unwrap().as_millisecond();
        assert!(silences.silenced("disk_full", &labels, at("2026-12-01T00:00:00Z")));
        assert!(!silences.silenced("disk_full", &labels, at("2026-12-24T00:00:00Z")));
        // A silence without `starts` holds from the epoch, not from an absurd negative time.
        assert_eq!(silences.list()[0].starts_ms, 0);
        // Sunday 2026-12-06, 02:00 to 04:00 in New York (UTC-5): every alert.
        assert!(silences.silenced("cpu_high", &labels, at("2026-12-06T07:30:00Z")));
        assert!(!silences.silenced("cpu_high", &labels, at("2026-12-06T09:00:00Z")));
        assert!(silences.silenced("probe_down", &labels, at("2026-12-05T09:00:00Z")));
        assert!(!silences.silenced("cpu_high", &labels, at("2026-12-05T09:00:00Z")));

        for (bad, key) in [
            ("[[alerts.silence]]\nmatch = '{x=\"1\"}'\nends = \"soon\"\n", "alerts.silence[0].ends"),
            ("[[alerts.maintenance]]\nname = \"m\"\ndays = [\"someday\"]\nat = \"02:00\"\nduration = \"1h\"\n", "alerts.maintenance[0].days"),
            ("[[alerts.maintenance]]\nname = \"m\"\ndays = [\"sun\"]\nat = \"02:00\"\nduration = \"1h\"\ntimezone = \"Mars/Olympus\"\n", "alerts.maintenance[0].timezone"),
            ("[[alerts.maintenance]]\nname = \"m\"\n", "alerts.maintenance[0].name"),
            ("[[alerts.webhook]]\nname = \"w\"\nurl = \"ftp://x\"\n", "alerts.webhook[0].url"),
            ("[[alerts.exec]]\nname = \"x\"\ncommand = []\n", "alerts.exec[0].command"),
        ] {
            let error = format!("{:#}", AgentConfig::parse(bad).unwrap_err());
            assert!(error.contains(key), "{key} not named in {error}");
        }
    }
}
