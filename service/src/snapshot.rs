//! The in-memory copy of every user, kept in step with the store so that reads cost no query.
//!
//! Each user is kept pre-encoded (its document plus `rev` and `updated_at`), and the encoded array
//! of all users is cached until the next write: `get_users` without paging is a memcpy.

use crate::store::Record;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Clone)]
struct Entry {
    rev: i64,
    json: Bytes,
    /// Hash of the client's document (no rev/updated_at): tells an unchanged re-upload apart.
    doc_hash: u64,
}

#[derive(Default)]
struct Inner {
    users: BTreeMap<String, Entry>,
    /// The encoded array of all users; `None` after a write until the next full read.
    all: Option<Bytes>,
    /// The length of that array, kept as users change: an unpaged read too large to send is
    /// refused without building it.
    encoded: usize,
}

/// Bytes `e` takes in an encoded array (its JSON and a comma).
fn span(e: &Entry) -> usize {
    e.json.len() + 1
}

#[derive(Default)]
pub struct Snapshot {
    inner: RwLock<Inner>,
    /// Bumped by every change: tells whether the local copy (`snapshot_file.rs`) is behind.
    generation: AtomicU64,
}

/// The user object a client sees: its document with our `rev` and `updated_at` added.
pub fn render(rec: &Record) -> Bytes {
    let mut doc = rec.doc.clone();
    doc.insert("rev".into(), rec.rev.into());
    doc.insert("updated_at".into(), rec.updated_at.clone().into());
    Bytes::from(serde_json::to_vec(&doc).unwrap_or_default())
}

/// A stable hash of a document: serde_json maps are ordered, so equal documents encode equally.
pub fn doc_hash(doc: &serde_json::Map<String, serde_json::Value>) -> u64 {
    text_hash(&serde_json::to_string(doc).unwrap_or_default())
}

fn text_hash(text: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

fn entry(rec: &Record) -> Entry {
    Entry {
        rev: rec.rev,
        json: render(rec),
        doc_hash: doc_hash(&rec.doc),
    }
}

impl Snapshot {
    // A poisoned lock only means a panic elsewhere mid-update of plain data; the map is still usable.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn replace_all(&self, records: &[Record]) {
        let users: BTreeMap<String, Entry> =
            records.iter().map(|r| (r.id.clone(), entry(r))).collect();
        let encoded = users.values().map(span).sum();
        *self.write() = Inner {
            users,
            all: None,
            encoded,
        };
        self.generation.fetch_add(1, Ordering::Release);
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Applies a committed write. Callers serialize writes, so revisions only move forward.
    pub fn upsert(&self, rec: &Record) {
        let e = entry(rec);
        let mut inner = self.write();
        inner.encoded += span(&e);
        if let Some(old) = inner.users.insert(rec.id.clone(), e) {
            inner.encoded -= span(&old);
        }
        inner.all = None;
        self.generation.fetch_add(1, Ordering::Release);
    }

    pub fn remove(&self, id: &str) {
        let mut inner = self.write();
        if let Some(old) = inner.users.remove(id) {
            inner.encoded -= span(&old);
            inner.all = None;
            self.generation.fetch_add(1, Ordering::Release);
        }
    }

    pub fn get(&self, id: &str) -> Option<Bytes> {
        self.read().users.get(id).map(|e| e.json.clone())
    }

    pub fn rev(&self, id: &str) -> Option<i64> {
        self.read().users.get(id).map(|e| e.rev)
    }

    /// Whether the stored document for `id` is exactly the one whose compact JSON is `text`.
    pub fn holds_text(&self, id: &str, text: &str) -> bool {
        let hash = text_hash(text);
        self.read()
            .users
            .get(id)
            .is_some_and(|e| e.doc_hash == hash)
    }

    pub fn len(&self) -> usize {
        self.read().users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The length of the JSON array of every user (`all`), without building it.
    pub fn encoded_len(&self) -> usize {
        // `[` and `]`, each user, and a comma between two.
        self.read().encoded.max(1) + 1
    }

    /// The JSON array of every user, ordered by id. Encoded outside the lock (only refcounts
    /// are taken under it), so a large snapshot never stalls writes while it is built.
    pub fn all(&self) -> Bytes {
        let (parts, generation) = {
            let inner = self.read();
            if let Some(all) = &inner.all {
                return all.clone();
            }
            let parts: Vec<Bytes> = inner.users.values().map(|e| e.json.clone()).collect();
            (parts, self.generation())
        };
        let all = encode_parts(&parts);
        let mut inner = self.write();
        // Cache it only if no write came in meanwhile.
        if inner.all.is_none() && self.generation() == generation {
            inner.all = Some(all.clone());
        }
        all
    }

    /// Up to `limit` users with ids after `after`, ordered by id (keyset paging); `Err` with the
    /// size reached when the page would pass `budget` bytes (nothing is built then).
    pub fn page(&self, after: Option<&str>, limit: usize, budget: usize) -> Result<Bytes, usize> {
        let parts = {
            let inner = self.read();
            let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
            let mut size = 2;
            let mut parts = Vec::new();
            for (_, e) in inner
                .users
                .range::<str, _>((lower, Bound::Unbounded))
                .take(limit)
            {
                size += span(e);
                if size > budget {
                    return Err(size);
                }
                parts.push(e.json.clone());
            }
            parts
        };
        Ok(encode_parts(&parts))
    }
}

fn encode_parts(parts: &[Bytes]) -> Bytes {
    let len = parts.iter().map(|p| p.len() + 1).sum::<usize>() + 2;
    let mut out = Vec::with_capacity(len);
    out.push(b'[');
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(p);
    }
    out.push(b']');
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn rec(id: &str, rev: i64) -> Record {
        let Value::Object(doc) = json!({"id": id, "name": format!("user {id}")}) else {
            unreachable!("literal is an object")
        };
        Record {
            id: id.into(),
            rev,
            updated_at: "2026-01-01T00:00:00Z".into(),
            doc,
        }
    }

    fn ids(b: Bytes) -> Vec<String> {
        let v: Vec<Value> = serde_json::from_slice(&b).expect("valid JSON array");
        v.iter()
            .map(|u| u["id"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    #[test]
    fn paging_and_cache_invalidation() {
        let s = Snapshot::default();
        s.replace_all(&[rec("a", 1), rec("c", 1), rec("b", 2)]);
        assert_eq!(ids(s.all()), ["a", "b", "c"]);
        assert_eq!(Snapshot::default().encoded_len(), 2);
        let page = |after, limit| s.page(after, limit, usize::MAX).expect("within budget");
        assert_eq!(ids(page(None, 2)), ["a", "b"]);
        assert_eq!(ids(page(Some("b"), 2)), ["c"]);
        assert_eq!(ids(page(Some("c"), 2)), Vec::<String>::new());
        assert_eq!(s.encoded_len(), s.all().len());
        s.upsert(&rec("d", 1));
        s.upsert(&rec("d", 2));
        assert_eq!(ids(s.all()), ["a", "b", "c", "d"]);
        s.remove("a");
        assert_eq!(ids(s.all()), ["b", "c", "d"]);
        assert_eq!(s.encoded_len(), s.all().len());
        // A page that would pass the budget is refused, not built.
        let two = page(None, 2).len();
        assert!(s.page(None, 2, two - 1).is_err());
        let b: Value = serde_json::from_slice(&s.get("b").expect("b exists")).expect("json");
        assert_eq!(b["rev"], 2);
        assert_eq!(b["name"], "user b");
    }
}
