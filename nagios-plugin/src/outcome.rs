//! The plugin's verdict and how it is printed: one first line `JSONRPC STATE - summary |
//! perfdata`, then details.

use plugin_api::{Perf, State};

/// The plugin's verdict.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The verdict; its exit code is the plugin's.
    pub state: State,
    /// The first line's text after `JSONRPC STATE - `.
    pub summary: String,
    /// Perfdata, printed after a `|` on the first line.
    pub perfdata: Vec<Perf>,
    /// Lines after the first (shown with -v); never perfdata.
    pub details: Vec<String>,
}

impl Outcome {
    /// A verdict with its summary, without perfdata or details.
    pub fn new(state: State, summary: impl Into<String>) -> Self {
        Self {
            state,
            summary: summary.into(),
            perfdata: Vec::new(),
            details: Vec::new(),
        }
    }

    /// `JSONRPC STATE - summary | perfdata`, then the details, one per line.
    pub fn render(&self) -> String {
        // A '|' in the summary would start perfdata early; newlines would split the first line.
        let summary: String = self
            .summary
            .chars()
            .map(|c| match c {
                '|' => '/',
                '\n' | '\r' => ' ',
                c => c,
            })
            .collect();
        let mut out = format!("JSONRPC {} - {summary}", self.state);
        if !self.perfdata.is_empty() {
            out.push_str(" | ");
            let perf: Vec<String> = self.perfdata.iter().map(ToString::to_string).collect();
            out.push_str(&perf.join(" "));
        }
        for line in &self.details {
            out.push('\n');
            out.push_str(&line.replace('|', "/"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_keeps_perfdata_on_the_first_line() {
        let mut o = Outcome::new(State::Ok, "a | b\nc");
        o.perfdata.push(Perf::new("time", 0.5, "s"));
        o.details.push("detail | x".into());
        assert_eq!(o.render(), "JSONRPC OK - a / b c | time=0.5s\ndetail / x");
    }
}
