//! The limit usersvc's request path is measured against: a bare hyper HTTP/1 server that reads
//! each request's body and answers the bytes usersvc itself answered for the same call (`ping`,
//! or `get_users` of the same 100 users), with nothing between socket and body: no JSON-RPC
//! parsing, no routing, no middleware. What usersvc spends beyond it is its own work.
//! Usage: peer-hyper ADDR PING_ANSWER_FILE GET_USERS_ANSWER_FILE

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: peer-hyper ADDR PING_ANSWER_FILE GET_USERS_ANSWER_FILE";
    let addr = args.next().ok_or(usage)?;
    let ping = Bytes::from(std::fs::read(args.next().ok_or(usage)?)?);
    let users = Bytes::from(std::fs::read(args.next().ok_or(usage)?)?);
    let answers = Arc::new((ping, users));
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let answers = answers.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let answers = answers.clone();
                async move {
                    let body = req.into_body().collect().await?.to_bytes();
                    let users = body.windows(9).any(|w| w == b"get_users");
                    let answer = if users { &answers.1 } else { &answers.0 };
                    Ok::<_, hyper::Error>(
                        Response::builder()
                            .header("content-type", "application/json")
                            .body(Full::new(answer.clone()))
                            .unwrap_or_default(),
                    )
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
