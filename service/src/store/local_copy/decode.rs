//! Reading a copy: the base's records decoded in place (each document a slice of the file's one
//! buffer), the log's frames replayed over them up to the first torn one, and version 1's JSON.

use super::{DELETED, HEADER, LOG_HEADER, LOG_MAGIC, MAGIC, USER, V1_HEADER, VERSION};
use crate::doc::{Entry, Record};
use bytes::Bytes;
use serde_json::Value;
use std::collections::BTreeMap;

/// A reader over a buffer that never reads past its end.
struct Cursor {
    bytes: Bytes,
    at: usize,
}

impl Cursor {
    fn new(bytes: Bytes) -> Self {
        Self { bytes, at: 0 }
    }

    fn next(&mut self, n: usize) -> Result<std::ops::Range<usize>, String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(format!("a record at byte {} is cut short", self.at));
        };
        let range = self.at..end;
        self.at = end;
        Ok(range)
    }

    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let range = self.next(n)?;
        Ok(&self.bytes[range])
    }

    /// The next `n` bytes, sharing the buffer.
    fn take_bytes(&mut self, n: usize) -> Result<Bytes, String> {
        let range = self.next(n)?;
        Ok(self.bytes.slice(range))
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, String> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }

    fn done(&self) -> bool {
        self.at >= self.bytes.len()
    }

    /// One record: the id and the user (`None`: a deletion).
    fn record(&mut self) -> Result<(String, Option<Entry>), String> {
        let kind = self.take(1)?[0];
        let n = self.u32()? as usize;
        let id = std::str::from_utf8(self.take(n)?)
            .map_err(|_| "an id is not UTF-8".to_owned())?
            .to_owned();
        match kind {
            DELETED => Ok((id, None)),
            USER => {
                let rev = self.u64()? as i64;
                let doc_hash = self.u64()?;
                let n = self.u32()? as usize;
                let json = self.take_bytes(n)?;
                // Served as it is. The checksum stands for its bytes; parsing each one again
                // would double a cold start's time. An object's braces at least.
                if json.first() != Some(&b'{') || json.last() != Some(&b'}') {
                    return Err(format!("the user {id:?} is not a JSON object"));
                }
                Ok((
                    id,
                    Some(Entry {
                        rev,
                        json,
                        doc_hash,
                    }),
                ))
            }
            k => Err(format!("unknown record kind {k}")),
        }
    }
}

pub(super) fn decode(bytes: &Bytes) -> Result<(u64, Vec<(String, Entry)>), String> {
    if bytes.len() < HEADER {
        return Err(format!("{} bytes, shorter than its header", bytes.len()));
    }
    let mut head = Cursor::new(bytes.slice(..HEADER));
    if head.take(8)? != MAGIC {
        return Err("not a usersvc snapshot (wrong magic)".into());
    }
    let version = head.u32()?;
    if version != VERSION {
        return Err(format!(
            "format version {version}; this usersvc reads versions 1 and {VERSION}"
        ));
    }
    let base_id = head.u64()?;
    let users = head.u64()?;
    let len = head.u64()?;
    let crc = head.u32()?;
    let body = bytes.slice(HEADER..);
    if body.len() as u64 != len {
        return Err(format!(
            "body is {} bytes, the header says {len} (cut short?)",
            body.len()
        ));
    }
    if crc32fast::hash(&body) != crc {
        return Err("checksum mismatch".into());
    }
    let mut out = Vec::with_capacity(users.min(body.len() as u64 / 16) as usize);
    let mut c = Cursor::new(body);
    while !c.done() {
        match c.record()? {
            (id, Some(e)) => out.push((id, e)),
            (id, None) => return Err(format!("a deletion of {id:?} in the base")),
        }
    }
    if out.len() as u64 != users {
        return Err(format!("{} users, the header says {users}", out.len()));
    }
    Ok((base_id, out))
}

/// Applies the log's frames to `users`; `Some(reason)` when it ended before its last byte.
pub(super) fn replay_log(
    bytes: Bytes,
    base_id: u64,
    users: &mut BTreeMap<String, Entry>,
) -> Option<String> {
    if bytes.len() < LOG_HEADER || &bytes[..8] != LOG_MAGIC {
        return Some("no log header".into());
    }
    let mut c = Cursor::new(bytes);
    c.at = 8;
    let (version, logged_base) = match (c.u32(), c.u64()) {
        (Ok(v), Ok(b)) => (v, b),
        _ => return Some("no log header".into()),
    };
    if version != VERSION || logged_base != base_id {
        // A log of an older base: the base already holds what it said.
        return None;
    }
    while !c.done() {
        let frame = (|| {
            let len = c.u32()? as usize;
            let crc = c.u32()?;
            let record = c.take_bytes(len)?;
            if crc32fast::hash(&record) != crc {
                return Err("a frame fails its checksum".to_owned());
            }
            let mut r = Cursor::new(record);
            let mut changes = Vec::new();
            while !r.done() {
                changes.push(r.record()?);
            }
            Ok(changes)
        })();
        match frame {
            Ok(changes) => {
                for (id, e) in changes {
                    match e {
                        Some(e) => users.insert(id, e),
                        None => users.remove(&id),
                    };
                }
            }
            Err(reason) => return Some(reason),
        }
    }
    None
}

/// Version 1: the body is the JSON array `get_users` answered.
pub(super) fn decode_v1(bytes: &[u8]) -> Result<Vec<(String, Entry)>, String> {
    let Some(head) = bytes.get(..V1_HEADER) else {
        return Err(format!("{} bytes, shorter than its header", bytes.len()));
    };
    if &head[..8] != MAGIC {
        return Err("not a usersvc snapshot (wrong magic)".into());
    }
    let word = |at: usize| u32::from_be_bytes([head[at], head[at + 1], head[at + 2], head[at + 3]]);
    let mut len = [0u8; 8];
    len.copy_from_slice(&head[12..20]);
    let len = u64::from_be_bytes(len);
    let body = &bytes[V1_HEADER..];
    if body.len() as u64 != len {
        return Err(format!(
            "body is {} bytes, the header says {len} (cut short?)",
            body.len()
        ));
    }
    if crc32fast::hash(body) != word(20) {
        return Err("checksum mismatch".into());
    }
    let users: Vec<Value> =
        serde_json::from_slice(body).map_err(|e| format!("body is not a JSON array: {e}"))?;
    users
        .into_iter()
        .map(|u| {
            let r = record(u)?;
            let text = serde_json::to_string(&r.doc).map_err(|e| e.to_string())?;
            let e = Entry::from_doc_text(&text, r.rev, &r.updated_at)
                .ok_or("an entry is not a JSON object")?;
            Ok((r.id, e))
        })
        .collect()
}

/// A served user object back into its record: `rev` and `updated_at` are ours, the rest is the doc.
fn record(user: Value) -> Result<Record, String> {
    let Value::Object(mut doc) = user else {
        return Err("an entry is not a JSON object".into());
    };
    let id = doc.get("id").and_then(Value::as_str).map(str::to_owned);
    let rev = doc.remove("rev").and_then(|r| r.as_i64());
    let updated_at = doc.remove("updated_at");
    match (id, rev, updated_at) {
        (Some(id), Some(rev), Some(Value::String(updated_at))) => Ok(Record {
            id,
            rev,
            updated_at,
            doc,
        }),
        _ => Err("an entry lacks its id, rev or updated_at".into()),
    }
}
