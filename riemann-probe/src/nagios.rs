//! Turns a Nagios plugin's result (run by `plugin_api`, with its timeout) into Riemann events:
//! one for the check (state from the exit code, the first output line as description) and one
//! per perfdata value (a metric).

use crate::event::{EventBuilder, event};
use crate::proto::Event;
use plugin_api::PluginRun;

/// The events for one plugin run: the check, then one per perfdata value (`SERVICE LABEL`).
pub fn events(run: &PluginRun, service: &str, host: Option<&str>, ttl: Option<f32>) -> Vec<Event> {
    events_with(run, service, &|name| {
        let mut b = event(name);
        if let Some(h) = host {
            b = b.host(h);
        }
        if let Some(t) = ttl {
            b = b.ttl(t);
        }
        b
    })
}

/// As [`events`], each event started by `base` (which sets what every event of the caller
/// carries: host, ttl, tags).
pub(crate) fn events_with(
    run: &PluginRun,
    service: &str,
    base: &dyn Fn(String) -> EventBuilder,
) -> Vec<Event> {
    let state = run.state.as_lower();
    let with_state = |name: String| base(name).state(state).tag("nagios");
    let mut out = vec![
        with_state(service.to_owned())
            .description(run.first_line.clone())
            .build(),
    ];
    for p in &run.perfdata {
        let mut b = with_state(format!("{service} {}", p.label)).metric(p.value);
        if !p.uom.is_empty() {
            b = b.attribute("uom", p.uom.clone());
        }
        out.push(b.build());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_event_per_check_and_per_value() {
        let run = plugin_api::run_shell(
            "echo 'DISK CRITICAL - full | used=99%;90;95 free=1'; exit 2",
            std::time::Duration::from_secs(10),
        )
        .expect("runs");
        let ev = events(&run, "disk", Some("app1"), Some(30.0));
        let got: Vec<(Option<&str>, Option<&str>, Option<f64>)> = ev
            .iter()
            .map(|e| (e.service.as_deref(), e.state.as_deref(), e.metric_d))
            .collect();
        assert_eq!(
            got,
            [
                (Some("disk"), Some("critical"), None),
                (Some("disk used"), Some("critical"), Some(99.0)),
                (Some("disk free"), Some("critical"), Some(1.0)),
            ]
        );
        assert_eq!(ev[0].description.as_deref(), Some("DISK CRITICAL - full"));
    }
}
