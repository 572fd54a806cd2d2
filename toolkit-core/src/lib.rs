//! What every tool of the toolkit does the same way, written once: the host's name
//! ([`hostname`]), text from a peer made inert before it is printed ([`terminal`]), secrets in
//! URLs masked ([`redact`]), whether a `Content-Type` is JSON ([`media_type`]), a duration in a
//! flag or a config file ([`duration`]: humantime's `500ms`, `30s`, `1m`, or bare seconds, with
//! an error that says how to write one), and a lock whose holder panicked ([`lock`]: used
//! as it is, since every lock here guards plain data that a panic cannot leave half-changed in
//! a way a reader would trust).
//!
//! A leaf: it depends on no other member.
//!
//! ```
//! use std::time::Duration;
//!
//! #[derive(serde::Deserialize)]
//! struct Check {
//!     #[serde(with = "toolkit_core::duration")]
//!     interval: Duration,
//! }
//!
//! let check: Check = toml::from_str(r#"interval = "1m 30s""#)?;
//! assert_eq!(check.interval, Duration::from_secs(90));
//! let bare: Check = toml::from_str(r#"interval = "90""#)?;
//! assert_eq!(bare.interval, Duration::from_secs(90), "a bare number is seconds");
//! let wrong = toml::from_str::<Check>(r#"interval = "soon""#).err().map(|e| e.to_string());
//! assert!(wrong.is_some_and(|e| e.contains("write it like 500ms, 30s, 1m")));
//!
//! let counter = std::sync::Mutex::new(0);
//! *toolkit_core::lock(&counter) += 1;
//! assert!(!toolkit_core::hostname().is_empty());
//! # Ok::<(), toml::de::Error>(())
//! ```

#![warn(missing_docs, unreachable_pub)]

pub mod duration;
mod host;
mod locks;
pub mod media_type;
pub mod redact;
pub mod terminal;

pub use host::hostname;
pub use locks::{lock, read, write};
