//! The alert engine's evaluation: 1,000 rules, each selecting one series, over a 5-minute window
//! of 1 Hz data, one evaluation per tick (`taskset -c 0 cargo bench --bench alerts`). Target:
//! at most 5 ms per tick on one core. Also the cost of feeding the engine one round of samples.

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

fn evaluate(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("bench.redb"), Options::default()).unwrap();
    let rules = rules::parse(Path::new("bench.toml"), &rule_file()).unwrap();
    let options = EngineOptions {
        device: "bench".into(),
        mqtt_base: Some("outpost/v1/bench/bench".into()),
        channels: vec!["hook".into()],
        max_queued: 10_000,
    };
    let mut engine = Engine::open(&store, rules, options, Silences::default(), 0).unwrap();
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

criterion_group!(benches, evaluate);
criterion_main!(benches);
