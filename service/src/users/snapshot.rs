//! The in-memory copy of every user, kept in step with the store so that reads cost no query.
//!
//! Each user is kept pre-encoded (its document plus `rev` and `updated_at`), and the encoded array
//! of all users is cached until the next write: `get_users` without paging is a memcpy.

use crate::doc::{Entry, Record, text_hash};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// What the local copy has not yet recorded (`store/local_copy.rs`).
#[derive(Debug)]
pub enum Unsaved {
    /// Everything: the snapshot was replaced whole.
    All,
    /// These users changed (an id may repeat).
    Ids(Vec<String>),
}

struct Inner {
    users: BTreeMap<String, Entry>,
    /// The encoded array of all users; `None` after a write until the next full read.
    all: Option<Bytes>,
    /// The length of that array, kept as users change: an unpaged read too large to send is
    /// refused without building it.
    encoded: usize,
    unsaved: Unsaved,
}

impl Default for Inner {
    fn default() -> Self {
        Self {
            users: BTreeMap::new(),
            all: None,
            encoded: 0,
            unsaved: Unsaved::All,
        }
    }
}

/// Bytes `e` takes in an encoded array (its JSON and a comma).
fn span(e: &Entry) -> usize {
    e.json.len() + 1
}

#[derive(Default)]
pub struct Snapshot {
    inner: RwLock<Inner>,
    /// Bumped by every change: tells whether the local copy (`store/local_copy.rs`) is behind.
    generation: AtomicU64,
}

impl Snapshot {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        toolkit_core::read(&self.inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        toolkit_core::write(&self.inner)
    }

    /// For tests: every user from records.
    #[cfg(test)]
    pub fn replace_all(&self, records: &[Record]) {
        self.replace_entries(
            records
                .iter()
                .map(|r| (r.id.clone(), Entry::from_record(r)))
                .collect(),
        );
    }

    /// Replaces every user (from the store, or the local copy); ids sorted or not.
    pub fn replace_entries(&self, entries: Vec<(String, Entry)>) {
        // Collected whole: sorted once, then bulk-built with full nodes.
        self.replace_map(entries.into_iter().collect());
    }

    /// Replaces every user.
    pub fn replace_map(&self, users: BTreeMap<String, Entry>) {
        let encoded = users.values().map(span).sum();
        let old = std::mem::replace(
            &mut *self.write(),
            Inner {
                users,
                all: None,
                encoded,
                unsaved: Unsaved::All,
            },
        );
        self.generation.fetch_add(1, Ordering::Release);
        // Freed outside the lock: a million entries take a while, and reads wait for the lock.
        drop(old);
    }

    /// What the local copy lacks, handed over: the next changes are collected afresh.
    pub fn take_unsaved(&self) -> Unsaved {
        std::mem::replace(&mut self.write().unsaved, Unsaved::Ids(Vec::new()))
    }

    /// Gives back what could not be saved, with what changed meanwhile.
    pub fn restore_unsaved(&self, back: Unsaved) {
        let mut inner = self.write();
        match (&mut inner.unsaved, back) {
            (Unsaved::All, _) => {}
            (now, Unsaved::All) => *now = Unsaved::All,
            (Unsaved::Ids(now), Unsaved::Ids(mut back)) => now.append(&mut back),
        }
    }

    fn changed(inner: &mut Inner, id: &str) {
        if let Unsaved::Ids(ids) = &mut inner.unsaved {
            ids.push(id.to_owned());
        }
    }

    /// Each of `ids` as it is now (`None`: deleted), for the copy's log.
    pub fn lookup(&self, ids: &[String]) -> Vec<(String, Option<Entry>)> {
        let inner = self.read();
        ids.iter()
            .map(|id| (id.clone(), inner.users.get(id).cloned()))
            .collect()
    }

    /// Up to `n` users after `after`, in id order (the copy is written in chunks, so no lock is
    /// held for long).
    pub fn chunk(&self, after: Option<&str>, n: usize) -> Vec<(String, Entry)> {
        let inner = self.read();
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        inner
            .users
            .range::<str, _>((lower, Bound::Unbounded))
            .take(n)
            .map(|(id, e)| (id.clone(), e.clone()))
            .collect()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Applies a committed write. Callers serialize writes, so revisions only move forward.
    pub fn upsert(&self, rec: &Record) {
        self.upsert_entry(&rec.id, Entry::from_record(rec));
    }

    pub fn upsert_entry(&self, id: &str, e: Entry) {
        let mut inner = self.write();
        inner.encoded += span(&e);
        if let Some(old) = inner.users.insert(id.to_owned(), e) {
            inner.encoded -= span(&old);
        }
        inner.all = None;
        Self::changed(&mut inner, id);
        self.generation.fetch_add(1, Ordering::Release);
    }

    pub fn remove(&self, id: &str) {
        let mut inner = self.write();
        if let Some(old) = inner.users.remove(id) {
            inner.encoded -= span(&old);
            inner.all = None;
            Self::changed(&mut inner, id);
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

    /// The hash a parsed document's compact text has (as pull and the old load computed it).
    fn doc_hash(doc: &serde_json::Map<String, Value>) -> u64 {
        text_hash(&serde_json::to_string(doc).unwrap_or_default())
    }

    #[test]
    fn an_entry_from_the_stored_text_is_the_one_from_the_parsed_document() {
        let r = rec("a\"b", 7);
        let text = serde_json::to_string(&r.doc).expect("text");
        let e = Entry::from_doc_text(&text, 7, &r.updated_at).expect("an object");
        assert_eq!(e, Entry::from_record(&r));
        let v: Value = serde_json::from_slice(&e.json).expect("valid JSON");
        assert_eq!(
            (v["id"].clone(), v["rev"].clone(), v["updated_at"].clone()),
            (json!("a\"b"), json!(7), json!("2026-01-01T00:00:00Z"))
        );
        assert_eq!(e.doc_hash, doc_hash(&r.doc));
        let empty = Entry::from_doc_text("{}", 1, "t").expect("an object");
        assert_eq!(&empty.json[..], br#"{"rev":1,"updated_at":"t"}"#);
        assert!(Entry::from_doc_text("[1]", 1, "t").is_none());
    }

    #[test]
    fn changes_are_collected_for_the_copy_and_given_back_on_failure() {
        let s = Snapshot::default();
        s.replace_all(&[rec("a", 1)]);
        assert!(matches!(s.take_unsaved(), Unsaved::All));
        s.upsert(&rec("b", 1));
        s.remove("a");
        s.remove("zz"); // absent: nothing changed
        let Unsaved::Ids(ids) = s.take_unsaved() else {
            panic!("ids expected")
        };
        assert_eq!(ids, ["b", "a"]);
        s.upsert(&rec("c", 1));
        s.restore_unsaved(Unsaved::Ids(ids));
        let Unsaved::Ids(ids) = s.take_unsaved() else {
            panic!("ids expected")
        };
        assert_eq!(ids, ["c", "b", "a"]);
        let now = s.lookup(&["a".into(), "b".into()]);
        assert_eq!(now[0], ("a".to_owned(), None));
        assert_eq!(now[1].1.as_ref().map(|e| e.rev), Some(1));
        assert_eq!(s.chunk(Some("b"), 10).len(), 1);
    }
}
