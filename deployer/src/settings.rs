//! How a run behaves, from the command line: what every command shares.

use crate::ssh::SshSettings;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Settings {
    pub ssh: SshSettings,
    /// Hosts worked on at the same time.
    pub parallel: usize,
    pub hook_timeout: Duration,
    /// No stage headings or progress bars on stderr.
    pub quiet: bool,
    /// Every hook's output after the summary, not only a failed one's.
    pub verbose: bool,
    /// Set on SIGINT/SIGTERM: the run stops at the next stage boundary (or mid-upload) and
    /// takes the failure path, so nothing is left half-done or locked.
    pub interrupted: Arc<AtomicBool>,
}

impl Settings {
    pub fn new(ssh: SshSettings) -> Self {
        Self {
            ssh,
            parallel: 16,
            hook_timeout: Duration::from_secs(600),
            quiet: false,
            verbose: false,
            interrupted: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn interrupted(&self) -> bool {
        self.interrupted.load(Ordering::Relaxed)
    }

    /// A stage heading on stderr, unless quiet.
    pub fn say(&self, text: &str) {
        if !self.quiet {
            eprintln!("deployer: {text}");
        }
    }
}
