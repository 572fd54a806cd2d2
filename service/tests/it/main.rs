//! usersvc's integration tests, one binary: each module one subject, every one against the real
//! `usersvc` binary over real HTTP (and a real PostgreSQL, Riemann sink or Nagios core where named).
//! One binary links once: on a 2-core machine each test binary cost a link of the whole crate.

mod bad_input;
mod cold_start;
mod config;
mod durability;
mod faults;
mod hostile;
mod jsonrpc_spec;
mod outage;
mod packaging;
mod postgres;
mod pull;
mod riemann;
mod upgrade;
mod watching;

use std::path::Path;
use testbed::{Postgres, Usersvc};

/// The usersvc binary under test.
fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_usersvc"))
}

/// A usersvc on a SQLite file of its own, with `extra` flags.
fn svc(extra: &[&str]) -> Usersvc {
    Usersvc::start_with(bin(), extra)
}

/// A usersvc on `pg`, with `extra` flags.
fn on(pg: &Postgres, extra: &[&str]) -> Usersvc {
    Usersvc::start_on(bin(), Some(&pg.url()), extra)
}
