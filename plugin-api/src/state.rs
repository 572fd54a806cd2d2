//! Plugin states and their exit codes (Monitoring Plugins guidelines).

use std::fmt;

/// Ordered by severity for "worst wins": OK < WARNING < UNKNOWN < CRITICAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// All is well (exit code 0).
    Ok,
    /// Above a warning threshold, or otherwise degraded (exit code 1).
    Warning,
    /// Above a critical threshold, or down (exit code 2).
    Critical,
    /// The check itself could not tell: bad arguments, an internal failure (exit code 3).
    Unknown,
}

impl State {
    /// The state a plugin's exit status means: 0–3 as the guidelines say; anything else (a
    /// crash's 5, 127 for "not found", death by a signal) is UNKNOWN, as Icinga 2 reads it.
    pub fn from_exit(code: Option<i32>) -> State {
        match code {
            Some(0) => State::Ok,
            Some(1) => State::Warning,
            Some(2) => State::Critical,
            _ => State::Unknown,
        }
    }

    /// Lower case, as Riemann states are written.
    pub fn as_lower(self) -> &'static str {
        match self {
            State::Ok => "ok",
            State::Warning => "warning",
            State::Critical => "critical",
            State::Unknown => "unknown",
        }
    }

    /// The exit code a plugin returns for this state: 0–3.
    pub fn exit_code(self) -> i32 {
        match self {
            State::Ok => 0,
            State::Warning => 1,
            State::Critical => 2,
            State::Unknown => 3,
        }
    }

    fn severity(self) -> u8 {
        match self {
            State::Ok => 0,
            State::Warning => 1,
            State::Unknown => 2,
            State::Critical => 3,
        }
    }

    /// The worse of two states.
    pub fn worst(self, other: State) -> State {
        if other.severity() > self.severity() {
            other
        } else {
            self
        }
    }

    /// Reads a state by name (`ok`, `warning`/`warn`, `critical`/`crit`, `unknown`, any case)
    /// or by exit code (`0`–`3`); `None` for anything else.
    pub fn parse(s: &str) -> Option<State> {
        match s.to_ascii_lowercase().as_str() {
            "ok" | "0" => Some(State::Ok),
            "warning" | "warn" | "1" => Some(State::Warning),
            "critical" | "crit" | "2" => Some(State::Critical),
            "unknown" | "3" => Some(State::Unknown),
            _ => None,
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Ok => "OK",
            State::Warning => "WARNING",
            State::Critical => "CRITICAL",
            State::Unknown => "UNKNOWN",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::State::*;

    #[test]
    fn worst_wins() {
        assert_eq!(Ok.worst(Warning), Warning);
        assert_eq!(Critical.worst(Unknown), Critical);
        assert_eq!(Unknown.worst(Warning), Unknown);
        assert_eq!(
            [Ok, Warning, Critical, Unknown].map(|s| s.exit_code()),
            [0, 1, 2, 3]
        );
    }

    #[test]
    fn exit_codes_map_back() {
        assert_eq!(
            [0, 1, 2, 3, 5, 127].map(|c| super::State::from_exit(Some(c))),
            [Ok, Warning, Critical, Unknown, Unknown, Unknown]
        );
        assert_eq!(super::State::from_exit(None), Unknown);
    }
}
