//! Binary operators: arithmetic, comparison and set operators, with vector matching.

use std::collections::{HashMap, HashSet};

use promql_parser::parser::token::{
    TokenId, T_ADD, T_ATAN2, T_DIV, T_EQLC, T_GTE, T_GTR, T_LAND, T_LOR, T_LSS, T_LTE, T_LUNLESS,
    T_MOD, T_MUL, T_NEQ, T_POW, T_SUB,
};
use promql_parser::parser::{BinaryExpr, LabelModifier, VectorMatchCardinality};

use super::eval::{merge_same_labels, same_labelset, Evaluator, Grid, Val};
use super::labels::{Labels, METRIC_NAME};
use super::{Error, Result, Series};

pub(super) fn eval(ev: &mut Evaluator, bin: &BinaryExpr, grid: Grid) -> Result<Val> {
    let op = bin.op.id();
    let lhs = ev.eval(&bin.lhs, grid)?;
    let rhs = ev.eval(&bin.rhs, grid)?;
    let return_bool = bin.modifier.as_ref().is_some_and(|m| m.return_bool);
    match (lhs, rhs) {
        (Val::Scalar(a), Val::Scalar(b)) => Ok(Val::Scalar(
            a.into_iter()
                .zip(b)
                .map(|(a, b)| scalar_op(op, a, b))
                .collect::<Result<_>>()?,
        )),
        (Val::Vector(v), Val::Scalar(s)) => vector_scalar(op, v, &s, false, return_bool, grid),
        (Val::Scalar(s), Val::Vector(v)) => vector_scalar(op, v, &s, true, return_bool, grid),
        (Val::Vector(l), Val::Vector(r)) => {
            let matching = Matching::of(bin);
            let out = if is_set_operator(op) {
                set_operation(op, &l, &r, &matching, grid)?
            } else {
                vector_vector(op, &l, &r, &matching, return_bool, grid)?
            };
            ev.hold(out.iter().map(|s| s.points.len()).sum())?;
            Ok(Val::Vector(out))
        }
        _ => Err(Error::BadData(format!(
            "binary operator {} needs scalars or instant vectors",
            bin.op
        ))),
    }
}

fn is_set_operator(op: TokenId) -> bool {
    matches!(op, T_LAND | T_LOR | T_LUNLESS)
}

fn is_comparison(op: TokenId) -> bool {
    matches!(op, T_EQLC | T_NEQ | T_GTR | T_LSS | T_GTE | T_LTE)
}

/// Arithmetic drops the metric name; comparisons keep it unless they return bool.
fn drops_name(op: TokenId) -> bool {
    matches!(op, T_ADD | T_SUB | T_MUL | T_DIV | T_POW | T_MOD)
}

fn scalar_op(op: TokenId, a: f64, b: f64) -> Result<f64> {
    let (value, keep) = element_op(op, a, b)?;
    Ok(if is_comparison(op) {
        f64::from(u8::from(keep))
    } else {
        value
    })
}

/// The value of `a op b`, and whether a comparison holds (always true for arithmetic).
fn element_op(op: TokenId, a: f64, b: f64) -> Result<(f64, bool)> {
    Ok(match op {
        T_ADD => (a + b, true),
        T_SUB => (a - b, true),
        T_MUL => (a * b, true),
        T_DIV => (a / b, true),
        T_POW => (a.powf(b), true),
        T_MOD => (a % b, true),
        T_ATAN2 => (a.atan2(b), true),
        T_EQLC => (a, a == b),
        T_NEQ => (a, a != b),
        T_GTR => (a, a > b),
        T_LSS => (a, a < b),
        T_GTE => (a, a >= b),
        T_LTE => (a, a <= b),
        _ => {
            return Err(Error::BadData(format!(
                "operator {op} is not a binary operator"
            )))
        }
    })
}

fn vector_scalar(
    op: TokenId,
    series: Vec<Series>,
    scalar: &[f64],
    scalar_first: bool,
    return_bool: bool,
    grid: Grid,
) -> Result<Val> {
    let drop = drops_name(op) || return_bool;
    let mut out = Vec::with_capacity(series.len());
    for s in series {
        let mut points = Vec::with_capacity(s.points.len());
        for (t, v) in s.points {
            let k = scalar[grid.index(t)];
            let (l, r) = if scalar_first { (k, v) } else { (v, k) };
            let (mut value, mut keep) = element_op(op, l, r)?;
            if is_comparison(op) && scalar_first {
                value = r;
            }
            if return_bool {
                value = f64::from(u8::from(keep));
                keep = true;
            }
            if keep {
                points.push((t, value));
            }
        }
        let labels = if drop {
            s.labels.without_name()
        } else {
            s.labels
        };
        out.push(Series { labels, points });
    }
    Ok(Val::Vector(merge_same_labels(out)?))
}

/// `on`/`ignoring` and the cardinality of a binary operation between vectors.
struct Matching {
    on: bool,
    labels: Vec<String>,
    card: VectorMatchCardinality,
}

impl Matching {
    fn of(bin: &BinaryExpr) -> Matching {
        let (on, labels) = match bin.modifier.as_ref().and_then(|m| m.matching.as_ref()) {
            Some(LabelModifier::Include(l)) => (true, l.labels.clone()),
            Some(LabelModifier::Exclude(l)) => (false, l.labels.clone()),
            None => (false, Vec::new()),
        };
        let card = bin
            .modifier
            .as_ref()
            .map_or(VectorMatchCardinality::OneToOne, |m| m.card.clone());
        Matching { on, labels, card }
    }

    /// What two samples must share to match.
    fn signature(&self, labels: &Labels) -> Labels {
        if self.on {
            labels.only(&self.labels)
        } else {
            let mut drop = self.labels.clone();
            drop.push(METRIC_NAME.to_string());
            labels.without(&drop)
        }
    }
}

/// The samples of `series` at one step, walking each series with a cursor.
struct StepWalker<'s> {
    series: &'s [Series],
    cursors: Vec<usize>,
}

impl<'s> StepWalker<'s> {
    fn new(series: &'s [Series]) -> Self {
        StepWalker {
            series,
            cursors: vec![0; series.len()],
        }
    }

    fn at(&mut self, ts: i64, out: &mut Vec<(usize, f64)>) {
        out.clear();
        for (i, s) in self.series.iter().enumerate() {
            if let Some(&(t, v)) = s.points.get(self.cursors[i]) {
                if t == ts {
                    self.cursors[i] += 1;
                    out.push((i, v));
                }
            }
        }
    }
}

/// Output series by labels, refusing a label set twice in one step.
#[derive(Default)]
struct Output {
    index: HashMap<Labels, usize>,
    series: Vec<Series>,
}

impl Output {
    fn push(&mut self, labels: &Labels, ts: i64, v: f64) -> Result<()> {
        let i = match self.index.get(labels) {
            Some(&i) => i,
            None => {
                self.index.insert(labels.clone(), self.series.len());
                self.series.push(Series {
                    labels: labels.clone(),
                    points: Vec::new(),
                });
                self.series.len() - 1
            }
        };
        let points = &mut self.series[i].points;
        if points.last().is_some_and(|(t, _)| *t == ts) {
            return Err(same_labelset());
        }
        points.push((ts, v));
        Ok(())
    }
}

fn set_operation(
    op: TokenId,
    lhs: &[Series],
    rhs: &[Series],
    matching: &Matching,
    grid: Grid,
) -> Result<Vec<Series>> {
    let left_sigs: Vec<Labels> = lhs.iter().map(|s| matching.signature(&s.labels)).collect();
    let right_sigs: Vec<Labels> = rhs.iter().map(|s| matching.signature(&s.labels)).collect();
    let (mut left, mut right) = (StepWalker::new(lhs), StepWalker::new(rhs));
    let (mut l, mut r) = (Vec::new(), Vec::new());
    let mut out = Output::default();
    for ts in grid.times() {
        left.at(ts, &mut l);
        right.at(ts, &mut r);
        match op {
            T_LAND => {
                if l.is_empty() || r.is_empty() {
                    continue;
                }
                let wanted: HashSet<&Labels> = r.iter().map(|(i, _)| &right_sigs[*i]).collect();
                for &(i, v) in &l {
                    if wanted.contains(&left_sigs[i]) {
                        out.push(&lhs[i].labels, ts, v)?;
                    }
                }
            }
            T_LOR => {
                let taken: HashSet<&Labels> = l.iter().map(|(i, _)| &left_sigs[*i]).collect();
                for &(i, v) in &l {
                    out.push(&lhs[i].labels, ts, v)?;
                }
                for &(i, v) in &r {
                    if !taken.contains(&right_sigs[i]) {
                        out.push(&rhs[i].labels, ts, v)?;
                    }
                }
            }
            _ => {
                let unwanted: HashSet<&Labels> = r.iter().map(|(i, _)| &right_sigs[*i]).collect();
                for &(i, v) in &l {
                    if !unwanted.contains(&left_sigs[i]) {
                        out.push(&lhs[i].labels, ts, v)?;
                    }
                }
            }
        }
    }
    Ok(out.series)
}

/// Arithmetic and comparisons between two vectors: each sample of the "many" side meets the
/// one sample of the "one" side with its signature.
fn vector_vector(
    op: TokenId,
    lhs: &[Series],
    rhs: &[Series],
    matching: &Matching,
    return_bool: bool,
    grid: Grid,
) -> Result<Vec<Series>> {
    let one_to_many = matches!(matching.card, VectorMatchCardinality::OneToMany(_));
    let one_to_one = matches!(matching.card, VectorMatchCardinality::OneToOne);
    let include: Vec<String> = matching
        .card
        .labels()
        .map(|l| l.labels.clone())
        .unwrap_or_default();
    // The "many" side first.
    let (many, one) = if one_to_many { (rhs, lhs) } else { (lhs, rhs) };
    let many_sigs: Vec<Labels> = many.iter().map(|s| matching.signature(&s.labels)).collect();
    let one_sigs: Vec<Labels> = one.iter().map(|s| matching.signature(&s.labels)).collect();
    let (mut many_walk, mut one_walk) = (StepWalker::new(many), StepWalker::new(one));
    let (mut m, mut o) = (Vec::new(), Vec::new());
    let mut results: HashMap<(usize, usize), Labels> = HashMap::new();
    let mut out = Output::default();
    for ts in grid.times() {
        many_walk.at(ts, &mut m);
        one_walk.at(ts, &mut o);
        if m.is_empty() || o.is_empty() {
            continue;
        }
        let mut by_sig: HashMap<&Labels, (usize, f64)> = HashMap::with_capacity(o.len());
        for &(i, v) in &o {
            if let Some((other, _)) = by_sig.insert(&one_sigs[i], (i, v)) {
                let side = if one_to_many { "left" } else { "right" };
                return Err(Error::Execution(format!(
                    "found duplicate series for the match group {} on the {side} hand-side of \
                     the operation: [{}, {}];many-to-many matching not allowed: matching labels \
                     must be unique on one side",
                    one_sigs[i], one[i].labels, one[other].labels
                )));
            }
        }
        let mut matched: HashMap<&Labels, HashSet<Labels>> = HashMap::new();
        for &(i, v) in &m {
            let Some(&(j, w)) = by_sig.get(&many_sigs[i]) else {
                continue;
            };
            let (l, r) = if one_to_many { (w, v) } else { (v, w) };
            let (mut value, keep) = element_op(op, l, r)?;
            if return_bool {
                value = f64::from(u8::from(keep));
            } else if !keep {
                continue;
            }
            let labels = results
                .entry((i, j))
                .or_insert_with(|| {
                    let mut labels =
                        result_labels(&many[i].labels, &one[j].labels, op, matching, &include);
                    if return_bool {
                        labels = labels.without_name();
                    }
                    labels
                })
                .clone();
            let seen = matched.entry(&many_sigs[i]).or_default();
            if one_to_one {
                if !seen.is_empty() {
                    return Err(Error::Execution(
                        "multiple matches for labels: many-to-one matching must be explicit \
                         (group_left/group_right)"
                            .into(),
                    ));
                }
                seen.insert(Labels::default());
            } else if !seen.insert(labels.clone()) {
                return Err(Error::Execution(
                    "multiple matches for labels: grouping labels must ensure unique matches"
                        .into(),
                ));
            }
            out.push(&labels, ts, value)?;
        }
    }
    Ok(out.series)
}

/// The labels of a result: the "many" side's, less the name for arithmetic, narrowed to the
/// matching labels one-to-one, plus the `group_x` labels taken from the "one" side.
fn result_labels(
    many: &Labels,
    one: &Labels,
    op: TokenId,
    matching: &Matching,
    include: &[String],
) -> Labels {
    let mut labels = if drops_name(op) {
        many.without_name()
    } else {
        many.clone()
    };
    if matches!(matching.card, VectorMatchCardinality::OneToOne) {
        labels = if matching.on {
            labels.only(&matching.labels)
        } else {
            labels.without(&matching.labels)
        };
    }
    for name in include {
        labels.set(name, one.get(name));
    }
    labels
}
