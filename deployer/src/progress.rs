//! What long work on this machine shows while it runs (the build, hashing the source): a line
//! when a step starts and one when it ends with its time, so a log shows every step, and on a
//! terminal a spinner in between with what is being done and for how long. Nothing with
//! `--quiet`.

use crate::settings::Settings;
use indicatif::{ProgressBar, ProgressStyle};
use std::time::{Duration, Instant};

/// One step under way.
pub struct Step<'a> {
    bar: ProgressBar,
    settings: &'a Settings,
    started: Instant,
}

impl<'a> Step<'a> {
    /// Says `what` is starting and shows it turning; `{bytes}` counts what
    /// [`ProgressBar::inc`] adds to [`Step::bar`].
    pub fn start(settings: &'a Settings, what: &str, counts_bytes: bool) -> Self {
        settings.say(what);
        let bar = if settings.quiet {
            ProgressBar::hidden()
        } else {
            ProgressBar::new_spinner()
        };
        let template = if counts_bytes {
            "{spinner} {msg}: {bytes} ({elapsed})"
        } else {
            "{spinner} {msg} ({elapsed})"
        };
        bar.set_style(
            ProgressStyle::with_template(template)
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_message(what.to_owned());
        bar.enable_steady_tick(Duration::from_millis(200));
        Self {
            bar,
            settings,
            started: Instant::now(),
        }
    }

    pub fn bar(&self) -> &ProgressBar {
        &self.bar
    }

    /// A line of the step's own output: above the spinner on a terminal, else on stderr.
    pub fn println(&self, line: &str) {
        if self.settings.quiet {
            return;
        }
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
    }

    /// Ends the step: the spinner goes, `what` is said with the time it took.
    pub fn done(self, what: &str) {
        self.bar.finish_and_clear();
        self.settings.say(&format!(
            "{what} in {:.1}s",
            self.started.elapsed().as_secs_f64()
        ));
    }

    /// Ends the step without a word (it failed: the error says why).
    pub fn abandon(self) {
        self.bar.finish_and_clear();
    }
}
