//! Rule files are written by people and reloaded on SIGHUP: any text must load or be refused
//! with errors, and a rule that loads must evaluate and render its templates, never panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use outpost::alert::engine::instance_name;
use outpost::alert::rules;
use outpost::alert::template::{Context, Template};
use outpost::alert::window::Windows;
use outpost_storage::SeriesKey;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(template) = Template::parse(&text) {
        let _ = template.render(&Context::default());
    }
    let Ok(rules) = rules::parse(Path::new("fuzz.toml"), &text) else {
        return;
    };
    let mut windows = Windows::new(&rules);
    let keys = ["up", "cpu{core=\"0\"}", "mem_used{host=\"a/b\"}", "mem_total{host=\"a/b\"}"];
    for t in 0..20 {
        for (i, key) in keys.iter().enumerate() {
            let key = SeriesKey::parse(key).unwrap();
            windows.observe(&key, t * 1000 - (i as i64 % 2) * 1500, (t as f64) * 0.1 - 1.0);
        }
    }
    for (r, rule) in rules.iter().enumerate() {
        for evaluation in windows.evaluate(r, rule, 20_000, 0) {
            let _ = instance_name(&evaluation.labels);
            let _ = rule.summary.render(&Context {
                value: evaluation.value,
                labels: &evaluation.labels,
                ..Context::default()
            });
        }
    }
});
