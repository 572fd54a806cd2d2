//! What a call carries in and out as JSON: its params, a method's result already encoded, and
//! one response object written byte for byte (the id echoed as it was sent).

use super::RpcError;
use bytes::Bytes;

/// A method's successful result, already encoded as JSON text (so cached results cost no encoding).
#[derive(Debug, Clone)]
pub struct RawJson(Bytes);

impl RawJson {
    /// Wraps bytes the caller guarantees to be one valid JSON value.
    pub fn from_trusted(bytes: Bytes) -> Self {
        Self(bytes)
    }

    pub fn encode<T: serde::Serialize + ?Sized>(value: &T) -> Self {
        // Serializing our own Value/derive types into a Vec cannot fail (no I/O, string keys).
        Self(Bytes::from(
            serde_json::to_vec(value).unwrap_or_else(|_| b"null".to_vec()),
        ))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// The parameters of a call: absent, by position or by name.
#[derive(Debug, Clone, PartialEq)]
pub enum Params {
    None,
    Array(Vec<serde_json::Value>),
    Object(serde_json::Map<String, serde_json::Value>),
}

/// Appends one response object.
pub fn write_response(out: &mut Vec<u8>, id: &str, outcome: &Result<RawJson, RpcError>) {
    out.extend_from_slice(br#"{"jsonrpc":"2.0","#);
    match outcome {
        Ok(result) => {
            out.extend_from_slice(br#""result":"#);
            out.extend_from_slice(result.as_bytes());
        }
        Err(err) => {
            let mut obj = serde_json::Map::new();
            obj.insert("code".into(), err.code.into());
            obj.insert("message".into(), err.message.clone().into());
            if let Some(data) = &err.data {
                obj.insert("data".into(), data.clone());
            }
            out.extend_from_slice(br#""error":"#);
            out.extend_from_slice(RawJson::encode(&obj).as_bytes());
        }
    }
    out.extend_from_slice(br#","id":"#);
    out.extend_from_slice(id.as_bytes());
    out.push(b'}');
}
