//! Secrets in URLs never reach a log line, `/health`, an error, a plugin's output or `--help`:
//! wherever a URL appears in a text (a database URL, a pull URL, a proxy, an HTTP client's error
//! quoting one), its password is shown as `***` (its whole user-info when it has no password:
//! a token is often sent as the user name), and so is every value of its query
//! (`?token=***&page=***`): which parameters carry secrets is the server's choice, not ours.
//!
//! ```
//! use toolkit_core::redact;
//!
//! assert_eq!(
//!     redact::text("GET http://u:pw@host/x?token=QSECRET&page=2 failed"),
//!     "GET http://u:***@host/x?token=***&page=*** failed"
//! );
//! ```

/// `text` with the secrets of every `scheme://…` URL in it replaced by `***`.
pub fn text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        // The URL runs to the first space or quote of the text around it.
        let end = tail
            .find(|c: char| matches!(c, '"' | '\'' | '<' | '>' | '`') || c.is_whitespace())
            .unwrap_or(tail.len());
        out.push_str(&after_scheme(&tail[..end]));
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// One URL as a user gives it, with or without its `scheme://` (`user:pw@proxy:3128`), its
/// secrets masked as [`text`] masks them.
pub fn url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://{}", self::after_scheme(rest)),
        None => after_scheme(url),
    }
}

/// One URL after its `scheme://`: the user-info's secret and the query's values masked.
fn after_scheme(after_scheme: &str) -> String {
    let authority_end = after_scheme
        .find(['/', '?', '#'])
        .unwrap_or(after_scheme.len());
    let (authority, rest) = after_scheme.split_at(authority_end);
    let mut out = String::with_capacity(after_scheme.len());
    match authority.rfind('@') {
        Some(at) => {
            match authority[..at].find(':') {
                Some(colon) => {
                    out.push_str(&authority[..colon]);
                    out.push_str(":***");
                }
                None => out.push_str("***"),
            }
            out.push_str(&authority[at..]);
        }
        None => out.push_str(authority),
    }
    let (before_fragment, fragment) = match rest.find('#') {
        Some(h) => rest.split_at(h),
        None => (rest, ""),
    };
    match before_fragment.split_once('?') {
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            let masked: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((name, _)) => format!("{name}=***"),
                    None => pair.to_owned(),
                })
                .collect();
            out.push_str(&masked.join("&"));
        }
        None => out.push_str(before_fragment),
    }
    out.push_str(fragment);
    out
}

#[cfg(test)]
mod tests {
    use super::{text, url};

    #[test]
    fn secrets_are_hidden_wherever_the_url_is() {
        assert_eq!(text("postgres://u:pw@h/db"), "postgres://u:***@h/db");
        assert_eq!(text("postgres://u@h/db"), "postgres://***@h/db");
        assert_eq!(text("sqlite://x.db"), "sqlite://x.db");
        assert_eq!(
            text("fetching https://bot:t0k3n@hr.example/u.json: connection refused"),
            "fetching https://bot:***@hr.example/u.json: connection refused"
        );
        assert_eq!(
            text("a postgres://a:b@c:5432 and http://d:e@f?x=1"),
            "a postgres://a:***@c:5432 and http://d:***@f?x=***"
        );
        // A password holding '@' is hidden whole.
        assert_eq!(text("postgres://u:p@ss@h/db"), "postgres://u:***@h/db");
        assert_eq!(
            text("http://h/x?token=QSECRET&sig=abc&flag#frag"),
            "http://h/x?token=***&sig=***&flag#frag"
        );
        assert_eq!(
            text("\"http://h/?key=K\": refused"),
            "\"http://h/?key=***\": refused"
        );
        assert_eq!(text("no url here"), "no url here");
        assert_eq!(url("u:pw@proxy:3128"), "u:***@proxy:3128");
        assert_eq!(url("proxy:3128"), "proxy:3128");
        assert_eq!(url("http://proxy:3128/a@b"), "http://proxy:3128/a@b");
    }
}
