//! What a deploy did, per host: the data `deploy` returns, the summary table it prints, and the
//! Riemann events ([`crate::events`]) are made from it.

use crate::fleet::Failure;
use crate::outcome::{Outcome, Unfinished};
use crate::table::{bytes, table, warnings};
use std::fmt;
use std::time::Duration;

/// Per host, what happened.
#[derive(Debug, Clone)]
pub struct HostOutcome {
    pub name: String,
    pub host: String,
    pub previous: Option<String>,
    pub sent_files: usize,
    pub sent_bytes: u64,
    pub linked_files: usize,
    /// `published`, `not published`, `rolled back to …`, …
    pub result: String,
    pub failure: Option<Failure>,
    /// Things left for the user (a lock on an unreachable host, a failed cleanup).
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Report {
    /// Empty when the run stopped before naming a release.
    pub release: String,
    pub revision: String,
    pub hosts: Vec<HostOutcome>,
    pub ok: bool,
    pub elapsed: Duration,
}

impl fmt::Display for Report {
    /// One row per host, then the warnings.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rows = vec![vec![
            "HOST".to_owned(),
            "RELEASE".into(),
            "SENT".into(),
            "LINKED".into(),
            "RESULT".into(),
        ]];
        for h in &self.hosts {
            let result = match &h.failure {
                Some(failure) => format!("{}; FAILED {failure}", h.result),
                None => h.result.clone(),
            };
            rows.push(vec![
                h.name.clone(),
                if self.release.is_empty() {
                    "-".into()
                } else {
                    self.release.clone()
                },
                format!("{} files, {}", h.sent_files, bytes(h.sent_bytes)),
                format!("{} files", h.linked_files),
                result,
            ]);
        }
        f.write_str(&table(&rows))?;
        let warned = self
            .hosts
            .iter()
            .map(|h| (h.name.as_str(), &h.warnings[..]));
        f.write_str(&warnings(warned))
    }
}

impl Outcome for Report {
    fn verdict(&self) -> Result<(), Unfinished> {
        if !self.ok {
            let first = self
                .hosts
                .iter()
                .find_map(|h| h.failure.clone().map(|f| (h.name.clone(), f)));
            let (host, failure) = match first {
                Some((host, f)) => (host, Some(f)),
                None => ("a host".into(), None),
            };
            return Err(Unfinished::Deploy {
                release: if self.release.is_empty() {
                    "(no release staged)".into()
                } else {
                    self.release.clone()
                },
                host,
                failure,
            });
        }
        if self.hosts.iter().any(|h| !h.warnings.is_empty()) {
            return Err(Unfinished::LiveWithWarnings(self.release.clone()));
        }
        Ok(())
    }
}
