//! The background tasks that must run for the life of a server (the committer, the supervisor,
//! the follower, the puller, the Riemann reporter). One that ends or panics before shutdown is
//! logged and named in `/health`, which then says 503: a server never looks healthy with a
//! part of it dead.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use toolkit_core::lock;

#[derive(Clone, Default)]
pub struct Tasks(Arc<Inner>);

#[derive(Default)]
struct Inner {
    failed: Mutex<Vec<String>>,
    stopping: AtomicBool,
}

impl Tasks {
    /// Runs `task`; the returned handle resolves when it has ended, however it ended.
    pub fn spawn(
        &self,
        name: &'static str,
        task: impl Future<Output = ()> + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let handle = tokio::spawn(task);
        let tasks = self.clone();
        tokio::spawn(async move {
            let why = match handle.await {
                Ok(()) => "ended".to_owned(),
                Err(e) if e.is_panic() => {
                    let panic = e.into_panic();
                    let text = panic
                        .downcast_ref::<String>()
                        .map(String::as_str)
                        .or_else(|| panic.downcast_ref::<&str>().copied())
                        .unwrap_or("(no message)");
                    format!("panicked: {text}")
                }
                Err(e) => e.to_string(),
            };
            if !tasks.0.stopping.load(Ordering::Acquire) {
                tracing::error!(task = name, why = %why, "a background task stopped; /health reports it");
                lock(&tasks.0.failed).push(format!("{name} {why}"));
            }
        })
    }

    /// Shutdown has begun: tasks ending now are expected to.
    pub fn stopping(&self) {
        self.0.stopping.store(true, Ordering::Release);
    }

    /// The tasks that stopped while the server ran, with why.
    pub fn failed(&self) -> Vec<String> {
        lock(&self.0.failed).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_that_dies_is_named_one_that_stops_at_shutdown_is_not() {
        let tasks = Tasks::default();
        let _ = tasks
            .spawn("puller", async { panic!("interval must be non-zero") })
            .await;
        let _ = tasks.spawn("reporter", async {}).await;
        assert_eq!(
            tasks.failed(),
            vec![
                "puller panicked: interval must be non-zero".to_owned(),
                "reporter ended".to_owned()
            ]
        );
        tasks.stopping();
        let _ = tasks.spawn("committer", async {}).await;
        assert_eq!(tasks.failed().len(), 2);
    }
}
