#![warn(missing_docs, unreachable_pub)]
//! The Nagios plugin API, written once for the toolkit: plugin states and their exit codes,
//! threshold ranges and the warning/critical decision, perfdata (writing and reading it), and
//! running a plugin with a timeout the way a monitoring core does.
//! `check_jsonrpc` speaks it, `riemann-probe nagios` forwards what a plugin says, and the
//! deployer's health gate runs plugins through it.
//!
//! ```
//! use plugin_api::{State, run_shell};
//! use std::time::Duration;
//!
//! let run = run_shell("echo 'LOAD OK - 0.2 | load1=0.2;4;8'", Duration::from_secs(10)).unwrap();
//! assert_eq!(run.state, State::Ok);
//! assert_eq!(run.first_line, "LOAD OK - 0.2");
//! assert_eq!(run.perfdata[0].value, 0.2);
//!
//! let hung = run_shell("sleep 10", Duration::from_millis(100)).unwrap();
//! let said = hung.first_line.as_str();
//! assert_eq!((hung.state, said), (State::Critical, "plugin timed out after 0.1s"));
//! ```
//!
//! Writing a check's own verdict and perfdata:
//!
//! ```
//! use plugin_api::{Perf, Range, State, judge};
//!
//! let (warning, critical): (Range, Range) = ("0.5".parse()?, "1".parse()?);
//! let (state, range) = judge(0.7, Some(&warning), Some(&critical));
//! assert_eq!((state, range.map(Range::as_str)), (State::Warning, Some("0.5")));
//! let perf = Perf::new("time", 0.7, "s").thresholds(Some(&warning), Some(&critical));
//! assert_eq!(perf.to_string(), "time=0.7s;0.5;1");
//! # Ok::<(), plugin_api::RangeError>(())
//! ```

mod perfdata;
mod range;
mod run;
mod state;

pub use perfdata::{Perf, PerfValue, num, parse_perfdata};
pub use range::{Range, RangeError, judge};
pub use run::{Keep, PluginRun, RunError, run, run_argv, run_shell, run_with};
pub use state::State;
