//! Performance data: `'label'=value[UOM];[warn];[crit];[min];[max]`, as the guidelines write it.

use crate::range::Range;
use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub struct Perf {
    pub label: String,
    pub value: f64,
    pub uom: &'static str,
    pub warning: Option<Range>,
    pub critical: Option<Range>,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

impl Perf {
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

    pub fn thresholds(mut self, warning: Option<&Range>, critical: Option<&Range>) -> Self {
        self.warning = warning.cloned();
        self.critical = critical.cloned();
        self
    }

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

#[cfg(test)]
mod tests {
    use super::*;

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
