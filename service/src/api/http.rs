//! HTTP transport: `POST /` carries JSON-RPC; `GET /health`, `/health/live`, `/health/ready` and
//! `/version` are plain JSON; `GET /metrics` is Prometheus's (behind the token when one is set,
//! unless `metrics_public`). Transport problems are HTTP statuses (401, 405, 413, 415); every
//! JSON-RPC body is a 200.
//!
//! `POST /` is answered by [`rpc_post`], whose steps run in order, one job each: [`Recording`] (the
//! request metrics, refusals included) → [`authorized`] (only with `--auth-token`, else 401) →
//! [`is_json`] (else 415) → [`read_body`] (the whole body within `--body-limit` (413) and
//! `--body-timeout` (408)) → [`rpc_endpoint`] (within `--max-batch` and `--max-response`). It
//! goes around the router ([`Http::call`]): axum's routing, a middleware and an extractor cost
//! ~6,000 instructions a request (cachegrind), 40% of a bare hyper server's whole work, on the
//! hottest path there is. Every other route is the router's.
//! The request deadline is not a layer: a tower timeout answers for the whole body, but a call
//! past it must be answered -32003 under its own id, which only the dispatcher knows
//! (`rpc::Deadline`).

use super::access_log::AccessLog;
use super::methods::Api;
use super::methods::codes;
use super::prometheus::Exposition;
use super::rpc::{self, Reply, RpcError};
use super::settings::ApiSettings;
use crate::metrics::Metrics;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use hyper::body::Incoming;
use std::sync::Arc;

pub struct HttpConfig {
    pub metrics: Arc<Metrics>,
    pub exposition: Arc<Exposition>,
    pub pull: Option<Arc<crate::pull::PullStats>>,
    pub settings: ApiSettings,
}

/// What the routes share: the methods, the settings (the token, what one body may cost), where
/// [`Recording`] counts (Riemann's interval figures and Prometheus's), the access log.
struct Endpoint {
    api: Arc<Api>,
    config: HttpConfig,
    /// The -32003 a late call gets (built once, not per request).
    late: Arc<RpcError>,
    access_log: AccessLog,
}

/// Every route: `POST /` answered directly, the rest by the router. Cheap to clone.
#[derive(Clone)]
pub struct Http {
    endpoint: Arc<Endpoint>,
    router: Router,
}

impl Http {
    pub fn new(api: Arc<Api>, config: HttpConfig) -> Self {
        let metrics_token = (config.settings.auth_token.as_deref())
            .filter(|_| !config.settings.metrics_public)
            .map(Arc::<str>::from);
        let endpoint = Arc::new(Endpoint {
            late: Arc::new(
                RpcError::new(codes::TIMEOUT, "Request timed out").with_data(
                    format!(
                        "no answer within {}",
                        humantime::format_duration(config.settings.request_timeout)
                    )
                    .into(),
                ),
            ),
            api,
            config,
            access_log: AccessLog::default(),
        });
        Self {
            router: router(endpoint.clone(), metrics_token),
            endpoint,
        }
    }

    /// The answer to one request.
    pub fn call(&self, req: hyper::Request<Incoming>) -> impl Future<Output = Response> + use<> {
        let this = self.clone();
        async move {
            if req.method() == Method::POST && req.uri().path() == "/" {
                rpc_post(&this.endpoint, req).await
            } else {
                match tower::ServiceExt::oneshot(this.router, req).await {
                    Ok(resp) => resp,
                    Err(never) => match never {},
                }
            }
        }
    }
}

/// Every route but `POST /` (which [`Http::call`] answers before the router): a browser or
/// `curl host:8080` gets a 405 from `/` that says what the endpoint takes.
fn router(endpoint: Arc<Endpoint>, metrics_token: Option<Arc<str>>) -> Router {
    let mut scrape = get(metrics);
    if let Some(token) = metrics_token {
        scrape = scrape.route_layer(middleware::from_fn_with_state(token, require_bearer));
    }
    Router::new()
        .route("/", any(not_post))
        .route("/metrics", scrape)
        .route("/health", get(health))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/version", get(version))
        .with_state(endpoint)
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// What `/` answers to any method but POST.
async fn not_post() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [(header::ALLOW, HeaderValue::from_static("POST"))],
        "usersvc answers JSON-RPC 2.0 requests sent by POST with content-type application/json:\n\
         curl -s http://HOST:PORT/ -H 'content-type: application/json' \\\n  \
         -d '{\"jsonrpc\":\"2.0\",\"method\":\"rpc.discover\",\"id\":1}'\n\
         GET /health, /health/ready, /health/live and /version are the probes.\n",
    )
        .into_response()
}

fn plain(status: StatusCode, message: &'static str) -> Response {
    (status, message).into_response()
}

/// Compares without an early exit, so response timing does not leak how much of a token matched.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn authorized(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .is_some_and(|given| same_secret(given.trim().as_bytes(), token.as_bytes()))
}

/// A JSON `Content-Type` (`toolkit_core::media_type`).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(toolkit_core::media_type::is_json)
}

/// Everything between `POST /` and the dispatcher, in order (see the module's docs).
async fn rpc_post(endpoint: &Endpoint, req: hyper::Request<Incoming>) -> Response {
    let recording = Recording::start(&endpoint.config);
    let resp = answer_post(endpoint, req).await;
    recording.finish(resp)
}

/// [`rpc_post`]'s steps after [`Recording::start`].
async fn answer_post(endpoint: &Endpoint, req: hyper::Request<Incoming>) -> Response {
    let settings = &endpoint.config.settings;
    if let Some(token) = &settings.auth_token
        && !authorized(req.headers(), token)
    {
        return unauthorized();
    }
    if !is_json(req.headers()) {
        return plain(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "JSON-RPC requests need Content-Type: application/json\n",
        );
    }
    match read_body(settings, req).await {
        Ok(body) => rpc_endpoint(endpoint, &body).await,
        Err(refused) => refused,
    }
}

/// Counts every JSON-RPC request with its latency and status; an error is a transport refusal
/// or a body carrying a JSON-RPC error object. (Each call is counted by the dispatcher.) A
/// request dropped before its answer (the client went away) leaves the in-flight count and is
/// not recorded. Started before the answer and finished with it, not a future wrapping the
/// answer's: taken by value and awaited, that future was stored twice in the request's state,
/// which is copied whole as it is built and moved.
struct Recording<'a> {
    config: &'a HttpConfig,
    started: std::time::Instant,
    in_flight: super::prometheus::InFlight<'a>,
}

impl<'a> Recording<'a> {
    fn start(config: &'a HttpConfig) -> Self {
        Self {
            config,
            started: std::time::Instant::now(),
            in_flight: config.exposition.request(),
        }
    }

    fn finish(self, resp: Response) -> Response {
        self.in_flight.answered(resp.status().as_u16());
        let error = resp.status().as_u16() >= 400 || resp.extensions().get::<HadError>().is_some();
        self.config.metrics.record(self.started.elapsed(), error);
        resp
    }
}

/// The 401 of a request without `Authorization: Bearer <token>`.
fn unauthorized() -> Response {
    let mut resp = plain(StatusCode::UNAUTHORIZED, "missing or wrong bearer token\n");
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"usersvc\""),
    );
    resp
}

/// 401 unless `Authorization: Bearer <token>` (`GET /metrics` when it is not public).
async fn require_bearer(State(token): State<Arc<str>>, req: Request, next: Next) -> Response {
    if authorized(req.headers(), &token) {
        next.run(req).await
    } else {
        unauthorized()
    }
}

/// Reads the whole body before the dispatcher runs: at most `limit` bytes (413), within
/// `timeout` (408, and the connection is closed): a slow or endless body costs no more than
/// that. The refusal is the `Err`.
async fn read_body(bounds: &ApiSettings, req: hyper::Request<Incoming>) -> Result<Bytes, Response> {
    use http_body_util::{BodyExt, LengthLimitError, Limited};
    // The rest of the body stays unread: the connection cannot carry another request.
    let closing = |status, message| {
        let mut resp = plain(status, message);
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        resp
    };
    let too_large = || closing(StatusCode::PAYLOAD_TOO_LARGE, "request body is too large\n");
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > bounds.body_limit as u64) {
        return Err(too_large());
    }
    let read = Limited::new(req.into_body(), bounds.body_limit).collect();
    match tokio::time::timeout(bounds.body_timeout, read).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Ok(Err(_)) => Err(closing(
            StatusCode::BAD_REQUEST,
            "request body could not be read\n",
        )),
        Err(_) => Err(closing(
            StatusCode::REQUEST_TIMEOUT,
            "request body not received in time\n",
        )),
    }
}

/// Marks a response whose body carries at least one JSON-RPC error object.
#[derive(Clone, Copy)]
struct HadError;

async fn rpc_endpoint(endpoint: &Endpoint, body: &[u8]) -> Response {
    // A call past the deadline is answered -32003 under its own id; dropping it is safe (the
    // committer owns writes: commit.rs).
    let deadline = rpc::Deadline {
        at: tokio::time::Instant::now() + endpoint.config.settings.request_timeout,
        error: endpoint.late.clone(),
    };
    let limits = endpoint.config.settings.limits();
    let observer = (endpoint.config.exposition.as_ref(), &endpoint.access_log);
    let handled = rpc::handle_body_observed(
        endpoint.api.as_ref(),
        body,
        Some(&deadline),
        &limits,
        &observer,
    );
    match handled.await {
        (Reply::Body(body), errors) => {
            let mut resp = json_response(StatusCode::OK, body);
            if errors > 0 {
                resp.extensions_mut().insert(HadError);
            }
            if endpoint.api.users.degradation().degraded() {
                // RFC 7234's "Response is Stale": reads come from the last known snapshot.
                resp.headers_mut().insert(
                    header::WARNING,
                    HeaderValue::from_static("110 usersvc \"Response is Stale\""),
                );
            }
            resp
        }
        (Reply::Nothing, _) => StatusCode::NO_CONTENT.into_response(),
    }
}

async fn health(State(endpoint): State<Arc<Endpoint>>) -> Response {
    let h = super::health::health(&endpoint.api.users, endpoint.config.pull.as_deref()).await;
    let status = if h.ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(status, h.body.to_string().into_bytes())
}

/// For a load balancer or systemd: whether the process serves (200) — only a shutdown says no.
async fn live(State(endpoint): State<Arc<Endpoint>>) -> Response {
    if endpoint.api.users.is_stopping() {
        json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            br#"{"status":"stopping"}"#.to_vec(),
        )
    } else {
        json_response(StatusCode::OK, br#"{"status":"live"}"#.to_vec())
    }
}

/// For a load balancer: whether to send it work (200) — reads answered and writes taken,
/// committed or queued, so a database outage does not eject it; 503 while it stops or when a
/// background task died. `/health` stays the monitoring view (503 when anything is degraded).
async fn ready(State(endpoint): State<Arc<Endpoint>>) -> Response {
    let users = &endpoint.api.users;
    if users.ready() {
        json_response(StatusCode::OK, br#"{"status":"ready"}"#.to_vec())
    } else {
        let why = if users.is_stopping() {
            "stopping"
        } else {
            "a background task stopped"
        };
        json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"status": "not ready", "why": why})
                .to_string()
                .into_bytes(),
        )
    }
}

async fn metrics(State(endpoint): State<Arc<Endpoint>>) -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(super::prometheus::CONTENT_TYPE),
        )],
        endpoint.config.exposition.render(),
    )
        .into_response()
}

async fn version(State(endpoint): State<Arc<Endpoint>>) -> Response {
    json_response(StatusCode::OK, endpoint.api.version().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        let h = |ct: &str| {
            let mut m = HeaderMap::new();
            m.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_str(ct).expect("header"),
            );
            is_json(&m)
        };
        assert!(h("application/json"));
        assert!(h("Application/JSON; charset=utf-8"));
        assert!(h("application/json-rpc+json"));
        assert!(!h("text/plain"));
        assert!(!h("application/x-www-form-urlencoded"));
        assert!(!is_json(&HeaderMap::new()));
    }

    #[test]
    fn bearer_tokens() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(
                header::AUTHORIZATION,
                HeaderValue::from_str(v).expect("header"),
            );
            m
        };
        assert!(authorized(&h("Bearer s3cret"), "s3cret"));
        assert!(!authorized(&h("Bearer s3cre"), "s3cret"));
        assert!(!authorized(&h("Basic czNjcmV0"), "s3cret"));
        assert!(!authorized(&HeaderMap::new(), "s3cret"));
    }
}
