//! The alert engine's evaluation: 1,000 rules, each selecting one series, over a 5-minute window
//! of 1 Hz data, one evaluation per tick (`taskset -c 0 cargo bench --bench alerts`). Target:
//! at most 5 ms per tick on one core. Also the cost of feeding the engine one round of samples,
//! and one round of 1,000 Prometheus rules (PromQL) over 300 series.

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use outpost::alert::engine::{Engine, EngineOptions};
use outpost::alert::rules;
use outpost::alert::schedule::Silences;
use outpost_storage::{Options, SeriesKey, Store, WriteBatch};

const RULES: usize = 1000;

fn rule_file() -> String {
    let reducers = ["avg", "max", "min", "last", "rate"];
    let mut text = String::new();
    for i in 0..RULES {
        // Thresholds no sample reaches: the steady state of a healthy device, where every rule
        // is evaluated and none changes state.
        text.push_str(&format!(
            "[[rule]]\nname = \"r{i}\"\nselect = 'bench_metric{{n=\"{i}\"}}'\nreduce = \"{}\"\nwindow = \"5m\"\nthreshold = 1e9\nfor = \"1m\"\n\n",
            reducers[i % reducers.len()]
        ));
    }
    text
}

/// An engine over `rules` with its store in a scratch directory (kept alive with it).
fn engine(rules: rules::RuleSet) -> (tempfile::TempDir, Engine) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("bench.redb"), Options::default()).unwrap();
    let options = EngineOptions {
        device: "bench".into(),
        mqtt_base: Some("outpost/v1/bench/bench".into()),
        channels: vec!["hook".into()],
        max_queued: 10_000,
    };
    let engine = Engine::open(&store, rules, options, Silences::default(), 0).unwrap();
    (dir, engine)
}

fn evaluate(c: &mut Criterion) {
    let rules = rules::parse(Path::new("bench.toml"), &rule_file()).unwrap();
    let (_dir, mut engine) = engine(rules.into());
    let keys: Vec<SeriesKey> = (0..RULES)
        .map(|i| SeriesKey::parse(&format!("bench_metric{{n=\"{i}\"}}")).unwrap())
        .collect();
    // Five minutes of 1 Hz samples for every series.
    for t in 0..300i64 {
        for (i, key) in keys.iter().enumerate() {
            engine.observe(key, t * 1000, (t as f64).sin() + i as f64);
        }
    }
    let mut group = c.benchmark_group("alerts");
    let mut now = 300_000i64;
    group.bench_function("evaluate/1000-rules-5m-window", |b| {
        b.iter(|| {
            let mut write = WriteBatch::default();
            let outcome = engine.evaluate(black_box(now), &mut write);
            black_box(outcome);
            now += 1;
        })
    });
    group.bench_function("observe/1000-samples", |b| {
        let mut t = 300_000i64;
        b.iter(|| {
            t += 1000;
            for (i, key) in keys.iter().enumerate() {
                engine.observe(key, t, i as f64);
            }
        })
    });
    group.finish();
}

const SERIES: usize = 300;

/// 1,000 Prometheus alerting rules over 300 series, in the shapes people write: a range
/// function over one series, an aggregation over all of them, a ratio of two, the latest value;
/// thresholds nothing reaches.
fn prometheus_rule_file() -> String {
    let mut text = String::from("groups:\n  - name: bench\n    rules:\n");
    for i in 0..RULES {
        let n = i % SERIES;
        let expr = match i % 5 {
            0 => format!("avg_over_time(bench_metric{{n=\"{n}\"}}[5m]) > 1e9"),
            1 => format!("rate(bench_metric{{n=\"{n}\"}}[1m]) > 1e9"),
            2 => format!("max_over_time(bench_metric{{n=\"{n}\"}}[5m]) > 1e9"),
            3 => format!("bench_metric{{n=\"{n}\"}} / on(n) (bench_metric{{n=\"{n}\"}} + 1) > 1e9"),
            _ => format!("bench_metric{{n=\"{n}\"}} > 1e9"),
        };
        text.push_str(&format!(
            "      - alert: p{i}\n        expr: '{expr}'\n        for: 1m\n"
        ));
    }
    text
}

fn evaluate_prometheus(c: &mut Criterion) {
    let parsed =
        outpost::alert::promrules::parse(Path::new("bench.yml"), &prometheus_rule_file()).unwrap();
    let (_dir, mut engine) = engine(rules::RuleSet {
        alerting: parsed.rules,
        recording: parsed.recordings,
    });
    let keys: Vec<SeriesKey> = (0..SERIES)
        .map(|i| SeriesKey::parse(&format!("bench_metric{{n=\"{i}\"}}")).unwrap())
        .collect();
    for t in 0..300i64 {
        for (i, key) in keys.iter().enumerate() {
            engine.observe(key, t * 1000, (t as f64).sin() + i as f64);
        }
    }
    let mut group = c.benchmark_group("alerts");
    let mut now = 300_000i64;
    group.bench_function("evaluate/1000-prometheus-rules-300-series", |b| {
        b.iter(|| {
            let mut write = WriteBatch::default();
            let outcome = engine.evaluate(black_box(now), &mut write);
            assert!(outcome.transitions.is_empty());
            black_box(outcome);
            now += 1;
        })
    });
    group.finish();
}

criterion_group!(benches, evaluate, evaluate_prometheus);
criterion_main!(benches);
