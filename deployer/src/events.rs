//! Deploy events for Riemann (`[riemann] server`): one per host, service `deployer deploy`,
//! state `ok` or `critical`, metric = the run's seconds, attributes application, release,
//! revision, result, and the failing stage. A Riemann that is down never fails a deploy.

use crate::report::Report;
use riemann_probe::event;
use riemann_probe::{self as riemann, Client, ClientConfig, Event};
use std::time::Duration;

pub fn deploy_events(application: &str, r: &Report) -> Vec<Event> {
    r.hosts
        .iter()
        .map(|h| {
            let mut e = event("deployer deploy")
                .host(&h.host)
                .state(if r.ok && h.failure.is_none() {
                    "ok"
                } else {
                    "critical"
                })
                .metric(r.elapsed.as_secs_f64())
                .tag("deployer")
                .attribute("application", application)
                .attribute("release", &r.release)
                .attribute("revision", &r.revision)
                .attribute("result", &h.result)
                .description(match &h.failure {
                    Some(f) => format!("{}: failed {f}", h.result),
                    None if r.ok => format!("{} is live", r.release),
                    None => h.result.clone(),
                });
            if let Some(f) = &h.failure {
                e = e.attribute("stage", f.stage.name());
            }
            e.build()
        })
        .collect()
}

/// Riemann did not take the events; the deploy stands.
#[derive(Debug, thiserror::Error)]
#[error("could not send deploy events to Riemann at {server}: {source}")]
pub struct NotSent {
    pub server: String,
    pub source: riemann::Error,
}

/// Sends the events over TCP with a short timeout.
pub fn send(server: &str, events: &[Event]) -> Result<(), NotSent> {
    let mut cfg = ClientConfig::tcp(server);
    cfg.timeout = Duration::from_secs(3);
    Client::connect(&cfg)
        .and_then(|mut c| c.send(events))
        .map(drop)
        .map_err(|source| NotSent {
            server: server.to_owned(),
            source,
        })
}
