//! Background work of the service (the admin socket, the webhook dispatcher, the renewal job,
//! the vault connection keeper, the retention sweeper):
//! each task takes a [`Shutdown`] and is awaited by [`Background::stop`], so a stopping server
//! ends its loops between units of work (never in the middle of a charge or a delivery
//! settlement) and nothing outlives [`crate::app::run`].

pub mod renewals;
pub mod retention;
pub mod warm;
pub mod webhooks;

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long [`Background::stop`] waits for the tasks (a webhook delivery or a renewal charge in
/// flight has its own timeouts, all shorter than this).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A task's view of the stop signal.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// Resolves once the service is stopping (at once if it already is).
    pub async fn wait(&mut self) {
        // An error means the sender is gone: the owner is gone too, so stop.
        let _ = self.0.wait_for(|stop| *stop).await;
    }

    pub fn is_stopping(&self) -> bool {
        *self.0.borrow()
    }
}

/// The tasks started by [`crate::build`] and the signal that stops them.
pub struct Background {
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Default for Background {
    fn default() -> Self {
        Self {
            stop: watch::Sender::new(false),
            tasks: Mutex::new(Vec::new()),
        }
    }
}

impl Background {
    pub fn shutdown(&self) -> Shutdown {
        Shutdown(self.stop.subscribe())
    }

    /// Starts `task` on the runtime; [`Background::stop`] awaits it.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let handle = tokio::spawn(task);
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.push(handle);
        }
    }

    /// Signals every task to stop and waits for them (at most [`STOP_TIMEOUT`]).
    pub async fn stop(&self) {
        let _ = self.stop.send(true);
        let tasks = match self.tasks.lock() {
            Ok(mut t) => std::mem::take(&mut *t),
            Err(_) => return,
        };
        let all = async {
            for t in tasks {
                let _ = t.await;
            }
        };
        if tokio::time::timeout(STOP_TIMEOUT, all).await.is_err() {
            tracing::warn!("background tasks still running at shutdown");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[tokio::test]
    async fn stop_signals_every_task_and_waits_for_it_to_finish() {
        let bg = Background::default();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (mut sd, d) = (bg.shutdown(), std::sync::Arc::clone(&done));
        bg.spawn(async move {
            sd.wait().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            d.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        bg.stop().await;
        assert!(done.load(std::sync::atomic::Ordering::SeqCst));
        assert!(bg.shutdown().is_stopping());
    }
}
