//! Runs a Nagios plugin and turns its result into Riemann events: one for the check (state from
//! the exit code, the first output line as description) and one per perfdata value (a metric).

use crate::event::event;
use crate::proto::Event;
use std::process::Command;

/// A plugin's exit code as a Riemann state. 0–2 as the guidelines say; anything else (3, or a
/// crash's 5 or 127) is "unknown", as Icinga 2 reads it.
pub fn state_of(code: Option<i32>) -> &'static str {
    match code {
        Some(0) => "ok",
        Some(1) => "warning",
        Some(2) => "critical",
        _ => "unknown",
    }
}

/// One perfdata value.
#[derive(Debug, Clone, PartialEq)]
pub struct PerfValue {
    pub label: String,
    pub value: f64,
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

/// What a plugin run produced.
#[derive(Debug, Clone)]
pub struct PluginRun {
    pub code: Option<i32>,
    pub first_line: String,
    pub output: String,
    pub perfdata: Vec<PerfValue>,
}

pub fn run_plugin(argv: &[String]) -> std::io::Result<PluginRun> {
    let (program, args) = argv.split_first().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "no plugin command given")
    })?;
    let out = Command::new(program).args(args).output()?;
    let output = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = output.lines();
    let first = lines.next().unwrap_or("");
    let (first_line, mut perf_text) = match first.split_once('|') {
        Some((text, perf)) => (text.trim().to_owned(), perf.to_owned()),
        None => (first.trim().to_owned(), String::new()),
    };
    // Guidelines: long output may carry more perfdata after a '|' on a later line.
    for line in lines {
        if let Some((_, perf)) = line.split_once('|') {
            perf_text.push(' ');
            perf_text.push_str(perf);
        }
    }
    Ok(PluginRun {
        code: out.status.code(),
        first_line,
        output,
        perfdata: parse_perfdata(&perf_text),
    })
}

/// The events for one plugin run: the check, then one per perfdata value (`SERVICE LABEL`).
pub fn events(run: &PluginRun, service: &str, host: Option<&str>, ttl: Option<f32>) -> Vec<Event> {
    let state = state_of(run.code);
    let base = |name: String| {
        let mut b = event(name).state(state).tag("nagios");
        if let Some(h) = host {
            b = b.host(h);
        }
        if let Some(t) = ttl {
            b = b.ttl(t);
        }
        b
    };
    let mut out = vec![
        base(service.to_owned())
            .description(run.first_line.clone())
            .build(),
    ];
    for p in &run.perfdata {
        let mut b = base(format!("{service} {}", p.label)).metric(p.value);
        if !p.uom.is_empty() {
            b = b.attribute("uom", p.uom.clone());
        }
        out.push(b.build());
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
    fn states() {
        assert_eq!(
            [0, 1, 2, 3, 5].map(|c| state_of(Some(c))),
            ["ok", "warning", "critical", "unknown", "unknown"]
        );
        assert_eq!(state_of(None), "unknown");
    }
}
