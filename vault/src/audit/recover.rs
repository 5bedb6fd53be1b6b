//! Opening an audit folder: the instance id, what the last segment holds (a torn last line is
//! cut off, a damaged one refuses the start), continuing from it, and moving the sled entries
//! of folders written before segment files into segment 1.

use super::log::{AuditSettings, Shared, Writer, now_text, replace_file};
use super::segment::{self, AuditKey, Checkpoint, DiskEntry, Header, Line};
use super::{AuditEntry, AuditError, GENESIS};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// The instance id of this audit folder (random, written once).
pub(super) fn instance_id(dir: &Path) -> Result<String, AuditError> {
    let path = dir.join("instance");
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(AuditError::io(&path, e)),
    }
    let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    replace_file(&path, format!("{id}\n").as_bytes())?;
    Ok(id)
}

/// The entries of a folder written before segment files (the sled `audit` tree), in order.
pub trait LegacyEntries {
    /// Calls `f` with each stored entry's bytes, in sequence order.
    fn each(&self, f: &mut dyn FnMut(&[u8]) -> Result<(), AuditError>) -> Result<u64, AuditError>;
    /// Removes them once they are safely in segment 1.
    fn remove(&self) -> Result<(), AuditError>;
}

/// What the last segment file holds, read at open.
struct Tail {
    header: Option<Header>,
    entries: u64,
    head: Option<(u64, [u8; 32])>,
    checkpoint: Option<Checkpoint>,
    /// Length of the complete lines (a torn last line is cut back to this).
    good_len: u64,
    torn: bool,
}

fn read_tail(path: &Path) -> Result<Tail, AuditError> {
    let mut lines = segment::open_lines(path)?;
    let mut t = Tail {
        header: None,
        entries: 0,
        head: None,
        checkpoint: None,
        good_len: 0,
        torn: false,
    };
    while let Some(line) = lines.next_line().map_err(|e| AuditError::io(path, e))? {
        let l = match line {
            Ok(l) => l,
            Err(_) => {
                // Only the very end may be torn (a write cut short); anything after it means
                // a damaged line in the middle.
                if lines
                    .next_line()
                    .map_err(|e| AuditError::io(path, e))?
                    .is_some()
                {
                    return Err(AuditError::Corrupt(format!(
                        "{}: a line in the middle is damaged; the chain cannot continue from \
                         it (run `vault audit verify`)",
                        path.display()
                    )));
                }
                t.torn = true;
                break;
            }
        };
        let len = l.len() as u64 + 1;
        match segment::parse_line(l) {
            Some(Line::Header(h)) if t.header.is_none() => t.header = Some(h),
            Some(Line::Entry(e)) if t.header.is_some() && t.checkpoint.is_none() => {
                let mut hash = [0u8; 32];
                hex::decode_to_slice(&e.hash, &mut hash).map_err(|_| {
                    AuditError::Corrupt(format!("{}: entry {} hash", path.display(), e.seq))
                })?;
                t.head = Some((e.seq, hash));
                t.entries += 1;
            }
            Some(Line::Checkpoint(c)) if t.header.is_some() && t.checkpoint.is_none() => {
                t.checkpoint = Some(c)
            }
            _ => {
                return Err(AuditError::Corrupt(format!(
                    "{}: a line does not parse or is out of place; the chain cannot continue \
                     from it (run `vault audit verify`)",
                    path.display()
                )));
            }
        }
        t.good_len += len;
    }
    Ok(t)
}

/// Continues from the last segment file `n`.
pub(super) fn resume(
    settings: &AuditSettings,
    instance: &str,
    n: u64,
    path: &Path,
) -> Result<Writer, AuditError> {
    let tail = read_tail(path)?;
    let Some(header) = tail.header else {
        // A crash while the segment was being created: it holds no entry yet.
        let prev = match n.checked_sub(1).filter(|p| *p > 0) {
            Some(p) => {
                let before = read_tail(&settings.dir.join(segment::file_name(p)))?;
                before.checkpoint
            }
            None => None,
        };
        std::fs::remove_file(path).map_err(|e| AuditError::io(path, e))?;
        return match prev {
            Some(c) => {
                let mut h = [0u8; 32];
                hex::decode_to_slice(&c.last_hash, &mut h)
                    .map_err(|_| AuditError::Corrupt("checkpoint hash".into()))?;
                Shared::create_segment(settings, instance, n, c.last_seq + 1, h, Some(c))
            }
            None if n == 1 => Shared::create_segment(settings, instance, 1, 1, GENESIS, None),
            None => Err(AuditError::Corrupt(format!(
                "{}: no header, and the segment before it has no checkpoint",
                path.display()
            ))),
        };
    };
    if header.segment != n || header.first_seq == 0 {
        return Err(AuditError::Corrupt(format!(
            "{}: its header names segment {} from entry {} (renamed or edited)",
            path.display(),
            header.segment,
            header.first_seq
        )));
    }
    if header.instance != instance {
        return Err(AuditError::Corrupt(format!(
            "{} belongs to instance {}, this folder is {instance}",
            path.display(),
            header.instance
        )));
    }
    let (head_seq, head_hash) = match tail.head {
        Some(h) => h,
        None => {
            let mut h = [0u8; 32];
            hex::decode_to_slice(&header.prev_hash, &mut h)
                .map_err(|_| AuditError::Corrupt("header hash".into()))?;
            (header.first_seq - 1, h)
        }
    };
    if let Some(c) = tail.checkpoint {
        // Closed before a crash: the next segment starts from its checkpoint.
        return Shared::create_segment(settings, instance, n + 1, head_seq + 1, head_hash, Some(c));
    }
    let file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| AuditError::io(path, e))?;
    if tail.torn {
        tracing::warn!(
            segment = %path.display(),
            "audit segment ended in a partial line (a crash mid-write, never acknowledged); cut it off"
        );
        file.set_len(tail.good_len)
            .map_err(|e| AuditError::io(path, e))?;
        file.sync_all().map_err(|e| AuditError::io(path, e))?;
    }
    // Age counts from the header's time, across restarts.
    let age = time::OffsetDateTime::parse(
        &header.created,
        &time::format_description::well_known::Rfc3339,
    )
    .map(|c| (time::OffsetDateTime::now_utc() - c).unsigned_abs())
    .unwrap_or_default();
    let opened = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
    Ok(Writer {
        file: Arc::new(file),
        path: path.to_owned(),
        header,
        opened,
        bytes: tail.good_len,
        entries: tail.entries,
        head_seq,
        head_hash,
        dirty: false,
        stopped: false,
    })
}

/// Moves the sled entries of an older folder into segment 1, closed with its checkpoint: the
/// file is written under a temporary name, fsynced and renamed, and only then are the sled
/// entries removed (a crash in between repeats or finishes the move).
pub(super) fn migrate(
    settings: &AuditSettings,
    key: &AuditKey,
    instance: &str,
    legacy: &dyn LegacyEntries,
) -> Result<(), AuditError> {
    let header = Header {
        v: segment::FORMAT_VERSION,
        segment: 1,
        instance: instance.to_owned(),
        first_seq: 1,
        prev_hash: hex::encode(GENESIS),
        created: now_text(),
        prev: None,
    };
    let mut body = segment::header_line(&header)?;
    let mut last: Option<AuditEntry> = None;
    // Moved only if the chain verifies: a signed segment 1 must not launder a broken one.
    let n = legacy.each(&mut |bytes| {
        let broken = |seq: u64, why: &str| {
            AuditError::Corrupt(format!(
                "the audit chain in the data store is broken at entry {seq} ({why}); refusing \
                 to move it into segment files (run `vault audit verify` on the stopped vault \
                 with the previous release, and keep an export)"
            ))
        };
        let expected = last.as_ref().map_or(1, |l| l.seq + 1);
        let e = AuditEntry::decode(bytes).map_err(|_| broken(expected, "does not parse"))?;
        let prev = last
            .as_ref()
            .map_or_else(|| hex::encode(GENESIS), |l| l.hash.clone());
        if e.seq != expected || e.prev_hash != prev || !e.hash_is_valid() {
            return Err(broken(expected, "sequence, link or hash does not match"));
        }
        body.extend_from_slice(&segment::entry_line(&DiskEntry::of(&e))?);
        last = Some(e);
        Ok(())
    })?;
    let Some(last) = last else {
        return legacy.remove();
    };
    let mut c = Checkpoint {
        segment: 1,
        instance: instance.to_owned(),
        first_seq: 1,
        last_seq: last.seq,
        last_hash: last.hash.clone(),
        time: now_text(),
        prev_mac: String::new(),
        mac: String::new(),
    };
    key.sign(&mut c);
    body.extend_from_slice(&segment::checkpoint_line(&c)?);
    replace_file(&settings.dir.join(segment::file_name(1)), &body)?;
    tracing::info!(
        entries = n,
        "audit entries moved from the data store into segment 1"
    );
    legacy.remove()
}

/// Whether segment 1 ends exactly where the sled entries of an older folder end.
pub(super) fn check_migrated(
    settings: &AuditSettings,
    legacy: &dyn LegacyEntries,
) -> Result<(), AuditError> {
    let mut last: Option<(u64, String)> = None;
    legacy.each(&mut |bytes| {
        if let Ok(e) = AuditEntry::decode(bytes) {
            last = Some((e.seq, e.hash));
        }
        Ok(())
    })?;
    let Some((seq, hash)) = last else {
        return Ok(());
    };
    let first = settings.dir.join(segment::file_name(1));
    let cp = if first.exists() {
        read_tail(&first)?.checkpoint
    } else {
        None
    };
    match cp {
        Some(c) if c.last_seq == seq && c.last_hash == hash => Ok(()),
        _ => Err(AuditError::Corrupt(format!(
            "the data store holds audit entries (up to {seq}) that are not in audit segment 1 \
             of {}; refusing to start rather than drop them",
            settings.dir.display()
        ))),
    }
}
