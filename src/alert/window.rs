//! The samples the rules look at: for each series that some rule selects, the last window's
//! worth, fed as the agent writes them, so that an evaluation reads memory and never the store.

use std::collections::{BTreeMap, HashMap, VecDeque};

use outpost_storage::SeriesKey;

use outpost_storage::promql::{self, Labels};
use outpost_storage::Selector;

use super::rules::{Condition, Expression, Recording, Reducer, Rule, Threshold};

/// One tracked series.
#[derive(Debug)]
struct Tracked {
    key: SeriesKey,
    /// The key as PromQL sees it, made once.
    labels: Labels,
    /// Oldest first; always at least the newest sample once there has been one.
    samples: VecDeque<(i64, f64)>,
    keep_ms: i64,
}

/// What one rule or recording reads: its selectors with the window each needs, the tracked
/// series each selects, and (for expressions) which selector a matcher set is.
#[derive(Debug, Default)]
struct Item {
    watches: Vec<(Selector, i64)>,
    series: Vec<Vec<usize>>,
    by_key: HashMap<String, usize>,
}

/// The recent samples of every series some rule or recording reads. Items are numbered rules
/// first, then recordings.
#[derive(Debug, Default)]
pub struct Windows {
    tracked: Vec<Tracked>,
    /// Every key seen, and its tracked index if some rule selects it.
    index: HashMap<SeriesKey, Option<usize>>,
    items: Vec<Item>,
}

/// One alert instance's evaluation: its labels (the series' without the metric name), its
/// value (`None` when the window has too few samples) and whether the condition holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub labels: BTreeMap<String, String>,
    pub value: Option<f64>,
    /// For `absent` rules: whether the series has no sample in the window.
    pub absent: bool,
    /// Whether the rule's `when` condition holds for it (true without one).
    pub gate: bool,
}

impl Windows {
    pub fn new(rules: &[Rule], recordings: &[Recording]) -> Windows {
        let expression_keys = |e: &Expression| -> HashMap<String, usize> {
            e.selectors
                .iter()
                .enumerate()
                .map(|(i, w)| (w.key.clone(), i))
                .collect()
        };
        let mut items = Vec::with_capacity(rules.len() + recordings.len());
        for rule in rules {
            let watches = rule.watches();
            let by_key = match &rule.condition {
                Condition::Expression(e) => expression_keys(e),
                Condition::Threshold(_) => HashMap::new(),
            };
            items.push(Item {
                series: vec![Vec::new(); watches.len()],
                watches,
                by_key,
            });
        }
        for recording in recordings {
            let watches = recording.expression.watches();
            items.push(Item {
                series: vec![Vec::new(); watches.len()],
                watches,
                by_key: expression_keys(&recording.expression),
            });
        }
        Windows {
            items,
            ..Windows::default()
        }
    }

    /// The longest window anything reads, to backfill from the store at start.
    pub fn longest_window_ms(&self) -> i64 {
        self.items
            .iter()
            .flat_map(|item| item.watches.iter().map(|w| w.1))
            .max()
            .unwrap_or(0)
    }

    /// Every selector read, to backfill from the store at start.
    pub fn selectors(&self) -> impl Iterator<Item = &Selector> {
        self.items
            .iter()
            .flat_map(|item| item.watches.iter().map(|w| &w.0))
    }

    /// Takes one sample. Cheap for series no rule selects: one hash lookup.
    pub fn observe(&mut self, key: &SeriesKey, ts: i64, value: f64) {
        let slot = match self.index.get(key) {
            Some(slot) => *slot,
            None => self.track(key),
        };
        let Some(i) = slot else { return };
        let tracked = &mut self.tracked[i];
        match tracked.samples.back() {
            // A rewrite of the newest timestamp replaces it; an out-of-order sample is kept in
            // order, as the store keeps it.
            Some(&(last, _)) if ts == last => {
                tracked.samples.back_mut().expect("not empty").1 = value;
            }
            Some(&(last, _)) if ts < last => {
                let at = tracked.samples.partition_point(|s| s.0 < ts);
                if tracked.samples.get(at).is_some_and(|s| s.0 == ts) {
                    tracked.samples[at].1 = value;
                } else {
                    tracked.samples.insert(at, (ts, value));
                }
            }
            _ => tracked.samples.push_back((ts, value)),
        }
        let newest = tracked.samples.back().expect("not empty").0;
        while tracked.samples.len() > 1
            && tracked
                .samples
                .front()
                .is_some_and(|s| s.0 <= newest - tracked.keep_ms)
        {
            tracked.samples.pop_front();
        }
    }

    fn track(&mut self, key: &SeriesKey) -> Option<usize> {
        let mut keep_ms = 0;
        let mut selected_by = Vec::new();
        for (item_index, item) in self.items.iter().enumerate() {
            for (watch, (selector, window_ms)) in item.watches.iter().enumerate() {
                if selector.matches(key) {
                    keep_ms = keep_ms.max(*window_ms);
                    selected_by.push((item_index, watch));
                }
            }
        }
        let slot = if selected_by.is_empty() {
            None
        } else {
            let i = self.tracked.len();
            self.tracked.push(Tracked {
                key: key.clone(),
                labels: Labels::from_key(key),
                samples: VecDeque::new(),
                keep_ms,
            });
            for (item, watch) in selected_by {
                self.items[item].series[watch].push(i);
            }
            Some(i)
        };
        self.index.insert(key.clone(), slot);
        slot
    }

    /// Item `item`'s recent samples as a PromQL source.
    pub fn source(&self, item: usize) -> RecentSamples<'_> {
        RecentSamples {
            windows: self,
            item,
        }
    }

    /// An `absent` rule: how long each selected series has been silent, and whether that is
    /// its whole window.
    fn evaluate_absent(
        &self,
        select: &[usize],
        rule: &Threshold,
        now_ms: i64,
        running_since_ms: i64,
    ) -> Vec<Evaluation> {
        let from = now_ms - rule.window_ms;
        let mut out = Vec::with_capacity(select.len().max(1));
        for &i in select {
            let tracked = &self.tracked[i];
            let last = tracked.samples.back().map(|s| s.0);
            let seen_at = last.unwrap_or(running_since_ms).max(running_since_ms);
            out.push(Evaluation {
                labels: labels_of(&tracked.key),
                value: Some((now_ms - last.unwrap_or(running_since_ms)) as f64 / 1000.0),
                absent: seen_at <= from,
                gate: true,
            });
        }
        if out.is_empty() && rule.fire_if_never_seen {
            // Nothing ever matched: one alert with the labels the selector pins.
            let labels = rule
                .select
                .equalities()
                .filter(|(l, _)| *l != "__name__")
                .map(|(l, v)| (l.to_string(), v.to_string()))
                .collect();
            out.push(Evaluation {
                labels,
                value: Some((now_ms - running_since_ms) as f64 / 1000.0),
                absent: running_since_ms <= from,
                gate: true,
            });
        }
        out
    }

    /// Evaluates rule number `r`, a threshold rule, at `now_ms`. `running_since_ms` is when
    /// data started to be watched: an `absent` rule never fires for a window that reaches
    /// before it.
    pub fn evaluate(
        &self,
        r: usize,
        rule: &Threshold,
        now_ms: i64,
        running_since_ms: i64,
    ) -> Vec<Evaluation> {
        let series = &self.items[r].series;
        let select = &series[0];
        if rule.reduce == Reducer::Absent {
            return self.evaluate_absent(select, rule, now_ms, running_since_ms);
        }
        let divisors: &[usize] = match rule.divide_by {
            Some(_) => &series[1],
            None => &[],
        };
        let gated: &[usize] = match rule.when {
            Some(_) => series.last().map_or(&[], Vec::as_slice),
            None => &[],
        };
        let reduce_side = |i: usize, reducer: Reducer, window_ms: i64| {
            let samples = &self.tracked[i].samples;
            let start = samples.partition_point(|s| s.0 <= now_ms - window_ms);
            let end = samples.partition_point(|s| s.0 <= now_ms);
            reduce(reducer, samples.range(start..end))
        };
        let join_key = |key: &SeriesKey, on: &Option<Vec<String>>| -> Vec<(String, String)> {
            key.labels()
                .filter(|(l, _)| on.as_ref().is_none_or(|on| on.iter().any(|o| o == l)))
                .map(|(l, v)| (l.to_string(), v.to_string()))
                .collect()
        };
        let denominators: Option<JoinedSide<'_, Option<f64>>> =
            rule.divide_by.as_ref().map(|(side, on)| {
                let values = divisors
                    .iter()
                    .map(|&i| {
                        (
                            join_key(&self.tracked[i].key, on),
                            reduce_side(i, side.reduce, side.window_ms),
                        )
                    })
                    .collect();
                (values, on)
            });
        let gates: Option<JoinedSide<'_, bool>> = rule.when.as_ref().map(|gate| {
            let values = gated
                .iter()
                .map(|&i| {
                    let holds = reduce_side(i, gate.side.reduce, gate.side.window_ms)
                        .is_some_and(|v| gate.op.holds(v, gate.threshold));
                    (join_key(&self.tracked[i].key, &gate.on), holds)
                })
                .collect();
            (values, &gate.on)
        });
        select
            .iter()
            .map(|&i| {
                let key = &self.tracked[i].key;
                let own = reduce_side(i, rule.reduce, rule.window_ms);
                let value = match &denominators {
                    None => own,
                    Some((values, on)) => {
                        match (own, values.get(&join_key(key, on)).copied().flatten()) {
                            (Some(n), Some(d)) if d != 0.0 => Some(n / d),
                            _ => None,
                        }
                    }
                };
                let gate = match &gates {
                    None => true,
                    Some((values, on)) => values.get(&join_key(key, on)).copied().unwrap_or(false),
                };
                Evaluation {
                    labels: labels_of(key),
                    value,
                    absent: false,
                    gate,
                }
            })
            .collect()
    }
}

/// Values by the labels that join one side of a rule to another.
type Joined<T> = HashMap<Vec<(String, String)>, T>;
/// A side's joined values and the labels it joins on.
type JoinedSide<'a, T> = (Joined<T>, &'a Option<Vec<String>>);

/// The samples one rule or recording reads, for the PromQL evaluator.
pub struct RecentSamples<'a> {
    windows: &'a Windows,
    item: usize,
}

impl promql::Source for RecentSamples<'_> {
    fn select(
        &self,
        matchers: &[promql::Matcher],
        from: i64,
        to: i64,
    ) -> promql::Result<Vec<promql::Series>> {
        let item = &self.windows.items[self.item];
        let Some(&watch) = item.by_key.get(&promql::matchers_key(matchers)) else {
            return Err(promql::Error::Execution(
                "a selector that the rule's windows do not keep".into(),
            ));
        };
        let mut out = Vec::with_capacity(item.series[watch].len());
        for &i in &item.series[watch] {
            let tracked = &self.windows.tracked[i];
            let start = tracked.samples.partition_point(|s| s.0 < from);
            let end = tracked.samples.partition_point(|s| s.0 <= to);
            if start < end {
                out.push(promql::Series {
                    labels: tracked.labels.clone(),
                    points: tracked.samples.range(start..end).copied().collect(),
                });
            }
        }
        Ok(out)
    }
}

fn labels_of(key: &SeriesKey) -> BTreeMap<String, String> {
    key.owned_labels().into_iter().collect()
}

/// A reducer over samples in time order.
pub fn reduce<'a>(
    reducer: Reducer,
    samples: impl ExactSizeIterator<Item = &'a (i64, f64)> + DoubleEndedIterator + Clone,
) -> Option<f64> {
    if samples.len() == 0 {
        return None;
    }
    let mut values = samples.clone().map(|s| s.1);
    match reducer {
        Reducer::Last => values.next_back(),
        Reducer::Avg => {
            let n = samples.len() as f64;
            Some(values.sum::<f64>() / n)
        }
        Reducer::Min => values.reduce(f64::min),
        Reducer::Max => values.reduce(f64::max),
        Reducer::Increase | Reducer::Rate => {
            if samples.len() < 2 {
                return None;
            }
            let mut increase = 0.0;
            let mut previous: Option<f64> = None;
            for v in values {
                if let Some(p) = previous {
                    // A counter that went down was reset: it counted up from zero since.
                    increase += if v >= p { v - p } else { v };
                }
                previous = Some(v);
            }
            if reducer == Reducer::Increase {
                return Some(increase);
            }
            let first = samples.clone().next().expect("two samples").0;
            let last = samples.clone().next_back().expect("two samples").0;
            (last > first).then(|| increase / ((last - first) as f64 / 1000.0))
        }
        Reducer::Absent => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::rules::parse;
    use std::path::Path;

    fn rules(text: &str) -> Vec<Rule> {
        parse(Path::new("t.toml"), text).unwrap()
    }

    fn key(text: &str) -> SeriesKey {
        SeriesKey::parse(text).unwrap()
    }

    #[test]
    fn reducers_follow_their_definitions() {
        let s = [(0, 1.0), (1000, 5.0), (2000, 3.0), (3000, 1.0), (4000, 4.0)];
        assert_eq!(reduce(Reducer::Last, s.iter()), Some(4.0));
        assert_eq!(reduce(Reducer::Avg, s.iter()), Some(2.8));
        assert_eq!(reduce(Reducer::Min, s.iter()), Some(1.0));
        assert_eq!(reduce(Reducer::Max, s.iter()), Some(5.0));
        // 1→5 +4, 5→3 reset +3, 3→1 reset +1, 1→4 +3.
        assert_eq!(reduce(Reducer::Increase, s.iter()), Some(11.0));
        assert_eq!(reduce(Reducer::Rate, s.iter()), Some(11.0 / 4.0));
        assert_eq!(reduce(Reducer::Rate, s[..1].iter()), None);
        assert_eq!(reduce(Reducer::Avg, s[..0].iter()), None);
    }

    #[test]
    fn windows_select_per_series_and_join_ratios() {
        let rules = rules(
            r#"
[[rule]]
name = "cpu"
select = 'cpu{core!="total"}'
reduce = "avg"
window = "10s"
threshold = 0.5
[[rule]]
name = "mem"
select = "used"
divide_by = "total"
threshold = 0.9
[[rule]]
name = "gone"
select = "heartbeat"
reduce = "absent"
window = "5s"
[[rule]]
name = "never"
select = 'missing{job="x"}'
reduce = "absent"
window = "5s"
"#,
        );
        let mut w = Windows::new(&rules, &[]);
        let threshold = |r: usize| match &rules[r].condition {
            Condition::Threshold(t) => t,
            Condition::Expression(_) => unreachable!("threshold rules"),
        };
        let feed = |w: &mut Windows, seconds: std::ops::Range<i64>| {
            for t in seconds {
                let ts = t * 1000;
                w.observe(
                    &key(r#"cpu{core="0"}"#),
                    ts,
                    if t >= 10 { 1.0 } else { 0.0 },
                );
                w.observe(&key(r#"cpu{core="1"}"#), ts, 0.2);
                w.observe(&key(r#"cpu{core="total"}"#), ts, 0.6);
                w.observe(&key(r#"used{host="a"}"#), ts, 95.0);
                w.observe(&key(r#"total{host="a"}"#), ts, 100.0);
                w.observe(&key(r#"used{host="b"}"#), ts, 50.0);
                w.observe(&key("unrelated"), ts, 1.0);
                if t < 12 {
                    w.observe(&key("heartbeat"), ts, 1.0);
                }
            }
        };
        feed(&mut w, 0..15);
        let cpu_earlier = w.evaluate(0, threshold(0), 14_000, 0);
        assert_eq!(
            cpu_earlier[0].value,
            Some(0.5),
            "(4s, 14s]: five of ten at 1.0"
        );
        feed(&mut w, 15..20);
        let cpu = w.evaluate(0, threshold(0), 19_000, 0);
        assert_eq!(cpu.len(), 2, "total is excluded");
        // (9s, 19s]: ten samples of 1.0 for core 0.
        assert_eq!(cpu[0].value, Some(1.0));
        assert!((cpu[1].value.unwrap() - 0.2).abs() < 1e-12);
        let mem = w.evaluate(1, threshold(1), 19_000, 0);
        assert_eq!(mem[0].value, Some(0.95));
        assert_eq!(mem[1].value, None, "host b has no total");
        let gone = w.evaluate(2, threshold(2), 19_000, 0);
        assert!(gone[0].absent, "last sample at 11s, window (14s, 19s]");
        assert_eq!(gone[0].value, Some(8.0));
        assert!(!w.evaluate(2, threshold(2), 15_000, 0)[0].absent);
        let never = w.evaluate(3, threshold(3), 19_000, 0);
        assert_eq!(never[0].labels.get("job").map(String::as_str), Some("x"));
        assert!(never[0].absent);
        assert!(
            !w.evaluate(3, threshold(3), 19_000, 16_000)[0].absent,
            "not before a window has passed since the start"
        );
        let core0 = &w.tracked[w.index[&key(r#"cpu{core="0"}"#)].unwrap()];
        assert_eq!(core0.samples.len(), 10, "trimmed to the 10 s window");
        assert_eq!(w.index.get(&key("unrelated")), Some(&None));
    }
}
