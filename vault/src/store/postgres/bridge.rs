//! The blocking [`Store`](crate::store::Store) port over an async driver: the backend owns a
//! small tokio runtime on which the pool's connections live; each call spawns an owned future
//! there and the calling thread waits for its answer on a channel.
//!
//! Why not `Handle::block_on` on the caller's runtime: the trait is called inline from async
//! handlers (a worker of the server's runtime), from `spawn_blocking` threads, from plain
//! threads (CLI, tests) and from current-thread runtimes (`#[tokio::test]`); `block_on` inside
//! a runtime panics, and connections bound to a caller's runtime die with it. On a worker of a
//! multi-thread runtime the wait is wrapped in `block_in_place`, so the other tasks of that
//! worker move elsewhere while it waits; a current-thread runtime cannot hand its tasks over
//! (`block_in_place` panics there), so it simply waits: the answer comes from this runtime's
//! threads, never from the blocked one, so it cannot deadlock.
//!
//! Every call is bounded by [`CALL_TIMEOUT`]: a database that stops answering fails the call
//! (503 upstream) instead of holding the caller's thread forever.

use crate::store::StoreError;
use std::future::Future;
use std::time::Duration;

/// Longest wait for one call (connection, statements and commit).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Threads of the backend's runtime: the driver only moves bytes; the work is PostgreSQL's.
const WORKERS: usize = 2;

pub struct Bridge {
    /// `Option` only so that `Drop` can shut it down without blocking (dropping a runtime
    /// inside another runtime's task panics; `shutdown_background` does not).
    rt: Option<tokio::runtime::Runtime>,
}

/// A call in flight: [`Pending::wait`] blocks for its answer.
pub struct Pending<T>(std::sync::mpsc::Receiver<Result<T, StoreError>>);

impl<T> Pending<T> {
    pub fn wait(self) -> Result<T, StoreError> {
        wait(|| self.0.recv())
            .map_err(|_| StoreError::Backend("database call ended without an answer".into()))?
    }
}

/// Blocks on `f` in a way that is safe on whatever thread calls (see the module header).
pub fn wait<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

impl Bridge {
    pub fn new() -> Result<Self, StoreError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKERS)
            .thread_name("vault-pg")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Backend(format!("database runtime: {e}")))?;
        Ok(Self { rt: Some(rt) })
    }

    fn runtime(&self) -> Result<&tokio::runtime::Runtime, StoreError> {
        self.rt
            .as_ref()
            .ok_or_else(|| StoreError::Backend("database runtime stopped".into()))
    }

    /// Runs `f` inside the runtime's context (building the pool spawns nothing yet, but the
    /// pool must belong to this runtime).
    pub fn enter<R>(&self, f: impl FnOnce() -> R) -> Result<R, StoreError> {
        let _guard = self.runtime()?.enter();
        Ok(f())
    }

    /// The runtime's handle, for work that must reach it after the caller lets go of the
    /// bridge (a key-change guard's release).
    pub fn handle(&self) -> Result<tokio::runtime::Handle, StoreError> {
        Ok(self.runtime()?.handle().clone())
    }

    /// Starts `fut` on the backend's runtime, bounded by [`CALL_TIMEOUT`].
    pub fn spawn<T, F>(&self, fut: F) -> Result<Pending<T>, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        Ok(spawn_on(self.runtime()?.handle(), CALL_TIMEOUT, fut))
    }

    /// [`Bridge::spawn`] and wait.
    pub fn run<T, F>(&self, fut: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        self.spawn(fut)?.wait()
    }
}

/// Starts `fut` on the runtime of `handle`, bounded by `limit`. On a runtime that has shut
/// down the future is dropped unrun and [`Pending::wait`] answers an error.
pub fn spawn_on<T, F>(handle: &tokio::runtime::Handle, limit: Duration, fut: F) -> Pending<T>
where
    T: Send + 'static,
    F: Future<Output = Result<T, StoreError>> + Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    handle.spawn(async move {
        let answer = match tokio::time::timeout(limit, fut).await {
            Ok(answer) => answer,
            Err(_) => Err(StoreError::Backend(format!(
                "database did not answer within {} s",
                limit.as_secs()
            ))),
        };
        // The caller may be gone (its thread panicked); nobody is left to tell.
        let _ = tx.send(answer);
    });
    Pending(rx)
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}
