//! Text read from hosts is data, never terminal control: what a host says (a hook's output, a
//! bad-release reason, a lock owner) is escaped before it is printed or recorded, and what names
//! things (release names, revisions) is checked when read.
//!
//! Architecture Invariant: every string that came from a host reaches the terminal through
//! [`printable`] (`fleet::Host::fail`, `layout::parse_state`).

use std::borrow::Cow;

/// `text` with control characters (but newline and tab) and bidirectional overrides escaped
/// as `\u{…}`: a host cannot move the cursor, recolour, retitle or reorder the terminal. The
/// toolkit's one helper for it ([`toolkit_core::terminal::inert`]).
pub fn printable(text: &str) -> Cow<'_, str> {
    toolkit_core::terminal::inert(text)
}

/// Longest revision accepted from a host (the layout script reads at most 200 bytes of it).
pub const MAX_REVISION: usize = 200;

/// Whether `revision` (a release's `REVISION`, as read) is one: printable, on one line, bounded.
pub fn revision_ok(revision: &str) -> bool {
    revision.len() <= MAX_REVISION
        && printable(revision) == revision
        && !revision.contains(['\n', '\t'])
}

/// How a release is named: its UTC time stamp (Capistrano's form).
pub const RELEASE_FORMAT: &str = "%Y%m%d%H%M%S";

/// Whether `name` is a release name: a UTC time stamp, [`RELEASE_FORMAT`].
pub fn release_name_ok(name: &str) -> bool {
    name.len() == 14
        && name.bytes().all(|b| b.is_ascii_digit())
        && chrono::NaiveDateTime::parse_from_str(name, RELEASE_FORMAT).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_are_shown_not_obeyed() {
        // The escaping itself is toolkit_core::terminal's, tested there.
        assert_eq!(printable("\u{1b}[31mred"), "\\u{1b}[31mred");
        assert!(revision_ok("v1.2 (build 42)"));
        assert!(!revision_ok("x\u{1b}]0;pwned\u{7}"));
        assert!(!revision_ok(&"x".repeat(201)));
        assert!(release_name_ok("20261201101500"));
        assert!(!release_name_ok("../../etc"));
        assert!(!release_name_ok("20261399101500"));
    }
}
