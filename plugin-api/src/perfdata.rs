//! Performance data: `'label'=value[UOM];[warn];[crit];[min];[max]`, as the guidelines write
//! it ([`Perf`]) and as plugins print it ([`parse_perfdata`]).

use crate::range::Range;
use std::fmt;

/// One perfdata item a check writes; its [`Display`](fmt::Display) is the guidelines' form,
/// trailing empty fields dropped.
#[derive(Debug, Clone, PartialEq)]
pub struct Perf {
    /// The label; quoted on output when it holds spaces, quotes or `=`.
    pub label: String,
    /// The measured value.
    pub value: f64,
    /// Unit of measure written right after the value (`s`, `%`, `B`, `c`, …), `""` for none.
    pub uom: &'static str,
    /// The warning threshold, written as the user gave it.
    pub warning: Option<Range>,
    /// The critical threshold, written as the user gave it.
    pub critical: Option<Range>,
    /// The smallest possible value, if known.
    pub min: Option<f64>,
    /// The largest possible value, if known.
    pub max: Option<f64>,
}

impl Perf {
    /// A value with its label and unit, without thresholds or bounds.
    pub fn new(label: impl Into<String>, value: f64, uom: &'static str) -> Self {
        Self {
            label: label.into(),
            value,
            uom,
            warning: None,
            critical: None,
            min: None,
            max: None,
        }
    }

    /// Sets the warning and critical thresholds.
    pub fn thresholds(mut self, warning: Option<&Range>, critical: Option<&Range>) -> Self {
        self.warning = warning.cloned();
        self.critical = critical.cloned();
        self
    }

    /// Sets the minimum and maximum possible values.
    pub fn bounds(mut self, min: Option<f64>, max: Option<f64>) -> Self {
        self.min = min;
        self.max = max;
        self
    }
}

/// Labels with spaces, quotes or `=` are single-quoted; a quote inside is doubled.
fn quote_label(label: &str) -> String {
    if label
        .chars()
        .any(|c| c == ' ' || c == '\'' || c == '=' || c == '"')
    {
        format!("'{}'", label.replace('\'', "''"))
    } else {
        label.to_owned()
    }
}

/// Shortest exact decimal text; integers without a fraction.
pub fn num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.6}").trim_end_matches('0').to_owned()
    }
}

impl fmt::Display for Perf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let opt = |r: &Option<Range>| {
            r.as_ref()
                .map(|r| r.as_str().to_owned())
                .unwrap_or_default()
        };
        let optn = |v: Option<f64>| v.map(num).unwrap_or_default();
        let fields = [
            opt(&self.warning),
            opt(&self.critical),
            optn(self.min),
            optn(self.max),
        ];
        // Trailing empty fields may be dropped; keep the ones before a filled field.
        let keep = fields
            .iter()
            .rposition(|s| !s.is_empty())
            .map_or(0, |i| i + 1);
        write!(
            f,
            "{}={}{}",
            quote_label(&self.label),
            num(self.value),
            self.uom
        )?;
        for field in &fields[..keep] {
            write!(f, ";{field}")?;
        }
        Ok(())
    }
}

/// One perfdata value as a plugin printed it (thresholds and bounds are not kept).
#[derive(Debug, Clone, PartialEq)]
pub struct PerfValue {
    /// The label, unquoted.
    pub label: String,
    /// The value.
    pub value: f64,
    /// The unit of measure that followed the value, `""` for none.
    pub uom: String,
}

/// Parses `label=value[UOM];warn;crit;min;max …`, labels optionally single-quoted ('' escapes).
pub fn parse_perfdata(text: &str) -> Vec<PerfValue> {
    let mut out = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let (label, after) = if let Some(quoted) = rest.strip_prefix('\'') {
            // Find the closing quote; a doubled quote is a literal one.
            let bytes = quoted.as_bytes();
            let mut i = 0;
            let mut label = String::new();
            loop {
                match bytes.get(i) {
                    None => return out,
                    Some(b'\'') if bytes.get(i + 1) == Some(&b'\'') => {
                        label.push('\'');
                        i += 2;
                    }
                    Some(b'\'') => break,
                    Some(_) => {
                        let ch = quoted[i..].chars().next().unwrap_or(' ');
                        label.push(ch);
                        i += ch.len_utf8();
                    }
                }
            }
            match quoted[i + 1..].strip_prefix('=') {
                Some(after) => (label, after),
                None => return out,
            }
        } else {
            match rest.split_once('=') {
                Some((l, after)) if !l.contains(' ') => (l.to_owned(), after),
                _ => return out,
            }
        };
        let (item, next) = after.split_once(' ').unwrap_or((after, ""));
        rest = next.trim_start();
        let value_uom = item.split(';').next().unwrap_or("");
        let split = value_uom
            .find(|c: char| {
                !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+' || c == 'e' || c == 'E')
            })
            .unwrap_or(value_uom.len());
        if let Ok(value) = value_uom[..split].parse::<f64>() {
            out.push(PerfValue {
                label,
                value,
                uom: value_uom[split..].to_owned(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perfdata_forms() {
        let p = parse_perfdata("time=0.001231s;0.5;1;0;10 size=211B;;;0; 'a b''c'=3 count=7 bad=x");
        let got: Vec<(&str, f64, &str)> = p
            .iter()
            .map(|v| (v.label.as_str(), v.value, v.uom.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("time", 0.001231, "s"),
                ("size", 211.0, "B"),
                ("a b'c", 3.0, ""),
                ("count", 7.0, "")
            ]
        );
        assert!(parse_perfdata("").is_empty());
    }

    #[test]
    fn formats_like_the_guidelines() {
        let w: Range = "0.5".parse().expect("range");
        let c: Range = "1".parse().expect("range");
        let p = Perf::new("time", 0.001231, "s")
            .thresholds(Some(&w), Some(&c))
            .bounds(Some(0.0), Some(10.0));
        assert_eq!(p.to_string(), "time=0.001231s;0.5;1;0;10");
        assert_eq!(
            Perf::new("size", 211.0, "B")
                .bounds(Some(0.0), None)
                .to_string(),
            "size=211B;;;0"
        );
        assert_eq!(Perf::new("count", 3.0, "").to_string(), "count=3");
        assert_eq!(
            Perf::new("it's = x", 1.5, "").to_string(),
            "'it''s = x'=1.5"
        );
    }
}
