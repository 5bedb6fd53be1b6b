//! Group commit for sled: "acknowledged only after it is durable", without one fsync per write.
//!
//! Why here: both services must make writes durable before answering, and sled 0.34.7 has a trap
//! (RUST-NOTES 4): `flush_async` from several tasks at once deadlocks, after which even `flush()`
//! hangs. So exactly one flusher task per `Db` calls the blocking `flush()` on the blocking pool,
//! and every caller waiting when a flush *starts* is woken when it ends. A caller's writes were
//! applied before it enqueued, and the flush it waits for starts after it enqueued, so a
//! successful `commit()` means its writes are on disk. Concurrent writers share one fsync.

use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How long a flush waits for more writers to join it when the previous flush covered more than
/// one (a commit delay, as PostgreSQL's `commit_delay` with `commit_siblings`, but self-tuning):
/// under concurrent writes an fsync is far cheaper shared by many than repeated for each one or
/// two, while a lone writer never waits. Costs a concurrent writer at most this much latency.
pub const GATHER: Duration = Duration::from_micros(500);

/// A flush failed; the writes it covered must not be acknowledged.
#[derive(Debug, Clone, thiserror::Error)]
#[error("flush to disk failed: {0}")]
pub struct FlushError(String);

type Waiter = oneshot::Sender<Result<(), FlushError>>;

/// Handle to the flusher task of one `sled::Db`. Cheap to clone.
#[derive(Clone)]
pub struct GroupCommit {
    tx: mpsc::UnboundedSender<Waiter>,
    task: Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl GroupCommit {
    /// Starts the flusher task on the current tokio runtime. The task ends when every handle is
    /// dropped.
    pub fn start(db: sled::Db) -> Self {
        let (tx, rx) = mpsc::unbounded_channel::<Waiter>();
        let task = tokio::spawn(flusher(Arc::new(db), rx));
        Self {
            tx,
            task: Arc::new(std::sync::Mutex::new(Some(task))),
        }
    }

    /// Drops this handle and waits for the flusher task to end, which happens once every clone is
    /// gone. The task holds a clone of the `Db`; sled keeps its folder locked until it ends, so
    /// call this before reopening the same folder in one process (tests, restarts).
    pub async fn close(self) {
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        drop(self);
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    /// Resolves once every write this task applied before the call is flushed to disk.
    pub async fn commit(&self) -> Result<(), FlushError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(done)
            .map_err(|_| FlushError("flusher stopped".into()))?;
        wait.await
            .map_err(|_| FlushError("flusher stopped".into()))?
    }
}

async fn flusher(db: Arc<sled::Db>, mut rx: mpsc::UnboundedReceiver<Waiter>) {
    let mut batch: Vec<Waiter> = Vec::new();
    let mut last_batch = 0usize;
    while let Some(first) = rx.recv().await {
        batch.push(first);
        if last_batch > 1 {
            tokio::time::sleep(GATHER).await;
        }
        // Everyone already queued rides on this flush.
        while let Ok(w) = rx.try_recv() {
            batch.push(w);
        }
        last_batch = batch.len();
        let db = Arc::clone(&db);
        let result = match tokio::task::spawn_blocking(move || db.flush()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(FlushError(e.to_string())),
            Err(e) => Err(FlushError(e.to_string())),
        };
        for w in batch.drain(..) {
            let _ = w.send(result.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_commits_all_complete_and_data_survives_reopen() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        {
            let db = sled::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
            let gc = GroupCommit::start(db.clone());
            let mut tasks = Vec::new();
            for i in 0..64u32 {
                let db = db.clone();
                let gc = gc.clone();
                tasks.push(tokio::spawn(async move {
                    db.insert(i.to_be_bytes(), &b"v"[..])
                        .map_err(|e| e.to_string())?;
                    gc.commit().await.map_err(|e| e.to_string())
                }));
            }
            for t in tasks {
                assert_eq!(t.await.ok(), Some(Ok(())));
            }
            gc.close().await;
        }
        // sled's own background flusher thread lets go of the folder lock a moment after the
        // last handle drops (RUST-NOTES trap 5): wait for it rather than fail on the race.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let db = loop {
            match sled::open(dir.path()) {
                Ok(db) => break db,
                Err(_) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(db.len(), 64);
    }
}
