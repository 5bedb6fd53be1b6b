//! Reading the segment files: verify the chain across segments (local and archived), find the
//! first entry since a time, export a range as JSON lines. Readers need no lock: closed segments
//! never change and the active one only grows, so a reader stops at the head it was given (a
//! line being written past it is ignored).

use super::segment::{self, AuditKey, Checkpoint, Header, Line};
use super::{AuditError, GENESIS, Verdict};
use std::collections::BTreeMap;
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

/// One segment file to read: where, whether from the archive, and the archived copy to fall
/// back to when a concurrent prune removes the local one while it is being read.
pub struct Source {
    pub number: u64,
    pub path: PathBuf,
    pub archived: bool,
    pub fallback: Option<PathBuf>,
}

/// The segment files to read: local ones, and archived ones the local folder no longer holds.
pub fn sources(local: &Path, archive: Option<&Path>) -> Result<Vec<Source>, AuditError> {
    let mut by_number: BTreeMap<u64, Source> = BTreeMap::new();
    if let Some(a) = archive {
        for (n, p) in segment::list(a)? {
            by_number.insert(
                n,
                Source {
                    number: n,
                    path: p,
                    archived: true,
                    fallback: None,
                },
            );
        }
    }
    for (n, p) in segment::list(local)? {
        let fallback = by_number.remove(&n).map(|s| s.path);
        by_number.insert(
            n,
            Source {
                number: n,
                path: p,
                archived: false,
                fallback,
            },
        );
    }
    Ok(by_number.into_values().collect())
}

/// Opens a segment, or its archived copy if the local file was pruned meanwhile.
fn open_source(
    s: &Source,
) -> Result<segment::Lines<std::io::BufReader<std::fs::File>>, AuditError> {
    match (segment::open_lines(&s.path), &s.fallback) {
        (Err(AuditError::Io { .. }), Some(f)) if !s.path.exists() => segment::open_lines(f),
        (r, _) => r,
    }
}

/// A `<segment>.archived` marker: the archived file's SHA-256 and its MAC under the audit key.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Marker {
    pub sha256: String,
    #[serde(default)]
    pub mac: String,
}

impl Marker {
    pub fn signed_by(&self, segment: u64, key: &AuditKey) -> bool {
        key.marker_verifies(segment, &self.sha256, &self.mac)
    }
}

/// The archive markers of the local folder, by segment number (a marker that does not parse
/// counts as absent).
pub fn markers(local: &Path) -> Result<BTreeMap<u64, Marker>, AuditError> {
    let mut out = BTreeMap::new();
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
            && let Ok(text) = std::fs::read(item.path())
            && let Ok(m) = serde_json::from_slice::<Marker>(&text)
        {
            out.insert(n, m);
        }
    }
    Ok(out)
}

/// The walk's state between segments.
struct Chain {
    /// First sequence number of the first segment read.
    first_seq: u64,
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
                    if p.segment.checked_add(1) != Some(n)
                        || p.last_seq.checked_add(1) != Some(h.first_seq)
                        || p.last_hash != h.prev_hash
                    {
                        return Err(format!(
                            "segment {n} does not continue from the checkpoint it names"
                        ));
                    }
                }
            }
            *chain = Some(Chain {
                first_seq: h.first_seq,
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
    src: &Source,
    last: bool,
    chain: &mut Option<Chain>,
    key: &AuditKey,
    upto: Option<u64>,
) -> Result<Result<SegmentEnd, Verdict>, AuditError> {
    let (n, path) = (src.number, src.path.as_path());
    let name = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let expected = chain.as_ref().map(|c| c.next_seq).unwrap_or(1);
    let mut lines = open_source(src)?;
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
        match segment::parse_line(line) {
            // Past the head a running vault gave: written after the walk started. Checkpoints
            // are always checked (the head is often the last entry of a just-closed segment).
            Some(Line::Entry(e)) if upto.is_some_and(|u| e.seq > u && c.next_seq > u) => {
                return Ok(Ok(SegmentEnd::Reached));
            }
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
                    && cp.last_seq.checked_add(1) == Some(c.next_seq)
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
    let Some(first) = files.first().map(|s| s.number) else {
        return Ok(report);
    };
    // Segments before the first one present (here or in the archive) must have been
    // archived, by a marker signed under the audit key, and then pruned (or expired from the
    // archive): an unsigned or forged marker does not count.
    let unaccounted = (1..first).find(|n| !marked.get(n).is_some_and(|m| m.signed_by(*n, key)));
    if let Some(missing) = unaccounted {
        let where_ = if archive.is_some() {
            "not here, not in the archive, no signed archive marker"
        } else {
            "not here, no signed archive marker"
        };
        report.verdict = Verdict::Broken {
            position: 1,
            reason: format!(
                "segment {missing} ({}) is missing: {where_}",
                segment::file_name(missing)
            ),
        };
        return Ok(report);
    }
    if let Some(reason) = foreign_instance(local, &files)? {
        report.verdict = Verdict::Broken {
            position: 1,
            reason,
        };
        return Ok(report);
    }
    let mut chain: Option<Chain> = None;
    let count = files.len();
    for (expected_number, (i, src)) in (first..).zip(files.iter().enumerate()) {
        let position = chain.as_ref().map(|c| c.next_seq).unwrap_or(1);
        if src.number != expected_number {
            let hint = if marked.contains_key(&expected_number) {
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
        report.from_archive += u64::from(src.archived);
        let last = i + 1 == count;
        let end = walk_segment(src, last, &mut chain, key, upto)?;
        if i == 0 {
            report.checked_from = chain.as_ref().map(|c| c.first_seq).unwrap_or(1);
        }
        match end {
            Err(v) => {
                report.verdict = v;
                return Ok(report);
            }
            Ok(SegmentEnd::Open) if !last => {
                report.verdict = Verdict::Broken {
                    position: chain.as_ref().map(|c| c.next_seq).unwrap_or(position),
                    reason: format!(
                        "segment {} ends without its checkpoint (truncated)",
                        src.number
                    ),
                };
                return Ok(report);
            }
            Ok(SegmentEnd::Reached) => break,
            Ok(_) => {}
        }
    }
    let walked = chain.map(|c| c.next_seq - 1).unwrap_or(0);
    // A running vault knows its head: fewer entries on disk means some were cut off the end.
    if let Some(head) = upto
        && walked < head
    {
        report.verdict = Verdict::Broken {
            position: walked + 1,
            reason: format!(
                "entries {}-{head} are missing at the end of the chain (cut off, or the last \
                 segment removed)",
                walked + 1
            ),
        };
        return Ok(report);
    }
    report.verdict = Verdict::Ok { entries: walked };
    Ok(report)
}

/// A segment of another instance than the folder's `instance` file names.
fn foreign_instance(local: &Path, files: &[Source]) -> Result<Option<String>, AuditError> {
    let Ok(id) = std::fs::read_to_string(local.join("instance")) else {
        return Ok(None);
    };
    let Some(first) = files.first() else {
        return Ok(None);
    };
    Ok(match read_header(&first.path)? {
        Some(h) if h.instance != id.trim() => Some(format!(
            "segment {} belongs to instance {}, this folder is {}",
            first.number,
            h.instance,
            id.trim()
        )),
        _ => None,
    })
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
    let files = sources(local, archive)?;
    let count = files.len();
    let mut out = Vec::new();
    for (i, src) in files.into_iter().enumerate() {
        let path = match (&src.fallback, src.path.exists()) {
            (Some(f), false) => f.clone(),
            _ => src.path,
        };
        match read_header(&path)? {
            Some(h) => out.push((path, h)),
            // Only the segment being created may have no header yet.
            None if i + 1 == count => {}
            None => {
                return Err(AuditError::Corrupt(format!(
                    "{}: no valid header line (run `vault audit verify`)",
                    path.display()
                )));
            }
        }
    }
    Ok(out)
}

/// The first sequence number the segments at hand hold (`None`: no segment with a header).
pub fn first_held(local: &Path, archive: Option<&Path>) -> Result<Option<u64>, AuditError> {
    Ok(headers(local, archive)?.first().map(|(_, h)| h.first_seq))
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
