//! The request path: HTTP (axum middleware, one job per layer) → the JSON-RPC envelope → the
//! methods, which turn params into calls on [`crate::users::Users`]; and `GET /metrics`, whose
//! figures the dispatcher counts as it answers.

mod access_log;
mod health;
mod http;
mod methods;
mod prometheus;
mod rpc;

pub use http::{ApiSettings, HttpConfig, router};
pub use methods::Api;
pub use prometheus::{Exposition, Sources};
pub use rpc::{Reply, handle_body};
