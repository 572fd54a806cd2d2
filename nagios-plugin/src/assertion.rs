//! Assertions on the `result` member, addressed by JSON pointers (RFC 6901; "" is the result
//! itself).

use crate::envelope::type_name;
use serde_json::Value;
use std::fmt;
use std::str::FromStr;

/// A JSON type `--expect-type` can ask for (`integer`: a number without a fraction).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonType {
    /// `null`.
    Null,
    /// `true` or `false`.
    Boolean,
    /// Any number.
    Number,
    /// A number without a fraction.
    Integer,
    /// A string.
    String,
    /// An array.
    Array,
    /// An object.
    Object,
}

/// A JSON pointer that is neither empty nor starts with `/` (RFC 6901).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("JSON pointer {0:?} must be empty or start with '/'")]
pub struct BadPointer(pub String);

impl JsonType {
    const NAMES: &'static str = "null, boolean, number, integer, string, array, object";

    fn matches(&self, v: &Value) -> bool {
        match self {
            JsonType::Null => v.is_null(),
            JsonType::Boolean => v.is_boolean(),
            JsonType::Number => v.is_number(),
            JsonType::Integer => v.is_i64() || v.is_u64(),
            JsonType::String => v.is_string(),
            JsonType::Array => v.is_array(),
            JsonType::Object => v.is_object(),
        }
    }
}

impl FromStr for JsonType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "null" => JsonType::Null,
            "boolean" | "bool" => JsonType::Boolean,
            "number" => JsonType::Number,
            "integer" => JsonType::Integer,
            "string" => JsonType::String,
            "array" => JsonType::Array,
            "object" => JsonType::Object,
            other => return Err(format!("unknown type {other:?} (one of {})", Self::NAMES)),
        })
    }
}

impl fmt::Display for JsonType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            JsonType::Null => "null",
            JsonType::Boolean => "boolean",
            JsonType::Number => "number",
            JsonType::Integer => "integer",
            JsonType::String => "string",
            JsonType::Array => "array",
            JsonType::Object => "object",
        })
    }
}

/// One `--expect` or `--expect-type`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Assertion {
    Equals { pointer: String, value: Value },
    Type { pointer: String, ty: JsonType },
}

pub(crate) fn check_pointer(p: &str) -> Result<(), BadPointer> {
    if p.is_empty() || p.starts_with('/') {
        Ok(())
    } else {
        Err(BadPointer(p.to_owned()))
    }
}

/// Shows a pointer so that the result itself ("") is visible in messages.
pub(crate) fn show(pointer: &str) -> &str {
    if pointer.is_empty() {
        "result"
    } else {
        pointer
    }
}

/// Compact JSON, cut at 60 characters for a one-line message.
pub(crate) fn brief(v: &Value) -> String {
    toolkit_core::terminal::value(&v.to_string())
}

impl Assertion {
    /// `POINTER=JSON`, e.g. `/status="ok"` or `/count=3` (`=JSON` alone: the result itself).
    pub(crate) fn parse_equals(arg: &str) -> Result<Self, String> {
        let (pointer, json) = arg
            .split_once('=')
            .ok_or_else(|| format!("--expect {arg:?}: write POINTER=JSON, e.g. /status=\"ok\""))?;
        check_pointer(pointer).map_err(|e| e.to_string())?;
        let value = serde_json::from_str(json).map_err(|e| {
            format!("--expect {arg:?}: {json:?} is not JSON ({e}); quote strings: /name='\"x\"'")
        })?;
        Ok(Assertion::Equals {
            pointer: pointer.to_owned(),
            value,
        })
    }

    /// `POINTER=TYPE`, e.g. `/users=array`.
    pub(crate) fn parse_type(arg: &str) -> Result<Self, String> {
        let (pointer, ty) = arg.split_once('=').ok_or_else(|| {
            format!("--expect-type {arg:?}: write POINTER=TYPE, e.g. /users=array")
        })?;
        check_pointer(pointer).map_err(|e| e.to_string())?;
        Ok(Assertion::Type {
            pointer: pointer.to_owned(),
            ty: ty
                .parse()
                .map_err(|e| format!("--expect-type {arg:?}: {e}"))?,
        })
    }

    /// `None` when it holds, else what is wrong.
    pub(crate) fn failure(&self, result: &Value) -> Option<String> {
        match self {
            Assertion::Equals { pointer, value } => match result.pointer(pointer) {
                None => Some(format!("{} not found", show(pointer))),
                Some(got) if got == value => None,
                Some(got) => Some(format!(
                    "{} is {}, expected {}",
                    show(pointer),
                    brief(got),
                    brief(value)
                )),
            },
            Assertion::Type { pointer, ty } => match result.pointer(pointer) {
                None => Some(format!("{} not found", show(pointer))),
                Some(got) if ty.matches(got) => None,
                Some(got) => Some(format!(
                    "{} is {}, expected {ty}",
                    show(pointer),
                    a(type_name(got))
                )),
            },
        }
    }
}

/// `--value POINTER` (a number) or `--count POINTER` (an array's or object's length).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Measure {
    Value(String),
    Count(String),
}

impl Measure {
    pub(crate) fn pointer(&self) -> &str {
        match self {
            Measure::Value(p) | Measure::Count(p) => p,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        check_pointer(self.pointer()).map_err(|e| e.to_string())
    }

    pub(crate) fn default_label(&self) -> &'static str {
        match self {
            Measure::Value(_) => "value",
            Measure::Count(_) => "count",
        }
    }

    /// The number to compare with the thresholds, or why there is none.
    pub(crate) fn extract(&self, result: &Value) -> Result<f64, String> {
        let p = self.pointer();
        let v = result
            .pointer(p)
            .ok_or_else(|| format!("{} not found", show(p)))?;
        match self {
            Measure::Value(_) => match v {
                Value::Number(n) => n
                    .as_f64()
                    .ok_or_else(|| format!("{} is not a finite number", show(p))),
                // Many APIs send big or precise numbers as strings ("0x1a" for Ethereum
                // quantities).
                Value::String(s) => parse_numeric_string(s)
                    .ok_or_else(|| format!("{} is the string {}, not a number", show(p), brief(v))),
                other => Err(format!(
                    "{} is {}, not a number",
                    show(p),
                    a(type_name(other))
                )),
            },
            Measure::Count(_) => match v {
                Value::Array(a) => Ok(a.len() as f64),
                Value::Object(o) => Ok(o.len() as f64),
                other => Err(format!(
                    "{} is {}, not an array or object",
                    show(p),
                    a(type_name(other))
                )),
            },
        }
    }
}

/// "an array", "a string".
fn a(noun: &str) -> String {
    if noun.starts_with(['a', 'e', 'i', 'o', 'u']) {
        format!("an {noun}")
    } else {
        format!("a {noun}")
    }
}

fn parse_numeric_string(s: &str) -> Option<f64> {
    if let Some(hex) = s.strip_prefix("0x") {
        return u64::from_str_radix(hex, 16).ok().map(|n| n as f64);
    }
    s.parse::<f64>().ok().filter(|f| f.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn equals_and_types() {
        let r = json!({"status": "ok", "users": [1, 2, 3], "n": 2});
        let eq = |a: &str| Assertion::parse_equals(a).expect("valid").failure(&r);
        assert_eq!(eq(r#"/status="ok""#), None);
        assert_eq!(eq("/n=2"), None);
        assert_eq!(eq("/users=[1,2,3]").as_deref(), None);
        assert_eq!(eq("/n=3").as_deref(), Some("/n is 2, expected 3"));
        assert_eq!(eq("/missing=1").as_deref(), Some("/missing not found"));
        let ty = |a: &str| Assertion::parse_type(a).expect("valid").failure(&r);
        assert_eq!(ty("=object"), None);
        assert_eq!(ty("/users=array"), None);
        assert_eq!(ty("/n=integer"), None);
        assert_eq!(
            ty("/status=number").as_deref(),
            Some("/status is a string, expected number")
        );
        assert!(Assertion::parse_equals("/a=not json").is_err());
        assert!(Assertion::parse_equals("novalue").is_err());
        assert!(Assertion::parse_equals("a=1").is_err());
        assert!(Assertion::parse_type("/a=float").is_err());
    }

    #[test]
    fn measures() {
        let r = json!({"users": [1, 2, 3], "m": {"a": 1}, "x": 2.5, "hex": "0x1a", "s": "abc"});
        assert_eq!(Measure::Count("/users".into()).extract(&r), Ok(3.0));
        assert_eq!(Measure::Count("/m".into()).extract(&r), Ok(1.0));
        assert_eq!(Measure::Value("/x".into()).extract(&r), Ok(2.5));
        assert_eq!(Measure::Value("/hex".into()).extract(&r), Ok(26.0));
        assert!(Measure::Value("/s".into()).extract(&r).is_err());
        assert!(Measure::Count("/x".into()).extract(&r).is_err());
        assert_eq!(Measure::Count("".into()).extract(&json!([1])), Ok(1.0));
    }
}
