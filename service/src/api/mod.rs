//! The request path: HTTP (`POST /` straight to its steps, the other routes by axum) → the
//! JSON-RPC envelope → the methods, which turn params into calls on [`crate::users::Users`]; and
//! `GET /metrics`, whose figures the dispatcher counts as it answers.

mod access_log;
mod health;
mod http;
mod methods;
mod prometheus;
mod rpc;
mod settings;

pub use http::{Http, HttpConfig};
pub use methods::Api;
pub use prometheus::{Exposition, Sources};
pub use rpc::{Reply, handle_body};
pub use settings::ApiSettings;
