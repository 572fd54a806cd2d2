#![warn(missing_docs, unreachable_pub)]
//! `check_jsonrpc`: a Nagios/Icinga plugin that calls a JSON-RPC 2.0 method over HTTP and
//! validates the envelope, the result and its timing, following the Monitoring Plugins guidelines.
//!
//! The library is usable in-process (the deployer's health gate runs [`run`]); [`evaluate`]
//! judges a response without any I/O:
//!
//! ```
//! use nagios_plugin::{CheckConfig, State, evaluate};
//!
//! let mut check = CheckConfig::new("http://127.0.0.1:8080/", "get_users");
//! check.critical = Some("2".parse()?); // seconds
//! let body = br#"{"jsonrpc":"2.0","result":[],"id":1}"#;
//! let outcome = evaluate(&check, 200, Some("OK"), "application/json", body, 0.25);
//! assert_eq!(outcome.state, State::Ok);
//! let line = outcome.render();
//! assert!(line.starts_with("JSONRPC OK - get_users returned [] in 0.250 s | time=0.25s;;2;0;10"));
//!
//! let late = evaluate(&check, 200, Some("OK"), "application/json", body, 2.5);
//! assert_eq!(late.state, State::Critical);
//! # Ok::<(), nagios_plugin::RangeError>(())
//! ```

mod assertion;
mod certificate;
mod cli;
mod config;
mod envelope;
mod evaluate;
mod guard;
mod outcome;
mod tls;
mod transport;

pub use assertion::{BadPointer, JsonType};
pub use cli::{Early, file_options, parse as parse_args, parse_argv_only};
pub use config::{CertDays, CheckConfig, DEFAULT_MAX_SIZE, DEFAULT_TIMEOUT, IpFamily};
pub use evaluate::evaluate;
pub use guard::install_panic_hook;
pub use outcome::Outcome;
pub use plugin_api::{Perf, Range, RangeError, State};
pub use transport::{HEAD_LIMIT, run};

/// The whole plugin: arguments in, (output, exit code) out.
pub fn main_with_args(argv: Vec<std::ffi::OsString>) -> (String, i32) {
    if let Some(described) = describe(&argv) {
        return described;
    }
    match cli::parse(argv) {
        Ok(cfg) => {
            guard::start_watchdog(cfg.timeout, cfg.timeout_state);
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

/// `check_jsonrpc completions SHELL` prints the completion script, `check_jsonrpc man-pages
/// DIR` writes the man page (`make install` runs both); a plugin takes no positional
/// argument, so neither word can be a check's. `None` for any other command line.
fn describe(argv: &[std::ffi::OsString]) -> Option<(String, i32)> {
    let word = |i: usize| argv.get(i).and_then(|a| a.to_str());
    let unknown = |why: String| {
        (
            Outcome::new(State::Unknown, why).render(),
            State::Unknown.exit_code(),
        )
    };
    match (word(1)?, word(2), argv.len()) {
        ("completions", Some(shell), 3) => Some(match shell.parse::<cli_docs::Shell>() {
            Ok(shell) => {
                let script = cli_docs::completion_script(cli::command(), shell);
                (String::from_utf8_lossy(&script).trim_end().to_owned(), 0)
            }
            Err(_) => unknown(format!(
                "completions {shell}: the shells are bash, zsh, fish, elvish and powershell"
            )),
        }),
        ("man-pages", Some(dir), 3) => Some(
            match cli_docs::man_pages(cli::command(), std::path::Path::new(dir)) {
                Ok(_) => (String::new(), 0),
                Err(e) => unknown(format!("cannot write the man page into {dir}: {e}")),
            },
        ),
        ("completions" | "man-pages", _, _) => Some(unknown(
            "usage: check_jsonrpc completions SHELL, or check_jsonrpc man-pages DIR".into(),
        )),
        _ => None,
    }
}
