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
    /// Hosts worked on at the same time, unless `--parallel` says otherwise.
    pub const PARALLEL: u16 = 16;
    /// Seconds a connect or a remote step may take, unless `--timeout` says otherwise.
    pub const TIMEOUT_SECS: u64 = 10;
    /// Seconds a hook may take, unless `--hook-timeout` says otherwise.
    pub const HOOK_TIMEOUT_SECS: u64 = 600;

    pub fn new(ssh: SshSettings) -> Self {
        Self {
            ssh,
            parallel: usize::from(Self::PARALLEL),
            hook_timeout: Duration::from_secs(Self::HOOK_TIMEOUT_SECS),
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
