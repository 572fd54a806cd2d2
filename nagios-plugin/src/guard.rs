//! Whatever goes wrong, the plugin still ends as the guidelines say: one status line on stdout
//! and exit 0–3. A panic becomes UNKNOWN (never exit 101); a hang past `-t` is answered by a
//! watchdog before the monitoring core kills the process.

use crate::outcome::Outcome;
use plugin_api::State;
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
        let outcome = Outcome::new(State::Unknown, format!("internal error: {msg}{at}"));
        exit_with(&outcome);
    }));
}

/// A backstop past the HTTP timeout: whatever hangs, the core gets an answer before it kills us.
pub(crate) fn start_watchdog(timeout: Duration, state: State) {
    std::thread::spawn(move || {
        std::thread::sleep(timeout.saturating_add(Duration::from_millis(500)));
        let why = format!("plugin timed out after {} s (-t)", timeout.as_secs_f64());
        exit_with(&Outcome::new(state, why));
    });
}

fn exit_with(outcome: &Outcome) -> ! {
    let _ = writeln!(std::io::stdout(), "{}", outcome.render());
    let _ = std::io::stdout().flush();
    std::process::exit(outcome.state.exit_code());
}
