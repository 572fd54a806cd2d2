//! The journal's framing: `len: u32 BE | crc32(payload): u32 BE | payload`, read back past
//! damage (the next offset whose frame verifies and whose payload starts a record), and the
//! write ids a damaged piece still names.

use super::Entry;

/// Largest accepted frame: anything bigger is corruption, not a write. A request body is at most
/// `api::MAX_BODY_LIMIT` (64 MiB) and its encoding a few times that.
const MAX_FRAME: u32 = 1 << 30;

pub(in crate::store) fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

pub(super) fn encode(entry: &Entry) -> Vec<u8> {
    frame(&serde_json::to_vec(entry).unwrap_or_default())
}

/// How a record's payload starts: `Entry`'s first field.
const RECORD_START: &[u8] = br#"{"write_id":""#;

/// Every write id named in `bytes` (a record, or a damaged piece holding several), read from
/// the text: a record too broken to decode is still logged by them.
pub(in crate::store) fn write_ids_in(bytes: &[u8]) -> Vec<String> {
    let mut ids = Vec::new();
    let mut rest = bytes;
    while let Some(at) = rest
        .windows(RECORD_START.len())
        .position(|w| w == RECORD_START)
    {
        rest = &rest[at + RECORD_START.len()..];
        if let Some(end) = rest.iter().take(64).position(|&b| b == b'"')
            && let Ok(id) = std::str::from_utf8(&rest[..end])
        {
            ids.push(id.to_owned());
        }
    }
    ids
}

/// The payload of the frame at `at`, when its header is plausible, its payload inside `bytes`
/// and its checksum verifies.
fn frame_at(bytes: &[u8], at: usize) -> Option<&[u8]> {
    let head = bytes.get(at..at.checked_add(8)?)?;
    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    let crc = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
    if len > MAX_FRAME {
        return None;
    }
    let payload = bytes.get(at + 8..at + 8 + len as usize)?;
    (crc32fast::hash(payload) == crc).then_some(payload)
}

/// Why no frame verifies at `at`.
fn damage_at(bytes: &[u8], at: usize) -> String {
    let Some(head) = bytes.get(at..at + 8) else {
        return format!("{} stray bytes (an append cut short)", bytes.len() - at);
    };
    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    if len > MAX_FRAME {
        format!("frame length {len} is implausible")
    } else if bytes.len() < at + 8 + len as usize {
        "record is cut short (crash mid-append, or a damaged length)".into()
    } else {
        "checksum mismatch".into()
    }
}

/// The next offset after `at` where a record's frame verifies; the end when there is none.
fn resync(bytes: &[u8], at: usize) -> usize {
    (at + 1..bytes.len())
        .find(|&i| {
            bytes
                .get(i + 8..)
                .is_some_and(|p| p.starts_with(RECORD_START))
                && frame_at(bytes, i).is_some()
        })
        .unwrap_or(bytes.len())
}

/// The frames of a file: each intact payload with its offset, and each damaged piece (its
/// start, end and why) that reading skipped.
pub(super) struct Frames<'a> {
    pub(super) records: Vec<(usize, &'a [u8])>,
    pub(super) damage: Vec<(usize, usize, String)>,
}

/// The payloads of a file of frames (the quarantine's: one piece a frame), in order.
pub(in crate::store) fn payloads(bytes: &[u8]) -> Vec<&[u8]> {
    frames(bytes).records.into_iter().map(|(_, p)| p).collect()
}

pub(super) fn frames(bytes: &[u8]) -> Frames<'_> {
    let mut out = Frames {
        records: Vec::new(),
        damage: Vec::new(),
    };
    let mut at = 0usize;
    while at < bytes.len() {
        if let Some(payload) = frame_at(bytes, at) {
            out.records.push((at, payload));
            at += 8 + payload.len();
        } else {
            let next = resync(bytes, at);
            out.damage.push((at, next, damage_at(bytes, at)));
            at = next;
        }
    }
    out
}

/// What reading meets at an offset: a record's payload, or damaged bytes up to an end, and why.
pub(super) enum Piece<'a> {
    Record(&'a [u8]),
    Damaged(usize, String),
}
