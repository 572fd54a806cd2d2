//! The JSON-RPC methods: reads each call's params (by position or by name), calls `users`, and
//! maps its errors onto documented codes. The method list here and in `openrpc.json` must agree
//! (a test checks it).

use super::rpc::{Handler, Params, RawJson, RpcError};
use crate::release::VERSION;
use crate::users::{NewUser, kind, validate, validate_list};
use crate::users::{UserError, Users, Written};
use bytes::Bytes;
use serde_json::{Value, json};

/// Application error codes (JSON-RPC's server range -32000..-32099). Public contract: documented in
/// the README and in `rpc.discover`; never renumber.
pub mod codes {
    /// The store failed; the request changed nothing.
    pub const STORE_UNAVAILABLE: i64 = -32000;
    /// No user with that id.
    pub const NOT_FOUND: i64 = -32001;
    /// `rev` did not match the stored revision: re-read and retry.
    pub const CONFLICT: i64 = -32002;
    /// The request did not finish within the server's request timeout.
    pub const TIMEOUT: i64 = -32003;
    /// The answer would pass `--max-response`: page with `limit`/`after`, or split the batch.
    pub use crate::api::rpc::RESPONSE_TOO_LARGE;
}

/// A read whose answer would pass the budget: refused before it is built.
fn too_large(size: usize, budget: usize, page: bool) -> RpcError {
    let hint = if page {
        "read the users in pages: get_users {\"limit\": 1000} then {\"limit\": 1000, \"after\": <last id>}"
    } else {
        "send it in a request of its own"
    };
    RpcError::new(codes::RESPONSE_TOO_LARGE, "Response too large").with_data(
        format!(
            "the answer would be about {size} bytes; at most {budget} may be sent (--max-response): {hint}"
        )
        .into(),
    )
}

/// The OpenRPC document served by `rpc.discover`.
const OPENRPC: &str = include_str!("openrpc.json");

pub const METHODS: &[&str] = &[
    "get_users",
    "get_user",
    "put_user",
    "put_users",
    "delete_user",
    "ping",
    "version",
    "health",
    "rpc.discover",
];

pub struct Api {
    pub users: Users,
    discover: Bytes,
    version: Bytes,
    /// The pull's figures, for `health` (none without `--pull-url`).
    pull: Option<std::sync::Arc<crate::pull::PullStats>>,
}

impl Api {
    pub fn new(users: Users, release: &crate::release::Release) -> Self {
        // The document is ours and checked by a test; stamp in the running version.
        let mut doc: Value = serde_json::from_str(OPENRPC).unwrap_or(Value::Null);
        doc["info"]["version"] = VERSION.into();
        Self {
            users,
            discover: Bytes::from(doc.to_string()),
            version: Bytes::from(release.version_json().to_string()),
            pull: None,
        }
    }

    /// With the pull's figures in `health` (as `GET /health` has them).
    pub fn with_pull(mut self, pull: Option<std::sync::Arc<crate::pull::PullStats>>) -> Self {
        self.pull = pull;
        self
    }

    /// `{name, version, revision, release}`, for the `version` method and `GET /version`.
    pub fn version(&self) -> Bytes {
        self.version.clone()
    }

    /// One call by its method. The writes and `health` are boxed: this future is as large as
    /// its largest arm, and it is built and moved on every request, a `ping` too. A write's
    /// allocation is nothing beside its commit; unboxed, they made this 1 KiB, now 136 bytes.
    async fn dispatch(
        &self,
        method: &str,
        params: Params,
        budget: usize,
    ) -> Result<RawJson, RpcError> {
        match method {
            "ping" => Ok(RawJson::from_trusted(Bytes::from_static(b"\"pong\""))),
            "version" => Ok(RawJson::from_trusted(self.version())),
            // What GET /health answers, for a check that speaks JSON-RPC only (check_jsonrpc).
            "health" => Ok(RawJson::encode(
                &Box::pin(super::health::health(&self.users, self.pull.as_deref()))
                    .await
                    .body,
            )),
            "rpc.discover" => Ok(RawJson::from_trusted(self.discover.clone())),
            "get_users" => {
                let limit = opt_u64(&params, 0, "limit")?;
                let after = opt_str(&params, 1, "after")?;
                let body = match (limit, after) {
                    (None, None) => self.users.all(budget),
                    (limit, after) => self.users.page(
                        after.as_deref(),
                        limit.map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX)),
                        budget,
                    ),
                };
                Ok(RawJson::from_trusted(
                    body.map_err(|size| too_large(size, budget, true))?,
                ))
            }
            "get_user" => {
                let id = req_str(&params, 0, "id")?;
                let user = self.users.get(&id).map_err(to_rpc)?;
                if user.len() > budget {
                    return Err(too_large(user.len(), budget, false));
                }
                Ok(RawJson::from_trusted(user))
            }
            "put_user" => {
                let (user, rev) = put_user_params(params)?;
                let done = Box::pin(self.users.put(user, rev)).await.map_err(to_rpc)?;
                Ok(RawJson::encode(&written(done)))
            }
            "put_users" => {
                let users = put_users_params(params)?;
                let done = Box::pin(self.users.put_many(users)).await.map_err(to_rpc)?;
                Ok(RawJson::encode(&written(done)))
            }
            "delete_user" => {
                let id = req_str(&params, 0, "id")?;
                let rev = opt_u64(&params, 1, "rev")?.map(rev_i64).transpose()?;
                let done = Box::pin(self.users.delete(&id, rev))
                    .await
                    .map_err(to_rpc)?;
                Ok(RawJson::encode(&written(done)))
            }
            other => Err(RpcError::method_not_found(other)),
        }
    }
}

impl Handler for Api {
    async fn call(&self, method: &str, params: Params, budget: usize) -> Result<RawJson, RpcError> {
        self.dispatch(method, params, budget).await
    }
}

/// A write's result. Queued writes (store unreachable) say `"queued": true` and carry no `rev`:
/// they are durable in the journal and will be applied, in order, when the store is back.
fn written(w: Written) -> Value {
    match w {
        Written::Put { id, rev } => json!({"id": id, "rev": rev}),
        Written::Many(all) => all
            .into_iter()
            .map(|(id, rev)| json!({"id": id, "rev": rev}))
            .collect(),
        Written::Deleted { id } => json!({"id": id, "deleted": true}),
        Written::Queued { write_id, ids } if ids.len() == 1 => {
            json!({"id": ids[0], "queued": true, "write_id": write_id})
        }
        Written::Queued { write_id, ids } => ids
            .into_iter()
            .map(|id| json!({"id": id, "queued": true, "write_id": write_id}))
            .collect(),
    }
}

pub fn to_rpc(e: UserError) -> RpcError {
    match e {
        UserError::Invalid(why) => RpcError::invalid_params(why.0),
        UserError::NotFound(id) => {
            RpcError::new(codes::NOT_FOUND, "User not found").with_data(json!({"id": id}))
        }
        UserError::Conflict {
            id,
            expected,
            current,
        } => RpcError::new(codes::CONFLICT, "Revision conflict")
            .with_data(json!({"id": id, "expected": expected, "current": current})),
        e @ (UserError::ShuttingDown | UserError::Unverifiable) => {
            RpcError::new(codes::STORE_UNAVAILABLE, "Store unavailable")
                .with_data(e.to_string().into())
        }
        UserError::Journal(e) => {
            tracing::error!(error = %e, "cannot queue a write");
            RpcError::new(codes::STORE_UNAVAILABLE, "Store unavailable")
                .with_data(format!("store down and the write could not be queued: {e}").into())
        }
        UserError::Store(e) => {
            tracing::error!(error = %e, "store failure");
            RpcError::new(codes::STORE_UNAVAILABLE, "Store unavailable")
                .with_data(e.to_string().into())
        }
    }
}

/// The argument at `index` (by position) or `name` (by name).
fn arg<'a>(params: &'a Params, index: usize, name: &str) -> Option<&'a Value> {
    match params {
        Params::None => None,
        Params::Array(a) => a.get(index),
        Params::Object(o) => o.get(name),
    }
    .filter(|v| !v.is_null())
}

fn opt_u64(params: &Params, index: usize, name: &str) -> Result<Option<u64>, RpcError> {
    match arg(params, index, name) {
        None => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            RpcError::invalid_params(format!(
                "\"{name}\" must be a non-negative integer, not {}",
                kind(v)
            ))
        }),
    }
}

fn opt_str(params: &Params, index: usize, name: &str) -> Result<Option<String>, RpcError> {
    match arg(params, index, name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(RpcError::invalid_params(format!(
            "\"{name}\" must be a string, not {}",
            kind(v)
        ))),
    }
}

fn req_str(params: &Params, index: usize, name: &str) -> Result<String, RpcError> {
    opt_str(params, index, name)?
        .ok_or_else(|| RpcError::invalid_params(format!("\"{name}\" is required")))
}

fn rev_i64(rev: u64) -> Result<i64, RpcError> {
    i64::try_from(rev).map_err(|_| RpcError::invalid_params("\"rev\" is out of range"))
}

/// `{"user": {...}, "rev": n}`, `[{...}, n]`, or the user object itself as the params (then its own
/// `rev` member, if any, is the expected revision: read-modify-write just works).
fn put_user_params(params: Params) -> Result<(NewUser, Option<i64>), RpcError> {
    let rev = opt_u64(&params, 1, "rev")?.map(rev_i64).transpose()?;
    let user = match params {
        Params::Object(mut o) if o.contains_key("user") => o.remove("user").unwrap_or(Value::Null),
        Params::Object(o) => Value::Object(o),
        Params::Array(mut a) if !a.is_empty() => a.swap_remove(0),
        _ => return Err(RpcError::invalid_params("\"user\" is required")),
    };
    Ok((validate(user).map_err(|e| to_rpc(e.into()))?, rev))
}

/// `[{...}, {...}]`, `[[{...}, {...}]]` or `{"users": [...]}`.
fn put_users_params(params: Params) -> Result<Vec<NewUser>, RpcError> {
    let list = match params {
        Params::Object(mut o) => match o.remove("users") {
            Some(Value::Array(a)) => a,
            _ => {
                return Err(RpcError::invalid_params(
                    "\"users\" must be an array of user objects",
                ));
            }
        },
        Params::Array(mut a) if a.len() == 1 && a[0].is_array() => match a.swap_remove(0) {
            Value::Array(inner) => inner,
            _ => unreachable!("checked is_array above"),
        },
        Params::Array(a) => a,
        Params::None => return Err(RpcError::invalid_params("\"users\" is required")),
    };
    validate_list(list, false).map_err(|e| RpcError::invalid_params(e.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openrpc_lists_every_method() {
        let doc: Value = serde_json::from_str(OPENRPC).expect("openrpc.json is JSON");
        assert!(doc["openrpc"].is_string());
        let mut listed: Vec<&str> = doc["methods"]
            .as_array()
            .expect("methods array")
            .iter()
            .filter_map(|m| m["name"].as_str())
            .collect();
        listed.push("rpc.discover");
        listed.sort_unstable();
        let mut ours = METHODS.to_vec();
        ours.sort_unstable();
        assert_eq!(listed, ours);
    }

    #[test]
    fn put_user_param_forms() {
        let obj = |v: Value| match v {
            Value::Object(o) => Params::Object(o),
            _ => Params::None,
        };
        let (u, rev) = put_user_params(obj(json!({"user": {"id": "a"}, "rev": 3}))).expect("named");
        assert_eq!((u.id.as_str(), rev), ("a", Some(3)));
        let (u, rev) =
            put_user_params(Params::Array(vec![json!({"id": "b"}), json!(2)])).expect("pos");
        assert_eq!((u.id.as_str(), rev), ("b", Some(2)));
        let (u, rev) = put_user_params(obj(json!({"id": "c", "name": "C"}))).expect("bare");
        assert_eq!((u.id.as_str(), rev), ("c", None));
        assert!(put_user_params(Params::None).is_err());
        assert!(put_user_params(obj(json!({"user": {"id": "a"}, "rev": -1}))).is_err());
    }
}
