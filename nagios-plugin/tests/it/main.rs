//! check_jsonrpc's integration tests, one binary: the plugin against real servers, TLS fronts and
//! real Nagios 4 and Icinga 2 cores.
//! One binary links once: on a 2-core machine each test binary cost a link of the whole crate.

mod cores;
mod plugin;
mod tls;
