//! The process around the service: the listening socket (inherited or bound), serving and
//! draining, the pid file, and the zero-downtime upgrade that hands the
//! socket to a new release.

pub(crate) mod listener;
pub mod pidfile;
pub(crate) mod server;
pub(crate) mod upgrade;

pub use listener::{Inherited, ListenError};
pub use server::ServerSettings;
pub use upgrade::{UpgradeError, Upgraded, upgrade};
