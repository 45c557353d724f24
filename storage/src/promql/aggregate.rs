//! Aggregation operators: `sum`, `avg`, `topk` ... with `by` and `without`.

use std::collections::HashMap;

use promql_parser::parser::token::{
    TokenId, T_AVG, T_BOTTOMK, T_COUNT, T_COUNT_VALUES, T_GROUP, T_MAX, T_MIN, T_QUANTILE,
    T_STDDEV, T_STDVAR, T_SUM, T_TOPK,
};
use promql_parser::parser::{AggregateExpr, LabelModifier};

use super::eval::{Evaluator, Grid, Val};
use super::functions::{quantile, scalar_arg, string_arg, vector_arg};
use super::labels::{Labels, METRIC_NAME};
use super::{format_value, Error, Result, Series};
use crate::series::is_label_name;

pub(super) fn supported(op: TokenId) -> bool {
    matches!(
        op,
        T_SUM
            | T_AVG
            | T_COUNT
            | T_MIN
            | T_MAX
            | T_GROUP
            | T_STDDEV
            | T_STDVAR
            | T_TOPK
            | T_BOTTOMK
            | T_COUNT_VALUES
            | T_QUANTILE
    )
}

/// How the input's labels become a group's.
struct Grouping {
    names: Vec<String>,
    without: bool,
}

impl Grouping {
    fn of(modifier: &Option<LabelModifier>) -> Grouping {
        match modifier {
            Some(LabelModifier::Include(l)) => Grouping {
                names: l.labels.clone(),
                without: false,
            },
            Some(LabelModifier::Exclude(l)) => Grouping {
                names: l.labels.clone(),
                without: true,
            },
            None => Grouping {
                names: Vec::new(),
                without: false,
            },
        }
    }

    fn group(&self, labels: &Labels) -> Labels {
        if self.without {
            let mut drop = self.names.clone();
            drop.push(METRIC_NAME.to_string());
            labels.without(&drop)
        } else {
            labels.only(&self.names)
        }
    }
}

/// One group's running state within one step.
enum Acc {
    Sum(f64),
    Avg {
        mean: f64,
        count: f64,
    },
    Count(f64),
    Min(f64),
    Max(f64),
    Group,
    Variance {
        count: f64,
        mean: f64,
        value: f64,
    },
    /// topk, bottomk, quantile: the members (input series index, value).
    Members(Vec<(usize, f64)>),
}

impl Acc {
    fn new(op: TokenId, series: usize, v: f64) -> Acc {
        match op {
            T_SUM => Acc::Sum(v),
            T_AVG => Acc::Avg {
                mean: v,
                count: 1.0,
            },
            T_COUNT | T_COUNT_VALUES => Acc::Count(1.0),
            T_MIN => Acc::Min(v),
            T_MAX => Acc::Max(v),
            T_GROUP => Acc::Group,
            T_STDDEV | T_STDVAR => Acc::Variance {
                count: 1.0,
                mean: v,
                value: 0.0,
            },
            _ => Acc::Members(vec![(series, v)]),
        }
    }

    fn add(&mut self, series: usize, v: f64) {
        match self {
            Acc::Sum(sum) => *sum += v,
            Acc::Avg { mean, count } => {
                *count += 1.0;
                if mean.is_infinite() {
                    if v.is_infinite() && (*mean > 0.0) == (v > 0.0) {
                        return;
                    }
                    if !v.is_infinite() && !v.is_nan() {
                        return;
                    }
                }
                // Each term divided first, so that large values do not overflow.
                *mean += v / *count - *mean / *count;
            }
            Acc::Count(n) => *n += 1.0,
            Acc::Min(min) => {
                if *min > v || min.is_nan() {
                    *min = v;
                }
            }
            Acc::Max(max) => {
                if *max < v || max.is_nan() {
                    *max = v;
                }
            }
            Acc::Group => {}
            Acc::Variance { count, mean, value } => {
                *count += 1.0;
                let delta = v - *mean;
                *mean += delta / *count;
                *value += delta * (v - *mean);
            }
            Acc::Members(members) => members.push((series, v)),
        }
    }
}

pub(super) fn eval(ev: &mut Evaluator, agg: &AggregateExpr, grid: Grid) -> Result<Val> {
    let op = agg.op.id();
    let mut numbers = None;
    let mut value_label = None;
    if let Some(param) = &agg.param {
        match op {
            T_TOPK | T_BOTTOMK | T_QUANTILE => numbers = Some(scalar_arg(ev, param, grid)?),
            T_COUNT_VALUES => {
                let label = string_arg(param)?.to_string();
                if !is_label_name(&label) {
                    return Err(Error::Execution(format!("invalid label name {label:?}")));
                }
                value_label = Some(label);
            }
            _ => {}
        }
    }
    let input = vector_arg(ev, &agg.expr, grid)?;
    let mut grouping = Grouping::of(&agg.modifier);
    if let (Some(label), false) = (&value_label, grouping.without) {
        grouping.names.push(label.clone());
    }
    let fixed_groups: Vec<Labels> = input.iter().map(|s| grouping.group(&s.labels)).collect();
    let mut out = Output::default();
    let mut cursors = vec![0usize; input.len()];
    for (step, ts) in grid.times().enumerate() {
        ev.check_deadline()?;
        let param = numbers.as_ref().map(|n| n[step]);
        if let (T_TOPK | T_BOTTOMK, Some(k)) = (op, param) {
            // Checked at every step, with members or not, as Prometheus does.
            check_k(k)?;
        }
        let mut groups: HashMap<Labels, Acc> = HashMap::new();
        for (i, s) in input.iter().enumerate() {
            let Some(&(t, v)) = s.points.get(cursors[i]) else {
                continue;
            };
            if t != ts {
                continue;
            }
            cursors[i] += 1;
            let key = match &value_label {
                Some(label) => {
                    let mut labels = s.labels.clone();
                    labels.set(label, &count_value_text(v));
                    grouping.group(&labels)
                }
                None => fixed_groups[i].clone(),
            };
            match groups.get_mut(&key) {
                Some(acc) => acc.add(i, v),
                None => {
                    groups.insert(key, Acc::new(op, i, v));
                }
            }
        }
        for (labels, acc) in groups {
            finish(op, labels, acc, param, &input, ts, &mut out)?;
        }
    }
    ev.hold(out.points())?;
    Ok(Val::Vector(out.series))
}

/// Output series by labels, as the steps add points to them.
#[derive(Default)]
struct Output {
    index: HashMap<Labels, usize>,
    series: Vec<Series>,
}

impl Output {
    fn push(&mut self, labels: Labels, ts: i64, v: f64) {
        let i = match self.index.get(&labels) {
            Some(&i) => i,
            None => {
                self.index.insert(labels.clone(), self.series.len());
                self.series.push(Series {
                    labels,
                    points: Vec::new(),
                });
                self.series.len() - 1
            }
        };
        self.series[i].points.push((ts, v));
    }

    fn points(&self) -> usize {
        self.series.iter().map(|s| s.points.len()).sum()
    }
}

fn finish(
    op: TokenId,
    labels: Labels,
    acc: Acc,
    param: Option<f64>,
    input: &[Series],
    ts: i64,
    out: &mut Output,
) -> Result<()> {
    let value = match acc {
        Acc::Sum(v) | Acc::Min(v) | Acc::Max(v) | Acc::Count(v) => v,
        Acc::Avg { mean, .. } => mean,
        Acc::Group => 1.0,
        Acc::Variance { count, value, .. } if op == T_STDDEV => (value / count).sqrt(),
        Acc::Variance { count, value, .. } => value / count,
        Acc::Members(members) if op == T_QUANTILE => {
            let mut values: Vec<f64> = members.iter().map(|(_, v)| *v).collect();
            quantile(param.unwrap_or(f64::NAN), &mut values)
        }
        Acc::Members(members) => {
            for (series, v) in top(op, members, param.unwrap_or(f64::NAN))? {
                out.push(input[series].labels.clone(), ts, v);
            }
            return Ok(());
        }
    };
    out.push(labels, ts, value);
    Ok(())
}

/// `topk` and `bottomk`: the `k` largest (smallest) members, NaN counting as the least
/// wanted; among equal values, the first met.
fn top(op: TokenId, mut members: Vec<(usize, f64)>, k: f64) -> Result<Vec<(usize, f64)>> {
    let k = check_k(k)?;
    if k < 1 {
        return Ok(Vec::new());
    }
    let descending = op == T_TOPK;
    members.sort_by(|a, b| match (a.1.is_nan(), b.1.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Greater,
        (false, true) => std::cmp::Ordering::Less,
        _ if descending => b.1.total_cmp(&a.1),
        _ => a.1.total_cmp(&b.1),
    });
    members.truncate(usize::try_from(k).unwrap_or(usize::MAX));
    Ok(members)
}

/// `topk`'s and `bottomk`'s parameter as an integer (truncated, as Go converts).
fn check_k(k: f64) -> Result<i64> {
    if !(k <= i64::MAX as f64 && k >= i64::MIN as f64) {
        return Err(Error::Execution(format!(
            "Scalar value {} overflows int64",
            format_value(k)
        )));
    }
    Ok(k as i64)
}

/// The label value `count_values` gives a sample: Go's shortest decimal without exponent.
fn count_value_text(v: f64) -> String {
    if v.is_nan() || v.is_infinite() {
        format_value(v)
    } else {
        format!("{v}")
    }
}
