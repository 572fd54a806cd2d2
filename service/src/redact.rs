//! Credentials in URLs never reach a log line, `/health`, an error or `--help`:
//! `scheme://user:secret@host` is shown as `scheme://user:***@host`, wherever a URL appears in a
//! text (a database URL, a pull URL, an HTTP client's error quoting either).

/// `text` with the password of every `scheme://user:password@…` in it replaced by `***`.
pub fn text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        // The authority runs to the path, query, fragment or the end of the URL in the text.
        let end = tail
            .find(|c: char| {
                matches!(c, '/' | '?' | '#' | '"' | '\'' | '<' | '>') || c.is_whitespace()
            })
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(userinfo_end) => {
                let userinfo = &authority[..userinfo_end];
                match userinfo.find(':') {
                    Some(colon) => {
                        out.push_str(&userinfo[..colon]);
                        out.push_str(":***");
                    }
                    None => out.push_str(userinfo),
                }
                out.push_str(&authority[userinfo_end..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::text;

    #[test]
    fn passwords_are_hidden_wherever_the_url_is() {
        assert_eq!(text("postgres://u:pw@h/db"), "postgres://u:***@h/db");
        assert_eq!(text("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(text("sqlite://x.db"), "sqlite://x.db");
        assert_eq!(
            text("fetching https://bot:t0k3n@hr.example/u.json: connection refused"),
            "fetching https://bot:***@hr.example/u.json: connection refused"
        );
        assert_eq!(
            text("a postgres://a:b@c:5432 and http://d:e@f?x=1"),
            "a postgres://a:***@c:5432 and http://d:***@f?x=1"
        );
        // A password holding '@' is hidden whole.
        assert_eq!(text("postgres://u:p@ss@h/db"), "postgres://u:***@h/db");
        assert_eq!(text("no url here"), "no url here");
    }
}
