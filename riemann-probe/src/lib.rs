//! An in-process Riemann emitter. [`Client`] is a synchronous TCP/UDP/TLS client; [`Probe`] sends
//! through it from a background thread so that callers never wait on Riemann; [`Heartbeat`] keeps
//! a service's event alive with a TTL so that Riemann alerts when it stops.

pub mod client;
pub mod event;
pub mod nagios;
pub mod probe;
pub mod proto;

pub use client::{Client, ClientConfig, Error, TlsFiles, Transport};
pub use event::{event, hostname};
pub use probe::{Heartbeat, Probe, ProbeConfig, ProbeStats};
pub use proto::Event;
