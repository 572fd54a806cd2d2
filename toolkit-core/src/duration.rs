//! Durations as people write them (`500ms`, `30s`, `1m 30s`, or a bare number of seconds), the
//! same for every duration flag and setting of every tool: a clap value parser ([`parse`],
//! [`positive`]) and serde (`#[serde(with = "toolkit_core::duration")]`, written back the
//! humantime way).

use serde::{Deserialize, Deserializer, Serializer};
use std::time::Duration;

/// `text` as a duration (a bare number is seconds: `90`, `1.5`), or an error that says how to
/// write one.
pub fn parse(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if let Ok(secs) = t.parse::<f64>()
        && t.starts_with(|c: char| c.is_ascii_digit())
    {
        return Duration::try_from_secs_f64(secs).map_err(|e| {
            format!("{text:?} is not a duration: {e} (write it like 500ms, 30s, 1m)")
        });
    }
    humantime::parse_duration(t)
        .map_err(|e| format!("{text:?} is not a duration: {e} (write it like 500ms, 30s, 1m)"))
}

/// `text` as a duration longer than zero: a flag's or setting's value parser where 0 (never, or
/// at once) cannot work, e.g. `value_parser = toolkit_core::duration::positive` with clap.
pub fn positive(text: &str) -> Result<Duration, String> {
    let d = parse(text)?;
    if d.is_zero() {
        return Err(format!(
            "{text:?} is no time at all: it must be longer than 0, e.g. 500ms or 5s"
        ));
    }
    Ok(d)
}

/// Reads a duration.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
}

/// Writes a duration as humantime prints it.
pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(parse("1m 30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse("-5").is_err() && parse("inf").is_err() && parse("1e400").is_err());
        assert!(parse("soon").is_err_and(|e| e.contains("500ms")));
        assert_eq!(positive("500ms"), Ok(Duration::from_millis(500)));
        assert!(positive("0s").is_err_and(|e| e.contains("longer than 0")));
    }
}
