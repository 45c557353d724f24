//! The evaluator on small hand-made series; the differential test against Prometheus covers
//! the rest (`tests/it/promql.rs`).

use super::*;

/// Series held in memory, selected with the same matchers as the store.
struct Memory(Vec<Series>);

impl Source for Memory {
    fn select(&self, matchers: &[Matcher], from: i64, to: i64) -> Result<Vec<Series>> {
        Ok(self
            .0
            .iter()
            .filter(|s| matchers.iter().all(|m| m.is_match(s.labels.get(&m.name))))
            .map(|s| Series {
                labels: s.labels.clone(),
                points: s
                    .points
                    .iter()
                    .copied()
                    .filter(|(t, _)| (from..=to).contains(t))
                    .collect(),
            })
            .collect())
    }
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    Labels::new(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

/// A counter rising by `per_step` every 15 s from 0 s to 600 s.
fn counter(name: &str, instance: &str, per_step: f64) -> Series {
    Series {
        labels: labels(&[("__name__", name), ("instance", instance)]),
        points: (0..=40)
            .map(|i| (i * 15_000, i as f64 * per_step))
            .collect(),
    }
}

fn fixture() -> Memory {
    Memory(vec![
        counter("requests_total", "a", 1.0),
        counter("requests_total", "b", 3.0),
        counter("errors_total", "a", 0.5),
    ])
}

fn vector_at(text: &str, at_ms: i64) -> Vec<(String, f64)> {
    let answer = instant(&fixture(), text, at_ms, &Options::default(), None).unwrap();
    match answer.value {
        Value::Vector(samples) => samples
            .into_iter()
            .map(|s| (s.labels.to_string(), s.v))
            .collect(),
        other => panic!("not a vector: {other:?}"),
    }
}

#[test]
fn a_selector_takes_the_latest_sample_within_the_lookback() {
    assert_eq!(
        vector_at("requests_total{instance=\"b\"}", 100_000),
        vec![(
            "{__name__=\"requests_total\", instance=\"b\"}".to_string(),
            18.0
        )]
    );
    // 5 minutes after the last sample it is gone.
    assert!(vector_at("requests_total", 600_000 + 300_001).is_empty());
    assert_eq!(vector_at("requests_total", 600_000 + 300_000).len(), 2);
}

#[test]
fn rate_of_a_steady_counter_is_its_slope() {
    let rates = vector_at("rate(requests_total[1m])", 300_000);
    assert_eq!(rates.len(), 2);
    assert!((rates[0].1 - 1.0 / 15.0).abs() < 1e-12, "{rates:?}");
    assert!((rates[1].1 - 3.0 / 15.0).abs() < 1e-12, "{rates:?}");
    assert!(!rates[0].0.contains("__name__"));
}

#[test]
fn vector_matching_divides_series_with_the_same_labels() {
    let ratio = vector_at("errors_total / ignoring() requests_total", 300_000);
    assert_eq!(ratio, vec![("{instance=\"a\"}".to_string(), 0.5)]);
    let sum = vector_at("sum(requests_total)", 300_000);
    assert_eq!(sum, vec![("{}".to_string(), 20.0 + 60.0)]);
}

#[test]
fn a_range_query_answers_every_step() {
    let answer = range(
        &fixture(),
        "sum by (instance) (requests_total)",
        0,
        60_000,
        15_000,
        &Options::default(),
        None,
    )
    .unwrap();
    let Value::Matrix(series) = answer.value else {
        panic!("not a matrix")
    };
    assert_eq!(series.len(), 2);
    assert_eq!(series[0].points.len(), 5);
    assert_eq!(series[1].points[4], (60_000, 12.0));
}

#[test]
fn bounds_give_errors_not_answers() {
    let options = Options {
        max_samples: 10,
        ..Options::default()
    };
    let error = instant(&fixture(), "requests_total[10m]", 600_000, &options, None).unwrap_err();
    assert!(matches!(error, Error::TooManySamples(_)), "{error}");
    let error = range(
        &fixture(),
        "1",
        0,
        1_000_000_000,
        1,
        &Options::default(),
        None,
    )
    .unwrap_err();
    assert!(error.to_string().contains("11000 points"), "{error}");
    assert!(matches!(parse("sum("), Err(Error::BadData(_))));
}

#[test]
fn values_are_spelled_as_prometheus_spells_them() {
    for (v, text) in [
        (1.0, "1"),
        (0.1, "0.1"),
        (f64::NAN, "NaN"),
        (f64::INFINITY, "+Inf"),
        (f64::NEG_INFINITY, "-Inf"),
        (1e21, "1e+21"),
        (1.5e-7, "1.5e-07"),
        (123456789.0, "123456789"),
    ] {
        assert_eq!(format_value(v), text);
    }
}
