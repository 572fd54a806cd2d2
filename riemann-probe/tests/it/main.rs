//! riemann-probe's integration tests, one binary: the library and the CLI against the project's
//! Riemann sink, checked against `riemann-c-client`.
//! One binary links once: on a 2-core machine each test binary cost a link of the whole crate.

mod errors;
mod nagios;
mod probe;
mod riemann_config;
mod watch;
mod wire;
