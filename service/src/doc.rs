//! One user document in the forms it takes on its way through the service: validated text
//! ([`DocText`]), a row about to be written ([`WriteDoc`]), a row read back ([`Record`]) and the
//! encoded object reads answer ([`Entry`]). A leaf: it imports nothing of the crate, so the store,
//! the journal and the snapshot share these types without importing one another.

use bytes::Bytes;
use serde_json::{Map, Value};

/// The `updated_at` stamp of a write made now: RFC 3339, UTC, milliseconds.
pub(crate) fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A validated user document as its compact JSON text: what a bulk write (and the journal, the
/// store) keeps of each user. Text costs about its size; a parsed map many times that, which
/// matters for a large pull or `put_users`.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(transparent)]
pub struct DocText(Box<serde_json::value::RawValue>);

/// Read back through a parsed value: a raw value cannot be taken from serde's buffered content,
/// which is what a journal entry (an internally tagged enum) hands its fields.
impl<'de> serde::Deserialize<'de> for DocText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self::new(&Map::deserialize(d)?))
    }
}

impl DocText {
    pub fn new(doc: &Map<String, Value>) -> Self {
        // A map of JSON values always encodes; the fallback is never taken.
        Self(
            serde_json::value::to_raw_value(doc)
                .unwrap_or_else(|_| serde_json::value::RawValue::NULL.to_owned()),
        )
    }

    /// Its compact JSON text (the same text `serde_json::to_string` gives the map).
    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    /// The text itself, not copied.
    pub fn into_string(self) -> String {
        Box::<str>::from(self.0).into_string()
    }

    /// The document parsed back (one at a time, where a map is needed).
    pub fn to_map(&self) -> Map<String, Value> {
        serde_json::from_str(self.0.get()).unwrap_or_default()
    }
}

impl PartialEq for DocText {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

/// A document about to be written: its id, its JSON text and the time stamp to record.
#[derive(Debug, Clone)]
pub struct WriteDoc {
    pub id: String,
    pub json: String,
    pub updated_at: String,
}

impl WriteDoc {
    pub fn new(
        id: &str,
        doc: &serde_json::Map<String, serde_json::Value>,
        updated_at: &str,
    ) -> Self {
        Self::from_text(
            id,
            &serde_json::to_string(doc).unwrap_or_default(),
            updated_at,
        )
    }

    /// A document already encoded ([`DocText`]).
    /// From owned parts: nothing copied.
    pub fn owned(id: String, json: String, updated_at: String) -> Self {
        Self {
            id,
            json,
            updated_at,
        }
    }

    pub fn from_text(id: &str, json: &str, updated_at: &str) -> Self {
        Self {
            id: id.to_owned(),
            json: json.to_owned(),
            updated_at: updated_at.to_owned(),
        }
    }
}

/// One stored user document.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub id: String,
    pub rev: i64,
    pub updated_at: String,
    /// The user object as the client sent it (without `rev`/`updated_at`, which are ours).
    pub doc: serde_json::Map<String, serde_json::Value>,
}

/// One user as the snapshot keeps it: the object reads answer, already encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub rev: i64,
    /// The document with `rev` and `updated_at` appended.
    pub json: Bytes,
    /// Hash of the client's document (no rev/updated_at): tells an unchanged re-upload apart.
    pub doc_hash: u64,
}

impl Entry {
    /// From a document's compact JSON text as the store keeps it (`serde_json::to_string` of
    /// the validated object, so without `rev` and `updated_at`): no parsing, `rev` and
    /// `updated_at` are appended to the text. `None` when the text is not an object's.
    pub fn from_doc_text(doc: &str, rev: i64, updated_at: &str) -> Option<Entry> {
        use std::io::Write;
        let inner = doc.trim().strip_prefix('{')?.strip_suffix('}')?;
        // Written in place, no text of its own for `rev` or the quoted time: a load builds a
        // million of these.
        let mut json = Vec::with_capacity(doc.len() + updated_at.len() + 42);
        json.push(b'{');
        json.extend_from_slice(inner.as_bytes());
        if !inner.trim().is_empty() {
            json.push(b',');
        }
        write!(json, "\"rev\":{rev},\"updated_at\":").ok()?;
        serde_json::to_writer(&mut json, updated_at).ok()?;
        json.push(b'}');
        Some(Entry {
            rev,
            json: Bytes::from(json),
            doc_hash: text_hash(doc),
        })
    }

    pub fn from_record(rec: &Record) -> Entry {
        let text = serde_json::to_string(&rec.doc).unwrap_or_else(|_| "{}".into());
        // The text of a serialized map is an object's.
        Entry::from_doc_text(&text, rec.rev, &rec.updated_at).unwrap_or(Entry {
            rev: rec.rev,
            json: Bytes::from_static(b"{}"),
            doc_hash: 0,
        })
    }
}

/// The hash `Entry::doc_hash` holds for a document's compact text.
pub(crate) fn text_hash(text: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}
