//! Plugin states and their exit codes (Monitoring Plugins guidelines).

use std::fmt;

/// Ordered by severity for "worst wins": OK < WARNING < UNKNOWN < CRITICAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Ok,
    Warning,
    Critical,
    Unknown,
}

impl State {
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
}
