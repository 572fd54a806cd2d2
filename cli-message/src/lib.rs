#![warn(missing_docs, unreachable_pub)]
//! A failure as a command-line tool prints it (DESIGN.md, "Errors, as a CLI prints them"):
//! `program: what failed: cause`, each cause once (one already quoted by the message above it
//! is not repeated), then the outermost message — when it is context that says what to do, not
//! quoting its cause — on a line of its own. Never a "Caused by:" list, never a backtrace. A leaf:
//! no dependencies.
//!
//! ```
//! use anyhow::Context;
//!
//! let read = std::fs::read("missing.toml")
//!     .context("cannot read missing.toml")
//!     .context("fix the deploy configuration");
//! let e = read.unwrap_err();
//! assert_eq!(
//!     cli_message::render("deployer", e.as_ref()),
//!     "deployer: cannot read missing.toml: No such file or directory (os error 2)\n\
//!      fix the deploy configuration"
//! );
//! ```

use std::error::Error;
use std::process::ExitCode;

/// A binary's `main`: success, or the failure printed on stderr by [`render`] and exit 1.
pub fn exit<E>(program: &str, result: Result<(), E>) -> ExitCode
where
    E: AsRef<dyn Error + Send + Sync + 'static>,
{
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", render(program, e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// `program: message: cause…`, then the hint line when the error has a context above its causes.
pub fn render(program: &str, e: &(dyn Error + 'static)) -> String {
    let messages: Vec<String> = std::iter::successors(Some(e), |e| (*e).source())
        .map(ToString::to_string)
        .collect();
    // The outermost message is a hint (context added by the binary) only when it does not
    // quote its cause; a typed error that says `…: {source}` is the message itself.
    let (hint, causes) = match messages.split_first() {
        Some((first, rest))
            if rest
                .first()
                .is_some_and(|next| !first.contains(next.as_str())) =>
        {
            (Some(first), rest)
        }
        _ => (None, messages.as_slice()),
    };
    let mut line: Vec<&str> = Vec::new();
    for m in causes {
        if !line.last().is_some_and(|prev| prev.contains(m.as_str())) {
            line.push(m);
        }
    }
    match hint {
        Some(h) => format!("{program}: {}\n{h}", line.join(": ")),
        None => format!("{program}: {}", line.join(": ")),
    }
}

#[cfg(test)]
mod tests {
    use super::render;
    use std::fmt;

    /// An error whose message already quotes its source, as thiserror's `{source}` does.
    #[derive(Debug)]
    struct Quoting(std::io::Error);

    impl fmt::Display for Quoting {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "is Riemann listening at 127.0.0.1:1? {}", self.0)
        }
    }

    impl std::error::Error for Quoting {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn each_cause_once_and_no_hint_without_context() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let e = anyhow::Error::new(Quoting(refused));
        assert_eq!(
            render("riemann-probe", e.as_ref()),
            "riemann-probe: is Riemann listening at 127.0.0.1:1? connection refused"
        );
    }
}
