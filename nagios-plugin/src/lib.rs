//! `check_jsonrpc`: a Nagios/Icinga plugin that calls a JSON-RPC 2.0 method over HTTP and
//! validates the envelope, the result and its timing, following the Monitoring Plugins guidelines.
//!
//! The library is usable in-process (the deployer's health gate runs [`check::run`]).

pub mod assertion;
pub mod check;
pub mod cli;
pub mod envelope;
pub mod perfdata;
pub mod range;

pub use check::{CheckConfig, Outcome, run};
pub use plugin_api::State;

use std::io::Write;
use std::time::Duration;

/// Makes any panic end as the plugin contract says: one UNKNOWN line, exit 3 (never 101).
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let line = Outcome::new(State::Unknown, format!("internal error: {msg}{at}")).render();
        let _ = writeln!(std::io::stdout(), "{line}");
        let _ = std::io::stdout().flush();
        std::process::exit(State::Unknown.exit_code());
    }));
}

/// A backstop past the HTTP timeout: whatever hangs, the core gets an answer before it kills us.
pub fn start_watchdog(timeout: Duration, state: State) {
    std::thread::spawn(move || {
        std::thread::sleep(timeout + Duration::from_millis(500));
        let line = Outcome::new(
            state,
            format!("plugin timed out after {} s (-t)", timeout.as_secs_f64()),
        )
        .render();
        let _ = writeln!(std::io::stdout(), "{line}");
        let _ = std::io::stdout().flush();
        std::process::exit(state.exit_code());
    });
}

/// The whole plugin: arguments in, (output, exit code) out.
pub fn main_with_args(argv: Vec<std::ffi::OsString>) -> (String, i32) {
    match cli::parse(argv) {
        Ok(cfg) => {
            start_watchdog(cfg.timeout, cfg.timeout_state);
            let o = run(&cfg);
            (o.render(), o.state.exit_code())
        }
        Err(cli::Early::Info(text)) => (text.trim_end().to_owned(), State::Unknown.exit_code()),
        Err(cli::Early::Bad(why)) => (
            Outcome::new(State::Unknown, why).render(),
            State::Unknown.exit_code(),
        ),
    }
}
