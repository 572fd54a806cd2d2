//! The plugin's verdict and how it is printed: one first line `JSONRPC STATE - summary |
//! perfdata`, then details.

use plugin_api::{Perf, State};

/// The longest first line's text: a few clipped values and what is said around them.
pub(crate) const SUMMARY_CHARS: usize = 1000;
/// The longest detail line (`-v`).
pub(crate) const DETAIL_CHARS: usize = 2000;

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

    /// `JSONRPC STATE - summary | perfdata`, then the details, one per line. Whatever a server
    /// put in them is inert here: control characters and bidi overrides escaped, each line
    /// clipped ([`SUMMARY_CHARS`], [`DETAIL_CHARS`]).
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
        let summary = toolkit_core::terminal::clipped(&summary, SUMMARY_CHARS);
        let mut out = format!("JSONRPC {} - {summary}", self.state);
        if !self.perfdata.is_empty() {
            out.push_str(" | ");
            let perf: Vec<String> = self.perfdata.iter().map(ToString::to_string).collect();
            out.push_str(&perf.join(" "));
        }
        for line in &self.details {
            out.push('\n');
            out.push_str(&toolkit_core::terminal::clipped(
                &line.replace('|', "/"),
                DETAIL_CHARS,
            ));
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
        let hostile = Outcome::new(
            State::Critical,
            format!("\u{1b}]0;pwned\u{7}{}", "x".repeat(5000)),
        );
        let line = hostile.render();
        assert!(
            line.starts_with("JSONRPC CRITICAL - \\u{1b}]0;pwned\\u{7}xx"),
            "{line}"
        );
        assert!(line.chars().count() < SUMMARY_CHARS + 40);
    }
}
