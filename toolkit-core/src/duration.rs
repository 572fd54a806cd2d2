//! Durations in config files as people write them (`500ms`, `30s`, `1m 30s`), for serde:
//! `#[serde(with = "toolkit_core::duration")]` on a `Duration`, `duration::optional` on an
//! `Option<Duration>`. Written back the same way.

use serde::{Deserialize, Deserializer, Serializer};
use std::time::Duration;

/// `text` as a duration, or an error that says how to write one.
pub fn parse(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration: {e} (write it like 500ms, 30s, 1m)"))
}

/// Reads a duration.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
}

/// Writes a duration as humantime prints it.
pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

/// The same for an `Option<Duration>` (absent or `None`: not set).
pub mod optional {
    use super::*;

    /// Reads a duration that may be absent.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| parse(&text).map_err(serde::de::Error::custom))
            .transpose()
    }

    /// Writes a duration that may be absent.
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::serialize(d, s),
            None => s.serialize_none(),
        }
    }
}
