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

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    /// Pieces of PromQL, so that random sequences often parse and reach the evaluator.
    const TOKENS: &[&str] = &[
        "requests_total",
        "errors_total",
        "{instance=\"a\"}",
        "{instance=~\"a|b\"}",
        "{__name__=~\".+\"}",
        "[1m]",
        "[5m:30s]",
        "[10s:]",
        " offset 1m",
        " offset -30s",
        " @ 300",
        " @ start()",
        " @ end()",
        "(",
        ")",
        ",",
        " + ",
        " - ",
        " * ",
        " / ",
        " % ",
        " ^ ",
        " == ",
        " != ",
        " > bool ",
        " < ",
        " and ",
        " or ",
        " unless ",
        " atan2 ",
        " on(instance) ",
        " ignoring(instance) ",
        " group_left ",
        " group_right(x) ",
        "sum",
        "avg",
        "max",
        "topk(2,",
        "bottomk(-1,",
        "quantile(0.5,",
        "count_values(\"v\",",
        " by (instance) ",
        " without (instance) ",
        "rate(",
        "irate(",
        "increase(",
        "deriv(",
        "predict_linear(",
        "holt_winters(",
        "quantile_over_time(0.9,",
        "absent(",
        "absent_over_time(",
        "label_replace(",
        "label_join(",
        "histogram_quantile(0.9,",
        "clamp(",
        "round(",
        "scalar(",
        "vector(",
        "time()",
        "timestamp(",
        "sort(",
        "hour(",
        "1",
        "0",
        "-1",
        "1e308",
        "NaN",
        "Inf",
        "0.5",
        "\"x\"",
        "\"(\"",
        "-",
    ];

    fn expression() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(TOKENS), 1..24).prop_map(|t| t.concat())
    }

    /// Well-formed expressions built from PromQL's grammar, so that the evaluator is reached.
    fn grammatical() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            Just("requests_total".to_string()),
            Just("errors_total{instance=~\"a|c\"}".to_string()),
            Just("requests_total offset 1m".to_string()),
            Just("requests_total @ 120".to_string()),
            (-3.0f64..3.0).prop_map(|v| format!("{v}")),
            Just("NaN".to_string()),
            Just("time()".to_string()),
        ];
        leaf.prop_recursive(4, 24, 3, |inner| {
            let ranged = prop_oneof![
                Just("rate"),
                Just("irate"),
                Just("increase"),
                Just("delta"),
                Just("idelta"),
                Just("deriv"),
                Just("resets"),
                Just("changes"),
                Just("avg_over_time"),
                Just("max_over_time"),
                Just("stddev_over_time"),
                Just("last_over_time"),
                Just("absent_over_time"),
                Just("count_over_time"),
            ];
            let window = prop_oneof![Just("[1m]"), Just("[5m]"), Just("[15s]")];
            prop_oneof![
                (ranged.clone(), window.clone())
                    .prop_map(|(f, w)| format!("{f}(requests_total{w})")),
                (ranged, inner.clone()).prop_map(|(f, e)| format!("{f}(({e})[2m:20s])")),
                (
                    prop_oneof![
                        Just("abs"),
                        Just("ln"),
                        Just("sort"),
                        Just("absent"),
                        Just("timestamp"),
                        Just("scalar"),
                        Just("vector"),
                        Just("hour")
                    ],
                    inner.clone()
                )
                    .prop_map(|(f, e)| format!("{f}({e})")),
                (
                    prop_oneof![
                        Just("sum"),
                        Just("avg"),
                        Just("count"),
                        Just("stdvar"),
                        Just("group")
                    ],
                    prop_oneof![
                        Just(""),
                        Just(" by (instance)"),
                        Just(" without (instance)")
                    ],
                    inner.clone()
                )
                    .prop_map(|(a, g, e)| format!("{a}{g} ({e})")),
                (
                    prop_oneof![Just("topk"), Just("bottomk"), Just("quantile")],
                    -1.0f64..4.0,
                    inner.clone()
                )
                    .prop_map(|(a, k, e)| format!("{a}({k}, {e})")),
                (
                    inner.clone(),
                    prop_oneof![
                        Just(" + "),
                        Just(" / "),
                        Just(" > bool "),
                        Just(" and "),
                        Just(" or "),
                        Just(" unless "),
                        Just(" * on(instance) "),
                        Just(" % "),
                        Just(" - ignoring(instance) group_left "),
                        Just(" ^ ")
                    ],
                    inner.clone()
                )
                    .prop_map(|(l, op, r)| format!("({l}){op}({r})")),
                (inner.clone(), inner).prop_map(|(a, b)| format!(
                    "label_replace({a}, \"x\", \"$1\", \"instance\", \"(.*)\") - clamp({b}, 0, 1)"
                )),
            ]
        })
    }

    fn bounded() -> Options {
        Options {
            max_samples: 200_000,
            ..Options::default()
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Any expression: an answer or an error, never a panic, within the bounds.
        #[test]
        fn expressions_never_panic(text in expression(), at in -1_000_000i64..2_000_000) {
            let source = fixture();
            let deadline = Some(std::time::Instant::now() + std::time::Duration::from_secs(5));
            let _ = instant(&source, &text, at, &bounded(), deadline);
            let _ = range(&source, &text, at, at + 600_000, 7_000, &bounded(), deadline);
        }

        /// Well-formed expressions: every one is answered or refused with a clean error.
        #[test]
        fn grammatical_expressions_never_panic(text in grammatical(), at in 0i64..1_000_000) {
            let source = fixture();
            let deadline = Some(std::time::Instant::now() + std::time::Duration::from_secs(5));
            let _ = instant(&source, &text, at, &bounded(), deadline);
            let _ = range(&source, &text, at, at + 300_000, 15_000, &bounded(), deadline);
        }

        /// Any text at all, bytes that are not PromQL included.
        #[test]
        fn any_text_parses_or_fails_cleanly(text in ".{0,200}") {
            let _ = parse(&text);
            let _ = parse_selector(&text);
        }
    }

    #[test]
    fn deep_nesting_is_an_error_or_an_answer_not_a_crash() {
        for depth in [100, 1_000, 5_000, 30_000] {
            let text = format!("{}1{}", "(".repeat(depth), ")".repeat(depth));
            let _ = instant(&fixture(), &text, 0, &bounded(), None);
            let text = format!("{}requests_total", "-".repeat(depth));
            let _ = instant(&fixture(), &text, 0, &bounded(), None);
            let text = vec!["requests_total"; depth].join(" + ");
            let _ = instant(&fixture(), &text, 0, &bounded(), None);
            let text = format!(
                "{}requests_total{}",
                "sum(".repeat(depth),
                ")".repeat(depth)
            );
            let _ = instant(&fixture(), &text, 0, &bounded(), None);
        }
        let deep = format!("{}1{}", "(".repeat(300), ")".repeat(300));
        let error = instant(&fixture(), &deep, 0, &bounded(), None).unwrap_err();
        assert!(error.to_string().contains("deeper than"), "{error}");
    }

    #[test]
    fn a_huge_subquery_is_refused_before_it_is_evaluated() {
        let error = instant(
            &fixture(),
            "max_over_time(vector(1)[1000d:1ms])",
            0,
            &bounded(),
            None,
        )
        .unwrap_err();
        assert!(matches!(error, Error::TooManySamples(_)), "{error}");
    }
}

mod rollups {
    use super::*;
    use crate::{ManualWallClock, Retention, SeriesKey, WriteBatch};
    use std::sync::Arc;
    use std::time::Duration;

    /// 2 h windows of raw chunks are dropped whole: the first of three is gone after this.
    const BASE: i64 = 1_000 * 3_600_000;
    const HOUR: i64 = 3_600_000;

    fn gauge(i: i64) -> f64 {
        ((i * 7919) % 100) as f64 + 0.25
    }

    /// A store whose first two hours of raw samples (every 10 s) aged out, leaving rollups.
    fn aged_store(dir: &std::path::Path) -> Store {
        let options = crate::Options {
            retention: Retention {
                raw: Some(Duration::from_secs(3 * 3600)),
                minute: None,
                hour: None,
            },
            wall_clock: Some(Arc::new(ManualWallClock::new(BASE + 6 * HOUR))),
            ..crate::Options::default()
        };
        let store = Store::open(dir.join("aged.redb"), options).unwrap();
        let g = store.series_id(&SeriesKey::new("g", []).unwrap()).unwrap();
        let c = store
            .series_id(&SeriesKey::new("c_total", []).unwrap())
            .unwrap();
        let mut batch = WriteBatch::default();
        for i in 0..(6 * 360) {
            batch.sample(g, BASE + i * 10_000, gauge(i));
            batch.sample(c, BASE + i * 10_000, i as f64 * 1.5);
        }
        store.write(batch).unwrap();
        store.seal().unwrap();
        store.seal().unwrap();
        store
    }

    fn expected(from: i64, to: i64) -> Vec<f64> {
        (0..(6 * 360))
            .filter(|i| (from..=to).contains(&(BASE + i * 10_000)))
            .map(gauge)
            .collect()
    }

    fn one(store: &Store, text: &str, at: i64) -> (f64, Vec<String>) {
        let answer = instant(store, text, at, &Options::default(), None).unwrap();
        match answer.value {
            Value::Vector(v) if v.len() == 1 => (v[0].v, answer.warnings),
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn aged_out_samples_are_answered_from_rollups_exactly_where_that_is_exact() {
        let dir = tempfile::tempdir().unwrap();
        let store = aged_store(dir.path());
        let raw = store
            .query_raw(&crate::Selector::parse("g").unwrap(), BASE, BASE + HOUR)
            .unwrap();
        assert!(
            raw[0].points.is_empty(),
            "the first hour's raw samples are gone"
        );

        let at = BASE + 2 * HOUR;
        let values = expected(at - HOUR, at);
        let (max, warnings) = one(&store, "max_over_time(g[1h])", at);
        assert_eq!(max, values.iter().cloned().fold(f64::MIN, f64::max));
        assert!(warnings.is_empty(), "{warnings:?}");
        let (avg, warnings) = one(&store, "avg_over_time(g[1h])", at);
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        assert!((avg - mean).abs() <= 1e-9 * mean, "{avg} {mean}");
        assert!(warnings.is_empty(), "{warnings:?}");
        let (count, _) = one(&store, "count_over_time(g[1h])", at);
        assert_eq!(count, values.len() as f64);

        // A window that cuts a bucket, a rate, an instant value: approximations, said so.
        let (_, warnings) = one(&store, "max_over_time(g[90s])", BASE + HOUR + 30_000);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        let (rate, warnings) = one(&store, "rate(c_total[5m])", BASE + HOUR);
        // From each minute's last value: near, not equal (five buckets extrapolated).
        assert!((rate - 0.15).abs() < 0.025, "{rate}");
        assert!(!warnings.is_empty());
        let (value, warnings) = one(&store, "g", BASE + HOUR + 65_000);
        assert_eq!(value, gauge(365), "the last sample of the minute before");
        assert!(!warnings.is_empty());

        // A caller that steps by hours reads hour buckets; by minutes, minute buckets.
        let matchers = [Matcher::new(
            promql_parser::label::MatchOp::Equal,
            "__name__",
            "g",
        )];
        let widths = |resolution: i64| -> Vec<i64> {
            let found = store
                .select_rollups(&matchers, BASE, BASE + 2 * HOUR, resolution)
                .unwrap();
            let mut widths: Vec<i64> = found[0].buckets.iter().map(|b| b.width).collect();
            widths.dedup();
            widths
        };
        assert_eq!(widths(HOUR), vec![HOUR]);
        assert_eq!(widths(15_000), vec![60_000]);

        // Series lookups by time see the rollups of aged-out hours too, and nothing past the data.
        let g = crate::Selector::parse("g").unwrap();
        assert_eq!(
            store.series_between(&g, BASE, BASE + HOUR).unwrap().len(),
            1
        );
        assert_eq!(
            store
                .series_between(&g, BASE + 5 * HOUR, BASE + 6 * HOUR)
                .unwrap()
                .len(),
            1
        );
        // Exactly where the data is: not wherever a chunk's window (a day of minutes, 30 days
        // of hours) reaches.
        let between = |from: i64, to: i64| store.series_between(&g, from, to).unwrap().len();
        let last = BASE + 6 * HOUR - 10_000;
        assert_eq!(between(last, last), 1, "the last raw sample");
        assert_eq!(between(last + 1, last + HOUR), 0, "just after the data");
        assert_eq!(
            between(BASE + 3 * 24 * HOUR, BASE + 3 * 24 * HOUR + HOUR),
            0
        );
        assert_eq!(
            between(BASE + 61 * 24 * HOUR, BASE + 61 * 24 * HOUR + HOUR),
            0
        );
        assert_eq!(between(BASE - HOUR, BASE - 1), 0, "just before the data");
        assert_eq!(
            between(BASE + 30 * 60_000, BASE + 30 * 60_000),
            1,
            "aged out"
        );
        assert_eq!(
            between(BASE + 5, BASE + 5),
            1,
            "inside the first minute's bucket"
        );

        // Raw samples answer where they are kept, without a warning.
        let (value, warnings) = one(&store, "g", BASE + 5 * HOUR);
        assert_eq!((value, warnings.len()), (gauge(5 * 360), 0));
    }
}
