//! The snapshot's local copy, beside the journal: what a cold start serves when the database is
//! unreachable. Written atomically (`atomic_file`), only by the journal's owner.
//!
//! Format: `USVCSNAP` | format version: u32 BE | body length: u64 BE | crc32(body): u32 BE | body,
//! where the body is the JSON array `get_users` answers (each user with its `rev` and
//! `updated_at`). Anything else (short, wrong magic, unknown version, bad checksum, bad JSON) is
//! damage, reported by name; a damaged copy is never served.

use crate::store::Record;
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"USVCSNAP";
const VERSION: u32 = 1;
const HEADER: usize = 8 + 4 + 8 + 4;

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("no snapshot copy at {0} (a server that never reached its database keeps none)")]
    Missing(PathBuf),
    #[error("cannot read the snapshot copy {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the snapshot copy {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the snapshot copy {path} is damaged: {reason}")]
    Damaged { path: PathBuf, reason: String },
}

/// Where the copy for this journal lives: `usersvc.journal` → `usersvc.snapshot`.
pub fn path_for(journal: &Path) -> PathBuf {
    journal.with_extension("snapshot")
}

/// Writes `array` (the JSON array of every user) as the copy at `path`, replacing it atomically.
pub fn write(path: &Path, array: &[u8]) -> Result<(), CopyError> {
    let mut head = Vec::with_capacity(HEADER);
    head.extend_from_slice(MAGIC);
    head.extend_from_slice(&VERSION.to_be_bytes());
    head.extend_from_slice(&(array.len() as u64).to_be_bytes());
    head.extend_from_slice(&crc32fast::hash(array).to_be_bytes());
    crate::atomic_file::write(path, |f| {
        f.write_all(&head)?;
        f.write_all(array)
    })
    .map_err(|source| CopyError::Write {
        path: path.to_owned(),
        source,
    })
}

/// Reads the copy at `path` back into records.
pub fn read(path: &Path) -> Result<Vec<Record>, CopyError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CopyError::Missing(path.to_owned()));
        }
        Err(source) => {
            return Err(CopyError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    decode(&bytes).map_err(|reason| CopyError::Damaged {
        path: path.to_owned(),
        reason,
    })
}

fn decode(bytes: &[u8]) -> Result<Vec<Record>, String> {
    let Some(head) = bytes.get(..HEADER) else {
        return Err(format!("{} bytes, shorter than its header", bytes.len()));
    };
    if &head[..8] != MAGIC {
        return Err("not a usersvc snapshot (wrong magic)".into());
    }
    let word = |at: usize| u32::from_be_bytes([head[at], head[at + 1], head[at + 2], head[at + 3]]);
    let version = word(8);
    if version != VERSION {
        return Err(format!(
            "format version {version}; this usersvc reads version {VERSION}"
        ));
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&head[12..20]);
    let len = u64::from_be_bytes(len);
    let body = &bytes[HEADER..];
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
    users.into_iter().map(record).collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::Snapshot;
    use serde_json::json;

    fn rec(id: &str, rev: i64) -> Record {
        let Value::Object(doc) = json!({"id": id, "name": format!("user {id}"), "tags": [1, 2]})
        else {
            unreachable!("literal is an object")
        };
        Record {
            id: id.into(),
            rev,
            updated_at: "2026-11-23T10:00:00.000Z".into(),
            doc,
        }
    }

    #[test]
    fn round_trip_and_every_kind_of_damage() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = path_for(&dir.path().join("usersvc.journal"));
        assert_eq!(
            path.file_name().and_then(|n| n.to_str()),
            Some("usersvc.snapshot")
        );
        assert!(matches!(read(&path), Err(CopyError::Missing(_))));

        let s = Snapshot::default();
        let records = vec![rec("a", 3), rec("b", 1)];
        s.replace_all(&records);
        write(&path, &s.all()).expect("write");
        assert_eq!(read(&path).expect("read"), records);

        let good = std::fs::read(&path).expect("bytes");
        let damaged = |bytes: &[u8]| {
            std::fs::write(&path, bytes).expect("write");
            match read(&path) {
                Err(CopyError::Damaged { reason, .. }) => reason,
                other => panic!("damage not reported: {other:?}"),
            }
        };
        assert!(damaged(&good[..good.len() - 1]).contains("cut short"));
        assert!(damaged(&good[..10]).contains("header"));
        let mut flipped = good.clone();
        flipped[HEADER + 5] ^= 0x20;
        assert!(damaged(&flipped).contains("checksum"));
        let mut future = good.clone();
        future[11] = 9;
        assert!(damaged(&future).contains("version 9"));
        let mut magic = good.clone();
        magic[0] = b'X';
        assert!(damaged(&magic).contains("magic"));
        // The message names the file.
        std::fs::write(&path, &good[..3]).expect("write");
        let shown = read(&path).expect_err("damaged").to_string();
        assert!(shown.contains("usersvc.snapshot"), "{shown}");
    }
}
