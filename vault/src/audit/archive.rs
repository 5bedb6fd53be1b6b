//! Archival and retention of closed segments.
//!
//! `archive` copies each closed segment that is not yet archived to the archive folder (temp
//! name, fsync, rename, fsync of the folder), reads the copy back and compares its SHA-256 with
//! the local file, and only then writes the local marker `<segment>.archived`. It refuses to
//! archive from a chain that does not verify. `prune` removes local segments only if they are
//! marked archived, oldest first and only as a prefix (the local chain stays contiguous), when
//! they are older than `keep_days` or the folder holds more than `max_bytes`. Markers stay
//! (about 250 bytes each) and carry a MAC under the audit key over the segment number and the
//! archived file's SHA-256: they tell `verify` that the segments before the first local one
//! were archived, not deleted, and cannot be forged without the key.

use super::log::{AuditSettings, AuditStats, replace_file};
use super::segment::{self, AuditKey};
use super::{AuditError, Verdict};
use std::path::Path;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArchiveReport {
    /// Segments copied by this run.
    pub copied: u64,
    /// Segments already archived (marked) before.
    pub already: u64,
}

fn sha256_file(path: &Path) -> Result<String, AuditError> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| AuditError::io(path, e))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf).map_err(|e| AuditError::io(path, e))?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(hex::encode(ctx.finish().as_ref()))
}

/// Whether a segment file ends with its checkpoint line (closed).
fn is_closed(path: &Path) -> Result<bool, AuditError> {
    let mut lines = segment::open_lines(path)?;
    let mut last_is_checkpoint = false;
    while let Some(l) = lines.next_line().map_err(|e| AuditError::io(path, e))? {
        last_is_checkpoint = matches!(l, Ok(b) if b.starts_with(b"{\"checkpoint\":"));
    }
    Ok(last_is_checkpoint)
}

/// Copies closed, unarchived segments of `dir` to `to` after verifying the local chain.
pub fn archive(dir: &Path, to: &Path, key: &AuditKey) -> Result<ArchiveReport, AuditError> {
    let report = super::walk::verify(dir, None, key, None)?;
    if let Verdict::Broken { position, reason } = report.verdict {
        return Err(AuditError::Refused(format!(
            "the audit chain is broken at entry {position}: {reason}; not archiving"
        )));
    }
    shared::pki::create_private_dir(to).map_err(|e| AuditError::io(to, e))?;
    let marked = super::walk::markers(dir)?;
    let mut out = ArchiveReport::default();
    for (n, path) in segment::list(dir)? {
        if marked.get(&n).is_some_and(|m| m.signed_by(n, key)) {
            out.already += 1;
            continue;
        }
        if !is_closed(&path)? {
            continue;
        }
        let local_sum = sha256_file(&path)?;
        let target = to.join(segment::file_name(n));
        if target.exists() {
            if sha256_file(&target)? != local_sum {
                return Err(AuditError::Refused(format!(
                    "{} already holds a different segment {n}; not overwriting it",
                    target.display()
                )));
            }
        } else {
            let bytes = std::fs::read(&path).map_err(|e| AuditError::io(&path, e))?;
            replace_file(&target, &bytes)?;
            if sha256_file(&target)? != local_sum {
                return Err(AuditError::Refused(format!(
                    "the copy {} does not read back equal to the segment",
                    target.display()
                )));
            }
            out.copied += 1;
        }
        let marker = serde_json::json!({
            "segment": n,
            "sha256": local_sum,
            "mac": key.marker_mac(n, &local_sum),
            "archivedTo": to.display().to_string(),
            "time": time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
        });
        replace_file(
            &dir.join(segment::marker_name(n)),
            format!("{marker}\n").as_bytes(),
        )?;
    }
    Ok(out)
}

fn age_secs(path: &Path) -> u64 {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Removes archived segments (a marker signed under `key`) by `keep_days` / `max_bytes`;
/// returns how many.
pub fn prune(settings: &AuditSettings, key: &AuditKey) -> Result<u64, AuditError> {
    if settings.keep_days == 0 && settings.max_bytes == 0 {
        return Ok(0);
    }
    let marked = super::walk::markers(&settings.dir)?;
    let files = segment::list(&settings.dir)?;
    let mut total: u64 = files
        .iter()
        .map(|(_, p)| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();
    let mut pruned = 0;
    // Never the last file (the active segment), only a prefix of archived ones.
    for (n, path) in files.iter().take(files.len().saturating_sub(1)) {
        if !marked.get(n).is_some_and(|m| m.signed_by(*n, key)) {
            break;
        }
        let too_old = settings.keep_days > 0 && age_secs(path) > settings.keep_days * 86_400;
        let too_big = settings.max_bytes > 0 && total > settings.max_bytes;
        if !(too_old || too_big) {
            break;
        }
        let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        std::fs::remove_file(path).map_err(|e| AuditError::io(path, e))?;
        total = total.saturating_sub(len);
        pruned += 1;
    }
    if pruned > 0 {
        tracing::info!(
            segments = pruned,
            "archived audit segments pruned from the data folder"
        );
    }
    Ok(pruned)
}

/// Bytes on disk and archival lag of the segment folder.
pub fn stats(dir: &Path) -> Result<AuditStats, AuditError> {
    let marked = super::walk::markers(dir)?;
    let files = segment::list(dir)?;
    let mut s = AuditStats::default();
    let count = files.len();
    for (i, (n, p)) in files.iter().enumerate() {
        s.bytes_on_disk += std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        s.segments += 1;
        if i + 1 < count && !marked.contains_key(n) {
            s.unarchived_closed += 1;
            s.oldest_unarchived_age_secs = s.oldest_unarchived_age_secs.max(age_secs(p));
        }
    }
    Ok(s)
}
