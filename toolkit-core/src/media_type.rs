//! Which `Content-Type` values are JSON: the one rule the server that answers JSON-RPC and the
//! plugin that checks it both apply.

/// `application/json`, with or without parameters (`; charset=utf-8`), and any
/// `application/…+json` (RFC 6839); case-insensitive.
pub fn is_json(content_type: &str) -> bool {
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_its_suffix_types_only() {
        assert!(is_json("application/json"));
        assert!(is_json("Application/JSON; charset=utf-8"));
        assert!(is_json("application/vnd.api+json"));
        assert!(!is_json("text/json"));
        assert!(!is_json("application/jsonp"));
        assert!(!is_json(""));
    }
}
