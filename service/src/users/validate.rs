//! What a client may send as a user: one object, an id we can key on, no server-owned fields.

use crate::doc::DocText;
use serde_json::{Map, Value};

pub const MAX_ID_LEN: usize = 256;
/// Deepest nesting a user document may have (the user object itself is level 1). Every copy of
/// a document (a journal record, the local copy, the store's text) wraps it in a few levels of
/// its own and is read back with serde_json's limit of 128: anything accepted here reads back.
pub const MAX_DEPTH: usize = 64;
/// Largest user document, as JSON text.
pub const MAX_DOC_BYTES: usize = 1 << 20;

/// Why a user (or a list of them) was refused; the message is for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// A validated user document ready to write.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub id: String,
    pub doc: Map<String, Value>,
}

impl NewUser {
    /// Keeps the document as text.
    pub fn into_text(self) -> (String, DocText) {
        let text = DocText::new(&self.doc);
        (self.id, text)
    }
}

/// Below this many users a list is validated on one thread: a thread costs more.
const PARALLEL_FROM: usize = 4096;

/// Validates a JSON array of users (a pull's payload) as one unit, as [`validate_list`] with
/// ids required, keeping each user as text: the payload is parsed one user at a time, so this
/// costs about twice the payload, not a parsed tree of all of it.
pub fn validate_text(payload: &[u8]) -> Result<Vec<(String, DocText)>, Invalid> {
    validate_text_with(payload, true)
}

/// How an error names a user of a list: by its index, which it says is counted from 0 (as in a
/// JSON pointer, `/users/3`).
fn position(i: usize) -> String {
    format!("user #{i} (counting from 0)")
}

/// [`validate_text`], with `require_ids` as [`validate_list`] takes it (an import mints ids for
/// users that have none).
pub fn validate_text_with(
    payload: &[u8],
    require_ids: bool,
) -> Result<Vec<(String, DocText)>, Invalid> {
    let items: Vec<&serde_json::value::RawValue> = serde_json::from_slice(payload)
        .map_err(|e| Invalid(format!("not a JSON array of users: {e}")))?;
    // Each user on its own: the list is cut in one part per core, the first error (by
    // position) wins as it would one by one.
    let one = |i: usize, raw: &serde_json::value::RawValue| {
        let user: Value = serde_json::from_str(raw.get())
            .map_err(|e| Invalid(format!("{}: {e}", position(i))))?;
        if require_ids && user.get("id").is_none_or(Value::is_null) {
            return Err(Invalid(format!("{} has no \"id\"", position(i))));
        }
        let user = validate(user).map_err(|e| Invalid(format!("{}: {e}", position(i))))?;
        Ok(user.into_text())
    };
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let per = items.len().div_ceil(cores).max(PARALLEL_FROM);
    let parts: Vec<Result<Vec<(String, DocText)>, Invalid>> = std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(per)
            .enumerate()
            .map(|(k, part)| {
                scope.spawn(move || {
                    part.iter()
                        .enumerate()
                        .map(|(j, raw)| one(k * per + j, raw))
                        .collect::<Result<Vec<_>, _>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Invalid("validating users failed".into())))
            })
            .collect()
    });
    let mut out = Vec::with_capacity(items.len());
    for part in parts {
        out.extend(part?);
    }
    // Borrowing the ids once all are built: no second copy of them.
    let mut seen = std::collections::HashSet::with_capacity(out.len());
    if let Some((i, (id, _))) = out
        .iter()
        .enumerate()
        .find(|(_, (id, _))| !seen.insert(id.as_str()))
    {
        return Err(Invalid(format!("{}: id {id:?} appears twice", position(i))));
    }
    Ok(out)
}

/// Checks a client's user object; gives it a UUIDv7 id when it has none. Server-owned fields
/// (`rev`, `updated_at`) are dropped: they are ours to set.
pub fn validate(user: Value) -> Result<NewUser, Invalid> {
    let Value::Object(mut doc) = user else {
        return Err(Invalid(format!(
            "a user must be a JSON object, not {}",
            kind(&user)
        )));
    };
    doc.remove("rev");
    doc.remove("updated_at");
    bounded(&doc)?;
    let id = match doc.get("id") {
        None | Some(Value::Null) => {
            let id = uuid::Uuid::now_v7().to_string();
            doc.insert("id".into(), id.clone().into());
            id
        }
        Some(Value::String(s)) if s.is_empty() => {
            return Err(Invalid("\"id\" must not be empty".into()));
        }
        Some(Value::String(s)) if s.len() > MAX_ID_LEN => {
            return Err(Invalid(format!(
                "\"id\" is {} bytes long; at most {MAX_ID_LEN}",
                s.len()
            )));
        }
        // PostgreSQL text cannot hold NUL: refuse it here rather than as a store failure.
        Some(Value::String(s)) if s.contains('\0') => {
            return Err(Invalid("\"id\" must not contain NUL (\\u0000)".into()));
        }
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(Invalid(format!(
                "\"id\" must be a string, not {}",
                kind(other)
            )));
        }
    };
    Ok(NewUser { id, doc })
}

/// Refuses a document deeper than `MAX_DEPTH` or longer than `MAX_DOC_BYTES`. One walk gives
/// the depth and an upper bound of the encoded size; only a document whose bound passes the
/// limit is encoded to be measured exactly (on the write path, most never are).
fn bounded(doc: &Map<String, Value>) -> Result<(), Invalid> {
    let (depth, bound) = measure_map(doc);
    if depth > MAX_DEPTH {
        return Err(Invalid(format!(
            "a user may be nested at most {MAX_DEPTH} levels deep (the user object is level 1); this one is {depth}"
        )));
    }
    if bound <= MAX_DOC_BYTES {
        return Ok(());
    }
    let mut size = Counter(0);
    // Writing to a counter cannot fail; a map of JSON values always serializes.
    let _ = serde_json::to_writer(&mut size, doc);
    if size.0 > MAX_DOC_BYTES {
        return Err(Invalid(format!(
            "a user may be at most {MAX_DOC_BYTES} bytes as JSON; this one is {}",
            size.0
        )));
    }
    Ok(())
}

/// Bytes a string may take encoded: each byte escaped as `\u00XX` at worst, and the quotes.
fn string_bound(s: &str) -> usize {
    6 * s.len() + 2
}

/// Levels of nesting (an object or array is 1 more than its deepest member) and an upper bound
/// of the encoded size.
fn measure(v: &Value) -> (usize, usize) {
    match v {
        Value::Array(a) => {
            let (depth, bytes) = a
                .iter()
                .map(measure)
                .fold((0, 2), |(d, b), (vd, vb)| (d.max(vd), b + vb + 1));
            (depth + 1, bytes)
        }
        Value::Object(o) => measure_map(o),
        Value::String(s) => (0, string_bound(s)),
        // A number is at most 24 characters as serde_json writes it; null, true, false at most 5.
        _ => (0, 24),
    }
}

fn measure_map(o: &Map<String, Value>) -> (usize, usize) {
    let (depth, bytes) = o.iter().fold((0, 2), |(d, b), (k, v)| {
        let (vd, vb) = measure(v);
        (d.max(vd), b + string_bound(k) + 1 + vb + 1)
    });
    (depth + 1, bytes)
}

/// Counts the bytes written through it.
struct Counter(usize);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Validates a list of users as one unit (bulk write, import, pull): every user valid, no id twice.
/// `require_ids`: refuse users without an id (a source pulled again would mint new ones each time).
/// The error names the user by position: `user #3 (counting from 0): …`.
pub fn validate_list(list: Vec<Value>, require_ids: bool) -> Result<Vec<NewUser>, Invalid> {
    let mut seen = std::collections::HashSet::with_capacity(list.len());
    list.into_iter()
        .enumerate()
        .map(|(i, u)| {
            if require_ids && u.get("id").is_none_or(Value::is_null) {
                return Err(Invalid(format!("{} has no \"id\"", position(i))));
            }
            let user = validate(u).map_err(|e| Invalid(format!("{}: {e}", position(i))))?;
            if !seen.insert(user.id.clone()) {
                return Err(Invalid(format!(
                    "{}: id {:?} appears twice",
                    position(i),
                    user.id
                )));
            }
            Ok(user)
        })
        .collect()
}

pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn validation() {
        assert!(validate(json!([1])).is_err());
        assert!(validate(json!({"id": 5})).is_err());
        assert!(validate(json!({"id": ""})).is_err());
        assert!(validate(json!({"id": "a\u{0}b"})).is_err());
        assert!(validate(json!({"id": "x".repeat(MAX_ID_LEN + 1)})).is_err());
        let u = validate(json!({"id": "a", "rev": 9, "updated_at": "x", "n": 1})).expect("valid");
        assert_eq!(Value::Object(u.doc), json!({"id": "a", "n": 1}));
        let u = validate(json!({"name": "anon"})).expect("valid");
        let id = uuid::Uuid::parse_str(&u.id).expect("a uuid");
        assert_eq!(id.get_version_num(), 7);
        assert_eq!(u.doc["id"], u.id.as_str());
        let twice = validate_list(vec![json!({"id": "a"}), json!({"id": "a"})], false);
        assert_eq!(
            twice.expect_err("dup").0,
            "user #1 (counting from 0): id \"a\" appears twice"
        );
        let anon = validate_list(vec![json!({"n": 1})], true);
        assert_eq!(
            anon.expect_err("no id").0,
            "user #0 (counting from 0) has no \"id\""
        );
    }

    /// A user object nested `levels` deep (itself included).
    pub(crate) fn nested(levels: usize) -> Value {
        let mut v = json!(1);
        for n in 1..levels {
            v = if n % 2 == 0 {
                json!([v])
            } else {
                json!({"d": v})
            };
        }
        json!({"id": "deep", "d": v})
    }

    #[test]
    fn a_payload_validates_as_text() {
        let ok = validate_text(br#"[{"id": "b", "n": 1, "rev": 9}, {"id": "a"}]"#).expect("valid");
        assert_eq!(ok[0].0, "b");
        assert_eq!(ok[0].1.as_str(), r#"{"id":"b","n":1}"#);
        let e = validate_text(br#"[{"id": "a"}, {"n": 1}]"#).expect_err("no id");
        assert_eq!(e.0, "user #1 (counting from 0) has no \"id\"");
        let e = validate_text(br#"[{"id": "a"}, {"id": "a"}]"#).expect_err("twice");
        assert!(e.0.contains("appears twice"), "{e}");
        assert!(validate_text(b"{}").is_err());
    }

    #[test]
    fn depth_and_size_limits() {
        assert_eq!(measure(&nested(MAX_DEPTH)).0, MAX_DEPTH);
        // The bound is never below the real size.
        for v in [
            nested(3),
            json!({"id": "q\"\u{1}é", "n": [1.5e300, -1, null, true]}),
        ] {
            assert!(measure(&v).1 >= v.to_string().len(), "{v}");
        }
        assert!(validate(nested(MAX_DEPTH)).is_ok());
        let e = validate(nested(MAX_DEPTH + 1)).expect_err("too deep").0;
        assert!(e.contains("at most 64 levels") && e.ends_with("65"), "{e}");
        let big = json!({"id": "big", "s": "x".repeat(MAX_DOC_BYTES)});
        let e = validate(big).expect_err("too big").0;
        assert!(e.contains("at most 1048576 bytes"), "{e}");
        // Exactly at the limit reads back through every wrapping a copy adds.
        let doc = validate(nested(MAX_DEPTH)).expect("valid").doc;
        let wrapped = json!([[{"op": {"users": [["deep", doc]]}}]]).to_string();
        serde_json::from_str::<Value>(&wrapped).expect("reads back");
    }

    #[test]
    fn long_lists_are_checked_in_parts_and_the_first_error_named() {
        let mut users: Vec<Value> = (0..10_000)
            .map(|i| json!({"id": format!("u{i}")}))
            .collect();
        let text = serde_json::to_vec(&users).expect("json");
        let ok = validate_text(&text).expect("valid");
        assert_eq!(ok.len(), 10_000);
        assert_eq!(ok[9_999].0, "u9999", "in order");
        users[9_000] = json!({"id": 5});
        users[7_000] = json!({"id": "u1"});
        let e = validate_text(&serde_json::to_vec(&users).expect("json")).expect_err("bad");
        assert!(e.0.starts_with("user #9000"), "{}", e.0);
        users[9_000] = json!({"id": "fine"});
        let e = validate_text(&serde_json::to_vec(&users).expect("json")).expect_err("twice");
        assert!(
            e.0.contains("user #7000") && e.0.contains("twice"),
            "{}",
            e.0
        );
    }
}
