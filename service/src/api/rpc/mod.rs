//! The JSON-RPC 2.0 envelope: parses single and batch requests, applies every rule of the spec
//! (ids, notifications, batches) and encodes responses. Knows nothing about users: methods are
//! reached through the [`Handler`] trait.
//!
//! Ids are kept as raw JSON text and echoed byte for byte, so a huge number or a long string comes
//! back exactly as it was sent.

use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use std::future::Future;
use std::time::Instant;

mod error;
mod message;

use error::response_full;
pub use error::{RESPONSE_TOO_LARGE, RpcError};
pub use message::{Params, RawJson, write_response};

/// What the dispatcher calls for each valid request. `budget` is how many bytes the answer may
/// still grow by (`Limits::max_response` less what the batch's earlier answers took): a method
/// whose result could be large (a read) checks it and answers an error instead of building it.
pub trait Handler: Sync {
    fn call(
        &self,
        method: &str,
        params: Params,
        budget: usize,
    ) -> impl Future<Output = Result<RawJson, RpcError>> + Send;
}

/// What one body may cost: calls per batch, and bytes of the whole answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_batch: usize,
    pub max_response: usize,
}

impl Limits {
    /// go-ethereum's batch limit, and 16 MiB of answer (`usersvc`'s defaults too).
    pub const DEFAULT: Limits = Limits {
        max_batch: 1000,
        max_response: 16 << 20,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The HTTP-independent result of handling one body.
#[derive(Debug)]
pub enum Reply {
    /// A response body (a single response object or a batch array).
    Body(Vec<u8>),
    /// Notifications only: nothing to send back.
    Nothing,
}

/// One call as the dispatcher answered it: what the metrics and the access log are made of.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// `None` when the request was refused before a method could be read from it.
    pub method: Option<&'a str>,
    /// The id as sent (JSON text); `None` for a notification or an id that could not be read.
    pub id: Option<&'a str>,
    /// The error code answered; `None` for a result.
    pub code: Option<i64>,
    pub elapsed: std::time::Duration,
    /// Its position in the batch; `None` for a single request.
    pub batch_index: Option<usize>,
}

/// Told of every call and batch, as they are answered (notifications and refusals included).
pub trait Observe: Sync {
    fn call(&self, call: &Call<'_>);
    /// A batch of `size` calls is about to be run.
    fn batch(&self, _size: usize) {}
}

/// Observes nothing.
impl Observe for () {
    fn call(&self, _: &Call<'_>) {}
}

impl<T: Observe> Observe for &T {
    fn call(&self, call: &Call<'_>) {
        (**self).call(call);
    }

    fn batch(&self, size: usize) {
        (**self).batch(size);
    }
}

/// Both, in turn (metrics and the access log).
impl<A: Observe, B: Observe> Observe for (A, B) {
    fn call(&self, call: &Call<'_>) {
        self.0.call(call);
        self.1.call(call);
    }

    fn batch(&self, size: usize) {
        self.0.batch(size);
        self.1.batch(size);
    }
}

/// A call's answer: the id to answer under (`None`: a notification, answered with nothing) and
/// what the dispatcher saw, for the [`Observe`]r.
struct Answer<'a> {
    reply_id: Option<&'a str>,
    logged_id: Option<&'a str>,
    method: Option<String>,
    outcome: Result<RawJson, RpcError>,
}

impl<'a> Answer<'a> {
    /// Refused before its method was read, answered under the `null` id.
    fn refused(error: RpcError) -> Self {
        Self {
            reply_id: Some(NULL_ID),
            logged_id: None,
            method: None,
            outcome: Err(error),
        }
    }
}

/// Present-but-null must differ from absent (`"id": null` is a request, no `id` a notification).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(default, borrow, deserialize_with = "present")]
    jsonrpc: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    method: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    params: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    id: Option<&'a RawValue>,
}

const NULL_ID: &str = "null";

/// A time limit on one body's calls: a call still running at `at` is answered with `error` under
/// its own id (so a client can match it), and so is every later call of a batch.
#[derive(Debug, Clone)]
pub struct Deadline {
    pub at: tokio::time::Instant,
    /// Shared: built once, cloned only when a call is late.
    pub error: std::sync::Arc<RpcError>,
}

/// Handles one HTTP body: a single request or a batch, within the default [`Limits`].
pub async fn handle_body<H: Handler>(handler: &H, body: &[u8]) -> Reply {
    handle_body_observed(handler, body, None, &Limits::default(), &())
        .await
        .0
}

/// As [`handle_body`], with an optional deadline and the given limits; `observer` is told of
/// every call. Also returns how many error objects the reply holds.
pub async fn handle_body_observed<H: Handler, O: Observe>(
    handler: &H,
    body: &[u8],
    deadline: Option<&Deadline>,
    limits: &Limits,
    observer: &O,
) -> (Reply, usize) {
    let mut answers = Answers {
        observer,
        out: Vec::with_capacity(128),
        errors: 0,
    };
    let started = Instant::now();
    match split_body(body, limits) {
        Ok(Body::Single(item)) => {
            let a = handle_one(handler, item, true, deadline, limits.max_response).await;
            let replied = answers.add(a, started, None);
            answers.reply(replied)
        }
        // Boxed: unboxed, a batch's state (its call, its answers, its place) is in the future of
        // every single call as well, ~200 bytes more to copy per request (the test below).
        Ok(Body::Batch(items)) => {
            Box::pin(handle_batch(handler, items, deadline, limits, answers)).await
        }
        Err(refused) => {
            answers.add(Answer::refused(refused), started, None);
            answers.reply(true)
        }
    }
}

/// A batch's calls in order, each within what is left of `max_response`; one array of answers.
async fn handle_batch<H: Handler, O: Observe>(
    handler: &H,
    items: Vec<&RawValue>,
    deadline: Option<&Deadline>,
    limits: &Limits,
    mut answers: Answers<'_, O>,
) -> (Reply, usize) {
    answers.observer.batch(items.len());
    answers.out.reserve(64 * items.len());
    answers.out.push(b'[');
    let mut any = false;
    for (index, item) in items.into_iter().enumerate() {
        let started = Instant::now();
        let budget = limits.max_response.saturating_sub(answers.out.len());
        let a = if budget == 0 {
            // Full: the rest is not run; each call still gets its answer (its id, if any).
            not_run(item, response_full(limits.max_response))
        } else {
            handle_one(handler, item.get(), false, deadline, budget).await
        };
        if a.reply_id.is_some() {
            if any {
                answers.out.push(b',');
            }
            any = true;
        }
        answers.add(a, started, Some(index));
    }
    answers.out.push(b']');
    answers.reply(any)
}

/// The body being answered, how many of its answers are errors, and who watches each call.
struct Answers<'o, O> {
    observer: &'o O,
    out: Vec<u8>,
    errors: usize,
}

impl<O: Observe> Answers<'_, O> {
    /// Reports one call and writes its response; false for a notification (no response).
    fn add(&mut self, a: Answer<'_>, started: Instant, index: Option<usize>) -> bool {
        self.observer.call(&Call {
            method: a.method.as_deref(),
            id: a.logged_id,
            code: a.outcome.as_ref().err().map(|e| e.code),
            elapsed: started.elapsed(),
            batch_index: index,
        });
        self.errors += usize::from(a.outcome.is_err() && a.reply_id.is_some());
        match a.reply_id {
            Some(id) => {
                write_response(&mut self.out, id, &a.outcome);
                true
            }
            None => false,
        }
    }

    /// The body, or nothing when no call gets a response; and the errors in it.
    fn reply(self, any: bool) -> (Reply, usize) {
        let reply = if any {
            Reply::Body(self.out)
        } else {
            Reply::Nothing
        };
        (reply, self.errors)
    }
}

enum Body<'a> {
    /// Not parsed yet: [`read_call`] parses it once, and tells a body that is not JSON.
    Single(&'a str),
    Batch(Vec<&'a RawValue>),
}

/// The body's request or batch of requests, or the error that refuses it whole.
fn split_body<'a>(body: &'a [u8], limits: &Limits) -> Result<Body<'a>, RpcError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| RpcError::parse_error(format!("body is not UTF-8: {e}")))?;
    let trimmed = text.trim_start_matches([' ', '\t', '\n', '\r']);
    if !trimmed.starts_with('[') {
        return Ok(Body::Single(trimmed));
    }
    let items: Vec<&RawValue> = serde_json::from_str(trimmed).map_err(RpcError::parse_error)?;
    if items.is_empty() {
        return Err(RpcError::invalid_request("empty batch"));
    }
    if items.len() > limits.max_batch {
        // Refused whole, before any call runs: a batch is not a way around the limits.
        return Err(RpcError::invalid_request(&format!(
            "a batch may hold at most {} calls (--max-batch); this one holds {}",
            limits.max_batch,
            items.len()
        )));
    }
    Ok(Body::Batch(items))
}

enum IdKind<'a> {
    Absent,
    Valid(&'a str),
    Invalid,
}

fn classify_id(id: Option<&RawValue>) -> IdKind<'_> {
    match id {
        None => IdKind::Absent,
        Some(raw) => {
            let s = raw.get();
            match s.as_bytes().first() {
                Some(b'"' | b'-' | b'0'..=b'9') => IdKind::Valid(s),
                Some(b'n') => IdKind::Valid(NULL_ID),
                _ => IdKind::Invalid,
            }
        }
    }
}

/// The answer to a call that is not run: `error` under its id (nothing for a notification, or
/// for an item whose id cannot be read: it gets `null`).
fn not_run(item: &RawValue, error: RpcError) -> Answer<'_> {
    let env = serde_json::from_str::<Envelope<'_>>(item.get()).ok();
    let method = env
        .as_ref()
        .and_then(|e| e.method)
        .and_then(|m| serde_json::from_str::<String>(m.get()).ok());
    let id = env.map(|env| classify_id(env.id));
    let (reply_id, logged_id) = match id {
        Some(IdKind::Absent) => (None, None),
        Some(IdKind::Valid(id)) => (Some(id), Some(id)),
        _ => (Some(NULL_ID), None),
    };
    Answer {
        reply_id,
        logged_id,
        method,
        outcome: Err(error),
    }
}

/// Handles one request object (a notification is run, and answered with nothing).
async fn handle_one<'a, H: Handler>(
    handler: &H,
    item: &'a str,
    alone: bool,
    deadline: Option<&Deadline>,
    budget: usize,
) -> Answer<'a> {
    let call = match read_call(item, alone) {
        Ok(call) => call,
        Err(refused) => return refused,
    };
    // Two matches, not one on a tuple: the tuple's form made this state ~70 bytes larger
    // (a_body_costs_little_beyond_its_call).
    let outcome = match call.params {
        Ok(params) => match deadline {
            None => handler.call(&call.method, params, budget).await,
            Some(d) => tokio::time::timeout_at(d.at, handler.call(&call.method, params, budget))
                .await
                .unwrap_or_else(|_| Err(RpcError::clone(&d.error))),
        },
        Err(e) => Err(e),
    };
    Answer {
        // A notification is executed but never answered, even when it fails.
        reply_id: call.id,
        logged_id: call.id,
        method: Some(call.method),
        outcome,
    }
}

/// A request object read: its id (`None`: a notification), its method, and its params or why
/// they are invalid (answered as -32602 under the request's id).
struct ReadCall<'a> {
    id: Option<&'a str>,
    method: String,
    params: Result<Params, RpcError>,
}

/// Reads one request object, or the answer refusing it (-32600). `alone`: the item is the whole
/// body, not yet known to be JSON: one that is not is a parse error (-32700), which is looked
/// for only when the object cannot be read, so a good body is parsed once.
fn read_call(item: &str, alone: bool) -> Result<ReadCall<'_>, Answer<'_>> {
    let refused = |why: RpcError| {
        let not_json = alone
            .then(|| serde_json::from_str::<serde::de::IgnoredAny>(item).err())
            .flatten();
        Answer::refused(not_json.map_or(why, RpcError::parse_error))
    };
    if !item.starts_with('{') {
        return Err(refused(RpcError::invalid_request(
            "a request must be an object",
        )));
    }
    let env: Envelope<'_> = serde_json::from_str(item).map_err(|e| {
        refused(RpcError::invalid_request(&format!(
            "malformed request object: {e}"
        )))
    })?;
    let id = match classify_id(env.id) {
        IdKind::Absent => None,
        IdKind::Valid(id) => Some(id),
        IdKind::Invalid => {
            return Err(Answer::refused(RpcError::invalid_request(
                "id must be a string, a number or null",
            )));
        }
    };
    let invalid = |why: &str| Answer {
        reply_id: Some(id.unwrap_or(NULL_ID)),
        logged_id: id,
        method: None,
        outcome: Err(RpcError::invalid_request(why)),
    };
    match env.jsonrpc.map(|v| serde_json::from_str::<&str>(v.get())) {
        Some(Ok("2.0")) => {}
        _ => return Err(invalid("\"jsonrpc\" must be exactly \"2.0\"")),
    }
    let method: String = match env.method.map(|v| serde_json::from_str::<String>(v.get())) {
        Some(Ok(m)) => m,
        Some(Err(_)) => return Err(invalid("\"method\" must be a string")),
        None => return Err(invalid("\"method\" is missing")),
    };
    let params = match env.params.map(RawValue::get) {
        None | Some("null") => Ok(Params::None),
        Some(raw) if raw.starts_with('[') => serde_json::from_str(raw)
            .map(Params::Array)
            .map_err(RpcError::invalid_params),
        Some(raw) if raw.starts_with('{') => serde_json::from_str(raw)
            .map(Params::Object)
            .map_err(RpcError::invalid_params),
        Some(_) => return Err(invalid("\"params\" must be an array or an object")),
    };
    Ok(ReadCall { id, method, params })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    /// The spec's example methods, so the envelope is tested against section 7 verbatim.
    struct Spec;

    impl Handler for Spec {
        async fn call(&self, method: &str, params: Params, _: usize) -> Result<RawJson, RpcError> {
            let nums = |p: &Params| match p {
                Params::Array(a) => a.iter().filter_map(Value::as_i64).collect::<Vec<_>>(),
                _ => vec![],
            };
            match (method, &params) {
                ("subtract", Params::Object(o)) => Ok(RawJson::encode(
                    &(o["minuend"].as_i64().unwrap_or(0) - o["subtrahend"].as_i64().unwrap_or(0)),
                )),
                ("subtract", p) => {
                    let n = nums(p);
                    Ok(RawJson::encode(&(n[0] - n[1])))
                }
                ("sum", p) => Ok(RawJson::encode(&nums(p).iter().sum::<i64>())),
                ("get_data", _) => Ok(RawJson::encode(&json!(["hello", 5]))),
                ("update" | "notify_hello" | "notify_sum" | "foobar", _) => {
                    Ok(RawJson::encode(&()))
                }
                (m, _) => Err(RpcError::method_not_found(m)),
            }
        }
    }

    fn run(body: &str) -> Option<Value> {
        let reply = futures_block_on(handle_body(&Spec, body.as_bytes()));
        match reply {
            Reply::Body(b) => Some(serde_json::from_slice(&b).expect("server wrote valid JSON")),
            Reply::Nothing => None,
        }
    }

    fn futures_block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    fn strip_data(mut v: Value) -> Value {
        match &mut v {
            Value::Array(items) => items.iter_mut().for_each(|i| *i = strip_data(i.take())),
            Value::Object(o) => {
                if let Some(Value::Object(e)) = o.get_mut("error") {
                    e.remove("data");
                }
            }
            _ => {}
        }
        v
    }

    #[test]
    fn spec_section_7_examples() {
        let cases: &[(&str, Option<Value>)] = &[
            (
                r#"{"jsonrpc": "2.0", "method": "subtract", "params": [42, 23], "id": 1}"#,
                Some(json!({"jsonrpc": "2.0", "result": 19, "id": 1})),
            ),
            (
                r#"{"jsonrpc": "2.0", "method": "subtract", "params": {"subtrahend": 23, "minuend": 42}, "id": 3}"#,
                Some(json!({"jsonrpc": "2.0", "result": 19, "id": 3})),
            ),
            (
                r#"{"jsonrpc": "2.0", "method": "update", "params": [1,2,3,4,5]}"#,
                None,
            ),
            (r#"{"jsonrpc": "2.0", "method": "foobar"}"#, None),
            (
                r#"{"jsonrpc": "2.0", "method": "nope", "id": "1"}"#,
                Some(
                    json!({"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": "1"}),
                ),
            ),
            (
                r#"{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]"#,
                Some(
                    json!({"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": null}),
                ),
            ),
            (
                r#"{"jsonrpc": "2.0", "method": 1, "params": "bar"}"#,
                Some(
                    json!({"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null}),
                ),
            ),
            (
                "[\n{\"jsonrpc\": \"2.0\", \"method\": \"sum\", \"params\": [1,2,4], \"id\": \"1\"},\n{\"jsonrpc\": \"2.0\", \"method\"\n]",
                Some(
                    json!({"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": null}),
                ),
            ),
            (
                "[]",
                Some(
                    json!({"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null}),
                ),
            ),
            (
                "[1]",
                Some(
                    json!([{"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null}]),
                ),
            ),
            (
                r#"[
                {"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},
                {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]},
                {"jsonrpc": "2.0", "method": "subtract", "params": [42,23], "id": "2"},
                {"foo": "boo"},
                {"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},
                {"jsonrpc": "2.0", "method": "get_data", "id": "9"}
                ]"#,
                Some(json!([
                    {"jsonrpc": "2.0", "result": 7, "id": "1"},
                    {"jsonrpc": "2.0", "result": 19, "id": "2"},
                    {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null},
                    {"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": "5"},
                    {"jsonrpc": "2.0", "result": ["hello", 5], "id": "9"}
                ])),
            ),
            (
                r#"[{"jsonrpc": "2.0", "method": "notify_sum", "params": [1,2,4]},
                    {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]}]"#,
                None,
            ),
        ];
        for (req, want) in cases {
            assert_eq!(run(req).map(strip_data), *want, "request: {req}");
        }
    }

    #[test]
    fn id_rules() {
        let code = |v: Option<Value>| v.expect("a response")["error"]["code"].clone();
        // null id is a request, not a notification.
        let r = run(r#"{"jsonrpc":"2.0","method":"sum","params":[1],"id":null}"#).expect("reply");
        assert_eq!(r["id"], Value::Null);
        assert_eq!(r["result"], 1);
        for bad in [r#"{}"#, "[]", "true", "false"] {
            let body = format!(r#"{{"jsonrpc":"2.0","method":"sum","id":{bad}}}"#);
            assert_eq!(code(run(&body)), -32600, "{body}");
        }
        // Huge numbers and long strings are echoed verbatim.
        let huge = "123456789012345678901234567890123456789";
        let body = futures_block_on(handle_body(
            &Spec,
            format!(r#"{{"jsonrpc":"2.0","method":"sum","params":[],"id":{huge}}}"#).as_bytes(),
        ));
        match body {
            Reply::Body(b) => {
                assert!(String::from_utf8_lossy(&b).ends_with(&format!("\"id\":{huge}}}")))
            }
            Reply::Nothing => panic!("expected a body"),
        }
    }

    #[test]
    fn invalid_envelopes() {
        let code = |body: &str| run(body).expect("a response")["error"]["code"].clone();
        assert_eq!(code(r#"{"jsonrpc":"1.0","method":"sum","id":1}"#), -32600);
        assert_eq!(code(r#"{"method":"sum","id":1}"#), -32600);
        assert_eq!(code(r#"{"id":1}"#), -32600);
        assert_eq!(
            code(r#"{"jsonrpc":"2.0","method":"sum","params":"x","id":1}"#),
            -32600
        );
        assert_eq!(
            code(r#"{"jsonrpc":"2.0","method":"sum","params":1,"id":1}"#),
            -32600
        );
        assert_eq!(
            code(r#"{"jsonrpc":"2.0","method":"sum","id":1,"id":2}"#),
            -32600
        );
        assert_eq!(code("\"just a string\""), -32600);
        assert_eq!(code(""), -32700);
        assert_eq!(
            code(r#"{"jsonrpc":"2.0","method":"sum","id":1} trailing"#),
            -32700
        );
        // Invalid request, keeps a valid id.
        assert_eq!(
            run(r#"{"jsonrpc":"1.0","method":"sum","id":7}"#).expect("reply")["id"],
            7
        );
        let invalid_utf8 = futures_block_on(handle_body(
            &Spec,
            b"{\"jsonrpc\":\"2.0\",\"method\":\"\xff\",\"id\":1}",
        ));
        match invalid_utf8 {
            Reply::Body(b) => assert!(String::from_utf8_lossy(&b).contains("-32700")),
            Reply::Nothing => panic!("expected a parse error"),
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let depth = 100_000;
        let body = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let r = run(&body).expect("reply");
        assert_eq!(r[0]["error"]["code"], -32600);
        let params = format!(
            r#"{{"jsonrpc":"2.0","method":"sum","params":{}{},"id":1}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        );
        assert_eq!(run(&params).expect("reply")["error"]["code"], -32602);
    }

    /// A handler whose call holds 4 KiB across an await.
    struct Large;

    impl Handler for Large {
        async fn call(&self, _: &str, _: Params, _: usize) -> Result<RawJson, RpcError> {
            let held = std::hint::black_box([1u8; 4096]);
            tokio::task::yield_now().await;
            Ok(RawJson::encode(&held[4095]))
        }
    }

    /// A body's future costs less than 512 bytes beyond its call's: it is built and moved on
    /// every request, copied whole each time (a batch's state is boxed). One type, with a
    /// deadline or without: the timeout's state is in it either way.
    #[test]
    fn a_body_costs_little_beyond_its_call() {
        let call = std::mem::size_of_val(&Large.call("m", Params::None, 0));
        let limits = Limits::default();
        let body = handle_body_observed(&Large, b"{}", None, &limits, &());
        let size = std::mem::size_of_val(&body);
        assert!(size < call + 512, "{size} bytes for a call of {call}");
    }
}
