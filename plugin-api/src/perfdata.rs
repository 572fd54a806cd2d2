//! Reading performance data as plugins print it: `label=value[UOM];warn;crit;min;max …`.
//! (Writing it, with threshold ranges, is check_jsonrpc's `perfdata.rs`.)

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
}
