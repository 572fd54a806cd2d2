#![warn(missing_docs, unreachable_pub)]
//! An in-process Riemann emitter. [`Client`] is a synchronous TCP/UDP/TLS client; [`Probe`] sends
//! through it from a background thread so that callers never wait on Riemann; [`Heartbeat`] keeps
//! a service's event alive with a TTL so that Riemann alerts when it stops. [`nagios_events`]
//! turns a Nagios plugin's run into events; [`watch`] sends a host's health, a plugin's or a
//! command's events every interval until stopped.
//!
//! ```
//! use riemann_probe::{ClientConfig, Probe, ProbeConfig, event};
//! use std::time::Duration;
//!
//! // Nothing listens on port 1: sending still never blocks; the probe counts what it could
//! // not deliver.
//! let probe = Probe::start(ProbeConfig::new(ClientConfig::tcp("127.0.0.1:1")));
//! probe.send(event("usersvc requests").metric(42_i64).ttl(15.0).build());
//! let stats = probe.shutdown(Duration::from_millis(200));
//! assert_eq!(stats.sent, 0);
//!
//! let e = event("usersvc heartbeat").host("app1").state("ok").ttl(15.0).build();
//! assert_eq!((e.host(), e.state(), e.ttl()), ("app1", "ok", 15.0));
//! ```

mod client;
mod event;
mod health;
mod nagios;
mod probe;
mod proto;
mod watch;

pub use client::{AnswerLimits, Client, ClientConfig, Error, TlsFiles, Transport, event_json};
pub use event::{EventBuilder, Metric, event, hostname};
pub use health::{HealthLimits, Thresholds};
pub use nagios::events as nagios_events;
pub use probe::{Heartbeat, Probe, ProbeConfig, ProbeStats};
pub use proto::{Attribute, Event, Msg, Query};
pub use watch::{Collector, WatchConfig, watch};
