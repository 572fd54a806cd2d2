//! The deployer's integration tests, one binary: real sshd servers on loopback (and in a network
//! namespace for jump hosts), a real usersvc in the system test.
//! One binary links once: on a 2-core machine each test binary cost a link of the whole crate.

mod capistrano;
mod check;
mod common;
mod copies;
mod deploy;
mod failures;
mod hostile;
mod large;
mod progress;
mod readme;
mod source;
mod stages;
mod system;
