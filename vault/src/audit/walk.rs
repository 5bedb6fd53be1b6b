//! Reading the segment files: verify the chain across segments (local and archived), find the
//! first entry since a time, export a range as JSON lines. Readers need no lock: closed segments
//! never change and the active one only grows, so a reader stops at the head it was given (a
//! line being written past it is ignored).

use super::segment::{self, AuditKey, Checkpoint, Header, Line};
use super::{AuditError, GENESIS, Verdict};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// What `verify` found, beyond the verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub verdict: Verdict,
    /// Segments read.
    pub segments: u64,
    /// Of them, read from the archive folder.
    pub from_archive: u64,
    /// First sequence number checked entry by entry (> 1 when older segments were archived and
    /// pruned and no archive folder was given: the chain then starts from their signed
    /// checkpoint).
    pub checked_from: u64,
}

/// The segment files to read: local ones, and archived ones the local folder no longer holds.
pub fn sources(
    local: &Path,
    archive: Option<&Path>,
) -> Result<Vec<(u64, PathBuf, bool)>, AuditError> {
    let mut by_number: BTreeMap<u64, (PathBuf, bool)> = BTreeMap::new();
    if let Some(a) = archive {
        for (n, p) in segment::list(a)? {
            by_number.insert(n, (p, true));
        }
    }
    for (n, p) in segment::list(local)? {
        by_number.insert(n, (p, false));
    }
    Ok(by_number.into_iter().map(|(n, (p, a))| (n, p, a)).collect())
}

/// Segment numbers the local folder marks as archived.
pub fn markers(local: &Path) -> Result<BTreeSet<u64>, AuditError> {
    let mut out = BTreeSet::new();
    let rd = match std::fs::read_dir(local) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(AuditError::io(local, e)),
    };
    for item in rd {
        let item = item.map_err(|e| AuditError::io(local, e))?;
        let name = item.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(stem) = name.strip_suffix(".archived")
            && stem.len() == 12
            && let Ok(n) = stem.parse::<u64>()
        {
            out.insert(n);
        }
    }
    Ok(out)
}

/// The walk's state between segments.
struct Chain {
    next_seq: u64,
    prev_hash: String,
    prev_checkpoint: Option<Checkpoint>,
    instance: Option<String>,
}

enum SegmentEnd {
    Closed,
    Open,
    /// Stopped at `upto`.
    Reached,
}

fn broken(position: u64, reason: String) -> Result<Result<SegmentEnd, Verdict>, AuditError> {
    Ok(Err(Verdict::Broken { position, reason }))
}

/// Checks a header against the chain so far (or, for the first segment read, against its own
/// signed `prev` checkpoint).
fn check_header(
    h: &Header,
    n: u64,
    name: &str,
    chain: &mut Option<Chain>,
    key: &AuditKey,
) -> Result<(), String> {
    if h.segment != n {
        return Err(format!(
            "file {name} holds segment {} (segments reordered or renamed)",
            h.segment
        ));
    }
    if h.v != segment::FORMAT_VERSION {
        return Err(format!("segment {n}: unknown format version {}", h.v));
    }
    match chain {
        Some(c) => {
            if c.instance.as_deref() != Some(h.instance.as_str()) {
                return Err(format!(
                    "segment {n} belongs to another instance ({})",
                    h.instance
                ));
            }
            if h.first_seq != c.next_seq
                || h.prev_hash != c.prev_hash
                || h.prev != c.prev_checkpoint
            {
                return Err(format!(
                    "segment {n} does not continue from the segment before it (a segment \
                     removed, reordered or replaced)"
                ));
            }
        }
        None => {
            match &h.prev {
                None if n == 1 && h.first_seq == 1 && h.prev_hash == hex::encode(GENESIS) => {}
                None => return Err(format!("segment {n} names no checkpoint to start from")),
                Some(p) => {
                    if !key.verifies(p) {
                        return Err(format!(
                            "the checkpoint segment {n} starts from does not verify under the \
                             audit key (forged, or another key)"
                        ));
                    }
                    if p.segment + 1 != n
                        || p.last_seq + 1 != h.first_seq
                        || p.last_hash != h.prev_hash
                    {
                        return Err(format!(
                            "segment {n} does not continue from the checkpoint it names"
                        ));
                    }
                }
            }
            *chain = Some(Chain {
                next_seq: h.first_seq,
                prev_hash: h.prev_hash.clone(),
                prev_checkpoint: h.prev.clone(),
                instance: Some(h.instance.clone()),
            });
        }
    }
    Ok(())
}

/// Walks one segment; `Ok(Err(verdict))` is a break.
fn walk_segment(
    n: u64,
    path: &Path,
    last: bool,
    chain: &mut Option<Chain>,
    key: &AuditKey,
    upto: Option<u64>,
) -> Result<Result<SegmentEnd, Verdict>, AuditError> {
    let name = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let expected = chain.as_ref().map(|c| c.next_seq).unwrap_or(1);
    let mut lines = segment::open_lines(path)?;
    let header = match lines.next_line().map_err(|e| AuditError::io(path, e))? {
        Some(Ok(l)) => match segment::parse_line(l) {
            Some(Line::Header(h)) => h,
            _ => {
                return broken(
                    expected,
                    format!("segment {n} ({name}) has no valid header line"),
                );
            }
        },
        Some(Err(_)) | None if last => return Ok(Ok(SegmentEnd::Open)),
        _ => {
            return broken(
                expected,
                format!("segment {n} ({name}) is empty or cut short"),
            );
        }
    };
    if let Err(reason) = check_header(&header, n, &name, chain, key) {
        return broken(expected, reason);
    }
    let Some(c) = chain.as_mut() else {
        return broken(expected, format!("segment {n}: no chain state"));
    };
    loop {
        let line = match lines.next_line().map_err(|e| AuditError::io(path, e))? {
            None => break,
            Some(Err(_)) if last => break,
            Some(Err(_)) => {
                return broken(
                    c.next_seq,
                    format!("segment {n} ({name}) ends in a partial line (truncated)"),
                );
            }
            Some(Ok(l)) => l,
        };
        if upto.is_some_and(|u| c.next_seq > u) {
            return Ok(Ok(SegmentEnd::Reached));
        }
        match segment::parse_line(line) {
            Some(Line::Entry(e)) => {
                let position = c.next_seq;
                if e.seq != position {
                    return broken(
                        position,
                        format!(
                            "segment {n}: sequence number out of order (entry removed, added or moved)"
                        ),
                    );
                }
                if e.instance.is_some() && e.instance != c.instance {
                    return broken(position, format!("segment {n}: entry of another instance"));
                }
                let full = e.with_prev(&c.prev_hash);
                if full.recomputed_hash() != full.hash {
                    return broken(
                        position,
                        format!(
                            "segment {n}: hash does not match the entry's contents (entry edited)"
                        ),
                    );
                }
                c.prev_hash = full.hash;
                c.next_seq += 1;
            }
            Some(Line::Checkpoint(cp)) => {
                let ok_fields = cp.segment == n
                    && Some(&cp.instance) == c.instance.as_ref()
                    && cp.first_seq == header.first_seq
                    && cp.last_seq + 1 == c.next_seq
                    && cp.last_hash == c.prev_hash
                    && cp.prev_mac
                        == c.prev_checkpoint
                            .as_ref()
                            .map(|p| p.mac.clone())
                            .unwrap_or_default();
                if !ok_fields {
                    return broken(
                        c.next_seq,
                        format!(
                            "segment {n}: its checkpoint does not match its entries (entries removed or added)"
                        ),
                    );
                }
                if !key.verifies(&cp) {
                    return broken(
                        c.next_seq,
                        format!(
                            "segment {n}: checkpoint does not verify under the audit key (forged, or another key)"
                        ),
                    );
                }
                if lines
                    .next_line()
                    .map_err(|e| AuditError::io(path, e))?
                    .is_some()
                {
                    return broken(
                        c.next_seq,
                        format!("segment {n}: lines after its checkpoint"),
                    );
                }
                c.prev_checkpoint = Some(cp.clone());
                return Ok(Ok(SegmentEnd::Closed));
            }
            _ => {
                return broken(
                    c.next_seq,
                    format!("segment {n} ({name}): a line does not parse"),
                );
            }
        }
    }
    Ok(Ok(SegmentEnd::Open))
}

/// Verifies the chain over the local folder plus, when given, the archive folder, up to
/// `upto` (the head when a running vault asks). Reports the first break: a missing, edited,
/// reordered or truncated segment, an edited entry, a forged checkpoint.
pub fn verify(
    local: &Path,
    archive: Option<&Path>,
    key: &AuditKey,
    upto: Option<u64>,
) -> Result<Report, AuditError> {
    let files = sources(local, archive)?;
    let marked = markers(local)?;
    let mut report = Report {
        verdict: Verdict::Ok { entries: 0 },
        segments: 0,
        from_archive: 0,
        checked_from: 1,
    };
    let Some(&(first, _, _)) = files.first() else {
        return Ok(report);
    };
    // Segments before the first one present must have been archived (and pruned).
    if let Some(missing) = (1..first).find(|n| !marked.contains(n)) {
        report.verdict = Verdict::Broken {
            position: 1,
            reason: format!(
                "segment {missing} ({}) is missing: not here, not archived",
                segment::file_name(missing)
            ),
        };
        return Ok(report);
    }
    let mut chain: Option<Chain> = None;
    let count = files.len();
    for (expected_number, (i, (n, path, archived))) in (first..).zip(files.iter().enumerate()) {
        let position = chain.as_ref().map(|c| c.next_seq).unwrap_or(1);
        if *n != expected_number {
            let hint = if marked.contains(&expected_number) {
                " (it was archived: pass the archive folder)"
            } else {
                ""
            };
            report.verdict = Verdict::Broken {
                position,
                reason: format!(
                    "segment {expected_number} ({}) is missing{hint}",
                    segment::file_name(expected_number)
                ),
            };
            return Ok(report);
        }
        report.segments += 1;
        report.from_archive += u64::from(*archived);
        let last = i + 1 == count;
        match walk_segment(*n, path, last, &mut chain, key, upto)? {
            Err(v) => {
                report.verdict = v;
                return Ok(report);
            }
            Ok(SegmentEnd::Open) if !last => {
                report.verdict = Verdict::Broken {
                    position: chain.as_ref().map(|c| c.next_seq).unwrap_or(position),
                    reason: format!("segment {n} ends without its checkpoint (truncated)"),
                };
                return Ok(report);
            }
            Ok(SegmentEnd::Reached) => break,
            Ok(_) => {}
        }
    }
    if let Some(first_header) = first_header(&files)? {
        report.checked_from = first_header.first_seq;
    }
    report.verdict = Verdict::Ok {
        entries: chain.map(|c| c.next_seq - 1).unwrap_or(0),
    };
    Ok(report)
}

fn first_header(files: &[(u64, PathBuf, bool)]) -> Result<Option<Header>, AuditError> {
    match files.first() {
        Some((_, p, _)) => read_header(p),
        None => Ok(None),
    }
}

/// The header line of a segment file (`None`: none yet, or it does not parse).
pub fn read_header(path: &Path) -> Result<Option<Header>, AuditError> {
    let mut lines = segment::open_lines(path)?;
    Ok(
        match lines.next_line().map_err(|e| AuditError::io(path, e))? {
            Some(Ok(l)) => match segment::parse_line(l) {
                Some(Line::Header(h)) => Some(h),
                _ => None,
            },
            _ => None,
        },
    )
}

/// Headers of the segments to read, in order.
fn headers(local: &Path, archive: Option<&Path>) -> Result<Vec<(PathBuf, Header)>, AuditError> {
    let mut out = Vec::new();
    for (_, p, _) in sources(local, archive)? {
        if let Some(h) = read_header(&p)? {
            out.push((p, h));
        }
    }
    Ok(out)
}

/// The first sequence number at or after `since`.
pub fn first_since(
    local: &Path,
    archive: Option<&Path>,
    since: &crate::audit_export::Since,
    head: u64,
) -> Result<Option<u64>, AuditError> {
    let t = match since {
        crate::audit_export::Since::Seq(n) => return Ok(Some(*n)),
        crate::audit_export::Since::Time(t) => *t,
    };
    let hs = headers(local, archive)?;
    for (i, (path, _)) in hs.iter().enumerate() {
        // Every entry of a segment is older than the next segment's header.
        if let Some((_, next)) = hs.get(i + 1)
            && parse_time(&next.created).is_some_and(|c| c < t)
        {
            continue;
        }
        let mut lines = segment::open_lines(path)?;
        while let Some(Ok(l)) = lines.next_line().map_err(|e| AuditError::io(path, e))? {
            if let Some(Line::Entry(e)) = segment::parse_line(l) {
                if e.seq > head {
                    return Ok(None);
                }
                if parse_time(&e.time).is_some_and(|at| at >= t) {
                    return Ok(Some(e.seq));
                }
            }
        }
    }
    Ok(None)
}

fn parse_time(s: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

/// Calls `batch` with each entry from `from` to `upto` (inclusive) as one JSON line (the
/// exported [`super::AuditEntry`], `prevHash` included), in batches; stops early when `batch`
/// returns false. Returns the count. A line that does not parse stops the export with an error.
pub fn export(
    local: &Path,
    archive: Option<&Path>,
    from: u64,
    upto: u64,
    batch: &mut dyn FnMut(Vec<u8>) -> bool,
) -> Result<u64, AuditError> {
    const BATCH_BYTES: usize = 64 * 1024;
    if upto < from {
        return Ok(0);
    }
    let hs = headers(local, archive)?;
    let mut buf = Vec::with_capacity(BATCH_BYTES + 1024);
    let mut n = 0u64;
    for (i, (path, h)) in hs.iter().enumerate() {
        if hs
            .get(i + 1)
            .is_some_and(|(_, next)| next.first_seq <= from)
        {
            continue;
        }
        if h.first_seq > upto {
            break;
        }
        let mut prev_hash = h.prev_hash.clone();
        let mut lines = segment::open_lines(path)?;
        lines.next_line().map_err(|e| AuditError::io(path, e))?;
        while let Some(Ok(l)) = lines.next_line().map_err(|e| AuditError::io(path, e))? {
            let e = match segment::parse_line(l) {
                Some(Line::Entry(e)) => e,
                Some(Line::Checkpoint(_)) => break,
                _ => {
                    return Err(AuditError::Corrupt(format!(
                        "{}: a line does not parse",
                        path.display()
                    )));
                }
            };
            if e.seq > upto {
                break;
            }
            let hash = e.hash.clone();
            if e.seq >= from {
                let full = e.with_prev(&prev_hash);
                serde_json::to_writer(&mut buf, &full)
                    .map_err(|e| AuditError::Corrupt(e.to_string()))?;
                buf.push(b'\n');
                n += 1;
                if buf.len() >= BATCH_BYTES && !batch(std::mem::take(&mut buf)) {
                    return Ok(n);
                }
            }
            prev_hash = hash;
        }
    }
    if !buf.is_empty() {
        batch(buf);
    }
    Ok(n)
}
