//! `outpost rules check|test`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use clap::Subcommand;
use outpost_storage::{Options, Store, WriteBatch};

use crate::alerting::pack::{join_errors, parse_pack, AGENT_PACK, HUB_PACK};
use outpost::alert::engine::{AlertMessage, Engine, EngineOptions, State};
use outpost::alert::rules::{self, Rule, RuleSet};
use outpost::alert::schedule::Silences;

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Check rule files (or directories of them): every error, with file, rule and key.
    Check {
        /// Rule files or directories; `default` for the agent's built-in pack, `hub` for the
        /// hub's.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print rules as a Prometheus rule file (YAML), for Prometheus, vmalert or Outpost.
    ///
    /// Expressions, `for`, `keep_firing_for`, labels and annotations carry over; what
    /// Prometheus rules cannot say (clear thresholds, cooldowns, reminders, escalation,
    /// channels) does not.
    Export {
        /// Rule files or directories; `default` for the agent's built-in pack, `hub` for the
        /// hub's.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The rule group's name.
        #[arg(long, default_value = "outpost")]
        group: String,
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

fn load_files(files: &[PathBuf]) -> Result<RuleSet> {
    let mut all = RuleSet::default();
    let mut paths = Vec::new();
    for file in files {
        if file.as_os_str() == "default" {
            all.alerting.extend(parse_pack(AGENT_PACK)?);
        } else if file.as_os_str() == "hub" {
            all.alerting.extend(parse_pack(HUB_PACK)?);
        } else {
            paths.push(file.clone());
        }
    }
    match rules::load(&paths) {
        Ok(loaded) => {
            for rule in loaded.alerting {
                if all.alerting.iter().any(|r: &Rule| r.name == rule.name) {
                    bail!(
                        "{}: rule {}: name: also defined in the built-in pack",
                        rule.file.display(),
                        rule.name
                    );
                }
                all.alerting.push(rule);
            }
            all.recording.extend(loaded.recording);
            Ok(all)
        }
        Err(errors) => bail!(join_errors(&errors)),
    }
}

pub fn run(command: RulesCommand) -> Result<std::process::ExitCode> {
    match command {
        RulesCommand::Check { files } => {
            let rules = load_files(&files)?;
            if rules.recording.is_empty() {
                println!("{} rules are valid", rules.alerting.len());
            } else {
                println!(
                    "{} alerting and {} recording rules are valid",
                    rules.alerting.len(),
                    rules.recording.len()
                );
            }
            Ok(std::process::ExitCode::SUCCESS)
        }
        RulesCommand::Export { files, group } => {
            print!("{}", export(&files, &group)?);
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

/// The Prometheus rule file of `files`.
pub fn export(files: &[PathBuf], group: &str) -> Result<String> {
    let rules = load_files(files)?;
    if !rules.recording.is_empty() {
        bail!("the files hold recording rules: they are Prometheus rules already");
    }
    let source: Vec<String> = files
        .iter()
        .map(|f| match f.to_str() {
            Some("default") => "config/rules.toml".to_string(),
            Some("hub") => "config/hub-rules.toml".to_string(),
            _ => f.display().to_string(),
        })
        .collect();
    Ok(crate::alerting::prometheus::rules_yaml(
        &rules.alerting,
        group,
        &source.join(", "),
    ))
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
/// Every sample in `db` that the rules can see, in time order: the series keys, and
/// (timestamp, key index, value).
#[allow(clippy::type_complexity)] // two parallel lists, named where they are used
fn selected_history(
    rules: &RuleSet,
    db: &Path,
) -> Result<(Vec<outpost_storage::SeriesKey>, Vec<(i64, usize, f64)>)> {
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
    let mut points: Vec<(i64, usize, f64)> = Vec::new();
    let mut keys = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let watches = rules
        .alerting
        .iter()
        .flat_map(Rule::watches)
        .chain(rules.recording.iter().flat_map(|r| r.expression.watches()));
    for (selector, _) in watches {
        {
            for series in data.query_raw(&selector, i64::MIN / 4, i64::MAX / 4)? {
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
    Ok((keys, points))
}

/// A progress bar on a terminal, nothing otherwise.
fn progress_bar(steps: u64) -> indicatif::ProgressBar {
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        indicatif::ProgressBar::new(steps).with_style(
            indicatif::ProgressStyle::with_template("evaluating [{bar:40}] {pos}/{len} ({eta})")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        )
    } else {
        indicatif::ProgressBar::hidden()
    }
}

pub fn test(
    rules: &RuleSet,
    db: &Path,
    at: &str,
    from: Option<&str>,
    step_ms: i64,
) -> Result<TestResult> {
    let (keys, mut points) = selected_history(rules, db)?;
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
    let longest = rules
        .alerting
        .iter()
        .flat_map(Rule::watches)
        .chain(rules.recording.iter().flat_map(|r| r.expression.watches()))
        .map(|(_, window_ms)| window_ms)
        .max()
        .unwrap_or(0);
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
    let mut engine = Engine::open(&state, rules.clone(), options, Silences::default(), from_ms)?;
    engine.set_running_since(from_ms.max(oldest));
    let mut transitions = Vec::new();
    let mut next = 0;
    let mut t = from_ms;
    let bar = progress_bar(((at_ms - from_ms) / step_ms + 1) as u64);
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
