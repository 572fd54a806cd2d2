//! The process around the service: the listening socket (inherited or bound), serving and
//! draining, the pid file, and the zero-downtime upgrade that hands the
//! socket to a new release.

mod listener;
mod pidfile;
mod server;
mod server_settings;
mod upgrade;

pub(crate) use listener::UpgradeChannel;
pub use listener::{Inherited, ListenError};
pub use pidfile::is_alive;
pub(crate) use pidfile::{remove_if_ours, write as write_pid_file};
pub(crate) use server::serve;
#[cfg(test)]
pub(crate) use server_settings::RESERVED_FDS;
pub use server_settings::ServerSettings;
pub(crate) use upgrade::{Successor, listen_control};
pub use upgrade::{UpgradeError, Upgraded, upgrade};
