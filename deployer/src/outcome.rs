//! What a command leaves the user: a summary on stdout ([`std::fmt::Display`]) and a verdict,
//! which the binary turns into its exit status and one closing line on stderr.

use crate::fleet::Failure;

pub trait Outcome: std::fmt::Display {
    /// `Err` when the command did not do all it was asked: what to tell the user.
    fn verdict(&self) -> Result<(), Unfinished>;
}

/// Why a command that ran did not finish everywhere; its summary says per host.
#[derive(Debug, thiserror::Error)]
pub enum Unfinished {
    #[error(
        "deploy {release} failed on {host}{}",
        failure.as_ref().map(|f| format!(" {f}")).unwrap_or_default()
    )]
    Deploy {
        release: String,
        host: String,
        failure: Option<Failure>,
    },
    #[error("deploy stopped before any host was touched: {0}")]
    Stopped(String),
    #[error("release {0} is live, but see the warnings above")]
    LiveWithWarnings(String),
    #[error("a deploy now would fail: see STATUS above")]
    PlanFails,
    #[error("rollback failed on {0} host(s): each host's line above says what became of it")]
    Rollback(usize),
    #[error("{0} host(s) could not be read")]
    Unreadable(usize),
    #[error("cleanup failed on {0} host(s)")]
    Cleanup(usize),
    #[error("{bad} of {of} hosts are not ready to deploy")]
    NotReady { bad: usize, of: usize },
    #[error("{0} host(s) still locked")]
    StillLocked(usize),
    #[error("the command failed or could not run on {0}")]
    Exec(String),
}
