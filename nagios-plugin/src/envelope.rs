//! Validates a JSON-RPC 2.0 response envelope against the request that was sent.

use serde_json::Value;

/// What the server answered, once the envelope is known to be well formed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Answer {
    Result(Value),
    Error {
        code: i64,
        message: String,
        data: Option<Value>,
    },
}

/// Which rule of the envelope the response broke (the message names it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Violation {
    #[error("response is not valid JSON: {0}")]
    NotJson(String),
    #[error("response is a JSON {0}, not a response object")]
    NotObject(&'static str),
    #[error("response has no \"jsonrpc\":\"2.0\" member")]
    MissingVersion,
    #[error("response has \"jsonrpc\":{0}, not \"2.0\"")]
    WrongVersion(String),
    #[error("response id {got} does not match the request id {sent}")]
    WrongId { sent: String, got: String },
    #[error("response has no \"id\" member")]
    MissingId,
    #[error("response has both \"result\" and \"error\"")]
    BothResultAndError,
    #[error("response has neither \"result\" nor \"error\"")]
    NeitherResultNorError,
    #[error("malformed error object: {0}")]
    BadError(&'static str),
}

pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Parses and checks `body` as the response to a request with id `sent_id`.
pub(crate) fn validate(body: &[u8], sent_id: &Value) -> Result<Answer, Violation> {
    let text = std::str::from_utf8(body)
        .map_err(|e| Violation::NotJson(format!("invalid UTF-8 at byte {}", e.valid_up_to())))?;
    let v: Value = serde_json::from_str(text).map_err(|e| Violation::NotJson(e.to_string()))?;
    let Value::Object(mut obj) = v else {
        return Err(Violation::NotObject(type_name(&v)));
    };
    match obj.get("jsonrpc") {
        Some(Value::String(s)) if s == "2.0" => {}
        Some(other) => {
            return Err(Violation::WrongVersion(toolkit_core::terminal::value(
                &other.to_string(),
            )));
        }
        None => return Err(Violation::MissingVersion),
    }
    match obj.get("id") {
        None => return Err(Violation::MissingId),
        Some(id) if id != sent_id => {
            return Err(Violation::WrongId {
                sent: sent_id.to_string(),
                got: toolkit_core::terminal::value(&id.to_string()),
            });
        }
        Some(_) => {}
    }
    match (obj.remove("result"), obj.remove("error")) {
        (Some(_), Some(_)) => Err(Violation::BothResultAndError),
        (None, None) => Err(Violation::NeitherResultNorError),
        (Some(result), None) => Ok(Answer::Result(result)),
        (None, Some(Value::Object(mut e))) => {
            let code = match e.get("code") {
                Some(Value::Number(n)) => n
                    .as_i64()
                    .ok_or(Violation::BadError("\"code\" is not an integer"))?,
                Some(_) => return Err(Violation::BadError("\"code\" is not an integer")),
                None => return Err(Violation::BadError("\"code\" is missing")),
            };
            let message = match e.remove("message") {
                Some(Value::String(s)) => s,
                Some(_) => return Err(Violation::BadError("\"message\" is not a string")),
                None => return Err(Violation::BadError("\"message\" is missing")),
            };
            Ok(Answer::Error {
                code,
                message,
                data: e.remove("data"),
            })
        }
        (None, Some(_)) => Err(Violation::BadError("\"error\" is not an object")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(body: &str) -> Result<Answer, Violation> {
        validate(body.as_bytes(), &json!(7))
    }

    #[test]
    fn rules() {
        assert_eq!(
            check(r#"{"jsonrpc":"2.0","result":"pong","id":7}"#),
            Ok(Answer::Result(json!("pong")))
        );
        assert_eq!(
            check(r#"{"jsonrpc":"2.0","result":null,"id":7}"#),
            Ok(Answer::Result(Value::Null))
        );
        assert_eq!(
            check(
                r#"{"jsonrpc":"2.0","error":{"code":-32601,"message":"Method not found"},"id":7}"#
            ),
            Ok(Answer::Error {
                code: -32601,
                message: "Method not found".into(),
                data: None
            })
        );
        assert!(matches!(check("<html>"), Err(Violation::NotJson(_))));
        assert_eq!(check("[1]"), Err(Violation::NotObject("array")));
        assert_eq!(
            check(r#"{"result":1,"id":7}"#),
            Err(Violation::MissingVersion)
        );
        assert_eq!(
            check(r#"{"jsonrpc":"1.0","result":1,"id":7}"#),
            Err(Violation::WrongVersion("\"1.0\"".into()))
        );
        assert_eq!(
            check(r#"{"jsonrpc":"2.0","result":1}"#),
            Err(Violation::MissingId)
        );
        assert_eq!(
            check(r#"{"jsonrpc":"2.0","result":1,"id":8}"#),
            Err(Violation::WrongId {
                sent: "7".into(),
                got: "8".into()
            })
        );
        // "7" (a string) is not 7 (a number).
        assert!(check(r#"{"jsonrpc":"2.0","result":1,"id":"7"}"#).is_err());
        assert_eq!(
            check(r#"{"jsonrpc":"2.0","result":1,"error":{"code":1,"message":"x"},"id":7}"#),
            Err(Violation::BothResultAndError)
        );
        assert_eq!(
            check(r#"{"jsonrpc":"2.0","id":7}"#),
            Err(Violation::NeitherResultNorError)
        );
        assert!(matches!(
            check(r#"{"jsonrpc":"2.0","error":"boom","id":7}"#),
            Err(Violation::BadError(_))
        ));
        assert!(matches!(
            check(r#"{"jsonrpc":"2.0","error":{"code":1.5,"message":"x"},"id":7}"#),
            Err(Violation::BadError(_))
        ));
        assert!(matches!(
            check(r#"{"jsonrpc":"2.0","error":{"code":1},"id":7}"#),
            Err(Violation::BadError(_))
        ));
        assert!(matches!(
            validate(b"{\"a\":\"\xff\"}", &json!(7)),
            Err(Violation::NotJson(_))
        ));
    }
}
