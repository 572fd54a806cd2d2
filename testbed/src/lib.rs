//! Real peers for tests, started on loopback and torn down on drop (even when a test panics).
//!
//! Each fixture fails loudly, naming the install step, when its peer is missing: a test never
//! skips silently. Children are killed when the test thread that started them dies
//! (`PR_SET_PDEATHSIG`), so a crashed test run leaks no process.

pub mod canned;
pub mod capistrano;
pub mod cores;
pub mod history;
pub mod http;
pub mod load;
pub mod netns;
pub mod postgres;
pub mod process;
pub mod riemann;
pub mod sizes;
pub mod sshd;
pub mod tidy;
pub mod tls_front;
pub mod usersvc;
pub mod writers;

pub use postgres::Postgres;
pub use process::{Peer, eventually, is_root, signal, workspace_root};
pub use usersvc::Usersvc;
