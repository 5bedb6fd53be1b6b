//! The writer: [`SegmentLog`] appends entries to the active segment, rotates by size and age
//! (closing each segment with a signed checkpoint), and runs one group-commit flusher thread
//! for the file.
//!
//! Durability: [`AuditLog::append`] returns once the entry's line is written to the file
//! (`write(2)`, so it survives a kill of the process); [`AuditLog::durable`] resolves once it is
//! fsynced. Every caller waiting when an fsync *starts* is woken when it ends, so concurrent
//! writers share one fsync. Without waiters the flusher syncs every `flush_every` if anything was
//! appended (reads, refusals and health checks are on disk within that interval).
//!
//! Invariants: appends hold one mutex (the head), so sequence numbers are dense and the chain
//! linear; a failed write is cut back off the file, and if that fails too the writer stops
//! (every later append fails) rather than continue a chain it cannot vouch for.

use super::segment::{self, AuditKey, Checkpoint, DiskEntry, Header};
use super::{AuditDraft, AuditEntry, AuditError, AuditLog, BoxFuture, GENESIS, Verdict};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use super::recover::LegacyEntries;
use super::recover::{check_migrated, instance_id, migrate, resume};

/// `[audit]` as resolved from `vault.toml`.
#[derive(Debug, Clone)]
pub struct AuditSettings {
    /// The segment folder (default: `audit/` inside the data folder).
    pub dir: PathBuf,
    /// A segment closes once it holds this many bytes.
    pub segment_max_bytes: u64,
    /// … or once it is this old (and holds an entry).
    pub segment_max_age: Duration,
    /// Periodic fsync of entries nobody waits for.
    pub flush_every: Duration,
    /// Where closed segments are copied (then marked archived); `None`: `vault audit archive`.
    pub archive_dir: Option<PathBuf>,
    /// Archived segments older than this are removed from `dir` (0: never by age).
    pub keep_days: u64,
    /// Archived segments are removed (oldest first) while `dir` holds more (0: no limit).
    pub max_bytes: u64,
}

impl AuditSettings {
    /// Settings for a folder with the documented defaults (tests, the benchmark).
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            segment_max_bytes: 64 * 1024 * 1024,
            segment_max_age: Duration::from_secs(86_400),
            flush_every: Duration::from_millis(500),
            archive_dir: None,
            keep_days: 90,
            max_bytes: 0,
        }
    }
}

/// What the metrics export about the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditStats {
    pub bytes_on_disk: u64,
    pub segments: u64,
    pub unarchived_closed: u64,
    /// Seconds since the oldest closed, unarchived segment was closed (0: none).
    pub oldest_unarchived_age_secs: u64,
}

enum Waiter {
    Async(tokio::sync::oneshot::Sender<Result<(), String>>),
    Sync(std::sync::mpsc::Sender<Result<(), String>>),
}

impl Waiter {
    fn send(self, r: Result<(), String>) {
        match self {
            Self::Async(t) => {
                let _ = t.send(r);
            }
            Self::Sync(t) => {
                let _ = t.send(r);
            }
        }
    }
}

#[derive(Default)]
struct FlushQueue {
    waiters: Vec<Waiter>,
    stop: bool,
    /// The flusher waits on the condvar: only then does an enqueue wake it (a notify is a
    /// `futex` call even with nobody waiting; one per durable write was a fifth of them all).
    idle: bool,
}

pub(super) struct Writer {
    pub(super) file: Arc<File>,
    pub(super) path: PathBuf,
    pub(super) header: Header,
    pub(super) opened: Instant,
    pub(super) bytes: u64,
    pub(super) entries: u64,
    pub(super) head_seq: u64,
    pub(super) head_hash: [u8; 32],
    pub(super) dirty: bool,
    pub(super) stopped: bool,
}

pub(super) struct Shared {
    settings: AuditSettings,
    key: AuditKey,
    instance: String,
    writer: Mutex<Writer>,
    queue: Mutex<FlushQueue>,
    wake: Condvar,
    length: AtomicU64,
    archiving: AtomicBool,
    /// Set for good after a failed fsync or rotation, or once the flusher thread is gone:
    /// every later `durable`/`flush` fails (an entry that may not be on disk must never be
    /// followed by an acknowledged change).
    failed: AtomicBool,
}

/// The audit log of one vault instance, in segment files.
pub struct SegmentLog {
    shared: Arc<Shared>,
    flusher: Option<std::thread::JoinHandle<()>>,
}

pub(super) fn now_text() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn fsync_dir(dir: &Path) -> Result<(), AuditError> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| AuditError::io(dir, e))
}

/// Creates `path` with `bytes` (owner-only), fsyncs it and its folder.
pub(crate) fn write_new_file(path: &Path, bytes: &[u8]) -> Result<File, AuditError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| AuditError::io(path, e))?;
    f.write_all(bytes).map_err(|e| AuditError::io(path, e))?;
    f.sync_all().map_err(|e| AuditError::io(path, e))?;
    if let Some(dir) = path.parent() {
        fsync_dir(dir)?;
    }
    Ok(f)
}

/// Writes `bytes` to `path` atomically (temp file, fsync, rename, fsync of the folder).
pub(crate) fn replace_file(path: &Path, bytes: &[u8]) -> Result<(), AuditError> {
    // A name of its own: the vault's archiver and `vault audit archive` may run at once.
    let unique = uuid::Uuid::new_v4().simple().to_string();
    let tmp = path.with_extension(format!("tmp-{}-{}", std::process::id(), &unique[..8]));
    write_new_file(&tmp, bytes)?;
    std::fs::rename(&tmp, path).map_err(|e| AuditError::io(path, e))?;
    if let Some(dir) = path.parent() {
        fsync_dir(dir)?;
    }
    Ok(())
}

impl Shared {
    fn lock(&self) -> Result<MutexGuard<'_, Writer>, AuditError> {
        self.writer.lock().map_err(|_| AuditError::Stopped)
    }

    /// Starts segment `number` after `prev` (the checkpoint of the segment before, if any).
    pub(super) fn create_segment(
        settings: &AuditSettings,
        instance: &str,
        number: u64,
        first_seq: u64,
        prev_hash: [u8; 32],
        prev: Option<Checkpoint>,
    ) -> Result<Writer, AuditError> {
        let header = Header {
            v: segment::FORMAT_VERSION,
            segment: number,
            instance: instance.to_owned(),
            first_seq,
            prev_hash: hex::encode(prev_hash),
            created: now_text(),
            prev,
        };
        let bytes = segment::header_line(&header)?;
        let path = settings.dir.join(segment::file_name(number));
        let file = write_new_file(&path, &bytes)?;
        Ok(Writer {
            file: Arc::new(file),
            path,
            header,
            opened: Instant::now(),
            bytes: bytes.len() as u64,
            entries: 0,
            head_seq: first_seq - 1,
            head_hash: prev_hash,
            dirty: false,
            stopped: false,
        })
    }

    /// Closes the active segment with its signed checkpoint and opens the next one.
    fn rotate(&self, w: &mut Writer) -> Result<(), AuditError> {
        let mut c = Checkpoint {
            segment: w.header.segment,
            instance: self.instance.clone(),
            first_seq: w.header.first_seq,
            last_seq: w.head_seq,
            last_hash: hex::encode(w.head_hash),
            time: now_text(),
            prev_mac: w
                .header
                .prev
                .as_ref()
                .map(|p| p.mac.clone())
                .unwrap_or_default(),
            mac: String::new(),
        };
        self.key.sign(&mut c);
        let line = segment::checkpoint_line(&c)?;
        (&*w.file)
            .write_all(&line)
            .map_err(|e| AuditError::io(&w.path, e))?;
        w.file.sync_data().map_err(|e| AuditError::io(&w.path, e))?;
        let next = Self::create_segment(
            &self.settings,
            &self.instance,
            w.header.segment + 1,
            w.head_seq + 1,
            w.head_hash,
            Some(c),
        )?;
        *w = next;
        Ok(())
    }

    fn rotation_due(&self, w: &Writer) -> bool {
        if w.stopped {
            return false;
        }
        w.entries > 0
            && (w.bytes >= self.settings.segment_max_bytes
                || w.opened.elapsed() >= self.settings.segment_max_age)
    }

    fn append(self: &Arc<Self>, draft: &AuditDraft) -> Result<u64, AuditError> {
        let rotated;
        let seq = {
            let mut w = self.lock()?;
            if w.stopped || self.failed.load(Ordering::Acquire) {
                return Err(AuditError::Stopped);
            }
            let entry = AuditEntry::next(w.head_seq, &w.head_hash, &self.instance, draft);
            let line = segment::entry_line(&DiskEntry::of(&entry))?;
            if let Err(e) = (&*w.file).write_all(&line) {
                // Cut a partial line back off; if that fails too, stop appending.
                if w.file.set_len(w.bytes).is_err() {
                    w.stopped = true;
                }
                return Err(AuditError::io(&w.path, e));
            }
            w.bytes += line.len() as u64;
            w.entries += 1;
            w.head_seq = entry.seq;
            w.head_hash = entry
                .hash_bytes()
                .ok_or(AuditError::Corrupt("entry hash".into()))?;
            w.dirty = true;
            self.length.store(entry.seq, Ordering::Release);
            rotated = self.rotation_due(&w);
            if rotated && let Err(e) = self.rotate(&mut w) {
                w.stopped = true;
                return Err(e);
            }
            entry.seq
        };
        if rotated {
            self.after_rotation();
        }
        Ok(seq)
    }

    /// Archives and prunes in the background when an archive folder is configured.
    fn after_rotation(self: &Arc<Self>) {
        let s = &self.settings;
        if s.archive_dir.is_none() && s.keep_days == 0 && s.max_bytes == 0 {
            return;
        }
        if self.archiving.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("audit-archive".into())
            .spawn(move || {
                if let Some(to) = &me.settings.archive_dir {
                    match super::archive::archive(&me.settings.dir, to, &me.key) {
                        Ok(r) if r.copied > 0 => {
                            tracing::info!(segments = r.copied, to = %to.display(), "audit segments archived")
                        }
                        Ok(_) => {}
                        Err(e) => tracing::error!(error = %e, "audit archive failed"),
                    }
                }
                if let Err(e) = super::archive::prune(&me.settings, &me.key) {
                    tracing::error!(error = %e, "audit prune failed");
                }
                me.archiving.store(false, Ordering::Release);
            });
        if spawned.is_err() {
            self.archiving.store(false, Ordering::Release);
        }
    }

    fn enqueue(&self, w: Waiter) {
        if self.failed.load(Ordering::Acquire) {
            return w.send(Err("the audit log failed earlier; restart the vault".into()));
        }
        match self.queue.lock() {
            Ok(mut q) if !q.stop => {
                q.waiters.push(w);
                if q.idle {
                    q.idle = false;
                    self.wake.notify_one();
                }
            }
            _ => w.send(Err("the audit flusher is not running".into())),
        }
    }

    /// Marks the log failed and fails everyone still queued (the flusher is stopping or
    /// cannot vouch for the file any more).
    fn fail_all(&self) {
        self.failed.store(true, Ordering::Release);
        let waiters = match self.queue.lock() {
            Ok(mut q) => {
                q.stop = true;
                std::mem::take(&mut q.waiters)
            }
            Err(p) => std::mem::take(&mut p.into_inner().waiters),
        };
        for w in waiters {
            w.send(Err("the audit log failed; restart the vault".into()));
        }
    }

    /// The flusher thread: one fsync for everyone waiting when it starts.
    fn run_flusher(self: Arc<Self>) {
        self.flush_loop();
        // However the loop ended, nobody may wait for it any more.
        let stopping_cleanly = !self.failed.load(Ordering::Acquire);
        if stopping_cleanly {
            // A clean stop (drop): fail only the waiters that arrived after the last round.
            let waiters = match self.queue.lock() {
                Ok(mut q) => std::mem::take(&mut q.waiters),
                Err(p) => std::mem::take(&mut p.into_inner().waiters),
            };
            for w in waiters {
                w.send(Err("the audit flusher stopped".into()));
            }
        } else {
            self.fail_all();
        }
    }

    fn flush_loop(self: &Arc<Self>) {
        let mut last_batch = 0usize;
        loop {
            let (mut waiters, mut stop) = {
                let Ok(mut q) = self.queue.lock() else {
                    return self.fail_all();
                };
                let deadline = Instant::now() + self.settings.flush_every;
                while q.waiters.is_empty() && !q.stop {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    q.idle = true;
                    q = match self.wake.wait_timeout(q, left) {
                        Ok((g, _)) => g,
                        Err(_) => return self.fail_all(),
                    };
                    q.idle = false;
                }
                (std::mem::take(&mut q.waiters), q.stop)
            };
            if last_batch > 1 && !waiters.is_empty() && !stop {
                // Writers had company last time: let more of them join this fsync.
                std::thread::sleep(shared::durable::GATHER);
                let Ok(mut q) = self.queue.lock() else {
                    return self.fail_all();
                };
                waiters.append(&mut q.waiters);
                stop |= q.stop;
            }
            last_batch = waiters.len();
            let (file, dirty, path, rotated, stopped) = match self.lock() {
                Ok(mut w) => {
                    let mut rotated = false;
                    if self.rotation_due(&w) && !w.stopped {
                        rotated = match self.rotate(&mut w) {
                            Ok(()) => true,
                            Err(e) => {
                                tracing::error!(error = %e, "audit segment rotation failed");
                                w.stopped = true;
                                false
                            }
                        };
                    }
                    let d = std::mem::take(&mut w.dirty);
                    (Arc::clone(&w.file), d, w.path.clone(), rotated, w.stopped)
                }
                Err(_) => return self.fail_all(),
            };
            let result = if stopped || self.failed.load(Ordering::Acquire) {
                Err("the audit log failed earlier; restart the vault".to_owned())
            } else if dirty || !waiters.is_empty() {
                file.sync_data()
                    .map_err(|e| format!("{}: {e}", path.display()))
            } else {
                Ok(())
            };
            if let Err(e) = &result {
                // Entries that may not be on disk must never be followed by acknowledged
                // ones: after one failed fsync the log refuses for good (Linux reports a
                // writeback error once; a later fsync can succeed without the lost pages).
                tracing::error!(error = %e, "audit log fsync failed; refusing further writes");
                if let Ok(mut w) = self.lock() {
                    w.stopped = true;
                }
                self.failed.store(true, Ordering::Release);
            }
            for w in waiters {
                w.send(result.clone());
            }
            if rotated {
                self.after_rotation();
            }
            if stop {
                return;
            }
        }
    }
}

impl SegmentLog {
    /// Opens (or creates) the audit folder: continues the active segment after cutting off a
    /// torn last line, or starts the next one; on a folder without segments, moves the
    /// entries of `legacy` (the sled tree of older folders) into segment 1 first.
    pub fn open(
        settings: AuditSettings,
        key: AuditKey,
        legacy: Option<&dyn LegacyEntries>,
    ) -> Result<Self, AuditError> {
        shared::pki::create_private_dir(&settings.dir)
            .map_err(|e| AuditError::io(&settings.dir, e))?;
        let instance = instance_id(&settings.dir)?;
        let mut files = segment::list(&settings.dir)?;
        if files.is_empty()
            && let Some(l) = legacy
        {
            migrate(&settings, &key, &instance, l)?;
            files = segment::list(&settings.dir)?;
        } else if let Some(l) = legacy {
            // A crash after the migration's rename left the sled entries behind: they go only
            // if segment 1 holds exactly them.
            check_migrated(&settings, l)?;
            l.remove()?;
        }
        let writer = match files.last() {
            None => Shared::create_segment(&settings, &instance, 1, 1, GENESIS, None)?,
            Some((n, path)) => resume(&settings, &instance, *n, path)?,
        };
        let length = writer.head_seq;
        let shared = Arc::new(Shared {
            settings,
            key,
            instance,
            writer: Mutex::new(writer),
            queue: Mutex::new(FlushQueue::default()),
            wake: Condvar::new(),
            length: AtomicU64::new(length),
            archiving: AtomicBool::new(false),
            failed: AtomicBool::new(false),
        });
        let s = Arc::clone(&shared);
        let flusher = std::thread::Builder::new()
            .name("audit-flush".into())
            .spawn(move || s.run_flusher())
            .map_err(|e| AuditError::io(&shared.settings.dir, e))?;
        shared.after_rotation();
        Ok(Self {
            shared,
            flusher: Some(flusher),
        })
    }

    /// A log in `dir` under a random audit key that dies with the process, for in-process
    /// callers (tests, the benchmark): its checkpoints verify only inside this process.
    pub fn ephemeral(dir: &Path) -> Result<Self, AuditError> {
        let key =
            crate::crypto::SecretKey::generate().map_err(|e| AuditError::Refused(e.to_string()))?;
        Self::open(AuditSettings::in_dir(dir), AuditKey::new(&key), None)
    }

    /// Walks this log with its own key (also archived segments in `archive`).
    pub fn verify_with_archive(
        &self,
        archive: Option<&Path>,
    ) -> Result<super::walk::Report, AuditError> {
        super::walk::verify(
            &self.shared.settings.dir,
            archive,
            &self.shared.key,
            Some(self.length()),
        )
    }

    /// Archives closed segments to `to` with this log's key (see `archive`).
    pub fn archive_to(&self, to: &Path) -> Result<super::archive::ArchiveReport, AuditError> {
        super::archive::archive(&self.shared.settings.dir, to, &self.shared.key)
    }

    /// Closes the active segment now (tests; `vault audit` could expose it later).
    pub fn rotate_now(&self) -> Result<(), AuditError> {
        {
            let mut w = self.shared.lock()?;
            if w.entries == 0 {
                return Ok(());
            }
            self.shared.rotate(&mut w)?;
        }
        self.shared.after_rotation();
        Ok(())
    }
}

impl Drop for SegmentLog {
    fn drop(&mut self) {
        if let Ok(mut q) = self.shared.queue.lock() {
            q.stop = true;
            self.shared.wake.notify_one();
        }
        if let Some(t) = self.flusher.take() {
            let _ = t.join();
        }
        if let Ok(w) = self.shared.writer.lock() {
            let _ = w.file.sync_data();
        }
    }
}

impl AuditLog for SegmentLog {
    fn append(&self, draft: AuditDraft) -> Result<u64, AuditError> {
        self.shared.append(&draft)
    }

    fn durable(&self) -> BoxFuture<'_, Result<(), AuditError>> {
        Box::pin(async move {
            let (tx, rx) = tokio::sync::oneshot::channel();
            self.shared.enqueue(Waiter::Async(tx));
            match rx.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(AuditError::Io {
                    path: self.shared.settings.dir.display().to_string(),
                    reason: e,
                }),
                Err(_) => Err(AuditError::Stopped),
            }
        })
    }

    fn flush(&self) -> Result<(), AuditError> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.shared.enqueue(Waiter::Sync(tx));
        match rx.recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(AuditError::Io {
                path: self.shared.settings.dir.display().to_string(),
                reason: e,
            }),
            Err(_) => Err(AuditError::Stopped),
        }
    }

    fn length(&self) -> u64 {
        self.shared.length.load(Ordering::Acquire)
    }

    /// The segments in the data folder only (from the signed checkpoint of the last pruned
    /// one): a year of archive is for `vault audit verify --archive`, not for a request.
    fn verify(&self) -> Result<Verdict, AuditError> {
        let head = self.length();
        Ok(super::walk::verify(
            &self.shared.settings.dir,
            None,
            &self.shared.key,
            Some(head),
        )?
        .verdict)
    }

    fn first_since(&self, since: &crate::audit_export::Since) -> Result<Option<u64>, AuditError> {
        let s = &self.shared.settings;
        super::walk::first_since(&s.dir, s.archive_dir.as_deref(), since, self.length())
    }

    fn export(
        &self,
        from: u64,
        upto: Option<u64>,
        batch: &mut dyn FnMut(Vec<u8>) -> bool,
    ) -> Result<u64, AuditError> {
        let s = &self.shared.settings;
        let head = self.length();
        let upto = upto.map_or(head, |u| u.min(head));
        super::walk::export(&s.dir, s.archive_dir.as_deref(), from, upto, batch)
    }

    fn stats(&self) -> AuditStats {
        super::archive::stats(&self.shared.settings.dir).unwrap_or_default()
    }
}
