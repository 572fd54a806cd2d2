//! The peer usersvc is measured against: the same `ping` and `get_users` (100 users held in
//! memory) served by jsonrpsee, the common Rust JSON-RPC server. Usage: peer-jsonrpsee ADDR

use jsonrpsee::RpcModule;
use jsonrpsee::server::Server;
use serde_json::{Value, json};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:18081".into());
    let users: Vec<Value> = (0..100)
        .map(|i| json!({"id": format!("user-{i:03}"), "name": format!("User {i}"), "email": format!("user{i}@example.com"), "rev": 1, "updated_at": "2026-01-01T00:00:00.000Z"}))
        .collect();
    let mut module = RpcModule::new(users);
    module.register_method("ping", |_, _, _| "pong")?;
    module.register_method("get_users", |_, users, _| users.clone())?;
    let server = Server::builder().build(&addr).await?;
    eprintln!("listening on {}", server.local_addr()?);
    let handle = server.start(module);
    tokio::signal::ctrl_c().await?;
    handle.stop()?;
    Ok(())
}
