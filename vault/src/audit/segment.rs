//! The on-disk format of the audit log: a folder of append-only segment files, one JSON object
//! per line.
//!
//! ```text
//! <audit dir>/instance               the instance id (random, written once)
//! <audit dir>/000000000001.log       segment 1
//! <audit dir>/000000000001.archived  marker: segment 1 was copied to the archive and checked
//! <audit dir>/000000000002.log       …
//! ```
//! A segment is
//! 1. a header line `{"header":{"v":2,"segment":N,"instance":…,"firstSeq":S,"prevHash":…,
//!    "created":…,"prev":<checkpoint of segment N-1, or null>}}`;
//! 2. entry lines `{"seq":…,"time":…,"instance":…,"identity":…,"operation":…,"record":…,
//!    "store":…,"outcome":…,"hash":…}` (an [`crate::audit::AuditEntry`] without `prevHash`,
//!    which is the previous line's `hash`: ~250 bytes for a read with a record id);
//! 3. once closed, a checkpoint line `{"checkpoint":{"segment":N,"instance":…,"firstSeq":S,
//!    "lastSeq":L,"lastHash":…,"time":…,"prevMac":…,"mac":…}}`, where `mac` is
//!    HMAC-SHA256 under the audit key over all the other fields. Each checkpoint names the one
//!    before it (`prevMac`) and the next segment's header repeats it (`prev`), so segments
//!    form a signed chain of their own: a segment removed, reordered, truncated or rewritten
//!    with recomputed hashes is found, and a folder whose older segments were archived and
//!    pruned still verifies from the signed checkpoint its first segment starts from.
//!
//! Nothing here is secret: ids, identities, operation names and statuses only.

use super::{AuditEntry, AuditError};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const FORMAT_VERSION: u8 = 2;

/// The signed end of a closed segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Checkpoint {
    pub segment: u64,
    pub instance: String,
    pub first_seq: u64,
    pub last_seq: u64,
    pub last_hash: String,
    pub time: String,
    /// The previous segment's checkpoint MAC ("" for the first segment).
    pub prev_mac: String,
    pub mac: String,
}

/// The first line of a segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Header {
    pub v: u8,
    pub segment: u64,
    pub instance: String,
    pub first_seq: u64,
    /// Hash of the entry before `first_seq` (the genesis hash for the first segment).
    pub prev_hash: String,
    pub created: String,
    /// The checkpoint that closed the previous segment.
    pub prev: Option<Checkpoint>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderLine {
    header: Header,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckpointLine {
    checkpoint: Checkpoint,
}

/// An entry as a segment line holds it (no `prevHash`: the previous line's `hash`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DiskEntry {
    pub seq: u64,
    pub time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    pub identity: String,
    pub operation: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    pub outcome: u16,
    pub hash: String,
}

impl DiskEntry {
    pub fn of(e: &AuditEntry) -> Self {
        Self {
            seq: e.seq,
            time: e.time.clone(),
            instance: e.instance.clone(),
            identity: e.identity.clone(),
            operation: e.operation.clone(),
            record: e.record.clone(),
            store: e.store.clone(),
            outcome: e.outcome,
            hash: e.hash.clone(),
        }
    }

    /// The exported entry, given the hash of the entry before it.
    pub fn with_prev(self, prev_hash: &str) -> AuditEntry {
        AuditEntry {
            seq: self.seq,
            time: self.time,
            instance: self.instance,
            identity: self.identity,
            operation: self.operation,
            record: self.record,
            store: self.store,
            outcome: self.outcome,
            prev_hash: prev_hash.to_owned(),
            hash: self.hash,
        }
    }
}

/// One parsed line of a segment.
pub enum Line {
    Header(Header),
    Entry(DiskEntry),
    Checkpoint(Checkpoint),
}

/// Parses one line (without its newline). Outside bytes: never panics.
pub fn parse_line(bytes: &[u8]) -> Option<Line> {
    if bytes.starts_with(b"{\"header\":") {
        serde_json::from_slice::<HeaderLine>(bytes)
            .ok()
            .map(|h| Line::Header(h.header))
    } else if bytes.starts_with(b"{\"checkpoint\":") {
        serde_json::from_slice::<CheckpointLine>(bytes)
            .ok()
            .map(|c| Line::Checkpoint(c.checkpoint))
    } else {
        serde_json::from_slice::<DiskEntry>(bytes)
            .ok()
            .map(Line::Entry)
    }
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, AuditError> {
    let mut out = serde_json::to_vec(v).map_err(|e| AuditError::Corrupt(e.to_string()))?;
    out.push(b'\n');
    Ok(out)
}

pub fn header_line(h: &Header) -> Result<Vec<u8>, AuditError> {
    encode(&HeaderLine { header: h.clone() })
}

pub fn checkpoint_line(c: &Checkpoint) -> Result<Vec<u8>, AuditError> {
    encode(&CheckpointLine {
        checkpoint: c.clone(),
    })
}

pub fn entry_line(e: &DiskEntry) -> Result<Vec<u8>, AuditError> {
    encode(e)
}

/// The audit key: HMAC-SHA256 over checkpoints. Built from a zeroizing [`SecretKey`]; no
/// `Debug` that could print it (ring's key type prints only its algorithm).
pub struct AuditKey(ring::hmac::Key);

impl AuditKey {
    pub fn new(key: &crate::crypto::SecretKey) -> Self {
        Self(ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            key.expose_bytes(),
        ))
    }

    fn message(c: &Checkpoint) -> Vec<u8> {
        let mut m = Vec::with_capacity(256);
        m.extend_from_slice(b"strongroom/audit/checkpoint/v1");
        let mut field = |bytes: &[u8]| {
            m.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
            m.extend_from_slice(bytes);
        };
        field(&c.segment.to_be_bytes());
        field(c.instance.as_bytes());
        field(&c.first_seq.to_be_bytes());
        field(&c.last_seq.to_be_bytes());
        field(c.last_hash.as_bytes());
        field(c.time.as_bytes());
        field(c.prev_mac.as_bytes());
        m
    }

    /// Fills in `c.mac`.
    pub fn sign(&self, c: &mut Checkpoint) {
        c.mac = hex::encode(ring::hmac::sign(&self.0, &Self::message(c)).as_ref());
    }

    /// The MAC of an archive marker: segment number and the archived file's SHA-256.
    pub fn marker_mac(&self, segment: u64, sha256: &str) -> String {
        let mut m = Vec::with_capacity(128);
        m.extend_from_slice(b"strongroom/audit/archived/v1");
        m.extend_from_slice(&segment.to_be_bytes());
        m.extend_from_slice(sha256.as_bytes());
        hex::encode(ring::hmac::sign(&self.0, &m).as_ref())
    }

    /// Whether `mac` is this key's marker MAC for `segment` / `sha256` (constant-time).
    pub fn marker_verifies(&self, segment: u64, sha256: &str, mac: &str) -> bool {
        let Ok(tag) = hex::decode(mac) else {
            return false;
        };
        let mut m = Vec::with_capacity(128);
        m.extend_from_slice(b"strongroom/audit/archived/v1");
        m.extend_from_slice(&segment.to_be_bytes());
        m.extend_from_slice(sha256.as_bytes());
        ring::hmac::verify(&self.0, &m, &tag).is_ok()
    }

    /// Whether `c.mac` is this key's MAC over `c` (constant-time compare).
    pub fn verifies(&self, c: &Checkpoint) -> bool {
        match hex::decode(&c.mac) {
            Ok(tag) => ring::hmac::verify(&self.0, &Self::message(c), &tag).is_ok(),
            Err(_) => false,
        }
    }
}

/// `000000000042.log`.
pub fn file_name(segment: u64) -> String {
    format!("{segment:012}.log")
}

/// `000000000042.archived`.
pub fn marker_name(segment: u64) -> String {
    format!("{segment:012}.archived")
}

/// The segment number a file name stands for (`None`: not a segment file).
pub fn segment_of(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".log")?;
    (stem.len() == 12 && stem.bytes().all(|b| b.is_ascii_digit()))
        .then(|| stem.parse().ok())
        .flatten()
}

/// Segment files of `dir`, by segment number (an absent folder holds none).
pub fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>, AuditError> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(AuditError::io(dir, e)),
    };
    for item in rd {
        let item = item.map_err(|e| AuditError::io(dir, e))?;
        if let Some(n) = item.file_name().to_str().and_then(segment_of) {
            out.push((n, item.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Longest line a reader accepts (entries are ~250 bytes, headers and checkpoints under 1 KiB).
pub const MAX_LINE: usize = 64 * 1024;

/// Reads lines of a segment file; a last line without its newline (a write cut short by a
/// crash, or one being written right now) is returned as `Err(partial bytes)`.
pub struct Lines<R> {
    reader: R,
    buf: Vec<u8>,
}

impl<R: std::io::BufRead> Lines<R> {
    pub fn new(reader: R) -> Self {
        Self {
            reader,
            buf: Vec::with_capacity(512),
        }
    }

    /// The next complete line (without `\n`), `Ok(None)` at the end, or the torn tail. A line
    /// longer than [`MAX_LINE`] (no entry is) is returned as a torn tail too, so a damaged file
    /// cannot make a reader buffer it whole.
    pub fn next_line(&mut self) -> std::io::Result<Option<Result<&[u8], usize>>> {
        use std::io::{BufRead, Read};
        self.buf.clear();
        let n = (&mut self.reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut self.buf)?;
        if n == 0 {
            return Ok(None);
        }
        if self.buf.last() != Some(&b'\n') {
            return Ok(Some(Err(n)));
        }
        self.buf.pop();
        Ok(Some(Ok(&self.buf)))
    }
}

pub fn open_lines(path: &Path) -> Result<Lines<std::io::BufReader<std::fs::File>>, AuditError> {
    let f = std::fs::File::open(path).map_err(|e| AuditError::io(path, e))?;
    Ok(Lines::new(std::io::BufReader::with_capacity(256 * 1024, f)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::audit::{AuditDraft, GENESIS};

    fn key(b: u8) -> AuditKey {
        AuditKey::new(&crate::crypto::SecretKey::from_slice(&[b; 32]).unwrap())
    }

    #[test]
    fn a_read_entry_with_a_record_id_stays_under_300_bytes() {
        let d = AuditDraft {
            identity: "accounts".into(),
            operation: "read".into(),
            record: Some(format!("pm_{}", "0".repeat(32))),
            store: Some("store-1234".into()),
            outcome: 200,
        };
        let mut e = AuditEntry::next(9_999_999, &GENESIS, "0123456789ab", &d);
        e.time = "2026-12-01T23:54:18.123456789Z".into();
        let line = entry_line(&DiskEntry::of(&e)).unwrap();
        assert!(
            line.len() <= 300,
            "{} bytes: {}",
            line.len(),
            String::from_utf8_lossy(&line)
        );
        match parse_line(&line[..line.len() - 1]) {
            Some(Line::Entry(back)) => assert_eq!(back.with_prev(&e.prev_hash), e),
            _ => panic!("entry line does not parse back"),
        }
    }

    #[test]
    fn a_checkpoint_verifies_only_under_its_key_and_unchanged() {
        let mut c = Checkpoint {
            segment: 3,
            instance: "i".into(),
            first_seq: 10,
            last_seq: 20,
            last_hash: "ab".repeat(32),
            time: "t".into(),
            prev_mac: "cd".repeat(32),
            mac: String::new(),
        };
        key(1).sign(&mut c);
        assert!(key(1).verifies(&c));
        assert!(
            !key(2).verifies(&c),
            "another key's checkpoint must not verify"
        );
        let mut moved = c.clone();
        moved.last_seq = 19;
        assert!(!key(1).verifies(&moved));
        let line = checkpoint_line(&c).unwrap();
        assert!(matches!(parse_line(&line[..line.len() - 1]), Some(Line::Checkpoint(b)) if b == c));
    }

    #[test]
    fn only_twelve_digit_log_names_are_segments() {
        assert_eq!(segment_of("000000000042.log"), Some(42));
        assert_eq!(segment_of("42.log"), None);
        assert_eq!(segment_of("000000000042.archived"), None);
        assert_eq!(segment_of("00000000004x.log"), None);
    }
}
