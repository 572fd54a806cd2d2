//! The JSON-RPC 2.0 error object and its codes: the spec's, and ours (`RESPONSE_TOO_LARGE`).

pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;
pub const INTERNAL_ERROR: i64 = -32603;

/// A JSON-RPC error object.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
    pub data: Option<serde_json::Value>,
}

impl RpcError {
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            data: None,
        }
    }

    pub fn with_data(mut self, data: serde_json::Value) -> Self {
        self.data = Some(data);
        self
    }

    pub fn parse_error(detail: impl std::fmt::Display) -> Self {
        Self::new(PARSE_ERROR, "Parse error").with_data(detail.to_string().into())
    }

    pub fn invalid_request(detail: &str) -> Self {
        Self::new(INVALID_REQUEST, "Invalid Request").with_data(detail.into())
    }

    pub fn method_not_found(method: &str) -> Self {
        Self::new(METHOD_NOT_FOUND, "Method not found").with_data(method.into())
    }

    pub fn invalid_params(detail: impl std::fmt::Display) -> Self {
        Self::new(INVALID_PARAMS, "Invalid params").with_data(detail.to_string().into())
    }

    pub fn internal(detail: impl std::fmt::Display) -> Self {
        Self::new(INTERNAL_ERROR, "Internal error").with_data(detail.to_string().into())
    }
}

/// The answer to a call that was not run because the batch's answer already reached
/// `max_response`; `data` names the limit.
pub const RESPONSE_TOO_LARGE: i64 = -32004;

pub(super) fn response_full(max: usize) -> RpcError {
    RpcError::new(RESPONSE_TOO_LARGE, "Response too large").with_data(
        format!(
            "the batch's answer reached {max} bytes (--max-response); this call was not run: send it again in another request"
        )
        .into(),
    )
}
