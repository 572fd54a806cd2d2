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
