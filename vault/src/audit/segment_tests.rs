//! The segment log end to end: rotation, tampering of every kind, archive + prune, recovery
//! of a torn tail, migration of sled entries, verify while writes run.

use super::log::{AuditSettings, LegacyEntries, SegmentLog};
use super::segment::{self, AuditKey};
use super::{AuditDraft, AuditError, AuditLog, Verdict, walk};
use crate::crypto::SecretKey;
use std::path::Path;

fn key(b: u8) -> AuditKey {
    AuditKey::new(&SecretKey::from_slice(&[b; 32]).unwrap())
}

fn settings(dir: &Path, segment_bytes: u64) -> AuditSettings {
    let mut s = AuditSettings::in_dir(dir);
    s.segment_max_bytes = segment_bytes;
    s
}

fn draft(i: u64) -> AuditDraft {
    AuditDraft {
        identity: "accounts".into(),
        operation: if i.is_multiple_of(3) { "store" } else { "read" }.into(),
        record: Some(format!("pm_{i:032x}")),
        store: Some("s1".into()),
        outcome: 200,
    }
}

/// A log in `dir` with tiny segments, `n` entries written.
fn written(dir: &Path, n: u64) -> SegmentLog {
    let log = SegmentLog::open(settings(dir, 4096), key(1), None).unwrap();
    for i in 0..n {
        log.append(draft(i)).unwrap();
    }
    log.flush().unwrap();
    log
}

fn verdict(dir: &Path, archive: Option<&Path>) -> Verdict {
    walk::verify(dir, archive, &key(1), None).unwrap().verdict
}

fn broken_at(v: &Verdict) -> (u64, String) {
    match v {
        Verdict::Broken { position, reason } => (*position, reason.clone()),
        Verdict::Ok { .. } => panic!("tampering not detected"),
    }
}

fn seg(dir: &Path, n: u64) -> std::path::PathBuf {
    dir.join(segment::file_name(n))
}

#[test]
fn a_run_over_tiny_segments_spans_five_or_more_and_verifies_across_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    drop(written(dir.path(), 120));
    let log = SegmentLog::open(settings(dir.path(), 4096), key(1), None).unwrap();
    assert_eq!(log.length(), 120, "the head survives a reopen");
    log.append(draft(120)).unwrap();
    let segments = segment::list(dir.path()).unwrap().len();
    assert!(segments >= 5, "only {segments} segments");
    assert_eq!(log.verify().unwrap(), Verdict::Ok { entries: 121 });
    let r = walk::verify(dir.path(), None, &key(1), None).unwrap();
    assert_eq!(r.segments as usize, segments);
}

#[test]
fn entries_with_a_record_id_take_under_300_bytes_of_disk_each() {
    let dir = tempfile::tempdir().unwrap();
    let log = SegmentLog::open(AuditSettings::in_dir(dir.path()), key(1), None).unwrap();
    for i in 0..1000 {
        log.append(draft(i)).unwrap();
    }
    log.rotate_now().unwrap();
    let bytes: u64 = segment::list(dir.path())
        .unwrap()
        .iter()
        .map(|(_, p)| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(bytes / 1000 <= 300, "{} bytes per entry", bytes / 1000);
}

#[test]
fn a_deleted_middle_segment_is_reported_with_its_number_and_position() {
    let dir = tempfile::tempdir().unwrap();
    drop(written(dir.path(), 120));
    let first_of_3 = walk::read_header(&seg(dir.path(), 3))
        .unwrap()
        .unwrap()
        .first_seq;
    std::fs::remove_file(seg(dir.path(), 3)).unwrap();
    let (pos, why) = broken_at(&verdict(dir.path(), None));
    assert_eq!(pos, first_of_3);
    assert!(
        why.contains("segment 3") && why.contains("missing"),
        "{why}"
    );
}

#[test]
fn a_deleted_first_segment_that_was_never_archived_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    drop(written(dir.path(), 120));
    std::fs::remove_file(seg(dir.path(), 1)).unwrap();
    let (_, why) = broken_at(&verdict(dir.path(), None));
    assert!(
        why.contains("segment 1") && why.contains("no signed archive marker"),
        "{why}"
    );
}

#[test]
fn a_truncated_closed_segment_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    drop(written(dir.path(), 120));
    let p = seg(dir.path(), 2);
    let len = std::fs::metadata(&p).unwrap().len();
    // Cut the checkpoint and the last entry off.
    let text = std::fs::read_to_string(&p).unwrap();
    let keep: Vec<&str> = text.lines().collect();
    let cut = keep[..keep.len() - 2].join("\n") + "\n";
    assert!((cut.len() as u64) < len);
    std::fs::write(&p, cut).unwrap();
    let (_, why) = broken_at(&verdict(dir.path(), None));
    assert!(why.contains("segment 2"), "{why}");
}

#[test]
fn an_edited_entry_is_reported_at_its_sequence_number() {
    let dir = tempfile::tempdir().unwrap();
    drop(written(dir.path(), 120));
    let p = seg(dir.path(), 2);
    let text = std::fs::read_to_string(&p).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let seq = match segment::parse_line(lines[3].as_bytes()) {
        Some(segment::Line::Entry(e)) => e.seq,
        _ => panic!("line 3 is an entry"),
    };
    lines[3] = lines[3].replace("\"outcome\":200", "\"outcome\":403");
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    let (pos, why) = broken_at(&verdict(dir.path(), None));
    assert_eq!(pos, seq);
    assert!(why.contains("segment 2") && why.contains("edited"), "{why}");
}

#[test]
fn swapped_segment_files_are_reported_as_reordered() {
    let dir = tempfile::tempdir().unwrap();
    drop(written(dir.path(), 120));
    let (a, b, t) = (
        seg(dir.path(), 2),
        seg(dir.path(), 3),
        dir.path().join("swap"),
    );
    std::fs::rename(&a, &t).unwrap();
    std::fs::rename(&b, &a).unwrap();
    std::fs::rename(&t, &b).unwrap();
    let (_, why) = broken_at(&verdict(dir.path(), None));
    assert!(why.contains("reordered"), "{why}");
}

#[test]
fn a_segment_rewritten_with_recomputed_hashes_fails_on_its_checkpoint() {
    // An attacker without the audit key rebuilds segment 2 with edited entries and a fresh
    // chain of hashes, and signs the checkpoint with a key of their own.
    let dir = tempfile::tempdir().unwrap();
    drop(written(dir.path(), 120));
    rewrite_with_recomputed_hashes(dir.path(), 2, 2);
    let (_, why) = broken_at(&verdict(dir.path(), None));
    assert!(why.contains("segment 2") && why.contains("forged"), "{why}");
}

#[test]
fn archive_then_prune_leaves_a_chain_that_starts_from_the_archived_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let archive = tempfile::tempdir().unwrap();
    let log = written(dir.path(), 120);
    let report = log.archive_to(archive.path()).unwrap();
    let segments = segment::list(dir.path()).unwrap().len() as u64;
    assert_eq!(
        report.copied,
        segments - 1,
        "every closed segment, not the active one"
    );
    // Prune everything archived (max_bytes 1: the cap is always exceeded).
    let mut s = settings(dir.path(), 4096);
    s.keep_days = 0;
    s.max_bytes = 1;
    let pruned = super::archive::prune(&s, &key(1)).unwrap();
    assert_eq!(pruned, segments - 1);
    assert_eq!(
        segment::list(dir.path()).unwrap().len(),
        1,
        "only the active segment stays"
    );
    // Locally the chain verifies from the signed checkpoint of the last archived segment…
    let r = log.verify_with_archive(None).unwrap();
    assert_eq!(r.verdict, Verdict::Ok { entries: 120 });
    assert!(r.checked_from > 1, "{r:?}");
    // … and with the archive, entry by entry from 1.
    let r = log.verify_with_archive(Some(archive.path())).unwrap();
    assert_eq!(r.verdict, Verdict::Ok { entries: 120 });
    assert_eq!((r.checked_from, r.from_archive), (1, segments - 1));
    // The chain goes on after pruning.
    log.append(draft(999)).unwrap();
    assert_eq!(log.verify().unwrap(), Verdict::Ok { entries: 121 });
    // An archived copy edited afterwards is found when the archive is read.
    let copy = archive.path().join(segment::file_name(1));
    let text = std::fs::read_to_string(&copy)
        .unwrap()
        .replacen("\"read\"", "\"list\"", 1);
    std::fs::write(&copy, text).unwrap();
    let (_, why) = broken_at(
        &log.verify_with_archive(Some(archive.path()))
            .unwrap()
            .verdict,
    );
    assert!(why.contains("segment 1"), "{why}");
}

#[test]
fn archive_refuses_a_broken_chain_and_prune_never_removes_unarchived_segments() {
    let dir = tempfile::tempdir().unwrap();
    let archive = tempfile::tempdir().unwrap();
    let log = written(dir.path(), 120);
    let mut s = settings(dir.path(), 4096);
    s.max_bytes = 1;
    assert_eq!(
        super::archive::prune(&s, &key(1)).unwrap(),
        0,
        "nothing was archived"
    );
    let p = seg(dir.path(), 2);
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replacen("\"read\"", "\"list\"", 1);
    std::fs::write(&p, text).unwrap();
    assert!(matches!(
        log.archive_to(archive.path()),
        Err(AuditError::Refused(_))
    ));
    assert!(segment::list(archive.path()).unwrap().is_empty());
}

#[test]
fn a_torn_last_line_is_cut_off_at_reopen_and_the_chain_continues() {
    let dir = tempfile::tempdir().unwrap();
    drop(
        SegmentLog::open(AuditSettings::in_dir(dir.path()), key(1), None).and_then(|l| {
            for i in 0..5 {
                l.append(draft(i))?;
            }
            l.flush()?;
            Ok(l)
        }),
    );
    let p = seg(dir.path(), 1);
    let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
    std::io::Write::write_all(&mut f, b"{\"seq\":6,\"time\":\"2026").unwrap();
    drop(f);
    assert_eq!(
        verdict(dir.path(), None),
        Verdict::Ok { entries: 5 },
        "a torn tail of the active segment is not a break"
    );
    let log = SegmentLog::open(AuditSettings::in_dir(dir.path()), key(1), None).unwrap();
    assert_eq!(log.length(), 5);
    log.append(draft(5)).unwrap();
    log.flush().unwrap();
    assert_eq!(log.verify().unwrap(), Verdict::Ok { entries: 6 });
}

/// `n` v1 entries as the sled tree of older folders held them (no instance, the v1 hash recipe).
fn legacy_chain(n: u64) -> Vec<Vec<u8>> {
    let mut old = Vec::new();
    let (mut seq, mut hash) = (0u64, super::GENESIS);
    for i in 0..n {
        let mut e = super::AuditEntry::next(seq, &hash, "x", &draft(i));
        e.instance = None;
        e.hash = e.recomputed_hash();
        seq = e.seq;
        hash = e.hash_bytes().unwrap();
        old.push(serde_json::to_vec(&e).unwrap());
    }
    old
}

struct Legacy(Vec<Vec<u8>>, std::sync::atomic::AtomicBool);

impl LegacyEntries for Legacy {
    fn each(&self, f: &mut dyn FnMut(&[u8]) -> Result<(), AuditError>) -> Result<u64, AuditError> {
        for e in &self.0 {
            f(e)?;
        }
        Ok(self.0.len() as u64)
    }
    fn remove(&self) -> Result<(), AuditError> {
        self.1.store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

#[test]
fn entries_of_the_previous_format_move_into_a_closed_first_segment_and_still_verify() {
    let old = legacy_chain(4);
    let dir = tempfile::tempdir().unwrap();
    let legacy = Legacy(old, Default::default());
    let log = SegmentLog::open(AuditSettings::in_dir(dir.path()), key(1), Some(&legacy)).unwrap();
    assert!(
        legacy.1.load(std::sync::atomic::Ordering::SeqCst),
        "the old entries are removed once moved"
    );
    assert_eq!(log.length(), 4);
    log.append(draft(4)).unwrap();
    assert_eq!(log.verify().unwrap(), Verdict::Ok { entries: 5 });
    assert_eq!(
        segment::list(dir.path()).unwrap().len(),
        2,
        "segment 1 closed, segment 2 active"
    );
    // An edited migrated entry is still found.
    let p = seg(dir.path(), 1);
    let text =
        std::fs::read_to_string(&p)
            .unwrap()
            .replacen("\"outcome\":200", "\"outcome\":201", 1);
    std::fs::write(&p, text).unwrap();
    assert!(matches!(
        verdict(dir.path(), None),
        Verdict::Broken { position: 1, .. }
    ));
}

#[test]
fn verify_while_writers_append_sees_a_consistent_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let log =
        std::sync::Arc::new(SegmentLog::open(settings(dir.path(), 8192), key(1), None).unwrap());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..2)
        .map(|_| {
            let (log, stop) = (log.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && i < 20_000 {
                    log.append(draft(i)).unwrap();
                    i += 1;
                }
            })
        })
        .collect();
    for _ in 0..20 {
        match log.verify().unwrap() {
            Verdict::Ok { .. } => {}
            v => panic!("verify during writes: {v:?}"),
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    let n = log.length();
    assert_eq!(log.verify().unwrap(), Verdict::Ok { entries: n });
}

#[test]
fn an_export_re_adds_prev_hash_so_each_line_verifies_alone() {
    let dir = tempfile::tempdir().unwrap();
    let log = written(dir.path(), 50);
    let mut out = Vec::new();
    let n = log
        .export(10, Some(40), &mut |b| {
            out.extend_from_slice(&b);
            true
        })
        .unwrap();
    assert_eq!(n, 31);
    let entries: Vec<super::AuditEntry> = out
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| super::AuditEntry::decode(l).unwrap())
        .collect();
    assert_eq!(entries.first().map(|e| e.seq), Some(10));
    assert!(entries.iter().all(super::AuditEntry::hash_is_valid));
    assert!(entries.windows(2).all(|w| w[1].prev_hash == w[0].hash));
}

/// Rewrites segment `n` with every outcome changed and hashes recomputed, signed with `forger`.
fn rewrite_with_recomputed_hashes(dir: &Path, n: u64, forger: u8) {
    let p = seg(dir, n);
    let text = std::fs::read_to_string(&p).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let Some(segment::Line::Header(h)) = segment::parse_line(lines[0].as_bytes()) else {
        panic!("header");
    };
    let mut prev = h.prev_hash.clone();
    let mut out = vec![lines[0].to_owned()];
    for l in &lines[1..lines.len() - 1] {
        let Some(segment::Line::Entry(mut e)) = segment::parse_line(l.as_bytes()) else {
            panic!("entry");
        };
        e.outcome = 204;
        let mut full = e.clone().with_prev(&prev);
        full.hash = full.recomputed_hash();
        prev = full.hash.clone();
        let line = segment::entry_line(&segment::DiskEntry::of(&full)).unwrap();
        out.push(String::from_utf8(line).unwrap().trim_end().to_owned());
    }
    let Some(segment::Line::Checkpoint(mut c)) =
        segment::parse_line(lines[lines.len() - 1].as_bytes())
    else {
        panic!("checkpoint");
    };
    c.last_hash = prev;
    key(forger).sign(&mut c);
    let line = segment::checkpoint_line(&c).unwrap();
    out.push(String::from_utf8(line).unwrap().trim_end().to_owned());
    std::fs::write(&p, out.join("\n") + "\n").unwrap();
}

#[test]
fn a_running_vault_whose_head_ends_a_closed_segment_still_checks_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let log = SegmentLog::open(AuditSettings::in_dir(dir.path()), key(1), None).unwrap();
    for i in 0..10 {
        log.append(draft(i)).unwrap();
    }
    log.rotate_now().unwrap();
    // The head (10) is the last entry of the just-closed segment 1.
    rewrite_with_recomputed_hashes(dir.path(), 1, 2);
    let (_, why) = broken_at(&log.verify().unwrap());
    assert!(why.contains("forged"), "{why}");
}

#[test]
fn a_running_vault_notices_entries_cut_off_its_active_segment() {
    let dir = tempfile::tempdir().unwrap();
    let log = SegmentLog::open(AuditSettings::in_dir(dir.path()), key(1), None).unwrap();
    for i in 0..10 {
        log.append(draft(i)).unwrap();
    }
    log.flush().unwrap();
    let p = seg(dir.path(), 1);
    let text = std::fs::read_to_string(&p).unwrap();
    let keep: Vec<&str> = text.lines().take(8).collect();
    std::fs::write(&p, keep.join("\n") + "\n").unwrap();
    let (pos, why) = broken_at(&log.verify().unwrap());
    assert_eq!(pos, 8);
    assert!(why.contains("missing at the end"), "{why}");
}

#[test]
fn an_unsigned_archive_marker_does_not_excuse_a_deleted_segment() {
    let dir = tempfile::tempdir().unwrap();
    drop(written(dir.path(), 120));
    std::fs::remove_file(seg(dir.path(), 1)).unwrap();
    let fake = format!(
        "{{\"segment\":1,\"sha256\":\"{}\",\"mac\":\"00\"}}\n",
        "ab".repeat(32)
    );
    std::fs::write(dir.path().join(segment::marker_name(1)), fake).unwrap();
    let (_, why) = broken_at(&verdict(dir.path(), None));
    assert!(
        why.contains("segment 1") && why.contains("no signed archive marker"),
        "{why}"
    );
}

#[test]
fn a_broken_chain_in_the_data_store_is_not_moved_into_a_signed_segment() {
    let mut old = legacy_chain(4);
    old.remove(1);
    let dir = tempfile::tempdir().unwrap();
    let legacy = Legacy(old, Default::default());
    let err = SegmentLog::open(AuditSettings::in_dir(dir.path()), key(1), Some(&legacy))
        .err()
        .map(|e| e.to_string())
        .unwrap();
    assert!(err.contains("broken at entry 2"), "{err}");
    assert!(
        !legacy.1.load(std::sync::atomic::Ordering::SeqCst),
        "the old entries stay"
    );
    assert!(segment::list(dir.path()).unwrap().is_empty());
}
