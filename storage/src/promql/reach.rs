//! How far back in time an expression reads, selector by selector: what a caller that keeps
//! recent samples in memory (the alert engine) must keep for the expression to see what the
//! store would give it.

use promql_parser::label::Matcher;
use promql_parser::parser::Expr;

use super::eval::{duration_ms, offset_ms, selector_matchers};
use super::{Error, Result};

/// One selector of an expression: its matchers (metric name included) and the oldest sample
/// it can read, as milliseconds before the evaluation time.
#[derive(Debug, Clone)]
pub struct SelectorReach {
    pub matchers: Vec<Matcher>,
    pub reach_ms: i64,
}

/// Every selector of `expr` with its reach, for evaluations at the present with `lookback_ms`
/// and subqueries of `subquery_step_ms` where they give no step. An `@` modifier pins a
/// selector to a fixed time, which no window of recent samples can serve: it is refused.
pub fn selector_reaches(expr: &Expr, lookback_ms: i64) -> Result<Vec<SelectorReach>> {
    let mut out = Vec::new();
    walk(expr, 0, lookback_ms, &mut out)?;
    Ok(out)
}

fn pinned() -> Error {
    Error::BadData("the @ modifier pins a selector to a fixed time; a rule cannot use it".into())
}

fn walk(expr: &Expr, before: i64, lookback_ms: i64, out: &mut Vec<SelectorReach>) -> Result<()> {
    match expr {
        Expr::VectorSelector(vs) => {
            if vs.at.is_some() {
                return Err(pinned());
            }
            out.push(SelectorReach {
                matchers: selector_matchers(vs),
                reach_ms: before.saturating_add(offset_ms(&vs.offset).max(0) + lookback_ms),
            });
        }
        Expr::MatrixSelector(ms) => {
            if ms.vs.at.is_some() {
                return Err(pinned());
            }
            out.push(SelectorReach {
                matchers: selector_matchers(&ms.vs),
                reach_ms: before
                    .saturating_add(offset_ms(&ms.vs.offset).max(0) + duration_ms(&ms.range)),
            });
        }
        Expr::Subquery(sq) => {
            if sq.at.is_some() {
                return Err(pinned());
            }
            let inner =
                before.saturating_add(offset_ms(&sq.offset).max(0) + duration_ms(&sq.range));
            walk(&sq.expr, inner, lookback_ms, out)?;
        }
        Expr::Paren(p) => walk(&p.expr, before, lookback_ms, out)?,
        Expr::Unary(u) => walk(&u.expr, before, lookback_ms, out)?,
        Expr::Aggregate(agg) => {
            walk(&agg.expr, before, lookback_ms, out)?;
            if let Some(param) = &agg.param {
                walk(param, before, lookback_ms, out)?;
            }
        }
        Expr::Binary(bin) => {
            walk(&bin.lhs, before, lookback_ms, out)?;
            walk(&bin.rhs, before, lookback_ms, out)?;
        }
        Expr::Call(call) => {
            for arg in &call.args.args {
                walk(arg, before, lookback_ms, out)?;
            }
        }
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
    Ok(())
}

/// A selector's matchers as one string, the same for the same matchers in any order: how a
/// source that serves known selectors finds the one it is asked for.
pub fn matchers_key(matchers: &[Matcher]) -> String {
    let mut parts: Vec<String> = matchers
        .iter()
        .map(|m| format!("{}{}{:?}", m.name, m.op, m.value))
        .collect();
    parts.sort();
    parts.dedup();
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reaches(text: &str) -> Vec<(String, i64)> {
        selector_reaches(&super::super::parse(text).unwrap(), 300_000)
            .unwrap()
            .into_iter()
            .map(|r| (matchers_key(&r.matchers), r.reach_ms))
            .collect()
    }

    #[test]
    fn reach_adds_ranges_offsets_and_subqueries() {
        let found = reaches(
            "rate(a[2m] offset 1m) / on() b + max_over_time(deriv(c{x=\"1\"}[30s])[10m:1m] offset 5m)",
        );
        assert_eq!(found.len(), 3);
        assert_eq!(found[0].1, 180_000);
        assert_eq!(found[1].1, 300_000);
        // 5 m offset + 10 m subquery + the 30 s range inside it.
        assert_eq!(found[2].1, 930_000);
        assert!(found[2].0.contains("x=\"1\""), "{}", found[2].0);
        // A forward offset reads nothing older than the present's own window.
        assert_eq!(reaches("a offset -10m")[0].1, 300_000);
    }

    #[test]
    fn pinned_selectors_are_refused_and_keys_ignore_order() {
        let expr = super::super::parse("a @ 1000").unwrap();
        assert!(selector_reaches(&expr, 0).is_err());
        assert_eq!(
            reaches("a{x=\"1\",y=\"2\"}")[0].0,
            reaches("a{y=\"2\",x=\"1\"}")[0].0
        );
    }
}
