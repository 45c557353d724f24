//! Rule files are written by people and reloaded on SIGHUP: any text must load or be refused
//! with errors, and a rule that loads must evaluate and render its templates, never panic. The
//! same bytes are tried as a Prometheus rule file (YAML, PromQL, Go templates) run by the engine.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use outpost::alert::engine::{instance_name, Engine, EngineOptions};
use outpost::alert::rules::{self, Condition, RuleSet};
use outpost::alert::schedule::Silences;
use outpost::alert::template::{Context, Template};
use outpost::alert::window::Windows;
use outpost_storage::{SeriesKey, WriteBatch};

const KEYS: [&str; 4] = [
    "up",
    "cpu{core=\"0\"}",
    "mem_used{host=\"a/b\"}",
    "mem_total{host=\"a/b\"}",
];

/// A Prometheus rule file that loads runs through the engine over a few series.
fn prometheus_file(text: &str) {
    if let Ok(template) = Template::parse_prometheus(text) {
        let _ = template.render(&Context::default());
    }
    let Ok(parsed) = outpost::alert::promrules::parse(Path::new("fuzz.yml"), text) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = outpost_storage::Store::open(dir.path().join("f.redb"), Default::default()).unwrap();
    let options = EngineOptions {
        device: "fuzz".into(),
        mqtt_base: Some("outpost/v1/fuzz/fuzz".into()),
        channels: vec!["hook".into()],
        max_queued: 10,
    };
    let set = RuleSet {
        alerting: parsed.rules,
        recording: parsed.recordings,
    };
    let mut engine = Engine::open(&store, set, options, Silences::default(), 0).unwrap();
    for t in 0..5 {
        for key in KEYS {
            engine.observe(&SeriesKey::parse(key).unwrap(), t * 1000, t as f64);
        }
        let _ = engine.evaluate(t * 1000, &mut WriteBatch::default());
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    prometheus_file(&text);
    if let Ok(template) = Template::parse(&text) {
        let _ = template.render(&Context::default());
    }
    let Ok(rules) = rules::parse(Path::new("fuzz.toml"), &text) else {
        return;
    };
    let mut windows = Windows::new(&rules, &[]);
    for t in 0..20 {
        for (i, key) in KEYS.iter().enumerate() {
            let key = SeriesKey::parse(key).unwrap();
            windows.observe(&key, t * 1000 - (i as i64 % 2) * 1500, (t as f64) * 0.1 - 1.0);
        }
    }
    for (r, rule) in rules.iter().enumerate() {
        let Condition::Threshold(threshold) = &rule.condition else {
            continue;
        };
        for evaluation in windows.evaluate(r, threshold, 20_000, 0) {
            let _ = instance_name(&evaluation.labels);
            let _ = rule.summary.render(&Context {
                value: evaluation.value,
                labels: &evaluation.labels,
                ..Context::default()
            });
        }
    }
});
