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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::{Failure, Stage};
    use crate::report::{HostOutcome, Report};

    fn attribute<'a>(e: &'a Event, key: &str) -> Option<&'a str> {
        e.attributes
            .iter()
            .find(|a| a.key == key)
            .and_then(|a| a.value.as_deref())
    }

    fn outcome(name: &str, failure: Option<Failure>) -> HostOutcome {
        HostOutcome {
            name: name.into(),
            host: format!("{name}.example"),
            previous: None,
            sent_files: 0,
            sent_bytes: 0,
            linked_files: 0,
            result: "published".into(),
            failure,
            warnings: Vec::new(),
        }
    }

    #[test]
    fn one_event_per_host_and_a_failed_run_is_critical_on_every_host() {
        let failure = Failure {
            stage: Stage::Health,
            message: "gate failed".into(),
        };
        let r = Report {
            release: "20261201120000".into(),
            revision: "abc123".into(),
            hosts: vec![outcome("app1", Some(failure)), outcome("app2", None)],
            ok: false,
            elapsed: std::time::Duration::from_millis(2500),
            stopped: None,
            hooks: Vec::new(),
            show_hooks: false,
            warnings: Vec::new(),
            canary: Vec::new(),
            ssh_usage: None,
        };
        let events = deploy_events("usersvc", &r);
        assert_eq!(events.len(), 2);
        for e in &events {
            assert_eq!(e.service.as_deref(), Some("deployer deploy"));
            assert_eq!(
                e.state.as_deref(),
                Some("critical"),
                "the run failed: {e:?}"
            );
            assert_eq!(e.metric_d, Some(2.5));
            assert_eq!(attribute(e, "application"), Some("usersvc"));
            assert_eq!(attribute(e, "release"), Some("20261201120000"));
            assert_eq!(attribute(e, "revision"), Some("abc123"));
        }
        assert_eq!(events[0].host.as_deref(), Some("app1.example"));
        assert_eq!(attribute(&events[0], "stage"), Some("health"));
        assert_eq!(attribute(&events[1], "stage"), None);
        let live = Report {
            ok: true,
            hosts: vec![outcome("app2", None)],
            ..r
        };
        let events = deploy_events("usersvc", &live);
        assert_eq!(events[0].state.as_deref(), Some("ok"));
        assert_eq!(
            events[0].description.as_deref(),
            Some("20261201120000 is live")
        );
    }
}
