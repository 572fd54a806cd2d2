//! Text that came from a server or a host is data, never terminal control: before any tool
//! prints it, control characters (but newline and tab, where a block of text keeps them) and
//! Unicode's bidirectional overrides are escaped as `\u{…}`, so a peer cannot move the cursor,
//! recolour, retitle, clear or reorder the operator's terminal; and a value shown inside a line
//! is clipped, so a peer cannot make one line megabytes long.
//!
//! ```
//! use toolkit_core::terminal;
//!
//! assert_eq!(terminal::inert("ok\u{1b}]0;pwned\u{7}"), "ok\\u{1b}]0;pwned\\u{7}");
//! let id = "7".repeat(5_000_000);
//! assert_eq!(terminal::value(&id).chars().count(), terminal::VALUE_CHARS + 1);
//! ```

use std::borrow::Cow;

/// How much of one value a status line shows.
pub const VALUE_CHARS: usize = 200;

fn unsafe_char(c: char, keep_lines: bool) -> bool {
    (c.is_control() && !(keep_lines && (c == '\n' || c == '\t')))
        || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}' | '\u{61c}')
}

/// `text` with every unsafe character written as `escape` says, and at most `max` characters of
/// it (then `…`); borrowed when nothing changes.
fn rewrite(text: &str, keep_lines: bool, max: usize, escape: fn(char) -> String) -> Cow<'_, str> {
    let long = text.chars().nth(max).is_some();
    if !long && !text.chars().any(|c| unsafe_char(c, keep_lines)) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len().min(max.saturating_mul(4)) + 8);
    for c in text.chars().take(max) {
        if unsafe_char(c, keep_lines) {
            out.push_str(&escape(c));
        } else {
            out.push(c);
        }
    }
    if long {
        out.push('…');
    }
    Cow::Owned(out)
}

/// Rust's escape, shown to a person: `\u{1b}`.
fn shown(c: char) -> String {
    format!("\\u{{{:x}}}", c as u32)
}

/// `text` with control characters but newline and tab, and bidi overrides, escaped: for a
/// block of lines a peer sent (a hook's output), shown as it is otherwise.
pub fn inert(text: &str) -> Cow<'_, str> {
    rewrite(text, true, usize::MAX, shown)
}

/// `text` on one line: every control character escaped (newlines too), then clipped to `max`
/// characters with `…` when longer.
pub fn clipped(text: &str, max: usize) -> String {
    rewrite(text, false, max, shown).into_owned()
}

/// A JSON text (as serde_json writes it) fit for a terminal: the characters JSON leaves as they
/// are but a terminal obeys (DEL, C1 controls, bidi overrides) written as `\uXXXX` escapes, so
/// the text stays the same JSON.
pub fn json(text: &str) -> Cow<'_, str> {
    // Outside the BMP nothing here is unsafe: one \u escape each.
    rewrite(text, true, usize::MAX, |c| format!("\\u{:04x}", c as u32))
}

/// A value a peer sent, fit for a status line: one line, at most [`VALUE_CHARS`] characters
/// (and `…`).
pub fn value(text: &str) -> String {
    clipped(text, VALUE_CHARS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_are_shown_not_obeyed() {
        assert_eq!(inert("ok\nnext\tcol"), "ok\nnext\tcol");
        assert_eq!(inert("\u{1b}[31mred\u{7}"), "\\u{1b}[31mred\\u{7}");
        assert_eq!(inert("a\rb"), "a\\u{d}b");
        assert_eq!(inert("x\u{202e}y"), "x\\u{202e}y");
        assert!(matches!(inert("plain"), Cow::Borrowed(_)));
        assert_eq!(clipped("a\nb\u{1b}", 10), "a\\u{a}b\\u{1b}");
        assert_eq!(clipped("abcdef", 3), "abc…");
        assert_eq!(clipped("abc", 3), "abc");
        assert_eq!(
            value("é".repeat(300).as_str()).chars().count(),
            VALUE_CHARS + 1
        );
        assert_eq!(
            json("{\"a\":\"x\u{202e}\u{9b}y\"}"),
            "{\"a\":\"x\\u202e\\u009by\"}"
        );
    }
}
