//! The request path: HTTP (axum middleware, one job per layer) → the JSON-RPC envelope → the
//! methods, which turn params into calls on [`crate::users::Users`]; and `GET /metrics`, whose
//! figures the dispatcher counts as it answers.

pub(crate) mod access_log;
mod health;
pub(crate) mod http;
pub mod methods;
pub(crate) mod prometheus;
pub mod rpc;

pub use http::{ApiSettings, MAX_BODY_LIMIT};
