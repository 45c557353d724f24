//! The one grammar of durations, for the command line, the configs and the HTTP APIs:
//! numbers each followed by a unit, `ms`, `s`, `m`, `h`, `d` or `w`, summed (`500ms`, `30s`,
//! `1h30m`, `2w`). It lives in the lowest crate so that every part that reads durations shares it.

use crate::error::{Error, Result};

/// The duration `text` says, in milliseconds.
pub fn parse_duration_ms(text: &str) -> Result<i64> {
    let bad = |message: String| Error::Duration(message);
    let text = text.trim();
    if text.is_empty() {
        return Err(bad("empty duration".into()));
    }
    let mut total: i64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad(format!(
                "{text:?} is not a duration: expected a number at {rest:?} (like 30s, 5m, 1h, 7d)"
            )));
        }
        let number: i64 = rest[..digits]
            .parse()
            .map_err(|_| bad(format!("{text:?}: number too large")))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 7 * 86_400_000,
            "" => return Err(bad(format!("{text:?} needs a unit: ms, s, m, h, d or w"))),
            unit => {
                return Err(bad(format!(
                    "{text:?}: unknown unit {unit:?}; use ms, s, m, h, d or w"
                )))
            }
        };
        total = number
            .checked_mul(factor)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| bad(format!("{text:?} is too long")))?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("500ms").unwrap(), 500);
        assert_eq!(parse_duration_ms("5m").unwrap(), 300_000);
        assert_eq!(parse_duration_ms("1h30m").unwrap(), 5_400_000);
        assert_eq!(parse_duration_ms("2w").unwrap(), 14 * 86_400_000);
        for bad in ["", "5", "m", "5x", "-5m", "99999999999999999d"] {
            assert!(parse_duration_ms(bad).is_err(), "{bad:?} accepted");
        }
    }
}
