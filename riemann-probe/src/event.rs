//! Building events: `event("service").state("ok").metric(3).ttl(15.0).build()`. The host defaults
//! to this machine's hostname; the time is left unset so the server stamps it (Riemann expires
//! events by their time plus ttl, so a skewed client clock cannot expire them early).

use crate::proto::{Attribute, Event};

pub use toolkit_core::hostname;

/// A metric value: integers travel as `metric_sint64`, fractions as `metric_d`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Metric {
    /// An integer, sent as `metric_sint64`.
    Int(i64),
    /// A float, sent as `metric_d`.
    Float(f64),
}

impl From<i64> for Metric {
    fn from(v: i64) -> Self {
        Metric::Int(v)
    }
}

impl From<u64> for Metric {
    fn from(v: u64) -> Self {
        i64::try_from(v).map_or(Metric::Float(v as f64), Metric::Int)
    }
}

impl From<f64> for Metric {
    fn from(v: f64) -> Self {
        Metric::Float(v)
    }
}

/// An [`Event`] being built; start one with [`event`], finish it with [`EventBuilder::build`].
#[derive(Debug, Clone)]
pub struct EventBuilder(Event);

/// Starts an event for `service` on this host.
pub fn event(service: impl Into<String>) -> EventBuilder {
    EventBuilder(Event {
        service: Some(service.into()),
        host: Some(hostname()),
        ..Default::default()
    })
}

impl EventBuilder {
    /// The host the event is about, instead of this machine.
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.0.host = Some(host.into());
        self
    }

    /// The state, by convention `ok`, `warning` or `critical`.
    pub fn state(mut self, state: impl Into<String>) -> Self {
        self.0.state = Some(state.into());
        self
    }

    /// The metric; replaces one set before (an integer clears a float and vice versa).
    pub fn metric(mut self, m: impl Into<Metric>) -> Self {
        match m.into() {
            Metric::Int(i) => {
                self.0.metric_sint64 = Some(i);
                self.0.metric_d = None;
            }
            Metric::Float(f) => {
                self.0.metric_d = Some(f);
                self.0.metric_sint64 = None;
            }
        }
        self
    }

    /// Seconds the event stays valid; Riemann expires it afterwards.
    pub fn ttl(mut self, secs: f32) -> Self {
        self.0.ttl = Some(secs);
        self
    }

    /// Adds a tag.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.0.tags.push(tag.into());
        self
    }

    /// Adds a custom `key=value` attribute.
    pub fn attribute(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.0.attributes.push(Attribute {
            key: key.into(),
            value: Some(value.into()),
        });
        self
    }

    /// Free-form text about the event.
    pub fn description(mut self, d: impl Into<String>) -> Self {
        self.0.description = Some(d.into());
        self
    }

    /// Stamps the event with this machine's clock (both `time` and `time_micros`).
    pub fn time_now(mut self) -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        self.0.time = Some(now.as_secs() as i64);
        self.0.time_micros = Some(now.as_micros() as i64);
        self
    }

    /// The finished event.
    pub fn build(self) -> Event {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_every_field() {
        let e = event("api latency")
            .host("h1")
            .state("warning")
            .metric(2.5)
            .ttl(30.0)
            .tag("a")
            .tag("b")
            .attribute("env", "prod")
            .description("slow")
            .build();
        assert_eq!(e.service.as_deref(), Some("api latency"));
        assert_eq!(e.host.as_deref(), Some("h1"));
        assert_eq!(e.metric(), Some(2.5));
        assert_eq!(e.metric_sint64, None);
        assert_eq!(e.tags, ["a", "b"]);
        assert_eq!(e.attribute("env"), Some("prod"));
        assert_eq!(event("x").metric(7i64).build().metric_sint64, Some(7));
        assert!(!event("x").build().host.unwrap_or_default().is_empty());
        assert_eq!(event("x").build().time, None, "the server stamps the time");
    }
}
