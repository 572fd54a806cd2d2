//! The Nagios plugin API, written once for the toolkit: plugin states and their exit codes,
//! reading perfdata, and running a plugin with a timeout the way a monitoring core does.
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
//! assert_eq!((hung.state, hung.first_line.as_str()), (State::Critical, "plugin timed out after 0.1s"));
//! ```

mod perfdata;
mod run;
mod state;

pub use perfdata::{PerfValue, parse_perfdata};
pub use run::{PluginRun, RunError, run, run_argv, run_shell};
pub use state::State;
