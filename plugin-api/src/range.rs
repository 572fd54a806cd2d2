//! Threshold ranges, as the Monitoring Plugins guidelines define them:
//!
//! | range    | alert when the value is |
//! |----------|-------------------------|
//! | `10`     | < 0 or > 10             |
//! | `10:`    | < 10                    |
//! | `~:10`   | > 10                    |
//! | `10:20`  | < 10 or > 20            |
//! | `@10:20` | >= 10 and <= 20         |
//!
//! Ends are inclusive. Unlike check_http, anything else is refused (`-w abc` is an error, not a
//! threshold of zero).

use crate::State;
use std::fmt;
use std::str::FromStr;

/// A threshold range, parsed from the guidelines' text form (see the table above) with
/// [`str::parse`]; it displays as written.
#[derive(Debug, Clone, PartialEq)]
pub struct Range {
    start: f64,
    /// `f64::INFINITY` when open-ended.
    end: f64,
    /// `@`: alert inside rather than outside.
    inside: bool,
    text: String,
}

/// Why a threshold range was refused; its message quotes the text and lists the valid forms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid range {text:?}: {why} (forms: 10, 10:, ~:10, 10:20, @10:20)")]
pub struct RangeError {
    text: String,
    why: &'static str,
}

fn number(s: &str, text: &str) -> Result<f64, RangeError> {
    let err = |why| RangeError {
        text: text.to_owned(),
        why,
    };
    // Rust's parser also takes "inf", "NaN" and "1e5"; thresholds are plain decimals.
    let plain = !s.is_empty()
        && s.trim_start_matches(['-', '+'])
            .chars()
            .all(|c| c.is_ascii_digit() || c == '.')
        && s.chars().any(|c| c.is_ascii_digit());
    if !plain {
        return Err(err(if s.is_empty() {
            "a bound is empty"
        } else {
            "a bound is not a number"
        }));
    }
    s.parse().map_err(|_| err("a bound is not a number"))
}

impl FromStr for Range {
    type Err = RangeError;

    fn from_str(text: &str) -> Result<Self, RangeError> {
        let err = |why| RangeError {
            text: text.to_owned(),
            why,
        };
        let trimmed = text.trim();
        let (inside, body) = match trimmed.strip_prefix('@') {
            Some(rest) => (true, rest),
            None => (false, trimmed),
        };
        if body.is_empty() {
            return Err(err("it is empty"));
        }
        let (start, end) = match body.split_once(':') {
            None => (0.0, number(body, text)?),
            Some((s, e)) => {
                if e.contains(':') {
                    return Err(err("it has more than one ':'"));
                }
                let start = match s {
                    "~" => f64::NEG_INFINITY,
                    "" => 0.0,
                    s => number(s, text)?,
                };
                let end = if e.is_empty() {
                    f64::INFINITY
                } else {
                    number(e, text)?
                };
                (start, end)
            }
        };
        if start > end {
            return Err(err("its start is greater than its end"));
        }
        Ok(Range {
            start,
            end,
            inside,
            text: trimmed.to_owned(),
        })
    }
}

impl Range {
    /// Whether `value` must raise an alert.
    pub fn alerts(&self, value: f64) -> bool {
        let within = value >= self.start && value <= self.end;
        if self.inside { within } else { !within }
    }

    /// The range as the user wrote it (for perfdata and messages).
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// A value against a warning and a critical range, as the guidelines decide it: CRITICAL when
/// the critical range alerts, else WARNING when the warning range does, else OK; with the range
/// that alerted.
pub fn judge<'a>(
    value: f64,
    warning: Option<&'a Range>,
    critical: Option<&'a Range>,
) -> (State, Option<&'a Range>) {
    if let Some(c) = critical.filter(|c| c.alerts(value)) {
        (State::Critical, Some(c))
    } else if let Some(w) = warning.filter(|w| w.alerts(value)) {
        (State::Warning, Some(w))
    } else {
        (State::Ok, None)
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn critical_wins_over_warning() {
        let (w, c) = (r("5"), r("10"));
        assert_eq!(judge(3.0, Some(&w), Some(&c)), (State::Ok, None));
        assert_eq!(judge(7.0, Some(&w), Some(&c)), (State::Warning, Some(&w)));
        assert_eq!(judge(12.0, Some(&w), Some(&c)), (State::Critical, Some(&c)));
        assert_eq!(judge(12.0, None, None), (State::Ok, None));
    }

    fn r(s: &str) -> Range {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    /// (range, value, alerts?) — the guidelines' table, with each boundary.
    #[test]
    fn guidelines_table() {
        let cases: &[(&str, f64, bool)] = &[
            ("10", -0.1, true),
            ("10", 0.0, false),
            ("10", 5.0, false),
            ("10", 10.0, false),
            ("10", 10.1, true),
            ("10:", 9.9, true),
            ("10:", 10.0, false),
            ("10:", 1e12, false),
            ("~:10", -1e12, false),
            ("~:10", 10.0, false),
            ("~:10", 10.1, true),
            ("10:20", 9.9, true),
            ("10:20", 10.0, false),
            ("10:20", 20.0, false),
            ("10:20", 20.1, true),
            ("@10:20", 9.9, false),
            ("@10:20", 10.0, true),
            ("@10:20", 15.0, true),
            ("@10:20", 20.0, true),
            ("@10:20", 20.1, false),
            ("-5:-1", -3.0, false),
            ("-5:-1", 0.0, true),
            ("0.5", 0.6, true),
            ("@~:0", -1.0, true),
            ("@~:0", 0.5, false),
            (":5", -1.0, true),
        ];
        for &(range, value, alerts) in cases {
            assert_eq!(r(range).alerts(value), alerts, "{range} with {value}");
        }
    }

    #[test]
    fn malformed_ranges_are_refused() {
        for bad in [
            "", "@", "abc", "10:5", "1:2:3", "~", "10:x", "1e3", "inf", "NaN", "@@1", "--1", "1..2",
        ] {
            assert!(bad.parse::<Range>().is_err(), "{bad:?} must be refused");
        }
        let e = "abc".parse::<Range>().expect_err("refused");
        assert!(e.to_string().contains("abc"));
    }
}
