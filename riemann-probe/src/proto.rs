//! Riemann's protocol buffers (proto2, `shared/reference/riemann-proto.proto`), written out with
//! prost's derives: no build script, no protoc. Field numbers and types match the .proto exactly.

/// Deprecated by Riemann, kept so that `Msg` decodes whatever a server sends.
#[derive(Clone, PartialEq, prost::Message)]
pub struct State {
    #[prost(int64, optional, tag = "1")]
    pub time: Option<i64>,
    #[prost(string, optional, tag = "2")]
    pub state: Option<String>,
    #[prost(string, optional, tag = "3")]
    pub service: Option<String>,
    #[prost(string, optional, tag = "4")]
    pub host: Option<String>,
    #[prost(string, optional, tag = "5")]
    pub description: Option<String>,
    #[prost(bool, optional, tag = "6")]
    pub once: Option<bool>,
    #[prost(string, repeated, tag = "7")]
    pub tags: Vec<String>,
    #[prost(float, optional, tag = "8")]
    pub ttl: Option<f32>,
}

/// One Riemann event: something measured about a service on a host at a time. Build one with
/// [`event`](crate::event).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    /// When it happened, Unix seconds; unset, the server stamps its arrival.
    #[prost(int64, optional, tag = "1")]
    pub time: Option<i64>,
    /// Free-form state, by convention `ok`, `warning` or `critical`.
    #[prost(string, optional, tag = "2")]
    pub state: Option<String>,
    /// What it is about (`api latency`); with `host`, the key of the server's index.
    #[prost(string, optional, tag = "3")]
    pub service: Option<String>,
    /// The host it is about.
    #[prost(string, optional, tag = "4")]
    pub host: Option<String>,
    /// Free-form text.
    #[prost(string, optional, tag = "5")]
    pub description: Option<String>,
    /// Labels, for the server's streams to match on.
    #[prost(string, repeated, tag = "7")]
    pub tags: Vec<String>,
    /// Seconds it stays valid: the index expires it at `time + ttl`.
    #[prost(float, optional, tag = "8")]
    pub ttl: Option<f32>,
    /// Custom key/value fields.
    #[prost(message, repeated, tag = "9")]
    pub attributes: Vec<Attribute>,
    /// When it happened, Unix microseconds; takes precedence over `time`.
    #[prost(int64, optional, tag = "10")]
    pub time_micros: Option<i64>,
    /// The metric as an integer; read first of the three metric fields.
    #[prost(sint64, optional, tag = "13")]
    pub metric_sint64: Option<i64>,
    /// The metric as a double; read when `metric_sint64` is unset.
    #[prost(double, optional, tag = "14")]
    pub metric_d: Option<f64>,
    /// The metric as a single-precision float; read when neither other metric field is set.
    #[prost(float, optional, tag = "15")]
    pub metric_f: Option<f32>,
}

/// A query against the server's index.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Query {
    /// The expression, in Riemann's query language (`service = "api" and state = "critical"`).
    #[prost(string, optional, tag = "1")]
    pub string: Option<String>,
}

/// What travels in either direction: events or a query to the server, its answer back.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Msg {
    /// In a response: whether the request succeeded.
    #[prost(bool, optional, tag = "2")]
    pub ok: Option<bool>,
    /// In a response: why the request failed.
    #[prost(string, optional, tag = "3")]
    pub error: Option<String>,
    /// Deprecated states of early protocol versions; decoded, never sent.
    #[prost(message, repeated, tag = "4")]
    pub states: Vec<State>,
    /// In a request: a query to run against the index.
    #[prost(message, optional, tag = "5")]
    pub query: Option<Query>,
    /// In a request: events to process; in a query's response: the matching events.
    #[prost(message, repeated, tag = "6")]
    pub events: Vec<Event>,
}

/// A custom field of an [`Event`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct Attribute {
    /// The field's name.
    #[prost(string, required, tag = "1")]
    pub key: String,
    /// The field's value.
    #[prost(string, optional, tag = "2")]
    pub value: Option<String>,
}

impl Event {
    /// The metric as Riemann reads it: sint64, else double, else float.
    pub fn metric(&self) -> Option<f64> {
        self.metric_sint64
            .map(|m| m as f64)
            .or(self.metric_d)
            .or(self.metric_f.map(f64::from))
    }

    /// Time in microseconds as Riemann reads it: `time_micros`, else `time` (seconds).
    pub fn effective_time_micros(&self) -> Option<i64> {
        self.time_micros.or(self.time.map(|t| t * 1_000_000))
    }

    /// The value of the first attribute named `key`.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|a| a.key == key)
            .and_then(|a| a.value.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn ok_ack_is_two_bytes() {
        // Riemann's server answers {ok: true}, which encodes to 10 01.
        let ack = Msg {
            ok: Some(true),
            ..Default::default()
        };
        assert_eq!(ack.encode_to_vec(), [0x10, 0x01]);
    }

    #[test]
    fn wire_tags_match_the_proto() {
        let e = Event {
            service: Some("s".into()),
            metric_sint64: Some(-1),
            ttl: Some(1.0),
            ..Default::default()
        };
        // service: field 3, wire type 2 -> 0x1a; ttl: field 8, fixed32 -> 0x45;
        // metric_sint64: field 13, varint -> 0x68, zigzag(-1) = 1.
        assert_eq!(
            e.encode_to_vec(),
            [0x1a, 0x01, b's', 0x45, 0, 0, 0x80, 0x3f, 0x68, 0x01]
        );
        let back = Event::decode(&e.encode_to_vec()[..]).expect("decodes");
        assert_eq!(back, e);
        assert_eq!(back.metric(), Some(-1.0));
    }
}
