//! The canary's judgement: usersvc's `errors rate` and `latency p99` events, read from Riemann
//! with its query protocol, split by their `revision` attribute into the new release's hosts
//! and the others, and compared against `[canary]`'s ratios. Pure but for [`query`]: what the
//! deploy flow does with a verdict is its business.
//!
//! [`watch`] is the flow's canary stage: it looks every `[canary] interval` while `--canary`
//! lasts.

use super::{Ctx, Run};
use crate::config::Canary;
use crate::fleet::{Stage, each};
use crate::health::Gate;
use crate::phases;
use riemann_probe::{AnswerLimits, Client, ClientConfig, Event};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Watches the published first batch for `window`: every `[canary] interval` the health gate
/// runs on it and, with `[riemann]`, usersvc's errors rate and latency p99 of the new revision
/// are compared with the hosts still on the old one. Worse beyond a limit, unhealthy, or never
/// heard of in Riemann: the batch fails at `canary`. `said` gets what was compared and why the
/// deploy went on or stopped, for the report.
pub(super) fn watch(
    batch: &mut [Run],
    c: &Ctx,
    gate: Option<&Gate>,
    window: Duration,
    said: &mut Vec<String>,
) {
    let names: Vec<&str> = batch.iter().map(|r| r.host.name()).collect();
    let shown = humantime::format_duration(window);
    c.settings.say(&format!(
        "canary: watching {} for {shown}",
        names.join(", ")
    ));
    said.push(format!("watched {} for {shown}", names.join(", ")));
    let ends = Instant::now() + window;
    let mut last = None;
    let mut looks = 0u32;
    loop {
        looks += 1;
        match look(batch, c, gate, &mut last) {
            Ok(()) => {}
            Err(why) => {
                said.push(format!("stopped: {why}"));
                return;
            }
        }
        let left = ends.saturating_duration_since(Instant::now());
        if left.is_zero() || c.settings.interrupted() {
            break;
        }
        let nap = Instant::now() + left.min(c.cfg.canary.interval);
        while Instant::now() < nap && !c.settings.interrupted() {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    if c.settings.interrupted() {
        said.push(format!("interrupted after {looks} looks"));
        return;
    }
    match last {
        Some(Judgement::Fine(text) | Judgement::NoOld(text)) => {
            said.push(format!("went on after {looks} looks: {text}"));
        }
        Some(Judgement::NoNew(text)) => {
            let why = format!(
                "{text} after {shown}: is usersvc reporting (riemann in usersvc.toml), and is the window longer than its riemann_interval?"
            );
            said.push(format!("stopped: {why}"));
            stop(batch, &why);
        }
        Some(Judgement::Worse(_)) | None => {
            said.push(format!("went on: healthy at each of {looks} looks"));
        }
    }
}

/// One look at the batch: the health gate, then (with `[riemann]`) the new revision's figures
/// against the rest, kept in `last`. `Err`: why the canary stops now (the batch has failed).
fn look(
    batch: &mut [Run],
    c: &Ctx,
    gate: Option<&Gate>,
    last: &mut Option<Judgement>,
) -> Result<(), String> {
    if let Some(gate) = gate {
        each(batch, c.settings.parallel, |r| {
            phases::health(&mut r.host, gate, &c.release(None));
        });
        if batch.iter().any(|r| !r.ok()) {
            return Err("the health gate failed".into());
        }
    }
    let Some(server) = c.cfg.riemann.as_ref().map(|r| r.server.as_str()) else {
        return Ok(());
    };
    // The hosts watched, by the names their events carry: only they speak for the new revision,
    // and their old-revision events are not "the rest".
    let watched: Vec<String> = batch
        .iter()
        .flat_map(|r| r.host.target.event_hosts.clone())
        .collect();
    let judged = match query(server, c.settings.ssh.timeout) {
        Ok(events) => judge(
            &sample(&events, &c.revision, &watched, &c.event_hosts),
            &c.revision,
            &c.cfg.canary,
        ),
        Err(e) => Judgement::NoNew(format!("cannot query Riemann at {server}: {e}")),
    };
    if let Judgement::Worse(why) = &judged {
        stop(batch, &format!("worse than the old release: {why}"));
        return Err(why.clone());
    }
    // A look that saw nothing does not undo one that saw the canary do well (Riemann may be
    // briefly out of reach at the last look).
    let saw = matches!(judged, Judgement::Fine(_) | Judgement::NoOld(_));
    if saw || !matches!(last, Some(Judgement::Fine(_) | Judgement::NoOld(_))) {
        *last = Some(judged);
    }
    Ok(())
}

/// Fails every host of the batch at `canary`.
fn stop(batch: &mut [Run], why: &str) {
    for r in batch.iter_mut() {
        r.host.fail(Stage::Canary, why);
    }
}

const ERRORS: &str = "usersvc errors rate";
const LATENCY: &str = "usersvc latency p99";

/// What one look may read from Riemann: two events a host of the deploy, and then some. A
/// canary needs hundreds of events, never millions: a server (or whoever fills its index) that
/// answers with more fails the look, rather than the operator's machine mid-deploy.
const LOOK: AnswerLimits = AnswerLimits {
    bytes: 4 << 20,
    events: 10_000,
};

/// usersvc's current error-rate and latency events, as Riemann's index holds them.
pub fn query(server: &str, timeout: Duration) -> Result<Vec<Event>, riemann_probe::Error> {
    let mut cfg = ClientConfig::tcp(server);
    cfg.timeout = timeout;
    let mut client = Client::connect(&cfg)?;
    let mut events = client.query_within(&format!("service = \"{ERRORS}\""), LOOK)?;
    events.extend(client.query_within(&format!("service = \"{LATENCY}\""), LOOK)?);
    Ok(events)
}

/// One side's figures: the mean over its hosts of each host's latest event.
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    pub hosts: Vec<String>,
    /// Errors per second.
    pub errors: Option<f64>,
    /// Seconds.
    pub latency: Option<f64>,
}

/// The new revision's figures and the rest's; `None` where no host reported.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub new: Option<Figures>,
    pub old: Option<Figures>,
}

/// Splits `events` by revision: `revision`'s from the hosts being watched (`watched`: the names
/// their events carry) on one side, every other revision's from the deploy's other hosts
/// (`deployed`) on the other. Anything else is ignored: a host outside the deploy (or anyone
/// who can send events to Riemann, naming one) cannot speak for the canary, and the watched
/// hosts' last old-revision events, not yet expired, are not "the rest".
pub fn sample(events: &[Event], revision: &str, watched: &[String], deployed: &[String]) -> Sample {
    let mut new: BTreeMap<String, (Option<f64>, Option<f64>)> = BTreeMap::new();
    let mut old = new.clone();
    for e in events {
        let (Some(host), Some(service), Some(metric)) = (&e.host, &e.service, e.metric()) else {
            continue;
        };
        if !metric.is_finite() || metric < 0.0 {
            continue;
        }
        let side = match e.attribute("revision") {
            Some(r) if r == revision && watched.contains(host) => &mut new,
            Some(r) if r != revision && deployed.contains(host) && !watched.contains(host) => {
                &mut old
            }
            _ => continue,
        };
        let slot = side.entry(host.clone()).or_default();
        match service.as_str() {
            ERRORS => slot.0 = Some(metric),
            LATENCY => slot.1 = Some(metric),
            _ => {}
        }
    }
    Sample {
        new: figures(new),
        old: figures(old),
    }
}

fn figures(side: BTreeMap<String, (Option<f64>, Option<f64>)>) -> Option<Figures> {
    if side.is_empty() {
        return None;
    }
    let mean = |values: Vec<f64>| {
        (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
    };
    Some(Figures {
        errors: mean(side.values().filter_map(|v| v.0).collect()),
        latency: mean(side.values().filter_map(|v| v.1).collect()),
        hosts: side.into_keys().collect(),
    })
}

/// What one look at Riemann says.
#[derive(Debug, Clone, PartialEq)]
pub enum Judgement {
    /// The new revision does worse beyond a limit: why, with the figures.
    Worse(String),
    /// Within the limits: the figures.
    Fine(String),
    /// Nothing from the new revision yet (it may not have reported).
    NoNew(String),
    /// The new revision reports, but no other revision does: nothing to compare against.
    NoOld(String),
}

/// Compares the new revision with the rest. A rate below `min_error_rate` (a latency below
/// `min_latency`) counts as that floor on both sides, so an idle service's one error (or a
/// microsecond's jitter) is not a regression of "infinitely many times".
pub fn judge(s: &Sample, revision: &str, limits: &Canary) -> Judgement {
    let Some(new) = &s.new else {
        return Judgement::NoNew(format!(
            "no usersvc errors rate or latency p99 events of revision {revision} in Riemann"
        ));
    };
    let Some(old) = &s.old else {
        return Judgement::NoOld(format!(
            "revision {revision} reports from {}, but no host on another revision does: nothing to compare against",
            new.hosts.join(", ")
        ));
    };
    let errors = compare(
        "errors",
        |v| format!("{v:.2}/s"),
        (new.errors, old.errors),
        limits.min_error_rate,
        limits.max_error_ratio,
    );
    let latency = compare(
        "latency p99",
        |v| format!("{:.1} ms", v * 1e3),
        (new.latency, old.latency),
        limits.min_latency.as_secs_f64(),
        limits.max_latency_ratio,
    );
    let compared = [errors, latency];
    if compared.iter().all(|(_, over)| over.is_none()) {
        return Judgement::NoNew(format!(
            "revision {revision} and the others report no metric in common (errors rate, latency p99)"
        ));
    }
    let worse = compared.iter().any(|(_, over)| *over == Some(true));
    let parts: Vec<&str> = compared.iter().map(|(text, _)| text.as_str()).collect();
    let text = format!(
        "revision {revision} ({}) against the others ({}): {}",
        new.hosts.join(", "),
        old.hosts.join(", "),
        parts.join(", ")
    );
    if worse {
        Judgement::Worse(text)
    } else {
        Judgement::Fine(text)
    }
}

/// One metric, new against old, each side raised to `floor` first (one error on an idle
/// service is not an infinite ratio): its line, and whether the ratio passes `max` (`None`: not
/// reported by both sides).
fn compare(
    what: &str,
    shown: fn(f64) -> String,
    (new, old): (Option<f64>, Option<f64>),
    floor: f64,
    max: f64,
) -> (String, Option<bool>) {
    let (Some(n), Some(o)) = (new, old) else {
        return (format!("{what}: not reported by both sides"), None);
    };
    let ratio = n.max(floor) / o.max(floor);
    let over = ratio > max;
    let text = format!(
        "{what} {} vs {} (ratio {ratio:.2} {} {max})",
        shown(n),
        shown(o),
        if over { ">" } else { "≤" }
    );
    (text, Some(over))
}

#[cfg(test)]
mod tests {
    use super::*;
    use riemann_probe::event;

    fn ev(host: &str, service: &str, revision: &str, metric: f64) -> Event {
        event(service)
            .host(host)
            .attribute("revision", revision)
            .metric(metric)
            .build()
    }

    fn limits() -> Canary {
        Canary::default()
    }

    #[test]
    fn compares_the_new_revision_with_the_rest() {
        let events = [
            ev("app1", ERRORS, "new", 4.0),
            ev("app1", LATENCY, "new", 0.012),
            ev("app2", ERRORS, "old", 0.5),
            ev("app2", LATENCY, "old", 0.010),
            ev("app3", ERRORS, "old", 1.5),
            ev("app3", LATENCY, "old", 0.010),
            // The canary's last old-revision event, not yet expired: not part of "the others".
            ev("app1-addr", ERRORS, "old", 100.0),
        ];
        let deployed = ["app1", "app1-addr", "app2", "app3"].map(String::from);
        let s = sample(
            &events,
            "new",
            &["app1".into(), "app1-addr".into()],
            &deployed,
        );
        let old = s.old.clone().expect("old side");
        assert_eq!(old.hosts, ["app2", "app3"]);
        assert_eq!(old.errors, Some(1.0));
        match judge(&s, "new", &limits()) {
            Judgement::Worse(why) => {
                assert!(
                    why.contains("errors 4.00/s vs 1.00/s (ratio 4.00 > 2)"),
                    "{why}"
                );
                assert!(
                    why.contains("latency p99 12.0 ms vs 10.0 ms (ratio 1.20 ≤ 1.5)"),
                    "{why}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn floors_keep_an_idle_service_from_looking_infinitely_worse() {
        let events = [
            ev("app1", ERRORS, "new", 0.05),
            ev("app1", LATENCY, "new", 0.004),
            ev("app2", ERRORS, "old", 0.0),
            ev("app2", LATENCY, "old", 0.0001),
        ];
        let deployed = ["app1", "app2"].map(String::from);
        let app1 = ["app1".to_owned()];
        let s = sample(&events, "new", &app1, &deployed);
        assert!(matches!(judge(&s, "new", &limits()), Judgement::Fine(_)));
        assert!(matches!(
            judge(
                &sample(&events[..2], "new", &app1, &deployed),
                "new",
                &limits()
            ),
            Judgement::NoOld(_)
        ));
        assert!(matches!(
            judge(
                &sample(&events[2..], "new", &app1, &deployed),
                "new",
                &limits()
            ),
            Judgement::NoNew(_)
        ));
    }

    #[test]
    fn events_from_hosts_outside_the_deploy_are_ignored() {
        let deployed = ["app1", "app2"].map(String::from);
        let app1 = ["app1".to_owned()];
        let events = [
            ev("app1", ERRORS, "new", 9.0),
            ev("app2", ERRORS, "old", 1.0),
            // Anyone who can send to Riemann: a fine-looking new revision, a bad old one.
            ev("mallory", ERRORS, "new", 0.0),
            ev("mallory", LATENCY, "new", 0.0),
            ev("elsewhere", ERRORS, "old", 1000.0),
            // A host of the deploy not in the batch cannot speak for the new revision either.
            ev("app2", LATENCY, "new", 0.0),
        ];
        let s = sample(&events, "new", &app1, &deployed);
        assert_eq!(
            s.new.as_ref().map(|f| f.hosts.clone()),
            Some(vec!["app1".into()])
        );
        assert_eq!(
            s.old.as_ref().map(|f| f.hosts.clone()),
            Some(vec!["app2".into()])
        );
        assert!(matches!(judge(&s, "new", &limits()), Judgement::Worse(_)));
    }
}
